//! The plaintext inside every session message: a small, versioned, bounded encoding.
//!
//! ```text
//! content  = 0x02 (version) ‖ message_id (16) ‖ timestamp_ms (u64)
//!            ‖ access (0x00 | 0x01 ‖ the sender account's access key (32)) ‖ kind (u8) ‖ body
//!            (version 0x01, still read, has no access field)
//! kind 0x01 Text            text (var, ≤ MAX_TEXT_LEN, UTF-8)
//! kind 0x02 SyncTranscript  conversation (32) ‖ text (var, ≤ MAX_TEXT_LEN, UTF-8)
//! kind 0x03 Delivered       count (u16, ≤ MAX_RECEIPTS) ‖ count × message_id (16)
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
