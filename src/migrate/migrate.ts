/**
 * tsrunc migrate: moves a running container to another host. Stop-copy: the container is
 * frozen, dumped and streamed as the .tar.zst image straight into the connection; the
 * destination restores it and reports it running; only then is the source destroyed (or, with
 * --keep-source, thawed: a clone). Any failure before that thaws the source and makes the
 * destination delete what it made.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { TsruncError } from '../errors.js';
import { StateStore, validateId } from '../state/store.js';
import type { CheckpointOptions } from '../container/checkpoint.js';
import { Demux, FrameReader, FrameWriter, PROTOCOL_VERSION, Tunnel, ProtocolError, mac, macEqual, nonce, readKeyFile, sessionKey } from './protocol.js';

export interface MigrateOptions extends CheckpointOptions {
  strategy?: 'stop-copy' | 'post-copy';
  keepSource?: boolean;
  newId?: string;
  /** the bundle on the destination (a name under its --bundles, or a path it allows) */
  bundle?: string;
  compressLevel?: number;
  keyFile?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
  /** the ssh command for ssh:// (default "ssh") */
  ssh?: string;
  /** the destination's --root and tsrunc, for ssh:// */
  destRoot?: string;
  destTsrunc?: string;
  /** how long to wait for the destination's answers (ms) */
  timeoutMs?: number;
  onProgress?: (phase: 'dump' | 'write' | 'pages', done: number, total?: number) => void;
}

export interface MigrateResult {
  id: string;
  destination: string;
  destPid?: number;
  /** source frozen -> destination running */
  downtimeMs: number;
  totalMs: number;
  bytesSent: number;
  phases: Record<string, number>;
  destStats?: Record<string, unknown>;
  warnings: string[];
  strategy: 'stop-copy' | 'post-copy';
  /** bytes of the image (framed) */
  imageBytes: number;
  /** post-copy: bytes of memory pages served through the tunnel, in all and after the destination ran */
  pageBytes?: number;
  pageBytesAfterRunning?: number;
}

export type Destination =
  | { kind: 'tsrunc'; host: string; port: number; text: string }
  | { kind: 'ssh'; user?: string; host: string; port?: number; text: string };

export function parseDestination(s: string): Destination {
  let m = /^tsrunc:\/\/(?:\[([^\]]+)\]|([^:/@]+)):(\d+)\/?$/.exec(s);
  if (m) {
    const port = Number(m[3]);
    if (port > 0 && port < 65536) return { kind: 'tsrunc', host: m[1] ?? m[2], port, text: s };
  }
  m = /^ssh:\/\/(?:([^@/:]+)@)?(?:\[([^\]]+)\]|([^:/@]+))(?::(\d+))?\/?$/.exec(s);
  if (m) return { kind: 'ssh', user: m[1], host: m[2] ?? m[3], port: m[4] ? Number(m[4]) : undefined, text: s };
  throw new TsruncError(`destination ${s}: expected tsrunc://HOST:PORT or ssh://[USER@]HOST[:PORT]`);
}

class Uncertain extends TsruncError {
  readonly keepFrozen = true;
}

interface Channel {
  input: NodeJS.ReadableStream;
  output: NodeJS.WritableStream;
  close: () => void;
  /** why the channel died, when it did (ssh's last words) */
  why: () => string | undefined;
}

