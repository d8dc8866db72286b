//! The client side: identities, HTTP registration (hyper, keep-alive) and authenticated
//! WebSockets (tokio-tungstenite with a small read buffer).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sotto_crypto::{AccountId, AccountKey, Device, DeviceId};
use sotto_proto::{
    AccessKey, AccessPolicy, AuthResponse, Body, Challenge, DeviceListBody, Frame, authorization_header,
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::Fail;

/// The client read buffer. tungstenite's default (128 KiB, zero-filled) would make the
/// generator itself use over a GiB at 10,000 connections.
const CLIENT_READ_BUFFER: usize = 4 * 1024;
/// How long one connect + authenticate may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one HTTP request may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Where the relay is: its loopback socket addresses (several for a cluster, taken in
/// turn by each new connection) and the public URL its relay id is computed from.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    addrs: Arc<[SocketAddr]>,
    next: Arc<std::sync::atomic::AtomicUsize>,
    pub(crate) relay_id: [u8; 32],
}

impl Target {
    /// Parses `http://127.0.0.1:PORT`, or several such URLs separated by commas (the
    /// nodes of a cluster, which share `public_url`); refuses anything that is not a
    /// loopback address.
    pub(crate) fn new(urls: &str, public_url: &str) -> Result<Self, Fail> {
        let mut addrs = Vec::new();
        for url in urls.split(',') {
            let rest = url
                .strip_prefix("http://")
                .ok_or_else(|| Fail(format!("--url must start with http:// (got {url})")))?;
            let host = rest.split('/').next().unwrap_or_default();
            let addr: SocketAddr = host
                .parse()
                .map_err(|_| Fail(format!("--url must name IP:PORT (got {url})")))?;
            if !addr.ip().is_loopback() {
                return Err(Fail(format!("refusing a non-loopback relay address {addr}")));
            }
            addrs.push(addr);
        }
        Ok(Self {
            addrs: addrs.into(),
            next: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            relay_id: sotto_proto::relay_id(public_url),
        })
    }

    /// The address for the next connection: the nodes in turn.
    pub(crate) fn addr(&self) -> SocketAddr {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.addrs[i % self.addrs.len()]
    }
}

/// One account with one device.
pub(crate) struct Identity {
    pub(crate) device: Device,
    pub(crate) signed_list: Vec<u8>,
}

impl Identity {
    pub(crate) fn account_id(&self) -> AccountId {
        self.device.account_id()
    }
}

/// `n` fresh accounts of one device each, from a seeded RNG.
pub(crate) fn identities(n: usize, seed: u64) -> Vec<Arc<Identity>> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let ak = AccountKey::generate(&mut rng);
            let device = Device::generate(ak.account_id(), DeviceId(1), &mut rng);
            let list = ak
                .sign_device_list(1, 0, vec![device.entry()])
                .expect("a one-device list is valid");
            Arc::new(Identity {
                device,
                signed_list: list.signed().as_bytes().to_vec(),
            })
        })
        .collect()
}

/// A keep-alive HTTP/1 connection.
struct Http {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Http {
    async fn connect(addr: SocketAddr) -> Result<Self, Fail> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| Fail(format!("connect: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Fail(format!("http handshake: {e}")))?;
        tokio::spawn(conn);
        Ok(Self { sender })
    }

    async fn request(
        &mut self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Vec<u8>), Fail> {
        self.request_with(addr, method, path, None, body).await
    }

    async fn request_with(
        &mut self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        authorization: Option<String>,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Vec<u8>), Fail> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string())
            .header("content-type", "application/octet-stream");
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Fail(format!("request: {e}")))?;
        let fut = async {
            self.sender.ready().await.map_err(|e| Fail(format!("http: {e}")))?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| Fail(format!("http: {e}")))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| Fail(format!("http body: {e}")))?
                .to_bytes()
                .to_vec();
            Ok((status, bytes))
        };
        tokio::time::timeout(HTTP_TIMEOUT, fut)
            .await
            .map_err(|_| Fail("http request timed out".into()))?
    }
}

