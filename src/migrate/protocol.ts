/**
 * The migration wire protocol, the same over TCP, TLS and an ssh pipe: frames of
 *   type (1 byte: J = a JSON message, D = image bytes, E = end of the image) | length (u32 BE) | payload
 * and, once a pre-shared key has authenticated both ends, a 32-byte HMAC-SHA256 tag after each
 * frame over (sequence number, type, length, payload) with a key of this session only: a
 * frame changed, dropped, replayed or reordered on the way is refused.
 *
 * Conversation (C = the source's `migrate`, S = the destination's `serve`):
 *   S: J {hello, version, nonce, auth}          C: J {auth: "psk", nonce, mac}   (mac over both nonces)
 *   S: J {ok, mac} (S proves it knows the key too) or J {error}
 *   C: J {migrate: {id, bundle, ...}}           S: J {accept} or J {error}
 *   C: D... E (the .tar.zst image)              S: J {running, pid, stats} or J {error}
 *   C: J {commit}                               S: J {committed}
 * Post-copy adds T frames after the image, both ways: CRIU's page traffic between the
 * destination's lazy-pages daemon and the source's page server, tunnelled through this
 * authenticated connection (op 1 open / 2 data / 3 close, a connection number, bytes).
 * The destination keeps a restored container only when the commit arrives; the source
 * destroys its own only when "committed" arrives.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { Writable } from 'node:stream';
import { TsruncError } from '../errors.js';

export const PROTOCOL_VERSION = 1;
const MAX_FRAME = 4 * 1024 * 1024;
const MAX_JSON = 64 * 1024;
const TAG = 32;

export type FrameType = 'J' | 'D' | 'E' | 'T';
export interface Frame {
  type: FrameType;
  payload: Buffer;
}

/** Who said what: used in every error so that the user knows which side broke. */
export class ProtocolError extends TsruncError {}

export function nonce(): string {
  return randomBytes(32).toString('hex');
}

export function mac(key: Buffer, ...parts: string[]): string {
  return createHmac('sha256', key).update(parts.join('|')).digest('hex');
}

export function macEqual(a: unknown, b: string): boolean {
  if (typeof a !== 'string' || a.length !== b.length) return false;
  return timingSafeEqual(Buffer.from(a), Buffer.from(b));
}

/** The key both sides derive after the handshake, for the frames' tags. */
export function sessionKey(key: Buffer, serverNonce: string, clientNonce: string): Buffer {
  return createHmac('sha256', key).update(`tsrunc-session|${serverNonce}|${clientNonce}`).digest();
}

/** Frames from a byte stream; sequence-checked tags once `authenticate` has been called. */
export class FrameReader {
  private buf: Buffer = Buffer.alloc(0);
  private readonly it: AsyncIterator<Buffer>;
  private key: Buffer | undefined;
  private seq = 0n;
  /** bytes read off the stream so far */
  bytes = 0;

