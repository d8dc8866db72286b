//! The store conformance suite. Every backend runs it through
//! [`store_conformance_tests!`](crate::store_conformance_tests), which expands to one
//! `#[tokio::test]` per check with a fresh store from the given async expression.
//! These functions are the test suite itself: they assert and unwrap.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sotto_crypto::{AccountId, AccountKey, Device, DeviceId};

use super::{
    AccountRecord, Changes, ConversationRecord, GroupRecord, MAX_PROCESSED_ENVELOPES, MessageKey, MessageStatus,
    MessageUpdate, OutboxItem, Page, PendingInbound, SenderKeySet, SessionSet, Store, StoreError, StoredMessage, Write,
};
use crate::ids::MessageId;

/// Expands to the conformance tests for a store made by `$make` (an async expression), one
/// `#[tokio::test]` each; with `wasm:` in front, one `#[wasm_bindgen_test]` each (the
/// calling crate depends on `wasm-bindgen-test`). `$make` runs once per test, so it must
/// give each test a fresh store (for a persistent one: a new database name each time).
#[macro_export]
macro_rules! store_conformance_tests {
    (wasm: $make:expr) => {
        $crate::store_conformance_tests!(@all [wasm_bindgen_test::wasm_bindgen_test] $make);
    };
    (@all [$attr:meta] $make:expr) => {
        $crate::store_conformance_tests!(@each [$attr] $make;
            account_cas, sessions_cas_and_atomicity, prekey_delete_is_single_use,
            messages_dedupe_order_and_pages, message_status, message_updates_fold_and_removal, search_and_cursor,
            outbox_fifo,
            device_lists_and_conversations, deferred_commits_and_sync,
            message_keys_are_scoped_to_conversation_and_sender, device_list_pins_only_move_forward,
            commits_relying_on_a_moved_pin_conflict, processed_envelopes_are_kept_bounded,
            pending_inbound_is_kept_in_order, groups_and_sender_keys_cas, blob_tokens_are_replaced);
    };
    (@each [$attr:meta] $make:expr; $($name:ident),*) => {
        $(
            #[$attr]
            async fn $name() {
                let store = $make;
                $crate::store::conformance::$name(&store).await;
            }
        )*
    };
    ($make:expr) => {
        $crate::store_conformance_tests!(@all [tokio::test] $make);
    };
}

fn account(seq: u64) -> AccountRecord {
    AccountRecord {
        account_key: Some(vec![1; 40]),
        device: vec![2; 80],
        relay_url: "http://127.0.0.1:1".into(),
        signed_prekey_id: 1,
        next_one_time_id: 101,
        next_kem_id: 21,
        last_seq: seq,
        mailbox_epoch: None,
        prekeys_unsent: false,
        access_key: Some([3; 32]),
        access_sent: Some(true),
        list_key: Some(vec![4; 60]),
        profile: None,
        profile_key: None,
        profile_uploaded_ms: 0,
    }
}

fn peer(n: u8) -> (AccountId, DeviceId) {
    (AccountId([n; 32]), DeviceId(u32::from(n)))
}

fn message(id: u8, conv: u8, text: &str) -> StoredMessage {
    StoredMessage::text(
        MessageId([id; 16]),
        AccountId([conv; 32]),
        peer(conv),
        u64::from(id),
        text.into(),
        MessageStatus::Received,
    )
}

/// The account row: create once, then compare-and-swap.
pub async fn account_cas(s: &impl Store) {
    assert!(s.load_account().await.unwrap().is_none());
    let c = s
        .commit(Changes {
            account: Some(Write {
                expected: None,
                value: account(0),
            }),
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(c.account_version, Some(1));
    let again = s
        .commit(Changes {
            account: Some(Write {
                expected: None,
                value: account(0),
            }),
            ..Changes::default()
        })
        .await;
    assert!(matches!(again, Err(StoreError::Conflict)));
    s.commit(Changes {
        account: Some(Write {
            expected: Some(1),
            value: account(7),
        }),
        ..Changes::default()
    })
    .await
    .unwrap();
    let stale = s
        .commit(Changes {
            account: Some(Write {
                expected: Some(1),
                value: account(9),
            }),
            ..Changes::default()
        })
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict)));
    let a = s.load_account().await.unwrap().unwrap();
    assert_eq!(a.version, 2);
    assert_eq!(a.value, account(7));
}

