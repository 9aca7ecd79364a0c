/** migrate and serve. */
import { Command, Option } from 'commander';
import { TsruncError } from '../errors.js';
import { action, globals, storeOf } from './main.js';
import { log } from './log.js';

export function registerMigrate(program: Command): void {
  program.command('migrate <container-id> <destination>')
    .description('move a running container to another host: tsrunc://HOST:PORT (a "tsrunc serve") or ssh://[USER@]HOST[:PORT]')
    .addOption(new Option('--strategy <strategy>', 'stop-copy: frozen while the image moves; post-copy: memory follows on demand').choices(['stop-copy', 'post-copy']).default('stop-copy'))
    .option('--keep-source', 'clone: the source runs on after the destination has its copy', false)
    .option('--new-id <id>', 'the container\'s id at the destination (default: the same)')
    .option('--bundle <bundle>', 'the bundle at the destination: a name under its --bundles, or a path it allows (default: the id)')
    .option('--compress-level <n>', 'zstd level of the image stream (default 1)')
    .option('--key-file <file>', 'pre-shared key of the destination\'s "serve --key-file"')
    .option('--tls-cert <file>', 'this host\'s client certificate (TLS)')
    .option('--tls-key <file>', 'its private key')
    .option('--tls-ca <file>', 'the CA that signed the destination\'s certificate')
    .option('--ssh <command>', 'the ssh command for ssh:// destinations', 'ssh')
    .option('--dest-root <dir>', 'the destination\'s --root, for ssh://')
    .option('--dest-tsrunc <path>', 'tsrunc at the destination, for ssh://', 'tsrunc')
    .option('--timeout <seconds>', 'how long to wait for each answer of the destination', '120')
    .option('--tcp-established', 'move established TCP connections', false)
    .option('--file-locks', 'handle file locks', false)
    .option('--ext-unix-sk', 'allow external unix sockets', false)
    .option('--shell-job', 'the container was started from a shell (job control)', false)
    .option('--print-stats', 'print the phases and CRIU\'s numbers as JSON', false)
    .action(action(async (id: string, dest: string, o: Record<string, unknown>, cmd: Command) => {
      const timeout = Number(o.timeout);
      if (!(timeout > 0)) throw new TsruncError(`--timeout ${String(o.timeout)}: must be a number of seconds`);
      let level: number | undefined;
      if (o.compressLevel !== undefined) {
        const n = Number(o.compressLevel);
        if (!/^-?\d+$/.test(String(o.compressLevel)) || n === 0 || n > 22 || n < -7) throw new TsruncError(`--compress-level ${String(o.compressLevel)}: must be an integer from 1 to 22`);
        level = n;
      }
      const { migrateContainer } = await import('../migrate/migrate.js');
      const { abortExport } = await import('../container/export.js');
      const { phasedProgress } = await import('./progress.js');
      const bar = phasedProgress({ dump: 'migrate: dumping', write: 'migrate: sending', pages: 'migrate: memory pages' });
      const sigs: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
      const handler = (sig: NodeJS.Signals) => {
        bar.end();
        abortExport();
        log('error', `interrupted by ${sig}: the source runs on; the destination deletes what it received`);
        process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1));
      };
      for (const s of sigs) process.on(s, handler);
      try {
        const r = await migrateContainer(storeOf(cmd), id, dest, {
          ...(o as object), criu: globals(cmd).criu, compressLevel: level, timeoutMs: timeout * 1000, onProgress: bar.update,
          strategy: o.strategy as 'stop-copy',
        });
        bar.end();
        for (const w of r.warnings) log('warning', w);
        const mib = (r.bytesSent / 1048576).toFixed(1);
        process.stderr.write(`migrated "${id}" to ${r.destination} as "${r.id}"${r.destPid ? ` (pid ${r.destPid})` : ''} by ${r.strategy}: downtime ${r.downtimeMs} ms, total ${r.totalMs} ms, ${mib} MiB sent${o.keepSource ? '; the source runs on' : ''}\n`);
        if (o.printStats) {
          process.stdout.write(JSON.stringify({
            id: r.id, destination: r.destination, strategy: r.strategy, downtime_ms: r.downtimeMs, total_ms: r.totalMs, bytes_sent: r.bytesSent,
            image_bytes: r.imageBytes, page_bytes: r.pageBytes, page_bytes_after_running: r.pageBytesAfterRunning,
            phases: r.phases, destination_stats: r.destStats, max_rss_kib: process.resourceUsage().maxRSS,
          }, null, 2) + '\n');
        }
      } finally {
        bar.end();
        for (const s of sigs) process.off(s, handler);
      }
    }));

  program.command('serve')
    .description('accept migrations from other hosts into this --root')
    .option('--listen <addr:port>', 'where to listen, e.g. 0.0.0.0:7433')
    .option('--stdio', 'one migration on stdin/stdout (what migrate ssh:// runs)', false)
    .option('--key-file <file>', 'pre-shared key the sources must prove (HMAC challenge-response)')
    .option('--tls-cert <file>', 'this host\'s certificate (TLS)')
    .option('--tls-key <file>', 'its private key')
    .option('--tls-ca <file>', 'the CA that signs the sources\' client certificates')
    .option('--bundles <dir>', 'bundles are named relative to this directory')
    .option('--allow-bundle-paths', 'also accept absolute bundle paths the source asks for', false)
    .option('--max-concurrent <n>', 'migrations restored at once (more wait)', '4')
    .option('--commit-timeout <seconds>', 'how long a restored container waits for the source\'s commit', '30')
    .option('--idle-timeout <seconds>', 'a connection without a byte for this long is closed and undone', '60')
    .action(action(async (o: Record<string, unknown>, cmd: Command) => {
      const { serve } = await import('../migrate/serve.js');
      const max = Number(o.maxConcurrent);
      if (!(Number.isInteger(max) && max > 0)) throw new TsruncError(`--max-concurrent ${String(o.maxConcurrent)}: must be a positive integer`);
      await serve({
        ...(o as object), root: globals(cmd).root, criu: globals(cmd).criu, maxConcurrent: max,
        commitTimeoutMs: Number(o.commitTimeout) * 1000, idleTimeoutMs: Number(o.idleTimeout) * 1000, stdio: o.stdio === true,
      }, (addr) => {
        if (!process.stdout.isTTY) process.stdout.write(`listening ${addr}\n`);
      });
    }));
}
