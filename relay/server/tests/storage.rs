//! The storage conformance suite, run against SQLite and PostgreSQL.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::*;
use sotto_crypto::{DeviceId, PreKeyKind};
use sotto_proto::{PushProvider, PushRegistration, Recipient};
use sotto_relay::storage::{
    PutDeviceList, SendParams, SendStored, Storage, StorageError, Store, StoredProfile, WriteOp, WriteOutcome,
    verify_prekeys,
};

const NOW: u64 = 1_700_000_000;

fn params(sender: &TestDevice) -> SendParams {
    SendParams {
        sender: Some((sender.account_id(), sender.id())),
        now_s: NOW,
        expires_at_s: NOW + 1000,
        max_mailbox_depth: 100,
        max_mailbox_bytes: 1 << 20,
        max_request_depth: 2,
        max_request_bytes: 1 << 20,
    }
}

fn to_all(acc: &TestAccount, except: Option<DeviceId>, body: &[u8]) -> Vec<Recipient> {
    acc.devices
        .iter()
        .filter(|d| Some(d.id()) != except)
        .map(|d| Recipient {
            account_id: acc.id(),
            device_id: d.id(),
            head: body.to_vec(),
        })
        .collect()
}

async fn device_lists<S: Storage>(s: Arc<S>) {
    let mut r = rng(1);
    let mut alice = account(&mut r, 2);
    assert_eq!(s.device_list(&alice.id()).await.unwrap(), None);
    assert_eq!(s.put_device_list(&alice.list).await.unwrap(), PutDeviceList::Created);
    assert_eq!(
        s.device_list(&alice.id()).await.unwrap().as_deref(),
        Some(alice.list.signed().as_bytes())
    );
    assert!(matches!(
        s.put_device_list(&alice.list).await,
        Err(StorageError::StaleDeviceList { stored: 1, offered: 1 })
    ));
    let keys = s.device_keys(&alice.id(), DeviceId(2)).await.unwrap().unwrap();
    assert_eq!(keys.signing_key, alice.devices[1].device.identity().signing_key);
    assert_eq!(s.device_keys(&alice.id(), DeviceId(3)).await.unwrap(), None);

    // Bob sends to both devices, then alice drops device 2 and rekeys device 1.
    let bob = account(&mut r, 1);
    s.put_device_list(&bob.list).await.unwrap();
    let sent = s
        .store_send(params(&bob.devices[0]), &to_all(&alice, None, b"x"))
        .await
        .unwrap();
    assert_eq!(sent, SendStored::Stored(vec![1, 1]));
    let new1 = device(alice.id(), 1, &mut r);
    alice.relist(5, vec![new1]);
    assert_eq!(s.put_device_list(&alice.list).await.unwrap(), PutDeviceList::Updated);
    assert!(matches!(
        s.last_seq(&alice.id(), DeviceId(2)).await,
        Err(StorageError::UnknownDevice)
    ));
    // The rekeyed device lost its envelopes but its seq keeps growing.
    assert!(s.fetch(&alice.id(), DeviceId(1), 0, NOW, 10).await.unwrap().is_empty());
    assert_eq!(s.last_seq(&alice.id(), DeviceId(1)).await.unwrap(), 1);
    let older = alice
        .ak
        .sign_device_list(4, 0, vec![alice.devices[0].device.entry()])
        .unwrap();
    assert!(matches!(
        s.put_device_list(&older).await,
        Err(StorageError::StaleDeviceList { stored: 5, offered: 4 })
    ));
}

