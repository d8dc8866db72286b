//! uniffi bindings over `sotto-sdk` for Swift, Kotlin and Python.
//!
//! This crate is a thin layer (docs/ARCHITECTURE.md, "Bindings"): it mirrors the SDK's
//! types as uniffi records and enums, parses the string ids apps pass into typed ids,
//! runs every call on a tokio multi-thread runtime it owns, and flattens the SDK's
//! errors into one [`SottoError`]. Anything else belongs in `sotto-sdk`.
//!
//! Every async method is cancellation-safe in the sense of the SDK: when the foreign
//! caller cancels (a cancelled Kotlin coroutine, Swift `Task` or Python `asyncio`
//! task), the Rust future is dropped, and so is the SDK call behind it.
//! [`SottoClient::next_event`] in particular loses no event when it is cancelled.
//!
//! The runtime: each call is spawned on the binding's multi-thread runtime and its
//! `JoinHandle` awaited, which works from any executor. uniffi's
//! `async_runtime = "tokio"` option is not used: it would poll the calls under the
//! async-compat crate's own current-thread runtime, so the SDK's connection tasks would
//! share one thread.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use sotto_crypto::{AccountId, DeviceId};
use sotto_sdk::group::GroupError;
use sotto_sdk::machine::UndecryptableCause as SdkCause;
use sotto_sdk::store::{SqliteStore, StoreError, StoreKey};
use sotto_sdk::transport::TransportError;
use sotto_sdk::{
    Client, ClientError, ConnectionState, Event as SdkEvent, EventStream, GroupId, GroupInfo as SdkGroupInfo,
    MachineError, MessageStatus as SdkStatus, Role, StoredMessage,
};
use zeroize::Zeroizing;

uniffi::setup_scaffolding!();

mod chat;
mod media;

pub use chat::{
    Conversation, ConversationDiff, ConversationList, ConversationListListener, ConversationSummary, ListSubscription,
    MessageKey, MessageKind, Quote, Reaction, SendState, Timeline, TimelineDiff, TimelineItem, TimelineListener,
};
pub use media::{
    AttachmentInfo, AttachmentMeta, CancelToken, NotificationExtension, NotificationFetch, NotificationItem,
    ProgressListener, PushService,
};

type SdkClient = Client<SqliteStore>;

// ---------------------------------------------------------------- runtime

/// The binding's tokio runtime: multi-thread, shared by every client of the process.
/// The SDK's connection tasks run on it.
fn runtime() -> Result<&'static tokio::runtime::Runtime, SottoError> {
    static RUNTIME: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .thread_name("sotto")
                .enable_all()
                .build()
                .ok()
        })
        .as_ref()
        .ok_or_else(|| SottoError::Internal {
            reason: "the tokio runtime could not start".into(),
        })
}

/// Aborts the spawned task when the foreign caller drops (cancels) the call.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `fut` on the binding's runtime and waits for it from whatever executor the
/// foreign side drives; cancelling the wait cancels the task.
async fn on_runtime<T, F>(fut: F) -> Result<T, SottoError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, SottoError>> + Send + 'static,
{
    let mut task = AbortOnDrop(runtime()?.spawn(fut));
    match (&mut task.0).await {
        Ok(r) => r,
        Err(e) => Err(SottoError::Internal {
            reason: if e.is_panic() {
                "the call panicked".into()
            } else {
                "the call was cancelled".into()
            },
        }),
    }
}

// ---------------------------------------------------------------- errors

/// Every error a Sotto call raises. In Kotlin and Python each variant is an exception
/// class (`SottoException.UnknownContact`, `SottoError.UnknownContact`); in Swift a case
/// of `SottoError`. [`SottoError::code`] is a stable string per variant and
/// [`SottoError::is_retryable`] says whether the same call may succeed later.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[non_exhaustive]
pub enum SottoError {
    /// The store does not decrypt under the key given (wrong key, or the file was altered).
    #[error("the store does not decrypt under this key")]
    WrongStoreKey,
    /// Another process changed the store during the call; retry.
    #[error("the store changed underneath this operation")]
    StoreConflict,
    /// The store (SQLite) failed.
    #[error("store: {reason}")]
    Store {
        /// What failed, for logs.
        reason: String,
    },
    /// The relay could not be reached, or did not answer in time.
    #[error("network: {reason}")]
    Network {
        /// What failed, for logs.
        reason: String,
    },
    /// The relay answered with an error code (docs/protocol.md §13).
    ///
    /// No field of any variant is named `code`: in Python a field becomes an attribute of
    /// the exception object and would hide the [`SottoError::code`] method.
    #[error("the relay refused: {relay_code_name} ({relay_code})")]
    Relay {
        /// The HTTP status (0 on the WebSocket).
        status: u16,
        /// The relay's numeric error code, such as 20.
        relay_code: u16,
        /// The relay's error code name, such as `UNKNOWN_ACCOUNT` or `RATE_LIMITED`.
        relay_code_name: String,
        /// True when the same call may succeed later.
        retryable: bool,
    },
    /// The relay URL or an extra root certificate is not valid, or the relay spoke an
    /// unexpected protocol.
    #[error("relay: {reason}")]
    Transport {
        /// What failed, for logs.
        reason: String,
    },
    /// The SDK refused the operation (for example a message to one's own account).
    #[error("{reason}")]
    Refused {
        /// Why, for logs.
        reason: String,
    },
    /// A contact's device list did not verify.
    #[error("device list: {reason}")]
    DeviceList {
        /// Why, for logs.
        reason: String,
    },
    /// The store already holds an account.
    #[error("the store already holds an account")]
    AccountExists,
    /// The store holds no account.
    #[error("the store holds no account")]
    NoAccount,
    /// Not an account id or contact link.
    #[error("not an account id or contact link")]
    BadContact,
    /// Not a conversation of this account; add the contact first.
    #[error("unknown contact; add it first")]
    UnknownContact,
    /// Not a valid link code.
    #[error("not a valid link code")]
    BadLinkCode,
    /// Device linking did not complete.
    #[error("linking failed: {reason}")]
    Link {
        /// Why, for logs.
        reason: String,
    },
    /// This device does not hold the account key (only the first device does, until the
    /// recovery key is exported): it cannot export the recovery key.
    #[error("this device does not hold the account key")]
    NoAccountKey,
    /// This device does not hold the list key: it cannot link or remove devices.
    #[error("this device does not hold the list key")]
    NoListKey,
    /// The device to remove holds the list key: use `remove_device_with_recovery_key`.
    #[error("removing a device that holds the list key needs the recovery key")]
    NeedsRecoveryKey,
    /// Not this account's recovery key.
    #[error("not this account's recovery key")]
    BadRecoveryKey,
    /// No pending link request has this id.
    #[error("no pending link request with this id")]
    UnknownLinkRequest,
    /// Linking did not complete in time (rejected, unanswered or expired).
    #[error("linking timed out")]
    LinkTimeout,
    /// Not a group id (64 hex digits).
    #[error("not a group id")]
    BadGroupId,
    /// No such group, or this account is no longer in it (it left or was removed).
    #[error("no such group, or not a member")]
    UnknownGroup,
    /// Only an admin of the group may make this change.
    #[error("not an admin of the group")]
    NotGroupAdmin,
    /// The group change is refused (for example too many members).
    #[error("group change refused: {reason}")]
    Group {
        /// Why, for logs.
        reason: String,
    },
    /// Sender-key encryption of a group message failed.
    #[error("sender key: {reason}")]
    SenderKey {
        /// Why, for logs.
        reason: String,
    },
    /// An argument is not valid (for example a store key that is not 32 bytes).
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// Which argument and why.
        reason: String,
    },
    /// The client was shut down.
    #[error("the client was shut down")]
    Closed,
    /// A failure inside the binding (the runtime did not start, a call panicked).
    #[error("internal error: {reason}")]
    Internal {
        /// What failed, for logs.
        reason: String,
    },
    /// The operating system's random generator failed; nothing was done.
    #[error("the operating system's random generator failed")]
    Entropy,
    /// No such message in this conversation (or, for an edit, not a text that is still
    /// there).
    #[error("no such message")]
    UnknownMessage,
    /// Only a message's author may edit or delete it.
    #[error("only the author may change this message")]
    NotAuthor,
    /// The message cannot be cancelled (the relay has it) or retried (it has not failed)
    /// in its state.
    #[error("the message cannot be cancelled or retried in its state")]
    NotQueued,
    /// The contact is blocked: unblock them to send.
    #[error("the contact is blocked")]
    Blocked,
    /// The contact's safety number changed: acknowledge it (`acknowledge_identity`)
    /// before sending to them.
    #[error("the contact's safety number changed: acknowledge it before sending")]
    IdentityUnacknowledged,
    /// A text (or an emoji) longer than the SDK allows.
    #[error("{len} bytes exceed the limit of {max}")]
    TooLong {
        /// Its length, bytes.
        len: u64,
        /// The limit, bytes.
        max: u64,
    },
    /// A disappearing-message timer above the limit.
    #[error("timer above {max_s} s")]
    TimerTooLong {
        /// The limit, seconds.
        max_s: u32,
    },
    /// Another process (or another client in this one) runs this device on this store
    /// in the same role; retryable once that one has stopped.
    #[error("another process runs this device on this store (as {role})")]
    DeviceInUse {
        /// The role both asked for: `app` or `notification_extension`.
        role: String,
    },
    /// A downloaded file did not check out (tampered with, truncated, reordered, or not
    /// the file its message names); nothing of it was released.
    #[error("the file does not check out: {reason}")]
    AttachmentCorrupt {
        /// What did not check out.
        reason: String,
    },
    /// An upload or a download was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// Reading or writing a local file failed.
    #[error("file: {reason}")]
    File {
        /// The I/O error's kind.
        reason: String,
    },
}

