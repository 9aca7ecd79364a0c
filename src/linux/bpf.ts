/** bpf(2) through koffi: load a cgroup device program and attach it to a cgroup v2 directory. */
import { closeSync, openSync, constants } from 'node:fs';
import { libc, libcFunc } from './libc.js';
import { TsruncError } from '../errors.js';

const SYS_bpf = 321; // x86_64
const BPF_PROG_LOAD = 5, BPF_PROG_ATTACH = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE = 15, BPF_CGROUP_DEVICE = 6;
const BPF_F_ALLOW_MULTI = 2;
const ATTR_SIZE = 128; // big enough for the fields we set; the rest must be zero

function bpf(cmd: number, attr: Buffer): number {
  const { errno } = libc();
  const r = Number(libcFunc('long syscall(long number, ...)')(SYS_bpf, 'int', cmd, 'void *', attr, 'uint', ATTR_SIZE));
  if (r < 0) {
    const e = errno();
    const err = new Error(`errno ${e}`) as NodeJS.ErrnoException;
    err.errno = e;
    throw err;
  }
  return r;
}

/** Loads the program and attaches it to `cgroupDir` (multi-attach: programs of parents still apply). */
export function attachDeviceProgram(cgroupDir: string, program: Buffer, license: string): void {
  const { koffi } = libc();
  const insns = koffi.alloc('uint8', program.length);
  koffi.encode(insns, 'uint8', [...program], program.length);
  const lic = Buffer.from(license + '\0');
  const licMem = koffi.alloc('uint8', lic.length);
  koffi.encode(licMem, 'uint8', [...lic], lic.length);
  const load = Buffer.alloc(ATTR_SIZE);
  load.writeUInt32LE(BPF_PROG_TYPE_CGROUP_DEVICE, 0);
  load.writeUInt32LE(program.length / 8, 4);
  load.writeBigUInt64LE(BigInt(koffi.address(insns)), 8);
  load.writeBigUInt64LE(BigInt(koffi.address(licMem)), 16);
  let progFd: number;
  try {
    progFd = bpf(BPF_PROG_LOAD, load);
  } catch (e) {
    throw new TsruncError(`linux.resources.devices: the kernel refused the device program: ${describe(e)}`);
  } finally {
    koffi.free(insns);
    koffi.free(licMem);
  }
  const cgFd = openSync(cgroupDir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    const attach = Buffer.alloc(ATTR_SIZE);
    attach.writeUInt32LE(cgFd, 0);
    attach.writeUInt32LE(progFd, 4);
    attach.writeUInt32LE(BPF_CGROUP_DEVICE, 8);
    attach.writeUInt32LE(BPF_F_ALLOW_MULTI, 12);
    bpf(BPF_PROG_ATTACH, attach);
  } catch (e) {
    throw new TsruncError(`linux.resources.devices: cannot attach the device program to ${cgroupDir}: ${describe(e)}`);
  } finally {
    closeSync(cgFd);
    closeSync(progFd);
  }
}

function describe(e: unknown): string {
  const n = (e as NodeJS.ErrnoException).errno;
  const names: Record<number, string> = { 1: 'EPERM', 13: 'EACCES', 22: 'EINVAL', 7: 'E2BIG', 38: 'ENOSYS' };
  return n !== undefined ? `${names[n] ?? 'errno ' + n}` : String(e);
}
