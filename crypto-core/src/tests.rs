//! Cross-module tests: the two-party interaction harness, tamper tests, bounds and
//! failure atomicity. Known-answer vectors live in `vectors.rs`.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::ratchet::{MAX_RECEIVING_CHAINS, MAX_SKIP, MAX_SKIPPED_KEYS};
use crate::*;

/// One side of a conversation: keys, device list and the prekey secrets it published.
pub(crate) struct Party {
    pub(crate) ak: AccountKey,
    pub(crate) device: Device,
    pub(crate) list: DeviceList,
    pub(crate) spk: X25519PreKeySecret,
    pub(crate) opks: Vec<X25519PreKeySecret>,
    pub(crate) kem: KemPreKeySecret,
    pub(crate) kem_last_resort: KemPreKeySecret,
}

impl Party {
    pub(crate) fn new(rng: &mut ChaCha20Rng) -> Self {
        let ak = AccountKey::generate(rng);
        let device = Device::generate(ak.account_id(), DeviceId(1), rng);
        let list = ak.sign_device_list(1, 1_700_000_000_000, vec![device.entry()]).unwrap();
        let spk = device.generate_signed_prekey(1, rng);
        let opks = device.generate_one_time_prekeys(100, 2, rng);
        let kem = device.generate_kem_prekey(1, false, rng);
        let kem_last_resort = device.generate_kem_prekey(2, true, rng);
        Self {
            ak,
            device,
            list,
            spk,
            opks,
            kem,
            kem_last_resort,
        }
    }

    pub(crate) fn bundle(&self, with_opk: bool, last_resort: bool) -> PreKeyBundle {
        PreKeyBundle {
            identity: self.device.identity(),
            signed_prekey: self.spk.public().clone(),
            one_time_prekey: with_opk.then(|| self.opks[0].public().clone()),
            kem_prekey: if last_resort {
                self.kem_last_resort.public().clone()
            } else {
                self.kem.public().clone()
            },
        }
    }
}

/// Alice initiates with Bob's bundle; Bob responds to her first message.
pub(crate) fn establish(rng: &mut ChaCha20Rng) -> (Party, Party, Session, Session) {
    let alice = Party::new(rng);
    let bob = Party::new(rng);
    let mut a = initiate(&alice.device, &bob.list, &bob.bundle(true, false), rng).unwrap();
    let first = a.encrypt(b"first", rng).unwrap();
    assert_eq!(first.message_type, MessageType::PreKey);
    let msg = PreKeyMessage::decode(&first.bytes).unwrap();
    let r = respond(&bob.device, &alice.list, &msg, &bob.spk, Some(&bob.opks[0]), &bob.kem).unwrap();
    assert_eq!(r.plaintext, b"first");
    assert_eq!(r.used.one_time_prekey_id, Some(100));
    (alice, bob, a, r.session)
}

fn state(s: &Session) -> Vec<u8> {
    let mut v = Vec::new();
    s.encode_state(&mut v);
    v
}

fn clone_session(s: &Session) -> Session {
    let v = state(s);
    let mut r = crate::codec::Reader::new(&v);
    Session::decode_state(&mut r).unwrap()
}

