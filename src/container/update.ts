/** update: changes a live container's resources and records them for later state and checkpoints. */
import { TsruncError } from '../errors.js';
import { cgroupManagerFromPaths } from '../cgroups/manager.js';
import { mergeResources, validateResources, type Resources } from '../cgroups/resources.js';
import { SpecError } from '../errors.js';
import { StateStore } from '../state/store.js';

export async function updateContainer(store: StateStore, id: string, upd: Resources): Promise<string[]> {
  try {
    validateResources(upd, 'resources');
  } catch (e) {
    if (e instanceof SpecError) throw new TsruncError(e.message);
    throw e;
  }
  const unlock = await store.lock(id);
  try {
    const rec = store.load(id);
    const status = store.status(rec);
    if (status === 'stopped') throw new TsruncError(`cannot update container "${id}": it is stopped`);
    const linux = (rec.config.linux ??= {});
    const merged = mergeResources((linux.resources ?? {}) as Resources, upd);
    const warnings = cgroupManagerFromPaths(rec.cgroupMode, rec.cgroupPaths).set({ ...upd, devices: undefined });
    linux.resources = merged as Record<string, unknown>;
    store.save(rec);
    return warnings;
  } finally {
    unlock();
  }
}
