/** exec, terminals, capabilities, users, seccomp: real processes in real containers. */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { chmodSync, existsSync, readFileSync, readlinkSync, writeFileSync, chownSync } from 'node:fs';
import { posix } from 'node:path';
import { REPO, TSRUNC, World, isOneLineError, until } from './helpers.js';
import type { Spec } from '../../src/spec/types.js';

const w = new World('exec');
after(() => w.cleanup());

const BUILD = posix.join(REPO, 'native', 'build');
const defaultProfile = () => JSON.parse(readFileSync(posix.join(REPO, 'fixtures', 'seccomp', 'default.json'), 'utf8'));
let n = 0;
const newId = () => `x${++n}-${process.pid}`;

/** sysprobe (static) is bind-mounted at /probe. */
function withProbe(s: Spec): void {
  s.mounts!.push({ destination: '/probe', type: 'bind', source: posix.join(BUILD, 'probe'), options: ['rbind', 'ro'] });
}

/** A detached container running `sleep` whose id is returned. */
function sleeper(edit?: (s: Spec, dir: string) => void, own = false): string {
  const id = newId();
  const b = w.bundle(['sleep', '1000'], edit, own);
  const r = w.detached(['run', '-d', '--bundle', b, id]);
  assert.equal(r.code, 0, r.stderr);
  return id;
}

function statusLines(out: string): Record<string, string> {
  const m: Record<string, string> = {};
  for (const l of out.split('\n')) {
    const [k, v] = l.split(':\t');
    if (v !== undefined) m[k] = v.trim();
  }
  return m;
}

test('exec --user 1000:1000 --additional-gids 5 runs with exactly those ids; names work too', () => {
  const id = sleeper();
  let r = w.tsrunc(['exec', '--user', '1000:1000', '--additional-gids', '5', id, 'sh', '-c', 'id -u; id -g; id -G']);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.stdout.trim().split('\n'), ['1000', '1000', '1000 5']);
  r = w.tsrunc(['exec', '-u', 'user:tty', '-g', 'nogroup', id, 'sh', '-c', 'id -u; id -g; id -G; echo HOME=$HOME']);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.stdout.trim().split('\n'), ['1000', '5', '5 65534', 'HOME=/tmp']);
  r = w.tsrunc(['exec', '-u', 'nosuchuser', id, 'true']);
  assert.equal(r.code, 1);
  assert.ok(isOneLineError(r.stderr), r.stderr);
  assert.match(r.stderr, /no user "nosuchuser" in the container's \/etc\/passwd/);
});

test('exec joins every namespace and the cgroup of the container; exit code, env, cwd', () => {
  const id = sleeper((s) => {
    s.hostname = 'execbox';
  });
  const pid = w.state(id).pid;
  const kinds = ['mnt', 'pid', 'net', 'ipc', 'uts', 'cgroup'];
  const r = w.tsrunc(['exec', '-e', 'FOO=bar', '-e', 'PATH=/bin', '--cwd', '/tmp', id, 'sh', '-c',
    `for k in ${kinds.join(' ')}; do readlink /proc/self/ns/$k; done; hostname; echo FOO=$FOO; echo PATH=$PATH; pwd; cat /proc/self/cgroup | grep memory`]);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  kinds.forEach((k, i) => assert.equal(lines[i], readlinkSync(`/proc/${pid}/ns/${k}`), `${k} namespace`));
  assert.deepEqual(lines.slice(kinds.length, kinds.length + 4), ['execbox', 'FOO=bar', 'PATH=/bin', '/tmp']);
  // the process sits in init's cgroup (a cgroup namespace shows it as /)
  assert.equal(lines[kinds.length + 4], readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n').find((l) => l.includes(':memory:')));
  assert.equal(w.tsrunc(['exec', id, 'sh', '-c', 'exit 7']).code, 7);
  assert.equal(w.tsrunc(['exec', id, 'sh', '-c', 'kill -9 $$']).code, 137);
});

test('exec -d with --pid-file leaves the process running in the container; ps lists it', async () => {
  const id = sleeper();
  const pidFile = posix.join(w.dir, `exec-${id}.pid`);
  const r = w.detached(['exec', '-d', '--pid-file', pidFile, id, 'sleep', '777']);
  assert.equal(r.code, 0, r.stderr);
  const pid = Number(readFileSync(pidFile, 'utf8'));
  assert.ok(pid > 0);
  assert.equal(readFileSync(`/proc/${pid}/cmdline`, 'utf8'), 'sleep\u0000777\u0000');
  const ps = w.tsrunc(['ps', '--format', 'json', id]);
  assert.ok((JSON.parse(ps.stdout) as number[]).includes(pid), ps.stdout);
  assert.equal(w.tsrunc(['delete', '--force', id]).code, 0);
  await until('the exec\'d process to die with the container', () => {
    try {
      return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1][0] === 'Z';
    } catch {
      return true;
    }
  });
});

