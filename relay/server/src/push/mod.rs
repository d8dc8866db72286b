//! Push triggers: a content-free wake-up through APNs, FCM or Web Push for a device that
//! has an envelope waiting and no connection (docs/protocol.md §13.13).
//!
//! ```text
//! writer commits an envelope for (account, device)
//!   └─ device connected on this node?  yes → live delivery, no push
//!        no → Pusher::trigger: per-device slot, at most one push in flight and one per
//!             min_interval_secs; otherwise the trigger is coalesced
//!             └─ bounded queue (full → dropped) → worker task
//!                  └─ registration from storage → provider → retries → sent | gone | failed
//! ```
//! Ephemeral frames never reach the writer, so they never trigger a push.
//!
//! **Coalescing.** A trigger while the device's push is in flight, or within
//! `min_interval_secs` after it, sends nothing at once and counts as coalesced; the first
//! such trigger marks the device pending, and when the interval ends one more push is sent
//! if the device is still pending: a device that connected in between is no longer
//! pending. So a burst of any size gives one push, and at most one more per interval while
//! envelopes keep arriving for a device that does not connect.
//!
//! **Bounds.** The per-device slots are at most `max_tracked_devices`; slots with nothing
//! in flight, nothing pending and an ended interval are forgotten when the table fills
//! (one sweep a second at most), and while it is still full new triggers are dropped
//! (`push_dropped_total`, provider `unknown`). The queue to the worker holds `queue` jobs;
//! a trigger that does not fit is dropped likewise. At most `max_concurrent` pushes are sent at once.
//!
//! **What a push carries.** Nothing about the sender, the conversation or the content:
//! APNs gets `{"aps":{"alert":{"loc-key":"SOTTO_NEW_MESSAGE"},"mutable-content":1}}`, FCM a
//! data message `{"sotto":"1"}`, Web Push the encrypted constant `{"sotto":1}`. The
//! device then connects and fetches its mailbox.

mod apns;
mod fcm;
mod jwt;
mod webpush;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sotto_crypto::{AccountId, DeviceId};
use sotto_proto::{PushProvider, PushRegistration};
use thiserror::Error;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

pub use webpush::{Subscription, SubscriptionError};

use crate::config::ConfigError;
use crate::metrics::{Metrics, inc};
use crate::state::Hub;
use crate::storage::{Storage, Store};

/// The `[push]` section of the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// At most one push per device per this many seconds; triggers in between are
    /// coalesced (see the module docs).
    pub min_interval_secs: u64,
    /// Jobs queued for the push worker; a trigger that does not fit is dropped.
    pub queue: usize,
    /// Devices whose push state (in flight, pending, interval) is tracked at once.
    pub max_tracked_devices: usize,
    /// Requests to providers at once (the waits between retries take none).
    pub max_concurrent: usize,
    /// Attempts per push, the first included, on provider 5xx, 429 or network errors.
    pub max_attempts: u32,
    /// The first retry waits about this long (doubling each time, with jitter), unless the
    /// provider's `Retry-After` says otherwise. Milliseconds.
    pub retry_base_ms: u64,
    /// No retry waits longer than this (a longer `Retry-After` included). Milliseconds.
    pub retry_max_ms: u64,
    /// Time for one request to a provider, connecting included. Milliseconds.
    pub timeout_ms: u64,
    /// Extra PEM CA certificates trusted for provider connections, besides the public
    /// web PKI roots (for a private gateway, or tests).
    pub extra_root_certs: Vec<PathBuf>,
    /// Apple Push Notification service.
    pub apns: Option<ApnsConfig>,
    /// Firebase Cloud Messaging (HTTP v1 API).
    pub fcm: Option<FcmConfig>,
    /// Web Push (RFC 8030, RFC 8291, RFC 8292), also used for UnifiedPush.
    pub webpush: Option<WebPushConfig>,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            min_interval_secs: 10,
            queue: 4096,
            max_tracked_devices: 100_000,
            max_concurrent: 64,
            max_attempts: 4,
            retry_base_ms: 1_000,
            retry_max_ms: 60_000,
            timeout_ms: 10_000,
            extra_root_certs: Vec::new(),
            apns: None,
            fcm: None,
            webpush: None,
        }
    }
}

