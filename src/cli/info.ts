/** spec and features. */
import { Command } from 'commander';
import { existsSync, writeFileSync } from 'node:fs';
import { posix, resolve } from 'node:path';
import { TsruncError } from '../errors.js';
import { defaultSpec } from '../spec/default.js';
import { CAPABILITIES, MOUNT_FLAG_OPTIONS, NAMESPACES, PROPAGATION_OPTIONS } from '../linux/tables.js';
import { action } from './main.js';

export function registerInfo(program: Command): void {
  program.command('spec').description('write a default config.json (like runc spec)')
    .option('-b, --bundle <dir>', 'where to write config.json', '.')
    .option('--rootless', 'a config for a container run by an unprivileged user', false)
    .action(action((o: { bundle: string; rootless: boolean }) => {
      const dir = resolve(o.bundle);
      if (!existsSync(dir)) throw new TsruncError(`bundle ${dir}: no such directory`);
      const file = posix.join(dir, 'config.json');
      if (existsSync(file)) throw new TsruncError(`${file} exists; remove it first`);
      const uid = process.getuid?.() ?? 0, gid = process.getgid?.() ?? 0;
      writeFileSync(file, JSON.stringify(defaultSpec({ rootless: o.rootless, uid, gid }), null, '\t'), { mode: 0o666 });
    }));

  program.command('features').description('print what this runtime supports, as JSON')
    .action(action(() => {
      const features = {
        ociVersionMin: '1.0.0',
        ociVersionMax: '1.2.0',
        hooks: ['prestart', 'createRuntime', 'createContainer', 'startContainer', 'poststart', 'poststop'],
        mountOptions: [...Object.keys(MOUNT_FLAG_OPTIONS), ...Object.keys(PROPAGATION_OPTIONS)].sort(),
        linux: {
          namespaces: Object.keys(NAMESPACES),
          capabilities: [...CAPABILITIES],
          cgroup: { v1: true, v2: true, systemd: false, systemdUser: false },
          seccomp: { enabled: false },
          apparmor: { enabled: false },
          selinux: { enabled: false },
          intelRdt: { enabled: false },
        },
        annotations: { 'org.opencontainers.runtime-spec.features': 'tsrunc' },
      };
      process.stdout.write(JSON.stringify(features, null, 2) + '\n');
    }));
}
