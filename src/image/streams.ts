/** Waiting on tar-stream's streams, which are streamx streams, not Node's. */

export interface StreamxWritable {
  readonly destroying: boolean;
  write(data: unknown): boolean;
  on(event: string, fn: () => void): unknown;
  off(event: string, fn: () => void): unknown;
}

/** Resolves when `w` has room again, or at once / when it is torn down (the caller then checks why). */
export function roomIn(w: StreamxWritable): Promise<void> {
  if (w.destroying) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      w.off('drain', done);
      w.off('close', done);
      resolve();
    };
    w.on('drain', done);
    w.on('close', done);
  });
}

/** Writes a chunk, waiting for room when the stream asks for it; false when the stream is torn down. */
export async function writeWithRoom(w: StreamxWritable, chunk: Buffer): Promise<boolean> {
  if (w.destroying) return false;
  if (!w.write(chunk)) await roomIn(w);
  return !w.destroying;
}
