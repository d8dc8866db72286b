//! The persisted outbox across a relay restart in the middle of a burst: every socket is
//! dropped, sends in flight lose their answers, and each message still shows exactly once.

use sotto_sdk::Event;
use sotto_tests::{Device, TestRelay};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_restart_mid_send_delivers_each_message_exactly_once() {
    let mut relay = TestRelay::start().await;
    let mut alice = Device::create(&relay, 11).await;
    let mut bob = Device::create(&relay, 12).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    const N: usize = 300;
    for i in 0..N {
        alice.client.send_text(&bob.id(), &format!("m{i}")).await.unwrap();
    }
    // Some have arrived; then every connection is cut and the relay comes back.
    let mut got = bob.receive(40).await;
    relay.restart().await;
    alice.wait_for(|e| matches!(e, Event::Connected)).await;
    got.extend(bob.receive(N - got.len()).await);
    let texts: Vec<_> = got.iter().map(|m| m.text.clone()).collect();
    assert_eq!(texts, (0..N).map(|i| format!("m{i}")).collect::<Vec<_>>());
    // Alice's outbox drains; Bob stores each message once.
    alice.sent(N).await;
    assert_eq!(alice.client.outbox_len().await.unwrap(), 0);
    alice.client.send_text(&bob.id(), "after").await.unwrap();
    assert_eq!(bob.receive(1).await[0].text, "after");
    assert_eq!(bob.history(&alice.id()).await.len(), N + 1);
    assert!(!bob.saw_undecryptable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_written_while_the_relay_is_down_are_sent_when_it_returns() {
    let mut relay = TestRelay::start().await;
    let mut alice = Device::create(&relay, 13).await;
    let mut bob = Device::create(&relay, 14).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    relay.stop().await;
    for i in 0..20 {
        alice
            .client
            .send_text(&bob.id(), &format!("offline {i}"))
            .await
            .unwrap();
    }
    assert_eq!(alice.client.outbox_len().await.unwrap(), 20);
    // The outbox survives a restart of the client too.
    alice = alice.restart().await;
    assert_eq!(alice.client.outbox_len().await.unwrap(), 20);
    relay.restart().await;
    let got = bob.receive(20).await;
    assert_eq!(got.last().unwrap().text, "offline 19");
    alice.sent(20).await;
    assert_eq!(alice.client.outbox_len().await.unwrap(), 0);
}

/// A text to an account the relay does not know is queued (the send API returns before
/// anything is asked of the relay), then fails for good with a typed, stable cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_to_an_unknown_account_fails_with_a_stable_code() {
    let relay = TestRelay::start().await;
    let mut alice = Device::create(&relay, 15).await;
    let nobody = sotto_crypto::AccountId([0x5a; 32]);
    let queued = alice.client.send_text(&nobody, "hello?").await.unwrap();
    assert_eq!(queued.status, sotto_sdk::MessageStatus::Queued);
    let e = alice
        .wait_for(|e| matches!(e, Event::SendFailed { id, .. } if *id == queued.id))
        .await;
    let Event::SendFailed { code, retryable, .. } = e else {
        unreachable!()
    };
    assert_eq!((code, retryable), ("UNKNOWN_ACCOUNT", false));
    let h = alice.history(&nobody).await;
    assert_eq!(h[0].status, sotto_sdk::MessageStatus::Failed { retryable: false });
    assert_eq!(alice.client.outbox_len().await.unwrap(), 0);
}