#[uniffi::export]
impl SottoError {
    /// A stable code per variant, such as `"unknown_contact"`.
    pub fn code(&self) -> String {
        match self {
            Self::WrongStoreKey => "wrong_store_key",
            Self::StoreConflict => "store_conflict",
            Self::Store { .. } => "store",
            Self::Network { .. } => "network",
            Self::Relay { .. } => "relay",
            Self::Transport { .. } => "transport",
            Self::Refused { .. } => "refused",
            Self::DeviceList { .. } => "device_list",
            Self::AccountExists => "account_exists",
            Self::NoAccount => "no_account",
            Self::BadContact => "bad_contact",
            Self::UnknownContact => "unknown_contact",
            Self::BadLinkCode => "bad_link_code",
            Self::Link { .. } => "link",
            Self::NoAccountKey => "no_account_key",
            Self::NoListKey => "no_list_key",
            Self::NeedsRecoveryKey => "needs_recovery_key",
            Self::BadRecoveryKey => "bad_recovery_key",
            Self::UnknownLinkRequest => "unknown_link_request",
            Self::LinkTimeout => "link_timeout",
            Self::BadGroupId => "bad_group_id",
            Self::UnknownGroup => "unknown_group",
            Self::NotGroupAdmin => "not_group_admin",
            Self::Group { .. } => "group",
            Self::SenderKey { .. } => "sender_key",
            Self::InvalidArgument { .. } => "invalid_argument",
            Self::Closed => "closed",
            Self::Internal { .. } => "internal",
            Self::Entropy => "entropy",
            Self::UnknownMessage => "unknown_message",
            Self::NotAuthor => "not_author",
            Self::NotQueued => "not_queued",
            Self::Blocked => "blocked",
            Self::IdentityUnacknowledged => "identity_unacknowledged",
            Self::TooLong { .. } => "too_long",
            Self::TimerTooLong { .. } => "timer_too_long",
            Self::DeviceInUse { .. } => "device_in_use",
            Self::AttachmentCorrupt { .. } => "attachment_corrupt",
            Self::Cancelled => "cancelled",
            Self::File { .. } => "file",
        }
        .into()
    }

    /// True when the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::StoreConflict | Self::Network { .. } | Self::DeviceInUse { .. } => true,
            Self::Relay { retryable, .. } => *retryable,
            _ => false,
        }
    }
}

impl From<StoreError> for SottoError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => Self::StoreConflict,
            StoreError::Decrypt => Self::WrongStoreKey,
            StoreError::InUse { role } => Self::DeviceInUse {
                role: role.code().into(),
            },
            other => Self::Store {
                reason: other.to_string(),
            },
        }
    }
}

impl From<TransportError> for SottoError {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::Io(_) | TransportError::Timeout => Self::Network { reason: e.to_string() },
            TransportError::Relay { status, code } => Self::Relay {
                status,
                relay_code: code.0,
                relay_code_name: code.name().into(),
                retryable: code.is_retryable(),
            },
            other => Self::Transport {
                reason: other.to_string(),
            },
        }
    }
}

impl From<ClientError> for SottoError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Store(s) => s.into(),
            ClientError::Transport(t) => t.into(),
            ClientError::Machine(m) => match m {
                // A pickle that does not open under the key is the same as a wrong key.
                MachineError::Pickle(_) => Self::WrongStoreKey,
                MachineError::UnknownGroup => Self::UnknownGroup,
                MachineError::Group(GroupError::NotAdmin) => Self::NotGroupAdmin,
                MachineError::Group(g) => Self::Group { reason: g.to_string() },
                MachineError::SenderKey(k) => Self::SenderKey { reason: k.to_string() },
                MachineError::Blocked => Self::Blocked,
                MachineError::IdentityUnacknowledged => Self::IdentityUnacknowledged,
                MachineError::TextTooLong { len, max } => Self::TooLong {
                    len: len as u64,
                    max: max as u64,
                },
                MachineError::TimerTooLong { max_s } => Self::TimerTooLong { max_s },
                other => Self::Refused {
                    reason: other.to_string(),
                },
            },
            ClientError::DeviceList(d) => Self::DeviceList { reason: d.to_string() },
            ClientError::AccountExists => Self::AccountExists,
            ClientError::NoAccount => Self::NoAccount,
            ClientError::BadContact => Self::BadContact,
            ClientError::UnknownContact => Self::UnknownContact,
            ClientError::BadLinkCode => Self::BadLinkCode,
            ClientError::Link(reason) => Self::Link { reason },
            ClientError::NoAccountKey => Self::NoAccountKey,
            ClientError::NoListKey => Self::NoListKey,
            ClientError::NeedsRecoveryKey => Self::NeedsRecoveryKey,
            ClientError::BadRecoveryKey => Self::BadRecoveryKey,
            ClientError::UnknownLinkRequest => Self::UnknownLinkRequest,
            ClientError::LinkTimeout => Self::LinkTimeout,
            ClientError::Entropy => Self::Entropy,
            ClientError::UnknownMessage => Self::UnknownMessage,
            ClientError::NotAuthor => Self::NotAuthor,
            ClientError::NotQueued => Self::NotQueued,
            ClientError::DeviceInUse { role } => Self::DeviceInUse {
                role: role.code().into(),
            },
            ClientError::Attachment(e) => Self::AttachmentCorrupt { reason: e.to_string() },
            ClientError::Cancelled => Self::Cancelled,
            ClientError::File(reason) => Self::File { reason },
            other => Self::Refused {
                reason: other.to_string(),
            },
        }
    }
}

// ---------------------------------------------------------------- joining

/// A join in progress on a new device: show [`PendingJoin::fingerprint`], which the
/// existing device shows too, then await [`PendingJoin::wait_joined`].
#[derive(uniffi::Object)]
pub struct PendingJoin {
    inner: std::sync::Mutex<Option<sotto_sdk::PendingJoin<SqliteStore>>>,
    fingerprint: String,
    device_id: u32,
}

impl std::fmt::Debug for PendingJoin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingJoin")
            .field("device_id", &self.device_id)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

#[uniffi::export]
impl PendingJoin {
    /// On a new device: asks the account whose device showed `code` to add this device
    /// (named `device_name`), with a new store at `store_path`.
    #[uniffi::constructor]
    pub async fn start_join(
        store_path: String,
        store_key: Vec<u8>,
        relay_url: String,
        code: String,
        device_name: String,
        options: ClientOptions,
    ) -> Result<Arc<Self>, SottoError> {
        let key = parse_store_key(store_key)?;
        let code = Zeroizing::new(code);
        on_runtime(async move {
            let store = open_store(&store_path, &key).await?;
            let pending = Client::start_join(store, key, &relay_url, &code, &device_name, options.into()).await?;
            Ok(Arc::new(Self {
                fingerprint: pending.fingerprint().to_owned(),
                device_id: pending.device_id().0,
                inner: std::sync::Mutex::new(Some(pending)),
            }))
        })
        .await
    }

    /// The fingerprint to compare with the one the existing device shows.
    pub fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    /// The device id this device asked for.
    pub fn device_id(&self) -> u32 {
        self.device_id
    }

    /// Waits until the existing device's user confirmed and its answer arrived; returns
    /// the connected client. `LinkTimeout` when rejected or unanswered in five minutes.
    /// Callable once (`Closed` after). (`wait_joined`, not `wait`: the JVM's
    /// `Object.wait` takes that name in Kotlin.)
    pub async fn wait_joined(&self) -> Result<Arc<SottoClient>, SottoError> {
        let pending = self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or(SottoError::Closed)?;
        on_runtime(async move { Ok(SottoClient::wrap(pending.wait().await?)) }).await
    }
}

// ---------------------------------------------------------------- mirrored types

