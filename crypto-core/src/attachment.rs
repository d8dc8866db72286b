//! Attachment encryption (docs/protocol.md §16): a file of any size encrypted in chunks,
//! as a stream, so memory stays flat whatever the size. The construction is STREAM
//! (Hoang, Reyhanitabar, Rogaway and Vizár, "Online Authenticated-Encryption and its
//! Nonce-Reuse Misuse-Resistance", CRYPTO 2015), as age and Tink's streaming AEADs use it:
//! every chunk is authenticated on its own under a nonce made of its index and a flag
//! marking the last chunk, so a reordered, dropped, repeated or truncated chunk fails.
//!
//! ```text
//! K          = the attachment key, 32 bytes from the key generator, one per attachment
//! padded     = plaintext ‖ 0x80 ‖ 0x00 … to bucket(len(plaintext) + 1) bytes   (§7.3)
//! salt       = 16 bytes from the key generator
//! header     = 0x01 ‖ salt                                                    17 bytes
//! k          = HKDF-SHA256(salt = salt, ikm = K, info = "Sotto-v1 attachment")   32 bytes
//! chunk_i    = padded[i·65536 .. min((i+1)·65536, len(padded))]
//! nonce_i    = i (u88, big-endian, 11 bytes) ‖ (0x01 for the last chunk, else 0x00)
//! ciphertext = header ‖ ChaCha20-Poly1305(k, nonce_0, chunk_0, ad = header) ‖ tag_0 ‖ …
//! digest     = SHA-256(ciphertext)
//! ```
//!
//! The plaintext length travels with the key and the digest inside the message that
//! points to the attachment, so the receiver knows the exact ciphertext length before
//! the first byte: a stream cut short or made longer is refused, and the padding after
//! the plaintext must be exactly `0x80` and zeros.
//!
//! [`Encryptor`] and [`Decryptor`] are sans-IO: the caller feeds bytes as they come and
//! gets bytes out, whole chunks at a time; each holds at most one chunk.

use std::fmt;

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::kdf::{hkdf, info};
use crate::padding::bucket_u64;

/// The attachment format's version byte.
pub const VERSION: u8 = 1;
/// Plaintext bytes per chunk (every chunk but the last is exactly this long).
pub const CHUNK_LEN: usize = 64 * 1024;
/// Header bytes: the version and the salt.
pub const HEADER_LEN: usize = 1 + 16;
/// Tag bytes per chunk.
pub const TAG_LEN: usize = 16;
/// The largest plaintext: 16 GiB.
pub const MAX_PLAINTEXT_LEN: u64 = 1 << 34;

/// Why an attachment does not encrypt or decrypt.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AttachmentError {
    /// The plaintext length is above [`MAX_PLAINTEXT_LEN`].
    #[error("attachment of {len} bytes is larger than {max}")]
    TooLarge {
        /// The length given.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// More plaintext was fed than announced, or less when finishing.
    #[error("the plaintext is not the {expected} bytes announced")]
    LengthMismatch {
        /// The announced length.
        expected: u64,
    },
    /// The ciphertext is longer or shorter than the plaintext length implies.
    #[error("the ciphertext is not the {expected} bytes its length implies")]
    WrongLength {
        /// The ciphertext length the plaintext length implies.
        expected: u64,
    },
    /// A version byte this code does not read.
    #[error("attachment version {version} is not supported")]
    UnsupportedVersion {
        /// The version byte.
        version: u8,
    },
    /// A chunk does not authenticate (another key, altered, reordered or cut).
    #[error("attachment chunk {index} failed authentication")]
    InvalidMac {
        /// The chunk's index.
        index: u64,
    },
    /// The padding after the plaintext is not `0x80` and zeros.
    #[error("attachment padding is invalid")]
    BadPadding,
    /// The ciphertext's SHA-256 is not the digest the pointer carries.
    #[error("attachment digest does not match")]
    DigestMismatch,
}

/// An attachment's key. Secret: carried only inside encrypted content.
#[derive(Clone)]
pub struct AttachmentKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for AttachmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AttachmentKey(..)")
    }
}

