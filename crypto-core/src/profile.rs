//! Profile keys (docs/protocol.md §15.9): an account encrypts its profile (display name,
//! avatar) under a 32-byte profile key that it shares only with the contacts it accepted,
//! and stores the ciphertext on the relay under a version derived from the key. The relay
//! holds the ciphertext and the version, never the key; whoever holds the key computes
//! the version, fetches and decrypts. A new key (after blocking someone) makes a new
//! version, and the old one stops working.
//!
//! ```text
//! version    = HKDF-SHA256(salt = account_id, ikm = PK, info = "Sotto-v1 profile version")   32 bytes
//! N          = 32 bytes drawn from the generator
//! k ‖ n      = HKDF-SHA256(salt = N, ikm = PK, info = "Sotto-v1 profile cipher" ‖ account_id)  32 + 12 bytes
//! header     = 0x01 ‖ N                                                                          33 bytes
//! ciphertext = header ‖ ChaCha20-Poly1305(k, n, pad(profile), ad = header ‖ account_id) ‖ tag
//! ```
//!
//! `pad` is §7.3's. The account id in the associated data and in the derivations binds a
//! ciphertext to its account: one account's profile does not decrypt as another's, even
//! under the same key. `N` is fresh per encryption, so the AEAD key and nonce never repeat
//! under one profile key.

use std::fmt;

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use rand_core::CryptoRngCore;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::codec::DecodeError;
use crate::identity::AccountId;
use crate::kdf::{hkdf, info};
use crate::padding;

/// The profile ciphertext's version byte.
pub const VERSION: u8 = 1;
/// The longest profile plaintext, in bytes.
pub const MAX_PLAINTEXT_LEN: usize = 20 * 1024;
const HEADER_LEN: usize = 1 + 32;
const TAG_LEN: usize = 16;
/// The longest profile ciphertext: the largest plaintext padded, with header and tag.
pub const MAX_CIPHERTEXT_LEN: usize = HEADER_LEN + 21_504 + TAG_LEN;
/// The shortest: an empty plaintext padded to the smallest bucket.
const MIN_CIPHERTEXT_LEN: usize = HEADER_LEN + 256 + TAG_LEN;

/// Why a profile does not encrypt or decrypt.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// The plaintext is longer than [`MAX_PLAINTEXT_LEN`].
    #[error("profile of {len} bytes is longer than {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The ciphertext does not decode (length, version or padding).
    #[error("profile ciphertext does not decode: {0}")]
    Decode(#[from] DecodeError),
    /// Not encrypted under this key for this account, or altered.
    #[error("profile authentication failed")]
    InvalidMac,
}

/// An account's profile key. Secret: carried only inside encrypted content.
#[derive(Clone)]
pub struct ProfileKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for ProfileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProfileKey(..)")
    }
}

impl PartialEq for ProfileKey {
    fn eq(&self, other: &Self) -> bool {
        crate::keys::ct_eq(self.0.as_slice(), other.0.as_slice())
    }
}

impl Eq for ProfileKey {}

