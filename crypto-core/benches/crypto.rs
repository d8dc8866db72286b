//! Criterion benchmarks of sotto-crypto, with their points of comparison measured in the
//! same run: the primitives Sotto is built from (the lower bounds), a hand-assembled
//! "floor" of one Double Ratchet message, and vodozemac's Olm (0.11, `SessionConfig::version_1`).
//!
//! Groups: `primitives`, `keygen`, `x3dh`, `ratchet`, `sealed`, `seal_multi`, `safety_number`,
//! `device_list`, `sender_key`, `group_send`, `vodozemac`. Every Sotto operation draws from a seeded `ChaCha20Rng`, so runs are
//! repeatable; vodozemac draws from the OS generator (it takes no RNG parameter).
//!
//! Run: `cargo bench -p sotto-crypto --bench crypto --features vodozemac/precomputed-tables
//! -- --warm-up-time 1 --measurement-time 3 --noplot`. The feature flag gives vodozemac the
//! precomputed base-point tables of its default build (Sotto's x25519-dalek has them too);
//! without it vodozemac's X25519 key generation, and so its encrypt, is slower than it ships.
//! Results and their reading: `docs/benchmarks.md`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use criterion::{BenchmarkId, Criterion, Throughput};
use ed25519_dalek::{Signer, SigningKey};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sha2::{Digest, Sha256, Sha512};
use sotto_crypto::ratchet::{AD_LEN, HEADER_LEN};
use sotto_crypto::{
    AccountKey, Device, DeviceId, DeviceList, GroupSealKey, KemPreKeySecret, MessageType, PreKeyBundle, PreKeyMessage,
    SafetyNumber, SenderKey, SenderKeyReceiver, Session, X25519PreKeySecret, initiate, open, respond, seal, seal_multi,
};
use vodozemac::olm::{Account, OlmMessage, SessionConfig};

/// Plaintext sizes of the ratchet and Olm benchmarks.
const SIZES: [(usize, &str); 3] = [(64, "64B"), (1024, "1KiB"), (65536, "64KiB")];
/// Content size of the sealed sender benchmarks.
const SEALED_CONTENT: usize = 1024;
/// Plaintext of the first (pre-key) message and of every ping-pong message.
const SMALL: usize = 64;
/// Pre-encrypted messages are produced in chunks of at most this many bytes, so the
/// decrypt benchmarks never hold more than a few MiB of ciphertext.
const CHUNK_BYTES: usize = 4 << 20;

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

fn plaintext(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// One side of a conversation: account, one device, its signed list and prekeys.
struct Party {
    device: Device,
    list: DeviceList,
    spk: X25519PreKeySecret,
    opk: X25519PreKeySecret,
    kem: KemPreKeySecret,
}

impl Party {
    fn new(rng: &mut ChaCha20Rng) -> Self {
        let ak = AccountKey::generate(rng);
        let device = Device::generate(ak.account_id(), DeviceId(1), rng);
        let list = ak
            .sign_device_list(1, 1_700_000_000_000, vec![device.entry()])
            .expect("one device is a valid list");
        let spk = device.generate_signed_prekey(1, rng);
        let opk = device.generate_one_time_prekeys(100, 1, rng).remove(0);
        let kem = device.generate_kem_prekey(1, false, rng);
        Self {
            device,
            list,
            spk,
            opk,
            kem,
        }
    }

    fn bundle(&self, with_opk: bool) -> PreKeyBundle {
        PreKeyBundle {
            identity: self.device.identity(),
            signed_prekey: self.spk.public().clone(),
            one_time_prekey: with_opk.then(|| self.opk.public().clone()),
            kem_prekey: self.kem.public().clone(),
        }
    }
}

/// Two sessions with established chains in both directions, and the a→b chain warm:
/// `a.encrypt` and `b.decrypt` are plain chain steps, with no DH ratchet step due.
fn establish(rng: &mut ChaCha20Rng) -> (Party, Party, Session, Session) {
    let alice = Party::new(rng);
    let bob = Party::new(rng);
    let mut a = initiate(&alice.device, &bob.list, &bob.bundle(true), rng).expect("initiate");
    let first = a.encrypt(b"first", rng).expect("encrypt");
    let msg = PreKeyMessage::decode(&first.bytes).expect("decode");
    let mut b = respond(&bob.device, &alice.list, &msg, &bob.spk, Some(&bob.opk), &bob.kem)
        .expect("respond")
        .session;
    let reply = b.encrypt(b"reply", rng).expect("encrypt");
    a.decrypt(reply.message_type, &reply.bytes).expect("decrypt");
    // a's next encrypt performs the DH ratchet step; do it here, outside any measurement.
    let warm = a.encrypt(b"warm", rng).expect("encrypt");
    assert_eq!(warm.message_type, MessageType::Ratchet);
    b.decrypt(warm.message_type, &warm.bytes).expect("decrypt");
    (alice, bob, a, b)
}

// ---------------------------------------------------------------------------------------
// Primitives: the lower bounds, with the crates and features Sotto itself links.
// ---------------------------------------------------------------------------------------

fn hmac_byte(key: &[u8; 32], byte: u8) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(&[byte]);
    mac.finalize().into_bytes().into()
}

