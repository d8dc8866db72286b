//! Pickles: versioned, encrypted serialization of secret state (docs/protocol.md §9).
//!
//! ```text
//! pickle = 0x01 ‖ type (u8) ‖ nonce (24) ‖ XChaCha20-Poly1305(key, nonce, inner, ad = "Sotto-v1 pickle" ‖ 0x01 ‖ type)
//! inner  = format (u16) ‖ fields
//! types: 1 account key, 2 device, 3 session, 4 X25519 prekey secret, 5 ML-KEM prekey secret,
//!        6 list key, 7 sender key, 8 sender-key receiver
//! ```
//! Each type's fields are listed in docs/protocol.md; a format number only grows, and
//! every earlier format stays readable (fixtures under `tests/fixtures/`).

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use rand_core::CryptoRngCore;
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::codec::{DecodeError, Put, Reader};
use crate::device_list::ListKey;
use crate::identity::{
    AccountId, AccountKey, Device, DeviceId, KemPreKey, KemPreKeySecret, X25519PreKey, X25519PreKeySecret,
};
use crate::kdf::info;
use crate::keys::{Ed25519PublicKey, Ed25519Secret, KEM_SEED_LEN, KemSecret, Signature, X25519Secret};
use crate::ratchet::Session;
use crate::sender_key::{SenderKey, SenderKeyReceiver};

const VERSION: u8 = 1;
const FORMAT: u16 = 1;
/// Largest pickle accepted (a session at its bounds is about 135 KiB).
pub const MAX_PICKLE_LEN: usize = 256 * 1024;

/// The key pickles are encrypted under; the app supplies and keeps it (for example in
/// the platform keystore).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct PickleKey([u8; 32]);

impl PickleKey {
    /// From 32 secret bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl std::fmt::Debug for PickleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PickleKey(..)")
    }
}

/// Why a pickle did not load.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PickleError {
    /// The outer or inner bytes do not decode.
    #[error("pickle does not decode: {0}")]
    Decode(#[from] DecodeError),
    /// Wrong key, or the pickle was altered.
    #[error("pickle does not authenticate (wrong key or altered)")]
    Authentication,
    /// A pickle of another type.
    #[error("pickle holds type {found}, expected {expected}")]
    WrongType {
        /// Expected type byte.
        expected: u8,
        /// Type byte found.
        found: u8,
    },
    /// An inner format this version cannot read.
    #[error("unsupported pickle format {0}")]
    UnsupportedFormat(u16),
}

mod private {
    use crate::codec::DecodeError;

    /// The per-type field codec; sealed so only this crate's types pickle.
    pub trait Fields: Sized {
        const TYPE: u8;
        /// The exact length `encode_fields` writes.
        fn fields_len(&self) -> usize;
        fn encode_fields(&self, out: &mut Vec<u8>);
        /// Decodes the fields, which must fill `bytes` exactly.
        fn decode_fields(format: u16, bytes: &[u8]) -> Result<Self, DecodeError>;
    }
}
use private::Fields;

impl<T: Fields> Pickle for T {}

/// Types that pickle: [`AccountKey`], [`ListKey`], [`Device`], [`Session`], the prekey
/// secrets and the sender-key states.
#[allow(private_bounds, reason = "sealed trait: only this crate's types pickle")]
pub trait Pickle: Fields {
    /// Encrypts the state under `key`. Draws the 24-byte nonce.
    fn pickle(&self, key: &PickleKey, rng: &mut impl CryptoRngCore) -> Vec<u8> {
        // The plaintext is written once, straight into the output at its exact final
        // size, so no reallocation leaves an unwiped copy of a key behind; on failure the
        // buffer is wiped.
        let inner_len = 2 + self.fields_len();
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        let mut out = Zeroizing::new(Vec::with_capacity(2 + 24 + inner_len + 16));
        out.put_u8(VERSION);
        out.put_u8(Self::TYPE);
        out.put(&nonce);
        let start = out.len();
        out.put_u16(FORMAT);
        self.encode_fields(&mut out);
        debug_assert_eq!(out.len(), start + inner_len, "fields_len is exact");
        let ad = [info::PICKLE, &[VERSION, Self::TYPE]].concat();
        let cipher = XChaCha20Poly1305::new((&key.0).into());
        match cipher.encrypt_in_place_detached((&nonce).into(), &ad, &mut out[start..]) {
            Ok(tag) => out.extend_from_slice(&tag),
            // Only inputs near 256 GiB fail; pickles are bounded far below that.
            Err(_) => {
                out.zeroize();
                out.truncate(start);
            }
        }
        std::mem::take(&mut *out)
    }

