//! The Double Ratchet (docs/protocol.md §6), after Signal's specification.
//!
//! ```text
//! KDF_RK(rk, dh)     = HKDF-SHA256(salt = rk, ikm = dh, info = "Sotto-v1 ratchet root") → rk' (32) ‖ ck (32)
//! KDF_CK(ck)         = mk = HMAC-SHA256(ck, 0x01), ck' = HMAC-SHA256(ck, 0x02)
//! message keys       = HKDF-SHA256(salt = header.salt (16), ikm = mk, info = "Sotto-v1 message keys")
//!                      → key (32) ‖ nonce (12)
//! header             = 0x01 ‖ ratchet_pub (32) ‖ pn (u32) ‖ n (u32) ‖ salt (16)            57 bytes
//! message            = header ‖ ChaCha20-Poly1305(key, nonce, plaintext, ad = session_ad ‖ header) ‖ tag (16)
//! ```
//! Bounds: one message may make the receiver derive and store at most [`MAX_SKIP`]
//! skipped keys in all (on a DH step: the previous chain's keys up to `pn` plus the new
//! chain's keys up to `n`); a session keeps at most [`MAX_SKIPPED_KEYS`] skipped keys
//! and [`MAX_RECEIVING_CHAINS`] receiving chains, evicting the oldest. A failed
//! decryption leaves the session unchanged.
//!
//! Start-up (Olm-style): the PQXDH output gives the root key and the initiator's first
//! sending chain key directly; the initiator's first ratchet key is fresh, and the
//! responder's first DH ratchet step happens on its first `encrypt`.

use std::collections::VecDeque;
use std::fmt;

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use rand_core::CryptoRngCore;
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::codec::{DecodeError, Put, Reader};
use crate::identity::DeviceIdentity;
use crate::kdf::{hkdf, hmac_byte, info};
use crate::keys::{KeyError, X25519PublicKey, X25519Secret};

/// Most keys one message may make the receiver skip in one chain.
pub const MAX_SKIP: u32 = 2000;
/// Most skipped message keys a session stores; the oldest is evicted beyond this.
pub const MAX_SKIPPED_KEYS: usize = 2000;
/// Most receiving chains a session keeps; the oldest is evicted beyond this.
pub const MAX_RECEIVING_CHAINS: usize = 5;
/// Largest plaintext the ratchet encrypts.
pub const MAX_PLAINTEXT_LEN: usize = 1 << 20;
/// Header length.
pub const HEADER_LEN: usize = 57;
/// AEAD tag length.
pub const TAG_LEN: usize = 16;
/// Session associated data length (two device identities and a version byte).
pub const AD_LEN: usize = 1 + 2 * DeviceIdentity::ENCODED_LEN;

const HEADER_VERSION: u8 = 1;
const AD_VERSION: u8 = 1;

/// What kind of message a ciphertext is; carried next to it (in the sealed envelope).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// A Double Ratchet message on an established session.
    Ratchet = 1,
    /// A session-initiating PQXDH message wrapping a Double Ratchet message.
    PreKey = 2,
}

impl MessageType {
    /// From the type byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Ratchet),
            2 => Some(Self::PreKey),
            _ => None,
        }
    }
}

/// An encrypted message and its type.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OutboundMessage {
    /// The type byte to send with it.
    pub message_type: MessageType,
    /// The encoded message.
    pub bytes: Vec<u8>,
}

/// Why encryption failed. The session is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EncryptError {
    /// The plaintext is longer than [`MAX_PLAINTEXT_LEN`].
    #[error("plaintext of {len} bytes exceeds {max}")]
    MessageTooLarge {
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The sending chain reached 2^32 - 1 messages.
    #[error("sending chain exhausted")]
    ChainExhausted,
    /// The peer's ratchet key is of small order.
    #[error("non-contributory ratchet key")]
    NonContributory,
}

