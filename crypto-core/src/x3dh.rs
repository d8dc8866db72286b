//! X3DH with the PQXDH extension (docs/protocol.md §5).
//!
//! ```text
//! DH1 = X25519(IK_A, SPK_B)   DH2 = X25519(EK_A, IK_B)   DH3 = X25519(EK_A, SPK_B)
//! DH4 = X25519(EK_A, OPK_B)   only with a one-time prekey
//! (CT, SS) = ML-KEM-768.Encaps(PQPK_B)
//! TH  = SHA-256(session_ad ‖ SPK_B ‖ [OPK_B] ‖ PQPK_B ‖ prefix)     prefix: the pre-key message fields
//! RK ‖ CK = HKDF-SHA256(salt = 0^32, ikm = DH1 ‖ DH2 ‖ DH3 ‖ [DH4] ‖ SS,
//!                       info = "Sotto-v1 PQXDH" ‖ TH)                 64 bytes
//! ```
//! Every prekey signature is verified, and the bundle's device must be in the
//! responder's verified device list, before any DH or encapsulation.

use std::fmt;

use rand_core::CryptoRngCore;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::codec::{DecodeError, Put, Reader};
use crate::device_list::DeviceList;
use crate::identity::{
    Device, DeviceIdentity, KemPreKey, KemPreKeySecret, PreKeyKind, X25519PreKey, X25519PreKeySecret,
};
use crate::kdf::{hkdf, info, sha256};
use crate::keys::{KEM_CIPHERTEXT_LEN, KeyError, X25519PublicKey, X25519Secret};
use crate::ratchet::{self, DecryptError, Session, split64};

const VERSION: u8 = 1;
/// Largest pre-key message prefix (everything before the ratchet message).
pub const PREKEY_PREFIX_LEN: usize = 1 + DeviceIdentity::ENCODED_LEN + 4 + 1 + 4 + 1 + 4 + 32 + KEM_CIPHERTEXT_LEN;

/// Why a session could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum X3dhError {
    /// The device is not in the account's verified device list (with these keys).
    #[error("device is not in the verified device list")]
    UnknownDevice,
    /// A prekey has the wrong kind for its slot.
    #[error("prekey of the wrong kind in the {slot} slot")]
    WrongPreKeyKind {
        /// Which slot.
        slot: &'static str,
    },
    /// A prekey signature does not verify with the device's signing key.
    #[error("{which} signature does not verify")]
    BadSignature {
        /// Which prekey.
        which: &'static str,
    },
    /// A DH produced the all-zero output.
    #[error("non-contributory X25519 key")]
    NonContributory,
    /// The secret prekeys given do not match the ids the message names.
    #[error("the prekeys supplied are not the ones the message names")]
    PreKeyMismatch,
    /// The wrapped first message did not decrypt.
    #[error("first message: {0}")]
    Decrypt(#[from] DecryptError),
}

impl From<KeyError> for X3dhError {
    fn from(_: KeyError) -> Self {
        X3dhError::NonContributory
    }
}

/// A responder device's prekey bundle, as the relay serves it.
///
/// ```text
/// 0x01 ‖ identity (account_id ‖ device_id ‖ DSK ‖ IK) ‖ SPK record (101)
///      ‖ opk_flag (u8) ‖ [OPK record (101)] ‖ ML-KEM record (1253)
/// record = kind ‖ id (u32) ‖ public key ‖ signature (64)
/// ```
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PreKeyBundle {
    /// The device the bundle belongs to.
    pub identity: DeviceIdentity,
    /// Its signed prekey.
    pub signed_prekey: X25519PreKey,
    /// A one-time prekey, while any are left.
    pub one_time_prekey: Option<X25519PreKey>,
    /// A one-time ML-KEM prekey, or the last-resort one.
    pub kem_prekey: KemPreKey,
}

impl PreKeyBundle {
    /// Largest encoding.
    pub const MAX_LEN: usize =
        1 + DeviceIdentity::ENCODED_LEN + X25519PreKey::ENCODED_LEN * 2 + 1 + KemPreKey::ENCODED_LEN;

