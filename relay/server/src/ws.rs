//! The WebSocket: challenge, authentication, then mailbox delivery, sends, acks and
//! ephemeral frames on one task per socket; or, without authentication, anonymous sends.
//!
//! ```text
//! relay  → Challenge
//! client → AuthResponse            (within challenge_ttl; otherwise the socket closes)
//! relay  → AuthOk (mailbox epoch) | Error + close
//! relay  → Deliver*  QueueEmpty    (the stored backlog, at most deliver_window unacked)
//! then, in any order: Send → SendResult, Ack, Ephemeral, Deliver (live), EphemeralDeliver
//!
//! or, anonymous (sealed sender: the relay does not learn who sends):
//! relay  → Challenge
//! client → Send                    (instead of AuthResponse; the challenge is dropped)
//! then only: Send → SendResult; anything else → Error(UNEXPECTED_FRAME)
//! ```
//! An anonymous connection stays anonymous: it has no mailbox, gets no deliveries and no
//! ephemeral frames, and its sends are checked against every recipient account's *full*
//! device list (the relay cannot leave out a sending device it does not know). It is rate
//! limited per connection like an authenticated one and idles out the same way.
//!
//! A frame that does not decode or does not fit the state is answered with an `Error`
//! frame and the connection stays open. The handler is generic over the socket so tests
//! can drive it with channels.

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesOrdered;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use sotto_crypto::{AccountId, DeviceId};
use sotto_proto::websocket::{CloseFrame, Message, close_code};
use sotto_proto::{Deliver, ErrorCode, Frame, Send, SendOutcome, SendResult};

use crate::error::code_of;
use crate::http::decode_code;
use crate::metrics::inc;
use crate::net::WsSlot;
use crate::socket::SocketError;
use crate::state::{AppState, ConnRate, ConnSignals, Held, lock, now_s};
use crate::storage::{SendParams, SendStored, Storage};

/// Why a connection ended; for the debug log only.
#[derive(Debug)]
enum End {
    Closed,
    Shutdown,
    Replaced,
    /// A notification-extension connection refused: the app's connection is open.
    DeviceActive,
    Idle,
    AuthFailed,
    Io,
    Limit,
}

/// One socket's place at the edge: its address, its WebSocket slot (and meter) and its
/// rate limiter.
struct Edge {
    slot: Option<WsSlot>,
    addr: IpAddr,
    rate: ConnRate,
}

impl Edge {
    /// Accounts for a message read from the socket (see `net::MeteredIo`).
    fn read(&self, msg: &Message) {
        let Some(slot) = &self.slot else { return };
        match msg {
            Message::Ping(p) | Message::Pong(p) => slot.conn.control_done(p.len()),
            _ => slot.conn.message_done(),
        }
    }

    /// Whether a message has been arriving for longer than `limit`.
    fn message_late(&self, limit: Duration) -> bool {
        self.slot
            .as_ref()
            .and_then(|s| s.conn.partial_age())
            .is_some_and(|age| age >= limit)
    }
}

/// Ends the connection after a failed read, with a close frame when the relay caused it.
/// The close code is the relay's when it caused the failure: 1009 for a message above
/// `max_frame_bytes`, 1008 for an unfinished-message budget exceeded, 1002 and 1007 for
/// framing the client broke.
async fn read_failed<S>(state: &AppState, socket: &mut S, e: SocketError) -> End
where
    S: Sink<Message, Error = SocketError> + Unpin,
{
    match e.close_code() {
        Some(code) => {
            if code == close_code::SIZE {
                let _ = send_frame(
                    socket,
                    &Frame::Error {
                        code: ErrorCode::BODY_TOO_LARGE,
                    },
                )
                .await;
            }
            let _ = state;
            close(socket, code, "").await;
            End::Limit
        }
        None => End::Io,
    }
}

/// Closes a connection whose message did not complete within `message_timeout_ms`.
async fn message_timeout<S>(state: &AppState, socket: &mut S) -> End
where
    S: Sink<Message, Error = SocketError> + Unpin,
{
    inc(&state.metrics.message_timeouts_total, 1);
    close(socket, close_code::POLICY, "").await;
    End::Limit
}

