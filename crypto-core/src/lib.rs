#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod attachment;
pub mod codec;
pub mod device_list;
pub mod group_seal;
pub mod identity;
mod kdf;
pub mod keys;
pub mod padding;
pub mod pickle;
pub mod profile;
pub mod ratchet;
pub mod safety;
pub mod sealed;
pub mod sender_key;
pub mod token;
pub mod x3dh;

#[cfg(test)]
mod tests;
#[cfg(test)]
#[path = "tests/vectors.rs"]
mod vectors;
#[cfg(test)]
#[path = "tests/vectors_more.rs"]
mod vectors_more;

pub use attachment::{
    AttachmentError, AttachmentKey, Decryptor as AttachmentDecryptor, Encryptor as AttachmentEncryptor,
};
pub use codec::DecodeError;
pub use device_list::{
    DeviceEntry, DeviceList, DeviceListChange, DeviceListError, ListKey, MAX_EPOCH_VERSION_STEP, MAX_VERSION,
    MAX_VERSION_STEP, SignedDeviceList,
};
pub use group_seal::{GroupOpened, GroupSealKey, is_group_envelope};
pub use identity::{
    AccountId, AccountKey, Device, DeviceId, DeviceIdentity, KemPreKey, KemPreKeySecret, PreKeyKind, X25519PreKey,
    X25519PreKeySecret, relay_auth_message,
};
pub use keys::{Ed25519PublicKey, KemPublicKey, KeyError, Signature, X25519PublicKey};
pub use pickle::{Pickle, PickleError, PickleKey};
pub use profile::{ProfileError, ProfileKey};
pub use ratchet::{DecryptError, EncryptError, MessageType, OutboundMessage, Session};
pub use safety::SafetyNumber;
pub use sealed::{MultiSealed, OpenError, Opened, SealError, open, seal, seal_multi};
pub use sender_key::{SenderKey, SenderKeyDistribution, SenderKeyError, SenderKeyReceiver};
pub use token::{IssuerKey, TokenError, TokenRequest};
pub use x3dh::{PreKeyBundle, PreKeyMessage, Responded, UsedPreKeys, X3dhError, initiate, respond};
