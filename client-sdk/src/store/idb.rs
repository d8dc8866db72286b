//! The IndexedDB store (browser and node with an IndexedDB implementation), with the
//! semantics of the SQLite store: every value is encrypted under the app's [`StoreKey`],
//! lookup keys are keyed hashes (see `crypt.rs` for the formulas), account and session
//! rows are written with compare-and-swap, and one [`Store::commit`] is one `readwrite`
//! transaction.
//!
//! ```text
//! object store   key path  record             k and sealed v (AD = store name ‖ 0x00 ‖ k)
//! meta           k         {k, v}             k = "key check", v = a constant (checks the key)
//!                          {k, n}             k = "message order" | "outbox order": the last ord
//! account        k         {k, version, v}    k = "account", v = account record
//! sessions       k         {k, version, v}    k = tag(peer), v = var(peer) ‖ session set
//! prekeys        k         {k, v}             k = tag(kind ‖ id), v = kind ‖ id ‖ pickle
//! device_lists   k         {k, v}             k = tag(account id), v = account id ‖ signed list
//! conversations  k         {k, v}             k = tag(account id), v = conversation record (records.rs)
//! messages       ord       {ord, k, conv, v}  k = tag(message id ‖ conversation ‖ sender account), conv = tag of the conversation,
//!                                             v = message; unique index by_k (k), index by_conv ([conv, ord])
//! outbox         ord       {ord, k, v}        k = tag(message id), v = item; unique index by_k (k)
//! processed      ord       {ord, k, v}        k = tag(envelope digest), v = digest; unique index by_k (k)
//! pending        ord       {ord, k, v}        k = tag(envelope digest), v = pending envelope; unique index by_k (k)
//!                                             (processed and pending: schema version 2)
//! groups         k         {k, version, v}    k = tag(group id), v = var(group id) ‖ group record (schema version 3)
//! sender_keys    k         {k, version, v}    k = tag(group id ‖ peer), v = var(group id ‖ peer) ‖ sender-key set (version 3)
//!
//! tag(x) = HMAC-SHA256(index key, store name ‖ 0x00 ‖ x), a binary key (Uint8Array)
//! ```
//! Versions and `ord`s are plain numbers, as they are plain columns in the SQLite store;
//! `ord`s come from the counters in `meta`, written in the same transaction.
//!
//! The store takes IndexedDB from the JavaScript global object (`globalThis.indexedDB`),
//! so it works in a window, a worker and in node with an IndexedDB implementation
//! installed as a global. The sealed constant in `meta` checks the key at
//! [`IdbStore::open`]: a wrong key is [`StoreError::Decrypt`] there, not on a later read.
//! The connection closes itself on `versionchange` so that another tab can upgrade the
//! schema; operations on it then fail with [`StoreError::Database`].
//!
//! An IndexedDB transaction commits by itself as soon as it has no pending request at the
//! end of a task. A commit therefore awaits nothing but requests of its own transaction
//! (whose results arrive as events during which the transaction is active; the futures
//! continue in microtasks of the same event), reads the row versions for compare-and-swap
//! inside the transaction, calls `abort()` on a conflict or any error (also when the
//! commit future is dropped) and reports success only after the transaction's `complete`
//! event. Writes that need no answer are issued without being awaited: a failed one
//! aborts the transaction, which the commit then reports.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use js_sys::{Array, Object, Reflect, Uint8Array};
use sotto_crypto::AccountId;
use sotto_crypto::codec::{DecodeError, Reader};
use tokio::sync::oneshot;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{
    IdbCursorDirection, IdbCursorWithValue, IdbDatabase, IdbFactory, IdbIndex, IdbIndexParameters, IdbKeyRange,
    IdbObjectStore, IdbObjectStoreParameters, IdbOpenDbRequest, IdbRequest, IdbTransaction, IdbTransactionMode,
    IdbVersionChangeEvent,
};

use super::StoreKey;
use super::crypt::Crypt;
use super::records::{
    decode_account, decode_group, decode_message, decode_outbox, decode_peer, decode_pending, decode_sender_keys,
    decode_sessions, encode_account, encode_group, encode_message, encode_outbox, encode_peer, encode_pending,
    encode_sender_keys, encode_sessions,
};
use super::{
    AccountRecord, AccountStore, Changes, Committed, ConversationRecord, DeviceListStore, EnvelopeDigest, GroupRecord,
    GroupStore, InboundStore, MAX_PAGE, MAX_PROCESSED_ENVELOPES, MessageKey, MessageStore, OutboxItem, OutboxStore,
    Page, PeerDevice, PendingInbound, PreKeyId, PreKeyStore, SenderKeyId, SenderKeySet, SessionSet, SessionStore,
    Store, StoreError, StoredMessage, Versioned, check_pin, check_pin_write,
};
use crate::group::GroupId;

/// The schema version given to `indexedDB.open`; `upgrade` brings older databases to it.
const SCHEMA_VERSION: u32 = 3;

const META: &str = "meta";
const ACCOUNT: &str = "account";
const SESSIONS: &str = "sessions";
const PREKEYS: &str = "prekeys";
const DEVICE_LISTS: &str = "device_lists";
const CONVERSATIONS: &str = "conversations";
const MESSAGES: &str = "messages";
const OUTBOX: &str = "outbox";
const PROCESSED: &str = "processed";
const PENDING: &str = "pending";
const GROUPS: &str = "groups";
const SENDER_KEYS: &str = "sender_keys";
const BY_K: &str = "by_k";
const BY_CONV: &str = "by_conv";

/// The account row's key, also the tag bound into its value's AD (as in the SQLite store).
const ACCOUNT_TAG: &[u8] = b"account";
/// The key-check row: its key (and AD tag) and the constant sealed in it.
const KEY_CHECK_TAG: &[u8] = b"key check";
/// The meta row of the kept upload tokens.
const BLOB_TOKENS_TAG: &[u8] = b"blob tokens";
const KEY_CHECK_PLAIN: &[u8] = b"Sotto-v1 IndexedDB store key check";
/// The counters of the `ord` keys of `messages` and `outbox` (plain numbers in `meta`).
const MESSAGE_ORDER: &[u8] = b"message order";
const OUTBOX_ORDER: &[u8] = b"outbox order";
const PROCESSED_ORDER: &[u8] = b"processed order";
const PENDING_ORDER: &[u8] = b"pending order";

