//! The relay over real sockets, on SQLite and on PostgreSQL.

mod common;

use std::collections::BTreeSet;

use common::relay::*;
use common::*;
use hyper::{Method, StatusCode};
use sotto_crypto::{DeviceId, MAX_VERSION, MAX_VERSION_STEP, PreKeyKind};
use sotto_proto::{
    Access, AccessKey, AccessPolicy, Body, Bundles, Challenge, DeviceListBody, ErrorCode, Frame, PreKeyCounts,
    PushProvider, PushRegistration, Recipient, Send, SendOutcome, SendResult,
};
use sotto_relay::Config;
use sotto_relay::storage::Storage;

fn to_devices(acc: &TestAccount, skip: Option<DeviceId>, body: &[u8]) -> Vec<Recipient> {
    acc.devices
        .iter()
        .filter(|d| Some(d.id()) != skip)
        .map(|d| Recipient {
            account_id: acc.id(),
            device_id: d.id(),
            head: body.to_vec(),
        })
        .collect()
}

async fn send_to(ws: &mut Ws, message_id: u64, recipients: Vec<Recipient>) -> SendOutcome {
    send_with_keys(ws, message_id, &[], recipients).await
}

async fn expect_deliver(ws: &mut Ws) -> (u64, Vec<u8>) {
    match recv(ws).await {
        Frame::Deliver(d) => (d.seq, d.envelope),
        other => panic!("expected a delivery, got {other:?}"),
    }
}

async fn register_all(relay: &Relay, accounts: &[&TestAccount]) {
    for a in accounts {
        assert_eq!(relay.register(a).await, StatusCode::CREATED);
    }
}

/// Uploads a signed prekey and a last-resort ML-KEM prekey for `d`: it becomes reachable
/// (a bundle can be made for it), so the device-set rule no longer lets a send leave it out.
async fn make_reachable(relay: &Relay, d: &TestDevice, r: &mut rand_chacha::ChaCha20Rng) {
    let up = d.prekeys(r, 1, 0, 0);
    let (status, _) = relay.authed(d, Method::PUT, "/v1/prekeys", up.encode()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

/// Finding 2, relay side: a send must name every reachable device of an account (one a
/// bundle can be made for: a bundle request would not answer `NO_PREKEYS`) and may leave
/// out the others,
/// on authenticated and anonymous connections alike; it may name only listed devices.
async fn device_set_rule_lets_unreachable_devices_out(url: String) {
    let mut relay = Relay::start(&url, |_| {}).await;
    let mut r = rng(2);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 3);
    register_all(&relay, &[&alice, &bob]).await;
    let (b1, b2, b3) = (&bob.devices[0], &bob.devices[1], &bob.devices[2]);
    make_reachable(&relay, b1, &mut r).await;
    make_reachable(&relay, b2, &mut r).await;
    let mut wa = relay.connect(&alice.devices[0]).await;
    assert_eq!(recv(&mut wa).await, Frame::QueueEmpty);
    let mismatch = SendOutcome::DeviceMismatch {
        device_lists: vec![bob.list.signed().as_bytes().to_vec()],
    };
    // b3 never uploaded prekeys: it may be left out, or named.
    let without_b3 = to_devices(&bob, Some(b3.id()), b"x");
    assert!(matches!(
        send_to(&mut wa, 1, without_b3.clone()).await,
        SendOutcome::Stored { .. }
    ));
    assert!(matches!(
        send_to(&mut wa, 2, to_devices(&bob, None, b"x")).await,
        SendOutcome::Stored { .. }
    ));
    let mut anon = relay.open_anonymous().await;
    assert!(matches!(
        send_anon(&mut anon, 3, without_b3.clone()).await,
        SendOutcome::Stored { .. }
    ));
    // A reachable device may not be left out.
    assert_eq!(
        send_to(&mut wa, 4, to_devices(&bob, Some(b2.id()), b"x")).await,
        mismatch
    );
    assert_eq!(
        send_anon(&mut anon, 5, to_devices(&bob, Some(b2.id()), b"x")).await,
        mismatch
    );
    // A device that is not listed may not be named.
    let mut extra = to_devices(&bob, None, b"x");
    extra.push(Recipient {
        account_id: bob.id(),
        device_id: DeviceId(9),
        head: b"x".to_vec(),
    });
    assert_eq!(send_to(&mut wa, 6, extra).await, mismatch);
    // Once b3 holds prekeys it must be named.
    make_reachable(&relay, b3, &mut r).await;
    assert_eq!(send_to(&mut wa, 7, without_b3.clone()).await, mismatch);
    assert_eq!(send_anon(&mut anon, 8, without_b3).await, mismatch);
    drop((wa, anon));
    relay.stop().await;
}

/// Finding 14 with the device-set rule: a device whose signed prekey (or, once its
/// one-time ML-KEM prekeys are gone, its last-resort one) is older than senders accept is
/// not reachable. Its bundle answers `NO_PREKEYS` and a send may leave it out, so one
/// forgotten device does not block every send to its account. Fresh keys make it
/// reachable, and required, again.
async fn stale_prekeys_make_a_device_unreachable(url: String) {
    let mut relay = Relay::start(&url, |_| {}).await;
    let mut r = rng(14);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 2);
    register_all(&relay, &[&alice, &bob]).await;
    let (b1, b2) = (&bob.devices[0], &bob.devices[1]);
    make_reachable(&relay, b1, &mut r).await;
    let put = async |d: &TestDevice, up: sotto_proto::PreKeyUpload| {
        let (status, _) = relay.authed(d, Method::PUT, "/v1/prekeys", up.encode()).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    };
    let bundle_of = async |d: DeviceId| {
        let path = format!("/v1/accounts/{}/bundles/{}", bob.id(), d.0);
        relay.authed(&alice.devices[0], Method::GET, &path, vec![]).await
    };
    let no_prekeys = |(status, body): (StatusCode, Vec<u8>)| {
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::NOT_FOUND, ErrorCode::NO_PREKEYS)
        );
    };
    let mut wa = relay.connect(&alice.devices[0]).await;
    assert_eq!(recv(&mut wa).await, Frame::QueueEmpty);
    let without_b2 = to_devices(&bob, Some(b2.id()), b"x");
    let mismatch = SendOutcome::DeviceMismatch {
        device_lists: vec![bob.list.signed().as_bytes().to_vec()],
    };

    // b2's signed prekey was made 31 days ago (one-time ML-KEM keys left): stale.
    let old = hour_now() - 31 * 24;
    put(b2, b2.prekeys_made(&mut r, 1, 5, 5, old)).await;
    no_prekeys(bundle_of(b2.id()).await);
    assert!(matches!(
        send_to(&mut wa, 1, without_b2.clone()).await,
        SendOutcome::Stored { .. }
    ));
    // Fresh keys: reachable, and required again.
    put(b2, b2.prekeys_made(&mut r, 10, 0, 0, hour_now())).await;
    assert_eq!(bundle_of(b2.id()).await.0, StatusCode::OK);
    assert_eq!(send_to(&mut wa, 2, without_b2.clone()).await, mismatch);

    // A fresh signed prekey but a stale last-resort key, with the one-time ML-KEM keys
    // used up: stale again. (The upload carries no one-time ML-KEM keys; the four left
    // from before, one having gone with the bundle above, are taken first.)
    let mut up = b2.prekeys_made(&mut r, 20, 0, 0, hour_now());
    up.last_resort_kem_prekey = b2.prekeys_made(&mut r, 30, 0, 0, old).last_resort_kem_prekey;
    put(b2, up).await;
    for _ in 0..4 {
        assert_eq!(bundle_of(b2.id()).await.0, StatusCode::OK);
    }
    no_prekeys(bundle_of(b2.id()).await);
    assert!(matches!(
        send_to(&mut wa, 3, without_b2).await,
        SendOutcome::Stored { .. }
    ));
    // Keys made more than half a day ahead of the relay's clock are not served either.
    put(b2, b2.prekeys_made(&mut r, 40, 0, 0, hour_now() + 13)).await;
    no_prekeys(bundle_of(b2.id()).await);
    drop(wa);
    relay.stop().await;
}

