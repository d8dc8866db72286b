//! Linking a device (docs/protocol.md §12A), the account key's place on devices and
//! removal: the existing device's user confirms the new device by its fingerprint; a
//! code works once; nothing that reaches the new device while it joins is lost; a
//! device linked without the account key, once removed, cannot come back.

use std::time::Duration;

use sotto_crypto::{AccountKey, DeviceId, DeviceListError, SignedDeviceList};
use sotto_proto::ErrorCode;
use sotto_relay::storage::Storage as _;
use sotto_sdk::link::decode_recovery_key;
use sotto_sdk::transport::{Relay, TransportError};
use sotto_sdk::{ClientError, Event};
use sotto_tests::{Device, FAILSAFE, TestRelay, test_ca_pem};

fn http(relay: &TestRelay) -> Relay {
    Relay::with_roots(&relay.url(), &[test_ca_pem()]).unwrap()
}

/// Awaits a condition on the relay (the test has no event for it).
async fn until<F: std::future::Future<Output = bool>>(mut f: impl FnMut() -> F) {
    tokio::time::timeout(FAILSAFE, async {
        while !f().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("condition not met in time");
}

/// Finding 12: a device linked without the list key works for messaging; it cannot
/// change the device list; once removed it cannot publish a list that adds it back
/// (locally it has no key; a list it forges is refused by the relay and by contacts),
/// and the remaining devices stop encrypting to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_device_without_the_list_key_cannot_come_back() {
    let relay = TestRelay::start().await;
    let mut a1 = Device::create(&relay, 101).await;
    let mut bob = Device::create(&relay, 102).await;
    a1.client.add_contact(&bob.client.contact_link()).await.unwrap();
    bob.client.add_contact(&a1.client.contact_link()).await.unwrap();
    let mut a2 = Device::join_with(&relay, &mut a1, 103, false).await;
    assert!(a1.client.has_account_key().await && a1.client.can_manage_devices().await);
    assert!(!a2.client.has_account_key().await && !a2.client.can_manage_devices().await);
    // It works for messaging: it got the contacts and receives.
    assert_eq!(a2.client.conversations().await.unwrap(), vec![bob.id()]);
    bob.client.send_text(&a1.id(), "to both").await.unwrap();
    assert_eq!(a1.receive(1).await[0].text, "to both");
    assert_eq!(a2.receive(1).await[0].text, "to both");
    bob.sent(1).await;
    // It cannot change the account: a typed error, with a stable code.
    let e = a2.client.remove_device(DeviceId(1)).await.unwrap_err();
    assert!(matches!(e, ClientError::NoListKey), "{e}");
    assert_eq!(e.code(), "no_list_key");
    assert!(matches!(a2.client.link_new_device().await, Err(ClientError::NoListKey)));
    assert!(matches!(
        a2.client.export_recovery_key().await,
        Err(ClientError::NoAccountKey)
    ));

    // Removed.
    let a2_id = a2.device_id();
    a1.client.remove_device(a2_id).await.unwrap();
    a2.wait_for(|e| matches!(e, Event::DeviceRemoved)).await;

    // Locally it has no key to sign with.
    assert!(matches!(
        a2.client.remove_device(DeviceId(1)).await,
        Err(ClientError::NoListKey)
    ));
    // What it can forge: the current devices plus itself, at the next version, signed by
    // a key of its own: either under that key (another account), or with the account's
    // public key copied in (a certificate that does not verify). The relay refuses both.
    let a = a1.id();
    let current = SignedDeviceList::from_bytes(&http(&relay).get_device_list(&a).await.unwrap())
        .unwrap()
        .verify(&a)
        .unwrap();
    let mut rng = <rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::seed_from_u64(104);
    let forger = AccountKey::generate(&mut rng);
    let mut devices = current.devices().to_vec();
    devices.push(a2.client.entry());
    let forged = forger
        .sign_device_list(current.version() + 1, 0, devices.clone())
        .unwrap();
    let e = http(&relay)
        .put_device_list(&a, forged.signed().as_bytes())
        .await
        .unwrap_err();
    assert!(
        matches!(e, TransportError::Relay { code, .. } if code == ErrorCode::ACCOUNT_MISMATCH),
        "{e}"
    );
    let mut bytes = forged.signed().as_bytes().to_vec();
    bytes[1..33].copy_from_slice(current.account_key().as_bytes());
    let e = http(&relay).put_device_list(&a, &bytes).await.unwrap_err();
    assert!(
        matches!(e, TransportError::Relay { code, .. } if code == ErrorCode::BAD_DEVICE_LIST),
        "{e}"
    );
    // A contact refuses both as well (what it checks on every list it pins).
    assert!(matches!(
        SignedDeviceList::from_bytes(forged.signed().as_bytes())
            .unwrap()
            .verify(&a),
        Err(DeviceListError::WrongAccount)
    ));
    assert!(matches!(
        SignedDeviceList::from_bytes(&bytes).unwrap().verify(&a),
        Err(DeviceListError::BadCertificate)
    ));
    // The relay still lists the account without it.
    let listed = SignedDeviceList::from_bytes(&http(&relay).get_device_list(&a).await.unwrap())
        .unwrap()
        .verify(&a)
        .unwrap();
    assert!(listed.device(a2_id).is_none());

    // The remaining devices stop encrypting to it: Bob's next message and a1's
    // transcript of its answer reach a1 and Bob only.
    let before = a2.history(&bob.id()).await.len();
    // Bob saw Alice's account add a device earlier: he acknowledges it before writing.
    bob.client.acknowledge_identity(&a1.id()).await.unwrap();
    bob.client.send_text(&a1.id(), "after removal").await.unwrap();
    assert_eq!(a1.receive(1).await[0].text, "after removal");
    bob.sent(1).await;
    assert!(!bob.client.devices_of(&a).await.contains(&a2_id));
    a1.client.send_text(&bob.id(), "answer").await.unwrap();
    assert_eq!(bob.receive(1).await[0].text, "answer");
    a1.sent(1).await;
    let pool = sqlx::SqlitePool::connect(&relay.db_url).await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM envelopes WHERE account_id = ? AND device_id = ?")
        .bind(&a.0[..])
        .bind(i64::from(a2_id.0))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    assert_eq!(a2.history(&bob.id()).await.len(), before);
}

/// Finding 12, the rest: a removed device that held the list key cannot come back. The
/// first device hands out the recovery key once (then holds no account key); removing a
/// device that holds the list key needs it, and publishes a list under the next
/// epoch's list key; a list the removed device signs with the key it kept is refused by
/// the relay (`LIST_KEY_REVOKED`) and by contacts (`StaleListKey`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_device_that_held_the_list_key_cannot_come_back() {
    let relay = TestRelay::start().await;
    let mut a1 = Device::create(&relay, 141).await;
    let mut bob = Device::create(&relay, 142).await;
    a1.client.add_contact(&bob.client.contact_link()).await.unwrap();
    bob.client.add_contact(&a1.client.contact_link()).await.unwrap();
    let mut a2 = Device::join_with(&relay, &mut a1, 143, true).await;
    assert!(a2.client.can_manage_devices().await && !a2.client.has_account_key().await);
    // The recovery key goes out once; then no device holds the account key.
    let rk = a1.client.export_recovery_key().await.unwrap();
    assert!(!a1.client.has_account_key().await);
    assert!(matches!(
        a1.client.export_recovery_key().await,
        Err(ClientError::NoAccountKey)
    ));
    // Neither holder can drop the other with the list key alone.
    let a2_id = a2.device_id();
    let e = a1.client.remove_device(a2_id).await.unwrap_err();
    assert!(matches!(e, ClientError::NeedsRecoveryKey), "{e}");
    assert_eq!(e.code(), "needs_recovery_key");
    assert!(matches!(
        a2.client.remove_device(DeviceId(1)).await,
        Err(ClientError::NeedsRecoveryKey)
    ));
    // Bob pins the list in which a2 holds the list key.
    bob.client.send_text(&a1.id(), "before").await.unwrap();
    assert_eq!(a1.receive(1).await[0].text, "before");
    assert_eq!(a2.receive(1).await[0].text, "before");
    bob.sent(1).await;
    assert!(bob.client.devices_of(&a1.id()).await.contains(&a2_id));

    // With the recovery key, a1 removes it.
    a1.client.remove_device_with_recovery_key(a2_id, &rk).await.unwrap();
    a2.wait_for(|e| matches!(e, Event::DeviceRemoved)).await;
    assert!(a1.client.can_manage_devices().await && !a1.client.has_account_key().await);
    assert!(!a2.client.can_manage_devices().await);
    assert!(matches!(
        a2.client.remove_device(DeviceId(1)).await,
        Err(ClientError::NoListKey)
    ));

    // What a2 can still sign: lists under the epoch-1 list key it kept (derived here from
    // the recovery key, as it was), adding itself back and marking itself, at any version.
    let a = a1.id();
    let current = SignedDeviceList::from_bytes(&http(&relay).get_device_list(&a).await.unwrap())
        .unwrap()
        .verify(&a)
        .unwrap();
    assert_eq!((current.epoch(), current.holders()), (2, &[DeviceId(1)][..]));
    let old_key = decode_recovery_key(&rk).unwrap().list_key(1).unwrap();
    let mut devices = current.devices().to_vec();
    devices.push(a2.client.entry());
    for version in [current.version() + 1, current.version() + 500] {
        let forged = old_key
            .sign_device_list(version, 0, devices.clone(), &[DeviceId(1), a2_id])
            .unwrap();
        let e = http(&relay)
            .put_device_list(&a, forged.signed().as_bytes())
            .await
            .unwrap_err();
        assert!(
            matches!(e, TransportError::Relay { code, .. } if code == ErrorCode::LIST_KEY_REVOKED),
            "{e}"
        );
        // A contact that pinned the epoch-2 list refuses it too.
        assert!(matches!(
            current.check_update(&forged),
            Err(DeviceListError::StaleListKey { pinned: 2, got: 1 })
        ));
    }
    // The others stop encrypting to it (Bob acknowledged the device added earlier).
    bob.client.acknowledge_identity(&a).await.unwrap();
    bob.client.send_text(&a, "after").await.unwrap();
    assert_eq!(a1.receive(1).await[0].text, "after");
    bob.sent(1).await;
    assert!(!bob.client.devices_of(&a).await.contains(&a2_id));
}

