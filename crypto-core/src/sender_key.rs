//! Sender keys for groups (docs/protocol.md §6A).
//!
//! ```text
//! KDF          MK_n = HMAC-SHA256(CK_n, 0x01), CK_{n+1} = HMAC-SHA256(CK_n, 0x02)      (as §6 KDF_CK)
//! keys         = HKDF-SHA256(salt, MK_n, "Sotto-v1 sender key message keys", 44) = key (32) ‖ nonce (12)
//! distribution = 0x01 ‖ chain_id (16) ‖ iteration (u32) ‖ CK_iteration (32) ‖ SSK_pub (32)      85 bytes
//! header       = 0x01 ‖ chain_id (16) ‖ iteration (u32) ‖ salt (16)                             37 bytes
//! message      = header ‖ ChaCha20-Poly1305(key, nonce, plaintext, ad = header) ‖ signature (64)
//! signature    = Ed25519_SSK("Sotto-v1 sender key message" ‖ header ‖ ciphertext and tag)
//! ```
//! A sender makes one chain per group and generation ([`SenderKey::generate`]) and hands
//! its [`SenderKeyDistribution`] to the group's members over their pairwise sessions.
//! Whoever holds the distribution of iteration `n` can read messages `n` and later, never
//! earlier ones. The chain key lets members decrypt; only the sender's signing key `SSK`
//! signs, so a member cannot pass a message off as another member's.
//!
//! Bounds: one message may make the receiver derive at most [`MAX_JUMP`] keys ahead, and a
//! receiver keeps at most [`MAX_SKIPPED_KEYS`] keys of messages not yet received (oldest
//! dropped first). A failed decryption changes nothing.

use std::collections::VecDeque;
use std::fmt;

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use rand_core::CryptoRngCore;
use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

use crate::codec::{DecodeError, Put, Reader};
use crate::kdf::{hkdf, info};
use crate::keys::{Ed25519PublicKey, Ed25519Secret, KeyError, Signature};
use crate::ratchet::{Key32, MAX_PLAINTEXT_LEN, TAG_LEN, kdf_ck};

const VERSION: u8 = 1;
/// Bytes of the header: version, chain id, iteration, salt.
pub const HEADER_LEN: usize = 1 + 16 + 4 + 16;
/// Bytes of a distribution message.
pub const DISTRIBUTION_LEN: usize = 1 + 16 + 4 + 32 + 32;
/// Most keys one message may make a receiver derive ahead of the next expected one.
pub const MAX_JUMP: u32 = 2000;
/// Most keys a receiver keeps for messages it has not received yet.
pub const MAX_SKIPPED_KEYS: usize = 2000;
/// Largest message: the largest plaintext with header, tag and signature.
pub const MAX_MESSAGE_LEN: usize = HEADER_LEN + MAX_PLAINTEXT_LEN + TAG_LEN + 64;

/// Why a sender-key operation failed. The state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SenderKeyError {
    /// The bytes do not decode.
    #[error("sender-key message does not decode: {0}")]
    Decode(#[from] DecodeError),
    /// A message of another chain than this receiver's.
    #[error("sender-key message of another chain")]
    UnknownChain,
    /// The sender's signature does not verify.
    #[error("sender-key message signature does not verify")]
    BadSignature,
    /// This message was already decrypted, or its key was dropped.
    #[error("sender-key message {iteration} was already decrypted or its key was dropped")]
    Duplicate {
        /// The message's iteration.
        iteration: u32,
    },
    /// The message is more than [`MAX_JUMP`] ahead of the next expected one.
    #[error("sender-key message is {gap} ahead; at most {max} allowed")]
    TooFarAhead {
        /// Keys the receiver would have to derive.
        gap: u64,
        /// [`MAX_JUMP`].
        max: u32,
    },
    /// Authentication of the ciphertext failed.
    #[error("sender-key message does not authenticate")]
    InvalidMac,
    /// The chain is at iteration 2^32 − 1 (the last one a message may carry is 2^32 − 2):
    /// make a new chain.
    #[error("sender-key chain exhausted")]
    ChainExhausted,
    /// A plaintext above [`MAX_PLAINTEXT_LEN`].
    #[error("plaintext of {len} bytes; at most {max}")]
    MessageTooLarge {
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
}

impl SenderKeyError {
    /// A stable name for the error, as the vectors record it (docs/protocol.md §12.2).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Decode(_) => "Decode",
            Self::UnknownChain => "UnknownChain",
            Self::BadSignature => "BadSignature",
            Self::Duplicate { .. } => "Duplicate",
            Self::TooFarAhead { .. } => "TooFarAhead",
            Self::InvalidMac => "InvalidMac",
            Self::ChainExhausted => "ChainExhausted",
            Self::MessageTooLarge { .. } => "MessageTooLarge",
        }
    }
}

