//! The WebSocket under each connection: the opening handshake (RFC 6455 §4.2) on hyper's
//! upgrade, and `sotto_proto::websocket`'s framing over the upgraded stream.
//!
//! An idle connection holds no buffer. Bytes are read into a buffer that is given back as
//! soon as a read finds nothing waiting and no unfinished frame is left in it, and frames
//! are written from a buffer that is given back once written out. What a connection keeps
//! while it waits for its client is its task's state and the kernel's socket.
//!
//! A ping is answered with a pong, and a close frame with a close frame that echoes its
//! code (§5.5.2, §5.5.1). A framing error ends the stream with a [`SocketError::Ws`],
//! whose [`SocketError::close_code`] the handler closes with.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::{Sink, Stream};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use sha1::{Digest as _, Sha1};
use sotto_proto::websocket::{self, CloseFrame, Decoded, Decoder, Message, WsError, close_code};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::net::BudgetExceeded;

/// The least a read asks for, and the most: a larger frame is read in several reads.
const READ_MIN: usize = 4 * 1024;
const READ_MAX: usize = 64 * 1024;

/// Control answers (pongs) queued beyond what is not yet written are dropped: a client
/// that pings without reading gets no more of them (§5.5.3 allows answering only the
/// latest ping).
const MAX_QUEUED_CONTROL: usize = 1024;

/// Why a WebSocket's stream ended in error, or a write failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SocketError {
    /// The client broke the framing rules or a size limit.
    #[error(transparent)]
    Ws(#[from] WsError),
    /// The connection failed, or its read went over a byte budget.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A frame was sent after the close frame.
    #[error("the websocket is closed")]
    Closed,
}

impl SocketError {
    /// The close code to answer with when the relay ended the connection (a framing error,
    /// a message too large, a byte budget); `None` when the connection just failed.
    pub(crate) fn close_code(&self) -> Option<u16> {
        match self {
            Self::Ws(e) => Some(e.close_code()),
            Self::Io(e) if e.get_ref().is_some_and(|e| e.is::<BudgetExceeded>()) => Some(close_code::POLICY),
            _ => None,
        }
    }
}

/// Why an upgrade request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not a WebSocket opening handshake (method, HTTP version, headers, or no upgrade).
    NotWebSocket,
    /// `Sec-WebSocket-Version` is not 13; the answer names 13 (§4.4).
    Version,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut res = crate::AppError(sotto_proto::ErrorCode::MALFORMED).into_response();
        if self == Refused::Version {
            res.headers_mut()
                .insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        res
    }
}

/// A checked WebSocket opening handshake, to be answered with [`Upgrade::accept`].
pub(crate) struct Upgrade {
    accept: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Whether a comma-separated header holds `token`, in any case (RFC 9110 §5.6.1).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (§4.2.2).
pub(crate) fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(websocket::ACCEPT_GUID);
    BASE64.encode(h.finalize())
}

impl Upgrade {
    /// Checks `req` as an opening handshake (§4.2.1) and takes its upgrade.
    pub(crate) fn from_request(req: &mut Request) -> Result<Self, Refused> {
        let h = req.headers();
        if req.method() != Method::GET
            || req.version() != Version::HTTP_11
            || !has_token(h, header::CONNECTION, "upgrade")
            || !has_token(h, header::UPGRADE, "websocket")
        {
            return Err(Refused::NotWebSocket);
        }
        if h.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
            return Err(Refused::Version);
        }
        let key = h.get(header::SEC_WEBSOCKET_KEY).ok_or(Refused::NotWebSocket)?;
        // The key is the base64 of 16 random bytes.
        if BASE64.decode(key.as_bytes()).map(|k| k.len()) != Ok(16) {
            return Err(Refused::NotWebSocket);
        }
        let accept = HeaderValue::from_str(&accept_key(key.as_bytes())).map_err(|_| Refused::NotWebSocket)?;
        let on_upgrade = req
            .extensions_mut()
            .remove::<OnUpgrade>()
            .ok_or(Refused::NotWebSocket)?;
        Ok(Self { accept, on_upgrade })
    }

    /// Answers `101 Switching Protocols` and, once hyper hands over the connection, runs
    /// `serve` on it on a task of its own, with messages bounded by `max_message` bytes.
    pub(crate) fn accept<F, Fut>(self, max_message: usize, serve: F) -> Response
    where
        F: FnOnce(WebSocket<TokioIo<Upgraded>>) -> Fut + std::marker::Send + 'static,
        Fut: Future<Output = ()> + std::marker::Send + 'static,
    {
        let Self { accept, on_upgrade } = self;
        tokio::spawn(async move {
            // An upgrade that fails (the client went away) ends here; `serve` and what it
            // holds are dropped. Otherwise the connection gets a task of its own, which
            // holds `serve`'s future and nothing else for as long as the connection lives.
            if let Ok(upgraded) = on_upgrade.await {
                tokio::spawn(serve(WebSocket::new(TokioIo::new(upgraded), max_message)));
            }
        });
        let mut res = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = res.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        res
    }
}

