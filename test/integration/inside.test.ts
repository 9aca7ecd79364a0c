/** What the process sees inside: namespaces, rootfs, mounts, limits, hooks. */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readlinkSync, writeFileSync, chmodSync, mkdirSync } from 'node:fs';
import { posix } from 'node:path';
import { TSRUNC, World, cgroupDirs, until } from './helpers.js';

const w = new World('inside');
after(() => w.cleanup());

function runIn(script: string, edit?: Parameters<World['bundle']>[1], own = false) {
  const b = w.bundle(['sh', '-c', script], edit, own);
  return w.tsrunc(['run', '--bundle', b, `t${Math.random().toString(36).slice(2, 8)}`]);
}

test('hostname, lo up, pid 1, new namespaces', () => {
  const r = runIn('hostname; echo pid=$$; ip link show lo; readlink /proc/self/ns/net', (s) => {
    s.hostname = 'box1';
    s.domainname = 'example.test';
  });
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.split('\n');
  assert.equal(lines[0], 'box1');
  assert.equal(lines[1], 'pid=1');
  assert.match(r.stdout, /lo: <LOOPBACK,UP/);
  assert.notEqual(lines.find((l) => l.startsWith('net:')), readlinkSync('/proc/self/ns/net'));
});

test('read-only root gives EROFS; masked paths read empty; read-only paths give EROFS', () => {
  const r = runIn(
    'touch /newfile 2>&1; echo hosts=$(wc -c < /etc/hosts); echo keys=$(wc -c < /proc/keys); ' +
      'echo 1 > /proc/sys/kernel/domainname 2>&1; echo fw=$(ls -A /sys/firmware | wc -l) usr=$(ls -A /usr | wc -l); touch /scratch/x 2>&1; echo done',
    (s) => {
      s.mounts!.push({ destination: '/scratch', type: 'tmpfs', source: 'tmpfs' });
      s.linux!.maskedPaths!.push('/etc/hosts', '/usr');
      s.linux!.readonlyPaths!.push('/scratch');
    },
  );
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /touch: \/newfile: Read-only file system/);
  assert.match(r.stdout, /hosts=0/);
  assert.match(r.stdout, /keys=0/);
  assert.match(r.stdout, /Read-only file system/);
  assert.match(r.stdout, /\nfw=0 usr=0\ntouch: \/scratch\/x: Read-only file system\ndone/);
});

test('rlimits, sysctls, umask, cwd, env, user and groups are as configured', () => {
  const r = runIn('ulimit -n; ulimit -Hn; cat /proc/sys/net/ipv4/ip_forward; umask; pwd; echo $FOO; id', (s) => {
    s.process!.rlimits = [{ type: 'RLIMIT_NOFILE', soft: 512, hard: 777 }];
    s.linux!.sysctl = { 'net.ipv4.ip_forward': '1' };
    s.process!.user = { uid: 1000, gid: 1000, umask: 0o027, additionalGids: [5, 65534] };
    s.process!.cwd = '/tmp';
    s.process!.env = ['PATH=/bin', 'FOO=bar'];
  });
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.stdout.trim().split('\n'), ['512', '777', '1', '0027', '/tmp', 'bar',
    'uid=1000(user) gid=1000(user) groups=5(tty),65534(nogroup)']);
});

test('a RLIMIT_NOFILE above what the runtime may raise fails clearly', () => {
  const r = runIn('true', (s) => {
    s.process!.rlimits = [{ type: 'RLIMIT_NOFILE', soft: 1048576, hard: 1048576 }];
  });
  assert.equal(r.code, 1);
  assert.match(r.stderr, /process\.rlimits\[0\]: RLIMIT_NOFILE hard limit 1048576 .*CAP_SYS_RESOURCE/);
});

test('capabilities and no_new_privs follow the spec', () => {
  const r = runIn('grep -E "^(CapBnd|CapEff|CapPrm|CapInh|CapAmb|NoNewPrivs)" /proc/self/status', (s) => {
    s.process!.capabilities = {
      bounding: ['CAP_KILL', 'CAP_NET_BIND_SERVICE', 'CAP_CHOWN'], effective: ['CAP_KILL', 'CAP_CHOWN'],
      permitted: ['CAP_KILL', 'CAP_CHOWN'], inheritable: ['CAP_KILL'], ambient: ['CAP_KILL'],
    };
  });
  assert.equal(r.code, 0, r.stderr);
  // CAP_CHOWN=0, CAP_KILL=5, CAP_NET_BIND_SERVICE=10
  assert.match(r.stdout, /CapInh:\t0000000000000020/);
  assert.match(r.stdout, /CapPrm:\t0000000000000021/);
  assert.match(r.stdout, /CapEff:\t0000000000000021/);
  assert.match(r.stdout, /CapBnd:\t0000000000000421/);
  assert.match(r.stdout, /CapAmb:\t0000000000000020/);
  assert.match(r.stdout, /NoNewPrivs:\t1/);
});

