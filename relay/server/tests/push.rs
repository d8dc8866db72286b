//! Push triggers (docs/protocol.md §13.13): a real relay over real sockets sends to local
//! stand-ins that speak each provider's protocol over HTTP/2 and TLS (the test CA in
//! tests/fixtures/tls): APNs checks the provider token's ES256 signature, its `kid` and
//! `iss`, and the headers; FCM checks the RS256 OAuth assertion at its token endpoint
//! and the bearer and body of each send; the Web Push receiver holds the subscription's
//! private key and auth secret, decrypts the RFC 8291 body and checks the VAPID token.
//! Runs on SQLite and on PostgreSQL. Nothing sleeps to wait: tests wait on the stand-ins'
//! channels and on the relay's count of finished push jobs.

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::relay::*;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, UnparsedPublicKey};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use sotto_proto::{Body, ErrorCode, Frame, PushProvider, PushRegistration, Recipient, Send, SendOutcome, SendResult};
use sotto_relay::Config;
use sotto_relay::push::{ApnsConfig, FcmConfig, WebPushConfig};
use sotto_relay::storage::Storage;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const TEAM_ID: &str = "TEAMID1234";
const KEY_ID: &str = "KEYID12345";
const TOPIC: &str = "org.example.sotto";
const SUBJECT: &str = "mailto:ops@example.org";
const APNS_PAYLOAD: &str = r#"{"aps":{"alert":{"loc-key":"SOTTO_NEW_MESSAGE"},"mutable-content":1}}"#;
const FCM_ACCESS_TOKEN: &str = "ya29.test-access-token";
const FCM_PROJECT: &str = "sotto-test";

fn fixture(dir: &str, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir)
        .join(name)
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// A fresh P-256 key written as PKCS#8 PEM to `path`; returns its public key.
fn p256_key(path: &Path) -> Vec<u8> {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    std::fs::write(path, pem("PRIVATE KEY", doc.as_ref())).unwrap();
    EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng)
        .unwrap()
        .public_key()
        .as_ref()
        .to_vec()
}

/// A request a stand-in received.
#[derive(Debug)]
struct Req {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Req {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }
}

/// A stand-in's answer.
#[derive(Clone, Debug)]
struct Reply {
    status: u16,
    retry_after: Option<&'static str>,
    body: String,
}

fn reply(status: u16, body: &str) -> Reply {
    Reply {
        status,
        retry_after: None,
        body: body.to_owned(),
    }
}

type Fixed = fn(&Req) -> Option<Reply>;

/// A push service stand-in: HTTP/2 over TLS on 127.0.0.1, answering from a script (then
/// with `default`), or from `fixed` for the routes it serves (FCM's token endpoint).
struct StandIn {
    addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<Req>,
    script: Arc<Mutex<VecDeque<Reply>>>,
}

