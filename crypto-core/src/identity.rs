//! Accounts, devices and prekeys (docs/protocol.md §3).
//!
//! ```text
//! account id  = SHA-256("Sotto-v1 account id" ‖ AK_pub)                       32 bytes
//! prekey sig  = Ed25519_DSK("Sotto-v1 prekey" ‖ kind ‖ device_id ‖ key_id ‖ public_key)
//!               kind: 1 signed X25519, 2 one-time X25519, 3 one-time ML-KEM, 4 last-resort ML-KEM
//! ```

use std::fmt;
use std::str::FromStr;

use rand_core::CryptoRngCore;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::codec::{DecodeError, Put, Reader};
use crate::kdf::{info, sha256};
use crate::keys::{
    Ed25519PublicKey, Ed25519Secret, KEM_PUBLIC_KEY_LEN, KemPublicKey, KemSecret, KeyError, Signature, X25519PublicKey,
    X25519Secret, ct_eq,
};

/// A self-certifying account id: SHA-256 over a label and the account's public key.
/// Shown to people as 52 lowercase base32 characters (RFC 4648 alphabet, no padding).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(pub [u8; 32]);

impl AccountId {
    /// The id of the account whose key is `account_key`.
    pub fn from_account_key(account_key: &Ed25519PublicKey) -> Self {
        Self(sha256(&[info::ACCOUNT_ID, account_key.as_bytes()]))
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Constant-time comparison.
    pub fn ct_eq(&self, other: &AccountId) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut acc: u32 = 0;
        let mut bits = 0;
        for &b in &self.0 {
            acc = (acc << 8) | u32::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                f.write_str(char_at(acc >> bits))?;
            }
        }
        if bits > 0 {
            f.write_str(char_at(acc << (5 - bits)))?;
        }
        Ok(())
    }
}

fn char_at(v: u32) -> &'static str {
    const S: &str = "abcdefghijklmnopqrstuvwxyz234567";
    let i = (v & 31) as usize;
    S.get(i..i + 1).unwrap_or("?")
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.to_string();
        write!(f, "AccountId({}…)", s.get(..10).unwrap_or(&s))
    }
}

/// An account id string that is not 52 base32 characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("not an account id: expected 52 base32 characters")]
pub struct ParseAccountIdError;

impl FromStr for AccountId {
    type Err = ParseAccountIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 52 {
            return Err(ParseAccountIdError);
        }
        let mut out = [0u8; 32];
        let mut acc: u64 = 0;
        let mut bits = 0;
        let mut i = 0;
        for c in s.bytes() {
            let c = c.to_ascii_lowercase();
            let v = BASE32.iter().position(|&x| x == c).ok_or(ParseAccountIdError)? as u64;
            acc = (acc << 5) | v;
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                if i < 32 {
                    out[i] = (acc >> bits) as u8;
                }
                i += 1;
            }
        }
        // 52 * 5 = 260 bits: 32 bytes and 4 padding bits, which must be zero.
        if i != 32 || acc & ((1 << bits) - 1) != 0 {
            return Err(ParseAccountIdError);
        }
        Ok(Self(out))
    }
}

/// A device number within an account.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct DeviceId(pub u32);

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The account key `AK` (Ed25519). It certifies the list key of each epoch
/// ([`AccountKey::list_key`]), which signs the device lists, and signs nothing else.
pub struct AccountKey {
    secret: Ed25519Secret,
    id: AccountId,
}

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl AccountKey {
    /// A fresh account key: draws 32 bytes (the Ed25519 seed) from `rng`.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self::from_secret(Ed25519Secret::generate(rng))
    }

    /// The account key whose Ed25519 seed is `seed` (a recovery key).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self::from_secret(Ed25519Secret::from_seed(seed))
    }

    /// The 32-byte Ed25519 seed: whoever holds it controls the account (certifies the
    /// list keys that sign its device lists). Only for a recovery key the user stores
    /// offline; never log or store it in clear.
    pub fn dangerous_export_seed(&self) -> Zeroizing<[u8; 32]> {
        self.secret.seed()
    }

    pub(crate) fn from_secret(secret: Ed25519Secret) -> Self {
        let id = AccountId::from_account_key(&secret.public());
        Self { secret, id }
    }

    /// The public account key.
    pub fn public_key(&self) -> Ed25519PublicKey {
        self.secret.public()
    }

    /// The account id.
    pub fn account_id(&self) -> AccountId {
        self.id
    }

    pub(crate) fn secret(&self) -> &Ed25519Secret {
        &self.secret
    }
}

