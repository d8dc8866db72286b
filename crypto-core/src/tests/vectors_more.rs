//! More known-answer vectors (docs/protocol.md §12): the last-resort PQXDH run, the
//! ratchet's limits, PQXDH and session errors, padding and pickles, with the stable error
//! names of §12.2 that every vector uses. Same mechanism as `vectors.rs`: the test
//! regenerates each file and fails on any difference (`SOTTO_WRITE_VECTORS=1` rewrites
//! them), and every file is also replayed from its own contents through the public API.

use std::collections::VecDeque;

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, XChaCha20Poly1305};
use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, RngCore, SeedableRng};
use serde_json::{Value, json};

use crate::codec::Reader;
use crate::kdf::{hkdf, info};
use crate::keys::{Ed25519Secret, KemSecret, X25519Secret};
use crate::ratchet::{Header, Key32, test_hooks};
use crate::vectors::{Pqxdh, Recorder, check, h, keys_json, make_keys, pqxdh_vectors};
use crate::*;

// ---------------------------------------------------------------------------------------
// Stable error names (docs/protocol.md §12.2).

/// A decode error as its stable name and fields.
pub(crate) fn decode_error(e: &DecodeError) -> Value {
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
    }
}

/// A decryption error as its stable name and fields.
pub(crate) fn decrypt_error(e: &DecryptError) -> Value {
    match e {
        DecryptError::Decode(d) => decode_error(d),
        DecryptError::Duplicate { index } => json!({"error": "Duplicate", "index": index}),
        DecryptError::TooBigMessageGap { gap, max } => json!({"error": "TooBigMessageGap", "gap": gap, "max": max}),
        DecryptError::InvalidMac => json!({"error": "InvalidMac"}),
        DecryptError::UnknownChain => json!({"error": "UnknownChain"}),
        DecryptError::NonContributory => json!({"error": "NonContributory"}),
        DecryptError::WrongSession => json!({"error": "WrongSession"}),
    }
}

/// An encryption error as its stable name and fields.
pub(crate) fn encrypt_error(e: &EncryptError) -> Value {
    match e {
        EncryptError::MessageTooLarge { len, max } => json!({"error": "MessageTooLarge", "len": len, "max": max}),
        EncryptError::ChainExhausted => json!({"error": "ChainExhausted"}),
        EncryptError::NonContributory => json!({"error": "NonContributory"}),
    }
}

/// A PQXDH error as its stable name and fields.
pub(crate) fn x3dh_error(e: &X3dhError) -> Value {
    match e {
        X3dhError::UnknownDevice => json!({"error": "UnknownDevice"}),
        X3dhError::WrongPreKeyKind { slot } => json!({"error": "WrongPreKeyKind", "slot": slot}),
        X3dhError::BadSignature { which } => json!({"error": "BadSignature", "which": which}),
        X3dhError::NonContributory => json!({"error": "NonContributory"}),
        X3dhError::PreKeyMismatch => json!({"error": "PreKeyMismatch"}),
        X3dhError::Decrypt(d) => decrypt_error(d),
    }
}

/// A pickle error as its stable name and fields.
pub(crate) fn pickle_error(e: &PickleError) -> Value {
    match e {
        PickleError::Decode(d) => decode_error(d),
        PickleError::Authentication => json!({"error": "Authentication"}),
        PickleError::WrongType { expected, found } => {
            json!({"error": "WrongType", "expected": expected, "found": found})
        }
        PickleError::UnsupportedFormat(format) => json!({"error": "UnsupportedFormat", "format": format}),
    }
}

// ---------------------------------------------------------------------------------------
// A two-party script: every send and delivery recorded in order.

pub(crate) const PARTY: [&str; 2] = ["alice", "bob"];

fn party(name: &Value) -> usize {
    PARTY.iter().position(|p| name == p).unwrap()
}

/// The session's fields in the layout of docs/protocol.md §9.2 (type 3).
pub(crate) fn state_hex(s: &Session) -> String {
    let mut v = Vec::new();
    s.encode_state(&mut v);
    h(&v)
}

pub(crate) struct Script {
    rng: Recorder,
    s: [Session; 2],
    messages: Vec<Value>,
    sent: Vec<(MessageType, Vec<u8>)>,
    steps: Vec<Value>,
}

impl Script {
    pub(crate) fn new(rng: Recorder, alice: Session, bob: Session) -> Self {
        Self {
            rng,
            s: [alice, bob],
            messages: Vec::new(),
            sent: Vec::new(),
            steps: Vec::new(),
        }
    }

    /// A message produced outside the script (the PQXDH first message).
    pub(crate) fn push_message(&mut self, v: Value) {
        let t = MessageType::from_byte(v["message_type"].as_u64().unwrap() as u8).unwrap();
        self.sent.push((t, hex::decode(v["bytes"].as_str().unwrap()).unwrap()));
        self.messages.push(v);
    }

    /// A step taken outside the script.
    pub(crate) fn note(&mut self, step: Value) {
        self.steps.push(step);
    }

    pub(crate) fn send(&mut self, p: usize, text: &str) -> usize {
        let m = self.s[p].encrypt(text.as_bytes(), &mut self.rng).unwrap();
        let draws = self.rng.take_hex();
        let mk = test_hooks::take();
        let header = {
            let inner = match m.message_type {
                MessageType::Ratchet => &m.bytes[..],
                MessageType::PreKey => PreKeyMessage::decode(&m.bytes).unwrap().message,
            };
            Header::parse(inner).unwrap().0
        };
        let idx = self.messages.len();
        self.messages.push(json!({
            "index": idx, "sender": PARTY[p], "plaintext": h(text.as_bytes()), "draws": draws,
            "message_key": h(&mk[0]),
            "header": { "ratchet_key": h(header.ratchet_key.as_bytes()), "pn": header.previous_chain_length, "n": header.index, "salt": h(&header.salt) },
            "message_type": m.message_type as u8, "bytes": h(&m.bytes),
        }));
        self.sent.push((m.message_type, m.bytes));
        self.steps
            .push(json!({"action": "send", "party": PARTY[p], "message": idx}));
        idx
    }

    /// An encrypt that fails.
    fn send_fails(&mut self, p: usize, text: &str) {
        let e = self.s[p].encrypt(text.as_bytes(), &mut self.rng).unwrap_err();
        let draws = self.rng.take_hex();
        self.steps.push(json!({
            "action": "send", "party": PARTY[p], "plaintext": h(text.as_bytes()), "draws": draws,
            "expect": encrypt_error(&e),
        }));
    }

    /// `count` messages that are never delivered. No DH step is due, so each draws only
    /// its salt, which influences nothing else; the draws are not recorded.
    fn send_unrecorded(&mut self, p: usize, count: u32) {
        assert!(self.s[p].pending_ratchet.is_none(), "a DH step would draw a scalar");
        let (mut first, mut last) = (None, 0);
        for _ in 0..count {
            let m = self.s[p].encrypt(b"unrecorded", &mut self.rng).unwrap();
            assert_eq!(m.message_type, MessageType::Ratchet);
            let n = Header::parse(&m.bytes).unwrap().0.index;
            first.get_or_insert(n);
            last = n;
        }
        self.rng.take();
        test_hooks::take();
        self.steps.push(json!({
            "action": "send_unrecorded", "party": PARTY[p], "count": count, "first_n": first, "last_n": last,
        }));
    }

    pub(crate) fn deliver(&mut self, p: usize, idx: usize) {
        let (t, bytes) = &self.sent[idx];
        let expect = match self.s[p].decrypt(*t, bytes) {
            Ok(pt) => json!({"plaintext": h(&pt)}),
            Err(e) => decrypt_error(&e),
        };
        self.steps.push(json!({
            "action": "deliver", "party": PARTY[p], "message": idx, "expect": expect,
            "skipped_keys_after": self.s[p].skipped_key_count(),
        }));
    }

    /// A copy of message `from` with `change` applied: a message no conforming sender makes.
    fn altered(&mut self, from: usize, what: &str, change: impl FnOnce(&mut Vec<u8>)) -> usize {
        let (t, mut bytes) = self.sent[from].clone();
        change(&mut bytes);
        let idx = self.messages.len();
        self.messages.push(json!({
            "index": idx, "altered_from": from, "alteration": what,
            "message_type": t as u8, "bytes": h(&bytes),
        }));
        self.sent.push((t, bytes));
        idx
    }

    pub(crate) fn finish(self) -> (Vec<Value>, Vec<Value>) {
        (self.messages, self.steps)
    }
}

/// A keys object with the decoded fields of its device list (`device_list_fields`).
pub(crate) fn party_json(k: &crate::vectors::Keys) -> Value {
    let mut v = keys_json(k);
    v["device_list_fields"] = json!({
        "version": k.list.version(),
        "created_at_ms": k.list.created_at_ms(),
        "device_ids": k.list.devices().iter().map(|d| d.device_id.0).collect::<Vec<_>>(),
    });
    v
}

fn bundle_of(k: &crate::vectors::Keys, with_opk: bool) -> PreKeyBundle {
    PreKeyBundle {
        identity: k.device.identity(),
        signed_prekey: k.spk.public().clone(),
        one_time_prekey: with_opk.then(|| k.opk.public().clone()),
        kem_prekey: k.kem.public().clone(),
    }
}

