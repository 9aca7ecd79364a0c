/**
 * Classic BPF for seccomp: instruction encoding, the constants a seccomp filter uses, and a
 * small assembler with labels. Conditional jumps in classic BPF have 8-bit offsets (jt, jf);
 * the assembler reaches targets further than that through trampolines (an unconditional JA,
 * whose offset k is 32 bits) placed right after the jump.
 */

// --- opcodes (linux/bpf_common.h) ---------------------------------------------------------
export const BPF_LD = 0x00;
export const BPF_ALU = 0x04;
export const BPF_JMP = 0x05;
export const BPF_RET = 0x06;
export const BPF_W = 0x00;
export const BPF_ABS = 0x20;
export const BPF_K = 0x00;
export const BPF_AND = 0x50;
export const BPF_JA = 0x00;
export const BPF_JEQ = 0x10;
export const BPF_JGT = 0x20;
export const BPF_JGE = 0x30;
export const BPF_JSET = 0x40;

/** The only instructions the compiler emits (and the test interpreter runs). */
export const OP_LD_W_ABS = BPF_LD | BPF_W | BPF_ABS;
export const OP_ALU_AND_K = BPF_ALU | BPF_AND | BPF_K;
export const OP_JA = BPF_JMP | BPF_JA;
export const OP_JEQ_K = BPF_JMP | BPF_JEQ | BPF_K;
export const OP_JGT_K = BPF_JMP | BPF_JGT | BPF_K;
export const OP_JGE_K = BPF_JMP | BPF_JGE | BPF_K;
export const OP_JSET_K = BPF_JMP | BPF_JSET | BPF_K;
export const OP_RET_K = BPF_RET | BPF_K;

/** BPF_MAXINSNS: the kernel refuses longer programs. */
export const BPF_MAXINSNS = 4096;
/** sizeof(struct sock_filter) */
export const SOCK_FILTER_SIZE = 8;

// --- struct seccomp_data offsets (little-endian: an argument's low word comes first) ------
export const SECCOMP_DATA_NR = 0;
export const SECCOMP_DATA_ARCH = 4;
export const SECCOMP_DATA_IP = 8;
/** Offset of the low 32 bits of argument `i` (0..5). */
export const argLow = (i: number): number => 16 + 8 * i;
/** Offset of the high 32 bits of argument `i` (0..5). */
export const argHigh = (i: number): number => 16 + 8 * i + 4;

// --- seccomp return values (linux/seccomp.h) -----------------------------------------------
export const SECCOMP_RET_KILL_PROCESS = 0x80000000;
export const SECCOMP_RET_KILL_THREAD = 0x00000000;
export const SECCOMP_RET_TRAP = 0x00030000;
export const SECCOMP_RET_ERRNO = 0x00050000;
export const SECCOMP_RET_USER_NOTIF = 0x7fc00000;
export const SECCOMP_RET_TRACE = 0x7ff00000;
export const SECCOMP_RET_LOG = 0x7ffc0000;
export const SECCOMP_RET_ALLOW = 0x7fff0000;
/** The low 16 bits of a return value: the errno of ERRNO, the message of TRACE. */
export const SECCOMP_RET_DATA = 0x0000ffff;

// --- seccomp(2) filter flags ---------------------------------------------------------------
export const SECCOMP_FILTER_FLAG_TSYNC = 1;
export const SECCOMP_FILTER_FLAG_LOG = 2;
export const SECCOMP_FILTER_FLAG_SPEC_ALLOW = 4;
export const SECCOMP_FILTER_FLAG_NEW_LISTENER = 8;
export const SECCOMP_FILTER_FLAG_TSYNC_ESRCH = 16;
export const SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 32;

/** One struct sock_filter. */
export interface Insn {
  code: number;
  jt: number;
  jf: number;
  k: number;
}

/** Encodes instructions as the struct sock_filter array seccomp(2) takes: 8 bytes each, little-endian. */
export function encode(insns: readonly Insn[]): Buffer {
  const buf = Buffer.alloc(insns.length * SOCK_FILTER_SIZE);
  insns.forEach((ins, i) => {
    const o = i * SOCK_FILTER_SIZE;
    buf.writeUInt16LE(ins.code, o);
    buf.writeUInt8(ins.jt, o + 2);
    buf.writeUInt8(ins.jf, o + 3);
    buf.writeUInt32LE(ins.k >>> 0, o + 4);
  });
  return buf;
}

/** Decodes a struct sock_filter array (the inverse of encode). */
export function decode(buf: Buffer): Insn[] {
  if (buf.length % SOCK_FILTER_SIZE) throw new Error(`BPF program of ${buf.length} bytes is not a whole number of instructions`);
  const out: Insn[] = [];
  for (let o = 0; o < buf.length; o += SOCK_FILTER_SIZE)
    out.push({ code: buf.readUInt16LE(o), jt: buf.readUInt8(o + 2), jf: buf.readUInt8(o + 3), k: buf.readUInt32LE(o + 4) });
  return out;
}

/** The program would be longer than the kernel accepts. */
export class BpfTooLongError extends Error {
  constructor(readonly length: number) {
    super(`BPF program has ${length} instructions, more than the kernel's limit of ${BPF_MAXINSNS}`);
    this.name = 'BpfTooLongError';
  }
}

/** A jump target: a label name, or NEXT (fall through to the following instruction). */
export type Target = string;
export const NEXT: Target = '';

/** An instruction as written to the assembler: a jump names its targets by label. */
type Item =
  | { kind: 'label'; name: string }
  | { kind: 'plain'; code: number; k: number }
  | { kind: 'jcond'; code: number; k: number; jt: Target; jf: Target }
  | { kind: 'ja'; target: Target };

