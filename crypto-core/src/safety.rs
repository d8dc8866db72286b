//! Safety numbers (docs/protocol.md §8): a 60-digit number and a QR payload that two
//! people compare to check that each holds the other's real account key.
//!
//! ```text
//! fp(AK)  = H^5200 where H0 = SHA-512(0x00 ‖ 0x01 ‖ "Sotto-v1 safety number" ‖ AK_pub ‖ account_id),
//!           H(i+1) = SHA-512(H(i) ‖ AK_pub); the first 30 bytes
//! digits  = 6 groups: each 5 bytes read as a big-endian integer, mod 100000, as 5 digits
//! number  = the two 30-digit strings, the smaller one first                      60 digits
//! qr      = 0x01 ‖ fp(local) ‖ fp(remote)                                        61 bytes
//! ```

use sha2::{Digest, Sha512};

use crate::identity::AccountId;
use crate::kdf::info;
use crate::keys::{Ed25519PublicKey, ct_eq};

const ITERATIONS: usize = 5200;
const FP_LEN: usize = 30;
const QR_VERSION: u8 = 1;

fn fingerprint(account_key: &Ed25519PublicKey) -> [u8; FP_LEN] {
    let id = AccountId::from_account_key(account_key);
    let mut h = Sha512::new();
    h.update([0u8, 1]);
    h.update(info::SAFETY_NUMBER);
    h.update(account_key.as_bytes());
    h.update(id.as_bytes());
    let mut d = h.finalize();
    for _ in 0..ITERATIONS {
        let mut h = Sha512::new();
        h.update(d);
        h.update(account_key.as_bytes());
        d = h.finalize();
    }
    let mut out = [0u8; FP_LEN];
    out.copy_from_slice(&d[..FP_LEN]);
    out
}

fn digits(fp: &[u8; FP_LEN]) -> String {
    let mut s = String::with_capacity(30);
    for chunk in fp.chunks_exact(5) {
        let v = chunk.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        s.push_str(&format!("{:05}", v % 100_000));
    }
    s
}

/// The safety number between this account and a contact.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SafetyNumber {
    local: [u8; FP_LEN],
    remote: [u8; FP_LEN],
    number: String,
}

impl SafetyNumber {
    /// Computes it from both account keys (about 10,400 SHA-512 calls).
    pub fn new(local: &Ed25519PublicKey, remote: &Ed25519PublicKey) -> Self {
        let local = fingerprint(local);
        let remote = fingerprint(remote);
        let (a, b) = (digits(&local), digits(&remote));
        let number = if a <= b { a + &b } else { b + &a };
        Self { local, remote, number }
    }

    /// The 60 digits, the same on both sides.
    pub fn number(&self) -> &str {
        &self.number
    }

    /// The 60 digits in 12 groups of 5, for display.
    pub fn display_groups(&self) -> Vec<&str> {
        (0..12).filter_map(|i| self.number.get(i * 5..i * 5 + 5)).collect()
    }

    /// The bytes to show in a QR code.
    pub fn qr_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(1 + 2 * FP_LEN);
        v.push(QR_VERSION);
        v.extend_from_slice(&self.local);
        v.extend_from_slice(&self.remote);
        v
    }

    /// Checks a QR payload scanned from the contact's screen, in constant time: it must
    /// name their key first and ours second.
    pub fn verify_scanned(&self, scanned: &[u8]) -> bool {
        let mut expected = Vec::with_capacity(1 + 2 * FP_LEN);
        expected.push(QR_VERSION);
        expected.extend_from_slice(&self.remote);
        expected.extend_from_slice(&self.local);
        ct_eq(scanned, &expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AccountKey;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn both_sides_agree_and_scan() {
        let mut rng = ChaCha20Rng::seed_from_u64(20); // test only
        let a = AccountKey::generate(&mut rng).public_key();
        let b = AccountKey::generate(&mut rng).public_key();
        let c = AccountKey::generate(&mut rng).public_key();
        let ab = SafetyNumber::new(&a, &b);
        let ba = SafetyNumber::new(&b, &a);
        assert_eq!(ab.number(), ba.number());
        assert_eq!(ab.number().len(), 60);
        assert!(ab.number().bytes().all(|c| c.is_ascii_digit()));
        assert_eq!(ab.display_groups().len(), 12);
        assert!(ab.verify_scanned(&ba.qr_bytes()));
        assert!(!ab.verify_scanned(&ab.qr_bytes()));
        let ac = SafetyNumber::new(&a, &c);
        assert_ne!(ab.number(), ac.number());
        assert!(!ab.verify_scanned(&SafetyNumber::new(&c, &a).qr_bytes()));
    }
}
