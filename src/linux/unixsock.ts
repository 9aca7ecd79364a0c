/**
 * Sends a file descriptor to a unix socket by SCM_RIGHTS, from Node (which cannot), through
 * koffi: how a restored terminal's pty master reaches --console-socket, as runc sends it.
 */
import { TsruncError } from '../errors.js';
import { libc, libcFunc } from './libc.js';

const AF_UNIX = 1, SOCK_STREAM = 1, SOCK_CLOEXEC = 0o2000000, SOL_SOCKET = 1, SCM_RIGHTS = 1, MSG_NOSIGNAL = 0x4000;
const EINTR = 4;

let types: { msghdr: unknown } | undefined;
function structs(): { msghdr: unknown } {
  if (types) return types;
  const { koffi } = libc();
  const iovec = koffi.struct('tsrunc_iovec', { iov_base: 'void *', iov_len: 'size_t' });
  const msghdr = koffi.struct('tsrunc_msghdr', {
    msg_name: 'void *', msg_namelen: 'uint32', msg_iov: koffi.pointer(iovec), msg_iovlen: 'size_t',
    msg_control: 'void *', msg_controllen: 'size_t', msg_flags: 'int',
  });
  return (types = { msghdr });
}

/** Connects to the unix socket at `path` and sends `fd` with `data` (runc sends the pty's name). */
export function sendFdTo(path: string, fd: number, data: string): void {
  const { errno } = libc();
  const sys = (what: string) => new TsruncError(`${what} ${path}: errno ${errno()} (${errnoName(errno())})`);
  const pathBytes = Buffer.from(path);
  if (pathBytes.length >= 108) throw new TsruncError(`console socket path ${path}: longer than 107 bytes`);
  const s = libcFunc('int socket(int, int, int)')(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) throw sys('socket for');
  try {
    const addr = Buffer.alloc(110);
    addr.writeUInt16LE(AF_UNIX, 0);
    pathBytes.copy(addr, 2);
    if (libcFunc('int connect(int, void *, uint32)')(s, addr, addr.length) < 0) throw sys('connect to');
    structs();
    const body = Buffer.from(data.length ? data : ' ');
    // struct cmsghdr { size_t len; int level; int type; } + one int, padded to 8: CMSG_SPACE(4) = 24
    const control = Buffer.alloc(24);
    control.writeBigUInt64LE(20n, 0); // CMSG_LEN(sizeof(int))
    control.writeInt32LE(SOL_SOCKET, 8);
    control.writeInt32LE(SCM_RIGHTS, 12);
    control.writeInt32LE(fd, 16);
    const mh = {
      msg_name: null, msg_namelen: 0, msg_iov: { iov_base: body, iov_len: body.length }, msg_iovlen: 1,
      msg_control: control, msg_controllen: control.length, msg_flags: 0,
    };
    const sendmsg = libcFunc('intptr_t sendmsg(int, const tsrunc_msghdr *, int)');
    let n: number;
    do n = Number(sendmsg(s, mh, MSG_NOSIGNAL));
    while (n < 0 && errno() === EINTR);
    if (n < 0) throw sys('send the pty master to');
  } finally {
    libcFunc('int close(int)')(s);
  }
}

function errnoName(e: number): string {
  return ({ 2: 'no such file', 13: 'permission denied', 32: 'broken pipe', 88: 'not a socket', 104: 'connection reset', 111: 'connection refused' } as Record<number, string>)[e] ?? 'system error';
}