/// The sending side of one chain: its id, the next iteration, the chain key and the
/// signing key.
pub struct SenderKey {
    chain_id: [u8; 16],
    iteration: u32,
    chain_key: Key32,
    signing: Ed25519Secret,
}

impl fmt::Debug for SenderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SenderKey")
            .field("iteration", &self.iteration)
            .finish_non_exhaustive()
    }
}

/// What a sender hands each member (over their pairwise sessions) so that it can read
/// the chain from `iteration` on. It holds the chain key: keep it secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SenderKeyDistribution {
    chain_id: [u8; 16],
    iteration: u32,
    chain_key: Zeroizing<[u8; 32]>,
    signing_key: Ed25519PublicKey,
}

impl fmt::Debug for SenderKeyDistribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SenderKeyDistribution")
            .field("iteration", &self.iteration)
            .finish_non_exhaustive()
    }
}

/// The receiving side of one member's chain.
pub struct SenderKeyReceiver {
    chain_id: [u8; 16],
    signing_key: Ed25519PublicKey,
    iteration: u32,
    chain_key: Key32,
    /// Keys of messages skipped over, oldest first: (iteration, message key).
    skipped: VecDeque<(u32, Key32)>,
}

impl fmt::Debug for SenderKeyReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SenderKeyReceiver")
            .field("iteration", &self.iteration)
            .field("skipped", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

/// A parsed message: the header fields, the ciphertext with its tag, and the signature.
struct Parsed<'a> {
    chain_id: [u8; 16],
    iteration: u32,
    salt: [u8; 16],
    header: &'a [u8],
    signed: &'a [u8],
    body: &'a [u8],
    signature: Signature,
}

fn parse(bytes: &[u8]) -> Result<Parsed<'_>, DecodeError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(DecodeError::TooLong {
            field: "sender-key message",
            len: bytes.len(),
            max: MAX_MESSAGE_LEN,
        });
    }
    let min = HEADER_LEN + TAG_LEN + 64;
    if bytes.len() < min {
        return Err(DecodeError::Truncated {
            needed: min,
            remaining: bytes.len(),
        });
    }
    let mut r = Reader::new(bytes);
    r.version(VERSION)?;
    let chain_id = r.array()?;
    let iteration = r.u32()?;
    if iteration == u32::MAX {
        // A sender stops at 2^32 − 2 (`ChainExhausted`).
        return Err(DecodeError::Invalid { field: "iteration" });
    }
    let salt = r.array()?;
    let (signed, sig) = bytes.split_at(bytes.len() - 64);
    let mut signature = [0u8; 64];
    signature.copy_from_slice(sig);
    Ok(Parsed {
        chain_id,
        iteration,
        salt,
        header: &bytes[..HEADER_LEN],
        signed,
        body: &signed[HEADER_LEN..],
        signature: Signature(signature),
    })
}

fn aead_keys(mk: &Key32, salt: &[u8; 16]) -> Zeroizing<[u8; 44]> {
    hkdf::<44>(salt, &mk.0, &[info::SENDER_KEY_MESSAGE_KEYS])
}

