/** The cgroup v2 device program: exact bytes, its verdicts under a small interpreter, and rule validation. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { deviceProgram, DEVICE_PROGRAM_LICENSE, type DeviceRule } from '../../src/cgroups/devices-bpf.js';
import { SpecError } from '../../src/errors.js';

/** One eBPF instruction: u8 op, u8 src<<4|dst, s16 off, s32 imm, little-endian. */
function ins(op: number, dst: number, src: number, off: number, imm: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt8(op, 0);
  b.writeUInt8((src << 4) | dst, 1);
  b.writeInt16LE(off, 2);
  b.writeInt32LE(imm, 4);
  return b;
}

const LDXW = 0x61, AND32 = 0x54, RSH32 = 0x74, MOV32X = 0xbc, MOV64 = 0xb7, JNE = 0x55, EXIT = 0x95;

const prologue = [
  ins(LDXW, 2, 1, 0, 0), ins(AND32, 2, 0, 0, 0xffff), // r2 = type
  ins(LDXW, 3, 1, 0, 0), ins(RSH32, 3, 0, 0, 16), //     r3 = access
  ins(LDXW, 4, 1, 4, 0), //                              r4 = major
  ins(LDXW, 5, 1, 8, 0), //                              r5 = minor
];
const deny = [ins(MOV64, 0, 0, 0, 0), ins(EXIT, 0, 0, 0, 0)];
const allow = [ins(MOV64, 0, 0, 0, 1), ins(EXIT, 0, 0, 0, 0)];

function same(rules: DeviceRule[], expected: Buffer[]): void {
  const got = deviceProgram(rules);
  const hex = (b: Buffer) => (b.toString('hex').match(/.{16}/g) ?? []).join('\n');
  assert.equal(hex(got), hex(Buffer.concat(expected)));
}

test('deny-all is a bare "r0 = 0; exit", without the context loads', () => {
  same([{ allow: false, access: 'rwm' }], deny);
  same([{ allow: false }], deny);
  same([], deny); // no rules: the default, deny
  same([{ allow: true, type: 'a', major: -1, minor: -1 }], allow);
});

test('deny-all then allow c 1:3 rwm: one block, then the deny-all as the tail', () => {
  same([{ allow: false, access: 'rwm' }, { allow: true, type: 'c', major: 1, minor: 3, access: 'rwm' }], [
    ...prologue,
    ins(JNE, 2, 0, 4, 2), // type != char -> next block
    ins(JNE, 4, 0, 3, 1), // major != 1
    ins(JNE, 5, 0, 2, 3), // minor != 3
    ...allow,
    ...deny,
  ]);
});

test('wildcard minor and access "rw", no explicit deny-all: the default deny ends the program', () => {
  same([{ allow: true, type: 'c', major: 136, access: 'rw' }], [
    ...prologue,
    ins(JNE, 2, 0, 6, 2),
    ins(MOV32X, 1, 3, 0, 0), // r1 = access
    ins(AND32, 1, 0, 0, -7), // r1 &= ~(READ|WRITE)
    ins(JNE, 1, 0, 3, 0), //    asks for more than rw -> next block
    ins(JNE, 4, 0, 2, 136),
    ...allow,
    ...deny,
  ]);
});

test('rules before a catch-all are not emitted (they could never be reached)', () => {
  const tail = deviceProgram([{ allow: true, type: 'c', major: 1, minor: 3 }, { allow: false }]);
  assert.deepEqual(tail, Buffer.concat(deny));
  assert.equal(DEVICE_PROGRAM_LICENSE, 'Apache');
});

// --- A tiny eBPF interpreter, only for what the assembler emits, with the verifier's basic rules. ---

const U64 = (1n << 64n) - 1n;
const U32 = (1n << 32n) - 1n;
const sext = (imm: number) => BigInt(imm) & U64; // imm is s32, sign-extended to 64 bits
const CTX = Symbol('ctx');
type Reg = bigint | typeof CTX | undefined;

/** Forward jumps only, all in range, every instruction reachable, and no falling off the end. */
function verify(prog: Buffer): void {
  const n = prog.length / 8;
  assert.ok(Number.isInteger(n) && n > 0, 'whole instructions');
  const seen = new Set<number>();
  const todo = [0];
  while (todo.length) {
    const pc = todo.pop()!;
    if (seen.has(pc)) continue;
    assert.ok(pc < n, `pc ${pc} runs past the end (${n} instructions)`);
    seen.add(pc);
    const op = prog[pc * 8];
    if (op === EXIT) continue;
    todo.push(pc + 1);
    if (op === JNE || op === 0x15) {
      const off = prog.readInt16LE(pc * 8 + 2);
      assert.ok(off >= 0, `backward jump at ${pc}`);
      todo.push(pc + 1 + off);
    }
  }
  assert.equal(seen.size, n, 'every instruction is reachable');
}

