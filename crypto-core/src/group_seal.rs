//! The group seal (docs/protocol.md §7A): one envelope for every device of a group,
//! sealed under the group's current seal key `GK`, which every current member holds and
//! which changes with membership. The relay stores the envelope once and delivers it to
//! each mailbox of the fan-out; it sees neither the group nor the sender. Inside travels a
//! sender-key message (§6A), whose signature names the sending member to the others.
//!
//! ```text
//! hint_key = HKDF-SHA256(salt = "", ikm = GK, info = "Sotto-v1 group seal hint")                  32 bytes
//! N        = HKDF-SHA256(salt = R (32 drawn bytes),
//!                        ikm  = SHA-256("Sotto-v1 group seal hedge" ‖ GK) ‖ SHA-256(content_type ‖ content),
//!                        info = "Sotto-v1 group seal nonce")                                       32 bytes
//! hint     = HMAC-SHA256(hint_key, N)[..16]
//! k ‖ n    = HKDF-SHA256(salt = N, ikm = GK, info = "Sotto-v1 group seal body")                   32 + 12 bytes
//! header   = 0x03 ‖ N ‖ hint                                                                        49 bytes
//! envelope = header ‖ ChaCha20-Poly1305(k, n, pad(content_type ‖ content), ad = header) ‖ tag
//! ```
//!
//! The hint lets a device find which of its group keys opens an envelope with one HMAC per
//! key, without a key identifier the relay could follow from one message to the next: it
//! depends on `N`, which is fresh for every seal. `N` is hedged like the sealed-sender
//! message key: a repeated random draw repeats `N` (and so the AEAD key and nonce) only when
//! the key and the content repeat too, in which case the envelopes are identical.
//!
//! The seal authenticates membership, not the sender: anyone holding `GK` can make an
//! envelope. The sender-key signature inside is what tells members apart.

use std::fmt;

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::codec::{DecodeError, Put};
use crate::kdf::{hkdf, hmac, info, sha256};
use crate::keys::ct_eq;
use crate::padding;
use crate::sealed::{OpenError, SealError};

/// The version byte of a group-sealed envelope. Sealed-sender envelopes start with
/// `0x02` (§7), so a receiver tells the two apart by the first byte.
pub const VERSION: u8 = 3;
/// Length of the nonce seed `N`.
pub const NONCE_SEED_LEN: usize = 32;
/// Length of the key hint.
pub const HINT_LEN: usize = 16;
/// Bytes before the ciphertext: version, `N`, hint.
pub const HEADER_LEN: usize = 1 + NONCE_SEED_LEN + HINT_LEN;
const TAG_LEN: usize = 16;
/// Largest content (before padding) a group seal carries: a sender-key message of the
/// largest plaintext fits.
pub const MAX_CONTENT_LEN: usize = crate::sender_key::MAX_MESSAGE_LEN;
/// Largest envelope: the header, the largest content with its type byte and marker padded
/// to its bucket (`bucket(1 048 695) = 1 081 344`), and the tag. [`GroupSealKey::open`]
/// refuses anything longer.
pub const MAX_ENVELOPE_LEN: usize = 1_081_409;
/// Smallest envelope: the header, the smallest padding bucket, the tag.
pub const MIN_ENVELOPE_LEN: usize = HEADER_LEN + 256 + TAG_LEN;

/// A group's seal key `GK`: 32 bytes every current member holds.
#[derive(Clone)]
pub struct GroupSealKey {
    key: Zeroizing<[u8; 32]>,
    hint_key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for GroupSealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupSealKey").finish_non_exhaustive()
    }
}

impl PartialEq for GroupSealKey {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(self.key.as_slice(), other.key.as_slice())
    }
}

impl Eq for GroupSealKey {}

/// An opened group envelope.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupOpened {
    /// The content type byte the sender gave.
    pub content_type: u8,
    /// The content (for the SDK, a sender-key message).
    pub content: Vec<u8>,
}

impl fmt::Debug for GroupOpened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupOpened")
            .field("content_type", &self.content_type)
            .field("content_len", &self.content.len())
            .finish()
    }
}

/// True when `envelope` starts with the group-seal version byte (it may still fail to open).
pub fn is_group_envelope(envelope: &[u8]) -> bool {
    envelope.first() == Some(&VERSION)
}

