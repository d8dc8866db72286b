//! What the machine hands back: its errors, events, network needs, send plans and the
//! result of processing one inbound envelope.

use sotto_crypto::{
    AccountId, DecryptError, DeviceId, DeviceIdentity, DeviceListChange, DeviceListError, EncryptError, OpenError,
    PickleError, SealError, SenderKeyError, X3dhError,
};
use sotto_proto::Recipient;
use thiserror::Error;

use crate::content::ContentError;
use crate::group::{GroupError, GroupId};
use crate::ids::MessageId;
use crate::store::{Changes, MessageKey, PeerDevice, StoredMessage};

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
    /// This device does not hold the account key (it is only on the first device until
    /// the recovery key is exported, and in the recovery key).
    #[error("this device does not hold the account key")]
    NoAccountKey,
    /// This device does not hold the current list key, so it cannot sign a device list.
    #[error("this device does not hold the list key")]
    NoListKey,
    /// The device to remove holds the list key: only a new list key, made with the
    /// recovery key, removes it.
    #[error("device {0} holds the list key; removing it needs the recovery key")]
    NeedsRecoveryKey(DeviceId),
    /// A group change or state is refused.
    #[error("group change refused: {0}")]
    Group(#[from] GroupError),
    /// No such group, or this account is no longer in it.
    #[error("no such group, or not a member")]
    UnknownGroup,
    /// Sender-key encryption failed.
    #[error("sender-key encryption failed: {0}")]
    SenderKey(SenderKeyError),
    /// A timer above the bound.
    #[error("timer above {max_s} s")]
    TimerTooLong {
        /// The bound.
        max_s: u32,
    },
    /// Content this version cannot send.
    #[error("unsupported content")]
    Unsupported,
    /// The contact is blocked.
    #[error("contact is blocked")]
    Blocked,
    /// The contact's safety number changed and was not acknowledged yet.
    #[error("the contact's safety number changed: acknowledge it before sending")]
    IdentityUnacknowledged,
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
    /// A group envelope under no seal key this device holds (a group it is not in, or
    /// was removed from).
    #[error("no group key opens the envelope")]
    NoGroupKey,
    /// A group message that does not decrypt: an unknown chain, a signature that does
    /// not verify (a member forging another's message), a jump too far.
    #[error("group message refused: {0}")]
    SenderKey(SenderKeyError),
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
    /// A device of the contact (or of a group member) reported messages stored.
    Delivered {
        /// The conversation: the contact's account id, or a group's conversation id.
        conversation: AccountId,
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
    /// A group was created, joined or changed (members, roles, title), or this account
    /// left it or was removed ([`crate::machine::GroupInfo::active`]).
    GroupChanged {
        /// The group.
        group: GroupId,
    },
    /// A change to a group was refused (not by an admin, stale, or malformed).
    GroupChangeRejected {
        /// The group.
        group: GroupId,
        /// Why.
        error: GroupError,
    },
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
    /// The author of a message edited it (its stored text is the new one). Sent for
    /// every edit received; one naming a message that is not stored, or not the
    /// sender's, changes nothing.
    MessageEdited {
        /// The message.
        key: MessageKey,
    },
    /// The author of a message deleted it for everyone.
    MessageDeleted {
        /// The message.
        key: MessageKey,
    },
    /// An account reacted to a message, or removed its reaction (`emoji` empty).
    ReactionChanged {
        /// The message.
        key: MessageKey,
        /// Who reacted.
        by: AccountId,
        /// The emoji; empty when removed.
        emoji: String,
    },
    /// A reader read messages this account sent (a read receipt).
    Read {
        /// The conversation.
        conversation: AccountId,
        /// The messages.
        ids: Vec<MessageId>,
        /// The reading device.
        by: PeerDevice,
    },
    /// A conversation's disappearing-message timer changed.
    TimerChanged {
        /// The conversation.
        conversation: AccountId,
        /// Seconds; 0 when turned off.
        expire_s: u32,
        /// Who set it.
        by: AccountId,
    },
    /// A contact's safety number changed (a device was added or re-keyed): sends to them
    /// wait until [`crate::Client::acknowledge_identity`].
    IdentityChanged {
        /// The contact.
        account: AccountId,
    },
    /// A contact who shares their presence came online (they show "last seen" in the
    /// conversation list once they were silent for [`crate::ClientOptions::presence_grace`]).
    Presence {
        /// The contact.
        account: AccountId,
        /// True: online.
        online: bool,
        /// When they were last seen (Unix ms).
        last_seen_ms: u64,
    },
    /// A contact's profile (name, avatar) changed, or this account's own (from another
    /// of its devices).
    ProfileChanged {
        /// Whose.
        account: AccountId,
    },
    /// A contact started or stopped typing. It stops by itself after
    /// [`crate::TYPING_TIMEOUT_MS`] without a new `typing` frame.
    Typing {
        /// The conversation.
        conversation: AccountId,
        /// Who.
        by: AccountId,
        /// True while typing.
        typing: bool,
    },
    /// (From the client) the relay connection is authenticated. Kept for existing
    /// callers: it follows every [`ConnectionState::Connected`].
    Connected,
    /// (From the client) the relay connection changed state: show the app online or
    /// offline from it. The first is `Connecting`, once the client starts.
    ConnectionState {
        /// The new state.
        state: ConnectionState,
    },
    /// (From the client) every envelope queued while this device was offline has been
    /// processed.
    CaughtUp,
}

/// The state of a client's relay connection ([`Event::ConnectionState`]). Apps match
/// it with a fallback arm: later versions may add states.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Connecting and authenticating (at start, and after each wait).
    Connecting,
    /// Authenticated: messages go out and come in.
    Connected,
    /// Not connected; the next attempt starts in `retry_in_ms` (exponential backoff with
    /// jitter). Messages written meanwhile wait in the outbox.
    Disconnected {
        /// Milliseconds until the next attempt.
        retry_in_ms: u64,
        /// Why the connection ended or could not be made.
        cause: DisconnectCause,
    },
    /// The client stopped connecting and will not try again by itself (reads and sends
    /// into the outbox still work; nothing goes out until the client is opened again).
    Stopped {
        /// Why.
        cause: StopCause,
    },
}