const DEV = { b: 1, c: 2 } as const;
const ACC = { m: 1, r: 2, w: 4 } as const;

function run(prog: Buffer, type: 'b' | 'c', access: string, major: number, minor: number): number {
  let acc = 0;
  for (const c of access) acc |= ACC[c as keyof typeof ACC];
  const ctx = [(acc << 16) | DEV[type], major, minor]; // struct bpf_cgroup_dev_ctx
  const r: Reg[] = new Array(11).fill(undefined);
  r[1] = CTX;
  const val = (k: number): bigint => {
    const v = r[k];
    assert.equal(typeof v, 'bigint', `r${k} read before it holds a scalar`);
    return v as bigint;
  };
  for (let pc = 0, steps = 0; ; pc++, steps++) {
    assert.ok(pc * 8 < prog.length && steps < 10_000, `pc ${pc} out of the program`);
    const op = prog[pc * 8], dst = prog[pc * 8 + 1] & 0xf, src = prog[pc * 8 + 1] >> 4;
    const off = prog.readInt16LE(pc * 8 + 2), imm = prog.readInt32LE(pc * 8 + 4);
    switch (op) {
      case LDXW:
        assert.equal(r[src], CTX, 'loads only from the context');
        assert.ok(off >= 0 && off <= 8 && off % 4 === 0, `ctx offset ${off}`);
        r[dst] = BigInt(ctx[off / 4] >>> 0);
        break;
      case 0xb4: r[dst] = sext(imm) & U32; break; //                      mov32 imm
      case MOV32X: r[dst] = val(src) & U32; break;
      case 0x54: r[dst] = val(dst) & sext(imm) & U32; break; //           and32 imm
      case 0x5c: r[dst] = val(dst) & val(src) & U32; break; //            and32 reg
      case RSH32: r[dst] = (val(dst) & U32) >> BigInt(imm & 31); break;
      case 0x7c: r[dst] = (val(dst) & U32) >> (val(src) & 31n); break; // rsh32 reg
      case MOV64: r[dst] = sext(imm); break;
      case 0xbf: r[dst] = r[src] === CTX ? CTX : val(src); break; //      mov64 reg
      case 0x57: r[dst] = val(dst) & sext(imm); break; //                 and64 imm
      case 0x5f: r[dst] = val(dst) & val(src); break; //                  and64 reg
      case 0x77: r[dst] = val(dst) >> BigInt(imm & 63); break; //         rsh64 imm
      case 0x7f: r[dst] = val(dst) >> (val(src) & 63n); break; //         rsh64 reg
      case JNE: if (val(dst) !== sext(imm)) pc += off; break;
      case 0x15: if (val(dst) === sext(imm)) pc += off; break; //         jeq imm
      case EXIT: return Number(val(0));
      default: assert.fail(`opcode 0x${op.toString(16)} at ${pc} not handled`);
    }
  }
}

function program(rules: DeviceRule[]): Buffer {
  const p = deviceProgram(rules);
  verify(p);
  return p;
}

const c = (major: number, minor: number, access = 'rwm'): DeviceRule => ({ allow: true, type: 'c', major, minor, access });
const runcDefaults: DeviceRule[] = [
  { allow: false, access: 'rwm' },
  c(1, 3), c(1, 5), c(1, 7), c(5, 0), c(1, 8), c(1, 9), c(136, -1), c(5, 2),
  c(-1, -1, 'm'),
  { allow: true, type: 'b', major: -1, minor: -1, access: 'm' },
];

