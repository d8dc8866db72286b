//! The relay transport (native): HTTP requests with per-request challenge
//! authentication, and the authenticated WebSocket (docs/protocol.md §13).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sotto_crypto::{AccountId, Device, DeviceId, PreKeyBundle};
use sotto_proto::{
    AuthResponse, Body, Bundles, Challenge, DeviceListBody, ErrorBody, ErrorCode, Frame, PreKeyCounts, PreKeyUpload,
    authorization_header,
};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The largest HTTP answer read (a full bundle list is about 100 KiB).
const MAX_RESPONSE: usize = 1 << 20;
/// The largest WebSocket message accepted (the relay's default `max_frame_bytes`).
pub const MAX_FRAME: usize = 4 << 20;
/// How long one HTTP exchange or the WebSocket handshake may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// A transport failure.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The URL is not `https://host[:port]` or `http://host:port`.
    #[error("relay URL must look like https://host[:port] or http://host:port")]
    BadUrl,
    /// An extra root certificate given in the options is not a PEM certificate.
    #[error("an extra root certificate does not parse")]
    BadRootCertificate,
    /// Connecting, reading or writing failed.
    #[error("network: {0}")]
    Io(String),
    /// The exchange took longer than [`REQUEST_TIMEOUT`].
    #[error("the relay did not answer in time")]
    Timeout,
    /// The relay answered with an error.
    #[error("relay error {status}: {code}")]
    Relay {
        /// The HTTP status (0 on the WebSocket).
        status: u16,
        /// The relay's error code.
        code: ErrorCode,
    },
    /// The answer does not decode.
    #[error("unexpected answer from the relay: {0}")]
    Protocol(String),
    /// A challenge names another relay.
    #[error("the relay's challenge names another relay")]
    WrongRelay,
}

impl TransportError {
    /// True when trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Io(_) | Self::Timeout => true,
            Self::Relay { code, .. } => code.is_retryable(),
            Self::BadUrl | Self::BadRootCertificate | Self::Protocol(_) | Self::WrongRelay => false,
        }
    }
}

fn io(e: impl std::fmt::Display) -> TransportError {
    TransportError::Io(e.to_string())
}

/// A relay: its base URL, the derived relay id and, for `https://`, its TLS settings.
#[derive(Clone, Debug)]
pub struct Relay {
    url: String,
    authority: String,
    relay_id: [u8; 32],
    tls: Option<Tls>,
}

/// TLS 1.3 to an `https://` relay: the Mozilla root set (webpki-roots) plus any extra
/// roots the app configured, e.g. a self-hosted relay's private CA.
#[derive(Clone)]
struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish_non_exhaustive()
    }
}

