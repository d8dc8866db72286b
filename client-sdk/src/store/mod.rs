//! Storage: one small trait per concern, a combining [`Store`] trait whose
//! [`commit`](Store::commit) writes one operation's [`Changes`] atomically, a memory
//! store, an encrypted SQLite store (feature `native`) and an encrypted IndexedDB store
//! (feature `web`, wasm32). The conformance suite
//! [`store_conformance_tests!`](crate::store_conformance_tests) runs on all three.
//!
//! Session and account rows carry a version and are written with compare-and-swap: a
//! write names the version it read, and the commit fails with [`StoreError::Conflict`]
//! if another process wrote the row since (the caller reloads and retries). Deleting a
//! one-time prekey that is already gone is a conflict too, so two processes sharing a
//! store can neither fork a ratchet nor use a one-time prekey twice.

use std::future::Future;

use sotto_crypto::codec::DecodeError;
use sotto_crypto::{AccountId, DeviceId};
use thiserror::Error;

use crate::ids::MessageId;

#[doc(hidden)]
pub mod conformance;
#[cfg(any(feature = "native", feature = "web"))]
mod crypt;
#[cfg(all(feature = "web", target_arch = "wasm32"))]
pub mod idb;
mod lock;
pub mod memory;
#[cfg(any(feature = "native", feature = "web"))]
mod records;
pub mod search;

/// The longest name (nickname or profile name) kept, in bytes.
pub const MAX_NAME_LEN: usize = 256;
#[cfg(feature = "native")]
pub mod sqlite;

#[cfg(any(feature = "native", feature = "web"))]
pub use crypt::StoreKey;
#[cfg(all(feature = "web", target_arch = "wasm32"))]
pub use idb::IdbStore;
pub use lock::{ProcessLock, ProcessRole};
pub use memory::MemoryStore;
#[cfg(feature = "native")]
pub use sqlite::SqliteStore;

/// `Send` on native targets; nothing on wasm32, whose futures are not `Send`.
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSend: Send {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send> MaybeSend for T {}
/// `Send` on native targets; nothing on wasm32, whose futures are not `Send`.
#[cfg(target_arch = "wasm32")]
pub trait MaybeSend {}
#[cfg(target_arch = "wasm32")]
impl<T> MaybeSend for T {}

/// `Sync` on native targets; nothing on wasm32, where JavaScript handles are not `Sync`
/// (and there is one thread).
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSync: Sync {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Sync> MaybeSync for T {}
/// `Sync` on native targets; nothing on wasm32, where JavaScript handles are not `Sync`
/// (and there is one thread).
#[cfg(target_arch = "wasm32")]
pub trait MaybeSync {}
#[cfg(target_arch = "wasm32")]
impl<T> MaybeSync for T {}

/// Why a store operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A compare-and-swap write found another version, or a one-time prekey to delete
    /// was already gone: another process changed the store. Reload and retry.
    #[error("the store changed underneath this operation")]
    Conflict,
    /// A stored value does not decrypt under the key given (wrong key or altered).
    #[error("a stored value does not decrypt (wrong store key or altered)")]
    Decrypt,
    /// A stored value does not decode.
    #[error("a stored value does not decode: {0}")]
    Decode(#[from] DecodeError),
    /// The database failed.
    #[error("database error: {0}")]
    Database(String),
    /// Another process holds this store's lock for the same role ([`Store::lock_process`]).
    #[error("another process has this store open as {}", role.code())]
    InUse {
        /// The role.
        role: ProcessRole,
    },
}

/// A row and the version it was read at.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Versioned<T> {
    /// The row's version: 1 after the first write, then one more per write.
    pub version: u64,
    /// The value.
    pub value: T,
}

/// A compare-and-swap write: `expected` is the version read (`None`: the row must not exist).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Write<T> {
    /// The version the writer read.
    pub expected: Option<u64>,
    /// The new value.
    pub value: T,
}

