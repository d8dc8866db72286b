//! Sealed sender, version 2 (docs/protocol.md §7): the relay sees a recipient mailbox, a
//! kind byte and a padded ciphertext; the sender's identity travels inside. The sender is
//! authenticated to the recipient by a static-static X25519 between the two device identity
//! keys, which either party can compute, so the envelope proves nothing to a third party
//! (deniable, as Signal's sealed sender v2).
//!
//! ```text
//! R        = 32 bytes drawn from the rng
//! M        = HKDF-SHA256(salt = R,
//!                        ikm  = SHA-256("Sotto-v2 sealed sender hedge" ‖ IK_S secret)
//!                             ‖ SHA-256(content_type ‖ content)
//!                             ‖ SHA-256(kind ‖ id_1 ‖ … ‖ id_n),
//!                        info = "Sotto-v2 sealed sender message key")                  32 bytes
//! e        = HKDF-SHA256(salt = "", ikm = M, info = "Sotto-v2 sealed sender ephemeral") (X25519 scalar)
//! E        = X25519(e, 9)
//! k ‖ n    = HKDF-SHA256(salt = E, ikm = M, info = "Sotto-v2 sealed sender body")     32 + 12 bytes
//! P        = pad(content_type ‖ id_S (100) ‖ content)
//! body     = ChaCha20-Poly1305(k, n, P, ad = 0x02 ‖ kind ‖ E) ‖ tag
//! per recipient i (id_i: the recipient's 100-byte device identity):
//!   W_i    = M ⊕ HKDF-SHA256(salt = E ‖ id_i, ikm = X25519(e, IK_i), info = "Sotto-v2 sealed sender wrap")
//!   mk_i   = HKDF-SHA256(salt = E ‖ id_i, ikm = X25519(IK_S, IK_i), info = "Sotto-v2 sealed sender auth")
//!   AT_i   = HMAC-SHA256(mk_i, 0x02 ‖ kind ‖ E ‖ W_i ‖ id_S ‖ id_i ‖ SHA-256(body))[..16]
//! envelope = 0x02 ‖ kind ‖ E ‖ W_i ‖ AT_i ‖ body        kind 0x01 single, 0x02 multi
//! ```

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

use crate::codec::{DecodeError, Put, Reader};
use crate::identity::{Device, DeviceIdentity};
use crate::kdf::{hkdf, hmac, info, sha256};
use crate::keys::{X25519PublicKey, X25519Secret, ct_eq};
use crate::padding;

/// The sealed-sender version byte this code writes and opens.
pub const VERSION: u8 = 2;
/// The version of the signed (non-deniable) format, refused with [`OpenError::UnsupportedVersion`].
pub const LEGACY_VERSION: u8 = 1;
/// Envelope kind byte: sealed to one device.
pub const KIND_SINGLE: u8 = 1;
/// Envelope kind byte: one body for many devices, with a per-device key wrap.
pub const KIND_MULTI: u8 = 2;
/// Length of the sender-authentication tag `AT_i`.
pub const AUTH_TAG_LEN: usize = 16;
/// Length of one recipient's block: the key wrap `W_i` and its tag `AT_i`.
pub const RECIPIENT_BLOCK_LEN: usize = 32 + AUTH_TAG_LEN;
/// Length of the part every recipient shares: version, kind, `E`.
pub const HEADER_LEN: usize = 2 + 32;
/// Largest content (before padding) a sealed envelope carries.
pub const MAX_CONTENT_LEN: usize = (1 << 20) + 2048;
/// Most recipients of one multi-recipient seal.
pub const MAX_RECIPIENTS: usize = 10_000;
const INNER_FIXED: usize = 1 + DeviceIdentity::ENCODED_LEN;
/// Largest envelope [`open`] accepts.
pub const MAX_ENVELOPE_LEN: usize =
    HEADER_LEN + RECIPIENT_BLOCK_LEN + MAX_CONTENT_LEN + 16 + 1 + INNER_FIXED + (MAX_CONTENT_LEN / 8);

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
    /// A sealed-sender version this code does not open (1 is the retired signed format).
    #[error("sealed sender version {version} is not supported")]
    UnsupportedVersion {
        /// The version byte.
        version: u8,
    },
    /// Not sealed to this device, or altered.
    #[error("envelope authentication failed")]
    InvalidMac,
    /// The claimed sender's static-static authentication tag does not verify.
    #[error("sender authentication does not verify")]
    BadSenderAuth,
    /// The ephemeral key is of small order.
    #[error("non-contributory ephemeral key")]
    NonContributory,
}