test('user namespace: the maps are as configured and root inside is not root outside', () => {
  const r = runIn('cat /proc/self/uid_map /proc/self/gid_map; id -u; ls -ln /bin/busybox', (s) => {
    s.linux!.namespaces!.push({ type: 'user' });
    s.linux!.uidMappings = [{ containerID: 0, hostID: 100000, size: 65536 }];
    s.linux!.gidMappings = [{ containerID: 0, hostID: 100000, size: 65536 }];
  });
  assert.equal(r.code, 0, r.stderr);
  const maps = r.stdout.trim().split('\n').map((l) => l.trim().split(/\s+/).join(' '));
  assert.equal(maps[0], '0 100000 65536');
  assert.equal(maps[1], '0 100000 65536');
  assert.equal(maps[2], '0');
  assert.match(maps[3], / 65534 65534 /, 'host root files show as the overflow id');
});

test('time namespace offsets move the boot clock', () => {
  const r = runIn('cut -d. -f1 /proc/uptime', (s) => {
    s.linux!.namespaces!.push({ type: 'time' });
    s.linux!.timeOffsets = { boottime: { secs: 86400 * 10 }, monotonic: { secs: 86400 * 10 } };
  });
  assert.equal(r.code, 0, r.stderr);
  const hostUp = Number(readFileSync('/proc/uptime', 'utf8').split('.')[0]);
  assert.ok(Number(r.stdout.trim()) >= hostUp + 86400 * 10 - 5);
});

test('bind mounts (ro, file), tmpfs with options, a cgroup namespace, joining a namespace by path', async () => {
  const src = posix.join(w.dir, 'shared');
  mkdirSync(src, { recursive: true });
  writeFileSync(posix.join(src, 'hello'), 'from the host\n');
  writeFileSync(posix.join(w.dir, 'one-file'), 'single\n');
  const r = runIn('cat /mnt/hello; touch /mnt/x 2>&1; cat /etc/one; grep " /scratch " /proc/self/mountinfo; cat /proc/self/cgroup | grep memory', (s) => {
    s.mounts!.push({ destination: '/mnt', type: 'bind', source: src, options: ['rbind', 'ro'] });
    s.mounts!.push({ destination: '/etc/one', type: 'bind', source: posix.join(w.dir, 'one-file'), options: ['bind'] });
    s.mounts!.push({ destination: '/scratch', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'size=1m', 'mode=700'] });
    s.linux!.namespaces!.push({ type: 'cgroup' });
  });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /from the host/);
  assert.match(r.stdout, /touch: \/mnt\/x: Read-only file system/);
  assert.match(r.stdout, /single/);
  assert.match(r.stdout, / \/scratch .*nosuid.* - tmpfs tmpfs .*size=1024k,mode=700/);
  assert.match(r.stdout, /memory:\/$/m, 'in a cgroup namespace the container sees its cgroup as /');

  const b = w.bundle(['sh', '-c', 'while true; do sleep 0.1; done']);
  assert.equal(w.detached(['run', '-d', '--bundle', b, 'netowner']).code, 0);
  const pid = w.state('netowner').pid;
  const j = runIn('readlink /proc/self/ns/net', (s) => {
    s.linux!.namespaces = s.linux!.namespaces!.map((n) => (n.type === 'network' ? { type: 'network', path: `/proc/${pid}/ns/net` } : n));
  });
  assert.equal(j.code, 0, j.stderr);
  assert.equal(j.stdout.trim(), readlinkSync(`/proc/${pid}/ns/net`));
  assert.equal(w.tsrunc(['delete', '--force', 'netowner']).code, 0);
});

