/**
 * Reads a checkpoint image in one pass into a staging directory: zstd-decoded and untarred as it
 * arrives, every entry checked before a byte of it is written and hashed while it is written, then
 * every entry checked against the manifest. On any failure the staging directory is removed whole.
 *
 * Nothing is ever written through a symlink: each entry's parents must be directories this reader
 * made itself, files are created with O_EXCL|O_NOFOLLOW, and a name is never written twice.
 */
import { createHash } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import { chmod, chown, lchown, link, lstat, lutimes, mkdir, open, readdir, rm, symlink, utimes, writeFile, type FileHandle } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { extract as tarExtract, type Header } from 'tar-stream';
import { TsruncError, errnoMessage } from '../errors.js';
import {
  HEADER_NAME, MANIFEST_NAME, ROOTFS_PART, validateHeader, validateManifest,
  type EntryType, type ImageHeader, type Manifest,
} from './manifest.js';
import { ancestorsOf, formatBytes, linkStaysInside, nameProblem, partOf } from './names.js';
import { mknod, type NodeType } from './nodes.js';
import { writeWithRoom } from './streams.js';
import { zstdDecode } from './zstd.js';

export interface ReadLimits {
  /** largest single entry, default maxTotalSize */
  maxEntrySize?: number;
  /** most bytes of entry data in all, default 64 GiB; the header's declaration must be within it too */
  maxTotalSize?: number;
  /** most entries, default 1,000,000 */
  maxEntries?: number;
  /** refuse once the decompressed stream is more than this many times the compressed bytes read (after the first MiB); default: no ratio limit */
  maxExpansion?: number;
}

export interface ReadImageOptions {
  input: NodeJS.ReadableStream | AsyncIterable<Buffer>;
  /** directory to create (its parent must exist), or an existing empty one */
  staging: string;
  limits?: ReadLimits;
  /** accept device nodes, fifos and setuid/setgid files in the rootfs part */
  allowDevices?: boolean;
  /** compressed bytes read so far, decompressed bytes so far */
  onProgress?: (bytesIn: number, bytesOut: number) => void;
  /** the header, once read and checked (it declares the content size) */
  onHeader?: (header: ImageHeader) => void;
  /** entries to write into staging (all by default); the others are still read, checked and hashed */
  select?: (path: string) => boolean;
}

export interface ReadImageResult {
  manifest: Manifest;
  header: ImageHeader;
  staging: string;
  bytesIn: number;
  bytesOut: number;
}

const GiB = 1024 ** 3;
const DEFAULT_MAX_TOTAL = 64 * GiB;
const DEFAULT_MAX_ENTRIES = 1_000_000;
const HEADER_MAX = 64 * 1024;
const MANIFEST_MAX = 64 * 1024 * 1024;
/** tar bytes between one entry's data and the next's: padding, the next header block, a pax header for long names */
const ENTRY_OVERHEAD = 16 * 1024;
/** after the manifest: tar's end-of-archive blocks, and padding to a record by other tars */
const TRAILER_MAX = 64 * 1024;
const EXPANSION_GRACE = 1024 * 1024;
/** what the decoder may run ahead of the tar parser: its output buffer and the parser's queue, with room to spare */
const LOOKAHEAD = 1024 * 1024;

const SUPPORTED: readonly EntryType[] = ['file', 'directory', 'symlink', 'link', 'character-device', 'block-device', 'fifo'];
const DEVICE_TYPES: readonly string[] = ['character-device', 'block-device', 'fifo'];

const WRITE_BATCH = 1024 * 1024;
const WRITES_IN_FLIGHT = 4;

/**
 * Writes a file's chunks gathered into batches (one writev each) at their offsets, a few batches
 * in flight at once, so that decompressing and hashing never wait for the disk.
 */
class BatchWriter {
  private batch: Buffer[] = [];
  private batchLen = 0;
  private pos = 0;
  private inFlight: Promise<void>[] = [];

  constructor(private readonly fh: FileHandle) {}

  async add(chunk: Buffer): Promise<void> {
    this.batch.push(chunk);
    this.batchLen += chunk.length;
    if (this.batchLen >= WRITE_BATCH) await this.flush();
  }

  async finish(): Promise<void> {
    await this.flush();
    while (this.inFlight.length > 0) await this.inFlight.shift();
  }

  /** waits for what is in flight, whatever the outcome: the file is closed after */
  async settle(): Promise<void> {
    await Promise.allSettled(this.inFlight);
  }

