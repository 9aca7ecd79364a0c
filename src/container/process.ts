/**
 * What the container's init and an exec'd process share: starting the executor, the handshake
 * with it, the process's seccomp filter and LSM label, terminals, and user lookups in the rootfs.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, lstatSync, readFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { posix } from 'node:path';
import { getSystemErrorMap } from 'node:util';
import { TsruncError } from '../errors.js';
import type { Process, Spec } from '../spec/types.js';
import type { CompiledSeccomp } from '../init/compile.js';
import type { InitPlan } from '../init/plan.js';
import { SyncChannel, parseError, MSG } from '../init/handshake.js';
import { executorPath } from './executor.js';

export interface ExecutorHandle {
  executor: ChildProcess;
  channel: SyncChannel;
  /** rejects if the executor cannot be run at all */
  spawnError: Promise<never>;
}

/**
 * Starts the executor with our stdio and fds 3..3+extraFds-1 passed through (LISTEN_FDS and
 * --preserve-fds); the sync socket comes right after them.
 */
export function startExecutor(extraFds: number): ExecutorHandle {
  const syncFd = 3 + extraFds;
  const stdio: ('inherit' | 'pipe' | number)[] = ['inherit', 'inherit', 'inherit'];
  for (let fd = 3; fd < syncFd; fd++) stdio.push(fd);
  stdio.push('pipe');
  const executor = spawn(executorPath(), [], { stdio, env: { ...process.env, _TSRUNC_SYNC_FD: String(syncFd) } });
  const spawnError = new Promise<never>((_, reject) =>
    executor.once('error', (e) => reject(new TsruncError(`cannot run the executor ${executorPath()}: ${e.message}`))));
  spawnError.catch(() => {});
  return { executor, channel: new SyncChannel(executor.stdio[syncFd] as Socket), spawnError };
}

function errnoText(errno: number): string {
  const entry = getSystemErrorMap().get(-errno);
  return entry ? entry[1] : `errno ${errno}`;
}

export interface HandshakeSteps {
  /** the process exists (not yet running the plan): place it, then it gets GO */
  onPid(pid: number): Promise<void>;
  /** prestart/createRuntime/createContainer hooks (init only) */
  onHooks?(): Promise<void>;
  /** everything is set up: the CONTINUE payload (state JSON, NUL, seccomp listener message) */
  onReady(): Promise<Buffer>;
}

/** Drives the executor through its plan; returns the process's pid. Errors name the op that failed. */
export async function runHandshake(h: ExecutorHandle, plan: InitPlan, steps: HandshakeSteps): Promise<number> {
  const next = () => Promise.race([h.channel.next(), h.spawnError]);
  let pid = 0;
  for (;;) {
    const f = await next();
    if (!f) throw new TsruncError(pid ? 'the process exited during setup' : 'the executor exited before starting the process');
    if (f.type === MSG.ERROR) {
      const e = parseError(f);
      const op = plan.ops[e.opIndex];
      throw new TsruncError(`${op ? op.what : 'executor'}: ${e.detail}: ${errnoText(e.errno)}`);
    }
    if (f.type === MSG.PID) {
      pid = Number(f.payload.readBigInt64LE(0));
      await steps.onPid(pid);
      h.channel.send(MSG.GO);
    } else if (f.type === MSG.HOOKS && steps.onHooks) {
      await steps.onHooks();
      h.channel.send(MSG.HOOKS_DONE);
    } else if (f.type === MSG.READY) {
      await h.channel.send(MSG.CONTINUE, await steps.onReady());
      h.channel.close();
      return pid;
    } else {
      throw new TsruncError(`handshake: unexpected message ${f.type}`);
    }
  }
}

/** runc's rules for -t / --console-socket / detach. */
export function checkTerminal(detach: boolean, terminal: boolean, consoleSocket: string | undefined): void {
  if (detach && terminal && !consoleSocket)
    throw new TsruncError('cannot allocate tty if tsrunc will detach without setting console socket (process.terminal is true)');
  if ((!detach || !terminal) && consoleSocket)
    throw new TsruncError('cannot use console socket if tsrunc will not detach or allocate tty');
}

export interface ProcessSecurity {
  seccomp?: CompiledSeccomp & { listenerMetadata?: string };
  lsm?: { attr: string; value: string };
  warnings: string[];
}

/** The seccomp filter (compiled lazily: the compiler is only loaded for a spec that has one) and the LSM label. */
export async function processSecurity(spec: Spec, proc: Process): Promise<ProcessSecurity> {
  const warnings: string[] = [];
  let seccomp: ProcessSecurity['seccomp'];
  if (spec.linux?.seccomp) {
    // the executor sends the notify fd with sendmsg once the filter is loaded: notifying it would wait forever
    const rules = (spec.linux.seccomp as { syscalls?: { names?: unknown; action?: unknown }[] }).syscalls;
    (Array.isArray(rules) ? rules : []).forEach((r, i) => {
      if (r?.action === 'SCMP_ACT_NOTIFY' && Array.isArray(r.names) && r.names.includes('sendmsg'))
        throw new TsruncError(`linux.seccomp.syscalls[${i}]: SCMP_ACT_NOTIFY on sendmsg is not allowed (the runtime passes the listener fd with it)`);
    });
    const { compileSeccomp, hostSeccompKernel } = await import('../seccomp/index.js');
    const prog = compileSeccomp(spec.linux.seccomp, hostSeccompKernel());
    warnings.push(...prog.warnings);
    seccomp = { filter: prog.filter, flags: prog.flags, notify: prog.notify, listenerPath: prog.listenerPath, listenerMetadata: prog.listenerMetadata };
  }
  return { seccomp, lsm: lsmLabel(proc), warnings };
}

