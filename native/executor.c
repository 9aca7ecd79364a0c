/* tsrunc-exec: runs an init plan compiled by tsrunc (src/init/plan.ts).
 *
 * It makes no decisions. It reads the plan from the sync socket, joins or
 * creates namespaces, clones the container init and runs the plan's ops in
 * order. A failed op is reported to the parent with its index and errno and the
 * process exits; the parent turns that into a message naming the config field.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <sched.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "plan.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

extern char **environ;

struct field {
  int is_str;
  int64_t i;
  char *s;
  uint32_t len;
};
struct op {
  uint32_t code;
  uint32_t nf;
  struct field *f;
};

static int sync_fd = -1;
static struct op *ops;
static uint32_t nops;
static int cur_op = -1;
static int root_fd = -1;
static int fifo_fd = -1;
static char *resolved_exe;
static char *state_json = "";
static char *listener_msg;
static int console_fd = -1;       /* where the pty master goes (console socket or our socketpair) */
static int proxy_fd = -1;         /* foreground: our end of that socketpair */
static int seccomp_sock = -1;     /* connected seccomp notify listener */
static int notify_fd = -1;        /* the filter's notify fd */

/* ---- framing on the sync socket --------------------------------------- */

static int write_all(int fd, const void *buf, size_t n) {
  const char *p = buf;
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int read_all(int fd, void *buf, size_t n) {
  char *p = buf;
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) {
      errno = EPIPE;
      return -1;
    }
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

static int send_msg(uint32_t type, const void *payload, uint32_t len) {
  uint32_t hdr[2] = {type, len};
  if (sync_fd < 0) return -1;
  if (write_all(sync_fd, hdr, sizeof hdr) < 0) return -1;
  return len ? write_all(sync_fd, payload, len) : 0;
}

/* Reads one frame of the expected type; the payload is malloc'd and NUL-terminated. */
static char *recv_msg(uint32_t want, uint32_t *len_out);

/* Report a failure of the current op to the parent and exit. */
__attribute__((noreturn, format(printf, 2, 3))) static void die(int err, const char *fmt, ...) {
  char detail[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(detail, sizeof detail, fmt, ap);
  va_end(ap);
  size_t dl = strlen(detail);
  char buf[8 + sizeof detail];
  int32_t idx = cur_op, e = err;
  memcpy(buf, &idx, 4);
  memcpy(buf + 4, &e, 4);
  memcpy(buf + 8, detail, dl);
  if (send_msg(MSG_ERROR, buf, (uint32_t)(8 + dl)) < 0)
    fprintf(stderr, "tsrunc: %s: %s\n", detail, strerror(err));
  _exit(1);
}

static char *recv_msg(uint32_t want, uint32_t *len_out) {
  uint32_t hdr[2];
  if (read_all(sync_fd, hdr, sizeof hdr) < 0) _exit(1); /* parent gone: nothing to report to */
  if (hdr[1] > (64u << 20)) die(EPROTO, "handshake frame too large");
  char *p = malloc(hdr[1] + 1);
  if (!p) die(ENOMEM, "handshake frame");
  if (hdr[1] && read_all(sync_fd, p, hdr[1]) < 0) _exit(1);
  p[hdr[1]] = 0;
  if (hdr[0] != want) die(EPROTO, "handshake: expected message %u, got %u", want, hdr[0]);
  if (len_out) *len_out = hdr[1];
  return p;
}

/* ---- the plan ------------------------------------------------------------ */

static void parse_plan(char *buf, uint32_t len) {
  char *p = buf, *end = buf + len;
#define NEED(n) \
  if ((size_t)(end - p) < (size_t)(n)) die(EPROTO, "plan truncated");
  NEED(8);
  uint32_t magic;
  memcpy(&magic, p, 4);
  memcpy(&nops, p + 4, 4);
  p += 8;
  if (magic != PLAN_MAGIC) die(EPROTO, "plan has a bad magic number");
  ops = calloc(nops ? nops : 1, sizeof *ops);
  for (uint32_t k = 0; k < nops; k++) {
    NEED(8);
    memcpy(&ops[k].code, p, 4);
    memcpy(&ops[k].nf, p + 4, 4);
    p += 8;
    if (ops[k].nf > 4096) die(EPROTO, "plan op has too many fields");
    ops[k].f = calloc(ops[k].nf ? ops[k].nf : 1, sizeof(struct field));
    for (uint32_t j = 0; j < ops[k].nf; j++) {
      NEED(1);
      char kind = *p++;
      if (kind == 'i') {
        NEED(8);
        memcpy(&ops[k].f[j].i, p, 8);
        p += 8;
      } else if (kind == 's') {
        NEED(4);
        uint32_t l;
        memcpy(&l, p, 4);
        p += 4;
        NEED((size_t)l + 1);
        ops[k].f[j].is_str = 1;
        ops[k].f[j].s = p;
        ops[k].f[j].len = l;
        if (p[l] != 0) die(EPROTO, "plan string not terminated");
        p += l + 1;
      } else {
        die(EPROTO, "plan field of unknown kind");
      }
    }
  }
#undef NEED
}

static int64_t I(struct op *o, uint32_t j) {
  if (j >= o->nf || o->f[j].is_str) die(EPROTO, "plan op %u: field %u must be a number", o->code, j);
  return o->f[j].i;
}
static const char *S(struct op *o, uint32_t j) {
  if (j >= o->nf || !o->f[j].is_str) die(EPROTO, "plan op %u: field %u must be a string", o->code, j);
  return o->f[j].s;
}

/* ---- paths inside the rootfs ---------------------------------------------- */

static int open_in_root(const char *path, int flags) {
  struct open_how how = {.flags = (uint64_t)(flags | O_CLOEXEC),
                         .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS};
  while (*path == '/') path++;
  if (!*path) path = ".";
  return (int)syscall(SYS_openat2, root_fd, path, &how, sizeof how);
}

static char fdpath_buf[2][64];
static const char *fdpath(int fd, int slot) {
  snprintf(fdpath_buf[slot], sizeof fdpath_buf[slot], "/proc/self/fd/%d", fd);
  return fdpath_buf[slot];
}

/* Opens path (O_PATH) inside the rootfs, creating missing directories and, if
 * asked, the last component as an empty file (kind 1) or directory (kind 0). */
static int ensure_in_root(const char *path, int kind) {
  int fd = open_in_root(path, O_PATH);
  if (fd >= 0 || errno != ENOENT || kind == 2) return fd;
  char buf[PATH_MAX];
  if (strlen(path) >= sizeof buf) {
    errno = ENAMETOOLONG;
    return -1;
  }
  strcpy(buf, path);
  char *s = buf;
  while (*s == '/') s++;
  for (;;) {
    char *slash = strchr(s, '/');
    int last = slash == NULL;
    if (slash) *slash = 0;
    int probe = open_in_root(buf, O_PATH);
    if (probe >= 0) {
      close(probe);
    } else if (errno == ENOENT) {
      char *base = strrchr(buf, '/');
      char parent[PATH_MAX];
      size_t pl = base ? (size_t)(base - buf) : 0;
      memcpy(parent, buf, pl);
      parent[pl] = 0;
      int pfd = open_in_root(pl ? parent : "/", O_PATH | O_DIRECTORY);
      if (pfd < 0) return -1;
      const char *name = base ? base + 1 : buf;
      int r;
      if (last && kind == 1) {
        r = openat(pfd, name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (r >= 0) close(r);
      } else {
        r = mkdirat(pfd, name, 0755);
      }
      close(pfd);
      if (r < 0 && errno != EEXIST) return -1;
    } else {
      return -1;
    }
    if (last) break;
    *slash = '/';
    s = slash + 1;
  }
  return open_in_root(path, O_PATH);
}

static unsigned long locked_flags(int fd) {
  struct statvfs sv;
  unsigned long f = 0;
  if (fstatvfs(fd, &sv) < 0) return 0;
  if (sv.f_flag & ST_NOSUID) f |= MS_NOSUID;
  if (sv.f_flag & ST_NODEV) f |= MS_NODEV;
  if (sv.f_flag & ST_NOEXEC) f |= MS_NOEXEC;
  if (sv.f_flag & ST_NOATIME) f |= MS_NOATIME;
  if (sv.f_flag & ST_NODIRATIME) f |= MS_NODIRATIME;
  if (sv.f_flag & ST_RELATIME) f |= MS_RELATIME;
  if (sv.f_flag & ST_RDONLY) f |= MS_RDONLY;
  return f;
}

static void remount_bind(const char *what, int fd, unsigned long flags) {
  unsigned long all = MS_BIND | MS_REMOUNT | flags | (locked_flags(fd) & ~MS_RDONLY);
  if (mount(NULL, fdpath(fd, 0), NULL, all, NULL) < 0) die(errno, "remount %s", what);
}


/* ---- fds over unix sockets ------------------------------------------------- */

static int send_fd(int sock, int fd, const char *data, size_t len) {
  char cbuf[CMSG_SPACE(sizeof(int))];
  memset(cbuf, 0, sizeof cbuf);
  struct iovec iov = {(void *)data, len};
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
  struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &fd, sizeof(int));
  while (len > 0) {
    ssize_t n = sendmsg(sock, &mh, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    /* the fd went with the first bytes; the rest is plain data */
    mh.msg_control = NULL;
    mh.msg_controllen = 0;
    iov.iov_base = (char *)iov.iov_base + n;
    iov.iov_len -= (size_t)n;
    len -= (size_t)n;
  }
  return 0;
}

static int recv_fd(int sock) {
  char data[256], cbuf[CMSG_SPACE(sizeof(int))];
  struct iovec iov = {data, sizeof data};
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
  ssize_t n;
  do n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n <= 0) return -1;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      int fd;
      memcpy(&fd, CMSG_DATA(c), sizeof fd);
      return fd;
    }
  return -1;
}

static int connect_unix(const char *path) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof sa.sun_path) {
    errno = ENAMETOOLONG;
    return -1;
  }
  strcpy(sa.sun_path, path);
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return -1;
  if (connect(s, (struct sockaddr *)&sa, sizeof sa) < 0) {
    int e = errno;
    close(s);
    errno = e;
    return -1;
  }
  return s;
}

