/** checkpoint, restore, check. */
import { Command, Option } from 'commander';
import { TsruncError } from '../errors.js';
import { action, globals, storeOf } from './main.js';
import { log } from './log.js';

function checkpointFlags(cmd: Command): Command {
  return cmd
    .option('--image-path <dir>', 'where CRIU\'s image files go', 'checkpoint')
    .option('--work-path <dir>', 'where CRIU\'s log and work files go (default: the image path)')
    .option('--tcp-established', 'checkpoint/restore established TCP connections', false)
    .option('--ext-unix-sk', 'allow external unix sockets', false)
    .option('--shell-job', 'the container was started from a shell (job control)', false)
    .option('--file-locks', 'handle file locks', false)
    .option('--lazy-pages', 'memory pages are fetched lazily (post-copy)', false)
    .addOption(new Option('--manage-cgroups-mode <mode>', 'how CRIU handles cgroups').choices(['soft', 'full', 'strict', 'ignore']).default('soft'))
    .option('--empty-ns <ns...>', 'namespaces CRIU neither dumps nor restores (network)')
    .option('--auto-dedup', 'deduplicate memory pages against the parent image', false);
}

export function registerCheckpoint(program: Command): void {
  checkpointFlags(program.command('checkpoint <container-id>').description('checkpoint a running container with CRIU'))
    .option('--parent-path <dir>', 'a previous (pre-)dump, relative to the image path')
    .option('--leave-running', 'keep the container running after the checkpoint', false)
    .option('--tcp-skip-in-flight', 'skip in-flight TCP connections', false)
    .option('--link-remap', 'allow linked, deleted files to be remapped', false)
    .option('--page-server <address:port>', 'send memory pages to a CRIU page server')
    .option('--status-fd <fd>', 'accepted for runc compatibility')
    .option('--pre-dump', 'dump memory only and keep running (needs soft-dirty tracking)', false)
    .action(action(async (id: string, o: Record<string, unknown>, cmd: Command) => {
      const { checkpointContainer } = await import('../container/checkpoint.js');
      await checkpointContainer(storeOf(cmd), id, { ...o, criu: globals(cmd).criu });
    }));

  checkpointFlags(program.command('restore <container-id>').description('restore a container from a checkpoint'))
    .option('-b, --bundle <dir>', 'path to the bundle', '.')
    .option('-d, --detach', 'detach from the restored container', false)
    .option('--pid-file <file>', 'write the restored init\'s pid to this file')
    .option('--console-socket <path>', 'unix socket that receives the pty master of a terminal container')
    .option('--no-subreaper', 'accepted for runc compatibility')
    .option('--no-pivot', 'accepted for runc compatibility')
    .option('--lsm-profile <type:label>', 'LSM profile for the restored process')
    .option('--lsm-mount-context <context>', 'SELinux mount context for the restored mounts')
    .action(action(async (id: string, o: Record<string, unknown>, cmd: Command) => {
      const { restoreContainer } = await import('../container/restore.js');
      const store = storeOf(cmd);
      const { record, warnings } = await restoreContainer(store, id, { ...(o as { bundle: string }), criu: globals(cmd).criu, systemdCgroup: globals(cmd).systemdCgroup });
      for (const w of warnings) log('warning', w);
      if (o.detach) return 0;
      // foreground, like runc: wait for the restored init, pass signals on, remove the container after
      const { waitChild } = await import('../linux/wait.js');
      const { forwardSignals } = await import('../container/run.js');
      const stop = forwardSignals(record.pid);
      const code = await waitChild(record.pid);
      stop();
      const { deleteContainer } = await import('../container/delete.js');
      await deleteContainer(store, id, true);
      return code;
    }));

  program.command('check').description('what checkpoint/restore can do on this host (CRIU, kernel features)')
    .option('--json', 'as JSON', false)
    .action(action(async (o: { json: boolean }, cmd: Command) => {
      const { checkHost } = await import('../container/criu.js');
      const items = checkHost(globals(cmd).criu);
      if (o.json) process.stdout.write(JSON.stringify(items, null, 2) + '\n');
      else for (const i of items) process.stdout.write(`${i.ok ? 'ok     ' : i.required ? 'MISSING' : 'no     '} ${i.name.padEnd(14)} ${i.detail}${!i.ok && i.fix ? ` (fix: ${i.fix})` : ''}\n`);
      const bad = items.filter((i) => i.required && !i.ok);
      if (bad.length) throw new TsruncError(`checkpoint/restore cannot work here: ${bad.map((b) => b.name).join(', ')} missing`);
    }));
}
