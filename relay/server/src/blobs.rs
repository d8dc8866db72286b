//! The blob store for encrypted attachments (docs/protocol.md §16.4).
//!
//! A device buys single-use upload tokens with its authentication (`PUT /v1/blobs/tokens`,
//! a daily quota per device), then anyone holding a token creates a blob
//! (`PUT /v1/blobs`), uploads it in pieces at increasing offsets
//! (`PUT /v1/blobs/{id}/{offset}`), and anyone holding the id downloads it
//! (`GET /v1/blobs/{id}`). The tokens are unlinkable (crypto-core `token`, §16.3), so the
//! relay cannot tell which device created a blob; blob rows name no account or device.
//!
//! ```text
//! epoch       = floor(unix seconds / token_epoch_secs)      one issuer key per epoch, made on
//!                                                            first use, kept for epoch and epoch − 1
//! redemption  epoch ∈ {current, current − 1}, N = k_epoch·H(t), SHA-256(t ‖ N) not spent
//! a piece     offset = received; write at offset; fsync; then received += n in the database
//! complete    received = length: the directory is fsynced, completed_ms and
//!             expires_ms = now + blob_ttl are recorded
//! ```
//!
//! The bytes live in one file per blob, `dir/<64 hex digits>`, written in place (disk), or
//! are staged there and streamed to an object store on completion (S3). The database row
//! is the truth: a file without a row is an orphan the collector deletes, and bytes past
//! the row's `received` (a piece cut short) are cut off by the next piece.
//!
//! Time comes from a [`Clock`], the system clock unless a test sets it; [`BlobStore::gc`]
//! takes `now_ms` explicitly.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::SeekFrom;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, RateLimiter};
use sha2::Digest;
use sotto_crypto::{AccountId, DeviceId, IssuerKey};
use sotto_proto::{BlobCreate, BlobCreated, BlobIssuer, BlobStatus, ErrorCode, TokenIssue, TokenIssued, limits};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{BlobBackend, Blobs as BlobConfig, Config};
use crate::error::AppError;
use crate::metrics::{Metrics, inc};
use crate::state::{charge_direct, charge_keyed, lock, quota, quota_per_minute};
use crate::storage::{BlobRow, BlobStorage, NewBlob, Store};

mod object;

/// Milliseconds in a (UTC) day: the quota's period.
pub const DAY_MS: u64 = 86_400_000;

/// How many expired blobs one collection step handles; a run takes at most
/// [`GC_BATCHES`] steps.
const GC_BATCH: u32 = 256;
const GC_BATCHES: usize = 64;

/// The chunk a download reads from disk at a time.
const READ_CHUNK: usize = 64 * 1024;

/// The blob store's clock: the system clock, or a fixed time a test set.
#[derive(Debug, Default)]
pub struct Clock {
    fixed_ms: AtomicU64,
}

impl Clock {
    /// Now, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        match self.fixed_ms.load(Ordering::Acquire) {
            0 => crate::state::now_ms(),
            fixed => fixed,
        }
    }

    /// Fixes the time at `ms` (0: back to the system clock).
    pub fn set_ms(&self, ms: u64) {
        self.fixed_ms.store(ms, Ordering::Release);
    }
}

/// What a collection run deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Expired complete blobs and stale incomplete uploads (rows and bytes).
    pub blobs: u64,
    /// Files in the blob directory without a row.
    pub orphans: u64,
    /// Quota rows of past days.
    pub quota_rows: u64,
    /// Retired issuer keys.
    pub issuer_keys: u64,
    /// Spent-set rows of retired epochs.
    pub spent: u64,
}

/// Where the bytes of complete blobs are.
enum Backend {
    /// In `dir`.
    Disk,
    /// In an object store.
    S3(object::Objects),
    /// The object store could not be configured (logged at start): every blob request
    /// is `INTERNAL`.
    Broken,
}

