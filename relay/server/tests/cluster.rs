//! Three `sotto-relay` processes on one PostgreSQL database and one nats-server, with the
//! devices connected to different nodes:
//!
//! - a fan-out stored through one node reaches devices connected to the two others at
//!   once (the bus, not a poll: polls are a minute apart in this test);
//! - ephemeral frames cross nodes; a device that connects to a second node closes its
//!   connection on the first (`REPLACED`); a device removed from its list through one
//!   node loses its connection on another (`UNKNOWN_DEVICE`);
//! - an HTTP challenge taken from one node is answered on another, once: the third node
//!   refuses the same answer;
//! - exactly one node triggers the pushes of a device that is connected nowhere, and no
//!   node does for a device connected to any of them;
//! - a node killed with SIGKILL in the middle of a load: every send answered `Stored` is
//!   delivered to every device, each under one seq, and the device that was connected to
//!   the dead node goes on through a surviving one;
//! - nats-server killed in the middle of a load: `/readyz` says so, the nodes go on
//!   delivering (through mailbox polls), and once NATS is back they know again which
//!   devices are connected where, and nothing was lost.
//!
//! Needs `SOTTO_TEST_POSTGRES_URL` and nats-server (on `PATH`, in /usr/sbin, or
//! `SOTTO_NATS_SERVER`); both are required when `CI=true`, and scripts/test.sh provides
//! them.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::node::*;
use common::relay::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use hyper::{Method, StatusCode};
use sotto_crypto::{AccountId, DeviceId};
use sotto_proto::{AuthResponse, Body, Challenge, ErrorCode, Frame, Recipient, Send, SendOutcome, SendResult};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Every node serves this URL (the load balancer's, in a real cluster): clients sign
/// their answers over its hash whichever node they reach.
const PUBLIC_URL: &str = "http://relay.cluster.test";

const SECRET: &str = "5c0770c1a5fe11a6e0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566ff";

fn config(nats: SocketAddr, secret: &std::path::Path) -> String {
    format!(
        "log_level = \"info\"
metrics_token = \"{METRICS_TOKEN}\"

{UNLIMITED}
[push]
min_interval_secs = 3600

[cluster]
nats_url = \"nats://{nats}\"
secret_file = \"{}\"
poll_interval_ms = {}
heartbeat_ms = 500
node_timeout_ms = 5000
",
        secret.display(),
        POLL_MS,
    )
}

/// Mailbox polls while the bus is down; long enough that a delivery within a few seconds
/// while it is up can only have come through the bus.
const POLL_MS: u64 = 60_000;

fn nats_server() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("SOTTO_NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

async fn start_nats(bin: &std::path::Path, addr: SocketAddr) -> Child {
    let child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &addr.port().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("nats-server starts");
    wait_until("nats-server listens", || async move {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    child
}

/// Checks `cond` until it holds (a failsafe fails the test). For states of other
/// processes that no event of this test announces: a port that opens, a `/readyz`.
async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + FAILSAFE;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within the failsafe"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ready(e: &Endpoint) -> StatusCode {
    e.get("/readyz").await.0
}

/// Sum of a counter over the nodes, and each node's value.
async fn counter(nodes: &[&Endpoint], name: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for n in nodes {
        let text = n.metrics().await;
        let v = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("sotto_relay_{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in the metrics"));
        out.push(v);
    }
    out
}

/// The next frame (pings and pongs skipped).
async fn next_frame(ws: &mut Ws) -> Frame {
    recv(ws).await
}

fn fan_out(to: &[(AccountId, DeviceId)], k: u64) -> Frame {
    Frame::Send(Send {
        message_id: k,
        access: vec![],
        body: b"shared body".to_vec(),
        recipients: to
            .iter()
            .map(|(a, d)| Recipient {
                account_id: *a,
                device_id: *d,
                head: k.to_be_bytes().to_vec(),
            })
            .collect(),
    })
}

fn number(envelope: &[u8]) -> u64 {
    u64::from_be_bytes(envelope[..8].try_into().expect("an 8-byte head"))
}

/// A device that takes and acknowledges what it is handed, reporting (seq, send number).
fn receiver(mut ws: Ws, out: mpsc::UnboundedSender<(u64, u64)>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(Ok(m)) = ws.next().await {
            let Message::Binary(b) = m else { continue };
            match Frame::decode(&b) {
                Ok(Frame::Deliver(e)) => {
                    let _ = out.send((e.seq, number(&e.envelope)));
                    if ws
                        .send(Message::Binary(Frame::Ack { seq: e.seq }.encode().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Ok(Frame::QueueEmpty | Frame::EphemeralDeliver { .. }) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    })
}

/// Sends `range` through `node` (anonymously), each to every device of `to`, and returns
/// the sends answered `Stored`; with `midway`, runs it once half the answers are in.
async fn load<Fut: std::future::Future<Output = ()>>(
    node: &Endpoint,
    to: &[(AccountId, DeviceId)],
    range: std::ops::Range<u64>,
    midway: impl FnOnce() -> Fut,
) -> BTreeSet<u64> {
    let (mut tx, mut rx) = node.open_anonymous().await.split();
    let frames: Vec<Frame> = range.clone().map(|k| fan_out(to, k)).collect();
    let writer = tokio::spawn(async move {
        for f in frames {
            tx.send(Message::Binary(f.encode().into())).await.expect("send");
        }
        tx
    });
    let total = range.end - range.start;
    let mut stored = BTreeSet::new();
    let mut midway = Some(midway);
    let mut answered = 0;
    while answered < total {
        let m = tokio::time::timeout(FAILSAFE, rx.next())
            .await
            .expect("an answer within the failsafe")
            .expect("open")
            .expect("no error");
        let Message::Binary(b) = m else { continue };
        match Frame::decode(&b).expect("a frame") {
            Frame::SendResult(SendResult { message_id, outcome }) => {
                answered += 1;
                match outcome {
                    SendOutcome::Stored { seqs } => {
                        assert_eq!(seqs.len(), to.len());
                        assert!(stored.insert(message_id), "answered twice");
                    }
                    // Refused while the node's writer was saturated: not stored, a
                    // client would send it again.
                    SendOutcome::Rejected { code: ErrorCode::BUSY } => {}
                    other => panic!("send {message_id}: {other:?}"),
                }
            }
            other => panic!("unexpected {other:?}"),
        }
        if answered == total / 2
            && let Some(f) = midway.take()
        {
            f().await;
        }
    }
    let _ = writer.await;
    stored
}

/// Collects what `rx` reported until every send of `want` arrived.
async fn until_delivered(
    rx: &mut mpsc::UnboundedReceiver<(u64, u64)>,
    got: &mut Vec<(u64, u64)>,
    want: &BTreeSet<u64>,
    within: Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let have: BTreeSet<u64> = got.iter().map(|(_, k)| *k).collect();
        if want.is_subset(&have) {
            return;
        }
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(x)) => got.push(x),
            _ => panic!(
                "{} of {} sends not delivered in time",
                want.difference(&have).count(),
                want.len()
            ),
        }
    }
}

/// Everything waiting for `d`, as (seq, send number), acknowledged.
async fn drain_numbers(node: &Endpoint, d: &TestDevice) -> Vec<(u64, u64)> {
    drain(node, d).await.into_iter().map(|(s, e)| (s, number(&e))).collect()
}

/// Each send under one seq, each seq for one send.
fn one_seq_each(got: &[(u64, u64)]) -> usize {
    let mut seq_of = BTreeMap::new();
    let mut send_of = BTreeMap::new();
    for (seq, k) in got {
        assert_eq!(*seq_of.entry(*k).or_insert(*seq), *seq, "send {k} under two seqs");
        assert_eq!(*send_of.entry(*seq).or_insert(*k), *k, "seq {seq} for two sends");
    }
    got.len() - seq_of.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_postgres_and_nats() {
    let Some(nats_bin) = nats_server() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("nats-server is missing in CI: the cluster test must not be skipped");
        }
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: the cluster test (install nats-server, or run scripts/test.sh) ***\n"
        );
        return;
    };
    let Some(url) = postgres_url().await else { return };
    let dir = std::env::temp_dir().join(format!("sotto-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("cluster.key");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let nats_addr = free_port();
    let mut nats = start_nats(&nats_bin, nats_addr).await;
    let cfg = dir.join("relay.toml");
    std::fs::write(&cfg, config(nats_addr, &secret)).unwrap();
    let addrs = [free_port(), free_port(), free_port()];
    let mut nodes = Vec::new();
    for a in addrs {
        nodes.push(Some(Node::start(&cfg, &url, a, PUBLIC_URL).await));
    }
    let ep = |i: usize| Endpoint { addr: addrs[i] };
    for i in 0..3 {
        wait_until("every node on the bus", || async move {
            ready(&ep(i)).await == StatusCode::OK
        })
        .await;
    }

    let mut r = rng(314);
    let mut alice = account(&mut r, 2);
    let bob = account(&mut r, 1);
    let carol = account(&mut r, 1);
    assert_eq!(ep(0).register(&alice).await, StatusCode::CREATED);
    assert_eq!(ep(1).register(&bob).await, StatusCode::CREATED);
    assert_eq!(ep(2).register(&carol).await, StatusCode::CREATED);
    let (a1, a2, b1, c1) = (&alice.devices[0], &alice.devices[1], &bob.devices[0], &carol.devices[0]);

    // Alice's devices on nodes 0 and 1, Bob's on node 2. Wait until every node heard of
    // every connection, so that no push is owed to them.
    let mut ws_a1 = ep(0).connect(a1).await;
    let mut ws_a2 = ep(1).connect(a2).await;
    let mut ws_b1 = ep(2).connect(b1).await;
    for ws in [&mut ws_a1, &mut ws_a2, &mut ws_b1] {
        assert_eq!(next_frame(ws).await, Frame::QueueEmpty);
    }
    wait_until("every node knows the two devices connected elsewhere", || async {
        counter(&[&ep(0), &ep(1), &ep(2)], "bus_remote_devices").await == [2, 2, 2]
    })
    .await;

    // A fan-out stored through node 2 reaches both of Alice's devices at once.
    let to_alice = [(alice.id(), a1.id()), (alice.id(), a2.id())];
    let mut sender = ep(2).connect(b1).await;
    // (Bob's first connection on node 2 was just replaced by this one.)
    assert_eq!(
        next_frame(&mut ws_b1).await,
        Frame::Error {
            code: ErrorCode::REPLACED
        }
    );
    assert_eq!(next_frame(&mut sender).await, Frame::QueueEmpty);
    send(&mut sender, &fan_out(&to_alice, 1)).await;
    assert!(matches!(
        next_frame(&mut sender).await,
        Frame::SendResult(SendResult {
            outcome: SendOutcome::Stored { .. },
            ..
        })
    ));
    for ws in [&mut ws_a1, &mut ws_a2] {
        match next_frame(ws).await {
            Frame::Deliver(e) => {
                assert_eq!(number(&e.envelope), 1);
                send(ws, &Frame::Ack { seq: e.seq }).await;
            }
            other => panic!("expected the delivery, got {other:?}"),
        }
    }

    // Typing from Bob (node 2) reaches Alice's devices on nodes 0 and 1.
    send(
        &mut sender,
        &Frame::Ephemeral {
            to: alice.id(),
            payload: b"typing".to_vec(),
        },
    )
    .await;
    for ws in [&mut ws_a1, &mut ws_a2] {
        assert_eq!(
            next_frame(ws).await,
            Frame::EphemeralDeliver {
                payload: b"typing".to_vec()
            }
        );
    }

    // An HTTP challenge from node 0, answered on node 1; node 2 refuses the same answer.
    let (status, bytes) = ep(0).get("/v1/auth/challenge").await;
    assert_eq!(status, StatusCode::OK);
    let c = Challenge::decode(&bytes).unwrap();
    let path = "/v1/prekeys/count";
    let header = sotto_proto::authorization_header(&AuthResponse {
        account_id: a1.account_id(),
        device_id: a1.id(),
        nonce: c.nonce,
        signature: a1.sign_http(&c, "GET", path, b""),
    });
    let (status, _) = ep(1).http(Method::GET, path, Some(header.clone()), vec![]).await;
    assert_eq!(status, StatusCode::OK, "a challenge of node 0 answered on node 1");
    let (status, body) = ep(2).http(Method::GET, path, Some(header), vec![]).await;
    assert_ne!(status, StatusCode::OK);
    assert_eq!(error_code(&body), ErrorCode::CHALLENGE_UNKNOWN, "an answer used twice");

    // Pushes: Carol is connected nowhere, so exactly one node triggers hers; Alice's
    // devices are connected, so none does for them.
    let nodes_ep = [ep(0), ep(1), ep(2)];
    let refs: Vec<&Endpoint> = nodes_ep.iter().collect();
    let triggers_before = counter(&refs, "push_triggers_total").await;
    for k in 2..12 {
        send(&mut sender, &fan_out(&[(carol.id(), c1.id())], k)).await;
        assert!(matches!(next_frame(&mut sender).await, Frame::SendResult(_)));
    }
    wait_until("the push owner counts Carol's triggers", || async {
        let now = counter(&refs, "push_triggers_total").await;
        now.iter().zip(&triggers_before).map(|(n, b)| n - b).sum::<u64>() >= 10
    })
    .await;
    for k in 12..22 {
        send(&mut sender, &fan_out(&to_alice, k)).await;
        assert!(matches!(next_frame(&mut sender).await, Frame::SendResult(_)));
    }
    for ws in [&mut ws_a1, &mut ws_a2] {
        for k in 12..22 {
            match next_frame(ws).await {
                Frame::Deliver(e) => {
                    assert_eq!(number(&e.envelope), k);
                    send(ws, &Frame::Ack { seq: e.seq }).await;
                }
                other => panic!("expected delivery {k}, got {other:?}"),
            }
        }
    }
    let triggers: Vec<u64> = counter(&refs, "push_triggers_total")
        .await
        .iter()
        .zip(&triggers_before)
        .map(|(n, b)| n - b)
        .collect();
    assert_eq!(
        triggers.iter().filter(|&&t| t == 10).count(),
        1,
        "one node pushes for Carol, none for Alice: {triggers:?}"
    );
    assert_eq!(triggers.iter().sum::<u64>(), 10, "{triggers:?}");
    assert_eq!(drain(&ep(1), c1).await.len(), 10);

    // Alice's second device is removed through node 0: its connection on node 1 ends.
    let mut keep = std::mem::take(&mut alice.devices);
    keep.truncate(1);
    alice.relist(2, keep);
    let (status, _) = ep(0).put_list(&alice.id(), alice.list.signed().as_bytes()).await;
    assert!(status.is_success(), "{status}");
    assert_eq!(
        next_frame(&mut ws_a2).await,
        Frame::Error {
            code: ErrorCode::UNKNOWN_DEVICE
        }
    );
    closed(&mut ws_a2).await;
    drop(sender);

    // A node killed in the middle of a load. Alice's device is connected to node 0, Bob
    // sends through node 2 to it and to Carol (connected nowhere); node 0 dies halfway,
    // Alice's device goes on through node 1.
    let a1 = &alice.devices[0];
    let to = [(alice.id(), a1.id()), (carol.id(), c1.id())];
    let (tx, mut rx) = mpsc::unbounded_channel();
    let live = receiver(ws_a1, tx.clone());
    let victim = nodes[0].take();
    let stored = load(&ep(2), &to, 100..2_100, move || async move {
        if let Some(v) = victim {
            v.kill().await;
        }
    })
    .await;
    let _ = live.await;
    // A send is stored or, while a writer is saturated, refused with BUSY; on this
    // load nearly all are stored.
    assert!(stored.len() >= 1_000, "{} of 2000 sends stored", stored.len());
    let ws = ep(1).connect(a1).await;
    let live = receiver(ws, tx.clone());
    let mut got = Vec::new();
    until_delivered(&mut rx, &mut got, &stored, FAILSAFE).await;
    let again = one_seq_each(&got);
    let carol_got = drain_numbers(&ep(1), c1).await;
    one_seq_each(&carol_got);
    let carol_set: BTreeSet<u64> = carol_got.iter().map(|(_, k)| *k).collect();
    assert_eq!(carol_set, stored, "Carol holds every stored send, once");
    eprintln!(
        "node killed: {} sends stored, all delivered; {again} delivered again (same seq)",
        stored.len()
    );

    // NATS killed in the middle of a load: the nodes say so, keep delivering through
    // mailbox polls (set short again by a node restarted with a 500 ms poll), and lose
    // nothing once it is back.
    let short = dir.join("relay-short-poll.toml");
    std::fs::write(
        &short,
        config(nats_addr, &secret).replace(&format!("poll_interval_ms = {POLL_MS}"), "poll_interval_ms = 500"),
    )
    .unwrap();
    nodes[0] = Some(Node::start(&short, &url, addrs[0], PUBLIC_URL).await);
    wait_until("the restarted node on the bus", || async {
        ready(&ep(0)).await == StatusCode::OK
    })
    .await;
    live.abort();
    let ws = ep(0).connect(a1).await;
    let live = receiver(ws, tx.clone());
    let nats_now = &mut nats;
    let node0 = addrs[0];
    let stored2 = load(&ep(2), &to, 10_000..11_000, move || async move {
        kill(nats_now).await;
        wait_until("node 0's /readyz says the bus is gone", || async {
            ready(&Endpoint { addr: node0 }).await == StatusCode::SERVICE_UNAVAILABLE
        })
        .await;
    })
    .await;
    assert!(stored2.len() >= 500, "{} of 1000 sends stored", stored2.len());
    // Stored through node 2 while the bus is down: node 0 delivers them on its polls.
    until_delivered(&mut rx, &mut got, &stored2, FAILSAFE).await;
    let mut nats = start_nats(&nats_bin, nats_addr).await;
    assert!(nodes.iter().all(Option::is_some));
    for i in 0..3 {
        wait_until("every node back on the bus", || async move {
            ready(&ep(i)).await == StatusCode::OK
        })
        .await;
    }
    // The nodes forgot each other's devices while they heard nothing; back on the bus
    // they announce them again: Alice's device on node 0 is known to the other two.
    wait_until("presence rebuilt after the outage", || async {
        counter(&[&ep(0), &ep(1), &ep(2)], "bus_remote_devices").await == [0, 1, 1]
    })
    .await;
    let stored3 = load(&ep(2), &to, 20_000..20_500, || async {}).await;
    until_delivered(&mut rx, &mut got, &stored3, FAILSAFE).await;
    live.abort();
    let again = one_seq_each(&got);
    let carol_got = drain_numbers(&ep(1), c1).await;
    let carol_set: BTreeSet<u64> = carol_got.iter().map(|(_, k)| *k).collect();
    let want: BTreeSet<u64> = stored2.union(&stored3).copied().collect();
    assert_eq!(carol_set, want, "Carol holds every send stored around the NATS restart");
    eprintln!(
        "NATS restarted: {} sends stored, all delivered; {again} delivered again in all (same seq)",
        want.len()
    );

    for n in nodes.into_iter().flatten() {
        n.kill().await;
    }
    kill(&mut nats).await;
    let _ = std::fs::remove_dir_all(&dir);
}
