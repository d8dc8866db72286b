//! Known-answer vectors: `crypto-core/tests/vectors/*.json`, generated from fixed seeds.
//! The test regenerates every file and asserts it is unchanged; after a deliberate
//! format change rewrite them (and update docs/protocol.md §12 in the same commit) with
//! `SOTTO_WRITE_VECTORS=1 cargo test -p sotto-crypto --lib vectors -- --test-threads=1`.
//! More files are generated in `vectors_more.rs`.
//!
//! Every random value an operation consumed is exported in draw order (`draws`), with
//! private keys in raw form: X25519 scalars as stored, Ed25519 32-byte seeds, ML-KEM
//! 64-byte seeds `d ‖ z`. The PQXDH file also recomputes the key agreement from those
//! raw inputs with the formula of docs/protocol.md §5, independently of `initiate`.

use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, RngCore, SeedableRng};
use serde_json::{Value, json};

use crate::kdf::{hkdf, info, sha256};
use crate::keys::{KemSecret, X25519Secret};
use crate::ratchet::{self, test_hooks};
use crate::*;

/// An RNG that records every byte string it hands out.
pub(crate) struct Recorder {
    inner: ChaCha20Rng,
    draws: Vec<Vec<u8>>,
}

impl Recorder {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            inner: ChaCha20Rng::seed_from_u64(seed),
            draws: Vec::new(),
        }
    }

    pub(crate) fn take(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.draws)
    }

    pub(crate) fn take_hex(&mut self) -> Value {
        json!(self.take().iter().map(hex::encode).collect::<Vec<_>>())
    }
}