async fn prekeys<S: Storage>(s: Arc<S>) {
    let mut r = rng(2);
    let alice = account(&mut r, 2);
    s.put_device_list(&alice.list).await.unwrap();
    let d1 = &alice.devices[0];
    let dsk1 = d1.device.identity().signing_key;
    let upload = d1.prekeys(&mut r, 1, 2, 1);
    verify_prekeys(d1.id(), &dsk1, &upload).unwrap();
    // Signatures bind the device: device 2's key does not verify them.
    let dsk2 = alice.devices[1].device.identity().signing_key;
    assert!(verify_prekeys(DeviceId(2), &dsk2, &upload).is_err());
    // The store refuses a DSK that is not the device's.
    assert!(matches!(
        s.put_prekeys(&alice.id(), DeviceId(1), &dsk2, &upload, 100).await,
        Err(StorageError::UnknownDevice)
    ));
    assert!(matches!(
        s.take_bundle(&alice.id(), DeviceId(1)).await,
        Err(StorageError::NoPreKeys)
    ));
    s.put_prekeys(&alice.id(), DeviceId(1), &dsk1, &upload, 100)
        .await
        .unwrap();
    let c = s.prekey_counts(&alice.id(), DeviceId(1)).await.unwrap();
    assert_eq!(
        (c.one_time, c.kem_one_time, c.has_signed_prekey, c.has_last_resort),
        (2, 1, true, true)
    );

    let b1 = s.take_bundle(&alice.id(), DeviceId(1)).await.unwrap();
    b1.verify().unwrap();
    assert_eq!(b1.one_time_prekey.as_ref().unwrap().id, 1);
    assert_eq!(b1.kem_prekey.kind, PreKeyKind::KemOneTime);
    let b2 = s.take_bundle(&alice.id(), DeviceId(1)).await.unwrap();
    assert_eq!(b2.one_time_prekey.as_ref().unwrap().id, 2);
    assert_eq!(b2.kem_prekey.kind, PreKeyKind::KemLastResort);
    let b3 = s.take_bundle(&alice.id(), DeviceId(1)).await.unwrap();
    assert!(b3.one_time_prekey.is_none());
    assert_eq!(b3.kem_prekey.kind, PreKeyKind::KemLastResort);
    let c = s.prekey_counts(&alice.id(), DeviceId(1)).await.unwrap();
    assert_eq!((c.one_time, c.kem_one_time), (0, 0));

    // Bundles for the whole account: device 2 has none, so only device 1's.
    let all = s.take_bundles(&alice.id()).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].identity.device_id, DeviceId(1));

    // The per-device bound on one-time prekeys; the failed upload stores nothing.
    let big = d1.prekeys(&mut r, 100, 5, 0);
    assert!(matches!(
        s.put_prekeys(&alice.id(), DeviceId(1), &dsk1, &big, 4).await,
        Err(StorageError::TooManyPreKeys { max: 4 })
    ));
    assert_eq!(s.prekey_counts(&alice.id(), DeviceId(1)).await.unwrap().one_time, 0);
    assert!(matches!(
        s.take_bundles(&account(&mut r, 1).id()).await,
        Err(StorageError::UnknownAccount)
    ));
}

async fn concurrent_prekey_fetches<S: Storage>(s: Arc<S>) {
    let mut r = rng(3);
    let alice = account(&mut r, 1);
    s.put_device_list(&alice.list).await.unwrap();
    let d = &alice.devices[0];
    let upload = d.prekeys(&mut r, 1, 10, 3);
    s.put_prekeys(&alice.id(), d.id(), &d.device.identity().signing_key, &upload, 100)
        .await
        .unwrap();
    let tasks: Vec<_> = (0..24)
        .map(|_| {
            let s = s.clone();
            let a = alice.id();
            tokio::spawn(async move { s.take_bundle(&a, DeviceId(1)).await.unwrap() })
        })
        .collect();
    let mut opks = Vec::new();
    let mut kems = Vec::new();
    for t in tasks {
        let b = t.await.unwrap();
        if let Some(k) = b.one_time_prekey {
            opks.push(k.id);
        }
        if b.kem_prekey.kind == PreKeyKind::KemOneTime {
            kems.push(b.kem_prekey.id);
        }
    }
    let unique: BTreeSet<u32> = opks.iter().copied().collect();
    assert_eq!(opks.len(), 10, "every one-time prekey handed out");
    assert_eq!(unique.len(), 10, "no one-time prekey handed out twice");
    let unique: BTreeSet<u32> = kems.iter().copied().collect();
    assert_eq!((kems.len(), unique.len()), (3, 3));
}