/// The recovery key gives a device that lacks it the list key of a new epoch (and the
/// device that held the old one loses it); a malformed key or another account's is
/// refused with a typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recovery_key_takes_back_the_list_key() {
    let relay = TestRelay::start().await;
    let mut a1 = Device::create(&relay, 111).await;
    let other = Device::create(&relay, 112).await;
    let a2 = Device::join_with(&relay, &mut a1, 113, false).await;
    // The account record as stored (encrypted) while it holds the account key.
    let db = a1.dir.path().join("client.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let with_ak: Vec<u8> = sqlx::query_scalar("SELECT v FROM account")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    let rk = a1.client.export_recovery_key().await.unwrap();
    // Neither the database nor its write-ahead log keeps that record.
    for file in [db.clone(), db.with_extension("db-wal")] {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !bytes.windows(with_ak.len()).any(|w| w == with_ak.as_slice()),
            "{} still holds the record with the account key",
            file.display()
        );
    }
    assert!(rk.starts_with("sotto-recovery:"));
    assert_eq!(decode_recovery_key(&rk).unwrap().account_id(), a1.id());
    // One digit changed: the checksum fails.
    let mut bad = rk.to_string();
    let last = bad.pop().unwrap();
    bad.push(if last == '0' { '1' } else { '0' });
    let e = a2.client.recover_account(&bad).await.unwrap_err();
    assert_eq!(e.code(), "bad_recovery_key");
    let theirs = other.client.export_recovery_key().await.unwrap();
    assert!(matches!(
        a2.client.recover_account(&theirs).await,
        Err(ClientError::BadRecoveryKey)
    ));
    assert!(!a2.client.can_manage_devices().await);
    a2.client
        .recover_account(&rk.to_uppercase().replace("SOTTO-RECOVERY:", "sotto-recovery:"))
        .await
        .unwrap();
    assert!(a2.client.can_manage_devices().await);
    assert!(!a2.client.has_account_key().await, "the recovery key is not stored");
    // It can now change the list: it removes a1, which no longer holds the list key.
    a2.client.remove_device(DeviceId(1)).await.unwrap();
    a1.wait_for(|e| matches!(e, Event::DeviceRemoved)).await;
    assert!(!a1.client.can_manage_devices().await);
}

