/** linux.resources: the exact cgroup writes on v1 and v2, validation messages, merging, and the update flags. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  resourceWrites, validateResources, mergeResources, DEFAULT_DEVICE_RULES,
  type Resources, type CgroupWrite,
} from '../../src/cgroups/resources.js';
import { parseBytes, resourcesFromFlags } from '../../src/cli/cgroups.js';
import { SpecError, TsruncError } from '../../src/errors.js';

const Ki = 1024, Mi = 1024 * Ki, Gi = 1024 * Mi;

/** Compact form of an expected write list: [controller, file, value]. */
const W = (...rows: [string, string, string][]): CgroupWrite[] => rows.map(([controller, file, value]) => ({ controller, file, value }));
const v1 = (r: Resources, opts?: { blkioWeightFile?: string }) => resourceWrites('v1', r, opts);
const v2 = (r: Resources) => resourceWrites('v2', r);

/** Asserts `fn` throws a one-line SpecError whose message starts with `prefix` (or equals it, if `exact`). */
function specError(fn: () => unknown, prefix: string, exact = false): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof SpecError, `a SpecError, got ${String(e)}`);
    assert.ok(e instanceof TsruncError);
    if (exact) assert.equal(e.message, prefix);
    else assert.ok(e.message.startsWith(prefix), `"${e.message}" starts with "${prefix}"`);
    assert.ok(!e.message.includes('\n'), `one line: ${JSON.stringify(e.message)}`);
    assert.ok(e.message.startsWith(`${e.jsonPath}: `), `message starts with its JSON path ${e.jsonPath}`);
    return true;
  });
}
const rejects = (r: unknown, prefix: string, exact = false) => specError(() => validateResources(r), prefix, exact);

// ---------------------------------------------------------------- v1

test('v1 memory: every field to its file, -1 stays "-1", disableOOMKiller sets oom_control', () => {
  assert.deepEqual(v1({ memory: { limit: 64 * Mi, swap: 128 * Mi, reservation: 32 * Mi, kernelTCP: 16 * Mi, swappiness: 60, disableOOMKiller: true } }), W(
    ['memory', 'memory.limit_in_bytes', '67108864'],
    ['memory', 'memory.memsw.limit_in_bytes', '134217728'],
    ['memory', 'memory.soft_limit_in_bytes', '33554432'],
    ['memory', 'memory.kmem.tcp.limit_in_bytes', '16777216'],
    ['memory', 'memory.swappiness', '60'],
    ['memory', 'memory.oom_control', '1'],
  ));
  assert.deepEqual(v1({ memory: { limit: -1, swap: -1, reservation: -1 } }), W(
    ['memory', 'memory.limit_in_bytes', '-1'],
    ['memory', 'memory.memsw.limit_in_bytes', '-1'],
    ['memory', 'memory.soft_limit_in_bytes', '-1'],
  ));
  // disableOOMKiller false, and fields with no v1 file (kernel, useHierarchy), write nothing
  assert.deepEqual(v1({ memory: { disableOOMKiller: false, kernel: 1 * Mi, useHierarchy: true } }), []);
});

test('v1 cpu: shares, period before quota, quota 0 becomes -1, burst, rt period then runtime, idle, cpuset', () => {
  assert.deepEqual(v1({ cpu: { quota: 20000, shares: 512, period: 100000, burst: 5000, realtimeRuntime: 950000, realtimePeriod: 1000000, idle: 1, cpus: '0-2,4', mems: '0' } }), W(
    ['cpu', 'cpu.shares', '512'],
    ['cpu', 'cpu.cfs_period_us', '100000'],
    ['cpu', 'cpu.cfs_quota_us', '20000'],
    ['cpu', 'cpu.cfs_burst_us', '5000'],
    ['cpu', 'cpu.rt_period_us', '1000000'],
    ['cpu', 'cpu.rt_runtime_us', '950000'],
    ['cpu', 'cpu.idle', '1'],
    ['cpuset', 'cpuset.cpus', '0-2,4'],
    ['cpuset', 'cpuset.mems', '0'],
  ));
  assert.deepEqual(v1({ cpu: { quota: 0 } }), W(['cpu', 'cpu.cfs_quota_us', '-1']));
  assert.deepEqual(v1({ cpu: { quota: -1 } }), W(['cpu', 'cpu.cfs_quota_us', '-1']));
  // an empty cpu list writes nothing
  assert.deepEqual(v1({ cpu: { cpus: '', mems: '' } }), []);
});

test('v1 pids: a positive limit as is, 0 and -1 as "max"', () => {
  assert.deepEqual(v1({ pids: { limit: 10 } }), W(['pids', 'pids.max', '10']));
  assert.deepEqual(v1({ pids: { limit: 0 } }), W(['pids', 'pids.max', 'max']));
  assert.deepEqual(v1({ pids: { limit: -1 } }), W(['pids', 'pids.max', 'max']));
});

