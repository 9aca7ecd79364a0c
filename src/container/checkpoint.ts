/** checkpoint: CRIU dumps the container's process tree into an image directory, as runc does. */
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { posix, resolve } from 'node:path';
import { TsruncError } from '../errors.js';
import { checkDestinationInRoot, newNamespaces, parseMountOptions } from '../init/compile.js';
import { StateStore, writeFileAtomic, type ContainerRecord } from '../state/store.js';
import { openCriu, versionString } from './criu.js';
import { release } from 'node:os';
import { destroyContainer } from './delete.js';
import { ROOTFS_SNAPSHOT } from './create.js';
import { CriuError, type Criu, type CriuCommon, type DumpOptions } from '../../criu/driver.js';

export interface CheckpointOptions {
  imagePath?: string;
  workPath?: string;
  parentPath?: string;
  leaveRunning?: boolean;
  tcpEstablished?: boolean;
  tcpSkipInFlight?: boolean;
  linkRemap?: boolean;
  extUnixSk?: boolean;
  shellJob?: boolean;
  fileLocks?: boolean;
  lazyPages?: boolean;
  pageServer?: string;
  preDump?: boolean;
  manageCgroupsMode?: 'soft' | 'full' | 'strict' | 'ignore';
  emptyNs?: string[];
  autoDedup?: boolean;
  criu?: string;
}

/** How init's stdin/stdout/stderr were wired, so restore can hand it the same kind of thing. */
export interface StdioRecord {
  fd: number;
  /** what /proc/PID/fd/N said: "pipe:[123]", "/dev/null", "socket:[9]" */
  target: string;
  /** the CRIU key to inherit it by on restore (pipes by inode, files as externals) */
  key?: string;
  /** st_mode of a file: CRIU accepts only the same kind and mode in its place */
  mode?: number;
  /** the container's pty slave: CRIU restores it with a new pty pair (orphan-pts-master) */
  tty?: boolean;
}

/** A mount CRIU must leave alone: how restore finds its source again. */
export interface ExternalMount {
  key: string;
  kind: 'bind' | 'cgroup' | 'mask';
  /** for bind: the mount's destination in the spec; for cgroup: the hierarchy name */
  ref: string;
}

/** Written next to CRIU's files: what tsrunc needs to bring the container back. */
export interface CheckpointMeta {
  format: 1;
  id: string;
  pid: number;
  created: string;
  checkpointed: string;
  bundle: string;
  config: ContainerRecord['config'];
  cgroupMode: ContainerRecord['cgroupMode'];
  stdio: StdioRecord[];
  externalMounts: ExternalMount[];
  newPidNs: boolean;
  annotations?: Record<string, string>;
  /** the tree at checkpoint time (for inspect) */
  processes?: ProcessInfo[];
}

export const META_FILE = 'tsrunc-checkpoint.json';
/** the rootfs snapshot of the container, in a checkpoint directory */
export const IMAGE_SNAPSHOT = 'tsrunc-rootfs-snapshot.json';
const NS_NET = 0x40000000;