    /// Encodes the bundle.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::MAX_LEN);
        out.put_u8(VERSION);
        self.identity.encode_into(&mut out);
        self.signed_prekey.encode_into(&mut out);
        match &self.one_time_prekey {
            Some(k) => {
                out.put_u8(1);
                k.encode_into(&mut out);
            }
            None => out.put_u8(0),
        }
        self.kem_prekey.encode_into(&mut out);
        out
    }

    /// Decodes a bundle; signatures are checked by [`initiate`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.version(VERSION)?;
        let identity = DeviceIdentity::decode_from(&mut r)?;
        let signed_prekey = X25519PreKey::decode_from(&mut r)?;
        let one_time_prekey = match r.u8()? {
            0 => None,
            1 => Some(X25519PreKey::decode_from(&mut r)?),
            _ => {
                return Err(DecodeError::Invalid {
                    field: "one-time prekey flag",
                });
            }
        };
        let kem_prekey = KemPreKey::decode_from(&mut r)?;
        r.finish()?;
        Ok(Self {
            identity,
            signed_prekey,
            one_time_prekey,
            kem_prekey,
        })
    }

    /// Checks the slots' kinds and every signature against the bundle's DSK.
    pub fn verify(&self) -> Result<(), X3dhError> {
        let dev = self.identity.device_id;
        let dsk = &self.identity.signing_key;
        if self.signed_prekey.kind != PreKeyKind::Signed {
            return Err(X3dhError::WrongPreKeyKind { slot: "signed prekey" });
        }
        if !self.kem_prekey.kind.is_kem() {
            return Err(X3dhError::WrongPreKeyKind { slot: "ML-KEM prekey" });
        }
        self.signed_prekey
            .verify(dev, dsk)
            .map_err(|_| X3dhError::BadSignature { which: "signed prekey" })?;
        if let Some(opk) = &self.one_time_prekey {
            if opk.kind != PreKeyKind::OneTime {
                return Err(X3dhError::WrongPreKeyKind {
                    slot: "one-time prekey",
                });
            }
            opk.verify(dev, dsk).map_err(|_| X3dhError::BadSignature {
                which: "one-time prekey",
            })?;
        }
        self.kem_prekey
            .verify(dev, dsk)
            .map_err(|_| X3dhError::BadSignature { which: "ML-KEM prekey" })?;
        Ok(())
    }
}

/// A session-initiating message: the PQXDH fields and the first ratchet message.
///
/// ```text
/// 0x01 ‖ initiator identity (100) ‖ spk_id (u32) ‖ opk_flag (u8) ‖ [opk_id (u32)]
///      ‖ kem_kind (u8) ‖ kem_id (u32) ‖ EK_A (32) ‖ CT (1088) ‖ ratchet message
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct PreKeyMessage<'a> {
    /// The initiating device.
    pub initiator: DeviceIdentity,
    /// Which signed prekey of the responder was used.
    pub signed_prekey_id: u32,
    /// Which one-time prekey, if any.
    pub one_time_prekey_id: Option<u32>,
    /// Which ML-KEM prekey (kind and id).
    pub kem_prekey: (PreKeyKind, u32),
    /// The initiator's ephemeral key `EK_A`, also the session's base key.
    pub base_key: X25519PublicKey,
    /// The ML-KEM ciphertext.
    pub kem_ciphertext: &'a [u8; KEM_CIPHERTEXT_LEN],
    /// Everything before the ratchet message.
    pub prefix: &'a [u8],
    /// The wrapped Double Ratchet message.
    pub message: &'a [u8],
}

impl fmt::Debug for PreKeyMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreKeyMessage")
            .field("initiator", &self.initiator)
            .field("signed_prekey_id", &self.signed_prekey_id)
            .field("one_time_prekey_id", &self.one_time_prekey_id)
            .field("kem_prekey", &self.kem_prekey)
            .field("base_key", &self.base_key)
            .finish_non_exhaustive()
    }
}

