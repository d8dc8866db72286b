//! Key types. Public keys are plain values (`Copy`, comparable, printable as a short
//! hex prefix). Secret keys are neither `Copy`, `Clone`-by-accident, `Debug` nor
//! `Display`; they zeroize on drop and expose raw bytes only as `Zeroizing`.
//!
//! Encodings (docs/protocol.md §1): X25519 and Ed25519 public keys are their raw 32
//! bytes everywhere (signatures, associated data, headers, the wire), with no type
//! byte. ML-KEM-768 public keys and ciphertexts are the FIPS 203 encodings (1184 and
//! 1088 bytes); an ML-KEM private key is stored as its 64-byte seed `d ‖ z`.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use libcrux_ml_kem::mlkem768;
use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;
use thiserror::Error;
use x25519_dalek::StaticSecret;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// ML-KEM-768 public key length (FIPS 203).
pub const KEM_PUBLIC_KEY_LEN: usize = 1184;
/// ML-KEM-768 ciphertext length (FIPS 203).
pub const KEM_CIPHERTEXT_LEN: usize = 1088;
/// ML-KEM-768 key generation seed length (`d ‖ z`).
pub const KEM_SEED_LEN: usize = 64;
/// Ed25519 signature length.
pub const SIGNATURE_LEN: usize = 64;

/// A key or signature that did not check out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The bytes are not a valid Ed25519 public key (not a point, or of small order).
    #[error("invalid Ed25519 public key")]
    InvalidSigningKey,
    /// The bytes are not a valid ML-KEM-768 public key (FIPS 203 modulus check).
    #[error("invalid ML-KEM-768 public key")]
    InvalidKemKey,
    /// An Ed25519 signature did not verify (strict RFC 8032 verification).
    #[error("bad signature")]
    BadSignature,
    /// An X25519 exchange produced the all-zero output: the peer's key has small order.
    #[error("non-contributory X25519 key")]
    NonContributory,
}

fn hex_prefix(f: &mut fmt::Formatter<'_>, name: &str, bytes: &[u8]) -> fmt::Result {
    write!(f, "{name}(")?;
    for b in bytes.iter().take(8) {
        write!(f, "{b:02x}")?;
    }
    write!(f, "…)")
}

/// An X25519 public key: 32 raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct X25519PublicKey(pub [u8; 32]);

/// The X25519 public keys of small order (u = 0, 1, the two points of order 8, p − 1, and
/// the non-canonical p and p + 1), as libsodium lists them. Bit 255 is ignored.
const SMALL_ORDER: [[u8; 32]; 7] = [
    [0; 32],
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ],
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a, 0xda, 0x09,
        0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef, 0x5b, 0x04, 0x44,
        0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f, 0x11, 0x57,
    ],
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
    ],
    [
        0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
    ],
    [
        0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
    ],
];

impl X25519PublicKey {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// True for the keys of small order, with which every X25519 output is all-zero.
    /// A table lookup (bit 255 ignored), so keys can be refused before any DH needs them.
    pub fn has_small_order(&self) -> bool {
        let mut k = self.0;
        k[31] &= 0x7f;
        SMALL_ORDER.iter().fold(false, |acc, bad| acc | ct_eq(&k, bad))
    }
}

impl fmt::Debug for X25519PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex_prefix(f, "X25519PublicKey", &self.0)
    }
}

/// An Ed25519 public key, checked to be a valid point on construction.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ed25519PublicKey(VerifyingKey);

impl Ed25519PublicKey {
    /// Parses 32 raw bytes; rejects encodings that are not a point, are not canonical, or are
    /// of small order.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::InvalidSigningKey)?;
        // Refuse non-canonical encodings (y >= p), which stricter libraries reject too.
        if key.is_weak() || key.to_edwards().compress().as_bytes() != bytes {
            return Err(KeyError::InvalidSigningKey);
        }
        Ok(Self(key))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// Strict RFC 8032 verification (`verify_strict`: canonical `S`, no small-order `R` or `A`).
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), KeyError> {
        let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
        self.0.verify_strict(message, &sig).map_err(|_| KeyError::BadSignature)
    }

    /// Verifies a signature over the concatenation of `parts`.
    pub(crate) fn verify_parts(&self, parts: &[&[u8]], signature: &Signature) -> Result<(), KeyError> {
        self.verify(&parts.concat(), signature)
    }
}

impl fmt::Debug for Ed25519PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex_prefix(f, "Ed25519PublicKey", self.as_bytes())
    }
}

