//! Shared-body fan-out (docs/protocol.md §13.5, §13.7): a `Send` uploads its body once and
//! a head per recipient; the relay stores the body once, references it from every
//! mailbox row, delivers `head ‖ body` to each device, and deletes the body with its last
//! row (ack, expiry, the device's removal or re-keying). Runs on SQLite and on
//! PostgreSQL: over real sockets, and through the storage API with the database read
//! directly.

mod common;

use std::sync::Arc;

use common::relay::*;
use common::*;
use futures_util::future::join_all;
use hyper::StatusCode;
use rand_core::RngCore;
use sotto_crypto::{AccountId, DeviceId};
use sotto_proto::{ErrorCode, Frame, Recipient, Send, SendOutcome, SendResult};
use sotto_relay::Config;
use sotto_relay::storage::{SendParams, SendStored, Storage, Store, WriteOp, WriteOutcome};
use sqlx::Connection;

/// 32 accounts of 63 devices: 2,016 mailboxes, under the default `max_recipients` (2048).
const ACCOUNTS: usize = 32;
const DEVICES: u32 = 63;
const MAILBOXES: usize = ACCOUNTS * DEVICES as usize;

const NOW: u64 = 1_700_000_000;

fn group(seed: u64, accounts: usize, devices: u32) -> Vec<TestAccount> {
    let mut r = rng(seed);
    (0..accounts).map(|_| account(&mut r, devices)).collect()
}

/// Every device of `accounts`, in account then device order.
fn devices(accounts: &[TestAccount]) -> Vec<&TestDevice> {
    accounts.iter().flat_map(|a| a.devices.iter()).collect()
}

/// Recipient `i`'s head in fan-out `tag`: distinct per recipient, empty for every fourth
/// (its envelope is then the body alone).
fn head(i: usize, tag: u8) -> Vec<u8> {
    if i.is_multiple_of(4) {
        Vec::new()
    } else {
        let mut h = vec![tag; 1 + i % 9];
        h.extend_from_slice(&(i as u32).to_be_bytes());
        h
    }
}

fn fan_out(accounts: &[TestAccount], tag: u8) -> Vec<Recipient> {
    devices(accounts)
        .into_iter()
        .enumerate()
        .map(|(i, d)| Recipient {
            account_id: d.account_id(),
            device_id: d.id(),
            head: head(i, tag),
        })
        .collect()
}

fn random(r: &mut rand_chacha::ChaCha20Rng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    r.fill_bytes(&mut v);
    v
}

fn shared(message_id: u64, body: &[u8], recipients: Vec<Recipient>) -> Frame {
    Frame::Send(Send {
        message_id,
        access: vec![],
        body: body.to_vec(),
        recipients,
    })
}

async fn send_shared(ws: &mut Ws, message_id: u64, body: &[u8], recipients: Vec<Recipient>) -> SendOutcome {
    send(ws, &shared(message_id, body, recipients)).await;
    match recv(ws).await {
        Frame::SendResult(SendResult {
            message_id: id,
            outcome,
        }) if id == message_id => outcome,
        other => panic!("expected the answer to {message_id}, got {other:?}"),
    }
}

fn stored_seqs(o: SendOutcome) -> Vec<u64> {
    match o {
        SendOutcome::Stored { seqs } => seqs,
        other => panic!("expected Stored, got {other:?}"),
    }
}

/// Reads `want` deliveries, `(seq, envelope)` in order, and acks the last.
async fn expect_and_ack(ws: &mut Ws, want: &[(u64, Vec<u8>)]) {
    for (seq, envelope) in want {
        match recv(ws).await {
            Frame::Deliver(d) => {
                assert_eq!(d.seq, *seq);
                assert!(d.envelope == *envelope, "seq {seq}: not head ‖ body");
            }
            other => panic!("expected a delivery, got {other:?}"),
        }
    }
    if let Some((seq, _)) = want.last() {
        send(ws, &Frame::Ack { seq: *seq }).await;
    }
}

/// Limits for a relay that 2,000 sockets from 127.0.0.1 connect to and that takes more
/// than one full fan-out from one connection.
fn crowd(c: &mut Config) {
    let l = &mut c.limits;
    l.max_ws_per_addr = 4096;
    l.max_unauthenticated_per_addr = 4096;
    l.max_tcp_connections = 8192;
    l.max_tcp_connections_per_addr = 8192;
    l.rate_burst = 10_000;
    l.addr_rate_burst = 10_000;
    l.registrations_per_minute_per_addr = 1000;
    l.registrations_burst_per_addr = 1000;
}

