//! The blob store (docs/protocol.md §16.4) over real sockets, on SQLite and on PostgreSQL:
//! upload tokens issued against a device's daily quota and redeemed once, anonymously;
//! resumable uploads in pieces; downloads whole and by range; expiry and collection.
//! Time is the blob store's clock, set by the tests; the collector is called with an
//! explicit `now_ms`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::relay::*;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rand_core::RngCore;
use sotto_crypto::TokenRequest;
use sotto_crypto::token::Proof;
use sotto_proto::{BlobCreate, BlobCreated, BlobIssuer, BlobStatus, Body, ErrorCode, TokenIssue, TokenIssued};
use sotto_relay::Config;
use sotto_relay::blobs::{DAY_MS, hex_id};
use tokio::net::TcpSocket;

/// 2027-01-15T00:00:00Z plus an hour: well inside a 7-day token epoch.
const T0: u64 = 1_800_000_000_000 - 1_800_000_000_000 % (7 * DAY_MS) + 3_600_000;
const EPOCH_MS: u64 = 7 * DAY_MS;

type Refused = (StatusCode, ErrorCode);

fn temp_dir() -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "sotto-relay-test-blobs-{}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A relay whose blob store keeps its files in `dir` and whose clock reads `T0`.
async fn start(url: &str, dir: &Path, tweak: impl FnOnce(&mut Config)) -> Relay {
    let dir = dir.to_owned();
    let relay = Relay::start(url, move |c: &mut Config| {
        c.blobs.dir = Some(dir);
        c.blobs.gc_interval_secs = 86_400;
        tweak(c);
    })
    .await;
    relay.state.blobs.clock.set_ms(T0);
    relay
}

fn refused(status: StatusCode, body: &[u8]) -> Refused {
    (status, error_code(body))
}

async fn issuer(relay: &Relay) -> BlobIssuer {
    let (status, body) = relay.get("/v1/blobs/issuer").await;
    assert_eq!(status, StatusCode::OK);
    BlobIssuer::decode(&body).unwrap()
}

/// `n` tokens for `d` under the current epoch: the epoch and the tokens.
async fn tokens(relay: &Relay, d: &TestDevice, n: usize) -> Result<(u32, Vec<[u8; 64]>), Refused> {
    let issuer = issuer(relay).await;
    let mut r = rng(900 + n as u64);
    let req = TokenRequest::new(n, &mut r).unwrap();
    let body = TokenIssue {
        epoch: issuer.epoch,
        blinded: req.blinded().to_vec(),
    }
    .encode();
    let (status, answer) = relay.authed(d, Method::PUT, "/v1/blobs/tokens", body).await;
    if status != StatusCode::OK {
        return Err(refused(status, &answer));
    }
    let issued = TokenIssued::decode(&answer).unwrap();
    assert_eq!(issued.epoch, issuer.epoch);
    let tokens = req
        .finish(&issuer.public, &issued.evaluated, &Proof(issued.proof))
        .unwrap();
    Ok((issuer.epoch, tokens))
}

async fn create(relay: &Relay, epoch: u32, token: [u8; 64], length: u64) -> Result<[u8; 32], Refused> {
    let body = BlobCreate { epoch, token, length }.encode();
    let (status, answer) = relay.http(Method::PUT, "/v1/blobs", None, body).await;
    if status == StatusCode::CREATED {
        Ok(BlobCreated::decode(&answer).unwrap().id)
    } else {
        Err(refused(status, &answer))
    }
}

async fn piece(relay: &Relay, id: &[u8; 32], offset: u64, bytes: &[u8]) -> Result<BlobStatus, Refused> {
    let path = format!("/v1/blobs/{}/{offset}", hex_id(id));
    let (status, answer) = relay.http(Method::PUT, &path, None, bytes.to_vec()).await;
    if status == StatusCode::OK {
        Ok(BlobStatus::decode(&answer).unwrap())
    } else {
        Err(refused(status, &answer))
    }
}

async fn status(relay: &Relay, id: &[u8; 32]) -> Result<BlobStatus, Refused> {
    let (status, answer) = relay.get(&format!("/v1/blobs/{}/status", hex_id(id))).await;
    if status == StatusCode::OK {
        Ok(BlobStatus::decode(&answer).unwrap())
    } else {
        Err(refused(status, &answer))
    }
}

