/** restore: a new container from a checkpoint image directory, with CRIU, as runc does (no create first). */
import { closeSync, copyFileSync, existsSync, fstatSync, mkdirSync, openSync, readFileSync, rmdirSync, statSync } from 'node:fs';
import { posix, resolve } from 'node:path';
import { TsruncError } from '../errors.js';
import { cgroupManager, defaultCgroupsPath, hostHierarchies, refuseBusyCgroup } from '../cgroups/manager.js';
import type { Resources } from '../cgroups/resources.js';
import { checkDestinationInRoot, parseMountOptions } from '../init/compile.js';
import { procStat, waitGone } from '../linux/proc.js';
import { bindMount, detach } from '../linux/mount.js';
import { StateStore, validateId, writeFileAtomic, type ContainerRecord } from '../state/store.js';
import type { Spec } from '../spec/types.js';
import { CriuError } from '../../criu/driver.js';
import { openCriu } from './criu.js';
import { runHooksSync } from './hooks.js';
import { sendFdTo } from '../linux/unixsock.js';
import { containerResources, loadBundle, ROOTFS_SNAPSHOT } from './create.js';
import { criuCommonOptions, IMAGE_SNAPSHOT, META_FILE, type CheckpointMeta, type CheckpointOptions } from './checkpoint.js';

export interface RestoreOptions extends CheckpointOptions {
  bundle: string;
  detach?: boolean;
  pidFile?: string;
  consoleSocket?: string;
  noSubreaper?: boolean;
  noPivot?: boolean;
  lsmProfile?: string;
  lsmMountContext?: string;
  systemdCgroup?: boolean;
}

/** The runtime facts of a checkpoint, checked for the fields restore relies on. */
export function checkMeta(x: unknown, what: string): CheckpointMeta {
  const m = x as CheckpointMeta;
  if (typeof x !== 'object' || x === null || m.format !== 1 || !Array.isArray(m.stdio) || !Array.isArray(m.externalMounts)
    || typeof m.pid !== 'number' || typeof m.config !== 'object' || m.config === null)
    throw new TsruncError(`${what} has an unknown format`);
  return m;
}

export function readCheckpointMeta(imagesDir: string): CheckpointMeta {
  if (!existsSync(imagesDir)) throw new TsruncError(`image path ${imagesDir}: no such directory`);
  const metaPath = posix.join(imagesDir, META_FILE);
  if (!existsSync(posix.join(imagesDir, 'inventory.img')))
    throw new TsruncError(`image path ${imagesDir}: not a checkpoint (no CRIU inventory.img)`);
  let meta: CheckpointMeta;
  try {
    meta = JSON.parse(readFileSync(metaPath, 'utf8')) as CheckpointMeta;
  } catch (e) {
    throw new TsruncError(`image path ${imagesDir}: ${META_FILE} is ${existsSync(metaPath) ? 'damaged' : 'missing'}`);
  }
  return checkMeta(meta, `image path ${imagesDir}: ${META_FILE}`);
}

/**
 * CRIU mounts onto the mountpoints of the rootfs it is given; a fresh rootfs (another host, an
 * engine's new overlay) may lack those the runtime made at create: a bind of a file needs a file.
 */
function makeMountpoints(rootfs: string, bundle: string, spec: Spec): void {
  for (const [i, m] of (spec.mounts ?? []).entries()) {
    const inRoot = checkDestinationInRoot(rootfs, posix.normalize(m.destination), `mounts[${i}].destination`);
    const host = posix.join(rootfs, inRoot);
    if (existsSync(host)) continue;
    let fileSource = false;
    if (m.type === 'bind' || parseMountOptions(m.options).bind) {
      const src = m.source && (m.source.startsWith('/') ? m.source : posix.join(bundle, m.source));
      try {
        fileSource = !!src && !statSync(src).isDirectory();
      } catch {
        /* a missing source is CRIU's to report */
      }
    }
    if (fileSource) {
      mkdirSync(posix.dirname(host), { recursive: true });
      closeSync(openSync(host, 'a', 0o644));
    } else mkdirSync(host, { recursive: true });
  }
}

