/** checkpoint, restore, check. */
import { Command, Option } from 'commander';
import { TsruncError } from '../errors.js';
import { action, globals, storeOf } from './main.js';
import { log } from './log.js';

function checkpointFlags(cmd: Command): Command {
  return cmd
    .option('--image-path <dir>', 'where CRIU\'s image files go (default: ./checkpoint)')
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
    .option('--export <file>', 'write one .tar.zst image to this file ("-": stdout) instead of an image directory')
    .option('--compress-level <n>', 'zstd level of --export (default 1; higher is smaller and slower)')
    .option('--print-stats', 'print CRIU\'s and tsrunc\'s timings as JSON', false)
    .action(action(async (id: string, o: Record<string, unknown>, cmd: Command) => {
      const criu = globals(cmd).criu;
      if (!o.export) {
        if (o.compressLevel !== undefined) throw new TsruncError('--compress-level needs --export');
        const t0 = Date.now();
        const { checkpointContainer } = await import('../container/checkpoint.js');
        await checkpointContainer(storeOf(cmd), id, { ...o, criu });
        if (o.printStats) {
          const { readCriuStats } = await import('../../criu/stats.js');
          const { resolve } = await import('node:path');
          printStats(false, { id, total_ms: Date.now() - t0, criu: readCriuStats(resolve(String(o.workPath ?? o.imagePath ?? 'checkpoint'), 'stats-dump')) });
        }
        return;
      }
      const level = o.compressLevel === undefined ? undefined : await compressLevel(String(o.compressLevel));
      const { exportCheckpoint, abortExport } = await import('../container/export.js');
      const { phasedProgress } = await import('./progress.js');
      const toStdout = o.export === '-';
      if (toStdout && process.stdout.isTTY) throw new TsruncError('--export -: standard output is a terminal; redirect it to a file or a pipe');
      const bar = phasedProgress({ dump: 'checkpoint: dumping', write: 'checkpoint: writing image', pages: 'checkpoint: memory pages' });
      const undo = onSignals(() => {
        bar.end();
        abortExport();
      });
      try {
        const r = await exportCheckpoint(storeOf(cmd), id, toStdout ? process.stdout : resolveOut(String(o.export)), {
          ...o, criu, compressLevel: level, onProgress: bar.update,
        });
        bar.end();
        for (const w of r.warnings) log('warning', w);
        if (o.printStats) {
          printStats(toStdout, {
            id, total_ms: r.totalMs, dump_ms: r.dumpMs, write_ms: r.writeMs, frozen_ms: r.frozenMs,
            bytes_in: r.bytesIn, bytes_out: r.bytesOut, work_dir_tmpfs: r.onTmpfs, rootfs_diff: r.rootfs,
            max_rss_kib: process.resourceUsage().maxRSS, criu: r.criu,
          });
        }
      } finally {
        bar.end();
        undo();
      }
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
    .option('--import <file>', 'restore from one .tar.zst image (from "checkpoint --export"; "-": stdin)')
    .option('--allow-devices', 'accept device nodes and setuid files in an imported rootfs diff', false)
    .option('--page-server <address:port>', 'with --import and --lazy-pages: the CRIU page server the memory comes from (post-copy)')
    .option('--print-stats', 'print CRIU\'s and tsrunc\'s timings as JSON', false)
    .action(action(async (id: string, o: Record<string, unknown>, cmd: Command) => {
      const store = storeOf(cmd);
      const ro = { ...(o as { bundle: string }), criu: globals(cmd).criu, systemdCgroup: globals(cmd).systemdCgroup };
      let record, warnings: string[];
      const t0 = Date.now();
      if (o.import) {
        const { importCheckpoint, abortImport } = await import('../container/import.js');
        const { phasedProgress } = await import('./progress.js');
        const bar = phasedProgress({ import: 'restore: reading image', restore: 'restore: restoring processes' });
        const undo = onSignals(() => {
          bar.end();
          abortImport();
        });
        try {
          let lazyPageServer;
          if (o.lazyPages) {
            if (!o.pageServer) throw new TsruncError('--lazy-pages with --import needs --page-server ADDR:PORT (where the memory is served)');
            const { parsePageServer } = await import('../container/checkpoint.js');
            lazyPageServer = parsePageServer(String(o.pageServer));
          }
          const readyFd = process.env.TSRUNC_READY_FD ? Number(process.env.TSRUNC_READY_FD) : undefined;
          const { writeSync } = await import('node:fs');
          const r = await importCheckpoint(store, id, {
            ...ro, import: String(o.import), allowDevices: o.allowDevices === true, onProgress: bar.update, lazyPageServer,
            onRunning: (pid) => {
              // for serve: the container runs (its pages may still be on their way)
              if (readyFd !== undefined) {
                try {
                  writeSync(readyFd, `running ${pid}\n`);
                } catch {
                  /* nobody listens */
                }
              }
            },
          });
          bar.end();
          ({ record, warnings } = r);
          if (o.printStats) {
            printStats(false, {
              id, total_ms: r.totalMs, import_ms: r.importMs, restore_ms: r.restoreMs, bytes_in: r.bytesIn, bytes_out: r.bytesOut,
              rootfs_diff: r.rootfs, max_rss_kib: process.resourceUsage().maxRSS,
            });
          }
        } finally {
          bar.end();
          undo();
        }
      } else {
        const { restoreContainer } = await import('../container/restore.js');
        ({ record, warnings } = await restoreContainer(store, id, ro));
        if (o.printStats) {
          const { readCriuStats } = await import('../../criu/stats.js');
          const { resolve } = await import('node:path');
          printStats(false, { id, total_ms: Date.now() - t0, criu: readCriuStats(resolve(String(o.workPath ?? o.imagePath ?? 'checkpoint'), 'stats-restore')) });
        }
      }
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

  // internal: a CRIU dump that outlives the caller's event loop (a lazy dump serves pages until the destination has them all)
  program.command('__criu-dump <options-file>', { hidden: true })
    .action(action(async (file: string, _o: unknown, cmd: Command) => {
      const { readFileSync } = await import('node:fs');
      const { openCriu } = await import('../container/criu.js');
      const { dumpError } = await import('../container/checkpoint.js');
      const criu = openCriu(globals(cmd).criu);
      if (file === '-') {
        // started ahead of time: CRIU is loaded; the options file comes on stdin when it is time
        criu.version();
        process.stdout.write('loaded\n');
        let line = '';
        for await (const chunk of process.stdin) {
          line += String(chunk);
          if (line.includes('\n')) break;
        }
        file = line.trim();
        if (!file) throw new TsruncError('__criu-dump: no options file came');
      }
      const { id, dump } = JSON.parse(readFileSync(file, 'utf8'));
      try {
        criu.dump(dump);
      } catch (e) {
        throw dumpError(id, e, () => criu.version());
      }
    }));

  program.command('inspect <image>').description('show what a checkpoint image (.tar.zst) holds and whether it restores here')
    .option('--json', 'as JSON', false)
    .action(action(async (file: string, o: { json: boolean }) => {
      const { inspectImage } = await import('../container/inspect.js');
      const r = await inspectImage(file);
      if (o.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
      else {
        const { renderInspect } = await import('./inspect.js');
        process.stdout.write(renderInspect(r));
      }
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

/** --print-stats: JSON on stdout, or on stderr when stdout carries the image. */
function printStats(toStderr: boolean, stats: Record<string, unknown>): void {
  (toStderr ? process.stderr : process.stdout).write(JSON.stringify(stats, null, 2) + '\n');
}

async function compressLevel(s: string): Promise<number> {
  const { compressLevelRange } = await import('../image/index.js');
  const { min, max } = compressLevelRange();
  const n = Number(s);
  if (!/^-?\d+$/.test(s) || n < min || n > max || n === 0) throw new TsruncError(`--compress-level ${s}: must be an integer from 1 to ${max} (or negative down to ${min} for faster)`);
  return n;
}

function resolveOut(file: string): string {
  return file.startsWith('/') ? file : `${process.cwd()}/${file}`;
}

/** Ctrl-C, SIGTERM or SIGHUP mid-operation: undo what is half done, then exit like a killed process. */
function onSignals(undo: () => void): () => void {
  const sigs: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  const handler = (sig: NodeJS.Signals) => {
    undo();
    log('error', `interrupted by ${sig}: what was half done is undone (a checkpointed container runs on)`);
    process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1));
  };
  for (const s of sigs) process.on(s, handler);
  return () => {
    for (const s of sigs) process.off(s, handler);
  };
}
