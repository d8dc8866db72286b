//! Clients behind a network that refuses, delays and cuts connections keep converging.
//! Alice and Bob (two devices) write to each other through a proxy that closes every
//! open connection, then refuses one new connection in six, delays every chunk and cuts
//! each connection after 4 to 64 KB, WebSockets and HTTP requests alike. Every message reaches every device of its
//! recipient and the sender's other device, each exactly once; none is lost, failed or
//! shown twice, and nothing is undecryptable.

use std::collections::BTreeSet;
use std::time::Duration;

use sotto_sdk::{Event, MessageStatus, StoredMessage};
use sotto_tests::proxy::Chaos;
use sotto_tests::{Device, TestRelay};

/// Texts each side sends under faults.
const EACH: usize = 25;

fn texts(got: &[StoredMessage]) -> Vec<String> {
    got.iter().map(|m| m.text.clone()).collect()
}

/// `got` holds each of `want` once.
fn once(got: &[StoredMessage], want: &BTreeSet<String>, who: &str) {
    let t = texts(got);
    let set: BTreeSet<String> = t.iter().cloned().collect();
    assert_eq!(set.len(), t.len(), "{who} was shown a message twice: {t:?}");
    assert_eq!(&set, want, "{who}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_behind_a_faulty_network_converge_without_loss_or_duplicates() {
    let (relay, proxy) = TestRelay::start_behind_proxy().await;
    let mut alice = Device::create(&relay, 81).await;
    let mut bob = Device::create(&relay, 82).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    bob.client.add_contact(&alice.client.contact_link()).await.unwrap();
    let mut bob2 = Device::join(&relay, &mut bob, 83).await;
    // Sessions with every device before the faults start.
    alice.client.acknowledge_identity(&bob.id()).await.unwrap();
    alice.client.send_text(&bob.id(), "hello").await.unwrap();
    for d in [&mut bob, &mut bob2] {
        assert_eq!(texts(&d.receive(1).await), ["hello"]);
    }
    bob.client.send_text(&alice.id(), "hi").await.unwrap();
    assert_eq!(texts(&alice.receive(1).await), ["hi"]);
    assert_eq!(texts(&bob2.receive(1).await), ["hi"]);
    // Bob's second device changed his safety number: Alice acknowledges it once more, in
    // case she learned of it only from his answer.
    alice.client.acknowledge_identity(&bob.id()).await.unwrap();

    proxy.chaos(
        Some(Chaos {
            refuse_one_in: 6,
            cut_after_bytes: (4_000, 64_000),
            max_delay: Duration::from_millis(5),
        }),
        84,
    );
    let from_alice: BTreeSet<String> = (0..EACH).map(|i| format!("alice {i}")).collect();
    let from_bob: BTreeSet<String> = (0..EACH).map(|i| format!("bob {i}")).collect();
    for i in 0..EACH {
        alice.client.send_text(&bob.id(), &format!("alice {i}")).await.unwrap();
        bob.client.send_text(&alice.id(), &format!("bob {i}")).await.unwrap();
    }
    let got = bob.receive(EACH).await;
    once(&got, &from_alice, "bob");
    let got = alice.receive(EACH).await;
    once(&got, &from_bob, "alice");
    let got = bob2.receive(2 * EACH).await;
    once(
        &got,
        &from_alice.union(&from_bob).cloned().collect(),
        "bob's second device",
    );
    for m in &got {
        let expected = if m.sender.0 == bob.id() {
            MessageStatus::SentElsewhere
        } else {
            MessageStatus::Received
        };
        assert_eq!(m.status, expected, "{}", m.text);
    }
    let cuts = proxy.cuts();
    assert!(
        cuts >= 5,
        "only {cuts} connections refused or cut: the faults did not bite"
    );

    // The network heals: one more text each way is the next thing shown, so nothing was
    // waiting to be shown a second time.
    proxy.chaos(None, 0);
    alice.client.send_text(&bob.id(), "the end").await.unwrap();
    bob.client.send_text(&alice.id(), "the end too").await.unwrap();
    assert_eq!(texts(&bob.receive(1).await), ["the end"]);
    assert_eq!(texts(&alice.receive(1).await), ["the end too"]);
    let mut last = texts(&bob2.receive(2).await);
    last.sort();
    assert_eq!(last, ["the end", "the end too"]);
    for d in [&alice, &bob, &bob2] {
        assert!(!d.saw_undecryptable(), "an undecryptable message");
        assert!(
            !d.stash.iter().any(|e| matches!(e, Event::SendFailed { .. })),
            "a send failed"
        );
    }
    // Both sides hear their texts sent.
    for d in [&mut alice, &mut bob] {
        d.sent(EACH + 2).await;
    }
    eprintln!("{cuts} connections refused or cut");
}
