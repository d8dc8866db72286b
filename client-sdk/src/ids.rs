//! Message ids and the few plain value types the API passes around.

use std::fmt;

use rand_core::CryptoRngCore;

/// A message id: 16 bytes laid out like a UUIDv7 (48-bit Unix milliseconds, version 7,
/// 74 random bits), carried inside the ciphertext. Every copy of one message (to each
/// device of the contact and each own device) has the same id; receivers deduplicate on it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// A fresh id for a message written at `now_ms`.
    pub fn new(now_ms: u64, rng: &mut impl CryptoRngCore) -> Self {
        let mut b = [0u8; 16];
        rng.fill_bytes(&mut b);
        b[..6].copy_from_slice(&now_ms.to_be_bytes()[2..]);
        b[6] = 0x70 | (b[6] & 0x0f);
        b[8] = 0x80 | (b[8] & 0x3f);
        Self(b)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A string that is not a message id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a message id (32 hex digits, dashes allowed where a UUID has them)")]
pub struct BadMessageId;

/// Reads the UUID form [`MessageId`]'s `Display` writes (dashes optional).
impl std::str::FromStr for MessageId {
    type Err = BadMessageId;

    fn from_str(s: &str) -> Result<Self, BadMessageId> {
        let hex: Vec<u8> = s.bytes().filter(|b| *b != b'-').collect();
        if hex.len() != 32 || s.len() > 36 {
            return Err(BadMessageId);
        }
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        };
        let mut out = [0u8; 16];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            out[i] = (digit(pair[0]).ok_or(BadMessageId)? << 4) | digit(pair[1]).ok_or(BadMessageId)?;
        }
        Ok(Self(out))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn uuid_v7_layout() {
        let mut rng = ChaCha20Rng::seed_from_u64(1); // test only
        let id = MessageId::new(0x0102_0304_0506, &mut rng);
        assert_eq!(&id.0[..6], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(id.0[6] >> 4, 7);
        assert_eq!(id.0[8] >> 6, 2);
        assert_eq!(id.to_string().len(), 36);
        assert_eq!(id.to_string().parse::<MessageId>(), Ok(id));
        assert_eq!(id.to_string().replace('-', "").parse::<MessageId>(), Ok(id));
        for bad in ["", "xyz", &"0".repeat(31), &"g".repeat(32), &format!("{id}-")] {
            assert_eq!(bad.parse::<MessageId>(), Err(BadMessageId), "{bad}");
        }
        assert_ne!(id, MessageId::new(0x0102_0304_0506, &mut rng));
    }
}
