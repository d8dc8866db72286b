//! Known answers for groups (docs/protocol.md §14): `tests/vectors/group.json`. A group's
//! first state and its root id, three commits (an add with a rename, a removal, a member
//! leaving with no key) with their bytes, ids and key commitments and the states they
//! make, a fork and which side wins, and group content of every kind (§14.6) as bytes.
//! `SOTTO_WRITE_VECTORS=1` rewrites the file after a deliberate change of the format;
//! otherwise any difference fails. `group_vectors_replay` recomputes the hashes and the
//! layouts from the JSON with SHA-256 alone.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sotto_crypto::AccountId;
use sotto_sdk::MessageId;
use sotto_sdk::content::{Content, ContentKind, GroupBody};
use sotto_sdk::group::{Commit, GroupId, GroupLog, GroupState, Op, Role, key_commitment};

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/group.json")
}

fn acct(b: u8) -> AccountId {
    AccountId([b; 32])
}

fn h(b: &[u8]) -> String {
    hex::encode(b)
}

fn sha(parts: &[&[u8]]) -> [u8; 32] {
    let mut d = Sha256::new();
    for p in parts {
        d.update(p);
    }
    d.finalize().into()
}

fn vectors() -> Value {
    let group = GroupId([0x47; 32]);
    let first = GroupState::genesis(
        group,
        acct(0x0a),
        "Team ✓",
        &[(acct(0x0b), Role::Admin), (acct(0x0c), Role::Member)],
    )
    .unwrap();
    let root_id = first.hash();
    let (k1, k2) = ([0x11; 32], [0x22; 32]);
    let c1 = Commit::on(
        root_id,
        &first,
        acct(0x0a),
        Some(&k1),
        vec![Op::Add(acct(0x0d), Role::Member), Op::SetTitle("Team 2".into())],
    );
    let s1 = first.apply(&c1).unwrap();
    let c2 = Commit::on(c1.id(), &s1, acct(0x0b), Some(&k2), vec![Op::Remove(acct(0x0c))]);
    let s2 = s1.apply(&c2).unwrap();
    let c3 = Commit::on(c2.id(), &s2, acct(0x0d), None, vec![Op::Leave]);
    let s3 = s2.apply(&c3).unwrap();
    // A fork on the first state: admin 0x0b demotes 0x0a while 0x0a renames.
    let fa = Commit::on(
        root_id,
        &first,
        acct(0x0a),
        Some(&[0x33; 32]),
        vec![Op::SetTitle("A".into())],
    );
    let fb = Commit::on(
        root_id,
        &first,
        acct(0x0b),
        Some(&[0x44; 32]),
        vec![Op::SetRole(acct(0x0a), Role::Member)],
    );
    let mut log = GroupLog::genesis(first.clone()).unwrap();
    log.receive(fa.clone(), &acct(0x0a)).unwrap();
    log.receive(fb.clone(), &acct(0x0b)).unwrap();
    let commit = |c: &Commit, key: Option<[u8; 32]>, state: &GroupState| {
        json!({
            "bytes": h(&c.encode()), "id": h(&c.id()), "seal_key": key.map(|k| h(&k)),
            "key_commitment": h(&c.key_commitment), "state_after": h(&state.encode()),
        })
    };
    let content = |body: GroupBody| {
        let c = Content {
            message_id: MessageId([0x5e; 16]),
            timestamp_ms: 1_796_083_200_000,
            access_key: None,
            kind: ContentKind::Group { group, body },
        };
        h(&c.encode())
    };
    let distribution = {
        use rand_core::SeedableRng;
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7); // test only
        sotto_crypto::SenderKey::generate(&mut rng)
            .distribution()
            .encode()
            .to_vec()
    };
    json!({
        "description": "Groups (docs/protocol.md §14). `first_state` is a group's first state and `root_id` its id. `commits` apply in order, each to the state before (the first to first_state): its bytes, id, the seal key it carries (null for a member leaving), key_commitment and the state it makes. `fork`: two commits on first_state, and the one a device holding both follows (§14.3: the second demotes the first's author). `content`: group content (§14.6) with message id 5e×16, timestamp 1796083200000 and no access key.",
        "group_id": h(&group.0),
        "first_state": h(&first.encode()),
        "root_id": h(&root_id),
        "commits": [commit(&c1, Some(k1), &s1), commit(&c2, Some(k2), &s2), commit(&c3, None, &s3)],
        "fork": {
            "a": h(&fa.encode()), "a_id": h(&fa.id()),
            "b": h(&fb.encode()), "b_id": h(&fb.id()),
            "canonical": h(&log.tip_id()),
        },
        "content": {
            "text": content(GroupBody::Text { text: "hi all".into() }),
            "commit_with_key": content(GroupBody::Commit { commit: c1.clone(), seal_key: Some(k1) }),
            "commit_without_key": content(GroupBody::Commit { commit: c2.clone(), seal_key: None }),
            "welcome": content(GroupBody::Welcome {
                root_id, root: first.clone(), commits: vec![c1.clone()], seal_key: k1, access: vec![(acct(0x0b), [0x55; 32])],
            }),
            "sender_key": content(GroupBody::SenderKey { state_id: c1.id(), distribution: distribution.clone() }),
            "distribution": h(&distribution),
        },
    })
}