/// Alice and Bob after PQXDH (with OPK, Alice's message 0), Bob's reply and Alice's answer
/// on her second chain: Alice has no DH step due; Bob holds two receiving chains and has
/// a DH step due.
fn established(seed: u64) -> (Recorder, Session, Session) {
    let mut rng = Recorder::new(seed);
    let alice = make_keys(&mut rng);
    let bob = make_keys(&mut rng);
    let mut a = initiate(&alice.device, &bob.list, &bundle_of(&bob, true), &mut rng).unwrap();
    let m0 = a.encrypt(b"0", &mut rng).unwrap();
    let pm = PreKeyMessage::decode(&m0.bytes).unwrap();
    let mut b = respond(&bob.device, &alice.list, &pm, &bob.spk, Some(&bob.opk), &bob.kem)
        .unwrap()
        .session;
    let m1 = b.encrypt(b"1", &mut rng).unwrap();
    a.decrypt(m1.message_type, &m1.bytes).unwrap();
    let m2 = a.encrypt(b"2", &mut rng).unwrap();
    b.decrypt(m2.message_type, &m2.bytes).unwrap();
    rng.take();
    test_hooks::take();
    (rng, a, b)
}

fn scenario(
    seed: u64,
    name: &str,
    description: &str,
    alter: impl FnOnce(&mut Session),
    run: impl FnOnce(&mut Script),
) -> Value {
    let (rng, mut a, b) = established(seed);
    alter(&mut a);
    let mut sc = Script::new(rng, a, b);
    let start = json!({"alice": state_hex(&sc.s[0]), "bob": state_hex(&sc.s[1])});
    run(&mut sc);
    let (messages, steps) = sc.finish();
    json!({"name": name, "description": description, "seed": seed, "start": start, "messages": messages, "steps": steps})
}

/// Offset of the sending chain's next index `Ns` in the §9.2 session fields.
const NS_OFFSET: usize = 100 + 100 + 1 + 32 + 32 + 4 + 1 + 32 + 32;
const SMALL_ORDER_ONE: [u8; 32] = {
    let mut k = [0u8; 32];
    k[0] = 1;
    k
};

fn ratchet_limits_vectors() -> Value {
    let a = 0;
    let b = 1;
    let known_chain = scenario(
        30,
        "known_chain_gap_and_skipped_key_eviction",
        "Bob's receiving chain is at next index 1. n = 2002 (gap 2001) is refused; n = 2001 (gap exactly 2000) is accepted and stores the keys of 1..2000; n = 2003 stores one more key, the 2001st, which evicts the oldest (n = 1): message 1 is then Duplicate while message 2 still decrypts.",
        |_| {},
        |sc| {
            let m1 = sc.send(a, "n=1");
            let m2 = sc.send(a, "n=2");
            sc.send_unrecorded(a, 1998);
            let m2001 = sc.send(a, "n=2001");
            let m2002 = sc.send(a, "n=2002");
            let m2003 = sc.send(a, "n=2003");
            sc.deliver(b, m2002);
            sc.deliver(b, m2001);
            sc.deliver(b, m2003);
            sc.deliver(b, m1);
            sc.deliver(b, m2);
            sc.deliver(b, m2002);
            sc.deliver(b, m2);
        },
    );
    let new_chain = scenario(
        31,
        "new_chain_combined_gap",
        "Alice sends 1000 undelivered messages on her chain (Bob is at its next index 1), receives Bob's reply and starts a new chain (pn = 1001). On the new chain n = 1001 is refused (prev_gap 1000 + n 1001 = 2001 > 2000) and n = 1000 is accepted (1000 + 1000 = 2000), storing 2000 skipped keys.",
        |_| {},
        |sc| {
            let r = sc.send(b, "reply");
            sc.send_unrecorded(a, 1000);
            sc.deliver(a, r);
            let n0 = sc.send(a, "new chain n=0");
            sc.send_unrecorded(a, 999);
            let n1000 = sc.send(a, "new chain n=1000");
            let n1001 = sc.send(a, "new chain n=1001");
            sc.deliver(b, n1001);
            sc.deliver(b, n1000);
            sc.deliver(b, n0);
        },
    );
    let eviction = scenario(
        32,
        "receiving_chain_eviction",
        "Bob starts with two receiving chains (Alice's chains 0 and 1). Five ping-pong rounds give him Alice's chains 2 to 6; the sixth held chain evicts the oldest each time. A replay of message 0 (Alice's chain 1) is Duplicate while that chain is held, UnknownChain once it is evicted and Bob has a DH step due, and InvalidMac after Bob has sent again; the late message 1 on the evicted chain still decrypts from the key stored when pn announced it. The last message, an altered copy of message 0 whose ratchet key is a small-order point, is NonContributory.",
        |_| {},
        |sc| {
            let x = sc.send(a, "x");
            sc.deliver(b, x);
            let late = sc.send(a, "late");
            for r in 1..=5 {
                let m = sc.send(b, &format!("b{r}"));
                sc.deliver(a, m);
                let m = sc.send(a, &format!("a{r}"));
                sc.deliver(b, m);
                if r == 4 {
                    sc.deliver(b, x);
                }
            }
            sc.deliver(b, x);
            sc.deliver(b, late);
            let m = sc.send(b, "b6");
            sc.deliver(a, m);
            sc.deliver(b, x);
            let bad = sc.altered(
                x,
                "ratchet_key (bytes 1..33) replaced by the small-order point u = 1",
                |m| m[1..33].copy_from_slice(&SMALL_ORDER_ONE),
            );
            sc.deliver(b, bad);
        },
    );
    let exhausted = scenario(
        33,
        "chain_exhausted",
        "Alice's start state is the established one with Ns set to 2^32 − 2 (bytes 334..338 of the state). Her next message has n = 2^32 − 2; the encrypt after it fails with ChainExhausted and draws nothing. Bob refuses the message (gap 2^32 − 3); the same message with n = 2^32 − 1 is refused when the header is parsed.",
        |s| {
            let mut f = Vec::new();
            s.encode_state(&mut f);
            assert_eq!(f[NS_OFFSET - 32 - 32 - 1], 1, "sending flag");
            f[NS_OFFSET..NS_OFFSET + 4].copy_from_slice(&(u32::MAX - 1).to_be_bytes());
            *s = Session::decode_state(&mut Reader::new(&f)).unwrap();
        },
        |sc| {
            let m = sc.send(a, "last");
            sc.send_fails(a, "one too many");
            sc.deliver(b, m);
            let bad = sc.altered(m, "n (bytes 37..41) set to 2^32 − 1", |m| {
                m[37..41].copy_from_slice(&[0xff; 4])
            });
            sc.deliver(b, bad);
        },
    );
    json!({
        "description": "Double Ratchet limits (docs/protocol.md §6.10–6.16). Each scenario starts from two session states in the §9.2 type-3 field layout (`start`), then runs `steps` in order over `messages`. `send_unrecorded` steps are messages never delivered whose draws (one salt each) are not recorded. Field meanings: docs/protocol.md §12.",
        "scenarios": [known_chain, new_chain, eviction, exhausted],
    })
}

// ---------------------------------------------------------------------------------------
// PQXDH and session errors.

/// The order-8 point of X25519 (libsodium's blocklist).
const SMALL_ORDER_EIGHT: &str = "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800";

