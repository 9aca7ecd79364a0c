/** The checkpoint image format: writer -> reader round trips, hostile archives, the rootfs diff. No root, no CRIU. */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import {
  chmodSync, cpSync, existsSync, linkSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync,
  readlinkSync, rmSync, statSync, symlinkSync, truncateSync, unlinkSync, writeFileSync, appendFileSync, createReadStream,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable, Writable } from 'node:stream';
import { extract as tarExtract, pack as tarPack } from 'tar-stream';
import { compress, decompress } from 'zstd-napi';
import { TsruncError } from '../../src/errors.js';
import {
  applyRootfsDiff, diffRootfs, hostMismatches, parseCpuInfo, readImage, snapshotRootfs, totalsOf, validateManifest,
  writeImage, type EntryKind, type ManifestBase, type ManifestEntry, type ReadImageOptions,
} from '../../src/image/index.js';

const temps: string[] = [];
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'tsrunc-image-'));
  temps.push(d);
  return d;
}
after(() => {
  for (const d of temps) rmSync(d, { recursive: true, force: true });
});

const base: ManifestBase = {
  containerId: 'c1', tsrunc: '0.1.0', criu: { version: '4.1.1' }, kernel: '6.1.0', arch: process.arch,
  cpu: { vendor: 'GenuineIntel', model: 'Test CPU', flags: ['fpu', 'sse2'] },
};
const CREATED = '2026-01-02T03:04:05.000Z';

const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

/** half random, half zeros, page by page, like touched memory */
function halfCompressible(size: number): Buffer {
  const b = Buffer.alloc(size);
  for (let off = 0; off < size; off += 8192) randomBytes(Math.min(4096, size - off)).copy(b, off);
  return b;
}

/** type, permission bits, content or target of every entry of a tree */
function treeOf(dir: string, rel = ''): Map<string, string> {
  const out = new Map<string, string>();
  for (const name of readdirSync(join(dir, rel)).sort()) {
    const p = rel ? `${rel}/${name}` : name;
    const st = lstatSync(join(dir, p));
    const mode = (st.mode & 0o7777).toString(8);
    if (st.isSymbolicLink()) out.set(p, `link -> ${readlinkSync(join(dir, p))}`);
    else if (st.isDirectory()) {
      out.set(p, `dir ${mode}`);
      for (const [k, v] of treeOf(dir, p)) out.set(k, v);
    } else if (st.isFile()) out.set(p, `file ${mode} ${sha(readFileSync(join(dir, p)))}`);
    else out.set(p, `other ${st.mode.toString(8)}`);
  }
  return out;
}

function makeTree(dir: string): void {
  mkdirSync(join(dir, 'a/b/c/d'), { recursive: true });
  writeFileSync(join(dir, 'empty'), '');
  writeFileSync(join(dir, 'one'), 'x');
  writeFileSync(join(dir, 'page'), randomBytes(4095));
  writeFileSync(join(dir, 'a/big-random'), randomBytes(3 * 1024 * 1024 + 17));
  writeFileSync(join(dir, 'a/b/half'), halfCompressible(5 * 1024 * 1024));
  writeFileSync(join(dir, 'a/b/c/d/deep'), 'deep\n');
  writeFileSync(join(dir, 'a/script'), '#!/bin/sh\n');
  chmodSync(join(dir, 'a/script'), 0o755);
  chmodSync(join(dir, 'page'), 0o640);
  chmodSync(join(dir, 'a/b/c'), 0o750);
  symlinkSync('b/c/d/deep', join(dir, 'a/link'));
  linkSync(join(dir, 'one'), join(dir, 'one-again'));
}

async function collect(write: (out: NodeJS.WritableStream) => Promise<unknown>): Promise<Buffer> {
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (c: Buffer) => chunks.push(c));
  await write(out);
  return Buffer.concat(chunks);
}

/** tar entry names of an image, in order */
async function tarNames(image: Buffer): Promise<string[]> {
  const ex = tarExtract();
  const names: string[] = [];
  const reading = (async () => {
    for await (const e of ex) {
      names.push(e.header.name);
      for await (const _ of e) { /* drain */ }
    }
  })();
  ex.end(decompress(image));
  await reading;
  return names;
}

/** reads `image` into a fresh staging dir beside an empty "outside" dir; returns both */
async function readInto(image: Buffer, opts: Partial<ReadImageOptions> = {}) {
  const root = tmp();
  const outside = join(root, 'outside');
  mkdirSync(outside);
  const staging = join(root, 'staging');
  const res = readImage({ input: Readable.from([image]), staging, ...opts });
  return { root, outside, staging, res };
}

/** the image is refused with `re`, staging is gone and nothing was written beside it */
async function assertRefused(image: Buffer, re: RegExp, opts: Partial<ReadImageOptions> = {}): Promise<string> {
  const { root, outside, staging, res } = await readInto(image, opts);
  let message = '';
  await assert.rejects(res, (e: unknown) => {
    assert.ok(e instanceof TsruncError, `not a TsruncError: ${String(e)}`);
    assert.match(e.message, re);
    assert.ok(!e.message.includes('\n'), 'one line');
    message = e.message;
    return true;
  });
  assert.ok(!existsSync(staging), 'staging removed');
  assert.deepEqual(readdirSync(root), ['outside']);
  assert.deepEqual(readdirSync(outside), [], 'nothing written outside staging');
  return message;
}