/* ---- terminals --------------------------------------------------------------- */

static void op_pty(struct op *o) {
  int m = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (m < 0) die(errno, "open /dev/ptmx (is /dev/pts mounted?)");
  int unlock = 0;
  if (ioctl(m, TIOCSPTLCK, &unlock) < 0) die(errno, "unlock pty");
  int n = -1;
  if (ioctl(m, TIOCGPTN, &n) < 0) die(errno, "pty number");
  int slave = ioctl(m, TIOCGPTPEER, O_RDWR | O_NOCTTY);
  if (slave < 0) die(errno, "open pty slave");
  if (I(o, 0) > 0 && I(o, 1) > 0) { /* process.consoleSize */
    struct winsize ws = {.ws_row = (unsigned short)I(o, 0), .ws_col = (unsigned short)I(o, 1)};
    if (ioctl(m, TIOCSWINSZ, &ws) < 0) die(errno, "set the console size");
  }
  char name[64];
  snprintf(name, sizeof name, "/dev/pts/%d", n);
  if (send_fd(console_fd, m, name, strlen(name)) < 0) die(errno, "send the pty master to the console socket");
  close(m);
  close(console_fd);
  console_fd = -1;
  for (int fd = 0; fd < 3; fd++)
    if (dup2(slave, fd) < 0) die(errno, "pty as stdio");
  if (slave > 2) close(slave);
  if (ioctl(0, TIOCSCTTY, 0) < 0) die(errno, "set the controlling terminal");
}

