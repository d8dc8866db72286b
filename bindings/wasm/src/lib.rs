//! wasm-bindgen bindings over `sotto-sdk` for the web (browsers, workers) and node.
//!
//! A thin layer, like `sotto-ffi` (docs/ARCHITECTURE.md, "Bindings"): it mirrors the
//! SDK's types as JavaScript classes with TypeScript types, parses the string ids and
//! the store key apps pass in, and turns `ClientError` into a JavaScript `Error` named
//! `SottoError` with the SDK's stable `code` and `retryable`. The client, its relay
//! connection (the platform's `WebSocket` and `fetch`), the crypto and the encrypted
//! IndexedDB store are `sotto-sdk`'s, compiled to wasm; nothing is reimplemented in
//! JavaScript.
//!
//! Conventions for the web (docs/bindings.md): ids are strings, timestamps and orders are
//! plain numbers (milliseconds), never BigInt.
//!
//! On native targets this crate is empty.
#![cfg(target_arch = "wasm32")]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::collections::VecDeque;
use std::rc::Rc;

use js_sys::{Array, Function, Object, Reflect};
use sotto_crypto::AccountId;
use sotto_sdk::group::GroupError;
use sotto_sdk::store::{IdbStore, StoreKey};
use sotto_sdk::{
    Client, ClientError, ClientOptions, ConnectionState, Conversation, ConversationSummary, Event as SdkEvent,
    EventStream, GroupId, GroupInfo, ListDiff, MachineError, MessageId, MessageKey, MessageKind, MessageStatus, Page,
    Role, SendState, StoredMessage, TimelineItem,
};
use tokio::sync::{Mutex, watch};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use zeroize::Zeroizing;

#[wasm_bindgen(typescript_custom_section)]
const TS_ERROR: &'static str = r#"
/**
 * Every code a `SottoError` carries. Stable: new codes may be added, none is renamed.
 *
 * - "wrong_store_key": the store does not open with this key; "store": the store failed;
 *   "store_conflict": another writer got there first (retryable);
 *   "device_in_use": another client runs this device on this store (retryable once it stopped);
 * - "transport": the relay could not be reached or refused (see `retryable`);
 *   "device_list": a device list did not verify; "machine": the protocol refused;
 * - "account_exists", "no_account", "no_account_key" (the recovery key was exported already),
 *   "no_list_key", "needs_recovery_key", "bad_recovery_key", "bad_link_code", "link",
 *   "unknown_link_request", "link_timeout", "entropy";
 * - "bad_contact": not an account id or contact link; "unknown_contact": not a conversation;
 * - "bad_group_id": not a group id (64 hex digits); "unknown_group": no such group, or this
 *   account left it or was removed; "not_group_admin"; "group": a group change refused
 *   (e.g. too many members); "sender_key": a group message could not be encrypted;
 * - "blocked": the contact is blocked; "identity_unacknowledged": the contact's safety
 *   number changed: `acknowledgeIdentity` before sending; "too_long": a text or emoji above
 *   its bound; "timer_too_long": a timer above one year (366 days);
 * - "unknown_message": no such message (or not one that can be edited);
 *   "not_author": only its author edits or deletes a message;
 *   "not_queued": the message cannot be cancelled (already sent) or retried (not failed);
 * - "invalid_argument": an argument the binding refused (a malformed key, a negative number);
 *   "aborted": the `AbortSignal` passed in was aborted; "closed": the client is shut down.
 */
export type SottoErrorCode =
  | "wrong_store_key" | "store_conflict" | "store" | "device_in_use" | "machine" | "transport"
  | "device_list" | "account_exists" | "no_account" | "bad_contact" | "unknown_contact"
  | "bad_link_code" | "link" | "no_account_key" | "no_list_key" | "needs_recovery_key"
  | "bad_recovery_key" | "unknown_link_request" | "link_timeout" | "entropy"
  | "bad_group_id" | "unknown_group" | "not_group_admin" | "group" | "sender_key"
  | "blocked" | "identity_unacknowledged" | "too_long" | "timer_too_long"
  | "unknown_message" | "not_author" | "not_queued"
  | "invalid_argument" | "aborted" | "closed";

/**
 * What every call rejects with (or throws): an `Error` named "SottoError" with a stable
 * `code` (see `SottoErrorCode`) and `retryable`, true when the same call may succeed later.
 */
export interface SottoError extends Error {
  name: "SottoError";
  code: SottoErrorCode;
  retryable: boolean;
}

/**
 * A conversation: a contact's account id (52 base32 characters) or a group id (64 hex
 * digits). A `MessageKey` names one message: `<conversation>/<author account>/<id>`,
 * as `Message.key` gives it (treat it as opaque).
 */
export type ConversationId = string;
export type MessageKey = string;

/** One account's reaction. */
export interface ReactionInfo {
  /** The account that reacted. */
  by: string;
  /** The emoji. */
  emoji: string;
  /** When (the reactor's clock), Unix ms. */
  atMs: number;
}

/** The message a reply quotes. */
export interface QuoteInfo {
  /** Its key (it may be gone: deleted, expired or never received). */
  key: MessageKey;
  /** Its author's account id. */
  author: string;
  /** The start of its text. */
  snippet: string;
}

/**
 * A message as the live lists give it: a plain object (nothing to free), the same fields
 * as the `Message` class.
 */
export interface ChatMessage {
  key: MessageKey;
  id: string;
  conversation: ConversationId;
  group?: string;
  senderAccount: string;
  senderDevice: number;
  timestampMs: number;
  text: string;
  status: MessageStatusName;
  order: number;
  kind: "text" | "timer" | "identityChanged" | "unsupported" | "unknown";
  timerS?: number;
  quote?: QuoteInfo;
  editedAtMs: number;
  deleted: boolean;
  reactions: ReactionInfo[];
  expireS: number;
  expiresAtMs: number;
}

export type MessageStatusName =
  | "received" | "queued" | "sent" | "delivered" | "read" | "sentElsewhere"
  | "failed" | "failedRetryable" | "unknown";

/** Where a message this account wrote is: queued → sent → delivered → read, or failed. */
export type SendStateName =
  | "queued" | "sending" | "sent" | "delivered" | "read" | "sentElsewhere" | "failed" | "unknown";

/** One item of a timeline. */
export interface TimelineItem {
  /** The message's key (the item's identity across diffs). */
  key: MessageKey;
  message: ChatMessage;
  /** For a message this account wrote; undefined for a received one. */
  sendState?: SendStateName;
  /** For a failed send: a stable code, and whether `retry(key)` may work. */
  failure?: { error: string; retryable: boolean };
}

/** One conversation as the conversation list shows it. */
export interface ConversationSummary {
  conversation: ConversationId;
  /** The group id, for a group. */
  group?: string;
  /** The nickname, the contact's profile name, or the group's title; "" when none is known. */
  name: string;
  lastMessage?: ChatMessage;
  /** Messages from others not read yet (at most 999). */
  unread: number;
  /** Accounts typing now. */
  typing: string[];
  /** A message request: someone this account has not accepted wrote first. */
  isRequest: boolean;
  blocked: boolean;
  /** The disappearing-message timer, seconds (0: off). */
  expireS: number;
  /** The contact's safety number changed and was not acknowledged: sends wait. */
  identityUnacked: boolean;
}

/**
 * One change to a live list. The first callback is always one "reset"; apply every later
 * batch in order to the list you hold (`applyDiffs` does).
 */
export type ListDiff<T> =
  | { kind: "reset"; items: T[] }
  | { kind: "insert"; index: number; item: T }
  | { kind: "update"; index: number; item: T }
  | { kind: "remove"; index: number };
"#;

/// A `SottoError` (see the TypeScript declaration above).
fn error(code: &str, message: &str, retryable: bool) -> JsValue {
    let e = js_sys::Error::new(message);
    e.set_name("SottoError");
    let _ = Reflect::set(&e, &"code".into(), &code.into());
    let _ = Reflect::set(&e, &"retryable".into(), &retryable.into());
    e.into()
}

fn client_error(e: ClientError) -> JsValue {
    // The SDK reports group refusals as `machine` errors; the binding names them.
    let code = match &e {
        ClientError::Machine(MachineError::UnknownGroup) => "unknown_group",
        ClientError::Machine(MachineError::Group(GroupError::NotAdmin)) => "not_group_admin",
        ClientError::Machine(MachineError::Group(_)) => "group",
        ClientError::Machine(MachineError::SenderKey(_)) => "sender_key",
        _ => e.code(),
    };
    error(code, &e.to_string(), e.is_retryable())
}

fn invalid(message: &str) -> JsValue {
    error("invalid_argument", message, false)
}

fn closed() -> JsValue {
    error("closed", "the client is shut down", false)
}

/// An account id or a `sotto:` link.
fn account(s: &str) -> Result<AccountId, JsValue> {
    sotto_sdk::parse_contact(s).map_err(client_error)
}

/// Account ids or `sotto:` links.
fn accounts(list: &[String]) -> Result<Vec<AccountId>, JsValue> {
    list.iter().map(|s| account(s)).collect()
}

/// A group id: 64 hex digits.
fn group_id(s: &str) -> Result<GroupId, JsValue> {
    s.parse()
        .map_err(|_| error("bad_group_id", "not a group id (64 hex digits)", false))
}

fn store_key(bytes: &[u8]) -> Result<StoreKey, JsValue> {
    let key: Zeroizing<[u8; 32]> = Zeroizing::new(
        bytes
            .try_into()
            .map_err(|_| invalid("the store key must be 32 bytes"))?,
    );
    Ok(StoreKey::new(*key))
}

