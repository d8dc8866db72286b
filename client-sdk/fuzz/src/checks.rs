//! The checks behind the SDK's fuzz targets, one function per target.
//!
//! This file is compiled twice: as a module of the cargo-fuzz crate (`client-sdk/fuzz`)
//! and, through `#[path]`, as a module of `client-sdk/tests/fuzz_corpus.rs`. So it may
//! use only what both have: `std`, `sotto_sdk`, `sotto_crypto`, `sotto_proto` and
//! `rand_chacha`.
//!
//! Each check feeds untrusted bytes (what a peer's decrypted message carries) to a public
//! decoder of the SDK. Each call must return a value or a typed error; a panic is a
//! finding. What decodes must re-encode to exactly the input (the encodings are canonical).

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use sotto_crypto::{AccountId, AccountKey, Device, DeviceId};
use sotto_sdk::MessageId;
use sotto_sdk::content::{ChatItem, Content, ContentKind, GroupBody, Quote, decode_profile, encode_profile};
use sotto_sdk::group::{Commit, GroupId, GroupLog, GroupState, Op, Role};
use sotto_sdk::link::{decode_link_accept, decode_link_request, encode_link_accept, encode_link_request};
use sotto_sdk::store::ConversationRecord;

/// The fuzz targets; each has a directory of seeds under `client-sdk/fuzz/corpus/`.
pub const TARGETS: [&str; 3] = ["content", "link", "group"];

/// What a check made of its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A decoder accepted the input.
    Accepted,
    /// Every decoder returned an error.
    Rejected,
}

/// Runs the check of `target` on `data`; `None` for an unknown target.
pub fn run(target: &str, data: &[u8]) -> Option<Outcome> {
    Some(match target {
        "content" => content(data),
        "link" => link(data),
        "group" => group(data),
        _ => return None,
    })
}

/// True for content of a kind, item or group sub this version does not know: its
/// decoder keeps only the unknown byte, so it does not re-encode to its input.
fn unsupported(c: &Content) -> bool {
    let item = |i: &ChatItem| matches!(i, ChatItem::Unsupported { .. });
    match &c.kind {
        ContentKind::Unsupported { .. } => true,
        ContentKind::Chat { item: i } | ContentKind::ChatSync { item: i, .. } => item(i),
        ContentKind::Group { body, .. } => match body {
            GroupBody::Unsupported { .. } => true,
            GroupBody::Chat { item: i } => item(i),
            _ => false,
        },
        _ => false,
    }
}

/// Target `content`: [`Content::decode`]. Version-2 content that decodes re-encodes to
/// the input (version 1 is read and written as version 2; content of an unknown kind,
/// item or group sub keeps only that byte), and what it re-encodes to decodes the same.
pub fn content(data: &[u8]) -> Outcome {
    // The same bytes as a profile plaintext (§15.9): canonical too.
    let profile = decode_profile(data).ok();
    if let Some(p) = &profile {
        assert_eq!(encode_profile(p), data, "a profile does not re-encode to its input");
    }
    match Content::decode(data) {
        Ok(c) => {
            let encoded = c.encode();
            if data.first() == Some(&2) && !unsupported(&c) {
                assert_eq!(encoded, data, "content does not re-encode to its input");
            }
            assert_eq!(Content::decode(&encoded).ok(), Some(c));
            Outcome::Accepted
        }
        Err(_) if profile.is_some() => Outcome::Accepted,
        Err(_) => Outcome::Rejected,
    }
}

/// The link secret and account the `link` target decodes under (the seeds use them).
const SECRET: [u8; 32] = [0x22; 32];
const DEVICE: DeviceId = DeviceId(3);

fn account() -> AccountId {
    AccountKey::from_seed(&[0x11; 32]).account_id()
}