  private async flush(): Promise<void> {
    if (this.batchLen === 0) return;
    const w = writeAllAt(this.fh, this.batch, this.batchLen, this.pos);
    w.catch(() => {}); // awaited in order by flush or finish
    this.inFlight.push(w);
    this.pos += this.batchLen;
    this.batch = [];
    this.batchLen = 0;
    if (this.inFlight.length >= WRITES_IN_FLIGHT) await this.inFlight.shift();
  }
}

async function writeAllAt(fh: FileHandle, bufs: Buffer[], len: number, at: number): Promise<void> {
  const { bytesWritten } = await fh.writev(bufs, at);
  if (bytesWritten === len) return;
  const rest = Buffer.concat(bufs).subarray(bytesWritten);
  for (let off = 0; off < rest.length;) {
    const r = await fh.write(rest, off, rest.length - off, at + bytesWritten + off);
    off += r.bytesWritten;
  }
}

/** What was seen of an entry, to hold against the manifest. */
interface Seen {
  type: EntryType;
  size: number;
  sha256: string;
  mode: number;
  linkname?: string;
  /** written into staging (false when `select` left it out) */
  written: boolean;
}

/** seconds since the epoch: the pax record's fraction when there is one, else the ustar header's whole seconds */
function mtimeOf(h: Header): number {
  const pax = h.pax as Record<string, string> | null | undefined;
  const p = pax?.mtime;
  if (typeof p === 'string' && /^\d{1,12}(\.\d{1,9})?$/.test(p)) return Number(p);
  return Math.floor((h.mtime?.getTime() ?? 0) / 1000);
}

function refuse(name: string, why: string): never {
  throw new TsruncError(`refusing entry ${JSON.stringify(name)}: ${why}`);
}

function tarError(e: unknown): unknown {
  if (e instanceof TsruncError || !(e instanceof Error)) return e;
  if (e.message === 'Unexpected end of data') return new TsruncError('image truncated: the tar stream ends inside an entry');
  if (e.message.startsWith('Invalid tar header')) return new TsruncError(`image corrupt: tar: ${e.message.replace(/\. Maybe.*$/, '')}`);
  if (e.message === 'Header exceeds max size') return new TsruncError('image corrupt: tar: a pax or long-name header is too large');
  return e;
}

async function prepareStaging(staging: string): Promise<void> {
  let st;
  try {
    st = await lstat(staging);
  } catch (e) {
    if ((e as { code?: string }).code !== 'ENOENT') throw new TsruncError(`staging dir ${staging}: ${errnoMessage(e)}`);
  }
  if (st !== undefined) {
    if (!st.isDirectory()) throw new TsruncError(`staging dir ${staging} exists and is not a directory`);
    if ((await readdir(staging)).length > 0) throw new TsruncError(`staging dir ${staging} is not empty`);
    await chmod(staging, 0o700);
    return;
  }
  await mkdir(dirname(staging), { recursive: true });
  await mkdir(staging, { mode: 0o700 });
}

