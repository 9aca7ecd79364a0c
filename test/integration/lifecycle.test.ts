/** The OCI lifecycle through bin/tsrunc: run, create/start/kill/delete, list, state. */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { posix } from 'node:path';
import { TSRUNC, World, cgroupDirs, mountsMentioning, until } from './helpers.js';

const w = new World('lifecycle');
after(() => w.cleanup());

test('run prints the output and exits with the container\'s exit code; nothing is left', () => {
  const b = w.bundle(['sh', '-c', 'echo hi; exit 3']);
  const r = w.tsrunc(['run', '--bundle', b, 'exit3']);
  assert.equal(r.stdout, 'hi\n');
  assert.equal(r.code, 3, r.stderr);
  assert.equal(existsSync(posix.join(w.root, 'exit3')), false);
  assert.deepEqual(cgroupDirs('tsrunc/exit3'), []);
});

test('create -> created with a pid -> start -> running -> kill -> stopped -> delete leaves nothing', async () => {
  const b = w.bundle(['sh', '-c', 'while true; do sleep 0.1; done']);
  const pidFile = posix.join(w.dir, 'c1.pid');
  const c = w.detached(['create', '--bundle', b, '--pid-file', pidFile, 'c1']);
  assert.equal(c.code, 0, c.stderr);
  const s1 = w.state('c1');
  assert.equal(s1.status, 'created');
  assert.ok(s1.pid > 0);
  assert.equal(Number(readFileSync(pidFile, 'utf8')), s1.pid);
  assert.equal(s1.bundle, b);
  assert.ok(cgroupDirs('tsrunc/c1').length > 0, 'cgroup directories exist while the container lives');
  // the init sits in its cgroup before it runs anything
  assert.match(readFileSync(`/proc/${s1.pid}/cgroup`, 'utf8'), /memory:\/tsrunc\/c1/);

  const st = w.tsrunc(['start', 'c1']);
  assert.equal(st.code, 0, st.stderr);
  assert.equal(w.state('c1').status, 'running');
  assert.equal(w.tsrunc(['start', 'c1']).code, 1, 'a running container cannot be started again');

  const list = JSON.parse(w.tsrunc(['list', '--format', 'json']).stdout) as { id: string; status: string }[];
  assert.deepEqual(list.map((x) => [x.id, x.status]), [['c1', 'running']]);
  assert.equal(w.tsrunc(['list', '-q']).stdout, 'c1\n');
  assert.match(w.tsrunc(['list']).stdout, /^ID\s+PID\s+STATUS\s+BUNDLE\s+CREATED\s+OWNER\nc1\s+\d+\s+running\s/);

  const del = w.tsrunc(['delete', 'c1']);
  assert.equal(del.code, 1, 'delete refuses a running container');
  assert.match(del.stderr, /not stopped: running/);

  assert.equal(w.tsrunc(['kill', 'c1', 'KILL']).code, 0);
  await until('stopped', () => w.state('c1').status === 'stopped');
  assert.equal(w.state('c1').pid, 0);
  assert.equal(w.tsrunc(['kill', 'c1']).code, 1, 'kill of a stopped container is an error');

  const d = w.tsrunc(['delete', 'c1']);
  assert.equal(d.code, 0, d.stderr);
  assert.equal(existsSync(posix.join(w.root, 'c1')), false);
  assert.deepEqual(cgroupDirs('tsrunc/c1'), []);
  assert.deepEqual(mountsMentioning(w.rootfs), []);
  assert.equal(w.tsrunc(['state', 'c1']).code, 1);
});

