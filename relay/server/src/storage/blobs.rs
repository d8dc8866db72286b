//! The blob store's tables (docs/protocol.md §16.4): issuer keys per epoch, the spent set,
//! the per-device daily token quota and the blob rows. A blob row names no account or
//! device: its id, length, progress and times only.
//!
//! ```text
//! create   one transaction: blob_totals.bytes + length ≤ max_total   else StorageFull
//!                           insert SHA-256(token) into blob_spent     else TokenSpent
//!                           insert the blob row
//! piece    UPDATE blobs SET received = offset + n WHERE id AND received = offset AND incomplete
//!          (a conditional update: of two writers of one offset, one wins)
//! quota    upsert (account, device, day) issued += n WHERE issued + n ≤ max   else QuotaExceeded
//! ```

use std::future::Future;

use sotto_crypto::{AccountId, DeviceId};
use zeroize::Zeroizing;

use super::StorageError;

/// A blob row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobRow {
    /// 32 random bytes.
    pub id: [u8; 32],
    /// The blob's length.
    pub length: u64,
    /// Bytes stored durably.
    pub received: u64,
    /// When it was created (ms since the Unix epoch).
    pub created_ms: u64,
    /// When its last byte was stored; `None` while incomplete.
    pub completed_ms: Option<u64>,
    /// When it expires: the upload deadline while incomplete, then the end of its
    /// retention.
    pub expires_ms: u64,
}

/// A blob to create, paid for with a token.
#[derive(Clone, Copy, Debug)]
pub struct NewBlob {
    /// The row.
    pub row: BlobRow,
    /// SHA-256 of the token that pays for it.
    pub token_hash: [u8; 32],
    /// The issuer epoch the token was redeemed under.
    pub epoch: u32,
    /// The most bytes all blob rows together may have.
    pub max_total_bytes: u64,
}

/// What a collection run deleted from the database.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Blob rows.
    pub blobs: u64,
    /// Quota rows of past days.
    pub quota_rows: u64,
    /// Retired issuer keys.
    pub issuer_keys: u64,
    /// Spent-set rows of retired epochs.
    pub spent: u64,
}

/// The blob store's storage operations; each is one transaction.
pub trait BlobStorage {
    /// The issuer secret of `epoch`. With `create`, stores it first when the epoch has
    /// none (the first writer wins: every node then uses the same key).
    fn issuer_secret(
        &self,
        epoch: u32,
        create: Option<&[u8; 32]>,
    ) -> impl Future<Output = Result<Option<Zeroizing<[u8; 32]>>, StorageError>> + Send;

