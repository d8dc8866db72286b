//! A relay on 127.0.0.1:0 and a minimal client: hyper for HTTP, tokio-tungstenite for
//! the WebSocket.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use sotto_crypto::AccountId;
use sotto_proto::{AuthResponse, Body, Challenge, DeviceListBody, ErrorBody, ErrorCode, Frame, authorization_header};
use sotto_relay::storage::Store;
use sotto_relay::{AppState, Config};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{TestAccount, TestDevice};

/// A failsafe so a broken test fails instead of hanging; tests never wait on it.
pub const FAILSAFE: Duration = Duration::from_secs(20);

/// The `/metrics` bearer token of test relays.
pub const METRICS_TOKEN: &str = "test-metrics-token";

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A relay reached by its address only: one in this process ([`Relay`] derefs to it) or
/// a `sotto-relay` process.
pub struct Endpoint {
    pub addr: SocketAddr,
}

pub struct Relay {
    endpoint: Endpoint,
    pub state: Arc<AppState>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
}

impl Relay {
    pub async fn start(url: &str, tweak: impl FnOnce(&mut Config)) -> Relay {
        let mut config = Config::default();
        config.metrics_token = Some(sotto_relay::config::MetricsToken(METRICS_TOKEN.to_owned()));
        tweak(&mut config);
        let store = Store::open(url, 8).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = AppState::new(config, store);
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(sotto_relay::run(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        Relay {
            endpoint: Endpoint { addr },
            state,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// Triggers graceful shutdown and waits for `run` to return.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(FAILSAFE, h).await.unwrap().unwrap().unwrap();
        }
    }

    /// An `Authorization` header answering a fresh HTTP challenge for the request
    /// `method path` with `body`.
    pub async fn auth(&self, d: &TestDevice, method: &Method, path: &str, body: &[u8]) -> String {
        let (status, bytes) = self.get("/v1/auth/challenge").await;
        assert_eq!(status, StatusCode::OK);
        let c = Challenge::decode(&bytes).unwrap();
        assert_eq!(c.relay_id, self.state.relay_id);
        authorization_header(&AuthResponse {
            account_id: d.account_id(),
            device_id: d.id(),
            nonce: c.nonce,
            signature: d.sign_http(&c, method.as_str(), path, body),
        })
    }

    /// The request `method path` with `body`, authenticated as `d`.
    pub async fn authed(&self, d: &TestDevice, method: Method, path: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        let auth = self.auth(d, &method, path, &body).await;
        self.http(method, path, Some(auth), body).await
    }
}

impl std::ops::Deref for Relay {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Endpoint {
    /// One HTTP/1.1 request with exactly `headers` (plus `host`) over a fresh connection:
    /// the status, the response headers and the body.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (StatusCode, hyper::HeaderMap, Vec<u8>) {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = tokio::time::timeout(
            FAILSAFE,
            sender.send_request(req.body(Full::new(Bytes::from(body))).unwrap()),
        )
        .await
        .expect("answer within the failsafe")
        .unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
        (status, headers, bytes)
    }

    pub async fn http(&self, method: Method, path: &str, auth: Option<String>, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        let mut headers = vec![("content-type", "application/octet-stream")];
        if let Some(a) = &auth {
            headers.push(("authorization", a));
        }
        let (status, _, bytes) = self.request(method, path, &headers, body).await;
        (status, bytes)
    }

    /// Scrapes `/metrics` with the test token.
    pub async fn metrics(&self) -> String {
        let auth = format!("Bearer {METRICS_TOKEN}");
        let (status, _, body) = self
            .request(Method::GET, "/metrics", &[("authorization", &auth)], vec![])
            .await;
        assert_eq!(status, StatusCode::OK);
        String::from_utf8(body).unwrap()
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Vec<u8>) {
        self.http(Method::GET, path, None, vec![]).await
    }

    pub async fn register(&self, a: &TestAccount) -> StatusCode {
        self.put_list(&a.id(), a.list.signed().as_bytes()).await.0
    }

    pub async fn put_list(&self, account: &AccountId, list: &[u8]) -> (StatusCode, Vec<u8>) {
        let body = DeviceListBody {
            signed_list: list.to_vec(),
        }
        .encode();
        self.http(Method::PUT, &format!("/v1/accounts/{account}/device-list"), None, body)
            .await
    }

    /// Opens a WebSocket and returns it with the challenge.
    pub async fn open(&self) -> (Ws, Challenge) {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", self.addr))
            .await
            .unwrap();
        match recv(&mut ws).await {
            Frame::Challenge(c) => (ws, c),
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    /// Opens a WebSocket that will send anonymously: the challenge is read and ignored;
    /// the first frame sent must be a `Send`.
    pub async fn open_anonymous(&self) -> Ws {
        self.open().await.0
    }

    /// Opens a WebSocket and authenticates as `d`.
    pub async fn connect(&self, d: &TestDevice) -> Ws {
        let (mut ws, c) = self.open().await;
        send(&mut ws, &answer(d, &c)).await;
        self.finish_connect(ws).await
    }

    /// Reads the `AuthOk` of a just-answered challenge.
    pub async fn finish_connect(&self, mut ws: Ws) -> Ws {
        assert!(matches!(recv(&mut ws).await, Frame::AuthOk { .. }));
        ws
    }

    /// Opens a WebSocket, authenticates as `d` and returns the mailbox epoch with it.
    pub async fn connect_epoch(&self, d: &TestDevice) -> (Ws, [u8; 16]) {
        let (mut ws, c) = self.open().await;
        send(&mut ws, &answer(d, &c)).await;
        match recv(&mut ws).await {
            Frame::AuthOk { mailbox_epoch } => (ws, mailbox_epoch),
            other => panic!("expected AuthOk, got {other:?}"),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn answer(d: &TestDevice, c: &Challenge) -> Frame {
    Frame::AuthResponse(AuthResponse {
        account_id: d.account_id(),
        device_id: d.id(),
        nonce: c.nonce,
        signature: d.sign_challenge(c),
    })
}

pub async fn send(ws: &mut Ws, f: &Frame) {
    ws.send(Message::Binary(f.encode().into())).await.unwrap();
}

/// The next sotto frame (pings and pongs skipped).
pub async fn recv(ws: &mut Ws) -> Frame {
    loop {
        let m = tokio::time::timeout(FAILSAFE, ws.next())
            .await
            .expect("no frame within the failsafe")
            .expect("socket closed")
            .expect("socket error");
        match m {
            Message::Binary(b) => return Frame::decode(&b).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// Waits for the socket to close (after any frames).
pub async fn closed(ws: &mut Ws) {
    loop {
        match tokio::time::timeout(FAILSAFE, ws.next()).await.expect("not closed") {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
            Some(Ok(_)) => {}
        }
    }
}

/// Closes the socket and waits until the relay has closed its side. The relay reads a
/// connection's frames in order, so every frame sent before (an ack, say) has been handled
/// by then; a reconnect right after a plain drop may race a still-unread ack.
pub async fn hang_up(mut ws: Ws) {
    let _ = ws.close(None).await;
    closed(&mut ws).await;
}

pub fn error_code(body: &[u8]) -> ErrorCode {
    ErrorBody::decode(body).unwrap().code
}

/// Connects `d`, takes every stored envelope (acking each, so the delivery window never
/// stalls) until `QueueEmpty`, and returns (seq, envelope) in delivery order once the
/// acks are applied.
pub async fn drain(relay: &Endpoint, d: &TestDevice) -> Vec<(u64, Vec<u8>)> {
    let mut ws = relay.connect(d).await;
    let mut got = Vec::new();
    loop {
        match recv(&mut ws).await {
            Frame::Deliver(e) => {
                send(&mut ws, &Frame::Ack { seq: e.seq }).await;
                got.push((e.seq, e.envelope));
            }
            Frame::QueueEmpty => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    // Acks have no answer; an ack ahead of the deliveries does, so once it comes back
    // every earlier ack has been applied.
    send(&mut ws, &Frame::Ack { seq: u64::MAX }).await;
    assert_eq!(
        recv(&mut ws).await,
        Frame::Error {
            code: sotto_proto::ErrorCode::ACK_AHEAD
        }
    );
    hang_up(ws).await;
    got
}