/// A WebSocket over `T`: a [`Stream`] of the client's messages and a [`Sink`] for the
/// relay's. Each message the sink takes is written before the next is taken.
pub(crate) struct WebSocket<T> {
    io: T,
    decoder: Decoder,
    /// Bytes read; those before `rpos` are decoded.
    rbuf: Vec<u8>,
    rpos: usize,
    /// Frames to write; those before `wpos` are written.
    wbuf: Vec<u8>,
    wpos: usize,
    /// A close frame came, the stream ended or failed: nothing more is read.
    read_done: bool,
    /// A close frame was queued: nothing more is sent.
    close_sent: bool,
}

impl<T> WebSocket<T> {
    /// A WebSocket on an already upgraded stream.
    pub(crate) fn new(io: T, max_message: usize) -> Self {
        Self {
            io,
            decoder: Decoder::new(max_message),
            rbuf: Vec::new(),
            rpos: 0,
            wbuf: Vec::new(),
            wpos: 0,
            read_done: false,
            close_sent: false,
        }
    }

    /// The bytes the read and write buffers hold allocated.
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        (self.rbuf.capacity(), self.wbuf.capacity())
    }

    fn queue(&mut self, message: &Message) -> Result<(), WsError> {
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        websocket::encode(message, &mut self.wbuf)
    }

    /// Nothing more is read (a close frame came, or the stream ended or failed): the read
    /// buffer is given back.
    fn stop_reading(&mut self) {
        self.read_done = true;
        self.rbuf = Vec::new();
        self.rpos = 0;
    }

    /// Queues the answer to a ping or a close frame.
    fn answer(&mut self, message: &Message) {
        match message {
            Message::Ping(p) if self.wbuf.len() - self.wpos + p.len() <= MAX_QUEUED_CONTROL => {
                let _ = self.queue(&Message::Pong(p.clone()));
            }
            Message::Close(c) if !self.close_sent => {
                self.close_sent = true;
                let echo = c.as_ref().map(|c| CloseFrame {
                    code: c.code,
                    reason: String::new(),
                });
                let _ = self.queue(&Message::Close(echo));
            }
            _ => {}
        }
    }
}