static volatile sig_atomic_t winch;
static void on_winch(int s) {
  (void)s;
  winch = 1;
}

static void copy_winsize(int from, int to) {
  struct winsize ws;
  if (ioctl(from, TIOCGWINSZ, &ws) == 0) ioctl(to, TIOCSWINSZ, &ws);
}

/* Foreground run/exec with a terminal: our stdin/stdout <-> the container's pty master,
 * our terminal in raw mode, its size passed on at start and on SIGWINCH. */
static void proxy_pty(int master) {
  struct termios saved;
  int raw = isatty(0) && tcgetattr(0, &saved) == 0;
  if (raw) {
    struct termios t = saved;
    cfmakeraw(&t);
    tcsetattr(0, TCSANOW, &t);
    copy_winsize(0, master);
  }
  struct sigaction sa = {.sa_handler = on_winch};
  sigaction(SIGWINCH, &sa, NULL); /* no SA_RESTART: poll returns EINTR */
  char buf[16384];
  int in_open = 1;
  for (;;) {
    if (winch) {
      winch = 0;
      if (raw) copy_winsize(0, master);
    }
    struct pollfd p[2] = {{master, POLLIN, 0}, {0, POLLIN, 0}};
    int r = poll(p, in_open ? 2 : 1, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (p[0].revents) {
      ssize_t n = read(master, buf, sizeof buf);
      if (n <= 0) {
        if (n < 0 && errno == EINTR) continue;
        break; /* EIO: every holder of the slave is gone */
      }
      if (write_all(1, buf, (size_t)n) < 0) break;
    }
    if (in_open && p[1].revents) {
      ssize_t n = read(0, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        in_open = 0;
        if (!raw) { /* end of piped input: the terminal's end-of-file character */
          char eof = 4;
          write_all(master, &eof, 1);
        }
      } else if (write_all(master, buf, (size_t)n) < 0) {
        break;
      }
    }
  }
  if (raw) tcsetattr(0, TCSANOW, &saved);
}

/* ---- seccomp ----------------------------------------------------------------- */

static void op_seccomp(struct op *o) {
  struct sock_fprog prog = {(unsigned short)(o->f[0].len / sizeof(struct sock_filter)),
                            (struct sock_filter *)(void *)S(o, 0)};
  unsigned flags = (unsigned)I(o, 1);
  long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
  if (r < 0) die(errno, "load the seccomp filter");
  if (flags & SECCOMP_FILTER_FLAG_NEW_LISTENER) notify_fd = (int)r;
}

static void op_seccomp_listener(void) {
  if (notify_fd < 0 || seccomp_sock < 0) die(EINVAL, "no seccomp notify fd to send");
  const char *msg = listener_msg ? listener_msg : "{}";
  if (send_fd(seccomp_sock, notify_fd, msg, strlen(msg)) < 0) die(errno, "send the seccomp notify fd to its listener");
  close(notify_fd);
  close(seccomp_sock);
  notify_fd = seccomp_sock = -1;
}

/* ---- the ops --------------------------------------------------------------- */

static void op_mount(struct op *o) {
  const char *src = S(o, 0), *dst = S(o, 1), *type = S(o, 2), *data = S(o, 4);
  unsigned long flags = (unsigned long)I(o, 3);
  int create = (int)I(o, 5), extra = (int)I(o, 6);
  int fd = ensure_in_root(dst, create);
  if (fd < 0) die(errno, "mount destination %s", dst);
  int sfd = -1;
  const char *source = src;
  if (extra & MOUNT_SRC_IN_ROOT) {
    sfd = open_in_root(src, O_PATH);
    if (sfd < 0) die(errno, "mount source %s", src);
    source = fdpath(sfd, 1);
  }
  if (mount(source, fdpath(fd, 0), *type ? type : NULL, flags, *data ? data : NULL) < 0) {
    int e = errno;
    if ((extra & MOUNT_SYSFS_FALLBACK) && e == EPERM) {
      if (mount("/sys", fdpath(fd, 0), NULL, MS_BIND | MS_REC, NULL) < 0) die(errno, "bind /sys on %s", dst);
    } else {
      die(e, "mount %s on %s", *type ? type : src, dst);
    }
  }
  close(fd);
  if (sfd >= 0) close(sfd);
}

static void op_mknod(struct op *o) {
  const char *dst = S(o, 0);
  char parent[PATH_MAX];
  snprintf(parent, sizeof parent, "%s", dst);
  char *base = strrchr(parent, '/');
  if (!base) die(EINVAL, "device path %s", dst);
  *base++ = 0;
  int pfd = ensure_in_root(*parent ? parent : "/", 0);
  if (pfd < 0) die(errno, "device directory for %s", dst);
  int dfd = openat(pfd, ".", O_DIRECTORY | O_RDONLY | O_CLOEXEC);
  if (dfd < 0) die(errno, "device directory for %s", dst);
  if (mknodat(dfd, base, (mode_t)I(o, 1), makedev((unsigned)I(o, 2), (unsigned)I(o, 3))) < 0 && errno != EEXIST)
    die(errno, "mknod %s", dst);
  if (fchownat(dfd, base, (uid_t)I(o, 4), (gid_t)I(o, 5), AT_SYMLINK_NOFOLLOW) < 0) die(errno, "chown %s", dst);
  if (fchmodat(dfd, base, (mode_t)I(o, 1) & 07777, 0) < 0) die(errno, "chmod %s", dst);
  close(dfd);
  close(pfd);
}

static void op_symlink(struct op *o) {
  const char *target = S(o, 0), *link = S(o, 1);
  char parent[PATH_MAX];
  snprintf(parent, sizeof parent, "%s", link);
  char *base = strrchr(parent, '/');
  if (!base) die(EINVAL, "symlink path %s", link);
  *base++ = 0;
  int pfd = ensure_in_root(*parent ? parent : "/", 0);
  if (pfd < 0) die(errno, "symlink directory for %s", link);
  int dfd = openat(pfd, ".", O_DIRECTORY | O_RDONLY | O_CLOEXEC);
  if (dfd < 0 || (symlinkat(target, dfd, base) < 0 && errno != EEXIST)) die(errno, "symlink %s", link);
  close(dfd);
  close(pfd);
}

static void op_pivot(struct op *o) {
  if (fchdir(root_fd) < 0) die(errno, "chdir to rootfs");
  if (I(o, 0)) {
    if (mount(".", "/", NULL, MS_MOVE, NULL) < 0) die(errno, "move rootfs to /");
    if (chroot(".") < 0) die(errno, "chroot");
  } else {
    int oldroot = open("/", O_DIRECTORY | O_RDONLY | O_CLOEXEC);
    if (oldroot < 0) die(errno, "open old root");
    if (syscall(SYS_pivot_root, ".", ".") < 0) die(errno, "pivot_root");
    if (fchdir(oldroot) < 0) die(errno, "chdir to old root");
    if (mount(NULL, ".", NULL, MS_SLAVE | MS_REC, NULL) < 0) die(errno, "make old root slave");
    if (umount2(".", MNT_DETACH) < 0) die(errno, "detach old root");
    close(oldroot);
  }
  if (chdir("/") < 0) die(errno, "chdir /");
  close(root_fd);
  root_fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (root_fd < 0) die(errno, "open new root");
}

static void op_mask(struct op *o) {
  const char *path = S(o, 0);
  int fd = open_in_root(path, O_PATH);
  if (fd < 0) {
    if (errno == ENOENT) return;
    die(errno, "masked path %s", path);
  }
  struct stat st;
  if (fstat(fd, &st) < 0) die(errno, "masked path %s", path);
  int r = S_ISDIR(st.st_mode) ? mount("tmpfs", fdpath(fd, 0), "tmpfs", MS_RDONLY, NULL)
                              : mount("/dev/null", fdpath(fd, 0), NULL, MS_BIND, NULL);
  if (r < 0) die(errno, "mask %s", path);
  close(fd);
}

static void op_readonly(struct op *o) {
  const char *path = S(o, 0);
  int fd = open_in_root(path, O_PATH);
  if (fd < 0) {
    if (errno == ENOENT) return;
    die(errno, "read-only path %s", path);
  }
  if (mount(fdpath(fd, 0), fdpath(fd, 0), NULL, MS_BIND | MS_REC, NULL) < 0) die(errno, "bind %s", path);
  close(fd);
  fd = open_in_root(path, O_PATH); /* the new mount, not the dentry below it */
  if (fd < 0) die(errno, "read-only path %s", path);
  remount_bind(path, fd, MS_RDONLY);
  close(fd);
}

static void op_lo_up(void) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) die(errno, "socket for loopback");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strcpy(ifr.ifr_name, "lo");
  if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) die(errno, "get lo flags");
  ifr.ifr_flags |= IFF_UP;
  if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) die(errno, "set lo up");
  close(s);
}

