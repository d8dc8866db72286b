//! The client façade (native): a [`Machine`] over a [`Store`], a relay connection task
//! and the API apps call.
//!
//! This module holds the API ([`Client`]) and the shared state ([`Inner`]). The rest is
//! split by concern, each an `impl Inner` block of its own: `commit` (store commits and
//! conflict reloads), `directory` (device-list pinning, bundles, prekey refills), `outbox`
//! (the send window, lanes and outcomes), `inbound` (envelopes, the pending queue,
//! receipts) and `connection` (the socket loop). Device linking is in [`crate::link`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hkdf::Hkdf;
use rand_chacha::ChaCha20Rng;
use sha2::Sha256;
use sotto_crypto::pickle::Pickle;
use sotto_crypto::{AccountId, Device, DeviceId, PickleKey};
use tokio::sync::{Mutex, Notify, mpsc, watch};

use crate::group::{GroupId, Op, Role};
use crate::machine::{Event, GroupInfo, Machine, MachineError, Snapshot};
use crate::rt::{self, Instant};
use crate::store::{Page, Store, StoreError, StoreKey, StoredMessage};
use crate::transport::Relay;

mod attachment;
mod chat;
mod commit;
mod connection;
mod directory;
mod entropy;
mod error;
mod extension;
mod inbound;
mod live;
mod outbox;
mod profile;
mod typing;

pub use attachment::{AttachmentInfo, AttachmentReader, AttachmentWriter, Cancel, Progress};
pub use entropy::Entropy;
pub use error::ClientError;
pub use extension::{Fetched, Notification};
pub use live::{
    ConversationList, ConversationSummary, ListDiff, Listener, MAX_TIMELINE_WINDOW, MAX_UNREAD_COUNT, Presence,
    SearchResults, SendState, Subscription, TYPING_TIMEOUT_MS, Timeline, TimelineItem, apply_diffs,
};
pub use typing::TYPING_REPEAT_MS;

/// Events queued for the app before the connection task waits for it to read.
pub(crate) const EVENT_QUEUE: usize = 4096;

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
    /// Whether accounts this one has not accepted may send it message requests (kept
    /// apart by the relay, within a small quota). When false the relay refuses them
    /// (`ACCESS_DENIED`), and linking a new device is refused too (its request travels
    /// as one). Default true.
    pub accept_message_requests: bool,
    /// Whether [`Client::mark_read`] sends read receipts to the authors of what was read.
    /// Default true.
    pub read_receipts: bool,
    /// Whether this device tells the contacts this account accepted that it is online
    /// (docs/protocol.md §15.8). Opt-in: default false.
    pub share_presence: bool,
    /// While connected and sharing presence, it goes out this often. Default 10 s.
    pub presence_interval: Duration,
    /// A contact shows online until this long after their last presence, then "last
    /// seen" (so a flapping connection does not flicker). Default 25 s.
    pub presence_grace: Duration,
    /// While connected with fewer than a few attachment upload tokens kept, the client
    /// fetches a batch a random delay in this range later, at a time that has nothing to
    /// do with an upload (the fetch is authenticated, the upload it pays for is not).
    /// Default 1–20 minutes.
    pub token_refill_delay: std::ops::Range<Duration>,
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
            accept_message_requests: true,
            read_receipts: true,
            share_presence: false,
            presence_interval: Duration::from_secs(10),
            presence_grace: Duration::from_secs(25),
            token_refill_delay: Duration::from_secs(60)..Duration::from_secs(1200),
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

    /// The next event if one is queued now, without waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

/// A contact link: `sotto:` and the account id's text form.
pub fn contact_link(account: &AccountId) -> String {
    format!("sotto:{account}")
}

/// A contact link that carries the account's access key (docs/protocol.md §13.8):
/// `sotto:<account id>.<hex(access key)>`. Whoever adds it sends as a contact, not as a
/// message request.
pub fn contact_link_with_key(account: &AccountId, access_key: &[u8; 32]) -> String {
    format!("sotto:{account}.{}", hex(access_key))
}

/// Lowercase hex.
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Hex (either case) to bytes; `None` for an odd length or a character that is not a hex
/// digit.
pub(crate) fn unhex(s: &str) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = zeroize::Zeroizing::new(Vec::with_capacity(s.len() / 2));
    for i in 0..s.len() / 2 {
        out.push(u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?);
    }
    Some(out)
}

/// Parses an account id or a contact link.
pub fn parse_contact(s: &str) -> Result<AccountId, ClientError> {
    parse_contact_link(s).map(|(a, _)| a)
}