/// Why decryption failed. The session is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecryptError {
    /// The message does not decode.
    #[error("message does not decode: {0}")]
    Decode(#[from] DecodeError),
    /// This message was already decrypted, or its key was evicted.
    #[error("message {index} of this chain was already decrypted or its key was discarded")]
    Duplicate {
        /// The message number.
        index: u32,
    },
    /// The message would skip more keys than allowed.
    #[error("message skips {gap} keys, more than {max}")]
    TooBigMessageGap {
        /// Keys it would skip.
        gap: u32,
        /// [`MAX_SKIP`].
        max: u32,
    },
    /// Authentication failed: a forged, corrupted or misdirected message.
    #[error("message authentication failed")]
    InvalidMac,
    /// A new ratchet key where the peer cannot have made one (we have not sent since
    /// its last one).
    #[error("message on an unknown ratchet chain")]
    UnknownChain,
    /// The peer's ratchet key is of small order.
    #[error("non-contributory ratchet key")]
    NonContributory,
    /// A pre-key message that belongs to another session.
    #[error("pre-key message for another session")]
    WrongSession,
}

#[derive(Zeroize, ZeroizeOnDrop, Clone)]
pub(crate) struct Key32(pub(crate) [u8; 32]);

struct SendingChain {
    ratchet: X25519Secret,
    chain_key: Key32,
    index: u32,
}

#[derive(Clone)]
struct ReceivingChain {
    ratchet_key: X25519PublicKey,
    chain_key: Key32,
    index: u32,
}

#[derive(Clone)]
struct SkippedKey {
    ratchet_key: X25519PublicKey,
    index: u32,
    message_key: Key32,
}

/// The parsed header of a Double Ratchet message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Header {
    /// The sender's current ratchet public key.
    pub ratchet_key: X25519PublicKey,
    /// Length of the sender's previous sending chain.
    pub previous_chain_length: u32,
    /// Message number in the current chain.
    pub index: u32,
    /// Random per-message salt for the message-key expansion.
    pub salt: [u8; 16],
}

impl Header {
    /// The 57-byte encoding.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = HEADER_VERSION;
        out[1..33].copy_from_slice(self.ratchet_key.as_bytes());
        out[33..37].copy_from_slice(&self.previous_chain_length.to_be_bytes());
        out[37..41].copy_from_slice(&self.index.to_be_bytes());
        out[41..57].copy_from_slice(&self.salt);
        out
    }

    /// Splits a Double Ratchet message into its header and the ciphertext with tag.
    pub fn parse(message: &[u8]) -> Result<(Header, &[u8]), DecodeError> {
        let mut r = Reader::new(message);
        r.version(HEADER_VERSION)?;
        let header = Header {
            ratchet_key: X25519PublicKey(r.array()?),
            previous_chain_length: r.u32()?,
            index: r.u32()?,
            salt: r.array()?,
        };
        // Senders stop at 2^32 - 2 (`ChainExhausted`), so the last number never occurs.
        if header.index == u32::MAX {
            return Err(DecodeError::Invalid {
                field: "message number",
            });
        }
        let body = r.rest();
        if body.len() < TAG_LEN {
            return Err(DecodeError::Truncated {
                needed: TAG_LEN,
                remaining: body.len(),
            });
        }
        Ok((header, body))
    }
}

/// KDF_RK.
pub(crate) fn kdf_rk(root: &Key32, dh: &[u8; 32]) -> (Key32, Key32) {
    let okm = hkdf::<64>(&root.0, dh, &[info::ROOT]);
    split64(&okm)
}

pub(crate) fn split64(okm: &[u8; 64]) -> (Key32, Key32) {
    let mut a = Key32([0; 32]);
    let mut b = Key32([0; 32]);
    a.0.copy_from_slice(&okm[..32]);
    b.0.copy_from_slice(&okm[32..]);
    (a, b)
}

/// KDF_CK: (message key, next chain key).
pub(crate) fn kdf_ck(ck: &Key32) -> (Key32, Key32) {
    (Key32(*hmac_byte(&ck.0, 1)), Key32(*hmac_byte(&ck.0, 2)))
}

/// The AEAD key and nonce for one message.
pub(crate) fn message_keys(mk: &Key32, salt: &[u8; 16]) -> Zeroizing<[u8; 44]> {
    hkdf::<44>(salt, &mk.0, &[info::MESSAGE_KEYS])
}

fn aead_ad(session_ad: &[u8; AD_LEN], header: &[u8; HEADER_LEN]) -> [u8; AD_LEN + HEADER_LEN] {
    let mut ad = [0u8; AD_LEN + HEADER_LEN];
    ad[..AD_LEN].copy_from_slice(session_ad);
    ad[AD_LEN..].copy_from_slice(header);
    ad
}

