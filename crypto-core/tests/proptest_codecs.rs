//! Property tests of every codec: encode → decode round-trips, and any byte string (or
//! any mutation of a valid encoding) decodes to a value or a typed error, never a panic.

use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use sotto_crypto::ratchet::Header;
use sotto_crypto::*;

fn device(seed: u64, id: u32) -> (AccountKey, Device) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let ak = AccountKey::generate(&mut rng);
    let d = Device::generate(ak.account_id(), DeviceId(id), &mut rng);
    (ak, d)
}

fn bundle(seed: u64, with_opk: bool) -> PreKeyBundle {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let (_, d) = device(seed, 1);
    PreKeyBundle {
        identity: d.identity(),
        signed_prekey: d.generate_signed_prekey(1, &mut rng).public().clone(),
        one_time_prekey: with_opk.then(|| d.generate_one_time_prekeys(5, 1, &mut rng)[0].public().clone()),
        kem_prekey: d
            .generate_kem_prekey(2, seed.is_multiple_of(2), &mut rng)
            .public()
            .clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn account_id_text_round_trips(bytes in any::<[u8; 32]>()) {
        let id = AccountId(bytes);
        prop_assert_eq!(id.to_string().parse::<AccountId>(), Ok(id));
    }

    #[test]
    fn any_string_parses_or_errs(s in ".{0,60}") {
        let _ = s.parse::<AccountId>();
    }

    #[test]
    fn x25519_prekey_round_trips(kind in 1u8..=2, id in any::<u32>(), public in any::<[u8; 32]>(), sig in any::<[u8; 32]>()) {
        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(&sig);
        let k = X25519PreKey {
            kind: if kind == 1 { PreKeyKind::Signed } else { PreKeyKind::OneTime },
            id,
            public: X25519PublicKey(public),
            signature: Signature(signature),
        };
        let mut enc = Vec::new();
        k.encode_into(&mut enc);
        prop_assert_eq!(enc.len(), X25519PreKey::ENCODED_LEN);
        prop_assert_eq!(X25519PreKey::decode(&enc), Ok(k));
    }

    #[test]
    fn header_round_trips(ratchet in any::<[u8; 32]>(), pn in any::<u32>(), n in any::<u32>(), salt in any::<[u8; 16]>(), body in proptest::collection::vec(any::<u8>(), 16..64)) {
        let h = Header { ratchet_key: X25519PublicKey(ratchet), previous_chain_length: pn, index: n, salt };
        let mut msg = h.encode().to_vec();
        msg.extend_from_slice(&body);
        let (parsed, rest) = Header::parse(&msg).unwrap();
        prop_assert_eq!(parsed, h);
        prop_assert_eq!(rest, &body[..]);
    }

    #[test]
    fn device_list_round_trips(seed in any::<u64>(), ids in proptest::collection::btree_set(any::<u32>(), 1..6), version in 1..=MAX_VERSION, at in any::<u64>()) {
        let (ak, _) = device(seed, 0);
        let entries: Vec<DeviceEntry> = ids
            .iter()
            .map(|&i| Device::generate(ak.account_id(), DeviceId(i), &mut ChaCha20Rng::seed_from_u64(seed ^ u64::from(i))).entry())
            .collect();
        let list = ak.sign_device_list(version, at, entries.clone()).unwrap();
        let back = SignedDeviceList::from_bytes(list.signed().as_bytes()).unwrap().verify(&ak.account_id()).unwrap();
        prop_assert_eq!(back.devices(), &entries[..]);
        prop_assert_eq!(back.version(), version);
        prop_assert_eq!(back.created_at_ms(), at);
    }

    #[test]
    fn bundle_round_trips(seed in any::<u64>(), with_opk in any::<bool>()) {
        let b = bundle(seed, with_opk);
        let enc = b.encode();
        prop_assert_eq!(PreKeyBundle::decode(&enc), Ok(b.clone()));
        prop_assert!(b.verify().is_ok());
    }

    #[test]
    fn any_bytes_decode_or_err(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
        let (_, d) = device(1, 1);
        let id = d.account_id();
        if let Ok(l) = SignedDeviceList::from_bytes(&bytes) {
            prop_assert!(l.verify(&id).is_err());
            let _ = l.account_key_and_version();
        }
        let _ = PreKeyBundle::decode(&bytes);
        let _ = PreKeyMessage::decode(&bytes);
        let _ = X25519PreKey::decode(&bytes);
        let _ = KemPreKey::decode(&bytes);
        let _ = Header::parse(&bytes);
        prop_assert!(open(&d, &bytes).is_err());
        let key = PickleKey::new([1; 32]);
        prop_assert!(Session::unpickle(&bytes, &key).is_err());
        prop_assert!(Device::unpickle(&bytes, &key).is_err());
    }

    #[test]
    fn mutated_bundles_decode_or_err(seed in 0u64..4, pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let enc = bundle(seed, true).encode();
        let mut m = enc.clone();
        let i = pos.index(m.len());
        m[i] = byte;
        if let (Ok(b), true) = (PreKeyBundle::decode(&m), m != enc) {
            // The only decodable changes are to keys or signatures: verification fails.
            prop_assert!(b.verify().is_err() || b.encode() == m);
        }
        prop_assert!(PreKeyBundle::decode(&enc[..cut.index(enc.len())]).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// An attachment of any length, fed to the encryptor and the decryptor in any pieces,
    /// comes back whole; one changed byte of the ciphertext makes it fail.
    #[test]
    fn attachment_streams_round_trip_in_any_pieces(
        len in 0usize..200_000,
        enc_piece in 1usize..100_000,
        dec_piece in 1usize..100_000,
        seed in any::<u64>(),
        flip in any::<prop::sample::Index>(),
    ) {
        use sotto_crypto::attachment::{Decryptor, Encryptor};
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let key = AttachmentKey::generate(&mut rng);
        let plain: Vec<u8> = (0..len).map(|i| (i as u64 ^ seed) as u8).collect();
        let mut e = Encryptor::new(&key, len as u64, &mut rng).unwrap();
        let mut ct = e.header().to_vec();
        for piece in plain.chunks(enc_piece) {
            e.update(piece, &mut ct).unwrap();
        }
        let digest = e.finish(&mut ct).unwrap();
        let open = |ct: &[u8]| -> Result<Vec<u8>, AttachmentError> {
            let mut d = Decryptor::new(&key, len as u64, digest)?;
            let mut out = Vec::new();
            for piece in ct.chunks(dec_piece) {
                d.update(piece, &mut out)?;
            }
            d.finish()?;
            Ok(out)
        };
        prop_assert_eq!(open(&ct).unwrap(), plain);
        let mut bad = ct.clone();
        let at = flip.index(bad.len());
        bad[at] ^= 0x40;
        prop_assert!(open(&bad).is_err());
    }
}
