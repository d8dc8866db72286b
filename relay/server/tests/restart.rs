//! Graceful shutdown loses nothing that was acknowledged: a sender streams sends to an
//! offline account while the relay stops; a new relay on the same database delivers every
//! send answered `Stored` exactly once, with gap-free seqs, and no send is half stored.
//! Runs on SQLite and on PostgreSQL.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::relay::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use hyper::StatusCode;
use sotto_proto::{Frame, Recipient, Send, SendOutcome, SendResult};
use tokio_tungstenite::tungstenite::Message;

/// The writer sends until the closed socket refuses a write; this bounds it in case it never
/// does.
const MAX_SENDS: u64 = 1_000_000;
/// Shutdown is triggered once this many sends have been answered.
const STOP_AFTER: usize = 60;

/// No send is refused for its rate: this test is about shutdown, and the answers the
/// client has read can lag well behind the sends the relay has taken.
fn unlimited(c: &mut sotto_relay::Config) {
    c.limits.rate_per_second = 100_000;
    c.limits.rate_burst = 100_000;
}

async fn restart(url: String) {
    let relay = Relay::start(&url, unlimited).await;
    let mut r = rng(50);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 2);
    for a in [&alice, &bob] {
        assert_eq!(relay.register(a).await, StatusCode::CREATED);
    }

    // Alice streams sends to both of Bob's (offline) devices over an anonymous connection
    // without waiting for answers; the envelope carries the send's number.
    let ws = relay.open_anonymous().await;
    let mut relay = Some(relay);
    let (mut tx, mut rx) = ws.split();
    let bob_devices: Vec<_> = bob.devices.iter().map(|d| d.id()).collect();
    let bob_id = bob.id();
    // Sends until the relay, shutting down, closes the socket; returns how many were
    // written. So the shutdown always lands mid-stream, whatever the machine's speed.
    let writer = tokio::spawn(async move {
        let mut written = 0;
        for n in 1..=MAX_SENDS {
            let recipients = bob_devices
                .iter()
                .map(|d| Recipient {
                    account_id: bob_id,
                    device_id: *d,
                    head: n.to_be_bytes().to_vec(),
                })
                .collect();
            let frame = Frame::Send(Send {
                message_id: n,
                access: vec![],
                body: vec![],
                recipients,
            })
            .encode();
            if tx.send(Message::Binary(frame.into())).await.is_err() {
                break;
            }
            written = n;
        }
        written
    });

    let mut stored: BTreeSet<u64> = BTreeSet::new();
    let mut answered = 0usize;
    let mut stop = None;
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
                    other => panic!("send {message_id}: {other:?}"),
                }
            }
            Frame::Error { code } => assert_eq!(code, sotto_proto::ErrorCode::SHUTTING_DOWN),
            other => panic!("unexpected {other:?}"),
        }
        // Error frames do not count as answers, so this is reached again after the stop.
        if answered == STOP_AFTER
            && let Some(mut relay) = relay.take()
        {
            stop = Some(tokio::spawn(async move { relay.stop().await }));
        }
    }
    stop.expect("shutdown was triggered").await.unwrap();
    let written = writer.await.unwrap();
    assert!(stored.len() >= STOP_AFTER, "{}", stored.len());
    // The shutdown came mid-stream: sends were still being written when the socket closed.
    assert!(written < MAX_SENDS, "the socket was never closed");
    assert!(
        (stored.len() as u64) < written,
        "{} of {written} sends answered Stored",
        stored.len()
    );

    // A new relay on the same database.
    let mut relay = Relay::start(&url, unlimited).await;
    let mut per_device: Vec<BTreeMap<u64, u64>> = Vec::new();
    for d in &bob.devices {
        let got = drain(&relay, d).await;
        // Gap-free seqs from 1, no duplicates.
        let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=got.len() as u64).collect::<Vec<_>>(), "device {}", d.id().0);
        let mut by_send = BTreeMap::new();
        for (seq, env) in got {
            let n = u64::from_be_bytes(env.try_into().unwrap());
            assert!(by_send.insert(n, seq).is_none(), "send {n} delivered twice");
        }
        // Every send answered Stored is there.
        for n in &stored {
            assert!(by_send.contains_key(n), "stored send {n} lost on device {}", d.id().0);
        }
        // Sends are stored in order, so their seqs follow their numbers.
        assert!(by_send.values().zip(by_send.values().skip(1)).all(|(a, b)| a < b));
        per_device.push(by_send);
        // One ack cycle delivers each envelope once: nothing comes back.
        assert!(drain(&relay, d).await.is_empty(), "redelivered after the ack");
    }
    // No send is half stored: both devices hold the same sends.
    let keys: Vec<BTreeSet<u64>> = per_device.iter().map(|m| m.keys().copied().collect()).collect();
    assert_eq!(keys[0], keys[1]);
    // Unanswered sends may be stored (answered as the socket closed) but nothing beyond
    // what was sent.
    assert!(keys[0].iter().all(|n| (1..=written).contains(n)));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    let url = sqlite_url();
    restart(url.clone()).await;
    remove_sqlite(&url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    if let Some(url) = postgres_url().await {
        restart(url).await;
    }
}