async fn send_frame<S>(socket: &mut S, frame: &Frame) -> Result<(), End>
where
    S: Sink<Message, Error = SocketError> + Unpin,
{
    socket.send(Message::Binary(frame.encode())).await.map_err(|_| End::Io)
}

async fn close<S>(socket: &mut S, code: u16, reason: &'static str)
where
    S: Sink<Message, Error = SocketError> + Unpin,
{
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
    let _ = socket.close().await;
}

/// Serves one socket until it closes, the device is replaced, it idles out or the relay
/// shuts down. `slot` is its place at the edge (none when driven by a test harness);
/// `permit`, its place among `max_connections`, is given back when it ends.
pub(crate) async fn serve_socket<S>(
    state: Arc<AppState>,
    mut socket: S,
    slot: Option<WsSlot>,
    permit: tokio::sync::OwnedSemaphorePermit,
) where
    S: Stream<Item = Result<Message, SocketError>> + Sink<Message, Error = SocketError> + Unpin + std::marker::Send,
{
    if let Some(slot) = &slot {
        slot.conn.start_metering();
    }
    let mut edge = Edge {
        addr: slot.as_ref().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |s| s.conn.key),
        slot,
        rate: state.conn_rate(),
    };
    inc(&state.metrics.connections_total, 1);
    state
        .metrics
        .connections_open
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // The handlers' futures are boxed where they are awaited inside a connection's long-lived
    // state machine: tokio keeps a task's whole future resident, so an inline store future
    // would cost every idle connection its size.
    let end = match Box::pin(authenticate(&state, &mut socket, &edge)).await {
        Ok(Opened::Device(account, device, extension)) => {
            if let Some(slot) = &mut edge.slot {
                slot.authenticated();
            }
            session(&state, &mut socket, &edge, account, device, extension).await
        }
        Ok(Opened::Anonymous(first)) => anonymous_session(&state, &mut socket, &edge, first).await,
        Err(end) => end,
    };
    tracing::debug!(?end, "connection ended");
    state
        .metrics
        .connections_open
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    drop(permit);
}

/// How a connection continues after the challenge.
enum Opened {
    /// Authenticated as this device: its app (false) or its notification extension
    /// (true).
    Device(AccountId, DeviceId, bool),
    /// Anonymous: the client answered the challenge with this send.
    Anonymous(Send),
}

async fn authenticate<S>(state: &AppState, socket: &mut S, edge: &Edge) -> Result<Opened, End>
where
    S: Stream<Item = Result<Message, SocketError>> + Sink<Message, Error = SocketError> + Unpin,
{
    let challenge = match state.new_challenge() {
        Ok(c) => c,
        Err(code) => {
            let _ = send_frame(socket, &Frame::Error { code }).await;
            close(socket, close_code::ERROR, "").await;
            return Err(End::AuthFailed);
        }
    };
    send_frame(socket, &Frame::Challenge(challenge.clone())).await?;
    let ttl = Duration::from_secs(state.config.limits.challenge_ttl_secs);
    let deadline = tokio::time::sleep(ttl);
    tokio::pin!(deadline);
    let mut shutdown = state.shutdown_signal();
    let every = state.config.heartbeat.ping_interval();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let (resp, extension) = loop {
        let msg = tokio::select! {
            _ = tick.tick() => {
                if edge.message_late(state.config.limits.message_timeout()) {
                    return Err(message_timeout(state, socket).await);
                }
                continue;
            }
            _ = &mut deadline => {
                let _ = send_frame(socket, &Frame::Error { code: ErrorCode::CHALLENGE_EXPIRED }).await;
                close(socket, close_code::POLICY, "").await;
                return Err(End::AuthFailed);
            }
            _ = crate::state::wait_shutdown(&mut shutdown) => {
                let _ = send_frame(socket, &Frame::Error { code: ErrorCode::SHUTTING_DOWN }).await;
                close(socket, close_code::AWAY, "").await;
                return Err(End::Shutdown);
            }
            msg = socket.next() => msg,
        };
        if let Some(Ok(m)) = &msg {
            edge.read(m);
        }
        match msg {
            Some(Ok(Message::Binary(b))) => match Frame::decode(&b) {
                Ok(Frame::AuthResponse(r)) => break (r, false),
                Ok(Frame::AuthExtension(r)) => break (r, true),
                Ok(Frame::Send(first)) => return Ok(Opened::Anonymous(first)),
                Ok(_) => {
                    send_frame(
                        socket,
                        &Frame::Error {
                            code: ErrorCode::AUTH_REQUIRED,
                        },
                    )
                    .await?;
                }
                Err(e) => {
                    inc(&state.metrics.malformed_frames_total, 1);
                    send_frame(socket, &Frame::Error { code: decode_code(&e) }).await?;
                }
            },
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Text(_))) => {
                send_frame(
                    socket,
                    &Frame::Error {
                        code: ErrorCode::MALFORMED,
                    },
                )
                .await?;
            }
            Some(Ok(Message::Close(_))) | None => return Err(End::Closed),
            Some(Err(e)) => return Err(read_failed(state, socket, e).await),
        }
    };
    match state.verify_auth(&challenge, &resp, None).await {
        Ok(keys) => {
            let mailbox_epoch = state.mailbox_epoch(&keys.registration);
            send_frame(socket, &Frame::AuthOk { mailbox_epoch }).await?;
            Ok(Opened::Device(resp.account_id, resp.device_id, extension))
        }
        Err(code) => {
            inc(&state.metrics.auth_failures_total, 1);
            let _ = send_frame(socket, &Frame::Error { code }).await;
            close(socket, close_code::POLICY, "").await;
            Err(End::AuthFailed)
        }
    }
}

