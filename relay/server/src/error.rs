//! The one error type of the HTTP API: a stable code, never internal text.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sotto_proto::{Body, ErrorBody, ErrorCode};

use crate::storage::StorageError;

/// An error answered to a client: an HTTP status and an [`ErrorBody`] with a stable code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppError(pub ErrorCode);

impl AppError {
    /// The HTTP status for the code.
    pub fn status(self) -> StatusCode {
        status_of(self.0)
    }
}

/// The HTTP status that goes with each code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::AUTH_REQUIRED
        | ErrorCode::AUTH_FAILED
        | ErrorCode::CHALLENGE_UNKNOWN
        | ErrorCode::CHALLENGE_EXPIRED => StatusCode::UNAUTHORIZED,
        ErrorCode::UNKNOWN_ACCOUNT | ErrorCode::UNKNOWN_DEVICE | ErrorCode::NOT_FOUND | ErrorCode::NO_PREKEYS => {
            StatusCode::NOT_FOUND
        }
        ErrorCode::STALE_DEVICE_LIST
        | ErrorCode::LIST_KEY_REVOKED
        | ErrorCode::TOO_MANY_PREKEYS
        | ErrorCode::TOKEN_SPENT
        | ErrorCode::OFFSET_MISMATCH => StatusCode::CONFLICT,
        ErrorCode::BODY_TOO_LARGE | ErrorCode::ENVELOPE_TOO_LARGE | ErrorCode::BLOB_TOO_LARGE => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        ErrorCode::RATE_LIMITED | ErrorCode::QUOTA_EXCEEDED => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::ORIGIN_NOT_ALLOWED | ErrorCode::ACCESS_DENIED | ErrorCode::TOKEN_INVALID => StatusCode::FORBIDDEN,
        ErrorCode::STORAGE_FULL => StatusCode::INSUFFICIENT_STORAGE,
        ErrorCode::BUSY | ErrorCode::TOO_MANY_CONNECTIONS | ErrorCode::SHUTTING_DOWN => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::INTERNAL => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

impl From<ErrorCode> for AppError {
    fn from(code: ErrorCode) -> Self {
        AppError(code)
    }
}

impl From<StorageError> for AppError {
    fn from(e: StorageError) -> Self {
        AppError(code_of(&e))
    }
}

/// The client-facing code of a storage error. Database failures are logged here, without
/// identifiers, and become `INTERNAL`.
pub fn code_of(e: &StorageError) -> ErrorCode {
    match e {
        StorageError::StaleDeviceList { .. } => ErrorCode::STALE_DEVICE_LIST,
        StorageError::VersionJump { .. } => ErrorCode::VERSION_JUMP,
        StorageError::ListKeyRevoked(_) => ErrorCode::LIST_KEY_REVOKED,
        StorageError::UnknownAccount => ErrorCode::UNKNOWN_ACCOUNT,
        StorageError::UnknownDevice => ErrorCode::UNKNOWN_DEVICE,
        StorageError::NoPreKeys => ErrorCode::NO_PREKEYS,
        StorageError::TooManyPreKeys { .. } => ErrorCode::TOO_MANY_PREKEYS,
        StorageError::MailboxFull => ErrorCode::MAILBOX_FULL,
        StorageError::AccessDenied => ErrorCode::ACCESS_DENIED,
        StorageError::RequestsFull => ErrorCode::REQUESTS_FULL,
        StorageError::QuotaExceeded => ErrorCode::QUOTA_EXCEEDED,
        StorageError::TokenSpent => ErrorCode::TOKEN_SPENT,
        StorageError::StorageFull => ErrorCode::STORAGE_FULL,
        other => {
            tracing::error!(error = %other, "storage failure");
            ErrorCode::INTERNAL
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (
            self.status(),
            [(header::CONTENT_TYPE, "application/octet-stream")],
            ErrorBody { code: self.0 }.encode(),
        )
            .into_response()
    }
}

/// Middleware: every error answer is an [`ErrorBody`] (§13.3). An answer with an error
/// status and no body of the relay's own (an extractor's plain-text rejection) is
/// replaced by one with the code for its status; every error answer is counted by
/// status class.
pub(crate) async fn error_bodies(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<crate::AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    state.metrics.http_errors_total.count(status.as_u16());
    let ours = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/octet-stream");
    if ours {
        return res;
    }
    let code = match status {
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => ErrorCode::NOT_FOUND,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::BODY_TOO_LARGE,
        StatusCode::UNAUTHORIZED => ErrorCode::AUTH_REQUIRED,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RATE_LIMITED,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::BUSY,
        s if s.is_server_error() => ErrorCode::INTERNAL,
        _ => ErrorCode::MALFORMED,
    };
    let (mut parts, _) = res.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    Response::from_parts(parts, axum::body::Body::from(ErrorBody { code }.encode()))
}

#[cfg(test)]
mod status_tests {
    use super::*;

    #[test]
    fn message_request_codes_have_their_statuses() {
        assert_eq!(status_of(ErrorCode::ACCESS_DENIED), StatusCode::FORBIDDEN);
        assert_eq!(status_of(ErrorCode::REQUESTS_FULL), StatusCode::BAD_REQUEST);
        assert!(ErrorCode::REQUESTS_FULL.is_retryable() && !ErrorCode::ACCESS_DENIED.is_retryable());
    }

    #[test]
    fn blob_codes_have_their_statuses() {
        for (code, status) in [
            (ErrorCode::TOKEN_INVALID, StatusCode::FORBIDDEN),
            (ErrorCode::TOKEN_SPENT, StatusCode::CONFLICT),
            (ErrorCode::BLOB_TOO_LARGE, StatusCode::PAYLOAD_TOO_LARGE),
            (ErrorCode::QUOTA_EXCEEDED, StatusCode::TOO_MANY_REQUESTS),
            (ErrorCode::STORAGE_FULL, StatusCode::INSUFFICIENT_STORAGE),
            (ErrorCode::OFFSET_MISMATCH, StatusCode::CONFLICT),
        ] {
            assert_eq!(status_of(code), status, "{code:?}");
        }
    }
}
