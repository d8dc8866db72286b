// The npm package's durable IndexedDB for node (npm/node/durable-idb.mjs): a process
// writing transactions is killed with SIGKILL, and a new process must find exactly the
// state after some transaction k at least as late as the last one it saw commit; torn
// journal records are cut off; compaction keeps the state and one journal; aborted
// transactions leave nothing.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { appendFileSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'durable-child.mjs');

/** The state after transactions 1..k (what durable-child.mjs's `transaction` writes). */
function model(k) {
  const kv = new Map();
  let auto = [];
  for (let j = 1; j <= k; j++) {
    kv.set(j, { n: j, bytes: [j & 255, (j >> 8) & 255, 7] });
    if (j % 3 === 0) kv.delete(j - 1);
    if (j % 10 === 0) for (let x = j - 9; x <= j - 5; x++) kv.delete(x);
    auto.push([j, j % 4, j]);
    if (j % 25 === 0) auto = [];
  }
  const keys = [...kv.keys()].sort((x, y) => x - y);
  return {
    count: k,
    kv: keys.map((key) => [key, kv.get(key)]),
    auto,
    byTag: auto.filter((r) => r[1] === 1).map((r) => r[0]),
  };
}

/** Runs the writer until it printed `atLeast` commits, then kills it; the last one seen. */
function writeAndKill(dir, from, atLeast, compact) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CHILD, dir, 'write', String(from), String(compact)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let last = from - 1;
    readline.createInterface({ input: child.stdout }).on('line', (l) => {
      last = JSON.parse(l).done;
      if (last >= from + atLeast - 1 && !child.killed) child.kill('SIGKILL');
    });
    child.on('exit', (code, signal) =>
      signal === 'SIGKILL' ? resolve(last) : reject(new Error(`the writer exited with ${code}`)),
    );
  });
}

function dump(dir, compact) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CHILD, dir, 'dump', String(compact)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`dump exited with ${code}`))));
  });
}

async function killedAndReopened(compact, rounds) {
  const dir = mkdtempSync(path.join(tmpdir(), 'sotto-durable-'));
  try {
    let next = 1;
    for (let round = 0; round < rounds; round++) {
      const seen = await writeAndKill(dir, next, 40 + 17 * round, compact);
      const state = await dump(dir, compact);
      assert.ok(state.count >= seen, `transaction ${seen} was reported committed, the store holds ${state.count}`);
      assert.deepEqual(state, model(state.count));
      next = state.count + 1;
    }
    return dir;
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

test('SIGKILL at any point keeps every reported commit and nothing aborted', { timeout: 120_000 }, async () => {
  const dir = await killedAndReopened(4 * 1024 * 1024, 3);
  rmSync(dir, { recursive: true, force: true });
});

test('compaction keeps the state and one journal, across kills', { timeout: 120_000 }, async () => {
  // A 2 KiB threshold: a new snapshot every few transactions.
  const dir = await killedAndReopened(2048, 3);
  try {
    const logs = readdirSync(dir).filter((f) => f.endsWith('.log'));
    assert.equal(logs.length, 1, `one journal, not ${logs}`);
    assert.ok(!readdirSync(dir).some((f) => f.endsWith('.tmp')));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a torn record at the journal end is cut off', { timeout: 120_000 }, async () => {
  const dir = await killedAndReopened(4 * 1024 * 1024, 1);
  try {
    const before = await dump(dir, 4 * 1024 * 1024);
    const log = path.join(dir, readdirSync(dir).find((f) => f.endsWith('.log')));
    const size = statSync(log).size;
    // A header that promises more than follows, as a crash mid-append leaves it.
    appendFileSync(log, Buffer.from([200, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9]));
    assert.deepEqual(await dump(dir, 4 * 1024 * 1024), before);
    assert.equal(statSync(log).size, size, 'the torn record is cut off');
    // Writing goes on after it.
    const seen = await writeAndKill(dir, before.count + 1, 5, 4 * 1024 * 1024);
    const after = await dump(dir, 4 * 1024 * 1024);
    assert.ok(after.count >= seen);
    assert.deepEqual(after, model(after.count));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
