//! Attachments end to end (docs/protocol.md §16): a file is encrypted on the sender's
//! device, uploaded to the relay's blob store paid with an unlinkable token, and its
//! pointer sent like a text; the receiver downloads and checks it. The relay's files hold
//! ciphertext only; a changed byte, chunks swapped, another key, digest or length are
//! refused before anything reaches the app; a group message uploads the blob once; an
//! upload goes on across a relay restart; size and quota refusals are typed; expired
//! blobs are collected; a file read as a stream ends only once all of it checked out.

use std::sync::{Arc, Mutex};

use sotto_sdk::content::SharedKey;
use sotto_sdk::machine::Conversation;
use sotto_sdk::{AttachmentInfo, Cancel, ClientError, Event, StoredMessage};
use sotto_tests::proxy::Chaos;
use sotto_tests::{Device, TempDir, TestRelay};

/// `len` bytes that never repeat a 64-byte window (a counter mixed by a xorshift).
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn info(caption: &str) -> AttachmentInfo {
    AttachmentInfo {
        media_type: "image/jpeg".into(),
        file_name: "beach.jpg".into(),
        caption: caption.into(),
        thumbnail: Some(vec![0xff, 0xd8, 0xff, 0xe0, 1, 2, 3]),
    }
}

/// The blob files the relay holds.
fn blob_files(relay: &TestRelay) -> Vec<std::path::PathBuf> {
    match std::fs::read_dir(relay.state.blobs.dir()) {
        Ok(dir) => dir.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Waits for the message with this caption.
async fn receive_attachment(d: &mut Device, caption: &str) -> StoredMessage {
    loop {
        let got = d.receive(1).await.remove(0);
        if got.text == caption {
            return got;
        }
    }
}

fn code(e: ClientError) -> &'static str {
    e.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_reach_a_contact_and_a_group_and_open_only_intact() {
    let relay = TestRelay::start().await;
    let alice = Device::create(&relay, 401).await;
    let mut bob = Device::create(&relay, 402).await;
    let mut carol = Device::create(&relay, 403).await;
    for d in [&bob, &carol] {
        alice.client.add_contact(&d.client.contact_link()).await.unwrap();
    }
    // 300 kB: five chunks, one upload piece.
    let file = data(300_000, 7);
    let progress = Arc::new(Mutex::new(Vec::new()));
    let seen = progress.clone();
    let report = move |done: u64, total: u64| seen.lock().unwrap().push((done, total));
    let sent = alice
        .client
        .send_attachment_bytes(
            Conversation::Direct(bob.id()),
            &file,
            info("the view"),
            Some(&report),
            None,
        )
        .await
        .unwrap();
    let a = sent.attachment.clone().expect("the sent message carries the pointer");
    let total = sotto_crypto::attachment::Layout::of(file.len() as u64)
        .unwrap()
        .ciphertext_len();
    assert_eq!(progress.lock().unwrap().last(), Some(&(total, total)));

    let got = receive_attachment(&mut bob, "the view").await;
    let pointer = got.attachment.clone().expect("a pointer");
    assert_eq!(*pointer, *a);
    assert_eq!(pointer.size, 300_000);
    assert_eq!(pointer.media_type, "image/jpeg");
    assert_eq!(pointer.file_name, "beach.jpg");
    assert_eq!(
        pointer.thumbnail.as_deref(),
        Some(&[0xff, 0xd8, 0xff, 0xe0, 1, 2, 3][..])
    );
    assert_eq!(
        bob.client
            .download_attachment_bytes(&pointer, None, None)
            .await
            .unwrap(),
        file
    );
    let out = TempDir::new("download");
    let path = out.path().join("beach.jpg");
    bob.client
        .download_attachment(&pointer, &path, None, None)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), file);
    assert_eq!(
        std::fs::read_dir(out.path()).unwrap().count(),
        1,
        "no temporary file left"
    );

    // The relay holds the ciphertext only: exactly its length, no window of the file.
    let files = blob_files(&relay);
    assert_eq!(files.len(), 1, "{files:?}");
    let stored = std::fs::read(&files[0]).unwrap();
    assert_eq!(stored.len() as u64, total);
    assert!(
        !stored
            .windows(32)
            .any(|w| file.windows(32).step_by(997).any(|p| p == w)),
        "plaintext in the blob store"
    );

    // Another key, digest or length: refused, nothing written.
    let mut other_key = (*pointer).clone();
    other_key.key = SharedKey([9; 32]);
    let mut other_digest = (*pointer).clone();
    other_digest.digest[0] ^= 1;
    let mut shorter = (*pointer).clone();
    shorter.size -= 1;
    for bad in [&other_key, &other_digest, &shorter] {
        let e = bob.client.download_attachment_bytes(bad, None, None).await.unwrap_err();
        assert_eq!(code(e), "attachment_corrupt");
    }
    // A byte changed on the relay's disk, then two chunks swapped: refused, and the
    // destination is never created.
    let mut flipped = stored.clone();
    flipped[100_000] ^= 0x40;
    std::fs::write(&files[0], &flipped).unwrap();
    let bad_path = out.path().join("tampered.jpg");
    let e = bob
        .client
        .download_attachment(&pointer, &bad_path, None, None)
        .await
        .unwrap_err();
    assert_eq!(code(e), "attachment_corrupt");
    assert!(!bad_path.exists());
    let step = sotto_crypto::attachment::CHUNK_LEN + sotto_crypto::attachment::TAG_LEN;
    let first = sotto_crypto::attachment::HEADER_LEN;
    let mut swapped = stored.clone();
    let (a1, a2) = (
        stored[first..first + step].to_vec(),
        stored[first + step..first + 2 * step].to_vec(),
    );
    swapped[first..first + step].copy_from_slice(&a2);
    swapped[first + step..first + 2 * step].copy_from_slice(&a1);
    std::fs::write(&files[0], &swapped).unwrap();
    let e = bob
        .client
        .download_attachment_bytes(&pointer, None, None)
        .await
        .unwrap_err();
    assert_eq!(code(e), "attachment_corrupt");
    std::fs::write(&files[0], &stored).unwrap();
    assert_eq!(
        bob.client
            .download_attachment_bytes(&pointer, None, None)
            .await
            .unwrap(),
        file
    );

    // A group message uploads the blob once; every member opens the same one.
    let g = alice
        .client
        .create_group("trip", &[bob.id(), carol.id()])
        .await
        .unwrap();
    for d in [&mut bob, &mut carol] {
        d.wait_for(|e| matches!(e, Event::GroupChanged { group } if *group == g))
            .await;
    }
    let photo = data(150_000, 8);
    alice
        .client
        .send_attachment_bytes(Conversation::Group(g), &photo, info("for everyone"), None, None)
        .await
        .unwrap();
    assert_eq!(blob_files(&relay).len(), 2, "one blob for the whole group");
    let mut ids = Vec::new();
    for d in [&mut bob, &mut carol] {
        let m = receive_attachment(d, "for everyone").await;
        assert_eq!(m.conversation, g.conversation());
        let p = m.attachment.expect("a pointer");
        assert_eq!(d.client.download_attachment_bytes(&p, None, None).await.unwrap(), photo);
        ids.push(p.blob_id);
    }
    assert_eq!(ids[0], ids[1]);

    // Cancelled before it starts: nothing is sent.
    let cancel = Cancel::new();
    cancel.cancel();
    let e = alice
        .client
        .send_attachment_bytes(
            Conversation::Direct(bob.id()),
            &photo,
            info("never"),
            None,
            Some(&cancel),
        )
        .await
        .unwrap_err();
    assert_eq!(code(e), "cancelled");

    // Past its retention the blob is collected, and a download is refused.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let later = now + relay.state.config.blobs.blob_ttl_secs * 1000 + 1;
    relay.state.blobs.clock.set_ms(later);
    relay
        .state
        .blobs
        .gc(&relay.state.store, &relay.state.metrics, later)
        .await
        .unwrap();
    assert!(blob_files(&relay).is_empty());
    let e = bob
        .client
        .download_attachment_bytes(&pointer, None, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Transport(sotto_sdk::transport::TransportError::Relay { code, .. }) if *code == sotto_proto::ErrorCode::NOT_FOUND),
        "{e:?}"
    );
}

