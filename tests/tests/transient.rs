//! A passing network error while an envelope is being processed gives it no final
//! verdict: the message still arrives, exactly once.

use sotto_sdk::Event;
use sotto_tests::{Device, TestRelay};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_list_fetch_that_fails_for_a_while_loses_no_message() {
    let (relay, proxy) = TestRelay::start_behind_proxy().await;
    let mut alice = Device::create(&relay, 71).await;
    let bob = Device::create(&relay, 72).await;
    let mut carol = Device::create(&relay, 73).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    carol.client.add_contact(&bob.client.contact_link()).await.unwrap();
    bob.client.add_contact(&carol.client.contact_link()).await.unwrap();
    // Bob does not know Alice yet: her message makes him fetch her device list.
    let bob = bob.restart_offline().await;
    alice
        .client
        .send_text(&bob.id(), "through a flaky relay")
        .await
        .unwrap();
    alice.sent(1).await;
    let alice_id = alice.id();
    let _alice = alice.restart_offline().await;
    proxy.fail_next(&format!("/v1/accounts/{alice_id}/device-list"), 3);
    // Carol writes after Alice; Bob knows her list already.
    carol.client.send_text(&bob.id(), "not held up").await.unwrap();
    carol.sent(1).await;
    let mut bob = bob.online().await;
    let got = bob.receive(2).await;
    // Alice's message waits for her list without holding up the mailbox behind it.
    assert_eq!(got[0].text, "not held up");
    assert_eq!(got[1].text, "through a flaky relay");
    assert_eq!(proxy.refused(), 3);
    assert!(!bob.saw_undecryptable(), "{:?}", bob.stash);
    // Exactly once: in the history, and no second event once Bob caught up.
    bob.wait_for(|e| matches!(e, Event::CaughtUp)).await;
    assert!(!bob.stash.iter().any(|e| matches!(e, Event::MessageReceived(_))));
    assert_eq!(bob.history(&alice_id).await.len(), 1);
}

/// A relay past its capacity refuses new sends with `BUSY` (here its writer cannot
/// commit: another connection holds SQLite's write lock). The SDK pauses and sends them
/// again: once the relay takes sends again every message arrives, once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_refused_as_busy_are_sent_again_and_arrive_once() {
    use sqlx::Connection;
    use std::sync::atomic::Ordering::Relaxed;
    let relay = TestRelay::start_with(|c| {
        c.limits.send_queue_target_ms = 20;
        c.limits.send_queue_interval_ms = 50;
    })
    .await;
    let mut alice = Device::create(&relay, 81).await;
    let mut bob = Device::create(&relay, 82).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    // The session first: fetching a bundle takes a one-time prekey, a write the lock
    // below would hold up too.
    alice.client.send_text(&bob.id(), "hello").await.unwrap();
    assert_eq!(bob.receive(1).await[0].text, "hello");
    alice.sent(1).await;
    let failsafe = std::time::Duration::from_secs(20);
    let mut lock = sqlx::SqliteConnection::connect(&relay.db_url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut lock).await.unwrap();
    // The first ten wait for the commit the lock holds up...
    for i in 0..10 {
        alice.client.send_text(&bob.id(), &format!("m{i}")).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + failsafe;
    while !relay.state.writer_saturated() {
        assert!(tokio::time::Instant::now() < deadline, "the writer was never saturated");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // ...and the next ones are refused while it lasts.
    for i in 10..20 {
        alice.client.send_text(&bob.id(), &format!("m{i}")).await.unwrap();
    }
    let busy = || relay.state.metrics.sends_busy_total.load(Relaxed);
    while busy() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no send was refused");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    drop(lock);
    let got = bob.receive(20).await;
    let texts: Vec<String> = got.into_iter().map(|m| m.text).collect();
    let want: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, want);
    alice.sent(20).await;
    bob.wait_for(|e| matches!(e, Event::CaughtUp)).await;
    assert_eq!(bob.history(&alice.id()).await.len(), 21, "each once");
    assert!(busy() >= 1);
}
