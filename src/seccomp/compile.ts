/**
 * OCI linux.seccomp -> a classic BPF seccomp filter, the way runc (through libseccomp) builds
 * one:
 *
 *   ld arch; jeq AUDIT_ARCH_a, La; jeq AUDIT_ARCH_b, Lb; ...; ret KILL_PROCESS   (bad arch)
 *   La: ld nr
 *       [x86_64: nr >= 0x40000000 is x32: its own table if SCMP_ARCH_X32 is listed, else bad arch]
 *       syscalls whose rule has no arguments, grouped by action:
 *         jeq n1, Lret; jeq n2, Lret; ...; Lret: ret ACTION
 *       syscalls with argument rules, one block each:
 *         jeq n, 0, Lskip; <rule 1: each argument test jumps to Lrule2 when it fails>; ret ACTION1
 *         Lrule2: ...; ret DEFAULT; Lskip:
 *       ret DEFAULT
 *
 * Semantics: the rules of one syscall are tried in profile order, the first one whose argument
 * tests all hold (AND) decides; a syscall no rule matches gets defaultAction. Rules whose action
 * is the default action are dropped before that (runc and libseccomp do the same), so such a rule
 * never shadows a later one. Argument tests compare the whole
 * 64-bit argument (high word, then low word; unsigned for LT/LE/GE/GT).
 *
 * Argument values are uint64. JSON.parse turns numbers above 2^53 into the nearest double,
 * so besides numbers this accepts a bigint or a string ("18446744073709551615", "0xffff0000")
 * for an exact value; a number that parsed to exactly 2^64 is read as 2^64-1 (that is what
 * 18446744073709551615 becomes).
 */
import { SpecError } from '../errors.js';
import {
  Assembler, BPF_MAXINSNS, BpfTooLongError, NEXT, SECCOMP_DATA_ARCH, SECCOMP_DATA_NR, argHigh, argLow, encode,
  SECCOMP_RET_ALLOW, SECCOMP_RET_DATA, SECCOMP_RET_ERRNO, SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_KILL_THREAD,
  SECCOMP_RET_LOG, SECCOMP_RET_TRACE, SECCOMP_RET_TRAP, SECCOMP_RET_USER_NOTIF,
  SECCOMP_FILTER_FLAG_LOG, SECCOMP_FILTER_FLAG_NEW_LISTENER, SECCOMP_FILTER_FLAG_SPEC_ALLOW,
  SECCOMP_FILTER_FLAG_TSYNC, SECCOMP_FILTER_FLAG_TSYNC_ESRCH, SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
} from './bpf.js';
import { ARCHES, X32_SYSCALL_BIT, type ArchInfo } from './tables.js';

/** What the running kernel supports. */
export interface SeccompKernel {
  /** OCI name of the native arch, e.g. SCMP_ARCH_X86_64 */
  arch: string;
  /** /proc/sys/kernel/seccomp/actions_avail names: kill_process, kill_thread, trap, errno, user_notif, trace, log, allow */
  actionsAvail: Set<string>;
  /** SECCOMP_FILTER_FLAG_* names the kernel has */
  flagsAvail: Set<string>;
}

/** A compiled filter and how to load it. */
export interface SeccompProgram {
  /** struct sock_filter[] */
  filter: Buffer;
  /** seccomp(SECCOMP_SET_MODE_FILTER, flags, ...) */
  flags: number;
  /** some rule is SCMP_ACT_NOTIFY: the filter returns a listener fd (flags has NEW_LISTENER) */
  notify: boolean;
  listenerPath?: string;
  listenerMetadata?: string;
  warnings: string[];
}

const ROOT = 'linux.seccomp';
const EPERM = 1;
const U64_MAX = (1n << 64n) - 1n;