/** A raw entry for hand-made archives. */
interface Raw {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link' | 'character-device' | 'block-device' | 'fifo' | 'contiguous-file';
  data?: Buffer | string;
  mode?: number;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  /** left out of the manifest */
  unlisted?: boolean;
}

function kindOf(name: string): EntryKind {
  const top = name.split('/')[0];
  return top === 'rootfs' ? 'rootfs' : top === 'criu' ? 'criu' : top === 'config.json' ? 'config' : 'meta';
}

/** A tar of the given entries between a consistent header.json and manifest.json, zstd-compressed; each part can be spoiled. */
async function craft(raws: Raw[], o: {
  header?: Record<string, unknown>;
  manifest?: (m: Record<string, unknown>, entries: ManifestEntry[]) => void;
  first?: Raw[];
  last?: Raw[];
} = {}): Promise<Buffer> {
  const entries: ManifestEntry[] = raws.filter((r) => !r.unlisted).map((r) => {
    const type = (r.type ?? 'file') as ManifestEntry['type'];
    const data = r.data === undefined ? Buffer.alloc(0) : Buffer.from(r.data);
    const e: ManifestEntry = {
      path: r.name, type, size: type === 'file' ? data.length : 0,
      sha256: sha(r.linkname !== undefined ? r.linkname : data), kind: kindOf(r.name), mode: r.mode ?? 0o644,
    };
    if (r.linkname !== undefined) e.linkname = r.linkname;
    return e;
  });
  const header = {
    format: 'tsrunc-checkpoint', version: 1, containerId: 'c1', created: CREATED,
    entries: raws.length, contentBytes: raws.reduce((n, r) => n + (r.data ? Buffer.from(r.data).length : 0), 0), ...o.header,
  };
  const manifest: Record<string, unknown> = {
    ...base, format: 'tsrunc-checkpoint', version: 1, created: CREATED, entries, totals: totalsOf(entries),
  };
  o.manifest?.(manifest, entries);
  const pack = tarPack();
  const add = (r: Raw) => {
    const h = { name: r.name, type: r.type ?? 'file', mode: r.mode ?? 0o644, mtime: new Date(CREATED), linkname: r.linkname, devmajor: r.devmajor, devminor: r.devminor } as const;
    if ((r.type ?? 'file') === 'file' || r.type === 'contiguous-file') pack.entry(h, Buffer.from(r.data ?? ''));
    else pack.entry(h);
  };
  for (const r of o.first ?? [{ name: 'header.json', data: JSON.stringify(header) }]) add(r);
  for (const r of raws) add(r);
  for (const r of o.last ?? [{ name: 'manifest.json', data: JSON.stringify(manifest) }]) add(r);
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack) chunks.push(c as Buffer);
  return compress(Buffer.concat(chunks));
}

/** A ustar header block by hand, for archives tar-stream would not write. */
function ustar(name: string, size: number, type = '0'): Buffer {
  const b = Buffer.alloc(512);
  b.write(name, 0);
  b.write('0000644\0', 100);
  b.write('0000000\0', 108);
  b.write('0000000\0', 116);
  b.write(`${size.toString(8).padStart(11, '0')}\0`, 124);
  b.write('00000000000\0', 136);
  b.write(type, 156);
  b.write('ustar\0', 257);
  b.write('00', 263);
  b.fill(' ', 148, 156);
  let sum = 0;
  for (const x of b) sum += x;
  b.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
  return b;
}

function padded(data: Buffer): Buffer {
  return Buffer.concat([data, Buffer.alloc((512 - (data.length % 512)) % 512)]);
}

const MiB = 1024 * 1024;

async function imageOfTree(dir: string, extra: Partial<Parameters<typeof writeImage>[0]> = {}) {
  let calls = 0;
  let last: [number, number] = [0, 0];
  let image: Buffer;
  let result!: Awaited<ReturnType<typeof writeImage>>;
  image = await collect(async (out) => {
    result = await writeImage({
      out,
      sources: [
        { dir, prefix: 'criu', kind: 'criu' },
        { path: 'config.json', data: '{"ociVersion":"1.0.2"}', kind: 'config', mode: 0o644 },
        { path: 'meta/runtime.json', data: Buffer.from('{"pid":1}'), kind: 'runtime' },
      ],
      manifestBase: { ...base, created: CREATED },
      onProgress: (i, o) => {
        calls++;
        assert.ok(i >= last[0] && o >= last[1], 'progress only grows');
        last = [i, o];
      },
      ...extra,
    });
  });
  return { image, result, calls, last };
}

