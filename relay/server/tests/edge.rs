//! The relay's network edge under attack patterns, over real sockets: each bound cuts the
//! attacker off while an honest client keeps working. Attackers connect from 127.0.0.2
//! and up (loopback on Linux), the honest client from 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::relay::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use hyper::{Method, StatusCode};
use sotto_proto::{Body, Challenge, ErrorCode, Frame, Recipient, Send, SendOutcome, SendResult};
use sotto_relay::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A TCP connection to the relay from `127.0.0.<host>`.
async fn tcp_from(relay: &Relay, host: u8) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, host], 0)))?;
    socket.connect(relay.addr).await
}

/// A WebSocket to the relay from `127.0.0.<host>`: the socket, or the HTTP refusal.
async fn ws_from(relay: &Relay, host: u8) -> Result<Ws, (StatusCode, Vec<u8>)> {
    let tcp = tcp_from(relay, host).await.expect("tcp connect");
    match tokio_tungstenite::client_async(
        format!("ws://{}/v1/ws", relay.addr),
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
    )
    .await
    {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            Err((resp.status(), resp.body().clone().unwrap_or_default()))
        }
        Err(e) => panic!("websocket handshake failed: {e}"),
    }
}

/// Reads one HTTP/1.1 response off a raw stream: status, lower-cased head, body (by
/// Content-Length; none means the connection closed).
async fn read_response(s: &mut TcpStream) -> Option<(u16, String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(FAILSAFE, s.read(&mut chunk))
            .await
            .expect("answer within the failsafe")
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head.get(9..12)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap_or(0));
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = tokio::time::timeout(FAILSAFE, s.read(&mut chunk))
            .await
            .expect("body within the failsafe")
            .ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((status, head, body))
}

