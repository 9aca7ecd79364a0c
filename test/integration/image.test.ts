/** checkpoint --export / restore --import / inspect: one .tar.zst image, real CRIU, real containers. */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync, mkdirSync, unlinkSync } from 'node:fs';
import { posix } from 'node:path';
import { extract as tarExtract, pack as tarPack, type Header as Headers } from 'tar-stream';
import { compress, decompress } from 'zstd-napi';
import { World, REPO, TSRUNC, isOneLineError, until } from './helpers.js';
import { totalsOf, type ManifestEntry } from '../../src/image/manifest.js';

const w = new World('image');
after(() => w.cleanup());

const COUNTER = 'n=0; while true; do n=$((n+1)); echo $n > /count; sleep 0.1; done';
const count = (bundle: string) => Number(readFileSync(posix.join(bundle, 'rootfs', 'count'), 'utf8').trim() || 0);

/** A counter container with its own writable rootfs, and a pristine copy of its bundle made before it ran. */
function counterBundle(script = COUNTER): { bundle: string; pristine: string } {
  const bundle = w.bundle(['sh', '-c', script], undefined, true);
  mkdirSync(posix.join(bundle, 'rootfs', 'data'), { recursive: true });
  writeFileSync(posix.join(bundle, 'rootfs', 'data', 'victim.txt'), 'delete me\n');
  const pristine = `${bundle}-pristine`;
  execFileSync('cp', ['-a', bundle, pristine]);
  return { bundle, pristine };
}

/** A shell line with every stdio /dev/null; $TS is tsrunc with this world's --root. */
function sh(cmd: string, root = w.root): number {
  const r = spawnSync('sh', ['-c', cmd], { env: { ...process.env, TS: `${TSRUNC} --root ${root}` }, stdio: ['ignore', 'ignore', 'ignore'], timeout: 60000 });
  return r.status ?? 128;
}

/** run -d with stdio /dev/null (so that any host can give the restored init the same) */
function runDetached(bundle: string, id: string): void {
  const log = posix.join(w.dir, `run-${id}.log`);
  const code = sh(`$TS --log ${log} run -d --bundle ${bundle} ${id} </dev/null >/dev/null 2>&1`);
  assert.equal(code, 0, existsSync(log) ? readFileSync(log, 'utf8') : 'run failed');
}

function tsrunc(root: string, args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(TSRUNC, ['--root', root, ...args], { encoding: 'utf8', timeout: 60000, stdio: ['ignore', 'pipe', 'pipe'] });
  return { code: r.status ?? 128, stdout: r.stdout, stderr: r.stderr };
}

/** A detached restore: stdio /dev/null, the error (if any) from --log. */
function restoreDetached(root: string, args: string[]): { code: number; error: string } {
  const log = posix.join(w.dir, `log-${Math.random().toString(36).slice(2)}`);
  const r = spawnSync(TSRUNC, ['--root', root, '--log', log, '--log-format', 'json', 'restore', '-d', ...args], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 60000, encoding: 'utf8' });
  const lines = existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { level: string; msg: string }) : [];
  return { code: r.status ?? 128, error: lines.filter((l) => l.level === 'error').map((l) => l.msg).join('\n') || r.stderr };
}

function scratchLeft(root: string): string[] {
  const shm = readdirSync('/dev/shm').filter((n) => n.startsWith('import-') || n.startsWith('export-'));
  const work = posix.join(root, '.work');
  return [...shm, ...(existsSync(work) ? readdirSync(work) : [])];
}

function listing(dir: string): string {
  return execFileSync('sh', ['-c', `cd '${dir}' && find . -printf '%p %y %s %m %l\\n' | sort`], { encoding: 'utf8' });
}