/// This device's account state. Secret parts are pickles (encrypted by crypto-core).
#[derive(Clone, PartialEq, Eq)]
pub struct AccountRecord {
    /// The account key pickle: only on the account's first device, from its creation
    /// until the recovery key is exported (docs/protocol.md §12A.1). A device without it
    /// works fully for messaging.
    pub account_key: Option<Vec<u8>>,
    /// The list key pickle (docs/protocol.md §4.1), on a device that holds it: the first
    /// device, a device granted it when linked, or the device that last used the
    /// recovery key. It signs the account's device lists while its epoch is current.
    pub list_key: Option<Vec<u8>>,
    /// The device pickle.
    pub device: Vec<u8>,
    /// The relay's base URL.
    pub relay_url: String,
    /// The current signed prekey's id.
    pub signed_prekey_id: u32,
    /// The next one-time X25519 prekey id.
    pub next_one_time_id: u32,
    /// The next ML-KEM prekey id.
    pub next_kem_id: u32,
    /// The highest mailbox seq whose envelope was processed and committed (since the
    /// mailbox epoch changed last).
    pub last_seq: u64,
    /// The relay's mailbox epoch `last_seq` counts in, once the relay names one: a new
    /// epoch means the relay's numbering started again, and `last_seq` is reset.
    pub mailbox_epoch: Option<[u8; 16]>,
    /// The current signed and last-resort prekeys were made (rotated) but the relay has
    /// not confirmed them yet: the next refill uploads them again.
    pub prekeys_unsent: bool,
    /// The account's access key (docs/protocol.md §13.8): shared with accepted contacts,
    /// its verifier set on the relay. `None` on a device that has not received it.
    pub access_key: Option<[u8; 32]>,
    /// The request policy the relay last confirmed for the access key (`Some(accept
    /// requests)`); `None` until the verifier was uploaded.
    pub access_sent: Option<bool>,
    /// This account's profile, as shared with its contacts.
    pub profile: Option<Profile>,
    /// The account's profile key (docs/protocol.md §15.9): shared with accepted contacts
    /// and its own devices. `None` until a profile is set or a device of the account
    /// shares it.
    pub profile_key: Option<[u8; 32]>,
    /// The `updated_ms` of the profile the relay holds under the current profile key
    /// (confirmed by the upload, or announced by another device of the account); 0 when
    /// none is known to be there.
    pub profile_uploaded_ms: u64,
}

/// A profile: the name an account shows its contacts, and an optional small avatar.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Profile {
    /// The display name (at most [`MAX_NAME_LEN`] bytes).
    pub name: String,
    /// A small avatar image (at most [`crate::content::MAX_AVATAR_LEN`] bytes).
    pub avatar: Option<Vec<u8>>,
    /// When it was set (the owner's clock, Unix ms): the newest one wins.
    pub updated_ms: u64,
}

/// The name's length and whether there is an avatar, not their contents.
impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("name_len", &self.name.len())
            .field("avatar", &self.avatar.as_ref().map(Vec::len))
            .field("updated_ms", &self.updated_ms)
            .finish()
    }
}

impl std::fmt::Debug for AccountRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountRecord")
            .field("signed_prekey_id", &self.signed_prekey_id)
            .field("last_seq", &self.last_seq)
            .field("mailbox_epoch", &self.mailbox_epoch.is_some())
            .finish_non_exhaustive()
    }
}

/// A remote device: account and device id.
pub type PeerDevice = (AccountId, DeviceId);

/// The sessions with one remote device: pickles, the active one first, at most
/// [`crate::machine::MAX_SESSIONS_PER_DEVICE`].
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SessionSet {
    /// Session pickles, active first.
    pub sessions: Vec<Vec<u8>>,
}

impl std::fmt::Debug for SessionSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSet")
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

/// The most seal keys a group record keeps: the current state's and those of recent
/// states, for envelopes sealed just before a commit that arrive after it.
pub const MAX_SEAL_KEYS: usize = 8;

/// The most sender-key chains kept per member device and group: the current one and
/// the one before (messages sent just before a rotation).
pub const MAX_SENDER_CHAINS: usize = 2;

/// A group this device is in, or was in (the record stays for its history). Secret
/// parts: the seal keys, this device's chain, the members' access keys.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupRecord {
    /// The group's commits as this device keeps them ([`crate::group::LogParts`], encoded).
    pub log: Vec<u8>,
    /// Seal keys (docs/protocol.md §7A) of recent states: (state id, key), newest first,
    /// at most [`MAX_SEAL_KEYS`].
    pub seal_keys: Vec<([u8; 32], [u8; 32])>,
    /// This device's sender-key chain for the group (a pickle), once it made one.
    pub chain: Option<Vec<u8>>,
    /// The devices this device's chain was distributed to.
    pub chain_holders: Vec<PeerDevice>,
    /// The access keys members shared with the group (docs/protocol.md §13.8), presented
    /// on sends to them.
    pub member_access: Vec<(AccountId, [u8; 32])>,
    /// False once this account left or was removed.
    pub active: bool,
    /// This device's recent commits (encoded), kept until they can no longer lose a fork,
    /// so that one that lost is made again on the winner (docs/protocol.md §14.3).
    pub own_commits: Vec<Vec<u8>>,
    /// The group's disappearing-message timer, seconds (0: off).
    pub expire_s: u32,
    /// The timestamp of the item that set the timer (the latest one wins).
    pub timer_at_ms: u64,
    /// Messages stored up to this `order` are read on this device.
    pub read_up_to: u64,
}

/// How many of its own commits a device keeps watching per group.
pub const MAX_OWN_COMMITS: usize = 16;

/// Counts only: the record holds keys.
impl std::fmt::Debug for GroupRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupRecord")
            .field("log_len", &self.log.len())
            .field("seal_keys", &self.seal_keys.len())
            .field("chain", &self.chain.is_some())
            .field("chain_holders", &self.chain_holders.len())
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

/// One member device's sender-key chains in one group: receiver pickles, newest
/// first, at most [`MAX_SENDER_CHAINS`].
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SenderKeySet {
    /// The pickles.
    pub chains: Vec<Vec<u8>>,
}