export function stdioOf(pid: number): StdioRecord[] {
  const out: StdioRecord[] = [];
  for (const fd of [0, 1, 2]) {
    let target: string;
    try {
      target = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue; // closed
    }
    let key: string | undefined;
    if (target.startsWith('pipe:')) key = target;
    else if (/^\/dev\/pts\/\d+$/.test(target)) {
      // the container's terminal: its master is outside the tree (the console socket's peer holds it)
      out.push({ fd, target, tty: true });
      continue;
    } else if (target.startsWith('/')) {
      // a file of the caller's, outside the container: CRIU dumps it as external and restore hands a new one in
      const mnt = /mnt_id:\s*(\d+)/.exec(readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'));
      const st = statSync(`/proc/${pid}/fd/${fd}`);
      if (mnt) key = `file[${Number(mnt[1]).toString(16)}:${st.ino.toString(16)}]`;
      out.push({ fd, target, key, mode: st.mode });
      continue;
    }
    out.push({ fd, target, key });
  }
  return out;
}

/** Bind mounts from the host, the host's cgroup directories, and masked files (binds of /dev/null). */
export function externalMounts(rec: ContainerRecord, pid: number): ExternalMount[] {
  const spec = rec.config;
  const out: ExternalMount[] = [];
  const cgroupNs = newNamespaces(spec).has('cgroup');
  for (const m of spec.mounts ?? []) {
    const dest = checkDestinationInRoot(rec.rootfs, posix.normalize(m.destination), 'mounts');
    if (m.type === 'cgroup') {
      if (cgroupNs) continue;
      for (const name of Object.keys(rec.cgroupPaths)) out.push({ key: name ? posix.join(dest, name) : dest, kind: 'cgroup', ref: name });
    } else if (m.type === 'bind' || parseMountOptions(m.options).bind) {
      out.push({ key: dest, kind: 'bind', ref: m.destination });
    }
  }
  for (const p of spec.linux?.maskedPaths ?? []) {
    try {
      if (!statSync(`/proc/${pid}/root${p}`).isDirectory()) out.push({ key: posix.normalize(p), kind: 'mask', ref: p });
    } catch {
      /* not there: nothing was masked */
    }
  }
  return out;
}

export function criuCommonOptions(o: CheckpointOptions, imagesDir: string, workDir: string, logFile: string): CriuCommon {
  let emptyNs = 0;
  for (const ns of o.emptyNs ?? []) {
    if (ns !== 'network') throw new TsruncError(`--empty-ns ${ns}: only "network" is supported`);
    emptyNs |= NS_NET;
  }
  return {
    imagesDir, workDir, logFile, tcpEstablished: o.tcpEstablished, extUnixSk: o.extUnixSk, shellJob: o.shellJob,
    fileLocks: o.fileLocks, manageCgroupsMode: o.manageCgroupsMode, autoDedup: o.autoDedup, lazyPages: o.lazyPages, emptyNs,
  };
}

/** What one process of the tree was at checkpoint time, for `inspect`. */
export interface ProcessInfo {
  pid: number;
  /** the pid inside the container's pid namespace */
  nspid: number;
  ppid: number;
  comm: string;
  args: string[];
  threads: number;
}

/** The process tree below init, read from /proc (while frozen, so it holds still). */
export function processTree(init: number): ProcessInfo[] {
  const out: ProcessInfo[] = [];
  const visit = (pid: number, ppid: number) => {
    let status: string;
    try {
      status = readFileSync(`/proc/${pid}/status`, 'utf8');
    } catch {
      return;
    }
    const field = (k: string) => new RegExp(`^${k}:\\s*(.*)$`, 'm').exec(status)?.[1] ?? '';
    const ns = field('NSpid').split(/\s+/).filter(Boolean);
    let args: string[] = [];
    try {
      args = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter((a, i, all) => a !== '' || i < all.length - 1);
    } catch {
      /* gone */
    }
    out.push({ pid, nspid: Number(ns[ns.length - 1] ?? pid), ppid, comm: field('Name'), args, threads: Number(field('Threads')) || 1 });
    const kids = new Set<number>();
    try {
      for (const t of readdirSync(`/proc/${pid}/task`)) {
        for (const c of readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').trim().split(/\s+/)) if (c) kids.add(Number(c));
      }
    } catch {
      /* gone */
    }
    for (const k of kids) visit(k, pid);
  };
  visit(init, 0);
  return out;
}

export function parsePageServer(s?: string): { address: string; port: number } | undefined {
  if (!s) return undefined;
  const m = /^(.*):(\d+)$/.exec(s);
  if (!m) throw new TsruncError(`--page-server ${s}: must be ADDRESS:PORT`);
  return { address: m[1], port: Number(m[2]) };
}

/**
 * What to tell CRIU to dump the container into imagesDir (its log into workDir), and what restore
 * needs besides CRIU's files; descriptors.json is written as runc does.
 */
export function dumpPlan(rec: ContainerRecord, o: CheckpointOptions, imagesDir: string, workDir: string, leaveRunning: boolean): { dump: DumpOptions; meta: CheckpointMeta } {
  const stdio = stdioOf(rec.pid);
  const ext = externalMounts(rec, rec.pid);
  const processes = processTree(rec.pid);
  const freezer = rec.cgroupMode === 'v2' ? rec.cgroupPaths[''] : rec.cgroupPaths['freezer'];
  const pageServer = parsePageServer(o.pageServer);
  // runc-compatible: what init's fds 0-2 were
  writeFileAtomic(posix.join(imagesDir, 'descriptors.json'), JSON.stringify(stdio.map((s) => s.target)), 0o644);
  const dump: DumpOptions = {
    ...criuCommonOptions(o, imagesDir, workDir, o.preDump ? 'pre-dump.log' : 'dump.log'),
    pid: rec.pid,
    leaveRunning: leaveRunning || o.preDump,
    tcpSkipInFlight: o.tcpSkipInFlight,
    linkRemap: o.linkRemap,
    freezeCgroup: freezer,
    parentImages: o.parentPath,
    trackMem: o.preDump,
    pageServer,
    preDump: o.preDump,
    orphanPtsMaster: stdio.some((s) => s.tty),
    extMounts: ext.map((e) => [e.key, e.key]),
    externals: stdio.filter((s) => s.key?.startsWith('file[')).map((s) => s.key!),
  };
  const meta: CheckpointMeta = {
    format: 1, id: rec.id, pid: rec.pid, created: rec.created, checkpointed: new Date().toISOString(), bundle: rec.bundle,
    config: rec.config, cgroupMode: rec.cgroupMode, stdio, externalMounts: ext, newPidNs: newNamespaces(rec.config).has('pid'),
    annotations: rec.annotations, processes,
  };
  return { dump, meta };
}

/** CRIU's failure as the user should read it. */
export function dumpError(id: string, e: unknown, criuVersion: () => number): unknown {
  if (e instanceof CriuError && e.logLines.some((l) => /sockets: Can't get 1:(16|34) opt/.test(l)))
    return new TsruncError(`checkpoint of "${id}": CRIU ${versionString(criuVersion())} cannot dump the container's TCP/UDP sockets on kernel ${release()} (SO_PASSCRED/SO_PASSSEC); install CRIU >= 4.2 (scripts/setup does)`);
  if (e instanceof CriuError) return new TsruncError(`checkpoint of "${id}": ${e.message}`);
  return e;
}

/** CRIU dumps the container (see dumpPlan). */
export function dumpContainer(rec: ContainerRecord, criu: Criu, o: CheckpointOptions, imagesDir: string, workDir: string, leaveRunning: boolean): CheckpointMeta {
  const { dump, meta } = dumpPlan(rec, o, imagesDir, workDir, leaveRunning);
  try {
    criu.dump(dump);
  } catch (e) {
    throw dumpError(rec.id, e, () => criu.version());
  }
  return meta;
}

/** Lazy pages (post-copy) work here? CRIU >= 4.2's libcriu, userfaultfd, and pipes of 4 MiB. */
export function checkLazy(criu: Criu): void {
  if (!criu.canLazy) throw new TsruncError(`lazy pages (post-copy) need CRIU >= 4.2 (its libcriu passes the option); this is CRIU ${versionString(criu.version())}`);
  if (!criu.features().lazyPages) throw new TsruncError('lazy pages (post-copy) need userfaultfd, which this kernel lacks (see "tsrunc check")');
  const max = Number(readFileSync('/proc/sys/fs/pipe-max-size', 'utf8').trim());
  if (max < 4194304)
    throw new TsruncError(`lazy pages (post-copy) need fs.pipe-max-size >= 4194304 (CRIU grows its page pipes to 4 MiB; it is ${max} here): run "sysctl -w fs.pipe-max-size=4194304"`);
}

/** Refuses what cannot be checkpointed, before anything is touched. */
export function checkCheckpointable(store: StateStore, rec: ContainerRecord, criu: Criu, o: CheckpointOptions): void {
  const status = store.status(rec);
  if (status !== 'running' && status !== 'paused')
    throw new TsruncError(`cannot checkpoint container "${rec.id}": it is ${status}, not running`);
  if (o.preDump && !criu.features().memTrack)
    throw new TsruncError('--pre-dump needs soft-dirty memory tracking, which this kernel lacks (see "tsrunc check")');
  if (o.lazyPages) checkLazy(criu);
}

export async function checkpointContainer(store: StateStore, id: string, o: CheckpointOptions): Promise<void> {
  const unlock = await store.lock(id);
  try {
    const rec = store.load(id);
    const criu = openCriu(o.criu);
    checkCheckpointable(store, rec, criu, o);
    const imagesDir = resolve(o.imagePath ?? 'checkpoint');
    const workDir = resolve(o.workPath ?? imagesDir);
    mkdirSync(imagesDir, { recursive: true });
    mkdirSync(workDir, { recursive: true });
    const meta = dumpContainer(rec, criu, o, imagesDir, workDir, o.leaveRunning === true);
    writeFileAtomic(posix.join(imagesDir, META_FILE), JSON.stringify(meta, null, 1), 0o644);
    // the create-time rootfs snapshot travels with the image, so a restored container can still --export its changes
    const snap = posix.join(store.dir(id), ROOTFS_SNAPSHOT);
    if (existsSync(snap)) copyFileSync(snap, posix.join(imagesDir, IMAGE_SNAPSHOT));
    // without --leave-running the container is gone afterwards, as with runc
    if (!o.leaveRunning && !o.preDump) await destroyContainer(store, rec);
  } finally {
    unlock();
  }
}
