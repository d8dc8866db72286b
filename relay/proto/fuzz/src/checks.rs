//! The checks behind sotto-proto's fuzz targets, one function per target.
//!
//! This file is compiled twice: as a module of the cargo-fuzz crate (`relay/proto/fuzz`,
//! whose targets are one-line wrappers around the functions here) and, through `#[path]`,
//! as a module of the corpus replay test `relay/proto/tests/fuzz_corpus.rs`. So it may
//! use only what both crates have: `std`, `sotto_proto`, `sotto_crypto` and `rand_chacha`.
//!
//! Every check feeds untrusted bytes to a public decoder of sotto-proto. Each call must
//! return a value or a typed [`DecodeError`]: a panic, inside sotto-proto or in an
//! assertion here, is a finding. The assertions pin what must hold for *every* input:
//!
//! * decoders are canonical: what decodes re-encodes to exactly the input bytes, and the
//!   re-encoding decodes to the same value;
//! * the `Authorization` header parser accepts only what it can print back: a parsed
//!   header, printed with [`authorization_header`], parses to the same answer.
//!
//! [`seeds`] builds the seed corpus from a fixed-seed fixture (an account, two devices,
//! their device list and prekeys), so every run makes the same bytes.

use std::fmt::Debug;

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use sotto_crypto::{AccountKey, Device, DeviceId, PreKeyBundle};
use sotto_proto::{
    Access, AccessKey, AccessPolicy, AuthResponse, BlobCreate, BlobCreated, BlobIssuer, BlobStatus, Body, Bundles,
    BusMessage, BusNotice, Challenge, DecodeError, Deliver, DeviceListBody, ErrorBody, ErrorCode, Frame, PreKeyCounts,
    PreKeyUpload, Presence, ProfileBody, ProfileUpload, PushProvider, PushRegistration, Recipient, Send, SendOutcome,
    SendResult, TokenIssue, TokenIssued, authorization_header, limits, parse_authorization, websocket,
};

/// The fuzz targets; each has a directory of seeds under `relay/proto/fuzz/corpus/`.
pub const TARGETS: [&str; 4] = ["frame", "body", "bus", "websocket"];

/// What a check made of its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// At least one decoder accepted the input.
    Accepted,
    /// Every decoder returned a typed error.
    Rejected,
}

/// Runs the check of `target` on `data`; `None` for an unknown target.
pub fn run(target: &str, data: &[u8]) -> Option<Outcome> {
    Some(match target {
        "frame" => frame(data),
        "body" => body(data),
        "bus" => bus(data),
        "websocket" => websocket(data),
        _ => return None,
    })
}

/// Target `frame`: [`Frame::decode`]; what decodes re-encodes to the input.
pub fn frame(data: &[u8]) -> Outcome {
    match Frame::decode(data) {
        Ok(f) => {
            let encoded = f.encode();
            assert_eq!(encoded, data, "{f:?} does not re-encode to its input");
            assert_eq!(encoded.get(1).copied(), Some(f.type_byte()));
            Outcome::Accepted
        }
        Err(e) => {
            let _ = e.to_string();
            Outcome::Rejected
        }
    }
}

fn round_trip<T: Body + PartialEq + Debug>(data: &[u8]) -> bool {
    match T::decode(data) {
        Ok(v) => {
            let encoded = v.encode();
            assert_eq!(
                encoded,
                data,
                "{} {v:?} does not re-encode to its input",
                std::any::type_name::<T>()
            );
            assert_eq!(T::decode(&encoded).as_ref(), Ok(&v));
            true
        }
        Err(e) => {
            let _ = e.to_string();
            false
        }
    }
}

/// Target `bus`: [`BusMessage::decode`], the notices relay nodes exchange; what decodes
/// re-encodes to the input.
pub fn bus(data: &[u8]) -> Outcome {
    match BusMessage::decode(data) {
        Ok(m) => {
            let encoded = m.encode();
            assert_eq!(encoded, data, "{m:?} does not re-encode to its input");
            assert_eq!(BusMessage::decode(&encoded).as_ref(), Ok(&m));
            Outcome::Accepted
        }
        Err(e) => {
            let _ = e.to_string();
            Outcome::Rejected
        }
    }
}