impl PushConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let checks = [
            (self.queue >= 1, "push.queue", "must be at least 1"),
            (
                self.max_tracked_devices >= 1,
                "push.max_tracked_devices",
                "must be at least 1",
            ),
            (self.max_concurrent >= 1, "push.max_concurrent", "must be at least 1"),
            (
                (1..=16).contains(&self.max_attempts),
                "push.max_attempts",
                "must be 1..=16",
            ),
            (self.timeout_ms >= 1, "push.timeout_ms", "must be at least 1"),
            (
                self.retry_max_ms >= self.retry_base_ms,
                "push.retry_max_ms",
                "must be at least retry_base_ms",
            ),
            (
                self.webpush
                    .as_ref()
                    .is_none_or(|w| w.subject.starts_with("mailto:") || w.subject.starts_with("https://")),
                "push.webpush.subject",
                "must be a mailto: or https: URI",
            ),
        ];
        for (ok, field, reason) in checks {
            if !ok {
                return Err(ConfigError::Invalid { field, reason });
            }
        }
        Ok(())
    }
}

/// `[push.apns]`: token-based authentication with a `.p8` key.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    /// The `.p8` key file from Apple (PKCS#8 PEM, P-256).
    pub key_file: PathBuf,
    /// The key's 10-character Key ID.
    pub key_id: String,
    /// The 10-character Team ID.
    pub team_id: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// Use Apple's development environment (`api.sandbox.push.apple.com`).
    #[serde(default)]
    pub sandbox: bool,
    /// Overrides the endpoint (`https://host[:port]`), for a gateway or tests.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `apns-expiration`: Apple keeps an undeliverable push this many seconds.
    #[serde(default = "default_ttl")]
    pub expiration_secs: u64,
}

/// `[push.fcm]`: the HTTP v1 API with a service account.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    /// The service account JSON key file from the Firebase console.
    pub service_account_file: PathBuf,
    /// Overrides the endpoint (default `https://fcm.googleapis.com`), for tests.
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// `[push.webpush]`: VAPID identification.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebPushConfig {
    /// The VAPID private key (PKCS#8 PEM, P-256).
    pub vapid_private_key_file: PathBuf,
    /// The VAPID `sub` claim: `mailto:admin@example.org` or an `https:` URL.
    pub subject: String,
    /// `TTL`: the push service keeps an undeliverable push this many seconds.
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
    /// Also send to endpoints on loopback, private and other non-public addresses. Only
    /// for tests: an endpoint is chosen by the client.
    #[serde(default)]
    pub allow_insecure_endpoints: bool,
}

fn default_ttl() -> u64 {
    86_400
}

/// Why push could not start, or a push could not be made.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PushError {
    /// A key or credentials file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key is not a PKCS#8 PEM key of the expected kind.
    #[error("{what} is not a valid PKCS#8 PEM key of the expected kind")]
    Key {
        /// Which key.
        what: &'static str,
    },
    /// The FCM service account file is not the JSON the Firebase console issues.
    #[error("the FCM service account file is not valid")]
    ServiceAccount,
    /// A CA certificate in `push.extra_root_certs` did not load.
    #[error("cannot load the CA certificate {path}")]
    RootCert {
        /// The file.
        path: PathBuf,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client")]
    Client,
    /// A JWT could not be signed.
    #[error("cannot sign a token")]
    Sign,
}

/// The metrics label of a provider; `unknown` before the registration was read.
pub(crate) fn label(p: Option<PushProvider>) -> crate::metrics::ProviderLabel {
    use crate::metrics::ProviderLabel as L;
    match p {
        Some(PushProvider::Apns) => L::Apns,
        Some(PushProvider::Fcm) => L::Fcm,
        Some(PushProvider::WebPush) => L::WebPush,
        Some(PushProvider::UnifiedPush) => L::UnifiedPush,
        Some(PushProvider::Webhook) => L::Webhook,
        _ => L::Unknown,
    }
}