impl ProfileKey {
    /// A new key: 32 bytes from `rng`.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(key.as_mut_slice());
        Self(key)
    }

    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(Zeroizing::new(*bytes))
    }

    /// The key's 32 bytes.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(*self.0)
    }

    /// The version the relay stores `account`'s profile under for this key.
    pub fn version(&self, account: &AccountId) -> [u8; 32] {
        *hkdf::<32>(account.as_bytes(), self.0.as_slice(), &[info::PROFILE_VERSION])
    }

    fn cipher_keys(&self, n: &[u8; 32], account: &AccountId) -> Zeroizing<[u8; 44]> {
        hkdf::<44>(n, self.0.as_slice(), &[info::PROFILE_CIPHER, account.as_bytes()])
    }

    /// Encrypts `account`'s profile `plaintext`, drawing 32 bytes from `rng`.
    pub fn encrypt(
        &self,
        account: &AccountId,
        plaintext: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<u8>, ProfileError> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(ProfileError::TooLarge {
                len: plaintext.len(),
                max: MAX_PLAINTEXT_LEN,
            });
        }
        let mut n = [0u8; 32];
        rng.fill_bytes(&mut n);
        let mut out = Vec::with_capacity(HEADER_LEN + padding::bucket(plaintext.len() + 1) + TAG_LEN);
        out.push(VERSION);
        out.extend_from_slice(&n);
        out.extend_from_slice(plaintext);
        padding::pad(&mut out, HEADER_LEN);
        let keys = self.cipher_keys(&n, account);
        let cipher = ChaCha20Poly1305::new((&keys[..32]).into());
        let (header, body) = out.split_at_mut(HEADER_LEN);
        let ad = [&header[..], account.as_bytes()].concat();
        let tag = cipher
            .encrypt_in_place_detached((&keys[32..]).into(), &ad, body)
            .map_err(|_| ProfileError::TooLarge {
                len: plaintext.len(),
                max: MAX_PLAINTEXT_LEN,
            })?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Decrypts `account`'s profile. Checks, in order: length (`Decode(Truncated |
    /// TooLong)`), version (`Decode(UnsupportedVersion)`), the AEAD (`InvalidMac`), padding
    /// (`Decode(Invalid)`).
    pub fn decrypt(&self, account: &AccountId, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, ProfileError> {
        if ciphertext.len() > MAX_CIPHERTEXT_LEN {
            return Err(DecodeError::TooLong {
                field: "profile",
                len: ciphertext.len(),
                max: MAX_CIPHERTEXT_LEN,
            }
            .into());
        }
        if ciphertext.len() < MIN_CIPHERTEXT_LEN {
            return Err(DecodeError::Truncated {
                needed: MIN_CIPHERTEXT_LEN,
                remaining: ciphertext.len(),
            }
            .into());
        }
        let (header, rest) = ciphertext.split_at(HEADER_LEN);
        if header[0] != VERSION {
            return Err(DecodeError::UnsupportedVersion { version: header[0] }.into());
        }
        let mut n = [0u8; 32];
        n.copy_from_slice(&header[1..]);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        let keys = self.cipher_keys(&n, account);
        let cipher = ChaCha20Poly1305::new((&keys[..32]).into());
        let ad = [header, account.as_bytes()].concat();
        let mut plain = Zeroizing::new(body.to_vec());
        cipher
            .decrypt_in_place_detached((&keys[32..]).into(), &ad, plain.as_mut_slice(), tag.into())
            .map_err(|_| ProfileError::InvalidMac)?;
        let len = padding::unpad(&plain)?.len();
        plain.truncate(len);
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    fn account(b: u8) -> AccountId {
        AccountId([b; 32])
    }

    #[test]
    fn round_trip_and_binding() {
        let mut rng = ChaCha20Rng::seed_from_u64(7); // test only
        let key = ProfileKey::generate(&mut rng);
        let (a, b) = (account(1), account(2));
        for len in [0, 1, 255, 256, 5000, MAX_PLAINTEXT_LEN] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let ct = key.encrypt(&a, &plain, &mut rng).unwrap();
            assert!(ct.len() <= MAX_CIPHERTEXT_LEN && ct.len() >= MIN_CIPHERTEXT_LEN);
            assert_eq!(key.decrypt(&a, &ct).unwrap().as_slice(), &plain[..]);
            // Another account, another key, a flipped bit: all fail the same way.
            assert_eq!(key.decrypt(&b, &ct), Err(ProfileError::InvalidMac));
            let other = ProfileKey::generate(&mut rng);
            assert_eq!(other.decrypt(&a, &ct), Err(ProfileError::InvalidMac));
            for i in [0usize, 1, HEADER_LEN, ct.len() - 1] {
                let mut bad = ct.clone();
                bad[i] ^= 1;
                assert!(key.decrypt(&a, &bad).is_err(), "bit flip at {i}");
            }
        }
        assert!(matches!(
            key.encrypt(&a, &vec![0; MAX_PLAINTEXT_LEN + 1], &mut rng),
            Err(ProfileError::TooLarge { .. })
        ));
        assert!(matches!(key.decrypt(&a, &[1; 10]), Err(ProfileError::Decode(_))));
        assert!(matches!(
            key.decrypt(&a, &vec![1; MAX_CIPHERTEXT_LEN + 1]),
            Err(ProfileError::Decode(_))
        ));
        let mut v2 = key.encrypt(&a, b"x", &mut rng).unwrap();
        v2[0] = 2;
        assert_eq!(
            key.decrypt(&a, &v2),
            Err(ProfileError::Decode(DecodeError::UnsupportedVersion { version: 2 }))
        );
    }

    #[test]
    fn versions_differ_by_key_and_account() {
        let mut rng = ChaCha20Rng::seed_from_u64(8); // test only
        let (k1, k2) = (ProfileKey::generate(&mut rng), ProfileKey::generate(&mut rng));
        assert_ne!(k1.version(&account(1)), k2.version(&account(1)));
        assert_ne!(k1.version(&account(1)), k1.version(&account(2)));
        assert_eq!(k1.version(&account(1)), k1.clone().version(&account(1)));
        assert_eq!(format!("{k1:?}"), "ProfileKey(..)");
    }

    #[test]
    fn largest_plaintext_fills_the_largest_ciphertext() {
        assert_eq!(
            HEADER_LEN + padding::bucket(MAX_PLAINTEXT_LEN + 1) + TAG_LEN,
            MAX_CIPHERTEXT_LEN
        );
    }
}
