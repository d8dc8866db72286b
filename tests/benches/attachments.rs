//! Attachment throughput through a real relay on 127.0.0.1 (SQLite, the disk blob store),
//! next to its anchors measured in the same run:
//!
//! - crypto: the same bytes encrypted (chunked AEAD and digest) and decrypted in memory on
//!   one core, with no I/O: the ceiling for a sender or receiver that does its crypto on
//!   one core;
//! - disk: writing the same bytes to a file in 4 MiB pieces with an fsync at the end, and
//!   reading them back;
//! - loopback HTTP: the same bytes as 4 MiB `PUT` bodies to, and `GET` answers from, a
//!   minimal hyper server that keeps nothing, one fresh connection per request as the SDK
//!   makes them;
//! - the SDK: `send_attachment_bytes` (encrypt, upload, send the pointer) and
//!   `download_attachment_bytes` (download, decrypt, check).
//!
//! `cargo bench -p sotto-tests --bench attachments` (plain `main`, no harness). Results go to
//! docs/benchmarks.md ("Attachments").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{Read, Write};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sotto_sdk::AttachmentInfo;
use sotto_sdk::machine::Conversation;
use sotto_tests::{Device, TempDir, TestRelay};
use tokio::net::{TcpListener, TcpStream};

const LEN: usize = 256 << 20;
const PIECE: usize = 4 << 20;

fn mib_s(bytes: usize, s: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / s
}

/// Encrypts `data` into 4 MiB pieces and decrypts them, in memory; MiB/s each way.
fn crypto(data: &[u8]) -> (f64, f64) {
    use rand_core::SeedableRng;
    use sotto_crypto::attachment::{AttachmentKey, Decryptor, Encryptor};

    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7); // test only
    let key = AttachmentKey::generate(&mut rng);
    let t = Instant::now();
    let mut enc = Encryptor::new(&key, data.len() as u64, &mut rng).unwrap();
    let mut pieces = vec![enc.header().to_vec()];
    let mut out = Vec::with_capacity(PIECE + 2 * sotto_crypto::attachment::CHUNK_LEN);
    for chunk in data.chunks(sotto_crypto::attachment::CHUNK_LEN) {
        enc.update(chunk, &mut out).unwrap();
        if out.len() >= PIECE {
            pieces.push(std::mem::take(&mut out));
        }
    }
    let digest = enc.finish(&mut out).unwrap();
    pieces.push(out);
    let encrypt = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut dec = Decryptor::new(&key, data.len() as u64, digest).unwrap();
    let mut plain = Vec::with_capacity(PIECE + sotto_crypto::attachment::CHUNK_LEN);
    let mut n = 0;
    for piece in &pieces {
        dec.update(piece, &mut plain).unwrap();
        n += plain.len();
        plain.clear();
    }
    dec.finish().unwrap();
    assert_eq!(n, data.len());
    (mib_s(data.len(), encrypt), mib_s(data.len(), t.elapsed().as_secs_f64()))
}

fn disk(data: &[u8]) -> (f64, f64) {
    let dir = TempDir::new("bench-disk");
    let path = dir.path().join("blob");
    let t = Instant::now();
    let mut f = std::fs::File::create(&path).unwrap();
    for piece in data.chunks(PIECE) {
        f.write_all(piece).unwrap();
    }
    f.sync_all().unwrap();
    let write = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut f = std::fs::File::open(&path).unwrap();
    let mut buf = vec![0u8; PIECE];
    let mut n = 0;
    loop {
        let k = f.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        n += k;
    }
    assert_eq!(n, data.len());
    (mib_s(data.len(), write), mib_s(data.len(), t.elapsed().as_secs_f64()))
}

/// A hyper server that reads every request body whole and answers a `GET` with `PIECE`
/// bytes.
async fn http_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let piece = Bytes::from(vec![7u8; PIECE]);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let piece = piece.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let piece = piece.clone();
                    async move {
                        let get = req.method() == hyper::Method::GET;
                        let body = req.into_body().collect().await?.to_bytes();
                        let answer = if get {
                            piece
                        } else {
                            Bytes::from(body.len().to_string())
                        };
                        Ok::<_, hyper::Error>(Response::new(Full::new(answer)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

/// One request on a fresh connection; the answer's length.
async fn request(addr: std::net::SocketAddr, method: hyper::Method, body: Bytes) -> usize {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri("/")
        .header("host", addr.to_string())
        .body(Full::new(body))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let n = resp.into_body().collect().await.unwrap().to_bytes().len();
    conn.abort();
    n
}

async fn loopback_http(data: &[u8]) -> (f64, f64) {
    let addr = http_server().await;
    let t = Instant::now();
    for piece in data.chunks(PIECE) {
        request(addr, hyper::Method::PUT, Bytes::copy_from_slice(piece)).await;
    }
    let put = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut n = 0;
    while n < data.len() {
        n += request(addr, hyper::Method::GET, Bytes::new()).await;
    }
    (mib_s(data.len(), put), mib_s(n, t.elapsed().as_secs_f64()))
}

async fn sdk(data: &[u8]) -> (f64, f64) {
    let relay = TestRelay::start().await;
    let alice = Device::create(&relay, 501).await;
    let mut bob = Device::create(&relay, 502).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    // Warm up: a session and a batch of tokens.
    alice
        .client
        .send_attachment_bytes(
            Conversation::Direct(bob.id()),
            b"warm-up",
            AttachmentInfo::default(),
            None,
            None,
        )
        .await
        .unwrap();
    bob.receive(1).await;
    let t = Instant::now();
    alice
        .client
        .send_attachment_bytes(
            Conversation::Direct(bob.id()),
            data,
            AttachmentInfo::default(),
            None,
            None,
        )
        .await
        .unwrap();
    let up = t.elapsed().as_secs_f64();
    let got = bob.receive(1).await.remove(0);
    let pointer = got.attachment.unwrap();
    let t = Instant::now();
    let back = bob
        .client
        .download_attachment_bytes(&pointer, None, None)
        .await
        .unwrap();
    let down = t.elapsed().as_secs_f64();
    assert_eq!(back.len(), data.len());
    (mib_s(data.len(), up), mib_s(data.len(), down))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<u8> = (0..LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    for run in 1..=3 {
        let (ce, cd) = crypto(&data);
        let (dw, dr) = disk(&data);
        let (hp, hg) = rt.block_on(loopback_http(&data));
        let (up, down) = rt.block_on(sdk(&data));
        println!(
            "run {run}, 256 MiB: crypto in memory, one core: encrypt {ce:.0} MiB/s, decrypt {cd:.0} MiB/s | disk \
             write+fsync {dw:.0} MiB/s, read {dr:.0} MiB/s | loopback HTTP PUT {hp:.0} MiB/s, GET {hg:.0} MiB/s | SDK \
             encrypt+upload {up:.0} MiB/s ({:.0} % of PUT, {:.0} % of encrypt), download+decrypt {down:.0} MiB/s ({:.0} % \
             of GET, {:.0} % of decrypt)",
            100.0 * up / hp,
            100.0 * up / ce,
            100.0 * down / hg,
            100.0 * down / cd
        );
    }
}
