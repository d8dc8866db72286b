//! The SQLite store (rusqlite, native). Every value is encrypted under a key the app passes
//! in ([`StoreKey`]); lookup columns hold keyed hashes, never account ids or message ids
//! (see `crypt.rs` for the formulas). One [`Store::commit`] is one transaction.
//!
//! Two threads own the two connections: a writer, which runs every commit, `sync` and
//! `scrub`, and a reader, which runs the loads and queries (in WAL mode readers never
//! wait for the writer). An operation goes to its thread whole, as one job: a commit is
//! one job over cached prepared statements, and the caller waits for one answer, not for
//! a hand-off per statement.
//!
//! Every transaction commits with `synchronous=FULL` (the log is fsynced). Deferred
//! commits ([`Store::commit_deferred`]) share one open transaction, each in a savepoint
//! of its own (so each is still all or nothing, and a conflict undoes only its own
//! writes); the next durable commit or `sync` commits the batch with one fsync. The
//! writer also commits it after [`BATCH_IDLE`] without work, after [`BATCH_AGE`] or
//! after [`BATCH_COMMITS`] deferred commits. An open batch holds the write lock: while
//! this process catches up (batches back to back) another process's write waits, and
//! after the busy timeout (5 s) fails with [`StoreError::Conflict`] for its caller to
//! retry. While a batch is open, reads go to the writer, which sees it. A batch the database refused (an I/O error) is reported by the next
//! `sync`, so the envelopes in it are not acked.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use sotto_crypto::AccountId;
use tokio::sync::oneshot;

use super::StoreKey;
use super::crypt::Crypt;
use super::records::{
    decode_account, decode_group, decode_message, decode_outbox, decode_peer, decode_pending, decode_sender_keys,
    decode_sessions, encode_account, encode_group, encode_message, encode_outbox, encode_peer, encode_pending,
    encode_sender_keys, encode_sessions,
};
use super::{
    AccountRecord, AccountStore, Changes, Committed, ConversationRecord, DeviceListStore, EnvelopeDigest, GroupRecord,
    GroupStore, InboundStore, MAX_PAGE, MAX_PROCESSED_ENVELOPES, MessageKey, MessageStore, MessageUpdate, OutboxItem,
    OutboxStore, Page, PeerDevice, PendingInbound, PreKeyId, PreKeyStore, SenderKeyId, SenderKeySet, SessionSet,
    SessionStore, Store, StoreError, StoredMessage, Versioned, check_pin, check_pin_write,
};
use crate::group::GroupId;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS account (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL, v BLOB NOT NULL) STRICT",
    "CREATE TABLE IF NOT EXISTS sessions (k BLOB PRIMARY KEY, version INTEGER NOT NULL, v BLOB NOT NULL) STRICT",
    "CREATE TABLE IF NOT EXISTS prekeys (k BLOB PRIMARY KEY, v BLOB NOT NULL) STRICT",
    "CREATE TABLE IF NOT EXISTS device_lists (k BLOB PRIMARY KEY, v BLOB NOT NULL) STRICT",
    "CREATE TABLE IF NOT EXISTS conversations (k BLOB PRIMARY KEY, v BLOB NOT NULL) STRICT",
    "CREATE TABLE IF NOT EXISTS messages (ord INTEGER PRIMARY KEY AUTOINCREMENT, k BLOB NOT NULL UNIQUE, conv BLOB NOT NULL, v BLOB NOT NULL) STRICT",
    "CREATE INDEX IF NOT EXISTS messages_by_conv ON messages (conv, ord)",
    "CREATE TABLE IF NOT EXISTS outbox (ord INTEGER PRIMARY KEY AUTOINCREMENT, k BLOB NOT NULL UNIQUE, v BLOB NOT NULL) STRICT",
    // One row whose counter `sync` bumps: a durable commit with nothing else to write.
    // Digests of processed inbound envelopes: k = tag(digest), v = sealed digest.
    "CREATE TABLE IF NOT EXISTS processed (ord INTEGER PRIMARY KEY AUTOINCREMENT, k BLOB NOT NULL UNIQUE, v BLOB NOT NULL) STRICT",
    // Envelopes waiting for a verdict: k = tag(digest), v = sealed pending record.
    "CREATE TABLE IF NOT EXISTS pending (ord INTEGER PRIMARY KEY AUTOINCREMENT, k BLOB NOT NULL UNIQUE, v BLOB NOT NULL) STRICT",
    "CREATE TABLE IF NOT EXISTS sync_barrier (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL) STRICT",
    // Groups (k = tag(group id)) and sender-key sets (k = tag(group id ‖ peer)), versioned
    // like sessions: v = sealed (var(key) ‖ record).
    "CREATE TABLE IF NOT EXISTS groups (k BLOB PRIMARY KEY, version INTEGER NOT NULL, v BLOB NOT NULL) STRICT",
    "CREATE TABLE IF NOT EXISTS sender_keys (k BLOB PRIMARY KEY, version INTEGER NOT NULL, v BLOB NOT NULL) STRICT",
    // The search index (docs/ARCHITECTURE.md, "Local search"): one row per search term
    // of a text, t = a keyed tag of the term (never the term), ord = the message's row.
    // Clustered on (t, ord), so a term costs two B-tree inserts, not three. (Stores
    // before it had a rowid table `search` with two indexes: [`migrate_search_index`].)
    "CREATE TABLE IF NOT EXISTS search_terms (t BLOB NOT NULL, ord INTEGER NOT NULL, PRIMARY KEY (t, ord)) STRICT, WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS search_terms_by_ord ON search_terms (ord)",
    // One row once the index covers every stored message.
    "CREATE TABLE IF NOT EXISTS search_built (id INTEGER PRIMARY KEY CHECK (id = 1)) STRICT",
    // When messages with a disappearing timer expire: k = the message row's k.
    "CREATE TABLE IF NOT EXISTS expiring (k BLOB PRIMARY KEY, expires INTEGER NOT NULL) STRICT",
    "CREATE TABLE IF NOT EXISTS blob_tokens (k BLOB PRIMARY KEY, v BLOB NOT NULL) STRICT",
    "CREATE INDEX IF NOT EXISTS expiring_by_time ON expiring (expires)",
];

/// How many prepared statements each connection keeps (a commit uses about 25 kinds).
const STATEMENT_CACHE: usize = 64;

/// How long a connection waits for another process's lock before the operation fails
/// with [`StoreError::Conflict`].
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// An open batch of deferred commits is committed when the writer got no job for this long.
pub const BATCH_IDLE: Duration = Duration::from_millis(10);
/// ... or when it is this old,
pub const BATCH_AGE: Duration = Duration::from_millis(100);
/// ... or when it holds this many deferred commits.
pub const BATCH_COMMITS: u32 = 256;

fn sender_key_key(id: &SenderKeyId) -> Vec<u8> {
    let mut k = id.0.0.to_vec();
    k.extend_from_slice(&encode_peer(&id.1));
    k
}