impl RngCore for Recorder {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.inner.fill_bytes(dest);
        self.draws.push(dest.to_vec());
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for Recorder {}

pub(crate) fn h(b: &[u8]) -> String {
    hex::encode(b)
}

pub(crate) fn arr32(v: &[u8]) -> [u8; 32] {
    v.try_into().unwrap()
}

pub(crate) fn x_record(k: &X25519PreKey) -> String {
    let mut v = Vec::new();
    k.encode_into(&mut v);
    h(&v)
}

pub(crate) fn kem_record(k: &KemPreKey) -> String {
    let mut v = Vec::new();
    k.encode_into(&mut v);
    h(&v)
}

pub(crate) struct Keys {
    pub(crate) ak: AccountKey,
    pub(crate) ak_seed: Vec<u8>,
    pub(crate) device: Device,
    pub(crate) dsk_seed: Vec<u8>,
    pub(crate) ik_scalar: Vec<u8>,
    pub(crate) list: DeviceList,
    pub(crate) spk: X25519PreKeySecret,
    pub(crate) spk_scalar: Vec<u8>,
    pub(crate) opk: X25519PreKeySecret,
    pub(crate) opk_scalar: Vec<u8>,
    pub(crate) kem: KemPreKeySecret,
    pub(crate) kem_seed: Vec<u8>,
}

pub(crate) fn make_keys(rng: &mut Recorder) -> Keys {
    let ak = AccountKey::generate(rng);
    let ak_seed = rng.take().remove(0);
    let device = Device::generate(ak.account_id(), DeviceId(1), rng);
    let mut d = rng.take();
    let (dsk_seed, ik_scalar) = (d.remove(0), d.remove(0));
    let list = ak.sign_device_list(1, 1_750_000_000_000, vec![device.entry()]).unwrap();
    let spk = device.generate_signed_prekey(1, rng);
    let spk_scalar = rng.take().remove(0);
    let opk = device.generate_one_time_prekeys(100, 1, rng).remove(0);
    let opk_scalar = rng.take().remove(0);
    let kem = device.generate_kem_prekey(7, false, rng);
    let kem_seed = rng.take().remove(0);
    Keys {
        ak,
        ak_seed,
        device,
        dsk_seed,
        ik_scalar,
        list,
        spk,
        spk_scalar,
        opk,
        opk_scalar,
        kem,
        kem_seed,
    }
}

pub(crate) fn keys_json(k: &Keys) -> Value {
    let id = k.device.identity();
    let mut identity_encoding = Vec::new();
    id.encode_into(&mut identity_encoding);
    json!({
        "account": {
            "seed": h(&k.ak_seed),
            "public_key": h(k.ak.public_key().as_bytes()),
            "account_id": h(k.ak.account_id().as_bytes()),
            "account_id_text": k.ak.account_id().to_string(),
        },
        "device": {
            "device_id": id.device_id.0,
            "dsk_seed": h(&k.dsk_seed),
            "dsk_public": h(id.signing_key.as_bytes()),
            "ik_scalar": h(&k.ik_scalar),
            "ik_public": h(id.identity_key.as_bytes()),
            "identity_encoding": h(&identity_encoding),
        },
        "signed_prekey": { "id": 1, "scalar": h(&k.spk_scalar), "record": x_record(k.spk.public()) },
        "one_time_prekey": { "id": 100, "scalar": h(&k.opk_scalar), "record": x_record(k.opk.public()) },
        "kem_prekey": { "id": 7, "kind": 3, "seed": h(&k.kem_seed), "record": kem_record(k.kem.public()) },
        "device_list": h(k.list.signed().as_bytes()),
    })
}

fn keys_vectors() -> Value {
    let mut rng = Recorder::new(1);
    let k = make_keys(&mut rng);
    json!({
        "description": "Account key, account id, device keys, prekey records (kind ‖ id ‖ public ‖ signature) and a one-device signed device list (version 1, created_at 1750000000000). Draws: AK seed; DSK seed, IK scalar; SPK scalar; OPK scalar; ML-KEM seed.",
        "keys": keys_json(&k),
    })
}

fn device_list_vectors() -> Value {
    let mut rng = Recorder::new(2);
    let ak = AccountKey::generate(&mut rng);
    let devices: Vec<Device> = [3u32, 1, 2]
        .iter()
        .map(|&i| Device::generate(ak.account_id(), DeviceId(i), &mut rng))
        .collect();
    let entries = |ids: &[u32]| -> Vec<DeviceEntry> {
        devices
            .iter()
            .filter(|d| ids.contains(&d.identity().device_id.0))
            .map(Device::entry)
            .collect()
    };
    let lk1 = ak.list_key(1).unwrap();
    let lk2 = ak.list_key(2).unwrap();
    // v1: devices 3 and 1, device 1 holds the list key; v2 adds device 2 (no list key);
    // v3, under the epoch-2 list key, removes device 1 and makes device 3 the holder.
    let v1 = lk1
        .sign_device_list(1, 1_750_000_000_000, entries(&[3, 1]), &[DeviceId(1)])
        .unwrap();
    let v2 = lk1
        .sign_device_list(2, 1_750_000_100_000, entries(&[1, 2, 3]), &[DeviceId(1)])
        .unwrap();
    let v3 = lk2
        .sign_device_list(3, 1_750_000_200_000, entries(&[2, 3]), &[DeviceId(3)])
        .unwrap();
    let mut tampered = v2.signed().as_bytes().to_vec();
    tampered[160] ^= 1;
    let account_seed = rng.take().remove(0);
    // Another account listing device 1's entry as its own; a jump past MAX_VERSION_STEP;
    // device 1 dropped under the epoch-1 key; device 1 signing again after v3.
    let mut other_rng = ChaCha20Rng::seed_from_u64(20); // test only
    let other = AccountKey::generate(&mut other_rng);
    let foreign = other
        .sign_device_list(1, 1_750_000_000_000, vec![devices[1].entry()])
        .unwrap();
    let jump = lk1
        .sign_device_list(
            2 + MAX_VERSION_STEP,
            1_750_000_200_000,
            entries(&[1, 2, 3]),
            &[DeviceId(1)],
        )
        .unwrap();
    let holder_removed = lk1
        .sign_device_list(3, 1_750_000_200_000, entries(&[2, 3]), &[])
        .unwrap();
    let revoked = lk1
        .sign_device_list(4, 1_750_000_300_000, entries(&[1, 2, 3]), &[DeviceId(1)])
        .unwrap();
    let err = |e: DeviceListError| e.name();
    let list_keys: Vec<Value> = [&lk1, &lk2]
        .iter()
        .map(|k| {
            let (_, _, cert) = k.parts();
            json!({"epoch": k.epoch(), "seed": h(k.dangerous_export_seed().as_slice()), "public": h(k.public_key().as_bytes()), "certificate": h(&cert.0)})
        })
        .collect();
    json!({
        "description": "Signed device lists (body version 3, docs/protocol.md §4). Devices are generated with ids 3, 1, 2 in that order. v1 (epoch 1) lists devices 3 and 1 (encoded sorted), device 1 holding the list key; v2 (epoch 1) lists all three; v3 (epoch 2) lists devices 2 and 3, device 3 holding the list key. Each list key is derived from the account seed (list_keys: epoch, seed, public key, certificate). `tampered` is v2 with byte 160 flipped and must fail verification. `errors`: `foreign_entry` is a list of another account (`other_account_id`) naming device 1's entry, refused at verification; the others verify alone but are refused as an update of the pinned list named: `version_jump` past MAX_VERSION_STEP, `holder_removed` drops device 1 under the epoch-1 key, `stale_list_key` is signed by the epoch-1 key after v3.",
        "account_seed": h(&account_seed),
        "max_version_step": MAX_VERSION_STEP,
        "v1_version": v1.version(), "v1_created_at_ms": v1.created_at_ms(),
        "v2_version": v2.version(), "v2_created_at_ms": v2.created_at_ms(),
        "v3_version": v3.version(), "v3_created_at_ms": v3.created_at_ms(),
        "account_id": h(ak.account_id().as_bytes()),
        "list_keys": list_keys,
        "devices": devices.iter().map(|d| {
            let id = d.identity();
            json!({"device_id": id.device_id.0, "dsk_public": h(id.signing_key.as_bytes()), "ik_public": h(id.identity_key.as_bytes()), "binding": h(&d.entry().binding.0)})
        }).collect::<Vec<_>>(),
        "v1": h(v1.signed().as_bytes()),
        "v2": h(v2.signed().as_bytes()),
        "v3": h(v3.signed().as_bytes()),
        "tampered": h(&tampered),
        "errors": [
            {"name": "foreign_entry", "other_account_id": h(other.account_id().as_bytes()), "list": h(foreign.signed().as_bytes()), "error": err(foreign.signed().verify(&other.account_id()).unwrap_err())},
            {"name": "version_jump", "pinned": "v1", "version": jump.version(), "list": h(jump.signed().as_bytes()), "error": err(v1.check_update(&jump).unwrap_err())},
            {"name": "holder_removed", "pinned": "v2", "version": holder_removed.version(), "list": h(holder_removed.signed().as_bytes()), "error": err(v2.check_update(&holder_removed).unwrap_err())},
            {"name": "stale_list_key", "pinned": "v3", "version": revoked.version(), "list": h(revoked.signed().as_bytes()), "error": err(v3.check_update(&revoked).unwrap_err())},
        ],
    })
}

/// Which PQXDH run: the bundle carries an OPK and a one-time ML-KEM prekey, no OPK, or no
/// OPK and Bob's last-resort ML-KEM prekey (kind 0x04, id 9).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pqxdh {
    WithOpk,
    WithoutOpk,
    LastResort,
}