impl std::fmt::Debug for SenderKeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderKeySet")
            .field("chains", &self.chains.len())
            .finish_non_exhaustive()
    }
}

/// Which sender-key set: the group and the member device.
pub type SenderKeyId = (crate::group::GroupId, PeerDevice);

/// Which prekey secret: kind byte (1 signed, 2 one-time, 3 ML-KEM one-time, 4 ML-KEM
/// last resort) and id.
pub type PreKeyId = (u8, u32);

/// A conversation: a 1:1 chat with a contact's account.
#[derive(Clone, PartialEq, Eq)]
pub struct ConversationRecord {
    /// The contact's account id.
    pub peer: AccountId,
    /// This account accepted the contact: it wrote to them (on any of its devices) or
    /// accepted their message request. Only then does it share its access key with
    /// them. A conversation the contact started, not accepted yet, is a message request.
    pub accepted: bool,
    /// The contact's access key, as they last shared it: sends to them present it, so
    /// they are not message requests (docs/protocol.md §13.8).
    pub access_key: Option<[u8; 32]>,
    /// This account blocked the contact: its messages are dropped and get no receipts.
    pub blocked: bool,
    /// The disappearing-message timer, seconds (0: off).
    pub expire_s: u32,
    /// The timestamp of the item that set the timer (the latest one wins).
    pub timer_at_ms: u64,
    /// The local nickname, shown instead of the contact's profile name.
    pub nickname: Option<String>,
    /// The contact's profile name, as they last shared it.
    pub profile_name: Option<String>,
    /// The contact's avatar, as they last shared it.
    pub profile_avatar: Option<Vec<u8>>,
    /// When the contact set the profile they last shared (their clock, Unix ms).
    pub profile_at_ms: u64,
    /// The contact's profile key, as they last shared it.
    pub profile_key: Option<[u8; 32]>,
    /// The `updated_ms` the contact last announced with their profile key: while it is
    /// newer than `profile_at_ms`, the profile is fetched from the relay.
    pub profile_wanted_ms: u64,
    /// Messages stored up to this `order` are read on this device.
    pub read_up_to: u64,
    /// The contact's safety number changed since this account last acknowledged it:
    /// sends to them wait for [`crate::Client::acknowledge_identity`].
    pub identity_unacked: bool,
}

impl ConversationRecord {
    /// A conversation with `peer`, not accepted, without their access key.
    pub fn new(peer: AccountId) -> Self {
        Self {
            peer,
            accepted: false,
            access_key: None,
            blocked: false,
            expire_s: 0,
            timer_at_ms: 0,
            nickname: None,
            profile_name: None,
            profile_avatar: None,
            profile_at_ms: 0,
            profile_key: None,
            profile_wanted_ms: 0,
            read_up_to: 0,
            identity_unacked: false,
        }
    }
}

/// Leaves the access and profile keys out.
impl std::fmt::Debug for ConversationRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConversationRecord")
            .field("peer", &self.peer)
            .field("accepted", &self.accepted)
            .field("access_key", &self.access_key.is_some())
            .field("blocked", &self.blocked)
            .field("expire_s", &self.expire_s)
            .finish_non_exhaustive()
    }
}

/// Where a message is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[non_exhaustive]
pub enum MessageStatus {
    /// Received from a contact.
    Received,
    /// Written here, waiting in the outbox.
    Queued,
    /// Stored by the relay for every device.
    Sent,
    /// A device of the contact reported it stored.
    Delivered,
    /// A reader reported it read (a read receipt).
    Read,
    /// Sent from another device of this account (a sync transcript).
    SentElsewhere,
    /// Given up: the relay refused it or the retry bound passed. `retryable` when
    /// sending it again later may work (for example the recipient's mailbox was full).
    Failed {
        /// True when a later attempt may succeed.
        retryable: bool,
    },
}

impl MessageStatus {
    /// True when a message in `old` may move to `self`: statuses only move forward
    /// (`Queued → Failed → Sent → Delivered → Read`), so a late answer never undoes a
    /// receipt (and a receipt for a message given up still shows it delivered). A copy
    /// sent from another device of this account moves to `Delivered` and `Read` too.
    pub fn advances_from(self, old: MessageStatus) -> bool {
        let rank = |s: MessageStatus| match s {
            Self::Queued => Some(0),
            Self::Failed { .. } => Some(1),
            Self::Sent | Self::SentElsewhere => Some(2),
            Self::Delivered => Some(3),
            Self::Read => Some(4),
            Self::Received => None,
        };
        if old == Self::SentElsewhere && !matches!(self, Self::Delivered | Self::Read) {
            return false;
        }
        matches!((rank(old), rank(self)), (Some(a), Some(b)) if b > a)
    }

    /// True for messages this account wrote.
    pub fn is_outgoing(self) -> bool {
        !matches!(self, Self::Received)
    }
}

/// Where a message id is unique: in one conversation, from one sender account. Two
/// accounts can never claim one message (deduplication, receipts and status updates
/// all go by this key).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct MessageKey {
    /// The conversation (the contact's account id).
    pub conversation: AccountId,
    /// The account that wrote the message (the contact, or this account).
    pub sender: AccountId,
    /// The message id.
    pub id: MessageId,
}