/// The largest integer a JavaScript number holds exactly.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// An encrypted IndexedDB store. Not `Clone`; dropping it closes the connection.
pub struct IdbStore {
    db: IdbDatabase,
    crypt: Crypt,
    closed: Rc<Cell<bool>>,
    _on_close: Closure<dyn FnMut()>,
}

impl std::fmt::Debug for IdbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdbStore")
            .field("closed", &self.closed.get())
            .finish_non_exhaustive()
    }
}

impl Drop for IdbStore {
    fn drop(&mut self) {
        self.db.set_onversionchange(None);
        self.db.set_onclose(None);
        self.db.close();
    }
}

// ---------------------------------------------------------------------------------------
// Errors

/// `name: message` of a thrown JavaScript value or `DOMException` (never a key or value).
fn describe(e: &JsValue) -> String {
    let text = |field: &str| {
        Reflect::get(e, &JsValue::from_str(field))
            .ok()
            .and_then(|v| v.as_string())
            .unwrap_or_default()
    };
    match (text("name"), text("message")) {
        (n, m) if n.is_empty() && m.is_empty() => "unknown error".to_owned(),
        (n, m) if m.is_empty() => n,
        (n, m) if n.is_empty() => m,
        (n, m) => format!("{n}: {m}"),
    }
}

fn js(context: &'static str) -> impl Fn(JsValue) -> StoreError {
    move |e| StoreError::Database(format!("IndexedDB {context}: {}", describe(&e)))
}

fn invalid(field: &'static str) -> StoreError {
    StoreError::Decode(DecodeError::Invalid { field })
}

// ---------------------------------------------------------------------------------------
// Requests and transactions as futures

type Signal = Rc<Cell<Option<oneshot::Sender<()>>>>;

/// A JavaScript event handler that fires `signal` once.
fn handler(signal: &Signal) -> Closure<dyn FnMut()> {
    let signal = Rc::clone(signal);
    Closure::new(move || {
        if let Some(tx) = signal.take() {
            let _ = tx.send(());
        }
    })
}

/// One `IDBRequest` as a future: its `result` on `success`, its `error` on `error`. The
/// handlers are removed when it is dropped, so a late event finds no dropped closure.
struct Request {
    request: IdbRequest,
    rx: oneshot::Receiver<()>,
    _on_success: Closure<dyn FnMut()>,
    _on_error: Closure<dyn FnMut()>,
}

impl Request {
    fn new(request: IdbRequest) -> Self {
        let (tx, rx) = oneshot::channel();
        let signal: Signal = Rc::new(Cell::new(Some(tx)));
        let on_success = handler(&signal);
        let on_error = handler(&signal);
        request.set_onsuccess(Some(on_success.as_ref().unchecked_ref()));
        request.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        Self {
            request,
            rx,
            _on_success: on_success,
            _on_error: on_error,
        }
    }
}

impl Future for Request {
    type Output = Result<JsValue, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if Pin::new(&mut self.rx).poll(cx).is_pending() {
            return Poll::Pending;
        }
        // The sender lives as long as the handlers, so the event has fired.
        Poll::Ready(match self.request.error() {
            Ok(None) => self.request.result().map_err(js("request")),
            Ok(Some(e)) => Err(js("request")(e.into())),
            Err(e) => Err(js("request")(e)),
        })
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        self.request.set_onsuccess(None);
        self.request.set_onerror(None);
    }
}

/// A request just issued (or the exception issuing it threw), to await.
fn request(issued: Result<IdbRequest, JsValue>, context: &'static str) -> Result<Request, StoreError> {
    Ok(Request::new(issued.map_err(js(context))?))
}

#[wasm_bindgen::prelude::wasm_bindgen]
extern "C" {
    /// `IDBDatabase` seen through `transaction(names, mode, options)`: web-sys has the
    /// options argument only behind `web_sys_unstable_apis`, a cfg every app that builds
    /// the SDK would have to set.
    #[wasm_bindgen(js_name = IDBDatabase)]
    type IdbDatabaseWithOptions;

    #[wasm_bindgen(catch, method, js_name = transaction)]
    fn transaction(
        this: &IdbDatabaseWithOptions,
        names: &Array,
        mode: IdbTransactionMode,
        options: &Object,
    ) -> Result<IdbTransaction, JsValue>;
}

/// A `readwrite` transaction: [`Tx::finish`] awaits `complete`; dropping it unfinished (an
/// error, a conflict or a dropped commit future) aborts it, so nothing is written.
struct Tx {
    tx: IdbTransaction,
    done: oneshot::Receiver<()>,
    completed: Rc<Cell<bool>>,
    finished: bool,
    _on_complete: Closure<dyn FnMut()>,
    _on_abort: Closure<dyn FnMut()>,
}

impl Tx {
    fn readwrite(db: &IdbDatabase, stores: &[&str]) -> Result<Self, StoreError> {
        let names: Array = stores.iter().map(|s| JsValue::from_str(s)).collect();
        // `complete` fires only once the data is flushed to disk: the client acks a
        // delivery after its commit, and the relay then deletes it. (Browsers without the
        // option ignore it.)
        let options = Object::new();
        Reflect::set(&options, &JsValue::from_str("durability"), &JsValue::from_str("strict"))
            .map_err(js("transaction options"))?;
        let tx = db
            .unchecked_ref::<IdbDatabaseWithOptions>()
            .transaction(&names, IdbTransactionMode::Readwrite, &options)
            .map_err(js("transaction"))?;
        let (sender, done) = oneshot::channel();
        let signal: Signal = Rc::new(Cell::new(Some(sender)));
        let completed = Rc::new(Cell::new(false));
        let on_complete = {
            let signal = Rc::clone(&signal);
            let completed = Rc::clone(&completed);
            Closure::new(move || {
                completed.set(true);
                if let Some(tx) = signal.take() {
                    let _ = tx.send(());
                }
            })
        };
        // An error event of a request bubbles to the transaction and is followed by
        // `abort`, so `complete` and `abort` are the two ends.
        let on_abort = handler(&signal);
        tx.set_oncomplete(Some(on_complete.as_ref().unchecked_ref()));
        tx.set_onabort(Some(on_abort.as_ref().unchecked_ref()));
        Ok(Self {
            tx,
            done,
            completed,
            finished: false,
            _on_complete: on_complete,
            _on_abort: on_abort,
        })
    }

    fn store(&self, name: &str) -> Result<IdbObjectStore, StoreError> {
        self.tx.object_store(name).map_err(js("object store"))
    }