static void write_file(const char *path, const char *val, const char *what) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) die(errno, "%s", what);
  if (write_all(fd, val, strlen(val)) < 0) die(errno, "%s", what);
  close(fd);
}

static void op_user(struct op *o) {
  uid_t uid = (uid_t)I(o, 0);
  gid_t gid = (gid_t)I(o, 1);
  if (I(o, 2) && prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0) die(errno, "keep capabilities");
  size_t ng = o->nf - 3;
  gid_t *groups = calloc(ng ? ng : 1, sizeof(gid_t));
  for (size_t k = 0; k < ng; k++) groups[k] = (gid_t)I(o, (uint32_t)(3 + k));
  if (setgroups(ng, groups) < 0 && !(errno == EPERM && ng == 0)) die(errno, "setgroups");
  if (setresgid(gid, gid, gid) < 0) die(errno, "setgid %u", gid);
  if (setresuid(uid, uid, uid) < 0) die(errno, "setuid %u", uid);
  free(groups);
}

static void op_caps(struct op *o) {
  uint64_t eff = (uint64_t)I(o, 0), perm = (uint64_t)I(o, 1), inh = (uint64_t)I(o, 2), amb = (uint64_t)I(o, 3);
  int last = (int)I(o, 4);
  struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct data[2];
  for (int k = 0; k < 2; k++) {
    data[k].effective = (uint32_t)(eff >> (32 * k));
    data[k].permitted = (uint32_t)(perm >> (32 * k));
    data[k].inheritable = (uint32_t)(inh >> (32 * k));
  }
  if (syscall(SYS_capset, &hdr, data) < 0) die(errno, "capset");
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) die(errno, "clear ambient");
  for (int c = 0; c <= last; c++)
    if ((amb >> c) & 1)
      if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, c, 0, 0) < 0) die(errno, "raise ambient capability %d", c);
}