/// Waits until the peer closes the stream (EOF or reset).
async fn eof(s: &mut TcpStream, within: Duration) -> bool {
    let mut chunk = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

fn to_account(acc: &TestAccount, body: &[u8]) -> Vec<Recipient> {
    acc.devices
        .iter()
        .map(|d| Recipient {
            account_id: acc.id(),
            device_id: d.id(),
            head: body.to_vec(),
        })
        .collect()
}

async fn send_to(ws: &mut Ws, message_id: u64, recipients: Vec<Recipient>) -> SendOutcome {
    send(
        ws,
        &Frame::Send(Send {
            message_id,
            access: vec![],
            body: vec![],
            recipients,
        }),
    )
    .await;
    loop {
        match recv(ws).await {
            Frame::SendResult(SendResult {
                message_id: id,
                outcome,
            }) if id == message_id => return outcome,
            Frame::Deliver(_) | Frame::QueueEmpty | Frame::EphemeralDeliver { .. } | Frame::SendResult(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The honest client still works: an authenticated HTTP request, a WebSocket session with a
/// send from `a` to `b` and its delivery.
async fn honest_works(relay: &Relay, a: &TestAccount, b: &TestAccount, id: u64) {
    let auth = relay.auth(&a.devices[0], &Method::GET, "/v1/prekeys/count", &[]).await;
    let (status, _) = relay.http(Method::GET, "/v1/prekeys/count", Some(auth), vec![]).await;
    assert_eq!(status, StatusCode::OK, "authenticated request");
    let mut wa = relay.connect(&a.devices[0]).await;
    let mut wb = relay.connect(&b.devices[0]).await;
    let body = format!("honest {id}").into_bytes();
    assert!(matches!(
        send_to(&mut wa, id, to_account(b, &body)).await,
        SendOutcome::Stored { .. }
    ));
    loop {
        match recv(&mut wb).await {
            Frame::Deliver(d) if d.envelope == body => break,
            Frame::Deliver(_) | Frame::QueueEmpty => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn two_accounts(relay: &Relay, seed: u64) -> (TestAccount, TestAccount) {
    let mut r = rng(seed);
    let a = account(&mut r, 1);
    let b = account(&mut r, 1);
    assert_eq!(relay.register(&a).await, StatusCode::CREATED);
    assert_eq!(relay.register(&b).await, StatusCode::CREATED);
    (a, b)
}

/// One keep-alive connection asks for challenges as fast as it can: it is rate limited,
/// and the honest client still authenticates every time.
async fn challenge_flood(url: String) {
    let relay = Relay::start(&url, |c: &mut Config| {
        c.limits.max_pending_challenges = 50;
    })
    .await;
    let (a, b) = two_accounts(&relay, 1).await;
    let mut s = tcp_from(&relay, 2).await.unwrap();
    let mut limited = 0;
    for _ in 0..200 {
        s.write_all(b"GET /v1/auth/challenge HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let (status, _, body) = read_response(&mut s).await.expect("an answer");
        if status != 200 {
            assert_eq!((status, error_code(&body)), (429, ErrorCode::RATE_LIMITED));
            limited += 1;
        }
    }
    assert!(limited > 100, "only {limited} of 200 challenges refused");
    for i in 0..10 {
        let auth = relay.auth(&a.devices[0], &Method::GET, "/v1/prekeys/count", &[]).await;
        let (status, body) = relay.http(Method::GET, "/v1/prekeys/count", Some(auth), vec![]).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "honest request {i}: {:?}",
            sotto_proto::ErrorBody::decode(&body)
        );
    }
    honest_works(&relay, &a, &b, 1).await;
}

/// A challenge answer is accepted once; a forged nonce never.
async fn challenge_replay(url: String) {
    let relay = Relay::start(&url, |_| {}).await;
    let (a, _) = two_accounts(&relay, 2).await;
    let auth = relay.auth(&a.devices[0], &Method::GET, "/v1/prekeys/count", &[]).await;
    let (status, _) = relay
        .http(Method::GET, "/v1/prekeys/count", Some(auth.clone()), vec![])
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = relay.http(Method::GET, "/v1/prekeys/count", Some(auth), vec![]).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNAUTHORIZED, ErrorCode::CHALLENGE_UNKNOWN)
    );
    // A nonce the relay did not make.
    let c = Challenge {
        nonce: [7; 32],
        relay_id: relay.state.relay_id,
        timestamp_ms: 0,
    };
    let forged = sotto_proto::authorization_header(&sotto_proto::AuthResponse {
        account_id: a.id(),
        device_id: a.devices[0].id(),
        nonce: c.nonce,
        signature: a.devices[0].sign_challenge(&c),
    });
    let (status, body) = relay.http(Method::GET, "/v1/prekeys/count", Some(forged), vec![]).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNAUTHORIZED, ErrorCode::CHALLENGE_UNKNOWN)
    );
}

/// Every error answer is an `ErrorBody` (§13.3) and is counted by status class.
async fn error_bodies(url: String) {
    let relay = Relay::start(&url, |_| {}).await;
    let (a, b) = two_accounts(&relay, 3).await;
    // Method not allowed.
    let (status, body) = relay.http(Method::DELETE, "/healthz", None, vec![]).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(&body), ErrorCode::NOT_FOUND);
    // A WebSocket path without the upgrade.
    let (status, body) = relay.get("/v1/ws").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, ErrorCode::MALFORMED)
    );
    // Invalid UTF-8 in a path segment.
    let (status, body) = relay.get("/v1/accounts/%FF/device-list").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, ErrorCode::MALFORMED)
    );
    // Heads hyper refuses: malformed, oversized; on a fresh connection and after a
    // keep-alive request.
    for keep_alive in [false, true] {
        for (raw, want, code) in [
            (
                b"GET / HTTP/1.1\r\nbad header\r\n\r\n".to_vec(),
                400,
                ErrorCode::MALFORMED,
            ),
            (b"\x01\x02 nonsense\r\n\r\n".to_vec(), 400, ErrorCode::MALFORMED),
            (
                format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(2 << 20)).into_bytes(),
                431,
                ErrorCode::BODY_TOO_LARGE,
            ),
        ] {
            let mut s = tcp_from(&relay, 1).await.unwrap();
            if keep_alive {
                s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
                assert_eq!(read_response(&mut s).await.unwrap().0, 200);
            }
            let _ = s.write_all(&raw).await;
            let (status, head, body) = read_response(&mut s).await.expect("an answer");
            assert_eq!(status, want, "{head}");
            assert!(head.contains("content-type: application/octet-stream"), "{head}");
            assert_eq!(error_code(&body), code);
        }
    }
    let text = relay.state.metrics.render();
    assert!(
        text.contains("sotto_relay_http_errors_total{class=\"4xx\"} 9"),
        "{text}"
    );
    honest_works(&relay, &a, &b, 1).await;
}

