/** tsrunc's version and the OCI runtime-spec version it implements. */
export const VERSION = '0.1.0';
export const SPEC_VERSION = '1.2.0';

/** How to run this tsrunc again as a command (serve's restores, a lazy dump's process): node and bin/tsrunc. */
export function selfCommand(): [string, string] {
  const home = (globalThis as { __tsruncHome?: string }).__tsruncHome;
  return [process.execPath, home ? `${home}/bin/tsrunc` : process.argv[1]];
}