/// PQXDH between Alice (initiator) and Bob, recomputed from raw inputs.
pub(crate) fn pqxdh_vectors(variant: Pqxdh) -> (Value, Recorder, Keys, Keys, Session, Session) {
    let with_opk = variant == Pqxdh::WithOpk;
    let mut rng = Recorder::new(match variant {
        Pqxdh::WithOpk => 3,
        Pqxdh::WithoutOpk => 4,
        Pqxdh::LastResort => 7,
    });
    let alice = make_keys(&mut rng);
    let mut bob = make_keys(&mut rng);
    let mut last_resort = Value::Null;
    if variant == Pqxdh::LastResort {
        // Bob's one-time ML-KEM prekeys are exhausted: the relay serves the last-resort key.
        let lr = bob.device.generate_kem_prekey(9, true, &mut rng);
        let seed = rng.take().remove(0);
        last_resort = json!({ "id": 9, "kind": 4, "seed": h(&seed), "record": kem_record(lr.public()) });
        bob.kem = lr;
        bob.kem_seed = seed;
    }
    let bundle = PreKeyBundle {
        identity: bob.device.identity(),
        signed_prekey: bob.spk.public().clone(),
        one_time_prekey: with_opk.then(|| bob.opk.public().clone()),
        kem_prekey: bob.kem.public().clone(),
    };
    let mut a = initiate(&alice.device, &bob.list, &bundle, &mut rng).unwrap();
    let draws = rng.take();
    let (ek, m, ratchet0) = (arr32(&draws[0]), arr32(&draws[1]), arr32(&draws[2]));

    // Independent recomputation (docs/protocol.md §5).
    let ek_s = X25519Secret::from_bytes(&ek);
    let ik_a = X25519Secret::from_bytes(&arr32(&alice.ik_scalar));
    let dh1 = ik_a.dh(&bundle.signed_prekey.public).unwrap();
    let dh2 = ek_s.dh(&bob.device.identity().identity_key).unwrap();
    let dh3 = ek_s.dh(&bundle.signed_prekey.public).unwrap();
    let dh4 = with_opk.then(|| ek_s.dh(&bob.opk.public().public).unwrap());
    let (ct, ss) = bundle.kem_prekey.public.encapsulate(&zeroize::Zeroizing::new(m));
    let bob_kem = KemSecret::from_seed(&bob.kem_seed.clone().try_into().unwrap());
    assert_eq!(*bob_kem.decapsulate(&ct), *ss);
    let ad = ratchet::session_ad(&alice.device.identity(), &bob.device.identity());
    let first_text = b"Hello Bob";
    let first = a.encrypt(first_text, &mut rng).unwrap();
    let first_draws = rng.take_hex();
    let first_mk = test_hooks::take();
    let pm = PreKeyMessage::decode(&first.bytes).unwrap();
    let opk_bytes: &[u8] = if with_opk {
        bob.opk.public().public.as_bytes()
    } else {
        &[]
    };
    let th = sha256(&[
        &ad,
        bundle.signed_prekey.public.as_bytes(),
        opk_bytes,
        bundle.kem_prekey.public.as_bytes(),
        pm.prefix,
    ]);
    let mut ikm = Vec::new();
    ikm.extend_from_slice(&*dh1);
    ikm.extend_from_slice(&*dh2);
    ikm.extend_from_slice(&*dh3);
    if let Some(d) = &dh4 {
        ikm.extend_from_slice(&**d);
    }
    ikm.extend_from_slice(&*ss);
    let okm = hkdf::<64>(&[0u8; 32], &ikm, &[info::PQXDH, &th]);
    let (root, ..) = a.test_keys();
    assert_eq!(root, okm[..32], "PQXDH root key differs from the documented formula");
    assert_eq!(pm.base_key, ek_s.public());
    assert_eq!(&pm.kem_ciphertext[..], &ct[..]);

    let r = respond(
        &bob.device,
        &alice.list,
        &pm,
        &bob.spk,
        with_opk.then_some(&bob.opk),
        &bob.kem,
    )
    .unwrap();
    assert_eq!(r.plaintext, first_text);
    assert_eq!(r.session.test_keys().0, okm[..32]);
    let bundle_bytes = bundle.encode();
    let mut v = json!({
        "description": "PQXDH: Alice initiates from Bob's bundle and sends the first message. Draws of initiate, in order: EK scalar, ML-KEM encapsulation randomness m, Alice's first ratchet scalar; of the first encrypt: the 16-byte header salt. root_key ‖ chain_key = HKDF-SHA256(salt = 0^32, ikm = DH1 ‖ DH2 ‖ DH3 ‖ [DH4] ‖ SS, info = 'Sotto-v1 PQXDH' ‖ TH). Field meanings: docs/protocol.md §12.",
        "with_one_time_prekey": with_opk,
        "kem_prekey_kind": bundle.kem_prekey.kind as u8,
        "alice": crate::vectors_more::party_json(&alice),
        "bob": crate::vectors_more::party_json(&bob),
        "bundle": h(&bundle_bytes),
        "draws": { "ek_scalar": h(&ek), "kem_randomness": h(&m), "first_ratchet_scalar": h(&ratchet0) },
        "ek_public": h(ek_s.public().as_bytes()),
        "dh1": h(&*dh1), "dh2": h(&*dh2), "dh3": h(&*dh3),
        "dh4": dh4.as_ref().map(|d| h(&**d)),
        "kem_ciphertext": h(&ct[..]),
        "kem_shared_secret": h(&*ss),
        "session_ad": h(&ad),
        "prekey_message_prefix": h(pm.prefix),
        "prekey_message_fields": {
            "signed_prekey_id": pm.signed_prekey_id,
            "one_time_prekey_id": pm.one_time_prekey_id,
            "kem_prekey_kind": pm.kem_prekey.0 as u8,
            "kem_prekey_id": pm.kem_prekey.1,
        },
        "transcript_hash": h(&th),
        "root_key": h(&okm[..32]),
        "chain_key": h(&okm[32..]),
        "first_message": {
            "plaintext": h(first_text),
            "draws": first_draws,
            "message_key": h(&first_mk[0]),
            "message_type": first.message_type as u8,
            "bytes": h(&first.bytes),
        },
        "used_prekeys": {
            "one_time_prekey_id": r.used.one_time_prekey_id,
            "kem_one_time_prekey_id": (r.used.kem_prekey.0 == PreKeyKind::KemOneTime).then_some(r.used.kem_prekey.1),
        },
    });
    if variant == Pqxdh::LastResort {
        v["bob_last_resort_kem_prekey"] = last_resort;
    }
    (v, rng, alice, bob, a, r.session)
}