    /// Awaits the end of the transaction: `Ok` only on `complete`.
    async fn finish(mut self) -> Result<(), StoreError> {
        let ended = (&mut self.done).await;
        self.finished = true;
        if ended.is_ok() && self.completed.get() {
            return Ok(());
        }
        Err(match self.tx.error() {
            Some(e) => js("transaction aborted")(e.into()),
            None => StoreError::Database("IndexedDB transaction aborted".into()),
        })
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if !self.finished {
            // Throws if the transaction has already ended; nothing to do then.
            let _ = self.tx.abort();
        }
        self.tx.set_oncomplete(None);
        self.tx.set_onabort(None);
    }
}

// ---------------------------------------------------------------------------------------
// Keys and records

fn bytes(b: &[u8]) -> JsValue {
    Uint8Array::from(b).into()
}

fn number(n: u64) -> JsValue {
    // Versions and orders stay far below 2^53.
    JsValue::from_f64(n as f64)
}

fn record(fields: &[(&str, &JsValue)]) -> Result<JsValue, StoreError> {
    let o = Object::new();
    for (name, value) in fields {
        Reflect::set(&o, &JsValue::from_str(name), value).map_err(js("record"))?;
    }
    Ok(o.into())
}

fn get_field(rec: &JsValue, name: &'static str) -> Result<JsValue, StoreError> {
    if !rec.is_object() {
        return Err(invalid("IndexedDB record"));
    }
    Reflect::get(rec, &JsValue::from_str(name)).map_err(|_| invalid(name))
}

fn bytes_field(rec: &JsValue, name: &'static str) -> Result<Vec<u8>, StoreError> {
    get_field(rec, name)?
        .dyn_into::<Uint8Array>()
        .map(|a| a.to_vec())
        .map_err(|_| invalid(name))
}

fn number_field(rec: &JsValue, name: &'static str) -> Result<u64, StoreError> {
    let n = get_field(rec, name)?.as_f64().ok_or_else(|| invalid(name))?;
    if !(0.0..=MAX_SAFE_INTEGER).contains(&n) || n.fract() != 0.0 {
        return Err(invalid(name));
    }
    // An integer in [0, 2^53): exact.
    Ok(n as u64)
}

fn prekey_key(id: &PreKeyId) -> Vec<u8> {
    let mut k = vec![id.0];
    k.extend_from_slice(&id.1.to_be_bytes());
    k
}

/// The records of a `getAll` result.
fn records(all: JsValue) -> Result<Array, StoreError> {
    all.dyn_into::<Array>().map_err(|_| invalid("IndexedDB getAll result"))
}

// ---------------------------------------------------------------------------------------
// Opening

/// Creates the object stores of every schema version above `old`.
fn upgrade(db: &IdbDatabase, old: f64) -> Result<(), JsValue> {
    if old < 1.0 {
        let keyed = |name: &str, key_path: &str| {
            let params = IdbObjectStoreParameters::new();
            params.set_key_path(&JsValue::from_str(key_path));
            db.create_object_store_with_optional_parameters(name, &params)
        };
        for name in [META, ACCOUNT, SESSIONS, PREKEYS, DEVICE_LISTS, CONVERSATIONS] {
            keyed(name, "k")?;
        }
        let unique = IdbIndexParameters::new();
        unique.set_unique(true);
        let messages = keyed(MESSAGES, "ord")?;
        messages.create_index_with_str_and_optional_parameters(BY_K, "k", &unique)?;
        let conv_ord: Array = ["conv", "ord"].iter().map(|s| JsValue::from_str(s)).collect();
        messages.create_index_with_str_sequence(BY_CONV, &conv_ord)?;
        let outbox = keyed(OUTBOX, "ord")?;
        outbox.create_index_with_str_and_optional_parameters(BY_K, "k", &unique)?;
    }
    if old < 2.0 {
        for name in [PROCESSED, PENDING] {
            let params = IdbObjectStoreParameters::new();
            params.set_key_path(&JsValue::from_str("ord"));
            let store = db.create_object_store_with_optional_parameters(name, &params)?;
            let unique = IdbIndexParameters::new();
            unique.set_unique(true);
            store.create_index_with_str_and_optional_parameters(BY_K, "k", &unique)?;
        }
    }
    if old < 3.0 {
        for name in [GROUPS, SENDER_KEYS] {
            let params = IdbObjectStoreParameters::new();
            params.set_key_path(&JsValue::from_str("k"));
            db.create_object_store_with_optional_parameters(name, &params)?;
        }
    }
    Ok(())
}

/// The key bytes of a sender-key row: group id ‖ peer.
fn sender_key_key(id: &SenderKeyId) -> Vec<u8> {
    let mut k = id.0.0.to_vec();
    k.extend_from_slice(&encode_peer(&id.1));
    k
}

/// `globalThis.indexedDB`, or a typed error where there is none.
fn factory() -> Result<IdbFactory, StoreError> {
    let unavailable = |why: &str| StoreError::Database(format!("IndexedDB is not available here: {why}"));
    let value =
        Reflect::get(&js_sys::global(), &JsValue::from_str("indexedDB")).map_err(|e| unavailable(&describe(&e)))?;
    if value.is_undefined() || value.is_null() {
        return Err(unavailable("no indexedDB on the global object"));
    }
    // Not `dyn_into`: an implementation installed in node is not an `IDBFactory` instance.
    Ok(value.unchecked_into())
}

impl IdbStore {
    /// The IndexedDB schema version this build opens; a database at a higher version was
    /// written by a newer build and is refused.
    pub const SCHEMA_VERSION: u32 = SCHEMA_VERSION;

