//! Storage: one [`Storage`] trait, two sqlx backends (SQLite, the default, and PostgreSQL)
//! and the [`Store`] that picks one from a URL.
//!
//! Every operation is one transaction. Inputs that carry signatures arrive verified (a
//! [`DeviceList`] can only be made by verifying one; prekeys are verified by
//! [`verify_prekeys`] against the DSK the store is then asked to match). No row names a
//! sender.
//!
//! A send's shared body (docs/protocol.md §13.7) is stored once, in `bodies`, and every
//! envelope row of the send holds only its head (`ciphertext`), the body's id and length:
//!
//! ```text
//! envelope(row) = row.ciphertext ‖ bodies[row.body_id].body     (no body when body_id is NULL)
//! len(row)      = length(row.ciphertext) + row.body_len          (the mailbox byte counters)
//! ```
//!
//! A send with an empty body stores no body row (every 1:1 send). A body row is deleted in
//! the transaction that deletes its last envelope row: by an ack, by expiry, or by the
//! device's removal or re-keying. Expiry also deletes any expired body no row references.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use sotto_crypto::{
    AccountId, DeviceId, DeviceIdentity, DeviceList, Ed25519PublicKey, KemPreKey, PreKeyBundle, PreKeyKind,
    X25519PreKey, X25519PublicKey,
};
use sotto_proto::{PreKeyCounts, PreKeyUpload, PushRegistration, Recipient};
use thiserror::Error;

mod backend;
pub mod blobs;
mod postgres;
mod sqlite;

pub use blobs::{BlobRow, BlobStorage, Collected, NewBlob};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Why a storage operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The offered device list's version is not above the stored one.
    #[error("device list version {offered} is not above the stored version {stored}")]
    StaleDeviceList {
        /// The stored version.
        stored: u64,
        /// The version offered.
        offered: u64,
    },
    /// The offered device list's version is more than [`MAX_VERSION_STEP`] above the
    /// stored one (or above it at registration).
    #[error("device list version {offered} is more than {MAX_VERSION_STEP} above the stored version {stored}")]
    VersionJump {
        /// The stored version (0 at registration).
        stored: u64,
        /// The version offered.
        offered: u64,
    },
    /// The offered device list is signed by a revoked or rival list key, or removes a
    /// device holding the list key under that same key (docs/protocol.md §4.3).
    #[error("device list refused by the list-key rule: {0}")]
    ListKeyRevoked(sotto_crypto::DeviceListError),
    /// No such account.
    #[error("unknown account")]
    UnknownAccount,
    /// No such device in the account's current device list (or its keys changed).
    #[error("unknown device")]
    UnknownDevice,
    /// The device has no signed prekey or no ML-KEM prekey.
    #[error("no prekeys to hand out")]
    NoPreKeys,
    /// The upload would exceed the one-time prekeys kept per device and kind.
    #[error("more than {max} one-time prekeys of one kind")]
    TooManyPreKeys {
        /// The bound.
        max: u32,
    },
    /// A recipient mailbox is full.
    #[error("mailbox full")]
    MailboxFull,
    /// A send without a recipient account's access key, to an account that takes no
    /// message requests.
    #[error("access denied")]
    AccessDenied,
    /// A message request to a mailbox that holds as many requests as the relay allows.
    #[error("requests full")]
    RequestsFull,
    /// The device has been issued as many upload tokens today as the relay allows.
    #[error("token quota exceeded")]
    QuotaExceeded,
    /// The upload token was redeemed before.
    #[error("token already spent")]
    TokenSpent,
    /// The blob store holds as many bytes as it is configured to.
    #[error("blob storage full")]
    StorageFull,
    /// A stored value does not decode (the database was changed behind the relay's back).
    #[error("stored {0} does not decode")]
    Corrupt(&'static str),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The group commit this write was part of failed; nothing of it was stored. (The
    /// cause is logged once for the whole batch.)
    #[error("the write batch failed")]
    BatchFailed,
}

/// What storing a device list did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutDeviceList {
    /// A new account.
    Created,
    /// A newer list for a known account.
    Updated,
}

/// What the database holds, in counts (`sotto-relay admin stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Registered accounts.
    pub accounts: u64,
    /// Devices listed now (each has a mailbox).
    pub devices: u64,
    /// Envelopes waiting in all mailboxes.
    pub envelopes: u64,
    /// Their bytes.
    pub envelope_bytes: u64,
    /// Envelopes in the fullest mailbox.
    pub deepest_mailbox: u64,
    /// Push registrations.
    pub push_registrations: u64,
    /// Blobs (attachments), complete or being uploaded.
    pub blobs: u64,
    /// Blob bytes stored durably.
    pub blob_bytes: u64,
}

/// One device's mailbox (`sotto-relay admin mailbox`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MailboxStats {
    /// Envelopes waiting.
    pub depth: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The last seq the mailbox handed out (0: none yet).
    pub last_seq: u64,
}

/// A device's public keys as listed in its account's current device list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceKeys {
    /// The device signing key.
    pub signing_key: Ed25519PublicKey,
    /// The device identity key.
    pub identity_key: X25519PublicKey,
    /// Random bytes drawn when the device row was created or re-keyed; part of the
    /// mailbox epoch (docs/protocol.md §13.6).
    pub registration: [u8; 16],
}

/// How a send was handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendStored {
    /// Stored; one seq per recipient in the send's order.
    Stored(Vec<u64>),
    /// Nothing stored: these accounts' device sets differ from the send; their current
    /// signed device lists.
    Mismatch(Vec<Vec<u8>>),
}

/// An envelope in a mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEnvelope {
    /// Its mailbox sequence number.
    pub seq: u64,
    /// When it was stored (seconds, coarse).
    pub received_at_s: u64,
    /// The opaque envelope.
    pub envelope: Vec<u8>,
}

