// `tsrunc run` vs `runc run` of `true` in one busybox bundle, alternately; `node -e 0` as the floor.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const runs = Number(process.argv[2] ?? 30);
const dir = mkdtempSync(join(tmpdir(), 'tsrunc-bench-'));
const bundle = join(dir, 'bundle');
execFileSync(join(repo, 'fixtures', 'busybox-bundle'), [bundle, 'true'], { stdio: 'ignore' });

function time(cmd, args) {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.status}: ${r.stderr}`);
  return ms;
}
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2; };

const cases = {
  'node -e 0': () => time(process.execPath, ['-e', '0']),
  'tsrunc run true': (i) => time(join(repo, 'bin', 'tsrunc'), ['--root', join(dir, 'ts'), 'run', '--bundle', bundle, `b${i}`]),
  'runc run true': (i) => time('runc', ['--root', join(dir, 'runc'), 'run', '--bundle', bundle, `b${i}`]),
};
const results = Object.fromEntries(Object.keys(cases).map((k) => [k, []]));
for (const f of Object.values(cases)) f(-1); // warm caches
for (let i = 0; i < runs; i++) for (const [k, f] of Object.entries(cases)) results[k].push(f(i));
const m = Object.fromEntries(Object.entries(results).map(([k, v]) => [k, median(v)]));
console.log(`container start-up, median of ${runs} alternating runs`);
for (const [k, v] of Object.entries(m)) console.log(`  ${k.padEnd(18)} ${v.toFixed(1).padStart(7)} ms`);
console.log(`  tsrunc / runc       ${(m['tsrunc run true'] / m['runc run true']).toFixed(2)}x`);
console.log(`  tsrunc - node floor ${(m['tsrunc run true'] - m['node -e 0']).toFixed(1).padStart(7)} ms  (goal <= 25 ms)`);
rmSync(dir, { recursive: true, force: true });
