//! The plaintext inside every session message: a small, versioned, bounded encoding.
//!
//! ```text
//! content  = 0x02 (version) ‖ message_id (16) ‖ timestamp_ms (u64)
//!            ‖ access (0x00 | 0x01 ‖ the sender account's access key (32)) ‖ kind (u8) ‖ body
//!            (version 0x01, still read, has no access field)
//! kind 0x01 Text            text (var, ≤ MAX_TEXT_LEN, UTF-8)
//! kind 0x02 SyncTranscript  conversation (32) ‖ text (var, ≤ MAX_TEXT_LEN, UTF-8)
//! kind 0x03 Delivered       count (u16, ≤ MAX_RECEIPTS) ‖ count × message_id (16) ‖ [group_id (32)]
//!                           (the group id only for messages sent to a group)
//! kind 0x04 Group           group_id (32) ‖ sub (u8) ‖ fields            (docs/protocol.md §14.6)
//!   sub 0x01 Text           text (var, ≤ MAX_TEXT_LEN, UTF-8)                       group channel
//!   sub 0x02 Commit         commit (var, ≤ 65536) ‖ key flag (u8) ‖ [GK (32)]        group channel or pairwise
//!   sub 0x03 Welcome        root_id (32) ‖ root state (var) ‖ count (u16) ‖ count × commit (var)
//!                           ‖ GK (32) ‖ count (u16) ‖ count × (account_id (32) ‖ access key (32))   pairwise
//!   sub 0x04 SenderKey      state_id (32) ‖ sender-key distribution (85)            pairwise
//!   sub 0x05 Chat           item                                                    group channel
//!   other sub               (rest ignored)   shown as unsupported
//! kind 0x05 Chat            item                                      to the contact's devices
//! kind 0x06 ChatSync        conversation (32) ‖ item                  to the sender's own devices
//! kind 0x07 Read            group flag (u8) ‖ [group_id (32)] ‖ count (u16, ≤ MAX_RECEIPTS)
//!                           ‖ count × message_id (16)                 to the author's devices
//! kind 0x08 Typing          group flag (u8) ‖ [group_id (32)] ‖ typing (u8: 0 stopped, 1 started)
//!                                                                     ephemeral (docs/protocol.md §13.9)
//! kind 0x09 Presence        (empty)                                   ephemeral: "online now"
//! kind 0x0a (retired: an inline profile of earlier versions; dropped unseen)
//! kind 0x0b ProfileKey      updated_ms (u64) ‖ profile key (32)       to contacts and own devices
//! other kind                (rest ignored)   shown as unsupported
//!
//! item (docs/protocol.md §15.2):
//!   0x01 Text      expire_s (u32) ‖ quote flag (u8) ‖ [quote] ‖ text (var, ≤ MAX_TEXT_LEN, UTF-8)
//!                  quote = author (32) ‖ message_id (16) ‖ snippet (var, ≤ MAX_QUOTE_LEN, UTF-8)
//!   0x02 Edit      target (16) ‖ text (var, ≤ MAX_TEXT_LEN, UTF-8)
//!   0x03 Delete    target (16)
//!   0x04 Reaction  author (32) ‖ target (16) ‖ emoji (var, ≤ MAX_EMOJI_LEN, UTF-8; empty removes)
//!   0x05 Timer     expire_s (u32, ≤ MAX_TIMER_S; 0 turns it off)
//!   0x06 Attachment expire_s (u32) ‖ quote flag (u8) ‖ [quote] ‖ caption (var, ≤ MAX_TEXT_LEN, UTF-8)
//!                  ‖ pointer (docs/protocol.md §16.5)
//!                  pointer = blob_id (32) ‖ key (32) ‖ digest (32) ‖ size (u64, ≤ 2^34)
//!                            ‖ media_type (var, ≤ MAX_MEDIA_TYPE_LEN, UTF-8)
//!                            ‖ file_name (var, ≤ MAX_FILE_NAME_LEN, UTF-8)
//!                            ‖ thumbnail flag (u8) ‖ [thumbnail (var, ≤ MAX_THUMBNAIL_LEN)]
//!   other          (rest ignored)   shown as unsupported
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
/// The longest quoted snippet a reply carries, in bytes.
pub const MAX_QUOTE_LEN: usize = 512;
/// The longest reaction, in bytes (one emoji, with its modifiers).
pub const MAX_EMOJI_LEN: usize = 64;
/// The largest avatar a profile carries, in bytes (a small image; larger pictures go
/// as attachments).
pub const MAX_AVATAR_LEN: usize = 16 * 1024;
/// The longest profile name, in bytes.
pub const MAX_PROFILE_NAME_LEN: usize = 256;