/// The public identity of one device: what a device list entry and a sealed sender
/// block carry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct DeviceIdentity {
    /// The account the device belongs to.
    pub account_id: AccountId,
    /// The device number.
    pub device_id: DeviceId,
    /// The device signing key `DSK`.
    pub signing_key: Ed25519PublicKey,
    /// The device identity key `IK`.
    pub identity_key: X25519PublicKey,
}

impl DeviceIdentity {
    /// Encoded length: account id, device id, DSK, IK.
    pub const ENCODED_LEN: usize = 32 + 4 + 32 + 32;

    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        out.put(self.account_id.as_bytes());
        out.put_u32(self.device_id.0);
        out.put(self.signing_key.as_bytes());
        out.put(self.identity_key.as_bytes());
    }

    pub(crate) fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let account_id = AccountId(r.array()?);
        let device_id = DeviceId(r.u32()?);
        let signing_key = Ed25519PublicKey::from_bytes(&r.array()?).map_err(|_| DecodeError::Invalid {
            field: "device signing key",
        })?;
        let identity_key = X25519PublicKey(r.array()?);
        Ok(Self {
            account_id,
            device_id,
            signing_key,
            identity_key,
        })
    }

    /// Constant-time comparison of every field.
    pub fn ct_eq(&self, other: &DeviceIdentity) -> bool {
        let mut a = Vec::with_capacity(Self::ENCODED_LEN);
        let mut b = Vec::with_capacity(Self::ENCODED_LEN);
        self.encode_into(&mut a);
        other.encode_into(&mut b);
        ct_eq(&a, &b)
    }
}

/// This device's secret keys: the device signing key `DSK` (Ed25519) and the device
/// identity key `IK` (X25519), with the account and device id they belong to.
pub struct Device {
    pub(crate) account_id: AccountId,
    pub(crate) device_id: DeviceId,
    pub(crate) dsk: Ed25519Secret,
    pub(crate) ik: X25519Secret,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("account_id", &self.account_id)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// Fresh device keys. Draws, in order: the DSK seed (32 bytes), the IK scalar (32 bytes).
    pub fn generate(account_id: AccountId, device_id: DeviceId, rng: &mut impl CryptoRngCore) -> Self {
        let dsk = Ed25519Secret::generate(rng);
        let ik = X25519Secret::generate(rng);
        Self {
            account_id,
            device_id,
            dsk,
            ik,
        }
    }

    /// The public identity of this device.
    pub fn identity(&self) -> DeviceIdentity {
        DeviceIdentity {
            account_id: self.account_id,
            device_id: self.device_id,
            signing_key: self.dsk.public(),
            identity_key: self.ik.public(),
        }
    }

    /// This device's entry for a device list, with its binding: the device's DSK signs
    /// its keys to its account (docs/protocol.md §4.1), once for every list version.
    pub fn entry(&self) -> crate::DeviceEntry {
        let (signing_key, identity_key) = (self.dsk.public(), self.ik.public());
        let binding = self.dsk.sign_parts(&crate::device_list::binding_parts(
            &self.account_id,
            self.device_id,
            &signing_key,
            &identity_key,
            &mut [0u8; 4],
        ));
        crate::DeviceEntry {
            device_id: self.device_id,
            signing_key,
            identity_key,
            binding,
        }
    }

    /// A signed X25519 prekey (`kind` 1). Draws the 32-byte scalar.
    pub fn generate_signed_prekey(&self, id: u32, rng: &mut impl CryptoRngCore) -> X25519PreKeySecret {
        self.x25519_prekey(PreKeyKind::Signed, id, rng)
    }

    /// `count` one-time X25519 prekeys (`kind` 2) with ids `first_id..`. Draws one
    /// 32-byte scalar each, in id order.
    pub fn generate_one_time_prekeys(
        &self,
        first_id: u32,
        count: u32,
        rng: &mut impl CryptoRngCore,
    ) -> Vec<X25519PreKeySecret> {
        (0..count)
            .map(|i| self.x25519_prekey(PreKeyKind::OneTime, first_id.wrapping_add(i), rng))
            .collect()
    }

