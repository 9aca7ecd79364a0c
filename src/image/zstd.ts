/** zstd through zstd-napi: the compressor is its stream; the decoder is ours, to stop a bomb mid-frame. */
import { availableParallelism } from 'node:os';
import binding from 'zstd-napi/binding.js';
import { CompressStream } from 'zstd-napi';
import { TsruncError } from '../errors.js';

/** Lowest and highest level zstd accepts (negative levels are its "fast" modes). */
export function compressLevelRange(): { min: number; max: number } {
  return { min: binding.minCLevel(), max: binding.maxCLevel() };
}

export interface CompressorOptions {
  level?: number;
  /** zstd worker threads; 0 compresses on the calling thread */
  workers?: number;
}

/**
 * A zstd compressing stream. With workers >= 1 zstd compresses in its own threads and the
 * JavaScript thread only hands it input, so reading and hashing go on while it works.
 */
export function createCompressor(opts: CompressorOptions = {}): CompressStream {
  const level = opts.level ?? 3;
  const { min, max } = compressLevelRange();
  if (!Number.isInteger(level) || level < min || level > max) {
    throw new TsruncError(`compression level ${level} is out of range (${min}..${max})`);
  }
  const wb = binding.cParamGetBounds(binding.CParameter.nbWorkers);
  const workers = opts.workers ?? availableParallelism();
  if (!Number.isInteger(workers) || workers < 0) throw new TsruncError(`compression workers must be a non-negative integer, not ${workers}`);
  return new CompressStream({
    compressionLevel: level,
    nbWorkers: Math.min(workers, wb.upperBound),
    checksumFlag: true,
  });
}

/** zstd frames start with this, little-endian */
const ZSTD_MAGIC = 0xfd2fb528;

export interface DecodeGuard {
  /** called with each chunk's size before the chunk is handed on; throwing stops decoding */
  (produced: number): void;
}

/**
 * Decompresses `input` chunk by chunk. Output is produced one window-sized buffer at a time and
 * only when the consumer asks for more, so a tiny input that expands to terabytes costs no memory,
 * and `guard` can stop it the moment a limit is passed.
 */
export async function* zstdDecode(input: AsyncIterable<Buffer | string>, guard: DecodeGuard): AsyncGenerator<Buffer> {
  const dctx = new binding.DCtx();
  // a window above 128 MiB (zstd's own default ceiling) would be a hostile frame's way to make us allocate
  dctx.setParameter(binding.DParameter.windowLogMax, 27);
  const outSize = binding.dStreamOutSize();
  let head: Buffer | undefined = Buffer.alloc(0);
  let inFrame = false;
  for await (const piece of input) {
    let src = typeof piece === 'string' ? Buffer.from(piece) : piece;
    if (head !== undefined) {
      head = Buffer.concat([head, src]);
      if (head.length < 4) continue;
      if (head.readUInt32LE(0) !== ZSTD_MAGIC) throw new TsruncError('not a tsrunc image: not a zstd stream');
      src = head;
      head = undefined;
    }
    for (;;) {
      const dst = Buffer.allocUnsafe(outSize);
      let ret: number;
      let produced: number;
      let consumed: number;
      try {
        [ret, produced, consumed] = dctx.decompressStream(dst, src);
      } catch (e) {
        throw new TsruncError(`image corrupt: zstd: ${e instanceof Error ? e.message : String(e)}`);
      }
      if (produced === 0 && consumed === 0 && src.length > 0) throw new TsruncError('image corrupt: zstd makes no progress');
      src = src.subarray(consumed);
      inFrame = ret !== 0;
      if (produced > 0) {
        guard(produced);
        yield dst.subarray(0, produced);
      }
      // a full output buffer may mean zstd holds more; otherwise it needs more input
      if (src.length === 0 && produced < dst.length) break;
    }
  }
  if (head !== undefined) throw new TsruncError(head.length === 0 ? 'image is empty' : 'not a tsrunc image: not a zstd stream');
  if (inFrame) throw new TsruncError('image truncated: the zstd stream ends inside a frame');
}