/// A WebSocket message above max_frame_bytes is answered with close code 1009.
async fn message_too_big(url: String) {
    let relay = Relay::start(&url, |c: &mut Config| {
        c.limits.max_frame_bytes = 64 * 1024;
    })
    .await;
    let (a, b) = two_accounts(&relay, 4).await;
    let mut ws = relay.connect(&a.devices[0]).await;
    let _ = ws.send(Message::Binary(vec![0u8; 100 * 1024].into())).await;
    let code = loop {
        match tokio::time::timeout(FAILSAFE, ws.next())
            .await
            .expect("closed within the failsafe")
        {
            Some(Ok(Message::Close(Some(f)))) => break Some(f.code),
            Some(Ok(_)) => {}
            _ => break None,
        }
    };
    assert_eq!(code, Some(CloseCode::Size));
    honest_works(&relay, &a, &b, 1).await;
}

/// Opens a WebSocket by hand from `127.0.0.<host>` and reads the 101 answer.
async fn raw_ws(relay: &Relay, host: u8) -> TcpStream {
    let mut s = tcp_from(relay, host).await.unwrap();
    s.write_all(
        b"GET /v1/ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
          sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let (status, head, _) = read_response(&mut s).await.expect("an answer");
    assert_eq!(status, 101, "{head}");
    s
}

/// Starts a binary message of `len` bytes (one masked, non-final frame) and sends `sent`
/// of its bytes.
async fn start_message(s: &mut TcpStream, len: u64, sent: usize) -> std::io::Result<()> {
    let mut frame = vec![0x02, 0x80 | 127];
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend(std::iter::repeat_n(0u8, sent));
    s.write_all(&frame).await
}

/// Incomplete request heads and idle keep-alive connections are closed after the header
/// timeout; one address holds at most its share of connections.
async fn slow_heads(url: String) {
    let relay = Relay::start(&url, |c: &mut Config| {
        c.limits.header_read_timeout_ms = 300;
        c.limits.max_tcp_connections_per_addr = 8;
    })
    .await;
    let (a, b) = two_accounts(&relay, 5).await;
    let mut slow = Vec::new();
    for _ in 0..8 {
        let mut s = tcp_from(&relay, 2).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n").await.unwrap();
        slow.push(s);
    }
    // The ninth from that address is closed at accept.
    let mut ninth = tcp_from(&relay, 2).await.unwrap();
    let _ = ninth.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(
        read_response(&mut ninth).await.is_none(),
        "the ninth connection was served"
    );
    // Meanwhile the honest client works.
    assert_eq!(relay.get("/healthz").await.0, StatusCode::OK);
    honest_works(&relay, &a, &b, 1).await;
    // The incomplete heads are dropped.
    for s in &mut slow {
        assert!(eof(s, FAILSAFE).await, "an incomplete head stayed open");
    }
    // An idle keep-alive connection too, after its request.
    let mut idle = tcp_from(&relay, 2).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut idle).await.unwrap().0, 200);
    assert!(
        eof(&mut idle, FAILSAFE).await,
        "an idle keep-alive connection stayed open"
    );
    let text = relay.metrics().await;
    assert!(text.contains("sotto_relay_tcp_refused_total 1"), "{text}");
}

