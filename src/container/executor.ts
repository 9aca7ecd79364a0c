/** Where the native executor lives: native/build in the package. */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { posix } from 'node:path';

let cached: string | undefined;

/** The package directory: set by bin/tsrunc (the bundled CLI), else found from this module. */
function packageDir(): string {
  const fromBin = (globalThis as { __tsruncHome?: string }).__tsruncHome;
  if (fromBin) return fromBin;
  let dir = posix.dirname(fileURLToPath(import.meta.url)); // dist/src/container
  for (let up = 0; up < 5 && !existsSync(posix.join(dir, 'package.json')); up++) dir = posix.dirname(dir);
  return dir;
}

export function executorPath(): string {
  return (cached ??= posix.join(packageDir(), 'native', 'build', 'tsrunc-exec'));
}