test('round trip through a file: source gone, bundle copied, new --root: the counter continues, rootfs changes come along', async () => {
  const { bundle, pristine } = counterBundle(`echo written > /made.txt; rm /data/victim.txt; ${COUNTER}`);
  runDetached(bundle, 'rt1');
  await until('counter', () => existsSync(posix.join(bundle, 'rootfs', 'count')) && count(bundle) >= 5);
  const image = posix.join(w.dir, 'rt1.tar.zst');
  const r = w.tsrunc(['checkpoint', '--export', image, 'rt1']);
  assert.equal(r.code, 0, r.stderr);
  const atCheckpoint = count(bundle);
  assert.ok(existsSync(image) && !existsSync(`${image}.partial`));
  assert.equal(w.tsrunc(['state', 'rt1']).code, 1, 'the source is gone after checkpoint');
  assert.deepEqual(scratchLeft(w.root), [], 'the work dir is removed');
  execFileSync('rm', ['-rf', bundle]);

  const moved = posix.join(w.dir, 'moved-bundle');
  execFileSync('cp', ['-a', pristine, moved]);
  const root2 = posix.join(w.dir, 'root2');
  const res = restoreDetached(root2, ['--import', image, '--bundle', moved, 'rt2']);
  assert.equal(res.code, 0, res.error);
  const st = JSON.parse(tsrunc(root2, ['state', 'rt2']).stdout);
  assert.equal(st.status, 'running');
  await until('counter continues', () => count(moved) > atCheckpoint + 3);
  assert.ok(count(moved) > atCheckpoint, 'continued, not restarted');
  assert.equal(readFileSync(posix.join(moved, 'rootfs', 'made.txt'), 'utf8'), 'written\n');
  assert.ok(!existsSync(posix.join(moved, 'rootfs', 'data', 'victim.txt')), 'the deleted file is gone');
  assert.deepEqual(scratchLeft(root2), []);

  // inspect the image: the process tree with commands; --json parses
  const text = w.tsrunc(['inspect', image]);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /Container\s+rt1/);
  assert.match(text.stdout, /sh -c echo written/);
  assert.match(text.stdout, /Restores here\s+yes/);
  const js = JSON.parse(w.tsrunc(['inspect', '--json', image]).stdout);
  assert.equal(js.containerId, 'rt1');
  assert.ok(js.processes.length >= 1 && js.processes[0].args[0] === 'sh');
  assert.ok(js.memory.pages > 0);
  assert.equal(js.rootfsDiff.deleted, 1);

  // exported again from its new home, and back: the whole history of rootfs changes travels
  assert.equal(tsrunc(root2, ['kill', 'rt2', 'KILL']).code, 0);
  await until('stopped', () => JSON.parse(tsrunc(root2, ['state', 'rt2']).stdout).status === 'stopped');
  assert.equal(tsrunc(root2, ['delete', 'rt2']).code, 0);
});

test('the pipe: checkpoint --export - | restore --import -, and --leave-running keeps the source', async () => {
  const { bundle, pristine } = counterBundle();
  runDetached(bundle, 'p1');
  await until('counter', () => existsSync(posix.join(bundle, 'rootfs', 'count')) && count(bundle) >= 3);
  const root2 = posix.join(w.dir, 'root-pipe');
  const log = posix.join(w.dir, 'pipe.log');
  sh(`$TS --log ${log} checkpoint --leave-running --export - p1 | ${TSRUNC} --root ${root2} --log ${log} restore --import - --bundle ${pristine} -d p2`);
  assert.ok(!existsSync(log) || !/level=error/.test(readFileSync(log, 'utf8')), existsSync(log) ? readFileSync(log, 'utf8') : '');
  assert.equal(w.state('p1').status, 'running', 'the source runs on with --leave-running');
  assert.equal(JSON.parse(tsrunc(root2, ['state', 'p2']).stdout).status, 'running');
  const c = count(pristine);
  await until('clone counts', () => count(pristine) > c + 2);
  const s = count(bundle);
  await until('source counts', () => count(bundle) > s + 2);
  assert.equal(tsrunc(root2, ['delete', '--force', 'p2']).code, 0);
  assert.equal(w.tsrunc(['delete', '--force', 'p1']).code, 0);
});

test('a failed export leaves the container running, unfrozen, and no partial file', async () => {
  const { bundle } = counterBundle();
  runDetached(bundle, 'f1');
  await until('counter', () => existsSync(posix.join(bundle, 'rootfs', 'count')) && count(bundle) >= 2);
  const r = w.tsrunc(['checkpoint', '--export', posix.join(w.dir, 'no', 'such', 'dir', 'x.tar.zst'), 'f1']);
  assert.notEqual(r.code, 0);
  assert.ok(isOneLineError(r.stderr), r.stderr);
  assert.equal(w.state('f1').status, 'running');
  const c = count(bundle);
  await until('still counting', () => count(bundle) > c + 2);
  assert.deepEqual(scratchLeft(w.root), []);
  const bad = w.tsrunc(['checkpoint', '--export', posix.join(w.dir, 'y.tar.zst'), '--compress-level', '99', 'f1']);
  assert.ok(isOneLineError(bad.stderr) && /--compress-level 99/.test(bad.stderr), bad.stderr);
  assert.equal(w.state('f1').status, 'running');
  w.detached(['create', '--bundle', w.bundle(['true']), 'f2']);
  const created = w.tsrunc(['checkpoint', '--export', posix.join(w.dir, 'z.tar.zst'), 'f2']);
  assert.ok(isOneLineError(created.stderr) && /it is created, not running/.test(created.stderr), created.stderr);
  assert.ok(!existsSync(posix.join(w.dir, 'z.tar.zst')));
  w.tsrunc(['delete', '--force', 'f2']);
  w.tsrunc(['delete', '--force', 'f1']);
});