impl MessageKey {
    /// The bytes the stores derive a row key from: id ‖ conversation ‖ sender account.
    pub fn to_bytes(&self) -> [u8; 80] {
        let mut b = [0u8; 80];
        b[..16].copy_from_slice(&self.id.0);
        b[16..48].copy_from_slice(self.conversation.as_bytes());
        b[48..].copy_from_slice(self.sender.as_bytes());
        b
    }
}

/// What a timeline item is.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub enum MessageKind {
    /// A text (maybe a reply).
    #[default]
    Text,
    /// Someone set the conversation's disappearing-message timer.
    Timer {
        /// Seconds; 0 turned it off.
        expire_s: u32,
    },
    /// Content of a kind this version does not know, from a newer client: shown as
    /// "unsupported", never dropped.
    Unsupported {
        /// Its kind (or item tag) byte.
        kind: u8,
    },
    /// The contact's safety number changed (a device was added or re-keyed): a local
    /// item, never sent.
    IdentityChanged,
}

/// One account's reaction to a message.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Reaction {
    /// Who reacted.
    pub by: AccountId,
    /// The emoji; empty once removed (kept, so that an older reaction arriving late does
    /// not come back).
    pub emoji: String,
    /// The reaction's timestamp (the reactor's clock): the latest one counts.
    pub at_ms: u64,
}

/// The most reactions one message keeps (one per account).
pub const MAX_REACTIONS: usize = crate::group::MAX_MEMBERS;

/// A change to a stored message.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageUpdate {
    /// A new status (applied only when it advances, [`MessageStatus::advances_from`]).
    Status(MessageStatus),
    /// Its author edited it at `at_ms` (applied when newer than the last edit).
    Edit {
        /// The new text.
        text: String,
        /// The edit's timestamp.
        at_ms: u64,
    },
    /// Its author deleted it for everyone: text, quote and reactions go.
    Delete,
    /// An account reacted (or removed its reaction, with an empty emoji) at `at_ms`.
    React(Reaction),
    /// Starts its disappearing timer: it expires at this time (Unix ms), unless it already
    /// expires earlier.
    ExpireAt(u64),
    /// A failed message goes back in the send queue (`Failed` → `Queued`).
    Requeue,
    /// Sending it was given up (applied when `Failed` advances, as a status), with a
    /// stable code for why.
    Fail {
        /// True when a later attempt may work.
        retryable: bool,
        /// Why: the relay's error code name (`UNKNOWN_ACCOUNT`, `MAILBOX_FULL`, …) or
        /// the client's (`DEVICE_LIST`, `ENCRYPT`, …).
        code: String,
    },
}

/// Leaves texts out.
impl std::fmt::Debug for MessageUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Status(s) => f.debug_tuple("Status").field(s).finish(),
            Self::Edit { at_ms, .. } => f.debug_struct("Edit").field("at_ms", at_ms).finish_non_exhaustive(),
            Self::Delete => f.write_str("Delete"),
            Self::React(r) => f.debug_struct("React").field("at_ms", &r.at_ms).finish_non_exhaustive(),
            Self::ExpireAt(t) => f.debug_tuple("ExpireAt").field(t).finish(),
            Self::Requeue => f.write_str("Requeue"),
            Self::Fail { retryable, code } => f
                .debug_struct("Fail")
                .field("retryable", retryable)
                .field("code", code)
                .finish(),
        }
    }
}

/// A message in a conversation.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The message id.
    pub id: MessageId,
    /// The conversation (the contact's account id).
    pub conversation: AccountId,
    /// The device that wrote it.
    pub sender: PeerDevice,
    /// The sender's timestamp, Unix milliseconds.
    pub timestamp_ms: u64,
    /// The text.
    pub text: String,
    /// Its state.
    pub status: MessageStatus,
    /// Its place in the store: increasing in the order messages were stored (set by the
    /// store; ignored on insert).
    pub order: u64,
    /// What it is.
    pub kind: MessageKind,
    /// The message it replies to.
    pub quote: Option<crate::content::Quote>,
    /// When its author last edited it (the edit's timestamp); 0 if never.
    pub edited_at_ms: u64,
    /// Its author deleted it for everyone (the text is gone).
    pub deleted: bool,
    /// Reactions, one per account (removed ones kept with an empty emoji).
    pub reactions: Vec<Reaction>,
    /// The disappearing-message timer it was sent with, seconds (0: none).
    pub expire_s: u32,
    /// When it leaves the store (Unix ms); 0 for never.
    pub expires_at_ms: u64,
    /// Why sending it failed (a stable code), while its status is `Failed`.
    pub failure: Option<String>,
    /// The file it carries (its `text` is the caption), to download with
    /// [`crate::Client::download_attachment`].
    pub attachment: Option<Box<crate::content::Attachment>>,
}

/// The longest failure code kept, in bytes.
pub const MAX_FAILURE_CODE_LEN: usize = 64;

