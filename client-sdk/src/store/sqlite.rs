//! The SQLite store (sqlx, native). Every value is encrypted under a key the app passes
//! in ([`StoreKey`]); lookup columns hold keyed hashes, never account ids or message ids
//! (see `crypt.rs` for the formulas). One [`Store::commit`] is one transaction.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sotto_crypto::AccountId;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqliteConnection, SqlitePool};

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
    // When messages with a disappearing timer expire: k = the message row's k.
    "CREATE TABLE IF NOT EXISTS expiring (k BLOB PRIMARY KEY, expires INTEGER NOT NULL) STRICT",
    "CREATE INDEX IF NOT EXISTS expiring_by_time ON expiring (expires)",
];

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
    /// Reads and durable commits (`synchronous=FULL`).
    pool: SqlitePool,
    /// Deferred commits: one connection with `synchronous=NORMAL`, whose commits reach the
    /// disk with the next fsync of the WAL (a durable commit's, a checkpoint's or `sync`'s).
    deferred: SqlitePool,
    crypt: Crypt,
    /// The database file (its process locks lie beside it).
    path: std::path::PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

fn db(e: sqlx::Error) -> StoreError {
    if let Some(code) = e.as_database_error().and_then(|d| d.code()) {
        // SQLITE_BUSY and its extended codes: another process holds the write lock or
        // our read snapshot is stale.
        if code == "5" || code == "517" || code == "261" {
            return StoreError::Conflict;
        }
    }
    StoreError::Database(e.to_string())
}

/// Records when the message row `k` expires.
async fn set_expiry(tx: &mut sqlx::SqliteConnection, k: &[u8], expires_at_ms: u64) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO expiring (k, expires) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET expires = excluded.expires",
    )
    .bind(k)
    .bind(to_i64(expires_at_ms))
    .execute(tx)
    .await
    .map_err(db)?;
    Ok(())
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
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
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(db)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            // Deleted and overwritten records are zeroed in the file, not left in free
            // space (a replaced account record, deleted prekeys and skipped keys).
            .pragma("secure_delete", "ON")
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await
            .map_err(db)?;
        for stmt in SCHEMA {
            sqlx::query(*stmt).execute(&pool).await.map_err(db)?;
        }
        let deferred = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.synchronous(SqliteSynchronous::Normal))
            .await
            .map_err(db)?;
        Ok(Self {
            pool,
            deferred,
            crypt: Crypt::new(&key.0),
            path: path.to_path_buf(),
        })
    }

    /// Closes the pools.
    pub async fn close(&self) {
        self.deferred.close().await;
        self.pool.close().await;
    }

    async fn all(&self, table: &'static str, sql: &'static str) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let rows = sqlx::query(sql).fetch_all(&self.pool).await.map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let k: Vec<u8> = row.try_get("k").map_err(db)?;
            let v: Vec<u8> = row.try_get("v").map_err(db)?;
            out.push((k.clone(), self.crypt.open(table, &k, &v)?.to_vec()));
        }
        Ok(out)
    }
}

