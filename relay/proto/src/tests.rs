use std::sync::OnceLock;

use proptest::collection::vec;
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sotto_crypto::{
    AccountId, AccountKey, Device, DeviceId, KemPreKey, PreKeyBundle, PreKeyKind, Signature, X25519PreKey,
    X25519PublicKey,
};

use crate::*;

struct Fixtures {
    kem_one_time: Vec<KemPreKey>,
    kem_last_resort: Vec<KemPreKey>,
    bundles: Vec<PreKeyBundle>,
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let ak = AccountKey::generate(&mut rng);
        let mut kem_one_time = Vec::new();
        let mut kem_last_resort = Vec::new();
        let mut bundles = Vec::new();
        for i in 0..3 {
            let d = Device::generate(ak.account_id(), DeviceId(i), &mut rng);
            kem_one_time.push(d.generate_kem_prekey(i, false, &mut rng).public().clone());
            kem_last_resort.push(d.generate_kem_prekey(100 + i, true, &mut rng).public().clone());
            bundles.push(PreKeyBundle {
                identity: d.identity(),
                signed_prekey: d.generate_signed_prekey(1, &mut rng).public().clone(),
                one_time_prekey: (i % 2 == 0).then(|| d.generate_one_time_prekeys(5, 1, &mut rng)[0].public().clone()),
                kem_prekey: kem_one_time[i as usize].clone(),
            });
        }
        Fixtures {
            kem_one_time,
            kem_last_resort,
            bundles,
        }
    })
}

fn account() -> impl Strategy<Value = AccountId> {
    any::<[u8; 32]>().prop_map(AccountId)
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn code() -> impl Strategy<Value = ErrorCode> {
    any::<u16>().prop_map(ErrorCode)
}

fn x25519_prekey(kind: PreKeyKind) -> impl Strategy<Value = X25519PreKey> {
    (any::<u32>(), any::<[u8; 32]>(), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(move |(id, p, s1, s2)| {
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&s1);
        sig[32..].copy_from_slice(&s2);
        X25519PreKey {
            kind,
            id,
            public: X25519PublicKey(p),
            signature: Signature(sig),
        }
    })
}

fn challenge() -> impl Strategy<Value = Challenge> {
    (any::<[u8; 32]>(), any::<[u8; 32]>(), any::<u64>()).prop_map(|(nonce, relay_id, timestamp_ms)| Challenge {
        nonce,
        relay_id,
        timestamp_ms,
    })
}

fn auth_response() -> impl Strategy<Value = AuthResponse> {
    (
        account(),
        any::<u32>(),
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
    )
        .prop_map(|(account_id, d, nonce, s1, s2)| {
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&s1);
            sig[32..].copy_from_slice(&s2);
            AuthResponse {
                account_id,
                device_id: DeviceId(d),
                nonce,
                signature: Signature(sig),
            }
        })
}