/// The longest media type an attachment names, in bytes.
pub const MAX_MEDIA_TYPE_LEN: usize = 127;
/// The longest file name an attachment carries, in bytes.
pub const MAX_FILE_NAME_LEN: usize = 255;
/// The largest thumbnail an attachment pointer carries inline, in bytes.
pub const MAX_THUMBNAIL_LEN: usize = 32 * 1024;

/// Where an attachment is and how to open it (docs/protocol.md §16.5): the relay blob
/// that holds its ciphertext (§16.4), the key and digest that open and check it (§16.2),
/// and what to show before it is downloaded. It travels inside end-to-end encrypted
/// content only; the thumbnail is encrypted with the message that carries it.
///
/// `file_name` and `media_type` come from the sender: untrusted display strings, never a
/// path to write to.
#[derive(Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The relay's blob id.
    pub blob_id: [u8; 32],
    /// The attachment key.
    pub key: SharedKey,
    /// SHA-256 of the whole ciphertext.
    pub digest: [u8; 32],
    /// The plaintext length, bytes.
    pub size: u64,
    /// The media type, e.g. `image/jpeg` (at most [`MAX_MEDIA_TYPE_LEN`] bytes).
    pub media_type: String,
    /// The file name as the sender had it (at most [`MAX_FILE_NAME_LEN`] bytes).
    pub file_name: String,
    /// A small preview image (at most [`MAX_THUMBNAIL_LEN`] bytes).
    pub thumbnail: Option<Vec<u8>>,
}

/// Leaves the key out, and the file name and thumbnail (their lengths only).
impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("size", &self.size)
            .field("media_type", &self.media_type)
            .field("file_name_len", &self.file_name.len())
            .field("thumbnail_len", &self.thumbnail.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

/// A 32-byte secret key carried in content (a profile key): its `Debug` shows nothing of
/// it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SharedKey(pub [u8; 32]);

impl std::fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedKey(..)")
    }
}

/// The kind of the inline profile of earlier versions: it decodes as
/// [`ContentKind::Unsupported`], and receivers drop it unseen.
pub const RETIRED_PROFILE_KIND: u8 = 0x0a;

/// The longest disappearing-message timer: one year, in seconds.
pub const MAX_TIMER_S: u32 = 366 * 24 * 3600;

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
    /// A chat item to the group (group channel).
    Chat {
        /// The item.
        item: ChatItem,
    },
    /// Group content of a kind this version does not know (from a newer client).
    Unsupported {
        /// Its sub-kind byte.
        sub: u8,
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
            Self::Chat { item } => f.debug_struct("Chat").field("item", item).finish(),
            Self::Unsupported { sub } => f.debug_struct("Unsupported").field("sub", sub).finish(),
        }
    }
}

/// A message quoted by a reply: who wrote it, its id, and the start of its text (shown
/// when the quoted message is not in the store).
#[derive(Clone, PartialEq, Eq)]
pub struct Quote {
    /// The quoted message's author account.
    pub author: AccountId,
    /// The quoted message's id.
    pub id: MessageId,
    /// The start of its text (at most [`MAX_QUOTE_LEN`] bytes).
    pub snippet: String,
}

/// Leaves the snippet out (its length only).
impl std::fmt::Debug for Quote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quote")
            .field("id", &self.id)
            .field("snippet_len", &self.snippet.len())
            .finish_non_exhaustive()
    }
}

