//! Sotto's client–relay wire protocol: WebSocket frames and HTTP bodies, with one
//! hand-written codec. No I/O, no clock, no randomness: callers pass them in.
//!
//! Every encoding starts with the protocol version byte [`VERSION`]. Integers are
//! big-endian; byte fields carry a `u32` length and lists a `u16` count, each checked
//! against a bound from [`limits`] and against the remaining input before anything is
//! allocated. Decoding never panics: any byte string decodes to a value or to a typed
//! [`DecodeError`].
//!
//! ```
//! use sotto_proto::{Frame, ErrorCode};
//!
//! let frame = Frame::Error { code: ErrorCode::MAILBOX_FULL };
//! let bytes = frame.encode();
//! assert_eq!(bytes, [0x01, 0x7f, 0x00, 33]);
//! assert_eq!(Frame::decode(&bytes), Ok(frame));
//! assert!(Frame::decode(&[0x01, 0xee]).is_err());
//! ```
//!
//! The layouts are documented on [`frame`] and [`body`].
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod access;
pub mod body;
pub mod bus;
mod codec;
mod error_code;
pub mod frame;
pub mod websocket;

#[cfg(test)]
mod tests;

pub use access::{Access, AccessKey};
pub use body::{
    AccessPolicy, BlobCreate, BlobCreated, BlobIssuer, BlobStatus, Body, Bundles, DeviceListBody, ErrorBody,
    PreKeyCounts, PreKeyUpload, ProfileBody, ProfileUpload, PushProvider, PushRegistration, TokenIssue, TokenIssued,
    authorization_header, parse_authorization,
};
pub use bus::{BusMessage, BusNotice, NodeId, Presence};
pub use codec::DecodeError;
pub use error_code::ErrorCode;
pub use frame::{
    AuthResponse, Challenge, Deliver, Frame, Recipient, Send, SendOutcome, SendResult, http_auth_binding, relay_id,
};

/// The protocol version byte that starts every frame and body.
pub const VERSION: u8 = 1;

/// Hard bounds of the codec. A relay's configured limits are at most these.
pub mod limits {
    /// The largest envelope a frame may carry; also the bound on a `Send`'s shared body
    /// and on each of its heads (a relay refuses a recipient whose `head ‖ body` is
    /// above its own, smaller limit).
    pub const MAX_ENVELOPE_LEN: usize = 1 << 20;
    /// The most access keys in one send (one per recipient account).
    pub const MAX_ACCESS_KEYS: usize = 4096;
    /// The most recipients in one send.
    pub const MAX_RECIPIENTS: usize = 4096;
    /// The largest ephemeral payload.
    pub const MAX_EPHEMERAL_LEN: usize = 64 * 1024;
    /// The largest signed device list.
    pub const MAX_DEVICE_LIST_LEN: usize = sotto_crypto::SignedDeviceList::MAX_LEN;
    /// The most one-time X25519 prekeys in one upload.
    pub const MAX_ONE_TIME_PREKEYS_PER_UPLOAD: usize = 1000;
    /// The most one-time ML-KEM prekeys in one upload.
    pub const MAX_KEM_PREKEYS_PER_UPLOAD: usize = 200;
    /// The most bundles in one answer: one per device of an account.
    pub const MAX_BUNDLES: usize = sotto_crypto::device_list::MAX_DEVICES;
    /// The largest push token or endpoint.
    pub const MAX_PUSH_TOKEN_LEN: usize = 4096;
    /// The largest encrypted profile (`ProfileUpload`, `ProfileBody`): a display name and
    /// a small avatar, with room for the encryption's overhead.
    pub const MAX_PROFILE_BYTES: usize = 32 * 1024;
    /// The most blinded points in one token request (`TokenIssue`, `TokenIssued`).
    pub const MAX_TOKEN_BATCH: usize = 32;
    /// The largest piece of a blob upload (`PUT /v1/blobs/{id}/{offset}`).
    pub const MAX_BLOB_PIECE: usize = 4 << 20;
}
