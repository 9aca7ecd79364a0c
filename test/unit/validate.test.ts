/** config.json validation: a valid spec passes; each problem is one line naming the JSON path. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { validateSpec } from '../../src/spec/validate.js';
import { defaultSpec } from '../../src/spec/default.js';
import { SpecError } from '../../src/errors.js';

/** The default spec as parsed JSON, changed by `edit`. */
function config(edit: (s: any) => void = () => {}): any {
  const s = JSON.parse(JSON.stringify(defaultSpec()));
  s.process.terminal = false;
  edit(s);
  return s;
}

function rejects(edit: (s: any) => void, prefix: string): void {
  assert.throws(() => validateSpec(config(edit)), (e: unknown) => {
    assert.ok(e instanceof SpecError, `a SpecError, got ${String(e)}`);
    assert.ok(e.message.startsWith(prefix), `"${e.message}" starts with "${prefix}"`);
    assert.ok(!e.message.includes('\n'), `one line: ${JSON.stringify(e.message)}`);
    return true;
  });
}

test('the default spec is valid, and so is the rootless one', () => {
  const s = config();
  assert.equal(validateSpec(s), s);
  validateSpec(JSON.parse(JSON.stringify(defaultSpec({ rootless: true, uid: 1000, gid: 1000 }))));
});

const cases: [string, (s: any) => void, string][] = [
  ['empty process.args', (s) => { s.process.args = []; }, 'process.args: must be a non-empty array'],
  ['missing process.args', (s) => { delete s.process.args; }, 'process.args: must be a non-empty array'],
  ['missing process.cwd', (s) => { delete s.process.cwd; }, 'process.cwd: is required'],
  ['relative process.cwd', (s) => { s.process.cwd = 'home'; }, 'process.cwd: must be an absolute path'],
  ['unknown namespace type', (s) => { s.linux.namespaces[0].type = 'foo'; }, 'linux.namespaces[0].type: unknown namespace type "foo"'],
  ['duplicate namespace', (s) => { s.linux.namespaces.push({ type: 'pid' }); }, 'linux.namespaces[5].type: namespace "pid" appears twice'],
  ['unknown capability', (s) => { s.process.capabilities.bounding.push('CAP_FOO'); },
    'process.capabilities.bounding[3]: unknown capability "CAP_FOO"'],
  ['unknown rlimit', (s) => { s.process.rlimits[0].type = 'RLIMIT_FOO'; }, 'process.rlimits[0].type: unknown rlimit "RLIMIT_FOO"'],
  ['soft rlimit above hard', (s) => { s.process.rlimits[0].soft = 2048; }, 'process.rlimits[0]: soft limit 2048 is above hard limit 1024'],
  ['relative mount destination', (s) => { s.mounts[2].destination = 'dev/pts'; }, 'mounts[2].destination: must be an absolute path'],
  ['cgroupsPath with ..', (s) => { s.linux.cgroupsPath = '/tsrunc/../../etc'; }, 'linux.cgroupsPath: must not contain ".."'],
  ['hostname without a uts namespace', (s) => { s.linux.namespaces = s.linux.namespaces.filter((n: any) => n.type !== 'uts'); },
    'hostname: needs a new uts namespace'],
  ['ociVersion 2.0.0', (s) => { s.ociVersion = '2.0.0'; }, 'ociVersion: unsupported version "2.0.0"'],
  ['missing ociVersion', (s) => { delete s.ociVersion; }, 'ociVersion: is required'],
  ['unknown hook kind', (s) => { s.hooks = { preStart: [{ path: '/bin/true' }] }; }, 'hooks.preStart: unknown hook kind'],
  ['relative hook path', (s) => { s.hooks = { prestart: [{ path: 'true' }] }; }, 'hooks.prestart[0].path: must be an absolute path'],
  ['bind mount without source', (s) => { s.mounts.push({ destination: '/x', options: ['rbind'] }); }, 'mounts[7].source: is required for a bind mount'],
  ['id mappings without a user namespace', (s) => { s.linux.uidMappings = [{ containerID: 0, hostID: 0, size: 1 }]; },
    'linux.uidMappings: id mappings need a user namespace'],
  ['missing root', (s) => { delete s.root; }, 'root: is required'],
];

for (const [name, edit, prefix] of cases) test(`rejects ${name}`, () => rejects(edit, prefix));

test('rejects a config that is not an object', () => {
  assert.throws(() => validateSpec([]), /^SpecError: \(config\.json\): must be an object$/);
  assert.throws(() => validateSpec(null), /^SpecError: \(config\.json\): is required$/);
});

test('hostname or domainname without a uts namespace is refused, even when empty', () => {
  const noUts = (s: any) => (s.linux.namespaces = s.linux.namespaces.filter((n: any) => n.type !== 'uts'));
  rejects((s) => { noUts(s); s.hostname = ''; }, 'hostname: needs a new uts namespace');
  rejects((s) => { noUts(s); delete s.hostname; s.domainname = 'x'; }, 'domainname: needs a new uts namespace');
});