test('v1 blkio: weight file (default and BFQ), leaf weight, weight devices, the four throttle lists in order', () => {
  const blockIO: Resources['blockIO'] = {
    weight: 500, leafWeight: 300,
    weightDevice: [{ major: 8, minor: 0, weight: 200, leafWeight: 100 }, { major: 8, minor: 16, weight: 700 }],
    throttleWriteIOPSDevice: [{ major: 8, minor: 0, rate: 400 }],
    throttleReadIOPSDevice: [{ major: 8, minor: 0, rate: 300 }],
    throttleWriteBpsDevice: [{ major: 8, minor: 0, rate: 2 * Mi }],
    throttleReadBpsDevice: [{ major: 8, minor: 0, rate: 1 * Mi }, { major: 8, minor: 16, rate: 3 * Mi }],
  };
  const tail = W(
    ['blkio', 'blkio.throttle.read_bps_device', '8:0 1048576'],
    ['blkio', 'blkio.throttle.read_bps_device', '8:16 3145728'],
    ['blkio', 'blkio.throttle.write_bps_device', '8:0 2097152'],
    ['blkio', 'blkio.throttle.read_iops_device', '8:0 300'],
    ['blkio', 'blkio.throttle.write_iops_device', '8:0 400'],
  );
  assert.deepEqual(v1({ blockIO }), [...W(
    ['blkio', 'blkio.weight', '500'],
    ['blkio', 'blkio.leaf_weight', '300'],
    ['blkio', 'blkio.weight_device', '8:0 200'],
    ['blkio', 'blkio.leaf_weight_device', '8:0 100'],
    ['blkio', 'blkio.weight_device', '8:16 700'],
  ), ...tail]);
  assert.deepEqual(v1({ blockIO }, { blkioWeightFile: 'blkio.bfq.weight' }), [...W(
    ['blkio', 'blkio.bfq.weight', '500'],
    ['blkio', 'blkio.leaf_weight', '300'],
    ['blkio', 'blkio.bfq.weight_device', '8:0 200'],
    ['blkio', 'blkio.leaf_weight_device', '8:0 100'],
    ['blkio', 'blkio.bfq.weight_device', '8:16 700'],
  ), ...tail]);
  assert.deepEqual(v1({ blockIO: { weight: 10 } }, {}), W(['blkio', 'blkio.weight', '10']));
});

test('v1 hugetlb, net_cls, net_prio and rdma', () => {
  assert.deepEqual(v1({
    hugepageLimits: [{ pageSize: '2MB', limit: 64 * Mi }, { pageSize: '1GB', limit: -1 }],
    network: { classID: 1048577, priorities: [{ name: 'eth0', priority: 5 }, { name: 'lo', priority: 1 }] },
    rdma: { mlx5_0: { hcaHandles: 2, hcaObjects: 3 }, mlx5_1: { hcaObjects: 7 }, mlx5_2: { hcaHandles: 4 } },
  }), W(
    ['hugetlb', 'hugetlb.2MB.limit_in_bytes', '67108864'],
    ['hugetlb', 'hugetlb.1GB.limit_in_bytes', '-1'],
    ['net_cls', 'net_cls.classid', '1048577'],
    ['net_prio', 'net_prio.ifpriomap', 'eth0 5'],
    ['net_prio', 'net_prio.ifpriomap', 'lo 1'],
    ['rdma', 'rdma.max', 'mlx5_0 hca_handle=2 hca_object=3'],
    ['rdma', 'rdma.max', 'mlx5_1 hca_object=7'],
    ['rdma', 'rdma.max', 'mlx5_2 hca_handle=4'],
  ));
  assert.deepEqual(v1({ network: { classID: 0 } }), W(['net_cls', 'net_cls.classid', '0']));
});

test('v1 devices: deny-all is "a" on devices.deny, typed rules on devices.allow, * for a missing or -1 number', () => {
  assert.deepEqual(v1({ devices: [
    { allow: false, access: 'rwm' },
    { allow: true, type: 'c', major: 1, minor: 3, access: 'rwm' },
    { allow: true, type: 'c', major: -1, minor: -1, access: 'm' },
    { allow: true, type: 'b', major: 8 },
    { allow: false, type: 'c', major: 10, minor: 200, access: 'rw' },
    { allow: true, type: 'a' },
  ] }), W(
    ['devices', 'devices.deny', 'a'],
    ['devices', 'devices.allow', 'c 1:3 rwm'],
    ['devices', 'devices.allow', 'c *:* m'],
    ['devices', 'devices.allow', 'b 8:* rwm'],
    ['devices', 'devices.deny', 'c 10:200 rw'],
    ['devices', 'devices.allow', 'a'],
  ));
  assert.deepEqual(v1({ devices: [] }), []);
});