/// The blob store's state.
pub struct BlobStore {
    config: BlobConfig,
    dir: PathBuf,
    backend: Backend,
    /// The time the store uses.
    pub clock: Clock,
    /// Issuer keys by epoch: at most the current and the previous one.
    keys: Mutex<BTreeMap<u32, Arc<IssuerKey>>>,
    /// Blobs with a piece being written (one writer per blob), at most
    /// `max_concurrent_uploads`.
    writing: Mutex<HashSet<[u8; 32]>>,
    downloads: Arc<Semaphore>,
    /// Uploads and downloads in progress by address: an entry exists only while its
    /// address holds one of the slots above, so there are at most as many as slots.
    transfers: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// `limits.request_timeout_ms`: the base of a download's deadline.
    request_timeout: Duration,
    requests_addr: DefaultKeyedRateLimiter<IpAddr>,
    requests_total: DefaultDirectRateLimiter,
    max_tracked_addrs: usize,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("backend", &self.config.backend)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// A blob id as 64 lowercase hex digits.
pub fn hex_id(id: &[u8; 32]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in id {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

/// Parses 64 lowercase hex digits.
pub fn parse_hex_id(s: &str) -> Option<[u8; 32]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// A decimal offset in a path: 1 to 20 ASCII digits that fit a `u64`.
fn parse_offset(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A ChaCha20 generator seeded with 256 bits of OS randomness.
fn os_rng() -> Result<rand_chacha::ChaCha20Rng, AppError> {
    use rand_core::SeedableRng;
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::getrandom(&mut seed[..]).map_err(|_| {
        tracing::error!("no OS randomness for the blob store");
        AppError(ErrorCode::INTERNAL)
    })?;
    Ok(rand_chacha::ChaCha20Rng::from_seed(*seed))
}

fn io_error(e: &std::io::Error) -> AppError {
    tracing::error!(kind = ?e.kind(), "blob file I/O failed");
    AppError(ErrorCode::INTERNAL)
}

/// Fsyncs a directory, so the entries of files created in it are durable.
async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .map_err(std::io::Error::other)?
}

/// Removes a file; one that is already gone is fine.
async fn remove_file(path: &Path) -> std::io::Result<bool> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Releases a blob's writer slot when dropped.
struct Writing<'a> {
    set: &'a Mutex<HashSet<[u8; 32]>>,
    id: [u8; 32],
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        lock(self.set).remove(&self.id);
    }
}

/// One transfer of an address, counted until dropped.
struct AddrTransfer {
    map: Arc<Mutex<HashMap<IpAddr, usize>>>,
    addr: IpAddr,
}

impl Drop for AddrTransfer {
    fn drop(&mut self) {
        let mut map = lock(&self.map);
        if let Some(n) = map.get_mut(&self.addr) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.addr);
            }
        }
    }
}

/// What a download holds while its body streams: its download slot and its address's
/// transfer, given back when the body ends or is dropped, or at its deadline by a
/// watchdog, whichever comes first. A client that stops reading cannot keep them: past
/// the deadline the body fails at its next read, which closes the connection (until then
/// the idle connection counts against the per-address connection limits only).
pub(crate) struct DownloadSlot {
    held: Arc<Mutex<Option<(OwnedSemaphorePermit, AddrTransfer)>>>,
    deadline: tokio::time::Instant,
    watchdog: tokio::task::AbortHandle,
    metrics: Arc<Metrics>,
}

impl DownloadSlot {
    /// An error once the deadline passed (the slot is then given back, if the watchdog
    /// has not yet).
    pub(crate) fn check(&self) -> std::io::Result<()> {
        if tokio::time::Instant::now() >= self.deadline {
            if lock(&self.held).take().is_some() {
                inc(&self.metrics.blob_downloads_cut_total, 1);
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the download was read too slowly",
            ));
        }
        Ok(())
    }
}

impl Drop for DownloadSlot {
    fn drop(&mut self) {
        self.watchdog.abort();
        lock(&self.held).take();
    }
}

/// How much of an upload piece is gathered before one write to the file.
const WRITE_BATCH: usize = 1 << 20;

/// A `Range` header's meaning for a blob of `len` bytes (RFC 9110 §14).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    /// The whole blob (no header, another unit, several ranges, or a syntax error,
    /// which RFC 9110 says to ignore).
    Full,
    /// Bytes `first..=last`.
    Part(u64, u64),
    /// No byte of the blob is in the range (416).
    Unsatisfiable,
}

