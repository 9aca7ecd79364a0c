/**
 * The checkpoint image format (.tar.zst). Heavy (tar-stream, zstd-napi): import it lazily,
 * `await import('../image/index.js')`. create's rootfs snapshot needs only './diff.js'.
 */
export * from './manifest.js';
export { writeImage, type BufferSource, type DeletedSource, type DirSource, type ImageSource, type WriteImageOptions, type WriteImageResult } from './writer.js';
export { readImage, type ReadImageOptions, type ReadImageResult, type ReadLimits } from './reader.js';
export {
  applyRootfsDiff, diffRootfs, snapshotRootfs, validateSnapshot,
  type ApplyResult, type RootfsDiff, type Snapshot, type SnapshotRecord,
} from './diff.js';
export { compressLevelRange } from './zstd.js';