/// A fan-out to 2,016 mailboxes (32 accounts × 63 devices), then a 1:1-style send to one
/// account (whole envelopes in the heads, no body), then another fan-out: every device
/// gets `head_i ‖ body` (or its whole envelope) with the seqs the sender was told, in seq
/// order. One device in eight is connected when the messages arrive (live delivery);
/// the others connect afterwards and read their mailbox from the database.
async fn delivers_head_and_body(url: String) {
    let mut relay = Relay::start(&url, crowd).await;
    let mut r = rng(60);
    let accounts = group(61, ACCOUNTS, DEVICES);
    let alice = account(&mut r, 1);
    assert_eq!(relay.register(&alice).await, StatusCode::CREATED);
    for a in &accounts {
        assert_eq!(relay.register(a).await, StatusCode::CREATED);
    }
    let all = devices(&accounts);
    assert_eq!(all.len(), MAILBOXES);
    let (relay_ref, all) = (&relay, &all);
    let mut live = Vec::new();
    let online: Vec<usize> = (0..MAILBOXES).step_by(8).collect();
    for chunk in online.chunks(32) {
        live.extend(
            join_all(chunk.iter().map(|&i| async move {
                let mut ws = relay_ref.connect(all[i]).await;
                assert_eq!(recv(&mut ws).await, Frame::QueueEmpty);
                (i, ws)
            }))
            .await,
        );
    }

    let mut wa = relay.connect(&alice.devices[0]).await;
    assert_eq!(recv(&mut wa).await, Frame::QueueEmpty);
    let (body_a, body_b) = (random(&mut r, 1024), random(&mut r, 700));
    let first = stored_seqs(send_shared(&mut wa, 1, &body_a, fan_out(&accounts, 1)).await);
    let whole: Vec<Recipient> = accounts[0]
        .devices
        .iter()
        .map(|d| Recipient {
            account_id: d.account_id(),
            device_id: d.id(),
            head: format!("whole envelope for device {}", d.id().0).into_bytes(),
        })
        .collect();
    let one_to_one = stored_seqs(send_shared(&mut wa, 2, &[], whole.clone()).await);
    let second = stored_seqs(send_shared(&mut wa, 3, &body_b, fan_out(&accounts, 2)).await);
    assert_eq!((first.len(), second.len()), (MAILBOXES, MAILBOXES));

    // What device `i` must receive, in this order.
    let expected = |i: usize| -> Vec<(u64, Vec<u8>)> {
        let mut want = vec![(first[i], [head(i, 1), body_a.clone()].concat())];
        if i < whole.len() {
            want.push((one_to_one[i], whole[i].head.clone()));
        }
        want.push((second[i], [head(i, 2), body_b.clone()].concat()));
        assert!(want.windows(2).all(|w| w[0].0 < w[1].0), "seqs ascend");
        want
    };
    let expected = &expected;
    join_all(
        live.iter_mut()
            .map(|(i, ws)| async move { expect_and_ack(ws, &expected(*i)).await }),
    )
    .await;
    let offline: Vec<usize> = (0..MAILBOXES).filter(|i| !i.is_multiple_of(8)).collect();
    for chunk in offline.chunks(32) {
        join_all(chunk.iter().map(|&i| async move {
            let mut ws = relay_ref.connect(all[i]).await;
            expect_and_ack(&mut ws, &expected(i)).await;
            assert_eq!(recv(&mut ws).await, Frame::QueueEmpty);
            hang_up(ws).await;
        }))
        .await;
    }
    let text = relay.metrics().await;
    let delivered = format!("sotto_relay_envelopes_delivered_total {}", 2 * MAILBOXES + whole.len());
    assert!(text.contains(&delivered), "{delivered}");
    drop((wa, live));
    relay.stop().await;
}