/// Parameters of a send that come from the relay's configuration and clock.
#[derive(Clone, Copy, Debug)]
pub struct SendParams {
    /// The sending device, excluded from the expected set of its own account; `None` for
    /// an anonymous (sealed-sender) send, where every account's full device list is
    /// expected.
    pub sender: Option<(AccountId, DeviceId)>,
    /// Now, seconds since the Unix epoch, coarse.
    pub now_s: u64,
    /// When the envelopes expire.
    pub expires_at_s: u64,
    /// The most envelopes one mailbox holds.
    pub max_mailbox_depth: u32,
    /// The most envelope bytes one mailbox holds.
    pub max_mailbox_bytes: u64,
    /// The most message requests (envelopes stored without the access key) one mailbox
    /// holds; they count against the mailbox's own bounds too.
    pub max_request_depth: u32,
    /// The most message-request bytes one mailbox holds.
    pub max_request_bytes: u64,
}

/// An account's access setting (docs/protocol.md §13.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountAccess {
    /// SHA-256 of the access key; `None` while the account has set none (it then takes
    /// every send as a contact's).
    pub verifier: Option<[u8; 32]>,
    /// Whether sends without the key are stored as message requests (else refused).
    pub accept_requests: bool,
}

/// An account's encrypted profile (docs/protocol.md §13.3), opaque to the relay: one per
/// account, replaced by each upload. Its `Debug` shows neither the version nor the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredProfile {
    /// The version a fetch must present (clients derive it from the profile key, which
    /// the relay never sees).
    pub version: [u8; 32],
    /// The encrypted profile.
    pub ciphertext: Vec<u8>,
    /// When it was uploaded, seconds since the Unix epoch, coarse.
    pub updated_at_s: u64,
}

impl std::fmt::Debug for StoredProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredProfile")
            .field("ciphertext_len", &self.ciphertext.len())
            .field("updated_at_s", &self.updated_at_s)
            .finish_non_exhaustive()
    }
}

/// One write of a group commit ([`Storage::write_batch`]).
#[derive(Clone, Copy, Debug)]
pub enum WriteOp<'a> {
    /// Store a send, as [`Storage::store_shared`].
    Send {
        /// Sender, clock and limits.
        params: SendParams,
        /// The shared body every recipient's envelope ends with; stored once (no body row
        /// when empty).
        body: &'a [u8],
        /// The heads, one per recipient device; distinct recipients. Recipient `i`'s
        /// envelope is `recipients[i].head ‖ body`.
        recipients: &'a [Recipient],
        /// The verifiers of the access keys the send presented, per account
        /// ([`sotto_proto::AccessKey::verifier`]).
        access: &'a [(AccountId, [u8; 32])],
    },
    /// A cumulative acknowledgement, as [`Storage::ack`].
    Ack {
        /// The acknowledging device's account.
        account: AccountId,
        /// The acknowledging device.
        device: DeviceId,
        /// Every envelope up to this seq is acknowledged.
        seq: u64,
    },
}

/// What one [`WriteOp`] did, in the batch's order.
#[derive(Debug)]
pub enum WriteOutcome {
    /// A send's outcome; the error is [`StorageError::UnknownAccount`] or
    /// [`StorageError::MailboxFull`], and then nothing of this send was stored.
    Send(Result<SendStored, StorageError>),
    /// How many envelopes an ack deleted.
    Ack(u64),
}