fn pqxdh_error_vectors() -> Value {
    let mut rng = Recorder::new(40);
    let alice = make_keys(&mut rng);
    let bob = make_keys(&mut rng);
    rng.take();
    let bundle = bundle_of(&bob, true);
    let mut messages = Vec::new();
    let mut sessions = Vec::new();
    for i in 0..2u32 {
        let mut s = initiate(&alice.device, &bob.list, &bundle, &mut rng).unwrap();
        let initiate_draws = rng.take_hex();
        let text = format!("first message of session {i}");
        let m = s.encrypt(text.as_bytes(), &mut rng).unwrap();
        let encrypt_draws = rng.take_hex();
        test_hooks::take();
        messages.push(json!({
            "index": i, "initiate_draws": initiate_draws, "encrypt_draws": encrypt_draws,
            "plaintext": h(text.as_bytes()), "message_type": m.message_type as u8, "bytes": h(&m.bytes),
        }));
        sessions.push((s, m.bytes));
    }
    let m0 = sessions[0].1.clone();
    let pm0 = PreKeyMessage::decode(&m0).unwrap();
    let prefix_len = pm0.prefix.len();
    let ids = |opk: Option<u32>| json!({"signed_prekey_id": 1, "one_time_prekey_id": opk, "kem_prekey_id": 7});
    let mut cases = Vec::new();
    let mut respond_case = |name: &str, what: Option<&str>, bytes: &[u8], opk: bool| {
        let pm = PreKeyMessage::decode(bytes).unwrap();
        let r = respond(
            &bob.device,
            &alice.list,
            &pm,
            &bob.spk,
            opk.then_some(&bob.opk),
            &bob.kem,
        );
        let expect = match r {
            Ok(r) => json!({"plaintext": h(&r.plaintext)}),
            Err(e) => x3dh_error(&e),
        };
        cases.push(json!({
            "name": name, "operation": "respond", "alteration": what, "message": h(bytes),
            "responder_prekeys": ids(opk.then_some(100)), "expect": expect,
        }));
    };
    respond_case("prekey_mismatch", None, &m0, false);
    let mut ek_zero = m0.clone();
    let ek_at = 1 + 100 + 4 + 1 + 4 + 1 + 4;
    ek_zero[ek_at..ek_at + 32].fill(0);
    respond_case(
        "ephemeral_small_order",
        Some("EK_A (bytes 115..147) replaced by the small-order point u = 0"),
        &ek_zero,
        true,
    );
    let mut header_one = m0.clone();
    header_one[prefix_len + 1..prefix_len + 33].copy_from_slice(&SMALL_ORDER_ONE);
    respond_case(
        "header_ratchet_key_small_order",
        Some("the embedded header's ratchet_key replaced by the small-order point u = 1"),
        &header_one,
        true,
    );

    // A bundle whose SPK is a small-order point, validly signed by Bob's DSK.
    let mut bad_bundle = bundle.clone();
    let point: [u8; 32] = hex::decode(SMALL_ORDER_EIGHT).unwrap().try_into().unwrap();
    bad_bundle.signed_prekey.public = X25519PublicKey(point);
    bad_bundle.signed_prekey.signature = bob.device.dsk.sign_parts(&[
        info::PREKEY,
        &[PreKeyKind::Signed as u8],
        &bob.device.device_id.0.to_be_bytes(),
        &1u32.to_be_bytes(),
        &point,
    ]);
    let e = initiate(&alice.device, &bob.list, &bad_bundle, &mut rng).unwrap_err();
    cases.push(json!({
        "name": "bundle_spk_small_order", "operation": "initiate",
        "alteration": "SPK replaced by the order-8 point, with a valid signature by Bob's DSK",
        "bundle": h(&bad_bundle.encode()), "draws": rng.take_hex(), "expect": x3dh_error(&e),
    }));

    // Session-level errors on the sessions of messages 0 and 1.
    let mut bob0 = respond(&bob.device, &alice.list, &pm0, &bob.spk, Some(&bob.opk), &bob.kem)
        .unwrap()
        .session;
    let mut decrypt_case = |name: &str, session: Value, s: &mut Session, bytes: &[u8]| {
        let expect = match s.decrypt(MessageType::PreKey, bytes) {
            Ok(p) => json!({"plaintext": h(&p)}),
            Err(e) => decrypt_error(&e),
        };
        cases.push(json!({
            "name": name, "operation": "decrypt", "session": session, "message_type": 2,
            "message": h(bytes), "expect": expect,
        }));
    };
    let m1 = sessions[1].1.clone();
    decrypt_case(
        "wrong_session_other_prefix",
        json!({"party": "bob", "created_by_message": 0}),
        &mut bob0,
        &m1,
    );
    decrypt_case(
        "replayed_prekey_message",
        json!({"party": "bob", "created_by_message": 0}),
        &mut bob0,
        &m0,
    );
    decrypt_case(
        "wrong_session_initiator",
        json!({"party": "alice", "created_by_message": 0}),
        &mut sessions[0].0,
        &m0,
    );
    json!({
        "description": "PQXDH and pre-key session errors (docs/protocol.md §5, §6.2, §6.17). Alice initiates twice from Bob's bundle (`prekey_messages`, each with the draws of initiate and of its first encrypt). `cases` run one operation each: respond to a (possibly altered) message with the named responder prekeys, initiate from an altered bundle (draws consumed before the failure), or decrypt a pre-key message on the session a message created (Alice's: by initiate and its first encrypt; Bob's: by respond).",
        "alice": party_json(&alice),
        "bob": party_json(&bob),
        "bundle": h(&bundle.encode()),
        "prekey_messages": messages,
        "cases": cases,
    })
}

// ---------------------------------------------------------------------------------------
// Padding.

/// The data padded in `padding.json`: byte i is i mod 251.
fn padding_data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

const PADDING_LENGTHS: &[usize] = &[
    0, 1, 254, 255, 256, 511, 512, 1000, 4095, 8191, 16383, 16384, 20000, 32767, 32768, 65536, 100_000, 131_071,
    131_072, 200_000, 262_143, 262_144, 400_000, 524_288, 800_000, 1_048_575, 1_048_576, 1_050_789,
];

fn padding_vectors() -> Value {
    let entries: Vec<Value> = PADDING_LENGTHS
        .iter()
        .map(|&len| {
            let mut buf = padding_data(len);
            crate::padding::pad(&mut buf, 0);
            assert_eq!(crate::padding::unpad(&buf).unwrap(), &padding_data(len)[..]);
            json!({
                "data_len": len,
                "padded_len": buf.len(),
                "padded": (buf.len() <= 1024).then(|| h(&buf)),
                "padded_sha256": h(&crate::kdf::sha256(&[&buf])),
            })
        })
        .collect();
    json!({
        "description": "Padding (docs/protocol.md §7.3): padded = data ‖ 0x80 ‖ 0x00… to bucket(data_len + 1) bytes, where byte i of data is i mod 251. `padded` is given up to 1024 bytes, its SHA-256 always. `unpad_failures` MUST fail with the error given.",
        "entries": entries,
        "unpad_failures": [
            {"padded": "0000", "expect": {"error": "Invalid", "field": "padding"}},
            {"padded": "0181", "expect": {"error": "Invalid", "field": "padding"}},
        ],
    })
}

// ---------------------------------------------------------------------------------------
// Pickles.

const PICKLE_KEY: [u8; 32] = {
    let mut k = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        k[i] = i as u8;
        i += 1;
    }
    k
};

fn pickle_ad(t: u8) -> Vec<u8> {
    [info::PICKLE, &[1, t]].concat()
}

/// The §9.1 envelope around `inner`.
fn seal_pickle(key: &[u8; 32], t: u8, nonce: &[u8; 24], inner: &[u8]) -> Vec<u8> {
    let mut out = vec![1, t];
    out.extend_from_slice(nonce);
    let mut body = inner.to_vec();
    let tag = XChaCha20Poly1305::new(key.into())
        .encrypt_in_place_detached(nonce.into(), &pickle_ad(t), &mut body)
        .unwrap();
    out.extend_from_slice(&body);
    out.extend_from_slice(&tag);
    out
}

/// `inner` of a §9.1 envelope.
fn open_pickle(key: &[u8; 32], p: &[u8]) -> Vec<u8> {
    let (ct, tag) = p[26..].split_at(p.len() - 26 - 16);
    let mut body = ct.to_vec();
    XChaCha20Poly1305::new(key.into())
        .decrypt_in_place_detached(p[2..26].into(), &pickle_ad(p[1]), &mut body, tag.into())
        .unwrap();
    body
}

fn pickle_vectors() -> Value {
    let mut rng = Recorder::new(50);
    let k = make_keys(&mut rng);
    rng.take();
    let (_, _, session) = established(51);
    let key = PickleKey::new(PICKLE_KEY);
    let mut entries = Vec::new();
    let mut entry = |t: u8, name: &str, p: Vec<u8>, rng: &mut Recorder| {
        let nonce = rng.take_hex();
        entries.push(json!({
            "type": t, "name": name, "nonce": nonce[0], "inner": h(&open_pickle(&PICKLE_KEY, &p)), "pickle": h(&p),
        }));
        p
    };
    let p1 = entry(1, "account key", k.ak.pickle(&key, &mut rng), &mut rng);
    entry(2, "device", k.device.pickle(&key, &mut rng), &mut rng);
    entry(3, "session", session.pickle(&key, &mut rng), &mut rng);
    entry(
        4,
        "X25519 prekey secret (signed prekey)",
        k.spk.pickle(&key, &mut rng),
        &mut rng,
    );
    entry(5, "ML-KEM prekey secret", k.kem.pickle(&key, &mut rng), &mut rng);
    let list_key = k.ak.list_key(1).unwrap();
    entry(6, "list key (epoch 1)", list_key.pickle(&key, &mut rng), &mut rng);
    let mut sk_rng = Recorder::new(72);
    let mut sender = crate::sender_key::SenderKey::generate(&mut sk_rng);
    let mut receiver = crate::sender_key::SenderKeyReceiver::new(&sender.distribution());
    let sent: Vec<Vec<u8>> = (0..3u8).map(|i| sender.encrypt(&[i], &mut sk_rng).unwrap()).collect();
    receiver.decrypt(&sent[2]).unwrap();
    entry(7, "sender key (iteration 3)", sender.pickle(&key, &mut rng), &mut rng);
    entry(
        8,
        "sender-key receiver (next iteration 3, keys of 0 and 1 kept)",
        receiver.pickle(&key, &mut rng),
        &mut rng,
    );
    let mut altered = p1.clone();
    *altered.last_mut().unwrap() ^= 1;
    let mut format2 = open_pickle(&PICKLE_KEY, &p1);
    format2[..2].copy_from_slice(&2u16.to_be_bytes());
    let format2 = seal_pickle(&PICKLE_KEY, 1, p1[2..26].try_into().unwrap(), &format2);
    let fail = |name: &str, bytes: &[u8], expected_type: u8, e: PickleError| json!({"name": name, "pickle": h(bytes), "expected_type": expected_type, "expect": pickle_error(&e)});
    let failures = vec![
        fail(
            "altered_tag",
            &altered,
            1,
            AccountKey::unpickle(&altered, &key).unwrap_err(),
        ),
        fail("wrong_type", &p1, 2, Device::unpickle(&p1, &key).err().unwrap()),
        fail(
            "future_format",
            &format2,
            1,
            AccountKey::unpickle(&format2, &key).unwrap_err(),
        ),
    ];
    json!({
        "description": "One pickle of each type of docs/protocol.md §9 under `pickle_key`: the nonce drawn, the decrypted `inner` (format ‖ fields) and the exact bytes. Types 1, 2, 4 and 5 hold the keys of `keys` (account key, device, signed prekey, ML-KEM prekey); type 3 holds a responder session; type 6 holds the epoch-1 list key derived from that account key (§4.1); types 7 and 8 hold a sender key after three messages and a receiver of it that read the third (§6A). `failures` MUST fail to load as the type given with the error given.",
        "pickle_key": h(&PICKLE_KEY),
        "keys": party_json(&k),
        "pickles": entries,
        "failures": failures,
    })
}