/// A JavaScript number that must be a non-negative integer below 2^53.
fn whole(n: f64, what: &str) -> Result<u64, JsValue> {
    if n.is_finite() && n >= 0.0 && n.fract() == 0.0 && n <= 9_007_199_254_740_991.0 {
        Ok(n as u64)
    } else {
        Err(invalid(&format!("{what} must be a whole number")))
    }
}

/// The package version.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").into()
}

/// A conversation from its string: a group id (64 hex digits) or a contact (an account
/// id or a `sotto:` link).
fn conversation(s: &str) -> Result<Conversation, JsValue> {
    let t = s.trim();
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(Conversation::Group(group_id(t)?));
    }
    Ok(Conversation::Direct(account(t)?))
}

fn conversation_str(c: &Conversation) -> String {
    match c {
        Conversation::Direct(a) => a.to_string(),
        Conversation::Group(g) => g.to_string(),
    }
}

/// A message id from its text form (32 hex digits, dashes anywhere).
fn message_id(s: &str) -> Option<MessageId> {
    let hex: Vec<u8> = s.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let digits = std::str::from_utf8(pair).ok()?;
        id[i] = u8::from_str_radix(digits, 16).ok()?;
    }
    Some(MessageId(id))
}

/// The text form of a message key: `<conversation>/<author account>/<id>`.
fn key_str(conversation: &str, author: &AccountId, id: &MessageId) -> String {
    format!("{conversation}/{author}/{id}")
}

/// A message key from its text form (`Message.key`).
fn message_key(s: &str) -> Result<MessageKey, JsValue> {
    let bad = || invalid("not a message key (<conversation>/<author>/<id>, as Message.key gives it)");
    let mut parts = s.split('/');
    let (Some(c), Some(a), Some(i), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let conversation = conversation(c).map_err(|_| bad())?;
    let sender = sotto_sdk::parse_contact(a).map_err(|_| bad())?;
    let id = message_id(i).ok_or_else(bad)?;
    Ok(MessageKey {
        conversation: conversation.key(),
        sender,
        id,
    })
}

fn status_name(s: MessageStatus) -> &'static str {
    match s {
        MessageStatus::Received => "received",
        MessageStatus::Queued => "queued",
        MessageStatus::Sent => "sent",
        MessageStatus::Delivered => "delivered",
        MessageStatus::Read => "read",
        MessageStatus::SentElsewhere => "sentElsewhere",
        MessageStatus::Failed { retryable: false } => "failed",
        MessageStatus::Failed { retryable: true } => "failedRetryable",
        _ => "unknown",
    }
}

/// One account's reaction to a message.
#[wasm_bindgen(getter_with_clone)]
#[derive(Clone, Debug)]
pub struct Reaction {
    /// The account that reacted.
    #[wasm_bindgen(readonly)]
    pub by: String,
    /// The emoji.
    #[wasm_bindgen(readonly)]
    pub emoji: String,
    /// When (the reactor's clock), Unix milliseconds.
    #[wasm_bindgen(readonly, js_name = atMs)]
    pub at_ms: f64,
}

/// The message a reply quotes.
#[wasm_bindgen(getter_with_clone)]
#[derive(Clone, Debug)]
pub struct Quote {
    /// Its key (the message may be gone: deleted, expired, or never received here).
    #[wasm_bindgen(readonly)]
    pub key: String,
    /// Its author's account id.
    #[wasm_bindgen(readonly)]
    pub author: String,
    /// The start of its text.
    #[wasm_bindgen(readonly)]
    pub snippet: String,
}

/// One message of a conversation.
#[wasm_bindgen(getter_with_clone)]
#[derive(Clone, Debug)]
pub struct Message {
    /// Names this message in `reply`, `edit`, `deleteForEveryone`, `react`, `cancel`,
    /// `retry` and `message`: `<conversation>/<author account>/<id>` (treat it as opaque).
    #[wasm_bindgen(readonly)]
    pub key: String,
    /// The message id (hex).
    #[wasm_bindgen(readonly)]
    pub id: String,
    /// The conversation: the contact's account id, or for a group message the group id.
    #[wasm_bindgen(readonly)]
    pub conversation: String,
    /// The group id (64 hex digits) for a group message; undefined otherwise.
    #[wasm_bindgen(readonly)]
    pub group: Option<String>,
    /// The account that wrote it.
    #[wasm_bindgen(readonly, js_name = senderAccount)]
    pub sender_account: String,
    /// The device that wrote it.
    #[wasm_bindgen(readonly, js_name = senderDevice)]
    pub sender_device: u32,
    /// The sender's clock, Unix milliseconds.
    #[wasm_bindgen(readonly, js_name = timestampMs)]
    pub timestamp_ms: f64,
    /// The text (empty once deleted).
    #[wasm_bindgen(readonly)]
    pub text: String,
    /// "received", "queued", "sent", "delivered", "read", "sentElsewhere" (written on
    /// another device of this account), "failed" or "failedRetryable"; "unknown" for a
    /// state this version does not know.
    #[wasm_bindgen(readonly)]
    pub status: String,
    /// Its place in the store, increasing; pass it as `before` to page back.
    #[wasm_bindgen(readonly)]
    pub order: f64,
    /// "text", "timer" (someone set the disappearing-message timer: `timerS`),
    /// "identityChanged" (the contact's safety number changed: a local item),
    /// "unsupported" (content from a newer version), or "unknown".
    #[wasm_bindgen(readonly)]
    pub kind: String,
    /// The timer a "timer" item set, seconds (0: turned off).
    #[wasm_bindgen(readonly, js_name = timerS)]
    pub timer_s: Option<u32>,
    /// The message this one replies to.
    #[wasm_bindgen(readonly)]
    pub quote: Option<Quote>,
    /// When its author last edited it, Unix milliseconds; 0 if never.
    #[wasm_bindgen(readonly, js_name = editedAtMs)]
    pub edited_at_ms: f64,
    /// Its author deleted it for everyone.
    #[wasm_bindgen(readonly)]
    pub deleted: bool,
    /// The reactions, one per account.
    #[wasm_bindgen(readonly)]
    pub reactions: Vec<Reaction>,
    /// The disappearing-message timer it was sent with, seconds (0: none).
    #[wasm_bindgen(readonly, js_name = expireS)]
    pub expire_s: u32,
    /// When it disappears, Unix milliseconds; 0 for never (its timer starts once read).
    #[wasm_bindgen(readonly, js_name = expiresAtMs)]
    pub expires_at_ms: f64,
    /// The file it carries (`text` is its caption); download it with
    /// `downloadAttachment(key)`.
    #[wasm_bindgen(readonly)]
    pub attachment: Option<AttachmentMeta>,
}

/// A file a message carries, as shown before it is downloaded (its key stays in the SDK).
#[wasm_bindgen(getter_with_clone)]
#[derive(Clone, Debug)]
pub struct AttachmentMeta {
    /// Its size, bytes.
    #[wasm_bindgen(readonly)]
    pub size: f64,
    /// The media type the sender gave.
    #[wasm_bindgen(readonly, js_name = mediaType)]
    pub media_type: String,
    /// The file name the sender gave: show it, never use it as a path.
    #[wasm_bindgen(readonly, js_name = fileName)]
    pub file_name: String,
    /// A small preview image.
    #[wasm_bindgen(readonly)]
    pub thumbnail: Option<Vec<u8>>,
}

/// The string a message or event names its conversation with: the group id when the
/// SDK's conversation key is a group's (`group`, from `Client::group_of`), the account id
/// otherwise.
fn conversation_id(conversation: &AccountId, group: Option<GroupId>) -> String {
    match group {
        Some(g) => g.to_string(),
        None => conversation.to_string(),
    }
}

impl Message {
    /// Mirrors `m`; `group` is the group its conversation belongs to, if any.
    fn new(m: StoredMessage, group: Option<GroupId>) -> Self {
        let conversation = conversation_id(&m.conversation, group);
        let (kind, timer_s) = match m.kind {
            MessageKind::Text => ("text", None),
            MessageKind::Timer { expire_s } => ("timer", Some(expire_s)),
            MessageKind::IdentityChanged => ("identityChanged", None),
            MessageKind::Unsupported { .. } => ("unsupported", None),
            _ => ("unknown", None),
        };
        Self {
            key: key_str(&conversation, &m.sender.0, &m.id),
            id: m.id.to_string(),
            group: group.map(|g| g.to_string()),
            sender_account: m.sender.0.to_string(),
            sender_device: m.sender.1.0,
            timestamp_ms: m.timestamp_ms as f64,
            text: m.text,
            status: status_name(m.status).into(),
            order: m.order as f64,
            kind: kind.into(),
            timer_s,
            quote: m.quote.map(|q| Quote {
                key: key_str(&conversation, &q.author, &q.id),
                author: q.author.to_string(),
                snippet: q.snippet,
            }),
            edited_at_ms: m.edited_at_ms as f64,
            deleted: m.deleted,
            reactions: m
                .reactions
                .into_iter()
                .filter(|r| !r.emoji.is_empty())
                .map(|r| Reaction {
                    by: r.by.to_string(),
                    emoji: r.emoji,
                    at_ms: r.at_ms as f64,
                })
                .collect(),
            expire_s: m.expire_s,
            expires_at_ms: m.expires_at_ms as f64,
            attachment: m.attachment.as_deref().map(|a| AttachmentMeta {
                size: a.size as f64,
                media_type: a.media_type.clone(),
                file_name: a.file_name.clone(),
                thumbnail: a.thumbnail.clone(),
            }),
            conversation,
        }
    }

