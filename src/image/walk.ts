/** An lstat walk of a directory tree: never follows a symlink, many lstats in flight at once. */
import type { BigIntStats } from 'node:fs';
import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import PQueue from 'p-queue';
import { TsruncError, errnoMessage } from '../errors.js';
import type { EntryType } from './manifest.js';

export type TreeType = EntryType | 'socket';

export interface TreeEntry {
  /** relative to the walked root, normalized; never "" (the root itself is not listed) */
  path: string;
  type: Exclude<TreeType, 'link'>;
  stat: BigIntStats;
}

export function typeOf(st: BigIntStats): Exclude<TreeType, 'link'> {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'directory';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'character-device';
  if (st.isBlockDevice()) return 'block-device';
  if (st.isFIFO()) return 'fifo';
  return 'socket';
}

export interface WalkOptions {
  /** do not descend into directories on another filesystem than the root's */
  oneFileSystem?: boolean;
  /** skip entries removed while walking instead of failing */
  ignoreVanished?: boolean;
  /** lstat/readdir calls in flight (libuv runs 4 at once by default) */
  concurrency?: number;
}

function isEnoent(e: unknown): boolean {
  return typeof e === 'object' && e !== null && (e as { code?: string }).code === 'ENOENT';
}

/** Every entry under `root`, sorted so that a directory comes before what it holds. */
export async function walkTree(root: string, opts: WalkOptions = {}): Promise<TreeEntry[]> {
  const rootStat = await lstat(root, { bigint: true }).catch((e: unknown) => {
    throw new TsruncError(`cannot read ${root}: ${errnoMessage(e)}`);
  });
  if (!rootStat.isDirectory()) throw new TsruncError(`${root} is not a directory`);
  const queue = new PQueue({ concurrency: opts.concurrency ?? 16 });
  const out: TreeEntry[] = [];
  let failure: unknown;
  const guarded = (fn: () => Promise<void>) => () =>
    fn().catch((e: unknown) => {
      if (opts.ignoreVanished && isEnoent(e)) return;
      failure ??= e;
      queue.clear();
    });

  const visitDir = async (rel: string): Promise<void> => {
    const names = await readdir(join(root, rel), { encoding: 'buffer' });
    for (const raw of names) {
      const name = raw.toString('utf8');
      const path = rel === '' ? name : `${rel}/${name}`;
      // a name that is not UTF-8 cannot travel through tar-stream unchanged
      if (!Buffer.from(name, 'utf8').equals(raw)) throw new TsruncError(`${join(root, path)}: file name is not valid UTF-8`);
      void queue.add(guarded(async () => {
        const stat = await lstat(join(root, path), { bigint: true });
        const type = typeOf(stat);
        out.push({ path, type, stat });
        if (type === 'directory' && !(opts.oneFileSystem && stat.dev !== rootStat.dev)) void queue.add(guarded(() => visitDir(path)));
      }));
    }
  };
  void queue.add(guarded(() => visitDir('')));
  await queue.onIdle();
  if (failure !== undefined) {
    throw failure instanceof TsruncError ? failure : new TsruncError(`cannot walk ${root}: ${errnoMessage(failure)}`);
  }
  return out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}