// --- hostile images: a real image, taken apart, spoiled in one way, put together again ---

interface Part {
  header: Headers;
  data: Buffer;
}

async function unpack(image: Buffer): Promise<Part[]> {
  const ex = tarExtract();
  const parts: Part[] = [];
  const done = (async () => {
    for await (const entry of ex) {
      const chunks: Buffer[] = [];
      for await (const c of entry) chunks.push(c as Buffer);
      parts.push({ header: entry.header, data: Buffer.concat(chunks) });
    }
  })();
  ex.end(decompress(image));
  await done;
  return parts;
}

const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

/** The image with `extra` entries before the manifest, listed in it (and in the header's sizes unless `undeclared`). */
async function spoil(image: Buffer, extra: { name: string; type?: Headers['type']; data?: Buffer; linkname?: string; mode?: number }[], undeclared = false): Promise<Buffer> {
  const parts = await unpack(image);
  const header = JSON.parse(parts[0].data.toString());
  const manifest = JSON.parse(parts[parts.length - 1].data.toString());
  const middle = parts.slice(1, -1);
  for (const x of extra) {
    const type = x.type ?? 'file';
    const data = x.data ?? Buffer.alloc(0);
    middle.push({ header: { name: x.name, type, mode: x.mode ?? 0o644, ...(x.linkname !== undefined ? { linkname: x.linkname } : {}), size: type === 'file' ? data.length : 0, mtime: new Date() } as Headers, data });
    const e: ManifestEntry = {
      path: x.name, type: type as ManifestEntry['type'], size: type === 'file' ? data.length : 0,
      sha256: sha(x.linkname !== undefined ? x.linkname : data), kind: x.name.startsWith('rootfs/') ? 'rootfs' : 'criu', mode: x.mode ?? 0o644,
    };
    if (x.linkname !== undefined) e.linkname = x.linkname;
    manifest.entries.push(e);
    header.entries += 1;
    if (!undeclared) header.contentBytes += e.size;
  }
  manifest.totals = totalsOf(manifest.entries);
  const pack = tarPack();
  const add = (p: Part) => {
    if (p.header.type === 'file') pack.entry({ ...p.header, size: p.data.length }, p.data);
    else pack.entry({ ...p.header, size: 0 });
  };
  add({ header: parts[0].header, data: Buffer.from(JSON.stringify(header)) });
  for (const p of middle) add(p);
  add({ header: parts[parts.length - 1].header, data: Buffer.from(JSON.stringify(manifest)) });
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack) chunks.push(c as Buffer);
  return compress(Buffer.concat(chunks));
}

