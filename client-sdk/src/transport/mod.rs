//! The relay transport: HTTP requests with per-request challenge authentication, and
//! the authenticated and anonymous WebSockets (docs/protocol.md §13). The protocol logic
//! is here; the bytes move through a backend: tokio, rustls, hyper and tungstenite on
//! native targets (`native.rs`), the platform's `fetch` and `WebSocket` on wasm32
//! (`web.rs`).

use std::time::Duration;

use sotto_crypto::{AccountId, Device, DeviceId, PreKeyBundle};
use sotto_proto::{
    AuthResponse, Body, Bundles, Challenge, DeviceListBody, ErrorBody, ErrorCode, Frame, PreKeyCounts, PreKeyUpload,
    authorization_header,
};
use thiserror::Error;

use crate::rt;

#[cfg(feature = "native")]
mod native;
#[cfg(feature = "native")]
use native::{Endpoint, Ws};
#[cfg(all(feature = "web", not(feature = "native")))]
mod web;
#[cfg(all(feature = "web", not(feature = "native")))]
use web::{Endpoint, Ws};

/// The largest HTTP answer read (a full bundle list is about 100 KiB).
const MAX_RESPONSE: usize = 1 << 20;
/// The most blob bytes one request moves: an upload piece, or one range of a download
/// (the relay's `MAX_BLOB_PIECE`, docs/protocol.md §16.4).
pub const BLOB_PIECE: usize = sotto_proto::limits::MAX_BLOB_PIECE;

/// What a request adds to method, path, authorization and body.
pub(crate) struct Extra {
    /// A `Range: bytes=first-last` header (both inclusive).
    range: Option<(u64, u64)>,
    /// The largest answer body read.
    max_response: usize,
}

impl Extra {
    const NONE: Extra = Extra {
        range: None,
        max_response: MAX_RESPONSE,
    };
}
/// The largest WebSocket message accepted (the relay's default `max_frame_bytes`).
pub const MAX_FRAME: usize = 4 << 20;
/// How long one HTTP exchange or the WebSocket handshake may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// A transport failure.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The URL is not `https://host[:port]` or `http://host[:port]`.
    #[error("relay URL must look like https://host[:port] or http://host[:port]")]
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
    /// A plain `http://` URL for a host that is not loopback (127.0.0.0/8, `::1`,
    /// `localhost`): only `https://` may leave the machine.
    #[error("plain http:// is allowed only for a loopback relay; use https://")]
    InsecureUrl,
}

impl TransportError {
    /// True when trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Io(_) | Self::Timeout => true,
            Self::Relay { code, .. } => code.is_retryable(),
            Self::BadUrl | Self::BadRootCertificate | Self::Protocol(_) | Self::WrongRelay | Self::InsecureUrl => false,
        }
    }
}

/// True for a loopback host: `localhost`, an IPv4 address in 127.0.0.0/8 or `[::1]`
/// (the hosts the relay itself serves plain HTTP to).
fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok_and(|a| a.is_loopback());
    }
    host.parse::<std::net::Ipv4Addr>().is_ok_and(|a| a.is_loopback())
}

/// The HTTP methods the relay API uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Put,
    Delete,
}

impl Method {
    /// The method's name on the wire, as the HTTP auth binding signs it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// A relay: its base URL, the derived relay id and how to reach it (for `https://`, the
/// TLS settings).
#[derive(Clone, Debug)]
pub struct Relay {
    url: String,
    relay_id: [u8; 32],
    endpoint: Endpoint,
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
        if !tls && !is_loopback(host) {
            return Err(TransportError::InsecureUrl);
        }
        let port = match (port, tls) {
            (Some(p), _) => p,
            (None, true) => "443",
            (None, false) => "80",
        };
        Ok(Self {
            url: url.to_owned(),
            relay_id: sotto_proto::relay_id(url),
            endpoint: Endpoint::new(host, port, tls, extra_roots_pem)?,
        })
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
    ) -> Result<(u16, Vec<u8>), TransportError> {
        self.http_with(method, path, auth, body, &Extra::NONE).await
    }

    async fn http_with(
        &self,
        method: Method,
        path: &str,
        auth: Option<String>,
        body: Vec<u8>,
        extra: &Extra,
    ) -> Result<(u16, Vec<u8>), TransportError> {
        rt::timeout(REQUEST_TIMEOUT, self.endpoint.request(method, path, auth, body, extra))
            .await
            .map_err(|_| TransportError::Timeout)?
    }

    fn check(status: u16, bytes: Vec<u8>) -> Result<Vec<u8>, TransportError> {
        if (200..300).contains(&status) {
            return Ok(bytes);
        }
        let code = ErrorBody::decode(&bytes).map(|b| b.code).unwrap_or(ErrorCode::INTERNAL);
        Err(TransportError::Relay { status, code })
    }