async fn registration(url: String) {
    let relay = Relay::start(&url, |_| {}).await;
    let mut r = rng(10);
    let mut alice = account(&mut r, 2);
    let bob = account(&mut r, 1);
    let path = format!("/v1/accounts/{}/device-list", alice.id());
    let (status, body) = relay.get(&path).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, ErrorCode::UNKNOWN_ACCOUNT)
    );
    assert_eq!(relay.register(&alice).await, StatusCode::CREATED);
    let (status, body) = relay.get(&path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        DeviceListBody::decode(&body).unwrap().signed_list,
        alice.list.signed().as_bytes()
    );
    // Same version again.
    let (status, body) = relay.put_list(&alice.id(), alice.list.signed().as_bytes()).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, ErrorCode::STALE_DEVICE_LIST)
    );
    // Bob's list under alice's id.
    let (status, body) = relay.put_list(&alice.id(), bob.list.signed().as_bytes()).await;
    assert_eq!(error_code(&body), ErrorCode::ACCOUNT_MISMATCH, "{status}");
    // A forged signature.
    let mut forged = alice.list.signed().as_bytes().to_vec();
    *forged.last_mut().unwrap() ^= 1;
    let (_, body) = relay.put_list(&alice.id(), &forged).await;
    assert_eq!(error_code(&body), ErrorCode::BAD_DEVICE_LIST);
    // A newer version.
    let d3 = device(alice.id(), 3, &mut r);
    let mut devices = std::mem::take(&mut alice.devices);
    devices.push(d3);
    alice.relist(2, devices);
    assert_eq!(relay.register(&alice).await, StatusCode::OK);
    // Garbage, bad account path, unknown route.
    let (status, body) = relay.http(Method::PUT, &path, None, vec![9, 9, 9]).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, ErrorCode::UNSUPPORTED_VERSION)
    );
    let (_, body) = relay.get("/v1/accounts/nope/device-list").await;
    assert_eq!(error_code(&body), ErrorCode::MALFORMED);
    let (status, body) = relay.get("/nope").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, ErrorCode::NOT_FOUND)
    );
}

async fn authentication(url: String) {
    let relay = Relay::start(&url, |_| {}).await;
    let mut r = rng(11);
    let alice = account(&mut r, 2);
    register_all(&relay, &[&alice]).await;
    let d1 = &alice.devices[0];

    // Good.
    let mut ws = relay.connect(d1).await;
    assert_eq!(recv(&mut ws).await, Frame::QueueEmpty);

    // Bad signature: device 2's key signs for device 1.
    let (mut ws2, c) = relay.open().await;
    let mut forged = answer(d1, &c);
    if let Frame::AuthResponse(a) = &mut forged {
        a.signature = alice.devices[1].sign_challenge(&c);
    }
    send(&mut ws2, &forged).await;
    assert_eq!(
        recv(&mut ws2).await,
        Frame::Error {
            code: ErrorCode::AUTH_FAILED
        }
    );
    closed(&mut ws2).await;

    // Replayed: a valid answer to an earlier connection's challenge.
    let (ws3, c3) = relay.open().await;
    let recorded = answer(d1, &c3);
    let (mut ws4, _) = relay.open().await;
    send(&mut ws4, &recorded).await;
    assert_eq!(
        recv(&mut ws4).await,
        Frame::Error {
            code: ErrorCode::CHALLENGE_UNKNOWN
        }
    );
    closed(&mut ws4).await;
    hang_up(ws3).await;

    // Unknown device.
    let stranger = device(alice.id(), 9, &mut r);
    let (mut ws5, c) = relay.open().await;
    send(&mut ws5, &answer(&stranger, &c)).await;
    assert_eq!(
        recv(&mut ws5).await,
        Frame::Error {
            code: ErrorCode::AUTH_FAILED
        }
    );

    // A send before authenticating.
    let (mut ws6, _) = relay.open().await;
    send(&mut ws6, &Frame::Ack { seq: 1 }).await;
    assert_eq!(
        recv(&mut ws6).await,
        Frame::Error {
            code: ErrorCode::AUTH_REQUIRED
        }
    );

    // HTTP: missing header, replayed header, wrong device.
    let (status, body) = relay.http(Method::GET, "/v1/prekeys/count", None, vec![]).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNAUTHORIZED, ErrorCode::AUTH_REQUIRED)
    );
    let h = relay.auth(d1, &Method::GET, "/v1/prekeys/count", &[]).await;
    let (status, _) = relay
        .http(Method::GET, "/v1/prekeys/count", Some(h.clone()), vec![])
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = relay.http(Method::GET, "/v1/prekeys/count", Some(h), vec![]).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNAUTHORIZED, ErrorCode::CHALLENGE_UNKNOWN)
    );
    let h = relay.auth(&stranger, &Method::GET, "/v1/prekeys/count", &[]).await;
    let (_, body) = relay.http(Method::GET, "/v1/prekeys/count", Some(h), vec![]).await;
    assert_eq!(error_code(&body), ErrorCode::AUTH_FAILED);

    // A second connection for the same device replaces the first.
    let mut again = relay.connect(d1).await;
    assert_eq!(
        recv(&mut ws).await,
        Frame::Error {
            code: ErrorCode::REPLACED
        }
    );
    closed(&mut ws).await;
    assert_eq!(recv(&mut again).await, Frame::QueueEmpty);
}

/// A device's notification extension (`AuthExtension`, docs/protocol.md §13.6) never takes
/// the socket from its app: while the app is connected the extension gets `AuthOk`, then
/// `DEVICE_ACTIVE`, and is closed, and the app keeps receiving. Without the app, the
/// extension reads the mailbox like the app does and acks it; an app that connects then
/// replaces it; a second extension replaces the first.
async fn an_extension_never_replaces_the_app(url: String) {
    let relay = Relay::start(&url, |_| {}).await;
    let mut r = rng(31);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 1);
    register_all(&relay, &[&alice, &bob]).await;
    let (a1, b1) = (&alice.devices[0], &bob.devices[0]);
    let extension = |c: &Challenge| match answer(b1, c) {
        Frame::AuthResponse(a) => Frame::AuthExtension(a),
        other => other,
    };

    let mut app = relay.connect(b1).await;
    assert_eq!(recv(&mut app).await, Frame::QueueEmpty);
    let (mut ext, c) = relay.open().await;
    send(&mut ext, &extension(&c)).await;
    assert!(matches!(recv(&mut ext).await, Frame::AuthOk { .. }));
    assert_eq!(
        recv(&mut ext).await,
        Frame::Error {
            code: ErrorCode::DEVICE_ACTIVE
        }
    );
    closed(&mut ext).await;
    // The app still has its socket and its deliveries.
    let mut sender = relay.connect(a1).await;
    assert_eq!(recv(&mut sender).await, Frame::QueueEmpty);
    assert!(matches!(
        send_to(&mut sender, 1, to_devices(&bob, None, b"one")).await,
        SendOutcome::Stored { .. }
    ));
    let (one, envelope) = expect_deliver(&mut app).await;
    assert_eq!(envelope, b"one");
    send(&mut app, &Frame::Ack { seq: one }).await;
    hang_up(app).await;

    // Without the app: the extension reads the mailbox.
    assert!(matches!(
        send_to(&mut sender, 2, to_devices(&bob, None, b"two")).await,
        SendOutcome::Stored { .. }
    ));
    let (mut ext, c) = relay.open().await;
    send(&mut ext, &extension(&c)).await;
    assert!(matches!(recv(&mut ext).await, Frame::AuthOk { .. }));
    let (seq, envelope) = expect_deliver(&mut ext).await;
    assert_eq!(envelope, b"two");
    assert_eq!(recv(&mut ext).await, Frame::QueueEmpty);
    // A second extension replaces the first; the app replaces the second.
    let (mut ext2, c) = relay.open().await;
    send(&mut ext2, &extension(&c)).await;
    assert!(matches!(recv(&mut ext2).await, Frame::AuthOk { .. }));
    assert_eq!(
        recv(&mut ext).await,
        Frame::Error {
            code: ErrorCode::REPLACED
        }
    );
    // Not acked: the second extension gets "two" again.
    assert_eq!(expect_deliver(&mut ext2).await.0, seq);
    assert_eq!(recv(&mut ext2).await, Frame::QueueEmpty);
    send(&mut ext2, &Frame::Ack { seq }).await;
    let mut app = relay.connect(b1).await;
    assert_eq!(
        recv(&mut ext2).await,
        Frame::Error {
            code: ErrorCode::REPLACED
        }
    );
    // Acked by the extension: the app finds the mailbox empty.
    assert_eq!(recv(&mut app).await, Frame::QueueEmpty);
}

/// Finding 18: an HTTP `Authorization` answer is bound to the request's method, path and
/// body. A header signed for `GET /v1/prekeys/count` is refused on `PUT /v1/push`, one
/// signed for one body is refused with another, and one for one path on another path.
async fn http_auth_is_bound_to_the_request(url: String) {
    let mut relay = Relay::start(&url, |_| {}).await;
    let mut r = rng(18);
    let alice = account(&mut r, 1);
    register_all(&relay, &[&alice]).await;
    let a1 = &alice.devices[0];
    let reg = PushRegistration {
        provider: PushProvider::Fcm,
        token: b"token".to_vec(),
    };
    let refused = |(status, body): (StatusCode, Vec<u8>)| {
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::UNAUTHORIZED, ErrorCode::AUTH_FAILED)
        );
    };
    // Another method and path.
    let h = relay.auth(a1, &Method::GET, "/v1/prekeys/count", &[]).await;
    refused(relay.http(Method::PUT, "/v1/push", Some(h), reg.encode()).await);
    // Same path, another method.
    let h = relay.auth(a1, &Method::PUT, "/v1/push", &reg.encode()).await;
    refused(relay.http(Method::DELETE, "/v1/push", Some(h), vec![]).await);
    // Same method and path, another body.
    let other = PushRegistration {
        provider: PushProvider::Fcm,
        token: b"attacker".to_vec(),
    };
    let h = relay.auth(a1, &Method::PUT, "/v1/push", &reg.encode()).await;
    refused(relay.http(Method::PUT, "/v1/push", Some(h), other.encode()).await);
    // Another account's bundles than the one signed for.
    let h = relay
        .auth(a1, &Method::GET, &format!("/v1/accounts/{}/bundles/1", alice.id()), &[])
        .await;
    refused(
        relay
            .http(
                Method::GET,
                &format!("/v1/accounts/{}/bundles/2", alice.id()),
                Some(h),
                vec![],
            )
            .await,
    );
    // The request signed for is accepted.
    let h = relay.auth(a1, &Method::PUT, "/v1/push", &reg.encode()).await;
    let (status, _) = relay.http(Method::PUT, "/v1/push", Some(h), reg.encode()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    relay.stop().await;
}