fn ratchet_vectors() -> Value {
    let (pq, rng, _, _, a, b) = pqxdh_vectors(Pqxdh::WithOpk);
    test_hooks::take();
    let mut script = crate::vectors_more::Script::new(rng, a, b);
    let first = hex::decode(pq["first_message"]["bytes"].as_str().unwrap()).unwrap();
    let (header, _) = ratchet::Header::parse(PreKeyMessage::decode(&first).unwrap().message).unwrap();
    script.push_message(json!({
        "index": 0, "sender": "alice", "source": "pqxdh_with_opk.json first_message",
        "plaintext": pq["first_message"]["plaintext"], "draws": pq["first_message"]["draws"],
        "message_key": pq["first_message"]["message_key"],
        "header": { "ratchet_key": h(header.ratchet_key.as_bytes()), "pn": header.previous_chain_length, "n": header.index, "salt": h(&header.salt) },
        "message_type": pq["first_message"]["message_type"], "bytes": pq["first_message"]["bytes"],
    }));
    script.note(json!({"action": "send", "party": "alice", "message": 0}));
    script.note(json!({"action": "deliver", "party": "bob", "message": 0, "via": "respond", "expect": {"plaintext": pq["first_message"]["plaintext"]}}));
    let a1 = script.send(0, "a1");
    let a2 = script.send(0, "a2");
    script.deliver(1, a2);
    script.deliver(1, a1);
    script.deliver(1, a1);
    let b0 = script.send(1, "b0 (Bob's first DH ratchet step)");
    let b1 = script.send(1, "b1");
    script.deliver(0, b1);
    script.deliver(0, b0);
    let a3 = script.send(0, "a3 (Alice's DH ratchet step)");
    script.deliver(1, a3);
    let b2 = script.send(1, "b2");
    script.deliver(0, b2);
    let (messages, steps) = script.finish();
    json!({
        "description": "A Double Ratchet conversation continuing pqxdh_with_opk.json (same seed; the RNG continues after Bob's response). `messages` by index (0 is the PQXDH first message) with their draws (a ratchet scalar when a DH step is due, then the header salt), message key, header fields, plaintext (hex) and bytes; `steps` is the ordered script: each send by a party and each delivery to a party with the expected plaintext or stable error (docs/protocol.md §12.2), including out-of-order delivery, a rejected replay and DH ratchet steps on both sides.",
        "messages": messages,
        "steps": steps,
    })
}

