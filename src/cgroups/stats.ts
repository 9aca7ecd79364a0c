/** Cgroup statistics in the shape of runc's `events --stats` data. */
import { readFileSync } from 'node:fs';
import { posix } from 'node:path';

export interface CgroupStats {
  cpu: { usage: { total: number; percpu: number[]; kernel: number; user: number };
    throttling: { periods: number; throttledPeriods: number; throttledTime: number } };
  memory: { usage: MemEntry; swap: MemEntry; kernel: MemEntry; kernelTCP: MemEntry; raw: Record<string, number> };
  pids: { current: number; limit: number };
  blkio: { ioServiceBytesRecursive: BlkioEntry[]; ioServicedRecursive: BlkioEntry[] };
  hugetlb: Record<string, { usage: number; max: number; failcnt: number }>;
}
interface MemEntry { limit: number; usage: number; max: number; failcnt: number }
interface BlkioEntry { major: number; minor: number; op: string; value: number }

const USER_HZ = 100;
const MAX = 2 ** 63 - 1;

function read(dir: string | undefined, file: string): string | undefined {
  if (!dir) return undefined;
  try {
    return readFileSync(posix.join(dir, file), 'utf8').trim();
  } catch {
    return undefined;
  }
}
const n = (s: string | undefined) => (s === undefined ? 0 : s === 'max' ? MAX : Number(s));
function kv(s: string | undefined): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of (s ?? '').split('\n')) {
    const [k, v] = line.split(/\s+/);
    if (k && v !== undefined) out[k] = Number(v);
  }
  return out;
}
function blkio(s: string | undefined): BlkioEntry[] {
  return (s ?? '').split('\n').flatMap((l) => {
    const m = /^(\d+):(\d+) (\w+) (\d+)$/.exec(l);
    return m ? [{ major: Number(m[1]), minor: Number(m[2]), op: m[3], value: Number(m[4]) }] : [];
  });
}

export function readStats(mode: 'v1' | 'v2', dirOf: (controller: string) => string | undefined): CgroupStats {
  if (mode === 'v1') {
    const cpuacct = dirOf('cpuacct'), cpu = dirOf('cpu'), mem = dirOf('memory'), pids = dirOf('pids'), bio = dirOf('blkio'), huge = dirOf('hugetlb');
    const st = kv(read(cpuacct, 'cpuacct.stat'));
    const thr = kv(read(cpu, 'cpu.stat'));
    const entry = (prefix: string): MemEntry => ({
      limit: n(read(mem, `${prefix}limit_in_bytes`)), usage: n(read(mem, `${prefix}usage_in_bytes`)),
      max: n(read(mem, `${prefix}max_usage_in_bytes`)), failcnt: n(read(mem, `${prefix}failcnt`)),
    });
    const hugetlb: CgroupStats['hugetlb'] = {};
    for (const size of ['2MB', '1GB']) {
      if (read(huge, `hugetlb.${size}.usage_in_bytes`) === undefined) continue;
      hugetlb[size] = { usage: n(read(huge, `hugetlb.${size}.usage_in_bytes`)), max: n(read(huge, `hugetlb.${size}.max_usage_in_bytes`)), failcnt: n(read(huge, `hugetlb.${size}.failcnt`)) };
    }
    return {
      cpu: {
        usage: { total: n(read(cpuacct, 'cpuacct.usage')), percpu: (read(cpuacct, 'cpuacct.usage_percpu') ?? '').split(/\s+/).filter(Boolean).map(Number),
          kernel: (st.system ?? 0) * (1e9 / USER_HZ), user: (st.user ?? 0) * (1e9 / USER_HZ) },
        throttling: { periods: thr.nr_periods ?? 0, throttledPeriods: thr.nr_throttled ?? 0, throttledTime: thr.throttled_time ?? 0 },
      },
      memory: { usage: entry('memory.'), swap: entry('memory.memsw.'), kernel: entry('memory.kmem.'), kernelTCP: entry('memory.kmem.tcp.'), raw: kv(read(mem, 'memory.stat')) },
      pids: { current: n(read(pids, 'pids.current')), limit: read(pids, 'pids.max') === 'max' ? 0 : n(read(pids, 'pids.max')) },
      blkio: { ioServiceBytesRecursive: blkio(read(bio, 'blkio.throttle.io_service_bytes_recursive')), ioServicedRecursive: blkio(read(bio, 'blkio.throttle.io_serviced_recursive')) },
      hugetlb,
    };
  }
  const d = dirOf('');
  const cs = kv(read(d, 'cpu.stat'));
  const ms = kv(read(d, 'memory.stat'));
  const io = (read(d, 'io.stat') ?? '').split('\n').flatMap((l) => {
    const [dev, ...fields] = l.split(' ');
    const [major, minor] = (dev ?? '').split(':').map(Number);
    return fields.map((f) => f.split('=')).filter(([k]) => k === 'rbytes' || k === 'wbytes')
      .map(([k, v]) => ({ major, minor, op: k === 'rbytes' ? 'Read' : 'Write', value: Number(v) }));
  });
  const memEvents = kv(read(d, 'memory.events'));
  return {
    cpu: {
      usage: { total: (cs.usage_usec ?? 0) * 1000, percpu: [], kernel: (cs.system_usec ?? 0) * 1000, user: (cs.user_usec ?? 0) * 1000 },
      throttling: { periods: cs.nr_periods ?? 0, throttledPeriods: cs.nr_throttled ?? 0, throttledTime: (cs.throttled_usec ?? 0) * 1000 },
    },
    memory: {
      usage: { limit: n(read(d, 'memory.max')), usage: n(read(d, 'memory.current')), max: n(read(d, 'memory.peak')), failcnt: memEvents.max ?? 0 },
      swap: { limit: n(read(d, 'memory.swap.max')), usage: n(read(d, 'memory.swap.current')), max: 0, failcnt: 0 },
      kernel: { limit: 0, usage: ms.kernel ?? 0, max: 0, failcnt: 0 }, kernelTCP: { limit: 0, usage: ms.sock ?? 0, max: 0, failcnt: 0 }, raw: ms,
    },
    pids: { current: n(read(d, 'pids.current')), limit: read(d, 'pids.max') === 'max' ? 0 : n(read(d, 'pids.max')) },
    blkio: { ioServiceBytesRecursive: io, ioServicedRecursive: [] },
    hugetlb: {},
  };
}