impl StandIn {
    async fn start(default: Reply, fixed: Fixed) -> StandIn {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(fixture("tls", "cert.pem"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(fixture("tls", "key.pem")).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let s = script.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, tx, script, default) = (acceptor.clone(), tx.clone(), s.clone(), default.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (tx, script, default) = (tx.clone(), script.clone(), default.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes().to_vec();
                            let req = Req {
                                method: parts.method,
                                path: parts.uri.path().to_owned(),
                                headers: parts.headers,
                                body,
                            };
                            let r = fixed(&req)
                                .or_else(|| script.lock().unwrap().pop_front())
                                .unwrap_or(default);
                            let _ = tx.send(req);
                            let mut resp = hyper::Response::builder().status(r.status);
                            if let Some(after) = r.retry_after {
                                resp = resp.header("retry-after", after);
                            }
                            Ok::<_, std::convert::Infallible>(resp.body(Full::new(Bytes::from(r.body))).unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        StandIn { addr, rx, script }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    fn script(&self, replies: &[Reply]) {
        self.script.lock().unwrap().extend(replies.iter().cloned());
    }

    async fn next(&mut self) -> Req {
        tokio::time::timeout(FAILSAFE, self.rx.recv())
            .await
            .expect("a request within the failsafe")
            .unwrap()
    }

    /// Nothing more was received.
    fn quiet(&mut self) {
        if let Ok(r) = self.rx.try_recv() {
            panic!("unexpected request {} {}", r.method, r.path);
        }
    }
}

/// The JWT's header and claims, after checking its signature with `verify`.
fn jwt(token: &str, alg: &'static dyn signature::VerificationAlgorithm, public: &[u8]) -> (Value, Value) {
    let (input, sig) = token.rsplit_once('.').unwrap();
    UnparsedPublicKey::new(alg, public)
        .verify(input.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).unwrap())
        .expect("the JWT signature verifies");
    let (h, c) = input.split_once('.').unwrap();
    let part = |p: &str| serde_json::from_slice::<Value>(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap();
    (part(h), part(c))
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Key files for one test.
struct Keys {
    dir: PathBuf,
    apns_public: Vec<u8>,
    vapid_public: Vec<u8>,
}

impl Keys {
    fn new() -> Keys {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sotto-push-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let apns_public = p256_key(&dir.join("apns.p8"));
        let vapid_public = p256_key(&dir.join("vapid.pem"));
        Keys {
            dir,
            apns_public,
            vapid_public,
        }
    }

    /// A service account JSON file whose token endpoint is `token_uri`.
    fn service_account(&self, token_uri: &str) -> PathBuf {
        let key = std::fs::read_to_string(fixture("push", "fcm-service-account-key.pem")).unwrap();
        let sa = json!({
            "type": "service_account",
            "project_id": FCM_PROJECT,
            "private_key_id": "0123",
            "private_key": key,
            "client_email": "relay@sotto-test.iam.gserviceaccount.com",
            "token_uri": token_uri,
        });
        let path = self.dir.join("service-account.json");
        std::fs::write(&path, sa.to_string()).unwrap();
        path
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The push settings every test shares: the test CA, fast retries, a long interval.
fn base(c: &mut Config) {
    c.push.extra_root_certs = vec![fixture("tls", "ca.pem")];
    c.push.retry_base_ms = 5;
    c.push.retry_max_ms = 50;
    c.push.min_interval_secs = 3600;
}

fn apns(c: &mut Config, keys: &Keys, apns: &StandIn) {
    base(c);
    c.push.apns = Some(ApnsConfig {
        key_file: keys.dir.join("apns.p8"),
        key_id: KEY_ID.into(),
        team_id: TEAM_ID.into(),
        topic: TOPIC.into(),
        sandbox: false,
        endpoint: Some(apns.url()),
        expiration_secs: 3600,
    });
}

async fn put_push(relay: &Relay, d: &TestDevice, provider: PushProvider, token: &[u8]) -> (StatusCode, Vec<u8>) {
    let reg = PushRegistration {
        provider,
        token: token.to_vec(),
    };
    relay.authed(d, Method::PUT, "/v1/push", reg.encode()).await
}

/// Sends one envelope from `ws` to each of `to` and waits for it to be stored.
async fn store(ws: &mut Ws, id: u64, to: &[&TestDevice]) {
    send(
        ws,
        &Frame::Send(Send {
            message_id: id,
            access: vec![],
            body: b"ciphertext".to_vec(),
            recipients: to
                .iter()
                .map(|d| Recipient {
                    account_id: d.account_id(),
                    device_id: d.id(),
                    head: vec![],
                })
                .collect(),
        }),
    )
    .await;
    loop {
        match recv(ws).await {
            Frame::SendResult(SendResult { message_id, outcome }) => {
                assert_eq!(message_id, id);
                assert!(matches!(outcome, SendOutcome::Stored { .. }), "{outcome:?}");
                return;
            }
            Frame::QueueEmpty => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Waits until the relay has finished `n` push jobs.
async fn completions(relay: &Relay, n: u64) {
    let mut rx = relay.state.push_completions();
    tokio::time::timeout(FAILSAFE, rx.wait_for(|c| *c >= n))
        .await
        .expect("push jobs finished within the failsafe")
        .unwrap();
}

/// One sample of `/metrics`, e.g. `metric(&m, "push_sent_total", "apns")`.
fn metric(m: &str, name: &str, provider: &str) -> u64 {
    let line = if provider.is_empty() {
        format!("sotto_relay_{name} ")
    } else {
        format!("sotto_relay_{name}{{provider=\"{provider}\"}} ")
    };
    m.lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .unwrap_or_else(|| panic!("no {line}"))
        .parse()
        .unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Checks an APNs request: path, headers, provider token, the exact payload.
fn check_apns(req: &Req, token: &[u8], public: &[u8]) {
    assert_eq!(req.method, Method::POST);
    assert_eq!(req.path, format!("/3/device/{}", hex(token)));
    assert_eq!(req.header("apns-topic"), TOPIC);
    assert_eq!(req.header("apns-push-type"), "alert");
    assert_eq!(req.header("apns-priority"), "10");
    let expiration: u64 = req.header("apns-expiration").parse().unwrap();
    assert!(expiration > now_s() && expiration <= now_s() + 3600 + 5);
    let bearer = req.header("authorization").strip_prefix("bearer ").unwrap();
    let (h, c) = jwt(bearer, &signature::ECDSA_P256_SHA256_FIXED, public);
    assert_eq!(h, json!({"alg": "ES256", "kid": KEY_ID}));
    assert_eq!(c["iss"], TEAM_ID);
    assert!(c["iat"].as_u64().unwrap().abs_diff(now_s()) < 60);
    // No sender, no content, no conversation: the exact constant.
    assert_eq!(std::str::from_utf8(&req.body).unwrap(), APNS_PAYLOAD);
}

/// An APNs push reaches an offline device with a constant payload; a device connected in
/// the same send gets none.
async fn apns_offline_device_only(url: String) {
    let keys = Keys::new();
    let mut stand_in = StandIn::start(reply(200, ""), |_| None).await;
    let mut relay = Relay::start(&url, |c| apns(c, &keys, &stand_in)).await;
    let mut r = rng(1);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 2);
    assert_eq!(relay.register(&alice).await, StatusCode::CREATED);
    assert_eq!(relay.register(&bob).await, StatusCode::CREATED);
    let (b1, b2) = (&bob.devices[0], &bob.devices[1]);
    let (t1, t2) = ([0xb1; 32], [0xb2; 32]);
    assert_eq!(
        put_push(&relay, b1, PushProvider::Apns, &t1).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        put_push(&relay, b2, PushProvider::Apns, &t2).await.0,
        StatusCode::NO_CONTENT
    );

    let mut wb1 = relay.connect(b1).await;
    assert_eq!(recv(&mut wb1).await, Frame::QueueEmpty);
    let mut wa = relay.connect(&alice.devices[0]).await;
    store(&mut wa, 1, &[b1, b2]).await;
    // b1 got it live; only b2 was handed to the trigger (before the send was answered).
    assert!(matches!(recv(&mut wb1).await, Frame::Deliver(_)));
    assert_eq!(metric(&relay.metrics().await, "push_triggers_total", ""), 1);
    check_apns(&stand_in.next().await, &t2, &keys.apns_public);
    completions(&relay, 1).await;
    stand_in.quiet();
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "push_sent_total", "apns"), 1);
    assert_eq!(metric(&m, "push_failed_total", "apns"), 0);
    relay.stop().await;
}

/// A connection that ends with an envelope delivered and not acknowledged (an extension
/// closing just as another message came) gets its device a push then; one that
/// acknowledged everything, none.
async fn a_connection_ending_with_unacked_deliveries_pushes(url: String) {
    let keys = Keys::new();
    let mut stand_in = StandIn::start(reply(200, ""), |_| None).await;
    let mut relay = Relay::start(&url, |c| apns(c, &keys, &stand_in)).await;
    let mut r = rng(2);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 1);
    assert_eq!(relay.register(&alice).await, StatusCode::CREATED);
    assert_eq!(relay.register(&bob).await, StatusCode::CREATED);
    let b1 = &bob.devices[0];
    let t1 = [0xb1; 32];
    assert_eq!(
        put_push(&relay, b1, PushProvider::Apns, &t1).await.0,
        StatusCode::NO_CONTENT
    );
    let mut wa = relay.connect(&alice.devices[0]).await;
    // Acknowledged, then closed: no push.
    let mut wb1 = relay.connect(b1).await;
    assert_eq!(recv(&mut wb1).await, Frame::QueueEmpty);
    store(&mut wa, 1, &[b1]).await;
    let seq = match recv(&mut wb1).await {
        Frame::Deliver(d) => d.seq,
        other => panic!("expected a delivery, got {other:?}"),
    };
    send(&mut wb1, &Frame::Ack { seq }).await;
    hang_up(wb1).await;
    assert_eq!(metric(&relay.metrics().await, "push_triggers_total", ""), 0);
    // Delivered, not acknowledged, closed: one push for what it did not take.
    let mut wb1 = relay.connect(b1).await;
    assert_eq!(recv(&mut wb1).await, Frame::QueueEmpty);
    store(&mut wa, 2, &[b1]).await;
    assert!(matches!(recv(&mut wb1).await, Frame::Deliver(_)));
    hang_up(wb1).await;
    check_apns(&stand_in.next().await, &t1, &keys.apns_public);
    completions(&relay, 1).await;
    stand_in.quiet();
    assert_eq!(metric(&relay.metrics().await, "push_sent_total", "apns"), 1);
    relay.stop().await;
}

/// Typing and presence (ephemeral frames) never push; a stored envelope after them does,
/// once.
async fn ephemeral_frames_never_push(url: String) {
    let keys = Keys::new();
    let mut stand_in = StandIn::start(reply(200, ""), |_| None).await;
    let mut relay = Relay::start(&url, |c| apns(c, &keys, &stand_in)).await;
    let mut r = rng(2);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 1);
    assert_eq!(relay.register(&alice).await, StatusCode::CREATED);
    assert_eq!(relay.register(&bob).await, StatusCode::CREATED);
    let b1 = &bob.devices[0];
    assert_eq!(
        put_push(&relay, b1, PushProvider::Apns, &[7; 32]).await.0,
        StatusCode::NO_CONTENT
    );
    let mut wa = relay.connect(&alice.devices[0]).await;
    for payload in [b"typing".to_vec(), b"presence".to_vec()] {
        send(&mut wa, &Frame::Ephemeral { to: bob.id(), payload }).await;
    }
    // Frames are handled in order: the ephemeral ones were before this send.
    store(&mut wa, 1, &[b1]).await;
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "push_triggers_total", ""), 1);
    check_apns(&stand_in.next().await, &[7; 32], &keys.apns_public);
    completions(&relay, 1).await;
    let m = relay.metrics().await;
    // Had an ephemeral frame triggered, the envelope would have been coalesced.
    assert_eq!(metric(&m, "push_coalesced_total", "apns"), 0);
    assert_eq!(metric(&m, "push_sent_total", "apns"), 1);
    stand_in.quiet();
    relay.stop().await;
}

/// 1,000 envelopes to one offline device: one push, 999 coalesced (the interval is an
/// hour, so no second push is due).
async fn burst_is_coalesced(url: String) {
    const N: u64 = 1_000;
    let keys = Keys::new();
    let mut stand_in = StandIn::start(reply(200, ""), |_| None).await;
    let mut relay = Relay::start(&url, |c| {
        apns(c, &keys, &stand_in);
        c.limits.max_request_depth = 2_000;
        c.limits.max_request_bytes = 64 << 20;
    })
    .await;
    let mut r = rng(3);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 1);
    assert_eq!(relay.register(&alice).await, StatusCode::CREATED);
    assert_eq!(relay.register(&bob).await, StatusCode::CREATED);
    let b1 = &bob.devices[0];
    assert_eq!(
        put_push(&relay, b1, PushProvider::Apns, &[9; 32]).await.0,
        StatusCode::NO_CONTENT
    );
    let mut wa = relay.connect(&alice.devices[0]).await;
    assert_eq!(recv(&mut wa).await, Frame::QueueEmpty);
    for chunk in 0..N / 100 {
        let ids = chunk * 100 + 1..=chunk * 100 + 100;
        for id in ids.clone() {
            send(
                &mut wa,
                &Frame::Send(Send {
                    message_id: id,
                    access: vec![],
                    body: b"ciphertext".to_vec(),
                    recipients: vec![Recipient {
                        account_id: bob.id(),
                        device_id: b1.id(),
                        head: vec![],
                    }],
                }),
            )
            .await;
        }
        for id in ids {
            match recv(&mut wa).await {
                Frame::SendResult(SendResult { message_id, outcome }) => {
                    assert_eq!(message_id, id);
                    assert!(matches!(outcome, SendOutcome::Stored { .. }), "{outcome:?}");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    check_apns(&stand_in.next().await, &[9; 32], &keys.apns_public);
    completions(&relay, 1).await;
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "push_triggers_total", ""), N);
    assert_eq!(metric(&m, "push_sent_total", "apns"), 1);
    assert_eq!(metric(&m, "push_coalesced_total", "apns"), N - 1);
    assert_eq!(metric(&m, "push_dropped_total", "unknown"), 0);
    stand_in.quiet();
    relay.stop().await;
}

/// An envelope that arrives within the interval after a push is coalesced; when the
/// interval ends and the device still has not connected, one more push follows.
async fn follow_up_after_the_interval(url: String) {
    let keys = Keys::new();
    let mut stand_in = StandIn::start(reply(200, ""), |_| None).await;
    let mut relay = Relay::start(&url, |c| {
        apns(c, &keys, &stand_in);
        c.push.min_interval_secs = 1;
    })
    .await;
    let mut r = rng(8);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 1);
    assert_eq!(relay.register(&alice).await, StatusCode::CREATED);
    assert_eq!(relay.register(&bob).await, StatusCode::CREATED);
    let b1 = &bob.devices[0];
    assert_eq!(
        put_push(&relay, b1, PushProvider::Apns, &[5; 32]).await.0,
        StatusCode::NO_CONTENT
    );
    let mut wa = relay.connect(&alice.devices[0]).await;
    store(&mut wa, 1, &[b1]).await;
    check_apns(&stand_in.next().await, &[5; 32], &keys.apns_public);
    completions(&relay, 1).await;
    let first = std::time::Instant::now();
    for id in 2..=4 {
        store(&mut wa, id, &[b1]).await;
    }
    assert_eq!(metric(&relay.metrics().await, "push_coalesced_total", "apns"), 3);
    check_apns(&stand_in.next().await, &[5; 32], &keys.apns_public);
    assert!(
        first.elapsed() >= std::time::Duration::from_millis(900),
        "{:?}",
        first.elapsed()
    );
    completions(&relay, 2).await;
    assert_eq!(metric(&relay.metrics().await, "push_sent_total", "apns"), 2);
    stand_in.quiet();
    relay.stop().await;
}

/// A push waiting to retry holds no slot: with one slot, a provider's 429 asking for a
/// minute does not hold up another device's push, which goes out before the retry.
async fn a_retry_wait_holds_no_push_slot(url: String) {
    let keys = Keys::new();
    let mut stand_in = StandIn::start(reply(200, ""), |_| None).await;
    let mut relay = Relay::start(&url, |c| {
        apns(c, &keys, &stand_in);
        c.push.max_concurrent = 1;
        c.push.retry_max_ms = 120_000;
    })
    .await;
    let mut r = rng(14);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 2);
    assert_eq!(relay.register(&alice).await, StatusCode::CREATED);
    assert_eq!(relay.register(&bob).await, StatusCode::CREATED);
    let (b1, b2) = (&bob.devices[0], &bob.devices[1]);
    for (d, token) in [(b1, [1; 32]), (b2, [2; 32])] {
        assert_eq!(
            put_push(&relay, d, PushProvider::Apns, &token).await.0,
            StatusCode::NO_CONTENT
        );
    }
    let mut wa = relay.connect(&alice.devices[0]).await;
    stand_in.script(&[Reply {
        status: 429,
        retry_after: Some("60"),
        body: r#"{"reason":"TooManyRequests"}"#.into(),
    }]);
    store(&mut wa, 1, &[b1]).await;
    check_apns(&stand_in.next().await, &[1; 32], &keys.apns_public);
    // b1's push now waits a minute to retry; b2's goes out meanwhile.
    store(&mut wa, 2, &[b2]).await;
    check_apns(&stand_in.next().await, &[2; 32], &keys.apns_public);
    completions(&relay, 1).await;
    assert_eq!(metric(&relay.metrics().await, "push_sent_total", "apns"), 1);
    relay.stop().await;
}

/// 429 (with `Retry-After`) and 503 are retried, then the push goes through; a
/// registration APNs reports gone (410, or 400 `BadDeviceToken`) is deleted; another 4xx
/// fails the push and keeps the registration.
async fn apns_retries_and_gone(url: String) {
    let keys = Keys::new();
    let mut stand_in = StandIn::start(reply(200, ""), |_| None).await;
    let mut relay = Relay::start(&url, |c| apns(c, &keys, &stand_in)).await;
    let mut r = rng(4);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 4);
    assert_eq!(relay.register(&alice).await, StatusCode::CREATED);
    assert_eq!(relay.register(&bob).await, StatusCode::CREATED);
    let (b1, b2) = (&bob.devices[0], &bob.devices[1]);
    assert_eq!(
        put_push(&relay, b1, PushProvider::Apns, &[1; 32]).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        put_push(&relay, b2, PushProvider::Apns, &[2; 32]).await.0,
        StatusCode::NO_CONTENT
    );
    let mut wa = relay.connect(&alice.devices[0]).await;

    stand_in.script(&[
        Reply {
            status: 429,
            retry_after: Some("0"),
            body: r#"{"reason":"TooManyRequests"}"#.into(),
        },
        reply(503, r#"{"reason":"ServiceUnavailable"}"#),
    ]);
    store(&mut wa, 1, &[b1]).await;
    for _ in 0..3 {
        check_apns(&stand_in.next().await, &[1; 32], &keys.apns_public);
    }
    completions(&relay, 1).await;
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "push_sent_total", "apns"), 1);
    assert_eq!(metric(&m, "push_failed_total", "apns"), 0);

    stand_in.script(&[reply(410, r#"{"reason":"Unregistered","timestamp":1700000000000}"#)]);
    store(&mut wa, 2, &[b2]).await;
    check_apns(&stand_in.next().await, &[2; 32], &keys.apns_public);
    completions(&relay, 2).await;
    let db = &relay.state.store;
    assert_eq!(db.push_registration(&bob.id(), b2.id()).await.unwrap(), None);
    assert!(db.push_registration(&bob.id(), b1.id()).await.unwrap().is_some());
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "push_registrations_deleted_total", "apns"), 1);

    let (b3, b4) = (&bob.devices[2], &bob.devices[3]);
    assert_eq!(
        put_push(&relay, b3, PushProvider::Apns, &[3; 32]).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        put_push(&relay, b4, PushProvider::Apns, &[4; 32]).await.0,
        StatusCode::NO_CONTENT
    );
    stand_in.script(&[reply(400, r#"{"reason":"BadDeviceToken"}"#)]);
    store(&mut wa, 3, &[b3]).await;
    check_apns(&stand_in.next().await, &[3; 32], &keys.apns_public);
    completions(&relay, 3).await;
    stand_in.script(&[reply(400, r#"{"reason":"BadExpirationDate"}"#)]);
    store(&mut wa, 4, &[b4]).await;
    check_apns(&stand_in.next().await, &[4; 32], &keys.apns_public);
    completions(&relay, 4).await;
    assert_eq!(db.push_registration(&bob.id(), b3.id()).await.unwrap(), None);
    assert!(db.push_registration(&bob.id(), b4.id()).await.unwrap().is_some());
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "push_registrations_deleted_total", "apns"), 2);
    // The two gone registrations and the refused push; the retried one was sent.
    assert_eq!(metric(&m, "push_failed_total", "apns"), 3);
    assert_eq!(metric(&m, "push_sent_total", "apns"), 1);
    stand_in.quiet();
    relay.stop().await;
}

/// The FCM token endpoint: checks the RS256 assertion with the fixture key's public half.
fn fcm_token(req: &Req) -> Option<Reply> {
    if req.path != "/token" {
        return None;
    }
    let form = std::str::from_utf8(&req.body).ok()?;
    let assertion = form.strip_prefix("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=")?;
    let (h, c) = jwt(assertion, &signature::RSA_PKCS1_2048_8192_SHA256, &fcm_public());
    assert_eq!(h["alg"], "RS256");
    assert_eq!(c["iss"], "relay@sotto-test.iam.gserviceaccount.com");
    assert_eq!(c["scope"], "https://www.googleapis.com/auth/firebase.messaging");
    assert!(c["aud"].as_str()?.ends_with("/token"));
    assert_eq!(c["exp"].as_u64()? - c["iat"].as_u64()?, 3600);
    Some(reply(
        200,
        &json!({"access_token": FCM_ACCESS_TOKEN, "expires_in": 3599, "token_type": "Bearer"}).to_string(),
    ))
}

fn fcm_public() -> Vec<u8> {
    let der = PrivatePkcs8KeyDer::from_pem_file(fixture("push", "fcm-service-account-key.pem")).unwrap();
    let key = signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
    key.public().as_ref().to_vec()
}

/// FCM HTTP v1: an OAuth token, then a data-only, high-priority message; a token FCM
/// reports UNREGISTERED (404) is deleted; a refused access token (401) is renewed.
async fn fcm_sends_and_forgets_unregistered(url: String) {
    let keys = Keys::new();
    let mut stand_in = StandIn::start(reply(200, r#"{"name":"projects/sotto-test/messages/1"}"#), fcm_token).await;
    let sa = keys.service_account(&format!("{}/token", stand_in.url()));
    let mut relay = Relay::start(&url, |c| {
        base(c);
        c.push.fcm = Some(FcmConfig {
            service_account_file: sa.clone(),
            endpoint: Some(stand_in.url()),
        });
    })
    .await;
    let mut r = rng(5);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 3);
    assert_eq!(relay.register(&alice).await, StatusCode::CREATED);
    assert_eq!(relay.register(&bob).await, StatusCode::CREATED);
    let (b1, b2) = (&bob.devices[0], &bob.devices[1]);
    assert_eq!(
        put_push(&relay, b1, PushProvider::Fcm, b"fcm-token-1:APA91b").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        put_push(&relay, b2, PushProvider::Fcm, b"fcm-token-2:APA91b").await.0,
        StatusCode::NO_CONTENT
    );
    let mut wa = relay.connect(&alice.devices[0]).await;

    store(&mut wa, 1, &[b1]).await;
    let token = stand_in.next().await;
    assert_eq!(token.path, "/token");
    assert_eq!(token.header("content-type"), "application/x-www-form-urlencoded");
    let msg = stand_in.next().await;
    assert_eq!(msg.method, Method::POST);
    assert_eq!(msg.path, format!("/v1/projects/{FCM_PROJECT}/messages:send"));
    assert_eq!(msg.header("authorization"), format!("Bearer {FCM_ACCESS_TOKEN}"));
    let body: Value = serde_json::from_slice(&msg.body).unwrap();
    assert_eq!(
        body,
        json!({"message": {"token": "fcm-token-1:APA91b", "data": {"sotto": "1"}, "android": {"priority": "HIGH"}}})
    );
    completions(&relay, 1).await;

    stand_in.script(&[reply(
        404,
        &json!({"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND",
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}})
        .to_string(),
    )]);
    store(&mut wa, 2, &[b2]).await;
    // The access token is reused: straight to the send.
    let msg = stand_in.next().await;
    assert_eq!(msg.path, format!("/v1/projects/{FCM_PROJECT}/messages:send"));
    completions(&relay, 2).await;
    assert_eq!(
        relay.state.store.push_registration(&bob.id(), b2.id()).await.unwrap(),
        None
    );

    // An access token FCM no longer takes (401) is replaced, and the push retried.
    stand_in.script(&[reply(
        401,
        r#"{"error":{"code":401,"message":"Request had invalid authentication credentials.","status":"UNAUTHENTICATED"}}"#,
    )]);
    let b3 = &bob.devices[2];
    assert_eq!(
        put_push(&relay, b3, PushProvider::Fcm, b"fcm-token-3:APA91b").await.0,
        StatusCode::NO_CONTENT
    );
    store(&mut wa, 3, &[b3]).await;
    assert_eq!(
        stand_in.next().await.path,
        format!("/v1/projects/{FCM_PROJECT}/messages:send")
    );
    assert_eq!(stand_in.next().await.path, "/token");
    let msg = stand_in.next().await;
    assert_eq!(msg.header("authorization"), format!("Bearer {FCM_ACCESS_TOKEN}"));
    completions(&relay, 3).await;
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "push_sent_total", "fcm"), 2);
    assert_eq!(metric(&m, "push_registrations_deleted_total", "fcm"), 1);
    stand_in.quiet();
    relay.stop().await;
}

/// A browser's subscription: its P-256 key and auth secret stay here.
struct Browser {
    secret: p256::SecretKey,
    public: Vec<u8>,
    auth: [u8; 16],
}

impl Browser {
    fn new(seed: u64) -> Browser {
        let mut r = rng(seed);
        let secret = p256::SecretKey::random(&mut r);
        let public = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&secret.public_key(), false)
            .as_bytes()
            .to_vec();
        let mut auth = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut r, &mut auth);
        Browser { secret, public, auth }
    }

    /// `PushSubscription.toJSON()`.
    fn subscription(&self, endpoint: &str) -> Vec<u8> {
        json!({
            "endpoint": endpoint,
            "expirationTime": null,
            "keys": {"p256dh": URL_SAFE_NO_PAD.encode(&self.public), "auth": URL_SAFE_NO_PAD.encode(self.auth)},
        })
        .to_string()
        .into_bytes()
    }

    /// Decrypts an `aes128gcm` body (RFC 8291 §3.4, RFC 8188 §2).
    fn decrypt(&self, body: &[u8]) -> Vec<u8> {
        use hkdf::Hkdf;
        use sha2::Sha256;
        let salt = &body[..16];
        assert_eq!(u32::from_be_bytes(body[16..20].try_into().unwrap()), 4096);
        let idlen = usize::from(body[20]);
        assert_eq!(idlen, 65);
        let as_public = &body[21..21 + idlen];
        let mut ct = body[21 + idlen..].to_vec();
        let peer = p256::PublicKey::from_sec1_bytes(as_public).unwrap();
        let shared = p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), peer.as_affine());
        let mut info = b"WebPush: info\0".to_vec();
        info.extend_from_slice(&self.public);
        info.extend_from_slice(as_public);
        let mut ikm = [0u8; 32];
        Hkdf::<Sha256>::new(Some(&self.auth), shared.raw_secret_bytes())
            .expand(&info, &mut ikm)
            .unwrap();
        let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
        let (mut cek, mut nonce) = ([0u8; 16], [0u8; 12]);
        prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek).unwrap();
        prk.expand(b"Content-Encoding: nonce\0", &mut nonce).unwrap();
        let key = ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, &cek).unwrap());
        let plain = key
            .open_in_place(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::empty(),
                &mut ct,
            )
            .expect("the push decrypts");
        // The last record ends with the delimiter 0x02, then only padding zeros.
        let end = plain.iter().rposition(|b| *b != 0).unwrap();
        assert_eq!(plain[end], 0x02);
        plain[..end].to_vec()
    }
}