#[test]
fn conversation_with_out_of_order_and_duplicates() {
    let mut rng = ChaCha20Rng::seed_from_u64(100);
    let (_, _, mut a, mut b) = establish(&mut rng);
    let m1 = a.encrypt(b"one", &mut rng).unwrap();
    let m2 = a.encrypt(b"two", &mut rng).unwrap();
    let m3 = a.encrypt(b"three", &mut rng).unwrap();
    // Pre-key messages until Bob replies.
    assert_eq!(m3.message_type, MessageType::PreKey);
    assert_eq!(b.decrypt(m3.message_type, &m3.bytes).unwrap(), b"three");
    assert_eq!(b.skipped_key_count(), 2);
    assert_eq!(b.decrypt(m1.message_type, &m1.bytes).unwrap(), b"one");
    assert_eq!(
        b.decrypt(m1.message_type, &m1.bytes),
        Err(DecryptError::Duplicate { index: 1 })
    );
    let r1 = b.encrypt(b"reply", &mut rng).unwrap();
    assert_eq!(r1.message_type, MessageType::Ratchet);
    assert!(a.is_pending_prekey());
    assert_eq!(a.decrypt(r1.message_type, &r1.bytes).unwrap(), b"reply");
    assert!(!a.is_pending_prekey());
    let m4 = a.encrypt(b"four", &mut rng).unwrap();
    assert_eq!(m4.message_type, MessageType::Ratchet);
    assert_eq!(b.decrypt(m4.message_type, &m4.bytes).unwrap(), b"four");
    // A late message from the previous chain still decrypts, once.
    assert_eq!(b.decrypt(m2.message_type, &m2.bytes).unwrap(), b"two");
    assert!(b.decrypt(m2.message_type, &m2.bytes).is_err());
    assert_eq!(b.skipped_key_count(), 0);
}

#[test]
fn a_pending_session_names_the_prekeys_it_used_until_answered() {
    let mut rng = ChaCha20Rng::seed_from_u64(108);
    let alice = Party::new(&mut rng);
    let bob = Party::new(&mut rng);
    for (opk, last_resort) in [(true, false), (false, true)] {
        let mut a = initiate(&alice.device, &bob.list, &bob.bundle(opk, last_resort), &mut rng).unwrap();
        let kem = if last_resort { &bob.kem_last_resort } else { &bob.kem };
        assert_eq!(
            a.pending_prekey_ids(),
            Some((bob.spk.public().id, (kem.public().kind, kem.public().id)))
        );
        let first = a.encrypt(b"first", &mut rng).unwrap();
        let msg = PreKeyMessage::decode(&first.bytes).unwrap();
        let opk = opk.then_some(&bob.opks[0]);
        let mut r = respond(&bob.device, &alice.list, &msg, &bob.spk, opk, kem).unwrap();
        assert_eq!(
            r.session.pending_prekey_ids(),
            None,
            "the responder's session is not pending"
        );
        let reply = r.session.encrypt(b"reply", &mut rng).unwrap();
        a.decrypt(reply.message_type, &reply.bytes).unwrap();
        assert_eq!(a.pending_prekey_ids(), None, "answered");
    }
}

#[test]
fn late_message_from_an_evicted_chain_decrypts_through_pn() {
    let mut rng = ChaCha20Rng::seed_from_u64(101);
    let (_, _, mut a, mut b) = establish(&mut rng);
    let r = b.encrypt(b"r", &mut rng).unwrap();
    a.decrypt(r.message_type, &r.bytes).unwrap();
    let late = a.encrypt(b"late", &mut rng).unwrap();
    // Many direction changes, more than MAX_RECEIVING_CHAINS.
    for i in 0..(MAX_RECEIVING_CHAINS + 3) {
        let x = a.encrypt(format!("a{i}").as_bytes(), &mut rng).unwrap();
        b.decrypt(x.message_type, &x.bytes).unwrap();
        let y = b.encrypt(format!("b{i}").as_bytes(), &mut rng).unwrap();
        a.decrypt(y.message_type, &y.bytes).unwrap();
    }
    assert_eq!(b.decrypt(late.message_type, &late.bytes).unwrap(), b"late");
}

#[test]
fn failures_leave_the_session_unchanged() {
    let mut rng = ChaCha20Rng::seed_from_u64(102);
    let (_, _, mut a, mut b) = establish(&mut rng);
    let m = a.encrypt(b"payload", &mut rng).unwrap();
    let before = state(&b);
    // Every single-bit flip of the message is rejected without a state change.
    for i in 0..m.bytes.len() {
        for bit in 0..8 {
            let mut t = m.bytes.clone();
            t[i] ^= 1 << bit;
            assert!(
                b.decrypt(m.message_type, &t).is_err(),
                "flip at byte {i} bit {bit} accepted"
            );
        }
    }
    assert_eq!(state(&b), before);
    // Truncations too.
    for len in 0..m.bytes.len() {
        assert!(b.decrypt(m.message_type, &m.bytes[..len]).is_err());
    }
    assert_eq!(state(&b), before);
    assert_eq!(b.decrypt(m.message_type, &m.bytes).unwrap(), b"payload");
}

