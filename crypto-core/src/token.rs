//! Unlinkable tokens (docs/protocol.md §16.3): a relay hands an authenticated device a
//! batch of single-use tokens without seeing them, and later accepts one from anyone
//! without learning which device it was issued to. This is a verifiable oblivious PRF
//! over ristretto255 with a batched discrete-log-equality proof, the construction of
//! Privacy Pass (Davidson, Goldberg, Sullivan, Tankersley and Valsorda, "Privacy Pass:
//! Bypassing Internet Challenges Anonymously", PETS 2018) and of RFC 9497's VOPRF mode;
//! the encodings and labels here are this protocol's own, not RFC 9497's.
//!
//! ```text
//! G            = the ristretto255 base point; k = the issuer's secret scalar; K = k·G
//! H(t)         = ristretto255 from 64 uniform bytes (Elligator twice, RFC 9496 §4.3.4)
//!                of SHA-512("Sotto-v1 token" ‖ t)
//! client       t_i = 32 drawn bytes; r_i = a scalar from 64 drawn bytes; B_i = r_i·H(t_i)
//! issuer       Z_i = k·B_i
//!              seed = SHA-512("Sotto-v1 token batch" ‖ K ‖ n (u16) ‖ B_1 ‖ Z_1 ‖ … ‖ B_n ‖ Z_n)
//!              d_i  = scalar(SHA-512(seed ‖ i (u16)))                     (reduced mod ℓ)
//!              M = Σ d_i·B_i, W = Σ d_i·Z_i
//!              proof: v = a scalar from 64 drawn bytes; A1 = v·G, A2 = v·M
//!                     c = scalar(SHA-512("Sotto-v1 token proof" ‖ K ‖ M ‖ W ‖ A1 ‖ A2)); s = v − c·k
//! client       checks c = scalar(SHA-512(… ‖ s·G + c·K ‖ s·M + c·W)), then N_i = r_i⁻¹·Z_i = k·H(t_i)
//! token        t_i ‖ N_i (64 bytes), redeemed once: the issuer checks N_i = k·H(t_i)
//! ```
//!
//! The proof binds every `Z_i` to the published `K`, so an issuer cannot answer one device
//! under a key of its own to recognise its tokens later. Points travel compressed (32
//! bytes); a point that does not decompress, or is the identity, is refused.

use std::fmt;

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{Identity, VartimeMultiscalarMul};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha512};
use thiserror::Error;
use zeroize::Zeroizing;

/// The most tokens one issuance carries.
pub const MAX_BATCH: usize = 256;
/// A token's encoding: `t ‖ N`.
pub const TOKEN_LEN: usize = 64;

const LABEL_POINT: &[u8] = b"Sotto-v1 token";
const LABEL_BATCH: &[u8] = b"Sotto-v1 token batch";
const LABEL_PROOF: &[u8] = b"Sotto-v1 token proof";

/// Why an issuance or a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TokenError {
    /// A 32-byte point that is not a ristretto255 encoding, or is the identity.
    #[error("not a valid group element")]
    BadPoint,
    /// No request, or more than [`MAX_BATCH`], or answers that do not match the requests.
    #[error("a batch of {len} is not between 1 and {max}, or does not match")]
    BadBatch {
        /// The count given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The issuer's proof does not verify against its published key.
    #[error("the issuance proof does not verify")]
    BadProof,
    /// The token was not issued under this key.
    #[error("the token is not valid")]
    InvalidToken,
}

fn scalar_from(rng: &mut impl CryptoRngCore) -> Scalar {
    let mut wide = Zeroizing::new([0u8; 64]);
    rng.fill_bytes(wide.as_mut_slice());
    Scalar::from_bytes_mod_order_wide(&wide)
}

fn hash_to_scalar(parts: &[&[u8]]) -> Scalar {
    let mut h = Sha512::new();
    for p in parts {
        h.update(p);
    }
    Scalar::from_bytes_mod_order_wide(&h.finalize().into())
}