/// Checks a registration before it is stored: `Err` is answered `MALFORMED`. APNs
/// tokens are the device token's bytes (1..=100), FCM tokens printable ASCII, Web Push
/// and UnifiedPush tokens a subscription ([`Subscription::parse`]); webhook URLs are
/// stored but never used.
pub fn check_registration(reg: &PushRegistration) -> Result<(), SubscriptionError> {
    match reg.provider {
        PushProvider::Apns if (1..=100).contains(&reg.token.len()) => Ok(()),
        PushProvider::Fcm if !reg.token.is_empty() && reg.token.iter().all(u8::is_ascii_graphic) => Ok(()),
        PushProvider::WebPush | PushProvider::UnifiedPush => Subscription::parse(&reg.token).map(|_| ()),
        PushProvider::Webhook => Ok(()),
        _ => Err(SubscriptionError::Token),
    }
}

/// What one attempt at a push came to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The provider accepted it.
    Sent,
    /// The provider says the registration is gone: delete it.
    Gone,
    /// Try again, after this long if the provider said.
    Retry(Option<Duration>),
    /// Give up (another 4xx, or an endpoint that is not allowed).
    Failed,
}

/// `Retry-After` in seconds (the HTTP-date form is not used by these providers).
pub(crate) fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// A 429 or 5xx: retry.
pub(crate) fn retryable(status: reqwest::StatusCode) -> bool {
    status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// Reads at most `cap` bytes of a response body (errors and overflow give what was read).
pub(crate) async fn body_capped(mut resp: reqwest::Response, cap: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        if out.len() + chunk.len() > cap {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    out
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    crate::state::now_s()
}

/// An HTTP client for the providers: HTTPS only, no redirects, the configured timeouts,
/// the web PKI roots and the extra ones; with `public_only`, names resolve to public
/// addresses only.
pub(crate) fn client(cfg: &PushConfig, prior_h2: bool, public_only: bool) -> Result<reqwest::Client, PushError> {
    let timeout = Duration::from_millis(cfg.timeout_ms.max(1));
    let mut b = reqwest::Client::builder()
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("sotto-relay/", env!("CARGO_PKG_VERSION")))
        // Never through an environment proxy: it would resolve the (client-chosen) Web
        // Push host itself, past the public-address check.
        .no_proxy();
    if prior_h2 {
        b = b.http2_prior_knowledge();
    }
    if public_only {
        b = b.dns_resolver(Arc::new(webpush::PublicOnly));
    }
    for path in &cfg.extra_root_certs {
        let pem = std::fs::read(path).map_err(|source| PushError::Read {
            path: path.clone(),
            source,
        })?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| PushError::RootCert { path: path.clone() })?;
        if certs.is_empty() {
            return Err(PushError::RootCert { path: path.clone() });
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(|_| PushError::Client)
}

fn read(path: &PathBuf) -> Result<zeroize::Zeroizing<Vec<u8>>, PushError> {
    std::fs::read(path)
        .map(zeroize::Zeroizing::new)
        .map_err(|source| PushError::Read {
            path: path.clone(),
            source,
        })
}

/// The configured providers, loaded at start.
#[derive(Debug, Default)]
pub(crate) struct Providers {
    apns: Option<apns::Apns>,
    fcm: Option<fcm::Fcm>,
    webpush: Option<webpush::WebPush>,
}

/// Loads every configured provider's credentials, as the relay does at start, and
/// names the providers configured (`sotto-relay admin check-config`).
pub fn check(cfg: &PushConfig) -> Result<Vec<&'static str>, PushError> {
    let p = Providers::load(cfg)?;
    let mut names = Vec::new();
    if p.apns.is_some() {
        names.push("apns");
    }
    if p.fcm.is_some() {
        names.push("fcm");
    }
    if p.webpush.is_some() {
        names.push("webpush (and unifiedpush)");
    }
    Ok(names)
}

impl Providers {
    /// Loads every configured provider's keys and builds its client.
    pub(crate) fn load(cfg: &PushConfig) -> Result<Self, PushError> {
        Ok(Self {
            apns: cfg.apns.as_ref().map(|a| apns::Apns::load(cfg, a)).transpose()?,
            fcm: cfg.fcm.as_ref().map(|f| fcm::Fcm::load(cfg, f)).transpose()?,
            webpush: cfg
                .webpush
                .as_ref()
                .map(|w| webpush::WebPush::load(cfg, w))
                .transpose()?,
        })
    }

    /// One attempt; `None` when the provider is not configured.
    async fn send(&self, reg: &PushRegistration) -> Option<Outcome> {
        Some(match reg.provider {
            PushProvider::Apns => self.apns.as_ref()?.send(&reg.token).await,
            PushProvider::Fcm => self.fcm.as_ref()?.send(&reg.token).await,
            PushProvider::WebPush | PushProvider::UnifiedPush => self.webpush.as_ref()?.send(&reg.token).await,
            _ => return None,
        })
    }
}

type Key = (AccountId, DeviceId);

/// A device's push state.
#[derive(Debug)]
struct Slot {
    /// A push is queued or being sent.
    in_flight: bool,
    /// An envelope arrived since the last push started: one more is due when `until`
    /// passes, unless the device connects.
    pending: bool,
    /// The end of the interval after the last push.
    until: Instant,
    /// The device's provider, once the worker read its registration.
    provider: Option<PushProvider>,
    /// Triggers coalesced before the provider was known.
    held: u64,
}

impl Slot {
    fn idle(&self, now: Instant) -> bool {
        !self.in_flight && !self.pending && self.until <= now
    }
}

/// A job for the worker: push to the device now, or once `at` has passed if it is still
/// pending then.
#[derive(Debug)]
struct Job {
    key: Key,
    at: Option<Instant>,
}

/// The trigger side of push, shared by the writer and the connections; the worker runs
/// in [`run_worker`].
#[derive(Debug)]
pub(crate) struct Pusher {
    interval: Duration,
    cap: usize,
    slots: Mutex<HashMap<Key, Slot>>,
    /// When a full table may next be swept for idle slots (at most once a second, so a
    /// full table of busy devices costs each trigger no scan).
    next_sweep: Mutex<Instant>,
    tx: mpsc::Sender<Job>,
    rx: Mutex<Option<mpsc::Receiver<Job>>>,
    metrics: Arc<Metrics>,
    /// Push jobs finished so far.
    completed: watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Pusher {
    pub(crate) fn new(cfg: &PushConfig, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        Self {
            interval: Duration::from_secs(cfg.min_interval_secs),
            cap: cfg.max_tracked_devices.max(1),
            slots: Mutex::new(HashMap::new()),
            next_sweep: Mutex::new(Instant::now()),
            tx,
            rx: Mutex::new(Some(rx)),
            metrics,
            completed: watch::Sender::new(0),
        }
    }

    /// The number of push jobs finished so far (sent, failed, dropped or skipped).
    pub(crate) fn completions(&self) -> watch::Receiver<u64> {
        self.completed.subscribe()
    }

    fn coalesce(&self, slot: &mut Slot) {
        match slot.provider {
            Some(p) => self.metrics.push_coalesced_total.inc(label(Some(p)), 1),
            None => slot.held += 1,
        }
    }

    fn drop_one(&self, provider: Option<PushProvider>) {
        self.metrics.push_dropped_total.inc(label(provider), 1);
    }

    /// An envelope was stored for a device not connected here. Never blocks on I/O.
    pub(crate) fn trigger(&self, account: &AccountId, device: DeviceId) {
        let key = (*account, device);
        let now = Instant::now();
        inc(&self.metrics.push_triggers_total, 1);
        let mut slots = lock(&self.slots);
        if let Some(slot) = slots.get_mut(&key) {
            if slot.in_flight {
                slot.pending = true;
                self.coalesce(slot);
                return;
            }
            if slot.until > now {
                // Within the interval: one more push when it ends, unless the device
                // connects first.
                if !slot.pending {
                    if self
                        .tx
                        .try_send(Job {
                            key,
                            at: Some(slot.until),
                        })
                        .is_err()
                    {
                        self.drop_one(slot.provider);
                        return;
                    }
                    slot.pending = true;
                }
                self.coalesce(slot);
                return;
            }
        }
        if !slots.contains_key(&key) && slots.len() >= self.cap {
            let mut next = lock(&self.next_sweep);
            if now >= *next {
                slots.retain(|_, s| !s.idle(now));
                *next = now + Duration::from_secs(1);
            }
            drop(next);
            if slots.len() >= self.cap {
                self.drop_one(None);
                return;
            }
        }
        let provider = slots.get(&key).and_then(|s| s.provider);
        if self.tx.try_send(Job { key, at: None }).is_err() {
            self.drop_one(provider);
            return;
        }
        slots.insert(
            key,
            Slot {
                in_flight: true,
                pending: false,
                until: now,
                provider,
                held: 0,
            },
        );
    }

    /// The device connected: nothing is pending for it any more (a push in flight still
    /// completes, and its interval still holds).
    pub(crate) fn connected(&self, account: &AccountId, device: DeviceId) {
        if let Some(slot) = lock(&self.slots).get_mut(&(*account, device)) {
            slot.pending = false;
        }
    }

    /// A timed job came due: start the push if the device is still pending.
    fn due(&self, key: &Key) -> bool {
        let now = Instant::now();
        let mut slots = lock(&self.slots);
        match slots.get_mut(key) {
            Some(s) if s.pending && !s.in_flight && s.until <= now => {
                s.pending = false;
                s.in_flight = true;
                true
            }
            _ => false,
        }
    }

    /// The worker read the device's registration: coalesced triggers held so far count
    /// for its provider.
    fn learn(&self, key: &Key, provider: PushProvider) {
        if let Some(s) = lock(&self.slots).get_mut(key) {
            s.provider = Some(provider);
            let held = std::mem::take(&mut s.held);
            self.metrics.push_coalesced_total.inc(label(Some(provider)), held);
        }
    }

    /// The push is done: the interval starts; a pending device gets a timed job.
    fn finish(&self, key: &Key) {
        let now = Instant::now();
        let mut slots = lock(&self.slots);
        if let Some(s) = slots.get_mut(key) {
            s.in_flight = false;
            s.held = 0;
            s.until = now + self.interval;
            if s.pending
                && self
                    .tx
                    .try_send(Job {
                        key: *key,
                        at: Some(s.until),
                    })
                    .is_err()
            {
                s.pending = false;
                self.drop_one(s.provider);
            }
        }
        drop(slots);
        self.completed.send_modify(|n| *n += 1);
    }
}

/// Everything the worker needs.
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) pusher: Arc<Pusher>,
    pub(crate) providers: Arc<Providers>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) store: Store,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) cfg: PushConfig,
}