fn hkdf_into(salt: &[u8], ikm: &[u8], info: &[u8], out: &mut [u8]) {
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, out)
        .expect("short output");
}

/// The crypto of one Double Ratchet message, nothing else: KDF_CK (2 × HMAC), the
/// message-key HKDF (44 bytes) and ChaCha20-Poly1305 under Sotto's 258-byte associated
/// data (session AD ‖ header). In place, no allocation, no header encoding.
fn ratchet_floor_encrypt(ck: &[u8; 32], salt: &[u8; 16], ad: &[u8], buf: &mut [u8]) -> [u8; 16] {
    let mk = hmac_byte(ck, 1);
    let next = hmac_byte(ck, 2);
    black_box(&next);
    let mut keys = [0u8; 44];
    hkdf_into(salt, &mk, b"Sotto-v1 message keys", &mut keys);
    let cipher = ChaCha20Poly1305::new((&keys[..32]).into());
    cipher
        .encrypt_in_place_detached((&keys[32..]).into(), ad, buf)
        .expect("small buffer")
        .into()
}

/// The decrypting counterpart of [`ratchet_floor_encrypt`]: the same KDFs, a copy of the
/// ciphertext into a reused buffer (Sotto copies into a fresh one) and the AEAD check and
/// decryption.
fn ratchet_floor_decrypt(ck: &[u8; 32], salt: &[u8; 16], ad: &[u8], ct: &[u8], tag: &[u8; 16], buf: &mut Vec<u8>) {
    let mk = hmac_byte(ck, 1);
    let next = hmac_byte(ck, 2);
    black_box(&next);
    let mut keys = [0u8; 44];
    hkdf_into(salt, &mk, b"Sotto-v1 message keys", &mut keys);
    let cipher = ChaCha20Poly1305::new((&keys[..32]).into());
    buf.clear();
    buf.extend_from_slice(ct);
    cipher
        .decrypt_in_place_detached((&keys[32..]).into(), ad, buf, tag.into())
        .expect("authentic");
}