impl SenderKey {
    /// A new chain at iteration 0. Draws, in order: the chain id (16 bytes), the chain
    /// key (32) and the signing key's seed (32).
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut chain_id = [0u8; 16];
        rng.fill_bytes(&mut chain_id);
        let mut chain_key = Key32([0u8; 32]);
        rng.fill_bytes(&mut chain_key.0);
        let signing = Ed25519Secret::generate(rng);
        Self {
            chain_id,
            iteration: 0,
            chain_key,
            signing,
        }
    }

    /// The chain id.
    pub fn chain_id(&self) -> [u8; 16] {
        self.chain_id
    }

    /// The iteration the next message gets.
    pub fn iteration(&self) -> u32 {
        self.iteration
    }

    /// What a member needs to read this chain from the next message on.
    pub fn distribution(&self) -> SenderKeyDistribution {
        SenderKeyDistribution {
            chain_id: self.chain_id,
            iteration: self.iteration,
            chain_key: Zeroizing::new(self.chain_key.0),
            signing_key: self.signing.public(),
        }
    }

    /// Encrypts and signs one message. Draws the 16-byte salt.
    pub fn encrypt(&mut self, plaintext: &[u8], rng: &mut impl CryptoRngCore) -> Result<Vec<u8>, SenderKeyError> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(SenderKeyError::MessageTooLarge {
                len: plaintext.len(),
                max: MAX_PLAINTEXT_LEN,
            });
        }
        if self.iteration == u32::MAX {
            return Err(SenderKeyError::ChainExhausted);
        }
        let (mk, next) = kdf_ck(&self.chain_key);
        let mut salt = [0u8; 16];
        rng.fill_bytes(&mut salt);
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN + 64);
        out.put_u8(VERSION);
        out.put(&self.chain_id);
        out.put_u32(self.iteration);
        out.put(&salt);
        out.extend_from_slice(plaintext);
        let keys = aead_keys(&mk, &salt);
        let cipher = ChaCha20Poly1305::new((&keys[..32]).into());
        let (header, body) = out.split_at_mut(HEADER_LEN);
        let tag = cipher
            .encrypt_in_place_detached((&keys[32..]).into(), header, body)
            .map_err(|_| SenderKeyError::MessageTooLarge {
                len: plaintext.len(),
                max: MAX_PLAINTEXT_LEN,
            })?;
        out.extend_from_slice(&tag);
        let signature = self.signing.sign_parts(&[info::SENDER_KEY_MESSAGE, &out]);
        out.extend_from_slice(&signature.0);
        self.chain_key = next;
        self.iteration += 1;
        Ok(out)
    }
}

impl SenderKey {
    pub(crate) fn parts(&self) -> (&[u8; 16], u32, &[u8; 32], &Ed25519Secret) {
        (&self.chain_id, self.iteration, &self.chain_key.0, &self.signing)
    }

    pub(crate) fn from_parts(chain_id: [u8; 16], iteration: u32, chain_key: &[u8; 32], signing: Ed25519Secret) -> Self {
        Self {
            chain_id,
            iteration,
            chain_key: Key32(*chain_key),
            signing,
        }
    }
}

impl SenderKeyReceiver {
    /// The state for a pickle: chain id, signing key, next iteration, chain key and the
    /// kept keys, oldest first.
    #[allow(clippy::type_complexity, reason = "a flat view for the pickle codec")]
    pub(crate) fn parts(&self) -> (&[u8; 16], &Ed25519PublicKey, u32, &[u8; 32], Vec<(u32, &[u8; 32])>) {
        (
            &self.chain_id,
            &self.signing_key,
            self.iteration,
            &self.chain_key.0,
            self.skipped.iter().map(|(i, k)| (*i, &k.0)).collect(),
        )
    }

    pub(crate) fn from_parts(
        chain_id: [u8; 16],
        signing_key: Ed25519PublicKey,
        iteration: u32,
        chain_key: &[u8; 32],
        skipped: Vec<(u32, Zeroizing<[u8; 32]>)>,
    ) -> Self {
        Self {
            chain_id,
            signing_key,
            iteration,
            chain_key: Key32(*chain_key),
            skipped: skipped.into_iter().map(|(i, k)| (i, Key32(*k))).collect(),
        }
    }
}

impl SenderKeyDistribution {
    /// The chain id.
    pub fn chain_id(&self) -> [u8; 16] {
        self.chain_id
    }

    /// The first iteration it opens.
    pub fn iteration(&self) -> u32 {
        self.iteration
    }

    /// The sender's public signing key.
    pub fn signing_key(&self) -> Ed25519PublicKey {
        self.signing_key
    }

