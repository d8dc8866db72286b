// A durable IndexedDB for node: fake-indexeddb (in memory) with every database kept in a
// directory as a snapshot plus a journal of committed transactions.
//
// node 20 has no node:sqlite, and the IndexedDB packages backed by SQLite need a native
// module. This keeps the IndexedDB implementation the SDK's web store is tested with and
// adds durability:
//
// - Each read-write transaction's writes (puts, deletes, clears, in order) are appended to
//   the database's journal as one framed record (length, SHA-256 prefix, v8-serialized
//   operations) and fsynced before the transaction's `complete` event reaches the app. A
//   commit the app saw survives SIGKILL or a power loss; an aborted transaction writes
//   nothing. A commit costs one append and one fsync, whatever the database's size.
// - When the journal outgrows its snapshot (and 4 MiB), and no other transaction has
//   uncommitted writes, the whole database is written as a new snapshot (temporary file,
//   fsync, rename, directory fsync) and a new, empty journal starts. Schema changes
//   (versionchange transactions) always write a snapshot.
// - At start, each database is rebuilt from its snapshot, then its journal is replayed
//   up to the last whole record: a record torn by a crash is cut off.
//
// The whole database lives in memory as well, so this suits bots and servers with stores
// of up to some hundreds of MB.
import 'fake-indexeddb/auto';
import FDBKeyRange from 'fake-indexeddb/lib/FDBKeyRange';
import FDBTransaction from 'fake-indexeddb/lib/FDBTransaction';
import { createHash } from 'node:crypto';
import {
  closeSync,
  existsSync,
  fdatasyncSync,
  fstatSync,
  fsyncSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readFileSync,
  readdirSync,
  renameSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import path from 'node:path';
import v8 from 'node:v8';

const SNAPSHOT = '.idb';
const JOURNAL = '.log';
const HEADER = 12; // u32 length (LE) + the first 8 bytes of the payload's SHA-256
const MIN_COMPACT = 4 * 1024 * 1024;

function base(dir, name) {
  return path.join(dir, encodeURIComponent(name));
}

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function fsyncDir(dir) {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
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
  fsyncDir(path.dirname(file));
}

function digest(payload) {
  return createHash('sha256').update(payload).digest().subarray(0, 8);
}

/** A key or key range as stored in the journal. */
function encodeKey(key) {
  if (key instanceof FDBKeyRange) {
    return { range: [key.lower, key.upper, key.lowerOpen, key.upperOpen] };
  }
  return { key };
}

function decodeKey(k) {
  return k.range ? new FDBKeyRange(...k.range) : k.key;
}

/** The whole database, from fake-indexeddb's in-memory state. */
function dump(raw, generation) {
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
  return { name: raw.name, version: raw.version, generation, stores };
}

/** Recreates one database from its snapshot through the IndexedDB API. */
async function restore(state) {
  const open = indexedDB.open(state.name, state.version);
  open.onupgradeneeded = () => {
    const db = open.result;
    for (const s of state.stores) {
      const store = db.createObjectStore(s.name, { keyPath: s.keyPath ?? undefined, autoIncrement: s.autoIncrement });
      for (const i of s.indexes) {
        store.createIndex(i.name, i.keyPath, { multiEntry: i.multiEntry, unique: i.unique });
      }
    }
  };
  const db = await request(open);
  const raw = db._rawDatabase;
  for (const s of state.stores) {
    const store = raw.rawObjectStores.get(s.name);
    for (const [key, value] of s.records) store.storeRecord({ key, value }, false);
    // The key generator continues where it was (records deleted since keep their keys used).
    if (store.keyGenerator && store.keyGenerator.num < s.keyGeneratorNum) store.keyGenerator.num = s.keyGeneratorNum;
  }
  return db;
}

/** Applies the journal's whole records to `raw`; returns the length of the whole part. */
function replay(raw, bytes) {
  let at = 0;
  while (at + HEADER <= bytes.length) {
    const len = bytes.readUInt32LE(at);
    const end = at + HEADER + len;
    if (end > bytes.length) break;
    const payload = bytes.subarray(at + HEADER, end);
    if (!digest(payload).equals(bytes.subarray(at + 4, at + HEADER))) break;
    for (const [storeName, op, key, value] of v8.deserialize(payload)) {
      const store = raw.rawObjectStores.get(storeName);
      if (!store) throw new Error(`the journal names an object store ${storeName} the snapshot lacks`);
      if (op === 'put') store.storeRecord({ key: decodeKey(key), value }, false);
      else if (op === 'delete') store.deleteRecord(decodeKey(key));
      else if (op === 'clear') store.clear();
    }
    at = end;
  }
  return at;
}

/** One database's files and journal. */
class Durable {
  constructor(dir, name, generation, snapshotBytes, minCompact) {
    this.minCompact = minCompact;
    this.dir = dir;
    this.name = name;
    this.generation = generation;
    this.snapshotBytes = snapshotBytes;
    this.fd = openSync(`${base(dir, name)}.${generation}${JOURNAL}`, 'a');
    this.journalBytes = fstatSync(this.fd).size;
  }

  append(ops) {
    const payload = v8.serialize(ops);
    const header = Buffer.alloc(HEADER);
    header.writeUInt32LE(payload.length, 0);
    digest(payload).copy(header, 4);
    writeSync(this.fd, Buffer.concat([header, payload]));
    fdatasyncSync(this.fd);
    this.journalBytes += HEADER + payload.length;
  }

  wantsSnapshot() {
    return this.journalBytes > Math.max(this.minCompact, 2 * this.snapshotBytes);
  }

  snapshot(raw) {
    const next = this.generation + 1;
    const bytes = v8.serialize(dump(raw, next));
    writeDurably(`${base(this.dir, this.name)}${SNAPSHOT}`, bytes);
    closeSync(this.fd);
    const old = `${base(this.dir, this.name)}.${this.generation}${JOURNAL}`;
    this.generation = next;
    this.snapshotBytes = bytes.length;
    this.fd = openSync(`${base(this.dir, this.name)}.${next}${JOURNAL}`, 'w');
    this.journalBytes = 0;
    fsyncDir(this.dir);
    unlinkSync(old);
  }
}

let installed = null;

/**
 * Makes the global `indexedDB` durable under `dir`: loads the databases kept there, then
 * journals every commit. Call it once, before opening any database. `compactAfterBytes`:
 * the least journal size that triggers a new snapshot (4 MiB).
 */
export async function installDurableIndexedDB(dir, { compactAfterBytes = MIN_COMPACT } = {}) {
  if (installed !== null) {
    if (installed.dir !== path.resolve(dir)) throw new Error(`the durable IndexedDB already uses ${installed.dir}`);
    return;
  }
  dir = path.resolve(dir);
  mkdirSync(dir, { recursive: true });
  const files = new Map(); // database name -> Durable
  for (const f of readdirSync(dir).filter((f) => f.endsWith(SNAPSHOT))) {
    const bytes = readFileSync(path.join(dir, f));
    const state = v8.deserialize(bytes);
    const db = await restore(state);
    const journal = `${base(dir, state.name)}.${state.generation}${JOURNAL}`;
    if (existsSync(journal)) {
      const log = readFileSync(journal);
      const whole = replay(db._rawDatabase, log);
      if (whole < log.length) {
        // A record torn by a crash: never acknowledged, so cut off.
        const fd = openSync(journal, 'r+');
        ftruncateSync(fd, whole);
        fsyncSync(fd);
        closeSync(fd);
      }
    }
    db.close();
    for (const other of readdirSync(dir)) {
      const m = other.startsWith(`${encodeURIComponent(state.name)}.`) && other.match(/\.(\d+)\.log$/);
      if (m && Number(m[1]) !== state.generation) unlinkSync(path.join(dir, other));
    }
    files.set(state.name, new Durable(dir, state.name, state.generation, bytes.length, compactAfterBytes));
  }
  installed = { dir, files };

  // The raw object store's writes, recorded per transaction (by its rollback log, which
  // fake-indexeddb passes to every write a transaction makes; replays and rollbacks pass
  // none). Only writes that succeeded are recorded.
  const pending = new Map(); // rollback log -> operations
  const record = (log, op) => {
    if (!log) return;
    let ops = pending.get(log);
    if (!ops) pending.set(log, (ops = []));
    ops.push(op);
  };
  const ObjectStore = await rawObjectStorePrototype();
  const { storeRecord, deleteRecord, clear } = ObjectStore;
  ObjectStore.storeRecord = function (rec, noOverwrite, log) {
    const key = storeRecord.call(this, rec, noOverwrite, log);
    record(log, [this.name, 'put', encodeKey(key), rec.value]);
    return key;
  };
  ObjectStore.deleteRecord = function (key, log) {
    deleteRecord.call(this, key, log);
    record(log, [this.name, 'delete', encodeKey(key)]);
  };
  ObjectStore.clear = function (log) {
    clear.call(this, log);
    record(log, [this.name, 'clear']);
  };

  const dispatch = FDBTransaction.prototype.dispatchEvent;
  FDBTransaction.prototype.dispatchEvent = function (event) {
    if (event.type === 'abort') {
      pending.delete(this._rollbackLog);
    } else if (event.type === 'complete' && this.mode !== 'readonly') {
      const raw = this.db._rawDatabase;
      const ops = pending.get(this._rollbackLog);
      pending.delete(this._rollbackLog);
      let file = files.get(raw.name);
      if (this.mode === 'versionchange' || !file) {
        // A new database or a schema change: a snapshot (no other transaction runs
        // beside a versionchange transaction).
        if (!file) {
          writeDurably(`${base(dir, raw.name)}${SNAPSHOT}`, v8.serialize(dump(raw, 0)));
          file = new Durable(dir, raw.name, 0, 0, compactAfterBytes);
          files.set(raw.name, file);
        } else {
          file.snapshot(raw);
        }
      } else if (ops && ops.length > 0) {
        file.append(ops);
        if (file.wantsSnapshot() && pending.size === 0) file.snapshot(raw);
      }
    }
    return dispatch.call(this, event);
  };
}

/** fake-indexeddb's raw object store class (not exported): from a throwaway database. */
async function rawObjectStorePrototype() {
  const name = `sotto-durable-probe-${process.pid}`;
  const open = indexedDB.open(name, 1);
  open.onupgradeneeded = () => open.result.createObjectStore('probe');
  const db = await request(open);
  const proto = Object.getPrototypeOf(db._rawDatabase.rawObjectStores.get('probe'));
  db.close();
  await request(indexedDB.deleteDatabase(name));
  return proto;
}