/// Interprets one `Range` header value for a blob of `len` (≥ 1) bytes.
pub fn parse_range(value: Option<&str>, len: u64) -> RangeAnswer {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeAnswer::Full;
    };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let num = |s: &str| parse_offset(s.trim());
    match (a.trim().is_empty(), b.trim().is_empty()) {
        // -n: the last n bytes.
        (true, false) => match num(b) {
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(n) => RangeAnswer::Part(len - n.min(len), len - 1),
            None => RangeAnswer::Full,
        },
        // a-: from a to the end.
        (false, true) => match num(a) {
            Some(first) if first >= len => RangeAnswer::Unsatisfiable,
            Some(first) => RangeAnswer::Part(first, len - 1),
            None => RangeAnswer::Full,
        },
        // a-b.
        (false, false) => match (num(a), num(b)) {
            (Some(first), Some(last)) if first <= last => {
                if first >= len {
                    RangeAnswer::Unsatisfiable
                } else {
                    RangeAnswer::Part(first, last.min(len - 1))
                }
            }
            _ => RangeAnswer::Full,
        },
        (true, true) => RangeAnswer::Full,
    }
}

impl BlobStore {
    /// The store for `config`. An S3 backend that cannot be configured is logged and
    /// answers `INTERNAL`; nothing is created on disk until the first upload.
    pub fn new(config: &Config) -> Self {
        let b = &config.blobs;
        let backend = match b.backend {
            BlobBackend::Disk => Backend::Disk,
            BlobBackend::S3 => match object::Objects::new(b) {
                Ok(o) => Backend::S3(o),
                Err(e) => {
                    tracing::error!(error = %e, "the S3 blob backend is not usable");
                    Backend::Broken
                }
            },
        };
        Self {
            config: b.clone(),
            dir: config.blob_dir(),
            backend,
            clock: Clock::default(),
            keys: Mutex::new(BTreeMap::new()),
            writing: Mutex::new(HashSet::new()),
            downloads: Arc::new(Semaphore::new(b.max_concurrent_downloads)),
            transfers: Arc::new(Mutex::new(HashMap::new())),
            request_timeout: Duration::from_millis(config.limits.request_timeout_ms.max(1)),
            requests_addr: RateLimiter::keyed(quota_per_minute(
                b.requests_per_minute_per_addr,
                b.requests_burst_per_addr,
            )),
            requests_total: RateLimiter::direct(quota(b.requests_per_second_total, b.requests_burst_total)),
            max_tracked_addrs: config.limits.max_tracked_addrs,
        }
    }

    /// The directory of blob (or staging) files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of a blob.
    pub fn path_of(&self, id: &[u8; 32]) -> PathBuf {
        self.dir.join(hex_id(id))
    }

    /// The issuer epoch at `now_ms`.
    pub fn epoch_at(&self, now_ms: u64) -> u32 {
        let secs = now_ms / 1000 / self.config.token_epoch_secs.max(1);
        u32::try_from(secs).unwrap_or(u32::MAX)
    }

    /// Charges one unauthenticated blob request from `addr`, per address and in total.
    pub(crate) fn charge(&self, addr: IpAddr, metrics: &Metrics) -> Result<(), AppError> {
        let r = charge_keyed(&self.requests_addr, &addr, 1, self.max_tracked_addrs)
            .and_then(|()| charge_direct(&self.requests_total, 1));
        if r.is_err() {
            inc(&metrics.blob_requests_refused_total, 1);
        }
        r.map_err(AppError)
    }

    /// Forgets idle per-address limiter state.
    pub(crate) fn housekeeping(&self) {
        self.requests_addr.retain_recent();
        self.requests_addr.shrink_to_fit();
    }

    fn usable(&self) -> Result<(), AppError> {
        match self.backend {
            Backend::Broken => Err(AppError(ErrorCode::INTERNAL)),
            _ => Ok(()),
        }
    }