/// The relay's storage. One trait, one transaction per operation.
pub trait Storage: Send + Sync + 'static {
    /// Checks that the database answers.
    fn ping(&self) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Records an HTTP challenge nonce as answered (cluster mode): false when it was
    /// already recorded, by any node.
    fn use_challenge(
        &self,
        nonce: &[u8; 32],
        issued_ms: u64,
    ) -> impl Future<Output = Result<bool, StorageError>> + Send;

    /// Forgets answered nonces issued before `before_ms`; returns how many.
    fn forget_challenges(&self, before_ms: u64) -> impl Future<Output = Result<u64, StorageError>> + Send;

    /// Stores a verified device list: registers the account, or replaces its list when
    /// the version grows ([`StorageError::StaleDeviceList`] otherwise). Devices no longer
    /// listed lose their mailbox, prekeys and push registration; a device listed with new
    /// keys loses them too.
    fn put_device_list(&self, list: &DeviceList) -> impl Future<Output = Result<PutDeviceList, StorageError>> + Send;

    /// Sets an account's access verifier and request policy. [`StorageError::UnknownAccount`]
    /// when the account has no device list.
    fn put_access(
        &self,
        account: &AccountId,
        access: AccountAccess,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// An account's access setting; `None` for an unknown account.
    fn access(&self, account: &AccountId) -> impl Future<Output = Result<Option<AccountAccess>, StorageError>> + Send;

    /// The account's current signed device list.
    fn device_list(&self, account: &AccountId) -> impl Future<Output = Result<Option<Vec<u8>>, StorageError>> + Send;

    /// One device's keys from the current device list.
    fn device_keys(
        &self,
        account: &AccountId,
        device: DeviceId,
    ) -> impl Future<Output = Result<Option<DeviceKeys>, StorageError>> + Send;

    /// Stores prekeys verified against `signing_key`, which must still be the device's
    /// DSK ([`StorageError::UnknownDevice`] otherwise). The signed and last-resort prekeys
    /// replace the stored ones; one-time prekeys are added (same id: replaced), up to
    /// `max_one_time` per kind.
    fn put_prekeys(
        &self,
        account: &AccountId,
        device: DeviceId,
        signing_key: &Ed25519PublicKey,
        upload: &PreKeyUpload,
        max_one_time: u32,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// How many prekeys the device has left.
    fn prekey_counts(
        &self,
        account: &AccountId,
        device: DeviceId,
    ) -> impl Future<Output = Result<PreKeyCounts, StorageError>> + Send;

    /// A bundle for one device, consuming one one-time X25519 prekey (if any is left) and
    /// one one-time ML-KEM prekey (or else serving the last-resort one). Each one-time
    /// prekey is handed out at most once, also under concurrent calls.
    fn take_bundle(
        &self,
        account: &AccountId,
        device: DeviceId,
    ) -> impl Future<Output = Result<PreKeyBundle, StorageError>> + Send;

    /// A bundle for every device of the account that has prekeys, in device order.
    fn take_bundles(&self, account: &AccountId)
    -> impl Future<Output = Result<Vec<PreKeyBundle>, StorageError>> + Send;

    /// Bundles for one device (`Some`: `UnknownDevice` or `NoPreKeys` when it has none)
    /// or every device that has prekeys (`None`: `UnknownAccount` when the account has no
    /// device), in one write transaction. Without `one_time`, no one-time prekey is
    /// handed out: each bundle carries the last-resort ML-KEM prekey and no one-time
    /// X25519 prekey (what the relay serves once the target's one-time budget is spent).
    fn take_bundles_with(
        &self,
        account: &AccountId,
        device: Option<DeviceId>,
        one_time: bool,
    ) -> impl Future<Output = Result<Vec<PreKeyBundle>, StorageError>> + Send;

    /// Applies sends and acks in one transaction (group commit): all of them or, on a
    /// database error, none. Acks are applied before the sends (an ack can only name seqs
    /// delivered before the batch, so this changes no outcome) and free mailbox room for
    /// them; sends are then checked and stored in order. A send that fails its checks
    /// stores nothing and does not affect the others.
    fn write_batch(&self, ops: &[WriteOp<'_>]) -> impl Future<Output = Result<Vec<WriteOutcome>, StorageError>> + Send;

    /// Stores a send atomically after checking, for every account named, that the set of
    /// devices equals the account's current device list (without the sender device for
    /// the sender's own account when [`SendParams::sender`] names one). Recipients must be
    /// distinct; each head is its recipient's whole envelope (no shared body). A batch of
    /// one.
    fn store_send(
        &self,
        params: SendParams,
        recipients: &[Recipient],
    ) -> impl Future<Output = Result<SendStored, StorageError>> + Send {
        self.store_send_with(params, &[], recipients)
    }

    /// [`Storage::store_send`] presenting access-key verifiers (`access`, per account).
    fn store_send_with(
        &self,
        params: SendParams,
        access: &[(AccountId, [u8; 32])],
        recipients: &[Recipient],
    ) -> impl Future<Output = Result<SendStored, StorageError>> + Send {
        self.store_shared(params, access, &[], recipients)
    }

    /// [`Storage::store_send_with`] for a send whose envelopes share `body`: recipient
    /// `i`'s envelope is `recipients[i].head ‖ body`. The body is stored once (nothing
    /// when empty) and each recipient's mailbox is charged its whole envelope's length.
    fn store_shared(
        &self,
        params: SendParams,
        access: &[(AccountId, [u8; 32])],
        body: &[u8],
        recipients: &[Recipient],
    ) -> impl Future<Output = Result<SendStored, StorageError>> + Send {
        async move {
            match self
                .write_batch(&[WriteOp::Send {
                    params,
                    body,
                    recipients,
                    access,
                }])
                .await?
                .pop()
            {
                Some(WriteOutcome::Send(r)) => r,
                _ => Err(StorageError::BatchFailed),
            }
        }
    }

    /// Up to `limit` unexpired envelopes with a seq above `after`, in seq order, each
    /// assembled as `head ‖ body`.
    fn fetch(
        &self,
        account: &AccountId,
        device: DeviceId,
        after: u64,
        now_s: u64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<StoredEnvelope>, StorageError>> + Send;

    /// Deletes every envelope with a seq up to `seq`, and each body no envelope references
    /// any more; returns how many envelopes. A batch of one.
    fn ack(
        &self,
        account: &AccountId,
        device: DeviceId,
        seq: u64,
    ) -> impl Future<Output = Result<u64, StorageError>> + Send {
        let op = WriteOp::Ack {
            account: *account,
            device,
            seq,
        };
        async move {
            match self.write_batch(&[op]).await?.pop() {
                Some(WriteOutcome::Ack(n)) => Ok(n),
                _ => Err(StorageError::BatchFailed),
            }
        }
    }

    /// The highest seq assigned in the mailbox so far (0 when none).
    fn last_seq(&self, account: &AccountId, device: DeviceId)
    -> impl Future<Output = Result<u64, StorageError>> + Send;

    /// (envelopes in all mailboxes, envelopes in the fullest mailbox), from the mailbox
    /// counters: one pass over the device rows, none over envelopes.
    fn mailbox_totals(&self) -> impl Future<Output = Result<(u64, u64), StorageError>> + Send;

    /// Counts for an operator (`sotto-relay admin stats`), none naming anyone.
    fn relay_stats(&self) -> impl Future<Output = Result<RelayStats, StorageError>> + Send;

    /// One device's mailbox (`sotto-relay admin mailbox`); `UnknownDevice` when the
    /// relay has no such device.
    fn mailbox_stats(
        &self,
        account: &AccountId,
        device: DeviceId,
    ) -> impl Future<Output = Result<MailboxStats, StorageError>> + Send;

    /// Deletes every envelope expired at `now_s`, then every expired body no envelope
    /// references; returns how many envelopes.
    fn expire(&self, now_s: u64) -> impl Future<Output = Result<u64, StorageError>> + Send;

    /// Stores (replaces) the device's push registration.
    fn put_push(
        &self,
        account: &AccountId,
        device: DeviceId,
        registration: &PushRegistration,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// The device's push registration.
    fn push_registration(
        &self,
        account: &AccountId,
        device: DeviceId,
    ) -> impl Future<Output = Result<Option<PushRegistration>, StorageError>> + Send;

    /// Deletes the device's push registration; returns whether there was one.
    fn delete_push(
        &self,
        account: &AccountId,
        device: DeviceId,
    ) -> impl Future<Output = Result<bool, StorageError>> + Send;

    /// Stores the account's profile, replacing the one before (and so its version).
    /// [`StorageError::UnknownAccount`] for an unknown account.
    fn put_profile(
        &self,
        account: &AccountId,
        profile: &StoredProfile,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// The account's profile; `None` when it has none (or the account is unknown).
    fn profile(&self, account: &AccountId) -> impl Future<Output = Result<Option<StoredProfile>, StorageError>> + Send;

    /// Deletes the account's profile; returns whether there was one.
    fn delete_profile(&self, account: &AccountId) -> impl Future<Output = Result<bool, StorageError>> + Send;
}

/// Why a prekey upload was refused before reaching the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("prekey signature does not verify")]
pub struct BadPreKey;

/// Checks every prekey's signature against the device's DSK.
pub fn verify_prekeys(device: DeviceId, dsk: &Ed25519PublicKey, upload: &PreKeyUpload) -> Result<(), BadPreKey> {
    let x = upload.signed_prekey.iter().chain(&upload.one_time_prekeys);
    for k in x {
        k.verify(device, dsk).map_err(|_| BadPreKey)?;
    }
    for k in upload.kem_prekeys.iter().chain(&upload.last_resort_kem_prekey) {
        k.verify(device, dsk).map_err(|_| BadPreKey)?;
    }
    Ok(())
}

/// Any backend, picked by URL: `postgres://` or `postgresql://` for PostgreSQL, anything
/// else (`sqlite://PATH`, or a bare path) for SQLite.
#[derive(Clone, Debug)]
pub enum Store {
    /// The embedded default.
    Sqlite(SqliteStore),
    /// A PostgreSQL server.
    Postgres(PostgresStore),
}

impl Store {
    /// Opens the database and runs the migrations.
    pub async fn open(url: &str, max_connections: u32) -> Result<Self, StorageError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(PostgresStore::open(url, max_connections).await?))
        } else {
            Ok(Store::Sqlite(SqliteStore::open(url, max_connections).await?))
        }
    }

    /// The backend's name, for logs and metrics.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Another handle on the same (already migrated) database with its own pool of at most
    /// `max_connections`, connecting lazily on the runtime it is first used on.
    pub fn with_own_pool(&self, max_connections: u32) -> Self {
        match self {
            Store::Sqlite(s) => Store::Sqlite(s.with_own_pool(max_connections)),
            Store::Postgres(s) => Store::Postgres(s.with_own_pool(max_connections)),
        }
    }

    /// How many write transactions this store (and the handles made from it by
    /// [`Store::with_own_pool`]) began: a bundle request is one, whatever the number of
    /// devices.
    pub fn write_transactions(&self) -> u64 {
        match self {
            Store::Sqlite(s) => s.write_transactions(),
            Store::Postgres(s) => s.write_transactions(),
        }
    }

    /// SQLite: checkpoints and truncates the WAL, so that acknowledged and expired
    /// envelopes (zeroed in the database by `secure_delete`) leave no copy in the WAL.
    /// PostgreSQL: nothing (VACUUM is the server's business, docs/self-hosting.md).
    pub async fn checkpoint(&self) -> Result<(), StorageError> {
        match self {
            Store::Sqlite(s) => s.checkpoint().await,
            Store::Postgres(_) => Ok(()),
        }
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.close().await,
            Store::Postgres(s) => s.close().await,
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Sqlite($s) => $e.await,
            Store::Postgres($s) => $e.await,
        }
    };
}

impl Storage for Store {
    async fn ping(&self) -> Result<(), StorageError> {
        delegate!(self, s => s.ping())
    }
    async fn use_challenge(&self, nonce: &[u8; 32], issued_ms: u64) -> Result<bool, StorageError> {
        delegate!(self, s => s.use_challenge(nonce, issued_ms))
    }
    async fn forget_challenges(&self, before_ms: u64) -> Result<u64, StorageError> {
        delegate!(self, s => s.forget_challenges(before_ms))
    }
    async fn put_device_list(&self, list: &DeviceList) -> Result<PutDeviceList, StorageError> {
        delegate!(self, s => s.put_device_list(list))
    }
    async fn device_list(&self, account: &AccountId) -> Result<Option<Vec<u8>>, StorageError> {
        delegate!(self, s => s.device_list(account))
    }
    async fn put_access(&self, account: &AccountId, access: AccountAccess) -> Result<(), StorageError> {
        delegate!(self, s => s.put_access(account, access))
    }
    async fn access(&self, account: &AccountId) -> Result<Option<AccountAccess>, StorageError> {
        delegate!(self, s => s.access(account))
    }
    async fn device_keys(&self, account: &AccountId, device: DeviceId) -> Result<Option<DeviceKeys>, StorageError> {
        delegate!(self, s => s.device_keys(account, device))
    }
    async fn put_prekeys(
        &self,
        account: &AccountId,
        device: DeviceId,
        signing_key: &Ed25519PublicKey,
        upload: &PreKeyUpload,
        max_one_time: u32,
    ) -> Result<(), StorageError> {
        delegate!(self, s => s.put_prekeys(account, device, signing_key, upload, max_one_time))
    }
    async fn prekey_counts(&self, account: &AccountId, device: DeviceId) -> Result<PreKeyCounts, StorageError> {
        delegate!(self, s => s.prekey_counts(account, device))
    }
    async fn take_bundle(&self, account: &AccountId, device: DeviceId) -> Result<PreKeyBundle, StorageError> {
        delegate!(self, s => s.take_bundle(account, device))
    }
    async fn take_bundles(&self, account: &AccountId) -> Result<Vec<PreKeyBundle>, StorageError> {
        delegate!(self, s => s.take_bundles(account))
    }
    async fn take_bundles_with(
        &self,
        account: &AccountId,
        device: Option<DeviceId>,
        one_time: bool,
    ) -> Result<Vec<PreKeyBundle>, StorageError> {
        delegate!(self, s => s.take_bundles_with(account, device, one_time))
    }
    async fn write_batch(&self, ops: &[WriteOp<'_>]) -> Result<Vec<WriteOutcome>, StorageError> {
        delegate!(self, s => s.write_batch(ops))
    }
    async fn fetch(
        &self,
        account: &AccountId,
        device: DeviceId,
        after: u64,
        now_s: u64,
        limit: u32,
    ) -> Result<Vec<StoredEnvelope>, StorageError> {
        delegate!(self, s => s.fetch(account, device, after, now_s, limit))
    }
    async fn last_seq(&self, account: &AccountId, device: DeviceId) -> Result<u64, StorageError> {
        delegate!(self, s => s.last_seq(account, device))
    }
    async fn expire(&self, now_s: u64) -> Result<u64, StorageError> {
        delegate!(self, s => s.expire(now_s))
    }
    async fn mailbox_totals(&self) -> Result<(u64, u64), StorageError> {
        delegate!(self, s => s.mailbox_totals())
    }
    async fn relay_stats(&self) -> Result<RelayStats, StorageError> {
        delegate!(self, s => s.relay_stats())
    }
    async fn mailbox_stats(&self, account: &AccountId, device: DeviceId) -> Result<MailboxStats, StorageError> {
        delegate!(self, s => s.mailbox_stats(account, device))
    }
    async fn put_push(
        &self,
        account: &AccountId,
        device: DeviceId,
        registration: &PushRegistration,
    ) -> Result<(), StorageError> {
        delegate!(self, s => s.put_push(account, device, registration))
    }
    async fn push_registration(
        &self,
        account: &AccountId,
        device: DeviceId,
    ) -> Result<Option<PushRegistration>, StorageError> {
        delegate!(self, s => s.push_registration(account, device))
    }
    async fn delete_push(&self, account: &AccountId, device: DeviceId) -> Result<bool, StorageError> {
        delegate!(self, s => s.delete_push(account, device))
    }
    async fn put_profile(&self, account: &AccountId, profile: &StoredProfile) -> Result<(), StorageError> {
        delegate!(self, s => s.put_profile(account, profile))
    }
    async fn profile(&self, account: &AccountId) -> Result<Option<StoredProfile>, StorageError> {
        delegate!(self, s => s.profile(account))
    }
    async fn delete_profile(&self, account: &AccountId) -> Result<bool, StorageError> {
        delegate!(self, s => s.delete_profile(account))
    }
}

// ---- helpers shared by the backends ----

/// An envelope from its row: the head, then the shared body when the row references one.
/// A row whose body is missing, or not `body_len` bytes long, is [`StorageError::Corrupt`].
pub(crate) fn join_envelope(mut head: Vec<u8>, body_len: i64, body: Option<Vec<u8>>) -> Result<Vec<u8>, StorageError> {
    match body {
        None if body_len == 0 => Ok(head),
        Some(body) if body.len() as u64 == to_u64(body_len) && body_len > 0 => {
            head.extend_from_slice(&body);
            Ok(head)
        }
        _ => Err(StorageError::Corrupt("envelope body")),
    }
}

/// Bodies per statement when deleting unreferenced ones.
pub(crate) const BATCH_BODIES_PER_QUERY: usize = 500;

/// Integers are stored as `i64`; these never fail for values the relay writes.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(crate) fn device_i64(d: DeviceId) -> i64 {
    i64::from(d.0)
}

pub(crate) fn device_from_i64(v: i64) -> Result<DeviceId, StorageError> {
    u32::try_from(v)
        .map(DeviceId)
        .map_err(|_| StorageError::Corrupt("device id"))
}

pub(crate) fn key32(v: &[u8], what: &'static str) -> Result<[u8; 32], StorageError> {
    v.try_into().map_err(|_| StorageError::Corrupt(what))
}

pub(crate) fn device_keys_from(dsk: &[u8], ik: &[u8], registration: &[u8]) -> Result<DeviceKeys, StorageError> {
    Ok(DeviceKeys {
        signing_key: Ed25519PublicKey::from_bytes(&key32(dsk, "signing key")?)
            .map_err(|_| StorageError::Corrupt("signing key"))?,
        identity_key: X25519PublicKey(key32(ik, "identity key")?),
        registration: registration
            .try_into()
            .map_err(|_| StorageError::Corrupt("registration"))?,
    })
}

/// 16 bytes of OS randomness for a device row's `registration` (the mailbox epoch).
pub(crate) fn registration_nonce() -> Result<[u8; 16], StorageError> {
    let mut n = [0u8; 16];
    getrandom::getrandom(&mut n).map_err(|_| StorageError::Corrupt("no OS randomness"))?;
    Ok(n)
}

/// The prekey rows an upload writes: (kind, key id, record).
pub(crate) fn prekey_rows(upload: &PreKeyUpload) -> Vec<(i64, i64, Vec<u8>)> {
    let mut rows = Vec::new();
    let x = upload.signed_prekey.iter().chain(&upload.one_time_prekeys);
    for k in x {
        let mut rec = Vec::with_capacity(X25519PreKey::ENCODED_LEN);
        k.encode_into(&mut rec);
        rows.push((i64::from(k.kind as u8), i64::from(k.id), rec));
    }
    for k in upload.kem_prekeys.iter().chain(&upload.last_resort_kem_prekey) {
        let mut rec = Vec::with_capacity(KemPreKey::ENCODED_LEN);
        k.encode_into(&mut rec);
        rows.push((i64::from(k.kind as u8), i64::from(k.id), rec));
    }
    rows
}

pub(crate) const KIND_SIGNED: i64 = PreKeyKind::Signed as i64;
pub(crate) const KIND_ONE_TIME: i64 = PreKeyKind::OneTime as i64;
pub(crate) const KIND_KEM_ONE_TIME: i64 = PreKeyKind::KemOneTime as i64;
pub(crate) const KIND_KEM_LAST_RESORT: i64 = PreKeyKind::KemLastResort as i64;

/// Assembles a bundle from stored rows.
pub(crate) fn bundle_from(
    account: &AccountId,
    device: DeviceId,
    keys: DeviceKeys,
    signed: Option<Vec<u8>>,
    one_time: Option<Vec<u8>>,
    kem: Option<Vec<u8>>,
) -> Result<PreKeyBundle, StorageError> {
    let (Some(signed), Some(kem)) = (signed, kem) else {
        return Err(StorageError::NoPreKeys);
    };
    Ok(PreKeyBundle {
        identity: DeviceIdentity {
            account_id: *account,
            device_id: device,
            signing_key: keys.signing_key,
            identity_key: keys.identity_key,
        },
        signed_prekey: X25519PreKey::decode(&signed).map_err(|_| StorageError::Corrupt("signed prekey"))?,
        one_time_prekey: one_time
            .map(|b| X25519PreKey::decode(&b))
            .transpose()
            .map_err(|_| StorageError::Corrupt("one-time prekey"))?,
        kem_prekey: KemPreKey::decode(&kem).map_err(|_| StorageError::Corrupt("ML-KEM prekey"))?,
    })
}

/// The most a device list's version may grow in one update (and the highest version a
/// first registration may carry). Versions only grow, so a list at or near 2^64−1 would
/// make every later list stale and lose the account for good; bounding the step leaves
/// at least 2^64 / 1024 updates. crypto-core's device-list checks carry the same bound
/// for clients; this one is the relay's own, kept here so that the relay enforces it
/// whatever the client does.
pub const MAX_VERSION_STEP: u64 = 1024;

/// The top bit of a last-resort ML-KEM prekey id; the other bits are its creation hour.
const LAST_RESORT_BIT: i64 = 0x8000_0000;

/// The creation hours of signed and last-resort prekeys the relay still serves: senders
/// refuse keys made more than 30 days before their clock or more than a day after it
/// (docs/protocol.md §3.5). The relay's window is a day narrower on the old side and half
/// a day on the new side, so that, with clocks less than half a day apart, a device the
/// relay counts as reachable is one every sender can fetch a bundle for; otherwise the
/// device-set rule would insist on a device senders must leave out.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FreshHours {
    lo: i64,
    hi: i64,
}

impl FreshHours {
    /// The window at the relay's wall clock.
    pub(crate) fn now() -> Self {
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self::at(now_s)
    }

    /// The window at `now_s`.
    pub(crate) fn at(now_s: u64) -> Self {
        let hour = i64::try_from(now_s / 3600).unwrap_or(i64::MAX / 2);
        Self {
            lo: hour - 29 * 24,
            hi: hour + 12,
        }
    }

    /// Whether a stored prekey record (`kind ‖ key_id (u32) ‖ …`) may still be served:
    /// one-time kinds always, signed and last-resort ones within the window.
    pub(crate) fn serves(&self, record: &[u8]) -> bool {
        let (Some(&kind), Some(id)) = (record.first(), record.get(1..5)) else {
            return false;
        };
        let id = i64::from(u32::from_be_bytes([id[0], id[1], id[2], id[3]]));
        let hour = match i64::from(kind) {
            KIND_SIGNED => id,
            KIND_KEM_LAST_RESORT => id - LAST_RESORT_BIT,
            _ => return true,
        };
        (self.lo..=self.hi).contains(&hour)
    }

    /// The select-list expression that says whether the `devices` row in the query is
    /// reachable: a bundle for it can be made now (a signed prekey within the window, and
    /// a one-time ML-KEM prekey or a last-resort one within the window), i.e. a bundle
    /// request would not answer `NO_PREKEYS`. The bounds are integers the relay computed,
    /// never input. Index probes on `prekeys_by_device`.
    pub(crate) fn reachable_sql(&self) -> String {
        let (lo, hi) = (self.lo, self.hi);
        format!(
            "CAST(CASE WHEN \
             EXISTS (SELECT 1 FROM prekeys p WHERE p.account_id = devices.account_id \
                     AND p.device_id = devices.device_id AND p.kind = {KIND_SIGNED} \
                     AND p.key_id BETWEEN {lo} AND {hi}) \
             AND EXISTS (SELECT 1 FROM prekeys p WHERE p.account_id = devices.account_id \
                     AND p.device_id = devices.device_id AND (p.kind = {KIND_KEM_ONE_TIME} \
                     OR (p.kind = {KIND_KEM_LAST_RESORT} AND p.key_id - {LAST_RESORT_BIT} BETWEEN {lo} AND {hi}))) \
             THEN 1 ELSE 0 END AS BIGINT)"
        )
    }
}

/// Bounds on one statement of a write batch, well under both databases' bind-parameter
/// limits (SQLite 32,766, PostgreSQL 65,535).
pub(crate) const BATCH_ACCOUNTS_PER_QUERY: usize = 500;
pub(crate) const BATCH_ACKS_PER_QUERY: usize = 200;
pub(crate) const BATCH_ROWS_PER_QUERY: usize = 1000;

/// A device row's mailbox counters, read (and on PostgreSQL locked) at the start of a
/// write batch and written back at its end when `dirty`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MailboxRow {
    pub(crate) next_seq: u64,
    pub(crate) depth: u64,
    pub(crate) acked_seq: u64,
    /// Whether a bundle can be made for the device now ([`FreshHours::reachable_sql`]); the device-set
    /// rule lets a send leave out devices that are not.
    pub(crate) reachable: bool,
    /// Envelope bytes stored in the mailbox.
    pub(crate) bytes: u64,
    /// Message requests stored in the mailbox, and their bytes.
    pub(crate) requests: u64,
    pub(crate) request_bytes: u64,
    pub(crate) dirty: bool,
}

