//! Delivery receipts across crashes and duplicates: a receipt is never lost to a crash of
//! the receiving device, and the sender hears `Delivered` once per message.

use std::collections::BTreeMap;
use std::time::Duration;

use sotto_sdk::{ClientOptions, Event, MessageStatus};
use sotto_tests::{Device, FAILSAFE, TestRelay, options};

/// Awaits a condition that has no event of its own.
async fn until<F: std::future::Future<Output = bool>>(mut f: impl FnMut() -> F) {
    tokio::time::timeout(FAILSAFE, async {
        while !f().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("condition not met in time");
}

/// An echo bot killed right after it stored a message (the relay has the ack) loses
/// nothing: the receipt was written with the message, and goes out after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_survives_a_kill_right_after_the_message_was_stored() {
    let relay = TestRelay::start().await;
    let mut human = Device::create(&relay, 81).await;
    // A receipt delay long enough that none goes out before the kill.
    let mut bot = Device::create_with(
        &relay,
        82,
        ClientOptions {
            receipt_delay: Duration::from_secs(2)..Duration::from_secs(3),
            ..options(82)
        },
    )
    .await;
    human.client.add_contact(&bot.client.contact_link()).await.unwrap();
    let sent = human.client.send_text(&bot.id(), "ping").await.unwrap();
    assert_eq!(bot.receive(1).await[0].text, "ping");
    // Killed: no shutdown, nothing flushed (dropping the client acks what it stored).
    let Device { client, dir, seed, .. } = bot;
    drop(client);
    let _bot = Device::reopen(dir, seed).await;
    human
        .wait_for(|e| matches!(e, Event::Delivered { ids, .. } if ids.contains(&sent.id)))
        .await;
    let h = human.history(&_bot.id()).await;
    assert_eq!(h[0].status, MessageStatus::Delivered);
}

/// Two devices of the contact each report every message, and an app must still hear of
/// each message once: `Delivered` is emitted when the status moved, not per receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_is_emitted_once_per_message() {
    let relay = TestRelay::start().await;
    let mut alice = Device::create(&relay, 83).await;
    let mut b1 = Device::create(&relay, 84).await;
    let mut b2 = Device::join(&relay, &mut b1, 85).await;
    alice.client.add_contact(&b1.client.contact_link()).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(alice.client.send_text(&b1.id(), &format!("m{i}")).await.unwrap().id);
    }
    assert_eq!(b1.receive(3).await.len(), 3);
    assert_eq!(b2.receive(3).await.len(), 3);
    b1.client.send_receipts_now().await;
    b2.client.send_receipts_now().await;
    // Both devices' receipts are in Alice's mailbox...
    until(|| async { b1.client.outbox_len().await.unwrap() == 0 && b2.client.outbox_len().await.unwrap() == 0 }).await;
    // ...and Alice processed them: a later message comes after them.
    b1.client.send_text(&alice.id(), "done").await.unwrap();
    assert_eq!(alice.receive(1).await[0].text, "done");
    let mut seen: BTreeMap<_, usize> = BTreeMap::new();
    for e in &alice.stash {
        if let Event::Delivered { ids, .. } = e {
            for id in ids {
                *seen.entry(*id).or_default() += 1;
            }
        }
    }
    ids.sort();
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), ids);
    assert!(seen.values().all(|n| *n == 1), "Delivered more than once: {seen:?}");
    let h = alice.history(&b1.id()).await;
    assert!(
        h.iter()
            .filter(|m| m.sender.0 == alice.id())
            .all(|m| m.status == MessageStatus::Delivered)
    );
}
