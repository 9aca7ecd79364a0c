/** Shared helpers for integration tests: real containers through bin/tsrunc, as root. */
import { spawnSync, execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { posix } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Spec } from '../../src/spec/types.js';

export const REPO = posix.resolve(posix.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const TSRUNC = posix.join(REPO, 'bin', 'tsrunc');

export interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

/** A test world: its own --root, a shared busybox rootfs, and a place for bundles. */
export class World {
  readonly dir: string;
  readonly root: string;
  readonly rootfs: string;
  private n = 0;

  constructor(name: string) {
    this.dir = mkdtempSync(posix.join(tmpdir(), `tsrunc-${name}-`));
    chmodSync(this.dir, 0o755); // a user-namespaced root must be able to reach the rootfs
    this.root = posix.join(this.dir, 'state');
    execFileSync(posix.join(REPO, 'fixtures', 'busybox-bundle'), [posix.join(this.dir, 'base')], { stdio: 'ignore' });
    this.rootfs = posix.join(this.dir, 'base', 'rootfs');
  }

  /** A bundle whose config is the default spec (terminal off), changed by `edit`. */
  bundle(args: string[], edit?: (s: Spec, bundleDir: string) => void, ownRootfs = false): string {
    const b = posix.join(this.dir, `b${++this.n}`);
    execFileSync('mkdir', ['-p', b]);
    const spec = JSON.parse(readFileSync(posix.join(this.dir, 'base', 'config.json'), 'utf8')) as Spec;
    spec.process!.args = args;
    if (ownRootfs) {
      execFileSync('cp', ['-a', this.rootfs, posix.join(b, 'rootfs')]);
      spec.root = { path: 'rootfs', readonly: false };
    } else {
      spec.root = { path: this.rootfs, readonly: true };
    }
    edit?.(spec, b);
    writeFileSync(posix.join(b, 'config.json'), JSON.stringify(spec, null, 2));
    return b;
  }

  /** Runs tsrunc with this world's --root; stdin is /dev/null, output captured. */
  tsrunc(args: string[], opts: { timeout?: number; input?: string } = {}): Result {
    const r = spawnSync(TSRUNC, ['--root', this.root, ...args], {
      encoding: 'utf8', timeout: opts.timeout ?? 30000, input: opts.input ?? '',
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    return { code: r.status ?? 128, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
  }

  /**
   * For commands that leave a container running (create, run -d): its init keeps
   * the stdio it inherited, so they must not be pipes we wait on. Output goes to files.
   */
  detached(args: string[]): Result {
    const out = posix.join(this.dir, `out-${++this.n}`), err = posix.join(this.dir, `err-${this.n}`);
    const r = spawnSync('sh', ['-c', `exec "$@" </dev/null >${out} 2>${err}`, 'sh', TSRUNC, '--root', this.root, ...args], { timeout: 30000 });
    return { code: r.status ?? 128, stdout: readFileSync(out, 'utf8'), stderr: readFileSync(err, 'utf8') };
  }

  state(id: string): { status: string; pid: number; [k: string]: unknown } {
    const r = this.tsrunc(['state', id]);
    if (r.code !== 0) throw new Error(`state ${id}: ${r.stderr}`);
    return JSON.parse(r.stdout);
  }

  cleanup(): void {
    for (const id of existsSync(this.root) ? readdirSync(this.root) : []) this.tsrunc(['delete', '--force', id]);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Every cgroup directory named by a path below the hierarchies, in any hierarchy. */
export function cgroupDirs(rel: string): string[] {
  const out: string[] = [];
  for (const h of readdirSync('/sys/fs/cgroup')) {
    const p = posix.join('/sys/fs/cgroup', h, rel);
    if (existsSync(p)) out.push(p);
  }
  if (existsSync(posix.join('/sys/fs/cgroup', rel))) out.push(posix.join('/sys/fs/cgroup', rel));
  return out;
}

export function mountsMentioning(s: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(s));
}

export async function until(what: string, fn: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** One clear line, no stack trace. */
export function isOneLineError(stderr: string): boolean {
  const lines = stderr.trim().split('\n');
  return lines.length === 1 && lines[0].startsWith('tsrunc: ') && !/\n\s+at /.test(stderr);
}
