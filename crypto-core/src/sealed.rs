//! Sealed sender (docs/protocol.md §7): the relay sees a recipient mailbox, a kind byte
//! and a padded ciphertext; the sender's identity and signature travel inside.
//!
//! ```text
//! single:  0x01 ‖ 0x01 ‖ E_pub ‖ ChaCha20-Poly1305(k, n, P, ad = 0x01 ‖ 0x01 ‖ E_pub ‖ IK_R) ‖ tag
//!          k ‖ n = HKDF-SHA256(salt = E_pub ‖ IK_R, ikm = X25519(E, IK_R), info = "Sotto-v1 sealed sender")
//! multi:   0x01 ‖ 0x02 ‖ E_pub ‖ W_i ‖ ChaCha20-Poly1305(k, n, P, ad = 0x01 ‖ 0x02 ‖ E_pub) ‖ tag
//!          W_i = M ⊕ HKDF-SHA256(salt = E_pub ‖ IK_i, ikm = X25519(E, IK_i), info = "Sotto-v1 multi-recipient wrap")
//!          k ‖ n = HKDF-SHA256(salt = E_pub, ikm = M, info = "Sotto-v1 multi-recipient body")
//! P        = pad(content_type ‖ sender identity (100) ‖ signature (64) ‖ content)
//! signature = Ed25519_DSK("Sotto-v1 sealed sender signature" ‖ 0x01 ‖ kind ‖ E_pub ‖ [IK_R, single only]
//!                         ‖ content_type ‖ sender identity ‖ content)
//! ```

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use rand_core::CryptoRngCore;
use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

use crate::codec::{DecodeError, Put, Reader};
use crate::identity::{Device, DeviceIdentity};
use crate::kdf::{hkdf, info};
use crate::keys::{KeyError, Signature, X25519PublicKey, X25519Secret};
use crate::padding;

const VERSION: u8 = 1;
/// Envelope kind byte: sealed to one device.
pub const KIND_SINGLE: u8 = 1;
/// Envelope kind byte: one body for many devices, with a per-device key wrap.
pub const KIND_MULTI: u8 = 2;
/// Largest content (before padding) a sealed envelope carries.
pub const MAX_CONTENT_LEN: usize = (1 << 20) + 2048;
/// Most recipients of one multi-recipient seal.
pub const MAX_RECIPIENTS: usize = 10_000;
/// Largest envelope [`open`] accepts.
pub const MAX_ENVELOPE_LEN: usize = 2 + 32 + 32 + MAX_CONTENT_LEN + 16 + 1 + 165 + (MAX_CONTENT_LEN / 8);
const INNER_FIXED: usize = 1 + DeviceIdentity::ENCODED_LEN + 64;

/// Why sealing failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SealError {
    /// The content is longer than [`MAX_CONTENT_LEN`].
    #[error("content of {len} bytes exceeds {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// No recipients, or more than [`MAX_RECIPIENTS`].
    #[error("{count} recipients; 1..={max} allowed")]
    BadRecipientCount {
        /// How many were given.
        count: usize,
        /// The bound.
        max: usize,
    },
    /// A recipient key of small order.
    #[error("non-contributory recipient key")]
    NonContributory,
}

/// Why opening failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The envelope does not decode.
    #[error("envelope does not decode: {0}")]
    Decode(#[from] DecodeError),
    /// Not sealed to this device, or altered.
    #[error("envelope authentication failed")]
    InvalidMac,
    /// The claimed sender's signature does not verify.
    #[error("sender signature does not verify")]
    BadSenderSignature,
    /// The ephemeral key is of small order.
    #[error("non-contributory ephemeral key")]
    NonContributory,
}

/// An opened envelope. `sender` is what the sender *claims*, proven only to the extent
/// that its DSK signed the content: check it against the sender's verified device list
/// and, for a ratchet message, against the session's peer.
#[derive(Clone, PartialEq, Eq)]
pub struct Opened {
    /// The claimed sending device, with the keys that signed.
    pub sender: DeviceIdentity,
    /// The content type byte the sender gave.
    pub content_type: u8,
    /// The content.
    pub content: Vec<u8>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("sender", &self.sender)
            .field("content_type", &self.content_type)
            .field("content_len", &self.content.len())
            .finish_non_exhaustive()
    }
}

fn inner_plaintext(sender: &Device, signed_prefix: &[&[u8]], content_type: u8, content: &[u8]) -> Zeroizing<Vec<u8>> {
    let me = sender.identity();
    let mut ident = Vec::with_capacity(DeviceIdentity::ENCODED_LEN);
    me.encode_into(&mut ident);
    let mut parts: Vec<&[u8]> = Vec::with_capacity(signed_prefix.len() + 4);
    parts.push(info::SEALED_SIGNATURE);
    parts.extend_from_slice(signed_prefix);
    let ct = [content_type];
    parts.push(&ct);
    parts.push(&ident);
    parts.push(content);
    let sig = sender.dsk.sign_parts(&parts);
    let mut p = Zeroizing::new(Vec::with_capacity(
        padding::bucket(INNER_FIXED + content.len() + 1) + 16,
    ));
    p.put_u8(content_type);
    p.put(&ident);
    p.put(&sig.0);
    p.put(content);
    padding::pad(&mut p, 0);
    p
}

