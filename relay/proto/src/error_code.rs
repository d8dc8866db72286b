//! Stable error codes, shared by WebSocket frames and HTTP error bodies.

use std::fmt;

/// A stable error code. It is a number on the wire so that a code added later still
/// decodes in an older client, which then treats it as an unknown error.
///
/// The relay never sends any other error detail: no internal text reaches a client.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $value:expr;)*) => {
        impl ErrorCode {
            $($(#[$doc])* pub const $name: ErrorCode = ErrorCode($value);)*

            /// Every code this version defines.
            pub const ALL: &'static [ErrorCode] = &[$(Self::$name),*];

            /// The code's name (`"ENVELOPE_TOO_LARGE"`), or `"UNKNOWN"` for a code this
            /// version does not define.
            pub fn name(self) -> &'static str {
                match self.0 {
                    $($value => stringify!($name),)*
                    _ => "UNKNOWN",
                }
            }
        }
    };
}

codes! {
    /// A frame or body that does not decode.
    MALFORMED = 1;
    /// A protocol version this relay does not speak.
    UNSUPPORTED_VERSION = 2;
    /// A frame that is not valid in the connection's current state (a relay-to-client frame
    /// sent by a client; anything but a send on an anonymous connection).
    UNEXPECTED_FRAME = 3;
    /// The request needs device authentication and carries none (on a WebSocket: a frame
    /// other than an answer to the challenge or a send, before authenticating).
    AUTH_REQUIRED = 10;
    /// The authentication signature does not verify, or the device is not in its account's
    /// current device list.
    AUTH_FAILED = 11;
    /// The challenge nonce was never issued or was already used (a replay).
    CHALLENGE_UNKNOWN = 12;
    /// The challenge is older than the relay accepts.
    CHALLENGE_EXPIRED = 13;
    /// A notification-extension connection (`AuthExtension`) for a device whose app
    /// connection is open on this relay: the app receives, the extension has nothing to
    /// do.
    DEVICE_ACTIVE = 16;
    /// An upload token that does not verify under the named issuer epoch's key, or names
    /// an epoch the relay does not know or no longer accepts.
    TOKEN_INVALID = 14;
    /// An upload token that was already redeemed.
    TOKEN_SPENT = 15;
    /// No such account.
    UNKNOWN_ACCOUNT = 20;
    /// No such device in the account's current device list.
    UNKNOWN_DEVICE = 21;
    /// The device list belongs to another account than the one addressed.
    ACCOUNT_MISMATCH = 22;
    /// The device list does not decode or its signature does not verify.
    BAD_DEVICE_LIST = 23;
    /// The device list's version is not above the stored one.
    STALE_DEVICE_LIST = 24;
    /// A prekey whose signature does not verify or whose kind does not fit its slot.
    BAD_PREKEY = 25;
    /// The device has no signed prekey or no ML-KEM prekey to hand out.
    NO_PREKEYS = 26;
    /// The upload would store more one-time prekeys than the relay keeps per device.
    TOO_MANY_PREKEYS = 27;
    /// The device list's version is more than the relay's maximum step (1024) above the
    /// stored one (or above it at registration): a list that would leave no room for
    /// later versions.
    VERSION_JUMP = 28;
    /// The device list is signed by a list key of an older epoch than the stored list's
    /// (a replaced, revoked list key), by another list key of the same epoch, or, under
    /// the stored list's list key, removes or changes a device that holds that key
    /// (only a new list key may).
    LIST_KEY_REVOKED = 29;
    /// An envelope above the relay's size limit.
    ENVELOPE_TOO_LARGE = 30;
    /// A send to more devices than the relay allows in one send.
    TOO_MANY_RECIPIENTS = 31;
    /// A send that names one device twice.
    DUPLICATE_RECIPIENT = 32;
    /// A recipient mailbox holds as many envelopes as the relay allows.
    MAILBOX_FULL = 33;
    /// A send with no recipients.
    EMPTY_SEND = 34;
    /// An acknowledgement of a sequence number the relay never delivered.
    ACK_AHEAD = 35;
    /// A send without the recipient account's access key, to an account that takes no
    /// message requests.
    ACCESS_DENIED = 36;
    /// A send without the recipient account's access key (a message request), to a
    /// mailbox that holds as many requests as the relay allows.
    REQUESTS_FULL = 37;
    /// A blob longer than the relay's maximum blob size.
    BLOB_TOO_LARGE = 38;
    /// The device has used its upload tokens for the day.
    QUOTA_EXCEEDED = 39;
    /// Too many requests from one device; retry later.
    RATE_LIMITED = 40;
    /// A request body or frame above the relay's size limit.
    BODY_TOO_LARGE = 41;
    /// The relay holds as many connections as it allows.
    TOO_MANY_CONNECTIONS = 42;
    /// The relay is too busy to issue a challenge; retry later.
    BUSY = 43;
    /// Another connection authenticated as this device; this one closes.
    REPLACED = 44;
    /// The relay is shutting down; reconnect later.
    SHUTTING_DOWN = 45;
    /// The connection was idle for too long.
    IDLE_TIMEOUT = 46;
    /// The request's `Origin` (a web page on another site) is not among the origins the
    /// relay allows.
    ORIGIN_NOT_ALLOWED = 47;
    /// The relay's blob storage holds as many bytes as it is configured to; retry later.
    STORAGE_FULL = 48;
    /// No such resource.
    NOT_FOUND = 50;
    /// A blob piece whose offset is not the number of bytes the relay has received.
    OFFSET_MISMATCH = 52;
    /// Something failed inside the relay. Retrying may work.
    INTERNAL = 60;
}

impl ErrorCode {
    /// True when retrying the same request later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::RATE_LIMITED
                | Self::TOO_MANY_CONNECTIONS
                | Self::BUSY
                | Self::SHUTTING_DOWN
                | Self::INTERNAL
                | Self::MAILBOX_FULL
                | Self::REQUESTS_FULL
                | Self::CHALLENGE_EXPIRED
                | Self::STORAGE_FULL
        )
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ErrorCode({} {})", self.0, self.name())
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_and_named() {
        let set: HashSet<u16> = ErrorCode::ALL.iter().map(|c| c.0).collect();
        assert_eq!(set.len(), ErrorCode::ALL.len());
        assert_eq!(ErrorCode::ENVELOPE_TOO_LARGE.name(), "ENVELOPE_TOO_LARGE");
        assert_eq!(ErrorCode(9999).name(), "UNKNOWN");
        assert_eq!(format!("{:?}", ErrorCode::MAILBOX_FULL), "ErrorCode(33 MAILBOX_FULL)");
    }

    #[test]
    fn blob_codes_have_their_numbers() {
        let codes = [
            (ErrorCode::TOKEN_INVALID, 14),
            (ErrorCode::TOKEN_SPENT, 15),
            (ErrorCode::BLOB_TOO_LARGE, 38),
            (ErrorCode::QUOTA_EXCEEDED, 39),
            (ErrorCode::STORAGE_FULL, 48),
            (ErrorCode::OFFSET_MISMATCH, 52),
        ];
        for (c, n) in codes {
            assert_eq!(c.0, n);
        }
        assert!(ErrorCode::STORAGE_FULL.is_retryable());
        assert!(!ErrorCode::QUOTA_EXCEEDED.is_retryable() && !ErrorCode::TOKEN_SPENT.is_retryable());
    }
}