fn frame() -> impl Strategy<Value = Frame> {
    let recipient = (account(), any::<u32>(), bytes(64)).prop_map(|(account_id, d, head)| Recipient {
        account_id,
        device_id: DeviceId(d),
        head,
    });
    let outcome = prop_oneof![
        vec(any::<u64>(), 0..16).prop_map(|seqs| SendOutcome::Stored { seqs }),
        vec(bytes(200), 0..4).prop_map(|device_lists| SendOutcome::DeviceMismatch { device_lists }),
        code().prop_map(|code| SendOutcome::Rejected { code }),
    ];
    prop_oneof![
        challenge().prop_map(Frame::Challenge),
        auth_response().prop_map(Frame::AuthResponse),
        auth_response().prop_map(Frame::AuthExtension),
        any::<[u8; 16]>().prop_map(|mailbox_epoch| Frame::AuthOk { mailbox_epoch }),
        (
            any::<u64>(),
            vec((any::<[u8; 32]>(), any::<[u8; 32]>()), 0..4),
            prop_oneof![Just(Vec::new()), bytes(300)],
            vec(recipient, 0..8)
        )
            .prop_map(|(message_id, keys, body, recipients)| {
                let mut access: Vec<Access> = keys
                    .into_iter()
                    .map(|(a, k)| Access {
                        account_id: AccountId(a),
                        key: AccessKey(k),
                    })
                    .collect();
                access.sort_by_key(|a| a.account_id.0);
                access.dedup_by_key(|a| a.account_id.0);
                Frame::Send(Send {
                    message_id,
                    access,
                    body,
                    recipients,
                })
            }),
        (any::<u64>(), outcome).prop_map(|(message_id, outcome)| Frame::SendResult(SendResult { message_id, outcome })),
        (any::<u64>(), any::<u64>(), bytes(256)).prop_map(|(seq, received_at_s, envelope)| Frame::Deliver(Deliver {
            seq,
            received_at_s,
            envelope
        })),
        Just(Frame::QueueEmpty),
        Just(Frame::Resume),
        any::<u64>().prop_map(|seq| Frame::Ack { seq }),
        (account(), bytes(64)).prop_map(|(to, payload)| Frame::Ephemeral { to, payload }),
        bytes(64).prop_map(|payload| Frame::EphemeralDeliver { payload }),
        code().prop_map(|code| Frame::Error { code }),
    ]
}

fn prekey_upload() -> impl Strategy<Value = PreKeyUpload> {
    (
        proptest::option::of(x25519_prekey(PreKeyKind::Signed)),
        vec(x25519_prekey(PreKeyKind::OneTime), 0..6),
        vec(0..3usize, 0..3),
        proptest::option::of(0..3usize),
    )
        .prop_map(|(signed_prekey, one_time_prekeys, kem, lr)| {
            let f = fixtures();
            PreKeyUpload {
                signed_prekey,
                one_time_prekeys,
                kem_prekeys: kem.into_iter().map(|i| f.kem_one_time[i].clone()).collect(),
                last_resort_kem_prekey: lr.map(|i| f.kem_last_resort[i].clone()),
            }
        })
}

fn round_trip<B: Body + PartialEq + std::fmt::Debug>(b: &B) {
    let enc = b.encode();
    assert_eq!(enc[0], VERSION);
    assert_eq!(&B::decode(&enc).unwrap(), b);
    // Every strict prefix is a typed error, and so is one trailing byte.
    for cut in 0..enc.len() {
        assert!(B::decode(&enc[..cut]).is_err(), "prefix of {cut} bytes decoded");
    }
    let mut longer = enc.clone();
    longer.push(0);
    assert_eq!(B::decode(&longer), Err(DecodeError::TrailingBytes { count: 1 }));
}