/// What a chat message carries, the same in a 1:1 conversation and in a group
/// (docs/protocol.md §15.2). Edits and deletes name a message of their own author;
/// a reaction names any message by author and id.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChatItem {
    /// A text, maybe a reply, with the sender's disappearing-message timer.
    Text {
        /// The text.
        text: String,
        /// The quoted message, for a reply.
        quote: Option<Quote>,
        /// The conversation's timer as the sender knows it, seconds (0: none).
        expire_s: u32,
    },
    /// A new text for one of the author's own messages.
    Edit {
        /// The message edited (by the same author).
        target: MessageId,
        /// Its new text.
        text: String,
    },
    /// Deletes one of the author's own messages for everyone.
    Delete {
        /// The message deleted (by the same author).
        target: MessageId,
    },
    /// A reaction to a message, or its removal (an empty emoji).
    Reaction {
        /// The author of the message reacted to.
        author: AccountId,
        /// Its id.
        target: MessageId,
        /// The emoji; empty to remove this account's reaction.
        emoji: String,
    },
    /// Sets the conversation's disappearing-message timer.
    Timer {
        /// Seconds; 0 turns it off.
        expire_s: u32,
    },
    /// A file, photo or voice note, with a caption (maybe empty), maybe a reply, with the
    /// sender's disappearing-message timer.
    Attachment {
        /// Where the file is and how to open it.
        attachment: Box<Attachment>,
        /// The caption.
        caption: String,
        /// The quoted message, for a reply.
        quote: Option<Quote>,
        /// The conversation's timer as the sender knows it, seconds (0: none).
        expire_s: u32,
    },
    /// An item of a kind this version does not know (from a newer client).
    Unsupported {
        /// Its tag byte.
        tag: u8,
    },
}

/// Texts left out (their lengths only).
impl std::fmt::Debug for ChatItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Text { text, quote, expire_s } => f
                .debug_struct("Text")
                .field("text_len", &text.len())
                .field("quote", quote)
                .field("expire_s", expire_s)
                .finish(),
            Self::Edit { target, text } => f
                .debug_struct("Edit")
                .field("target", target)
                .field("text_len", &text.len())
                .finish(),
            Self::Delete { target } => f.debug_struct("Delete").field("target", target).finish(),
            Self::Reaction { target, emoji, .. } => f
                .debug_struct("Reaction")
                .field("target", target)
                .field("remove", &emoji.is_empty())
                .finish_non_exhaustive(),
            Self::Timer { expire_s } => f.debug_struct("Timer").field("expire_s", expire_s).finish(),
            Self::Attachment {
                attachment,
                caption,
                quote,
                expire_s,
            } => f
                .debug_struct("Attachment")
                .field("attachment", attachment)
                .field("caption_len", &caption.len())
                .field("quote", quote)
                .field("expire_s", expire_s)
                .finish(),
            Self::Unsupported { tag } => f.debug_struct("Unsupported").field("tag", tag).finish(),
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
        /// The group the messages were sent to; `None` in a 1:1 conversation.
        group: Option<GroupId>,
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
    /// A chat item to the recipient.
    Chat {
        /// The item.
        item: ChatItem,
    },
    /// A copy of a chat item this account sent from another device.
    ChatSync {
        /// The conversation: the contact's account id, or a group's conversation id.
        conversation: AccountId,
        /// The item.
        item: ChatItem,
    },
    /// The reader read these messages of the recipient's account.
    Read {
        /// The group the messages were sent to; `None` in a 1:1 conversation.
        group: Option<GroupId>,
        /// Their ids.
        message_ids: Vec<MessageId>,
    },
    /// The sender started or stopped typing (ephemeral; never stored).
    Typing {
        /// The group it types in; `None` in a 1:1 conversation.
        group: Option<GroupId>,
        /// True when it started.
        typing: bool,
    },
    /// The sender is online (ephemeral; sent every few seconds while connected, to
    /// contacts it shares its presence with).
    Presence,
    /// The sender account's profile key, and when its profile last changed (to its
    /// accepted contacts and its own devices): the receiver fetches the profile from the
    /// relay and decrypts it with the key.
    ProfileKey {
        /// When the profile was set (the owner's clock): the newest one wins.
        updated_ms: u64,
        /// The profile key.
        key: SharedKey,
    },
    /// Content of a kind this version does not know (from a newer client).
    Unsupported {
        /// Its kind byte.
        kind: u8,
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
    pub(super) const GROUP_CHAT: u8 = 5;
    pub(super) const CHAT: u8 = 5;
    pub(super) const CHAT_SYNC: u8 = 6;
    pub(super) const READ: u8 = 7;
    pub(super) const TYPING: u8 = 8;
    pub(super) const PRESENCE: u8 = 9;
    pub(super) const PROFILE_KEY: u8 = 0x0b;
    pub(super) const ITEM_TEXT: u8 = 1;
    pub(super) const ITEM_EDIT: u8 = 2;
    pub(super) const ITEM_DELETE: u8 = 3;
    pub(super) const ITEM_REACTION: u8 = 4;
    pub(super) const ITEM_TIMER: u8 = 5;
    pub(super) const ITEM_ATTACHMENT: u8 = 6;
}