/// A deferred commit is a commit in every way but durability: read back at once, checked
/// and counted in the same versions as durable ones; `sync` succeeds, also with nothing
/// to sync.
pub async fn deferred_commits_and_sync(s: &impl Store) {
    s.sync().await.unwrap();
    let c = s
        .commit_deferred(Changes {
            account: Some(Write {
                expected: None,
                value: account(3),
            }),
            messages: vec![message(1, 9, "deferred")],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(c.account_version, Some(1));
    assert_eq!(c.inserted.len(), 1);
    // A durable commit sees the deferred one's version.
    let stale = s
        .commit(Changes {
            account: Some(Write {
                expected: None,
                value: account(4),
            }),
            ..Changes::default()
        })
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict)));
    s.commit(Changes {
        account: Some(Write {
            expected: Some(1),
            value: account(5),
        }),
        ..Changes::default()
    })
    .await
    .unwrap();
    // And a deferred one sees the durable one's.
    let stale = s
        .commit_deferred(Changes {
            account: Some(Write {
                expected: Some(1),
                value: account(6),
            }),
            ..Changes::default()
        })
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict)));
    s.sync().await.unwrap();
    let a = s.load_account().await.unwrap().unwrap();
    assert_eq!((a.version, a.value), (2, account(5)));
    let page = s
        .messages(
            AccountId([9; 32]),
            Page {
                limit: 10,
                before: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].text, "deferred");
}

/// Sessions are versioned; a conflicting commit writes nothing at all.
pub async fn sessions_cas_and_atomicity(s: &impl Store) {
    let set = |n: u8| SessionSet {
        sessions: vec![vec![n; 100], vec![n + 1; 50]],
    };
    let c = s
        .commit(Changes {
            sessions: vec![
                (
                    peer(1),
                    Write {
                        expected: None,
                        value: set(1),
                    },
                ),
                (
                    peer(2),
                    Write {
                        expected: None,
                        value: set(2),
                    },
                ),
            ],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(c.session_versions, vec![1, 1]);
    // One good write and one stale write: neither lands, nor the message with them.
    let bad = s
        .commit(Changes {
            sessions: vec![
                (
                    peer(1),
                    Write {
                        expected: Some(1),
                        value: set(9),
                    },
                ),
                (
                    peer(2),
                    Write {
                        expected: Some(5),
                        value: set(9),
                    },
                ),
            ],
            messages: vec![message(1, 1, "lost")],
            ..Changes::default()
        })
        .await;
    assert!(matches!(bad, Err(StoreError::Conflict)));
    let mut all = s.load_sessions().await.unwrap();
    all.sort_by_key(|(p, _)| *p);
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].0, peer(1));
    assert_eq!(all[0].1.version, 1);
    assert_eq!(all[0].1.value, set(1));
    assert!(
        s.messages(AccountId([1; 32]), Page::default())
            .await
            .unwrap()
            .is_empty()
    );
    s.commit(Changes {
        sessions: vec![(
            peer(1),
            Write {
                expected: Some(1),
                value: set(3),
            },
        )],
        ..Changes::default()
    })
    .await
    .unwrap();
    let all = s.load_sessions().await.unwrap();
    let p1 = all.iter().find(|(p, _)| *p == peer(1)).unwrap();
    assert_eq!(p1.1.version, 2);
    assert_eq!(p1.1.value, set(3));
}

