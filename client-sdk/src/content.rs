//! The plaintext inside every session message: a small, versioned, bounded encoding.
//!
//! ```text
//! content  = 0x02 (version) ‖ message_id (16) ‖ timestamp_ms (u64)
//!            ‖ access (0x00 | 0x01 ‖ the sender account's access key (32)) ‖ kind (u8) ‖ body
//!            (version 0x01, still read, has no access field)
//! kind 0x01 Text            text (var, ≤ MAX_TEXT_LEN, UTF-8)
//! kind 0x02 SyncTranscript  conversation (32) ‖ text (var, ≤ MAX_TEXT_LEN, UTF-8)
//! kind 0x03 Delivered       count (u16, ≤ MAX_RECEIPTS) ‖ count × message_id (16)
//! kind 0x04 Group           group_id (32) ‖ sub (u8) ‖ fields            (docs/protocol.md §14.6)
//!   sub 0x01 Text           text (var, ≤ MAX_TEXT_LEN, UTF-8)                       group channel
//!   sub 0x02 Commit         commit (var, ≤ 65536) ‖ key flag (u8) ‖ [GK (32)]        group channel or pairwise
//!   sub 0x03 Welcome        root_id (32) ‖ root state (var) ‖ count (u16) ‖ count × commit (var)
//!                           ‖ GK (32) ‖ count (u16) ‖ count × (account_id (32) ‖ access key (32))   pairwise
//!   sub 0x04 SenderKey      state_id (32) ‖ sender-key distribution (85)            pairwise
//! ```
//!
//! A `Text` goes to every device of the contact; the sender's own other devices get a
//! `SyncTranscript` naming the conversation (the contact's account id) instead, so a
//! message sent from any device shows on all of the account's devices. Both carry the
//! same message id, which receivers deduplicate on.
//!
//! `access` carries the sender account's access key (docs/protocol.md §13.8) to a contact
//! the sender accepted, so the contact's sends to it are not message requests. Every
//! such content carries it, so a contact that lost it, or missed a rotation, learns it
//! again from the next message.

use sotto_crypto::AccountId;
use sotto_crypto::codec::{DecodeError, Put, Reader};
use thiserror::Error;

use crate::group::{Commit, GroupError, GroupId, GroupState, MAX_COMMIT_LEN, MAX_MEMBERS, MAX_STATE_LEN, WINDOW};
use crate::ids::MessageId;

const VERSION: u8 = 2;
/// The longest text, in bytes.
pub const MAX_TEXT_LEN: usize = 64 * 1024;
/// The most message ids in one receipt.
pub const MAX_RECEIPTS: usize = 256;

/// Why a decrypted plaintext is not valid content.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ContentError {
    /// The bytes do not decode.
    #[error("content does not decode: {0}")]
    Decode(#[from] DecodeError),
    /// A text that is not UTF-8.
    #[error("text is not UTF-8")]
    NotUtf8,
    /// A group state or commit inside does not decode.
    #[error("group content does not decode: {0}")]
    Group(#[from] GroupError),
}

/// What a group content carries.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupBody {
    /// A text to the group (group channel).
    Text {
        /// The text.
        text: String,
    },
    /// A change to the group, with the new state's seal key for those who stay.
    Commit {
        /// The commit.
        commit: Commit,
        /// The new state's seal key; `None` to a removed member, or when the author left.
        seal_key: Option<[u8; 32]>,
    },
    /// What a new member (or a member's new device) needs: a state to start from and
    /// its id, the canonical commits since, the current seal key and the access keys of
    /// members the sender knows.
    Welcome {
        /// The root's id.
        root_id: [u8; 32],
        /// The root state.
        root: GroupState,
        /// The canonical commits from the root, oldest first (at most the window).
        commits: Vec<Commit>,
        /// The seal key of the last state.
        seal_key: [u8; 32],
        /// Members' access keys.
        access: Vec<(AccountId, [u8; 32])>,
    },
    /// The sender device's sender-key chain for the group, made for the state `state_id`.
    SenderKey {
        /// The state the chain was made for.
        state_id: [u8; 32],
        /// The encoded distribution (docs/protocol.md §6A.2).
        distribution: Vec<u8>,
    },
}