    /// The key of `epoch`: from memory, else from the database; with `create`, made and
    /// stored when the epoch has none yet.
    async fn key(&self, store: &Store, epoch: u32, create: bool) -> Result<Option<Arc<IssuerKey>>, AppError> {
        if let Some(k) = lock(&self.keys).get(&epoch) {
            return Ok(Some(k.clone()));
        }
        let fresh = if create {
            Some(IssuerKey::generate(&mut os_rng()?).to_bytes())
        } else {
            None
        };
        let Some(secret) = store.issuer_secret(epoch, fresh.as_deref()).await? else {
            return Ok(None);
        };
        let key = Arc::new(IssuerKey::from_bytes(&secret).ok_or_else(|| {
            tracing::error!("a stored blob issuer key does not decode");
            AppError(ErrorCode::INTERNAL)
        })?);
        let mut keys = lock(&self.keys);
        keys.insert(epoch, key.clone());
        // Only the current and the previous epoch are ever asked for.
        while keys.len() > 2 {
            keys.pop_first();
        }
        Ok(Some(key))
    }

    /// `GET /v1/blobs/issuer`: the current epoch's public key and the limits.
    pub async fn issuer(&self, store: &Store) -> Result<BlobIssuer, AppError> {
        self.usable()?;
        let epoch = self.epoch_at(self.clock.now_ms());
        let key = self
            .key(store, epoch, true)
            .await?
            .ok_or(AppError(ErrorCode::INTERNAL))?;
        Ok(BlobIssuer {
            epoch,
            public: key.public(),
            max_blob_len: self.config.max_blob_len,
            tokens_per_day: self.config.tokens_per_device_per_day,
        })
    }

    /// `PUT /v1/blobs/tokens`: evaluates the blinded points under the current epoch's key
    /// and charges them to the device's quota of the day; nothing is answered unless the
    /// charge committed.
    pub async fn issue_tokens(
        &self,
        store: &Store,
        metrics: &Metrics,
        account: &AccountId,
        device: DeviceId,
        req: &TokenIssue,
    ) -> Result<TokenIssued, AppError> {
        self.usable()?;
        let now = self.clock.now_ms();
        let epoch = self.epoch_at(now);
        if req.epoch != epoch {
            inc(&metrics.blob_tokens_refused_total, 1);
            return Err(AppError(ErrorCode::TOKEN_INVALID));
        }
        let key = self
            .key(store, epoch, true)
            .await?
            .ok_or(AppError(ErrorCode::INTERNAL))?;
        let (evaluated, proof) = key
            .issue(&req.blinded, &mut os_rng()?)
            .map_err(|_| AppError(ErrorCode::MALFORMED))?;
        let n = u32::try_from(req.blinded.len()).unwrap_or(u32::MAX);
        if let Err(e) = store
            .charge_tokens(account, device, now / DAY_MS, n, self.config.tokens_per_device_per_day)
            .await
        {
            inc(&metrics.blob_tokens_refused_total, 1);
            return Err(e.into());
        }
        inc(&metrics.blob_tokens_issued_total, u64::from(n));
        Ok(TokenIssued {
            epoch,
            evaluated,
            proof: proof.0,
        })
    }

    /// `PUT /v1/blobs`: checks the length, the token and the room, then creates the blob
    /// and spends the token in one transaction.
    pub async fn create(&self, store: &Store, metrics: &Metrics, req: &BlobCreate) -> Result<BlobCreated, AppError> {
        self.usable()?;
        let refuse = |code: ErrorCode| {
            refused(metrics, code);
            AppError(code)
        };
        if req.length == 0 {
            return Err(refuse(ErrorCode::MALFORMED));
        }
        if req.length > self.config.max_blob_len {
            return Err(refuse(ErrorCode::BLOB_TOO_LARGE));
        }
        let now = self.clock.now_ms();
        let current = self.epoch_at(now);
        if req.epoch != current && Some(req.epoch) != current.checked_sub(1) {
            return Err(refuse(ErrorCode::TOKEN_INVALID));
        }
        let key = self
            .key(store, req.epoch, false)
            .await?
            .ok_or_else(|| refuse(ErrorCode::TOKEN_INVALID))?;
        key.verify(&req.token).map_err(|_| refuse(ErrorCode::TOKEN_INVALID))?;
        let mut id = [0u8; 32];
        getrandom::getrandom(&mut id).map_err(|_| AppError(ErrorCode::INTERNAL))?;
        let blob = NewBlob {
            row: BlobRow {
                id,
                length: req.length,
                received: 0,
                created_ms: now,
                completed_ms: None,
                expires_ms: now.saturating_add(self.config.upload_ttl_secs.saturating_mul(1000)),
            },
            token_hash: sha2::Sha256::digest(req.token).into(),
            epoch: req.epoch,
            max_total_bytes: self.config.max_total_bytes,
        };
        if let Err(e) = store.create_blob(&blob).await {
            let e = AppError::from(e);
            refused(metrics, e.0);
            return Err(e);
        }
        inc(&metrics.blobs_created_total, 1);
        Ok(BlobCreated { id })
    }

