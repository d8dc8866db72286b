//! The PostgreSQL backend, chosen by a `postgres://` URL.

use sotto_crypto::{AccountId, DeviceId, DeviceList, Ed25519PublicKey, PreKeyBundle};
use sotto_proto::{PreKeyCounts, PreKeyUpload, PushProvider, PushRegistration};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, Pool, Postgres};

use super::backend::storage_impl;
use super::blobs::blob_storage_impl;
use super::*;

/// The PostgreSQL store.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: Pool<Postgres>,
    /// Write transactions begun (see [`super::Store::write_transactions`]).
    writes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl PostgresStore {
    /// Connects and runs the migrations.
    pub async fn open(url: &str, max_connections: u32) -> Result<Self, StorageError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect(url)
            .await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(Self {
            pool,
            writes: Default::default(),
        })
    }

    /// Another pool on the same database (see [`super::Store::with_own_pool`]).
    pub fn with_own_pool(&self, max_connections: u32) -> Self {
        let options = (*self.pool.connect_options()).clone();
        Self {
            pool: PgPoolOptions::new()
                .max_connections(max_connections.max(1))
                .connect_lazy_with(options),
            writes: self.writes.clone(),
        }
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

/// The write batch's statements, each one fixed text over arrays (`UNNEST`), so the server
/// parses and plans each once per connection whatever the batch size.
impl PostgresStore {
    async fn lock_rows(
        conn: &mut PgConnection,
        accounts: &[AccountId],
        fresh: super::FreshHours,
    ) -> Result<Vec<CounterRow>, sqlx::Error> {
        let ids: Vec<&[u8]> = accounts.iter().map(|a| &a.0[..]).collect();
        let sql = format!(
            "SELECT devices.account_id, devices.device_id, next_seq, depth, acked_seq, {}, bytes, requests, \
             request_bytes, accounts.access_verifier, accounts.accept_requests \
             FROM devices JOIN accounts ON accounts.account_id = devices.account_id \
             WHERE devices.account_id = ANY($1) ORDER BY devices.account_id, devices.device_id FOR UPDATE OF devices",
            fresh.reachable_sql()
        );
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(ids).fetch_all(conn).await
    }

    async fn delete_acked(
        conn: &mut PgConnection,
        ranges: &[(AccountId, DeviceId, u64, u64)],
    ) -> Result<Vec<DeletedRow>, sqlx::Error> {
        let a: Vec<&[u8]> = ranges.iter().map(|r| &r.0.0[..]).collect();
        let d: Vec<i64> = ranges.iter().map(|r| device_i64(r.1)).collect();
        let lo: Vec<i64> = ranges.iter().map(|r| to_i64(r.2)).collect();
        let hi: Vec<i64> = ranges.iter().map(|r| to_i64(r.3)).collect();
        sqlx::query_as(
            "DELETE FROM envelopes e USING UNNEST($1::bytea[], $2::int8[], $3::int8[], $4::int8[]) AS c(a, d, lo, hi) \
             WHERE e.account_id = c.a AND e.device_id = c.d AND e.seq > c.lo AND e.seq <= c.hi \
             RETURNING e.account_id, e.device_id, CAST(length(e.ciphertext) + e.body_len AS BIGINT), e.request, \
             e.body_id",
        )
        .bind(a)
        .bind(d)
        .bind(lo)
        .bind(hi)
        .fetch_all(conn)
        .await
    }

    /// `ids` are the batch's body ids, by [`Insert::body`].
    async fn insert_envelopes(conn: &mut PgConnection, inserts: &[Insert<'_>], ids: &[i64]) -> Result<(), sqlx::Error> {
        let a: Vec<&[u8]> = inserts.iter().map(|e| &e.account.0[..]).collect();
        let d: Vec<i64> = inserts.iter().map(|e| device_i64(e.device)).collect();
        let seq: Vec<i64> = inserts.iter().map(|e| to_i64(e.seq)).collect();
        let at: Vec<i64> = inserts.iter().map(|e| to_i64(e.received_at_s)).collect();
        let exp: Vec<i64> = inserts.iter().map(|e| to_i64(e.expires_at_s)).collect();
        let head: Vec<&[u8]> = inserts.iter().map(|e| e.head).collect();
        let request: Vec<i64> = inserts.iter().map(|e| i64::from(e.request)).collect();
        let body_id: Vec<Option<i64>> = inserts.iter().map(|e| e.body_id(ids)).collect();
        let body_len: Vec<i64> = inserts.iter().map(|e| to_i64(e.body_len)).collect();
        sqlx::query(
            "INSERT INTO envelopes (account_id, device_id, seq, received_at, expires_at, ciphertext, request, \
             body_id, body_len) \
             SELECT * FROM UNNEST($1::bytea[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::bytea[], $7::int8[], \
             $8::int8[], $9::int8[])",
        )
        .bind(a)
        .bind(d)
        .bind(seq)
        .bind(at)
        .bind(exp)
        .bind(head)
        .bind(request)
        .bind(body_id)
        .bind(body_len)
        .execute(conn)
        .await
        .map(|_| ())
    }

    /// The bodies the device's envelopes reference (read before its envelopes are
    /// deleted with it).
    async fn bodies_of(conn: &mut PgConnection, account: &[u8], device: i64) -> Result<Vec<i64>, sqlx::Error> {
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
    /// `envelopes_by_body` each). The body rows are locked first, in id order: of two
    /// transactions that each delete some of a body's last envelopes, the second waits
    /// for the first to commit, and its check (a new statement, so a new snapshot under
    /// READ COMMITTED) then sees both deletes and removes the body.
    async fn release_all(conn: &mut PgConnection, mut ids: Vec<i64>) -> Result<(), sqlx::Error> {
        ids.sort_unstable();
        ids.dedup();
        for chunk in ids.chunks(BATCH_BODIES_PER_QUERY) {
            let _: Vec<(i64,)> = sqlx::query_as("SELECT id FROM bodies WHERE id = ANY($1) ORDER BY id FOR UPDATE")
                .bind(chunk)
                .fetch_all(&mut *conn)
                .await?;
            sqlx::query(
                "DELETE FROM bodies WHERE id = ANY($1) \
                 AND NOT EXISTS (SELECT 1 FROM envelopes e WHERE e.body_id = bodies.id)",
            )
            .bind(chunk)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    async fn write_counters(
        conn: &mut PgConnection,
        rows: &[(&(AccountId, DeviceId), &MailboxRow)],
    ) -> Result<(), sqlx::Error> {
        let a: Vec<&[u8]> = rows.iter().map(|r| &r.0.0.0[..]).collect();
        let d: Vec<i64> = rows.iter().map(|r| device_i64(r.0.1)).collect();
        let next: Vec<i64> = rows.iter().map(|r| to_i64(r.1.next_seq)).collect();
        let depth: Vec<i64> = rows.iter().map(|r| to_i64(r.1.depth)).collect();
        let acked: Vec<i64> = rows.iter().map(|r| to_i64(r.1.acked_seq)).collect();
        let bytes: Vec<i64> = rows.iter().map(|r| to_i64(r.1.bytes)).collect();
        let requests: Vec<i64> = rows.iter().map(|r| to_i64(r.1.requests)).collect();
        let request_bytes: Vec<i64> = rows.iter().map(|r| to_i64(r.1.request_bytes)).collect();
        sqlx::query(
            "UPDATE devices SET next_seq = c.n, depth = c.dp, acked_seq = c.ak, bytes = c.b, \
             requests = c.rq, request_bytes = c.rb \
             FROM UNNEST($1::bytea[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], $7::int8[], $8::int8[]) \
             AS c(a, d, n, dp, ak, b, rq, rb) \
             WHERE devices.account_id = c.a AND devices.device_id = c.d",
        )
        .bind(a)
        .bind(d)
        .bind(next)
        .bind(depth)
        .bind(acked)
        .bind(bytes)
        .bind(requests)
        .bind(request_bytes)
        .execute(conn)
        .await
        .map(|_| ())
    }
}

storage_impl! {
    store: PostgresStore,
    db: Postgres,
    begin: "BEGIN",
    skip_locked: " FOR UPDATE SKIP LOCKED",
    for_share: " FOR SHARE",
    for_update: " FOR UPDATE",
}

blob_storage_impl! {
    store: PostgresStore,
}