async fn download(relay: &Relay, id: &[u8; 32], range: Option<&str>) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut headers = vec![];
    if let Some(r) = range {
        headers.push(("range", r));
    }
    relay
        .request(Method::GET, &format!("/v1/blobs/{}", hex_id(id)), &headers, vec![])
        .await
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

/// Known bytes: a seeded stream.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    rng(seed).fill_bytes(&mut b);
    b
}

/// A blob of `bytes` uploaded in one piece with a fresh token of `d`.
async fn upload(relay: &Relay, d: &TestDevice, bytes: &[u8]) -> [u8; 32] {
    let (epoch, t) = tokens(relay, d, 1).await.unwrap();
    let id = create(relay, epoch, t[0], bytes.len() as u64).await.unwrap();
    piece(relay, &id, 0, bytes).await.unwrap();
    id
}

async fn gc(relay: &Relay, now_ms: u64) -> sotto_relay::blobs::GcReport {
    relay
        .state
        .blobs
        .gc(&relay.state.store, &relay.state.metrics, now_ms)
        .await
        .unwrap()
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

const NOT_FOUND: Refused = (StatusCode::NOT_FOUND, ErrorCode::NOT_FOUND);

/// Tokens made with a real `TokenRequest` create blobs once each; a spent token, a forged
/// one and a wrong epoch are refused with their codes; the daily quota is charged per
/// device and resets the next day.
async fn tokens_are_single_use_and_quota_bound(url: String) {
    let dir = temp_dir();
    let mut relay = start(&url, &dir, |c| c.blobs.tokens_per_device_per_day = 5).await;
    let mut r = rng(1);
    let alice = account(&mut r, 2);
    assert_eq!(relay.register(&alice).await, StatusCode::CREATED);
    let (a1, a2) = (&alice.devices[0], &alice.devices[1]);

    let (epoch, t) = tokens(&relay, a1, 3).await.unwrap();
    assert_eq!(u64::from(epoch), T0 / 1000 / (EPOCH_MS / 1000));
    create(&relay, epoch, t[0], 10).await.unwrap();
    assert_eq!(
        create(&relay, epoch, t[0], 10).await,
        Err((StatusCode::CONFLICT, ErrorCode::TOKEN_SPENT))
    );
    let mut forged = t[1];
    forged[40] ^= 1;
    let invalid = Err((StatusCode::FORBIDDEN, ErrorCode::TOKEN_INVALID));
    assert_eq!(create(&relay, epoch, forged, 10).await, invalid);
    assert_eq!(create(&relay, epoch, [7; 64], 10).await, invalid);
    // The right token under another epoch's name.
    assert_eq!(create(&relay, epoch + 1, t[1], 10).await, invalid);
    // Neither refusal spent it.
    create(&relay, epoch, t[1], 10).await.unwrap();

    // A request for another epoch is refused and not charged.
    let wrong = TokenIssue {
        epoch: epoch + 1,
        blinded: TokenRequest::new(1, &mut r).unwrap().blinded().to_vec(),
    }
    .encode();
    let (status, body) = relay.authed(a1, Method::PUT, "/v1/blobs/tokens", wrong).await;
    assert_eq!(
        refused(status, &body),
        (StatusCode::FORBIDDEN, ErrorCode::TOKEN_INVALID)
    );

    // 3 of 5 used: 3 more is over, nothing issued; 2 fit; then none.
    let quota = Err((StatusCode::TOO_MANY_REQUESTS, ErrorCode::QUOTA_EXCEEDED));
    assert_eq!(tokens(&relay, a1, 3).await, quota);
    assert_eq!(tokens(&relay, a1, 2).await.unwrap().1.len(), 2);
    assert_eq!(tokens(&relay, a1, 1).await, quota);
    // The other device has its own quota.
    assert_eq!(tokens(&relay, a2, 5).await.unwrap().1.len(), 5);
    // An unauthenticated request is refused.
    let anon = TokenIssue {
        epoch,
        blinded: vec![[1; 32]],
    }
    .encode();
    let (status, body) = relay.http(Method::PUT, "/v1/blobs/tokens", None, anon).await;
    assert_eq!(
        refused(status, &body),
        (StatusCode::UNAUTHORIZED, ErrorCode::AUTH_REQUIRED)
    );

    // The next day the quota is new; the collector drops the old day's rows.
    relay.state.blobs.clock.set_ms(T0 + DAY_MS);
    assert_eq!(tokens(&relay, a1, 5).await.unwrap().1.len(), 5);
    let report = gc(&relay, T0 + DAY_MS).await;
    assert_eq!(report.quota_rows, 2);
    assert_eq!(counter(&relay, "blob_tokens_issued_total").await, 15);
    assert_eq!(counter(&relay, "blob_redemptions_spent_total").await, 1);
    assert_eq!(counter(&relay, "blob_redemptions_invalid_total").await, 3);
    relay.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Lengths above the maximum and beyond the store's total are refused, the latter
/// without spending the token.
async fn sizes_are_bounded(url: String) {
    let dir = temp_dir();
    let mut relay = start(&url, &dir, |c| {
        c.blobs.max_blob_len = 1000;
        c.blobs.max_total_bytes = 2500;
    })
    .await;
    let mut r = rng(2);
    let alice = account(&mut r, 1);
    assert_eq!(relay.register(&alice).await, StatusCode::CREATED);
    let d = &alice.devices[0];
    let issuer = issuer(&relay).await;
    assert_eq!((issuer.max_blob_len, issuer.tokens_per_day), (1000, 100));
    let (epoch, t) = tokens(&relay, d, 4).await.unwrap();
    assert_eq!(
        create(&relay, epoch, t[0], 1001).await,
        Err((StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::BLOB_TOO_LARGE))
    );
    assert_eq!(
        create(&relay, epoch, t[0], 0).await,
        Err((StatusCode::BAD_REQUEST, ErrorCode::MALFORMED))
    );
    create(&relay, epoch, t[0], 1000).await.unwrap();
    create(&relay, epoch, t[1], 1000).await.unwrap();
    assert_eq!(
        create(&relay, epoch, t[2], 600).await,
        Err((StatusCode::INSUFFICIENT_STORAGE, ErrorCode::STORAGE_FULL))
    );
    assert!(ErrorCode::STORAGE_FULL.is_retryable());
    create(&relay, epoch, t[2], 500).await.unwrap();
    assert_eq!(counter(&relay, "blob_redemptions_full_total").await, 1);
    relay.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// An upload in pieces, with a wrong offset and an overlong piece refused; the status
/// follows; the download is byte-identical whole and by range; the file holds exactly
/// the uploaded bytes and the rows name no account or device.
async fn upload_in_pieces_and_download_ranges(url: String) {
    let dir = temp_dir();
    let mut relay = start(&url, &dir, |_| {}).await;
    let mut r = rng(3);
    let alice = account(&mut r, 1);
    assert_eq!(relay.register(&alice).await, StatusCode::CREATED);
    let d = &alice.devices[0];
    let bytes = content(30, 200_000);
    let (epoch, t) = tokens(&relay, d, 2).await.unwrap();
    let id = create(&relay, epoch, t[0], bytes.len() as u64).await.unwrap();
    assert_eq!(
        status(&relay, &id).await,
        Ok(BlobStatus {
            length: 200_000,
            received: 0
        })
    );
    let st = piece(&relay, &id, 0, &bytes[..70_000]).await.unwrap();
    assert_eq!(st.received, 70_000);
    let mismatch = Err((StatusCode::CONFLICT, ErrorCode::OFFSET_MISMATCH));
    assert_eq!(piece(&relay, &id, 0, &bytes[..10]).await, mismatch);
    assert_eq!(piece(&relay, &id, 80_000, &bytes[80_000..90_000]).await, mismatch);
    // Empty, and past the end (of a small blob: a refused body is not read, so it stays
    // small enough for the socket's buffers).
    let malformed = Err((StatusCode::BAD_REQUEST, ErrorCode::MALFORMED));
    assert_eq!(piece(&relay, &id, 70_000, &[]).await, malformed);
    let small = create(&relay, epoch, t[1], 10).await.unwrap();
    assert_eq!(piece(&relay, &small, 0, &[1; 11]).await, malformed);
    assert_eq!(piece(&relay, &small, 0, &[1; 4]).await.unwrap().received, 4);
    assert_eq!(piece(&relay, &small, 4, &[1; 7]).await, malformed);
    assert_eq!(status(&relay, &id).await.unwrap().received, 70_000);
    // Not downloadable while incomplete.
    let (s, _, body) = download(&relay, &id, None).await;
    assert_eq!(refused(s, &body), NOT_FOUND);
    piece(&relay, &id, 70_000, &bytes[70_000..150_000]).await.unwrap();
    let done = piece(&relay, &id, 150_000, &bytes[150_000..]).await.unwrap();
    assert_eq!(
        done,
        BlobStatus {
            length: 200_000,
            received: 200_000
        }
    );
    assert_eq!(status(&relay, &id).await, Ok(done));
    // A complete blob takes no more pieces.
    assert_eq!(piece(&relay, &id, 200_000, &[1]).await, Err(NOT_FOUND));

    let (s, h, body) = download(&relay, &id, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(h["content-type"], "application/octet-stream");
    assert_eq!(body, bytes);
    for (range, first, last) in [
        ("bytes=0-99", 0, 99),
        ("bytes=1000-1999", 1000, 1999),
        ("bytes=199990-300000", 199_990, 199_999),
        ("bytes=123456-", 123_456, 199_999),
        ("bytes=-500", 199_500, 199_999),
    ] {
        let (s, h, body) = download(&relay, &id, Some(range)).await;
        assert_eq!(s, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(h["content-range"], format!("bytes {first}-{last}/200000"), "{range}");
        assert_eq!(body, &bytes[first..=last], "{range}");
    }
    let (s, h, _) = download(&relay, &id, Some("bytes=200000-")).await;
    assert_eq!(s, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(h["content-range"], "bytes */200000");
    // Several ranges: the whole blob.
    let (s, _, body) = download(&relay, &id, Some("bytes=0-1,5-6")).await;
    assert_eq!((s, body.len()), (StatusCode::OK, 200_000));
    let (s, body) = relay.get(&format!("/v1/blobs/{}", hex_id(&[9; 32]))).await;
    assert_eq!(refused(s, &body), NOT_FOUND);
    let (s, body) = relay.get("/v1/blobs/XYZ/status").await;
    assert_eq!(refused(s, &body), (StatusCode::BAD_REQUEST, ErrorCode::MALFORMED));

    // On disk: one file per blob, exactly the bytes received.
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut want = vec![dir.join(hex_id(&id)), dir.join(hex_id(&small))];
    want.sort();
    assert_eq!(files, want);
    assert_eq!(std::fs::read(dir.join(hex_id(&id))).unwrap(), bytes);
    assert_eq!(std::fs::read(dir.join(hex_id(&small))).unwrap(), [1; 4]);
    // The row: id, length, progress, times; nothing else.
    assert_eq!(
        blob_columns(&url).await,
        ["id", "length", "received", "created_ms", "completed_ms", "expires_ms"]
    );
    assert_eq!(counter(&relay, "blob_bytes_received_total").await, 200_004);
    assert_eq!(counter(&relay, "blob_downloads_total").await, 7);
    relay.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The column names of the `blobs` table.
async fn blob_columns(url: &str) -> Vec<String> {
    use sqlx::{Column, Connection, Row};
    if url.starts_with("sqlite://") {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        let row = sqlx::query("SELECT * FROM blobs").fetch_one(&mut c).await.unwrap();
        row.columns().iter().map(|c| c.name().to_owned()).collect()
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        let row = sqlx::query("SELECT * FROM blobs").fetch_one(&mut c).await.unwrap();
        row.columns().iter().map(|c| c.name().to_owned()).collect()
    }
}

/// An upload resumes on a new relay over the same database and directory: the status
/// gives the offset, the rest uploads, the download matches.
async fn upload_resumes_after_restart(url: String) {
    let dir = temp_dir();
    let mut r = rng(4);
    let alice = account(&mut r, 1);
    let d = &alice.devices[0];
    let bytes = content(40, 50_000);
    let id = {
        let mut relay = start(&url, &dir, |_| {}).await;
        assert_eq!(relay.register(&alice).await, StatusCode::CREATED);
        let (epoch, t) = tokens(&relay, d, 1).await.unwrap();
        let id = create(&relay, epoch, t[0], bytes.len() as u64).await.unwrap();
        piece(&relay, &id, 0, &bytes[..20_000]).await.unwrap();
        relay.stop().await;
        id
    };
    let mut relay = start(&url, &dir, |_| {}).await;
    let st = status(&relay, &id).await.unwrap();
    assert_eq!((st.length, st.received), (50_000, 20_000));
    piece(&relay, &id, st.received, &bytes[20_000..]).await.unwrap();
    let (s, _, body) = download(&relay, &id, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, bytes);
    relay.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The collector deletes stale uploads, then expired blobs (rows and files), orphan
/// files, and the keys of retired epochs: their tokens are refused after. A token of the
/// previous epoch still works.
async fn collection_and_epochs(url: String) {
    let dir = temp_dir();
    let mut relay = start(&url, &dir, |c| {
        c.blobs.upload_ttl_secs = 3600;
        c.blobs.blob_ttl_secs = 10 * 86_400;
    })
    .await;
    let mut r = rng(5);
    let alice = account(&mut r, 1);
    assert_eq!(relay.register(&alice).await, StatusCode::CREATED);
    let d = &alice.devices[0];
    let complete = upload(&relay, d, &content(50, 1000)).await;
    let (epoch, t) = tokens(&relay, d, 3).await.unwrap();
    let partial = create(&relay, epoch, t[0], 1000).await.unwrap();
    piece(&relay, &partial, 0, &[1; 100]).await.unwrap();
    let orphan = dir.join(hex_id(&[0x0f; 32]));
    std::fs::write(&orphan, b"left by a crash").unwrap();
    let other = dir.join("not-a-blob");
    std::fs::write(&other, b"kept").unwrap();

    // Nothing is due yet but the orphan.
    let report = gc(&relay, T0).await;
    assert_eq!((report.blobs, report.orphans), (0, 1));
    assert!(!orphan.exists() && other.exists());

    // After the upload deadline: the partial upload is gone, the complete blob stays.
    let later = T0 + 3_600_001;
    relay.state.blobs.clock.set_ms(later);
    assert_eq!(status(&relay, &partial).await, Err(NOT_FOUND));
    assert_eq!(gc(&relay, later).await.blobs, 1);
    assert!(!dir.join(hex_id(&partial)).exists());
    assert!(dir.join(hex_id(&complete)).exists());
    assert_eq!(download(&relay, &complete, None).await.0, StatusCode::OK);

    // A token of the previous epoch still creates a blob.
    let next_epoch = T0 + EPOCH_MS;
    relay.state.blobs.clock.set_ms(next_epoch);
    assert_eq!(issuer(&relay).await.epoch, epoch + 1);
    create(&relay, epoch, t[1], 10).await.unwrap();

    // After the retention: the complete blob is gone, its file too.
    let expired = T0 + 15 * DAY_MS;
    relay.state.blobs.clock.set_ms(expired);
    assert_eq!(download(&relay, &complete, None).await.0, StatusCode::NOT_FOUND);
    let report = gc(&relay, expired).await;
    assert_eq!(report.blobs, 2);
    assert!(!dir.join(hex_id(&complete)).exists());
    // Two epochs on, the first epoch's key and spent tokens are retired: its last token
    // is refused.
    assert_eq!((report.issuer_keys, report.spent), (1, 3));
    assert_eq!(
        create(&relay, epoch, t[2], 10).await,
        Err((StatusCode::FORBIDDEN, ErrorCode::TOKEN_INVALID))
    );
    assert!(counter(&relay, "blob_gc_deleted_total").await >= 4);
    relay.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The unauthenticated blob endpoints are rate limited per address, and in total.
async fn requests_are_rate_limited(url: String) {
    let dir = temp_dir();
    let mut relay = start(&url, &dir, |c| {
        c.blobs.requests_per_minute_per_addr = 1;
        c.blobs.requests_burst_per_addr = 3;
        c.blobs.requests_per_second_total = 1;
        c.blobs.requests_burst_total = 5;
    })
    .await;
    let path = format!("/v1/blobs/{}/status", hex_id(&[3; 32]));
    let limited = (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RATE_LIMITED);
    let mut answers = vec![];
    for _ in 0..4 {
        let (s, body) = get_from(&relay, 1, &path).await;
        answers.push(refused(s, &body));
    }
    assert_eq!(answers, [NOT_FOUND, NOT_FOUND, NOT_FOUND, limited]);
    let (s, body) = get_from(&relay, 1, "/v1/blobs/issuer").await;
    assert_eq!(refused(s, &body), limited);
    // Another address has its own budget, until the total runs out.
    let (s, body) = get_from(&relay, 2, &path).await;
    assert_eq!(refused(s, &body), NOT_FOUND);
    let (s, _) = get_from(&relay, 3, "/v1/blobs/issuer").await;
    assert_eq!(s, StatusCode::OK);
    let mut last = vec![];
    for host in 4..7 {
        let (s, body) = get_from(&relay, host, &path).await;
        last.push(refused(s, &body));
    }
    assert!(last.contains(&limited), "{last:?}");
    assert!(counter(&relay, "blob_requests_refused_total").await >= 2);
    relay.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client that stops reading a download cannot keep its slot: one address holds at most
/// `max_transfers_per_addr` transfers while other addresses still get theirs, and a
/// download not finished by its deadline gives its slot back and is cut.
async fn stalled_downloads_give_their_slots_back(url: String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = temp_dir();
    let mut relay = start(&url, &dir, |c| {
        c.blobs.max_transfers_per_addr = 1;
        c.blobs.max_concurrent_downloads = 2;
        c.blobs.min_download_bytes_per_second = 16 << 20;
        c.limits.request_timeout_ms = 2_000;
    })
    .await;
    let mut r = rng(4);
    let alice = account(&mut r, 1);
    assert_eq!(relay.register(&alice).await, StatusCode::CREATED);
    // More than the loopback socket buffers take in, so a reader that stops holds the body.
    let bytes = content(40, 24 << 20);
    let (epoch, t) = tokens(&relay, &alice.devices[0], 1).await.unwrap();
    let id = create(&relay, epoch, t[0], bytes.len() as u64).await.unwrap();
    for (i, chunk) in bytes.chunks(4 << 20).enumerate() {
        piece(&relay, &id, (i * (4 << 20)) as u64, chunk).await.unwrap();
    }
    let path = format!("/v1/blobs/{}", hex_id(&id));

    // From 127.0.0.1: the answer's head, then nothing more is read.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let mut stalled = socket.connect(relay.addr).await.unwrap();
    stalled
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: {}\r\n\r\n", relay.addr).as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut b = [0u8; 256];
        let n = tokio::time::timeout(FAILSAFE, stalled.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the connection closed before the head");
        head.extend_from_slice(&b[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));

    // The same address gets BUSY; another address downloads.
    let (s, body) = get_from(&relay, 1, &path).await;
    assert_eq!(refused(s, &body).1, ErrorCode::BUSY);
    let (s, body) = get_from(&relay, 2, &path).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body == bytes, "the other address's download is whole");

    // Past its deadline (2 s + 24 MiB at 16 MiB/s, rounded up) the stalled download gives
    // its slot back while its reader still reads nothing.
    let since = std::time::Instant::now();
    let ok = loop {
        let (s, body) = get_from(&relay, 1, &path).await;
        if s == StatusCode::OK {
            break body;
        }
        assert_eq!(refused(s, &body).1, ErrorCode::BUSY);
        assert!(since.elapsed() < FAILSAFE, "the slot never came back");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(ok == bytes);
    assert!(counter(&relay, "blob_downloads_cut_total").await >= 1);

    // The stalled reader, reading again, finds its download cut short.
    let mut got = 0usize;
    let mut b = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(FAILSAFE, stalled.read(&mut b)).await.unwrap() {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(got < bytes.len(), "the stalled download was cut ({got} bytes)");
    relay.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// The S3 backend against moto's S3 server.

/// A moto S3 server on a free loopback port, killed when dropped.
struct Moto {
    child: std::process::Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// moto_server: `$SOTTO_MOTO_SERVER`, else the virtualenv scripts/setup.sh makes. Missing:
/// a failure with `CI=true`, else a loud skip.
fn moto_server() -> Option<PathBuf> {
    let path = std::env::var_os("SOTTO_MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("SOTTO_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/sotto"));
            cache.join("moto-5.2.5/bin/moto_server")
        });
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{} is missing in CI: run scripts/setup.sh", path.display());
    }
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: the S3 blob backend ({} is missing; scripts/setup.sh installs it) ***\n",
            path.display()
        );
    });
    None
}

/// Starts moto and waits until it says it listens (its own log line, not a timer).
async fn start_moto() -> Option<Moto> {
    use std::io::BufRead;
    let bin = moto_server()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let moto = Moto { child, port };
    let ready = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::BufReader::new(stderr).lines();
        for line in lines.by_ref() {
            if line.is_ok_and(|l| l.contains("Running on")) {
                // Keep draining, so moto never blocks on a full pipe.
                std::thread::spawn(move || lines.for_each(drop));
                return true;
            }
        }
        false
    });
    let ready = tokio::time::timeout(FAILSAFE, ready)
        .await
        .expect("moto starts")
        .unwrap();
    assert!(ready, "moto_server exited before listening");
    Some(moto)
}

/// A plain HTTP request to moto: the status.
async fn moto_request(moto: &Moto, method: Method, path: &str) -> StatusCode {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", moto.port)).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("127.0.0.1:{}", moto.port))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(FAILSAFE, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    resp.status()
}

const BUCKET: &str = "sotto-blobs";

async fn start_s3(url: &str, dir: &Path, moto: &Moto) -> Relay {
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    start(url, dir, move |c| {
        c.blobs.backend = sotto_relay::config::BlobBackend::S3;
        c.blobs.bucket = Some(BUCKET.to_owned());
        c.blobs.endpoint = Some(endpoint);
        c.blobs.allow_http = true;
        c.blobs.access_key_id = Some("testing".to_owned());
        c.blobs.secret_access_key = Some(sotto_relay::config::S3Secret("testing".to_owned()));
        c.blobs.upload_ttl_secs = 3600;
        c.blobs.blob_ttl_secs = 86_400;
    })
    .await
}

/// With the S3 backend: an upload staged on disk, resumed after a restart, lands in the
/// bucket on completion (the staging file is deleted), downloads whole and by range from
/// the bucket, and the collector deletes the object once the blob expired.
async fn s3_upload_resume_download_collect(url: String) {
    let Some(moto) = start_moto().await else {
        return;
    };
    assert_eq!(
        moto_request(&moto, Method::PUT, &format!("/{BUCKET}")).await,
        StatusCode::OK
    );
    let dir = temp_dir();
    let mut r = rng(6);
    let alice = account(&mut r, 1);
    let d = &alice.devices[0];
    // Above one multipart part (8 MiB), so the upload is multipart.
    let bytes = content(60, 9 << 20);
    let id = {
        let mut relay = start_s3(&url, &dir, &moto).await;
        assert_eq!(relay.register(&alice).await, StatusCode::CREATED);
        let (epoch, t) = tokens(&relay, d, 1).await.unwrap();
        let id = create(&relay, epoch, t[0], bytes.len() as u64).await.unwrap();
        piece(&relay, &id, 0, &bytes[..4 << 20]).await.unwrap();
        relay.stop().await;
        id
    };
    let mut relay = start_s3(&url, &dir, &moto).await;
    let st = status(&relay, &id).await.unwrap();
    assert_eq!(st.received, 4 << 20);
    piece(&relay, &id, st.received, &bytes[4 << 20..8 << 20]).await.unwrap();
    let done = piece(&relay, &id, 8 << 20, &bytes[8 << 20..]).await.unwrap();
    assert_eq!(done.received, bytes.len() as u64);
    assert!(!dir.join(hex_id(&id)).exists(), "the staging file is deleted");
    let object = format!("/{BUCKET}/blobs/{}", hex_id(&id));
    assert_eq!(moto_request(&moto, Method::HEAD, &object).await, StatusCode::OK);
    let (s, h, body) = download(&relay, &id, None).await;
    assert_eq!((s, h["accept-ranges"].to_str().unwrap()), (StatusCode::OK, "bytes"));
    assert!(body == bytes, "the download matches");
    let (s, h, body) = download(&relay, &id, Some("bytes=100-199")).await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    assert_eq!(h["content-range"], format!("bytes 100-199/{}", bytes.len()));
    assert_eq!(body, &bytes[100..200]);
    let (s, _, body) = download(&relay, &id, Some("bytes=-10")).await;
    assert_eq!(
        (s, &body[..]),
        (StatusCode::PARTIAL_CONTENT, &bytes[bytes.len() - 10..])
    );

    let expired = T0 + 2 * DAY_MS;
    relay.state.blobs.clock.set_ms(expired);
    assert_eq!(gc(&relay, expired).await.blobs, 1);
    assert_eq!(moto_request(&moto, Method::HEAD, &object).await, StatusCode::NOT_FOUND);
    assert_eq!(status(&relay, &id).await, Err(NOT_FOUND));
    relay.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
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
            t!(tokens_are_single_use_and_quota_bound);
            t!(sizes_are_bounded);
            t!(upload_in_pieces_and_download_ranges);
            t!(upload_resumes_after_restart);
            t!(collection_and_epochs);
            t!(requests_are_rate_limited);
            t!(stalled_downloads_give_their_slots_back);
            t!(s3_upload_resume_download_collect);
        }
    };
}

backend!(sqlite, Some(sqlite_url()));
backend!(postgres, postgres_url().await);