/** OCI action -> the actions_avail name the kernel must have, and the return value. */
const ACTIONS: Record<string, { avail: string; ret: (data: number) => number; takesData?: boolean }> = {
  SCMP_ACT_KILL: { avail: 'kill_thread', ret: () => SECCOMP_RET_KILL_THREAD },
  SCMP_ACT_KILL_THREAD: { avail: 'kill_thread', ret: () => SECCOMP_RET_KILL_THREAD },
  SCMP_ACT_KILL_PROCESS: { avail: 'kill_process', ret: () => SECCOMP_RET_KILL_PROCESS },
  SCMP_ACT_TRAP: { avail: 'trap', ret: () => SECCOMP_RET_TRAP },
  SCMP_ACT_ERRNO: { avail: 'errno', ret: (d) => SECCOMP_RET_ERRNO | d, takesData: true },
  SCMP_ACT_TRACE: { avail: 'trace', ret: (d) => SECCOMP_RET_TRACE | d, takesData: true },
  SCMP_ACT_ALLOW: { avail: 'allow', ret: () => SECCOMP_RET_ALLOW },
  SCMP_ACT_LOG: { avail: 'log', ret: () => SECCOMP_RET_LOG },
  SCMP_ACT_NOTIFY: { avail: 'user_notif', ret: () => SECCOMP_RET_USER_NOTIF },
};

/** linux.seccomp.flags the spec allows, and their bits. */
const FLAGS: Record<string, number> = {
  SECCOMP_FILTER_FLAG_TSYNC: SECCOMP_FILTER_FLAG_TSYNC,
  SECCOMP_FILTER_FLAG_LOG: SECCOMP_FILTER_FLAG_LOG,
  SECCOMP_FILTER_FLAG_SPEC_ALLOW: SECCOMP_FILTER_FLAG_SPEC_ALLOW,
  SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
};

const OPS = new Set(['SCMP_CMP_NE', 'SCMP_CMP_LT', 'SCMP_CMP_LE', 'SCMP_CMP_EQ', 'SCMP_CMP_GE', 'SCMP_CMP_GT', 'SCMP_CMP_MASKED_EQ']);

/** Architectures the OCI spec names that have no syscall table here (a different warning). */
const OCI_ARCHES = new Set(['SCMP_ARCH_X86', 'SCMP_ARCH_X86_64', 'SCMP_ARCH_X32', 'SCMP_ARCH_ARM', 'SCMP_ARCH_AARCH64',
  'SCMP_ARCH_MIPS', 'SCMP_ARCH_MIPS64', 'SCMP_ARCH_MIPS64N32', 'SCMP_ARCH_MIPSEL', 'SCMP_ARCH_MIPSEL64',
  'SCMP_ARCH_MIPSEL64N32', 'SCMP_ARCH_PPC', 'SCMP_ARCH_PPC64', 'SCMP_ARCH_PPC64LE', 'SCMP_ARCH_S390',
  'SCMP_ARCH_S390X', 'SCMP_ARCH_PARISC', 'SCMP_ARCH_PARISC64', 'SCMP_ARCH_RISCV64', 'SCMP_ARCH_LOONGARCH64',
  'SCMP_ARCH_M68K', 'SCMP_ARCH_SH', 'SCMP_ARCH_SHEB']);

/** One argument test of a rule. */
interface Cond {
  index: number;
  op: string;
  value: bigint;
  valueTwo: bigint;
}

/** One syscalls[] entry after validation: its return value and argument tests (all must hold). */
interface Rule {
  ret: number;
  conds: Cond[];
}

// --- validation helpers ----------------------------------------------------------------------

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
/** JSON null counts as absent for optional fields (some generators write null for empty). */
const absent = (v: unknown): v is undefined | null => v === undefined || v === null;

function str(v: unknown, path: string): string {
  if (typeof v !== 'string') throw new SpecError(path, absent(v) ? 'is required' : `must be a string, got ${describe(v)}`);
  return v;
}

function optStr(v: unknown, path: string): string | undefined {
  return absent(v) ? undefined : str(v, path);
}

function arr(v: unknown, path: string): unknown[] {
  if (!Array.isArray(v)) throw new SpecError(path, `must be an array, got ${describe(v)}`);
  return v;
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'object') return 'an object';
  return `${typeof v} ${String(v)}`;
}