  constructor(stream: NodeJS.ReadableStream, private readonly peer: string) {
    this.it = (stream as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  }

  authenticate(key: Buffer): void {
    this.key = key;
  }

  private async fill(n: number): Promise<boolean> {
    while (this.buf.length < n) {
      let r: IteratorResult<Buffer>;
      try {
        r = await this.it.next();
      } catch (e) {
        throw new ProtocolError(`connection to ${this.peer} failed: ${(e as Error).message}`);
      }
      if (r.done) return false;
      this.bytes += r.value.length;
      this.buf = this.buf.length ? Buffer.concat([this.buf, r.value]) : r.value;
    }
    return true;
  }

  /** The next frame; undefined when the peer closed cleanly between frames. */
  async next(): Promise<Frame | undefined> {
    if (!(await this.fill(5))) {
      if (this.buf.length) throw new ProtocolError(`${this.peer} closed the connection in the middle of a frame`);
      return undefined;
    }
    const type = String.fromCharCode(this.buf[0]) as FrameType;
    const len = this.buf.readUInt32BE(1);
    if (type !== 'J' && type !== 'D' && type !== 'E' && type !== 'T') throw new ProtocolError(`${this.peer} sent something that is not tsrunc's migration protocol`);
    if (len > MAX_FRAME || (type === 'J' && len > MAX_JSON)) throw new ProtocolError(`${this.peer} sent a frame of ${len} bytes (at most ${MAX_FRAME})`);
    const total = 5 + len + (this.key ? TAG : 0);
    if (!(await this.fill(total))) throw new ProtocolError(`${this.peer} closed the connection in the middle of a frame`);
    const head = this.buf.subarray(0, 5);
    const payload = this.buf.subarray(5, 5 + len);
    if (this.key) {
      const want = tag(this.key, this.seq, head, payload);
      if (!timingSafeEqual(want, this.buf.subarray(5 + len, total)))
        throw new ProtocolError(`a frame from ${this.peer} failed its authentication tag (changed or replayed on the way)`);
      this.seq++;
    }
    const out = Buffer.from(payload); // its own memory: the buffer is reused
    this.buf = this.buf.subarray(total);
    return { type, payload: out };
  }

  /** The next frame, which must be a JSON message. */
  async message(what: string): Promise<Record<string, unknown>> {
    const f = await this.next();
    if (!f) throw new ProtocolError(`${this.peer} closed the connection (waiting for ${what})`);
    if (f.type !== 'J') throw new ProtocolError(`${this.peer} sent image data while ${what} was due`);
    let m: unknown;
    try {
      m = JSON.parse(f.payload.toString('utf8'));
    } catch {
      throw new ProtocolError(`${this.peer} sent a malformed message (waiting for ${what})`);
    }
    if (typeof m !== 'object' || m === null || Array.isArray(m)) throw new ProtocolError(`${this.peer} sent a malformed message (waiting for ${what})`);
    return m as Record<string, unknown>;
  }
}

function tag(key: Buffer, seq: bigint, head: Buffer, payload: Buffer): Buffer {
  const s = Buffer.alloc(8);
  s.writeBigUInt64BE(seq);
  return createHmac('sha256', key).update(s).update(head).update(payload).digest();
}

/** Frames onto a byte stream, with tags once authenticated. Resolves when the stream has taken them (backpressure). */
export class FrameWriter {
  private key: Buffer | undefined;
  private seq = 0n;
  bytes = 0;

  constructor(private readonly stream: NodeJS.WritableStream) {}

  authenticate(key: Buffer): void {
    this.key = key;
  }

  write(type: FrameType, payload: Buffer = Buffer.alloc(0)): Promise<void> {
    const parts: Buffer[] = [];
    const chunks = payload.length <= MAX_FRAME ? [payload] : Array.from({ length: Math.ceil(payload.length / MAX_FRAME) }, (_, i) => payload.subarray(i * MAX_FRAME, (i + 1) * MAX_FRAME));
    for (const p of chunks) {
      const head = Buffer.alloc(5);
      head.write(type, 0, 'latin1');
      head.writeUInt32BE(p.length, 1);
      parts.push(head, p);
      if (this.key) {
        parts.push(tag(this.key, this.seq, head, p));
        this.seq++;
      }
    }
    const data = Buffer.concat(parts);
    this.bytes += data.length;
    return new Promise((resolve, reject) => {
      const ok = this.stream.write(data, (err) => (err ? reject(new ProtocolError(`the connection failed: ${err.message}`)) : undefined));
      if (ok) resolve();
      else this.stream.once('drain', () => resolve());
    });
  }

  send(message: Record<string, unknown>): Promise<void> {
    return this.write('J', Buffer.from(JSON.stringify(message)));
  }

