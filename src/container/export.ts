/**
 * checkpoint --export: the container frozen, dumped by CRIU into a work dir (tmpfs when it
 * fits), streamed out as one .tar.zst with its config, runtime facts and rootfs diff, the work
 * dir removed. The container is destroyed only once the image is complete (or, for a migration,
 * once the caller confirms); any failure thaws it again.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statfsSync } from 'node:fs';
import { posix, resolve } from 'node:path';
import { TsruncError } from '../errors.js';
import { cgroupManagerFromPaths } from '../cgroups/manager.js';
import { StateStore, runUndo, type ContainerRecord, type Undo } from '../state/store.js';
import { VERSION, selfCommand } from '../version.js';
import { openCriu, versionString } from './criu.js';
import { destroyContainer } from './delete.js';
import { checkCheckpointable, checkLazy, dumpContainer, dumpPlan, type CheckpointMeta, type CheckpointOptions } from './checkpoint.js';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { ROOTFS_SNAPSHOT } from './create.js';
import type { ImageSource } from '../image/index.js';
import type { CriuStats } from '../../criu/stats.js';

export interface ExportOptions extends CheckpointOptions {
  /** zstd level (1..19 and more; default 1) */
  compressLevel?: number;
  /** phases and bytes, for a progress bar */
  onProgress?: (phase: 'dump' | 'write' | 'pages', done: number, total?: number) => void;
  /** the moment the container was frozen (a migration's downtime starts here) */
  onFrozen?: () => void;
  /**
   * post-copy: CRIU dumps all but the memory, serves the memory on 127.0.0.1:port (a lazy dump,
   * in a process of its own) until the destination has fetched every page; export returns then
   */
  lazy?: { port: number };
  /**
   * Called once the image is complete, the container still frozen: true to go on (destroy, or
   * thaw with leaveRunning), false to thaw and keep it. Migration waits here for the destination.
   */
  confirm?: () => Promise<boolean>;
}

export interface ExportResult {
  /** bytes of content (uncompressed) and of image written */
  bytesIn: number;
  bytesOut: number;
  /** CRIU's own numbers (stats-dump), times in microseconds */
  criu?: CriuStats;
  /** milliseconds: frozen until the dump ended, writing the image, the whole export */
  dumpMs: number;
  writeMs: number;
  totalMs: number;
  /** frozen → thawed or destroyed */
  frozenMs: number;
  workDir: string;
  onTmpfs: boolean;
  rootfs: { changed: number; deleted: number } | undefined;
  warnings: string[];
}

const MiB = 1024 * 1024;
/** zstd level 1: as fast as the disk-less pipe wants; the half of memory that compresses still does (pages are not text) */
export const DEFAULT_LEVEL = 1;

/** The export in progress, so that a signal can undo it: thaw the container, remove the scratch dir and a partial file. */
let inProgress: Undo | undefined;

/** Synchronous, for a signal handler: the container runs on, nothing half-written stays. */
export function abortExport(): void {
  if (inProgress) runUndo(inProgress);
  inProgress = undefined;
}

function freezerOf(rec: ContainerRecord): [string, string] | undefined {
  if (rec.cgroupMode === 'v2') return rec.cgroupPaths[''] ? [posix.join(rec.cgroupPaths[''], 'cgroup.freeze'), '0'] : undefined;
  return rec.cgroupPaths['freezer'] ? [posix.join(rec.cgroupPaths['freezer'], 'freezer.state'), 'THAWED'] : undefined;
}

function memoryUsage(rec: ContainerRecord): number {
  const file = rec.cgroupMode === 'v2' ? posix.join(rec.cgroupPaths[''] ?? '', 'memory.current')
    : posix.join(rec.cgroupPaths['memory'] ?? '', 'memory.usage_in_bytes');
  try {
    return Number(readFileSync(file, 'utf8').trim()) || 0;
  } catch {
    return 0;
  }
}

export function freeBytes(dir: string): number {
  try {
    const s = statfsSync(dir);
    return s.bavail * s.bsize;
  } catch {
    return 0;
  }
}

/** /dev/shm when the container's memory fits there with room to spare, else under --root. */
export function scratchDir(store: StateStore, prefix: string, need: number, explicit?: string): { dir: string; tmpfs: boolean } {
  if (explicit) {
    mkdirSync(explicit, { recursive: true });
    return { dir: mkdtempSync(posix.join(resolve(explicit), prefix)), tmpfs: false };
  }
  if (existsSync('/dev/shm') && freeBytes('/dev/shm') > need * 1.25 + 256 * MiB) {
    try {
      return { dir: mkdtempSync(posix.join('/dev/shm', prefix)), tmpfs: true };
    } catch {
      /* not writable: the disk then */
    }
  }
  const base = posix.join(store.root, '.work');
  mkdirSync(base, { recursive: true, mode: 0o700 });
  return { dir: mkdtempSync(posix.join(base, prefix)), tmpfs: false };
}