/** Where and what to write so that the process's execve enters its AppArmor profile or SELinux label. */
export function lsmLabel(proc: Process): { attr: string; value: string } | undefined {
  if (proc.apparmorProfile) {
    if (!existsSync('/sys/kernel/security/apparmor'))
      throw new TsruncError(`process.apparmorProfile: "${proc.apparmorProfile}" asked for, but AppArmor is not enabled on this host`);
    // kernels with LSM stacking have a per-LSM directory; older ones only the shared file
    const attr = existsSync('/proc/self/attr/apparmor/exec') ? '/proc/self/attr/apparmor/exec' : '/proc/self/attr/exec';
    return { attr, value: `exec ${proc.apparmorProfile}` };
  }
  if (proc.selinuxLabel) {
    if (!existsSync('/sys/fs/selinux/enforce'))
      throw new TsruncError(`process.selinuxLabel: "${proc.selinuxLabel}" asked for, but SELinux is not enabled on this host`);
    return { attr: '/proc/self/attr/exec', value: proc.selinuxLabel };
  }
  return undefined;
}

/** The CONTINUE payload: the state JSON and, with a NOTIFY filter, the message its listener gets. */
export function continuePayload(state: Record<string, unknown>, pid: number, seccomp: ProcessSecurity['seccomp']): Buffer {
  const st = JSON.stringify(state);
  if (!seccomp?.notify) return Buffer.from(st);
  // runc's ContainerProcessState: the listener learns which fd is which and whose filter it is
  const msg = JSON.stringify({ ociVersion: state.ociVersion, fds: ['seccompFd'], pid, metadata: seccomp.listenerMetadata ?? '', state });
  return Buffer.concat([Buffer.from(st), Buffer.alloc(1), Buffer.from(msg)]);
}

/**
 * The container's /etc/passwd or /etc/group, read from the host side. A symlink at /etc or at
 * the file could lead out of the rootfs: such a file is treated as absent.
 */
function rootfsFile(rootfs: string, name: 'passwd' | 'group'): string[][] {
  try {
    if (lstatSync(posix.join(rootfs, 'etc')).isSymbolicLink()) return [];
    const p = posix.join(rootfs, 'etc', name);
    if (!lstatSync(p).isFile()) return [];
    return readFileSync(p, 'utf8').split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.split(':'));
  } catch {
    return [];
  }
}

/** HOME as runc sets it when the process's env has none: the user's home in the rootfs, else "/". */
export function withHome(proc: Process, rootfs: string): Process {
  const env = proc.env ?? [];
  if (env.some((e) => e.startsWith('HOME='))) return proc;
  const entry = rootfsFile(rootfs, 'passwd').find((f) => Number(f[2]) === proc.user.uid && f[2] !== '');
  return { ...proc, env: [...env, `HOME=${entry?.[5] || '/'}`] };
}

const NUMERIC = /^\d+$/;

/** `exec -u user[:group]`: numbers, or names looked up in the rootfs's /etc/passwd and /etc/group. */
export function resolveUser(rootfs: string, spec: string): { uid: number; gid: number } {
  const [u, g] = spec.split(':', 2);
  if (!u) throw new TsruncError(`--user "${spec}": no user given`);
  // like runc, a numeric user without a group runs with gid 0; a name brings its passwd group
  let uid: number, gid = 0;
  if (NUMERIC.test(u)) {
    uid = Number(u);
  } else {
    const entry = rootfsFile(rootfs, 'passwd').find((f) => f[0] === u);
    if (!entry) throw new TsruncError(`--user "${spec}": no user "${u}" in the container's /etc/passwd`);
    uid = Number(entry[2]);
    gid = Number(entry[3]);
  }
  if (g !== undefined && g !== '') {
    if (NUMERIC.test(g)) gid = Number(g);
    else {
      const entry = rootfsFile(rootfs, 'group').find((f) => f[0] === g);
      if (!entry) throw new TsruncError(`--user "${spec}": no group "${g}" in the container's /etc/group`);
      gid = Number(entry[2]);
    }
  }
  for (const [what, v] of [['uid', uid], ['gid', gid]] as const)
    if (!Number.isSafeInteger(v) || v < 0 || v > 0xfffffffe) throw new TsruncError(`--user "${spec}": ${what} ${v} is out of range`);
  return { uid, gid };
}

/** `--additional-gids` as numbers or group names from the rootfs's /etc/group. */
export function resolveGroups(rootfs: string, groups: string[]): number[] {
  return groups.map((g) => {
    if (NUMERIC.test(g)) return Number(g);
    const entry = rootfsFile(rootfs, 'group').find((f) => f[0] === g);
    if (!entry) throw new TsruncError(`--additional-gids: no group "${g}" in the container's /etc/group`);
    return Number(entry[2]);
  });
}

/** LISTEN_FDS from systemd socket activation, passed on to the container like runc does (0 if none). */
export function listenFds(): number {
  const n = Number(process.env.LISTEN_FDS);
  if (!process.env.LISTEN_FDS || !Number.isInteger(n) || n <= 0) return 0;
  const pid = process.env.LISTEN_PID;
  // systemd addresses the fds to one pid; anything else meant them for someone else
  if (pid && Number(pid) !== process.pid) return 0;
  return n;
}
