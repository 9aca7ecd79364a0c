/** create: a container whose init waits on exec.fifo for `start`. */
import type { ChildProcess } from 'node:child_process';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { posix, resolve as resolvePath } from 'node:path';
import { SpecError, TsruncError } from '../errors.js';
import { validateSpec } from '../spec/validate.js';
import type { Spec } from '../spec/types.js';
import { compileInitPlan, newNamespaces } from '../init/compile.js';
import { encodePlan, type InitPlan } from '../init/plan.js';
import { MSG } from '../init/handshake.js';
import { cgroupManager, defaultCgroupsPath, refuseBusyCgroup, type CgroupManager } from '../cgroups/manager.js';
import { DEFAULT_DEVICE_RULES, type Resources } from '../cgroups/resources.js';
import { StateStore, ociState, validateId, writeFileAtomic, type ContainerRecord } from '../state/store.js';
import { hasCapability, nofileHardLimit, procStat, waitGone } from '../linux/proc.js';
import { lastCap } from '../linux/tables.js';
import { checkTerminal, continuePayload, listenFds, processSecurity, runHandshake, startExecutor, withHome } from './process.js';
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

export async function createContainer(store: StateStore, opts: CreateOptions): Promise<Created> {
  validateId(opts.id);
  const { bundle, spec } = loadBundle(opts.bundle);
  const proc = spec.process!;
  checkTerminal(!opts.foreground, proc.terminal === true, opts.consoleSocket);
  const rootfs = spec.root!.path.startsWith('/') ? spec.root!.path : posix.join(bundle, spec.root!.path);
  try {
    if (!statSync(rootfs).isDirectory()) throw new Error();
  } catch {
    throw new TsruncError(`root.path: ${rootfs} is not a directory`);
  }

  const security = await processSecurity(spec, proc);
  // systemd socket activation: the fds go on to the container's init, ahead of --preserve-fds
  const listen = listenFds();
  const extraFds = listen + (opts.preserveFds ?? 0);
  const withListen = listen ? { ...proc, env: [...(proc.env ?? []), `LISTEN_FDS=${listen}`, 'LISTEN_PID=1'] } : proc;
  // the record keeps the config as given (exec starts from it); the init gets HOME and LISTEN_FDS
  const initSpec: Spec = { ...spec, process: withHome(withListen, rootfs) };
  // the executor starts (and makes its sealed copy) while the plan is compiled; it waits for the plan
  const handle = startExecutor(extraFds);
  const { executor, channel } = handle;
  let cgroups: CgroupManager, plan: InitPlan, unlock: () => void;
  try {
    cgroups = cgroupManager(spec.linux?.cgroupsPath || defaultCgroupsPath(opts.id), opts.systemdCgroup);
    // compile before claiming the id: a bad config leaves nothing behind
    plan = compileInitPlan(initSpec, {
      rootfs, bundle, fifoPath: store.fifoPath(opts.id), foreground: opts.foreground === true, noPivot: opts.noPivot === true,
      sessionKeyring: opts.noNewKeyring ? undefined : `_ses.${opts.id}`,
      preserveFds: extraFds, cgroupMounts: cgroups.mountSources(), lastCap: lastCap(),
      nofileHard: nofileHardLimit(), canRaiseRlimits: hasCapability(CAP_SYS_RESOURCE),
      consoleSocket: opts.consoleSocket, seccomp: security.seccomp, lsm: security.lsm,
    });
    store.checkFree(opts.id);
    refuseBusyCgroup(cgroups);
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
  const warnings: string[] = [...security.warnings];
  // a writable rootfs is recorded now, while the container cannot have written to it yet, so that an
  // exported checkpoint can carry only what changed; it runs alongside the setup
  const snapshot = spec.root!.readonly ? undefined : takeRootfsSnapshot(rootfs, store.dir(opts.id));
  try {
    cgroups.create();
    warnings.push(...cgroups.set(containerResources(spec)));
    channel.send(MSG.PLAN, encodePlan(plan));
    pid = await runHandshake(handle, plan, {
      onPid: async (p) => {
        pid = p;
        record.pid = p;
        record.startTime = procStat(p)?.startTime ?? 0;
        try {
          await cgroups.apply(p);
        } catch (e) {
          throw new TsruncError(`cannot move init into cgroup ${Object.values(cgroups.paths)[0]}: ${(e as Error).message}`);
        }
        if (newNamespaces(spec).has('user')) writeIdMaps(p, spec);
        // recorded now, so that a tsrunc killed mid-create leaves something `delete --force` can clean
        store.save(record);
      },
      onHooks: async () => {
        const st = ociState(record, 'creating');
        await runHooks('prestart', spec.hooks?.prestart, st);
        await runHooks('createRuntime', spec.hooks?.createRuntime, st);
        await runHooks('createContainer', spec.hooks?.createContainer, st);
      },
      onReady: async () => {
        const w = await snapshot;
        if (w) warnings.push(w);
        record.ready = true;
        store.save(record);
        if (opts.pidFile) writeFileAtomic(resolvePath(opts.pidFile), String(pid), 0o644);
        return continuePayload(ociState(record, 'created'), pid, security.seccomp);
      },
    });
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
    await snapshot;
    await cgroups.destroy().catch(() => {});
    store.remove(opts.id);
    throw e;
  }
}

export const ROOTFS_SNAPSHOT = 'rootfs-snapshot.json';

/** The rootfs's lstat facts into the state dir; a failure is only a warning (an export then carries no diff). */
export async function takeRootfsSnapshot(rootfs: string, stateDir: string): Promise<string | undefined> {
  try {
    const { snapshotRootfs } = await import('../image/diff.js');
    const snap = await snapshotRootfs(rootfs);
    writeFileAtomic(posix.join(stateDir, ROOTFS_SNAPSHOT), JSON.stringify(snap), 0o600);
    return undefined;
  } catch (e) {
    return `rootfs snapshot of ${rootfs} failed (${(e as Error).message}); a checkpoint export will not carry rootfs changes`;
  }
}