/// The rows of every device of every account a batch touches.
pub(crate) type Rows = BTreeMap<(AccountId, DeviceId), MailboxRow>;

/// Every account a batch touches, sorted: rows are locked in this order, so two
/// concurrent writers cannot deadlock.
pub(crate) fn batch_accounts(ops: &[WriteOp<'_>]) -> Vec<AccountId> {
    let mut set = BTreeSet::new();
    for op in ops {
        match op {
            WriteOp::Send { recipients, .. } => set.extend(recipients.iter().map(|r| r.account_id)),
            WriteOp::Ack { account, .. } => {
                set.insert(*account);
            }
        }
    }
    set.into_iter().collect()
}

/// The envelope ranges a batch's acks delete, one per device: `(account, device, after,
/// up_to)`, deleting seqs in `after+1..=up_to`. Acks of unknown devices and acks at or
/// below the device's last ack delete nothing and are left out.
pub(crate) fn ack_ranges(ops: &[WriteOp<'_>], rows: &Rows) -> Vec<(AccountId, DeviceId, u64, u64)> {
    let mut highest: BTreeMap<(AccountId, DeviceId), u64> = BTreeMap::new();
    for op in ops {
        if let WriteOp::Ack { account, device, seq } = *op {
            let e = highest.entry((account, device)).or_insert(seq);
            *e = (*e).max(seq);
        }
    }
    highest
        .into_iter()
        .filter_map(|(key, seq)| {
            let row = rows.get(&key)?;
            (seq > row.acked_seq).then_some((key.0, key.1, row.acked_seq, seq.min(row.next_seq.saturating_sub(1))))
        })
        .filter(|r| r.3 > r.2)
        .collect()
}

/// A deleted envelope row as the backends return it: (account, device, its envelope's
/// length (head plus body), whether it was a request, its body's id).
pub(crate) type DeletedRow = (Vec<u8>, i64, i64, i64, Option<i64>);

/// What deleting envelopes freed in one mailbox.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Freed {
    pub(crate) envelopes: u64,
    pub(crate) bytes: u64,
    pub(crate) requests: u64,
    pub(crate) request_bytes: u64,
}

impl Freed {
    /// Counts one deleted envelope of `len` bytes (`request`: stored as a request).
    pub(crate) fn add(&mut self, len: i64, request: i64) {
        let len = to_u64(len);
        self.envelopes += 1;
        self.bytes += len;
        if request != 0 {
            self.requests += 1;
            self.request_bytes += len;
        }
    }
}

/// Applies deleted-envelope counts to the rows and fills in the acks' outcomes: each
/// device's count goes to the batch's first ack of it, later ones report 0.
pub(crate) fn apply_acks(
    ops: &[WriteOp<'_>],
    ranges: &[(AccountId, DeviceId, u64, u64)],
    deleted: &BTreeMap<(AccountId, DeviceId), Freed>,
    rows: &mut Rows,
    outcomes: &mut [Option<WriteOutcome>],
) {
    for &(account, device, _, up_to) in ranges {
        if let Some(row) = rows.get_mut(&(account, device)) {
            let f = deleted.get(&(account, device)).copied().unwrap_or_default();
            row.acked_seq = up_to;
            row.depth = row.depth.saturating_sub(f.envelopes);
            row.bytes = row.bytes.saturating_sub(f.bytes);
            row.requests = row.requests.saturating_sub(f.requests);
            row.request_bytes = row.request_bytes.saturating_sub(f.request_bytes);
            row.dirty = true;
        }
    }
    let mut reported = BTreeSet::new();
    for (op, out) in ops.iter().zip(outcomes.iter_mut()) {
        if let WriteOp::Ack { account, device, .. } = *op {
            let n = if reported.insert((account, device)) {
                deleted.get(&(account, device)).map_or(0, |d| d.envelopes)
            } else {
                0
            };
            *out = Some(WriteOutcome::Ack(n));
        }
    }
}

/// One envelope row a batch inserts.
pub(crate) struct Insert<'a> {
    pub(crate) account: AccountId,
    pub(crate) device: DeviceId,
    pub(crate) seq: u64,
    pub(crate) received_at_s: u64,
    pub(crate) expires_at_s: u64,
    /// The recipient's head (its whole envelope when there is no body).
    pub(crate) head: &'a [u8],
    /// The shared body's index in the batch's [`NewBody`] list, and its length.
    pub(crate) body: Option<usize>,
    pub(crate) body_len: u64,
    /// Stored without the recipient account's access key (a message request).
    pub(crate) request: bool,
}

impl Insert<'_> {
    /// The `body_id` column: the id the batch's body `i` was stored under.
    pub(crate) fn body_id(&self, ids: &[i64]) -> Option<i64> {
        self.body.and_then(|i| ids.get(i).copied())
    }
}