test('writer -> reader round trip: contents, modes, links, digests, manifest last', async () => {
  const src = tmp();
  makeTree(src);
  const { image, result, calls, last } = await imageOfTree(src);
  assert.ok(calls > 2, 'progress reported');
  assert.equal(last[1], image.length, 'last progress is the whole image');
  assert.equal(result.bytesOut, image.length);
  assert.ok(image.length < result.bytesIn, 'compressed');

  const names = await tarNames(image);
  assert.equal(names[0], 'header.json');
  assert.equal(names.at(-1), 'manifest.json');
  assert.equal(names.length, result.manifest.entries.length + 2);

  for (const e of result.manifest.entries.filter((x) => x.kind === 'criu' && x.type === 'file')) {
    assert.equal(e.sha256, sha(readFileSync(join(src, e.path.slice('criu/'.length)))), e.path);
  }
  const hard = result.manifest.entries.find((e) => e.type === 'link');
  assert.ok(hard && ['criu/one', 'criu/one-again'].includes(hard.path));

  let readProgress = 0;
  const { staging, res } = await readInto(image, { onProgress: () => readProgress++ });
  const r = await res;
  assert.ok(readProgress > 0);
  assert.deepEqual(r.manifest, result.manifest);
  assert.equal(r.bytesIn, image.length);
  assert.deepEqual(treeOf(join(staging, 'criu')), treeOf(src));
  assert.equal(statSync(join(staging, 'criu/one')).ino, statSync(join(staging, 'criu/one-again')).ino, 'hardlink kept');
  assert.equal(readFileSync(join(staging, 'config.json'), 'utf8'), '{"ociVersion":"1.0.2"}');
  assert.equal(readFileSync(join(staging, 'meta/runtime.json'), 'utf8'), '{"pid":1}');
  assert.deepEqual(JSON.parse(readFileSync(join(staging, 'manifest.json'), 'utf8')), result.manifest);
  assert.equal(result.manifest.totals.byKind.criu?.entries, result.manifest.entries.filter((e) => e.kind === 'criu').length);
});

test('writeImage to a file path, single-threaded and with workers, at other levels', async () => {
  const src = tmp();
  writeFileSync(join(src, 'pages'), halfCompressible(3 * MiB));
  const dir = tmp();
  const sizes: number[] = [];
  for (const [workers, level] of [[0, 1], [2, 3], [1, 9]] as const) {
    const out = join(dir, `img-${workers}-${level}.tar.zst`);
    const r = await writeImage({ out, sources: [{ dir: src, prefix: 'criu', kind: 'criu' }], manifestBase: base, workers, compressLevel: level });
    assert.equal(statSync(out).size, r.bytesOut);
    assert.deepEqual(readdirSync(dir).filter((n) => n.endsWith('.partial')), []);
    sizes.push(r.bytesOut);
    const staging = join(dir, `s-${workers}-${level}`);
    await readImage({ input: createReadStream(out), staging });
    assert.deepEqual(readFileSync(join(staging, 'criu/pages')), readFileSync(join(src, 'pages')));
  }
  await assert.rejects(writeImage({ out: join(dir, 'x'), sources: [], manifestBase: base, compressLevel: 99 }), /compression level 99 is out of range/);
});

test('writer refuses bad sources: reserved names, two sources on one path, rootfs kind outside rootfs/', async () => {
  const out = new PassThrough().resume();
  await assert.rejects(writeImage({ out, sources: [{ path: 'manifest.json', data: '', kind: 'meta' }], manifestBase: base }), /reserved/);
  await assert.rejects(writeImage({ out, sources: [{ path: 'a', data: '', kind: 'meta' }, { path: 'a', data: '', kind: 'meta' }], manifestBase: base }), /two sources write "a"/);
  await assert.rejects(writeImage({ out, sources: [{ path: 'x/../y', data: '', kind: 'meta' }], manifestBase: base }), /"\.\." component/);
  await assert.rejects(writeImage({ out, sources: [{ path: 'meta/x', data: '', kind: 'rootfs' }], manifestBase: base }), /kind "rootfs"/);
  await assert.rejects(writeImage({ out, sources: [{ deleted: ['/etc/passwd'] }], manifestBase: base }), /absolute path/);
});

test('writer: a failing output or a vanished file fails the write, and a partial file is removed', async () => {
  const src = tmp();
  writeFileSync(join(src, 'pages'), halfCompressible(4 * MiB));
  let written = 0;
  const out = new Writable({
    write(chunk: Buffer, _enc, cb) {
      written += chunk.length;
      cb(written > MiB ? Object.assign(new Error('EPIPE: broken pipe, write'), { code: 'EPIPE' }) : null);
    },
  });
  await assert.rejects(writeImage({ out, sources: [{ dir: src, prefix: 'criu', kind: 'criu' }], manifestBase: base }), (e: unknown) => {
    assert.ok(e instanceof TsruncError);
    assert.match(e.message, /^writing the image: broken pipe/);
    return true;
  });
  const dir = tmp();
  await assert.rejects(
    writeImage({ out: join(dir, 'img.tar.zst'), sources: [{ dir: src, prefix: 'rootfs', kind: 'rootfs', paths: ['gone'] }], manifestBase: base }),
    /image source: .*gone: no such file or directory/,
  );
  // a file cut short while it is read
  writeFileSync(join(src, 'pages'), halfCompressible(16 * MiB));
  let cut = false;
  await assert.rejects(
    writeImage({
      out: join(dir, 'img.tar.zst'), sources: [{ dir: src, prefix: 'criu', kind: 'criu' }], manifestBase: base,
      onProgress: (i) => { if (i > 0 && !cut) { cut = true; truncateSync(join(src, 'pages'), 0); } },
    }),
    /image source: .*pages shrank while the image was written/,
  );
  assert.deepEqual(readdirSync(dir), [], 'no partial image left');
});

