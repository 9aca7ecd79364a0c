/** Cgroup managers: one interface, with cgroup v1, unified v2 and hybrid layouts. */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { posix } from 'node:path';
import { TsruncError } from '../errors.js';
import type { CgroupMountSource } from '../init/compile.js';
import { resourceWrites, type Resources, type CgroupWrite } from './resources.js';
import { readStats, type CgroupStats } from './stats.js';
import { deviceProgram, DEVICE_PROGRAM_LICENSE } from './devices-bpf.js';
import { attachDeviceProgram } from '../linux/bpf.js';

export type CgroupMode = 'v1' | 'v2' | 'hybrid';

export interface Hierarchy {
  /** name under /sys/fs/cgroup, e.g. "memory", "systemd", "unified"; "" for a pure v2 host */
  name: string;
  mountpoint: string;
  fstype: 'cgroup' | 'cgroup2';
  /** controllers (v1) or mount data such as "name=systemd" */
  controllers: string[];
  /** the path of the mount's root inside the hierarchy (mountinfo field 4) */
  root: string;
}

export interface CgroupManager {
  readonly mode: CgroupMode;
  /** hierarchy name -> the container's directory on the host */
  readonly paths: Record<string, string>;
  create(): void;
  /** Moves a process (and so its future children) into the container's cgroups. */
  apply(pid: number): Promise<void>;
  /** Host pids of every process in the container's cgroup. */
  pids(): number[];
  /** Removes every directory of the container; retries while the kernel still counts dying tasks. */
  destroy(): Promise<void>;
  mountSources(): CgroupMountSource[];
  /** Writes the resources into the container's cgroup; returns warnings for what this host cannot do. */
  set(r: Resources): string[];
  freeze(): Promise<void>;
  thaw(): Promise<void>;
  frozen(): boolean;
  stats(): CgroupStats;
  /** How many times the kernel's OOM killer acted in this cgroup. */
  oomKills(): number;
}

let hierarchiesCache: Hierarchy[] | undefined;

export function hostHierarchies(mountinfo = '/proc/self/mountinfo'): Hierarchy[] {
  if (hierarchiesCache && mountinfo === '/proc/self/mountinfo') return hierarchiesCache;
  const out: Hierarchy[] = [];
  for (const line of readFileSync(mountinfo, 'utf8').split('\n')) {
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const left = line.slice(0, sep).split(' ');
    const right = line.slice(sep + 3).split(' ');
    const fstype = right[0];
    if (fstype !== 'cgroup' && fstype !== 'cgroup2') continue;
    const mountpoint = left[4].replace(/\\040/g, ' ');
    // only the host's hierarchies: CRIU mounts its own cgroup yard elsewhere while it restores
    if (mountpoint !== '/sys/fs/cgroup' && !mountpoint.startsWith('/sys/fs/cgroup/')) continue;
    const opts = (right[2] ?? '').split(',');
    const controllers = fstype === 'cgroup'
      ? opts.filter((o) => !['rw', 'ro', 'relatime', 'nosuid', 'nodev', 'noexec', 'xattr', 'noprefix', 'clone_children'].includes(o) && !o.startsWith('release_agent='))
      : [];
    const name = mountpoint === '/sys/fs/cgroup' ? '' : posix.basename(mountpoint);
    if (out.some((h) => h.mountpoint === mountpoint || h.name === name)) continue;
    out.push({ name, mountpoint, fstype, controllers, root: left[3] });
  }
  if (mountinfo === '/proc/self/mountinfo') hierarchiesCache = out;
  return out;
}

export function detectMode(h: Hierarchy[]): CgroupMode {
  const v1 = h.some((x) => x.fstype === 'cgroup');
  const v2 = h.some((x) => x.fstype === 'cgroup2');
  if (!v1 && v2) return 'v2';
  if (v1 && v2) return 'hybrid';
  if (v1) return 'v1';
  throw new TsruncError('no cgroup filesystem is mounted on this host');
}