impl<T: AsyncWrite + Unpin> WebSocket<T> {
    /// Writes out the queued frames, then gives the buffer back.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        self.wbuf = Vec::new();
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> WebSocket<T> {
    /// Reads at least one byte (`Ok(0)`: the stream ended) for a frame that needs `need`
    /// more. A read that finds nothing gives the buffer back if nothing is left in it.
    fn poll_fill(&mut self, cx: &mut Context<'_>, need: usize) -> Poll<io::Result<usize>> {
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        let len = self.rbuf.len();
        self.rbuf.resize(len + need.clamp(READ_MIN, READ_MAX), 0);
        let mut rb = ReadBuf::new(&mut self.rbuf[len..]);
        let r = Pin::new(&mut self.io).poll_read(cx, &mut rb);
        let n = rb.filled().len();
        self.rbuf.truncate(len + n);
        match r {
            Poll::Pending => {
                if self.rbuf.is_empty() {
                    self.rbuf = Vec::new();
                }
                Poll::Pending
            }
            Poll::Ready(r) => Poll::Ready(r.map(|()| n)),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Stream for WebSocket<T> {
    type Item = Result<Message, SocketError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.read_done {
            return Poll::Ready(None);
        }
        // Answers queued by earlier reads go out while the handler reads.
        if this.wpos < this.wbuf.len()
            && let Poll::Ready(Err(e)) = this.poll_write_out(cx)
        {
            this.stop_reading();
            return Poll::Ready(Some(Err(e.into())));
        }
        loop {
            match this.decoder.decode(&this.rbuf[this.rpos..]) {
                Err(e) => {
                    this.stop_reading();
                    return Poll::Ready(Some(Err(e.into())));
                }
                Ok(Decoded::Fragment { consumed }) => this.rpos += consumed,
                Ok(Decoded::Message { consumed, message }) => {
                    this.rpos += consumed;
                    if this.rpos == this.rbuf.len() {
                        this.rbuf.clear();
                        this.rpos = 0;
                    }
                    this.answer(&message);
                    if matches!(message, Message::Close(_)) {
                        this.stop_reading();
                    }
                    if this.wpos < this.wbuf.len() {
                        // Best effort; what does not fit the socket now goes with the
                        // next write or read.
                        let _ = this.poll_write_out(cx);
                    }
                    return Poll::Ready(Some(Ok(message)));
                }
                Ok(Decoded::NeedMore(need)) => match ready!(this.poll_fill(cx, need)) {
                    Ok(0) => {
                        let unfinished = this.rpos < this.rbuf.len() || this.decoder.in_message();
                        this.stop_reading();
                        return Poll::Ready(
                            unfinished.then(|| Err(io::Error::from(io::ErrorKind::UnexpectedEof).into())),
                        );
                    }
                    Ok(_) => {}
                    Err(e) => {
                        this.stop_reading();
                        return Poll::Ready(Some(Err(e.into())));
                    }
                },
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> Sink<Message> for WebSocket<T> {
    type Error = SocketError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        Poll::Ready(ready!(self.get_mut().poll_write_out(cx)).map_err(Into::into))
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), SocketError> {
        let this = self.get_mut();
        if this.close_sent {
            return Err(SocketError::Closed);
        }
        this.queue(&item)?;
        if matches!(item, Message::Close(_)) {
            this.close_sent = true;
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Poll::Ready(ready!(Pin::new(&mut this.io).poll_flush(cx)).map_err(Into::into))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        let this = self.get_mut();
        if !this.close_sent {
            this.close_sent = true;
            this.queue(&Message::Close(Some(CloseFrame {
                code: close_code::NORMAL,
                reason: String::new(),
            })))?;
        }
        ready!(this.poll_write_out(cx))?;
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        Poll::Ready(ready!(Pin::new(&mut this.io).poll_shutdown(cx)).map_err(Into::into))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
    use sotto_proto::websocket::{mask_frame, opcode};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

    use super::*;

    const MASK: [u8; 4] = [1, 2, 3, 4];

    fn pair(max: usize) -> (WebSocket<DuplexStream>, DuplexStream) {
        let (a, b) = tokio::io::duplex(1 << 20);
        (WebSocket::new(a, max), b)
    }

    fn frame(op: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        mask_frame(op, fin, payload, MASK, &mut v);
        v
    }

    /// Reads the next unmasked frame the relay wrote: (opcode, payload).
    async fn read_frame(client: &mut DuplexStream) -> (u8, Vec<u8>) {
        let mut h = [0u8; 2];
        client.read_exact(&mut h).await.unwrap();
        let len = match h[1] {
            126 => usize::from(client.read_u16().await.unwrap()),
            127 => usize::try_from(client.read_u64().await.unwrap()).unwrap(),
            n => usize::from(n),
        };
        let mut p = vec![0; len];
        client.read_exact(&mut p).await.unwrap();
        (h[0] & 0x0f, p)
    }

    #[test]
    fn accept_key_of_the_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[tokio::test]
    async fn messages_arrive_and_an_idle_socket_holds_no_buffer() {
        let (mut ws, mut client) = pair(1 << 16);
        client.write_all(&frame(opcode::BINARY, true, b"one")).await.unwrap();
        let mut two = frame(opcode::BINARY, false, &[2; 300]);
        two.extend(frame(opcode::CONTINUATION, true, &[3; 5000]));
        client.write_all(&two).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::Binary(b"one".to_vec()));
        let expected = [vec![2; 300], vec![3; 5000]].concat();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::Binary(expected));
        // Nothing more waits: the read finds nothing and the buffers are given back.
        assert!(ws.next().now_or_never().is_none());
        assert_eq!(ws.held(), (0, 0));
        // Sending holds nothing afterwards either.
        ws.send(Message::Binary(vec![9; 1000])).await.unwrap();
        assert_eq!(ws.held(), (0, 0));
        assert_eq!(read_frame(&mut client).await, (opcode::BINARY, vec![9; 1000]));
    }

    #[tokio::test]
    async fn a_frame_split_across_reads_is_kept_until_it_completes() {
        let (mut ws, mut client) = pair(1 << 16);
        let f = frame(opcode::BINARY, true, &[5; 200]);
        client.write_all(&f[..50]).await.unwrap();
        assert!(ws.next().now_or_never().is_none());
        assert!(ws.held().0 >= 50, "the unfinished frame is kept");
        client.write_all(&f[50..]).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::Binary(vec![5; 200]));
    }

    #[tokio::test]
    async fn pings_are_answered_and_closes_echoed() {
        let (mut ws, mut client) = pair(1 << 16);
        client.write_all(&frame(opcode::PING, true, b"hb")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::Ping(b"hb".to_vec()));
        assert_eq!(read_frame(&mut client).await, (opcode::PONG, b"hb".to_vec()));
        client
            .write_all(&frame(opcode::CLOSE, true, &[0x03, 0xe9, b'b', b'y', b'e']))
            .await
            .unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::Close(Some(CloseFrame {
                code: 1001,
                reason: "bye".into()
            }))
        );
        assert_eq!(read_frame(&mut client).await, (opcode::CLOSE, vec![0x03, 0xe9]));
        assert!(ws.next().await.is_none());
        assert!(matches!(
            ws.send(Message::Binary(vec![1])).await,
            Err(SocketError::Closed)
        ));
    }

    #[tokio::test]
    async fn the_relay_closing_sends_its_close_frame() {
        let (mut ws, mut client) = pair(1 << 16);
        ws.send(Message::Close(Some(CloseFrame {
            code: close_code::POLICY,
            reason: String::new(),
        })))
        .await
        .unwrap();
        ws.close().await.unwrap();
        assert_eq!(read_frame(&mut client).await, (opcode::CLOSE, vec![0x03, 0xf0]));
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "nothing after the close frame");
    }

    #[tokio::test]
    async fn framing_errors_carry_their_close_code() {
        let (mut ws, mut client) = pair(100);
        // Only the header of a frame above the limit: refused before its payload.
        let f = frame(opcode::BINARY, true, &[0; 101]);
        client.write_all(&f[..8]).await.unwrap();
        let e = ws.next().await.unwrap().unwrap_err();
        assert_eq!(e.close_code(), Some(close_code::SIZE));
        assert!(ws.next().await.is_none());

        let (mut ws, mut client) = pair(100);
        client.write_all(&[0x82, 0x01, b'x']).await.unwrap(); // unmasked
        assert_eq!(
            ws.next().await.unwrap().unwrap_err().close_code(),
            Some(close_code::PROTOCOL)
        );

        let (mut ws, mut client) = pair(100);
        client.write_all(&frame(opcode::TEXT, true, &[0xc3])).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap_err().close_code(),
            Some(close_code::INVALID)
        );
    }

    #[tokio::test]
    async fn the_end_of_the_stream_inside_a_frame_is_an_error() {
        let (mut ws, mut client) = pair(100);
        client.write_all(&frame(opcode::BINARY, true, b"whole")).await.unwrap();
        client
            .write_all(&frame(opcode::BINARY, true, b"cut")[..5])
            .await
            .unwrap();
        drop(client);
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::Binary(b"whole".to_vec()));
        let e = ws.next().await.unwrap().unwrap_err();
        assert!(matches!(&e, SocketError::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof));
        assert_eq!(e.close_code(), None);

        let (mut ws, client) = pair(100);
        drop(client);
        assert!(ws.next().await.is_none(), "a clean end between frames is the end");
    }

    #[tokio::test]
    async fn pings_from_a_client_that_does_not_read_stay_bounded() {
        // A small pipe the client never reads: pongs beyond the bound are dropped and the
        // relay keeps reading.
        let (a, mut client) = tokio::io::duplex(64);
        let mut ws = WebSocket::new(a, 1 << 16);
        let ping = frame(opcode::PING, true, &[7; 100]);
        let reader = tokio::spawn(async move {
            let mut n = 0;
            while let Some(Ok(Message::Ping(_))) = ws.next().await {
                n += 1;
                if n == 200 {
                    break;
                }
            }
            assert!(ws.wbuf.len() - ws.wpos <= MAX_QUEUED_CONTROL + 200);
            n
        });
        for _ in 0..200 {
            client.write_all(&ping).await.unwrap();
        }
        assert_eq!(reader.await.unwrap(), 200);
    }

    #[test]
    fn upgrade_requests_are_checked() {
        let req = |f: &dyn Fn(axum::http::request::Builder) -> axum::http::request::Builder| {
            let b = Request::builder()
                .method(Method::GET)
                .uri("/v1/ws")
                .version(Version::HTTP_11)
                .header(header::CONNECTION, "keep-alive, Upgrade")
                .header(header::UPGRADE, "websocket")
                .header(header::SEC_WEBSOCKET_VERSION, "13")
                .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==");
            f(b).body(axum::body::Body::empty()).unwrap()
        };
        // Every check passes but hyper attached no upgrade (no connection here).
        assert_eq!(
            Upgrade::from_request(&mut req(&|b| b)).err(),
            Some(Refused::NotWebSocket)
        );
        let mut r = req(&|b| b);
        r.headers_mut()
            .insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(Upgrade::from_request(&mut r).err(), Some(Refused::Version));
        let mut r = req(&|b| b);
        r.headers_mut()
            .insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("c2hvcnQ="));
        assert_eq!(Upgrade::from_request(&mut r).err(), Some(Refused::NotWebSocket));
        let mut r = req(&|b| b);
        r.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert_eq!(Upgrade::from_request(&mut r).err(), Some(Refused::NotWebSocket));
        let refused = Refused::Version.into_response();
        assert_eq!(refused.headers()[header::SEC_WEBSOCKET_VERSION], "13");
    }
}