test('reader: select writes only some entries but still verifies all', async () => {
  const src = tmp();
  makeTree(src);
  const { image } = await imageOfTree(src);
  const { staging, res } = await readInto(image, { select: (p) => !p.startsWith('criu/a/') && p !== 'criu/one' });
  const r = await res;
  assert.ok(r.manifest.entries.length > 5);
  assert.ok(existsSync(join(staging, 'criu/page')));
  assert.ok(!existsSync(join(staging, 'criu/a/big-random')));
  assert.ok(!existsSync(join(staging, 'criu/one')));
  assert.ok(!existsSync(join(staging, 'criu/one-again')), 'a hardlink to a left-out file is left out too');
});

test('one flipped byte in the middle of the compressed image is refused, staging removed', async () => {
  const src = tmp();
  makeTree(src);
  const { image } = await imageOfTree(src);
  const bad = Buffer.from(image);
  bad[Math.floor(bad.length / 2)] ^= 0xff;
  await assertRefused(bad, /corrupt|mismatch|invalid/i);
});

test('a truncated image is refused as truncated', async () => {
  const src = tmp();
  makeTree(src);
  const { image } = await imageOfTree(src);
  await assertRefused(image.subarray(0, Math.floor(image.length / 2)), /image truncated: the zstd stream ends inside a frame/);
  // cut at a frame boundary: the zstd stream is whole, the tar is not
  const tar = decompress(image);
  await assertRefused(compress(tar.subarray(0, tar.length - 4096 - 512)), /image truncated/);
  await assertRefused(compress(tar.subarray(0, 1000)), /image truncated: the tar stream ends inside an entry/);
});

test('not a zstd stream, empty input, corrupt zstd', async () => {
  await assertRefused(Buffer.from('this is not an image at all'), /not a tsrunc image: not a zstd stream/);
  await assertRefused(Buffer.alloc(0), /image is empty/);
  const good = compress(halfCompressible(1024 * 1024));
  const bad = Buffer.concat([good.subarray(0, 12), Buffer.alloc(2000, 0xa5), good.subarray(2012)]);
  await assertRefused(bad, /image corrupt: zstd/);
});

test('a tar without header.json first is not an image', async () => {
  await assertRefused(await craft([{ name: 'criu/x', data: 'x' }], { first: [] }), /not a tsrunc image: the first entry is "criu\/x", not header\.json/);
});