impl AttachmentKey {
    /// A new key: 32 bytes from `rng`.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(key.as_mut_slice());
        Self(key)
    }

    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(Zeroizing::new(*bytes))
    }

    /// The key's 32 bytes.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(*self.0)
    }

    fn cipher(&self, header: &[u8; HEADER_LEN]) -> ChaCha20Poly1305 {
        let k = hkdf::<32>(&header[1..], self.0.as_slice(), &[info::ATTACHMENT]);
        ChaCha20Poly1305::new(k.as_slice().into())
    }
}

/// The lengths that follow from a plaintext length: padded bytes and chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The plaintext length.
    pub plaintext_len: u64,
    /// The padded length (`bucket(plaintext_len + 1)`).
    pub padded_len: u64,
    /// The number of chunks.
    pub chunks: u64,
}

impl Layout {
    /// The layout of a plaintext of `len` bytes.
    pub fn of(len: u64) -> Result<Self, AttachmentError> {
        if len > MAX_PLAINTEXT_LEN {
            return Err(AttachmentError::TooLarge {
                len,
                max: MAX_PLAINTEXT_LEN,
            });
        }
        let padded_len = bucket_u64(len + 1);
        Ok(Self {
            plaintext_len: len,
            padded_len,
            chunks: padded_len.div_ceil(CHUNK_LEN as u64),
        })
    }

    /// The exact ciphertext length: the header, the padded bytes and a tag per chunk.
    pub fn ciphertext_len(&self) -> u64 {
        HEADER_LEN as u64 + self.padded_len + self.chunks * TAG_LEN as u64
    }

    /// The padded bytes in chunk `i`.
    fn chunk_len(&self, i: u64) -> usize {
        let start = i * CHUNK_LEN as u64;
        usize::try_from((self.padded_len - start).min(CHUNK_LEN as u64)).unwrap_or(CHUNK_LEN)
    }
}

fn nonce(i: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&i.to_be_bytes());
    n[11] = u8::from(last);
    n
}

/// Encrypts one attachment as a stream: [`Encryptor::header`] first, then what
/// [`Encryptor::update`] and [`Encryptor::finish`] append.
pub struct Encryptor {
    cipher: ChaCha20Poly1305,
    header: [u8; HEADER_LEN],
    layout: Layout,
    /// The chunk being filled (padded bytes).
    buf: Zeroizing<Vec<u8>>,
    index: u64,
    fed: u64,
    hash: Sha256,
    /// The `0x80` marker after the plaintext is written.
    marked: bool,
}