/// Waits (at most `wait`) until `GET /healthz` answers.
pub(crate) async fn wait_healthy(target: &Target, wait: Duration) -> Result<(), Fail> {
    let deadline = tokio::time::Instant::now() + wait;
    for &addr in target.addrs.iter() {
        loop {
            if let Ok(mut http) = Http::connect(addr).await
                && let Ok((StatusCode::OK, _)) = http.request(addr, Method::GET, "/healthz", vec![]).await
            {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Fail(format!("relay at {addr} not healthy within {wait:?}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// The relay's `/metrics` text from its `metrics_listen` address, or `None`.
pub(crate) async fn metrics_text(addr: SocketAddr) -> Option<String> {
    let mut http = Http::connect(addr).await.ok()?;
    match http.request(addr, Method::GET, "/metrics", vec![]).await {
        Ok((StatusCode::OK, body)) => String::from_utf8(body).ok(),
        _ => None,
    }
}

/// Sets each account's access verifier (`PUT /v1/access`, authenticated by a fresh
/// challenge), over `workers` keep-alive connections, so that sends presenting the key
/// take the relay's access check. Fails on the first answer that is not 204.
pub(crate) async fn set_access_all(
    target: &Target,
    ids: &[(Arc<Identity>, [u8; 32])],
    workers: usize,
) -> Result<(), Fail> {
    let workers = workers.clamp(1, 64);
    let chunk = ids.len().div_ceil(workers).max(1);
    let mut tasks = Vec::new();
    for part in ids.chunks(chunk) {
        let part = part.to_vec();
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let addr = target.addr();
            let mut http = Http::connect(addr).await?;
            for (id, key) in part {
                let (status, body) = http.request(addr, Method::GET, "/v1/auth/challenge", vec![]).await?;
                if status != StatusCode::OK {
                    return Err(Fail(format!("challenge answered {status}")));
                }
                let c = Challenge::decode(&body).map_err(|e| Fail(format!("challenge: {e}")))?;
                let policy = AccessPolicy {
                    verifier: AccessKey(key).verifier(),
                    accept_requests: true,
                }
                .encode();
                let bound = sotto_proto::http_auth_binding(&c.nonce, "PUT", "/v1/access", &policy);
                let auth = authorization_header(&AuthResponse {
                    account_id: id.account_id(),
                    device_id: id.device.device_id(),
                    nonce: c.nonce,
                    signature: id.device.sign_relay_auth(&target.relay_id, &bound, c.timestamp_ms),
                });
                let (status, _) = http
                    .request_with(addr, Method::PUT, "/v1/access", Some(auth), policy)
                    .await?;
                if status != StatusCode::NO_CONTENT {
                    return Err(Fail(format!("access answered {status}")));
                }
            }
            Ok::<(), Fail>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| Fail(format!("access task: {e}")))??;
    }
    Ok(())
}

/// Registers every account (`PUT /v1/accounts/{id}/device-list`) over `workers` keep-alive
/// connections. Fails on the first answer that is not 201 Created.
pub(crate) async fn register_all(target: &Target, ids: &[Arc<Identity>], workers: usize) -> Result<(), Fail> {
    let workers = workers.clamp(1, 64);
    let chunk = ids.len().div_ceil(workers).max(1);
    let mut tasks = Vec::new();
    for part in ids.chunks(chunk) {
        let part: Vec<Arc<Identity>> = part.to_vec();
        let addr = target.addr();
        tasks.push(tokio::spawn(async move {
            let mut http = Http::connect(addr).await?;
            for id in part {
                let body = DeviceListBody {
                    signed_list: id.signed_list.clone(),
                }
                .encode();
                let path = format!("/v1/accounts/{}/device-list", id.account_id());
                let (status, _) = match http.request(addr, Method::PUT, &path, body.clone()).await {
                    Ok(r) => r,
                    Err(_) => {
                        // One reconnect, then give up.
                        http = Http::connect(addr).await?;
                        http.request(addr, Method::PUT, &path, body).await?
                    }
                };
                if status != StatusCode::CREATED {
                    return Err(Fail(format!("registration answered {status}")));
                }
            }
            Ok::<(), Fail>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| Fail(format!("registration task: {e}")))??;
    }
    Ok(())
}

/// Sends one frame.
pub(crate) async fn send_frame<S>(ws: &mut S, frame: &Frame) -> Result<(), Fail>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    ws.send(Message::Binary(frame.encode().into()))
        .await
        .map_err(|e| Fail(format!("ws send: {e}")))
}

/// The next sotto frame, skipping pings and pongs; `None` when the socket closed.
pub(crate) async fn next_frame<S>(ws: &mut S) -> Result<Option<Frame>, Fail>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match ws.next().await {
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Err(e)) => return Err(Fail(format!("ws: {e}"))),
            Some(Ok(Message::Binary(b))) => {
                return Frame::decode(&b).map(Some).map_err(|e| Fail(format!("bad frame: {e}")));
            }
            Some(Ok(_)) => {}
        }
    }
}

/// Opens a WebSocket and authenticates as `id`. Returns after `AuthOk`; delivery frames
/// (the backlog, `QueueEmpty`) follow on the socket.
pub(crate) async fn connect(target: &Target, id: &Identity) -> Result<Ws, Fail> {
    tokio::time::timeout(CONNECT_TIMEOUT, connect_inner(target, id))
        .await
        .map_err(|_| Fail("connect + auth timed out".into()))?
}

async fn connect_inner(target: &Target, id: &Identity) -> Result<Ws, Fail> {
    let addr = target.addr();
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| Fail(format!("tcp connect: {e}")))?;
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default()
        .read_buffer_size(CLIENT_READ_BUFFER)
        .write_buffer_size(0);
    let (mut ws, _) = client_async_with_config(format!("ws://{addr}/v1/ws"), stream, Some(config))
        .await
        .map_err(|e| Fail(format!("ws handshake: {e}")))?;
    let challenge = match next_frame(&mut ws).await? {
        Some(Frame::Challenge(c)) => c,
        other => return Err(Fail(format!("expected a challenge, got {other:?}"))),
    };
    if challenge.relay_id != target.relay_id {
        return Err(Fail(
            "the relay id does not match --public-url (start the relay with the same --public-url)".into(),
        ));
    }
    let answer = Frame::AuthResponse(AuthResponse {
        account_id: id.account_id(),
        device_id: id.device.device_id(),
        nonce: challenge.nonce,
        signature: id
            .device
            .sign_relay_auth(&challenge.relay_id, &challenge.nonce, challenge.timestamp_ms),
    });
    send_frame(&mut ws, &answer).await?;
    match next_frame(&mut ws).await? {
        Some(Frame::AuthOk { .. }) => Ok(ws),
        other => Err(Fail(format!("expected AuthOk, got {other:?}"))),
    }
}

/// Connects with up to `tries` attempts, a random back-off of up to 200 ms between them.
pub(crate) async fn connect_retry(
    target: &Target,
    id: &Identity,
    tries: u32,
    rng: &mut impl RngCore,
) -> Result<Ws, Fail> {
    let mut last = Fail("no attempt".into());
    for _ in 0..tries.max(1) {
        match connect(target, id).await {
            Ok(ws) => return Ok(ws),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(rng.next_u64() % 200)).await;
    }
    Err(last)
}
