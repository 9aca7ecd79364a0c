/** koffi and libc, loaded once and only by the code paths that need them (never at start-up). */
import { createRequire } from 'node:module';

export type Koffi = typeof import('koffi');
type Fn = (...a: unknown[]) => number;

let cached: { koffi: Koffi; lib: import('koffi').IKoffiLib; errno: () => number } | undefined;

export function libc(): { koffi: Koffi; lib: import('koffi').IKoffiLib; errno: () => number } {
  if (cached) return cached;
  // the bundled CLI is CommonJS (require exists); the tsc output is an ES module
  const req = typeof require === 'function' ? require : createRequire(import.meta.url);
  const koffi = req('koffi') as Koffi;
  const lib = koffi.load('libc.so.6');
  const loc = lib.func('int *__errno_location()') as unknown as () => unknown;
  return (cached = { koffi, lib, errno: () => koffi.decode(loc(), 'int') as number });
}

/** One libc function, declared once. */
const fns = new Map<string, Fn>();
export function libcFunc(decl: string): Fn {
  let f = fns.get(decl);
  if (!f) fns.set(decl, (f = libc().lib.func(decl) as unknown as Fn));
  return f;
}
