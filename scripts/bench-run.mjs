// Benchmarks, tsrunc and runc side by side in one run:
//   scripts/bench [--runs N] [--only startup,image,migrate] [--sizes 64,512,2048]
// startup: `tsrunc run` vs `runc run` of `true` in one busybox bundle, alternately, N runs;
//   `node -e 0` as the floor.
// image: a container holding SIZE MiB (fixtures/memhog.c) checkpointed into one compressed file
//   and restored from it, once per size: `tsrunc checkpoint --export` / `restore --import` vs
//   `runc checkpoint` + tar + `zstd -1` and back; times, file sizes, tsrunc's peak RSS.
// migrate: the same containers moved between the two test hosts of scripts/netns-hosts:
//   `tsrunc migrate` stop-copy and post-copy vs runc checkpoint | tar | zstd | ssh | zstd -d |
//   tar, runc restore; downtime and total time.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const TSRUNC = join(repo, 'bin', 'tsrunc');
const SECTIONS = ['startup', 'image', 'migrate'];

function options(argv) {
  const usage = 'usage: scripts/bench [--runs N] [--only startup,image,migrate] [--sizes 64,512,2048]';
  let a;
  try {
    a = parseArgs({
      args: argv, allowPositionals: true,
      options: { runs: { type: 'string' }, only: { type: 'string' }, sizes: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    });
  } catch (e) {
    fail(`${e.message}\n${usage}`);
  }
  if (a.values.help) {
    console.log(usage);
    process.exit(0);
  }
  // `scripts/bench 30`, the old form, is --runs 30
  if (a.positionals.length > 1 || (a.positionals.length && a.values.runs)) fail(usage);
  const count = (s, what) => {
    if (!/^[1-9]\d*$/.test(s)) fail(`${what}: ${s}: not a positive whole number`);
    return Number(s);
  };
  const runs = count(a.values.runs ?? a.positionals[0] ?? '30', '--runs');
  const only = (a.values.only ?? SECTIONS.join(',')).split(',').filter(Boolean);
  for (const s of only) if (!SECTIONS.includes(s)) fail(`--only: ${s}: no such section (${SECTIONS.join(', ')})`);
  const sizes = (a.values.sizes ?? '64,512,2048').split(',').filter(Boolean).map((s) => count(s, '--sizes'));
  if (!only.length || !sizes.length) fail(usage);
  return { runs, only: SECTIONS.filter((s) => only.includes(s)), sizes };
}

function fail(msg) {
  console.error(`bench: ${msg}`);
  process.exit(2);
}

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2; };

// ---- startup ------------------------------------------------------------------------------

