/**
 * CRIU's stats-dump / stats-restore files: one StatsEntry protobuf after the image magic.
 * Every field we read is a varint, so a small decoder does (no protobuf library for ~20 numbers).
 */
import { readFileSync } from 'node:fs';

/** Field numbers of dump_stats_entry and restore_stats_entry (CRIU's images/stats.proto); times in microseconds. */
const DUMP_FIELDS: Record<number, string> = {
  1: 'freezing_time', 2: 'frozen_time', 3: 'memdump_time', 4: 'memwrite_time', 5: 'pages_scanned',
  6: 'pages_skipped_parent', 7: 'pages_written', 8: 'irmap_resolve', 9: 'pages_lazy', 10: 'page_pipes',
  11: 'page_pipe_bufs', 12: 'shpages_scanned', 13: 'shpages_skipped_parent', 14: 'shpages_written',
};
const RESTORE_FIELDS: Record<number, string> = {
  1: 'pages_compared', 2: 'pages_skipped_cow', 3: 'forking_time', 4: 'restore_time', 5: 'pages_restored',
};

export type CriuStats = Record<string, number>;

function varint(b: Buffer, at: number): [number, number] {
  let v = 0;
  let mul = 1;
  for (let i = at; i < b.length && i < at + 10; i++) {
    v += (b[i] & 0x7f) * mul;
    mul *= 128;
    if ((b[i] & 0x80) === 0) return [v, i + 1];
  }
  throw new Error('bad varint');
}

/** The varint fields of a message, by name; other wire types are skipped. */
function decode(b: Buffer, names: Record<number, string>): CriuStats {
  const out: CriuStats = {};
  let at = 0;
  while (at < b.length) {
    const [key, next] = varint(b, at);
    at = next;
    const field = Math.floor(key / 8);
    const wire = key & 7;
    if (wire === 0) {
      const [v, n] = varint(b, at);
      at = n;
      if (names[field]) out[names[field]] = v;
    } else if (wire === 2) {
      const [len, n] = varint(b, at);
      at = n + len;
    } else if (wire === 1) at += 8;
    else if (wire === 5) at += 4;
    else throw new Error(`wire type ${wire}`);
  }
  return out;
}

/** Reads stats-dump or stats-restore; undefined when it is missing or not what we expect. */
export function readCriuStats(path: string): CriuStats | undefined {
  let b: Buffer;
  try {
    b = readFileSync(path);
  } catch {
    return undefined;
  }
  try {
    // u32 service magic, u32 stats magic, then u32 length + StatsEntry { dump = 1; restore = 2 }
    for (const skip of [8, 4]) {
      if (b.length < skip + 4) continue;
      const len = b.readUInt32LE(skip);
      if (skip + 4 + len !== b.length) continue;
      const msg = b.subarray(skip + 4);
      const [key, at] = varint(msg, 0);
      const [sub, start] = varint(msg, at);
      const inner = msg.subarray(start, start + sub);
      if (key === (1 << 3 | 2)) return decode(inner, DUMP_FIELDS);
      if (key === (2 << 3 | 2)) return decode(inner, RESTORE_FIELDS);
    }
  } catch {
    return undefined;
  }
  return undefined;
}
