//! Known answers for the link protocol (docs/protocol.md §12A): `tests/vectors/link.json`.
//! Every output is a function of the inputs in the file (no randomness), so another
//! implementation reproduces each field. `SOTTO_WRITE_VECTORS=1` rewrites the file after a
//! deliberate change of the format; otherwise any difference fails.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde_json::{Value, json};
use sotto_crypto::{
    AccountId, AccountKey, Device, DeviceEntry, DeviceId, DeviceIdentity, Ed25519PublicKey, Signature, X25519PublicKey,
};
use sotto_sdk::link::{
    decode_link_accept, decode_link_request, decode_recovery_key, encode_link_accept, encode_link_request,
    encode_recovery_key, fingerprints_match, link_code, link_fingerprint, link_key, parse_code,
};
use sotto_sdk::store::ConversationRecord;

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/link.json")
}

fn arr<const N: usize>(v: &Value) -> [u8; N] {
    hex::decode(v.as_str().unwrap()).unwrap().try_into().unwrap()
}

/// The inputs: fixed bytes, and public keys of a device made once from a seeded
/// generator (only the public keys matter to the link messages).
fn inputs() -> Value {
    let mut rng = ChaCha20Rng::seed_from_u64(1201);
    let ak_seed = [0x11u8; 32];
    let ak = AccountKey::from_seed(&ak_seed);
    let e = Device::generate(ak.account_id(), DeviceId(3), &mut rng).entry();
    json!({
        "account_key_seed": hex::encode(ak_seed),
        "link_secret": hex::encode([0x22u8; 32]),
        "device_id": 3,
        "device_signing_key": hex::encode(e.signing_key.as_bytes()),
        "device_identity_key": hex::encode(e.identity_key.as_bytes()),
        "device_binding": hex::encode(e.binding.0),
        "device_name": "Alice’s phone",
        "access_key": hex::encode([0x55u8; 32]),
        "contacts": [
            {"account_id": hex::encode([0x33u8; 32]), "accepted": true, "access_key": hex::encode([0x66u8; 32])},
            {"account_id": hex::encode([0x44u8; 32]), "accepted": false, "access_key": null},
        ],
    })
}

fn outputs(i: &Value) -> Value {
    let ak = AccountKey::from_seed(&arr(&i["account_key_seed"]));
    let account = ak.account_id();
    let secret: [u8; 32] = arr(&i["link_secret"]);
    let device = DeviceIdentity {
        account_id: account,
        device_id: DeviceId(i["device_id"].as_u64().unwrap() as u32),
        signing_key: Ed25519PublicKey::from_bytes(&arr(&i["device_signing_key"])).unwrap(),
        identity_key: X25519PublicKey(arr(&i["device_identity_key"])),
    };
    let entry = DeviceEntry {
        device_id: device.device_id,
        signing_key: device.signing_key,
        identity_key: device.identity_key,
        binding: Signature(arr(&i["device_binding"])),
    };
    let name = i["device_name"].as_str().unwrap();
    let contacts: Vec<ConversationRecord> = i["contacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| ConversationRecord {
            peer: AccountId(arr(&c["account_id"])),
            accepted: c["accepted"].as_bool().unwrap(),
            access_key: c["access_key"].as_str().map(|_| arr(&c["access_key"])),
            ..ConversationRecord::new(AccountId([0; 32]))
        })
        .collect();
    let access: [u8; 32] = arr(&i["access_key"]);
    let request = encode_link_request(&secret, &account, &entry, name);
    let lk = ak.list_key(1).unwrap();
    let with_lk = encode_link_accept(&secret, &account, device.device_id, Some(&lk), Some(&access), &contacts);
    let without_lk = encode_link_accept(&secret, &account, device.device_id, None, Some(&access), &contacts);
    let long_name = "x".repeat(80);
    json!({
        "account_id": account.to_string(),
        "account_id_hex": hex::encode(account.as_bytes()),
        "code": link_code(&account, &secret),
        "request_key": hex::encode(link_key(&secret, b"Sotto-v1 link request").as_slice()),
        "accept_key": hex::encode(link_key(&secret, b"Sotto-v1 link accept").as_slice()),
        "request": hex::encode(&request),
        "request_long_name_truncated_to_64": hex::encode(encode_link_request(&secret, &account, &entry, &long_name)),
        "fingerprint": link_fingerprint(&device),
        "list_key_seed_epoch_1": hex::encode(lk.dangerous_export_seed().as_slice()),
        "accept_with_list_key": hex::encode(&with_lk),
        "accept_without_list_key": hex::encode(&without_lk),
        "recovery_key": encode_recovery_key(&ak).as_str(),
    })
}