    /// Opens (creating or upgrading it if needed) the IndexedDB database `db_name` and
    /// checks `key` against it: a database written under another key is
    /// [`StoreError::Decrypt`]. No IndexedDB in this JavaScript environment (or one that
    /// refuses access) is [`StoreError::Database`].
    pub async fn open(db_name: &str, key: &StoreKey) -> Result<Self, StoreError> {
        let open: IdbOpenDbRequest = factory()?.open_with_u32(db_name, SCHEMA_VERSION).map_err(js("open"))?;
        let upgrade_failed: Rc<Cell<Option<String>>> = Rc::new(Cell::new(None));
        let on_upgrade = {
            let open = open.clone();
            let upgrade_failed = Rc::clone(&upgrade_failed);
            Closure::<dyn FnMut(IdbVersionChangeEvent)>::new(move |event: IdbVersionChangeEvent| {
                let done = open
                    .result()
                    .and_then(|db| upgrade(&db.unchecked_into(), event.old_version()));
                if let Err(e) = done {
                    upgrade_failed.set(Some(describe(&e)));
                    // Fails the open request with an AbortError.
                    if let Some(tx) = open.transaction() {
                        let _ = tx.abort();
                    }
                }
            })
        };
        open.set_onupgradeneeded(Some(on_upgrade.as_ref().unchecked_ref()));
        let opened = Request::new(open.clone().unchecked_into()).await;
        open.set_onupgradeneeded(None);
        drop(on_upgrade);
        if let Some(why) = upgrade_failed.take() {
            return Err(StoreError::Database(format!("IndexedDB schema upgrade: {why}")));
        }
        let db: IdbDatabase = opened?.unchecked_into();

        let closed = Rc::new(Cell::new(false));
        let on_close = {
            let db = db.clone();
            let closed = Rc::clone(&closed);
            // Another tab wants to upgrade or delete the database: let it. `close` is also
            // the event of a connection the browser closed (storage cleared).
            Closure::<dyn FnMut()>::new(move || {
                closed.set(true);
                db.close();
            })
        };
        db.set_onversionchange(Some(on_close.as_ref().unchecked_ref()));
        db.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        let store = Self {
            db,
            crypt: Crypt::new(&key.0),
            closed,
            _on_close: on_close,
        };
        store.check_key().await?;
        Ok(store)
    }

    /// Closes the connection; later operations fail with [`StoreError::Database`].
    pub fn close(&self) {
        self.closed.set(true);
        self.db.close();
    }

    fn db(&self) -> Result<&IdbDatabase, StoreError> {
        if self.closed.get() {
            return Err(StoreError::Database(
                "the IndexedDB connection is closed (closed here, or the database is being upgraded or deleted \
                 elsewhere): open the store again"
                    .into(),
            ));
        }
        Ok(&self.db)
    }

    /// Writes the key-check row into a new database, or opens it in an existing one.
    async fn check_key(&self) -> Result<(), StoreError> {
        let tx = Tx::readwrite(self.db()?, &[META])?;
        let meta = tx.store(META)?;
        let row = request(meta.get(&bytes(KEY_CHECK_TAG)), "get")?.await?;
        if row.is_undefined() {
            let v = self.crypt.seal(META, KEY_CHECK_TAG, KEY_CHECK_PLAIN)?;
            meta.add(&record(&[("k", &bytes(KEY_CHECK_TAG)), ("v", &bytes(&v))])?)
                .map_err(js("add"))?;
        } else {
            let plain = self.crypt.open(META, KEY_CHECK_TAG, &bytes_field(&row, "v")?)?;
            if plain.as_slice() != KEY_CHECK_PLAIN {
                return Err(StoreError::Decrypt);
            }
        }
        tx.finish().await
    }

    /// A `readonly` transaction's object store. It commits by itself after the last read.
    fn read(&self, name: &str) -> Result<IdbObjectStore, StoreError> {
        self.db()?
            .transaction_with_str_and_mode(name, IdbTransactionMode::Readonly)
            .map_err(js("transaction"))?
            .object_store(name)
            .map_err(js("object store"))
    }

    /// Every `(k, plaintext v)` of a `{k, v}` object store.
    async fn all(&self, name: &'static str) -> Result<Vec<Vec<u8>>, StoreError> {
        let all = records(request(self.read(name)?.get_all(), "getAll")?.await?)?;
        let mut out = Vec::with_capacity(all.length() as usize);
        for rec in all.iter() {
            let k = bytes_field(&rec, "k")?;
            out.push(self.crypt.open(name, &k, &bytes_field(&rec, "v")?)?.to_vec());
        }
        Ok(out)
    }
}

/// Walks a cursor opened by `issued` and returns up to `limit` records (`limit > 0`).
async fn walk(issued: Result<IdbRequest, JsValue>, limit: usize) -> Result<Vec<JsValue>, StoreError> {
    let cursor_request = issued.map_err(js("openCursor"))?;
    let mut out = Vec::new();
    let mut step = Request::new(cursor_request.clone());
    loop {
        let cursor = step.await?;
        if cursor.is_null() || cursor.is_undefined() {
            return Ok(out);
        }
        let cursor: IdbCursorWithValue = cursor.unchecked_into();
        out.push(cursor.value().map_err(js("cursor"))?);
        if out.len() >= limit {
            return Ok(out);
        }
        step = Request::new(cursor_request.clone());
        cursor.continue_().map_err(js("cursor"))?;
    }
}

// ---------------------------------------------------------------------------------------
// The store traits

impl AccountStore for IdbStore {
    async fn load_account(&self) -> Result<Option<Versioned<AccountRecord>>, StoreError> {
        let row = request(self.read(ACCOUNT)?.get(&bytes(ACCOUNT_TAG)), "get")?.await?;
        if row.is_undefined() {
            return Ok(None);
        }
        let plain = self.crypt.open(ACCOUNT, ACCOUNT_TAG, &bytes_field(&row, "v")?)?;
        Ok(Some(Versioned {
            version: number_field(&row, "version")?,
            value: decode_account(&plain)?,
        }))
    }
}

impl IdbStore {
    /// Rows of a versioned object store: (the key bytes stored inside the value, version,
    /// the rest of the value).
    async fn load_versioned(&self, name: &'static str) -> Result<Vec<(Vec<u8>, u64, Vec<u8>)>, StoreError> {
        let all = records(request(self.read(name)?.get_all(), "getAll")?.await?)?;
        let mut out = Vec::with_capacity(all.length() as usize);
        for rec in all.iter() {
            let k = bytes_field(&rec, "k")?;
            let plain = self.crypt.open(name, &k, &bytes_field(&rec, "v")?)?;
            let mut r = Reader::new(&plain);
            let key = r.var_bytes("key", 128)?.to_vec();
            out.push((key, number_field(&rec, "version")?, r.rest().to_vec()));
        }
        Ok(out)
    }
}

impl GroupStore for IdbStore {
    async fn load_groups(&self) -> Result<Vec<(GroupId, Versioned<GroupRecord>)>, StoreError> {
        let mut out = Vec::new();
        for (key, version, value) in self.load_versioned(GROUPS).await? {
            let id: [u8; 32] = key
                .as_slice()
                .try_into()
                .map_err(|_| StoreError::Decode(DecodeError::Invalid { field: "group id" }))?;
            out.push((
                GroupId(id),
                Versioned {
                    version,
                    value: decode_group(&value)?,
                },
            ));
        }
        Ok(out)
    }