/// Read as a stream, an attachment comes piece by piece, and its end means checked: the
/// last piece is handed out only once the whole file checked out, so with a wrong
/// digest the app gets the earlier pieces (each passed its chunks' tags) and an error,
/// never the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attachment_read_as_a_stream_ends_only_once_checked() {
    let relay = TestRelay::start().await;
    let alice = Device::create(&relay, 421).await;
    let mut bob = Device::create(&relay, 422).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    let piece = sotto_sdk::transport::BLOB_PIECE;
    let file = data(2 * piece + piece / 2, 11);
    alice
        .client
        .send_attachment_bytes(Conversation::Direct(bob.id()), &file, info("streamed"), None, None)
        .await
        .unwrap();
    let pointer = receive_attachment(&mut bob, "streamed")
        .await
        .attachment
        .expect("a pointer");

    let mut reader = bob.client.open_attachment(&pointer).unwrap();
    let (mut got, mut pieces) = (Vec::new(), 0);
    while let Some(p) = reader.next_chunk().await.unwrap() {
        assert!(!p.is_empty() && p.len() <= piece);
        got.extend_from_slice(&p);
        pieces += 1;
    }
    assert!(got == file, "the file read as a stream differs");
    assert_eq!(pieces, 3);
    assert_eq!(reader.received(), reader.ciphertext_len());
    assert!(reader.next_chunk().await.unwrap().is_none(), "the end stays the end");

    let mut other = (*pointer).clone();
    other.digest[0] ^= 1;
    let mut reader = bob.client.open_attachment(&other).unwrap();
    let mut handed = Vec::new();
    let e = loop {
        match reader.next_chunk().await {
            Ok(Some(p)) => handed.extend_from_slice(&p),
            Ok(None) => panic!("a wrong digest read to its end"),
            Err(e) => break e,
        }
    };
    assert_eq!(code(e), "attachment_corrupt");
    assert!(handed.len() > piece && handed.len() < 2 * piece, "{}", handed.len());
    assert!(handed == file[..handed.len()], "what came out is not the file's start");
    assert!(reader.next_chunk().await.is_err(), "a failed read stays failed");
}