/** An errno / trace message: the 16-bit SECCOMP_RET_DATA. */
function retData(v: unknown, path: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0)
    throw new SpecError(path, `must be a non-negative integer, got ${describe(v)}`);
  if (v > SECCOMP_RET_DATA) throw new SpecError(path, `${v} is too large (at most ${SECCOMP_RET_DATA})`);
  return v;
}

/** A uint64 argument value: a number, a bigint, or a decimal / 0x-hex string (for values above 2^53). */
function u64(v: unknown, path: string): bigint {
  let n: bigint;
  if (typeof v === 'bigint') n = v;
  else if (typeof v === 'number') {
    if (!Number.isInteger(v) || v < 0) throw new SpecError(path, `must be an unsigned 64-bit integer, got ${describe(v)}`);
    // 2^64-1 written in JSON parses to the double 2^64
    n = v === 2 ** 64 ? U64_MAX : BigInt(v);
  } else if (typeof v === 'string') {
    if (!/^(0[xX][0-9a-fA-F]+|[0-9]+)$/.test(v)) throw new SpecError(path, `must be an unsigned 64-bit integer, got ${describe(v)}`);
    n = BigInt(v);
  } else throw new SpecError(path, absent(v) ? 'is required' : `must be an unsigned 64-bit integer, got ${describe(v)}`);
  if (n < 0n || n > U64_MAX) throw new SpecError(path, `${n} does not fit in 64 bits`);
  return n;
}

/** An action name and its errnoRet -> the filter's return value; checks the kernel has it. */
function actionRet(name: string, errnoRet: number | undefined, path: string, kernel: SeccompKernel, warnings: string[]): number {
  const a = Object.hasOwn(ACTIONS, name) ? ACTIONS[name] : undefined;
  if (!a) throw new SpecError(path, `unknown seccomp action "${name}"`);
  if (!kernel.actionsAvail.has(a.avail))
    throw new SpecError(path, `seccomp action ${name} is not supported by this kernel (no "${a.avail}" in actions_avail)`);
  if (errnoRet !== undefined && !a.takesData)
    warnings.push(`seccomp: ${path}: errnoRet is only used with SCMP_ACT_ERRNO and SCMP_ACT_TRACE, ignored for ${name}`);
  return a.ret(errnoRet ?? EPERM) >>> 0;
}

// --- the compiler ----------------------------------------------------------------------------