impl<'a> PreKeyMessage<'a> {
    /// Decodes the message; nothing is verified until [`respond`].
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.version(VERSION)?;
        let initiator = DeviceIdentity::decode_from(&mut r)?;
        let signed_prekey_id = r.u32()?;
        let one_time_prekey_id = match r.u8()? {
            0 => None,
            1 => Some(r.u32()?),
            _ => {
                return Err(DecodeError::Invalid {
                    field: "one-time prekey flag",
                });
            }
        };
        let kind = match r.u8()? {
            3 => PreKeyKind::KemOneTime,
            4 => PreKeyKind::KemLastResort,
            value => {
                return Err(DecodeError::UnknownType {
                    field: "ML-KEM prekey kind",
                    value,
                });
            }
        };
        let kem_prekey = (kind, r.u32()?);
        let base_key = X25519PublicKey(r.array()?);
        let ct = r.bytes(KEM_CIPHERTEXT_LEN)?;
        let kem_ciphertext: &[u8; KEM_CIPHERTEXT_LEN] = ct.try_into().map_err(|_| DecodeError::Invalid {
            field: "ML-KEM ciphertext",
        })?;
        let prefix_len = bytes.len() - r.remaining();
        let message = r.rest();
        ratchet::Header::parse(message)?;
        Ok(Self {
            initiator,
            signed_prekey_id,
            one_time_prekey_id,
            kem_prekey,
            base_key,
            kem_ciphertext,
            prefix: bytes.get(..prefix_len).unwrap_or_default(),
            message,
        })
    }
}

/// Which of the responder's prekeys a new session consumed: the one-time ones are to be
/// deleted now that the first message authenticated.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct UsedPreKeys {
    /// The signed prekey id.
    pub signed_prekey_id: u32,
    /// The one-time prekey id, to delete.
    pub one_time_prekey_id: Option<u32>,
    /// The ML-KEM prekey: delete it when its kind is one-time.
    pub kem_prekey: (PreKeyKind, u32),
}

fn transcript(
    ad: &[u8; ratchet::AD_LEN],
    spk: &X25519PublicKey,
    opk: Option<&X25519PublicKey>,
    kem_pub: &[u8],
    prefix: &[u8],
) -> [u8; 32] {
    let opk = opk.map(|k| k.as_bytes().as_slice()).unwrap_or_default();
    sha256(&[ad, spk.as_bytes(), opk, kem_pub, prefix])
}

fn derive(dhs: &[&[u8; 32]], ss: &[u8; 32], th: &[u8; 32]) -> (ratchet::Key32, ratchet::Key32) {
    let mut ikm = Zeroizing::new(Vec::with_capacity(32 * 5));
    for dh in dhs {
        ikm.extend_from_slice(&dh[..]);
    }
    ikm.extend_from_slice(ss);
    let okm = hkdf::<64>(&[0u8; 32], &ikm, &[info::PQXDH, th]);
    split64(&okm)
}

/// Starts a session with the device whose bundle this is. The device must be listed,
/// with the bundle's keys, in `their_devices` (a verified list).
///
/// Draws, in order: `EK_A` (32 bytes), the ML-KEM encapsulation randomness `m`
/// (32 bytes), the first ratchet scalar (32 bytes).
pub fn initiate(
    local: &Device,
    their_devices: &DeviceList,
    bundle: &PreKeyBundle,
    rng: &mut impl CryptoRngCore,
) -> Result<Session, X3dhError> {
    if !their_devices.contains(&bundle.identity) {
        return Err(X3dhError::UnknownDevice);
    }
    bundle.verify()?;
    let ek = X25519Secret::generate(rng);
    let ik_b = &bundle.identity.identity_key;
    let spk = &bundle.signed_prekey.public;
    let dh1 = local.ik.dh(spk)?;
    let dh2 = ek.dh(ik_b)?;
    let dh3 = ek.dh(spk)?;
    let dh4 = match &bundle.one_time_prekey {
        Some(opk) => Some(ek.dh(&opk.public)?),
        None => None,
    };
    // The encapsulation randomness is as secret as the shared secret it determines.
    let mut m = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(m.as_mut_slice());
    let (ct, ss) = bundle.kem_prekey.public.encapsulate(&m);
    drop(m);

    let me = local.identity();
    let mut prefix = Vec::with_capacity(PREKEY_PREFIX_LEN);
    prefix.put_u8(VERSION);
    me.encode_into(&mut prefix);
    prefix.put_u32(bundle.signed_prekey.id);
    match &bundle.one_time_prekey {
        Some(k) => {
            prefix.put_u8(1);
            prefix.put_u32(k.id);
        }
        None => prefix.put_u8(0),
    }
    prefix.put_u8(bundle.kem_prekey.kind as u8);
    prefix.put_u32(bundle.kem_prekey.id);
    prefix.put(ek.public().as_bytes());
    prefix.put(&ct[..]);

    let ad = ratchet::session_ad(&me, &bundle.identity);
    let th = transcript(
        &ad,
        spk,
        bundle.one_time_prekey.as_ref().map(|k| &k.public),
        bundle.kem_prekey.public.as_bytes(),
        &prefix,
    );
    let (root, chain_key) = match &dh4 {
        Some(dh4) => derive(&[&dh1, &dh2, &dh3, dh4], &ss, &th),
        None => derive(&[&dh1, &dh2, &dh3], &ss, &th),
    };
    let ratchet_key = X25519Secret::generate(rng);
    Ok(Session::new_initiator(
        me,
        bundle.identity,
        ek.public(),
        root,
        chain_key,
        ratchet_key,
        prefix,
    ))
}

