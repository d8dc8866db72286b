//! Finding 15 end to end: anonymous sends carry the recipient's access key once the
//! recipient accepted the sender; until then they are message requests, which the relay
//! keeps within a per-mailbox quota, so strangers cannot fill the mailbox contacts need.

use sotto_relay::storage::Storage;
use sotto_sdk::Event;
use sotto_tests::{Device, TestRelay};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_message_requests_until_accepted() {
    let relay = TestRelay::start().await;
    let mut bob = Device::create(&relay, 151).await;
    let mut carol = Device::create(&relay, 152).await;
    let mut dave = Device::create(&relay, 153).await;
    // The relay holds Bob's access verifier, set before his first prekeys.
    let access = relay.state.store.access(&bob.id()).await.unwrap();
    assert!(access.is_some_and(|a| a.verifier.is_some() && a.accept_requests));
    // Bob's contact link carries his key; a bare account id does not.
    assert!(bob.client.contact_link().len() > format!("sotto:{}", bob.id()).len());

    // Carol knows only Bob's account id: her first message is a request.
    carol.client.add_contact(&bob.id().to_string()).await.unwrap();
    carol.client.send_text(&bob.id(), "hello, it's carol").await.unwrap();
    let got = bob.receive(1).await;
    assert_eq!(got[0].text, "hello, it's carol");
    assert_eq!(bob.client.message_requests().await.unwrap(), vec![carol.id()]);
    // Only a conversation that exists can be accepted.
    let err = bob.client.accept_message_request(&dave.id()).await.unwrap_err();
    assert_eq!(err.code(), "unknown_contact");
    // Bob answers: that accepts Carol, and the answer carries his access key.
    bob.client.send_text(&carol.id(), "hi carol").await.unwrap();
    assert_eq!(carol.receive(1).await[0].text, "hi carol");
    assert!(bob.client.message_requests().await.unwrap().is_empty());

    // Bob goes offline. Dave, a stranger, fills Bob's request quota (100 by default).
    let bob_id = bob.id();
    let Device { client, dir, seed, .. } = bob;
    client.shutdown().await;
    dave.client.add_contact(&bob_id.to_string()).await.unwrap();
    for i in 0..100 {
        dave.client.send_text(&bob_id, &format!("spam {i}")).await.unwrap();
    }
    dave.sent(100).await;
    // Carol presents Bob's key: her message is a contact's and is stored.
    let m = carol.client.send_text(&bob_id, "still there?").await.unwrap();
    carol
        .wait_for(|e| matches!(e, Event::MessageSent { id, .. } if *id == m.id))
        .await;
    // Dave's next one is refused for now (REQUESTS_FULL is retryable: it stays queued).
    dave.client.send_text(&bob_id, "one more").await.unwrap();

    let mut bob = Device::reopen(dir, seed).await;
    let got = bob.receive(101).await;
    assert!(got.iter().any(|m| m.text == "still there?"));
    assert_eq!(got.iter().filter(|m| m.text.starts_with("spam")).count(), 100);
    assert_eq!(bob.client.message_requests().await.unwrap(), vec![dave.id()]);
}