impl fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encryptor")
            .field("layout", &self.layout)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Encryptor {
    /// An encryptor for a plaintext of exactly `plaintext_len` bytes, drawing the salt
    /// from `rng`.
    pub fn new(key: &AttachmentKey, plaintext_len: u64, rng: &mut impl CryptoRngCore) -> Result<Self, AttachmentError> {
        let layout = Layout::of(plaintext_len)?;
        let mut header = [0u8; HEADER_LEN];
        header[0] = VERSION;
        rng.fill_bytes(&mut header[1..]);
        let mut hash = Sha256::new();
        hash.update(header);
        Ok(Self {
            cipher: key.cipher(&header),
            header,
            layout,
            buf: Zeroizing::new(Vec::with_capacity(CHUNK_LEN + TAG_LEN)),
            index: 0,
            fed: 0,
            hash,
            marked: false,
        })
    }

    /// The header: the ciphertext's first bytes.
    pub fn header(&self) -> [u8; HEADER_LEN] {
        self.header
    }

    /// The layout (and so the exact ciphertext length).
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Seals the chunk in `buf` (its index is `self.index`) and appends it to `out`.
    fn seal_chunk(&mut self, out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        let last = self.index + 1 == self.layout.chunks;
        let tag = self
            .cipher
            .encrypt_in_place_detached((&nonce(self.index, last)).into(), &self.header, self.buf.as_mut_slice())
            .map_err(|_| AttachmentError::TooLarge {
                len: self.layout.plaintext_len,
                max: MAX_PLAINTEXT_LEN,
            })?;
        self.hash.update(self.buf.as_slice());
        self.hash.update(tag);
        out.extend_from_slice(&self.buf);
        out.extend_from_slice(&tag);
        self.buf.clear();
        self.index += 1;
        Ok(())
    }

    /// Feeds plaintext; every chunk it completes (but the last) is appended to `out`.
    pub fn update(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        let len = data.len() as u64;
        if self.fed.saturating_add(len) > self.layout.plaintext_len {
            return Err(AttachmentError::LengthMismatch {
                expected: self.layout.plaintext_len,
            });
        }
        self.fed += len;
        while !data.is_empty() {
            let room = self.layout.chunk_len(self.index) - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            // The last chunk is sealed by `finish`, after the padding.
            if self.buf.len() == self.layout.chunk_len(self.index) && self.index + 1 < self.layout.chunks {
                self.seal_chunk(out)?;
            }
        }
        Ok(())
    }

    /// Once all the plaintext was fed: pads and seals one more chunk, appending it to
    /// `out`; after the last one, returns the ciphertext's SHA-256. Call it until it
    /// returns the digest (the padding may span many chunks of a large file; one call
    /// adds at most one). [`AttachmentError::LengthMismatch`] unless exactly the
    /// announced plaintext length was fed.
    pub fn finish_step(&mut self, out: &mut Vec<u8>) -> Result<Option<[u8; 32]>, AttachmentError> {
        if self.fed != self.layout.plaintext_len {
            return Err(AttachmentError::LengthMismatch {
                expected: self.layout.plaintext_len,
            });
        }
        if self.index < self.layout.chunks {
            let want = self.layout.chunk_len(self.index);
            if !self.marked && self.buf.len() < want {
                self.buf.push(0x80);
                self.marked = true;
            }
            self.buf.resize(want, 0);
            self.seal_chunk(out)?;
        }
        if self.index < self.layout.chunks {
            return Ok(None);
        }
        Ok(Some(self.hash.clone().finalize().into()))
    }

    /// [`Encryptor::finish_step`] until the end: appends every remaining chunk to `out`
    /// and returns the digest.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<[u8; 32], AttachmentError> {
        loop {
            if let Some(digest) = self.finish_step(out)? {
                return Ok(digest);
            }
        }
    }
}

/// Decrypts one attachment as a stream, given what the pointer carries: the key, the
/// plaintext length and the digest.
pub struct Decryptor {
    key: AttachmentKey,
    cipher: Option<ChaCha20Poly1305>,
    header: [u8; HEADER_LEN],
    layout: Layout,
    digest: [u8; 32],
    /// Header bytes, then the current chunk's ciphertext, as they arrive.
    buf: Zeroizing<Vec<u8>>,
    index: u64,
    /// Plaintext bytes given out so far.
    given: u64,
    hash: Sha256,
    /// The padding seen so far is `0x80` and zeros (its marker found).
    marker_seen: bool,
}