    /// The same fields as a plain JavaScript object (a `ChatMessage`).
    fn to_object(&self) -> Object {
        let o = Object::new();
        set(&o, "key", &self.key.as_str().into());
        set(&o, "id", &self.id.as_str().into());
        set(&o, "conversation", &self.conversation.as_str().into());
        if let Some(g) = &self.group {
            set(&o, "group", &g.as_str().into());
        }
        set(&o, "senderAccount", &self.sender_account.as_str().into());
        set(&o, "senderDevice", &self.sender_device.into());
        set(&o, "timestampMs", &self.timestamp_ms.into());
        set(&o, "text", &self.text.as_str().into());
        set(&o, "status", &self.status.as_str().into());
        set(&o, "order", &self.order.into());
        set(&o, "kind", &self.kind.as_str().into());
        if let Some(t) = self.timer_s {
            set(&o, "timerS", &t.into());
        }
        if let Some(q) = &self.quote {
            let qo = Object::new();
            set(&qo, "key", &q.key.as_str().into());
            set(&qo, "author", &q.author.as_str().into());
            set(&qo, "snippet", &q.snippet.as_str().into());
            set(&o, "quote", &qo);
        }
        set(&o, "editedAtMs", &self.edited_at_ms.into());
        set(&o, "deleted", &self.deleted.into());
        let reactions = Array::new();
        for r in &self.reactions {
            let ro = Object::new();
            set(&ro, "by", &r.by.as_str().into());
            set(&ro, "emoji", &r.emoji.as_str().into());
            set(&ro, "atMs", &r.at_ms.into());
            reactions.push(&ro);
        }
        set(&o, "reactions", &reactions);
        set(&o, "expireS", &self.expire_s.into());
        set(&o, "expiresAtMs", &self.expires_at_ms.into());
        o
    }
}

/// Sets a property of a plain object the binding built (it cannot fail on one).
fn set(o: &Object, key: &str, value: &JsValue) {
    let _ = Reflect::set(o, &key.into(), value);
}

/// A timeline item as a plain object (`TimelineItem`).
fn timeline_item(item: TimelineItem, group: Option<GroupId>) -> JsValue {
    let m = Message::new(item.message, group);
    let o = Object::new();
    set(&o, "key", &m.key.as_str().into());
    set(&o, "message", &m.to_object());
    if let Some(state) = item.send_state {
        let name = match &state {
            SendState::Queued => "queued",
            SendState::Sending => "sending",
            SendState::Sent => "sent",
            SendState::Delivered => "delivered",
            SendState::Read => "read",
            SendState::SentElsewhere => "sentElsewhere",
            SendState::Failed { .. } => "failed",
            _ => "unknown",
        };
        set(&o, "sendState", &name.into());
        if let SendState::Failed { error, retryable } = state {
            let f = Object::new();
            set(&f, "error", &error.into());
            set(&f, "retryable", &retryable.into());
            set(&o, "failure", &f);
        }
    }
    o.into()
}

/// A conversation summary as a plain object (`ConversationSummary`).
fn summary(s: ConversationSummary) -> JsValue {
    let group = s.conversation.group();
    let o = Object::new();
    set(&o, "conversation", &conversation_str(&s.conversation).into());
    if let Some(g) = group {
        set(&o, "group", &g.to_string().into());
    }
    set(&o, "name", &s.name.into());
    if let Some(m) = s.last_message {
        set(&o, "lastMessage", &Message::new(m, group).to_object());
    }
    set(&o, "unread", &s.unread.into());
    let typing: Array = s.typing.iter().map(|a| JsValue::from(a.to_string())).collect();
    set(&o, "typing", &typing);
    set(&o, "isRequest", &s.is_request.into());
    set(&o, "blocked", &s.blocked.into());
    set(&o, "expireS", &s.expire_s.into());
    set(&o, "identityUnacked", &s.identity_unacked.into());
    o.into()
}

/// A batch of diffs as an array of plain `ListDiff` objects.
fn diffs<T>(batch: Vec<ListDiff<T>>, item: impl Fn(T) -> JsValue) -> Array {
    let out = Array::new();
    for d in batch {
        let o = Object::new();
        match d {
            ListDiff::Reset { items } => {
                set(&o, "kind", &"reset".into());
                let list: Array = items.into_iter().map(&item).collect();
                set(&o, "items", &list);
            }
            ListDiff::Insert { index, item: i } => {
                set(&o, "kind", &"insert".into());
                set(&o, "index", &(index as f64).into());
                set(&o, "item", &item(i));
            }
            ListDiff::Update { index, item: i } => {
                set(&o, "kind", &"update".into());
                set(&o, "index", &(index as f64).into());
                set(&o, "item", &item(i));
            }
            ListDiff::Remove { index } => {
                set(&o, "kind", &"remove".into());
                set(&o, "index", &(index as f64).into());
            }
        }
        out.push(&o);
    }
    out
}

/// A member of a group.
#[wasm_bindgen(getter_with_clone)]
#[derive(Clone, Debug)]
pub struct GroupMember {
    /// The member's account id.
    #[wasm_bindgen(readonly)]
    pub account: String,
    /// "admin" (also changes the group) or "member".
    #[wasm_bindgen(readonly)]
    pub role: String,
}

/// A group as this device holds it.
#[wasm_bindgen(getter_with_clone)]
#[derive(Clone, Debug)]
pub struct Group {
    /// The group id: 64 lowercase hex digits.
    #[wasm_bindgen(readonly)]
    pub id: String,
    /// Its title (members see it; the relay does not).
    #[wasm_bindgen(readonly)]
    pub title: String,
    /// Its members with their roles, this account included while it is in the group.
    #[wasm_bindgen(readonly)]
    pub members: Vec<GroupMember>,
    /// The group state's version: 0 when created, one more for each change.
    #[wasm_bindgen(readonly)]
    pub version: f64,
    /// False once this account left the group or was removed from it.
    #[wasm_bindgen(readonly)]
    pub active: bool,
}

impl From<GroupInfo> for Group {
    fn from(g: GroupInfo) -> Self {
        Self {
            id: g.id.to_string(),
            title: g.title,
            members: g
                .members
                .into_iter()
                .map(|(account, role)| GroupMember {
                    account: account.to_string(),
                    role: match role {
                        Role::Admin => "admin",
                        Role::Member => "member",
                    }
                    .into(),
                })
                .collect(),
            version: g.version as f64,
            active: g.active,
        }
    }
}

/// Something that happened. `kind` says what, and which other fields are set:
///
/// - "messageReceived": `message` (from a contact, or written on another device of this
///   account);
/// - "messageSent": `messageId`, `conversation` (the relay stored it for every device);
/// - "delivered": `conversation` (and `group`), `messageIds`, `account`, `device` (a device
///   of the contact, or of a group member, has them);
/// - "deviceListChanged": `account`, `added`, `removed`, `rekeyed`, `detail`;
/// - "deviceListRejected": `account`, `detail` (a list that did not verify);
/// - "undecryptable": `detail` (the cause), `account`/`device` when known;
/// - "sendFailed": `messageId`, `detail`;
/// - "groupChanged": `group` (created, joined, changed, or this account left it or was
///   removed: read it again with `group()`, whose `active` is then false);
/// - "groupChangeRejected": `group`, `detail` (a change that lost or was refused);
/// - "messageEdited", "messageDeleted": `key`, `conversation` (and `group`): its author
///   edited it or deleted it for everyone (read it again with `message(key)`);
/// - "reactionChanged": `key`, `conversation`, `account` (who), `emoji` ("" when removed);
/// - "read": `conversation`, `messageIds`, `account`, `device` (a reader read them);
/// - "timerChanged": `conversation`, `expireS` (0: off), `account` (who set it);
/// - "identityChanged": `account` (the contact's safety number changed: sends to them
///   fail with "identity_unacknowledged" until `acknowledgeIdentity`);
/// - "typing": `conversation`, `account`, `typing` (true while typing; it ends by itself);
/// - "profileChanged": `account` (a contact's profile name changed: the conversation
///   list's `name` follows, unless a nickname is set);
/// - "connectionState": `state`, and `code`, `retryInMs` (see those fields);
/// - "deviceRemoved", "connected", "caughtUp";
/// - "unknown": an event this version does not know.
#[wasm_bindgen(getter_with_clone)]
#[derive(Clone, Debug, Default)]
pub struct SottoEvent {
    /// What happened.
    #[wasm_bindgen(readonly)]
    pub kind: String,
    /// The message ("messageReceived").
    #[wasm_bindgen(readonly)]
    pub message: Option<Message>,
    /// The conversation ("messageSent", "sendFailed", "delivered", ...): the contact's
    /// account id, or the group id.
    #[wasm_bindgen(readonly)]
    pub conversation: Option<String>,
    /// The group id ("groupChanged", "groupChangeRejected", and "messageSent",
    /// "sendFailed" or "delivered" in a group).
    #[wasm_bindgen(readonly)]
    pub group: Option<String>,
    /// The message ("messageSent", "sendFailed").
    #[wasm_bindgen(readonly, js_name = messageId)]
    pub message_id: Option<String>,
    /// The messages ("delivered").
    #[wasm_bindgen(readonly, js_name = messageIds)]
    pub message_ids: Option<Vec<String>>,
    /// The account concerned.
    #[wasm_bindgen(readonly)]
    pub account: Option<String>,
    /// The device concerned ("delivered", "undecryptable").
    #[wasm_bindgen(readonly)]
    pub device: Option<u32>,
    /// Devices added, removed and re-keyed ("deviceListChanged").
    #[wasm_bindgen(readonly)]
    pub added: Option<Vec<u32>>,
    /// See `added`.
    #[wasm_bindgen(readonly)]
    pub removed: Option<Vec<u32>>,
    /// See `added`.
    #[wasm_bindgen(readonly)]
    pub rekeyed: Option<Vec<u32>>,
    /// A human-readable cause or summary, for display.
    #[wasm_bindgen(readonly)]
    pub detail: Option<String>,
    /// A stable error code ("sendFailed": the relay's error code name such as
    /// `MAILBOX_FULL`, or `DEVICE_SET_CHANGING`, `DEVICE_LIST`, `ENCRYPT`, `BAD_BUNDLE`).
    #[wasm_bindgen(readonly)]
    pub code: Option<String>,
    /// True when sending again later may work ("sendFailed").
    #[wasm_bindgen(readonly)]
    pub retryable: Option<bool>,
    /// The connection's state ("connectionState"): `connecting`, `connected`,
    /// `disconnected`, `stopped`; `code` then names the cause (`unreachable`, `closed`,
    /// `idle_timeout`, ..., or for `stopped`: `superseded`, `device_removed`).
    #[wasm_bindgen(readonly)]
    pub state: Option<String>,
    /// Milliseconds until the next attempt ("connectionState", `disconnected`).
    #[wasm_bindgen(readonly, js_name = retryInMs)]
    pub retry_in_ms: Option<f64>,
    /// The message ("messageEdited", "messageDeleted", "reactionChanged"), as
    /// `Message.key`.
    #[wasm_bindgen(readonly)]
    pub key: Option<String>,
    /// The emoji ("reactionChanged"); empty when the reaction was removed.
    #[wasm_bindgen(readonly)]
    pub emoji: Option<String>,
    /// The timer, seconds ("timerChanged"); 0 when turned off.
    #[wasm_bindgen(readonly, js_name = expireS)]
    pub expire_s: Option<u32>,
    /// True while the account types ("typing").
    #[wasm_bindgen(readonly)]
    pub typing: Option<bool>,
}