/// WebSockets per address and unauthenticated ones are capped; an anonymous connection
/// that only answers pings is closed, and so is one past its lifetime.
async fn websocket_caps(url: String) {
    let relay = Relay::start(&url, |c: &mut Config| {
        c.limits.max_ws_per_addr = 3;
        c.limits.max_unauthenticated_per_addr = 2;
        c.limits.anonymous_idle_ms = 300;
        c.limits.anonymous_lifetime_ms = 1_500;
        c.heartbeat.ping_interval_ms = 50;
    })
    .await;
    let (a, b) = two_accounts(&relay, 6).await;
    // Two unauthenticated sockets from 127.0.0.2; the third is refused.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut ws = ws_from(&relay, 2).await.expect("upgrade");
        assert!(matches!(recv(&mut ws).await, Frame::Challenge(_)));
        held.push(ws);
    }
    let Err((status, body)) = ws_from(&relay, 2).await else {
        panic!("the third unauthenticated socket was accepted")
    };
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::TOO_MANY_CONNECTIONS)
    );
    honest_works(&relay, &a, &b, 1).await;

    // An anonymous sender that goes quiet (it still answers pings) is closed.
    let mut anon = ws_from(&relay, 3).await.expect("upgrade");
    assert!(matches!(recv(&mut anon).await, Frame::Challenge(_)));
    assert!(matches!(
        send_to(&mut anon, 1, to_account(&b, b"anon")).await,
        SendOutcome::Stored { .. }
    ));
    assert_eq!(
        recv(&mut anon).await,
        Frame::Error {
            code: ErrorCode::IDLE_TIMEOUT
        }
    );
    closed(&mut anon).await;

    // One that keeps sending is closed at the end of its lifetime.
    let mut busy = ws_from(&relay, 3).await.expect("upgrade");
    assert!(matches!(recv(&mut busy).await, Frame::Challenge(_)));
    let started = std::time::Instant::now();
    let mut id = 10;
    // The socket may be reset under an unread send, losing the `Error` frame.
    let ended = loop {
        id += 1;
        let frame = Frame::Send(Send {
            message_id: id,
            access: vec![],
            body: vec![],
            recipients: to_account(&b, b"x"),
        });
        if busy.send(Message::Binary(frame.encode().into())).await.is_err() {
            break None;
        }
        let next = loop {
            match tokio::time::timeout(FAILSAFE, busy.next()).await.expect("an answer") {
                Some(Ok(Message::Binary(m))) => break Some(Frame::decode(&m).unwrap()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                _ => break None,
            }
        };
        match next {
            Some(Frame::SendResult(_)) => {}
            Some(Frame::Error { code }) => break Some(code),
            None => break None,
            other => panic!("unexpected {other:?}"),
        }
        assert!(started.elapsed() < FAILSAFE, "never closed");
        tokio::time::sleep(Duration::from_millis(100)).await; // the sender's pace, not a wait
    };
    assert!(matches!(ended, None | Some(ErrorCode::IDLE_TIMEOUT)), "{ended:?}");
    assert!(started.elapsed() >= Duration::from_millis(1_400));
    honest_works(&relay, &a, &b, 2).await;
    drop(held);
}

/// Unfinished WebSocket messages: bounded per address (the connection that goes over is
/// closed) and in time (a message that stalls is closed).
async fn partial_messages(url: String) {
    let relay = Relay::start(&url, |c: &mut Config| {
        c.limits.max_partial_bytes_per_addr = 256 * 1024;
        c.limits.message_timeout_ms = 300;
        c.heartbeat.ping_interval_ms = 50;
    })
    .await;
    let (a, b) = two_accounts(&relay, 7).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = raw_ws(&relay, 2).await;
        start_message(&mut s, 1 << 20, 100 * 1024).await.unwrap();
        held.push(s);
    }
    // A third 100 KiB takes the address over 256 KiB: that connection is closed.
    let mut third = raw_ws(&relay, 2).await;
    let _ = start_message(&mut third, 1 << 20, 100 * 1024).await;
    assert!(
        eof(&mut third, FAILSAFE).await,
        "over the per-address budget and still open"
    );
    honest_works(&relay, &a, &b, 1).await;
    // The stalled messages time out.
    for s in &mut held {
        assert!(eof(s, FAILSAFE).await, "a stalled message stayed open");
    }
    honest_works(&relay, &a, &b, 2).await;
    let text = relay.metrics().await;
    assert!(text.contains("sotto_relay_partial_bytes_refused_total 1"), "{text}");
    assert!(text.contains("sotto_relay_message_timeouts_total 2"), "{text}");
}

