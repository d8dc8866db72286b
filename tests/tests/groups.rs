//! Groups over a real relay (docs/protocol.md §7A, §14): one upload per message, every
//! member device gets it once; a removed member reads nothing sent after; a member added
//! later reads nothing sent before; a forged sender-key message is refused.

use sotto_crypto::AccountId;
use sotto_sdk::{Event, GroupId, MessageStatus, Page, StoredMessage};
use sotto_tests::{Device, TestRelay};

async fn group_history(d: &Device, g: &GroupId) -> Vec<StoredMessage> {
    d.client
        .group_messages(
            g,
            Page {
                before: None,
                limit: 10_000,
            },
        )
        .await
        .unwrap()
}

/// Waits until `d` has joined group `g` (its welcome arrived).
async fn joined(d: &mut Device, g: GroupId) {
    d.wait_for(|e| matches!(e, Event::GroupChanged { group } if *group == g))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_talks_removes_and_adds_on_sqlite() {
    talk_remove_add(TestRelay::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_talks_removes_and_adds_on_postgres() {
    if let Some(relay) = TestRelay::start_postgres().await {
        talk_remove_add(relay).await;
    }
}

async fn talk_remove_add(relay: TestRelay) {
    let mut alice = Device::create(&relay, 301).await;
    let mut bob = Device::create(&relay, 302).await;
    let mut carol = Device::create(&relay, 303).await;
    let mut dave = Device::create(&relay, 304).await;
    for d in [&bob, &carol, &dave] {
        alice.client.add_contact(&d.client.contact_link()).await.unwrap();
    }
    let g = alice
        .client
        .create_group("team", &[bob.id(), carol.id()])
        .await
        .unwrap();
    joined(&mut bob, g).await;
    joined(&mut carol, g).await;
    let info = bob.client.groups().await;
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].title, "team");
    assert_eq!(info[0].members.len(), 3);

    // Everyone writes; everyone else gets each message once, from its sender.
    for (i, who) in [0usize, 1, 2].iter().enumerate() {
        let text = format!("hello {i}");
        let sender = [&alice, &bob, &carol][*who];
        let (sid, sdev) = (sender.id(), sender.device_id());
        sender.client.send_group_text(&g, &text).await.unwrap();
        for (j, d) in [&mut alice, &mut bob, &mut carol].into_iter().enumerate() {
            if j == *who {
                continue;
            }
            let got = d.receive(1).await;
            assert_eq!(got[0].text, text);
            assert_eq!(got[0].sender, (sid, sdev));
            assert_eq!(got[0].conversation, g.conversation());
            assert_eq!(got[0].status, MessageStatus::Received);
        }
    }
    for d in [&alice, &bob, &carol] {
        assert_eq!(group_history(d, &g).await.len(), 3);
    }

    // Carol is removed: she learns it, and nothing sent afterwards reaches her.
    alice.client.remove_group_member(&g, &carol.id()).await.unwrap();
    carol
        .wait_for(|e| matches!(e, Event::GroupChanged { group } if *group == g))
        .await;
    bob.wait_for(|e| matches!(e, Event::GroupChanged { group } if *group == g))
        .await;
    assert!(!carol.client.groups().await[0].active);
    bob.client.send_group_text(&g, "after carol").await.unwrap();
    assert_eq!(alice.receive(1).await[0].text, "after carol");

    // Dave is added later: he reads what follows, not what came before.
    alice.client.add_group_members(&g, &[dave.id()]).await.unwrap();
    joined(&mut dave, g).await;
    bob.wait_for(|e| matches!(e, Event::GroupChanged { group } if *group == g))
        .await;
    bob.client.send_group_text(&g, "welcome dave").await.unwrap();
    assert_eq!(dave.receive(1).await[0].text, "welcome dave");
    assert_eq!(alice.receive(1).await[0].text, "welcome dave");
    let dave_history: Vec<String> = group_history(&dave, &g).await.into_iter().map(|m| m.text).collect();
    assert_eq!(dave_history, vec!["welcome dave".to_owned()]);

    // Carol never got anything after her removal.
    let carol_history: Vec<String> = group_history(&carol, &g).await.into_iter().map(|m| m.text).collect();
    assert_eq!(carol_history.len(), 3, "{carol_history:?}");
    assert!(!carol_history.iter().any(|t| t == "after carol" || t == "welcome dave"));
}

/// Every value of every table of the relay's SQLite database, as bytes.
async fn relay_values(db_url: &str) -> Vec<(String, String, Vec<u8>)> {
    use sqlx::{Column, Connection, Row, TypeInfo, ValueRef};
    let mut conn = sqlx::SqliteConnection::connect(db_url).await.unwrap();
    let names: Vec<(String,)> = sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'table'")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let mut out = Vec::new();
    for (name,) in names {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT * FROM \"{name}\"")))
            .fetch_all(&mut conn)
            .await
            .unwrap();
        for row in &rows {
            for i in 0..row.len() {
                let raw = row.try_get_raw(i).unwrap();
                if raw.is_null() {
                    continue;
                }
                let bytes = match raw.type_info().name() {
                    "BLOB" => row.get::<Vec<u8>, _>(i),
                    "TEXT" => row.get::<String, _>(i).into_bytes(),
                    _ => continue,
                };
                out.push((name.clone(), row.columns()[i].name().to_owned(), bytes));
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every row of every table of the relay's PostgreSQL database as JSON text (bytea as
/// `\\x` and lowercase hex), with the `bodies` table's bodies as bytes.
async fn relay_rows_postgres(db_url: &str) -> (Vec<String>, Vec<Vec<u8>>) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(db_url).await.unwrap();
    let names: Vec<(String,)> = sqlx::query_as(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut rows = Vec::new();
    for (name,) in names {
        let r: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT row_to_json(t)::text FROM \"{name}\" t"
        )))
        .fetch_all(&mut conn)
        .await
        .unwrap();
        rows.extend(r.into_iter().map(|(j,)| format!("{name}: {j}")));
    }
    let bodies: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT body FROM bodies")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    (rows, bodies.into_iter().map(|(b,)| b).collect())
}

