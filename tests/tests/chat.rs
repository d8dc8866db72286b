//! Chat items over a real relay (docs/protocol.md §15): replies, edits, deletes,
//! reactions, read receipts and timers in a 1:1 conversation and in a 20-member group;
//! only authors edit or delete; live lists that match a fresh query at every step of a
//! seeded schedule, across restarts; the send queue's states, retry and cancel;
//! requests and blocking.

use std::sync::Arc;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sotto_crypto::AccountId;
use sotto_sdk::{
    Conversation, ConversationSummary, Event, ListDiff, MessageKey, MessageKind, MessageStatus, SendState,
    TimelineItem, apply_diffs,
};
use sotto_tests::{Device, FAILSAFE, TestRelay};
use tokio::sync::mpsc;

fn key_of(m: &sotto_sdk::StoredMessage) -> MessageKey {
    m.key()
}

/// Waits until `d` saw an event matching `f`.
async fn saw(d: &mut Device, f: impl FnMut(&Event) -> bool) {
    d.wait_for(f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_chat_item_in_a_1to1_conversation() {
    let relay = TestRelay::start().await;
    let mut alice = Device::create(&relay, 401).await;
    let mut bob = Device::create(&relay, 402).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    let (a, b) = (alice.id(), bob.id());
    let hello = alice
        .client
        .send_message(Conversation::Direct(b), "hello")
        .await
        .unwrap();
    let got = bob.receive(1).await;
    assert_eq!(got[0].text, "hello");
    bob.client.accept_message_request(&a).await.unwrap();

    // A reply quotes it; a reaction lands on Alice's copy.
    let hello_key = MessageKey {
        conversation: a,
        ..key_of(&hello)
    };
    let reply = bob.client.reply(&hello_key, "hi, Alice").await.unwrap();
    let got = alice.receive(1).await;
    assert_eq!(got[0].id, reply.id);
    assert_eq!(
        got[0].quote.as_ref().map(|q| (q.id, q.snippet.as_str())),
        Some((hello.id, "hello"))
    );
    bob.client.react(&hello_key, "❤").await.unwrap();
    saw(
        &mut alice,
        |e| matches!(e, Event::ReactionChanged { key, .. } if key.id == hello.id),
    )
    .await;
    let mine = alice.client.message(&key_of(&hello)).await.unwrap().unwrap();
    assert_eq!(mine.reactions.len(), 1);
    assert_eq!((mine.reactions[0].by, mine.reactions[0].emoji.as_str()), (b, "❤"));

    // Bob cannot edit or delete Alice's message; Alice can.
    assert_eq!(bob.client.edit(&hello_key, "x").await.unwrap_err().code(), "not_author");
    assert_eq!(
        bob.client.delete_for_everyone(&hello_key).await.unwrap_err().code(),
        "not_author"
    );
    alice.client.edit(&key_of(&hello), "hello, Bob").await.unwrap();
    saw(
        &mut bob,
        |e| matches!(e, Event::MessageEdited { key } if key.id == hello.id),
    )
    .await;
    let theirs = bob.client.message(&hello_key).await.unwrap().unwrap();
    assert_eq!(theirs.text, "hello, Bob");
    assert!(theirs.edited_at_ms > 0);

    // Read receipts: Bob reads, Alice's message becomes Read.
    bob.client.mark_read(Conversation::Direct(a)).await.unwrap();
    saw(
        &mut alice,
        |e| matches!(e, Event::Read { ids, .. } if ids.contains(&hello.id)),
    )
    .await;
    assert_eq!(
        alice.client.message(&key_of(&hello)).await.unwrap().unwrap().status,
        MessageStatus::Read
    );

    // A timer both sides agree on; a message under it expires on an injected clock.
    let timer = alice.client.set_timer(Conversation::Direct(b), 60).await.unwrap();
    saw(&mut bob, |e| matches!(e, Event::TimerChanged { expire_s: 60, .. })).await;
    assert_eq!(timer.kind, MessageKind::Timer { expire_s: 60 });
    // The timer is a timeline item too.
    assert_eq!(bob.receive(1).await[0].kind, MessageKind::Timer { expire_s: 60 });
    let secret = alice
        .client
        .send_message(Conversation::Direct(b), "this goes away")
        .await
        .unwrap();
    assert_eq!(secret.expire_s, 60);
    let got = bob.receive(1).await;
    assert_eq!(got[0].expire_s, 60);
    // Alice's copy expires a minute after she wrote it; nothing goes before.
    assert_eq!(
        alice
            .client
            .expire_messages(secret.timestamp_ms + 59_999)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        alice
            .client
            .expire_messages(secret.timestamp_ms + 60_000)
            .await
            .unwrap(),
        1
    );
    assert!(alice.client.message(&key_of(&secret)).await.unwrap().is_none());
    // Bob's starts when he reads it.
    assert_eq!(bob.client.expire_messages(u64::MAX - 1).await.unwrap(), 0);
    bob.client.mark_read(Conversation::Direct(a)).await.unwrap();
    let read_copy = bob.client.message(&key_of(&got[0])).await.unwrap().unwrap();
    assert!(read_copy.expires_at_ms > 0);
    assert_eq!(bob.client.expire_messages(read_copy.expires_at_ms).await.unwrap(), 1);

    // Delete for everyone: the text and reactions go on both sides.
    alice.client.delete_for_everyone(&key_of(&hello)).await.unwrap();
    saw(
        &mut bob,
        |e| matches!(e, Event::MessageDeleted { key } if key.id == hello.id),
    )
    .await;
    for (d, key) in [(&alice, key_of(&hello)), (&bob, hello_key)] {
        let m = d.client.message(&key).await.unwrap().unwrap();
        assert!(m.deleted && m.text.is_empty() && m.reactions.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_chat_item_in_a_20_member_group() {
    let relay = TestRelay::start().await;
    let mut members = Vec::new();
    for i in 0..20 {
        members.push(Device::create(&relay, 420 + i).await);
    }
    let ids: Vec<AccountId> = members.iter().map(Device::id).collect();
    for id in &ids[1..] {
        let link = sotto_sdk::contact_link(id);
        members[0].client.add_contact(&link).await.unwrap();
    }
    let g = members[0].client.create_group("twenty", &ids[1..]).await.unwrap();
    for m in members.iter_mut().skip(1) {
        saw(m, |e| matches!(e, Event::GroupChanged { group } if *group == g)).await;
    }
    let conv = Conversation::Group(g);
    let hello = members[1].client.send_message(conv, "hello all").await.unwrap();
    for (i, m) in members.iter_mut().enumerate() {
        if i != 1 {
            assert_eq!(m.receive(1).await[0].text, "hello all");
        }
    }
    // The members' delivery receipts name the group: the author sees it delivered there.
    saw(&mut members[1], |e| {
        matches!(e, Event::Delivered { conversation, ids, .. }
            if *conversation == g.conversation() && ids.contains(&hello.id))
    })
    .await;
    let key = MessageKey {
        conversation: g.conversation(),
        sender: ids[1],
        id: hello.id,
    };
    let reply = members[2].client.reply(&key, "hi!").await.unwrap();
    members[3].client.react(&key, "🎉").await.unwrap();
    members[1].client.edit(&key, "hello, all twenty").await.unwrap();
    // A non-author cannot delete it.
    assert_eq!(
        members[4].client.delete_for_everyone(&key).await.unwrap_err().code(),
        "not_author"
    );
    members[0].client.set_timer(conv, 3600).await.unwrap();
    for (i, m) in members.iter_mut().enumerate() {
        if i != 3 {
            saw(
                m,
                |e| matches!(e, Event::ReactionChanged { key: k, .. } if k.id == hello.id),
            )
            .await;
        }
        if i != 1 {
            saw(m, |e| matches!(e, Event::MessageEdited { key: k } if k.id == hello.id)).await;
        }
        if i != 0 {
            saw(m, |e| matches!(e, Event::TimerChanged { expire_s: 3600, .. })).await;
        }
        let got = m.client.message(&key).await.unwrap().unwrap();
        assert_eq!(got.text, "hello, all twenty");
        assert_eq!(got.reactions.len(), 1);
        assert_eq!(got.reactions[0].by, ids[3]);
        let r = MessageKey {
            conversation: g.conversation(),
            sender: ids[2],
            id: reply.id,
        };
        if i != 2 {
            saw(m, |e| matches!(e, Event::MessageReceived(x) if x.id == reply.id)).await;
            let got = m.client.message(&r).await.unwrap();
            assert_eq!(got.and_then(|r| r.quote).map(|q| q.id), Some(hello.id));
        }
    }
    // A member reads: the author's message becomes Read.
    members[5].client.mark_read(conv).await.unwrap();
    saw(
        &mut members[1],
        |e| matches!(e, Event::Read { ids, .. } if ids.contains(&hello.id)),
    )
    .await;
    assert_eq!(
        members[1].client.message(&key).await.unwrap().unwrap().status,
        MessageStatus::Read
    );
    // The author deletes it for everyone.
    members[1].client.delete_for_everyone(&key).await.unwrap();
    for (i, m) in members.iter_mut().enumerate() {
        if i != 1 {
            saw(m, |e| matches!(e, Event::MessageDeleted { key: k } if k.id == hello.id)).await;
        }
        assert!(m.client.message(&key).await.unwrap().unwrap().deleted);
    }
}

/// What a subscription reported, applied in order.
struct Mirror<T> {
    rx: mpsc::UnboundedReceiver<Vec<ListDiff<T>>>,
    list: Vec<T>,
    resets: usize,
}

impl<T: Clone + PartialEq + std::fmt::Debug> Mirror<T> {
    fn new() -> (Mirror<T>, sotto_sdk::Listener<T>)
    where
        T: Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let listener: sotto_sdk::Listener<T> = Box::new(move |diffs| {
            let _ = tx.send(diffs);
        });
        (
            Mirror {
                rx,
                list: Vec::new(),
                resets: 0,
            },
            listener,
        )
    }

    /// Applies callbacks until the mirrored list equals `fresh()` (re-queried after each
    /// callback); fails after the failsafe.
    async fn settles_to<F, Fut>(&mut self, fresh: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Vec<T>>,
    {
        let done = tokio::time::timeout(FAILSAFE, async {
            loop {
                if self.resets > 0 && self.list == fresh().await {
                    return;
                }
                let diffs = self.rx.recv().await.expect("subscription ended");
                if diffs.iter().any(|d| matches!(d, ListDiff::Reset { .. })) {
                    self.resets += 1;
                }
                // Every batch after the first is diffs, never a reset.
                assert!(
                    self.resets == 1 || !matches!(diffs[0], ListDiff::Reset { .. }),
                    "a second reset"
                );
                apply_diffs(&mut self.list, &diffs);
            }
        })
        .await;
        if done.is_err() {
            panic!("the live list never matched a fresh query: {:?}", self.list);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_lists_match_a_fresh_query_through_a_seeded_schedule_with_restarts() {
    let relay = TestRelay::start().await;
    let alice = Device::create(&relay, 441).await;
    let bob = Device::create(&relay, 442).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    bob.client.add_contact(&alice.client.contact_link()).await.unwrap();
    let (a, b) = (alice.id(), bob.id());
    let mut rng = ChaCha20Rng::seed_from_u64(443); // test only
    let mut sent: Vec<sotto_sdk::StoredMessage> = Vec::new();
    let mut bob_opt = Some(bob);
    for round in 0..3 {
        let mut bob = bob_opt.take().unwrap();
        let (mut list, l1) = Mirror::<ConversationSummary>::new();
        let (mut timeline, l2) = Mirror::<TimelineItem>::new();
        let _s1 = bob.client.conversation_list().subscribe(l1);
        let tl = bob.client.timeline(Conversation::Direct(a), 50);
        let _s2 = tl.subscribe(l2);
        for step in 0..12 {
            match rng.next_u32() % 6 {
                0 | 1 => {
                    let m = alice
                        .client
                        .send_message(Conversation::Direct(b), &format!("r{round} s{step}"))
                        .await
                        .unwrap();
                    sent.push(m);
                    bob.receive(1).await;
                }
                2 if !sent.is_empty() => {
                    let m = &sent[rng.next_u32() as usize % sent.len()];
                    if alice.client.edit(&key_of(m), &format!("edited {step}")).await.is_ok() {
                        saw(&mut bob, |e| matches!(e, Event::MessageEdited { .. })).await;
                    }
                }
                3 if !sent.is_empty() => {
                    let m = &sent[rng.next_u32() as usize % sent.len()];
                    let k = MessageKey {
                        conversation: a,
                        ..key_of(m)
                    };
                    bob.client.react(&k, ["👍", "😂", ""][step % 3]).await.unwrap();
                }
                4 if !sent.is_empty() => {
                    let m = sent.swap_remove(rng.next_u32() as usize % sent.len());
                    alice.client.delete_for_everyone(&key_of(&m)).await.unwrap();
                    saw(&mut bob, |e| matches!(e, Event::MessageDeleted { .. })).await;
                }
                _ => {
                    bob.client.mark_read(Conversation::Direct(a)).await.unwrap();
                }
            }
            let c = &bob.client;
            list.settles_to(|| async { c.conversation_list().snapshot().await.unwrap() })
                .await;
            timeline.settles_to(|| async { tl.snapshot().await.unwrap() }).await;
        }
        // The list shows the last message and no unread after a read.
        bob.client.mark_read(Conversation::Direct(a)).await.unwrap();
        let c = &bob.client;
        list.settles_to(|| async { c.conversation_list().snapshot().await.unwrap() })
            .await;
        assert_eq!(list.list.len(), 1);
        assert_eq!(list.list[0].unread, 0);
        drop(tl);
        bob_opt = Some(bob.restart().await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_send_queue_moves_through_its_states_retries_and_cancels() {
    let mut relay = TestRelay::start().await;
    let mut alice = Device::create(&relay, 451).await;
    let mut bob = Device::create(&relay, 452).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    let b = bob.id();
    let (mut timeline, l) = Mirror::<TimelineItem>::new();
    let tl = alice.client.timeline(Conversation::Direct(b), 50);
    let _s = tl.subscribe(l);
    let m = alice.client.send_message(Conversation::Direct(b), "one").await.unwrap();
    bob.receive(1).await;
    bob.client.send_receipts_now().await;
    saw(
        &mut alice,
        |e| matches!(e, Event::Delivered { ids, .. } if ids.contains(&m.id)),
    )
    .await;
    bob.client.accept_message_request(&alice.id()).await.unwrap();
    bob.client.mark_read(Conversation::Direct(alice.id())).await.unwrap();
    saw(
        &mut alice,
        |e| matches!(e, Event::Read { ids, .. } if ids.contains(&m.id)),
    )
    .await;
    // The states the timeline showed for it, in order: never backwards.
    let mut states = Vec::new();
    let rank = |s: &Option<SendState>| match s {
        Some(SendState::Queued) => 0,
        Some(SendState::Sending) => 1,
        Some(SendState::Sent) => 2,
        Some(SendState::Delivered) => 3,
        Some(SendState::Read) => 4,
        _ => 9,
    };
    let done = tokio::time::timeout(FAILSAFE, async {
        while states.last() != Some(&Some(SendState::Read)) {
            let diffs = timeline.rx.recv().await.unwrap();
            apply_diffs(&mut timeline.list, &diffs);
            if let Some(i) = timeline.list.iter().find(|i| i.message.id == m.id)
                && states.last() != Some(&i.send_state)
            {
                states.push(i.send_state.clone());
            }
        }
    })
    .await;
    assert!(done.is_ok(), "states seen: {states:?}");
    assert!(states.windows(2).all(|w| rank(&w[0]) < rank(&w[1])), "{states:?}");

    // Offline: a queued message can be cancelled; another survives a restart.
    relay.stop().await;
    let cancelled = alice
        .client
        .send_message(Conversation::Direct(b), "never")
        .await
        .unwrap();
    let kept = alice
        .client
        .send_message(Conversation::Direct(b), "later")
        .await
        .unwrap();
    alice.client.cancel(&key_of(&cancelled)).await.unwrap();
    assert!(alice.client.message(&key_of(&cancelled)).await.unwrap().is_none());
    assert_eq!(alice.client.cancel(&key_of(&m)).await.unwrap_err().code(), "not_queued");
    let mut alice = alice.restart().await;
    relay.restart().await;
    let got = bob.receive(1).await;
    assert_eq!(got[0].text, "later");
    saw(
        &mut alice,
        |e| matches!(e, Event::MessageSent { id, .. } if *id == kept.id),
    )
    .await;

    // A send to an account that does not exist fails on its item; retry queues it again.
    let ghost = AccountId([0x42; 32]);
    let failed = alice.client.send_message(Conversation::Direct(ghost), "anyone?").await;
    if let Ok(f) = failed {
        let Event::SendFailed { code, .. } = alice
            .wait_for(|e| matches!(e, Event::SendFailed { id, .. } if *id == f.id))
            .await
        else {
            unreachable!()
        };
        let stored = alice.client.message(&key_of(&f)).await.unwrap().unwrap();
        assert!(matches!(stored.status, MessageStatus::Failed { .. }));
        // The handle's state says why, with the same stable code.
        assert!(matches!(
            SendState::of_message(&stored),
            Some(SendState::Failed { error, .. }) if error == code
        ));
        alice.client.retry(&key_of(&f)).await.unwrap();
        saw(&mut alice, |e| matches!(e, Event::SendFailed { id, .. } if *id == f.id)).await;
    }
    let _ = Arc::new(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_can_be_blocked_unblocked_and_deleted() {
    let relay = TestRelay::start().await;
    let mut bob = Device::create(&relay, 461).await;
    let mut eve = Device::create(&relay, 462).await;
    eve.client.add_contact(&bob.id().to_string()).await.unwrap();
    eve.client
        .send_message(Conversation::Direct(bob.id()), "hi, a stranger here")
        .await
        .unwrap();
    bob.receive(1).await;
    let list = bob.client.conversation_list().snapshot().await.unwrap();
    assert_eq!(list.len(), 1);
    assert!(list[0].is_request);
    // Blocked: Eve's messages are dropped and get no receipts; the request is gone.
    bob.client.block(&eve.id()).await.unwrap();
    assert!(bob.client.message_requests().await.unwrap().is_empty());
    let dropped = eve
        .client
        .send_message(Conversation::Direct(bob.id()), "hello??")
        .await
        .unwrap();
    saw(
        &mut eve,
        |e| matches!(e, Event::MessageSent { id, .. } if *id == dropped.id),
    )
    .await;
    // A message Bob can see proves the earlier one was processed (one mailbox, in order).
    let carol = Device::create(&relay, 463).await;
    carol.client.add_contact(&bob.id().to_string()).await.unwrap();
    carol
        .client
        .send_message(Conversation::Direct(bob.id()), "carol")
        .await
        .unwrap();
    let got = bob.receive(1).await;
    assert_eq!(got[0].text, "carol");
    assert_eq!(bob.history(&eve.id()).await.len(), 1);
    assert_eq!(
        bob.client
            .send_message(Conversation::Direct(eve.id()), "x")
            .await
            .unwrap_err()
            .code(),
        "blocked"
    );
    // Unblocked and deleted: the conversation is gone; Eve's next message is a new request.
    bob.client.unblock(&eve.id()).await.unwrap();
    bob.client.delete_conversation(&eve.id()).await.unwrap();
    assert!(bob.history(&eve.id()).await.is_empty());
    eve.client
        .send_message(Conversation::Direct(bob.id()), "again")
        .await
        .unwrap();
    assert_eq!(bob.receive(1).await[0].text, "again");
    let requests = bob.client.message_requests().await.unwrap();
    assert!(requests.contains(&eve.id()) && requests.contains(&carol.id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_only_the_contacts_devices_and_is_never_stored() {
    use sotto_relay::storage::Storage;
    let relay = TestRelay::start().await;
    let mut a1 = Device::create(&relay, 471).await;
    let mut b1 = Device::create(&relay, 472).await;
    let mut b2 = Device::join(&relay, &mut b1, 473).await;
    let carol = Device::create(&relay, 474).await;
    let (a, b) = (a1.id(), b1.id());
    a1.client.add_contact(&b1.client.contact_link()).await.unwrap();
    b1.client.add_contact(&a1.client.contact_link()).await.unwrap();
    carol.client.add_contact(&b1.client.contact_link()).await.unwrap();
    // Sessions both ways, with both of Bob's devices.
    a1.client.send_message(Conversation::Direct(b), "hi").await.unwrap();
    b1.receive(1).await;
    b2.receive(1).await;
    b1.client.send_message(Conversation::Direct(a), "hey").await.unwrap();
    a1.receive(1).await;
    b2.receive(1).await;
    carol
        .client
        .send_message(Conversation::Direct(b), "I'm carol")
        .await
        .unwrap();
    b1.receive(1).await;
    b2.receive(1).await;
    let seqs = |d: &Device| (d.id(), d.device_id());
    let before = [
        relay.state.store.last_seq(&seqs(&b1).0, seqs(&b1).1).await.unwrap(),
        relay.state.store.last_seq(&seqs(&b2).0, seqs(&b2).1).await.unwrap(),
    ];

    // Alice types: both of Bob's devices see it, in the event stream and the list.
    a1.client.set_typing(Conversation::Direct(b), true).await.unwrap();
    for d in [&mut b1, &mut b2] {
        saw(d, |e| matches!(e, Event::Typing { by, typing: true, .. } if *by == a)).await;
        let list = d.client.conversation_list().snapshot().await.unwrap();
        let row = list.iter().find(|s| s.conversation == Conversation::Direct(a)).unwrap();
        assert_eq!(row.typing, vec![a]);
    }
    // Repeated within 3 s: nothing more goes out. Then she stops.
    a1.client.set_typing(Conversation::Direct(b), true).await.unwrap();
    a1.client.set_typing(Conversation::Direct(b), false).await.unwrap();
    for d in [&mut b1, &mut b2] {
        saw(d, |e| matches!(e, Event::Typing { by, typing: false, .. } if *by == a)).await;
        assert!(d.stash.iter().all(|e| !matches!(e, Event::Typing { typing: true, .. })));
        let list = d.client.conversation_list().snapshot().await.unwrap();
        let row = list.iter().find(|s| s.conversation == Conversation::Direct(a)).unwrap();
        assert!(row.typing.is_empty());
    }
    // Carol is a message request Bob never accepted: his typing does not reach her.
    b1.client
        .set_typing(Conversation::Direct(carol.id()), true)
        .await
        .unwrap();
    // Bob types to Alice: she sees it; Carol and Bob's own other device do not.
    b1.client.set_typing(Conversation::Direct(a), true).await.unwrap();
    saw(
        &mut a1,
        |e| matches!(e, Event::Typing { by, typing: true, .. } if *by == b),
    )
    .await;
    // A message after it, on the same connections, proves the frames were handled.
    b1.client.send_message(Conversation::Direct(a), "marker").await.unwrap();
    a1.receive(1).await;
    b2.receive(1).await;
    carol
        .client
        .send_message(Conversation::Direct(b), "still me")
        .await
        .unwrap();
    b1.receive(1).await;
    assert!(!b2.stash.iter().any(|e| matches!(e, Event::Typing { .. })));
    assert!(!carol.stash.iter().any(|e| matches!(e, Event::Typing { .. })));
    assert!(!b2.saw_undecryptable() && !a1.saw_undecryptable());
    // Nothing of it reached a mailbox: the relay's sequence numbers moved only for the
    // stored messages (one each: the marker's transcript to b2 and Carol's to b1, b2).
    let after = [
        relay.state.store.last_seq(&seqs(&b1).0, seqs(&b1).1).await.unwrap(),
        relay.state.store.last_seq(&seqs(&b2).0, seqs(&b2).1).await.unwrap(),
    ];
    assert_eq!(after[0] - before[0], 1, "b1: Carol's message only");
    assert!(
        after[1] - before[1] <= 3,
        "b2: the marker's transcript and Carol's message (and receipts)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_opt_in_reaches_accepted_contacts_and_turns_to_last_seen_after_the_grace() {
    use sotto_sdk::Presence;
    let relay = TestRelay::start().await;
    let sharing = sotto_sdk::ClientOptions {
        share_presence: true,
        presence_interval: std::time::Duration::from_millis(200),
        ..sotto_tests::options(481)
    };
    let mut alice = Device::create_with(&relay, 481, sharing).await;
    let short_grace = sotto_sdk::ClientOptions {
        presence_grace: std::time::Duration::from_secs(1),
        ..sotto_tests::options(482)
    };
    let mut bob = Device::create_with(&relay, 482, short_grace).await;
    let mut carol = Device::create(&relay, 483).await;
    let (a, b) = (alice.id(), bob.id());
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    bob.client.add_contact(&alice.client.contact_link()).await.unwrap();
    carol.client.add_contact(&alice.client.contact_link()).await.unwrap();
    alice.client.send_message(Conversation::Direct(b), "hi").await.unwrap();
    bob.receive(1).await;
    // Carol writes to Alice, who does not accept her: Carol never learns her presence.
    carol
        .client
        .send_message(Conversation::Direct(a), "hello?")
        .await
        .unwrap();
    alice.receive(1).await;
    saw(
        &mut bob,
        |e| matches!(e, Event::Presence { account, online: true, .. } if *account == a),
    )
    .await;
    let (mut list, l) = Mirror::<ConversationSummary>::new();
    let _s = bob.client.conversation_list().subscribe(l);
    let presence = |list: &[ConversationSummary]| {
        list.iter()
            .find(|s| s.conversation == Conversation::Direct(a))
            .and_then(|s| s.presence)
    };
    let done = tokio::time::timeout(FAILSAFE, async {
        while presence(&list.list) != Some(Presence::Online) {
            let d = list.rx.recv().await.unwrap();
            apply_diffs(&mut list.list, &d);
        }
    })
    .await;
    assert!(done.is_ok());
    // Alice goes away: after the grace Bob's list shows when she was last seen.
    alice.client.shutdown().await;
    let done = tokio::time::timeout(FAILSAFE, async {
        while !matches!(presence(&list.list), Some(Presence::LastSeen { .. })) {
            let d = list.rx.recv().await.unwrap();
            apply_diffs(&mut list.list, &d);
        }
    })
    .await;
    assert!(done.is_ok(), "{:?}", presence(&list.list));
    // A stored message proves Carol's connection delivered everything before it.
    bob.client
        .send_message(Conversation::Direct(carol.id()), "marker")
        .await
        .unwrap();
    carol.receive(1).await;
    assert!(!carol.stash.iter().any(|e| matches!(e, Event::Presence { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_what_it_should_live_and_the_store_files_hold_no_plaintext() {
    let relay = TestRelay::start().await;
    let alice = Device::create(&relay, 491).await;
    let mut bob = Device::create(&relay, 492).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    let b = bob.id();
    let (mut results, l) = Mirror::<TimelineItem>::new();
    let search = bob.client.search("zanzibar holi", 50);
    let _s = search.subscribe(l);
    for t in [
        "Our trip to Zanzibar: the holiday plan",
        "nothing to see here",
        "zanzibar again, no other word",
    ] {
        alice.client.send_message(Conversation::Direct(b), t).await.unwrap();
    }
    bob.receive(3).await;
    results.settles_to(|| async { search.snapshot().await.unwrap() }).await;
    assert_eq!(results.list.len(), 1);
    assert_eq!(results.list[0].message.text, "Our trip to Zanzibar: the holiday plan");
    // An edit that drops a word takes the message out of the results.
    let mine = MessageKey {
        conversation: b,
        sender: alice.id(),
        id: results.list[0].message.id,
    };
    alice.client.edit(&mine, "Our trip: the plan").await.unwrap();
    saw(&mut bob, |e| matches!(e, Event::MessageEdited { .. })).await;
    results.settles_to(|| async { search.snapshot().await.unwrap() }).await;
    assert!(results.list.is_empty());
    // The durable cursor: everything after an order, in every conversation.
    let all = bob.client.messages_after(0, 100).await.unwrap();
    assert_eq!(all.len(), 3);
    let rest = bob.client.messages_after(all[0].order, 100).await.unwrap();
    assert_eq!(rest.len(), 2);
    // No word of any text is in Bob's store files in the clear.
    bob.client.shutdown().await;
    let mut scanned = 0;
    for entry in std::fs::read_dir(bob.dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        scanned += bytes.len();
        for word in ["zanzibar", "Zanzibar", "holiday", "nothing to see"] {
            assert!(
                !bytes.windows(word.len()).any(|w| w == word.as_bytes()),
                "{word} in the store's files"
            );
        }
    }
    assert!(scanned > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contacts_new_device_must_be_acknowledged_before_the_next_send() {
    let relay = TestRelay::start().await;
    let mut alice = Device::create(&relay, 501).await;
    let mut bob = Device::create(&relay, 502).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    let b = bob.id();
    alice.client.send_message(Conversation::Direct(b), "one").await.unwrap();
    bob.receive(1).await;
    let safety = alice.client.safety_number(&b).await.unwrap();
    // Bob links a second device; Alice's next send finds it and pins Bob's new list.
    let mut b2 = Device::join(&relay, &mut bob, 503).await;
    alice.client.send_message(Conversation::Direct(b), "two").await.unwrap();
    saw(
        &mut alice,
        |e| matches!(e, Event::IdentityChanged { account } if *account == b),
    )
    .await;
    assert_eq!(b2.receive(1).await[0].text, "two");
    // The safety number covers the account keys: unchanged. The device set did change, and
    // the conversation shows it and waits for Alice.
    assert_eq!(alice.client.safety_number(&b).await.unwrap(), safety);
    let items = alice.history(&b).await;
    assert!(items.iter().any(|m| m.kind == MessageKind::IdentityChanged));
    let list = alice.client.conversation_list().snapshot().await.unwrap();
    assert!(list[0].identity_unacked);
    let err = alice
        .client
        .send_message(Conversation::Direct(b), "three")
        .await
        .unwrap_err();
    assert_eq!(err.code(), "identity_unacknowledged");
    alice.client.acknowledge_identity(&b).await.unwrap();
    alice
        .client
        .send_message(Conversation::Direct(b), "three")
        .await
        .unwrap();
    assert_eq!(b2.receive(1).await[0].text, "three");
}