/// Uploads a signed and a last-resort prekey for every device of `a`: each becomes
/// reachable, so the device-set rule requires it in every send to `a`.
async fn make_reachable<S: Storage>(s: &S, a: &TestAccount, r: &mut rand_chacha::ChaCha20Rng) {
    for d in &a.devices {
        let up = d.prekeys(r, 1, 0, 0);
        s.put_prekeys(&a.id(), d.id(), &d.device.identity().signing_key, &up, 100)
            .await
            .unwrap();
    }
}

async fn sends<S: Storage>(s: Arc<S>) {
    let mut r = rng(4);
    let alice = account(&mut r, 2);
    let bob = account(&mut r, 3);
    s.put_device_list(&alice.list).await.unwrap();
    s.put_device_list(&bob.list).await.unwrap();
    make_reachable(&*s, &bob, &mut r).await;
    let sender = &alice.devices[0];

    // To bob's 3 devices and alice's other device.
    let mut rc = to_all(&bob, None, b"for bob");
    rc.extend(to_all(&alice, Some(sender.id()), b"for alice 2"));
    assert_eq!(
        s.store_send(params(sender), &rc).await.unwrap(),
        SendStored::Stored(vec![1, 1, 1, 1])
    );
    assert_eq!(
        s.store_send(params(sender), &rc).await.unwrap(),
        SendStored::Stored(vec![2, 2, 2, 2])
    );

    // A missing device: mismatch with bob's current list, nothing stored.
    let short: Vec<Recipient> = to_all(&bob, None, b"x").into_iter().take(2).collect();
    assert_eq!(
        s.store_send(params(sender), &short).await.unwrap(),
        SendStored::Mismatch(vec![bob.list.signed().as_bytes().to_vec()])
    );
    // An extra device that is not listed.
    let mut extra = to_all(&bob, None, b"x");
    extra.push(Recipient {
        account_id: bob.id(),
        device_id: DeviceId(9),
        head: vec![],
    });
    assert!(matches!(
        s.store_send(params(sender), &extra).await.unwrap(),
        SendStored::Mismatch(_)
    ));
    // Including the sending device itself is a mismatch for its own account.
    assert!(matches!(
        s.store_send(params(sender), &to_all(&alice, None, b"x")).await.unwrap(),
        SendStored::Mismatch(_)
    ));
    assert_eq!(s.last_seq(&bob.id(), DeviceId(1)).await.unwrap(), 2);

    // Unknown account.
    let carol = account(&mut r, 1);
    assert!(matches!(
        s.store_send(params(sender), &to_all(&carol, None, b"x")).await,
        Err(StorageError::UnknownAccount)
    ));

    // Atomicity: bob's device 3 is full, so nothing is stored anywhere, and no seq is used.
    let mut p = params(sender);
    p.max_mailbox_depth = 2;
    assert!(matches!(s.store_send(p, &rc).await, Err(StorageError::MailboxFull)));
    s.ack(&bob.id(), DeviceId(1), 2).await.unwrap();
    s.ack(&bob.id(), DeviceId(2), 2).await.unwrap();
    assert!(matches!(s.store_send(p, &rc).await, Err(StorageError::MailboxFull)));
    assert!(s.fetch(&bob.id(), DeviceId(1), 0, NOW, 10).await.unwrap().is_empty());
    assert_eq!(s.last_seq(&bob.id(), DeviceId(1)).await.unwrap(), 2);

    // Fetch, ack and expiry.
    let got = s.fetch(&bob.id(), DeviceId(3), 0, NOW, 10).await.unwrap();
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(got[0].envelope, b"for bob");
    assert_eq!(got[0].received_at_s, NOW);
    assert_eq!(s.fetch(&bob.id(), DeviceId(3), 1, NOW, 10).await.unwrap().len(), 1);
    assert_eq!(s.fetch(&bob.id(), DeviceId(3), 0, NOW, 1).await.unwrap().len(), 1);
    assert_eq!(s.ack(&bob.id(), DeviceId(3), 1).await.unwrap(), 1);
    assert_eq!(s.fetch(&bob.id(), DeviceId(3), 0, NOW, 10).await.unwrap()[0].seq, 2);
    // Expired envelopes are not served and are deleted by expiry.
    assert!(
        s.fetch(&bob.id(), DeviceId(3), 0, NOW + 1000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let expired = s.expire(NOW + 1000).await.unwrap();
    assert!(expired >= 2, "expired {expired}");
    assert!(s.fetch(&bob.id(), DeviceId(3), 0, NOW, 10).await.unwrap().is_empty());
    // Seqs keep growing after deletes.
    assert_eq!(
        s.store_send(params(sender), &rc).await.unwrap(),
        SendStored::Stored(vec![3, 3, 3, 3])
    );

    // Anonymous: every account's full list is expected (its reachable devices), the
    // sender's own included.
    make_reachable(&*s, &alice, &mut r).await;
    let anon = |p: SendParams| SendParams { sender: None, ..p };
    assert!(matches!(
        s.store_send(anon(params(sender)), &rc).await.unwrap(),
        SendStored::Mismatch(l) if l == vec![alice.list.signed().as_bytes().to_vec()]
    ));
    assert!(matches!(
        s.store_send(
            anon(params(sender)),
            &to_all(&bob, None, b"x").into_iter().take(2).collect::<Vec<_>>()
        )
        .await
        .unwrap(),
        SendStored::Mismatch(_)
    ));
    let mut all = to_all(&bob, None, b"anon");
    all.extend(to_all(&alice, None, b"anon"));
    assert_eq!(
        s.store_send(anon(params(sender)), &all).await.unwrap(),
        SendStored::Stored(vec![4, 4, 4, 1, 4])
    );
    assert_eq!(
        s.fetch(&alice.id(), DeviceId(1), 0, NOW, 10).await.unwrap()[0].envelope,
        b"anon"
    );
}

async fn concurrent_sends<S: Storage>(s: Arc<S>) {
    let mut r = rng(5);
    let alice = Arc::new(account(&mut r, 1));
    let bob = Arc::new(account(&mut r, 2));
    s.put_device_list(&alice.list).await.unwrap();
    s.put_device_list(&bob.list).await.unwrap();
    let tasks: Vec<_> = (0..20u8)
        .map(|i| {
            let s = s.clone();
            let (alice, bob) = (alice.clone(), bob.clone());
            tokio::spawn(async move {
                let mut rc = to_all(&bob, None, &[i]);
                if i % 2 == 0 {
                    rc.reverse(); // other lock orders must not deadlock
                }
                s.store_send(params(&alice.devices[0]), &rc).await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert!(matches!(t.await.unwrap(), SendStored::Stored(_)));
    }
    for d in [1, 2] {
        let got = s.fetch(&bob.id(), DeviceId(d), 0, NOW, 100).await.unwrap();
        assert_eq!(
            got.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=20).collect::<Vec<u64>>()
        );
    }
}

fn send(params: SendParams, recipients: &[Recipient]) -> WriteOp<'_> {
    WriteOp::Send {
        params,
        body: &[],
        recipients,
        access: &[],
    }
}

fn stored(o: &WriteOutcome) -> Option<Vec<u64>> {
    match o {
        WriteOutcome::Send(Ok(SendStored::Stored(seqs))) => Some(seqs.clone()),
        _ => None,
    }
}

/// Group commit: one batch of sends and acks, each with its own outcome; a send that
/// fails its checks stores nothing and does not affect the others; acks free room first.
async fn write_batches<S: Storage>(s: Arc<S>) {
    let mut r = rng(7);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 2);
    let carol = account(&mut r, 1);
    s.put_device_list(&alice.list).await.unwrap();
    s.put_device_list(&bob.list).await.unwrap();
    make_reachable(&*s, &bob, &mut r).await;
    let p = SendParams {
        max_mailbox_depth: 1,
        ..params(&alice.devices[0])
    };
    let to_bob = to_all(&bob, None, b"one");
    let short: Vec<Recipient> = to_all(&bob, None, b"x").into_iter().take(1).collect();
    let to_carol = to_all(&carol, None, b"x");
    let ack = |device: u32, seq: u64| WriteOp::Ack {
        account: bob.id(),
        device: DeviceId(device),
        seq,
    };
    let out = s
        .write_batch(&[
            send(p, &to_bob),
            send(p, &short),
            send(p, &to_carol),
            send(p, &to_bob),
            ack(1, 0),
        ])
        .await
        .unwrap();
    assert_eq!(out.len(), 5);
    assert_eq!(stored(&out[0]), Some(vec![1, 1]));
    assert!(matches!(&out[1], WriteOutcome::Send(Ok(SendStored::Mismatch(l))) if l.len() == 1));
    assert!(matches!(out[2], WriteOutcome::Send(Err(StorageError::UnknownAccount))));
    // Full because of the first send of the same batch.
    assert!(matches!(out[3], WriteOutcome::Send(Err(StorageError::MailboxFull))));
    assert!(matches!(out[4], WriteOutcome::Ack(0)));
    assert_eq!(s.last_seq(&bob.id(), DeviceId(1)).await.unwrap(), 1);

    // The acks of a batch free room for its sends, whatever their order in the batch.
    let to_bob2 = to_all(&bob, None, b"two");
    let out = s.write_batch(&[send(p, &to_bob2), ack(1, 1), ack(2, 1)]).await.unwrap();
    assert_eq!(stored(&out[0]), Some(vec![2, 2]));
    assert!(matches!(out[1], WriteOutcome::Ack(1)));
    assert!(matches!(out[2], WriteOutcome::Ack(1)));
    let got = s.fetch(&bob.id(), DeviceId(2), 0, NOW, 10).await.unwrap();
    assert_eq!((got.len(), got[0].seq, &got[0].envelope[..]), (1, 2, &b"two"[..]));

    // Expiry frees room too: the mailbox depth follows deletes of every kind.
    assert_eq!(s.expire(NOW + 1000).await.unwrap(), 2);
    let out = s.write_batch(&[send(p, &to_bob)]).await.unwrap();
    assert_eq!(stored(&out[0]), Some(vec![3, 3]));
    // Two acks of one device in a batch: the count is reported once; acking old seqs again
    // deletes nothing.
    let out = s.write_batch(&[ack(1, 3), ack(1, 3), ack(2, 1)]).await.unwrap();
    assert!(matches!(
        out[..],
        [WriteOutcome::Ack(1), WriteOutcome::Ack(0), WriteOutcome::Ack(0)]
    ));
    assert_eq!(s.ack(&bob.id(), DeviceId(2), 3).await.unwrap(), 1);
    // An empty batch is a no-op.
    assert!(s.write_batch(&[]).await.unwrap().is_empty());
}

async fn push<S: Storage>(s: Arc<S>) {
    let mut r = rng(6);
    let alice = account(&mut r, 1);
    s.put_device_list(&alice.list).await.unwrap();
    let reg = PushRegistration {
        provider: PushProvider::UnifiedPush,
        token: b"https://push.example/abc".to_vec(),
    };
    assert_eq!(s.push_registration(&alice.id(), DeviceId(1)).await.unwrap(), None);
    s.put_push(&alice.id(), DeviceId(1), &reg).await.unwrap();
    assert_eq!(s.push_registration(&alice.id(), DeviceId(1)).await.unwrap(), Some(reg));
    let reg2 = PushRegistration {
        provider: PushProvider::Apns,
        token: vec![1, 2, 3],
    };
    s.put_push(&alice.id(), DeviceId(1), &reg2).await.unwrap();
    assert_eq!(
        s.push_registration(&alice.id(), DeviceId(1)).await.unwrap(),
        Some(reg2.clone())
    );
    assert!(matches!(
        s.put_push(&alice.id(), DeviceId(7), &reg2).await,
        Err(StorageError::UnknownDevice)
    ));
    assert!(s.delete_push(&alice.id(), DeviceId(1)).await.unwrap());
    assert!(!s.delete_push(&alice.id(), DeviceId(1)).await.unwrap());
    s.ping().await.unwrap();
}

/// Profiles: one per account, replaced by each put (version and bytes), deleted once;
/// an unknown account can store none; accounts do not see each other's.
async fn profiles<S: Storage>(s: Arc<S>) {
    let mut r = rng(7);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 1);
    let v1 = StoredProfile {
        version: [1; 32],
        ciphertext: vec![0xa1; 100],
        updated_at_s: NOW,
    };
    assert!(matches!(
        s.put_profile(&alice.id(), &v1).await,
        Err(StorageError::UnknownAccount)
    ));
    assert_eq!(s.profile(&alice.id()).await.unwrap(), None);
    s.put_device_list(&alice.list).await.unwrap();
    s.put_device_list(&bob.list).await.unwrap();
    assert_eq!(s.profile(&alice.id()).await.unwrap(), None);
    s.put_profile(&alice.id(), &v1).await.unwrap();
    assert_eq!(s.profile(&alice.id()).await.unwrap(), Some(v1.clone()));
    assert_eq!(s.profile(&bob.id()).await.unwrap(), None);
    // A new key: the new version and bytes replace the old ones.
    let v2 = StoredProfile {
        version: [2; 32],
        ciphertext: vec![0xb2; sotto_proto::limits::MAX_PROFILE_BYTES],
        updated_at_s: NOW + 60,
    };
    s.put_profile(&alice.id(), &v2).await.unwrap();
    assert_eq!(s.profile(&alice.id()).await.unwrap(), Some(v2.clone()));
    let bobs = StoredProfile {
        version: [3; 32],
        ciphertext: b"bob".to_vec(),
        updated_at_s: NOW,
    };
    s.put_profile(&bob.id(), &bobs).await.unwrap();
    assert!(s.delete_profile(&alice.id()).await.unwrap());
    assert!(!s.delete_profile(&alice.id()).await.unwrap());
    assert_eq!(s.profile(&alice.id()).await.unwrap(), None);
    assert_eq!(s.profile(&bob.id()).await.unwrap(), Some(bobs));
    // Stored again after a delete.
    s.put_profile(&alice.id(), &v1).await.unwrap();
    assert_eq!(s.profile(&alice.id()).await.unwrap(), Some(v1));
}

/// Finding 14: a bundle request for all of an account's devices is one write transaction
/// (it was one per device), and without one-time prekeys it takes none.
async fn one_transaction_per_bundle_request(s: Arc<Store>) {
    let mut r = rng(14);
    let alice = account(&mut r, 6);
    s.put_device_list(&alice.list).await.unwrap();
    for d in &alice.devices {
        let up = d.prekeys(&mut r, 1, 3, 1);
        s.put_prekeys(&alice.id(), d.id(), &d.device.identity().signing_key, &up, 100)
            .await
            .unwrap();
    }
    let before = s.write_transactions();
    let all = s.take_bundles(&alice.id()).await.unwrap();
    assert_eq!(all.len(), 6);
    assert_eq!(
        s.write_transactions() - before,
        1,
        "one write transaction for 6 devices"
    );
    // Without one-time prekeys: last-resort ML-KEM, no one-time X25519, nothing consumed.
    let counts = s.prekey_counts(&alice.id(), DeviceId(1)).await.unwrap();
    let before = s.write_transactions();
    let plain = s.take_bundles_with(&alice.id(), None, false).await.unwrap();
    assert_eq!(s.write_transactions() - before, 1);
    assert_eq!(plain.len(), 6);
    for b in &plain {
        b.verify().unwrap();
        assert!(b.one_time_prekey.is_none());
        assert_eq!(b.kem_prekey.kind, PreKeyKind::KemLastResort);
    }
    assert_eq!(s.prekey_counts(&alice.id(), DeviceId(1)).await.unwrap(), counts);
}

/// Finding 15: message requests (sends without the recipient's access key, once it set a
/// verifier) are counted per mailbox and bounded; acks and expiry free the quota, a send
/// with the key is not counted, and an unknown account cannot set a verifier.
async fn request_quota(s: Arc<Store>) {
    use sotto_proto::AccessKey;
    use sotto_relay::storage::AccountAccess;
    let mut r = rng(152);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 1);
    assert!(matches!(
        s.put_access(
            &bob.id(),
            AccountAccess {
                verifier: Some([1; 32]),
                accept_requests: true
            }
        )
        .await,
        Err(StorageError::UnknownAccount)
    ));
    s.put_device_list(&alice.list).await.unwrap();
    s.put_device_list(&bob.list).await.unwrap();
    let key = AccessKey([7; 32]);
    s.put_access(
        &bob.id(),
        AccountAccess {
            verifier: Some(key.verifier()),
            accept_requests: true,
        },
    )
    .await
    .unwrap();
    let p = params(&alice.devices[0]);
    let rc = to_all(&bob, None, b"request");
    let with_key = [(bob.id(), key.verifier())];
    let wrong_key = [(bob.id(), AccessKey([8; 32]).verifier())];
    // max_request_depth is 2.
    assert_eq!(
        s.store_send_with(p, &wrong_key, &rc).await.unwrap(),
        SendStored::Stored(vec![1])
    );
    assert_eq!(s.store_send(p, &rc).await.unwrap(), SendStored::Stored(vec![2]));
    assert!(matches!(s.store_send(p, &rc).await, Err(StorageError::RequestsFull)));
    assert_eq!(
        s.store_send_with(p, &with_key, &rc).await.unwrap(),
        SendStored::Stored(vec![3])
    );
    // An ack of the first request frees one place.
    let out = s
        .write_batch(&[WriteOp::Ack {
            account: bob.id(),
            device: DeviceId(1),
            seq: 1,
        }])
        .await
        .unwrap();
    assert!(matches!(out[0], WriteOutcome::Ack(1)));
    assert_eq!(s.store_send(p, &rc).await.unwrap(), SendStored::Stored(vec![4]));
    assert!(matches!(s.store_send(p, &rc).await, Err(StorageError::RequestsFull)));
    // Expiry frees the rest, requests included.
    assert_eq!(s.expire(NOW + 1000).await.unwrap(), 3);
    assert_eq!(s.store_send(p, &rc).await.unwrap(), SendStored::Stored(vec![5]));
    assert_eq!(s.store_send(p, &rc).await.unwrap(), SendStored::Stored(vec![6]));
    assert!(matches!(s.store_send(p, &rc).await, Err(StorageError::RequestsFull)));
    // Refusing requests: refused whatever the quota, the key still works.
    s.put_access(
        &bob.id(),
        AccountAccess {
            verifier: Some(key.verifier()),
            accept_requests: false,
        },
    )
    .await
    .unwrap();
    assert!(matches!(s.store_send(p, &rc).await, Err(StorageError::AccessDenied)));
    assert_eq!(
        s.store_send_with(p, &with_key, &rc).await.unwrap(),
        SendStored::Stored(vec![7])
    );
}