static void op_bounding(struct op *o) {
  uint64_t keep = (uint64_t)I(o, 0);
  int last = (int)I(o, 1);
  for (int c = 0; c <= last; c++)
    if (!((keep >> c) & 1) && prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0 && errno != EINVAL)
      die(errno, "drop capability %d from the bounding set", c);
}

static void op_lookup(struct op *o) {
  const char *file = S(o, 0), *path = S(o, 1);
  struct stat st;
  if (strchr(file, '/')) {
    if (stat(file, &st) < 0) die(errno, "exec: %s", file);
    resolved_exe = strdup(file);
    return;
  }
  const char *p = path;
  while (*p) {
    const char *colon = strchr(p, ':');
    size_t n = colon ? (size_t)(colon - p) : strlen(p);
    char cand[PATH_MAX];
    snprintf(cand, sizeof cand, "%.*s/%s", (int)n, n ? p : ".", file);
    if (stat(cand, &st) == 0 && S_ISREG(st.st_mode) && access(cand, X_OK) == 0) {
      resolved_exe = strdup(cand);
      return;
    }
    if (!colon) break;
    p = colon + 1;
  }
  die(ENOENT, "exec: \"%s\": executable file not found in $PATH", file);
}

/* argv then env from fields [first+1 .. ], field first is argc */
static void split_argv_env(struct op *o, uint32_t first, char ***argv, char ***envp) {
  uint32_t argc = (uint32_t)I(o, first);
  if (first + 1 + argc > o->nf) die(EPROTO, "plan: bad argc");
  uint32_t envc = o->nf - first - 1 - argc;
  *argv = calloc(argc + 1, sizeof(char *));
  *envp = calloc(envc + 1, sizeof(char *));
  for (uint32_t k = 0; k < argc; k++) (*argv)[k] = (char *)S(o, first + 1 + k);
  for (uint32_t k = 0; k < envc; k++) (*envp)[k] = (char *)S(o, first + 1 + argc + k);
}

