/** The plan compiler: a validated spec and the runtime's facts in, the ordered init ops out. */
import { lstatSync, readlinkSync, statSync } from 'node:fs';
import { posix } from 'node:path';
import { SpecError } from '../errors.js';
import type { Spec, Mount, Namespace, Process, Hook } from '../spec/types.js';
import {
  CAPABILITIES, NAMESPACES, RLIMITS, MS, MOUNT_FLAG_OPTIONS, PROPAGATION_OPTIONS,
  CLONE_NEWCGROUP, CLONE_NEWTIME, CLONE_NEWNET,
} from '../linux/tables.js';
import { MOUNT_SYSFS_FALLBACK } from './opcodes.js';
import type { InitPlan, PlanOp, Field, OpName } from './plan.js';

/** One cgroup hierarchy as the `cgroup` mount type exposes it inside the container. */
export interface CgroupMountSource {
  /** name under /sys/fs/cgroup: "memory", "cpu", "systemd", "unified" ... ("" for a pure v2 host) */
  name: string;
  fstype: 'cgroup' | 'cgroup2';
  /** mount data for a fresh mount in a cgroup namespace, e.g. "memory" or "none,name=systemd" */
  data: string;
  /** the container's own cgroup directory on the host, bind-mounted when there is no cgroup namespace */
  hostDir: string;
}

export interface CompileContext {
  rootfs: string;
  bundle: string;
  fifoPath?: string;
  foreground: boolean;
  noPivot: boolean;
  /** the session keyring name (runc: _ses.<id>); undefined with --no-new-keyring */
  sessionKeyring?: string;
  preserveFds: number;
  cgroupMounts: CgroupMountSource[];
  lastCap: number;
  /** the runtime's own RLIMIT_NOFILE hard limit and whether it may raise it */
  nofileHard: number;
  canRaiseRlimits: boolean;
  /** process.terminal: where the pty master goes; undefined = the foreground executor proxies it */
  consoleSocket?: string;
  /** the compiled linux.seccomp filter */
  seccomp?: CompiledSeccomp;
  /** the LSM label file in /proc/self/attr and the value the process is exec'd with */
  lsm?: { attr: string; value: string };
}

/** What the seccomp compiler hands the plan: the BPF program and how to load it. */
export interface CompiledSeccomp {
  filter: Buffer;
  flags: number;
  notify: boolean;
  listenerPath?: string;
}

/** The facts the process part of a plan needs (the container's init or an exec'd process). */
export type ProcessContext = Pick<CompileContext, 'lastCap' | 'nofileHard' | 'canRaiseRlimits' | 'consoleSocket' | 'seccomp' | 'lsm' | 'preserveFds'>;

const S_IFCHR = 0o020000, S_IFBLK = 0o060000, S_IFIFO = 0o010000;
const DEFAULT_DEVICES = [
  { path: '/dev/null', major: 1, minor: 3 }, { path: '/dev/zero', major: 1, minor: 5 },
  { path: '/dev/full', major: 1, minor: 7 }, { path: '/dev/random', major: 1, minor: 8 },
  { path: '/dev/urandom', major: 1, minor: 9 }, { path: '/dev/tty', major: 5, minor: 0 },
];
const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

class PlanBuilder {
  ops: PlanOp[] = [];
  add(op: OpName, what: string, ...fields: Field[]): void {
    this.ops.push({ op, fields, what });
  }
}

interface ParsedOptions {
  flags: number;
  propagation: number[];
  data: string[];
  bind: boolean;
  recursive: boolean;
}

export function parseMountOptions(options: string[] = []): ParsedOptions {
  let flags = 0;
  const propagation: number[] = [];
  const data: string[] = [];
  let bind = false, recursive = false;
  for (const o of options) {
    if (o in MOUNT_FLAG_OPTIONS) {
      const [set, f] = MOUNT_FLAG_OPTIONS[o];
      if (f & MS.BIND) {
        bind = true;
        if (f & MS.REC) recursive = true;
        continue;
      }
      flags = set ? flags | f : flags & ~f;
    } else if (o in PROPAGATION_OPTIONS) {
      propagation.push(PROPAGATION_OPTIONS[o]);
    } else {
      data.push(o);
    }
  }
  return { flags, propagation, data, bind, recursive };
}