/// Recomputes a sealed-sender v2 envelope from the formula of docs/protocol.md §7 and raw
/// inputs (the draw, the sender's IK scalar, the recipients' identities), independently of
/// `seal`, returning every intermediate value and the envelope of each recipient.
fn sealed_by_formula(
    sender: &Keys,
    kind: u8,
    recipients: &[&Keys],
    content_type: u8,
    content: &[u8],
    draw: &[u8],
) -> (Value, Vec<Vec<u8>>) {
    use chacha20poly1305::aead::AeadInPlace;
    use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
    let enc = |k: &Keys| {
        let mut v = Vec::new();
        k.device.identity().encode_into(&mut v);
        v
    };
    let id_s = enc(sender);
    let mut rcpt = vec![kind];
    for r in recipients {
        rcpt.extend_from_slice(&enc(r));
    }
    let ikm = [
        sha256(&[b"Sotto-v2 sealed sender hedge", &sender.ik_scalar]),
        sha256(&[&[content_type], content]),
        sha256(&[&rcpt]),
    ]
    .concat();
    let m = hkdf::<32>(draw, &ikm, &[b"Sotto-v2 sealed sender message key"]);
    let e_scalar = hkdf::<32>(&[], &*m, &[b"Sotto-v2 sealed sender ephemeral"]);
    let e = X25519Secret::from_bytes(&e_scalar);
    let e_pub = e.public();
    let kn = hkdf::<44>(e_pub.as_bytes(), &*m, &[b"Sotto-v2 sealed sender body"]);
    let mut p = vec![content_type];
    p.extend_from_slice(&id_s);
    p.extend_from_slice(content);
    padding::pad(&mut p, 0);
    let header = [&[2u8, kind][..], e_pub.as_bytes()].concat();
    let tag = ChaCha20Poly1305::new((&kn[..32]).into())
        .encrypt_in_place_detached((&kn[32..]).into(), &header, &mut p)
        .unwrap();
    p.extend_from_slice(&tag);
    let body = p;
    let body_hash = sha256(&[&body]);
    let sender_ik = X25519Secret::from_bytes(&arr32(&sender.ik_scalar));
    let mut per = Vec::new();
    let mut envelopes = Vec::new();
    for r in recipients {
        let id_r = enc(r);
        let salt = [e_pub.as_bytes().as_slice(), &id_r].concat();
        let ik_r = r.device.identity().identity_key;
        let pad = hkdf::<32>(&salt, &*e.dh(&ik_r).unwrap(), &[b"Sotto-v2 sealed sender wrap"]);
        let w: Vec<u8> = m.iter().zip(pad.iter()).map(|(a, b)| a ^ b).collect();
        let mk = hkdf::<32>(&salt, &*sender_ik.dh(&ik_r).unwrap(), &[b"Sotto-v2 sealed sender auth"]);
        let at = crate::kdf::hmac(&mk, &[&header, &w, &id_s, &id_r, &body_hash]);
        per.push(json!({
            "recipient_identity": h(&id_r),
            "wrap_pad": h(&*pad),
            "wrap": h(&w),
            "auth_key": h(&*mk),
            "auth_tag": h(&at[..16]),
        }));
        envelopes.push([&header[..], &w, &at[..16], &body].concat());
    }
    let steps = json!({
        "hedge_ikm": h(&ikm),
        "message_key": h(&*m),
        "ephemeral_scalar": h(&*e_scalar),
        "ephemeral_public": h(e_pub.as_bytes()),
        "body_key": h(&kn[..32]),
        "body_nonce": h(&kn[32..]),
        "body_hash": h(&body_hash),
        "recipients": per,
    });
    (steps, envelopes)
}