proptest! {
    #[test]
    fn frames_round_trip(f in frame()) {
        let enc = f.encode();
        prop_assert_eq!(enc[0], VERSION);
        prop_assert_eq!(enc[1], f.type_byte());
        prop_assert_eq!(Frame::decode(&enc), Ok(f));
        for cut in 0..enc.len() {
            prop_assert!(Frame::decode(&enc[..cut]).is_err());
        }
    }

    #[test]
    fn any_bytes_decode_to_a_frame_or_a_typed_error(b in bytes(512)) {
        let _ = Frame::decode(&b);
        let mut framed = vec![VERSION];
        framed.extend_from_slice(&b);
        if let Ok(f) = Frame::decode(&framed) {
            prop_assert_eq!(f.encode(), framed);
        }
    }

    #[test]
    fn any_bytes_decode_to_a_body_or_a_typed_error(b in bytes(512)) {
        let mut framed = vec![VERSION];
        framed.extend_from_slice(&b);
        for input in [&b[..], &framed[..]] {
            let _ = Challenge::decode(input);
            let _ = AuthResponse::decode(input);
            let _ = DeviceListBody::decode(input);
            let _ = PreKeyUpload::decode(input);
            let _ = PreKeyCounts::decode(input);
            let _ = Bundles::decode(input);
            let _ = PushRegistration::decode(input);
            let _ = ErrorBody::decode(input);
            let _ = AccessPolicy::decode(input);
            let _ = ProfileUpload::decode(input);
            let _ = ProfileBody::decode(input);
            let _ = BlobIssuer::decode(input);
            let _ = TokenIssue::decode(input);
            let _ = TokenIssued::decode(input);
            let _ = BlobCreate::decode(input);
            let _ = BlobCreated::decode(input);
            let _ = BlobStatus::decode(input);
            let _ = parse_authorization(&String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn small_bodies_round_trip(
        c in challenge(),
        a in auth_response(),
        list in bytes(300),
        counts in (any::<u32>(), any::<u32>(), any::<bool>(), any::<bool>()),
        token in bytes(100),
        provider in 1u8..=5,
        code in code(),
        profile_version in any::<[u8; 32]>(),
        ciphertext in vec(any::<u8>(), 1..300),
    ) {
        round_trip(&c);
        round_trip(&a);
        round_trip(&DeviceListBody { signed_list: list });
        round_trip(&PreKeyCounts {
            one_time: counts.0,
            kem_one_time: counts.1,
            has_signed_prekey: counts.2,
            has_last_resort: counts.3,
        });
        round_trip(&PushRegistration { provider: PushProvider::from_byte(provider).unwrap(), token });
        round_trip(&ErrorBody { code });
        round_trip(&AccessPolicy { verifier: [provider; 32], accept_requests: provider % 2 == 0 });
        round_trip(&ProfileUpload { version: profile_version, ciphertext: ciphertext.clone() });
        round_trip(&ProfileBody { ciphertext });
        prop_assert_eq!(parse_authorization(&authorization_header(&a)), Ok(a));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn prekey_uploads_round_trip(u in prekey_upload()) {
        round_trip(&u);
    }

    #[test]
    fn bundles_round_trip(pick in vec(0..3usize, 0..4)) {
        let f = fixtures();
        round_trip(&Bundles { bundles: pick.into_iter().map(|i| f.bundles[i].clone()).collect() });
    }
}

#[test]
fn lengths_are_bounded_before_allocation() {
    // A send claiming u16::MAX recipients with no bytes behind it.
    let mut f = vec![VERSION, 0x10];
    f.extend_from_slice(&7u64.to_be_bytes());
    f.extend_from_slice(&0u16.to_be_bytes());
    f.extend_from_slice(&0u32.to_be_bytes());
    f.extend_from_slice(&u16::MAX.to_be_bytes());
    assert_eq!(
        Frame::decode(&f),
        Err(DecodeError::TooLong {
            field: "recipients",
            len: usize::from(u16::MAX),
            max: limits::MAX_RECIPIENTS
        })
    );
    // A deliver claiming a 4 GiB envelope.
    let mut f = vec![VERSION, 0x12];
    f.extend_from_slice(&[0; 16]);
    f.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        Frame::decode(&f),
        Err(DecodeError::TooLong { field: "envelope", .. })
    ));
    // A send claiming a shared body above the bound, and one whose first head is.
    let mut f = vec![VERSION, 0x10];
    f.extend_from_slice(&7u64.to_be_bytes());
    f.extend_from_slice(&0u16.to_be_bytes());
    f.extend_from_slice(&((limits::MAX_ENVELOPE_LEN + 1) as u32).to_be_bytes());
    assert_eq!(
        Frame::decode(&f),
        Err(DecodeError::TooLong {
            field: "body",
            len: limits::MAX_ENVELOPE_LEN + 1,
            max: limits::MAX_ENVELOPE_LEN
        })
    );
    let mut f = vec![VERSION, 0x10];
    f.extend_from_slice(&7u64.to_be_bytes());
    f.extend_from_slice(&0u16.to_be_bytes());
    f.extend_from_slice(&0u32.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes());
    f.extend_from_slice(&[0; 36]);
    f.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        Frame::decode(&f),
        Err(DecodeError::TooLong { field: "head", .. })
    ));
    // A count within bounds but beyond the input.
    let mut f = vec![VERSION, 0x10];
    f.extend_from_slice(&7u64.to_be_bytes());
    f.extend_from_slice(&100u16.to_be_bytes());
    assert!(matches!(Frame::decode(&f), Err(DecodeError::Truncated { .. })));
}

