//! Two clients through one relay: a thousand messages each way with random
//! interleaving; offline catch-up; restarts from SQLite in mid-conversation.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sotto_sdk::MessageStatus;
use sotto_tests::{Device, TestRelay};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_each_way_arrive_once_in_order() {
    let relay = TestRelay::start().await;
    let mut alice = Device::create(&relay, 1).await;
    let mut bob = Device::create(&relay, 2).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    bob.client.add_contact(&alice.client.contact_link()).await.unwrap();
    assert_eq!(
        alice.client.safety_number(&bob.id()).await.unwrap(),
        bob.client.safety_number(&alice.id()).await.unwrap()
    );

    const N: usize = 1000;
    let mut rng = ChaCha20Rng::seed_from_u64(42);
    let (mut a, mut b) = (0, 0);
    while a < N || b < N {
        let alice_turn = b == N || (a < N && rng.next_u32() % 2 == 0);
        if alice_turn {
            alice.client.send_text(&bob.id(), &format!("a{a}")).await.unwrap();
            a += 1;
        } else {
            bob.client.send_text(&alice.id(), &format!("b{b}")).await.unwrap();
            b += 1;
        }
    }
    let at_bob = bob.receive(N).await;
    let at_alice = alice.receive(N).await;
    let expect = |p: &str| (0..N).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
    assert_eq!(at_bob.iter().map(|m| m.text.clone()).collect::<Vec<_>>(), expect("a"));
    assert_eq!(at_alice.iter().map(|m| m.text.clone()).collect::<Vec<_>>(), expect("b"));
    assert!(!alice.saw_undecryptable() && !bob.saw_undecryptable());
    // The stored conversation holds each message once, and both sides agree on the set.
    for (me, peer) in [(&alice, &bob), (&bob, &alice)] {
        let h = me.history(&peer.id()).await;
        assert_eq!(h.len(), 2 * N);
        let mut ids: Vec<_> = h.iter().map(|m| m.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 2 * N);
        let received: Vec<_> = h
            .iter()
            .filter(|m| m.status == MessageStatus::Received)
            .map(|m| &m.text)
            .collect();
        assert_eq!(received.len(), N);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bob_offline_catches_up_on_500_messages() {
    let relay = TestRelay::start().await;
    let mut alice = Device::create(&relay, 3).await;
    let bob = Device::create(&relay, 4).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    let bob_id = bob.id();
    let Device { client, dir, seed, .. } = bob;
    client.shutdown().await;

    const N: usize = 500;
    for i in 0..N {
        alice.client.send_text(&bob_id, &format!("m{i}")).await.unwrap();
    }
    alice.sent(N).await;
    assert_eq!(alice.client.outbox_len().await.unwrap(), 0);

    let mut bob = Device::reopen(dir, seed).await;
    let got = bob.receive(N).await;
    assert_eq!(
        got.iter().map(|m| m.text.clone()).collect::<Vec<_>>(),
        (0..N).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    bob.wait_for(|e| matches!(e, sotto_sdk::Event::CaughtUp)).await;
    assert_eq!(bob.history(&alice.id()).await.len(), N);
    // Nothing more arrives: send one marker and check it is the next message.
    alice.client.send_text(&bob_id, "marker").await.unwrap();
    let next = bob.receive(1).await;
    assert_eq!(next[0].text, "marker");
    assert_eq!(bob.history(&alice.id()).await.len(), N + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_restarted_from_sqlite_continue_their_sessions() {
    let relay = TestRelay::start().await;
    let mut alice = Device::create(&relay, 5).await;
    let mut bob = Device::create(&relay, 6).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    bob.client.add_contact(&alice.client.contact_link()).await.unwrap();
    for round in 0..4 {
        for i in 0..10 {
            alice
                .client
                .send_text(&bob.id(), &format!("a{round}.{i}"))
                .await
                .unwrap();
            bob.client
                .send_text(&alice.id(), &format!("b{round}.{i}"))
                .await
                .unwrap();
        }
        let got = bob.receive(10).await;
        assert_eq!(got[9].text, format!("a{round}.9"));
        let got = alice.receive(10).await;
        assert_eq!(got[9].text, format!("b{round}.9"));
        alice.sent(10).await;
        bob.sent(10).await;
        assert!(!alice.saw_undecryptable() && !bob.saw_undecryptable());
        alice = alice.restart().await;
        bob = bob.restart().await;
    }
    assert_eq!(alice.history(&bob.id()).await.len(), 80);
    assert_eq!(bob.history(&alice.id()).await.len(), 80);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_receipts_mark_messages_delivered() {
    let relay = TestRelay::start().await;
    let mut alice = Device::create(&relay, 7).await;
    let mut bob = Device::create(&relay, 8).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(alice.client.send_text(&bob.id(), &format!("r{i}")).await.unwrap().id);
    }
    assert_eq!(bob.receive(3).await.len(), 3);
    let mut delivered = Vec::new();
    while delivered.len() < 3 {
        if let sotto_sdk::Event::Delivered { ids, by, .. } = alice
            .wait_for(|e| matches!(e, sotto_sdk::Event::Delivered { .. }))
            .await
        {
            assert_eq!(by.0, bob.id());
            delivered.extend(ids);
        }
    }
    delivered.sort();
    ids.sort();
    assert_eq!(delivered, ids);
    let h = alice.history(&bob.id()).await;
    assert!(h.iter().all(|m| m.status == MessageStatus::Delivered), "{h:?}");
    // Receipts are not messages: Bob's conversation holds the three texts only.
    assert_eq!(bob.history(&alice.id()).await.len(), 3);
    // Sealed sender in effect: with one device per account every send (texts and
    // receipts) went to another account, so every one went over an anonymous connection.
    let m = &relay.state.metrics;
    let stored = m.sends_stored_total.load(std::sync::atomic::Ordering::Relaxed);
    let anonymous = m.sends_anonymous_total.load(std::sync::atomic::Ordering::Relaxed);
    assert!(stored >= 4, "{stored}");
    assert_eq!(
        anonymous,
        stored + m.sends_mismatch_total.load(std::sync::atomic::Ordering::Relaxed)
    );
}