/// Keys and texts left out.
impl std::fmt::Debug for GroupBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Text { text } => f.debug_struct("Text").field("text_len", &text.len()).finish(),
            Self::Commit { commit, seal_key } => f
                .debug_struct("Commit")
                .field("ops", &commit.ops.len())
                .field("seal_key", &seal_key.is_some())
                .finish(),
            Self::Welcome { commits, root, .. } => f
                .debug_struct("Welcome")
                .field("version", &root.version)
                .field("commits", &commits.len())
                .finish_non_exhaustive(),
            Self::SenderKey { .. } => f.debug_struct("SenderKey").finish_non_exhaustive(),
        }
    }
}

/// What a message carries.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum ContentKind {
    /// A text message to the recipient.
    Text {
        /// The text.
        text: String,
    },
    /// A copy of a message this account sent from another device.
    SyncTranscript {
        /// The conversation: the contact's account id.
        conversation: AccountId,
        /// The text.
        text: String,
    },
    /// The recipient device stored these messages.
    Delivered {
        /// Their ids.
        message_ids: Vec<MessageId>,
    },
    /// Group content: in the group channel (texts, commits) or pairwise (welcomes,
    /// commits with a new key, sender-key distributions).
    Group {
        /// The group.
        group: GroupId,
        /// What it carries.
        body: GroupBody,
    },
}

/// A message's content: id, the sender's timestamp and the kind.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Content {
    /// The id every copy of the message carries.
    pub message_id: MessageId,
    /// When the sender wrote it, Unix milliseconds (as claimed by the sender).
    pub timestamp_ms: u64,
    /// The sender account's access key, shared with a contact it accepted.
    pub access_key: Option<sotto_proto::AccessKey>,
    /// The payload.
    pub kind: ContentKind,
}

mod tag {
    pub(super) const TEXT: u8 = 1;
    pub(super) const SYNC: u8 = 2;
    pub(super) const DELIVERED: u8 = 3;
    pub(super) const GROUP: u8 = 4;
    pub(super) const GROUP_TEXT: u8 = 1;
    pub(super) const GROUP_COMMIT: u8 = 2;
    pub(super) const GROUP_WELCOME: u8 = 3;
    pub(super) const GROUP_SENDER_KEY: u8 = 4;
}

fn encode_group(out: &mut Vec<u8>, group: &GroupId, body: &GroupBody) {
    out.put_u8(tag::GROUP);
    out.put(&group.0);
    match body {
        GroupBody::Text { text } => {
            out.put_u8(tag::GROUP_TEXT);
            out.put_var(text.as_bytes());
        }
        GroupBody::Commit { commit, seal_key } => {
            out.put_u8(tag::GROUP_COMMIT);
            out.put_var(&commit.encode());
            match seal_key {
                Some(k) => {
                    out.put_u8(1);
                    out.put(k);
                }
                None => out.put_u8(0),
            }
        }
        GroupBody::Welcome {
            root_id,
            root,
            commits,
            seal_key,
            access,
        } => {
            out.put_u8(tag::GROUP_WELCOME);
            out.put(root_id);
            out.put_var(&root.encode());
            out.put_count(commits.len());
            for c in commits {
                out.put_var(&c.encode());
            }
            out.put(seal_key);
            out.put_count(access.len());
            for (a, k) in access {
                out.put(&a.0);
                out.put(k);
            }
        }
        GroupBody::SenderKey { state_id, distribution } => {
            out.put_u8(tag::GROUP_SENDER_KEY);
            out.put(state_id);
            out.put(distribution);
        }
    }
}