impl fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decryptor")
            .field("layout", &self.layout)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Decryptor {
    /// A decryptor for the attachment of `plaintext_len` bytes whose ciphertext has the
    /// SHA-256 `digest`.
    pub fn new(key: &AttachmentKey, plaintext_len: u64, digest: [u8; 32]) -> Result<Self, AttachmentError> {
        Ok(Self {
            key: key.clone(),
            cipher: None,
            header: [0u8; HEADER_LEN],
            layout: Layout::of(plaintext_len)?,
            digest,
            buf: Zeroizing::new(Vec::with_capacity(CHUNK_LEN + TAG_LEN)),
            index: 0,
            given: 0,
            hash: Sha256::new(),
            marker_seen: false,
        })
    }

    /// The layout (and so the exact ciphertext length).
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Opens the chunk in `buf` and appends its plaintext (without padding) to `out`.
    fn open_chunk(&mut self, out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        let Some(cipher) = &self.cipher else {
            return Err(AttachmentError::WrongLength {
                expected: self.layout.ciphertext_len(),
            });
        };
        let last = self.index + 1 == self.layout.chunks;
        self.hash.update(self.buf.as_slice());
        let at = self.buf.len() - TAG_LEN;
        let (body, tag) = self.buf.split_at_mut(at);
        let tag: [u8; TAG_LEN] = (&*tag)
            .try_into()
            .map_err(|_| AttachmentError::InvalidMac { index: self.index })?;
        cipher
            .decrypt_in_place_detached((&nonce(self.index, last)).into(), &self.header, body, (&tag).into())
            .map_err(|_| AttachmentError::InvalidMac { index: self.index })?;
        let keep =
            usize::try_from((self.layout.plaintext_len - self.given).min(body.len() as u64)).unwrap_or(body.len());
        out.extend_from_slice(&body[..keep]);
        self.given += keep as u64;
        for &b in &body[keep..] {
            match (self.marker_seen, b) {
                (false, 0x80) => self.marker_seen = true,
                (true, 0x00) => {}
                _ => return Err(AttachmentError::BadPadding),
            }
        }
        self.buf.clear();
        self.index += 1;
        Ok(())
    }

    /// Feeds ciphertext; the plaintext of every chunk it completes is appended to `out`
    /// (authenticated chunk by chunk; the digest is checked by [`Decryptor::finish`],
    /// so a caller hands nothing to the app before that).
    pub fn update(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        while !data.is_empty() {
            if self.cipher.is_none() {
                let take = (HEADER_LEN - self.buf.len()).min(data.len());
                self.buf.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.buf.len() == HEADER_LEN {
                    if self.buf[0] != VERSION {
                        return Err(AttachmentError::UnsupportedVersion { version: self.buf[0] });
                    }
                    self.header.copy_from_slice(&self.buf);
                    self.hash.update(self.header);
                    self.cipher = Some(self.key.cipher(&self.header));
                    self.buf.clear();
                }
                continue;
            }
            if self.index >= self.layout.chunks {
                return Err(AttachmentError::WrongLength {
                    expected: self.layout.ciphertext_len(),
                });
            }
            let want = self.layout.chunk_len(self.index) + TAG_LEN;
            let take = (want - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == want {
                self.open_chunk(out)?;
            }
        }
        Ok(())
    }

    /// Checks that the whole ciphertext arrived and that its SHA-256 is the digest
    /// (compared in constant time).
    pub fn finish(self) -> Result<(), AttachmentError> {
        if self.cipher.is_none() || self.index != self.layout.chunks || !self.buf.is_empty() {
            return Err(AttachmentError::WrongLength {
                expected: self.layout.ciphertext_len(),
            });
        }
        let got: [u8; 32] = self.hash.finalize().into();
        if !crate::keys::ct_eq(&got, &self.digest) {
            return Err(AttachmentError::DigestMismatch);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// Encrypts `plain` fed in pieces of `step` bytes.
    fn encrypt(key: &AttachmentKey, plain: &[u8], step: usize, seed: u64) -> (Vec<u8>, [u8; 32]) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed); // test only
        let mut e = Encryptor::new(key, plain.len() as u64, &mut rng).unwrap();
        let mut out = e.header().to_vec();
        for piece in plain.chunks(step.max(1)) {
            e.update(piece, &mut out).unwrap();
        }
        assert!(out.len() <= HEADER_LEN + CHUNK_LEN + TAG_LEN || plain.len() > CHUNK_LEN);
        let layout = e.layout();
        let digest = e.finish(&mut out).unwrap();
        assert_eq!(out.len() as u64, layout.ciphertext_len());
        (out, digest)
    }

    fn decrypt(
        key: &AttachmentKey,
        len: u64,
        digest: [u8; 32],
        ct: &[u8],
        step: usize,
    ) -> Result<Vec<u8>, AttachmentError> {
        let mut d = Decryptor::new(key, len, digest)?;
        let mut out = Vec::new();
        for piece in ct.chunks(step.max(1)) {
            d.update(piece, &mut out)?;
        }
        d.finish()?;
        Ok(out)
    }

    #[test]
    fn round_trips_at_every_boundary_in_any_pieces() {
        let key = AttachmentKey::generate(&mut ChaCha20Rng::seed_from_u64(1)); // test only
        for len in [0, 1, 255, 256, 16_383, 65_535, 65_536, 65_537, 200_000, 3 * 65_536] {
            let plain = data(len);
            for step in [1_000, 65_536, 100_003] {
                if len > 70_000 && step == 1_000 {
                    continue;
                }
                let (ct, digest) = encrypt(&key, &plain, step, len as u64);
                for dstep in [17, 65_552, 1 << 20] {
                    assert_eq!(
                        decrypt(&key, len as u64, digest, &ct, dstep).unwrap(),
                        plain,
                        "{len}/{step}/{dstep}"
                    );
                }
            }
        }
    }

    #[test]
    fn truncation_reordering_and_tampering_fail() {
        let key = AttachmentKey::generate(&mut ChaCha20Rng::seed_from_u64(2)); // test only
        let plain = data(3 * CHUNK_LEN);
        let (ct, digest) = encrypt(&key, &plain, CHUNK_LEN, 9);
        let len = plain.len() as u64;
        let chunk = CHUNK_LEN + TAG_LEN;
        // One byte short, one byte more, a whole chunk dropped.
        assert!(matches!(
            decrypt(&key, len, digest, &ct[..ct.len() - 1], 4096),
            Err(AttachmentError::WrongLength { .. })
        ));
        let longer = [&ct[..], &[0]].concat();
        assert!(matches!(
            decrypt(&key, len, digest, &longer, 4096),
            Err(AttachmentError::WrongLength { .. })
        ));
        // Chunks 0 and 1 swapped: chunk 0's tag does not verify at index 0.
        let mut swapped = ct[..HEADER_LEN].to_vec();
        swapped.extend_from_slice(&ct[HEADER_LEN + chunk..HEADER_LEN + 2 * chunk]);
        swapped.extend_from_slice(&ct[HEADER_LEN..HEADER_LEN + chunk]);
        swapped.extend_from_slice(&ct[HEADER_LEN + 2 * chunk..]);
        assert_eq!(
            decrypt(&key, len, digest, &swapped, 4096),
            Err(AttachmentError::InvalidMac { index: 0 })
        );
        // The stream cut after its first chunk and announced as that long: the chunk was
        // not sealed as the last one, so it does not open as one.
        let cut = &ct[..HEADER_LEN + chunk];
        assert_eq!(
            decrypt(&key, (CHUNK_LEN - 1) as u64, digest, cut, 4096),
            Err(AttachmentError::InvalidMac { index: 0 })
        );
        // A flipped bit anywhere, another key, another version.
        for at in [0usize, 5, HEADER_LEN, HEADER_LEN + chunk + 3, ct.len() - 1] {
            let mut bad = ct.clone();
            bad[at] ^= 1;
            assert!(decrypt(&key, len, digest, &bad, 4096).is_err(), "bit at {at}");
        }
        let other = AttachmentKey::generate(&mut ChaCha20Rng::seed_from_u64(3)); // test only
        assert_eq!(
            decrypt(&other, len, digest, &ct, 4096),
            Err(AttachmentError::InvalidMac { index: 0 })
        );
        // The right bytes with another digest.
        assert_eq!(
            decrypt(&key, len, [0; 32], &ct, 4096),
            Err(AttachmentError::DigestMismatch)
        );
    }

    #[test]
    fn lengths_are_checked() {
        let key = AttachmentKey::generate(&mut ChaCha20Rng::seed_from_u64(4)); // test only
        let mut rng = ChaCha20Rng::seed_from_u64(5); // test only
        let mut e = Encryptor::new(&key, 10, &mut rng).unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            e.update(&[0; 11], &mut out),
            Err(AttachmentError::LengthMismatch { .. })
        ));
        e.update(&[0; 9], &mut out).unwrap();
        assert!(matches!(
            e.finish(&mut out),
            Err(AttachmentError::LengthMismatch { .. })
        ));
        assert!(matches!(
            Encryptor::new(&key, MAX_PLAINTEXT_LEN + 1, &mut rng),
            Err(AttachmentError::TooLarge { .. })
        ));
        // A 16 GiB layout: the padded length stays within Padmé's 12 %.
        let l = Layout::of(MAX_PLAINTEXT_LEN).unwrap();
        assert!(l.padded_len > MAX_PLAINTEXT_LEN && l.padded_len - MAX_PLAINTEXT_LEN <= MAX_PLAINTEXT_LEN / 8);
        assert_eq!(format!("{key:?}"), "AttachmentKey(..)");
    }
}
