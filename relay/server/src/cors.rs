//! CORS, so that web pages on other origins can use the HTTP API and the WebSocket.
//!
//! ```text
//! no Origin header                     → handled as usual, no CORS headers (native clients)
//! Origin not in cors_allowed_origins   → 403 ORIGIN_NOT_ALLOWED, no CORS headers
//! OPTIONS + Access-Control-Request-Method (a preflight)
//!                                      → 204 with Allow-Origin, Allow-Methods, Allow-Headers, Max-Age
//! anything else                        → handled as usual, plus Access-Control-Allow-Origin
//! ```
//! Allow-Origin is `*` when the list holds `"*"`, else the request's origin echoed with
//! `Vary: Origin`. Credentials are never allowed: the API authenticates each request by
//! a signature in `Authorization` and uses no cookies, so there is nothing ambient for a
//! page to borrow. Browsers do not apply CORS to WebSockets; they send `Origin` on the
//! upgrade, and the same check refuses a disallowed one.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sotto_proto::ErrorCode;

use crate::error::AppError;

/// The methods the API uses.
const ALLOW_METHODS: &str = "GET, PUT, DELETE";
/// The request headers the API reads beyond the CORS-safelisted ones.
const ALLOW_HEADERS: &str = "authorization, content-type";
/// How long a browser may cache a preflight answer, seconds (Chromium caps it at 7200).
const MAX_AGE: &str = "7200";

/// The allowed origins, from `Config::cors_allowed_origins`.
#[derive(Clone, Debug)]
pub(crate) struct Cors {
    any: bool,
    origins: Vec<String>,
}

impl Cors {
    pub(crate) fn new(allowed: &[String]) -> Arc<Self> {
        Arc::new(Self {
            any: allowed.iter().any(|o| o == "*"),
            origins: allowed.iter().filter(|o| *o != "*").cloned().collect(),
        })
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, or `None` when it is not
    /// allowed.
    fn allow(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        if self.any {
            return Some(HeaderValue::from_static("*"));
        }
        let o = origin.to_str().ok()?;
        self.origins.iter().any(|a| a == o).then(|| origin.clone())
    }

    /// `Vary: Origin` whenever the answer depends on the origin.
    fn vary(&self, headers: &mut HeaderMap) {
        if !self.any {
            headers.append(header::VARY, HeaderValue::from_static("origin"));
        }
    }
}

/// The middleware (`axum::middleware::from_fn_with_state`).
pub(crate) async fn cors(State(cors): State<Arc<Cors>>, req: Request, next: Next) -> Response {
    let Some(origin) = req.headers().get(header::ORIGIN).cloned() else {
        let mut res = next.run(req).await;
        cors.vary(res.headers_mut());
        return res;
    };
    let Some(allow) = cors.allow(&origin) else {
        let mut res = AppError(ErrorCode::ORIGIN_NOT_ALLOWED).into_response();
        cors.vary(res.headers_mut());
        return res;
    };
    let preflight =
        req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut res = if preflight {
        let mut res = StatusCode::NO_CONTENT.into_response();
        let h = res.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE));
        res
    } else {
        next.run(req).await
    };
    res.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    cors.vary(res.headers_mut());
    res
}