/// Connection and timing options. Every field has a default.
#[derive(Debug, Clone, uniffi::Record)]
pub struct ClientOptions {
    /// Client ping interval, milliseconds.
    #[uniffi(default = 30000)]
    pub heartbeat_ms: u64,
    /// Reconnect when nothing arrived for this long, milliseconds.
    #[uniffi(default = 90000)]
    pub idle_timeout_ms: u64,
    /// First reconnect delay, milliseconds.
    #[uniffi(default = 500)]
    pub backoff_min_ms: u64,
    /// Largest reconnect delay, milliseconds.
    #[uniffi(default = 60000)]
    pub backoff_max_ms: u64,
    /// Connect to the relay (false: offline use of the store only).
    #[uniffi(default = true)]
    pub connect: bool,
    /// PEM root certificates trusted for an `https://` relay besides the Mozilla root
    /// set, such as the private CA of a self-hosted relay.
    #[uniffi(default)]
    pub extra_root_certificates: Vec<Vec<u8>>,
    /// A message that keeps failing is given up after failing this long while online,
    /// milliseconds.
    #[uniffi(default = 86400000)]
    pub send_give_up_after_ms: u64,
    /// The wait after a message's first failure, milliseconds (then doubling).
    #[uniffi(default = 1000)]
    pub send_backoff_min_ms: u64,
    /// The longest wait between two attempts of a message, milliseconds.
    #[uniffi(default = 300000)]
    pub send_backoff_max_ms: u64,
    /// Delivery receipts go out a random delay after the message, at least this, ms...
    #[uniffi(default = 1000)]
    pub receipt_delay_min_ms: u64,
    /// ...and at most this, milliseconds.
    #[uniffi(default = 5000)]
    pub receipt_delay_max_ms: u64,
    /// The anonymous connection opens no sooner than a random delay after connecting:
    /// at least this, milliseconds...
    #[uniffi(default = 1000)]
    pub anonymous_open_delay_min_ms: u64,
    /// ...and up to this, milliseconds.
    #[uniffi(default = 5000)]
    pub anonymous_open_delay_max_ms: u64,
    /// An anonymous connection is replaced after a random lifetime: at least this, ms...
    #[uniffi(default = 300000)]
    pub anonymous_lifetime_min_ms: u64,
    /// ...and at most this, milliseconds.
    #[uniffi(default = 900000)]
    pub anonymous_lifetime_max_ms: u64,
    /// Whether accounts not accepted yet may send message requests (the relay refuses
    /// them with `ACCESS_DENIED` when false).
    #[uniffi(default = true)]
    pub accept_message_requests: bool,
    /// Whether `mark_read` sends read receipts to the authors of what was read.
    #[uniffi(default = true)]
    pub read_receipts: bool,
    /// Whether this device tells the contacts this account accepted that it is online
    /// (opt-in).
    #[uniffi(default = false)]
    pub share_presence: bool,
}

impl From<ClientOptions> for sotto_sdk::ClientOptions {
    // The update fills the SDK's test-only fields when its `dangerous_seeded_rng` feature
    // is on (as in workspace builds); without it every field is named here.
    #[allow(clippy::needless_update)]
    fn from(o: ClientOptions) -> Self {
        Self {
            heartbeat: Duration::from_millis(o.heartbeat_ms),
            idle_timeout: Duration::from_millis(o.idle_timeout_ms),
            backoff_min: Duration::from_millis(o.backoff_min_ms),
            backoff_max: Duration::from_millis(o.backoff_max_ms),
            connect: o.connect,
            extra_root_certificates: o.extra_root_certificates,
            send_give_up_after: Duration::from_millis(o.send_give_up_after_ms),
            send_backoff_min: Duration::from_millis(o.send_backoff_min_ms),
            send_backoff_max: Duration::from_millis(o.send_backoff_max_ms),
            receipt_delay: Duration::from_millis(o.receipt_delay_min_ms)..Duration::from_millis(o.receipt_delay_max_ms),
            anonymous_open_delay: Duration::from_millis(o.anonymous_open_delay_min_ms)
                ..Duration::from_millis(o.anonymous_open_delay_max_ms),
            anonymous_lifetime: Duration::from_millis(o.anonymous_lifetime_min_ms)
                ..Duration::from_millis(o.anonymous_lifetime_max_ms),
            accept_message_requests: o.accept_message_requests,
            read_receipts: o.read_receipts,
            share_presence: o.share_presence,
            ..Self::default()
        }
    }
}

/// A page of a conversation: the last `limit` messages stored before `before` (an
/// [`Message::order`]), oldest first.
#[derive(Debug, Clone, uniffi::Record)]
pub struct Page {
    /// Only messages with a smaller `order`; `None` for the newest.
    #[uniffi(default = None)]
    pub before: Option<u64>,
    /// At most this many (the SDK caps it at 10,000).
    #[uniffi(default = 100)]
    pub limit: u32,
}

/// Where a message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum MessageStatus {
    /// Received from a contact.
    Received,
    /// Written here, waiting in the outbox.
    Queued,
    /// Stored by the relay for every device.
    Sent,
    /// A device of the contact reported it stored.
    Delivered,
    /// Sent from another device of this account.
    SentElsewhere,
    /// A reader reported it read (a read receipt).
    Read,
    /// A status this version of the binding does not know.
    Unknown,
    /// Given up; `retryable` when sending it again later may work.
    Failed {
        /// True when a later attempt may succeed.
        retryable: bool,
    },
}

impl From<SdkStatus> for MessageStatus {
    fn from(s: SdkStatus) -> Self {
        match s {
            SdkStatus::Received => Self::Received,
            SdkStatus::Queued => Self::Queued,
            SdkStatus::Sent => Self::Sent,
            SdkStatus::Delivered => Self::Delivered,
            SdkStatus::SentElsewhere => Self::SentElsewhere,
            SdkStatus::Read => Self::Read,
            SdkStatus::Failed { retryable } => Self::Failed { retryable },
            _ => Self::Unknown,
        }
    }
}

/// A message in a conversation with a contact or in a group.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Message {
    /// The message id (UUID text form).
    pub id: String,
    /// The conversation: the contact's account id, or for a group message the group id.
    pub conversation: String,
    /// The account that wrote it.
    pub sender_account: String,
    /// The device that wrote it.
    pub sender_device: u32,
    /// The sender's timestamp, Unix milliseconds.
    pub timestamp_ms: u64,
    /// The text.
    pub text: String,
    /// Its state.
    pub status: MessageStatus,
    /// Its place in the store, increasing; pass it as [`Page::before`] for older pages.
    pub order: u64,
    /// The group id (64 hex digits) for a group message; `None` in a conversation with a
    /// contact.
    #[uniffi(default = None)]
    pub group: Option<String>,
}

/// The string an event or message names its conversation with: the group id when the
/// SDK's conversation key is a group's (`group`, from [`Client::group_of`]), the account
/// id otherwise.
fn conversation_id(conversation: &AccountId, group: Option<GroupId>) -> String {
    match group {
        Some(g) => g.to_string(),
        None => conversation.to_string(),
    }
}

impl Message {
    /// Mirrors `m`; `group` is the group its conversation belongs to
    /// ([`Client::group_of`]).
    fn new(m: StoredMessage, group: Option<GroupId>) -> Self {
        Self {
            id: m.id.to_string(),
            conversation: conversation_id(&m.conversation, group),
            sender_account: m.sender.0.to_string(),
            sender_device: m.sender.1.0,
            timestamp_ms: m.timestamp_ms,
            text: m.text,
            status: m.status.into(),
            order: m.order,
            group: group.map(|g| g.to_string()),
        }
    }
}

/// What a member may do in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum GroupRole {
    /// Sends and reads.
    Member,
    /// Also changes the group: adds and removes members, renames it, sets admins.
    Admin,
}

impl From<Role> for GroupRole {
    fn from(r: Role) -> Self {
        match r {
            Role::Member => Self::Member,
            Role::Admin => Self::Admin,
        }
    }
}

/// A member of a group.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct GroupMember {
    /// The member's account id.
    pub account: String,
    /// The member's role.
    pub role: GroupRole,
}

/// A group as this device holds it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct GroupInfo {
    /// The group id: 64 lowercase hex digits.
    pub id: String,
    /// The title.
    pub title: String,
    /// The members (this account among them while `active`) and their roles.
    pub members: Vec<GroupMember>,
    /// The group state's version: 0 when created, one more for each change.
    pub version: u64,
    /// False once this account left the group or was removed from it.
    pub active: bool,
}

impl From<SdkGroupInfo> for GroupInfo {
    fn from(g: SdkGroupInfo) -> Self {
        Self {
            id: g.id.to_string(),
            title: g.title,
            members: g
                .members
                .into_iter()
                .map(|(account, role)| GroupMember {
                    account: account.to_string(),
                    role: role.into(),
                })
                .collect(),
            version: g.version,
            active: g.active,
        }
    }
}

/// Why an inbound envelope was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum UndecryptableCause {
    /// Not sealed to this device, altered, or the sender signature does not verify.
    Envelope,
    /// The claimed sender's account has no device list that verifies.
    UnknownSender,
    /// The claimed sender device is not in its account's device list.
    SenderNotListed,
    /// The claimed sender is not the identity the session names.
    SenderMismatch,
    /// A ratchet message from a device this device has no session with.
    NoSession,
    /// A pre-key message naming a prekey this device no longer has.
    UnknownPreKey,
    /// Decrypted before: a replay or a second delivery.
    Duplicate,
    /// Ratchet decryption failed.
    Decrypt,
    /// Session set-up from a pre-key message failed.
    PreKey,
    /// The plaintext is not valid content.
    Content,
    /// A sealed content type this version does not handle.
    UnknownContentType,
    /// A content kind not valid from this sender.
    WrongSender,
    /// The sender's device list stayed unavailable for as long as an envelope may wait.
    DeviceListUnavailable,
    /// A group envelope under no group key this device holds (a group it is not in, or
    /// was removed from).
    NoGroupKey,
    /// A group message that does not decrypt (an unknown sender-key chain, a signature
    /// that does not verify, a jump too far).
    SenderKey,
    /// A cause this version of the binding does not know.
    Unknown,
}