static void op_hook(struct op *o) {
  int64_t timeout = I(o, 0);
  const char *path = S(o, 1);
  char **argv, **envp;
  split_argv_env(o, 2, &argv, &envp);
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) die(errno, "hook pipe");
  pid_t pid = fork();
  if (pid < 0) die(errno, "fork hook");
  if (pid == 0) {
    dup2(p[0], 0);
    execve(path, argv, envp);
    _exit(127);
  }
  close(p[0]);
  signal(SIGPIPE, SIG_IGN);
  write_all(p[1], state_json, strlen(state_json));
  close(p[1]);
  struct timespec t0, now, nap = {0, 5 * 1000 * 1000};
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int status;
  for (;;) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0 && errno != EINTR) die(errno, "wait for hook %s", path);
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (timeout > 0 && now.tv_sec - t0.tv_sec >= timeout) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      die(ETIMEDOUT, "hook %s timed out after %llds", path, (long long)timeout);
    }
    nanosleep(&nap, NULL);
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    die(ECANCELED, "hook %s failed (status %d)", path, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
}

static void run_child_op(struct op *o) {
  switch (o->code) {
  case OP_BECOME_ROOT:
    if (setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0) die(errno, "become root in the user namespace");
    break;
  case OP_UNSHARE:
    if (unshare((int)I(o, 0)) < 0) die(errno, "unshare");
    break;
  case OP_KEYRING:
    if (syscall(SYS_keyctl, 1 /* KEYCTL_JOIN_SESSION_KEYRING */, S(o, 0)) < 0 &&
        !(I(o, 1) && (errno == EACCES || errno == ENOSYS)))
      die(errno, "join session keyring %s", S(o, 0));
    break;
  case OP_SETSID:
    if (setsid() < 0) die(errno, "setsid");
    break;
  case OP_OOM_SCORE: {
    char v[32];
    snprintf(v, sizeof v, "%lld", (long long)I(o, 0));
    write_file("/proc/self/oom_score_adj", v, "oom_score_adj");
    break;
  }
  case OP_HOSTNAME:
    if (sethostname(S(o, 0), o->f[0].len) < 0) die(errno, "sethostname");
    break;
  case OP_DOMAINNAME:
    if (setdomainname(S(o, 0), o->f[0].len) < 0) die(errno, "setdomainname");
    break;
  case OP_LO_UP:
    op_lo_up();
    break;
  case OP_ROOTFS: {
    const char *rootfs = S(o, 0);
    if (mount(NULL, "/", NULL, (unsigned long)I(o, 1), NULL) < 0) die(errno, "set / propagation");
    if (mount(rootfs, rootfs, NULL, MS_BIND | MS_REC, NULL) < 0) die(errno, "bind rootfs %s", rootfs);
    root_fd = open(rootfs, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (root_fd < 0) die(errno, "open rootfs %s", rootfs);
    break;
  }
  case OP_MOUNT:
    op_mount(o);
    break;
  case OP_REMOUNT: {
    int fd = open_in_root(S(o, 0), O_PATH);
    if (fd < 0) die(errno, "remount %s", S(o, 0));
    remount_bind(S(o, 0), fd, (unsigned long)I(o, 1));
    close(fd);
    break;
  }
  case OP_PROPAGATE: {
    int fd = open_in_root(S(o, 0), O_PATH);
    if (fd < 0 || mount(NULL, fdpath(fd, 0), NULL, (unsigned long)I(o, 1), NULL) < 0)
      die(errno, "set propagation of %s", S(o, 0));
    close(fd);
    break;
  }
  case OP_MKNOD:
    op_mknod(o);
    break;
  case OP_BIND_DEV: {
    int fd = ensure_in_root(S(o, 1), 1);
    if (fd < 0 || mount(S(o, 0), fdpath(fd, 0), NULL, MS_BIND, NULL) < 0) die(errno, "bind device %s", S(o, 0));
    close(fd);
    break;
  }
  case OP_SYMLINK:
    op_symlink(o);
    break;
  case OP_HOOKS_SYNC:
    if (send_msg(MSG_HOOKS, NULL, 0) < 0) _exit(1);
    free(recv_msg(MSG_HOOKS_DONE, NULL));
    break;
  case OP_PIVOT:
    op_pivot(o);
    break;
  case OP_ROOT_PROPAGATION:
    if (mount(NULL, "/", NULL, (unsigned long)I(o, 0), NULL) < 0) die(errno, "set rootfs propagation");
    break;
  case OP_SYSCTL: {
    char p[PATH_MAX];
    snprintf(p, sizeof p, "/proc/sys/%s", S(o, 0));
    write_file(p, S(o, 1), S(o, 0));
    break;
  }
  case OP_MASK:
    op_mask(o);
    break;
  case OP_READONLY:
    op_readonly(o);
    break;
  case OP_ROOT_RO:
    remount_bind("/", root_fd, MS_RDONLY);
    break;
  case OP_RLIMIT: {
    struct rlimit rl = {(rlim_t)I(o, 1), (rlim_t)I(o, 2)};
    if (setrlimit((int)I(o, 0), &rl) < 0) die(errno, "setrlimit");
    break;
  }
  case OP_UMASK:
    umask((mode_t)I(o, 0));
    break;
  case OP_BOUNDING:
    op_bounding(o);
    break;
  case OP_USER:
    op_user(o);
    break;
  case OP_CAPS:
    op_caps(o);
    break;
  case OP_NO_NEW_PRIVS:
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) die(errno, "no_new_privs");
    break;
  case OP_CHDIR:
    if (chdir(S(o, 0)) < 0) die(errno, "chdir %s", S(o, 0));
    break;
  case OP_LOOKUP:
    op_lookup(o);
    break;
  case OP_READY_SYNC: {
    uint32_t len;
    if (send_msg(MSG_READY, NULL, 0) < 0) _exit(1);
    state_json = recv_msg(MSG_CONTINUE, &len);
    size_t sl = strlen(state_json);
    if (sl < len) listener_msg = state_json + sl + 1;
    break;
  }
  case OP_FIFO_WAIT: {
    close(sync_fd);
    sync_fd = -1;
    int w = open(fdpath(fifo_fd, 0), O_WRONLY | O_CLOEXEC);
    if (w < 0) die(errno, "open exec.fifo");
    if (write_all(w, "0", 1) < 0) die(errno, "write exec.fifo");
    close(w);
    close(fifo_fd);
    break;
  }
  case OP_HOOK:
    op_hook(o);
    break;
  case OP_CLOEXEC_FROM:
    if (syscall(SYS_close_range, (unsigned)I(o, 0), ~0U, CLOSE_RANGE_CLOEXEC) < 0) {
      /* older kernels, or a seccomp profile without close_range: mark them one by one */
      int lim = (int)sysconf(_SC_OPEN_MAX);
      for (int fd = (int)I(o, 0); fd < lim && fd < 65536; fd++) {
        int fl = fcntl(fd, F_GETFD);
        if (fl >= 0) fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
      }
    }
    break;
  case OP_SECCOMP:
    op_seccomp(o);
    break;
  case OP_SECCOMP_LISTENER:
    op_seccomp_listener();
    break;
  case OP_PTY:
    op_pty(o);
    break;
  case OP_LSM:
    write_file(S(o, 0), S(o, 1), "set the LSM label for exec");
    break;
  case OP_EXEC: {
    char **argv, **envp;
    split_argv_env(o, 0, &argv, &envp);
    execve(resolved_exe ? resolved_exe : argv[0], argv, envp);
    die(errno, "exec %s", resolved_exe ? resolved_exe : argv[0]);
  }
  default:
    die(ENOSYS, "unknown plan op %u", o->code);
  }
}

