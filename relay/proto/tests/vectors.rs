//! Known-answer vectors of the relay protocol (docs/protocol.md §13):
//! `relay/proto/tests/vectors/relay.json`, every frame type and body type encoded by this
//! crate from fixed seeds, with its decoded fields, and inputs that must fail to decode.
//!
//! The test regenerates the file and fails on any difference; after a deliberate format
//! change rewrite it with
//!
//! ```text
//! SOTTO_WRITE_VECTORS=1 cargo test -p sotto-proto --test vectors
//! ```
//!
//! A second test rebuilds every value from its JSON fields alone and checks that it
//! encodes to, and decodes from, the recorded bytes.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::{Value, json};
use sotto_crypto::{AccountId, AccountKey, Device, DeviceId, PreKeyBundle, Signature};
use sotto_proto::body::AUTH_SCHEME;
use sotto_proto::*;

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/relay.json");
const RELAY_URL: &str = "https://relay.example.org";
const TIMESTAMP_MS: u64 = 1_750_000_000_000;

fn h(b: &[u8]) -> String {
    hex::encode(b)
}

fn hx(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap_or_else(|| panic!("not a hex string: {v}"))).unwrap()
}

fn a32(v: &Value) -> [u8; 32] {
    hx(v).try_into().unwrap()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// A decode error as its stable name and fields (docs/protocol.md §12.2).
fn decode_error(e: &DecodeError) -> Value {
    match e {
        DecodeError::Truncated { needed, remaining } => {
            json!({"error": "Truncated", "needed": needed, "remaining": remaining})
        }
        DecodeError::TrailingBytes { count } => json!({"error": "TrailingBytes", "count": count}),
        DecodeError::UnsupportedVersion { version } => json!({"error": "UnsupportedVersion", "version": version}),
        DecodeError::UnknownType { field, value } => json!({"error": "UnknownType", "field": field, "value": value}),
        DecodeError::TooLong { field, len, max } => {
            json!({"error": "TooLong", "field": field, "len": len, "max": max})
        }
        DecodeError::Invalid { field } => json!({"error": "Invalid", "field": field}),
        other => panic!("no stable name for {other:?}"),
    }
}

fn code_json(c: ErrorCode) -> Value {
    json!({"code": c.0, "name": c.name()})
}

fn code_from(v: &Value) -> ErrorCode {
    let c = ErrorCode(u(&v["code"]) as u16);
    assert_eq!(c.name(), v["name"].as_str().unwrap());
    c
}

// ---------------------------------------------------------------------------------------
// Values to JSON fields.

fn challenge_json(c: &Challenge) -> Value {
    json!({"nonce": h(&c.nonce), "relay_id": h(&c.relay_id), "timestamp_ms": c.timestamp_ms})
}

fn auth_json(a: &AuthResponse) -> Value {
    json!({"account_id": h(a.account_id.as_bytes()), "device_id": a.device_id.0, "nonce": h(&a.nonce), "signature": h(&a.signature.0)})
}

fn frame_json(f: &Frame) -> Value {
    match f {
        Frame::Challenge(c) => challenge_json(c),
        Frame::AuthResponse(a) | Frame::AuthExtension(a) => auth_json(a),
        Frame::AuthOk { mailbox_epoch } => json!({"mailbox_epoch": h(mailbox_epoch)}),
        Frame::QueueEmpty | Frame::Resume => json!({}),
        Frame::Send(s) => json!({
            "message_id": s.message_id,
            "access": s.access.iter().map(|a| json!({
                "account_id": h(a.account_id.as_bytes()), "access_key": h(&a.key.0),
                "verifier": h(&a.key.verifier()),
            })).collect::<Vec<_>>(),
            "body": h(&s.body),
            "recipients": s.recipients.iter().map(|r| json!({
                "account_id": h(r.account_id.as_bytes()), "device_id": r.device_id.0, "head": h(&r.head),
                "envelope": h(&[&r.head[..], &s.body[..]].concat()),
            })).collect::<Vec<_>>(),
        }),
        Frame::SendResult(r) => {
            let outcome = match &r.outcome {
                SendOutcome::Stored { seqs } => json!({"outcome": "Stored", "outcome_byte": 0, "seqs": seqs}),
                SendOutcome::DeviceMismatch { device_lists } => json!({
                    "outcome": "DeviceMismatch", "outcome_byte": 1,
                    "device_lists": device_lists.iter().map(|l| h(l)).collect::<Vec<_>>(),
                }),
                SendOutcome::Rejected { code } => {
                    json!({"outcome": "Rejected", "outcome_byte": 2, "code": code_json(*code)})
                }
                other => panic!("no vector for {other:?}"),
            };
            json!({"message_id": r.message_id, "outcome": outcome})
        }
        Frame::Deliver(d) => json!({"seq": d.seq, "received_at_s": d.received_at_s, "envelope": h(&d.envelope)}),
        Frame::Ack { seq } => json!({"seq": seq}),
        Frame::Ephemeral { to, payload } => json!({"to": h(to.as_bytes()), "payload": h(payload)}),
        Frame::EphemeralDeliver { payload } => json!({"payload": h(payload)}),
        Frame::Error { code } => code_json(*code),
        other => panic!("no vector for {other:?}"),
    }
}

fn record_hex(encode: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut v = Vec::new();
    encode(&mut v);
    h(&v)
}

// ---------------------------------------------------------------------------------------
// JSON fields to values, written separately from the direction above.

fn challenge_from(v: &Value) -> Challenge {
    Challenge {
        nonce: a32(&v["nonce"]),
        relay_id: a32(&v["relay_id"]),
        timestamp_ms: u(&v["timestamp_ms"]),
    }
}

fn auth_from(v: &Value) -> AuthResponse {
    AuthResponse {
        account_id: AccountId(a32(&v["account_id"])),
        device_id: DeviceId(u(&v["device_id"]) as u32),
        nonce: a32(&v["nonce"]),
        signature: Signature(hx(&v["signature"]).try_into().unwrap()),
    }
}

fn frame_from(name: &str, v: &Value) -> Frame {
    match name {
        "Challenge" => Frame::Challenge(challenge_from(v)),
        "AuthResponse" => Frame::AuthResponse(auth_from(v)),
        "AuthExtension" => Frame::AuthExtension(auth_from(v)),
        "AuthOk" => Frame::AuthOk {
            mailbox_epoch: hx(&v["mailbox_epoch"]).try_into().unwrap(),
        },
        "QueueEmpty" => Frame::QueueEmpty,
        "Resume" => Frame::Resume,
        "Send" => Frame::Send(sotto_proto::Send {
            message_id: u(&v["message_id"]),
            access: v["access"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    let key = AccessKey(a32(&a["access_key"]));
                    assert_eq!(key.verifier(), a32(&a["verifier"]), "access verifier");
                    Access {
                        account_id: AccountId(a32(&a["account_id"])),
                        key,
                    }
                })
                .collect(),
            body: hx(&v["body"]),
            recipients: v["recipients"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    let head = hx(&r["head"]);
                    // The envelope the recipient is delivered: head ‖ body.
                    assert_eq!(
                        hx(&r["envelope"]),
                        [&head[..], &hx(&v["body"])[..]].concat(),
                        "envelope"
                    );
                    Recipient {
                        account_id: AccountId(a32(&r["account_id"])),
                        device_id: DeviceId(u(&r["device_id"]) as u32),
                        head,
                    }
                })
                .collect(),
        }),
        "SendResult" => {
            let o = &v["outcome"];
            let outcome = match o["outcome"].as_str().unwrap() {
                "Stored" => SendOutcome::Stored {
                    seqs: o["seqs"].as_array().unwrap().iter().map(u).collect(),
                },
                "DeviceMismatch" => SendOutcome::DeviceMismatch {
                    device_lists: o["device_lists"].as_array().unwrap().iter().map(hx).collect(),
                },
                "Rejected" => SendOutcome::Rejected {
                    code: code_from(&o["code"]),
                },
                other => panic!("unknown outcome {other}"),
            };
            Frame::SendResult(SendResult {
                message_id: u(&v["message_id"]),
                outcome,
            })
        }
        "Deliver" => Frame::Deliver(Deliver {
            seq: u(&v["seq"]),
            received_at_s: u(&v["received_at_s"]),
            envelope: hx(&v["envelope"]),
        }),
        "Ack" => Frame::Ack { seq: u(&v["seq"]) },
        "Ephemeral" => Frame::Ephemeral {
            to: AccountId(a32(&v["to"])),
            payload: hx(&v["payload"]),
        },
        "EphemeralDeliver" => Frame::EphemeralDeliver {
            payload: hx(&v["payload"]),
        },
        "Error" => Frame::Error { code: code_from(v) },
        other => panic!("unknown frame {other}"),
    }
}