test('exec into a stopped, unknown or not-given container, and bad flags, are clear errors', async () => {
  const id = newId();
  const b = w.bundle(['true']);
  assert.equal(w.detached(['create', '--bundle', b, id]).code, 0);
  assert.equal(w.tsrunc(['start', id]).code, 0);
  await until('the container to stop', () => w.state(id).status === 'stopped');
  const cases: [string[], RegExp][] = [
    [['exec', id, 'true'], /cannot exec in container ".*": it is stopped/],
    [['exec', 'ghost', 'true'], /container "ghost" does not exist/],
    [['exec', id], /no command given|is stopped/],
    [['exec', '-d', '-t', id, 'true'], /cannot allocate tty if tsrunc will detach without setting console socket|is stopped/],
  ];
  for (const [args, re] of cases) {
    const r = w.tsrunc(args);
    assert.equal(r.code, 1, `${args.join(' ')}: ${r.stderr}`);
    assert.ok(isOneLineError(r.stderr), r.stderr);
    assert.match(r.stderr, re);
  }
  const running = sleeper();
  for (const [args, re] of [
    [['exec', running], /no command given/],
    [['exec', '-d', '-t', running, 'true'], /cannot allocate tty if tsrunc will detach without setting console socket/],
    [['exec', '--console-socket', '/tmp/x.sock', running, 'true'], /cannot use console socket if tsrunc will not detach or allocate tty/],
    [['exec', '--cap', 'CAP_NOPE', running, 'true'], /--cap CAP_NOPE: not a capability/],
    [['exec', '--process', '/nonexistent.json', running], /--process \/nonexistent.json: no such file/],
  ] as [string[], RegExp][]) {
    const r = w.tsrunc(args);
    assert.equal(r.code, 1, `${args.join(' ')}: ${r.stderr}`);
    assert.ok(isOneLineError(r.stderr), r.stderr);
    assert.match(r.stderr, re);
  }
});

test('exec --process takes a whole OCI process; --cap adds to every set; caps equal the spec', () => {
  const caps = {
    bounding: ['CAP_KILL', 'CAP_NET_BIND_SERVICE', 'CAP_CHOWN'], effective: ['CAP_KILL', 'CAP_CHOWN'],
    permitted: ['CAP_KILL', 'CAP_CHOWN'], inheritable: ['CAP_KILL'], ambient: ['CAP_KILL'],
  };
  const id = sleeper((s) => {
    s.process!.capabilities = caps;
  });
  const show = 'grep -E "^(CapBnd|CapEff|CapPrm|CapInh|CapAmb|NoNewPrivs)" /proc/self/status';
  let r = w.tsrunc(['exec', id, 'sh', '-c', show]);
  assert.equal(r.code, 0, r.stderr);
  const initStatus = statusLines(readFileSync(`/proc/${w.state(id).pid}/status`, 'utf8'));
  const got = statusLines(r.stdout);
  for (const k of ['CapBnd', 'CapEff', 'CapPrm', 'CapInh', 'CapAmb', 'NoNewPrivs']) assert.equal(got[k], initStatus[k], k);
  assert.equal(got.CapBnd, '0000000000000421');
  assert.equal(got.CapAmb, '0000000000000020');
  r = w.tsrunc(['exec', '--cap', 'CAP_SYS_ADMIN', '--no-new-privs', id, 'sh', '-c', show]);
  assert.equal(r.code, 0, r.stderr);
  const added = statusLines(r.stdout);
  assert.equal(added.CapBnd, '0000000000200421'); // CAP_SYS_ADMIN = 21
  assert.equal(added.CapAmb, '0000000000200020');
  assert.equal(added.NoNewPrivs, '1');

  const procFile = posix.join(w.dir, 'process.json');
  writeFileSync(procFile, JSON.stringify({
    args: ['sh', '-c', 'id -u; echo $GREETING; pwd'], env: ['GREETING=hello', 'PATH=/bin'], cwd: '/etc',
    user: { uid: 65534, gid: 65534 }, capabilities: { bounding: ['CAP_KILL'] },
  }));
  r = w.tsrunc(['exec', '--process', procFile, id]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.stdout.trim().split('\n'), ['65534', 'hello', '/etc']);
  writeFileSync(procFile, JSON.stringify({ args: [], cwd: '/', user: { uid: 0, gid: 0 } }));
  r = w.tsrunc(['exec', '--process', procFile, id]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /--process .*process\.args: must be a non-empty array/);
});

