/** Finding a CRIU that works here, and saying clearly what is missing. */
import { readFileSync, existsSync } from 'node:fs';
import { release } from 'node:os';
import { TsruncError } from '../errors.js';
import { Criu, findCriu, findLibcriu } from '../../criu/driver.js';

function kernelVersion(): [number, number] {
  const m = /^(\d+)\.(\d+)/.exec(release());
  return m ? [Number(m[1]), Number(m[2])] : [0, 0];
}

export function versionString(v: number): string {
  return `${Math.floor(v / 10000)}.${Math.floor(v / 100) % 100}.${v % 100}`;
}

/** Kernels from 6.13 split [vvar_vclock] out of [vvar]; CRIU learned that layout in 4.1. */
export function minimumCriuForKernel(): number {
  const [maj, min] = kernelVersion();
  return maj > 6 || (maj === 6 && min >= 13) ? 40100 : 31500;
}

const opened = new Map<string, Criu>();

/** The CRIU to use, checked once per process (koffi's types are declared once). */
export function openCriu(explicit?: string): Criu {
  const key = explicit ?? '';
  let c = opened.get(key);
  if (!c) opened.set(key, (c = openCriuOnce(explicit)));
  return c;
}

function openCriuOnce(explicit?: string): Criu {
  const bin = findCriu(explicit);
  if (!bin) throw new TsruncError(explicit ? `--criu ${explicit}: no such file` : 'CRIU not found on PATH; install CRIU >= 4.1 (scripts/setup does) or pass --criu PATH');
  const lib = findLibcriu(bin);
  if (!lib) throw new TsruncError(`libcriu.so.2 not found for ${bin}; install libcriu2 next to it (scripts/setup does) or set TSRUNC_LIBCRIU`);
  const criu = new Criu(bin, lib);
  let v: number;
  try {
    v = criu.version();
  } catch (e) {
    throw new TsruncError(`cannot ask ${bin} for its version: ${(e as Error).message}`);
  }
  if (v <= 0) throw new TsruncError(`${bin} does not answer libcriu (version query failed: ${v}); is it a working CRIU binary?`);
  const need = minimumCriuForKernel();
  if (v < need)
    throw new TsruncError(`CRIU ${versionString(v)} cannot dump on kernel ${release()} (vDSO layout); install CRIU >= ${versionString(need)}`);
  return criu;
}

/** Kernels from 6.16 refuse getsockopt(SO_PASSCRED/SO_PASSSEC) on TCP and UDP sockets; CRIU 4.2 copes. */
export function minimumCriuForSockets(): number {
  const [maj, min] = kernelVersion();
  return maj > 6 || (maj === 6 && min >= 16) ? 40200 : 0;
}

export interface CheckItem {
  name: string;
  ok: boolean;
  detail: string;
  /** what to do when not ok */
  fix?: string;
  required: boolean;
}

function readNum(path: string): number | undefined {
  try {
    return Number(readFileSync(path, 'utf8').trim());
  } catch {
    return undefined;
  }
}

function onPath(name: string): boolean {
  return (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':').some((d) => existsSync(`${d}/${name}`));
}

/** What `tsrunc check` reports; `checkpoint`/`restore` need the required ones. */
export function checkHost(explicit?: string): CheckItem[] {
  const items: CheckItem[] = [];
  let features: { memTrack: boolean; lazyPages: boolean } | undefined;
  let version = 0;
  try {
    const c = openCriu(explicit);
    version = c.version();
    items.push({ name: 'criu', ok: true, detail: `CRIU ${versionString(version)} at ${c.binary}`, required: true });
    try {
      features = c.features();
    } catch {
      features = undefined;
    }
  } catch (e) {
    items.push({ name: 'criu', ok: false, detail: (e as Error).message, fix: 'run scripts/setup, or pass --criu PATH to a CRIU >= 4.1', required: true });
  }
  items.push({ name: 'kernel', ok: true, detail: `Linux ${release()} (needs CRIU >= ${versionString(minimumCriuForKernel())})`, required: true });
  const sockNeed = minimumCriuForSockets();
  if (version && sockNeed) {
    const ok = version >= sockNeed;
    items.push({ name: 'inet-sockets', ok, detail: ok ? 'TCP/UDP sockets can be dumped' : `CRIU ${versionString(version)} cannot dump TCP/UDP sockets on kernel ${release()} (SO_PASSSEC)`,
      fix: `CRIU >= ${versionString(sockNeed)} (scripts/setup installs it)`, required: false });
  }
  const uffd = features ? features.lazyPages : existsSync('/proc/sys/vm/unprivileged_userfaultfd') || existsSync('/dev/userfaultfd');
  items.push({ name: 'userfaultfd', ok: uffd, detail: uffd ? 'present: lazy pages (post-copy) possible' : 'absent: no lazy pages', fix: 'a kernel with CONFIG_USERFAULTFD', required: false });
  const pipeMax = readNum('/proc/sys/fs/pipe-max-size') ?? 0;
  const pipeOk = pipeMax >= 4194304;
  items.push({ name: 'pipe-max-size', ok: pipeOk, detail: `fs.pipe-max-size is ${pipeMax}${pipeOk ? '' : '; CRIU lazy pages need 4194304'}`,
    fix: 'sysctl -w fs.pipe-max-size=4194304', required: false });
  const softDirty = features?.memTrack ?? false;
  items.push({ name: 'soft-dirty', ok: softDirty, detail: softDirty ? 'memory tracking on: pre-dump and incremental dumps work' : 'no soft-dirty memory tracking: no pre-dump, no memory-tracking iterations',
    fix: 'a kernel with CONFIG_MEM_SOFT_DIRTY', required: false });
  const ipt = onPath('iptables-restore'), nft = onPath('nft');
  items.push({ name: 'network-lock', ok: ipt || nft, detail: ipt ? 'iptables-restore found (CRIU\'s default network lock)' : nft ? 'nft found (use CRIU\'s nftables network lock)' : 'neither iptables-restore nor nft found',
    fix: 'apt-get install iptables', required: true });
  return items;
}
