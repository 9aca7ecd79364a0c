/** The parent side of the init handshake: framed messages on the executor's socket. */
import type { Socket } from 'node:net';
import { MSG } from './opcodes.js';

export interface Frame {
  type: number;
  payload: Buffer;
}

export class SyncChannel {
  private buf: Buffer = Buffer.alloc(0);
  private queue: Frame[] = [];
  private waiters: { resolve: (f: Frame | null) => void }[] = [];
  private ended = false;

  constructor(private readonly sock: Socket) {
    sock.on('data', (d: Buffer) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
      while (this.buf.length >= 8) {
        const len = this.buf.readUInt32LE(4);
        if (this.buf.length < 8 + len) break;
        this.push({ type: this.buf.readUInt32LE(0), payload: Buffer.from(this.buf.subarray(8, 8 + len)) });
        this.buf = this.buf.subarray(8 + len);
      }
    });
    const end = () => {
      this.ended = true;
      for (const w of this.waiters.splice(0)) w.resolve(null);
    };
    sock.on('end', end);
    sock.on('close', end);
    sock.on('error', end);
  }

  private push(f: Frame): void {
    const w = this.waiters.shift();
    if (w) w.resolve(f);
    else this.queue.push(f);
  }

  /** The next frame, or null when every writer has gone. */
  next(): Promise<Frame | null> {
    const f = this.queue.shift();
    if (f) return Promise.resolve(f);
    if (this.ended) return Promise.resolve(null);
    return new Promise((resolve) => this.waiters.push({ resolve }));
  }

  /** Sends a frame; the promise settles once the bytes are handed to the kernel. */
  send(type: number, payload: Buffer = Buffer.alloc(0)): Promise<void> {
    const h = Buffer.alloc(8);
    h.writeUInt32LE(type, 0);
    h.writeUInt32LE(payload.length, 4);
    return new Promise((resolve) => this.sock.write(Buffer.concat([h, payload]), () => resolve()));
  }

  close(): void {
    this.sock.destroy();
  }
}

export interface InitError {
  opIndex: number;
  errno: number;
  detail: string;
}

export function parseError(f: Frame): InitError {
  return { opIndex: f.payload.readInt32LE(0), errno: f.payload.readInt32LE(4), detail: f.payload.subarray(8).toString() };
}

export { MSG };