// ---------------------------------------------------------------------------------------
// The generator.

struct Parties {
    rng: ChaCha20Rng,
    account: AccountId,
    device: Device,
    other_account: AccountId,
    bundle_with_opk: PreKeyBundle,
    bundle_without_opk: PreKeyBundle,
    upload: PreKeyUpload,
}

fn parties() -> Parties {
    let mut rng = ChaCha20Rng::seed_from_u64(1300);
    let ak = AccountKey::generate(&mut rng);
    let device = Device::generate(ak.account_id(), DeviceId(1), &mut rng);
    let other = AccountKey::generate(&mut rng);
    let spk = device.generate_signed_prekey(1, &mut rng);
    let opks = device.generate_one_time_prekeys(100, 2, &mut rng);
    let kem = device.generate_kem_prekey(7, false, &mut rng);
    let lr = device.generate_kem_prekey(8, true, &mut rng);
    let bundle_with_opk = PreKeyBundle {
        identity: device.identity(),
        signed_prekey: spk.public().clone(),
        one_time_prekey: Some(opks[0].public().clone()),
        kem_prekey: kem.public().clone(),
    };
    let bundle_without_opk = PreKeyBundle {
        one_time_prekey: None,
        kem_prekey: lr.public().clone(),
        ..bundle_with_opk.clone()
    };
    let upload = PreKeyUpload {
        signed_prekey: Some(spk.public().clone()),
        one_time_prekeys: opks.iter().map(|k| k.public().clone()).collect(),
        kem_prekeys: vec![kem.public().clone()],
        last_resort_kem_prekey: Some(lr.public().clone()),
    };
    Parties {
        rng,
        account: ak.account_id(),
        device,
        other_account: other.account_id(),
        bundle_with_opk,
        bundle_without_opk,
        upload,
    }
}