export function compileSeccomp(profile: unknown, kernel: SeccompKernel): SeccompProgram {
  if (!isObject(profile)) throw new SpecError(ROOT, absent(profile) ? 'is required' : `must be an object, got ${describe(profile)}`);
  const warnings: string[] = [];
  const warn = (m: string) => { if (!warnings.includes(m)) warnings.push(m); };

  // default action
  const defaultName = str(profile.defaultAction, `${ROOT}.defaultAction`);
  if (defaultName === 'SCMP_ACT_NOTIFY')
    throw new SpecError(`${ROOT}.defaultAction`, 'SCMP_ACT_NOTIFY cannot be the default action');
  const defaultErrno = absent(profile.defaultErrnoRet) ? undefined : retData(profile.defaultErrnoRet, `${ROOT}.defaultErrnoRet`);
  const defaultRet = actionRet(defaultName, defaultErrno, `${ROOT}.defaultAction`, kernel, warnings);
  // what a syscall from an architecture the filter does not know gets
  const badArchRet = kernel.actionsAvail.has('kill_process') ? SECCOMP_RET_KILL_PROCESS : SECCOMP_RET_KILL_THREAD;

  // architectures: the native one first, then the profile's, each once
  const archNames: string[] = [];
  const addArch = (name: string, path: string) => {
    if (archNames.includes(name)) return;
    if (Object.hasOwn(ARCHES, name)) archNames.push(name);
    else if (OCI_ARCHES.has(name)) warn(`seccomp: architecture ${name} is not supported (no syscall table), skipped`);
    else warn(`seccomp: ${path}: unknown architecture "${name}", skipped`);
  };
  if (!Object.hasOwn(ARCHES, kernel.arch))
    throw new SpecError(ROOT, `no seccomp syscall table for the native architecture ${kernel.arch}`);
  archNames.push(kernel.arch);
  if (!absent(profile.architectures)) {
    arr(profile.architectures, `${ROOT}.architectures`).forEach((a, i) => {
      const path = `${ROOT}.architectures[${i}]`;
      addArch(str(a, path), path);
    });
  }
  const arches = archNames.map((name) => ({ name, info: ARCHES[name] as ArchInfo }));

  // flags
  let flags = 0;
  if (!absent(profile.flags)) {
    arr(profile.flags, `${ROOT}.flags`).forEach((f, i) => {
      const path = `${ROOT}.flags[${i}]`;
      const name = str(f, path);
      const bit = Object.hasOwn(FLAGS, name) ? FLAGS[name] : undefined;
      if (bit === undefined) throw new SpecError(path, `unknown seccomp flag "${name}"`);
      if (!kernel.flagsAvail.has(name)) throw new SpecError(path, `the kernel lacks seccomp flag ${name}`);
      flags |= bit;
    });
  }
  const listenerPath = optStr(profile.listenerPath, `${ROOT}.listenerPath`);
  const listenerMetadata = optStr(profile.listenerMetadata, `${ROOT}.listenerMetadata`);

  // syscall rules: per arch, syscall number -> its rules in profile order
  const perArch = arches.map(() => new Map<number, Rule[]>());
  let notify = false;
  if (!absent(profile.syscalls)) {
    arr(profile.syscalls, `${ROOT}.syscalls`).forEach((entry, i) => {
      const path = `${ROOT}.syscalls[${i}]`;
      if (!isObject(entry)) throw new SpecError(path, `must be an object, got ${describe(entry)}`);
      const names = arr(entry.names, `${path}.names`).map((n, j) => str(n, `${path}.names[${j}]`));
      const actionName = str(entry.action, `${path}.action`);
      const errnoRet = absent(entry.errnoRet) ? undefined : retData(entry.errnoRet, `${path}.errnoRet`);
      const ret = actionRet(actionName, errnoRet, `${path}.action`, kernel, warnings);
      const conds = absent(entry.args) ? [] : arr(entry.args, `${path}.args`).map((a, j) => parseCond(a, `${path}.args[${j}]`));
      if (actionName === 'SCMP_ACT_NOTIFY') {
        if (!listenerPath) throw new SpecError(`${ROOT}.listenerPath`, `is required by SCMP_ACT_NOTIFY (${path}.action)`);
        if (ret !== defaultRet) notify = true;
      }
      if (ret === defaultRet) return; // a no-op rule: libseccomp drops these too
      for (const name of names) {
        const missing: string[] = [];
        arches.forEach(({ name: arch, info }, k) => {
          if (!Object.hasOwn(info.table, name)) { missing.push(arch); return; }
          const nr = info.table[name]!;
          const rules = perArch[k]!.get(nr);
          if (rules) rules.push({ ret, conds });
          else perArch[k]!.set(nr, [{ ret, conds }]);
        });
        // a name missing on some of the arches is normal (i386-only calls, arch_prctl, ...) and
        // skipped there silently, as libseccomp does; one that no arch knows is worth a warning
        if (missing.length === arches.length)
          warn(`seccomp: syscall ${name} unknown on ${arches.length === 1 ? arches[0]!.name : 'all architectures'}, skipped`);
      }
    });
  }

  if (notify) {
    if (!kernel.flagsAvail.has('SECCOMP_FILTER_FLAG_NEW_LISTENER'))
      throw new SpecError(ROOT, 'SCMP_ACT_NOTIFY needs SECCOMP_FILTER_FLAG_NEW_LISTENER, which the kernel lacks');
    flags |= SECCOMP_FILTER_FLAG_NEW_LISTENER;
    // the kernel refuses TSYNC with NEW_LISTENER unless TSYNC_ESRCH says how to report failure
    if (flags & SECCOMP_FILTER_FLAG_TSYNC) {
      if (!kernel.flagsAvail.has('SECCOMP_FILTER_FLAG_TSYNC_ESRCH'))
        throw new SpecError(`${ROOT}.flags`, 'SECCOMP_FILTER_FLAG_TSYNC with SCMP_ACT_NOTIFY needs SECCOMP_FILTER_FLAG_TSYNC_ESRCH, which the kernel lacks');
      flags |= SECCOMP_FILTER_FLAG_TSYNC_ESRCH;
    }
  } else if (flags & SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV) {
    // the kernel refuses it without a listener
    flags &= ~SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
    warn('seccomp: SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV only applies with SCMP_ACT_NOTIFY rules, ignored');
  }

  const asm = new Assembler();
  emitFilter(asm, arches.map((a, k) => ({ ...a, rules: perArch[k]! })), defaultRet, badArchRet);
  let insns;
  try {
    insns = asm.assemble();
  } catch (e) {
    if (e instanceof BpfTooLongError)
      throw new SpecError(ROOT, `the seccomp filter needs at least ${e.length} BPF instructions, more than the kernel's limit of ${BPF_MAXINSNS} (too many syscall rules)`);
    throw e;
  }
  return { filter: encode(insns), flags, notify, listenerPath, listenerMetadata, warnings };
}

