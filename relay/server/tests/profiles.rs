//! The blind profile store over real sockets, on SQLite and on PostgreSQL: an account
//! uploads one encrypted profile under a version (`PUT /v1/profile`, authenticated), and
//! whoever presents that version fetches it (`GET /v1/accounts/{account}/profile/{version}`,
//! unauthenticated); anyone else gets the same `NOT_FOUND` as for an account without one.

mod common;

use std::net::SocketAddr;

use common::relay::*;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use sotto_crypto::AccountId;
use sotto_proto::limits::MAX_PROFILE_BYTES;
use sotto_proto::{Body, ErrorCode, ProfileBody, ProfileUpload};
use sotto_relay::Config;
use sotto_relay::storage::Storage;
use tokio::net::TcpSocket;

const PROFILE: &str = "/v1/profile";

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// The fetch path of `account`'s profile under `version`.
fn fetch_path(account: &AccountId, version: &[u8; 32]) -> String {
    format!("/v1/accounts/{account}/profile/{}", hex(version))
}

fn upload(version: [u8; 32], ciphertext: &[u8]) -> Vec<u8> {
    ProfileUpload {
        version,
        ciphertext: ciphertext.to_vec(),
    }
    .encode()
}

/// Uploads a profile as `d`; the status and the error code, if any.
async fn put(relay: &Relay, d: &TestDevice, body: Vec<u8>) -> (StatusCode, Option<ErrorCode>) {
    let (status, body) = relay.authed(d, Method::PUT, PROFILE, body).await;
    (status, (!body.is_empty()).then(|| error_code(&body)))
}

/// Fetches a profile: its ciphertext, or the status and code of the refusal.
async fn fetch(relay: &Relay, path: &str) -> Result<Vec<u8>, (StatusCode, ErrorCode)> {
    let (status, body) = relay.get(path).await;
    if status == StatusCode::OK {
        Ok(ProfileBody::decode(&body).unwrap().ciphertext)
    } else {
        Err((status, error_code(&body)))
    }
}

/// `GET path` over a connection from `127.0.0.<host>`: the status and the body.
async fn get_from(relay: &Relay, host: u8, path: &str) -> (StatusCode, Vec<u8>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, host], 0))).unwrap();
    let stream = socket.connect(relay.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header("host", relay.addr.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(FAILSAFE, sender.send_request(req))
        .await
        .expect("answer within the failsafe")
        .unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes().to_vec())
}

