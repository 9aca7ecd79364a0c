/** kill: a signal to init, or with --all to every process in the container's cgroup. */
import { TsruncError } from '../errors.js';
import { parseSignal } from '../linux/tables.js';
import { cgroupManagerFromPaths } from '../cgroups/manager.js';
import { StateStore } from '../state/store.js';

export function signalNumber(sig: string): number {
  const n = parseSignal(sig);
  if (n === undefined) throw new TsruncError(`invalid signal "${sig}"`);
  return n;
}

export async function killContainer(store: StateStore, id: string, sig: string, all: boolean): Promise<void> {
  const signal = signalNumber(sig);
  const rec = store.load(id);
  const status = store.status(rec);
  if (status === 'stopped' && !all) throw new TsruncError(`cannot kill container "${id}": container not running`);
  const pids = all ? cgroupManagerFromPaths(rec.cgroupMode, rec.cgroupPaths).pids() : [rec.pid];
  if (status !== 'stopped' && !pids.includes(rec.pid)) pids.push(rec.pid);
  for (const pid of pids) {
    try {
      process.kill(pid, signal);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw new TsruncError(`kill ${pid}: ${(e as Error).message}`);
    }
  }
}
