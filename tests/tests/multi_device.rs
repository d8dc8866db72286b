//! Alice with two devices and Bob with three: every message shows on all five (the
//! sender's other devices through sync transcripts); a device linked mid-conversation
//! gets what follows; a removed device gets nothing new.

use sotto_crypto::DeviceId;
use sotto_sdk::{Event, MessageStatus};
use sotto_tests::{Device, TestRelay};

/// Sends `text` from `from` and checks it shows once on each of `to`.
async fn check(from: &mut Device, text: &str, to: &mut [&mut Device]) {
    let peer = to.iter().map(|d| d.id()).find(|id| *id != from.id()).unwrap();
    // A device the contact linked changes their safety number: the user acknowledges it
    // before the next send (a no-op when nothing changed).
    from.client.acknowledge_identity(&peer).await.unwrap();
    from.client.send_text(&peer, text).await.unwrap();
    for d in to.iter_mut() {
        let got = d.receive(1).await;
        assert_eq!(got[0].text, text);
        let expected = if d.id() == from.id() {
            MessageStatus::SentElsewhere
        } else {
            MessageStatus::Received
        };
        assert_eq!(got[0].status, expected);
        assert_eq!(got[0].sender, (from.id(), from.client.device_id()));
    }
    from.sent(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_and_three_devices_link_talk_and_remove() {
    let relay = TestRelay::start().await;
    let mut a1 = Device::create(&relay, 21).await;
    let mut b1 = Device::create(&relay, 22).await;
    a1.client.add_contact(&b1.client.contact_link()).await.unwrap();
    b1.client.add_contact(&a1.client.contact_link()).await.unwrap();
    let mut a2 = Device::join(&relay, &mut a1, 23).await;
    let mut b2 = Device::join(&relay, &mut b1, 24).await;
    // The third device is linked by the second (which holds the list key), without the
    // list key, so that any holder can remove it later.
    let mut b3 = Device::join_with(&relay, &mut b2, 25, false).await;
    assert_eq!(b3.id(), b1.id());
    assert_eq!(b3.client.device_id(), DeviceId(3));
    // b1 learns of b3 from the linking answer b2 sent to every device.
    b1.wait_for(|e| matches!(e, Event::DeviceListChanged { change, .. } if change.added.contains(&DeviceId(3))))
        .await;
    // The linked devices got the contact list.
    assert_eq!(a2.client.conversations().await.unwrap(), vec![b1.id()]);
    assert_eq!(b3.client.conversations().await.unwrap(), vec![a1.id()]);

    check(&mut a1, "from a1", &mut [&mut a2, &mut b1, &mut b2, &mut b3]).await;
    check(&mut b2, "from b2", &mut [&mut a1, &mut a2, &mut b1, &mut b3]).await;
    check(&mut a2, "from a2", &mut [&mut a1, &mut b1, &mut b2, &mut b3]).await;
    check(&mut b3, "from b3", &mut [&mut a1, &mut a2, &mut b1, &mut b2]).await;
    check(&mut b1, "from b1", &mut [&mut a1, &mut a2, &mut b2, &mut b3]).await;
    // Five texts each (Alice's side also shows the "identity changed" item of Bob's new
    // devices, which is local and not a message).
    let texts =
        |h: Vec<sotto_sdk::StoredMessage>| h.into_iter().filter(|m| m.kind == sotto_sdk::MessageKind::Text).count();
    for d in [&a1, &a2] {
        assert_eq!(texts(d.history(&b1.id()).await), 5);
    }
    for d in [&b1, &b2, &b3] {
        assert_eq!(texts(d.history(&a1.id()).await), 5);
    }

    // b3's delivery receipts reach Alice's devices before it is removed: one sent later
    // would come from a device they no longer list. They are in b3's outbox from the
    // moment it stored the messages; once the relay stored them they are in Alice's
    // mailboxes, ahead of anything sent later.
    b3.client.send_receipts_now().await;
    tokio::time::timeout(sotto_tests::FAILSAFE, async {
        while b3.client.outbox_len().await.unwrap() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("b3's receipts did not go out");
    // The sender of the last of Alice's messages hears it delivered (once, from whichever
    // of Bob's devices reported it first).
    let last = a2
        .history(&b1.id())
        .await
        .iter()
        .find(|m| m.text == "from a2")
        .unwrap()
        .id;
    a2.wait_for(|e| matches!(e, Event::Delivered { ids, .. } if ids.contains(&last)))
        .await;

    // Mid-conversation: Alice links a third device; Bob removes his third.
    let mut a3 = Device::join(&relay, &mut a2, 26).await;
    b1.client.remove_device(DeviceId(3)).await.unwrap();
    let b3_before = b3.history(&a1.id()).await.len();
    check(&mut b1, "after changes 1", &mut [&mut a1, &mut a2, &mut a3, &mut b2]).await;
    check(&mut a3, "after changes 2", &mut [&mut a1, &mut a2, &mut b1, &mut b2]).await;
    check(&mut b2, "after changes 3", &mut [&mut a1, &mut a2, &mut a3, &mut b1]).await;
    // a3 pinned Bob's list with b3 when it joined; its send brought the newer one.
    a3.wait_for(|e| {
        matches!(e, Event::DeviceListChanged { account, change } if *account == b1.id() && change.removed.contains(&DeviceId(3)))
    })
    .await;
    // The removed device: no new message reached it, and it learns it was removed.
    b3.wait_for(|e| matches!(e, Event::DeviceRemoved)).await;
    assert_eq!(b3.history(&a1.id()).await.len(), b3_before);
    assert!(
        !b3.stash.iter().any(|e| matches!(e, Event::MessageReceived(_))),
        "{:?}",
        b3.stash
    );
    for d in [&a1, &a2, &b1, &b2] {
        assert!(!d.saw_undecryptable(), "{:?}", d.stash);
    }
}