test('v1 devices: the runc default rules after a deny-all', () => {
  assert.deepEqual(v1({ devices: [{ allow: false, access: 'rwm' }, ...DEFAULT_DEVICE_RULES] }), W(
    ['devices', 'devices.deny', 'a'],
    ['devices', 'devices.allow', 'c *:* m'],
    ['devices', 'devices.allow', 'b *:* m'],
    ['devices', 'devices.allow', 'c 1:3 rwm'],
    ['devices', 'devices.allow', 'c 1:8 rwm'],
    ['devices', 'devices.allow', 'c 1:7 rwm'],
    ['devices', 'devices.allow', 'c 5:0 rwm'],
    ['devices', 'devices.allow', 'c 1:5 rwm'],
    ['devices', 'devices.allow', 'c 1:9 rwm'],
    ['devices', 'devices.allow', 'c 136:* rwm'],
    ['devices', 'devices.allow', 'c 5:2 rwm'],
    ['devices', 'devices.allow', 'c 10:200 rwm'],
  ));
  assert.ok(DEFAULT_DEVICE_RULES.every((r) => r.allow));
  validateResources({ devices: DEFAULT_DEVICE_RULES });
});

test('v1 order across controllers: devices, memory, cpu, cpuset, pids, blkio, hugetlb, net_cls, net_prio, rdma', () => {
  const w = v1({
    rdma: { mlx5_0: { hcaHandles: 1 } }, network: { classID: 1, priorities: [{ name: 'eth0', priority: 2 }] },
    hugepageLimits: [{ pageSize: '2MB', limit: 2 * Mi }], blockIO: { weight: 100 }, pids: { limit: 5 },
    cpu: { shares: 2, cpus: '0' }, memory: { limit: 1 * Mi }, devices: [{ allow: false }],
  });
  assert.deepEqual(w.map((x) => x.controller), ['devices', 'memory', 'cpu', 'cpuset', 'pids', 'blkio', 'hugetlb', 'net_cls', 'net_prio', 'rdma']);
});

test('v1: unified throws one line (an empty unified map is fine); nothing at all is no writes', () => {
  specError(() => v1({ unified: { 'memory.high': '1000' } }), 'linux.resources.unified: needs cgroup v2');
  assert.deepEqual(v1({ unified: {} }), []);
  assert.deepEqual(v1({}), []);
});

// ---------------------------------------------------------------- v2

test('v2 memory: memory.max, memory.swap.max is swap minus limit, memory.low', () => {
  assert.deepEqual(v2({ memory: { limit: 64 * Mi, swap: 128 * Mi, reservation: 32 * Mi } }), W(
    ['', 'memory.max', '67108864'],
    ['', 'memory.swap.max', '67108864'],
    ['', 'memory.low', '33554432'],
  ));
  assert.deepEqual(v2({ memory: { limit: 64 * Mi, swap: 64 * Mi } }), W(
    ['', 'memory.max', '67108864'],
    ['', 'memory.swap.max', '0'],
  ));
  assert.deepEqual(v2({ memory: { limit: 64 * Mi, swap: -1, reservation: -1 } }), W(
    ['', 'memory.max', '67108864'],
    ['', 'memory.swap.max', 'max'],
    ['', 'memory.low', 'max'],
  ));
  assert.deepEqual(v2({ memory: { limit: -1 } }), W(['', 'memory.max', 'max']));
  // no v2 file for these: nothing written
  assert.deepEqual(v2({ memory: { kernel: Mi, kernelTCP: Mi, swappiness: 10, disableOOMKiller: false } }), []);
});

test('v2 memory: disableOOMKiller throws one line', () => {
  specError(() => v2({ memory: { disableOOMKiller: true } }), 'linux.resources.memory.disableOOMKiller: is not supported on cgroup v2', true);
});

test('v2 cpu: cpu.weight from shares with runc\'s formula', () => {
  const weight = (shares: number) => v2({ cpu: { shares } });
  assert.deepEqual(weight(2), W(['', 'cpu.weight', '1']));
  assert.deepEqual(weight(1024), W(['', 'cpu.weight', '39']));
  assert.deepEqual(weight(262144), W(['', 'cpu.weight', '10000']));
  // 1 + (shares - 2) * 9999 / 262142, rounded down
  assert.deepEqual(weight(512), W(['', 'cpu.weight', String(Math.floor(1 + (510 * 9999) / 262142))]));
  assert.equal(weight(512)[0].value, '20');
});

