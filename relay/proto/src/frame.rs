//! WebSocket frames (binary messages).
//!
//! ```text
//! frame = version (0x01) ‖ type (u8) ‖ body
//!
//! 0x01 Challenge         relay → client  nonce (32) ‖ relay_id (32) ‖ timestamp_ms (u64)
//! 0x02 AuthResponse      client → relay  account_id (32) ‖ device_id (u32) ‖ nonce (32) ‖ signature (64)
//! 0x03 AuthOk            relay → client  mailbox_epoch (16)
//! 0x04 AuthExtension     client → relay  as AuthResponse, from the device's notification-extension process
//! 0x10 Send              client → relay  message_id (u64)
//!                                        ‖ access_count (u16) ‖ access_count × (account_id (32) ‖ access_key (32))
//!                                        ‖ len (u32) ‖ body                     shared by every recipient
//!                                        ‖ count (u16)
//!                                        ‖ count × (account_id (32) ‖ device_id (u32) ‖ len (u32) ‖ head)
//!        envelope of recipient i = head_i ‖ body                 (what its Deliver carries)
//! 0x11 SendResult        relay → client  message_id (u64) ‖ outcome
//!        outcome = 0x00 ‖ count (u16) ‖ count × seq (u64)              stored, seqs in recipient order
//!                | 0x01 ‖ count (u16) ‖ count × (len (u32) ‖ signed device list)   device-set mismatch
//!                | 0x02 ‖ code (u16)                                   rejected
//! 0x12 Deliver           relay → client  seq (u64) ‖ received_at_s (u64) ‖ len (u32) ‖ envelope
//! 0x13 QueueEmpty        relay → client  (empty): every stored envelope has been delivered once
//! 0x14 Ack               client → relay  seq (u64): cumulative, deletes every envelope up to seq
//! 0x20 Ephemeral         client → relay  account_id (32) ‖ len (u32) ‖ payload
//! 0x21 EphemeralDeliver  relay → client  len (u32) ‖ payload
//! 0x7f Error             relay → client  code (u16)
//!
//! auth signature = Ed25519_DSK("Sotto-v1 relay auth" ‖ relay_id ‖ nonce ‖ timestamp_ms (u64)
//!                              ‖ account_id ‖ device_id (u32))
//! relay_id       = SHA-256("Sotto-v1 relay id" ‖ the relay's public URL, as UTF-8)
//! HTTP answers sign the same message with the nonce replaced by http_auth_binding
//! (nonce, method, path, body), see [`http_auth_binding`].
//! ```
//!
//! A `Send` uploads the bytes its recipients' envelopes share once (`body`, e.g. the
//! ciphertext of a group message) and per recipient only what differs (`head`, e.g. a
//! per-device key wrap); the relay stores the body once and delivers `head ‖ body`. A
//! send whose envelopes share nothing (per-device ratchet messages) has an empty body
//! and each whole envelope in its head.
//!
//! Ping and pong are the WebSocket's own control frames. No frame names a sender: a
//! delivered envelope carries its sender sealed inside. A client may answer the
//! `Challenge` with `Send` instead of `AuthResponse`: the connection is then anonymous
//! (sends only; every recipient account's reachable devices expected), so the relay does
//! not learn who sends. The full specification is docs/protocol.md §13.

use sha2::{Digest, Sha256};
use sotto_crypto::{AccountId, DeviceId, Signature};

use crate::codec::{DecodeError, Put, Reader};
use crate::error_code::ErrorCode;
use crate::limits;

/// The label that starts every relay-authentication message.
pub const AUTH_LABEL: &[u8] = b"Sotto-v1 relay auth";
/// The label of the relay-id hash.
pub const RELAY_ID_LABEL: &[u8] = b"Sotto-v1 relay id";

/// The 32-byte identity of a relay: `SHA-256("Sotto-v1 relay id" ‖ public_url)`. A client
/// computes it from the URL it connects to and refuses a challenge that names another relay.
pub fn relay_id(public_url: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(RELAY_ID_LABEL);
    h.update(public_url.as_bytes());
    h.finalize().into()
}

/// The label of the HTTP request binding.
pub const HTTP_AUTH_LABEL: &[u8] = b"Sotto-v1 relay http auth";

