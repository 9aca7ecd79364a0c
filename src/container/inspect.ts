/** inspect: what a checkpoint image holds, verified in one pass, and whether it restores here. */
import { createReadStream, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { posix, resolve } from 'node:path';
import { TsruncError } from '../errors.js';
import type { Spec } from '../spec/types.js';
import type { CheckpointMeta, ProcessInfo } from './checkpoint.js';
import { openCriu, versionString } from './criu.js';
import type { KindTotal } from '../image/index.js';

export interface InspectReport {
  file: string;
  /** compressed size, when a file */
  imageBytes?: number;
  format: string;
  version: number;
  containerId: string;
  created: string;
  checkpointed?: string;
  tsrunc: string;
  criu: string;
  kernel: string;
  arch: string;
  cpu: { vendor: string; model: string };
  parent?: string;
  processes: ProcessInfo[];
  memory: { pages: number; bytes: number; pagemaps: number };
  parts: Partial<Record<string, KindTotal>>;
  entries: number;
  contentBytes: number;
  rootfsDiff?: { changed: number; deleted: number };
  mounts: { destination: string; type?: string; source?: string }[];
  externalMounts: { key: string; kind: string }[];
  stdio: string[];
  terminal: boolean;
  restorable: { ok: boolean; reasons: string[] };
}

const PAGE = 4096;

export async function inspectImage(fileArg: string): Promise<InspectReport> {
  let input: NodeJS.ReadableStream = process.stdin;
  let file = 'stdin';
  let imageBytes: number | undefined;
  if (fileArg !== '-') {
    file = resolve(fileArg);
    try {
      const st = statSync(file);
      if (!st.isFile()) throw new TsruncError(`image ${file}: not a regular file`);
      imageBytes = st.size;
    } catch (e) {
      if (e instanceof TsruncError) throw e;
      throw new TsruncError(`image ${file}: no such file`);
    }
    input = createReadStream(file, { highWaterMark: 1024 * 1024 });
  }
  const image = await import('../image/index.js');
  const staging = mkdtempSync(posix.join(tmpdir(), 'tsrunc-inspect-'));
  try {
    // every entry is read and its digest checked; only the small ones are kept
    const read = await image.readImage({
      input, staging: posix.join(staging, 'image'),
      select: (p) => p === 'runtime.json' || p === 'config.json', allowDevices: true,
    }).catch((e: unknown) => {
      throw e instanceof TsruncError ? new TsruncError(`${file}: ${e.message}`) : e;
    });
    const m = read.manifest;
    const load = <T>(name: string): T | undefined => {
      try {
        return JSON.parse(readFileSync(posix.join(staging, 'image', name), 'utf8')) as T;
      } catch {
        return undefined;
      }
    };
    const meta = load<CheckpointMeta>('runtime.json');
    const config = load<Spec>('config.json') ?? meta?.config;
    const pages = m.entries.filter((e) => /^criu\/pages-\d+\.img$/.test(e.path)).reduce((n, e) => n + e.size, 0);
    const pagemaps = m.entries.filter((e) => /^criu\/pagemap-\d+\.img$/.test(e.path)).length;

    const reasons = image.hostMismatches(m, await image.hostFacts());
    try {
      const criu = openCriu();
      const here = criu.version();
      const [a, b, c] = m.criu.version.split('.').map(Number);
      const theirs = (a || 0) * 10000 + (b || 0) * 100 + (c || 0);
      if (theirs > here) reasons.push(`made by CRIU ${m.criu.version}, this host has CRIU ${versionString(here)}`);
    } catch (e) {
      reasons.push((e as Error).message);
    }
    return {
      file, imageBytes, format: m.format, version: m.version, containerId: m.containerId, created: m.created,
      checkpointed: meta?.checkpointed, tsrunc: m.tsrunc, criu: m.criu.version, kernel: m.kernel, arch: m.arch,
      cpu: { vendor: m.cpu.vendor, model: m.cpu.model }, parent: m.parent,
      processes: meta?.processes ?? [],
      memory: { pages: pages / PAGE, bytes: pages, pagemaps },
      parts: m.totals.byKind, entries: m.totals.entries, contentBytes: m.totals.bytes,
      rootfsDiff: m.rootfsDiff ? { changed: m.entries.filter((e) => e.kind === 'rootfs').length, deleted: m.rootfsDiff.deleted.length } : undefined,
      mounts: (config?.mounts ?? []).map((x) => ({ destination: x.destination, type: x.type, source: x.source })),
      externalMounts: (meta?.externalMounts ?? []).map((e) => ({ key: e.key, kind: e.kind })),
      stdio: (meta?.stdio ?? []).map((s) => `${s.fd}: ${s.target}`),
      terminal: config?.process?.terminal === true,
      restorable: { ok: reasons.length === 0, reasons },
    };
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
}
