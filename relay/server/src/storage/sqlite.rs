//! The SQLite backend: one file in WAL mode, the embedded default.

use std::str::FromStr;
use std::time::Duration;

use sotto_crypto::{AccountId, DeviceId, DeviceList, Ed25519PublicKey, PreKeyBundle};
use sotto_proto::{PreKeyCounts, PreKeyUpload, PushProvider, PushRegistration};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Pool, QueryBuilder, Sqlite, SqliteConnection};

use super::backend::storage_impl;
use super::blobs::blob_storage_impl;
use super::*;

/// How often [`SqliteStore::checkpoint`] tries when readers keep it from finishing.
const CHECKPOINT_ATTEMPTS: usize = 5;

/// Bytes the WAL is truncated to when a checkpoint resets it (`journal_size_limit`).
const JOURNAL_SIZE_LIMIT: u64 = 4 << 20;

/// The SQLite store.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: Pool<Sqlite>,
    /// Write transactions begun (see [`super::Store::write_transactions`]).
    writes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://PATH`, `sqlite::memory:`
    /// or a bare path), switches it to WAL and runs the migrations.
    pub async fn open(url: &str, max_connections: u32) -> Result<Self, StorageError> {
        let options = if url.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url)?
        } else {
            SqliteConnectOptions::new().filename(url)
        };
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // A deleted envelope's bytes are overwritten with zeros in its page (and in
            // freed pages), not left in free space (docs/self-hosting.md, "What stays on
            // disk").
            .pragma("secure_delete", "ON")
            // After a checkpoint resets the WAL, it is truncated to this size, so frames
            // with old page images do not linger at its end.
            .pragma("journal_size_limit", JOURNAL_SIZE_LIMIT.to_string())
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect_with(options)
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        Ok(Self {
            pool,
            writes: Default::default(),
        })
    }

    /// Another pool on the same database (see [`super::Store::with_own_pool`]).
    pub fn with_own_pool(&self, max_connections: u32) -> Self {
        let options = (*self.pool.connect_options()).clone();
        Self {
            pool: SqlitePoolOptions::new()
                .max_connections(max_connections.max(1))
                .connect_lazy_with(options),
            writes: self.writes.clone(),
        }
    }

    /// Copies the WAL into the database and truncates it to zero bytes
    /// (`wal_checkpoint(TRUNCATE)`): with `secure_delete`, the bytes of deleted envelopes
    /// are then in neither file. Waits for readers; on a busy database it does what it
    /// can and the next run finishes.
    pub async fn checkpoint(&self) -> Result<(), StorageError> {
        // The answer's first column is 1 when a reader or writer kept the checkpoint from
        // finishing (the WAL then keeps frames): try again a few times at once.
        for _ in 0..CHECKPOINT_ATTEMPTS {
            let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&self.pool)
                .await?;
            if busy == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A device row's key and mailbox counters, with its account's access setting: (account,
/// device, next_seq, depth, acked_seq, reachable, bytes, requests, request_bytes,
/// access_verifier, accept_requests).
type CounterRow = (Vec<u8>, i64, i64, i64, i64, i64, i64, i64, i64, Option<Vec<u8>>, i64);

/// The write batch's statements, as multi-row statements with one bind per value
/// (SQLite parses in-process, so a statement per batch size costs little).
impl SqliteStore {
    async fn lock_rows(
        conn: &mut SqliteConnection,
        accounts: &[AccountId],
        fresh: super::FreshHours,
    ) -> Result<Vec<CounterRow>, sqlx::Error> {
        let mut q =
            QueryBuilder::<Sqlite>::new("SELECT devices.account_id, devices.device_id, next_seq, depth, acked_seq, ");
        q.push(fresh.reachable_sql());
        q.push(
            ", bytes, requests, request_bytes, accounts.access_verifier, accounts.accept_requests \
             FROM devices JOIN accounts ON accounts.account_id = devices.account_id \
             WHERE devices.account_id IN (",
        );
        let mut list = q.separated(", ");
        for a in accounts {
            list.push_bind(&a.0[..]);
        }
        q.push(") ORDER BY devices.account_id, devices.device_id");
        q.build_query_as().fetch_all(conn).await
    }

    async fn delete_acked(
        conn: &mut SqliteConnection,
        ranges: &[(AccountId, DeviceId, u64, u64)],
    ) -> Result<Vec<DeletedRow>, sqlx::Error> {
        let mut q = QueryBuilder::<Sqlite>::new("DELETE FROM envelopes WHERE ");
        for (i, (a, d, after, up_to)) in ranges.iter().enumerate() {
            if i > 0 {
                q.push(" OR ");
            }
            q.push("(account_id = ")
                .push_bind(&a.0[..])
                .push(" AND device_id = ")
                .push_bind(device_i64(*d))
                .push(" AND seq > ")
                .push_bind(to_i64(*after))
                .push(" AND seq <= ")
                .push_bind(to_i64(*up_to))
                .push(")");
        }
        q.push(" RETURNING account_id, device_id, CAST(length(ciphertext) + body_len AS BIGINT), request, body_id");
        q.build_query_as().fetch_all(conn).await
    }

    /// `ids` are the batch's body ids, by [`Insert::body`].
    async fn insert_envelopes(
        conn: &mut SqliteConnection,
        inserts: &[Insert<'_>],
        ids: &[i64],
    ) -> Result<(), sqlx::Error> {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO envelopes (account_id, device_id, seq, received_at, expires_at, ciphertext, request, \
             body_id, body_len) ",
        );
        q.push_values(inserts, |mut row, e| {
            row.push_bind(&e.account.0[..])
                .push_bind(device_i64(e.device))
                .push_bind(to_i64(e.seq))
                .push_bind(to_i64(e.received_at_s))
                .push_bind(to_i64(e.expires_at_s))
                .push_bind(e.head)
                .push_bind(i64::from(e.request))
                .push_bind(e.body_id(ids))
                .push_bind(to_i64(e.body_len));
        });
        q.build().execute(conn).await.map(|_| ())
    }

    /// The bodies the device's envelopes reference (read before its envelopes are
    /// deleted with it).
    async fn bodies_of(conn: &mut SqliteConnection, account: &[u8], device: i64) -> Result<Vec<i64>, sqlx::Error> {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT DISTINCT body_id FROM envelopes WHERE account_id = $1 AND device_id = $2 AND body_id IS NOT NULL",
        )
        .bind(account)
        .bind(device)
        .fetch_all(conn)
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Deletes those of `ids` that no envelope references any more (an index probe on
    /// `envelopes_by_body` each). SQLite has one writer at a time, so no lock is needed
    /// for the check to see every other transaction's deletes.
    async fn release_all(conn: &mut SqliteConnection, mut ids: Vec<i64>) -> Result<(), sqlx::Error> {
        ids.sort_unstable();
        ids.dedup();
        for chunk in ids.chunks(BATCH_BODIES_PER_QUERY) {
            let mut q = QueryBuilder::<Sqlite>::new("DELETE FROM bodies WHERE id IN (");
            let mut list = q.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            q.push(") AND NOT EXISTS (SELECT 1 FROM envelopes e WHERE e.body_id = bodies.id)");
            q.build().execute(&mut *conn).await?;
        }
        Ok(())
    }

    async fn write_counters(
        conn: &mut SqliteConnection,
        rows: &[(&(AccountId, DeviceId), &MailboxRow)],
    ) -> Result<(), sqlx::Error> {
        let mut q = QueryBuilder::<Sqlite>::new(
            "UPDATE devices SET next_seq = c.column3, depth = c.column4, acked_seq = c.column5, \
             bytes = c.column6, requests = c.column7, request_bytes = c.column8 FROM (",
        );
        q.push_values(rows, |mut row, ((a, d), r)| {
            row.push_bind(&a.0[..])
                .push_bind(device_i64(*d))
                .push_bind(to_i64(r.next_seq))
                .push_bind(to_i64(r.depth))
                .push_bind(to_i64(r.acked_seq))
                .push_bind(to_i64(r.bytes))
                .push_bind(to_i64(r.requests))
                .push_bind(to_i64(r.request_bytes));
        });
        q.push(") AS c WHERE devices.account_id = c.column1 AND devices.device_id = c.column2");
        q.build().execute(conn).await.map(|_| ())
    }
}

storage_impl! {
    store: SqliteStore,
    db: Sqlite,
    begin: "BEGIN IMMEDIATE",
    skip_locked: "",
    for_share: "",
    for_update: "",
}

blob_storage_impl! {
    store: SqliteStore,
}