impl AccountStore for SqliteStore {
    async fn load_account(&self) -> Result<Option<Versioned<AccountRecord>>, StoreError> {
        let Some(row) = sqlx::query("SELECT version, v FROM account WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
        else {
            return Ok(None);
        };
        let version: i64 = row.try_get("version").map_err(db)?;
        let v: Vec<u8> = row.try_get("v").map_err(db)?;
        let plain = self.crypt.open("account", ACCOUNT_TAG, &v)?;
        Ok(Some(Versioned {
            version: u64::try_from(version).unwrap_or(0),
            value: decode_account(&plain)?,
        }))
    }
}

impl SqliteStore {
    /// Rows of the `groups` or `sender_keys` table: (the key bytes stored inside the
    /// value, version, value).
    async fn load_versioned(&self, table: &'static str) -> Result<Vec<(Vec<u8>, u64, Vec<u8>)>, StoreError> {
        let sql = match table {
            "groups" => "SELECT k, version, v FROM groups",
            _ => "SELECT k, version, v FROM sender_keys",
        };
        let rows = sqlx::query(sql).fetch_all(&self.pool).await.map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let k: Vec<u8> = row.try_get("k").map_err(db)?;
            let version: i64 = row.try_get("version").map_err(db)?;
            let v: Vec<u8> = row.try_get("v").map_err(db)?;
            let plain = self.crypt.open(table, &k, &v)?;
            let mut r = sotto_crypto::codec::Reader::new(&plain);
            let key = r.var_bytes("key", 128)?.to_vec();
            out.push((key, u64::try_from(version).unwrap_or(0), r.rest().to_vec()));
        }
        Ok(out)
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
        let rows = sqlx::query("SELECT k, version, v FROM sessions")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let k: Vec<u8> = row.try_get("k").map_err(db)?;
            let version: i64 = row.try_get("version").map_err(db)?;
            let v: Vec<u8> = row.try_get("v").map_err(db)?;
            let plain = self.crypt.open("sessions", &k, &v)?;
            let mut r = sotto_crypto::codec::Reader::new(&plain);
            let peer = decode_peer(r.var_bytes("peer", 64)?)?;
            let set = decode_sessions(r.rest())?;
            out.push((
                peer,
                Versioned {
                    version: u64::try_from(version).unwrap_or(0),
                    value: set,
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
        let conv = self.crypt.tag("conversations", conversation.as_bytes());
        let rows = sqlx::query("SELECT ord, k, v FROM messages WHERE conv = ? AND ord < ? ORDER BY ord DESC LIMIT ?")
            .bind(conv)
            .bind(to_i64(page.before.unwrap_or(u64::MAX)))
            .bind(i64::from(page.limit.min(MAX_PAGE)))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows.iter().rev() {
            let ord: i64 = row.try_get("ord").map_err(db)?;
            let k: Vec<u8> = row.try_get("k").map_err(db)?;
            let v: Vec<u8> = row.try_get("v").map_err(db)?;
            let plain = self.crypt.open("messages", &k, &v)?;
            out.push(decode_message(&plain, u64::try_from(ord).unwrap_or(0))?);
        }
        Ok(out)
    }

    async fn recent_message_ids(&self, limit: u32) -> Result<Vec<MessageKey>, StoreError> {
        let rows = sqlx::query("SELECT ord, k, v FROM messages ORDER BY ord DESC LIMIT ?")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let k: Vec<u8> = row.try_get("k").map_err(db)?;
            let v: Vec<u8> = row.try_get("v").map_err(db)?;
            let plain = self.crypt.open("messages", &k, &v)?;
            out.push(decode_message(&plain, 0)?.key());
        }
        Ok(out)
    }

    async fn message(&self, key: MessageKey) -> Result<Option<StoredMessage>, StoreError> {
        let k = self.crypt.tag("messages", &key.to_bytes());
        let Some(row) = sqlx::query("SELECT ord, v FROM messages WHERE k = ?")
            .bind(&k)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
        else {
            return Ok(None);
        };
        let ord: i64 = row.try_get("ord").map_err(db)?;
        let v: Vec<u8> = row.try_get("v").map_err(db)?;
        let plain = self.crypt.open("messages", &k, &v)?;
        Ok(Some(decode_message(&plain, u64::try_from(ord).unwrap_or(0))?))
    }

    async fn expired_messages(&self, now_ms: u64, limit: u32) -> Result<Vec<MessageKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT m.k, m.v FROM expiring e JOIN messages m ON m.k = e.k WHERE e.expires <= ? ORDER BY e.expires LIMIT ?",
        )
        .bind(to_i64(now_ms))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let k: Vec<u8> = row.try_get("k").map_err(db)?;
            let v: Vec<u8> = row.try_get("v").map_err(db)?;
            out.push(decode_message(&self.crypt.open("messages", &k, &v)?, 0)?.key());
        }
        Ok(out)
    }
}