/// Finding 12, relay side: a device list's version may grow by at most 1024 per upload
/// (at most 1024 at registration), so no upload can reach a version that leaves no room
/// for later ones (the poison pill 2^64−1).
async fn device_list_version_jumps_are_refused(url: String) {
    let mut relay = Relay::start(&url, |_| {}).await;
    let mut r = rng(12);
    let mut alice = account(&mut r, 1);
    let jump = |(status, body): (StatusCode, Vec<u8>)| {
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::BAD_REQUEST, ErrorCode::VERSION_JUMP)
        );
    };
    let devices = |a: &mut TestAccount| std::mem::take(&mut a.devices);
    // Versions above MAX_VERSION (2^63−1) cannot be signed at all (crypto-core refuses
    // them at signing and at decoding); the largest signable version is refused as a jump.
    for v in [1025, MAX_VERSION] {
        let d = devices(&mut alice);
        alice.relist(v, d);
        jump(relay.put_list(&alice.id(), alice.list.signed().as_bytes()).await);
    }
    let d = devices(&mut alice);
    alice.relist(1024, d);
    assert_eq!(relay.register(&alice).await, StatusCode::CREATED);
    for v in [1024 + 1025, MAX_VERSION] {
        let d = devices(&mut alice);
        alice.relist(v, d);
        jump(relay.put_list(&alice.id(), alice.list.signed().as_bytes()).await);
    }
    let d = devices(&mut alice);
    alice.relist(2048, d);
    assert_eq!(relay.register(&alice).await, StatusCode::OK);
    relay.stop().await;
}

/// Finding 12, relay side: a device that held the list key, once a list under a new list
/// key removed it, cannot put itself back, at any version; and under the old list key no
/// upload could have removed a holder (`LIST_KEY_REVOKED`, 409).
async fn a_revoked_list_key_cannot_publish(url: String) {
    let mut relay = Relay::start(&url, |_| {}).await;
    let mut r = rng(13);
    let alice = account(&mut r, 3);
    let entries = |ids: &[u32]| -> Vec<sotto_crypto::DeviceEntry> {
        alice
            .devices
            .iter()
            .filter(|d| ids.contains(&d.id().0))
            .map(|d| d.device.entry())
            .collect()
    };
    let lk1 = alice.ak.list_key(1).unwrap();
    let put = |l: &sotto_crypto::DeviceList| l.signed().as_bytes().to_vec();
    let revoked = |(status, body): (StatusCode, Vec<u8>)| {
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::CONFLICT, ErrorCode::LIST_KEY_REVOKED)
        );
    };
    // Devices 1 and 2 hold the epoch-1 list key.
    let v1 = lk1
        .sign_device_list(1, 0, entries(&[1, 2, 3]), &[DeviceId(1), DeviceId(2)])
        .unwrap();
    assert_eq!(relay.put_list(&alice.id(), &put(&v1)).await.0, StatusCode::CREATED);
    // Device 2 cannot drop device 1 (a holder) under that key, nor demote it.
    let coup = lk1.sign_device_list(2, 0, entries(&[2, 3]), &[DeviceId(2)]).unwrap();
    revoked(relay.put_list(&alice.id(), &put(&coup)).await);
    let demote = lk1.sign_device_list(2, 0, entries(&[1, 2, 3]), &[DeviceId(2)]).unwrap();
    revoked(relay.put_list(&alice.id(), &put(&demote)).await);
    // Device 3 (no list key) is removed under the same key.
    let v2 = lk1
        .sign_device_list(2, 0, entries(&[1, 2]), &[DeviceId(1), DeviceId(2)])
        .unwrap();
    assert_eq!(relay.put_list(&alice.id(), &put(&v2)).await.0, StatusCode::OK);
    // The recovery key makes the epoch-2 list key, which removes device 2.
    let lk2 = alice.ak.list_key(2).unwrap();
    let v3 = lk2.sign_device_list(3, 0, entries(&[1]), &[DeviceId(1)]).unwrap();
    assert_eq!(relay.put_list(&alice.id(), &put(&v3)).await.0, StatusCode::OK);
    // Device 2 still holds the epoch-1 key: whatever it signs is refused.
    for v in [4, 100, 3 + MAX_VERSION_STEP] {
        let back = lk1
            .sign_device_list(v, 0, entries(&[1, 2]), &[DeviceId(1), DeviceId(2)])
            .unwrap();
        revoked(relay.put_list(&alice.id(), &put(&back)).await);
    }
    let (status, body) = relay
        .http(
            Method::GET,
            &format!("/v1/accounts/{}/device-list", alice.id()),
            None,
            vec![],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(DeviceListBody::decode(&body).unwrap().signed_list, put(&v3));
    relay.stop().await;
}

/// Device-list updates are limited per account: a list key being revoked cannot push
/// the version far, nor keep the relay verifying lists (`RATE_LIMITED`, 429).
async fn list_updates_are_limited_per_account(url: String) {
    let mut relay = Relay::start(&url, |c: &mut Config| {
        c.limits.list_updates_per_minute_per_account = 1;
        c.limits.list_updates_burst_per_account = 3;
    })
    .await;
    let mut r = rng(14);
    let mut alice = account(&mut r, 1);
    let bob = account(&mut r, 1);
    assert_eq!(relay.register(&alice).await, StatusCode::CREATED);
    assert_eq!(relay.register(&bob).await, StatusCode::CREATED);
    for v in 2..=4 {
        let d = std::mem::take(&mut alice.devices);
        alice.relist(v, d);
        assert_eq!(relay.register(&alice).await, StatusCode::OK, "update {v}");
    }
    let d = std::mem::take(&mut alice.devices);
    alice.relist(5, d);
    let (status, body) = relay.put_list(&alice.id(), alice.list.signed().as_bytes()).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RATE_LIMITED)
    );
    // Another account is not held up.
    let mut bob = bob;
    let d = std::mem::take(&mut bob.devices);
    bob.relist(2, d);
    assert_eq!(relay.register(&bob).await, StatusCode::OK);
    relay.stop().await;
}

/// Finding 14: a drain of a victim's one-time prekeys is stopped (per requester: refused;
/// per target: further bundles carry no one-time prekey) while a legitimate sender still
/// gets a valid bundle; registrations are rate limited per address.
async fn prekey_drain_is_bounded(url: String) {
    let mut relay = Relay::start(&url, |c: &mut Config| {
        c.limits.bundles_per_minute_per_requester = 1;
        c.limits.bundles_burst_per_requester = 5;
        c.limits.one_time_bundles_per_minute_per_target = 1;
        c.limits.one_time_bundles_burst_per_target = 8;
        c.limits.registrations_per_minute_per_addr = 1;
        c.limits.registrations_burst_per_addr = 4;
    })
    .await;
    let mut r = rng(141);
    let victim = account(&mut r, 1);
    let mallory = account(&mut r, 1);
    let mallory2 = account(&mut r, 1);
    let bob = account(&mut r, 1);
    register_all(&relay, &[&victim, &mallory, &mallory2, &bob]).await;
    // A fifth registration from the same address is refused; updates are not limited.
    let extra = account(&mut r, 1);
    let (status, body) = relay.put_list(&extra.id(), extra.list.signed().as_bytes()).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RATE_LIMITED)
    );
    let v = &victim.devices[0];
    let up = v.prekeys(&mut r, 1, 20, 5);
    let (status, _) = relay.authed(v, Method::PUT, "/v1/prekeys", up.encode()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let path = format!("/v1/accounts/{}/bundles/1", victim.id());
    let mut one_time = 0;
    // Mallory: 5 bundles, then refused.
    for i in 0..6 {
        let (status, body) = relay.authed(&mallory.devices[0], Method::GET, &path, vec![]).await;
        if i < 5 {
            assert_eq!(status, StatusCode::OK);
            let b = Bundles::decode(&body).unwrap().bundles.remove(0);
            one_time += usize::from(b.one_time_prekey.is_some());
        } else {
            assert_eq!(
                (status, error_code(&body)),
                (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RATE_LIMITED)
            );
        }
    }
    // Mallory's second account: served, but the victim's one-time budget (8) runs out.
    for _ in 0..5 {
        let (status, body) = relay.authed(&mallory2.devices[0], Method::GET, &path, vec![]).await;
        assert_eq!(status, StatusCode::OK);
        let b = Bundles::decode(&body).unwrap().bundles.remove(0);
        one_time += usize::from(b.one_time_prekey.is_some());
    }
    assert_eq!(one_time, 8, "one-time prekeys handed out during the drain");
    // Bob, a legitimate sender, still gets a valid bundle (last-resort ML-KEM key).
    let (status, body) = relay.authed(&bob.devices[0], Method::GET, &path, vec![]).await;
    assert_eq!(status, StatusCode::OK);
    let b = Bundles::decode(&body).unwrap().bundles.remove(0);
    b.verify().unwrap();
    assert_eq!(b.kem_prekey.kind, PreKeyKind::KemLastResort);
    // The victim keeps the rest of its one-time prekeys.
    let (_, body) = relay.authed(v, Method::GET, "/v1/prekeys/count", vec![]).await;
    assert_eq!(PreKeyCounts::decode(&body).unwrap().one_time, 12);
    relay.stop().await;
}