/// Envelopes and bytes are charged, per connection and per address (shared by all its
/// connections, anonymous included).
async fn envelope_rates(url: String) {
    let relay = Relay::start(&url, |c: &mut Config| {
        c.limits.addr_rate_per_second = 1;
        c.limits.addr_rate_burst = 6;
        c.limits.rate_bytes_per_second = 1;
        c.limits.rate_bytes_burst = 1_000;
    })
    .await;
    let (a, b) = two_accounts(&relay, 8).await;
    let mut r = rng(9);
    let group = account(&mut r, 4);
    let pair = account(&mut r, 2);
    assert_eq!(relay.register(&group).await, StatusCode::CREATED);
    assert_eq!(relay.register(&pair).await, StatusCode::CREATED);
    // Two anonymous connections from 127.0.0.2 share its 6 envelopes: 4 + 2, then refused.
    let mut x = ws_from(&relay, 2).await.expect("upgrade");
    let mut y = ws_from(&relay, 2).await.expect("upgrade");
    assert!(matches!(recv(&mut x).await, Frame::Challenge(_)));
    assert!(matches!(recv(&mut y).await, Frame::Challenge(_)));
    assert!(matches!(
        send_to(&mut x, 1, to_account(&group, b"x")).await,
        SendOutcome::Stored { .. }
    ));
    assert!(matches!(
        send_to(&mut y, 2, to_account(&pair, b"y")).await,
        SendOutcome::Stored { .. }
    ));
    assert_eq!(
        send_to(&mut y, 3, to_account(&pair, b"y")).await,
        SendOutcome::Rejected {
            code: ErrorCode::RATE_LIMITED
        }
    );
    // Bytes: 2 × 600 over the connection's 1,000.
    let mut z = relay.connect(&a.devices[0]).await;
    let big: Vec<Recipient> = to_account(&group, &[1; 600]).into_iter().take(2).collect();
    assert_eq!(
        send_to(&mut z, 4, big).await,
        SendOutcome::Rejected {
            code: ErrorCode::RATE_LIMITED
        }
    );
    drop(z);
    honest_works(&relay, &a, &b, 5).await;
}