/// The relay's checks on `head ‖ body`: each recipient's envelope counts whole against
/// `max_envelope_bytes` and the mailbox byte bound, an empty envelope is `MALFORMED`,
/// and an ack frees the whole length.
async fn limits_count_head_and_body(url: String) {
    let mut relay = Relay::start(&url, |c: &mut Config| {
        c.limits.max_envelope_bytes = 1000;
        c.limits.max_mailbox_bytes = 2000;
    })
    .await;
    let mut r = rng(62);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 3);
    for a in [&alice, &bob] {
        assert_eq!(relay.register(a).await, StatusCode::CREATED);
    }
    let mut wa = relay.connect(&alice.devices[0]).await;
    assert_eq!(recv(&mut wa).await, Frame::QueueEmpty);
    let to_bob = |head: &[u8]| -> Vec<Recipient> {
        bob.devices
            .iter()
            .map(|d| Recipient {
                account_id: bob.id(),
                device_id: d.id(),
                head: head.to_vec(),
            })
            .collect()
    };
    let rejected = |code| SendOutcome::Rejected { code };
    // Head and body are each under the limit, their concatenation is not.
    assert_eq!(
        send_shared(&mut wa, 1, &[1; 901], to_bob(&[2; 100])).await,
        rejected(ErrorCode::ENVELOPE_TOO_LARGE)
    );
    assert!(matches!(
        send_shared(&mut wa, 2, &[1; 900], to_bob(&[2; 100])).await,
        SendOutcome::Stored { .. }
    ));
    // No head and no body: an empty envelope.
    assert_eq!(
        send_shared(&mut wa, 3, &[], to_bob(&[])).await,
        rejected(ErrorCode::MALFORMED)
    );
    let mut one_empty = to_bob(b"x");
    one_empty[1].head.clear();
    assert_eq!(
        send_shared(&mut wa, 4, &[], one_empty).await,
        rejected(ErrorCode::MALFORMED)
    );
    // The empty head is fine with a body: the envelope is the body.
    assert!(matches!(
        send_shared(&mut wa, 5, &[3; 900], to_bob(&[])).await,
        SendOutcome::Stored { .. }
    ));
    // 1000 + 900 bytes are in each mailbox: 101 more would pass 2000, though only one
    // byte of them is a head.
    assert_eq!(
        send_shared(&mut wa, 6, &[4; 100], to_bob(&[5])).await,
        rejected(ErrorCode::MAILBOX_FULL)
    );
    assert!(matches!(
        send_shared(&mut wa, 7, &[4; 99], to_bob(&[5])).await,
        SendOutcome::Stored { .. }
    ));
    // Acks free each envelope's whole length (head and body).
    for d in &bob.devices {
        let mut wb = relay.connect(d).await;
        let mut last = 0;
        for _ in 0..3 {
            match recv(&mut wb).await {
                Frame::Deliver(x) => last = x.seq,
                other => panic!("expected a delivery, got {other:?}"),
            }
        }
        assert_eq!(recv(&mut wb).await, Frame::QueueEmpty);
        send(&mut wb, &Frame::Ack { seq: last }).await;
        hang_up(wb).await;
    }
    assert!(matches!(
        send_shared(&mut wa, 8, &[6; 999], to_bob(&[7])).await,
        SendOutcome::Stored { .. }
    ));
    assert!(matches!(
        send_shared(&mut wa, 9, &[6; 999], to_bob(&[7])).await,
        SendOutcome::Stored { .. }
    ));
    drop(wa);
    relay.stop().await;
}

/// The byte rate is charged what was uploaded, the body once: eight sends of a 900-byte
/// body and 54 bytes of heads to eight devices (7,254 envelope bytes each, but 954
/// uploaded) pass a burst of 8,000 bytes, the ninth does not.
async fn rate_charges_uploaded_bytes(url: String) {
    let mut relay = Relay::start(&url, |c: &mut Config| {
        c.limits.rate_bytes_per_second = 1;
        c.limits.rate_bytes_burst = 8_000;
    })
    .await;
    let mut r = rng(63);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 8);
    for a in [&alice, &bob] {
        assert_eq!(relay.register(a).await, StatusCode::CREATED);
    }
    let mut wa = relay.connect(&alice.devices[0]).await;
    assert_eq!(recv(&mut wa).await, Frame::QueueEmpty);
    for i in 0..8 {
        assert!(matches!(
            send_shared(&mut wa, i, &[1; 900], fan_out(std::slice::from_ref(&bob), 1)).await,
            SendOutcome::Stored { .. }
        ));
    }
    assert_eq!(
        send_shared(&mut wa, 9, &[1; 900], fan_out(std::slice::from_ref(&bob), 1)).await,
        SendOutcome::Rejected {
            code: ErrorCode::RATE_LIMITED
        }
    );
    drop(wa);
    relay.stop().await;
}