/// Finding 15 (partial): a mailbox is bounded in bytes as well as in count; the bound
/// frees as envelopes are acked, and a smaller envelope that fits still goes in.
async fn mailbox_bounded_in_bytes(url: String) {
    let mut relay = Relay::start(&url, |c: &mut Config| c.limits.max_mailbox_bytes = 300_000).await;
    let mut r = rng(15);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 1);
    register_all(&relay, &[&alice, &bob]).await;
    let mut wa = relay.connect(&alice.devices[0]).await;
    assert_eq!(recv(&mut wa).await, Frame::QueueEmpty);
    let big = vec![7u8; 100_000];
    for i in 0..3 {
        let out = send_to(&mut wa, i, to_devices(&bob, None, &big)).await;
        assert_eq!(out, SendOutcome::Stored { seqs: vec![i + 1] });
    }
    // 300 000 bytes stored, far below max_mailbox_depth: one more byte is too many.
    assert_eq!(
        send_to(&mut wa, 3, to_devices(&bob, None, b"x")).await,
        SendOutcome::Rejected {
            code: ErrorCode::MAILBOX_FULL
        }
    );
    // Bob acks one: room for a big one again, and not for two.
    let mut wb = relay.connect(&bob.devices[0]).await;
    assert_eq!(expect_deliver(&mut wb).await.0, 1);
    send(&mut wb, &Frame::Ack { seq: 1 }).await;
    hang_up(wb).await;
    // A new connection commits the device's queued acks before it reads the mailbox.
    let mut wb = relay.connect(&bob.devices[0]).await;
    assert_eq!(expect_deliver(&mut wb).await.0, 2);
    assert_eq!(expect_deliver(&mut wb).await.0, 3);
    assert_eq!(recv(&mut wb).await, Frame::QueueEmpty);
    assert_eq!(
        send_to(&mut wa, 10, to_devices(&bob, None, &big)).await,
        SendOutcome::Stored { seqs: vec![4] }
    );
    assert_eq!(
        send_to(&mut wa, 99, to_devices(&bob, None, &big)).await,
        SendOutcome::Rejected {
            code: ErrorCode::MAILBOX_FULL
        }
    );
    drop(wa);
    relay.stop().await;
}

/// A send presenting access keys (`keys`: account and key) on `ws`, anonymous or not.
async fn send_with_keys(
    ws: &mut Ws,
    message_id: u64,
    keys: &[(sotto_crypto::AccountId, [u8; 32])],
    recipients: Vec<Recipient>,
) -> SendOutcome {
    let mut access: Vec<Access> = keys
        .iter()
        .map(|(a, k)| Access {
            account_id: *a,
            key: AccessKey(*k),
        })
        .collect();
    access.sort_by_key(|a| a.account_id.0);
    send(
        ws,
        &Frame::Send(Send {
            message_id,
            access,
            body: vec![],
            recipients,
        }),
    )
    .await;
    loop {
        match recv(ws).await {
            Frame::SendResult(SendResult {
                message_id: id,
                outcome,
            }) if id == message_id => return outcome,
            Frame::Deliver(_) | Frame::QueueEmpty | Frame::EphemeralDeliver { .. } => {}
            other => panic!("expected the send's result, got {other:?}"),
        }
    }
}

/// Finding 15: once an account sets an access verifier, a send without its key is a
/// message request: stored within a small quota of its own, so strangers cannot fill the
/// mailbox its contacts need (or refused, when the account takes no requests), while a
/// send with the key is stored as before. Authenticating does not stand in for the key.
async fn anonymous_sends_need_the_access_key(url: String) {
    let mut relay = Relay::start(&url, |c: &mut Config| c.limits.max_request_depth = 3).await;
    let mut r = rng(151);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 1);
    let mallory = account(&mut r, 1);
    register_all(&relay, &[&alice, &bob, &mallory]).await;
    let key = [0x42u8; 32];
    let policy = |accept_requests| AccessPolicy {
        verifier: AccessKey(key).verifier(),
        accept_requests,
    };
    // Only the account's own devices may set it.
    let (status, body) = relay.http(Method::PUT, "/v1/access", None, policy(true).encode()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body), ErrorCode::AUTH_REQUIRED);
    // Before Bob sets a verifier, every send is stored as before.
    let mut stranger = relay.open_anonymous().await;
    assert!(matches!(
        send_anon(&mut stranger, 1, to_devices(&bob, None, b"hello")).await,
        SendOutcome::Stored { .. }
    ));
    let (status, _) = relay
        .authed(&bob.devices[0], Method::PUT, "/v1/access", policy(true).encode())
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // Strangers: two more requests fit (the first one counts as a contact's, stored before
    // the verifier), then the request quota is full; a wrong key is no key.
    let wrong = [(bob.id(), [0x41u8; 32])];
    for i in 2..4 {
        assert!(matches!(
            send_with_keys(&mut stranger, i, &wrong, to_devices(&bob, None, b"request")).await,
            SendOutcome::Stored { .. }
        ));
    }
    assert!(matches!(
        send_anon(&mut stranger, 4, to_devices(&bob, None, b"request")).await,
        SendOutcome::Stored { .. }
    ));
    let full = SendOutcome::Rejected {
        code: ErrorCode::REQUESTS_FULL,
    };
    assert_eq!(send_anon(&mut stranger, 5, to_devices(&bob, None, b"more")).await, full);
    // Mallory's authenticated connection is no better than an anonymous one.
    let mut wm = relay.connect(&mallory.devices[0]).await;
    assert_eq!(recv(&mut wm).await, Frame::QueueEmpty);
    assert_eq!(
        send_with_keys(&mut wm, 6, &[], to_devices(&bob, None, b"more")).await,
        full
    );
    // Alice, a contact, has the key: her sends are stored while the request quota is full.
    let mut contact = relay.open_anonymous().await;
    for i in 10..20 {
        assert!(matches!(
            send_with_keys(
                &mut contact,
                i,
                &[(bob.id(), key)],
                to_devices(&bob, None, b"from alice")
            )
            .await,
            SendOutcome::Stored { .. }
        ));
    }
    // Bob reads and acks everything: the request quota frees.
    let mut wb = relay.connect(&bob.devices[0]).await;
    let mut last = 0;
    for _ in 0..14 {
        last = expect_deliver(&mut wb).await.0;
    }
    assert_eq!(recv(&mut wb).await, Frame::QueueEmpty);
    send(&mut wb, &Frame::Ack { seq: last }).await;
    hang_up(wb).await;
    let _wb = relay.connect(&bob.devices[0]).await;
    assert!(matches!(
        send_anon(&mut stranger, 7, to_devices(&bob, None, b"request")).await,
        SendOutcome::Stored { .. }
    ));
    // Bob takes no requests: strangers are refused, Alice is not.
    let (status, _) = relay
        .authed(&bob.devices[0], Method::PUT, "/v1/access", policy(false).encode())
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        send_anon(&mut stranger, 8, to_devices(&bob, None, b"request")).await,
        SendOutcome::Rejected {
            code: ErrorCode::ACCESS_DENIED
        }
    );
    // One account without its key refuses the whole send, also with a key for another.
    let mut both = to_devices(&bob, None, b"x");
    both.extend(to_devices(&alice, None, b"x"));
    assert_eq!(
        send_with_keys(&mut stranger, 9, &[(alice.id(), [1; 32])], both).await,
        SendOutcome::Rejected {
            code: ErrorCode::ACCESS_DENIED
        }
    );
    assert!(matches!(
        send_with_keys(
            &mut contact,
            30,
            &[(bob.id(), key)],
            to_devices(&bob, None, b"from alice")
        )
        .await,
        SendOutcome::Stored { .. }
    ));
    assert_eq!(
        relay.state.store.access(&bob.id()).await.unwrap(),
        Some(sotto_relay::storage::AccountAccess {
            verifier: Some(AccessKey(key).verifier()),
            accept_requests: false,
        })
    );
    // Counted, without identifiers.
    let metrics = relay.metrics().await;
    assert!(metrics.contains("sotto_relay_requests_full_total 2"), "{metrics}");
    assert!(metrics.contains("sotto_relay_requests_denied_total 2"), "{metrics}");
    drop((stranger, contact, wm));
    relay.stop().await;
}

