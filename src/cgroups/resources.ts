/** linux.resources: validation, and the cgroup files and values it means on v1 and on v2. */
import { SpecError } from '../errors.js';

export interface DeviceCgroupRule {
  allow: boolean;
  type?: 'a' | 'c' | 'b';
  major?: number;
  minor?: number;
  access?: string;
}
export interface ThrottleDevice { major: number; minor: number; rate: number }
export interface WeightDevice { major: number; minor: number; weight?: number; leafWeight?: number }

export interface Resources {
  devices?: DeviceCgroupRule[];
  memory?: { limit?: number; reservation?: number; swap?: number; kernel?: number; kernelTCP?: number;
    swappiness?: number; disableOOMKiller?: boolean; useHierarchy?: boolean; checkBeforeUpdate?: boolean };
  cpu?: { shares?: number; quota?: number; burst?: number; period?: number; realtimeRuntime?: number;
    realtimePeriod?: number; cpus?: string; mems?: string; idle?: number };
  pids?: { limit: number };
  blockIO?: { weight?: number; leafWeight?: number; weightDevice?: WeightDevice[];
    throttleReadBpsDevice?: ThrottleDevice[]; throttleWriteBpsDevice?: ThrottleDevice[];
    throttleReadIOPSDevice?: ThrottleDevice[]; throttleWriteIOPSDevice?: ThrottleDevice[] };
  hugepageLimits?: { pageSize: string; limit: number }[];
  network?: { classID?: number; priorities?: { name: string; priority: number }[] };
  rdma?: Record<string, { hcaHandles?: number; hcaObjects?: number }>;
  unified?: Record<string, string>;
}

/** One write into the container's cgroup: the hierarchy ("" on a pure v2 host), the file, the value. */
export interface CgroupWrite {
  controller: string;
  file: string;
  value: string;
}

const KNOWN: Record<string, string[]> = {
  '': ['devices', 'memory', 'cpu', 'pids', 'blockIO', 'hugepageLimits', 'network', 'rdma', 'unified'],
  memory: ['limit', 'reservation', 'swap', 'kernel', 'kernelTCP', 'swappiness', 'disableOOMKiller', 'useHierarchy', 'checkBeforeUpdate'],
  cpu: ['shares', 'quota', 'burst', 'period', 'realtimeRuntime', 'realtimePeriod', 'cpus', 'mems', 'idle'],
  pids: ['limit'],
  blockIO: ['weight', 'leafWeight', 'weightDevice', 'throttleReadBpsDevice', 'throttleWriteBpsDevice', 'throttleReadIOPSDevice', 'throttleWriteIOPSDevice'],
  network: ['classID', 'priorities'],
};

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function int(v: unknown, path: string, min: number, max = Number.MAX_SAFE_INTEGER): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max)
    throw new SpecError(path, `must be an integer from ${min} to ${max}, got ${JSON.stringify(v)}`);
}

/** A limit in bytes: positive, or -1 for unlimited. */
function limit(v: unknown, path: string): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || !Number.isInteger(v) || (v < 0 && v !== -1))
    throw new SpecError(path, `must be a number of bytes or -1 for unlimited, got ${JSON.stringify(v)}`);
}

function cpuList(v: unknown, path: string): void {
  if (v === undefined) return;
  if (typeof v !== 'string' || !/^(\d+(-\d+)?)(,\d+(-\d+)?)*$|^$/.test(v)) throw new SpecError(path, `must be a cpu list like "0-2,4", got ${JSON.stringify(v)}`);
}