/// The receiver above decrypts the example of RFC 8291 Appendix A, so it checks the
/// relay's encryption against the specification, not against itself.
#[test]
fn receiver_decrypts_the_rfc_8291_example() {
    let b64 = |s: &str| URL_SAFE_NO_PAD.decode(s).unwrap();
    let secret = p256::SecretKey::from_slice(&b64("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94")).unwrap();
    let browser = Browser {
        public: b64("BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"),
        secret,
        auth: b64("BTBZMqHH6r4Tts7J_aSIgg").try_into().unwrap(),
    };
    let body = b64(
        "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_\
         yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN",
    );
    assert_eq!(browser.decrypt(&body), b"When I grow up, I want to be a watermelon");
}

/// Web Push: the receiver decrypts the RFC 8291 body to the constant and checks the VAPID
/// token; a 410 deletes the subscription; a malformed subscription is refused at PUT.
async fn webpush_encrypts_and_identifies(url: String) {
    let keys = Keys::new();
    let mut stand_in = StandIn::start(reply(201, ""), |_| None).await;
    let mut relay = Relay::start(&url, |c| {
        base(c);
        c.push.webpush = Some(WebPushConfig {
            vapid_private_key_file: keys.dir.join("vapid.pem"),
            subject: SUBJECT.into(),
            ttl_secs: 600,
            allow_insecure_endpoints: true,
        });
    })
    .await;
    let mut r = rng(6);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 2);
    assert_eq!(relay.register(&alice).await, StatusCode::CREATED);
    assert_eq!(relay.register(&bob).await, StatusCode::CREATED);
    let (b1, b2) = (&bob.devices[0], &bob.devices[1]);
    let (browser1, browser2) = (Browser::new(61), Browser::new(62));
    let sub1 = browser1.subscription(&format!("{}/push/one", stand_in.url()));
    let sub2 = browser2.subscription(&format!("{}/push/two", stand_in.url()));
    assert_eq!(
        put_push(&relay, b1, PushProvider::WebPush, &sub1).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        put_push(&relay, b2, PushProvider::UnifiedPush, &sub2).await.0,
        StatusCode::NO_CONTENT
    );
    for bad in [
        b"https://push.example/not-json".to_vec(),
        browser1.subscription("http://push.example/plain-http"),
        br#"{"endpoint":"https://push.example/x","keys":{"p256dh":"AAAA","auth":"AAAA"}}"#.to_vec(),
    ] {
        let (status, body) = put_push(&relay, b1, PushProvider::WebPush, &bad).await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::BAD_REQUEST, ErrorCode::MALFORMED)
        );
    }
    let mut wa = relay.connect(&alice.devices[0]).await;

    store(&mut wa, 1, &[b1]).await;
    let req = stand_in.next().await;
    assert_eq!(req.path, "/push/one");
    assert_eq!(req.header("content-encoding"), "aes128gcm");
    assert_eq!(req.header("ttl"), "600");
    assert_eq!(req.header("urgency"), "high");
    let auth = req.header("authorization").strip_prefix("vapid ").unwrap();
    let (t, k) = auth.split_once(", ").unwrap();
    let (t, k) = (t.strip_prefix("t=").unwrap(), k.strip_prefix("k=").unwrap());
    assert_eq!(URL_SAFE_NO_PAD.decode(k).unwrap(), keys.vapid_public);
    let (h, c) = jwt(t, &signature::ECDSA_P256_SHA256_FIXED, &keys.vapid_public);
    assert_eq!(h["alg"], "ES256");
    assert_eq!(c["aud"], stand_in.url());
    assert_eq!(c["sub"], SUBJECT);
    let exp = c["exp"].as_u64().unwrap();
    assert!(exp > now_s() && exp <= now_s() + 24 * 3600);
    // No sender, no content, no conversation: the exact constant.
    assert_eq!(browser1.decrypt(&req.body), br#"{"sotto":1}"#);
    completions(&relay, 1).await;

    stand_in.script(&[reply(410, "")]);
    store(&mut wa, 2, &[b2]).await;
    let req = stand_in.next().await;
    assert_eq!(req.path, "/push/two");
    assert_eq!(browser2.decrypt(&req.body), br#"{"sotto":1}"#);
    completions(&relay, 2).await;
    assert_eq!(
        relay.state.store.push_registration(&bob.id(), b2.id()).await.unwrap(),
        None
    );
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "push_sent_total", "webpush"), 1);
    assert_eq!(metric(&m, "push_registrations_deleted_total", "unifiedpush"), 1);
    stand_in.quiet();
    relay.stop().await;
}

