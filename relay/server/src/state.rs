//! Shared relay state: configuration, store, the challenge secret and used nonces, rate
//! limiters and byte budgets, the registry of connected devices, metrics and the shutdown
//! signal.
//!
//! HTTP challenges are stateless: nothing is stored when one is issued.
//!
//! ```text
//! nonce = timestamp_ms (8, big-endian) ‖ random (8)
//!         ‖ HMAC-SHA256(secret, "Sotto-v1 http challenge" ‖ relay_id ‖ timestamp_ms ‖ random)[..16]
//! ```
//! `secret` is 32 bytes of OS randomness drawn at start (challenges do not survive a
//! restart). Only nonces already used by a verified answer are kept, until they expire,
//! to refuse replays.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use sotto_crypto::{AccountId, DeviceId, Ed25519PublicKey};
use sotto_proto::{AuthResponse, Challenge, Deliver, ErrorCode};
use tokio::sync::{Notify, Semaphore, watch};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::storage::{Storage, Store};
use crate::writer::Writer;

/// Everything the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// The configuration.
    pub config: Config,
    /// The database.
    pub store: Store,
    /// `SHA-256("Sotto-v1 relay id" ‖ public_url)`.
    pub relay_id: [u8; 32],
    /// Counters and gauges for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The blob store for attachments (docs/protocol.md §16.4).
    pub blobs: crate::blobs::BlobStore,
    pub(crate) guards: Guards,
    pub(crate) hub: Arc<Hub>,
    /// Cluster mode: this node's view of the others and its queue to the bus.
    pub(crate) cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Why cluster mode cannot start (the shared secret did not load): `run` refuses.
    pub(crate) cluster_error: Option<String>,
    pub(crate) writer: Writer,
    pub(crate) pusher: Arc<crate::push::Pusher>,
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) conns: Arc<crate::net::Conns>,
    /// Envelope bytes of sends read and not yet answered.
    pub(crate) inflight: Arc<Budget>,
    /// 32 bytes of OS randomness drawn at start: part of every mailbox epoch, so the
    /// epochs change on every start (and so after every database restore).
    boot: Zeroizing<[u8; 32]>,
    shutdown_tx: watch::Sender<bool>,
    /// The TLS certificate and key in use, once `run` loaded them (`[tls]` configured).
    pub(crate) tls: std::sync::OnceLock<Arc<crate::tls::Certificates>>,
}

type Keyed = DefaultKeyedRateLimiter<IpAddr>;

/// The challenge secret, the used nonces and the shared rate limiters.
pub(crate) struct Guards {
    secret: Zeroizing<[u8; 32]>,
    /// Used nonces and when they were issued (ms).
    used: Mutex<HashMap<[u8; 32], u64>>,
    challenge_addr: Keyed,
    challenge_total: DefaultDirectRateLimiter,
    addr_envelopes: Keyed,
    addr_bytes: Keyed,
    bundle_requester: DefaultKeyedRateLimiter<AccountId>,
    bundle_target: DefaultKeyedRateLimiter<AccountId>,
    register_addr: Keyed,
    register_total: DefaultDirectRateLimiter,
    list_updates: DefaultKeyedRateLimiter<AccountId>,
    profile_updates: DefaultKeyedRateLimiter<AccountId>,
    profile_fetch_addr: Keyed,
    profile_fetch_total: DefaultDirectRateLimiter,
}

impl std::fmt::Debug for Guards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guards")
            .field("used", &lock(&self.used).len())
            .finish_non_exhaustive()
    }
}

/// `rate` per minute, sustained, with `burst`.
pub(crate) fn quota_per_minute(rate: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
}

pub(crate) fn quota(rate: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
}

