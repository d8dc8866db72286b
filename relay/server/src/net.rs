//! The accept loop and connection accounting (docs/protocol.md §13.10).
//!
//! Every TCP connection, HTTP or WebSocket, holds a place in [`Conns`]: at most
//! `max_tcp_connections` in total and `max_tcp_connections_per_addr` from one address
//! (IPv4 whole, IPv6 by /64); more are closed at accept. Each connection is served by
//! hyper's HTTP/1 server with a timer: a request head (and the idle time between
//! keep-alive requests) must arrive within `header_read_timeout_ms`.
//!
//! A request must be answered within `request_timeout_ms` of its head (a body that
//! trickles in included), or it is answered 408 and the connection closes.
//!
//! The connection's stream is wrapped in a [`MeteredIo`]:
//! - it counts the bytes read and not yet done with, per connection, per address and in
//!   total: on HTTP, those read since the last answer (the request being read); once
//!   upgraded to a WebSocket, those since the last complete message (the unfinished
//!   message the WebSocket buffers). A read over the per-address or total budget fails,
//!   which closes the connection;
//! - before that, it replaces hyper's own bodiless answers to malformed or oversized
//!   request heads (400, 414, 431) with an `ErrorBody` (§13.3).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use sotto_proto::{Body as _, ErrorBody, ErrorCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Limits;
use crate::metrics::{Metrics, inc};
use crate::state::{lock, wait_shutdown};

/// The key per-address limits count under: an IPv4 address (IPv4-mapped IPv6 included),
/// or the /64 of an IPv6 address.
pub fn addr_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// What one address holds.
#[derive(Debug, Default)]
struct PerAddr {
    tcp: usize,
    ws: usize,
    unauth: usize,
    partial: usize,
}

#[derive(Debug, Default)]
struct Counts {
    by_addr: HashMap<IpAddr, PerAddr>,
    unauth: usize,
}

/// The open connections, in total and per address, and the bytes of unfinished
/// WebSocket messages.
#[derive(Debug)]
pub(crate) struct Conns {
    limits: Limits,
    total: Arc<Semaphore>,
    counts: Mutex<Counts>,
    partial_total: AtomicUsize,
}

impl Conns {
    pub(crate) fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(Self {
            limits: limits.clone(),
            total: Arc::new(Semaphore::new(limits.max_tcp_connections)),
            counts: Mutex::new(Counts::default()),
            partial_total: AtomicUsize::new(0),
        })
    }

    /// A place for a new TCP connection from `ip`, or `None` when the relay or the address
    /// holds as many as allowed.
    pub(crate) fn open(self: &Arc<Self>, ip: IpAddr) -> Option<Arc<ConnInfo>> {
        let key = addr_key(ip);
        let permit = self.total.clone().try_acquire_owned().ok()?;
        let mut counts = lock(&self.counts);
        let entry = counts.by_addr.entry(key).or_default();
        if entry.tcp >= self.limits.max_tcp_connections_per_addr {
            return None;
        }
        entry.tcp += 1;
        drop(counts);
        Some(Arc::new(ConnInfo {
            key,
            conns: self.clone(),
            _permit: permit,
            meter: Meter {
                active: AtomicBool::new(false),
                partial: AtomicUsize::new(0),
                since_ms: AtomicU64::new(0),
                born: Instant::now(),
            },
        }))
    }

    /// Waits until every connection has closed.
    pub(crate) async fn drained(&self) {
        let all = u32::try_from(self.limits.max_tcp_connections).unwrap_or(u32::MAX);
        let _ = self.total.acquire_many(all).await;
    }

    fn release(&self, key: IpAddr, f: impl FnOnce(&mut PerAddr, &mut usize)) {
        let mut counts = lock(&self.counts);
        let Counts { by_addr, unauth } = &mut *counts;
        if let Some(e) = by_addr.get_mut(&key) {
            f(e, unauth);
            if e.tcp == 0 && e.ws == 0 && e.unauth == 0 && e.partial == 0 {
                by_addr.remove(&key);
            }
        }
    }
}

/// One TCP connection's place, its address and its WebSocket meter. Handlers find it in
/// the request's extensions; a WebSocket keeps it for its whole life.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    /// The address key (see [`addr_key`]).
    pub(crate) key: IpAddr,
    conns: Arc<Conns>,
    _permit: OwnedSemaphorePermit,
    meter: Meter,
}

#[derive(Debug)]
struct Meter {
    /// Counting: the connection is a WebSocket.
    active: AtomicBool,
    /// Bytes read since the last complete message.
    partial: AtomicUsize,
    /// When `partial` last became non-zero, milliseconds after `born`, plus one (0: none).
    since_ms: AtomicU64,
    born: Instant,
}

impl ConnInfo {
    /// A WebSocket place for this connection, or `None` when its address holds as many
    /// WebSockets, or unauthenticated ones, as allowed, or the relay as many
    /// unauthenticated ones.
    pub(crate) fn open_ws(self: &Arc<Self>) -> Option<WsSlot> {
        let l = &self.conns.limits;
        let mut counts = lock(&self.conns.counts);
        if counts.unauth >= l.max_unauthenticated {
            return None;
        }
        let e = counts.by_addr.entry(self.key).or_default();
        if e.ws >= l.max_ws_per_addr || e.unauth >= l.max_unauthenticated_per_addr {
            return None;
        }
        e.ws += 1;
        e.unauth += 1;
        counts.unauth += 1;
        Some(WsSlot {
            conn: self.clone(),
            unauth: true,
        })
    }

