/**
 * The CRIU driver: libcriu (CRIU's RPC client library) through koffi. It knows processes,
 * image directories and CRIU options; nothing of containers. Heavy (koffi, a native
 * library): import it lazily, only on the checkpoint/restore/check paths.
 */
import { closeSync, constants, existsSync, openSync, readFileSync, realpathSync, writeFileSync } from 'node:fs';
import { libc, libcFunc } from '../src/linux/libc.js';
import { delimiter, posix } from 'node:path';

import type { Koffi } from '../src/linux/libc.js';
type Fn = (...a: unknown[]) => unknown;

export class CriuError extends Error {
  constructor(message: string, readonly logLines: string[] = []) {
    super(message);
    this.name = 'CriuError';
  }
}

/** What CRIU tells the caller while it works (the RPC "notify" messages). */
export type CriuEvent =
  | { type: 'pre-dump' | 'post-dump' | 'network-lock' | 'network-unlock' | 'post-setup-namespaces' | 'pre-resume' | 'post-resume' | 'status-ready' | 'pre-stream' | 'other'; action: string }
  /** the restored tree's root exists with its namespaces, before anything runs: OCI prestart/createRuntime time */
  | { type: 'setup-namespaces'; action: string; pid: number }
  | { type: 'post-restore'; action: string; pid: number }
  /** restore made a new pty pair for a terminal whose master was outside the tree; fd is its master, owned by the receiver */
  | { type: 'orphan-pts-master'; action: string; fd: number };

export interface CriuCommon {
  imagesDir: string;
  workDir?: string;
  logFile: string;
  logLevel?: number;
  tcpEstablished?: boolean;
  extUnixSk?: boolean;
  shellJob?: boolean;
  fileLocks?: boolean;
  manageCgroupsMode?: 'soft' | 'full' | 'strict' | 'ignore';
  /** key -> value: a mount CRIU must not dump but treat as given (dump: key=val=mountpoint; restore: val = source) */
  extMounts?: [string, string][];
  /** external resources, e.g. "file[mnt_id:inode]" */
  externals?: string[];
  emptyNs?: number;
  autoDedup?: boolean;
  lazyPages?: boolean;
  /** CRIU writes a byte here when it is ready: a lazy dump's page server listens, a lazy-pages daemon serves */
  statusFd?: number;
  lsmProfile?: string;
  lsmMountContext?: string;
  onEvent?: (e: CriuEvent) => void;
}

export interface DumpOptions extends CriuCommon {
  pid: number;
  leaveRunning?: boolean;
  tcpSkipInFlight?: boolean;
  linkRemap?: boolean;
  freezeCgroup?: string;
  parentImages?: string;
  trackMem?: boolean;
  pageServer?: { address: string; port: number };
  orphanPtsMaster?: boolean;
  /** memory only, the tree keeps running; needs soft-dirty tracking */
  preDump?: boolean;
}

export interface RestoreOptions extends CriuCommon {
  root: string;
  /** the controller ("" for all) -> the cgroup the restored tree goes into */
  cgRoots?: [string, string][];
  /** fd in this process -> the key CRIU recorded for what the tree had there */
  inheritFds?: [number, string][];
  /** a pty slave whose master was outside the tree gets a new pair; the master comes as an event */
  orphanPtsMaster?: boolean;
}

const CG_MODES = { ignore: 0, soft: 1, full: 2, strict: 3 } as const;
const F_DUPFD = 0, F_SETFD = 2;

/** Finds the libcriu that belongs to the CRIU binary in use. */
export function findLibcriu(criuBinary: string): string | undefined {
  const cands: string[] = [];
  if (process.env.TSRUNC_LIBCRIU) cands.push(process.env.TSRUNC_LIBCRIU);
  try {
    // scripts/setup's wrapper names its prefix; a real binary sits in PREFIX/sbin
    const text = readFileSync(criuBinary, 'utf8').slice(0, 4096);
    const m = /--library-path (\S+)/.exec(text);
    if (m) cands.push(posix.join(m[1], 'libcriu.so.2'));
  } catch {
    /* not readable */
  }
  try {
    const real = realpathSync(criuBinary);
    cands.push(posix.join(posix.dirname(real), '..', 'lib', 'x86_64-linux-gnu', 'libcriu.so.2'), posix.join(posix.dirname(real), '..', 'lib', 'libcriu.so.2'));
  } catch {
    /* dangling */
  }
  cands.push('/opt/tsrunc-criu/usr/lib/x86_64-linux-gnu/libcriu.so.2', '/usr/lib/x86_64-linux-gnu/libcriu.so.2', '/usr/lib64/libcriu.so.2', '/usr/lib/libcriu.so.2');
  return cands.find((c) => existsSync(c));
}

