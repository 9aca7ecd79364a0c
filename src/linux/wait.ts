/** waitpid(2) on a thread (koffi async), for children Node did not spawn (CRIU's restored trees). */
import { libcFunc } from './libc.js';

type WaitFn = { async: (pid: number, status: number[], opts: number, cb: (err: unknown, r: number) => void) => void };
let waitpid: WaitFn | undefined;

/** Resolves with the exit code, 128+signal when killed, as a shell reports it. */
export function waitChild(pid: number): Promise<number> {
  const w = (waitpid ??= libcFunc('int waitpid(int, _Out_ int *status, int)') as unknown as WaitFn);
  return new Promise((resolve) => {
    const status = [0];
    w.async(pid, status, 0, (err, r) => {
      if (err || r < 0) return resolve(255);
      const s = status[0];
      resolve((s & 0x7f) === 0 ? (s >> 8) & 0xff : 128 + (s & 0x7f));
    });
  });
}