test('v2 cpu: cpu.max "quota period" (max for -1 or 0, period defaults to 100000), burst, idle, cpuset', () => {
  assert.deepEqual(v2({ cpu: { shares: 1024, quota: 20000, period: 100000, burst: 1000, idle: 0, cpus: '0-1', mems: '0' } }), W(
    ['', 'cpu.weight', '39'],
    ['', 'cpu.max', '20000 100000'],
    ['', 'cpu.max.burst', '1000'],
    ['', 'cpu.idle', '0'],
    ['', 'cpuset.cpus', '0-1'],
    ['', 'cpuset.mems', '0'],
  ));
  assert.deepEqual(v2({ cpu: { quota: -1, period: 100000 } }), W(['', 'cpu.max', 'max 100000']));
  assert.deepEqual(v2({ cpu: { quota: 0 } }), W(['', 'cpu.max', 'max 100000']));
  assert.deepEqual(v2({ cpu: { quota: 50000 } }), W(['', 'cpu.max', '50000 100000']));
  assert.deepEqual(v2({ cpu: { period: 250000 } }), W(['', 'cpu.max', 'max 250000']));
  // realtime has no v2 file
  assert.deepEqual(v2({ cpu: { realtimePeriod: 1000000, realtimeRuntime: 950000 } }), []);
});

test('v2 pids.max: positive as is, 0 and -1 as max', () => {
  assert.deepEqual(v2({ pids: { limit: 10 } }), W(['', 'pids.max', '10']));
  assert.deepEqual(v2({ pids: { limit: 0 } }), W(['', 'pids.max', 'max']));
  assert.deepEqual(v2({ pids: { limit: -1 } }), W(['', 'pids.max', 'max']));
});

test('v2 io: io.weight "default N" from blkio weight, per-device weights, io.max for the throttle lists', () => {
  const iow = (x: number) => Math.floor(1 + ((x - 10) * 9999) / 990); // runc's [10, 1000] -> [1, 10000]
  assert.equal(iow(500), 4950);
  const weight = (w: number) => v2({ blockIO: { weight: w } });
  assert.deepEqual(weight(10), W(['', 'io.weight', 'default 1']));
  assert.deepEqual(weight(1000), W(['', 'io.weight', 'default 10000']));
  assert.deepEqual(weight(500), W(['', 'io.weight', `default ${iow(500)}`]));
  assert.deepEqual(weight(500), W(['', 'io.weight', 'default 4950']));
  assert.deepEqual(v2({ blockIO: {
    weight: 100, leafWeight: 50,
    weightDevice: [{ major: 8, minor: 0, weight: 1000, leafWeight: 20 }, { major: 8, minor: 16, leafWeight: 20 }],
    throttleWriteIOPSDevice: [{ major: 8, minor: 0, rate: 400 }],
    throttleReadIOPSDevice: [{ major: 8, minor: 0, rate: 300 }],
    throttleWriteBpsDevice: [{ major: 8, minor: 0, rate: 2 * Mi }],
    throttleReadBpsDevice: [{ major: 8, minor: 0, rate: 1 * Mi }],
  } }), W(
    ['', 'io.weight', `default ${iow(100)}`],
    ['', 'io.weight', '8:0 10000'],
    ['', 'io.max', '8:0 rbps=1048576'],
    ['', 'io.max', '8:0 wbps=2097152'],
    ['', 'io.max', '8:0 riops=300'],
    ['', 'io.max', '8:0 wiops=400'],
  ));
  assert.equal(iow(100), 910);
});

test('v2 hugetlb.<size>.max, rdma.max, and unified keys passed through last', () => {
  assert.deepEqual(v2({
    unified: { 'memory.high': '50000000', 'io.bfq.weight': '"default 100"', 'cgroup.freeze': '0' },
    rdma: { mlx5_0: { hcaHandles: 2, hcaObjects: 3 } },
    hugepageLimits: [{ pageSize: '2MB', limit: 4 * Mi }, { pageSize: '1GB', limit: -1 }],
    pids: { limit: 3 },
  }), W(
    ['', 'pids.max', '3'],
    ['', 'hugetlb.2MB.max', '4194304'],
    ['', 'hugetlb.1GB.max', 'max'],
    ['', 'rdma.max', 'mlx5_0 hca_handle=2 hca_object=3'],
    ['', 'memory.high', '50000000'],
    ['', 'io.bfq.weight', '"default 100"'],
    ['', 'cgroup.freeze', '0'],
  ));
});

test('v2: network throws one line; an empty network is fine', () => {
  specError(() => v2({ network: { classID: 1 } }), 'linux.resources.network: net_cls and net_prio exist only on cgroup v1', true);
  specError(() => v2({ network: { priorities: [{ name: 'eth0', priority: 5 }] } }), 'linux.resources.network:');
  assert.deepEqual(v2({ network: { priorities: [] } }), []);
  assert.deepEqual(v2({ network: {} }), []);
});