/// A body too large for what is left of the live-queue budget is not queued: the
/// connected recipients read `head ‖ body` from their mailbox instead.
async fn spent_live_budget_reads_the_mailbox(url: String) {
    let mut relay = Relay::start(&url, |c: &mut Config| {
        c.limits.max_live_queue_bytes = 600;
    })
    .await;
    let mut r = rng(64);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 2);
    for a in [&alice, &bob] {
        assert_eq!(relay.register(a).await, StatusCode::CREATED);
    }
    let mut wb = Vec::new();
    for d in &bob.devices {
        let mut ws = relay.connect(d).await;
        assert_eq!(recv(&mut ws).await, Frame::QueueEmpty);
        wb.push(ws);
    }
    let mut wa = relay.connect(&alice.devices[0]).await;
    assert_eq!(recv(&mut wa).await, Frame::QueueEmpty);
    let recipients = fan_out(std::slice::from_ref(&bob), 1);
    let (small, large) = (random(&mut r, 200), random(&mut r, 1000));
    // The small body is shared through the live queues, the large one is not.
    let s1 = stored_seqs(send_shared(&mut wa, 1, &small, recipients.clone()).await);
    let s2 = stored_seqs(send_shared(&mut wa, 2, &large, recipients.clone()).await);
    for (i, ws) in wb.iter_mut().enumerate() {
        let want = [
            (s1[i], [recipients[i].head.clone(), small.clone()].concat()),
            (s2[i], [recipients[i].head.clone(), large.clone()].concat()),
        ];
        expect_and_ack(ws, &want).await;
    }
    let text = relay.metrics().await;
    assert!(text.contains("sotto_relay_live_budget_overflow_total 2"), "{text}");
    drop((wa, wb));
    relay.stop().await;
}

// ---------------------------------------------------------------------------------------
// Storage, with the database read directly.

/// A direct connection to the relay's database.
enum Db {
    Sqlite(sqlx::SqliteConnection),
    Pg(sqlx::PgConnection),
}

macro_rules! on {
    ($db:expr, $c:ident => $e:expr) => {
        match $db {
            Db::Sqlite($c) => $e,
            Db::Pg($c) => $e,
        }
    };
}

/// An envelope row: (seq, ciphertext (the head), body_id, body_len).
type Row = (i64, Vec<u8>, Option<i64>, i64);

impl Db {
    async fn open(url: &str) -> Db {
        if url.starts_with("postgres") {
            Db::Pg(sqlx::PgConnection::connect(url).await.unwrap())
        } else {
            Db::Sqlite(sqlx::SqliteConnection::connect(url).await.unwrap())
        }
    }

    /// Every body row: (id, expires_at, body).
    async fn bodies(&mut self) -> Vec<(i64, i64, Vec<u8>)> {
        on!(self, c => sqlx::query_as("SELECT id, expires_at, body FROM bodies ORDER BY id")
            .fetch_all(c)
            .await
            .unwrap())
    }

    /// One mailbox's envelope rows, by seq.
    async fn rows(&mut self, a: &AccountId, d: DeviceId) -> Vec<Row> {
        on!(self, c => sqlx::query_as(
            "SELECT seq, ciphertext, body_id, body_len FROM envelopes \
             WHERE account_id = $1 AND device_id = $2 ORDER BY seq",
        )
        .bind(&a.0[..])
        .bind(i64::from(d.0))
        .fetch_all(c)
        .await
        .unwrap())
    }

    /// Every envelope row's (ciphertext, body_id).
    async fn all_rows(&mut self) -> Vec<(Vec<u8>, Option<i64>)> {
        on!(self, c => sqlx::query_as("SELECT ciphertext, body_id FROM envelopes")
            .fetch_all(c)
            .await
            .unwrap())
    }