/// What an HTTP `Authorization` answer signs in place of the challenge nonce: the nonce
/// bound to one request.
///
/// ```text
/// SHA-256("Sotto-v1 relay http auth" ‖ nonce (32)
///         ‖ len(method) (u16) ‖ method ‖ len(path) (u32) ‖ path ‖ SHA-256(body))
/// ```
///
/// `method` is the request method in upper case (`GET`, `PUT`, `DELETE`), `path` the
/// request target exactly as sent (origin form: the path and, if any, `?` and the query),
/// `body` the request body's bytes (empty for none). A header answered for one request
/// fails on any other method, path or body.
pub fn http_auth_binding(nonce: &[u8; 32], method: &str, path: &str, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(HTTP_AUTH_LABEL);
    h.update(nonce);
    h.update(u16::try_from(method.len()).unwrap_or(u16::MAX).to_be_bytes());
    h.update(method.as_bytes());
    h.update(u32::try_from(path.len()).unwrap_or(u32::MAX).to_be_bytes());
    h.update(path.as_bytes());
    h.update(Sha256::digest(body));
    h.finalize().into()
}

/// A relay-issued authentication challenge. Also the body of `GET /v1/auth/challenge`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Challenge {
    /// Fresh random bytes; single use.
    pub nonce: [u8; 32],
    /// The relay's identity, see [`relay_id`].
    pub relay_id: [u8; 32],
    /// The relay's clock when it issued the challenge, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

impl Challenge {
    /// The bytes a device signs with its DSK to answer this challenge.
    pub fn signed_message(&self, account_id: &AccountId, device_id: DeviceId) -> Vec<u8> {
        sotto_crypto::relay_auth_message(&self.relay_id, &self.nonce, self.timestamp_ms, account_id, device_id)
    }

    /// The bytes a device signs with its DSK to answer this challenge in the
    /// `Authorization` header of the HTTP request `method path` with `body`: the same
    /// message as [`Challenge::signed_message`], with the nonce replaced by
    /// [`http_auth_binding`].
    pub fn signed_http_message(
        &self,
        account_id: &AccountId,
        device_id: DeviceId,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Vec<u8> {
        let bound = http_auth_binding(&self.nonce, method, path, body);
        sotto_crypto::relay_auth_message(&self.relay_id, &bound, self.timestamp_ms, account_id, device_id)
    }

    pub(crate) const LEN: usize = 32 + 32 + 8;

    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        out.put(&self.nonce);
        out.put(&self.relay_id);
        out.put_u64(self.timestamp_ms);
    }

    pub(crate) fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            nonce: r.array()?,
            relay_id: r.array()?,
            timestamp_ms: r.u64()?,
        })
    }
}

/// A device's answer to a [`Challenge`]. Also the payload of the HTTP `Authorization`
/// header (see [`crate::body::authorization_header`]).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AuthResponse {
    /// The account the device belongs to.
    pub account_id: AccountId,
    /// The device.
    pub device_id: DeviceId,
    /// The nonce of the challenge answered.
    pub nonce: [u8; 32],
    /// The DSK signature over [`Challenge::signed_message`].
    pub signature: Signature,
}

impl AuthResponse {
    pub(crate) const LEN: usize = 32 + 4 + 32 + 64;

    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        out.put(self.account_id.as_bytes());
        out.put_u32(self.device_id.0);
        out.put(&self.nonce);
        out.put(&self.signature.0);
    }

    pub(crate) fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            account_id: AccountId(r.array()?),
            device_id: DeviceId(r.u32()?),
            nonce: r.array()?,
            signature: Signature(r.array()?),
        })
    }
}

/// One recipient device of a send and its part of the envelope.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Recipient {
    /// The recipient's account.
    pub account_id: AccountId,
    /// The recipient device.
    pub device_id: DeviceId,
    /// The bytes of this device's envelope before the shared body ([`Send::body`]); the
    /// whole envelope when the body is empty.
    pub head: Vec<u8>,
}

impl Recipient {
    /// The length of this recipient's envelope, `head ‖ body`, for a send whose shared
    /// body is `body_len` bytes.
    pub fn envelope_len(&self, body_len: usize) -> usize {
        self.head.len().saturating_add(body_len)
    }
}

/// A send: envelopes for a set of recipient devices, stored all or none. The envelope of
/// recipient `i` is `recipients[i].head ‖ body`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Send {
    /// A client-chosen id the [`SendResult`] repeats.
    pub message_id: u64,
    /// Access keys of recipient accounts, in ascending account-id order (so at most one
    /// per account; the decoder refuses any other order). An envelope for an
    /// account without its key here is a message request (docs/protocol.md §13.8),
    /// except for the sender's own account on an authenticated connection.
    pub access: Vec<crate::Access>,
    /// The bytes every recipient's envelope ends with, uploaded and stored once (empty
    /// when the envelopes share nothing).
    pub body: Vec<u8>,
    /// The recipients. For every account named, the devices named must all be in the
    /// account's current device list and must include every listed device the relay can
    /// make a bundle for (without the sending device, for the sender's own account on an
    /// authenticated connection); listed devices without prekeys may be left out
    /// (docs/protocol.md §13.7).
    pub recipients: Vec<Recipient>,
}

