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
        ErrorCode::STALE_DEVICE_LIST | ErrorCode::TOO_MANY_PREKEYS => StatusCode::CONFLICT,
        ErrorCode::BODY_TOO_LARGE | ErrorCode::ENVELOPE_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RATE_LIMITED => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::ORIGIN_NOT_ALLOWED => StatusCode::FORBIDDEN,
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
        StorageError::UnknownAccount => ErrorCode::UNKNOWN_ACCOUNT,
        StorageError::UnknownDevice => ErrorCode::UNKNOWN_DEVICE,
        StorageError::NoPreKeys => ErrorCode::NO_PREKEYS,
        StorageError::TooManyPreKeys { .. } => ErrorCode::TOO_MANY_PREKEYS,
        StorageError::MailboxFull => ErrorCode::MAILBOX_FULL,
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