/// The session associated data: `0x01 ‖ initiator identity ‖ responder identity`,
/// each identity `account_id ‖ device_id ‖ DSK ‖ IK`.
pub(crate) fn session_ad(initiator: &DeviceIdentity, responder: &DeviceIdentity) -> [u8; AD_LEN] {
    let mut v = Vec::with_capacity(AD_LEN);
    v.put_u8(AD_VERSION);
    initiator.encode_into(&mut v);
    responder.encode_into(&mut v);
    let mut out = [0u8; AD_LEN];
    out.copy_from_slice(&v);
    out
}

fn open(mk: &Key32, header: &Header, session_ad: &[u8; AD_LEN], body: &[u8]) -> Result<Vec<u8>, DecryptError> {
    let keys = message_keys(mk, &header.salt);
    let cipher = ChaCha20Poly1305::new((&keys[..32]).into());
    let split = body.len() - TAG_LEN; // `Header::parse` guarantees body.len() >= TAG_LEN
    let (ct, tag) = body.split_at(split);
    let mut buf = ct.to_vec();
    let ad = aead_ad(session_ad, &header.encode());
    match cipher.decrypt_in_place_detached((&keys[32..]).into(), &ad, &mut buf, tag.into()) {
        Ok(()) => Ok(buf),
        Err(_) => {
            buf.zeroize();
            Err(DecryptError::InvalidMac)
        }
    }
}

