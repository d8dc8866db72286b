//! JSON Web Tokens (RFC 7519) signed with ES256 or RS256 (RFC 7518 §3.3, §3.4), the
//! keys they are signed with, and base64url without padding.
//!
//! ```text
//! jwt = b64url(header JSON) "." b64url(claims JSON) "." b64url(signature)
//! ES256 signature = r ‖ s (32 bytes each), ECDSA P-256 with SHA-256
//! RS256 signature = RSASSA-PKCS1-v1_5 with SHA-256
//! ```

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;

use super::PushError;

/// base64url without padding (RFC 4648 §5).
pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url with or without padding.
pub(crate) fn unb64(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

/// The PKCS#8 DER in a PEM `PRIVATE KEY` block.
fn pkcs8(pem: &[u8], what: &'static str) -> Result<PrivatePkcs8KeyDer<'static>, PushError> {
    PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(|_| PushError::Key { what })
}

/// `header.claims` in base64url, ready to sign.
fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// A P-256 signing key (the APNs `.p8` key, the VAPID key). Never printed.
pub(crate) struct EsKey(EcdsaKeyPair);

impl std::fmt::Debug for EsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EsKey(..)")
    }
}

impl EsKey {
    /// Loads a PKCS#8 PEM P-256 key; `what` names it in the error.
    pub(crate) fn from_pem(pem: &[u8], what: &'static str) -> Result<Self, PushError> {
        let der = pkcs8(pem, what)?;
        EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_pkcs8_der(),
            &SystemRandom::new(),
        )
        .map(Self)
        .map_err(|_| PushError::Key { what })
    }

    /// The public key, uncompressed (65 bytes, `0x04 ‖ x ‖ y`).
    pub(crate) fn public_key(&self) -> &[u8] {
        self.0.public_key().as_ref()
    }

    /// A signed ES256 JWT.
    pub(crate) fn sign(&self, header: &Value, claims: &Value) -> Result<String, PushError> {
        let input = signing_input(header, claims);
        let sig = self
            .0
            .sign(&SystemRandom::new(), input.as_bytes())
            .map_err(|_| PushError::Sign)?;
        Ok(format!("{input}.{}", b64(sig.as_ref())))
    }
}

/// An RSA signing key (the FCM service account's). Never printed.
pub(crate) struct RsKey(RsaKeyPair);

impl std::fmt::Debug for RsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RsKey(..)")
    }
}

impl RsKey {
    /// Loads a PKCS#8 PEM RSA key; `what` names it in the error.
    pub(crate) fn from_pem(pem: &[u8], what: &'static str) -> Result<Self, PushError> {
        let der = pkcs8(pem, what)?;
        RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
            .map(Self)
            .map_err(|_| PushError::Key { what })
    }

    /// A signed RS256 JWT.
    pub(crate) fn sign(&self, header: &Value, claims: &Value) -> Result<String, PushError> {
        let input = signing_input(header, claims);
        let mut sig = vec![0u8; self.0.public().modulus_len()];
        self.0
            .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut sig)
            .map_err(|_| PushError::Sign)?;
        Ok(format!("{input}.{}", b64(&sig)))
    }
}

#[cfg(test)]
mod tests {
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

    use super::*;

    #[test]
    fn es256_verifies_and_stays_out_of_debug() {
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap();
        let text = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(doc.as_ref())
        );
        let key = EsKey::from_pem(text.as_bytes(), "test key").unwrap();
        assert_eq!(format!("{key:?}"), "EsKey(..)");
        let jwt = key
            .sign(&serde_json::json!({"alg": "ES256"}), &serde_json::json!({"iss": "x"}))
            .unwrap();
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.public_key())
            .verify(input.as_bytes(), &unb64(sig).unwrap())
            .unwrap();
        assert!(EsKey::from_pem(b"not a key", "test key").is_err());
    }

    /// A key made as docs/self-hosting.md says (`openssl genpkey -algorithm EC -pkeyopt
    /// ec_paramgen_curve:P-256`), the form of Apple's `.p8` files too. Test only.
    const OPENSSL_P256: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgCfQu6Mblqm0H5fY+\nX0eONlx3k9R/3pl72CRBUKYQGS2hRANCAARVOVeGIyEC33F1mREcYeka/c6roKqS\ny0frlwab5vCozfRCedjN7eMUblXikQgVK4Tm26PzhEqvCIQy26aglA7b\n-----END PRIVATE KEY-----\n";

    #[test]
    fn loads_openssl_keys() {
        let key = EsKey::from_pem(OPENSSL_P256.as_bytes(), "test key").unwrap();
        assert_eq!(key.public_key().len(), 65);
    }
}