impl GroupSealKey {
    /// A new key: 32 bytes from `rng`.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(key.as_mut_slice());
        Self::from_bytes(&key)
    }

    /// The key from its 32 bytes (as carried in group-control content).
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        let hint_key = hkdf::<32>(&[], bytes, &[info::GROUP_SEAL_HINT]);
        Self {
            key: Zeroizing::new(*bytes),
            hint_key,
        }
    }

    /// The key's 32 bytes. Secret: carry them only inside encrypted content.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(*self.key)
    }

    fn hint(&self, n: &[u8; NONCE_SEED_LEN]) -> [u8; HINT_LEN] {
        let full = hmac(&self.hint_key, &[n]);
        let mut hint = [0u8; HINT_LEN];
        hint.copy_from_slice(&full[..HINT_LEN]);
        hint
    }

    fn body_keys(&self, n: &[u8; NONCE_SEED_LEN]) -> Zeroizing<[u8; 44]> {
        hkdf::<44>(n, self.key.as_slice(), &[info::GROUP_SEAL_BODY])
    }

    /// Seals `content` for the group. Draws 32 bytes, hedged with the key and the content.
    pub fn seal(&self, content_type: u8, content: &[u8], rng: &mut impl CryptoRngCore) -> Result<Vec<u8>, SealError> {
        if content.len() > MAX_CONTENT_LEN {
            return Err(SealError::TooLarge {
                len: content.len(),
                max: MAX_CONTENT_LEN,
            });
        }
        let mut r = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(r.as_mut_slice());
        let mut ikm = Zeroizing::new([0u8; 64]);
        ikm[..32].copy_from_slice(&sha256(&[info::GROUP_SEAL_HEDGE, self.key.as_slice()]));
        ikm[32..].copy_from_slice(&sha256(&[&[content_type], content]));
        let n = hkdf::<NONCE_SEED_LEN>(r.as_slice(), ikm.as_slice(), &[info::GROUP_SEAL_NONCE]);
        let n: [u8; NONCE_SEED_LEN] = *n;
        let padded_len = padding::bucket(1 + content.len() + 1);
        let mut out = Vec::with_capacity(HEADER_LEN + padded_len + TAG_LEN);
        out.put_u8(VERSION);
        out.put(&n);
        out.put(&self.hint(&n));
        out.put_u8(content_type);
        out.put(content);
        padding::pad(&mut out, HEADER_LEN);
        let keys = self.body_keys(&n);
        let cipher = ChaCha20Poly1305::new((&keys[..32]).into());
        let (header, body) = out.split_at_mut(HEADER_LEN);
        let tag = cipher
            .encrypt_in_place_detached((&keys[32..]).into(), header, body)
            .map_err(|_| SealError::TooLarge {
                len: content.len(),
                max: MAX_CONTENT_LEN,
            })?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// True when the envelope's hint is this key's (one HMAC, compared in constant time).
    /// A match is not yet proof: [`Self::open`] authenticates.
    pub fn matches(&self, envelope: &[u8]) -> bool {
        match header_parts(envelope) {
            Some((n, hint)) => ct_eq(&self.hint(&n), &hint),
            None => false,
        }
    }

    /// Opens an envelope sealed under this key. Checks, in order: length
    /// (`Decode(TooLong | Truncated)`), version (`UnsupportedVersion`), hint and AEAD
    /// (`InvalidMac`), padding (`Decode(Invalid)`).
    pub fn open(&self, envelope: &[u8]) -> Result<GroupOpened, OpenError> {
        if envelope.len() > MAX_ENVELOPE_LEN {
            return Err(DecodeError::TooLong {
                field: "group envelope",
                len: envelope.len(),
                max: MAX_ENVELOPE_LEN,
            }
            .into());
        }
        let Some(&version) = envelope.first() else {
            return Err(DecodeError::Truncated {
                needed: MIN_ENVELOPE_LEN,
                remaining: 0,
            }
            .into());
        };
        if version != VERSION {
            return Err(OpenError::UnsupportedVersion { version });
        }
        if envelope.len() < MIN_ENVELOPE_LEN {
            return Err(DecodeError::Truncated {
                needed: MIN_ENVELOPE_LEN,
                remaining: envelope.len(),
            }
            .into());
        }
        let Some((n, hint)) = header_parts(envelope) else {
            return Err(OpenError::InvalidMac);
        };
        if !ct_eq(&self.hint(&n), &hint) {
            return Err(OpenError::InvalidMac);
        }
        let (header, rest) = envelope.split_at(HEADER_LEN);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        let keys = self.body_keys(&n);
        let cipher = ChaCha20Poly1305::new((&keys[..32]).into());
        let mut plain = Zeroizing::new(body.to_vec());
        cipher
            .decrypt_in_place_detached((&keys[32..]).into(), header, plain.as_mut_slice(), tag.into())
            .map_err(|_| OpenError::InvalidMac)?;
        let inner = padding::unpad(&plain)?;
        let Some((&content_type, content)) = inner.split_first() else {
            return Err(DecodeError::Truncated {
                needed: 1,
                remaining: 0,
            }
            .into());
        };
        Ok(GroupOpened {
            content_type,
            content: content.to_vec(),
        })
    }
}