#[test]
fn the_last_message_number_is_refused_before_any_work() {
    let mut rng = ChaCha20Rng::seed_from_u64(114);
    let (_, _, _, mut b) = establish(&mut rng);
    let h = ratchet::Header {
        ratchet_key: X25519PublicKey([9; 32]),
        previous_chain_length: 0,
        index: u32::MAX,
        salt: [0; 16],
    };
    let mut m = h.encode().to_vec();
    m.extend_from_slice(&[0; 16]);
    assert!(matches!(
        b.decrypt(MessageType::Ratchet, &m),
        Err(DecryptError::Decode(_))
    ));
    let mut env = vec![2u8, 9];
    env.extend_from_slice(&[0; 200]);
    assert_eq!(
        open(&Party::new(&mut rng).device, &env),
        Err(OpenError::Decode(DecodeError::UnknownType {
            field: "envelope kind",
            value: 9
        }))
    );
}

#[test]
fn gap_bounds_are_enforced() {
    let mut rng = ChaCha20Rng::seed_from_u64(103);
    let (_, _, mut a, mut b) = establish(&mut rng);
    let mut last = None;
    for _ in 0..=MAX_SKIP + 1 {
        last = Some(a.encrypt(b"x", &mut rng).unwrap());
    }
    let last = last.unwrap();
    // Bob is at index 1; this message is at MAX_SKIP + 2, a gap of MAX_SKIP + 1.
    let before = state(&b);
    assert_eq!(
        b.decrypt(last.message_type, &last.bytes),
        Err(DecryptError::TooBigMessageGap {
            gap: MAX_SKIP + 1,
            max: MAX_SKIP
        })
    );
    assert_eq!(state(&b), before);
}

#[test]
fn skipped_keys_are_capped_oldest_first() {
    let mut rng = ChaCha20Rng::seed_from_u64(104);
    let (_, _, mut a, mut b) = establish(&mut rng);
    let mut msgs = Vec::new();
    for _ in 0..(MAX_SKIPPED_KEYS + 500) {
        msgs.push(a.encrypt(b"x", &mut rng).unwrap());
    }
    // Three deliveries, each skipping fewer than MAX_SKIP keys, skip 2,497 in all.
    for i in [999, 1999, 2499] {
        b.decrypt(msgs[i].message_type, &msgs[i].bytes).unwrap();
        assert!(b.skipped_key_count() <= MAX_SKIPPED_KEYS);
    }
    assert_eq!(b.skipped_key_count(), MAX_SKIPPED_KEYS);
    // The oldest skipped keys were evicted; the newest remain.
    let r = b.decrypt(msgs[0].message_type, &msgs[0].bytes);
    assert!(matches!(r, Err(DecryptError::Duplicate { .. })), "{r:?}");
    let m = &msgs[1500];
    assert!(b.decrypt(m.message_type, &m.bytes).is_ok());
}

#[test]
fn a_new_chain_is_unknown_until_we_have_sent() {
    let mut rng = ChaCha20Rng::seed_from_u64(105);
    let (_, _, mut a, mut b) = establish(&mut rng);
    // A fork of Alice's session that saw a reply makes a chain Bob cannot know yet.
    let r = b.encrypt(b"r", &mut rng).unwrap();
    let mut a2 = clone_session(&a);
    a2.decrypt(r.message_type, &r.bytes).unwrap();
    a.decrypt(r.message_type, &r.bytes).unwrap();
    let x = a.encrypt(b"x", &mut rng).unwrap();
    b.decrypt(x.message_type, &x.bytes).unwrap();
    // Bob has not sent since Alice's new key: a second new key is impossible.
    let y = a2.encrypt(b"y", &mut rng).unwrap();
    assert_eq!(b.decrypt(y.message_type, &y.bytes), Err(DecryptError::UnknownChain));
}

