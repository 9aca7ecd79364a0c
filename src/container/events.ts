/** events: cgroup statistics (once, or every interval) and OOM kills as they happen. */
import { TsruncError } from '../errors.js';
import { cgroupManagerFromPaths } from '../cgroups/manager.js';
import { StateStore } from '../state/store.js';

export interface ContainerEvent {
  type: 'stats' | 'oom';
  id: string;
  data?: unknown;
}

/**
 * Emits events until the container stops (or once, with `once`). OOM kills are noticed by
 * polling the kernel's counter every 100 ms, so none is missed between two stats.
 */
export async function watchEvents(store: StateStore, id: string, opts: { intervalMs: number; once: boolean }, emit: (e: ContainerEvent) => void): Promise<void> {
  const rec = store.load(id);
  if (store.status(rec) === 'stopped') throw new TsruncError(`container "${id}" is stopped`);
  const cg = cgroupManagerFromPaths(rec.cgroupMode, rec.cgroupPaths);
  if (opts.once) {
    emit({ type: 'stats', id, data: cg.stats() });
    return;
  }
  let ooms = cg.oomKills();
  let nextStats = Date.now();
  for (;;) {
    const k = cg.oomKills();
    for (; ooms < k; ooms++) emit({ type: 'oom', id });
    const stopped = store.status(rec) === 'stopped';
    if (stopped) return;
    if (Date.now() >= nextStats) {
      emit({ type: 'stats', id, data: cg.stats() });
      nextStats = Date.now() + opts.intervalMs;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}
