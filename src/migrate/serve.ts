/**
 * tsrunc serve: the destination of migrations. Authenticates the peer (pre-shared key and/or
 * TLS client certificates) before it reads a byte of image, restores each migration with a
 * `tsrunc restore --import - -d` of its own (so every failure is undone by the code that undoes
 * a failed import), keeps the restored container only when the source commits, and deletes it
 * otherwise. `--stdio` speaks the same protocol on stdin/stdout, for ssh (ssh authenticated).
 */
import { spawn } from 'node:child_process';
import { createServer as createTcpServer, type Socket } from 'node:net';
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import PQueue from 'p-queue';
import { TsruncError } from '../errors.js';
import { StateStore, validateId } from '../state/store.js';
import { event } from '../cli/log.js';
import { selfCommand } from '../version.js';
import { Demux, FrameReader, FrameWriter, PROTOCOL_VERSION, Tunnel, ProtocolError, mac, macEqual, nonce, readKeyFile, sessionKey } from './protocol.js';

export interface ServeOptions {
  root: string;
  criu?: string;
  listen?: string;
  stdio?: boolean;
  keyFile?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
  /** bundles are named relative to this directory */
  bundles?: string;
  /** accept absolute bundle paths the source asks for */
  allowBundlePaths?: boolean;
  maxConcurrent?: number;
  /** how long a restored container waits for the source's commit before it is deleted */
  commitTimeoutMs?: number;
  /** a connection silent this long is closed (and what it brought undone) */
  idleTimeoutMs?: number;
  /** the authentication/first-message deadline of a connection */
  handshakeTimeoutMs?: number;
}

/** Restore flags a source may ask for (nothing that names a path on this host). */
const RESTORE_FLAGS = new Set(['--tcp-established', '--ext-unix-sk', '--file-locks', '--shell-job', '--allow-devices']);


/** Runs tsrunc (this same binary) on the destination's root. */
function tsrunc(o: ServeOptions, args: string[]) {
  const [node, bin] = selfCommand();
  // fd 3: restore says "running PID" there once the container runs
  return spawn(node, [bin, '--root', o.root, ...(o.criu ? ['--criu', o.criu] : []), ...args], {
    stdio: ['pipe', 'pipe', 'pipe', 'pipe'], env: { ...process.env, TSRUNC_READY_FD: '3' },
  });
}

async function deleteForce(o: ServeOptions, id: string): Promise<void> {
  const c = tsrunc(o, ['delete', '--force', id]);
  c.stdin.end();
  await new Promise((r) => c.on('close', r));
}

function lastLine(s: string): string {
  const lines = s.split('\n').map((l) => l.trim()).filter(Boolean);
  const l = lines.filter((x) => !/level=(warning|info)/.test(x)).pop() ?? lines.pop() ?? '';
  return l.replace(/^tsrunc: /, '');
}

interface Auth {
  key?: Buffer;
  /** the TLS layer already verified the client's certificate */
  tlsPeer?: string;
}

export class MigrationServer {
  private readonly queue: PQueue;
  private readonly active = new Set<Promise<void>>();
  private readonly store: StateStore;
  private closing = false;
  /** ids being received, so two migrations cannot take one id */
  private readonly claimed = new Set<string>();

  constructor(private readonly o: ServeOptions, private readonly key?: Buffer) {
    this.queue = new PQueue({ concurrency: Math.max(1, o.maxConcurrent ?? 4) });
    this.store = new StateStore(o.root);
  }

  /** One connection, from hello to commit. */
  session(input: NodeJS.ReadableStream, output: NodeJS.WritableStream, peer: string, auth: Auth): Promise<void> {
    const p = this.run(input, output, peer, auth).catch((e) => {
      event(`migration from ${peer}: ${(e as Error).message}`, 'error');
    });
    this.active.add(p);
    void p.finally(() => this.active.delete(p));
    return p;
  }

  get inFlight(): number {
    return this.active.size;
  }

  /** Stops taking new migrations; resolves when those in flight are over. */
  async drain(): Promise<void> {
    this.closing = true;
    while (this.active.size) await Promise.allSettled([...this.active]);
  }