fn decode_sender_key_key(b: &[u8]) -> Result<SenderKeyId, StoreError> {
    if b.len() != 68 {
        return Err(StoreError::Decode(sotto_crypto::codec::DecodeError::Invalid {
            field: "sender key id",
        }));
    }
    let mut g = [0u8; 32];
    g.copy_from_slice(&b[..32]);
    Ok((GroupId(g), decode_peer(&b[32..])?))
}

const ACCOUNT_TAG: &[u8] = b"account";

/// An encrypted SQLite store.
pub struct SqliteStore {
    /// Commits, `sync` and `scrub`, and the reads while a batch is open.
    writer: Worker,
    /// Loads and queries.
    reader: Worker,
    /// The writer has a batch of deferred commits open: reads go to it.
    batch_open: Arc<AtomicBool>,
    /// The database file (its process locks lie beside it).
    path: std::path::PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

fn db(e: rusqlite::Error) -> StoreError {
    // SQLITE_BUSY and its extended codes: another process holds the write lock or our
    // read snapshot is stale.
    if let rusqlite::Error::SqliteFailure(f, _) = &e
        && f.code == rusqlite::ErrorCode::DatabaseBusy
    {
        return StoreError::Conflict;
    }
    StoreError::Database(e.to_string())
}

fn closed() -> StoreError {
    StoreError::Database("the store is closed".into())
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Column `i` of `row` as bytes (a BLOB; anything else is an error, not a panic).
fn blob<'r>(row: &'r Row<'_>, i: usize) -> Result<&'r [u8], StoreError> {
    row.get_ref(i)
        .map_err(db)?
        .as_blob()
        .map_err(|e| StoreError::Database(e.to_string()))
}

fn int(row: &Row<'_>, i: usize) -> Result<i64, StoreError> {
    row.get::<_, i64>(i).map_err(db)
}

/// A message from an `ord, k, v` row of `messages`.
fn message_row(c: &Crypt, row: &Row<'_>) -> Result<StoredMessage, StoreError> {
    let plain = c.open("messages", blob(row, 1)?, blob(row, 2)?)?;
    Ok(decode_message(&plain, to_u64(int(row, 0)?))?)
}

/// What a worker thread owns: its connection (none once closed) and, on the writer,
/// the open batch of deferred commits.
struct Db {
    conn: Option<Connection>,
    crypt: Arc<Crypt>,
    /// The open batch: when it began, and how many deferred commits it holds.
    batch: Option<(Instant, u32)>,
    /// Set while `batch` is some (read by the store to route reads).
    batch_open: Arc<AtomicBool>,
    /// A batch holding deferred commits was rolled back by the database: the next
    /// `sync` fails.
    lost: bool,
    /// The outbox rows the last [`OutboxStore::outbox`] read on this connection returned,
    /// decoded: `k` → (sealed `v`, item). The sender reads the start of the outbox on
    /// every turn; a row whose sealed value is unchanged is not decrypted again. Holds
    /// only the rows of the last read (the sender reads at most 1,024).
    outbox_cache: std::collections::HashMap<Vec<u8>, (Vec<u8>, OutboxItem)>,
}

impl Db {
    fn new(crypt: Arc<Crypt>, batch_open: Arc<AtomicBool>) -> Self {
        Self {
            conn: None,
            crypt,
            batch: None,
            batch_open,
            lost: false,
            outbox_cache: Default::default(),
        }
    }

    fn conn(&mut self) -> Result<&mut Connection, StoreError> {
        self.conn.as_mut().ok_or_else(closed)
    }

    /// Opens a batch (a write transaction) unless one is open.
    fn begin_batch(&mut self) -> Result<(), StoreError> {
        if self.batch.is_none() {
            run_sql(self.conn()?, "BEGIN IMMEDIATE")?;
            self.batch = Some((Instant::now(), 0));
            self.batch_open.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// The database ended the transaction by itself (it does after some errors): the
    /// deferred commits in it are gone.
    fn check_batch(&mut self) {
        let open = self.conn.as_ref().is_some_and(|c| !c.is_autocommit());
        if !open && let Some((_, n)) = self.batch.take() {
            self.batch_open.store(false, Ordering::Release);
            self.lost |= n > 0;
        }
    }

    /// Commits the open batch, if any (durable when this returns).
    fn end_batch(&mut self) -> Result<(), StoreError> {
        let Some((_, n)) = self.batch else { return Ok(()) };
        let conn = self.conn()?;
        let done = run_sql(conn, "COMMIT");
        if done.is_err() && !conn.is_autocommit() {
            let _ = run_sql(conn, "ROLLBACK");
        }
        self.batch = None;
        self.batch_open.store(false, Ordering::Release);
        if done.is_err() {
            self.lost |= n > 0;
        }
        done
    }

    /// Whether the open batch is due: the writer was idle for [`BATCH_IDLE`] (`idle`),
    /// or the batch is too old or too large.
    fn batch_due(&self, idle: bool) -> bool {
        self.batch
            .is_some_and(|(t, n)| idle || n >= BATCH_COMMITS || t.elapsed() >= BATCH_AGE)
    }
}

/// Runs one statement that returns no rows, prepared once per connection.
fn run_sql(conn: &Connection, sql: &'static str) -> Result<(), StoreError> {
    conn.prepare_cached(sql).and_then(|mut s| s.execute([])).map_err(db)?;
    Ok(())
}

type Job = Box<dyn FnOnce(&mut Db) + Send>;

/// A thread that owns one connection and runs the jobs sent to it in order.
struct Worker {
    jobs: mpsc::Sender<Job>,
}

impl Worker {
    fn start(name: &str, db: Db) -> Result<Self, StoreError> {
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut db = db;
                // Ends when the store (every sender) is dropped; the connection closes then.
                loop {
                    let job = if db.batch.is_some() {
                        match rx.recv_timeout(BATCH_IDLE) {
                            Ok(job) => Some(job),
                            Err(mpsc::RecvTimeoutError::Timeout) => None,
                            Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        }
                    } else {
                        match rx.recv() {
                            Ok(job) => Some(job),
                            Err(_) => break,
                        }
                    };
                    let idle = job.is_none();
                    if let Some(job) = job {
                        job(&mut db);
                    }
                    if db.batch_due(idle) {
                        // A failure is recorded in `lost`, for the next `sync`.
                        let _ = db.end_batch();
                    }
                }
                let _ = db.end_batch();
            })
            .map_err(|e| StoreError::Database(format!("cannot start the store's thread: {e}")))?;
        Ok(Self { jobs })
    }

    /// Runs `f` on the worker's thread and returns its result. If the future is
    /// dropped, `f` still runs to its end (a commit is then all done or not at all, and
    /// its result is lost).
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Db) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |db: &mut Db| {
                let _ = tx.send(f(db));
            }))
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