    fn decode<B: Body>(bytes: &[u8]) -> Result<B, TransportError> {
        B::decode(bytes).map_err(|e| TransportError::Protocol(e.to_string()))
    }

    /// The blob store's current token issuer (`GET /v1/blobs/issuer`, docs/protocol.md
    /// §16.4): unauthenticated.
    pub async fn blob_issuer(&self) -> Result<sotto_proto::BlobIssuer, TransportError> {
        let bytes = self.expect(Method::Get, "/v1/blobs/issuer", None, Vec::new()).await?;
        Self::decode(&bytes)
    }

    /// Upload tokens for `device` (`PUT /v1/blobs/tokens`): the relay signs the blinded
    /// elements and charges them to the device's daily quota.
    pub async fn issue_blob_tokens(
        &self,
        device: &Device,
        request: &sotto_proto::TokenIssue,
    ) -> Result<sotto_proto::TokenIssued, TransportError> {
        let body = request.encode();
        let auth = self
            .authorization(device, Method::Put, "/v1/blobs/tokens", &body)
            .await?;
        let bytes = self.expect(Method::Put, "/v1/blobs/tokens", Some(auth), body).await?;
        Self::decode(&bytes)
    }

    /// Creates a blob of `length` bytes, paid with an unlinkable token (`PUT /v1/blobs`):
    /// unauthenticated, on a connection of its own, so it names no device.
    pub async fn create_blob(&self, create: &sotto_proto::BlobCreate) -> Result<[u8; 32], TransportError> {
        let bytes = self.expect(Method::Put, "/v1/blobs", None, create.encode()).await?;
        Self::decode::<sotto_proto::BlobCreated>(&bytes).map(|c| c.id)
    }

    /// Uploads the piece of blob `id` that starts at `offset`
    /// (`PUT /v1/blobs/{id}/{offset}`); the answer says how much the relay holds.
    pub async fn put_blob_piece(
        &self,
        id: &[u8; 32],
        offset: u64,
        piece: Vec<u8>,
    ) -> Result<sotto_proto::BlobStatus, TransportError> {
        let path = format!("/v1/blobs/{}/{offset}", crate::client::hex(id));
        let bytes = self.expect(Method::Put, &path, None, piece).await?;
        Self::decode(&bytes)
    }

    /// How much of blob `id` the relay holds (`GET /v1/blobs/{id}/status`), to resume an
    /// upload.
    pub async fn blob_status(&self, id: &[u8; 32]) -> Result<sotto_proto::BlobStatus, TransportError> {
        let path = format!("/v1/blobs/{}/status", crate::client::hex(id));
        let bytes = self.expect(Method::Get, &path, None, Vec::new()).await?;
        Self::decode(&bytes)
    }

    /// Bytes `start .. start + len` of the complete blob `id` (`GET /v1/blobs/{id}` with a
    /// `Range`), at most [`BLOB_PIECE`] of them. Anything but exactly those bytes is an
    /// error.
    pub async fn get_blob_range(&self, id: &[u8; 32], start: u64, len: usize) -> Result<Vec<u8>, TransportError> {
        if len == 0 || len > BLOB_PIECE {
            return Err(TransportError::Protocol("a blob range of 1 to BLOB_PIECE bytes".into()));
        }
        let path = format!("/v1/blobs/{}", crate::client::hex(id));
        let extra = Extra {
            range: Some((start, start + len as u64 - 1)),
            max_response: BLOB_PIECE.max(MAX_RESPONSE),
        };
        let (status, bytes) = self.http_with(Method::Get, &path, None, Vec::new(), &extra).await?;
        let bytes = Self::check(status, bytes)?;
        // 206 with the range; a 200 (the whole blob) is accepted only when that is the range.
        if !(status == 206 || (status == 200 && start == 0)) || bytes.len() != len {
            return Err(TransportError::Protocol("the relay answered another range".into()));
        }
        Ok(bytes)
    }

