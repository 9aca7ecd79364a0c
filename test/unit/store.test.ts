/** Container ids and signal names. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { validateId } from '../../src/state/store.js';
import { parseSignal } from '../../src/linux/tables.js';
import { TsruncError } from '../../src/errors.js';

test('validateId accepts plain ids', () => {
  for (const id of ['abc', 'a.b-c_d+e', 'A1', 'x'.repeat(255)]) assert.doesNotThrow(() => validateId(id), id);
});

test('validateId rejects empty, dot-dot, slash, too long and odd characters', () => {
  for (const id of ['', '.', '..', 'a/b', 'a..b', 'x'.repeat(300), 'a b', 'a\nb', 'é']) {
    assert.throws(() => validateId(id), (e: unknown) => {
      assert.ok(e instanceof TsruncError, JSON.stringify(id));
      return true;
    });
  }
});

test('parseSignal takes numbers, names with or without SIG, any case, and SIGRTMIN+n', () => {
  assert.equal(parseSignal('9'), 9);
  assert.equal(parseSignal('KILL'), 9);
  assert.equal(parseSignal('SIGKILL'), 9);
  assert.equal(parseSignal('sigterm'), 15);
  assert.equal(parseSignal('term'), 15);
  assert.equal(parseSignal('SIGRTMIN'), 34);
  assert.equal(parseSignal('SIGRTMIN+1'), 35);
  assert.equal(parseSignal('RTMAX-1'), 63);
  assert.equal(parseSignal('64'), 64);
});

test('parseSignal gives undefined for unknown names and out-of-range numbers', () => {
  for (const s of ['FOO', '0', '65', '', '-9', 'SIGRTMIN-1', 'SIGRTMAX+1']) assert.equal(parseSignal(s), undefined, s);
});