impl MessageUpdate {
    /// True for the updates that move a status (reported in [`Committed::advanced`]).
    pub fn is_status(&self) -> bool {
        matches!(self, Self::Status(_) | Self::Fail { .. })
    }
}

impl StoredMessage {
    /// A text message with no reply, edit, reaction or timer.
    pub fn text(
        id: MessageId,
        conversation: AccountId,
        sender: PeerDevice,
        timestamp_ms: u64,
        text: String,
        status: MessageStatus,
    ) -> Self {
        Self {
            id,
            conversation,
            sender,
            timestamp_ms,
            text,
            status,
            order: 0,
            kind: MessageKind::Text,
            quote: None,
            edited_at_ms: 0,
            deleted: false,
            reactions: Vec::new(),
            expire_s: 0,
            expires_at_ms: 0,
            failure: None,
            attachment: None,
        }
    }

    /// Applies `update`; false when it changes nothing (a status that does not advance,
    /// an edit older than the last one, anything but a delete on a deleted message).
    pub fn apply(&mut self, update: &MessageUpdate) -> bool {
        match update {
            MessageUpdate::Status(s) => {
                if !s.advances_from(self.status) {
                    return false;
                }
                self.status = *s;
            }
            MessageUpdate::Edit { text, at_ms } => {
                if self.deleted || *at_ms <= self.edited_at_ms || self.kind != MessageKind::Text {
                    return false;
                }
                self.text.clone_from(text);
                self.edited_at_ms = *at_ms;
            }
            MessageUpdate::Delete => {
                if self.deleted {
                    return false;
                }
                self.deleted = true;
                self.text.clear();
                self.quote = None;
                self.attachment = None;
                self.reactions.clear();
            }
            MessageUpdate::React(r) => {
                if self.deleted {
                    return false;
                }
                let full = self.reactions.len() >= MAX_REACTIONS;
                match self.reactions.iter_mut().find(|x| x.by == r.by) {
                    Some(x) if x.at_ms >= r.at_ms => return false,
                    Some(x) => *x = r.clone(),
                    None if full => return false,
                    None => self.reactions.push(r.clone()),
                }
            }
            MessageUpdate::ExpireAt(t) => {
                if self.expires_at_ms != 0 && self.expires_at_ms <= *t {
                    return false;
                }
                self.expires_at_ms = *t;
            }
            MessageUpdate::Requeue => {
                if !matches!(self.status, MessageStatus::Failed { .. }) {
                    return false;
                }
                self.status = MessageStatus::Queued;
                self.failure = None;
            }
            MessageUpdate::Fail { retryable, code } => {
                let s = MessageStatus::Failed { retryable: *retryable };
                if !s.advances_from(self.status) {
                    return false;
                }
                self.status = s;
                self.failure = Some(crate::content::truncate_utf8(code, MAX_FAILURE_CODE_LEN).to_owned());
            }
        }
        true
    }
    /// Its key: conversation, sender account and id.
    pub fn key(&self) -> MessageKey {
        MessageKey {
            conversation: self.conversation,
            sender: self.sender.0,
            id: self.id,
        }
    }
}

/// Leaves the text out (its length only).
impl std::fmt::Debug for StoredMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredMessage")
            .field("id", &self.id)
            .field("status", &self.status)
            .field("order", &self.order)
            .field("text_len", &self.text.len())
            .finish_non_exhaustive()
    }
}

/// A message waiting to be sent: the content and the account it goes to, and how its
/// sending went so far (kept with the item, so a restart does not reset the bound on
/// retries).
#[derive(Clone, PartialEq, Eq)]
pub struct OutboxItem {
    /// The id (the content's message id).
    pub id: MessageId,
    /// The recipient account.
    pub to: AccountId,
    /// The encoded [`crate::content::Content`].
    pub content: Vec<u8>,
    /// Failed attempts the item was to blame for (a rejection by the relay, a recipient
    /// that cannot be reached); going offline does not count.
    pub attempts: u32,
    /// Time spent failing while the relay was reachable, in milliseconds.
    pub failing_ms: u64,
    /// When the last such failure happened (Unix ms); 0 before the first.
    pub last_failure_ms: u64,
    /// Not sent before this time (Unix ms): the backoff after a failure, or a
    /// receipt's random delay; 0 for at once.
    pub not_before_ms: u64,
}

impl OutboxItem {
    /// A new item, never tried.
    pub fn new(id: MessageId, to: AccountId, content: Vec<u8>) -> Self {
        Self {
            id,
            to,
            content,
            attempts: 0,
            failing_ms: 0,
            last_failure_ms: 0,
            not_before_ms: 0,
        }
    }
}

/// Leaves the content out (its length only).
impl std::fmt::Debug for OutboxItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxItem")
            .field("id", &self.id)
            .field("content_len", &self.content.len())
            .finish_non_exhaustive()
    }
}

/// The SHA-256 digest of an inbound envelope's bytes.
pub type EnvelopeDigest = [u8; 32];