fn decode_group(r: &mut Reader<'_>) -> Result<ContentKind, ContentError> {
    let group = GroupId(r.array()?);
    let body = match r.u8()? {
        tag::GROUP_TEXT => GroupBody::Text { text: text(r)? },
        tag::GROUP_COMMIT => {
            let commit = Commit::decode(r.var_bytes("commit", MAX_COMMIT_LEN)?)?;
            let seal_key = if r.flag("seal key flag")? {
                Some(r.array()?)
            } else {
                None
            };
            GroupBody::Commit { commit, seal_key }
        }
        tag::GROUP_WELCOME => {
            let root_id = r.array()?;
            let root = GroupState::decode(r.var_bytes("root", MAX_STATE_LEN)?)?;
            let n = r.count("commits", WINDOW as usize, 4)?;
            let mut commits = Vec::with_capacity(n);
            for _ in 0..n {
                commits.push(Commit::decode(r.var_bytes("commit", MAX_COMMIT_LEN)?)?);
            }
            let seal_key = r.array()?;
            let n = r.count("access keys", MAX_MEMBERS, 64)?;
            let mut access = Vec::with_capacity(n);
            for _ in 0..n {
                access.push((AccountId(r.array()?), r.array()?));
            }
            GroupBody::Welcome {
                root_id,
                root,
                commits,
                seal_key,
                access,
            }
        }
        tag::GROUP_SENDER_KEY => GroupBody::SenderKey {
            state_id: r.array()?,
            distribution: r.bytes(sotto_crypto::sender_key::DISTRIBUTION_LEN)?.to_vec(),
        },
        value => {
            return Err(DecodeError::UnknownType {
                field: "group content",
                value,
            }
            .into());
        }
    };
    Ok(ContentKind::Group { group, body })
}

fn text(r: &mut Reader<'_>) -> Result<String, ContentError> {
    let bytes = r.var_bytes("text", MAX_TEXT_LEN)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| ContentError::NotUtf8)
}

