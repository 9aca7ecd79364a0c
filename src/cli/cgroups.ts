/** pause, resume, update, events, ps. */
import { Command } from 'commander';
import { readFileSync } from 'node:fs';
import { TsruncError } from '../errors.js';
import type { Resources } from '../cgroups/resources.js';
import { action, storeOf } from './main.js';
import { log } from './log.js';

/** Sizes as runc update takes them: 1024, 64k, 64m, 1g (binary units), -1 for unlimited. */
export function parseBytes(flag: string, v: string): number {
  const m = /^(-1|\d+)([kmgt]?)b?$/i.exec(v.trim());
  if (!m || (m[1] === '-1' && v.trim() !== '-1')) throw new TsruncError(`${flag}: invalid size "${v}" (like 1048576, 512k, 64m, 2g, or -1)`);
  if (m[1] === '-1') return -1;
  const mult = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  return Number(m[1]) * mult;
}

function intFlag(flag: string, v: string): number {
  if (!/^-?\d+$/.test(v)) throw new TsruncError(`${flag}: must be an integer, got "${v}"`);
  return Number(v);
}

interface UpdateFlags {
  resources?: string; memory?: string; memorySwap?: string; memoryReservation?: string; kernelMemory?: string;
  kernelMemoryTcp?: string; cpuShares?: string; cpuQuota?: string; cpuPeriod?: string; cpuRtPeriod?: string;
  cpuRtRuntime?: string; cpusetCpus?: string; cpusetMems?: string; pidsLimit?: string; blkioWeight?: string;
}

export function resourcesFromFlags(o: UpdateFlags): Resources {
  let r: Resources = {};
  if (o.resources) {
    const text = o.resources === '-' ? readFileSync(0, 'utf8') : readFileSync(o.resources, 'utf8');
    try {
      r = JSON.parse(text) as Resources;
    } catch (e) {
      throw new TsruncError(`--resources ${o.resources}: invalid JSON: ${(e as Error).message}`);
    }
  }
  const mem = { ...(r.memory ?? {}) }, cpu = { ...(r.cpu ?? {}) };
  if (o.memory !== undefined) mem.limit = parseBytes('--memory', o.memory);
  if (o.memorySwap !== undefined) mem.swap = parseBytes('--memory-swap', o.memorySwap);
  if (o.memoryReservation !== undefined) mem.reservation = parseBytes('--memory-reservation', o.memoryReservation);
  if (o.kernelMemory !== undefined) mem.kernel = parseBytes('--kernel-memory', o.kernelMemory);
  if (o.kernelMemoryTcp !== undefined) mem.kernelTCP = parseBytes('--kernel-memory-tcp', o.kernelMemoryTcp);
  if (o.cpuShares !== undefined) cpu.shares = intFlag('--cpu-shares', o.cpuShares);
  if (o.cpuQuota !== undefined) cpu.quota = intFlag('--cpu-quota', o.cpuQuota);
  if (o.cpuPeriod !== undefined) cpu.period = intFlag('--cpu-period', o.cpuPeriod);
  if (o.cpuRtPeriod !== undefined) cpu.realtimePeriod = intFlag('--cpu-rt-period', o.cpuRtPeriod);
  if (o.cpuRtRuntime !== undefined) cpu.realtimeRuntime = intFlag('--cpu-rt-runtime', o.cpuRtRuntime);
  if (o.cpusetCpus !== undefined) cpu.cpus = o.cpusetCpus;
  if (o.cpusetMems !== undefined) cpu.mems = o.cpusetMems;
  if (Object.keys(mem).length) r.memory = mem;
  if (Object.keys(cpu).length) r.cpu = cpu;
  if (o.pidsLimit !== undefined) r.pids = { limit: intFlag('--pids-limit', o.pidsLimit) };
  if (o.blkioWeight !== undefined) r.blockIO = { ...(r.blockIO ?? {}), weight: intFlag('--blkio-weight', o.blkioWeight) };
  return r;
}

export function registerCgroups(program: Command): void {
  program.command('pause <container-id>').description('freeze every process of the container')
    .action(action(async (id: string, _o: unknown, cmd: Command) => {
      const { pauseContainer } = await import('../container/pause.js');
      await pauseContainer(storeOf(cmd), id);
    }));

  program.command('resume <container-id>').description('thaw a paused container')
    .action(action(async (id: string, _o: unknown, cmd: Command) => {
      const { resumeContainer } = await import('../container/pause.js');
      await resumeContainer(storeOf(cmd), id);
    }));

  program.command('update <container-id>').description('change the resources of a running container')
    .option('-r, --resources <file>', 'a JSON file of linux.resources ("-" for stdin)')
    .option('--memory <bytes>', 'memory limit (e.g. 64m)').option('--memory-swap <bytes>', 'memory+swap limit')
    .option('--memory-reservation <bytes>', 'memory soft limit').option('--kernel-memory <bytes>', 'kernel memory limit (ignored by new kernels)')
    .option('--kernel-memory-tcp <bytes>', 'kernel TCP buffer limit').option('--cpu-shares <n>', 'relative CPU weight')
    .option('--cpu-quota <us>', 'CPU time per period (-1: no limit)').option('--cpu-period <us>', 'CFS period')
    .option('--cpu-rt-period <us>', 'realtime period').option('--cpu-rt-runtime <us>', 'realtime runtime')
    .option('--cpuset-cpus <list>', 'CPUs to run on (0-3,5)').option('--cpuset-mems <list>', 'memory nodes')
    .option('--pids-limit <n>', 'maximum number of processes').option('--blkio-weight <n>', 'block IO weight (10-1000)')
    .action(action(async (id: string, o: UpdateFlags, cmd: Command) => {
      const { updateContainer } = await import('../container/update.js');
      for (const w of await updateContainer(storeOf(cmd), id, resourcesFromFlags(o))) log('warning', w);
    }));

  program.command('events <container-id>').description('stream cgroup statistics and OOM events as JSON lines')
    .option('--stats', 'print the statistics once and exit', false)
    .option('--interval <duration>', 'time between statistics (e.g. 5s, 500ms)', '5s')
    .action(action(async (id: string, o: { stats: boolean; interval: string }, cmd: Command) => {
      const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(o.interval);
      if (!m) throw new TsruncError(`--interval: invalid duration "${o.interval}" (like 5s or 500ms)`);
      const ms = Number(m[1]) * ({ ms: 1, s: 1000, m: 60000 }[(m[2] ?? 's') as 'ms' | 's' | 'm']);
      const { watchEvents } = await import('../container/events.js');
      await watchEvents(storeOf(cmd), id, { intervalMs: Math.max(ms, 100), once: o.stats }, (e) => process.stdout.write(JSON.stringify(e) + '\n'));
    }));

  program.command('ps <container-id> [ps-options...]').description('list the container\'s processes (host pids)')
    .option('-f, --format <format>', 'table or json', 'table')
    .allowUnknownOption(true)
    .action(action(async (id: string, psArgs: string[], o: { format: string }, cmd: Command) => {
      const { containerPids, psTable } = await import('../container/ps.js');
      const pids = containerPids(storeOf(cmd), id);
      if (o.format === 'json') process.stdout.write(JSON.stringify(pids) + '\n');
      else if (o.format === 'table') process.stdout.write(psTable(pids, psArgs));
      else throw new TsruncError(`invalid --format "${o.format}" (table or json)`);
    }));
}
