//! A relay that tampers, played by editing the relay's own database between deliveries:
//! flipped bytes, a replayed envelope, an envelope moved to another mailbox, and a device
//! added to Bob's list without Bob's account key. Each is detected with a typed event; no
//! plaintext from it is accepted and nothing crashes.

use sotto_crypto::{AccountId, AccountKey, Device as Keys, DeviceId, DeviceListError};
use sotto_sdk::{Event, UndecryptableCause};
use sotto_tests::{Device, TestRelay};
use sqlx::{Row, SqlitePool};

async fn db(relay: &TestRelay) -> SqlitePool {
    SqlitePool::connect(&relay.db_url).await.unwrap()
}

/// The envelopes stored for one device, by seq.
async fn mailbox(pool: &SqlitePool, who: (AccountId, DeviceId)) -> Vec<(i64, Vec<u8>)> {
    sqlx::query("SELECT seq, ciphertext FROM envelopes WHERE account_id = ? AND device_id = ? ORDER BY seq")
        .bind(&who.0.0[..])
        .bind(i64::from(who.1.0))
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Appends an envelope to a device's mailbox as the relay would (next seq).
async fn inject(pool: &SqlitePool, who: (AccountId, DeviceId), envelope: &[u8]) {
    let account = &who.0.0[..];
    let device = i64::from(who.1.0);
    let seq: i64 = sqlx::query("SELECT next_seq FROM devices WHERE account_id = ? AND device_id = ?")
        .bind(account)
        .bind(device)
        .fetch_one(pool)
        .await
        .unwrap()
        .get(0);
    sqlx::query("INSERT INTO envelopes (account_id, device_id, seq, received_at, expires_at, ciphertext) VALUES (?, ?, ?, 0, 9999999999, ?)")
        .bind(account)
        .bind(device)
        .bind(seq)
        .bind(envelope)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("UPDATE devices SET next_seq = next_seq + 1, depth = depth + 1 WHERE account_id = ? AND device_id = ?")
        .bind(account)
        .bind(device)
        .execute(pool)
        .await
        .unwrap();
}

fn undecryptable(d: &Device) -> Vec<UndecryptableCause> {
    d.stash
        .iter()
        .filter_map(|e| match e {
            Event::Undecryptable { cause, .. } => Some(cause.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_replayed_and_moved_envelopes_are_refused() {
    let relay = TestRelay::start().await;
    let pool = db(&relay).await;
    let mut alice = Device::create(&relay, 31).await;
    let bob = Device::create(&relay, 32).await;
    let carol = Device::create(&relay, 33).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    let bob = bob.restart_offline().await;
    let carol = carol.restart_offline().await;

    alice.client.send_text(&bob.id(), "one").await.unwrap();
    alice.client.send_text(&bob.id(), "two").await.unwrap();
    alice.sent(2).await;
    let stored = mailbox(&pool, (bob.id(), bob.device_id())).await;
    assert_eq!(stored.len(), 2);
    // Flip one byte of the first envelope in place.
    let mut flipped = stored[0].1.clone();
    flipped[200] ^= 0x01;
    sqlx::query("UPDATE envelopes SET ciphertext = ? WHERE account_id = ? AND seq = ?")
        .bind(&flipped)
        .bind(&bob.id().0[..])
        .bind(stored[0].0)
        .execute(&pool)
        .await
        .unwrap();
    // Copy the second into Carol's mailbox.
    inject(&pool, (carol.id(), carol.device_id()), &stored[1].1).await;

    let mut bob = bob.online().await;
    let got = bob.receive(1).await;
    assert_eq!(got[0].text, "two");
    bob.wait_for(|e| matches!(e, Event::CaughtUp)).await;
    assert_eq!(
        undecryptable(&bob),
        [UndecryptableCause::Envelope(sotto_crypto::OpenError::InvalidMac)]
    );

    let mut carol = carol.online().await;
    carol.wait_for(|e| matches!(e, Event::CaughtUp)).await;
    assert_eq!(
        undecryptable(&carol),
        [UndecryptableCause::Envelope(sotto_crypto::OpenError::InvalidMac)]
    );
    assert!(!carol.stash.iter().any(|e| matches!(e, Event::MessageReceived(_))));

    // Replay: Bob processed and acknowledged "two"; the relay hands it out again, under
    // a new seq. Bob knows the envelope's bytes: skipped like a second delivery after a
    // lost ack, silently.
    let bob = bob.restart_offline().await;
    assert!(mailbox(&pool, (bob.id(), bob.device_id())).await.is_empty());
    inject(&pool, (bob.id(), bob.device_id()), &stored[1].1).await;
    let mut bob = bob.online().await;
    bob.wait_for(|e| matches!(e, Event::CaughtUp)).await;
    assert!(undecryptable(&bob).is_empty());
    assert!(!bob.stash.iter().any(|e| matches!(e, Event::MessageReceived(_))));
    assert_eq!(bob.history(&alice.id()).await.len(), 1);

    // The session still works.
    alice.client.send_text(&bob.id(), "three").await.unwrap();
    assert_eq!(bob.receive(1).await[0].text, "three");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_added_without_the_list_key_is_refused() {
    let relay = TestRelay::start().await;
    let pool = db(&relay).await;
    let mut alice = Device::create(&relay, 34).await;
    let bob = Device::create(&relay, 35).await;
    let carol = Device::create(&relay, 36).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();

    // The relay lists a device of its own under Bob's account: a version 2 list with
    // Bob's account key in it, and a list key certified and signed by another key.
    let mut rng = <rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::seed_from_u64(7);
    let attacker = AccountKey::generate(&mut rng);
    let fake = Keys::generate(bob.id(), DeviceId(2), &mut rng);
    let bob_list = sotto_sdk::store::DeviceListStore::load_device_lists(bob.client.store())
        .await
        .unwrap()
        .into_iter()
        .find(|(a, _)| *a == bob.id())
        .unwrap()
        .1;
    let real = sotto_crypto::SignedDeviceList::from_bytes(&bob_list)
        .unwrap()
        .verify(&bob.id())
        .unwrap();
    let forged = attacker
        .sign_device_list(2, 0, vec![real.devices()[0], fake.entry()])
        .unwrap();
    let mut bytes = forged.signed().as_bytes().to_vec();
    bytes[1..33].copy_from_slice(real.account_key().as_bytes());
    sqlx::query("UPDATE accounts SET version = 2, device_list = ? WHERE account_id = ?")
        .bind(&bytes)
        .bind(&bob.id().0[..])
        .execute(&pool)
        .await
        .unwrap();
    let id = fake.identity();
    sqlx::query("INSERT INTO devices (account_id, device_id, signing_key, identity_key) VALUES (?, 2, ?, ?)")
        .bind(&bob.id().0[..])
        .bind(&id.signing_key.as_bytes()[..])
        .bind(&id.identity_key.as_bytes()[..])
        .execute(&pool)
        .await
        .unwrap();
    // With fresh prekeys (key ids are creation hours), so the device-set rule requires it
    // in every send (a device the relay cannot make a bundle for may be left out,
    // docs/protocol.md §13.7).
    let hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 3600;
    sqlx::query(
        "INSERT INTO prekeys (account_id, device_id, kind, key_id, record) VALUES (?, 2, 1, ?, x'00'), (?, 2, 4, ?, x'00')",
    )
    .bind(&bob.id().0[..])
    .bind(i64::try_from(hour).unwrap())
    .bind(&bob.id().0[..])
    .bind(i64::try_from(0x8000_0000 | hour).unwrap())
    .execute(&pool)
    .await
    .unwrap();

    // Alice's send meets the relay's device-set answer with the forged list: refused,
    // the message is given up, nothing is encrypted to the added device.
    let m = alice.client.send_text(&bob.id(), "hello").await.unwrap();
    let e = alice.wait_for(|e| matches!(e, Event::DeviceListRejected { .. })).await;
    assert!(matches!(
        e,
        Event::DeviceListRejected { account, error: DeviceListError::BadCertificate } if account == bob.id()
    ));
    let failed = alice.wait_for(|e| matches!(e, Event::SendFailed { .. })).await;
    assert!(matches!(failed, Event::SendFailed { id, .. } if id == m.id));
    assert_eq!(alice.client.devices_of(&bob.id()).await, vec![DeviceId(1)]);
    let none: i64 = sqlx::query("SELECT COUNT(*) FROM envelopes WHERE account_id = ? AND device_id = 2")
        .bind(&bob.id().0[..])
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(none, 0);
    // A new contact of Bob fetching the list refuses it as well.
    let err = carol.client.add_contact(&bob.id().to_string()).await.unwrap_err();
    assert!(
        matches!(err, sotto_sdk::ClientError::DeviceList(DeviceListError::BadCertificate)),
        "{err}"
    );
}
