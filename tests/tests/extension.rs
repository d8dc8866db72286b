//! The notification extension in process, beside a closed app: a network failure in the
//! middle of a fetch loses no notification. The message it hit is put aside (acked, kept
//! in the store) and shown by the next fetch; what came before it is shown at once.

use std::time::Duration;

use sotto_sdk::Event;
use sotto_sdk::store::Page;
use sotto_tests::{Device, TestRelay};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_failure_mid_fetch_loses_no_notification() {
    let (relay, proxy) = TestRelay::start_behind_proxy().await;
    let mut alice = Device::create(&relay, 81).await;
    let bob = Device::create(&relay, 82).await;
    let mut carol = Device::create(&relay, 83).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    carol.client.add_contact(&bob.client.contact_link()).await.unwrap();
    bob.client.add_contact(&carol.client.contact_link()).await.unwrap();
    carol.client.set_profile("Carol", None).await.unwrap();
    let mut bob = bob;
    bob.wait_for(|e| matches!(e, Event::ProfileChanged { .. })).await;
    let bob = bob.restart_offline().await;

    // Carol (known to Bob) writes first; then Alice, whose device list Bob must fetch.
    carol.client.send_text(&bob.id(), "from Carol").await.unwrap();
    carol.sent(1).await;
    alice.client.send_text(&bob.id(), "from Alice").await.unwrap();
    alice.sent(1).await;
    proxy.fail_next(&format!("/v1/accounts/{}/device-list", alice.id()), 1_000);

    let extension = bob.extension().await;
    let first = extension.fetch_notifications(WAIT).await.unwrap();
    assert!(!first.app_active);
    assert!(first.complete);
    let shown: Vec<_> = first
        .notifications
        .iter()
        .map(|n| (n.sender_name.as_str(), n.body.as_str()))
        .collect();
    assert_eq!(shown, [("Carol", "from Carol")]);
    assert!(proxy.refused() >= 1);

    // The network is back: the next fetch (the next push) shows Alice's message, though
    // nothing new waits in the mailbox.
    proxy.fail_next("", 0);
    let second = extension.fetch_notifications(WAIT).await.unwrap();
    assert!(second.complete);
    let bodies: Vec<_> = second.notifications.iter().map(|n| n.body.as_str()).collect();
    assert_eq!(bodies, ["from Alice"]);
    drop(extension);

    // The app, opened later, holds both once and is handed neither again.
    let mut bob = bob.online().await;
    bob.wait_for(|e| matches!(e, Event::CaughtUp)).await;
    assert!(
        !bob.stash.iter().any(|e| matches!(e, Event::MessageReceived(_))),
        "the app received again what the extension committed: {:?}",
        bob.stash
    );
    for (from, text) in [(carol.id(), "from Carol"), (alice.id(), "from Alice")] {
        let page = bob.client.messages(&from, Page::default()).await.unwrap();
        assert_eq!(
            page.iter().filter(|m| m.text == text).count(),
            1,
            "{text} is stored once"
        );
    }
}
