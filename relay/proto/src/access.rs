//! Access keys: the capability an anonymous send presents for each recipient account
//! (docs/protocol.md §13.8).
//!
//! ```text
//! access key      = 32 random bytes, one per account, shared by its devices with the
//!                   contacts it accepts (inside encrypted content)
//! access verifier = SHA-256("Sotto-v1 access key" ‖ access key)
//! ```
//!
//! The relay stores only the verifier. A send that presents a key whose verifier matches
//! the account's is a contact's; any other send to the account is a *message request*,
//! stored within a small per-mailbox quota, or refused when the account takes none.

use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The label of the verifier hash.
pub const ACCESS_LABEL: &[u8] = b"Sotto-v1 access key";

/// An account's access key. Its `Debug` does not show it, and it is wiped on drop.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct AccessKey(pub [u8; 32]);

impl AccessKey {
    /// The verifier the relay stores for this key.
    pub fn verifier(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(ACCESS_LABEL);
        h.update(self.0);
        h.finalize().into()
    }
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessKey(..)")
    }
}

/// The access key a send presents for one recipient account.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Access {
    /// The recipient account.
    pub account_id: sotto_crypto::AccountId,
    /// Its access key, as its owner shared it.
    pub key: AccessKey,
}
