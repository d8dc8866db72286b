//! Known answers for message content (docs/protocol.md §7.6): `tests/vectors/content.json`.
//! Each entry has its fields and its exact bytes; `must_fail` lists bytes that MUST be
//! refused. `SOTTO_WRITE_VECTORS=1` rewrites the file after a deliberate change of the
//! format; otherwise any difference fails.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use serde_json::{Value, json};
use sotto_crypto::AccountId;
use sotto_proto::AccessKey;
use sotto_sdk::MessageId;
use sotto_sdk::content::{Content, ContentKind};

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/content.json")
}

fn arr<const N: usize>(v: &Value) -> [u8; N] {
    hex::decode(v.as_str().unwrap()).unwrap().try_into().unwrap()
}

fn samples() -> Vec<Content> {
    let id = |b: u8| MessageId([b; 16]);
    vec![
        Content {
            message_id: id(0x01),
            timestamp_ms: 1_796_083_200_000,
            access_key: Some(AccessKey([0xa5; 32])),
            kind: ContentKind::Text {
                text: "hello, Bob ✓".into(),
            },
        },
        Content {
            message_id: id(0x01),
            timestamp_ms: 1_796_083_200_000,
            access_key: None,
            kind: ContentKind::SyncTranscript {
                conversation: AccountId([0x33; 32]),
                text: "hello, Bob ✓".into(),
            },
        },
        Content {
            message_id: id(0x02),
            timestamp_ms: 1_796_083_201_000,
            access_key: Some(AccessKey([0x5a; 32])),
            kind: ContentKind::Delivered {
                message_ids: vec![id(0x01), id(0x03)],
            },
        },
        Content {
            message_id: id(0x04),
            timestamp_ms: 7,
            access_key: None,
            kind: ContentKind::Text { text: String::new() },
        },
    ]
}

fn to_json(c: &Content) -> Value {
    let (kind, body) = match &c.kind {
        ContentKind::Text { text } => ("Text", json!({"text": text})),
        ContentKind::SyncTranscript { conversation, text } => (
            "SyncTranscript",
            json!({"conversation": hex::encode(conversation.as_bytes()), "text": text}),
        ),
        ContentKind::Delivered { message_ids } => (
            "Delivered",
            json!({"message_ids": message_ids.iter().map(|m| hex::encode(m.0)).collect::<Vec<_>>()}),
        ),
        other => panic!("no vector for {other:?}"),
    };
    json!({
        "message_id": hex::encode(c.message_id.0),
        "timestamp_ms": c.timestamp_ms,
        "access_key": c.access_key.as_ref().map(|k| hex::encode(k.0)),
        "kind": kind,
        "body": body,
        "bytes": hex::encode(c.encode()),
    })
}

fn from_json(v: &Value) -> Content {
    let b = &v["body"];
    let kind = match v["kind"].as_str().unwrap() {
        "Text" => ContentKind::Text {
            text: b["text"].as_str().unwrap().into(),
        },
        "SyncTranscript" => ContentKind::SyncTranscript {
            conversation: AccountId(arr(&b["conversation"])),
            text: b["text"].as_str().unwrap().into(),
        },
        "Delivered" => ContentKind::Delivered {
            message_ids: b["message_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| MessageId(arr(m)))
                .collect(),
        },
        other => panic!("unknown kind {other}"),
    };
    Content {
        message_id: MessageId(arr(&v["message_id"])),
        timestamp_ms: v["timestamp_ms"].as_u64().unwrap(),
        access_key: v["access_key"].as_str().map(|_| AccessKey(arr(&v["access_key"]))),
        kind,
    }
}

fn fresh() -> Value {
    let text_v2 = samples()[3].encode();
    // The same text in version 1: no access field.
    let mut v1 = vec![1u8];
    v1.extend_from_slice(&text_v2[1..25]);
    v1.extend_from_slice(&text_v2[26..]);
    let mut bad_flag = text_v2.clone();
    bad_flag[25] = 2;
    let mut bad_version = text_v2.clone();
    bad_version[0] = 3;
    let mut bad_kind = text_v2.clone();
    bad_kind[26] = 0x7f;
    let mut not_utf8 = samples()[0].encode();
    *not_utf8.last_mut().unwrap() = 0xff;
    let trailing = [&text_v2[..], &[0]].concat();
    json!({
        "description": "docs/protocol.md §7.6: message content, version 2 (and one version-1 text, still read). Bytes are hex.",
        "contents": samples().iter().map(to_json).collect::<Vec<_>>(),
        "version_1": {"bytes": hex::encode(&v1), "reads_as": to_json(&samples()[3])},
        "must_fail": [
            {"what": "access flag 2", "bytes": hex::encode(&bad_flag)},
            {"what": "version 3", "bytes": hex::encode(&bad_version)},
            {"what": "unknown kind 0x7f", "bytes": hex::encode(&bad_kind)},
            {"what": "text that is not UTF-8", "bytes": hex::encode(&not_utf8)},
            {"what": "a trailing byte", "bytes": hex::encode(&trailing)},
        ],
    })
}

#[test]
fn content_vectors_replay() {
    let fresh = fresh();
    if std::env::var_os("SOTTO_WRITE_VECTORS").is_some() {
        std::fs::write(path(), serde_json::to_string_pretty(&fresh).unwrap() + "\n").unwrap();
    }
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(path()).unwrap()).unwrap();
    assert_eq!(
        stored, fresh,
        "content.json differs; regenerate with SOTTO_WRITE_VECTORS=1"
    );
    // From the stored fields alone: encoding gives the bytes, decoding gives the fields.
    for v in stored["contents"].as_array().unwrap() {
        let c = from_json(v);
        let bytes = hex::decode(v["bytes"].as_str().unwrap()).unwrap();
        assert_eq!(c.encode(), bytes);
        assert_eq!(Content::decode(&bytes).unwrap(), c);
    }
    let v1 = &stored["version_1"];
    let bytes = hex::decode(v1["bytes"].as_str().unwrap()).unwrap();
    assert_eq!(Content::decode(&bytes).unwrap(), from_json(&v1["reads_as"]));
    for f in stored["must_fail"].as_array().unwrap() {
        let bytes = hex::decode(f["bytes"].as_str().unwrap()).unwrap();
        assert!(Content::decode(&bytes).is_err(), "{}", f["what"]);
    }
}