fn parse_inner(plain: &[u8], signed_prefix: &[&[u8]]) -> Result<Opened, OpenError> {
    let body = padding::unpad(plain)?;
    let mut r = Reader::new(body);
    let content_type = r.u8()?;
    let ident_bytes = r.bytes(DeviceIdentity::ENCODED_LEN)?;
    let sender = DeviceIdentity::decode_from(&mut Reader::new(ident_bytes))?;
    let sig = Signature(r.array()?);
    let content = r.rest();
    let mut parts: Vec<&[u8]> = Vec::with_capacity(signed_prefix.len() + 4);
    parts.push(info::SEALED_SIGNATURE);
    parts.extend_from_slice(signed_prefix);
    let ct = [content_type];
    parts.push(&ct);
    parts.push(ident_bytes);
    parts.push(content);
    sender
        .signing_key
        .verify_parts(&parts, &sig)
        .map_err(|_| OpenError::BadSenderSignature)?;
    Ok(Opened {
        sender,
        content_type,
        content: content.to_vec(),
    })
}

fn check_len(content: &[u8]) -> Result<(), SealError> {
    if content.len() > MAX_CONTENT_LEN {
        return Err(SealError::TooLarge {
            len: content.len(),
            max: MAX_CONTENT_LEN,
        });
    }
    Ok(())
}