/// `H(t)`.
fn point_of(t: &[u8; 32]) -> RistrettoPoint {
    let mut h = Sha512::new();
    h.update(LABEL_POINT);
    h.update(t);
    RistrettoPoint::from_uniform_bytes(&h.finalize().into())
}

/// A compressed point that decompresses and is not the identity.
fn point(bytes: &[u8; 32]) -> Result<RistrettoPoint, TokenError> {
    let p = CompressedRistretto(*bytes).decompress().ok_or(TokenError::BadPoint)?;
    if p == RistrettoPoint::identity() {
        return Err(TokenError::BadPoint);
    }
    Ok(p)
}

/// The batch's coefficients `d_i`.
fn coefficients(key: &[u8; 32], blinded: &[[u8; 32]], evaluated: &[[u8; 32]]) -> Vec<Scalar> {
    let mut h = Sha512::new();
    h.update(LABEL_BATCH);
    h.update(key);
    h.update((blinded.len() as u16).to_be_bytes());
    for (b, z) in blinded.iter().zip(evaluated) {
        h.update(b);
        h.update(z);
    }
    let seed = h.finalize();
    (0..blinded.len())
        .map(|i| hash_to_scalar(&[&seed, &(i as u16).to_be_bytes()]))
        .collect()
}

fn challenge(
    key: &[u8; 32],
    m: &RistrettoPoint,
    w: &RistrettoPoint,
    a1: &RistrettoPoint,
    a2: &RistrettoPoint,
) -> Scalar {
    hash_to_scalar(&[
        LABEL_PROOF,
        key,
        m.compress().as_bytes(),
        w.compress().as_bytes(),
        a1.compress().as_bytes(),
        a2.compress().as_bytes(),
    ])
}

/// The issuer's proof for one batch: `c ‖ s`, 64 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Proof(pub [u8; 64]);

/// The issuer's key. Secret: it mints tokens.
pub struct IssuerKey {
    k: Scalar,
    public: [u8; 32],
}

impl fmt::Debug for IssuerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuerKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl Drop for IssuerKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.k);
    }
}

impl IssuerKey {
    /// A new key: a scalar from 64 bytes of `rng`.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let k = scalar_from(rng);
        Self::from_scalar(k)
    }

    /// The key from its 32-byte scalar (as stored); `None` for a non-canonical encoding
    /// or zero.
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<Self> {
        let k = Option::<Scalar>::from(Scalar::from_canonical_bytes(*bytes))?;
        (k != Scalar::ZERO).then(|| Self::from_scalar(k))
    }

    fn from_scalar(k: Scalar) -> Self {
        let public = (&k * RISTRETTO_BASEPOINT_TABLE).compress().to_bytes();
        Self { k, public }
    }

    /// The scalar's 32 bytes, to store.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.k.to_bytes())
    }

    /// The public key `K` clients verify issuances against.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// Answers a batch of blinded requests: each `Z_i = k·B_i`, and one proof for all.
    pub fn issue(
        &self,
        blinded: &[[u8; 32]],
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Vec<[u8; 32]>, Proof), TokenError> {
        if blinded.is_empty() || blinded.len() > MAX_BATCH {
            return Err(TokenError::BadBatch {
                len: blinded.len(),
                max: MAX_BATCH,
            });
        }
        let points = blinded.iter().map(point).collect::<Result<Vec<_>, _>>()?;
        let evaluated: Vec<[u8; 32]> = points.iter().map(|b| (self.k * b).compress().to_bytes()).collect();
        let d = coefficients(&self.public, blinded, &evaluated);
        let m = RistrettoPoint::vartime_multiscalar_mul(&d, &points);
        let w = self.k * m;
        let v = Zeroizing::new(scalar_from(rng));
        let a1 = &*v * RISTRETTO_BASEPOINT_TABLE;
        let a2 = *v * m;
        let c = challenge(&self.public, &m, &w, &a1, &a2);
        let s = *v - c * self.k;
        let mut proof = [0u8; 64];
        proof[..32].copy_from_slice(c.as_bytes());
        proof[32..].copy_from_slice(s.as_bytes());
        Ok((evaluated, Proof(proof)))
    }

    /// Checks a token (`t ‖ N`) issued under this key, in constant time. Whether it was
    /// redeemed before is the caller's to check (by `t`).
    pub fn verify(&self, token: &[u8; TOKEN_LEN]) -> Result<(), TokenError> {
        let mut t = [0u8; 32];
        t.copy_from_slice(&token[..32]);
        let expected = (self.k * point_of(&t)).compress();
        let given = &token[32..];
        if !crate::keys::ct_eq(expected.as_bytes(), given) {
            return Err(TokenError::InvalidToken);
        }
        Ok(())
    }
}