fn sealed_vectors() -> Value {
    let mut rng = Recorder::new(5);
    let alice = make_keys(&mut rng);
    let bob = make_keys(&mut rng);
    let carol = make_keys(&mut rng);
    rng.take();
    let single_content = b"sealed hello";
    let env = seal(&alice.device, &bob.device.identity(), 1, single_content, &mut rng).unwrap();
    let single_draws = rng.take();
    let recipients = [bob.device.identity(), carol.device.identity()];
    let multi_content = b"one body, two devices";
    let multi = seal_multi(&alice.device, &recipients, 3, multi_content, &mut rng).unwrap();
    let multi_draws = rng.take();
    let (single_steps, single_envs) = sealed_by_formula(&alice, 1, &[&bob], 1, single_content, &single_draws[0]);
    assert_eq!(single_envs, vec![env.clone()]);
    let (multi_steps, multi_envs) = sealed_by_formula(&alice, 2, &[&bob, &carol], 3, multi_content, &multi_draws[0]);
    assert_eq!(multi_envs, vec![multi.envelope(0).unwrap(), multi.envelope(1).unwrap()]);
    assert_eq!(open(&bob.device, &env).unwrap().content, single_content);
    // Errors, each with the stable name `open` reports.
    let mut legacy = env.clone();
    legacy[0] = 1;
    let mut wrong_binding = bob.device.identity();
    wrong_binding.account_id = carol.device.identity().account_id;
    let misbound = seal(&alice.device, &wrong_binding, 1, single_content, &mut rng).unwrap();
    rng.take();
    let mut spliced = multi.envelope(0).unwrap();
    spliced[34..34 + 48].copy_from_slice(multi.block(1).unwrap());
    let errors: Vec<Value> = [
        ("legacy_version_1", &legacy, &bob),
        ("bob_envelope_opened_by_carol", &multi.envelope(0).unwrap(), &carol),
        ("bound_to_another_account", &misbound, &bob),
        ("carol_block_in_bob_envelope", &spliced, &bob),
    ]
    .into_iter()
    .map(|(name, e, who)| {
        json!({
            "name": name,
            "opened_by": who.device.identity().device_id.0,
            "opened_by_ik_public": h(who.device.identity().identity_key.as_bytes()),
            "envelope": h(e),
            "error": open(&who.device, e).unwrap_err().name(),
        })
    })
    .collect();
    json!({
        "description": "Sealed sender v2 (docs/protocol.md §7). `single`: Alice seals to Bob; `multi`: Alice seals one body to Bob then Carol. `draws` is the one 32-byte draw R of each seal; `steps` recomputes every intermediate value from R, Alice's ik_scalar and the recipients' identity encodings. Each envelope opens with the recipient's ik_scalar and names Alice's identity_encoding as sender. `errors`: envelopes that must be refused, with the error's stable name.",
        "alice": keys_json(&alice),
        "bob": keys_json(&bob),
        "carol": keys_json(&carol),
        "single": {
            "content_type": 1,
            "content": h(single_content),
            "draws": single_draws.iter().map(|d| h(d)).collect::<Vec<_>>(),
            "steps": single_steps,
            "envelope": h(&env),
        },
        "multi": {
            "content_type": 3,
            "content": h(multi_content),
            "draws": multi_draws.iter().map(|d| h(d)).collect::<Vec<_>>(),
            "steps": multi_steps,
            "envelope_bob": h(&multi.envelope(0).unwrap()),
            "envelope_carol": h(&multi.envelope(1).unwrap()),
        },
        "errors": errors,
    })
}