fn kind(kind: &str) -> SottoEvent {
    SottoEvent {
        kind: kind.into(),
        ..SottoEvent::default()
    }
}

fn ids(ids: &[sotto_crypto::DeviceId]) -> Vec<u32> {
    ids.iter().map(|d| d.0).collect()
}

/// The text form of a message key an event names.
fn event_key(key: &MessageKey, group: Option<GroupId>) -> String {
    key_str(&conversation_id(&key.conversation, group), &key.sender, &key.id)
}

/// The conversation an event names, whose group (if any) the event carries.
fn event_conversation(e: &SdkEvent) -> Option<&AccountId> {
    match e {
        SdkEvent::MessageReceived(m) => Some(&m.conversation),
        SdkEvent::MessageSent { conversation, .. }
        | SdkEvent::SendFailed { conversation, .. }
        | SdkEvent::Read { conversation, .. }
        | SdkEvent::Delivered { conversation, .. }
        | SdkEvent::TimerChanged { conversation, .. }
        | SdkEvent::Typing { conversation, .. } => Some(conversation),
        SdkEvent::MessageEdited { key } | SdkEvent::MessageDeleted { key } | SdkEvent::ReactionChanged { key, .. } => {
            Some(&key.conversation)
        }
        _ => None,
    }
}

impl SottoEvent {
    /// Mirrors `e`; `group` is the group its conversation belongs to, if any.
    fn new(e: SdkEvent, group: Option<GroupId>) -> Self {
        let group_str = group.map(|g| g.to_string());
        match e {
            SdkEvent::MessageReceived(m) => SottoEvent {
                message: Some(Message::new(m, group)),
                ..kind("messageReceived")
            },
            SdkEvent::MessageSent { id, conversation } => SottoEvent {
                message_id: Some(id.to_string()),
                conversation: Some(conversation_id(&conversation, group)),
                group: group_str,
                ..kind("messageSent")
            },
            SdkEvent::Delivered { conversation, ids, by } => SottoEvent {
                conversation: Some(conversation_id(&conversation, group)),
                group: group_str,
                message_ids: Some(ids.iter().map(ToString::to_string).collect()),
                account: Some(by.0.to_string()),
                device: Some(by.1.0),
                ..kind("delivered")
            },
            SdkEvent::DeviceListChanged { account, change } => SottoEvent {
                account: Some(account.to_string()),
                detail: Some(format!(
                    "{} added, {} removed, {} re-keyed",
                    change.added.len(),
                    change.removed.len(),
                    change.rekeyed.len()
                )),
                added: Some(ids(&change.added)),
                removed: Some(ids(&change.removed)),
                rekeyed: Some(ids(&change.rekeyed)),
                ..kind("deviceListChanged")
            },
            SdkEvent::DeviceListRejected { account, error } => SottoEvent {
                account: Some(account.to_string()),
                detail: Some(error.to_string()),
                ..kind("deviceListRejected")
            },
            SdkEvent::Undecryptable { sender, cause } => SottoEvent {
                account: sender.map(|s| s.0.to_string()),
                device: sender.map(|s| s.1.0),
                detail: Some(cause.to_string()),
                ..kind("undecryptable")
            },
            SdkEvent::SendFailed {
                id,
                reason,
                conversation,
                code,
                retryable,
            } => SottoEvent {
                message_id: Some(id.to_string()),
                detail: Some(reason),
                conversation: Some(conversation_id(&conversation, group)),
                group: group_str,
                code: Some(code.to_owned()),
                retryable: Some(retryable),
                ..kind("sendFailed")
            },
            SdkEvent::GroupChanged { group } => SottoEvent {
                group: Some(group.to_string()),
                ..kind("groupChanged")
            },
            SdkEvent::GroupChangeRejected { group, error } => SottoEvent {
                group: Some(group.to_string()),
                detail: Some(error.to_string()),
                ..kind("groupChangeRejected")
            },
            SdkEvent::DeviceRemoved => kind("deviceRemoved"),
            SdkEvent::Connected => kind("connected"),
            SdkEvent::ConnectionState { state } => {
                let (cause, retry_in_ms) = match &state {
                    ConnectionState::Disconnected { retry_in_ms, cause } => {
                        (Some(cause.code()), Some(*retry_in_ms as f64))
                    }
                    ConnectionState::Stopped { cause } => (Some(cause.code()), None),
                    _ => (None, None),
                };
                SottoEvent {
                    state: Some(state.code().into()),
                    code: cause.map(Into::into),
                    retry_in_ms,
                    ..kind("connectionState")
                }
            }
            SdkEvent::CaughtUp => kind("caughtUp"),
            SdkEvent::MessageEdited { key } => SottoEvent {
                key: Some(event_key(&key, group)),
                conversation: Some(conversation_id(&key.conversation, group)),
                group: group_str,
                ..kind("messageEdited")
            },
            SdkEvent::MessageDeleted { key } => SottoEvent {
                key: Some(event_key(&key, group)),
                conversation: Some(conversation_id(&key.conversation, group)),
                group: group_str,
                ..kind("messageDeleted")
            },
            SdkEvent::ReactionChanged { key, by, emoji } => SottoEvent {
                key: Some(event_key(&key, group)),
                conversation: Some(conversation_id(&key.conversation, group)),
                group: group_str,
                account: Some(by.to_string()),
                emoji: Some(emoji),
                ..kind("reactionChanged")
            },
            SdkEvent::Read { conversation, ids, by } => SottoEvent {
                conversation: Some(conversation_id(&conversation, group)),
                group: group_str,
                message_ids: Some(ids.iter().map(ToString::to_string).collect()),
                account: Some(by.0.to_string()),
                device: Some(by.1.0),
                ..kind("read")
            },
            SdkEvent::TimerChanged {
                conversation,
                expire_s,
                by,
            } => SottoEvent {
                conversation: Some(conversation_id(&conversation, group)),
                group: group_str,
                expire_s: Some(expire_s),
                account: Some(by.to_string()),
                ..kind("timerChanged")
            },
            SdkEvent::IdentityChanged { account } => SottoEvent {
                account: Some(account.to_string()),
                ..kind("identityChanged")
            },
            SdkEvent::ProfileChanged { account } => SottoEvent {
                account: Some(account.to_string()),
                ..kind("profileChanged")
            },
            SdkEvent::Typing {
                conversation,
                by,
                typing,
            } => SottoEvent {
                conversation: Some(conversation_id(&conversation, group)),
                group: group_str,
                account: Some(by.to_string()),
                typing: Some(typing),
                ..kind("typing")
            },
            _ => kind("unknown"),
        }
    }
}

#[wasm_bindgen]
extern "C" {
    /// The platform's `AbortSignal` (browsers, node).
    #[wasm_bindgen(typescript_type = "AbortSignal")]
    pub type AbortSignal;

    #[wasm_bindgen(method, getter)]
    fn aborted(this: &AbortSignal) -> bool;

    #[wasm_bindgen(method, js_name = addEventListener)]
    fn add_event_listener(this: &AbortSignal, kind: &str, listener: &Function, options: &JsValue);

    #[wasm_bindgen(method, js_name = removeEventListener)]
    fn remove_event_listener(this: &AbortSignal, kind: &str, listener: &Function);
}

/// An "abort" listener, removed when dropped (a long-lived signal passed to many calls
/// keeps no listener of a call that ended).
struct Listening {
    signal: AbortSignal,
    listener: Function,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.signal.remove_event_listener("abort", &self.listener);
    }
}

