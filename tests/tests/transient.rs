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
