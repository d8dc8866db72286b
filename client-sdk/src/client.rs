//! The client façade (native): a [`Machine`] over a [`Store`], a relay connection task
//! and the API apps call.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hkdf::Hkdf;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sha2::Sha256;
use sotto_crypto::pickle::Pickle;
use sotto_crypto::{AccountId, Device, DeviceId, DeviceListError, PickleKey, SignedDeviceList};
use sotto_proto::{ErrorCode, Frame, Send, SendOutcome};
#[cfg(any(test, feature = "dangerous_seeded_rng"))]
use std::sync::Mutex as StdMutex;
use thiserror::Error;
use tokio::sync::{Mutex, Notify, mpsc, watch};
use zeroize::Zeroizing;

use crate::machine::{Event, Inbound, Machine, MachineError, Need, RetryPolicy, SendPlan, Snapshot, record_failure};
use crate::rt::{self, Instant};
use crate::store::{Changes, Committed, OutboxItem, Page, Store, StoreError, StoreKey, StoredMessage};
use crate::transport::{Relay, Socket, TransportError};

/// Events queued for the app before the connection task waits for it to read.
pub(crate) const EVENT_QUEUE: usize = 4096;
/// Attempts to send one outbox item before it is given up.
const MAX_SEND_ATTEMPTS: u32 = 8;
/// Commits retried after a compare-and-swap conflict.
const MAX_CONFLICT_RETRIES: u32 = 5;
/// Sends in flight on one connection (the relay pipelines up to 32).
const SEND_WINDOW: usize = 16;
/// Outbox items read per look for sendable lanes.
const OUTBOX_SCAN: u32 = 1024;
/// At most this many deliveries are processed before the store is synced and they are
/// acked (one cumulative ack); fewer when no frame is waiting. Below the relay's default
/// delivery window (64), so a batch never waits for the window to open.
const ACK_BATCH: usize = 32;
/// How many consumed one-time prekeys trigger a refill check.
const REFILL_AFTER: u32 = 20;
/// First retry delay of a pending inbound envelope (doubling up to [`PENDING_RETRY_MAX`]).
const PENDING_RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest retry delay of a pending inbound envelope.
const PENDING_RETRY_MAX: Duration = Duration::from_secs(300);
/// How long a pending inbound envelope waits for its sender's device list before it gets
/// a final verdict ([`crate::machine::UndecryptableCause::DeviceListUnavailable`]).
const PENDING_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// True when a failed device-list fetch is a final answer: the relay knows no such
/// account (or refuses for good), or the list does not verify. Anything else (network,
/// timeout, a retryable relay error, the store) is transient.
fn is_final(e: &ClientError) -> bool {
    match e {
        ClientError::DeviceList(_) => true,
        ClientError::Transport(TransportError::Relay { code, .. }) => !code.is_retryable(),
        _ => false,
    }
}

/// Rejections about the relay or this device (busy, rate-limited), not about the item's
/// recipient: they pause sending and do not count towards an item's bound.
fn is_relay_wide(code: ErrorCode) -> bool {
    code.is_retryable() && code != ErrorCode::MAILBOX_FULL
}

/// Why a client call failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The machine refused the operation.
    #[error("{0}")]
    Machine(MachineError),
    /// The relay could not be reached or refused.
    #[error("relay: {0}")]
    Transport(#[from] TransportError),
    /// A device list did not verify.
    #[error("device list: {0}")]
    DeviceList(#[from] DeviceListError),
    /// The store already holds an account.
    #[error("the store already holds an account")]
    AccountExists,
    /// The store holds no account.
    #[error("the store holds no account")]
    NoAccount,
    /// Not an account id or contact link.
    #[error("not an account id or contact link")]
    BadContact,
    /// Not a conversation of this account.
    #[error("unknown contact; add it first")]
    UnknownContact,
    /// Not a valid link code.
    #[error("not a valid link code")]
    BadLinkCode,
    /// Linking did not complete.
    #[error("linking failed: {0}")]
    Link(String),
    /// This device does not hold the account key, so it cannot change the account's
    /// device list (link or remove a device). Recover it with the recovery key
    /// ([`Client::recover_account`]) or use a device that holds it.
    #[error("this device does not hold the account key")]
    NoAccountKey,
    /// Not this account's recovery key (malformed, checksum wrong, or another account's).
    #[error("not this account's recovery key")]
    BadRecoveryKey,
    /// No pending link request has this id (answered, replaced or expired).
    #[error("no pending link request with this id")]
    UnknownLinkRequest,
    /// Linking did not complete in time (the request was rejected, never answered, or
    /// the code expired).
    #[error("linking timed out")]
    LinkTimeout,
    /// The operating system's random generator failed: nothing secret can be made, so
    /// the operation was refused.
    #[error("the operating system's random generator failed")]
    Entropy,
}

impl From<MachineError> for ClientError {
    fn from(e: MachineError) -> Self {
        match e {
            MachineError::NoAccountKey => Self::NoAccountKey,
            e => Self::Machine(e),
        }
    }
}

impl ClientError {
    /// A stable code for the error kind.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Store(StoreError::Decrypt) | Self::Machine(MachineError::Pickle(_)) => "wrong_store_key",
            Self::Store(StoreError::Conflict) => "store_conflict",
            Self::Store(_) => "store",
            Self::Machine(_) => "machine",
            Self::Transport(_) => "transport",
            Self::DeviceList(_) => "device_list",
            Self::AccountExists => "account_exists",
            Self::NoAccount => "no_account",
            Self::BadContact => "bad_contact",
            Self::UnknownContact => "unknown_contact",
            Self::BadLinkCode => "bad_link_code",
            Self::Link(_) => "link",
            Self::NoAccountKey => "no_account_key",
            Self::BadRecoveryKey => "bad_recovery_key",
            Self::UnknownLinkRequest => "unknown_link_request",
            Self::LinkTimeout => "link_timeout",
            Self::Entropy => "entropy",
        }
    }

    /// True when the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store(StoreError::Conflict) => true,
            Self::Transport(t) => t.is_retryable(),
            _ => false,
        }
    }
}

/// Connection and timing options.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Client ping interval.
    pub heartbeat: Duration,
    /// Reconnect when nothing arrived for this long.
    pub idle_timeout: Duration,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// Connect to the relay (false: offline use of the store only).
    pub connect: bool,
    /// PEM root certificates trusted for an `https://` relay besides the Mozilla root set,
    /// e.g. the private CA of a self-hosted relay.
    pub extra_root_certificates: Vec<Vec<u8>>,
    /// Tests only (feature `dangerous_seeded_rng`): every generator is seeded from one
    /// stream derived from this number instead of the OS, so runs repeat. Never in an app:
    /// anyone who learns the number can compute every key.
    #[cfg(any(test, feature = "dangerous_seeded_rng"))]
    pub dangerous_rng_seed: Option<u64>,
    /// Tests only (feature `dangerous_seeded_rng`): the entropy source itself (takes
    /// precedence over `dangerous_rng_seed`).
    #[cfg(any(test, feature = "dangerous_seeded_rng"))]
    pub dangerous_entropy: Option<Entropy>,
    /// An outbox item that keeps failing (the recipient's mailbox full, no device of the
    /// contact reachable) is given up, `Failed { retryable: true }`, once it failed for
    /// this long while the relay was reachable (time offline does not count). Default
    /// 24 hours.
    pub send_give_up_after: Duration,
    /// The wait before retrying an item after its first failure; it doubles with each
    /// further one (with jitter). Default 1 s.
    pub send_backoff_min: Duration,
    /// The longest wait between two attempts of an item. Default 5 minutes.
    pub send_backoff_max: Duration,
    /// Delivery receipts go out a random delay in this range after the first message
    /// they acknowledge arrived (so the relay cannot pair a delivery with the receipt
    /// that follows it). Default 1–5 s.
    pub receipt_delay: std::ops::Range<Duration>,
    /// The anonymous (sealed-sender) connection is never opened sooner than a random
    /// delay in this range after the authenticated connection came up. Default 1–5 s.
    pub anonymous_open_delay: std::ops::Range<Duration>,
    /// An anonymous connection is used for a random time in this range, then replaced.
    /// Default 5–15 minutes.
    pub anonymous_lifetime: std::ops::Range<Duration>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            #[cfg(any(test, feature = "dangerous_seeded_rng"))]
            dangerous_rng_seed: None,
            #[cfg(any(test, feature = "dangerous_seeded_rng"))]
            dangerous_entropy: None,
            heartbeat: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            connect: true,
            extra_root_certificates: Vec::new(),
            send_give_up_after: Duration::from_secs(24 * 3600),
            send_backoff_min: Duration::from_secs(1),
            send_backoff_max: Duration::from_secs(300),
            receipt_delay: Duration::from_secs(1)..Duration::from_secs(5),
            anonymous_open_delay: Duration::from_secs(1)..Duration::from_secs(5),
            anonymous_lifetime: Duration::from_secs(300)..Duration::from_secs(900),
        }
    }
}