test('unknown format or version in header.json is refused early', async () => {
  const m1 = await assertRefused(await craft([{ name: 'criu/x', data: 'x' }], { header: { version: 2 } }), /unsupported image version 2 \(this tsrunc reads version 1\)/);
  assert.match(m1, /^image header:/);
  await assertRefused(await craft([], { header: { format: 'docker-image' } }), /not a tsrunc checkpoint image \(format "docker-image"/);
  await assertRefused(await craft([], { manifest: (m) => { m.version = 3; } }), /^manifest: unsupported image version 3/);
});

test('hostile names: ../x, /abs, unnormalized', async () => {
  await assertRefused(await craft([{ name: '../x', data: 'pwned' }]), /refusing entry "\.\.\/x": path has a "\.\." component/);
  await assertRefused(await craft([{ name: 'criu/../../x', data: 'pwned' }]), /path has a "\.\." component/);
  await assertRefused(await craft([{ name: '/tmp/abs', data: 'pwned' }]), /refusing entry "\/tmp\/abs": absolute path/);
  await assertRefused(await craft([{ name: 'criu//x', data: 'x' }]), /path is not normalized/);
  await assertRefused(await craft([{ name: './criu', type: 'directory' }]), /path is not normalized/);
});

test('symlink escapes: absolute or ../ outside rootfs, and writing through a symlink anywhere', async () => {
  await assertRefused(await craft([{ name: 'criu/l', type: 'symlink', linkname: '/etc' }]), /refusing entry "criu\/l": symlink to an absolute path/);
  await assertRefused(await craft([{ name: 'criu/l', type: 'symlink', linkname: '../config.json' }]), /symlink "\.\.\/config\.json" leads out of "criu\/"/);
  // allowed inside the rootfs diff (a container's /bin/sh -> /bin/busybox), but never written through
  await assertRefused(
    await craft([
      { name: 'rootfs', type: 'directory', mode: 0o755 },
      { name: 'rootfs/evil', type: 'symlink', linkname: '/tmp' },
      { name: 'rootfs/evil/pwned', data: 'pwned' },
    ]),
    /refusing entry "rootfs\/evil\/pwned": its parent "rootfs\/evil" is a symlink/,
  );
  const ok = await craft([{ name: 'rootfs', type: 'directory', mode: 0o755 }, { name: 'rootfs/sh', type: 'symlink', linkname: '/bin/busybox' }, { name: 'rootfs/up', type: 'symlink', linkname: '../../..' }]);
  const { staging, res } = await readInto(ok);
  await res;
  assert.equal(readlinkSync(join(staging, 'rootfs/sh')), '/bin/busybox');
  assert.equal(readlinkSync(join(staging, 'rootfs/up')), '../../..');
});

test('a symlink pointing at the real outside dir, then a file through it: nothing lands outside', async () => {
  const root = tmp();
  const outside = join(root, 'outside');
  mkdirSync(outside);
  const staging = join(root, 'staging');
  const image = await craft([
    { name: 'rootfs', type: 'directory', mode: 0o755 },
    { name: 'rootfs/x', type: 'symlink', linkname: outside },
    { name: 'rootfs/x/pwned', data: 'pwned' },
  ]);
  await assert.rejects(readImage({ input: Readable.from([image]), staging }), /its parent "rootfs\/x" is a symlink/);
  assert.deepEqual(readdirSync(outside), []);
  assert.ok(!existsSync(staging));
});

test('hardlinks out of the image, across parts, or to entries not seen yet', async () => {
  await assertRefused(await craft([{ name: 'criu/h', type: 'link', linkname: '../../etc/passwd' }]), /hardlink to "\.\.\/\.\.\/etc\/passwd": path has a "\.\." component/);
  await assertRefused(await craft([{ name: 'criu/h', type: 'link', linkname: '/etc/passwd' }]), /hardlink to "\/etc\/passwd": absolute path/);
  await assertRefused(await craft([{ name: 'config.json', data: '{}' }, { name: 'criu/h', type: 'link', linkname: 'config.json' }]), /leads out of its part/);
  await assertRefused(await craft([{ name: 'criu/h', type: 'link', linkname: 'criu/later' }, { name: 'criu/later', data: 'x' }]), /not an earlier file of the image/);
  await assertRefused(await craft([{ name: 'criu/d', type: 'directory' }, { name: 'criu/h', type: 'link', linkname: 'criu/d' }]), /not an earlier file of the image/);
});

test('device nodes, fifos and setuid files: rootfs only, and only when allowed', async () => {
  const dev = { name: 'rootfs/dev/sda', type: 'block-device', devmajor: 8, devminor: 0, mode: 0o660 } as const;
  const dirs: Raw[] = [{ name: 'rootfs', type: 'directory', mode: 0o755 }, { name: 'rootfs/dev', type: 'directory', mode: 0o755 }];
  await assertRefused(await craft([...dirs, dev]), /refusing entry "rootfs\/dev\/sda": device nodes and fifos are refused unless devices are allowed \(--allow-devices\)/);
  await assertRefused(await craft([{ name: 'criu/null', type: 'character-device', devmajor: 1, devminor: 3 }]), /a character-device outside the rootfs part/, { allowDevices: true });
  await assertRefused(await craft([...dirs, { name: 'rootfs/dev/fifo', type: 'fifo' }]), /device nodes and fifos are refused/);
  const suid = { name: 'rootfs/su', data: '#!/bin/sh\n', mode: 0o4755 };
  await assertRefused(await craft([dirs[0], suid]), /setuid\/setgid file \(mode 4755\) refused unless devices are allowed/);
  await assertRefused(await craft([{ name: 'criu/su', data: 'x', mode: 0o2755 }]), /setuid\/setgid file \(mode 2755\) refused outside the rootfs part/, { allowDevices: true });

  // allowed: a fifo (mknod of a fifo needs no privilege) and a setuid file
  const { staging, res } = await readInto(await craft([...dirs, { name: 'rootfs/dev/fifo', type: 'fifo', mode: 0o600 }, suid]), { allowDevices: true });
  await res;
  assert.ok(lstatSync(join(staging, 'rootfs/dev/fifo')).isFIFO());
  assert.equal(lstatSync(join(staging, 'rootfs/su')).mode & 0o7777, 0o4755);
});

test('entry size limit, total size limit, expansion ratio', async () => {
  const big = { name: 'criu/pages-1.img', data: halfCompressible(2 * MiB) };
  await assertRefused(await craft([big]), /refusing entry "criu\/pages-1\.img": 2\.0 MiB is over the entry size limit \(1\.0 MiB\)/, { limits: { maxEntrySize: MiB } });
  await assertRefused(await craft([big]), /image declares 2\.0 MiB of data, over the size limit \(1\.0 MiB\)/, { limits: { maxTotalSize: MiB } });
  await assertRefused(await craft([{ name: 'criu/zeros', data: Buffer.alloc(8 * MiB) }]), /expands more than 10 times its compressed size/, { limits: { maxExpansion: 10 } });
});

test('decompression bomb: an entry beyond the declared size is refused before it is decompressed', async () => {
  const headerJson = Buffer.from(JSON.stringify({ format: 'tsrunc-checkpoint', version: 1, containerId: 'c1', created: CREATED, entries: 1, contentBytes: MiB }));
  const start = Buffer.concat([ustar('header.json', headerJson.length), padded(headerJson), ustar('criu/pages-1.img', 4 * 1024 * MiB)]);
  const zeros = compress(Buffer.alloc(64 * MiB));
  // 4 GiB of zeros in a few hundred KiB
  const bomb = Buffer.concat([compress(start), ...Array<Buffer>(64).fill(zeros)]);
  assert.ok(bomb.length < 2 * MiB);
  const t0 = Date.now();
  await assertRefused(bomb, /refusing entry "criu\/pages-1\.img": 4\.0 GiB goes beyond the 1\.0 MiB the image declared \(decompression bomb\?\)/);
  assert.ok(Date.now() - t0 < 5000, 'stopped at once');
});

test('decompression bomb: endless zero blocks after the entries stop at the declared size', async () => {
  const headerJson = Buffer.from(JSON.stringify({ format: 'tsrunc-checkpoint', version: 1, containerId: 'c1', created: CREATED, entries: 1, contentBytes: 5 }));
  const start = Buffer.concat([ustar('header.json', headerJson.length), padded(headerJson), ustar('criu/x', 5), padded(Buffer.from('hello'))]);
  const zeros = compress(Buffer.alloc(64 * MiB));
  const bomb = Buffer.concat([compress(start), ...Array<Buffer>(64).fill(zeros)]);
  const t0 = Date.now();
  let peak = 0;
  await assertRefused(bomb, /image expands beyond the size it declared \(\d+\.\d MiB\): refusing to decompress further/, { onProgress: (_i, o) => { peak = Math.max(peak, o); } });
  assert.ok(peak < 8 * MiB, `stopped early (${peak} bytes decompressed of 4 GiB)`);
  assert.ok(Date.now() - t0 < 5000);
});

test('manifest digest mismatch, size mismatch, missing entry, extra entry', async () => {
  const raws: Raw[] = [{ name: 'criu', type: 'directory', mode: 0o755 }, { name: 'criu/core-1.img', data: 'core' }, { name: 'criu/pages-1.img', data: 'pages' }];
  await assertRefused(await craft(raws, { manifest: (_m, es) => { es[1].sha256 = sha('other'); } }), /entry "criu\/core-1\.img": sha256 mismatch \(manifest [0-9a-f]{12}…, image [0-9a-f]{12}…\)/);
  await assertRefused(await craft(raws, {
    manifest: (m, es) => { es[2].size = 6; m.totals = totalsOf(es); },
  }), /entry "criu\/pages-1\.img": size mismatch \(manifest 6 bytes, image 5\)/);
  await assertRefused(await craft(raws, {
    manifest: (m, es) => { es.push({ ...es[1], path: 'criu/mm-1.img' }); m.totals = totalsOf(es); },
  }), /entry "criu\/mm-1\.img" is in the manifest but missing from the image/);
  await assertRefused(await craft([...raws, { name: 'criu/extra.img', data: 'extra', unlisted: true }]), /entry "criu\/extra\.img" is in the image but not in its manifest/);
  await assertRefused(await craft(raws, { manifest: (_m, es) => { es[1].mode = 0o600; } }), /entry "criu\/core-1\.img": mode mismatch/);
  await assertRefused(await craft(raws, { manifest: (m) => { m.containerId = 'other'; } }), /manifest and its header name different checkpoints/);
  await assertRefused(await craft(raws, { last: [] }), /image truncated: it ends before its manifest/);
});

test('duplicates, entries after the manifest, entries beyond the declared count, unsupported types', async () => {
  await assertRefused(await craft([{ name: 'criu/x', data: 'a' }, { name: 'criu/x', data: 'b', unlisted: true }]), /refusing entry "criu\/x": it appears twice/);
  await assertRefused(await craft([], { last: [{ name: 'manifest.json', data: '{}' }, { name: 'criu/late', data: 'x' }] }), /image has an entry after its manifest \("criu\/late"\)/);
  await assertRefused(await craft([{ name: 'criu/a', data: 'a' }, { name: 'criu/b', data: 'b' }], { header: { entries: 1 } }), /more entries than the 1 the image declared/);
  await assertRefused(await craft([{ name: 'criu/c', type: 'contiguous-file', data: 'x' }]), /unsupported tar entry type "contiguous-file"/);
  await assertRefused(await craft([{ name: 'criu/x', data: 'x' }, { name: 'header.json', data: '{}', unlisted: true }]), /a second header/);
});

test('a staging dir that is not empty is refused and left alone', async () => {
  const root = tmp();
  const staging = join(root, 'staging');
  mkdirSync(staging);
  writeFileSync(join(staging, 'keep'), 'mine');
  await assert.rejects(readImage({ input: Readable.from([await craft([])]), staging }), /staging dir .* is not empty/);
  assert.equal(readFileSync(join(staging, 'keep'), 'utf8'), 'mine');
  // an empty one is used
  rmSync(join(staging, 'keep'));
  const r = await readImage({ input: Readable.from([await craft([{ name: 'criu/x', data: 'x' }])]), staging });
  assert.equal(readFileSync(join(r.staging, 'criu/x'), 'utf8'), 'x');
});

test('validateManifest: one clear line per problem', () => {
  const entries: ManifestEntry[] = [{ path: 'criu/x', type: 'file', size: 1, sha256: sha('x'), kind: 'criu', mode: 0o600 }];
  const good = { ...base, format: 'tsrunc-checkpoint', version: 1, created: CREATED, entries, totals: totalsOf(entries) };
  assert.equal(validateManifest(good).entries[0].path, 'criu/x');
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ format: 'x' }, /^manifest: not a tsrunc checkpoint image \(format "x"/],
    [{ version: 7 }, /^manifest: unsupported image version 7/],
    [{ entries: [{ ...entries[0], sha256: 'abc' }] }, /entries\[0\]: sha256 is not/],
    [{ entries: [{ ...entries[0], path: '../x' }] }, /entries\[0\]: path "\.\.\/x": path has a "\.\." component/],
    [{ entries: [{ ...entries[0], kind: 'weird' }] }, /entries\[0\]: unknown kind "weird"/],
    [{ entries: [entries[0], entries[0]], totals: totalsOf([entries[0], entries[0]]) }, /listed twice/],
    [{ totals: { entries: 1, bytes: 99, byKind: {} } }, /totals .* do not add up/],
    [{ rootfsDiff: { added: 0, deleted: ['/etc'] } }, /rootfsDiff\.deleted\[0\] "\/etc": absolute path/],
    [{ created: 'yesterday' }, /created is not a date/],
  ];
  for (const [patch, re] of cases) {
    assert.throws(() => validateManifest({ ...good, ...patch }), (e: unknown) => e instanceof TsruncError && re.test(e.message) && !e.message.includes('\n'), String(re));
  }
  assert.throws(() => validateManifest('nope'), /manifest: not a JSON object/);
});

