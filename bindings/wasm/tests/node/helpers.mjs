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
 * after `ms` milliseconds, or when the stream ends, naming what it saw.
 */
export async function waitEvent(client, what, pred, ms = TIMEOUT_MS) {
  const seen = [];
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`timed out after ${ms} ms waiting for ${what}; events seen: ${seen.join(', ') || 'none'}`)),
      ms,
    );
  });
  try {
    for (;;) {
      const e = await Promise.race([client.nextEvent(), timeout]);
      if (e === undefined) {
        throw new Error(`the event stream ended while waiting for ${what}; events seen: ${seen.join(', ') || 'none'}`);
      }
      seen.push(describe(e));
      if (pred(e)) {
        return e;
      }
      e.free();
    }
  } finally {
    clearTimeout(timer);
  }
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