#[test]
fn forked_states_never_reuse_a_key_and_nonce() {
    // Two copies of one state encrypt different plaintexts at the same index: the random
    // salt gives each its own key and nonce, so the ciphertexts share no keystream.
    let mut rng = ChaCha20Rng::seed_from_u64(106);
    let (_, _, a, _) = establish(&mut rng);
    let mut f1 = clone_session(&a);
    let mut f2 = clone_session(&a);
    let m1 = f1.encrypt(&[0u8; 64], &mut rng).unwrap();
    let m2 = f2.encrypt(&[0u8; 64], &mut rng).unwrap();
    let n = m1.bytes.len();
    assert_ne!(m1.bytes[n - 80..n - 16], m2.bytes[n - 80..n - 16]);
}

#[test]
fn x3dh_checks() {
    let mut rng = ChaCha20Rng::seed_from_u64(107);
    let alice = Party::new(&mut rng);
    let bob = Party::new(&mut rng);
    let eve = Party::new(&mut rng);
    // Bob's bundle checked against Eve's device list: refused before any DH.
    assert_eq!(
        initiate(&alice.device, &eve.list, &bob.bundle(true, false), &mut rng).err(),
        Some(X3dhError::UnknownDevice)
    );
    // A prekey signed by someone else.
    let mut b = bob.bundle(true, false);
    b.signed_prekey = eve.spk.public().clone();
    assert_eq!(
        initiate(&alice.device, &bob.list, &b, &mut rng).err(),
        Some(X3dhError::BadSignature { which: "signed prekey" })
    );
    let mut b = bob.bundle(true, false);
    b.kem_prekey = eve.kem.public().clone();
    assert_eq!(
        initiate(&alice.device, &bob.list, &b, &mut rng).err(),
        Some(X3dhError::BadSignature { which: "ML-KEM prekey" })
    );
    let mut b = bob.bundle(true, false);
    b.one_time_prekey = Some(bob.spk.public().clone());
    assert_eq!(
        initiate(&alice.device, &bob.list, &b, &mut rng).err(),
        Some(X3dhError::WrongPreKeyKind {
            slot: "one-time prekey"
        })
    );
    // Without a one-time prekey, with the last-resort ML-KEM key.
    let mut a = initiate(&alice.device, &bob.list, &bob.bundle(false, true), &mut rng).unwrap();
    let m = a.encrypt(b"hi", &mut rng).unwrap();
    let pm = PreKeyMessage::decode(&m.bytes).unwrap();
    assert_eq!(pm.one_time_prekey_id, None);
    assert_eq!(pm.kem_prekey, (PreKeyKind::KemLastResort, 2));
    // Wrong secrets for the ids named.
    assert_eq!(
        respond(&bob.device, &alice.list, &pm, &bob.spk, None, &bob.kem).err(),
        Some(X3dhError::PreKeyMismatch)
    );
    assert_eq!(
        respond(
            &bob.device,
            &alice.list,
            &pm,
            &bob.spk,
            Some(&bob.opks[0]),
            &bob.kem_last_resort
        )
        .err(),
        Some(X3dhError::PreKeyMismatch)
    );
    // An initiator missing from its own account's list.
    assert_eq!(
        respond(&bob.device, &eve.list, &pm, &bob.spk, None, &bob.kem_last_resort).err(),
        Some(X3dhError::UnknownDevice)
    );
    let r = respond(&bob.device, &alice.list, &pm, &bob.spk, None, &bob.kem_last_resort).unwrap();
    assert_eq!(r.plaintext, b"hi");
    // Every flipped bit of the pre-key message is refused.
    for i in 0..pm.prefix.len() {
        let mut t = m.bytes.clone();
        t[i] ^= 0x04;
        let ok = PreKeyMessage::decode(&t)
            .ok()
            .and_then(|pm| respond(&bob.device, &alice.list, &pm, &bob.spk, None, &bob.kem_last_resort).ok());
        assert!(ok.is_none(), "flip at {i} accepted");
    }
}