#[test]
fn more_known_answer_vectors_are_unchanged() {
    check("pqxdh_last_resort", pqxdh_vectors(Pqxdh::LastResort).0);
    check("ratchet_limits", ratchet_limits_vectors());
    check("pqxdh_errors", pqxdh_error_vectors());
    check("padding", padding_vectors());
    check("pickles", pickle_vectors());
}

// ---------------------------------------------------------------------------------------
// Independent replay: only the JSON and the public API (plus raw-key constructors).

fn dir() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors")
}

fn read(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{}/{name}.json", dir())).unwrap()).unwrap()
}

fn hx(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap_or_else(|| panic!("not a hex string: {v}"))).unwrap()
}

fn a32(v: &Value) -> [u8; 32] {
    hx(v).try_into().unwrap()
}

/// An RNG that hands out recorded draws, in order, and nothing else.
struct Replay(VecDeque<Vec<u8>>);

impl Replay {
    fn new(draws: &Value) -> Self {
        Self(draws.as_array().unwrap().iter().map(hx).collect())
    }
    fn of(draws: &[&Value]) -> Self {
        Self(draws.iter().map(|d| hx(d)).collect())
    }
    fn done(&self) {
        assert!(self.0.is_empty(), "recorded draws left over");
    }
}

impl RngCore for Replay {
    fn next_u32(&mut self) -> u32 {
        unreachable!()
    }
    fn next_u64(&mut self) -> u64 {
        unreachable!()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let d = self.0.pop_front().expect("a recorded draw");
        dest.copy_from_slice(&d);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for Replay {}

fn device_from(k: &Value) -> Device {
    Device {
        account_id: AccountId(a32(&k["account"]["account_id"])),
        device_id: DeviceId(k["device"]["device_id"].as_u64().unwrap() as u32),
        dsk: Ed25519Secret::from_seed(&a32(&k["device"]["dsk_seed"])),
        ik: X25519Secret::from_bytes(&a32(&k["device"]["ik_scalar"])),
    }
}

fn list_from(k: &Value) -> DeviceList {
    let list = SignedDeviceList::from_bytes(&hx(&k["device_list"]))
        .unwrap()
        .verify(&AccountId(a32(&k["account"]["account_id"])))
        .unwrap();
    let f = &k["device_list_fields"];
    assert_eq!(list.version(), u(&f["version"]));
    assert_eq!(list.created_at_ms(), u(&f["created_at_ms"]));
    let ids: Vec<u64> = list.devices().iter().map(|d| u64::from(d.device_id.0)).collect();
    assert_eq!(
        ids,
        f["device_ids"].as_array().unwrap().iter().map(u).collect::<Vec<_>>()
    );
    list
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn x_secret(v: &Value) -> X25519PreKeySecret {
    X25519PreKeySecret {
        public: X25519PreKey::decode(&hx(&v["record"])).unwrap(),
        secret: X25519Secret::from_bytes(&a32(&v["scalar"])),
    }
}

fn kem_secret(v: &Value) -> KemPreKeySecret {
    KemPreKeySecret {
        public: KemPreKey::decode(&hx(&v["record"])).unwrap(),
        secret: KemSecret::from_seed(&hx(&v["seed"]).try_into().unwrap()),
    }
}

/// Replays a PQXDH file from its keys and draws; returns Alice's session after the first
/// encrypt and Bob's after respond.
fn replay_pqxdh(name: &str) -> (Session, Session) {
    let v = read(name);
    let (alice, bob) = (device_from(&v["alice"]), device_from(&v["bob"]));
    let bundle = PreKeyBundle::decode(&hx(&v["bundle"])).unwrap();
    let d = &v["draws"];
    let mut rng = Replay::of(&[&d["ek_scalar"], &d["kem_randomness"], &d["first_ratchet_scalar"]]);
    let mut a = initiate(&alice, &list_from(&v["bob"]), &bundle, &mut rng).unwrap();
    rng.done();
    let first = &v["first_message"];
    let mut rng = Replay::new(&first["draws"]);
    let m = a.encrypt(&hx(&first["plaintext"]), &mut rng).unwrap();
    rng.done();
    assert_eq!(h(&m.bytes), first["bytes"].as_str().unwrap(), "{name}: first message");
    assert_eq!(m.message_type as u64, first["message_type"].as_u64().unwrap());
    let pm = PreKeyMessage::decode(&m.bytes).unwrap();
    let f = &v["prekey_message_fields"];
    assert_eq!(u64::from(pm.signed_prekey_id), f["signed_prekey_id"].as_u64().unwrap());
    assert_eq!(pm.one_time_prekey_id.map(u64::from), f["one_time_prekey_id"].as_u64());
    assert_eq!(pm.kem_prekey.0 as u64, f["kem_prekey_kind"].as_u64().unwrap());
    assert_eq!(bundle.kem_prekey.kind as u64, v["kem_prekey_kind"].as_u64().unwrap());
    let kem = match v.get("bob_last_resort_kem_prekey") {
        Some(lr) => kem_secret(lr),
        None => kem_secret(&v["bob"]["kem_prekey"]),
    };
    let opk = pm.one_time_prekey_id.map(|_| x_secret(&v["bob"]["one_time_prekey"]));
    let spk = x_secret(&v["bob"]["signed_prekey"]);
    let r = respond(&bob, &list_from(&v["alice"]), &pm, &spk, opk.as_ref(), &kem).unwrap();
    assert_eq!(r.plaintext, hx(&first["plaintext"]));
    let used = &v["used_prekeys"];
    assert_eq!(
        r.used.one_time_prekey_id.map(u64::from),
        used["one_time_prekey_id"].as_u64()
    );
    let kem_deleted = (r.used.kem_prekey.0 == PreKeyKind::KemOneTime).then_some(u64::from(r.used.kem_prekey.1));
    assert_eq!(kem_deleted, used["kem_one_time_prekey_id"].as_u64());
    (a, r.session)
}

/// Runs the `steps` of a script over its `messages`.
fn replay_steps(v: &Value, mut s: [Session; 2]) {
    let messages = v["messages"].as_array().unwrap();
    let mut filler = ChaCha20Rng::seed_from_u64(0);
    for (i, step) in v["steps"].as_array().unwrap().iter().enumerate() {
        let p = party(&step["party"]);
        let at = format!("step {i}: {step}");
        match step["action"].as_str().unwrap() {
            "send" => match step.get("message") {
                Some(idx) => {
                    let m = &messages[idx.as_u64().unwrap() as usize];
                    if m.get("source").is_some() {
                        continue; // produced by the PQXDH replay
                    }
                    let mut rng = Replay::new(&m["draws"]);
                    let out = s[p].encrypt(&hx(&m["plaintext"]), &mut rng).unwrap();
                    rng.done();
                    assert_eq!(h(&out.bytes), m["bytes"].as_str().unwrap(), "{at}");
                    assert_eq!(out.message_type as u64, m["message_type"].as_u64().unwrap(), "{at}");
                }
                None => {
                    let mut rng = Replay::new(&step["draws"]);
                    let e = s[p].encrypt(&hx(&step["plaintext"]), &mut rng).unwrap_err();
                    rng.done();
                    assert_eq!(encrypt_error(&e), step["expect"], "{at}");
                }
            },
            "send_unrecorded" => {
                for _ in 0..step["count"].as_u64().unwrap() {
                    s[p].encrypt(b"x", &mut filler).unwrap();
                }
            }
            "deliver" => {
                if step.get("via").is_some() {
                    continue; // respond, in the PQXDH replay
                }
                let m = &messages[step["message"].as_u64().unwrap() as usize];
                let t = MessageType::from_byte(m["message_type"].as_u64().unwrap() as u8).unwrap();
                let got = match s[p].decrypt(t, &hx(&m["bytes"])) {
                    Ok(pt) => json!({"plaintext": h(&pt)}),
                    Err(e) => decrypt_error(&e),
                };
                assert_eq!(got, step["expect"], "{at}");
                if let Some(n) = step.get("skipped_keys_after") {
                    assert_eq!(s[p].skipped_key_count() as u64, n.as_u64().unwrap(), "{at}");
                }
            }
            other => panic!("unknown action {other}"),
        }
    }
}

/// Loads a session from its §9.2 fields by wrapping them in a pickle of our own.
fn session_from_fields(fields: &Value) -> Session {
    let mut inner = 1u16.to_be_bytes().to_vec();
    inner.extend_from_slice(&hx(fields));
    Session::unpickle(&seal_pickle(&[7; 32], 3, &[9; 24], &inner), &PickleKey::new([7; 32])).unwrap()
}

#[test]
fn pqxdh_and_ratchet_vectors_replay() {
    replay_pqxdh("pqxdh_with_opk");
    replay_pqxdh("pqxdh_without_opk");
    let (a, b) = replay_pqxdh("pqxdh_last_resort");
    let lr = read("pqxdh_last_resort");
    assert_eq!(lr["kem_prekey_kind"], 4);
    assert_eq!(lr["used_prekeys"]["kem_one_time_prekey_id"], Value::Null);
    drop((a, b));
    // ratchet.json continues pqxdh_with_opk.json with the same sessions.
    let (a, b) = replay_pqxdh("pqxdh_with_opk");
    replay_steps(&read("ratchet"), [a, b]);
}

#[test]
fn ratchet_limit_vectors_replay() {
    let v = read("ratchet_limits");
    for sc in v["scenarios"].as_array().unwrap() {
        let s = [
            session_from_fields(&sc["start"]["alice"]),
            session_from_fields(&sc["start"]["bob"]),
        ];
        replay_steps(sc, s);
    }
}

#[test]
fn pqxdh_error_vectors_replay() {
    let v = read("pqxdh_errors");
    let (alice, bob) = (device_from(&v["alice"]), device_from(&v["bob"]));
    let (alice_list, bob_list) = (list_from(&v["alice"]), list_from(&v["bob"]));
    let bundle = PreKeyBundle::decode(&hx(&v["bundle"])).unwrap();
    let spk = x_secret(&v["bob"]["signed_prekey"]);
    let opk = x_secret(&v["bob"]["one_time_prekey"]);
    let kem = kem_secret(&v["bob"]["kem_prekey"]);
    let mut alice_sessions = Vec::new();
    let mut bob_sessions = Vec::new();
    for m in v["prekey_messages"].as_array().unwrap() {
        let mut s = initiate(&alice, &bob_list, &bundle, &mut Replay::new(&m["initiate_draws"])).unwrap();
        let out = s
            .encrypt(&hx(&m["plaintext"]), &mut Replay::new(&m["encrypt_draws"]))
            .unwrap();
        assert_eq!(h(&out.bytes), m["bytes"].as_str().unwrap());
        let pm = PreKeyMessage::decode(&out.bytes).unwrap();
        bob_sessions.push(respond(&bob, &alice_list, &pm, &spk, Some(&opk), &kem).unwrap().session);
        alice_sessions.push(s);
    }
    for c in v["cases"].as_array().unwrap() {
        let got = match c["operation"].as_str().unwrap() {
            "respond" => {
                let bytes = hx(&c["message"]);
                let pm = PreKeyMessage::decode(&bytes).unwrap();
                let ids = &c["responder_prekeys"];
                assert_eq!(ids["signed_prekey_id"], 1);
                assert_eq!(ids["kem_prekey_id"], 7);
                let o = ids["one_time_prekey_id"].as_u64().map(|_| &opk);
                match respond(&bob, &alice_list, &pm, &spk, o, &kem) {
                    Ok(r) => json!({"plaintext": h(&r.plaintext)}),
                    Err(e) => x3dh_error(&e),
                }
            }
            "initiate" => {
                let b = PreKeyBundle::decode(&hx(&c["bundle"])).unwrap();
                assert!(b.verify().is_ok(), "the altered bundle's signatures verify");
                let mut rng = Replay::new(&c["draws"]);
                let e = initiate(&alice, &bob_list, &b, &mut rng).unwrap_err();
                rng.done();
                x3dh_error(&e)
            }
            "decrypt" => {
                let i = c["session"]["created_by_message"].as_u64().unwrap() as usize;
                let s = match c["session"]["party"].as_str().unwrap() {
                    "alice" => &mut alice_sessions[i],
                    _ => &mut bob_sessions[i],
                };
                match s.decrypt(MessageType::PreKey, &hx(&c["message"])) {
                    Ok(p) => json!({"plaintext": h(&p)}),
                    Err(e) => decrypt_error(&e),
                }
            }
            other => panic!("unknown operation {other}"),
        };
        assert_eq!(got, c["expect"], "{}", c["name"]);
    }
}

/// bucket(n) of docs/protocol.md §7.3, written from the text.
fn doc_bucket(n: u64) -> u64 {
    if n <= 256 {
        256
    } else if n <= 16384 {
        n.next_power_of_two()
    } else {
        let e = 63 - u64::from(n.leading_zeros());
        let s = 63 - u64::from(e.leading_zeros()) + 1;
        let mask = (1u64 << (e - s)) - 1;
        (n + mask) & !mask
    }
}

#[test]
fn padding_vectors_replay() {
    let v = read("padding");
    for e in v["entries"].as_array().unwrap() {
        let len = e["data_len"].as_u64().unwrap();
        let mut p = padding_data(len as usize);
        p.push(0x80);
        let padded_len = doc_bucket(len + 1);
        assert_eq!(padded_len, e["padded_len"].as_u64().unwrap(), "{len}");
        p.resize(padded_len as usize, 0);
        assert_eq!(h(&crate::kdf::sha256(&[&p])), e["padded_sha256"].as_str().unwrap());
        if let Some(x) = e["padded"].as_str() {
            assert_eq!(h(&p), x);
        }
        assert_eq!(crate::padding::unpad(&p).unwrap().len() as u64, len);
    }
    for f in v["unpad_failures"].as_array().unwrap() {
        let e = crate::padding::unpad(&hx(&f["padded"])).unwrap_err();
        assert_eq!(decode_error(&e), f["expect"]);
    }
}

#[test]
fn pickle_vectors_replay() {
    let v = read("pickles");
    let raw = a32(&v["pickle_key"]);
    let key = PickleKey::new(raw);
    let k = &v["keys"];
    for p in v["pickles"].as_array().unwrap() {
        let bytes = hx(&p["pickle"]);
        let t = p["type"].as_u64().unwrap() as u8;
        let nonce: [u8; 24] = hx(&p["nonce"]).try_into().unwrap();
        assert_eq!(seal_pickle(&raw, t, &nonce, &hx(&p["inner"])), bytes, "type {t}");
        match t {
            1 => assert_eq!(
                h(AccountKey::unpickle(&bytes, &key).unwrap().public_key().as_bytes()),
                k["account"]["public_key"].as_str().unwrap()
            ),
            2 => assert_eq!(
                h(Device::unpickle(&bytes, &key)
                    .unwrap()
                    .identity()
                    .signing_key
                    .as_bytes()),
                k["device"]["dsk_public"].as_str().unwrap()
            ),
            3 => {
                Session::unpickle(&bytes, &key).unwrap();
            }
            4 => assert_eq!(
                X25519PreKeySecret::unpickle(&bytes, &key).unwrap().public(),
                &X25519PreKey::decode(&hx(&k["signed_prekey"]["record"])).unwrap()
            ),
            5 => assert_eq!(
                KemPreKeySecret::unpickle(&bytes, &key).unwrap().public(),
                &KemPreKey::decode(&hx(&k["kem_prekey"]["record"])).unwrap()
            ),
            6 => {
                let ak = AccountKey::unpickle(&hx(&v["pickles"][0]["pickle"]), &key).unwrap();
                let lk = ListKey::unpickle(&bytes, &key).unwrap();
                assert_eq!(lk.epoch(), 1);
                assert_eq!(lk.public_key(), ak.list_key(1).unwrap().public_key());
            }
            7 => assert_eq!(
                crate::sender_key::SenderKey::unpickle(&bytes, &key)
                    .unwrap()
                    .iteration(),
                3
            ),
            8 => {
                let r = crate::sender_key::SenderKeyReceiver::unpickle(&bytes, &key).unwrap();
                assert_eq!((r.iteration(), r.skipped_keys()), (3, 2));
            }
            _ => panic!("unknown pickle type {t}"),
        }
    }
    for f in v["failures"].as_array().unwrap() {
        let bytes = hx(&f["pickle"]);
        let e = match f["expected_type"].as_u64().unwrap() {
            1 => AccountKey::unpickle(&bytes, &key).err(),
            2 => Device::unpickle(&bytes, &key).err(),
            _ => panic!("unexpected type"),
        };
        assert_eq!(pickle_error(&e.unwrap()), f["expect"], "{}", f["name"]);
    }
}

/// Every vector file names its values: plaintexts are hex and errors are stable names
/// with their fields, never debug text (docs/protocol.md §12).
#[test]
fn vectors_are_self_describing() {
    const NAMES: &[&str] = &[
        "Truncated",
        "TrailingBytes",
        "UnsupportedVersion",
        "UnknownType",
        "TooLong",
        "Invalid",
        "Duplicate",
        "TooBigMessageGap",
        "InvalidMac",
        "UnknownChain",
        "NonContributory",
        "WrongSession",
        "MessageTooLarge",
        "ChainExhausted",
        "UnknownDevice",
        "WrongPreKeyKind",
        "BadSignature",
        "PreKeyMismatch",
        "Authentication",
        "WrongType",
        "UnsupportedFormat",
        "BadSenderSignature",
        "TooLarge",
        "BadRecipientCount",
        "WrongAccount",
        "BadDeviceCount",
        "DuplicateDevice",
        "Rollback",
        "Equivocation",
        "BadDeviceBinding",
        "VersionJump",
        "HolderRemoved",
        "StaleListKey",
    ];
    fn walk(v: &Value, path: &str) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let p = format!("{path}.{k}");
                    if k == "plaintext" {
                        assert!(
                            x.as_str().is_some_and(|s| hex::decode(s).is_ok()),
                            "{p} is not hex: {x}"
                        );
                    }
                    if k == "error" {
                        let s = x.as_str().unwrap_or_default();
                        assert!(NAMES.contains(&s), "{p} is not a stable error name: {x}");
                    }
                    walk(x, &p);
                }
            }
            Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| walk(x, &format!("{path}[{i}]"))),
            _ => {}
        }
    }
    for name in [
        "pqxdh_with_opk",
        "pqxdh_without_opk",
        "pqxdh_last_resort",
        "ratchet",
        "ratchet_limits",
        "pqxdh_errors",
        "padding",
        "pickles",
    ] {
        let path = format!("{}/{name}.json", dir());
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let v: Value = serde_json::from_str(&text).unwrap();
        walk(&v, name);
        assert!(
            v.get("used_prekeys").is_none_or(|u| u.get("signed").is_none()),
            "{name}: used_prekeys lists the signed prekey, which is kept"
        );
        if name == "ratchet" {
            assert!(v.get("steps").is_some(), "ratchet.json has no ordered steps");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Sender keys (§6A).

fn sender_key_vectors() -> Value {
    use crate::sender_key::{SenderKey, SenderKeyReceiver};
    let mut rng = Recorder::new(70);
    let mut alice = SenderKey::generate(&mut rng);
    let draws = rng.take_hex();
    let distribution = alice.distribution();
    let plaintexts: [&[u8]; 4] = [b"hello group", b"", b"third", b"fourth message"];
    let mut messages = Vec::new();
    let mut ck = Key32(distribution.encode()[21..53].try_into().unwrap());
    for p in plaintexts {
        let (mk, next) = crate::ratchet::kdf_ck(&ck);
        let bytes = alice.encrypt(p, &mut rng).unwrap();
        let salt = rng.take_hex();
        let keys = hkdf::<44>(&hx(&salt[0]), &mk.0, &[info::SENDER_KEY_MESSAGE_KEYS]);
        messages.push(json!({
            "iteration": messages.len(), "plaintext": h(p), "chain_key": h(&ck.0), "message_key": h(&mk.0),
            "salt": salt[0], "aead_key": h(&keys[..32]), "nonce": h(&keys[32..]), "bytes": h(&bytes),
        }));
        ck = next;
    }
    // Bob receives 2, 0, 3, 1, then 0 again; Carol joins at iteration 2.
    let order = [2usize, 0, 3, 1, 0];
    let mut bob = SenderKeyReceiver::new(&distribution);
    let deliveries: Vec<Value> = order
        .iter()
        .map(|&i| {
            let bytes = hx(&messages[i]["bytes"]);
            match bob.decrypt(&bytes) {
                Ok(p) => json!({"message": i, "plaintext": h(&p), "skipped_after": bob.skipped_keys()}),
                Err(e) => json!({"message": i, "error": e.name(), "skipped_after": bob.skipped_keys()}),
            }
        })
        .collect();
    let mut forged = hx(&messages[0]["bytes"]);
    let n = forged.len();
    forged[n - 1] ^= 1;
    let mut altered = hx(&messages[0]["bytes"]);
    altered[40] ^= 1;
    // A member re-signs altered bytes with its own key: the signature fails first.
    let mut other = SenderKeyReceiver::new(&SenderKey::generate(&mut Recorder::new(71)).distribution());
    let unknown_chain = other.decrypt(&hx(&messages[0]["bytes"])).unwrap_err();
    let mut fresh = SenderKeyReceiver::new(&distribution);
    json!({
        "description": "Sender keys (docs/protocol.md §6A). Alice makes a chain (draws: chain id 16, chain key 32, SSK seed 32) and encrypts four messages (each draws a 16-byte salt). Each message lists its chain key, message key, salt, AEAD key and nonce, and the exact bytes. `deliveries` is Bob's script from the distribution: messages 2, 0, 3, 1, then 0 again, with the plaintext or the error and the keys Bob holds afterwards. `errors` MUST fail as named on a fresh receiver of the distribution (`unknown_chain`: on a receiver of another chain).",
        "draws": draws,
        "signing_public_key": h(distribution.signing_key().as_bytes()),
        "distribution": h(&distribution.encode()),
        "messages": messages,
        "deliveries": deliveries,
        "errors": [
            {"name": "bad_signature", "bytes": h(&forged), "error": fresh.decrypt(&forged).unwrap_err().name()},
            {"name": "altered_ciphertext", "bytes": h(&altered), "error": fresh.decrypt(&altered).unwrap_err().name()},
            {"name": "unknown_chain", "error": unknown_chain.name()},
        ],
    })
}

#[test]
fn sender_key_vectors_are_unchanged() {
    check("sender_keys", sender_key_vectors());
}

#[test]
fn sender_key_vectors_replay() {
    use crate::sender_key::{SenderKeyDistribution, SenderKeyReceiver};
    let v = read("sender_keys");
    let dist = SenderKeyDistribution::decode(&hx(&v["distribution"])).unwrap();
    let draws = v["draws"].as_array().unwrap();
    assert_eq!(dist.chain_id().to_vec(), hx(&draws[0]));
    assert_eq!(
        h(dist.signing_key().as_bytes()),
        v["signing_public_key"].as_str().unwrap()
    );
    // Every byte of each message from its inputs: the KDF chain, the keys, the AEAD and
    // the layout; the signature verifies under the distributed key.
    let mut ck: [u8; 32] = hx(&draws[1]).try_into().unwrap();
    for (i, m) in v["messages"].as_array().unwrap().iter().enumerate() {
        assert_eq!(h(&ck), m["chain_key"].as_str().unwrap());
        let mk = *crate::kdf::hmac_byte(&ck, 1);
        ck = *crate::kdf::hmac_byte(&ck, 2);
        assert_eq!(h(&mk), m["message_key"].as_str().unwrap());
        let keys = hkdf::<44>(&hx(&m["salt"]), &mk, &[b"Sotto-v1 sender key message keys"]);
        assert_eq!(h(&keys[..32]), m["aead_key"].as_str().unwrap());
        assert_eq!(h(&keys[32..]), m["nonce"].as_str().unwrap());
        let bytes = hx(&m["bytes"]);
        let mut header = vec![1u8];
        header.extend_from_slice(&dist.chain_id());
        header.extend_from_slice(&(i as u32).to_be_bytes());
        header.extend_from_slice(&hx(&m["salt"]));
        assert_eq!(&bytes[..37], &header[..]);
        let mut body = hx(&m["plaintext"]);
        let tag = ChaCha20Poly1305::new((&keys[..32]).into())
            .encrypt_in_place_detached((&keys[32..]).into(), &header, &mut body)
            .unwrap();
        body.extend_from_slice(&tag);
        assert_eq!(&bytes[37..bytes.len() - 64], &body[..]);
        let sig = crate::keys::Signature(bytes[bytes.len() - 64..].try_into().unwrap());
        dist.signing_key()
            .verify_parts(&[b"Sotto-v1 sender key message", &bytes[..bytes.len() - 64]], &sig)
            .unwrap();
    }
    let mut bob = SenderKeyReceiver::new(&dist);
    for d in v["deliveries"].as_array().unwrap() {
        let i = d["message"].as_u64().unwrap() as usize;
        let got = bob.decrypt(&hx(&v["messages"][i]["bytes"]));
        match d.get("plaintext") {
            Some(p) => assert_eq!(h(&got.unwrap()), p.as_str().unwrap()),
            None => assert_eq!(got.unwrap_err().name(), d["error"].as_str().unwrap()),
        }
        assert_eq!(bob.skipped_keys() as u64, d["skipped_after"].as_u64().unwrap());
    }
    for e in v["errors"].as_array().unwrap() {
        if let Some(b) = e.get("bytes") {
            let mut fresh = SenderKeyReceiver::new(&dist);
            assert_eq!(fresh.decrypt(&hx(b)).unwrap_err().name(), e["error"].as_str().unwrap());
        }
    }
}

// ---------------------------------------------------------------------------------------
// The group seal (§7A).

fn group_seal_vectors() -> Value {
    use crate::group_seal::GroupSealKey;
    let mut rng = Recorder::new(80);
    let gk = GroupSealKey::generate(&mut rng);
    let key_draw = rng.take_hex();
    let hint_key = hkdf::<32>(&[], gk.to_bytes().as_slice(), &[info::GROUP_SEAL_HINT]);
    let contents: [(u8, &[u8]); 3] = [(1, b"a sender-key message"), (1, b""), (2, &[0u8; 300])];
    let envelopes: Vec<Value> = contents
        .iter()
        .map(|(t, c)| {
            let env = gk.seal(*t, c, &mut rng).unwrap();
            let draw = rng.take_hex();
            let mut ikm = crate::kdf::sha256(&[info::GROUP_SEAL_HEDGE, gk.to_bytes().as_slice()]).to_vec();
            ikm.extend_from_slice(&crate::kdf::sha256(&[&[*t], c]));
            let n = hkdf::<32>(&hx(&draw[0]), &ikm, &[info::GROUP_SEAL_NONCE]);
            let hint = crate::kdf::hmac(&hint_key, &[n.as_slice()]);
            let keys = hkdf::<44>(n.as_slice(), gk.to_bytes().as_slice(), &[info::GROUP_SEAL_BODY]);
            json!({
                "content_type": t, "content": h(c), "draw": draw[0], "hedge_ikm": h(&ikm), "nonce_seed": h(n.as_slice()),
                "hint": h(&hint[..16]), "aead_key": h(&keys[..32]), "aead_nonce": h(&keys[32..]), "envelope": h(&env),
            })
        })
        .collect();
    let first = hx(&envelopes[0]["envelope"]);
    let other = GroupSealKey::generate(&mut Recorder::new(81));
    let mut altered = first.clone();
    let last = altered.len() - 1;
    altered[last] ^= 1;
    let mut wrong_hint = first.clone();
    wrong_hint[40] ^= 1;
    let mut sealed_sender = first.clone();
    sealed_sender[0] = 2;
    let errors = [
        ("altered_tag", altered),
        ("wrong_hint", wrong_hint),
        ("sealed_sender_version", sealed_sender),
        ("truncated", first[..first.len() - 1].to_vec()),
    ];
    json!({
        "description": "The group seal (docs/protocol.md §7A). The group key GK is one 32-byte draw; each envelope draws 32 bytes R. Each envelope lists the hedge input SHA-256(label ‖ GK) ‖ SHA-256(content_type ‖ content), the nonce seed N, the hint, the AEAD key and nonce, and the exact bytes. `other_key_opens` is what a device holding another key gets. `errors` MUST fail under GK as named.",
        "group_key": key_draw[0],
        "hint_key": h(hint_key.as_slice()),
        "envelopes": envelopes,
        "other_key_opens": other.open(&first).unwrap_err().name(),
        "errors": errors.iter().map(|(name, bytes)| json!({
            "name": name, "bytes": h(bytes), "error": gk.open(bytes).unwrap_err().name(),
        })).collect::<Vec<_>>(),
    })
}

#[test]
fn group_seal_vectors_are_unchanged() {
    check("group_seal", group_seal_vectors());
}

#[test]
fn group_seal_vectors_replay() {
    use crate::group_seal::GroupSealKey;
    let v = read("group_seal");
    let gk_bytes = a32(&v["group_key"]);
    let gk = GroupSealKey::from_bytes(&gk_bytes);
    // Every byte of each envelope from GK, R and the content, with the primitives alone.
    let hint_key = hkdf::<32>(&[], &gk_bytes, &[b"Sotto-v1 group seal hint"]);
    assert_eq!(h(hint_key.as_slice()), v["hint_key"].as_str().unwrap());
    for e in v["envelopes"].as_array().unwrap() {
        let t = e["content_type"].as_u64().unwrap() as u8;
        let content = hx(&e["content"]);
        let mut ikm = crate::kdf::sha256(&[b"Sotto-v1 group seal hedge", &gk_bytes]).to_vec();
        ikm.extend_from_slice(&crate::kdf::sha256(&[&[t], &content]));
        assert_eq!(h(&ikm), e["hedge_ikm"].as_str().unwrap());
        let n = hkdf::<32>(&hx(&e["draw"]), &ikm, &[b"Sotto-v1 group seal nonce"]);
        let hint = crate::kdf::hmac(&hint_key, &[n.as_slice()]);
        let keys = hkdf::<44>(n.as_slice(), &gk_bytes, &[b"Sotto-v1 group seal body"]);
        let mut header = vec![3u8];
        header.extend_from_slice(n.as_slice());
        header.extend_from_slice(&hint[..16]);
        let mut body = vec![t];
        body.extend_from_slice(&content);
        body.push(0x80);
        body.resize(crate::padding::bucket(content.len() + 2), 0);
        let tag = ChaCha20Poly1305::new((&keys[..32]).into())
            .encrypt_in_place_detached((&keys[32..]).into(), &header, &mut body)
            .unwrap();
        let mut expected = header;
        expected.extend_from_slice(&body);
        expected.extend_from_slice(&tag);
        assert_eq!(h(&expected), e["envelope"].as_str().unwrap());
        // And through the public API: the same bytes from the same draw, and they open.
        let again = gk.seal(t, &content, &mut Replay::of(&[&e["draw"]])).unwrap();
        assert_eq!(again, expected);
        let opened = gk.open(&expected).unwrap();
        assert_eq!((opened.content_type, opened.content), (t, content));
    }
    let first = hx(&v["envelopes"][0]["envelope"]);
    let other = GroupSealKey::from_bytes(&[7; 32]);
    assert_eq!(
        other.open(&first).unwrap_err().name(),
        v["other_key_opens"].as_str().unwrap()
    );
    for e in v["errors"].as_array().unwrap() {
        assert_eq!(
            gk.open(&hx(&e["bytes"])).unwrap_err().name(),
            e["error"].as_str().unwrap()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Profiles.

/// A profile error as its stable name and fields.
fn profile_error(e: &crate::profile::ProfileError) -> Value {
    use crate::profile::ProfileError;
    match e {
        ProfileError::Decode(d) => decode_error(d),
        ProfileError::InvalidMac => json!({"error": "InvalidMac"}),
        ProfileError::TooLarge { len, max } => json!({"error": "TooLarge", "len": len, "max": max}),
    }
}

const PROFILE_ACCOUNT: [u8; 32] = [0x61; 32];

fn profile_vectors() -> Value {
    use crate::profile::ProfileKey;
    let mut rng = Recorder::new(90);
    let key = ProfileKey::generate(&mut rng);
    let key_draw = rng.take_hex();
    let account = AccountId(PROFILE_ACCOUNT);
    let plaintexts: [&[u8]; 3] = [b"", b"a profile", &[0x5a; 300]];
    let ciphertexts: Vec<Value> = plaintexts
        .iter()
        .map(|p| {
            let ct = key.encrypt(&account, p, &mut rng).unwrap();
            let draw = rng.take_hex();
            let keys = hkdf::<44>(
                &hx(&draw[0]),
                key.to_bytes().as_slice(),
                &[info::PROFILE_CIPHER, account.as_bytes()],
            );
            json!({
                "plaintext": h(p), "draw": draw[0], "aead_key": h(&keys[..32]), "aead_nonce": h(&keys[32..]),
                "ciphertext": h(&ct),
            })
        })
        .collect();
    let first = hx(&ciphertexts[1]["ciphertext"]);
    let mut altered = first.clone();
    let last = altered.len() - 1;
    altered[last] ^= 1;
    let mut version = first.clone();
    version[0] = 2;
    let errors = [
        ("altered_tag", altered, account),
        ("other_account", first.clone(), AccountId([0x62; 32])),
        ("unknown_version", version, account),
        ("truncated", first[..first.len() - 1].to_vec(), account),
    ];
    json!({
        "description": "Profile encryption (docs/protocol.md §15.9). The profile key PK is one 32-byte draw; each ciphertext draws 32 bytes N. `version` is what the relay stores the profile under. Each ciphertext lists the AEAD key and nonce and the exact bytes. `errors` MUST fail under PK for the account given, as named.",
        "profile_key": key_draw[0],
        "account_id": h(account.as_bytes()),
        "version": h(&key.version(&account)),
        "ciphertexts": ciphertexts,
        "errors": errors.iter().map(|(name, bytes, acct)| json!({
            "name": name, "account_id": h(acct.as_bytes()), "bytes": h(bytes),
            "expect": profile_error(&key.decrypt(acct, bytes).unwrap_err()),
        })).collect::<Vec<_>>(),
    })
}

#[test]
fn profile_vectors_are_unchanged() {
    check("profile", profile_vectors());
}

#[test]
fn profile_vectors_replay() {
    use crate::profile::ProfileKey;
    let v = read("profile");
    let pk = a32(&v["profile_key"]);
    let key = ProfileKey::from_bytes(&pk);
    let account = AccountId(a32(&v["account_id"]));
    // The version and every byte of each ciphertext, with the primitives alone.
    let version = hkdf::<32>(account.as_bytes(), &pk, &[b"Sotto-v1 profile version"]);
    assert_eq!(h(version.as_slice()), v["version"].as_str().unwrap());
    assert_eq!(key.version(&account), *version);
    for c in v["ciphertexts"].as_array().unwrap() {
        let n = hx(&c["draw"]);
        let plain = hx(&c["plaintext"]);
        let keys = hkdf::<44>(&n, &pk, &[b"Sotto-v1 profile cipher", account.as_bytes()]);
        let mut header = vec![1u8];
        header.extend_from_slice(&n);
        let mut body = plain.clone();
        body.push(0x80);
        body.resize(crate::padding::bucket(plain.len() + 1), 0);
        let ad = [&header[..], account.as_bytes()].concat();
        let tag = ChaCha20Poly1305::new((&keys[..32]).into())
            .encrypt_in_place_detached((&keys[32..]).into(), &ad, &mut body)
            .unwrap();
        let mut expected = header;
        expected.extend_from_slice(&body);
        expected.extend_from_slice(&tag);
        assert_eq!(h(&expected), c["ciphertext"].as_str().unwrap());
        let again = key.encrypt(&account, &plain, &mut Replay::of(&[&c["draw"]])).unwrap();
        assert_eq!(again, expected);
        assert_eq!(key.decrypt(&account, &expected).unwrap().as_slice(), &plain[..]);
    }
    for e in v["errors"].as_array().unwrap() {
        let acct = AccountId(a32(&e["account_id"]));
        assert_eq!(
            profile_error(&key.decrypt(&acct, &hx(&e["bytes"])).unwrap_err()),
            e["expect"],
            "{}",
            e["name"]
        );
    }
}

// ---------------------------------------------------------------------------------------
// Attachments.

fn attachment_error(e: &crate::attachment::AttachmentError) -> Value {
    use crate::attachment::AttachmentError as E;
    match e {
        E::TooLarge { len, max } => json!({"error": "TooLarge", "len": len, "max": max}),
        E::LengthMismatch { expected } => json!({"error": "LengthMismatch", "expected": expected}),
        E::WrongLength { expected } => json!({"error": "WrongLength", "expected": expected}),
        E::UnsupportedVersion { version } => json!({"error": "UnsupportedVersion", "version": version}),
        E::InvalidMac { index } => json!({"error": "InvalidMac", "index": index}),
        E::BadPadding => json!({"error": "BadPadding"}),
        E::DigestMismatch => json!({"error": "DigestMismatch"}),
    }
}

/// The plaintext of an attachment vector: byte i is i mod 251.
fn attachment_data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Decrypts `ct` in one piece.
fn attachment_open(
    key: &crate::attachment::AttachmentKey,
    len: u64,
    digest: [u8; 32],
    ct: &[u8],
) -> Result<Vec<u8>, crate::attachment::AttachmentError> {
    let mut d = crate::attachment::Decryptor::new(key, len, digest)?;
    let mut out = Vec::new();
    d.update(ct, &mut out)?;
    d.finish()?;
    Ok(out)
}

fn attachment_vectors() -> Value {
    use crate::attachment::{AttachmentKey, Encryptor};
    let mut rng = Recorder::new(95);
    let key = AttachmentKey::generate(&mut rng);
    let key_draw = rng.take_hex();
    let lengths = [0usize, 5, 65_535, 65_536, 70_000];
    let mut first = None;
    let entries: Vec<Value> = lengths
        .iter()
        .map(|&len| {
            let plain = attachment_data(len);
            let mut e = Encryptor::new(&key, len as u64, &mut rng).unwrap();
            let salt = rng.take_hex();
            let mut ct = e.header().to_vec();
            e.update(&plain, &mut ct).unwrap();
            let layout = e.layout();
            let digest = e.finish(&mut ct).unwrap();
            let k = hkdf::<32>(&hx(&salt[0]), key.to_bytes().as_slice(), &[info::ATTACHMENT]);
            if len == 5 {
                first = Some((ct.clone(), digest));
            }
            json!({
                "plaintext_len": len, "salt": salt[0], "chunk_key": h(k.as_slice()),
                "padded_len": layout.padded_len, "chunks": layout.chunks, "ciphertext_len": ct.len(),
                "ciphertext": (ct.len() <= 1024).then(|| h(&ct)), "ciphertext_sha256": h(&digest),
            })
        })
        .collect();
    let (small, digest) = first.unwrap();
    let mut tag = small.clone();
    let last = tag.len() - 1;
    tag[last] ^= 1;
    let mut version = small.clone();
    version[0] = 2;
    let errors = [
        ("altered_tag", tag, 5u64, digest),
        ("unknown_version", version, 5, digest),
        ("one_byte_short", small[..small.len() - 1].to_vec(), 5, digest),
        ("one_byte_more", [&small[..], &[0]].concat(), 5, digest),
        ("other_digest", small.clone(), 5, [0u8; 32]),
        ("other_length", small.clone(), 6, digest),
    ];
    json!({
        "description": "Attachment encryption (docs/protocol.md §16). The attachment key K is one 32-byte draw; each ciphertext draws a 16-byte salt. Byte i of each plaintext is i mod 251. `ciphertext` is given up to 1024 bytes, its SHA-256 (the digest) always. `errors` MUST fail for the plaintext length and digest given, as named.",
        "attachment_key": key_draw[0],
        "entries": entries,
        "errors": errors.iter().map(|(name, bytes, len, digest)| json!({
            "name": name, "bytes": h(bytes), "plaintext_len": len, "digest": h(digest),
            "expect": attachment_error(&attachment_open(&key, *len, *digest, bytes).unwrap_err()),
        })).collect::<Vec<_>>(),
    })
}

#[test]
fn attachment_vectors_are_unchanged() {
    check("attachment", attachment_vectors());
}

#[test]
fn attachment_vectors_replay() {
    use crate::attachment::{AttachmentKey, Encryptor};
    let v = read("attachment");
    let raw = a32(&v["attachment_key"]);
    let key = AttachmentKey::from_bytes(&raw);
    for e in v["entries"].as_array().unwrap() {
        let len = e["plaintext_len"].as_u64().unwrap() as usize;
        let salt = hx(&e["salt"]);
        let plain = attachment_data(len);
        // Every byte from K, the salt and the plaintext, with the primitives alone.
        let k = hkdf::<32>(&salt, &raw, &[b"Sotto-v1 attachment"]);
        assert_eq!(h(k.as_slice()), e["chunk_key"].as_str().unwrap());
        let mut padded = plain.clone();
        padded.push(0x80);
        padded.resize(crate::padding::bucket(len + 1), 0);
        let chunks: Vec<&[u8]> = padded.chunks(65_536).collect();
        let mut header = vec![1u8];
        header.extend_from_slice(&salt);
        let mut expected = header.clone();
        for (i, c) in chunks.iter().enumerate() {
            let mut nonce = [0u8; 12];
            nonce[3..11].copy_from_slice(&(i as u64).to_be_bytes());
            nonce[11] = u8::from(i + 1 == chunks.len());
            let mut body = c.to_vec();
            let tag = ChaCha20Poly1305::new(k.as_slice().into())
                .encrypt_in_place_detached((&nonce).into(), &header, &mut body)
                .unwrap();
            expected.extend_from_slice(&body);
            expected.extend_from_slice(&tag);
        }
        assert_eq!(expected.len() as u64, e["ciphertext_len"].as_u64().unwrap());
        let digest = crate::kdf::sha256(&[&expected]);
        assert_eq!(h(&digest), e["ciphertext_sha256"].as_str().unwrap());
        if let Some(x) = e["ciphertext"].as_str() {
            assert_eq!(h(&expected), x);
        }
        // Through the public API: the same bytes from the same draw, and they open.
        let mut enc = Encryptor::new(&key, len as u64, &mut Replay::of(&[&e["salt"]])).unwrap();
        let mut again = enc.header().to_vec();
        enc.update(&plain, &mut again).unwrap();
        assert_eq!(enc.finish(&mut again).unwrap(), digest);
        assert_eq!(again, expected);
        assert_eq!(attachment_open(&key, len as u64, digest, &expected).unwrap(), plain);
    }
    for e in v["errors"].as_array().unwrap() {
        let got = attachment_open(
            &key,
            e["plaintext_len"].as_u64().unwrap(),
            a32(&e["digest"]),
            &hx(&e["bytes"]),
        );
        assert_eq!(attachment_error(&got.unwrap_err()), e["expect"], "{}", e["name"]);
    }
}

// ---------------------------------------------------------------------------------------
// Unlinkable tokens.

fn token_vectors() -> Value {
    use crate::token::{IssuerKey, TokenRequest};
    let mut rng = Recorder::new(97);
    let issuer = IssuerKey::generate(&mut rng);
    let issuer_draw = rng.take_hex();
    let req = TokenRequest::new(3, &mut rng).unwrap();
    let request_draws = rng.take_hex();
    let (evaluated, proof) = issuer.issue(req.blinded(), &mut rng).unwrap();
    let proof_draw = rng.take_hex();
    let tokens = req.finish(&issuer.public(), &evaluated, &proof).unwrap();
    let mut bent = tokens[0];
    bent[40] ^= 1;
    json!({
        "description": "Unlinkable tokens (docs/protocol.md §16.3). The issuer's scalar is reduced from one 64-byte draw; each requested token draws t (32 bytes) then r (64 bytes, reduced); the proof draws v (64 bytes, reduced). Scalars are little-endian, points compressed ristretto255. `invalid_tokens` MUST fail to verify.",
        "issuer_draw": issuer_draw[0],
        "issuer_scalar": h(issuer.to_bytes().as_slice()),
        "issuer_public": h(&issuer.public()),
        "request_draws": request_draws,
        "blinded": req.blinded().iter().map(|b| h(b)).collect::<Vec<_>>(),
        "proof_draw": proof_draw[0],
        "evaluated": evaluated.iter().map(|z| h(z)).collect::<Vec<_>>(),
        "proof": h(&proof.0),
        "tokens": tokens.iter().map(|t| h(t)).collect::<Vec<_>>(),
        "invalid_tokens": [h(&bent), h(&[7u8; 64])],
    })
}

#[test]
fn token_vectors_are_unchanged() {
    check("token", token_vectors());
}

#[test]
fn token_vectors_replay() {
    use crate::token::{IssuerKey, Proof, TokenRequest};
    let v = read("token");
    let issuer = IssuerKey::from_bytes(&a32(&v["issuer_scalar"])).unwrap();
    assert_eq!(h(&issuer.public()), v["issuer_public"].as_str().unwrap());
    let draws: Vec<&Value> = v["request_draws"].as_array().unwrap().iter().collect();
    let req = TokenRequest::new(3, &mut Replay::of(&draws)).unwrap();
    let blinded: Vec<String> = req.blinded().iter().map(|b| h(b)).collect();
    assert_eq!(json!(blinded), v["blinded"]);
    let (evaluated, proof) = issuer
        .issue(req.blinded(), &mut Replay::of(&[&v["proof_draw"]]))
        .unwrap();
    assert_eq!(
        json!(evaluated.iter().map(|z| h(z)).collect::<Vec<_>>()),
        v["evaluated"]
    );
    assert_eq!(h(&proof.0), v["proof"].as_str().unwrap());
    let proof = Proof(hx(&v["proof"]).try_into().unwrap());
    let tokens = req.finish(&issuer.public(), &evaluated, &proof).unwrap();
    assert_eq!(json!(tokens.iter().map(|t| h(t)).collect::<Vec<_>>()), v["tokens"]);
    for t in &tokens {
        issuer.verify(t).unwrap();
    }
    for bad in v["invalid_tokens"].as_array().unwrap() {
        let b: [u8; 64] = hx(bad).try_into().unwrap();
        assert!(issuer.verify(&b).is_err());
    }
}
