//! A 200 MB attachment from a file to a file, through the relay's blob store, with flat
//! memory: the sender encrypts as it reads and uploads 4 MiB pieces, the relay writes each
//! piece to disk and serves ranges from it, the receiver decrypts range by range into a
//! temporary file. The peak resident memory of this process (client, relay and receiver
//! together) grows by a small fraction of the file's size. Alone in its test binary, so
//! no other test's memory counts.

use std::io::{Read, Write};

use sotto_sdk::AttachmentInfo;
use sotto_sdk::machine::Conversation;
use sotto_tests::{Device, TempDir, TestRelay};

const LEN: usize = 200 * 1000 * 1000;

/// The process's peak resident set, KiB (`VmHWM`).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Writes `LEN` pseudo-random bytes to `path`, 1 MiB at a time.
fn write_file(path: &std::path::Path) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = LEN;
    while left > 0 {
        let n = left.min(buf.len());
        for b in &mut buf[..n] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x >> 32) as u8;
        }
        f.write_all(&buf[..n]).unwrap();
        left -= n;
    }
    f.flush().unwrap();
}

/// True when both files hold the same bytes (read 1 MiB at a time).
fn same(a: &std::path::Path, b: &std::path::Path) -> bool {
    let (mut fa, mut fb) = (std::fs::File::open(a).unwrap(), std::fs::File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = fa.read(&mut ba).unwrap();
        let mut nb = 0;
        while nb < na {
            let n = fb.read(&mut bb[nb..na]).unwrap();
            if n == 0 {
                return false;
            }
            nb += n;
        }
        if na == 0 {
            return fb.read(&mut bb).unwrap() == 0;
        }
        if ba[..na] != bb[..na] {
            return false;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_file_round_trips_with_flat_memory() {
    let relay = TestRelay::start_with(|c| c.blobs.max_blob_len = 256 << 20).await;
    let alice = Device::create(&relay, 431).await;
    let mut bob = Device::create(&relay, 432).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    let dir = TempDir::new("large");
    let source = dir.path().join("video.mp4");
    write_file(&source);
    let before = peak_rss_kib();
    let info = AttachmentInfo {
        media_type: "video/mp4".into(),
        caption: "the whole film".into(),
        ..Default::default()
    };
    alice
        .client
        .send_attachment_file(Conversation::Direct(bob.id()), &source, info, None, None)
        .await
        .unwrap();
    let got = loop {
        let m = bob.receive(1).await.remove(0);
        if m.attachment.is_some() {
            break m;
        }
    };
    let pointer = got.attachment.unwrap();
    assert_eq!(pointer.size, LEN as u64);
    assert_eq!(pointer.file_name, "video.mp4");
    let dest = dir.path().join("received.mp4");
    bob.client
        .download_attachment(&pointer, &dest, None, None)
        .await
        .unwrap();
    let after = peak_rss_kib();
    assert!(same(&source, &dest), "the received file differs");
    let growth_mib = after.saturating_sub(before) / 1024;
    eprintln!("200 MB attachment: peak RSS {before} KiB before, {after} KiB after (+{growth_mib} MiB)");
    assert!(growth_mib < 64, "peak RSS grew by {growth_mib} MiB for a 200 MB file");
}
