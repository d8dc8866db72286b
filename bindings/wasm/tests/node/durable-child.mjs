// A process on the durable IndexedDB (npm/node/durable-idb.mjs), for durable-store.test.mjs.
//
//   node durable-child.mjs <dir> write <from> <compactAfterBytes>
//        commits transaction k = from, from+1, ... (see `transaction`) for ever, printing
//        {done: k} after each commit; an aborted transaction beside each writes "ghost"
//   node durable-child.mjs <dir> dump <compactAfterBytes>
//        prints {count, kv, auto, byTag} and exits
import { installDurableIndexedDB } from '../../npm/node/durable-idb.mjs';

const [dir, mode, a, b] = process.argv.slice(2);
await installDurableIndexedDB(dir, { compactAfterBytes: Number(mode === 'write' ? b : a) });

const request = (req) =>
  new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
const done = (tx) =>
  new Promise((resolve, reject) => {
    tx.oncomplete = resolve;
    tx.onabort = () => reject(tx.error ?? new Error('aborted'));
  });

const open = indexedDB.open('t', 1);
open.onupgradeneeded = () => {
  const db = open.result;
  db.createObjectStore('kv');
  db.createObjectStore('meta');
  db.createObjectStore('auto', { keyPath: 'id', autoIncrement: true }).createIndex('by', 'tag');
};
const db = await request(open);
const say = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);

/** Transaction k: the same writes the test's model makes. */
function transaction(k) {
  const tx = db.transaction(['kv', 'meta', 'auto'], 'readwrite');
  const kv = tx.objectStore('kv');
  kv.put({ n: k, bytes: new Uint8Array([k & 255, (k >> 8) & 255, 7]) }, k);
  if (k % 3 === 0) kv.delete(k - 1);
  if (k % 10 === 0) kv.delete(IDBKeyRange.bound(k - 9, k - 5));
  tx.objectStore('auto').add({ tag: k % 4, k });
  if (k % 25 === 0) tx.objectStore('auto').clear();
  tx.objectStore('meta').put(k, 'count');
  return done(tx);
}

if (mode === 'write') {
  for (let k = Number(a); ; k++) {
    // An aborted transaction leaves nothing behind.
    const ghost = db.transaction(['kv'], 'readwrite');
    ghost.objectStore('kv').put('ghost', -k).onsuccess = () => ghost.abort(); // written, then undone
    await done(ghost).then(
      () => Promise.reject(new Error('the aborted transaction completed')),
      () => {},
    );
    await transaction(k);
    say({ done: k });
  }
} else {
  const tx = db.transaction(['kv', 'meta', 'auto'], 'readonly');
  const [count, keys, values, auto, byTag] = await Promise.all([
    request(tx.objectStore('meta').get('count')),
    request(tx.objectStore('kv').getAllKeys()),
    request(tx.objectStore('kv').getAll()),
    request(tx.objectStore('auto').getAll()),
    request(tx.objectStore('auto').index('by').getAllKeys(1)),
  ]);
  say({
    count: count ?? 0,
    kv: keys.map((key, i) => [key, values[i] === 'ghost' ? 'ghost' : { n: values[i].n, bytes: [...values[i].bytes] }]),
    auto: auto.map((r) => [r.id, r.tag, r.k]),
    byTag,
  });
  process.exit(0);
}
