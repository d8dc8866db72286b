//! A relay whose database is restored from an earlier copy numbers a mailbox again from
//! where the copy left off: the client must not drop the new envelopes as repeats.

use sotto_sdk::store::AccountStore;
use sotto_tests::faults::{back_up, restore};
use sotto_tests::{Device, TempDir, TestRelay};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_whose_seqs_repeat_after_a_database_restore_still_arrive() {
    let mut relay = TestRelay::start().await;
    let alice = Device::create(&relay, 61).await;
    let mut bob = Device::create(&relay, 62).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    bob.client.add_contact(&alice.client.contact_link()).await.unwrap();
    let texts = |v: Vec<sotto_sdk::StoredMessage>| v.into_iter().map(|m| m.text).collect::<Vec<_>>();

    for t in ["before 1", "before 2"] {
        alice.client.send_text(&bob.id(), t).await.unwrap();
    }
    assert_eq!(texts(bob.receive(2).await), ["before 1", "before 2"]);

    let backup = TempDir::new("relay-backup");
    relay.stopped(|db| back_up(db, backup.path())).await;
    for t in ["after 1", "after 2"] {
        alice.client.send_text(&bob.id(), t).await.unwrap();
    }
    assert_eq!(texts(bob.receive(2).await), ["after 1", "after 2"]);
    let before = epoch(&bob).await;
    assert!(before.is_some(), "the client stores the relay's mailbox epoch");

    // The operator restores the copy: Bob's mailbox counts from the same seq again.
    relay.stopped(|db| restore(db, backup.path())).await;
    for t in ["again 1", "again 2"] {
        alice.client.send_text(&bob.id(), t).await.unwrap();
    }
    assert_eq!(texts(bob.receive(2).await), ["again 1", "again 2"]);
    // The restart after the restore brought a new epoch, which the client committed
    // (restarting its seq count) before it read the deliveries.
    let after = epoch(&bob).await;
    assert!(
        after.is_some() && after != before,
        "a new mailbox epoch after the restore"
    );
    assert!(!bob.saw_undecryptable());
    // Each message once in Bob's history.
    let h = bob.history(&alice.id()).await;
    assert_eq!(h.len(), 6);
}

/// The mailbox epoch the client's stored account record counts its seqs in.
async fn epoch(d: &Device) -> Option<[u8; 16]> {
    AccountStore::load_account(d.client.store())
        .await
        .unwrap()
        .unwrap()
        .value
        .mailbox_epoch
}
