/** A progress line on stderr when it is a terminal (bytes, rate, ETA); nothing otherwise. */
import { formatBytes } from '../image/names.js';

export interface Progress {
  /** what is done so far, and the total when known */
  update(done: number, total?: number): void;
  /** a new phase on the same line */
  phase(label: string): void;
  end(): void;
}

const QUIET: Progress = { update() {}, phase() {}, end() {} };

function clock(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '--';
  if (s < 60) return `${Math.ceil(s)}s`;
  return `${Math.floor(s / 60)}m${String(Math.ceil(s % 60)).padStart(2, '0')}s`;
}

export function progress(label: string, enabled = process.stderr.isTTY === true): Progress {
  if (!enabled) return QUIET;
  let current = label;
  let phaseStart = Date.now();
  let last = 0;
  let shown = false;
  let lastDone = 0;
  let lastTotal: number | undefined;
  const draw = (force: boolean) => {
    const now = Date.now();
    if (!force && now - last < 100) return;
    last = now;
    const secs = Math.max((now - phaseStart) / 1000, 0.001);
    const rate = lastDone / secs;
    let line = `${current} ${formatBytes(lastDone)}`;
    if (lastTotal && lastTotal > 0) {
      const f = Math.min(lastDone / lastTotal, 1);
      const w = 24;
      const n = Math.round(f * w);
      line = `${current} [${'#'.repeat(n)}${'.'.repeat(w - n)}] ${(f * 100).toFixed(0).padStart(3)}% ${formatBytes(lastDone)}/${formatBytes(lastTotal)}`;
      line += ` ${formatBytes(rate)}/s ETA ${clock(rate > 0 ? (lastTotal - lastDone) / rate : Infinity)}`;
    } else if (lastDone > 0) line += ` ${formatBytes(rate)}/s`;
    const cols = process.stderr.columns || 80;
    process.stderr.write(`\r${line.slice(0, cols - 1).padEnd(Math.min(cols - 1, 100))}`);
    shown = true;
  };
  return {
    update(done, total) {
      lastDone = done;
      if (total !== undefined) lastTotal = total;
      draw(false);
    },
    phase(l) {
      if (shown) draw(true);
      if (shown) process.stderr.write('\n');
      current = l;
      phaseStart = Date.now();
      lastDone = 0;
      lastTotal = undefined;
      shown = false;
      draw(true);
    },
    end() {
      if (shown) {
        draw(true);
        process.stderr.write('\n');
      }
      shown = false;
    },
  };
}

/** A progress line whose label follows the phase each update names. */
export function phasedProgress<P extends string>(labels: Record<P, string>): { update: (p: P, done: number, total?: number) => void; end: () => void } {
  const bar = progress(Object.values<string>(labels)[0]);
  let current: P | undefined;
  return {
    update: (p, done, total) => {
      if (p !== current) bar.phase(labels[p]);
      current = p;
      bar.update(done, total);
    },
    end: () => bar.end(),
  };
}