/// An Ed25519 signature: 64 raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; SIGNATURE_LEN]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex_prefix(f, "Signature", &self.0)
    }
}

/// An Ed25519 signing key (the account key or a device signing key).
#[derive(ZeroizeOnDrop)]
pub(crate) struct Ed25519Secret(SigningKey);

impl Ed25519Secret {
    pub(crate) fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self(SigningKey::generate(rng))
    }

    pub(crate) fn from_seed(seed: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(seed))
    }

    pub(crate) fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    pub(crate) fn public(&self) -> Ed25519PublicKey {
        Ed25519PublicKey(self.0.verifying_key())
    }

    pub(crate) fn sign_parts(&self, parts: &[&[u8]]) -> Signature {
        let msg = Zeroizing::new(parts.concat());
        Signature(self.0.sign(&msg).to_bytes())
    }
}

/// An X25519 private key with its public key.
#[derive(ZeroizeOnDrop)]
pub(crate) struct X25519Secret {
    secret: StaticSecret,
    #[zeroize(skip)]
    public: X25519PublicKey,
}

impl Clone for X25519Secret {
    fn clone(&self) -> Self {
        Self {
            secret: self.secret.clone(),
            public: self.public,
        }
    }
}

impl X25519Secret {
    pub(crate) fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(bytes.as_mut_slice());
        Self::from_bytes(&bytes)
    }

    /// From the 32 raw scalar bytes as stored (clamping happens inside X25519).
    pub(crate) fn from_bytes(bytes: &[u8; 32]) -> Self {
        let secret = StaticSecret::from(*bytes);
        let public = X25519PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes());
        Self { secret, public }
    }

    pub(crate) fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    pub(crate) fn public(&self) -> X25519PublicKey {
        self.public
    }

    /// X25519 with the peer's key; the all-zero output (a small-order peer key) is an error.
    pub(crate) fn dh(&self, peer: &X25519PublicKey) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        let shared = self.secret.diffie_hellman(&x25519_dalek::PublicKey::from(peer.0));
        if !shared.was_contributory() {
            return Err(KeyError::NonContributory);
        }
        Ok(Zeroizing::new(shared.to_bytes()))
    }
}

/// An ML-KEM-768 public key (FIPS 203 encoding), validated on construction.
#[derive(Clone, PartialEq, Eq)]
pub struct KemPublicKey(Box<[u8; KEM_PUBLIC_KEY_LEN]>);

impl KemPublicKey {
    /// Parses and validates a FIPS 203 ML-KEM-768 public key (the modulus check of FIPS 203 §7.2).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let arr: [u8; KEM_PUBLIC_KEY_LEN] = bytes.try_into().map_err(|_| KeyError::InvalidKemKey)?;
        let pk = mlkem768::MlKem768PublicKey::from(arr);
        if !mlkem768::validate_public_key(&pk) {
            return Err(KeyError::InvalidKemKey);
        }
        Ok(Self(Box::new(arr)))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; KEM_PUBLIC_KEY_LEN] {
        &self.0
    }

    /// Encapsulates with caller-supplied randomness `m` (FIPS 203 `ML-KEM.Encaps_internal`).
    /// The randomness is taken by reference from a wiped-on-drop buffer, so the caller's
    /// copy is never left on the stack; the by-value copy the ML-KEM crate needs is wiped
    /// here as soon as it returns.
    pub(crate) fn encapsulate(
        &self,
        randomness: &Zeroizing<[u8; 32]>,
    ) -> (Box<[u8; KEM_CIPHERTEXT_LEN]>, Zeroizing<[u8; 32]>) {
        let pk = mlkem768::MlKem768PublicKey::from(&*self.0);
        let mut copy = Zeroizing::new(**randomness);
        let (ct, ss) = mlkem768::encapsulate(&pk, *copy);
        copy.zeroize();
        (Box::new(ct.into()), Zeroizing::new(ss))
    }
}

impl fmt::Debug for KemPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex_prefix(f, "KemPublicKey", self.0.as_slice())
    }
}

/// An ML-KEM-768 key pair. Stored as its 64-byte seed; the expanded private key is
/// kept in memory for decapsulation and wiped on drop.
pub(crate) struct KemSecret {
    seed: Zeroizing<[u8; KEM_SEED_LEN]>,
    private: Box<mlkem768::MlKem768PrivateKey>,
    public: KemPublicKey,
}