impl Guards {
    /// `shared`: the cluster's secret (cluster mode); otherwise one is drawn.
    fn new(l: &crate::config::Limits, shared: Option<Zeroizing<[u8; 32]>>) -> Self {
        let secret = shared.unwrap_or_else(|| {
            let mut secret = Zeroizing::new([0u8; 32]);
            if getrandom::getrandom(&mut secret[..]).is_err() {
                // Without OS randomness no challenge can be trusted: every answer fails.
                tracing::error!("no OS randomness for the challenge secret");
            }
            secret
        });
        Self {
            secret,
            used: Mutex::new(HashMap::new()),
            challenge_addr: RateLimiter::keyed(quota(l.challenge_rate_per_addr, l.challenge_burst_per_addr)),
            challenge_total: RateLimiter::direct(quota(l.challenge_rate_total, l.challenge_burst_total)),
            addr_envelopes: RateLimiter::keyed(quota(l.addr_rate_per_second, l.addr_rate_burst)),
            addr_bytes: RateLimiter::keyed(quota(l.addr_rate_bytes_per_second, l.addr_rate_bytes_burst)),
            bundle_requester: RateLimiter::keyed(quota_per_minute(
                l.bundles_per_minute_per_requester,
                l.bundles_burst_per_requester,
            )),
            bundle_target: RateLimiter::keyed(quota_per_minute(
                l.one_time_bundles_per_minute_per_target,
                l.one_time_bundles_burst_per_target,
            )),
            register_addr: RateLimiter::keyed(quota_per_minute(
                l.registrations_per_minute_per_addr,
                l.registrations_burst_per_addr,
            )),
            register_total: RateLimiter::direct(quota_per_minute(
                l.registrations_per_minute_total,
                l.registrations_burst_total,
            )),
            list_updates: RateLimiter::keyed(quota_per_minute(
                l.list_updates_per_minute_per_account,
                l.list_updates_burst_per_account,
            )),
            profile_updates: RateLimiter::keyed(quota_per_minute(
                l.profile_updates_per_minute_per_account,
                l.profile_updates_burst_per_account,
            )),
            profile_fetch_addr: RateLimiter::keyed(quota_per_minute(
                l.profile_fetches_per_minute_per_addr,
                l.profile_fetches_burst_per_addr,
            )),
            profile_fetch_total: RateLimiter::direct(quota(
                l.profile_fetches_per_second_total,
                l.profile_fetches_burst_total,
            )),
        }
    }

    /// The nonce's MAC over its first 16 bytes (HMAC takes any key length, so this is
    /// never `INTERNAL` in practice).
    fn tag(&self, relay_id: &[u8; 32], head: &[u8]) -> Result<Hmac<Sha256>, ErrorCode> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret[..]).map_err(|_| ErrorCode::INTERNAL)?;
        mac.update(b"Sotto-v1 http challenge");
        mac.update(relay_id);
        mac.update(head);
        Ok(mac)
    }

    /// Forgets idle per-address limiter state and expired used nonces.
    pub(crate) fn housekeeping(&self, ttl_ms: u64) {
        for k in [
            &self.challenge_addr,
            &self.addr_envelopes,
            &self.addr_bytes,
            &self.register_addr,
            &self.profile_fetch_addr,
        ] {
            k.retain_recent();
            k.shrink_to_fit();
        }
        for k in [
            &self.bundle_requester,
            &self.bundle_target,
            &self.list_updates,
            &self.profile_updates,
        ] {
            k.retain_recent();
            k.shrink_to_fit();
        }
        let now = now_ms();
        lock(&self.used).retain(|_, issued| now.saturating_sub(*issued) <= ttl_ms);
    }
}

/// Charges `n` to `key`'s bucket; while the limiter tracks `cap` keys (after forgetting
/// idle ones) it refuses with `BUSY`.
pub(crate) fn charge_keyed<K: Clone + Eq + std::hash::Hash>(
    lim: &DefaultKeyedRateLimiter<K>,
    key: &K,
    n: usize,
    cap: usize,
) -> Result<(), ErrorCode> {
    let Some(n) = NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX)) else {
        return Ok(());
    };
    if lim.len() >= cap {
        lim.retain_recent();
        if lim.len() >= cap {
            return Err(ErrorCode::BUSY);
        }
    }
    match lim.check_key_n(key, n) {
        Ok(Ok(())) => Ok(()),
        _ => Err(ErrorCode::RATE_LIMITED),
    }
}

pub(crate) fn charge_direct(lim: &DefaultDirectRateLimiter, n: usize) -> Result<(), ErrorCode> {
    let Some(n) = NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX)) else {
        return Ok(());
    };
    match lim.check_n(n) {
        Ok(Ok(())) => Ok(()),
        _ => Err(ErrorCode::RATE_LIMITED),
    }
}

/// One connection's rate limits: envelopes and bytes.
pub(crate) struct ConnRate {
    envelopes: DefaultDirectRateLimiter,
    bytes: DefaultDirectRateLimiter,
}

/// A relay-wide byte budget.
#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicUsize,
    max: usize,
}

impl Budget {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            max,
        })
    }

    /// Takes `n` bytes, or nothing when they do not fit.
    pub(crate) fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|t| *t <= self.max)
            })
            .is_ok()
    }

    /// Gives back `n` bytes taken before.
    pub(crate) fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// Takes `n` bytes until the returned guard drops.
    pub(crate) fn hold(self: &Arc<Self>, n: usize) -> Option<Held> {
        self.take(n).then(|| Held {
            budget: self.clone(),
            n,
        })
    }
}

/// Bytes held from a [`Budget`] until dropped.
#[derive(Debug)]
pub(crate) struct Held {
    budget: Arc<Budget>,
    n: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.give(self.n);
    }
}

