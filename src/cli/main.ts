/** The tsrunc command line: commander wiring only; the work is in src/container. */
import { Command, Option } from 'commander';
import { TsruncError } from '../errors.js';
import { StateStore } from '../state/store.js';
import { log, setLogConfig } from './log.js';
import { registerLifecycle } from './lifecycle.js';
import { registerInfo } from './info.js';
import { registerCgroups } from './cgroups.js';
import { registerCheckpoint } from './checkpoint.js';
import { registerMigrate } from './migrate.js';

import { VERSION, SPEC_VERSION } from '../version.js';
export { VERSION, SPEC_VERSION };

export interface Globals {
  root: string;
  log?: string;
  logFormat: 'text' | 'json';
  debug: boolean;
  criu?: string;
  systemdCgroup: boolean;
}

export function globals(cmd: Command): Globals {
  return cmd.optsWithGlobals() as Globals;
}

export function storeOf(cmd: Command): StateStore {
  return new StateStore(globals(cmd).root);
}

/** Wraps an action: TsruncError -> one line and its exit code; anything else -> one line too. */
export function action<A extends unknown[]>(fn: (...args: A) => Promise<number | void> | number | void) {
  return async (...args: A): Promise<void> => {
    try {
      const code = await fn(...args);
      process.exitCode = code ?? 0;
    } catch (e) {
      if (e instanceof TsruncError) {
        log('error', e.message);
        process.exitCode = e.exitCode;
      } else {
        const err = e as Error;
        log('error', err && err.message ? err.message : String(e));
        if (process.env.TSRUNC_DEBUG_STACK) process.stderr.write(`${err?.stack}\n`);
        process.exitCode = 1;
      }
    }
  };
}

/** runc's flag parser takes long flags with one dash (`-no-subreaper`); so does tsrunc. */
function normalizeSingleDash(argv: string[], longNames: Set<string>): string[] {
  return argv.map((a, i) => {
    if (i < 2 || !/^-[a-z][a-z0-9-]+(=.*)?$/.test(a)) return a;
    const name = a.slice(1).split('=')[0];
    return longNames.has(name) ? '-' + a : a;
  });
}

function longOptionNames(cmd: Command, out = new Set<string>()): Set<string> {
  for (const o of cmd.options) if (o.long) out.add(o.long.replace(/^--/, ''));
  for (const c of cmd.commands) longOptionNames(c, out);
  return out;
}

export function buildProgram(): Command {
  const program = new Command('tsrunc');
  program
    .description('an OCI container runtime in TypeScript, built for checkpoint/restore')
    .version(`tsrunc version ${VERSION}\nspec: ${SPEC_VERSION}\nnode: ${process.version}`, '-v, --version')
    .option('--root <dir>', 'directory for the containers\' state', '/run/tsrunc')
    .option('--log <file>', 'write logs to this file (default: stderr)')
    .addOption(new Option('--log-format <format>', 'log format').choices(['text', 'json']).default('text'))
    .option('--debug', 'debug logging', false)
    .option('--criu <path>', 'the CRIU binary to use (default: criu on PATH)')
    .option('--systemd-cgroup', 'use systemd to manage cgroups (not supported without systemd)', false)
    .showHelpAfterError(false)
    // like runc: global options come before the command, and exec's command line after its id is the process's
    .enablePositionalOptions()
    .configureOutput({ writeErr: (s) => process.stderr.write(s.startsWith('error:') ? `tsrunc: ${s.slice(7)}` : s) })
    .hook('preAction', (_this, sub) => {
      const g = globals(sub);
      setLogConfig({ file: g.log, format: g.logFormat, debug: g.debug });
      if (g.systemdCgroup) {
        log('error', '--systemd-cgroup is not supported: systemd is not running on this host (use cgroupfs paths)');
        process.exit(1);
      }
    });
  registerLifecycle(program);
  registerCgroups(program);
  registerCheckpoint(program);
  registerMigrate(program);
  registerInfo(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  await program.parseAsync(normalizeSingleDash(argv, longOptionNames(program)));
}
