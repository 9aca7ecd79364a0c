/** Device numbers and mknod(2), which Node does not offer (libc through koffi, loaded only when a node is made). */
import { constants } from 'node:os';
import { TsruncError } from '../errors.js';
import { libcFunc, libc } from '../linux/libc.js';

export type NodeType = 'character-device' | 'block-device' | 'fifo';

const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;
const S_IFIFO = 0o010000;

/** glibc's major()/minor() of a dev_t */
export function splitDev(rdev: bigint): { major: number; minor: number } {
  const major = Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
  const minor = Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));
  return { major, minor };
}

/** glibc's makedev() */
export function makeDev(major: number, minor: number): bigint {
  const ma = BigInt(major);
  const mi = BigInt(minor);
  return ((ma & 0xfffff000n) << 32n) | ((ma & 0xfffn) << 8n) | ((mi & 0xffffff00n) << 12n) | (mi & 0xffn);
}

/** Creates a device node or fifo at `path` (never following a symlink there: mknod fails on any existing name). */
export function mknod(path: string, type: NodeType, mode: number, major = 0, minor = 0): void {
  const fmt = type === 'character-device' ? S_IFCHR : type === 'block-device' ? S_IFBLK : S_IFIFO;
  const f = libcFunc('int mknod(const char *path, uint32_t mode, uint64_t dev)');
  const dev = type === 'fifo' ? 0n : makeDev(major, minor);
  if (f(path, fmt | (mode & 0o7777), dev) !== 0) {
    const errno = libc().errno();
    const name = Object.entries(constants.errno).find(([, v]) => v === errno)?.[0] ?? `errno ${errno}`;
    throw new TsruncError(`cannot create ${type} ${path}: ${name}${errno === constants.errno.EPERM ? ' (needs CAP_MKNOD)' : ''}`);
  }
}
