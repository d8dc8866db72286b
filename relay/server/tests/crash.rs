//! A `sotto-relay` process killed with SIGKILL under load, again and again. Each round
//! starts the relay on the same database and port; a sender streams sends to both
//! devices of an account, one of which is connected and acknowledges what it gets; the
//! relay is killed at a random moment (a seeded number of answers in). At the end:
//!
//! - every send answered `Stored` reached both devices: nothing acknowledged is lost;
//! - each send has one seq per device, however often it was delivered, so an app that
//!   drops a seq it has seen shows each message once;
//! - the device that was never connected gets gap-free seqs, each send once;
//! - no send is half stored (both devices hold the same sends), and after a final
//!   acknowledgement nothing is delivered again.
//!
//! Runs on SQLite and on PostgreSQL, `SOTTO_CRASH_KILLS` rounds each (10 by default; the
//! figure in docs/benchmarks.md is from a run with 100).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::node::*;
use common::relay::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use hyper::StatusCode;
use rand_core::RngCore;
use sotto_proto::{ErrorCode, Frame, Recipient, Send, SendOutcome, SendResult};
use tokio_tungstenite::tungstenite::Message;

/// Sends one round may write; the kill always comes long before.
const MAX_SENDS_PER_ROUND: u64 = 1_000_000;
/// The kill comes after 1 to this many answers.
const MAX_ANSWERS_BEFORE_KILL: u32 = 400;

