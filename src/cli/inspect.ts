/** inspect's text form. */
import type { InspectReport } from '../container/inspect.js';
import { formatBytes } from '../image/names.js';
import type { ProcessInfo } from '../container/checkpoint.js';

function tree(ps: ProcessInfo[]): string[] {
  const kids = new Map<number, ProcessInfo[]>();
  for (const p of ps) kids.set(p.ppid, [...(kids.get(p.ppid) ?? []), p]);
  const out: string[] = [];
  const walk = (p: ProcessInfo, prefix: string, last: boolean, top: boolean) => {
    const cmd = p.args.length ? p.args.join(' ') : `[${p.comm}]`;
    const threads = p.threads > 1 ? ` (${p.threads} threads)` : '';
    out.push(`  ${String(p.pid).padStart(7)} ${String(p.nspid).padStart(6)}  ${top ? '' : prefix + (last ? '└─ ' : '├─ ')}${cmd}${threads}`);
    const cs = kids.get(p.pid) ?? [];
    cs.forEach((c, i) => walk(c, top ? '' : prefix + (last ? '   ' : '│  '), i === cs.length - 1, false));
  };
  const roots = ps.filter((p) => !ps.some((q) => q.pid === p.ppid));
  roots.forEach((r, i) => walk(r, '', i === roots.length - 1, true));
  return out;
}

export function renderInspect(r: InspectReport): string {
  const l: string[] = [];
  const row = (k: string, v: string) => l.push(`${k.padEnd(15)}${v}`);
  row('Image', `${r.file}${r.imageBytes !== undefined ? ` (${formatBytes(r.imageBytes)})` : ''}, ${r.format} v${r.version}, ${r.entries} entries, ${formatBytes(r.contentBytes)} uncompressed`);
  row('Container', r.containerId);
  row('Created', r.created);
  row('Made by', `tsrunc ${r.tsrunc}, CRIU ${r.criu}, Linux ${r.kernel} ${r.arch}`);
  row('CPU', `${r.cpu.vendor} ${r.cpu.model}`.trim());
  if (r.parent) row('Parent', r.parent);
  row('Processes', String(r.processes.length));
  if (r.processes.length) {
    l.push('      PID  NSPID  COMMAND');
    l.push(...tree(r.processes));
  }
  row('Memory', `${r.memory.pages} pages (${formatBytes(r.memory.bytes)}) in ${r.memory.pagemaps} page map(s)`);
  row('Parts', Object.entries(r.parts).map(([k, t]) => `${k} ${formatBytes(t!.bytes)} (${t!.entries})`).join(', '));
  row('Rootfs diff', r.rootfsDiff ? `${r.rootfsDiff.changed} entries changed or added, ${r.rootfsDiff.deleted} deleted` : 'none (read-only rootfs or not recorded)');
  row('Mounts', r.mounts.map((m) => `${m.destination} (${m.type ?? 'bind'})`).join(', ') || 'none');
  if (r.externalMounts.length) row('External', r.externalMounts.map((m) => `${m.key} (${m.kind})`).join(', '));
  row('Stdio', `${r.stdio.join(', ') || 'closed'}${r.terminal ? '; terminal' : ''}`);
  row('Restores here', r.restorable.ok ? 'yes' : `no: ${r.restorable.reasons.join('; ')}`);
  return l.join('\n') + '\n';
}