/// Target `link`: a link request and a link answer (the payloads of content types 0x10
/// and 0x11, §12A), decoded under a fixed secret; an answer that decodes re-encodes to
/// the input when it grants no list key (whose ciphertext only the sender can make).
pub fn link(data: &[u8]) -> Outcome {
    let account = account();
    let request = decode_link_request(&SECRET, &account, data);
    if let Some((entry, name)) = &request {
        assert_eq!(encode_link_request(&SECRET, &account, entry, name), data);
    }
    let answer = decode_link_accept(&SECRET, &account, DEVICE, data);
    if let Some(a) = &answer
        && a.list_key_seed.is_none()
    {
        let again = encode_link_accept(&SECRET, &account, DEVICE, None, a.access_key.as_ref(), &a.contacts);
        assert_eq!(again, data, "a link answer does not re-encode to its input");
    }
    if request.is_some() || answer.is_some() {
        Outcome::Accepted
    } else {
        Outcome::Rejected
    }
}

/// The state the `group` target applies commits to (the seeds use it).
fn group_state() -> GroupState {
    let members = [(AccountId([2; 32]), Role::Member), (AccountId([3; 32]), Role::Admin)];
    GroupState::genesis(GroupId([0x33; 32]), AccountId([1; 32]), "fuzz", &members).expect("a small group")
}

/// Target `group`: a group state and a group commit (§14). What decodes re-encodes to the
/// input; a commit is applied to the fixture's state and, when it names that state as its
/// parent, taken in by a log over it; a state it makes re-encodes canonically too.
pub fn group(data: &[u8]) -> Outcome {
    let mut accepted = false;
    if let Ok(s) = GroupState::decode(data) {
        assert_eq!(s.encode(), data, "a group state does not re-encode to its input");
        accepted = true;
    }
    if let Ok(c) = Commit::decode(data) {
        assert_eq!(c.encode(), data, "a commit does not re-encode to its input");
        accepted = true;
        let state = group_state();
        if let Ok(next) = state.apply(&c) {
            assert_eq!(next.version, state.version + 1);
            assert_eq!(GroupState::decode(&next.encode()).ok(), Some(next.clone()));
            if c.parent == state.hash() {
                let mut log = GroupLog::genesis(state).expect("the fixture's state is valid");
                let author = c.author;
                log.receive(c, &author).expect("a valid commit on the root is taken in");
                assert_eq!(log.tip(), &next);
            }
        }
    }
    if accepted { Outcome::Accepted } else { Outcome::Rejected }
}