/// One body row a batch inserts: a stored send's non-empty shared body.
pub(crate) struct NewBody<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) expires_at_s: u64,
}

/// What [`plan_sends`] decided: the envelope rows and body rows to insert, and the sends
/// that failed the device-set check as `(op index, accounts)`.
pub(crate) struct Plan<'a> {
    pub(crate) inserts: Vec<Insert<'a>>,
    pub(crate) bodies: Vec<NewBody<'a>>,
    pub(crate) lookups: Vec<(usize, Vec<AccountId>)>,
}

/// Which accounts of a send take its envelopes as message requests, or why it is
/// refused: an account is a contact's when the send is on an authenticated connection of
/// one of its devices (its own account), when the account set no verifier, or when the
/// send presents a key whose verifier matches (compared in constant time).
fn request_accounts(
    accounts: &BTreeSet<AccountId>,
    params: &SendParams,
    presented: &[(AccountId, [u8; 32])],
    access: &BTreeMap<AccountId, AccountAccess>,
) -> Result<BTreeSet<AccountId>, StorageError> {
    use subtle::ConstantTimeEq;
    let mut requests = BTreeSet::new();
    for a in accounts {
        if params.sender.is_some_and(|s| s.0 == *a) {
            continue;
        }
        let Some(acc) = access.get(a) else { continue };
        let Some(verifier) = acc.verifier else { continue };
        let matches = presented
            .iter()
            .find(|(p, _)| p == a)
            .is_some_and(|(_, v)| bool::from(v.ct_eq(&verifier)));
        if matches {
            continue;
        }
        if !acc.accept_requests {
            return Err(StorageError::AccessDenied);
        }
        requests.insert(*a);
    }
    Ok(requests)
}

