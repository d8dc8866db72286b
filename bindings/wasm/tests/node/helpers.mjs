// Shared by the node tests and the benchmark: loads the nodejs-target package
// (bindings/generated/wasm/node, built by scripts/wasm.sh) with an in-memory IndexedDB
// (fake-indexeddb) installed as the global `indexedDB`, and waits for events with a
// deadline instead of sleeping.
import 'fake-indexeddb/auto';

import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);

/** The generated package (wasm-bindgen --target nodejs emits CommonJS). */
export const PKG = process.env.SOTTO_WASM_NODE_PKG ?? path.resolve(here, '../../../generated/wasm/node/sotto_wasm.js');
export const sotto = require(PKG);
export const { SottoClient } = sotto;

/** The relay every client uses: exactly its public_url. */
export const RELAY = process.env.SOTTO_RELAY_URL;
if (!RELAY) {
  throw new Error('SOTTO_RELAY_URL is not set: scripts/wasm.sh starts a relay and sets it');
}

/** How long one awaited event may take before the test fails. */
export const TIMEOUT_MS = Number(process.env.SOTTO_TEST_TIMEOUT_MS ?? 30000);

/** A fresh random 32-byte store key. */
export function storeKey() {
  return crypto.getRandomValues(new Uint8Array(32));
}

let dbs = 0;
/** An IndexedDB database name no other client in this process uses. */
export function dbName(label) {
  return `sotto-node-${label}-${process.pid}-${Date.now()}-${dbs++}`;
}

function describe(e) {
  return e.kind + (e.detail ? `(${e.detail})` : '');
}

/**
 * Reads events from `client` until `pred(event)` holds and returns that event. Fails
 * after `ms` milliseconds, or when the stream ends, naming what it saw. The deadline is an
 * AbortSignal passed to `nextEvent`, never a `Promise.race`: an event that arrives as the
 * deadline passes stays with the client for the next call instead of being lost.
 */
export async function waitEvent(client, what, pred, ms = TIMEOUT_MS) {
  const seen = [];
  const signal = AbortSignal.timeout(ms);
  for (;;) {
    let e;
    try {
      e = await client.nextEvent(signal);
    } catch (err) {
      if (err?.code === 'aborted') {
        throw new Error(`timed out after ${ms} ms waiting for ${what}; events seen: ${seen.join(', ') || 'none'}`);
      }
      throw err;
    }
    if (e === undefined) {
      throw new Error(`the event stream ended while waiting for ${what}; events seen: ${seen.join(', ') || 'none'}`);
    }
    seen.push(describe(e));
    if (pred(e)) {
      return e;
    }
    e.free();
  }
}

/**
 * Subscribes to a live list and keeps the list it describes: `list.items` (diffs applied
 * in order), `list.batches` (every batch received), `list.until(pred, what)` (waits until
 * `pred(items)` holds, with a deadline), and `list.cancel()`.
 */
export function track(live) {
  const list = { items: [], batches: [], waiters: [] };
  const check = () => {
    for (const w of list.waiters.slice()) {
      if (w.pred(list.items)) {
        list.waiters.splice(list.waiters.indexOf(w), 1);
        clearTimeout(w.timer);
        w.resolve(list.items);
      }
    }
  };
  list.subscription = live.subscribe((batch) => {
    list.batches.push(batch);
    sotto.applyDiffs(list.items, batch);
    check();
  });
  list.until = (pred, what, ms = TIMEOUT_MS) =>
    new Promise((resolve, reject) => {
      if (pred(list.items)) return resolve(list.items);
      const w = { pred, resolve };
      w.timer = setTimeout(() => {
        list.waiters.splice(list.waiters.indexOf(w), 1);
        reject(new Error(`timed out after ${ms} ms waiting for ${what}; the list: ${JSON.stringify(list.items, null, 1).slice(0, 4000)}`));
      }, ms);
      list.waiters.push(w);
    });
  list.cancel = () => list.subscription.cancel();
  return list;
}

/** Waits for a `messageReceived` event whose text is `text`; returns the message. */
export async function received(client, text, ms = TIMEOUT_MS) {
  const e = await waitEvent(client, `the message ${JSON.stringify(text)}`, (e) => e.kind === 'messageReceived' && e.message?.text === text, ms);
  const m = e.message;
  e.free();
  return m;
}

/** Asserts that `fn()` rejects (or throws) a SottoError with this code. */
export async function rejectsWith(fn, code) {
  await assert.rejects(
    async () => fn(),
    (e) => {
      assert.ok(e instanceof Error, `not an Error: ${e}`);
      assert.equal(e.name, 'SottoError', `${e.name}: ${e.message}`);
      assert.equal(e.code, code, `code ${e.code} (${e.message}), expected ${code}`);
      assert.equal(typeof e.retryable, 'boolean');
      return true;
    },
  );
}