/// A read cancelled while it waits (dropped, as a timeout or a cancelled Swift task or
/// Kotlin coroutine does) leaves the reader as it was: the next call goes on with the
/// same range, and the file still comes out whole with its end meaning checked. The
/// relay is behind a proxy that delays every chunk a little, so each range is still on
/// its way when the call is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_cancelled_while_it_waits_goes_on() {
    let (relay, proxy) = TestRelay::start_behind_proxy().await;
    let alice = Device::create(&relay, 431).await;
    let mut bob = Device::create(&relay, 432).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    let piece = sotto_sdk::transport::BLOB_PIECE;
    let file = data(2 * piece + piece / 3, 12);
    alice
        .client
        .send_attachment_bytes(Conversation::Direct(bob.id()), &file, info("slowly"), None, None)
        .await
        .unwrap();
    let pointer = receive_attachment(&mut bob, "slowly")
        .await
        .attachment
        .expect("a pointer");
    proxy.chaos(
        Some(Chaos {
            refuse_one_in: 0,
            cut_after_bytes: (u64::MAX / 2, u64::MAX / 2),
            max_delay: std::time::Duration::from_millis(2),
        }),
        433,
    );
    let mut reader = bob.client.open_attachment(&pointer).unwrap();
    let (mut got, mut dropped, mut calls) = (Vec::new(), 0, 0);
    loop {
        calls += 1;
        // Polled once, then dropped unless its piece was there at once.
        let once = tokio::select! {
            biased;
            r = reader.next_chunk() => Some(r.unwrap()),
            () = std::future::ready(()) => None,
        };
        let next = match once {
            Some(p) => p,
            None => {
                dropped += 1;
                reader.next_chunk().await.unwrap()
            }
        };
        match next {
            Some(p) => got.extend_from_slice(&p),
            None => break,
        }
    }
    assert!(got == file, "the file differs after {dropped} dropped calls");
    assert_eq!(calls, 4, "three pieces, then the end");
    assert!(dropped >= 3, "only {dropped} calls were still waiting when dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_goes_on_across_a_relay_restart() {
    let mut relay = TestRelay::start().await;
    let alice = Device::create(&relay, 411).await;
    let mut bob = Device::create(&relay, 412).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    // 12 MiB: three pieces; the relay restarts once the first is stored.
    let file = data(12 << 20, 9);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let tx = Mutex::new(Some(tx));
    let first_piece = move |_: u64, _: u64| {
        if let Some(tx) = tx.lock().unwrap().take() {
            let _ = tx.send(());
        }
    };
    let upload = async {
        alice
            .client
            .send_attachment_bytes(
                Conversation::Direct(bob.id()),
                &file,
                info("big"),
                Some(&first_piece),
                None,
            )
            .await
    };
    let restart = async {
        rx.await.unwrap();
        relay.restart().await;
    };
    let (sent, ()) = tokio::join!(upload, restart);
    sent.unwrap();
    let got = receive_attachment(&mut bob, "big").await;
    let p = got.attachment.expect("a pointer");
    assert_eq!(
        bob.client.download_attachment_bytes(&p, None, None).await.unwrap(),
        file
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_and_quota_refusals_are_typed() {
    let relay = TestRelay::start_with(|c| {
        c.blobs.max_blob_len = 100_000;
        c.blobs.tokens_per_device_per_day = 3;
    })
    .await;
    let alice = Device::create(&relay, 421).await;
    let bob = Device::create(&relay, 422).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    let to = Conversation::Direct(bob.id());
    let e = alice
        .client
        .send_attachment_bytes(to, &data(200_000, 1), info("too big"), None, None)
        .await
        .unwrap_err();
    assert_eq!(code(e), "too_large");
    // The refused create spent no token: three uploads go, the fourth is refused.
    for i in 0..3 {
        alice
            .client
            .send_attachment_bytes(to, &data(1000, i), info("small"), None, None)
            .await
            .unwrap();
    }
    let e = alice
        .client
        .send_attachment_bytes(to, &data(1000, 5), info("one too many"), None, None)
        .await
        .unwrap_err();
    // It lasts until the next day: not retryable.
    assert!(!e.is_retryable());
    assert_eq!(code(e), "quota_exceeded");
}

/// How many upload tokens the relay has issued.
fn tokens_issued(relay: &TestRelay) -> u64 {
    let text = relay.state.metrics.render();
    text.lines()
        .find_map(|l| l.strip_prefix("sotto_relay_blob_tokens_issued_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Upload tokens are fetched in the background, at a time of their own (not right before
/// an upload: that fetch is authenticated, the upload is not), and kept in the store: the
/// uploads that follow, across a restart, fetch none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_tokens_come_in_the_background_and_are_kept() {
    use sotto_sdk::store::SqliteStore;
    use std::time::Duration;

    let relay = TestRelay::start().await;
    let seed = 431;
    let dir = TempDir::new("client");
    let store = SqliteStore::open(&dir.path().join("client.db"), &sotto_tests::key(seed))
        .await
        .unwrap();
    let options = sotto_sdk::ClientOptions {
        token_refill_delay: Duration::from_millis(10)..Duration::from_millis(20),
        ..sotto_tests::options(seed)
    };
    let client = sotto_sdk::Client::create_account(store, sotto_tests::key(seed), &relay.url(), options)
        .await
        .unwrap();
    let alice = Device::wrap(client, dir, seed).await;
    // A heartbeat plans the fetch, a later one makes it.
    let since = std::time::Instant::now();
    while tokens_issued(&relay) == 0 {
        assert!(
            since.elapsed() < sotto_tests::FAILSAFE,
            "no tokens fetched in the background"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let batch = tokens_issued(&relay);
    assert_eq!(batch, 8);

    let mut bob = Device::create(&relay, 432).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    let to = Conversation::Direct(bob.id());
    alice
        .client
        .send_attachment_bytes(to, &data(3000, 1), info("before the restart"), None, None)
        .await
        .unwrap();
    // Reopened (with the default, long refill delay): the kept tokens pay for the rest.
    let alice = alice.restart().await;
    for caption in ["after the restart", "and again"] {
        alice
            .client
            .send_attachment_bytes(to, &data(3000, 2), info(caption), None, None)
            .await
            .unwrap();
    }
    assert_eq!(tokens_issued(&relay), batch, "an upload fetched tokens");
    for caption in ["before the restart", "after the restart", "and again"] {
        receive_attachment(&mut bob, caption).await;
    }
}