#[test]
fn versions_and_types_are_checked() {
    assert_eq!(
        Frame::decode(&[2, 0x03]),
        Err(DecodeError::UnsupportedVersion { version: 2 })
    );
    assert_eq!(
        Frame::decode(&[1, 0x55]),
        Err(DecodeError::UnknownType {
            field: "frame type",
            value: 0x55
        })
    );
    assert_eq!(
        Frame::decode(&[]),
        Err(DecodeError::Truncated {
            needed: 1,
            remaining: 0
        })
    );
    assert_eq!(
        Frame::decode(&[1, 0x13, 0]),
        Err(DecodeError::TrailingBytes { count: 1 })
    );
}

/// A profile ciphertext is 1..=MAX_PROFILE_BYTES bytes, in the upload and in the answer;
/// the version is exactly 32 bytes.
#[test]
fn profile_bodies_are_bounded() {
    let max = limits::MAX_PROFILE_BYTES;
    let upload = |len: usize| ProfileUpload {
        version: [7; 32],
        ciphertext: vec![0xab; len],
    };
    let answer = |len: usize| ProfileBody {
        ciphertext: vec![0xab; len],
    };
    for len in [1, max] {
        round_trip(&upload(len));
        round_trip(&answer(len));
    }
    let empty = DecodeError::Invalid {
        field: "profile ciphertext",
    };
    assert_eq!(ProfileUpload::decode(&upload(0).encode()), Err(empty.clone()));
    assert_eq!(ProfileBody::decode(&answer(0).encode()), Err(empty));
    let too_long = DecodeError::TooLong {
        field: "profile ciphertext",
        len: max + 1,
        max,
    };
    assert_eq!(ProfileUpload::decode(&upload(max + 1).encode()), Err(too_long.clone()));
    assert_eq!(ProfileBody::decode(&answer(max + 1).encode()), Err(too_long));
    // A length far beyond the input is refused before anything is allocated.
    let mut huge = vec![VERSION];
    huge.extend_from_slice(&[7; 32]);
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        ProfileUpload::decode(&huge),
        Err(DecodeError::TooLong {
            field: "profile ciphertext",
            ..
        })
    ));
    // The layout, byte by byte.
    let b = ProfileUpload {
        version: [0x11; 32],
        ciphertext: b"ct".to_vec(),
    }
    .encode();
    let mut want = vec![VERSION];
    want.extend_from_slice(&[0x11; 32]);
    want.extend_from_slice(&[0, 0, 0, 2]);
    want.extend_from_slice(b"ct");
    assert_eq!(b, want);
    assert_eq!(
        ProfileBody {
            ciphertext: b"ct".to_vec()
        }
        .encode(),
        [VERSION, 0, 0, 0, 2, b'c', b't']
    );
}

proptest! {
    #[test]
    fn blob_bodies_round_trip(
        epoch in any::<u32>(),
        public in any::<[u8; 32]>(),
        lens in (any::<u64>(), any::<u32>()),
        points in vec(any::<[u8; 32]>(), 1..=limits::MAX_TOKEN_BATCH),
        proof in vec(any::<u8>(), 64),
        length in 1..=u64::MAX,
        received in any::<u64>(),
    ) {
        round_trip(&BlobIssuer { epoch, public, max_blob_len: lens.0, tokens_per_day: lens.1 });
        round_trip(&TokenIssue { epoch, blinded: points.clone() });
        let proof: [u8; 64] = proof.try_into().unwrap();
        round_trip(&TokenIssued { epoch, evaluated: points, proof });
        let mut token = [0u8; 64];
        token[..32].copy_from_slice(&public);
        round_trip(&BlobCreate { epoch, token, length });
        round_trip(&BlobCreated { id: public });
        round_trip(&BlobStatus { length, received: received % length });
    }
}

