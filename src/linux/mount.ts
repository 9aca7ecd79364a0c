/** mount(2)/umount2(2) for the runtime itself (koffi; loaded only where needed). */
import { createRequire } from 'node:module';
import { TsruncError } from '../errors.js';

type Fn = (...a: unknown[]) => number;
let fns: { mount: Fn; umount2: Fn; errno: () => number } | undefined;

function libc() {
  if (fns) return fns;
  const req = typeof require === 'function' ? require : createRequire(import.meta.url);
  const koffi = req('koffi') as typeof import('koffi');
  const c = koffi.load('libc.so.6');
  const loc = c.func('int *__errno_location()') as () => unknown;
  return (fns = {
    mount: c.func('int mount(const char *, const char *, const char *, unsigned long, const void *)') as Fn,
    umount2: c.func('int umount2(const char *, int)') as Fn,
    errno: () => koffi.decode(loc(), 'int') as number,
  });
}

const MS_BIND = 0x1000, MS_REC = 0x4000, MNT_DETACH = 2;

export function bindMount(source: string, target: string): void {
  const l = libc();
  if (l.mount(source, target, null, MS_BIND | MS_REC, null) < 0) throw new TsruncError(`cannot bind ${source} on ${target}: errno ${l.errno()}`);
}

export function detach(target: string): void {
  libc().umount2(target, MNT_DETACH);
}