/// Delivery state of one authenticated connection.
struct Mailbox {
    account: AccountId,
    device: DeviceId,
    /// Delivered and not yet acknowledged, ascending.
    in_flight: VecDeque<u64>,
    /// The highest seq delivered on this connection.
    delivered: u64,
    /// Whether `QueueEmpty` was sent.
    caught_up: bool,
    /// Whether the database may hold envelopes above `delivered` that the live queue does
    /// not: at the start, after a gap or an overflow of the live queue, and while a fetch
    /// came back full.
    backlog: bool,
}

async fn session<S>(
    state: &AppState,
    socket: &mut S,
    edge: &Edge,
    account: AccountId,
    device: DeviceId,
    extension: bool,
) -> End
where
    S: Stream<Item = Result<Message, SocketError>> + Sink<Message, Error = SocketError> + Unpin,
{
    let limits = &state.config.limits;
    let live_cap = usize::try_from(limits.deliver_window).unwrap_or(usize::MAX);
    // A notification extension never takes the socket from the device's app.
    let Some(reg) = state
        .hub
        .register(account, device, extension, limits.ephemeral_queue, live_cap)
    else {
        let _ = send_frame(
            socket,
            &Frame::Error {
                code: ErrorCode::DEVICE_ACTIVE,
            },
        )
        .await;
        close(socket, close_code::POLICY, "").await;
        return End::DeviceActive;
    };
    // Connected: a push still pending for this device is no longer needed.
    state.pusher.connected(&account, device);
    let signals = reg.signals.clone();
    let mut shutdown = state.shutdown_signal();
    let mut mb = Mailbox {
        account,
        device,
        in_flight: VecDeque::new(),
        delivered: 0,
        caught_up: false,
        backlog: true,
    };
    let hb = &state.config.heartbeat;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + hb.ping_interval(), hb.ping_interval());
    let mut last_heard = Instant::now();
    let mut pending = Pipeline::default();

    let end: End = async {
        // Acks are queued, not awaited: commit those of this device's previous connection
        // before reading its mailbox, so a reconnect does not redeliver what was acked.
        Box::pin(state.writer.flush()).await;
        if let Err(end) = Box::pin(pump(state, socket, &mut mb, &signals)).await {
            return end;
        }
        loop {
            let step: Result<(), End> = tokio::select! {
                biased;
                _ = crate::state::wait_shutdown(&mut shutdown) => {
                    Box::pin(drain_answers(state, socket, &mut pending)).await;
                    let _ = send_frame(socket, &Frame::Error { code: ErrorCode::SHUTTING_DOWN }).await;
                    close(socket, close_code::AWAY, "").await;
                    return End::Shutdown;
                }
                _ = signals.replaced.notified() => {
                    let removed = signals.removed.load(std::sync::atomic::Ordering::Relaxed);
                    let code = if removed { ErrorCode::UNKNOWN_DEVICE } else { ErrorCode::REPLACED };
                    let _ = send_frame(socket, &Frame::Error { code }).await;
                    close(socket, close_code::POLICY, "").await;
                    return End::Replaced;
                }
                Some(answer) = pending.next_answer(), if pending.has_any() => {
                    Box::pin(answer_send(state, socket, answer)).await
                }
                msg = socket.next(), if !pending.is_full(state) => {
                    last_heard = Instant::now();
                    if let Some(Ok(m)) = &msg {
                        edge.read(m);
                    }
                    match msg {
                        Some(Ok(Message::Binary(b))) => {
                            Box::pin(handle_frame(state, socket, &mut mb, &signals, edge, &mut pending, &b)).await
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                        Some(Ok(Message::Text(_))) => send_frame(socket, &Frame::Error { code: ErrorCode::MALFORMED }).await,
                        Some(Ok(Message::Close(_))) | None => Err(End::Closed),
                        Some(Err(e)) => Err(read_failed(state, socket, e).await),
                    }
                }
                _ = signals.mailbox.notified() => Box::pin(pump(state, socket, &mut mb, &signals)).await,
                _ = signals.ephemeral.notified() => Box::pin(forward_ephemeral(socket, &signals)).await,
                _ = ping.tick() => {
                    if edge.message_late(limits.message_timeout()) {
                        Err(message_timeout(state, socket).await)
                    } else {
                        heartbeat(socket, last_heard, hb).await
                    }
                }
            };
        if let Err(end) = step {
                return end;
            }
        }
    }
    .await;
    // Envelopes handed to this connection and not acknowledged, or queued for it: the
    // device has something waiting and is about to be unconnected, so it gets a push (an
    // extension that closed after `QueueEmpty`, an app whose socket died). Not when another
    // connection of the device took over, or the relay is going down. The connection leaves
    // the hub first, so that in a cluster the push owner hears it is gone (its `Absent`
    // notice) before it hears of the waiting envelopes.
    drop(reg);
    if !matches!(end, End::Replaced | End::Shutdown) {
        let waiting = !mb.in_flight.is_empty() || {
            let live = lock(&signals.live);
            live.queue.len() > 0 || live.overflow
        };
        if waiting {
            match &state.cluster {
                Some(c) => c.trigger(&state.pusher, &account, device),
                None => state.pusher.trigger(&account, device),
            }
        }
    }
    end
}