test('cpuinfo parsing and host comparison', () => {
  const cpu = parseCpuInfo('processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2\n\nprocessor\t: 1\nflags: fpu\n');
  assert.deepEqual(cpu, { vendor: 'AuthenticAMD', model: 'AMD EPYC', flags: ['fpu', 'sse2', 'avx2'] });
  const m = validateManifest({ ...base, format: 'tsrunc-checkpoint', version: 1, created: CREATED, entries: [], totals: totalsOf([]), cpu });
  assert.deepEqual(hostMismatches(m, { arch: process.arch, cpu }), []);
  assert.deepEqual(hostMismatches(m, { arch: 'arm64', cpu: { ...cpu, flags: ['fpu'] } }).length, 2);
});

function makeRootfs(dir: string): void {
  mkdirSync(join(dir, 'bin'), { recursive: true });
  mkdirSync(join(dir, 'etc'));
  mkdirSync(join(dir, 'usr/lib'), { recursive: true });
  mkdirSync(join(dir, 'usr/share/doc'), { recursive: true });
  mkdirSync(join(dir, 'var/log'), { recursive: true });
  mkdirSync(join(dir, 'tmp'));
  chmodSync(join(dir, 'tmp'), 0o1777);
  writeFileSync(join(dir, 'bin/sh'), randomBytes(20000));
  chmodSync(join(dir, 'bin/sh'), 0o755);
  writeFileSync(join(dir, 'etc/passwd'), 'root:x:0:0::/root:/bin/sh\n');
  writeFileSync(join(dir, 'etc/hosts'), '127.0.0.1 localhost\n');
  writeFileSync(join(dir, 'usr/lib/libc.so'), randomBytes(5000));
  writeFileSync(join(dir, 'usr/share/doc/README'), 'doc\n');
  symlinkSync('usr/lib', join(dir, 'lib'));
}