impl AppState {
    /// The state for `config` over `store`, with its group-commit writer (a thread with
    /// its own connection to the same database).
    pub fn new(config: Config, store: Store) -> Arc<Self> {
        let relay_id = sotto_proto::relay_id(&config.public_url);
        let connections = Arc::new(Semaphore::new(config.limits.max_connections));
        let (shutdown_tx, _) = watch::channel(false);
        let metrics = Arc::new(Metrics::default());
        let cluster = config
            .cluster
            .as_ref()
            .map(|c| crate::cluster::Cluster::new(c, metrics.clone()));
        let (secret, cluster_error) = match config.cluster.as_ref().map(crate::cluster::ClusterConfig::load_secret) {
            Some(Ok(secret)) => (Some(secret), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        };
        let hub = Arc::new(Hub::new(&config.limits, cluster.clone()));
        let guards = Guards::new(&config.limits, secret);
        let blobs = crate::blobs::BlobStore::new(&config);
        let conns = crate::net::Conns::new(&config.limits);
        let inflight = Budget::new(config.limits.max_inflight_send_bytes);
        let pusher = Arc::new(crate::push::Pusher::new(&config.push, metrics.clone()));
        let admission = crate::writer::Admission::new(
            Duration::from_millis(config.limits.send_queue_target_ms),
            Duration::from_millis(config.limits.send_queue_interval_ms),
        );
        let writer = Writer::spawn(&store, hub.clone(), metrics.clone(), pusher.clone(), admission);
        let mut boot = Zeroizing::new([0u8; 32]);
        if getrandom::getrandom(&mut boot[..]).is_err() {
            // The epoch would then not change on restart: say so loudly.
            tracing::error!("no OS randomness for the mailbox epoch");
        }
        Arc::new(Self {
            boot,
            config,
            store,
            relay_id,
            metrics,
            blobs,
            guards,
            conns,
            inflight,
            hub,
            cluster,
            cluster_error,
            writer,
            pusher,
            connections,
            shutdown_tx,
            tls: std::sync::OnceLock::new(),
        })
    }

    /// Reads the TLS certificate and key again (what SIGHUP does): `None` when the relay
    /// serves no TLS, an error (and the old pair kept) when the files do not load.
    pub fn reload_tls(&self) -> Option<Result<(), crate::tls::TlsError>> {
        self.tls.get().map(|c| c.reload())
    }

    /// The TLS certificate (DER) new connections are shown, when the relay serves TLS.
    pub fn tls_certificate(&self) -> Option<Vec<u8>> {
        self.tls.get().map(|c| c.presented().to_vec())
    }

    /// The number of push jobs finished so far (sent, failed, dropped or skipped, each
    /// after its retries): something to wait on rather than poll.
    pub fn push_completions(&self) -> watch::Receiver<u64> {
        self.pusher.completions()
    }

    /// Tells every connection to close and new ones to go away.
    pub fn begin_shutdown(&self) {
        self.shutdown_tx.send_replace(true);
    }

    /// Whether the writer is saturated now: new sends are refused with `BUSY` until its
    /// queue drains (the `writer_saturated` metric).
    pub fn writer_saturated(&self) -> bool {
        !self.writer.admits()
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown_tx.borrow()
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    /// A fresh challenge with OS randomness and the relay's clock.
    pub(crate) fn new_challenge(&self) -> Result<Challenge, ErrorCode> {
        let mut nonce = [0u8; 32];
        getrandom::getrandom(&mut nonce).map_err(|_| ErrorCode::INTERNAL)?;
        Ok(Challenge {
            nonce,
            relay_id: self.relay_id,
            timestamp_ms: now_ms(),
        })
    }

    /// Issues a stateless challenge for HTTP authentication to a client at `addr` (an
    /// address key), within the per-address and total rates (`RATE_LIMITED`).
    pub(crate) fn issue_http_challenge(&self, addr: IpAddr) -> Result<Challenge, ErrorCode> {
        let l = &self.config.limits;
        let g = &self.guards;
        let allowed = charge_keyed(&g.challenge_addr, &addr, 1, l.max_tracked_addrs)
            .and_then(|()| charge_direct(&g.challenge_total, 1));
        if let Err(code) = allowed {
            crate::metrics::inc(&self.metrics.challenges_refused_total, 1);
            return Err(code);
        }
        let timestamp_ms = now_ms();
        let mut nonce = [0u8; 32];
        nonce[..8].copy_from_slice(&timestamp_ms.to_be_bytes());
        getrandom::getrandom(&mut nonce[8..16]).map_err(|_| ErrorCode::INTERNAL)?;
        let tag = g.tag(&self.relay_id, &nonce[..16])?.finalize().into_bytes();
        nonce[16..].copy_from_slice(&tag[..16]);
        Ok(Challenge {
            nonce,
            relay_id: self.relay_id,
            timestamp_ms,
        })
    }

    /// Checks an answer to an HTTP challenge: a nonce this process made (its tag verifies,
    /// in constant time), fresh, not used before, signed by the device's current DSK over
    /// the auth message whose nonce is `binding` (the challenge nonce bound to the
    /// request's method, path and body, [`sotto_proto::http_auth_binding`]). A verified
    /// nonce is remembered as used until it expires.
    pub(crate) async fn verify_http_auth(&self, resp: &AuthResponse, binding: &[u8; 32]) -> Result<(), ErrorCode> {
        let g = &self.guards;
        g.tag(&self.relay_id, &resp.nonce[..16])?
            .verify_truncated_left(&resp.nonce[16..])
            .map_err(|_| ErrorCode::CHALLENGE_UNKNOWN)?;
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&resp.nonce[..8]);
        let challenge = Challenge {
            nonce: resp.nonce,
            relay_id: self.relay_id,
            timestamp_ms: u64::from_be_bytes(ts),
        };
        if lock(&g.used).contains_key(&resp.nonce) {
            return Err(ErrorCode::CHALLENGE_UNKNOWN);
        }
        let _ = self.verify_auth(&challenge, resp, Some(binding)).await?;
        if self.cluster.is_some() {
            // Answered once across the cluster: the nodes share the used nonces.
            return match self.store.use_challenge(&resp.nonce, challenge.timestamp_ms).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(ErrorCode::CHALLENGE_UNKNOWN),
                Err(e) => Err(crate::error::code_of(&e)),
            };
        }
        let ttl_ms = self.config.limits.challenge_ttl_secs.saturating_mul(1000);
        let mut used = lock(&g.used);
        if used.len() >= self.config.limits.max_pending_challenges {
            let now = now_ms();
            used.retain(|_, issued| now.saturating_sub(*issued) <= ttl_ms);
            if used.len() >= self.config.limits.max_pending_challenges {
                return Err(ErrorCode::BUSY);
            }
        }
        if used.insert(resp.nonce, challenge.timestamp_ms).is_some() {
            return Err(ErrorCode::CHALLENGE_UNKNOWN);
        }
        Ok(())
    }

