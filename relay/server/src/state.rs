//! Shared relay state: configuration, store, outstanding challenges, the registry of
//! connected devices, metrics and the shutdown signal.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

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
    pub(crate) challenges: Mutex<HashMap<[u8; 32], u64>>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) writer: Writer,
    pub(crate) connections: Arc<Semaphore>,
    shutdown_tx: watch::Sender<bool>,
}

impl AppState {
    /// The state for `config` over `store`, with its group-commit writer (a thread with
    /// its own connection to the same database).
    pub fn new(config: Config, store: Store) -> Arc<Self> {
        let relay_id = sotto_proto::relay_id(&config.public_url);
        let connections = Arc::new(Semaphore::new(config.limits.max_connections));
        let (shutdown_tx, _) = watch::channel(false);
        let metrics = Arc::new(Metrics::default());
        let hub = Arc::new(Hub::default());
        let writer = Writer::spawn(&store, hub.clone(), metrics.clone());
        Arc::new(Self {
            config,
            store,
            relay_id,
            metrics,
            challenges: Mutex::new(HashMap::new()),
            hub,
            writer,
            connections,
            shutdown_tx,
        })
    }

    /// Tells every connection to close and new ones to go away.
    pub fn begin_shutdown(&self) {
        self.shutdown_tx.send_replace(true);
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

    /// Issues a challenge for HTTP authentication and remembers it until it is used or
    /// expires.
    pub(crate) fn issue_http_challenge(&self) -> Result<Challenge, ErrorCode> {
        let c = self.new_challenge()?;
        let ttl_ms = self.config.limits.challenge_ttl_secs.saturating_mul(1000);
        let mut map = lock(&self.challenges);
        if map.len() >= self.config.limits.max_pending_challenges {
            let now = c.timestamp_ms;
            map.retain(|_, issued| now.saturating_sub(*issued) <= ttl_ms);
            if map.len() >= self.config.limits.max_pending_challenges {
                return Err(ErrorCode::BUSY);
            }
        }
        map.insert(c.nonce, c.timestamp_ms);
        Ok(c)
    }

    /// Consumes an HTTP challenge (each nonce answers once) and checks the response.
    pub(crate) async fn verify_http_auth(&self, resp: &AuthResponse) -> Result<(), ErrorCode> {
        let issued = lock(&self.challenges)
            .remove(&resp.nonce)
            .ok_or(ErrorCode::CHALLENGE_UNKNOWN)?;
        let challenge = Challenge {
            nonce: resp.nonce,
            relay_id: self.relay_id,
            timestamp_ms: issued,
        };
        self.verify_auth(&challenge, resp).await
    }

    /// Checks an answer to `challenge`: fresh, and signed by the device's current DSK.
    pub(crate) async fn verify_auth(&self, challenge: &Challenge, resp: &AuthResponse) -> Result<(), ErrorCode> {
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
        verify_signature(&keys.signing_key, challenge, resp)
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
    ephemeral_queue: Mutex<VecDeque<Vec<u8>>>,
    ephemeral_cap: usize,
    /// Envelopes just committed for this device, handed over by the writer.
    pub(crate) live: Mutex<Live>,
    live_cap: usize,
}

/// Envelopes committed for a connected device, in seq order, at most `live_cap`: the
/// connection delivers them without reading the database. When one does not fit,
/// `overflow` tells the connection to read the database instead.
#[derive(Debug, Default)]
pub(crate) struct Live {
    pub(crate) queue: VecDeque<Deliver>,
    pub(crate) overflow: bool,
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
}

/// The devices connected to this relay node.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    next_id: AtomicU64,
    conns: Mutex<BTreeMap<(AccountId, DeviceId), ConnEntry>>,
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
    /// Registers a connection for a device, replacing (and signalling) an older one.
    /// `queue` bounds its ephemeral queue and `live` its queue of committed envelopes.
    pub(crate) fn register(&self, account: AccountId, device: DeviceId, queue: usize, live: usize) -> Registration<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let signals = Arc::new(ConnSignals {
            mailbox: Notify::new(),
            replaced: Notify::new(),
            removed: std::sync::atomic::AtomicBool::new(false),
            ephemeral: Notify::new(),
            ephemeral_queue: Mutex::new(VecDeque::new()),
            ephemeral_cap: queue.max(1),
            live: Mutex::new(Live::default()),
            live_cap: live.max(1),
        });
        let old = lock(&self.conns).insert(
            (account, device),
            ConnEntry {
                id,
                signals: signals.clone(),
            },
        );
        if let Some(old) = old {
            old.signals.replaced.notify_one();
        }
        Registration {
            hub: self,
            key: (account, device),
            id,
            signals,
        }
    }

    /// Closes the device's connection, if it has one here: the device left its account's
    /// device list or was re-keyed, so what it authenticated as no longer exists.
    pub(crate) fn evict(&self, account: &AccountId, device: DeviceId) {
        if let Some(e) = lock(&self.conns).get(&(*account, device)) {
            e.signals.removed.store(true, Ordering::Relaxed);
            e.signals.replaced.notify_one();
        }
    }

    /// Hands a committed envelope to the device's connection, if it has one here, and
    /// wakes it.
    pub(crate) fn push_live(&self, account: &AccountId, device: DeviceId, deliver: Deliver) {
        let conns = lock(&self.conns);
        if let Some(e) = conns.get(&(*account, device)) {
            let mut live = lock(&e.signals.live);
            if live.queue.len() < e.signals.live_cap {
                live.queue.push_back(deliver);
            } else {
                live.overflow = true;
            }
            drop(live);
            e.signals.mailbox.notify_one();
        }
    }

    /// Queues an ephemeral payload for every connected device of `account` except
    /// `except`. Returns (queued, dropped).
    pub(crate) fn ephemeral(&self, account: &AccountId, except: Option<DeviceId>, payload: &[u8]) -> (u64, u64) {
        let conns = lock(&self.conns);
        let (mut sent, mut dropped) = (0, 0);
        for ((_, d), e) in conns.range((*account, DeviceId(0))..=(*account, DeviceId(u32::MAX))) {
            if Some(*d) == except {
                continue;
            }
            let mut q = lock(&e.signals.ephemeral_queue);
            if q.len() < e.signals.ephemeral_cap {
                q.push_back(payload.to_vec());
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
        if conns.get(&self.key).is_some_and(|e| e.id == self.id) {
            conns.remove(&self.key);
        }
    }
}
