/** The plan wire format: the TypeScript numbers agree with native/plan.h, and encode/decode round-trip. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { OP, MSG, PLAN_MAGIC, MOUNT_SYSFS_FALLBACK, MOUNT_SRC_IN_ROOT } from '../../src/init/opcodes.js';
import { encodePlan, decodePlan, type InitPlan } from '../../src/init/plan.js';

// dist/test/unit/plan.test.js -> native/plan.h
const planH = readFileSync(new URL('../../../native/plan.h', import.meta.url), 'utf8');

/** Every `PREFIX_NAME = number` enum entry in plan.h. */
function enumValues(prefix: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of planH.matchAll(new RegExp(`\\b${prefix}_([A-Z_]+)\\s*=\\s*(\\d+)\\s*,`, 'g'))) out[m[1]] = Number(m[2]);
  return out;
}

function define(name: string): number {
  const m = new RegExp(`#define\\s+${name}\\s+(0x[0-9a-fA-F]+|\\d+)u?\\b`).exec(planH);
  assert.ok(m, `#define ${name} in plan.h`);
  return Number(m[1]);
}

test('OP numbers equal the OP_ enum in native/plan.h', () => {
  const h = enumValues('OP');
  assert.ok(Object.keys(h).length > 30, 'parsed the OP_ enum');
  assert.deepEqual({ ...OP }, h);
});

test('MSG numbers equal the MSG_ enum in native/plan.h', () => {
  const h = enumValues('MSG');
  assert.equal(Object.keys(h).length, 8, 'parsed the MSG_ enum');
  assert.deepEqual({ ...MSG }, h);
});

test('PLAN_MAGIC and the MOUNT extra bits equal the #defines in native/plan.h', () => {
  assert.equal(PLAN_MAGIC, define('PLAN_MAGIC'));
  assert.equal(MOUNT_SYSFS_FALLBACK, define('MOUNT_SYSFS_FALLBACK'));
  assert.equal(MOUNT_SRC_IN_ROOT, define('MOUNT_SRC_IN_ROOT'));
});

test('op numbers are unique', () => {
  const nums = Object.values(OP);
  assert.equal(new Set(nums).size, nums.length);
});

test('encodePlan/decodePlan round-trip numbers, bigints, negatives, UTF-8 strings and Buffers', () => {
  const bin = Buffer.from([0, 1, 2, 0xff, 0]);
  const plan: InitPlan = {
    ops: [
      { op: 'MKFIFO', fields: ['/run/x/exec.fifo', 0o622], what: 'fifo' },
      { op: 'LO_UP', fields: [], what: 'no fields' },
      { op: 'RLIMIT', fields: [7, -1, 2 ** 40], what: 'numbers' },
      { op: 'CAPS', fields: [(1n << 40n) | 1n, 0n, -5n, 0xffffffffffffffffn, 40], what: 'bigints' },
      { op: 'HOSTNAME', fields: ['héllo wörld ☃ 🐳', ''], what: 'utf-8 and empty' },
      { op: 'SECCOMP', fields: [bin, Buffer.alloc(0), 1], what: 'buffers' },
    ],
  };
  const buf = encodePlan(plan);
  assert.equal(buf.readUInt32LE(0), PLAN_MAGIC);
  assert.equal(buf.readUInt32LE(4), plan.ops.length);

  const back = decodePlan(buf);
  assert.deepEqual(back.map((o) => o.op), plan.ops.map((o) => OP[o.op]));
  assert.deepEqual(back[0].fields, [Buffer.from('/run/x/exec.fifo'), 0o622n]);
  assert.deepEqual(back[1].fields, []);
  assert.deepEqual(back[2].fields, [7n, -1n, 2n ** 40n]);
  // u64 all-ones is carried as the same 64 bits, i.e. -1 as i64
  assert.deepEqual(back[3].fields, [(1n << 40n) | 1n, 0n, -5n, -1n, 40n]);
  assert.equal(back[4].fields[0].toString(), 'héllo wörld ☃ 🐳');
  assert.deepEqual(back[4].fields[1], Buffer.alloc(0));
  assert.deepEqual(back[5].fields, [bin, Buffer.alloc(0), 1n]);
});

test('strings are NUL-terminated on the wire and the length excludes the NUL', () => {
  const buf = encodePlan({ ops: [{ op: 'CHDIR', fields: ['/ab'], what: '' }] });
  // magic, count, op, nfields, 's', u32 len, bytes, NUL
  assert.equal(buf.length, 8 + 8 + 1 + 4 + 3 + 1);
  assert.equal(String.fromCharCode(buf[16]), 's');
  assert.equal(buf.readUInt32LE(17), 3);
  assert.equal(buf.subarray(21, 24).toString(), '/ab');
  assert.equal(buf[24], 0);
});

test('decodePlan refuses a bad magic', () => {
  const buf = encodePlan({ ops: [] });
  buf.writeUInt32LE(0xdeadbeef, 0);
  assert.throws(() => decodePlan(buf), /bad plan magic/);
});