function startup(runs) {
  const dir = mkdtempSync(join(tmpdir(), 'tsrunc-bench-'));
  try {
    const bundle = join(dir, 'bundle');
    execFileSync(join(repo, 'fixtures', 'busybox-bundle'), [bundle, 'true'], { stdio: 'ignore' });
    const time = (cmd, args) => {
      const t0 = process.hrtime.bigint();
      const r = spawnSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.status}: ${r.stderr}`);
      return ms;
    };
    const cases = {
      'node -e 0': () => time(process.execPath, ['-e', '0']),
      'tsrunc run true': (i) => time(TSRUNC, ['--root', join(dir, 'ts'), 'run', '--bundle', bundle, `b${i}`]),
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
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---- image --------------------------------------------------------------------------------

const MEMHOG = join(repo, 'native', 'build', 'probe', 'memhog');
const GNU_TIME = '/usr/bin/time';
const MiB = 1024 * 1024;
// the goals, set for 2048 MiB
const GOAL_SIZE = 2048, GOAL_TIME_RATIO = 0.5, GOAL_SIZE_RATIO = 1, GOAL_RSS_MIB = 200;

// The image section runs its commands asynchronously so that a signal (Ctrl-C, SIGTERM) is
// seen between steps: the running command is stopped and every container is removed.
const children = new Set();
let stoppedBy = null;
class Stopped extends Error {}

function onStop(sig) {
  if (!stoppedBy) console.error(`bench: ${sig}: stopping and cleaning up`);
  stoppedBy ??= sig;
  for (const c of children) if (!c.cleanup) c.kill('SIGTERM');
}

function checkStop() {
  if (stoppedBy) throw new Stopped(`stopped by ${stoppedBy}`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Runs cmd; `ms` is the wall time from spawn to exit. stdio 'null': all three /dev/null (for
 * commands that leave a container holding them); else stdin /dev/null and the output captured.
 * A descendant keeping our pipes open does not hold us up: 2 s after the exit we go on.
 * `cleanup` commands run even while stopping, and a signal does not stop them.
 */
function run(cmd, args, { stdio = 'capture', timeoutMs = 120_000, cleanup = false } = {}) {
  return new Promise((resolveRun, reject) => {
    if (stoppedBy && !cleanup) return reject(new Stopped(`stopped by ${stoppedBy}`));
    const t0 = process.hrtime.bigint();
    const child = spawn(cmd, args, { stdio: stdio === 'null' ? 'ignore' : ['ignore', 'pipe', 'pipe'] });
    child.cleanup = cleanup;
    children.add(child);
    let stdout = '', stderr = '', ms = 0, code = null, signal = null, timedOut = false, done = false;
    child.stdout?.on('data', (d) => { stdout += d; });
    child.stderr?.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGTERM');
      setTimeout(() => child.kill('SIGKILL'), 10_000).unref();
    }, timeoutMs);
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      children.delete(child);
      child.stdout?.destroy();
      child.stderr?.destroy();
      resolveRun({ code, signal, stdout, stderr, ms, timedOut, what: [cmd, ...args].join(' ') });
    };
    child.on('error', (e) => {
      clearTimeout(timer);
      children.delete(child);
      done = true;
      reject(new Error(`${cmd}: ${e.message}`));
    });
    child.on('exit', (c, s) => {
      ms = Number(process.hrtime.bigint() - t0) / 1e6;
      code = c;
      signal = s;
      if (!child.stdout) finish();
      else setTimeout(finish, 2000).unref();
    });
    child.on('close', finish);
  });
}

/** Like run, but a failure throws with the command's stderr (or a log file's tail). */
async function must(cmd, args, opts = {}) {
  const r = await run(cmd, args, opts);
  checkStop();
  if (r.code !== 0) {
    const log = opts.log && existsSync(opts.log) ? readFileSync(opts.log, 'utf8').trim().split('\n').slice(-5).join('\n') : '';
    const why = r.timedOut ? `timed out after ${opts.timeoutMs ?? 120_000} ms` : r.signal ? `killed by ${r.signal}` : `exit ${r.code}`;
    throw new Error(`${r.what}: ${why}${r.stderr.trim() ? `\n${r.stderr.trim()}` : ''}${log ? `\n${log}` : ''}`);
  }
  return r;
}

/** GNU time's "%e %M" in front of a command: [wrapped argv, file it reports to] */
function gnuTimed(cmd, args, reportFile) {
  return hasGnuTime ? [GNU_TIME, ['-f', '%e %M', '-o', reportFile, cmd, ...args]] : [cmd, args];
}
const hasGnuTime = existsSync(GNU_TIME) && /GNU/.test(spawnSync(GNU_TIME, ['--version'], { encoding: 'utf8' }).output?.join('') ?? '');

function peakRssKiB(reportFile) {
  if (!hasGnuTime || !existsSync(reportFile)) return undefined;
  const last = readFileSync(reportFile, 'utf8').trim().split('\n').pop() ?? '';
  const kib = Number(last.split(/\s+/)[1]);
  return Number.isFinite(kib) ? kib : undefined;
}

/** A bundle with its own writable busybox rootfs running `memhog SIZE /memhog`. */
function memhogBundle(dir, size) {
  execFileSync(join(repo, 'fixtures', 'busybox-bundle'), [dir, '/bin/memhog', String(size), '/memhog'], { stdio: 'ignore' });
  const bin = join(dir, 'rootfs', 'bin', 'memhog');
  rmSync(bin, { force: true });
  copyFileSync(MEMHOG, bin);
  mkdirSync(join(dir, 'rootfs', 'memhog'));
  const file = join(dir, 'config.json');
  const spec = JSON.parse(readFileSync(file, 'utf8'));
  spec.root = { path: 'rootfs', readonly: false };
  writeFileSync(file, JSON.stringify(spec, null, 2));
}

function alive(pid) {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** A runtime (tsrunc or runc) with its own --root. */
function runtime(bin, root) {
  const log = join(root, 'log');
  mkdirSync(root, { recursive: true });
  return {
    bin, root, log,
    argv: (args) => ['--root', root, '--log', log, ...args],
    async pid(id) {
      const r = await must(bin, ['--root', root, 'state', id]);
      return JSON.parse(r.stdout).pid;
    },
    async ids() {
      const r = await run(bin, ['--root', root, 'list', '-q'], { cleanup: true, timeoutMs: 30_000 });
      return r.code === 0 ? r.stdout.split('\n').filter(Boolean) : [];
    },
  };
}

async function waitFor(what, timeoutMs, test) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    checkStop();
    const v = test();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
  }
}

const readOr = (file, dflt) => { try { return readFileSync(file, 'utf8').trim(); } catch { return dflt; } };

/** Starts memhog with `run -d` and waits until it has filled its memory; returns its checksum. */
async function startMemhog(rt, bundle, id, size) {
  await must(rt.bin, rt.argv(['run', '-d', '--bundle', bundle, id]), { stdio: 'null', log: rt.log });
  const pid = await rt.pid(id);
  const dir = join(bundle, 'rootfs', 'memhog');
  await waitFor(`${id} to fill ${size} MiB`, 60_000 + 50 * size, () => {
    if (existsSync(join(dir, 'ready'))) return true;
    if (!alive(pid)) throw new Error(`${id}: memhog ${size} stopped before it was ready (out of memory?)`);
    return false;
  });
  return readOr(join(dir, 'sum'), '?');
}

/** After a restore: the counter moves on, and SIGUSR1 makes memhog verify its memory. */
async function checkRestored(rt, bundle, id, size) {
  const dir = join(bundle, 'rootfs', 'memhog');
  const n0 = Number(readOr(join(dir, 'count'), '0'));
  await waitFor(`${id}'s count to pass ${n0}`, 10_000, () => Number(readOr(join(dir, 'count'), '0')) > n0);
  rmSync(join(dir, 'verify'), { force: true });
  await must(rt.bin, ['--root', rt.root, 'kill', id, 'USR1']);
  const v = await waitFor(`${id} to verify its memory`, 30_000 + 20 * size, () => readOr(join(dir, 'verify'), ''));
  if (!v.startsWith('ok ')) throw new Error(`${id}: memory after restore: ${v}`);
  return `count advancing, memory ${v}`;
}

async function tsruncSide(dir, size, tag) {
  const r1 = runtime(TSRUNC, join(dir, 'ts-root1')), r2 = runtime(TSRUNC, join(dir, 'ts-root2'));
  const b = join(dir, 'ts-bundle'), b2 = join(dir, 'ts-bundle2'), file = join(dir, 'ts.tar.zst');
  const id = `bench-ts-${tag}`, id2 = `bench-ts2-${tag}`;
  const res = {};
  const slow = 120_000 + 500 * size;
  try {
    memhogBundle(b, size);
    res.sum = await startMemhog(r1, b, id, size);
    await must('sync', []);
    const ex = join(dir, 'ts-export.time');
    const [c1, a1] = gnuTimed(TSRUNC, r1.argv(['checkpoint', '--export', file, '--print-stats', id]), ex);
    const e = await must(c1, a1, { timeoutMs: slow, log: r1.log });
    res.exportS = e.ms / 1000;
    res.exportRss = peakRssKiB(ex);
    res.exportStats = parseStats(e.stdout);
    res.bytes = statSync(file).size;

    await must('cp', ['-a', b, b2]);
    await must('sync', []);
    const im = join(dir, 'ts-import.time');
    const [c2, a2] = gnuTimed(TSRUNC, r2.argv(['restore', '--import', file, '--bundle', b2, '-d', '--print-stats', id2]), im);
    const i = await must(c2, a2, { timeoutMs: slow, log: r2.log });
    res.importS = i.ms / 1000;
    res.importRss = peakRssKiB(im);
    res.importStats = parseStats(i.stdout);
    res.after = await checkRestored(r2, b2, id2, size);
  } catch (e) {
    if (e instanceof Stopped) throw e;
    res.error = e.message;
  } finally {
    await removeAll(r1, [id]);
    await removeAll(r2, [id2]);
  }
  return res;
}

async function runcSide(dir, size, tag) {
  const rr = runtime('runc', join(dir, 'runc-root'));
  const b = join(dir, 'runc-bundle'), img = join(dir, 'runc-img'), img2 = join(dir, 'runc-img2'), file = join(dir, 'runc.tar.zst');
  const id = `bench-runc-${tag}`;
  const res = {};
  const slow = 120_000 + 500 * size;
  const q = (s) => `'${s.replaceAll("'", "'\\''")}'`;
  const runc = `runc --root ${q(rr.root)}`;
  try {
    memhogBundle(b, size);
    res.sum = await startMemhog(rr, b, id, size);
    await must('sync', []);
    const e = await must('bash', ['-c', `set -o pipefail; ${runc} checkpoint --image-path ${q(img)} ${q(id)} && ` +
      `tar -C ${q(img)} -cf - . | zstd -1 -T0 -q -o ${q(file)}`], { timeoutMs: slow });
    res.exportS = e.ms / 1000;
    res.bytes = statSync(file).size;
    await must('sync', []);
    const i = await must('bash', ['-c', `set -o pipefail; mkdir ${q(img2)} && zstd -d -c ${q(file)} | tar -x -C ${q(img2)} && ` +
      `${runc} restore -d --image-path ${q(img2)} --bundle ${q(b)} ${q(id)}`], { timeoutMs: slow });
    res.importS = i.ms / 1000;
    res.after = await checkRestored(rr, b, id, size);
  } catch (e) {
    if (e instanceof Stopped) throw e;
    res.error = e.message;
  } finally {
    await removeAll(rr, [id]);
  }
  return res;
}

function parseStats(stdout) {
  try {
    return JSON.parse(stdout);
  } catch {
    return undefined;
  }
}

/** Deletes (force) every container under this runtime's root: what the bench started and anything left. */
async function removeAll(rt, ids) {
  const there = await rt.ids();
  for (const id of new Set([...ids, ...there])) {
    if (!there.includes(id) && !existsSync(join(rt.root, id))) continue;
    const r = await run(rt.bin, ['--root', rt.root, 'delete', '-f', id], { timeoutMs: 60_000, cleanup: true });
    if (r.code !== 0) console.error(`bench: cleanup: ${r.what}: exit ${r.code}: ${r.stderr.trim()}`);
  }
  const left = await rt.ids();
  if (left.length) console.error(`bench: cleanup: still there under ${rt.root}: ${left.join(' ')}; remove them with: ${rt.bin} --root ${rt.root} delete -f ID`);
  return left.length === 0;
}

function removeDir(dir) {
  // never into a mount left behind (a container's rootfs, say)
  const mounted = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]).filter((m) => m?.startsWith(dir + '/'));
  if (mounted.length) {
    console.error(`bench: cleanup: left ${dir} alone: mounts under it: ${mounted.join(' ')}`);
    return;
  }
  spawnSync('rm', ['-rf', '--one-file-system', dir], { stdio: 'inherit' });
}

