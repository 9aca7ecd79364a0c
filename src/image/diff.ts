/**
 * The rootfs diff: a snapshot of a writable rootfs taken at create time (lstat facts only, cheap,
 * kept as JSON), what changed since, and applying the changes to another copy of the rootfs.
 * Nothing here follows a symlink of the rootfs: they are container-controlled.
 */
import type { BigIntStats } from 'node:fs';
import { constants as fsc } from 'node:fs';
import { chmod, copyFile, lchown, link, lstat, lutimes, mkdir, readlink, rename, rm, symlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { TsruncError, errnoMessage } from '../errors.js';
import { ancestorsOf, nameProblem } from './names.js';
import { mknod, splitDev } from './nodes.js';
import { walkTree } from './walk.js';

/** [inode, st_mode, size, mtime ns, ctime ns]; big numbers as decimal strings */
export type SnapshotRecord = [ino: string, mode: number, size: number, mtimeNs: string, ctimeNs: string];

export interface Snapshot {
  version: 1;
  /** ISO time the snapshot was taken */
  taken: string;
  /** paths relative to the rootfs */
  entries: Record<string, SnapshotRecord>;
}

export interface RootfsDiff {
  /** added or changed since the snapshot, parents before children */
  changed: string[];
  /** gone since the snapshot; a deleted directory stands for everything it held */
  deleted: string[];
}

function record(st: BigIntStats): SnapshotRecord {
  return [st.ino.toString(), Number(st.mode), Number(st.size), st.mtimeNs.toString(), st.ctimeNs.toString()];
}

/** The rootfs as it is now; mounts inside it (another filesystem) are not entered. */
export async function snapshotRootfs(dir: string): Promise<Snapshot> {
  const tree = await walkTree(dir, { oneFileSystem: true, ignoreVanished: true });
  const entries: Record<string, SnapshotRecord> = {};
  for (const t of tree) entries[t.path] = record(t.stat);
  return { version: 1, taken: new Date().toISOString(), entries };
}

/** Checks a snapshot read back from JSON. */
export function validateSnapshot(x: unknown): Snapshot {
  const s = x as Snapshot;
  if (typeof x !== 'object' || x === null || s.version !== 1 || typeof s.entries !== 'object' || s.entries === null) {
    throw new TsruncError('rootfs snapshot: not a version 1 snapshot');
  }
  for (const [p, r] of Object.entries(s.entries)) {
    if (nameProblem(p) !== undefined || !Array.isArray(r) || r.length !== 5) throw new TsruncError(`rootfs snapshot: bad entry ${JSON.stringify(p)}`);
  }
  return s;
}

/**
 * What changed in `dir` since `snapshot`: any difference of inode, mode, size, mtime or ctime
 * (ctime cannot be set back by the container, so a file changed and re-dated still shows).
 */
export async function diffRootfs(dir: string, snapshot: Snapshot): Promise<RootfsDiff> {
  const tree = await walkTree(dir, { oneFileSystem: true, ignoreVanished: true });
  const now = new Set<string>();
  const changed: string[] = [];
  for (const t of tree) {
    now.add(t.path);
    const was = snapshot.entries[t.path];
    const is = record(t.stat);
    if (was === undefined || is.some((v, i) => v !== was[i])) changed.push(t.path);
  }
  const gone = Object.keys(snapshot.entries).filter((p) => !now.has(p));
  const goneSet = new Set(gone);
  const deleted = gone.filter((p) => !ancestorsOf(p).some((a) => goneSet.has(a))).sort();
  return { changed, deleted };
}

function seconds(ns: bigint): number {
  return Number(ns / 1_000_000_000n) + Number(ns % 1_000_000_000n) / 1e9;
}

function isCode(e: unknown, code: string): boolean {
  return typeof e === 'object' && e !== null && (e as { code?: string }).code === code;
}

async function lstatOrUndefined(path: string): Promise<BigIntStats | undefined> {
  try {
    return await lstat(path, { bigint: true });
  } catch (e) {
    if (isCode(e, 'ENOENT')) return undefined;
    throw e;
  }
}

export interface ApplyResult {
  copied: number;
  deleted: number;
}

/**
 * Applies a rootfs diff read into `stagingRootfs` (changed files, with their parents) and the
 * `deleted` list to `targetRootfs`: deletions first, then every staged entry copied in with its
 * mode, owner and mtime; symlinks stay links, hardlinked files stay hardlinked. Every directory
 * on the way in the target must be a real directory (a symlink there is refused, never followed);
 * entries are created under a temporary name and renamed over the old one.
 */
export async function applyRootfsDiff(stagingRootfs: string, deleted: readonly string[], targetRootfs: string): Promise<ApplyResult> {
  const rootSt = await lstatOrUndefined(targetRootfs);
  if (!rootSt?.isDirectory()) throw new TsruncError(`rootfs diff: ${targetRootfs} is not a directory`);
  const asRoot = process.getuid?.() === 0;
  /** target directories known to be real directories */
  const realDirs = new Set<string>();

  const checkParents = async (rel: string, create: boolean): Promise<boolean> => {
    for (const a of ancestorsOf(rel)) {
      if (realDirs.has(a)) continue;
      const st = await lstatOrUndefined(join(targetRootfs, a));
      if (st === undefined) {
        if (!create) return false;
        await mkdir(join(targetRootfs, a), { mode: 0o755 });
      } else if (!st.isDirectory()) {
        throw new TsruncError(`rootfs diff: ${join(targetRootfs, a)} is not a directory (${st.isSymbolicLink() ? 'a symlink' : 'a file'}): refusing to go through it`);
      }
      realDirs.add(a);
    }
    return true;
  };

  let removed = 0;
  for (const p of deleted) {
    const bad = nameProblem(p);
    if (bad) throw new TsruncError(`rootfs diff: deleted path ${JSON.stringify(p)}: ${bad}`);
    if (!(await checkParents(p, false))) continue;
    const abs = join(targetRootfs, p);
    if ((await lstatOrUndefined(abs)) === undefined) continue;
    await rm(abs, { recursive: true, force: true });
    removed++;
  }

  const own = async (path: string, st: BigIntStats) => {
    try {
      await lchown(path, Number(st.uid), Number(st.gid));
    } catch (e) {
      if (asRoot || !isCode(e, 'EPERM')) throw e;
    }
  };

  const tree = await walkTree(stagingRootfs);
  const linked = new Map<string, string>();
  const dirs: { abs: string; st: BigIntStats }[] = [];
  let seq = 0;
  let copied = 0;
  /** a temporary name not yet renamed into place, removed if anything fails */
  let pending: string | undefined;
  try {
    for (const t of tree) {
      if (t.type === 'socket') continue;
      await checkParents(t.path, true);
      const src = join(stagingRootfs, t.path);
      const dst = join(targetRootfs, t.path);
      const st = t.stat;
      const old = await lstatOrUndefined(dst);
      if (t.type === 'directory') {
        if (!old?.isDirectory()) {
          if (old !== undefined) await rm(dst, { force: true });
          await mkdir(dst, { mode: 0o700 });
        }
        realDirs.add(t.path);
        dirs.push({ abs: dst, st });
        copied++;
        continue;
      }
      const tmp = join(dirname(dst), `.tsrunc-apply-${process.pid}-${seq++}`);
      pending = tmp;
      const key = `${st.dev}:${st.ino}`;
      const first = st.nlink > 1n && t.type === 'file' ? linked.get(key) : undefined;
      if (first !== undefined) {
        await link(first, tmp);
      } else {
        if (t.type === 'file') {
          await copyFile(src, tmp, fsc.COPYFILE_EXCL);
        } else if (t.type === 'symlink') {
          await symlink(await readlink(src), tmp);
        } else {
          const { major, minor } = splitDev(st.rdev);
          mknod(tmp, t.type, 0o600, major, minor);
        }
        await own(tmp, st);
        if (t.type !== 'symlink') await chmod(tmp, Number(st.mode) & 0o7777);
        await lutimes(tmp, seconds(st.mtimeNs), seconds(st.mtimeNs));
        if (t.type === 'file' && st.nlink > 1n) linked.set(key, dst);
      }
      // rename replaces a file or link in place; a directory in the way has to go first
      if (old?.isDirectory()) await rm(dst, { recursive: true, force: true });
      await rename(tmp, dst);
      pending = undefined;
      copied++;
    }
    for (const d of dirs.reverse()) {
      await own(d.abs, d.st);
      await chmod(d.abs, Number(d.st.mode) & 0o7777);
      await lutimes(d.abs, seconds(d.st.mtimeNs), seconds(d.st.mtimeNs));
    }
  } catch (e) {
    if (pending !== undefined) await rm(pending, { force: true }).catch(() => {});
    if (e instanceof TsruncError) throw e;
    throw new TsruncError(`rootfs diff: applying to ${targetRootfs}: ${errnoMessage(e)}`);
  }
  return { copied, deleted: removed };
}