/** Where restore takes the checkpoint from when it is not runc's --image-path directory. */
export interface RestoreSource {
  imagesDir: string;
  workDir: string;
  meta: CheckpointMeta;
  bundle: string;
  spec: Spec;
  /** after the id is claimed, before CRIU: the rootfs diff goes in here */
  beforeCriu?: (rootfs: string, stateDir: string) => Promise<void>;
}

export async function restoreContainer(store: StateStore, id: string, o: RestoreOptions, from?: RestoreSource): Promise<{ record: ContainerRecord; warnings: string[] }> {
  validateId(id);
  const imagesDir = from?.imagesDir ?? resolve(o.imagePath ?? 'checkpoint');
  const workDir = from?.workDir ?? resolve(o.workPath ?? imagesDir);
  const meta = from?.meta ?? readCheckpointMeta(imagesDir);
  const { bundle, spec } = from ?? loadBundle(o.bundle);
  const tty = meta.stdio.find((s) => s.tty);
  if (tty && !o.consoleSocket) throw new TsruncError(`the checkpointed container has a terminal (${tty.target}); restoring it needs --console-socket`);
  if (!tty && o.consoleSocket) throw new TsruncError('--console-socket: the checkpointed container has no terminal');
  const consoleSocket = o.consoleSocket ? resolve(o.consoleSocket) : undefined;
  if (consoleSocket) {
    let st;
    try {
      st = statSync(consoleSocket);
    } catch {
      throw new TsruncError(`--console-socket ${consoleSocket}: no such socket`);
    }
    if (!st.isSocket()) throw new TsruncError(`--console-socket ${consoleSocket}: not a unix socket`);
  }
  // the resources the source had at checkpoint time, updates included
  const resources = { ...((meta.config.linux?.resources ?? spec.linux?.resources ?? {}) as Resources) };
  spec.linux = { ...(spec.linux ?? {}), resources: resources as Record<string, unknown> };
  const rootfs = spec.root!.path.startsWith('/') ? spec.root!.path : posix.join(bundle, spec.root!.path);
  const criu = openCriu(o.criu);
  mkdirSync(workDir, { recursive: true });

  const cgroups = cgroupManager(spec.linux.cgroupsPath || defaultCgroupsPath(id), o.systemdCgroup);
  store.checkFree(id);
    refuseBusyCgroup(cgroups);
  store.claim(id);
  const unlock = await store.lock(id);
  const criuRoot = posix.join(store.dir(id), 'criu-root');
  let mounted = false;
  const ownFds: number[] = [];
  const warnings: string[] = [];
  try {
    cgroups.create();
    warnings.push(...cgroups.set(containerResources(spec)));
    // a tree restored into the host's pid namespace needs its old pids free again
    if (!meta.newPidNs && !(await waitGone(meta.pid, undefined, 10000)))
      throw new TsruncError(`pid ${meta.pid} of the checkpointed init is still in use`);
    mkdirSync(criuRoot);
    bindMount(rootfs, criuRoot); // CRIU wants the root to be a mount point
    mounted = true;

    const extMounts: [string, string][] = meta.externalMounts.map((e) => {
      if (e.kind === 'mask') return [e.key, '/dev/null'];
      if (e.kind === 'cgroup') {
        const dir = cgroups.paths[e.ref];
        if (!dir) throw new TsruncError(`the checkpoint has cgroup hierarchy "${e.ref}", which this host does not have`);
        return [e.key, dir];
      }
      const m = (spec.mounts ?? []).find((x) => x.destination === e.ref && (x.type === 'bind' || parseMountOptions(x.options).bind));
      if (!m?.source) throw new TsruncError(`mounts: the checkpoint has a bind mount on ${e.ref}, which ${bundle}/config.json does not`);
      return [e.key, m.source.startsWith('/') ? m.source : posix.join(bundle, m.source)];
    });
    // the new container's cgroups, as paths below each hierarchy's root
    const rel = (name: string, mountpoint: string) => '/' + posix.relative(mountpoint, cgroups.paths[name]);
    const hier = hostHierarchies().filter((h) => h.name in cgroups.paths);
    const cgRoots: [string, string][] = [['', rel(hier[0].name, hier[0].mountpoint)],
      ...hier.filter((h) => h.controllers.length).map((h): [string, string] => [h.controllers.join(','), rel(h.name, h.mountpoint)])];
    const inheritFds: [number, string][] = meta.stdio.filter((s) => s.key).map((s) => {
      // /dev/null is /dev/null anywhere: restore opens its own (its stdin may be the image itself)
      if (s.target === '/dev/null') {
        const fd = openSync('/dev/null', 'r+');
        ownFds.push(fd);
        return [fd, s.key!];
      }
      if (s.mode !== undefined) {
        const mine = fstatSync(s.fd).mode;
        if (mine !== s.mode)
          throw new TsruncError(`fd ${s.fd} of the checkpointed init was ${s.target} (mode ${s.mode.toString(8)}); restore's fd ${s.fd} must be the same kind of file (it is mode ${mine.toString(8)})`);
      }
      return [s.fd, s.key!];
    });

    // the last step before CRIU, once every check has passed: an imported rootfs diff goes in
    await from?.beforeCriu?.(rootfs, store.dir(id));
    makeMountpoints(rootfs, bundle, spec);
    if (!from && existsSync(posix.join(imagesDir, IMAGE_SNAPSHOT))) copyFileSync(posix.join(imagesDir, IMAGE_SNAPSHOT), posix.join(store.dir(id), ROOTFS_SNAPSHOT));
    let pid: number;
    try {
      pid = criu.restore({
        // one log per restore: the same image may be restored several times at once
        ...criuCommonOptions(o, imagesDir, workDir, `restore-${id}.log`),
        root: criuRoot, extMounts, cgRoots, inheritFds, lsmProfile: o.lsmProfile, lsmMountContext: o.lsmMountContext,
        orphanPtsMaster: !!tty,
        onEvent: (e) => {
          if (e.type === 'setup-namespaces' && (spec.hooks?.prestart?.length || spec.hooks?.createRuntime?.length)) {
            // as runc: the tree exists with its namespaces, nothing of it runs yet
            const state = { ociVersion: '1.0.2-dev', id, pid: e.pid, status: 'creating', bundle, ...(spec.annotations ? { annotations: spec.annotations } : {}) };
            runHooksSync('prestart', spec.hooks?.prestart, state);
            runHooksSync('createRuntime', spec.hooks?.createRuntime, state);
          } else if (e.type === 'orphan-pts-master') {
            try {
              sendFdTo(consoleSocket!, e.fd, tty!.target);
            } finally {
              closeSync(e.fd);
            }
          }
        },
      });
    } catch (e) {
      if (e instanceof CriuError) throw new TsruncError(`restore of "${id}": ${e.message}`);
      throw e;
    }
    const record: ContainerRecord = {
      id, pid, startTime: procStat(pid)?.startTime ?? 0, bundle, rootfs, created: new Date().toISOString(), owner: '',
      annotations: spec.annotations ?? {}, cgroupMode: cgroups.mode, cgroupPaths: cgroups.paths, config: spec, ready: true,
    };
    store.save(record);
    if (o.pidFile) writeFileAtomic(resolve(o.pidFile), String(pid), 0o644);
    return { record, warnings };
  } catch (e) {
    await cgroups.destroy().catch(() => {});
    if (mounted) detach(criuRoot);
    store.remove(id);
    throw e;
  } finally {
    for (const fd of ownFds) closeSync(fd);
    if (mounted && existsSync(criuRoot)) {
      detach(criuRoot);
      try {
        rmdirSync(criuRoot);
      } catch {
        /* removed with the state */
      }
    }
    unlock();
  }
}
