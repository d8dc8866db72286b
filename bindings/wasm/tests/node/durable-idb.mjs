// A durable IndexedDB for node: fake-indexeddb (in memory) with every database written to
// a file in `dir` as each read-write transaction commits, and read back at start.
//
// node 20 has no node:sqlite, and the IndexedDB packages backed by SQLite need a native
// module; this keeps the same IndexedDB implementation the other node tests use and adds
// the one property they lack: what a committed transaction wrote survives the process
// being killed (SIGKILL) at any point. The file is written synchronously (temporary file,
// fsync, rename) before the transaction's `complete` event reaches the SDK, so a commit
// the SDK saw is on disk, and a file is always a whole, committed state. It rewrites the
// whole database per commit: fine for tests and small stores, not for a big one.
import 'fake-indexeddb/auto';
import FDBTransaction from 'fake-indexeddb/lib/FDBTransaction';
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, readdirSync, renameSync, writeSync } from 'node:fs';
import path from 'node:path';
import v8 from 'node:v8';

const SUFFIX = '.idb';

function fileOf(dir, name) {
  return path.join(dir, encodeURIComponent(name) + SUFFIX);
}

/** The whole database, from fake-indexeddb's in-memory state. */
function dump(raw) {
  const stores = [];
  for (const [name, store] of raw.rawObjectStores) {
    stores.push({
      name,
      keyPath: store.keyPath,
      autoIncrement: store.autoIncrement,
      keyGeneratorNum: store.keyGenerator?.num ?? 0,
      indexes: [...store.rawIndexes.values()].map((i) => ({
        name: i.name,
        keyPath: i.keyPath,
        multiEntry: i.multiEntry,
        unique: i.unique,
      })),
      records: [...store.records.values()].map((r) => [r.key, r.value]),
    });
  }
  return { name: raw.name, version: raw.version, stores };
}

function writeDurably(file, bytes) {
  const tmp = `${file}.tmp`;
  const fd = openSync(tmp, 'w');
  try {
    writeSync(fd, bytes);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
}

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

/** Recreates one database from its file through the IndexedDB API. */
async function restore(state) {
  let db;
  const open = indexedDB.open(state.name, state.version);
  open.onupgradeneeded = () => {
    db = open.result;
    for (const s of state.stores) {
      const store = db.createObjectStore(s.name, { keyPath: s.keyPath ?? undefined, autoIncrement: s.autoIncrement });
      for (const i of s.indexes) {
        store.createIndex(i.name, i.keyPath, { multiEntry: i.multiEntry, unique: i.unique });
      }
    }
  };
  db = await request(open);
  const names = state.stores.map((s) => s.name);
  if (names.length > 0) {
    const tx = db.transaction(names, 'readwrite');
    for (const s of state.stores) {
      const store = tx.objectStore(s.name);
      for (const [key, value] of s.records) {
        if (s.keyPath === null || s.keyPath === undefined) store.put(value, key);
        else store.put(value);
      }
    }
    await new Promise((resolve, reject) => {
      tx.oncomplete = resolve;
      tx.onerror = tx.onabort = () => reject(tx.error);
    });
  }
  // The key generators continue where they were (records deleted since keep their keys used).
  for (const s of state.stores) {
    const gen = db._rawDatabase.rawObjectStores.get(s.name)?.keyGenerator;
    if (gen && gen.num < s.keyGeneratorNum) gen.num = s.keyGeneratorNum;
  }
  db.close();
}

let installed = null;

/**
 * Makes the global `indexedDB` durable under `dir`: loads the databases saved there, then
 * saves each database on every commit. Call it before opening any database.
 */
export async function installDurableIndexedDB(dir) {
  if (installed !== null) {
    if (installed !== dir) throw new Error(`the durable IndexedDB already uses ${installed}`);
    return;
  }
  installed = dir;
  mkdirSync(dir, { recursive: true });
  for (const f of readdirSync(dir).filter((f) => f.endsWith(SUFFIX))) {
    await restore(v8.deserialize(readFileSync(path.join(dir, f))));
  }
  const dispatch = FDBTransaction.prototype.dispatchEvent;
  FDBTransaction.prototype.dispatchEvent = function (event) {
    if (event.type === 'complete' && this.mode !== 'readonly') {
      const raw = this.db._rawDatabase;
      writeDurably(fileOf(dir, raw.name), v8.serialize(dump(raw)));
    }
    return dispatch.call(this, event);
  };
}