  private async run(input: NodeJS.ReadableStream, output: NodeJS.WritableStream, peer: string, auth: Auth): Promise<void> {
    const reader = new FrameReader(input, `the source ${peer}`);
    const writer = new FrameWriter(output);
    const refuse = async (why: string): Promise<never> => {
      await writer.send({ error: why }).catch(() => {});
      throw new ProtocolError(`refused: ${why}`);
    };
    const deadline = setTimeout(() => {
      event(`migration from ${peer}: no authentication within ${(this.o.handshakeTimeoutMs ?? 10000) / 1000}s; closing`, 'warning');
      (input as Socket).destroy?.();
    }, this.o.handshakeTimeoutMs ?? 10000);
    let req: Record<string, unknown>;
    try {
      const sn = nonce();
      await writer.send({ hello: 'tsrunc-serve', version: PROTOCOL_VERSION, nonce: sn, auth: this.key ? 'psk' : auth.tlsPeer ? 'tls' : 'none' });
      if (this.key) {
        const m = await reader.message('authentication');
        if (m.auth !== 'psk' || typeof m.nonce !== 'string' || m.nonce.length !== 64) await refuse('authentication failed: the source sent no pre-shared key proof (--key-file)');
        if (!macEqual(m.mac, mac(this.key, 'tsrunc-client', sn, m.nonce as string))) await refuse('authentication failed: wrong key');
        await writer.send({ ok: true, mac: mac(this.key, 'tsrunc-server', m.nonce as string, sn) });
        const sk = sessionKey(this.key, sn, m.nonce as string);
        reader.authenticate(sk);
        writer.authenticate(sk);
      } else {
        // TLS checked the certificate, or ssh the login: the client only says it has nothing to add
        const m = await reader.message('authentication');
        if (m.auth !== 'none' && m.auth !== 'psk') await refuse('malformed authentication');
        await writer.send({ ok: true });
      }
      event(`migration from ${peer}: authenticated (${this.key ? 'pre-shared key' : ''}${this.key && auth.tlsPeer ? ' + ' : ''}${auth.tlsPeer ? `TLS client ${auth.tlsPeer}` : ''}${!this.key && !auth.tlsPeer ? 'ssh' : ''})`);
      req = await reader.message('the migration request');
    } finally {
      clearTimeout(deadline);
    }
    if (this.closing) await refuse('the destination is shutting down');
    const m = (req.migrate ?? {}) as Record<string, unknown>;
    const id = typeof m.id === 'string' ? m.id : '';
    try {
      validateId(id);
    } catch (e) {
      await refuse((e as Error).message);
    }
    if (this.store.exists(id) || this.claimed.has(id)) await refuse(`container "${id}" already exists on the destination`);
    const bundle = await this.bundleFor(m.bundle, id).catch((e: Error) => refuse(e.message));
    const flags = Array.isArray(m.restoreFlags) ? m.restoreFlags.filter((f): f is string => typeof f === 'string') : [];
    const bad = flags.find((f) => !RESTORE_FLAGS.has(f));
    if (bad) await refuse(`restore flag ${bad} is not accepted from a source`);

    const post = m.strategy === 'post-copy';
    if (post) {
      try {
        const { openCriu } = await import('../container/criu.js');
        const { checkLazy } = await import('../container/checkpoint.js');
        checkLazy(openCriu(this.o.criu));
      } catch (e) {
        await refuse(`post-copy: ${(e as Error).message}`);
      }
    } else if (m.strategy !== 'stop-copy') await refuse(`unknown strategy ${String(m.strategy)}`);
    this.claimed.add(id);
    try {
      await this.queue.add(() => this.receive(reader, writer, peer, id, bundle as string, flags, post));
    } finally {
      this.claimed.delete(id);
    }
  }

  private async bundleFor(asked: unknown, id: string): Promise<string> {
    const name = typeof asked === 'string' && asked ? asked : id;
    let path: string;
    if (isAbsolute(name)) {
      if (!this.o.allowBundlePaths && !this.o.stdio) throw new TsruncError(`bundle ${name}: this destination only takes bundles under ${this.o.bundles ?? '(none given)'} (serve --allow-bundle-paths accepts others)`);
      path = name;
    } else {
      if (!this.o.bundles) throw new TsruncError(`bundle "${name}": this destination has no --bundles directory; ask for an absolute path it allows`);
      path = resolve(this.o.bundles, name);
      const base = resolve(this.o.bundles);
      if (path !== base && !path.startsWith(base + '/')) throw new TsruncError(`bundle "${name}": outside ${base}`);
    }
    if (!existsSync(path)) throw new TsruncError(`bundle ${path}: no such directory on the destination`);
    if (!isAbsolute(name) && this.o.bundles) {
      const real = realpathSync(path), base = realpathSync(this.o.bundles);
      if (real !== base && !real.startsWith(base + '/')) throw new TsruncError(`bundle "${name}": leads outside ${base}`);
    }
    return path;
  }