/**
 * Resolves a destination inside the rootfs the way the kernel will
 * (RESOLVE_IN_ROOT: absolute symlinks restart at the rootfs), and refuses one
 * that climbs out of it through a symlink with "..". Returns the path with
 * every existing symlink resolved, so the executor can create what is missing
 * along a plain path. The executor resolves again at mount time, inside the
 * container's mount namespace; this gives the user a clear error for a bundle
 * that tries to escape.
 */
export function checkDestinationInRoot(rootfs: string, dest: string, jsonPath: string): string {
  const parts = dest.split('/').filter(Boolean);
  const stack: string[] = [];
  let budget = 40;
  while (parts.length > 0) {
    const comp = parts.shift()!;
    if (comp === '.') continue;
    if (comp === '..') {
      if (stack.length === 0) throw new SpecError(jsonPath, `${dest} resolves outside the rootfs`);
      stack.pop();
      continue;
    }
    const hostPath = posix.join(rootfs, ...stack, comp);
    let st;
    try {
      st = lstatSync(hostPath);
    } catch {
      // the rest does not exist yet: the executor creates it inside the rootfs
      return posix.join('/', ...stack, comp, ...parts);
    }
    if (st.isSymbolicLink()) {
      if (--budget < 0) throw new SpecError(jsonPath, `${dest}: too many levels of symbolic links`);
      const target = readlinkSync(hostPath);
      const tparts = target.split('/').filter(Boolean);
      const linkAt = posix.join('/', ...stack, comp);
      if (target.startsWith('/')) stack.length = 0;
      // a relative link that climbs above the rootfs is an escape attempt
      let depth = stack.length;
      for (const t of tparts) {
        if (t === '..') {
          if (depth === 0)
            throw new SpecError(jsonPath, `${dest} goes through symlink ${linkAt} -> ${target}, which points out of the rootfs`);
          depth--;
        } else if (t !== '.') depth++;
      }
      parts.unshift(...tparts);
    } else {
      stack.push(comp);
    }
  }
  return posix.join('/', ...stack);
}

function capMask(names: string[] | undefined, jsonPath: string, last: number): bigint {
  let m = 0n;
  (names ?? []).forEach((n, i) => {
    const c = (CAPABILITIES as readonly string[]).indexOf(n);
    if (c < 0 || c > last) throw new SpecError(`${jsonPath}[${i}]`, `capability ${n} is not known to this kernel (last is ${CAPABILITIES[last]})`);
    m |= 1n << BigInt(c);
  });
  return m;
}

function nsList(spec: Spec): Namespace[] {
  return spec.linux?.namespaces ?? [];
}

export function newNamespaces(spec: Spec): Set<string> {
  return new Set(nsList(spec).filter((n) => !n.path).map((n) => n.type));
}

function compileMount(b: PlanBuilder, m: Mount, i: number, spec: Spec, ctx: CompileContext): void {
  const jp = `mounts[${i}]`;
  const dest = checkDestinationInRoot(ctx.rootfs, posix.normalize(m.destination), `${jp}.destination`);
  const o = parseMountOptions(m.options);
  const isBind = o.bind || m.type === 'bind';
  const newNs = newNamespaces(spec);
  const label = `${jp} (${isBind ? 'bind ' + m.source : m.type} on ${m.destination})`;

  if (m.type === 'cgroup') {
    compileCgroupMount(b, dest, o, label, newNs.has('cgroup'), ctx);
    return;
  }
  if (isBind) {
    let source = m.source!;
    if (!source.startsWith('/')) source = posix.join(ctx.bundle, source);
    let st;
    try {
      st = statSync(source);
    } catch {
      throw new SpecError(`${jp}.source`, `${source} does not exist`);
    }
    const bindFlags = MS.BIND | (o.recursive ? MS.REC : 0);
    b.add('MOUNT', label, source, dest, '', bindFlags, '', st.isDirectory() ? 0 : 1, 0);
    // a bind mount takes its flags only on a remount
    if (o.flags !== 0) b.add('REMOUNT', `${label}: apply ${(m.options ?? []).join(',')}`, dest, o.flags);
  } else {
    const extra = m.type === 'sysfs' && !newNs.has('network') ? MOUNT_SYSFS_FALLBACK : 0;
    b.add('MOUNT', label, m.source ?? m.type ?? 'none', dest, m.type ?? '', o.flags, o.data.join(','), 0, extra);
  }
  for (const p of o.propagation) b.add('PROPAGATE', `${label}: propagation`, dest, p);
}