/// The app's stream of [`Event`]s. Only one exists per client.
///
/// Events are queued (up to 4,096) from the moment the client starts. Once the app took
/// the stream it must keep reading it: when the queue is full the connection task waits
/// for the app rather than drop an event.
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::Receiver<Event>,
}

impl EventStream {
    /// The next event; `None` once the client shut down.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

/// A contact link: `sotto:` and the account id's text form.
pub fn contact_link(account: &AccountId) -> String {
    format!("sotto:{account}")
}

/// Parses an account id or a contact link.
pub fn parse_contact(s: &str) -> Result<AccountId, ClientError> {
    let s = s.trim();
    let id = s.strip_prefix("sotto:").unwrap_or(s);
    id.parse().map_err(|_| ClientError::BadContact)
}

type FillFn = dyn Fn(&mut [u8]) -> Result<(), ClientError> + std::marker::Send + Sync;

/// Where the client's generators get their 256-bit seeds: the OS generator (getrandom)
/// in apps. A failure is [`ClientError::Entropy`], never a zero or short seed.
#[derive(Clone)]
pub struct Entropy(Arc<FillFn>);

impl std::fmt::Debug for Entropy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entropy").finish_non_exhaustive()
    }
}

impl Entropy {
    /// The operating system's generator.
    pub(crate) fn os() -> Self {
        Self(Arc::new(|buf: &mut [u8]| {
            getrandom::getrandom(buf).map_err(|_| ClientError::Entropy)
        }))
    }

    /// Tests only: an entropy source calling `fill`.
    #[cfg(any(test, feature = "dangerous_seeded_rng"))]
    pub fn dangerous_from_fn(
        fill: impl Fn(&mut [u8]) -> Result<(), ClientError> + std::marker::Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(fill))
    }

    /// Tests only: a reproducible stream derived from `seed` (anyone who knows the number
    /// knows every key).
    #[cfg(any(test, feature = "dangerous_seeded_rng"))]
    pub fn dangerous_seeded(seed: u64) -> Self {
        let mut s = [0x5e_u8; 32];
        s[..8].copy_from_slice(&seed.to_le_bytes());
        let stream = StdMutex::new(ChaCha20Rng::from_seed(s));
        Self::dangerous_from_fn(move |buf| {
            stream.lock().unwrap_or_else(|e| e.into_inner()).fill_bytes(buf);
            Ok(())
        })
    }

    /// The source `options` name: the OS generator unless a test set another.
    pub(crate) fn for_options(options: &ClientOptions) -> Self {
        #[cfg(any(test, feature = "dangerous_seeded_rng"))]
        {
            if let Some(e) = &options.dangerous_entropy {
                return e.clone();
            }
            if let Some(seed) = options.dangerous_rng_seed {
                return Self::dangerous_seeded(seed);
            }
        }
        let _ = options;
        Self::os()
    }

    /// A generator seeded with 32 fresh bytes.
    pub(crate) fn rng(&self) -> Result<ChaCha20Rng, ClientError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        (self.0)(seed.as_mut_slice())?;
        Ok(ChaCha20Rng::from_seed(*seed))
    }
}

pub(crate) fn pickle_key(key: &StoreKey) -> PickleKey {
    let mut out = [0u8; 32];
    let _ = Hkdf::<Sha256>::new(None, &key.0).expand(b"Sotto-v1 pickle key", &mut out);
    let k = PickleKey::new(out);
    zeroize::Zeroize::zeroize(&mut out);
    k
}

pub(crate) fn now_ms() -> u64 {
    rt::now_ms()
}

pub(crate) async fn load_snapshot<S: Store>(store: &S) -> Result<Snapshot, StoreError> {
    Ok(Snapshot {
        account: store.load_account().await?,
        sessions: store.load_sessions().await?,
        prekeys: store.load_prekeys().await?,
        device_lists: store.load_device_lists().await?,
        conversations: store.conversations().await?,
        recent_ids: store.recent_message_ids(crate::machine::SEEN_IDS as u32).await?,
        recent_envelopes: store
            .processed_envelopes(crate::store::MAX_PROCESSED_ENVELOPES as u32)
            .await?,
        pending: store.pending_inbound().await?,
    })
}

pub(crate) struct Inner<S: Store> {
    pub(crate) store: S,
    key: StoreKey,
    pub(crate) relay: Relay,
    pub(crate) device: Device,
    pub(crate) machine: Mutex<Machine>,
    events: mpsc::Sender<Event>,
    events_rx: std::sync::Mutex<Option<mpsc::Receiver<Event>>>,
    events_taken: AtomicBool,
    wake: Notify,
    options: ClientOptions,
    consumed: std::sync::atomic::AtomicU32,
    pub(crate) link: Mutex<Option<crate::link::PendingLink>>,
    /// On a device that is joining: the link secret, until the answer arrived.
    pub(crate) joining: Mutex<Option<crate::link::Joining>>,
    /// Received message ids per sender account, not yet acknowledged with a receipt.
    receipts: Mutex<std::collections::BTreeMap<AccountId, Vec<crate::ids::MessageId>>>,
    /// Seeds every generator (the machine's, on open and on every reload; the jitter's).
    pub(crate) entropy: Entropy,
    /// Retry attempts and next retry time of pending inbound envelopes (in memory: after
    /// a restart they are retried at once).
    pending_backoff: std::sync::Mutex<std::collections::HashMap<crate::store::EnvelopeDigest, (u32, Instant)>>,
    /// The generator for receipt delays, frame-id starts and connection timing.
    net_rng: std::sync::Mutex<ChaCha20Rng>,
}

/// A Sotto client: one device of one account, its store and its relay connection.
///
/// Create one with [`Client::create_account`], [`Client::open`] or
/// [`Client::start_join`]. A background task keeps the relay connection up
/// (challenge authentication, heartbeat, reconnect with exponential backoff and jitter,
/// resume from the mailbox) and sends the persisted outbox. Drop or
/// [`shutdown`](Client::shutdown) stops it.
pub struct Client<S: Store> {
    pub(crate) inner: Arc<Inner<S>>,
    shutdown: watch::Sender<bool>,
    task: std::sync::Mutex<Option<rt::Task>>,
}

impl<S: Store> std::fmt::Debug for Client<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("device", &self.inner.device)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Drop for Client<S> {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

impl<S: Store> Client<S> {
    /// Creates an account with its first device, registers it at the relay and connects.
    pub async fn create_account(
        store: S,
        key: StoreKey,
        relay_url: &str,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        if store.load_account().await?.is_some() {
            return Err(ClientError::AccountExists);
        }
        let relay = Relay::with_roots(relay_url, &options.extra_root_certificates)?;
        let mut rng = Entropy::for_options(&options).rng()?;
        let pk = pickle_key(&key);
        let new = Machine::new_account(relay.url(), now_ms(), &mut rng, &pk)?;
        store.commit(new.changes).await?;
        let account = new.device_list.account_id();
        relay
            .put_device_list(&account, new.device_list.signed().as_bytes())
            .await?;
        let mut client = Self::start(store, key, rng, options).await?;
        client
            .inner
            .relay
            .put_prekeys(&client.inner.device, &new.prekeys)
            .await?;
        client.spawn();
        Ok(client)
    }

    /// Opens the account in `store` and connects.
    pub async fn open(store: S, key: StoreKey, options: ClientOptions) -> Result<Self, ClientError> {
        let rng = Entropy::for_options(&options).rng()?;
        let mut client = Self::start(store, key, rng, options).await?;
        client.spawn();
        Ok(client)
    }