/// Checks the batch's sends in order against the rows (device sets, mailbox depth) and
/// assigns seqs to those that pass; each stored send with a non-empty body gets one body
/// row. Sends that fail the device-set check are returned as `(op index, accounts)`: the
/// caller looks up those accounts' lists (an account with no stored list makes it
/// [`StorageError::UnknownAccount`]). A mailbox is charged each envelope's whole length,
/// `head ‖ body`, as if the body were stored in it.
pub(crate) fn plan_sends<'a>(
    ops: &[WriteOp<'a>],
    rows: &mut Rows,
    access: &BTreeMap<AccountId, AccountAccess>,
    outcomes: &mut [Option<WriteOutcome>],
) -> Plan<'a> {
    let mut inserts = Vec::new();
    let mut bodies = Vec::new();
    let mut lookups = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let WriteOp::Send {
            params,
            body,
            recipients,
            access: presented,
        } = *op
        else {
            continue;
        };
        let body_len = body.len() as u64;
        let len = |r: &Recipient| (r.head.len() as u64).saturating_add(body_len);
        let accounts: BTreeSet<AccountId> = recipients.iter().map(|r| r.account_id).collect();
        let mismatched: Vec<AccountId> = accounts
            .iter()
            .copied()
            .filter(|a| {
                let listed: Vec<(DeviceId, bool)> = rows
                    .range((*a, DeviceId(0))..=(*a, DeviceId(u32::MAX)))
                    .map(|(k, row)| (k.1, row.reachable))
                    .collect();
                listed.is_empty() || !device_set_matches(a, &listed, recipients, params.sender.as_ref())
            })
            .collect();
        if !mismatched.is_empty() {
            lookups.push((i, mismatched));
            continue;
        }
        let requests = match request_accounts(&accounts, &params, presented, access) {
            Ok(r) => r,
            Err(e) => {
                outcomes[i] = Some(WriteOutcome::Send(Err(e)));
                continue;
            }
        };
        // Full in count, or in bytes: the envelope would take the mailbox over
        // `max_mailbox_bytes` (a send naming one device twice was refused before).
        let full = recipients.iter().any(|r| {
            rows.get(&(r.account_id, r.device_id)).is_none_or(|row| {
                row.depth >= u64::from(params.max_mailbox_depth)
                    || row.bytes.saturating_add(len(r)) > params.max_mailbox_bytes
            })
        });
        if full {
            outcomes[i] = Some(WriteOutcome::Send(Err(StorageError::MailboxFull)));
            continue;
        }
        // Requests have their own, smaller bounds, so strangers cannot fill a mailbox
        // its contacts need.
        let requests_full = recipients.iter().filter(|r| requests.contains(&r.account_id)).any(|r| {
            rows.get(&(r.account_id, r.device_id)).is_none_or(|row| {
                row.requests >= u64::from(params.max_request_depth)
                    || row.request_bytes.saturating_add(len(r)) > params.max_request_bytes
            })
        });
        if requests_full {
            outcomes[i] = Some(WriteOutcome::Send(Err(StorageError::RequestsFull)));
            continue;
        }
        // One body row for the whole send, however many mailboxes it reaches.
        let body_index = (!body.is_empty()).then(|| {
            bodies.push(NewBody {
                bytes: body,
                expires_at_s: params.expires_at_s,
            });
            bodies.len() - 1
        });
        let mut seqs = Vec::with_capacity(recipients.len());
        for r in recipients {
            if let Some(row) = rows.get_mut(&(r.account_id, r.device_id)) {
                seqs.push(row.next_seq);
                inserts.push(Insert {
                    account: r.account_id,
                    device: r.device_id,
                    seq: row.next_seq,
                    received_at_s: params.now_s,
                    expires_at_s: params.expires_at_s,
                    head: &r.head,
                    body: body_index,
                    body_len,
                    request: requests.contains(&r.account_id),
                });
                row.next_seq += 1;
                row.depth += 1;
                row.bytes = row.bytes.saturating_add(len(r));
                if requests.contains(&r.account_id) {
                    row.requests += 1;
                    row.request_bytes = row.request_bytes.saturating_add(len(r));
                }
                row.dirty = true;
            }
        }
        outcomes[i] = Some(WriteOutcome::Send(Ok(SendStored::Stored(seqs))));
    }
    Plan {
        inserts,
        bodies,
        lookups,
    }
}