/// The message limit the `websocket` target decodes under: small, so that inputs reach it.
const WS_MAX_MESSAGE: usize = 4096;

/// Decodes a client's byte stream with [`websocket::Decoder`], given `pieces` at a time
/// (all at once when `None`), the way a connection reads: every message, then the error
/// that ended the stream, if any.
fn ws_messages(stream: &[u8], pieces: Option<usize>) -> (Vec<websocket::Message>, Option<websocket::WsError>) {
    let mut d = websocket::Decoder::new(WS_MAX_MESSAGE);
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut at = 0;
    loop {
        let n = pieces.unwrap_or(stream.len()).min(stream.len() - at);
        buf.extend_from_slice(&stream[at..at + n]);
        at += n;
        loop {
            match d.decode(&buf) {
                Err(e) => return (out, Some(e)),
                Ok(websocket::Decoded::NeedMore(k)) => {
                    assert!(k >= 1, "NeedMore(0)");
                    break;
                }
                Ok(websocket::Decoded::Message { consumed, message }) => {
                    assert!(
                        (2..=buf.len()).contains(&consumed),
                        "consumed {consumed} of {}",
                        buf.len()
                    );
                    buf.drain(..consumed);
                    out.push(message);
                }
                Ok(websocket::Decoded::Fragment { consumed }) => {
                    assert!(
                        (2..=buf.len()).contains(&consumed),
                        "consumed {consumed} of {}",
                        buf.len()
                    );
                    buf.drain(..consumed);
                }
            }
        }
        if at == stream.len() {
            return (out, None);
        }
    }
}

/// Target `websocket`: the relay's RFC 6455 decoder. The first byte sets the size of the
/// pieces the rest is read in (1 to 64 bytes); read in pieces or at once, the same messages
/// and the same error come out. Data messages stay within the limit, control payloads within
/// 125 bytes, and each message, masked again as a client sends it, decodes to itself.
pub fn websocket(data: &[u8]) -> Outcome {
    let Some((first, stream)) = data.split_first() else {
        return Outcome::Rejected;
    };
    let whole = ws_messages(stream, None);
    let pieces = ws_messages(stream, Some(usize::from(first % 64) + 1));
    assert_eq!(whole, pieces, "reading in pieces changed what decodes");
    if let Some(e) = &whole.1 {
        let _ = (e.to_string(), e.close_code());
    }
    for m in &whole.0 {
        let (op, payload): (u8, Vec<u8>) = match m {
            websocket::Message::Binary(b) => (websocket::opcode::BINARY, b.clone()),
            websocket::Message::Text(t) => (websocket::opcode::TEXT, t.clone().into_bytes()),
            websocket::Message::Ping(p) => (websocket::opcode::PING, p.clone()),
            websocket::Message::Pong(p) => (websocket::opcode::PONG, p.clone()),
            websocket::Message::Close(c) => {
                let mut p = Vec::new();
                if let Some(c) = c {
                    p.extend_from_slice(&c.code.to_be_bytes());
                    p.extend_from_slice(c.reason.as_bytes());
                }
                (websocket::opcode::CLOSE, p)
            }
        };
        let limit = if op & 0x8 != 0 {
            websocket::MAX_CONTROL_PAYLOAD
        } else {
            WS_MAX_MESSAGE
        };
        assert!(payload.len() <= limit, "{op:#x} of {} bytes", payload.len());
        let mut wire = Vec::new();
        websocket::mask_frame(op, true, &payload, [0xa5, 0x01, 0x5a, 0xff], &mut wire);
        let again = websocket::Decoder::new(WS_MAX_MESSAGE).decode(&wire);
        assert_eq!(
            again,
            Ok(websocket::Decoded::Message {
                consumed: wire.len(),
                message: m.clone()
            })
        );
        // What the relay would send back decodes too, once masked: the encoder writes
        // the same header.
        let mut plain = Vec::new();
        websocket::encode(m, &mut plain).expect("a decoded message encodes");
        assert_eq!(plain.len() + 4, wire.len());
    }
    if whole.0.is_empty() {
        Outcome::Rejected
    } else {
        Outcome::Accepted
    }
}

