/**
 * The seccomp compiler: OCI profiles compiled to classic BPF and run in a small interpreter
 * (bpf-interp.ts) against seccomp_data records, checking the filter's verdicts.
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { compileSeccomp, hostSeccompKernel, type SeccompKernel, type SeccompProgram } from '../../src/seccomp/index.js';
import { Assembler, BPF_MAXINSNS, NEXT, decode, encode, OP_JA } from '../../src/seccomp/bpf.js';
import { SYSCALLS_AARCH64, SYSCALLS_X32, SYSCALLS_X86, SYSCALLS_X86_64 } from '../../src/seccomp/tables.js';
import { SpecError } from '../../src/errors.js';
import { runFilter } from './bpf-interp.js';

// written out here rather than imported, so a wrong constant in the compiler shows
const ARCH_X86_64 = 0xC000003E, ARCH_I386 = 0x40000003, ARCH_AARCH64 = 0xC00000B7;
const X32 = 0x40000000;
const KILL_PROCESS = 0x80000000, KILL_THREAD = 0, TRAP = 0x00030000, ERRNO = 0x00050000;
const USER_NOTIF = 0x7fc00000, TRACE = 0x7ff00000, LOG = 0x7ffc0000, ALLOW = 0x7fff0000;
const EPERM = ERRNO | 1;
const U64_MAX = (1n << 64n) - 1n;

const ALL_ACTIONS = ['kill_process', 'kill_thread', 'trap', 'errno', 'user_notif', 'trace', 'log', 'allow'];
const ALL_FLAGS = ['SECCOMP_FILTER_FLAG_TSYNC', 'SECCOMP_FILTER_FLAG_LOG', 'SECCOMP_FILTER_FLAG_SPEC_ALLOW',
  'SECCOMP_FILTER_FLAG_NEW_LISTENER', 'SECCOMP_FILTER_FLAG_TSYNC_ESRCH', 'SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV'];

/** An x86_64 kernel with everything, minus `without` (action or flag names). */
function kernel(without: string[] = [], arch = 'SCMP_ARCH_X86_64'): SeccompKernel {
  return {
    arch,
    actionsAvail: new Set(ALL_ACTIONS.filter((a) => !without.includes(a))),
    flagsAvail: new Set(ALL_FLAGS.filter((f) => !without.includes(f))),
  };
}

const compile = (profile: unknown, k = kernel()): SeccompProgram => compileSeccomp(profile, k);

/** The filter's verdict for syscall `nr` (a name is looked up in the x86_64 table). */
function run(p: SeccompProgram, nr: number | string, args: (bigint | number)[] = [], arch = ARCH_X86_64): number {
  const n = typeof nr === 'string' ? SYSCALLS_X86_64[nr]! : nr;
  assert.ok(n !== undefined, `syscall ${nr} in the x86_64 table`);
  return runFilter(p.filter, { nr: n, arch, args: args.map((a) => BigInt(a)) });
}

/** Asserts `fn` throws a one-line SpecError naming `path` whose message matches `re`. */
function specError(fn: () => unknown, path: string, re?: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof SpecError, `a SpecError, got ${String(e)}`);
    assert.equal(e.jsonPath, path, e.message);
    if (re) assert.match(e.message, re);
    assert.ok(!e.message.includes('\n'), 'one line');
    return true;
  });
}

const allowProfile = (syscalls: unknown[], extra: Record<string, unknown> = {}) =>
  ({ defaultAction: 'SCMP_ACT_ALLOW', syscalls, ...extra });

// --- actions --------------------------------------------------------------------------------

test('every action returns its seccomp value', () => {
  const cases: [string, number | undefined, number][] = [
    ['SCMP_ACT_KILL', undefined, KILL_THREAD],
    ['SCMP_ACT_KILL_THREAD', undefined, KILL_THREAD],
    ['SCMP_ACT_KILL_PROCESS', undefined, KILL_PROCESS],
    ['SCMP_ACT_TRAP', undefined, TRAP],
    ['SCMP_ACT_ERRNO', undefined, ERRNO | 1],
    ['SCMP_ACT_ERRNO', 13, ERRNO | 13],
    ['SCMP_ACT_ERRNO', 0, ERRNO | 0],
    ['SCMP_ACT_TRACE', undefined, TRACE | 1],
    ['SCMP_ACT_TRACE', 1234, TRACE | 1234],
    ['SCMP_ACT_LOG', undefined, LOG],
    ['SCMP_ACT_NOTIFY', undefined, USER_NOTIF],
  ];
  for (const [action, errnoRet, want] of cases) {
    const p = compile(allowProfile([{ names: ['getpid'], action, errnoRet }], { listenerPath: '/run/l.sock' }));
    assert.equal(run(p, 'getpid') >>> 0, want >>> 0, `${action} ${errnoRet}`);
    assert.equal(run(p, 'getppid'), ALLOW, `${action}: other syscalls get the default`);
  }
  const p = compile({ defaultAction: 'SCMP_ACT_KILL_PROCESS', syscalls: [{ names: ['getpid'], action: 'SCMP_ACT_ALLOW' }] });
  assert.equal(run(p, 'getpid'), ALLOW);
  assert.equal(run(p, 'getppid'), KILL_PROCESS);
});

