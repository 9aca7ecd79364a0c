/** create, start, run, state, list, kill, delete. */
import { Command } from 'commander';
import { TsruncError } from '../errors.js';
import { ociState } from '../state/store.js';
import { action, globals, storeOf } from './main.js';
import { log } from './log.js';

function intArg(name: string) {
  return (v: string): number => {
    if (!/^\d+$/.test(v)) throw new TsruncError(`${name} must be a non-negative integer, got "${v}"`);
    return Number(v);
  };
}

function createFlags(cmd: Command): Command {
  return cmd
    .option('-b, --bundle <dir>', 'path to the bundle (directory with config.json)', '.')
    .option('--console-socket <path>', 'unix socket that receives the pty master of a terminal container')
    .option('--pid-file <file>', 'write the container\'s init pid to this file')
    .option('--no-pivot', 'do not use pivot_root (for a rootfs on a ramdisk)')
    .option('--no-new-keyring', 'do not create a new session keyring')
    .option('--preserve-fds <n>', 'pass N more file descriptors (3 .. 3+N-1) to the container', intArg('--preserve-fds'), 0);
}

interface CreateCliOpts {
  bundle: string;
  consoleSocket?: string;
  pidFile?: string;
  pivot: boolean;
  newKeyring: boolean;
  preserveFds: number;
  detach?: boolean;
}

interface ExecCliOpts {
  tty?: boolean;
  consoleSocket?: string;
  detach: boolean;
  pidFile?: string;
  cwd?: string;
  env?: string[];
  user?: string;
  additionalGids?: string[];
  cap?: string[];
  newPrivs: boolean;
  process?: string;
  preserveFds: number;
  apparmor?: string;
  processLabel?: string;
}

function createOptions(id: string, o: CreateCliOpts, cmd: Command) {
  return {
    id, bundle: o.bundle, pidFile: o.pidFile, noPivot: !o.pivot, noNewKeyring: !o.newKeyring,
    preserveFds: o.preserveFds, consoleSocket: o.consoleSocket, systemdCgroup: globals(cmd).systemdCgroup,
  };
}

function collect(v: string, prev: string[] = []): string[] {
  return [...prev, v];
}

function warn(warnings: string[]): void {
  for (const w of warnings) log('warning', w);
}

