//! Padding to size buckets (docs/protocol.md §7.3).
//!
//! ```text
//! padded = data ‖ 0x80 ‖ 0x00 … to bucket(len(data) + 1)
//! bucket(n) = max(256, next power of two ≥ n)        for n ≤ 16384
//!           = Padmé(n)                                 above
//! Padmé(n): E = ⌊log2 n⌋, S = ⌊log2 E⌋ + 1, mask = 2^(E−S) − 1, result = (n + mask) & !mask
//! ```

use crate::codec::DecodeError;

/// The padded length for `n` bytes (data plus the 0x80 marker).
pub fn bucket(n: usize) -> usize {
    usize::try_from(bucket_u64(n as u64)).unwrap_or(usize::MAX)
}

/// [`bucket`] for lengths that may exceed the address space (attachments on a 32-bit
/// target). `n` is at most 2^62, so the result does not overflow.
pub fn bucket_u64(n: u64) -> u64 {
    if n <= 256 {
        256
    } else if n <= 16384 {
        n.next_power_of_two()
    } else {
        let e = u64::BITS - 1 - n.leading_zeros();
        let s = (u32::BITS - 1 - e.leading_zeros()) + 1;
        let mask = (1u64 << (e - s)) - 1;
        (n + mask) & !mask
    }
}

/// Appends the marker and zeros so `buf[start..]` fills its bucket.
pub(crate) fn pad(buf: &mut Vec<u8>, start: usize) {
    let len = buf.len() - start + 1;
    buf.push(0x80);
    buf.resize(start + bucket(len), 0);
}

/// Strips the padding; the last nonzero byte must be the 0x80 marker.
pub(crate) fn unpad(buf: &[u8]) -> Result<&[u8], DecodeError> {
    let end = buf
        .iter()
        .rposition(|&b| b != 0)
        .ok_or(DecodeError::Invalid { field: "padding" })?;
    if buf[end] != 0x80 {
        return Err(DecodeError::Invalid { field: "padding" });
    }
    Ok(&buf[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        assert_eq!(bucket(1), 256);
        assert_eq!(bucket(257), 512);
        assert_eq!(bucket(16384), 16384);
        assert_eq!(bucket(16385), 17408);
        assert_eq!(bucket(65537), 67584);
        for n in 1..100_000 {
            let b = bucket(n);
            assert!(b >= n);
            if n > 16384 {
                assert!((b - n) * 100 <= n * 12, "{n} -> {b}");
            }
        }
    }

    #[test]
    fn round_trip() {
        for len in [0, 1, 254, 255, 256, 1000, 20000] {
            let data = vec![0u8; len];
            let mut buf = vec![9u8; 3];
            buf.extend_from_slice(&data);
            pad(&mut buf, 3);
            assert_eq!(buf.len() - 3, bucket(len + 1));
            assert_eq!(unpad(&buf[3..]).unwrap(), &data[..]);
        }
        assert!(unpad(&[0, 0]).is_err());
        assert!(unpad(&[1, 0x81]).is_err());
    }
}