/** The cgroup of this process in each hierarchy, from /proc/self/cgroup. */
function ownCgroups(): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of readFileSync('/proc/self/cgroup', 'utf8').trim().split('\n')) {
    const mm = /^\d+:([^:]*):(.*)$/.exec(line);
    if (mm) m.set(mm[1], mm[2]);
  }
  return m;
}

/** Where a cgroupsPath lands in one hierarchy, runc's rules: absolute from the hierarchy root, relative from our own. */
export function resolveCgroupDir(h: Hierarchy, cgroupsPath: string, own: Map<string, string>): string {
  let rel: string;
  if (cgroupsPath.startsWith('/')) {
    rel = cgroupsPath;
  } else {
    const key = h.fstype === 'cgroup2' ? '' : h.controllers.join(',');
    rel = posix.join(own.get(key) ?? '/', cgroupsPath);
  }
  // a mount whose root is not the hierarchy root (we run inside a cgroup namespace) shows paths below it
  if (h.root !== '/' && rel.startsWith(h.root)) rel = rel.slice(h.root.length) || '/';
  return posix.join(h.mountpoint, rel);
}

class FsCgroupManager implements CgroupManager {
  constructor(readonly mode: CgroupMode, private readonly hier: Hierarchy[], readonly paths: Record<string, string>) {}

  create(): void {
    for (const h of this.hier) {
      const dir = this.paths[h.name];
      if (h.controllers.includes('cpuset')) this.mkdirCpuset(h.mountpoint, dir);
      else mkdirSync(dir, { recursive: true });
      if (this.mode === 'v2' && h.fstype === 'cgroup2') enableControllers(h.mountpoint, dir);
    }
  }

  /** v1 cpuset children start with no cpus and mems: copy them down from the parent. */
  private mkdirCpuset(mountpoint: string, dir: string): void {
    const rel = posix.relative(mountpoint, dir).split('/').filter(Boolean);
    let cur = mountpoint;
    for (const part of rel) {
      const parent = cur;
      cur = posix.join(cur, part);
      if (!existsSync(cur)) mkdirSync(cur);
      for (const f of ['cpuset.cpus', 'cpuset.mems']) {
        const mine = readFileSync(posix.join(cur, f), 'utf8').trim();
        if (mine === '') writeFileSync(posix.join(cur, f), readFileSync(posix.join(parent, f), 'utf8').trim());
      }
    }
  }

  /** In parallel: each v1 migration waits for an RCU grace period, so one after another adds up. */
  async apply(pid: number): Promise<void> {
    await Promise.all(this.hier.map((h) => writeFile(posix.join(this.paths[h.name], 'cgroup.procs'), String(pid))));
  }

