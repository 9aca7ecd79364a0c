/** pause / resume: the cgroup freezer (v1 freezer.state, v2 cgroup.freeze). */
import { TsruncError } from '../errors.js';
import { cgroupManagerFromPaths, type CgroupManager } from '../cgroups/manager.js';
import { StateStore, type Status } from '../state/store.js';

async function freezerOp(store: StateStore, id: string, verb: string, from: Status, op: (cg: CgroupManager) => Promise<void>): Promise<void> {
  const unlock = await store.lock(id);
  try {
    const rec = store.load(id);
    const status = store.status(rec);
    if (status !== from) throw new TsruncError(`cannot ${verb} container "${id}": it is ${status}, not ${from}`);
    await op(cgroupManagerFromPaths(rec.cgroupMode, rec.cgroupPaths));
  } finally {
    unlock();
  }
}

export const pauseContainer = (store: StateStore, id: string) => freezerOp(store, id, 'pause', 'running', (cg) => cg.freeze());
export const resumeContainer = (store: StateStore, id: string) => freezerOp(store, id, 'resume', 'paused', (cg) => cg.thaw());