/// How a send ended.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum SendOutcome {
    /// Stored; one mailbox sequence number per recipient, in the send's order.
    Stored {
        /// The sequence numbers.
        seqs: Vec<u64>,
    },
    /// The device set of at least one account does not match its current device list.
    /// Nothing was stored. Carries the current signed device list of every such account.
    DeviceMismatch {
        /// Signed device lists (crypto-core `SignedDeviceList` encoding).
        device_lists: Vec<Vec<u8>>,
    },
    /// Refused; nothing was stored.
    Rejected {
        /// Why.
        code: ErrorCode,
    },
}

/// The relay's answer to a [`Send`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SendResult {
    /// The [`Send::message_id`] answered.
    pub message_id: u64,
    /// The outcome.
    pub outcome: SendOutcome,
}

/// An envelope from the device's mailbox.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Deliver {
    /// Its mailbox sequence number: strictly increasing and gap-free per mailbox.
    pub seq: u64,
    /// When the relay stored it, in seconds since the Unix epoch, rounded down to the
    /// relay's coarse granularity.
    pub received_at_s: u64,
    /// The opaque envelope.
    pub envelope: Vec<u8>,
}

/// A frame on the WebSocket.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Frame {
    /// `0x01` relay → client: the authentication challenge, sent first.
    Challenge(Challenge),
    /// `0x02` client → relay: the answer to the challenge.
    AuthResponse(AuthResponse),
    /// `0x04` client → relay: the answer to the challenge from the device's
    /// notification-extension process: it authenticates like [`Frame::AuthResponse`],
    /// but never replaces the device's app connection (the relay answers
    /// `Error(DEVICE_ACTIVE)` while that one is open), and an app connection replaces it.
    AuthExtension(AuthResponse),
    /// `0x03` relay → client: authenticated; mailbox delivery starts.
    AuthOk {
        /// The epoch of the device's mailbox numbering: it changes whenever the relay may
        /// number the mailbox anew (every relay start, so every database restore, and
        /// every re-registration of the device). A client that sees another epoch than
        /// the one its last seen seq counts in starts counting from 0 again, instead of
        /// dropping envelopes whose seq it believes it has seen.
        mailbox_epoch: [u8; 16],
    },
    /// `0x10` client → relay: store envelopes for a set of devices. Sent instead of the
    /// `AuthResponse`, it makes the connection anonymous for its lifetime.
    Send(Send),
    /// `0x11` relay → client: the answer to a send.
    SendResult(SendResult),
    /// `0x12` relay → client: an envelope from the mailbox.
    Deliver(Deliver),
    /// `0x13` relay → client: the envelopes stored when the connection authenticated have
    /// all been delivered; later ones arrive live.
    QueueEmpty,
    /// `0x14` client → relay: every envelope up to and including `seq` is handled; the
    /// relay deletes them.
    Ack {
        /// The highest handled sequence number.
        seq: u64,
    },
    /// `0x15` client → relay: the client read a send refused for a reason of the whole
    /// relay (`BUSY`, `RATE_LIMITED`) and sends again. After such a refusal the relay
    /// refuses every later send on the connection with the same code until this frame,
    /// so sends the client wrote before it learned of the refusal cannot be stored ahead
    /// of the refused one; the sends after it are taken as usual. No answer.
    Resume,
    /// `0x20` client → relay: a payload for the connected devices of an account (typing,
    /// presence). Never stored; dropped for devices that are not connected.
    Ephemeral {
        /// The recipient account.
        to: AccountId,
        /// The opaque payload.
        payload: Vec<u8>,
    },
    /// `0x21` relay → client: an ephemeral payload.
    EphemeralDeliver {
        /// The opaque payload.
        payload: Vec<u8>,
    },
    /// `0x7f` relay → client: a request or frame failed.
    Error {
        /// Why.
        code: ErrorCode,
    },
}

mod tag {
    pub(super) const CHALLENGE: u8 = 0x01;
    pub(super) const AUTH_RESPONSE: u8 = 0x02;
    pub(super) const AUTH_OK: u8 = 0x03;
    pub(super) const AUTH_EXTENSION: u8 = 0x04;
    pub(super) const SEND: u8 = 0x10;
    pub(super) const SEND_RESULT: u8 = 0x11;
    pub(super) const DELIVER: u8 = 0x12;
    pub(super) const QUEUE_EMPTY: u8 = 0x13;
    pub(super) const ACK: u8 = 0x14;
    pub(super) const RESUME: u8 = 0x15;
    pub(super) const EPHEMERAL: u8 = 0x20;
    pub(super) const EPHEMERAL_DELIVER: u8 = 0x21;
    pub(super) const ERROR: u8 = 0x7f;