    /// An ML-KEM-768 prekey (`kind` 3 one-time or 4 last-resort). Draws the 64-byte seed.
    pub fn generate_kem_prekey(&self, id: u32, last_resort: bool, rng: &mut impl CryptoRngCore) -> KemPreKeySecret {
        let kind = if last_resort {
            PreKeyKind::KemLastResort
        } else {
            PreKeyKind::KemOneTime
        };
        let secret = KemSecret::generate(rng);
        let signature = sign_prekey(&self.dsk, kind, self.device_id, id, secret.public().as_bytes());
        KemPreKeySecret {
            public: KemPreKey {
                kind,
                id,
                public: secret.public().clone(),
                signature,
            },
            secret,
        }
    }

    fn x25519_prekey(&self, kind: PreKeyKind, id: u32, rng: &mut impl CryptoRngCore) -> X25519PreKeySecret {
        let secret = X25519Secret::generate(rng);
        let signature = sign_prekey(&self.dsk, kind, self.device_id, id, secret.public().as_bytes());
        X25519PreKeySecret {
            public: X25519PreKey {
                kind,
                id,
                public: secret.public(),
                signature,
            },
            secret,
        }
    }

    /// Answers a relay's authentication challenge: a DSK signature over
    /// [`relay_auth_message`] for this device.
    pub fn sign_relay_auth(&self, relay_id: &[u8; 32], nonce: &[u8; 32], timestamp_ms: u64) -> Signature {
        let msg = relay_auth_message(relay_id, nonce, timestamp_ms, &self.account_id, self.device_id);
        self.dsk.sign_parts(&[&msg])
    }

    /// The account this device belongs to.
    pub fn account_id(&self) -> AccountId {
        self.account_id
    }

    /// This device's number.
    pub fn device_id(&self) -> DeviceId {
        self.device_id
    }
}

/// The bytes a device signs to authenticate to a relay (docs/protocol.md §13):
/// `"Sotto-v1 relay auth" ‖ relay_id ‖ nonce ‖ timestamp_ms (u64) ‖ account_id ‖ device_id (u32)`.
pub fn relay_auth_message(
    relay_id: &[u8; 32],
    nonce: &[u8; 32],
    timestamp_ms: u64,
    account_id: &AccountId,
    device_id: DeviceId,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(info::RELAY_AUTH.len() + 32 + 32 + 8 + 32 + 4);
    m.put(info::RELAY_AUTH);
    m.put(relay_id);
    m.put(nonce);
    m.put_u64(timestamp_ms);
    m.put(account_id.as_bytes());
    m.put_u32(device_id.0);
    m
}

fn sign_prekey(dsk: &Ed25519Secret, kind: PreKeyKind, device: DeviceId, id: u32, public: &[u8]) -> Signature {
    dsk.sign_parts(&[
        info::PREKEY,
        &[kind as u8],
        &device.0.to_be_bytes(),
        &id.to_be_bytes(),
        public,
    ])
}

fn verify_prekey(
    dsk: &Ed25519PublicKey,
    kind: PreKeyKind,
    device: DeviceId,
    id: u32,
    public: &[u8],
    sig: &Signature,
) -> Result<(), KeyError> {
    dsk.verify_parts(
        &[
            info::PREKEY,
            &[kind as u8],
            &device.0.to_be_bytes(),
            &id.to_be_bytes(),
            public,
        ],
        sig,
    )
}

/// What a prekey is for; its byte value is signed with the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum PreKeyKind {
    /// Signed X25519 prekey `SPK` (rotated).
    Signed = 1,
    /// One-time X25519 prekey `OPK`.
    OneTime = 2,
    /// One-time ML-KEM-768 prekey.
    KemOneTime = 3,
    /// Last-resort ML-KEM-768 prekey, served when one-time ones run out.
    KemLastResort = 4,
}

impl PreKeyKind {
    pub(crate) fn from_byte(b: u8) -> Result<Self, DecodeError> {
        Ok(match b {
            1 => Self::Signed,
            2 => Self::OneTime,
            3 => Self::KemOneTime,
            4 => Self::KemLastResort,
            value => {
                return Err(DecodeError::UnknownType {
                    field: "prekey kind",
                    value,
                });
            }
        })
    }