impl ConnectionState {
    /// A stable name: `connecting`, `connected`, `disconnected`, `stopped`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Connected => "connected",
            Self::Disconnected { .. } => "disconnected",
            Self::Stopped { .. } => "stopped",
        }
    }
}

/// Why a relay connection ended or could not be made; the client tries again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectCause {
    /// The relay could not be reached (network, DNS, TLS, HTTP error) or refused the
    /// connection for a while (busy, too many connections).
    Unreachable,
    /// The connection closed or failed while in use.
    Closed,
    /// Nothing arrived for the idle timeout (on either side).
    IdleTimeout,
    /// The relay is shutting down (docs/protocol.md §13.6).
    RelayShuttingDown,
    /// The relay refused this device's authentication.
    AuthFailed,
    /// The local store failed.
    Store,
}

impl DisconnectCause {
    /// A stable name: `unreachable`, `closed`, `idle_timeout`, `relay_shutting_down`,
    /// `auth_failed`, `store`.
    pub fn code(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Closed => "closed",
            Self::IdleTimeout => "idle_timeout",
            Self::RelayShuttingDown => "relay_shutting_down",
            Self::AuthFailed => "auth_failed",
            Self::Store => "store",
        }
    }
}

/// Why a client stopped connecting for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopCause {
    /// Another connection authenticated as this device (the relay answered `REPLACED`,
    /// docs/protocol.md §13.6): a second process, or a copy of this device's store,
    /// runs the same device. Reconnecting would take the socket back and start a fight
    /// (each replacing the other twice a second), so this one stops. Make sure one
    /// process runs the device, then open the client again.
    Superseded,
    /// This device is no longer in its account's device list ([`Event::DeviceRemoved`]).
    DeviceRemoved,
}

impl StopCause {
    /// A stable name: `superseded`, `device_removed`.
    pub fn code(self) -> &'static str {
        match self {
            Self::Superseded => "superseded",
            Self::DeviceRemoved => "device_removed",
        }
    }
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

/// Sealed content type of a linking answer (a device holding the list key → the new device).
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
