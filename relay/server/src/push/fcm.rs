//! Firebase Cloud Messaging, HTTP v1 API ("Send messages using the HTTP v1 API",
//! firebase.google.com/docs/cloud-messaging), authorized with OAuth 2.0 for a service
//! account ("Using OAuth 2.0 for Server to Server Applications", developers.google.com).
//!
//! ```text
//! POST {token_uri}   grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=JWT(RS256,
//!                    {"iss":client_email,"scope":".../auth/firebase.messaging","aud":token_uri,
//!                     "iat":now,"exp":now+3600})
//!   → {"access_token":…, "expires_in":…}   (kept until a minute before it expires)
//! POST {endpoint}/v1/projects/{project_id}/messages:send   authorization: Bearer {access_token}
//! {"message":{"token":T,"data":{"sotto":"1"},"android":{"priority":"HIGH"}}}
//! ```

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::jwt::RsKey;
use super::{FcmConfig, Outcome, PushConfig, PushError, body_capped, read, retry_after, retryable, unix_now};

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
const DEFAULT_ENDPOINT: &str = "https://fcm.googleapis.com";
/// An access token is renewed this long before it expires.
const EARLY: Duration = Duration::from_secs(60);

/// The fields of the service account key file that are used.
#[derive(Deserialize)]
struct ServiceAccount {
    client_email: String,
    #[serde(deserialize_with = "secret")]
    private_key: Zeroizing<String>,
    token_uri: String,
    project_id: String,
}

/// A string that is zeroized when dropped.
fn secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Zeroizing<String>, D::Error> {
    String::deserialize(d).map(Zeroizing::new)
}

pub(crate) struct Fcm {
    client: reqwest::Client,
    key: RsKey,
    client_email: String,
    token_uri: String,
    project_id: String,
    endpoint: String,
    access: tokio::sync::Mutex<Option<(Zeroizing<String>, Instant)>>,
}

impl std::fmt::Debug for Fcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fcm")
            .field("endpoint", &self.endpoint)
            .field("project_id", &self.project_id)
            .finish_non_exhaustive()
    }
}

/// What the token endpoint answered.
enum Token {
    Ok(Zeroizing<String>),
    Retry(Option<Duration>),
    Failed,
}

impl Fcm {
    pub(crate) fn load(cfg: &PushConfig, f: &FcmConfig) -> Result<Self, PushError> {
        let file = read(&f.service_account_file)?;
        let sa: ServiceAccount = serde_json::from_slice(&file).map_err(|_| PushError::ServiceAccount)?;
        if !sa.token_uri.starts_with("https://") || sa.project_id.is_empty() || sa.client_email.is_empty() {
            return Err(PushError::ServiceAccount);
        }
        let key = RsKey::from_pem(sa.private_key.as_bytes(), "the FCM service account's private_key")?;
        Ok(Self {
            client: super::client(cfg, false, false)?,
            key,
            client_email: sa.client_email,
            token_uri: sa.token_uri,
            project_id: sa.project_id,
            endpoint: f
                .endpoint
                .as_deref()
                .unwrap_or(DEFAULT_ENDPOINT)
                .trim_end_matches('/')
                .to_owned(),
            access: tokio::sync::Mutex::new(None),
        })
    }

    /// The cached access token, or a new one from the token endpoint.
    async fn access_token(&self) -> Token {
        let mut cached = self.access.lock().await;
        if let Some((t, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Token::Ok(t.clone());
        }
        let iat = unix_now();
        let Ok(assertion) = self.key.sign(
            &json!({"alg": "RS256", "typ": "JWT"}),
            &json!({"iss": self.client_email, "scope": SCOPE, "aud": self.token_uri, "iat": iat, "exp": iat + 3600}),
        ) else {
            return Token::Failed;
        };
        // The assertion is base64url and dots: nothing to escape.
        let form = format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}");
        let resp = match self
            .client
            .post(&self.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
        {
            Ok(r) => r,
            Err(_) => return Token::Retry(None),
        };
        let status = resp.status();
        if retryable(status) {
            return Token::Retry(retry_after(&resp));
        }
        if !status.is_success() {
            tracing::warn!(
                status = status.as_u16(),
                "push: the FCM token endpoint refused the service account"
            );
            return Token::Failed;
        }
        #[derive(Deserialize)]
        struct Answer {
            #[serde(deserialize_with = "secret")]
            access_token: Zeroizing<String>,
            expires_in: u64,
        }
        let Ok(a) = serde_json::from_slice::<Answer>(&body_capped(resp, 64 * 1024).await) else {
            return Token::Retry(None);
        };
        // At most a day (Google's tokens last an hour): a huge `expires_in` cannot overflow
        // the clock.
        let until = Instant::now() + Duration::from_secs(a.expires_in.min(86_400)).saturating_sub(EARLY);
        *cached = Some((a.access_token.clone(), until));
        Token::Ok(a.access_token)
    }

    pub(crate) async fn send(&self, token: &[u8]) -> Outcome {
        let Ok(token) = std::str::from_utf8(token) else {
            return Outcome::Gone;
        };
        let access = match self.access_token().await {
            Token::Ok(t) => t,
            Token::Retry(after) => return Outcome::Retry(after),
            Token::Failed => return Outcome::Failed,
        };
        let body = json!({"message": {"token": token, "data": {"sotto": "1"}, "android": {"priority": "HIGH"}}});
        let resp = self
            .client
            .post(format!(
                "{}/v1/projects/{}/messages:send",
                self.endpoint, self.project_id
            ))
            .header("authorization", format!("Bearer {}", access.as_str()))
            .header("content-type", "application/json")
            .body(body.to_string())
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
        if retryable(status) {
            return Outcome::Retry(retry_after(&resp));
        }
        if status == StatusCode::UNAUTHORIZED {
            *self.access.lock().await = None;
            return Outcome::Retry(None);
        }
        let body = body_capped(resp, 64 * 1024).await;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let error = &v["error"];
        let code = error["details"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|d| d["errorCode"].as_str())
            .or_else(|| error["status"].as_str())
            .unwrap_or_default();
        match (status, code) {
            // Only the token varies between our messages: INVALID_ARGUMENT is the token.
            (StatusCode::NOT_FOUND, _) | (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT") => Outcome::Gone,
            (_, "UNREGISTERED") => Outcome::Gone,
            _ => Outcome::Failed,
        }
    }
}
