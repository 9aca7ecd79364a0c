/**
 * exec: a new process in a running container. The executor joins the container's namespaces
 * (single-threaded, before it forks), the child is placed in the container's cgroups and then
 * becomes the process with the container's seccomp filter, capabilities and no_new_privs unless
 * overridden.
 */
import { constants } from 'node:os';
import { readFileSync, statSync } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import { SpecError, TsruncError } from '../errors.js';
import type { Process } from '../spec/types.js';
import { validateProcess } from '../spec/validate.js';
import { compileExecPlan } from '../init/compile.js';
import { encodePlan } from '../init/plan.js';
import { MSG } from '../init/handshake.js';
import { cgroupManagerFromPaths } from '../cgroups/manager.js';
import { StateStore, ociState, writeFileAtomic } from '../state/store.js';
import { hasCapability, nofileHardLimit, procStat, waitGone } from '../linux/proc.js';
import { CAPABILITIES, NAMESPACES, lastCap } from '../linux/tables.js';
import {
  checkTerminal, continuePayload, processSecurity, resolveGroups, resolveUser, runHandshake, startExecutor, withHome,
} from './process.js';
import { forwardSignals } from './run.js';

export interface ExecOptions {
  id: string;
  /** the command, unless `processFile` gives the whole process */
  args: string[];
  processFile?: string;
  tty?: boolean;
  consoleSocket?: string;
  detach?: boolean;
  pidFile?: string;
  cwd?: string;
  env?: string[];
  /** uid[:gid], numbers or names from the container's /etc/passwd and /etc/group */
  user?: string;
  additionalGids?: string[];
  caps?: string[];
  noNewPrivs?: boolean;
  preserveFds?: number;
  apparmor?: string;
  processLabel?: string;
}

export interface ExecResult {
  exitCode: number;
  pid: number;
  warnings: string[];
}

const CAP_SYS_RESOURCE = 24;

function readProcessFile(path: string): Process {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new TsruncError(`--process ${path}: ${err.code === 'ENOENT' ? 'no such file' : err.code ? err.message : `invalid JSON: ${err.message}`}`);
  }
  try {
    return validateProcess(json);
  } catch (e) {
    if (e instanceof SpecError) throw new TsruncError(`--process ${path}: ${e.message}`);
    throw e;
  }
}

/** The environment with later entries replacing earlier ones of the same name (runc does the same). */
function dedupEnv(env: string[]): string[] {
  const byName = new Map<string, string>();
  for (const e of env) {
    const name = e.slice(0, e.indexOf('='));
    byName.delete(name);
    byName.set(name, e);
  }
  return [...byName.values()];
}

/** The process to run: the --process file as it is, or the container's process with the flags applied. */
function buildProcess(base: Process | undefined, rootfs: string, o: ExecOptions): Process {
  if (o.processFile) {
    if (o.args.length) throw new TsruncError('exec: give either --process or a command, not both');
    const p = readProcessFile(resolvePath(o.processFile));
    return o.tty === undefined ? p : { ...p, terminal: o.tty };
  }
  if (!o.args.length) throw new TsruncError('exec: no command given (tsrunc exec ID COMMAND [ARGS...])');
  if (!base) throw new TsruncError('exec: the container\'s config has no process to start from; use --process');
  const p: Process = structuredClone(base);
  p.args = o.args;
  p.terminal = o.tty === true;
  if (o.cwd) {
    if (!o.cwd.startsWith('/')) throw new TsruncError(`--cwd "${o.cwd}": must be an absolute path`);
    p.cwd = o.cwd;
  }
  for (const e of o.env ?? []) if (!e.includes('=')) throw new TsruncError(`--env "${e}": must be KEY=VALUE`);
  p.env = dedupEnv([...(p.env ?? []), ...(o.env ?? [])]);
  if (o.apparmor) p.apparmorProfile = o.apparmor;
  if (o.processLabel) p.selinuxLabel = o.processLabel;
  if (o.noNewPrivs) p.noNewPrivileges = true;
  if (o.caps?.length) {
    const last = lastCap();
    const c = (p.capabilities ??= {});
    for (const cap of o.caps) {
      const name = cap.toUpperCase().startsWith('CAP_') ? cap.toUpperCase() : `CAP_${cap.toUpperCase()}`;
      const n = (CAPABILITIES as readonly string[]).indexOf(name);
      if (n < 0 || n > last) throw new TsruncError(`--cap ${cap}: not a capability this kernel knows (last is ${CAPABILITIES[last]})`);
      for (const set of ['bounding', 'effective', 'inheritable', 'permitted', 'ambient'] as const)
        if (!(c[set] ??= []).includes(name)) c[set]!.push(name);
    }
  }
  if (o.user) p.user = { ...p.user, ...resolveUser(rootfs, o.user) };
  if (o.additionalGids) p.user = { ...p.user, additionalGids: resolveGroups(rootfs, o.additionalGids) };
  return p;
}