impl From<&SdkCause> for UndecryptableCause {
    fn from(c: &SdkCause) -> Self {
        match c {
            SdkCause::Envelope(_) => Self::Envelope,
            SdkCause::UnknownSender => Self::UnknownSender,
            SdkCause::SenderNotListed => Self::SenderNotListed,
            SdkCause::SenderMismatch => Self::SenderMismatch,
            SdkCause::NoSession => Self::NoSession,
            SdkCause::UnknownPreKey => Self::UnknownPreKey,
            SdkCause::Duplicate => Self::Duplicate,
            SdkCause::Decrypt(_) => Self::Decrypt,
            SdkCause::PreKey(_) => Self::PreKey,
            SdkCause::Content(_) => Self::Content,
            SdkCause::UnknownContentType(_) => Self::UnknownContentType,
            SdkCause::WrongSender => Self::WrongSender,
            SdkCause::DeviceListUnavailable => Self::DeviceListUnavailable,
            SdkCause::NoGroupKey => Self::NoGroupKey,
            SdkCause::SenderKey(_) => Self::SenderKey,
            _ => Self::Unknown,
        }
    }
}

/// What the app hears about, from [`SottoClient::next_event`] or an [`EventListener`].
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum Event {
    /// A new message: from a contact, or sent from another device of this account
    /// (status `SentElsewhere`).
    MessageReceived {
        /// The message.
        message: Message,
    },
    /// The relay stored a message for every device of the contact (or of the group).
    MessageSent {
        /// The message id.
        id: String,
        /// The conversation: the contact's account id, or the group id.
        conversation: String,
    },
    /// A device of the contact (or of a group member) reported messages stored.
    Delivered {
        /// The conversation: the contact's account id, or the group id.
        conversation: String,
        /// The message ids.
        ids: Vec<String>,
        /// The reporting account.
        by_account: String,
        /// The reporting device.
        by_device: u32,
    },
    /// An account's device set changed (safety numbers with it may have changed).
    DeviceListChanged {
        /// The account.
        account: String,
        /// Devices added.
        added: Vec<u32>,
        /// Devices removed.
        removed: Vec<u32>,
        /// Devices whose keys changed.
        rekeyed: Vec<u32>,
    },
    /// A device list offered for an account did not verify or rolled back.
    DeviceListRejected {
        /// The account.
        account: String,
        /// Why, for logs.
        reason: String,
    },
    /// An envelope that could not be accepted.
    Undecryptable {
        /// The claimed sending account, when the envelope opened far enough to name one.
        sender_account: Option<String>,
        /// The claimed sending device.
        sender_device: Option<u32>,
        /// Why.
        cause: UndecryptableCause,
    },
    /// A message that could not be sent and was given up.
    SendFailed {
        /// The message id.
        id: String,
        /// Why, for display.
        reason: String,
        /// The conversation: the contact's account id, or the group id.
        conversation: String,
        /// A stable code (the relay's error code name, e.g. `MAILBOX_FULL`, or
        /// `DEVICE_SET_CHANGING`, `DEVICE_LIST`, `ENCRYPT`, `BAD_BUNDLE`).
        code: String,
        /// True when sending it again later may work.
        retryable: bool,
    },
    /// This device is no longer in its account's device list.
    DeviceRemoved,
    /// A group was created, joined or changed (members, roles, title), or this account
    /// left it or was removed from it: read it again with `group`; `active` is false
    /// after leaving or removal.
    GroupChanged {
        /// The group id.
        group: String,
    },
    /// A change to a group that arrived from a member was refused (not by an admin,
    /// stale, or malformed); the group stays as it was.
    GroupChangeRejected {
        /// The group id.
        group: String,
        /// Why, for logs.
        reason: String,
    },
    /// A new device asks to join with the code this device showed: show its name and
    /// fingerprint, and answer with `confirm_link` or `reject_link`.
    LinkRequested {
        /// Names the request in `confirm_link` / `reject_link`.
        id: u64,
        /// The name the new device gave itself.
        device_name: String,
        /// The fingerprint the new device shows too.
        fingerprint: String,
    },
    /// The relay connection is authenticated.
    Connected,
    /// The relay connection changed state. `state`: `connecting`, `connected`,
    /// `disconnected` (the next attempt in `retry_in_ms`), `stopped` (no further
    /// attempt); `cause` for the last two: `unreachable`, `closed`, `idle_timeout`,
    /// `relay_shutting_down`, `auth_failed`, `store`, or `superseded` (another process
    /// runs this device), `device_removed`.
    ConnectionState {
        /// The state.
        state: String,
        /// Why (`disconnected`, `stopped`).
        cause: Option<String>,
        /// Milliseconds until the next attempt (`disconnected`).
        retry_in_ms: Option<u64>,
    },
    /// Every envelope queued while this device was offline has been processed.
    CaughtUp,
    /// The author of a message edited it (the timeline shows the new text).
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
        by_account: String,
        /// The emoji; empty when removed.
        emoji: String,
    },
    /// A reader read messages this account sent (a read receipt).
    Read {
        /// The conversation.
        conversation: Conversation,
        /// The message ids.
        ids: Vec<String>,
        /// The reading account.
        by_account: String,
        /// The reading device.
        by_device: u32,
    },
    /// A conversation's disappearing-message timer changed.
    TimerChanged {
        /// The conversation.
        conversation: Conversation,
        /// Seconds; 0 when turned off.
        expire_s: u32,
        /// Who set it.
        by_account: String,
    },
    /// A contact's safety number changed (a device was added or re-keyed): sends to them
    /// fail with `IdentityUnacknowledged` until `acknowledge_identity`.
    IdentityChanged {
        /// The contact.
        account: String,
    },
    /// A contact started or stopped typing (it stops by itself after 5 s without news).
    Typing {
        /// The conversation.
        conversation: Conversation,
        /// Who.
        by_account: String,
        /// True while typing.
        typing: bool,
    },
    /// A contact who shares their presence came online.
    Presence {
        /// The contact.
        account: String,
        /// True: online.
        online: bool,
        /// When they were last seen (Unix ms).
        last_seen_ms: u64,
    },
    /// A contact's profile (name, avatar) changed, or this account's own.
    ProfileChanged {
        /// Whose.
        account: String,
    },
    /// An event this version of the binding does not know.
    Unknown,
}

fn device_ids(ids: &[DeviceId]) -> Vec<u32> {
    ids.iter().map(|d| d.0).collect()
}

/// The SDK conversation key an event names, to look its group up with.
fn event_conversation(e: &SdkEvent) -> Option<&AccountId> {
    match e {
        SdkEvent::MessageReceived(m) => Some(&m.conversation),
        SdkEvent::MessageSent { conversation, .. }
        | SdkEvent::SendFailed { conversation, .. }
        | SdkEvent::Read { conversation, .. }
        | SdkEvent::Delivered { conversation, .. }
        | SdkEvent::TimerChanged { conversation, .. }
        | SdkEvent::Typing { conversation, .. } => Some(conversation),
        SdkEvent::MessageEdited { key } | SdkEvent::MessageDeleted { key } | SdkEvent::ReactionChanged { key, .. } => {
            Some(&key.conversation)
        }
        _ => None,
    }
}

impl Event {
    /// Mirrors `e`; `group` is the group its conversation belongs to, if any
    /// ([`event_conversation`], [`Client::group_of`]).
    fn new(e: SdkEvent, group: Option<GroupId>) -> Self {
        match e {
            SdkEvent::MessageReceived(m) => Self::MessageReceived {
                message: Message::new(m, group),
            },
            SdkEvent::MessageSent { id, conversation } => Self::MessageSent {
                id: id.to_string(),
                conversation: conversation_id(&conversation, group),
            },
            SdkEvent::Delivered { conversation, ids, by } => Self::Delivered {
                conversation: conversation_id(&conversation, group),
                ids: ids.iter().map(ToString::to_string).collect(),
                by_account: by.0.to_string(),
                by_device: by.1.0,
            },
            SdkEvent::DeviceListChanged { account, change } => Self::DeviceListChanged {
                account: account.to_string(),
                added: device_ids(&change.added),
                removed: device_ids(&change.removed),
                rekeyed: device_ids(&change.rekeyed),
            },
            SdkEvent::DeviceListRejected { account, error } => Self::DeviceListRejected {
                account: account.to_string(),
                reason: error.to_string(),
            },
            SdkEvent::Undecryptable { sender, cause } => Self::Undecryptable {
                sender_account: sender.map(|s| s.0.to_string()),
                sender_device: sender.map(|s| s.1.0),
                cause: (&cause).into(),
            },
            SdkEvent::SendFailed {
                id,
                reason,
                conversation,
                code,
                retryable,
            } => Self::SendFailed {
                id: id.to_string(),
                reason,
                conversation: conversation_id(&conversation, group),
                code: code.to_owned(),
                retryable,
            },
            SdkEvent::DeviceRemoved => Self::DeviceRemoved,
            SdkEvent::GroupChanged { group } => Self::GroupChanged {
                group: group.to_string(),
            },
            SdkEvent::GroupChangeRejected { group, error } => Self::GroupChangeRejected {
                group: group.to_string(),
                reason: error.to_string(),
            },
            SdkEvent::LinkRequested {
                id,
                device_name,
                fingerprint,
            } => Self::LinkRequested {
                id,
                device_name,
                fingerprint,
            },
            SdkEvent::Connected => Self::Connected,
            SdkEvent::ConnectionState { state } => {
                let (cause, retry_in_ms) = match &state {
                    ConnectionState::Disconnected { retry_in_ms, cause } => (Some(cause.code()), Some(*retry_in_ms)),
                    ConnectionState::Stopped { cause } => (Some(cause.code()), None),
                    _ => (None, None),
                };
                Self::ConnectionState {
                    state: state.code().into(),
                    cause: cause.map(Into::into),
                    retry_in_ms,
                }
            }
            SdkEvent::CaughtUp => Self::CaughtUp,
            SdkEvent::MessageEdited { key } => Self::MessageEdited {
                key: MessageKey::new(&key, Conversation::of_key(&key.conversation, group)),
            },
            SdkEvent::MessageDeleted { key } => Self::MessageDeleted {
                key: MessageKey::new(&key, Conversation::of_key(&key.conversation, group)),
            },
            SdkEvent::ReactionChanged { key, by, emoji } => Self::ReactionChanged {
                key: MessageKey::new(&key, Conversation::of_key(&key.conversation, group)),
                by_account: by.to_string(),
                emoji,
            },
            SdkEvent::Read { conversation, ids, by } => Self::Read {
                conversation: Conversation::of_key(&conversation, group),
                ids: ids.iter().map(ToString::to_string).collect(),
                by_account: by.0.to_string(),
                by_device: by.1.0,
            },
            SdkEvent::TimerChanged {
                conversation,
                expire_s,
                by,
            } => Self::TimerChanged {
                conversation: Conversation::of_key(&conversation, group),
                expire_s,
                by_account: by.to_string(),
            },
            SdkEvent::IdentityChanged { account } => Self::IdentityChanged {
                account: account.to_string(),
            },
            SdkEvent::Typing {
                conversation,
                by,
                typing,
            } => Self::Typing {
                conversation: Conversation::of_key(&conversation, group),
                by_account: by.to_string(),
                typing,
            },
            SdkEvent::Presence {
                account,
                online,
                last_seen_ms,
            } => Self::Presence {
                account: account.to_string(),
                online,
                last_seen_ms,
            },
            SdkEvent::ProfileChanged { account } => Self::ProfileChanged {
                account: account.to_string(),
            },
            _ => Self::Unknown,
        }
    }
}