    /// Starts counting unfinished-message bytes: the connection is now a WebSocket.
    pub(crate) fn start_metering(&self) {
        self.meter.active.store(true, Ordering::Relaxed);
    }

    /// A complete message (data or close) was read: its bytes are no longer held.
    pub(crate) fn message_done(&self) {
        let p = self.meter.partial.swap(0, Ordering::Relaxed);
        self.meter.since_ms.store(0, Ordering::Relaxed);
        self.unhold(p);
    }

    /// A control frame of `payload` bytes was read (2 header bytes and the 4-byte mask).
    pub(crate) fn control_done(&self, payload: usize) {
        let n = payload + 6;
        let p = self.meter.partial.load(Ordering::Relaxed);
        let take = n.min(p);
        self.meter.partial.fetch_sub(take, Ordering::Relaxed);
        if p <= n {
            self.meter.since_ms.store(0, Ordering::Relaxed);
        }
        self.unhold(take);
    }

    /// How long the unfinished message has been arriving, if there is one.
    pub(crate) fn partial_age(&self) -> Option<Duration> {
        let since = self.meter.since_ms.load(Ordering::Relaxed);
        if since == 0 || self.meter.partial.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let now = u64::try_from(self.meter.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        Some(Duration::from_millis(now.saturating_sub(since - 1)))
    }

    fn unhold(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.conns.partial_total.fetch_sub(n, Ordering::Relaxed);
        let mut counts = lock(&self.conns.counts);
        if let Some(e) = counts.by_addr.get_mut(&self.key) {
            e.partial = e.partial.saturating_sub(n);
        }
    }

    /// Counts `n` bytes read; false when the address or the relay is over its budget.
    fn hold(&self, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        if self.meter.partial.fetch_add(n, Ordering::Relaxed) == 0 {
            let now = u64::try_from(self.meter.born.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.meter.since_ms.store(now.saturating_add(1), Ordering::Relaxed);
        }
        let total = self.conns.partial_total.fetch_add(n, Ordering::Relaxed) + n;
        let mut counts = lock(&self.conns.counts);
        let e = counts.by_addr.entry(self.key).or_default();
        e.partial += n;
        let l = &self.conns.limits;
        e.partial <= l.max_partial_bytes_per_addr && total <= l.max_partial_bytes_total
    }
}

impl Drop for ConnInfo {
    fn drop(&mut self) {
        let p = self.meter.partial.swap(0, Ordering::Relaxed);
        self.conns.partial_total.fetch_sub(p, Ordering::Relaxed);
        self.conns.release(self.key, |e, _| {
            e.tcp = e.tcp.saturating_sub(1);
            e.partial = e.partial.saturating_sub(p);
        });
    }
}

/// A WebSocket's place; unauthenticated until [`WsSlot::authenticated`].
#[derive(Debug)]
pub(crate) struct WsSlot {
    pub(crate) conn: Arc<ConnInfo>,
    unauth: bool,
}

impl WsSlot {
    /// The connection authenticated as a device: it leaves the unauthenticated share.
    pub(crate) fn authenticated(&mut self) {
        if std::mem::take(&mut self.unauth) {
            self.conn.conns.release(self.conn.key, |e, total| {
                e.unauth = e.unauth.saturating_sub(1);
                *total = total.saturating_sub(1);
            });
        }
    }
}

impl Drop for WsSlot {
    fn drop(&mut self) {
        let unauth = self.unauth;
        self.conn.conns.release(self.conn.key, |e, total| {
            e.ws = e.ws.saturating_sub(1);
            if unauth {
                e.unauth = e.unauth.saturating_sub(1);
                *total = total.saturating_sub(1);
            }
        });
    }
}

/// The error a read over the unfinished-message budget fails with.
#[derive(Debug)]
pub(crate) struct BudgetExceeded;

impl std::fmt::Display for BudgetExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("unfinished-message budget exceeded")
    }
}

impl std::error::Error for BudgetExceeded {}

/// A connection's stream: meters WebSocket reads and rewrites hyper's bodiless error
/// answers (see the module docs).
pub(crate) struct MeteredIo<T> {
    inner: T,
    conn: Arc<ConnInfo>,
    metrics: Arc<Metrics>,
    /// Bytes to write before anything else (a rewritten answer).
    pending: Vec<u8>,
}

impl<T> MeteredIo<T> {
    pub(crate) fn new(inner: T, conn: Arc<ConnInfo>, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            conn,
            metrics,
            pending: Vec::new(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for MeteredIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let n = buf.filled().len() - before;
            if !this.conn.hold(n) {
                inc(&this.metrics.partial_bytes_refused_total, 1);
                return Poll::Ready(Err(io::Error::other(BudgetExceeded)));
            }
        }
        r
    }
}