/// Resolves once `signal` aborts (never, without one).
async fn aborted(signal: Option<&AbortSignal>) {
    let Some(signal) = signal else {
        return std::future::pending().await;
    };
    if signal.aborted() {
        return;
    }
    let once = Object::new();
    set(&once, "once", &true.into());
    let mut listener = None;
    let p = js_sys::Promise::new(&mut |resolve, _| {
        signal.add_event_listener("abort", &resolve, &once);
        listener = Some(resolve);
    });
    let _listening = listener.map(|listener| Listening {
        signal: signal.unchecked_ref::<JsValue>().clone().unchecked_into(),
        listener,
    });
    let _ = wasm_bindgen_futures::JsFuture::from(p).await;
}

fn abort_error() -> JsValue {
    error("aborted", "the call was aborted by its AbortSignal", false)
}

/// The event stream, and the events taken from it for a call that was aborted before it
/// could hand them over: the next call gets them first, so an abort never loses one.
struct Events {
    stash: VecDeque<SdkEvent>,
    stream: EventStream,
}

/// One device of one account: its encrypted IndexedDB store and its relay connection.
///
/// Create one with `SottoClient.createAccount` or `SottoClient.open`; read events with
/// `nextEvent()`; watch the conversation list and timelines with `conversationList()` and
/// `timeline()`; call `shutdown()` when done (then `free()`).
#[wasm_bindgen]
pub struct SottoClient {
    client: Rc<Client<IdbStore>>,
    events: Rc<Mutex<Events>>,
    closed: watch::Sender<bool>,
}

impl SottoClient {
    fn new(client: Client<IdbStore>) -> Result<Self, JsValue> {
        let events = client
            .events()
            .ok_or_else(|| error("internal", "the event stream was taken", false))?;
        Ok(Self {
            client: Rc::new(client),
            events: Rc::new(Mutex::new(Events {
                stash: VecDeque::new(),
                stream: events,
            })),
            closed: watch::channel(false).0,
        })
    }

    /// The client, unless shut down.
    fn live(&self) -> Result<Rc<Client<IdbStore>>, JsValue> {
        if *self.closed.borrow() {
            return Err(closed());
        }
        Ok(self.client.clone())
    }
}

#[wasm_bindgen]
impl SottoClient {
    /// Creates an account with its first device, registers it at `relayUrl` (exactly
    /// the relay's `public_url`) and connects. The store is the IndexedDB database
    /// `dbName`, encrypted under `storeKey` (32 bytes the app keeps, for example wrapped
    /// by a non-extractable WebCrypto key).
    #[wasm_bindgen(js_name = createAccount)]
    pub async fn create_account(
        db_name: String,
        store_key: Vec<u8>,
        relay_url: String,
    ) -> Result<SottoClient, JsValue> {
        let key = store_key_zeroized(store_key)?;
        let store = IdbStore::open(&db_name, &key)
            .await
            .map_err(|e| client_error(e.into()))?;
        let client = Client::create_account(store, key, &relay_url, ClientOptions::default())
            .await
            .map_err(client_error)?;
        Self::new(client)
    }

    /// Opens the account in the IndexedDB database `dbName` and connects.
    pub async fn open(db_name: String, store_key: Vec<u8>) -> Result<SottoClient, JsValue> {
        let key = store_key_zeroized(store_key)?;
        let store = IdbStore::open(&db_name, &key)
            .await
            .map_err(|e| client_error(e.into()))?;
        let client = Client::open(store, key, ClientOptions::default())
            .await
            .map_err(client_error)?;
        Self::new(client)
    }

    /// This account's id.
    #[wasm_bindgen(getter, js_name = accountId)]
    pub fn account_id(&self) -> String {
        self.client.account_id().to_string()
    }

    /// This device's id within the account.
    #[wasm_bindgen(getter, js_name = deviceId)]
    pub fn device_id(&self) -> u32 {
        self.client.device_id().0
    }

    /// The link others add this account with (`sotto:<account id>.<hex access key>`): whoever
    /// adds it sends as a contact, not as a message request.
    #[wasm_bindgen(getter, js_name = contactLink)]
    pub fn contact_link(&self) -> String {
        self.client.contact_link()
    }

    /// Adds a contact by account id or `sotto:` link (fetching and pinning its device
    /// list); returns its account id.
    #[wasm_bindgen(js_name = addContact)]
    pub async fn add_contact(&self, contact: String) -> Result<String, JsValue> {
        let client = self.live()?;
        let id = client.add_contact(&contact).await.map_err(client_error)?;
        Ok(id.to_string())
    }

    /// Queues a text for a contact (an account id) and returns the stored message; it is
    /// sent now, or after a reconnect.
    #[wasm_bindgen(js_name = sendText)]
    pub async fn send_text(&self, contact: String, text: String) -> Result<Message, JsValue> {
        let client = self.live()?;
        let to = account(&contact)?;
        client
            .send_text(&to, &text)
            .await
            .map(|m| Message::new(m, None))
            .map_err(client_error)
    }

    /// Accounts that wrote to this one and were not accepted yet: message requests.
    #[wasm_bindgen(js_name = messageRequests)]
    pub async fn message_requests(&self) -> Result<Vec<String>, JsValue> {
        let client = self.live()?;
        let list = client.message_requests().await.map_err(client_error)?;
        Ok(list.iter().map(ToString::to_string).collect())
    }

    /// Accepts a message request (an account id): the account's access key goes to the
    /// contact with the next message or receipt.
    #[wasm_bindgen(js_name = acceptMessageRequest)]
    pub async fn accept_message_request(&self, contact: String) -> Result<(), JsValue> {
        let client = self.live()?;
        let who = account(&contact)?;
        client.accept_message_request(&who).await.map_err(client_error)
    }

    /// The conversations (contacts' account ids).
    pub async fn conversations(&self) -> Result<Vec<String>, JsValue> {
        let client = self.live()?;
        let list = client.conversations().await.map_err(client_error)?;
        Ok(list.iter().map(ToString::to_string).collect())
    }

    /// The last `limit` messages of a conversation stored before `before` (an `order`;
    /// omitted or null for the newest), oldest first.
    pub async fn messages(
        &self,
        conversation: String,
        limit: u32,
        before: Option<f64>,
    ) -> Result<Vec<Message>, JsValue> {
        let client = self.live()?;
        let conversation = account(&conversation)?;
        let before = before.map(|b| whole(b, "before")).transpose()?;
        let page = Page { before, limit };
        let list = client.messages(&conversation, page).await.map_err(client_error)?;
        Ok(list.into_iter().map(|m| Message::new(m, None)).collect())
    }

    /// Creates a group with this account as its admin and `members` (contacts' account ids
    /// or links) in it; returns its id (64 hex digits). Members who are not contacts of
    /// each other get each other's access keys through the group.
    #[wasm_bindgen(js_name = createGroup)]
    pub async fn create_group(&self, title: String, members: Vec<String>) -> Result<String, JsValue> {
        let client = self.live()?;
        let members = accounts(&members)?;
        let id = client.create_group(&title, &members).await.map_err(client_error)?;
        Ok(id.to_string())
    }

    /// Adds members (account ids or links) to a group (admins only); they read what is
    /// sent from now on.
    #[wasm_bindgen(js_name = addGroupMembers)]
    pub async fn add_group_members(&self, group: String, members: Vec<String>) -> Result<(), JsValue> {
        let client = self.live()?;
        let group = group_id(&group)?;
        let members = accounts(&members)?;
        client.add_group_members(&group, &members).await.map_err(client_error)
    }

    /// Removes a member (admins only): the group's keys change, so the member reads
    /// nothing sent afterwards.
    #[wasm_bindgen(js_name = removeGroupMember)]
    pub async fn remove_group_member(&self, group: String, member: String) -> Result<(), JsValue> {
        let client = self.live()?;
        let group = group_id(&group)?;
        let member = account(&member)?;
        client.remove_group_member(&group, &member).await.map_err(client_error)
    }

    /// Leaves a group.
    #[wasm_bindgen(js_name = leaveGroup)]
    pub async fn leave_group(&self, group: String) -> Result<(), JsValue> {
        let client = self.live()?;
        let group = group_id(&group)?;
        client.leave_group(&group).await.map_err(client_error)
    }

    /// Renames a group (admins only).
    #[wasm_bindgen(js_name = renameGroup)]
    pub async fn rename_group(&self, group: String, title: String) -> Result<(), JsValue> {
        let client = self.live()?;
        let group = group_id(&group)?;
        client.rename_group(&group, &title).await.map_err(client_error)
    }

    /// Makes a member an admin, or with `admin` false a plain member again (admins only).
    #[wasm_bindgen(js_name = setGroupAdmin)]
    pub async fn set_group_admin(&self, group: String, member: String, admin: bool) -> Result<(), JsValue> {
        let client = self.live()?;
        let group = group_id(&group)?;
        let member = account(&member)?;
        client
            .set_group_admin(&group, &member, admin)
            .await
            .map_err(client_error)
    }

    /// Queues a text to a group and returns the stored message (its `group` set).
    #[wasm_bindgen(js_name = sendGroupText)]
    pub async fn send_group_text(&self, group: String, text: String) -> Result<Message, JsValue> {
        let client = self.live()?;
        let group = group_id(&group)?;
        let m = client.send_group_text(&group, &text).await.map_err(client_error)?;
        Ok(Message::new(m, Some(group)))
    }

    /// The groups this account is or was in (`active` false once it left or was removed).
    pub async fn groups(&self) -> Result<Vec<Group>, JsValue> {
        let client = self.live()?;
        Ok(client.groups().await.into_iter().map(Into::into).collect())
    }

    /// One group, or undefined when this device knows no such group.
    pub async fn group(&self, group: String) -> Result<Option<Group>, JsValue> {
        let client = self.live()?;
        let group = group_id(&group)?;
        Ok(client.group(&group).await.map(Into::into))
    }