    /// True for the two ML-KEM kinds.
    pub fn is_kem(self) -> bool {
        matches!(self, Self::KemOneTime | Self::KemLastResort)
    }
}

/// A public X25519 prekey (signed or one-time) with its DSK signature.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct X25519PreKey {
    /// [`PreKeyKind::Signed`] or [`PreKeyKind::OneTime`].
    pub kind: PreKeyKind,
    /// The key id, unique per device and kind.
    pub id: u32,
    /// The public key.
    pub public: X25519PublicKey,
    /// `Ed25519_DSK("Sotto-v1 prekey" ‖ kind ‖ device_id ‖ id ‖ public)`.
    pub signature: Signature,
}

impl X25519PreKey {
    /// Encoded length: kind, id, key, signature.
    pub const ENCODED_LEN: usize = 1 + 4 + 32 + 64;

    /// Checks the signature against the device's signing key.
    pub fn verify(&self, device: DeviceId, dsk: &Ed25519PublicKey) -> Result<(), KeyError> {
        verify_prekey(dsk, self.kind, device, self.id, self.public.as_bytes(), &self.signature)
    }

    /// `kind ‖ id ‖ public ‖ signature`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.put_u8(self.kind as u8);
        out.put_u32(self.id);
        out.put(self.public.as_bytes());
        out.put(&self.signature.0);
    }

    /// Decodes one prekey; the kind must be an X25519 kind.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let k = Self::decode_from(&mut r)?;
        r.finish()?;
        Ok(k)
    }

    pub(crate) fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let kind = PreKeyKind::from_byte(r.u8()?)?;
        if kind.is_kem() {
            return Err(DecodeError::UnknownType {
                field: "X25519 prekey kind",
                value: kind as u8,
            });
        }
        Ok(Self {
            kind,
            id: r.u32()?,
            public: X25519PublicKey(r.array()?),
            signature: Signature(r.array()?),
        })
    }
}

/// A public ML-KEM-768 prekey with its DSK signature.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct KemPreKey {
    /// [`PreKeyKind::KemOneTime`] or [`PreKeyKind::KemLastResort`].
    pub kind: PreKeyKind,
    /// The key id, unique per device among ML-KEM prekeys.
    pub id: u32,
    /// The public key.
    pub public: KemPublicKey,
    /// `Ed25519_DSK("Sotto-v1 prekey" ‖ kind ‖ device_id ‖ id ‖ public)`.
    pub signature: Signature,
}

impl KemPreKey {
    /// Encoded length: kind, id, key, signature.
    pub const ENCODED_LEN: usize = 1 + 4 + KEM_PUBLIC_KEY_LEN + 64;

    /// Checks the signature against the device's signing key.
    pub fn verify(&self, device: DeviceId, dsk: &Ed25519PublicKey) -> Result<(), KeyError> {
        verify_prekey(dsk, self.kind, device, self.id, self.public.as_bytes(), &self.signature)
    }

    /// `kind ‖ id ‖ public ‖ signature`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.put_u8(self.kind as u8);
        out.put_u32(self.id);
        out.put(self.public.as_bytes());
        out.put(&self.signature.0);
    }

    /// Decodes one prekey; the kind must be an ML-KEM kind and the key must pass the
    /// FIPS 203 modulus check.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let k = Self::decode_from(&mut r)?;
        r.finish()?;
        Ok(k)
    }

    pub(crate) fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let kind = PreKeyKind::from_byte(r.u8()?)?;
        if !kind.is_kem() {
            return Err(DecodeError::UnknownType {
                field: "ML-KEM prekey kind",
                value: kind as u8,
            });
        }
        let id = r.u32()?;
        let public = KemPublicKey::from_bytes(r.bytes(KEM_PUBLIC_KEY_LEN)?).map_err(|_| DecodeError::Invalid {
            field: "ML-KEM public key",
        })?;
        Ok(Self {
            kind,
            id,
            public,
            signature: Signature(r.array()?),
        })
    }
}

/// The secret half of an X25519 prekey, with its public record.
pub struct X25519PreKeySecret {
    pub(crate) public: X25519PreKey,
    pub(crate) secret: X25519Secret,
}

impl X25519PreKeySecret {
    /// The public record to upload.
    pub fn public(&self) -> &X25519PreKey {
        &self.public
    }
}