test('v2: devices are no file writes (the BPF program does them); every controller is ""', () => {
  assert.deepEqual(v2({ devices: [{ allow: false, access: 'rwm' }, ...DEFAULT_DEVICE_RULES] }), []);
  const w = v2({ devices: [{ allow: false }], memory: { limit: Mi }, cpu: { shares: 2 }, pids: { limit: 1 }, blockIO: { weight: 10 } });
  assert.deepEqual(w.map((x) => x.file), ['memory.max', 'cpu.weight', 'pids.max', 'io.weight']);
  assert.ok(w.every((x) => x.controller === ''));
  assert.deepEqual(v2({}), []);
});

test('resourceWrites does not change its input', () => {
  const r: Resources = { memory: { limit: 64 * Mi, swap: 128 * Mi }, cpu: { quota: 0, period: 100000 }, devices: [{ allow: false }] };
  const copy = structuredClone(r);
  v1(r);
  v2(r);
  assert.deepEqual(r, copy);
});

// ---------------------------------------------------------------- validateResources

test('validateResources: valid configs pass and come back as they are', () => {
  const runcDefault = { devices: [{ allow: false, access: 'rwm' }] };
  assert.equal(validateResources(runcDefault), runcDefault);
  assert.deepEqual(validateResources(undefined), {});
  assert.deepEqual(validateResources(null), {});
  assert.deepEqual(validateResources({}), {});
  const full: Resources = {
    devices: [{ allow: false, access: 'rwm' }, { allow: true, type: 'c', major: 1, minor: 3, access: 'rwm' }, { allow: true, type: 'b', major: -1, minor: -1, access: '' }],
    memory: { limit: 64 * Mi, reservation: 32 * Mi, swap: 128 * Mi, kernel: -1, kernelTCP: 0, swappiness: 0, disableOOMKiller: false, useHierarchy: true, checkBeforeUpdate: true },
    cpu: { shares: 1024, quota: -1, burst: 0, period: 100000, realtimeRuntime: -1, realtimePeriod: 0, cpus: '0-2,4', mems: '', idle: 1 },
    pids: { limit: -1 },
    blockIO: { weight: 1000, leafWeight: 10, weightDevice: [{ major: 8, minor: 0, weight: 10 }], throttleReadBpsDevice: [{ major: 8, minor: 0, rate: 0 }],
      throttleWriteBpsDevice: [], throttleReadIOPSDevice: [], throttleWriteIOPSDevice: [] },
    hugepageLimits: [{ pageSize: '2MB', limit: 0 }, { pageSize: '64KB', limit: -1 }, { pageSize: '1GB', limit: Gi }],
    network: { classID: 1, priorities: [{ name: 'eth0', priority: 5 }] },
    rdma: { mlx5_0: { hcaHandles: 1 } },
    unified: { 'memory.high': 'max', 'io.bfq.weight': '100', 'cpu.uclamp.min': '10' },
  };
  assert.equal(validateResources(full), full);
  // swap equal to the limit, or -1 with any limit, or any swap with limit -1
  validateResources({ memory: { limit: 64 * Mi, swap: 64 * Mi } });
  validateResources({ memory: { limit: 64 * Mi, swap: -1 } });
  validateResources({ memory: { limit: -1, swap: 1 } });
  validateResources({ cpu: { shares: 2 } });
  validateResources({ cpu: { shares: 262144 } });
  validateResources({ pids: { limit: 0 } });
});

test('validateResources: unknown keys, top level and nested', () => {
  rejects({ foo: 1 }, 'linux.resources.foo: unknown resource', true);
  rejects({ memory: { bogus: 1 } }, 'linux.resources.memory.bogus: unknown resource', true);
  rejects({ cpu: { quotaa: 1 } }, 'linux.resources.cpu.quotaa: unknown resource', true);
  rejects({ pids: { limit: 1, max: 2 } }, 'linux.resources.pids.max: unknown resource', true);
  rejects({ blockIO: { weigth: 10 } }, 'linux.resources.blockIO.weigth: unknown resource', true);
  rejects({ network: { classid: 1 } }, 'linux.resources.network.classid: unknown resource', true);
  specError(() => validateResources({ foo: 1 }, 'resources'), 'resources.foo: unknown resource', true);
});

test('validateResources: wrong shapes', () => {
  rejects(5, 'linux.resources: must be an object', true);
  rejects([], 'linux.resources: must be an object', true);
  rejects({ memory: [] }, 'linux.resources.memory: must be an object', true);
  rejects({ cpu: 'x' }, 'linux.resources.cpu: must be an object', true);
  rejects({ devices: {} }, 'linux.resources.devices: must be an array', true);
  rejects({ hugepageLimits: {} }, 'linux.resources.hugepageLimits: must be an array', true);
  rejects({ blockIO: { throttleReadBpsDevice: {} } }, 'linux.resources.blockIO.throttleReadBpsDevice: must be an array', true);
  rejects({ unified: [] }, 'linux.resources.unified: must be an object', true);
});