  private async receive(reader: FrameReader, writer: FrameWriter, peer: string, id: string, bundle: string, flags: string[], post: boolean): Promise<void> {
    const t0 = Date.now();
    // post-copy: CRIU's lazy-pages daemon fetches the memory from a local port; the tunnel carries it to the source
    let tunnel: Tunnel | undefined, tunnelServer: import('node:net').Server | undefined, pagePort = 0;
    if (post) {
      const t = (tunnel = new Tunnel(writer));
      tunnelServer = createTcpServer((sock) => t.accept(sock));
      await new Promise<void>((res) => tunnelServer!.listen(0, '127.0.0.1', () => res()));
      pagePort = (tunnelServer.address() as import('node:net').AddressInfo).port;
    }
    try {
      await writer.send({ accept: true, bundle });
      event(`migration from ${peer}: receiving "${id}" into bundle ${bundle}${post ? ' (post-copy)' : ''}`);
      const child = tsrunc(this.o, ['restore', '--import', '-', '--detach', '--print-stats', '--bundle', bundle, ...flags,
        ...(post ? ['--lazy-pages', '--page-server', `127.0.0.1:${pagePort}`] : []), id]);
      let out = '', err = '';
      child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr!.on('data', (d: Buffer) => {
        if (err.length < 65536) err += d.toString();
      });
      const exited = new Promise<number>((r) => child.on('close', (code, sig) => r(code ?? 128 + (sig ? 15 : 0))));
      let childGone = false;
      void exited.then(() => (childGone = true));
      child.stdin!.on('error', () => {}); // EPIPE when restore gave up early: its exit says why
      // "running PID" from restore once the container runs (for post-copy, before its memory is all there)
      const running = new Promise<number | undefined>((res) => {
        let line = '';
        (child.stdio[3] as NodeJS.ReadableStream).on('data', (d: Buffer) => {
          line += d.toString();
          const m = /running (\d+)\n/.exec(line);
          if (m) res(Number(m[1]));
        });
        void exited.then(() => res(undefined));
      });

      // the image, frame by frame, into restore's stdin
      try {
        for (;;) {
          const f = await reader.next();
          if (!f) throw new ProtocolError('the source closed the connection before the image ended');
          if (f.type === 'E') break;
          if (f.type !== 'D') throw new ProtocolError('the source sent a message in the middle of the image');
          if (childGone) continue; // restore has already failed; read on so that the source hears why
          if (!child.stdin!.write(f.payload)) await new Promise<void>((r) => {
            const done = () => { child.stdin!.off('drain', done); clearInterval(t); r(); };
            const t = setInterval(() => childGone && done(), 100);
            child.stdin!.once('drain', done);
          });
        }
        child.stdin!.end();
      } catch (e) {
        // the connection broke mid-image: restore is told to stop, and undoes what it did
        child.kill('SIGTERM');
        await exited;
        throw e;
      }
      // from here the source's messages and page traffic come through one reader
      const demux = new Demux(reader, `the source ${peer}`, tunnel);
      const pid = await running;
      if (pid === undefined) {
        const code = await exited;
        const why = lastLine(err) || `restore exited with status ${code}`;
        await writer.send({ error: `restore at the destination failed: ${why}` }).catch(() => {});
        throw new ProtocolError(`restore of "${id}" failed: ${why}`);
      }
      if (!post) await exited;
      const stats = (() => {
        try {
          return JSON.parse(out) as Record<string, unknown>;
        } catch {
          return {};
        }
      })();
      await writer.send({ running: true, pid, receive_ms: Date.now() - t0, stats }).catch(() => {});
      // kept only when the source commits; otherwise the source resumes and this copy must go
      let committed = false;
      const timeout = this.o.commitTimeoutMs ?? 30000;
      try {
        const m = await Promise.race([
          demux.message('the commit'),
          new Promise<never>((_, rej) => setTimeout(() => rej(new ProtocolError(`no commit from the source within ${timeout / 1000}s`)), timeout).unref()),
        ]);
        if (m.commit === true) committed = true;
        else throw new ProtocolError(`the source aborted: ${typeof m.abort === 'string' ? m.abort : 'no reason given'}`);
        await writer.send({ committed: true });
        event(`migration from ${peer}: "${id}" runs here (pid ${pid}), ${Date.now() - t0} ms${post ? '; its memory follows' : ''}`);
      } catch (e) {
        if (!committed) {
          child.kill('SIGTERM');
          await deleteForce(this.o, id);
          event(`migration from ${peer}: "${id}" deleted again: ${(e as Error).message}`, 'warning');
        }
        throw e;
      }
      if (post) {
        const code = await exited;
        if (code !== 0) throw new ProtocolError(`post-copy of "${id}": ${lastLine(err) || `restore exited with status ${code}`}`);
        event(`migration from ${peer}: "${id}" has all its memory (${tunnel!.bytesIn} bytes of page traffic), ${Date.now() - t0} ms`);
      }
    } finally {
      tunnel?.closeAll();
      tunnelServer?.close();
    }
  }
}