/// A Double Ratchet session with one remote device.
///
/// Call order: an initiator gets one from [`crate::x3dh::initiate`] and may
/// [`encrypt`](Self::encrypt) at once (its messages are pre-key messages until the
/// first reply decrypts); a responder gets one from [`crate::x3dh::respond`] together
/// with the first plaintext. Both then [`encrypt`](Self::encrypt) and
/// [`decrypt`](Self::decrypt) in any order. Persist with [`pickle`](Self::pickle) after
/// every successful call.
pub struct Session {
    pub(crate) local: DeviceIdentity,
    pub(crate) remote: DeviceIdentity,
    pub(crate) initiator: bool,
    pub(crate) base_key: X25519PublicKey,
    pub(crate) ad: [u8; AD_LEN],
    pub(crate) root: Key32,
    sending: Option<SendingChain>,
    pub(crate) previous_chain_length: u32,
    pub(crate) pending_ratchet: Option<X25519PublicKey>,
    receiving: VecDeque<ReceivingChain>,
    skipped: VecDeque<SkippedKey>,
    pub(crate) pending_prekey: Option<Vec<u8>>,
    /// Responder only: SHA-256 of the pre-key message prefix that created the session.
    /// Later pre-key messages must carry the identical prefix.
    pub(crate) prekey_prefix_hash: Option<[u8; 32]>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("local", &(self.local.account_id, self.local.device_id))
            .field("remote", &(self.remote.account_id, self.remote.device_id))
            .field("initiator", &self.initiator)
            .field("base_key", &self.base_key)
            .field("receiving_chains", &self.receiving.len())
            .field("skipped_keys", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn new_initiator(
        local: DeviceIdentity,
        remote: DeviceIdentity,
        base_key: X25519PublicKey,
        root: Key32,
        chain_key: Key32,
        ratchet: X25519Secret,
        prekey_prefix: Vec<u8>,
    ) -> Self {
        Self {
            ad: session_ad(&local, &remote),
            local,
            remote,
            initiator: true,
            base_key,
            root,
            sending: Some(SendingChain {
                ratchet,
                chain_key,
                index: 0,
            }),
            previous_chain_length: 0,
            pending_ratchet: None,
            receiving: VecDeque::new(),
            skipped: VecDeque::new(),
            pending_prekey: Some(prekey_prefix),
            prekey_prefix_hash: None,
        }
    }

    pub(crate) fn new_responder(
        local: DeviceIdentity,
        remote: DeviceIdentity,
        base_key: X25519PublicKey,
        root: Key32,
        chain_key: Key32,
        their_ratchet: X25519PublicKey,
        prekey_prefix: &[u8],
    ) -> Self {
        let mut receiving = VecDeque::with_capacity(1);
        receiving.push_back(ReceivingChain {
            ratchet_key: their_ratchet,
            chain_key,
            index: 0,
        });
        Self {
            ad: session_ad(&remote, &local),
            local,
            remote,
            initiator: false,
            base_key,
            root,
            sending: None,
            previous_chain_length: 0,
            pending_ratchet: Some(their_ratchet),
            receiving,
            skipped: VecDeque::new(),
            pending_prekey: None,
            prekey_prefix_hash: Some(crate::kdf::sha256(&[prekey_prefix])),
        }
    }

    /// The remote device this session talks to.
    pub fn remote(&self) -> &DeviceIdentity {
        &self.remote
    }

    /// This device's identity as bound into the session.
    pub fn local(&self) -> &DeviceIdentity {
        &self.local
    }

    /// The initiator's PQXDH ephemeral key: identifies the session on both sides.
    pub fn base_key(&self) -> &X25519PublicKey {
        &self.base_key
    }

    /// True while this (initiating) session still sends pre-key messages, i.e. no
    /// reply from the peer has decrypted yet.
    pub fn is_pending_prekey(&self) -> bool {
        self.pending_prekey.is_some()
    }

    /// While pending: the responder's prekeys this session's pre-key messages name, as
    /// `(signed prekey id, (ML-KEM prekey kind, id))`. A responder keeps signed and
    /// last-resort prekeys only for a while after replacing them, so an initiator whose
    /// session was never answered starts a new one once these are old (the SDK's policy).
    pub fn pending_prekey_ids(&self) -> Option<(u32, (crate::PreKeyKind, u32))> {
        let prefix = self.pending_prekey.as_deref()?;
        let mut r = Reader::new(prefix);
        r.bytes(1 + DeviceIdentity::ENCODED_LEN).ok()?;
        let signed = r.u32().ok()?;
        if r.u8().ok()? == 1 {
            r.u32().ok()?;
        }
        let kind = crate::PreKeyKind::from_byte(r.u8().ok()?).ok()?;
        let kem = r.u32().ok()?;
        Some((signed, (kind, kem)))
    }

    /// How many skipped message keys are stored (at most [`MAX_SKIPPED_KEYS`]).
    pub fn skipped_key_count(&self) -> usize {
        self.skipped.len()
    }

    /// Encrypts one message. Draws, in order: a new ratchet scalar (32 bytes, only
    /// when a DH ratchet step is due) and the 16-byte header salt.
    pub fn encrypt(&mut self, plaintext: &[u8], rng: &mut impl CryptoRngCore) -> Result<OutboundMessage, EncryptError> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(EncryptError::MessageTooLarge {
                len: plaintext.len(),
                max: MAX_PLAINTEXT_LEN,
            });
        }
        // A DH ratchet step, computed into locals and committed below.
        let step = match self.pending_ratchet {
            Some(their) => {
                let ratchet = X25519Secret::generate(rng);
                let dh = ratchet.dh(&their).map_err(|_| EncryptError::NonContributory)?;
                let (root, chain_key) = kdf_rk(&self.root, &dh);
                let pn = self.sending.as_ref().map_or(0, |s| s.index);
                Some((
                    root,
                    SendingChain {
                        ratchet,
                        chain_key,
                        index: 0,
                    },
                    pn,
                ))
            }
            None => None,
        };
        let chain = match (&step, &self.sending) {
            (Some((_, c, _)), _) | (None, Some(c)) => c,
            // A session always has a sending chain or a pending ratchet step.
            (None, None) => return Err(EncryptError::ChainExhausted),
        };
        if chain.index == u32::MAX {
            return Err(EncryptError::ChainExhausted);
        }
        let (mk, next_ck) = kdf_ck(&chain.chain_key);
        #[cfg(test)]
        test_hooks::record(&mk.0);
        let mut salt = [0u8; 16];
        rng.fill_bytes(&mut salt);
        let pn = step.as_ref().map_or(self.previous_chain_length, |s| s.2);
        let header = Header {
            ratchet_key: chain.ratchet.public(),
            previous_chain_length: pn,
            index: chain.index,
            salt,
        }
        .encode();
        let keys = message_keys(&mk, &salt);
        let prefix_len = self.pending_prekey.as_ref().map_or(0, Vec::len);
        let mut out = Vec::with_capacity(prefix_len + HEADER_LEN + plaintext.len() + TAG_LEN);
        if let Some(prefix) = &self.pending_prekey {
            out.extend_from_slice(prefix);
        }
        out.extend_from_slice(&header);
        out.extend_from_slice(plaintext);
        let cipher = ChaCha20Poly1305::new((&keys[..32]).into());
        let ad = aead_ad(&self.ad, &header);
        let start = prefix_len + HEADER_LEN;
        let tag = cipher
            .encrypt_in_place_detached((&keys[32..]).into(), &ad, &mut out[start..])
            .map_err(|_| EncryptError::MessageTooLarge {
                len: plaintext.len(),
                max: MAX_PLAINTEXT_LEN,
            })?;
        out.extend_from_slice(&tag);