    /// The epoch of a mailbox whose device row has `registration`:
    /// `SHA-256("Sotto-v1 mailbox epoch" ‖ boot (32) ‖ registration (16))[..16]`.
    pub(crate) fn mailbox_epoch(&self, registration: &[u8; 16]) -> [u8; 16] {
        use sha2::Digest;
        let mut h = Sha256::new();
        h.update(b"Sotto-v1 mailbox epoch");
        h.update(&self.boot[..]);
        h.update(registration);
        let d = h.finalize();
        let mut e = [0u8; 16];
        e.copy_from_slice(&d[..16]);
        e
    }

    /// Charges a bundle request by `requester` for `target`'s devices: `RATE_LIMITED`
    /// when the requester's rate is spent. Returns whether the request may take one-time
    /// prekeys: false once `target`'s one-time rate is spent (the bundles then carry the
    /// last-resort key and no one-time prekey), so a drain from any number of requesters
    /// takes at most that many one-time prekeys per device.
    pub(crate) fn charge_bundle(&self, requester: &AccountId, target: &AccountId) -> Result<bool, ErrorCode> {
        let cap = self.config.limits.max_tracked_addrs;
        let g = &self.guards;
        if let Err(code) = charge_keyed(&g.bundle_requester, requester, 1, cap) {
            crate::metrics::inc(&self.metrics.bundles_refused_total, 1);
            return Err(code);
        }
        match charge_keyed(&g.bundle_target, target, 1, cap) {
            Ok(()) => Ok(true),
            Err(ErrorCode::BUSY) => Err(ErrorCode::BUSY),
            Err(_) => {
                crate::metrics::inc(&self.metrics.bundles_without_one_time_total, 1);
                Ok(false)
            }
        }
    }

    /// Charges an account registration from `addr`, per address and in total
    /// (`RATE_LIMITED`).
    pub(crate) fn charge_registration(&self, addr: IpAddr) -> Result<(), ErrorCode> {
        let cap = self.config.limits.max_tracked_addrs;
        let g = &self.guards;
        let r = charge_keyed(&g.register_addr, &addr, 1, cap).and_then(|()| charge_direct(&g.register_total, 1));
        if r.is_err() {
            crate::metrics::inc(&self.metrics.registrations_refused_total, 1);
        }
        r
    }

