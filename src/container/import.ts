/**
 * restore --import: one pass over the .tar.zst into a staging dir, every digest and the manifest
 * verified before anything leaves it, then the rootfs diff applied to the bundle's rootfs and CRIU
 * restoring from the staged files. The staging dir is removed whatever happens.
 */
import { createReadStream, existsSync, mkdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { posix, resolve } from 'node:path';
import { SpecError, TsruncError } from '../errors.js';
import { validateSpec } from '../spec/validate.js';
import type { Spec } from '../spec/types.js';
import { StateStore, validateId, type ContainerRecord } from '../state/store.js';
import { loadBundle, takeRootfsSnapshot } from './create.js';
import { freeBytes, scratchDir } from './export.js';
import { checkMeta, restoreContainer, type RestoreOptions } from './restore.js';
import { deleteContainer } from './delete.js';
import type { Manifest } from '../image/index.js';

export interface ImportOptions extends RestoreOptions {
  /** a file, or '-' for stdin */
  import: string;
  allowDevices?: boolean;
  /** largest image content accepted (default: what the staging filesystem has free) */
  maxImageSize?: number;
  onProgress?: (phase: 'import' | 'restore', done: number, total?: number) => void;
  /** the input, when not a file or stdin (migration) */
  input?: NodeJS.ReadableStream;
  /**
   * post-copy: the memory is not in the image; a CRIU lazy-pages daemon fetches it from this
   * page server while the container already runs. Import returns once every page is there.
   */
  lazyPageServer?: { address: string; port: number };
  /** the container runs (before its pages are all there, with lazyPageServer) */
  onRunning?: (pid: number) => void;
}

export interface ImportResult {
  record: ContainerRecord;
  warnings: string[];
  manifest: Manifest;
  bytesIn: number;
  bytesOut: number;
  /** milliseconds reading and verifying the image, restoring, in all */
  importMs: number;
  restoreMs: number;
  totalMs: number;
  rootfs?: { copied: number; deleted: number };
}

const MiB = 1024 * 1024;

let staged: string | undefined;

/** Synchronous, for a signal handler: the staging dir goes. */
export function abortImport(): void {
  if (staged) rmSync(staged, { recursive: true, force: true });
  staged = undefined;
}
const GiB = 1024 * MiB;

/** The bundle's config.json when it has one, else the image's (the bundle then only brings the rootfs). */
function bundleOf(bundleArg: string, staged: string): { bundle: string; spec: Spec } {
  const bundle = resolve(bundleArg);
  if (existsSync(posix.join(bundle, 'config.json'))) return loadBundle(bundle);
  if (!existsSync(bundle)) throw new TsruncError(`bundle ${bundle}: no such directory`);
  try {
    return { bundle, spec: validateSpec(JSON.parse(readFileSync(posix.join(staged, 'config.json'), 'utf8'))) };
  } catch (e) {
    if (e instanceof SpecError) throw new TsruncError(`config.json of the image: ${e.message}`);
    throw new TsruncError(`bundle ${bundle} has no config.json and the image's is unreadable`);
  }
}

export async function importCheckpoint(store: StateStore, id: string, o: ImportOptions): Promise<ImportResult> {
  const t0 = Date.now();
  validateId(id);
  if (store.exists(id)) throw new TsruncError(`container "${id}" already exists`);
  // what can be checked without reading the image is checked first
  const bundleDir = resolve(o.bundle);
  if (!existsSync(bundleDir)) throw new TsruncError(`bundle ${bundleDir}: no such directory`);
  if (existsSync(posix.join(bundleDir, 'config.json'))) loadBundle(bundleDir);
  let input = o.input;
  let size: number | undefined;
  if (!input) {
    if (o.import === '-') input = process.stdin;
    else {
      const file = resolve(o.import);
      let st;
      try {
        st = statSync(file);
      } catch {
        throw new TsruncError(`image ${file}: no such file`);
      }
      if (!st.isFile()) throw new TsruncError(`image ${file}: not a regular file`);
      size = st.size;
      input = createReadStream(file, { highWaterMark: MiB });
    }
  }
  const image = await import('../image/index.js');
  const scratch = scratchDir(store, `import-${id}-`, size !== undefined ? size * 3 : 4 * GiB, o.workPath);
  staged = scratch.dir;
  try {
    const staging = posix.join(scratch.dir, 'image');
    const maxTotal = o.maxImageSize ?? Math.max(freeBytes(scratch.dir) - 64 * MiB, 0);
    let declared: number | undefined;
    const where = o.input ? 'image stream' : o.import === '-' ? 'image on stdin' : resolve(o.import);
    const read = await image.readImage({
      input, staging, allowDevices: o.allowDevices,
      limits: { maxTotalSize: maxTotal },
      onHeader: (h) => {
        declared = h.contentBytes;
      },
      onProgress: (compressed, plain) => {
        if (size !== undefined) o.onProgress?.('import', compressed, size);
        else o.onProgress?.('import', plain, declared);
      },
    }).catch((e: unknown) => {
      throw e instanceof TsruncError ? new TsruncError(`${where}: ${e.message}`) : e;
    });
    const tRestore = Date.now();
    const importMs = tRestore - t0;
    const manifest = read.manifest;
    if (!existsSync(posix.join(staging, 'runtime.json')) || !existsSync(posix.join(staging, 'criu', 'inventory.img')))
      throw new TsruncError('image: not a container checkpoint (no runtime.json or criu/inventory.img)');
    const meta = checkMeta(JSON.parse(readFileSync(posix.join(staging, 'runtime.json'), 'utf8')), 'image: runtime.json');
    const facts = await image.hostFacts();
    const mismatch = image.hostMismatches(manifest, facts);
    if (mismatch.length) throw new TsruncError(`image of "${manifest.containerId}" cannot restore on this host: ${mismatch.join('; ')}`);
    const { bundle, spec } = bundleOf(bundleDir, staging);
    let applied: { copied: number; deleted: number } | undefined;
    o.onProgress?.('restore', 0);
    let daemon: LazyDaemon | undefined;
    const imagesDir = posix.join(staging, 'criu');
    const restored = restoreContainer(store, id, { ...o, lazyPages: o.lazyPageServer !== undefined }, {
      imagesDir, workDir: staging, meta, bundle, spec,
      beforeCriu: async (rootfs, stateDir) => {
        // the snapshot of the rootfs as the bundle brought it: a later export then carries these changes too
        const w = spec.root?.readonly ? undefined : await takeRootfsSnapshot(rootfs, stateDir);
        if (w) throw new TsruncError(w);
        if (manifest.rootfsDiff) {
          const stagedRootfs = posix.join(staging, 'rootfs');
          mkdirSync(stagedRootfs, { recursive: true });
          applied = await image.applyRootfsDiff(stagedRootfs, manifest.rootfsDiff.deleted, rootfs);
        }
        if (o.lazyPageServer) daemon = await startLazyDaemon(o, imagesDir, staging, o.lazyPageServer);
      },
    });
    let record: ContainerRecord, warnings: string[];
    try {
      ({ record, warnings } = await restored);
    } catch (e) {
      daemon?.kill();
      throw e;
    }
    o.onRunning?.(record.pid);
    if (daemon) {
      const why = await daemon.done;
      if (why) {
        // a container missing pages faults on them: it must not run on as if whole
        await deleteContainer(store, id, true).catch(() => {});
        throw new TsruncError(`post-copy restore of "${id}": the lazy pages did not all arrive (${why}); the container is deleted`);
      }
    }
    return {
      record, warnings, manifest, bytesIn: read.bytesIn, bytesOut: read.bytesOut, importMs, restoreMs: Date.now() - tRestore,
      totalMs: Date.now() - t0, rootfs: applied,
    };
  } finally {
    staged = undefined;
    rmSync(scratch.dir, { recursive: true, force: true });
  }
}

interface LazyDaemon {
  /** undefined when every page arrived, else why not */
  done: Promise<string | undefined>;
  kill: () => void;
}

/** CRIU's lazy-pages daemon for the staged images: ready (its status fd) before the restore starts. */
async function startLazyDaemon(o: ImportOptions, imagesDir: string, workDir: string, ps: { address: string; port: number }): Promise<LazyDaemon> {
  const { spawn } = await import('node:child_process');
  const { openCriu } = await import('./criu.js');
  const { criuErrors } = await import('../../criu/driver.js');
  const criu = openCriu(o.criu);
  // the daemon has no RPC form in CRIU: it is started as CRIU's own command
  const child = spawn(criu.binary, ['lazy-pages', '--page-server', '--address', ps.address, '--port', String(ps.port),
    '--images-dir', imagesDir, '--work-dir', workDir, '--log-file', 'lazy-pages.log', '-v4', '--status-fd', '3'], {
    stdio: ['ignore', 'ignore', 'ignore', 'pipe'], detached: true,
    env: { ...process.env, CRIU_FAULT: process.env.CRIU_FAULT ?? '130' },
  });
  const log = posix.join(workDir, 'lazy-pages.log');
  const done = new Promise<string | undefined>((res) => child.on('close', (code, sig) => {
    res(code === 0 ? undefined : criuErrors(log).join('; ') || `CRIU lazy-pages ended with ${sig ?? `status ${code}`}`);
  }));
  const kill = () => {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      /* gone */
    }
  };
  const ready = await new Promise<string | undefined>((res) => {
    (child.stdio[3] as NodeJS.ReadableStream).once('data', () => res(undefined));
    void done.then((why) => res(why ?? 'CRIU lazy-pages ended before it was ready'));
  });
  if (ready) {
    kill();
    throw new TsruncError(`post-copy: CRIU's lazy-pages daemon did not start: ${ready}`);
  }
  return { done, kill };
}
