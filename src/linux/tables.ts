/** Kernel constants tsrunc needs, in one place. */
import { readFileSync } from 'node:fs';

export const CAPABILITIES = [
  'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_DAC_READ_SEARCH', 'CAP_FOWNER', 'CAP_FSETID', 'CAP_KILL',
  'CAP_SETGID', 'CAP_SETUID', 'CAP_SETPCAP', 'CAP_LINUX_IMMUTABLE', 'CAP_NET_BIND_SERVICE',
  'CAP_NET_BROADCAST', 'CAP_NET_ADMIN', 'CAP_NET_RAW', 'CAP_IPC_LOCK', 'CAP_IPC_OWNER', 'CAP_SYS_MODULE',
  'CAP_SYS_RAWIO', 'CAP_SYS_CHROOT', 'CAP_SYS_PTRACE', 'CAP_SYS_PACCT', 'CAP_SYS_ADMIN', 'CAP_SYS_BOOT',
  'CAP_SYS_NICE', 'CAP_SYS_RESOURCE', 'CAP_SYS_TIME', 'CAP_SYS_TTY_CONFIG', 'CAP_MKNOD', 'CAP_LEASE',
  'CAP_AUDIT_WRITE', 'CAP_AUDIT_CONTROL', 'CAP_SETFCAP', 'CAP_MAC_OVERRIDE', 'CAP_MAC_ADMIN', 'CAP_SYSLOG',
  'CAP_WAKE_ALARM', 'CAP_BLOCK_SUSPEND', 'CAP_AUDIT_READ', 'CAP_PERFMON', 'CAP_BPF', 'CAP_CHECKPOINT_RESTORE',
] as const;

let lastCapCache: number | undefined;
/** The highest capability number this kernel knows. */
export function lastCap(): number {
  if (lastCapCache === undefined) {
    try {
      lastCapCache = Number(readFileSync('/proc/sys/kernel/cap_last_cap', 'utf8').trim());
    } catch {
      lastCapCache = CAPABILITIES.length - 1;
    }
  }
  return lastCapCache;
}

export const CLONE_NEWNS = 0x00020000;
export const CLONE_NEWCGROUP = 0x02000000;
export const CLONE_NEWUTS = 0x04000000;
export const CLONE_NEWIPC = 0x08000000;
export const CLONE_NEWUSER = 0x10000000;
export const CLONE_NEWPID = 0x20000000;
export const CLONE_NEWNET = 0x40000000;
export const CLONE_NEWTIME = 0x00000080;

/** OCI namespace type -> clone flag and /proc/PID/ns name. */
export const NAMESPACES: Record<string, { flag: number; proc: string }> = {
  pid: { flag: CLONE_NEWPID, proc: 'pid' },
  network: { flag: CLONE_NEWNET, proc: 'net' },
  mount: { flag: CLONE_NEWNS, proc: 'mnt' },
  ipc: { flag: CLONE_NEWIPC, proc: 'ipc' },
  uts: { flag: CLONE_NEWUTS, proc: 'uts' },
  user: { flag: CLONE_NEWUSER, proc: 'user' },
  cgroup: { flag: CLONE_NEWCGROUP, proc: 'cgroup' },
  time: { flag: CLONE_NEWTIME, proc: 'time' },
};

export const RLIMITS: Record<string, number> = {
  RLIMIT_CPU: 0, RLIMIT_FSIZE: 1, RLIMIT_DATA: 2, RLIMIT_STACK: 3, RLIMIT_CORE: 4, RLIMIT_RSS: 5,
  RLIMIT_NPROC: 6, RLIMIT_NOFILE: 7, RLIMIT_MEMLOCK: 8, RLIMIT_AS: 9, RLIMIT_LOCKS: 10,
  RLIMIT_SIGPENDING: 11, RLIMIT_MSGQUEUE: 12, RLIMIT_NICE: 13, RLIMIT_RTPRIO: 14, RLIMIT_RTTIME: 15,
};