    /// A mailbox's (depth, bytes) counters.
    async fn counters(&mut self, a: &AccountId, d: DeviceId) -> (i64, i64) {
        on!(self, c => sqlx::query_as("SELECT depth, bytes FROM devices WHERE account_id = $1 AND device_id = $2")
            .bind(&a.0[..])
            .bind(i64::from(d.0))
            .fetch_one(c)
            .await
            .unwrap())
    }

    /// A row as a relay before shared bodies stored it: no body columns set.
    async fn insert_legacy(&mut self, a: &AccountId, d: DeviceId, seq: i64, envelope: &[u8]) {
        let len = envelope.len() as i64;
        on!(self, c => {
            sqlx::query(
                "INSERT INTO envelopes (account_id, device_id, seq, received_at, expires_at, ciphertext) \
                 VALUES ($1, $2, $3, 0, $4, $5)",
            )
            .bind(&a.0[..])
            .bind(i64::from(d.0))
            .bind(seq)
            .bind((NOW + 1000) as i64)
            .bind(envelope)
            .execute(&mut *c)
            .await
            .unwrap();
            sqlx::query(
                "UPDATE devices SET next_seq = next_seq + 1, depth = depth + 1, bytes = bytes + $3 \
                 WHERE account_id = $1 AND device_id = $2",
            )
            .bind(&a.0[..])
            .bind(i64::from(d.0))
            .bind(len)
            .execute(&mut *c)
            .await
            .unwrap();
        })
    }

    /// A body row no envelope references.
    async fn insert_orphan(&mut self, expires_at: u64) {
        on!(self, c => {
            sqlx::query("INSERT INTO bodies (expires_at, body) VALUES ($1, $2)")
                .bind(expires_at as i64)
                .bind(&b"orphan"[..])
                .execute(c)
                .await
                .unwrap();
        })
    }
}

fn params(sender: &TestDevice) -> SendParams {
    SendParams {
        sender: Some((sender.account_id(), sender.id())),
        now_s: NOW,
        expires_at_s: NOW + 1000,
        max_mailbox_depth: 100,
        max_mailbox_bytes: 1 << 20,
        max_request_depth: 100,
        max_request_bytes: 1 << 20,
    }
}