/// One seed file.
pub struct Seed {
    /// Its target.
    pub target: &'static str,
    /// Its file name (`ok-*` must be accepted, `bad-*` need not be).
    pub name: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// The seed corpus: deterministic.
fn sdk_quote() -> Quote {
    Quote {
        author: AccountId([4; 32]),
        id: MessageId([1; 16]),
        snippet: "hi ✓".into(),
    }
}

fn sdk_group() -> GroupId {
    GroupId([6; 32])
}

pub fn seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    let mut add = |target, name: &str, bytes: Vec<u8>| {
        out.push(Seed {
            target,
            name: name.to_owned(),
            bytes,
        })
    };
    let text = Content {
        message_id: MessageId([1; 16]),
        timestamp_ms: 1_796_083_200_000,
        access_key: Some(sotto_proto::AccessKey([0xa5; 32])),
        kind: ContentKind::Text { text: "hi ✓".into() },
    }
    .encode();
    let sync = Content {
        message_id: MessageId([1; 16]),
        timestamp_ms: 5,
        access_key: None,
        kind: ContentKind::SyncTranscript {
            conversation: AccountId([3; 32]),
            text: "hi".into(),
        },
    }
    .encode();
    let receipt = Content {
        message_id: MessageId([2; 16]),
        timestamp_ms: 6,
        access_key: None,
        kind: ContentKind::Delivered {
            group: None,
            message_ids: vec![MessageId([1; 16]), MessageId([4; 16])],
        },
    }
    .encode();
    let group_receipt = Content {
        message_id: MessageId([3; 16]),
        timestamp_ms: 7,
        access_key: None,
        kind: ContentKind::Delivered {
            group: Some(GroupId([9; 32])),
            message_ids: vec![MessageId([1; 16])],
        },
    }
    .encode();
    add("content", "ok-text", text.clone());
    add("content", "ok-sync", sync);
    add("content", "ok-delivered", receipt);
    add("content", "ok-delivered-group", group_receipt);
    add("content", "bad-truncated", text[..text.len() / 2].to_vec());
    add("content", "bad-flag", {
        let mut b = text.clone();
        b[25] = 2;
        b
    });
    add("content", "bad-empty", Vec::new());
    add(
        "content",
        "ok-profile-plaintext",
        encode_profile(&sotto_sdk::store::Profile {
            name: "Ada".into(),
            avatar: Some(vec![1, 2, 3]),
            updated_ms: 7,
        }),
    );
    // A kind from a newer client, with fields this version does not know: accepted as
    // unsupported.
    add("content", "ok-unknown-kind", {
        let mut b = Content {
            message_id: MessageId([5; 16]),
            timestamp_ms: 11,
            access_key: None,
            kind: ContentKind::Unsupported { kind: 0x7e },
        }
        .encode();
        b.extend_from_slice(b"fields of a newer version");
        b
    });
    // Chat items, read receipts and typing (docs/protocol.md §15).
    let chat = |name: &str, kind: ContentKind| {
        let bytes = Content {
            message_id: MessageId([3; 16]),
            timestamp_ms: 10,
            access_key: None,
            kind,
        }
        .encode();
        (name.to_owned(), bytes)
    };
    let quote = sdk_quote();
    for (name, bytes) in [
        chat(
            "ok-chat-reply",
            ContentKind::Chat {
                item: ChatItem::Text {
                    text: "yes".into(),
                    quote: Some(quote),
                    expire_s: 60,
                },
            },
        ),
        chat(
            "ok-chat-sync-edit",
            ContentKind::ChatSync {
                conversation: AccountId([3; 32]),
                item: ChatItem::Edit {
                    target: MessageId([1; 16]),
                    text: "fixed".into(),
                },
            },
        ),
        chat(
            "ok-chat-reaction",
            ContentKind::Chat {
                item: ChatItem::Reaction {
                    author: AccountId([4; 32]),
                    target: MessageId([1; 16]),
                    emoji: "👍".into(),
                },
            },
        ),
        chat(
            "ok-chat-delete",
            ContentKind::Chat {
                item: ChatItem::Delete {
                    target: MessageId([1; 16]),
                },
            },
        ),
        chat(
            "ok-chat-timer",
            ContentKind::Chat {
                item: ChatItem::Timer { expire_s: 86_400 },
            },
        ),
        chat(
            "ok-read",
            ContentKind::Read {
                group: Some(sdk_group()),
                message_ids: vec![MessageId([1; 16])],
            },
        ),
        chat(
            "ok-typing",
            ContentKind::Typing {
                group: None,
                typing: true,
            },
        ),
        chat("ok-presence", ContentKind::Presence),
        chat(
            "ok-profile-key",
            ContentKind::ProfileKey {
                updated_ms: 7,
                key: sotto_sdk::content::SharedKey([0x4b; 32]),
            },
        ),
        chat(
            "ok-chat-attachment",
            ContentKind::Chat {
                item: sotto_sdk::content::ChatItem::Attachment {
                    attachment: Box::new(sotto_sdk::content::Attachment {
                        blob_id: [0x5a; 32],
                        key: sotto_sdk::content::SharedKey([0x6b; 32]),
                        digest: [0x7c; 32],
                        size: 70_000,
                        media_type: "image/png".into(),
                        file_name: "a.png".into(),
                        thumbnail: Some(vec![0x89, b'P', b'N', b'G']),
                    }),
                    caption: "look".into(),
                    quote: None,
                    expire_s: 0,
                },
            },
        ),
    ] {
        add("content", &name, bytes);
    }
    // Group content (docs/protocol.md §14.6), each sub-kind.
    let gstate = group_state();
    let gcommit = Commit::on(
        gstate.hash(),
        &gstate,
        AccountId([1; 32]),
        Some(&[0x45; 32]),
        vec![Op::SetTitle("g".into())],
    );
    let group_content = |body: GroupBody| {
        Content {
            message_id: MessageId([2; 16]),
            timestamp_ms: 9,
            access_key: None,
            kind: ContentKind::Group { group: gstate.id, body },
        }
        .encode()
    };
    let welcome = group_content(GroupBody::Welcome {
        root_id: gstate.hash(),
        root: gstate.clone(),
        commits: vec![gcommit.clone()],
        seal_key: [0x46; 32],
        access: vec![(AccountId([2; 32]), [0x47; 32])],
    });
    add(
        "content",
        "ok-group-text",
        group_content(GroupBody::Text { text: "all".into() }),
    );
    add(
        "content",
        "ok-group-commit",
        group_content(GroupBody::Commit {
            commit: gcommit.clone(),
            seal_key: Some([0x45; 32]),
        }),
    );
    add("content", "ok-group-welcome", welcome.clone());
    add(
        "content",
        "bad-group-welcome-truncated",
        welcome[..welcome.len() - 40].to_vec(),
    );