    /// The last `limit` messages of a group stored before `before` (an `order`; omitted
    /// or null for the newest), oldest first.
    #[wasm_bindgen(js_name = groupMessages)]
    pub async fn group_messages(
        &self,
        group: String,
        limit: u32,
        before: Option<f64>,
    ) -> Result<Vec<Message>, JsValue> {
        let client = self.live()?;
        let group = group_id(&group)?;
        let before = before.map(|b| whole(b, "before")).transpose()?;
        let page = Page { before, limit };
        let list = client.group_messages(&group, page).await.map_err(client_error)?;
        Ok(list.into_iter().map(|m| Message::new(m, Some(group))).collect())
    }

    /// Sends the delivery receipts that wait for their random delay now, for a page about
    /// to close. It gives up the delay that keeps the relay from pairing a delivery with
    /// its receipt, so a page that stays open should not call it.
    #[wasm_bindgen(js_name = sendReceiptsNow)]
    pub async fn send_receipts_now(&self) -> Result<(), JsValue> {
        let client = self.live()?;
        client.send_receipts_now().await;
        Ok(())
    }

    /// The safety number to compare with the contact in person.
    #[wasm_bindgen(js_name = safetyNumber)]
    pub async fn safety_number(&self, contact: String) -> Result<String, JsValue> {
        let client = self.live()?;
        let contact = account(&contact)?;
        client.safety_number(&contact).await.map_err(client_error)
    }

    /// The recovery key (the account key as text), handed out once: this device then
    /// deletes the account key. Show it to the user to keep offline; it is what takes
    /// back the account's device list (docs/protocol.md §12A.6).
    #[wasm_bindgen(js_name = exportRecoveryKey)]
    pub async fn export_recovery_key(&self) -> Result<String, JsValue> {
        let client = self.live()?;
        let key = client.export_recovery_key().await.map_err(client_error)?;
        Ok(key.as_str().to_owned())
    }

    /// The next event, or `undefined` once the client is shut down. Calls queue behind
    /// each other; an event is handed to exactly one of them.
    ///
    /// With `signal`, the call rejects with code "aborted" when the signal aborts first,
    /// and then has taken no event: the next call gets it. So a deadline never loses an
    /// event: `await client.nextEvent(AbortSignal.timeout(5000))`, or with
    /// `Promise.race`, abort the signal when the other side wins.
    #[wasm_bindgen(js_name = nextEvent)]
    pub async fn next_event(&self, signal: Option<AbortSignal>) -> Result<Option<SottoEvent>, JsValue> {
        let events = self.events.clone();
        let mut closed = self.closed.subscribe();
        if *closed.borrow() {
            return Ok(None);
        }
        let signal = signal.as_ref();
        if signal.is_some_and(AbortSignal::aborted) {
            return Err(abort_error());
        }
        let mut events = tokio::select! {
            s = events.lock() => s,
            _ = closed.wait_for(|c| *c) => return Ok(None),
            () = aborted(signal) => return Err(abort_error()),
        };
        let e = match events.stash.pop_front() {
            Some(e) => e,
            // `recv` is cancel-safe: an abort or a shutdown here takes nothing.
            None => tokio::select! {
                e = events.stream.next() => match e {
                    Some(e) => e,
                    None => return Ok(None),
                },
                _ = closed.wait_for(|c| *c) => return Ok(None),
                () = aborted(signal) => return Err(abort_error()),
            },
        };
        let group = match event_conversation(&e) {
            Some(c) => self.client.group_of(c).await,
            None => None,
        };
        // Aborted while the event's group was looked up: it goes back for the next call.
        if signal.is_some_and(AbortSignal::aborted) {
            events.stash.push_front(e);
            return Err(abort_error());
        }
        Ok(Some(SottoEvent::new(e, group)))
    }

    // ------------------------------------------------------------ the chat API

    /// Queues a text for a conversation (a contact's account id or link, or a group id)
    /// and returns the local item at once (status "queued"); watch it move with
    /// `timeline()` or the events.
    #[wasm_bindgen(js_name = sendMessage)]
    pub async fn send_message(&self, conversation: String, text: String) -> Result<Message, JsValue> {
        let client = self.live()?;
        let c = self::conversation(&conversation)?;
        let m = client.send_message(c, &text).await.map_err(client_error)?;
        Ok(Message::new(m, c.group()))
    }

    /// Encrypts a file and uploads it to the relay, then sends it to a conversation (a
    /// contact or a group): `data` is a `Uint8Array`, or a `Blob` (a `File`), which is read
    /// in slices as the upload goes, so memory stays flat whatever its size. Returns the
    /// local item (status "queued", `attachment` set).
    #[wasm_bindgen(js_name = sendAttachment)]
    pub async fn send_attachment(
        &self,
        conversation: String,
        data: JsValue,
        #[wasm_bindgen(js_name = mediaType)] media_type: String,
        #[wasm_bindgen(js_name = fileName)] file_name: String,
        caption: String,
    ) -> Result<Message, JsValue> {
        let client = self.live()?;
        let c = self::conversation(&conversation)?;
        let info = sotto_sdk::AttachmentInfo {
            media_type,
            file_name,
            caption,
            thumbnail: None,
        };
        let m = if let Some(array) = data.dyn_ref::<js_sys::Uint8Array>() {
            client
                .send_attachment_bytes(c, &array.to_vec(), info, None, None)
                .await
                .map_err(client_error)?
        } else {
            send_blob(&client, c, &data, info).await?
        };
        Ok(Message::new(m, c.group()))
    }

    /// Downloads the file of message `key` and returns it once all of it checked out
    /// (every chunk, the length, the digest): "attachment_corrupt" otherwise.
    #[wasm_bindgen(js_name = downloadAttachment)]
    pub async fn download_attachment(&self, key: String) -> Result<js_sys::Uint8Array, JsValue> {
        let client = self.live()?;
        let a = attachment_of(&client, &key).await?;
        let bytes = client
            .download_attachment_bytes(&a, None, None)
            .await
            .map_err(client_error)?;
        Ok(js_sys::Uint8Array::from(bytes.as_slice()))
    }

    /// Opens the file of message `key` for reading piece by piece: see
    /// `AttachmentReader`. For a large file, or media played as it arrives; wrap its
    /// `next()` in a `ReadableStream` to pipe it.
    #[wasm_bindgen(js_name = openAttachment)]
    pub async fn open_attachment(&self, key: String) -> Result<AttachmentReader, JsValue> {
        let client = self.live()?;
        let a = attachment_of(&client, &key).await?;
        let reader = client.open_attachment(&a).map_err(client_error)?;
        Ok(AttachmentReader {
            ciphertext_len: reader.ciphertext_len(),
            inner: std::rc::Rc::new(tokio::sync::Mutex::new(reader)),
        })
    }

    /// Registers this browser's push subscription with the relay: `service` is "webPush"
    /// (or "unifiedPush"), `subscription` the UTF-8 of `JSON.stringify(subscription)`.
    /// The relay then sends a content-free push when something waits and this client is
    /// not connected.
    #[wasm_bindgen(js_name = registerPush)]
    pub async fn register_push(&self, service: String, subscription: Vec<u8>) -> Result<(), JsValue> {
        let client = self.live()?;
        let provider = match service.as_str() {
            "webPush" => sotto_sdk::PushProvider::WebPush,
            "unifiedPush" => sotto_sdk::PushProvider::UnifiedPush,
            "apns" => sotto_sdk::PushProvider::Apns,
            "fcm" => sotto_sdk::PushProvider::Fcm,
            _ => return Err(invalid("service must be webPush, unifiedPush, apns or fcm")),
        };
        client.register_push(provider, subscription).await.map_err(client_error)
    }

    /// Removes this device's push registration.
    #[wasm_bindgen(js_name = unregisterPush)]
    pub async fn unregister_push(&self) -> Result<(), JsValue> {
        let client = self.live()?;
        client.unregister_push().await.map_err(client_error)
    }

    /// Replies to a message (its `key`) in its conversation, quoting its start.
    pub async fn reply(&self, key: String, text: String) -> Result<Message, JsValue> {
        let client = self.live()?;
        let k = message_key(&key)?;
        let m = client.reply(&k, &text).await.map_err(client_error)?;
        let group = client.group_of(&m.conversation).await;
        Ok(Message::new(m, group))
    }

    /// Edits a text this account wrote: every member sees the new text.
    pub async fn edit(&self, key: String, text: String) -> Result<(), JsValue> {
        let client = self.live()?;
        let k = message_key(&key)?;
        client.edit(&k, &text).await.map_err(client_error)
    }

    /// Deletes a message this account wrote, for everyone.
    #[wasm_bindgen(js_name = deleteForEveryone)]
    pub async fn delete_for_everyone(&self, key: String) -> Result<(), JsValue> {
        let client = self.live()?;
        let k = message_key(&key)?;
        client.delete_for_everyone(&k).await.map_err(client_error)
    }

    /// Reacts to a message with an emoji, replacing this account's earlier reaction; ""
    /// removes it.
    pub async fn react(&self, key: String, emoji: String) -> Result<(), JsValue> {
        let client = self.live()?;
        let k = message_key(&key)?;
        client.react(&k, &emoji).await.map_err(client_error)
    }

    /// Sets a conversation's disappearing-message timer for every member, in seconds (0
    /// turns it off); returns the "timer" item it adds to the conversation.
    #[wasm_bindgen(js_name = setTimer)]
    pub async fn set_timer(&self, conversation: String, seconds: f64) -> Result<Message, JsValue> {
        let client = self.live()?;
        let c = self::conversation(&conversation)?;
        let s = whole(seconds, "seconds")?;
        let s = u32::try_from(s).map_err(|_| error("timer_too_long", "the timer is above its bound", false))?;
        let m = client.set_timer(c, s).await.map_err(client_error)?;
        Ok(Message::new(m, c.group()))
    }