/// Relay-wide byte budgets: sends in flight (over: `BUSY`), live queues (over: read from
/// the mailbox, nothing lost) and ephemeral queues (over: dropped, counted).
async fn byte_budgets(url: String) {
    let relay = Relay::start(&url, |c: &mut Config| {
        c.limits.max_inflight_send_bytes = 1_000;
        c.limits.max_live_queue_bytes = 100;
        c.limits.max_ephemeral_queue_bytes = 0;
    })
    .await;
    let (a, b) = two_accounts(&relay, 10).await;
    let mut wa = relay.connect(&a.devices[0]).await;
    let mut wb = relay.connect(&b.devices[0]).await;
    assert_eq!(recv(&mut wb).await, Frame::QueueEmpty);
    assert_eq!(
        send_to(&mut wa, 1, to_account(&b, &[0; 1_500])).await,
        SendOutcome::Rejected { code: ErrorCode::BUSY }
    );
    // The refusal holds every later send of the connection, even one that fits, until
    // the client says with `Resume` that it read it.
    assert_eq!(
        send_to(&mut wa, 2, to_account(&b, &[0; 100])).await,
        SendOutcome::Rejected { code: ErrorCode::BUSY }
    );
    send(&mut wa, &Frame::Resume).await;
    // Ten envelopes of 500 bytes: none fits the live budget; all arrive, in order.
    for i in 0..10u8 {
        assert!(matches!(
            send_to(&mut wa, 10 + u64::from(i), to_account(&b, &[i; 500])).await,
            SendOutcome::Stored { .. }
        ));
    }
    let mut seen = Vec::new();
    while seen.len() < 10 {
        match recv(&mut wb).await {
            Frame::Deliver(d) => {
                seen.push(d.envelope[0]);
                send(&mut wb, &Frame::Ack { seq: d.seq }).await;
            }
            Frame::QueueEmpty => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, (0..10).collect::<Vec<u8>>());
    // Ephemeral frames over the (empty) budget are dropped and counted.
    send(
        &mut wa,
        &Frame::Ephemeral {
            to: b.id(),
            payload: b"typing".to_vec(),
        },
    )
    .await;
    let text = relay.metrics().await;
    assert!(text.contains("sotto_relay_live_budget_overflow_total"), "{text}");
    tokio::time::timeout(FAILSAFE, async {
        while !relay.metrics().await.contains("sotto_relay_ephemeral_dropped_total 1") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the ephemeral frame is dropped");
    let overflow = relay
        .metrics()
        .await
        .lines()
        .find_map(|l| {
            l.strip_prefix("sotto_relay_live_budget_overflow_total ")
                .map(|v| v.parse::<u64>().unwrap())
        })
        .unwrap();
    assert_eq!(overflow, 10, "{overflow} envelopes overflowed the live budget");
    drop((wa, wb));
    honest_works(&relay, &a, &b, 30).await;
}

/// `/metrics` is not public: absent without a token, closed to a wrong one; on its own
/// address with `metrics_listen`.
async fn metrics_access(url: String) {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_addr = free.local_addr().unwrap();
    drop(free);
    let relay = Relay::start(&url, |c: &mut Config| {
        c.metrics_token = None;
        c.metrics_listen = Some(metrics_addr);
    })
    .await;
    let (status, body) = relay.get("/metrics").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, ErrorCode::NOT_FOUND)
    );
    let mut s = TcpStream::connect(metrics_addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let (status, _, body) = read_response(&mut s).await.unwrap();
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("sotto_relay_connections_open"));

    let relay = Relay::start(&url, |_| {}).await;
    for auth in ["Bearer wrong", "Bearer ", "Basic x"] {
        let (status, _, body) = relay
            .request(Method::GET, "/metrics", &[("authorization", auth)], vec![])
            .await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::UNAUTHORIZED, ErrorCode::AUTH_REQUIRED)
        );
    }
    assert!(
        relay
            .metrics()
            .await
            .contains("sotto_relay_http_errors_total{class=\"4xx\"} 3")
    );
}

/// The relay-wide bounds: TCP connections in total (closed at accept) and unfinished
/// message bytes in total (the connection that goes over is closed), with attackers on
/// several addresses, each within its own share.
async fn total_bounds(url: String) {
    let relay = Relay::start(&url, |c: &mut Config| {
        c.limits.max_tcp_connections = 12;
        c.limits.max_tcp_connections_per_addr = 3;
        c.limits.max_partial_bytes_per_addr = 200 * 1024;
        c.limits.max_partial_bytes_total = 250 * 1024;
    })
    .await;
    let (a, b) = two_accounts(&relay, 11).await;
    // Unfinished messages: 100 KiB from .2 and from .3 fit; 100 KiB more from .4 goes
    // over the 250 KiB total, though within .4's share.
    let mut held = Vec::new();
    for host in [2, 3] {
        let mut s = raw_ws(&relay, host).await;
        start_message(&mut s, 1 << 20, 100 * 1024).await.unwrap();
        held.push(s);
    }
    let mut over = raw_ws(&relay, 4).await;
    let _ = start_message(&mut over, 1 << 20, 100 * 1024).await;
    assert!(eof(&mut over, FAILSAFE).await, "over the total budget and still open");
    honest_works(&relay, &a, &b, 1).await;
    drop(held);
    // TCP: three idle connections from each of .5, .6, .7 and .8 would be 12; the relay
    // holds at most 12 in total, so once it is full a connection from a fifth address is
    // closed at accept.
    let mut idle = Vec::new();
    for host in [5, 6, 7, 8] {
        for _ in 0..3 {
            let mut s = tcp_from(&relay, host).await.unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
            let _ = read_response(&mut s).await;
            idle.push(s);
        }
    }
    let mut refused = tcp_from(&relay, 9).await.unwrap();
    let _ = refused.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(read_response(&mut refused).await.is_none(), "served over the total");
    drop(idle);
    // Once they are gone the honest client works again.
    let ok = tokio::time::timeout(FAILSAFE, async {
        loop {
            let mut s = tcp_from(&relay, 1).await.unwrap();
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
            if let Some((200, _, _)) = read_response(&mut s).await {
                return;
            }
        }
    })
    .await;
    assert!(ok.is_ok(), "the relay did not free its places");
    honest_works(&relay, &a, &b, 2).await;
}

