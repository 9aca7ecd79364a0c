/**
 * cgroup v2 has no devices.allow/deny files: device access is decided by a
 * BPF_PROG_TYPE_CGROUP_DEVICE program attached to the cgroup. This assembles
 * the OCI `linux.resources.devices` rules into that program, with runc's
 * devicefilter semantics: the last matching rule wins, and no match denies.
 */
import { SpecError } from '../errors.js';

/** OCI LinuxDeviceCgroup. Missing type = 'a', missing or -1 major/minor = any, missing access = 'rwm'. */
export interface DeviceRule {
  allow: boolean;
  type?: 'a' | 'c' | 'b';
  major?: number;
  minor?: number;
  access?: string;
}

/** The kernel does not check the license of cgroup device programs (they call no GPL-only helpers). */
export const DEVICE_PROGRAM_LICENSE = 'Apache';

// Opcodes (class | size/op | source), spelled out once so the emitter reads like assembly.
const LDX_MEM_W = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_AND_K = 0x54;
const ALU32_RSH_K = 0x74;
const ALU32_MOV_X = 0xbc;
const ALU64_MOV_K = 0xb7;
const JMP_JNE_K = 0x55;
const JMP_EXIT = 0x95;

// include/uapi/linux/bpf.h
const DEVCG_DEV_BLOCK = 1;
const DEVCG_DEV_CHAR = 2;
const DEVCG_ACC_MKNOD = 1;
const DEVCG_ACC_READ = 2;
const DEVCG_ACC_WRITE = 4;
const ACC_ALL = DEVCG_ACC_MKNOD | DEVCG_ACC_READ | DEVCG_ACC_WRITE;

// Registers after the prologue. R1 (the context) is free for scratch once everything is loaded.
const R0 = 0, R1 = 1, R_TYPE = 2, R_ACCESS = 3, R_MAJOR = 4, R_MINOR = 5;

/** One instruction whose jump target is not known until its block is complete. */
interface Insn { op: number; dst: number; src: number; off: number; imm: number; toNextBlock?: boolean }

function insn(op: number, dst: number, src: number, off: number, imm: number): Insn {
  return { op, dst, src, off, imm };
}

function skipUnless(reg: number, value: number): Insn {
  return { op: JMP_JNE_K, dst: reg, src: 0, off: 0, imm: value, toNextBlock: true };
}

function ret(allow: boolean): Insn[] {
  return [insn(ALU64_MOV_K, R0, 0, 0, allow ? 1 : 0), insn(JMP_EXIT, 0, 0, 0, 0)];
}

const PROLOGUE: Insn[] = [
  insn(LDX_MEM_W, R_TYPE, R1, 0, 0),
  insn(ALU32_AND_K, R_TYPE, 0, 0, 0xffff),
  insn(LDX_MEM_W, R_ACCESS, R1, 0, 0),
  insn(ALU32_RSH_K, R_ACCESS, 0, 0, 16),
  insn(LDX_MEM_W, R_MAJOR, R1, 4, 0),
  insn(LDX_MEM_W, R_MINOR, R1, 8, 0),
];

interface Checked { allow: boolean; devType?: number; access: number; major?: number; minor?: number }

function fail(i: number, field: string, problem: string): never {
  throw new SpecError(`linux.resources.devices[${i}]${field ? '.' + field : ''}`, problem);
}

/** A device number as an instruction immediate; undefined means "any". */
function deviceNumber(i: number, field: 'major' | 'minor', v: unknown): number | undefined {
  if (v === undefined || v === null || v === -1) return undefined;
  // JNE compares the zero-extended u32 register with the sign-extended imm, so
  // anything >= 2^31 could never match; real majors are 12 bits, minors 20.
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 0x7fffffff) {
    fail(i, field, `must be -1 or an integer from 0 to 2147483647, got ${JSON.stringify(v)}`);
  }
  return v;
}