impl OpenError {
    /// A stable name for the error, as the vectors record it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Decode(_) => "Decode",
            Self::UnsupportedVersion { .. } => "UnsupportedVersion",
            Self::InvalidMac => "InvalidMac",
            Self::BadSenderAuth => "BadSenderAuth",
            Self::NonContributory => "NonContributory",
        }
    }
}

/// An opened envelope. `sender` is what the sender *claims*, proven to this device only
/// (the tag is deniable): check it against the sender's verified device list and, for a
/// ratchet message, against the session's peer.
#[derive(Clone, PartialEq, Eq)]
pub struct Opened {
    /// The claimed sending device, whose identity key authenticated the envelope.
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

fn check_len(content: &[u8]) -> Result<(), SealError> {
    if content.len() > MAX_CONTENT_LEN {
        return Err(SealError::TooLarge {
            len: content.len(),
            max: MAX_CONTENT_LEN,
        });
    }
    Ok(())
}

fn encode_identity(id: &DeviceIdentity) -> [u8; DeviceIdentity::ENCODED_LEN] {
    let mut v = Vec::with_capacity(DeviceIdentity::ENCODED_LEN);
    id.encode_into(&mut v);
    let mut out = [0u8; DeviceIdentity::ENCODED_LEN];
    out.copy_from_slice(&v);
    out
}

/// The hedged message key `M`: fresh randomness, the sender's secret, the content and the
/// recipients, so a repeated draw repeats nothing unless all of them repeat.
fn hedged_message_key(
    sender: &Device,
    kind: u8,
    recipients: &[DeviceIdentity],
    content_type: u8,
    content: &[u8],
    rng: &mut impl CryptoRngCore,
) -> Zeroizing<[u8; 32]> {
    let mut r = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(r.as_mut_slice());
    let mut ikm = Zeroizing::new([0u8; 96]);
    let secret = sender.ik.to_bytes();
    ikm[..32].copy_from_slice(&sha256(&[info::SEALED_HEDGE, secret.as_slice()]));
    ikm[32..64].copy_from_slice(&sha256(&[&[content_type], content]));
    let mut h = Sha256::new();
    h.update([kind]);
    for id in recipients {
        h.update(encode_identity(id));
    }
    ikm[64..].copy_from_slice(&h.finalize());
    hkdf::<32>(r.as_slice(), ikm.as_slice(), &[info::SEALED_MESSAGE_KEY])
}

fn ephemeral_from(m: &[u8; 32]) -> X25519Secret {
    let scalar = hkdf::<32>(&[], m, &[info::SEALED_EPHEMERAL]);
    X25519Secret::from_bytes(&scalar)
}

fn body_keys(e_pub: &X25519PublicKey, m: &[u8; 32]) -> Zeroizing<[u8; 44]> {
    hkdf::<44>(e_pub.as_bytes(), m, &[info::SEALED_BODY])
}

fn recipient_salt(e_pub: &X25519PublicKey, recipient: &[u8; DeviceIdentity::ENCODED_LEN]) -> [u8; 132] {
    let mut salt = [0u8; 32 + DeviceIdentity::ENCODED_LEN];
    salt[..32].copy_from_slice(e_pub.as_bytes());
    salt[32..].copy_from_slice(recipient);
    salt
}

fn auth_tag(
    ss: &[u8; 32],
    salt: &[u8],
    header: &[u8],
    wrap: &[u8; 32],
    sender: &[u8; DeviceIdentity::ENCODED_LEN],
    recipient: &[u8; DeviceIdentity::ENCODED_LEN],
    body_hash: &[u8; 32],
) -> [u8; AUTH_TAG_LEN] {
    let mk = hkdf::<32>(salt, ss, &[info::SEALED_AUTH]);
    let full = hmac(&mk, &[header, wrap, sender, recipient, body_hash]);
    let mut tag = [0u8; AUTH_TAG_LEN];
    tag.copy_from_slice(&full[..AUTH_TAG_LEN]);
    tag
}

/// Seals for `recipients` under message key `m`. `static_dh(IK_i)` is the static-static
/// secret between the sender's identity key and recipient `i`'s: the sender computes it
/// with its own secret, and so could the recipient with its own, which is what makes the
/// envelope deniable (see the `a_recipient_can_forge_exactly_what_the_sender_sends` test).
fn seal_with_message_key(
    sender: &DeviceIdentity,
    static_dh: &dyn Fn(&X25519PublicKey) -> Option<Zeroizing<[u8; 32]>>,
    kind: u8,
    m: &[u8; 32],
    recipients: &[DeviceIdentity],
    content_type: u8,
    content: &[u8],
) -> Result<MultiSealed, SealError> {
    let e = ephemeral_from(m);
    let e_pub = e.public();
    let keys = body_keys(&e_pub, m);
    let id_s = encode_identity(sender);
    let mut plain = Zeroizing::new(Vec::with_capacity(padding::bucket(INNER_FIXED + content.len() + 1)));
    plain.put_u8(content_type);
    plain.put(&id_s);
    plain.put(content);
    padding::pad(&mut plain, 0);
    let mut header = [0u8; HEADER_LEN];
    header[0] = VERSION;
    header[1] = kind;
    header[2..].copy_from_slice(e_pub.as_bytes());
    let cipher = ChaCha20Poly1305::new((&keys[..32]).into());
    let tag = cipher
        .encrypt_in_place_detached((&keys[32..]).into(), &header, plain.as_mut_slice())
        .map_err(|_| SealError::TooLarge {
            len: content.len(),
            max: MAX_CONTENT_LEN,
        })?;
    let mut body = Vec::with_capacity(plain.len() + 16);
    body.extend_from_slice(&plain);
    body.extend_from_slice(&tag);
    let body_hash = sha256(&[&body]);
    let mut blocks = Vec::with_capacity(recipients.len());
    for r in recipients {
        let id_r = encode_identity(r);
        let salt = recipient_salt(&e_pub, &id_r);
        let dh = e.dh(&r.identity_key).map_err(|_| SealError::NonContributory)?;
        let pad = hkdf::<32>(&salt, dh.as_slice(), &[info::SEALED_WRAP]);
        let mut w = [0u8; 32];
        for (o, (a, b)) in w.iter_mut().zip(m.iter().zip(pad.iter())) {
            *o = a ^ b;
        }
        let ss = static_dh(&r.identity_key).ok_or(SealError::NonContributory)?;
        let at = auth_tag(&ss, &salt, &header, &w, &id_s, &id_r, &body_hash);
        let mut block = [0u8; RECIPIENT_BLOCK_LEN];
        block[..32].copy_from_slice(&w);
        block[32..].copy_from_slice(&at);
        blocks.push(block);
    }
    Ok(MultiSealed {
        kind,
        ephemeral: e_pub,
        blocks,
        body,
    })
}

/// Seals `content` to one device, bound to its full identity (account, device id, DSK,
/// IK). Draws 32 bytes, which are hedged with the sender's secret, the content and the
/// recipient before any key or nonce is derived.
pub fn seal(
    sender: &Device,
    recipient: &DeviceIdentity,
    content_type: u8,
    content: &[u8],
    rng: &mut impl CryptoRngCore,
) -> Result<Vec<u8>, SealError> {
    check_len(content)?;
    let recipients = std::slice::from_ref(recipient);
    let m = hedged_message_key(sender, KIND_SINGLE, recipients, content_type, content, rng);
    let sealed = seal_with_message_key(
        &sender.identity(),
        &|ik| sender.ik.dh(ik).ok(),
        KIND_SINGLE,
        &m,
        recipients,
        content_type,
        content,
    )?;
    sealed.envelope(0).ok_or(SealError::BadRecipientCount {
        count: 0,
        max: MAX_RECIPIENTS,
    })
}

/// One body sealed for many devices.
#[derive(Clone, Debug)]
pub struct MultiSealed {
    kind: u8,
    ephemeral: X25519PublicKey,
    blocks: Vec<[u8; RECIPIENT_BLOCK_LEN]>,
    body: Vec<u8>,
}

impl MultiSealed {
    /// How many recipients.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// True when there are no recipients (never, for a successful seal).
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// The part every recipient shares: `0x02 ‖ kind ‖ E`.
    pub fn header(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = VERSION;
        h[1] = self.kind;
        h[2..].copy_from_slice(self.ephemeral.as_bytes());
        h
    }