    async fn load_sender_keys(&self) -> Result<Vec<(SenderKeyId, Versioned<SenderKeySet>)>, StoreError> {
        let mut out = Vec::new();
        for (key, version, value) in self.load_versioned(SENDER_KEYS).await? {
            if key.len() != 68 {
                return Err(StoreError::Decode(DecodeError::Invalid { field: "sender key id" }));
            }
            let mut g = [0u8; 32];
            g.copy_from_slice(&key[..32]);
            out.push((
                (GroupId(g), decode_peer(&key[32..])?),
                Versioned {
                    version,
                    value: decode_sender_keys(&value)?,
                },
            ));
        }
        Ok(out)
    }
}

impl SessionStore for IdbStore {
    async fn load_sessions(&self) -> Result<Vec<(PeerDevice, Versioned<SessionSet>)>, StoreError> {
        let all = records(request(self.read(SESSIONS)?.get_all(), "getAll")?.await?)?;
        let mut out = Vec::with_capacity(all.length() as usize);
        for rec in all.iter() {
            let k = bytes_field(&rec, "k")?;
            let plain = self.crypt.open(SESSIONS, &k, &bytes_field(&rec, "v")?)?;
            let mut r = Reader::new(&plain);
            let peer = decode_peer(r.var_bytes("peer", 64)?)?;
            let set = decode_sessions(r.rest())?;
            out.push((
                peer,
                Versioned {
                    version: number_field(&rec, "version")?,
                    value: set,
                },
            ));
        }
        Ok(out)
    }
}

impl PreKeyStore for IdbStore {
    async fn load_prekeys(&self) -> Result<Vec<(PreKeyId, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for v in self.all(PREKEYS).await? {
            if v.len() < 5 {
                return Err(invalid("prekey row"));
            }
            let id = (v[0], u32::from_be_bytes([v[1], v[2], v[3], v[4]]));
            out.push((id, v[5..].to_vec()));
        }
        Ok(out)
    }
}

impl DeviceListStore for IdbStore {
    async fn load_device_lists(&self) -> Result<Vec<(AccountId, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for v in self.all(DEVICE_LISTS).await? {
            let Some((a, list)) = v.split_first_chunk::<32>() else {
                return Err(invalid("device list row"));
            };
            out.push((AccountId(*a), list.to_vec()));
        }
        Ok(out)
    }
}

impl MessageStore for IdbStore {
    async fn conversations(&self) -> Result<Vec<ConversationRecord>, StoreError> {
        let mut out = Vec::new();
        for v in self.all(CONVERSATIONS).await? {
            out.push(super::records::decode_conversation(&v)?);
        }
        out.sort_by_key(|c| c.peer);
        Ok(out)
    }

    async fn messages(&self, conversation: AccountId, page: Page) -> Result<Vec<StoredMessage>, StoreError> {
        let limit = page.limit.min(MAX_PAGE) as usize;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let conv = bytes(&self.crypt.tag(CONVERSATIONS, conversation.as_bytes()));
        // [conv] sorts before every [conv, ord]; the upper end is open.
        let before = page.before.map_or(f64::INFINITY, |b| b as f64);
        let range = IdbKeyRange::bound_with_lower_open_and_upper_open(
            &Array::of1(&conv),
            &Array::of2(&conv, &JsValue::from_f64(before)),
            false,
            true,
        )
        .map_err(js("key range"))?;
        let index: IdbIndex = self.read(MESSAGES)?.index(BY_CONV).map_err(js("index"))?;
        let rows = walk(
            index.open_cursor_with_range_and_direction(&range, IdbCursorDirection::Prev),
            limit,
        )
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for rec in rows.iter().rev() {
            let k = bytes_field(rec, "k")?;
            let plain = self.crypt.open(MESSAGES, &k, &bytes_field(rec, "v")?)?;
            out.push(decode_message(&plain, number_field(rec, "ord")?)?);
        }
        Ok(out)
    }

    async fn recent_message_ids(&self, limit: u32) -> Result<Vec<MessageKey>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = walk(
            self.read(MESSAGES)?
                .open_cursor_with_range_and_direction(&JsValue::NULL, IdbCursorDirection::Prev),
            limit as usize,
        )
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for rec in &rows {
            let k = bytes_field(rec, "k")?;
            let plain = self.crypt.open(MESSAGES, &k, &bytes_field(rec, "v")?)?;
            out.push(decode_message(&plain, 0)?.key());
        }
        Ok(out)
    }

    async fn message(&self, key: MessageKey) -> Result<Option<StoredMessage>, StoreError> {
        let k = self.crypt.tag(MESSAGES, &key.to_bytes());
        let index: IdbIndex = self.read(MESSAGES)?.index(BY_K).map_err(js("index"))?;
        let row = request(index.get(&bytes(&k)), "get")?.await?;
        if row.is_undefined() {
            return Ok(None);
        }
        let plain = self.crypt.open(MESSAGES, &k, &bytes_field(&row, "v")?)?;
        Ok(Some(decode_message(&plain, number_field(&row, "ord")?)?))
    }

    /// Scans the messages newest first (the browser store keeps no search index: nothing
    /// about a message is stored in the clear but its order and conversation tag).
    async fn search(&self, query: &str, limit: u32) -> Result<Vec<StoredMessage>, StoreError> {
        let rows = walk(
            self.read(MESSAGES)?
                .open_cursor_with_range_and_direction(&JsValue::NULL, IdbCursorDirection::Prev),
            usize::MAX,
        )
        .await?;
        let mut out = Vec::new();
        for rec in &rows {
            if out.len() >= limit.min(MAX_PAGE) as usize {
                break;
            }
            let k = bytes_field(rec, "k")?;
            let m = decode_message(
                &self.crypt.open(MESSAGES, &k, &bytes_field(rec, "v")?)?,
                number_field(rec, "ord")?,
            )?;
            if super::search::searchable(&m) && super::search::matches(&m.text, query) {
                out.push(m);
            }
        }
        Ok(out)
    }

    async fn messages_after(&self, order: u64, limit: u32) -> Result<Vec<StoredMessage>, StoreError> {
        let limit = limit.min(MAX_PAGE) as usize;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let range =
            IdbKeyRange::lower_bound_with_open(&JsValue::from_f64(order as f64), true).map_err(js("key range"))?;
        let rows = walk(
            self.read(MESSAGES)?
                .open_cursor_with_range_and_direction(&range, IdbCursorDirection::Next),
            limit,
        )
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for rec in &rows {
            let k = bytes_field(rec, "k")?;
            out.push(decode_message(
                &self.crypt.open(MESSAGES, &k, &bytes_field(rec, "v")?)?,
                number_field(rec, "ord")?,
            )?);
        }
        Ok(out)
    }

    /// Scans every message (the browser store keeps no index of expiry times: nothing
    /// about a message is stored in the clear but its order and conversation tag).
    async fn expired_messages(&self, now_ms: u64, limit: u32) -> Result<Vec<MessageKey>, StoreError> {
        let rows = walk(
            self.read(MESSAGES)?
                .open_cursor_with_range_and_direction(&JsValue::NULL, IdbCursorDirection::Next),
            usize::MAX,
        )
        .await?;
        let mut due = Vec::new();
        for rec in &rows {
            let k = bytes_field(rec, "k")?;
            let m = decode_message(&self.crypt.open(MESSAGES, &k, &bytes_field(rec, "v")?)?, 0)?;
            if m.expires_at_ms != 0 && m.expires_at_ms <= now_ms {
                due.push((m.expires_at_ms, m.key()));
            }
        }
        due.sort();
        Ok(due.into_iter().take(limit as usize).map(|(_, k)| k).collect())
    }
}

