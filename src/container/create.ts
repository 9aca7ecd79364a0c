/** create: a container whose init waits on exec.fifo for `start`. */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { posix, resolve as resolvePath } from 'node:path';
import { getSystemErrorMap } from 'node:util';
import { SpecError, TsruncError } from '../errors.js';
import { validateSpec } from '../spec/validate.js';
import type { Spec } from '../spec/types.js';
import { compileInitPlan, newNamespaces } from '../init/compile.js';
import { encodePlan, type InitPlan } from '../init/plan.js';
import { SyncChannel, parseError, MSG } from '../init/handshake.js';
import { cgroupManager, defaultCgroupsPath, type CgroupManager } from '../cgroups/manager.js';
import { DEFAULT_DEVICE_RULES, type Resources } from '../cgroups/resources.js';
import { StateStore, ociState, validateId, writeFileAtomic, type ContainerRecord } from '../state/store.js';
import { hasCapability, nofileHardLimit, procStat, waitGone } from '../linux/proc.js';
import { lastCap } from '../linux/tables.js';
import { executorPath } from './executor.js';
import { runHooks } from './hooks.js';

export interface CreateOptions {
  id: string;
  bundle: string;
  pidFile?: string;
  noPivot?: boolean;
  noNewKeyring?: boolean;
  preserveFds?: number;
  consoleSocket?: string;
  systemdCgroup?: boolean;
  /** `run` without -d: the executor stays the parent of init and exits with its status */
  foreground?: boolean;
}

export interface Created {
  record: ContainerRecord;
  /** the executor process; in the foreground its exit status is the container's */
  executor: ChildProcess;
  warnings: string[];
}

/** The spec's resources with the devices every container gets (runc's list) and its own device nodes. */
export function containerResources(spec: Spec): Resources {
  const r = (spec.linux?.resources ?? {}) as Resources;
  if (!r.devices) return r;
  const own = (spec.linux?.devices ?? []).filter((d) => d.type !== 'p').map((d) => ({
    allow: true, type: (d.type === 'b' ? 'b' : 'c') as 'b' | 'c', major: d.major, minor: d.minor, access: 'rwm',
  }));
  return { ...r, devices: [...r.devices, ...DEFAULT_DEVICE_RULES, ...own] };
}

const CAP_SYS_RESOURCE = 24;

