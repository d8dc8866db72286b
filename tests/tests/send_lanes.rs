//! One recipient never holds up sends to others: a full mailbox, or a contact listing a
//! device the relay holds no prekeys for, stalls only that recipient's lane.

use std::time::Duration;

use sotto_sdk::{ClientOptions, Event, MessageStatus};
use sotto_tests::{Device, TestRelay, options};
use tokio::time::Instant;

/// Well below the failsafe: a send that is not held up arrives in a fraction of this.
const PROMPT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_does_not_delay_a_message_to_another_contact() {
    let relay = TestRelay::start_with(|c| c.limits.max_mailbox_depth = 3).await;
    // Items that keep failing end after 3 s of failing.
    let bound = Duration::from_secs(3);
    let mut alice = Device::create_with(
        &relay,
        41,
        ClientOptions {
            send_give_up_after: bound,
            send_backoff_min: Duration::from_millis(200),
            send_backoff_max: Duration::from_secs(1),
            ..options(41)
        },
    )
    .await;
    let bob = Device::create(&relay, 42).await;
    let mut carol = Device::create(&relay, 43).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    alice.client.add_contact(&carol.client.contact_link()).await.unwrap();
    // Bob is offline; three messages fill his mailbox.
    let bob = bob.restart_offline().await;
    for i in 0..3 {
        alice.client.send_text(&bob.id(), &format!("fill {i}")).await.unwrap();
    }
    alice.sent(3).await;
    let stuck = alice.client.send_text(&bob.id(), "no room").await.unwrap();
    let queued_at = Instant::now();
    // The relay refused it (and the retry): Alice's sender now knows Bob's mailbox is full.
    relay.wait_rejections(2).await;
    alice.client.send_text(&carol.id(), "hello carol").await.unwrap();
    let got = tokio::time::timeout(PROMPT, carol.receive(1))
        .await
        .expect("the message to Carol was held up behind Bob's full mailbox");
    assert_eq!(got[0].text, "hello carol");
    assert!(
        queued_at.elapsed() < bound,
        "Carol's message went only after Bob's was given up"
    );
    // Bob's is not retried forever: it ends failed, retryable, after the bound.
    let failed = tokio::time::timeout(
        Duration::from_secs(20),
        alice.wait_for(|e| matches!(e, Event::SendFailed { id, .. } if *id == stuck.id)),
    )
    .await
    .expect("the message to the full mailbox was never given up");
    assert!(queued_at.elapsed() >= bound);
    match failed {
        Event::SendFailed {
            conversation,
            code,
            retryable,
            ..
        } => {
            assert_eq!(conversation, bob.id());
            assert_eq!(code, "MAILBOX_FULL");
            assert!(retryable);
        }
        other => panic!("{other:?}"),
    }
    let history = alice.history(&bob.id()).await;
    let status = history.iter().find(|m| m.id == stuck.id).unwrap().status;
    assert_eq!(status, MessageStatus::Failed { retryable: true });
    assert_eq!(alice.client.outbox_len().await.unwrap(), 0);
}

/// A stranger whose account lists a second device with no prekeys on the relay, and
/// who already has a session with that device; the victim and a contact of the victim.
async fn stranger_with_an_unreachable_device(relay: &TestRelay) -> (Device, Device, Device) {
    let mut stranger = Device::create(relay, 61).await;
    let second = Device::join(relay, &mut stranger, 62).await;
    let victim = Device::create_with(relay, 63, options(63)).await;
    let mut carol = Device::create(relay, 64).await;
    // A first message sets up the stranger's session with its second device.
    stranger.client.add_contact(&carol.client.contact_link()).await.unwrap();
    stranger.client.send_text(&carol.id(), "hi carol").await.unwrap();
    carol.receive(1).await;
    stranger.sent(1).await;
    // The second device goes away and its prekeys with it.
    let second_id = second.device_id();
    let _second = second.restart_offline().await;
    relay.delete_prekeys(&stranger.id(), second_id).await;
    (stranger, victim, carol)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_device_without_prekeys_does_not_stall_the_victims_sends() {
    let relay = TestRelay::start().await;
    let (stranger, mut victim, mut carol) = stranger_with_an_unreachable_device(&relay).await;
    victim.client.add_contact(&carol.client.contact_link()).await.unwrap();
    stranger
        .client
        .add_contact(&victim.client.contact_link())
        .await
        .unwrap();
    stranger.client.send_text(&victim.id(), "one message").await.unwrap();
    assert_eq!(victim.receive(1).await[0].text, "one message");
    // The victim's automatic receipt to the stranger is queued...
    tokio::time::timeout(crate_failsafe(), async {
        while victim.client.outbox_len().await.unwrap() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    // ...and a message to someone else still goes at once.
    victim.client.send_text(&carol.id(), "still here").await.unwrap();
    let got = tokio::time::timeout(PROMPT, carol.receive(1))
        .await
        .expect("the victim's message to Carol was held up behind the receipt to the stranger");
    assert_eq!(got[0].text, "still here");
}

fn crate_failsafe() -> Duration {
    sotto_tests::FAILSAFE
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receipt_and_later_messages_reach_a_contact_with_an_unreachable_device() {
    let relay = TestRelay::start().await;
    let (mut stranger, mut victim, mut carol) = stranger_with_an_unreachable_device(&relay).await;
    victim.client.add_contact(&carol.client.contact_link()).await.unwrap();
    stranger
        .client
        .add_contact(&victim.client.contact_link())
        .await
        .unwrap();
    let first = stranger.client.send_text(&victim.id(), "one message").await.unwrap();
    assert_eq!(victim.receive(1).await[0].text, "one message");
    // The receipt reaches the stranger's reachable device.
    stranger
        .wait_for(|e| matches!(e, Event::Delivered { ids, .. } if ids.contains(&first.id)))
        .await;
    // Later messages go to everyone, the stranger included.
    victim.client.send_text(&carol.id(), "to carol").await.unwrap();
    victim
        .client
        .send_text(&stranger.id(), "to the stranger")
        .await
        .unwrap();
    assert_eq!(carol.receive(1).await[0].text, "to carol");
    assert_eq!(stranger.receive(1).await[0].text, "to the stranger");
    victim.sent(2).await;
}
