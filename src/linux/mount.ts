/** mount(2)/umount2(2) for the runtime itself (koffi; loaded only where needed). */
import { TsruncError } from '../errors.js';
import { libc, libcFunc } from './libc.js';

const MS_BIND = 0x1000, MS_REC = 0x4000, MNT_DETACH = 2;

export function bindMount(source: string, target: string): void {
  const mount = libcFunc('int mount(const char *, const char *, const char *, unsigned long, const void *)');
  if (mount(source, target, null, MS_BIND | MS_REC, null) < 0) throw new TsruncError(`cannot bind ${source} on ${target}: errno ${libc().errno()}`);
}

export function detach(target: string): void {
  libcFunc('int umount2(const char *, int)')(target, MNT_DETACH);
}
