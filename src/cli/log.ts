/** Logging like runc: to --log (or stderr) as text or logrus-style JSON lines. */
import { appendFileSync } from 'node:fs';

export interface LogConfig {
  file?: string;
  format: 'text' | 'json';
  debug: boolean;
}

let config: LogConfig = { format: 'text', debug: false };

export function setLogConfig(c: LogConfig): void {
  config = c;
}

export function log(level: 'debug' | 'info' | 'warning' | 'error', message: string): void {
  if (level === 'debug' && !config.debug) return;
  // one line per message, whatever a config value smuggled in
  const msg = message.replace(/\r?\n/g, '\\n');
  const time = new Date().toISOString();
  const line = config.format === 'json'
    ? JSON.stringify({ level, msg, time }) + '\n'
    : `time="${time}" level=${level} msg=${JSON.stringify(msg)}\n`;
  if (config.file) {
    try {
      appendFileSync(config.file, line);
    } catch {
      /* a log we cannot write must not hide the message: stderr below still has it */
    }
  }
  if (level === 'error') process.stderr.write(`tsrunc: ${msg}\n`);
  else if (!config.file && (level === 'warning' || config.debug)) process.stderr.write(line);
}

/** A daemon's (serve's) account of what it does: to --log when given, else to stderr, always. */
export function event(message: string, level: 'info' | 'warning' | 'error' = 'info'): void {
  const msg = message.replace(/\r?\n/g, '\\n');
  const time = new Date().toISOString();
  const line = config.format === 'json' ? JSON.stringify({ level, msg, time }) + '\n' : `time="${time}" level=${level} msg=${JSON.stringify(msg)}\n`;
  if (config.file) {
    try {
      appendFileSync(config.file, line);
      return;
    } catch {
      /* then stderr */
    }
  }
  process.stderr.write(line);
}