/// Receives events on an SDK thread (see [`SottoClient::subscribe`]).
#[uniffi::export(with_foreign)]
pub trait EventListener: Send + Sync {
    /// One event. Runs on an SDK thread; it may call back into the client.
    fn on_event(&self, event: Event);
}

// ---------------------------------------------------------------- parsing

fn account(s: &str) -> Result<AccountId, SottoError> {
    Ok(sotto_sdk::parse_contact(s)?)
}

fn accounts(list: &[String]) -> Result<Vec<AccountId>, SottoError> {
    list.iter().map(|s| account(s)).collect()
}

fn group_id(s: &str) -> Result<GroupId, SottoError> {
    s.parse().map_err(|_| SottoError::BadGroupId)
}

fn parse_store_key(bytes: Vec<u8>) -> Result<StoreKey, SottoError> {
    let bytes = Zeroizing::new(bytes);
    let mut key = Zeroizing::new([0u8; 32]);
    if bytes.len() != key.len() {
        return Err(SottoError::InvalidArgument {
            reason: "the store key must be 32 bytes".into(),
        });
    }
    key.copy_from_slice(&bytes);
    Ok(StoreKey::new(*key))
}

async fn open_store(path: &str, key: &StoreKey) -> Result<SqliteStore, SottoError> {
    Ok(SqliteStore::open(&PathBuf::from(path), key).await?)
}

// ---------------------------------------------------------------- the client

/// The binding's version (the crate version).
#[uniffi::export]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").into()
}

/// A Sotto client: one device of one account, its encrypted store (a SQLite file) and
/// its relay connection. Create one with [`SottoClient::create_account`],
/// [`SottoClient::open`] or [`PendingJoin::start_join`]; call
/// [`SottoClient::shutdown`] when done.
///
/// Events are buffered from the moment the client exists: read them with
/// [`SottoClient::next_event`] or [`SottoClient::subscribe`]. The SDK pauses the relay
/// connection while 4,096 events wait unread.
#[derive(uniffi::Object)]
pub struct SottoClient {
    client: std::sync::Mutex<Option<Arc<SdkClient>>>,
    events: Arc<tokio::sync::Mutex<Events>>,
    groups: Arc<GroupLookup>,
    account: AccountId,
    device_id: u32,
}

/// The event stream, and the conversion of the event a read took from it but has not
/// returned yet.
#[derive(Debug)]
struct Events {
    stream: Option<EventStream>,
    taken: Option<tokio::task::JoinHandle<Event>>,
    /// An event converted and waiting to be handed over ([`SottoClient::take_event`]).
    ready: Option<Event>,
}

impl Events {
    /// Waits until an event is ready to hand over (`true`), or the stream ended
    /// (`false`). Cancellation-safe: the conversion of an event taken from the stream
    /// (which waits for the SDK to name its group) runs as a task of its own, so a
    /// cancelled wait loses neither the event nor its place in that wait, and what a
    /// wait finished stays in `ready` until it is taken. Waits cancelled every few
    /// milliseconds still make progress.
    async fn fill(&mut self, groups: &Arc<GroupLookup>) -> bool {
        loop {
            if self.ready.is_some() {
                return true;
            }
            if self.taken.is_none() {
                let Some(stream) = self.stream.as_mut() else {
                    return false;
                };
                let Some(e) = stream.next().await else {
                    return false;
                };
                let groups = groups.clone();
                match runtime() {
                    Ok(rt) => self.taken = Some(rt.spawn(async move { groups.event(e).await })),
                    Err(_) => self.ready = Some(groups.event(e).await),
                }
            }
            if let Some(taken) = self.taken.as_mut() {
                let joined = taken.await;
                self.taken = None;
                // A conversion that panicked loses that event; the next one is read.
                if let Ok(event) = joined {
                    self.ready = Some(event);
                }
            }
        }
    }

    /// The next event; `None` once the stream ended.
    async fn next(&mut self, groups: &Arc<GroupLookup>) -> Option<Event> {
        if self.fill(groups).await {
            self.ready.take()
        } else {
            None
        }
    }
}

/// Names the group an event's conversation belongs to ([`Client::group_of`]) for as long
/// as events can be read: through the SDK client while it runs, and after
/// [`SottoClient::shutdown`] from the groups it held then (the event stream only ends
/// once the SDK client is gone, so the binding cannot keep it for the lookups).
#[derive(Debug)]
struct GroupLookup {
    client: Weak<SdkClient>,
    /// Group conversation key → group, as the client held them at shutdown.
    at_shutdown: OnceLock<BTreeMap<AccountId, GroupId>>,
}

impl GroupLookup {
    async fn group_of(&self, conversation: &AccountId) -> Option<GroupId> {
        match self.client.upgrade() {
            Some(client) => client.group_of(conversation).await,
            None => self.at_shutdown.get()?.get(conversation).copied(),
        }
    }

    async fn event(&self, e: SdkEvent) -> Event {
        let group = match event_conversation(&e) {
            Some(c) => self.group_of(c).await,
            None => None,
        };
        Event::new(e, group)
    }
}

impl std::fmt::Debug for SottoClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SottoClient")
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

impl SottoClient {
    fn wrap(client: SdkClient) -> Arc<Self> {
        let events = client.events();
        let client = Arc::new(client);
        Arc::new(Self {
            account: client.account_id(),
            device_id: client.device_id().0,
            events: Arc::new(tokio::sync::Mutex::new(Events {
                stream: events,
                taken: None,
                ready: None,
            })),
            groups: Arc::new(GroupLookup {
                client: Arc::downgrade(&client),
                at_shutdown: OnceLock::new(),
            }),
            client: std::sync::Mutex::new(Some(client)),
        })
    }

    fn client(&self) -> Result<Arc<SdkClient>, SottoError> {
        self.client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(SottoError::Closed)
    }
}

#[uniffi::export]
impl SottoClient {
    /// Creates an account with its first device in a new store at `store_path`
    /// (encrypted under the 32-byte `store_key`), registers it at the relay and connects.
    #[uniffi::constructor]
    pub async fn create_account(
        store_path: String,
        store_key: Vec<u8>,
        relay_url: String,
        options: ClientOptions,
    ) -> Result<Arc<Self>, SottoError> {
        let key = parse_store_key(store_key)?;
        on_runtime(async move {
            let store = open_store(&store_path, &key).await?;
            let client = SdkClient::create_account(store, key, &relay_url, options.into()).await?;
            Ok(Self::wrap(client))
        })
        .await
    }

    /// Opens the account in the store at `store_path` and connects.
    #[uniffi::constructor]
    pub async fn open(store_path: String, store_key: Vec<u8>, options: ClientOptions) -> Result<Arc<Self>, SottoError> {
        let key = parse_store_key(store_key)?;
        on_runtime(async move {
            let store = open_store(&store_path, &key).await?;
            let client = SdkClient::open(store, key, options.into()).await?;
            Ok(Self::wrap(client))
        })
        .await
    }

    /// This account's id (52 base32 characters).
    pub fn account_id(&self) -> String {
        self.account.to_string()
    }

    /// This device's id within the account.
    pub fn device_id(&self) -> u32 {
        self.device_id
    }