test('validateResources: memory limits', () => {
  rejects({ memory: { limit: -5 } }, 'linux.resources.memory.limit: must be a number of bytes or -1');
  rejects({ memory: { limit: 1.5 } }, 'linux.resources.memory.limit: must be a number of bytes or -1');
  rejects({ memory: { limit: '64m' } }, 'linux.resources.memory.limit: must be a number of bytes or -1');
  rejects({ memory: { reservation: -2 } }, 'linux.resources.memory.reservation: must be a number of bytes or -1');
  rejects({ memory: { kernelTCP: -3 } }, 'linux.resources.memory.kernelTCP: must be a number of bytes or -1');
  rejects({ memory: { swappiness: 101 } }, 'linux.resources.memory.swappiness: must be an integer from 0 to 100, got 101', true);
  rejects({ memory: { limit: 128 * Mi, swap: 64 * Mi } },
    'linux.resources.memory.swap: memory+swap limit 67108864 is below the memory limit 134217728', true);
});

test('validateResources: cpu', () => {
  rejects({ cpu: { shares: 1 } }, 'linux.resources.cpu.shares: must be an integer from 2 to 262144, got 1', true);
  rejects({ cpu: { shares: 262145 } }, 'linux.resources.cpu.shares: must be an integer from 2 to 262144, got 262145', true);
  rejects({ cpu: { quota: -2 } }, 'linux.resources.cpu.quota: must be an integer from -1');
  rejects({ cpu: { period: 999 } }, 'linux.resources.cpu.period: must be an integer from 1000 to 1000000, got 999', true);
  rejects({ cpu: { idle: 2 } }, 'linux.resources.cpu.idle: must be an integer from 0 to 1, got 2', true);
  for (const bad of ['a-b', '0-', '1,,2', ' 0', '0,', '-1']) rejects({ cpu: { cpus: bad } }, 'linux.resources.cpu.cpus: must be a cpu list like "0-2,4", got ');
  rejects({ cpu: { cpus: 3 } }, 'linux.resources.cpu.cpus: must be a cpu list like "0-2,4", got 3', true);
  rejects({ cpu: { mems: 'all' } }, 'linux.resources.cpu.mems: must be a cpu list like "0-2,4", got "all"', true);
});

test('validateResources: pids, blockIO, hugepages', () => {
  rejects({ pids: { limit: -2 } }, `linux.resources.pids.limit: must be an integer from -1 to ${Number.MAX_SAFE_INTEGER}, got -2`, true);
  rejects({ blockIO: { weight: 5 } }, 'linux.resources.blockIO.weight: must be an integer from 10 to 1000, got 5', true);
  rejects({ blockIO: { leafWeight: 1001 } }, 'linux.resources.blockIO.leafWeight: must be an integer from 10 to 1000, got 1001', true);
  rejects({ blockIO: { weightDevice: [{ major: 8, minor: 0, weight: 5 }] } }, 'linux.resources.blockIO.weightDevice[0].weight: must be an integer from 10 to 1000');
  rejects({ blockIO: { throttleWriteIOPSDevice: [{ major: 8, minor: 0, rate: 1 }, { major: -1, minor: 0, rate: 1 }] } },
    'linux.resources.blockIO.throttleWriteIOPSDevice[1].major: must be an integer from 0');
  rejects({ blockIO: { throttleReadBpsDevice: [{ major: 8, minor: 0, rate: -1 }] } }, 'linux.resources.blockIO.throttleReadBpsDevice[0].rate: must be an integer from 0');
  rejects({ hugepageLimits: [{ pageSize: '2M', limit: 1 }] }, 'linux.resources.hugepageLimits[0].pageSize: must be like "2MB", got "2M"', true);
  rejects({ hugepageLimits: [{ pageSize: '2MB', limit: 1 }, { pageSize: 'hugeMB', limit: 1 }] }, 'linux.resources.hugepageLimits[1].pageSize: must be like "2MB"');
  rejects({ hugepageLimits: [{ pageSize: '2MB', limit: -7 }] }, 'linux.resources.hugepageLimits[0].limit: must be a number of bytes or -1');
});

test('validateResources: devices', () => {
  rejects({ devices: [{ allow: false }, { allow: true, type: 'x' }] }, 'linux.resources.devices[1].type: must be a, c or b, got "x"', true);
  rejects({ devices: [{ allow: true, type: 'c', access: 'rwx' }] }, 'linux.resources.devices[0].access: must be made of r, w and m, got "rwx"', true);
  rejects({ devices: [{ access: 'rwm' }] }, 'linux.resources.devices[0].allow: must be true or false', true);
  rejects({ devices: [{ allow: 'yes' }] }, 'linux.resources.devices[0].allow: must be true or false', true);
  rejects({ devices: [{ allow: true, type: 'c', major: -2 }] }, 'linux.resources.devices[0].major: must be an integer from -1');
  rejects({ devices: [{ allow: true, type: 'c', major: 1, minor: 1.5 }] }, 'linux.resources.devices[0].minor: must be an integer from -1');
});