    pub(crate) async fn start(
        store: S,
        key: StoreKey,
        rng: ChaCha20Rng,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let snapshot = load_snapshot(&store).await?;
        let Some(account) = &snapshot.account else {
            return Err(ClientError::NoAccount);
        };
        let device = Device::unpickle(&account.value.device, &pickle_key(&key)).map_err(MachineError::from)?;
        let relay = Relay::with_roots(&account.value.relay_url, &options.extra_root_certificates)?;
        let entropy = Entropy::for_options(&options);
        let machine = Machine::load(snapshot, pickle_key(&key), rng, entropy.rng()?)?;
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let (shutdown, _) = watch::channel(false);
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                key,
                relay,
                device,
                machine: Mutex::new(machine),
                events: tx,
                events_rx: std::sync::Mutex::new(Some(rx)),
                events_taken: AtomicBool::new(false),
                wake: Notify::new(),
                options,
                consumed: std::sync::atomic::AtomicU32::new(0),
                link: Mutex::new(None),
                joining: Mutex::new(None),
                receipts: Mutex::new(Default::default()),
                net_rng: std::sync::Mutex::new(entropy.rng()?),
                entropy,
                pending_backoff: Default::default(),
            }),
            shutdown,
            task: std::sync::Mutex::new(None),
        })
    }

    pub(crate) fn spawn(&mut self) {
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if !self.inner.options.connect || task.is_some() {
            return;
        }
        let inner = self.inner.clone();
        let shutdown = self.shutdown.subscribe();
        *task = Some(rt::spawn(async move { inner.run(shutdown).await }));
    }

    /// The event stream; `None` after the first call.
    pub fn events(&self) -> Option<EventStream> {
        let rx = self.inner.events_rx.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        self.inner.events_taken.store(true, Ordering::SeqCst);
        Some(EventStream { rx })
    }

    /// This account's id.
    pub fn account_id(&self) -> AccountId {
        self.inner.device.account_id()
    }

    /// This device's id.
    pub fn device_id(&self) -> DeviceId {
        self.inner.device.device_id()
    }

    /// The link others add this account with.
    pub fn contact_link(&self) -> String {
        contact_link(&self.account_id())
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// Adds a contact by account id or contact link: fetches and pins its device list.
    pub async fn add_contact(&self, contact: &str) -> Result<AccountId, ClientError> {
        let account = parse_contact(contact)?;
        self.inner.refresh_device_list(account).await?;
        self.inner.transact(|m| Ok((m.add_contact(account)?, ()))).await?;
        Ok(account)
    }

    /// Queues a text to a contact; the connection task sends it (now or after a
    /// reconnect). Returns the local message (status `Queued`).
    pub async fn send_text(&self, contact: &AccountId, text: &str) -> Result<StoredMessage, ClientError> {
        let (message, committed) = self
            .inner
            .transact(|m| {
                let (c, msg) = m.queue_text(*contact, text, now_ms())?;
                Ok((c, msg))
            })
            .await?;
        self.inner.wake.notify_one();
        let mut message = message;
        if let Some((_, order)) = committed.inserted.first() {
            message.order = *order;
        }
        Ok(message)
    }

    /// Every conversation (one per contact).
    pub async fn conversations(&self) -> Result<Vec<AccountId>, ClientError> {
        Ok(self
            .inner
            .store
            .conversations()
            .await?
            .into_iter()
            .map(|c| c.peer)
            .collect())
    }

    /// A page of a conversation, oldest first.
    pub async fn messages(&self, conversation: &AccountId, page: Page) -> Result<Vec<StoredMessage>, ClientError> {
        Ok(self.inner.store.messages(*conversation, page).await?)
    }

    /// Messages still waiting to be sent.
    pub async fn outbox_len(&self) -> Result<usize, ClientError> {
        Ok(self.inner.store.outbox(u32::MAX).await?.len())
    }

    /// The safety number with a contact, as 12 groups of 5 digits.
    pub async fn safety_number(&self, contact: &AccountId) -> Result<String, ClientError> {
        let m = self.inner.machine.lock().await;
        let n = m.safety_number(contact).ok_or(ClientError::UnknownContact)?;
        Ok(n.display_groups().join(" "))
    }

    /// The pinned device ids of an account.
    pub async fn devices_of(&self, account: &AccountId) -> Vec<DeviceId> {
        let m = self.inner.machine.lock().await;
        m.device_list(account)
            .map(|l| l.devices().iter().map(|d| d.device_id).collect())
            .unwrap_or_default()
    }

    /// Queues the delivery receipts that wait for their random delay into the outbox now,
    /// and wakes the sender. For a client about to exit (a command-line run, a
    /// notification extension): it gives up the delay that keeps the relay from pairing a
    /// delivery with its receipt, so an app that stays open should not call it.
    pub async fn send_receipts_now(&self) {
        self.inner.flush_receipts().await;
        self.inner.wake.notify_one();
    }

    /// Stops the connection task and waits for it to end (its sockets closed). Receipts
    /// still waiting for their delay are queued into the persisted outbox first, so they
    /// go out the next time the client connects. Calls made afterwards still read the
    /// store; nothing is sent until the client is opened again. Safe to call more than
    /// once and while other calls run.
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = task {
            t.join().await;
        }
        self.inner.flush_receipts().await;
    }
}