/// Blob bodies: their layouts, and batches, lengths and progress out of range refused.
#[test]
fn blob_bodies_are_checked() {
    let issuer = BlobIssuer {
        epoch: 7,
        public: [1; 32],
        max_blob_len: 9,
        tokens_per_day: 100,
    };
    let b = issuer.encode();
    assert_eq!(b.len(), 1 + 4 + 32 + 8 + 4);
    assert_eq!(&b[..5], &[1, 0, 0, 0, 7]);
    let empty = TokenIssue {
        epoch: 1,
        blinded: vec![],
    }
    .encode();
    assert_eq!(
        TokenIssue::decode(&empty),
        Err(DecodeError::Invalid {
            field: "blinded points"
        })
    );
    let too_many = TokenIssue {
        epoch: 1,
        blinded: vec![[2; 32]; limits::MAX_TOKEN_BATCH + 1],
    }
    .encode();
    assert!(matches!(
        TokenIssue::decode(&too_many),
        Err(DecodeError::TooLong { .. })
    ));
    let issued = TokenIssued {
        epoch: 1,
        evaluated: vec![[3; 32]; 2],
        proof: [4; 64],
    }
    .encode();
    assert_eq!(issued.len(), 1 + 4 + 2 + 64 + 64);
    let create = BlobCreate {
        epoch: 2,
        token: [5; 64],
        length: 0,
    }
    .encode();
    assert_eq!(create.len(), 1 + 4 + 64 + 8);
    assert_eq!(
        BlobCreate::decode(&create),
        Err(DecodeError::Invalid { field: "blob length" })
    );
    let status = BlobStatus { length: 3, received: 4 }.encode();
    assert_eq!(
        BlobStatus::decode(&status),
        Err(DecodeError::Invalid { field: "blob received" })
    );
    let shown = format!(
        "{:?}",
        BlobCreate {
            epoch: 2,
            token: [0xa7; 64],
            length: 10
        }
    );
    assert_eq!(shown, "BlobCreate { epoch: 2, length: 10, .. }");
}

/// The profile bodies' `Debug` shows lengths, never the version or the ciphertext.
#[test]
fn profile_debug_shows_lengths_only() {
    let u = ProfileUpload {
        version: [0x5a; 32],
        ciphertext: vec![0xc3; 40],
    };
    let shown = format!("{u:?}");
    assert_eq!(shown, "ProfileUpload { ciphertext_len: 40, .. }");
    let shown = format!(
        "{:?}",
        ProfileBody {
            ciphertext: vec![0xc3; 9]
        }
    );
    assert_eq!(shown, "ProfileBody { ciphertext_len: 9 }");
}

#[test]
fn prekey_slots_check_kinds() {
    let f = fixtures();
    // A last-resort key in the one-time list is refused.
    let bad = PreKeyUpload {
        kem_prekeys: vec![f.kem_last_resort[0].clone()],
        ..PreKeyUpload::default()
    };
    assert_eq!(
        PreKeyUpload::decode(&bad.encode()),
        Err(DecodeError::Invalid { field: "ML-KEM prekey" })
    );
}