    async fn expect(
        &self,
        method: Method,
        path: &str,
        auth: Option<String>,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, TransportError> {
        let (status, bytes) = self.http(method, path, auth, body).await?;
        Self::check(status, bytes)
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

    /// An `Authorization` header answering a fresh HTTP challenge for one request: the
    /// signature covers the challenge bound to `method`, `path` and `body`
    /// (`sotto_proto::http_auth_binding`), so the relay accepts it for that request only.
    pub(crate) async fn authorization(
        &self,
        device: &Device,
        method: Method,
        path: &str,
        body: &[u8],
    ) -> Result<String, TransportError> {
        let bytes = self.expect(Method::Get, "/v1/auth/challenge", None, Vec::new()).await?;
        let c = Challenge::decode(&bytes).map_err(|e| TransportError::Protocol(e.to_string()))?;
        self.check_challenge(&c)?;
        let bound = sotto_proto::http_auth_binding(&c.nonce, method.as_str(), path, body);
        Ok(authorization_header(&AuthResponse {
            account_id: device.account_id(),
            device_id: device.device_id(),
            nonce: c.nonce,
            signature: device.sign_relay_auth(&c.relay_id, &bound, c.timestamp_ms),
        }))
    }

    /// Registers or replaces an account's device list.
    pub async fn put_device_list(&self, account: &AccountId, signed: &[u8]) -> Result<(), TransportError> {
        let body = DeviceListBody {
            signed_list: signed.to_vec(),
        }
        .encode();
        self.expect(Method::Put, &format!("/v1/accounts/{account}/device-list"), None, body)
            .await
            .map(|_| ())
    }

    /// The latest device list the relay stores for an account (not yet verified).
    pub async fn get_device_list(&self, account: &AccountId) -> Result<Vec<u8>, TransportError> {
        let body = self
            .expect(
                Method::Get,
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
        let body = upload.encode();
        let auth = self.authorization(device, Method::Put, "/v1/prekeys", &body).await?;
        self.expect(Method::Put, "/v1/prekeys", Some(auth), body)
            .await
            .map(|_| ())
    }

    /// Registers (or replaces) `device`'s push token (`PUT /v1/push`, docs/protocol.md
    /// §13.3): the relay sends a content-free push when an envelope waits for the device
    /// and it is not connected.
    pub async fn put_push(
        &self,
        device: &Device,
        registration: &sotto_proto::PushRegistration,
    ) -> Result<(), TransportError> {
        let body = registration.encode();
        let auth = self.authorization(device, Method::Put, "/v1/push", &body).await?;
        self.expect(Method::Put, "/v1/push", Some(auth), body).await.map(|_| ())
    }

    /// Deletes `device`'s push registration (`DELETE /v1/push`).
    pub async fn delete_push(&self, device: &Device) -> Result<(), TransportError> {
        let auth = self.authorization(device, Method::Delete, "/v1/push", &[]).await?;
        self.expect(Method::Delete, "/v1/push", Some(auth), Vec::new())
            .await
            .map(|_| ())
    }

    /// Sets the account's access verifier and request policy (`PUT /v1/access`).
    pub async fn put_access(&self, device: &Device, policy: &sotto_proto::AccessPolicy) -> Result<(), TransportError> {
        let body = policy.encode();
        let auth = self.authorization(device, Method::Put, "/v1/access", &body).await?;
        self.expect(Method::Put, "/v1/access", Some(auth), body)
            .await
            .map(|_| ())
    }

    /// Stores the account's encrypted profile (`PUT /v1/profile`, docs/protocol.md §15.9).
    pub async fn put_profile(
        &self,
        device: &Device,
        upload: &sotto_proto::ProfileUpload,
    ) -> Result<(), TransportError> {
        let body = upload.encode();
        let auth = self.authorization(device, Method::Put, "/v1/profile", &body).await?;
        self.expect(Method::Put, "/v1/profile", Some(auth), body)
            .await
            .map(|_| ())
    }

    /// An account's encrypted profile stored under `version`
    /// (`GET /v1/accounts/{account}/profile/{version}`): unauthenticated, on a connection
    /// of its own, so it names no device. `None` when the relay holds none under that
    /// version (`NOT_FOUND`).
    pub async fn get_profile(
        &self,
        account: &AccountId,
        version: &[u8; 32],
    ) -> Result<Option<Vec<u8>>, TransportError> {
        let path = format!("/v1/accounts/{account}/profile/{}", crate::client::hex(version));
        match self.expect(Method::Get, &path, None, Vec::new()).await {
            Ok(body) => sotto_proto::ProfileBody::decode(&body)
                .map(|b| Some(b.ciphertext))
                .map_err(|e| TransportError::Protocol(e.to_string())),
            Err(TransportError::Relay { code, .. }) if code == ErrorCode::NOT_FOUND => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// How many prekeys the relay holds for `device`.
    pub async fn prekey_counts(&self, device: &Device) -> Result<PreKeyCounts, TransportError> {
        let auth = self
            .authorization(device, Method::Get, "/v1/prekeys/count", &[])
            .await?;
        let body = self
            .expect(Method::Get, "/v1/prekeys/count", Some(auth), Vec::new())
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
        let path = format!("/v1/accounts/{account}/bundles/{}", of.0);
        let auth = self.authorization(device, Method::Get, &path, &[]).await?;
        let body = self.expect(Method::Get, &path, Some(auth), Vec::new()).await?;
        Bundles::decode(&body)
            .map(|b| b.bundles)
            .map_err(|e| TransportError::Protocol(e.to_string()))
    }

    /// Opens the WebSocket and authenticates as `device`.
    pub async fn connect(&self, device: &Device) -> Result<Socket, TransportError> {
        self.connect_with_epoch(device).await.map(|(s, _)| s)
    }

    /// Opens the WebSocket and authenticates as `device`; returns the socket with the
    /// mailbox epoch the relay named in `AuthOk` (docs/protocol.md §13.6).
    pub async fn connect_with_epoch(&self, device: &Device) -> Result<(Socket, [u8; 16]), TransportError> {
        self.connect_as(device, false).await
    }

    /// [`Relay::connect_with_epoch`] for the device's notification-extension process
    /// (`AuthExtension`): it never replaces the app's connection. While the app's
    /// connection is open the relay answers `DEVICE_ACTIVE`, here or as the first frame.
    pub async fn connect_extension(&self, device: &Device) -> Result<(Socket, [u8; 16]), TransportError> {
        self.connect_as(device, true).await
    }

    async fn connect_as(&self, device: &Device, extension: bool) -> Result<(Socket, [u8; 16]), TransportError> {
        let handshake = async {
            let mut socket = Socket {
                ws: self.endpoint.open_ws().await?,
                last_seen: rt::Instant::now(),
            };
            let c = match socket.recv().await? {
                Some(Frame::Challenge(c)) => c,
                other => return Err(TransportError::Protocol(format!("expected a challenge, got {other:?}"))),
            };
            self.check_challenge(&c)?;
            let answer = Self::answer(device, &c);
            let frame = if extension {
                Frame::AuthExtension(answer)
            } else {
                Frame::AuthResponse(answer)
            };
            socket.send(&frame).await?;
            match socket.recv().await? {
                Some(Frame::AuthOk { mailbox_epoch }) => Ok((socket, mailbox_epoch)),
                Some(Frame::Error { code }) => Err(TransportError::Relay { status: 0, code }),
                other => Err(TransportError::Protocol(format!("expected AuthOk, got {other:?}"))),
            }
        };
        rt::timeout(REQUEST_TIMEOUT, handshake)
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
            let mut socket = Socket {
                ws: self.endpoint.open_ws().await?,
                last_seen: rt::Instant::now(),
            };
            match socket.recv().await? {
                Some(Frame::Challenge(c)) => self.check_challenge(&c)?,
                other => return Err(TransportError::Protocol(format!("expected a challenge, got {other:?}"))),
            }
            Ok(socket)
        };
        rt::timeout(REQUEST_TIMEOUT, handshake)
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
        rt::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| TransportError::Timeout)?
    }
}

/// A WebSocket to the relay (authenticated or anonymous).
pub struct Socket {
    ws: Ws,
    last_seen: rt::Instant,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket").finish_non_exhaustive()
    }
}

impl Socket {
    /// Sends one frame.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), TransportError> {
        self.ws.send(frame.encode()).await
    }

    /// Sends a WebSocket ping (the client side of the heartbeat). Browsers cannot send
    /// pings; there the relay's pings, answered by the browser, keep the connection
    /// alive and this does nothing.
    pub async fn ping(&mut self) -> Result<(), TransportError> {
        self.ws.ping().await
    }

    /// The next frame; `None` when the relay closed the socket. Pings are answered by
    /// the WebSocket implementation; control messages are skipped here.
    pub async fn recv(&mut self) -> Result<Option<Frame>, TransportError> {
        loop {
            let next = self.ws.next().await;
            self.last_seen = rt::Instant::now();
            match next? {
                None => return Ok(None),
                Some(Some(b)) => {
                    return Frame::decode(&b)
                        .map(Some)
                        .map_err(|e| TransportError::Protocol(e.to_string()));
                }
                Some(None) => {}
            }
        }
    }

    /// How long since anything (a frame, a ping or a pong) last arrived; `None` where
    /// the platform does not report pings and pongs (browsers), so silence says nothing
    /// there: a dead connection shows as the socket closing.
    pub fn idle_for(&self) -> Option<Duration> {
        Ws::SEES_PINGS.then(|| self.last_seen.elapsed())
    }

    /// Closes the socket.
    pub async fn close(&mut self) {
        self.ws.close().await;
    }
}

#[cfg(all(test, feature = "native"))]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://127.1.2.3:80",
            "http://localhost:3000",
            "http://LOCALHOST",
            "http://[::1]:8080",
            "https://relay.example.org",
            "https://203.0.113.5:8443",
        ] {
            assert!(Relay::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://relay.example.org",
            "http://203.0.113.5:8080",
            "http://[2001:db8::1]:80",
            "http://localhost.example.org",
            "http://127.0.0.1.example.org",
            "http://0.0.0.0:8080",
            "http://[::]:8080",
            "http://[::ffff:127.0.0.1]:80",
        ] {
            assert!(matches!(Relay::new(bad), Err(TransportError::InsecureUrl)), "{bad}");
        }
        assert!(matches!(Relay::new("ftp://x"), Err(TransportError::BadUrl)));
    }
}
