/**
 * podman (Debian's podman and conmon) drives tsrunc unchanged: --runtime through containers.conf,
 * cgroupfs, no network, an image imported from the busybox rootfs. Every runtime call podman
 * makes is logged (a wrapper appends argv), so a failure says which call broke.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { posix } from 'node:path';
import { TSRUNC, World, until } from './helpers.js';

const w = new World('podman');
const calls = posix.join(w.dir, 'calls.log');
const conf = posix.join(w.dir, 'containers.conf');
const storage = posix.join(w.dir, 'storage'), runroot = posix.join(w.dir, 'run');
const IMAGE = 'localhost/tsrunc-test-busybox:latest';
const COUNTER = ['sh', '-c', 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done'];

function podman(args: string[], timeout = 120000): { code: number; stdout: string; stderr: string } {
  const r = spawnSync('podman', ['--root', storage, '--runroot', runroot, ...args], {
    encoding: 'utf8', timeout, env: { ...process.env, CONTAINERS_CONF: conf }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  return { code: r.status ?? 128, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}
function ok(args: string[]): string {
  const r = podman(args);
  assert.equal(r.code, 0, `podman ${args.join(' ')}: ${r.stderr}\nruntime calls:\n${tailCalls()}`);
  return r.stdout;
}
function tailCalls(): string {
  return existsSync(calls) ? readFileSync(calls, 'utf8').trim().split('\n').slice(-6).join('\n') : '(none)';
}
const count = (name: string) => Number(ok(['exec', name, 'cat', '/tmp/count']).trim());

before(() => {
  const have = spawnSync('podman', ['--version'], { encoding: 'utf8' });
  assert.equal(have.status, 0, 'podman is not installed: scripts/setup installs it (apt-get install podman conmon)');
  const wrapper = posix.join(w.dir, 'tsrunc-logged');
  writeFileSync(wrapper, `#!/bin/sh\nprintf '%s\\n' "$*" >> ${calls}\nexec ${TSRUNC} "$@"\n`, { mode: 0o755 });
  // what a user puts in containers.conf (README): this machine's limits, cgroupfs, and JSON logs from tsrunc
  writeFileSync(conf, [
    '[containers]', 'default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]', 'netns = "none"', '',
    '[engine]', 'cgroup_manager = "cgroupfs"', 'events_logger = "none"', 'runtime = "tsrunc"',
    'runtime_supports_json = ["crun", "runc", "kata", "runsc", "youki", "krun", "tsrunc"]', '',
    '[engine.runtimes]', `tsrunc = ["${wrapper}"]`, '',
  ].join('\n'));
  const tar = posix.join(w.dir, 'rootfs.tar');
  execFileSync('tar', ['-C', w.rootfs, '-cf', tar, '.']);
  ok(['import', tar, IMAGE]);
});
after(() => {
  podman(['rm', '-af', '-t', '0']);
  podman(['rmi', '-af']);
  spawnSync('sh', ['-c', `grep -o ' ${storage}[^ ]*' /proc/self/mountinfo | xargs -r -n1 umount -l`]);
  w.cleanup();
});

test('podman run --rm: output and exit codes come through; create/start/delete as runc is called', () => {
  assert.equal(ok(['run', '--rm', IMAGE, 'echo', 'hello from podman']).trim(), 'hello from podman');
  const r = podman(['run', '--rm', IMAGE, 'sh', '-c', 'exit 7']);
  assert.equal(r.code, 7, r.stderr);
  const log = readFileSync(calls, 'utf8');
  assert.match(log, /^--log-format=json --log \S+ create --bundle \S+ --pid-file \S+ [0-9a-f]{64}$/m);
  assert.match(log, /^start [0-9a-f]{64}$/m);
  assert.match(log, /^delete --force [0-9a-f]{64}$/m);
});

test('podman run -d, exec, pause/unpause, stop, rm', async () => {
  ok(['run', '-d', '--name', 'pd', IMAGE, ...COUNTER]);
  await until('counting', () => { try { return count('pd') > 3; } catch { return false; } }, 10000);
  assert.equal(ok(['exec', 'pd', 'sh', '-c', 'echo exec-ok']).trim(), 'exec-ok');
  assert.equal(podman(['exec', 'pd', 'sh', '-c', 'exit 4']).code, 4);
  ok(['pause', 'pd']);
  assert.match(ok(['ps', '-a', '--format', '{{.Names}} {{.Status}}']), /^pd Paused/m);
  ok(['unpause', 'pd']);
  ok(['stop', '-t', '1', 'pd']);
  assert.match(ok(['ps', '-a', '--format', '{{.Names}} {{.Status}}']), /^pd Exited/m);
  ok(['rm', 'pd']);
  const log = readFileSync(calls, 'utf8');
  assert.match(log, /^--log-format=json --log \S+ exec --pid-file \S+ --process \S+ --detach [0-9a-f]{64}$/m);
  assert.match(log, /^pause [0-9a-f]{64}$/m);
  assert.match(log, /^resume [0-9a-f]{64}$/m);
  assert.match(log, /^kill [0-9a-f]{64} (15|TERM)$/m);
});

test('podman run -t and exec -t: a pty through conmon\'s console socket', () => {
  const r = podman(['run', '--rm', '-t', IMAGE, 'sh', '-c', 'tty; exit 3']);
  assert.equal(r.code, 3, r.stderr);
  assert.match(r.stdout, /\/dev\/pts\/\d+/);
  ok(['run', '-d', '-t', '--name', 'pt', IMAGE, 'sh', '-c', 'while true; do sleep 1; done']);
  assert.match(ok(['exec', '-t', 'pt', 'tty']), /\/dev\/pts\/\d+/);
  // a terminal container checkpointed and restored in place: conmon gets the new pty master
  ok(['container', 'checkpoint', 'pt']);
  ok(['container', 'restore', 'pt']);
  assert.equal(ok(['exec', 'pt', 'echo', 'alive']).trim(), 'alive');
  ok(['rm', '-f', '-t', '0', 'pt']);
  assert.match(readFileSync(calls, 'utf8'), /create --bundle \S+ --pid-file \S+ --console-socket \S+ [0-9a-f]{64}$/m);
});

test('podman container checkpoint/restore, and --export/--import --name a second copy: the counter continues', async () => {
  ok(['run', '-d', '--name', 'ck', IMAGE, ...COUNTER]);
  await until('counting', () => { try { return count('ck') > 5; } catch { return false; } }, 10000);
  ok(['container', 'checkpoint', 'ck']);
  assert.match(ok(['ps', '-a', '--format', '{{.Names}} {{.Status}}']), /^ck Exited/m);
  ok(['container', 'restore', 'ck']);
  const c0 = count('ck');
  assert.ok(c0 > 5, `the count goes on after restore (${c0})`);

  const file = posix.join(w.dir, 'ck.tar.gz');
  const stats = JSON.parse(ok(['container', 'checkpoint', '--export', file, '--print-stats', 'ck']));
  assert.ok(stats.container_statistics?.length === 1, JSON.stringify(stats));
  ok(['container', 'restore', '--import', file, '--name', 'ck2']);
  const c2 = count('ck2');
  assert.ok(c2 >= c0, `the imported copy goes on from the checkpoint (${c2} >= ${c0})`);
  await until('the copy counts on', () => count('ck2') > c2 + 2);
  ok(['rm', '-f', '-t', '0', 'ck', 'ck2']);
  const log = readFileSync(calls, 'utf8');
  assert.match(log, /^checkpoint --help$/m, 'podman probes checkpoint support');
  assert.match(log, /^checkpoint --image-path \S+ --work-path \S+ [0-9a-f]{64}$/m);
  assert.match(log, /^--log-format=json --log \S+ restore --bundle \S+ --pid-file \S+ --detach --image-path \S+ --work-path \S+ [0-9a-f]{64}$/m);
});