/// Without `allow_insecure_endpoints` a loopback endpoint is never contacted; a provider
/// without credentials drops its pushes.
async fn refused_endpoints_and_unconfigured_providers(url: String) {
    let keys = Keys::new();
    let mut stand_in = StandIn::start(reply(201, ""), |_| None).await;
    let mut relay = Relay::start(&url, |c| {
        base(c);
        c.push.webpush = Some(WebPushConfig {
            vapid_private_key_file: keys.dir.join("vapid.pem"),
            subject: SUBJECT.into(),
            ttl_secs: 600,
            allow_insecure_endpoints: false,
        });
    })
    .await;
    let mut r = rng(7);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 2);
    assert_eq!(relay.register(&alice).await, StatusCode::CREATED);
    assert_eq!(relay.register(&bob).await, StatusCode::CREATED);
    let (b1, b2) = (&bob.devices[0], &bob.devices[1]);
    let sub = Browser::new(71).subscription(&format!("{}/push/one", stand_in.url()));
    assert_eq!(
        put_push(&relay, b1, PushProvider::WebPush, &sub).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        put_push(&relay, b2, PushProvider::Apns, &[3; 32]).await.0,
        StatusCode::NO_CONTENT
    );
    let mut wa = relay.connect(&alice.devices[0]).await;
    store(&mut wa, 1, &[b1, b2]).await;
    completions(&relay, 2).await;
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "push_failed_total", "webpush"), 1);
    assert_eq!(metric(&m, "push_dropped_total", "apns"), 1);
    assert_eq!(metric(&m, "push_sent_total", "webpush"), 0);
    stand_in.quiet();
    relay.stop().await;
}