function parseCond(a: unknown, path: string): Cond {
  if (!isObject(a)) throw new SpecError(path, `must be an object, got ${describe(a)}`);
  const index = a.index;
  if (typeof index !== 'number' || !Number.isInteger(index) || index < 0 || index > 5)
    throw new SpecError(`${path}.index`, absent(index) ? 'is required' : `must be an argument index 0..5, got ${describe(index)}`);
  const op = str(a.op, `${path}.op`);
  if (!OPS.has(op)) throw new SpecError(`${path}.op`, `unknown seccomp operator "${op}"`);
  const value = u64(a.value, `${path}.value`);
  const valueTwo = absent(a.valueTwo) ? 0n : u64(a.valueTwo, `${path}.valueTwo`);
  return { index, op, value, valueTwo };
}

// --- code generation -------------------------------------------------------------------------

interface ArchRules {
  name: string;
  info: ArchInfo;
  rules: Map<number, Rule[]>;
}

/** How many `jeq nr` share one `ret`: keeps every jump short (no trampolines). */
const GROUP_CHUNK = 200;

function emitFilter(asm: Assembler, arches: ArchRules[], defaultRet: number, badArchRet: number): void {
  // arches sharing an AUDIT_ARCH (x86_64 and x32) share one entry, split on the x32 bit
  const byAudit = new Map<number, { native?: ArchRules; x32?: ArchRules }>();
  for (const a of arches) {
    const g = byAudit.get(a.info.audit) ?? {};
    if (a.info.x32) g.x32 = a; else g.native = a;
    byAudit.set(a.info.audit, g);
  }
  const entries = [...byAudit].map(([audit, g]) => ({ audit, g, label: asm.newLabel('arch') }));
  asm.ldAbs(SECCOMP_DATA_ARCH);
  for (const e of entries) asm.jeq(e.audit, e.label);
  asm.ret(badArchRet);
  for (const { g, label } of entries) {
    asm.label(label).ldAbs(SECCOMP_DATA_NR);
    if (g.native && g.x32) {
      const x32 = asm.newLabel('x32');
      asm.jge(X32_SYSCALL_BIT, x32);
      emitArch(asm, g.native.rules, defaultRet);
      asm.label(x32);
      emitArch(asm, g.x32.rules, defaultRet);
    } else if (g.x32) {
      // x32 only: x86_64 numbers are a bad arch
      const body = asm.newLabel('x32');
      asm.jge(X32_SYSCALL_BIT, body).ret(badArchRet).label(body);
      emitArch(asm, g.x32.rules, defaultRet);
    } else {
      if (g.native!.name === 'SCMP_ARCH_X86_64') {
        // x86_64 without x32: x32 numbers are a bad arch
        const body = asm.newLabel('x86_64');
        asm.jge(X32_SYSCALL_BIT, NEXT, body).ret(badArchRet).label(body);
      }
      emitArch(asm, g.native!.rules, defaultRet);
    }
  }
}