  /** A Writable for the image: its bytes become D frames, its end an E frame (the connection stays open). */
  imageSink(): Writable {
    return new Writable({
      highWaterMark: 1024 * 1024,
      write: (chunk: Buffer, _enc, cb) => {
        this.write('D', chunk).then(() => cb(), cb);
      },
      final: (cb) => {
        this.write('E').then(() => cb(), cb);
      },
    });
  }
}

/** Reads a key file: at least 16 bytes, the same on both ends. */
export async function readKeyFile(path: string): Promise<Buffer> {
  const { readFileSync, statSync } = await import('node:fs');
  let data: Buffer;
  try {
    data = readFileSync(path);
  } catch (e) {
    throw new TsruncError(`--key-file ${path}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
  }
  const key = Buffer.from(data.toString('utf8').trim());
  if (key.length < 16) throw new TsruncError(`--key-file ${path}: the key is ${key.length} bytes; use at least 16 (e.g. head -c 32 /dev/urandom | base64 > ${path})`);
  if ((statSync(path).mode & 0o077) !== 0) throw new TsruncError(`--key-file ${path}: readable by others (chmod 600 it)`);
  return key;
}

/** After the image: JSON messages queued for whoever waits, T frames to the tunnel. */
export class Demux {
  private readonly queue: Record<string, unknown>[] = [];
  private waiter: { resolve: (m: Record<string, unknown>) => void; reject: (e: Error) => void } | undefined;
  private failure: Error | undefined;

  constructor(private readonly reader: FrameReader, private readonly peer: string, private readonly tunnel?: Tunnel) {
    void this.pump();
  }

  private async pump(): Promise<void> {
    try {
      for (;;) {
        const f = await this.reader.next();
        if (!f) throw new ProtocolError(`${this.peer} closed the connection`);
        if (f.type === 'T') {
          if (!this.tunnel) throw new ProtocolError(`${this.peer} sent page traffic outside a post-copy migration`);
          await this.tunnel.handle(f.payload);
        } else if (f.type === 'J') {
          let m: unknown;
          try {
            m = JSON.parse(f.payload.toString('utf8'));
          } catch {
            throw new ProtocolError(`${this.peer} sent a malformed message`);
          }
          if (typeof m !== 'object' || m === null) throw new ProtocolError(`${this.peer} sent a malformed message`);
          if (this.waiter) {
            const w = this.waiter;
            this.waiter = undefined;
            w.resolve(m as Record<string, unknown>);
          } else this.queue.push(m as Record<string, unknown>);
        } else throw new ProtocolError(`${this.peer} sent image data after the image`);
      }
    } catch (e) {
      this.failure = e as Error;
      this.tunnel?.closeAll();
      if (this.waiter) this.waiter.reject(this.failure);
      this.waiter = undefined;
    }
  }

  message(what: string): Promise<Record<string, unknown>> {
    const m = this.queue.shift();
    if (m) return Promise.resolve(m);
    if (this.failure) return Promise.reject(new ProtocolError(`${this.failure.message} (waiting for ${what})`));
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject: (e) => reject(new ProtocolError(`${e.message} (waiting for ${what})`)) };
    });
  }
}

const OPEN = 1, DATA = 2, CLOSE = 3;

/**
 * One end of the page-traffic tunnel. The destination's end accepts local connections (the
 * lazy-pages daemon's) and announces them; the source's end opens a connection to CRIU's page
 * server for each. Bytes flow with backpressure both ways.
 */
export class Tunnel {
  private readonly conns = new Map<number, import('node:net').Socket>();
  private next = 1;
  bytesIn = 0;
  bytesOut = 0;

  constructor(private readonly writer: FrameWriter, private readonly connectTo?: { host: string; port: number }) {}

  private frame(op: number, id: number, data?: Buffer): Buffer {
    const h = Buffer.alloc(3);
    h[0] = op;
    h.writeUInt16BE(id, 1);
    return data ? Buffer.concat([h, data]) : h;
  }

  /** The destination's end: a local connection to carry. */
  accept(sock: import('node:net').Socket): void {
    const id = this.next++;
    void this.writer.write('T', this.frame(OPEN, id)).catch(() => sock.destroy());
    this.attach(id, sock);
  }

  private attach(id: number, sock: import('node:net').Socket): void {
    this.conns.set(id, sock);
    sock.on('data', (d: Buffer) => {
      this.bytesOut += d.length;
      sock.pause();
      this.writer.write('T', this.frame(DATA, id, d)).then(() => sock.resume(), () => sock.destroy());
    });
    const gone = () => {
      if (this.conns.delete(id)) void this.writer.write('T', this.frame(CLOSE, id)).catch(() => {});
    };
    sock.on('end', gone);
    sock.on('close', gone);
    sock.on('error', () => {});
  }

  async handle(payload: Buffer): Promise<void> {
    if (payload.length < 3) throw new ProtocolError('a malformed tunnel frame');
    const op = payload[0], id = payload.readUInt16BE(1);
    if (op === OPEN) {
      if (!this.connectTo || this.conns.has(id)) throw new ProtocolError('an unexpected tunnel connection');
      const { connect } = await import('node:net');
      const sock = connect(this.connectTo);
      sock.setNoDelay(true);
      this.attach(id, sock);
    } else if (op === DATA) {
      const sock = this.conns.get(id);
      if (!sock) return; // closed on our side meanwhile
      this.bytesIn += payload.length - 3;
      if (!sock.write(payload.subarray(3))) await new Promise<void>((r) => {
        sock.once('drain', r);
        sock.once('close', r);
      });
    } else if (op === CLOSE) {
      const sock = this.conns.get(id);
      this.conns.delete(id);
      sock?.end();
    } else throw new ProtocolError('a malformed tunnel frame');
  }

  closeAll(): void {
    for (const s of this.conns.values()) s.destroy();
    this.conns.clear();
  }
}