#[test]
fn prekey_message_on_the_wrong_session_is_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(108);
    let (alice, bob, mut a, mut b) = establish(&mut rng);
    let mut a2 = initiate(&alice.device, &bob.list, &bob.bundle(false, true), &mut rng).unwrap();
    let m = a2.encrypt(b"other", &mut rng).unwrap();
    assert_eq!(b.decrypt(m.message_type, &m.bytes), Err(DecryptError::WrongSession));
    let m = a.encrypt(b"same", &mut rng).unwrap();
    assert_eq!(b.decrypt(m.message_type, &m.bytes).unwrap(), b"same");
}

#[test]
fn sealed_sender_single_and_multi() {
    let mut rng = ChaCha20Rng::seed_from_u64(109);
    let alice = Party::new(&mut rng);
    let bob = Party::new(&mut rng);
    let carol = Party::new(&mut rng);
    let env = seal(&alice.device, &bob.device.identity(), 1, b"inner", &mut rng).unwrap();
    assert_eq!(env.len(), 2 + 32 + 48 + padding::bucket(1 + 100 + 5 + 1) + 16);
    let o = open(&bob.device, &env).unwrap();
    assert_eq!(o.sender, alice.device.identity());
    assert_eq!((o.content_type, o.content.as_slice()), (1, &b"inner"[..]));
    assert_eq!(open(&carol.device, &env), Err(OpenError::InvalidMac));
    for i in 0..env.len() {
        let mut t = env.clone();
        t[i] ^= 0x10;
        assert!(open(&bob.device, &t).is_err(), "flip at {i} accepted");
    }
    let recipients = [bob.device.identity(), carol.device.identity()];
    let multi = seal_multi(&alice.device, &recipients, 7, b"group body", &mut rng).unwrap();
    for (i, dev) in [&bob.device, &carol.device].into_iter().enumerate() {
        let o = open(dev, &multi.envelope(i).unwrap()).unwrap();
        assert_eq!((o.content_type, o.content.as_slice()), (7, &b"group body"[..]));
        assert_eq!(o.sender, alice.device.identity());
    }
    // Bob's wrap does not open for Carol.
    assert_eq!(
        open(&carol.device, &multi.envelope(0).unwrap()),
        Err(OpenError::InvalidMac)
    );
    let e = multi.envelope(1).unwrap();
    for i in 0..e.len() {
        let mut t = e.clone();
        t[i] ^= 0x01;
        assert!(open(&carol.device, &t).is_err(), "flip at {i} accepted");
    }
    assert_eq!(
        seal_multi(&alice.device, &[], 1, b"", &mut rng).err(),
        Some(SealError::BadRecipientCount {
            count: 0,
            max: sealed::MAX_RECIPIENTS
        })
    );
}

#[test]
fn pickles_round_trip_and_refuse_the_wrong_key() {
    let mut rng = ChaCha20Rng::seed_from_u64(110);
    let (alice, bob, mut a, mut b) = establish(&mut rng);
    let key = PickleKey::new([9; 32]);
    let wrong = PickleKey::new([8; 32]);
    let p = a.pickle(&key, &mut rng);
    let mut a2 = Session::unpickle(&p, &key).unwrap();
    assert_eq!(state(&a2), state(&a));
    assert_eq!(Session::unpickle(&p, &wrong).err(), Some(PickleError::Authentication));
    assert_eq!(
        Device::unpickle(&p, &key).err(),
        Some(PickleError::WrongType { expected: 2, found: 3 })
    );
    let m = a2.encrypt(b"after restore", &mut rng).unwrap();
    assert_eq!(b.decrypt(m.message_type, &m.bytes).unwrap(), b"after restore");
    let d = Device::unpickle(&alice.device.pickle(&key, &mut rng), &key).unwrap();
    assert_eq!(d.identity(), alice.device.identity());
    let k = AccountKey::unpickle(&bob.ak.pickle(&key, &mut rng), &key).unwrap();
    assert_eq!(k.account_id(), bob.ak.account_id());
    let s = X25519PreKeySecret::unpickle(&bob.spk.pickle(&key, &mut rng), &key).unwrap();
    assert_eq!(s.public(), bob.spk.public());
    let q = KemPreKeySecret::unpickle(&bob.kem.pickle(&key, &mut rng), &key).unwrap();
    assert_eq!(q.public(), bob.kem.public());
    let _ = &mut a;
}