    /// A live (not expired) blob row, or `NOT_FOUND`.
    async fn live(&self, store: &Store, id: &[u8; 32]) -> Result<BlobRow, AppError> {
        match store.blob(id).await? {
            Some(row) if row.expires_ms > self.clock.now_ms() => Ok(row),
            _ => Err(AppError(ErrorCode::NOT_FOUND)),
        }
    }

    /// `GET /v1/blobs/{id}/status`.
    pub async fn status(&self, store: &Store, id: &str) -> Result<BlobStatus, AppError> {
        self.usable()?;
        let id = parse_hex_id(id).ok_or(AppError(ErrorCode::MALFORMED))?;
        let row = self.live(store, &id).await?;
        Ok(BlobStatus {
            length: row.length,
            received: row.received,
        })
    }

    /// `PUT /v1/blobs/{id}/{offset}`: appends one piece at `offset`, which must be the
    /// bytes received so far. The piece is streamed to the file, fsynced, and only then
    /// counted in the database.
    pub async fn put_piece(
        &self,
        store: &Store,
        metrics: &Metrics,
        addr: IpAddr,
        id: &str,
        offset: &str,
        body: Body,
    ) -> Result<BlobStatus, AppError> {
        self.usable()?;
        let id = parse_hex_id(id).ok_or(AppError(ErrorCode::MALFORMED))?;
        let offset = parse_offset(offset).ok_or(AppError(ErrorCode::MALFORMED))?;
        let _slot = self.writer_slot(id)?;
        let _transfer = self.addr_transfer(addr)?;
        let row = self.live(store, &id).await?;
        if row.completed_ms.is_some() {
            return Err(AppError(ErrorCode::NOT_FOUND));
        }
        if offset != row.received {
            return Err(AppError(ErrorCode::OFFSET_MISMATCH));
        }
        let room = row.length - row.received;
        // A declared length (Content-Length) is checked before anything is written.
        if let Some(declared) = axum::body::HttpBody::size_hint(&body).exact() {
            if declared > limits::MAX_BLOB_PIECE as u64 {
                return Err(AppError(ErrorCode::BODY_TOO_LARGE));
            }
            if declared == 0 || declared > room {
                return Err(AppError(ErrorCode::MALFORMED));
            }
        }
        let path = self.path_of(&id);
        if offset == 0 {
            tokio::fs::create_dir_all(&self.dir).await.map_err(|e| io_error(&e))?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(offset == 0)
            .write(true)
            .truncate(false)
            .open(&path)
            .await
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    // The file of a blob with bytes received is gone: nothing to resume.
                    tracing::error!("the file of a blob in progress is missing");
                }
                io_error(&e)
            })?;
        let on_disk = file.metadata().await.map_err(|e| io_error(&e))?.len();
        if on_disk < offset {
            tracing::error!("the file of a blob in progress is shorter than recorded");
            return Err(AppError(ErrorCode::INTERNAL));
        }
        // Bytes past `received` are from a piece that was never counted.
        file.set_len(offset).await.map_err(|e| io_error(&e))?;
        file.seek(SeekFrom::Start(offset)).await.map_err(|e| io_error(&e))?;
        // The body is gathered into batches of WRITE_BATCH, each written by one blocking
        // call (a write per network chunk would cost a thread handoff each); the last
        // call also makes the file durable.
        let mut file = file.into_std().await;
        let mut stream = body.into_data_stream();
        let mut n: u64 = 0;
        let mut batch: Vec<u8> = Vec::with_capacity(WRITE_BATCH);
        loop {
            let chunk = stream.next().await;
            let done = chunk.is_none();
            if let Some(chunk) = chunk {
                let chunk: Bytes = chunk.map_err(|_| AppError(ErrorCode::MALFORMED))?;
                n = n.saturating_add(chunk.len() as u64);
                if n > limits::MAX_BLOB_PIECE as u64 {
                    return Err(AppError(ErrorCode::BODY_TOO_LARGE));
                }
                if n > room {
                    return Err(AppError(ErrorCode::MALFORMED));
                }
                batch.extend_from_slice(&chunk);
            }
            if done && n == 0 {
                return Err(AppError(ErrorCode::MALFORMED));
            }
            if batch.len() >= WRITE_BATCH || done {
                let written = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
                    std::io::Write::write_all(&mut file, &batch)?;
                    if done {
                        file.sync_all()?;
                    }
                    batch.clear();
                    Ok((file, batch))
                })
                .await
                .map_err(|_| AppError(ErrorCode::INTERNAL))?;
                (file, batch) = written.map_err(|e| io_error(&e))?;
            }
            if done {
                break;
            }
        }
        drop(file);
        if offset == 0 {
            // The new file's directory entry is durable before any byte is counted.
            sync_dir(&self.dir).await.map_err(|e| io_error(&e))?;
        }
        let received = offset + n;
        let completed = if received == row.length {
            if let Backend::S3(objects) = &self.backend {
                objects.upload(&id, &path).await?;
                let _ = remove_file(&path).await;
            } else {
                sync_dir(&self.dir).await.map_err(|e| io_error(&e))?;
            }
            let now = self.clock.now_ms();
            Some((now, now.saturating_add(self.config.blob_ttl_secs.saturating_mul(1000))))
        } else {
            None
        };
        if !store.blob_received(&id, offset, received, completed).await? {
            // Collected meanwhile: its file is an orphan now.
            return Err(AppError(ErrorCode::NOT_FOUND));
        }
        inc(&metrics.blob_bytes_received_total, n);
        Ok(BlobStatus {
            length: row.length,
            received,
        })
    }

    /// Takes the blob's writer slot: `OFFSET_MISMATCH` while another piece of it is being
    /// written (its offset will have moved), `BUSY` when all slots are taken.
    fn writer_slot(&self, id: [u8; 32]) -> Result<Writing<'_>, AppError> {
        let mut set = lock(&self.writing);
        if set.contains(&id) {
            return Err(AppError(ErrorCode::OFFSET_MISMATCH));
        }
        if set.len() >= self.config.max_concurrent_uploads {
            return Err(AppError(ErrorCode::BUSY));
        }
        set.insert(id);
        Ok(Writing { set: &self.writing, id })
    }

    /// Counts a transfer of `addr`: `BUSY` when it has `max_transfers_per_addr` already.
    /// Taken after a slot, so the table never holds more addresses than slots.
    fn addr_transfer(&self, addr: IpAddr) -> Result<AddrTransfer, AppError> {
        let mut map = lock(&self.transfers);
        let n = map.entry(addr).or_insert(0);
        if *n >= self.config.max_transfers_per_addr {
            if *n == 0 {
                map.remove(&addr);
            }
            return Err(AppError(ErrorCode::BUSY));
        }
        *n += 1;
        Ok(AddrTransfer {
            map: self.transfers.clone(),
            addr,
        })
    }

    /// The download slot for `count` bytes to `addr` (`BUSY` when none is free, in total
    /// or for the address), with its deadline and the watchdog that enforces it.
    fn download_slot(&self, addr: IpAddr, count: u64, metrics: &Arc<Metrics>) -> Result<DownloadSlot, AppError> {
        let permit = self
            .downloads
            .clone()
            .try_acquire_owned()
            .map_err(|_| AppError(ErrorCode::BUSY))?;
        let transfer = self.addr_transfer(addr)?;
        let allowance = Duration::from_secs(count / self.config.min_download_bytes_per_second.max(1) + 1);
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(self.request_timeout.saturating_add(allowance))
            .unwrap_or_else(|| now + Duration::from_secs(365 * 86_400));
        let held = Arc::new(Mutex::new(Some((permit, transfer))));
        let watched = held.clone();
        let counted = metrics.clone();
        let watchdog = tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            if lock(&watched).take().is_some() {
                inc(&counted.blob_downloads_cut_total, 1);
            }
        })
        .abort_handle();
        Ok(DownloadSlot {
            held,
            deadline,
            watchdog,
            metrics: metrics.clone(),
        })
    }

    /// `GET /v1/blobs/{id}`: the complete blob, streamed, whole or one range.
    pub async fn download(
        &self,
        store: &Store,
        metrics: &Arc<Metrics>,
        addr: IpAddr,
        id: &str,
        range: Option<&HeaderValue>,
    ) -> Result<Response, AppError> {
        self.usable()?;
        let id = parse_hex_id(id).ok_or(AppError(ErrorCode::MALFORMED))?;
        let row = self.live(store, &id).await?;
        if row.completed_ms.is_none() {
            return Err(AppError(ErrorCode::NOT_FOUND));
        }
        let len = row.length;
        let (status, first, last) = match parse_range(range.and_then(|v| v.to_str().ok()), len) {
            RangeAnswer::Full => (StatusCode::OK, 0, len - 1),
            RangeAnswer::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b),
            RangeAnswer::Unsatisfiable => {
                let mut res = AppError(ErrorCode::MALFORMED).into_response();
                *res.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    res.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(res);
            }
        };
        let count = last - first + 1;
        let slot = self.download_slot(addr, count, metrics)?;
        let body = match &self.backend {
            Backend::S3(objects) => objects.stream(&id, first, last, slot, metrics.clone()).await?,
            _ => self.stream_file(&id, len, first, count, slot, metrics.clone()).await?,
        };
        inc(&metrics.blob_downloads_total, 1);
        let mut res = Response::new(body);
        *res.status_mut() = status;
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
        if status == StatusCode::PARTIAL_CONTENT
            && let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{len}"))
        {
            h.insert(header::CONTENT_RANGE, v);
        }
        Ok(res)
    }

    /// `count` bytes of the blob's file from `first`, read in chunks as the client takes
    /// them.
    async fn stream_file(
        &self,
        id: &[u8; 32],
        len: u64,
        first: u64,
        count: u64,
        slot: DownloadSlot,
        metrics: Arc<Metrics>,
    ) -> Result<Body, AppError> {
        let mut file = tokio::fs::File::open(self.path_of(id))
            .await
            .map_err(|e| io_error(&e))?;
        let on_disk = file.metadata().await.map_err(|e| io_error(&e))?.len();
        if on_disk != len {
            tracing::error!("a complete blob's file does not have its length");
            return Err(AppError(ErrorCode::INTERNAL));
        }
        file.seek(SeekFrom::Start(first)).await.map_err(|e| io_error(&e))?;
        let stream = futures_util::stream::unfold(
            (file, count, slot, metrics),
            |(mut file, left, slot, metrics)| async move {
                if left == 0 {
                    return None;
                }
                if let Err(e) = slot.check() {
                    return Some((Err(e), (file, 0, slot, metrics)));
                }
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(READ_CHUNK);
                let mut buf = vec![0u8; n];
                match file.read_exact(&mut buf).await {
                    Ok(_) => {
                        inc(&metrics.blob_bytes_served_total, n as u64);
                        Some((Ok(Bytes::from(buf)), (file, left - n as u64, slot, metrics)))
                    }
                    Err(e) => Some((Err(e), (file, 0, slot, metrics))),
                }
            },
        );
        Ok(Body::from_stream(stream))
    }

    /// Deletes the bytes of a blob: its file, and its object with S3.
    async fn delete_bytes(&self, id: &[u8; 32]) -> Result<(), AppError> {
        remove_file(&self.path_of(id)).await.map_err(|e| io_error(&e))?;
        if let Backend::S3(objects) = &self.backend {
            objects.delete(id).await?;
        }
        Ok(())
    }

    /// One collection run at `now_ms`: expired complete blobs and incomplete uploads past
    /// their deadline (bytes first, then rows), quota rows of past days, issuer keys and
    /// spent tokens of epochs before the previous one, and files of the blob directory
    /// that no row names.
    pub async fn gc(&self, store: &Store, metrics: &Metrics, now_ms: u64) -> Result<GcReport, AppError> {
        self.usable()?;
        let mut report = GcReport::default();
        for _ in 0..GC_BATCHES {
            let rows = store.expired_blobs(now_ms, GC_BATCH).await?;
            let mut ids = Vec::with_capacity(rows.len());
            for row in &rows {
                self.delete_bytes(&row.id).await?;
                ids.push(row.id);
            }
            report.blobs += store.delete_blobs(&ids, now_ms).await?;
            if rows.len() < GC_BATCH as usize {
                break;
            }
        }
        let keep_from = self.epoch_at(now_ms).saturating_sub(1);
        let c = store.collect_blob_rows(now_ms / DAY_MS, keep_from).await?;
        lock(&self.keys).retain(|epoch, _| *epoch >= keep_from);
        report.quota_rows = c.quota_rows;
        report.issuer_keys = c.issuer_keys;
        report.spent = c.spent;
        report.orphans = self.sweep_orphans(store).await?;
        inc(&metrics.blob_gc_deleted_total, report.blobs + report.orphans);
        Ok(report)
    }

    /// Deletes files named like a blob id that have no row (a crash after a file was
    /// written and before its row was; a blob collected while a piece was written).
    async fn sweep_orphans(&self, store: &Store) -> Result<u64, AppError> {
        let mut dir = match tokio::fs::read_dir(&self.dir).await {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_error(&e)),
        };
        let mut deleted = 0;
        while let Some(entry) = dir.next_entry().await.map_err(|e| io_error(&e))? {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(parse_hex_id) else {
                continue;
            };
            if store.blob(&id).await?.is_none() && remove_file(&entry.path()).await.map_err(|e| io_error(&e))? {
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

/// Counts a refused blob creation by its reason.
fn refused(metrics: &Metrics, code: ErrorCode) {
    let counter = match code {
        ErrorCode::TOKEN_INVALID => &metrics.blob_redemptions_invalid_total,
        ErrorCode::TOKEN_SPENT => &metrics.blob_redemptions_spent_total,
        ErrorCode::BLOB_TOO_LARGE | ErrorCode::MALFORMED => &metrics.blob_redemptions_too_large_total,
        ErrorCode::STORAGE_FULL => &metrics.blob_redemptions_full_total,
        _ => return,
    };
    inc(counter, 1);
}

/// Runs [`BlobStore::gc`] every `gc_interval_secs` (the first run one interval after
/// start) until shutdown.
pub(crate) async fn gc_loop(state: Arc<crate::AppState>) {
    let every = std::time::Duration::from_secs(state.config.blobs.gc_interval_secs.max(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut shutdown = state.shutdown_signal();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::state::wait_shutdown(&mut shutdown) => return,
        }
        let now = state.blobs.clock.now_ms();
        if let Err(e) = state.blobs.gc(&state.store, &state.metrics, now).await {
            tracing::warn!(code = %e.0, "blob collection failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeAnswer::*;
        let r = |v: &str| parse_range(Some(v), 100);
        assert_eq!(parse_range(None, 100), Full);
        assert_eq!(r("bytes=0-9"), Part(0, 9));
        assert_eq!(r("bytes=90-200"), Part(90, 99));
        assert_eq!(r("bytes=10-"), Part(10, 99));
        assert_eq!(r("bytes=-10"), Part(90, 99));
        assert_eq!(r("bytes=-1000"), Part(0, 99));
        assert_eq!(r("bytes=100-"), Unsatisfiable);
        assert_eq!(r("bytes=100-200"), Unsatisfiable);
        assert_eq!(r("bytes=-0"), Unsatisfiable);
        assert_eq!(r("bytes=0-1,5-6"), Full);
        assert_eq!(r("bytes=5-1"), Full);
        assert_eq!(r("items=0-1"), Full);
        assert_eq!(r("bytes=+1-2"), Full);
    }

    #[test]
    fn ids_and_offsets() {
        let id = [0xab; 32];
        assert_eq!(parse_hex_id(&hex_id(&id)), Some(id));
        assert_eq!(parse_hex_id(&hex_id(&id).to_uppercase()), None);
        assert_eq!(parse_hex_id("ab"), None);
        assert_eq!(parse_offset("0"), Some(0));
        assert_eq!(parse_offset("+1"), None);
        assert_eq!(parse_offset("18446744073709551616"), None);
    }

    #[test]
    fn clock_is_settable() {
        let c = Clock::default();
        c.set_ms(5);
        assert_eq!(c.now_ms(), 5);
        c.set_ms(0);
        assert!(c.now_ms() > 1_600_000_000_000);
    }
}