/// One heartbeat tick: closes a connection that has been silent for the idle timeout
/// (`Err(End::Idle)`), otherwise pings it.
async fn heartbeat<S>(socket: &mut S, last_heard: Instant, hb: &crate::config::Heartbeat) -> Result<(), End>
where
    S: Sink<Message, Error = SocketError> + Unpin,
{
    if last_heard.elapsed() >= hb.idle_timeout() {
        let _ = send_frame(
            socket,
            &Frame::Error {
                code: ErrorCode::IDLE_TIMEOUT,
            },
        )
        .await;
        close(socket, close_code::AWAY, "").await;
        return Err(End::Idle);
    }
    socket
        .send(Message::Ping(Default::default()))
        .await
        .map_err(|_| End::Io)
}

/// Sends every queued ephemeral payload.
async fn forward_ephemeral<S>(socket: &mut S, signals: &crate::state::ConnSignals) -> Result<(), End>
where
    S: Sink<Message, Error = SocketError> + Unpin,
{
    while let Some(payload) = signals.next_ephemeral() {
        send_frame(socket, &Frame::EphemeralDeliver { payload }).await?;
    }
    Ok(())
}

/// Delivers envelopes after the last delivered seq while the window allows: those the
/// writer handed over live when they continue the sequence, otherwise from the database.
/// Sends `QueueEmpty` the first time the database has nothing more.
async fn pump<S>(state: &AppState, socket: &mut S, mb: &mut Mailbox, signals: &ConnSignals) -> Result<(), End>
where
    S: Sink<Message, Error = SocketError> + Unpin,
{
    let window = state.config.limits.deliver_window;
    loop {
        let room = window.saturating_sub(u32::try_from(mb.in_flight.len()).unwrap_or(u32::MAX)) as usize;
        if room == 0 {
            return Ok(());
        }
        let mut ready = Vec::new();
        {
            let mut live = lock(&signals.live);
            if std::mem::take(&mut live.overflow) {
                mb.backlog = true;
            }
            if mb.backlog {
                // The fetch below reads everything committed so far.
                live.queue.retain(|d| d.seq > mb.delivered.saturating_add(room as u64));
            } else {
                let mut next = mb.delivered + 1;
                while ready.len() < room {
                    match live.queue.front() {
                        Some(d) if d.seq < next => {
                            live.queue.pop_front();
                        }
                        Some(d) if d.seq == next => {
                            ready.extend(live.queue.pop_front());
                            next += 1;
                        }
                        Some(_) => {
                            mb.backlog = true; // a gap: expired, or dropped while full
                            break;
                        }
                        None => break,
                    }
                }
            }
        }
        if !ready.is_empty() {
            for d in ready {
                deliver(state, socket, mb, d.into_deliver()).await?;
            }
            continue;
        }
        if !mb.backlog {
            return Ok(());
        }
        let batch = match state
            .store
            .fetch(&mb.account, mb.device, mb.delivered, now_s(), room as u32)
            .await
        {
            Ok(b) => b,
            Err(e) => {
                let code = code_of(&e);
                return send_frame(socket, &Frame::Error { code }).await;
            }
        };
        if batch.len() < room {
            mb.backlog = false;
        }
        for env in batch {
            let d = Deliver {
                seq: env.seq,
                received_at_s: env.received_at_s,
                envelope: env.envelope,
            };
            deliver(state, socket, mb, d).await?;
        }
        if !mb.backlog && !mb.caught_up {
            mb.caught_up = true;
            send_frame(socket, &Frame::QueueEmpty).await?;
        }
    }
}

