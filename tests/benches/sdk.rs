//! SDK benchmarks through a real relay on 127.0.0.1 (SQLite on both sides):
//!
//! - catch-up: Bob is offline while Alice sends 10,000 messages; the time from Bob's
//!   client opening until it has fetched, decrypted and stored all of them (`CaughtUp`);
//! - throughput: messages per second from Alice's `send_text` to Bob's store, both online.
//!
//! `cargo bench -p sotto-tests --bench sdk` (plain `main`, no harness). Results go to
//! docs/benchmarks.md ("SDK").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Instant;

use sotto_sdk::Event;
use sotto_tests::{Device, TestRelay};

async fn catch_up(n: usize) {
    let relay = TestRelay::start().await;
    let mut alice = Device::create(&relay, 101).await;
    let bob = Device::create(&relay, 102).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    let bob_id = bob.id();
    let bob = bob.restart_offline().await;
    let t = Instant::now();
    for i in 0..n {
        alice
            .client
            .send_text(&bob_id, &format!("message number {i}"))
            .await
            .unwrap();
    }
    alice.sent(n).await;
    let send_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut bob = bob.online().await;
    let got = bob.receive(n).await;
    bob.wait_for(|e| matches!(e, Event::CaughtUp)).await;
    let s = t.elapsed().as_secs_f64();
    assert_eq!(got.len(), n);
    assert_eq!(got[n - 1].text, format!("message number {}", n - 1));
    println!(
        "catch-up: {n} queued messages fetched, decrypted and stored in {s:.2} s ({:.0} msg/s); \
         queuing them took Alice {send_s:.2} s ({:.0} msg/s)",
        n as f64 / s,
        n as f64 / send_s
    );
}

async fn throughput(n: usize) {
    let relay = TestRelay::start().await;
    let mut alice = Device::create(&relay, 103).await;
    let mut bob = Device::create(&relay, 104).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    // Warm up: the first message sets up the session.
    alice.client.send_text(&bob.id(), "warm-up").await.unwrap();
    bob.receive(1).await;
    let t = Instant::now();
    for i in 0..n {
        alice
            .client
            .send_text(&bob.id(), &format!("message number {i}"))
            .await
            .unwrap();
    }
    // Alice's events are read too (a client whose app stops reading them waits).
    let (got, ()) = tokio::join!(bob.receive(n), alice.sent(n));
    let s = t.elapsed().as_secs_f64();
    assert_eq!(got[n - 1].text, format!("message number {}", n - 1));
    println!(
        "throughput: {n} messages Alice -> Bob in {s:.2} s: {:.0} msg/s",
        n as f64 / s
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let catch_up_n = std::env::var("SOTTO_BENCH_CATCH_UP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let throughput_n = std::env::var("SOTTO_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    // 0 skips a part.
    if throughput_n > 0 {
        rt.block_on(throughput(throughput_n));
    }
    if catch_up_n > 0 {
        rt.block_on(catch_up(catch_up_n));
    }
}