export async function exportCheckpoint(store: StateStore, id: string, out: NodeJS.WritableStream | string, o: ExportOptions): Promise<ExportResult> {
  const t0 = Date.now();
  if (o.preDump) throw new TsruncError('--pre-dump cannot be combined with --export (a pre-dump is not a complete image)');
  if (o.pageServer) throw new TsruncError('--page-server cannot be combined with --export (the pages would not be in the image)');
  const unlock = await store.lock(id);
  const warnings: string[] = [];
  let scratch: { dir: string; tmpfs: boolean } | undefined;
  try {
    const rec = store.load(id);
    const criu = openCriu(o.criu);
    checkCheckpointable(store, rec, criu, o);
    const image = await import('../image/index.js');
    const { readCriuStats } = await import('../../criu/stats.js');
    const cg = cgroupManagerFromPaths(rec.cgroupMode, rec.cgroupPaths);
    const wasPaused = cg.frozen();
    scratch = scratchDir(store, `export-${id}-`, memoryUsage(rec), o.workPath);
    const imagesDir = o.imagePath ? resolve(o.imagePath) : posix.join(scratch.dir, 'criu');
    mkdirSync(imagesDir, { recursive: true });
    const fz = freezerOf(rec);
    // if this tsrunc dies from here on, a signal handler or the next tsrunc to lock the container undoes it
    inProgress = { thaw: !wasPaused ? fz : undefined, remove: [scratch.dir, ...(typeof out === 'string' ? [`${resolve(out)}.${process.pid}.partial`] : [])] };
    store.setUndo(id, inProgress);

    // post-copy: the process that will run the lazy dump starts (node, libcriu) before the freeze, not during the downtime
    if (o.lazy) checkLazy(criu);
    const dumper = o.lazy ? spawnLazyDumper(store, o) : undefined;
    if (dumper) {
      const why = await dumper.loaded;
      if (why) {
        dumper.kill();
        throw new TsruncError(why);
      }
    }
    // frozen by us, so CRIU leaves it frozen after the dump: memory and rootfs stay one moment in time
    const tFreeze = Date.now();
    o.onFrozen?.();
    await cg.freeze();
    let settled = false;
    let lazy: LazyDump | undefined;
    const resume = async () => {
      if (!settled && !wasPaused) await cg.thaw().catch(() => {});
      settled = true;
    };
    try {
      o.onProgress?.('dump', 0);
      let meta;
      if (o.lazy && dumper) {
        lazy = await startLazyDump(dumper, rec, o, imagesDir, scratch.dir, o.lazy.port);
        meta = lazy.meta;
      } else meta = dumpContainer(rec, criu, o, imagesDir, scratch.dir, true);
      const dumpMs = Date.now() - tFreeze;
      const stats = readCriuStats(posix.join(scratch.dir, 'stats-dump')) ?? readCriuStats(posix.join(imagesDir, 'stats-dump'));

      let diff: { changed: string[]; deleted: string[] } | undefined;
      if (!rec.config.root?.readonly) {
        const snapPath = posix.join(store.dir(id), ROOTFS_SNAPSHOT);
        if (existsSync(snapPath)) {
          const snap = image.validateSnapshot(JSON.parse(readFileSync(snapPath, 'utf8')));
          diff = await image.diffRootfs(rec.rootfs, snap);
        } else warnings.push(`no rootfs snapshot for "${id}" (created by another runtime?): the image carries no rootfs changes`);
      }
      const runtime = { ...meta, rootfsDiff: diff ? { changed: diff.changed.length, deleted: diff.deleted.length } : undefined };
      const sources: ImageSource[] = [
        { dir: imagesDir, prefix: 'criu', kind: 'criu' },
        { path: 'config.json', data: JSON.stringify(rec.config, null, 2), kind: 'config', mode: 0o644 },
        { path: 'runtime.json', data: JSON.stringify(runtime, null, 1), kind: 'runtime', mode: 0o644 },
      ];
      if (diff) sources.push({ dir: rec.rootfs, prefix: 'rootfs', kind: 'rootfs', paths: diff.changed, devices: true }, { deleted: diff.deleted });
      const facts = await image.hostFacts();
      const tWrite = Date.now();
      let total: number | undefined;
      const written = await image.writeImage({
        out, sources, compressLevel: o.compressLevel ?? DEFAULT_LEVEL,
        manifestBase: { containerId: id, tsrunc: VERSION, criu: { version: versionString(criu.version()) }, kernel: facts.kernel, arch: facts.arch, cpu: facts.cpu },
        onHeader: (h) => {
          total = h.contentBytes;
        },
        onProgress: (bytesIn) => o.onProgress?.('write', bytesIn, total),
      });
      const writeMs = Date.now() - tWrite;
      for (const s of written.skipped) warnings.push(`not in the image: ${s} (sockets and the like cannot be carried)`);

      const goOn = o.confirm ? await o.confirm() : true;
      if (!goOn) {
        await resume();
        throw new TsruncError(`checkpoint of "${id}" was not confirmed; the container runs on`);
      }
      if (lazy) {
        // post-copy: the destination runs; the source's memory goes on being served until all of it is there
        const why = await lazy.done;
        if (why) {
          settled = true; // the destination has run on its own: thawing the source now would make two diverging copies
          throw Object.assign(new TsruncError(`post-copy of "${id}": the page transfer failed (${why}); the destination's copy cannot be complete. The source is left frozen (paused): "tsrunc resume ${id}" brings it back`), { keepFrozen: true });
        }
        o.onProgress?.('pages', 1, 1);
      }
      if (o.leaveRunning) await resume();
      else {
        // killed while still frozen, so not one more instruction runs after the image was taken
        for (const p of cg.pids()) {
          try {
            process.kill(p, 'SIGKILL');
          } catch {
            /* gone */
          }
        }
        settled = true;
        warnings.push(...(await destroyContainer(store, rec)));
      }
      return {
        bytesIn: written.bytesIn, bytesOut: written.bytesOut, criu: stats, dumpMs, writeMs, totalMs: Date.now() - t0,
        frozenMs: Date.now() - tFreeze, workDir: scratch.dir, onTmpfs: scratch.tmpfs,
        rootfs: diff ? { changed: diff.changed.length, deleted: diff.deleted.length } : undefined, warnings,
      };
    } catch (e) {
      dumper?.kill();
      // a migration that cannot tell whether the destination took over leaves the container frozen (paused), neither lost nor doubled
      if ((e as { keepFrozen?: boolean }).keepFrozen) settled = true;
      await resume();
      throw e;
    }
  } finally {
    inProgress = undefined;
    if (store.exists(id)) store.setUndo(id, undefined);
    // TSRUNC_KEEP_WORK=1 keeps CRIU's logs of a failed run for a post-mortem
    if (scratch && !process.env.TSRUNC_KEEP_WORK) rmSync(scratch.dir, { recursive: true, force: true });
    unlock();
  }
}