async fn deliver<S>(state: &AppState, socket: &mut S, mb: &mut Mailbox, d: Deliver) -> Result<(), End>
where
    S: Sink<Message, Error = SocketError> + Unpin,
{
    mb.delivered = d.seq;
    mb.in_flight.push_back(d.seq);
    send_frame(socket, &Frame::Deliver(d)).await?;
    inc(&state.metrics.envelopes_delivered_total, 1);
    Ok(())
}

async fn handle_frame<'a, S>(
    state: &'a AppState,
    socket: &mut S,
    mb: &mut Mailbox,
    signals: &ConnSignals,
    edge: &Edge,
    pending: &mut Pipeline<'a>,
    bytes: &[u8],
) -> Result<(), End>
where
    S: Sink<Message, Error = SocketError> + Unpin,
{
    let frame = match Frame::decode(bytes) {
        Ok(f) => f,
        Err(e) => {
            inc(&state.metrics.malformed_frames_total, 1);
            return send_frame(socket, &Frame::Error { code: decode_code(&e) }).await;
        }
    };
    match frame {
        Frame::Send(send) => {
            start_send(state, edge, Some((mb.account, mb.device)), send, pending);
            Ok(())
        }
        Frame::Resume => {
            pending.barrier = None;
            Ok(())
        }
        Frame::Ack { seq } => {
            if seq > mb.delivered {
                return send_frame(
                    socket,
                    &Frame::Error {
                        code: ErrorCode::ACK_AHEAD,
                    },
                )
                .await;
            }
            state.writer.ack(mb.account, mb.device, seq).await;
            let before = mb.in_flight.len();
            while mb.in_flight.front().is_some_and(|s| *s <= seq) {
                mb.in_flight.pop_front();
            }
            if mb.in_flight.len() == before {
                return Ok(());
            }
            // The window opened.
            pump(state, socket, mb, signals).await
        }
        Frame::Ephemeral { to, payload } => {
            if let Err(code) = state.charge(&edge.rate, edge.addr, 1, payload.len()) {
                inc(&state.metrics.rate_limited_total, 1);
                return send_frame(socket, &Frame::Error { code }).await;
            }
            if payload.len() > state.config.limits.max_ephemeral_bytes {
                return send_frame(
                    socket,
                    &Frame::Error {
                        code: ErrorCode::ENVELOPE_TOO_LARGE,
                    },
                )
                .await;
            }
            let except = (to == mb.account).then_some(mb.device);
            let (sent, dropped) = state.hub.ephemeral(&to, except, &payload);
            inc(&state.metrics.ephemeral_forwarded_total, sent);
            inc(&state.metrics.ephemeral_dropped_total, dropped);
            Ok(())
        }
        _ => {
            send_frame(
                socket,
                &Frame::Error {
                    code: ErrorCode::UNEXPECTED_FRAME,
                },
            )
            .await
        }
    }
}