test('kill takes signal names and numbers; a foreground run killed by a signal exits 128+signal', async () => {
  const b = w.bundle(['sh', '-c', 'trap "exit 7" USR1; while true; do sleep 0.05; done']);
  assert.equal(w.detached(['run', '-d', '--bundle', b, 'sig']).code, 0);
  assert.equal(w.tsrunc(['kill', 'sig', 'USR1']).code, 0);
  await until('stopped', () => w.state('sig').status === 'stopped');
  assert.equal(w.tsrunc(['delete', 'sig']).code, 0);
  assert.match(w.tsrunc(['kill', 'nosuch', '9']).stderr, /does not exist/);

  const b2 = w.bundle(['sh', '-c', 'while true; do sleep 0.05; done']);
  const run = spawn(TSRUNC, ['--root', w.root, 'run', '--bundle', b2, 'fgkill'], { stdio: 'ignore' });
  const code = new Promise<number | null>((r) => run.on('exit', (c) => r(c)));
  await until('running', () => existsSync(posix.join(w.root, 'fgkill', 'state.json')) && w.state('fgkill').status === 'running');
  assert.equal(w.tsrunc(['kill', 'fgkill', '9']).code, 0);
  assert.equal(await code, 137);
  assert.equal(existsSync(posix.join(w.root, 'fgkill')), false, 'a foreground run removes its container');
});

test('kill --all signals every process; delete --force removes a running container', async () => {
  const b = w.bundle(['sh', '-c', 'sleep 100 & sleep 100 & while true; do sleep 0.1; done']);
  assert.equal(w.detached(['run', '-d', '--bundle', b, 'all']).code, 0);
  const procs = () => readFileSync('/sys/fs/cgroup/pids/tsrunc/all/cgroup.procs', 'utf8').trim().split('\n').filter(Boolean);
  await until('three processes', () => procs().length >= 3);
  assert.equal(w.tsrunc(['kill', '--all', 'all', 'KILL']).code, 0);
  await until('stopped', () => w.state('all').status === 'stopped');
  assert.equal(w.tsrunc(['delete', 'all']).code, 0);
  assert.deepEqual(cgroupDirs('tsrunc/all'), []);

  assert.equal(w.detached(['run', '-d', '--bundle', b, 'force']).code, 0);
  const f = w.tsrunc(['delete', '--force', 'force']);
  assert.equal(f.code, 0, f.stderr);
  assert.equal(existsSync(posix.join(w.root, 'force')), false);
  assert.deepEqual(cgroupDirs('tsrunc/force'), []);
  assert.equal(w.tsrunc(['delete', '--force', 'never-existed']).code, 0, 'delete --force of an unknown id is not an error');
});

test('delete of a created (never started) container removes it', () => {
  const b = w.bundle(['true']);
  assert.equal(w.detached(['create', '--bundle', b, 'made']).code, 0);
  assert.equal(w.state('made').status, 'created');
  const d = w.tsrunc(['delete', 'made']);
  assert.equal(d.code, 0, d.stderr);
  assert.deepEqual(cgroupDirs('tsrunc/made'), []);
});

test('spec writes the default config; features is JSON; --version', () => {
  const dir = posix.join(w.dir, 'specdir');
  mkdirSync(dir);
  assert.equal(w.tsrunc(['spec', '--bundle', dir]).code, 0);
  const spec = JSON.parse(readFileSync(posix.join(dir, 'config.json'), 'utf8'));
  assert.deepEqual(spec.process.args, ['sh']);
  assert.equal(spec.root.path, 'rootfs');
  assert.equal(w.tsrunc(['spec', '--bundle', dir]).code, 1, 'spec refuses to overwrite');
  const rl = posix.join(w.dir, 'rootless');
  mkdirSync(rl);
  assert.equal(w.tsrunc(['spec', '--rootless', '--bundle', rl]).code, 0);
  const rs = JSON.parse(readFileSync(posix.join(rl, 'config.json'), 'utf8'));
  assert.ok(rs.linux.namespaces.some((n: { type: string }) => n.type === 'user'));
  const feat = JSON.parse(w.tsrunc(['features']).stdout);
  assert.ok(feat.linux.namespaces.includes('time'));
  assert.match(w.tsrunc(['--version']).stdout, /^tsrunc version \d+\.\d+\.\d+/);
  const sd = w.tsrunc(['--systemd-cgroup', 'list']);
  assert.equal(sd.code, 1);
  assert.match(sd.stderr, /systemd/);
});