    /// `0x01 ‖ chain_id ‖ iteration ‖ chain key ‖ SSK_pub`: secret (it holds the chain key).
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(DISTRIBUTION_LEN));
        out.put_u8(VERSION);
        out.put(&self.chain_id);
        out.put_u32(self.iteration);
        out.put(&self.chain_key[..]);
        out.put(self.signing_key.as_bytes());
        out
    }

    /// Decodes a distribution message.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.version(VERSION)?;
        let chain_id = r.array()?;
        let iteration = r.u32()?;
        let chain_key = Zeroizing::new(r.array()?);
        let signing_key =
            Ed25519PublicKey::from_bytes(&r.array()?).map_err(|_| DecodeError::Invalid { field: "signing key" })?;
        r.finish()?;
        Ok(Self {
            chain_id,
            iteration,
            chain_key,
            signing_key,
        })
    }
}

impl SenderKeyReceiver {
    /// A receiver for the chain a member distributed.
    pub fn new(distribution: &SenderKeyDistribution) -> Self {
        Self {
            chain_id: distribution.chain_id,
            signing_key: distribution.signing_key,
            iteration: distribution.iteration,
            chain_key: Key32(*distribution.chain_key),
            skipped: VecDeque::new(),
        }
    }

    /// The chain id.
    pub fn chain_id(&self) -> [u8; 16] {
        self.chain_id
    }

    /// The next iteration expected.
    pub fn iteration(&self) -> u32 {
        self.iteration
    }

    /// Keys held for messages not received yet.
    pub fn skipped_keys(&self) -> usize {
        self.skipped.len()
    }

    /// The chain id of a message, without checking anything else (to find its receiver).
    pub fn message_chain_id(bytes: &[u8]) -> Result<[u8; 16], DecodeError> {
        Ok(parse(bytes)?.chain_id)
    }

    /// Verifies and decrypts one message. On any error the receiver is unchanged.
    pub fn decrypt(&mut self, bytes: &[u8]) -> Result<Vec<u8>, SenderKeyError> {
        let m = parse(bytes)?;
        if m.chain_id != self.chain_id {
            return Err(SenderKeyError::UnknownChain);
        }
        self.signing_key
            .verify_parts(&[info::SENDER_KEY_MESSAGE, m.signed], &m.signature)
            .map_err(|_: KeyError| SenderKeyError::BadSignature)?;
        if m.iteration < self.iteration {
            let Some(pos) = self.skipped.iter().position(|(i, _)| *i == m.iteration) else {
                return Err(SenderKeyError::Duplicate { iteration: m.iteration });
            };
            let Some((_, mk)) = self.skipped.get(pos) else {
                return Err(SenderKeyError::Duplicate { iteration: m.iteration });
            };
            let plaintext = open(mk, &m)?;
            self.skipped.remove(pos);
            return Ok(plaintext);
        }
        let gap = u64::from(m.iteration) - u64::from(self.iteration);
        if gap > u64::from(MAX_JUMP) {
            return Err(SenderKeyError::TooFarAhead { gap, max: MAX_JUMP });
        }
        // Derive into locals; commit only once the message opened.
        let mut chain_key = self.chain_key.clone();
        let mut skipped = Vec::with_capacity(gap as usize);
        for i in self.iteration..m.iteration {
            let (mk, next) = kdf_ck(&chain_key);
            skipped.push((i, mk));
            chain_key = next;
        }
        let (mk, next) = kdf_ck(&chain_key);
        let plaintext = open(&mk, &m)?;
        self.skipped.extend(skipped);
        while self.skipped.len() > MAX_SKIPPED_KEYS {
            self.skipped.pop_front();
        }
        self.chain_key = next;
        // `parse` refuses iteration 2^32 − 1, so this does not saturate.
        self.iteration = m.iteration.saturating_add(1);
        Ok(plaintext)
    }
}

