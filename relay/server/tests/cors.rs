//! CORS over real sockets: preflights are answered, every response to an allowed origin
//! (errors included) carries `Access-Control-Allow-Origin`, credentials are never
//! allowed, and a restricted list refuses other origins on HTTP and on the WebSocket
//! while native clients (no `Origin`) are unaffected. CORS does not depend on the
//! storage backend, so this runs on SQLite only.

mod common;

use common::relay::*;
use common::*;
use hyper::{HeaderMap, Method, StatusCode};
use sotto_proto::{Body, DeviceListBody, ErrorCode, Frame};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const PAGE: &str = "http://127.0.0.1:5173";
const OTHER: &str = "https://elsewhere.example";

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn allow_origin(&self) -> Option<&str> {
        self.header("access-control-allow-origin")
    }

    /// A comma-separated header as a lowercase list.
    fn list(&self, name: &str) -> Vec<String> {
        self.header(name)
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// One HTTP/1.1 request with the given headers over a fresh connection.
async fn request(relay: &Relay, method: Method, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Answer {
    let (status, headers, body) = relay.request(method, path, headers, body).await;
    Answer { status, headers, body }
}

/// A browser's preflight for a `method` request from `origin` with the API's headers.
async fn preflight(relay: &Relay, origin: &str, method: &str, path: &str) -> Answer {
    request(
        relay,
        Method::OPTIONS,
        path,
        &[
            ("origin", origin),
            ("access-control-request-method", method),
            ("access-control-request-headers", "authorization,content-type"),
        ],
        vec![],
    )
    .await
}

fn assert_preflight_ok(a: &Answer, method: &str, allow_origin: &str) {
    assert!(a.status.is_success(), "preflight answered {}", a.status);
    assert_eq!(a.allow_origin(), Some(allow_origin));
    assert!(
        a.list("access-control-allow-methods")
            .contains(&method.to_ascii_lowercase())
    );
    let headers = a.list("access-control-allow-headers");
    assert!(headers.contains(&"authorization".to_owned()), "{headers:?}");
    assert!(headers.contains(&"content-type".to_owned()), "{headers:?}");
    let max_age: u64 = a.header("access-control-max-age").unwrap().parse().unwrap();
    assert!(max_age > 0);
    assert_eq!(a.header("access-control-allow-credentials"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_origin_by_default() {
    let url = sqlite_url();
    let mut relay = Relay::start(&url, |_| {}).await;
    let octets = ("content-type", "application/octet-stream");

    // Preflights for every method the web client uses, on real routes.
    for (method, path) in [
        ("PUT", "/v1/prekeys"),
        ("GET", "/v1/auth/challenge"),
        ("PUT", "/v1/accounts/x/device-list"),
        ("GET", "/v1/prekeys/count"),
        ("DELETE", "/v1/push"),
    ] {
        assert_preflight_ok(&preflight(&relay, PAGE, method, path).await, method, "*");
    }

    // Successes carry the header.
    let a = request(&relay, Method::GET, "/v1/auth/challenge", &[("origin", PAGE)], vec![]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.allow_origin(), Some("*"));
    assert_eq!(a.header("access-control-allow-credentials"), None);

    let mut r = rng(70);
    let alice = account(&mut r, 1);
    let body = DeviceListBody {
        signed_list: alice.list.signed().as_bytes().to_vec(),
    }
    .encode();
    let path = format!("/v1/accounts/{}/device-list", alice.id());
    let a = request(&relay, Method::PUT, &path, &[("origin", PAGE), octets], body).await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(a.allow_origin(), Some("*"));

    // Authenticated, as a browser would send it.
    let auth = relay
        .auth(&alice.devices[0], &Method::GET, "/v1/prekeys/count", &[])
        .await;
    let a = request(
        &relay,
        Method::GET,
        "/v1/prekeys/count",
        &[("origin", PAGE), ("authorization", &auth)],
        vec![],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.allow_origin(), Some("*"));

    // Errors carry it too, so a page can read the error code.
    let too_big = vec![1u8; relay.state.config.limits.max_body_bytes + 1];
    for (method, path, body, status, code) in [
        (Method::GET, "/v1/prekeys/count", vec![], 401, ErrorCode::AUTH_REQUIRED),
        (
            Method::GET,
            "/v1/accounts/nope/device-list",
            vec![],
            400,
            ErrorCode::MALFORMED,
        ),
        (Method::GET, "/v1/nowhere", vec![], 404, ErrorCode::NOT_FOUND),
        (Method::PUT, "/v1/prekeys", vec![1, 2, 3], 401, ErrorCode::AUTH_REQUIRED),
        (Method::PUT, path.as_str(), too_big, 413, ErrorCode::BODY_TOO_LARGE),
    ] {
        let a = request(&relay, method.clone(), path, &[("origin", PAGE), octets], body).await;
        assert_eq!(a.status.as_u16(), status, "{method} {path}");
        assert_eq!(error_code(&a.body), code, "{method} {path}");
        assert_eq!(a.allow_origin(), Some("*"), "{method} {path}");
    }
    // A method the route does not have is refused by the router, still with the header.
    let a = request(
        &relay,
        Method::DELETE,
        "/v1/auth/challenge",
        &[("origin", PAGE)],
        vec![],
    )
    .await;
    assert!(a.status.is_client_error());
    assert_eq!(a.allow_origin(), Some("*"));

    // Native clients send no Origin and get no CORS headers.
    let a = request(&relay, Method::GET, "/healthz", &[], vec![]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.allow_origin(), None);

    // The WebSocket upgrade from a page works.
    let mut req = format!("ws://{}/v1/ws", relay.addr).into_client_request().unwrap();
    req.headers_mut().insert("origin", PAGE.parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(matches!(recv(&mut ws).await, Frame::Challenge(_)));
    drop(ws);

    relay.stop().await;
    remove_sqlite(&url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_origins() {
    let url = sqlite_url();
    let mut relay = Relay::start(&url, |c| {
        c.cors_allowed_origins = vec![PAGE.to_owned(), "https://chat.example.org".to_owned()];
    })
    .await;

    // A listed origin is echoed, with Vary: Origin for caches.
    let a = preflight(&relay, PAGE, "PUT", "/v1/prekeys").await;
    assert_preflight_ok(&a, "PUT", PAGE);
    assert!(a.list("vary").contains(&"origin".to_owned()));
    let a = request(&relay, Method::GET, "/v1/auth/challenge", &[("origin", PAGE)], vec![]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.allow_origin(), Some(PAGE));
    assert!(a.list("vary").contains(&"origin".to_owned()));
    let a = request(&relay, Method::GET, "/v1/nowhere", &[("origin", PAGE)], vec![]).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.allow_origin(), Some(PAGE));

    // Another origin is refused: preflight, plain request and WebSocket.
    for origin in [OTHER, "http://127.0.0.1:5174", "null"] {
        let a = preflight(&relay, origin, "PUT", "/v1/prekeys").await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{origin}");
        assert_eq!(error_code(&a.body), ErrorCode::ORIGIN_NOT_ALLOWED);
        assert_eq!(a.allow_origin(), None);
        assert_eq!(a.header("access-control-allow-methods"), None);
        let a = request(&relay, Method::GET, "/v1/auth/challenge", &[("origin", origin)], vec![]).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{origin}");
        assert_eq!(error_code(&a.body), ErrorCode::ORIGIN_NOT_ALLOWED);
        assert_eq!(a.allow_origin(), None);
    }
    let mut req = format!("ws://{}/v1/ws", relay.addr).into_client_request().unwrap();
    req.headers_mut().insert("origin", OTHER.parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::FORBIDDEN);
            assert_eq!(
                error_code(resp.body().as_deref().unwrap()),
                ErrorCode::ORIGIN_NOT_ALLOWED
            );
        }
        other => panic!("the upgrade from {OTHER} was not refused: {other:?}"),
    }

    // Native clients (no Origin) are unaffected, on HTTP and on the WebSocket.
    let a = request(&relay, Method::GET, "/v1/auth/challenge", &[], vec![]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.allow_origin(), None);
    let (ws, _) = relay.open().await;
    hang_up(ws).await;

    relay.stop().await;
    remove_sqlite(&url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_origin_allowed() {
    let url = sqlite_url();
    let mut relay = Relay::start(&url, |c| c.cors_allowed_origins = vec![]).await;
    let a = preflight(&relay, PAGE, "GET", "/v1/auth/challenge").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.allow_origin(), None);
    assert_eq!(relay.get("/v1/auth/challenge").await.0, StatusCode::OK);
    relay.stop().await;
    remove_sqlite(&url);
}