export const MS = {
  RDONLY: 0x1, NOSUID: 0x2, NODEV: 0x4, NOEXEC: 0x8, SYNCHRONOUS: 0x10, REMOUNT: 0x20, MANDLOCK: 0x40,
  DIRSYNC: 0x80, NOSYMFOLLOW: 0x100, NOATIME: 0x400, NODIRATIME: 0x800, BIND: 0x1000, MOVE: 0x2000,
  REC: 0x4000, SILENT: 0x8000, UNBINDABLE: 0x20000, PRIVATE: 0x40000, SLAVE: 0x80000, SHARED: 0x100000,
  RELATIME: 0x200000, STRICTATIME: 0x1000000, LAZYTIME: 0x2000000,
} as const;

/** Mount options that are flags: [set?, flag]. Everything else is filesystem data. */
export const MOUNT_FLAG_OPTIONS: Record<string, [boolean, number]> = {
  ro: [true, MS.RDONLY], rw: [false, MS.RDONLY], suid: [false, MS.NOSUID], nosuid: [true, MS.NOSUID],
  dev: [false, MS.NODEV], nodev: [true, MS.NODEV], exec: [false, MS.NOEXEC], noexec: [true, MS.NOEXEC],
  sync: [true, MS.SYNCHRONOUS], async: [false, MS.SYNCHRONOUS], dirsync: [true, MS.DIRSYNC],
  remount: [true, MS.REMOUNT], mand: [true, MS.MANDLOCK], nomand: [false, MS.MANDLOCK],
  atime: [false, MS.NOATIME], noatime: [true, MS.NOATIME], diratime: [false, MS.NODIRATIME],
  nodiratime: [true, MS.NODIRATIME], bind: [true, MS.BIND], rbind: [true, MS.BIND | MS.REC],
  relatime: [true, MS.RELATIME], norelatime: [false, MS.RELATIME], strictatime: [true, MS.STRICTATIME],
  nostrictatime: [false, MS.STRICTATIME], lazytime: [true, MS.LAZYTIME], nolazytime: [false, MS.LAZYTIME],
  symfollow: [false, MS.NOSYMFOLLOW], nosymfollow: [true, MS.NOSYMFOLLOW],
};

export const PROPAGATION_OPTIONS: Record<string, number> = {
  private: MS.PRIVATE, rprivate: MS.PRIVATE | MS.REC, shared: MS.SHARED, rshared: MS.SHARED | MS.REC,
  slave: MS.SLAVE, rslave: MS.SLAVE | MS.REC, unbindable: MS.UNBINDABLE, runbindable: MS.UNBINDABLE | MS.REC,
};

export const SIGNALS: Record<string, number> = {
  SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGILL: 4, SIGTRAP: 5, SIGABRT: 6, SIGIOT: 6, SIGBUS: 7, SIGFPE: 8,
  SIGKILL: 9, SIGUSR1: 10, SIGSEGV: 11, SIGUSR2: 12, SIGPIPE: 13, SIGALRM: 14, SIGTERM: 15, SIGSTKFLT: 16,
  SIGCHLD: 17, SIGCONT: 18, SIGSTOP: 19, SIGTSTP: 20, SIGTTIN: 21, SIGTTOU: 22, SIGURG: 23, SIGXCPU: 24,
  SIGXFSZ: 25, SIGVTALRM: 26, SIGPROF: 27, SIGWINCH: 28, SIGIO: 29, SIGPOLL: 29, SIGPWR: 30, SIGSYS: 31,
};

/** Parses a signal the way runc's kill does: 9, KILL, SIGKILL, SIGRTMIN+3. */
export function parseSignal(s: string): number | undefined {
  if (/^\d+$/.test(s)) {
    const n = Number(s);
    return n >= 1 && n <= 64 ? n : undefined;
  }
  const name = s.toUpperCase().startsWith('SIG') ? s.toUpperCase() : 'SIG' + s.toUpperCase();
  if (name in SIGNALS) return SIGNALS[name];
  const rt = /^SIGRT(MIN|MAX)(?:([+-])(\d+))?$/.exec(name);
  if (rt) {
    const base = rt[1] === 'MIN' ? 34 : 64;
    const off = rt[3] ? Number(rt[3]) * (rt[2] === '-' ? -1 : 1) : 0;
    const n = base + off;
    return n >= 34 && n <= 64 ? n : undefined;
  }
  return undefined;
}