#[test]
fn auth_message_layout() {
    let c = Challenge {
        nonce: [1; 32],
        relay_id: relay_id("https://relay.example"),
        timestamp_ms: 0x0102_0304_0506_0708,
    };
    let m = c.signed_message(&AccountId([9; 32]), DeviceId(0x0a0b_0c0d));
    assert_eq!(&m[..19], b"Sotto-v1 relay auth");
    assert_eq!(&m[19..51], &c.relay_id);
    assert_eq!(&m[51..83], &[1; 32]);
    assert_eq!(&m[83..91], &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(&m[91..123], &[9; 32]);
    assert_eq!(&m[123..], &[0x0a, 0x0b, 0x0c, 0x0d]);
    assert_ne!(relay_id("https://relay.example"), relay_id("https://other.example"));
}

#[test]
fn frame_sizes() {
    let c = Frame::Challenge(Challenge {
        nonce: [0; 32],
        relay_id: [0; 32],
        timestamp_ms: 0,
    });
    assert_eq!(c.encode().len(), frame::sizes::CHALLENGE_FRAME);
    let a = Frame::AuthResponse(AuthResponse {
        account_id: AccountId([0; 32]),
        device_id: DeviceId(0),
        nonce: [0; 32],
        signature: Signature([0; 64]),
    });
    assert_eq!(a.encode().len(), frame::sizes::AUTH_RESPONSE_FRAME);
}

/// The shared-body layout, byte by byte: the body sits once between the access keys and
/// the recipient count, and each recipient carries only its head.
#[test]
fn send_layout_carries_the_body_once() {
    let send = Frame::Send(Send {
        message_id: 0x0102_0304_0506_0708,
        access: vec![],
        body: b"BODY".to_vec(),
        recipients: vec![
            Recipient {
                account_id: AccountId([0xaa; 32]),
                device_id: DeviceId(1),
                head: b"h1".to_vec(),
            },
            Recipient {
                account_id: AccountId([0xbb; 32]),
                device_id: DeviceId(2),
                head: vec![],
            },
        ],
    });
    let mut want = vec![VERSION, 0x10, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0];
    want.extend_from_slice(&[0, 0, 0, 4]);
    want.extend_from_slice(b"BODY");
    want.extend_from_slice(&[0, 2]);
    want.extend_from_slice(&[0xaa; 32]);
    want.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
    want.extend_from_slice(b"h1");
    want.extend_from_slice(&[0xbb; 32]);
    want.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 0]);
    assert_eq!(send.encode(), want);
    assert_eq!(send.encoded_len_hint(), want.len());
    assert_eq!(Frame::decode(&want), Ok(send));
    let r = Recipient {
        account_id: AccountId([0; 32]),
        device_id: DeviceId(0),
        head: vec![0; 3],
    };
    assert_eq!(r.envelope_len(4), 7);
}

proptest! {
    /// A fan-out's frame grows by one head per recipient, never by the body: the encoding
    /// (and the size estimate a relay budgets with) counts the body once.
    #[test]
    fn send_counts_the_body_once(
        body in bytes(2000),
        heads in vec(bytes(40), 0..40),
        keys in 0usize..3,
    ) {
        let recipients: Vec<Recipient> = heads
            .into_iter()
            .enumerate()
            .map(|(i, head)| Recipient { account_id: AccountId([i as u8; 32]), device_id: DeviceId(i as u32), head })
            .collect();
        let access = (0..keys)
            .map(|i| Access { account_id: AccountId([i as u8; 32]), key: AccessKey([7; 32]) })
            .collect();
        let heads_len: usize = recipients.iter().map(|r| 40 + r.head.len()).sum();
        let f = Frame::Send(Send { message_id: 1, access, body: body.clone(), recipients });
        let enc = f.encode();
        prop_assert_eq!(enc.len(), 2 + 8 + 2 + 64 * keys + 4 + body.len() + 2 + heads_len);
        prop_assert_eq!(f.encoded_len_hint(), enc.len());
        let Ok(Frame::Send(back)) = Frame::decode(&enc) else {
            return Err(TestCaseError::fail("a Send decodes"));
        };
        for r in &back.recipients {
            prop_assert_eq!(r.envelope_len(back.body.len()), r.head.len() + body.len());
        }
        prop_assert_eq!(back.body, body);
    }
}