  pids(): number[] {
    const h = this.hier.find((x) => x.controllers.includes('pids') || x.controllers.includes('freezer')) ?? this.hier[0];
    try {
      return readFileSync(posix.join(this.paths[h.name], 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
    } catch {
      return [];
    }
  }

  async destroy(): Promise<void> {
    const left: string[] = [];
    for (const h of this.hier) {
      const dir = this.paths[h.name];
      if (!removeTree(dir)) left.push(dir);
    }
    for (let tries = 0; left.length > 0 && tries < 100; tries++) {
      await new Promise((r) => setTimeout(r, 20));
      for (let i = left.length - 1; i >= 0; i--) if (removeTree(left[i])) left.splice(i, 1);
    }
    if (left.length > 0) throw new TsruncError(`cannot remove cgroup ${left[0]}: it still has processes`);
  }

  /** The directory of the hierarchy that has `controller` ('' = the v2 hierarchy). */
  dirOf(controller: string): string | undefined {
    if (this.mode === 'v2') return this.paths[''];
    const h = this.hier.find((x) => x.fstype === 'cgroup' && x.controllers.includes(controller));
    return h ? this.paths[h.name] : undefined;
  }

  set(r: Resources): string[] {
    const warnings: string[] = [];
    const mode: 'v1' | 'v2' = this.mode === 'v2' ? 'v2' : 'v1';
    const blkio = this.dirOf('blkio');
    const weightFile = blkio && !existsSync(posix.join(blkio, 'blkio.weight')) && existsSync(posix.join(blkio, 'blkio.bfq.weight'))
      ? 'blkio.bfq.weight' : 'blkio.weight';
    // on v2 the device rules are a BPF program attached to the cgroup, not files
    if (mode === 'v2' && r.devices?.length) attachDeviceProgram(this.paths[''], deviceProgram(r.devices), DEVICE_PROGRAM_LICENSE);
    const writes = resourceWrites(mode, r, { blkioWeightFile: weightFile });
    for (let i = 0; i < writes.length; i++) {
      const w = writes[i];
      const next = writes[i + 1];
      try {
        this.write(w);
      } catch (e) {
        // raising memory above the current memory+swap limit needs the memsw limit raised first
        if (next && w.file === 'memory.limit_in_bytes' && next.file === 'memory.memsw.limit_in_bytes') {
          this.write(next);
          this.write(w);
          i++;
          continue;
        }
        throw e;
      }
    }
    return warnings;
  }

  private write(w: CgroupWrite): void {
    const dir = w.controller === '' ? this.paths[''] : this.dirOf(w.controller);
    const what = `${w.file} = ${JSON.stringify(w.value)}`;
    if (!dir) throw new TsruncError(`cannot set ${what}: the ${w.controller} cgroup controller is not mounted on this host`);
    try {
      writeFileSync(posix.join(dir, w.file), w.value);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      if (err.code === 'ENOENT') throw new TsruncError(`cannot set ${what}: this kernel has no ${w.file}`);
      throw new TsruncError(`cannot set ${what} in ${dir}: ${err.message.replace(/^[A-Z]+: /, '').replace(/, (open|write).*$/, '')}`);
    }
  }

  private freezerFile(): [string, string, string] {
    if (this.mode === 'v2') return [posix.join(this.paths[''], 'cgroup.freeze'), '1', '0'];
    const dir = this.dirOf('freezer');
    if (!dir) throw new TsruncError('pause needs the freezer cgroup controller, which is not mounted on this host');
    return [posix.join(dir, 'freezer.state'), 'FROZEN', 'THAWED'];
  }

  frozen(): boolean {
    try {
      if (this.mode === 'v2') return /^frozen 1$/m.test(readFileSync(posix.join(this.paths[''], 'cgroup.events'), 'utf8'));
      return readFileSync(posix.join(this.dirOf('freezer')!, 'freezer.state'), 'utf8').trim() === 'FROZEN';
    } catch {
      return false;
    }
  }

  async freeze(): Promise<void> {
    const [file, on] = this.freezerFile();
    for (let i = 0; i < 1000; i++) {
      // a task that forks while freezing can leave the group FREEZING: ask again until FROZEN
      if (i % 10 === 0) writeFileSync(file, on);
      if (this.frozen()) return;
      await new Promise((r) => setTimeout(r, 2));
    }
    writeFileSync(file, this.freezerFile()[2]);
    throw new TsruncError('the container did not freeze within 10 s; it was thawed again');
  }

  async thaw(): Promise<void> {
    const [file, , off] = this.freezerFile();
    writeFileSync(file, off);
    for (let i = 0; i < 500 && this.frozen(); i++) await new Promise((r) => setTimeout(r, 2));
  }

  stats(): CgroupStats {
    return readStats(this.mode === 'v2' ? 'v2' : 'v1', (c) => this.dirOf(c));
  }

  oomKills(): number {
    const dir = this.dirOf('memory');
    if (!dir) return 0;
    try {
      const f = this.mode === 'v2' ? 'memory.events' : 'memory.oom_control';
      const m = /^oom_kill (\d+)$/m.exec(readFileSync(posix.join(dir, f), 'utf8'));
      return m ? Number(m[1]) : 0;
    } catch {
      return 0;
    }
  }

  mountSources(): CgroupMountSource[] {
    return this.hier.map((h) => ({
      name: h.name,
      fstype: h.fstype,
      data: h.controllers.map((c) => (c.startsWith('name=') ? `none,${c}` : c)).join(','),
      hostDir: this.paths[h.name],
    }));
  }
}

/** On v2 a cgroup gets a controller only if every ancestor enables it for its children. */
function enableControllers(mountpoint: string, dir: string): void {
  const rel = posix.relative(mountpoint, dir).split('/').filter(Boolean);
  let cur = mountpoint;
  for (const part of rel.slice(0, -1).concat([''])) {
    try {
      const avail = readFileSync(posix.join(cur, 'cgroup.controllers'), 'utf8').trim().split(/\s+/).filter(Boolean);
      if (avail.length) writeFileSync(posix.join(cur, 'cgroup.subtree_control'), avail.map((c) => `+${c}`).join(' '));
    } catch {
      /* a controller in use by processes of this cgroup cannot be delegated: leave it */
    }
    if (part) cur = posix.join(cur, part);
  }
}

/** rmdir of a cgroup directory and any sub-cgroups the container made; true when gone. */
function removeTree(dir: string): boolean {
  if (!existsSync(dir)) return true;
  try {
    rmdirSync(dir);
    return true;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return true;
    if (code === 'ENOTEMPTY' || code === 'EBUSY') {
      // sub-cgroups first (only directories matter in cgroupfs)
      let removedChild = false;
      try {
        for (const ent of subdirs(dir)) removedChild = removeTree(posix.join(dir, ent)) || removedChild;
      } catch {
        /* gone meanwhile */
      }
      if (removedChild) {
        try {
          rmdirSync(dir);
          return true;
        } catch {
          return false;
        }
      }
    }
    return false;
  }
}

function subdirs(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name);
}

export function defaultCgroupsPath(id: string): string {
  return `/tsrunc/${id}`;
}

/** The manager for a container's cgroupsPath on this host. */
export function cgroupManager(cgroupsPath: string, systemd = false): CgroupManager {
  if (systemd) throw new TsruncError('--systemd-cgroup is not supported: systemd is not running on this host');
  if (/^[^/]*:[^/]*:/.test(cgroupsPath))
    throw new TsruncError(`linux.cgroupsPath: "${cgroupsPath}" is in systemd slice:prefix:name form; use a path (systemd cgroups are not supported)`);
  if (cgroupsPath.split('/').includes('..')) throw new TsruncError(`linux.cgroupsPath: must not contain "..", got "${cgroupsPath}"`);
  const hier = hostHierarchies();
  const mode = detectMode(hier);
  const own = ownCgroups();
  const paths: Record<string, string> = {};
  for (const h of hier) paths[h.name] = resolveCgroupDir(h, cgroupsPath, own);
  return new FsCgroupManager(mode, hier, paths);
}

/** A manager for directories recorded earlier (delete, kill --all): no re-resolution. */
export function cgroupManagerFromPaths(mode: CgroupMode, paths: Record<string, string>): CgroupManager {
  const hier = hostHierarchies().filter((h) => h.name in paths);
  return new FsCgroupManager(mode, hier, paths);
}

/** A cgroup that already holds processes belongs to someone else: restoring into it would mix (and later kill) them. */
export function refuseBusyCgroup(cgroups: { pids(): number[]; paths: Record<string, string> }): void {
  const busy = cgroups.pids();
  if (busy.length)
    throw new TsruncError(`cgroup ${Object.values(cgroups.paths)[0]} already holds processes (pid ${busy.slice(0, 3).join(', ')}) of another container; give this one its own linux.cgroupsPath`);
}