/// How many digests of processed envelopes a store keeps (the oldest are dropped).
pub const MAX_PROCESSED_ENVELOPES: usize = 20_000;

/// How many envelopes may wait in the pending-inbound table. When it is full the client
/// stops acknowledging: the relay keeps the rest.
pub const MAX_PENDING_INBOUND: usize = 256;

/// An inbound envelope that could not be given a verdict yet (its sender's device list
/// could not be fetched for a transient reason). It is kept, acknowledged, and retried.
#[derive(Clone, PartialEq, Eq)]
pub struct PendingInbound {
    /// The envelope's digest (its key).
    pub digest: EnvelopeDigest,
    /// The claimed sender account (retries go in order per sender).
    pub sender: AccountId,
    /// The mailbox seq it came with.
    pub seq: u64,
    /// When it was first put aside, Unix milliseconds.
    pub first_seen_ms: u64,
    /// The envelope bytes (sealed).
    pub envelope: Vec<u8>,
}

/// Leaves the envelope out (its length only).
impl std::fmt::Debug for PendingInbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingInbound")
            .field("seq", &self.seq)
            .field("first_seen_ms", &self.first_seen_ms)
            .field("envelope_len", &self.envelope.len())
            .finish_non_exhaustive()
    }
}

/// A page of a conversation: the last `limit` messages stored before `before`
/// (an `order`), oldest first.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Page {
    /// Only messages with a smaller `order`; `None` for the newest.
    pub before: Option<u64>,
    /// At most this many (capped at [`MAX_PAGE`]).
    pub limit: u32,
}

/// The most messages one page returns.
pub const MAX_PAGE: u32 = 10_000;

impl Default for Page {
    fn default() -> Self {
        Self {
            before: None,
            limit: 100,
        }
    }
}

/// Everything one operation changes, written in one transaction.
#[derive(Clone, Default)]
pub struct Changes {
    /// The account row.
    pub account: Option<Write<AccountRecord>>,
    /// Session rows.
    pub sessions: Vec<(PeerDevice, Write<SessionSet>)>,
    /// Prekey secrets to add (pickles).
    pub prekeys_added: Vec<(PreKeyId, Vec<u8>)>,
    /// Prekey secrets to delete; each must exist (else [`StoreError::Conflict`]).
    pub prekeys_removed: Vec<PreKeyId>,
    /// Pinned device lists (signed bytes), replacing the stored one. A pin only moves
    /// forward: a list with a lower version than the stored one, or another list at the
    /// same version, is [`StoreError::Conflict`].
    pub device_lists: Vec<(AccountId, Vec<u8>)>,
    /// Conversations to create, or to replace when stored (the machine writes the whole
    /// current record).
    pub conversations: Vec<ConversationRecord>,
    /// Conversations to delete (before `conversations` are written); unknown ones are
    /// skipped.
    pub conversations_removed: Vec<AccountId>,
    /// Messages to insert; one whose [`MessageKey`] is stored already is skipped.
    pub messages: Vec<StoredMessage>,
    /// Changes to stored messages: statuses, edits, deletes, reactions, timers (unknown
    /// keys are skipped; see [`StoredMessage::apply`]).
    pub message_updates: Vec<(MessageKey, MessageUpdate)>,
    /// Messages to remove (expired, or their conversation deleted); unknown keys are
    /// skipped.
    pub messages_removed: Vec<MessageKey>,
    /// Outbox items to append.
    pub outbox_add: Vec<OutboxItem>,
    /// Outbox items to remove (unknown ids are skipped).
    pub outbox_remove: Vec<MessageId>,
    /// The pinned device-list version of each account this operation relied on: if the
    /// stored pin of one of them is another version (another process pinned a newer
    /// list), the commit is [`StoreError::Conflict`]. `0` stands for "no pin".
    pub pins: Vec<(AccountId, u64)>,
    /// Digests of the inbound envelopes this operation processed (the store keeps the
    /// last [`MAX_PROCESSED_ENVELOPES`]).
    pub envelopes: Vec<EnvelopeDigest>,
    /// Envelopes to put in the pending-inbound table (kept if their digest is there).
    pub pending_add: Vec<PendingInbound>,
    /// Pending envelopes to drop, by digest (unknown ones are skipped).
    pub pending_remove: Vec<EnvelopeDigest>,
    /// Outbox items whose stored value is replaced (attempts, backoff), keeping their
    /// place in the outbox; unknown ids are skipped.
    pub outbox_update: Vec<OutboxItem>,
    /// Group rows (compare-and-swap, as sessions).
    pub groups: Vec<(crate::group::GroupId, Write<GroupRecord>)>,
    /// Sender-key rows (compare-and-swap, as sessions).
    pub sender_keys: Vec<(SenderKeyId, Write<SenderKeySet>)>,
    /// The unspent attachment upload tokens to keep, replacing those kept (encoded by the
    /// client; docs/protocol.md §16.3). Kept across restarts so that a token is rarely
    /// fetched right before the upload it pays for.
    pub blob_tokens: Option<Vec<u8>>,
}