    /// The link others add this account with: `sotto:`, the account id and the account's
    /// access key, so whoever adds it sends as a contact, not as a message request.
    pub fn contact_link(&self) -> String {
        match self.client() {
            Ok(c) => c.contact_link(),
            Err(_) => sotto_sdk::contact_link(&self.account),
        }
    }

    /// Accounts that wrote to this one and were not accepted yet: message requests.
    pub async fn message_requests(&self) -> Result<Vec<String>, SottoError> {
        let client = self.client()?;
        on_runtime(async move {
            Ok(client
                .message_requests()
                .await?
                .iter()
                .map(ToString::to_string)
                .collect())
        })
        .await
    }

    /// Accepts a message request: the account's access key goes to the contact with the
    /// next message or receipt.
    pub async fn accept_message_request(&self, contact: String) -> Result<(), SottoError> {
        let client = self.client()?;
        let who = account(&contact)?;
        on_runtime(async move { Ok(client.accept_message_request(&who).await?) }).await
    }

    /// Adds a contact by account id or contact link: fetches and pins its device list.
    /// Returns the contact's account id (the conversation id).
    pub async fn add_contact(&self, contact: String) -> Result<String, SottoError> {
        let client = self.client()?;
        on_runtime(async move { Ok(client.add_contact(&contact).await?.to_string()) }).await
    }

    /// Queues a text to a contact; it is sent now or after a reconnect. Returns the local
    /// message (status `Queued`); `MessageSent` follows when the relay stored it.
    pub async fn send_text(&self, contact: String, text: String) -> Result<Message, SottoError> {
        let client = self.client()?;
        let to = account(&contact)?;
        on_runtime(async move {
            let message = client.send_text(&to, &text).await?;
            Ok(Message::new(message, None))
        })
        .await
    }

    /// Every conversation (one per contact): the contacts' account ids.
    pub async fn conversations(&self) -> Result<Vec<String>, SottoError> {
        let client = self.client()?;
        on_runtime(async move { Ok(client.conversations().await?.iter().map(ToString::to_string).collect()) }).await
    }

    /// A page of a conversation, oldest first.
    pub async fn messages(&self, conversation: String, page: Page) -> Result<Vec<Message>, SottoError> {
        let client = self.client()?;
        let conversation = account(&conversation)?;
        let page = sotto_sdk::Page {
            before: page.before,
            limit: page.limit,
        };
        on_runtime(async move {
            let group = client.group_of(&conversation).await;
            Ok(client
                .messages(&conversation, page)
                .await?
                .into_iter()
                .map(|m| Message::new(m, group))
                .collect())
        })
        .await
    }

    /// Creates a group titled `title` with this account as its admin and `members`
    /// (account ids or contact links; add them as contacts first, by link, so that the
    /// group can share their access keys). Returns the group id; the members join when
    /// their welcome arrives (`Event::GroupChanged` on their side).
    pub async fn create_group(&self, title: String, members: Vec<String>) -> Result<String, SottoError> {
        let client = self.client()?;
        let members = accounts(&members)?;
        on_runtime(async move { Ok(client.create_group(&title, &members).await?.to_string()) }).await
    }

    /// Adds members to a group (admins only). They read what is sent from now on, not
    /// what was sent before.
    pub async fn add_group_members(&self, group: String, members: Vec<String>) -> Result<(), SottoError> {
        let client = self.client()?;
        let group = group_id(&group)?;
        let members = accounts(&members)?;
        on_runtime(async move { Ok(client.add_group_members(&group, &members).await?) }).await
    }

    /// Removes a member from a group (admins only): the group's key changes, so none of
    /// the removed member's devices reads what is sent afterwards.
    pub async fn remove_group_member(&self, group: String, member: String) -> Result<(), SottoError> {
        let client = self.client()?;
        let group = group_id(&group)?;
        let member = account(&member)?;
        on_runtime(async move { Ok(client.remove_group_member(&group, &member).await?) }).await
    }

    /// Leaves a group.
    pub async fn leave_group(&self, group: String) -> Result<(), SottoError> {
        let client = self.client()?;
        let group = group_id(&group)?;
        on_runtime(async move { Ok(client.leave_group(&group).await?) }).await
    }

    /// Renames a group (admins only).
    pub async fn rename_group(&self, group: String, title: String) -> Result<(), SottoError> {
        let client = self.client()?;
        let group = group_id(&group)?;
        on_runtime(async move { Ok(client.rename_group(&group, &title).await?) }).await
    }

    /// Makes a member an admin (`admin` true) or a plain member again (admins only).
    pub async fn set_group_admin(&self, group: String, member: String, admin: bool) -> Result<(), SottoError> {
        let client = self.client()?;
        let group = group_id(&group)?;
        let member = account(&member)?;
        on_runtime(async move { Ok(client.set_group_admin(&group, &member, admin).await?) }).await
    }

    /// Queues a text to a group; it is sent now or after a reconnect. Returns the local
    /// message (status `Queued`, `group` set); `MessageSent` follows when the relay
    /// stored it for every member device.
    pub async fn send_group_text(&self, group: String, text: String) -> Result<Message, SottoError> {
        let client = self.client()?;
        let group = group_id(&group)?;
        on_runtime(async move {
            let message = client.send_group_text(&group, &text).await?;
            Ok(Message::new(message, Some(group)))
        })
        .await
    }

    /// The groups this account is in or was in (`active` false), ordered by id.
    pub async fn groups(&self) -> Result<Vec<GroupInfo>, SottoError> {
        let client = self.client()?;
        on_runtime(async move { Ok(client.groups().await.into_iter().map(Into::into).collect()) }).await
    }

    /// One group; `None` when this device never was in it.
    pub async fn group(&self, group: String) -> Result<Option<GroupInfo>, SottoError> {
        let client = self.client()?;
        let group = group_id(&group)?;
        on_runtime(async move { Ok(client.group(&group).await.map(Into::into)) }).await
    }

    /// A page of a group's messages, oldest first.
    pub async fn group_messages(&self, group: String, page: Page) -> Result<Vec<Message>, SottoError> {
        let client = self.client()?;
        let group = group_id(&group)?;
        let page = sotto_sdk::Page {
            before: page.before,
            limit: page.limit,
        };
        on_runtime(async move {
            Ok(client
                .group_messages(&group, page)
                .await?
                .into_iter()
                .map(|m| Message::new(m, Some(group)))
                .collect())
        })
        .await
    }

    /// How many messages wait to be sent.
    pub async fn outbox_len(&self) -> Result<u64, SottoError> {
        let client = self.client()?;
        on_runtime(async move { Ok(client.outbox_len().await? as u64) }).await
    }

    /// Sends the delivery receipts that wait for their random delay now, for a process
    /// about to be suspended (a notification extension, a background task). It gives up
    /// the delay that keeps the relay from pairing a delivery with its receipt, so an app
    /// that stays open should not call it.
    pub async fn send_receipts_now(&self) -> Result<(), SottoError> {
        let client = self.client()?;
        on_runtime(async move {
            client.send_receipts_now().await;
            Ok(())
        })
        .await
    }

    /// The safety number with a contact: 12 groups of 5 digits separated by spaces.
    /// Both sides compute the same number.
    pub async fn safety_number(&self, contact: String) -> Result<String, SottoError> {
        let client = self.client()?;
        let contact = account(&contact)?;
        on_runtime(async move { Ok(client.safety_number(&contact).await?) }).await
    }

    /// The device ids pinned for an account (this one or a contact).
    pub async fn devices_of(&self, account_id: String) -> Result<Vec<u32>, SottoError> {
        let client = self.client()?;
        let of = account(&account_id)?;
        on_runtime(async move { Ok(device_ids(&client.devices_of(&of).await)) }).await
    }

    /// On a device holding the list key: starts linking a new device and returns the
    /// code to show it (valid once, for five minutes). The new device's request arrives
    /// as `Event::LinkRequested`; answer with `confirm_link` or `reject_link`.
    pub async fn link_new_device(&self) -> Result<String, SottoError> {
        let client = self.client()?;
        on_runtime(async move { Ok(client.link_new_device().await?) }).await
    }

    /// Confirms link request `id` once the user checked that both devices show the same
    /// fingerprint; `grant_list_key` also gives the new device the list key (removing it
    /// later then needs the recovery key).
    pub async fn confirm_link(&self, id: u64, grant_list_key: bool) -> Result<(), SottoError> {
        let client = self.client()?;
        on_runtime(async move { Ok(client.confirm_link(id, grant_list_key).await?) }).await
    }

    /// Rejects link request `id`.
    pub async fn reject_link(&self, id: u64) -> Result<(), SottoError> {
        let client = self.client()?;
        on_runtime(async move { Ok(client.reject_link(id).await?) }).await
    }

    /// True when this device still holds the account key (the first device, until the
    /// recovery key is exported).
    pub async fn has_account_key(&self) -> Result<bool, SottoError> {
        let client = self.client()?;
        on_runtime(async move { Ok(client.has_account_key().await) }).await
    }

    /// True when this device holds the current list key: it can link devices and remove
    /// devices that do not hold it.
    pub async fn can_manage_devices(&self) -> Result<bool, SottoError> {
        let client = self.client()?;
        on_runtime(async move { Ok(client.can_manage_devices().await) }).await
    }