async function imageAt(size) {
  const dir = mkdtempSync(join(tmpdir(), `tsrunc-bench-img${size}-`));
  const tag = `${size}-${process.pid}`;
  try {
    const ts = hasExport ? await tsruncSide(dir, size, tag) : { error: 'checkpoint --export is not in this tsrunc yet' };
    const rc = await runcSide(dir, size, tag);
    report(size, ts, rc);
    return !ts.error && !rc.error;
  } finally {
    removeDir(dir);
  }
}

function report(size, ts, rc) {
  const at = size === GOAL_SIZE;
  const verdict = (ok) => ok === undefined ? '' : at ? (ok ? 'PASS' : 'MISS') : (ok ? '(pass)' : '(miss)');
  const f = (v, d) => v === undefined ? 'n/a' : v.toFixed(d);
  const ratio = (a, b) => a === undefined || b === undefined || !b ? undefined : a / b;
  const row = (name, a, b, r, goal, ok) => console.log(`  ${name.padEnd(22)}${a.padStart(10)}${b.padStart(18)}${(r === undefined ? '' : `${r.toFixed(2)}x`).padStart(9)}  ${goal.padEnd(9)}${verdict(ok)}`);
  const rss = (kib) => kib === undefined ? undefined : kib / 1024;
  console.log(`\ncheckpoint image, memhog ${size} MiB: tsrunc --export/--import vs runc checkpoint/restore + tar + zstd -1 -T0`);
  console.log(`  ${''.padEnd(22)}${'tsrunc'.padStart(10)}${'runc+tar+zstd'.padStart(18)}${'ratio'.padStart(9)}  goal${at ? '' : ` (set for ${GOAL_SIZE} MiB)`}`);
  const er = ratio(ts.exportS, rc.exportS), sr = ratio(ts.bytes, rc.bytes), ir = ratio(ts.importS, rc.importS);
  row('export (s)', f(ts.exportS, 3), f(rc.exportS, 3), er, `<= ${GOAL_TIME_RATIO}x`, er === undefined ? undefined : er <= GOAL_TIME_RATIO);
  row('image size (MiB)', f(ts.bytes && ts.bytes / MiB, 2), f(rc.bytes && rc.bytes / MiB, 2), sr, `<= ${GOAL_SIZE_RATIO}x`, sr === undefined ? undefined : sr <= GOAL_SIZE_RATIO);
  row('import to running (s)', f(ts.importS, 3), f(rc.importS, 3), ir, `<= ${GOAL_TIME_RATIO}x`, ir === undefined ? undefined : ir <= GOAL_TIME_RATIO);
  for (const [name, kib] of [['peak RSS export (MiB)', ts.exportRss], ['peak RSS import (MiB)', ts.importRss]]) {
    const m = rss(kib);
    row(name, f(m, 1), '', undefined, `< ${GOAL_RSS_MIB}`, m === undefined ? undefined : m < GOAL_RSS_MIB);
  }
  if (!hasGnuTime) console.log(`  (peak RSS n/a: GNU time is not at ${GNU_TIME}; apt-get install time)`);
  const es = ts.exportStats, is = ts.importStats;
  if (es || is) {
    const ms = (v) => typeof v === 'number' ? `${v} ms` : '?';
    const parts = [];
    if (es) parts.push(`export: dump ${ms(es.dump_ms)}, write ${ms(es.write_ms)}, frozen ${ms(es.frozen_ms)}, ${typeof es.bytes_in === 'number' ? (es.bytes_in / MiB).toFixed(1) : '?'} MiB in`);
    if (is) parts.push(`import: read ${ms(is.import_ms)}, restore ${ms(is.restore_ms)}`);
    const own = [es?.max_rss_kib, is?.max_rss_kib].map((k) => typeof k === 'number' ? (k / 1024).toFixed(1) : '?');
    if (own.some((x) => x !== '?')) parts.push(`node's own max RSS ${own.join(' / ')} MiB`);
    console.log(`  tsrunc --print-stats: ${parts.join('; ')}`);
  }
  for (const [name, r] of [['tsrunc', ts], ['runc', rc]]) {
    if (r.error) console.log(`  ${name}: FAILED: ${r.error.split('\n').join('\n    ')}`);
    else console.log(`  ${name}: after restore: ${r.after} (at ready: ${r.sum})`);
  }
}