/// A client's pending request: the token nonces and blinds, kept until the answer.
pub struct TokenRequest {
    nonces: Vec<[u8; 32]>,
    blinds: Vec<Scalar>,
    blinded: Vec<[u8; 32]>,
}

impl fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRequest")
            .field("count", &self.nonces.len())
            .finish_non_exhaustive()
    }
}

impl Drop for TokenRequest {
    fn drop(&mut self) {
        for r in &mut self.blinds {
            zeroize::Zeroize::zeroize(r);
        }
    }
}

impl TokenRequest {
    /// A request for `count` tokens (1 ..= [`MAX_BATCH`]), drawing 96 bytes each.
    pub fn new(count: usize, rng: &mut impl CryptoRngCore) -> Result<Self, TokenError> {
        if count == 0 || count > MAX_BATCH {
            return Err(TokenError::BadBatch {
                len: count,
                max: MAX_BATCH,
            });
        }
        let mut nonces = Vec::with_capacity(count);
        let mut blinds = Vec::with_capacity(count);
        let mut blinded = Vec::with_capacity(count);
        for _ in 0..count {
            let mut t = [0u8; 32];
            rng.fill_bytes(&mut t);
            let r = scalar_from(rng);
            blinded.push((r * point_of(&t)).compress().to_bytes());
            nonces.push(t);
            blinds.push(r);
        }
        Ok(Self {
            nonces,
            blinds,
            blinded,
        })
    }

    /// The blinded points `B_i` to send to the issuer.
    pub fn blinded(&self) -> &[[u8; 32]] {
        &self.blinded
    }