    /// Recipient `i`'s block `W_i ‖ AT_i`, in the order the recipients were given.
    pub fn block(&self, i: usize) -> Option<&[u8; RECIPIENT_BLOCK_LEN]> {
        self.blocks.get(i)
    }

    /// The shared body ciphertext with its tag.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The complete envelope for recipient `i`: header ‖ block ‖ body.
    pub fn envelope(&self, i: usize) -> Option<Vec<u8>> {
        let block = self.blocks.get(i)?;
        let mut out = Vec::with_capacity(HEADER_LEN + RECIPIENT_BLOCK_LEN + self.body.len());
        out.put(&self.header());
        out.put(block);
        out.put(&self.body);
        Some(out)
    }
}

/// Seals one body for many devices: one symmetric encryption plus two X25519 per
/// recipient (the wrap and the sender authentication), each recipient bound in its own
/// block. Draws 32 bytes, hedged as for [`seal`].
pub fn seal_multi(
    sender: &Device,
    recipients: &[DeviceIdentity],
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
    let m = hedged_message_key(sender, KIND_MULTI, recipients, content_type, content, rng);
    seal_with_message_key(
        &sender.identity(),
        &|ik| sender.ik.dh(ik).ok(),
        KIND_MULTI,
        &m,
        recipients,
        content_type,
        content,
    )
}

/// Recovers `M` from a block; checks that `E` is the ephemeral `M` derives.
fn unwrap_message_key(
    recipient: &Device,
    salt: &[u8],
    e_pub: &X25519PublicKey,
    wrap: &[u8; 32],
) -> Result<Zeroizing<[u8; 32]>, OpenError> {
    let dh = recipient.ik.dh(e_pub).map_err(|_| OpenError::NonContributory)?;
    let pad = hkdf::<32>(salt, dh.as_slice(), &[info::SEALED_WRAP]);
    let mut m = Zeroizing::new([0u8; 32]);
    for (o, (a, b)) in m.iter_mut().zip(wrap.iter().zip(pad.iter())) {
        *o = a ^ b;
    }
    if !ct_eq(ephemeral_from(&m).public().as_bytes(), e_pub.as_bytes()) {
        return Err(OpenError::InvalidMac);
    }
    Ok(m)
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
    let version = r.u8()?;
    if version != VERSION {
        return Err(OpenError::UnsupportedVersion { version });
    }
    let kind = r.u8()?;
    if kind != KIND_SINGLE && kind != KIND_MULTI {
        return Err(DecodeError::UnknownType {
            field: "envelope kind",
            value: kind,
        }
        .into());
    }
    let e_pub = X25519PublicKey(r.array()?);
    let wrap: [u8; 32] = r.array()?;
    let at: [u8; AUTH_TAG_LEN] = r.array()?;
    let body = r.rest();
    if body.len() < 16 + INNER_FIXED + 1 {
        return Err(DecodeError::Truncated {
            needed: 16 + INNER_FIXED + 1,
            remaining: body.len(),
        }
        .into());
    }
    let id_r = encode_identity(&recipient.identity());
    let salt = recipient_salt(&e_pub, &id_r);
    let m = unwrap_message_key(recipient, &salt, &e_pub, &wrap)?;
    let keys = body_keys(&e_pub, &m);
    let (ct, tag) = body.split_at(body.len() - 16);
    let mut plain = Zeroizing::new(ct.to_vec());
    let ad = &envelope[..HEADER_LEN];
    ChaCha20Poly1305::new((&keys[..32]).into())
        .decrypt_in_place_detached((&keys[32..]).into(), ad, plain.as_mut_slice(), tag.into())
        .map_err(|_| OpenError::InvalidMac)?;
    let opened = parse_inner(&plain).and_then(|(content_type, id_s, sender, content)| {
        let ss = recipient
            .ik
            .dh(&sender.identity_key)
            .map_err(|_| OpenError::BadSenderAuth)?;
        let expected = auth_tag(
            &ss,
            &salt,
            &envelope[..HEADER_LEN],
            &wrap,
            &id_s,
            &id_r,
            &sha256(&[body]),
        );
        if !ct_eq(&expected, &at) {
            return Err(OpenError::BadSenderAuth);
        }
        Ok(Opened {
            sender,
            content_type,
            content: content.to_vec(),
        })
    });
    plain.zeroize();
    opened
}

type Inner<'a> = (u8, [u8; DeviceIdentity::ENCODED_LEN], DeviceIdentity, &'a [u8]);