function compileCgroupMount(b: PlanBuilder, dest: string, o: ParsedOptions, label: string, cgroupNs: boolean, ctx: CompileContext): void {
  const flags = o.flags & ~MS.RDONLY;
  const pureV2 = ctx.cgroupMounts.length === 1 && ctx.cgroupMounts[0].name === '';
  if (pureV2) {
    const c = ctx.cgroupMounts[0];
    if (cgroupNs) b.add('MOUNT', label, 'cgroup2', dest, 'cgroup2', o.flags, '', 0, 0);
    else {
      b.add('MOUNT', label, c.hostDir, dest, '', MS.BIND | MS.REC, '', 0, 0);
      b.add('REMOUNT', label, dest, o.flags | MS.NOSUID | MS.NODEV | MS.NOEXEC);
    }
    return;
  }
  // cgroup v1 or hybrid: a tmpfs holding one mount per hierarchy, as runc lays it out
  b.add('MOUNT', label, 'tmpfs', dest, 'tmpfs', flags, 'mode=755', 0, 0);
  for (const c of ctx.cgroupMounts) {
    const sub = posix.join(dest, c.name);
    const l = `${label}: ${c.name}`;
    if (cgroupNs) {
      b.add('MOUNT', l, c.fstype, sub, c.fstype, flags, c.fstype === 'cgroup' ? c.data : '', 0, 0);
      if (o.flags & MS.RDONLY) b.add('REMOUNT', `${l} read-only`, sub, o.flags);
    } else {
      b.add('MOUNT', l, c.hostDir, sub, '', MS.BIND, '', 0, 0);
      b.add('REMOUNT', l, sub, o.flags | MS.NOSUID | MS.NODEV | MS.NOEXEC);
    }
  }
  if (o.flags & MS.RDONLY) b.add('REMOUNT', `${label} read-only`, dest, o.flags);
}

function propagationFlag(name: string | undefined): number {
  return name ? PROPAGATION_OPTIONS[name] : 0;
}

