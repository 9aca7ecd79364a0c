/** ps: the container's processes, by host pid. */
import { execFileSync } from 'node:child_process';
import { TsruncError } from '../errors.js';
import { cgroupManagerFromPaths } from '../cgroups/manager.js';
import { StateStore } from '../state/store.js';

export function containerPids(store: StateStore, id: string): number[] {
  const rec = store.load(id);
  return cgroupManagerFromPaths(rec.cgroupMode, rec.cgroupPaths).pids().sort((a, b) => a - b);
}

/** Runs the host's ps with the given options and keeps the header and the container's rows, as runc does. */
export function psTable(pids: number[], psArgs: string[]): string {
  let out: string;
  try {
    out = execFileSync('ps', psArgs.length ? psArgs : ['-ef'], { encoding: 'utf8' });
  } catch (e) {
    throw new TsruncError(`ps ${psArgs.join(' ')}: ${(e as Error).message.split('\n')[0]}`);
  }
  const lines = out.split('\n').filter(Boolean);
  const header = lines[0] ?? '';
  const col = header.trim().split(/\s+/).indexOf('PID');
  if (col < 0) throw new TsruncError('ps output has no PID column (pass options that show it)');
  const set = new Set(pids);
  return [header, ...lines.slice(1).filter((l) => set.has(Number(l.trim().split(/\s+/)[col])))].join('\n') + '\n';
}