fn parse_inner(plain: &[u8]) -> Result<Inner<'_>, OpenError> {
    let body = padding::unpad(plain)?;
    let mut r = Reader::new(body);
    let content_type = r.u8()?;
    let id_s: [u8; DeviceIdentity::ENCODED_LEN] = r.array()?;
    let sender = DeviceIdentity::decode_from(&mut Reader::new(&id_s))?;
    Ok((content_type, id_s, sender, r.rest()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{AccountId, DeviceId};
    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};

    fn device(seed: u64) -> Device {
        let mut rng = ChaCha20Rng::seed_from_u64(seed); // test only
        let mut account = [0u8; 32];
        rng.fill_bytes(&mut account);
        Device::generate(AccountId(account), DeviceId(1), &mut rng)
    }

    /// Deniability: Bob, holding only his own secret, produces byte for byte the envelope
    /// Alice would send him, and it opens as "from Alice". So an envelope proves nothing
    /// about its sender to anyone but its recipient (v1's DSK signature did).
    #[test]
    fn a_recipient_can_forge_exactly_what_the_sender_sends() {
        let (alice, bob) = (device(1), device(2));
        let m = [7u8; 32];
        let to = [bob.identity()];
        let honest = seal_with_message_key(
            &alice.identity(),
            &|ik| alice.ik.dh(ik).ok(),
            KIND_SINGLE,
            &m,
            &to,
            1,
            b"I owe you 100",
        )
        .unwrap();
        let alice_ik = alice.identity().identity_key;
        let forged = seal_with_message_key(
            &alice.identity(),
            &|_| bob.ik.dh(&alice_ik).ok(),
            KIND_SINGLE,
            &m,
            &to,
            1,
            b"I owe you 100",
        )
        .unwrap();
        assert_eq!(honest.envelope(0), forged.envelope(0));
        let opened = open(&bob, &forged.envelope(0).unwrap()).unwrap();
        assert_eq!(opened.sender, alice.identity());
        assert_eq!(opened.content, b"I owe you 100");
        // And no third party (Carol, with neither secret) can.
        let carol = device(3);
        let by_carol = seal_with_message_key(
            &alice.identity(),
            &|_| carol.ik.dh(&alice_ik).ok(),
            KIND_SINGLE,
            &m,
            &to,
            1,
            b"I owe you 100",
        )
        .unwrap();
        assert_eq!(
            open(&bob, &by_carol.envelope(0).unwrap()),
            Err(OpenError::BadSenderAuth)
        );
    }

    #[test]
    fn the_multi_kind_binds_each_recipient() {
        let (alice, bob, carol) = (device(1), device(2), device(3));
        let mut rng = ChaCha20Rng::seed_from_u64(9); // test only
        let multi = seal_multi(&alice, &[bob.identity(), carol.identity()], 1, b"hi all", &mut rng).unwrap();
        assert_eq!(open(&bob, &multi.envelope(0).unwrap()).unwrap().content, b"hi all");
        assert_eq!(open(&carol, &multi.envelope(1).unwrap()).unwrap().content, b"hi all");
        // Bob's envelope does not open at Carol.
        assert_eq!(open(&carol, &multi.envelope(0).unwrap()), Err(OpenError::InvalidMac));
        // Carol's block spliced into Bob's envelope does not open at either.
        let mut spliced = multi.envelope(0).unwrap();
        spliced[HEADER_LEN..HEADER_LEN + RECIPIENT_BLOCK_LEN].copy_from_slice(multi.block(1).unwrap());
        assert!(open(&bob, &spliced).is_err());
        // Carol learns M, so she can encrypt a new body; Bob's tag binds the body, so her
        // rewrite under Bob's block is refused.
        let env_c = multi.envelope(1).unwrap();
        let e_pub = X25519PublicKey(env_c[2..34].try_into().unwrap());
        let w: [u8; 32] = env_c[34..66].try_into().unwrap();
        let salt = recipient_salt(&e_pub, &encode_identity(&carol.identity()));
        let m = unwrap_message_key(&carol, &salt, &e_pub, &w).unwrap();
        let rewritten = seal_with_message_key(
            &alice.identity(),
            &|ik| carol.ik.dh(ik).ok(),
            KIND_MULTI,
            &m,
            &[bob.identity()],
            1,
            b"send Carol money",
        )
        .unwrap();
        let mut attack = multi.envelope(0).unwrap();
        attack.truncate(HEADER_LEN + RECIPIENT_BLOCK_LEN);
        attack.extend_from_slice(rewritten.body());
        assert_eq!(open(&bob, &attack), Err(OpenError::BadSenderAuth));
    }

    /// A device list may name another device's IK under a different account: what is
    /// sealed to that entry does not open at the real holder of the key.
    #[test]
    fn the_recipient_account_is_bound() {
        let (alice, bob) = (device(1), device(2));
        let mut claimed = bob.identity();
        claimed.account_id = AccountId([0x55; 32]);
        let mut rng = ChaCha20Rng::seed_from_u64(3); // test only
        let env = seal(&alice, &claimed, 1, b"for the impostor account", &mut rng).unwrap();
        assert_eq!(open(&bob, &env), Err(OpenError::InvalidMac));
        let multi = seal_multi(&alice, &[claimed], 1, b"x", &mut rng).unwrap();
        assert_eq!(open(&bob, &multi.envelope(0).unwrap()), Err(OpenError::InvalidMac));
    }

    /// A restored snapshot repeats the generator's output: key and nonce still differ
    /// when the message or the recipient does.
    #[test]
    fn a_repeated_draw_does_not_repeat_key_or_nonce() {
        let (alice, bob, carol) = (device(1), device(2), device(3));
        let seal_with = |to: &DeviceIdentity, content: &[u8]| {
            let mut rng = ChaCha20Rng::seed_from_u64(77); // test only
            seal(&alice, to, 1, content, &mut rng).unwrap()
        };
        let a = seal_with(&bob.identity(), b"first message");
        let b = seal_with(&bob.identity(), b"other message");
        let c = seal_with(&carol.identity(), b"first message");
        // E, from which key and nonce derive together with M, differs in each.
        assert_ne!(a[2..34], b[2..34]);
        assert_ne!(a[2..34], c[2..34]);
        let m_of = |env: &[u8], to: &Device| {
            let e_pub = X25519PublicKey(env[2..34].try_into().unwrap());
            let salt = recipient_salt(&e_pub, &encode_identity(&to.identity()));
            let m = unwrap_message_key(to, &salt, &e_pub, &env[34..66].try_into().unwrap()).unwrap();
            body_keys(&e_pub, &m)
        };
        let (ka, kb) = (m_of(&a, &bob), m_of(&b, &bob));
        assert_ne!(ka[..32], kb[..32]);
        assert_ne!(ka[32..], kb[32..]);
        assert_ne!(ka[..], m_of(&c, &carol)[..]);
    }

    #[test]
    fn the_signed_version_1_is_refused_by_name() {
        let (alice, bob) = (device(1), device(2));
        let mut rng = ChaCha20Rng::seed_from_u64(5); // test only
        let mut env = seal(&alice, &bob.identity(), 1, b"x", &mut rng).unwrap();
        env[0] = LEGACY_VERSION;
        assert_eq!(open(&bob, &env), Err(OpenError::UnsupportedVersion { version: 1 }));
        assert_eq!(open(&bob, &env).unwrap_err().name(), "UnsupportedVersion");
    }
}