export function validateResources(r: unknown, base = 'linux.resources'): Resources {
  if (r === undefined || r === null) return {};
  if (!isObj(r)) throw new SpecError(base, 'must be an object');
  for (const [group, keys] of Object.entries(KNOWN)) {
    const o = group === '' ? r : r[group];
    if (o === undefined) continue;
    if (!isObj(o)) throw new SpecError(`${base}.${group}`, 'must be an object');
    for (const k of Object.keys(o)) if (!keys.includes(k)) throw new SpecError(group ? `${base}.${group}.${k}` : `${base}.${k}`, 'unknown resource');
  }
  const m = r.memory as Resources['memory'];
  if (m) {
    for (const k of ['limit', 'reservation', 'swap', 'kernel', 'kernelTCP'] as const) limit(m[k], `${base}.memory.${k}`);
    int(m.swappiness, `${base}.memory.swappiness`, 0, 100);
    if (m.limit !== undefined && m.swap !== undefined && m.swap !== -1 && m.limit !== -1 && m.swap < m.limit)
      throw new SpecError(`${base}.memory.swap`, `memory+swap limit ${m.swap} is below the memory limit ${m.limit}`);
  }
  const c = r.cpu as Resources['cpu'];
  if (c) {
    int(c.shares, `${base}.cpu.shares`, 2, 262144);
    int(c.quota, `${base}.cpu.quota`, -1);
    int(c.period, `${base}.cpu.period`, 1000, 1000000);
    int(c.burst, `${base}.cpu.burst`, 0);
    int(c.realtimeRuntime, `${base}.cpu.realtimeRuntime`, -1);
    int(c.realtimePeriod, `${base}.cpu.realtimePeriod`, 0);
    int(c.idle, `${base}.cpu.idle`, 0, 1);
    cpuList(c.cpus, `${base}.cpu.cpus`);
    cpuList(c.mems, `${base}.cpu.mems`);
  }
  const p = r.pids as Resources['pids'];
  if (p) {
    if (p.limit === undefined) throw new SpecError(`${base}.pids.limit`, 'is required');
    int(p.limit, `${base}.pids.limit`, -1);
  }
  const b = r.blockIO as Resources['blockIO'];
  if (b) {
    int(b.weight, `${base}.blockIO.weight`, 10, 1000);
    int(b.leafWeight, `${base}.blockIO.leafWeight`, 10, 1000);
    for (const k of ['weightDevice', 'throttleReadBpsDevice', 'throttleWriteBpsDevice', 'throttleReadIOPSDevice', 'throttleWriteIOPSDevice'] as const) {
      const list = b[k];
      if (list === undefined) continue;
      if (!Array.isArray(list)) throw new SpecError(`${base}.blockIO.${k}`, 'must be an array');
      list.forEach((d, i) => {
        if (!isObj(d)) throw new SpecError(`${base}.blockIO.${k}[${i}]`, 'must be an object');
        if (k !== 'weightDevice' && d.rate === undefined) throw new SpecError(`${base}.blockIO.${k}[${i}].rate`, 'is required');
        int(d.major, `${base}.blockIO.${k}[${i}].major`, 0);
        int(d.minor, `${base}.blockIO.${k}[${i}].minor`, 0);
        if ('rate' in d) int(d.rate, `${base}.blockIO.${k}[${i}].rate`, 0);
        if ('weight' in d) int((d as WeightDevice).weight, `${base}.blockIO.${k}[${i}].weight`, 10, 1000);
      });
    }
  }
  const h = r.hugepageLimits;
  if (h !== undefined) {
    if (!Array.isArray(h)) throw new SpecError(`${base}.hugepageLimits`, 'must be an array');
    h.forEach((x: { pageSize: unknown; limit: unknown }, i: number) => {
      if (!isObj(x)) throw new SpecError(`${base}.hugepageLimits[${i}]`, 'must be an object');
      if (x.limit === undefined) throw new SpecError(`${base}.hugepageLimits[${i}].limit`, 'is required');
      if (typeof x.pageSize !== 'string' || !/^\d+[KMG]B$/.test(x.pageSize)) throw new SpecError(`${base}.hugepageLimits[${i}].pageSize`, `must be like "2MB", got ${JSON.stringify(x.pageSize)}`);
      limit(x.limit, `${base}.hugepageLimits[${i}].limit`);
    });
  }
  const d = r.devices;
  if (d !== undefined) {
    if (!Array.isArray(d)) throw new SpecError(`${base}.devices`, 'must be an array');
    d.forEach((x: DeviceCgroupRule, i: number) => {
      if (!isObj(x)) throw new SpecError(`${base}.devices[${i}]`, 'must be an object');
      if (typeof x.allow !== 'boolean') throw new SpecError(`${base}.devices[${i}].allow`, 'must be true or false');
      if (x.type !== undefined && !['a', 'c', 'b'].includes(x.type)) throw new SpecError(`${base}.devices[${i}].type`, `must be a, c or b, got ${JSON.stringify(x.type)}`);
      if (x.access !== undefined && !/^[rwm]*$/.test(x.access)) throw new SpecError(`${base}.devices[${i}].access`, `must be made of r, w and m, got ${JSON.stringify(x.access)}`);
      int(x.major, `${base}.devices[${i}].major`, -1);
      int(x.minor, `${base}.devices[${i}].minor`, -1);
    });
  }
  const net = r.network as Resources['network'];
  if (net) {
    int(net.classID, `${base}.network.classID`, 0, 2 ** 32 - 1);
    if (net.priorities !== undefined) {
      if (!Array.isArray(net.priorities)) throw new SpecError(`${base}.network.priorities`, 'must be an array');
      net.priorities.forEach((x, i) => {
        if (!isObj(x) || typeof x.name !== 'string' || !/^[\w.:-]+$/.test(x.name)) throw new SpecError(`${base}.network.priorities[${i}].name`, 'must be an interface name');
        int(x.priority, `${base}.network.priorities[${i}].priority`, 0, 2 ** 32 - 1);
      });
    }
  }
  const rd = r.rdma;
  if (rd !== undefined) {
    if (!isObj(rd)) throw new SpecError(`${base}.rdma`, 'must be an object');
    for (const [dev, l] of Object.entries(rd)) {
      if (!/^[\w.:-]+$/.test(dev)) throw new SpecError(`${base}.rdma["${dev}"]`, 'is not a device name');
      if (!isObj(l)) throw new SpecError(`${base}.rdma["${dev}"]`, 'must be an object');
      int(l.hcaHandles, `${base}.rdma["${dev}"].hcaHandles`, 0, 2 ** 32 - 1);
      int(l.hcaObjects, `${base}.rdma["${dev}"].hcaObjects`, 0, 2 ** 32 - 1);
    }
  }
  const u = r.unified;
  if (u !== undefined) {
    if (!isObj(u)) throw new SpecError(`${base}.unified`, 'must be an object');
    for (const [k, v] of Object.entries(u)) {
      if (!/^[a-z0-9_]+\.[a-z0-9_.]+$/.test(k)) throw new SpecError(`${base}.unified["${k}"]`, 'is not a cgroup v2 file name');
      if (typeof v !== 'string') throw new SpecError(`${base}.unified["${k}"]`, 'must be a string');
    }
  }
  return r as Resources;
}