async function connect(d: Destination, o: MigrateOptions, timeoutMs: number): Promise<Channel> {
  if (d.kind === 'ssh') {
    const cmd = (o.ssh ?? 'ssh').split(/\s+/).filter(Boolean);
    const remote = [o.destTsrunc ?? 'tsrunc', ...(o.destRoot ? ['--root', o.destRoot] : []), 'serve', '--stdio'];
    const args = [...cmd.slice(1), '-T', '-o', 'BatchMode=yes', ...(d.port ? ['-p', String(d.port)] : []), `${d.user ? `${d.user}@` : ''}${d.host}`, '--', ...remote];
    const child = spawn(cmd[0], args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let err = '', spawnError: string | undefined;
    child.stderr.on('data', (b: Buffer) => {
      if (err.length < 8192) err += b.toString();
    });
    child.on('error', (e) => (spawnError = `${cmd[0]}: ${e.message}`));
    child.stdin.on('error', () => {});
    return {
      input: child.stdout, output: child.stdin,
      close: () => {
        child.stdin.end();
        setTimeout(() => child.kill('SIGTERM'), 2000).unref();
      },
      why: () => spawnError ?? (err.trim().split('\n').filter(Boolean).pop()?.replace(/^tsrunc: /, '') || undefined),
    };
  }
  const tls = o.tlsCert || o.tlsKey || o.tlsCa;
  if (tls && !(o.tlsCert && o.tlsKey && o.tlsCa)) throw new TsruncError('TLS needs all of --tls-cert, --tls-key and --tls-ca (the CA that signs the destination\'s certificate)');
  const read = (f: string, what: string) => {
    try {
      return readFileSync(f);
    } catch {
      throw new TsruncError(`${what} ${f}: cannot be read`);
    }
  };
  let sock: import('node:net').Socket;
  if (tls) {
    const { connect: tconnect } = await import('node:tls');
    sock = tconnect({
      host: d.host, port: d.port, cert: read(o.tlsCert!, '--tls-cert'), key: read(o.tlsKey!, '--tls-key'), ca: read(o.tlsCa!, '--tls-ca'),
      // the destination is named by address; what counts is that our CA signed its certificate
      checkServerIdentity: () => undefined, minVersion: 'TLSv1.2',
    });
  } else {
    const { connect: nconnect } = await import('node:net');
    sock = nconnect({ host: d.host, port: d.port });
  }
  await new Promise<void>((res, rej) => {
    const t = setTimeout(() => {
      sock.destroy();
      rej(new TsruncError(`cannot reach ${d.text}: no answer within ${timeoutMs / 1000}s`));
    }, timeoutMs);
    sock.once(tls ? 'secureConnect' : 'connect', () => {
      clearTimeout(t);
      res();
    });
    sock.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(t);
      const why = e.code === 'ECONNREFUSED' ? 'connection refused (is "tsrunc serve" running there?)' : e.message;
      rej(new TsruncError(`cannot reach ${d.text}: ${tls ? 'TLS: ' : ''}${why}`));
    });
  });
  let failure: string | undefined;
  sock.on('error', (e) => (failure ??= e.message));
  sock.setNoDelay(true);
  // a cut cable shows as silence: no byte either way for that long ends the migration
  sock.setTimeout(timeoutMs, () => sock.destroy(new Error(`no progress for ${timeoutMs / 1000}s (connection cut?)`)));
  return { input: sock, output: sock, close: () => sock.end(), why: () => failure };
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([p, new Promise<never>((_, rej) => {
    t = setTimeout(() => rej(new ProtocolError(`the destination did not answer within ${ms / 1000}s (${what})`)), ms);
  })]).finally(() => clearTimeout(t));
}