    /// Marks everything in a conversation read: its unread count drops to zero,
    /// disappearing messages start their timers, and the authors get read receipts.
    #[wasm_bindgen(js_name = markRead)]
    pub async fn mark_read(&self, conversation: String) -> Result<(), JsValue> {
        let client = self.live()?;
        let c = self::conversation(&conversation)?;
        client.mark_read(c).await.map_err(client_error)
    }

    /// Tells the conversation's other members that this user is typing (`true`: call it
    /// on every input event, it goes out at most every 3 s) or stopped (`false`: after
    /// sending, or when the input is cleared). Ephemeral: never stored, dropped while
    /// offline. They see it as the "typing" event and in `ConversationSummary.typing`.
    #[wasm_bindgen(js_name = setTyping)]
    pub async fn set_typing(&self, conversation: String, typing: bool) -> Result<(), JsValue> {
        let client = self.live()?;
        let c = self::conversation(&conversation)?;
        client.set_typing(c, typing).await.map_err(client_error)
    }

    /// Sets this account's profile name. It is stored on the relay encrypted under the
    /// account's profile key, and the key goes end to end to its contacts and its other
    /// devices; contacts show the name as `ConversationSummary.name` unless they set a
    /// nickname.
    #[wasm_bindgen(js_name = setProfile)]
    pub async fn set_profile(&self, name: String) -> Result<(), JsValue> {
        let client = self.live()?;
        client.set_profile(name.trim(), None).await.map_err(client_error)
    }

    /// This account's profile name ("" when none is set).
    #[wasm_bindgen(js_name = profileName)]
    pub async fn profile_name(&self) -> Result<String, JsValue> {
        let client = self.live()?;
        Ok(client.profile().await.map(|p| p.name).unwrap_or_default())
    }

    /// Blocks a contact: their messages are dropped and sends to them refused (code
    /// "blocked"); a pending message request is declined.
    pub async fn block(&self, contact: String) -> Result<(), JsValue> {
        let client = self.live()?;
        let who = account(&contact)?;
        client.block(&who).await.map_err(client_error)
    }

    /// Unblocks a contact.
    pub async fn unblock(&self, contact: String) -> Result<(), JsValue> {
        let client = self.live()?;
        let who = account(&contact)?;
        client.unblock(&who).await.map_err(client_error)
    }

    /// Deletes a 1:1 conversation and its messages on this device (for a message request:
    /// declines it without blocking).
    #[wasm_bindgen(js_name = deleteConversation)]
    pub async fn delete_conversation(&self, contact: String) -> Result<(), JsValue> {
        let client = self.live()?;
        let who = account(&contact)?;
        client.delete_conversation(&who).await.map_err(client_error)
    }

    /// Sets the name this device shows for a contact (the conversation list's `name`);
    /// `null`, `undefined` or "" clears it.
    #[wasm_bindgen(js_name = setNickname)]
    pub async fn set_nickname(&self, contact: String, nickname: Option<String>) -> Result<(), JsValue> {
        let client = self.live()?;
        let who = account(&contact)?;
        let nickname = nickname.filter(|n| !n.trim().is_empty());
        client
            .set_nickname(&who, nickname.as_deref())
            .await
            .map_err(client_error)
    }

    /// Acknowledges a contact's changed safety number (after comparing it): sends to them
    /// work again.
    #[wasm_bindgen(js_name = acknowledgeIdentity)]
    pub async fn acknowledge_identity(&self, contact: String) -> Result<(), JsValue> {
        let client = self.live()?;
        let who = account(&contact)?;
        client.acknowledge_identity(&who).await.map_err(client_error)
    }

    /// One message by its key, or undefined when it is not stored (never received,
    /// expired, or its conversation deleted).
    pub async fn message(&self, key: String) -> Result<Option<Message>, JsValue> {
        let client = self.live()?;
        let k = message_key(&key)?;
        let Some(m) = client.message(&k).await.map_err(client_error)? else {
            return Ok(None);
        };
        let group = client.group_of(&m.conversation).await;
        Ok(Some(Message::new(m, group)))
    }

    /// Cancels a message still in the send queue: it leaves the queue and the
    /// conversation ("not_queued" once the relay has it).
    pub async fn cancel(&self, key: String) -> Result<(), JsValue> {
        let client = self.live()?;
        let k = message_key(&key)?;
        client.cancel(&k).await.map_err(client_error)
    }

    /// Sends a failed message again, under the same id ("not_queued" unless it failed).
    pub async fn retry(&self, key: String) -> Result<(), JsValue> {
        let client = self.live()?;
        let k = message_key(&key)?;
        client.retry(&k).await.map_err(client_error)
    }

    /// Deletes the messages whose disappearing timer ran out at `nowMs` (Unix ms; the
    /// client does this itself as timers run out); returns how many went.
    #[wasm_bindgen(js_name = expireMessages)]
    pub async fn expire_messages(&self, now_ms: f64) -> Result<u32, JsValue> {
        let client = self.live()?;
        let now = whole(now_ms, "nowMs")?;
        let n = client.expire_messages(now).await.map_err(client_error)?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    // ------------------------------------------------------------ live lists

    /// The conversation list (contacts, message requests and groups, newest activity
    /// first), live: `subscribe(listener)` or `snapshot()`.
    #[wasm_bindgen(js_name = conversationList)]
    pub fn conversation_list(&self) -> Result<ConversationList, JsValue> {
        let client = self.live()?;
        Ok(ConversationList {
            list: client.conversation_list(),
            closed: self.closed.subscribe(),
        })
    }

    /// A conversation's timeline (a contact's account id or link, or a group id), live:
    /// the newest `window` items (at most 10,000), oldest first; more with
    /// `paginateBackwards(n)`.
    pub fn timeline(&self, conversation: String, window: u32) -> Result<Timeline, JsValue> {
        let client = self.live()?;
        let c = self::conversation(&conversation)?;
        Ok(Timeline {
            timeline: client.timeline(c, window),
            group: c.group(),
            closed: self.closed.subscribe(),
        })
    }

    /// Stops the relay connection and waits for it. Pending and later `nextEvent()`
    /// calls give `undefined`; other calls fail with code "closed".
    pub async fn shutdown(&self) {
        self.closed.send_replace(true);
        let client = self.client.clone();
        client.shutdown().await;
    }
}

/// The store key from the bytes JavaScript passed (the copy is wiped).
fn store_key_zeroized(bytes: Vec<u8>) -> Result<StoreKey, JsValue> {
    let bytes = Zeroizing::new(bytes);
    store_key(&bytes)
}

/// How much of a `Blob` is read at a time.
const BLOB_SLICE: u64 = 1 << 20;

/// Uploads a `Blob` slice by slice (`blob.slice(a, b).arrayBuffer()`) and sends it.
/// The file the message of `key` carries: "unknown_message", or "invalid_argument" for
/// a message without one.
async fn attachment_of(client: &Client<IdbStore>, key: &str) -> Result<Box<sotto_sdk::Attachment>, JsValue> {
    let m = client
        .message(&message_key(key)?)
        .await
        .map_err(client_error)?
        .ok_or_else(|| error("unknown_message", "no such message", false))?;
    m.attachment.ok_or_else(|| invalid("the message carries no file"))
}

async fn send_blob(
    client: &Client<IdbStore>,
    to: Conversation,
    blob: &JsValue,
    info: sotto_sdk::AttachmentInfo,
) -> Result<StoredMessage, JsValue> {
    let not_blob = || invalid("data must be a Uint8Array or a Blob");
    if !blob.is_object() {
        return Err(not_blob());
    }
    let size = Reflect::get(blob, &"size".into())
        .ok()
        .and_then(|v| v.as_f64())
        .filter(|s| *s >= 0.0 && s.fract() == 0.0 && *s <= 9_007_199_254_740_991.0)
        .ok_or_else(not_blob)? as u64;
    let slice = Reflect::get(blob, &"slice".into())
        .ok()
        .and_then(|f| f.dyn_into::<Function>().ok())
        .ok_or_else(not_blob)?;
    let mut writer = client.begin_attachment(size, None, None).await.map_err(client_error)?;
    let mut at = 0u64;
    while at < size {
        let end = (at + BLOB_SLICE).min(size);
        let part = slice.call2(blob, &(at as f64).into(), &(end as f64).into())?;
        let read = Reflect::get(&part, &"arrayBuffer".into())?
            .dyn_into::<Function>()
            .map_err(|_| not_blob())?;
        let promise: js_sys::Promise = read.call0(&part)?.dyn_into()?;
        let bytes = js_sys::Uint8Array::new(&wasm_bindgen_futures::JsFuture::from(promise).await?).to_vec();
        if bytes.len() as u64 != end - at {
            return Err(client_error(ClientError::File(
                "the Blob changed while it was read".into(),
            )));
        }
        writer.write(&bytes).await.map_err(client_error)?;
        at = end;
    }
    writer.send(to, info).await.map_err(client_error)
}

/// A file read piece by piece (`SottoClient.openAttachment`). Each `next()` resolves to
/// the next piece of plaintext (up to 4 MiB), every byte of it checked by its chunk's
/// tag, or to `undefined` at the end; the last piece comes only after the whole file
/// checked out (length, padding, digest), so `undefined` means all of it is intact. A
/// page that must not act on a file before then keeps the pieces until the end. After
/// an error ("attachment_corrupt" for anything tampered with) every later call fails.
#[wasm_bindgen]
pub struct AttachmentReader {
    inner: std::rc::Rc<tokio::sync::Mutex<sotto_sdk::AttachmentReader>>,
    ciphertext_len: u64,
}

#[wasm_bindgen]
impl AttachmentReader {
    /// The next piece of checked plaintext, or `undefined` once all of it was read and
    /// checked.
    pub async fn next(&self) -> Result<Option<js_sys::Uint8Array>, JsValue> {
        let inner = self.inner.clone();
        let mut reader = inner.lock().await;
        let piece = reader.next_chunk().await.map_err(client_error)?;
        Ok(piece.map(|p| js_sys::Uint8Array::from(p.as_slice())))
    }