/** Devices every container may use, as runc allows them on top of the spec's rules. */
export const DEFAULT_DEVICE_RULES: DeviceCgroupRule[] = [
  { allow: true, type: 'c', major: -1, minor: -1, access: 'm' },
  { allow: true, type: 'b', major: -1, minor: -1, access: 'm' },
  { allow: true, type: 'c', major: 1, minor: 3, access: 'rwm' },   // null
  { allow: true, type: 'c', major: 1, minor: 8, access: 'rwm' },   // random
  { allow: true, type: 'c', major: 1, minor: 7, access: 'rwm' },   // full
  { allow: true, type: 'c', major: 5, minor: 0, access: 'rwm' },   // tty
  { allow: true, type: 'c', major: 1, minor: 5, access: 'rwm' },   // zero
  { allow: true, type: 'c', major: 1, minor: 9, access: 'rwm' },   // urandom
  { allow: true, type: 'c', major: 136, minor: -1, access: 'rwm' }, // pts
  { allow: true, type: 'c', major: 5, minor: 2, access: 'rwm' },   // ptmx
  { allow: true, type: 'c', major: 10, minor: 200, access: 'rwm' }, // tun
];

const num = (n: number | undefined) => (n === undefined || n < 0 ? '*' : String(n));
const maxOr = (n: number) => (n === -1 ? 'max' : String(n));

function v1Devices(rules: DeviceCgroupRule[]): CgroupWrite[] {
  const out: CgroupWrite[] = [];
  for (const r of rules) {
    const type = r.type ?? 'a';
    const entry = type === 'a' ? 'a' : `${type} ${num(r.major)}:${num(r.minor)} ${r.access || 'rwm'}`;
    out.push({ controller: 'devices', file: r.allow ? 'devices.allow' : 'devices.deny', value: entry });
  }
  return out;
}

/**
 * The writes that apply `r`, in the order they must happen. `blkioWeightFile` is what this
 * kernel calls the v1 blkio weight (blkio.weight, or blkio.bfq.weight with BFQ).
 */
