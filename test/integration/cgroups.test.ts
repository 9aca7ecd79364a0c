/** Real cgroups: limits, OOM events, pause/resume, update, ps, and cleanup in every hierarchy. */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { posix } from 'node:path';
import type { Spec } from '../../src/spec/types.js';
import { TSRUNC, World, cgroupDirs, isOneLineError, until } from './helpers.js';

const w = new World('cgroups');
after(() => w.cleanup());

const cg = (ctrl: string, id: string, file: string) => readFileSync(`/sys/fs/cgroup/${ctrl}/tsrunc/${id}/${file}`, 'utf8').trim();
const withResources = (r: object) => (s: Spec) => {
  s.linux!.resources = { devices: [{ allow: false, access: 'rwm' }], ...r };
};
const sleepy = ['sh', '-c', 'while true; do sleep 0.1; done'];

test('a container limited to 64 MiB that allocates 128 MiB is OOM-killed, and events reports it', async () => {
  const b = w.bundle(['sh', '-c', 'sleep 0.5; x=$(head -c 134217728 /dev/zero | tr "\\0" a); echo survived'],
    withResources({ memory: { limit: 64 * 2 ** 20, swap: 64 * 2 ** 20 } }));
  assert.equal(w.detached(['create', '--bundle', b, 'oom']).code, 0);
  assert.equal(cg('memory', 'oom', 'memory.limit_in_bytes'), String(64 * 2 ** 20));
  const ev = spawn(TSRUNC, ['--root', w.root, 'events', '--interval', '1s', 'oom'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  ev.stdout.on('data', (d) => (out += d));
  const done = new Promise((r) => ev.on('exit', r));
  await until('events running', () => out.includes('"type":"stats"'));
  assert.equal(w.tsrunc(['start', 'oom']).code, 0);
  await until('stopped', () => w.state('oom').status === 'stopped', 20000);
  await done;
  const events = out.trim().split('\n').map((l) => JSON.parse(l) as { type: string; id: string });
  assert.ok(events.some((e) => e.type === 'oom' && e.id === 'oom'), out);
  assert.equal(w.tsrunc(['delete', 'oom']).code, 0);
});

test('a pids limit of 10 stops a fork loop and the container stays healthy', async () => {
  // the fork loop runs in a child shell (a failed fork ends a shell); init waits without forking
  const b = w.bundle(['sh', '-c', 'sleep 1000 & sh -c "for i in \\$(seq 30); do sleep 30 & done" 2>/dev/null; wait'],
    withResources({ pids: { limit: 10 } }));
  assert.equal(w.detached(['run', '-d', '--bundle', b, 'pids']).code, 0);
  assert.equal(cg('pids', 'pids', 'pids.max'), '10');
  await until('fork loop hit the limit', () => Number(cg('pids', 'pids', 'pids.events').split(' ')[1]) > 0);
  assert.ok(Number(cg('pids', 'pids', 'pids.current')) <= 10);
  assert.equal(w.state('pids').status, 'running');
  const ps = JSON.parse(w.tsrunc(['ps', '--format', 'json', 'pids']).stdout) as number[];
  assert.ok(ps.length >= 2 && ps.length <= 10, String(ps));
  assert.ok(ps.includes(w.state('pids').pid));
  const table = w.tsrunc(['ps', 'pids']);
  assert.match(table.stdout, /^UID\s+PID\s+PPID/);
  assert.equal(table.stdout.trim().split('\n').length, ps.length + 1);
  assert.equal(w.tsrunc(['delete', '--force', 'pids']).code, 0);
  assert.deepEqual(cgroupDirs('tsrunc/pids'), []);
});

test('a cpu quota of 0.2 CPU keeps a busy loop near 20 %', async () => {
  const b = w.bundle(['sh', '-c', 'while :; do :; done'], withResources({ cpu: { quota: 20000, period: 100000 } }));
  assert.equal(w.detached(['run', '-d', '--bundle', b, 'cpu']).code, 0);
  await new Promise((r) => setTimeout(r, 300));
  const u0 = Number(cg('cpuacct', 'cpu', 'cpuacct.usage')), t0 = process.hrtime.bigint();
  await new Promise((r) => setTimeout(r, 1000));
  const u1 = Number(cg('cpuacct', 'cpu', 'cpuacct.usage')), t1 = process.hrtime.bigint();
  const share = (u1 - u0) / Number(t1 - t0);
  assert.ok(share > 0.1 && share < 0.32, `busy loop used ${(share * 100).toFixed(1)} % of a CPU`);
  assert.equal(w.tsrunc(['delete', '--force', 'cpu']).code, 0);
});

test('update changes the live limits and the state records them', () => {
  const b = w.bundle(sleepy, withResources({ memory: { limit: 64 * 2 ** 20 } }));
  assert.equal(w.detached(['run', '-d', '--bundle', b, 'upd']).code, 0);
  const r = w.tsrunc(['update', '--memory', '128m', '--memory-swap', '256m', '--pids-limit', '50', '--cpu-quota', '50000', '--cpu-period', '100000', 'upd']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(cg('memory', 'upd', 'memory.limit_in_bytes'), String(128 * 2 ** 20));
  assert.equal(cg('memory', 'upd', 'memory.memsw.limit_in_bytes'), String(256 * 2 ** 20));
  assert.equal(cg('pids', 'upd', 'pids.max'), '50');
  assert.equal(cg('cpu', 'upd', 'cpu.cfs_quota_us'), '50000');
  const rec = JSON.parse(readFileSync(posix.join(w.root, 'upd', 'state.json'), 'utf8'));
  assert.equal(rec.config.linux.resources.memory.limit, 128 * 2 ** 20);
  assert.equal(rec.config.linux.resources.pids.limit, 50);
  const res = posix.join(w.dir, 'res.json');
  writeFileSync(res, JSON.stringify({ memory: { limit: 96 * 2 ** 20 } }));
  assert.equal(w.tsrunc(['update', '-r', res, 'upd']).code, 0);
  assert.equal(cg('memory', 'upd', 'memory.limit_in_bytes'), String(96 * 2 ** 20));
  // bad input changes nothing
  for (const [args, pattern] of [
    [['--memory', 'lots'], /--memory: invalid size "lots"/],
    [['--pids-limit', '-7'], /resources\.pids\.limit: must be an integer from -1/],
  ] as [string[], RegExp][]) {
    const bad = w.tsrunc(['update', ...args, 'upd']);
    assert.equal(bad.code, 1);
    assert.ok(isOneLineError(bad.stderr), bad.stderr);
    assert.match(bad.stderr, pattern);
  }
  assert.equal(cg('memory', 'upd', 'memory.limit_in_bytes'), String(96 * 2 ** 20));
  assert.equal(w.tsrunc(['delete', '--force', 'upd']).code, 0);
});

test('pause stops a counter and state says paused; kill works on a paused container; resume goes on', async () => {
  const b = w.bundle(['sh', '-c', 'i=0; while true; do i=$((i+1)); echo $i > /dev/shm/count; sleep 0.05; done'], withResources({}));
  assert.equal(w.detached(['run', '-d', '--bundle', b, 'pz']).code, 0);
  const pid = w.state('pz').pid;
  const count = () => Number(readFileSync(`/proc/${pid}/root/dev/shm/count`, 'utf8'));
  await until('counting', () => { try { return count() > 2; } catch { return false; } });
  assert.equal(w.tsrunc(['pause', 'pz']).code, 0);
  assert.equal(w.state('pz').status, 'paused');
  assert.equal(w.tsrunc(['pause', 'pz']).code, 1, 'pausing a paused container is an error');
  const c0 = count();
  await new Promise((r) => setTimeout(r, 400));
  assert.equal(count(), c0, 'the counter does not move while paused');
  assert.equal(w.tsrunc(['kill', 'pz', 'CONT']).code, 0, 'kill delivers signals to a paused container');
  assert.equal(w.tsrunc(['resume', 'pz']).code, 0);
  assert.equal(w.state('pz').status, 'running');
  await until('counting again', () => count() > c0 + 2);
  assert.equal(w.tsrunc(['resume', 'pz']).code, 1, 'resuming a running container is an error');

  assert.equal(w.tsrunc(['pause', 'pz']).code, 0);
  const d = w.tsrunc(['delete', '--force', 'pz']);
  assert.equal(d.code, 0, d.stderr);
  assert.deepEqual(cgroupDirs('tsrunc/pz'), [], 'delete --force of a paused container leaves no cgroup');
});

test('bad resources are refused at create: unknown, negative, a cgroupsPath with ..', () => {
  for (const [edit, pattern] of [
    [(s: Spec) => { s.linux!.resources = { bogus: 1 }; }, /linux\.resources\.bogus: unknown resource/],
    [(s: Spec) => { s.linux!.resources = { memory: { limit: -5 } }; }, /linux\.resources\.memory\.limit: must be a number of bytes or -1/],
    [(s: Spec) => { s.linux!.cgroupsPath = '/tsrunc/../../escape'; }, /linux\.cgroupsPath: must not contain "\.\."/],
    [(s: Spec) => { s.linux!.resources = { hugepageLimits: [{ pageSize: '2MB', limit: 1 }] }; }, /hugetlb/],
  ] as [(s: Spec) => void, RegExp][]) {
    const b = w.bundle(['true'], edit);
    const r = w.detached(['create', '--bundle', b, 'badres']);
    assert.equal(r.code, 1);
    assert.ok(isOneLineError(r.stderr), r.stderr);
    assert.match(r.stderr, pattern);
    assert.deepEqual(cgroupDirs('tsrunc/badres'), []);
    assert.equal(w.tsrunc(['state', 'badres']).code, 1);
  }
});

test('device rules: the default devices work, a host device outside the rules is refused', () => {
  const b = w.bundle(['sh', '-c', 'echo ok > /dev/null && echo null-ok; head -c1 /dev/kmsg; echo kmsg=$?'], (s) => {
    s.linux!.resources = { devices: [{ allow: false, access: 'rwm' }] };
    s.mounts!.push({ destination: '/dev/kmsg', type: 'bind', source: '/dev/kmsg', options: ['bind'] });
  });
  const r = w.tsrunc(['run', '--bundle', b, 'devs']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /null-ok/);
  assert.match(r.stdout, /kmsg=1/);
  assert.match(r.stderr, /kmsg: Operation not permitted/);
});

test('the cgroup v2 device program, loaded with bpf(2) and attached, lets /dev/null through and refuses /dev/zero', async () => {
  const { attachDeviceProgram } = await import('../../src/linux/bpf.js');
  const { deviceProgram, DEVICE_PROGRAM_LICENSE } = await import('../../src/cgroups/devices-bpf.js');
  const { mkdirSync, rmdirSync } = await import('node:fs');
  const { spawnSync } = await import('node:child_process');
  // the hybrid layout's cgroup2 mount has no controllers, but device programs attach to any cgroup2 directory
  const v2 = existsSync('/sys/fs/cgroup/unified/cgroup.procs') ? '/sys/fs/cgroup/unified' : '/sys/fs/cgroup';
  const dir = posix.join(v2, `tsrunc-bpf-${process.pid}`);
  mkdirSync(dir);
  try {
    attachDeviceProgram(dir, deviceProgram([{ allow: false, access: 'rwm' }, { allow: true, type: 'c', major: 1, minor: 3, access: 'rwm' }]), DEVICE_PROGRAM_LICENSE);
    const r = spawnSync('sh', ['-c', `echo $$ > ${dir}/cgroup.procs; head -c1 /dev/null && echo null-ok; head -c1 /dev/zero >/dev/null; echo zero=$?`], { encoding: 'utf8' });
    assert.match(r.stdout, /null-ok/);
    assert.match(r.stdout, /zero=1/);
    assert.match(r.stderr, /\/dev\/zero.*Operation not permitted/);
  } finally {
    await until('empty', () => readFileSync(posix.join(dir, 'cgroup.procs'), 'utf8').trim() === '');
    rmdirSync(dir);
  }
});
