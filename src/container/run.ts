/** run: create + start; in the foreground it waits, forwards signals, and removes the container after. */
import { constants } from 'node:os';
import { TsruncError } from '../errors.js';
import { StateStore } from '../state/store.js';
import { createContainer, type CreateOptions } from './create.js';
import { startContainer } from './start.js';
import { destroyContainer } from './delete.js';

const FORWARDED: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2', 'SIGWINCH'];

/** Passes the signals a foreground runtime gets on to the container's init; returns the undo. */
export function forwardSignals(pid: number): () => void {
  const handlers = FORWARDED.map((s) => [s, () => {
    try {
      process.kill(pid, s);
    } catch {
      /* gone */
    }
  }] as const);
  for (const [s, h] of handlers) process.on(s, h);
  return () => {
    for (const [s, h] of handlers) process.off(s, h);
  };
}

export interface RunResult {
  exitCode: number;
  warnings: string[];
}

export async function runContainer(store: StateStore, opts: CreateOptions & { detach: boolean }): Promise<RunResult> {
  const foreground = !opts.detach;
  const { record, executor, warnings: createWarnings } = await createContainer(store, { ...opts, foreground });
  const exited = foreground
    ? new Promise<number>((resolve) => executor.once('exit', (code, sig) => resolve(code ?? 128 + (sig ? constants.signals[sig] : 0))))
    : Promise.resolve(0);
  const stopForwarding = foreground ? forwardSignals(record.pid) : () => {};
  let warnings: string[];
  try {
    warnings = [...createWarnings, ...(await startContainer(store, opts.id)).warnings];
  } catch (e) {
    stopForwarding();
    const rec = store.load(opts.id);
    await destroyContainer(store, rec).catch(() => {});
    throw e;
  }
  if (!foreground) return { exitCode: 0, warnings };
  const code = await exited;
  stopForwarding();
  const unlock = await store.lock(opts.id).catch(() => undefined);
  try {
    if (store.exists(opts.id)) warnings.push(...(await destroyContainer(store, store.load(opts.id))));
  } catch (e) {
    throw new TsruncError(`container exited with ${code}, but cleaning it up failed: ${(e as Error).message}`, code || 1);
  } finally {
    unlock?.();
  }
  return { exitCode: code, warnings };
}