fn open(mk: &Key32, m: &Parsed<'_>) -> Result<Vec<u8>, SenderKeyError> {
    let keys = aead_keys(mk, &m.salt);
    let cipher = ChaCha20Poly1305::new((&keys[..32]).into());
    let split = m.body.len() - TAG_LEN; // `parse` guarantees body.len() >= TAG_LEN
    let (ct, tag) = m.body.split_at(split);
    let mut buf = ct.to_vec();
    match cipher.decrypt_in_place_detached((&keys[32..]).into(), m.header, &mut buf, tag.into()) {
        Ok(()) => Ok(buf),
        Err(_) => {
            buf.zeroize();
            Err(SenderKeyError::InvalidMac)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed) // test only
    }

    #[test]
    fn members_read_in_any_order_once() {
        let mut r = rng(1);
        let mut alice = SenderKey::generate(&mut r);
        let dist = SenderKeyDistribution::decode(&alice.distribution().encode()).unwrap();
        assert_eq!(dist, alice.distribution());
        let mut bob = SenderKeyReceiver::new(&dist);
        let m: Vec<Vec<u8>> = (0..4u8).map(|i| alice.encrypt(&[i; 10], &mut r).unwrap()).collect();
        assert_eq!(bob.decrypt(&m[2]).unwrap(), vec![2; 10]);
        assert_eq!(bob.skipped_keys(), 2);
        assert_eq!(bob.decrypt(&m[0]).unwrap(), vec![0; 10]);
        assert_eq!(bob.decrypt(&m[3]).unwrap(), vec![3; 10]);
        assert_eq!(bob.decrypt(&m[1]).unwrap(), vec![1; 10]);
        assert_eq!(bob.skipped_keys(), 0);
        for (i, msg) in m.iter().enumerate() {
            assert_eq!(bob.decrypt(msg), Err(SenderKeyError::Duplicate { iteration: i as u32 }));
        }
    }

    /// A member added later gets the distribution at the current iteration: it reads
    /// what comes next and nothing before.
    #[test]
    fn a_late_member_cannot_read_earlier_messages() {
        let mut r = rng(2);
        let mut alice = SenderKey::generate(&mut r);
        let early = alice.encrypt(b"before", &mut r).unwrap();
        let mut carol = SenderKeyReceiver::new(&alice.distribution());
        let late = alice.encrypt(b"after", &mut r).unwrap();
        assert_eq!(carol.decrypt(&early), Err(SenderKeyError::Duplicate { iteration: 0 }));
        assert_eq!(carol.decrypt(&late).unwrap(), b"after");
    }

    /// A member holds the chain key but not the sender's signing key: what it makes in the
    /// sender's name is refused, even with a valid ciphertext.
    #[test]
    fn a_member_cannot_forge_the_senders_messages() {
        let mut r = rng(3);
        let mut alice = SenderKey::generate(&mut r);
        let dist = alice.distribution();
        let mut bob = SenderKeyReceiver::new(&dist);
        // Mallory, a member, builds a sender with Alice's chain and her own signing key.
        let mut mallory = SenderKey {
            chain_id: dist.chain_id,
            iteration: dist.iteration,
            chain_key: Key32(*dist.chain_key),
            signing: Ed25519Secret::generate(&mut r),
        };
        let forged = mallory.encrypt(b"pay mallory", &mut r).unwrap();
        assert_eq!(bob.decrypt(&forged), Err(SenderKeyError::BadSignature));
        assert_eq!(bob.iteration(), 0);
        let real = alice.encrypt(b"hello", &mut r).unwrap();
        assert_eq!(bob.decrypt(&real).unwrap(), b"hello");
    }

    #[test]
    fn any_altered_byte_is_refused_and_changes_nothing() {
        let mut r = rng(4);
        let mut alice = SenderKey::generate(&mut r);
        let mut bob = SenderKeyReceiver::new(&alice.distribution());
        let m = alice.encrypt(b"integrity", &mut r).unwrap();
        for i in 0..m.len() {
            let mut b = m.clone();
            b[i] ^= 0x01;
            assert!(bob.decrypt(&b).is_err(), "byte {i}");
            assert_eq!((bob.iteration(), bob.skipped_keys()), (0, 0));
        }
        let mut other = SenderKeyReceiver::new(&SenderKey::generate(&mut r).distribution());
        assert_eq!(other.decrypt(&m), Err(SenderKeyError::UnknownChain));
        assert!(matches!(bob.decrypt(&m[..50]), Err(SenderKeyError::Decode(_))));
        assert_eq!(bob.decrypt(&m).unwrap(), b"integrity");
    }

    #[test]
    fn jumps_and_stored_keys_are_bounded() {
        let mut r = rng(5);
        let mut alice = SenderKey::generate(&mut r);
        let mut bob = SenderKeyReceiver::new(&alice.distribution());
        let first = alice.encrypt(b"0", &mut r).unwrap();
        for _ in 0..MAX_JUMP {
            alice.encrypt(b"", &mut r).unwrap();
        }
        // Iteration 2001: 2001 ahead of the next expected (0): refused, nothing changes.
        let far = alice.encrypt(b"far", &mut r).unwrap();
        assert_eq!(
            bob.decrypt(&far),
            Err(SenderKeyError::TooFarAhead {
                gap: u64::from(MAX_JUMP) + 1,
                max: MAX_JUMP
            })
        );
        assert_eq!((bob.iteration(), bob.skipped_keys()), (0, 0));
        assert_eq!(bob.decrypt(&first).unwrap(), b"0");
        // Now 2000 ahead: accepted, 2000 keys kept; one more jump drops the oldest.
        assert_eq!(bob.decrypt(&far).unwrap(), b"far");
        assert_eq!(bob.skipped_keys(), MAX_SKIPPED_KEYS);
        let next = alice.encrypt(b"", &mut r).unwrap();
        let after = alice.encrypt(b"after", &mut r).unwrap();
        assert_eq!(bob.decrypt(&after).unwrap(), b"after");
        assert_eq!(bob.skipped_keys(), MAX_SKIPPED_KEYS);
        assert_eq!(bob.decrypt(&next).unwrap(), b"");
    }

    #[test]
    fn a_chain_ends_before_the_last_iteration() {
        let mut r = rng(6);
        let mut alice = SenderKey::generate(&mut r);
        alice.iteration = u32::MAX - 1;
        let last = alice.encrypt(b"last", &mut r).unwrap();
        assert_eq!(alice.encrypt(b"", &mut r), Err(SenderKeyError::ChainExhausted));
        // Iteration 2^32 − 1 never parses, so a receiver's next iteration cannot overflow.
        let mut top = last.clone();
        top[17..21].copy_from_slice(&u32::MAX.to_be_bytes());
        let mut bob = SenderKeyReceiver::new(&alice.distribution());
        assert!(matches!(
            bob.decrypt(&top),
            Err(SenderKeyError::Decode(DecodeError::Invalid { field: "iteration" }))
        ));
        assert_eq!(SenderKeyReceiver::message_chain_id(&last).unwrap(), alice.chain_id());
    }

    /// Both states survive a pickle round trip and go on where they were: the receiver
    /// keeps its skipped keys, the sender its iteration and signing key.
    #[test]
    fn states_pickle_and_continue() {
        use crate::pickle::{Pickle, PickleKey};
        let mut r = rng(8);
        let key = PickleKey::new([9; 32]);
        let mut alice = SenderKey::generate(&mut r);
        let mut bob = SenderKeyReceiver::new(&alice.distribution());
        let m: Vec<Vec<u8>> = (0..3u8).map(|i| alice.encrypt(&[i], &mut r).unwrap()).collect();
        assert_eq!(bob.decrypt(&m[2]).unwrap(), vec![2]);
        let mut alice = SenderKey::unpickle(&alice.pickle(&key, &mut r), &key).unwrap();
        let mut bob = SenderKeyReceiver::unpickle(&bob.pickle(&key, &mut r), &key).unwrap();
        assert_eq!((bob.iteration(), bob.skipped_keys()), (3, 2));
        assert_eq!(bob.decrypt(&m[0]).unwrap(), vec![0]);
        let next = alice.encrypt(b"after", &mut r).unwrap();
        assert_eq!(bob.decrypt(&next).unwrap(), b"after");
        assert_eq!(bob.decrypt(&m[1]).unwrap(), vec![1]);
        assert!(SenderKeyReceiver::unpickle(&alice.pickle(&key, &mut r), &key).is_err());
    }

    #[test]
    fn debug_shows_no_key() {
        let mut r = rng(7);
        let alice = SenderKey::generate(&mut r);
        let dist = alice.distribution();
        let receiver = SenderKeyReceiver::new(&dist);
        let bytes: Vec<String> = dist.chain_key.iter().map(|b| b.to_string()).collect();
        let decimal = bytes[..4].join(", ");
        for shown in [format!("{alice:?}"), format!("{dist:?}"), format!("{receiver:?}")] {
            assert!(!shown.contains("chain_key") && !shown.contains(&decimal), "{shown}");
        }
    }
}
