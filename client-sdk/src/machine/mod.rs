//! The sans-IO client machine: account and device state, prekeys, per-device sessions
//! (Sesame), fan-out, device-list pinning and inbound envelope processing.
//!
//! No socket, file, clock or OS randomness: time is an argument and randomness comes
//! from two `ChaCha20Rng`s the caller seeds from the OS: one for keys, salts and
//! ephemerals, and a separate one for values others see in clear (message ids), so that
//! nothing a peer receives is output of the generator that makes secrets.
//!
//! # Call order
//!
//! 1. [`Machine::new_account`] (first run) returns [`Changes`] to commit; afterwards, and
//!    on every later start, load the store into a [`Snapshot`] and call [`Machine::load`].
//! 2. Every operation (`prepare_send`, `receive_envelope`, `receive_device_list`,
//!    `receive_bundles`, `refill_prekeys`, `queue_text`) returns [`Changes`] and leaves the
//!    machine's state untouched. The caller commits them with [`crate::store::Store::commit`]
//!    and, only if that succeeded, calls [`Machine::apply`]. On
//!    [`crate::store::StoreError::Conflict`] it reloads the machine from the store and
//!    retries; nothing advanced.
//! 3. Outputs that need the network are [`Need`] values: fetch what they name and feed it
//!    back with `receive_device_list` / `receive_bundles`, then retry.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};
use sotto_crypto::pickle::Pickle;
use sotto_crypto::{
    AccountId, AccountKey, DecryptError, Device, DeviceId, DeviceIdentity, DeviceList, DeviceListChange,
    DeviceListError, EncryptError, KemPreKeySecret, MessageType, OpenError, PickleError, PickleKey, PreKeyBundle,
    PreKeyKind, PreKeyMessage, SafetyNumber, SealError, Session, SignedDeviceList, X3dhError, X25519PreKeySecret,
};
use sotto_proto::{PreKeyCounts, PreKeyUpload, Recipient};
use thiserror::Error;

use crate::content::{Content, ContentError, ContentKind, MAX_TEXT_LEN};
use crate::ids::MessageId;
use crate::store::{
    AccountRecord, Changes, Committed, ConversationRecord, EnvelopeDigest, MAX_PENDING_INBOUND,
    MAX_PROCESSED_ENVELOPES, MessageKey, MessageStatus, OutboxItem, PeerDevice, PendingInbound, PreKeyId, SessionSet,
    StoredMessage, Versioned, Write,
};

/// One active plus up to ten inactive sessions per remote device.
pub const MAX_SESSIONS_PER_DEVICE: usize = 11;
/// How many message ids are remembered for deduplication (the store also refuses a
/// second insert of an id, whatever its age).
pub const SEEN_IDS: usize = 20_000;
/// One-time X25519 prekeys per upload batch.
pub const ONE_TIME_BATCH: u32 = 100;
/// One-time ML-KEM prekeys per upload batch.
pub const KEM_BATCH: u32 = 20;
/// Refill when the relay holds fewer one-time X25519 prekeys than this.
pub const ONE_TIME_LOW: u32 = 30;
/// Refill when the relay holds fewer one-time ML-KEM prekeys than this.
pub const KEM_LOW: u32 = 5;
/// The id of the last-resort ML-KEM prekey (one-time ML-KEM ids count up from 1).
pub const LAST_RESORT_KEM_ID: u32 = 0x8000_0000;