/// A group conversation with one member offline, so that its mailbox keeps what was sent.
async fn group_with_an_offline_member(relay: &TestRelay, seed: u64, title: &str) -> (GroupId, AccountId) {
    let mut alice = Device::create(relay, seed).await;
    let mut bob = Device::create(relay, seed + 1).await;
    let mut carol = Device::create(relay, seed + 2).await;
    for d in [&bob, &carol] {
        alice.client.add_contact(&d.client.contact_link()).await.unwrap();
    }
    let g = alice.client.create_group(title, &[bob.id(), carol.id()]).await.unwrap();
    joined(&mut bob, g).await;
    joined(&mut carol, g).await;
    carol.client.shutdown().await;
    for (i, d) in [&alice, &bob, &alice].into_iter().enumerate() {
        d.client.send_group_text(&g, &format!("message {i}")).await.unwrap();
    }
    assert_eq!(bob.receive(2).await.len(), 2);
    assert_eq!(alice.receive(1).await.len(), 1);
    alice.client.shutdown().await;
    bob.client.shutdown().await;
    (g, alice.id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_the_relay_stores_one_body_per_group_message_and_learns_no_group() {
    let Some(relay) = TestRelay::start_postgres().await else {
        return;
    };
    let title = "a title the relay must not see";
    let (g, alice) = group_with_an_offline_member(&relay, 331, title).await;
    let (rows, bodies) = relay_rows_postgres(&relay.db_url).await;
    assert_eq!(bodies.len(), 3, "one stored body per group message");
    assert!(bodies.iter().all(|b| sotto_crypto::is_group_envelope(b)));
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let alice_record = hex(&[&alice.0[..], &[1u8][..]].concat());
    for row in &rows {
        assert!(!row.contains(&hex(&g.0)), "group id in {row}");
        assert!(
            !row.contains(title) && !row.contains(&hex(title.as_bytes())),
            "title in {row}"
        );
        assert!(!row.contains(&alice_record), "a member record in {row}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_stores_one_body_per_group_message_and_learns_no_group() {
    let relay = TestRelay::start().await;
    let title = "a title the relay must not see";
    let (g, alice) = group_with_an_offline_member(&relay, 311, title).await;
    let values = relay_values(&relay.db_url).await;
    // One body per group message, each a group envelope; the mailbox rows that refer to
    // a body hold no bytes of their own.
    let bodies: Vec<&Vec<u8>> = values
        .iter()
        .filter(|(t, c, _)| t == "bodies" && c == "body")
        .map(|(_, _, v)| v)
        .collect();
    assert_eq!(bodies.len(), 3, "one stored body per group message");
    assert!(bodies.iter().all(|b| sotto_crypto::is_group_envelope(b)));
    // Nothing names the group, its title or its member list.
    let alice_record = [&alice.0[..], &[1u8][..]].concat();
    for (table, column, v) in &values {
        assert!(!contains(v, &g.0), "group id in {table}.{column}");
        assert!(!contains(v, title.as_bytes()), "title in {table}.{column}");
        assert!(!contains(v, &alice_record), "a member record in {table}.{column}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_new_device_joins_its_groups() {
    let relay = TestRelay::start().await;
    let mut alice = Device::create(&relay, 321).await;
    let mut bob = Device::create(&relay, 322).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    let g = alice.client.create_group("family", &[bob.id()]).await.unwrap();
    joined(&mut bob, g).await;
    bob.client.send_group_text(&g, "before").await.unwrap();
    assert_eq!(alice.receive(1).await[0].text, "before");
    // Alice links a second device: her first device welcomes it into the group.
    // (The welcome waits until the new device's prekeys are on the relay: the first
    // attempts find no reachable device and back off.)
    let mut alice2 = Device::join(&relay, &mut alice, 323).await;
    // Up to the send backoff (1, 2, 4, … s) after the new device's prekeys arrive: longer
    // than the usual failsafe on a loaded machine.
    tokio::time::timeout(std::time::Duration::from_secs(300), async {
        loop {
            match alice2.events.next().await.expect("event stream ended") {
                Event::GroupChanged { group } if group == g => return,
                other => alice2.stash.push_back(other),
            }
        }
    })
    .await
    .expect("the new device was not welcomed");
    assert_eq!(alice2.client.groups().await[0].title, "family");
    // Bob's next message reaches it (his chain goes to it first), and so do Alice's.
    bob.client
        .send_group_text(&g, "to both of alice's devices")
        .await
        .unwrap();
    assert_eq!(alice2.receive(1).await[0].text, "to both of alice's devices");
    assert_eq!(alice.receive(1).await[0].text, "to both of alice's devices");
    alice2.client.send_group_text(&g, "from the new device").await.unwrap();
    assert_eq!(bob.receive(1).await[0].text, "from the new device");
    assert_eq!(alice.receive(1).await[0].text, "from the new device");
    // It reads nothing from before it joined.
    let history = alice2
        .client
        .group_messages(
            &g,
            Page {
                before: None,
                limit: 100,
            },
        )
        .await
        .unwrap();
    assert!(!history.iter().any(|m| m.text == "before"));
}