export function loadBundle(bundleArg: string): { bundle: string; spec: Spec } {
  const bundle = resolvePath(bundleArg);
  let st;
  try {
    st = statSync(bundle);
  } catch {
    throw new TsruncError(`bundle ${bundle}: no such directory`);
  }
  if (!st.isDirectory()) throw new TsruncError(`bundle ${bundle}: not a directory`);
  const cfgPath = posix.join(bundle, 'config.json');
  let text: string;
  try {
    text = readFileSync(cfgPath, 'utf8');
  } catch {
    throw new TsruncError(`${cfgPath}: no such file (make one with "tsrunc spec")`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new TsruncError(`${cfgPath}: invalid JSON: ${(e as Error).message}`);
  }
  try {
    return { bundle, spec: validateSpec(json) };
  } catch (e) {
    if (e instanceof SpecError) throw new TsruncError(`${cfgPath}: ${e.message}`);
    throw e;
  }
}

function errnoText(errno: number): string {
  const entry = getSystemErrorMap().get(-errno);
  return entry ? entry[1] : `errno ${errno}`;
}

function writeIdMaps(pid: number, spec: Spec): void {
  const fmt = (m: { containerID: number; hostID: number; size: number }[]) =>
    m.map((x) => `${x.containerID} ${x.hostID} ${x.size}`).join('\n') + '\n';
  try {
    writeFileSync(`/proc/${pid}/uid_map`, fmt(spec.linux!.uidMappings!));
  } catch (e) {
    throw new TsruncError(`linux.uidMappings: cannot write uid_map: ${(e as Error).message}`);
  }
  try {
    writeFileSync(`/proc/${pid}/gid_map`, fmt(spec.linux!.gidMappings!));
  } catch (e) {
    throw new TsruncError(`linux.gidMappings: cannot write gid_map: ${(e as Error).message}`);
  }
}

function startExecutor(preserveFds: number): { executor: ChildProcess; channel: SyncChannel; spawnError: Promise<never> } {
  const syncFd = 3 + preserveFds;
  const stdio: ('inherit' | 'pipe' | number)[] = ['inherit', 'inherit', 'inherit'];
  for (let fd = 3; fd < syncFd; fd++) stdio.push(fd);
  stdio.push('pipe');
  const executor = spawn(executorPath(), [], { stdio, env: { ...process.env, _TSRUNC_SYNC_FD: String(syncFd) } });
  const spawnError = new Promise<never>((_, reject) =>
    executor.once('error', (e) => reject(new TsruncError(`cannot run the executor ${executorPath()}: ${e.message}`))));
  spawnError.catch(() => {});
  return { executor, channel: new SyncChannel(executor.stdio[syncFd] as Socket), spawnError };
}

export async function createContainer(store: StateStore, opts: CreateOptions): Promise<Created> {
  validateId(opts.id);
  const { bundle, spec } = loadBundle(opts.bundle);
  const proc = spec.process!;
  if (proc.terminal && !opts.consoleSocket)
    throw new TsruncError(opts.foreground
      ? 'process.terminal: foreground terminals are not supported yet; set "terminal": false or pass --console-socket'
      : 'cannot allocate a terminal when detaching without --console-socket (process.terminal is true)');
  if (proc.terminal) throw new TsruncError('process.terminal: terminals are not supported yet; set "terminal": false');
  if (spec.linux?.seccomp) throw new TsruncError('linux.seccomp: seccomp filters are not supported yet');
  if (proc.apparmorProfile && !existsSync('/sys/kernel/security/apparmor'))
    throw new TsruncError(`process.apparmorProfile: "${proc.apparmorProfile}" asked for, but AppArmor is not enabled on this host`);
  if (proc.selinuxLabel && !existsSync('/sys/fs/selinux/enforce'))
    throw new TsruncError(`process.selinuxLabel: "${proc.selinuxLabel}" asked for, but SELinux is not enabled on this host`);
  if (proc.apparmorProfile || proc.selinuxLabel)
    throw new TsruncError('process.apparmorProfile/selinuxLabel: LSM labels are not supported yet');
  const rootfs = spec.root!.path.startsWith('/') ? spec.root!.path : posix.join(bundle, spec.root!.path);
  try {
    if (!statSync(rootfs).isDirectory()) throw new Error();
  } catch {
    throw new TsruncError(`root.path: ${rootfs} is not a directory`);
  }

  // the executor starts (and makes its sealed copy) while the plan is compiled; it waits for the plan
  const { executor, channel, spawnError } = startExecutor(opts.preserveFds ?? 0);
  let cgroups: CgroupManager, plan: InitPlan, unlock: () => void;
  try {
    cgroups = cgroupManager(spec.linux?.cgroupsPath || defaultCgroupsPath(opts.id), opts.systemdCgroup);
    // compile before claiming the id: a bad config leaves nothing behind
    plan = compileInitPlan(spec, {
      rootfs, bundle, fifoPath: store.fifoPath(opts.id), foreground: opts.foreground === true, noPivot: opts.noPivot === true,
      sessionKeyring: opts.noNewKeyring ? undefined : `_ses.${opts.id}`,
      preserveFds: opts.preserveFds ?? 0, cgroupMounts: cgroups.mountSources(), lastCap: lastCap(),
      nofileHard: nofileHardLimit(), canRaiseRlimits: hasCapability(CAP_SYS_RESOURCE),
    });
    store.claim(opts.id);
    unlock = await store.lock(opts.id);
  } catch (e) {
    channel.close();
    executor.kill('SIGKILL');
    throw e;
  }
  let pid = 0;
  const record: ContainerRecord = {
    id: opts.id, pid: 0, startTime: 0, bundle, rootfs, created: new Date().toISOString(), owner: '',
    annotations: spec.annotations ?? {}, cgroupMode: cgroups.mode, cgroupPaths: cgroups.paths, config: spec, ready: false,
  };
  const warnings: string[] = [];
  try {
    cgroups.create();
    warnings.push(...cgroups.set(containerResources(spec)));
    channel.send(MSG.PLAN, encodePlan(plan));
    const next = () => Promise.race([channel.next(), spawnError]);

    const fail = (f: Buffer): never => {
      const e = parseError({ type: MSG.ERROR, payload: f });
      const op = plan.ops[e.opIndex];
      const where = op ? op.what : 'executor';
      throw new TsruncError(`${where}: ${e.detail}: ${errnoText(e.errno)}`);
    };

    for (;;) {
      const f = await next();
      if (!f) throw new TsruncError(pid ? 'container init exited during setup' : 'the executor exited before starting the container');
      if (f.type === MSG.ERROR) fail(f.payload);
      if (f.type === MSG.PID) {
        pid = Number(f.payload.readBigInt64LE(0));
        record.pid = pid;
        record.startTime = procStat(pid)?.startTime ?? 0;
        try {
          await cgroups.apply(pid);
        } catch (e) {
          throw new TsruncError(`cannot move init into cgroup ${Object.values(cgroups.paths)[0]}: ${(e as Error).message}`);
        }
        if (newNamespaces(spec).has('user')) writeIdMaps(pid, spec);
        // recorded now, so that a tsrunc killed mid-create leaves something `delete --force` can clean
        store.save(record);
        channel.send(MSG.GO);
      } else if (f.type === MSG.HOOKS) {
        const st = ociState(record, 'creating');
        await runHooks('prestart', spec.hooks?.prestart, st);
        await runHooks('createRuntime', spec.hooks?.createRuntime, st);
        await runHooks('createContainer', spec.hooks?.createContainer, st);
        channel.send(MSG.HOOKS_DONE);
      } else if (f.type === MSG.READY) {
        record.ready = true;
        store.save(record);
        if (opts.pidFile) writeFileAtomic(resolvePath(opts.pidFile), String(pid), 0o644);
        await channel.send(MSG.CONTINUE, Buffer.from(JSON.stringify(ociState(record, 'created'))));
        channel.close();
        break;
      } else {
        throw new TsruncError(`handshake: unexpected message ${f.type}`);
      }
    }
    unlock();
    return { record, executor, warnings };
  } catch (e) {
    channel.close();
    executor.kill('SIGKILL');
    if (pid) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
      await waitGone(pid, record.startTime || undefined, 5000);
    }
    await cgroups.destroy().catch(() => {});
    store.remove(opts.id);
    throw e;
  }
}
