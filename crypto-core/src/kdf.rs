//! The KDF building blocks: HKDF-SHA256 and HMAC-SHA256, with the info strings of
//! every construction in one place (docs/protocol.md §2 lists them).

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Info strings. Each is ASCII, used as the HKDF `info` (or hash label) exactly as
/// written, with no terminator.
pub(crate) mod info {
    pub(crate) const ACCOUNT_ID: &[u8] = b"Sotto-v1 account id";
    pub(crate) const DEVICE_LIST: &[u8] = b"Sotto-v1 device list";
    pub(crate) const LIST_KEY: &[u8] = b"Sotto-v1 list key";
    pub(crate) const LIST_KEY_SEED: &[u8] = b"Sotto-v1 list key seed";
    pub(crate) const SENDER_KEY_MESSAGE: &[u8] = b"Sotto-v1 sender key message";
    pub(crate) const SENDER_KEY_MESSAGE_KEYS: &[u8] = b"Sotto-v1 sender key message keys";
    pub(crate) const GROUP_SEAL_HINT: &[u8] = b"Sotto-v1 group seal hint";
    pub(crate) const GROUP_SEAL_HEDGE: &[u8] = b"Sotto-v1 group seal hedge";
    pub(crate) const GROUP_SEAL_NONCE: &[u8] = b"Sotto-v1 group seal nonce";
    pub(crate) const GROUP_SEAL_BODY: &[u8] = b"Sotto-v1 group seal body";
    pub(crate) const DEVICE_BINDING: &[u8] = b"Sotto-v2 device binding";
    pub(crate) const PREKEY: &[u8] = b"Sotto-v1 prekey";
    pub(crate) const PQXDH: &[u8] = b"Sotto-v1 PQXDH";
    pub(crate) const ROOT: &[u8] = b"Sotto-v1 ratchet root";
    pub(crate) const MESSAGE_KEYS: &[u8] = b"Sotto-v1 message keys";
    pub(crate) const SEALED_HEDGE: &[u8] = b"Sotto-v2 sealed sender hedge";
    pub(crate) const SEALED_MESSAGE_KEY: &[u8] = b"Sotto-v2 sealed sender message key";
    pub(crate) const SEALED_EPHEMERAL: &[u8] = b"Sotto-v2 sealed sender ephemeral";
    pub(crate) const SEALED_BODY: &[u8] = b"Sotto-v2 sealed sender body";
    pub(crate) const SEALED_WRAP: &[u8] = b"Sotto-v2 sealed sender wrap";
    pub(crate) const SEALED_AUTH: &[u8] = b"Sotto-v2 sealed sender auth";
    pub(crate) const SAFETY_NUMBER: &[u8] = b"Sotto-v1 safety number";
    pub(crate) const PICKLE: &[u8] = b"Sotto-v1 pickle";
    pub(crate) const RELAY_AUTH: &[u8] = b"Sotto-v1 relay auth";
    pub(crate) const PROFILE_VERSION: &[u8] = b"Sotto-v1 profile version";
    pub(crate) const PROFILE_CIPHER: &[u8] = b"Sotto-v1 profile cipher";
    pub(crate) const ATTACHMENT: &[u8] = b"Sotto-v1 attachment";
}

/// HKDF-SHA256 (RFC 5869) extract-and-expand into `N` bytes. `N` is at most
/// 255 * 32 for every call site, so expansion cannot fail.
pub(crate) fn hkdf<const N: usize>(salt: &[u8], ikm: &[u8], info: &[&[u8]]) -> Zeroizing<[u8; N]> {
    let mut out = Zeroizing::new([0u8; N]);
    // Every caller asks for at most 80 bytes, far below HKDF-SHA256's 8160-byte limit.
    let _ = Hkdf::<Sha256>::new(Some(salt), ikm).expand_multi_info(info, out.as_mut_slice());
    out
}

/// HMAC-SHA256 of one byte under a 32-byte key: the chain-key step.
pub(crate) fn hmac_byte(key: &[u8; 32], byte: u8) -> Zeroizing<[u8; 32]> {
    // HMAC accepts keys of any length, so this constructor cannot fail.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable_hmac(),
    };
    mac.update(&[byte]);
    Zeroizing::new(mac.finalize().into_bytes().into())
}

#[cold]
fn unreachable_hmac() -> Hmac<Sha256> {
    // `new_from_slice` only errors for MACs with a fixed key size; HMAC has none.
    // Returning a MAC under an all-zero key would be wrong, so abort instead of
    // carrying on: this line is unreachable by construction.
    std::process::abort()
}

/// HMAC-SHA256 over several parts under a 32-byte key.
pub(crate) fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this constructor cannot fail.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable_hmac(),
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// SHA-256 over several parts.
pub(crate) fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}