fn stored(s: SendStored) -> Vec<u64> {
    match s {
        SendStored::Stored(seqs) => seqs,
        other => panic!("expected Stored, got {other:?}"),
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The body of a fan-out to 2,016 mailboxes is stored once: one body row, and per
/// mailbox a row holding only the head, the body's id and length. Each mailbox is
/// charged head + body; fetch joins them. The body row goes with the last ack, with
/// expiry, and with the removal or re-keying of the last device holding a row for it.
/// Rows stored before bodies existed keep working, and expiry also removes an expired
/// body that nothing references.
async fn stored_once(s: Arc<Store>, url: String) {
    let mut db = Db::open(&url).await;
    let mut r = rng(70);
    let alice = account(&mut r, 1);
    let accounts = group(71, ACCOUNTS, DEVICES);
    s.put_device_list(&alice.list).await.unwrap();
    for a in &accounts {
        s.put_device_list(&a.list).await.unwrap();
    }
    let all = devices(&accounts);
    let p = params(&alice.devices[0]);
    let body = random(&mut r, 1024);
    let recipients = fan_out(&accounts, 1);
    let seqs = stored(s.store_shared(p, &[], &body, &recipients).await.unwrap());
    assert_eq!(seqs, vec![1; MAILBOXES]);

    let bodies = db.bodies().await;
    assert_eq!(bodies.len(), 1, "one body row for the fan-out");
    let (id, expires_at, stored_body) = &bodies[0];
    assert_eq!((*expires_at, stored_body), ((NOW + 1000) as i64, &body));
    let rows = db.all_rows().await;
    assert_eq!(rows.len(), MAILBOXES);
    for (ciphertext, body_id) in &rows {
        assert_eq!(*body_id, Some(*id));
        assert!(
            ciphertext.len() <= 13 && !contains(ciphertext, &body[..32]),
            "a row holds only its head"
        );
    }
    for (i, d) in all.iter().enumerate().step_by(97) {
        let h = head(i, 1);
        assert_eq!(
            db.rows(&d.account_id(), d.id()).await,
            vec![(1, h.clone(), Some(*id), body.len() as i64)]
        );
        assert_eq!(
            db.counters(&d.account_id(), d.id()).await,
            (1, (h.len() + body.len()) as i64)
        );
        let fetched = s.fetch(&d.account_id(), d.id(), 0, NOW, 10).await.unwrap();
        assert_eq!(fetched.len(), 1);
        assert_eq!(fetched[0].envelope, [h, body.clone()].concat());
    }

    // Every device but the last acks, in one batch: the body stays for the last one.
    let acks: Vec<WriteOp<'_>> = all[..MAILBOXES - 1]
        .iter()
        .map(|d| WriteOp::Ack {
            account: d.account_id(),
            device: d.id(),
            seq: 1,
        })
        .collect();
    let outcomes = s.write_batch(&acks).await.unwrap();
    assert!(outcomes.iter().all(|o| matches!(o, WriteOutcome::Ack(1))));
    assert_eq!(db.bodies().await.len(), 1);
    assert_eq!(db.all_rows().await.len(), 1);
    assert_eq!(db.counters(&all[0].account_id(), all[0].id()).await, (0, 0));
    let last = all[MAILBOXES - 1];
    assert_eq!(s.ack(&last.account_id(), last.id(), 1).await.unwrap(), 1);
    assert!(db.bodies().await.is_empty(), "the last ack deletes the body");
    assert!(db.all_rows().await.is_empty());

    // Expiry: a second fan-out, and a 1:1 send (no body row) to one of its mailboxes.
    let body2 = random(&mut r, 300);
    stored(s.store_shared(p, &[], &body2, &fan_out(&accounts, 2)).await.unwrap());
    stored(
        s.store_send(
            p,
            &[Recipient {
                account_id: all[5].account_id(),
                device_id: all[5].id(),
                head: b"a whole envelope".to_vec(),
            }],
        )
        .await
        .unwrap(),
    );
    assert_eq!(db.bodies().await.len(), 1, "a 1:1 send stores no body");
    assert_eq!(s.expire(NOW + 999).await.unwrap(), 0);
    assert_eq!(db.bodies().await.len(), 1);
    assert_eq!(s.expire(NOW + 1000).await.unwrap(), MAILBOXES as u64 + 1);
    assert!(db.bodies().await.is_empty(), "expiry deletes the body");
    assert!(db.all_rows().await.is_empty());
    assert_eq!(db.counters(&all[5].account_id(), all[5].id()).await, (0, 0));

    // Removal and re-keying: body X reaches P's devices 1 and 2, body Y device 3.
    let mut pa = account(&mut r, 3);
    s.put_device_list(&pa.list).await.unwrap();
    let to = |a: &TestAccount, ids: &[u32]| -> Vec<Recipient> {
        ids.iter()
            .map(|&i| Recipient {
                account_id: a.id(),
                device_id: DeviceId(i),
                head: vec![i as u8],
            })
            .collect()
    };
    let (x, y) = (random(&mut r, 64), random(&mut r, 65));
    stored(s.store_shared(p, &[], &x, &to(&pa, &[1, 2])).await.unwrap());
    stored(s.store_shared(p, &[], &y, &to(&pa, &[3])).await.unwrap());
    let body_rows = |b: Vec<(i64, i64, Vec<u8>)>| -> Vec<Vec<u8>> { b.into_iter().map(|r| r.2).collect() };
    assert_eq!(body_rows(db.bodies().await), vec![x.clone(), y.clone()]);
    // Device 2 leaves the list: X stays for device 1.
    let mut kept = std::mem::take(&mut pa.devices);
    kept.remove(1);
    pa.relist(2, kept);
    s.put_device_list(&pa.list).await.unwrap();
    assert_eq!(body_rows(db.bodies().await), vec![x.clone(), y.clone()]);
    // Device 3, the last (only) device with a row for Y, leaves: Y goes.
    let mut kept = std::mem::take(&mut pa.devices);
    kept.remove(1);
    pa.relist(3, kept);
    s.put_device_list(&pa.list).await.unwrap();
    assert_eq!(body_rows(db.bodies().await), vec![x.clone()]);
    // Device 1 is re-keyed: its mailbox empties and X goes.
    let rekeyed = device(pa.id(), 1, &mut r);
    pa.relist(4, vec![rekeyed]);
    s.put_device_list(&pa.list).await.unwrap();
    assert!(
        db.bodies().await.is_empty(),
        "re-keying the last device deletes the body"
    );
    assert!(db.all_rows().await.is_empty());

    // A row stored before shared bodies (no body columns set) is fetched and acked.
    let d = all[7];
    let seq = s.last_seq(&d.account_id(), d.id()).await.unwrap() as i64 + 1;
    db.insert_legacy(&d.account_id(), d.id(), seq, b"an old envelope").await;
    let fetched = s.fetch(&d.account_id(), d.id(), 0, NOW, 10).await.unwrap();
    assert_eq!(fetched.len(), 1);
    assert_eq!(fetched[0].envelope, b"an old envelope");
    assert_eq!(s.ack(&d.account_id(), d.id(), seq as u64).await.unwrap(), 1);
    assert_eq!(db.counters(&d.account_id(), d.id()).await, (0, 0));

    // The expiry run removes an expired body no row references (however it came to be),
    // and leaves a referenced one alone until its envelopes expire.
    db.insert_orphan(NOW - 1).await;
    stored(s.store_shared(p, &[], &x, &to(&accounts[1], &[1])).await.unwrap());
    assert_eq!(db.bodies().await.len(), 2);
    assert_eq!(s.expire(NOW).await.unwrap(), 0);
    assert_eq!(body_rows(db.bodies().await), vec![x.clone()]);
    on!(db, c => c.close().await.unwrap());
}

/// One write batch with two fan-outs and a 1:1 send: one body row per fan-out, each
/// mailbox row pointing at its own send's body.
async fn batch_with_several_bodies(s: Arc<Store>, url: String) {
    let mut db = Db::open(&url).await;
    let mut r = rng(72);
    let alice = account(&mut r, 1);
    let accounts = group(73, 3, 4);
    s.put_device_list(&alice.list).await.unwrap();
    for a in &accounts {
        s.put_device_list(&a.list).await.unwrap();
    }
    let p = params(&alice.devices[0]);
    let (b1, b2) = (random(&mut r, 100), random(&mut r, 200));
    let f1 = fan_out(&accounts[..2], 1);
    let one: Vec<Recipient> = accounts[2]
        .devices
        .iter()
        .map(|d| Recipient {
            account_id: d.account_id(),
            device_id: d.id(),
            head: vec![3, d.id().0 as u8],
        })
        .collect();
    let f2 = fan_out(&accounts[1..], 2);
    let ops = [
        WriteOp::Send {
            params: p,
            body: &b1,
            recipients: &f1,
            access: &[],
        },
        WriteOp::Send {
            params: p,
            body: &[],
            recipients: &one,
            access: &[],
        },
        WriteOp::Send {
            params: p,
            body: &b2,
            recipients: &f2,
            access: &[],
        },
    ];
    let outcomes = s.write_batch(&ops).await.unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, WriteOutcome::Send(Ok(SendStored::Stored(_)))))
    );
    let bodies = db.bodies().await;
    assert_eq!(
        bodies.iter().map(|b| b.2.clone()).collect::<Vec<_>>(),
        vec![b1.clone(), b2.clone()]
    );
    // accounts[1] got both fan-outs: seq 1 from the first, 2 from the second.
    for (i, d) in accounts[1].devices.iter().enumerate() {
        let got: Vec<Vec<u8>> = s
            .fetch(&d.account_id(), d.id(), 0, NOW, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.envelope)
            .collect();
        assert_eq!(
            got,
            vec![[head(4 + i, 1), b1.clone()].concat(), [head(i, 2), b2.clone()].concat()]
        );
    }
    // accounts[2] got the 1:1 send (no body) and then the second fan-out.
    for (i, d) in accounts[2].devices.iter().enumerate() {
        let rows = db.rows(&d.account_id(), d.id()).await;
        assert_eq!(rows[0], (1, vec![3, i as u8 + 1], None, 0));
        assert_eq!(rows[1], (2, head(4 + i, 2), Some(bodies[1].0), 200));
    }
    on!(db, c => c.close().await.unwrap());
}