/// Finding 8: the existing device asks its user, showing the new device's name and the
/// fingerprint the new device shows; nothing is published before the confirmation; the
/// code works once (a second request with it raises nothing); a rejected request and an
/// unknown id are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linking_needs_confirmation_and_a_code_works_once() {
    let relay = TestRelay::start().await;
    let mut a1 = Device::create(&relay, 121).await;
    let bob = Device::create(&relay, 122).await;
    a1.client.add_contact(&bob.client.contact_link()).await.unwrap();
    bob.client.add_contact(&a1.client.contact_link()).await.unwrap();
    let code = a1.client.link_new_device().await.unwrap();
    let (pending, dir) = Device::start_join_code(&relay, &code, 123).await;
    let e = a1.wait_for(|e| matches!(e, Event::LinkRequested { .. })).await;
    let Event::LinkRequested {
        id,
        device_name,
        fingerprint,
    } = e
    else {
        unreachable!()
    };
    assert_eq!(device_name, "device 123");
    assert!(sotto_sdk::link::fingerprints_match(&fingerprint, pending.fingerprint()));
    assert_eq!(fingerprint, sotto_sdk::link::link_fingerprint(&pending.identity()));
    // Nothing was published: the account still lists one device.
    let a = a1.id();
    let listed = SignedDeviceList::from_bytes(&http(&relay).get_device_list(&a).await.unwrap())
        .unwrap()
        .verify(&a)
        .unwrap();
    assert_eq!(listed.devices().len(), 1);

    // Someone else who saw the code: their request is ignored (the code is spent).
    // Bob's message, sent after it, is processed after it (mailbox order).
    let intruder = Device::start_join_code(&relay, &code, 124).await;
    bob.client.send_text(&a, "after the second request").await.unwrap();
    assert_eq!(a1.receive(1).await[0].text, "after the second request");
    assert!(
        !a1.stash.iter().any(|e| matches!(e, Event::LinkRequested { .. })),
        "{:?}",
        a1.stash
    );
    drop(intruder);

    // An unknown id is refused; the right one goes through, without the list key.
    let e = a1.client.confirm_link(id ^ 1, false).await.unwrap_err();
    assert_eq!(e.code(), "unknown_link_request");
    a1.client.confirm_link(id, false).await.unwrap();
    let a2 = Device::finish_join(pending, dir, 123).await;
    assert!(!a2.client.has_account_key().await && !a2.client.can_manage_devices().await);
    assert_eq!(a2.client.conversations().await.unwrap(), vec![bob.id()]);
    // Answered once: the id is gone.
    assert!(matches!(
        a1.client.confirm_link(id, true).await,
        Err(ClientError::UnknownLinkRequest)
    ));

    // A rejected request: nothing published, the id is gone.
    let (p3, _dir3) = Device::start_join(&relay, &a1, 125).await;
    let id3 = a1.link_requested(&p3).await;
    a1.client.reject_link(id3).await.unwrap();
    assert!(matches!(
        a1.client.confirm_link(id3, false).await,
        Err(ClientError::UnknownLinkRequest)
    ));
    assert!(matches!(
        a1.client.reject_link(id3).await,
        Err(ClientError::UnknownLinkRequest)
    ));
    assert!(!a1.client.devices_of(&a).await.contains(&p3.device_id()));
}