/// Opens one connection with the store's settings.
fn connect(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(db)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(db)?;
    conn.pragma_update(None, "synchronous", "FULL").map_err(db)?;
    // Deleted and overwritten records are zeroed in the file, not left in free space (a
    // replaced account record, deleted prekeys and skipped keys).
    conn.pragma_update(None, "secure_delete", "ON").map_err(db)?;
    // Savepoint journals (a deferred commit's undo) and temporary tables stay in memory:
    // never spilled to a file in the system's temporary directory.
    conn.pragma_update(None, "temp_store", "MEMORY").map_err(db)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating it if needed) the database file at `path`.
    ///
    /// `synchronous=FULL`: a commit is on disk when it returns. The client sends what a
    /// committed ratchet step encrypted, and a step rolled back by a power loss would
    /// encrypt the next message under a message key already used. Inbound envelopes are
    /// committed deferred and synced before their ack (see [`Store::commit_deferred`]).
    /// In WAL mode one fsync of the log covers every commit before it.
    pub async fn open(path: &Path, key: &StoreKey) -> Result<Self, StoreError> {
        let crypt = Arc::new(Crypt::new(&key.0));
        let batch_open = Arc::new(AtomicBool::new(false));
        let writer = Worker::start("sotto-store-writer", Db::new(crypt.clone(), batch_open.clone()))?;
        let reader = Worker::start("sotto-store-reader", Db::new(crypt, Arc::new(AtomicBool::new(false))))?;
        let p = path.to_path_buf();
        writer
            .run(move |d| {
                let conn = connect(&p)?;
                for stmt in SCHEMA {
                    conn.execute_batch(stmt).map_err(db)?;
                }
                migrate_search_index(&conn)?;
                build_search_index(&conn, &d.crypt)?;
                d.conn = Some(conn);
                Ok(())
            })
            .await?;
        let p = path.to_path_buf();
        reader
            .run(move |d| {
                d.conn = Some(connect(&p)?);
                Ok(())
            })
            .await?;
        Ok(Self {
            writer,
            reader,
            batch_open,
            path: path.to_path_buf(),
        })
    }

    /// Closes the connections (the last one to close checkpoints the log into the
    /// database file). Every later operation fails.
    pub async fn close(&self) {
        for w in [&self.reader, &self.writer] {
            let _ = w
                .run(|d| {
                    let batch = d.end_batch();
                    if let Some(conn) = d.conn.take() {
                        conn.close().map_err(|(_, e)| db(e))?;
                    }
                    batch?;
                    Ok(())
                })
                .await;
        }
    }

    /// Runs a read on the reader, or on the writer while it has a batch open (the reader
    /// does not see it).
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Db) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if self.batch_open.load(Ordering::Acquire) {
            self.writer.run(f).await
        } else {
            self.reader.run(f).await
        }
    }

    /// Every `(k, plaintext)` row of a `(k, v)` table, read with `sql`.
    async fn all(&self, table: &'static str, sql: &'static str) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.read(move |d| {
            let c = d.crypt.clone();
            let conn = d.conn()?;
            let mut stmt = conn.prepare_cached(sql).map_err(db)?;
            let mut rows = stmt.query([]).map_err(db)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(db)? {
                let k = blob(row, 0)?;
                out.push((k.to_vec(), c.open(table, k, blob(row, 1)?)?.to_vec()));
            }
            Ok(out)
        })
        .await
    }

    /// Rows of the `sessions`, `groups` or `sender_keys` table: (the key bytes stored
    /// inside the value, version, the rest of the value).
    async fn load_versioned(&self, table: &'static str) -> Result<Vec<(Vec<u8>, u64, Vec<u8>)>, StoreError> {
        let (sql, max_key) = match table {
            "sessions" => ("SELECT k, version, v FROM sessions", 64),
            "groups" => ("SELECT k, version, v FROM groups", 128),
            _ => ("SELECT k, version, v FROM sender_keys", 128),
        };
        self.read(move |d| {
            let c = d.crypt.clone();
            let conn = d.conn()?;
            let mut stmt = conn.prepare_cached(sql).map_err(db)?;
            let mut rows = stmt.query([]).map_err(db)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(db)? {
                let plain = c.open(table, blob(row, 0)?, blob(row, 2)?)?;
                let mut r = sotto_crypto::codec::Reader::new(&plain);
                let key = r.var_bytes("key", max_key)?.to_vec();
                out.push((key, to_u64(int(row, 1)?), r.rest().to_vec()));
            }
            Ok(out)
        })
        .await
    }
}

impl AccountStore for SqliteStore {
    async fn load_account(&self) -> Result<Option<Versioned<AccountRecord>>, StoreError> {
        self.read(|d| {
            let c = d.crypt.clone();
            let conn = d.conn()?;
            let mut stmt = conn
                .prepare_cached("SELECT version, v FROM account WHERE id = 1")
                .map_err(db)?;
            let mut rows = stmt.query([]).map_err(db)?;
            let Some(row) = rows.next().map_err(db)? else {
                return Ok(None);
            };
            let plain = c.open("account", ACCOUNT_TAG, blob(row, 1)?)?;
            Ok(Some(Versioned {
                version: to_u64(int(row, 0)?),
                value: decode_account(&plain)?,
            }))
        })
        .await
    }
}

impl GroupStore for SqliteStore {
    async fn load_groups(&self) -> Result<Vec<(GroupId, Versioned<GroupRecord>)>, StoreError> {
        let mut out = Vec::new();
        for (key, version, value) in self.load_versioned("groups").await? {
            let id: [u8; 32] = key
                .as_slice()
                .try_into()
                .map_err(|_| StoreError::Decode(sotto_crypto::codec::DecodeError::Invalid { field: "group id" }))?;
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
        for (key, version, value) in self.load_versioned("sender_keys").await? {
            out.push((
                decode_sender_key_key(&key)?,
                Versioned {
                    version,
                    value: decode_sender_keys(&value)?,
                },
            ));
        }
        Ok(out)
    }
}

impl SessionStore for SqliteStore {
    async fn load_sessions(&self) -> Result<Vec<(PeerDevice, Versioned<SessionSet>)>, StoreError> {
        let mut out = Vec::new();
        for (key, version, value) in self.load_versioned("sessions").await? {
            out.push((
                decode_peer(&key)?,
                Versioned {
                    version,
                    value: decode_sessions(&value)?,
                },
            ));
        }
        Ok(out)
    }
}

fn prekey_key(id: &PreKeyId) -> Vec<u8> {
    let mut k = vec![id.0];
    k.extend_from_slice(&id.1.to_be_bytes());
    k
}

impl PreKeyStore for SqliteStore {
    async fn load_prekeys(&self) -> Result<Vec<(PreKeyId, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for (_, v) in self.all("prekeys", "SELECT k, v FROM prekeys").await? {
            if v.len() < 5 {
                return Err(StoreError::Decode(sotto_crypto::DecodeError::Invalid {
                    field: "prekey row",
                }));
            }
            let id = (v[0], u32::from_be_bytes([v[1], v[2], v[3], v[4]]));
            out.push((id, v[5..].to_vec()));
        }
        Ok(out)
    }
}

impl DeviceListStore for SqliteStore {
    async fn load_device_lists(&self) -> Result<Vec<(AccountId, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for (_, v) in self.all("device_lists", "SELECT k, v FROM device_lists").await? {
            if v.len() < 32 {
                return Err(StoreError::Decode(sotto_crypto::DecodeError::Invalid {
                    field: "device list row",
                }));
            }
            let mut a = [0u8; 32];
            a.copy_from_slice(&v[..32]);
            out.push((AccountId(a), v[32..].to_vec()));
        }
        Ok(out)
    }
}

impl MessageStore for SqliteStore {
    async fn conversations(&self) -> Result<Vec<ConversationRecord>, StoreError> {
        let mut out = Vec::new();
        for (_, v) in self.all("conversations", "SELECT k, v FROM conversations").await? {
            out.push(super::records::decode_conversation(&v)?);
        }
        out.sort_by_key(|c| c.peer);
        Ok(out)
    }

