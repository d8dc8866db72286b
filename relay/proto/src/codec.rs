//! The byte codec under every frame and body: `sotto-crypto`'s, so the whole protocol has
//! one codec. Integers are big-endian; variable-length fields carry a `u32` length prefix
//! and lists a `u16` count prefix; every length and count is checked against its bound and
//! against the bytes that remain *before* anything is allocated.

pub use sotto_crypto::codec::DecodeError;
pub(crate) use sotto_crypto::codec::{Put, Reader};
