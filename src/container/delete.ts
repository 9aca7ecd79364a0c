/** delete: removes a stopped (or, with --force, any) container: processes, cgroups, state; poststop hooks. */
import { TsruncError } from '../errors.js';
import { waitGone } from '../linux/proc.js';
import { cgroupManagerFromPaths } from '../cgroups/manager.js';
import { StateStore, ociState, type ContainerRecord } from '../state/store.js';
import { runHooks } from './hooks.js';

/** Kills everything in the container and removes what the runtime made. Returns hook warnings. */
export async function destroyContainer(store: StateStore, rec: ContainerRecord): Promise<string[]> {
  const cg = cgroupManagerFromPaths(rec.cgroupMode, rec.cgroupPaths);
  await cg.thaw().catch(() => {}); // a frozen task cannot die: thaw first (no freezer: nothing to thaw)
  for (let round = 0; round < 50; round++) {
    const pids = new Set(cg.pids());
    if (store.status(rec) !== 'stopped') pids.add(rec.pid);
    if (pids.size === 0) break;
    for (const p of pids) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await waitGone(rec.pid, rec.startTime, 200);
  }
  await cg.destroy();
  const warnings: string[] = [];
  try {
    await runHooks('poststop', rec.config.hooks?.poststop, ociState(rec, 'stopped'));
  } catch (e) {
    warnings.push((e as Error).message);
  }
  store.remove(rec.id);
  return warnings;
}

export async function deleteContainer(store: StateStore, id: string, force: boolean): Promise<string[]> {
  let unlock: () => void;
  try {
    unlock = await store.lock(id);
  } catch (e) {
    if (force && !store.exists(id)) return [];
    throw e;
  }
  try {
    if (!store.exists(id)) {
      if (force) {
        store.remove(id);
        return [];
      }
      throw new TsruncError(`container "${id}" does not exist`);
    }
    const rec = store.load(id);
    const status = store.status(rec);
    if (!force && (status === 'running' || status === 'paused'))
      throw new TsruncError(`cannot delete container "${id}" that is not stopped: ${status} (use --force)`);
    return await destroyContainer(store, rec);
  } finally {
    unlock();
  }
}