/** The CRIU binary: --criu PATH, else `criu` on PATH. */
export function findCriu(explicit?: string): string | undefined {
  if (explicit) return existsSync(explicit) ? explicit : undefined;
  for (const dir of (process.env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin').split(delimiter)) {
    const p = posix.join(dir, 'criu');
    if (existsSync(p)) return p;
  }
  return undefined;
}

/** The last error lines of a CRIU log, for a message the user can act on. */
export function criuErrors(logPath: string, max = 3): string[] {
  try {
    const lines = readFileSync(logPath, 'utf8').split('\n');
    const errs = lines.filter((l) => /Error|FAILED|failed/.test(l) && !/RLIMIT_NOFILE/.test(l));
    return errs.slice(-max).map((l) => l.replace(/^\(\d+\.\d+\)\s*/, '').trim());
  } catch {
    return [];
  }
}

export class Criu {
  private readonly k: Koffi;
  private readonly f: Record<string, Fn> = {};
  private readonly fcntl: Fn;
  private notifyCb: import('koffi').IKoffiRegisteredCallback | undefined;
  private eventError: unknown;
  private readonly notifyProto: import('koffi').IKoffiCType;
  private readonly featureSize: number;

  constructor(readonly binary: string, libcriuPath: string) {
    this.k = libc().koffi;
    const libdir = posix.dirname(libcriuPath);
    // libcriu needs libprotobuf-c; a private prefix has its own copy that the system loader would not find
    const pb = posix.join(libdir, 'libprotobuf-c.so.1');
    if (existsSync(pb)) this.k.load(pb);
    const lib = this.k.load(libcriuPath);
    this.fcntl = libcFunc('int fcntl(int, int, ...)');
    const decl = [
      'int criu_init_opts(void)', 'void criu_set_service_binary(const char *)', 'int criu_get_version(void)',
      'void criu_set_pid(int)', 'void criu_set_images_dir_fd(int)', 'void criu_set_work_dir_fd(int)',
      'void criu_set_parent_images(const char *)', 'void criu_set_log_file(const char *)', 'void criu_set_log_level(int)',
      'void criu_set_leave_running(bool)', 'void criu_set_tcp_established(bool)', 'void criu_set_tcp_skip_in_flight(bool)',
      'void criu_set_ext_unix_sk(bool)', 'void criu_set_shell_job(bool)', 'void criu_set_file_locks(bool)',
      'void criu_set_link_remap(bool)', 'void criu_set_auto_dedup(bool)',
      'void criu_set_track_mem(bool)', 'void criu_set_orphan_pts_master(bool)', 'void criu_set_root(const char *)',
      'void criu_set_manage_cgroups(bool)', 'void criu_set_manage_cgroups_mode(int)', 'int criu_set_freeze_cgroup(const char *)',
      'int criu_add_ext_mount(const char *, const char *)', 'int criu_add_cg_root(const char *, const char *)',
      'int criu_add_inherit_fd(int, const char *)', 'int criu_add_external(const char *)', 'void criu_set_empty_ns(int)',
      'int criu_set_page_server_address_port(const char *, int)', 'int criu_set_lsm_profile(const char *)',
      'int criu_set_lsm_mount_context(const char *)', 'int criu_dump(void)', 'int criu_pre_dump(void)', 'int criu_restore_child(void)',
      'int criu_notify_pid(void *)', 'int criu_get_orphan_pts_master_fd(void)',
    ];
    for (const d of decl) {
      const name = /(criu_\w+)\(/.exec(d)![1];
      this.f[name] = lib.func(d) as Fn;
    }
    const features = this.k.struct('tsrunc_criu_feature_check', { mem_track: 'bool', lazy_pages: 'bool', pidfd_store: 'bool' });
    this.f.criu_feature_check = lib.func('int criu_feature_check(_Inout_ tsrunc_criu_feature_check *features, size_t size)') as Fn;
    this.featureSize = this.k.sizeof(features);
    this.notifyProto = this.k.proto('int tsrunc_criu_notify(const char *action, void *na)');
    this.f.criu_set_notify_cb = lib.func('void criu_set_notify_cb(tsrunc_criu_notify *cb)') as Fn;
    try {
      // libcriu >= 4.2: a CRIU config file, the only way through libcriu to options it has no setter for (lazy pages)
      this.f.criu_set_config_file = lib.func('int criu_set_config_file(const char *)') as Fn;
    } catch {
      /* an older libcriu: no post-copy */
    }
  }

  /** Whether this libcriu can pass lazy-pages (post-copy) options. */
  get canLazy(): boolean {
    return this.f.criu_set_config_file !== undefined;
  }

  /** CRIU's version as a number: 40101 for 4.1.1. */
  version(): number {
    this.reset();
    return Number(this.f.criu_get_version());
  }

  /** What this CRIU and kernel can do beyond the basics (CRIU's own feature check). */
  features(): { memTrack: boolean; lazyPages: boolean } {
    this.reset();
    const f = { mem_track: true, lazy_pages: true, pidfd_store: false };
    const r = Number(this.f.criu_feature_check(f, this.featureSize));
    if (r < 0) throw new CriuError(`CRIU's feature check failed (${r})`);
    return { memTrack: f.mem_track, lazyPages: f.lazy_pages };
  }

  private reset(): void {
    // CRIU stops a task leaving its parasite with a hardware breakpoint; on some virtual CPUs
    // (seen: an Oxide "Turin-like" guest) the breakpoint never fires and the dump hangs for
    // good. Fault 130 is CRIU's own switch for stepping to the sigreturn by syscall tracing
    // instead (CRIU once forced it for all Xen guests); it costs next to nothing.
    if (process.env.CRIU_FAULT === undefined) process.env.CRIU_FAULT = '130';
    if (Number(this.f.criu_init_opts()) < 0) throw new CriuError('cannot initialise libcriu');
    this.f.criu_set_service_binary(this.binary);
  }

  /** An fd CRIU's own process can use: libcriu forks and execs CRIU, so no close-on-exec. */
  private inheritable(fd: number): number {
    const d = Number(this.fcntl(fd, F_DUPFD, 'int', 200));
    if (d < 0) throw new CriuError(`cannot pass fd ${fd} to CRIU`);
    this.fcntl(d, F_SETFD, 'int', 0);
    return d;
  }

  private dirFd(path: string): number {
    const fd = openSync(path, constants.O_RDONLY | constants.O_DIRECTORY);
    const d = this.inheritable(fd);
    closeSync(fd);
    return d;
  }

  private common(o: CriuCommon, opened: number[]): void {
    this.reset();
    this.eventError = undefined;
    const img = this.dirFd(o.imagesDir);
    opened.push(img);
    this.f.criu_set_images_dir_fd(img);
    const work = this.dirFd(o.workDir ?? o.imagesDir);
    opened.push(work);
    this.f.criu_set_work_dir_fd(work);
    this.f.criu_set_log_file(o.logFile);
    this.f.criu_set_log_level(o.logLevel ?? 4);
    if (o.tcpEstablished) this.f.criu_set_tcp_established(true);
    if (o.extUnixSk) this.f.criu_set_ext_unix_sk(true);
    if (o.shellJob) this.f.criu_set_shell_job(true);
    if (o.fileLocks) this.f.criu_set_file_locks(true);
    if (o.autoDedup) this.f.criu_set_auto_dedup(true);
    const config: string[] = [];
    if (o.lazyPages) {
      if (!this.canLazy) throw new CriuError('lazy pages need libcriu >= 4.2 (criu_set_config_file); install CRIU >= 4.2');
      config.push('lazy-pages');
      const ps = (o as DumpOptions).pageServer;
      if (ps) config.push(`address ${ps.address}`, `port ${ps.port}`);
    }
    if (o.statusFd !== undefined) {
      const d = this.inheritable(o.statusFd); // CRIU (our forked swrk child) inherits it under the same number
      opened.push(d);
      config.push(`status-fd ${d}`);
    }
    if (config.length) {
      const file = posix.join(o.workDir ?? o.imagesDir, `tsrunc-criu-${process.pid}.conf`);
      writeFileSync(file, config.join('\n') + '\n', { mode: 0o600 });
      if (Number(this.f.criu_set_config_file(file)) < 0) throw new CriuError(`libcriu refused the config file ${file}`);
    }
    this.f.criu_set_manage_cgroups(true);
    this.f.criu_set_manage_cgroups_mode(CG_MODES[o.manageCgroupsMode ?? 'soft']);
    for (const [k, v] of o.extMounts ?? []) this.f.criu_add_ext_mount(k, v);
    for (const e of o.externals ?? []) this.f.criu_add_external(e);
    if (o.emptyNs) this.f.criu_set_empty_ns(o.emptyNs);
    if (o.lsmProfile) this.f.criu_set_lsm_profile(o.lsmProfile);
    if (o.lsmMountContext) this.f.criu_set_lsm_mount_context(o.lsmMountContext);
    const onEvent = o.onEvent;
    if (onEvent) {
      this.notifyCb = this.k.register((action: string, na: unknown) => {
        const known = ['pre-dump', 'post-dump', 'network-lock', 'network-unlock', 'setup-namespaces', 'post-setup-namespaces',
          'pre-resume', 'post-resume', 'status-ready', 'orphan-pts-master', 'pre-stream'];
        try {
          if (action === 'post-restore' || action === 'setup-namespaces') onEvent({ type: action, action, pid: Number(this.f.criu_notify_pid(na)) });
          else if (action === 'orphan-pts-master') {
            const fd = Number(this.f.criu_get_orphan_pts_master_fd());
            if (fd < 0) throw new CriuError('CRIU sent no pty master');
            onEvent({ type: action, action, fd });
          }
          else onEvent({ type: (known.includes(action) ? action : 'other') as 'other', action });
          return 0;
        } catch (e) {
          this.eventError ??= e; // reported instead of CRIU's "notify failed"
          return -1; // a failing hook makes CRIU abort, as runc's hooks do
        }
      }, this.k.pointer(this.notifyProto));
      this.f.criu_set_notify_cb(this.notifyCb);
    }
  }

  private finish(opened: number[]): void {
    for (const fd of opened) {
      try {
        closeSync(fd);
      } catch {
        /* closed */
      }
    }
    if (this.notifyCb) {
      this.k.unregister(this.notifyCb);
      this.notifyCb = undefined;
    }
  }

  private fail(what: string, ret: number, o: CriuCommon): never {
    if (this.eventError) throw this.eventError;
    const log = posix.join(o.workDir ?? o.imagesDir, o.logFile);
    const lines = criuErrors(log);
    const why = lines.length ? lines.join('; ') : `libcriu returned ${ret}`;
    throw new CriuError(`CRIU ${what} failed: ${why} (log: ${log})`, lines);
  }

  dump(o: DumpOptions): void {
    const opened: number[] = [];
    try {
      this.common(o, opened);
      this.f.criu_set_pid(o.pid);
      if (o.leaveRunning) this.f.criu_set_leave_running(true);
      if (o.tcpSkipInFlight) this.f.criu_set_tcp_skip_in_flight(true);
      if (o.linkRemap) this.f.criu_set_link_remap(true);
      if (o.orphanPtsMaster) this.f.criu_set_orphan_pts_master(true);
      if (o.freezeCgroup) this.f.criu_set_freeze_cgroup(o.freezeCgroup);
      if (o.parentImages) this.f.criu_set_parent_images(o.parentImages);
      if (o.trackMem) this.f.criu_set_track_mem(true);
      // a lazy dump *listens* there for the lazy-pages daemon (CRIU's --address/--port); otherwise it sends its pages to a page server
      if (o.pageServer && !o.lazyPages) this.f.criu_set_page_server_address_port(o.pageServer.address, o.pageServer.port);
      const r = Number(o.preDump ? this.f.criu_pre_dump() : this.f.criu_dump());
      if (r < 0) this.fail(o.preDump ? 'pre-dump' : 'dump', r, o);
    } finally {
      this.finish(opened);
    }
  }

  /** Restores the tree as a child of this process; returns the pid of its root. */
  restore(o: RestoreOptions): number {
    const opened: number[] = [];
    try {
      this.common(o, opened);
      this.f.criu_set_root(o.root);
      if (o.orphanPtsMaster) this.f.criu_set_orphan_pts_master(true);
      for (const [ctrl, path] of o.cgRoots ?? []) this.f.criu_add_cg_root(ctrl === '' ? null : ctrl, path);
      for (const [fd, key] of o.inheritFds ?? []) {
        const d = this.inheritable(fd);
        opened.push(d);
        this.f.criu_add_inherit_fd(d, key);
      }
      const pid = Number(this.f.criu_restore_child());
      if (pid < 0) this.fail('restore', pid, o);
      return pid;
    } finally {
      this.finish(opened);
    }
  }
}
