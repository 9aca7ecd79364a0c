/** The state store under --root: one directory per container, state.json written atomically, a lock. */
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { posix } from 'node:path';
import { TsruncError } from '../errors.js';
import { isAlive, procStat } from '../linux/proc.js';
import type { Spec } from '../spec/types.js';
import { cgroupManagerFromPaths, type CgroupMode } from '../cgroups/manager.js';

export type Status = 'creating' | 'created' | 'running' | 'paused' | 'stopped';

/** What the runtime records about a container; `status` is derived, never stored. */
export interface ContainerRecord {
  id: string;
  pid: number;
  /** /proc/PID/stat start time of init, so a reused pid is not mistaken for it */
  startTime: number;
  bundle: string;
  rootfs: string;
  created: string;
  owner: string;
  annotations: Record<string, string>;
  cgroupMode: CgroupMode;
  cgroupPaths: Record<string, string>;
  config: Spec;
  /** false until the init reported ready: a create in progress, or one whose tsrunc was killed */
  ready: boolean;
}

const ID_MAX = 255;
const UNDO_FILE = 'undo.json';

export interface Undo {
  /** a freezer file and the value that thaws */
  thaw?: [string, string];
  /** paths to remove */
  remove: string[];
}

export function runUndo(undo: Undo): void {
  if (undo.thaw) {
    try {
      writeFileSync(undo.thaw[0], undo.thaw[1]);
    } catch {
      /* the cgroup is gone */
    }
  }
  for (const p of undo.remove ?? []) rmSync(p, { recursive: true, force: true });
}

export function validateId(id: string): void {
  if (id === '') throw new TsruncError('container id must not be empty');
  if (id.length > ID_MAX) throw new TsruncError(`container id is too long (${id.length} characters, at most ${ID_MAX})`);
  if (id.includes('/')) throw new TsruncError(`invalid container id "${id}": must not contain "/"`);
  if (id.includes('..') || id === '.') throw new TsruncError(`invalid container id "${id}": must not contain ".."`);
  if (!/^[A-Za-z0-9_+.-]+$/.test(id)) throw new TsruncError(`invalid container id "${id}": only letters, digits, "_", "+", "-" and "." are allowed`);
}

export function writeFileAtomic(path: string, data: string | Buffer, mode = 0o600): void {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, data, { mode });
  renameSync(tmp, path);
}

export class StateStore {
  constructor(readonly root: string) {}

  dir(id: string): string {
    return posix.join(this.root, id);
  }

  fifoPath(id: string): string {
    return posix.join(this.dir(id), 'exec.fifo');
  }

  /** Claims the id: mkdir is atomic, so two creates of one id cannot both win. */
  /** The id is valid and not taken (claim checks again, atomically). */
  checkFree(id: string): void {
    validateId(id);
    if (existsSync(this.dir(id))) throw new TsruncError(`container "${id}" already exists`);
  }

  claim(id: string): void {
    validateId(id);
    mkdirSync(this.root, { recursive: true, mode: 0o700 });
    try {
      mkdirSync(this.dir(id), { mode: 0o700 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new TsruncError(`container "${id}" already exists`);
      throw e;
    }
  }

  exists(id: string): boolean {
    return existsSync(posix.join(this.dir(id), 'state.json'));
  }

  load(id: string): ContainerRecord {
    validateId(id);
    let text: string;
    try {
      text = readFileSync(posix.join(this.dir(id), 'state.json'), 'utf8');
    } catch {
      throw new TsruncError(`container "${id}" does not exist`);
    }
    try {
      return JSON.parse(text) as ContainerRecord;
    } catch {
      throw new TsruncError(`state of container "${id}" is corrupt: ${posix.join(this.dir(id), 'state.json')}`);
    }
  }

  save(rec: ContainerRecord): void {
    writeFileAtomic(posix.join(this.dir(rec.id), 'state.json'), JSON.stringify(rec));
  }

  remove(id: string): void {
    rmSync(this.dir(id), { recursive: true, force: true });
  }

  list(): string[] {
    try {
      return readdirSync(this.root).filter((n) => existsSync(posix.join(this.root, n, 'state.json'))).sort();
    } catch {
      return [];
    }
  }

  status(rec: ContainerRecord): Status {
    if (!isAlive(rec.pid, rec.startTime)) return 'stopped';
    if (rec.ready === false) return 'creating';
    if (existsSync(this.fifoPath(rec.id))) return 'created';
    if (cgroupManagerFromPaths(rec.cgroupMode, rec.cgroupPaths).frozen()) return 'paused';
    return 'running';
  }

  /**
   * What to undo if this tsrunc dies mid-operation (a checkpoint export: thaw the container,
   * remove the scratch dir and the partial image); the next tsrunc that takes the lock does it.
   */
  setUndo(id: string, undo: Undo | undefined): void {
    const path = posix.join(this.dir(id), UNDO_FILE);
    if (undo) writeFileAtomic(path, JSON.stringify(undo));
    else rmSync(path, { force: true });
  }

  runUndo(id: string): void {
    const path = posix.join(this.dir(id), UNDO_FILE);
    let undo: Undo;
    try {
      undo = JSON.parse(readFileSync(path, 'utf8')) as Undo;
    } catch {
      return;
    }
    runUndo(undo);
    rmSync(path, { force: true });
  }

  /**
   * A per-container lock so two tsrunc calls on one container cannot interleave:
   * an O_EXCL lock file holding the owner's pid; a lock whose owner is dead is taken over.
   */
  async lock(id: string, timeoutMs = 30000): Promise<() => void> {
    validateId(id);
    const path = posix.join(this.dir(id), 'lock');
    const end = Date.now() + timeoutMs;
    for (;;) {
      try {
        const fd = openSync(path, 'wx', 0o600);
        writeSync(fd, `${process.pid} ${procStat(process.pid)?.startTime ?? 0}`);
        closeSync(fd);
        return () => rmSync(path, { force: true });
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') throw new TsruncError(`container "${id}" does not exist`);
        if (code !== 'EEXIST') throw e;
      }
      let owner = 0, ownerStart: number | undefined;
      try {
        const [p, s] = readFileSync(path, 'utf8').split(' ');
        owner = Number(p);
        ownerStart = s ? Number(s) : undefined;
      } catch {
        continue; // released meanwhile
      }
      if (owner && !isAlive(owner, ownerStart)) {
        // stale: move it aside atomically so only one taker wins, undo what the dead owner left half done, retry
        try {
          renameSync(path, `${path}.stale.${process.pid}`);
          rmSync(`${path}.stale.${process.pid}`, { force: true });
          this.runUndo(id);
        } catch {
          /* someone else took it */
        }
        continue;
      }
      if (Date.now() > end) throw new TsruncError(`container "${id}" is locked by another tsrunc (pid ${owner})`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}

/** The state JSON of the OCI spec / runc's `state` command. */
export function ociState(rec: ContainerRecord, status: Status): Record<string, unknown> {
  return {
    ociVersion: '1.0.2-dev',
    id: rec.id,
    pid: status === 'stopped' ? 0 : rec.pid,
    status,
    bundle: rec.bundle,
    rootfs: rec.rootfs,
    created: rec.created,
    owner: rec.owner,
    ...(Object.keys(rec.annotations).length ? { annotations: rec.annotations } : {}),
  };
}