/// The sends of one connection whose commits are in progress, answered in order. A
/// connection may have [`MAX_PIPELINED_SENDS`] in flight, holding together at most
/// `max_frame_bytes` of envelopes (one more send may take it over); then the relay stops
/// reading its frames until the oldest is answered. So a connection holds about as much
/// memory as with one send at a time. The queue is created at the first send: idle
/// connections pay nothing.
#[derive(Default)]
struct Pipeline<'a> {
    queue: Option<FuturesOrdered<Pin<Box<dyn Future<Output = Answer> + std::marker::Send + 'a>>>>,
    bytes: usize,
    /// Set when a send was refused for a reason of the whole relay (`BUSY`,
    /// `RATE_LIMITED`): every later send is refused with that code until the client's
    /// `Resume`, so none it wrote before it read the refusal is stored ahead of the
    /// refused one (docs/protocol.md §13.10, "Overload").
    barrier: Option<ErrorCode>,
}

/// A send's answer: (message id, outcome, envelope bytes it held).
type Answer = (u64, SendOutcome, usize);

/// The most sends one connection has in flight.
pub const MAX_PIPELINED_SENDS: usize = 32;

impl Pipeline<'_> {
    fn has_any(&self) -> bool {
        self.queue.as_ref().is_some_and(|p| !p.is_empty())
    }

    fn is_full(&self, state: &AppState) -> bool {
        self.queue.as_ref().is_some_and(|p| p.len() >= MAX_PIPELINED_SENDS)
            || self.bytes >= state.config.limits.max_frame_bytes
    }

    async fn next_answer(&mut self) -> Option<(u64, SendOutcome)> {
        let (id, outcome, bytes) = match &mut self.queue {
            Some(p) => p.next().await?,
            None => std::future::pending().await,
        };
        self.bytes = self.bytes.saturating_sub(bytes);
        Some((id, outcome))
    }
}

/// Checks a send, rate-limits it (one token per recipient envelope, and the bytes it
/// uploaded: the shared body once and every head, on the connection's buckets and its
/// address's), holds those bytes from the relay's in-flight budget until it is answered
/// and starts storing it; `sender` is `None` on an anonymous connection. Its answer comes
/// from `pending`, in the order the sends arrived.
fn start_send<'a>(
    state: &'a AppState,
    edge: &Edge,
    sender: Option<(AccountId, DeviceId)>,
    send: Send,
    pending: &mut Pipeline<'a>,
) {
    let message_id = send.message_id;
    if sender.is_none() {
        inc(&state.metrics.sends_anonymous_total, 1);
    }
    // What was uploaded, not what the recipients' envelopes add up to: a fan-out's body
    // is charged once.
    let bytes = send
        .recipients
        .iter()
        .fold(send.body.len(), |n, r| n.saturating_add(r.head.len()));
    let queue = pending.queue.get_or_insert_with(FuturesOrdered::new);
    let refuse = |code| Box::pin(std::future::ready((message_id, SendOutcome::Rejected { code }, 0)));
    if let Some(code) = pending.barrier {
        queue.push_back(refuse(code));
        return;
    }
    // Refusals for the whole relay raise the barrier. A saturated writer is checked
    // first: a send refused for it costs the client none of its rate.
    if !state.writer.admits() {
        inc(&state.metrics.sends_busy_total, 1);
        pending.barrier = Some(ErrorCode::BUSY);
        queue.push_back(refuse(ErrorCode::BUSY));
        return;
    }
    if let Err(code) = check_send(state, &send) {
        queue.push_back(refuse(code));
        return;
    }
    if let Err(code) = state.charge(&edge.rate, edge.addr, send.recipients.len(), bytes) {
        inc(&state.metrics.rate_limited_total, 1);
        pending.barrier = Some(code);
        queue.push_back(refuse(code));
        return;
    }
    let Some(held) = state.inflight.hold(bytes) else {
        inc(&state.metrics.inflight_budget_refused_total, 1);
        pending.barrier = Some(ErrorCode::BUSY);
        queue.push_back(refuse(ErrorCode::BUSY));
        return;
    };
    pending.bytes += bytes;
    queue.push_back(Box::pin(async move {
        let outcome = handle_send(state, sender, send, held).await;
        (message_id, outcome, bytes)
    }));
}

