/** The plan compiler: spec + runtime facts in, the exact ordered ops out. */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compileInitPlan, compileExecPlan, checkDestinationInRoot, parseMountOptions, type CompileContext, type ExecContext } from '../../src/init/compile.js';
import type { InitPlan, PlanOp, OpName } from '../../src/init/plan.js';
import { defaultSpec } from '../../src/spec/default.js';
import type { Spec } from '../../src/spec/types.js';
import { SpecError } from '../../src/errors.js';
import {
  MS, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWIPC, CLONE_NEWUTS, CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWCGROUP,
  CLONE_NEWTIME, RLIMITS,
} from '../../src/linux/tables.js';

const tmp = mkdtempSync(join(tmpdir(), 'tsrunc-compile-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const bundle = join(tmp, 'bundle');
const rootfs = join(bundle, 'rootfs');
mkdirSync(rootfs, { recursive: true });
const hostDir = join(tmp, 'hostdir');
mkdirSync(hostDir);
const hostFile = join(tmp, 'hostfile');
writeFileSync(hostFile, 'x');

function ctx(over: Partial<CompileContext> = {}): CompileContext {
  return {
    rootfs,
    bundle,
    fifoPath: '/run/x/exec.fifo',
    foreground: false,
    noPivot: false,
    preserveFds: 0,
    cgroupMounts: [
      { name: 'memory', fstype: 'cgroup', data: 'memory', hostDir: '/sys/fs/cgroup/memory/tsrunc/x' },
      { name: 'unified', fstype: 'cgroup2', data: '', hostDir: '/sys/fs/cgroup/unified/tsrunc/x' },
    ],
    lastCap: 40,
    nofileHard: 20000,
    canRaiseRlimits: false,
    ...over,
  };
}

function spec(edit: (s: Spec) => void = () => {}): Spec {
  const s = defaultSpec();
  s.process!.terminal = false;
  edit(s);
  return s;
}

const names = (p: InitPlan): OpName[] => p.ops.map((o) => o.op);
const only = (p: InitPlan, op: OpName): PlanOp[] => p.ops.filter((o) => o.op === op);
const indexOf = (p: InitPlan, op: OpName): number => names(p).indexOf(op);
const rep = (op: OpName, n: number): OpName[] => Array<OpName>(n).fill(op);
/** The op right after the first `op`. */
const after1 = (p: InitPlan, op: OpName): OpName => names(p)[indexOf(p, op) + 1];

test('the default spec compiles to the exact op sequence', () => {
  const plan = compileInitPlan(spec(), ctx());
  assert.deepEqual(names(plan), [
    // the executor makes and opens exec.fifo before clone (and before any setns)
    'MKFIFO', 'OPEN_FIFO', 'CLONE', 'SETSID', 'LO_UP', 'HOSTNAME', 'ROOTFS',
    // /proc /dev /dev/pts /dev/shm /dev/mqueue /sys
    ...rep('MOUNT', 6),
    // /sys/fs/cgroup without a cgroup namespace: tmpfs, then a bind + remount per hierarchy, then ro
    'MOUNT', 'MOUNT', 'REMOUNT', 'MOUNT', 'REMOUNT', 'REMOUNT',
    ...rep('MKNOD', 6),
    ...rep('SYMLINK', 5),
    'PIVOT',
    ...rep('MASK', 10),
    ...rep('READONLY', 5),
    'ROOT_RO', 'RLIMIT', 'UMASK', 'BOUNDING', 'USER', 'CAPS', 'NO_NEW_PRIVS', 'CHDIR', 'LOOKUP',
    'READY_SYNC', 'FIFO_WAIT', 'CLOEXEC_FROM', 'EXEC',
  ]);
});

test('the default spec: clone flags, fifo, rootfs, hostname', () => {
  const plan = compileInitPlan(spec(), ctx());
  assert.deepEqual(only(plan, 'MKFIFO')[0].fields, ['/run/x/exec.fifo', 0o622]);
  assert.deepEqual(only(plan, 'CLONE')[0].fields, [CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNS, 0]);
  assert.deepEqual(only(plan, 'OPEN_FIFO')[0].fields, ['/run/x/exec.fifo']);
  assert.deepEqual(only(plan, 'HOSTNAME')[0].fields, ['tsrunc']);
  assert.deepEqual(only(plan, 'ROOTFS')[0].fields, [rootfs, MS.SLAVE | MS.REC]);
  assert.deepEqual(only(plan, 'PIVOT')[0].fields, [0]);
  assert.deepEqual(only(plan, 'CLOEXEC_FROM')[0].fields, [3]);
  assert.deepEqual(only(plan, 'RLIMIT')[0].fields, [RLIMITS.RLIMIT_NOFILE, 1024, 1024]);
  assert.deepEqual(only(plan, 'UMASK')[0].fields, [0o022]);
  assert.deepEqual(only(plan, 'LOOKUP')[0].fields, ['sh', '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin']);
  const s = spec();
  assert.deepEqual(only(plan, 'EXEC')[0].fields, [1, 'sh', ...s.process!.env!]);
});

test('foreground, --no-pivot and --preserve-fds reach CLONE, PIVOT and CLOEXEC_FROM', () => {
  const plan = compileInitPlan(spec(), ctx({ foreground: true, noPivot: true, preserveFds: 2 }));
  assert.equal(only(plan, 'CLONE')[0].fields[1], 1);
  assert.deepEqual(only(plan, 'PIVOT')[0].fields, [1]);
  assert.deepEqual(only(plan, 'CLOEXEC_FROM')[0].fields, [5]);
});

test('without a fifo path there is no MKFIFO, OPEN_FIFO or FIFO_WAIT', () => {
  const plan = compileInitPlan(spec(), ctx({ fifoPath: undefined }));
  for (const op of ['MKFIFO', 'OPEN_FIFO', 'FIFO_WAIT'] as const) assert.equal(indexOf(plan, op), -1, op);
  assert.equal(names(plan)[0], 'CLONE');
});

test('mounts come in spec order with their flags and data', () => {
  const plan = compileInitPlan(spec(), ctx());
  const mounts = only(plan, 'MOUNT');
  // fields: source, dest, fstype, flags, data, create, extra
  assert.deepEqual(mounts.slice(0, 6).map((m) => m.fields[1]), ['/proc', '/dev', '/dev/pts', '/dev/shm', '/dev/mqueue', '/sys']);
  assert.deepEqual(mounts[0].fields, ['proc', '/proc', 'proc', 0, '', 0, 0]);
  assert.deepEqual(mounts[1].fields, ['tmpfs', '/dev', 'tmpfs', MS.NOSUID | MS.STRICTATIME, 'mode=755,size=65536k', 0, 0]);
  assert.deepEqual(mounts[2].fields, ['devpts', '/dev/pts', 'devpts', MS.NOSUID | MS.NOEXEC,
    'newinstance,ptmxmode=0666,mode=0620,gid=5', 0, 0]);
  assert.deepEqual(mounts[3].fields, ['shm', '/dev/shm', 'tmpfs', MS.NOSUID | MS.NOEXEC | MS.NODEV, 'mode=1777,size=65536k', 0, 0]);
  assert.deepEqual(mounts[4].fields, ['mqueue', '/dev/mqueue', 'mqueue', MS.NOSUID | MS.NOEXEC | MS.NODEV, '', 0, 0]);
  // own network namespace: a real sysfs, no fallback bit
  assert.deepEqual(mounts[5].fields, ['sysfs', '/sys', 'sysfs', 0xf, '', 0, 0]);
  assert.equal(MS.RDONLY | MS.NOSUID | MS.NODEV | MS.NOEXEC, 0xf);
});

test('sysfs without an own network namespace carries the fallback bit', () => {
  const plan = compileInitPlan(spec((s) => {
    s.linux!.namespaces = s.linux!.namespaces!.filter((n) => n.type !== 'network');
  }), ctx());
  const sys = only(plan, 'MOUNT').find((m) => m.fields[1] === '/sys')!;
  assert.equal(sys.fields[6], 1);
  assert.equal(indexOf(plan, 'LO_UP'), -1);
  assert.equal((only(plan, 'CLONE')[0].fields[0] as number) & CLONE_NEWNET, 0);
});

test('the v1/hybrid cgroup mount: tmpfs, bind + remount per hierarchy, then read-only', () => {
  const plan = compileInitPlan(spec(), ctx());
  const start = names(plan).indexOf('MOUNT') + 6;
  const cg = plan.ops.slice(start, start + 6);
  const locked = MS.NOSUID | MS.NODEV | MS.NOEXEC;
  const flags = locked | MS.RELATIME;
  assert.deepEqual(cg.map((o) => [o.op, ...o.fields]), [
    ['MOUNT', 'tmpfs', '/sys/fs/cgroup', 'tmpfs', flags, 'mode=755', 0, 0],
    ['MOUNT', '/sys/fs/cgroup/memory/tsrunc/x', '/sys/fs/cgroup/memory', '', MS.BIND, '', 0, 0],
    ['REMOUNT', '/sys/fs/cgroup/memory', flags | MS.RDONLY],
    ['MOUNT', '/sys/fs/cgroup/unified/tsrunc/x', '/sys/fs/cgroup/unified', '', MS.BIND, '', 0, 0],
    ['REMOUNT', '/sys/fs/cgroup/unified', flags | MS.RDONLY],
    ['REMOUNT', '/sys/fs/cgroup', flags | MS.RDONLY],
  ]);
});

test('a cgroup namespace mounts the hierarchies fresh and UNSHAREs after SETSID', () => {
  const plan = compileInitPlan(spec((s) => s.linux!.namespaces!.push({ type: 'cgroup' })), ctx());
  assert.deepEqual(only(plan, 'UNSHARE')[0].fields, [CLONE_NEWCGROUP]);
  assert.equal(after1(plan, 'SETSID'), 'UNSHARE');
  // cgroup is not a clone flag: the init unshares it once it sits in its cgroups
  assert.equal((only(plan, 'CLONE')[0].fields[0] as number) & CLONE_NEWCGROUP, 0);
  const mem = only(plan, 'MOUNT').find((m) => m.fields[1] === '/sys/fs/cgroup/memory')!;
  assert.deepEqual(mem.fields.slice(0, 3), ['cgroup', '/sys/fs/cgroup/memory', 'cgroup']);
  assert.equal(mem.fields[4], 'memory');
  const uni = only(plan, 'MOUNT').find((m) => m.fields[1] === '/sys/fs/cgroup/unified')!;
  assert.deepEqual([uni.fields[2], uni.fields[4]], ['cgroup2', '']);
});

test('default devices are MKNODed and the /dev symlinks made', () => {
  const plan = compileInitPlan(spec(), ctx());
  const S_IFCHR = 0o020000;
  assert.deepEqual(only(plan, 'MKNOD').map((o) => o.fields), [
    ['/dev/null', S_IFCHR | 0o666, 1, 3, 0, 0], ['/dev/zero', S_IFCHR | 0o666, 1, 5, 0, 0],
    ['/dev/full', S_IFCHR | 0o666, 1, 7, 0, 0], ['/dev/random', S_IFCHR | 0o666, 1, 8, 0, 0],
    ['/dev/urandom', S_IFCHR | 0o666, 1, 9, 0, 0], ['/dev/tty', S_IFCHR | 0o666, 5, 0, 0, 0],
  ]);
  assert.deepEqual(only(plan, 'SYMLINK').map((o) => o.fields), [
    ['/proc/self/fd', '/dev/fd'], ['/proc/self/fd/0', '/dev/stdin'], ['/proc/self/fd/1', '/dev/stdout'],
    ['/proc/self/fd/2', '/dev/stderr'], ['pts/ptmx', '/dev/ptmx'],
  ]);
});

test('masked and read-only paths come in spec order', () => {
  const s = spec();
  const plan = compileInitPlan(s, ctx());
  assert.deepEqual(only(plan, 'MASK').map((o) => o.fields[0]), s.linux!.maskedPaths);
  assert.deepEqual(only(plan, 'READONLY').map((o) => o.fields[0]), s.linux!.readonlyPaths);
  assert.equal(only(plan, 'MASK')[0].fields[0], '/proc/acpi');
  assert.equal(only(plan, 'MASK').at(-1)!.fields[0], '/proc/scsi');
});

test('capabilities: bounding, then USER with keep_caps, then CAPS with the sets as bit masks', () => {
  const plan = compileInitPlan(spec(), ctx());
  // CAP_KILL 5, CAP_NET_BIND_SERVICE 10, CAP_AUDIT_WRITE 29
  const m = (1n << 5n) | (1n << 10n) | (1n << 29n);
  assert.deepEqual(only(plan, 'BOUNDING')[0].fields, [m, 40]);
  assert.deepEqual(only(plan, 'USER')[0].fields, [0, 0, 1]);
  // ambient only keeps what is also permitted and inheritable: inheritable is empty
  assert.deepEqual(only(plan, 'CAPS')[0].fields, [m, m, 0n, 0n, 40]);
});

test('parseMountOptions splits flags, propagation and data', () => {
  assert.deepEqual(parseMountOptions(['rbind', 'ro', 'nosuid', 'rprivate', 'mode=755']), {
    flags: MS.RDONLY | MS.NOSUID, propagation: [MS.PRIVATE | MS.REC], data: ['mode=755'], bind: true, recursive: true,
  });
  assert.deepEqual(parseMountOptions(['bind']), { flags: 0, propagation: [], data: [], bind: true, recursive: false });
  assert.equal(parseMountOptions(['ro', 'rw']).flags, 0, 'a later option clears an earlier one');
  assert.deepEqual(parseMountOptions(), { flags: 0, propagation: [], data: [], bind: false, recursive: false });
});

test('a read-only bind mount is MOUNT with MS_BIND then REMOUNT with MS_RDONLY', () => {
  const plan = compileInitPlan(spec((s) => s.mounts!.push(
    { destination: '/data', type: 'bind', source: hostDir, options: ['bind', 'ro'] },
    { destination: '/rdata', type: 'none', source: hostDir, options: ['rbind', 'ro', 'nosuid'] },
  )), ctx());
  const i = plan.ops.findIndex((o) => o.op === 'MOUNT' && o.fields[1] === '/data');
  assert.deepEqual(plan.ops.slice(i, i + 4).map((o) => [o.op, ...o.fields]), [
    ['MOUNT', hostDir, '/data', '', MS.BIND, '', 0, 0],
    ['REMOUNT', '/data', MS.RDONLY],
    ['MOUNT', hostDir, '/rdata', '', MS.BIND | MS.REC, '', 0, 0],
    ['REMOUNT', '/rdata', MS.RDONLY | MS.NOSUID],
  ]);
});

test('a bind mount without flags has no REMOUNT; propagation options yield PROPAGATE ops', () => {
  const plan = compileInitPlan(spec((s) => s.mounts!.push(
    { destination: '/data', source: hostDir, options: ['rbind', 'rslave', 'private'] },
  )), ctx());
  const i = plan.ops.findIndex((o) => o.op === 'MOUNT' && o.fields[1] === '/data');
  assert.deepEqual(plan.ops.slice(i, i + 3).map((o) => [o.op, ...o.fields]), [
    ['MOUNT', hostDir, '/data', '', MS.BIND | MS.REC, '', 0, 0],
    ['PROPAGATE', '/data', MS.SLAVE | MS.REC],
    ['PROPAGATE', '/data', MS.PRIVATE],
  ]);
});

test('a file bind source yields create kind 1; a relative source is taken from the bundle', () => {
  writeFileSync(join(bundle, 'hosts'), '127.0.0.1 localhost\n');
  const plan = compileInitPlan(spec((s) => s.mounts!.push(
    { destination: '/etc/resolv.conf', type: 'bind', source: hostFile, options: ['bind'] },
    { destination: '/etc/hosts', type: 'bind', source: 'hosts', options: ['bind'] },
  )), ctx());
  const resolv = only(plan, 'MOUNT').find((m) => m.fields[1] === '/etc/resolv.conf')!;
  assert.equal(resolv.fields[5], 1);
  const hosts = only(plan, 'MOUNT').find((m) => m.fields[1] === '/etc/hosts')!;
  assert.equal(hosts.fields[0], join(bundle, 'hosts'));
  assert.equal(hosts.fields[5], 1);
});

test('a bind mount of a missing source is a SpecError naming mounts[N].source', () => {
  const s = spec((sp) => sp.mounts!.push({ destination: '/data', type: 'bind', source: join(tmp, 'nope'), options: ['bind'] }));
  assert.throws(() => compileInitPlan(s, ctx()), (e: unknown) => {
    assert.ok(e instanceof SpecError);
    assert.match(e.message, /^mounts\[7\]\.source: /);
    return true;
  });
});

test('rootfsPropagation rprivate is applied to the whole tree before the mounts, and not again', () => {
  const plan = compileInitPlan(spec((s) => { s.linux!.rootfsPropagation = 'rprivate'; }), ctx());
  assert.deepEqual(only(plan, 'ROOTFS')[0].fields, [rootfs, MS.PRIVATE | MS.REC]);
  assert.equal(only(plan, 'ROOT_PROPAGATION').length, 0);
});

test('a shared rootfsPropagation starts as rslave (pivot_root needs it) and is applied after PIVOT', () => {
  const plan = compileInitPlan(spec((s) => { s.linux!.rootfsPropagation = 'rshared'; }), ctx());
  assert.deepEqual(only(plan, 'ROOTFS')[0].fields, [rootfs, MS.SLAVE | MS.REC]);
  assert.equal(after1(plan, 'PIVOT'), 'ROOT_PROPAGATION');
  assert.deepEqual(only(plan, 'ROOT_PROPAGATION')[0].fields, [MS.SHARED | MS.REC]);
});

test('a user namespace: BECOME_ROOT right after CLONE, BIND_DEV instead of MKNOD', () => {
  const plan = compileInitPlan(spec((s) => {
    s.linux!.namespaces!.push({ type: 'user' });
    s.linux!.uidMappings = [{ containerID: 0, hostID: 1000, size: 1 }];
    s.linux!.gidMappings = [{ containerID: 0, hostID: 1000, size: 1 }];
  }), ctx());
  assert.equal(after1(plan, 'CLONE'), 'BECOME_ROOT');
  assert.equal(indexOf(plan, 'MKNOD'), -1);
  assert.deepEqual(only(plan, 'BIND_DEV').map((o) => o.fields), [
    ['/dev/null', '/dev/null'], ['/dev/zero', '/dev/zero'], ['/dev/full', '/dev/full'],
    ['/dev/random', '/dev/random'], ['/dev/urandom', '/dev/urandom'], ['/dev/tty', '/dev/tty'],
  ]);
  assert.ok((only(plan, 'CLONE')[0].fields[0] as number) & CLONE_NEWUSER);
});

test('a user namespace without id mappings is a SpecError', () => {
  const s = spec((sp) => sp.linux!.namespaces!.push({ type: 'user' }));
  assert.throws(() => compileInitPlan(s, ctx()), /^SpecError: linux\.uidMappings: /);
});

test('namespaces with a path are joined with SETNS before CLONE, user first, and not cloned', () => {
  const plan = compileInitPlan(spec((s) => {
    s.linux!.namespaces = [
      { type: 'pid' }, { type: 'network', path: '/proc/1/ns/net' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' },
      { type: 'user', path: '/proc/1/ns/user' },
    ];
  }), ctx());
  assert.deepEqual(names(plan).slice(0, 5), ['MKFIFO', 'OPEN_FIFO', 'SETNS', 'SETNS', 'CLONE']);
  assert.deepEqual(only(plan, 'SETNS').map((o) => o.fields), [['/proc/1/ns/user', CLONE_NEWUSER], ['/proc/1/ns/net', CLONE_NEWNET]]);
  assert.match(only(plan, 'SETNS')[0].what, /^linux\.namespaces\[5\]/);
  assert.deepEqual(only(plan, 'CLONE')[0].fields, [CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNS, 0]);
  // a joined user namespace needs no BECOME_ROOT, and a joined network namespace no LO_UP
  assert.equal(indexOf(plan, 'BECOME_ROOT'), -1);
  assert.equal(indexOf(plan, 'LO_UP'), -1);
});

test('a time namespace yields TIMENS with the offsets before CLONE, and no clone flag', () => {
  const plan = compileInitPlan(spec((s) => {
    s.linux!.namespaces!.push({ type: 'time' });
    s.linux!.timeOffsets = { monotonic: { secs: 3600, nanosecs: 5 }, boottime: { secs: -7 } };
  }), ctx());
  assert.deepEqual(names(plan).slice(0, 4), ['MKFIFO', 'OPEN_FIFO', 'TIMENS', 'CLONE']);
  assert.deepEqual(only(plan, 'TIMENS')[0].fields, [3600, 5, -7, 0]);
  assert.equal((only(plan, 'CLONE')[0].fields[0] as number) & CLONE_NEWTIME, 0);
});

test('RLIMIT_NOFILE above the runtime\'s own hard limit is refused without CAP_SYS_RESOURCE', () => {
  const s = spec((sp) => { sp.process!.rlimits = [{ type: 'RLIMIT_NOFILE', soft: 1024, hard: 1048576 }]; });
  assert.throws(() => compileInitPlan(s, ctx()), (e: unknown) => {
    assert.ok(e instanceof SpecError);
    assert.ok(e.message.startsWith('process.rlimits[0]'), e.message);
    assert.ok(!e.message.includes('\n'));
    return true;
  });
  // allowed when the runtime may raise its limits
  const plan = compileInitPlan(s, ctx({ canRaiseRlimits: true }));
  assert.deepEqual(only(plan, 'RLIMIT')[0].fields, [RLIMITS.RLIMIT_NOFILE, 1024, 1048576]);
});

test('a capability above the kernel\'s last one is a SpecError naming the entry', () => {
  const s = spec((sp) => { sp.process!.capabilities!.effective = ['CAP_KILL', 'CAP_CHECKPOINT_RESTORE']; });
  assert.throws(() => compileInitPlan(s, ctx({ lastCap: 39 })), /^SpecError: process\.capabilities\.effective\[1\]: /);
});

test('startContainer hooks yield HOOK ops after FIFO_WAIT', () => {
  const plan = compileInitPlan(spec((s) => {
    s.hooks = { startContainer: [{ path: '/bin/hook', args: ['hook', 'a'], env: ['X=1'], timeout: 5 }, { path: '/bin/h2' }] };
  }), ctx());
  assert.deepEqual(names(plan).slice(-5), ['FIFO_WAIT', 'HOOK', 'HOOK', 'CLOEXEC_FROM', 'EXEC']);
  assert.deepEqual(only(plan, 'HOOK').map((o) => o.fields), [[5, '/bin/hook', 2, 'hook', 'a', 'X=1'], [0, '/bin/h2', 1, '/bin/h2']]);
  assert.equal(indexOf(plan, 'HOOKS_SYNC'), -1);
});

for (const kind of ['prestart', 'createRuntime', 'createContainer'] as const) {
  test(`${kind} hooks yield HOOKS_SYNC after the /dev setup and before PIVOT`, () => {
    const plan = compileInitPlan(spec((s) => { s.hooks = { [kind]: [{ path: '/bin/hook' }] }; }), ctx());
    assert.equal(only(plan, 'HOOKS_SYNC').length, 1);
    assert.equal(after1(plan, 'HOOKS_SYNC'), 'PIVOT');
    assert.ok(indexOf(plan, 'HOOKS_SYNC') > names(plan).lastIndexOf('SYMLINK'));
  });
}

test('checkDestinationInRoot refuses a relative symlink that climbs out of the rootfs', () => {
  const r = mkdtempSync(join(tmp, 'root-'));
  symlinkSync('../../../../tmp', join(r, 'evil'));
  assert.throws(() => checkDestinationInRoot(r, '/evil/x', 'mounts[0].destination'), (e: unknown) => {
    assert.ok(e instanceof SpecError);
    assert.match(e.message, /^mounts\[0\]\.destination: \/evil\/x goes through symlink \/evil -> \.\.\/\.\.\/\.\.\/\.\.\/tmp/);
    return true;
  });
  // the same through a plan: the mount is named in the error
  const s = spec((sp) => sp.mounts!.push({ destination: '/evil/x', type: 'tmpfs', source: 'tmpfs' }));
  assert.throws(() => compileInitPlan(s, ctx({ rootfs: r })), /^SpecError: mounts\[7\]\.destination: /);
});

test('checkDestinationInRoot follows an absolute symlink from the rootfs', () => {
  const r = mkdtempSync(join(tmp, 'root-'));
  symlinkSync('/etc', join(r, 'abs'));
  checkDestinationInRoot(r, '/abs/x', 'd');
  mkdirSync(join(r, 'etc'));
  symlinkSync('../../../..', join(r, 'etc', 'up'));
  // /abs -> /etc inside the rootfs, and from there the relative link climbs out
  assert.throws(() => checkDestinationInRoot(r, '/abs/up/x', 'd'), /^SpecError: d: /);
});

test('checkDestinationInRoot accepts a relative symlink that stays inside', () => {
  const r = mkdtempSync(join(tmp, 'root-'));
  mkdirSync(join(r, 'a', 'b'), { recursive: true });
  mkdirSync(join(r, 'c'));
  symlinkSync('../c', join(r, 'a', 'link'));
  symlinkSync('b/../../c', join(r, 'a', 'link2'));
  checkDestinationInRoot(r, '/a/link/x', 'd');
  checkDestinationInRoot(r, '/a/link2/x', 'd');
  checkDestinationInRoot(r, '/a/b/../x', 'd');
  checkDestinationInRoot(r, '/not/there/yet', 'd');
});

test('checkDestinationInRoot refuses a destination climbing out with ".." and a symlink loop', () => {
  const r = mkdtempSync(join(tmp, 'root-'));
  assert.throws(() => checkDestinationInRoot(r, '/../x', 'd'), /^SpecError: d: \/\.\.\/x resolves outside the rootfs$/);
  symlinkSync('loop', join(r, 'loop'));
  assert.throws(() => checkDestinationInRoot(r, '/loop', 'd'), /too many levels of symbolic links/);
});

test('a /dev given as type bind gets no device nodes or symlinks made on it', () => {
  const p = compileInitPlan(spec((s) => {
    s.mounts = s.mounts!.map((m) => (m.destination === '/dev' ? { destination: '/dev', type: 'bind', source: hostDir } : m));
  }), ctx());
  assert.equal(only(p, 'MKNOD').length, 0);
  assert.equal(only(p, 'SYMLINK').length, 0);
});

test('a session keyring is joined unless --no-new-keyring', () => {
  const with_ = compileInitPlan(spec(), ctx({ sessionKeyring: '_ses.abc' }));
  assert.deepEqual(only(with_, 'KEYRING')[0].fields, ['_ses.abc', 1]);
  assert.equal(after1(with_, 'SETSID'), 'KEYRING');
  assert.equal(only(compileInitPlan(spec(), ctx()), 'KEYRING').length, 0);
});

const FILTER = Buffer.alloc(16); // two instructions; the compiler does not look inside
const seccompCtx = (notify: boolean) => ({ filter: FILTER, flags: notify ? 8 : 0, notify, listenerPath: notify ? '/run/agent.sock' : undefined });

test('a terminal: CONSOLE before clone and before any SETNS, PTY (with consoleSize) after the mounts', () => {
  const plan = compileInitPlan(spec((s) => {
    s.process!.terminal = true;
    s.process!.consoleSize = { height: 30, width: 90 };
    s.linux!.namespaces!.push({ type: 'user', path: '/proc/1/ns/user' } as never);
  }), ctx({ consoleSocket: '/run/c.sock' }));
  assert.deepEqual(only(plan, 'CONSOLE')[0].fields, ['/run/c.sock']);
  assert.ok(indexOf(plan, 'CONSOLE') < indexOf(plan, 'SETNS'));
  assert.deepEqual(only(plan, 'PTY')[0].fields, [30, 90]);
  assert.ok(indexOf(plan, 'PTY') > indexOf(plan, 'PIVOT') && indexOf(plan, 'PTY') < indexOf(plan, 'EXEC'));
  // the foreground proxy: an empty path asks the executor for a socketpair
  const fg = compileInitPlan(spec((s) => { s.process!.terminal = true; }), ctx({ foreground: true }));
  assert.deepEqual(only(fg, 'CONSOLE')[0].fields, ['']);
  assert.deepEqual(only(fg, 'PTY')[0].fields, [0, 0]);
});

test('seccomp: loaded last (after CLOEXEC_FROM) with no_new_privs, before the identity change without it', () => {
  const nnp = compileInitPlan(spec(), ctx({ seccomp: seccompCtx(false) }));
  assert.deepEqual(names(nnp).slice(-3), ['CLOEXEC_FROM', 'SECCOMP', 'EXEC']);
  assert.deepEqual(only(nnp, 'SECCOMP')[0].fields, [FILTER, 0]);
  const priv = compileInitPlan(spec((s) => { s.process!.noNewPrivileges = false; }), ctx({ seccomp: seccompCtx(false) }));
  assert.ok(indexOf(priv, 'SECCOMP') < indexOf(priv, 'USER'));
  assert.ok(indexOf(priv, 'SECCOMP') > indexOf(priv, 'PIVOT'));
});

test('seccomp notify: SECCOMP_CONNECT before clone, SECCOMP_LISTENER right after the filter is loaded', () => {
  const plan = compileInitPlan(spec(), ctx({ seccomp: seccompCtx(true) }));
  assert.deepEqual(only(plan, 'SECCOMP_CONNECT')[0].fields, ['/run/agent.sock']);
  assert.ok(indexOf(plan, 'SECCOMP_CONNECT') < indexOf(plan, 'CLONE'));
  assert.deepEqual(names(plan).slice(-3), ['SECCOMP', 'SECCOMP_LISTENER', 'EXEC']);
  // loaded early (no no_new_privs), the agent still gets the fd right after the filter
  const priv = compileInitPlan(spec((s) => { s.process!.noNewPrivileges = false; }), ctx({ seccomp: seccompCtx(true) }));
  assert.equal(after1(priv, 'SECCOMP'), 'SECCOMP_LISTENER');
  assert.ok(indexOf(priv, 'SECCOMP_LISTENER') < indexOf(priv, 'USER'));
});

test('an LSM label is set before exec', () => {
  const plan = compileInitPlan(spec(), ctx({ lsm: { attr: '/proc/self/attr/apparmor/exec', value: 'exec myprofile' } }));
  assert.deepEqual(only(plan, 'LSM')[0].fields, ['/proc/self/attr/apparmor/exec', 'exec myprofile']);
  assert.match(only(plan, 'LSM')[0].what, /process\.apparmorProfile/);
});

function execCtx(over: Partial<ExecContext> = {}): ExecContext {
  return {
    namespaces: [
      { type: 'mount', path: '/proc/9/ns/mnt' }, { type: 'pid', path: '/proc/9/ns/pid' },
      { type: 'user', path: '/proc/9/ns/user' }, { type: 'network', path: '/proc/9/ns/net' },
    ],
    foreground: true, preserveFds: 2, lastCap: 40, nofileHard: 20000, canRaiseRlimits: false, ...over,
  };
}

test('the exec plan: join user first and mount last, fork with no new namespaces, then the process ops', () => {
  const plan = compileExecPlan(spec().process!, execCtx({ sessionKeyring: '_ses.c1' }));
  assert.deepEqual(names(plan), [
    'SETNS', 'SETNS', 'SETNS', 'SETNS', 'CLONE', 'SETSID', 'KEYRING',
    'RLIMIT', 'UMASK', 'BOUNDING', 'USER', 'CAPS', 'NO_NEW_PRIVS', 'CHDIR', 'LOOKUP', 'READY_SYNC', 'CLOEXEC_FROM', 'EXEC',
  ]);
  assert.deepEqual(only(plan, 'SETNS').map((o) => o.fields[0]), ['/proc/9/ns/user', '/proc/9/ns/pid', '/proc/9/ns/net', '/proc/9/ns/mnt']);
  assert.deepEqual(only(plan, 'SETNS').map((o) => o.fields[1]), [CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWNS]);
  assert.deepEqual(only(plan, 'CLONE')[0].fields, [0, 1]);
  assert.deepEqual(only(plan, 'CLOEXEC_FROM')[0].fields, [5]);
  assert.equal(names(plan).includes('FIFO_WAIT'), false);
});

test('the exec plan with a terminal and a notify filter connects both sockets before joining the mount namespace', () => {
  const proc = { ...spec().process!, terminal: true };
  const plan = compileExecPlan(proc, execCtx({ foreground: false, consoleSocket: '/run/c.sock', seccomp: seccompCtx(true) }));
  assert.deepEqual(names(plan).slice(0, 2), ['CONSOLE', 'SECCOMP_CONNECT']);
  assert.deepEqual(only(plan, 'CLONE')[0].fields, [0, 0]);
  assert.ok(indexOf(plan, 'PTY') > indexOf(plan, 'CLONE'));
  assert.deepEqual(names(plan).slice(-3), ['SECCOMP', 'SECCOMP_LISTENER', 'EXEC']);
});