fn put_quote(out: &mut Vec<u8>, quote: &Option<Quote>) {
    match quote {
        Some(q) => {
            out.put_u8(1);
            out.put(q.author.as_bytes());
            out.put(&q.id.0);
            out.put_var(truncate_utf8(&q.snippet, MAX_QUOTE_LEN).as_bytes());
        }
        None => out.put_u8(0),
    }
}

fn read_quote(r: &mut Reader<'_>) -> Result<Option<Quote>, ContentError> {
    Ok(if r.flag("quote flag")? {
        Some(Quote {
            author: AccountId(r.array()?),
            id: MessageId(r.array()?),
            snippet: utf8(r.var_bytes("quote", MAX_QUOTE_LEN)?)?,
        })
    } else {
        None
    })
}

/// Encodes an attachment pointer (docs/protocol.md §16.5). Strings above their bounds are
/// cut on a character boundary; a thumbnail above [`MAX_THUMBNAIL_LEN`] is left out.
pub fn encode_attachment(out: &mut Vec<u8>, a: &Attachment) {
    out.put(&a.blob_id);
    out.put(&a.key.0);
    out.put(&a.digest);
    out.put_u64(a.size);
    out.put_var(truncate_utf8(&a.media_type, MAX_MEDIA_TYPE_LEN).as_bytes());
    out.put_var(truncate_utf8(&a.file_name, MAX_FILE_NAME_LEN).as_bytes());
    match &a.thumbnail {
        Some(t) if t.len() <= MAX_THUMBNAIL_LEN => {
            out.put_u8(1);
            out.put_var(t);
        }
        _ => out.put_u8(0),
    }
}

/// Decodes an attachment pointer; a size above the largest attachment
/// ([`sotto_crypto::attachment::MAX_PLAINTEXT_LEN`]) is invalid.
pub fn decode_attachment(r: &mut Reader<'_>) -> Result<Attachment, ContentError> {
    let blob_id = r.array()?;
    let key = SharedKey(r.array()?);
    let digest = r.array()?;
    let size = r.u64()?;
    if size > sotto_crypto::attachment::MAX_PLAINTEXT_LEN {
        return Err(DecodeError::Invalid {
            field: "attachment size",
        }
        .into());
    }
    let media_type = utf8(r.var_bytes("media type", MAX_MEDIA_TYPE_LEN)?)?;
    let file_name = utf8(r.var_bytes("file name", MAX_FILE_NAME_LEN)?)?;
    let thumbnail = if r.flag("thumbnail flag")? {
        Some(r.var_bytes("thumbnail", MAX_THUMBNAIL_LEN)?.to_vec())
    } else {
        None
    };
    Ok(Attachment {
        blob_id,
        key,
        digest,
        size,
        media_type,
        file_name,
        thumbnail,
    })
}