        // Commit.
        if let Some((root, chain, pn)) = step {
            self.root = root;
            self.sending = Some(chain);
            self.previous_chain_length = pn;
            self.pending_ratchet = None;
        }
        if let Some(s) = self.sending.as_mut() {
            s.chain_key = next_ck;
            s.index += 1;
        }
        let message_type = if self.pending_prekey.is_some() {
            MessageType::PreKey
        } else {
            MessageType::Ratchet
        };
        Ok(OutboundMessage {
            message_type,
            bytes: out,
        })
    }

    /// Decrypts a message of either type. A pre-key message is accepted only by the
    /// responder's session it created, and must repeat that session's prefix exactly.
    pub fn decrypt(&mut self, message_type: MessageType, bytes: &[u8]) -> Result<Vec<u8>, DecryptError> {
        match message_type {
            MessageType::Ratchet => self.decrypt_ratchet(bytes),
            MessageType::PreKey => {
                let msg = crate::x3dh::PreKeyMessage::decode(bytes)?;
                let same = self
                    .prekey_prefix_hash
                    .is_some_and(|h| h == crate::kdf::sha256(&[msg.prefix]));
                if !same {
                    return Err(DecryptError::WrongSession);
                }
                self.decrypt_ratchet(msg.message)
            }
        }
    }

    /// Decrypts a Double Ratchet message (the type-1 form).
    pub fn decrypt_ratchet(&mut self, message: &[u8]) -> Result<Vec<u8>, DecryptError> {
        let (header, body) = Header::parse(message)?;
        let chain_pos = self.receiving.iter().position(|c| c.ratchet_key == header.ratchet_key);
        // 1. A key skipped earlier (only possible below the chain's position, or for
        //    an evicted chain).
        let below = chain_pos
            .and_then(|i| self.receiving.get(i))
            .is_none_or(|c| header.index < c.index);
        if below {
            if let Some(i) = self
                .skipped
                .iter()
                .position(|k| k.index == header.index && k.ratchet_key == header.ratchet_key)
            {
                let plaintext = open(&self.skipped[i].message_key, &header, &self.ad, body)?;
                self.skipped.remove(i);
                self.pending_prekey = None;
                return Ok(plaintext);
            }
            if chain_pos.is_some() {
                return Err(DecryptError::Duplicate { index: header.index });
            }
        }
        match chain_pos {
            // 2. A known chain, at or past its position.
            Some(i) => {
                let chain = &self.receiving[i];
                let (plaintext, next_ck, skipped) = self.advance(chain, &header, body)?;
                self.commit_skipped(skipped);
                let chain = &mut self.receiving[i];
                chain.chain_key = next_ck;
                chain.index = header.index + 1;
                self.pending_prekey = None;
                Ok(plaintext)
            }
            // 3. A new ratchet key: a DH ratchet step.
            None => {
                if self.pending_ratchet.is_some() {
                    return Err(DecryptError::UnknownChain);
                }
                let Some(sending) = self.sending.as_ref() else {
                    return Err(DecryptError::UnknownChain);
                };
                // The peer's previous chain is our newest receiving chain; its keys up
                // to `pn` are stored as skipped, so its late messages stay readable
                // after the chain itself is evicted.
                let prev = self.receiving.back();
                let prev_gap = match prev {
                    Some(c) => header.previous_chain_length.saturating_sub(c.index),
                    None => header.previous_chain_length,
                };
                let total = u64::from(prev_gap) + u64::from(header.index);
                if total > u64::from(MAX_SKIP) {
                    return Err(DecryptError::TooBigMessageGap {
                        gap: u32::try_from(total).unwrap_or(u32::MAX),
                        max: MAX_SKIP,
                    });
                }
                let dh = sending
                    .ratchet
                    .dh(&header.ratchet_key)
                    .map_err(|_: KeyError| DecryptError::NonContributory)?;
                let (root, chain_key) = kdf_rk(&self.root, &dh);
                let chain = ReceivingChain {
                    ratchet_key: header.ratchet_key,
                    chain_key,
                    index: 0,
                };
                let (plaintext, next_ck, skipped) = self.advance(&chain, &header, body)?;
                // Commit.
                let prev = self.receiving.back_mut();
                if let Some(c) = prev.filter(|c| header.previous_chain_length > c.index) {
                    let (prev_skipped, ck) = derive_skipped(c, header.previous_chain_length);
                    c.chain_key = ck;
                    c.index = header.previous_chain_length;
                    self.commit_skipped(prev_skipped);
                }
                self.root = root;
                self.commit_skipped(skipped);
                if self.receiving.len() == MAX_RECEIVING_CHAINS {
                    self.receiving.pop_front();
                }
                self.receiving.push_back(ReceivingChain {
                    ratchet_key: header.ratchet_key,
                    chain_key: next_ck,
                    index: header.index + 1,
                });
                self.pending_ratchet = Some(header.ratchet_key);
                self.pending_prekey = None;
                Ok(plaintext)
            }
        }
    }

    /// Derives the chain forward to `header.index` and decrypts, changing nothing.
    /// Returns the plaintext, the chain key after the message and the keys skipped.
    fn advance(
        &self,
        chain: &ReceivingChain,
        header: &Header,
        body: &[u8],
    ) -> Result<(Vec<u8>, Key32, Vec<SkippedKey>), DecryptError> {
        let gap = header.index - chain.index; // callers ensure header.index >= chain.index
        if gap > MAX_SKIP {
            return Err(DecryptError::TooBigMessageGap { gap, max: MAX_SKIP });
        }
        let (skipped, ck) = derive_skipped(chain, header.index);
        let (mk, next) = kdf_ck(&ck);
        let plaintext = open(&mk, header, &self.ad, body)?;
        Ok((plaintext, next, skipped))
    }

    fn commit_skipped(&mut self, keys: Vec<SkippedKey>) {
        let keep = keys.len().min(MAX_SKIPPED_KEYS);
        let overflow = (self.skipped.len() + keep).saturating_sub(MAX_SKIPPED_KEYS);
        self.skipped.drain(..overflow.min(self.skipped.len()));
        let skip = keys.len() - keep;
        self.skipped.extend(keys.into_iter().skip(skip));
    }

    /// The exact length [`encode_state`](Self::encode_state) writes, so a pickle buffer
    /// can be allocated once and never reallocated (which would leave copies of keys).
    pub(crate) fn state_len(&self) -> usize {
        2 * DeviceIdentity::ENCODED_LEN
            + 1
            + 32
            + 32
            + 4
            + 1
            + self.sending.as_ref().map_or(0, |_| 32 + 32 + 4)
            + 1
            + self.pending_ratchet.as_ref().map_or(0, |_| 32)
            + 2
            + self.receiving.len() * (32 + 32 + 4)
            + 2
            + self.skipped.len() * (32 + 4 + 32)
            + 1
            + self.pending_prekey.as_ref().map_or(0, |p| 4 + p.len())
            + 1
            + self.prekey_prefix_hash.as_ref().map_or(0, |_| 32)
    }

    pub(crate) fn encode_state(&self, out: &mut Vec<u8>) {
        self.local.encode_into(out);
        self.remote.encode_into(out);
        out.put_u8(u8::from(self.initiator));
        out.put(self.base_key.as_bytes());
        out.put(&self.root.0);
        out.put_u32(self.previous_chain_length);
        match &self.sending {
            Some(s) => {
                out.put_u8(1);
                out.put(&*s.ratchet.to_bytes());
                out.put(&s.chain_key.0);
                out.put_u32(s.index);
            }
            None => out.put_u8(0),
        }
        match &self.pending_ratchet {
            Some(k) => {
                out.put_u8(1);
                out.put(k.as_bytes());
            }
            None => out.put_u8(0),
        }
        out.put_u16(self.receiving.len() as u16);
        for c in &self.receiving {
            out.put(c.ratchet_key.as_bytes());
            out.put(&c.chain_key.0);
            out.put_u32(c.index);
        }
        out.put_u16(self.skipped.len() as u16);
        for k in &self.skipped {
            out.put(k.ratchet_key.as_bytes());
            out.put_u32(k.index);
            out.put(&k.message_key.0);
        }
        match &self.pending_prekey {
            Some(p) => {
                out.put_u8(1);
                out.put_var(p);
            }
            None => out.put_u8(0),
        }
        match &self.prekey_prefix_hash {
            Some(h) => {
                out.put_u8(1);
                out.put(h);
            }
            None => out.put_u8(0),
        }
    }

    pub(crate) fn decode_state(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let local = DeviceIdentity::decode_from(r)?;
        let remote = DeviceIdentity::decode_from(r)?;
        let initiator = flag(r)?;
        let base_key = X25519PublicKey(r.array()?);
        let root = Key32(r.array()?);
        let previous_chain_length = r.u32()?;
        let sending = if flag(r)? {
            let ratchet = X25519Secret::from_bytes(&Zeroizing::new(r.array()?));
            Some(SendingChain {
                ratchet,
                chain_key: Key32(r.array()?),
                index: r.u32()?,
            })
        } else {
            None
        };
        let pending_ratchet = if flag(r)? {
            Some(X25519PublicKey(r.array()?))
        } else {
            None
        };
        let n = r.count("receiving chains", MAX_RECEIVING_CHAINS, 68)?;
        let mut receiving = VecDeque::with_capacity(n);
        for _ in 0..n {
            receiving.push_back(ReceivingChain {
                ratchet_key: X25519PublicKey(r.array()?),
                chain_key: Key32(r.array()?),
                index: r.u32()?,
            });
        }
        let n = r.count("skipped keys", MAX_SKIPPED_KEYS, 68)?;
        let mut skipped = VecDeque::with_capacity(n);
        for _ in 0..n {
            skipped.push_back(SkippedKey {
                ratchet_key: X25519PublicKey(r.array()?),
                index: r.u32()?,
                message_key: Key32(r.array()?),
            });
        }
        let pending_prekey = if flag(r)? {
            Some(r.var_bytes("pre-key prefix", crate::x3dh::PREKEY_PREFIX_LEN)?.to_vec())
        } else {
            None
        };
        let prekey_prefix_hash = if flag(r)? { Some(r.array()?) } else { None };
        if sending.is_none() && pending_ratchet.is_none() {
            return Err(DecodeError::Invalid { field: "session state" });
        }
        let ad = if initiator {
            session_ad(&local, &remote)
        } else {
            session_ad(&remote, &local)
        };
        Ok(Self {
            local,
            remote,
            initiator,
            base_key,
            ad,
            root,
            sending,
            previous_chain_length,
            pending_ratchet,
            receiving,
            skipped,
            pending_prekey,
            prekey_prefix_hash,
        })
    }
}