export async function migrateContainer(store: StateStore, id: string, dest: string, o: MigrateOptions): Promise<MigrateResult> {
  const t0 = Date.now();
  const d = parseDestination(dest);
  const newId = o.newId ?? id;
  validateId(newId);
  const post = o.strategy === 'post-copy';
  if (post && o.keepSource) throw new TsruncError('--keep-source cannot be combined with --strategy post-copy (the memory moves; nothing is left to keep)');
  const timeoutMs = o.timeoutMs ?? 120000;
  // what cannot move is refused before anything is frozen or sent
  const rec = store.load(id);
  const status = store.status(rec);
  if (status !== 'running' && status !== 'paused') throw new TsruncError(`cannot migrate container "${id}": it is ${status}, not running`);
  const { stdioOf } = await import('../container/checkpoint.js');
  const foreign = stdioOf(rec.pid).find((s) => s.target !== '/dev/null');
  if (foreign) throw new TsruncError(`cannot migrate container "${id}": its fd ${foreign.fd} is ${foreign.target}, which does not exist on another host (start it with /dev/null or files inside the container)`);
  const key = o.keyFile ? await readKeyFile(o.keyFile) : undefined;
  let pagePort = 0;
  if (post) {
    const { openCriu } = await import('../container/criu.js');
    const { checkLazy } = await import('../container/checkpoint.js');
    checkLazy(openCriu(o.criu));
    pagePort = await freePort();
  }

  const phases: Record<string, number> = {};
  const ch = await connect(d, o, timeoutMs);
  phases.connect_ms = Date.now() - t0;
  const reader = new FrameReader(ch.input, `the destination ${d.text}`);
  const writer = new FrameWriter(ch.output);
  const broken = (e: unknown) => {
    const why = ch.why();
    if (why && e instanceof ProtocolError && /closed the connection|connection .* failed/.test(e.message)) return new ProtocolError(`${e.message}: ${why}`);
    return e;
  };
  let demux: Demux | undefined;
  const answer = async (what: string) => {
    const m = await withTimeout(demux ? demux.message(what) : reader.message(what), timeoutMs, what);
    if (typeof m.error === 'string') throw new TsruncError(`the destination refused: ${m.error}`);
    return m;
  };
  try {
    // 1. who is there, and proof of the key both ways
    const tAuth = Date.now();
    const hello = await answer('its hello');
    if (hello.hello !== 'tsrunc-serve' || typeof hello.nonce !== 'string') throw new ProtocolError(`${d.text} is not a tsrunc migration endpoint`);
    if (hello.version !== PROTOCOL_VERSION) throw new ProtocolError(`${d.text} speaks migration protocol ${String(hello.version)}, this tsrunc ${PROTOCOL_VERSION}`);
    if (hello.auth === 'psk') {
      if (!key) throw new TsruncError(`${d.text} wants a pre-shared key: pass --key-file`);
      const cn = nonce();
      await writer.send({ auth: 'psk', nonce: cn, mac: mac(key, 'tsrunc-client', hello.nonce, cn) });
      const ok = await answer('authentication');
      if (!macEqual(ok.mac, mac(key, 'tsrunc-server', cn, hello.nonce))) throw new ProtocolError(`${d.text} did not prove it knows the key; nothing was sent`);
      const sk = sessionKey(key, hello.nonce, cn);
      reader.authenticate(sk);
      writer.authenticate(sk);
    } else {
      await writer.send({ auth: 'none' });
      await answer('authentication');
    }
    phases.auth_ms = Date.now() - tAuth;

    // 2. the request: the destination checks id and bundle before a byte of image
    const restoreFlags = [o.tcpEstablished && '--tcp-established', o.extUnixSk && '--ext-unix-sk', o.fileLocks && '--file-locks', o.shellJob && '--shell-job'].filter(Boolean);
    await writer.send({ migrate: { id: newId, source: id, bundle: o.bundle, strategy: post ? 'post-copy' : 'stop-copy', restoreFlags } });
    const acc = await answer('the acceptance of the request');
    if (acc.accept !== true) throw new ProtocolError(`${d.text} did not accept the migration`);
    // from here the destination's messages (and, for post-copy, its page requests) come through one reader
    const tunnel = post ? new Tunnel(writer, { host: '127.0.0.1', port: pagePort }) : undefined;
    demux = new Demux(reader, `the destination ${d.text}`, tunnel);

    // 3. the image into the connection; the destination's verdict may come early (an error)
    let tFrozen = 0, tRunning = 0, tImageDone = 0, imageBytes = 0, pagesAtRunning = 0;
    let destError: unknown;
    const sink = writer.imageSink();
    sink.on('error', () => {}); // the export sees it; nothing else listens
    const verdict = answer('the restore result').catch((e) => {
      destError = broken(e);
      if (!sink.writableFinished) sink.destroy(destError as Error);
      throw destError;
    });
    verdict.catch(() => {});
    let running: Record<string, unknown> | undefined;
    const { exportCheckpoint } = await import('../container/export.js');
    let exp;
    try {
      exp = await exportCheckpoint(store, id, sink, {
        ...o, leaveRunning: o.keepSource === true, compressLevel: o.compressLevel, lazy: post ? { port: pagePort } : undefined,
        onFrozen: () => (tFrozen = Date.now()),
        onProgress: o.onProgress,
        confirm: async () => {
          tImageDone = Date.now();
          imageBytes = writer.bytes;
          running = await verdict;
          if (running.running !== true) throw new ProtocolError(`${d.text} did not report the container running`);
          tRunning = Date.now();
          pagesAtRunning = tunnel?.bytesOut ?? 0;
          // 4. commit: the destination keeps its copy; once it says so, the source goes
          try {
            await writer.send({ commit: true });
            const c = await withTimeout(demux!.message('the commit acknowledgement'), timeoutMs, 'the commit acknowledgement');
            if (c.committed !== true) throw new ProtocolError('no commit acknowledgement');
          } catch (e) {
            throw new Uncertain(`migration of "${id}" to ${d.text}: the destination restored it but did not acknowledge the commit (${(broken(e) as Error).message}); `
              + `the source is left frozen (paused): if "${newId}" runs at the destination, "tsrunc delete --force ${id}" here, else "tsrunc resume ${id}"`);
          }
          return true;
        },
      });
    } catch (e) {
      if (destError && !(e instanceof Uncertain)) throw destError;
      throw broken(e);
    }
    phases.dump_ms = exp.dumpMs;
    phases.stream_ms = tImageDone - tFrozen - exp.dumpMs;
    phases.restore_wait_ms = tRunning - tImageDone;
    phases.finish_ms = Date.now() - tRunning;
    if (post) phases.pages_ms = phases.finish_ms;
    const stats = (running?.stats ?? {}) as Record<string, unknown>;
    return {
      id: newId, destination: d.text, destPid: typeof running?.pid === 'number' ? running.pid : undefined,
      downtimeMs: tRunning - tFrozen, totalMs: Date.now() - t0, bytesSent: writer.bytes, phases, destStats: stats, warnings: exp.warnings,
      strategy: post ? 'post-copy' : 'stop-copy', imageBytes, pageBytes: tunnel?.bytesOut,
      pageBytesAfterRunning: tunnel ? tunnel.bytesOut - pagesAtRunning : undefined,
    };
  } catch (e) {
    // the connection closing tells the destination to undo; the source has been thawed by the export
    if (!(e instanceof Uncertain)) await writer.send({ abort: (e as Error).message }).catch(() => {});
    throw broken(e);
  } finally {
    ch.close();
  }
}

/** A free port on loopback for CRIU's page server (only the tunnel connects to it). */
async function freePort(): Promise<number> {
  const { createServer } = await import('node:net');
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as import('node:net').AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}