fn encode_item(out: &mut Vec<u8>, item: &ChatItem) {
    match item {
        ChatItem::Text { text, quote, expire_s } => {
            out.put_u8(tag::ITEM_TEXT);
            out.put_u32(*expire_s);
            put_quote(out, quote);
            out.put_var(text.as_bytes());
        }
        ChatItem::Attachment {
            attachment,
            caption,
            quote,
            expire_s,
        } => {
            out.put_u8(tag::ITEM_ATTACHMENT);
            out.put_u32(*expire_s);
            put_quote(out, quote);
            out.put_var(caption.as_bytes());
            encode_attachment(out, attachment);
        }
        ChatItem::Edit { target, text } => {
            out.put_u8(tag::ITEM_EDIT);
            out.put(&target.0);
            out.put_var(text.as_bytes());
        }
        ChatItem::Delete { target } => {
            out.put_u8(tag::ITEM_DELETE);
            out.put(&target.0);
        }
        ChatItem::Reaction { author, target, emoji } => {
            out.put_u8(tag::ITEM_REACTION);
            out.put(author.as_bytes());
            out.put(&target.0);
            out.put_var(truncate_utf8(emoji, MAX_EMOJI_LEN).as_bytes());
        }
        ChatItem::Timer { expire_s } => {
            out.put_u8(tag::ITEM_TIMER);
            out.put_u32((*expire_s).min(MAX_TIMER_S));
        }
        ChatItem::Unsupported { tag } => out.put_u8(*tag),
    }
}

fn decode_item(r: &mut Reader<'_>) -> Result<ChatItem, ContentError> {
    Ok(match r.u8()? {
        tag::ITEM_TEXT => {
            let expire_s = timer(r)?;
            let quote = read_quote(r)?;
            ChatItem::Text {
                quote,
                expire_s,
                text: text(r)?,
            }
        }
        tag::ITEM_ATTACHMENT => {
            let expire_s = timer(r)?;
            let quote = read_quote(r)?;
            let caption = text(r)?;
            ChatItem::Attachment {
                attachment: Box::new(decode_attachment(r)?),
                caption,
                quote,
                expire_s,
            }
        }
        tag::ITEM_EDIT => ChatItem::Edit {
            target: MessageId(r.array()?),
            text: text(r)?,
        },
        tag::ITEM_DELETE => ChatItem::Delete {
            target: MessageId(r.array()?),
        },
        tag::ITEM_REACTION => ChatItem::Reaction {
            author: AccountId(r.array()?),
            target: MessageId(r.array()?),
            emoji: utf8(r.var_bytes("emoji", MAX_EMOJI_LEN)?)?,
        },
        tag::ITEM_TIMER => ChatItem::Timer { expire_s: timer(r)? },
        tag => {
            r.rest();
            ChatItem::Unsupported { tag }
        }
    })
}

fn timer(r: &mut Reader<'_>) -> Result<u32, ContentError> {
    let s = r.u32()?;
    if s > MAX_TIMER_S {
        return Err(DecodeError::Invalid { field: "timer" }.into());
    }
    Ok(s)
}

fn utf8(bytes: &[u8]) -> Result<String, ContentError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| ContentError::NotUtf8)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_group_flag(out: &mut Vec<u8>, group: &Option<GroupId>) {
    match group {
        Some(g) => {
            out.put_u8(1);
            out.put(&g.0);
        }
        None => out.put_u8(0),
    }
}

fn group_flag(r: &mut Reader<'_>) -> Result<Option<GroupId>, ContentError> {
    Ok(if r.flag("group flag")? {
        Some(GroupId(r.array()?))
    } else {
        None
    })
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
        GroupBody::Chat { item } => {
            out.put_u8(tag::GROUP_CHAT);
            encode_item(out, item);
        }
        GroupBody::Unsupported { sub } => out.put_u8(*sub),
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
        tag::GROUP_CHAT => GroupBody::Chat { item: decode_item(r)? },
        sub => {
            r.rest();
            GroupBody::Unsupported { sub }
        }
    };
    Ok(ContentKind::Group { group, body })
}