test('defaultErrnoRet sets the default action\'s errno (EPERM without it)', () => {
  assert.equal(run(compile({ defaultAction: 'SCMP_ACT_ERRNO', defaultErrnoRet: 38 }), 'read'), ERRNO | 38);
  assert.equal(run(compile({ defaultAction: 'SCMP_ACT_ERRNO' }), 'read'), ERRNO | 1);
  assert.equal(run(compile({ defaultAction: 'SCMP_ACT_TRACE', defaultErrnoRet: 7 }), 'read'), TRACE | 7);
  // a rule's errno is its own errnoRet or EPERM, not the default's
  const p = compile({ defaultAction: 'SCMP_ACT_ERRNO', defaultErrnoRet: 38, syscalls: [{ names: ['mount'], action: 'SCMP_ACT_ERRNO' }] });
  assert.equal(run(p, 'mount'), EPERM);
  assert.equal(run(p, 'read'), ERRNO | 38);
  specError(() => compile({ defaultAction: 'SCMP_ACT_ERRNO', defaultErrnoRet: 70000 }), 'linux.seccomp.defaultErrnoRet', /too large/);
  specError(() => compile({ defaultAction: 'SCMP_ACT_ERRNO', defaultErrnoRet: -1 }), 'linux.seccomp.defaultErrnoRet');
  specError(() => compile({ defaultAction: 'SCMP_ACT_ERRNO', defaultErrnoRet: '1' }), 'linux.seccomp.defaultErrnoRet');
});

test('rules with the default action are dropped', () => {
  const empty = compile({ defaultAction: 'SCMP_ACT_ERRNO' });
  const same = compile({ defaultAction: 'SCMP_ACT_ERRNO', syscalls: [
    { names: ['mount', 'umount2'], action: 'SCMP_ACT_ERRNO' },
    { names: ['ptrace'], action: 'SCMP_ACT_ERRNO', errnoRet: 1, args: [{ index: 0, value: 1, op: 'SCMP_CMP_EQ' }] },
  ] });
  assert.deepEqual(same.filter, empty.filter);
  // a different errno is a different action
  const other = compile({ defaultAction: 'SCMP_ACT_ERRNO', syscalls: [{ names: ['mount'], action: 'SCMP_ACT_ERRNO', errnoRet: 2 }] });
  assert.equal(run(other, 'mount'), ERRNO | 2);
});

test('an action the kernel lacks is an error', () => {
  specError(() => compile(allowProfile([{ names: ['read'], action: 'SCMP_ACT_LOG' }]), kernel(['log'])),
    'linux.seccomp.syscalls[0].action', /SCMP_ACT_LOG is not supported by this kernel/);
  specError(() => compile({ defaultAction: 'SCMP_ACT_KILL_PROCESS' }, kernel(['kill_process'])), 'linux.seccomp.defaultAction');
  specError(() => compile(allowProfile([{ names: ['read'], action: 'SCMP_ACT_NOTIFY' }], { listenerPath: '/l' }), kernel(['user_notif'])),
    'linux.seccomp.syscalls[0].action');
});

test('unknown actions are errors', () => {
  specError(() => compile({ defaultAction: 'SCMP_ACT_FOO' }), 'linux.seccomp.defaultAction', /unknown seccomp action "SCMP_ACT_FOO"/);
  specError(() => compile(allowProfile([{ names: ['read'], action: 'SCMP_ACT_ERRNO' }, { names: ['read'], action: 'allow' }])),
    'linux.seccomp.syscalls[1].action', /unknown seccomp action/);
  specError(() => compile({}), 'linux.seccomp.defaultAction', /is required/);
  // names that are Object.prototype properties are not actions, flags or arches
  specError(() => compile({ defaultAction: 'constructor' }), 'linux.seccomp.defaultAction', /unknown seccomp action/);
  specError(() => compile({ defaultAction: 'SCMP_ACT_ALLOW', flags: ['toString'] }), 'linux.seccomp.flags[0]', /unknown seccomp flag/);
  assert.equal(compile({ defaultAction: 'SCMP_ACT_ALLOW', architectures: ['constructor'] }).warnings.length, 1);
  assert.equal(compile(allowProfile([{ names: ['constructor', 'hasOwnProperty'], action: 'SCMP_ACT_ERRNO' }])).warnings.length, 2);
});

// --- argument tests ---------------------------------------------------------------------------

/** What the filter should decide: the OCI operators on uint64. */
function holds(op: string, arg: bigint, value: bigint, valueTwo: bigint): boolean {
  switch (op) {
    case 'SCMP_CMP_NE': return arg !== value;
    case 'SCMP_CMP_LT': return arg < value;
    case 'SCMP_CMP_LE': return arg <= value;
    case 'SCMP_CMP_EQ': return arg === value;
    case 'SCMP_CMP_GE': return arg >= value;
    case 'SCMP_CMP_GT': return arg > value;
    case 'SCMP_CMP_MASKED_EQ': return (arg & value) === valueTwo;
  }
  throw new Error(op);
}

const BOUNDARY = [0n, 1n, 2n, 0x7fffffffn, 0x80000000n, 0xfffffffen, 0xffffffffn, 0x1_0000_0000n, 0x1_0000_0001n,
  0x1_ffff_ffffn, 0x2_0000_0000n, 0xffff_ffff_0000_0000n, (1n << 63n) - 1n, 1n << 63n, (1n << 63n) + 1n, U64_MAX - 1n, U64_MAX];

/** Each probe value and its neighbours, clipped to uint64. */
function around(values: bigint[]): bigint[] {
  const s = new Set<bigint>();
  for (const v of values) for (const d of [-1n, 0n, 1n]) if (v + d >= 0n && v + d <= U64_MAX) s.add(v + d);
  return [...s];
}