/** The ADDR:PORT to listen on. */
export function parseListen(s: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 0 && port < 65536)) throw new TsruncError(`--listen ${s}: expected ADDR:PORT (e.g. 0.0.0.0:7433)`);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

/** serve: until SIGTERM/SIGINT, then waits for the migrations in flight. */
export async function serve(o: ServeOptions, onListening?: (addr: string) => void): Promise<void> {
  const key = o.keyFile ? await readKeyFile(o.keyFile) : undefined;
  if (o.stdio) {
    const s = new MigrationServer(o, key);
    await s.session(process.stdin, process.stdout, 'ssh', {});
    return;
  }
  if (!o.listen) throw new TsruncError('serve needs --listen ADDR:PORT (or --stdio)');
  const tls = o.tlsCert || o.tlsKey || o.tlsCa;
  if (tls && !(o.tlsCert && o.tlsKey && o.tlsCa)) throw new TsruncError('TLS needs all of --tls-cert, --tls-key and --tls-ca (the CA that signs the sources\' client certificates)');
  if (!key && !tls) throw new TsruncError('serve needs --key-file or TLS (--tls-cert/--tls-key/--tls-ca): it never accepts an unauthenticated migration');
  const { host, port } = parseListen(o.listen);
  const srv = new MigrationServer(o, key);
  const onConn = (sock: Socket, tlsPeer?: string) => {
    const peer = `${sock.remoteAddress}:${sock.remotePort}`;
    sock.on('error', () => {});
    sock.setNoDelay(true);
    const idle = o.idleTimeoutMs ?? 60000;
    sock.setTimeout(idle, () => {
      event(`migration from ${peer}: no byte for ${idle / 1000}s; closing (connection cut?)`, 'warning');
      sock.destroy(new Error(`no progress for ${idle / 1000}s`));
    });
    void srv.session(sock, sock, peer, { tlsPeer }).finally(() => sock.end());
  };
  let server: import('node:net').Server;
  if (tls) {
    const { createServer } = await import('node:tls');
    const read = (f: string, what: string) => {
      try {
        return readFileSync(f);
      } catch {
        throw new TsruncError(`${what} ${f}: cannot be read`);
      }
    };
    server = createServer({
      cert: read(o.tlsCert!, '--tls-cert'), key: read(o.tlsKey!, '--tls-key'), ca: read(o.tlsCa!, '--tls-ca'),
      requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2',
    }, (s) => onConn(s, (s.getPeerCertificate()?.subject?.CN as string | undefined) ?? 'certificate'));
    server.on('tlsClientError', (e, s) => event(`refused ${s.remoteAddress}:${s.remotePort}: TLS: ${e.message}`, 'warning'));
  } else server = createTcpServer((s) => onConn(s));
  await new Promise<void>((res, rej) => {
    server.once('error', (e: NodeJS.ErrnoException) => rej(new TsruncError(`--listen ${o.listen}: ${e.code === 'EADDRINUSE' ? 'address in use' : e.message}`)));
    server.listen(port, host, () => res());
  });
  const a = server.address() as import('node:net').AddressInfo;
  const where = `${a.address}:${a.port}`;
  event(`serving migrations on ${where} into ${o.root}${tls ? ' (TLS, client certificates)' : ''}${key ? ' (pre-shared key)' : ''}`);
  onListening?.(where);
  await new Promise<void>((res) => {
    const stop = (sig: NodeJS.Signals) => {
      event(`${sig}: no new migrations; waiting for ${srv.inFlight} in flight`);
      server.close();
      void srv.drain().then(res);
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  event('stopped');
}