fn text(r: &mut Reader<'_>) -> Result<String, ContentError> {
    utf8(r.var_bytes("text", MAX_TEXT_LEN)?)
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
            ContentKind::Delivered { group, message_ids } => {
                out.put_u8(tag::DELIVERED);
                out.put_count(message_ids.len().min(MAX_RECEIPTS));
                for id in message_ids.iter().take(MAX_RECEIPTS) {
                    out.put(&id.0);
                }
                // A trailing group id, so a 1:1 receipt keeps the layout it always had.
                if let Some(g) = group {
                    out.put(&g.0);
                }
            }
            ContentKind::Group { group, body } => encode_group(&mut out, group, body),
            ContentKind::Chat { item } => {
                out.put_u8(tag::CHAT);
                encode_item(&mut out, item);
            }
            ContentKind::ChatSync { conversation, item } => {
                out.put_u8(tag::CHAT_SYNC);
                out.put(conversation.as_bytes());
                encode_item(&mut out, item);
            }
            ContentKind::Read { group, message_ids } => {
                out.put_u8(tag::READ);
                put_group_flag(&mut out, group);
                out.put_count(message_ids.len().min(MAX_RECEIPTS));
                for id in message_ids.iter().take(MAX_RECEIPTS) {
                    out.put(&id.0);
                }
            }
            ContentKind::Typing { group, typing } => {
                out.put_u8(tag::TYPING);
                put_group_flag(&mut out, group);
                out.put_u8(u8::from(*typing));
            }
            ContentKind::Presence => out.put_u8(tag::PRESENCE),
            ContentKind::ProfileKey { updated_ms, key } => {
                out.put_u8(tag::PROFILE_KEY);
                out.put_u64(*updated_ms);
                out.put(&key.0);
            }
            ContentKind::Unsupported { kind } => out.put_u8(*kind),
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
                let group = if r.remaining() == 0 {
                    None
                } else {
                    Some(GroupId(r.array()?))
                };
                ContentKind::Delivered { group, message_ids }
            }
            tag::GROUP => decode_group(&mut r)?,
            tag::CHAT => ContentKind::Chat {
                item: decode_item(&mut r)?,
            },
            tag::CHAT_SYNC => ContentKind::ChatSync {
                conversation: AccountId(r.array()?),
                item: decode_item(&mut r)?,
            },
            tag::READ => {
                let group = group_flag(&mut r)?;
                let n = r.count("receipts", MAX_RECEIPTS, 16)?;
                let mut message_ids = Vec::with_capacity(n);
                for _ in 0..n {
                    message_ids.push(MessageId(r.array()?));
                }
                ContentKind::Read { group, message_ids }
            }
            tag::TYPING => ContentKind::Typing {
                group: group_flag(&mut r)?,
                typing: r.flag("typing")?,
            },
            tag::PRESENCE => ContentKind::Presence,
            tag::PROFILE_KEY => ContentKind::ProfileKey {
                updated_ms: r.u64()?,
                key: SharedKey(r.array()?),
            },
            kind => {
                r.rest();
                ContentKind::Unsupported { kind }
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

/// The version byte of a profile plaintext.
const PROFILE_VERSION: u8 = 1;

/// Encodes a profile as the plaintext encrypted under the profile key (docs/protocol.md
/// §15.9). The name is cut to [`MAX_PROFILE_NAME_LEN`] bytes; an avatar above
/// [`MAX_AVATAR_LEN`] is left out (the SDK refuses one when it is set).
pub fn encode_profile(p: &crate::store::Profile) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + p.name.len() + p.avatar.as_ref().map_or(0, Vec::len));
    out.put_u8(PROFILE_VERSION);
    out.put_u64(p.updated_ms);
    out.put_var(truncate_utf8(&p.name, MAX_PROFILE_NAME_LEN).as_bytes());
    match &p.avatar {
        Some(a) if a.len() <= MAX_AVATAR_LEN => {
            out.put_u8(1);
            out.put_var(a);
        }
        _ => out.put_u8(0),
    }
    out
}