/** The container's namespaces as /proc/<init>/ns paths, leaving out those the runtime already shares. */
function namespacesOf(pid: number, types: string[]): { type: string; path: string }[] {
  const out: { type: string; path: string }[] = [];
  for (const type of types) {
    const path = `/proc/${pid}/ns/${NAMESPACES[type].proc}`;
    try {
      const theirs = statSync(path), ours = statSync(`/proc/self/ns/${NAMESPACES[type].proc}`);
      if (theirs.ino === ours.ino && theirs.dev === ours.dev) continue;
    } catch (e) {
      throw new TsruncError(`cannot open the container's ${type} namespace ${path}: ${(e as Error).message}`);
    }
    out.push({ type, path });
  }
  return out;
}

export async function execProcess(store: StateStore, o: ExecOptions): Promise<ExecResult> {
  const detach = o.detach === true;
  let unlock = await store.lock(o.id);
  let handle: ReturnType<typeof startExecutor> | undefined;
  let pid = 0, startTime = 0;
  try {
    const rec = store.load(o.id);
    const status = store.status(rec);
    if (status === 'stopped') throw new TsruncError(`cannot exec in container "${o.id}": it is stopped`);
    if (status === 'paused') throw new TsruncError(`cannot exec in container "${o.id}": it is paused (resume it first)`);
    if (status === 'creating') throw new TsruncError(`cannot exec in container "${o.id}": it is still being created`);
    const proc = withHome(buildProcess(rec.config.process, rec.rootfs, o), rec.rootfs);
    checkTerminal(detach, proc.terminal === true, o.consoleSocket);
    const security = await processSecurity(rec.config, proc);
    const types = [...new Set((rec.config.linux?.namespaces ?? []).map((n) => n.type))];
    const plan = compileExecPlan(proc, {
      namespaces: namespacesOf(rec.pid, types), foreground: !detach, sessionKeyring: `_ses.${o.id}`,
      preserveFds: o.preserveFds ?? 0, lastCap: lastCap(), nofileHard: nofileHardLimit(),
      canRaiseRlimits: hasCapability(CAP_SYS_RESOURCE), consoleSocket: o.consoleSocket, seccomp: security.seccomp, lsm: security.lsm,
    });
    const cgroups = cgroupManagerFromPaths(rec.cgroupMode, rec.cgroupPaths);
    handle = startExecutor(o.preserveFds ?? 0);
    const exited = detach ? Promise.resolve(0) : new Promise<number>((resolve) =>
      handle!.executor.once('exit', (code, sig) => resolve(code ?? 128 + (sig ? constants.signals[sig] : 0))));
    handle.channel.send(MSG.PLAN, encodePlan(plan));
    pid = await runHandshake(handle, plan, {
      onPid: async (p) => {
        pid = p;
        startTime = procStat(p)?.startTime ?? 0;
        try {
          await cgroups.apply(p);
        } catch (e) {
          throw new TsruncError(`cannot move the process into the container's cgroup ${Object.values(rec.cgroupPaths)[0]}: ${(e as Error).message}`);
        }
      },
      onReady: async () => {
        if (o.pidFile) writeFileAtomic(resolvePath(o.pidFile), String(pid), 0o644);
        return continuePayload(ociState(rec, store.status(rec)), pid, security.seccomp);
      },
    });
    unlock();
    unlock = () => {};
    if (detach) {
      handle.executor.unref();
      return { exitCode: 0, pid, warnings: security.warnings };
    }
    const stop = forwardSignals(pid);
    try {
      return { exitCode: await exited, pid, warnings: security.warnings };
    } finally {
      stop();
    }
  } catch (e) {
    if (handle) {
      handle.channel.close();
      handle.executor.kill('SIGKILL');
    }
    if (pid) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
      await waitGone(pid, startTime || undefined, 5000);
    }
    throw e;
  } finally {
    unlock();
  }
}