/// `N` and the hint of an envelope long enough to hold a header of the right version.
fn header_parts(envelope: &[u8]) -> Option<([u8; NONCE_SEED_LEN], [u8; HINT_LEN])> {
    if envelope.len() < HEADER_LEN || envelope[0] != VERSION {
        return None;
    }
    let mut n = [0u8; NONCE_SEED_LEN];
    n.copy_from_slice(&envelope[1..1 + NONCE_SEED_LEN]);
    let mut hint = [0u8; HINT_LEN];
    hint.copy_from_slice(&envelope[1 + NONCE_SEED_LEN..HEADER_LEN]);
    Some((n, hint))
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed) // test only
    }

    #[test]
    fn a_member_opens_what_the_group_key_sealed() {
        let mut r = rng(1);
        let gk = GroupSealKey::generate(&mut r);
        let env = gk.seal(7, b"to the whole group", &mut r).unwrap();
        assert_eq!(env.len(), HEADER_LEN + 256 + TAG_LEN);
        assert!(is_group_envelope(&env));
        assert!(gk.matches(&env));
        let opened = gk.open(&env).unwrap();
        assert_eq!(opened.content_type, 7);
        assert_eq!(opened.content, b"to the whole group");
        let member = GroupSealKey::from_bytes(&gk.to_bytes());
        assert_eq!(member.open(&env).unwrap(), opened);
    }

    #[test]
    fn another_key_does_not_match_or_open() {
        let mut r = rng(2);
        let gk = GroupSealKey::generate(&mut r);
        let next = GroupSealKey::generate(&mut r);
        let env = gk.seal(1, b"before the removal", &mut r).unwrap();
        assert!(!next.matches(&env));
        assert_eq!(next.open(&env), Err(OpenError::InvalidMac));
    }

    #[test]
    fn every_altered_byte_is_refused() {
        let mut r = rng(3);
        let gk = GroupSealKey::generate(&mut r);
        let env = gk.seal(1, b"x", &mut r).unwrap();
        for i in 0..env.len() {
            let mut bad = env.clone();
            bad[i] ^= 0x01;
            assert!(gk.open(&bad).is_err(), "byte {i}");
        }
        assert!(matches!(
            gk.open(&env[..env.len() - 1]),
            Err(OpenError::Decode(DecodeError::Truncated { .. }))
        ));
        let mut v2 = env.clone();
        v2[0] = 2;
        assert_eq!(gk.open(&v2), Err(OpenError::UnsupportedVersion { version: 2 }));
        assert!(gk.open(&[]).is_err());
    }

    #[test]
    fn a_repeated_draw_with_other_content_repeats_no_nonce() {
        let gk = GroupSealKey::generate(&mut rng(4));
        let a = gk.seal(1, b"first", &mut rng(5)).unwrap();
        let b = gk.seal(1, b"second", &mut rng(5)).unwrap();
        assert_ne!(a[1..33], b[1..33]);
        let a2 = gk.seal(1, b"first", &mut rng(5)).unwrap();
        assert_eq!(a, a2, "same draw, key and content: the same envelope");
        let c = gk.seal(1, b"first", &mut rng(6)).unwrap();
        assert_ne!(
            a[1..HEADER_LEN],
            c[1..HEADER_LEN],
            "a fresh draw, a fresh nonce seed and hint"
        );
    }

    #[test]
    fn the_largest_envelope_is_the_bound() {
        assert_eq!(
            MAX_ENVELOPE_LEN,
            HEADER_LEN + padding::bucket(MAX_CONTENT_LEN + 2) + TAG_LEN
        );
    }

    #[test]
    fn content_is_bounded() {
        let mut r = rng(7);
        let gk = GroupSealKey::generate(&mut r);
        let big = vec![0u8; MAX_CONTENT_LEN + 1];
        assert!(matches!(gk.seal(1, &big, &mut r), Err(SealError::TooLarge { .. })));
        let max = vec![0u8; MAX_CONTENT_LEN];
        let env = gk.seal(1, &max, &mut r).unwrap();
        assert_eq!(env.len(), MAX_ENVELOPE_LEN);
        assert_eq!(gk.open(&env).unwrap().content.len(), MAX_CONTENT_LEN);
    }

    #[test]
    fn debug_shows_no_key() {
        let gk = GroupSealKey::from_bytes(&[0xab; 32]);
        assert_eq!(format!("{gk:?}"), "GroupSealKey { .. }");
    }
}
