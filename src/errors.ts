/** Errors that the CLI turns into one line and an exit code. Nothing below cli prints. */
export class TsruncError extends Error {
  constructor(message: string, readonly exitCode = 1) {
    super(message);
    this.name = 'TsruncError';
  }
}

/** A config.json problem, named by its JSON path. */
export class SpecError extends TsruncError {
  constructor(readonly jsonPath: string, problem: string) {
    super(`${jsonPath}: ${problem}`);
    this.name = 'SpecError';
  }
}

export function errnoMessage(e: unknown): string {
  if (e && typeof e === 'object' && 'code' in e && 'message' in e) {
    const m = String((e as { message: string }).message);
    return m.replace(/^[A-Z]+: /, '');
  }
  return e instanceof Error ? e.message : String(e);
}