/// The outcome of a send that failed the device-set check, from its mismatched accounts'
/// stored lists.
pub(crate) fn mismatch_outcome(lists: Vec<Option<Vec<u8>>>) -> WriteOutcome {
    match lists.into_iter().collect::<Option<Vec<_>>>() {
        Some(lists) => WriteOutcome::Send(Ok(SendStored::Mismatch(lists))),
        None => WriteOutcome::Send(Err(StorageError::UnknownAccount)),
    }
}

/// The device-set rule (docs/protocol.md §13.7): the devices a send names for `account`
/// must all be listed (`listed`: each listed device and whether it is reachable), and
/// must include every reachable listed device — without the sender's own device, when
/// the send names its sender. A listed device that is not reachable (the relay holds no
/// fresh signed prekey for it, or no ML-KEM prekey, one-time or fresh last-resort: a
/// bundle request for it answers `NO_PREKEYS`) may be named or left out.
pub(crate) fn device_set_matches(
    account: &AccountId,
    listed: &[(DeviceId, bool)],
    recipients: &[Recipient],
    sender: Option<&(AccountId, DeviceId)>,
) -> bool {
    let not_sender = |d: &DeviceId| sender.is_none_or(|s| !(s.0 == *account && s.1 == *d));
    let allowed: BTreeSet<DeviceId> = listed.iter().map(|(d, _)| *d).filter(not_sender).collect();
    let required: BTreeSet<DeviceId> = listed
        .iter()
        .filter(|(_, reachable)| *reachable)
        .map(|(d, _)| *d)
        .filter(not_sender)
        .collect();
    let named: BTreeSet<DeviceId> = recipients
        .iter()
        .filter(|r| r.account_id == *account)
        .map(|r| r.device_id)
        .collect();
    required.is_subset(&named) && named.is_subset(&allowed)
}

