/**
 * Writes a checkpoint image in one pass: files are read in chunks, hashed, packed by tar-stream
 * and compressed by zstd on their way to the output; nothing is held whole in memory.
 * Layout: header.json, the sources' entries in order, manifest.json (with every digest) last.
 */
import { createHash } from 'node:crypto';
import { constants as fsc, createWriteStream, type BigIntStats } from 'node:fs';
import { lstat, open, readlink, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { pack as tarPack, type Header, type Pack } from 'tar-stream';
import { TsruncError, errnoMessage } from '../errors.js';
import {
  HEADER_NAME, IMAGE_FORMAT, IMAGE_VERSION, MANIFEST_NAME, ROOTFS_PART, totalsOf,
  type EntryKind, type EntryType, type ImageHeader, type Manifest, type ManifestBase, type ManifestEntry,
} from './manifest.js';
import { ancestorsOf, nameProblem, partOf } from './names.js';
import { splitDev } from './nodes.js';
import { typeOf, walkTree, type TreeEntry } from './walk.js';
import { writeWithRoom } from './streams.js';
import { createCompressor } from './zstd.js';

/** A directory added under `prefix`: everything in it, or only `paths` (a rootfs diff's changed paths). */
export interface DirSource {
  dir: string;
  prefix: string;
  kind: EntryKind;
  /** relative paths to add (their parent directories come along); default: the whole tree */
  paths?: readonly string[];
  /** also add device nodes and fifos (rootfs only); otherwise they are skipped and reported */
  devices?: boolean;
}

/** One entry from memory: config.json, runtime.json, meta files. */
export interface BufferSource {
  path: string;
  data: Buffer | string;
  kind: EntryKind;
  /** default 0o600 */
  mode?: number;
}

/** The rootfs diff's deleted paths (relative to the rootfs); they travel in the manifest. */
export interface DeletedSource {
  deleted: readonly string[];
}

export type ImageSource = DirSource | BufferSource | DeletedSource;

export interface WriteImageOptions {
  /** a stream (ended when the image is complete), or a file path written through a temporary name */
  out: NodeJS.WritableStream | string;
  sources: readonly ImageSource[];
  manifestBase: ManifestBase;
  /** zstd level, default 3 */
  compressLevel?: number;
  /** zstd worker threads, default os.availableParallelism(); 0 compresses on the main thread */
  workers?: number;
  /** the header, before the first byte goes out (it declares the content size) */
  onHeader?: (header: ImageHeader) => void;
  /** uncompressed bytes read so far, compressed bytes written so far */
  onProgress?: (bytesIn: number, bytesOut: number) => void;
}

export interface WriteImageResult {
  /** bytes of entry data read (the uncompressed content) */
  bytesIn: number;
  /** bytes of image written */
  bytesOut: number;
  manifest: Manifest;
  /** archive paths left out: sockets, and devices/fifos of sources without `devices` */
  skipped: string[];
}

/** One entry to write, decided before the first byte goes out so that the header can declare sizes. */
interface PlanItem {
  name: string;
  kind: EntryKind;
  type: EntryType;
  mode: number;
  size: number;
  uid: number;
  gid: number;
  mtime: Date;
  /** the full-precision mtime, carried in a pax record for rootfs entries (ustar has whole seconds) */
  mtimeNs?: bigint;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  /** a file to read */
  abs?: string;
  ino?: bigint;
  data?: Buffer;
}

const READ_CHUNK = 1024 * 1024;
const READ_AHEAD = 3;
const EMPTY_SHA256 = createHash('sha256').digest('hex');

function ignore(): void {}

function isDirSource(s: ImageSource): s is DirSource {
  return 'dir' in s;
}

function isBufferSource(s: ImageSource): s is BufferSource {
  return 'data' in s;
}

function checkName(name: string, what: string): void {
  const bad = nameProblem(name);
  if (bad) throw new TsruncError(`image source: ${what} ${JSON.stringify(name)}: ${bad}`);
  if (name === HEADER_NAME || name === MANIFEST_NAME) throw new TsruncError(`image source: ${name} is reserved for the image itself`);
}

function checkKindPart(name: string, kind: EntryKind): void {
  const inRootfs = name === ROOTFS_PART || partOf(name) === ROOTFS_PART;
  if ((kind === 'rootfs') !== inRootfs) {
    throw new TsruncError(`image source: ${JSON.stringify(name)}: entries of kind "rootfs" go under "${ROOTFS_PART}/" and only they do`);
  }
}

function itemFromStat(name: string, kind: EntryKind, st: BigIntStats, type: EntryType): PlanItem {
  return {
    name, kind, type,
    mode: Number(st.mode) & 0o7777,
    size: type === 'file' ? Number(st.size) : 0,
    uid: Number(st.uid),
    gid: Number(st.gid),
    mtime: new Date(Number(st.mtimeMs)),
    ...(kind === 'rootfs' ? { mtimeNs: st.mtimeNs } : {}),
  };
}

async function planDir(src: DirSource, plan: PlanItem[], skipped: string[]): Promise<void> {
  checkName(src.prefix, 'prefix');
  checkKindPart(src.prefix, src.kind);
  if (src.devices && src.kind !== 'rootfs') throw new TsruncError('image source: only the rootfs may carry devices');
  const rootStat = await lstat(src.dir, { bigint: true }).catch((e: unknown) => {
    throw new TsruncError(`image source: cannot read ${src.dir}: ${errnoMessage(e)}`);
  });
  if (!rootStat.isDirectory()) throw new TsruncError(`image source: ${src.dir} is not a directory`);
  for (const a of ancestorsOf(src.prefix)) plan.push({ ...itemFromStat(a, src.kind, rootStat, 'directory'), mode: 0o755 });
  plan.push(itemFromStat(src.prefix, src.kind, rootStat, 'directory'));

  let tree: TreeEntry[];
  if (src.paths === undefined) {
    tree = await walkTree(src.dir);
  } else {
    // the listed paths and every directory above them, each lstat'ed: an ancestor that is not a
    // real directory means the tree is not what the diff saw
    const wanted = new Set<string>();
    for (const p of src.paths) {
      checkName(p, 'path');
      for (const a of ancestorsOf(p)) wanted.add(a);
      wanted.add(p);
    }
    tree = [];
    for (const p of [...wanted].sort()) {
      const st = await lstat(join(src.dir, p), { bigint: true }).catch((e: unknown) => {
        throw new TsruncError(`image source: ${join(src.dir, p)}: ${errnoMessage(e)}`);
      });
      tree.push({ path: p, type: typeOf(st), stat: st });
    }
    const types = new Map(tree.map((t) => [t.path, t.type]));
    for (const t of tree) {
      for (const a of ancestorsOf(t.path)) {
        if (types.get(a) !== 'directory') throw new TsruncError(`image source: ${join(src.dir, a)} is not a directory`);
      }
    }
  }

  const firstLink = new Map<string, string>();
  for (const t of tree) {
    const name = `${src.prefix}/${t.path}`;
    if (t.type === 'socket' || ((t.type === 'character-device' || t.type === 'block-device' || t.type === 'fifo') && !src.devices)) {
      skipped.push(name);
      continue;
    }
    const item = itemFromStat(name, src.kind, t.stat, t.type);
    if (t.type === 'file') {
      item.abs = join(src.dir, t.path);
      item.ino = t.stat.ino;
      if (t.stat.nlink > 1n) {
        const key = `${t.stat.dev}:${t.stat.ino}`;
        const first = firstLink.get(key);
        if (first !== undefined) {
          Object.assign(item, { type: 'link', size: 0, linkname: first, abs: undefined });
        } else {
          firstLink.set(key, name);
        }
      }
    } else if (t.type === 'symlink') {
      item.linkname = await readlink(join(src.dir, t.path));
    } else if (t.type !== 'directory') {
      const { major, minor } = splitDev(t.stat.rdev);
      item.devmajor = major;
      item.devminor = minor;
    }
    plan.push(item);
  }
}

async function makePlan(sources: readonly ImageSource[], created: Date): Promise<{ plan: PlanItem[]; deleted?: string[]; skipped: string[] }> {
  const plan: PlanItem[] = [];
  const skipped: string[] = [];
  let deleted: string[] | undefined;
  for (const src of sources) {
    if (isDirSource(src)) {
      await planDir(src, plan, skipped);
    } else if (isBufferSource(src)) {
      checkName(src.path, 'path');
      checkKindPart(src.path, src.kind);
      const data = typeof src.data === 'string' ? Buffer.from(src.data) : src.data;
      plan.push({ name: src.path, kind: src.kind, type: 'file', mode: (src.mode ?? 0o600) & 0o7777, size: data.length, uid: 0, gid: 0, mtime: created, data });
    } else {
      deleted ??= [];
      for (const p of src.deleted) {
        const bad = nameProblem(p);
        if (bad) throw new TsruncError(`image source: deleted path ${JSON.stringify(p)}: ${bad}`);
        deleted.push(p);
      }
    }
  }
  // parent directories shared by two sources (two paths under "meta/", say) are one entry
  const byName = new Map<string, PlanItem>();
  const out: PlanItem[] = [];
  for (const item of plan) {
    const prev = byName.get(item.name);
    if (prev === undefined) {
      byName.set(item.name, item);
      out.push(item);
    } else if (!(prev.type === 'directory' && item.type === 'directory')) {
      throw new TsruncError(`image source: two sources write ${JSON.stringify(item.name)}`);
    }
  }
  return { plan: out, deleted, skipped };
}

type Headers = Partial<Header> & Pick<Header, 'name'>;

function tarHeader(item: PlanItem): Headers {
  const h: Headers = {
    name: item.name, type: item.type, mode: item.mode, size: item.size,
    uid: item.uid, gid: item.gid, mtime: item.mtime,
  };
  if (item.linkname !== undefined) h.linkname = item.linkname;
  if (item.devmajor !== undefined) {
    h.devmajor = item.devmajor;
    h.devminor = item.devminor;
  }
  if (item.mtimeNs !== undefined && item.mtimeNs >= 0n) {
    const ns = item.mtimeNs % 1_000_000_000n;
    h.pax = { mtime: `${item.mtimeNs / 1_000_000_000n}.${ns.toString().padStart(9, '0')}` };
  }
  return h;
}

async function addBuffer(pack: Pack, header: Headers, data: Buffer): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    pack.entry(header, data, (err) => (err ? reject(err) : resolve())).on('error', ignore);
  });
}

