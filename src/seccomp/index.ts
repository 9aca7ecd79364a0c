/**
 * Seccomp: compiles an OCI linux.seccomp profile to a classic BPF filter (compile.ts) and
 * describes what the running kernel supports (hostSeccompKernel).
 */
import { readFileSync } from 'node:fs';
import { release } from 'node:os';

export { compileSeccomp, type SeccompKernel, type SeccompProgram } from './compile.js';
import type { SeccompKernel } from './compile.js';

/** Node's process.arch -> the OCI (libseccomp) name of the native architecture. */
const NATIVE_ARCH: Record<string, string> = {
  x64: 'SCMP_ARCH_X86_64',
  ia32: 'SCMP_ARCH_X86',
  arm64: 'SCMP_ARCH_AARCH64',
  arm: 'SCMP_ARCH_ARM',
  riscv64: 'SCMP_ARCH_RISCV64',
  ppc64: 'SCMP_ARCH_PPC64LE',
  s390x: 'SCMP_ARCH_S390X',
  loong64: 'SCMP_ARCH_LOONGARCH64',
};

/** Actions every kernel with seccomp filters (3.5+) has, for kernels without actions_avail (< 4.14). */
const BASE_ACTIONS = ['kill_thread', 'trap', 'errno', 'trace', 'allow'];

/**
 * What this kernel supports: the actions from /proc/sys/kernel/seccomp/actions_avail; the
 * filter flags by kernel version (TSYNC, LOG, SPEC_ALLOW, NEW_LISTENER and TSYNC_ESRCH are
 * assumed, WAIT_KILLABLE_RECV from 5.19); the arch from process.arch.
 */
export function hostSeccompKernel(): SeccompKernel {
  let actions: string[];
  try {
    actions = readFileSync('/proc/sys/kernel/seccomp/actions_avail', 'utf8').trim().split(/\s+/).filter(Boolean);
  } catch {
    actions = BASE_ACTIONS;
  }
  const flags = ['SECCOMP_FILTER_FLAG_TSYNC', 'SECCOMP_FILTER_FLAG_LOG', 'SECCOMP_FILTER_FLAG_SPEC_ALLOW',
    'SECCOMP_FILTER_FLAG_NEW_LISTENER', 'SECCOMP_FILTER_FLAG_TSYNC_ESRCH'];
  const [major = 0, minor = 0] = (/^(\d+)\.(\d+)/.exec(release()) ?? []).slice(1).map(Number);
  if (major > 5 || (major === 5 && minor >= 19)) flags.push('SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV');
  return {
    arch: NATIVE_ARCH[process.arch] ?? `unknown (${process.arch})`,
    actionsAvail: new Set(actions),
    flagsAvail: new Set(flags),
  };
}