#[test]
fn link_vectors_replay() {
    let fresh = json!({
        "description": "docs/protocol.md §12A: link code, request, fingerprint, answer, recovery key. Bytes are hex.",
        "inputs": inputs(),
    });
    let fresh = json!({
        "description": fresh["description"],
        "inputs": fresh["inputs"],
        "outputs": outputs(&fresh["inputs"]),
        "must_fail": {
            "request_bad_mac": "the request with its last byte flipped",
            "accept_other_device": "accept_with_list_key opened for device_id + 1",
            "recovery_key_bad_checksum": "recovery_key with its last hex digit changed",
        },
    });
    if std::env::var_os("SOTTO_WRITE_VECTORS").is_some() {
        std::fs::create_dir_all(path().parent().unwrap()).unwrap();
        std::fs::write(path(), serde_json::to_string_pretty(&fresh).unwrap() + "\n").unwrap();
    }
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(path()).unwrap()).unwrap();
    // Recomputed from the stored inputs, the outputs match the stored ones.
    assert_eq!(outputs(&stored["inputs"]), stored["outputs"]);
    assert_eq!(stored, fresh);

    // Decoding the stored bytes gives back the inputs.
    let i = &stored["inputs"];
    let o = &stored["outputs"];
    let (account, secret) = parse_code(o["code"].as_str().unwrap()).unwrap();
    assert_eq!(hex::encode(account.as_bytes()), o["account_id_hex"].as_str().unwrap());
    let request = hex::decode(o["request"].as_str().unwrap()).unwrap();
    let (entry, name) = decode_link_request(&secret, &account, &request).unwrap();
    assert_eq!(name, i["device_name"].as_str().unwrap());
    assert_eq!(u64::from(entry.device_id.0), i["device_id"].as_u64().unwrap());
    assert!(
        entry.binding_verifies(&account),
        "the request carries the device's binding (§4.1)"
    );
    let long = hex::decode(o["request_long_name_truncated_to_64"].as_str().unwrap()).unwrap();
    assert_eq!(decode_link_request(&secret, &account, &long).unwrap().1.len(), 64);
    let mut bad = request.clone();
    *bad.last_mut().unwrap() ^= 1;
    assert!(decode_link_request(&secret, &account, &bad).is_none());
    assert!(decode_link_request(&[0x23; 32], &account, &request).is_none());

    let accept = hex::decode(o["accept_with_list_key"].as_str().unwrap()).unwrap();
    let answer = decode_link_accept(&secret, &account, entry.device_id, &accept).unwrap();
    assert_eq!(
        hex::encode(answer.list_key_seed.unwrap().as_slice()),
        o["list_key_seed_epoch_1"].as_str().unwrap()
    );
    assert_eq!(answer.access_key, Some(arr(&i["access_key"])));
    assert_eq!(answer.contacts.len(), 2);
    assert!(answer.contacts[0].accepted && answer.contacts[0].access_key == Some([0x66; 32]));
    assert!(!answer.contacts[1].accepted && answer.contacts[1].access_key.is_none());
    assert!(decode_link_accept(&secret, &account, DeviceId(entry.device_id.0 + 1), &accept).is_none());
    let plain = hex::decode(o["accept_without_list_key"].as_str().unwrap()).unwrap();
    let answer = decode_link_accept(&secret, &account, entry.device_id, &plain).unwrap();
    assert!(answer.list_key_seed.is_none());
    assert_eq!(answer.contacts.len(), 2);

    let rk = o["recovery_key"].as_str().unwrap();
    assert_eq!(decode_recovery_key(rk).unwrap().account_id(), account);
    let mut bad = rk.to_owned();
    let last = bad.pop().unwrap();
    bad.push(if last == '0' { '1' } else { '0' });
    assert_eq!(decode_recovery_key(&bad).unwrap_err().code(), "bad_recovery_key");

    let fp = o["fingerprint"].as_str().unwrap();
    assert!(fingerprints_match(fp, &fp.to_uppercase().replace(' ', "")));
    assert!(!fingerprints_match(fp, &fp[..fp.len() - 1]));
}

proptest::proptest! {
    /// The link decoders take any bytes and text without panicking (they run on what a
    /// stranger sends, or what a user pastes).
    #[test]
    fn link_decoders_take_any_input(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400), text in ".{0,120}") {
        let account = AccountId([7; 32]);
        let _ = decode_link_request(&[1; 32], &account, &bytes);
        let _ = decode_link_accept(&[1; 32], &account, DeviceId(2), &bytes);
        let _ = decode_recovery_key(&text);
        let _ = decode_recovery_key(&format!("sotto-recovery:{text}"));
        let _ = parse_code(&text);
        let _ = parse_code(&format!("sotto-link:{text}"));
        let mut request = vec![1u8];
        request.extend_from_slice(&bytes);
        let _ = decode_link_request(&[1; 32], &account, &request);
    }
}
