//! Encryption at rest for the SQLite and IndexedDB stores.
//!
//! ```text
//! enc_key   = HKDF-SHA256(salt = "", ikm = store key, info = "Sotto-v1 store value key", 32)
//! index_key = HKDF-SHA256(salt = "", ikm = store key, info = "Sotto-v1 store index key", 32)
//! tag(t, k) = HMAC-SHA256(index_key, table ‖ 0x00 ‖ k)          lookup column
//! value     = nonce (24) ‖ XChaCha20-Poly1305(enc_key, nonce, v, ad = table ‖ 0x00 ‖ tag)
//! ```
//! Binding the tag into the AD keeps a value from being moved to another row.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::StoreError;

/// The key the store encrypts every value under. The app keeps it (for example in the
/// platform keystore). Never printed.
#[derive(Zeroize, ZeroizeOnDrop, Clone)]
pub struct StoreKey(pub(crate) [u8; 32]);

impl StoreKey {
    /// From 32 secret bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(..)")
    }
}

#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct Crypt {
    enc: [u8; 32],
    index: [u8; 32],
}

impl Crypt {
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        let hk = Hkdf::<Sha256>::new(None, key);
        let mut enc = [0u8; 32];
        let mut index = [0u8; 32];
        // 32-byte outputs are far below HKDF's limit.
        let _ = hk.expand(b"Sotto-v1 store value key", &mut enc);
        let _ = hk.expand(b"Sotto-v1 store index key", &mut index);
        Self { enc, index }
    }

    pub(crate) fn tag(&self, table: &str, key: &[u8]) -> Vec<u8> {
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&self.index) else {
            return Vec::new();
        };
        mac.update(table.as_bytes());
        mac.update(&[0]);
        mac.update(key);
        mac.finalize().into_bytes().to_vec()
    }

    fn ad(table: &str, tag: &[u8]) -> Vec<u8> {
        [table.as_bytes(), &[0], tag].concat()
    }

    pub(crate) fn seal(&self, table: &str, tag: &[u8], value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; 24];
        getrandom::getrandom(&mut nonce).map_err(|e| StoreError::Database(format!("no randomness: {e}")))?;
        let cipher = XChaCha20Poly1305::new((&self.enc).into());
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: value,
                    aad: &Self::ad(table, tag),
                },
            )
            .map_err(|_| StoreError::Decrypt)?;
        Ok([&nonce[..], &ct].concat())
    }

    pub(crate) fn open(&self, table: &str, tag: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        if sealed.len() < 24 + 16 {
            return Err(StoreError::Decrypt);
        }
        let (nonce, ct) = sealed.split_at(24);
        let cipher = XChaCha20Poly1305::new((&self.enc).into());
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: &Self::ad(table, tag),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| StoreError::Decrypt)
    }
}