test('validateResources: unified keys must be plain v2 file names with string values', () => {
  rejects({ unified: { 'memory/max': '1' } }, 'linux.resources.unified["memory/max"]: is not a cgroup v2 file name', true);
  rejects({ unified: { '../cgroup.procs': '1' } }, 'linux.resources.unified["../cgroup.procs"]: is not a cgroup v2 file name', true);
  rejects({ unified: { 'memory.max/x': '1' } }, 'linux.resources.unified["memory.max/x"]: is not a cgroup v2 file name', true);
  rejects({ unified: { memorymax: '1' } }, 'linux.resources.unified["memorymax"]: is not a cgroup v2 file name', true);
  rejects({ unified: { 'memory.max': 1 } }, 'linux.resources.unified["memory.max"]: must be a string', true);
});

// ---------------------------------------------------------------- mergeResources

test('mergeResources: a new memory limit keeps the recorded swap; pids replaced; base not mutated', () => {
  const base: Resources = {
    memory: { limit: 64 * Mi, swap: 256 * Mi }, cpu: { quota: 20000, period: 100000 }, pids: { limit: 10 },
    devices: [{ allow: false, access: 'rwm' }], unified: { 'memory.high': '1', 'cpu.idle': '0' },
    hugepageLimits: [{ pageSize: '2MB', limit: 2 * Mi }], rdma: { mlx5_0: { hcaHandles: 1 } },
  };
  const before = structuredClone(base);
  const out = mergeResources(base, { memory: { limit: 128 * Mi }, pids: { limit: 20 } });
  assert.deepEqual(out, { ...before, memory: { limit: 128 * Mi, swap: 256 * Mi }, pids: { limit: 20 } });
  assert.deepEqual(base, before);
  assert.notEqual(out.memory, base.memory);

  const out2 = mergeResources(base, {
    cpu: { quota: -1 }, unified: { 'memory.high': '2' }, hugepageLimits: [{ pageSize: '1GB', limit: Gi }],
    rdma: { mlx5_1: { hcaObjects: 3 } }, blockIO: { weight: 100 }, network: { classID: 7 },
  });
  assert.deepEqual(out2, {
    ...before,
    cpu: { quota: -1, period: 100000 },
    unified: { 'memory.high': '2', 'cpu.idle': '0' },
    hugepageLimits: [{ pageSize: '1GB', limit: Gi }],
    rdma: { mlx5_0: { hcaHandles: 1 }, mlx5_1: { hcaObjects: 3 } },
    blockIO: { weight: 100 },
    network: { classID: 7 },
  });
  assert.deepEqual(base, before);
  assert.deepEqual(mergeResources(base, {}), before);
  assert.deepEqual(mergeResources({}, { pids: { limit: 1 } }), { pids: { limit: 1 } });
});

test('mergeResources then resourceWrites: an update of the limit alone writes the recorded swap on v2', () => {
  const merged = mergeResources({ memory: { limit: 64 * Mi, swap: 128 * Mi } }, { memory: { limit: 96 * Mi } });
  assert.deepEqual(v2(merged), W(['', 'memory.max', String(96 * Mi)], ['', 'memory.swap.max', String(32 * Mi)]));
});

// ---------------------------------------------------------------- runc update flags

test('parseBytes: plain bytes, binary k/m/g/t suffixes, -1', () => {
  assert.equal(parseBytes('--memory', '1024'), 1024);
  assert.equal(parseBytes('--memory', '64m'), 67108864);
  assert.equal(parseBytes('--memory', '64M'), 67108864);
  assert.equal(parseBytes('--memory', '64mb'), 67108864);
  assert.equal(parseBytes('--memory', '2g'), 2 * Gi);
  assert.equal(parseBytes('--memory', '2g'), 2147483648);
  assert.equal(parseBytes('--memory', '512k'), 524288);
  assert.equal(parseBytes('--memory', '1t'), 2 ** 40);
  assert.equal(parseBytes('--memory', '-1'), -1);
  assert.equal(parseBytes('--memory', ' 0 '), 0);
});