impl Drop for KemSecret {
    fn drop(&mut self) {
        self.private[0..].zeroize();
    }
}

impl KemSecret {
    pub(crate) fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut seed = Zeroizing::new([0u8; KEM_SEED_LEN]);
        rng.fill_bytes(seed.as_mut_slice());
        Self::from_seed(&seed)
    }

    pub(crate) fn from_seed(seed: &[u8; KEM_SEED_LEN]) -> Self {
        let pair = mlkem768::generate_key_pair(*seed);
        let (private, public) = pair.into_parts();
        Self {
            seed: Zeroizing::new(*seed),
            private: Box::new(private),
            public: KemPublicKey(Box::new(public.into())),
        }
    }

    pub(crate) fn seed(&self) -> &[u8; KEM_SEED_LEN] {
        &self.seed
    }

    pub(crate) fn public(&self) -> &KemPublicKey {
        &self.public
    }

    /// Decapsulates; FIPS 203 implicit rejection means a bad ciphertext yields a
    /// pseudorandom secret, which then fails the first message's MAC.
    pub(crate) fn decapsulate(&self, ciphertext: &[u8; KEM_CIPHERTEXT_LEN]) -> Zeroizing<[u8; 32]> {
        let ct = mlkem768::MlKem768Ciphertext::from(ciphertext);
        Zeroizing::new(mlkem768::decapsulate(&self.private, &ct))
    }
}

/// Constant-time equality of two byte strings of equal length.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn small_order_x25519_is_rejected() {
        let mut rng = ChaCha20Rng::seed_from_u64(1); // test only
        let s = X25519Secret::generate(&mut rng);
        assert_eq!(s.dh(&X25519PublicKey([0; 32])).err(), Some(KeyError::NonContributory));
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(s.dh(&X25519PublicKey(one)).err(), Some(KeyError::NonContributory));
    }

    #[test]
    fn the_small_order_table_matches_x25519() {
        let mut rng = ChaCha20Rng::seed_from_u64(6); // test only
        let s = X25519Secret::generate(&mut rng);
        for bad in SMALL_ORDER {
            for top in [0u8, 0x80] {
                let mut k = bad;
                k[31] |= top;
                let k = X25519PublicKey(k);
                assert!(k.has_small_order());
                assert_eq!(s.dh(&k).err(), Some(KeyError::NonContributory), "{k:?}");
            }
        }
        for _ in 0..100 {
            let k = X25519Secret::generate(&mut rng).public();
            assert!(!k.has_small_order());
        }
    }

    #[test]
    fn kem_round_trip_and_validation() {
        let mut rng = ChaCha20Rng::seed_from_u64(2); // test only
        let k = KemSecret::generate(&mut rng);
        let pk = KemPublicKey::from_bytes(k.public().as_bytes()).unwrap();
        let (ct, ss) = pk.encapsulate(&Zeroizing::new([7; 32]));
        assert_eq!(*k.decapsulate(&ct), *ss);
        assert_eq!(
            KemPublicKey::from_bytes(&[0xff; KEM_PUBLIC_KEY_LEN]),
            Err(KeyError::InvalidKemKey)
        );
        assert_eq!(KemPublicKey::from_bytes(&[0; 10]), Err(KeyError::InvalidKemKey));
        let again = KemSecret::from_seed(k.seed());
        assert_eq!(again.public(), k.public());
    }

    #[test]
    fn non_canonical_ed25519_keys_are_rejected() {
        // y = p + 2 encodes the same point as y = 2 when y = 2 is on the curve; build
        // one from a real key instead: add p to a small y and keep the sign bit.
        let mut rng = ChaCha20Rng::seed_from_u64(3); // test only
        let real = Ed25519Secret::generate(&mut rng).public();
        assert!(Ed25519PublicKey::from_bytes(real.as_bytes()).is_ok());
        // y = 1 (the identity) written as p + 1: non-canonical and weak.
        let mut p_plus_1 = [0xffu8; 32];
        p_plus_1[0] = 0xee;
        p_plus_1[31] = 0x7f;
        assert!(Ed25519PublicKey::from_bytes(&p_plus_1).is_err());
    }

    #[test]
    fn weak_ed25519_keys_are_rejected() {
        assert!(Ed25519PublicKey::from_bytes(&[0; 32]).is_err());
        let mut id = [0u8; 32];
        id[0] = 1; // the identity point
        assert!(Ed25519PublicKey::from_bytes(&id).is_err());
    }
}
