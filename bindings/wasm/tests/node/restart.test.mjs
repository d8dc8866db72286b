// Kill and restart: Alice runs in a child node process with a durable store
// (the npm package's npm/node/durable-idb.mjs: fake-indexeddb with a journal of committed
// transactions, fsynced per commit). While she sends
// "a-1".."a-N" and Bob (this process) sends "b-1".."b-N", her process is killed with
// SIGKILL; a new process opens her store again. Nothing is lost (every b-i reaches her,
// every a-i her store kept reaches Bob, each sent) and nothing is shown twice (every text
// is once in each timeline).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { RELAY, SottoClient, TIMEOUT_MS, dbName, storeKey, track } from './helpers.mjs';

const PEER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'peer.mjs');
const N = 20;

function peer(...args) {
  const child = spawn(process.execPath, [...process.execArgv.filter((a) => a.startsWith('--experimental')), PEER, ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: process.env,
  });
  const lines = [];
  const waiters = [];
  readline.createInterface({ input: child.stdout }).on('line', (l) => {
    const o = JSON.parse(l);
    lines.push(o);
    for (const w of waiters.slice()) if (w.pred(o)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(o); }
  });
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const line = (pred, what) =>
    new Promise((resolve, reject) => {
      const found = lines.find(pred);
      if (found) return resolve(found);
      waiters.push({ pred, resolve });
      setTimeout(() => reject(new Error(`the peer printed no ${what}: ${JSON.stringify(lines)}`)), TIMEOUT_MS * 2);
      exited.then(({ code, signal }) => reject(new Error(`the peer exited (${code ?? signal}) before ${what}`)));
    });
  return { child, lines, line, exited };
}

test('a client killed with SIGKILL mid-traffic restarts with nothing lost and nothing twice', { timeout: 5 * 60 * 1000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'sotto-restart-'));
  const bob = await SottoClient.createAccount(dbName('restart-bob'), storeKey(), RELAY);
  try {
    const first = peer('create', dir, bob.contactLink, String(N));
    const { account } = await first.line((o) => o.account, 'account');
    await bob.addContact(account);
    const atBob = track(bob.timeline(account, 10000));
    // Bob writes while Alice writes; Alice is killed half-way through her sends.
    const bobSends = (async () => {
      for (let i = 1; i <= N; i++) {
        await bob.sendMessage(account, `b-${i}`);
        await new Promise((r) => setTimeout(r, 15));
      }
    })();
    await first.line((o) => o.sent === `a-${N / 2}`, `a-${N / 2}`);
    first.child.kill('SIGKILL');
    assert.equal((await first.exited).signal, 'SIGKILL');
    await bobSends;

    const second = peer('resume', dir, bob.accountId, String(N));
    const { timeline } = await second.line((o) => o.timeline, 'its timeline');
    await second.exited;

    const texts = timeline.map((i) => i.text);
    assert.equal(new Set(texts).size, texts.length, `shown twice at Alice: ${texts}`);
    assert.equal(new Set(timeline.map((i) => i.key)).size, timeline.length);
    for (let i = 1; i <= N; i++) assert.ok(texts.includes(`b-${i}`), `b-${i} lost at Alice: ${texts}`);
    const mine = timeline.filter((i) => i.mine);
    // Her store kept at least what she reported queued before she was killed.
    for (const o of first.lines.filter((o) => o.sent)) {
      assert.ok(mine.some((i) => i.text === o.sent), `${o.sent} lost from Alice's store`);
    }
    for (const i of mine) assert.notEqual(i.state, 'queued', `${i.text} still queued`);

    const want = mine.map((i) => i.text);
    const items = await atBob.until((items) => want.every((t) => items.some((i) => i.message.text === t)), `Alice's ${want.length} messages at Bob`);
    const got = items.map((i) => i.message.text).filter((t) => t.startsWith('a-'));
    assert.equal(new Set(got).size, got.length, `shown twice at Bob: ${got}`);
    atBob.cancel();
  } finally {
    await bob.shutdown();
    rmSync(dir, { recursive: true, force: true });
  }
});