/// The message keys of `chain` from its position up to (not including) `to`, and the
/// chain key at `to`. Callers bound `to - chain.index` by [`MAX_SKIP`].
fn derive_skipped(chain: &ReceivingChain, to: u32) -> (Vec<SkippedKey>, Key32) {
    let mut skipped = Vec::with_capacity(to.saturating_sub(chain.index) as usize);
    let mut ck = chain.chain_key.clone();
    for index in chain.index..to {
        let (mk, next) = kdf_ck(&ck);
        skipped.push(SkippedKey {
            ratchet_key: chain.ratchet_key,
            index,
            message_key: mk,
        });
        ck = next;
    }
    (skipped, ck)
}

fn flag(r: &mut Reader<'_>) -> Result<bool, DecodeError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::Invalid { field: "flag" }),
    }
}

#[cfg(test)]
impl Session {
    /// Root key, sending chain key and the newest receiving chain key.
    pub(crate) fn test_keys(&self) -> ([u8; 32], Option<[u8; 32]>, Option<[u8; 32]>) {
        (
            self.root.0,
            self.sending.as_ref().map(|s| s.chain_key.0),
            self.receiving.back().map(|c| c.chain_key.0),
        )
    }
}

#[cfg(test)]
pub(crate) mod test_hooks {
    use std::cell::RefCell;

    thread_local! {
        static MESSAGE_KEYS: RefCell<Vec<[u8; 32]>> = const { RefCell::new(Vec::new()) };
    }

    pub(crate) fn record(mk: &[u8; 32]) {
        MESSAGE_KEYS.with(|k| k.borrow_mut().push(*mk));
    }

    /// The message keys `encrypt` used since the last call, on this thread.
    pub(crate) fn take() -> Vec<[u8; 32]> {
        MESSAGE_KEYS.with(|k| std::mem::take(&mut *k.borrow_mut()))
    }
}