    /// The blob's length on the relay (ciphertext, padding included). The pieces'
    /// plaintext adds up to the attachment's `size` instead.
    #[wasm_bindgen(getter, js_name = ciphertextLength)]
    pub fn ciphertext_len(&self) -> f64 {
        self.ciphertext_len as f64
    }
}

/// A running subscription to a live list: `cancel()` (or `free()`) stops its callbacks.
#[wasm_bindgen]
pub struct Subscription {
    inner: Option<sotto_sdk::Subscription>,
}

#[wasm_bindgen]
impl Subscription {
    /// Stops the callbacks: none starts after this returns. Calling it again does nothing.
    pub fn cancel(&mut self) {
        if let Some(s) = self.inner.take() {
            s.cancel();
        }
    }
}

/// Calls `f` with a batch (a listener that throws is the app's concern: the list goes on).
fn call(f: &Function, batch: &Array) {
    let _ = f.call1(&JsValue::NULL, batch);
}

/// The conversation list, live (`SottoClient.conversationList()`).
#[wasm_bindgen]
pub struct ConversationList {
    list: sotto_sdk::ConversationList<IdbStore>,
    closed: watch::Receiver<bool>,
}

#[wasm_bindgen]
impl ConversationList {
    /// The list now, newest activity first.
    #[wasm_bindgen(unchecked_return_type = "ConversationSummary[]")]
    pub async fn snapshot(&self) -> Result<JsValue, JsValue> {
        if *self.closed.borrow() {
            return Err(closed());
        }
        let list = self.list.snapshot().await.map_err(client_error)?;
        Ok(list.into_iter().map(summary).collect::<Array>().into())
    }

    /// Calls `listener` with `[{ kind: "reset", items }]` at once, then with a batch of
    /// diffs whenever the list changes, until the subscription is cancelled or freed.
    pub fn subscribe(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(diffs: ListDiff<ConversationSummary>[]) => void")] listener: Function,
    ) -> Result<Subscription, JsValue> {
        if *self.closed.borrow() {
            return Err(closed());
        }
        let sub = self.list.subscribe(Box::new(move |batch| {
            call(&listener, &diffs(batch, summary));
        }));
        Ok(Subscription { inner: Some(sub) })
    }
}

/// One conversation's timeline, live (`SottoClient.timeline()`).
#[wasm_bindgen]
pub struct Timeline {
    timeline: sotto_sdk::Timeline<IdbStore>,
    group: Option<GroupId>,
    closed: watch::Receiver<bool>,
}

#[wasm_bindgen]
impl Timeline {
    /// The items now, oldest first.
    #[wasm_bindgen(unchecked_return_type = "TimelineItem[]")]
    pub async fn snapshot(&self) -> Result<JsValue, JsValue> {
        if *self.closed.borrow() {
            return Err(closed());
        }
        let group = self.group;
        let items = self.timeline.snapshot().await.map_err(client_error)?;
        Ok(items
            .into_iter()
            .map(|i| timeline_item(i, group))
            .collect::<Array>()
            .into())
    }

    /// Shows `n` more older items: the subscriptions get them as inserts at the top.
    #[wasm_bindgen(js_name = paginateBackwards)]
    pub fn paginate_backwards(&self, n: u32) {
        self.timeline.paginate_backwards(n);
    }

    /// Calls `listener` with `[{ kind: "reset", items }]` at once, then with a batch of
    /// diffs whenever the timeline changes (new messages, send states, edits, deletes,
    /// reactions, expiries), until the subscription is cancelled or freed.
    pub fn subscribe(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(diffs: ListDiff<TimelineItem>[]) => void")] listener: Function,
    ) -> Result<Subscription, JsValue> {
        if *self.closed.borrow() {
            return Err(closed());
        }
        let group = self.group;
        let sub = self.timeline.subscribe(Box::new(move |batch| {
            call(&listener, &diffs(batch, |i| timeline_item(i, group)));
        }));
        Ok(Subscription { inner: Some(sub) })
    }
}

/// Applies a batch of diffs to a list in place (what a listener does with each call);
/// returns the list. Indices out of range are ignored.
#[wasm_bindgen(js_name = applyDiffs, unchecked_return_type = "any[]")]
pub fn apply_diffs(
    #[wasm_bindgen(unchecked_param_type = "any[]")] list: Array,
    #[wasm_bindgen(unchecked_param_type = "ListDiff<any>[]")] batch: Array,
) -> Array {
    let get = |o: &JsValue, k: &str| Reflect::get(o, &k.into()).unwrap_or(JsValue::UNDEFINED);
    for d in batch.iter() {
        let kind = get(&d, "kind").as_string().unwrap_or_default();
        let index = get(&d, "index").as_f64().unwrap_or(-1.0);
        let len = f64::from(list.length());
        match kind.as_str() {
            "reset" => {
                list.set_length(0);
                if let Ok(items) = get(&d, "items").dyn_into::<Array>() {
                    for i in items.iter() {
                        list.push(&i);
                    }
                }
            }
            "insert" if index >= 0.0 && index <= len => {
                list.splice(index as u32, 0, &get(&d, "item"));
            }
            "update" if index >= 0.0 && index < len => list.set(index as u32, get(&d, "item")),
            "remove" if index >= 0.0 && index < len => {
                if let Ok(splice) = Reflect::get(&list, &"splice".into()).and_then(|f| f.dyn_into::<Function>()) {
                    let _ = splice.call2(&list, &index.into(), &1.into());
                }
            }
            _ => {}
        }
    }
    list
}

/// What a notification shows for one message (`SottoNotificationExtension.fetch`).
#[wasm_bindgen(getter_with_clone)]
#[derive(Clone, Debug)]
pub struct NotificationInfo {
    /// The message's key, to open its conversation at it.
    pub key: String,
    /// The conversation: the contact's account id, or the group id.
    pub conversation: String,
    /// The sender's name (nickname, else profile name; empty when it has neither).
    #[wasm_bindgen(js_name = senderName)]
    pub sender_name: String,
    /// The group's title, for a group message.
    #[wasm_bindgen(js_name = groupTitle)]
    pub group_title: Option<String>,
    /// The text, or for an attachment its caption or its kind ("Photo", "File", ...).
    pub body: String,
    /// The sender's timestamp, Unix ms.
    #[wasm_bindgen(js_name = timestampMs)]
    pub timestamp_ms: f64,
}

/// What one fetch found.
#[wasm_bindgen(getter_with_clone)]
#[derive(Clone, Debug)]
pub struct FetchedNotifications {
    /// The messages to show, oldest first.
    pub notifications: Vec<NotificationInfo>,
    /// A page of the app holds the device's connection: it receives, and nothing was
    /// fetched.
    #[wasm_bindgen(js_name = appActive)]
    pub app_active: bool,
    /// The whole mailbox was read; false when the time ran out first.
    pub complete: bool,
}

/// The notification-extension role on the web: what a service worker runs on a `push`
/// event. It opens the page's IndexedDB store beside any open page (every commit is a
/// compare-and-swap), fetches what waits with the relay's `AuthExtension` role (never
/// taking the connection from a page that holds it), decrypts and commits it, and says
/// what to show. It keeps no connection; `free()` it after the fetch.
#[wasm_bindgen]
pub struct SottoNotificationExtension {
    client: Client<IdbStore>,
}

#[wasm_bindgen]
impl SottoNotificationExtension {
    /// Opens the account in the IndexedDB database `dbName` (the page's store, under the
    /// same `storeKey`) as the notification extension.
    pub async fn open(db_name: String, store_key: Vec<u8>) -> Result<SottoNotificationExtension, JsValue> {
        let key = store_key_zeroized(store_key)?;
        let store = IdbStore::open(&db_name, &key)
            .await
            .map_err(|e| client_error(e.into()))?;
        let client = Client::open_notification_extension(store, key, ClientOptions::default())
            .await
            .map_err(client_error)?;
        Ok(Self { client })
    }

    /// Fetches what waits (for at most `maxWaitMs`), commits and acknowledges it, and
    /// returns what to show. Nothing is sent: receipts wait for the page.
    pub async fn fetch(&self, max_wait_ms: u32) -> Result<FetchedNotifications, JsValue> {
        let fetched = self
            .client
            .fetch_notifications(std::time::Duration::from_millis(u64::from(max_wait_ms)))
            .await
            .map_err(client_error)?;
        let notifications = fetched
            .notifications
            .into_iter()
            .map(|n| {
                let conversation = conversation_str(&n.conversation);
                NotificationInfo {
                    key: key_str(&conversation, &n.key.sender, &n.key.id),
                    conversation,
                    sender_name: n.sender_name,
                    group_title: n.group_title,
                    body: n.body,
                    timestamp_ms: n.timestamp_ms as f64,
                }
            })
            .collect();
        Ok(FetchedNotifications {
            notifications,
            app_active: fetched.app_active,
            complete: fetched.complete,
        })
    }
}
