/** Where the native executor lives: native/build next to the package's dist/. */
import { fileURLToPath } from 'node:url';
import { posix } from 'node:path';

export function executorPath(): string {
  const here = posix.dirname(fileURLToPath(import.meta.url)); // dist/src/container
  return posix.join(here, '..', '..', '..', 'native', 'build', 'tsrunc-exec');
}