/// Pickles written by format 1 must load forever. The fixture holds both sides of a
/// conversation and the next message Alice sent.
#[test]
fn format_1_pickles_still_load() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pickle_v1.json");
    let key = PickleKey::new([0x42; 32]);
    if std::env::var_os("SOTTO_WRITE_FIXTURES").is_some() {
        let mut rng = ChaCha20Rng::seed_from_u64(111);
        let (_, _, mut a, b) = establish(&mut rng);
        let next = a.encrypt(b"still readable", &mut rng).unwrap();
        let json = serde_json::json!({
            "key": hex::encode([0x42u8; 32]),
            "bob_session": hex::encode(b.pickle(&key, &mut rng)),
            "next_message": hex::encode(&next.bytes),
            "next_message_type": next.message_type as u8,
        });
        std::fs::create_dir_all(std::path::Path::new(path).parent().unwrap()).unwrap();
        std::fs::write(path, serde_json::to_string_pretty(&json).unwrap() + "\n").unwrap();
    }
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let h = |k: &str| hex::decode(json[k].as_str().unwrap()).unwrap();
    let mut bob = Session::unpickle(&h("bob_session"), &key).unwrap();
    let t = MessageType::from_byte(json["next_message_type"].as_u64().unwrap() as u8).unwrap();
    assert_eq!(bob.decrypt(t, &h("next_message")).unwrap(), b"still readable");
}

#[test]
fn debug_output_holds_no_secrets() {
    let mut rng = ChaCha20Rng::seed_from_u64(112);
    let (alice, _, a, _) = establish(&mut rng);
    let s = format!("{a:?}");
    assert!(s.starts_with("Session { local: (AccountId("), "{s}");
    assert!(s.ends_with("receiving_chains: 0, skipped_keys: 0, .. }"), "{s}");
    assert_eq!(format!("{:?}", PickleKey::new([1; 32])), "PickleKey(..)");
    let mut rng = ChaCha20Rng::seed_from_u64(113);
    let env = seal(&alice.device, &alice.device.identity(), 1, b"secret words", &mut rng).unwrap();
    let o = format!("{:?}", open(&alice.device, &env).unwrap());
    assert!(
        o.ends_with("content_type: 1, content_len: 12, .. }") && !o.contains("secret"),
        "{o}"
    );
    let k = format!("{:?}", alice.kem);
    assert!(k.starts_with("KemPreKeySecret { kind: KemOneTime, id: 1, .. }"), "{k}");
}