export async function writeImage(opts: WriteImageOptions): Promise<WriteImageResult> {
  const created = opts.manifestBase.created ? new Date(opts.manifestBase.created) : new Date();
  if (Number.isNaN(created.getTime())) throw new TsruncError(`image: created is not a date (${opts.manifestBase.created})`);
  const compressor = createCompressor({ level: opts.compressLevel, workers: opts.workers });
  const { plan, deleted, skipped } = await makePlan(opts.sources, created);

  const header: ImageHeader = {
    format: IMAGE_FORMAT,
    version: IMAGE_VERSION,
    containerId: opts.manifestBase.containerId,
    created: created.toISOString(),
    entries: plan.length,
    contentBytes: plan.reduce((n, i) => n + i.size, 0),
  };

  opts.onHeader?.(header);
  let bytesIn = 0;
  let bytesOut = 0;
  const progress = () => opts.onProgress?.(bytesIn, bytesOut);

  const toFile = typeof opts.out === 'string' ? opts.out : undefined;
  const tmp = toFile !== undefined ? `${toFile}.${process.pid}.partial` : undefined;
  const sink = tmp !== undefined ? createWriteStream(tmp, { mode: 0o600 }) : (opts.out as NodeJS.WritableStream);

  const pack = tarPack();
  // streamx throws an 'error' nobody listens to; ours are taken from the promises instead
  pack.on('error', ignore);
  const entries: ManifestEntry[] = [];
  let failure: unknown;
  const fail = (e: unknown) => {
    failure ??= e;
    pack.destroy(e instanceof Error ? e : new Error(String(e)));
  };

  const writeFile = async (item: PlanItem): Promise<string> => {
    const abs = item.abs as string;
    const fh = await open(abs, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NOCTTY);
    try {
      const st = await fh.stat({ bigint: true });
      if (!st.isFile() || st.ino !== item.ino || Number(st.size) !== item.size) throw new TsruncError(`image source: ${abs} changed while the image was written`);
      const hash = createHash('sha256');
      let settle: (err?: Error | null) => void = () => {};
      const finished = new Promise<void>((resolve, reject) => {
        settle = (err) => (err ? reject(err) : resolve());
      });
      finished.catch(() => {}); // awaited below; a read error may come first
      const entry = pack.entry(tarHeader(item), (err) => settle(err));
      entry.on('error', ignore);
      // reads run ahead of hashing and packing, READ_AHEAD chunks at most, so the disk is never idle
      let queued = 0;
      const ahead: { read: Promise<Buffer>; len: number }[] = [];
      const queueReads = () => {
        while (ahead.length < READ_AHEAD && queued < item.size) {
          const len = Math.min(READ_CHUNK, item.size - queued);
          const at = queued;
          queued += len;
          const buf = Buffer.allocUnsafe(len);
          const read = fh.read(buf, 0, len, at).then(({ bytesRead }) => buf.subarray(0, bytesRead));
          read.catch(() => {}); // awaited in order below
          ahead.push({ read, len });
        }
      };
      queueReads();
      while (ahead.length > 0) {
        const next = ahead.shift() as { read: Promise<Buffer>; len: number };
        const chunk = await next.read;
        queueReads();
        // a regular file reads short only at its end: it shrank since it was measured
        if (chunk.length < next.len) throw new TsruncError(`image source: ${abs} shrank while the image was written`);
        hash.update(chunk);
        bytesIn += chunk.length;
        progress();
        if (!(await writeWithRoom(entry, chunk))) throw failure ?? new TsruncError('image: the tar stream was torn down');
      }
      entry.end(null);
      await finished;
      return hash.digest('hex');
    } finally {
      await fh.close();
    }
  };

  const produce = async () => {
    await addBuffer(pack, { name: HEADER_NAME, mode: 0o644, mtime: created, type: 'file' }, Buffer.from(`${JSON.stringify(header)}\n`));
    for (const item of plan) {
      let sha256 = EMPTY_SHA256;
      if (item.data !== undefined) {
        sha256 = createHash('sha256').update(item.data).digest('hex');
        await addBuffer(pack, tarHeader(item), item.data);
        bytesIn += item.data.length;
        progress();
      } else if (item.type === 'file') {
        sha256 = await writeFile(item);
      } else {
        if (item.linkname !== undefined) sha256 = createHash('sha256').update(item.linkname).digest('hex');
        await new Promise<void>((resolve, reject) => {
          pack.entry(tarHeader(item), (err) => (err ? reject(err) : resolve())).on('error', ignore).end(null);
        });
      }
      const e: ManifestEntry = { path: item.name, type: item.type, size: item.size, sha256, kind: item.kind, mode: item.mode };
      if (item.linkname !== undefined) e.linkname = item.linkname;
      entries.push(e);
    }
    const base = opts.manifestBase;
    const manifest: Manifest = {
      format: IMAGE_FORMAT,
      version: IMAGE_VERSION,
      created: header.created,
      containerId: base.containerId,
      tsrunc: base.tsrunc,
      criu: { version: base.criu.version },
      kernel: base.kernel,
      arch: base.arch,
      cpu: { vendor: base.cpu.vendor, model: base.cpu.model, flags: [...base.cpu.flags] },
      ...(base.parent !== undefined ? { parent: base.parent } : {}),
      entries,
      ...(deleted !== undefined || entries.some((e) => e.kind === 'rootfs')
        ? { rootfsDiff: { added: entries.filter((e) => e.kind === 'rootfs' && e.path !== ROOTFS_PART).length, deleted: deleted ?? [] } }
        : {}),
      totals: totalsOf(entries),
    };
    await addBuffer(pack, { name: MANIFEST_NAME, mode: 0o644, mtime: created, type: 'file' }, Buffer.from(`${JSON.stringify(manifest)}\n`));
    pack.finalize();
    return manifest;
  };

  const packed = (async function* () {
    for await (const chunk of pack) yield chunk as Buffer;
  })();
  const count = async function* (source: AsyncIterable<Buffer>) {
    for await (const chunk of source) {
      bytesOut += chunk.length;
      progress();
      yield chunk;
    }
  };

  let manifest: Manifest | undefined;
  await Promise.all([
    produce().then((m) => { manifest = m; }, fail),
    pipeline(packed, compressor, count, sink).catch(fail),
  ]);
  if (failure !== undefined || manifest === undefined) {
    if (tmp !== undefined) await rm(tmp, { force: true });
    const e = failure ?? new Error('no manifest');
    throw e instanceof TsruncError ? e : new TsruncError(`writing the image: ${errnoMessage(e)}`);
  }
  if (tmp !== undefined && toFile !== undefined) await rename(tmp, toFile);
  progress();
  return { bytesIn, bytesOut, manifest, skipped };
}