function check(rule: DeviceRule, i: number): Checked {
  if (rule === null || typeof rule !== 'object') fail(i, '', 'must be an object');
  if (typeof rule.allow !== 'boolean') fail(i, 'allow', `must be a boolean, got ${JSON.stringify(rule.allow)}`);
  const t: unknown = rule.type ?? 'a';
  let devType: number | undefined;
  if (t === 'c') devType = DEVCG_DEV_CHAR;
  else if (t === 'b') devType = DEVCG_DEV_BLOCK;
  else if (t !== 'a') fail(i, 'type', `unknown type ${JSON.stringify(t)} (one of "a", "c", "b")`);
  const a: unknown = rule.access ?? 'rwm';
  if (typeof a !== 'string') fail(i, 'access', `must be a string, got ${JSON.stringify(a)}`);
  // An empty string would compile to a rule that matches no request at all; that is
  // almost certainly a mistake, and silently reading it as "rwm" would widen an allow.
  if (a === '') fail(i, 'access', 'empty (use some of "rwm", or leave it out for all)');
  let access = 0;
  for (const c of a) {
    if (c === 'r') access |= DEVCG_ACC_READ;
    else if (c === 'w') access |= DEVCG_ACC_WRITE;
    else if (c === 'm') access |= DEVCG_ACC_MKNOD;
    else fail(i, 'access', `unknown access ${JSON.stringify(c)}`);
  }
  return {
    allow: rule.allow, devType, access,
    major: deviceNumber(i, 'major', rule.major),
    minor: deviceNumber(i, 'minor', rule.minor),
  };
}

/** A block that returns the rule's verdict on a match and falls through to the next block otherwise. */
function block(r: Checked): Insn[] {
  const out: Insn[] = [];
  if (r.devType !== undefined) out.push(skipUnless(R_TYPE, r.devType));
  if (r.access !== ACC_ALL) {
    // Matches when the request asks for nothing beyond the rule's bits.
    out.push(insn(ALU32_MOV_X, R1, R_ACCESS, 0, 0), insn(ALU32_AND_K, R1, 0, 0, ~r.access), skipUnless(R1, 0));
  }
  if (r.major !== undefined) out.push(skipUnless(R_MAJOR, r.major));
  if (r.minor !== undefined) out.push(skipUnless(R_MINOR, r.minor));
  out.push(...ret(r.allow));
  // off counts from the instruction after the jump; the target is the first instruction after this block.
  out.forEach((ins, k) => { if (ins.toNextBlock) ins.off = out.length - k - 1; });
  return out;
}

function encode(program: Insn[]): Buffer {
  const buf = Buffer.alloc(program.length * 8);
  program.forEach((ins, k) => {
    buf.writeUInt8(ins.op, k * 8);
    buf.writeUInt8(((ins.src & 0xf) << 4) | (ins.dst & 0xf), k * 8 + 1);
    buf.writeInt16LE(ins.off, k * 8 + 2);
    buf.writeInt32LE(ins.imm | 0, k * 8 + 4);
  });
  return buf;
}

/**
 * The program's instructions. Rules are emitted last first, so the first block that
 * matches is the last matching rule. A catch-all rule ends the program: the verifier
 * rejects unreachable instructions, so nothing may follow it. Without one, the program
 * ends in a deny. A program that is a single verdict (deny-all, allow-all, no rules)
 * is just `r0 = verdict; exit`, without the context loads nobody would read.
 */
export function deviceProgram(rules: DeviceRule[]): Buffer {
  const checked = rules.map(check);
  const blocks: Insn[][] = [];
  let closed = false;
  for (let i = checked.length - 1; i >= 0 && !closed; i--) {
    const b = block(checked[i]);
    blocks.push(b);
    closed = b.length === 2; // nothing to check: it matches every request
  }
  if (!closed) blocks.push(ret(false));
  // Every block but a catch-all checks something, so more than one block means the loads are read.
  const program = blocks.length > 1 ? [...PROLOGUE, ...blocks.flat()] : blocks[0];
  return encode(program);
}