fn bytes(rng: &mut ChaCha20Rng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    v
}

fn generate() -> Value {
    let mut p = parties();
    let rng = &mut p.rng;
    let challenge = Challenge {
        nonce: bytes(rng, 32).try_into().unwrap(),
        relay_id: relay_id(RELAY_URL),
        timestamp_ms: TIMESTAMP_MS,
    };
    // The header answers the challenge for one HTTP request (§13.2 step 4).
    let (method, path) = ("PUT", "/v1/push");
    let request_body = PushRegistration {
        provider: PushProvider::Fcm,
        token: b"token".to_vec(),
    }
    .encode();
    let binding = http_auth_binding(&challenge.nonce, method, path, &request_body);
    let signed = challenge.signed_http_message(&p.account, DeviceId(1), method, path, &request_body);
    let auth = AuthResponse {
        account_id: p.account,
        device_id: DeviceId(1),
        nonce: challenge.nonce,
        signature: p
            .device
            .sign_relay_auth(&challenge.relay_id, &binding, challenge.timestamp_ms),
    };
    let envelope_a = bytes(rng, 40);
    let envelope_b = bytes(rng, 3);
    // From a stream of their own, so the other vectors keep their bytes.
    let mut shared_rng = ChaCha20Rng::seed_from_u64(1301);
    let shared_body = bytes(&mut shared_rng, 48);
    let head_a = bytes(&mut shared_rng, 12);
    let frames: Vec<(&str, Frame)> = vec![
        ("Challenge", Frame::Challenge(challenge.clone())),
        ("AuthResponse", Frame::AuthResponse(auth.clone())),
        ("AuthExtension", Frame::AuthExtension(auth.clone())),
        (
            "AuthOk",
            Frame::AuthOk {
                mailbox_epoch: core::array::from_fn(|i| 0xe0 + i as u8),
            },
        ),
        (
            "Send",
            // Per-device envelopes that share nothing: an empty body, each whole
            // envelope in its head.
            Frame::Send(sotto_proto::Send {
                message_id: 0x0102_0304_0506_0708,
                access: vec![Access {
                    account_id: p.other_account,
                    key: AccessKey(core::array::from_fn(|i| 0xa0 + i as u8)),
                }],
                body: vec![],
                recipients: vec![
                    Recipient {
                        account_id: p.other_account,
                        device_id: DeviceId(1),
                        head: envelope_a.clone(),
                    },
                    Recipient {
                        account_id: p.other_account,
                        device_id: DeviceId(2),
                        head: envelope_b.clone(),
                    },
                ],
            }),
        ),
        (
            "Send",
            // A shared body: recipient 1's envelope is head_a ‖ body, recipient 2's
            // (on another account, with an empty head) the body alone.
            Frame::Send(sotto_proto::Send {
                message_id: 11,
                access: vec![],
                body: shared_body.clone(),
                recipients: vec![
                    Recipient {
                        account_id: p.other_account,
                        device_id: DeviceId(1),
                        head: head_a.clone(),
                    },
                    Recipient {
                        account_id: p.account,
                        device_id: DeviceId(2),
                        head: vec![],
                    },
                ],
            }),
        ),
        (
            "Send",
            Frame::Send(sotto_proto::Send {
                message_id: 0,
                access: vec![],
                body: vec![],
                recipients: vec![],
            }),
        ),
        (
            "SendResult",
            Frame::SendResult(SendResult {
                message_id: 0x0102_0304_0506_0708,
                outcome: SendOutcome::Stored { seqs: vec![1, 70_000] },
            }),
        ),
        (
            "SendResult",
            Frame::SendResult(SendResult {
                message_id: 9,
                outcome: SendOutcome::DeviceMismatch {
                    device_lists: vec![bytes(rng, 24), bytes(rng, 5)],
                },
            }),
        ),
        (
            "SendResult",
            Frame::SendResult(SendResult {
                message_id: 10,
                outcome: SendOutcome::Rejected {
                    code: ErrorCode::MAILBOX_FULL,
                },
            }),
        ),
        (
            "Deliver",
            Frame::Deliver(Deliver {
                seq: 42,
                received_at_s: 1_750_000_020,
                envelope: envelope_a.clone(),
            }),
        ),
        ("QueueEmpty", Frame::QueueEmpty),
        ("Ack", Frame::Ack { seq: 42 }),
        ("Resume", Frame::Resume),
        (
            "Ephemeral",
            Frame::Ephemeral {
                to: p.other_account,
                payload: b"typing".to_vec(),
            },
        ),
        (
            "EphemeralDeliver",
            Frame::EphemeralDeliver {
                payload: b"typing".to_vec(),
            },
        ),
        (
            "Error",
            Frame::Error {
                code: ErrorCode::RATE_LIMITED,
            },
        ),
        ("Error", Frame::Error { code: ErrorCode(999) }),
    ];
    let frames: Vec<Value> = frames
        .iter()
        .map(|(name, f)| {
            let b = f.encode();
            assert_eq!(&Frame::decode(&b).unwrap(), f);
            json!({"name": name, "type": f.type_byte(), "fields": frame_json(f), "bytes": h(&b)})
        })
        .collect();

    let body = |name: &str, fields: Value, b: Vec<u8>| json!({"name": name, "fields": fields, "bytes": h(&b)});
    let list = bytes(rng, 30);
    let mut bodies = vec![
        body("Challenge", challenge_json(&challenge), challenge.encode()),
        body("AuthResponse", auth_json(&auth), auth.encode()),
        body(
            "DeviceListBody",
            json!({"signed_list": h(&list)}),
            DeviceListBody { signed_list: list }.encode(),
        ),
    ];
    for upload in [p.upload.clone(), PreKeyUpload::default()] {
        let fields = json!({
            "signed_prekey": upload.signed_prekey.as_ref().map(|k| record_hex(|o| k.encode_into(o))),
            "one_time_prekeys": upload.one_time_prekeys.iter().map(|k| record_hex(|o| k.encode_into(o))).collect::<Vec<_>>(),
            "kem_prekeys": upload.kem_prekeys.iter().map(|k| record_hex(|o| k.encode_into(o))).collect::<Vec<_>>(),
            "last_resort_kem_prekey": upload.last_resort_kem_prekey.as_ref().map(|k| record_hex(|o| k.encode_into(o))),
        });
        bodies.push(body("PreKeyUpload", fields, upload.encode()));
    }
    let counts = PreKeyCounts {
        one_time: 99,
        kem_one_time: 0,
        has_signed_prekey: true,
        has_last_resort: true,
    };
    bodies.push(body(
        "PreKeyCounts",
        json!({"one_time": 99, "kem_one_time": 0, "has_signed_prekey": true, "has_last_resort": true}),
        counts.encode(),
    ));
    let bundles = Bundles {
        bundles: vec![p.bundle_with_opk.clone(), p.bundle_without_opk.clone()],
    };
    bodies.push(body(
        "Bundles",
        json!({"bundles": bundles.bundles.iter().map(|b| h(&b.encode())).collect::<Vec<_>>()}),
        bundles.encode(),
    ));
    for (provider, token) in [
        (PushProvider::Apns, bytes(rng, 32)),
        (PushProvider::UnifiedPush, b"https://push.example.org/up/abc".to_vec()),
    ] {
        let reg = PushRegistration {
            provider,
            token: token.clone(),
        };
        bodies.push(body(
            "PushRegistration",
            json!({"provider": provider.to_byte(), "token": h(&token)}),
            reg.encode(),
        ));
    }
    for accept_requests in [true, false] {
        let policy = AccessPolicy {
            verifier: AccessKey([0x5a; 32]).verifier(),
            accept_requests,
        };
        bodies.push(body(
            "AccessPolicy",
            json!({"verifier": h(&policy.verifier), "accept_requests": accept_requests}),
            policy.encode(),
        ));
    }
    // From a stream of their own, so the other vectors keep their bytes.
    let mut profile_rng = ChaCha20Rng::seed_from_u64(1302);
    let profile = ProfileUpload {
        version: bytes(&mut profile_rng, 32).try_into().unwrap(),
        ciphertext: bytes(&mut profile_rng, 57),
    };
    bodies.push(body(
        "ProfileUpload",
        json!({"version": h(&profile.version), "ciphertext": h(&profile.ciphertext)}),
        profile.encode(),
    ));
    bodies.push(body(
        "ProfileBody",
        json!({"ciphertext": h(&profile.ciphertext)}),
        ProfileBody {
            ciphertext: profile.ciphertext.clone(),
        }
        .encode(),
    ));
    // Blob store bodies (docs/protocol.md §16.4), from a stream of their own.
    let mut blob_rng = ChaCha20Rng::seed_from_u64(1604);
    let issuer = BlobIssuer {
        epoch: 2894,
        public: bytes(&mut blob_rng, 32).try_into().unwrap(),
        max_blob_len: 512 << 20,
        tokens_per_day: 100,
    };
    bodies.push(body(
        "BlobIssuer",
        json!({"epoch": issuer.epoch, "public": h(&issuer.public), "max_blob_len": issuer.max_blob_len, "tokens_per_day": issuer.tokens_per_day}),
        issuer.encode(),
    ));
    let points: Vec<[u8; 32]> = (0..2).map(|_| bytes(&mut blob_rng, 32).try_into().unwrap()).collect();
    let issue = TokenIssue {
        epoch: issuer.epoch,
        blinded: points.clone(),
    };
    bodies.push(body(
        "TokenIssue",
        json!({"epoch": issue.epoch, "blinded": points.iter().map(|p| h(p)).collect::<Vec<_>>()}),
        issue.encode(),
    ));
    let issued = TokenIssued {
        epoch: issuer.epoch,
        evaluated: points.iter().rev().copied().collect(),
        proof: bytes(&mut blob_rng, 64).try_into().unwrap(),
    };
    bodies.push(body(
        "TokenIssued",
        json!({"epoch": issued.epoch, "evaluated": issued.evaluated.iter().map(|p| h(p)).collect::<Vec<_>>(), "proof": h(&issued.proof)}),
        issued.encode(),
    ));
    let create = BlobCreate {
        epoch: issuer.epoch,
        token: bytes(&mut blob_rng, 64).try_into().unwrap(),
        length: 1_048_577,
    };
    bodies.push(body(
        "BlobCreate",
        json!({"epoch": create.epoch, "token": h(&create.token), "length": create.length}),
        create.encode(),
    ));
    let created = BlobCreated {
        id: bytes(&mut blob_rng, 32).try_into().unwrap(),
    };
    bodies.push(body("BlobCreated", json!({"id": h(&created.id)}), created.encode()));
    let status = BlobStatus {
        length: create.length,
        received: 4 << 20 >> 2,
    };
    bodies.push(body(
        "BlobStatus",
        json!({"length": status.length, "received": status.received}),
        status.encode(),
    ));
    bodies.push(body(
        "ErrorBody",
        code_json(ErrorCode::STALE_DEVICE_LIST),
        ErrorBody {
            code: ErrorCode::STALE_DEVICE_LIST,
        }
        .encode(),
    ));

    let authorization = json!({
        "fields": auth_json(&auth),
        "method": method,
        "path": path,
        "body": h(&request_body),
        "binding": h(&binding),
        "signed_message": h(&signed),
        "header": authorization_header(&auth),
    });

    let frame_fail = |b: Vec<u8>, what: &str| json!({"input": "frame", "what": what, "bytes": h(&b), "expect": decode_error(&Frame::decode(&b).unwrap_err())});
    let mut too_many = vec![1, 0x10, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    too_many.extend_from_slice(&4097u16.to_be_bytes());
    let mut unordered = vec![1, 0x10, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2];
    for account in [[2u8; 32], [1; 32]] {
        unordered.extend_from_slice(&account);
        unordered.extend_from_slice(&[0xaa; 32]);
    }
    unordered.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut big_body = vec![1, 0x10, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0];
    big_body.extend_from_slice(&((1u32 << 20) + 1).to_be_bytes());
    let mut big_head = vec![1, 0x10, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
    big_head.extend_from_slice(&[0x11; 36]);
    big_head.extend_from_slice(&((1u32 << 20) + 1).to_be_bytes());
    let mut big_envelope = vec![1, 0x12];
    big_envelope.extend_from_slice(&[0; 16]);
    big_envelope.extend_from_slice(&((1u32 << 20) + 1).to_be_bytes());
    let mut failures = vec![
        frame_fail(vec![2, 0x03], "version byte 0x02"),
        frame_fail(vec![1, 0xee], "unknown frame type"),
        frame_fail(vec![1, 0x14, 0, 0, 0], "Ack cut short"),
        frame_fail([&[1u8, 0x03][..], &[0; 17]].concat(), "AuthOk with a trailing byte"),
        frame_fail(vec![1, 0x03, 0], "AuthOk with a truncated epoch"),
        frame_fail(vec![1, 0x11, 0, 0, 0, 0, 0, 0, 0, 1, 3], "unknown send outcome"),
        frame_fail(too_many, "Send with 4097 recipients"),
        frame_fail(unordered, "Send whose access keys are not in ascending account order"),
        frame_fail(big_body, "Send with a shared body length of 2^20 + 1"),
        frame_fail(big_head, "Send with a head length of 2^20 + 1"),
        frame_fail(big_envelope, "Deliver with an envelope length of 2^20 + 1"),
        frame_fail(vec![], "empty input"),
    ];
    let body_fail = |name: &str, b: Vec<u8>, what: &str, e: DecodeError| json!({"input": name, "what": what, "bytes": h(&b), "expect": decode_error(&e)});
    let bad_flag = vec![1, 0, 0, 0, 1, 0, 0, 0, 0, 2, 0];
    failures.push(body_fail(
        "PreKeyCounts",
        bad_flag.clone(),
        "flag byte 2",
        PreKeyCounts::decode(&bad_flag).unwrap_err(),
    ));
    let mut bad_policy = AccessPolicy {
        verifier: [0x5a; 32],
        accept_requests: true,
    }
    .encode();
    bad_policy[33] = 2;
    failures.push(body_fail(
        "AccessPolicy",
        bad_policy.clone(),
        "accept_requests byte 2",
        AccessPolicy::decode(&bad_policy).unwrap_err(),
    ));
    let bad_provider = vec![1, 9, 0, 0, 0, 0];
    failures.push(body_fail(
        "PushRegistration",
        bad_provider.clone(),
        "provider 9",
        PushRegistration::decode(&bad_provider).unwrap_err(),
    ));
    let mut wrong_kind = PreKeyUpload {
        signed_prekey: p.upload.signed_prekey.clone(),
        ..PreKeyUpload::default()
    }
    .encode();
    wrong_kind[2] = 2; // the signed prekey record's kind byte: one-time
    failures.push(body_fail(
        "PreKeyUpload",
        wrong_kind.clone(),
        "signed-prekey slot holding a kind-0x02 record",
        PreKeyUpload::decode(&wrong_kind).unwrap_err(),
    ));
    let empty_profile = ProfileUpload {
        version: profile.version,
        ciphertext: vec![],
    }
    .encode();
    failures.push(body_fail(
        "ProfileUpload",
        empty_profile.clone(),
        "empty ciphertext",
        ProfileUpload::decode(&empty_profile).unwrap_err(),
    ));
    let mut big_profile = vec![1];
    big_profile.extend_from_slice(&((limits::MAX_PROFILE_BYTES + 1) as u32).to_be_bytes());
    failures.push(body_fail(
        "ProfileBody",
        big_profile.clone(),
        "ciphertext length of 32 KiB + 1",
        ProfileBody::decode(&big_profile).unwrap_err(),
    ));
    let no_points = TokenIssue {
        epoch: 1,
        blinded: vec![],
    }
    .encode();
    failures.push(body_fail(
        "TokenIssue",
        no_points.clone(),
        "no blinded points",
        TokenIssue::decode(&no_points).unwrap_err(),
    ));
    let mut many_points = vec![1, 0, 0, 0, 1];
    many_points.extend_from_slice(&((limits::MAX_TOKEN_BATCH + 1) as u16).to_be_bytes());
    many_points.extend_from_slice(&[0x11; 33 * 32]);
    failures.push(body_fail(
        "TokenIssue",
        many_points.clone(),
        "33 blinded points",
        TokenIssue::decode(&many_points).unwrap_err(),
    ));
    let empty_blob = BlobCreate {
        length: 0,
        ..create.clone()
    }
    .encode();
    failures.push(body_fail(
        "BlobCreate",
        empty_blob.clone(),
        "length 0",
        BlobCreate::decode(&empty_blob).unwrap_err(),
    ));
    let ahead = BlobStatus { length: 5, received: 6 }.encode();
    failures.push(body_fail(
        "BlobStatus",
        ahead.clone(),
        "received above length",
        BlobStatus::decode(&ahead).unwrap_err(),
    ));
    let short = ErrorBody { code: ErrorCode::BUSY }.encode()[..2].to_vec();
    failures.push(body_fail(
        "ErrorBody",
        short.clone(),
        "cut short",
        ErrorBody::decode(&short).unwrap_err(),
    ));
    let header = authorization_header(&auth);
    for (value, what) in [
        (header.replacen(AUTH_SCHEME, "Bearer", 1), "another scheme"),
        (header[..header.len() - 1].to_string(), "odd number of hex digits"),
        (header.replacen("Sotto-v1 01", "Sotto-v1 02", 1), "version byte 0x02"),
    ] {
        let e = parse_authorization(&value).unwrap_err();
        failures.push(json!({"input": "authorization", "what": what, "header": value, "expect": decode_error(&e)}));
    }

    json!({
        "description": "Relay protocol vectors (docs/protocol.md §13), encoded by sotto-proto. `frames`: WebSocket frames with their type byte and decoded fields; `bodies`: HTTP bodies with their decoded fields; `authorization`: an AuthResponse answering the challenge frame for the HTTP request `method path` with `body`, the request binding that replaces the nonce in the signed message (docs/protocol.md §13.2), the message its signature covers and the Authorization header value; `failures`: inputs that MUST fail to decode with the stable error given (docs/protocol.md §12.2). In a Send, `body` is the shared body, sent once, and each recipient's `head` its own bytes; the recipient's `envelope` (not on the wire) is `head ‖ body`, what its Deliver carries. Byte strings are hex; envelopes, payloads and the device lists of DeviceMismatch and DeviceListBody are opaque here. Field meanings: docs/protocol.md §12.",
        "relay_url": RELAY_URL,
        "frames": frames,
        "bodies": bodies,
        "authorization": authorization,
        "failures": failures,
    })
}

#[test]
fn relay_vectors_are_unchanged() {
    let text = serde_json::to_string_pretty(&generate()).unwrap() + "\n";
    if std::env::var_os("SOTTO_WRITE_VECTORS").is_some() {
        std::fs::create_dir_all(std::path::Path::new(PATH).parent().unwrap()).unwrap();
        std::fs::write(PATH, &text).unwrap();
    }
    let committed = std::fs::read_to_string(PATH).unwrap_or_else(|e| panic!("{PATH}: {e}"));
    assert!(
        committed == text,
        "relay.json differs from what the code produces now; regenerate with SOTTO_WRITE_VECTORS=1 cargo test -p sotto-proto --test vectors"
    );
}

fn record_list(v: &Value) -> Vec<Vec<u8>> {
    v.as_array().unwrap().iter().map(hx).collect()
}

fn upload_from(v: &Value) -> PreKeyUpload {
    let x = |b: Vec<u8>| sotto_crypto::X25519PreKey::decode(&b).unwrap();
    let k = |b: Vec<u8>| sotto_crypto::KemPreKey::decode(&b).unwrap();
    PreKeyUpload {
        signed_prekey: v["signed_prekey"].as_str().map(|_| x(hx(&v["signed_prekey"]))),
        one_time_prekeys: record_list(&v["one_time_prekeys"]).into_iter().map(x).collect(),
        kem_prekeys: record_list(&v["kem_prekeys"]).into_iter().map(k).collect(),
        last_resort_kem_prekey: v["last_resort_kem_prekey"]
            .as_str()
            .map(|_| k(hx(&v["last_resort_kem_prekey"]))),
    }
}

fn check_body<T: Body + PartialEq + std::fmt::Debug>(value: T, bytes: &[u8]) {
    assert_eq!(value.encode(), bytes);
    assert_eq!(T::decode(bytes).unwrap(), value);
}

/// Every vector rebuilt from its JSON fields encodes to its bytes and decodes back.
#[test]
fn relay_vectors_replay() {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for f in v["frames"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        let frame = frame_from(name, &f["fields"]);
        let b = hx(&f["bytes"]);
        assert_eq!(u64::from(frame.type_byte()), u(&f["type"]), "{name}");
        assert_eq!(frame.encode(), b, "{name}");
        assert_eq!(Frame::decode(&b).unwrap(), frame, "{name}");
        names.insert(name);
    }
    assert_eq!(names.len(), 13, "every frame type has a vector");
    for b in v["bodies"].as_array().unwrap() {
        let (f, bytes) = (&b["fields"], hx(&b["bytes"]));
        match b["name"].as_str().unwrap() {
            "Challenge" => check_body(challenge_from(f), &bytes),
            "AuthResponse" => check_body(auth_from(f), &bytes),
            "DeviceListBody" => check_body(
                DeviceListBody {
                    signed_list: hx(&f["signed_list"]),
                },
                &bytes,
            ),
            "PreKeyUpload" => check_body(upload_from(f), &bytes),
            "PreKeyCounts" => check_body(
                PreKeyCounts {
                    one_time: u(&f["one_time"]) as u32,
                    kem_one_time: u(&f["kem_one_time"]) as u32,
                    has_signed_prekey: f["has_signed_prekey"].as_bool().unwrap(),
                    has_last_resort: f["has_last_resort"].as_bool().unwrap(),
                },
                &bytes,
            ),
            "Bundles" => check_body(
                Bundles {
                    bundles: record_list(&f["bundles"])
                        .iter()
                        .map(|b| PreKeyBundle::decode(b).unwrap())
                        .collect(),
                },
                &bytes,
            ),
            "PushRegistration" => check_body(
                PushRegistration {
                    provider: PushProvider::from_byte(u(&f["provider"]) as u8).unwrap(),
                    token: hx(&f["token"]),
                },
                &bytes,
            ),
            "ErrorBody" => check_body(ErrorBody { code: code_from(f) }, &bytes),
            "AccessPolicy" => check_body(
                AccessPolicy {
                    verifier: a32(&f["verifier"]),
                    accept_requests: f["accept_requests"].as_bool().unwrap(),
                },
                &bytes,
            ),
            "ProfileUpload" => check_body(
                ProfileUpload {
                    version: a32(&f["version"]),
                    ciphertext: hx(&f["ciphertext"]),
                },
                &bytes,
            ),
            "ProfileBody" => check_body(
                ProfileBody {
                    ciphertext: hx(&f["ciphertext"]),
                },
                &bytes,
            ),
            "BlobIssuer" => check_body(
                BlobIssuer {
                    epoch: u(&f["epoch"]) as u32,
                    public: a32(&f["public"]),
                    max_blob_len: u(&f["max_blob_len"]),
                    tokens_per_day: u(&f["tokens_per_day"]) as u32,
                },
                &bytes,
            ),
            "TokenIssue" => check_body(
                TokenIssue {
                    epoch: u(&f["epoch"]) as u32,
                    blinded: f["blinded"].as_array().unwrap().iter().map(a32).collect(),
                },
                &bytes,
            ),
            "TokenIssued" => check_body(
                TokenIssued {
                    epoch: u(&f["epoch"]) as u32,
                    evaluated: f["evaluated"].as_array().unwrap().iter().map(a32).collect(),
                    proof: hx(&f["proof"]).try_into().unwrap(),
                },
                &bytes,
            ),
            "BlobCreate" => check_body(
                BlobCreate {
                    epoch: u(&f["epoch"]) as u32,
                    token: hx(&f["token"]).try_into().unwrap(),
                    length: u(&f["length"]),
                },
                &bytes,
            ),
            "BlobCreated" => check_body(BlobCreated { id: a32(&f["id"]) }, &bytes),
            "BlobStatus" => check_body(
                BlobStatus {
                    length: u(&f["length"]),
                    received: u(&f["received"]),
                },
                &bytes,
            ),
            other => panic!("unknown body {other}"),
        }
    }
    let a = &v["authorization"];
    let auth = auth_from(&a["fields"]);
    assert_eq!(authorization_header(&auth), a["header"].as_str().unwrap());
    assert_eq!(parse_authorization(a["header"].as_str().unwrap()).unwrap(), auth);
    let challenge = v["frames"][0]["fields"].clone();
    let (method, path, body) = (
        a["method"].as_str().unwrap(),
        a["path"].as_str().unwrap(),
        hx(&a["body"]),
    );
    let c = challenge_from(&challenge);
    assert_eq!(
        h(&http_auth_binding(&c.nonce, method, path, &body)),
        a["binding"].as_str().unwrap()
    );
    assert_eq!(
        h(&c.signed_http_message(&auth.account_id, auth.device_id, method, path, &body)),
        a["signed_message"].as_str().unwrap()
    );
    assert_eq!(a32(&challenge["relay_id"]), relay_id(v["relay_url"].as_str().unwrap()));
    for f in v["failures"].as_array().unwrap() {
        let e = match f["input"].as_str().unwrap() {
            "frame" => Frame::decode(&hx(&f["bytes"])).unwrap_err(),
            "PreKeyCounts" => PreKeyCounts::decode(&hx(&f["bytes"])).unwrap_err(),
            "PushRegistration" => PushRegistration::decode(&hx(&f["bytes"])).unwrap_err(),
            "PreKeyUpload" => PreKeyUpload::decode(&hx(&f["bytes"])).unwrap_err(),
            "ErrorBody" => ErrorBody::decode(&hx(&f["bytes"])).unwrap_err(),
            "AccessPolicy" => AccessPolicy::decode(&hx(&f["bytes"])).unwrap_err(),
            "ProfileUpload" => ProfileUpload::decode(&hx(&f["bytes"])).unwrap_err(),
            "ProfileBody" => ProfileBody::decode(&hx(&f["bytes"])).unwrap_err(),
            "TokenIssue" => TokenIssue::decode(&hx(&f["bytes"])).unwrap_err(),
            "BlobCreate" => BlobCreate::decode(&hx(&f["bytes"])).unwrap_err(),
            "BlobStatus" => BlobStatus::decode(&hx(&f["bytes"])).unwrap_err(),
            "authorization" => parse_authorization(f["header"].as_str().unwrap()).unwrap_err(),
            other => panic!("unknown input {other}"),
        };
        assert_eq!(decode_error(&e), f["expect"], "{}", f["what"]);
    }
}