/// Finding 8: a message that reaches the new device after it was listed and before the
/// existing device's answer is kept: the new device shows it once the join completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_arrives_while_joining_is_kept() {
    let relay = TestRelay::start().await;
    let mut a1 = Device::create(&relay, 131).await;
    let mut bob = Device::create(&relay, 132).await;
    a1.client.add_contact(&bob.client.contact_link()).await.unwrap();
    bob.client.add_contact(&a1.client.contact_link()).await.unwrap();
    let (pending, dir) = Device::start_join(&relay, &a1, 133).await;
    let id = a1.link_requested(&pending).await;
    let new_id = pending.device_id();

    // The account lists the new device before the answer goes out (as after a1 published
    // its list and before its answer was stored): here the test publishes that list with
    // the account key from the recovery key.
    let a = a1.id();
    let ak = decode_recovery_key(&a1.client.export_recovery_key().await.unwrap()).unwrap();
    let current = SignedDeviceList::from_bytes(&http(&relay).get_device_list(&a).await.unwrap())
        .unwrap()
        .verify(&a)
        .unwrap();
    let mut devices = current.devices().to_vec();
    devices.push(pending.entry());
    let list = ak
        .list_key(current.epoch())
        .unwrap()
        .sign_device_list(current.version() + 1, 0, devices, current.holders())
        .unwrap();
    http(&relay)
        .put_device_list(&a, list.signed().as_bytes())
        .await
        .unwrap();
    let join = tokio::spawn(pending.wait());
    // Once its prekeys are up, Bob's message is encrypted to it too.
    let state = relay.state.clone();
    until(|| {
        let state = state.clone();
        async move {
            state
                .store
                .prekey_counts(&a, new_id)
                .await
                .is_ok_and(|c| c.one_time > 0)
        }
    })
    .await;
    bob.client.send_text(&a, "while joining").await.unwrap();
    assert_eq!(a1.receive(1).await[0].text, "while joining");
    bob.sent(1).await;

    // Now the user confirms; the answer comes after Bob's message in the mailbox.
    a1.client.confirm_link(id, false).await.unwrap();
    let client = join.await.unwrap().unwrap();
    let mut a2 = Device::wrap(client, dir, 133).await;
    let got = a2.receive(1).await;
    assert_eq!(got[0].text, "while joining");
    assert_eq!(got[0].sender.0, bob.id());
}
