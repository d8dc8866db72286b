//! Web Push: delivery (RFC 8030), message encryption with `aes128gcm` (RFC 8291, RFC 8188)
//! and VAPID (RFC 8292). UnifiedPush distributors take the same requests.
//!
//! The registration token is the browser's `PushSubscription.toJSON()`, UTF-8:
//! `{"endpoint":"https://…","keys":{"p256dh":b64url(65),"auth":b64url(16)}}`.
//!
//! ```text
//! (as_priv, as_pub) fresh P-256 key; salt = 16 random bytes       (per push)
//! ecdh   = ECDH(as_priv, ua_public)
//! ikm    = HKDF-SHA256(salt = auth, ikm = ecdh, "WebPush: info" ‖ 0x00 ‖ ua_public ‖ as_pub, 32)
//! cek    = HKDF-SHA256(salt, ikm, "Content-Encoding: aes128gcm" ‖ 0x00, 16)
//! nonce  = HKDF-SHA256(salt, ikm, "Content-Encoding: nonce" ‖ 0x00, 12)
//! body   = salt ‖ rs = 4096 (u32 BE) ‖ 65 (u8) ‖ as_pub ‖ AES-128-GCM(cek, nonce, plaintext ‖ 0x02)
//! Authorization: vapid t=JWT(ES256, {"typ":"JWT","alg":"ES256"},
//!                             {"aud":origin(endpoint),"exp":now+12h,"sub":subject}), k=b64url(vapid_pub)
//! Content-Encoding: aes128gcm   TTL: ttl_secs   Urgency: high
//! ```
//! An endpoint is chosen by the client, so only `https://` endpoints on public addresses
//! are contacted (the name is resolved by a resolver that drops non-public addresses, and
//! redirects are not followed), unless `allow_insecure_endpoints` is set for tests.

use std::net::{IpAddr, SocketAddr};

use hkdf::Hkdf;
use reqwest::StatusCode;
use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::agreement::{ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey, agree_ephemeral};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::json;
use sha2::Sha256;
use thiserror::Error;

use super::jwt::{EsKey, b64, unb64};
use super::{Outcome, PushConfig, PushError, WebPushConfig, read, retry_after, retryable, unix_now};

/// The constant plaintext of every Web Push message.
pub(crate) const PLAINTEXT: &[u8] = br#"{"sotto":1}"#;
/// The record size announced in the `aes128gcm` header.
pub(crate) const RECORD_SIZE: u32 = 4096;
/// The longest endpoint URL accepted.
const MAX_ENDPOINT: usize = 2048;
/// VAPID tokens live 12 hours (RFC 8292 §2: at most 24).
const VAPID_LIFETIME_SECS: u64 = 12 * 3600;

/// A Web Push subscription as a client registers it.
#[derive(Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The push service's URL for this subscription.
    pub endpoint: reqwest::Url,
    /// The user agent's P-256 public key, uncompressed.
    pub p256dh: [u8; 65],
    /// The authentication secret.
    pub auth: [u8; 16],
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The endpoint is a capability: whoever holds it can push to the device.
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

/// Why a Web Push registration token is not a subscription.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscriptionError {
    /// The token is not a JSON object with `endpoint` and `keys.p256dh`, `keys.auth`
    /// strings (or, for another provider, not a token of its form).
    #[error("not a push subscription")]
    Token,
    /// The endpoint is not an `https://` URL with a host, without user info, of at most
    /// 2048 bytes.
    #[error("the endpoint is not an https URL")]
    Endpoint,
    /// A key is not base64url of the right length, or `p256dh` not an uncompressed point
    /// on P-256.
    #[error("the subscription key {field} is not valid")]
    Key {
        /// `p256dh` or `auth`.
        field: &'static str,
    },
}