test('every hook runs once, in order, with the state on stdin', async () => {
  const log = posix.join(w.dir, 'hooks.log');
  const hook = posix.join(w.dir, 'hook.sh');
  writeFileSync(hook, `#!/bin/sh\nread -r state\necho "$1 $(echo "$state" | grep -o '"status":"[a-z]*"') $(echo "$state" | grep -o '"id":"[a-z]*"')" >> ${log}\n`);
  chmodSync(hook, 0o755);
  const b = w.bundle(['sh', '-c', 'while true; do sleep 0.1; done'], (s, dir) => {
    const inRoot = posix.join(dir, 'rootfs', 'hook.sh');
    // startContainer runs inside the container: its log is in the container's rootfs
    writeFileSync(inRoot, `#!/bin/sh\nread -r state\necho "startContainer $(echo "$state" | grep -o '"id":"[a-z]*"')" >> /hooks.log\n`);
    chmodSync(inRoot, 0o755);
    const h = (name: string) => [{ path: hook, args: ['hook.sh', name] }];
    s.hooks = {
      prestart: h('prestart'), createRuntime: h('createRuntime'), createContainer: h('createContainer'),
      startContainer: [{ path: '/hook.sh' }], poststart: h('poststart'), poststop: h('poststop'),
    };
  }, true);
  assert.equal(w.detached(['create', '--bundle', b, 'hooks']).code, 0);
  assert.equal(w.tsrunc(['start', 'hooks']).code, 0);
  await until('startContainer ran', () => existsSync(posix.join(b, 'rootfs', 'hooks.log')));
  assert.equal(w.tsrunc(['kill', 'hooks', 'KILL']).code, 0);
  await until('stopped', () => w.state('hooks').status === 'stopped');
  assert.equal(w.tsrunc(['delete', 'hooks']).code, 0);
  assert.deepEqual(readFileSync(log, 'utf8').trim().split('\n'), [
    'prestart "status":"creating" "id":"hooks"',
    'createRuntime "status":"creating" "id":"hooks"',
    'createContainer "status":"creating" "id":"hooks"',
    'poststart "status":"running" "id":"hooks"',
    'poststop "status":"stopped" "id":"hooks"',
  ]);
  assert.equal(readFileSync(posix.join(b, 'rootfs', 'hooks.log'), 'utf8'), 'startContainer "id":"hooks"\n');
});

test('a failing createRuntime hook aborts create and leaves nothing behind', () => {
  const b = w.bundle(['true'], (s) => {
    s.hooks = { createRuntime: [{ path: '/bin/sh', args: ['sh', '-c', 'echo no way >&2; exit 4'] }] };
  });
  const r = w.detached(['create', '--bundle', b, 'hookfail']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^tsrunc: hooks\.createRuntime\[0\] \(\/bin\/sh\) failed: exit status 4: no way\n$/);
  assert.equal(existsSync(posix.join(w.root, 'hookfail')), false);
  assert.deepEqual(cgroupDirs('tsrunc/hookfail'), []);
});

test('--preserve-fds passes extra descriptors; others are closed', () => {
  const b = w.bundle(['sh', '-c', 'cat <&3; ls /proc/self/fd | sort -n | tr "\\n" " "']);
  const msg = posix.join(w.dir, 'fd3');
  writeFileSync(msg, 'via fd 3\n');
  const r = spawnSync('sh', ['-c', `exec 3<"$3" 5<"$3"; exec "$0" --root "$1" run --preserve-fds 1 --bundle "$2" pfd`,
    TSRUNC, w.root, b, msg], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  // 0-2 stdio, 3 preserved, 4 the directory ls itself opens; never the caller's fd 5
  assert.match(r.stdout, /^via fd 3\n0 1 2 3 4 $/);
});

test('spec devices are made with their numbers, mode and owner; /dev has the standard links', () => {
  const r = runIn('ls -ln /dev/mynull /dev/ptmx /dev/fd /dev/stdin; echo x > /dev/mynull && echo wrote', (s) => {
    s.linux!.devices = [{ type: 'c', path: '/dev/mynull', major: 1, minor: 3, fileMode: 0o622, uid: 1000, gid: 5 }];
  });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^crw--w--w-\s+1 1000\s+5\s+1,\s+3 .* \/dev\/mynull$/m);
  assert.match(r.stdout, /\/dev\/ptmx -> pts\/ptmx/);
  assert.match(r.stdout, /\/dev\/fd -> \/proc\/self\/fd/);
  assert.match(r.stdout, /\/dev\/stdin -> \/proc\/self\/fd\/0/);
  assert.match(r.stdout, /wrote/);
});

test('--no-pivot moves the rootfs to / and chroots; rootfsPropagation and mount propagation apply', () => {
  const b = w.bundle(['cat', '/proc/self/mountinfo'], (s) => {
    s.linux!.rootfsPropagation = 'rprivate';
    s.mounts!.push({ destination: '/scratch', type: 'tmpfs', source: 'tmpfs', options: ['rshared'] });
  });
  const r = w.tsrunc(['run', '--no-pivot', '--bundle', b, 'nopivot']);
  assert.equal(r.code, 0, r.stderr);
  const at = (mp: string) => r.stdout.split('\n').find((l) => l.split(' ')[4] === mp) ?? '';
  assert.ok(at('/'), r.stdout);
  assert.doesNotMatch(at('/').split(' - ')[0], /shared:|master:/, 'rprivate root has no peers');
  assert.match(at('/scratch'), /shared:\d+/);
});