let hasExport = false;

async function image(sizes) {
  if (!existsSync(MEMHOG)) throw new Error(`${MEMHOG} is missing: run scripts/build (make -C native)`);
  for (const tool of ['runc', 'zstd', 'tar']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status !== 0) throw new Error(`${tool} is not on PATH`);
  }
  hasExport = /--export/.test(spawnSync(TSRUNC, ['checkpoint', '--help'], { encoding: 'utf8' }).stdout ?? '');
  if (!hasExport) console.log('image: tsrunc has no `checkpoint --export` yet: runc side only');
  if (!hasGnuTime) console.log(`image: GNU time is not at ${GNU_TIME} (apt-get install time): peak RSS n/a`);
  const sigs = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  for (const s of sigs) process.on(s, onStop);
  let ok = true;
  try {
    for (const size of sizes) {
      checkStop();
      ok = (await imageAt(size)) && ok;
    }
  } finally {
    for (const s of sigs) process.off(s, onStop);
  }
  return ok;
}

// ---- migrate -------------------------------------------------------------------------------

const HOSTS = join(repo, 'scripts', 'netns-hosts');
const PC_GOAL_MS = 100, PC_GOAL_FACTOR = 50, SC_GOAL_RATIO = 0.6;

function hostsEnv() {
  const env = {};
  for (const line of readFileSync('/run/tsrunc-hosts/env', 'utf8').split('\n')) {
    const m = /^(\w+)='(.*)'$/.exec(line);
    if (m) env[m[1]] = m[2];
  }
  return env;
}