/// A request body that trickles is answered 408 `IDLE_TIMEOUT` and its connection closed;
/// the bytes of requests being read count against the address's budget.
async fn slow_bodies(url: String) {
    let relay = Relay::start(&url, |c: &mut Config| {
        c.limits.request_timeout_ms = 300;
    })
    .await;
    let (a, b) = two_accounts(&relay, 12).await;
    let head = format!(
        "PUT /v1/accounts/{}/device-list HTTP/1.1\r\nhost: x\r\ncontent-length: 80000\r\n\r\n",
        a.id()
    );
    let mut slow = tcp_from(&relay, 2).await.unwrap();
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&[0; 1000]).await.unwrap();
    let (status, _, body) = read_response(&mut slow).await.expect("an answer");
    assert_eq!((status, error_code(&body)), (408, ErrorCode::IDLE_TIMEOUT));
    assert!(eof(&mut slow, FAILSAFE).await);
    honest_works(&relay, &a, &b, 1).await;
    drop(relay);

    let relay = Relay::start(&url, |c: &mut Config| {
        c.limits.max_partial_bytes_per_addr = 100 * 1024;
    })
    .await;
    let mut first = tcp_from(&relay, 3).await.unwrap();
    first.write_all(head.as_bytes()).await.unwrap();
    first.write_all(&[0; 60_000]).await.unwrap();
    let mut second = tcp_from(&relay, 3).await.unwrap();
    second.write_all(head.as_bytes()).await.unwrap();
    let _ = second.write_all(&[0; 60_000]).await;
    // Whichever of the two goes over the budget is cut off. When their reads interleave,
    // both can (the one cut off holds its bytes until its task ends), so count at least one.
    let refused = |m: String| {
        m.lines()
            .find_map(|l| l.strip_prefix("sotto_relay_partial_bytes_refused_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    if tokio::time::timeout(FAILSAFE, async {
        while refused(relay.metrics().await) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .is_err()
    {
        let m = relay.metrics().await;
        let partial: Vec<&str> = m.lines().filter(|l| l.contains("partial")).collect();
        panic!("neither body was refused: {partial:?}");
    }
    honest_works(&relay, &a, &b, 2).await;
    drop(first);
}

macro_rules! backend {
    ($backend:ident, $url:expr) => {
        mod $backend {
            use super::*;

            macro_rules! t {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let url: Option<String> = $url;
                        if let Some(url) = url {
                            super::$name(url.clone()).await;
                            if url.starts_with("sqlite://") {
                                remove_sqlite(&url);
                            }
                        }
                    }
                };
            }
            t!(challenge_flood);
            t!(challenge_replay);
            t!(error_bodies);
            t!(message_too_big);
            t!(slow_heads);
            t!(websocket_caps);
            t!(partial_messages);
            t!(envelope_rates);
            t!(byte_budgets);
            t!(metrics_access);
            t!(total_bounds);
            t!(slow_bodies);
        }
    };
}

backend!(sqlite, Some(sqlite_url()));
backend!(postgres, postgres_url().await);