/** The body for one syscall table; the accumulator holds seccomp_data.nr on entry. Ends in a ret. */
function emitArch(asm: Assembler, table: Map<number, Rule[]>, defaultRet: number): void {
  const unconditional = new Map<number, number[]>(); // ret -> syscall numbers
  const conditional: [number, Rule[]][] = [];
  for (const [nr, rules] of [...table].sort((a, b) => a[0] - b[0])) {
    // rules after one without argument tests can never be reached
    const cut = rules.findIndex((r) => r.conds.length === 0);
    const live = cut < 0 ? rules : rules.slice(0, cut + 1);
    if (live.length === 1 && live[0]!.conds.length === 0) {
      const nrs = unconditional.get(live[0]!.ret) ?? [];
      nrs.push(nr);
      unconditional.set(live[0]!.ret, nrs);
    } else conditional.push([nr, live]);
  }
  for (const [ret, nrs] of unconditional) {
    for (let i = 0; i < nrs.length; i += GROUP_CHUNK) {
      const chunk = nrs.slice(i, i + GROUP_CHUNK);
      const hit = asm.newLabel('hit'), miss = asm.newLabel('miss');
      chunk.forEach((nr, j) => asm.jeq(nr, hit, j === chunk.length - 1 ? miss : NEXT));
      asm.label(hit).ret(ret).label(miss);
    }
  }
  for (const [nr, rules] of conditional) {
    const skip = asm.newLabel('skip');
    asm.jeq(nr, NEXT, skip);
    for (const rule of rules) {
      const fail = asm.newLabel('fail');
      for (const c of rule.conds) emitCond(asm, c, fail);
      asm.ret(rule.ret).label(fail);
    }
    if (rules.at(-1)!.conds.length) asm.ret(defaultRet);
    asm.label(skip);
  }
  asm.ret(defaultRet);
}

const hi = (v: bigint): number => Number(v >> 32n);
const lo = (v: bigint): number => Number(v & 0xffffffffn);

/** Falls through when the test holds, jumps to `fail` when not. Clobbers the accumulator. */
function emitCond(asm: Assembler, c: Cond, fail: string): void {
  const pass = asm.newLabel('pass');
  const H = argHigh(c.index), L = argLow(c.index);
  const v = c.value;
  switch (c.op) {
    case 'SCMP_CMP_EQ':
      asm.ldAbs(H).jeq(hi(v), NEXT, fail).ldAbs(L).jeq(lo(v), NEXT, fail);
      break;
    case 'SCMP_CMP_NE':
      asm.ldAbs(H).jeq(hi(v), NEXT, pass).ldAbs(L).jeq(lo(v), fail, NEXT);
      break;
    case 'SCMP_CMP_GT': // hi > vhi, or hi == vhi and lo > vlo
      asm.ldAbs(H).jgt(hi(v), pass).jeq(hi(v), NEXT, fail).ldAbs(L).jgt(lo(v), NEXT, fail);
      break;
    case 'SCMP_CMP_GE': // hi > vhi, or hi == vhi and lo >= vlo
      asm.ldAbs(H).jgt(hi(v), pass).jeq(hi(v), NEXT, fail).ldAbs(L).jge(lo(v), NEXT, fail);
      break;
    case 'SCMP_CMP_LT': // hi < vhi, or hi == vhi and lo < vlo
      asm.ldAbs(H).jgt(hi(v), fail).jeq(hi(v), NEXT, pass).ldAbs(L).jge(lo(v), fail, NEXT);
      break;
    case 'SCMP_CMP_LE': // hi < vhi, or hi == vhi and lo <= vlo
      asm.ldAbs(H).jgt(hi(v), fail).jeq(hi(v), NEXT, pass).ldAbs(L).jgt(lo(v), fail, NEXT);
      break;
    case 'SCMP_CMP_MASKED_EQ': { // (arg & value) == valueTwo
      const d = c.valueTwo;
      asm.ldAbs(H).and(hi(v)).jeq(hi(d), NEXT, fail).ldAbs(L).and(lo(v)).jeq(lo(d), NEXT, fail);
      break;
    }
    default:
      throw new Error(`unreachable: operator ${c.op}`);
  }
  asm.label(pass);
}