/**
 * Builds a program from instructions and labels, then resolves the jumps. Labels must be
 * defined once, and jumps only go forward (classic BPF cannot jump back).
 */
export class Assembler {
  private items: Item[] = [];
  private labels = new Set<string>();
  private nextLabel = 0;

  /** A fresh label name, unique in this assembler. */
  newLabel(hint = 'L'): string {
    return `${hint}#${this.nextLabel++}`;
  }

  label(name: string): this {
    if (this.labels.has(name)) throw new Error(`BPF label ${name} defined twice`);
    this.labels.add(name);
    this.items.push({ kind: 'label', name });
    return this;
  }

  /** A = the 32-bit word at offset `off` of seccomp_data. */
  ldAbs(off: number): this {
    this.items.push({ kind: 'plain', code: OP_LD_W_ABS, k: off });
    return this;
  }

  /** A &= k */
  and(k: number): this {
    this.items.push({ kind: 'plain', code: OP_ALU_AND_K, k: k >>> 0 });
    return this;
  }

  ret(k: number): this {
    this.items.push({ kind: 'plain', code: OP_RET_K, k: k >>> 0 });
    return this;
  }

  ja(target: Target): this {
    this.items.push({ kind: 'ja', target });
    return this;
  }

  /** if (A == k) goto jt else goto jf */
  jeq(k: number, jt: Target, jf: Target = NEXT): this {
    return this.jcond(OP_JEQ_K, k, jt, jf);
  }
  /** if (A > k) goto jt else goto jf (unsigned) */
  jgt(k: number, jt: Target, jf: Target = NEXT): this {
    return this.jcond(OP_JGT_K, k, jt, jf);
  }
  /** if (A >= k) goto jt else goto jf (unsigned) */
  jge(k: number, jt: Target, jf: Target = NEXT): this {
    return this.jcond(OP_JGE_K, k, jt, jf);
  }
  /** if (A & k) goto jt else goto jf */
  jset(k: number, jt: Target, jf: Target = NEXT): this {
    return this.jcond(OP_JSET_K, k, jt, jf);
  }

  private jcond(code: number, k: number, jt: Target, jf: Target): this {
    this.items.push({ kind: 'jcond', code, k: k >>> 0, jt, jf });
    return this;
  }

  /**
   * Resolves labels into offsets. A conditional branch whose target is more than 255
   * instructions ahead gets a trampoline: a JA to the far target right after the jump, which
   * the branch then reaches with a short offset. Inserting one moves later code, which can push
   * other branches out of range, so this repeats until nothing changes (each branch gets at
   * most one trampoline per side, so it ends). Throws BpfTooLongError past BPF_MAXINSNS.
   */
  assemble(): Insn[] {
    // work on a copy: trampolines are added as 'ja' items, branches retargeted to them
    const items: Item[] = this.items.map((it) => ({ ...it }));
    for (const it of items) {
      const targets = it.kind === 'jcond' ? [it.jt, it.jf] : it.kind === 'ja' ? [it.target] : [];
      for (const t of targets) if (t !== NEXT && !this.labels.has(t)) throw new Error(`BPF label ${t} is never defined`);
    }
    let trampolines = 0;
    for (;;) {
      // positions: labels take no room
      const labelPos = new Map<string, number>();
      const insnPos: number[] = [];
      let pc = 0;
      for (const it of items) {
        if (it.kind === 'label') labelPos.set(it.name, pc);
        else insnPos.push(pc++);
      }
      // trampolines only add instructions: once over the limit, stop
      if (pc > BPF_MAXINSNS) throw new BpfTooLongError(pc);
      const offset = (from: number, t: Target): number => {
        if (t === NEXT) return 0;
        const off = labelPos.get(t)! - from - 1;
        if (off < 0) throw new Error(`BPF jump to ${t} goes backwards`);
        return off;
      };
      // find the first branch out of range and give it a trampoline
      let fixed = false;
      let n = 0;
      for (let idx = 0; idx < items.length && !fixed; idx++) {
        const it = items[idx]!;
        if (it.kind === 'label') continue;
        const at = insnPos[n++]!;
        if (it.kind !== 'jcond') continue;
        const farT = offset(at, it.jt) > 255;
        const farF = offset(at, it.jf) > 255;
        if (!farT && !farF) continue;
        // jcond; [ja far_jt]; [ja far_jf]; <label after> -- the near side, if it fell through,
        // now has to skip the trampolines: give it a label after them
        const inserted: Item[] = [];
        const after = it.jt === NEXT || it.jf === NEXT ? `~after#${trampolines}` : undefined;
        if (farT) {
          const name = `~tramp#${trampolines++}`;
          inserted.push({ kind: 'label', name }, { kind: 'ja', target: it.jt });
          it.jt = name;
        }
        if (farF) {
          const name = `~tramp#${trampolines++}`;
          inserted.push({ kind: 'label', name }, { kind: 'ja', target: it.jf });
          it.jf = name;
        }
        if (after) {
          inserted.push({ kind: 'label', name: after });
          if (it.jt === NEXT) it.jt = after;
          if (it.jf === NEXT) it.jf = after;
        }
        items.splice(idx + 1, 0, ...inserted);
        fixed = true;
      }
      if (fixed) continue;
      // everything is in range: emit
      const out: Insn[] = [];
      for (const it of items) {
        const at = out.length;
        if (it.kind === 'plain') out.push({ code: it.code, jt: 0, jf: 0, k: it.k });
        else if (it.kind === 'ja') out.push({ code: OP_JA, jt: 0, jf: 0, k: offset(at, it.target) });
        else if (it.kind === 'jcond') out.push({ code: it.code, jt: offset(at, it.jt), jf: offset(at, it.jf), k: it.k });
      }
      return out;
    }
  }
}