/// Answers one send.
async fn answer_send<S>(state: &AppState, socket: &mut S, (message_id, outcome): (u64, SendOutcome)) -> Result<(), End>
where
    S: Sink<Message, Error = SocketError> + Unpin,
{
    match &outcome {
        SendOutcome::Stored { .. } => inc(&state.metrics.sends_stored_total, 1),
        SendOutcome::DeviceMismatch { .. } => inc(&state.metrics.sends_mismatch_total, 1),
        _ => inc(&state.metrics.sends_rejected_total, 1),
    }
    match outcome {
        SendOutcome::Rejected {
            code: ErrorCode::ACCESS_DENIED,
        } => inc(&state.metrics.requests_denied_total, 1),
        SendOutcome::Rejected {
            code: ErrorCode::REQUESTS_FULL,
        } => inc(&state.metrics.requests_full_total, 1),
        _ => {}
    }
    send_frame(socket, &Frame::SendResult(SendResult { message_id, outcome })).await
}

/// Answers every send in flight (at shutdown: each was queued for the writer and will be
/// committed, so its sender learns the outcome).
async fn drain_answers<S>(state: &AppState, socket: &mut S, pending: &mut Pipeline<'_>)
where
    S: Sink<Message, Error = SocketError> + Unpin,
{
    while pending.has_any() {
        let Some(answer) = pending.next_answer().await else {
            return;
        };
        if answer_send(state, socket, answer).await.is_err() {
            return;
        }
    }
}

/// Serves an anonymous connection: sends only, no mailbox. `first` is the send that
/// answered the challenge.
async fn anonymous_session<S>(state: &AppState, socket: &mut S, edge: &Edge, first: Send) -> End
where
    S: Stream<Item = Result<Message, SocketError>> + Sink<Message, Error = SocketError> + Unpin,
{
    inc(&state.metrics.connections_anonymous_total, 1);
    let limits = &state.config.limits;
    let mut shutdown = state.shutdown_signal();
    let hb = &state.config.heartbeat;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + hb.ping_interval(), hb.ping_interval());
    let mut last_heard = Instant::now();
    let mut pending = Pipeline::default();
    // Closed when it has sent nothing for `anonymous_idle_ms` (pings do not count) or is
    // `anonymous_lifetime_ms` old.
    let born = tokio::time::Instant::now();
    let idle = Duration::from_millis(limits.anonymous_idle_ms.max(1));
    let end_of_life = born + Duration::from_millis(limits.anonymous_lifetime_ms.max(1));
    let deadline = tokio::time::sleep_until((born + idle).min(end_of_life));
    tokio::pin!(deadline);

    start_send(state, edge, None, first, &mut pending);
    loop {
        let step: Result<(), End> = tokio::select! {
            biased;
            _ = crate::state::wait_shutdown(&mut shutdown) => {
                Box::pin(drain_answers(state, socket, &mut pending)).await;
                let _ = send_frame(socket, &Frame::Error { code: ErrorCode::SHUTTING_DOWN }).await;
                close(socket, close_code::AWAY, "").await;
                return End::Shutdown;
            }
            Some(answer) = pending.next_answer(), if pending.has_any() => {
                Box::pin(answer_send(state, socket, answer)).await
            }
            _ = &mut deadline, if !pending.has_any() => {
                inc(&state.metrics.anonymous_closed_total, 1);
                let _ = send_frame(socket, &Frame::Error { code: ErrorCode::IDLE_TIMEOUT }).await;
                close(socket, close_code::AWAY, "").await;
                return End::Idle;
            }
            msg = socket.next(), if !pending.is_full(state) => {
                last_heard = Instant::now();
                if let Some(Ok(m)) = &msg {
                    edge.read(m);
                }
                match msg {
                    Some(Ok(Message::Binary(b))) => match Frame::decode(&b) {
                        Ok(Frame::Send(send)) => {
                            let next = (tokio::time::Instant::now() + idle).min(end_of_life);
                            deadline.as_mut().reset(next);
                            start_send(state, edge, None, send, &mut pending);
                            Ok(())
                        }
                        Ok(Frame::Resume) => {
                            pending.barrier = None;
                            Ok(())
                        }
                        Ok(_) => send_frame(socket, &Frame::Error { code: ErrorCode::UNEXPECTED_FRAME }).await,
                        Err(e) => {
                            inc(&state.metrics.malformed_frames_total, 1);
                            send_frame(socket, &Frame::Error { code: decode_code(&e) }).await
                        }
                    },
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                    Some(Ok(Message::Text(_))) => send_frame(socket, &Frame::Error { code: ErrorCode::MALFORMED }).await,
                    Some(Ok(Message::Close(_))) | None => Err(End::Closed),
                    Some(Err(e)) => Err(read_failed(state, socket, e).await),
                }
            }
            _ = ping.tick() => {
                if edge.message_late(limits.message_timeout()) {
                    Err(message_timeout(state, socket).await)
                } else {
                    heartbeat(socket, last_heard, hb).await
                }
            }
        };
        if let Err(end) = step {
            return end;
        }
    }
}