async fn prekeys(url: String) {
    let relay = Relay::start(&url, |_| {}).await;
    let mut r = rng(12);
    let alice = account(&mut r, 2);
    let bob = account(&mut r, 1);
    register_all(&relay, &[&alice, &bob]).await;
    let (a1, a2) = (&alice.devices[0], &alice.devices[1]);

    // Signed by the wrong device.
    let wrong = a2.prekeys(&mut r, 1, 1, 0);
    let (status, body) = relay.authed(a1, Method::PUT, "/v1/prekeys", wrong.encode()).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, ErrorCode::BAD_PREKEY)
    );

    for (d, n) in [(a1, 3), (a2, 40)] {
        let up = d.prekeys(&mut r, 1, n, 1);
        let (status, _) = relay.authed(d, Method::PUT, "/v1/prekeys", up.encode()).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    let (_, body) = relay.authed(a1, Method::GET, "/v1/prekeys/count", vec![]).await;
    assert_eq!(
        PreKeyCounts::decode(&body).unwrap(),
        PreKeyCounts {
            one_time: 3,
            kem_one_time: 1,
            has_signed_prekey: true,
            has_last_resort: true
        }
    );

    let b = &bob.devices[0];
    let fetch_one = |dev: u32| format!("/v1/accounts/{}/bundles/{dev}", alice.id());
    // All devices of the account.
    let (status, body) = relay
        .authed(b, Method::GET, &format!("/v1/accounts/{}/bundles", alice.id()), vec![])
        .await;
    assert_eq!(status, StatusCode::OK);
    let all = Bundles::decode(&body).unwrap().bundles;
    assert_eq!(all.len(), 2);
    for bundle in &all {
        bundle.verify().unwrap();
        assert!(bundle.one_time_prekey.is_some());
    }
    // Exhaust device 1: 2 one-time prekeys left, then last resort and no OPK.
    let mut seen = BTreeSet::new();
    for i in 0..3 {
        let (_, body) = relay.authed(b, Method::GET, &fetch_one(1), vec![]).await;
        let bundle = Bundles::decode(&body).unwrap().bundles.remove(0);
        bundle.verify().unwrap();
        assert_eq!(bundle.kem_prekey.kind, PreKeyKind::KemLastResort);
        match bundle.one_time_prekey {
            Some(k) => assert!(seen.insert(k.id) && i < 2),
            None => assert_eq!(i, 2),
        }
    }
    let (_, body) = relay.authed(a1, Method::GET, "/v1/prekeys/count", vec![]).await;
    assert_eq!(PreKeyCounts::decode(&body).unwrap().one_time, 0);
    // No prekeys at all for bob.
    let (status, body) = relay
        .authed(b, Method::GET, &format!("/v1/accounts/{}/bundles/1", bob.id()), vec![])
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, ErrorCode::NO_PREKEYS)
    );

    // Many concurrent fetchers of device 2 (39 one-time prekeys left) never share one.
    let path = fetch_one(2);
    let mut headers = Vec::new();
    for _ in 0..30 {
        headers.push(relay.auth(b, &Method::GET, &path, &[]).await);
    }
    let relay_ref = &relay;
    let results = futures_util::future::join_all(headers.into_iter().map(|h| {
        let path = path.clone();
        async move { relay_ref.http(Method::GET, &path, Some(h), vec![]).await }
    }))
    .await;
    let mut ids = BTreeSet::new();
    for (status, body) in results {
        assert_eq!(status, StatusCode::OK);
        let k = Bundles::decode(&body)
            .unwrap()
            .bundles
            .remove(0)
            .one_time_prekey
            .unwrap();
        assert!(ids.insert(k.id), "one-time prekey {} handed out twice", k.id);
    }
    assert_eq!(ids.len(), 30);

    // Push registration.
    let reg = PushRegistration {
        provider: PushProvider::Fcm,
        token: b"token".to_vec(),
    };
    let (status, _) = relay.authed(a1, Method::PUT, "/v1/push", reg.encode()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = relay.authed(a1, Method::DELETE, "/v1/push", vec![]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

async fn messaging(url: String) {
    let relay = Relay::start(&url, |c: &mut Config| c.limits.expiry_interval_secs = 1).await;
    let mut r = rng(13);
    let alice = account(&mut r, 2);
    let bob = account(&mut r, 2);
    register_all(&relay, &[&alice, &bob]).await;
    let (a1, b1, b2) = (&alice.devices[0], &bob.devices[0], &bob.devices[1]);

    let mut wa = relay.connect(a1).await;
    assert_eq!(recv(&mut wa).await, Frame::QueueEmpty);
    let mut wb1 = relay.connect(b1).await;
    assert_eq!(recv(&mut wb1).await, Frame::QueueEmpty);

    // Online b1 gets it at once; b2 is offline; a2 (alice's other device) too.
    for (i, text) in [b"one".as_slice(), b"two", b"three"].iter().enumerate() {
        let mut rc = to_devices(&bob, None, text);
        rc.extend(to_devices(&alice, Some(a1.id()), text));
        let n = i as u64 + 1;
        assert_eq!(
            send_to(&mut wa, n, rc).await,
            SendOutcome::Stored { seqs: vec![n, n, n] }
        );
        assert_eq!(expect_deliver(&mut wb1).await, (n, text.to_vec()));
    }
    // Device-set mismatch: bob's device 2 (reachable) missing.
    make_reachable(&relay, b2, &mut r).await;
    let short = to_devices(&bob, Some(b2.id()), b"x");
    assert_eq!(
        send_to(&mut wa, 9, short).await,
        SendOutcome::DeviceMismatch {
            device_lists: vec![bob.list.signed().as_bytes().to_vec()]
        }
    );

    // b1 acks 2 and reconnects: resumes with 3.
    send(&mut wb1, &Frame::Ack { seq: 2 }).await;
    hang_up(wb1).await;
    let mut wb1 = relay.connect(b1).await;
    assert_eq!(expect_deliver(&mut wb1).await, (3, b"three".to_vec()));
    assert_eq!(recv(&mut wb1).await, Frame::QueueEmpty);
    send(&mut wb1, &Frame::Ack { seq: 3 }).await;
    // Acking ahead of what was delivered is an error, and the connection stays usable.
    send(&mut wb1, &Frame::Ack { seq: 99 }).await;
    assert_eq!(
        recv(&mut wb1).await,
        Frame::Error {
            code: ErrorCode::ACK_AHEAD
        }
    );
    hang_up(wb1).await;
    let mut wb1 = relay.connect(b1).await;
    assert_eq!(recv(&mut wb1).await, Frame::QueueEmpty);

    // Offline b2 gets all three on connect.
    let mut wb2 = relay.connect(b2).await;
    for n in 1..=3 {
        assert_eq!(expect_deliver(&mut wb2).await.0, n);
    }
    assert_eq!(recv(&mut wb2).await, Frame::QueueEmpty);

    // Ephemeral: to bob's connected devices only, never stored.
    send(
        &mut wa,
        &Frame::Ephemeral {
            to: bob.id(),
            payload: b"typing".to_vec(),
        },
    )
    .await;
    assert_eq!(
        recv(&mut wb1).await,
        Frame::EphemeralDeliver {
            payload: b"typing".to_vec()
        }
    );
    assert_eq!(
        recv(&mut wb2).await,
        Frame::EphemeralDeliver {
            payload: b"typing".to_vec()
        }
    );
    hang_up(wb2).await;
    let mut wb2 = relay.connect(b2).await;
    for n in 1..=3 {
        assert_eq!(expect_deliver(&mut wb2).await.0, n);
    }
    assert_eq!(recv(&mut wb2).await, Frame::QueueEmpty);

    // A malformed frame is answered and the connection stays usable.
    wa.send_raw(vec![1, 0x10, 0]).await;
    assert_eq!(
        recv(&mut wa).await,
        Frame::Error {
            code: ErrorCode::MALFORMED
        }
    );
    let mut rc = to_devices(&bob, None, b"four");
    rc.extend(to_devices(&alice, Some(a1.id()), b"four"));
    assert_eq!(
        send_to(&mut wa, 10, rc).await,
        SendOutcome::Stored { seqs: vec![4, 4, 4] }
    );
    assert_eq!(expect_deliver(&mut wb1).await, (4, b"four".to_vec()));

    let text = relay.metrics().await;
    assert!(text.contains("sotto_relay_sends_stored_total 4"), "{text}");
    assert!(text.contains("sotto_relay_connections_open 3"), "{text}");
    // Latency histograms and queue gauges. Mailboxes: b2 holds 1..=4 (it acked nothing),
    // b1 holds 4 (it acked 3), a2 holds 1..=4.
    assert!(text.contains("sotto_relay_send_store_seconds_count 5"), "{text}");
    assert!(
        text.contains("sotto_relay_send_store_seconds_bucket{le=\"+Inf\"} 5"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE sotto_relay_write_batch_seconds histogram"),
        "{text}"
    );
    // The writer keeps the total; the expiry run refreshes the fullest mailbox.
    assert!(text.contains("sotto_relay_mailbox_envelopes 9"), "{text}");
    tokio::time::timeout(FAILSAFE, async {
        while !relay.metrics().await.contains("sotto_relay_mailbox_depth_max 4") {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the fullest mailbox is refreshed by the expiry run");
}

/// Delivery within the window: envelopes committed while the window is full overflow the
/// connection's live queue and come from the database, in order, each once; once caught
/// up, new envelopes are handed over live again.
async fn windowed_delivery(url: String) {
    let relay = Relay::start(&url, |c| {
        c.limits.deliver_window = 4;
        c.limits.rate_per_second = 1000;
        c.limits.rate_burst = 1000;
    })
    .await;
    let mut r = rng(17);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 1);
    register_all(&relay, &[&alice, &bob]).await;
    let mut wa = relay.connect(&alice.devices[0]).await;
    assert_eq!(recv(&mut wa).await, Frame::QueueEmpty);
    let mut wb = relay.connect(&bob.devices[0]).await;
    assert_eq!(recv(&mut wb).await, Frame::QueueEmpty);
    for n in 1..=40u64 {
        let outcome = send_to(&mut wa, n, to_devices(&bob, None, &n.to_be_bytes())).await;
        assert_eq!(outcome, SendOutcome::Stored { seqs: vec![n] });
    }
    let mut got = Vec::new();
    while got.len() < 40 {
        // A full window: exactly four deliveries, then an ack of all of them opens it.
        for _ in 0..4 {
            let (seq, body) = expect_deliver(&mut wb).await;
            assert_eq!(body, seq.to_be_bytes());
            got.push(seq);
        }
        send(
            &mut wb,
            &Frame::Ack {
                seq: *got.last().unwrap(),
            },
        )
        .await;
    }
    assert_eq!(got, (1..=40).collect::<Vec<u64>>());
    // Caught up: the next envelope arrives live.
    let outcome = send_to(&mut wa, 41, to_devices(&bob, None, &41u64.to_be_bytes())).await;
    assert_eq!(outcome, SendOutcome::Stored { seqs: vec![41] });
    assert_eq!(expect_deliver(&mut wb).await.0, 41);
    // Everything acked before a reconnect stays acked.
    send(&mut wb, &Frame::Ack { seq: 41 }).await;
    hang_up(wb).await;
    let mut wb = relay.connect(&bob.devices[0]).await;
    assert_eq!(recv(&mut wb).await, Frame::QueueEmpty);
}

/// A device that leaves its account's list loses its connection at once (and cannot
/// authenticate again); the account's other devices keep theirs.
/// Finding 6: a mailbox's seq never repeats, also when its device is removed and added
/// again; the mailbox epoch of `AuthOk` changes on every re-registration and every relay
/// start, and stays the same across reconnects in between.
async fn seq_survives_removal_and_epoch_changes(url: String) {
    let mut relay = Relay::start(&url, |_| {}).await;
    let mut r = rng(6);
    let mut alice = account(&mut r, 2);
    let bob = account(&mut r, 1);
    register_all(&relay, &[&alice, &bob]).await;
    let mut wb = relay.connect(&bob.devices[0]).await;
    assert_eq!(recv(&mut wb).await, Frame::QueueEmpty);
    for i in 0..3u64 {
        let out = send_to(&mut wb, i, to_devices(&alice, None, b"x")).await;
        assert!(matches!(out, SendOutcome::Stored { .. }), "{out:?}");
    }
    let (mut w2, e1) = relay.connect_epoch(&alice.devices[1]).await;
    let mut seqs = Vec::new();
    for _ in 0..3 {
        seqs.push(expect_deliver(&mut w2).await.0);
    }
    assert_eq!(seqs, [1, 2, 3]);
    send(&mut w2, &Frame::Ack { seq: 3 }).await;
    assert_eq!(recv(&mut w2).await, Frame::QueueEmpty);
    drop(w2);
    // Reconnecting to the same relay process keeps the epoch.
    let (w2, again) = relay.connect_epoch(&alice.devices[1]).await;
    assert_eq!(again, e1);
    drop(w2);

    // Device 2 leaves the list (v2) and comes back (v3).
    let mut devices = std::mem::take(&mut alice.devices);
    let two = devices.pop().unwrap();
    alice.relist(2, devices);
    assert_eq!(relay.register(&alice).await, StatusCode::OK);
    let mut devices = std::mem::take(&mut alice.devices);
    devices.push(two);
    alice.relist(3, devices);
    assert_eq!(relay.register(&alice).await, StatusCode::OK);
    let out = send_to(&mut wb, 9, to_devices(&alice, None, b"after")).await;
    let SendOutcome::Stored { seqs } = out else {
        panic!("{out:?}")
    };
    assert_eq!(seqs[1], 4, "the re-added mailbox numbers on from its last seq");
    let (mut w2, e2) = relay.connect_epoch(&alice.devices[1]).await;
    assert_ne!(e2, e1, "a re-registration starts a new epoch");
    assert_eq!(expect_deliver(&mut w2).await, (4, b"after".to_vec()));
    drop(w2);
    drop(wb);

    // A restart (as after a database restore) starts a new epoch too.
    relay.stop().await;
    let relay = Relay::start(&url, |_| {}).await;
    let (_w2, e3) = relay.connect_epoch(&alice.devices[1]).await;
    assert_ne!(e3, e2, "a relay start starts a new epoch");
}

async fn removed_device_is_disconnected(url: String) {
    let relay = Relay::start(&url, |_| {}).await;
    let mut r = rng(23);
    let mut alice = account(&mut r, 2);
    register_all(&relay, &[&alice]).await;
    let mut w1 = relay.connect(&alice.devices[0]).await;
    assert_eq!(recv(&mut w1).await, Frame::QueueEmpty);
    let mut w2 = relay.connect(&alice.devices[1]).await;
    assert_eq!(recv(&mut w2).await, Frame::QueueEmpty);
    let mut devices = std::mem::take(&mut alice.devices);
    let removed = devices.pop().unwrap();
    alice.relist(2, devices);
    assert_eq!(relay.register(&alice).await, StatusCode::OK);
    assert_eq!(
        recv(&mut w2).await,
        Frame::Error {
            code: ErrorCode::UNKNOWN_DEVICE
        }
    );
    closed(&mut w2).await;
    let (mut ws, c) = relay.open().await;
    send(&mut ws, &answer(&removed, &c)).await;
    assert_eq!(
        recv(&mut ws).await,
        Frame::Error {
            code: ErrorCode::AUTH_FAILED
        }
    );
    // Device 1 is still connected and served.
    send(
        &mut w1,
        &Frame::Ephemeral {
            to: alice.id(),
            payload: b"x".to_vec(),
        },
    )
    .await;
    send(&mut w1, &Frame::Ack { seq: 0 }).await;
    w1.send_raw(vec![1, 0x10, 0]).await;
    assert_eq!(
        recv(&mut w1).await,
        Frame::Error {
            code: ErrorCode::MALFORMED
        }
    );
}

/// Sends written back to back without waiting are stored in order and answered in order,
/// more of them than a connection may have in flight included.
async fn pipelined_sends(url: String) {
    let relay = Relay::start(&url, |c| {
        c.limits.rate_per_second = 1000;
        c.limits.rate_burst = 1000;
    })
    .await;
    let mut r = rng(19);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 1);
    register_all(&relay, &[&alice, &bob]).await;
    let n = 3 * sotto_relay::ws::MAX_PIPELINED_SENDS as u64;
    for (mut ws, first) in [
        (relay.connect(&alice.devices[0]).await, 1),
        (relay.open_anonymous().await, n + 1),
    ] {
        for id in first..first + n {
            send(
                &mut ws,
                &Frame::Send(Send {
                    message_id: id,
                    access: vec![],
                    body: vec![],
                    recipients: to_devices(&bob, None, b"p"),
                }),
            )
            .await;
        }
        let mut id = first;
        while id < first + n {
            match recv(&mut ws).await {
                Frame::SendResult(SendResult { message_id, outcome }) => {
                    assert_eq!(message_id, id);
                    assert_eq!(outcome, SendOutcome::Stored { seqs: vec![id] });
                    id += 1;
                }
                Frame::QueueEmpty => assert_eq!(first, 1, "only the authenticated connection has a mailbox"),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

/// A send on an anonymous connection: the very next frame must be its result (an
/// anonymous connection never receives deliveries or ephemeral frames).
async fn send_anon(ws: &mut Ws, message_id: u64, recipients: Vec<Recipient>) -> SendOutcome {
    send_with_keys(ws, message_id, &[], recipients).await
}

async fn anonymous(url: String) {
    let relay = Relay::start(&url, |c: &mut Config| {
        c.limits.challenge_ttl_secs = 1;
        c.heartbeat.ping_interval_ms = 100;
        c.heartbeat.idle_timeout_ms = 1000;
    })
    .await;
    let mut r = rng(16);
    let alice = account(&mut r, 2);
    let bob = account(&mut r, 2);
    register_all(&relay, &[&alice, &bob]).await;
    let (a1, b1, b2) = (&alice.devices[0], &bob.devices[0], &bob.devices[1]);
    let mut wb1 = relay.connect(b1).await;
    assert_eq!(recv(&mut wb1).await, Frame::QueueEmpty);

    // A send instead of the AuthResponse opens an anonymous connection; Bob gets it on his
    // authenticated one.
    let mut anon = relay.open_anonymous().await;
    assert_eq!(
        send_anon(&mut anon, 1, to_devices(&bob, None, b"sealed one")).await,
        SendOutcome::Stored { seqs: vec![1, 1] }
    );
    assert_eq!(expect_deliver(&mut wb1).await, (1, b"sealed one".to_vec()));

    // No mailbox: ack, ephemeral and a late AuthResponse are refused, and the connection
    // stays usable.
    let (_, c) = relay.open().await;
    for frame in [
        Frame::Ack { seq: 1 },
        Frame::Ephemeral {
            to: bob.id(),
            payload: b"typing".to_vec(),
        },
        answer(a1, &c),
    ] {
        send(&mut anon, &frame).await;
        assert_eq!(
            recv(&mut anon).await,
            Frame::Error {
                code: ErrorCode::UNEXPECTED_FRAME
            }
        );
    }
    // Nothing reached bob's mailbox from those; the ack did not delete anything.
    let store = &relay.state.store;
    assert_eq!(store.last_seq(&bob.id(), b2.id()).await.unwrap(), 1);
    assert_eq!(store.fetch(&bob.id(), b1.id(), 0, 0, 10).await.unwrap().len(), 1);

    // The mismatch rule: every account's full device list (its reachable devices), the
    // sender's own included (the relay does not know which device sends).
    for d in [b2, a1] {
        make_reachable(&relay, d, &mut r).await;
    }
    assert_eq!(
        send_anon(&mut anon, 2, to_devices(&bob, Some(b2.id()), b"x")).await,
        SendOutcome::DeviceMismatch {
            device_lists: vec![bob.list.signed().as_bytes().to_vec()]
        }
    );
    assert_eq!(
        send_anon(&mut anon, 3, to_devices(&alice, Some(a1.id()), b"x")).await,
        SendOutcome::DeviceMismatch {
            device_lists: vec![alice.list.signed().as_bytes().to_vec()]
        }
    );
    let mut both = to_devices(&bob, None, b"sealed two");
    both.extend(to_devices(&alice, None, b"sealed two"));
    assert_eq!(
        send_anon(&mut anon, 4, both).await,
        SendOutcome::Stored { seqs: vec![2, 2, 1, 1] }
    );
    assert_eq!(expect_deliver(&mut wb1).await, (2, b"sealed two".to_vec()));

    // Sync transcripts keep the authenticated rule: own account without the sending device.
    let mut wa = relay.connect(a1).await;
    assert_eq!(expect_deliver(&mut wa).await.0, 1);
    assert_eq!(recv(&mut wa).await, Frame::QueueEmpty);
    assert!(matches!(
        send_to(&mut wa, 5, to_devices(&alice, None, b"x")).await,
        SendOutcome::DeviceMismatch { .. }
    ));
    assert_eq!(
        send_to(&mut wa, 6, to_devices(&alice, Some(a1.id()), b"sync")).await,
        SendOutcome::Stored { seqs: vec![2] }
    );

    // The challenge deadline (1 s) does not close an anonymous connection that sends.
    for i in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        assert!(matches!(
            send_anon(&mut anon, 10 + i, to_devices(&bob, None, b"later")).await,
            SendOutcome::Stored { .. }
        ));
    }
    // A connection that neither authenticates nor sends is closed at the deadline.
    let (mut silent, _) = relay.open().await;
    assert_eq!(
        recv(&mut silent).await,
        Frame::Error {
            code: ErrorCode::CHALLENGE_EXPIRED
        }
    );
    // An idle anonymous connection (no frames, no pongs) idles out like any other.
    // The relay closes it; the client may see the IDLE_TIMEOUT frame or, having queued
    // pongs to a closed socket, only the broken connection.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    loop {
        match futures_util::StreamExt::next(&mut anon).await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(b))) => assert_eq!(
                Frame::decode(&b).unwrap(),
                Frame::Error {
                    code: ErrorCode::IDLE_TIMEOUT
                }
            ),
            Some(Ok(m)) if m.is_ping() || m.is_pong() => {}
            Some(Ok(m)) => assert!(m.is_close(), "{m:?}"),
            None | Some(Err(_)) => break,
        }
    }

    let text = relay.metrics().await;
    assert!(text.contains("sotto_relay_sends_anonymous_total 7"), "{text}");
    assert!(text.contains("sotto_relay_connections_anonymous_total 1"), "{text}");
}

trait RawSend {
    async fn send_raw(&mut self, b: Vec<u8>);
}

impl RawSend for Ws {
    async fn send_raw(&mut self, b: Vec<u8>) {
        use futures_util::SinkExt;
        self.send(tokio_tungstenite::tungstenite::Message::Binary(b.into()))
            .await
            .unwrap();
    }
}

async fn limits(url: String) {
    let mut relay = Relay::start(&url, |c: &mut Config| {
        c.limits.max_envelope_bytes = 100;
        c.limits.max_recipients = 2;
        c.limits.max_mailbox_depth = 2;
        c.limits.rate_per_second = 1;
        c.limits.rate_burst = 4;
        c.limits.max_connections = 3;
        c.limits.max_body_bytes = 2000;
    })
    .await;
    let mut r = rng(14);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 1);
    let carol = account(&mut r, 2);
    register_all(&relay, &[&alice, &bob, &carol]).await;
    let mut wa = relay.connect(&alice.devices[0]).await;
    assert_eq!(recv(&mut wa).await, Frame::QueueEmpty);

    let rejected = |code| SendOutcome::Rejected { code };
    assert_eq!(
        send_to(&mut wa, 1, to_devices(&bob, None, &[0; 101])).await,
        rejected(ErrorCode::ENVELOPE_TOO_LARGE)
    );
    let mut three = to_devices(&bob, None, b"x");
    three.extend(to_devices(&carol, None, b"x"));
    assert_eq!(
        send_to(&mut wa, 2, three).await,
        rejected(ErrorCode::TOO_MANY_RECIPIENTS)
    );
    let mut dup = to_devices(&bob, None, b"x");
    dup.extend(to_devices(&bob, None, b"x"));
    assert_eq!(send_to(&mut wa, 3, dup).await, rejected(ErrorCode::DUPLICATE_RECIPIENT));
    assert_eq!(send_to(&mut wa, 4, vec![]).await, rejected(ErrorCode::EMPTY_SEND));
    // Mailbox depth 2.
    for i in 0..2 {
        assert!(matches!(
            send_to(&mut wa, 5 + i, to_devices(&bob, None, b"x")).await,
            SendOutcome::Stored { .. }
        ));
    }
    assert_eq!(
        send_to(&mut wa, 7, to_devices(&bob, None, b"x")).await,
        rejected(ErrorCode::MAILBOX_FULL)
    );
    // Envelopes are charged, not sends, and only sends that pass the checks: three
    // envelopes so far (the mailbox-full one counts); two more exceed the burst of 4.
    assert_eq!(
        send_to(&mut wa, 8, to_devices(&carol, None, b"x")).await,
        rejected(ErrorCode::RATE_LIMITED)
    );

    // Body too large.
    let (status, body) = relay
        .http(
            Method::PUT,
            &format!("/v1/accounts/{}/device-list", alice.id()),
            None,
            vec![1; 3000],
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::BODY_TOO_LARGE)
    );

    // An anonymous connection has its own bucket of 4: two sends of two envelopes.
    let mut anon = relay.open_anonymous().await;
    for i in 0..2 {
        assert!(!matches!(
            send_anon(&mut anon, 20 + i, to_devices(&carol, None, b"x")).await,
            SendOutcome::Rejected {
                code: ErrorCode::RATE_LIMITED
            }
        ));
    }
    assert_eq!(
        send_anon(&mut anon, 22, to_devices(&carol, None, b"x")).await,
        rejected(ErrorCode::RATE_LIMITED)
    );

    // Connections: 3 allowed, 2 in use (the anonymous one counts).
    let _w2 = anon;
    let _w3 = relay.open().await;
    let err = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", relay.addr))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                error_code(resp.body().as_deref().unwrap()),
                ErrorCode::TOO_MANY_CONNECTIONS
            );
        }
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }

    // Graceful shutdown: connected sockets are told and closed; run returns.
    let stop = tokio::spawn(async move {
        relay.stop().await;
        relay
    });
    assert_eq!(
        recv(&mut wa).await,
        Frame::Error {
            code: ErrorCode::SHUTTING_DOWN
        }
    );
    closed(&mut wa).await;
    drop((_w2, _w3));
    stop.await.unwrap();
}