impl Subscription {
    /// Parses and checks `{"endpoint":…,"keys":{"p256dh":…,"auth":…}}` (other fields,
    /// such as `expirationTime`, are ignored).
    pub fn parse(token: &[u8]) -> Result<Self, SubscriptionError> {
        #[derive(serde::Deserialize)]
        struct Keys {
            p256dh: String,
            auth: String,
        }
        #[derive(serde::Deserialize)]
        struct Json {
            endpoint: String,
            keys: Keys,
        }
        let j: Json = serde_json::from_slice(token).map_err(|_| SubscriptionError::Token)?;
        if j.endpoint.len() > MAX_ENDPOINT {
            return Err(SubscriptionError::Endpoint);
        }
        let endpoint = reqwest::Url::parse(&j.endpoint).map_err(|_| SubscriptionError::Endpoint)?;
        if endpoint.scheme() != "https"
            || endpoint.host().is_none()
            || !endpoint.username().is_empty()
            || endpoint.password().is_some()
        {
            return Err(SubscriptionError::Endpoint);
        }
        let p256dh: [u8; 65] = unb64(&j.keys.p256dh)
            .and_then(|k| k.try_into().ok())
            .filter(|k: &[u8; 65]| k[0] == 0x04 && on_curve(k))
            .ok_or(SubscriptionError::Key { field: "p256dh" })?;
        let auth: [u8; 16] = unb64(&j.keys.auth)
            .and_then(|k| k.try_into().ok())
            .ok_or(SubscriptionError::Key { field: "auth" })?;
        Ok(Self { endpoint, p256dh, auth })
    }
}

/// Whether `point` is a P-256 public key an agreement accepts (ring checks it is on the
/// curve when it is used).
fn on_curve(point: &[u8; 65]) -> bool {
    EphemeralPrivateKey::generate(&ECDH_P256, &SystemRandom::new())
        .is_ok_and(|k| agree_ephemeral(k, &UnparsedPublicKey::new(&ECDH_P256, point), |_| ()).is_ok())
}

/// Encrypts `plaintext` for the subscription keys as one `aes128gcm` record (RFC 8291
/// §3.4), with a fresh ephemeral key and salt. `None` when `ua_public` is not a valid
/// P-256 point or randomness fails.
pub(crate) fn encrypt(ua_public: &[u8; 65], auth: &[u8; 16], plaintext: &[u8]) -> Option<Vec<u8>> {
    let rng = SystemRandom::new();
    let mut salt = [0u8; 16];
    rng.fill(&mut salt).ok()?;
    let as_private = EphemeralPrivateKey::generate(&ECDH_P256, &rng).ok()?;
    let as_public = as_private.compute_public_key().ok()?;
    let as_public = as_public.as_ref().to_vec();
    let ecdh: Vec<u8> = agree_ephemeral(as_private, &UnparsedPublicKey::new(&ECDH_P256, ua_public), |s| {
        s.to_vec()
    })
    .ok()?;
    let mut key_info = b"WebPush: info\0".to_vec();
    key_info.extend_from_slice(ua_public);
    key_info.extend_from_slice(&as_public);
    let mut ikm = zeroize::Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(auth), &ecdh)
        .expand(&key_info, &mut ikm[..])
        .ok()?;
    let prk = Hkdf::<Sha256>::new(Some(&salt), &ikm[..]);
    let mut cek = zeroize::Zeroizing::new([0u8; 16]);
    let mut nonce = [0u8; 12];
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek[..]).ok()?;
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce).ok()?;
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &cek[..]).ok()?);
    let mut record = plaintext.to_vec();
    record.push(0x02); // the last (and only) record's delimiter, no padding
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut record)
        .ok()?;
    let mut out = Vec::with_capacity(16 + 4 + 1 + 65 + record.len());
    out.extend_from_slice(&salt);
    out.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    out.push(u8::try_from(as_public.len()).ok()?);
    out.extend_from_slice(&as_public);
    out.extend_from_slice(&record);
    Some(out)
}

/// True for an address on the public internet.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_unspecified()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x64 && s[1] == 0xff9b)) // NAT64
        }
    }
}