/// Reads jobs until shutdown; each push runs on its own task, at most `max_concurrent`
/// requests to providers at once.
pub(crate) async fn run_worker(w: Worker, mut shutdown: watch::Receiver<bool>) {
    let Some(mut rx) = lock(&w.pusher.rx).take() else {
        return;
    };
    let w = Arc::new(w);
    let permits = Arc::new(Semaphore::new(w.cfg.max_concurrent.max(1)));
    loop {
        let job = tokio::select! {
            job = rx.recv() => match job {
                Some(job) => job,
                None => return,
            },
            _ = crate::state::wait_shutdown(&mut shutdown) => return,
        };
        let w = w.clone();
        let permits = permits.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = async {
                    if let Some(at) = job.at {
                        tokio::time::sleep_until(at).await;
                        if !w.pusher.due(&job.key) {
                            return;
                        }
                    }
                    push_one(&w, &job.key, &permits).await;
                    w.pusher.finish(&job.key);
                } => {}
                _ = crate::state::wait_shutdown(&mut stop) => {}
            }
        });
    }
}

/// The wait before retry `attempt` (1 for the first retry): `retry_base_ms × 2^(attempt-1)`,
/// capped, then a random point in its upper half; or the provider's `Retry-After`, capped.
fn backoff(cfg: &PushConfig, attempt: u32, after: Option<Duration>) -> Duration {
    let max = Duration::from_millis(cfg.retry_max_ms);
    if let Some(after) = after {
        return after.min(max);
    }
    let exp = cfg
        .retry_base_ms
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(32))
        .min(cfg.retry_max_ms);
    let half = exp / 2;
    // Jitter only (nothing secret): without the OS generator, the top of the window.
    let mut r = [0u8; 8];
    let jitter = match getrandom::getrandom(&mut r) {
        Ok(()) => u64::from_le_bytes(r) % (exp - half + 1),
        Err(_) => exp - half,
    };
    Duration::from_millis(half + jitter)
}