    /// Decrypts and decodes a pickle.
    fn unpickle(bytes: &[u8], key: &PickleKey) -> Result<Self, PickleError> {
        if bytes.len() > MAX_PICKLE_LEN {
            return Err(DecodeError::TooLong {
                field: "pickle",
                len: bytes.len(),
                max: MAX_PICKLE_LEN,
            }
            .into());
        }
        let mut r = Reader::new(bytes);
        r.version(VERSION)?;
        let found = r.u8()?;
        if found != Self::TYPE {
            return Err(PickleError::WrongType {
                expected: Self::TYPE,
                found,
            });
        }
        let nonce: [u8; 24] = r.array()?;
        let rest = r.rest();
        if rest.len() < 16 {
            return Err(DecodeError::Truncated {
                needed: 16,
                remaining: rest.len(),
            }
            .into());
        }
        let (ct, tag) = rest.split_at(rest.len() - 16);
        let mut inner = Zeroizing::new(ct.to_vec());
        let ad = [info::PICKLE, &[VERSION, Self::TYPE]].concat();
        let cipher = XChaCha20Poly1305::new((&key.0).into());
        cipher
            .decrypt_in_place_detached((&nonce).into(), &ad, inner.as_mut_slice(), tag.into())
            .map_err(|_| PickleError::Authentication)?;
        let mut r = Reader::new(&inner);
        let format = r.u16()?;
        if format == 0 || format > FORMAT {
            return Err(PickleError::UnsupportedFormat(format));
        }
        Ok(Self::decode_fields(format, r.rest())?)
    }
}

impl Fields for AccountKey {
    const TYPE: u8 = 1;
    fn fields_len(&self) -> usize {
        32
    }
    fn encode_fields(&self, out: &mut Vec<u8>) {
        out.put(&*self.secret().seed());
    }
    fn decode_fields(_: u16, bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let r = &mut reader;
        let seed = Zeroizing::new(r.array::<32>()?);
        reader.finish()?;
        Ok(AccountKey::from_secret(Ed25519Secret::from_seed(&seed)))
    }
}

impl Fields for ListKey {
    const TYPE: u8 = 6;
    fn fields_len(&self) -> usize {
        32 + 8 + 32 + 64
    }
    fn encode_fields(&self, out: &mut Vec<u8>) {
        let (secret, account_key, certificate) = self.parts();
        out.put(account_key.as_bytes());
        out.put_u64(self.epoch());
        out.put(&*secret.seed());
        out.put(&certificate.0);
    }
    fn decode_fields(_: u16, bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let r = &mut reader;
        let account_key =
            Ed25519PublicKey::from_bytes(&r.array()?).map_err(|_| DecodeError::Invalid { field: "account key" })?;
        let epoch = r.u64()?;
        let secret = Ed25519Secret::from_seed(&Zeroizing::new(r.array()?));
        let certificate = Signature(r.array()?);
        reader.finish()?;
        ListKey::from_parts(secret, epoch, account_key, certificate).map_err(|_| DecodeError::Invalid {
            field: "list key certificate",
        })
    }
}

impl Fields for SenderKey {
    const TYPE: u8 = 7;
    fn fields_len(&self) -> usize {
        16 + 4 + 32 + 32
    }
    fn encode_fields(&self, out: &mut Vec<u8>) {
        let (chain_id, iteration, chain_key, signing) = self.parts();
        out.put(chain_id);
        out.put_u32(iteration);
        out.put(chain_key);
        out.put(&*signing.seed());
    }
    fn decode_fields(_: u16, bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let r = &mut reader;
        let chain_id = r.array()?;
        let iteration = r.u32()?;
        let chain_key = Zeroizing::new(r.array()?);
        let signing = Ed25519Secret::from_seed(&Zeroizing::new(r.array()?));
        reader.finish()?;
        Ok(SenderKey::from_parts(chain_id, iteration, &chain_key, signing))
    }
}