/** Compiles the spec into the ops the executor runs, in the order they must run. */
export function compileInitPlan(spec: Spec, ctx: CompileContext): InitPlan {
  const b = new PlanBuilder();
  const proc = spec.process!;
  const linux = spec.linux ?? {};
  const newNs = newNamespaces(spec);
  const userNs = newNs.has('user');

  // --- before clone: the executor joins namespaces given by path, then clones
  if (ctx.fifoPath) {
    b.add('MKFIFO', 'create exec.fifo', ctx.fifoPath, 0o622);
    b.add('OPEN_FIFO', 'open exec.fifo', ctx.fifoPath);
  }
  // host paths: connected before any namespace is joined
  preCloneProcessOps(b, proc, ctx);
  const joined = nsList(spec).filter((n) => n.path);
  joined.sort((a, z) => (a.type === 'user' ? -1 : z.type === 'user' ? 1 : 0));
  for (const n of joined) {
    const idx = nsList(spec).indexOf(n);
    b.add('SETNS', `linux.namespaces[${idx}] (join ${n.type} namespace ${n.path})`, n.path!, NAMESPACES[n.type].flag);
  }
  if (newNs.has('time')) {
    const mono = linux.timeOffsets?.monotonic ?? {};
    const boot = linux.timeOffsets?.boottime ?? {};
    b.add('TIMENS', 'linux.timeOffsets (new time namespace)', mono.secs ?? 0, mono.nanosecs ?? 0, boot.secs ?? 0, boot.nanosecs ?? 0);
  }
  let cloneFlags = 0;
  for (const t of newNs) cloneFlags |= NAMESPACES[t].flag;
  cloneFlags &= ~(CLONE_NEWCGROUP | CLONE_NEWTIME);
  b.add('CLONE', 'linux.namespaces (clone the container init)', cloneFlags, ctx.foreground ? 1 : 0);

  // --- in the container init, after the runtime has placed it in its cgroups
  if (userNs) b.add('BECOME_ROOT', 'linux.uidMappings (become root in the user namespace)');
  b.add('SETSID', 'start a new session');
  if (ctx.sessionKeyring) b.add('KEYRING', 'a new session keyring (--no-new-keyring to keep the caller\'s)', ctx.sessionKeyring, 1);
  if (proc.oomScoreAdj !== undefined) b.add('OOM_SCORE', 'process.oomScoreAdj', proc.oomScoreAdj);
  if (newNs.has('cgroup')) b.add('UNSHARE', 'linux.namespaces (new cgroup namespace)', CLONE_NEWCGROUP);
  if ((cloneFlags & CLONE_NEWNET) !== 0) b.add('LO_UP', 'linux.namespaces (bring up lo in the new network namespace)');
  if (spec.hostname !== undefined) b.add('HOSTNAME', 'hostname', spec.hostname);
  if (spec.domainname !== undefined) b.add('DOMAINNAME', 'domainname', spec.domainname);

  // rootfsPropagation, as runc: applied to the whole tree before the spec's mounts (so their own
  // propagation options win); a shared one only after pivot_root, which refuses shared parents
  const rootProp = linux.rootfsPropagation || undefined;
  const rootShared = rootProp !== undefined && (PROPAGATION_OPTIONS[rootProp] & MS.SHARED) !== 0;
  const firstProp = rootProp && !rootShared ? PROPAGATION_OPTIONS[rootProp] : MS.SLAVE | MS.REC;
  b.add('ROOTFS', `root.path (${ctx.rootfs})`, ctx.rootfs, firstProp);
  const mounts = spec.mounts ?? [];
  mounts.forEach((m, i) => compileMount(b, m, i, spec, ctx));

  const devMount = mounts.find((m) => posix.normalize(m.destination) === '/dev');
  const devIsBind = devMount && (devMount.type === 'bind' || parseMountOptions(devMount.options).bind);
  if (devMount && !devIsBind) {
    for (const d of DEFAULT_DEVICES) {
      if ((linux.devices ?? []).some((x) => x.path === d.path)) continue;
      if (userNs) b.add('BIND_DEV', `default device ${d.path}`, d.path, d.path);
      else b.add('MKNOD', `default device ${d.path}`, d.path, S_IFCHR | 0o666, d.major, d.minor, 0, 0);
    }
  }
  (linux.devices ?? []).forEach((d, i) => {
    const what = `linux.devices[${i}] (${d.path})`;
    if (userNs) {
      b.add('BIND_DEV', what, d.path, d.path);
      return;
    }
    const type = d.type === 'b' ? S_IFBLK : d.type === 'p' ? S_IFIFO : S_IFCHR;
    b.add('MKNOD', what, d.path, type | (d.fileMode ?? 0o666), d.major ?? 0, d.minor ?? 0, d.uid ?? 0, d.gid ?? 0);
  });
  if (devMount && !devIsBind) {
    const links: [string, string][] = [['/proc/self/fd', '/dev/fd'], ['/proc/self/fd/0', '/dev/stdin'],
      ['/proc/self/fd/1', '/dev/stdout'], ['/proc/self/fd/2', '/dev/stderr']];
    if (mounts.some((m) => posix.normalize(m.destination) === '/dev/pts')) links.push(['pts/ptmx', '/dev/ptmx']);
    for (const [target, link] of links) b.add('SYMLINK', `/dev symlink ${link}`, target, link);
  }

  const hooks = spec.hooks ?? {};
  if ((hooks.prestart?.length ?? 0) + (hooks.createRuntime?.length ?? 0) + (hooks.createContainer?.length ?? 0) > 0)
    b.add('HOOKS_SYNC', 'hooks (prestart, createRuntime, createContainer)');

  b.add('PIVOT', ctx.noPivot ? 'move the rootfs to / (--no-pivot)' : 'pivot_root into the rootfs', ctx.noPivot ? 1 : 0);
  if (rootShared) b.add('ROOT_PROPAGATION', 'linux.rootfsPropagation', propagationFlag(rootProp));

  for (const [k, v] of Object.entries(linux.sysctl ?? {})) b.add('SYSCTL', `linux.sysctl["${k}"]`, k.replace(/\./g, '/'), v);
  (linux.maskedPaths ?? []).forEach((p, i) => b.add('MASK', `linux.maskedPaths[${i}] (${p})`, posix.normalize(p)));
  (linux.readonlyPaths ?? []).forEach((p, i) => b.add('READONLY', `linux.readonlyPaths[${i}] (${p})`, posix.normalize(p)));
  if (spec.root?.readonly) b.add('ROOT_RO', 'root.readonly');

  if (proc.terminal) ptyOp(b, proc, 'the container');
  compileProcessOps(b, proc, ctx, {
    fifo: ctx.fifoPath !== undefined,
    startHooks: hooks.startContainer ?? [],
  });
  if (userNs && !linux.uidMappings) throw new SpecError('linux.uidMappings', 'a new user namespace needs uid mappings');
  if (userNs && !linux.gidMappings) throw new SpecError('linux.gidMappings', 'a new user namespace needs gid mappings');
  return { ops: b.ops };
}