/// Two transactions deleting the last two rows of one body at once (an ack, and a
/// device's removal from its list) leave no body behind: on PostgreSQL each locks the
/// body rows before its check, so the second sees the first's delete.
async fn concurrent_deletes_leave_no_body(s: Arc<Store>, url: String) {
    let mut db = Db::open(&url).await;
    let mut r = rng(75);
    let alice = account(&mut r, 1);
    let xa = account(&mut r, 1);
    let mut ya = account(&mut r, 2);
    for a in [&alice, &xa, &ya] {
        s.put_device_list(&a.list).await.unwrap();
    }
    let p = params(&alice.devices[0]);
    let mut version = 1;
    for round in 0..20u8 {
        let recipients = vec![
            Recipient {
                account_id: xa.id(),
                device_id: DeviceId(1),
                head: vec![round],
            },
            Recipient {
                account_id: ya.id(),
                device_id: DeviceId(2),
                head: vec![round],
            },
        ];
        let seqs = stored(s.store_shared(p, &[], &[round; 100], &recipients).await.unwrap());
        // Y drops device 2 while X acks.
        let mut kept = std::mem::take(&mut ya.devices);
        let d2 = kept.pop().unwrap();
        version += 1;
        ya.relist(version, kept);
        let x = xa.id();
        let (acked, listed) = tokio::join!(s.ack(&x, DeviceId(1), seqs[0]), s.put_device_list(&ya.list));
        assert_eq!(acked.unwrap(), 1);
        listed.unwrap();
        assert!(db.bodies().await.is_empty(), "round {round}: a body outlived its rows");
        // Device 2 comes back for the next round.
        let mut back = std::mem::take(&mut ya.devices);
        back.push(d2);
        version += 1;
        ya.relist(version, back);
        s.put_device_list(&ya.list).await.unwrap();
    }
    on!(db, c => c.close().await.unwrap());
}