#[test]
fn group_vectors_are_unchanged() {
    let v = vectors();
    let text = serde_json::to_string_pretty(&v).unwrap() + "\n";
    if std::env::var_os("SOTTO_WRITE_VECTORS").is_some() {
        std::fs::write(path(), &text).unwrap();
    }
    let stored = std::fs::read_to_string(path()).unwrap();
    assert_eq!(
        stored, text,
        "tests/vectors/group.json differs (SOTTO_WRITE_VECTORS=1 rewrites it)"
    );
}

#[test]
fn group_vectors_replay() {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path()).unwrap()).unwrap();
    let x = |v: &Value| hex::decode(v.as_str().unwrap()).unwrap();
    let first = x(&v["first_state"]);
    // Ids and commitments from SHA-256 alone.
    assert_eq!(
        h(&sha(&[b"Sotto-v1 group state", &first])),
        v["root_id"].as_str().unwrap()
    );
    let mut parent_id = x(&v["root_id"]);
    let mut state = GroupState::decode(&first).unwrap();
    for c in v["commits"].as_array().unwrap() {
        let bytes = x(&c["bytes"]);
        assert_eq!(h(&sha(&[b"Sotto-v1 group commit", &bytes])), c["id"].as_str().unwrap());
        // Layout: version, group id, parent version, parent id, author, key commitment.
        assert_eq!(bytes[0], 1);
        assert_eq!(&bytes[1..33], &x(&v["group_id"])[..]);
        assert_eq!(u64::from_be_bytes(bytes[33..41].try_into().unwrap()), state.version);
        assert_eq!(&bytes[41..73], &parent_id[..]);
        let commitment = &bytes[105..137];
        match c["seal_key"].as_str() {
            Some(k) => {
                let k = hex::decode(k).unwrap();
                assert_eq!(commitment, sha(&[b"Sotto-v1 group seal key", &k]));
                assert_eq!(
                    h(&key_commitment(&k.try_into().unwrap())),
                    c["key_commitment"].as_str().unwrap()
                );
            }
            None => assert_eq!(commitment, [0u8; 32]),
        }
        let commit = Commit::decode(&bytes).unwrap();
        state = state.apply(&commit).unwrap();
        assert_eq!(h(&state.encode()), c["state_after"].as_str().unwrap());
        parent_id = x(&c["id"]);
    }
    let fork = &v["fork"];
    let mut log = GroupLog::genesis(GroupState::decode(&first).unwrap()).unwrap();
    for side in ["b", "a"] {
        let c = Commit::decode(&x(&fork[side])).unwrap();
        let author = c.author;
        log.receive(c, &author).unwrap();
    }
    assert_eq!(h(&log.tip_id()), fork["canonical"].as_str().unwrap());
    for (name, c) in v["content"].as_object().unwrap() {
        if name == "distribution" {
            continue;
        }
        let bytes = x(c);
        let decoded = Content::decode(&bytes).unwrap();
        assert!(matches!(decoded.kind, ContentKind::Group { .. }), "{name}");
        assert_eq!(decoded.encode(), bytes, "{name} re-encodes to itself");
    }
}
