//! The byte codec under every Sotto encoding (this crate's and the relay protocol's).
//!
//! Integers are big-endian. Variable-length fields are length-prefixed, and every
//! length is checked against the bytes that remain *before* anything is allocated,
//! so a decoder's memory is bounded by its input.

use thiserror::Error;

/// A typed decode failure. Decoders never panic: any byte string decodes to a value
/// or to one of these.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before a field was complete.
    #[error("input truncated: needed {needed} more bytes, {remaining} remain")]
    Truncated {
        /// Bytes the field needed.
        needed: usize,
        /// Bytes that remained.
        remaining: usize,
    },
    /// The input continued after a complete value.
    #[error("{count} trailing bytes after a complete value")]
    TrailingBytes {
        /// How many bytes were left over.
        count: usize,
    },
    /// The version byte names a version this implementation does not speak.
    #[error("unsupported version {version}")]
    UnsupportedVersion {
        /// The version byte found.
        version: u8,
    },
    /// A type or kind byte with no meaning here.
    #[error("unknown {field} value {value}")]
    UnknownType {
        /// Which field.
        field: &'static str,
        /// The byte found.
        value: u8,
    },
    /// A count or length above its bound.
    #[error("{field} is {len}, above the maximum {max}")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// The length or count found.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A field whose bytes are not a valid value (an invalid public key, an unsorted
    /// list, a bad padding marker).
    #[error("invalid {field}")]
    Invalid {
        /// Which field.
        field: &'static str,
    },
}

/// A cursor over untrusted bytes. Every read checks the bytes left first.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::Truncated {
                needed: n,
                remaining: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    /// A big-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A `u32` length prefix followed by that many bytes, at most `max`.
    pub fn var_bytes(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(DecodeError::TooLong { field, len, max });
        }
        self.bytes(len)
    }

    /// A count prefix (`u16`) checked against `max` and against the bytes left,
    /// given the minimum encoded size of one item.
    pub fn count(&mut self, field: &'static str, max: usize, min_item: usize) -> Result<usize, DecodeError> {
        let n = self.u16()? as usize;
        if n > max {
            return Err(DecodeError::TooLong { field, len: n, max });
        }
        let needed = n.saturating_mul(min_item);
        if needed > self.buf.len() {
            return Err(DecodeError::Truncated {
                needed,
                remaining: self.buf.len(),
            });
        }
        Ok(n)
    }

    /// A version byte that must equal `expected`.
    /// A flag byte: 0 or 1.
    pub fn flag(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid { field }),
        }
    }

    /// A version byte that must equal `expected`.
    pub fn version(&mut self, expected: u8) -> Result<(), DecodeError> {
        let version = self.u8()?;
        if version != expected {
            return Err(DecodeError::UnsupportedVersion { version });
        }
        Ok(())
    }

    /// Everything not yet read.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Succeeds only if every byte was read.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes { count: self.buf.len() })
        }
    }
}

/// Appends big-endian integers and length-prefixed fields to a `Vec<u8>`.
pub trait Put {
    /// One byte.
    fn put_u8(&mut self, v: u8);
    /// A big-endian `u16`.
    fn put_u16(&mut self, v: u16);
    /// A big-endian `u32`.
    fn put_u32(&mut self, v: u32);
    /// A big-endian `u64`.
    fn put_u64(&mut self, v: u64);
    /// Raw bytes.
    fn put(&mut self, v: &[u8]);
    /// A `u32` length prefix and the bytes. Callers bound `v` below `u32::MAX`.
    fn put_var(&mut self, v: &[u8]);
    /// A `u16` count prefix. Callers bound the count below `u16::MAX`.
    fn put_count(&mut self, n: usize);
}

impl Put for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put(&mut self, v: &[u8]) {
        self.extend_from_slice(v);
    }
    fn put_var(&mut self, v: &[u8]) {
        self.put_u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.extend_from_slice(v);
    }
    fn put_count(&mut self, n: usize) {
        self.put_u16(u16::try_from(n).unwrap_or(u16::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_reads_are_typed() {
        let mut r = Reader::new(&[1, 2]);
        assert_eq!(
            r.u32(),
            Err(DecodeError::Truncated {
                needed: 4,
                remaining: 2
            })
        );
        assert_eq!(r.u16(), Ok(0x0102));
        assert_eq!(
            r.u8(),
            Err(DecodeError::Truncated {
                needed: 1,
                remaining: 0
            })
        );
    }

    #[test]
    fn lengths_are_checked_before_allocation() {
        let mut v = Vec::new();
        v.put_u32(u32::MAX);
        let mut r = Reader::new(&v);
        assert!(matches!(r.var_bytes("x", 1 << 20), Err(DecodeError::TooLong { .. })));
        let mut v = Vec::new();
        v.put_u16(1000);
        let mut r = Reader::new(&v);
        assert!(matches!(r.count("x", 2000, 32), Err(DecodeError::Truncated { .. })));
    }
}