export function resourceWrites(mode: 'v1' | 'v2', r: Resources, opts: { blkioWeightFile?: string } = {}): CgroupWrite[] {
  const w: CgroupWrite[] = [];
  const add = (controller: string, file: string, value: string | number) => w.push({ controller, file, value: String(value) });
  if (mode === 'v1') {
    if (r.devices?.length) w.push(...v1Devices(r.devices));
    const m = r.memory;
    if (m) {
      if (m.limit !== undefined) add('memory', 'memory.limit_in_bytes', m.limit);
      if (m.swap !== undefined) add('memory', 'memory.memsw.limit_in_bytes', m.swap);
      if (m.reservation !== undefined) add('memory', 'memory.soft_limit_in_bytes', m.reservation);
      if (m.kernelTCP !== undefined) add('memory', 'memory.kmem.tcp.limit_in_bytes', m.kernelTCP);
      if (m.swappiness !== undefined) add('memory', 'memory.swappiness', m.swappiness);
      if (m.disableOOMKiller) add('memory', 'memory.oom_control', 1);
    }
    const c = r.cpu;
    if (c) {
      if (c.shares !== undefined) add('cpu', 'cpu.shares', c.shares);
      if (c.period !== undefined) add('cpu', 'cpu.cfs_period_us', c.period);
      if (c.quota !== undefined) add('cpu', 'cpu.cfs_quota_us', c.quota === 0 ? -1 : c.quota);
      if (c.burst !== undefined) add('cpu', 'cpu.cfs_burst_us', c.burst);
      if (c.realtimePeriod !== undefined) add('cpu', 'cpu.rt_period_us', c.realtimePeriod);
      if (c.realtimeRuntime !== undefined) add('cpu', 'cpu.rt_runtime_us', c.realtimeRuntime);
      if (c.idle !== undefined) add('cpu', 'cpu.idle', c.idle);
      if (c.cpus) add('cpuset', 'cpuset.cpus', c.cpus);
      if (c.mems) add('cpuset', 'cpuset.mems', c.mems);
    }
    if (r.pids) add('pids', 'pids.max', r.pids.limit <= 0 ? 'max' : r.pids.limit);
    const b = r.blockIO;
    if (b) {
      const wf = opts.blkioWeightFile ?? 'blkio.weight';
      if (b.weight !== undefined) add('blkio', wf, b.weight);
      if (b.leafWeight !== undefined) add('blkio', 'blkio.leaf_weight', b.leafWeight);
      for (const d of b.weightDevice ?? []) {
        if (d.weight !== undefined) add('blkio', `${wf}_device`, `${d.major}:${d.minor} ${d.weight}`);
        if (d.leafWeight !== undefined) add('blkio', 'blkio.leaf_weight_device', `${d.major}:${d.minor} ${d.leafWeight}`);
      }
      const thr: [keyof NonNullable<Resources['blockIO']>, string][] = [['throttleReadBpsDevice', 'read_bps_device'],
        ['throttleWriteBpsDevice', 'write_bps_device'], ['throttleReadIOPSDevice', 'read_iops_device'], ['throttleWriteIOPSDevice', 'write_iops_device']];
      for (const [k, f] of thr) for (const d of (b[k] as ThrottleDevice[] | undefined) ?? []) add('blkio', `blkio.throttle.${f}`, `${d.major}:${d.minor} ${d.rate}`);
    }
    for (const h of r.hugepageLimits ?? []) add('hugetlb', `hugetlb.${h.pageSize}.limit_in_bytes`, h.limit);
    if (r.network?.classID !== undefined) add('net_cls', 'net_cls.classid', r.network.classID);
    for (const p of r.network?.priorities ?? []) add('net_prio', 'net_prio.ifpriomap', `${p.name} ${p.priority}`);
    for (const [dev, l] of Object.entries(r.rdma ?? {})) add('rdma', 'rdma.max', rdmaLine(dev, l));
    if (r.unified && Object.keys(r.unified).length) throw new SpecError('linux.resources.unified', 'needs cgroup v2 (this host uses cgroup v1 controllers)');
    return w;
  }
  // v2 (unified): devices are a BPF program, not files; the caller attaches it
  const m = r.memory;
  if (m) {
    if (m.limit !== undefined) add('', 'memory.max', maxOr(m.limit));
    // v2 swap is swap alone; the OCI value is memory+swap
    if (m.swap !== undefined && m.swap !== -1 && (m.limit === undefined || m.limit === -1))
      throw new SpecError('linux.resources.memory.swap', 'a swap limit on cgroup v2 needs a memory limit too');
    if (m.swap !== undefined) add('', 'memory.swap.max', m.swap === -1 ? 'max' : Math.max(0, m.swap - m.limit!));
    if (m.reservation !== undefined) add('', 'memory.low', maxOr(m.reservation));
    if (m.disableOOMKiller) throw new SpecError('linux.resources.memory.disableOOMKiller', 'is not supported on cgroup v2');
  }
  const c = r.cpu;
  if (c) {
    // runc's conversion of shares [2, 262144] to weight [1, 10000]
    if (c.shares !== undefined) add('', 'cpu.weight', Math.floor(1 + ((c.shares - 2) * 9999) / 262142));
    if (c.quota !== undefined || c.period !== undefined)
      add('', 'cpu.max', `${c.quota === undefined || c.quota <= 0 ? 'max' : c.quota} ${c.period ?? 100000}`);
    if (c.burst !== undefined) add('', 'cpu.max.burst', c.burst);
    if (c.idle !== undefined) add('', 'cpu.idle', c.idle);
    if (c.cpus) add('', 'cpuset.cpus', c.cpus);
    if (c.mems) add('', 'cpuset.mems', c.mems);
  }
  if (r.pids) add('', 'pids.max', r.pids.limit <= 0 ? 'max' : r.pids.limit);
  const b = r.blockIO;
  if (b) {
    // runc's conversion of blkio weight [10, 1000] to io weight [1, 10000]
    const iow = (x: number) => Math.floor(1 + ((x - 10) * 9999) / 990);
    if (b.weight !== undefined) add('', 'io.weight', `default ${iow(b.weight)}`);
    for (const d of b.weightDevice ?? []) if (d.weight !== undefined) add('', 'io.weight', `${d.major}:${d.minor} ${iow(d.weight)}`);
    const thr: [keyof NonNullable<Resources['blockIO']>, string][] = [['throttleReadBpsDevice', 'rbps'], ['throttleWriteBpsDevice', 'wbps'],
      ['throttleReadIOPSDevice', 'riops'], ['throttleWriteIOPSDevice', 'wiops']];
    for (const [k, f] of thr) for (const d of (b[k] as ThrottleDevice[] | undefined) ?? []) add('', 'io.max', `${d.major}:${d.minor} ${f}=${d.rate}`);
  }
  for (const h of r.hugepageLimits ?? []) add('', `hugetlb.${h.pageSize}.max`, maxOr(h.limit));
  for (const [dev, l] of Object.entries(r.rdma ?? {})) add('', 'rdma.max', rdmaLine(dev, l));
  for (const [k, v] of Object.entries(r.unified ?? {})) add('', k, v);
  if (r.network?.classID !== undefined || r.network?.priorities?.length)
    throw new SpecError('linux.resources.network', 'net_cls and net_prio exist only on cgroup v1');
  return w;
}

function rdmaLine(dev: string, l: { hcaHandles?: number; hcaObjects?: number }): string {
  const parts = [dev];
  if (l.hcaHandles !== undefined) parts.push(`hca_handle=${l.hcaHandles}`);
  if (l.hcaObjects !== undefined) parts.push(`hca_object=${l.hcaObjects}`);
  return parts.join(' ');
}

/** Merges an update into recorded resources, as runc update does (only what is given changes). */
export function mergeResources(base: Resources, upd: Resources): Resources {
  const out: Resources = { ...base };
  for (const k of ['memory', 'cpu', 'blockIO', 'network'] as const) {
    if (upd[k]) (out as Record<string, unknown>)[k] = { ...(base[k] ?? {}), ...upd[k] };
  }
  if (upd.pids) out.pids = upd.pids;
  if (upd.hugepageLimits) out.hugepageLimits = upd.hugepageLimits;
  if (upd.unified) out.unified = { ...(base.unified ?? {}), ...upd.unified };
  if (upd.rdma) out.rdma = { ...(base.rdma ?? {}), ...upd.rdma };
  return out;
}