impl InboundStore for IdbStore {
    async fn processed_envelopes(&self, limit: u32) -> Result<Vec<EnvelopeDigest>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = walk(
            self.read(PROCESSED)?
                .open_cursor_with_range_and_direction(&JsValue::NULL, IdbCursorDirection::Prev),
            limit as usize,
        )
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for rec in &rows {
            let k = bytes_field(rec, "k")?;
            let plain = self.crypt.open(PROCESSED, &k, &bytes_field(rec, "v")?)?;
            out.push(plain[..].try_into().map_err(|_| invalid("envelope digest"))?);
        }
        Ok(out)
    }

    async fn blob_tokens(&self) -> Result<Vec<u8>, StoreError> {
        let row = request(self.read(META)?.get(&bytes(BLOB_TOKENS_TAG)), "get")?.await?;
        if row.is_undefined() {
            return Ok(Vec::new());
        }
        Ok(self
            .crypt
            .open(META, BLOB_TOKENS_TAG, &bytes_field(&row, "v")?)?
            .to_vec())
    }

    async fn pending_inbound(&self) -> Result<Vec<PendingInbound>, StoreError> {
        let all = records(request(self.read(PENDING)?.get_all(), "getAll")?.await?)?;
        let mut out = Vec::with_capacity(all.length() as usize);
        for rec in all.iter() {
            let k = bytes_field(&rec, "k")?;
            out.push(decode_pending(&self.crypt.open(
                PENDING,
                &k,
                &bytes_field(&rec, "v")?,
            )?)?);
        }
        Ok(out)
    }
}

impl OutboxStore for IdbStore {
    async fn outbox(&self, limit: u32) -> Result<Vec<OutboxItem>, StoreError> {
        // `getAll` reads a count of 0 as "no limit".
        if limit == 0 {
            return Ok(Vec::new());
        }
        let all = records(
            request(
                self.read(OUTBOX)?
                    .get_all_with_key_and_limit(&JsValue::UNDEFINED, limit),
                "getAll",
            )?
            .await?,
        )?;
        let mut out = Vec::with_capacity(all.length() as usize);
        for rec in all.iter() {
            let k = bytes_field(&rec, "k")?;
            out.push(decode_outbox(&self.crypt.open(
                OUTBOX,
                &k,
                &bytes_field(&rec, "v")?,
            )?)?);
        }
        Ok(out)
    }
}

/// The object stores a commit writes or reads.
fn scope(changes: &Changes) -> Vec<&'static str> {
    let mut s = BTreeSet::new();
    if changes.account.is_some() {
        s.insert(ACCOUNT);
    }
    if !changes.sessions.is_empty() {
        s.insert(SESSIONS);
    }
    if !changes.groups.is_empty() {
        s.insert(GROUPS);
    }
    if !changes.sender_keys.is_empty() {
        s.insert(SENDER_KEYS);
    }
    if !changes.prekeys_added.is_empty() || !changes.prekeys_removed.is_empty() {
        s.insert(PREKEYS);
    }
    if !changes.device_lists.is_empty() || !changes.pins.is_empty() {
        s.insert(DEVICE_LISTS);
    }
    if !changes.envelopes.is_empty() {
        s.insert(PROCESSED);
        s.insert(META);
    }
    if !changes.pending_add.is_empty() || !changes.pending_remove.is_empty() {
        s.insert(PENDING);
        s.insert(META);
    }
    if !changes.conversations.is_empty() || !changes.conversations_removed.is_empty() {
        s.insert(CONVERSATIONS);
    }
    if !changes.messages.is_empty() || !changes.message_updates.is_empty() || !changes.messages_removed.is_empty() {
        s.insert(MESSAGES);
    }
    if !changes.messages.is_empty() || !changes.outbox_add.is_empty() {
        s.insert(META);
    }
    if !changes.outbox_add.is_empty() || !changes.outbox_remove.is_empty() || !changes.outbox_update.is_empty() {
        s.insert(OUTBOX);
    }
    if changes.blob_tokens.is_some() {
        s.insert(META);
    }
    s.into_iter().collect()
}

/// A compare-and-swap step: the row's current version (`None`: no row) must be
/// `expected`. Returns the new version.
fn check_cas(row: &JsValue, expected: Option<u64>) -> Result<u64, StoreError> {
    let current = if row.is_undefined() {
        None
    } else {
        Some(number_field(row, "version")?)
    };
    if current != expected {
        return Err(StoreError::Conflict);
    }
    Ok(expected.map_or(1, |e| e + 1))
}

/// The next value of an order counter in `meta` (read once per commit, written back).
struct Counter {
    key: &'static [u8],
    next: Option<u64>,
}

impl Counter {
    fn new(key: &'static [u8]) -> Self {
        Self { key, next: None }
    }

    async fn take(&mut self, meta: &IdbObjectStore) -> Result<u64, StoreError> {
        let last = match self.next {
            Some(n) => n,
            None => {
                let row = request(meta.get(&bytes(self.key)), "get")?.await?;
                if row.is_undefined() {
                    0
                } else {
                    number_field(&row, "n")?
                }
            }
        };
        let n = last + 1;
        self.next = Some(n);
        Ok(n)
    }

    fn save(&self, meta: &IdbObjectStore) -> Result<(), StoreError> {
        if let Some(n) = self.next {
            meta.put(&record(&[("k", &bytes(self.key)), ("n", &number(n))])?)
                .map_err(js("put"))?;
        }
        Ok(())
    }
}