/* ---- CVE-2019-5736: never run from a file the container could write -------- */

static void ensure_sealed(char **argv) {
  int self = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
  if (self < 0) return;
  int seals = fcntl(self, F_GET_SEALS);
  if (seals >= 0 && (seals & F_SEAL_WRITE)) {
    close(self);
    return;
  }
  int mfd = memfd_create("tsrunc-exec", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  struct stat st;
  if (mfd < 0 || fstat(self, &st) < 0) {
    fprintf(stderr, "tsrunc-exec: cannot make a sealed copy of itself: %s\n", strerror(errno));
    exit(1);
  }
  off_t off = 0;
  while (off < st.st_size) {
    ssize_t n = sendfile(mfd, self, &off, (size_t)(st.st_size - off));
    if (n <= 0) {
      fprintf(stderr, "tsrunc-exec: copy of itself failed: %s\n", strerror(errno));
      exit(1);
    }
  }
  close(self);
  if (fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0) {
    fprintf(stderr, "tsrunc-exec: cannot seal its copy: %s\n", strerror(errno));
    exit(1);
  }
  fexecve(mfd, argv, environ);
  fprintf(stderr, "tsrunc-exec: cannot run its sealed copy: %s\n", strerror(errno));
  exit(1);
}

int main(int argc, char **argv) {
  (void)argc;
  ensure_sealed(argv);
  const char *fdenv = getenv("_TSRUNC_SYNC_FD");
  if (!fdenv) {
    fprintf(stderr, "tsrunc-exec: run by tsrunc only (no sync fd)\n");
    return 2;
  }
  sync_fd = atoi(fdenv);
  unsetenv("_TSRUNC_SYNC_FD");
  uint32_t len;
  char *plan = recv_msg(MSG_PLAN, &len);
  parse_plan(plan, len);

  uint32_t k = 0;
  for (; k < nops; k++) {
    struct op *o = &ops[k];
    cur_op = (int)k;
    if (o->code == OP_SETNS) {
      int fd = open(S(o, 0), O_RDONLY | O_CLOEXEC);
      if (fd < 0) die(errno, "open namespace %s", S(o, 0));
      if (setns(fd, (int)I(o, 1)) < 0) die(errno, "join namespace %s", S(o, 0));
      close(fd);
    } else if (o->code == OP_TIMENS) {
      if (unshare(CLONE_NEWTIME) < 0) die(errno, "unshare time namespace");
      char buf[128];
      snprintf(buf, sizeof buf, "monotonic %lld %lld\nboottime %lld %lld\n", (long long)I(o, 0), (long long)I(o, 1),
               (long long)I(o, 2), (long long)I(o, 3));
      write_file("/proc/self/timens_offsets", buf, "time namespace offsets");
    } else if (o->code == OP_MKFIFO) {
      if (mkfifo(S(o, 0), (mode_t)I(o, 1)) < 0 || chmod(S(o, 0), (mode_t)I(o, 1)) < 0) die(errno, "mkfifo %s", S(o, 0));
    } else if (o->code == OP_OPEN_FIFO) {
      fifo_fd = open(S(o, 0), O_PATH | O_CLOEXEC); /* before user namespaces take our access away */
      if (fifo_fd < 0) die(errno, "open %s", S(o, 0));
    } else if (o->code == OP_CONSOLE) {
      if (*S(o, 0)) {
        console_fd = connect_unix(S(o, 0));
        if (console_fd < 0) die(errno, "connect to the console socket %s", S(o, 0));
      } else {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) die(errno, "socketpair for the pty");
        proxy_fd = sv[0];
        console_fd = sv[1];
      }
    } else if (o->code == OP_SECCOMP_CONNECT) {
      seccomp_sock = connect_unix(S(o, 0));
      if (seccomp_sock < 0) die(errno, "connect to the seccomp listener %s", S(o, 0));
    } else if (o->code == OP_CLONE) {
      break;
    } else {
      die(EPROTO, "op %u before clone", o->code);
    }
  }
  if (k == nops) die(EPROTO, "plan has no clone op");
  int foreground = (int)I(&ops[k], 1);
  pid_t pid = (pid_t)syscall(SYS_clone, (unsigned long)I(&ops[k], 0) | SIGCHLD, 0, 0, 0, 0);
  if (pid < 0) die(errno, "clone");
  if (pid == 0) {
    if (proxy_fd >= 0) close(proxy_fd);
    free(recv_msg(MSG_GO, NULL));
    for (k++; k < nops; k++) {
      cur_op = (int)k;
      run_child_op(&ops[k]);
    }
    cur_op = -1;
    die(EPROTO, "plan ended without exec");
  }
  int64_t p64 = pid;
  if (send_msg(MSG_PID, &p64, sizeof p64) < 0) {
    kill(pid, SIGKILL);
    _exit(1);
  }
  if (!foreground) _exit(0);
  /* foreground: stay the parent of init and pass on how it ended */
  close(sync_fd);
  if (console_fd >= 0) close(console_fd);
  if (seccomp_sock >= 0) close(seccomp_sock);
  for (int s = 1; s < 32; s++)
    if (s != SIGCHLD && s != SIGKILL && s != SIGSTOP) signal(s, SIG_IGN);
  if (proxy_fd >= 0) {
    int master = recv_fd(proxy_fd);
    close(proxy_fd);
    if (master >= 0) {
      proxy_pty(master);
      close(master);
    }
  }
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) _exit(255);
  if (WIFSIGNALED(status)) _exit(128 + WTERMSIG(status));
  _exit(WEXITSTATUS(status));
}