test('runc-like default device list on top of deny-all', () => {
  const p = program(runcDefaults);
  assert.equal(run(p, 'c', 'r', 1, 3), 1, '/dev/null read');
  assert.equal(run(p, 'c', 'rw', 1, 3), 1, '/dev/null read+write');
  assert.equal(run(p, 'c', 'm', 1, 3), 1, 'c 1:3 mknod');
  assert.equal(run(p, 'b', 'r', 8, 0), 0, 'b 8:0 read');
  assert.equal(run(p, 'b', 'm', 8, 0), 1, 'b 8:0 mknod');
  assert.equal(run(p, 'b', 'rm', 8, 0), 0, 'b 8:0 read+mknod');
  assert.equal(run(p, 'c', 'w', 136, 5), 1, 'c 136:5 write (pts)');
  assert.equal(run(p, 'c', 'r', 10, 200), 0, 'c 10:200 (tun) read');
  assert.equal(run(p, 'c', 'm', 10, 200), 1, 'c 10:200 mknod');
  assert.equal(run(p, 'b', 'r', 1, 3), 0, 'b 1:3 is not c 1:3');
  assert.equal(run(p, 'c', 'r', 3, 1), 0, 'major and minor are not swapped');
});

test('the last matching rule wins', () => {
  const p = program([c(1, 3), { allow: false, type: 'c', major: 1, minor: 3, access: 'w' }]);
  assert.equal(run(p, 'c', 'r', 1, 3), 1, 'read');
  assert.equal(run(p, 'c', 'w', 1, 3), 0, 'write');
  assert.equal(run(p, 'c', 'rw', 1, 3), 1, 'read+write is not within "w", so the deny does not match');
  assert.equal(run(p, 'c', 'r', 1, 5), 0, 'no rule: default deny');

  const reversed = program([{ allow: false, type: 'c', major: 1, minor: 3, access: 'w' }, c(1, 3)]);
  assert.equal(run(reversed, 'c', 'w', 1, 3), 1, 'the later allow wins');

  const reopened = program([{ allow: false }, { allow: true }, { allow: false, type: 'b' }]);
  assert.equal(run(reopened, 'c', 'rwm', 4, 1), 1, 'allow-all after deny-all');
  assert.equal(run(reopened, 'b', 'r', 8, 0), 0, 'then deny all block devices');
});

test('a request matches only if all its access bits are within the rule', () => {
  const p = program([c(1, 3, 'r')]);
  assert.equal(run(p, 'c', 'r', 1, 3), 1);
  assert.equal(run(p, 'c', 'rw', 1, 3), 0);
  assert.equal(run(p, 'c', 'w', 1, 3), 0);
  assert.equal(run(p, 'c', 'm', 1, 3), 0);
  const mw = program([c(1, 3, 'mw')]);
  assert.equal(run(mw, 'c', 'wm', 1, 3), 1);
  assert.equal(run(mw, 'c', 'w', 1, 3), 1);
  assert.equal(run(mw, 'c', 'rw', 1, 3), 0);
  const types = program([{ allow: true, major: 7, access: 'rr' }]); // type 'a', any minor, repeated letter
  assert.equal(run(types, 'b', 'r', 7, 9), 1);
  assert.equal(run(types, 'c', 'r', 7, 0), 1);
  assert.equal(run(types, 'c', 'r', 8, 0), 0);
});

test('invalid rules are refused with one line naming the rule', () => {
  const rejects = (rules: unknown[], message: string) =>
    assert.throws(() => deviceProgram(rules as DeviceRule[]), (e: unknown) => {
      assert.ok(e instanceof SpecError, `a SpecError, got ${String(e)}`);
      assert.equal(e.message, message);
      return true;
    });
  const ok = { allow: true, type: 'c', major: 1, minor: 3 };
  rejects([ok, ok, ok, { allow: true, access: 'rx' }], 'linux.resources.devices[3].access: unknown access "x"');
  rejects([{ allow: true, type: 'u' }], 'linux.resources.devices[0].type: unknown type "u" (one of "a", "c", "b")');
  rejects([ok, { allow: true, access: '' }], 'linux.resources.devices[1].access: empty (use some of "rwm", or leave it out for all)');
  rejects([{ allow: true, access: 7 }], 'linux.resources.devices[0].access: must be a string, got 7');
  rejects([{ allow: 'yes' }], 'linux.resources.devices[0].allow: must be a boolean, got "yes"');
  rejects([{ allow: true, major: -2 }], 'linux.resources.devices[0].major: must be -1 or an integer from 0 to 2147483647, got -2');
  rejects([{ allow: true, minor: 1.5 }], 'linux.resources.devices[0].minor: must be -1 or an integer from 0 to 2147483647, got 1.5');
  rejects([{ allow: true, minor: 2 ** 31 }], 'linux.resources.devices[0].minor: must be -1 or an integer from 0 to 2147483647, got 2147483648');
  rejects([null], 'linux.resources.devices[0]: must be an object');
});