fn primitives(c: &mut Criterion) {
    let mut g = c.benchmark_group("primitives");
    let mut r = rng(1);

    // X25519 (x25519-dalek 2, precomputed tables, as Sotto builds it).
    g.bench_function("x25519_keygen", |b| {
        b.iter(|| {
            let mut s = [0u8; 32];
            r.fill_bytes(&mut s);
            let secret = x25519_dalek::StaticSecret::from(s);
            x25519_dalek::PublicKey::from(&secret)
        })
    });
    let mut s = [0u8; 32];
    r.fill_bytes(&mut s);
    let secret = x25519_dalek::StaticSecret::from(s);
    r.fill_bytes(&mut s);
    let peer = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(s));
    g.bench_function("x25519_dh", |b| b.iter(|| secret.diffie_hellman(black_box(&peer))));

    // Ed25519 (ed25519-dalek 2, "fast"), 64-byte message; verification is strict.
    let mut seed = [0u8; 32];
    r.fill_bytes(&mut seed);
    let sk = SigningKey::from_bytes(&seed);
    let vk = sk.verifying_key();
    let msg = [0x5au8; 64];
    let sig = sk.sign(&msg);
    g.bench_function("ed25519_sign_64B", |b| b.iter(|| sk.sign(black_box(&msg))));
    g.bench_function("ed25519_verify_64B", |b| {
        b.iter(|| vk.verify_strict(black_box(&msg), &sig).expect("valid"))
    });

    // ML-KEM-768 (libcrux-ml-kem 0.0.11, run-time AVX2 dispatch).
    let mut kseed = [0u8; 64];
    r.fill_bytes(&mut kseed);
    let pair = libcrux_ml_kem::mlkem768::generate_key_pair(kseed);
    let (ct, _) = libcrux_ml_kem::mlkem768::encapsulate(pair.public_key(), [9u8; 32]);
    g.bench_function("mlkem768_keygen", |b| {
        b.iter(|| libcrux_ml_kem::mlkem768::generate_key_pair(black_box(kseed)))
    });
    g.bench_function("mlkem768_encaps", |b| {
        b.iter(|| libcrux_ml_kem::mlkem768::encapsulate(pair.public_key(), black_box([7u8; 32])))
    });
    g.bench_function("mlkem768_decaps", |b| {
        b.iter(|| libcrux_ml_kem::mlkem768::decapsulate(pair.private_key(), black_box(&ct)))
    });

    // Hashes and KDFs (sha2 0.10 with SHA-NI detected at run time, hmac/hkdf 0.12).
    let key = [0x11u8; 32];
    g.bench_function("hmac_sha256_1B", |b| b.iter(|| hmac_byte(black_box(&key), 1)));
    g.bench_function("hkdf_sha256_80B", |b| {
        b.iter(|| {
            let mut out = [0u8; 80];
            hkdf_into(black_box(&key), &key, b"Sotto-v1 bench", &mut out);
            out
        })
    });
    g.bench_function("hkdf_sha256_44B", |b| {
        b.iter(|| {
            let mut out = [0u8; 44];
            hkdf_into(black_box(&key[..16]), &key, b"Sotto-v1 message keys", &mut out);
            out
        })
    });
    let kib = plaintext(1024);
    g.bench_function("sha256_1KiB", |b| b.iter(|| Sha256::digest(black_box(&kib))));
    let block = [0x22u8; 96]; // one safety-number iteration: SHA-512(64-byte digest ‖ 32-byte key)
    g.bench_function("sha512_96B", |b| b.iter(|| Sha512::digest(black_box(block))));

    // ChaCha20-Poly1305 (0.10; poly1305 0.8 picks AVX2 at run time), empty AD as in
    // PERF-ANCHORS, then with the ratchet's 258-byte AD: the floor of one ratchet message.
    let cipher = ChaCha20Poly1305::new((&key).into());
    let nonce = [0u8; 12];
    let ratchet_ad = [0x33u8; AD_LEN + HEADER_LEN];
    for (len, name) in SIZES {
        let mut buf = plaintext(len);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(BenchmarkId::new("chacha20poly1305_encrypt", name), |b| {
            b.iter(|| {
                cipher
                    .encrypt_in_place_detached((&nonce).into(), b"", black_box(&mut buf))
                    .expect("small buffer")
            })
        });
        let ck = [0x44u8; 32];
        let salt = [0x55u8; 16];
        g.bench_function(BenchmarkId::new("ratchet_floor_encrypt", name), |b| {
            b.iter(|| ratchet_floor_encrypt(black_box(&ck), &salt, &ratchet_ad, &mut buf))
        });
        let mut ct = plaintext(len);
        let tag = ratchet_floor_encrypt(&ck, &salt, &ratchet_ad, &mut ct);
        let mut out = Vec::with_capacity(len);
        g.bench_function(BenchmarkId::new("ratchet_floor_decrypt", name), |b| {
            b.iter(|| ratchet_floor_decrypt(black_box(&ck), &salt, &ratchet_ad, black_box(&ct), &tag, &mut out))
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Key generation.
// ---------------------------------------------------------------------------------------

fn keygen(c: &mut Criterion) {
    let mut g = c.benchmark_group("keygen");
    let mut r = rng(2);
    let ak = AccountKey::generate(&mut r);
    let device = Device::generate(ak.account_id(), DeviceId(1), &mut r);
    g.bench_function("account_key", |b| b.iter(|| AccountKey::generate(&mut r)));
    g.bench_function("device", |b| {
        b.iter(|| Device::generate(ak.account_id(), DeviceId(2), &mut r))
    });
    g.bench_function("signed_prekey", |b| b.iter(|| device.generate_signed_prekey(1, &mut r)));
    g.bench_function("mlkem768_prekey", |b| {
        b.iter(|| device.generate_kem_prekey(1, false, &mut r))
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------
// X3DH + PQXDH session setup.
// ---------------------------------------------------------------------------------------

fn x3dh(c: &mut Criterion) {
    let mut g = c.benchmark_group("x3dh");
    let mut r = rng(3);
    let alice = Party::new(&mut r);
    let bob = Party::new(&mut r);
    let first_plaintext = plaintext(SMALL);
    for (with_opk, name) in [(true, "with_opk"), (false, "no_opk")] {
        let bundle = bob.bundle(with_opk);
        // initiate: device-list lookup, 2 or 3 prekey signature checks, EK keygen,
        // 3 or 4 DH, one ML-KEM encapsulation, transcript hash, HKDF, ratchet keygen.
        g.bench_function(BenchmarkId::new("initiate", name), |b| {
            b.iter(|| initiate(&alice.device, &bob.list, black_box(&bundle), &mut r).expect("initiate"))
        });
        // respond: decode, 3 or 4 DH, one decapsulation, HKDF, and the first message's
        // decryption. The same pre-key message is answered every time (respond keeps no state).
        let mut session = initiate(&alice.device, &bob.list, &bundle, &mut r).expect("initiate");
        let first = session.encrypt(&first_plaintext, &mut r).expect("encrypt");
        let opk = with_opk.then_some(&bob.opk);
        // The decode alone: it parses the initiator's identity, whose Ed25519 key is
        // decompressed and checked to be canonical and not weak.
        g.bench_function(BenchmarkId::new("decode_prekey_message", name), |b| {
            b.iter(|| PreKeyMessage::decode(black_box(&first.bytes)).expect("decode"))
        });
        g.bench_function(BenchmarkId::new("respond", name), |b| {
            b.iter(|| {
                let msg = PreKeyMessage::decode(black_box(&first.bytes)).expect("decode");
                respond(&bob.device, &alice.list, &msg, &bob.spk, opk, &bob.kem).expect("respond")
            })
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------
// The Double Ratchet.
// ---------------------------------------------------------------------------------------

/// Times `decrypt` over `iters` fresh messages, in order, produced (untimed) by `encrypt`
/// in chunks of at most [`CHUNK_BYTES`].
fn time_in_order_decrypts<M>(
    iters: u64,
    len: usize,
    mut encrypt: impl FnMut() -> M,
    mut decrypt: impl FnMut(&M) -> Vec<u8>,
) -> Duration {
    let chunk = (CHUNK_BYTES / len.max(1)).max(1) as u64;
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(chunk);
        let msgs: Vec<M> = (0..n).map(|_| encrypt()).collect();
        let start = Instant::now();
        for m in &msgs {
            black_box(decrypt(black_box(m)));
        }
        total += start.elapsed();
        drop(msgs);
        left -= n;
    }
    total
}

/// Which operation of a ping-pong exchange to time.
#[derive(Clone, Copy)]
enum PingPong {
    /// The encrypt that performs the DH ratchet step.
    StepEncrypt,
    /// The decrypt that performs the DH ratchet step.
    StepDecrypt,
    /// Encrypt and decrypt of one message, one direction change per message.
    Message,
}

fn ratchet(c: &mut Criterion) {
    let mut g = c.benchmark_group("ratchet");
    let mut r = rng(4);
    // Encrypt runs ahead on one pair; decrypt keeps its own pair in step.
    let (_alice, _bob, mut a, _) = establish(&mut r);
    let (_alice2, _bob2, mut a2, mut b2) = establish(&mut r);
    for (len, name) in SIZES {
        let pt = plaintext(len);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(BenchmarkId::new("encrypt", name), |bch| {
            bch.iter(|| a.encrypt(black_box(&pt), &mut r).expect("encrypt"))
        });
        g.bench_function(BenchmarkId::new("decrypt", name), |bch| {
            bch.iter_custom(|iters| {
                time_in_order_decrypts(
                    iters,
                    len,
                    || a2.encrypt(&pt, &mut r).expect("encrypt").bytes,
                    |m| b2.decrypt(MessageType::Ratchet, m).expect("decrypt"),
                )
            })
        });
    }

    // Ping-pong: every message changes direction, so every encrypt and every decrypt
    // performs a DH ratchet step.
    g.throughput(Throughput::Elements(1));
    let pt = plaintext(SMALL);
    let (_alice, _bob, mut a, mut b) = establish(&mut r);
    // b owes a reply; after it, a's next encrypt is a DH step.
    let reply = b.encrypt(&pt, &mut r).expect("encrypt");
    a.decrypt(reply.message_type, &reply.bytes).expect("decrypt");
    for (which, name) in [
        (PingPong::StepEncrypt, "dh_step_encrypt"),
        (PingPong::StepDecrypt, "dh_step_decrypt"),
        (PingPong::Message, "ping_pong_message"),
    ] {
        g.bench_function(name, |bch| {
            bch.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // a → b, then b → a: two messages, four DH-step operations.
                    let t = Instant::now();
                    let m = a.encrypt(black_box(&pt), &mut r).expect("encrypt");
                    let enc = t.elapsed();
                    let t = Instant::now();
                    black_box(b.decrypt(m.message_type, black_box(&m.bytes)).expect("decrypt"));
                    let dec = t.elapsed();
                    let t = Instant::now();
                    let m = b.encrypt(black_box(&pt), &mut r).expect("encrypt");
                    let enc2 = t.elapsed();
                    let t = Instant::now();
                    black_box(a.decrypt(m.message_type, black_box(&m.bytes)).expect("decrypt"));
                    let dec2 = t.elapsed();
                    total += match which {
                        PingPong::StepEncrypt => enc,
                        PingPong::StepDecrypt => dec,
                        // Two messages per iteration: report one.
                        PingPong::Message => (enc + dec + enc2 + dec2) / 2,
                    };
                }
                total
            })
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Sealed sender.
// ---------------------------------------------------------------------------------------

fn sealed(c: &mut Criterion) {
    let mut g = c.benchmark_group("sealed");
    let mut r = rng(5);
    let alice = Party::new(&mut r);
    let bob = Party::new(&mut r);
    let content = plaintext(SEALED_CONTENT);
    let ik_b = bob.device.identity();
    g.bench_function("seal_1KiB", |b| {
        b.iter(|| seal(&alice.device, black_box(&ik_b), 1, black_box(&content), &mut r).expect("seal"))
    });
    let envelope = seal(&alice.device, &ik_b, 1, &content, &mut r).expect("seal");
    g.bench_function("open_1KiB", |b| {
        b.iter(|| open(&bob.device, black_box(&envelope)).expect("open"))
    });
    g.finish();

    let mut g = c.benchmark_group("seal_multi");
    g.sample_size(10);
    let recipients: Vec<Device> = (0..1000)
        .map(|i| {
            let ak = AccountKey::generate(&mut r);
            Device::generate(ak.account_id(), DeviceId(i), &mut r)
        })
        .collect();
    let keys: Vec<_> = recipients.iter().map(|d| d.identity()).collect();
    for n in [100usize, 1000] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("seal_1KiB", n), |b| {
            b.iter(|| seal_multi(&alice.device, black_box(&keys[..n]), 1, &content, &mut r).expect("seal"))
        });
    }
    let multi = seal_multi(&alice.device, &keys, 1, &content, &mut r).expect("seal");
    let env0 = multi.envelope(0).expect("recipient 0");
    g.sample_size(100);
    g.throughput(Throughput::Elements(1));
    g.bench_function("open_1KiB", |b| {
        b.iter(|| open(&recipients[0], black_box(&env0)).expect("open"))
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Safety numbers.
// ---------------------------------------------------------------------------------------

fn safety_number(c: &mut Criterion) {
    let mut g = c.benchmark_group("safety_number");
    g.sample_size(20);
    let mut r = rng(6);
    let a = AccountKey::generate(&mut r).public_key();
    let b = AccountKey::generate(&mut r).public_key();
    g.bench_function("new", |bch| {
        bch.iter(|| SafetyNumber::new(black_box(&a), black_box(&b)))
    });
    g.finish();
}

/// Device lists: verifying one (the certificate, the list signature and one binding per
/// device), checking an update against the pinned list, and signing one with the list key.
fn device_list(c: &mut Criterion) {
    let mut g = c.benchmark_group("device_list");
    g.sample_size(20);
    let mut r = rng(7);
    let ak = AccountKey::generate(&mut r);
    let lk = ak.list_key(1).expect("epoch 1");
    let entries: Vec<_> = (1..=64)
        .map(|i| Device::generate(ak.account_id(), DeviceId(i), &mut r).entry())
        .collect();
    for n in [1usize, 64] {
        let list = lk
            .sign_device_list(1, 0, entries[..n].to_vec(), &[DeviceId(1)])
            .expect("a valid list");
        let next = lk
            .sign_device_list(2, 0, entries[..n].to_vec(), &[DeviceId(1)])
            .expect("a valid list");
        let id = ak.account_id();
        g.bench_function(BenchmarkId::new("verify", n), |bch| {
            bch.iter(|| black_box(list.signed()).verify(&id).expect("verifies"))
        });
        g.bench_function(BenchmarkId::new("check_update", n), |bch| {
            bch.iter(|| black_box(&list).check_update(black_box(&next)).expect("an update"))
        });
        g.bench_function(BenchmarkId::new("sign", n), |bch| {
            bch.iter(|| {
                lk.sign_device_list(2, 0, black_box(entries[..n].to_vec()), &[DeviceId(1)])
                    .expect("a valid list")
            })
        });
    }
    g.bench_function("derive_list_key", |bch| {
        bch.iter(|| black_box(&ak).list_key(black_box(2)).expect("epoch 2"))
    });
    g.finish();
}

/// Sender keys: encrypt (one chain step, one AEAD, one signature), decrypt the next
/// message, and decrypt after a jump of 1,000 (1,000 message keys derived and kept).
fn sender_key(c: &mut Criterion) {
    let mut g = c.benchmark_group("sender_key");
    g.sample_size(20);
    let mut r = rng(8);
    let body = plaintext(1024);
    let mut sender = SenderKey::generate(&mut r);
    g.bench_function("encrypt_1KiB", |bch| {
        bch.iter(|| sender.encrypt(black_box(&body), &mut r).expect("encrypts"))
    });
    let mut sender = SenderKey::generate(&mut r);
    let dist_next = sender.distribution();
    let next = sender.encrypt(&body, &mut r).expect("encrypts");
    g.bench_function("decrypt_1KiB", |bch| {
        bch.iter_batched(
            || SenderKeyReceiver::new(&dist_next),
            |mut rx| rx.decrypt(black_box(&next)).expect("decrypts"),
            criterion::BatchSize::SmallInput,
        )
    });
    let mut jumper = SenderKey::generate(&mut r);
    let dist_jump = jumper.distribution();
    for _ in 0..1000 {
        jumper.encrypt(b"", &mut r).expect("encrypts");
    }
    let far = jumper.encrypt(&body, &mut r).expect("encrypts");
    g.bench_function("decrypt_after_jump_1000", |bch| {
        bch.iter_batched(
            || SenderKeyReceiver::new(&dist_jump),
            |mut rx| rx.decrypt(black_box(&far)).expect("decrypts"),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------
// One group message to 100 and 1,000 members of 2 devices each (200 and 2,000 mailboxes):
// the group send (one sender-key step and one group seal, whatever the size), next to a
// pairwise fan-out (one ratchet step and one sealed-sender seal per device) and to the
// multi-recipient seal (one body, two X25519 per device).
// ---------------------------------------------------------------------------------------

fn group_send(c: &mut Criterion) {
    let mut g = c.benchmark_group("group_send");
    g.sample_size(10);
    let mut r = rng(9);
    let body = plaintext(1024);
    let gk = GroupSealKey::generate(&mut r);
    let mut sender = SenderKey::generate(&mut r);
    let alice = Party::new(&mut r);
    let devices: Vec<Device> = (0..2000u32)
        .map(|i| {
            let ak = AccountKey::generate(&mut r);
            Device::generate(ak.account_id(), DeviceId(i % 2 + 1), &mut r)
        })
        .collect();
    let keys: Vec<_> = devices.iter().map(|d| d.identity()).collect();
    // Sixteen warm sessions stand in for one per device: a chain step costs the same on
    // any session, and each seal goes to its own device's identity key.
    let mut sessions: Vec<Session> = (0..16).map(|_| establish(&mut r).2).collect();
    g.bench_function("sender_key_and_group_seal_1KiB", |b| {
        b.iter(|| {
            let m = sender.encrypt(black_box(&body), &mut r).expect("encrypts");
            gk.seal(0x10, &m, &mut r).expect("seals")
        })
    });
    for n in [200usize, 2000] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("pairwise_1KiB", n), |b| {
            b.iter(|| {
                for (i, k) in keys[..n].iter().enumerate() {
                    let s = &mut sessions[i % 16];
                    let m = s.encrypt(black_box(&body), &mut r).expect("encrypts");
                    black_box(seal(&alice.device, k, m.message_type as u8, &m.bytes, &mut r).expect("seal"));
                }
            })
        });
        g.bench_function(BenchmarkId::new("seal_multi_1KiB", n), |b| {
            b.iter(|| seal_multi(&alice.device, black_box(&keys[..n]), 1, &body, &mut r).expect("seal"))
        });
    }
    g.throughput(Throughput::Elements(1));
    let m = sender.encrypt(&body, &mut r).expect("encrypts");
    let env = gk.seal(0x10, &m, &mut r).expect("seals");
    g.sample_size(50);
    g.bench_function("group_open_1KiB", |b| {
        b.iter(|| gk.open(black_box(&env)).expect("opens"))
    });
    // A device in 100 groups, holding the current and the previous key of each, finds the
    // key of an envelope sealed under the last one it tries.
    let mut held: Vec<GroupSealKey> = (0..199).map(|_| GroupSealKey::generate(&mut r)).collect();
    held.push(gk.clone());
    g.bench_function("find_key_among_200", |b| {
        b.iter(|| {
            held.iter()
                .position(|k| k.matches(black_box(&env)))
                .expect("one matches")
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------
// vodozemac 0.11 Olm, for comparison.
// ---------------------------------------------------------------------------------------

/// Alice's outbound and Bob's inbound Olm sessions, with both chains established and the
/// a→b chain warm, as in [`establish`].
fn olm_pair() -> (vodozemac::olm::Session, vodozemac::olm::Session) {
    let alice = Account::new();
    let mut bob = Account::new();
    let otk = bob.generate_one_time_keys(1).created[0];
    bob.mark_keys_as_published();
    let mut a = alice
        .create_outbound_session(SessionConfig::version_1(), bob.curve25519_key(), otk)
        .expect("outbound");
    let OlmMessage::PreKey(pre) = a.encrypt(b"first").expect("encrypt") else {
        panic!("the first Olm message is a pre-key message");
    };
    let mut b = bob
        .create_inbound_session(SessionConfig::version_1(), alice.curve25519_key(), &pre)
        .expect("inbound")
        .session;
    let reply = b.encrypt(b"reply").expect("encrypt");
    a.decrypt(&reply).expect("decrypt");
    let warm = a.encrypt(b"warm").expect("encrypt");
    assert!(matches!(warm, OlmMessage::Normal(_)));
    b.decrypt(&warm).expect("decrypt");
    (a, b)
}

fn vodozemac_olm(c: &mut Criterion) {
    let mut g = c.benchmark_group("vodozemac");
    // Encrypt runs ahead on one pair; decrypt keeps its own pair in step.
    let (mut a, _) = olm_pair();
    let (mut a2, mut b2) = olm_pair();
    for (len, name) in SIZES {
        let pt = plaintext(len);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(BenchmarkId::new("encrypt", name), |bch| {
            bch.iter(|| a.encrypt(black_box(&pt)).expect("encrypt"))
        });
        g.bench_function(BenchmarkId::new("decrypt", name), |bch| {
            bch.iter_custom(|iters| {
                time_in_order_decrypts(
                    iters,
                    len,
                    || a2.encrypt(&pt).expect("encrypt"),
                    |m| b2.decrypt(m).expect("decrypt"),
                )
            })
        });
    }

    g.throughput(Throughput::Elements(1));
    let pt = plaintext(SMALL);
    let (mut a, mut b) = olm_pair();
    let reply = b.encrypt(&pt).expect("encrypt");
    a.decrypt(&reply).expect("decrypt");
    g.bench_function("ping_pong_message", |bch| {
        bch.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let m = a.encrypt(black_box(&pt)).expect("encrypt");
                black_box(b.decrypt(black_box(&m)).expect("decrypt"));
                let m = b.encrypt(black_box(&pt)).expect("encrypt");
                black_box(a.decrypt(black_box(&m)).expect("decrypt"));
            }
            // Two messages per iteration: report one.
            start.elapsed() / 2
        })
    });

    // Session setup: 3DH, no PQ, no signature checks (Matrix clients verify the signed
    // one-time key outside vodozemac).
    let alice = Account::new();
    let mut bob = Account::new();
    let otk = bob.generate_one_time_keys(1).created[0];
    bob.mark_keys_as_published();
    let bob_ik = bob.curve25519_key();
    g.bench_function("session_outbound", |bch| {
        bch.iter(|| {
            alice
                .create_outbound_session(SessionConfig::version_1(), black_box(bob_ik), otk)
                .expect("outbound")
        })
    });
    // Inbound consumes the one-time key, so each iteration gets a fresh key and a fresh
    // pre-key message (untimed); the timed call includes the first message's decryption.
    g.bench_function("session_inbound", |bch| {
        bch.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let otk = bob.generate_one_time_keys(1).created[0];
                bob.mark_keys_as_published();
                let mut s = alice
                    .create_outbound_session(SessionConfig::version_1(), bob_ik, otk)
                    .expect("outbound");
                let OlmMessage::PreKey(pre) = s.encrypt(&pt).expect("encrypt") else {
                    panic!("the first Olm message is a pre-key message");
                };
                let t = Instant::now();
                black_box(
                    bob.create_inbound_session(SessionConfig::version_1(), alice.curve25519_key(), black_box(&pre))
                        .expect("inbound"),
                );
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

/// Attachments (docs/protocol.md §16): encrypting and decrypting 8 MiB as a stream in
/// 64 KiB pieces, digest included, next to the bare ChaCha20-Poly1305 floor above.
fn attachment(c: &mut Criterion) {
    use sotto_crypto::attachment::{Decryptor, Encryptor};
    let mut g = c.benchmark_group("attachment");
    g.sample_size(20);
    let len = 8usize << 20;
    let plain = plaintext(len);
    let key = sotto_crypto::AttachmentKey::from_bytes(&[0x41; 32]);
    let mut r = rng(41);
    let seal = |r: &mut ChaCha20Rng, out: &mut Vec<u8>| {
        let mut e = Encryptor::new(&key, len as u64, r).expect("size");
        out.clear();
        out.extend_from_slice(&e.header());
        for piece in plain.chunks(64 * 1024) {
            e.update(piece, out).expect("length");
        }
        e.finish(out).expect("length")
    };
    let mut ct = Vec::with_capacity(len + len / 8);
    g.throughput(Throughput::Bytes(len as u64));
    g.bench_function("encrypt_8MiB", |b| b.iter(|| seal(&mut r, &mut ct)));
    let digest = seal(&mut r, &mut ct);
    let mut out = Vec::with_capacity(len);
    g.bench_function("decrypt_8MiB", |b| {
        b.iter(|| {
            out.clear();
            let mut d = Decryptor::new(&key, len as u64, digest).expect("size");
            for piece in ct.chunks(64 * 1024) {
                d.update(piece, &mut out).expect("chunk");
            }
            d.finish().expect("digest")
        })
    });
    g.finish();
}

/// Unlinkable tokens (docs/protocol.md §16.3): a batch of 32 requested, issued with its
/// proof and finished (verified and unblinded), and one redemption check.
fn tokens(c: &mut Criterion) {
    use sotto_crypto::{IssuerKey, TokenRequest};
    let mut g = c.benchmark_group("token");
    let mut r = rng(43);
    let issuer = IssuerKey::generate(&mut r);
    g.bench_function("request_32", |b| {
        b.iter(|| TokenRequest::new(32, &mut r).expect("count"))
    });
    let req = TokenRequest::new(32, &mut r).expect("count");
    g.bench_function("issue_32", |b| {
        b.iter(|| issuer.issue(black_box(req.blinded()), &mut r).expect("points"))
    });
    let (evaluated, proof) = issuer.issue(req.blinded(), &mut r).expect("points");
    g.bench_function("finish_32", |b| {
        b.iter(|| {
            req.finish(&issuer.public(), black_box(&evaluated), &proof)
                .expect("proof")
        })
    });
    let tokens = req.finish(&issuer.public(), &evaluated, &proof).expect("proof");
    g.bench_function("verify_1", |b| {
        b.iter(|| issuer.verify(black_box(&tokens[0])).expect("token"))
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    primitives(&mut c);
    keygen(&mut c);
    x3dh(&mut c);
    ratchet(&mut c);
    sealed(&mut c);
    safety_number(&mut c);
    device_list(&mut c);
    sender_key(&mut c);
    group_send(&mut c);
    vodozemac_olm(&mut c);
    attachment(&mut c);
    tokens(&mut c);
    c.final_summary();
}