impl Content {
    /// Encodes the content. Texts longer than [`MAX_TEXT_LEN`] are refused by the
    /// callers that build them ([`crate::machine::Machine::queue_text`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.put_u8(VERSION);
        out.put(&self.message_id.0);
        out.put_u64(self.timestamp_ms);
        match &self.access_key {
            Some(k) => {
                out.put_u8(1);
                out.put(&k.0);
            }
            None => out.put_u8(0),
        }
        match &self.kind {
            ContentKind::Text { text } => {
                out.put_u8(tag::TEXT);
                out.put_var(text.as_bytes());
            }
            ContentKind::SyncTranscript { conversation, text } => {
                out.put_u8(tag::SYNC);
                out.put(conversation.as_bytes());
                out.put_var(text.as_bytes());
            }
            ContentKind::Delivered { message_ids } => {
                out.put_u8(tag::DELIVERED);
                out.put_count(message_ids.len().min(MAX_RECEIPTS));
                for id in message_ids.iter().take(MAX_RECEIPTS) {
                    out.put(&id.0);
                }
            }
            ContentKind::Group { group, body } => encode_group(&mut out, group, body),
        }
        out
    }

    /// Decodes content; any byte string yields a value or a typed error.
    pub fn decode(bytes: &[u8]) -> Result<Self, ContentError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if !(1..=VERSION).contains(&version) {
            return Err(DecodeError::UnsupportedVersion { version }.into());
        }
        let message_id = MessageId(r.array()?);
        let timestamp_ms = r.u64()?;
        let access_key = if version >= 2 {
            if r.flag("access key flag")? {
                Some(sotto_proto::AccessKey(r.array()?))
            } else {
                None
            }
        } else {
            None
        };
        let kind = match r.u8()? {
            tag::TEXT => ContentKind::Text { text: text(&mut r)? },
            tag::SYNC => {
                let conversation = AccountId(r.array()?);
                ContentKind::SyncTranscript {
                    conversation,
                    text: text(&mut r)?,
                }
            }
            tag::DELIVERED => {
                let n = r.count("receipts", MAX_RECEIPTS, 16)?;
                let mut message_ids = Vec::with_capacity(n);
                for _ in 0..n {
                    message_ids.push(MessageId(r.array()?));
                }
                ContentKind::Delivered { message_ids }
            }
            tag::GROUP => decode_group(&mut r)?,
            value => {
                return Err(DecodeError::UnknownType {
                    field: "content kind",
                    value,
                }
                .into());
            }
        };
        r.finish()?;
        Ok(Self {
            message_id,
            timestamp_ms,
            access_key,
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Content> {
        let id = MessageId([7; 16]);
        vec![
            Content {
                message_id: id,
                timestamp_ms: 5,
                access_key: None,
                kind: ContentKind::Text { text: "hi ✓".into() },
            },
            Content {
                message_id: id,
                timestamp_ms: 6,
                access_key: Some(sotto_proto::AccessKey([0xa5; 32])),
                kind: ContentKind::Text {
                    text: "with key".into(),
                },
            },
            Content {
                message_id: id,
                timestamp_ms: u64::MAX,
                access_key: None,
                kind: ContentKind::SyncTranscript {
                    conversation: AccountId([3; 32]),
                    text: String::new(),
                },
            },
            Content {
                message_id: id,
                timestamp_ms: 0,
                access_key: Some(sotto_proto::AccessKey([1; 32])),
                kind: ContentKind::Delivered {
                    message_ids: vec![MessageId([1; 16]), MessageId([2; 16])],
                },
            },
        ]
        .into_iter()
        .chain(group_samples().into_iter().map(|kind| Content {
            message_id: id,
            timestamp_ms: 9,
            access_key: None,
            kind,
        }))
        .collect()
    }

    fn group_samples() -> Vec<ContentKind> {
        use crate::group::{Op, Role};
        let group = GroupId([4; 32]);
        let root = GroupState::genesis(group, AccountId([1; 32]), "g", &[(AccountId([2; 32]), Role::Member)]).unwrap();
        let commit = Commit::on(root.hash(), &root, AccountId([1; 32]), Some(&[5; 32]), vec![Op::Rekey]);
        let mut rng = <rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::seed_from_u64(3); // test only
        let distribution = sotto_crypto::SenderKey::generate(&mut rng)
            .distribution()
            .encode()
            .to_vec();
        [
            GroupBody::Text {
                text: "to all ✓".into(),
            },
            GroupBody::Commit {
                commit: commit.clone(),
                seal_key: Some([6; 32]),
            },
            GroupBody::Commit {
                commit: commit.clone(),
                seal_key: None,
            },
            GroupBody::Welcome {
                root_id: root.hash(),
                root,
                commits: vec![commit],
                seal_key: [7; 32],
                access: vec![(AccountId([2; 32]), [8; 32])],
            },
            GroupBody::SenderKey {
                state_id: [9; 32],
                distribution,
            },
        ]
        .into_iter()
        .map(|body| ContentKind::Group { group, body })
        .collect()
    }

    #[test]
    fn version_1_content_is_still_read_without_an_access_key() {
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&[7; 16]);
        v1.extend_from_slice(&5u64.to_be_bytes());
        v1.push(1);
        v1.extend_from_slice(&2u32.to_be_bytes());
        v1.extend_from_slice(b"hi");
        let c = Content::decode(&v1).unwrap();
        assert_eq!(c.access_key, None);
        assert_eq!(c.kind, ContentKind::Text { text: "hi".into() });
    }

    #[test]
    fn round_trips() {
        for c in samples() {
            assert_eq!(Content::decode(&c.encode()), Ok(c));
        }
    }

    #[test]
    fn every_truncation_and_extension_is_a_typed_error() {
        for c in samples() {
            let bytes = c.encode();
            for n in 0..bytes.len() {
                assert!(Content::decode(&bytes[..n]).is_err());
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(matches!(
                Content::decode(&longer),
                Err(ContentError::Decode(DecodeError::TrailingBytes { count: 1 }))
            ));
        }
    }

    #[test]
    fn bad_kind_version_and_utf8_are_refused() {
        let mut bytes = samples()[0].encode();
        bytes[0] = 3;
        assert!(matches!(
            Content::decode(&bytes),
            Err(ContentError::Decode(DecodeError::UnsupportedVersion { version: 3 }))
        ));
        let mut bytes = samples()[0].encode();
        bytes[26] = 0x99;
        assert!(matches!(
            Content::decode(&bytes),
            Err(ContentError::Decode(DecodeError::UnknownType { .. }))
        ));
        let mut bytes = samples()[0].encode();
        bytes[25] = 2;
        assert!(matches!(
            Content::decode(&bytes),
            Err(ContentError::Decode(DecodeError::Invalid {
                field: "access key flag"
            }))
        ));
        let mut bytes = samples()[0].encode();
        let last = bytes.len() - 1;
        bytes[last] = 0xff;
        assert_eq!(Content::decode(&bytes), Err(ContentError::NotUtf8));
    }
}