macro_rules! conformance {
    ($backend:ident, $url:expr) => {
        mod $backend {
            use super::*;

            async fn open() -> Option<(Arc<Store>, String)> {
                let url: Option<String> = $url;
                let url = url?;
                Some((Arc::new(Store::open(&url, 8).await.unwrap()), url))
            }

            async fn done(s: Arc<Store>, url: String) {
                s.close().await;
                if url.starts_with("sqlite://") {
                    remove_sqlite(&url);
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn device_lists() {
                if let Some((s, url)) = open().await {
                    super::device_lists(s.clone()).await;
                    done(s, url).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn prekeys() {
                if let Some((s, url)) = open().await {
                    super::prekeys(s.clone()).await;
                    done(s, url).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_prekey_fetches() {
                if let Some((s, url)) = open().await {
                    super::concurrent_prekey_fetches(s.clone()).await;
                    done(s, url).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sends() {
                if let Some((s, url)) = open().await {
                    super::sends(s.clone()).await;
                    done(s, url).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_sends() {
                if let Some((s, url)) = open().await {
                    super::concurrent_sends(s.clone()).await;
                    done(s, url).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn write_batches() {
                if let Some((s, url)) = open().await {
                    super::write_batches(s.clone()).await;
                    done(s, url).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn request_quota() {
                if let Some((s, url)) = open().await {
                    super::request_quota(s.clone()).await;
                    done(s, url).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn one_transaction_per_bundle_request() {
                if let Some((s, url)) = open().await {
                    super::one_transaction_per_bundle_request(s.clone()).await;
                    done(s, url).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn push() {
                if let Some((s, url)) = open().await {
                    super::push(s.clone()).await;
                    done(s, url).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn profiles() {
                if let Some((s, url)) = open().await {
                    super::profiles(s.clone()).await;
                    done(s, url).await;
                }
            }
        }
    };
}

conformance!(sqlite, Some(sqlite_url()));
conformance!(postgres, postgres_url().await);
