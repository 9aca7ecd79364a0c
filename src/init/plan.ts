/** The init plan: a flat list of typed ops and its binary encoding (see native/plan.h). */
import { OP, PLAN_MAGIC } from './opcodes.js';

export type OpName = keyof typeof OP;
export type Field = number | bigint | string | Buffer;

export interface PlanOp {
  op: OpName;
  fields: Field[];
  /** What this op does for the user, with the config path it comes from: used in error messages. */
  what: string;
}

export interface InitPlan {
  ops: PlanOp[];
}

export function encodePlan(plan: InitPlan): Buffer {
  const parts: Buffer[] = [];
  const head = Buffer.alloc(8);
  head.writeUInt32LE(PLAN_MAGIC, 0);
  head.writeUInt32LE(plan.ops.length, 4);
  parts.push(head);
  for (const o of plan.ops) {
    const h = Buffer.alloc(8);
    h.writeUInt32LE(OP[o.op], 0);
    h.writeUInt32LE(o.fields.length, 4);
    parts.push(h);
    for (const f of o.fields) {
      if (typeof f === 'number' || typeof f === 'bigint') {
        const b = Buffer.alloc(9);
        b.write('i', 0, 'latin1');
        b.writeBigInt64LE(BigInt.asIntN(64, BigInt(f)), 1);
        parts.push(b);
      } else {
        const bytes = typeof f === 'string' ? Buffer.from(f, 'utf8') : f;
        const b = Buffer.alloc(5);
        b.write('s', 0, 'latin1');
        b.writeUInt32LE(bytes.length, 1);
        parts.push(b, bytes, Buffer.alloc(1));
      }
    }
  }
  return Buffer.concat(parts);
}

/** Decodes a plan (tests and debugging). */
export function decodePlan(buf: Buffer): { op: number; fields: (bigint | Buffer)[] }[] {
  if (buf.readUInt32LE(0) !== PLAN_MAGIC) throw new Error('bad plan magic');
  const n = buf.readUInt32LE(4);
  let p = 8;
  const out: { op: number; fields: (bigint | Buffer)[] }[] = [];
  for (let k = 0; k < n; k++) {
    const op = buf.readUInt32LE(p);
    const nf = buf.readUInt32LE(p + 4);
    p += 8;
    const fields: (bigint | Buffer)[] = [];
    for (let j = 0; j < nf; j++) {
      const kind = String.fromCharCode(buf[p]);
      p += 1;
      if (kind === 'i') {
        fields.push(buf.readBigInt64LE(p));
        p += 8;
      } else {
        const l = buf.readUInt32LE(p);
        fields.push(buf.subarray(p + 4, p + 4 + l));
        p += 4 + l + 1;
      }
    }
    out.push({ op, fields });
  }
  return out;
}