const onA = (cmd, args) => ['nsenter', ['--net=/run/netns/tsrunc-a', '--', cmd, ...args]];

/** One tsrunc migration of a memhog container from host a to host b. */
async function tsruncMigration(env, dir, size, strategy, key, port) {
  const ra = runtime(TSRUNC, env.HOST_A_ROOT), rb = runtime(TSRUNC, env.HOST_B_ROOT);
  const tag = `${strategy === 'post-copy' ? 'pc' : 'sc'}${size}-${process.pid}`;
  const b = join(dir, `bundle-${tag}`), name = `bench-${tag}`, destB = join(env.HOST_B_BUNDLES, name);
  const id = `bench-${tag}`, id2 = `bench-${tag}-b`;
  const res = {};
  try {
    memhogBundle(b, size);
    await must('cp', ['-a', b, destB]);
    res.sum = await startMemhog(ra, b, id, size);
    const [c, a] = onA(TSRUNC, ra.argv(['migrate', '--strategy', strategy, '--key-file', key, '--new-id', id2, '--bundle', name, '--print-stats', id, `tsrunc://10.231.0.2:${port}`]));
    const r = await must(c, a, { timeoutMs: 120_000 + 500 * size, log: ra.log });
    const st = parseStats(r.stdout) ?? {};
    res.downtimeMs = st.downtime_ms;
    res.totalMs = st.total_ms;
    res.mib = st.bytes_sent / MiB;
    res.phases = st.phases;
    res.dest = st.destination_stats;
    res.afterRunning = st.page_bytes_after_running;
    res.after = await checkRestored(rb, destB, id2, size);
  } catch (e) {
    if (e instanceof Stopped) throw e;
    res.error = e.message;
  } finally {
    await removeAll(ra, [id]);
    await run(TSRUNC, ['--root', rb.root, 'delete', '-f', id2], { cleanup: true, timeoutMs: 60_000 });
    removeDir(destB);
  }
  return res;
}