function changeRootfs(dir: string): void {
  appendFileSync(join(dir, 'etc/hosts'), '10.0.0.1 db\n');
  writeFileSync(join(dir, 'etc/new.conf'), 'new\n');
  mkdirSync(join(dir, 'var/log/app'));
  writeFileSync(join(dir, 'var/log/app/out.log'), halfCompressible(100000));
  writeFileSync(join(dir, 'var/log/app/same'), 'linked\n');
  linkSync(join(dir, 'var/log/app/same'), join(dir, 'var/log/app/same2'));
  unlinkSync(join(dir, 'etc/passwd'));
  rmSync(join(dir, 'usr/share'), { recursive: true });
  chmodSync(join(dir, 'bin/sh'), 0o700);
  unlinkSync(join(dir, 'lib'));
  symlinkSync('/usr/lib', join(dir, 'lib'));
  symlinkSync('/etc/hosts', join(dir, 'etc/hosts.link'));
}

test('rootfs diff: snapshot, change, diff lists the changes and the deletions', async () => {
  const rootfs = tmp();
  makeRootfs(rootfs);
  const snap = await snapshotRootfs(rootfs);
  assert.ok(snap.entries['etc/passwd']);
  assert.ok(JSON.stringify(snap).length < 4096, 'small');
  assert.deepEqual(await diffRootfs(rootfs, JSON.parse(JSON.stringify(snap))), { changed: [], deleted: [] });
  changeRootfs(rootfs);
  const d = await diffRootfs(rootfs, snap);
  for (const p of ['etc/hosts', 'etc/new.conf', 'var/log/app', 'var/log/app/out.log', 'var/log/app/same', 'var/log/app/same2', 'bin/sh', 'lib', 'etc/hosts.link']) {
    assert.ok(d.changed.includes(p), `changed: ${p}`);
  }
  assert.ok(!d.changed.includes('usr/lib/libc.so'));
  assert.ok(!d.changed.includes('etc/passwd'));
  assert.deepEqual(d.deleted, ['etc/passwd', 'usr/share'], 'a deleted directory stands for its contents');
});