impl Fields for SenderKeyReceiver {
    const TYPE: u8 = 8;
    fn fields_len(&self) -> usize {
        16 + 32 + 4 + 32 + 2 + self.skipped_keys() * (4 + 32)
    }
    fn encode_fields(&self, out: &mut Vec<u8>) {
        let (chain_id, signing_key, iteration, chain_key, skipped) = self.parts();
        out.put(chain_id);
        out.put(signing_key.as_bytes());
        out.put_u32(iteration);
        out.put(chain_key);
        out.put_u16(skipped.len() as u16);
        for (i, mk) in skipped {
            out.put_u32(i);
            out.put(mk);
        }
    }
    fn decode_fields(_: u16, bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let r = &mut reader;
        let chain_id = r.array()?;
        let signing_key =
            Ed25519PublicKey::from_bytes(&r.array()?).map_err(|_| DecodeError::Invalid { field: "signing key" })?;
        let iteration = r.u32()?;
        let chain_key = Zeroizing::new(r.array()?);
        let n = r.count("skipped sender keys", crate::sender_key::MAX_SKIPPED_KEYS, 36)?;
        let mut skipped = Vec::with_capacity(n);
        for _ in 0..n {
            let i = r.u32()?;
            let mk = Zeroizing::new(r.array::<32>()?);
            // Oldest first: strictly ascending, all below the next iteration.
            if i >= iteration || skipped.last().is_some_and(|(last, _)| *last >= i) {
                return Err(DecodeError::Invalid {
                    field: "skipped sender keys",
                });
            }
            skipped.push((i, mk));
        }
        reader.finish()?;
        Ok(SenderKeyReceiver::from_parts(
            chain_id,
            signing_key,
            iteration,
            &chain_key,
            skipped,
        ))
    }
}

impl Fields for Device {
    const TYPE: u8 = 2;
    fn fields_len(&self) -> usize {
        32 + 4 + 32 + 32
    }
    fn encode_fields(&self, out: &mut Vec<u8>) {
        out.put(self.account_id.as_bytes());
        out.put_u32(self.device_id.0);
        out.put(&*self.dsk.seed());
        out.put(&*self.ik.to_bytes());
    }
    fn decode_fields(_: u16, bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let r = &mut reader;
        let account_id = AccountId(r.array()?);
        let device_id = DeviceId(r.u32()?);
        let dsk = Ed25519Secret::from_seed(&Zeroizing::new(r.array()?));
        let ik = X25519Secret::from_bytes(&Zeroizing::new(r.array()?));
        reader.finish()?;
        Ok(Device {
            account_id,
            device_id,
            dsk,
            ik,
        })
    }
}

impl Fields for Session {
    const TYPE: u8 = 3;
    fn fields_len(&self) -> usize {
        self.state_len()
    }
    fn encode_fields(&self, out: &mut Vec<u8>) {
        self.encode_state(out);
    }
    fn decode_fields(_: u16, bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let r = &mut reader;
        let session = Session::decode_state(r)?;
        reader.finish()?;
        Ok(session)
    }
}

impl Fields for X25519PreKeySecret {
    const TYPE: u8 = 4;
    fn fields_len(&self) -> usize {
        X25519PreKey::ENCODED_LEN + 32
    }
    fn encode_fields(&self, out: &mut Vec<u8>) {
        self.public.encode_into(out);
        out.put(&*self.secret.to_bytes());
    }
    fn decode_fields(_: u16, bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let r = &mut reader;
        let public = X25519PreKey::decode_from(r)?;
        let secret = X25519Secret::from_bytes(&Zeroizing::new(r.array()?));
        if secret.public() != public.public {
            return Err(DecodeError::Invalid { field: "prekey secret" });
        }
        reader.finish()?;
        Ok(Self { public, secret })
    }
}

impl Fields for KemPreKeySecret {
    const TYPE: u8 = 5;
    fn fields_len(&self) -> usize {
        KemPreKey::ENCODED_LEN + KEM_SEED_LEN
    }
    fn encode_fields(&self, out: &mut Vec<u8>) {
        self.public.encode_into(out);
        out.put(self.secret.seed());
    }
    fn decode_fields(_: u16, bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let r = &mut reader;
        let public = KemPreKey::decode_from(r)?;
        let secret = KemSecret::from_seed(&Zeroizing::new(r.array()?));
        if secret.public() != &public.public {
            return Err(DecodeError::Invalid {
                field: "ML-KEM prekey secret",
            });
        }
        reader.finish()?;
        Ok(Self { public, secret })
    }
}