/// Group and sender-key rows are versioned like sessions: a stale write of either makes
/// the whole commit a conflict, and what is stored reads back as written.
pub async fn groups_and_sender_keys_cas(s: &impl Store) {
    use crate::group::GroupId;
    let group = |n: u8| GroupRecord {
        log: vec![n; 300],
        seal_keys: vec![([n; 32], [n + 1; 32]), ([n + 2; 32], [n + 3; 32])],
        chain: Some(vec![n; 120]),
        chain_holders: vec![peer(1), peer(2)],
        member_access: vec![(AccountId([n; 32]), [9; 32])],
        active: n.is_multiple_of(2),
        own_commits: vec![vec![n; 40]],
        expire_s: u32::from(n) * 60,
        timer_at_ms: u64::from(n),
        read_up_to: u64::from(n) + 7,
    };
    let keys = |n: u8| SenderKeySet {
        chains: vec![vec![n; 90], vec![n + 1; 80]],
    };
    let (g1, g2) = (GroupId([1; 32]), GroupId([2; 32]));
    let c = s
        .commit(Changes {
            groups: vec![
                (
                    g1,
                    Write {
                        expected: None,
                        value: group(1),
                    },
                ),
                (
                    g2,
                    Write {
                        expected: None,
                        value: group(2),
                    },
                ),
            ],
            sender_keys: vec![(
                (g1, peer(1)),
                Write {
                    expected: None,
                    value: keys(1),
                },
            )],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!((c.group_versions, c.sender_key_versions), (vec![1, 1], vec![1]));
    // A good group write with a stale sender-key write: nothing lands.
    let bad = s
        .commit(Changes {
            groups: vec![(
                g1,
                Write {
                    expected: Some(1),
                    value: group(7),
                },
            )],
            sender_keys: vec![(
                (g1, peer(1)),
                Write {
                    expected: None,
                    value: keys(7),
                },
            )],
            ..Changes::default()
        })
        .await;
    assert!(matches!(bad, Err(StoreError::Conflict)));
    let bad = s
        .commit(Changes {
            groups: vec![(
                g2,
                Write {
                    expected: Some(3),
                    value: group(7),
                },
            )],
            ..Changes::default()
        })
        .await;
    assert!(matches!(bad, Err(StoreError::Conflict)));
    let c = s
        .commit(Changes {
            groups: vec![(
                g1,
                Write {
                    expected: Some(1),
                    value: group(4),
                },
            )],
            sender_keys: vec![
                (
                    (g1, peer(1)),
                    Write {
                        expected: Some(1),
                        value: keys(4),
                    },
                ),
                (
                    (g2, peer(1)),
                    Write {
                        expected: None,
                        value: keys(5),
                    },
                ),
            ],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!((c.group_versions, c.sender_key_versions), (vec![2], vec![2, 1]));
    let mut groups = s.load_groups().await.unwrap();
    groups.sort_by_key(|(id, _)| *id);
    assert_eq!(groups.len(), 2);
    assert_eq!(
        (groups[0].0, groups[0].1.version, &groups[0].1.value),
        (g1, 2, &group(4))
    );
    assert_eq!(
        (groups[1].0, groups[1].1.version, &groups[1].1.value),
        (g2, 1, &group(2))
    );
    let mut sk = s.load_sender_keys().await.unwrap();
    sk.sort_by_key(|(id, _)| *id);
    assert_eq!(sk.len(), 2);
    assert_eq!((sk[0].0, sk[0].1.version, &sk[0].1.value), ((g1, peer(1)), 2, &keys(4)));
    assert_eq!((sk[1].0, sk[1].1.version, &sk[1].1.value), ((g2, peer(1)), 1, &keys(5)));
}

/// A one-time prekey deletes once; the second deletion is a conflict and rolls back the
/// session written with it.
pub async fn prekey_delete_is_single_use(s: &impl Store) {
    s.commit(Changes {
        prekeys_added: vec![((2, 7), vec![7; 60]), ((3, 8), vec![8; 60]), ((1, 1), vec![1; 60])],
        ..Changes::default()
    })
    .await
    .unwrap();
    let mut pk = s.load_prekeys().await.unwrap();
    pk.sort();
    assert_eq!(pk.len(), 3);
    assert_eq!(pk[1], ((2, 7), vec![7; 60]));
    s.commit(Changes {
        prekeys_removed: vec![(2, 7), (3, 8)],
        ..Changes::default()
    })
    .await
    .unwrap();
    let twice = s
        .commit(Changes {
            prekeys_removed: vec![(2, 7)],
            sessions: vec![(
                peer(4),
                Write {
                    expected: None,
                    value: SessionSet::default(),
                },
            )],
            ..Changes::default()
        })
        .await;
    assert!(matches!(twice, Err(StoreError::Conflict)));
    assert!(s.load_sessions().await.unwrap().is_empty());
    assert_eq!(s.load_prekeys().await.unwrap(), vec![((1, 1), vec![1; 60])]);
}

/// Messages: a second insert of an id is skipped; pages come oldest first.
pub async fn messages_dedupe_order_and_pages(s: &impl Store) {
    let mut inserted = Vec::new();
    for i in 1..=30u8 {
        let conv = if i % 3 == 0 { 2 } else { 1 };
        let c = s
            .commit(Changes {
                messages: vec![message(i, conv, &format!("m{i}"))],
                ..Changes::default()
            })
            .await
            .unwrap();
        assert_eq!(c.inserted.len(), 1);
        inserted.push(c.inserted[0].1);
    }
    assert!(inserted.windows(2).all(|w| w[0] < w[1]));
    let dup = s
        .commit(Changes {
            messages: vec![message(5, 1, "again"), message(31, 1, "m31")],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(dup.inserted.len(), 1);
    assert_eq!(dup.inserted[0].0, MessageId([31; 16]));
    let all = s
        .messages(
            AccountId([1; 32]),
            Page {
                before: None,
                limit: 1000,
            },
        )
        .await
        .unwrap();
    assert_eq!(all.len(), 21);
    assert_eq!(all[0].text, "m1");
    assert_eq!(all[20].text, "m31");
    assert!(all.windows(2).all(|w| w[0].order < w[1].order));
    assert_eq!(all.iter().filter(|m| m.id == MessageId([5; 16])).count(), 1);
    assert_eq!(all.iter().find(|m| m.id == MessageId([5; 16])).unwrap().text, "m5");
    let last = s
        .messages(AccountId([1; 32]), Page { before: None, limit: 5 })
        .await
        .unwrap();
    assert_eq!(
        last.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["m25", "m26", "m28", "m29", "m31"]
    );
    let before = s
        .messages(
            AccountId([1; 32]),
            Page {
                before: Some(last[0].order),
                limit: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        before.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["m22", "m23"]
    );
    let recent = s.recent_message_ids(2).await.unwrap();
    assert_eq!(recent, vec![message(31, 1, "").key(), message(30, 2, "").key()]);
}

fn key(id: u8, conv: u8) -> MessageKey {
    message(id, conv, "").key()
}

/// Status updates change one message.
pub async fn message_status(s: &impl Store) {
    let mut m = message(1, 1, "hello");
    m.status = MessageStatus::Queued;
    s.commit(Changes {
        messages: vec![m, message(2, 1, "other")],
        ..Changes::default()
    })
    .await
    .unwrap();
    let c = s
        .commit(Changes {
            message_updates: vec![
                (key(1, 1), MessageUpdate::Status(MessageStatus::Sent)),
                (key(99, 1), MessageUpdate::Status(MessageStatus::Sent)),
            ],
            ..Changes::default()
        })
        .await
        .unwrap();
    // Only the change that took effect is reported (the unknown key is not).
    assert_eq!(c.advanced, vec![(key(1, 1), MessageStatus::Queued)]);
    let all = s.messages(AccountId([1; 32]), Page::default()).await.unwrap();
    assert_eq!(all[0].status, MessageStatus::Sent);
    assert_eq!(all[0].text, "hello");
    assert_eq!(all[1].status, MessageStatus::Received);
    // Forward only: Delivered stays Delivered; a received message is never "sent".
    let c = s
        .commit(Changes {
            message_updates: vec![(key(1, 1), MessageUpdate::Status(MessageStatus::Delivered))],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(c.advanced, vec![(key(1, 1), MessageStatus::Sent)]);
    // A second receipt, a late "sent", a status for a received message: nothing moves,
    // and nothing is reported.
    let c = s
        .commit(Changes {
            message_updates: vec![
                (key(1, 1), MessageUpdate::Status(MessageStatus::Delivered)),
                (key(1, 1), MessageUpdate::Status(MessageStatus::Sent)),
                (key(2, 1), MessageUpdate::Status(MessageStatus::Sent)),
            ],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert!(c.advanced.is_empty(), "{:?}", c.advanced);
    let all = s.messages(AccountId([1; 32]), Page::default()).await.unwrap();
    assert_eq!(all[0].status, MessageStatus::Delivered);
    assert_eq!(all[1].status, MessageStatus::Received);
}

/// The outbox is first in, first out; adding an id twice keeps one.
pub async fn outbox_fifo(s: &impl Store) {
    let item = |n: u8| OutboxItem::new(MessageId([n; 16]), AccountId([9; 32]), vec![n; 10]);
    for n in [3u8, 1, 2] {
        s.commit(Changes {
            outbox_add: vec![item(n)],
            ..Changes::default()
        })
        .await
        .unwrap();
    }
    s.commit(Changes {
        outbox_add: vec![item(1)],
        ..Changes::default()
    })
    .await
    .unwrap();
    let ids: Vec<u8> = s.outbox(10).await.unwrap().iter().map(|i| i.id.0[0]).collect();
    assert_eq!(ids, [3, 1, 2]);
    assert_eq!(s.outbox(1).await.unwrap(), vec![item(3)]);
    s.commit(Changes {
        outbox_remove: vec![MessageId([3; 16])],
        ..Changes::default()
    })
    .await
    .unwrap();
    let ids: Vec<u8> = s.outbox(10).await.unwrap().iter().map(|i| i.id.0[0]).collect();
    assert_eq!(ids, [1, 2]);
    // An update replaces the item's attempts in place; an unknown id is skipped.
    let mut tried = item(1);
    tried.attempts = 2;
    tried.failing_ms = 1500;
    tried.last_failure_ms = 10_000;
    tried.not_before_ms = 12_000;
    s.commit(Changes {
        outbox_update: vec![tried.clone(), item(7)],
        ..Changes::default()
    })
    .await
    .unwrap();
    assert_eq!(s.outbox(10).await.unwrap(), vec![tried, item(2)]);
}

/// Device lists are replaced; conversations are created, then replaced whole (accepted,
/// the contact's access key).
pub async fn device_lists_and_conversations(s: &impl Store) {
    let (a, lists, _) = signed_lists();
    s.commit(Changes {
        device_lists: vec![(a, lists[0].clone())],
        conversations: vec![ConversationRecord::new(AccountId([2; 32]))],
        ..Changes::default()
    })
    .await
    .unwrap();
    let accepted = ConversationRecord {
        accepted: true,
        access_key: Some([9; 32]),
        blocked: true,
        expire_s: 3600,
        timer_at_ms: 77,
        nickname: Some("Mum ✓".into()),
        profile_name: Some("Ada".into()),
        read_up_to: 12,
        identity_unacked: true,
        ..ConversationRecord::new(AccountId([2; 32]))
    };
    s.commit(Changes {
        device_lists: vec![(a, lists[2].clone())],
        conversations: vec![accepted.clone(), ConversationRecord::new(AccountId([1; 32]))],
        ..Changes::default()
    })
    .await
    .unwrap();
    assert_eq!(s.load_device_lists().await.unwrap(), vec![(a, lists[2].clone())]);
    let mut convs = s.conversations().await.unwrap();
    convs.sort_by_key(|c| c.peer);
    assert_eq!(convs, vec![ConversationRecord::new(AccountId([1; 32])), accepted]);
}

/// One message id in another conversation, or from another sender account, is another
/// message; a status update names conversation, sender account and id.
pub async fn message_keys_are_scoped_to_conversation_and_sender(s: &impl Store) {
    let mut mine = message(1, 1, "mine");
    mine.sender = peer(7);
    mine.status = MessageStatus::Sent;
    let theirs = message(1, 1, "theirs");
    let elsewhere = message(1, 2, "elsewhere");
    let c = s
        .commit(Changes {
            messages: vec![mine.clone(), theirs, elsewhere],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(c.inserted.len(), 3);
    // A receipt for the id in another conversation, or naming another sender, moves nothing.
    s.commit(Changes {
        message_updates: vec![
            (
                MessageKey {
                    conversation: AccountId([2; 32]),
                    ..mine.key()
                },
                MessageUpdate::Status(MessageStatus::Delivered),
            ),
            (
                MessageKey {
                    sender: AccountId([9; 32]),
                    ..mine.key()
                },
                MessageUpdate::Status(MessageStatus::Delivered),
            ),
        ],
        ..Changes::default()
    })
    .await
    .unwrap();
    let all = s.messages(AccountId([1; 32]), Page::default()).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].status, MessageStatus::Sent);
    s.commit(Changes {
        message_updates: vec![(mine.key(), MessageUpdate::Status(MessageStatus::Delivered))],
        ..Changes::default()
    })
    .await
    .unwrap();
    let all = s.messages(AccountId([1; 32]), Page::default()).await.unwrap();
    assert_eq!(all[0].status, MessageStatus::Delivered);
    assert_eq!(all[1].status, MessageStatus::Received);
}

/// Edits, deletes, reactions and timers fold into the stored message; stale ones change
/// nothing; removed messages are gone; every field reads back as written.
pub async fn message_updates_fold_and_removal(s: &impl Store) {
    let conv = AccountId([1; 32]);
    let mut m = message(1, 1, "first");
    m.quote = Some(crate::content::Quote {
        author: AccountId([5; 32]),
        id: MessageId([6; 16]),
        snippet: "quoted".into(),
    });
    m.expire_s = 60;
    let mut timer = message(3, 1, "");
    timer.kind = crate::store::MessageKind::Timer { expire_s: 60 };
    let mut unsupported = message(4, 1, "");
    unsupported.kind = crate::store::MessageKind::Unsupported { kind: 0x42 };
    s.commit(Changes {
        messages: vec![m.clone(), message(2, 1, "second"), timer.clone(), unsupported.clone()],
        ..Changes::default()
    })
    .await
    .unwrap();
    let react = |by: u8, emoji: &str, at_ms| {
        MessageUpdate::React(crate::store::Reaction {
            by: AccountId([by; 32]),
            emoji: emoji.into(),
            at_ms,
        })
    };
    let edit = |text: &str, at_ms| MessageUpdate::Edit {
        text: text.into(),
        at_ms,
    };
    s.commit(Changes {
        message_updates: vec![
            (key(1, 1), edit("edited", 10)),
            (key(1, 1), edit("older edit", 5)),
            (key(1, 1), react(7, "👍", 3)),
            (key(1, 1), react(8, "❤", 4)),
            (key(1, 1), react(7, "", 6)),
            (key(1, 1), react(7, "😮", 5)),
            (key(1, 1), MessageUpdate::ExpireAt(1_000)),
            (key(1, 1), MessageUpdate::ExpireAt(2_000)),
            (key(2, 1), MessageUpdate::Delete),
            (key(2, 1), edit("after delete", 20)),
            (key(9, 1), MessageUpdate::Delete),
        ],
        ..Changes::default()
    })
    .await
    .unwrap();
    // The timer: due at 1000, not before.
    assert!(s.expired_messages(999, 10).await.unwrap().is_empty());
    assert_eq!(s.expired_messages(1_000, 10).await.unwrap(), vec![key(1, 1)]);
    assert_eq!(s.message(key(2, 1)).await.unwrap().map(|m| m.deleted), Some(true));
    assert_eq!(s.message(key(9, 1)).await.unwrap(), None);
    let all = s.messages(conv, Page::default()).await.unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[0].text, "edited");
    assert_eq!(all[0].edited_at_ms, 10);
    assert_eq!(all[0].quote, m.quote);
    assert_eq!(all[0].expire_s, 60);
    assert_eq!(all[0].expires_at_ms, 1_000);
    let mut reactions: Vec<(u8, &str, u64)> = all[0]
        .reactions
        .iter()
        .map(|r| (r.by.0[0], r.emoji.as_str(), r.at_ms))
        .collect();
    reactions.sort();
    assert_eq!(reactions, vec![(7, "", 6), (8, "❤", 4)]);
    assert!(all[1].deleted);
    assert_eq!(all[1].text, "");
    assert_eq!(all[2].kind, timer.kind);
    assert_eq!(all[3].kind, unsupported.kind);
    s.commit(Changes {
        messages_removed: vec![key(1, 1), key(9, 1)],
        ..Changes::default()
    })
    .await
    .unwrap();
    let all = s.messages(conv, Page::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![MessageId([2; 16]), MessageId([3; 16]), MessageId([4; 16])]
    );
    // A removed message's key may be stored again (it is gone, not remembered).
    let again = s
        .commit(Changes {
            messages: vec![message(1, 1, "back")],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(again.inserted.len(), 1);
}

/// Search finds texts whose words start with every query word, newest first, across
/// conversations; an edit re-indexes, a delete or a removal drops the message; the
/// cursor lists what was stored after an `order`.
pub async fn search_and_cursor(s: &impl Store) {
    let texts = [
        (1, 1, "Lunch at the Café tomorrow?"),
        (2, 2, "café opens at noon"),
        (3, 1, "Tomorrow it rains"),
        (4, 2, "see you at lunch, then"),
    ];
    s.commit(Changes {
        messages: texts.iter().map(|(id, conv, t)| message(*id, *conv, t)).collect(),
        ..Changes::default()
    })
    .await
    .unwrap();
    let ids = |v: Vec<StoredMessage>| v.into_iter().map(|m| m.id.0[0]).collect::<Vec<u8>>();
    assert_eq!(ids(s.search("café", 10).await.unwrap()), vec![2, 1]);
    assert_eq!(ids(s.search("CAF", 10).await.unwrap()), vec![2, 1]);
    assert_eq!(ids(s.search("lunch tomor", 10).await.unwrap()), vec![1]);
    assert_eq!(ids(s.search("at", 1).await.unwrap()), vec![4]);
    assert_eq!(ids(s.search("a", 10).await.unwrap()), vec![4, 2, 1]);
    assert!(s.search("dinner", 10).await.unwrap().is_empty());
    assert!(s.search("", 10).await.unwrap().is_empty());
    s.commit(Changes {
        message_updates: vec![
            (
                key(1, 1),
                MessageUpdate::Edit {
                    text: "Dinner at the Café tomorrow?".into(),
                    at_ms: 5,
                },
            ),
            (key(2, 2), MessageUpdate::Delete),
        ],
        messages_removed: vec![key(3, 1)],
        ..Changes::default()
    })
    .await
    .unwrap();
    assert_eq!(ids(s.search("dinner caf", 10).await.unwrap()), vec![1]);
    assert_eq!(ids(s.search("lunch", 10).await.unwrap()), vec![4]);
    assert!(s.search("noon", 10).await.unwrap().is_empty());
    assert!(s.search("rains", 10).await.unwrap().is_empty());
    let all = s.messages_after(0, 10).await.unwrap();
    assert_eq!(ids(all.clone()), vec![1, 2, 4]);
    assert_eq!(ids(s.messages_after(all[1].order, 10).await.unwrap()), vec![4]);
    assert_eq!(ids(s.messages_after(0, 1).await.unwrap()), vec![1]);
}

/// Signed lists of one account at versions 1, 2 and 3, and another list at version 2.
fn signed_lists() -> (AccountId, Vec<Vec<u8>>, Vec<u8>) {
    let mut rng = ChaCha20Rng::from_seed([7; 32]);
    let ak = AccountKey::generate(&mut rng);
    let d1 = Device::generate(ak.account_id(), DeviceId(1), &mut rng).entry();
    let d2 = Device::generate(ak.account_id(), DeviceId(2), &mut rng).entry();
    let list = |v: u64, devices: Vec<_>| ak.sign_device_list(v, v, devices).unwrap().signed().as_bytes().to_vec();
    let lists = vec![list(1, vec![d1]), list(2, vec![d1, d2]), list(3, vec![d1])];
    let other = list(2, vec![d2]);
    (ak.account_id(), lists, other)
}

/// A pin only moves forward: a lower version, or another list at the same version, is a
/// conflict (another process pinned a newer list); the same list again is fine.
pub async fn device_list_pins_only_move_forward(s: &impl Store) {
    let (a, lists, other) = signed_lists();
    let pin = |l: &Vec<u8>| Changes {
        device_lists: vec![(a, l.clone())],
        ..Changes::default()
    };
    s.commit(pin(&lists[0])).await.unwrap();
    s.commit(pin(&lists[1])).await.unwrap();
    s.commit(pin(&lists[1])).await.unwrap();
    assert!(matches!(s.commit(pin(&lists[0])).await, Err(StoreError::Conflict)));
    assert!(matches!(s.commit(pin(&other)).await, Err(StoreError::Conflict)));
    assert_eq!(s.load_device_lists().await.unwrap(), vec![(a, lists[1].clone())]);
    s.commit(pin(&lists[2])).await.unwrap();
    assert_eq!(s.load_device_lists().await.unwrap(), vec![(a, lists[2].clone())]);
}

/// A commit naming the pin it relied on fails when the stored pin is another version,
/// and writes nothing.
pub async fn commits_relying_on_a_moved_pin_conflict(s: &impl Store) {
    let (a, lists, _) = signed_lists();
    s.commit(Changes {
        device_lists: vec![(a, lists[1].clone())],
        ..Changes::default()
    })
    .await
    .unwrap();
    let relying = |version: u64, id: u8| Changes {
        messages: vec![message(id, 1, "m")],
        pins: vec![(a, version)],
        ..Changes::default()
    };
    assert!(matches!(s.commit(relying(1, 1)).await, Err(StoreError::Conflict)));
    assert!(matches!(
        s.commit(Changes {
            pins: vec![(AccountId([5; 32]), 1)],
            ..relying(2, 2)
        })
        .await,
        Err(StoreError::Conflict)
    ));
    assert!(
        s.messages(AccountId([1; 32]), Page::default())
            .await
            .unwrap()
            .is_empty()
    );
    let c = s.commit(relying(2, 3)).await.unwrap();
    assert_eq!(c.inserted.len(), 1);
    // "No pin" is version 0.
    s.commit(Changes {
        pins: vec![(AccountId([5; 32]), 0)],
        ..relying(2, 4)
    })
    .await
    .unwrap();
}

/// Digests of processed envelopes come back newest first, once each, at most
/// [`MAX_PROCESSED_ENVELOPES`].
pub async fn processed_envelopes_are_kept_bounded(s: &impl Store) {
    let digest = |n: usize| {
        let mut d = [0u8; 32];
        d[..8].copy_from_slice(&(n as u64).to_le_bytes());
        d
    };
    s.commit(Changes {
        envelopes: vec![digest(1), digest(2)],
        ..Changes::default()
    })
    .await
    .unwrap();
    s.commit(Changes {
        envelopes: vec![digest(2), digest(3)],
        ..Changes::default()
    })
    .await
    .unwrap();
    assert_eq!(
        s.processed_envelopes(10).await.unwrap(),
        vec![digest(3), digest(2), digest(1)]
    );
    let many: Vec<_> = (4..MAX_PROCESSED_ENVELOPES + 4).map(digest).collect();
    for chunk in many.chunks(5_000) {
        s.commit(Changes {
            envelopes: chunk.to_vec(),
            ..Changes::default()
        })
        .await
        .unwrap();
    }
    let kept = s.processed_envelopes(u32::MAX).await.unwrap();
    assert_eq!(kept.len(), MAX_PROCESSED_ENVELOPES);
    assert_eq!(kept[0], digest(MAX_PROCESSED_ENVELOPES + 3));
    assert!(!kept.contains(&digest(3)));
}

/// Pending envelopes come back oldest first, once per digest, and go by digest.
pub async fn pending_inbound_is_kept_in_order(s: &impl Store) {
    let p = |n: u8| PendingInbound {
        digest: [n; 32],
        sender: AccountId([n % 2; 32]),
        seq: u64::from(n),
        first_seen_ms: 1000 + u64::from(n),
        envelope: vec![n; 300],
    };
    s.commit(Changes {
        pending_add: vec![p(3), p(1)],
        ..Changes::default()
    })
    .await
    .unwrap();
    s.commit(Changes {
        pending_add: vec![p(3), p(2)],
        ..Changes::default()
    })
    .await
    .unwrap();
    assert_eq!(s.pending_inbound().await.unwrap(), vec![p(3), p(1), p(2)]);
    s.commit(Changes {
        pending_remove: vec![[1; 32], [9; 32]],
        ..Changes::default()
    })
    .await
    .unwrap();
    assert_eq!(s.pending_inbound().await.unwrap(), vec![p(3), p(2)]);
}

/// The kept upload tokens: none at first, then the last written, unchanged by commits
/// that do not name them.
pub async fn blob_tokens_are_replaced(s: &impl Store) {
    assert!(s.blob_tokens().await.unwrap().is_empty());
    for tokens in [vec![1u8; 200], vec![2u8; 70]] {
        s.commit(Changes {
            blob_tokens: Some(tokens.clone()),
            ..Changes::default()
        })
        .await
        .unwrap();
        assert_eq!(s.blob_tokens().await.unwrap(), tokens);
    }
    s.commit(Changes {
        pending_add: vec![PendingInbound {
            digest: [5; 32],
            sender: AccountId([5; 32]),
            seq: 5,
            first_seen_ms: 5,
            envelope: vec![5; 10],
        }],
        ..Changes::default()
    })
    .await
    .unwrap();
    assert_eq!(s.blob_tokens().await.unwrap(), vec![2u8; 70]);
}