/// hyper's answer to a request head it cannot parse: `(status line, code)`.
fn hyper_error_answer(buf: &[u8]) -> Option<&'static [u8]> {
    const ANSWERS: [&[u8]; 3] = [
        b"HTTP/1.1 400 Bad Request\r\n",
        b"HTTP/1.1 414 URI Too Long\r\n",
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
    ];
    let line = ANSWERS.into_iter().find(|a| buf.starts_with(a))?;
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    // Every answer of the relay's own has a content type; hyper's carry no body.
    (!head.contains("\r\ncontent-type:") && head.contains("\r\ncontent-length: 0")).then_some(line)
}

impl<T: AsyncWrite + Unpin> MeteredIo<T> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for MeteredIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_pending(cx))?;
        if !this.conn.meter.active.load(Ordering::Relaxed) && buf.starts_with(b"HTTP/1.") {
            // An answer: the request it answers is no longer held.
            this.conn.message_done();
        }
        if !this.conn.meter.active.load(Ordering::Relaxed)
            && let Some(line) = hyper_error_answer(buf)
        {
            let code = if line.starts_with(b"HTTP/1.1 400") {
                ErrorCode::MALFORMED
            } else {
                ErrorCode::BODY_TOO_LARGE
            };
            let body = ErrorBody { code }.encode();
            let mut out = line.to_vec();
            out.extend_from_slice(
                format!(
                    "content-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(&body);
            this.metrics
                .http_errors_total
                .count(if line.starts_with(b"HTTP/1.1 5") { 500 } else { 400 });
            this.pending = out;
            // The answer is written before anything else; hyper closes after it.
            let _ = this.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Accepts on `listener` until shutdown begins, serving each connection with `router`
/// on its own task. Returns once shutdown has begun (connections drain on their own;
/// wait on [`Conns::drained`]).
pub(crate) async fn accept_loop<L>(
    mut listener: L,
    router: Router,
    conns: Arc<Conns>,
    metrics: Arc<Metrics>,
    timeouts: Timeouts,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    loop {
        let (io, addr) = tokio::select! {
            c = listener.accept() => c,
            _ = wait_shutdown(&mut shutdown) => return,
        };
        let Some(info) = conns.open(addr.ip()) else {
            inc(&metrics.tcp_refused_total, 1);
            drop(io);
            continue;
        };
        let io = MeteredIo::new(io, info.clone(), metrics.clone());
        tokio::spawn(serve_conn(
            io,
            info,
            router.clone(),
            metrics.clone(),
            timeouts,
            shutdown.clone(),
        ));
    }
}

/// The accept loop's timeouts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    /// For a request head, and between keep-alive requests.
    pub(crate) header: Duration,
    /// From a request's head to its answer.
    pub(crate) request: Duration,
}

impl Timeouts {
    pub(crate) fn of(l: &Limits) -> Self {
        Self {
            header: Duration::from_millis(l.header_read_timeout_ms.max(1)),
            request: Duration::from_millis(l.request_timeout_ms.max(1)),
        }
    }
}

/// The answer to a request not answered in time: 408, `IDLE_TIMEOUT`, and the connection
/// closes (its body may still be arriving).
fn request_timed_out(metrics: &Metrics) -> axum::response::Response {
    use axum::response::IntoResponse;
    metrics.http_errors_total.count(408);
    let mut res = crate::AppError(ErrorCode::IDLE_TIMEOUT).into_response();
    *res.status_mut() = axum::http::StatusCode::REQUEST_TIMEOUT;
    res.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    res
}

async fn serve_conn<T>(
    io: MeteredIo<T>,
    info: Arc<ConnInfo>,
    router: Router,
    metrics: Arc<Metrics>,
    timeouts: Timeouts,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) where
    T: AsyncRead + AsyncWrite + Unpin + std::marker::Send + 'static,
{
    let header_timeout = timeouts.header;
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(info.clone());
        let mut router = router.clone();
        let metrics = metrics.clone();
        async move {
            match tokio::time::timeout(timeouts.request, tower_service::Service::call(&mut router, req)).await {
                Ok(answer) => answer,
                Err(_) => Ok(request_timed_out(&metrics)),
            }
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD_BUF)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = wait_shutdown(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(header_timeout, conn).await;
        }
    }
}

/// hyper's read buffer per connection, which bounds a request head (a larger one is
/// 431): the relay's heads are well under 1 KiB.
const MAX_HEAD_BUF: usize = 16 * 1024;

/// Runs `f` every `every` until shutdown.
pub(crate) async fn every<F, Fut>(every: Duration, mut shutdown: tokio::sync::watch::Receiver<bool>, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => f().await,
            _ = wait_shutdown(&mut shutdown) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_keyed_by_64() {
        let a: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(addr_key(a), addr_key(b));
        assert_ne!(addr_key(a), addr_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(addr_key(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn hyper_answers_are_recognised() {
        assert!(hyper_error_answer(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n").is_some());
        assert!(
            hyper_error_answer(
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/octet-stream\r\ncontent-length: 0\r\n\r\n"
            )
            .is_none()
        );
        assert!(hyper_error_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
    }
}
