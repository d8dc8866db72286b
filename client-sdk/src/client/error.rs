//! The client's error type, and which errors end an outbox item or a connection.

use sotto_crypto::DeviceListError;
use sotto_proto::ErrorCode;
use thiserror::Error;

use crate::machine::MachineError;
use crate::store::StoreError;
use crate::transport::TransportError;

/// True when a failed device-list fetch is a final answer: the relay knows no such
/// account (or refuses for good), or the list does not verify. Anything else (network,
/// timeout, a retryable relay error, the store) is transient.
pub(super) fn is_final(e: &ClientError) -> bool {
    match e {
        ClientError::DeviceList(_) => true,
        ClientError::Transport(TransportError::Relay { code, .. }) => !code.is_retryable(),
        _ => false,
    }
}

/// Rejections about the relay or this device (busy, rate-limited), not about the item's
/// recipient: they pause sending and do not count towards an item's bound. A full
/// mailbox or request quota is the recipient's: it holds up only that recipient's lane.
pub(super) fn is_relay_wide(code: ErrorCode) -> bool {
    code.is_retryable() && !matches!(code, ErrorCode::MAILBOX_FULL | ErrorCode::REQUESTS_FULL)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stranger who fills a victim's request quota must not pause every other send of
    /// the victim's other correspondents (their other lanes).
    #[test]
    fn a_full_mailbox_or_request_quota_is_the_recipients() {
        assert!(!is_relay_wide(ErrorCode::MAILBOX_FULL));
        assert!(!is_relay_wide(ErrorCode::REQUESTS_FULL));
        assert!(!is_relay_wide(ErrorCode::ACCESS_DENIED));
        assert!(is_relay_wide(ErrorCode::RATE_LIMITED));
        assert!(is_relay_wide(ErrorCode::BUSY));
    }
}

/// Why a client call failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The store failed.
    #[error("store: {0}")]
    Store(StoreError),
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
    /// This device does not hold the account key: it is only on the first device, until
    /// the recovery key is exported ([`Client::export_recovery_key`]).
    #[error("this device does not hold the account key")]
    NoAccountKey,
    /// This device does not hold the account's current list key, so it cannot link or
    /// remove devices ([`Client::can_manage_devices`]). Use a device that does, or take
    /// the list key with the recovery key ([`Client::recover_account`]).
    #[error("this device does not hold the list key")]
    NoListKey,
    /// The device to remove holds the list key: removing it needs the recovery key
    /// ([`Client::remove_device_with_recovery_key`]).
    #[error("removing a device that holds the list key needs the recovery key")]
    NeedsRecoveryKey,
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
    /// No such message in this conversation.
    #[error("no such message")]
    UnknownMessage,
    /// Only a message's author may edit or delete it.
    #[error("only the author may change this message")]
    NotAuthor,
    /// The message is not queued (it was sent, or is being sent) or not failed, so it
    /// cannot be cancelled or retried.
    #[error("the message cannot be cancelled or retried in its state")]
    NotQueued,
    /// Another process (or another client in this one) runs this device on this store in
    /// the same role: two would take the relay connection from each other for ever
    /// (docs/protocol.md §13.6). Retryable once that one has stopped.
    #[error("another process runs this device on this store (as {})", role.code())]
    DeviceInUse {
        /// The role both asked for.
        role: crate::store::ProcessRole,
    },
    /// An attachment that does not open: tampered with, truncated, reordered, of another
    /// length or digest than its pointer says (a download); too large (an upload).
    #[error("attachment: {0}")]
    Attachment(sotto_crypto::attachment::AttachmentError),
    /// The upload or download was cancelled ([`crate::Cancel`]).
    #[error("cancelled")]
    Cancelled,
    /// The app took the event stream ([`Client::events`]) of a notification-extension
    /// client, whose fetch reads it.
    #[error("the event stream was taken")]
    EventsTaken,
    /// Reading or writing a local file failed (the I/O error's kind).
    #[error("file: {0}")]
    File(String),
}

impl From<StoreError> for ClientError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InUse { role } => Self::DeviceInUse { role },
            e => Self::Store(e),
        }
    }
}

impl From<MachineError> for ClientError {
    fn from(e: MachineError) -> Self {
        match e {
            MachineError::NoAccountKey => Self::NoAccountKey,
            MachineError::NoListKey => Self::NoListKey,
            MachineError::NeedsRecoveryKey(_) => Self::NeedsRecoveryKey,
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
            Self::Store(StoreError::InUse { .. }) => "device_in_use",
            Self::Store(_) => "store",
            Self::Machine(MachineError::Blocked) => "blocked",
            Self::Machine(MachineError::IdentityUnacknowledged) => "identity_unacknowledged",
            Self::Machine(MachineError::TextTooLong { .. }) => "too_long",
            Self::Machine(MachineError::TimerTooLong { .. }) => "timer_too_long",
            Self::Machine(MachineError::UnknownGroup) => "unknown_group",
            Self::Machine(_) => "machine",
            Self::Transport(TransportError::Relay { code, .. }) if *code == ErrorCode::BLOB_TOO_LARGE => "too_large",
            Self::Transport(TransportError::Relay { code, .. }) if *code == ErrorCode::QUOTA_EXCEEDED => {
                "quota_exceeded"
            }
            Self::Transport(TransportError::Relay { code, .. }) if *code == ErrorCode::STORAGE_FULL => "storage_full",
            Self::Transport(_) => "transport",
            Self::DeviceList(_) => "device_list",
            Self::AccountExists => "account_exists",
            Self::NoAccount => "no_account",
            Self::BadContact => "bad_contact",
            Self::UnknownContact => "unknown_contact",
            Self::BadLinkCode => "bad_link_code",
            Self::Link(_) => "link",
            Self::NoAccountKey => "no_account_key",
            Self::NoListKey => "no_list_key",
            Self::NeedsRecoveryKey => "needs_recovery_key",
            Self::BadRecoveryKey => "bad_recovery_key",
            Self::UnknownLinkRequest => "unknown_link_request",
            Self::LinkTimeout => "link_timeout",
            Self::Entropy => "entropy",
            Self::UnknownMessage => "unknown_message",
            Self::NotAuthor => "not_author",
            Self::NotQueued => "not_queued",
            Self::DeviceInUse { .. } => "device_in_use",
            Self::Attachment(sotto_crypto::attachment::AttachmentError::TooLarge { .. }) => "too_large",
            Self::Attachment(_) => "attachment_corrupt",
            Self::Cancelled => "cancelled",
            Self::EventsTaken => "events_taken",
            Self::File(_) => "file",
        }
    }

    /// True when the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store(StoreError::Conflict) | Self::DeviceInUse { .. } => true,
            Self::Transport(t) => t.is_retryable(),
            _ => false,
        }
    }
}