/// Target `body`: every HTTP body decoder on the same input (the version byte comes first
/// in all of them), then the `Authorization` header parser on the input as text.
pub fn body(data: &[u8]) -> Outcome {
    let results = [
        round_trip::<Challenge>(data),
        round_trip::<AuthResponse>(data),
        round_trip::<DeviceListBody>(data),
        round_trip::<PreKeyUpload>(data),
        round_trip::<PreKeyCounts>(data),
        round_trip::<Bundles>(data),
        round_trip::<PushRegistration>(data),
        round_trip::<ErrorBody>(data),
        round_trip::<AccessPolicy>(data),
        round_trip::<ProfileUpload>(data),
        round_trip::<ProfileBody>(data),
        round_trip::<BlobIssuer>(data),
        round_trip::<TokenIssue>(data),
        round_trip::<TokenIssued>(data),
        round_trip::<BlobCreate>(data),
        round_trip::<BlobCreated>(data),
        round_trip::<BlobStatus>(data),
        authorization(data),
    ];
    if results.contains(&true) {
        Outcome::Accepted
    } else {
        Outcome::Rejected
    }
}

fn authorization(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    match parse_authorization(text) {
        Ok(a) => {
            let printed = authorization_header(&a);
            assert_eq!(parse_authorization(&printed), Ok(a));
            true
        }
        Err(e) => {
            let _: &DecodeError = &e;
            false
        }
    }
}

// ---------------------------------------------------------------------------------------
// The seed corpus.

const CORPUS_SEED: u64 = 0x5077_0f22;

/// One seed file.
#[derive(Clone, Debug)]
pub struct Seed {
    /// The target directory.
    pub target: &'static str,
    /// The file name: `ok-*` seeds must be [`Outcome::Accepted`], `bad-*` ones need not be.
    pub name: String,
    /// The contents.
    pub bytes: Vec<u8>,
}