impl Store for IdbStore {
    async fn commit(&self, changes: Changes) -> Result<Committed, StoreError> {
        if changes.is_empty() {
            return Ok(Committed::default());
        }
        let c = &self.crypt;
        let tx = Tx::readwrite(self.db()?, &scope(&changes))?;
        let mut committed = Committed::default();
        // Every `?` below drops `tx` unfinished, which aborts it.
        if let Some(w) = &changes.account {
            let store = tx.store(ACCOUNT)?;
            let row = request(store.get(&bytes(ACCOUNT_TAG)), "get")?.await?;
            let version = check_cas(&row, w.expected)?;
            let v = c.seal(ACCOUNT, ACCOUNT_TAG, &encode_account(&w.value))?;
            store
                .put(&record(&[
                    ("k", &bytes(ACCOUNT_TAG)),
                    ("version", &number(version)),
                    ("v", &bytes(&v)),
                ])?)
                .map_err(js("put"))?;
            committed.account_version = Some(version);
        }
        if !changes.sessions.is_empty() {
            let store = tx.store(SESSIONS)?;
            for (peer, w) in &changes.sessions {
                let pk = encode_peer(peer);
                let k = c.tag(SESSIONS, &pk);
                let row = request(store.get(&bytes(&k)), "get")?.await?;
                let version = check_cas(&row, w.expected)?;
                let mut plain = Vec::with_capacity(64);
                sotto_crypto::codec::Put::put_var(&mut plain, &pk);
                plain.extend_from_slice(&encode_sessions(&w.value));
                let v = c.seal(SESSIONS, &k, &plain)?;
                store
                    .put(&record(&[
                        ("k", &bytes(&k)),
                        ("version", &number(version)),
                        ("v", &bytes(&v)),
                    ])?)
                    .map_err(js("put"))?;
                committed.session_versions.push(version);
            }
        }
        for (name, rows) in [
            (
                GROUPS,
                changes
                    .groups
                    .iter()
                    .map(|(id, w)| (id.0.to_vec(), w.expected, encode_group(&w.value)))
                    .collect::<Vec<_>>(),
            ),
            (
                SENDER_KEYS,
                changes
                    .sender_keys
                    .iter()
                    .map(|(id, w)| (sender_key_key(id), w.expected, encode_sender_keys(&w.value)))
                    .collect(),
            ),
        ] {
            if rows.is_empty() {
                continue;
            }
            let store = tx.store(name)?;
            for (key, expected, value) in rows {
                let k = c.tag(name, &key);
                let row = request(store.get(&bytes(&k)), "get")?.await?;
                let version = check_cas(&row, expected)?;
                let mut plain = Vec::with_capacity(key.len() + 4 + value.len());
                sotto_crypto::codec::Put::put_var(&mut plain, &key);
                plain.extend_from_slice(&value);
                let v = c.seal(name, &k, &plain)?;
                store
                    .put(&record(&[
                        ("k", &bytes(&k)),
                        ("version", &number(version)),
                        ("v", &bytes(&v)),
                    ])?)
                    .map_err(js("put"))?;
                if name == GROUPS {
                    committed.group_versions.push(version);
                } else {
                    committed.sender_key_versions.push(version);
                }
            }
        }
        if !changes.prekeys_removed.is_empty() || !changes.prekeys_added.is_empty() {
            let store = tx.store(PREKEYS)?;
            for id in &changes.prekeys_removed {
                let k = bytes(&c.tag(PREKEYS, &prekey_key(id)));
                let n = request(store.count_with_key(&k), "count")?.await?;
                if n.as_f64() != Some(1.0) {
                    return Err(StoreError::Conflict);
                }
                store.delete(&k).map_err(js("delete"))?;
            }
            for (id, p) in &changes.prekeys_added {
                let key = prekey_key(id);
                let k = c.tag(PREKEYS, &key);
                let v = c.seal(PREKEYS, &k, &[&key[..], p].concat())?;
                store
                    .put(&record(&[("k", &bytes(&k)), ("v", &bytes(&v))])?)
                    .map_err(js("put"))?;
            }
        }
        if !changes.device_lists.is_empty() || !changes.pins.is_empty() {
            let store = tx.store(DEVICE_LISTS)?;
            // The stored pin of an account: its signed list bytes.
            let stored = |a: AccountId| {
                let k = c.tag(DEVICE_LISTS, a.as_bytes());
                let get = request(store.get(&bytes(&k)), "get");
                async move {
                    let row = get?.await?;
                    if row.is_undefined() {
                        return Ok::<_, StoreError>(None);
                    }
                    let plain = c.open(DEVICE_LISTS, &k, &bytes_field(&row, "v")?)?;
                    let Some((_, list)) = plain.split_first_chunk::<32>() else {
                        return Err(invalid("device list row"));
                    };
                    Ok(Some(list.to_vec()))
                }
            };
            for (a, expected) in &changes.pins {
                check_pin(stored(*a).await?.as_deref(), *expected)?;
            }
            for (a, l) in &changes.device_lists {
                check_pin_write(stored(*a).await?.as_deref(), l)?;
                let k = c.tag(DEVICE_LISTS, a.as_bytes());
                let v = c.seal(DEVICE_LISTS, &k, &[&a.as_bytes()[..], l].concat())?;
                store
                    .put(&record(&[("k", &bytes(&k)), ("v", &bytes(&v))])?)
                    .map_err(js("put"))?;
            }
        }
        if !changes.conversations.is_empty() || !changes.conversations_removed.is_empty() {
            let store = tx.store(CONVERSATIONS)?;
            for peer in &changes.conversations_removed {
                let tag = c.tag(CONVERSATIONS, peer.as_bytes());
                store.delete(&bytes(&tag)).map_err(js("delete"))?;
            }
            for conv in &changes.conversations {
                let tag = c.tag(CONVERSATIONS, conv.peer.as_bytes());
                let k = bytes(&tag);
                let v = c.seal(CONVERSATIONS, &tag, &super::records::encode_conversation(conv))?;
                store
                    .put(&record(&[("k", &k), ("v", &bytes(&v))])?)
                    .map_err(js("put"))?;
            }
        }
        if !changes.messages.is_empty() || !changes.message_updates.is_empty() || !changes.messages_removed.is_empty() {
            let store = tx.store(MESSAGES)?;
            let by_k = store.index(BY_K).map_err(js("index"))?;
            if !changes.messages.is_empty() {
                let meta = tx.store(META)?;
                let mut order = Counter::new(MESSAGE_ORDER);
                for m in &changes.messages {
                    let k = c.tag(MESSAGES, &m.key().to_bytes());
                    if request(by_k.count_with_key(&bytes(&k)), "count")?.await?.as_f64() != Some(0.0) {
                        continue;
                    }
                    let ord = order.take(&meta).await?;
                    let conv = c.tag(CONVERSATIONS, m.conversation.as_bytes());
                    let v = c.seal(MESSAGES, &k, &encode_message(m))?;
                    store
                        .put(&record(&[
                            ("ord", &number(ord)),
                            ("k", &bytes(&k)),
                            ("conv", &bytes(&conv)),
                            ("v", &bytes(&v)),
                        ])?)
                        .map_err(js("put"))?;
                    committed.inserted.push((m.id, ord));
                }
                order.save(&meta)?;
            }
            for (key, update) in &changes.message_updates {
                let k = c.tag(MESSAGES, &key.to_bytes());
                let row = request(by_k.get(&bytes(&k)), "get")?.await?;
                if row.is_undefined() {
                    continue;
                }
                let mut m = decode_message(&c.open(MESSAGES, &k, &bytes_field(&row, "v")?)?, 0)?;
                let old = m.status;
                if !m.apply(update) {
                    continue;
                }
                let v = c.seal(MESSAGES, &k, &encode_message(&m))?;
                Reflect::set(&row, &JsValue::from_str("v"), &bytes(&v)).map_err(js("record"))?;
                store.put(&row).map_err(js("put"))?;
                if update.is_status() {
                    committed.advanced.push((*key, old));
                }
            }
            for key in &changes.messages_removed {
                let k = c.tag(MESSAGES, &key.to_bytes());
                let row = request(by_k.get(&bytes(&k)), "get")?.await?;
                if row.is_undefined() {
                    continue;
                }
                let ord = Reflect::get(&row, &JsValue::from_str("ord")).map_err(js("record"))?;
                store.delete(&ord).map_err(js("delete"))?;
            }
        }
        if !changes.outbox_add.is_empty() || !changes.outbox_remove.is_empty() || !changes.outbox_update.is_empty() {
            let store = tx.store(OUTBOX)?;
            let by_k = store.index(BY_K).map_err(js("index"))?;
            if !changes.outbox_add.is_empty() {
                let meta = tx.store(META)?;
                let mut order = Counter::new(OUTBOX_ORDER);
                for item in &changes.outbox_add {
                    let k = c.tag(OUTBOX, &item.id.0);
                    if request(by_k.count_with_key(&bytes(&k)), "count")?.await?.as_f64() != Some(0.0) {
                        continue;
                    }
                    let ord = order.take(&meta).await?;
                    let v = c.seal(OUTBOX, &k, &encode_outbox(item))?;
                    store
                        .put(&record(&[("ord", &number(ord)), ("k", &bytes(&k)), ("v", &bytes(&v))])?)
                        .map_err(js("put"))?;
                }
                order.save(&meta)?;
            }
            for id in &changes.outbox_remove {
                let k = c.tag(OUTBOX, &id.0);
                let ord = request(by_k.get_key(&bytes(&k)), "getKey")?.await?;
                if !ord.is_undefined() {
                    store.delete(&ord).map_err(js("delete"))?;
                }
            }
            for item in &changes.outbox_update {
                let k = c.tag(OUTBOX, &item.id.0);
                let ord = request(by_k.get_key(&bytes(&k)), "getKey")?.await?;
                if ord.is_undefined() {
                    continue;
                }
                let v = c.seal(OUTBOX, &k, &encode_outbox(item))?;
                store
                    .put(&record(&[("ord", &ord), ("k", &bytes(&k)), ("v", &bytes(&v))])?)
                    .map_err(js("put"))?;
            }
        }
        if !changes.envelopes.is_empty() {
            let store = tx.store(PROCESSED)?;
            let by_k = store.index(BY_K).map_err(js("index"))?;
            let meta = tx.store(META)?;
            let mut order = Counter::new(PROCESSED_ORDER);
            let mut last = None;
            for d in &changes.envelopes {
                let k = c.tag(PROCESSED, d);
                if request(by_k.count_with_key(&bytes(&k)), "count")?.await?.as_f64() != Some(0.0) {
                    continue;
                }
                let ord = order.take(&meta).await?;
                last = Some(ord);
                let v = c.seal(PROCESSED, &k, d)?;
                store
                    .put(&record(&[("ord", &number(ord)), ("k", &bytes(&k)), ("v", &bytes(&v))])?)
                    .map_err(js("put"))?;
            }
            order.save(&meta)?;
            if let Some(last) = last
                && last > MAX_PROCESSED_ENVELOPES as u64
            {
                let old = IdbKeyRange::upper_bound(&number(last - MAX_PROCESSED_ENVELOPES as u64))
                    .map_err(js("key range"))?;
                store.delete(&old).map_err(js("delete"))?;
            }
        }
        if !changes.pending_add.is_empty() || !changes.pending_remove.is_empty() {
            let store = tx.store(PENDING)?;
            let by_k = store.index(BY_K).map_err(js("index"))?;
            let meta = tx.store(META)?;
            let mut order = Counter::new(PENDING_ORDER);
            for p in &changes.pending_add {
                let k = c.tag(PENDING, &p.digest);
                if request(by_k.count_with_key(&bytes(&k)), "count")?.await?.as_f64() != Some(0.0) {
                    continue;
                }
                let ord = order.take(&meta).await?;
                let v = c.seal(PENDING, &k, &encode_pending(p))?;
                store
                    .put(&record(&[("ord", &number(ord)), ("k", &bytes(&k)), ("v", &bytes(&v))])?)
                    .map_err(js("put"))?;
            }
            order.save(&meta)?;
            for d in &changes.pending_remove {
                let k = c.tag(PENDING, d);
                let ord = request(by_k.get_key(&bytes(&k)), "getKey")?.await?;
                if !ord.is_undefined() {
                    store.delete(&ord).map_err(js("delete"))?;
                }
            }
        }
        if let Some(tokens) = &changes.blob_tokens {
            let v = c.seal(META, BLOB_TOKENS_TAG, tokens)?;
            tx.store(META)?
                .put(&record(&[("k", &bytes(BLOB_TOKENS_TAG)), ("v", &bytes(&v))])?)
                .map_err(js("put"))?;
        }
        tx.finish().await?;
        Ok(committed)
    }
}