    /// Checks the issuer's answer against its public key `issuer` and unblinds it: the
    /// tokens, each `t ‖ N` ([`TOKEN_LEN`] bytes).
    pub fn finish(
        &self,
        issuer: &[u8; 32],
        evaluated: &[[u8; 32]],
        proof: &Proof,
    ) -> Result<Vec<[u8; TOKEN_LEN]>, TokenError> {
        if evaluated.len() != self.blinded.len() {
            return Err(TokenError::BadBatch {
                len: evaluated.len(),
                max: self.blinded.len(),
            });
        }
        let key = point(issuer)?;
        let zs = evaluated.iter().map(point).collect::<Result<Vec<_>, _>>()?;
        let bs = self.blinded.iter().map(point).collect::<Result<Vec<_>, _>>()?;
        let d = coefficients(issuer, &self.blinded, evaluated);
        let m = RistrettoPoint::vartime_multiscalar_mul(&d, &bs);
        let w = RistrettoPoint::vartime_multiscalar_mul(&d, &zs);
        let mut c_bytes = [0u8; 32];
        c_bytes.copy_from_slice(&proof.0[..32]);
        let mut s_bytes = [0u8; 32];
        s_bytes.copy_from_slice(&proof.0[32..]);
        let c = Option::<Scalar>::from(Scalar::from_canonical_bytes(c_bytes)).ok_or(TokenError::BadProof)?;
        let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)).ok_or(TokenError::BadProof)?;
        let a1 = &s * RISTRETTO_BASEPOINT_TABLE + c * key;
        let a2 = s * m + c * w;
        if challenge(issuer, &m, &w, &a1, &a2) != c {
            return Err(TokenError::BadProof);
        }
        Ok(self
            .nonces
            .iter()
            .zip(&self.blinds)
            .zip(&zs)
            .map(|((t, r), z)| {
                let n = r.invert() * z;
                let mut token = [0u8; TOKEN_LEN];
                token[..32].copy_from_slice(t);
                token[32..].copy_from_slice(n.compress().as_bytes());
                token
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    #[test]
    fn issued_tokens_verify_and_nothing_else_does() {
        let mut rng = ChaCha20Rng::seed_from_u64(1); // test only
        let issuer = IssuerKey::generate(&mut rng);
        let req = TokenRequest::new(8, &mut rng).unwrap();
        let (evaluated, proof) = issuer.issue(req.blinded(), &mut rng).unwrap();
        let tokens = req.finish(&issuer.public(), &evaluated, &proof).unwrap();
        assert_eq!(tokens.len(), 8);
        for t in &tokens {
            issuer.verify(t).unwrap();
            // The blinded request shows nothing of the token.
            assert!(!req.blinded().iter().any(|b| b == &t[32..] || b == &t[..32]));
        }
        // Another issuer's key, a changed byte, a made-up token: refused.
        let other = IssuerKey::generate(&mut rng);
        assert_eq!(other.verify(&tokens[0]), Err(TokenError::InvalidToken));
        let mut bad = tokens[0];
        bad[3] ^= 1;
        assert_eq!(issuer.verify(&bad), Err(TokenError::InvalidToken));
        assert_eq!(issuer.verify(&[7; TOKEN_LEN]), Err(TokenError::InvalidToken));
        // The key stores and loads.
        let again = IssuerKey::from_bytes(&issuer.to_bytes()).unwrap();
        again.verify(&tokens[1]).unwrap();
        assert!(IssuerKey::from_bytes(&[0; 32]).is_none());
        assert!(IssuerKey::from_bytes(&[0xff; 32]).is_none());
    }

    #[test]
    fn a_proof_under_another_key_or_for_other_answers_is_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(2); // test only
        let issuer = IssuerKey::generate(&mut rng);
        let tagger = IssuerKey::generate(&mut rng);
        let req = TokenRequest::new(4, &mut rng).unwrap();
        // An issuer answering under a key other than the one it published.
        let (evaluated, proof) = tagger.issue(req.blinded(), &mut rng).unwrap();
        assert_eq!(
            req.finish(&issuer.public(), &evaluated, &proof),
            Err(TokenError::BadProof)
        );
        // One answer swapped for another's.
        let (mut evaluated, proof) = issuer.issue(req.blinded(), &mut rng).unwrap();
        evaluated.swap(0, 1);
        assert_eq!(
            req.finish(&issuer.public(), &evaluated, &proof),
            Err(TokenError::BadProof)
        );
        evaluated.swap(0, 1);
        let mut bent = proof;
        bent.0[40] ^= 1;
        assert!(req.finish(&issuer.public(), &evaluated, &bent).is_err());
        assert!(matches!(
            req.finish(&issuer.public(), &evaluated[..3], &proof),
            Err(TokenError::BadBatch { .. })
        ));
        // Points that are not points, the identity, batch bounds.
        assert_eq!(issuer.issue(&[[0xff; 32]], &mut rng), Err(TokenError::BadPoint));
        assert_eq!(issuer.issue(&[[0; 32]], &mut rng), Err(TokenError::BadPoint));
        assert!(matches!(issuer.issue(&[], &mut rng), Err(TokenError::BadBatch { .. })));
        assert!(matches!(
            TokenRequest::new(MAX_BATCH + 1, &mut rng),
            Err(TokenError::BadBatch { .. })
        ));
        assert!(format!("{issuer:?}").contains("public"));
    }
}