/// Counts only: the values hold plaintext (texts, contents) and pickles.
impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes")
            .field("account", &self.account.is_some())
            .field("sessions", &self.sessions.len())
            .field("prekeys_added", &self.prekeys_added.len())
            .field("prekeys_removed", &self.prekeys_removed.len())
            .field("device_lists", &self.device_lists.len())
            .field("conversations", &self.conversations.len())
            .field("conversations_removed", &self.conversations_removed.len())
            .field("messages", &self.messages.len())
            .field("message_updates", &self.message_updates.len())
            .field("messages_removed", &self.messages_removed.len())
            .field("outbox_add", &self.outbox_add.len())
            .field("outbox_remove", &self.outbox_remove.len())
            .field("pins", &self.pins.len())
            .field("envelopes", &self.envelopes.len())
            .field("pending_add", &self.pending_add.len())
            .field("pending_remove", &self.pending_remove.len())
            .field("outbox_update", &self.outbox_update.len())
            .field("groups", &self.groups.len())
            .field("sender_keys", &self.sender_keys.len())
            .field("blob_tokens", &self.blob_tokens.is_some())
            .finish_non_exhaustive()
    }
}

/// The version of a signed device list, read without verifying it (a pin's bytes were
/// verified before they were committed).
pub fn pinned_version(list: &[u8]) -> Result<u64, StoreError> {
    sotto_crypto::SignedDeviceList::from_bytes(list)
        .map_err(StoreError::Decode)?
        .account_key_and_version()
        .map(|(_, v)| v)
        .map_err(|_| StoreError::Decode(DecodeError::Invalid { field: "device list" }))
}

/// Checks a pin write against the stored pin: forward only.
pub(crate) fn check_pin_write(stored: Option<&[u8]>, new: &[u8]) -> Result<(), StoreError> {
    let Some(stored) = stored else { return Ok(()) };
    let (old_v, new_v) = (pinned_version(stored)?, pinned_version(new)?);
    if new_v < old_v || (new_v == old_v && stored != new) {
        return Err(StoreError::Conflict);
    }
    Ok(())
}

/// Checks an expected pin against the stored pin.
pub(crate) fn check_pin(stored: Option<&[u8]>, expected: u64) -> Result<(), StoreError> {
    let current = match stored {
        Some(l) => pinned_version(l)?,
        None => 0,
    };
    if current != expected {
        return Err(StoreError::Conflict);
    }
    Ok(())
}

impl Changes {
    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.account.is_none()
            && self.sessions.is_empty()
            && self.prekeys_added.is_empty()
            && self.prekeys_removed.is_empty()
            && self.device_lists.is_empty()
            && self.conversations.is_empty()
            && self.conversations_removed.is_empty()
            && self.messages.is_empty()
            && self.message_updates.is_empty()
            && self.messages_removed.is_empty()
            && self.outbox_add.is_empty()
            && self.outbox_remove.is_empty()
            && self.envelopes.is_empty()
            && self.pending_add.is_empty()
            && self.pending_remove.is_empty()
            && self.outbox_update.is_empty()
            && self.groups.is_empty()
            && self.sender_keys.is_empty()
            && self.blob_tokens.is_none()
    }
}

/// What a commit did.
#[derive(Clone, Default, PartialEq, Eq, Debug)]
pub struct Committed {
    /// The messages actually inserted (not already stored), with their `order`.
    pub inserted: Vec<(MessageId, u64)>,
    /// The status changes that took effect (status entries of [`Changes::message_updates`] whose
    /// message is stored and whose status moved forward), in the order given, each with
    /// the status it moved from.
    pub advanced: Vec<(MessageKey, MessageStatus)>,
    /// The new version of the account row, if written.
    pub account_version: Option<u64>,
    /// The new versions of the session rows written, in the order given.
    pub session_versions: Vec<u64>,
    /// The new versions of the group rows written, in the order given.
    pub group_versions: Vec<u64>,
    /// The new versions of the sender-key rows written, in the order given.
    pub sender_key_versions: Vec<u64>,
}

/// The account row.
pub trait AccountStore {
    /// The account, if one was created.
    fn load_account(&self) -> impl Future<Output = Result<Option<Versioned<AccountRecord>>, StoreError>> + MaybeSend;
}

/// Session rows, one per remote device.
pub trait SessionStore {
    /// Every session row.
    fn load_sessions(
        &self,
    ) -> impl Future<Output = Result<Vec<(PeerDevice, Versioned<SessionSet>)>, StoreError>> + MaybeSend;
}

/// This device's prekey secrets.
pub trait PreKeyStore {
    /// Every prekey secret (pickles).
    fn load_prekeys(&self) -> impl Future<Output = Result<Vec<(PreKeyId, Vec<u8>)>, StoreError>> + MaybeSend;
}

/// Pinned device lists.
pub trait DeviceListStore {
    /// Every pinned list (signed bytes).
    fn load_device_lists(&self) -> impl Future<Output = Result<Vec<(AccountId, Vec<u8>)>, StoreError>> + MaybeSend;
}