async fn health(url: String) {
    let mut relay = Relay::start(&url, |c: &mut Config| {
        c.heartbeat.ping_interval_ms = 50;
    })
    .await;
    assert_eq!(relay.get("/healthz").await.0, StatusCode::OK);
    assert_eq!(relay.get("/readyz").await.0, StatusCode::OK);
    let mut r = rng(15);
    let alice = account(&mut r, 1);
    register_all(&relay, &[&alice]).await;
    let mut ws = relay.connect(&alice.devices[0]).await;
    // The relay pings.
    loop {
        let m = futures_util::StreamExt::next(&mut ws).await.unwrap().unwrap();
        if m.is_ping() {
            break;
        }
    }
    drop(ws);
    relay.stop().await;
}

/// Finding 20: with `secure_delete` and the relay's WAL checkpoint, an acknowledged
/// envelope's ciphertext is in neither the SQLite database file nor its WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_ciphertext_leaves_the_sqlite_files() {
    use rand_core::RngCore;
    let url = sqlite_url();
    let path = std::path::PathBuf::from(url.strip_prefix("sqlite://").unwrap());
    let mut relay = Relay::start(&url, |_| {}).await;
    let mut r = rng(20);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 1);
    register_all(&relay, &[&alice, &bob]).await;
    let mut marker = vec![0u8; 512];
    r.fill_bytes(&mut marker);
    // The files (database, WAL) that hold the marker.
    let on_disk = |marker: &[u8]| -> Vec<&'static str> {
        ["db", "wal"]
            .into_iter()
            .filter(|which| {
                let mut p = path.clone().into_os_string();
                if *which == "wal" {
                    p.push("-wal");
                }
                std::fs::read(&p).is_ok_and(|bytes| bytes.windows(marker.len()).any(|w| w == marker))
            })
            .collect()
    };
    let mut wa = relay.connect(&alice.devices[0]).await;
    assert_eq!(recv(&mut wa).await, Frame::QueueEmpty);
    assert!(matches!(
        send_to(&mut wa, 1, to_devices(&bob, None, &marker)).await,
        SendOutcome::Stored { .. }
    ));
    assert!(
        !on_disk(&marker).is_empty(),
        "the stored envelope is on disk (the search works)"
    );
    let mut wb = relay.connect(&bob.devices[0]).await;
    assert_eq!(expect_deliver(&mut wb).await, (1, marker.clone()));
    send(&mut wb, &Frame::Ack { seq: 1 }).await;
    hang_up(wb).await;
    // A new connection commits the device's queued acks before it reads the mailbox.
    let mut wb = relay.connect(&bob.devices[0]).await;
    assert_eq!(recv(&mut wb).await, Frame::QueueEmpty);
    // What the relay's expiry run does after deleting.
    relay.state.store.checkpoint().await.unwrap();
    let left = on_disk(&marker);
    assert!(
        left.is_empty(),
        "an acked envelope's ciphertext is still on disk, in {left:?}"
    );
    drop((wa, wb));
    relay.stop().await;
    remove_sqlite(&url);
}