    /// The recovery key (the account key as text), handed out once: the device then
    /// deletes the account key. Show it to the user to keep offline.
    pub async fn export_recovery_key(&self) -> Result<String, SottoError> {
        let client = self.client()?;
        on_runtime(async move { Ok(client.export_recovery_key().await?.to_string()) }).await
    }

    /// With the recovery key, gives this device the list key of a new epoch; every
    /// earlier list key stops counting. The recovery key is not stored.
    pub async fn recover_account(&self, recovery_key: String) -> Result<(), SottoError> {
        let client = self.client()?;
        let recovery_key = Zeroizing::new(recovery_key);
        on_runtime(async move { Ok(client.recover_account(&recovery_key).await?) }).await
    }

    /// Removes another device of this account from its device list (this device must
    /// hold the list key; a device that holds it too needs
    /// `remove_device_with_recovery_key`).
    pub async fn remove_device(&self, device_id: u32) -> Result<(), SottoError> {
        let client = self.client()?;
        on_runtime(async move { Ok(client.remove_device(DeviceId(device_id)).await?) }).await
    }

    /// Removes a device that holds the list key, with the recovery key: the list goes
    /// out under a new list key that only this device holds.
    pub async fn remove_device_with_recovery_key(
        &self,
        device_id: u32,
        recovery_key: String,
    ) -> Result<(), SottoError> {
        let client = self.client()?;
        let recovery_key = Zeroizing::new(recovery_key);
        on_runtime(async move {
            Ok(client
                .remove_device_with_recovery_key(DeviceId(device_id), &recovery_key)
                .await?)
        })
        .await
    }

    /// The next event; `None` once the client was shut down. For a loop that reads
    /// every event. A call cancelled while it waits loses nothing, but the foreign
    /// side's async glue discards a result that was already on its way when the
    /// cancellation lands, so a read that may be cancelled (a timeout) uses
    /// [`SottoClient::wait_event`] and then [`SottoClient::take_event`].
    pub async fn next_event(&self) -> Option<Event> {
        // Not spawned: the receive runs in the caller's future, so dropping that future
        // (a cancellation) drops the receive before it took anything, or leaves the event
        // it took for the next call (`Events::fill`).
        self.events.lock().await.next(&self.groups).await
    }

    /// Waits until an event is ready (`true`) or the client was shut down and every
    /// event was read (`false`). It takes nothing, so cancelling it at any moment loses
    /// nothing; [`SottoClient::take_event`] then hands the event over.
    pub async fn wait_event(&self) -> bool {
        self.events.lock().await.fill(&self.groups).await
    }

    /// The event [`SottoClient::wait_event`] found ready, without waiting: `None` when
    /// none is ready, or while another read or a subscription holds the events. A plain
    /// (not async) call, so nothing can cancel it between taking the event and
    /// returning it.
    pub fn take_event(&self) -> Option<Event> {
        self.events.try_lock().ok()?.ready.take()
    }

    /// Delivers every event to `listener` on an SDK thread until the subscription is
    /// cancelled (or dropped) or the client shut down. While a subscription runs,
    /// [`SottoClient::next_event`] waits.
    pub fn subscribe(&self, listener: Arc<dyn EventListener>) -> Result<Arc<Subscription>, SottoError> {
        let events = self.events.clone();
        let groups = self.groups.clone();
        let task = runtime()?.spawn(async move {
            let mut events = events.lock().await;
            while let Some(e) = events.next(&groups).await {
                listener.on_event(e);
            }
        });
        Ok(Arc::new(Subscription(task.abort_handle())))
    }

    /// Stops the relay connection and waits for it. Later calls fail with `Closed`;
    /// [`SottoClient::next_event`] returns `None` once the buffered events are read.
    pub async fn shutdown(&self) {
        let client = self.client.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(client) = client else { return };
        let Ok(rt) = runtime() else { return };
        // Calls still running keep their handle and fail or finish against the store;
        // the connection stops now either way.
        let groups = self.groups.clone();
        let done = rt.spawn(async move {
            client.shutdown().await;
            let known = client
                .groups()
                .await
                .into_iter()
                .map(|g| (g.id.conversation(), g.id))
                .collect();
            let _ = groups.at_shutdown.set(known);
        });
        let _ = done.await;
    }
}

/// A running [`SottoClient::subscribe`]: stops on [`Subscription::cancel`] or when
/// dropped.
#[derive(Debug, uniffi::Object)]
pub struct Subscription(tokio::task::AbortHandle);