/// Credentials never reach the logs or `Debug`: the relay's state (configuration,
/// providers) prints no key material.
async fn credentials_stay_out_of_debug(url: String) {
    let keys = Keys::new();
    let stand_in = StandIn::start(reply(200, ""), |_| None).await;
    let sa = keys.service_account(&format!("{}/token", stand_in.url()));
    let mut relay = Relay::start(&url, |c| {
        apns(c, &keys, &stand_in);
        c.push.fcm = Some(FcmConfig {
            service_account_file: sa.clone(),
            endpoint: Some(stand_in.url()),
        });
    })
    .await;
    let shown = format!("{:?}", relay.state);
    let p8 = std::fs::read_to_string(keys.dir.join("apns.p8")).unwrap();
    let p8_body = p8.lines().nth(1).unwrap();
    let rsa = std::fs::read_to_string(fixture("push", "fcm-service-account-key.pem")).unwrap();
    for secret in [p8_body, rsa.lines().nth(1).unwrap(), "PRIVATE KEY"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    relay.stop().await;
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
            t!(apns_offline_device_only);
            t!(a_connection_ending_with_unacked_deliveries_pushes);
            t!(ephemeral_frames_never_push);
            t!(burst_is_coalesced);
            t!(follow_up_after_the_interval);
            t!(apns_retries_and_gone);
            t!(a_retry_wait_holds_no_push_slot);
            t!(fcm_sends_and_forgets_unregistered);
            t!(webpush_encrypts_and_identifies);
            t!(refused_endpoints_and_unconfigured_providers);
            t!(credentials_stay_out_of_debug);
        }
    };
}

backend!(sqlite, Some(sqlite_url()));
backend!(postgres, postgres_url().await);
