/** Real CRIU, real containers: checkpoint and restore through bin/tsrunc. */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { posix } from 'node:path';
import type { Spec } from '../../src/spec/types.js';
import { REPO, TSRUNC, World, cgroupDirs, isOneLineError, mountsMentioning, until } from './helpers.js';

const w = new World('ckpt');
after(() => w.cleanup());

const COUNTER = ['sh', '-c', 'i=0; while true; do i=$((i+1)); echo $i > /dev/shm/count; sleep 0.1; done'];
const count = (id: string) => Number(readFileSync(`/proc/${w.state(id).pid}/root/dev/shm/count`, 'utf8'));
const img = (name: string) => posix.join(w.dir, name);

async function startCounter(id: string, edit?: (s: Spec, dir: string) => void): Promise<string> {
  const b = w.bundle(COUNTER, edit);
  const r = w.detached(['run', '-d', '--bundle', b, id]);
  assert.equal(r.code, 0, r.stderr);
  await until('counting', () => { try { return count(id) >= 5; } catch { return false; } });
  return b;
}

test('a counter is checkpointed and restored: it continues, runs, is killed and deleted cleanly', async () => {
  const b = await startCounter('cnt');
  const ck = w.tsrunc(['checkpoint', '--image-path', img('cnt'), 'cnt']);
  assert.equal(ck.code, 0, ck.stderr);
  const meta = JSON.parse(readFileSync(posix.join(img('cnt'), 'tsrunc-checkpoint.json'), 'utf8'));
  assert.equal(meta.id, 'cnt');
  assert.equal(w.tsrunc(['state', 'cnt']).code, 1, 'without --leave-running the container is gone');
  assert.deepEqual(cgroupDirs('tsrunc/cnt'), []);

  const r = w.detached(['restore', '-d', '--image-path', img('cnt'), '--bundle', b, 'cnt2']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(w.state('cnt2').status, 'running');
  const c0 = count('cnt2');
  assert.ok(c0 >= 5, `the counter continues from where it stopped, not from 0 (${c0})`);
  await until('counting on', () => count('cnt2') > c0 + 2);
  assert.match(readFileSync(`/proc/${w.state('cnt2').pid}/cgroup`, 'utf8'), /memory:\/tsrunc\/cnt2$/m, 'restored into its own new cgroup');
  assert.equal(w.tsrunc(['kill', 'cnt2', 'KILL']).code, 0);
  await until('stopped', () => w.state('cnt2').status === 'stopped');
  assert.equal(w.tsrunc(['delete', 'cnt2']).code, 0);
  assert.deepEqual(cgroupDirs('tsrunc/cnt2'), []);
  assert.deepEqual(mountsMentioning('criu-root'), []);
});

test('--leave-running keeps the source; one image restored three times at once runs three independent copies', async () => {
  const b = await startCounter('src', (s) => {
    s.linux!.resources = { memory: { limit: 64 * 2 ** 20 } };
  });
  const ck = w.tsrunc(['checkpoint', '--leave-running', '--image-path', img('src'), 'src']);
  assert.equal(ck.code, 0, ck.stderr);
  assert.equal(w.state('src').status, 'running');
  const before = count('src');
  await until('source still counting', () => count('src') > before + 2);

  const runs = ['k1', 'k2', 'k3'].map((id) => new Promise<number>((res) => {
    // stdio of the same kind as the source's (files): CRIU hands them to the restored tree
    const p = spawn('sh', ['-c', 'exec "$@" </dev/null >"$0.out" 2>>"$0"', posix.join(w.dir, `${id}.err`), TSRUNC, '--root', w.root,
      'restore', '-d', '--image-path', img('src'), '--bundle', b, id], { stdio: 'ignore' });
    p.on('exit', (c) => res(c ?? 1));
  }));
  const codes = await Promise.all(runs);
  assert.deepEqual(codes, [0, 0, 0], ['k1', 'k2', 'k3'].map((id) => readFileSync(posix.join(w.dir, `${id}.err`), 'utf8')).join('\n'));
  const pids = new Set(['k1', 'k2', 'k3'].map((id) => w.state(id).pid));
  assert.equal(pids.size, 3);
  for (const id of ['k1', 'k2', 'k3']) {
    assert.equal(w.state(id).status, 'running');
    assert.equal(readFileSync(`/sys/fs/cgroup/memory/tsrunc/${id}/memory.limit_in_bytes`, 'utf8').trim(), String(64 * 2 ** 20), 'the memory limit is still set');
  }
  // independent: killing one leaves the others counting
  assert.equal(w.tsrunc(['delete', '--force', 'k1']).code, 0);
  const k2 = count('k2');
  await until('k2 counts on', () => count('k2') > k2 + 2);
  for (const id of ['k2', 'k3', 'src']) assert.equal(w.tsrunc(['delete', '--force', id]).code, 0);
});

test('a bind mount, masked paths and stdio pipes survive checkpoint and restore', async () => {
  const shared = posix.join(w.dir, 'shared');
  mkdirSync(shared, { recursive: true });
  writeFileSync(posix.join(shared, 'greeting'), 'hello\n');
  const b = w.bundle(['sh', '-c', 'i=0; while true; do i=$((i+1)); echo "tick $i $(cat /data/greeting) keys=$(wc -c </proc/keys)"; sleep 0.1; done'], (s) => {
    s.mounts!.push({ destination: '/data', type: 'bind', source: shared, options: ['rbind', 'ro'] });
  });
  // real pipes, as a shell makes them: `tsrunc run -d ... | cat > file`
  const out1 = posix.join(w.dir, 'out1'), out2 = posix.join(w.dir, 'out2');
  const piped = (args: string[], out: string) => spawnSync('sh', ['-c', `"$@" </dev/null 2>>${out}.err | cat > ${out} &`, 'sh', TSRUNC, '--root', w.root, ...args], { stdio: 'ignore' });
  piped(['run', '-d', '--bundle', b, 'pipes'], out1);
  await until('ticks on the first pipe', () => existsSync(out1) && /tick 3 hello keys=0/.test(readFileSync(out1, 'utf8')));
  const ck = w.tsrunc(['checkpoint', '--image-path', img('pipes'), 'pipes']);
  assert.equal(ck.code, 0, ck.stderr);
  assert.ok(JSON.parse(readFileSync(posix.join(img('pipes'), 'descriptors.json'), 'utf8'))[1].startsWith('pipe:'));

  piped(['restore', '-d', '--image-path', img('pipes'), '--bundle', b, 'pipes2'], out2);
  await until('ticks on the new pipe', () => existsSync(out2) && /tick \d+ hello keys=0\n.*tick/s.test(readFileSync(out2, 'utf8')), 10000)
    .catch(() => assert.fail(`no output after restore: ${readFileSync(out2 + '.err', 'utf8')}`));
  const n = Number(/tick (\d+)/.exec(readFileSync(out2, 'utf8'))![1]);
  assert.ok(n > 3, `continues counting on the new pipe (${n})`);
  assert.equal(w.tsrunc(['delete', '--force', 'pipes2']).code, 0);
});

test('failures: created or stopped containers, missing or damaged images, an existing id — clear errors, nothing lost or left', async () => {
  const bc = w.bundle(['true']);
  assert.equal(w.detached(['create', '--bundle', bc, 'made']).code, 0);
  let r = w.tsrunc(['checkpoint', '--image-path', img('made'), 'made']);
  assert.equal(r.code, 1);
  assert.ok(isOneLineError(r.stderr), r.stderr);
  assert.match(r.stderr, /cannot checkpoint container "made": it is created, not running/);
  assert.equal(w.state('made').status, 'created', 'untouched');
  assert.equal(w.tsrunc(['delete', 'made']).code, 0);

  const b = await startCounter('victim');
  r = w.tsrunc(['restore', '-d', '--image-path', img('nope'), '--bundle', b, 'r1']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /image path .*nope: no such directory/);

  assert.equal(w.tsrunc(['checkpoint', '--leave-running', '--image-path', img('victim'), 'victim']).code, 0);
  r = w.detached(['restore', '-d', '--image-path', img('victim'), '--bundle', b, 'victim']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /container "victim" already exists/);
  assert.equal(w.state('victim').status, 'running', 'the source is untouched');

  // damage: CRIU's pages are gone
  const damaged = img('damaged');
  spawnSync('cp', ['-a', img('victim'), damaged]);
  for (const f of readdirSync(damaged)) if (f.startsWith('pages-')) rmSync(posix.join(damaged, f));
  r = w.detached(['restore', '-d', '--image-path', damaged, '--bundle', b, 'r2']);
  assert.equal(r.code, 1);
  assert.ok(isOneLineError(r.stderr), r.stderr);
  assert.match(r.stderr, /restore of "r2": CRIU restore failed: .*log: /);
  assert.equal(w.tsrunc(['state', 'r2']).code, 1, 'no state left');
  assert.deepEqual(cgroupDirs('tsrunc/r2'), []);
  assert.deepEqual(mountsMentioning('criu-root'), []);
  assert.equal(w.state('victim').status, 'running');

  rmSync(posix.join(damaged, 'tsrunc-checkpoint.json'));
  r = w.detached(['restore', '-d', '--image-path', damaged, '--bundle', b, 'r3']);
  assert.match(r.stderr, /tsrunc-checkpoint\.json is missing/);

  assert.equal(w.tsrunc(['kill', 'victim', 'KILL']).code, 0);
  await until('stopped', () => w.state('victim').status === 'stopped');
  r = w.tsrunc(['checkpoint', '--image-path', img('stopped'), 'victim']);
  assert.match(r.stderr, /it is stopped, not running/);
  assert.equal(w.tsrunc(['delete', 'victim']).code, 0);
  assert.equal(existsSync(posix.join(w.root, 'r1')), false);
});

test('check reports CRIU and the kernel features', () => {
  const r = w.tsrunc(['check']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^ok\s+criu\s+CRIU 4\.\d+\.\d+/m);
  assert.match(r.stdout, /soft-dirty/);
  const j = JSON.parse(w.tsrunc(['check', '--json']).stdout) as { name: string; ok: boolean }[];
  assert.ok(j.some((x) => x.name === 'userfaultfd'));
  const bad = w.tsrunc(['--criu', '/nonexistent/criu', 'check']);
  assert.equal(bad.code, 1);
  assert.match(bad.stdout + bad.stderr, /--criu \/nonexistent\/criu: no such file/);
});

test('a foreground restore waits for the container, exits 128+signal when it is killed, and removes it', async () => {
  const b = await startCounter('fgsrc');
  assert.equal(w.tsrunc(['checkpoint', '--image-path', img('fgsrc'), 'fgsrc']).code, 0);
  // stdout/stderr files, like the source's (CRIU hands the restored init the same kind)
  const err = posix.join(w.dir, 'fg.err');
  const run = spawn('sh', ['-c', 'exec "$@" </dev/null >"$0.out" 2>"$0"', err, TSRUNC, '--root', w.root,
    'restore', '--image-path', img('fgsrc'), '--bundle', b, 'fg'], { stdio: 'ignore' });
  const code = new Promise<number | null>((r) => run.on('exit', (c) => r(c)));
  await until('restored', () => existsSync(posix.join(w.root, 'fg', 'state.json')) && w.state('fg').status === 'running', 10000)
    .catch(() => assert.fail(readFileSync(err, 'utf8')));
  assert.equal(w.tsrunc(['kill', 'fg', 'KILL']).code, 0);
  assert.equal(await code, 137);
  assert.equal(existsSync(posix.join(w.root, 'fg')), false);
  assert.deepEqual(cgroupDirs('tsrunc/fg'), []);
});

const RECVTTY = posix.join(REPO, 'native', 'build', 'recvtty');
/** A console-socket listener: its output file and a promise of its exit (when the pty's last holder closes it). */
async function listen(name: string, send?: string): Promise<{ sock: string; out: string; done: Promise<number> }> {
  const sock = posix.join(w.dir, `${name}.sock`), out = posix.join(w.dir, `${name}.out`);
  const rt = spawn('sh', ['-c', 'exec "$@" > "$0"', out, RECVTTY, ...(send ? ['--send', send] : []), sock], { stdio: 'inherit' });
  const done = new Promise<number>((resolve) => rt.once('exit', (c) => resolve(c ?? 1)));
  await until('the console socket', () => existsSync(sock));
  return { sock, out, done };
}

test('a terminal container is restored with --console-socket: the new pty master goes there, output and input work', async () => {
  const first = await listen('tty1');
  const b = w.bundle(['sh', '-c', '(i=0; while true; do i=$((i+1)); echo $i > /dev/shm/count; sleep 0.1; done) & while read x; do echo got=$x; done'], (s) => {
    s.process!.terminal = true;
  });
  assert.equal(w.detached(['run', '-d', '--console-socket', first.sock, '--bundle', b, 'tty']).code, 0);
  await until('counting', () => { try { return count('tty') >= 5; } catch { return false; } });
  const ck = w.tsrunc(['checkpoint', '--image-path', img('tty'), 'tty']);
  assert.equal(ck.code, 0, ck.stderr);
  assert.equal(await first.done, 0, 'the old pty closed with the container');
  const meta = JSON.parse(readFileSync(posix.join(img('tty'), 'tsrunc-checkpoint.json'), 'utf8'));
  assert.ok(meta.stdio.every((s: { tty?: boolean }) => s.tty), 'init had the pty on 0, 1 and 2');

  const no = w.detached(['restore', '-d', '--image-path', img('tty'), '--bundle', b, 'tty2']);
  assert.equal(no.code, 1);
  assert.ok(isOneLineError(no.stderr), no.stderr);
  assert.match(no.stderr, /has a terminal \(\/dev\/pts\/\d+\); restoring it needs --console-socket/);
  const missing = w.detached(['restore', '-d', '--console-socket', posix.join(w.dir, 'nope.sock'), '--image-path', img('tty'), '--bundle', b, 'tty2']);
  assert.match(missing.stderr, /--console-socket .*nope\.sock: no such socket/);
  assert.equal(existsSync(posix.join(w.root, 'tty2')), false);

  const second = await listen('tty2', 'after-restore\n');
  const r = w.detached(['restore', '-d', '--console-socket', second.sock, '--image-path', img('tty'), '--bundle', b, 'tty2']);
  assert.equal(r.code, 0, r.stderr);
  const c0 = count('tty2');
  assert.ok(c0 >= 5, `the counter continues (${c0})`);
  await until('input typed at the new terminal reaches the restored shell', () => /got=after-restore/.test(readFileSync(second.out, 'utf8')));
  assert.equal(w.tsrunc(['kill', 'tty2', 'KILL']).code, 0);
  await until('stopped', () => w.state('tty2').status === 'stopped');
  assert.equal(w.tsrunc(['delete', 'tty2']).code, 0);
  assert.equal(await second.done, 0);
});

test('restore runs prestart and createRuntime hooks at setup-namespaces with the new pid; a failing one aborts the restore cleanly', async () => {
  const hook = posix.join(w.dir, 'hook.sh'), refuse = posix.join(w.dir, 'refuse');
  writeFileSync(hook, `#!/bin/sh\n[ -e ${refuse} ] && { echo "refused by the hook" >&2; exit 3; }\ncat > "$1"\n`, { mode: 0o755 });
  const out = (n: string) => posix.join(w.dir, `hook-${n}.json`);
  const b = await startCounter('hk', (s) => {
    s.hooks = { prestart: [{ path: hook, args: ['hook.sh', out('prestart')] }], createRuntime: [{ path: hook, args: ['hook.sh', out('createRuntime')] }] };
  });
  assert.equal(w.tsrunc(['checkpoint', '--leave-running', '--image-path', img('hk'), 'hk']).code, 0);
  rmSync(out('prestart'));
  rmSync(out('createRuntime'));

  writeFileSync(refuse, '');
  const bad = w.detached(['restore', '-d', '--image-path', img('hk'), '--bundle', b, 'hk2']);
  assert.equal(bad.code, 1);
  assert.ok(isOneLineError(bad.stderr), bad.stderr);
  assert.match(bad.stderr, /hooks\.prestart\[0\] \(.*hook\.sh\) failed: exit status 3: refused by the hook/);
  assert.equal(existsSync(posix.join(w.root, 'hk2')), false);
  assert.deepEqual(cgroupDirs('tsrunc/hk2'), []);
  assert.deepEqual(mountsMentioning('criu-root'), []);
  assert.equal(w.state('hk').status, 'running', 'the source is untouched');

  rmSync(refuse);
  const r = w.detached(['restore', '-d', '--image-path', img('hk'), '--bundle', b, 'hk2']);
  assert.equal(r.code, 0, r.stderr);
  for (const kind of ['prestart', 'createRuntime']) {
    const st = JSON.parse(readFileSync(out(kind), 'utf8'));
    assert.equal(st.id, 'hk2');
    assert.equal(st.status, 'creating');
    assert.equal(st.pid, w.state('hk2').pid, `${kind} saw the restored init's pid`);
  }
});

test('a listening TCP socket in the container\'s own network namespace survives checkpoint and restore: connect works after', async () => {
  const b = w.bundle(['sh', '-c', 'ip link set lo up; echo up > /dev/shm/ready; while true; do nc -l -p 8080 -e echo hello-tcp; done'], (s) => {
    if (!s.linux!.namespaces!.some((n) => n.type === 'network')) s.linux!.namespaces!.push({ type: 'network' });
  });
  assert.equal(w.detached(['run', '-d', '--bundle', b, 'tcp']).code, 0);
  const ask = (id: string) => w.tsrunc(['exec', id, 'nc', '127.0.0.1', '8080'], { timeout: 10000 });
  await until('listening', () => ask('tcp').stdout.includes('hello-tcp'));
  const ck = w.tsrunc(['checkpoint', '--tcp-established', '--image-path', img('tcp'), 'tcp']);
  assert.equal(ck.code, 0, ck.stderr);
  const r = w.detached(['restore', '-d', '--tcp-established', '--image-path', img('tcp'), '--bundle', b, 'tcp2']);
  assert.equal(r.code, 0, r.stderr);
  await until('the restored listener answers', () => ask('tcp2').stdout.includes('hello-tcp'), 10000);
  assert.equal(w.tsrunc(['delete', '--force', 'tcp2']).code, 0);
});