test('parseBytes: a bad size throws a one-line TsruncError naming the flag', () => {
  for (const bad of ['ten', '', '1.5g', '64x', '-2', '--1', 'm']) {
    assert.throws(() => parseBytes('--memory-swap', bad), (e: unknown) => {
      assert.ok(e instanceof TsruncError, `a TsruncError for ${JSON.stringify(bad)}, got ${String(e)}`);
      assert.ok(!(e instanceof SpecError));
      assert.ok(e.message.includes('--memory-swap'), e.message);
      assert.ok(e.message.includes(`"${bad}"`), e.message);
      assert.ok(!e.message.includes('\n'));
      return true;
    });
  }
});

test('resourcesFromFlags: the runc update flags to an exact resources object', () => {
  assert.deepEqual(resourcesFromFlags({ memory: '64m', cpuQuota: '20000', cpuPeriod: '100000', pidsLimit: '10', cpusetCpus: '0' }), {
    memory: { limit: 67108864 },
    cpu: { quota: 20000, period: 100000, cpus: '0' },
    pids: { limit: 10 },
  });
  assert.deepEqual(resourcesFromFlags({}), {});
  assert.deepEqual(resourcesFromFlags({
    memory: '-1', memorySwap: '1g', memoryReservation: '512k', kernelMemory: '1m', kernelMemoryTcp: '2m',
    cpuShares: '512', cpuQuota: '-1', cpuPeriod: '50000', cpuRtPeriod: '1000000', cpuRtRuntime: '950000',
    cpusetCpus: '0-3', cpusetMems: '0', pidsLimit: '-1', blkioWeight: '500',
  }), {
    memory: { limit: -1, swap: Gi, reservation: 512 * Ki, kernel: Mi, kernelTCP: 2 * Mi },
    cpu: { shares: 512, quota: -1, period: 50000, realtimePeriod: 1000000, realtimeRuntime: 950000, cpus: '0-3', mems: '0' },
    pids: { limit: -1 },
    blockIO: { weight: 500 },
  });
});

test('resourcesFromFlags: a non-integer flag throws a TsruncError naming it', () => {
  for (const [flags, name] of [[{ cpuQuota: '2e4' }, '--cpu-quota'], [{ pidsLimit: 'ten' }, '--pids-limit'], [{ cpuShares: '1.5' }, '--cpu-shares'],
    [{ blkioWeight: '' }, '--blkio-weight'], [{ memory: '64q' }, '--memory']] as const) {
    assert.throws(() => resourcesFromFlags(flags), (e: unknown) => {
      assert.ok(e instanceof TsruncError, String(e));
      assert.ok(e.message.startsWith(`${name}: `), e.message);
      return true;
    });
  }
});

test('resourcesFromFlags output validates and plans on v2', () => {
  const r = resourcesFromFlags({ memory: '64m', memorySwap: '128m', cpuQuota: '20000', cpuPeriod: '100000', pidsLimit: '10', cpusetCpus: '0' });
  assert.equal(validateResources(r), r);
  assert.deepEqual(v2(r), W(
    ['', 'memory.max', '67108864'],
    ['', 'memory.swap.max', '67108864'],
    ['', 'cpu.max', '20000 100000'],
    ['', 'cpuset.cpus', '0'],
    ['', 'pids.max', '10'],
  ));
});

test('incomplete or malformed entries are refused instead of writing "undefined"', () => {
  rejects({ pids: {} }, 'linux.resources.pids.limit: is required');
  rejects({ blockIO: { throttleReadBpsDevice: [{ major: 8, minor: 0 }] } }, 'linux.resources.blockIO.throttleReadBpsDevice[0].rate: is required');
  rejects({ hugepageLimits: [{ pageSize: '2MB' }] }, 'linux.resources.hugepageLimits[0].limit: is required');
  rejects({ devices: [null] }, 'linux.resources.devices[0]: must be an object');
  rejects({ hugepageLimits: [null] }, 'linux.resources.hugepageLimits[0]: must be an object');
  rejects({ blockIO: { weightDevice: [5] } }, 'linux.resources.blockIO.weightDevice[0]: must be an object');
  rejects({ network: { classID: 'x' } }, 'linux.resources.network.classID');
  rejects({ network: { priorities: 5 } }, 'linux.resources.network.priorities: must be an array');
  rejects({ rdma: { m: { hcaHandles: 'lots' } } }, 'linux.resources.rdma["m"].hcaHandles');
});

test('v2: a swap limit without a memory limit is refused, as runc does', () => {
  specError(() => v2({ memory: { swap: 128 * Mi } }), 'linux.resources.memory.swap');
  specError(() => v2({ memory: { limit: -1, swap: 128 * Mi } }), 'linux.resources.memory.swap');
  assert.deepEqual(v2({ memory: { limit: -1, swap: -1 } }), W(['', 'memory.max', 'max'], ['', 'memory.swap.max', 'max']));
});

test('parseBytes refuses -1 with a unit', () => {
  for (const v of ['-1k', '-1g', '-1mb']) assert.throws(() => parseBytes('--memory', v), TsruncError);
});