    async fn messages(&self, conversation: AccountId, page: Page) -> Result<Vec<StoredMessage>, StoreError> {
        self.read(move |d| {
            let c = d.crypt.clone();
            let conv = c.tag("conversations", conversation.as_bytes());
            let conn = d.conn()?;
            let mut stmt = conn
                .prepare_cached("SELECT ord, k, v FROM messages WHERE conv = ? AND ord < ? ORDER BY ord DESC LIMIT ?")
                .map_err(db)?;
            let before = to_i64(page.before.unwrap_or(u64::MAX));
            let limit = i64::from(page.limit.min(MAX_PAGE));
            let mut rows = stmt.query(params![conv, before, limit]).map_err(db)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(db)? {
                out.push(message_row(&c, row)?);
            }
            out.reverse();
            Ok(out)
        })
        .await
    }

    async fn recent_message_ids(&self, limit: u32) -> Result<Vec<MessageKey>, StoreError> {
        self.read(move |d| {
            let c = d.crypt.clone();
            let conn = d.conn()?;
            let mut stmt = conn
                .prepare_cached("SELECT k, v FROM messages ORDER BY ord DESC LIMIT ?")
                .map_err(db)?;
            let mut rows = stmt.query(params![i64::from(limit)]).map_err(db)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(db)? {
                let plain = c.open("messages", blob(row, 0)?, blob(row, 1)?)?;
                out.push(decode_message(&plain, 0)?.key());
            }
            Ok(out)
        })
        .await
    }

    async fn message(&self, key: MessageKey) -> Result<Option<StoredMessage>, StoreError> {
        self.read(move |d| {
            let c = d.crypt.clone();
            let k = c.tag("messages", &key.to_bytes());
            let conn = d.conn()?;
            let row: Option<(i64, Vec<u8>)> = conn
                .prepare_cached("SELECT ord, v FROM messages WHERE k = ?")
                .and_then(|mut s| s.query_row(params![k], |r| Ok((r.get(0)?, r.get(1)?))).optional())
                .map_err(db)?;
            let Some((ord, v)) = row else { return Ok(None) };
            Ok(Some(decode_message(&c.open("messages", &k, &v)?, to_u64(ord))?))
        })
        .await
    }

    async fn search(&self, query: &str, limit: u32) -> Result<Vec<StoredMessage>, StoreError> {
        let query = query.to_owned();
        self.read(move |d| {
            let c = d.crypt.clone();
            let conn = d.conn()?;
            let limit = limit.min(MAX_PAGE) as usize;
            let terms = super::search::query_terms(&query);
            let mut out = Vec::new();
            let check = |row: &Row<'_>, out: &mut Vec<StoredMessage>| -> Result<(), StoreError> {
                let m = message_row(&c, row)?;
                if super::search::searchable(&m) && super::search::matches(&m.text, &query) {
                    out.push(m);
                }
                Ok(())
            };
            if terms.is_empty() {
                // Words of one character only: the newest texts are checked one by one.
                let mut stmt = conn
                    .prepare_cached("SELECT ord, k, v FROM messages ORDER BY ord DESC LIMIT ?")
                    .map_err(db)?;
                let mut rows = stmt.query(params![i64::from(MAX_PAGE)]).map_err(db)?;
                while let Some(row) = rows.next().map_err(db)? {
                    if out.len() >= limit {
                        break;
                    }
                    check(row, &mut out)?;
                }
                return Ok(out);
            }
            // The rows holding every term's tag, newest first; each one checked against
            // its decrypted text (a tag can collide, a one-letter word is not indexed).
            let one = "SELECT ord FROM search_terms WHERE t = ?";
            let sql = format!(
                "SELECT m.ord, m.k, m.v FROM messages m WHERE m.ord IN ({}) ORDER BY m.ord DESC",
                vec![one; terms.len()].join(" INTERSECT ")
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(db)?;
            let tags: Vec<Vec<u8>> = terms.iter().map(|t| term_tag(&c, t)).collect();
            let mut rows = stmt.query(rusqlite::params_from_iter(tags.iter())).map_err(db)?;
            while let Some(row) = rows.next().map_err(db)? {
                if out.len() >= limit {
                    break;
                }
                check(row, &mut out)?;
            }
            Ok(out)
        })
        .await
    }

    async fn messages_after(&self, order: u64, limit: u32) -> Result<Vec<StoredMessage>, StoreError> {
        self.read(move |d| {
            let c = d.crypt.clone();
            let conn = d.conn()?;
            let mut stmt = conn
                .prepare_cached("SELECT ord, k, v FROM messages WHERE ord > ? ORDER BY ord LIMIT ?")
                .map_err(db)?;
            let mut rows = stmt
                .query(params![to_i64(order), i64::from(limit.min(MAX_PAGE))])
                .map_err(db)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(db)? {
                out.push(message_row(&c, row)?);
            }
            Ok(out)
        })
        .await
    }

    async fn expired_messages(&self, now_ms: u64, limit: u32) -> Result<Vec<MessageKey>, StoreError> {
        self.read(move |d| {
            let c = d.crypt.clone();
            let conn = d.conn()?;
            let mut stmt = conn
                .prepare_cached(
                    "SELECT m.k, m.v FROM expiring e JOIN messages m ON m.k = e.k WHERE e.expires <= ? ORDER BY e.expires LIMIT ?",
                )
                .map_err(db)?;
            let mut rows = stmt.query(params![to_i64(now_ms), i64::from(limit)]).map_err(db)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(db)? {
                let plain = c.open("messages", blob(row, 0)?, blob(row, 1)?)?;
                out.push(decode_message(&plain, 0)?.key());
            }
            Ok(out)
        })
        .await
    }
}

impl InboundStore for SqliteStore {
    async fn processed_envelopes(&self, limit: u32) -> Result<Vec<EnvelopeDigest>, StoreError> {
        self.read(move |d| {
            let c = d.crypt.clone();
            let conn = d.conn()?;
            let mut stmt = conn
                .prepare_cached("SELECT k, v FROM processed ORDER BY ord DESC LIMIT ?")
                .map_err(db)?;
            let mut rows = stmt.query(params![i64::from(limit)]).map_err(db)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(db)? {
                let d: EnvelopeDigest = c.open("processed", blob(row, 0)?, blob(row, 1)?)?[..]
                    .try_into()
                    .map_err(|_| {
                        StoreError::Decode(sotto_crypto::DecodeError::Invalid {
                            field: "envelope digest",
                        })
                    })?;
                out.push(d);
            }
            Ok(out)
        })
        .await
    }