impl fmt::Debug for X25519PreKeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X25519PreKeySecret")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// The secret half of an ML-KEM prekey, with its public record.
pub struct KemPreKeySecret {
    pub(crate) public: KemPreKey,
    pub(crate) secret: KemSecret,
}

impl KemPreKeySecret {
    /// The public record to upload.
    pub fn public(&self) -> &KemPreKey {
        &self.public
    }
}

impl fmt::Debug for KemPreKeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KemPreKeySecret")
            .field("kind", &self.public.kind)
            .field("id", &self.public.id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn account_key_seed_round_trips() {
        let mut rng = ChaCha20Rng::seed_from_u64(12); // test only
        let ak = AccountKey::generate(&mut rng);
        let seed = ak.dangerous_export_seed();
        let back = AccountKey::from_seed(&seed);
        assert_eq!(back.account_id(), ak.account_id());
        assert_eq!(back.public_key(), ak.public_key());
        assert_ne!(AccountKey::from_seed(&[0; 32]).account_id(), ak.account_id());
    }

    #[test]
    fn account_id_string_round_trip() {
        let mut rng = ChaCha20Rng::seed_from_u64(3); // test only
        let ak = AccountKey::generate(&mut rng);
        let s = ak.account_id().to_string();
        assert_eq!(s.len(), 52);
        assert_eq!(s.parse::<AccountId>(), Ok(ak.account_id()));
        assert_eq!(s.to_uppercase().parse::<AccountId>(), Ok(ak.account_id()));
        assert!("abc".parse::<AccountId>().is_err());
        let mut bad = s.clone();
        bad.replace_range(51.., "7"); // the last character's 4 padding bits set
        assert_eq!(bad.parse::<AccountId>(), Err(ParseAccountIdError));
        let mut bad = s.clone();
        bad.replace_range(0..1, "1"); // not in the alphabet
        assert_eq!(bad.parse::<AccountId>(), Err(ParseAccountIdError));
    }

    #[test]
    fn prekey_signatures_bind_kind_device_and_id() {
        let mut rng = ChaCha20Rng::seed_from_u64(4); // test only
        let ak = AccountKey::generate(&mut rng);
        let d = Device::generate(ak.account_id(), DeviceId(1), &mut rng);
        let dsk = d.identity().signing_key;
        let spk = d.generate_signed_prekey(7, &mut rng);
        spk.public().verify(DeviceId(1), &dsk).unwrap();
        assert!(spk.public().verify(DeviceId(2), &dsk).is_err());
        let mut other = spk.public().clone();
        other.kind = PreKeyKind::OneTime;
        assert!(other.verify(DeviceId(1), &dsk).is_err());
        other = spk.public().clone();
        other.id = 8;
        assert!(other.verify(DeviceId(1), &dsk).is_err());
        let kem = d.generate_kem_prekey(1, true, &mut rng);
        kem.public().verify(DeviceId(1), &dsk).unwrap();
        let sig = d.sign_relay_auth(&[1; 32], &[2; 32], 3);
        let msg = relay_auth_message(&[1; 32], &[2; 32], 3, &d.account_id(), DeviceId(1));
        dsk.verify(&msg, &sig).unwrap();
        assert!(
            dsk.verify(
                &relay_auth_message(&[1; 32], &[2; 32], 4, &d.account_id(), DeviceId(1)),
                &sig
            )
            .is_err()
        );
        let mut enc = Vec::new();
        kem.public().encode_into(&mut enc);
        assert_eq!(enc.len(), KemPreKey::ENCODED_LEN);
        assert_eq!(&KemPreKey::decode(&enc).unwrap(), kem.public());
    }

    #[test]
    fn secrets_are_not_printed() {
        let mut rng = ChaCha20Rng::seed_from_u64(5); // test only
        let ak = AccountKey::generate(&mut rng);
        let d = Device::generate(ak.account_id(), DeviceId(3), &mut rng);
        let s = format!("{d:?} {ak:?}");
        assert!(s.starts_with("Device { account_id: AccountId("), "{s}");
        assert!(s.ends_with(".. }"), "{s}");
        let seed = hex_of(&*d.dsk.seed());
        assert!(!s.contains(&seed[..16]));
    }

    fn hex_of(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
