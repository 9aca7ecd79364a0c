/** start: opens exec.fifo so the waiting init runs the user process; then poststart hooks. */
import { closeSync, constants, openSync, readSync, rmSync } from 'node:fs';
import { TsruncError } from '../errors.js';
import { isAlive } from '../linux/proc.js';
import { StateStore, ociState, type ContainerRecord } from '../state/store.js';
import { runHooks } from './hooks.js';

export interface StartResult {
  record: ContainerRecord;
  /** poststart hook failures: the spec says warn, not fail */
  warnings: string[];
}

export async function startContainer(store: StateStore, id: string): Promise<StartResult> {
  const unlock = await store.lock(id);
  try {
    const rec = store.load(id);
    const status = store.status(rec);
    if (status !== 'created') {
      if (status === 'stopped') throw new TsruncError(`cannot start container "${id}": it is stopped`);
      throw new TsruncError(`cannot start container "${id}": it is ${status === "creating" ? "still being created" : `already ${status}`}`);
    }
    const fifo = store.fifoPath(id);
    const fd = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
    try {
      const buf = Buffer.alloc(1);
      for (;;) {
        let n = 0;
        try {
          n = readSync(fd, buf, 0, 1, null);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
        }
        if (n === 1) break;
        if (!isAlive(rec.pid, rec.startTime)) throw new TsruncError(`cannot start container "${id}": its init exited`);
        await new Promise((r) => setTimeout(r, 1));
      }
    } finally {
      closeSync(fd);
    }
    rmSync(fifo, { force: true });
    const warnings: string[] = [];
    try {
      await runHooks('poststart', rec.config.hooks?.poststart, ociState(rec, 'running'));
    } catch (e) {
      warnings.push((e as Error).message);
    }
    return { record: rec, warnings };
  } finally {
    unlock();
  }
}