    pub(super) const OUTCOME_STORED: u8 = 0;
    pub(super) const OUTCOME_MISMATCH: u8 = 1;
    pub(super) const OUTCOME_REJECTED: u8 = 2;
}

/// Minimum encoded size of one recipient: account, device, head length.
const RECIPIENT_MIN: usize = 32 + 4 + 4;

impl Frame {
    /// The frame's type byte.
    pub fn type_byte(&self) -> u8 {
        match self {
            Frame::Challenge(_) => tag::CHALLENGE,
            Frame::AuthResponse(_) => tag::AUTH_RESPONSE,
            Frame::AuthOk { .. } => tag::AUTH_OK,
            Frame::AuthExtension(_) => tag::AUTH_EXTENSION,
            Frame::Send(_) => tag::SEND,
            Frame::SendResult(_) => tag::SEND_RESULT,
            Frame::Deliver(_) => tag::DELIVER,
            Frame::QueueEmpty => tag::QUEUE_EMPTY,
            Frame::Ack { .. } => tag::ACK,
            Frame::Resume => tag::RESUME,
            Frame::Ephemeral { .. } => tag::EPHEMERAL,
            Frame::EphemeralDeliver { .. } => tag::EPHEMERAL_DELIVER,
            Frame::Error { .. } => tag::ERROR,
        }
    }

