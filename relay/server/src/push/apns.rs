//! APNs over HTTP/2 with token-based authentication ("Sending notification requests to
//! APNs", "Establishing a token-based connection to APNs", developer.apple.com).
//!
//! ```text
//! POST {endpoint}/3/device/{hex device token}
//! authorization: bearer JWT(ES256, {"alg":"ES256","kid":key_id}, {"iss":team_id,"iat":now})
//! apns-topic: {topic}   apns-push-type: alert   apns-priority: 10   apns-expiration: {now + ttl}
//! {"aps":{"alert":{"loc-key":"SOTTO_NEW_MESSAGE"},"mutable-content":1}}
//! ```
//! The JWT is reused for [`TOKEN_LIFETIME`] (Apple refuses one older than an hour and
//! throttles one renewed more often than every 20 minutes).

use std::sync::Mutex;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::time::Instant;

use super::jwt::EsKey;
use super::{ApnsConfig, Outcome, PushConfig, PushError, body_capped, read, retry_after, retryable, unix_now};

/// The constant payload: it wakes the app's Notification Service Extension, which fetches
/// and decrypts; nothing about the sender, the conversation or the content.
pub(crate) const PAYLOAD: &str = r#"{"aps":{"alert":{"loc-key":"SOTTO_NEW_MESSAGE"},"mutable-content":1}}"#;

/// How long one provider token is used.
const TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);

const PRODUCTION: &str = "https://api.push.apple.com";
const SANDBOX: &str = "https://api.sandbox.push.apple.com";

pub(crate) struct Apns {
    client: reqwest::Client,
    key: EsKey,
    key_id: String,
    team_id: String,
    topic: String,
    endpoint: String,
    expiration_secs: u64,
    token: Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for Apns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apns")
            .field("endpoint", &self.endpoint)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Apns {
    pub(crate) fn load(cfg: &PushConfig, a: &ApnsConfig) -> Result<Self, PushError> {
        let key = EsKey::from_pem(&read(&a.key_file)?, "push.apns.key_file")?;
        let endpoint = match &a.endpoint {
            Some(e) => e.trim_end_matches('/').to_owned(),
            None if a.sandbox => SANDBOX.to_owned(),
            None => PRODUCTION.to_owned(),
        };
        Ok(Self {
            client: super::client(cfg, true, false)?,
            key,
            key_id: a.key_id.clone(),
            team_id: a.team_id.clone(),
            topic: a.topic.clone(),
            endpoint,
            expiration_secs: a.expiration_secs,
            token: Mutex::new(None),
        })
    }

    /// The provider token, signed anew when the cached one is [`TOKEN_LIFETIME`] old.
    fn bearer(&self) -> Result<String, PushError> {
        let mut cached = super::lock(&self.token);
        if let Some((t, made)) = cached.as_ref()
            && made.elapsed() < TOKEN_LIFETIME
        {
            return Ok(t.clone());
        }
        let t = self.key.sign(
            &json!({"alg": "ES256", "kid": self.key_id}),
            &json!({"iss": self.team_id, "iat": unix_now()}),
        )?;
        *cached = Some((t.clone(), Instant::now()));
        Ok(t)
    }

    #[cfg(test)]
    pub(crate) fn bearer_for_test(&self) -> Result<String, PushError> {
        self.bearer()
    }

    pub(crate) async fn send(&self, device_token: &[u8]) -> Outcome {
        let Ok(bearer) = self.bearer() else {
            return Outcome::Failed;
        };
        let hex: String = device_token.iter().map(|b| format!("{b:02x}")).collect();
        let resp = self
            .client
            .post(format!("{}/3/device/{hex}", self.endpoint))
            .header("authorization", format!("bearer {bearer}"))
            .header("apns-topic", &self.topic)
            .header("apns-push-type", "alert")
            .header("apns-priority", "10")
            .header(
                "apns-expiration",
                unix_now().saturating_add(self.expiration_secs).to_string(),
            )
            .header("content-type", "application/json")
            .body(PAYLOAD)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(_) => return Outcome::Retry(None),
        };
        let status = resp.status();
        if status.is_success() {
            return Outcome::Sent;
        }
        if status == StatusCode::GONE {
            return Outcome::Gone;
        }
        if retryable(status) {
            return Outcome::Retry(retry_after(&resp));
        }
        let body = body_capped(resp, 4096).await;
        let reason = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_owned))
            .unwrap_or_default();
        match (status, reason.as_str()) {
            (StatusCode::BAD_REQUEST, "BadDeviceToken" | "Unregistered") => Outcome::Gone,
            (StatusCode::FORBIDDEN, "ExpiredProviderToken" | "InvalidProviderToken") => {
                // Sign a new token and try again.
                *super::lock(&self.token) = None;
                Outcome::Retry(None)
            }
            _ => Outcome::Failed,
        }
    }
}