/// Stores a checked send (its bytes `held` until it is answered) and wakes the
/// recipients' connections.
async fn handle_send(state: &AppState, sender: Option<(AccountId, DeviceId)>, send: Send, held: Held) -> SendOutcome {
    let limits = &state.config.limits;
    let now = now_s();
    let params = SendParams {
        sender,
        now_s: now - now % 60,
        // Coarse like received_at_s: an exact second would tell which envelopes were
        // stored together.
        expires_at_s: (now - now % 60).saturating_add(limits.envelope_ttl_secs),
        max_mailbox_depth: limits.max_mailbox_depth,
        max_mailbox_bytes: limits.max_mailbox_bytes,
        max_request_depth: limits.max_request_depth,
        max_request_bytes: limits.max_request_bytes,
    };
    // Only keys for accounts the send names are hashed and checked.
    let access = if send.access.is_empty() {
        Vec::new()
    } else {
        let named: BTreeSet<AccountId> = send.recipients.iter().map(|r| r.account_id).collect();
        send.access
            .iter()
            .filter(|a| named.contains(&a.account_id))
            .map(|a| (a.account_id, a.key.verifier()))
            .collect()
    };
    let started = std::time::Instant::now();
    let stored = state.writer.send(params, send.body, send.recipients, access).await;
    drop(held);
    state.metrics.send_store_seconds.observe(started.elapsed());
    match stored {
        Ok(SendStored::Stored(seqs)) => SendOutcome::Stored { seqs },
        Ok(SendStored::Mismatch(device_lists)) => SendOutcome::DeviceMismatch { device_lists },
        Err(e) => SendOutcome::Rejected { code: code_of(&e) },
    }
}

/// The checks of docs/protocol.md §13.7 that need no database, in its order. Each
/// recipient's envelope is `head ‖ body`: one above `max_envelope_bytes` is
/// `ENVELOPE_TOO_LARGE`, an empty one (empty head and empty body) `MALFORMED`.
fn check_send(state: &AppState, send: &Send) -> Result<(), ErrorCode> {
    let limits = &state.config.limits;
    let recipients = &send.recipients;
    if recipients.is_empty() {
        return Err(ErrorCode::EMPTY_SEND);
    }
    if recipients.len() > limits.max_recipients {
        return Err(ErrorCode::TOO_MANY_RECIPIENTS);
    }
    let body = send.body.len();
    if recipients
        .iter()
        .any(|r| r.envelope_len(body) > limits.max_envelope_bytes)
    {
        return Err(ErrorCode::ENVELOPE_TOO_LARGE);
    }
    if recipients.iter().any(|r| r.envelope_len(body) == 0) {
        return Err(ErrorCode::MALFORMED);
    }
    let distinct: BTreeSet<(AccountId, DeviceId)> = recipients.iter().map(|r| (r.account_id, r.device_id)).collect();
    if distinct.len() != recipients.len() {
        return Err(ErrorCode::DUPLICATE_RECIPIENT);
    }
    Ok(())
}