    async fn blob_tokens(&self) -> Result<Vec<u8>, StoreError> {
        let rows = self.all("blob_tokens", "SELECT k, v FROM blob_tokens").await?;
        Ok(rows.into_iter().next().map(|(_, v)| v).unwrap_or_default())
    }

    async fn pending_inbound(&self) -> Result<Vec<PendingInbound>, StoreError> {
        let mut out = Vec::new();
        for (_, v) in self.all("pending", "SELECT k, v FROM pending ORDER BY ord").await? {
            out.push(decode_pending(&v)?);
        }
        Ok(out)
    }
}

impl OutboxStore for SqliteStore {
    async fn outbox(&self, limit: u32) -> Result<Vec<OutboxItem>, StoreError> {
        self.read(move |d| {
            let c = d.crypt.clone();
            let mut cache = std::mem::take(&mut d.outbox_cache);
            let conn = d.conn()?;
            let mut stmt = conn
                .prepare_cached("SELECT k, v FROM outbox ORDER BY ord LIMIT ?")
                .map_err(db)?;
            let mut rows = stmt.query(params![i64::from(limit)]).map_err(db)?;
            let mut out = Vec::new();
            let mut fresh = std::collections::HashMap::new();
            while let Some(row) = rows.next().map_err(db)? {
                let (k, v) = (blob(row, 0)?, blob(row, 1)?);
                let item = match cache.remove(k) {
                    // The same sealed bytes under the same row key: the same item.
                    Some((sealed, item)) if sealed == v => item,
                    _ => decode_outbox(&c.open("outbox", k, v)?)?,
                };
                out.push(item.clone());
                fresh.insert(k.to_vec(), (v.to_vec(), item));
            }
            drop(rows);
            drop(stmt);
            d.outbox_cache = fresh;
            Ok(out)
        })
        .await
    }
}

impl Store for SqliteStore {
    async fn commit(&self, changes: Changes) -> Result<Committed, StoreError> {
        self.writer.run(move |d| commit(d, &changes, true)).await
    }

    /// An advisory lock on `<database>.<role>.lock` beside the database file (`flock` /
    /// `LockFileEx`: per open file, so a second client in this process is refused too).
    fn lock_process(&self, role: super::ProcessRole) -> Result<Option<super::ProcessLock>, StoreError> {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{}.lock", role.code()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::path::PathBuf::from(name))
            .map_err(|e| StoreError::Database(format!("process lock: {e}")))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(super::ProcessLock::new(file))),
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse { role }),
            Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Database(format!("process lock: {e}"))),
        }
    }

    async fn commit_deferred(&self, changes: Changes) -> Result<Committed, StoreError> {
        self.writer.run(move |d| commit(d, &changes, false)).await
    }

    async fn sync(&self) -> Result<(), StoreError> {
        self.writer.run(sync).await
    }

    /// Old page images stay in the write-ahead log until a checkpoint copies it into the
    /// database (where `secure_delete` zeroed the freed bytes) and truncates it.
    async fn scrub(&self) -> Result<(), StoreError> {
        self.writer
            .run(|d| {
                sync(d)?;
                let busy: i64 = d
                    .conn()?
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                    .map_err(db)?;
                if busy != 0 {
                    // A reader (another process on the store) kept it from finishing; the
                    // next checkpoint, at the latest when the last connection closes,
                    // completes it.
                    return Err(StoreError::Database("the checkpoint was blocked by a reader".into()));
                }
                Ok(())
            })
            .await
    }
}

/// Makes every commit made through this connection durable: commits the open batch.
fn sync(d: &mut Db) -> Result<(), StoreError> {
    d.end_batch()?;
    if std::mem::take(&mut d.lost) {
        return Err(StoreError::Database("the database rolled back deferred commits".into()));
    }
    Ok(())
}

/// One commit, in a savepoint of the open batch (opened if needed); a durable one then
/// commits the batch.
fn commit(d: &mut Db, changes: &Changes, durable: bool) -> Result<Committed, StoreError> {
    d.begin_batch()?;
    let c = d.crypt.clone();
    let conn = d.conn()?;
    run_sql(conn, "SAVEPOINT c")?;
    let written = write_changes(conn, &c, changes);
    let kept = match &written {
        Ok(_) => run_sql(conn, "RELEASE c"),
        Err(_) => run_sql(conn, "ROLLBACK TO c").and_then(|()| run_sql(conn, "RELEASE c")),
    };
    if kept.is_err() && !conn.is_autocommit() {
        // The savepoint could not be undone or kept on its own: the whole batch goes.
        let _ = run_sql(conn, "ROLLBACK");
    }
    d.check_batch();
    let committed = match (written, kept) {
        (Ok(committed), Ok(())) => committed,
        (Err(e), _) | (_, Err(e)) => {
            if matches!(d.batch, Some((_, 0))) {
                // Nothing else in the batch: release the write lock now.
                let _ = d.end_batch();
            }
            return Err(e);
        }
    };
    if let Some((_, n)) = &mut d.batch {
        *n += 1;
    }
    if durable {
        d.end_batch()?;
    }
    Ok(committed)
}

/// Executes one cached statement, returning the number of rows it changed.
fn exec(tx: &Connection, sql: &'static str, p: impl rusqlite::Params) -> Result<usize, StoreError> {
    tx.prepare_cached(sql).and_then(|mut s| s.execute(p)).map_err(db)
}

/// Writes one versioned row with compare-and-swap: `sql.0` inserts it at version 1
/// (binds `k, v`) when `expected` is `None`; `sql.1` moves it from `expected` to
/// `expected + 1` (binds `new, v, k, expected`). Returns the new version; a row that is
/// already there, or at another version, is [`StoreError::Conflict`].
fn cas_write(
    tx: &Connection,
    sql: (&'static str, &'static str),
    k: &[u8],
    expected: Option<u64>,
    v: &[u8],
) -> Result<u64, StoreError> {
    let (new, done) = match expected {
        None => (1, exec(tx, sql.0, params![k, v])?),
        Some(e) => {
            let new = e.checked_add(1).ok_or(StoreError::Conflict)?;
            (new, exec(tx, sql.1, params![to_i64(new), v, k, to_i64(e)])?)
        }
    };
    if done != 1 {
        return Err(StoreError::Conflict);
    }
    Ok(new)
}