/// Conversations and their messages.
pub trait MessageStore {
    /// Every conversation.
    fn conversations(&self) -> impl Future<Output = Result<Vec<ConversationRecord>, StoreError>> + MaybeSend;
    /// A page of one conversation, oldest first.
    fn messages(
        &self,
        conversation: AccountId,
        page: Page,
    ) -> impl Future<Output = Result<Vec<StoredMessage>, StoreError>> + MaybeSend;
    /// The keys of the last `limit` messages stored (for deduplication after a restart).
    fn recent_message_ids(&self, limit: u32) -> impl Future<Output = Result<Vec<MessageKey>, StoreError>> + MaybeSend;
    /// One message, by its key.
    fn message(&self, key: MessageKey) -> impl Future<Output = Result<Option<StoredMessage>, StoreError>> + MaybeSend;
    /// Texts that match `query` ([`search::matches`]: every word of the query starts a
    /// word of the text), deleted ones left out, newest first, at most `limit`.
    fn search(
        &self,
        query: &str,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<StoredMessage>, StoreError>> + MaybeSend;
    /// The messages stored after `order`, in every conversation, oldest first, at most
    /// `limit`: a durable cursor for code that handles every message once (a bot keeps the
    /// last `order` it handled).
    fn messages_after(
        &self,
        order: u64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<StoredMessage>, StoreError>> + MaybeSend;
    /// The keys of messages whose disappearing timer ran out at `now_ms` (at most
    /// `limit`, the earliest first).
    fn expired_messages(
        &self,
        now_ms: u64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<MessageKey>, StoreError>> + MaybeSend;
}

/// What the inbound path remembers across restarts.
pub trait InboundStore {
    /// The digests of the last `limit` processed envelopes, newest first.
    fn processed_envelopes(
        &self,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<EnvelopeDigest>, StoreError>> + MaybeSend;
    /// The pending-inbound table, oldest first.
    fn pending_inbound(&self) -> impl Future<Output = Result<Vec<PendingInbound>, StoreError>> + MaybeSend;
    /// The kept upload tokens as last written ([`Changes::blob_tokens`]); empty when none.
    fn blob_tokens(&self) -> impl Future<Output = Result<Vec<u8>, StoreError>> + MaybeSend;
}

/// Group rows and sender-key rows.
pub trait GroupStore {
    /// Every group row.
    fn load_groups(
        &self,
    ) -> impl Future<Output = Result<Vec<(crate::group::GroupId, Versioned<GroupRecord>)>, StoreError>> + MaybeSend;
    /// Every sender-key row.
    fn load_sender_keys(
        &self,
    ) -> impl Future<Output = Result<Vec<(SenderKeyId, Versioned<SenderKeySet>)>, StoreError>> + MaybeSend;
}

/// Messages waiting to be sent, oldest first.
pub trait OutboxStore {
    /// The first `limit` items.
    fn outbox(&self, limit: u32) -> impl Future<Output = Result<Vec<OutboxItem>, StoreError>> + MaybeSend;
}

/// A complete store: every concern plus an atomic commit.
pub trait Store:
    AccountStore
    + SessionStore
    + PreKeyStore
    + DeviceListStore
    + MessageStore
    + OutboxStore
    + InboundStore
    + GroupStore
    + MaybeSend
    + MaybeSync
    + 'static
{
    /// Writes `changes` in one transaction: all of it or, on any error, none of it. The
    /// transaction is durable when this returns, and so is every earlier one.
    fn commit(&self, changes: Changes) -> impl Future<Output = Result<Committed, StoreError>> + MaybeSend;

    /// Like [`Store::commit`], but a power loss may undo the transaction until the next
    /// [`Store::sync`] or durable commit returns. For work that is redone when lost: an
    /// inbound envelope is acked only after the `sync` that follows its commit, so the
    /// relay delivers it again. Durable unless a backend can do better.
    fn commit_deferred(&self, changes: Changes) -> impl Future<Output = Result<Committed, StoreError>> + MaybeSend {
        self.commit(changes)
    }

    /// Makes every earlier commit durable. A backend that overrides
    /// [`Store::commit_deferred`] must override this too.
    fn sync(&self) -> impl Future<Output = Result<(), StoreError>> + MaybeSend {
        std::future::ready(Ok(()))
    }

    /// Removes, as far as the backend can, the older copies of overwritten or deleted
    /// records that it still keeps in its files (called after a secret left the store,
    /// such as the account key once the recovery key was exported). No-op unless a
    /// backend keeps such copies.
    fn scrub(&self) -> impl Future<Output = Result<(), StoreError>> + MaybeSend {
        std::future::ready(Ok(()))
    }

    /// Takes this store's process lock for `role` (see [`ProcessLock`]), held until the
    /// guard drops: [`StoreError::InUse`] while another process (or another client in
    /// this one) holds it. `Ok(None)` for a backend no other process can open.
    fn lock_process(&self, role: ProcessRole) -> Result<Option<ProcessLock>, StoreError> {
        let _ = role;
        Ok(None)
    }
}