test('rootfs diff through an image: applied to a copy of the original rootfs it gives the changed rootfs', async () => {
  const rootfs = tmp();
  makeRootfs(rootfs);
  const copyRoot = tmp();
  const copy = join(copyRoot, 'rootfs');
  cpSync(rootfs, copy, { recursive: true, verbatimSymlinks: true, preserveTimestamps: true });
  const snap = await snapshotRootfs(rootfs);
  changeRootfs(rootfs);
  const d = await diffRootfs(rootfs, snap);

  const image = await collect((out) => writeImage({
    out,
    sources: [{ dir: rootfs, prefix: 'rootfs', kind: 'rootfs', paths: d.changed }, { deleted: d.deleted }],
    manifestBase: base,
  }));
  const { staging, res } = await readInto(image);
  const r = await res;
  assert.deepEqual(r.manifest.rootfsDiff?.deleted, ['etc/passwd', 'usr/share']);
  assert.ok((r.manifest.rootfsDiff?.added ?? 0) >= d.changed.length);
  assert.ok(!existsSync(join(staging, 'rootfs/usr/lib/libc.so')), 'only the changes travel');

  const applied = await applyRootfsDiff(join(staging, 'rootfs'), r.manifest.rootfsDiff?.deleted ?? [], copy);
  assert.equal(applied.deleted, 2);
  assert.deepEqual(treeOf(copy), treeOf(rootfs));
  assert.equal(statSync(join(copy, 'var/log/app/same')).ino, statSync(join(copy, 'var/log/app/same2')).ino, 'hardlink kept');
  for (const p of ['etc/hosts', 'var/log/app/out.log', 'etc/hosts.link', 'var/log/app']) {
    assert.ok(Math.abs(lstatSync(join(copy, p)).mtimeMs - lstatSync(join(rootfs, p)).mtimeMs) < 0.01, `mtime kept to the microsecond: ${p}`);
  }
  assert.deepEqual(readdirSync(join(copy, 'etc')).filter((n) => n.startsWith('.tsrunc')), []);
});

test('applyRootfsDiff never goes through a symlink in the target', async () => {
  const root = tmp();
  const outside = join(root, 'outside');
  mkdirSync(outside);
  writeFileSync(join(outside, 'victim'), 'keep');
  const staged = join(root, 'staged');
  mkdirSync(join(staged, 'etc'), { recursive: true });
  writeFileSync(join(staged, 'etc/evil'), 'pwned');
  const target = join(root, 'target');
  mkdirSync(target);
  symlinkSync(outside, join(target, 'etc'));
  // deleting through it is refused
  await assert.rejects(applyRootfsDiff(staged, ['etc/victim'], target), /rootfs diff: .*\/target\/etc is not a directory \(a symlink\): refusing to go through it/);
  assert.deepEqual(readdirSync(outside), ['victim']);
  // the staged tree says etc is a directory: the symlink is replaced by one, not followed
  await applyRootfsDiff(staged, [], target);
  assert.ok(lstatSync(join(target, 'etc')).isDirectory());
  assert.equal(readFileSync(join(target, 'etc/evil'), 'utf8'), 'pwned');
  assert.deepEqual(readdirSync(outside), ['victim']);
  assert.equal(readFileSync(join(outside, 'victim'), 'utf8'), 'keep');
  await assert.rejects(applyRootfsDiff(staged, ['../outside/victim'], target), /"\.\." component/);
  // a symlink as the last component is replaced, not followed
  rmSync(join(target, 'etc'), { recursive: true });
  mkdirSync(join(target, 'etc'));
  symlinkSync(join(outside, 'victim'), join(target, 'etc/evil'));
  await applyRootfsDiff(staged, [], target);
  assert.equal(readFileSync(join(outside, 'victim'), 'utf8'), 'keep');
  assert.equal(readFileSync(join(target, 'etc/evil'), 'utf8'), 'pwned');
  assert.ok(!lstatSync(join(target, 'etc/evil')).isSymbolicLink());
});