#[uniffi::export]
impl Subscription {
    /// Stops delivering events. An event the listener has not been called with yet stays
    /// queued for the next reader.
    pub fn cancel(&self) {
        self.0.abort();
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn store_key_must_be_32_bytes_and_is_never_printed() {
        let err = parse_store_key(vec![7; 31]).err();
        assert!(matches!(err, Some(SottoError::InvalidArgument { .. })));
        let key = parse_store_key(vec![0xab; 32]);
        assert!(key.is_ok());
        let text = format!("{:?}", key.ok());
        assert!(!text.contains("171") && !text.to_lowercase().contains("ab, "), "{text}");
    }

    #[test]
    fn codes_and_retryability() {
        assert_eq!(SottoError::UnknownContact.code(), "unknown_contact");
        assert!(SottoError::StoreConflict.is_retryable());
        assert!(!SottoError::BadContact.is_retryable());
        let e: SottoError = ClientError::BadContact.into();
        assert!(matches!(e, SottoError::BadContact));
        let e: SottoError = StoreError::Decrypt.into();
        assert!(matches!(e, SottoError::WrongStoreKey));
    }

    /// Every variant and its stable code. The binding tests (bindings/uniffi/tests) hold
    /// the same table in Swift, Kotlin and Python.
    fn every_variant() -> Vec<(SottoError, &'static str, bool)> {
        let reason = || "r".to_owned();
        vec![
            (SottoError::WrongStoreKey, "wrong_store_key", false),
            (SottoError::StoreConflict, "store_conflict", true),
            (SottoError::Store { reason: reason() }, "store", false),
            (SottoError::Network { reason: reason() }, "network", true),
            (
                SottoError::Relay {
                    status: 429,
                    relay_code: 40,
                    relay_code_name: "RATE_LIMITED".into(),
                    retryable: true,
                },
                "relay",
                true,
            ),
            (
                SottoError::Relay {
                    status: 404,
                    relay_code: 20,
                    relay_code_name: "UNKNOWN_ACCOUNT".into(),
                    retryable: false,
                },
                "relay",
                false,
            ),
            (SottoError::Transport { reason: reason() }, "transport", false),
            (SottoError::Refused { reason: reason() }, "refused", false),
            (SottoError::DeviceList { reason: reason() }, "device_list", false),
            (SottoError::AccountExists, "account_exists", false),
            (SottoError::NoAccount, "no_account", false),
            (SottoError::BadContact, "bad_contact", false),
            (SottoError::UnknownContact, "unknown_contact", false),
            (SottoError::BadLinkCode, "bad_link_code", false),
            (SottoError::Link { reason: reason() }, "link", false),
            (SottoError::NoAccountKey, "no_account_key", false),
            (SottoError::NoListKey, "no_list_key", false),
            (SottoError::NeedsRecoveryKey, "needs_recovery_key", false),
            (SottoError::BadRecoveryKey, "bad_recovery_key", false),
            (SottoError::UnknownLinkRequest, "unknown_link_request", false),
            (SottoError::LinkTimeout, "link_timeout", false),
            (SottoError::BadGroupId, "bad_group_id", false),
            (SottoError::UnknownGroup, "unknown_group", false),
            (SottoError::NotGroupAdmin, "not_group_admin", false),
            (SottoError::Group { reason: reason() }, "group", false),
            (SottoError::SenderKey { reason: reason() }, "sender_key", false),
            (
                SottoError::InvalidArgument { reason: reason() },
                "invalid_argument",
                false,
            ),
            (SottoError::Closed, "closed", false),
            (SottoError::Internal { reason: reason() }, "internal", false),
            (SottoError::Entropy, "entropy", false),
            (SottoError::UnknownMessage, "unknown_message", false),
            (SottoError::NotAuthor, "not_author", false),
            (SottoError::NotQueued, "not_queued", false),
            (SottoError::Blocked, "blocked", false),
            (SottoError::IdentityUnacknowledged, "identity_unacknowledged", false),
            (SottoError::TooLong { len: 9, max: 8 }, "too_long", false),
            (SottoError::TimerTooLong { max_s: 1 }, "timer_too_long", false),
            (SottoError::DeviceInUse { role: "app".into() }, "device_in_use", true),
            (
                SottoError::AttachmentCorrupt { reason: reason() },
                "attachment_corrupt",
                false,
            ),
            (SottoError::Cancelled, "cancelled", false),
            (SottoError::File { reason: reason() }, "file", false),
        ]
    }

    #[test]
    fn every_variant_has_its_stable_code_and_retryability() {
        let all = every_variant();
        for (e, code, retryable) in &all {
            assert_eq!(e.code(), *code, "{e:?}");
            assert_eq!(e.is_retryable(), *retryable, "{e:?}");
            // Every variant prints something for logs.
            assert!(!e.to_string().is_empty(), "{e:?}");
        }
        // One code per variant (the two relay rows share one).
        let codes: BTreeSet<&str> = all.iter().map(|(_, c, _)| *c).collect();
        assert_eq!(codes.len(), all.len() - 1);
        // This table covers every variant: the match fails to compile when one is added.
        for (e, _, _) in &all {
            match e {
                SottoError::WrongStoreKey
                | SottoError::StoreConflict
                | SottoError::Store { .. }
                | SottoError::Network { .. }
                | SottoError::Relay { .. }
                | SottoError::Transport { .. }
                | SottoError::Refused { .. }
                | SottoError::DeviceList { .. }
                | SottoError::AccountExists
                | SottoError::NoAccount
                | SottoError::BadContact
                | SottoError::UnknownContact
                | SottoError::BadLinkCode
                | SottoError::Link { .. }
                | SottoError::NoAccountKey
                | SottoError::NoListKey
                | SottoError::NeedsRecoveryKey
                | SottoError::BadRecoveryKey
                | SottoError::UnknownLinkRequest
                | SottoError::LinkTimeout
                | SottoError::BadGroupId
                | SottoError::UnknownGroup
                | SottoError::NotGroupAdmin
                | SottoError::Group { .. }
                | SottoError::SenderKey { .. }
                | SottoError::InvalidArgument { .. }
                | SottoError::Closed
                | SottoError::Internal { .. }
                | SottoError::Entropy
                | SottoError::UnknownMessage
                | SottoError::NotAuthor
                | SottoError::NotQueued
                | SottoError::Blocked
                | SottoError::IdentityUnacknowledged
                | SottoError::TooLong { .. }
                | SottoError::TimerTooLong { .. }
                | SottoError::DeviceInUse { .. }
                | SottoError::AttachmentCorrupt { .. }
                | SottoError::Cancelled
                | SottoError::File { .. } => {}
            }
        }
    }

    /// The SDK errors the binding tests cannot provoke through a real call: a store
    /// written by another process meanwhile, a contact's device list that does not verify
    /// (it takes a relay that serves a forged one), a join that is never answered (five
    /// minutes), a sender-key failure, a failing OS random generator, a relay timeout
    /// and a retryable relay refusal.
    #[test]
    fn errors_the_bindings_cannot_provoke_map_to_their_variants() {
        use sotto_proto::ErrorCode;

        let e: SottoError = ClientError::Store(StoreError::Conflict).into();
        assert!(matches!(e, SottoError::StoreConflict) && e.is_retryable());
        let e: SottoError = ClientError::DeviceList(sotto_crypto::DeviceListError::BadSignature).into();
        assert!(matches!(e, SottoError::DeviceList { .. }));
        assert_eq!(e.code(), "device_list");
        let e: SottoError = ClientError::LinkTimeout.into();
        assert_eq!(e.code(), "link_timeout");
        let e: SottoError =
            ClientError::Machine(MachineError::SenderKey(sotto_crypto::SenderKeyError::BadSignature)).into();
        assert!(matches!(e, SottoError::SenderKey { .. }));
        let e: SottoError = ClientError::Entropy.into();
        assert!(matches!(e, SottoError::Entropy) && !e.is_retryable());
        let e: SottoError = ClientError::Transport(TransportError::Timeout).into();
        assert!(matches!(e, SottoError::Network { .. }) && e.is_retryable());
        let e: SottoError = TransportError::Relay {
            status: 429,
            code: ErrorCode::RATE_LIMITED,
        }
        .into();
        match &e {
            SottoError::Relay {
                status,
                relay_code,
                relay_code_name,
                retryable,
            } => {
                assert_eq!((*status, *relay_code), (429, ErrorCode::RATE_LIMITED.0));
                assert_eq!(relay_code_name, "RATE_LIMITED");
                assert!(*retryable);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(e.code(), "relay");
        assert!(e.is_retryable());
        assert_eq!(e.to_string(), "the relay refused: RATE_LIMITED (40)");
    }

    /// Every SDK error code of the chat API has its own case, with the SDK's code and
    /// retryability.
    #[test]
    fn chat_errors_map_to_their_own_cases_with_the_sdks_codes() {
        use sotto_sdk::store::ProcessRole;

        let cases: Vec<ClientError> = vec![
            ClientError::UnknownMessage,
            ClientError::NotAuthor,
            ClientError::NotQueued,
            ClientError::Machine(MachineError::Blocked),
            ClientError::Machine(MachineError::IdentityUnacknowledged),
            ClientError::Machine(MachineError::TextTooLong {
                len: 70_000,
                max: 65_536,
            }),
            ClientError::Machine(MachineError::TimerTooLong { max_s: 60 }),
            ClientError::Machine(MachineError::UnknownGroup),
            ClientError::DeviceInUse { role: ProcessRole::App },
        ];
        for c in cases {
            let (code, retryable) = (c.code(), c.is_retryable());
            let e: SottoError = c.into();
            assert_eq!(e.code(), code, "{e:?}");
            assert_eq!(e.is_retryable(), retryable, "{e:?}");
        }
        let e: SottoError = StoreError::InUse {
            role: ProcessRole::NotificationExtension,
        }
        .into();
        assert!(matches!(&e, SottoError::DeviceInUse { role } if role == "notification_extension"));
        let e: SottoError = ClientError::Machine(MachineError::TextTooLong { len: 9, max: 8 }).into();
        assert!(matches!(e, SottoError::TooLong { len: 9, max: 8 }));
    }

    #[test]
    fn new_events_name_their_conversation_and_message() {
        let a = AccountId([7; 32]);
        let key = sotto_sdk::MessageKey {
            conversation: a,
            sender: a,
            id: sotto_sdk::MessageId([1; 16]),
        };
        let e = Event::new(SdkEvent::MessageEdited { key }, None);
        let Event::MessageEdited { key: k } = e else {
            panic!("{e:?}")
        };
        assert_eq!(k.conversation, Conversation::Direct { account: a.to_string() });
        assert_eq!(k.sender, a.to_string());
        let g = GroupId([9; 32]);
        let e = Event::new(
            SdkEvent::Read {
                conversation: g.conversation(),
                ids: vec![sotto_sdk::MessageId([2; 16])],
                by: (a, DeviceId(3)),
            },
            Some(g),
        );
        assert_eq!(
            e,
            Event::Read {
                conversation: Conversation::Group {
                    group_id: g.to_string()
                },
                ids: vec![sotto_sdk::MessageId([2; 16]).to_string()],
                by_account: a.to_string(),
                by_device: 3,
            }
        );
        assert_eq!(MessageStatus::from(SdkStatus::Read), MessageStatus::Read);
    }

    /// A call that panics inside the runtime fails with `Internal`: the panic does not
    /// cross into the foreign language.
    #[test]
    fn a_panicking_call_is_an_internal_error() {
        let Ok(rt) = runtime() else { panic!("no runtime") };
        let r = rt.block_on(on_runtime::<(), _>(async { panic!("boom") }));
        match r {
            Err(e @ SottoError::Internal { .. }) => {
                assert_eq!(e.code(), "internal");
                assert!(!e.is_retryable());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn contact_ids_are_parsed_at_the_boundary() {
        assert!(matches!(account("not an id"), Err(SottoError::BadContact)));
    }

    #[test]
    fn group_errors_have_their_own_codes() {
        let e: SottoError = ClientError::Machine(MachineError::UnknownGroup).into();
        assert!(matches!(e, SottoError::UnknownGroup));
        assert_eq!(e.code(), "unknown_group");
        let e: SottoError = ClientError::Machine(MachineError::Group(GroupError::NotAdmin)).into();
        assert!(matches!(e, SottoError::NotGroupAdmin));
        assert_eq!(e.code(), "not_group_admin");
        let e: SottoError = ClientError::Machine(MachineError::Group(GroupError::TooManyMembers { max: 1000 })).into();
        assert!(matches!(e, SottoError::Group { .. }));
        assert_eq!(e.code(), "group");
        assert_eq!(SottoError::BadGroupId.code(), "bad_group_id");
        assert_eq!(SottoError::SenderKey { reason: String::new() }.code(), "sender_key");
        assert!(!e.is_retryable());
    }

    #[test]
    fn group_ids_are_parsed_at_the_boundary_and_printed_in_lowercase_hex() {
        assert!(matches!(group_id("not a group"), Err(SottoError::BadGroupId)));
        assert!(matches!(group_id(&"0".repeat(63)), Err(SottoError::BadGroupId)));
        let g = group_id(&"aB".repeat(32));
        assert!(matches!(g, Ok(GroupId(b)) if b == [0xab; 32]));
        assert_eq!(g.map(|g| g.to_string()).ok(), Some("ab".repeat(32)));
    }

    #[test]
    fn a_group_message_names_its_group_as_its_conversation() {
        let m = StoredMessage {
            order: 3,
            ..StoredMessage::text(
                sotto_sdk::MessageId([1; 16]),
                AccountId([7; 32]),
                (AccountId([9; 32]), DeviceId(2)),
                5,
                "hi".into(),
                SdkStatus::Received,
            )
        };
        let group = GroupId([7; 32]);
        let in_group = Message::new(m.clone(), Some(group));
        assert_eq!(in_group.conversation, "07".repeat(32));
        assert_eq!(in_group.group.as_deref(), Some(&*"07".repeat(32)));
        assert_eq!(in_group.sender_account, AccountId([9; 32]).to_string());
        let direct = Message::new(m, None);
        assert_eq!(direct.conversation, AccountId([7; 32]).to_string());
        assert_eq!(direct.group, None);
    }
}