test('every operator compares the whole 64-bit argument, around the boundaries', () => {
  const probes = around(BOUNDARY);
  for (const op of ['SCMP_CMP_NE', 'SCMP_CMP_LT', 'SCMP_CMP_LE', 'SCMP_CMP_EQ', 'SCMP_CMP_GE', 'SCMP_CMP_GT']) {
    for (const value of BOUNDARY) {
      // value as a string: exact above 2^53
      const p = compile(allowProfile([{ names: ['ioctl'], action: 'SCMP_ACT_ERRNO', errnoRet: 9,
        args: [{ index: 2, value: value.toString(), op }] }]));
      for (const arg of probes) {
        const want = holds(op, arg, value, 0n) ? ERRNO | 9 : ALLOW;
        assert.equal(run(p, 'ioctl', [0, 0, arg]), want, `${op} ${value.toString(16)}: arg 0x${arg.toString(16)}`);
      }
    }
  }
});

test('SCMP_CMP_MASKED_EQ: (arg & value) == valueTwo, on both words', () => {
  const masks: [bigint, bigint][] = [
    [0xffn, 0x12n], [0x7E020000n, 0n], [0xffff_ffff_0000_0000n, 0x1_0000_0000n], [U64_MAX, U64_MAX],
    [0x8000_0000_0000_0001n, 0x8000_0000_0000_0000n], [0n, 0n], [0xf0n, 0x0fn] /* datum outside mask: never */,
  ];
  const probes = around([...BOUNDARY, 0x12n, 0x112n, 0x1_0000_0012n, 0x10000000n, 0x8000_0000_0000_0000n]);
  for (const [mask, datum] of masks) {
    const p = compile(allowProfile([{ names: ['clone'], action: 'SCMP_ACT_ERRNO',
      args: [{ index: 0, value: mask.toString(), valueTwo: datum.toString(), op: 'SCMP_CMP_MASKED_EQ' }] }]));
    for (const arg of probes) {
      const want = holds('SCMP_CMP_MASKED_EQ', arg, mask, datum) ? EPERM : ALLOW;
      assert.equal(run(p, 'clone', [arg]), want, `mask ${mask.toString(16)} == ${datum.toString(16)}: arg ${arg.toString(16)}`);
    }
  }
});

test('argument values: numbers, bigints, strings; 2^64-1 survives JSON.parse', () => {
  const at = (value: unknown) => compile(allowProfile([{ names: ['read'], action: 'SCMP_ACT_ERRNO', args: [{ index: 0, value, op: 'SCMP_CMP_EQ' }] }]));
  // 18446744073709551615 in JSON parses to the double 2^64
  const parsed = JSON.parse('{"v": 18446744073709551615}').v;
  for (const v of [parsed, U64_MAX, '18446744073709551615', '0xffffffffffffffff', '0xFFFFFFFFFFFFFFFF']) {
    const p = at(v);
    assert.equal(run(p, 'read', [U64_MAX]), EPERM, String(v));
    assert.equal(run(p, 'read', [U64_MAX - 1n]), ALLOW, String(v));
    assert.equal(run(p, 'read', [0xffffffffn]), ALLOW, String(v));
  }
  assert.equal(run(at(0x1_0000_0000), 'read', [0x1_0000_0000n]), EPERM);
  assert.equal(run(at(0x1_0000_0000), 'read', [0n]), ALLOW);
  assert.equal(run(at('4294967296'), 'read', [0x1_0000_0000n]), EPERM);
  for (const bad of [-1, 1.5, '18446744073709551616', '-1', '12abc', '', true, {}, [1]])
    specError(() => at(bad), 'linux.seccomp.syscalls[0].args[0].value');
  specError(() => compile(allowProfile([{ names: ['read'], action: 'SCMP_ACT_ERRNO', args: [{ index: 0, op: 'SCMP_CMP_EQ' }] }])),
    'linux.seccomp.syscalls[0].args[0].value', /is required/);
  specError(() => compile(allowProfile([{ names: ['read'], action: 'SCMP_ACT_ERRNO',
    args: [{ index: 0, value: 1, valueTwo: -3, op: 'SCMP_CMP_MASKED_EQ' }] }])), 'linux.seccomp.syscalls[0].args[0].valueTwo');
});

test('bad operators and argument indexes are errors', () => {
  const withArg = (arg: unknown) => () => compile(allowProfile([
    { names: ['write'], action: 'SCMP_ACT_ERRNO' },
    { names: ['read'], action: 'SCMP_ACT_ERRNO', args: [arg] },
  ]));
  specError(withArg({ index: 0, value: 1, op: 'SCMP_CMP_FOO' }), 'linux.seccomp.syscalls[1].args[0].op', /unknown seccomp operator "SCMP_CMP_FOO"/);
  specError(withArg({ index: 0, value: 1 }), 'linux.seccomp.syscalls[1].args[0].op', /is required/);
  specError(withArg({ index: 6, value: 1, op: 'SCMP_CMP_EQ' }), 'linux.seccomp.syscalls[1].args[0].index', /0\.\.5/);
  specError(withArg({ index: -1, value: 1, op: 'SCMP_CMP_EQ' }), 'linux.seccomp.syscalls[1].args[0].index');
  specError(withArg({ index: '0', value: 1, op: 'SCMP_CMP_EQ' }), 'linux.seccomp.syscalls[1].args[0].index');
  specError(withArg({ value: 1, op: 'SCMP_CMP_EQ' }), 'linux.seccomp.syscalls[1].args[0].index', /is required/);
  specError(withArg('x'), 'linux.seccomp.syscalls[1].args[0]', /must be an object/);
  // every index reads its own argument
  for (let i = 0; i < 6; i++) {
    const p = compile(allowProfile([{ names: ['read'], action: 'SCMP_ACT_ERRNO', args: [{ index: i, value: 77, op: 'SCMP_CMP_EQ' }] }]));
    const args = [0, 0, 0, 0, 0, 0];
    assert.equal(run(p, 'read', args), ALLOW);
    args[i] = 77;
    assert.equal(run(p, 'read', args), EPERM, `arg ${i}`);
  }
});