/// Why an operation failed. State is unchanged.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MachineError {
    /// A stored pickle does not load (wrong key or altered store).
    #[error("stored state does not load: {0}")]
    Pickle(#[from] PickleError),
    /// A stored or received device list is refused.
    #[error("device list refused: {0}")]
    DeviceList(#[from] DeviceListError),
    /// Session set-up failed.
    #[error("session set-up failed: {0}")]
    X3dh(#[from] X3dhError),
    /// Encryption failed.
    #[error("encryption failed: {0}")]
    Encrypt(#[from] EncryptError),
    /// Sealing failed.
    #[error("sealing failed: {0}")]
    Seal(#[from] SealError),
    /// The store has no account.
    #[error("no account in the store")]
    NoAccount,
    /// The text is longer than [`MAX_TEXT_LEN`].
    #[error("text of {len} bytes exceeds {max}")]
    TextTooLong {
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// Messages to one's own account go to one's devices only as transcripts.
    #[error("cannot message one's own account")]
    OwnAccount,
    /// The stored content of an outbox item does not decode.
    #[error("outbox content does not decode: {0}")]
    Content(#[from] ContentError),
    /// This device does not hold the account key, so it cannot sign a device list.
    #[error("this device does not hold the account key")]
    NoAccountKey,
}

/// Why an inbound envelope was not accepted. Nothing in it reached the app.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum UndecryptableCause {
    /// Not sealed to this device, altered, or the sender signature does not verify.
    #[error("envelope does not open: {0}")]
    Envelope(OpenError),
    /// The claimed sender's account has no device list that verifies.
    #[error("the sender's account has no verified device list")]
    UnknownSender,
    /// The claimed sender device is not in its account's verified device list.
    #[error("the sender device is not listed by its account")]
    SenderNotListed,
    /// The claimed sender is not the identity the session or pre-key message names.
    #[error("the claimed sender does not match the session")]
    SenderMismatch,
    /// A ratchet message from a device this device has no session with.
    #[error("no session with the sending device")]
    NoSession,
    /// A pre-key message naming a prekey this device no longer has (for example a
    /// replay after the one-time prekey was used).
    #[error("the pre-key message names an unknown prekey")]
    UnknownPreKey,
    /// The message was decrypted before: a replay or a second delivery.
    #[error("message already decrypted (replay)")]
    Duplicate,
    /// Ratchet decryption failed.
    #[error("decryption failed: {0}")]
    Decrypt(DecryptError),
    /// Session set-up from a pre-key message failed.
    #[error("pre-key message refused: {0}")]
    PreKey(X3dhError),
    /// The plaintext is not valid content.
    #[error("content refused: {0}")]
    Content(ContentError),
    /// A sealed content type this version does not handle.
    #[error("unknown sealed content type {0}")]
    UnknownContentType(u8),
    /// A sync transcript from another account, or a text from this account.
    #[error("content kind not valid from this sender")]
    WrongSender,
    /// The sender's device list could not be fetched for as long as an envelope may wait
    /// (network or relay failures): no verdict on the sender could be reached.
    #[error("the sender's device list stayed unavailable")]
    DeviceListUnavailable,
}

/// What the app hears about.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A new message in a conversation: from a contact, or a transcript of one this
    /// account sent from another device (`status` is then `SentElsewhere`). It is stored
    /// when this is emitted, but until it is acked a power loss can undo that; the relay
    /// then delivers it again and it is emitted again with the same id.
    MessageReceived(StoredMessage),
    /// The relay stored a message for every device.
    MessageSent {
        /// The message.
        id: MessageId,
        /// The conversation.
        conversation: AccountId,
    },
    /// A device of the contact reported messages stored.
    Delivered {
        /// The messages.
        ids: Vec<MessageId>,
        /// The reporting device.
        by: PeerDevice,
    },
    /// An account's device set changed (a newer verified list was pinned).
    DeviceListChanged {
        /// The account.
        account: AccountId,
        /// What changed.
        change: DeviceListChange,
    },
    /// A device list offered for an account did not verify or rolled back.
    DeviceListRejected {
        /// The account.
        account: AccountId,
        /// Why.
        error: DeviceListError,
    },
    /// An envelope that could not be accepted.
    Undecryptable {
        /// The claimed sending device, when the envelope opened far enough to name one.
        sender: Option<PeerDevice>,
        /// Why.
        cause: UndecryptableCause,
    },
    /// A message that could not be sent and was given up; its status is now
    /// [`MessageStatus::Failed`].
    SendFailed {
        /// The message.
        id: MessageId,
        /// Why, for display.
        reason: String,
        /// The conversation.
        conversation: AccountId,
        /// A stable code: the relay's error code name when the relay refused it
        /// (`"MAILBOX_FULL"`, `"NO_PREKEYS"`, `"RATE_LIMITED"`, … docs/protocol.md
        /// §13.11), `"DEVICE_SET_CHANGING"` when the recipient's device set kept
        /// changing, `"DEVICE_LIST"` when a device list did not verify, `"ENCRYPT"` when
        /// the message could not be encrypted.
        code: &'static str,
        /// True when sending it again later may work.
        retryable: bool,
    },
    /// This device is no longer in its account's device list.
    DeviceRemoved,
    /// (From the client) a new device asks to join this account with the code this
    /// device showed ([`crate::Client::link_new_device`]). Show the name and the
    /// fingerprint; the new device shows the same fingerprint. Answer with
    /// [`crate::Client::confirm_link`] or [`crate::Client::reject_link`].
    LinkRequested {
        /// Names the request in `confirm_link` / `reject_link`.
        id: u64,
        /// The name the new device gave itself (not authenticated beyond the code).
        device_name: String,
        /// The new device's fingerprint (docs/protocol.md §12A).
        fingerprint: String,
    },
    /// (From the client) the relay connection is authenticated.
    Connected,
    /// (From the client) every envelope queued while this device was offline has been
    /// processed.
    CaughtUp,
}

/// Something the machine needs from the relay before it can go on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Need {
    /// The account's signed device list (`GET /v1/accounts/{a}/device-list`).
    DeviceList(AccountId),
    /// A prekey bundle per named device (`GET /v1/accounts/{a}/bundles/{d}`).
    Bundles(AccountId, Vec<DeviceId>),
}

/// What [`Machine::prepare_send`] produced.
#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "one value per operation, consumed at once")]
#[non_exhaustive]
pub enum SendPlan {
    /// Fetch these, feed them in and call again.
    Need(Vec<Need>),
    /// Commit `changes`, then send `recipients` in one `Send` frame.
    Ready {
        /// Ratchet state advanced by the encryption.
        changes: Changes,
        /// One envelope per device.
        recipients: Vec<Recipient>,
    },
}

/// Sealed content type of a linking request (new device → the account's devices).
pub const CONTENT_LINK_REQUEST: u8 = 0x10;
/// Sealed content type of a linking answer (a device holding the account key → the new device).
pub const CONTENT_LINK_ACCEPT: u8 = 0x11;

/// What [`Machine::receive_envelope`] produced.
#[allow(clippy::large_enum_variant, reason = "one value per envelope, consumed at once")]
#[non_exhaustive]
pub enum Inbound {
    /// A new device asks to join this account. Its sender is not listed yet; the caller
    /// authenticates the request with the link secret it showed. Commit `changes`.
    LinkRequest {
        /// Records the seq as processed.
        changes: Changes,
        /// The claimed new device.
        sender: DeviceIdentity,
        /// The request payload.
        payload: Vec<u8>,
    },
    /// A linking answer from a listed device of this account (docs/protocol.md §12A):
    /// the caller opens it when it is joining, and ignores it otherwise. Commit `changes`.
    LinkAccept {
        /// Records the seq as processed.
        changes: Changes,
        /// The answering device.
        sender: DeviceIdentity,
        /// The answer payload.
        payload: Vec<u8>,
    },
    /// Fetch this account's device list, feed it in, and call again with `refreshed`.
    Need(Need),
    /// Earlier envelopes from this sender wait in the pending-inbound table: this one
    /// goes behind them ([`Machine::defer`]), so a sender's messages keep their order.
    Defer {
        /// The claimed sender account.
        sender: AccountId,
    },
    /// Commit `changes` (which always record the seq as processed), then emit `events`
    /// and acknowledge the seq.
    Done {
        /// What to store.
        changes: Changes,
        /// What to tell the app (after the commit).
        events: Vec<Event>,
    },
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The payload carries the request's MAC under the link secret: never printed.
            Self::LinkRequest { changes, sender, .. } => f
                .debug_struct("LinkRequest")
                .field("changes", changes)
                .field("sender", sender)
                .finish_non_exhaustive(),
            Self::LinkAccept { changes, sender, .. } => f
                .debug_struct("LinkAccept")
                .field("changes", changes)
                .field("sender", sender)
                .finish_non_exhaustive(),
            Self::Need(n) => f.debug_tuple("Need").field(n).finish(),
            Self::Defer { sender } => f.debug_struct("Defer").field("sender", sender).finish(),
            Self::Done { changes, events } => f
                .debug_struct("Done")
                .field("changes", changes)
                .field("events", events)
                .finish(),
        }
    }
}

/// Everything the machine loads from a store.
#[derive(Default)]
pub struct Snapshot {
    /// The account row.
    pub account: Option<Versioned<AccountRecord>>,
    /// Every session row.
    pub sessions: Vec<(PeerDevice, Versioned<SessionSet>)>,
    /// Every prekey secret.
    pub prekeys: Vec<(PreKeyId, Vec<u8>)>,
    /// Every pinned device list.
    pub device_lists: Vec<(AccountId, Vec<u8>)>,
    /// Every conversation.
    pub conversations: Vec<ConversationRecord>,
    /// The keys of the most recent messages, newest first.
    pub recent_ids: Vec<MessageKey>,
    /// The digests of the most recently processed envelopes, newest first.
    pub recent_envelopes: Vec<EnvelopeDigest>,
    /// The pending-inbound table, oldest first.
    pub pending: Vec<PendingInbound>,
}

/// Bounded set of recently seen values (message keys, envelope digests).
struct Seen<T> {
    order: VecDeque<T>,
    set: HashSet<T>,
    cap: usize,
}

impl<T: Copy + Eq + std::hash::Hash> Seen<T> {
    fn new(cap: usize) -> Self {
        Self {
            order: VecDeque::new(),
            set: HashSet::new(),
            cap,
        }
    }
    fn contains(&self, id: &T) -> bool {
        self.set.contains(id)
    }
    fn insert(&mut self, id: T) {
        if self.set.insert(id) {
            self.order.push_back(id);
            if self.order.len() > self.cap
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

/// The client state machine. See the module docs for the call order.
pub struct Machine {
    rng: ChaCha20Rng,
    pickle_key: PickleKey,
    /// Only on devices that hold it (docs/protocol.md §12A).
    account_key: Option<AccountKey>,
    device: Device,
    account: Versioned<AccountRecord>,
    lists: HashMap<AccountId, DeviceList>,
    sessions: HashMap<PeerDevice, Versioned<SessionSet>>,
    prekeys: HashMap<PreKeyId, Vec<u8>>,
    conversations: BTreeSet<AccountId>,
    seen: Seen<MessageKey>,
    /// Non-secret generator: message ids.
    ids: ChaCha20Rng,
    /// Digests of processed envelopes: a second delivery of the same bytes is skipped,
    /// whatever its seq (a relay may number a mailbox again from 1).
    processed: Seen<EnvelopeDigest>,
    /// The pending-inbound table (digest and claimed sender), oldest first.
    pending: Vec<(EnvelopeDigest, AccountId)>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("device", &self.device)
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

/// What a new account's first run produces.
pub struct NewAccount {
    /// Commit these.
    pub changes: Changes,
    /// Then register this list (`PUT /v1/accounts/{a}/device-list`)...
    pub device_list: DeviceList,
    /// ...and upload these prekeys (`PUT /v1/prekeys`).
    pub prekeys: PreKeyUpload,
}

impl std::fmt::Debug for NewAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewAccount")
            .field("device_list", &self.device_list)
            .finish_non_exhaustive()
    }
}

fn one_time_prekeys(
    device: &Device,
    first: u32,
    count: u32,
    rng: &mut ChaCha20Rng,
    key: &PickleKey,
    changes: &mut Changes,
    upload: &mut PreKeyUpload,
) {
    for k in device.generate_one_time_prekeys(first, count, rng) {
        changes
            .prekeys_added
            .push(((PreKeyKind::OneTime as u8, k.public().id), k.pickle(key, rng)));
        upload.one_time_prekeys.push(k.public().clone());
    }
}

fn kem_prekeys(
    device: &Device,
    first: u32,
    count: u32,
    rng: &mut ChaCha20Rng,
    key: &PickleKey,
    changes: &mut Changes,
    upload: &mut PreKeyUpload,
) {
    for i in 0..count {
        let k = device.generate_kem_prekey(first.wrapping_add(i), false, rng);
        changes
            .prekeys_added
            .push(((PreKeyKind::KemOneTime as u8, k.public().id), k.pickle(key, rng)));
        upload.kem_prekeys.push(k.public().clone());
    }
}

impl Machine {
    /// A new account with its first device: the account key, device keys, device list
    /// version 1 and a first set of prekeys. Commit `changes`, then [`Machine::load`].
    pub fn new_account(
        relay_url: &str,
        now_ms: u64,
        rng: &mut ChaCha20Rng,
        pickle_key: &PickleKey,
    ) -> Result<NewAccount, MachineError> {
        let account_key = AccountKey::generate(rng);
        let device = Device::generate(account_key.account_id(), DeviceId(1), rng);
        let device_list = account_key.sign_device_list(1, now_ms, vec![device.entry()])?;
        Self::first_state(Some(account_key), device, device_list, relay_url, rng, pickle_key)
    }

    /// The state of a device that was just added to an existing account (linking): the
    /// account key when the existing device granted it, and this device's keys.
    pub fn new_linked_device(
        account_key: Option<AccountKey>,
        device: Device,
        device_list: DeviceList,
        relay_url: &str,
        rng: &mut ChaCha20Rng,
        pickle_key: &PickleKey,
    ) -> Result<NewAccount, MachineError> {
        Self::first_state(account_key, device, device_list, relay_url, rng, pickle_key)
    }

    fn first_state(
        account_key: Option<AccountKey>,
        device: Device,
        device_list: DeviceList,
        relay_url: &str,
        rng: &mut ChaCha20Rng,
        pickle_key: &PickleKey,
    ) -> Result<NewAccount, MachineError> {
        let mut changes = Changes::default();
        let mut upload = PreKeyUpload::default();
        let spk = device.generate_signed_prekey(1, rng);
        changes
            .prekeys_added
            .push(((PreKeyKind::Signed as u8, 1), spk.pickle(pickle_key, rng)));
        upload.signed_prekey = Some(spk.public().clone());
        one_time_prekeys(&device, 1, ONE_TIME_BATCH, rng, pickle_key, &mut changes, &mut upload);
        kem_prekeys(&device, 1, KEM_BATCH, rng, pickle_key, &mut changes, &mut upload);
        let lr = device.generate_kem_prekey(LAST_RESORT_KEM_ID, true, rng);
        changes.prekeys_added.push((
            (PreKeyKind::KemLastResort as u8, LAST_RESORT_KEM_ID),
            lr.pickle(pickle_key, rng),
        ));
        upload.last_resort_kem_prekey = Some(lr.public().clone());
        changes.account = Some(Write {
            expected: None,
            value: AccountRecord {
                account_key: account_key.as_ref().map(|ak| ak.pickle(pickle_key, rng)),
                device: device.pickle(pickle_key, rng),
                relay_url: relay_url.to_owned(),
                signed_prekey_id: 1,
                next_one_time_id: 1 + ONE_TIME_BATCH,
                next_kem_id: 1 + KEM_BATCH,
                last_seq: 0,
                mailbox_epoch: None,
            },
        });
        changes
            .device_lists
            .push((device.account_id(), device_list.signed().as_bytes().to_vec()));
        Ok(NewAccount {
            changes,
            device_list,
            prekeys: upload,
        })
    }

    /// Loads the machine from a store snapshot. `rng` makes every secret (keys, salts,
    /// ephemerals) and `ids` the message ids; seed both from the OS, independently.
    pub fn load(
        snapshot: Snapshot,
        pickle_key: PickleKey,
        rng: ChaCha20Rng,
        ids: ChaCha20Rng,
    ) -> Result<Self, MachineError> {
        let account = snapshot.account.ok_or(MachineError::NoAccount)?;
        let account_key = match &account.value.account_key {
            Some(p) => Some(AccountKey::unpickle(p, &pickle_key)?),
            None => None,
        };
        let device = Device::unpickle(&account.value.device, &pickle_key)?;
        let mut lists = HashMap::new();
        for (a, bytes) in snapshot.device_lists {
            let list = SignedDeviceList::from_bytes(&bytes)
                .map_err(DeviceListError::from)?
                .verify(&a)?;
            lists.insert(a, list);
        }
        let mut seen = Seen::new(SEEN_IDS);
        for id in snapshot.recent_ids.into_iter().rev() {
            seen.insert(id);
        }
        let mut processed = Seen::new(MAX_PROCESSED_ENVELOPES);
        for d in snapshot.recent_envelopes.into_iter().rev() {
            processed.insert(d);
        }
        Ok(Self {
            rng,
            pickle_key,
            account_key,
            device,
            account,
            lists,
            sessions: snapshot.sessions.into_iter().collect(),
            prekeys: snapshot.prekeys.into_iter().collect(),
            conversations: snapshot.conversations.into_iter().map(|c| c.peer).collect(),
            seen,
            ids,
            processed,
            pending: snapshot.pending.iter().map(|p| (p.digest, p.sender)).collect(),
        })
    }

    /// Updates the cached state after `changes` were committed.
    pub fn apply(&mut self, changes: &Changes, committed: &Committed) {
        if let (Some(w), Some(v)) = (&changes.account, committed.account_version) {
            if self.account_key.is_none()
                && let Some(p) = &w.value.account_key
            {
                // Recovery stored the account key.
                self.account_key = AccountKey::unpickle(p, &self.pickle_key).ok();
            }
            self.account = Versioned {
                version: v,
                value: w.value.clone(),
            };
        }
        for ((peer, w), v) in changes.sessions.iter().zip(&committed.session_versions) {
            self.sessions.insert(
                *peer,
                Versioned {
                    version: *v,
                    value: w.value.clone(),
                },
            );
        }
        for id in &changes.prekeys_removed {
            self.prekeys.remove(id);
        }
        for (id, p) in &changes.prekeys_added {
            self.prekeys.insert(*id, p.clone());
        }
        for (a, bytes) in &changes.device_lists {
            if let Ok(list) = SignedDeviceList::from_bytes(bytes)
                .map_err(DeviceListError::from)
                .and_then(|s| s.verify(a))
            {
                self.lists.insert(*a, list);
            }
        }
        for c in &changes.conversations {
            self.conversations.insert(c.peer);
        }
        for m in &changes.messages {
            self.seen.insert(m.key());
        }
        for d in &changes.envelopes {
            self.processed.insert(*d);
        }
        for p in &changes.pending_add {
            if !self.pending.iter().any(|(d, _)| *d == p.digest) {
                self.pending.push((p.digest, p.sender));
            }
        }
        self.pending.retain(|(d, _)| !changes.pending_remove.contains(d));
    }

    /// How many envelopes wait in the pending-inbound table.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Puts an envelope aside in the pending-inbound table: it is recorded as processed
    /// (a second delivery is skipped) and kept for [`Machine::receive_pending`]. `None`
    /// when the table is full: do not acknowledge the envelope (the relay keeps it).
    pub fn defer(&self, seq: u64, envelope: &[u8], sender: AccountId, now_ms: u64) -> Option<Changes> {
        if self.pending.len() >= MAX_PENDING_INBOUND {
            return None;
        }
        let digest = Self::envelope_digest(envelope);
        let mut changes = self.seq_changes(seq, digest);
        changes.pending_add.push(PendingInbound {
            digest,
            sender,
            seq,
            first_seen_ms: now_ms,
            envelope: envelope.to_vec(),
        });
        Some(changes)
    }

    /// Processes a pending envelope again (the oldest of its sender). A final outcome
    /// drops it from the table; [`Inbound::Need`] means it stays.
    pub fn receive_pending(&mut self, p: &PendingInbound, refreshed: bool) -> Inbound {
        let mut out = self.receive(p.seq, &p.envelope, refreshed, true);
        match &mut out {
            Inbound::Done { changes, .. }
            | Inbound::LinkRequest { changes, .. }
            | Inbound::LinkAccept { changes, .. } => {
                changes.pending_remove.push(p.digest);
            }
            _ => {}
        }
        out
    }

    /// A pending envelope waited as long as it may: it leaves the table with a verdict.
    pub fn expire_pending(&self, p: &PendingInbound) -> (Changes, Event) {
        (
            Changes {
                pending_remove: vec![p.digest],
                ..Changes::default()
            },
            Event::Undecryptable {
                sender: None,
                cause: UndecryptableCause::DeviceListUnavailable,
            },
        )
    }

    /// This account's id.
    pub fn account_id(&self) -> AccountId {
        self.device.account_id()
    }

    /// This device's id.
    pub fn device_id(&self) -> DeviceId {
        self.device.device_id()
    }

    /// This device's keys (for relay authentication).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The account key, on a device that holds it (it signs device lists).
    pub fn account_key(&self) -> Option<&AccountKey> {
        self.account_key.as_ref()
    }

    /// True when this device holds the account key.
    pub fn has_account_key(&self) -> bool {
        self.account_key.is_some()
    }

    /// Stores `account_key` on this device (recovery). It must be this account's key.
    pub fn set_account_key(&mut self, account_key: &AccountKey) -> Result<Changes, MachineError> {
        if !account_key.account_id().ct_eq(&self.account_id()) {
            return Err(MachineError::NoAccountKey);
        }
        let mut record = self.account.value.clone();
        record.account_key = Some(account_key.pickle(&self.pickle_key, &mut self.rng));
        Ok(Changes {
            account: Some(Write {
                expected: Some(self.account.version),
                value: record,
            }),
            ..Changes::default()
        })
    }

    /// The relay URL the account was created with.
    pub fn relay_url(&self) -> &str {
        &self.account.value.relay_url
    }

    /// The highest processed mailbox seq.
    pub fn last_seq(&self) -> u64 {
        self.account.value.last_seq
    }

    /// The pinned device list of an account.
    pub fn device_list(&self, account: &AccountId) -> Option<&DeviceList> {
        self.lists.get(account)
    }

    /// This account's pinned device list.
    pub fn own_device_list(&self) -> Option<&DeviceList> {
        self.lists.get(&self.account_id())
    }

    /// The conversations (contacts).
    pub fn conversations(&self) -> impl Iterator<Item = &AccountId> {
        self.conversations.iter()
    }

    /// The safety number with a contact whose device list is pinned.
    pub fn safety_number(&self, contact: &AccountId) -> Option<SafetyNumber> {
        let theirs = self.lists.get(contact)?;
        let ours = self.own_device_list()?.account_key();
        Some(SafetyNumber::new(&ours, &theirs.account_key()))
    }

    /// The machine's secret generator (keys, salts, ephemerals, link secrets). Never
    /// use it for values sent in clear.
    pub fn rng(&mut self) -> &mut ChaCha20Rng {
        &mut self.rng
    }

    /// The machine's non-secret generator (message ids).
    pub fn id_rng(&mut self) -> &mut ChaCha20Rng {
        &mut self.ids
    }

    /// The relay named the mailbox's epoch (at authentication): when it is not the one
    /// `last_seq` counts in, the relay numbers the mailbox anew, so `last_seq` restarts
    /// from 0. Commit the changes (empty when the epoch is the stored one).
    pub fn receive_mailbox_epoch(&self, epoch: [u8; 16]) -> Changes {
        if self.account.value.mailbox_epoch == Some(epoch) {
            return Changes::default();
        }
        let mut record = self.account.value.clone();
        record.mailbox_epoch = Some(epoch);
        record.last_seq = 0;
        Changes {
            account: Some(Write {
                expected: Some(self.account.version),
                value: record,
            }),
            ..Changes::default()
        }
    }

    /// Adds to `changes` the pinned device-list version of every account they rely on
    /// (sessions written, messages stored, statuses moved), so that the commit fails with
    /// a conflict when another process pinned another list meanwhile. Accounts whose list
    /// `changes` pins themselves are left out.
    pub fn guard_pins(&self, changes: &mut Changes) {
        let mut accounts: BTreeSet<AccountId> = changes.sessions.iter().map(|(p, _)| p.0).collect();
        accounts.extend(changes.messages.iter().map(|m| m.sender.0));
        accounts.extend(changes.message_status.iter().map(|(k, _)| k.conversation));
        for (a, _) in &changes.device_lists {
            accounts.remove(a);
        }
        for a in accounts {
            if changes.pins.iter().any(|(p, _)| *p == a) {
                continue;
            }
            let version = self.lists.get(&a).map_or(0, |l| l.version());
            changes.pins.push((a, version));
        }
    }

    /// A signed prekey of this device, for re-uploading it.
    fn prekey_public_upload(&self) -> Result<PreKeyUpload, MachineError> {
        let mut upload = PreKeyUpload::default();
        if let Some(p) = self
            .prekeys
            .get(&(PreKeyKind::Signed as u8, self.account.value.signed_prekey_id))
        {
            upload.signed_prekey = Some(X25519PreKeySecret::unpickle(p, &self.pickle_key)?.public().clone());
        }
        if let Some(p) = self.prekeys.get(&(PreKeyKind::KemLastResort as u8, LAST_RESORT_KEM_ID)) {
            upload.last_resort_kem_prekey = Some(KemPreKeySecret::unpickle(p, &self.pickle_key)?.public().clone());
        }
        Ok(upload)
    }

    /// Given the relay's prekey counts, new prekeys to upload (and the changes that keep
    /// their secrets), or `None` when the relay holds enough.
    pub fn refill_prekeys(&mut self, counts: &PreKeyCounts) -> Result<Option<(Changes, PreKeyUpload)>, MachineError> {
        let mut upload = if counts.has_signed_prekey && counts.has_last_resort {
            PreKeyUpload::default()
        } else {
            let all = self.prekey_public_upload()?;
            PreKeyUpload {
                signed_prekey: all.signed_prekey.filter(|_| !counts.has_signed_prekey),
                last_resort_kem_prekey: all.last_resort_kem_prekey.filter(|_| !counts.has_last_resort),
                ..PreKeyUpload::default()
            }
        };
        let mut changes = Changes::default();
        let mut record = self.account.value.clone();
        if counts.one_time < ONE_TIME_LOW {
            one_time_prekeys(
                &self.device,
                record.next_one_time_id,
                ONE_TIME_BATCH,
                &mut self.rng,
                &self.pickle_key,
                &mut changes,
                &mut upload,
            );
            record.next_one_time_id = record.next_one_time_id.wrapping_add(ONE_TIME_BATCH);
        }
        if counts.kem_one_time < KEM_LOW {
            kem_prekeys(
                &self.device,
                record.next_kem_id,
                KEM_BATCH,
                &mut self.rng,
                &self.pickle_key,
                &mut changes,
                &mut upload,
            );
            record.next_kem_id = record.next_kem_id.wrapping_add(KEM_BATCH);
        }
        if upload == PreKeyUpload::default() {
            return Ok(None);
        }
        if record != self.account.value {
            changes.account = Some(Write {
                expected: Some(self.account.version),
                value: record,
            });
        }
        Ok(Some((changes, upload)))
    }

    /// Adds a contact: creates the conversation. Its device list must be pinned first
    /// ([`Machine::receive_device_list`]).
    pub fn add_contact(&mut self, contact: AccountId) -> Result<Changes, MachineError> {
        if contact == self.account_id() {
            return Err(MachineError::OwnAccount);
        }
        Ok(Changes {
            conversations: vec![ConversationRecord { peer: contact }],
            ..Changes::default()
        })
    }

    /// Writes a text into the outbox and the conversation (status `Queued`).
    pub fn queue_text(
        &mut self,
        to: AccountId,
        text: &str,
        now_ms: u64,
    ) -> Result<(Changes, StoredMessage), MachineError> {
        if to == self.account_id() {
            return Err(MachineError::OwnAccount);
        }
        if text.len() > MAX_TEXT_LEN {
            return Err(MachineError::TextTooLong {
                len: text.len(),
                max: MAX_TEXT_LEN,
            });
        }
        let id = MessageId::new(now_ms, &mut self.ids);
        let content = Content {
            message_id: id,
            timestamp_ms: now_ms,
            kind: ContentKind::Text { text: text.to_owned() },
        };
        let message = StoredMessage {
            id,
            conversation: to,
            sender: (self.account_id(), self.device_id()),
            timestamp_ms: now_ms,
            text: text.to_owned(),
            status: MessageStatus::Queued,
            order: 0,
        };
        let changes = Changes {
            conversations: vec![ConversationRecord { peer: to }],
            messages: vec![message.clone()],
            outbox_add: vec![OutboxItem::new(id, to, content.encode())],
            ..Changes::default()
        };
        Ok((changes, message))
    }

    /// Verifies and pins a device list for `account`. Returns the changes (empty when the
    /// list is the pinned one) and the change of the device set, if any.
    pub fn receive_device_list(
        &mut self,
        account: &AccountId,
        signed: &[u8],
    ) -> Result<(Changes, Option<DeviceListChange>), DeviceListError> {
        let list = SignedDeviceList::from_bytes(signed)?.verify(account)?;
        let change = match self.lists.get(account) {
            Some(pinned) => {
                let change = pinned.check_update(&list)?;
                if list.version() == pinned.version() {
                    return Ok((Changes::default(), None));
                }
                change
            }
            None => DeviceListChange {
                added: list.devices().iter().map(|d| d.device_id).collect(),
                ..DeviceListChange::default()
            },
        };
        let changes = Changes {
            device_lists: vec![(*account, signed.to_vec())],
            ..Changes::default()
        };
        Ok((changes, Some(change)))
    }

    /// A new version of this account's device list with `add` added and `remove`
    /// removed, signed with the account key.
    pub fn next_own_list(
        &self,
        add: Option<sotto_crypto::DeviceEntry>,
        remove: Option<DeviceId>,
        now_ms: u64,
    ) -> Result<DeviceList, MachineError> {
        let own = self.own_device_list().ok_or(MachineError::NoAccount)?;
        let mut devices: Vec<_> = own
            .devices()
            .iter()
            .filter(|d| Some(d.device_id) != remove && add.is_none_or(|a| a.device_id != d.device_id))
            .copied()
            .collect();
        devices.extend(add);
        let ak = self.account_key.as_ref().ok_or(MachineError::NoAccountKey)?;
        Ok(ak.sign_device_list(own.version() + 1, now_ms, devices)?)
    }

    /// True when this device is in its account's pinned list.
    pub fn is_listed(&self) -> bool {
        self.own_device_list()
            .is_some_and(|l| l.contains(&self.device.identity()))
    }

    fn load_sessions(&self, peer: &PeerDevice) -> Result<Vec<Session>, MachineError> {
        match self.sessions.get(peer) {
            Some(set) => set
                .value
                .sessions
                .iter()
                .map(|p| Session::unpickle(p, &self.pickle_key).map_err(MachineError::from))
                .collect(),
            None => Ok(Vec::new()),
        }
    }

    fn has_usable_session(&self, identity: &DeviceIdentity) -> bool {
        let peer = (identity.account_id, identity.device_id);
        let Some(set) = self.sessions.get(&peer) else {
            return false;
        };
        let Some(first) = set.value.sessions.first() else {
            return false;
        };
        Session::unpickle(first, &self.pickle_key).is_ok_and(|s| s.remote().ct_eq(identity))
    }

    /// Session-set write: `front` becomes active, followed by `rest` (pickles), capped.
    fn session_write(
        &mut self,
        peer: PeerDevice,
        front: &Session,
        rest: Vec<Vec<u8>>,
    ) -> (PeerDevice, Write<SessionSet>) {
        let mut sessions = Vec::with_capacity(rest.len() + 1);
        sessions.push(front.pickle(&self.pickle_key, &mut self.rng));
        sessions.extend(rest);
        sessions.truncate(MAX_SESSIONS_PER_DEVICE);
        (
            peer,
            Write {
                expected: self.sessions.get(&peer).map(|s| s.version),
                value: SessionSet { sessions },
            },
        )
    }

    /// Creates sessions from fetched bundles, for devices listed in the pinned list that
    /// have no usable session. A bundle that does not verify is skipped (the device stays
    /// without a session and the next attempt fetches again).
    pub fn receive_bundles(&mut self, account: &AccountId, bundles: &[PreKeyBundle]) -> Result<Changes, MachineError> {
        let mut changes = Changes::default();
        let Some(list) = self.lists.get(account).cloned() else {
            return Ok(changes);
        };
        for b in bundles {
            if b.identity.account_id != *account || self.has_usable_session(&b.identity) {
                continue;
            }
            let Ok(session) = sotto_crypto::initiate(&self.device, &list, b, &mut self.rng) else {
                continue;
            };
            let peer = (*account, b.identity.device_id);
            let rest = self
                .sessions
                .get(&peer)
                .map(|s| s.value.sessions.clone())
                .unwrap_or_default();
            changes.sessions.push(self.session_write(peer, &session, rest));
        }
        Ok(changes)
    }

    /// Every device a message to `to` goes to: all of `to`'s devices and this account's
    /// other devices, but those in `skip`.
    fn fan_out(&self, to: &AccountId, skip: &[PeerDevice]) -> Result<Vec<DeviceIdentity>, Vec<Need>> {
        let mut needs = Vec::new();
        let mut targets = Vec::new();
        let own = self.account_id();
        for account in [*to, own] {
            let Some(list) = self.lists.get(&account) else {
                needs.push(Need::DeviceList(account));
                continue;
            };
            let mut missing = Vec::new();
            for d in list.devices() {
                if (account == own && d.device_id == self.device_id()) || skip.contains(&(account, d.device_id)) {
                    continue;
                }
                let Some(identity) = list.identity(d.device_id) else {
                    continue;
                };
                if !self.has_usable_session(&identity) {
                    missing.push(d.device_id);
                }
                targets.push(identity);
            }
            if !missing.is_empty() {
                needs.push(Need::Bundles(account, missing));
            }
        }
        if needs.is_empty() { Ok(targets) } else { Err(needs) }
    }

    /// Encrypts an outbox item for every device: the contact's devices get the content,
    /// this account's other devices a sync transcript (for texts). Needs a session with
    /// each; otherwise says what to fetch.
    ///
    /// Devices in `skip` (listed, but unreachable for this send: the relay holds no
    /// prekeys for them) are left out.
    pub fn prepare_send(&mut self, item: &OutboxItem, skip: &[PeerDevice]) -> Result<SendPlan, MachineError> {
        let content = Content::decode(&item.content)?;
        let targets = match self.fan_out(&item.to, skip) {
            Ok(t) => t,
            Err(needs) => return Ok(SendPlan::Need(needs)),
        };
        let transcript = match &content.kind {
            ContentKind::Text { text } => Some(
                Content {
                    message_id: content.message_id,
                    timestamp_ms: content.timestamp_ms,
                    kind: ContentKind::SyncTranscript {
                        conversation: item.to,
                        text: text.clone(),
                    },
                }
                .encode(),
            ),
            _ => None,
        };
        let own = self.account_id();
        let mut changes = Changes::default();
        let mut recipients = Vec::with_capacity(targets.len());
        for identity in targets {
            let plaintext = if identity.account_id == own {
                match &transcript {
                    Some(t) => t,
                    None => continue,
                }
            } else {
                &item.content
            };
            let peer = (identity.account_id, identity.device_id);
            let mut sessions = self.load_sessions(&peer)?;
            if sessions.is_empty() {
                return Ok(SendPlan::Need(vec![Need::Bundles(
                    identity.account_id,
                    vec![identity.device_id],
                )]));
            }
            let mut active = sessions.remove(0);
            let out = active.encrypt(plaintext, &mut self.rng)?;
            let envelope = sotto_crypto::seal(
                &self.device,
                &identity,
                out.message_type as u8,
                &out.bytes,
                &mut self.rng,
            )?;
            let rest = self
                .sessions
                .get(&peer)
                .map(|s| s.value.sessions.iter().skip(1).cloned().collect())
                .unwrap_or_default();
            changes.sessions.push(self.session_write(peer, &active, rest));
            recipients.push(Recipient {
                account_id: identity.account_id,
                device_id: identity.device_id,
                envelope,
            });
        }
        Ok(SendPlan::Ready { changes, recipients })
    }

    /// Queues a delivery receipt for messages received from `to` (at most
    /// [`crate::content::MAX_RECEIPTS`] ids; the rest are left out).
    pub fn queue_receipt(&mut self, to: AccountId, ids: &[MessageId], now_ms: u64) -> Changes {
        let ids: Vec<MessageId> = ids.iter().take(crate::content::MAX_RECEIPTS).copied().collect();
        if ids.is_empty() || to == self.account_id() {
            return Changes::default();
        }
        let content = Content {
            message_id: MessageId::new(now_ms, &mut self.ids),
            timestamp_ms: now_ms,
            kind: ContentKind::Delivered { message_ids: ids },
        };
        Changes {
            outbox_add: vec![OutboxItem::new(content.message_id, to, content.encode())],
            ..Changes::default()
        }
    }

    /// The relay stored an outbox item: drop it from the outbox and mark the message sent.
    pub fn mark_sent(&self, item: &OutboxItem) -> (Changes, Option<Event>) {
        let is_text = Content::decode(&item.content).is_ok_and(|c| matches!(c.kind, ContentKind::Text { .. }));
        let changes = Changes {
            outbox_remove: vec![item.id],
            message_status: if is_text {
                vec![(
                    MessageKey {
                        conversation: item.to,
                        sender: self.account_id(),
                        id: item.id,
                    },
                    MessageStatus::Sent,
                )]
            } else {
                Vec::new()
            },
            ..Changes::default()
        };
        let event = is_text.then_some(Event::MessageSent {
            id: item.id,
            conversation: item.to,
        });
        (changes, event)
    }

    /// Gives up an outbox item: drops it from the outbox and marks the message
    /// [`MessageStatus::Failed`]. The event is for texts (a receipt given up is not the
    /// app's concern).
    pub fn give_up(
        &self,
        item: &OutboxItem,
        code: &'static str,
        retryable: bool,
        reason: String,
    ) -> (Changes, Option<Event>) {
        let is_text = Content::decode(&item.content).is_ok_and(|c| matches!(c.kind, ContentKind::Text { .. }));
        let changes = Changes {
            outbox_remove: vec![item.id],
            message_status: if is_text {
                vec![(
                    MessageKey {
                        conversation: item.to,
                        sender: self.account_id(),
                        id: item.id,
                    },
                    MessageStatus::Failed { retryable },
                )]
            } else {
                Vec::new()
            },
            ..Changes::default()
        };
        let event = is_text.then_some(Event::SendFailed {
            id: item.id,
            reason,
            conversation: item.to,
            code,
            retryable,
        });
        (changes, event)
    }

    /// Records that sending `item` failed again (it stays in the outbox): `updated`
    /// carries its new attempts and backoff ([`record_failure`]).
    pub fn retry_later(&self, updated: OutboxItem) -> Changes {
        Changes {
            outbox_update: vec![updated],
            ..Changes::default()
        }
    }

    /// Records the envelope (its digest, and its seq) as processed.
    fn seq_changes(&self, seq: u64, digest: EnvelopeDigest) -> Changes {
        let mut record = self.account.value.clone();
        record.last_seq = record.last_seq.max(seq);
        Changes {
            account: Some(Write {
                expected: Some(self.account.version),
                value: record,
            }),
            envelopes: vec![digest],
            ..Changes::default()
        }
    }

    fn undecryptable(
        &self,
        seq: u64,
        digest: EnvelopeDigest,
        sender: Option<PeerDevice>,
        cause: UndecryptableCause,
    ) -> Inbound {
        Inbound::Done {
            changes: self.seq_changes(seq, digest),
            events: vec![Event::Undecryptable { sender, cause }],
        }
    }

    /// The digest [`Machine::receive_envelope`] deduplicates envelopes by.
    pub fn envelope_digest(envelope: &[u8]) -> EnvelopeDigest {
        Sha256::digest(envelope).into()
    }

    /// True when an envelope with these bytes was processed already.
    pub fn is_processed(&self, envelope: &[u8]) -> bool {
        self.processed.contains(&Self::envelope_digest(envelope))
    }

    /// Processes one envelope from the mailbox (seq `seq`). An envelope whose bytes were
    /// processed before is skipped (a second delivery after a lost ack), whatever its
    /// seq: a relay that numbers the mailbox again from 1 loses nothing. Call with
    /// `refreshed = true` after feeding the device list a [`Need`] asked for.
    ///
    /// The changes of a message carry the pinned device-list version of its sender's
    /// account ([`Changes::pins`]), and a session is written only when new content
    /// decrypted: a duplicate leaves every session as it was.
    pub fn receive_envelope(&mut self, seq: u64, envelope: &[u8], refreshed: bool) -> Inbound {
        self.receive(seq, envelope, refreshed, false)
    }

    fn receive(&mut self, seq: u64, envelope: &[u8], refreshed: bool, from_pending: bool) -> Inbound {
        let digest = Self::envelope_digest(envelope);
        if !from_pending && self.processed.contains(&digest) {
            return Inbound::Done {
                changes: Changes::default(),
                events: Vec::new(),
            };
        }
        let opened = match sotto_crypto::open(&self.device, envelope) {
            Ok(o) => o,
            Err(e) => return self.undecryptable(seq, digest, None, UndecryptableCause::Envelope(e)),
        };
        let sender = opened.sender;
        let peer = (sender.account_id, sender.device_id);
        if opened.content_type == CONTENT_LINK_REQUEST && sender.account_id == self.account_id() {
            return Inbound::LinkRequest {
                changes: self.seq_changes(seq, digest),
                sender,
                payload: opened.content,
            };
        }
        if !from_pending && self.pending.iter().any(|(_, a)| *a == sender.account_id) {
            return Inbound::Defer {
                sender: sender.account_id,
            };
        }
        let listed = self.lists.get(&sender.account_id).map(|list| list.contains(&sender));
        match listed {
            Some(true) => {}
            None | Some(false) if !refreshed => return Inbound::Need(Need::DeviceList(sender.account_id)),
            None => return self.undecryptable(seq, digest, Some(peer), UndecryptableCause::UnknownSender),
            Some(false) => return self.undecryptable(seq, digest, Some(peer), UndecryptableCause::SenderNotListed),
        }
        let mut changes = self.seq_changes(seq, digest);
        if opened.content_type == CONTENT_LINK_ACCEPT && sender.account_id == self.account_id() {
            // A linking answer (sent to every device of the account): the account's
            // device list changed; fetch it, then the caller opens it if it is joining.
            if !refreshed {
                return Inbound::Need(Need::DeviceList(self.account_id()));
            }
            return Inbound::LinkAccept {
                changes,
                sender,
                payload: opened.content,
            };
        }
        let decrypted = match MessageType::from_byte(opened.content_type) {
            Some(MessageType::Ratchet) => self.decrypt_ratchet(&sender, &opened.content, &mut changes),
            Some(MessageType::PreKey) => self.decrypt_prekey(&sender, &opened.content, &mut changes),
            None => Err(UndecryptableCause::UnknownContentType(opened.content_type)),
        };
        let plaintext = match decrypted {
            Ok(p) => p,
            Err(cause) => return self.undecryptable(seq, digest, Some(peer), cause),
        };
        let mut events = Vec::new();
        let fresh = match Content::decode(&plaintext) {
            Err(e) => {
                events.push(Event::Undecryptable {
                    sender: Some(peer),
                    cause: UndecryptableCause::Content(e),
                });
                true
            }
            Ok(content) => self.accept(peer, content, &mut changes, &mut events),
        };
        if !fresh {
            // Content seen before (a replay): no session moves, no prekey goes; only the
            // envelope is recorded as processed.
            return Inbound::Done {
                changes: self.seq_changes(seq, digest),
                events,
            };
        }
        // Accepted on the strength of the sender's pinned list: the commit fails if
        // another process pinned another version meanwhile.
        let pinned = self.lists.get(&sender.account_id).map_or(0, |l| l.version());
        changes.pins.push((sender.account_id, pinned));
        Inbound::Done { changes, events }
    }

    /// Turns decrypted content into changes and events. False when it is a message this
    /// device stored before (a duplicate): the caller then drops the session changes.
    fn accept(&mut self, peer: PeerDevice, content: Content, changes: &mut Changes, events: &mut Vec<Event>) -> bool {
        let own = self.account_id();
        let message = |conversation, text, status| StoredMessage {
            id: content.message_id,
            conversation,
            sender: peer,
            timestamp_ms: content.timestamp_ms,
            text,
            status,
            order: 0,
        };
        let stored = match content.kind {
            ContentKind::Text { text } if peer.0 != own => message(peer.0, text, MessageStatus::Received),
            ContentKind::SyncTranscript { conversation, text } if peer.0 == own && conversation != own => {
                message(conversation, text, MessageStatus::SentElsewhere)
            }
            ContentKind::Delivered { message_ids } if peer.0 != own => {
                // Only messages this account sent in the conversation with the reporting
                // account: a receipt from P never moves a message sent to anyone else.
                changes.message_status.extend(message_ids.iter().map(|id| {
                    (
                        MessageKey {
                            conversation: peer.0,
                            sender: own,
                            id: *id,
                        },
                        MessageStatus::Delivered,
                    )
                }));
                events.push(Event::Delivered {
                    ids: message_ids,
                    by: peer,
                });
                return true;
            }
            _ => {
                events.push(Event::Undecryptable {
                    sender: Some(peer),
                    cause: UndecryptableCause::WrongSender,
                });
                return true;
            }
        };
        let key = stored.key();
        if self.seen.contains(&key) || changes.messages.iter().any(|m| m.key() == key) {
            return false;
        }
        if !self.conversations.contains(&stored.conversation) {
            changes.conversations.push(ConversationRecord {
                peer: stored.conversation,
            });
        }
        events.push(Event::MessageReceived(stored.clone()));
        changes.messages.push(stored);
        true
    }

    fn decrypt_ratchet(
        &mut self,
        sender: &DeviceIdentity,
        message: &[u8],
        changes: &mut Changes,
    ) -> Result<Vec<u8>, UndecryptableCause> {
        let peer = (sender.account_id, sender.device_id);
        let pickles = self
            .sessions
            .get(&peer)
            .map(|s| s.value.sessions.clone())
            .unwrap_or_default();
        let mut last = UndecryptableCause::NoSession;
        for (i, p) in pickles.iter().enumerate() {
            let Ok(mut session) = Session::unpickle(p, &self.pickle_key) else {
                continue;
            };
            if !session.remote().ct_eq(sender) {
                last = UndecryptableCause::SenderMismatch;
                continue;
            }
            match session.decrypt(MessageType::Ratchet, message) {
                Ok(plain) => {
                    changes
                        .sessions
                        .push(self.session_write(peer, &session, all_but(&pickles, i)));
                    return Ok(plain);
                }
                Err(DecryptError::Duplicate { .. }) => last = UndecryptableCause::Duplicate,
                Err(e) => {
                    if last != UndecryptableCause::Duplicate {
                        last = UndecryptableCause::Decrypt(e);
                    }
                }
            }
        }
        Err(last)
    }

    fn decrypt_prekey(
        &mut self,
        sender: &DeviceIdentity,
        bytes: &[u8],
        changes: &mut Changes,
    ) -> Result<Vec<u8>, UndecryptableCause> {
        let message = PreKeyMessage::decode(bytes).map_err(|e| UndecryptableCause::Decrypt(DecryptError::Decode(e)))?;
        if !message.initiator.ct_eq(sender) {
            return Err(UndecryptableCause::SenderMismatch);
        }
        let peer = (sender.account_id, sender.device_id);
        let pickles = self
            .sessions
            .get(&peer)
            .map(|s| s.value.sessions.clone())
            .unwrap_or_default();
        // §5.10: a session with this base key takes the message (§6.17).
        for (i, p) in pickles.iter().enumerate() {
            let Ok(mut session) = Session::unpickle(p, &self.pickle_key) else {
                continue;
            };
            if session.base_key() != &message.base_key || !session.remote().ct_eq(sender) {
                continue;
            }
            return match session.decrypt(MessageType::PreKey, bytes) {
                Ok(plain) => {
                    changes
                        .sessions
                        .push(self.session_write(peer, &session, all_but(&pickles, i)));
                    Ok(plain)
                }
                Err(DecryptError::Duplicate { .. }) => Err(UndecryptableCause::Duplicate),
                Err(e) => Err(UndecryptableCause::Decrypt(e)),
            };
        }
        let Some(list) = self.lists.get(&sender.account_id) else {
            return Err(UndecryptableCause::UnknownSender);
        };
        let load_x = |id: PreKeyId| -> Option<X25519PreKeySecret> {
            self.prekeys
                .get(&id)
                .and_then(|p| X25519PreKeySecret::unpickle(p, &self.pickle_key).ok())
        };
        let spk =
            load_x((PreKeyKind::Signed as u8, message.signed_prekey_id)).ok_or(UndecryptableCause::UnknownPreKey)?;
        let opk = match message.one_time_prekey_id {
            Some(id) => Some(load_x((PreKeyKind::OneTime as u8, id)).ok_or(UndecryptableCause::UnknownPreKey)?),
            None => None,
        };
        let kem_id = (message.kem_prekey.0 as u8, message.kem_prekey.1);
        let kem = self
            .prekeys
            .get(&kem_id)
            .and_then(|p| KemPreKeySecret::unpickle(p, &self.pickle_key).ok())
            .ok_or(UndecryptableCause::UnknownPreKey)?;
        let responded = sotto_crypto::respond(&self.device, list, &message, &spk, opk.as_ref(), &kem)
            .map_err(UndecryptableCause::PreKey)?;
        // §5.9: delete the one-time keys in the transaction that saves the session.
        if let Some(id) = responded.used.one_time_prekey_id {
            changes.prekeys_removed.push((PreKeyKind::OneTime as u8, id));
        }
        if responded.used.kem_prekey.0 == PreKeyKind::KemOneTime {
            changes.prekeys_removed.push(kem_id);
        }
        changes
            .sessions
            .push(self.session_write(peer, &responded.session, pickles));
        Ok(responded.plaintext)
    }
}

/// How failed attempts of one outbox item are spaced and bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The item is given up once it spent this long failing while the relay was
    /// reachable (ms).
    pub give_up_after_ms: u64,
    /// The backoff after the first failure (ms); it doubles with each one...
    pub backoff_min_ms: u64,
    /// ...up to this (ms).
    pub backoff_max_ms: u64,
}

/// Records a failed attempt of `item` that the item is to blame for, at `now_ms`, the
/// relay having been reachable since `online_since_ms` (time offline between two
/// failures does not count). `jitter` is a random draw. Returns the item with its new
/// attempts and backoff, or `None` when it has been failing for
/// [`RetryPolicy::give_up_after_ms`]: give it up.
pub fn record_failure(
    item: &OutboxItem,
    now_ms: u64,
    online_since_ms: u64,
    policy: &RetryPolicy,
    jitter: u64,
) -> Option<OutboxItem> {
    let mut next = item.clone();
    if item.last_failure_ms != 0 {
        let from = item.last_failure_ms.max(online_since_ms);
        next.failing_ms = next.failing_ms.saturating_add(now_ms.saturating_sub(from));
    }
    next.attempts = next.attempts.saturating_add(1);
    next.last_failure_ms = now_ms;
    if next.failing_ms >= policy.give_up_after_ms {
        return None;
    }
    let exp = next.attempts.saturating_sub(1).min(30);
    let base = policy
        .backoff_min_ms
        .saturating_mul(1u64 << exp)
        .min(policy.backoff_max_ms)
        .max(1);
    // Uniform in [base/2, base]: items failing together do not retry together.
    let delay = base / 2 + jitter % (base / 2 + 1);
    next.not_before_ms = now_ms.saturating_add(delay);
    Some(next)
}

/// Every pickle but the one at `i` (the session that took a message becomes the active one;
/// these stay behind it).
fn all_but(pickles: &[Vec<u8>], i: usize) -> Vec<Vec<u8>> {
    pickles
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, p)| p.clone())
        .collect()
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;