/// With `secure_delete` and the relay's checkpoint, an acked shared body is in neither
/// the SQLite database file nor its WAL once its last mailbox acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_body_leaves_the_sqlite_files() {
    let url = sqlite_url();
    let path = std::path::PathBuf::from(url.strip_prefix("sqlite://").unwrap());
    let s = Store::open(&url, 4).await.unwrap();
    let mut r = rng(74);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 2);
    s.put_device_list(&alice.list).await.unwrap();
    s.put_device_list(&bob.list).await.unwrap();
    // Small enough to sit in one page, so the search can look for it whole.
    let marker = random(&mut r, 2000);
    let on_disk = |marker: &[u8]| -> Vec<&'static str> {
        ["db", "wal"]
            .into_iter()
            .filter(|which| {
                let mut p = path.clone().into_os_string();
                if *which == "wal" {
                    p.push("-wal");
                }
                std::fs::read(&p).is_ok_and(|bytes| contains(&bytes, marker))
            })
            .collect()
    };
    stored(
        s.store_shared(
            params(&alice.devices[0]),
            &[],
            &marker,
            &fan_out(std::slice::from_ref(&bob), 1),
        )
        .await
        .unwrap(),
    );
    assert!(
        !on_disk(&marker).is_empty(),
        "the stored body is on disk (the search works)"
    );
    for d in &bob.devices {
        assert_eq!(s.ack(&bob.id(), d.id(), 1).await.unwrap(), 1);
    }
    s.checkpoint().await.unwrap();
    let left = on_disk(&marker);
    assert!(left.is_empty(), "an acked body is still on disk, in {left:?}");
    s.close().await;
    remove_sqlite(&url);
}

macro_rules! backend {
    ($backend:ident, $url:expr) => {
        mod $backend {
            use super::*;

            macro_rules! socket {
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

            macro_rules! storage {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let url: Option<String> = $url;
                        if let Some(url) = url {
                            let s = Arc::new(Store::open(&url, 8).await.unwrap());
                            super::$name(s.clone(), url.clone()).await;
                            s.close().await;
                            if url.starts_with("sqlite://") {
                                remove_sqlite(&url);
                            }
                        }
                    }
                };
            }

            socket!(delivers_head_and_body);
            socket!(limits_count_head_and_body);
            socket!(rate_charges_uploaded_bytes);
            socket!(spent_live_budget_reads_the_mailbox);
            storage!(stored_once);
            storage!(batch_with_several_bodies);
            storage!(concurrent_deletes_leave_no_body);
        }
    };
}

backend!(sqlite, Some(sqlite_url()));
backend!(postgres, postgres_url().await);