/// Parses an account id or a contact link, with the access key a link carries.
pub fn parse_contact_link(s: &str) -> Result<(AccountId, Option<[u8; 32]>), ClientError> {
    let s = s.trim();
    let link = s.strip_prefix("sotto:").unwrap_or(s);
    let (id, key) = match link.split_once('.') {
        Some((id, key)) => (id, Some(key)),
        None => (link, None),
    };
    let account = id.parse().map_err(|_| ClientError::BadContact)?;
    let key = match key {
        None => None,
        Some(digits) => Some(
            unhex(digits)
                .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                .ok_or(ClientError::BadContact)?,
        ),
    };
    Ok((account, key))
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
        groups: store.load_groups().await?,
        sender_keys: store.load_sender_keys().await?,
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
    pub(crate) wake: Notify,
    options: ClientOptions,
    consumed: std::sync::atomic::AtomicU32,
    pub(crate) link: Mutex<Option<crate::link::PendingLink>>,
    /// On a device that is joining: the link secret, until the answer arrived.
    pub(crate) joining: Mutex<Option<crate::link::Joining>>,
    /// Per sender account (and group, for group messages), the delivery receipt in the
    /// outbox that later texts join (written, waiting for its delay, not started).
    receipts: std::sync::Mutex<std::collections::BTreeMap<inbound::ReceiptTo, inbound::OpenReceipt>>,
    /// A new receipt was written: the sender reads the outbox to schedule it.
    new_receipts: AtomicBool,
    /// Seeds every generator (the machine's, on open and on every reload; the jitter's).
    pub(crate) entropy: Entropy,
    /// Retry attempts and next retry time of pending inbound envelopes (in memory: after
    /// a restart they are retried at once).
    pending_backoff: std::sync::Mutex<std::collections::HashMap<crate::store::EnvelopeDigest, (u32, Instant)>>,
    /// The generator for receipt delays, frame-id starts and connection timing.
    net_rng: std::sync::Mutex<ChaCha20Rng>,
    /// The account's access key as the machine last held it (for the contact link).
    pub(crate) access_key: std::sync::Mutex<Option<[u8; 32]>>,
    /// The live lists' wake-ups and typing state.
    pub(crate) live: live::LiveHub,
    /// A profile was set or announced: the profile task uploads or fetches it.
    pub(crate) profiles_wake: Notify,
    /// Held for one round of profile uploads and fetches.
    pub(crate) profile_round: Mutex<()>,
    /// Typing frames waiting for the connection.
    pub(crate) ephemeral: typing::Ephemeral,
    /// The outbox items handed to the relay and not answered yet (id → conversation):
    /// their messages show as `Sending`.
    pub(crate) sending: std::sync::Mutex<std::collections::HashMap<crate::ids::MessageId, AccountId>>,
    /// Bumped (under the machine lock) whenever a store failure may have undone deferred
    /// commits, and the machine was reloaded: work prepared from the machine before the
    /// bump is never sent (see [`Inner::sync_locked`]).
    pub(crate) losses: std::sync::atomic::AtomicU64,
    /// Upload tokens for attachments, not spent yet (in memory).
    pub(crate) blob_tokens: attachment::Tokens,
    /// When the next background fetch of upload tokens is due (`None`: none planned).
    pub(crate) token_refill_at: std::sync::Mutex<Option<Instant>>,
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
    /// The store's app lock ([`crate::store::ProcessRole::App`]), until shutdown or drop.
    process_lock: std::sync::Mutex<Option<crate::store::ProcessLock>>,
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
    /// The device holds the account key until [`Client::export_recovery_key`] hands it
    /// out: call it during setup and have the user keep the key offline, so that no
    /// device holds the account key (docs/protocol.md §12A.1).
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
        // The access verifier before the first prekeys (docs/protocol.md §13.8).
        client.inner.upload_access().await?;
        client
            .inner
            .relay
            .put_prekeys(&client.inner.device, &new.prekeys)
            .await?;
        client.spawn();
        Ok(client)
    }

    /// Opens the account in `store` and connects. [`ClientError::DeviceInUse`] when
    /// another process (or client) runs this device on the same store: two would take
    /// the relay connection from each other.
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
        Self::start_as(store, key, rng, options, crate::store::ProcessRole::App).await
    }

    pub(crate) async fn start_as(
        store: S,
        key: StoreKey,
        rng: ChaCha20Rng,
        options: ClientOptions,
        role: crate::store::ProcessRole,
    ) -> Result<Self, ClientError> {
        // One app process per store: a second one would fight this one for the relay
        // connection ([`ClientError::DeviceInUse`]); one extension process beside it.
        let process_lock = store.lock_process(role)?;
        let snapshot = load_snapshot(&store).await?;
        // A store that cannot read its kept tokens starts without them (they are fetched again).
        let kept_tokens = attachment::decode_tokens(&store.blob_tokens().await.unwrap_or_default());
        let Some(account) = &snapshot.account else {
            return Err(ClientError::NoAccount);
        };
        let device = Device::unpickle(&account.value.device, &pickle_key(&key)).map_err(MachineError::from)?;
        let relay = Relay::with_roots(&account.value.relay_url, &options.extra_root_certificates)?;
        let entropy = Entropy::for_options(&options);
        let machine = Machine::load(snapshot, pickle_key(&key), rng, entropy.rng()?)?;
        let access_key = machine.own_access_key().map(|k| k.0);
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
                receipts: Default::default(),
                new_receipts: AtomicBool::new(false),
                net_rng: std::sync::Mutex::new(entropy.rng()?),
                entropy,
                pending_backoff: Default::default(),
                access_key: std::sync::Mutex::new(access_key),
                live: live::LiveHub::default(),
                ephemeral: typing::Ephemeral::default(),
                sending: Default::default(),
                losses: Default::default(),
                blob_tokens: attachment::Tokens::new(kept_tokens),
                token_refill_at: std::sync::Mutex::new(None),
                profiles_wake: Notify::new(),
                profile_round: Mutex::new(()),
            }),
            shutdown,
            task: std::sync::Mutex::new(None),
            process_lock: std::sync::Mutex::new(process_lock),
        })
    }

    pub(crate) fn spawn(&mut self) {
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if task.is_some() {
            return;
        }
        // Disappearing messages expire whether or not the client connects.
        let inner = self.inner.clone();
        let shutdown = self.shutdown.subscribe();
        drop(rt::spawn(async move { inner.sweep_expired(shutdown).await }));
        if !self.inner.options.connect {
            return;
        }
        let inner = self.inner.clone();
        let shutdown = self.shutdown.subscribe();
        drop(rt::spawn(async move { inner.profile_loop(shutdown).await }));
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
        let key = *self.inner.access_key.lock().unwrap_or_else(|e| e.into_inner());
        match key {
            Some(k) => contact_link_with_key(&self.account_id(), &k),
            None => contact_link(&self.account_id()),
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// Adds a contact by account id or contact link: fetches and pins its device list.
    /// A link that carries the account's access key adds them as a contact who is
    /// not a message request.
    pub async fn add_contact(&self, contact: &str) -> Result<AccountId, ClientError> {
        let (account, key) = parse_contact_link(contact)?;
        self.inner.refresh_device_list(account).await?;
        self.inner
            .transact(|m| {
                let mut c = m.add_contact(account, key)?;
                let shared = m.share_profile(account, now_ms());
                c.outbox_add.extend(shared.outbox_add);
                Ok((c, ()))
            })
            .await?;
        self.inner.wake.notify_one();
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

    /// Conversations that other accounts started and this one has not accepted: message
    /// requests. Their senders do not get this account's access key (their sends stay
    /// within the relay's request quota) until the user accepts them, or writes to them.
    pub async fn message_requests(&self) -> Result<Vec<AccountId>, ClientError> {
        Ok(self.inner.machine.lock().await.message_requests().copied().collect())
    }

    /// Accepts a message request: this account's access key goes to `contact` with the
    /// next message or receipt. [`ClientError::UnknownContact`] when no conversation with
    /// `contact` exists (add contacts with [`Client::add_contact`]).
    pub async fn accept_message_request(&self, contact: &AccountId) -> Result<(), ClientError> {
        let contact = *contact;
        self.inner
            .transact(|m| {
                if m.conversation(&contact).is_none() {
                    return Err(ClientError::UnknownContact);
                }
                let mut c = m.accept_conversation(contact);
                c.outbox_add.extend(m.share_profile(contact, now_ms()).outbox_add);
                Ok((c, ()))
            })
            .await?;
        Ok(())
    }

    /// Every conversation (one per contact, message requests included).
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

    /// Creates a group with this account as its admin and `members` in it (their device
    /// lists are fetched when the welcomes go out). Returns its id.
    pub async fn create_group(&self, title: &str, members: &[AccountId]) -> Result<GroupId, ClientError> {
        let (id, _) = self
            .inner
            .transact(|m| {
                let (c, id) = m.create_group(title, members, now_ms())?;
                Ok((c, id))
            })
            .await?;
        self.inner.wake.notify_one();
        Ok(id)
    }

    /// Changes a group (this account must be an admin of it, except to leave).
    async fn change_group(&self, group: &GroupId, ops: Vec<Op>) -> Result<(), ClientError> {
        self.inner
            .transact(|m| Ok((m.change_group(*group, ops.clone(), now_ms())?, ())))
            .await?;
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Adds members to a group. They get the current state and key; they cannot read
    /// anything sent before.
    pub async fn add_group_members(&self, group: &GroupId, members: &[AccountId]) -> Result<(), ClientError> {
        let ops = members.iter().map(|a| Op::Add(*a, Role::Member)).collect();
        self.change_group(group, ops).await
    }

    /// Removes a member: the group's key changes and every remaining member starts a new
    /// sender-key chain, so none of the removed member's devices reads what follows.
    pub async fn remove_group_member(&self, group: &GroupId, member: &AccountId) -> Result<(), ClientError> {
        self.change_group(group, vec![Op::Remove(*member)]).await
    }

    /// Leaves a group.
    pub async fn leave_group(&self, group: &GroupId) -> Result<(), ClientError> {
        self.change_group(group, vec![Op::Leave]).await
    }

    /// Renames a group.
    pub async fn rename_group(&self, group: &GroupId, title: &str) -> Result<(), ClientError> {
        self.change_group(group, vec![Op::SetTitle(title.to_owned())]).await
    }

    /// Makes a member an admin, or a plain member again.
    pub async fn set_group_admin(&self, group: &GroupId, member: &AccountId, admin: bool) -> Result<(), ClientError> {
        let role = if admin { Role::Admin } else { Role::Member };
        self.change_group(group, vec![Op::SetRole(*member, role)]).await
    }

    /// Queues a text to a group (one sender-key step and one seal, whatever its size).
    pub async fn send_group_text(&self, group: &GroupId, text: &str) -> Result<StoredMessage, ClientError> {
        let (mut message, committed) = self
            .inner
            .transact(|m| {
                let (c, msg) = m.queue_group_text(*group, text, now_ms())?;
                Ok((c, msg))
            })
            .await?;
        self.inner.wake.notify_one();
        if let Some((_, order)) = committed.inserted.first() {
            message.order = *order;
        }
        Ok(message)
    }

    /// The groups this account is or was in.
    pub async fn groups(&self) -> Vec<GroupInfo> {
        self.inner.machine.lock().await.groups()
    }

    /// The group whose conversation a message belongs to (a group message's
    /// `conversation` is [`GroupId::conversation`]).
    pub async fn group_of(&self, conversation: &AccountId) -> Option<GroupId> {
        self.inner.machine.lock().await.group_of_conversation(conversation)
    }

    /// One group.
    pub async fn group(&self, id: &GroupId) -> Option<GroupInfo> {
        self.inner.machine.lock().await.group(id)
    }

    /// A page of a group's messages, oldest first.
    pub async fn group_messages(&self, group: &GroupId, page: Page) -> Result<Vec<StoredMessage>, ClientError> {
        Ok(self.inner.store.messages(group.conversation(), page).await?)
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

    /// Makes the delivery receipts that wait for their random delay in the outbox due
    /// now, and wakes the sender. For a client about to exit (a command-line run, a
    /// notification extension): it gives up the delay that keeps the relay from pairing a
    /// delivery with its receipt, so an app that stays open should not call it.
    pub async fn send_receipts_now(&self) {
        self.inner.receipts_due_now().await;
        self.inner.wake.notify_one();
    }

    /// Stops the connection task and waits for it to end (its sockets closed). Receipts
    /// still waiting for their delay are in the persisted outbox already (written with
    /// the messages they acknowledge); they are made due, so they go out as soon as the
    /// client connects again. Calls made afterwards still read the store; nothing is sent
    /// until the client is opened again. Safe to call more than once and while other
    /// calls run.
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = task {
            t.join().await;
        }
        self.inner.receipts_due_now().await;
        // Nothing runs the device any more: another process may.
        self.process_lock.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

#[cfg(all(test, feature = "native"))]
mod tests {
    use std::sync::Mutex as StdMutex;

    use rand_core::{RngCore, SeedableRng};

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
            stream.fill(buf)
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