    /// A device-list update of `account` (`RATE_LIMITED` beyond
    /// `list_updates_per_minute_per_account`): with it, a list key being revoked can push
    /// the version by at most 1024 × that rate, far below what a new epoch steps over,
    /// and one account cannot keep the relay verifying lists.
    pub(crate) fn charge_list_update(&self, account: &AccountId) -> Result<(), ErrorCode> {
        let cap = self.config.limits.max_tracked_addrs;
        charge_keyed(&self.guards.list_updates, account, 1, cap)
    }

    /// A profile upload of `account` (`RATE_LIMITED` beyond
    /// `profile_updates_per_minute_per_account`): each one rewrites the account's row.
    pub(crate) fn charge_profile_update(&self, account: &AccountId) -> Result<(), ErrorCode> {
        let cap = self.config.limits.max_tracked_addrs;
        charge_keyed(&self.guards.profile_updates, account, 1, cap)
    }

    /// Charges an unauthenticated profile fetch from `addr` (an address key), per address
    /// and in total (`RATE_LIMITED`), before anything reads the database.
    pub(crate) fn charge_profile_fetch(&self, addr: IpAddr) -> Result<(), ErrorCode> {
        let cap = self.config.limits.max_tracked_addrs;
        let g = &self.guards;
        let r =
            charge_keyed(&g.profile_fetch_addr, &addr, 1, cap).and_then(|()| charge_direct(&g.profile_fetch_total, 1));
        if r.is_err() {
            crate::metrics::inc(&self.metrics.profile_fetches_refused_total, 1);
        }
        r
    }

    /// A connection's own rate limiter.
    pub(crate) fn conn_rate(&self) -> ConnRate {
        let l = &self.config.limits;
        ConnRate {
            envelopes: RateLimiter::direct(quota(l.rate_per_second, l.rate_burst)),
            bytes: RateLimiter::direct(quota(l.rate_bytes_per_second, l.rate_bytes_burst)),
        }
    }

    /// Charges `envelopes` and `bytes` to the connection's buckets and to its address's
    /// (shared by all its connections, anonymous included).
    pub(crate) fn charge(
        &self,
        rate: &ConnRate,
        addr: IpAddr,
        envelopes: usize,
        bytes: usize,
    ) -> Result<(), ErrorCode> {
        let cap = self.config.limits.max_tracked_addrs;
        let g = &self.guards;
        charge_direct(&rate.envelopes, envelopes)?;
        charge_direct(&rate.bytes, bytes)?;
        charge_keyed(&g.addr_envelopes, &addr, envelopes, cap)?;
        charge_keyed(&g.addr_bytes, &addr, bytes, cap)
    }

    /// Checks an answer to `challenge`: fresh, and signed by the device's current DSK (over
    /// the challenge's nonce, or over `binding` in its place for an HTTP request).
    pub(crate) async fn verify_auth(
        &self,
        challenge: &Challenge,
        resp: &AuthResponse,
        binding: Option<&[u8; 32]>,
    ) -> Result<crate::storage::DeviceKeys, ErrorCode> {
        let age = now_ms().saturating_sub(challenge.timestamp_ms);
        if age > self.config.limits.challenge_ttl_secs.saturating_mul(1000) {
            return Err(ErrorCode::CHALLENGE_EXPIRED);
        }
        if resp.nonce != challenge.nonce {
            return Err(ErrorCode::CHALLENGE_UNKNOWN);
        }
        let keys = self
            .store
            .device_keys(&resp.account_id, resp.device_id)
            .await
            .map_err(|e| crate::error::code_of(&e))?
            .ok_or(ErrorCode::AUTH_FAILED)?;
        match binding {
            None => verify_signature(&keys.signing_key, challenge, resp)?,
            Some(bound) => {
                let signed = Challenge {
                    nonce: *bound,
                    ..challenge.clone()
                };
                verify_signature(&keys.signing_key, &signed, resp)?;
            }
        }
        Ok(keys)
    }
}

fn verify_signature(dsk: &Ed25519PublicKey, challenge: &Challenge, resp: &AuthResponse) -> Result<(), ErrorCode> {
    let msg = challenge.signed_message(&resp.account_id, resp.device_id);
    dsk.verify(&msg, &resp.signature).map_err(|_| ErrorCode::AUTH_FAILED)
}

/// Resolves once shutdown has begun (or the state is gone).
pub(crate) async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub(crate) fn now_s() -> u64 {
    now_ms() / 1000
}