test('several args in one rule are ANDed; several rules for a syscall are ORed, first match wins', () => {
  const p = compile(allowProfile([
    { names: ['mmap'], action: 'SCMP_ACT_ERRNO', errnoRet: 11, args: [
      { index: 0, value: 1, op: 'SCMP_CMP_EQ' }, { index: 1, value: 5, op: 'SCMP_CMP_GT' }, { index: 2, value: 0x4, valueTwo: 0x4, op: 'SCMP_CMP_MASKED_EQ' }] },
    { names: ['munmap', 'mmap'], action: 'SCMP_ACT_ERRNO', errnoRet: 22, args: [{ index: 0, value: 1, op: 'SCMP_CMP_GE' }] },
    { names: ['mmap'], action: 'SCMP_ACT_ERRNO', errnoRet: 33, args: [{ index: 1, value: 0x1_0000_0000, op: 'SCMP_CMP_EQ' }] },
  ]));
  assert.equal(run(p, 'mmap', [1, 6, 4]), ERRNO | 11);
  assert.equal(run(p, 'mmap', [1, 6, 0xff]), ERRNO | 11);
  assert.equal(run(p, 'mmap', [1, 5, 4]), ERRNO | 22, 'arg1 not > 5: second rule');
  assert.equal(run(p, 'mmap', [1, 6, 3]), ERRNO | 22, 'bit 2 clear: second rule');
  assert.equal(run(p, 'mmap', [7, 0x1_0000_0000n]), ERRNO | 22, 'second rule before the third');
  assert.equal(run(p, 'mmap', [0, 0x1_0000_0000n]), ERRNO | 33);
  assert.equal(run(p, 'mmap', [0, 6, 4]), ALLOW, 'no rule');
  assert.equal(run(p, 'munmap', [2]), ERRNO | 22);
  assert.equal(run(p, 'munmap', [0]), ALLOW);

  // a rule without args ends the list: it always matches
  const q = compile(allowProfile([
    { names: ['read'], action: 'SCMP_ACT_ERRNO', errnoRet: 1, args: [{ index: 0, value: 0, op: 'SCMP_CMP_EQ' }] },
    { names: ['read'], action: 'SCMP_ACT_ERRNO', errnoRet: 2 },
    { names: ['read'], action: 'SCMP_ACT_ERRNO', errnoRet: 3, args: [{ index: 0, value: 5, op: 'SCMP_CMP_EQ' }] },
  ]));
  assert.equal(run(q, 'read', [0]), ERRNO | 1);
  assert.equal(run(q, 'read', [5]), ERRNO | 2);
  assert.equal(run(q, 'read', [9]), ERRNO | 2);
  assert.equal(run(q, 'write', [0]), ALLOW);
});

// --- architectures ----------------------------------------------------------------------------

test('a syscall from an architecture not in the profile kills the process', () => {
  const p = compile(allowProfile([{ names: ['read'], action: 'SCMP_ACT_ERRNO' }], { architectures: ['SCMP_ARCH_X86_64'] }));
  assert.equal(run(p, 0, [], ARCH_X86_64), EPERM);
  assert.equal(run(p, 0, [], ARCH_I386), KILL_PROCESS);
  assert.equal(run(p, 63, [], ARCH_AARCH64), KILL_PROCESS);
  assert.equal(run(p, 0, [], 0x12345678), KILL_PROCESS);
  // without kill_process: kill the thread
  const q = compile(allowProfile([]), kernel(['kill_process']));
  assert.equal(run(q, 0, [], ARCH_I386), KILL_THREAD);
  // the native arch is always in, with no architectures at all
  const r = compile({ defaultAction: 'SCMP_ACT_ALLOW' });
  assert.equal(run(r, 0), ALLOW);
  assert.equal(run(r, 0, [], ARCH_I386), KILL_PROCESS);
  // the first instruction loads seccomp_data.arch
  assert.deepEqual([...r.filter.subarray(0, 8)], [0x20, 0, 0, 0, 4, 0, 0, 0]);
});

test('i386 syscalls are matched by their own numbers under AUDIT_ARCH_I386', () => {
  const p = compile({ defaultAction: 'SCMP_ACT_ERRNO', architectures: ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86'],
    syscalls: [{ names: ['read', 'socketcall', '_llseek'], action: 'SCMP_ACT_ALLOW' }] });
  assert.deepEqual(p.warnings, [], 'socketcall and _llseek exist on i386');
  assert.equal(SYSCALLS_X86.read, 3);
  assert.equal(run(p, SYSCALLS_X86.read!, [], ARCH_I386), ALLOW);
  assert.equal(run(p, SYSCALLS_X86.socketcall!, [], ARCH_I386), ALLOW);
  assert.equal(run(p, SYSCALLS_X86._llseek!, [], ARCH_I386), ALLOW);
  assert.equal(run(p, SYSCALLS_X86.close!, [], ARCH_I386), EPERM);
  // the same numbers on x86_64 are other syscalls (3 is close there, 102 getuid)
  assert.equal(run(p, 3, [], ARCH_X86_64), EPERM);
  assert.equal(run(p, SYSCALLS_X86.socketcall!, [], ARCH_X86_64), EPERM);
  assert.equal(run(p, 'read', [], ARCH_X86_64), ALLOW);
});

