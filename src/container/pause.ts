/** pause / resume: the cgroup freezer (v1 freezer.state, v2 cgroup.freeze). */
import { TsruncError } from '../errors.js';
import { cgroupManagerFromPaths } from '../cgroups/manager.js';
import { StateStore } from '../state/store.js';

export async function pauseContainer(store: StateStore, id: string): Promise<void> {
  const unlock = await store.lock(id);
  try {
    const rec = store.load(id);
    const status = store.status(rec);
    if (status !== 'running') throw new TsruncError(`cannot pause container "${id}": it is ${status}, not running`);
    await cgroupManagerFromPaths(rec.cgroupMode, rec.cgroupPaths).freeze();
  } finally {
    unlock();
  }
}

export async function resumeContainer(store: StateStore, id: string): Promise<void> {
  const unlock = await store.lock(id);
  try {
    const rec = store.load(id);
    const status = store.status(rec);
    if (status !== 'paused') throw new TsruncError(`cannot resume container "${id}": it is ${status}, not paused`);
    await cgroupManagerFromPaths(rec.cgroupMode, rec.cgroupPaths).thaw();
  } finally {
    unlock();
  }
}