/// The interaction harness: random send / deliver / reorder / drop / duplicate /
/// restore schedules between two parties. Every delivered message decrypts exactly once
/// to what was sent; a re-delivery never decrypts again and changes nothing.
#[test]
fn interaction_harness_10000_schedules() {
    let mut rng = ChaCha20Rng::seed_from_u64(0x5077);
    let (_, _, a0, b0) = establish(&mut rng);
    let key = PickleKey::new([3; 32]);
    let base = [state(&a0), state(&b0)];
    let mut stats = [0usize; 6];
    for schedule in 0..10_000u64 {
        let mut rng = ChaCha20Rng::seed_from_u64(schedule);
        let mut parties = [
            Session::decode_state(&mut crate::codec::Reader::new(&base[0])).unwrap(),
            Session::decode_state(&mut crate::codec::Reader::new(&base[1])).unwrap(),
        ];
        // In flight: (to, message type, bytes, plaintext).
        let mut in_flight: Vec<(usize, MessageType, Vec<u8>, Vec<u8>)> = Vec::new();
        let mut delivered: Vec<(usize, MessageType, Vec<u8>)> = Vec::new();
        let steps = 10 + rng.next_u32() % 40;
        for step in 0..steps {
            match rng.next_u32() % 10 {
                0..=3 => {
                    let from = (rng.next_u32() % 2) as usize;
                    let pt = format!("s{schedule}-{step}").into_bytes();
                    let m = parties[from].encrypt(&pt, &mut rng).unwrap();
                    in_flight.push((1 - from, m.message_type, m.bytes, pt));
                    stats[0] += 1;
                }
                4..=6 if !in_flight.is_empty() => {
                    let i = (rng.next_u32() as usize) % in_flight.len();
                    let (to, t, bytes, pt) = in_flight.remove(i);
                    let got = parties[to].decrypt(t, &bytes);
                    assert_eq!(got.as_deref(), Ok(&pt[..]), "schedule {schedule} step {step}");
                    delivered.push((to, t, bytes));
                    stats[1] += 1;
                }
                7 if !in_flight.is_empty() => {
                    let i = (rng.next_u32() as usize) % in_flight.len();
                    in_flight.remove(i);
                    stats[2] += 1;
                }
                8 if !delivered.is_empty() => {
                    let i = (rng.next_u32() as usize) % delivered.len();
                    let (to, t, bytes) = &delivered[i];
                    let before = state(&parties[*to]);
                    assert!(
                        parties[*to].decrypt(*t, bytes).is_err(),
                        "schedule {schedule}: replay decrypted"
                    );
                    assert_eq!(state(&parties[*to]), before);
                    stats[3] += 1;
                }
                9 => {
                    let who = (rng.next_u32() % 2) as usize;
                    let p = parties[who].pickle(&key, &mut rng);
                    parties[who] = Session::unpickle(&p, &key).unwrap();
                    stats[4] += 1;
                }
                _ => stats[5] += 1,
            }
        }
        // Drain: everything still in flight arrives, in random order.
        while !in_flight.is_empty() {
            let i = (rng.next_u32() as usize) % in_flight.len();
            let (to, t, bytes, pt) = in_flight.remove(i);
            assert_eq!(
                parties[to].decrypt(t, &bytes).as_deref(),
                Ok(&pt[..]),
                "schedule {schedule} drain"
            );
        }
    }
    // Each kind of step happened many times.
    assert!(stats[..5].iter().all(|&n| n > 10_000), "{stats:?}");
}

/// Finding 11: pickling writes the plaintext state once into a buffer of its exact final
/// size; a reallocation would leave an unwiped copy of the keys in freed memory.
#[test]
fn pickling_never_reallocates_a_buffer_holding_keys() {
    let mut rng = ChaCha20Rng::seed_from_u64(120);
    let (alice, bob, mut a, mut b) = establish(&mut rng);
    // A large session: skipped keys and several receiving chains.
    let mut last = None;
    for i in 0..300u32 {
        last = Some(a.encrypt(&i.to_be_bytes(), &mut rng).unwrap());
    }
    let m = last.unwrap();
    b.decrypt(m.message_type, &m.bytes).unwrap();
    let key = PickleKey::new([9; 32]);
    // The buffer is allocated once at the exact length: a grown Vec would have more
    // capacity than length (it at least doubles), and its old buffer freed unwiped.
    let exact = |p: &[u8], cap: usize, fields: usize| {
        assert_eq!(p.len(), 2 + 24 + 2 + fields + 16);
        assert_eq!(cap, p.len(), "the pickle buffer grew");
    };
    for s in [&a, &b] {
        let p = s.pickle(&key, &mut rng);
        exact(&p, p.capacity(), s.state_len());
        assert_eq!(state(&Session::unpickle(&p, &key).unwrap()), state(s));
    }
    assert!(b.state_len() > 256 * 40, "the session is large: {}", b.state_len());
    let p = alice.device.pickle(&key, &mut rng);
    exact(&p, p.capacity(), 100);
    let p = bob.ak.pickle(&key, &mut rng);
    exact(&p, p.capacity(), 32);
    let p = bob.spk.pickle(&key, &mut rng);
    exact(&p, p.capacity(), X25519PreKey::ENCODED_LEN + 32);
    let p = bob.kem.pickle(&key, &mut rng);
    exact(&p, p.capacity(), KemPreKey::ENCODED_LEN + 64);
    let _ = &mut a;
}