impl BlobStorage for Store {
    async fn issuer_secret(
        &self,
        epoch: u32,
        create: Option<&[u8; 32]>,
    ) -> Result<Option<zeroize::Zeroizing<[u8; 32]>>, StorageError> {
        delegate!(self, s => s.issuer_secret(epoch, create))
    }
    async fn charge_tokens(
        &self,
        account: &AccountId,
        device: DeviceId,
        day: u64,
        n: u32,
        max: u32,
    ) -> Result<(), StorageError> {
        delegate!(self, s => s.charge_tokens(account, device, day, n, max))
    }
    async fn create_blob(&self, blob: &NewBlob) -> Result<(), StorageError> {
        delegate!(self, s => s.create_blob(blob))
    }
    async fn blob(&self, id: &[u8; 32]) -> Result<Option<BlobRow>, StorageError> {
        delegate!(self, s => s.blob(id))
    }
    async fn blob_received(
        &self,
        id: &[u8; 32],
        offset: u64,
        received: u64,
        completed: Option<(u64, u64)>,
    ) -> Result<bool, StorageError> {
        delegate!(self, s => s.blob_received(id, offset, received, completed))
    }
    async fn expired_blobs(&self, now_ms: u64, limit: u32) -> Result<Vec<BlobRow>, StorageError> {
        delegate!(self, s => s.expired_blobs(now_ms, limit))
    }
    async fn delete_blobs(&self, ids: &[[u8; 32]], now_ms: u64) -> Result<u64, StorageError> {
        delegate!(self, s => s.delete_blobs(ids, now_ms))
    }
    async fn collect_blob_rows(&self, day: u64, epoch: u32) -> Result<Collected, StorageError> {
        delegate!(self, s => s.collect_blob_rows(day, epoch))
    }
    async fn blob_total_bytes(&self) -> Result<u64, StorageError> {
        delegate!(self, s => s.blob_total_bytes())
    }
}
