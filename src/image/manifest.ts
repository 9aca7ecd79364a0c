/**
 * The checkpoint image's manifest (the last tar entry, manifest.json) and header (the first,
 * header.json), their validation, and the host facts a manifest records.
 */
import { readFile } from 'node:fs/promises';
import { release } from 'node:os';
import { TsruncError } from '../errors.js';
import { nameProblem } from './names.js';

export const IMAGE_FORMAT = 'tsrunc-checkpoint';
export const IMAGE_VERSION = 1;
export const HEADER_NAME = 'header.json';
export const MANIFEST_NAME = 'manifest.json';
/** The part of the image that holds the rootfs diff: the only one that may carry devices, setuid files and links out. */
export const ROOTFS_PART = 'rootfs';

export type EntryKind = 'criu' | 'config' | 'runtime' | 'rootfs' | 'meta';
export const ENTRY_KINDS: readonly EntryKind[] = ['criu', 'config', 'runtime', 'rootfs', 'meta'];

/** Tar entry types the format carries (tar-stream's names). */
export type EntryType = 'file' | 'directory' | 'symlink' | 'link' | 'character-device' | 'block-device' | 'fifo';
export const ENTRY_TYPES: readonly EntryType[] = ['file', 'directory', 'symlink', 'link', 'character-device', 'block-device', 'fifo'];

export interface ManifestEntry {
  /** the tar entry name, relative and normalized */
  path: string;
  type: EntryType;
  /** bytes of data: regular files only, 0 for every other type */
  size: number;
  /** hex SHA-256 of the data for files, of the link target for symlinks and hardlinks, of nothing otherwise */
  sha256: string;
  kind: EntryKind;
  /** permission bits including setuid/setgid/sticky (mode & 0o7777) */
  mode: number;
  /** symlink target, or for a hardlink the earlier entry it links to */
  linkname?: string;
}

export interface CpuInfo {
  vendor: string;
  model: string;
  flags: string[];
}

export interface KindTotal {
  entries: number;
  bytes: number;
}

export interface ManifestTotals {
  entries: number;
  /** sum of the entries' sizes */
  bytes: number;
  byKind: Partial<Record<EntryKind, KindTotal>>;
}

export interface Manifest {
  format: typeof IMAGE_FORMAT;
  version: typeof IMAGE_VERSION;
  /** ISO 8601 */
  created: string;
  containerId: string;
  /** tsrunc's version */
  tsrunc: string;
  criu: { version: string };
  /** kernel release (uname -r) */
  kernel: string;
  /** process.arch of the dumping host */
  arch: string;
  cpu: CpuInfo;
  /** the parent image (id or digest) of an incremental dump */
  parent?: string;
  entries: ManifestEntry[];
  rootfsDiff?: { added: number; deleted: string[] };
  totals: ManifestTotals;
}

/** What the caller of writeImage supplies; the writer fills in the rest. */
export interface ManifestBase {
  containerId: string;
  tsrunc: string;
  criu: { version: string };
  kernel: string;
  arch: string;
  cpu: CpuInfo;
  parent?: string;
  /** defaults to now */
  created?: string;
}

/** The first entry: enough to reject an unknown version, and the sizes a reader holds the stream to. */
export interface ImageHeader {
  format: typeof IMAGE_FORMAT;
  version: typeof IMAGE_VERSION;
  containerId: string;
  created: string;
  /** entries between header.json and manifest.json */
  entries: number;
  /** sum of their data sizes */
  contentBytes: number;
}

const SHA256_RE = /^[0-9a-f]{64}$/;

type Json = Record<string, unknown>;