/// A resolver that keeps only public addresses: a name that resolves to none fails.
#[derive(Debug)]
pub(super) struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err("no public address".into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

pub(crate) struct WebPush {
    client: reqwest::Client,
    key: EsKey,
    subject: String,
    ttl_secs: u64,
    allow_insecure: bool,
}

impl std::fmt::Debug for WebPush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebPush")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl WebPush {
    pub(crate) fn load(cfg: &PushConfig, w: &WebPushConfig) -> Result<Self, PushError> {
        let key = EsKey::from_pem(&read(&w.vapid_private_key_file)?, "push.webpush.vapid_private_key_file")?;
        Ok(Self {
            client: super::client(cfg, false, !w.allow_insecure_endpoints)?,
            key,
            subject: w.subject.clone(),
            ttl_secs: w.ttl_secs,
            allow_insecure: w.allow_insecure_endpoints,
        })
    }

    /// The endpoint may be contacted: a literal address must be public (names are checked
    /// by the resolver).
    fn allowed(&self, url: &reqwest::Url) -> bool {
        if self.allow_insecure {
            return true;
        }
        let Some(host) = url.host_str() else {
            return false;
        };
        match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(ip) => is_public(ip),
            Err(_) => !host.eq_ignore_ascii_case("localhost") && !host.to_ascii_lowercase().ends_with(".localhost"),
        }
    }

    pub(crate) async fn send(&self, token: &[u8]) -> Outcome {
        // Registrations are checked when stored; one that no longer parses is useless.
        let Ok(sub) = Subscription::parse(token) else {
            return Outcome::Gone;
        };
        if !self.allowed(&sub.endpoint) {
            return Outcome::Failed;
        }
        let Some(body) = encrypt(&sub.p256dh, &sub.auth, PLAINTEXT) else {
            return Outcome::Gone;
        };
        let aud = sub.endpoint.origin().ascii_serialization();
        let Ok(jwt) = self.key.sign(
            &json!({"typ": "JWT", "alg": "ES256"}),
            &json!({"aud": aud, "exp": unix_now() + VAPID_LIFETIME_SECS, "sub": self.subject}),
        ) else {
            return Outcome::Failed;
        };
        let resp = self
            .client
            .post(sub.endpoint.clone())
            .header(
                "authorization",
                format!("vapid t={jwt}, k={}", b64(self.key.public_key())),
            )
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .header("ttl", self.ttl_secs.to_string())
            .header("urgency", "high")
            .body(body)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(_) => return Outcome::Retry(None),
        };
        let status = resp.status();
        if status.is_success() {
            Outcome::Sent
        } else if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
            Outcome::Gone
        } else if retryable(status) {
            Outcome::Retry(retry_after(&resp))
        } else {
            Outcome::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(endpoint: &str) -> Vec<u8> {
        let key = EphemeralPrivateKey::generate(&ECDH_P256, &SystemRandom::new()).unwrap();
        let p = b64(key.compute_public_key().unwrap().as_ref());
        let a = b64(&[1u8; 16]);
        format!(r#"{{"endpoint":"{endpoint}","expirationTime":null,"keys":{{"p256dh":"{p}","auth":"{a}"}}}}"#)
            .into_bytes()
    }

    #[test]
    fn subscriptions_are_checked() {
        let s = Subscription::parse(&token("https://push.example.net/abc")).unwrap();
        assert_eq!(s.endpoint.as_str(), "https://push.example.net/abc");
        assert_eq!(format!("{s:?}"), "Subscription { .. }");
        for bad in [
            "http://push.example.net/abc",
            "https://user:pw@push.example.net/abc",
            "ftp://x",
            "not a url",
        ] {
            assert_eq!(
                Subscription::parse(&token(bad)),
                Err(SubscriptionError::Endpoint),
                "{bad}"
            );
        }
        assert_eq!(Subscription::parse(b"[1]"), Err(SubscriptionError::Token));
        // 65 bytes with the right prefix, but not a point on the curve.
        let off = format!(
            r#"{{"endpoint":"https://a.example/","keys":{{"p256dh":"{}","auth":"{}"}}}}"#,
            b64(&[4u8; 65]),
            b64(&[1u8; 16])
        );
        assert_eq!(
            Subscription::parse(off.as_bytes()),
            Err(SubscriptionError::Key { field: "p256dh" })
        );
        let short = br#"{"endpoint":"https://a.example/","keys":{"p256dh":"AAAA","auth":"AAAA"}}"#;
        assert_eq!(
            Subscription::parse(short),
            Err(SubscriptionError::Key { field: "p256dh" })
        );
    }

    #[test]
    fn only_public_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