    /// Charges `n` tokens to the device's quota of `day`, at most `max` per day;
    /// [`StorageError::QuotaExceeded`] (and nothing charged) beyond it.
    fn charge_tokens(
        &self,
        account: &AccountId,
        device: DeviceId,
        day: u64,
        n: u32,
        max: u32,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Creates a blob and spends its token in one transaction:
    /// [`StorageError::StorageFull`] or [`StorageError::TokenSpent`] leave nothing behind.
    fn create_blob(&self, blob: &NewBlob) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// The blob's row, expired or not.
    fn blob(&self, id: &[u8; 32]) -> impl Future<Output = Result<Option<BlobRow>, StorageError>> + Send;

    /// Records that the incomplete blob holds `received` bytes, if it held `offset`
    /// before; with `completed`, `(completed_ms, expires_ms)`, it is complete, unless its
    /// upload deadline passed by `completed_ms` (the collector may have deleted its bytes
    /// already). False when the row changed meanwhile, is gone, or expired.
    fn blob_received(
        &self,
        id: &[u8; 32],
        offset: u64,
        received: u64,
        completed: Option<(u64, u64)>,
    ) -> impl Future<Output = Result<bool, StorageError>> + Send;

    /// Up to `limit` blobs whose `expires_ms` is at most `now_ms`, complete or not.
    fn expired_blobs(&self, now_ms: u64, limit: u32)
    -> impl Future<Output = Result<Vec<BlobRow>, StorageError>> + Send;

    /// Deletes those of `ids` that expired by `now_ms`, and their bytes from the total;
    /// how many it deleted.
    fn delete_blobs(&self, ids: &[[u8; 32]], now_ms: u64) -> impl Future<Output = Result<u64, StorageError>> + Send;

    /// Deletes quota rows of days before `day`, and issuer keys and spent-set rows of
    /// epochs before `epoch`.
    fn collect_blob_rows(&self, day: u64, epoch: u32) -> impl Future<Output = Result<Collected, StorageError>> + Send;

    /// The sum of the lengths of all blob rows.
    fn blob_total_bytes(&self) -> impl Future<Output = Result<u64, StorageError>> + Send;
}

/// Implements [`BlobStorage`] for `$store` (a struct with a `pool` and the `begin` of
/// [`super::backend::storage_impl`]).
macro_rules! blob_storage_impl {
    (store: $store:ty $(,)?) => {
        impl $crate::storage::blobs::BlobStorage for $store {
            async fn issuer_secret(
                &self,
                epoch: u32,
                create: Option<&[u8; 32]>,
            ) -> Result<Option<zeroize::Zeroizing<[u8; 32]>>, StorageError> {
                if let Some(secret) = create {
                    let mut tx = self.begin().await?;
                    sqlx::query("INSERT INTO blob_issuers (epoch, secret) VALUES ($1, $2) ON CONFLICT (epoch) DO NOTHING")
                        .bind(i64::from(epoch))
                        .bind(&secret[..])
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                }
                let row: Option<(Vec<u8>,)> = sqlx::query_as("SELECT secret FROM blob_issuers WHERE epoch = $1")
                    .bind(i64::from(epoch))
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|(s,)| {
                    let s = zeroize::Zeroizing::new(s);
                    key32(&s, "issuer secret").map(zeroize::Zeroizing::new)
                })
                .transpose()
            }

            async fn charge_tokens(
                &self,
                account: &AccountId,
                device: DeviceId,
                day: u64,
                n: u32,
                max: u32,
            ) -> Result<(), StorageError> {
                if n > max {
                    return Err(StorageError::QuotaExceeded);
                }
                let mut tx = self.begin().await?;
                let done = sqlx::query(
                    "INSERT INTO blob_quota (account_id, device_id, day, issued) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (account_id, device_id, day) DO UPDATE SET issued = blob_quota.issued + excluded.issued \
                     WHERE blob_quota.issued + excluded.issued <= $5",
                )
                .bind(&account.0[..])
                .bind(device_i64(device))
                .bind(to_i64(day))
                .bind(i64::from(n))
                .bind(i64::from(max))
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(StorageError::QuotaExceeded);
                }
                tx.commit().await?;
                Ok(())
            }

            async fn create_blob(&self, blob: &$crate::storage::blobs::NewBlob) -> Result<(), StorageError> {
                let row = &blob.row;
                let mut tx = self.begin().await?;
                let room = sqlx::query(
                    "UPDATE blob_totals SET bytes = bytes + $1 WHERE id = 1 AND bytes + $1 <= $2",
                )
                .bind(to_i64(row.length))
                .bind(to_i64(blob.max_total_bytes))
                .execute(&mut *tx)
                .await?;
                if room.rows_affected() == 0 {
                    return Err(StorageError::StorageFull);
                }
                let spent = sqlx::query(
                    "INSERT INTO blob_spent (token_hash, epoch) VALUES ($1, $2) ON CONFLICT (token_hash) DO NOTHING",
                )
                .bind(&blob.token_hash[..])
                .bind(i64::from(blob.epoch))
                .execute(&mut *tx)
                .await?;
                if spent.rows_affected() == 0 {
                    return Err(StorageError::TokenSpent);
                }
                sqlx::query(
                    "INSERT INTO blobs (id, length, received, created_ms, completed_ms, expires_ms) \
                     VALUES ($1, $2, $3, $4, NULL, $5)",
                )
                .bind(&row.id[..])
                .bind(to_i64(row.length))
                .bind(to_i64(row.received))
                .bind(to_i64(row.created_ms))
                .bind(to_i64(row.expires_ms))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn blob(&self, id: &[u8; 32]) -> Result<Option<$crate::storage::blobs::BlobRow>, StorageError> {
                let row: Option<(Vec<u8>, i64, i64, i64, Option<i64>, i64)> = sqlx::query_as(
                    "SELECT id, length, received, created_ms, completed_ms, expires_ms FROM blobs WHERE id = $1",
                )
                .bind(&id[..])
                .fetch_optional(&self.pool)
                .await?;
                row.map($crate::storage::blobs::row_from).transpose()
            }

            async fn blob_received(
                &self,
                id: &[u8; 32],
                offset: u64,
                received: u64,
                completed: Option<(u64, u64)>,
            ) -> Result<bool, StorageError> {
                let mut tx = self.begin().await?;
                let done = match completed {
                    None => sqlx::query(
                        "UPDATE blobs SET received = $1 WHERE id = $2 AND received = $3 AND completed_ms IS NULL",
                    )
                    .bind(to_i64(received))
                    .bind(&id[..])
                    .bind(to_i64(offset))
                    .execute(&mut *tx)
                    .await?,
                    Some((completed_ms, expires_ms)) => sqlx::query(
                        "UPDATE blobs SET received = $1, completed_ms = $4, expires_ms = $5 \
                         WHERE id = $2 AND received = $3 AND completed_ms IS NULL AND expires_ms > $4",
                    )
                    .bind(to_i64(received))
                    .bind(&id[..])
                    .bind(to_i64(offset))
                    .bind(to_i64(completed_ms))
                    .bind(to_i64(expires_ms))
                    .execute(&mut *tx)
                    .await?,
                };
                tx.commit().await?;
                Ok(done.rows_affected() == 1)
            }

            async fn expired_blobs(
                &self,
                now_ms: u64,
                limit: u32,
            ) -> Result<Vec<$crate::storage::blobs::BlobRow>, StorageError> {
                let rows: Vec<(Vec<u8>, i64, i64, i64, Option<i64>, i64)> = sqlx::query_as(
                    "SELECT id, length, received, created_ms, completed_ms, expires_ms FROM blobs \
                     WHERE expires_ms <= $1 ORDER BY expires_ms LIMIT $2",
                )
                .bind(to_i64(now_ms))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map($crate::storage::blobs::row_from).collect()
            }

            async fn delete_blobs(&self, ids: &[[u8; 32]], now_ms: u64) -> Result<u64, StorageError> {
                let mut tx = self.begin().await?;
                let mut deleted = 0u64;
                let mut bytes = 0i64;
                for id in ids {
                    let gone: Option<(i64,)> =
                        sqlx::query_as("DELETE FROM blobs WHERE id = $1 AND expires_ms <= $2 RETURNING length")
                            .bind(&id[..])
                            .bind(to_i64(now_ms))
                            .fetch_optional(&mut *tx)
                            .await?;
                    if let Some((len,)) = gone {
                        deleted += 1;
                        bytes = bytes.saturating_add(len);
                    }
                }
                if deleted > 0 {
                    sqlx::query("UPDATE blob_totals SET bytes = bytes - $1 WHERE id = 1")
                        .bind(bytes)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(deleted)
            }

            async fn collect_blob_rows(
                &self,
                day: u64,
                epoch: u32,
            ) -> Result<$crate::storage::blobs::Collected, StorageError> {
                let mut tx = self.begin().await?;
                let quota_rows = sqlx::query("DELETE FROM blob_quota WHERE day < $1")
                    .bind(to_i64(day))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let issuer_keys = sqlx::query("DELETE FROM blob_issuers WHERE epoch < $1")
                    .bind(i64::from(epoch))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let spent = sqlx::query("DELETE FROM blob_spent WHERE epoch < $1")
                    .bind(i64::from(epoch))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                Ok($crate::storage::blobs::Collected {
                    blobs: 0,
                    quota_rows,
                    issuer_keys,
                    spent,
                })
            }

            async fn blob_total_bytes(&self) -> Result<u64, StorageError> {
                let (bytes,): (i64,) = sqlx::query_as("SELECT bytes FROM blob_totals WHERE id = 1")
                    .fetch_one(&self.pool)
                    .await?;
                Ok(to_u64(bytes))
            }
        }
    };
}

pub(crate) use blob_storage_impl;

/// A blob row from its columns.
pub(crate) fn row_from(
    (id, length, received, created_ms, completed_ms, expires_ms): (Vec<u8>, i64, i64, i64, Option<i64>, i64),
) -> Result<BlobRow, StorageError> {
    Ok(BlobRow {
        id: super::key32(&id, "blob id")?,
        length: super::to_u64(length),
        received: super::to_u64(received),
        created_ms: super::to_u64(created_ms),
        completed_ms: completed_ms.map(super::to_u64),
        expires_ms: super::to_u64(expires_ms),
    })
}