    let account = account();
    let mut rng = ChaCha20Rng::seed_from_u64(1201);
    let entry = Device::generate(account, DEVICE, &mut rng).entry();
    let request = encode_link_request(&SECRET, &account, &entry, "phone");
    let contacts = [
        ConversationRecord {
            peer: AccountId([0x33; 32]),
            accepted: true,
            access_key: Some([0x66; 32]),
            ..ConversationRecord::new(AccountId([0; 32]))
        },
        ConversationRecord::new(AccountId([0x44; 32])),
    ];
    let answer = encode_link_accept(&SECRET, &account, DEVICE, None, Some(&[0x55; 32]), &contacts);
    add("link", "ok-request", request.clone());
    add("link", "ok-answer", answer.clone());
    if let Ok(lk) = AccountKey::from_seed(&[0x11; 32]).list_key(1) {
        let granted = encode_link_accept(&SECRET, &account, DEVICE, Some(&lk), Some(&[0x55; 32]), &contacts);
        add("link", "ok-answer-with-list-key", granted);
    }
    add("link", "bad-request-mac", {
        let mut b = request;
        if let Some(last) = b.last_mut() {
            *last ^= 1;
        }
        b
    });
    add("link", "bad-answer-trailing", [&answer[..], &[0]].concat());
    let state = group_state();
    let root = state.hash();
    let key = [0x44; 32];
    let add_commit = Commit::on(
        root,
        &state,
        AccountId([1; 32]),
        Some(&key),
        vec![Op::Add(AccountId([9; 32]), Role::Member)],
    );
    let all_ops = Commit::on(
        root,
        &state,
        AccountId([3; 32]),
        None,
        vec![
            Op::Remove(AccountId([2; 32])),
            Op::SetRole(AccountId([1; 32]), Role::Member),
            Op::SetTitle("renamed ✓".into()),
            Op::Rekey,
            Op::Leave,
        ],
    );
    let by_member = Commit::on(root, &state, AccountId([2; 32]), None, vec![Op::Leave]);
    let add_bytes = add_commit.encode();
    let mut unknown_op = add_bytes.clone();
    let op_at = add_bytes.len() - 34;
    unknown_op[op_at] = 9;
    add("group", "ok-state", state.encode());
    add("group", "ok-commit-add", add_bytes.clone());
    add("group", "ok-commit-every-op", all_ops.encode());
    add("group", "ok-commit-member-leaves", by_member.encode());
    add("group", "bad-unknown-op", unknown_op);
    add("group", "bad-truncated", add_bytes[..add_bytes.len() - 1].to_vec());
    out
}