/** runc's stop-and-copy: checkpoint, tar | zstd -1 over ssh to host b, unpack, restore there. */
async function runcMigration(env, dir, size) {
  const rootA = join(dir, 'runc-a'), rootB = join(dir, 'runc-b');
  const ra = runtime('runc', rootA), rb = runtime('runc', rootB);
  const b = join(dir, `runc-bundle-${size}`), img = join(dir, `runc-img-${size}`), img2 = join(dir, `runc-img2-${size}`);
  const id = `bench-runc-mig${size}-${process.pid}`;
  const q = (x) => `'${x.replaceAll("'", "'\\''")}'`;
  const res = {};
  try {
    memhogBundle(b, size);
    res.sum = await startMemhog(ra, b, id, size);
    mkdirSync(img2);
    const r = await must('bash', ['-c', `set -o pipefail; runc --root ${q(rootA)} checkpoint --image-path ${q(img)} ${q(id)} && ` +
      `tar -C ${q(img)} -cf - . | zstd -1 -T0 -q | ${env.SSH_B} ${q(`zstd -d -q | tar -x -C ${img2} && runc --root ${rootB} restore -d --image-path ${img2} --bundle ${b} ${id} </dev/null >/dev/null 2>&1`)}`],
    { timeoutMs: 120_000 + 500 * size });
    res.downtimeMs = r.ms;
    res.totalMs = r.ms;
    res.after = await checkRestored(rb, b, id, size);
  } catch (e) {
    if (e instanceof Stopped) throw e;
    res.error = e.message;
  } finally {
    await removeAll(ra, [id]);
    await removeAll(rb, [id]);
  }
  return res;
}

