/**
 * A small classic-BPF interpreter for the seccomp tests, written from the instruction set (not
 * from the compiler's constants, so the two check each other). It runs the instructions the
 * compiler emits -- LD W ABS, JMP JA/JEQ/JGT/JGE/JSET with K, RET K, ALU AND K -- and throws on
 * anything else, on a jump past the end, on a misaligned or out-of-range load, and on falling
 * off the end of the program.
 */

/** struct seccomp_data */
export interface SeccompData {
  nr: number;
  arch: number;
  ip?: bigint;
  /** up to 6 arguments, missing ones are 0 */
  args?: bigint[];
}

const SECCOMP_DATA_SIZE = 64;

/** seccomp_data as the kernel lays it out on a little-endian machine. */
function dataBytes(d: SeccompData): Buffer {
  const b = Buffer.alloc(SECCOMP_DATA_SIZE);
  b.writeInt32LE(d.nr | 0, 0);
  b.writeUInt32LE(d.arch >>> 0, 4);
  b.writeBigUInt64LE(d.ip ?? 0n, 8);
  const args = d.args ?? [];
  if (args.length > 6) throw new Error('seccomp_data has 6 arguments');
  for (let i = 0; i < 6; i++) b.writeBigUInt64LE(BigInt.asUintN(64, args[i] ?? 0n), 16 + 8 * i);
  return b;
}

/** Runs `filter` (struct sock_filter[]) on `d`; returns the filter's u32 return value. */
export function runFilter(filter: Buffer, d: SeccompData): number {
  if (filter.length === 0 || filter.length % 8) throw new Error(`bad program length ${filter.length}`);
  const n = filter.length / 8;
  const data = dataBytes(d);
  let A = 0;
  let pc = 0;
  for (;;) {
    if (pc >= n) throw new Error(`fell off the end of the program (pc ${pc} of ${n})`);
    const o = pc * 8;
    const code = filter.readUInt16LE(o), jt = filter[o + 2]!, jf = filter[o + 3]!, k = filter.readUInt32LE(o + 4);
    const cls = code & 0x07;
    const jump = (off: number) => {
      const to = pc + 1 + off;
      if (to >= n) throw new Error(`jump from ${pc} to ${to} is past the end (${n})`);
      pc = to;
    };
    switch (code) {
      case 0x20: // BPF_LD | BPF_W | BPF_ABS
        if (k % 4 || k + 4 > SECCOMP_DATA_SIZE) throw new Error(`load at ${pc} from bad offset ${k}`);
        A = data.readUInt32LE(k);
        pc++;
        break;
      case 0x54: // BPF_ALU | BPF_AND | BPF_K
        A = (A & k) >>> 0;
        pc++;
        break;
      case 0x05: // BPF_JMP | BPF_JA
        jump(k);
        break;
      case 0x15: // JEQ K
        jump(A === k ? jt : jf);
        break;
      case 0x25: // JGT K
        jump(A > k ? jt : jf);
        break;
      case 0x35: // JGE K
        jump(A >= k ? jt : jf);
        break;
      case 0x45: // JSET K
        jump((A & k) !== 0 ? jt : jf);
        break;
      case 0x06: // BPF_RET | BPF_K
        return k >>> 0;
      default:
        throw new Error(`unsupported instruction 0x${code.toString(16)} (class ${cls}) at ${pc}`);
    }
  }
}