test('with no_new_privs a setuid binary does not gain privileges', () => {
  // a static helper that prints its effective uid, made setuid root in the container's own rootfs
  const src = posix.join(w.dir, 'euid.c');
  writeFileSync(src, '#include <stdio.h>\n#include <unistd.h>\nint main(void){printf("euid=%d\\n",(int)geteuid());return 0;}\n');
  const id = sleeper((s, dir) => {
    const bin = posix.join(dir, 'rootfs', 'bin', 'euid');
    execFileSync('gcc', ['-static', '-O1', '-o', bin, src]);
    chownSync(bin, 0, 0);
    chmodSync(bin, 0o4755);
    s.process!.user = { uid: 1000, gid: 1000 };
    s.process!.noNewPrivileges = false;
  }, true);
  let r = w.tsrunc(['exec', id, '/bin/euid']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), 'euid=0', 'without no_new_privs setuid works');
  r = w.tsrunc(['exec', '--no-new-privs', id, '/bin/euid']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), 'euid=1000', 'with no_new_privs setuid is ignored');
});

test('default seccomp profile: unshare, mount, keyctl get EPERM; ordinary work and allowed personality values succeed', () => {
  const script = '/probe/sysprobe unshare mount keyctl setns personality=0x8 personality=0x1 personality=0xffffffff getpid clone3 mkdir=/dev/shm/d; ' +
    'echo hi | wc -c; ls / >/dev/null && echo ls-ok';
  for (const nnp of [true, false]) {
    const b = w.bundle(['sh', '-c', script], (s) => {
      withProbe(s);
      s.linux!.seccomp = defaultProfile();
      s.process!.noNewPrivileges = nnp;
    });
    const r = w.tsrunc(['run', '--bundle', b, newId()]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split('\n'), [
      'unshare=EPERM', 'mount=EPERM', 'keyctl=EPERM', 'setns=EPERM', 'personality=ok', 'personality=EPERM', 'personality=ok',
      'getpid=ok', 'clone3=ENOSYS', 'mkdir=ok', '3', 'ls-ok',
    ], `noNewPrivileges=${nnp}`);
  }
  // exec gets the container's filter too
  const id = sleeper((s) => {
    withProbe(s);
    s.linux!.seccomp = defaultProfile();
  });
  const r = w.tsrunc(['exec', id, '/probe/sysprobe', 'unshare', 'getpid']);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.stdout.trim().split('\n'), ['unshare=EPERM', 'getpid=ok']);
  const st = statusLines(readFileSync(`/proc/${w.state(id).pid}/status`, 'utf8'));
  assert.equal(st.Seccomp, '2');
});

test('a bad seccomp profile is refused at create with its JSON path; nothing is left', () => {
  const b = w.bundle(['true'], (s) => {
    s.linux!.seccomp = { defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: ['getpid'], action: 'SCMP_ACT_BOGUS' }] } as never;
  });
  const id = newId();
  const r = w.tsrunc(['run', '--bundle', b, id]);
  assert.equal(r.code, 1);
  assert.ok(isOneLineError(r.stderr), r.stderr);
  assert.match(r.stderr, /linux\.seccomp\.syscalls\[0\]\.action/);
  assert.equal(existsSync(posix.join(w.root, id)), false);
});

test('SCMP_ACT_NOTIFY sends the notify fd and the process state to listenerPath; the agent answers', async () => {
  const sock = posix.join(w.dir, 'seccomp.sock'), stateFile = posix.join(w.dir, 'seccomp-state.json');
  const agent = spawn(posix.join(BUILD, 'seccomp-listener'), [sock, stateFile], { stdio: ['ignore', 'pipe', 'inherit'] });
  let log = '';
  agent.stdout.on('data', (d) => (log += d));
  try {
    await until('the listener socket', () => existsSync(sock));
    const b = w.bundle(['/probe/sysprobe', 'mkdir=/tmp/n', 'getpid'], (s) => {
      withProbe(s);
      s.linux!.seccomp = {
        defaultAction: 'SCMP_ACT_ALLOW', listenerPath: sock, listenerMetadata: 'test-meta',
        syscalls: [{ names: ['mkdir', 'mkdirat'], action: 'SCMP_ACT_NOTIFY' }],
      } as never;
    });
    const id = newId();
    const r = w.tsrunc(['run', '--bundle', b, id]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split('\n'), ['mkdir=EXDEV', 'getpid=ok']);
    await until('the agent to log the notification', () => /notified (83|258)/.test(log));
    const msg = JSON.parse(readFileSync(stateFile, 'utf8'));
    assert.deepEqual(msg.fds, ['seccompFd']);
    assert.equal(msg.metadata, 'test-meta');
    assert.equal(msg.state.id, id);
    assert.ok(msg.pid > 0);
  } finally {
    agent.kill();
  }
});