/// Seals `content` to one device's identity key. Draws the ephemeral scalar (32 bytes).
pub fn seal(
    sender: &Device,
    recipient: &X25519PublicKey,
    content_type: u8,
    content: &[u8],
    rng: &mut impl CryptoRngCore,
) -> Result<Vec<u8>, SealError> {
    check_len(content)?;
    let e = X25519Secret::generate(rng);
    let dh = e.dh(recipient).map_err(|_: KeyError| SealError::NonContributory)?;
    let e_pub = e.public();
    let keys = hkdf::<44>(
        &[e_pub.as_bytes().as_slice(), recipient.as_bytes()].concat(),
        &*dh,
        &[info::SEALED],
    );
    let mut plain = inner_plaintext(
        sender,
        &[&[VERSION, KIND_SINGLE], e_pub.as_bytes(), recipient.as_bytes()],
        content_type,
        content,
    );
    let mut out = Vec::with_capacity(2 + 32 + plain.len() + 16);
    out.put_u8(VERSION);
    out.put_u8(KIND_SINGLE);
    out.put(e_pub.as_bytes());
    let ad = [&out[..], recipient.as_bytes()].concat();
    let cipher = ChaCha20Poly1305::new((&keys[..32]).into());
    let tag = cipher
        .encrypt_in_place_detached((&keys[32..]).into(), &ad, plain.as_mut_slice())
        .map_err(|_| SealError::TooLarge {
            len: content.len(),
            max: MAX_CONTENT_LEN,
        })?;
    out.extend_from_slice(&plain);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// One body sealed for many devices.
#[derive(Clone, Debug)]
pub struct MultiSealed {
    ephemeral: X25519PublicKey,
    wraps: Vec<[u8; 32]>,
    body: Vec<u8>,
}

impl MultiSealed {
    /// How many recipients.
    pub fn len(&self) -> usize {
        self.wraps.len()
    }

    /// True when there are no recipients (never, for a successful seal).
    pub fn is_empty(&self) -> bool {
        self.wraps.is_empty()
    }

    /// The part every recipient shares: `0x01 ‖ 0x02 ‖ E_pub`.
    pub fn header(&self) -> [u8; 34] {
        let mut h = [0u8; 34];
        h[0] = VERSION;
        h[1] = KIND_MULTI;
        h[2..].copy_from_slice(self.ephemeral.as_bytes());
        h
    }

    /// Recipient `i`'s 32-byte key wrap, in the order the recipients were given.
    pub fn wrap(&self, i: usize) -> Option<&[u8; 32]> {
        self.wraps.get(i)
    }

    /// The shared body ciphertext with its tag.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The complete envelope for recipient `i`: header ‖ wrap ‖ body.
    pub fn envelope(&self, i: usize) -> Option<Vec<u8>> {
        let wrap = self.wraps.get(i)?;
        let mut out = Vec::with_capacity(34 + 32 + self.body.len());
        out.put(&self.header());
        out.put(wrap);
        out.put(&self.body);
        Some(out)
    }
}

/// Seals one body for many devices: one symmetric encryption plus one X25519 per
/// recipient. Draws, in order: the body key `M` (32 bytes) and the ephemeral scalar (32 bytes).
pub fn seal_multi(
    sender: &Device,
    recipients: &[X25519PublicKey],
    content_type: u8,
    content: &[u8],
    rng: &mut impl CryptoRngCore,
) -> Result<MultiSealed, SealError> {
    check_len(content)?;
    if recipients.is_empty() || recipients.len() > MAX_RECIPIENTS {
        return Err(SealError::BadRecipientCount {
            count: recipients.len(),
            max: MAX_RECIPIENTS,
        });
    }
    let mut m = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(m.as_mut_slice());
    let e = X25519Secret::generate(rng);
    let e_pub = e.public();
    let mut wraps = Vec::with_capacity(recipients.len());
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(e_pub.as_bytes());
    for r in recipients {
        let dh = e.dh(r).map_err(|_| SealError::NonContributory)?;
        salt[32..].copy_from_slice(r.as_bytes());
        let pad = hkdf::<32>(&salt, &*dh, &[info::MULTI_WRAP]);
        let mut w = [0u8; 32];
        for (o, (a, b)) in w.iter_mut().zip(m.iter().zip(pad.iter())) {
            *o = a ^ b;
        }
        wraps.push(w);
    }
    let keys = hkdf::<44>(e_pub.as_bytes(), m.as_slice(), &[info::MULTI_BODY]);
    let mut plain = inner_plaintext(
        sender,
        &[&[VERSION, KIND_MULTI], e_pub.as_bytes()],
        content_type,
        content,
    );
    let ad = [&[VERSION, KIND_MULTI][..], e_pub.as_bytes()].concat();
    let cipher = ChaCha20Poly1305::new((&keys[..32]).into());
    let tag = cipher
        .encrypt_in_place_detached((&keys[32..]).into(), &ad, plain.as_mut_slice())
        .map_err(|_| SealError::TooLarge {
            len: content.len(),
            max: MAX_CONTENT_LEN,
        })?;
    let mut body = Vec::with_capacity(plain.len() + 16);
    body.extend_from_slice(&plain);
    body.extend_from_slice(&tag);
    Ok(MultiSealed {
        ephemeral: e_pub,
        wraps,
        body,
    })
}

/// Opens an envelope of either kind sealed to this device.
pub fn open(recipient: &Device, envelope: &[u8]) -> Result<Opened, OpenError> {
    if envelope.len() > MAX_ENVELOPE_LEN {
        return Err(DecodeError::TooLong {
            field: "envelope",
            len: envelope.len(),
            max: MAX_ENVELOPE_LEN,
        }
        .into());
    }
    let mut r = Reader::new(envelope);
    r.version(VERSION)?;
    let kind = r.u8()?;
    if kind != KIND_SINGLE && kind != KIND_MULTI {
        return Err(DecodeError::UnknownType {
            field: "envelope kind",
            value: kind,
        }
        .into());
    }
    let e_pub = X25519PublicKey(r.array()?);
    let dh = recipient.ik.dh(&e_pub).map_err(|_| OpenError::NonContributory)?;
    let ik = recipient.ik.public();
    let (keys, ad, rest) = match kind {
        KIND_SINGLE => {
            let salt = [e_pub.as_bytes().as_slice(), ik.as_bytes()].concat();
            let keys = hkdf::<44>(&salt, &*dh, &[info::SEALED]);
            let ad = [&envelope[..34], ik.as_bytes()].concat();
            (keys, ad, r.rest())
        }
        KIND_MULTI => {
            let w: [u8; 32] = r.array()?;
            let salt = [e_pub.as_bytes().as_slice(), ik.as_bytes()].concat();
            let pad = hkdf::<32>(&salt, &*dh, &[info::MULTI_WRAP]);
            let mut m = Zeroizing::new([0u8; 32]);
            for (o, (a, b)) in m.iter_mut().zip(w.iter().zip(pad.iter())) {
                *o = a ^ b;
            }
            let keys = hkdf::<44>(e_pub.as_bytes(), m.as_slice(), &[info::MULTI_BODY]);
            (keys, envelope[..34].to_vec(), r.rest())
        }
        value => {
            return Err(DecodeError::UnknownType {
                field: "envelope kind",
                value,
            }
            .into());
        }
    };
    if rest.len() < 16 + INNER_FIXED + 1 {
        return Err(DecodeError::Truncated {
            needed: 16 + INNER_FIXED + 1,
            remaining: rest.len(),
        }
        .into());
    }
    let (ct, tag) = rest.split_at(rest.len() - 16);
    let mut plain = Zeroizing::new(ct.to_vec());
    let cipher = ChaCha20Poly1305::new((&keys[..32]).into());
    cipher
        .decrypt_in_place_detached((&keys[32..]).into(), &ad, plain.as_mut_slice(), tag.into())
        .map_err(|_| OpenError::InvalidMac)?;
    let single_prefix: [&[u8]; 3] = [&[VERSION, KIND_SINGLE], e_pub.as_bytes(), ik.as_bytes()];
    let multi_prefix: [&[u8]; 2] = [&[VERSION, KIND_MULTI], e_pub.as_bytes()];
    let prefix: &[&[u8]] = if kind == KIND_SINGLE {
        &single_prefix
    } else {
        &multi_prefix
    };
    let opened = parse_inner(&plain, prefix);
    plain.zeroize();
    opened
}