test('hostile or damaged images are refused, each with its own line; nothing restored or left, the source untouched', async () => {
  const { bundle, pristine } = counterBundle();
  runDetached(bundle, 'h1');
  await until('counter', () => existsSync(posix.join(bundle, 'rootfs', 'count')) && count(bundle) >= 2);
  const good = posix.join(w.dir, 'good.tar.zst');
  assert.equal(w.tsrunc(['checkpoint', '--leave-running', '--export', good, 'h1']).code, 0);
  const img = readFileSync(good);
  const root2 = posix.join(w.dir, 'root-hostile');
  const before = listing(posix.join(pristine, 'rootfs'));
  const escape = `/tmp/tsrunc-escape-${process.pid}`;

  const flipped = Buffer.from(img);
  flipped[Math.floor(flipped.length / 2)] ^= 0x40;
  const cases: [string, Buffer, RegExp][] = [
    ['flipped byte', flipped, /image corrupt|sha256 mismatch|checksum/],
    ['truncated', img.subarray(0, Math.floor(img.length * 0.6)), /image truncated/],
    ['../x', await spoil(img, [{ name: '../x', data: Buffer.from('pwned') }]), /refusing entry "\.\.\/x": path has a "\.\." component/],
    ['absolute', await spoil(img, [{ name: `${escape}-abs`, data: Buffer.from('pwned') }]), /refusing entry "\/tmp\/[^"]+": absolute path/],
    ['symlink out', await spoil(img, [{ name: 'criu/out', type: 'symlink', linkname: '/tmp' }]), /refusing entry "criu\/out": symlink to an absolute path/],
    ['through a symlink', await spoil(img, [{ name: 'rootfs/lnk', type: 'symlink', linkname: '/tmp' }, { name: `rootfs/lnk/${posix.basename(escape)}`, data: Buffer.from('pwned') }]), /refusing entry "rootfs\/lnk\/[^"]+": /],
    ['bomb', await spoil(img, [{ name: 'criu/pages-99.img', data: Buffer.alloc(64 * 1024 * 1024) }], true), /decompression bomb|beyond the size it declared/],
    ['device', await spoil(img, [{ name: 'rootfs/dev/sda', type: 'block-device' }]), /device nodes and fifos are refused unless devices are allowed \(--allow-devices\)/],
  ];
  const messages = new Set<string>();
  for (const [what, data, re] of cases) {
    const file = posix.join(w.dir, `hostile-${what.replace(/\W/g, '_')}.tar.zst`);
    writeFileSync(file, data);
    const r = restoreDetached(root2, ['--import', file, '--bundle', pristine, `h-${messages.size}`]);
    assert.notEqual(r.code, 0, what);
    assert.match(r.error, re, what);
    assert.equal(r.error.split('\n').length, 1, `${what}: one line`);
    messages.add(r.error);
    if (process.env.SHOW) console.log(`# ${what}: ${r.error}`);
    assert.deepEqual(scratchLeft(root2), [], `${what}: staging removed`);
    assert.equal(tsrunc(root2, ['list', '-q']).stdout.trim(), '', `${what}: no container`);
    assert.equal(listing(posix.join(pristine, 'rootfs')), before, `${what}: bundle untouched`);
    assert.ok(!existsSync(escape) && !existsSync(`${escape}-abs`) && !existsSync('/tmp/x'), `${what}: nothing outside`);
    unlinkSync(file);
  }
  assert.equal(messages.size, cases.length, 'each refusal has its own message');

  // other bad input, before a byte is read
  const missing = restoreDetached(root2, ['--import', posix.join(w.dir, 'nope.tar.zst'), '--bundle', pristine, 'hx']);
  assert.match(missing.error, /nope\.tar\.zst: no such file/);
  const dup = restoreDetached(w.root, ['--import', good, '--bundle', pristine, 'h1']);
  assert.match(dup.error, /container "h1" already exists/);
  assert.equal(w.state('h1').status, 'running', 'the source is untouched');
  const c = count(bundle);
  await until('source counts', () => count(bundle) > c + 2);
  const insp = w.tsrunc(['inspect', posix.join(w.dir, 'nope.tar.zst')]);
  assert.ok(isOneLineError(insp.stderr), insp.stderr);
  writeFileSync(posix.join(w.dir, 'flip.tar.zst'), flipped);
  const insp2 = w.tsrunc(['inspect', posix.join(w.dir, 'flip.tar.zst')]);
  assert.ok(insp2.code !== 0 && isOneLineError(insp2.stderr), insp2.stderr);
  w.tsrunc(['delete', '--force', 'h1']);
});

test('a tsrunc killed mid-export: the next tsrunc on the container thaws it and removes the scratch dir and partial file', async () => {
  const { bundle } = counterBundle();
  execFileSync('cp', [posix.join(REPO, 'native', 'build', 'probe', 'memhog'), posix.join(bundle, 'rootfs', 'bin', 'memhog')]);
  const spec = JSON.parse(readFileSync(posix.join(bundle, 'config.json'), 'utf8'));
  spec.process.args = ['/bin/memhog', '96', '/m'];
  writeFileSync(posix.join(bundle, 'config.json'), JSON.stringify(spec));
  mkdirSync(posix.join(bundle, 'rootfs', 'm'));
  runDetached(bundle, 'k1');
  const m = (f: string) => posix.join(bundle, 'rootfs', 'm', f);
  await until('memhog ready', () => existsSync(m('ready')), 20000);
  const out = posix.join(w.dir, 'killed.tar.zst');
  const child = spawn(TSRUNC, ['--root', w.root, 'checkpoint', '--export', out, 'k1'], { stdio: 'ignore' });
  await until('frozen', () => w.state('k1').status === 'paused', 10000);
  await new Promise((r) => setTimeout(r, 300));
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  await new Promise((r) => setTimeout(r, 1500)); // CRIU, orphaned, finishes and lets go of the tree
  w.tsrunc(['resume', 'k1']); // takes the lock: the dead export is undone first
  assert.equal(w.state('k1').status, 'running');
  const c = Number(readFileSync(m('count'), 'utf8'));
  await until('counting again', () => Number(readFileSync(m('count'), 'utf8')) > c + 2);
  assert.deepEqual(scratchLeft(w.root), []);
  assert.deepEqual(readdirSync(w.dir).filter((n) => n.startsWith('killed.tar.zst')), [], 'no partial image');
  assert.ok(!existsSync(posix.join(w.root, 'k1', 'undo.json')));
  // and the memory is intact
  w.tsrunc(['kill', 'k1', 'USR1']);
  await until('verified', () => existsSync(m('verify')), 10000);
  assert.match(readFileSync(m('verify'), 'utf8'), /^ok /);
  w.tsrunc(['delete', '--force', 'k1']);
});