impl InboundStore for SqliteStore {
    async fn processed_envelopes(&self, limit: u32) -> Result<Vec<EnvelopeDigest>, StoreError> {
        let rows = sqlx::query("SELECT k, v FROM processed ORDER BY ord DESC LIMIT ?")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let k: Vec<u8> = row.try_get("k").map_err(db)?;
            let v: Vec<u8> = row.try_get("v").map_err(db)?;
            let d: EnvelopeDigest = self.crypt.open("processed", &k, &v)?[..].try_into().map_err(|_| {
                StoreError::Decode(sotto_crypto::DecodeError::Invalid {
                    field: "envelope digest",
                })
            })?;
            out.push(d);
        }
        Ok(out)
    }

    async fn pending_inbound(&self) -> Result<Vec<PendingInbound>, StoreError> {
        let rows = sqlx::query("SELECT k, v FROM pending ORDER BY ord")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let k: Vec<u8> = row.try_get("k").map_err(db)?;
            let v: Vec<u8> = row.try_get("v").map_err(db)?;
            out.push(decode_pending(&self.crypt.open("pending", &k, &v)?)?);
        }
        Ok(out)
    }
}

/// The stored pin of `account` (signed list bytes), read inside `tx`.
async fn stored_pin(c: &Crypt, tx: &mut SqliteConnection, account: &AccountId) -> Result<Option<Vec<u8>>, StoreError> {
    let k = c.tag("device_lists", account.as_bytes());
    let Some(row) = sqlx::query("SELECT v FROM device_lists WHERE k = ?")
        .bind(&k)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?
    else {
        return Ok(None);
    };
    let v: Vec<u8> = row.try_get("v").map_err(db)?;
    let plain = c.open("device_lists", &k, &v)?;
    if plain.len() < 32 {
        return Err(StoreError::Decode(sotto_crypto::DecodeError::Invalid {
            field: "device list row",
        }));
    }
    Ok(Some(plain[32..].to_vec()))
}

impl OutboxStore for SqliteStore {
    async fn outbox(&self, limit: u32) -> Result<Vec<OutboxItem>, StoreError> {
        let rows = sqlx::query("SELECT k, v FROM outbox ORDER BY ord LIMIT ?")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let k: Vec<u8> = row.try_get("k").map_err(db)?;
            let v: Vec<u8> = row.try_get("v").map_err(db)?;
            out.push(decode_outbox(&self.crypt.open("outbox", &k, &v)?)?);
        }
        Ok(out)
    }
}

/// Writes one versioned row with compare-and-swap: `sql.0` inserts it at version 1 (binds
/// `[key,] v`) when `expected` is `None`; `sql.1` moves it from `expected` to `expected + 1`
/// (binds `new, v, [key,] expected`). Returns the new version; a row that is already
/// there, or at another version, is [`StoreError::Conflict`].
async fn cas_write(
    tx: &mut SqliteConnection,
    sql: (&'static str, &'static str),
    key: Option<Vec<u8>>,
    expected: Option<u64>,
    v: Vec<u8>,
) -> Result<u64, StoreError> {
    let new = expected.map_or(1, |e| e + 1);
    let done = match expected {
        None => {
            let mut q = sqlx::query(sql.0);
            if let Some(k) = key {
                q = q.bind(k);
            }
            q.bind(v).execute(&mut *tx).await
        }
        Some(e) => {
            let mut q = sqlx::query(sql.1).bind(to_i64(new)).bind(v);
            if let Some(k) = key {
                q = q.bind(k);
            }
            q.bind(to_i64(e)).execute(&mut *tx).await
        }
    }
    .map_err(db)?;
    if done.rows_affected() != 1 {
        return Err(StoreError::Conflict);
    }
    Ok(new)
}

/// Runs an insert of one `(k, v)` row.
async fn put_kv(tx: &mut SqliteConnection, sql: &'static str, k: Vec<u8>, v: Vec<u8>) -> Result<(), StoreError> {
    sqlx::query(sql).bind(k).bind(v).execute(&mut *tx).await.map_err(db)?;
    Ok(())
}

impl Store for SqliteStore {
    async fn commit(&self, changes: Changes) -> Result<Committed, StoreError> {
        self.commit_on(&self.pool, changes).await
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
        self.commit_on(&self.deferred, changes).await
    }