export function registerLifecycle(program: Command): void {
  createFlags(program.command('create <container-id>').description('create a container; its process waits for "start"'))
    .action(action(async (id: string, o: CreateCliOpts, cmd: Command) => {
      const { createContainer } = await import('../container/create.js');
      const { executor, warnings } = await createContainer(storeOf(cmd), createOptions(id, o, cmd));
      warn(warnings);
      executor.unref();
    }));

  program.command('start <container-id>').description('start the process of a created container')
    .action(action(async (id: string, _o: unknown, cmd: Command) => {
      const { startContainer } = await import('../container/start.js');
      warn((await startContainer(storeOf(cmd), id)).warnings);
    }));

  createFlags(program.command('run <container-id>').description('create and start a container'))
    .option('-d, --detach', 'detach from the container\'s process', false)
    .option('--keep', 'accepted for runc compatibility', false)
    .option('--no-subreaper', 'accepted for runc compatibility')
    .action(action(async (id: string, o: CreateCliOpts, cmd: Command) => {
      const { runContainer } = await import('../container/run.js');
      const r = await runContainer(storeOf(cmd), { ...createOptions(id, o, cmd), detach: o.detach === true });
      warn(r.warnings);
      return r.exitCode;
    }));

  program.command('exec <container-id> [command...]').description('run a new process in a running container')
    .passThroughOptions()
    .option('-t, --tty', 'allocate a pseudo-TTY')
    .option('--console-socket <path>', 'unix socket that receives the pty master (with --tty and --detach)')
    .option('-d, --detach', 'detach from the process', false)
    .option('--pid-file <file>', 'write the process\'s pid to this file')
    .option('--cwd <dir>', 'working directory in the container')
    .option('-e, --env <KEY=VALUE>', 'set an environment variable (repeatable)', collect)
    .option('-u, --user <uid[:gid]>', 'user and group, numbers or names from the container\'s /etc/passwd and /etc/group')
    .option('-g, --additional-gids <gid>', 'an additional group (repeatable)', collect)
    .option('-c, --cap <cap>', 'add a capability to all sets (repeatable)', collect)
    .option('--no-new-privs', 'set no_new_privs for the process')
    .option('-p, --process <file>', 'the process as OCI process JSON (instead of a command and flags)')
    .option('--preserve-fds <n>', 'pass N more file descriptors (3 .. 3+N-1) to the process', intArg('--preserve-fds'), 0)
    .option('-a, --apparmor <profile>', 'AppArmor profile for the process')
    .option('--process-label <label>', 'SELinux label for the process')
    .action(action(async (id: string, command: string[], o: ExecCliOpts, cmd: Command) => {
      const { execProcess } = await import('../container/exec.js');
      const r = await execProcess(storeOf(cmd), {
        id, args: command, processFile: o.process, tty: o.tty, consoleSocket: o.consoleSocket, detach: o.detach,
        pidFile: o.pidFile, cwd: o.cwd, env: o.env, user: o.user, additionalGids: o.additionalGids, caps: o.cap,
        noNewPrivs: o.newPrivs === false, preserveFds: o.preserveFds, apparmor: o.apparmor, processLabel: o.processLabel,
      });
      warn(r.warnings);
      return r.exitCode;
    }));

  program.command('state <container-id>').description('print the state of a container as JSON')
    .action(action((id: string, _o: unknown, cmd: Command) => {
      const store = storeOf(cmd);
      const rec = store.load(id);
      process.stdout.write(JSON.stringify(ociState(rec, store.status(rec)), null, 2) + '\n');
    }));

  program.command('list').alias('ls').description('list containers')
    .option('-f, --format <format>', 'table or json', 'table')
    .option('-q, --quiet', 'print only the container ids', false)
    .action(action((o: { format: string; quiet: boolean }, cmd: Command) => {
      const store = storeOf(cmd);
      const rows = store.list().flatMap((id) => {
        try {
          const rec = store.load(id);
          return [ociState(rec, store.status(rec))];
        } catch {
          return [];
        }
      });
      if (o.quiet) {
        for (const r of rows) process.stdout.write(`${r.id}\n`);
      } else if (o.format === 'json') {
        process.stdout.write(JSON.stringify(rows) + '\n');
      } else if (o.format === 'table') {
        const table = [['ID', 'PID', 'STATUS', 'BUNDLE', 'CREATED', 'OWNER'],
          ...rows.map((r) => [r.id, r.pid, r.status, r.bundle, r.created, r.owner === '' ? 'root' : r.owner].map(String))];
        const widths = table[0].map((_, c) => Math.max(...table.map((row) => row[c].length)));
        for (const row of table) process.stdout.write(row.map((cell, c) => (c < row.length - 1 ? cell.padEnd(widths[c] + 3) : cell)).join('') + '\n');
      } else {
        throw new TsruncError(`invalid --format "${o.format}" (table or json)`);
      }
    }));

  program.command('kill <container-id> [signal]').description('send a signal (default SIGTERM) to the container')
    .option('-a, --all', 'send the signal to every process in the container', false)
    .action(action(async (id: string, sig: string | undefined, o: { all: boolean }, cmd: Command) => {
      const { killContainer } = await import('../container/kill.js');
      await killContainer(storeOf(cmd), id, sig ?? 'SIGTERM', o.all);
    }));

  program.command('delete <container-id...>').alias('rm').description('delete containers and what the runtime made for them')
    .option('-f, --force', 'kill a running container first', false)
    .action(action(async (ids: string[], o: { force: boolean }, cmd: Command) => {
      const { deleteContainer } = await import('../container/delete.js');
      let failed: unknown;
      for (const id of ids) {
        try {
          warn(await deleteContainer(storeOf(cmd), id, o.force));
        } catch (e) {
          if (ids.length === 1) throw e;
          log('error', (e as Error).message);
          failed = e;
        }
      }
      return failed ? 1 : 0;
    }));
}