/// What preparing an outbox item for sending came to.
enum Prepared {
    /// Encrypted (and committed): send these.
    Ready(Vec<sotto_proto::Recipient>),
    /// The relay could not be reached: not the item's fault; try again later.
    Offline,
    /// The item failed this time (for example every device of the contact is out of
    /// prekeys): counts towards its bound, retried after a backoff.
    Failed { code: &'static str, reason: String },
    /// The item can never be sent.
    GiveUp { code: &'static str, reason: String },
}

/// A send lane: the recipient account, and whether the items are receipts. Order is kept
/// within a lane, never across lanes, so one recipient never holds up another; receipt
/// lanes come after message lanes.
type Lane = (AccountId, bool);

fn lane_of(item: &OutboxItem) -> Lane {
    let receipt = crate::content::Content::decode(&item.content)
        .is_ok_and(|c| matches!(c.kind, crate::content::ContentKind::Delivered { .. }));
    (item.to, receipt)
}

/// One outbox item being sent: the frame ids of its parts still waiting for an answer.
struct InFlight {
    /// The part for other accounts, on the anonymous connection.
    anon: Option<u64>,
    /// The sync transcripts, on the authenticated connection.
    auth: Option<u64>,
    item: OutboxItem,
    lane: Lane,
}

/// The anonymous connection (sealed sender): its own frame ids, starting at a random
/// value, and a random lifetime after which it is replaced. It lives across
/// reconnects of the authenticated connection.
struct Anon {
    socket: Socket,
    next_id: u64,
    expires: Instant,
}

/// A uniform draw from `range` (its start when empty).
fn uniform(rng: &mut ChaCha20Rng, range: &std::ops::Range<Duration>) -> Duration {
    let lo = range.start.as_millis() as u64;
    let hi = range.end.as_millis() as u64;
    if hi <= lo {
        return range.start;
    }
    Duration::from_millis(lo + rng.next_u64() % (hi - lo + 1))
}

/// A random first frame id: below 2^62, so counting up never wraps.
fn first_frame_id(rng: &mut ChaCha20Rng) -> u64 {
    rng.next_u64() >> 2
}

/// The sending state of one authenticated connection: up to [`SEND_WINDOW`] items in
/// flight over both connections. The relay stores and answers each connection's sends
/// in order.
struct Sending {
    in_flight: VecDeque<InFlight>,
    /// Lanes where an item failed while later ones were in flight: nothing new starts in
    /// them until those answered, so the failed item goes again first.
    held: std::collections::HashSet<Lane>,
    /// The next frame id on the authenticated connection.
    auth_next_id: u64,
    /// When the outbox is read again without a wake-up (the earliest backoff end).
    retry_at: Option<Instant>,
    /// Something changed (an answer, a new item): read the outbox again.
    dirty: bool,
    /// The relay could not be reached: nothing is prepared before this.
    offline_until: Option<Instant>,
    /// When the authenticated connection came up (Unix ms); an item's failing time
    /// counts from here at the earliest.
    online_since_ms: u64,
    /// No anonymous connection is opened before this (a random delay after AuthOk).
    anon_not_before: Instant,
}

impl Sending {
    fn new(rng: &mut ChaCha20Rng, options: &ClientOptions) -> Self {
        Self {
            in_flight: VecDeque::new(),
            held: Default::default(),
            auth_next_id: first_frame_id(rng),
            retry_at: None,
            dirty: true,
            offline_until: None,
            online_since_ms: now_ms(),
            anon_not_before: Instant::now() + uniform(rng, &options.anonymous_open_delay),
        }
    }

    /// Wakes the sender at `t` at the latest.
    fn retry_by(&mut self, t: Instant) {
        self.retry_at = Some(self.retry_at.map_or(t, |r| r.min(t)));
    }

    /// Releases held lanes with nothing in flight any more.
    fn release(&mut self) {
        let in_flight = &self.in_flight;
        self.held.retain(|l| in_flight.iter().any(|f| f.lane == *l));
    }
}

impl<S: Store> Inner<S> {
    /// Emits events to the app's stream: once it was taken, waiting while it is full;
    /// before that, buffered up to the queue's size.
    pub(crate) async fn emit(&self, events: Vec<Event>) {
        let taken = self.events_taken.load(Ordering::SeqCst);
        for e in events {
            let sent = if taken {
                self.events.send(e).await.is_ok()
            } else {
                // Buffered until the app takes the stream; beyond the queue, dropped.
                self.events.try_send(e).is_ok()
            };
            if !sent && taken {
                return;
            }
        }
    }

    /// Loads `m` again from the store, with generators seeded afresh from the entropy
    /// source (never from the old generator's output).
    pub(crate) async fn reload(&self, m: &mut Machine) -> Result<(), ClientError> {
        let snapshot = load_snapshot(&self.store).await?;
        let (rng, ids) = (self.entropy.rng()?, self.entropy.rng()?);
        *m = Machine::load(snapshot, pickle_key(&self.key), rng, ids)?;
        Ok(())
    }

    /// Commits `changes` made by `m` and applies them; on a conflict reloads `m` from
    /// the store and returns the conflict for the caller to retry.
    pub(crate) async fn commit_locked(&self, m: &mut Machine, changes: Changes) -> Result<Committed, ClientError> {
        self.commit_locked_as(m, changes, false).await
    }

    /// [`Self::commit_locked`], deferred ([`Store::commit_deferred`]) when `deferred`.
    async fn commit_locked_as(
        &self,
        m: &mut Machine,
        changes: Changes,
        deferred: bool,
    ) -> Result<Committed, ClientError> {
        if changes.is_empty() {
            return Ok(Committed::default());
        }
        let mut changes = changes;
        m.guard_pins(&mut changes);
        let result = if deferred {
            self.store.commit_deferred(changes.clone()).await
        } else {
            self.store.commit(changes.clone()).await
        };
        match result {
            Ok(c) => {
                m.apply(&changes, &c);
                Ok(c)
            }
            Err(StoreError::Conflict) => {
                self.reload(m).await?;
                Err(StoreError::Conflict.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Runs one machine operation and commits it, retrying after conflicts.
    pub(crate) async fn transact<T>(
        &self,
        mut op: impl FnMut(&mut Machine) -> Result<(Changes, T), ClientError>,
    ) -> Result<(T, Committed), ClientError> {
        let mut attempts = 0;
        loop {
            let mut m = self.machine.lock().await;
            let (changes, out) = op(&mut m)?;
            match self.commit_locked(&mut m, changes).await {
                Ok(c) => return Ok((out, c)),
                Err(ClientError::Store(StoreError::Conflict)) if attempts < MAX_CONFLICT_RETRIES => attempts += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Fetches, verifies and pins an account's device list; emits the change.
    pub(crate) async fn refresh_device_list(&self, account: AccountId) -> Result<(), ClientError> {
        let bytes = self.relay.get_device_list(&account).await?;
        self.pin_device_list(account, &bytes).await
    }

    async fn pin_device_list(&self, account: AccountId, bytes: &[u8]) -> Result<(), ClientError> {
        let result = self
            .transact(|m| {
                let (c, change) = m.receive_device_list(&account, bytes)?;
                Ok((c, change))
            })
            .await;
        match result {
            Ok((Some(change), _)) => {
                let mut events = Vec::new();
                if account == self.device.account_id() {
                    let m = self.machine.lock().await;
                    if !m.is_listed() {
                        events.push(Event::DeviceRemoved);
                    }
                }
                if !change.is_empty() {
                    events.insert(0, Event::DeviceListChanged { account, change });
                }
                self.emit(events).await;
                Ok(())
            }
            Ok((None, _)) => Ok(()),
            Err(ClientError::DeviceList(error)) => {
                self.emit(vec![Event::DeviceListRejected {
                    account,
                    error: error.clone(),
                }])
                .await;
                Err(ClientError::DeviceList(error))
            }
            Err(e) => Err(e),
        }
    }

    /// Fetches the bundles of `devices` and sets up sessions. Returns the devices the
    /// relay holds no prekeys for (`NO_PREKEYS`): unreachable for now.
    async fn fetch_bundles(&self, account: AccountId, devices: Vec<DeviceId>) -> Result<Vec<DeviceId>, ClientError> {
        let mut bundles = Vec::with_capacity(devices.len());
        let mut unreachable = Vec::new();
        for d in devices {
            match self.relay.bundle(&self.device, &account, d).await {
                Ok(b) => bundles.extend(b),
                Err(TransportError::Relay { code, .. }) if code == ErrorCode::UNKNOWN_DEVICE => {
                    self.refresh_device_list(account).await?;
                }
                Err(TransportError::Relay { code, .. }) if code == ErrorCode::NO_PREKEYS => unreachable.push(d),
                Err(e) => return Err(e.into()),
            }
        }
        self.transact(|m| Ok((m.receive_bundles(&account, &bundles)?, ())))
            .await?;
        Ok(unreachable)
    }

    /// Sorts a failure while preparing a send: the relay out of reach is not the item's
    /// fault; a relay answer about the recipient is.
    fn classify(e: ClientError) -> Prepared {
        match e {
            ClientError::Transport(TransportError::Relay { code, .. }) if !code.is_retryable() => Prepared::GiveUp {
                code: code.name(),
                reason: format!("the relay refused: {code:?}"),
            },
            ClientError::DeviceList(e) => Prepared::GiveUp {
                code: "DEVICE_LIST",
                reason: e.to_string(),
            },
            ClientError::Machine(e) => Prepared::GiveUp {
                code: "ENCRYPT",
                reason: e.to_string(),
            },
            // Unreachable relay, timeouts, busy or rate-limited relay, store conflicts.
            _ => Prepared::Offline,
        }
    }

    /// Encrypts an item for every reachable device. A listed device the relay holds no
    /// prekeys for is left out of this send (docs/protocol.md §13.7); when that is every
    /// device of the contact, the item failed this time.
    async fn prepare(&self, item: &OutboxItem) -> Prepared {
        let mut skip: Vec<crate::store::PeerDevice> = Vec::new();
        for _ in 0..MAX_SEND_ATTEMPTS {
            let needs = {
                let mut m = self.machine.lock().await;
                if !skip.is_empty()
                    && m.device_list(&item.to)
                        .is_some_and(|l| l.devices().iter().all(|d| skip.contains(&(item.to, d.device_id))))
                {
                    return Prepared::Failed {
                        code: ErrorCode::NO_PREKEYS.name(),
                        reason: "no device of the contact can be reached (no prekeys)".into(),
                    };
                }
                match m.prepare_send(item, &skip) {
                    Ok(SendPlan::Ready { changes, recipients }) => match self.commit_locked(&mut m, changes).await {
                        Ok(_) => return Prepared::Ready(recipients),
                        Err(ClientError::Store(StoreError::Conflict)) => continue,
                        Err(_) => return Prepared::Offline,
                    },
                    Ok(SendPlan::Need(needs)) => needs,
                    Err(e) => return Self::classify(e.into()),
                }
            };
            for need in needs {
                let r = match need {
                    Need::DeviceList(a) => self.refresh_device_list(a).await,
                    Need::Bundles(a, d) => match self.fetch_bundles(a, d).await {
                        Ok(unreachable) => {
                            skip.extend(unreachable.into_iter().map(|d| (a, d)));
                            Ok(())
                        }
                        Err(e) => Err(e),
                    },
                };
                if let Err(e) = r {
                    return Self::classify(e);
                }
            }
        }
        Prepared::Failed {
            code: "BAD_BUNDLE",
            reason: "no session could be set up with every device".into(),
        }
    }

    /// Gives an item up: removed from the outbox, the message marked failed.
    async fn give_up(&self, item: &OutboxItem, code: &'static str, retryable: bool, reason: String) {
        let ev = {
            let mut m = self.machine.lock().await;
            let (changes, ev) = m.give_up(item, code, retryable, reason);
            let _ = self.commit_locked(&mut m, changes).await;
            ev
        };
        self.emit(ev.into_iter().collect()).await;
    }

    /// Records a failed attempt the item is to blame for: it waits for its backoff, or
    /// is given up (`Failed { retryable: true }`) once it failed for
    /// [`ClientOptions::send_give_up_after`]. `at_once` retries without a backoff (the
    /// first answers about a changed device set, now fixed).
    async fn failed_attempt(
        &self,
        tx: &mut Sending,
        item: &OutboxItem,
        code: &'static str,
        reason: String,
        at_once: bool,
    ) {
        let policy = RetryPolicy {
            give_up_after_ms: self.options.send_give_up_after.as_millis() as u64,
            backoff_min_ms: self.options.send_backoff_min.as_millis() as u64,
            backoff_max_ms: self.options.send_backoff_max.as_millis() as u64,
        };
        let jitter = self.net_rng.lock().unwrap_or_else(|e| e.into_inner()).next_u64();
        let now = now_ms();
        match record_failure(item, now, tx.online_since_ms, &policy, jitter) {
            None => self.give_up(item, code, true, reason).await,
            Some(mut next) => {
                if at_once {
                    next.not_before_ms = now;
                }
                let wait = Duration::from_millis(next.not_before_ms.saturating_sub(now));
                let _ = self.transact(|m| Ok((m.retry_later(next.clone()), ()))).await;
                tx.retry_by(Instant::now() + wait);
            }
        }
    }

    async fn handle_deliver(&self, seq: u64, envelope: &[u8]) -> Result<(), ClientError> {
        let mut refreshed = false;
        let mut conflicts = 0;
        let mut accept_handled = false;
        loop {
            let mut m = self.machine.lock().await;
            match m.receive_envelope(seq, envelope, refreshed) {
                Inbound::Need(Need::DeviceList(a)) => {
                    drop(m);
                    match self.refresh_device_list(a).await {
                        Ok(()) => {}
                        Err(e) if is_final(&e) => {}
                        // Transient (network, timeout, a retryable relay error, the store):
                        // no verdict. Kept in the pending-inbound table and retried.
                        Err(e) => return self.put_aside(seq, envelope, a, e).await,
                    }
                    refreshed = true;
                }
                Inbound::Defer { sender } => {
                    drop(m);
                    return self
                        .put_aside(seq, envelope, sender, ClientError::Store(StoreError::Conflict))
                        .await;
                }
                Inbound::Need(Need::Bundles(..)) => refreshed = true,
                Inbound::LinkAccept {
                    changes,
                    sender,
                    payload,
                } => {
                    if !accept_handled {
                        // Opened (account key, contacts) before the seq is committed, so a
                        // crash in between leaves the answer in the mailbox.
                        drop(m);
                        accept_handled = true;
                        let _ = self.handle_link_accept(sender, &payload).await;
                        continue;
                    }
                    match self.commit_locked(&mut m, changes).await {
                        Ok(_) => {}
                        Err(ClientError::Store(StoreError::Conflict)) if conflicts < MAX_CONFLICT_RETRIES => {
                            conflicts += 1;
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                    return Ok(());
                }
                Inbound::LinkRequest {
                    changes,
                    sender,
                    payload,
                } => {
                    match self.commit_locked(&mut m, changes).await {
                        Ok(_) => {}
                        Err(ClientError::Store(StoreError::Conflict)) if conflicts < MAX_CONFLICT_RETRIES => {
                            conflicts += 1;
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                    drop(m);
                    // A request that does not verify, or a relay that refuses the new
                    // list, leaves the account as it was.
                    let _ = self.handle_link_request(sender, &payload).await;
                    return Ok(());
                }
                Inbound::Done { changes, events } => {
                    let consumed = changes.prekeys_removed.len() as u32;
                    // Deferred: the envelope is acked only after the next `sync`, so if a
                    // power loss undoes this commit the relay delivers it again.
                    match self.commit_locked_as(&mut m, changes, true).await {
                        Ok(c) => {
                            drop(m);
                            self.after_inbound(c, events, consumed).await;
                            return Ok(());
                        }
                        Err(ClientError::Store(StoreError::Conflict)) if conflicts < MAX_CONFLICT_RETRIES => {
                            conflicts += 1;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// Keeps an envelope that got no verdict (`why`) in the pending-inbound table, so it
    /// can be acked; when the table is full returns `why` (not acked: the relay keeps it).
    async fn put_aside(
        &self,
        seq: u64,
        envelope: &[u8],
        sender: AccountId,
        why: ClientError,
    ) -> Result<(), ClientError> {
        for _ in 0..=MAX_CONFLICT_RETRIES {
            let mut m = self.machine.lock().await;
            let Some(changes) = m.defer(seq, envelope, sender, now_ms()) else {
                return Err(why);
            };
            match self.commit_locked_as(&mut m, changes, true).await {
                Ok(_) => return Ok(()),
                Err(ClientError::Store(StoreError::Conflict)) => {}
                Err(e) => return Err(e),
            }
        }
        Err(why)
    }

    /// After an inbound commit: orders and emits the events, queues receipts, refills
    /// prekeys when enough were used.
    async fn after_inbound(&self, c: Committed, events: Vec<Event>, consumed: u32) {
        let events: Vec<Event> = events
            .into_iter()
            .filter_map(|e| match e {
                Event::MessageReceived(mut msg) => {
                    let order = c.inserted.iter().find(|(id, _)| *id == msg.id)?.1;
                    msg.order = order;
                    Some(Event::MessageReceived(msg))
                }
                other => Some(other),
            })
            .collect();
        {
            let mut pending = self.receipts.lock().await;
            for e in &events {
                if let Event::MessageReceived(msg) = e
                    && msg.status == crate::store::MessageStatus::Received
                {
                    let ids = pending.entry(msg.conversation).or_default();
                    if ids.len() < crate::content::MAX_RECEIPTS {
                        ids.push(msg.id);
                    }
                }
            }
        }
        self.emit(events).await;
        if consumed > 0 && self.consumed.fetch_add(consumed, Ordering::SeqCst) + consumed >= REFILL_AFTER {
            self.consumed.store(0, Ordering::SeqCst);
            let _ = self.refill_prekeys().await;
        }
    }

    /// Retries the envelopes in the pending-inbound table whose time has come: the oldest
    /// of each sender first, a sender's later ones only after it. One whose sender's list
    /// still cannot be fetched waits longer (exponential backoff); one that waited
    /// [`PENDING_MAX_AGE`] gets its verdict as an event. Returns false when the store failed.
    pub(crate) async fn retry_pending(&self) -> bool {
        if self.machine.lock().await.pending_len() == 0 {
            return true;
        }
        let Ok(items) = self.store.pending_inbound().await else {
            return false;
        };
        let mut blocked = std::collections::BTreeSet::new();
        for p in items {
            if blocked.contains(&p.sender) {
                continue;
            }
            let due = {
                let backoff = self.pending_backoff.lock().unwrap_or_else(|e| e.into_inner());
                backoff.get(&p.digest).is_none_or(|(_, at)| *at <= Instant::now())
            };
            if !due {
                blocked.insert(p.sender);
                continue;
            }
            match self.retry_one(&p).await {
                Ok(true) => {
                    self.pending_backoff
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&p.digest);
                }
                Ok(false) => {
                    blocked.insert(p.sender);
                    let mut backoff = self.pending_backoff.lock().unwrap_or_else(|e| e.into_inner());
                    let attempts = backoff.get(&p.digest).map_or(0, |(n, _)| *n).saturating_add(1);
                    let delay = PENDING_RETRY_MIN
                        .saturating_mul(1 << attempts.min(16))
                        .min(PENDING_RETRY_MAX);
                    backoff.insert(p.digest, (attempts, Instant::now() + delay));
                }
                Err(_) => return false,
            }
        }
        true
    }

    /// One attempt at a pending envelope: true when it left the table.
    async fn retry_one(&self, p: &crate::store::PendingInbound) -> Result<bool, ClientError> {
        let mut refreshed = false;
        let mut conflicts = 0;
        let mut accept_handled = false;
        loop {
            let mut m = self.machine.lock().await;
            match m.receive_pending(p, refreshed) {
                Inbound::Need(Need::DeviceList(a)) => {
                    drop(m);
                    match self.refresh_device_list(a).await {
                        Ok(()) => {}
                        Err(e) if is_final(&e) => {}
                        Err(_) if now_ms().saturating_sub(p.first_seen_ms) < PENDING_MAX_AGE.as_millis() as u64 => {
                            return Ok(false);
                        }
                        Err(_) => {
                            let mut m = self.machine.lock().await;
                            let (changes, event) = m.expire_pending(p);
                            self.commit_locked(&mut m, changes).await?;
                            drop(m);
                            self.emit(vec![event]).await;
                            return Ok(true);
                        }
                    }
                    refreshed = true;
                }
                Inbound::Need(Need::Bundles(..)) | Inbound::Defer { .. } => refreshed = true,
                Inbound::LinkAccept {
                    changes,
                    sender,
                    payload,
                } => {
                    if !accept_handled {
                        // Opened (account key, contacts) before the seq is committed, so a
                        // crash in between leaves the answer in the mailbox.
                        drop(m);
                        accept_handled = true;
                        let _ = self.handle_link_accept(sender, &payload).await;
                        continue;
                    }
                    match self.commit_locked(&mut m, changes).await {
                        Ok(_) => {}
                        Err(ClientError::Store(StoreError::Conflict)) if conflicts < MAX_CONFLICT_RETRIES => {
                            conflicts += 1;
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                    return Ok(true);
                }
                Inbound::LinkRequest {
                    changes,
                    sender,
                    payload,
                } => {
                    match self.commit_locked(&mut m, changes).await {
                        Ok(_) => {}
                        Err(ClientError::Store(StoreError::Conflict)) if conflicts < MAX_CONFLICT_RETRIES => {
                            conflicts += 1;
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                    drop(m);
                    let _ = self.handle_link_request(sender, &payload).await;
                    return Ok(true);
                }
                Inbound::Done { changes, events } => {
                    let consumed = changes.prekeys_removed.len() as u32;
                    match self.commit_locked(&mut m, changes).await {
                        Ok(c) => {
                            drop(m);
                            self.after_inbound(c, events, consumed).await;
                            return Ok(true);
                        }
                        Err(ClientError::Store(StoreError::Conflict)) if conflicts < MAX_CONFLICT_RETRIES => {
                            conflicts += 1;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// Queues the pending delivery receipts (one batch per sender account).
    async fn flush_receipts(&self) {
        let pending = std::mem::take(&mut *self.receipts.lock().await);
        for (to, ids) in pending {
            let _ = self.transact(|m| Ok((m.queue_receipt(to, &ids, now_ms()), ()))).await;
        }
    }

    pub(crate) async fn refill_prekeys(&self) -> Result<(), ClientError> {
        let counts = self.relay.prekey_counts(&self.device).await?;
        let upload = {
            let mut m = self.machine.lock().await;
            let Some((changes, upload)) = m.refill_prekeys(&counts)? else {
                return Ok(());
            };
            self.commit_locked(&mut m, changes).await?;
            upload
        };
        self.relay.put_prekeys(&self.device, &upload).await?;
        Ok(())
    }

    async fn handle_mismatch(&self, item: &OutboxItem, lists: &[Vec<u8>]) -> Result<(), ClientError> {
        let own = self.device.account_id();
        for bytes in lists {
            let account = SignedDeviceList::from_bytes(bytes)
                .map_err(DeviceListError::from)
                .and_then(|l| l.account_key_and_version())
                .map(|(ak, _)| AccountId::from_account_key(&ak))?;
            if account != item.to && account != own {
                continue;
            }
            self.pin_device_list(account, bytes).await?;
        }
        Ok(())
    }

    async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = self.options.backoff_min;
        // The anonymous connection outlives reconnects of the authenticated one.
        let mut anon: Option<Anon> = None;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let connected = tokio::select! {
                r = self.relay.connect_with_epoch(&self.device) => r,
                _ = shutdown.changed() => return,
            };
            match connected {
                Ok((socket, epoch)) => {
                    // A new epoch means the relay numbers the mailbox anew (a restart
                    // after a database restore, a re-registration): the seq counted so far
                    // restarts before any delivery is read, so nothing new is dropped as
                    // already seen.
                    if self
                        .transact(|m| Ok((m.receive_mailbox_epoch(epoch), ())))
                        .await
                        .is_err()
                    {
                        drop(socket);
                        let delay = backoff;
                        tokio::select! {
                            () = rt::sleep(delay) => {}
                            _ = shutdown.changed() => return,
                        }
                        backoff = (backoff * 2).min(self.options.backoff_max);
                        continue;
                    }
                    backoff = self.options.backoff_min;
                    self.emit(vec![Event::Connected]).await;
                    if self.serve(socket, &mut shutdown, &mut anon).await {
                        return;
                    }
                }
                Err(TransportError::Relay { code, .. })
                    if code == ErrorCode::AUTH_FAILED || code == ErrorCode::UNKNOWN_DEVICE =>
                {
                    // Removed from the account's device list?
                    if self.refresh_device_list(self.device.account_id()).await.is_ok() {
                        let listed = self.machine.lock().await.is_listed();
                        if !listed {
                            return;
                        }
                    }
                }
                Err(_) => {}
            }
            let span = backoff.as_millis() as u64;
            let draw = self.net_rng.lock().unwrap_or_else(|e| e.into_inner()).next_u64();
            let delay = Duration::from_millis(span / 2 + draw % (span / 2 + 1));
            tokio::select! {
                () = rt::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(self.options.backoff_max);
        }
    }

    /// Handles the answer to one part of a send. Returns false when the store failed
    /// (the connection is then restarted).
    async fn handle_result(&self, tx: &mut Sending, r: sotto_proto::SendResult, anonymous: bool) -> bool {
        let Some(i) = tx.in_flight.iter().position(|f| {
            if anonymous {
                f.anon == Some(r.message_id)
            } else {
                f.auth == Some(r.message_id)
            }
        }) else {
            return true;
        };
        tx.dirty = true;
        let ok = match r.outcome {
            SendOutcome::Stored { .. } => {
                let Some(f) = tx.in_flight.get_mut(i) else { return true };
                if anonymous {
                    f.anon = None;
                } else {
                    f.auth = None;
                }
                if f.anon.is_some() || f.auth.is_some() {
                    return true;
                }
                let Some(f) = tx.in_flight.remove(i) else { return true };
                let ev = {
                    let mut m = self.machine.lock().await;
                    let (changes, ev) = m.mark_sent(&f.item);
                    if self.commit_locked(&mut m, changes).await.is_err() {
                        return false;
                    }
                    ev
                };
                self.emit(ev.into_iter().collect()).await;
                true
            }
            SendOutcome::DeviceMismatch { device_lists } => {
                let Some(f) = tx.in_flight.remove(i) else { return true };
                self.hold(tx, &f);
                match self.handle_mismatch(&f.item, &device_lists).await {
                    Err(ClientError::DeviceList(e)) => {
                        self.give_up(&f.item, "DEVICE_LIST", false, e.to_string()).await;
                    }
                    _ => {
                        // The fixed set usually goes through at once; a set that keeps
                        // changing backs off like any failure.
                        let at_once = f.item.attempts < 3;
                        let reason = "the device set kept changing".to_owned();
                        self.failed_attempt(tx, &f.item, "DEVICE_SET_CHANGING", reason, at_once)
                            .await;
                    }
                }
                true
            }
            SendOutcome::Rejected { code } if is_relay_wide(code) => {
                // The relay is busy or limits this device: not the item's fault.
                let Some(f) = tx.in_flight.remove(i) else { return true };
                self.hold(tx, &f);
                let t = Instant::now() + self.options.backoff_min.max(Duration::from_millis(200));
                tx.offline_until = Some(t);
                tx.retry_by(t);
                true
            }
            SendOutcome::Rejected { code } if code.is_retryable() => {
                // About the recipient (a full mailbox): counts towards the item's bound.
                let Some(f) = tx.in_flight.remove(i) else { return true };
                self.hold(tx, &f);
                let reason = format!("the relay refused: {code:?}");
                self.failed_attempt(tx, &f.item, code.name(), reason, false).await;
                true
            }
            SendOutcome::Rejected { code } => {
                let Some(f) = tx.in_flight.remove(i) else { return true };
                self.hold(tx, &f);
                self.give_up(&f.item, code.name(), false, format!("the relay refused: {code:?}"))
                    .await;
                true
            }
            _ => true,
        };
        tx.release();
        ok
    }

    /// After a failure of `f`, holds its lane while later items of it are in flight.
    fn hold(&self, tx: &mut Sending, f: &InFlight) {
        if tx.in_flight.iter().any(|g| g.lane == f.lane) {
            tx.held.insert(f.lane);
        }
    }

    /// Starts sending outbox items while the window has room, lane by lane (message
    /// lanes before receipt lanes): an item waiting for its backoff holds up only the
    /// items behind it to the same recipient. Envelopes for other accounts go over the
    /// anonymous connection (sealed sender, docs/protocol.md §13.8); sync transcripts
    /// for this account's other devices over the authenticated one. Returns false when
    /// the authenticated socket failed.
    async fn fill_window(&self, tx: &mut Sending, socket: &mut Socket, anon: &mut Option<Anon>) -> bool {
        let now = Instant::now();
        if tx.retry_at.is_some_and(|t| t <= now) {
            tx.retry_at = None;
            tx.dirty = true;
        }
        if !tx.dirty || tx.in_flight.len() >= SEND_WINDOW {
            return true;
        }
        if let Some(t) = tx.offline_until {
            if t > now {
                tx.retry_by(t);
                return true;
            }
            tx.offline_until = None;
        }
        // An anonymous connection past its lifetime is replaced once its answers are in.
        if anon.as_ref().is_some_and(|a| a.expires <= now) {
            if tx.in_flight.iter().any(|f| f.anon.is_some()) {
                return true;
            }
            if let Some(mut a) = anon.take() {
                a.socket.close().await;
            }
        }
        tx.dirty = false;
        // The outbox is read from its start, further only while the lanes read so far
        // are held up (the common case reads a window's worth).
        let mut limit = (tx.in_flight.len() + SEND_WINDOW) as u32;
        let mut closed = tx.held.clone();
        loop {
            let Ok(items) = self.store.outbox(limit).await else {
                tx.retry_by(now + self.options.backoff_min);
                return true;
            };
            let more = items.len() as u32 == limit && limit < OUTBOX_SCAN;
            if !self.fill_from(tx, socket, anon, &items, &mut closed).await {
                return false;
            }
            if !more || tx.in_flight.len() >= SEND_WINDOW || tx.offline_until.is_some() {
                return true;
            }
            limit = limit.saturating_mul(4).min(OUTBOX_SCAN);
        }
    }

    /// [`Self::fill_window`] over the items read: starts those whose lane is open.
    async fn fill_from(
        &self,
        tx: &mut Sending,
        socket: &mut Socket,
        anon: &mut Option<Anon>,
        items: &[OutboxItem],
        closed: &mut std::collections::HashSet<Lane>,
    ) -> bool {
        let now = Instant::now();
        if items.iter().all(|i| tx.in_flight.iter().any(|f| f.item.id == i.id)) {
            return true;
        }
        if anon.is_none() {
            // Not right after authenticating (docs/protocol.md §13.8).
            if tx.anon_not_before > now {
                tx.retry_by(tx.anon_not_before);
                return true;
            }
            match self.relay.connect_anonymous().await {
                Ok(socket) => {
                    let mut rng = self.net_rng.lock().unwrap_or_else(|e| e.into_inner());
                    *anon = Some(Anon {
                        socket,
                        next_id: first_frame_id(&mut rng),
                        expires: Instant::now() + uniform(&mut rng, &self.options.anonymous_lifetime),
                    });
                }
                Err(_) => {
                    let t = Instant::now() + self.options.backoff_min.max(Duration::from_secs(1));
                    tx.offline_until = Some(t);
                    tx.retry_by(t);
                    return true;
                }
            }
        }
        let own = self.device.account_id();
        let now_ms = now_ms();
        let lanes: Vec<Lane> = items.iter().map(lane_of).collect();
        // Messages first, then receipts.
        for receipts in [false, true] {
            for (item, lane) in items.iter().zip(&lanes) {
                if lane.1 != receipts || closed.contains(lane) {
                    continue;
                }
                if tx.in_flight.iter().any(|f| f.item.id == item.id) {
                    continue;
                }
                if tx.in_flight.len() >= SEND_WINDOW {
                    return true;
                }
                if item.not_before_ms > now_ms {
                    closed.insert(*lane);
                    tx.retry_by(now + Duration::from_millis(item.not_before_ms - now_ms));
                    continue;
                }
                let recipients = match self.prepare(item).await {
                    Prepared::Ready(r) => r,
                    Prepared::Offline => {
                        let t = Instant::now() + self.options.backoff_min.max(Duration::from_secs(1));
                        tx.offline_until = Some(t);
                        tx.retry_by(t);
                        tx.dirty = true;
                        return true;
                    }
                    Prepared::Failed { code, reason } => {
                        closed.insert(*lane);
                        self.failed_attempt(tx, item, code, reason, false).await;
                        continue;
                    }
                    Prepared::GiveUp { code, reason } => {
                        self.give_up(item, code, false, reason).await;
                        continue;
                    }
                };
                let (mine, theirs): (Vec<_>, Vec<_>) = recipients.into_iter().partition(|r| r.account_id == own);
                let mut f = InFlight {
                    auth: None,
                    anon: None,
                    item: item.clone(),
                    lane: *lane,
                };
                if !theirs.is_empty() {
                    let sent = match anon.as_mut() {
                        Some(a) => {
                            let id = a.next_id;
                            a.next_id = a.next_id.wrapping_add(1);
                            f.anon = Some(id);
                            a.socket
                                .send(&Frame::Send(Send {
                                    message_id: id,
                                    recipients: theirs,
                                }))
                                .await
                                .is_ok()
                        }
                        None => false,
                    };
                    if !sent {
                        // The item stays in the outbox and is encrypted again next time.
                        *anon = None;
                        tx.in_flight.retain(|f| f.anon.is_none());
                        tx.release();
                        let t = Instant::now() + self.options.backoff_min;
                        tx.offline_until = Some(t);
                        tx.retry_by(t);
                        tx.dirty = true;
                        return true;
                    }
                }
                if !mine.is_empty() {
                    let id = tx.auth_next_id;
                    tx.auth_next_id = tx.auth_next_id.wrapping_add(1);
                    let frame = Frame::Send(Send {
                        message_id: id,
                        recipients: mine,
                    });
                    if socket.send(&frame).await.is_err() {
                        return false;
                    }
                    f.auth = Some(id);
                }
                if f.anon.is_none() && f.auth.is_none() {
                    continue;
                }
                tx.in_flight.push_back(f);
            }
        }
        true
    }

    /// Serves one authenticated connection, and sends over the anonymous one (opened
    /// when there is something to send, not right after this one authenticated).
    /// Returns true on shutdown.
    async fn serve(&self, mut socket: Socket, shutdown: &mut watch::Receiver<bool>, anon: &mut Option<Anon>) -> bool {
        // Another device of the account may have changed the device list meanwhile.
        let _ = self.refresh_device_list(self.device.account_id()).await;
        let _ = self.refill_prekeys().await;
        if !self.retry_pending().await {
            return false;
        }
        // Answers to sends made before this connection are not waited for: those items
        // are still in the outbox and go again.
        let mut tx = {
            let mut rng = self.net_rng.lock().unwrap_or_else(|e| e.into_inner());
            Sending::new(&mut rng, &self.options)
        };
        let mut ping_at = Instant::now() + self.options.heartbeat;
        // Receipts go out in batches, a random delay after the first message they
        // acknowledge (never a fixed delay a watcher could pair deliveries with).
        let mut receipts_at: Option<Instant> = None;
        // Deliveries processed (committed deferred) but not acked yet.
        let mut unacked = Unacked::default();
        loop {
            if !self.fill_window(&mut tx, &mut socket, anon).await {
                return false;
            }
            let retry_at = tx.retry_at;
            let retry = async {
                match retry_at {
                    Some(t) => rt::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let receipts_due = async {
                match receipts_at {
                    Some(t) => rt::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let anon_expires = anon.as_ref().map(|a| a.expires);
            let anon_frame = async {
                match anon.as_mut() {
                    Some(a) => a.socket.recv().await,
                    None => std::future::pending().await,
                }
            };
            let anon_expiry = async {
                match anon_expires {
                    Some(t) => rt::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let room = tx.in_flight.len() < SEND_WINDOW;
            // Biased: frames first, so deliveries already waiting join the ack batch; the
            // ack branch runs only when no frame is ready. The anonymous socket comes before
            // the authenticated one: it carries at most SEND_WINDOW answers, and a long
            // backlog must not starve them. The timers come last: sends and retries are
            // pumped by `fill_window` at the top of every turn anyway.
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    let _ = self.ack(&mut socket, &mut unacked).await;
                    socket.close().await;
                    if let Some(a) = anon.as_mut() {
                        a.socket.close().await;
                    }
                    return true;
                }
                frame = anon_frame => match frame {
                    Ok(Some(Frame::SendResult(r))) => {
                        if !self.handle_result(&mut tx, r, true).await {
                            return false;
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => {
                        // Sends without an answer stay in the outbox and go again.
                        *anon = None;
                        tx.in_flight.retain(|f| f.anon.is_none());
                        tx.release();
                        tx.dirty = true;
                    }
                },
                frame = socket.recv() => {
                    let frame = match frame {
                        Ok(Some(f)) => f,
                        Ok(None) | Err(_) => return false,
                    };
                    match frame {
                        Frame::Deliver(d) => {
                            if self.handle_deliver(d.seq, &d.envelope).await.is_err() {
                                // Not acked: delivered again after the reconnect.
                                return false;
                            }
                            unacked.seq = Some(d.seq);
                            unacked.count += 1;
                            if unacked.count >= ACK_BATCH && !self.ack(&mut socket, &mut unacked).await {
                                return false;
                            }
                            let (any, full) = {
                                let pending = self.receipts.lock().await;
                                (
                                    !pending.is_empty(),
                                    pending.values().any(|v| v.len() >= crate::content::MAX_RECEIPTS),
                                )
                            };
                            if full {
                                receipts_at = None;
                                self.flush_receipts().await;
                                tx.dirty = true;
                            } else if any && receipts_at.is_none() {
                                receipts_at = Some(Instant::now() + self.receipt_delay());
                            }
                        }
                        Frame::QueueEmpty => {
                            if receipts_at.is_none() && !self.receipts.lock().await.is_empty() {
                                receipts_at = Some(Instant::now() + self.receipt_delay());
                            }
                            self.emit(vec![Event::CaughtUp]).await;
                        }
                        Frame::SendResult(r) => {
                            let stored_ok = self.handle_result(&mut tx, r, false).await;
                            if !stored_ok {
                                return false;
                            }
                        }
                        Frame::Error { code }
                            if code == ErrorCode::REPLACED
                                || code == ErrorCode::SHUTTING_DOWN
                                || code == ErrorCode::IDLE_TIMEOUT =>
                        {
                            return false;
                        }
                        _ => {}
                    }
                }
                () = std::future::ready(()), if unacked.seq.is_some() => {
                    if !self.ack(&mut socket, &mut unacked).await {
                        return false;
                    }
                }
                _ = self.wake.notified(), if room => {
                    tx.dirty = true;
                }
                _ = retry => {}
                _ = receipts_due => {
                    receipts_at = None;
                    self.flush_receipts().await;
                    tx.dirty = true;
                }
                _ = anon_expiry => {
                    // Past its lifetime: closed once its answers are in (and replaced by
                    // the next send); checked again in a moment meanwhile.
                    if let Some(a) = anon.as_mut() {
                        if tx.in_flight.iter().any(|f| f.anon.is_some()) {
                            a.expires = Instant::now() + Duration::from_secs(1);
                        } else {
                            a.socket.close().await;
                            *anon = None;
                        }
                    }
                }
                () = rt::sleep_until(ping_at) => {
                    ping_at = Instant::now() + self.options.heartbeat;
                    if socket.idle_for().is_some_and(|d| d > self.options.idle_timeout) || socket.ping().await.is_err() {
                        return false;
                    }
                    // The anonymous connection is not pinged with this one (that would pair
                    // them); the relay's pings keep it alive, and a silent one is dropped.
                    if anon.as_ref().is_some_and(|a| a.socket.idle_for().is_some_and(|d| d > self.options.idle_timeout)) {
                        *anon = None;
                        tx.in_flight.retain(|f| f.anon.is_none());
                        tx.release();
                        tx.dirty = true;
                    }
                    // The relay keeps a removed device's socket open but drops its mailbox:
                    // check the account's list on every heartbeat.
                    let _ = self.refresh_device_list(self.device.account_id()).await;
                    if !self.machine.lock().await.is_listed() {
                        socket.close().await;
                        return false;
                    }
                    if !self.retry_pending().await {
                        return false;
                    }
                }
            }
        }
    }

    /// A random delay before a batch of receipts goes out.
    fn receipt_delay(&self) -> Duration {
        let mut rng = self.net_rng.lock().unwrap_or_else(|e| e.into_inner());
        uniform(&mut rng, &self.options.receipt_delay)
    }

    /// Syncs the store, so the deliveries committed deferred are durable, then acks them
    /// with one cumulative ack. False when either fails: the connection is dropped and the
    /// relay delivers them again.
    async fn ack(&self, socket: &mut Socket, unacked: &mut Unacked) -> bool {
        let Some(seq) = unacked.seq.take() else {
            return true;
        };
        unacked.count = 0;
        // Under the machine lock, like every commit, so it never races one.
        let synced = {
            let _m = self.machine.lock().await;
            self.store.sync().await.is_ok()
        };
        synced && socket.send(&Frame::Ack { seq }).await.is_ok()
    }
}

/// The deliveries processed on a connection and not acked yet.
#[derive(Default)]
struct Unacked {
    /// The highest seq processed.
    seq: Option<u64>,
    count: usize,
}

#[cfg(all(test, feature = "native"))]
mod tests {
    use std::sync::Mutex as StdMutex;

    use super::*;
    use crate::store::MemoryStore;

    /// A store holding a fresh account, and its key.
    async fn account_store() -> (MemoryStore, StoreKey) {
        let key = StoreKey::new([4; 32]);
        let store = MemoryStore::new();
        let mut rng = Entropy::dangerous_seeded(1).rng().unwrap();
        let new = Machine::new_account("http://127.0.0.1:1", 1, &mut rng, &pickle_key(&key)).unwrap();
        store.commit(new.changes).await.unwrap();
        (store, key)
    }

    fn offline(entropy: Entropy) -> ClientOptions {
        ClientOptions {
            connect: false,
            dangerous_entropy: Some(entropy),
            ..ClientOptions::default()
        }
    }

    #[tokio::test]
    async fn a_failing_entropy_source_is_a_typed_error_never_a_zero_seed() {
        let (store, key) = account_store().await;
        let failing = Entropy::dangerous_from_fn(|_| Err(ClientError::Entropy));
        let err = Client::open(store, key, offline(failing)).await.unwrap_err();
        assert!(matches!(err, ClientError::Entropy));
        assert_eq!(err.code(), "entropy");
        assert!(!err.is_retryable());
    }

    #[tokio::test]
    async fn every_reload_draws_32_fresh_bytes_per_generator() {
        let (store, key) = account_store().await;
        let draws: Arc<StdMutex<Vec<usize>>> = Arc::default();
        let seen = draws.clone();
        let stream = Entropy::dangerous_seeded(2);
        let counting = Entropy::dangerous_from_fn(move |buf| {
            seen.lock().unwrap().push(buf.len());
            (stream.0)(buf)
        });
        let client = Client::open(store, key, offline(counting)).await.unwrap();
        // Open: the key generator, the id generator and the network generator (frame
        // ids, jitter).
        assert_eq!(*draws.lock().unwrap(), [32, 32, 32]);
        let before = {
            let mut m = client.inner.machine.lock().await;
            let b = m.rng().next_u64();
            client.inner.reload(&mut m).await.unwrap();
            b
        };
        assert_eq!(*draws.lock().unwrap(), [32, 32, 32, 32, 32]);
        // The reloaded generator is not a function of the old one's output.
        let mut m = client.inner.machine.lock().await;
        let after = m.rng().next_u64();
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&before.to_le_bytes());
        assert_ne!(after, ChaCha20Rng::from_seed(s).next_u64());
    }
}