fn kills() -> usize {
    std::env::var("SOTTO_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

/// What one device was handed over all rounds: (seq, send number) in order.
type Deliveries = Vec<(u64, u64)>;

fn number(envelope: &[u8]) -> u64 {
    u64::from_be_bytes(envelope.try_into().expect("an 8-byte envelope"))
}

async fn crash(url: String) {
    let dir = std::env::temp_dir().join(format!("sotto-crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join(format!("relay-{}.toml", url.starts_with("postgres")));
    std::fs::write(&config, format!("log_level = \"info\"\n\n{UNLIMITED}")).unwrap();
    let addr = free_port();

    let mut r = rng(77);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 2);
    let node = Node::start(&config, &url, addr, &format!("http://{addr}")).await;
    for a in [&alice, &bob] {
        assert_eq!(node.endpoint.register(a).await, StatusCode::CREATED);
    }
    let mut node = Some(node);
    let (live, offline) = (&bob.devices[0], &bob.devices[1]);
    let targets = [live.id(), offline.id()];
    let bob_id = bob.id();

    let mut stored: BTreeSet<u64> = BTreeSet::new();
    let mut live_got: Deliveries = Vec::new();
    let mut next = 1u64;
    let rounds = kills();
    for round in 0..rounds {
        let n = match node.take() {
            Some(n) => n,
            None => Node::start(&config, &url, addr, &format!("http://{addr}")).await,
        };
        let kill_at = 1 + r.next_u32() % MAX_ANSWERS_BEFORE_KILL;

        // Bob's first device takes and acknowledges what it is handed, until the socket
        // dies with the relay.
        let mut bob_ws = n.endpoint.connect(live).await;
        let receiver = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(Ok(m)) = bob_ws.next().await {
                let Message::Binary(b) = m else { continue };
                match Frame::decode(&b).unwrap() {
                    Frame::Deliver(e) => {
                        got.push((e.seq, number(&e.envelope)));
                        if bob_ws
                            .send(Message::Binary(Frame::Ack { seq: e.seq }.encode().into()))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Frame::QueueEmpty => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            got
        });

        // Alice streams sends without waiting for answers.
        let (mut tx, mut rx) = n.endpoint.open_anonymous().await.split();
        let first = next;
        let writer = tokio::spawn(async move {
            let mut last = first - 1;
            for k in first..first + MAX_SENDS_PER_ROUND {
                let recipients = targets
                    .iter()
                    .map(|d| Recipient {
                        account_id: bob_id,
                        device_id: *d,
                        head: k.to_be_bytes().to_vec(),
                    })
                    .collect();
                let frame = Frame::Send(Send {
                    message_id: k,
                    access: vec![],
                    body: vec![],
                    recipients,
                });
                if tx.send(Message::Binary(frame.encode().into())).await.is_err() {
                    break;
                }
                last = k;
            }
            last
        });

        let mut answered = 0u32;
        let mut victim = Some(n);
        let mut killing = None;
        while let Some(Ok(m)) = rx.next().await {
            let Message::Binary(b) = m else { continue };
            match Frame::decode(&b).unwrap() {
                Frame::SendResult(SendResult { message_id, outcome }) => {
                    answered += 1;
                    match outcome {
                        SendOutcome::Stored { seqs } => {
                            assert_eq!(seqs.len(), 2);
                            assert!(stored.insert(message_id), "send {message_id} answered twice");
                        }
                        // Refused while the writer was saturated: not stored, a client
                        // would send it again.
                        SendOutcome::Rejected { code: ErrorCode::BUSY } => {}
                        other => panic!("send {message_id}: {other:?}"),
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
            if answered == kill_at
                && let Some(v) = victim.take()
            {
                killing = Some(tokio::spawn(v.kill()));
            }
        }
        killing
            .unwrap_or_else(|| panic!("round {round}: the sender's socket closed before the kill"))
            .await
            .unwrap();
        let last = writer.await.unwrap();
        assert!(last < first + MAX_SENDS_PER_ROUND - 1, "round {round}: never cut off");
        next = last + 1;
        live_got.extend(receiver.await.unwrap());
    }
    assert!(stored.len() >= rounds, "{} sends stored", stored.len());

    // A last start: both devices take what is left, and it is all there.
    let n = Node::start(&config, &url, addr, &format!("http://{addr}")).await;
    live_got.extend(drain(&n.endpoint, live).await.into_iter().map(|(s, e)| (s, number(&e))));
    let offline_got: Deliveries = drain(&n.endpoint, offline)
        .await
        .into_iter()
        .map(|(s, e)| (s, number(&e)))
        .collect();

    // The device never connected before: gap-free seqs, each send once, in send order.
    let seqs: Vec<u64> = offline_got.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let offline_sends: Vec<u64> = offline_got.iter().map(|(_, k)| *k).collect();
    assert!(offline_sends.windows(2).all(|w| w[0] < w[1]), "out of order or twice");

    // The live device: whatever was handed out again carries the seq it had.
    let mut seq_of: BTreeMap<u64, u64> = BTreeMap::new();
    let mut send_of: BTreeMap<u64, u64> = BTreeMap::new();
    for (seq, k) in &live_got {
        assert_eq!(*seq_of.entry(*k).or_insert(*seq), *seq, "send {k} under two seqs");
        assert_eq!(*send_of.entry(*seq).or_insert(*k), *k, "seq {seq} for two sends");
    }
    let again = live_got.len() - seq_of.len();
    eprintln!(
        "{}, {rounds} kills: {} sends answered Stored, {} stored in all, {again} deliveries repeated \
         after a kill (same seq)",
        if url.starts_with("postgres") {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        stored.len(),
        offline_sends.len()
    );

    // Nothing acknowledged is lost, and nothing is half stored.
    let offline_set: BTreeSet<u64> = offline_sends.iter().copied().collect();
    let live_set: BTreeSet<u64> = seq_of.keys().copied().collect();
    for k in &stored {
        assert!(
            offline_set.contains(k),
            "send {k} answered Stored, lost for the offline device"
        );
        assert!(
            live_set.contains(k),
            "send {k} answered Stored, lost for the live device"
        );
    }
    assert_eq!(live_set, offline_set, "a send stored for one device only");
    assert!(live_set.iter().all(|k| *k < next), "a send that was never written");
    for d in [live, offline] {
        assert!(drain(&n.endpoint, d).await.is_empty(), "delivered again after the ack");
    }
    n.kill().await;
    let _ = std::fs::remove_file(&config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    let url = sqlite_url();
    crash(url.clone()).await;
    remove_sqlite(&url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    if let Some(url) = postgres_url().await {
        crash(url).await;
    }
}