/// The value of a counter in the relay's metrics text.
async fn counter(relay: &Relay, name: &str) -> u64 {
    let text = relay.metrics().await;
    let prefix = format!("sotto_relay_{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
        .parse()
        .unwrap()
}

const NOT_FOUND: (StatusCode, ErrorCode) = (StatusCode::NOT_FOUND, ErrorCode::NOT_FOUND);

/// Upload, fetch with the right version, replace under a new version (the old one stops
/// working), delete; a wrong version, an account without a profile and an unknown account
/// all get the same answer, byte for byte.
async fn put_fetch_replace_delete(url: String) {
    let mut relay = Relay::start(&url, |_| {}).await;
    let mut r = rng(40);
    let alice = account(&mut r, 2);
    let bob = account(&mut r, 1);
    let stranger = account(&mut r, 1);
    assert_eq!(relay.register(&alice).await, StatusCode::CREATED);
    assert_eq!(relay.register(&bob).await, StatusCode::CREATED);
    let (a1, a2) = (&alice.devices[0], &alice.devices[1]);
    let (v1, v2) = ([0x11; 32], [0x22; 32]);

    assert_eq!(
        put(&relay, a1, upload(v1, b"profile one")).await,
        (StatusCode::NO_CONTENT, None)
    );
    assert_eq!(
        fetch(&relay, &fetch_path(&alice.id(), &v1)).await,
        Ok(b"profile one".to_vec())
    );

    // A wrong version, an account without a profile and an unknown account: one answer.
    let wrong = relay.get(&fetch_path(&alice.id(), &v2)).await;
    let none = relay.get(&fetch_path(&bob.id(), &v1)).await;
    let unknown = relay.get(&fetch_path(&stranger.id(), &v1)).await;
    assert_eq!((wrong.0, error_code(&wrong.1)), NOT_FOUND);
    assert_eq!(wrong, none, "a wrong version and no profile answer alike");
    assert_eq!(wrong, unknown, "a wrong version and an unknown account answer alike");
    // Their headers too (but the date).
    let headers = |path: String| {
        let relay = &relay;
        async move {
            let (_, mut h, _) = relay.request(Method::GET, &path, &[], vec![]).await;
            h.remove("date");
            h
        }
    };
    let wrong_headers = headers(fetch_path(&alice.id(), &v2)).await;
    assert_eq!(wrong_headers, headers(fetch_path(&bob.id(), &v1)).await);
    assert_eq!(wrong_headers, headers(fetch_path(&stranger.id(), &v1)).await);
    let mut near = v1;
    near[31] ^= 1;
    assert_eq!(fetch(&relay, &fetch_path(&alice.id(), &near)).await, Err(NOT_FOUND));

    // Another device of the account replaces it under a new version: the old one is gone.
    assert_eq!(
        put(&relay, a2, upload(v2, b"profile two")).await,
        (StatusCode::NO_CONTENT, None)
    );
    assert_eq!(fetch(&relay, &fetch_path(&alice.id(), &v1)).await, Err(NOT_FOUND));
    assert_eq!(
        fetch(&relay, &fetch_path(&alice.id(), &v2)).await,
        Ok(b"profile two".to_vec())
    );
    let stored = relay.state.store.profile(&alice.id()).await.unwrap().unwrap();
    assert_eq!(stored.updated_at_s % 60, 0, "the update time is coarse");

    // Delete: then nothing, and a second delete is still 204.
    let (status, body) = relay.authed(a1, Method::DELETE, PROFILE, vec![]).await;
    assert_eq!((status, body.len()), (StatusCode::NO_CONTENT, 0));
    assert_eq!(fetch(&relay, &fetch_path(&alice.id(), &v2)).await, Err(NOT_FOUND));
    let (status, _) = relay.authed(a1, Method::DELETE, PROFILE, vec![]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = relay.authed(&bob.devices[0], Method::DELETE, PROFILE, vec![]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    relay.stop().await;
}

/// PUT and DELETE need a device's signature; the fetch path is checked before anything
/// else (`MALFORMED`).
async fn requests_are_checked(url: String) {
    let mut relay = Relay::start(&url, |_| {}).await;
    let mut r = rng(41);
    let alice = account(&mut r, 1);
    assert_eq!(relay.register(&alice).await, StatusCode::CREATED);
    let a = &alice.devices[0];
    let v = [0x3c; 32];
    assert_eq!(put(&relay, a, upload(v, b"mine")).await.0, StatusCode::NO_CONTENT);

    // Without (or with an unparsable) Authorization: AUTH_REQUIRED, nothing changes.
    let auth_required = (StatusCode::UNAUTHORIZED, ErrorCode::AUTH_REQUIRED);
    for auth in [None, Some("Sotto-v1 zz".to_owned())] {
        let (status, body) = relay
            .http(Method::PUT, PROFILE, auth.clone(), upload([0x44; 32], b"forged"))
            .await;
        assert_eq!((status, error_code(&body)), auth_required);
        let (status, body) = relay.http(Method::DELETE, PROFILE, auth, vec![]).await;
        assert_eq!((status, error_code(&body)), auth_required);
    }
    // A header answered for another request does not carry over.
    let auth = relay.auth(a, &Method::PUT, PROFILE, &upload(v, b"mine")).await;
    let (status, _) = relay
        .http(Method::PUT, PROFILE, Some(auth), upload([0x44; 32], b"other"))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(fetch(&relay, &fetch_path(&alice.id(), &v)).await, Ok(b"mine".to_vec()));

    // The version in the path: exactly 64 lowercase hex digits.
    let good = hex(&v);
    let bad_versions = [
        good[..63].to_owned(),
        format!("{good}0"),
        good.to_uppercase(),
        format!("{}g", &good[..63]),
        format!("{}+", &good[..63]),
        "x".to_owned(),
    ];
    for bad in &bad_versions {
        let path = format!("/v1/accounts/{}/profile/{bad}", alice.id());
        assert_eq!(
            fetch(&relay, &path).await,
            Err((StatusCode::BAD_REQUEST, ErrorCode::MALFORMED)),
            "{bad}"
        );
    }
    let path = format!("/v1/accounts/not-an-account/profile/{good}");
    assert_eq!(
        fetch(&relay, &path).await,
        Err((StatusCode::BAD_REQUEST, ErrorCode::MALFORMED))
    );
    // Other methods on the fetch path.
    let (status, body) = relay
        .http(Method::PUT, &fetch_path(&alice.id(), &v), None, vec![])
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::NOT_FOUND)
    );
    relay.stop().await;
}

/// A ciphertext must be 1..=MAX_PROFILE_BYTES bytes, and a body above `max_body_bytes` is
/// not read; a refused upload leaves the stored profile as it was.
async fn uploads_are_bounded(url: String) {
    let mut relay = Relay::start(&url, |c: &mut Config| {
        c.limits.max_body_bytes = 64 * 1024;
    })
    .await;
    let mut r = rng(42);
    let alice = account(&mut r, 1);
    assert_eq!(relay.register(&alice).await, StatusCode::CREATED);
    let a = &alice.devices[0];
    let v = [0x55; 32];
    let largest = vec![0xee; MAX_PROFILE_BYTES];
    assert_eq!(put(&relay, a, upload(v, &largest)).await.0, StatusCode::NO_CONTENT);
    assert_eq!(fetch(&relay, &fetch_path(&alice.id(), &v)).await, Ok(largest.clone()));

    let malformed = (StatusCode::BAD_REQUEST, Some(ErrorCode::MALFORMED));
    let over = vec![0xee; MAX_PROFILE_BYTES + 1];
    assert_eq!(put(&relay, a, upload([0x66; 32], &over)).await, malformed);
    assert_eq!(put(&relay, a, upload([0x66; 32], b"")).await, malformed);
    let mut truncated = upload([0x66; 32], b"cut short");
    truncated.pop();
    assert_eq!(put(&relay, a, truncated).await, malformed);
    let mut version_2 = upload([0x66; 32], b"later format");
    version_2[0] = 2;
    assert_eq!(
        put(&relay, a, version_2).await,
        (StatusCode::BAD_REQUEST, Some(ErrorCode::UNSUPPORTED_VERSION))
    );
    let huge = upload([0x66; 32], &vec![0xee; 64 * 1024]);
    assert_eq!(
        put(&relay, a, huge).await,
        (StatusCode::PAYLOAD_TOO_LARGE, Some(ErrorCode::BODY_TOO_LARGE))
    );
    // None of them replaced the stored profile.
    assert_eq!(fetch(&relay, &fetch_path(&alice.id(), &v)).await, Ok(largest));
    assert_eq!(
        fetch(&relay, &fetch_path(&alice.id(), &[0x66; 32])).await,
        Err(NOT_FOUND)
    );
    relay.stop().await;
}

/// Uploads are limited per account (`RATE_LIMITED`); another account is not held up, and
/// deleting is not limited.
async fn uploads_are_limited_per_account(url: String) {
    let mut relay = Relay::start(&url, |c: &mut Config| {
        c.limits.profile_updates_per_minute_per_account = 1;
        c.limits.profile_updates_burst_per_account = 3;
    })
    .await;
    let mut r = rng(43);
    let alice = account(&mut r, 2);
    let bob = account(&mut r, 1);
    assert_eq!(relay.register(&alice).await, StatusCode::CREATED);
    assert_eq!(relay.register(&bob).await, StatusCode::CREATED);
    for i in 0..3u8 {
        let d = &alice.devices[usize::from(i % 2)];
        assert_eq!(
            put(&relay, d, upload([i; 32], b"p")).await.0,
            StatusCode::NO_CONTENT,
            "upload {i}"
        );
    }
    // Both devices share the account's budget.
    for d in &alice.devices {
        assert_eq!(
            put(&relay, d, upload([9; 32], b"p")).await,
            (StatusCode::TOO_MANY_REQUESTS, Some(ErrorCode::RATE_LIMITED))
        );
    }
    assert_eq!(
        fetch(&relay, &fetch_path(&alice.id(), &[2; 32])).await,
        Ok(b"p".to_vec())
    );
    assert_eq!(
        put(&relay, &bob.devices[0], upload([1; 32], b"b")).await.0,
        StatusCode::NO_CONTENT
    );
    let (status, _) = relay.authed(&alice.devices[0], Method::DELETE, PROFILE, vec![]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    relay.stop().await;
}

/// Fetches are limited per client address: after the burst, even the right version is
/// refused (`RATE_LIMITED`, charged before the database is read), while another address
/// is still served. Found and not found cost the same.
async fn fetches_are_limited_per_address(url: String) {
    let mut relay = Relay::start(&url, |c: &mut Config| {
        c.limits.profile_fetches_per_minute_per_addr = 1;
        c.limits.profile_fetches_burst_per_addr = 4;
    })
    .await;
    let mut r = rng(44);
    let alice = account(&mut r, 1);
    assert_eq!(relay.register(&alice).await, StatusCode::CREATED);
    let v = [0x77; 32];
    assert_eq!(
        put(&relay, &alice.devices[0], upload(v, b"hi")).await.0,
        StatusCode::NO_CONTENT
    );
    let right = fetch_path(&alice.id(), &v);
    let wrong = fetch_path(&alice.id(), &[0x78; 32]);
    assert_eq!(fetch(&relay, &right).await, Ok(b"hi".to_vec()));
    assert_eq!(fetch(&relay, &wrong).await, Err(NOT_FOUND));
    assert_eq!(fetch(&relay, &right).await, Ok(b"hi".to_vec()));
    assert_eq!(fetch(&relay, &wrong).await, Err(NOT_FOUND));
    let limited = Err((StatusCode::TOO_MANY_REQUESTS, ErrorCode::RATE_LIMITED));
    assert_eq!(fetch(&relay, &right).await, limited);
    assert_eq!(fetch(&relay, &wrong).await, limited);
    // A malformed path is refused before it is charged, and still answered MALFORMED.
    assert_eq!(
        fetch(&relay, &format!("/v1/accounts/{}/profile/xyz", alice.id())).await,
        Err((StatusCode::BAD_REQUEST, ErrorCode::MALFORMED))
    );
    // Another address has its own budget.
    let (status, body) = get_from(&relay, 2, &right).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ProfileBody::decode(&body).unwrap().ciphertext, b"hi");
    assert_eq!(counter(&relay, "profile_fetches_total").await, 5);
    assert_eq!(counter(&relay, "profile_fetches_refused_total").await, 2);
    relay.stop().await;
}

/// Fetches are limited in total, across addresses.
async fn fetches_are_limited_in_total(url: String) {
    let mut relay = Relay::start(&url, |c: &mut Config| {
        c.limits.profile_fetches_per_second_total = 1;
        c.limits.profile_fetches_burst_total = 3;
    })
    .await;
    let mut r = rng(45);
    let alice = account(&mut r, 1);
    assert_eq!(relay.register(&alice).await, StatusCode::CREATED);
    let path = fetch_path(&alice.id(), &[0x79; 32]);
    let mut answers = Vec::new();
    for host in [1, 2, 3, 4, 5] {
        let (status, body) = get_from(&relay, host, &path).await;
        answers.push((status, error_code(&body)));
    }
    // Three within the burst (the rest of the first second refills at most one more).
    assert_eq!(answers[..3], [NOT_FOUND; 3]);
    assert!(
        answers[3..].contains(&(StatusCode::TOO_MANY_REQUESTS, ErrorCode::RATE_LIMITED)),
        "{answers:?}"
    );
    relay.stop().await;
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
            t!(put_fetch_replace_delete);
            t!(requests_are_checked);
            t!(uploads_are_bounded);
            t!(uploads_are_limited_per_account);
            t!(fetches_are_limited_per_address);
            t!(fetches_are_limited_in_total);
        }
    };
}

backend!(sqlite, Some(sqlite_url()));
backend!(postgres, postgres_url().await);
