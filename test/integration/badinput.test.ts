/** Bad input: one clear line, a non-zero exit, no stack trace, nothing left behind. */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { posix } from 'node:path';
import { TSRUNC, World, cgroupDirs, isOneLineError, until } from './helpers.js';

const w = new World('bad');
after(() => w.cleanup());

function assertRefused(r: { code: number; stderr: string }, pattern: RegExp, id?: string): void {
  assert.notEqual(r.code, 0);
  assert.ok(isOneLineError(r.stderr), `one line, no stack trace: ${JSON.stringify(r.stderr)}`);
  assert.match(r.stderr, pattern);
  if (id) {
    assert.equal(existsSync(posix.join(w.root, id)), false, 'no state left');
    assert.deepEqual(cgroupDirs(`tsrunc/${id}`), [], 'no cgroup left');
  }
}

test('a missing bundle', () => {
  assertRefused(w.detached(['create', '--bundle', posix.join(w.dir, 'nope'), 'x1']), /bundle .*nope: no such directory/, 'x1');
});

test('broken JSON in config.json', () => {
  const b = w.bundle(['true']);
  writeFileSync(posix.join(b, 'config.json'), '{"ociVersion": "1.0.2", "process": ');
  assertRefused(w.detached(['create', '--bundle', b, 'x2']), /config\.json: invalid JSON/, 'x2');
});

test('an unknown namespace type names its JSON path', () => {
  const b = w.bundle(['true'], (s) => s.linux!.namespaces!.push({ type: 'bogus' }));
  assertRefused(w.detached(['run', '--bundle', b, 'x3']), /linux\.namespaces\[5\]\.type: unknown namespace type "bogus"/, 'x3');
});

test('empty process.args', () => {
  const b = w.bundle([]);
  assertRefused(w.tsrunc(['run', '--bundle', b, 'x4']), /process\.args: must be a non-empty array/, 'x4');
});

test('a duplicate id is refused and the first container is untouched', () => {
  const b = w.bundle(['sh', '-c', 'while true; do sleep 0.1; done']);
  assert.equal(w.detached(['run', '-d', '--bundle', b, 'dup']).code, 0);
  const before = w.state('dup');
  assertRefused(w.detached(['run', '-d', '--bundle', b, 'dup']), /container "dup" already exists/);
  const now = w.state('dup');
  assert.equal(now.status, 'running');
  assert.equal(now.pid, before.pid);
  assert.equal(w.tsrunc(['delete', '--force', 'dup']).code, 0);
});

test('ids with "..", "/" or bad characters', () => {
  const b = w.bundle(['true']);
  assertRefused(w.tsrunc(['run', '--bundle', b, '..']), /invalid container id "\.\."/);
  assertRefused(w.tsrunc(['run', '--bundle', b, 'a..b']), /must not contain "\.\."/);
  assertRefused(w.tsrunc(['run', '--bundle', b, 'a/b']), /must not contain "\/"/);
  assertRefused(w.tsrunc(['state', '../etc']), /invalid container id/);
  assertRefused(w.tsrunc(['delete', '../../x']), /invalid container id/);
  assertRefused(w.tsrunc(['run', '--bundle', b, 'x'.repeat(300)]), /too long/);
  assert.deepEqual(existsSync(w.root) ? readdirSync(w.root) : [], []);
});

test('a mount destination through a symlink that points out of the rootfs', () => {
  const b = w.bundle(['true'], (s, dir) => {
    s.root = { path: 'rootfs', readonly: true };
    mkdirSync(posix.join(dir, 'rootfs'));
    symlinkSync('../../../../../../../../tmp', posix.join(dir, 'rootfs', 'evil'));
    s.mounts = [{ destination: '/evil/x', type: 'tmpfs', source: 'tmpfs' }];
  });
  assertRefused(w.detached(['create', '--bundle', b, 'x5']), /mounts\[0\]\.destination: \/evil\/x goes through symlink \/evil -> .*points out of the rootfs/, 'x5');
  assert.equal(existsSync('/tmp/x'), false, 'nothing was made outside the rootfs');
});

test('an absolute symlink is resolved inside the rootfs, never on the host', () => {
  const outside = posix.join(w.dir, 'host-side');
  const r = w.bundle(['sh', '-c', 'ls -d /abs/made && echo inside'], (s, dir) => {
    s.root = { path: 'rootfs', readonly: false };
    execFileSync('cp', ['-a', w.rootfs, posix.join(dir, 'rootfs')]);
    symlinkSync(outside, posix.join(dir, 'rootfs', 'abs'));
    s.mounts!.push({ destination: '/abs/made', type: 'tmpfs', source: 'tmpfs' });
  });
  const res = w.tsrunc(['run', '--bundle', r, 'abs']);
  assert.equal(res.code, 0, res.stderr);
  assert.match(res.stdout, /inside/);
  assert.equal(existsSync(outside), false, 'the host path the symlink names was not touched');
  assert.ok(existsSync(posix.join(r, 'rootfs', outside, 'made')));
});

test('a missing command is reported at create, naming process.args[0]', () => {
  const b = w.bundle(['no-such-binary']);
  assertRefused(w.detached(['create', '--bundle', b, 'x6']), /process\.args\[0\] \(no-such-binary\): exec: "no-such-binary": executable file not found in \$PATH/, 'x6');
});

test('start, kill, delete and state of an unknown container', () => {
  for (const cmd of [['start', 'ghost'], ['kill', 'ghost'], ['delete', 'ghost'], ['state', 'ghost']])
    assertRefused(w.tsrunc(cmd), /container "ghost" does not exist/);
  assertRefused(w.tsrunc(['kill', 'ghost', 'NOTASIGNAL']), /invalid signal "NOTASIGNAL"/);
});

test('--log-format json writes runc-shaped JSON errors to --log', () => {
  const log = posix.join(w.dir, 'log.json');
  const r = w.tsrunc(['--log', log, '--log-format', 'json', 'state', 'ghost']);
  assert.equal(r.code, 1);
  const line = JSON.parse(readFileSync(log, 'utf8').trim());
  assert.equal(line.level, 'error');
  assert.match(line.msg, /does not exist/);
  assert.ok(line.time);
});

test('a tsrunc killed in the middle of create leaves a container that delete --force cleans up', async () => {
  const b = w.bundle(['true'], (s) => {
    s.hooks = { createRuntime: [{ path: '/bin/sleep', args: ['sleep', '30'] }] };
  });
  const create = spawn(TSRUNC, ['--root', w.root, 'create', '--bundle', b, 'killed'], { stdio: 'ignore' });
  await until('init recorded', () => existsSync(posix.join(w.root, 'killed', 'state.json')), 10000);
  const st = w.state('killed');
  assert.equal(st.status, 'creating');
  create.kill('SIGKILL');
  await new Promise((r) => create.on('exit', r));
  assert.equal(w.tsrunc(['start', 'killed']).code, 1);
  const d = w.tsrunc(['delete', '--force', 'killed']);
  assert.equal(d.code, 0, d.stderr);
  assert.equal(existsSync(posix.join(w.root, 'killed')), false);
  assert.deepEqual(cgroupDirs('tsrunc/killed'), []);
  assert.equal(existsSync(`/proc/${st.pid}/stat`) && !/\) Z /.test(readFileSync(`/proc/${st.pid}/stat`, 'utf8')), false, 'its init is gone');
});