function reportMigration(size, sc, pc, rc) {
  const at = size === GOAL_SIZE;
  const verdict = (ok) => ok === undefined ? '' : at ? (ok ? 'PASS' : 'MISS') : (ok ? '(pass)' : '(miss)');
  const f = (v) => v === undefined ? 'n/a' : String(Math.round(v));
  console.log(`\nmigration, memhog ${size} MiB, host a -> host b (netns, veth): tsrunc migrate vs runc checkpoint | tar | zstd -1 | ssh | restore`);
  console.log(`  ${''.padEnd(24)}${'downtime ms'.padStart(12)}${'total ms'.padStart(10)}${'MiB sent'.padStart(10)}`);
  for (const [name, r] of [['tsrunc stop-copy', sc], ['tsrunc post-copy', pc], ['runc stop-and-copy', rc]])
    console.log(`  ${name.padEnd(24)}${f(r.downtimeMs).padStart(12)}${f(r.totalMs).padStart(10)}${(r.mib === undefined ? '' : r.mib.toFixed(1)).padStart(10)}`);
  if (pc.downtimeMs !== undefined && rc.downtimeMs !== undefined) {
    const factor = rc.downtimeMs / pc.downtimeMs;
    console.log(`  post-copy downtime ${pc.downtimeMs} ms: goal <= ${PC_GOAL_MS} ms ${verdict(pc.downtimeMs <= PC_GOAL_MS)}; ${factor.toFixed(1)}x below runc's (goal >= ${PC_GOAL_FACTOR}x) ${verdict(factor >= PC_GOAL_FACTOR)}`);
  }
  if (sc.totalMs !== undefined && rc.totalMs !== undefined) {
    const r = sc.totalMs / rc.totalMs;
    console.log(`  stop-copy ${r.toFixed(2)}x runc's pipeline (goal <= ${SC_GOAL_RATIO}x) ${verdict(r <= SC_GOAL_RATIO)}`);
  }
  for (const [name, r] of [['stop-copy', sc], ['post-copy', pc]]) if (r.phases) console.log(`  tsrunc ${name} phases (ms): ${Object.entries(r.phases).map(([k, v]) => `${k.replace(/_ms$/, '')} ${v}`).join(', ')}${r.afterRunning !== undefined ? `; ${(r.afterRunning / MiB).toFixed(1)} MiB of pages moved after it ran` : ''}${r.dest?.restore_ms !== undefined ? `; at the destination: import ${r.dest.import_ms}, CRIU restore ${r.dest.restore_ms}` : ''}`);
  for (const [name, r] of [['stop-copy', sc], ['post-copy', pc], ['runc', rc]]) {
    if (r.error) console.log(`  ${name}: FAILED: ${r.error.split('\n').join('\n    ')}`);
    else console.log(`  ${name}: at the destination: ${r.after}`);
  }
}

async function migrate(sizes) {
  if (!existsSync(MEMHOG)) throw new Error(`${MEMHOG} is missing: run scripts/build (make -C native)`);
  if (Number(readFileSync('/proc/sys/fs/pipe-max-size', 'utf8')) < 4194304) execFileSync('sysctl', ['-qw', 'fs.pipe-max-size=4194304']);
  execFileSync(HOSTS, ['up'], { stdio: ['ignore', 'ignore', 'inherit'] });
  const env = hostsEnv();
  const sigs = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  for (const s of sigs) process.on(s, onStop);
  const dir = mkdtempSync(join(tmpdir(), 'tsrunc-bench-mig-'));
  const key = join(dir, 'key');
  writeFileSync(key, execFileSync('sh', ['-c', 'head -c 32 /dev/urandom | base64']), { mode: 0o600 });
  const port = 7690;
  const serve = spawn('nsenter', ['--net=/run/netns/tsrunc-b', '--', TSRUNC, '--root', env.HOST_B_ROOT, 'serve', '--listen', `10.231.0.2:${port}`,
    '--key-file', key, '--bundles', env.HOST_B_BUNDLES], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  serve.stdout.on('data', (d) => { out += d; });
  let ok = true;
  try {
    await waitFor('serve to listen', 10_000, () => out.includes('listening'));
    for (const size of sizes) {
      checkStop();
      const sc = await tsruncMigration(env, dir, size, 'stop-copy', key, port);
      const pc = await tsruncMigration(env, dir, size, 'post-copy', key, port);
      const rc = await runcMigration(env, dir, size);
      reportMigration(size, sc, pc, rc);
      ok = ok && !sc.error && !pc.error && !rc.error;
    }
  } finally {
    serve.kill('SIGTERM');
    for (const s of sigs) process.off(s, onStop);
    removeDir(dir);
    spawnSync(HOSTS, ['down'], { stdio: 'ignore' });
  }
  return ok;
}

// ---- main ---------------------------------------------------------------------------------

const opts = options(process.argv.slice(2));
let ok = true;
try {
  for (const s of opts.only) {
    if (s === 'startup') startup(opts.runs);
    else if (s === 'image') ok = (await image(opts.sizes)) && ok;
    else ok = (await migrate(opts.sizes)) && ok;
  }
} catch (e) {
  console.error(`bench: ${e.message}`);
  process.exitCode = e instanceof Stopped ? 130 : 1;
}
if (stoppedBy) process.exitCode = 128 + ({ SIGINT: 2, SIGTERM: 15, SIGHUP: 1 }[stoppedBy] ?? 0);
else if (!ok && !process.exitCode) process.exitCode = 1;