function isObject(x: unknown): x is Json {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function fail(what: string, problem: string): never {
  throw new TsruncError(`${what}: ${problem}`);
}

/** Format and version first, so an image of another tool or a newer tsrunc gets that one line. */
function checkFormatVersion(x: Json, what: string): void {
  if (x.format !== IMAGE_FORMAT) {
    fail(what, `not a tsrunc checkpoint image (format ${JSON.stringify(x.format ?? null)}, expected "${IMAGE_FORMAT}")`);
  }
  if (x.version !== IMAGE_VERSION) {
    fail(what, `unsupported image version ${JSON.stringify(x.version ?? null)} (this tsrunc reads version ${IMAGE_VERSION})`);
  }
}

function str(x: Json, key: string, what: string, allowEmpty = false): string {
  const v = x[key];
  if (typeof v !== 'string' || (!allowEmpty && v === '')) fail(what, `${key} must be a${allowEmpty ? '' : ' non-empty'} string`);
  return v;
}

function count(x: Json, key: string, what: string): number {
  const v = x[key];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) fail(what, `${key} must be a non-negative integer`);
  return v;
}

function isoDate(x: Json, key: string, what: string): string {
  const v = str(x, key, what);
  if (Number.isNaN(Date.parse(v))) fail(what, `${key} is not a date (${JSON.stringify(v)})`);
  return v;
}

export function validateHeader(x: unknown): ImageHeader {
  const what = 'image header';
  if (!isObject(x)) fail(what, 'not a JSON object');
  checkFormatVersion(x, what);
  return {
    format: IMAGE_FORMAT,
    version: IMAGE_VERSION,
    containerId: str(x, 'containerId', what),
    created: isoDate(x, 'created', what),
    entries: count(x, 'entries', what),
    contentBytes: count(x, 'contentBytes', what),
  };
}

function validateEntry(e: unknown, at: string): ManifestEntry {
  if (!isObject(e)) fail(at, 'not an object');
  const path = str(e, 'path', at);
  const bad = nameProblem(path);
  if (bad) fail(at, `path ${JSON.stringify(path)}: ${bad}`);
  const type = e.type as EntryType;
  if (!ENTRY_TYPES.includes(type)) fail(at, `unknown type ${JSON.stringify(e.type ?? null)}`);
  const kind = e.kind as EntryKind;
  if (!ENTRY_KINDS.includes(kind)) fail(at, `unknown kind ${JSON.stringify(e.kind ?? null)}`);
  const size = count(e, 'size', at);
  if (type !== 'file' && size !== 0) fail(at, `a ${type} entry must have size 0`);
  const sha256 = str(e, 'sha256', at);
  if (!SHA256_RE.test(sha256)) fail(at, 'sha256 is not a lower-case hex SHA-256 digest');
  const mode = count(e, 'mode', at);
  if (mode > 0o7777) fail(at, 'mode has bits beyond 07777');
  const entry: ManifestEntry = { path, type, size, sha256, kind, mode };
  if (type === 'symlink' || type === 'link') entry.linkname = str(e, 'linkname', at);
  else if (e.linkname !== undefined) fail(at, `a ${type} entry has no linkname`);
  return entry;
}

/** Checks a parsed manifest.json; throws a TsruncError naming the first problem. */
export function validateManifest(x: unknown): Manifest {
  const what = 'manifest';
  if (!isObject(x)) fail(what, 'not a JSON object');
  checkFormatVersion(x, what);
  const criu = x.criu;
  if (!isObject(criu) || typeof criu.version !== 'string') fail(what, 'criu.version must be a string');
  const cpu = x.cpu;
  if (!isObject(cpu) || typeof cpu.vendor !== 'string' || typeof cpu.model !== 'string' ||
    !Array.isArray(cpu.flags) || !cpu.flags.every((f) => typeof f === 'string')) {
    fail(what, 'cpu must be {vendor, model, flags: string[]}');
  }
  if (!Array.isArray(x.entries)) fail(what, 'entries must be an array');
  const seen = new Set<string>();
  const entries = x.entries.map((e, i) => {
    const entry = validateEntry(e, `${what}: entries[${i}]`);
    if (seen.has(entry.path)) fail(what, `entry ${JSON.stringify(entry.path)} is listed twice`);
    seen.add(entry.path);
    return entry;
  });
  const m: Manifest = {
    format: IMAGE_FORMAT,
    version: IMAGE_VERSION,
    created: isoDate(x, 'created', what),
    containerId: str(x, 'containerId', what),
    tsrunc: str(x, 'tsrunc', what),
    criu: { version: criu.version },
    kernel: str(x, 'kernel', what, true),
    arch: str(x, 'arch', what),
    cpu: { vendor: cpu.vendor as string, model: cpu.model as string, flags: [...(cpu.flags as string[])] },
    entries,
    totals: validateTotals(x.totals, entries),
  };
  if (x.parent !== undefined) m.parent = str(x, 'parent', what);
  if (x.rootfsDiff !== undefined) {
    const d = x.rootfsDiff;
    if (!isObject(d) || !Array.isArray(d.deleted)) fail(what, 'rootfsDiff must be {added, deleted: string[]}');
    const added = count(d, 'added', `${what}: rootfsDiff`);
    const deleted = d.deleted.map((p, i) => {
      if (typeof p !== 'string') fail(what, `rootfsDiff.deleted[${i}] must be a string`);
      const bad = nameProblem(p);
      if (bad) fail(what, `rootfsDiff.deleted[${i}] ${JSON.stringify(p)}: ${bad}`);
      return p;
    });
    m.rootfsDiff = { added, deleted };
  }
  return m;
}

