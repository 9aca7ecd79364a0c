/**
 * containerd (Debian's, started here with its own config, root, state and socket, stopped by
 * its pid) with the runc v2 shim pointed at tsrunc: ctr run, task exec, ps, pause/resume, kill,
 * and checkpoint/restore of a task. Every runtime call is logged by a wrapper.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { posix } from 'node:path';
import { TSRUNC, World, until } from './helpers.js';

const w = new World('containerd');
const calls = posix.join(w.dir, 'calls.log');
const wrapper = posix.join(w.dir, 'tsrunc-logged');
const sock = posix.join(w.dir, 'containerd.sock');
const NS = `tsrunc-test-${process.pid}`;
const IMAGE = 'localhost/tsrunc-ctr-busybox:latest';
const COUNTER = ['sh', '-c', 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done'];
let daemon: ChildProcess | undefined;

function ctr(args: string[], timeout = 60000): { code: number; stdout: string; stderr: string } {
  const r = spawnSync('ctr', ['--address', sock, '-n', NS, ...args], { encoding: 'utf8', timeout, stdio: ['ignore', 'pipe', 'pipe'] });
  return { code: r.status ?? 128, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}
function ok(args: string[]): string {
  const r = ctr(args);
  const log = existsSync(calls) ? readFileSync(calls, 'utf8').trim().split('\n').slice(-5).join('\n') : '(none)';
  assert.equal(r.code, 0, `ctr ${args.join(' ')}: ${r.stderr}\nruntime calls:\n${log}`);
  return r.stdout;
}
const count = (id: string, n: number) => Number(ok(['task', 'exec', '--exec-id', `c${n}`, id, 'cat', '/tmp/count']).trim());
/** runtime calls without the shim's global flags, which it passes before every verb */
const verbs = () => readFileSync(calls, 'utf8').replace(/^--root \S+ --log \S+ --log-format json /gm, '');

before(async () => {
  assert.equal(spawnSync('containerd', ['--version']).status, 0, 'containerd is not installed: scripts/setup installs it (apt-get install containerd)');
  writeFileSync(wrapper, `#!/bin/sh\nprintf '%s\\n' "$*" >> ${calls}\nexec ${TSRUNC} "$@"\n`, { mode: 0o755 });
  const config = posix.join(w.dir, 'config.toml');
  writeFileSync(config, [
    'version = 2', `root = "${w.dir}/root"`, `state = "${w.dir}/state"`, '[grpc]', `  address = "${sock}"`,
    '[ttrpc]', `  address = "${sock}.ttrpc"`, '',
  ].join('\n'));
  daemon = spawn('containerd', ['--config', config], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  daemon.stderr!.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
  await until('containerd listening', () => existsSync(sock) && ctr(['version']).code === 0, 20000).catch(() => assert.fail(`containerd did not start: ${err}`));
  // an image made here: the busybox rootfs, imported into podman's own store and saved as a docker archive
  const storage = ['--root', posix.join(w.dir, 'podman'), '--runroot', posix.join(w.dir, 'podman-run')];
  const tar = posix.join(w.dir, 'rootfs.tar'), img = posix.join(w.dir, 'image.tar');
  execFileSync('tar', ['-C', w.rootfs, '-cf', tar, '.']);
  execFileSync('podman', [...storage, 'import', tar, IMAGE], { stdio: 'ignore' });
  execFileSync('podman', [...storage, 'save', '--format', 'docker-archive', '-o', img, IMAGE], { stdio: 'ignore' });
  execFileSync('podman', [...storage, 'rmi', '-af'], { stdio: 'ignore' });
  ok(['images', 'import', img]);
});
after(async () => {
  for (const id of ctr(['task', 'ls', '-q']).stdout.split('\n').filter(Boolean)) ctr(['task', 'kill', '-s', 'SIGKILL', id]);
  await new Promise((r) => setTimeout(r, 500));
  for (const id of ctr(['c', 'ls', '-q']).stdout.split('\n').filter(Boolean)) {
    ctr(['task', 'delete', '-f', id]);
    ctr(['c', 'delete', id]);
  }
  ctr(['images', 'rm', IMAGE]);
  if (daemon?.pid) {
    daemon.kill('SIGTERM');
    await new Promise((r) => daemon!.once('exit', r));
  }
  spawnSync('sh', ['-c', `grep -o ' ${w.dir}[^ ]*' /proc/self/mountinfo | xargs -r -n1 umount -l`]);
  // the shim's runtime root for this namespace
  spawnSync('rmdir', [`/run/containerd/runc/${NS}`]);
  w.cleanup();
});

test('ctr run: output and exit codes; the shim calls tsrunc as it calls runc', () => {
  const r = ctr(['run', '--rm', '--runc-binary', wrapper, IMAGE, 'r1', 'sh', '-c', 'echo hello from containerd; exit 5']);
  assert.equal(r.code, 5, r.stderr);
  assert.match(r.stdout, /hello from containerd/);
  const log = readFileSync(calls, 'utf8');
  assert.match(log, /^--root \S+ --log \S+\/log\.json --log-format json create --bundle \S+ --pid-file \S+ r1$/m);
  assert.match(verbs(), /^start r1$/m);
  assert.match(verbs(), /^delete (--force )?r1$/m);
});

test('ctr task exec, ps, pause/resume, kill; checkpoint of a task and restore of it (-no-subreaper): the counter continues', async () => {
  ok(['run', '-d', '--runc-binary', wrapper, IMAGE, 'd1', ...COUNTER]);
  await until('counting', () => { try { return count('d1', 0) > 5; } catch { return false; } }, 10000);
  assert.equal(ctr(['task', 'exec', '--exec-id', 'x6', 'd1', 'sh', '-c', 'exit 6']).code, 6);
  assert.match(ok(['task', 'ps', 'd1']), /^\d+\s/m);
  ok(['task', 'pause', 'd1']);
  assert.match(ok(['task', 'ls']), /^d1\s+\d+\s+PAUSED/m);
  ok(['task', 'resume', 'd1']);
  assert.match(ok(['task', 'ls']), /^d1\s+\d+\s+RUNNING/m);

  // containerd pauses the task itself, then checkpoints it with --leave-running
  ok(['c', 'checkpoint', '--task', '--image', 'd1', 'checkpoint/d1:1']);
  const c0 = count('d1', 1);
  ok(['task', 'kill', '-s', 'SIGKILL', 'd1']);
  await until('stopped', () => /^d1\s+\d+\s+STOPPED/m.test(ok(['task', 'ls'])), 10000);
  ok(['task', 'delete', 'd1']);
  ok(['c', 'delete', 'd1']);
  ok(['c', 'restore', '--live', 'd1', 'checkpoint/d1:1']);
  const c1 = count('d1', 2);
  assert.ok(c1 > 5 && c1 <= c0 + 20, `the count goes on from the checkpoint (${c1}, checkpointed near ${c0})`);
  const log = verbs();
  assert.match(log, /^exec --process \S+ --detach --pid-file \S+ d1$/m);
  assert.match(log, /^ps --format json d1$/m);
  assert.match(log, /^kill d1 9$/m);
  assert.match(log, /^checkpoint --image-path \S+ --work-path \S+ (--file-locks )?--leave-running d1$/m);
  assert.match(log, /^restore .*-no-subreaper .*d1$/m);
  ok(['task', 'kill', '-s', 'SIGKILL', 'd1']);
});
