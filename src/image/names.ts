/** What an entry name or link target inside an image may look like. Pure functions, no I/O. */
import { posix } from 'node:path';

/** Linux's PATH_MAX and NAME_MAX: anything longer cannot be created anyway. */
const PATH_MAX = 4096;
const NAME_MAX = 255;

/**
 * Why `name` is not a safe relative entry name, or undefined when it is one.
 * Safe means: relative, normalized (no "", "." or ".." component, no trailing slash), no NUL.
 */
export function nameProblem(name: string): string | undefined {
  if (name === '') return 'empty name';
  if (name.includes('\0')) return 'name contains a NUL byte';
  if (name.startsWith('/')) return 'absolute path';
  const parts = name.split('/');
  if (parts.includes('..')) return 'path has a ".." component';
  if (Buffer.byteLength(name) > PATH_MAX) return `path longer than ${PATH_MAX} bytes`;
  if (parts.some((p) => Buffer.byteLength(p) > NAME_MAX)) return `a path component is longer than ${NAME_MAX} bytes`;
  if (posix.normalize(name) !== name || parts.includes('.') || parts.includes('')) return 'path is not normalized';
  return undefined;
}

/** The top-level component of an entry name: the part of the image it belongs to. */
export function partOf(name: string): string {
  const i = name.indexOf('/');
  return i === -1 ? '' : name.slice(0, i);
}

/** The ancestors of a relative name, outermost first: "a/b/c" gives ["a", "a/b"]. */
export function ancestorsOf(name: string): string[] {
  const out: string[] = [];
  for (let i = name.indexOf('/'); i !== -1; i = name.indexOf('/', i + 1)) out.push(name.slice(0, i));
  return out;
}

/**
 * Whether a symlink at `name` pointing at `target` stays inside `root` (a part, "" for the top),
 * resolving lexically as the kernel would if every component were a real directory.
 */
export function linkStaysInside(name: string, target: string, root: string): boolean {
  if (target === '' || target.startsWith('/')) return false;
  const resolved = posix.normalize(posix.join(posix.dirname(name), target));
  if (resolved === '..' || resolved.startsWith('../')) return false;
  if (root === '') return true;
  return resolved === root || resolved.startsWith(`${root}/`);
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}