fn safety_vectors() -> Value {
    let mut rng = Recorder::new(6);
    let a = AccountKey::generate(&mut rng);
    let b = AccountKey::generate(&mut rng);
    let seeds = rng.take();
    let n = SafetyNumber::new(&a.public_key(), &b.public_key());
    json!({
        "description": "Safety number between two accounts; qr_alice is Alice's QR payload (her fingerprint first).",
        "alice_seed": h(&seeds[0]), "alice_public_key": h(a.public_key().as_bytes()),
        "bob_seed": h(&seeds[1]), "bob_public_key": h(b.public_key().as_bytes()),
        "number": n.number(),
        "qr_alice": h(&n.qr_bytes()),
    })
}

pub(crate) fn check(name: &str, v: Value) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors");
    let path = format!("{dir}/{name}.json");
    let text = serde_json::to_string_pretty(&v).unwrap() + "\n";
    if std::env::var_os("SOTTO_WRITE_VECTORS").is_some() {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(&path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(committed == text, "{name}.json differs from what the code produces now");
}

#[test]
fn known_answer_vectors_are_unchanged() {
    check("keys", keys_vectors());
    check("device_list", device_list_vectors());
    check("pqxdh_with_opk", pqxdh_vectors(Pqxdh::WithOpk).0);
    check("pqxdh_without_opk", pqxdh_vectors(Pqxdh::WithoutOpk).0);
    check("ratchet", ratchet_vectors());
    check("sealed", sealed_vectors());
    check("safety_number", safety_vectors());
}

/// The vectors verify through the public API alone, as an independent implementation
/// would use them.
#[test]
fn vectors_verify_from_their_own_contents() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors");
    let read = |n: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/{n}.json")).unwrap()).unwrap()
    };
    let hx = |v: &Value| hex::decode(v.as_str().unwrap()).unwrap();
    let dl = read("device_list");
    let id = AccountId(arr32(&hx(&dl["account_id"])));
    let v1 = SignedDeviceList::from_bytes(&hx(&dl["v1"]))
        .unwrap()
        .verify(&id)
        .unwrap();
    let v2 = SignedDeviceList::from_bytes(&hx(&dl["v2"]))
        .unwrap()
        .verify(&id)
        .unwrap();
    assert_eq!(v1.check_update(&v2).unwrap().added, vec![DeviceId(2)]);
    let v3 = SignedDeviceList::from_bytes(&hx(&dl["v3"]))
        .unwrap()
        .verify(&id)
        .unwrap();
    assert_eq!(v2.check_update(&v3).unwrap().removed, vec![DeviceId(1)]);
    assert_eq!(v3.holders(), &[DeviceId(3)]);
    for e in dl["errors"].as_array().unwrap().iter().skip(2) {
        let list = SignedDeviceList::from_bytes(&hx(&e["list"]))
            .unwrap()
            .verify(&id)
            .unwrap();
        let pinned = match e["pinned"].as_str().unwrap() {
            "v2" => &v2,
            _ => &v3,
        };
        assert_eq!(
            pinned.check_update(&list).unwrap_err().name(),
            e["error"].as_str().unwrap()
        );
    }
    assert!(
        SignedDeviceList::from_bytes(&hx(&dl["tampered"]))
            .unwrap()
            .verify(&id)
            .is_err()
    );
    let pq = read("pqxdh_with_opk");
    assert!(PreKeyBundle::decode(&hx(&pq["bundle"])).unwrap().verify().is_ok());
    let sn = read("safety_number");
    let a = Ed25519PublicKey::from_bytes(&arr32(&hx(&sn["alice_public_key"]))).unwrap();
    let b = Ed25519PublicKey::from_bytes(&arr32(&hx(&sn["bob_public_key"]))).unwrap();
    assert_eq!(SafetyNumber::new(&b, &a).number(), sn["number"].as_str().unwrap());
    assert!(SafetyNumber::new(&b, &a).verify_scanned(&hx(&sn["qr_alice"])));
}