fn tls_connector(extra_roots_pem: &[Vec<u8>]) -> Result<TlsConnector, TransportError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for pem in extra_roots_pem {
        let mut any = false;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|_| TransportError::BadRootCertificate)?;
            roots.add(cert).map_err(|_| TransportError::BadRootCertificate)?;
            any = true;
        }
        if !any {
            return Err(TransportError::BadRootCertificate);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|_| TransportError::BadRootCertificate)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A connection to the relay, plain or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Relay {
    /// `url` exactly as the relay's `public_url` is configured, e.g.
    /// `https://relay.example.org` or, on loopback, `http://127.0.0.1:8080`.
    pub fn new(url: &str) -> Result<Self, TransportError> {
        Self::with_roots(url, &[])
    }

    /// As [`Relay::new`], also trusting the PEM root certificates `extra_roots_pem` for
    /// an `https://` relay.
    pub fn with_roots(url: &str, extra_roots_pem: &[Vec<u8>]) -> Result<Self, TransportError> {
        let url = url.trim_end_matches('/');
        let (authority, tls) = if let Some(rest) = url.strip_prefix("https://") {
            (rest, true)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (rest, false)
        } else {
            return Err(TransportError::BadUrl);
        };
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(TransportError::BadUrl);
        }
        // host[:port], the host possibly a bracketed IPv6 address.
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => (h, Some(p)),
            _ => (authority, None),
        };
        if port.is_some_and(|p| p.parse::<u16>().is_err()) || host.is_empty() {
            return Err(TransportError::BadUrl);
        }
        let port = match (port, tls) {
            (Some(p), _) => p,
            (None, true) => "443",
            (None, false) => "80",
        };
        let host_name = host.trim_start_matches('[').trim_end_matches(']');
        let tls = if tls {
            let name = ServerName::try_from(host_name.to_owned()).map_err(|_| TransportError::BadUrl)?;
            Some(Tls {
                connector: tls_connector(extra_roots_pem)?,
                name,
            })
        } else {
            None
        };
        Ok(Self {
            url: url.to_owned(),
            authority: format!("{host}:{port}"),
            relay_id: sotto_proto::relay_id(url),
            tls,
        })
    }

    /// Opens a TCP connection (TCP_NODELAY) and, for `https://`, the TLS session.
    async fn open_stream(&self) -> Result<Stream, TransportError> {
        let tcp = TcpStream::connect(&self.authority).await.map_err(io)?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some(tls) => {
                let stream = tls.connector.connect(tls.name.clone(), tcp).await.map_err(io)?;
                Ok(Stream::Tls(Box::new(stream)))
            }
        }
    }

    /// The WebSocket URL.
    fn ws_url(&self) -> String {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}/v1/ws", self.authority)
    }

    async fn open_ws(&self) -> Result<WebSocketStream<Stream>, TransportError> {
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(MAX_FRAME);
        config.max_frame_size = Some(MAX_FRAME);
        let stream = self.open_stream().await?;
        let (ws, _) = tokio_tungstenite::client_async_with_config(self.ws_url(), stream, Some(config))
            .await
            .map_err(io)?;
        Ok(ws)
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn http(
        &self,
        method: Method,
        path: &str,
        auth: Option<String>,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Vec<u8>), TransportError> {
        let exchange = async {
            let stream = self.open_stream().await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(io)?;
            let conn = tokio::spawn(conn);
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header("host", &self.authority)
                .header("content-type", "application/octet-stream");
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let req = req.body(Full::new(Bytes::from(body))).map_err(io)?;
            let resp = sender.send_request(req).await.map_err(io)?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(io)?
                .to_bytes()
                .to_vec();
            conn.abort();
            Ok((status, bytes))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| TransportError::Timeout)?
    }

    async fn expect(
        &self,
        method: Method,
        path: &str,
        auth: Option<String>,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, TransportError> {
        let (status, bytes) = self.http(method, path, auth, body).await?;
        if status.is_success() {
            return Ok(bytes);
        }
        let code = ErrorBody::decode(&bytes).map(|b| b.code).unwrap_or(ErrorCode::INTERNAL);
        Err(TransportError::Relay {
            status: status.as_u16(),
            code,
        })
    }

    fn check_challenge(&self, c: &Challenge) -> Result<(), TransportError> {
        if c.relay_id != self.relay_id {
            return Err(TransportError::WrongRelay);
        }
        Ok(())
    }

    fn answer(device: &Device, c: &Challenge) -> AuthResponse {
        AuthResponse {
            account_id: device.account_id(),
            device_id: device.device_id(),
            nonce: c.nonce,
            signature: device.sign_relay_auth(&c.relay_id, &c.nonce, c.timestamp_ms),
        }
    }

    /// An `Authorization` header answering a fresh HTTP challenge.
    pub async fn authorization(&self, device: &Device) -> Result<String, TransportError> {
        let body = self.expect(Method::GET, "/v1/auth/challenge", None, Vec::new()).await?;
        let c = Challenge::decode(&body).map_err(|e| TransportError::Protocol(e.to_string()))?;
        self.check_challenge(&c)?;
        Ok(authorization_header(&Self::answer(device, &c)))
    }

    /// Registers or replaces an account's device list.
    pub async fn put_device_list(&self, account: &AccountId, signed: &[u8]) -> Result<(), TransportError> {
        let body = DeviceListBody {
            signed_list: signed.to_vec(),
        }
        .encode();
        self.expect(Method::PUT, &format!("/v1/accounts/{account}/device-list"), None, body)
            .await
            .map(|_| ())
    }

    /// The latest device list the relay stores for an account (not yet verified).
    pub async fn get_device_list(&self, account: &AccountId) -> Result<Vec<u8>, TransportError> {
        let body = self
            .expect(
                Method::GET,
                &format!("/v1/accounts/{account}/device-list"),
                None,
                Vec::new(),
            )
            .await?;
        DeviceListBody::decode(&body)
            .map(|b| b.signed_list)
            .map_err(|e| TransportError::Protocol(e.to_string()))
    }

    /// Uploads prekeys for `device`.
    pub async fn put_prekeys(&self, device: &Device, upload: &PreKeyUpload) -> Result<(), TransportError> {
        let auth = self.authorization(device).await?;
        self.expect(Method::PUT, "/v1/prekeys", Some(auth), upload.encode())
            .await
            .map(|_| ())
    }

    /// How many prekeys the relay holds for `device`.
    pub async fn prekey_counts(&self, device: &Device) -> Result<PreKeyCounts, TransportError> {
        let auth = self.authorization(device).await?;
        let body = self
            .expect(Method::GET, "/v1/prekeys/count", Some(auth), Vec::new())
            .await?;
        PreKeyCounts::decode(&body).map_err(|e| TransportError::Protocol(e.to_string()))
    }

    /// One device's prekey bundle (consumes a one-time prekey on the relay).
    pub async fn bundle(
        &self,
        device: &Device,
        account: &AccountId,
        of: DeviceId,
    ) -> Result<Vec<PreKeyBundle>, TransportError> {
        let auth = self.authorization(device).await?;
        let body = self
            .expect(
                Method::GET,
                &format!("/v1/accounts/{account}/bundles/{}", of.0),
                Some(auth),
                Vec::new(),
            )
            .await?;
        Bundles::decode(&body)
            .map(|b| b.bundles)
            .map_err(|e| TransportError::Protocol(e.to_string()))
    }

    /// Opens the WebSocket and authenticates as `device`.
    pub async fn connect(&self, device: &Device) -> Result<Socket, TransportError> {
        let handshake = async {
            let ws = self.open_ws().await?;
            let mut socket = Socket {
                ws,
                last_seen: tokio::time::Instant::now(),
            };
            let c = match socket.recv().await? {
                Some(Frame::Challenge(c)) => c,
                other => return Err(TransportError::Protocol(format!("expected a challenge, got {other:?}"))),
            };
            self.check_challenge(&c)?;
            socket.send(&Frame::AuthResponse(Self::answer(device, &c))).await?;
            match socket.recv().await? {
                Some(Frame::AuthOk) => Ok(socket),
                Some(Frame::Error { code }) => Err(TransportError::Relay { status: 0, code }),
                other => Err(TransportError::Protocol(format!("expected AuthOk, got {other:?}"))),
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, handshake)
            .await
            .map_err(|_| TransportError::Timeout)?
    }
}

impl Relay {
    /// Opens an anonymous connection (sealed sender, docs/protocol.md §13.8): the
    /// challenge is read and not answered; the first frame sent must be a `Send`. Such a
    /// connection only sends; its device-set rule wants every device of each account named.
    pub async fn connect_anonymous(&self) -> Result<Socket, TransportError> {
        let handshake = async {
            let ws = self.open_ws().await?;
            let mut socket = Socket {
                ws,
                last_seen: tokio::time::Instant::now(),
            };
            match socket.recv().await? {
                Some(Frame::Challenge(c)) => self.check_challenge(&c)?,
                other => return Err(TransportError::Protocol(format!("expected a challenge, got {other:?}"))),
            }
            Ok(socket)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, handshake)
            .await
            .map_err(|_| TransportError::Timeout)?
    }

    /// Sends one `Send` on a fresh anonymous connection and returns the relay's answer.
    pub async fn send_anonymous(&self, send: sotto_proto::Send) -> Result<sotto_proto::SendOutcome, TransportError> {
        let mut socket = self.connect_anonymous().await?;
        let exchange = async {
            let id = send.message_id;
            socket.send(&Frame::Send(send)).await?;
            loop {
                match socket.recv().await? {
                    Some(Frame::SendResult(r)) if r.message_id == id => {
                        socket.close().await;
                        return Ok(r.outcome);
                    }
                    Some(Frame::Error { code }) => return Err(TransportError::Relay { status: 0, code }),
                    Some(_) => {}
                    None => return Err(TransportError::Io("connection closed".into())),
                }
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| TransportError::Timeout)?
    }
}

/// An authenticated WebSocket to the relay.
pub struct Socket {
    ws: WebSocketStream<Stream>,
    last_seen: tokio::time::Instant,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket").finish_non_exhaustive()
    }
}

impl Socket {
    /// Sends one frame.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), TransportError> {
        self.ws.send(Message::Binary(frame.encode().into())).await.map_err(io)
    }

    /// Sends a WebSocket ping (the client side of the heartbeat).
    pub async fn ping(&mut self) -> Result<(), TransportError> {
        self.ws.send(Message::Ping(Bytes::new())).await.map_err(io)
    }

    /// The next frame; `None` when the relay closed the socket. Pings are answered by
    /// the WebSocket library; pongs and pings are skipped here.
    pub async fn recv(&mut self) -> Result<Option<Frame>, TransportError> {
        loop {
            let next = self.ws.next().await;
            self.last_seen = tokio::time::Instant::now();
            match next {
                None => return Ok(None),
                Some(Err(e)) => return Err(io(e)),
                Some(Ok(Message::Binary(b))) => {
                    return Frame::decode(&b)
                        .map(Some)
                        .map_err(|e| TransportError::Protocol(e.to_string()));
                }
                Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(_)) => {}
            }
        }
    }

    /// When anything (a frame, a ping or a pong) last arrived.
    pub fn last_seen(&self) -> tokio::time::Instant {
        self.last_seen
    }

    /// Closes the socket.
    pub async fn close(&mut self) {
        let _ = self.ws.close(None).await;
    }
}