interface LazyDump {
  meta: CheckpointMeta;
  /** resolves when CRIU has served every page: undefined when all went well, else why not */
  done: Promise<string | undefined>;
  kill: () => void;
}

interface LazyDumper {
  /** undefined once the process has CRIU loaded, else why it could not */
  loaded: Promise<string | undefined>;
  go: (optionsFile: string) => void;
  /** resolves when the process ends: undefined when CRIU served every page, else why not */
  exited: Promise<string | undefined>;
  status: NodeJS.ReadableStream;
  kill: () => void;
}

/**
 * The process for a lazy dump (libcriu blocks its caller until the last page is fetched):
 * `tsrunc __criu-dump -` loads CRIU, says so, then waits for the options file on stdin.
 */
function spawnLazyDumper(store: StateStore, o: ExportOptions): LazyDumper {
  const [node, bin] = selfCommand();
  const child = spawn(node, [bin, '--root', store.root, ...(o.criu ? ['--criu', o.criu] : []), '__criu-dump', '-'], {
    stdio: ['pipe', 'pipe', 'pipe', 'pipe'], detached: true,
  });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => {
    if (err.length < 8192) err += d.toString();
  });
  child.stdin!.on('error', () => {});
  const exited = new Promise<string | undefined>((res) => child.on('close', (code, sig) => {
    const last = err.trim().split('\n').filter(Boolean).pop()?.replace(/^tsrunc: /, '');
    res(code === 0 ? undefined : last || `the lazy dump ended with ${sig ?? `status ${code}`}`);
  }));
  const loaded = new Promise<string | undefined>((res) => {
    child.stdout!.once('data', () => res(undefined));
    void exited.then((why) => res(why ?? 'the lazy dump ended before it started'));
  });
  return {
    loaded, exited, status: child.stdio[3] as NodeJS.ReadableStream,
    go: (file) => child.stdin!.end(file + '\n'),
    kill: () => {
      try {
        process.kill(-child.pid!, 'SIGKILL'); // CRIU's swrk is in its group too
      } catch {
        /* gone */
      }
    },
  };
}

/**
 * Starts the lazy dump: resolves once CRIU's page server listens (its status fd), i.e. once the
 * image directory holds everything but the memory.
 */
async function startLazyDump(d: LazyDumper, rec: ContainerRecord, o: ExportOptions, imagesDir: string, workDir: string, port: number): Promise<LazyDump> {
  const { dump, meta } = dumpPlan(rec, o, imagesDir, workDir, true);
  dump.lazyPages = true;
  dump.pageServer = { address: '127.0.0.1', port };
  dump.statusFd = 3;
  const file = posix.join(workDir, 'tsrunc-lazy-dump.json');
  writeFileSync(file, JSON.stringify({ id: rec.id, dump }), { mode: 0o600 });
  d.go(file);
  const ready = await new Promise<string | undefined>((res) => {
    d.status.once('data', () => res(undefined));
    void d.exited.then((why) => res(why ?? 'the lazy dump ended before its page server was ready'));
  });
  if (ready) {
    d.kill();
    throw new TsruncError(ready);
  }
  return { meta, done: d.exited, kill: d.kill };
}