function ptyOp(b: PlanBuilder, proc: Process, whose: string): void {
  b.add('PTY', `process.terminal (a pty for ${whose})`, proc.consoleSize?.height ?? 0, proc.consoleSize?.width ?? 0);
}

/** Ops before clone for the process: connect its console and seccomp listener sockets. */
function preCloneProcessOps(b: PlanBuilder, proc: Process, ctx: ProcessContext): void {
  if (proc.terminal)
    b.add('CONSOLE', ctx.consoleSocket ? `--console-socket ${ctx.consoleSocket}` : 'a pty proxied by the foreground runtime', ctx.consoleSocket ?? '');
  if (ctx.seccomp?.notify) b.add('SECCOMP_CONNECT', `linux.seccomp.listenerPath (${ctx.seccomp.listenerPath})`, ctx.seccomp.listenerPath!);
}

/**
 * The process part of a plan, shared by the container's init and exec: limits, identity,
 * capabilities, seccomp, and the exec itself. Seccomp goes as late as possible, after the
 * identity change, when no_new_privs lets an unprivileged process load it; without
 * no_new_privs it must be loaded while the process still has CAP_SYS_ADMIN, as runc does.
 */
function compileProcessOps(b: PlanBuilder, proc: Process, ctx: ProcessContext, o: { fifo: boolean; startHooks: Hook[] }): void {
  (proc.rlimits ?? []).forEach((r, i) => {
    const jp = `process.rlimits[${i}]`;
    if (r.type === 'RLIMIT_NOFILE' && r.hard > ctx.nofileHard && !ctx.canRaiseRlimits)
      throw new SpecError(jp, `RLIMIT_NOFILE hard limit ${r.hard} is above this runtime's own limit ${ctx.nofileHard}, and raising it needs CAP_SYS_RESOURCE`);
    b.add('RLIMIT', `${jp} (${r.type} ${r.soft}/${r.hard})`, RLIMITS[r.type], r.soft, r.hard);
  });
  b.add('UMASK', 'process.user.umask', proc.user.umask ?? 0o022);
  if (ctx.lsm) b.add('LSM', `${ctx.lsm.attr.includes('apparmor') ? 'process.apparmorProfile' : 'process.selinuxLabel'} (${ctx.lsm.value})`, ctx.lsm.attr, ctx.lsm.value);
  const seccompOp = () => {
    const sc = ctx.seccomp!;
    b.add('SECCOMP', `linux.seccomp (${sc.filter.length / 8} BPF instructions)`, sc.filter, sc.flags);
    // the agent gets the notify fd at once: a notified syscall of the executor's would wait for it
    if (sc.notify) b.add('SECCOMP_LISTENER', `linux.seccomp.listenerPath (send the notify fd to ${sc.listenerPath})`);
  };
  if (ctx.seccomp && !proc.noNewPrivileges) seccompOp();

  const caps = proc.capabilities;
  const last = ctx.lastCap;
  if (caps?.bounding) b.add('BOUNDING', 'process.capabilities.bounding', capMask(caps.bounding, 'process.capabilities.bounding', last), last);
  b.add('USER', `process.user (uid ${proc.user.uid}, gid ${proc.user.gid})`, proc.user.uid, proc.user.gid, caps ? 1 : 0,
    ...(proc.user.additionalGids ?? []));
  if (caps) {
    const eff = capMask(caps.effective, 'process.capabilities.effective', last);
    const perm = capMask(caps.permitted, 'process.capabilities.permitted', last);
    const inh = capMask(caps.inheritable, 'process.capabilities.inheritable', last);
    // the kernel only raises ambient capabilities that are also permitted and inheritable
    const amb = capMask(caps.ambient, 'process.capabilities.ambient', last) & perm & inh;
    b.add('CAPS', 'process.capabilities', eff, perm, inh, amb, last);
  }
  if (proc.noNewPrivileges) b.add('NO_NEW_PRIVS', 'process.noNewPrivileges');
  b.add('CHDIR', `process.cwd (${proc.cwd})`, proc.cwd);

  const env = proc.env ?? [];
  const pathVar = env.filter((e) => e.startsWith('PATH=')).pop()?.slice(5) ?? DEFAULT_PATH;
  const args = proc.args!;
  b.add('LOOKUP', `process.args[0] (${args[0]})`, args[0], pathVar);
  b.add('READY_SYNC', 'report ready');
  if (o.fifo) b.add('FIFO_WAIT', 'wait for start on exec.fifo');
  o.startHooks.forEach((h, i) => {
    const argv = h.args && h.args.length > 0 ? h.args : [h.path];
    b.add('HOOK', `hooks.startContainer[${i}] (${h.path})`, h.timeout ?? 0, h.path, argv.length, ...argv, ...(h.env ?? []));
  });
  b.add('CLOEXEC_FROM', 'close the runtime\'s file descriptors', 3 + ctx.preserveFds);
  if (ctx.seccomp && proc.noNewPrivileges) seccompOp();
  b.add('EXEC', `process.args (${args.join(' ')})`, args.length, ...args, ...env);
}