/// The seed corpus, deterministically: valid encodings made by sotto-proto from a
/// fixture, and truncated or altered copies of them.
pub fn seeds() -> Vec<Seed> {
    let mut rng = ChaCha20Rng::seed_from_u64(CORPUS_SEED);
    let ak = AccountKey::generate(&mut rng);
    let account = ak.account_id();
    let devices: Vec<Device> = (1..=2)
        .map(|i| Device::generate(account, DeviceId(i), &mut rng))
        .collect();
    let list = ak
        .sign_device_list(1, 0, devices.iter().map(Device::entry).collect())
        .expect("a valid device list")
        .signed()
        .as_bytes()
        .to_vec();
    let d = &devices[0];
    let challenge = Challenge {
        nonce: [7; 32],
        relay_id: sotto_proto::relay_id("https://relay.example"),
        timestamp_ms: 1_700_000_000_000,
    };
    let auth = AuthResponse {
        account_id: account,
        device_id: d.device_id(),
        nonce: challenge.nonce,
        signature: d.sign_relay_auth(&challenge.relay_id, &challenge.nonce, challenge.timestamp_ms),
    };
    let spk = d.generate_signed_prekey(1, &mut rng).public().clone();
    let upload = PreKeyUpload {
        signed_prekey: Some(spk.clone()),
        one_time_prekeys: d
            .generate_one_time_prekeys(10, 2, &mut rng)
            .iter()
            .map(|k| k.public().clone())
            .collect(),
        kem_prekeys: vec![d.generate_kem_prekey(10, false, &mut rng).public().clone()],
        last_resort_kem_prekey: Some(d.generate_kem_prekey(1_000_000, true, &mut rng).public().clone()),
    };
    let bundle = PreKeyBundle {
        identity: d.identity(),
        signed_prekey: spk,
        one_time_prekey: upload.one_time_prekeys.first().cloned(),
        kem_prekey: upload.kem_prekeys[0].clone(),
    };

    let mut out = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        out.push(Seed {
            target,
            name: name.to_owned(),
            bytes,
        });
    };
    let truncated = |b: &[u8]| b[..b.len() / 2].to_vec();
    let trailing = |b: &[u8]| [b, &[0]].concat();

    // Frames.
    let send = Frame::Send(Send {
        message_id: 42,
        access: vec![Access {
            account_id: account,
            key: AccessKey([9; 32]),
        }],
        body: Vec::new(),
        recipients: devices
            .iter()
            .map(|x| Recipient {
                account_id: account,
                device_id: x.device_id(),
                head: b"opaque envelope".to_vec(),
            })
            .collect(),
    })
    .encode();
    // A fan-out: one shared body, a short head per device (the last one empty).
    let shared = Frame::Send(Send {
        message_id: 43,
        access: vec![],
        body: b"shared body of a group message".to_vec(),
        recipients: devices
            .iter()
            .enumerate()
            .map(|(i, x)| Recipient {
                account_id: account,
                device_id: x.device_id(),
                head: if i + 1 == devices.len() {
                    Vec::new()
                } else {
                    vec![i as u8; 8]
                },
            })
            .collect(),
    })
    .encode();
    let frames = [
        ("ok-challenge", Frame::Challenge(challenge.clone())),
        ("ok-auth-response", Frame::AuthResponse(auth.clone())),
        ("ok-auth-extension", Frame::AuthExtension(auth.clone())),
        ("ok-auth-ok", Frame::AuthOk { mailbox_epoch: [7; 16] }),
        (
            "ok-send-result-stored",
            Frame::SendResult(SendResult {
                message_id: 42,
                outcome: SendOutcome::Stored { seqs: vec![1, 9] },
            }),
        ),
        (
            "ok-send-result-mismatch",
            Frame::SendResult(SendResult {
                message_id: 42,
                outcome: SendOutcome::DeviceMismatch {
                    device_lists: vec![list.clone()],
                },
            }),
        ),
        (
            "ok-send-result-rejected",
            Frame::SendResult(SendResult {
                message_id: 42,
                outcome: SendOutcome::Rejected {
                    code: ErrorCode::MAILBOX_FULL,
                },
            }),
        ),
        (
            "ok-deliver",
            Frame::Deliver(Deliver {
                seq: 3,
                received_at_s: 1_700_000_040,
                envelope: b"opaque envelope".to_vec(),
            }),
        ),
        ("ok-queue-empty", Frame::QueueEmpty),
        ("ok-resume", Frame::Resume),
        ("ok-ack", Frame::Ack { seq: 3 }),
        (
            "ok-ephemeral",
            Frame::Ephemeral {
                to: account,
                payload: b"typing".to_vec(),
            },
        ),
        (
            "ok-ephemeral-deliver",
            Frame::EphemeralDeliver {
                payload: b"typing".to_vec(),
            },
        ),
        (
            "ok-error",
            Frame::Error {
                code: ErrorCode::RATE_LIMITED,
            },
        ),
    ];
    add("frame", "ok-send", send.clone());
    add("frame", "ok-send-shared-body", shared.clone());
    for (name, f) in frames {
        add("frame", name, f.encode());
    }
    add("frame", "bad-send-truncated", truncated(&send));
    add("frame", "bad-send-trailing", trailing(&send));
    let mut count = send.clone();
    count[80] = 0xff; // the recipient count's high byte (after one access key and an empty body)
    add("frame", "bad-send-count", count);
    let mut body_len = shared.clone();
    body_len[12] = 0x7f; // the shared body's length, high byte: far beyond the bound
    add("frame", "bad-send-body-length", body_len);
    add("frame", "bad-send-shared-truncated", truncated(&shared));
    add("frame", "bad-version", [&[2u8][..], &send[1..]].concat());
    add("frame", "bad-type", vec![1, 0xee]);
    add("frame", "bad-empty", vec![]);

    // Bus notices between relay nodes.
    let origin = [0x5a; 8];
    let notices = [
        (
            "ok-mailbox",
            BusNotice::Mailbox(vec![(account, DeviceId(1)), (account, DeviceId(2))]),
        ),
        (
            "ok-ephemeral",
            BusNotice::Ephemeral {
                account,
                except: Some(DeviceId(1)),
                payload: b"typing".to_vec(),
            },
        ),
        (
            "ok-ephemeral-all",
            BusNotice::Ephemeral {
                account,
                except: None,
                payload: b"presence".to_vec(),
            },
        ),
        (
            "ok-evict",
            BusNotice::Evict {
                account,
                device: DeviceId(2),
            },
        ),
        (
            "ok-present",
            BusNotice::Present(vec![Presence {
                account,
                device: DeviceId(1),
                since_ms: 1_700_000_000_000,
                extension: false,
            }]),
        ),
        (
            "ok-absent",
            BusNotice::Absent(vec![(account, DeviceId(1), 1_700_000_000_000)]),
        ),
        ("ok-heartbeat", BusNotice::Heartbeat),
        ("ok-hello", BusNotice::Hello),
    ];
    let mailbox = BusMessage {
        origin,
        notice: notices[0].1.clone(),
    }
    .encode();
    for (name, notice) in notices {
        add("bus", name, BusMessage { origin, notice }.encode());
    }
    add("bus", "bad-mailbox-truncated", truncated(&mailbox));
    add("bus", "bad-mailbox-trailing", trailing(&mailbox));
    let mut count = mailbox.clone();
    count[10] = 0xff; // the count's high byte: above the bound
    add("bus", "bad-mailbox-count", count);
    add("bus", "bad-version", [&[2u8][..], &mailbox[1..]].concat());
    add("bus", "bad-kind", [&mailbox[..9], &[0xee][..]].concat());
    add("bus", "bad-empty", vec![]);

    // WebSocket streams: the first byte sets the read size, the rest is what a client sends.
    let ws = |piece: u8, frames: &[(u8, bool, &[u8])]| {
        let mut v = vec![piece];
        for (op, fin, payload) in frames {
            websocket::mask_frame(*op, *fin, payload, [0x37, 0xfa, 0x21, 0x3d], &mut v);
        }
        v
    };
    use websocket::opcode::{BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT};
    let send_frame = Frame::Challenge(challenge.clone()).encode();
    add("websocket", "ok-binary", ws(63, &[(BINARY, true, &send_frame)]));
    add("websocket", "ok-binary-bytewise", ws(0, &[(BINARY, true, &send_frame)]));
    add("websocket", "ok-text", ws(7, &[(TEXT, true, "Hello, é".as_bytes())]));
    add(
        "websocket",
        "ok-fragments-with-ping",
        ws(
            3,
            &[
                (BINARY, false, b"Hel"),
                (PING, true, b"p"),
                (CONTINUATION, false, b"l"),
                (CONTINUATION, true, b"o"),
            ],
        ),
    );
    add("websocket", "ok-long-16", ws(40, &[(BINARY, true, &[0x5a; 300])]));
    add(
        "websocket",
        "ok-pong-close",
        ws(9, &[(PONG, true, b""), (CLOSE, true, &[0x03, 0xe8, b'o', b'k'])]),
    );
    add("websocket", "bad-unmasked", vec![5, 0x82, 0x02, b'h', b'i']);
    add("websocket", "bad-reserved-opcode", ws(5, &[(0x3, true, b"x")]));
    add(
        "websocket",
        "bad-continuation-first",
        ws(5, &[(CONTINUATION, true, b"x")]),
    );
    add("websocket", "bad-control-fragmented", ws(5, &[(PING, false, b"x")]));
    add("websocket", "bad-control-long", ws(5, &[(PING, true, &[0; 126])]));
    add("websocket", "bad-text-utf8", ws(5, &[(TEXT, true, &[0xff, 0xfe])]));
    add("websocket", "bad-close-code", ws(5, &[(CLOSE, true, &[0x03, 0xed])]));
    add("websocket", "bad-too-large", ws(5, &[(BINARY, true, &[0; 5000])]));
    add(
        "websocket",
        "bad-truncated",
        truncated(&ws(5, &[(BINARY, true, &[1; 200])])),
    );
    add("websocket", "bad-empty", vec![]);

    // Bodies.
    let profile = ProfileUpload {
        version: [0x42; 32],
        ciphertext: b"opaque encrypted profile".to_vec(),
    };
    let bodies: [(&str, Vec<u8>); 12] = [
        ("ok-challenge", challenge.encode()),
        ("ok-auth-response", auth.encode()),
        ("ok-device-list", DeviceListBody { signed_list: list }.encode()),
        ("ok-prekey-upload", upload.encode()),
        (
            "ok-prekey-counts",
            PreKeyCounts {
                one_time: 5,
                kem_one_time: 1,
                has_signed_prekey: true,
                has_last_resort: false,
            }
            .encode(),
        ),
        ("ok-bundles", Bundles { bundles: vec![bundle] }.encode()),
        (
            "ok-push",
            PushRegistration {
                provider: PushProvider::UnifiedPush,
                token: b"https://push.example/abc".to_vec(),
            }
            .encode(),
        ),
        (
            "ok-access-policy",
            AccessPolicy {
                verifier: [3; 32],
                accept_requests: true,
            }
            .encode(),
        ),
        (
            "ok-error",
            ErrorBody {
                code: ErrorCode::NO_PREKEYS,
            }
            .encode(),
        ),
        ("ok-authorization", authorization_header(&auth).into_bytes()),
        ("ok-profile-upload", profile.encode()),
        (
            "ok-profile-body",
            ProfileBody {
                ciphertext: profile.ciphertext.clone(),
            }
            .encode(),
        ),
    ];
    let upload_bytes = bodies[3].1.clone();
    for (name, b) in bodies {
        add("body", name, b);
    }
    add("body", "bad-prekey-upload-truncated", truncated(&upload_bytes));
    let mut flag = upload_bytes.clone();
    flag[1] = 2; // the signed-prekey flag
    add("body", "bad-prekey-upload-flag", flag);
    let mut kind = upload_bytes;
    kind[2] ^= 0x03; // the signed prekey record's kind
    add("body", "bad-prekey-upload-kind", kind);
    add("body", "bad-push-provider", vec![1, 9, 0, 0, 0, 0]);
    // A profile with an empty ciphertext, and one whose length is one above the bound.
    let empty = ProfileUpload {
        ciphertext: Vec::new(),
        ..profile.clone()
    };
    add("body", "bad-profile-empty", empty.encode());
    let mut too_long = profile.encode();
    let len = u32::try_from(limits::MAX_PROFILE_BYTES + 1).unwrap_or(u32::MAX);
    too_long[33..37].copy_from_slice(&len.to_be_bytes()); // the ciphertext's length
    add("body", "bad-profile-too-long", too_long);
    add("body", "bad-profile-truncated", truncated(&profile.encode()));
    add("body", "bad-authorization", b"Sotto-v1 0g".to_vec());
    // The blob store's bodies.
    let issue = TokenIssue {
        epoch: 2894,
        blinded: vec![[0x21; 32], [0x22; 32]],
    };
    let create = BlobCreate {
        epoch: 2894,
        token: [0x33; 64],
        length: 1 << 20,
    };
    let blobs: [(&str, Vec<u8>); 6] = [
        (
            "ok-blob-issuer",
            BlobIssuer {
                epoch: 2894,
                public: [0x44; 32],
                max_blob_len: 512 << 20,
                tokens_per_day: 100,
            }
            .encode(),
        ),
        ("ok-token-issue", issue.encode()),
        (
            "ok-token-issued",
            TokenIssued {
                epoch: 2894,
                evaluated: issue.blinded.clone(),
                proof: [0x55; 64],
            }
            .encode(),
        ),
        ("ok-blob-create", create.encode()),
        ("ok-blob-created", BlobCreated { id: [0x66; 32] }.encode()),
        (
            "ok-blob-status",
            BlobStatus {
                length: 1 << 20,
                received: 4096,
            }
            .encode(),
        ),
    ];
    for (name, b) in blobs {
        add("body", name, b);
    }
    let mut no_points = issue.encode();
    no_points[5..7].copy_from_slice(&[0, 0]); // the count
    no_points.truncate(7);
    add("body", "bad-token-issue-empty", no_points);
    let mut many = issue.encode();
    let n = u16::try_from(limits::MAX_TOKEN_BATCH + 1).unwrap_or(u16::MAX);
    many[5..7].copy_from_slice(&n.to_be_bytes());
    add("body", "bad-token-issue-too-many", many);
    add(
        "body",
        "bad-blob-create-empty",
        BlobCreate { length: 0, ..create }.encode(),
    );
    add(
        "body",
        "bad-blob-status-ahead",
        vec![1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2],
    );
    out
}