/// Decodes a decrypted profile plaintext.
pub fn decode_profile(bytes: &[u8]) -> Result<crate::store::Profile, ContentError> {
    let mut r = Reader::new(bytes);
    r.version(PROFILE_VERSION)?;
    let updated_ms = r.u64()?;
    let name = utf8(r.var_bytes("profile name", MAX_PROFILE_NAME_LEN)?)?;
    let avatar = if r.flag("avatar flag")? {
        Some(r.var_bytes("avatar", MAX_AVATAR_LEN)?.to_vec())
    } else {
        None
    };
    r.finish()?;
    Ok(crate::store::Profile {
        name,
        avatar,
        updated_ms,
    })
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
                    group: None,
                    message_ids: vec![MessageId([1; 16]), MessageId([2; 16])],
                },
            },
            Content {
                message_id: id,
                timestamp_ms: 1,
                access_key: None,
                kind: ContentKind::Delivered {
                    group: Some(GroupId([7; 32])),
                    message_ids: vec![MessageId([3; 16])],
                },
            },
        ]
        .into_iter()
        .chain(group_samples().into_iter().chain(chat_samples()).map(|kind| Content {
            message_id: id,
            timestamp_ms: 9,
            access_key: None,
            kind,
        }))
        .collect()
    }

    fn items() -> Vec<ChatItem> {
        vec![
            ChatItem::Text {
                text: "hello".into(),
                quote: None,
                expire_s: 0,
            },
            ChatItem::Text {
                text: "a reply".into(),
                quote: Some(Quote {
                    author: AccountId([2; 32]),
                    id: MessageId([3; 16]),
                    snippet: "quoted ✓".into(),
                }),
                expire_s: 3600,
            },
            ChatItem::Edit {
                target: MessageId([4; 16]),
                text: "fixed".into(),
            },
            ChatItem::Delete {
                target: MessageId([5; 16]),
            },
            ChatItem::Reaction {
                author: AccountId([6; 32]),
                target: MessageId([7; 16]),
                emoji: "👍🏽".into(),
            },
            ChatItem::Reaction {
                author: AccountId([6; 32]),
                target: MessageId([7; 16]),
                emoji: String::new(),
            },
            ChatItem::Timer { expire_s: MAX_TIMER_S },
            ChatItem::Attachment {
                attachment: Box::new(sample_attachment(Some(vec![0xff, 0xd8, 0xff, 0xe0]))),
                caption: "the view ✓".into(),
                quote: Some(Quote {
                    author: AccountId([2; 32]),
                    id: MessageId([3; 16]),
                    snippet: "where?".into(),
                }),
                expire_s: 60,
            },
            ChatItem::Attachment {
                attachment: Box::new(sample_attachment(None)),
                caption: String::new(),
                quote: None,
                expire_s: 0,
            },
        ]
    }

    fn sample_attachment(thumbnail: Option<Vec<u8>>) -> Attachment {
        Attachment {
            blob_id: [0x11; 32],
            key: SharedKey([0x22; 32]),
            digest: [0x33; 32],
            size: 200 * 1000 * 1000,
            media_type: "image/jpeg".into(),
            file_name: "IMG_0001.jpg".into(),
            thumbnail,
        }
    }

    fn chat_samples() -> Vec<ContentKind> {
        let group = GroupId([4; 32]);
        let mut out = Vec::new();
        for item in items() {
            out.push(ContentKind::Chat { item: item.clone() });
            out.push(ContentKind::ChatSync {
                conversation: AccountId([8; 32]),
                item: item.clone(),
            });
            out.push(ContentKind::Group {
                group,
                body: GroupBody::Chat { item },
            });
        }
        out.push(ContentKind::Read {
            group: None,
            message_ids: vec![MessageId([1; 16])],
        });
        out.push(ContentKind::Read {
            group: Some(group),
            message_ids: vec![MessageId([1; 16]), MessageId([2; 16])],
        });
        out.push(ContentKind::Typing {
            group: None,
            typing: true,
        });
        out.push(ContentKind::Typing {
            group: Some(group),
            typing: false,
        });
        out.push(ContentKind::Presence);
        out.push(ContentKind::ProfileKey {
            updated_ms: 5,
            key: SharedKey([0x4b; 32]),
        });
        out
    }

    #[test]
    fn unknown_kinds_items_and_group_content_decode_as_unsupported() {
        let head = |kind: u8| {
            let mut b = Content {
                message_id: MessageId([1; 16]),
                timestamp_ms: 1,
                access_key: None,
                kind: ContentKind::Unsupported { kind },
            }
            .encode();
            b.extend_from_slice(b"whatever a newer client puts here");
            b
        };
        assert_eq!(
            Content::decode(&head(0x99)).unwrap().kind,
            ContentKind::Unsupported { kind: 0x99 }
        );
        let mut b = head(tag::CHAT);
        b.truncate(b.len() - 33);
        b.push(0x42);
        b.extend_from_slice(&[0xff; 40]);
        assert_eq!(
            Content::decode(&b).unwrap().kind,
            ContentKind::Chat {
                item: ChatItem::Unsupported { tag: 0x42 }
            }
        );
        let mut b = head(tag::GROUP);
        b.truncate(b.len() - 33);
        b.extend_from_slice(&[4; 32]);
        b.push(0x77);
        b.extend_from_slice(&[0; 10]);
        assert_eq!(
            Content::decode(&b).unwrap().kind,
            ContentKind::Group {
                group: GroupId([4; 32]),
                body: GroupBody::Unsupported { sub: 0x77 }
            }
        );
    }

    #[test]
    fn timers_above_the_bound_and_long_quotes_are_refused_or_cut() {
        let mut b = Content {
            message_id: MessageId([1; 16]),
            timestamp_ms: 1,
            access_key: None,
            kind: ContentKind::Chat {
                item: ChatItem::Timer { expire_s: 5 },
            },
        }
        .encode();
        let n = b.len();
        b[n - 4..].copy_from_slice(&(MAX_TIMER_S + 1).to_be_bytes());
        assert!(matches!(
            Content::decode(&b),
            Err(ContentError::Decode(DecodeError::Invalid { field: "timer" }))
        ));
        // A snippet longer than the bound is cut on a character boundary when encoded.
        let long = "é".repeat(MAX_QUOTE_LEN);
        let c = Content {
            message_id: MessageId([1; 16]),
            timestamp_ms: 1,
            access_key: None,
            kind: ContentKind::Chat {
                item: ChatItem::Text {
                    text: String::new(),
                    quote: Some(Quote {
                        author: AccountId([1; 32]),
                        id: MessageId([2; 16]),
                        snippet: long,
                    }),
                    expire_s: 0,
                },
            },
        };
        let Ok(Content {
            kind: ContentKind::Chat {
                item: ChatItem::Text { quote: Some(q), .. },
            },
            ..
        }) = Content::decode(&c.encode())
        else {
            panic!("a reply decodes");
        };
        assert_eq!(q.snippet.len(), MAX_QUOTE_LEN);
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
            // A delivery receipt's group id is optional and last: without it, the
            // receipt is a 1:1 one, and one byte more starts a group id.
            let receipt = matches!(c.kind, ContentKind::Delivered { .. });
            for n in 0..bytes.len() {
                match Content::decode(&bytes[..n]) {
                    Err(_) => {}
                    Ok(d) => assert!(
                        receipt
                            && n + 32 == bytes.len()
                            && matches!(d.kind, ContentKind::Delivered { group: None, .. }),
                        "{n} bytes of {c:?} decoded"
                    ),
                }
            }
            let mut longer = bytes.clone();
            longer.push(0);
            let e = Content::decode(&longer);
            if receipt {
                assert!(e.is_err());
            } else {
                assert!(matches!(
                    e,
                    Err(ContentError::Decode(DecodeError::TrailingBytes { count: 1 }))
                ));
            }
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
