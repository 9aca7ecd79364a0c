/** Runs OCI hooks from the runtime: the state JSON on stdin, the hook's own env and args, a timeout. */
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { posix } from 'node:path';
import { TsruncError } from '../errors.js';
import type { Hook, HookName } from '../spec/types.js';

export async function runHook(kind: HookName, index: number, hook: Hook, state: object): Promise<void> {
  const args = hook.args && hook.args.length > 0 ? hook.args : [hook.path];
  const where = `hooks.${kind}[${index}] (${hook.path})`;
  await new Promise<void>((resolve, reject) => {
    const child = spawn(hook.path, args.slice(1), {
      argv0: args[0],
      env: Object.fromEntries((hook.env ?? []).map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)])),
      stdio: ['pipe', 'ignore', 'pipe'],
    });
    let stderr = '';
    let timer: NodeJS.Timeout | undefined;
    if (hook.timeout) {
      timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new TsruncError(`${where}: timed out after ${hook.timeout}s`));
      }, hook.timeout * 1000);
    }
    child.stderr!.on('data', (d: Buffer) => {
      if (stderr.length < 4096) stderr += d.toString();
    });
    child.stdin!.on('error', () => {});
    child.stdin!.end(JSON.stringify(state));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new TsruncError(`${where}: ${e.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else {
        const why = signal ? `killed by ${signal}` : `exit status ${code}`;
        const msg = stderr.trim().split('\n').pop();
        reject(new TsruncError(`${where} failed: ${why}${msg ? `: ${msg}` : ''}`));
      }
    });
  });
}

export async function runHooks(kind: HookName, hooks: Hook[] | undefined, state: object): Promise<void> {
  for (const [i, h] of (hooks ?? []).entries()) await runHook(kind, i, h, state);
}

/**
 * The same, blocking: for hooks run from inside a CRIU notification (restore's setup-namespaces),
 * where the event loop is not running.
 */
export function runHooksSync(kind: HookName, hooks: Hook[] | undefined, state: object): void {
  for (const [i, hook] of (hooks ?? []).entries()) {
    const args = hook.args && hook.args.length > 0 ? hook.args : [hook.path];
    const where = `hooks.${kind}[${i}] (${hook.path})`;
    // the state comes from a file, not a pipe: a hook that exits without reading it is no EPIPE
    const dir = mkdtempSync(posix.join(tmpdir(), 'tsrunc-hook-'));
    const file = posix.join(dir, 'state.json');
    writeFileSync(file, JSON.stringify(state), { mode: 0o600 });
    const fd = openSync(file, 'r');
    let r;
    try {
      r = spawnSync(hook.path, args.slice(1), {
        argv0: args[0],
        env: Object.fromEntries((hook.env ?? []).map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)])),
        stdio: [fd, 'ignore', 'pipe'], encoding: 'utf8',
        timeout: hook.timeout ? hook.timeout * 1000 : undefined, killSignal: 'SIGKILL',
      });
    } finally {
      closeSync(fd);
      rmSync(dir, { recursive: true, force: true });
    }
    if (r.error && (r.error as NodeJS.ErrnoException).code === 'ETIMEDOUT') throw new TsruncError(`${where}: timed out after ${hook.timeout}s`);
    if (r.error) throw new TsruncError(`${where}: ${r.error.message}`);
    if (r.status !== 0) {
      const why = r.signal ? `killed by ${r.signal}` : `exit status ${r.status}`;
      const msg = (r.stderr ?? '').trim().split('\n').pop();
      throw new TsruncError(`${where} failed: ${why}${msg ? `: ${msg}` : ''}`);
    }
  }
}
