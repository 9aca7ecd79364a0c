/** Facts about processes read from /proc. */
import { readFileSync } from 'node:fs';

export interface ProcStat {
  state: string;
  ppid: number;
  startTime: number;
}

export function procStat(pid: number): ProcStat | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return { state: rest[0], ppid: Number(rest[1]), startTime: Number(rest[19]) };
  } catch {
    return undefined;
  }
}

/** Alive means it exists, is the same process (start time) and is not a zombie. */
export function isAlive(pid: number, startTime?: number): boolean {
  if (!pid) return false;
  const st = procStat(pid);
  if (!st || st.state === 'Z' || st.state === 'X') return false;
  return startTime === undefined || st.startTime === startTime;
}

export async function waitGone(pid: number, startTime: number | undefined, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (isAlive(pid, startTime)) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 5));
  }
  return true;
}

/** Whether this process has a capability in its effective set. */
export function hasCapability(cap: number): boolean {
  try {
    const m = /CapEff:\s*([0-9a-f]+)/.exec(readFileSync('/proc/self/status', 'utf8'));
    return m ? ((BigInt('0x' + m[1]) >> BigInt(cap)) & 1n) === 1n : false;
  } catch {
    return false;
  }
}

export function nofileHardLimit(): number {
  try {
    const line = readFileSync('/proc/self/limits', 'utf8').split('\n').find((l) => l.startsWith('Max open files'));
    const hard = line?.split(/\s{2,}/)[2];
    return hard === 'unlimited' || hard === undefined ? Number.MAX_SAFE_INTEGER : Number(hard);
  } catch {
    return Number.MAX_SAFE_INTEGER;
  }
}
