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
    const { record, warnings } = await restoreContainer(store, id, o, {
      imagesDir: posix.join(staging, 'criu'), workDir: staging, meta, bundle, spec,
      beforeCriu: async (rootfs, stateDir) => {
        // the snapshot of the rootfs as the bundle brought it: a later export then carries these changes too
        const w = spec.root?.readonly ? undefined : await takeRootfsSnapshot(rootfs, stateDir);
        if (w) throw new TsruncError(w);
        if (manifest.rootfsDiff) {
          const stagedRootfs = posix.join(staging, 'rootfs');
          mkdirSync(stagedRootfs, { recursive: true });
          applied = await image.applyRootfsDiff(stagedRootfs, manifest.rootfsDiff.deleted, rootfs);
        }
      },
    });
    return {
      record, warnings, manifest, bytesIn: read.bytesIn, bytesOut: read.bytesOut, importMs, restoreMs: Date.now() - tRestore,
      totalMs: Date.now() - t0, rootfs: applied,
    };
  } finally {
    staged = undefined;
    rmSync(scratch.dir, { recursive: true, force: true });
  }
}