/// A session created from a pre-key message, with the first plaintext.
pub struct Responded {
    /// The new session.
    pub session: Session,
    /// The first message's plaintext.
    pub plaintext: Vec<u8>,
    /// The prekeys it consumed.
    pub used: UsedPreKeys,
}

impl fmt::Debug for Responded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responded")
            .field("session", &self.session)
            .field("plaintext_len", &self.plaintext.len())
            .field("used", &self.used)
            .finish_non_exhaustive()
    }
}

/// Creates the responder's session from a pre-key message and decrypts its message.
/// The initiator must be listed in `their_devices` (a verified list); the secret
/// prekeys must be the ones the message names. Nothing is returned, and nothing is to be
/// deleted, unless the first message authenticates.
pub fn respond(
    local: &Device,
    their_devices: &DeviceList,
    message: &PreKeyMessage<'_>,
    signed_prekey: &X25519PreKeySecret,
    one_time_prekey: Option<&X25519PreKeySecret>,
    kem_prekey: &KemPreKeySecret,
) -> Result<Responded, X3dhError> {
    if !their_devices.contains(&message.initiator) {
        return Err(X3dhError::UnknownDevice);
    }
    let spk_ok = signed_prekey.public.kind == PreKeyKind::Signed && signed_prekey.public.id == message.signed_prekey_id;
    let opk_ok = match (one_time_prekey, message.one_time_prekey_id) {
        (Some(k), Some(id)) => k.public.kind == PreKeyKind::OneTime && k.public.id == id,
        (None, None) => true,
        _ => false,
    };
    let kem_ok = (kem_prekey.public.kind, kem_prekey.public.id) == message.kem_prekey;
    if !(spk_ok && opk_ok && kem_ok) {
        return Err(X3dhError::PreKeyMismatch);
    }
    let ek = &message.base_key;
    let dh1 = signed_prekey.secret.dh(&message.initiator.identity_key)?;
    let dh2 = local.ik.dh(ek)?;
    let dh3 = signed_prekey.secret.dh(ek)?;
    let dh4 = match one_time_prekey {
        Some(k) => Some(k.secret.dh(ek)?),
        None => None,
    };
    let ss = kem_prekey.secret.decapsulate(message.kem_ciphertext);
    let me = local.identity();
    let ad = ratchet::session_ad(&message.initiator, &me);
    let th = transcript(
        &ad,
        &signed_prekey.public.public,
        one_time_prekey.map(|k| &k.public.public),
        kem_prekey.public.public.as_bytes(),
        message.prefix,
    );
    let (root, chain_key) = match &dh4 {
        Some(dh4) => derive(&[&dh1, &dh2, &dh3, dh4], &ss, &th),
        None => derive(&[&dh1, &dh2, &dh3], &ss, &th),
    };
    let (header, _) = ratchet::Header::parse(message.message).map_err(DecryptError::from)?;
    // Bob's first DH ratchet step uses this key; refuse it now rather than at every encrypt.
    if header.ratchet_key.has_small_order() {
        return Err(X3dhError::NonContributory);
    }
    let mut session = Session::new_responder(
        me,
        message.initiator,
        *ek,
        root,
        chain_key,
        header.ratchet_key,
        message.prefix,
    );
    let plaintext = session.decrypt_ratchet(message.message)?;
    Ok(Responded {
        session,
        plaintext,
        used: UsedPreKeys {
            signed_prekey_id: message.signed_prekey_id,
            one_time_prekey_id: message.one_time_prekey_id,
            kem_prekey: message.kem_prekey,
        },
    })
}