/// Locks a mutex, recovering from poisoning (the maps stay consistent at every step).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a connection task listens to.
#[derive(Debug)]
pub(crate) struct ConnSignals {
    /// "Your mailbox has new envelopes": coalesced.
    pub(crate) mailbox: Notify,
    /// "Another connection authenticated as your device", or, with `removed` set, "your
    /// device left its account's device list (or was re-keyed)".
    pub(crate) replaced: Notify,
    pub(crate) removed: std::sync::atomic::AtomicBool,
    /// "Ephemeral payloads are queued."
    pub(crate) ephemeral: Notify,
    /// Queued ephemeral payloads, at most `ephemeral_cap`. A `VecDeque` allocates nothing
    /// until a payload arrives, so an idle connection pays no queue memory.
    ephemeral_queue: Mutex<Queued<Vec<u8>>>,
    ephemeral_cap: usize,
    /// Envelopes just committed for this device, handed over by the writer.
    pub(crate) live: Mutex<Live>,
    live_cap: usize,
}

/// Bytes one queued item is charged beyond its payload (the item's own bookkeeping).
const ITEM_OVERHEAD: usize = 64;

/// A queue whose items' bytes are held from a relay-wide [`Budget`] until taken out.
#[derive(Debug)]
pub(crate) struct Queued<T> {
    items: VecDeque<(T, usize)>,
    budget: Arc<Budget>,
}

impl<T> Queued<T> {
    fn new(budget: Arc<Budget>) -> Self {
        Self {
            items: VecDeque::new(),
            budget,
        }
    }

    /// Queues `item` charged `bytes`, or gives it back when the budget is spent.
    fn push(&mut self, item: T, bytes: usize) -> Result<(), T> {
        let bytes = bytes.saturating_add(ITEM_OVERHEAD);
        if !self.budget.take(bytes) {
            return Err(item);
        }
        self.items.push_back((item, bytes));
        Ok(())
    }

    pub(crate) fn front(&self) -> Option<&T> {
        self.items.front().map(|(t, _)| t)
    }

    pub(crate) fn pop_front(&mut self) -> Option<T> {
        let (item, bytes) = self.items.pop_front()?;
        self.budget.give(bytes);
        Some(item)
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Keeps the items `keep` returns true for.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let budget = &self.budget;
        self.items.retain(|(t, bytes)| {
            let k = keep(t);
            if !k {
                budget.give(*bytes);
            }
            k
        });
    }
}

impl<T> Drop for Queued<T> {
    fn drop(&mut self) {
        let bytes: usize = self.items.iter().map(|(_, b)| *b).sum();
        self.budget.give(bytes);
    }
}

/// Envelopes committed for a connected device, in seq order, at most `live_cap` and
/// within the relay's live-queue byte budget: the connection delivers them without
/// reading the database. When one does not fit, `overflow` tells the connection to read
/// the database instead.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) queue: Queued<LiveEnvelope>,
    pub(crate) overflow: bool,
}

/// A send's shared body, held once for every live delivery of that send on this node.
/// Its bytes are charged to the live-queue budget once, from [`Hub::share_body`] until
/// the last queued envelope that holds it is delivered or dropped.
#[derive(Debug)]
pub(crate) struct SharedBody {
    bytes: Vec<u8>,
    _held: Held,
}

/// A committed envelope queued for live delivery: `head ‖ body`, the body shared.
#[derive(Debug)]
pub(crate) struct LiveEnvelope {
    pub(crate) seq: u64,
    pub(crate) received_at_s: u64,
    pub(crate) head: Vec<u8>,
    pub(crate) body: Option<Arc<SharedBody>>,
}

impl LiveEnvelope {
    /// The delivery: the envelope assembled as `head ‖ body`.
    pub(crate) fn into_deliver(self) -> Deliver {
        let mut envelope = self.head;
        if let Some(body) = &self.body {
            envelope.extend_from_slice(&body.bytes);
        }
        Deliver {
            seq: self.seq,
            received_at_s: self.received_at_s,
            envelope,
        }
    }
}

impl ConnSignals {
    /// Takes the next queued ephemeral payload.
    pub(crate) fn next_ephemeral(&self) -> Option<Vec<u8>> {
        lock(&self.ephemeral_queue).pop_front()
    }
}

#[derive(Debug)]
struct ConnEntry {
    id: u64,
    signals: Arc<ConnSignals>,
    /// The device's notification-extension process, not its app.
    extension: bool,
    /// When it registered (ms since the Unix epoch): of two connections of a device on
    /// two nodes, the later one stays.
    since_ms: u64,
}

/// What [`Hub::push_live`] did with a committed envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LiveOutcome {
    /// Queued for the device's connection.
    Queued,
    /// The device is connected but the envelope did not fit: it reads its mailbox.
    Overflow,
    /// The device has no connection on this node: the envelope waits (and may push).
    NotConnected,
}