    /// Encodes the frame. Lists and byte fields must be within the bounds of
    /// [`crate::limits`] for the result to decode.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len_hint());
        out.put_u8(crate::VERSION);
        out.put_u8(self.type_byte());
        match self {
            Frame::Challenge(c) => c.encode_into(&mut out),
            Frame::AuthResponse(a) | Frame::AuthExtension(a) => a.encode_into(&mut out),
            Frame::AuthOk { mailbox_epoch } => out.put(mailbox_epoch),
            Frame::QueueEmpty | Frame::Resume => {}
            Frame::Send(s) => {
                out.put_u64(s.message_id);
                out.put_count(s.access.len());
                for a in &s.access {
                    out.put(a.account_id.as_bytes());
                    out.put(&a.key.0);
                }
                out.put_var(&s.body);
                out.put_count(s.recipients.len());
                for r in &s.recipients {
                    out.put(r.account_id.as_bytes());
                    out.put_u32(r.device_id.0);
                    out.put_var(&r.head);
                }
            }
            Frame::SendResult(r) => {
                out.put_u64(r.message_id);
                match &r.outcome {
                    SendOutcome::Stored { seqs } => {
                        out.put_u8(tag::OUTCOME_STORED);
                        out.put_count(seqs.len());
                        for s in seqs {
                            out.put_u64(*s);
                        }
                    }
                    SendOutcome::DeviceMismatch { device_lists } => {
                        out.put_u8(tag::OUTCOME_MISMATCH);
                        out.put_count(device_lists.len());
                        for l in device_lists {
                            out.put_var(l);
                        }
                    }
                    SendOutcome::Rejected { code } => {
                        out.put_u8(tag::OUTCOME_REJECTED);
                        out.put_u16(code.0);
                    }
                }
            }
            Frame::Deliver(d) => {
                out.put_u64(d.seq);
                out.put_u64(d.received_at_s);
                out.put_var(&d.envelope);
            }
            Frame::Ack { seq } => out.put_u64(*seq),
            Frame::Ephemeral { to, payload } => {
                out.put(to.as_bytes());
                out.put_var(payload);
            }
            Frame::EphemeralDeliver { payload } => out.put_var(payload),
            Frame::Error { code } => out.put_u16(code.0),
        }
        out
    }

    pub(crate) fn encoded_len_hint(&self) -> usize {
        2 + match self {
            // The body once, however many recipients share it.
            Frame::Send(s) => {
                16 + 64 * s.access.len()
                    + s.body.len()
                    + s.recipients.iter().map(|r| RECIPIENT_MIN + r.head.len()).sum::<usize>()
            }
            Frame::Deliver(d) => 20 + d.envelope.len(),
            Frame::Ephemeral { payload, .. } => 36 + payload.len(),
            Frame::EphemeralDeliver { payload } => 4 + payload.len(),
            _ => 128,
        }
    }

    /// Decodes one frame. Any byte string yields a frame or a typed error; nothing is
    /// allocated beyond what the input holds.
    pub fn decode(bytes: &[u8]) -> Result<Frame, DecodeError> {
        let mut r = Reader::new(bytes);
        r.version(crate::VERSION)?;
        let frame = match r.u8()? {
            tag::CHALLENGE => Frame::Challenge(Challenge::decode_from(&mut r)?),
            tag::AUTH_RESPONSE => Frame::AuthResponse(AuthResponse::decode_from(&mut r)?),
            tag::AUTH_EXTENSION => Frame::AuthExtension(AuthResponse::decode_from(&mut r)?),
            tag::AUTH_OK => Frame::AuthOk {
                mailbox_epoch: r.array()?,
            },
            tag::SEND => {
                let message_id = r.u64()?;
                let n = r.count("access keys", limits::MAX_ACCESS_KEYS, 64)?;
                let mut access: Vec<crate::Access> = Vec::with_capacity(n);
                for _ in 0..n {
                    let account_id = AccountId(r.array()?);
                    if access.last().is_some_and(|a| a.account_id.0 >= account_id.0) {
                        return Err(DecodeError::Invalid {
                            field: "access keys (not in ascending account order)",
                        });
                    }
                    access.push(crate::Access {
                        account_id,
                        key: crate::AccessKey(r.array()?),
                    });
                }
                let body = r.var_bytes("body", limits::MAX_ENVELOPE_LEN)?.to_vec();
                let n = r.count("recipients", limits::MAX_RECIPIENTS, RECIPIENT_MIN)?;
                let mut recipients = Vec::with_capacity(n);
                for _ in 0..n {
                    recipients.push(Recipient {
                        account_id: AccountId(r.array()?),
                        device_id: DeviceId(r.u32()?),
                        head: r.var_bytes("head", limits::MAX_ENVELOPE_LEN)?.to_vec(),
                    });
                }
                Frame::Send(Send {
                    message_id,
                    access,
                    body,
                    recipients,
                })
            }
            tag::SEND_RESULT => {
                let message_id = r.u64()?;
                let outcome = match r.u8()? {
                    tag::OUTCOME_STORED => {
                        let n = r.count("seqs", limits::MAX_RECIPIENTS, 8)?;
                        let mut seqs = Vec::with_capacity(n);
                        for _ in 0..n {
                            seqs.push(r.u64()?);
                        }
                        SendOutcome::Stored { seqs }
                    }
                    tag::OUTCOME_MISMATCH => {
                        let n = r.count("device lists", limits::MAX_RECIPIENTS, 4)?;
                        let mut device_lists = Vec::with_capacity(n);
                        for _ in 0..n {
                            device_lists.push(r.var_bytes("device list", limits::MAX_DEVICE_LIST_LEN)?.to_vec());
                        }
                        SendOutcome::DeviceMismatch { device_lists }
                    }
                    tag::OUTCOME_REJECTED => SendOutcome::Rejected {
                        code: ErrorCode(r.u16()?),
                    },
                    value => {
                        return Err(DecodeError::UnknownType {
                            field: "send outcome",
                            value,
                        });
                    }
                };
                Frame::SendResult(SendResult { message_id, outcome })
            }
            tag::DELIVER => Frame::Deliver(Deliver {
                seq: r.u64()?,
                received_at_s: r.u64()?,
                envelope: r.var_bytes("envelope", limits::MAX_ENVELOPE_LEN)?.to_vec(),
            }),
            tag::QUEUE_EMPTY => Frame::QueueEmpty,
            tag::ACK => Frame::Ack { seq: r.u64()? },
            tag::RESUME => Frame::Resume,
            tag::EPHEMERAL => Frame::Ephemeral {
                to: AccountId(r.array()?),
                payload: r.var_bytes("ephemeral payload", limits::MAX_EPHEMERAL_LEN)?.to_vec(),
            },
            tag::EPHEMERAL_DELIVER => Frame::EphemeralDeliver {
                payload: r.var_bytes("ephemeral payload", limits::MAX_EPHEMERAL_LEN)?.to_vec(),
            },
            tag::ERROR => Frame::Error {
                code: ErrorCode(r.u16()?),
            },
            value => {
                return Err(DecodeError::UnknownType {
                    field: "frame type",
                    value,
                });
            }
        };
        r.finish()?;
        Ok(frame)
    }
}

/// The fixed sizes, for callers that pre-check.
pub mod sizes {
    /// An encoded [`super::Challenge`] frame.
    pub const CHALLENGE_FRAME: usize = 2 + super::Challenge::LEN;
    /// An encoded [`super::AuthResponse`] frame.
    pub const AUTH_RESPONSE_FRAME: usize = 2 + super::AuthResponse::LEN;
}