test('terminal: the pty master goes to --console-socket; the listener reads output and sets the window size', async () => {
  const sock = posix.join(w.dir, 'console.sock'), out = posix.join(w.dir, 'console.out');
  const rt = spawn('sh', ['-c', `exec "$0" --rows 40 --cols 100 "$1" > "$2"`, posix.join(BUILD, 'recvtty'), sock, out], { stdio: 'inherit' });
  const done = new Promise<number>((resolve) => rt.once('exit', (c) => resolve(c ?? 1)));
  await until('the console socket', () => existsSync(sock));
  const b = w.bundle(['sh', '-c', 'sleep 0.3; tty; stty size; echo hello-from-pty'], (s) => {
    s.process!.terminal = true;
  });
  const id = newId();
  const r = w.detached(['run', '-d', '--console-socket', sock, '--bundle', b, id]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(await done, 0);
  const text = readFileSync(out, 'utf8').replace(/\r/g, '');
  assert.match(text, /^\/dev\/pts\/\d+$/m);
  assert.match(text, /^40 100$/m);
  assert.match(text, /^hello-from-pty$/m);
});

test('terminal: exec -t -d hands a pty to the console socket; consoleSize of a --process is applied', async () => {
  const id = sleeper();
  const sock = posix.join(w.dir, 'exec-console.sock'), out = posix.join(w.dir, 'exec-console.out');
  const rt = spawn('sh', ['-c', `exec "$0" "$1" > "$2"`, posix.join(BUILD, 'recvtty'), sock, out], { stdio: 'inherit' });
  const done = new Promise<number>((resolve) => rt.once('exit', (c) => resolve(c ?? 1)));
  await until('the console socket', () => existsSync(sock));
  const procFile = posix.join(w.dir, 'tty-process.json');
  writeFileSync(procFile, JSON.stringify({
    terminal: true, consoleSize: { height: 33, width: 77 }, args: ['sh', '-c', 'stty size; tty'], cwd: '/', user: { uid: 0, gid: 0 },
    env: ['PATH=/bin'],
  }));
  const r = w.detached(['exec', '--detach', '--tty', '--console-socket', sock, '--process', procFile, id]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(await done, 0);
  const text = readFileSync(out, 'utf8').replace(/\r/g, '');
  assert.match(text, /^33 77$/m);
  assert.match(text, /^\/dev\/pts\/\d+$/m);
});

test('terminal: a foreground run -t and exec -t proxy the pty; input reaches it, exit codes pass through', () => {
  const b = w.bundle(['sh', '-c', 'tty; read x; echo got=$x; exit 3'], (s) => {
    s.process!.terminal = true;
  });
  let r = spawnSync(TSRUNC, ['--root', w.root, 'run', '--bundle', b, newId()], { input: 'abc\n', encoding: 'utf8', timeout: 30000 });
  assert.equal(r.status, 3, r.stderr);
  assert.match(r.stdout, /\/dev\/pts\/\d+/);
  assert.match(r.stdout, /got=abc/);
  const id = sleeper();
  r = spawnSync(TSRUNC, ['--root', w.root, 'exec', '-t', id, 'sh', '-c', 'tty; read y; echo exec-got=$y; exit 4'], { input: 'xyz\n', encoding: 'utf8', timeout: 30000 });
  assert.equal(r.status, 4, r.stderr);
  assert.match(r.stdout, /exec-got=xyz/);
});

test('LSM labels asked for on a host without the LSM fail clearly', () => {
  const id = sleeper();
  const hasApparmor = existsSync('/sys/kernel/security/apparmor');
  const r = w.tsrunc(['exec', '--apparmor', 'tsrunc-test', id, 'true']);
  if (!hasApparmor) {
    assert.equal(r.code, 1);
    assert.ok(isOneLineError(r.stderr), r.stderr);
    assert.match(r.stderr, /AppArmor is not enabled on this host/);
  }
  if (!existsSync('/sys/fs/selinux/enforce')) {
    const r2 = w.tsrunc(['exec', '--process-label', 'system_u:system_r:container_t:s0', id, 'true']);
    assert.equal(r2.code, 1);
    assert.match(r2.stderr, /SELinux is not enabled on this host/);
  }
});