export async function readImage(opts: ReadImageOptions): Promise<ReadImageResult> {
  const staging = opts.staging;
  const maxTotal = opts.limits?.maxTotalSize ?? DEFAULT_MAX_TOTAL;
  const maxEntry = opts.limits?.maxEntrySize ?? maxTotal;
  const maxEntries = opts.limits?.maxEntries ?? DEFAULT_MAX_ENTRIES;
  const maxExpansion = opts.limits?.maxExpansion;
  const allowDevices = opts.allowDevices === true;
  const asRoot = process.getuid?.() === 0;

  await prepareStaging(staging);

  let bytesIn = 0;
  let bytesOut = 0;
  /**
   * How far the decompressed stream may go: moved on at each entry to its end plus room for the
   * next header, so zero blocks or junk between entries (which tar skips) cannot run on.
   */
  let streamBound = HEADER_MAX + LOOKAHEAD;
  const allowNext = (size: number, slack = ENTRY_OVERHEAD) => {
    streamBound = bytesOut + size + slack + LOOKAHEAD;
  };
  const progress = () => opts.onProgress?.(bytesIn, bytesOut);

  const extract = tarExtract();
  // streamx throws an 'error' nobody listens to; the first failure is kept in `failure` instead
  extract.on('error', () => {});
  let failure: unknown;
  const fail = (e: unknown) => {
    failure ??= e;
    extract.destroy(e instanceof Error ? e : new Error(String(e)));
    // stop reading: a pipe or socket is not drained to its end for an image already refused
    const input = opts.input as { destroy?: () => void };
    if (typeof input.destroy === 'function') input.destroy();
  };

  const countIn = async function* (src: AsyncIterable<Buffer | string>) {
    for await (const chunk of src) {
      bytesIn += chunk.length;
      yield typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    }
  };
  const guard = (produced: number) => {
    bytesOut += produced;
    progress();
    if (bytesOut > streamBound) {
      throw new TsruncError(`image expands beyond the size it declared (${formatBytes(streamBound)}): refusing to decompress further`);
    }
    if (maxExpansion !== undefined && bytesOut > EXPANSION_GRACE && bytesOut > bytesIn * maxExpansion) {
      throw new TsruncError(`image expands more than ${maxExpansion} times its compressed size: refusing to decompress further`);
    }
  };

  const produce = async () => {
    for await (const chunk of zstdDecode(countIn(opts.input as AsyncIterable<Buffer>), guard)) {
      if (failure !== undefined || !(await writeWithRoom(extract, chunk))) return;
    }
    if (failure === undefined) extract.end(null);
  };

  let header: ImageHeader | undefined;
  let manifestText: string | undefined;
  /** every name an entry (or an entry's implicit parent) took, with its type */
  const nodes = new Map<string, EntryType>();
  /** directories made only as parents, that an entry of their own may still describe */
  const implicit = new Set<string>();
  /** directories that exist in staging */
  const made = new Set<string>();
  const seen = new Map<string, Seen>();
  const dirs: { abs: string; mode: number; uid: number; gid: number; mtime: number }[] = [];
  let contentSeen = 0;

  const readSmall = async (entry: AsyncIterable<Buffer>, max: number, name: string): Promise<string> => {
    const parts: Buffer[] = [];
    let n = 0;
    for await (const chunk of entry) {
      n += chunk.length;
      if (n > max) refuse(name, `larger than ${formatBytes(max)}`);
      parts.push(chunk);
    }
    return Buffer.concat(parts).toString('utf8');
  };

  const parseJson = (text: string, what: string): unknown => {
    try {
      return JSON.parse(text);
    } catch (e) {
      throw new TsruncError(`${what} is not valid JSON: ${(e as Error).message}`);
    }
  };

  const checkEntry = (h: Header, name: string): void => {
    const type = h.type as EntryType;
    if (!SUPPORTED.includes(type)) refuse(h.name, `unsupported tar entry type ${JSON.stringify(h.type)}`);
    const bad = nameProblem(name);
    if (bad) refuse(h.name, bad);
    if (name === HEADER_NAME) refuse(name, 'a second header');
    if (nodes.has(name) && !(implicit.has(name) && type === 'directory')) refuse(name, 'it appears twice');
    const size = h.size ?? 0;
    if (type !== 'file' && size !== 0) refuse(name, `a ${type} entry with data`);
    const part = partOf(name) === '' ? name : partOf(name);
    const inRootfs = part === ROOTFS_PART;
    for (const a of ancestorsOf(name)) {
      const t = nodes.get(a);
      if (t !== undefined && t !== 'directory') refuse(name, `its parent "${a}" is a ${t === 'link' ? 'hardlink' : t}`);
    }
    if (DEVICE_TYPES.includes(type)) {
      if (!inRootfs) refuse(name, `a ${type} outside the rootfs part`);
      if (!allowDevices) refuse(name, `device nodes and fifos are refused unless devices are allowed (--allow-devices)`);
    }
    const mode = (h.mode ?? 0) & 0o7777;
    if (type === 'file' && (mode & 0o6000) !== 0 && !(inRootfs && allowDevices)) {
      refuse(name, `setuid/setgid file (mode ${mode.toString(8).padStart(4, '0')}) refused ${inRootfs ? 'unless devices are allowed (--allow-devices)' : 'outside the rootfs part'}`);
    }
    if (type === 'symlink') {
      const target = h.linkname ?? '';
      if (target === '' || target.includes('\0') || Buffer.byteLength(target) > 4096) refuse(name, 'symlink with an empty or invalid target');
      if (!inRootfs) {
        if (target.startsWith('/')) refuse(name, `symlink to an absolute path (${JSON.stringify(target)})`);
        if (!linkStaysInside(name, target, partOf(name))) refuse(name, `symlink ${JSON.stringify(target)} leads out of ${partOf(name) === '' ? 'the image' : `"${partOf(name)}/"`}`);
      }
    }
    if (type === 'link') {
      const target = h.linkname ?? '';
      const lbad = nameProblem(target);
      if (lbad) refuse(name, `hardlink to ${JSON.stringify(target)}: ${lbad}`);
      if (partOf(target) !== partOf(name)) refuse(name, `hardlink to ${JSON.stringify(target)} leads out of its part`);
      if (nodes.get(target) !== 'file') refuse(name, `hardlink to ${JSON.stringify(target)}, which is not an earlier file of the image`);
    }
    if (size > maxEntry) refuse(name, `${formatBytes(size)} is over the entry size limit (${formatBytes(maxEntry)})`);
    const declared = (header as ImageHeader).contentBytes;
    if (contentSeen + size > declared) {
      refuse(name, `${formatBytes(size)} goes beyond the ${formatBytes(declared)} the image declared (decompression bomb?)`);
    }
    if (contentSeen + size > maxTotal) refuse(name, `the image's data goes over the size limit (${formatBytes(maxTotal)})`);
  };

  /** makes the parents of `name` not made yet (mode 0700; an entry of their own sets theirs) */
  const ensureParents = async (name: string) => {
    for (const a of ancestorsOf(name)) {
      if (made.has(a)) continue;
      await mkdir(join(staging, a), { mode: 0o700 });
      made.add(a);
      if (!nodes.has(a)) {
        nodes.set(a, 'directory');
        implicit.add(a);
      }
    }
  };

  const writeEntry = async (h: Header, name: string, entry: AsyncIterable<Buffer>, write: boolean): Promise<Seen> => {
    const type = h.type as EntryType;
    const abs = join(staging, name);
    const mode = (h.mode ?? 0) & 0o7777;
    const mtime = mtimeOf(h);
    const s: Seen = { type, size: 0, sha256: '', mode, written: write };
    const hash = createHash('sha256');
    if (write) await ensureParents(name);
    if (type === 'file') {
      const fh = write ? await open(abs, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600) : undefined;
      const writer = fh ? new BatchWriter(fh) : undefined;
      try {
        for await (const chunk of entry) {
          hash.update(chunk);
          s.size += chunk.length;
          contentSeen += chunk.length;
          if (writer) await writer.add(chunk);
        }
        if (fh && writer) {
          await writer.finish();
          // chown before chmod: chown clears setuid/setgid
          if (asRoot) await fh.chown(h.uid ?? 0, h.gid ?? 0);
          await fh.chmod(mode);
          await fh.utimes(mtime, mtime);
        }
      } finally {
        await writer?.settle();
        await fh?.close();
      }
    } else {
      if (type === 'symlink' || type === 'link') {
        s.linkname = h.linkname ?? '';
        hash.update(s.linkname);
      }
      if (write) {
        if (type === 'directory') {
          if (!made.has(name)) await mkdir(abs, { mode: 0o700 });
          made.add(name);
          dirs.push({ abs, mode, uid: h.uid ?? 0, gid: h.gid ?? 0, mtime });
        } else if (type === 'symlink') {
          await symlink(s.linkname as string, abs);
          if (asRoot) await lchown(abs, h.uid ?? 0, h.gid ?? 0);
          await lutimes(abs, mtime, mtime);
        } else if (type === 'link') {
          // a target left out by `select` is not there to link to
          if (seen.get(s.linkname as string)?.written) await link(join(staging, s.linkname as string), abs);
          else s.written = false;
        } else {
          mknod(abs, type as NodeType, 0o600, h.devmajor ?? 0, h.devminor ?? 0);
          if (asRoot) await chown(abs, h.uid ?? 0, h.gid ?? 0);
          await chmod(abs, mode);
          await utimes(abs, mtime, mtime);
        }
      }
      for await (const _ of entry) {
        // size 0: nothing to read, but the entry must be consumed for the next to come
      }
    }
    s.sha256 = hash.digest('hex');
    return s;
  };

  const consume = async () => {
    const it = extract[Symbol.asyncIterator]();
    let index = 0;
    for (;;) {
      let r: IteratorResult<AsyncIterable<Buffer> & { header: Header }>;
      try {
        r = (await it.next()) as typeof r;
      } catch (e) {
        throw tarError(e);
      }
      if (r.done) break;
      const entry = r.value;
      const h = entry.header;
      const name = h.type === 'directory' && h.name.endsWith('/') ? h.name.slice(0, -1) : h.name;
      if (manifestText !== undefined) throw new TsruncError(`image has an entry after its manifest (${JSON.stringify(name)})`);
      try {
        if (index++ === 0) {
          if (name !== HEADER_NAME || h.type !== 'file') throw new TsruncError(`not a tsrunc image: the first entry is ${JSON.stringify(name)}, not ${HEADER_NAME}`);
          header = validateHeader(parseJson(await readSmall(entry, HEADER_MAX, name), 'image header'));
          opts.onHeader?.(header);
          if (header.contentBytes > maxTotal) {
            throw new TsruncError(`image declares ${formatBytes(header.contentBytes)} of data, over the size limit (${formatBytes(maxTotal)})`);
          }
          if (header.entries > maxEntries) throw new TsruncError(`image declares ${header.entries} entries, over the limit (${maxEntries})`);
          allowNext(0);
          await writeFile(join(staging, HEADER_NAME), `${JSON.stringify(header)}\n`, { flag: 'wx', mode: 0o600 });
          nodes.set(HEADER_NAME, 'file');
          continue;
        }
        const hdr = header as ImageHeader;
        if (name === MANIFEST_NAME) {
          if (h.type !== 'file') refuse(name, 'the manifest is not a file');
          if (h.size > MANIFEST_MAX) refuse(name, `larger than ${formatBytes(MANIFEST_MAX)}`);
          allowNext(h.size, TRAILER_MAX);
          manifestText = await readSmall(entry, MANIFEST_MAX, name);
          continue;
        }
        if (seen.size >= hdr.entries) refuse(name, `more entries than the ${hdr.entries} the image declared`);
        checkEntry(h, name);
        allowNext(h.size ?? 0);
        const s = await writeEntry(h, name, entry, opts.select?.(name) ?? true);
        seen.set(name, s);
        nodes.set(name, s.type);
        implicit.delete(name);
      } catch (e) {
        throw tarError(e);
      }
    }
  };

  try {
    await Promise.all([produce().catch(fail), consume().catch(fail)]);
    if (failure !== undefined) throw failure;
    if (header === undefined) throw new TsruncError('image truncated: it has no header');
    if (manifestText === undefined) throw new TsruncError('image truncated: it ends before its manifest');
    const manifest = validateManifest(parseJson(manifestText, 'manifest'));
    checkAgainstManifest(manifest, header, seen);
    await writeFile(join(staging, MANIFEST_NAME), manifestText, { flag: 'wx', mode: 0o600 });
    // directories last and deepest first: a read-only one must not stop what goes in it
    for (const d of dirs.reverse()) {
      if (asRoot) await chown(d.abs, d.uid, d.gid);
      await chmod(d.abs, d.mode);
      await utimes(d.abs, d.mtime, d.mtime);
    }
    progress();
    return { manifest, header, staging, bytesIn, bytesOut };
  } catch (e) {
    await rm(staging, { recursive: true, force: true }).catch(() => {});
    if (e instanceof TsruncError) throw e;
    throw new TsruncError(`reading the image: ${errnoMessage(e)}`);
  }
}