test('x32 syscalls on x86_64: bad arch unless SCMP_ARCH_X32 is listed, then the x32 table', () => {
  const rules = [{ names: ['read', 'rt_sigaction'], action: 'SCMP_ACT_ALLOW' }];
  const no = compile({ defaultAction: 'SCMP_ACT_ERRNO', architectures: ['SCMP_ARCH_X86_64'], syscalls: rules });
  assert.equal(run(no, 'read'), ALLOW);
  assert.equal(run(no, X32 | 0), KILL_PROCESS, 'x32 read');
  assert.equal(run(no, X32 | 1), KILL_PROCESS, 'x32 write');
  assert.equal(run(no, 0xffffffff), KILL_PROCESS);

  const yes = compile({ defaultAction: 'SCMP_ACT_ERRNO', architectures: ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X32'], syscalls: rules });
  assert.equal(SYSCALLS_X32.read, X32 | 0);
  assert.equal(SYSCALLS_X32.rt_sigaction, X32 | 512, 'x32 rt_sigaction is one of the 512+ compat calls');
  assert.equal(run(yes, SYSCALLS_X32.read!), ALLOW);
  assert.equal(run(yes, SYSCALLS_X32.rt_sigaction!), ALLOW);
  assert.equal(run(yes, X32 | SYSCALLS_X86_64.rt_sigaction!), EPERM, 'the x86_64 rt_sigaction number is not x32\'s');
  assert.equal(run(yes, SYSCALLS_X32.write!), EPERM);
  assert.equal(run(yes, 'read'), ALLOW, 'x86_64 read');
  assert.equal(run(yes, 'rt_sigaction'), ALLOW, 'x86_64 rt_sigaction');
  assert.equal(run(yes, 'write'), EPERM);

  // x32 without x86_64 (on a non-x86 host): x86_64 numbers are the bad arch
  const only = compile({ defaultAction: 'SCMP_ACT_ERRNO', architectures: ['SCMP_ARCH_X32'], syscalls: rules }, kernel([], 'SCMP_ARCH_AARCH64'));
  assert.equal(run(only, SYSCALLS_X32.read!), ALLOW);
  assert.equal(run(only, 0, [], ARCH_X86_64), KILL_PROCESS);
  // the native arch is in too, with its own numbers
  assert.equal(run(only, SYSCALLS_AARCH64.read!, [], ARCH_AARCH64), ALLOW);
  assert.equal(run(only, SYSCALLS_AARCH64.openat!, [], ARCH_AARCH64), EPERM);
});

test('aarch64 and riscv64 use the generic table', () => {
  const p = compile({ defaultAction: 'SCMP_ACT_ERRNO', architectures: ['SCMP_ARCH_AARCH64', 'SCMP_ARCH_RISCV64'],
    syscalls: [{ names: ['openat', 'fstat'], action: 'SCMP_ACT_ALLOW' }] });
  assert.equal(SYSCALLS_AARCH64.openat, 56);
  assert.equal(SYSCALLS_AARCH64.fstat, 80, '__NR3264_fstat resolved');
  assert.equal(run(p, 56, [], ARCH_AARCH64), ALLOW);
  assert.equal(run(p, 80, [], ARCH_AARCH64), ALLOW);
  assert.equal(run(p, 56, [], 0xC00000F3), ALLOW);
  assert.equal(run(p, 57, [], 0xC00000F3), EPERM);
});

test('unknown and table-less architectures are warned about and skipped', () => {
  const p = compile({ defaultAction: 'SCMP_ACT_ALLOW', architectures: ['SCMP_ARCH_X86_64', 'SCMP_ARCH_FOO', 'SCMP_ARCH_ARM', 'SCMP_ARCH_PPC64LE'] });
  assert.deepEqual(p.warnings, [
    'seccomp: linux.seccomp.architectures[1]: unknown architecture "SCMP_ARCH_FOO", skipped',
    'seccomp: architecture SCMP_ARCH_ARM is not supported (no syscall table), skipped',
    'seccomp: architecture SCMP_ARCH_PPC64LE is not supported (no syscall table), skipped',
  ]);
  assert.equal(run(p, 0x28, [], 0x40000028), KILL_PROCESS);
  specError(() => compile({ defaultAction: 'SCMP_ACT_ALLOW', architectures: [1] }), 'linux.seccomp.architectures[0]', /must be a string/);
  specError(() => compile({ defaultAction: 'SCMP_ACT_ALLOW', architectures: 'SCMP_ARCH_X86' }), 'linux.seccomp.architectures', /must be an array/);
  specError(() => compile({ defaultAction: 'SCMP_ACT_ALLOW' }, kernel([], 'SCMP_ARCH_S390X')), 'linux.seccomp', /native architecture/);
});

test('unknown syscall names are skipped with one warning each', () => {
  const p = compile(allowProfile([
    { names: ['no_such_call', 'read', 'no_such_call'], action: 'SCMP_ACT_ERRNO' },
    { names: ['no_such_call'], action: 'SCMP_ACT_TRAP' },
  ]));
  assert.deepEqual(p.warnings, ['seccomp: syscall no_such_call unknown on SCMP_ARCH_X86_64, skipped']);
  assert.equal(run(p, 'read'), EPERM);
  const q = compile(allowProfile([{ names: ['no_such_call', 'socketcall'], action: 'SCMP_ACT_ERRNO' }],
    { architectures: ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32'] }));
  // socketcall is i386-only: fine; no_such_call is nowhere: one warning, not one per arch
  assert.deepEqual(q.warnings, ['seccomp: syscall no_such_call unknown on all architectures, skipped']);
  assert.equal(run(q, SYSCALLS_X86.socketcall!, [], ARCH_I386), EPERM);
});

// --- notify and flags ---------------------------------------------------------------------------

test('SCMP_ACT_NOTIFY needs a listenerPath, sets NEW_LISTENER, and cannot be the default', () => {
  specError(() => compile(allowProfile([{ names: ['mkdir'], action: 'SCMP_ACT_NOTIFY' }])), 'linux.seccomp.listenerPath', /SCMP_ACT_NOTIFY/);
  specError(() => compile({ defaultAction: 'SCMP_ACT_NOTIFY', listenerPath: '/l' }), 'linux.seccomp.defaultAction', /cannot be the default/);
  const p = compile(allowProfile([{ names: ['mkdir'], action: 'SCMP_ACT_NOTIFY' }], { listenerPath: '/run/agent.sock', listenerMetadata: 'hello' }));
  assert.equal(p.notify, true);
  assert.equal(p.flags, 8);
  assert.equal(p.listenerPath, '/run/agent.sock');
  assert.equal(p.listenerMetadata, 'hello');
  assert.equal(run(p, 'mkdir'), USER_NOTIF);
  const plain = compile(allowProfile([{ names: ['mkdir'], action: 'SCMP_ACT_ERRNO' }]));
  assert.equal(plain.notify, false);
  assert.equal(plain.flags, 0);
  // with TSYNC the kernel wants TSYNC_ESRCH too
  const t = compile(allowProfile([{ names: ['mkdir'], action: 'SCMP_ACT_NOTIFY' }], { listenerPath: '/l', flags: ['SECCOMP_FILTER_FLAG_TSYNC'] }));
  assert.equal(t.flags, 1 | 8 | 16);
  specError(() => compile(allowProfile([{ names: ['mkdir'], action: 'SCMP_ACT_NOTIFY' }], { listenerPath: '/l' }), kernel(['SECCOMP_FILTER_FLAG_NEW_LISTENER'])),
    'linux.seccomp', /NEW_LISTENER/);
  specError(() => compile(allowProfile([], { listenerPath: 3 })), 'linux.seccomp.listenerPath', /must be a string/);
});

test('flags: known ones set their bits; unknown or missing from the kernel are errors', () => {
  const f = (flags: unknown, k = kernel()) => compile({ defaultAction: 'SCMP_ACT_ALLOW', flags }, k);
  assert.equal(f(['SECCOMP_FILTER_FLAG_TSYNC']).flags, 1);
  assert.equal(f(['SECCOMP_FILTER_FLAG_LOG']).flags, 2);
  assert.equal(f(['SECCOMP_FILTER_FLAG_SPEC_ALLOW', 'SECCOMP_FILTER_FLAG_LOG']).flags, 6);
  assert.equal(f([]).flags, 0);
  specError(() => f(['SECCOMP_FILTER_FLAG_FOO']), 'linux.seccomp.flags[0]', /unknown seccomp flag/);
  specError(() => f(['SECCOMP_FILTER_FLAG_LOG', 'SECCOMP_FILTER_FLAG_NEW_LISTENER']), 'linux.seccomp.flags[1]', /unknown seccomp flag/);
  specError(() => f(['SECCOMP_FILTER_FLAG_SPEC_ALLOW'], kernel(['SECCOMP_FILTER_FLAG_SPEC_ALLOW'])), 'linux.seccomp.flags[0]',
    /the kernel lacks seccomp flag SECCOMP_FILTER_FLAG_SPEC_ALLOW/);
  specError(() => f('SECCOMP_FILTER_FLAG_LOG'), 'linux.seccomp.flags', /must be an array/);
  // WAIT_KILLABLE_RECV: only with a listener, needs the kernel to have it
  const w = f(['SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV']);
  assert.equal(w.flags, 0);
  assert.match(w.warnings.join('\n'), /WAIT_KILLABLE_RECV only applies with SCMP_ACT_NOTIFY/);
  const wn = compile(allowProfile([{ names: ['mkdir'], action: 'SCMP_ACT_NOTIFY' }], { listenerPath: '/l', flags: ['SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV'] }));
  assert.equal(wn.flags, 8 | 32);
  specError(() => f(['SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV'], kernel(['SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV'])), 'linux.seccomp.flags[0]', /kernel lacks/);
});

test('malformed profiles are errors naming the field', () => {
  specError(() => compile([]), 'linux.seccomp', /must be an object/);
  specError(() => compile(null), 'linux.seccomp', /is required/);
  specError(() => compile({ defaultAction: 1 }), 'linux.seccomp.defaultAction', /must be a string/);
  specError(() => compile({ defaultAction: 'SCMP_ACT_ALLOW', syscalls: {} }), 'linux.seccomp.syscalls', /must be an array/);
  specError(() => compile(allowProfile(['read'])), 'linux.seccomp.syscalls[0]', /must be an object/);
  specError(() => compile(allowProfile([{ names: 'read', action: 'SCMP_ACT_ERRNO' }])), 'linux.seccomp.syscalls[0].names', /must be an array/);
  specError(() => compile(allowProfile([{ action: 'SCMP_ACT_ERRNO' }])), 'linux.seccomp.syscalls[0].names');
  specError(() => compile(allowProfile([{ names: ['read', 3], action: 'SCMP_ACT_ERRNO' }])), 'linux.seccomp.syscalls[0].names[1]', /must be a string/);
  specError(() => compile(allowProfile([{ names: ['read'] }])), 'linux.seccomp.syscalls[0].action', /is required/);
  specError(() => compile(allowProfile([{ names: ['read'], action: 'SCMP_ACT_ERRNO', errnoRet: 'EPERM' }])), 'linux.seccomp.syscalls[0].errnoRet');
  specError(() => compile(allowProfile([{ names: ['read'], action: 'SCMP_ACT_ERRNO', args: {} }])), 'linux.seccomp.syscalls[0].args', /must be an array/);
  // nulls count as absent
  const p = compile({ defaultAction: 'SCMP_ACT_ALLOW', architectures: null, flags: null, syscalls: [{ names: ['read'], action: 'SCMP_ACT_ERRNO', args: null, errnoRet: null }] });
  assert.equal(run(p, 'read'), EPERM);
  // errnoRet on an action without data: a warning
  const q = compile(allowProfile([{ names: ['read'], action: 'SCMP_ACT_KILL', errnoRet: 5 }]));
  assert.match(q.warnings[0]!, /errnoRet is only used with SCMP_ACT_ERRNO and SCMP_ACT_TRACE/);
});

// --- size: trampolines and the 4096 limit -------------------------------------------------------

test('the assembler reaches far targets through trampolines', () => {
  const cases: [string, string][] = [['far', NEXT], [NEXT, 'far'], ['far', 'far2'], ['far2', 'far'], ['near', 'far']];
  for (const [jt, jf] of cases) {
    const a = new Assembler();
    a.ldAbs(0).jeq(1, jt, jf).ret(1000); // the NEXT side
    for (let i = 0; i < 100; i++) a.ret(999);
    a.label('near').ret(1001);
    for (let i = 0; i < 300; i++) a.ret(999);
    a.label('far').ret(1002);
    for (let i = 0; i < 300; i++) a.ret(999);
    a.label('far2').ret(1003);
    const prog = encode(a.assemble());
    const want = (t: string) => ({ '': 1000, near: 1001, far: 1002, far2: 1003 } as Record<string, number>)[t];
    assert.equal(runFilter(prog, { nr: 1, arch: 0 }), want(jt), `${jt}/${jf} true`);
    assert.equal(runFilter(prog, { nr: 2, arch: 0 }), want(jf), `${jt}/${jf} false`);
  }
  // a long chain of branches to one far label: each trampoline pushes the others further
  const a = new Assembler();
  a.ldAbs(0);
  for (let i = 0; i < 600; i++) a.jeq(i, i % 2 ? 'odd' : 'even');
  a.ret(7);
  for (let i = 0; i < 300; i++) a.ret(999);
  a.label('odd').ret(1).label('even').ret(2);
  const prog = encode(a.assemble());
  for (let i = 0; i < 600; i++) assert.equal(runFilter(prog, { nr: i, arch: 0 }), i % 2 ? 1 : 2, `nr ${i}`);
  assert.equal(runFilter(prog, { nr: 600, arch: 0 }), 7);
  assert.throws(() => new Assembler().jeq(1, 'nowhere').ret(0).assemble(), /never defined/);
  assert.throws(() => new Assembler().label('x').ret(0).ja('x').assemble(), /backwards/);
});

test('a profile big enough to need trampolines evaluates right', () => {
  /** Each name gets its own rule: ERRNO when argument i % 6 equals i. */
  const rulesFor = (names: string[]) => names.map((name, i) => ({ names: [name], action: 'SCMP_ACT_ERRNO', errnoRet: i + 2,
    args: [{ index: i % 6, value: i, op: 'SCMP_CMP_EQ' }] }));
  const check = (p: SeccompProgram, names: string[], tables: [string, Record<string, number>, number][]) => {
    names.forEach((name, i) => {
      for (const [arch, table, audit] of tables) {
        const nr = table[name];
        if (nr === undefined) continue;
        const args = [0, 0, 0, 0, 0, 0];
        args[i % 6] = i;
        assert.equal(run(p, nr, args, audit), ERRNO | (i + 2), `${arch} ${name}`);
        args[i % 6] = i + 1;
        assert.equal(run(p, nr, args, audit), ALLOW, `${arch} ${name} other arg`);
      }
    });
  };
  const hasTrampolines = (p: SeccompProgram) => {
    const insns = decode(p.filter);
    assert.ok(insns.length <= BPF_MAXINSNS, `${insns.length} instructions`);
    assert.ok(insns.some((i) => i.code === OP_JA), 'has trampolines');
  };

  // every x86_64 syscall with its own argument rule, and ioctl with 150 more: its block is
  // longer than a jump can skip
  const names = Object.keys(SYSCALLS_X86_64).filter((n) => n !== 'ioctl');
  const syscalls: unknown[] = rulesFor(names);
  for (let j = 0; j < 150; j++)
    syscalls.push({ names: ['ioctl'], action: 'SCMP_ACT_ERRNO', errnoRet: 1000 + j, args: [{ index: 1, value: 0x5400 + j, op: 'SCMP_CMP_EQ' }] });
  const p = compile({ defaultAction: 'SCMP_ACT_ALLOW', syscalls });
  hasTrampolines(p);
  check(p, names, [['x86_64', SYSCALLS_X86_64, ARCH_X86_64]]);
  for (let j = 0; j < 150; j++) assert.equal(run(p, 'ioctl', [0, 0x5400 + j]), ERRNO | (1000 + j));
  assert.equal(run(p, 'ioctl', [0, 0x5400 + 150]), ALLOW);
  assert.equal(run(p, 'ioctl', [0x1_0000_0000n, 0x5400]), ERRNO | 1000);
  assert.equal(run(p, 0, [], ARCH_I386), KILL_PROCESS);

  // two arches, 2 x 200 rules: the dispatch on seccomp_data.arch jumps over the whole x86_64 part
  const both = Object.keys(SYSCALLS_X86_64).filter((n) => Object.hasOwn(SYSCALLS_X86, n)).slice(0, 200);
  const q = compile({ defaultAction: 'SCMP_ACT_ALLOW', architectures: ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86'], syscalls: rulesFor(both) });
  hasTrampolines(q);
  check(q, both, [['x86_64', SYSCALLS_X86_64, ARCH_X86_64], ['i386', SYSCALLS_X86, ARCH_I386]]);
  assert.equal(run(q, 0, [], ARCH_AARCH64), KILL_PROCESS);
  assert.equal(run(q, X32 | 1), KILL_PROCESS);
});

test('a filter over 4096 instructions is a clear error', () => {
  const syscalls = Array.from({ length: 1000 }, (_, j) =>
    ({ names: ['ioctl'], action: 'SCMP_ACT_ERRNO', errnoRet: (j % 100) + 1, args: [{ index: 1, value: j, op: 'SCMP_CMP_EQ' }] }));
  specError(() => compile(allowProfile(syscalls)), 'linux.seccomp', /more than the kernel's limit of 4096/);
});

// --- the default profile fixture ----------------------------------------------------------------

test('fixtures/seccomp/default.json: ordinary syscalls allowed, privileged ones EPERM', () => {
  const profile = JSON.parse(readFileSync(new URL('../../../fixtures/seccomp/default.json', import.meta.url), 'utf8'));
  const p = compile(profile);
  assert.deepEqual(p.warnings, []);
  assert.equal(p.flags, 0);
  assert.equal(p.notify, false);
  for (const name of ['read', 'write', 'execve', 'openat', 'close', 'mmap', 'exit_group', 'wait4', 'getdents64', 'newfstatat', 'rt_sigaction', 'capget'])
    assert.equal(run(p, name), ALLOW, name);
  for (const name of ['unshare', 'mount', 'umount2', 'keyctl', 'add_key', 'setns', 'pivot_root', 'chroot', 'reboot', 'bpf', 'ptrace',
    'init_module', 'kexec_load', 'perf_event_open', 'sethostname', 'settimeofday', 'userfaultfd', 'open_by_handle_at', 'iopl', 'io_uring_setup'])
    assert.equal(run(p, name), EPERM, name);
  for (const persona of [0x0, 0x8, 0x20000, 0x20008, 0xffffffff]) assert.equal(run(p, 'personality', [persona]), ALLOW, `personality ${persona}`);
  assert.equal(run(p, 'personality', [0x1]), EPERM);
  assert.equal(run(p, 'personality', [0x1_0000_0008n]), EPERM);
  assert.equal(run(p, 'clone3'), ERRNO | 38);
  assert.equal(run(p, 'clone', [0x01200011]), ALLOW, 'fork-like clone');
  assert.equal(run(p, 'clone', [0x10000000 | 17]), EPERM, 'clone(CLONE_NEWUSER)');
  // the other listed architectures
  assert.equal(run(p, SYSCALLS_X86.read!, [], ARCH_I386), ALLOW);
  assert.equal(run(p, SYSCALLS_X86.mmap2!, [], ARCH_I386), ALLOW);
  assert.equal(run(p, SYSCALLS_X86.mount!, [], ARCH_I386), EPERM);
  assert.equal(run(p, SYSCALLS_X32.read!), ALLOW);
  assert.equal(run(p, SYSCALLS_X32.unshare!), EPERM);
  assert.equal(run(p, 0, [], ARCH_AARCH64), KILL_PROCESS);
});

test('hostSeccompKernel describes this machine', () => {
  const k = hostSeccompKernel();
  if (process.arch === 'x64') assert.equal(k.arch, 'SCMP_ARCH_X86_64');
  assert.ok(k.actionsAvail.has('allow') && k.actionsAvail.has('errno'));
  assert.ok(k.flagsAvail.has('SECCOMP_FILTER_FLAG_NEW_LISTENER'));
  assert.ok(k.flagsAvail.has('SECCOMP_FILTER_FLAG_TSYNC'));
});

test('encode writes struct sock_filter little-endian, decode reads it back', () => {
  const insns = [{ code: 0x15, jt: 3, jf: 250, k: 0xC000003E }, { code: 0x06, jt: 0, jf: 0, k: 0x7fff0000 }];
  const buf = encode(insns);
  assert.deepEqual([...buf], [0x15, 0, 3, 250, 0x3E, 0, 0, 0xC0, 0x06, 0, 0, 0, 0, 0, 0xff, 0x7f]);
  assert.deepEqual(decode(buf), insns);
});