/// Overload: while the writer cannot commit (another connection holds SQLite's write
/// lock, as a disk stall or a saturated database would), sends queue behind it for one
/// interval; then new sends are refused at once with `BUSY` instead of waiting, the
/// metric says so, and an accepted send's answer does not wait behind a queue that grows
/// without end. Once the lock is released, every queued send is stored and delivered
/// once, and sends are taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_writer_refuses_sends_with_busy() {
    use sqlx::Connection;
    let url = sqlite_url();
    let mut relay = Relay::start(&url, |c| {
        c.limits.send_queue_target_ms = 20;
        c.limits.send_queue_interval_ms = 50;
    })
    .await;
    let mut r = rng(22);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 1);
    let carol = account(&mut r, 1);
    register_all(&relay, &[&alice, &bob, &carol]).await;
    let mut wa = relay.connect(&alice.devices[0]).await;
    assert_eq!(recv(&mut wa).await, Frame::QueueEmpty);
    let mut wc = relay.connect(&carol.devices[0]).await;
    assert_eq!(recv(&mut wc).await, Frame::QueueEmpty);
    let saturated = |m: &str| m.lines().any(|l| l == "sotto_relay_writer_saturated 1");
    assert!(!saturated(&relay.metrics().await));

    let mut lock = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut lock).await.unwrap();
    // Alice pipelines sends until the relay reports the writer saturated: the first
    // batch waits for the lock, the later sends queue behind it.
    let to_bob = |id: u64| {
        Frame::Send(Send {
            message_id: id,
            access: vec![],
            body: vec![],
            recipients: to_devices(&bob, None, &id.to_be_bytes()),
        })
    };
    let deadline = tokio::time::Instant::now() + FAILSAFE / 4;
    let mut sent = 0u64;
    loop {
        sent += 1;
        send(&mut wa, &to_bob(sent)).await;
        if saturated(&relay.metrics().await) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the writer, stalled with {sent} sends queued, was never reported saturated"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // A new send is refused at once, while the lock is still held.
    assert_eq!(
        send_to(&mut wc, 1, to_devices(&bob, None, b"c")).await,
        SendOutcome::Rejected { code: ErrorCode::BUSY }
    );
    let busy: u64 = relay
        .metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix("sotto_relay_sends_busy_total "))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(busy >= 1);

    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    drop(lock);
    // Every send of Alice's is answered, in order: stored (those queued before the
    // refusals began), then BUSY from the first refusal on.
    let mut stored = BTreeSet::new();
    let mut refused = false;
    let mut id = 1;
    while id <= sent {
        match recv(&mut wa).await {
            Frame::SendResult(SendResult { message_id, outcome }) => {
                assert_eq!(message_id, id);
                match outcome {
                    SendOutcome::Stored { .. } => {
                        assert!(!refused, "send {id} stored after an earlier one was refused");
                        assert!(stored.insert(id));
                    }
                    SendOutcome::Rejected { code: ErrorCode::BUSY } => refused = true,
                    other => panic!("send {id}: {other:?}"),
                }
                id += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(stored.contains(&1), "the send the writer was committing was stored");
    let deadline = tokio::time::Instant::now() + FAILSAFE / 4;
    while saturated(&relay.metrics().await) {
        assert!(tokio::time::Instant::now() < deadline, "the writer stayed saturated");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // The writer takes sends again, but Carol's connection refuses hers until she says
    // she read the refusal: a send written before she knew cannot overtake the refused one.
    assert_eq!(
        send_to(&mut wc, 2, to_devices(&bob, None, b"early")).await,
        SendOutcome::Rejected { code: ErrorCode::BUSY }
    );
    send(&mut wc, &Frame::Resume).await;
    assert!(matches!(
        send_to(&mut wc, 3, to_devices(&bob, None, b"c")).await,
        SendOutcome::Stored { .. }
    ));
    // Bob gets each stored send once, and Carol's.
    let got: Vec<Vec<u8>> = drain(&relay, &bob.devices[0])
        .await
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    let mut want: Vec<Vec<u8>> = stored.iter().map(|id| id.to_be_bytes().to_vec()).collect();
    want.push(b"c".to_vec());
    assert_eq!(got, want);
    drop((wa, wc));
    relay.stop().await;
    remove_sqlite(&url);
}

macro_rules! backend {
    ($backend:ident, $url:expr) => {
        mod $backend {
            use super::*;

            macro_rules! t {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let url: Option<String> = $url;
                        if let Some(url) = url {
                            super::$name(url.clone()).await;
                            if url.starts_with("sqlite://") {
                                remove_sqlite(&url);
                            }
                        }
                    }
                };
            }
            t!(registration);
            t!(authentication);
            t!(an_extension_never_replaces_the_app);
            t!(mailbox_bounded_in_bytes);
            t!(anonymous_sends_need_the_access_key);
            t!(prekey_drain_is_bounded);
            t!(device_list_version_jumps_are_refused);
            t!(a_revoked_list_key_cannot_publish);
            t!(list_updates_are_limited_per_account);
            t!(device_set_rule_lets_unreachable_devices_out);
            t!(stale_prekeys_make_a_device_unreachable);
            t!(http_auth_is_bound_to_the_request);
            t!(prekeys);
            t!(messaging);
            t!(windowed_delivery);
            t!(pipelined_sends);
            t!(removed_device_is_disconnected);
            t!(seq_survives_removal_and_epoch_changes);
            t!(limits);
            t!(health);
            t!(anonymous);
        }
    };
}

backend!(sqlite, Some(sqlite_url()));
backend!(postgres, postgres_url().await);
