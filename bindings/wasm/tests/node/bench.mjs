// Benchmark (scripts/wasm.sh runs it with SOTTO_BENCH=1): one client of the
// nodejs-target package sends 1,000 messages to another through the relay at
// SOTTO_RELAY_URL; the time runs from the first send until the receiver has all of them.
// The figures go into docs/benchmarks.md.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { RELAY, SottoClient, dbName, storeKey, waitEvent } from './helpers.mjs';

const COUNT = Number(process.env.SOTTO_BENCH_MESSAGES ?? 1000);

test(`${COUNT} messages from one wasm client to another (node)`, async () => {
  const alice = await SottoClient.createAccount(dbName('bench-alice'), storeKey(), RELAY);
  const bob = await SottoClient.createAccount(dbName('bench-bob'), storeKey(), RELAY);
  try {
    await alice.addContact(bob.accountId);
    await bob.addContact(alice.accountId);

    const want = new Set(Array.from({ length: COUNT }, (_, i) => `bench ${i}`));
    const t0 = performance.now();
    const receiving = (async () => {
      const deadline = Math.max(60000, COUNT * 200);
      while (want.size > 0) {
        const e = await waitEvent(bob, `${want.size} more messages`, (e) => e.kind === 'messageReceived', deadline);
        want.delete(e.message.text);
        e.free();
      }
      return performance.now();
    })();
    for (let i = 0; i < COUNT; i++) {
      (await alice.sendText(bob.accountId, `bench ${i}`)).free();
    }
    const queued = performance.now();
    const done = await receiving;
    assert.equal(want.size, 0);

    const ms = done - t0;
    const line =
      `wasm (node ${process.versions.node}): ${COUNT} messages sent and received in ${(ms / 1000).toFixed(2)} s ` +
      `(${Math.round((COUNT * 1000) / ms)} messages/s; all queued after ${(queued - t0).toFixed(0)} ms)`;
    console.log(line);
    if (process.env.SOTTO_BENCH_OUT) {
      const { appendFileSync } = await import('node:fs');
      appendFileSync(process.env.SOTTO_BENCH_OUT, `${line}\n`);
    }
  } finally {
    await alice.shutdown();
    await bob.shutdown();
  }
});