/// Sends one push, with its retries. The database lookups and each request to the
/// provider hold one of the `max_concurrent` permits; the waits between attempts do not,
/// so a provider (or a Web Push endpoint) that keeps asking to retry delays only its own
/// pushes.
async fn push_one(w: &Worker, key: &Key, permits: &Semaphore) {
    let (account, device) = key;
    // The permit also covers the database work around each request.
    let Ok(permit) = permits.acquire().await else {
        return;
    };
    let mut permit = Some(permit);
    if w.hub.connected_anywhere(account, *device) {
        return;
    }
    let reg = match w.store.push_registration(account, *device).await {
        Ok(Some(reg)) => reg,
        // No registration: nothing to do (the interval still spares the database).
        Ok(None) => return,
        Err(e) => {
            let _ = crate::error::code_of(&e);
            w.metrics.push_failed_total.inc(label(None), 1);
            return;
        }
    };
    w.pusher.learn(key, reg.provider);
    let l = label(Some(reg.provider));
    for attempt in 1..=w.cfg.max_attempts {
        if permit.is_none() {
            let Ok(p) = permits.acquire().await else {
                return;
            };
            permit = Some(p);
        }
        let Some(outcome) = w.providers.send(&reg).await else {
            // Registered, but this relay has no credentials for the provider.
            w.metrics.push_dropped_total.inc(l, 1);
            return;
        };
        match outcome {
            Outcome::Sent => {
                w.metrics.push_sent_total.inc(l, 1);
                return;
            }
            Outcome::Gone => {
                // Delete it unless the device registered anew meanwhile.
                let still = matches!(
                    w.store.push_registration(account, *device).await,
                    Ok(Some(now)) if now == reg
                );
                if still && matches!(w.store.delete_push(account, *device).await, Ok(true)) {
                    w.metrics.push_registrations_deleted_total.inc(l, 1);
                }
                w.metrics.push_failed_total.inc(l, 1);
                return;
            }
            Outcome::Failed => break,
            Outcome::Retry(after) => {
                if attempt == w.cfg.max_attempts {
                    break;
                }
                tracing::debug!(attempt, "push: provider asked to retry");
                // The wait holds no permit.
                drop(permit.take());
                tokio::time::sleep(backoff(&w.cfg, attempt, after)).await;
            }
        }
    }
    w.metrics.push_failed_total.inc(l, 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pusher(queue: usize, cap: usize) -> Pusher {
        let cfg = PushConfig {
            queue,
            max_tracked_devices: cap,
            min_interval_secs: 3600,
            ..PushConfig::default()
        };
        Pusher::new(&cfg, Arc::new(Metrics::default()))
    }

    fn key(n: u8) -> Key {
        (AccountId([n; 32]), DeviceId(1))
    }

    #[tokio::test]
    async fn coalesces_and_bounds() {
        let p = pusher(8, 2);
        let (a, d) = key(1);
        p.trigger(&a, d);
        p.trigger(&a, d);
        p.trigger(&a, d);
        let mut rx = lock(&p.rx).take().unwrap();
        assert!(rx.try_recv().unwrap().at.is_none());
        assert!(rx.try_recv().is_err(), "one job for three triggers");
        p.learn(&(a, d), PushProvider::Apns);
        assert!(
            p.metrics
                .render()
                .contains("sotto_relay_push_coalesced_total{provider=\"apns\"} 2")
        );
        // Pending when it finishes: a timed job for the end of the interval.
        p.finish(&(a, d));
        assert!(rx.try_recv().unwrap().at.is_some());
        // The device connects: the timed job finds nothing pending.
        p.connected(&a, d);
        assert!(!p.due(&(a, d)));
        // The table holds two devices; a third is dropped while both are busy.
        let (b, e) = key(2);
        let (c, f) = key(3);
        p.trigger(&b, e);
        p.trigger(&c, f);
        assert!(
            p.metrics
                .render()
                .contains("sotto_relay_push_dropped_total{provider=\"unknown\"} 1")
        );
    }

    /// Loaded providers print no key material and no token.
    #[test]
    fn providers_stay_out_of_debug() {
        use base64::Engine;
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &ring::rand::SystemRandom::new()).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(doc.as_ref());
        let path = std::env::temp_dir().join(format!("sotto-push-debug-{}.p8", std::process::id()));
        std::fs::write(
            &path,
            format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n"),
        )
        .unwrap();
        let cfg = PushConfig {
            apns: Some(ApnsConfig {
                key_file: path.clone(),
                key_id: "KEY".into(),
                team_id: "TEAM".into(),
                topic: "org.example".into(),
                sandbox: true,
                endpoint: None,
                expiration_secs: 60,
            }),
            webpush: Some(WebPushConfig {
                vapid_private_key_file: path.clone(),
                subject: "mailto:a@example.org".into(),
                ttl_secs: 60,
                allow_insecure_endpoints: false,
            }),
            ..PushConfig::default()
        };
        let p = Providers::load(&cfg).unwrap();
        let apns = p.apns.as_ref().unwrap();
        let _ = apns.bearer_for_test();
        let shown = format!("{p:?}");
        std::fs::remove_file(&path).unwrap();
        assert!(
            !shown.contains(&b64[..16]) && !shown.contains("bearer") && !shown.contains("eyJ"),
            "{shown}"
        );
        assert!(shown.contains("api.sandbox.push.apple.com"), "{shown}");
    }

    #[test]
    fn config_from_toml() {
        let c: crate::Config = toml::from_str(
            "[push]\nmin_interval_secs = 5\n[push.apns]\nkey_file = \"k.p8\"\nkey_id = \"K\"\nteam_id = \"T\"\n\
             topic = \"org.example\"\nsandbox = true\n[push.webpush]\nvapid_private_key_file = \"v.pem\"\n\
             subject = \"mailto:a@example.org\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.push.min_interval_secs, 5);
        let apns = c.push.apns.as_ref().unwrap();
        assert!(apns.sandbox && apns.endpoint.is_none() && apns.expiration_secs == 86_400);
        assert_eq!(c.push.webpush.as_ref().unwrap().ttl_secs, 86_400);
        assert!(c.push.fcm.is_none());
        let bad: crate::Config =
            toml::from_str("[push.webpush]\nvapid_private_key_file = \"v.pem\"\nsubject = \"ops@example.org\"\n")
                .unwrap();
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::Invalid {
                field: "push.webpush.subject",
                ..
            })
        ));
        assert!(toml::from_str::<crate::Config>("[push]\nbogus = 1\n").is_err());
    }

    #[test]
    fn backoff_is_bounded() {
        let cfg = PushConfig {
            retry_base_ms: 100,
            retry_max_ms: 1_000,
            ..PushConfig::default()
        };
        for attempt in 1..20 {
            let d = backoff(&cfg, attempt, None);
            assert!(d <= Duration::from_millis(1_000), "{d:?}");
        }
        assert!(backoff(&cfg, 1, None) >= Duration::from_millis(50));
        assert_eq!(
            backoff(&cfg, 1, Some(Duration::from_secs(30))),
            Duration::from_millis(1_000)
        );
    }

    #[test]
    fn registrations_are_checked() {
        let reg = |provider, token: &[u8]| PushRegistration {
            provider,
            token: token.to_vec(),
        };
        assert!(check_registration(&reg(PushProvider::Apns, &[7; 32])).is_ok());
        assert!(check_registration(&reg(PushProvider::Apns, &[])).is_err());
        assert!(check_registration(&reg(PushProvider::Fcm, b"abc:DEF_123-x")).is_ok());
        assert!(check_registration(&reg(PushProvider::Fcm, b"a b")).is_err());
        assert!(check_registration(&reg(PushProvider::WebPush, b"{}")).is_err());
    }
}