/// The stored pin of `account` (signed list bytes), read inside the open transaction.
fn stored_pin(c: &Crypt, tx: &Connection, account: &AccountId) -> Result<Option<Vec<u8>>, StoreError> {
    let k = c.tag("device_lists", account.as_bytes());
    let v: Option<Vec<u8>> = tx
        .prepare_cached("SELECT v FROM device_lists WHERE k = ?")
        .and_then(|mut s| s.query_row(params![k], |r| r.get(0)).optional())
        .map_err(db)?;
    let Some(v) = v else { return Ok(None) };
    let plain = c.open("device_lists", &k, &v)?;
    if plain.len() < 32 {
        return Err(StoreError::Decode(sotto_crypto::DecodeError::Invalid {
            field: "device list row",
        }));
    }
    Ok(Some(plain[32..].to_vec()))
}

/// Writes `changes` inside the open transaction; on an error the caller rolls back.
/// The search index's tag of a term: 16 bytes of a keyed hash.
fn term_tag(c: &Crypt, term: &str) -> Vec<u8> {
    let mut t = c.tag("search", term.as_bytes());
    t.truncate(16);
    t
}

/// Adds the search terms of message row `ord` to the index.
fn index_message(tx: &Connection, c: &Crypt, ord: i64, m: &StoredMessage) -> Result<(), StoreError> {
    if !super::search::searchable(m) {
        return Ok(());
    }
    let mut stmt = tx
        .prepare_cached("INSERT OR IGNORE INTO search_terms (t, ord) VALUES (?, ?)")
        .map_err(db)?;
    for term in super::search::terms(&m.text) {
        stmt.execute(params![term_tag(c, &term), ord]).map_err(db)?;
    }
    Ok(())
}

/// A store made before the index was clustered on its terms has a rowid table `search`:
/// it is dropped (with its rows' tags: secure_delete overwrites them) and the index built
/// again in `search_terms`.
fn migrate_search_index(conn: &Connection) -> Result<(), StoreError> {
    let old: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'search'",
            [],
            |r| r.get(0),
        )
        .map_err(db)?;
    if old > 0 {
        conn.execute_batch("BEGIN IMMEDIATE; DROP TABLE search; DELETE FROM search_built; COMMIT;")
            .map_err(db)?;
    }
    Ok(())
}

/// Indexes every stored message, once (a store written before the index existed).
fn build_search_index(conn: &Connection, c: &Crypt) -> Result<(), StoreError> {
    let built: Option<i64> = conn
        .query_row("SELECT id FROM search_built", [], |r| r.get(0))
        .optional()
        .map_err(db)?;
    if built.is_some() {
        return Ok(());
    }
    let tx = conn.unchecked_transaction().map_err(db)?;
    exec(&tx, "DELETE FROM search_terms", params![])?;
    {
        let mut stmt = tx.prepare("SELECT ord, k, v FROM messages").map_err(db)?;
        let mut rows = stmt.query([]).map_err(db)?;
        while let Some(row) = rows.next().map_err(db)? {
            let ord = int(row, 0)?;
            let m = decode_message(&c.open("messages", blob(row, 1)?, blob(row, 2)?)?, to_u64(ord))?;
            index_message(&tx, c, ord, &m)?;
        }
    }
    exec(&tx, "INSERT INTO search_built (id) VALUES (1)", params![])?;
    tx.commit().map_err(db)
}

/// Records when the message row `k` expires.
fn set_expiry(tx: &Connection, k: &[u8], expires_at_ms: u64) -> Result<(), StoreError> {
    exec(
        tx,
        "INSERT INTO expiring (k, expires) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET expires = excluded.expires",
        params![k, to_i64(expires_at_ms)],
    )?;
    Ok(())
}

