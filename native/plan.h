/* The init plan wire format and the handshake frames shared with src/init/plan.ts.
 * Keep the numbers here and in src/init/opcodes.ts identical. */
#ifndef TSRUNC_PLAN_H
#define TSRUNC_PLAN_H
#include <stdint.h>

#define PLAN_MAGIC 0x31505354u /* "TSP1" little-endian */

/* handshake frame types */
enum {
  MSG_PLAN = 1,       /* parent -> executor: the plan bytes */
  MSG_PID = 2,        /* executor -> parent: i64 host pid of the container init */
  MSG_GO = 3,         /* parent -> init: cgroups joined, id maps written; run the ops */
  MSG_HOOKS = 4,      /* init -> parent: run prestart/createRuntime/createContainer now */
  MSG_HOOKS_DONE = 5, /* parent -> init */
  MSG_READY = 6,      /* init -> parent: everything done, about to wait on exec.fifo */
  MSG_CONTINUE = 7,   /* parent -> init: payload = state JSON for startContainer hooks, then
                         optionally NUL and the seccomp listener message */
  MSG_ERROR = 8,      /* executor/init -> parent: i32 op index, i32 errno, detail text */
};

/* operations; fields are i64 ('i') or strings ('s') in the order documented */
enum {
  /* executed by the executor before clone */
  OP_SETNS = 1,        /* s path, i nstype */
  OP_TIMENS = 2,       /* i mono_sec, i mono_nsec, i boot_sec, i boot_nsec */
  OP_CLONE = 3,        /* i clone flags, i foreground(0/1) */
  OP_MKFIFO = 4,       /* s path, i mode */
  OP_OPEN_FIFO = 5,    /* s path of exec.fifo, opened O_PATH and kept */
  /* executed by the container init, in order */
  OP_BECOME_ROOT = 10, /* (new user namespace) setresuid/setresgid 0 */
  OP_UNSHARE = 11,     /* i flags */
  OP_OOM_SCORE = 12,   /* i value */
  OP_HOSTNAME = 13,    /* s name */
  OP_DOMAINNAME = 14,  /* s name */
  OP_LO_UP = 15,
  OP_ROOTFS = 17,      /* s rootfs path, i propagation flags for "/" */
  OP_MOUNT = 18,       /* s source, s dest (in rootfs), s fstype, i flags, s data, i create(0 dir,1 file,2 none), i extra */
  OP_REMOUNT = 19,     /* s dest (in rootfs), i flags (added to the locked flags) */
  OP_PROPAGATE = 20,   /* s dest (in rootfs), i propagation flag */
  OP_MKNOD = 21,       /* s dest (in rootfs), i mode (incl. type), i major, i minor, i uid, i gid */
  OP_BIND_DEV = 22,    /* s host device path, s dest (in rootfs) */
  OP_SYMLINK = 23,     /* s target, s linkpath (in rootfs) */
  OP_HOOKS_SYNC = 24,
  OP_PIVOT = 25,       /* i no_pivot */
  OP_ROOT_PROPAGATION = 26, /* i flags */
  OP_SYSCTL = 27,      /* s /proc/sys relative path, s value */
  OP_MASK = 28,        /* s path */
  OP_READONLY = 29,    /* s path */
  OP_ROOT_RO = 30,
  OP_RLIMIT = 31,      /* i resource, i soft, i hard */
  OP_UMASK = 32,       /* i mask */
  OP_BOUNDING = 33,    /* i mask of capabilities to keep in the bounding set, i last cap */
  OP_USER = 34,        /* i uid, i gid, i keep_caps(0/1), then i additional gids... */
  OP_CAPS = 35,        /* i effective, i permitted, i inheritable, i ambient, i last cap */
  OP_NO_NEW_PRIVS = 36,
  OP_CHDIR = 37,       /* s path */
  OP_LOOKUP = 38,      /* s file, s PATH */
  OP_READY_SYNC = 39,
  OP_FIFO_WAIT = 40,
  OP_HOOK = 41,        /* i timeout sec, s path, i argc, argv..., env... (state JSON on stdin) */
  OP_CLOEXEC_FROM = 42,/* i first fd to mark close-on-exec */
  OP_SECCOMP = 43,     /* s BPF program (struct sock_filter array), i flags */
  OP_EXEC = 44,        /* i argc, argv..., env... */
  OP_SETSID = 45,
  OP_KEYRING = 46,     /* s name, i ignore EACCES/ENOSYS (0/1): join a new session keyring */
  OP_CONSOLE = 47,     /* (before clone) s console socket path to connect, or "" for a socketpair
                          whose other end the foreground executor keeps to proxy the pty */
  OP_PTY = 48,         /* i rows, i cols (0: leave): open a pty in the container's devpts, send the master over the console
                          socket (SCM_RIGHTS), make the slave stdio and the controlling terminal */
  OP_SECCOMP_CONNECT = 49, /* (before clone) s path of the seccomp notify listener socket */
  OP_SECCOMP_LISTENER = 50, /* send the notify fd and the process state (from CONTINUE) to the listener */
  OP_LSM = 51,         /* s /proc/self/attr file, s value: the label the next execve gets */
};

/* OP_MOUNT extra bits */
#define MOUNT_SYSFS_FALLBACK 1 /* on EPERM (no own net namespace) rbind the host /sys instead */
#define MOUNT_SRC_IN_ROOT 2    /* source is a path inside the rootfs (bind of a container path) */

#endif