    async fn sync(&self) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO sync_barrier (id, n) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET n = n + 1")
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Old page images stay in the write-ahead log until a checkpoint copies it into the
    /// database (where `secure_delete` zeroed the freed bytes) and truncates it.
    async fn scrub(&self) -> Result<(), StoreError> {
        self.sync().await?;
        let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        if busy != 0 {
            // A reader (another process on the store) kept it from finishing; the next
            // checkpoint, at the latest when the last connection closes, completes it.
            return Err(StoreError::Database("the checkpoint was blocked by a reader".into()));
        }
        Ok(())
    }
}

impl SqliteStore {
    /// One commit through `pool`: its connections' `synchronous` decides the durability.
    async fn commit_on(&self, pool: &SqlitePool, changes: Changes) -> Result<Committed, StoreError> {
        let c = &self.crypt;
        let mut tx = pool.begin().await.map_err(db)?;
        let mut committed = Committed::default();
        if let Some(w) = &changes.account {
            let v = c.seal("account", ACCOUNT_TAG, &encode_account(&w.value))?;
            let sql = (
                "INSERT INTO account (id, version, v) VALUES (1, 1, ?) ON CONFLICT DO NOTHING",
                "UPDATE account SET version = ?, v = ? WHERE id = 1 AND version = ?",
            );
            committed.account_version = Some(cas_write(&mut tx, sql, None, w.expected, v).await?);
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
            committed
                .session_versions
                .push(cas_write(&mut tx, sql, Some(k), w.expected, v).await?);
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
            committed
                .group_versions
                .push(cas_write(&mut tx, sql, Some(k), w.expected, v).await?);
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
                .push(cas_write(&mut tx, sql, Some(k), w.expected, v).await?);
        }
        for id in &changes.prekeys_removed {
            let k = c.tag("prekeys", &prekey_key(id));
            let done = sqlx::query("DELETE FROM prekeys WHERE k = ?")
                .bind(k)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            if done.rows_affected() != 1 {
                return Err(StoreError::Conflict);
            }
        }
        for (id, p) in &changes.prekeys_added {
            let key = prekey_key(id);
            let k = c.tag("prekeys", &key);
            let v = c.seal("prekeys", &k, &[&key[..], p].concat())?;
            put_kv(
                &mut tx,
                "INSERT INTO prekeys (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                k,
                v,
            )
            .await?;
        }
        for (a, expected) in &changes.pins {
            check_pin(stored_pin(c, &mut tx, a).await?.as_deref(), *expected)?;
        }
        for (a, l) in &changes.device_lists {
            check_pin_write(stored_pin(c, &mut tx, a).await?.as_deref(), l)?;
            let k = c.tag("device_lists", a.as_bytes());
            let v = c.seal("device_lists", &k, &[&a.as_bytes()[..], l].concat())?;
            put_kv(
                &mut tx,
                "INSERT INTO device_lists (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                k,
                v,
            )
            .await?;
        }
        for conv in &changes.conversations {
            let k = c.tag("conversations", conv.peer.as_bytes());
            let v = c.seal("conversations", &k, &super::records::encode_conversation(conv))?;
            put_kv(
                &mut tx,
                "INSERT INTO conversations (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                k,
                v,
            )
            .await?;
        }
        for peer in &changes.conversations_removed {
            sqlx::query("DELETE FROM conversations WHERE k = ?")
                .bind(c.tag("conversations", peer.as_bytes()))
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        for m in &changes.messages {
            let k = c.tag("messages", &m.key().to_bytes());
            let conv = c.tag("conversations", m.conversation.as_bytes());
            let v = c.seal("messages", &k, &encode_message(m))?;
            let done = sqlx::query("INSERT INTO messages (k, conv, v) VALUES (?, ?, ?) ON CONFLICT DO NOTHING")
                .bind(&k)
                .bind(conv)
                .bind(v)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            if done.rows_affected() == 1 && m.expires_at_ms != 0 {
                set_expiry(&mut tx, &k, m.expires_at_ms).await?;
            }
            if done.rows_affected() == 1 {
                committed
                    .inserted
                    .push((m.id, u64::try_from(done.last_insert_rowid()).unwrap_or(0)));
            }
        }
        for (key, update) in &changes.message_updates {
            let k = c.tag("messages", &key.to_bytes());
            let Some(row) = sqlx::query("SELECT ord, v FROM messages WHERE k = ?")
                .bind(&k)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?
            else {
                continue;
            };
            let v: Vec<u8> = row.try_get("v").map_err(db)?;
            let mut m = decode_message(&c.open("messages", &k, &v)?, 0)?;
            let old = m.status;
            if !m.apply(update) {
                continue;
            }
            let v = c.seal("messages", &k, &encode_message(&m))?;
            sqlx::query("UPDATE messages SET v = ? WHERE k = ?")
                .bind(v)
                .bind(&k)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            if matches!(update, MessageUpdate::Status(_)) {
                committed.advanced.push((*key, old));
            }
            if matches!(update, MessageUpdate::ExpireAt(_)) {
                set_expiry(&mut tx, &k, m.expires_at_ms).await?;
            }
        }
        for key in &changes.messages_removed {
            let k = c.tag("messages", &key.to_bytes());
            for stmt in ["DELETE FROM messages WHERE k = ?", "DELETE FROM expiring WHERE k = ?"] {
                sqlx::query(stmt).bind(&k).execute(&mut *tx).await.map_err(db)?;
            }
        }
        for item in &changes.outbox_add {
            let k = c.tag("outbox", &item.id.0);
            let v = c.seal("outbox", &k, &encode_outbox(item))?;
            put_kv(
                &mut tx,
                "INSERT INTO outbox (k, v) VALUES (?, ?) ON CONFLICT DO NOTHING",
                k,
                v,
            )
            .await?;
        }
        for id in &changes.outbox_remove {
            sqlx::query("DELETE FROM outbox WHERE k = ?")
                .bind(c.tag("outbox", &id.0))
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        for d in &changes.envelopes {
            let k = c.tag("processed", d);
            let v = c.seal("processed", &k, d)?;
            put_kv(
                &mut tx,
                "INSERT INTO processed (k, v) VALUES (?, ?) ON CONFLICT DO NOTHING",
                k,
                v,
            )
            .await?;
        }
        for p in &changes.pending_add {
            let k = c.tag("pending", &p.digest);
            let v = c.seal("pending", &k, &encode_pending(p))?;
            put_kv(
                &mut tx,
                "INSERT INTO pending (k, v) VALUES (?, ?) ON CONFLICT DO NOTHING",
                k,
                v,
            )
            .await?;
        }
        for d in &changes.pending_remove {
            sqlx::query("DELETE FROM pending WHERE k = ?")
                .bind(c.tag("pending", d))
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        if !changes.envelopes.is_empty() {
            sqlx::query("DELETE FROM processed WHERE ord <= (SELECT MAX(ord) FROM processed) - ?")
                .bind(MAX_PROCESSED_ENVELOPES as i64)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        for item in &changes.outbox_update {
            let k = c.tag("outbox", &item.id.0);
            let v = c.seal("outbox", &k, &encode_outbox(item))?;
            sqlx::query("UPDATE outbox SET v = ? WHERE k = ?")
                .bind(v)
                .bind(k)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(committed)
    }
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

    #[tokio::test]
    async fn opens_in_wal_mode_with_synchronous_full_and_secure_delete() {
        let dir = TempDir::new("sqlite-pragmas");
        let store = SqliteStore::open(&dir.0.join("store.db"), &StoreKey::new([3; 32]))
            .await
            .unwrap();
        let mut conn = store.pool.acquire().await.unwrap();
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let secure_delete: i64 = sqlx::query_scalar("PRAGMA secure_delete")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        drop(conn);
        let mut conn = store.deferred.acquire().await.unwrap();
        let deferred_secure: i64 = sqlx::query_scalar("PRAGMA secure_delete")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        drop(conn);
        store.close().await;
        assert_eq!(journal, "wal");
        assert_eq!(synchronous, 2, "synchronous=FULL: a commit is on disk when it returns");
        assert_eq!((secure_delete, deferred_secure), (1, 1), "freed bytes are zeroed");
    }
}