export interface ExecContext extends ProcessContext {
  /** the container's namespaces to join, as /proc/<pid>/ns paths */
  namespaces: { type: string; path: string }[];
  foreground: boolean;
  /** the container's session keyring name, undefined to keep the caller's */
  sessionKeyring?: string;
}

/** The plan for `exec`: join the container's namespaces, fork into them, become the process. */
export function compileExecPlan(proc: Process, ctx: ExecContext): InitPlan {
  const b = new PlanBuilder();
  // user first (it grants the rights for the rest), mount last (paths under /proc stop working after it)
  const order = (t: string) => (t === 'user' ? 0 : t === 'mount' ? 2 : 1);
  const ns = [...ctx.namespaces].sort((a, z) => order(a.type) - order(z.type));
  preCloneProcessOps(b, proc, ctx); // host paths: before the mount namespace is joined
  for (const n of ns) b.add('SETNS', `join the container's ${n.type} namespace (${n.path})`, n.path, NAMESPACES[n.type].flag);
  b.add('CLONE', 'fork into the container\'s pid namespace', 0, ctx.foreground ? 1 : 0);
  b.add('SETSID', 'start a new session');
  if (ctx.sessionKeyring) b.add('KEYRING', 'the container\'s session keyring', ctx.sessionKeyring, 1);
  if (proc.oomScoreAdj !== undefined) b.add('OOM_SCORE', 'process.oomScoreAdj', proc.oomScoreAdj);
  if (proc.terminal) ptyOp(b, proc, 'the process');
  compileProcessOps(b, proc, ctx, { fifo: false, startHooks: [] });
  return { ops: b.ops };
}