/// The devices connected to this relay node.
#[derive(Debug)]
pub(crate) struct Hub {
    next_id: AtomicU64,
    conns: Mutex<BTreeMap<(AccountId, DeviceId), ConnEntry>>,
    /// Bytes in all live delivery queues.
    pub(crate) live_budget: Arc<Budget>,
    /// Bytes in all ephemeral queues.
    pub(crate) ephemeral_budget: Arc<Budget>,
    /// The cluster this node is part of (cluster mode).
    pub(crate) cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// A connection's place in the hub; leaves it on drop.
#[derive(Debug)]
pub(crate) struct Registration<'a> {
    hub: &'a Hub,
    key: (AccountId, DeviceId),
    id: u64,
    pub(crate) signals: Arc<ConnSignals>,
}

impl Hub {
    pub(crate) fn new(l: &crate::config::Limits, cluster: Option<Arc<crate::cluster::Cluster>>) -> Self {
        Self {
            next_id: AtomicU64::new(0),
            conns: Mutex::new(BTreeMap::new()),
            live_budget: Budget::new(l.max_live_queue_bytes),
            ephemeral_budget: Budget::new(l.max_ephemeral_queue_bytes),
            cluster,
        }
    }

    /// Registers a connection for a device, replacing (and signalling) an older one; for
    /// a notification extension (`extension`), `None` while the device's app connection
    /// is open (that one is never replaced by an extension). `queue` bounds its
    /// ephemeral queue and `live` its queue of committed envelopes.
    pub(crate) fn register(
        &self,
        account: AccountId,
        device: DeviceId,
        extension: bool,
        queue: usize,
        live: usize,
    ) -> Option<Registration<'_>> {
        let mut conns = lock(&self.conns);
        if extension && conns.get(&(account, device)).is_some_and(|e| !e.extension) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Strictly later than the connection it replaces, also within one millisecond.
        let since_ms = conns
            .get(&(account, device))
            .map_or(0, |e| e.since_ms.saturating_add(1))
            .max(now_ms());
        let signals = Arc::new(ConnSignals {
            mailbox: Notify::new(),
            replaced: Notify::new(),
            removed: std::sync::atomic::AtomicBool::new(false),
            ephemeral: Notify::new(),
            ephemeral_queue: Mutex::new(Queued::new(self.ephemeral_budget.clone())),
            ephemeral_cap: queue.max(1),
            live: Mutex::new(Live {
                queue: Queued::new(self.live_budget.clone()),
                overflow: false,
            }),
            live_cap: live.max(1),
        });
        let old = conns.insert(
            (account, device),
            ConnEntry {
                id,
                signals: signals.clone(),
                extension,
                since_ms,
            },
        );
        drop(conns);
        if let Some(old) = old {
            old.signals.replaced.notify_one();
        }
        if let Some(c) = &self.cluster {
            c.publish(sotto_proto::BusNotice::Present(vec![sotto_proto::Presence {
                account,
                device,
                since_ms,
                extension,
            }]));
        }
        Some(Registration {
            hub: self,
            key: (account, device),
            id,
            signals,
        })
    }

    /// Closes the device's connection, wherever it is: the device left its account's
    /// device list or was re-keyed, so what it authenticated as no longer exists.
    pub(crate) fn evict(&self, account: &AccountId, device: DeviceId) {
        self.evict_local(account, device);
        if let Some(c) = &self.cluster {
            c.publish(sotto_proto::BusNotice::Evict {
                account: *account,
                device,
            });
        }
    }

    /// Closes the device's connection if it has one on this node.
    pub(crate) fn evict_local(&self, account: &AccountId, device: DeviceId) {
        if let Some(e) = lock(&self.conns).get(&(*account, device)) {
            e.signals.removed.store(true, Ordering::Relaxed);
            e.signals.replaced.notify_one();
        }
    }

    /// Another node has a connection of the device that registered later than this
    /// node's: this one closes as replaced (an extension never replaces an app).
    pub(crate) fn replaced_elsewhere(&self, p: &sotto_proto::Presence) {
        if let Some(e) = lock(&self.conns).get(&(p.account, p.device))
            && e.since_ms < p.since_ms
            && (!p.extension || e.extension)
        {
            e.signals.replaced.notify_one();
        }
    }

    /// Tells the device's connection on this node, if any, to read its mailbox (another
    /// node stored envelopes for it). Whether it is connected here.
    pub(crate) fn wake(&self, account: &AccountId, device: DeviceId) -> bool {
        let conns = lock(&self.conns);
        let Some(e) = conns.get(&(*account, device)) else {
            return false;
        };
        lock(&e.signals.live).overflow = true;
        e.signals.mailbox.notify_one();
        true
    }

    /// Tells every connection on this node to read its mailbox.
    pub(crate) fn wake_all(&self) {
        for e in lock(&self.conns).values() {
            lock(&e.signals.live).overflow = true;
            e.signals.mailbox.notify_one();
        }
    }

    /// The connections on this node, as presence notices name them.
    pub(crate) fn snapshot(&self) -> Vec<sotto_proto::Presence> {
        lock(&self.conns)
            .iter()
            .map(|((account, device), e)| sotto_proto::Presence {
                account: *account,
                device: *device,
                since_ms: e.since_ms,
                extension: e.extension,
            })
            .collect()
    }

    /// Whether the device is connected to this node or, as far as it knows, another.
    pub(crate) fn connected_anywhere(&self, account: &AccountId, device: DeviceId) -> bool {
        self.is_connected(account, device)
            || self
                .cluster
                .as_ref()
                .is_some_and(|c| c.is_up() && c.present_elsewhere(account, device))
    }

    /// Holds a send's shared body for its live deliveries, charging its bytes to the
    /// live-queue budget once: `Ok(None)` for an empty body, `Err(())` when the budget is
    /// spent (then the recipients read their mailboxes instead, see [`Hub::push_live`]).
    pub(crate) fn share_body(&self, bytes: Vec<u8>) -> Result<Option<Arc<SharedBody>>, ()> {
        if bytes.is_empty() {
            return Ok(None);
        }
        let held = self.live_budget.hold(bytes.len()).ok_or(())?;
        Ok(Some(Arc::new(SharedBody { bytes, _held: held })))
    }

    /// Hands a committed envelope to the device's connection, if it has one here, and
    /// wakes it; `None` when its shared body could not be held. Its head is charged to
    /// the live-queue budget (the body was charged once by [`Hub::share_body`]).
    /// [`LiveOutcome::Overflow`] when the envelope did not fit (the queue is full, or the
    /// relay's live-queue budget spent): the connection reads its mailbox instead;
    /// [`LiveOutcome::NotConnected`] when the device has no connection here.
    pub(crate) fn push_live(
        &self,
        account: &AccountId,
        device: DeviceId,
        envelope: Option<LiveEnvelope>,
    ) -> LiveOutcome {
        let conns = lock(&self.conns);
        let Some(e) = conns.get(&(*account, device)) else {
            return LiveOutcome::NotConnected;
        };
        let mut fit = true;
        {
            let mut live = lock(&e.signals.live);
            let queued = envelope.is_some_and(|env| {
                let bytes = env.head.len();
                live.queue.len() < e.signals.live_cap && live.queue.push(env, bytes).is_ok()
            });
            if !queued {
                live.overflow = true;
                fit = false;
            }
            drop(live);
            e.signals.mailbox.notify_one();
        }
        if fit {
            LiveOutcome::Queued
        } else {
            LiveOutcome::Overflow
        }
    }

    /// Whether the device has a connection on this node.
    pub(crate) fn is_connected(&self, account: &AccountId, device: DeviceId) -> bool {
        lock(&self.conns).contains_key(&(*account, device))
    }

    /// Queues an ephemeral payload for every connected device of `account` except
    /// `except`, on this node and (through the bus) the others. Returns what this node
    /// queued and dropped.
    pub(crate) fn ephemeral(&self, account: &AccountId, except: Option<DeviceId>, payload: &[u8]) -> (u64, u64) {
        if let Some(c) = &self.cluster {
            c.publish(sotto_proto::BusNotice::Ephemeral {
                account: *account,
                except,
                payload: payload.to_vec(),
            });
        }
        self.ephemeral_local(account, except, payload)
    }

    /// [`Hub::ephemeral`] on this node only.
    pub(crate) fn ephemeral_local(&self, account: &AccountId, except: Option<DeviceId>, payload: &[u8]) -> (u64, u64) {
        let conns = lock(&self.conns);
        let (mut sent, mut dropped) = (0, 0);
        for ((_, d), e) in conns.range((*account, DeviceId(0))..=(*account, DeviceId(u32::MAX))) {
            if Some(*d) == except {
                continue;
            }
            let mut q = lock(&e.signals.ephemeral_queue);
            if q.len() < e.signals.ephemeral_cap && q.push(payload.to_vec(), payload.len()).is_ok() {
                drop(q);
                e.signals.ephemeral.notify_one();
                sent += 1;
            } else {
                dropped += 1;
            }
        }
        (sent, dropped)
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut conns = lock(&self.hub.conns);
        if conns.get(&self.key).is_some_and(|e| e.id == self.id)
            && let Some(e) = conns.remove(&self.key)
            && let Some(c) = &self.hub.cluster
        {
            c.publish(sotto_proto::BusNotice::Absent(vec![(
                self.key.0, self.key.1, e.since_ms,
            )]));
        }
    }
}