/** Totals as the writer computes them; the reader checks a manifest's own against its entries. */
export function totalsOf(entries: readonly ManifestEntry[]): ManifestTotals {
  const t: ManifestTotals = { entries: entries.length, bytes: 0, byKind: {} };
  for (const e of entries) {
    t.bytes += e.size;
    const k = (t.byKind[e.kind] ??= { entries: 0, bytes: 0 });
    k.entries++;
    k.bytes += e.size;
  }
  return t;
}

function validateTotals(x: unknown, entries: ManifestEntry[]): ManifestTotals {
  const want = totalsOf(entries);
  if (!isObject(x)) fail('manifest', 'totals must be an object');
  if (x.entries !== want.entries || x.bytes !== want.bytes) {
    fail('manifest', `totals (${String(x.entries)} entries, ${String(x.bytes)} bytes) do not add up to its entries (${want.entries}, ${want.bytes})`);
  }
  return want;
}

/** CPU vendor, model name and feature flags of this machine, from /proc/cpuinfo (first processor). */
export async function readHostCpu(cpuinfoPath = '/proc/cpuinfo'): Promise<CpuInfo> {
  let text = '';
  try {
    text = await readFile(cpuinfoPath, 'utf8');
  } catch {
    return { vendor: '', model: '', flags: [] };
  }
  return parseCpuInfo(text);
}

export function parseCpuInfo(text: string): CpuInfo {
  const first = text.split(/\n\s*\n/)[0] ?? '';
  const fields = new Map<string, string>();
  for (const line of first.split('\n')) {
    const i = line.indexOf(':');
    if (i > 0) fields.set(line.slice(0, i).trim(), line.slice(i + 1).trim());
  }
  // x86 says vendor_id/model name/flags; arm64 says CPU implementer/Features
  const vendor = fields.get('vendor_id') ?? fields.get('CPU implementer') ?? '';
  const model = fields.get('model name') ?? fields.get('Model') ?? fields.get('CPU part') ?? '';
  const flags = (fields.get('flags') ?? fields.get('Features') ?? '').split(/\s+/).filter(Boolean);
  return { vendor, model, flags };
}

/** The machine facts of a manifest that tsrunc can read by itself (everything but its own and CRIU's versions). */
export async function hostFacts(): Promise<{ kernel: string; arch: string; cpu: CpuInfo }> {
  return { kernel: release(), arch: process.arch, cpu: await readHostCpu() };
}

/**
 * Why an image may not restore on a host, one line each; empty when nothing stands out.
 * CPU flags the image's CPU had and the host lacks are what CRIU's cpuinfo check would refuse.
 */
export function hostMismatches(m: Manifest, host: { arch: string; cpu: CpuInfo }): string[] {
  const out: string[] = [];
  if (m.arch !== host.arch) out.push(`architecture: image ${m.arch}, host ${host.arch}`);
  const have = new Set(host.cpu.flags);
  const missing = m.cpu.flags.filter((f) => !have.has(f));
  if (missing.length > 0) out.push(`CPU features missing on this host: ${missing.join(' ')}`);
  return out;
}