/** Every entry of the image listed in the manifest, with its type, size, mode and digest; nothing more, nothing less. */
function checkAgainstManifest(m: Manifest, header: ImageHeader, seen: Map<string, Seen>): void {
  if (m.containerId !== header.containerId || m.created !== header.created) {
    throw new TsruncError('image corrupt: its manifest and its header name different checkpoints');
  }
  for (const e of m.entries) {
    const s = seen.get(e.path);
    if (s === undefined) throw new TsruncError(`entry ${JSON.stringify(e.path)} is in the manifest but missing from the image`);
    if (s.type !== e.type) throw new TsruncError(`entry ${JSON.stringify(e.path)}: the manifest says ${e.type}, the image has ${s.type}`);
    if (s.size !== e.size) throw new TsruncError(`entry ${JSON.stringify(e.path)}: size mismatch (manifest ${e.size} bytes, image ${s.size})`);
    if (s.sha256 !== e.sha256) {
      throw new TsruncError(`entry ${JSON.stringify(e.path)}: sha256 mismatch (manifest ${e.sha256.slice(0, 12)}…, image ${s.sha256.slice(0, 12)}…)`);
    }
    if (s.mode !== e.mode) throw new TsruncError(`entry ${JSON.stringify(e.path)}: mode mismatch (manifest ${e.mode.toString(8)}, image ${s.mode.toString(8)})`);
  }
  if (seen.size !== m.entries.length) {
    const listed = new Set(m.entries.map((e) => e.path));
    const extra = [...seen.keys()].find((p) => !listed.has(p));
    throw new TsruncError(`entry ${JSON.stringify(extra)} is in the image but not in its manifest`);
  }
  if (header.entries !== m.entries.length || header.contentBytes !== m.totals.bytes) {
    throw new TsruncError('image corrupt: its header and its manifest declare different sizes');
  }
}