fn write_changes(tx: &Connection, c: &Crypt, changes: &Changes) -> Result<Committed, StoreError> {
    let mut committed = Committed::default();
    if let Some(w) = &changes.account {
        let v = c.seal("account", ACCOUNT_TAG, &encode_account(&w.value))?;
        let new = match w.expected {
            None => (
                1,
                exec(
                    tx,
                    "INSERT INTO account (id, version, v) VALUES (1, 1, ?) ON CONFLICT DO NOTHING",
                    params![v],
                )?,
            ),
            Some(e) => {
                let new = e.checked_add(1).ok_or(StoreError::Conflict)?;
                let done = exec(
                    tx,
                    "UPDATE account SET version = ?, v = ? WHERE id = 1 AND version = ?",
                    params![to_i64(new), v, to_i64(e)],
                )?;
                (new, done)
            }
        };
        if new.1 != 1 {
            return Err(StoreError::Conflict);
        }
        committed.account_version = Some(new.0);
    }
    for (peer, w) in &changes.sessions {
        let pk = encode_peer(peer);
        let k = c.tag("sessions", &pk);
        let mut plain = Vec::with_capacity(64);
        sotto_crypto::codec::Put::put_var(&mut plain, &pk);
        plain.extend_from_slice(&encode_sessions(&w.value));
        let v = c.seal("sessions", &k, &plain)?;
        let sql = (
            "INSERT INTO sessions (k, version, v) VALUES (?, 1, ?) ON CONFLICT DO NOTHING",
            "UPDATE sessions SET version = ?, v = ? WHERE k = ? AND version = ?",
        );
        committed.session_versions.push(cas_write(tx, sql, &k, w.expected, &v)?);
    }
    for (id, w) in &changes.groups {
        let k = c.tag("groups", &id.0);
        let mut plain = Vec::with_capacity(64 + w.value.log.len());
        sotto_crypto::codec::Put::put_var(&mut plain, &id.0);
        plain.extend_from_slice(&encode_group(&w.value));
        let v = c.seal("groups", &k, &plain)?;
        let sql = (
            "INSERT INTO groups (k, version, v) VALUES (?, 1, ?) ON CONFLICT DO NOTHING",
            "UPDATE groups SET version = ?, v = ? WHERE k = ? AND version = ?",
        );
        committed.group_versions.push(cas_write(tx, sql, &k, w.expected, &v)?);
    }
    for (id, w) in &changes.sender_keys {
        let key = sender_key_key(id);
        let k = c.tag("sender_keys", &key);
        let mut plain = Vec::with_capacity(256);
        sotto_crypto::codec::Put::put_var(&mut plain, &key);
        plain.extend_from_slice(&encode_sender_keys(&w.value));
        let v = c.seal("sender_keys", &k, &plain)?;
        let sql = (
            "INSERT INTO sender_keys (k, version, v) VALUES (?, 1, ?) ON CONFLICT DO NOTHING",
            "UPDATE sender_keys SET version = ?, v = ? WHERE k = ? AND version = ?",
        );
        committed
            .sender_key_versions
            .push(cas_write(tx, sql, &k, w.expected, &v)?);
    }
    for id in &changes.prekeys_removed {
        let k = c.tag("prekeys", &prekey_key(id));
        if exec(tx, "DELETE FROM prekeys WHERE k = ?", params![k])? != 1 {
            return Err(StoreError::Conflict);
        }
    }
    for (id, p) in &changes.prekeys_added {
        let key = prekey_key(id);
        let k = c.tag("prekeys", &key);
        let v = c.seal("prekeys", &k, &[&key[..], p].concat())?;
        exec(
            tx,
            "INSERT INTO prekeys (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            params![k, v],
        )?;
    }
    for (a, expected) in &changes.pins {
        check_pin(stored_pin(c, tx, a)?.as_deref(), *expected)?;
    }
    for (a, l) in &changes.device_lists {
        check_pin_write(stored_pin(c, tx, a)?.as_deref(), l)?;
        let k = c.tag("device_lists", a.as_bytes());
        let v = c.seal("device_lists", &k, &[&a.as_bytes()[..], l].concat())?;
        exec(
            tx,
            "INSERT INTO device_lists (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            params![k, v],
        )?;
    }
    for peer in &changes.conversations_removed {
        exec(
            tx,
            "DELETE FROM conversations WHERE k = ?",
            params![c.tag("conversations", peer.as_bytes())],
        )?;
    }
    for conv in &changes.conversations {
        let k = c.tag("conversations", conv.peer.as_bytes());
        let v = c.seal("conversations", &k, &super::records::encode_conversation(conv))?;
        exec(
            tx,
            "INSERT INTO conversations (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            params![k, v],
        )?;
    }
    for m in &changes.messages {
        let k = c.tag("messages", &m.key().to_bytes());
        let conv = c.tag("conversations", m.conversation.as_bytes());
        let v = c.seal("messages", &k, &encode_message(m))?;
        let done = exec(
            tx,
            "INSERT INTO messages (k, conv, v) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            params![k, conv, v],
        )?;
        if done == 1 {
            let ord = tx.last_insert_rowid();
            committed.inserted.push((m.id, to_u64(ord)));
            if m.expires_at_ms != 0 {
                set_expiry(tx, &k, m.expires_at_ms)?;
            }
            index_message(tx, c, ord, m)?;
        }
    }
    for (key, update) in &changes.message_updates {
        let k = c.tag("messages", &key.to_bytes());
        let row: Option<(i64, Vec<u8>)> = tx
            .prepare_cached("SELECT ord, v FROM messages WHERE k = ?")
            .and_then(|mut s| s.query_row(params![k], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(db)?;
        let Some((ord, v)) = row else { continue };
        let mut m = decode_message(&c.open("messages", &k, &v)?, 0)?;
        let old = m.status;
        if !m.apply(update) {
            continue;
        }
        if matches!(update, MessageUpdate::Edit { .. } | MessageUpdate::Delete) {
            exec(tx, "DELETE FROM search_terms WHERE ord = ?", params![ord])?;
            index_message(tx, c, ord, &m)?;
        }
        let v = c.seal("messages", &k, &encode_message(&m))?;
        exec(tx, "UPDATE messages SET v = ? WHERE k = ?", params![v, k])?;
        if update.is_status() {
            committed.advanced.push((*key, old));
        }
        if matches!(update, MessageUpdate::ExpireAt(_)) {
            set_expiry(tx, &k, m.expires_at_ms)?;
        }
    }
    for key in &changes.messages_removed {
        let k = c.tag("messages", &key.to_bytes());
        exec(
            tx,
            "DELETE FROM search_terms WHERE ord = (SELECT ord FROM messages WHERE k = ?)",
            params![k],
        )?;
        exec(tx, "DELETE FROM messages WHERE k = ?", params![k])?;
        exec(tx, "DELETE FROM expiring WHERE k = ?", params![k])?;
    }
    for item in &changes.outbox_add {
        let k = c.tag("outbox", &item.id.0);
        let v = c.seal("outbox", &k, &encode_outbox(item))?;
        exec(
            tx,
            "INSERT INTO outbox (k, v) VALUES (?, ?) ON CONFLICT DO NOTHING",
            params![k, v],
        )?;
    }
    for id in &changes.outbox_remove {
        exec(tx, "DELETE FROM outbox WHERE k = ?", params![c.tag("outbox", &id.0)])?;
    }
    for digest in &changes.envelopes {
        let k = c.tag("processed", digest);
        let v = c.seal("processed", &k, digest)?;
        exec(
            tx,
            "INSERT INTO processed (k, v) VALUES (?, ?) ON CONFLICT DO NOTHING",
            params![k, v],
        )?;
    }
    for p in &changes.pending_add {
        let k = c.tag("pending", &p.digest);
        let v = c.seal("pending", &k, &encode_pending(p))?;
        exec(
            tx,
            "INSERT INTO pending (k, v) VALUES (?, ?) ON CONFLICT DO NOTHING",
            params![k, v],
        )?;
    }
    for digest in &changes.pending_remove {
        exec(tx, "DELETE FROM pending WHERE k = ?", params![c.tag("pending", digest)])?;
    }
    if let Some(tokens) = &changes.blob_tokens {
        let k = c.tag("blob_tokens", b"tokens");
        let v = c.seal("blob_tokens", &k, tokens)?;
        exec(
            tx,
            "INSERT INTO blob_tokens (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            params![k, v],
        )?;
    }
    if !changes.envelopes.is_empty() {
        exec(
            tx,
            "DELETE FROM processed WHERE ord <= (SELECT MAX(ord) FROM processed) - ?",
            params![MAX_PROCESSED_ENVELOPES as i64],
        )?;
    }
    for item in &changes.outbox_update {
        let k = c.tag("outbox", &item.id.0);
        let v = c.seal("outbox", &k, &encode_outbox(item))?;
        exec(tx, "UPDATE outbox SET v = ? WHERE k = ?", params![v, k])?;
    }
    Ok(committed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory, removed on drop (also when an assertion fails).
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("sotto-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// `(journal_mode, synchronous, secure_delete)` of a worker's connection.
    async fn pragmas(w: &Worker) -> (String, i64, i64) {
        w.run(|d| {
            let conn = d.conn()?;
            let q = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, rusqlite::types::Value>(0));
            let (j, s, sd) = (
                q("PRAGMA journal_mode").map_err(db)?,
                q("PRAGMA synchronous").map_err(db)?,
                q("PRAGMA secure_delete").map_err(db)?,
            );
            use rusqlite::types::Value::{Integer, Text};
            match (j, s, sd) {
                (Text(j), Integer(s), Integer(sd)) => Ok((j, s, sd)),
                _ => Err(StoreError::Database("unexpected pragma values".into())),
            }
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn opens_in_wal_mode_with_synchronous_full_and_secure_delete() {
        let dir = TempDir::new("sqlite-pragmas");
        let store = SqliteStore::open(&dir.0.join("store.db"), &StoreKey::new([3; 32]))
            .await
            .unwrap();
        let (journal, synchronous, secure_delete) = pragmas(&store.writer).await;
        let (_, _, reader_secure) = pragmas(&store.reader).await;
        assert_eq!(journal, "wal");
        assert_eq!(synchronous, 2, "synchronous=FULL: a commit is on disk when it returns");
        assert_eq!((secure_delete, reader_secure), (1, 1), "freed bytes are zeroed");
        // Deferred commits do not lower it (they are batched instead).
        for _ in 0..3 {
            store.commit_deferred(Changes::default()).await.unwrap();
            store.sync().await.unwrap();
        }
        assert_eq!(pragmas(&store.writer).await.1, 2);
        store.close().await;
        assert!(matches!(store.load_account().await, Err(StoreError::Database(_))));
    }

    fn text(n: u8) -> StoredMessage {
        StoredMessage::text(
            crate::ids::MessageId([n; 16]),
            AccountId([1; 32]),
            (AccountId([1; 32]), sotto_crypto::DeviceId(1)),
            u64::from(n),
            format!("text {n}"),
            super::super::MessageStatus::Received,
        )
    }

    async fn count(s: &SqliteStore) -> usize {
        s.messages(AccountId([1; 32]), Page::default()).await.unwrap().len()
    }

    /// Deferred commits are visible to this store at once, and to another connection (a
    /// second process) once synced, or once the writer was idle for a moment.
    #[tokio::test]
    async fn deferred_commits_are_batched_and_committed_by_sync_or_when_idle() {
        let dir = TempDir::new("sqlite-batch");
        let path = dir.0.join("store.db");
        let key = StoreKey::new([5; 32]);
        let a = SqliteStore::open(&path, &key).await.unwrap();
        let b = SqliteStore::open(&path, &key).await.unwrap();
        for n in 1..=3 {
            a.commit_deferred(Changes {
                messages: vec![text(n)],
                ..Changes::default()
            })
            .await
            .unwrap();
        }
        assert!(a.batch_open.load(Ordering::Acquire));
        assert_eq!(count(&a).await, 3, "this store reads its open batch");
        assert_eq!(count(&b).await, 0, "another connection does not see it yet");
        a.sync().await.unwrap();
        assert!(!a.batch_open.load(Ordering::Acquire));
        assert_eq!(count(&b).await, 3);
        // A failed deferred commit undoes only its own writes.
        let failed = a
            .commit_deferred(Changes {
                messages: vec![text(4)],
                prekeys_removed: vec![(2, 99)],
                ..Changes::default()
            })
            .await;
        assert!(matches!(failed, Err(StoreError::Conflict)));
        a.commit_deferred(Changes {
            messages: vec![text(5)],
            ..Changes::default()
        })
        .await
        .unwrap();
        // Left alone, the batch is committed after `BATCH_IDLE`: the other process can write.
        tokio::time::sleep(BATCH_IDLE * 5).await;
        assert!(!a.batch_open.load(Ordering::Acquire));
        assert_eq!(count(&b).await, 4);
        b.commit(Changes {
            messages: vec![text(6)],
            ..Changes::default()
        })
        .await
        .unwrap();
        assert_eq!(count(&a).await, 5);
        a.close().await;
        b.close().await;
    }

    /// A store whose search index is the older rowid table drops it on open and builds
    /// the index again in `search_terms`.
    #[tokio::test]
    async fn an_index_made_before_search_terms_is_built_again() {
        let dir = TempDir::new("sqlite-search-migrate");
        let path = dir.0.join("store.db");
        let key = StoreKey::new([5; 32]);
        let message = StoredMessage::text(
            crate::ids::MessageId([1; 16]),
            AccountId([1; 32]),
            (AccountId([1; 32]), sotto_crypto::DeviceId(1)),
            1,
            "hello migrated world".into(),
            super::super::MessageStatus::Received,
        );
        let store = SqliteStore::open(&path, &key).await.unwrap();
        store
            .commit(Changes {
                messages: vec![message],
                ..Changes::default()
            })
            .await
            .unwrap();
        store.close().await;
        // As a store before `search_terms` left it: the rowid table, built, holding a
        // stale tag.
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "DROP TABLE search_terms;
                 CREATE TABLE search (t BLOB NOT NULL, ord INTEGER NOT NULL) STRICT;
                 CREATE INDEX search_by_term ON search (t, ord);
                 CREATE INDEX search_by_ord ON search (ord);
                 INSERT INTO search (t, ord) VALUES (x'00', 1);",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path, &key).await.unwrap();
        let found = store.search("migr wor", 10).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].text, "hello migrated world");
        let old = store
            .read(|d| {
                d.conn()?
                    .query_row(
                        "SELECT count(*) FROM sqlite_master WHERE name LIKE 'search' OR name LIKE 'search_by%'",
                        [],
                        |r| r.get::<_, i64>(0),
                    )
                    .map_err(db)
            })
            .await
            .unwrap();
        assert_eq!(old, 0, "the old table or its indexes survived");
        store.close().await;
    }

    /// A database written by the sqlx-based store before (same schema, same sealing)
    /// opens, and its rows read and update.
    #[tokio::test]
    async fn opens_a_database_made_by_the_previous_store() {
        let dir = TempDir::new("sqlite-compat");
        let path = dir.0.join("store.db");
        let key = StoreKey::new([4; 32]);
        let c = Crypt::new(&key.0);
        // The file as the previous store left it: its schema, one account row.
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "journal_mode", "WAL").unwrap();
            for stmt in SCHEMA {
                conn.execute_batch(stmt).unwrap();
            }
            let account = AccountRecord {
                account_key: None,
                list_key: None,
                device: vec![2; 80],
                relay_url: "http://127.0.0.1:1".into(),
                signed_prekey_id: 1,
                next_one_time_id: 101,
                next_kem_id: 21,
                last_seq: 7,
                mailbox_epoch: None,
                prekeys_unsent: false,
                access_key: None,
                access_sent: None,
                profile: None,
                profile_key: None,
                profile_uploaded_ms: 0,
            };
            let v = c.seal("account", ACCOUNT_TAG, &encode_account(&account)).unwrap();
            conn.execute("INSERT INTO account (id, version, v) VALUES (1, 3, ?)", params![v])
                .unwrap();
        }
        let store = SqliteStore::open(&path, &key).await.unwrap();
        let a = store.load_account().await.unwrap().unwrap();
        assert_eq!((a.version, a.value.last_seq), (3, 7));
        let mut value = a.value;
        value.last_seq = 8;
        let done = store
            .commit(Changes {
                account: Some(super::super::Write {
                    expected: Some(3),
                    value,
                }),
                ..Changes::default()
            })
            .await
            .unwrap();
        assert_eq!(done.account_version, Some(4));
        store.close().await;
    }
}
