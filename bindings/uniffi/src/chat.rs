//! The chat API and the live lists (docs/bindings.md, "Live lists"): the SDK's
//! `client/chat.rs` and `client/live.rs` mirrored for uniffi.
//!
//! uniffi has no generics, so the SDK's `ListDiff<T>` becomes one enum per item type
//! ([`TimelineDiff`], [`ConversationDiff`]), and a live list's callback a foreign trait
//! per item type ([`TimelineListener`], [`ConversationListListener`]). The SDK calls a
//! listener from its own task and never while it holds a lock; the binding only
//! converts the diffs and passes them on, so an app may call back into the client from
//! `on_update`.

use std::sync::Arc;

use sotto_sdk::content::Quote as SdkQuote;
use sotto_sdk::store::SqliteStore;
use sotto_sdk::{
    ConversationSummary as SdkSummary, ListDiff, MessageId, MessageKey as SdkKey, MessageKind as SdkKind,
    Reaction as SdkReaction, SendState as SdkSendState, StoredMessage, TimelineItem as SdkItem,
};

use crate::{SottoClient, SottoError, account, group_id, on_runtime, runtime};

// ---------------------------------------------------------------- ids

/// A conversation: with a contact, or a group. In Kotlin `Conversation.Direct(account)`
/// and `Conversation.Group(groupId)`; in Swift `.direct(account:)`, `.group(groupId:)`;
/// in Python `Conversation.DIRECT(account)`, `Conversation.GROUP(group_id)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum Conversation {
    /// With a contact.
    Direct {
        /// The contact's account id (a contact link is accepted too).
        account: String,
    },
    /// A group.
    Group {
        /// The group id: 64 hex digits.
        group_id: String,
    },
}

impl Conversation {
    /// Mirrors the SDK's conversation.
    pub(crate) fn new(c: sotto_sdk::Conversation) -> Self {
        match c {
            sotto_sdk::Conversation::Direct(a) => Self::Direct { account: a.to_string() },
            sotto_sdk::Conversation::Group(g) => Self::Group {
                group_id: g.to_string(),
            },
        }
    }

    /// The conversation whose stored key is `key`, in the group `group` if it has one.
    pub(crate) fn of_key(key: &sotto_crypto::AccountId, group: Option<sotto_sdk::GroupId>) -> Self {
        match group {
            Some(g) => Self::Group {
                group_id: g.to_string(),
            },
            None => Self::Direct {
                account: key.to_string(),
            },
        }
    }

    /// Parses the ids: `BadContact` or `BadGroupId`.
    pub(crate) fn parse(&self) -> Result<sotto_sdk::Conversation, SottoError> {
        Ok(match self {
            Self::Direct { account: a } => sotto_sdk::Conversation::Direct(account(a)?),
            Self::Group { group_id: g } => sotto_sdk::Conversation::Group(group_id(g)?),
        })
    }
}

/// Names one message: its conversation, the account that wrote it and its id. Take it
/// from a [`TimelineItem`]'s `key`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, uniffi::Record)]
pub struct MessageKey {
    /// The conversation.
    pub conversation: Conversation,
    /// The account that wrote the message.
    pub sender: String,
    /// The message id (UUID text form).
    pub id: String,
}

impl MessageKey {
    pub(crate) fn new(k: &SdkKey, conversation: Conversation) -> Self {
        Self {
            conversation,
            sender: k.sender.to_string(),
            id: k.id.to_string(),
        }
    }

    /// Parses the ids: `BadContact`, `BadGroupId`, or `InvalidArgument` for an id that is
    /// not a UUID.
    pub(crate) fn parse(&self) -> Result<SdkKey, SottoError> {
        Ok(SdkKey {
            conversation: self.conversation.parse()?.key(),
            sender: account(&self.sender)?,
            id: message_id(&self.id)?,
        })
    }
}

/// Parses a message id in its text form (`8-4-4-4-12` hex digits).
pub(crate) fn message_id(s: &str) -> Result<MessageId, SottoError> {
    let bad = || SottoError::InvalidArgument {
        reason: "not a message id (a UUID such as 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b)".into(),
    };
    let bytes = s.as_bytes();
    if bytes.len() != 36 {
        return Err(bad());
    }
    let mut out = [0u8; 16];
    let mut n = 0;
    let mut half: Option<u8> = None;
    for (i, c) in bytes.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if *c != b'-' {
                return Err(bad());
            }
            continue;
        }
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return Err(bad()),
        };
        match half.take() {
            None => half = Some(v),
            Some(h) => {
                *out.get_mut(n).ok_or_else(bad)? = (h << 4) | v;
                n += 1;
            }
        }
    }
    if n != 16 {
        return Err(bad());
    }
    Ok(MessageId(out))
}

// ---------------------------------------------------------------- items

/// The message a reply quotes.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Quote {
    /// The quoted message's author account.
    pub author: String,
    /// The quoted message's id.
    pub id: String,
    /// The start of its text.
    pub snippet: String,
}

impl From<&SdkQuote> for Quote {
    fn from(q: &SdkQuote) -> Self {
        Self {
            author: q.author.to_string(),
            id: q.id.to_string(),
            snippet: q.snippet.clone(),
        }
    }
}

/// One account's reaction to a message.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Reaction {
    /// Who reacted.
    pub by_account: String,
    /// The emoji; empty once that account removed its reaction (show nothing for it).
    pub emoji: String,
    /// The reaction's timestamp (the reactor's clock), Unix milliseconds.
    pub at_ms: u64,
}

impl From<&SdkReaction> for Reaction {
    fn from(r: &SdkReaction) -> Self {
        Self {
            by_account: r.by.to_string(),
            emoji: r.emoji.clone(),
            at_ms: r.at_ms,
        }
    }
}

/// What a timeline item is.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum MessageKind {
    /// A text (maybe a reply: see `quote`).
    Text,
    /// Someone set the conversation's disappearing-message timer.
    Timer {
        /// Seconds; 0 turned it off.
        expire_s: u32,
    },
    /// Content of a kind this version does not know, from a newer client: show it as
    /// "unsupported".
    Unsupported {
        /// Its kind byte.
        content_kind: u8,
    },
    /// The contact's safety number changed (a local item): sends to them fail with
    /// `IdentityUnacknowledged` until `acknowledgeIdentity`.
    IdentityChanged,
    /// A kind this version of the binding does not know.
    Unknown,
}

impl From<SdkKind> for MessageKind {
    fn from(k: SdkKind) -> Self {
        match k {
            SdkKind::Text => Self::Text,
            SdkKind::Timer { expire_s } => Self::Timer { expire_s },
            SdkKind::Unsupported { kind } => Self::Unsupported { content_kind: kind },
            SdkKind::IdentityChanged => Self::IdentityChanged,
            _ => Self::Unknown,
        }
    }
}

/// Where a message this account wrote is in its life: `Queued → Sending → Sent →
/// Delivered → Read`, or `Failed`.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum SendState {
    /// In the send queue (`cancel` still works).
    Queued,
    /// Handed to the relay, its answer not in yet.
    Sending,
    /// The relay stored it for every device.
    Sent,
    /// A device of the recipient stored it.
    Delivered,
    /// A reader read it.
    Read,
    /// Sent from another device of this account.
    SentElsewhere,
    /// Given up: `retryable` when `retry` may work.
    Failed {
        /// A stable code for why.
        error: String,
        /// True when sending it again later may work.
        retryable: bool,
    },
    /// A state this version of the binding does not know.
    Unknown,
}

impl From<SdkSendState> for SendState {
    fn from(s: SdkSendState) -> Self {
        match s {
            SdkSendState::Queued => Self::Queued,
            SdkSendState::Sending => Self::Sending,
            SdkSendState::Sent => Self::Sent,
            SdkSendState::Delivered => Self::Delivered,
            SdkSendState::Read => Self::Read,
            SdkSendState::SentElsewhere => Self::SentElsewhere,
            SdkSendState::Failed { error, retryable } => Self::Failed { error, retryable },
            _ => Self::Unknown,
        }
    }
}

/// One item of a timeline: a message with its edits, deletion, reactions and receipts
/// folded in.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct TimelineItem {
    /// Names the message in `reply`, `edit`, `deleteForEveryone`, `react`, `cancel`,
    /// `retry` and `message` (its conversation, author account and id).
    pub key: MessageKey,
    /// The device that wrote it (0 for a local item such as `IdentityChanged`).
    pub sender_device: u32,
    /// The sender's timestamp, Unix milliseconds.
    pub timestamp_ms: u64,
    /// Its place in the store, increasing.
    pub order: u64,
    /// What it is.
    pub kind: MessageKind,
    /// The text (the latest edit's; empty once deleted).
    pub text: String,
    /// The message it replies to.
    pub quote: Option<Quote>,
    /// When its author last edited it (the edit's timestamp); `None` if never.
    pub edited_at_ms: Option<u64>,
    /// Its author deleted it for everyone.
    pub deleted: bool,
    /// Reactions, one per account.
    pub reactions: Vec<Reaction>,
    /// For a message this account wrote, where its send is; `None` for one received.
    pub send_state: Option<SendState>,
    /// The disappearing-message timer it was sent with, seconds (0: none).
    pub expire_s: u32,
    /// When it disappears, Unix milliseconds; `None` while its timer has not started.
    pub expires_at_ms: Option<u64>,
    /// The file it carries (`text` is its caption); download it with
    /// `downloadAttachment(key, path)`.
    pub attachment: Option<crate::media::AttachmentMeta>,
}

impl TimelineItem {
    /// Mirrors `m` of `conversation` with its send state.
    fn new(m: StoredMessage, send_state: Option<SdkSendState>, conversation: Conversation) -> Self {
        Self {
            key: MessageKey::new(&m.key(), conversation),
            sender_device: m.sender.1.0,
            timestamp_ms: m.timestamp_ms,
            order: m.order,
            kind: m.kind.into(),
            quote: m.quote.as_ref().map(Into::into),
            edited_at_ms: (m.edited_at_ms != 0).then_some(m.edited_at_ms),
            deleted: m.deleted,
            reactions: m.reactions.iter().map(Into::into).collect(),
            send_state: send_state.map(Into::into),
            expire_s: m.expire_s,
            expires_at_ms: (m.expires_at_ms != 0).then_some(m.expires_at_ms),
            attachment: m.attachment.as_deref().map(Into::into),
            text: m.text,
        }
    }

    /// A stored message of `conversation`, its send state taken from its status.
    pub(crate) fn stored(m: StoredMessage, conversation: Conversation) -> Self {
        let state = SdkSendState::of_message(&m);
        Self::new(m, state, conversation)
    }

    fn from_sdk(i: SdkItem, conversation: Conversation) -> Self {
        Self::new(i.message, i.send_state, conversation)
    }
}

/// One conversation as the conversation list shows it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ConversationSummary {
    /// The conversation.
    pub conversation: Conversation,
    /// What to call it: the nickname, else the contact's profile name, else the group's
    /// title; empty when none is known.
    pub name: String,
    /// The newest item.
    pub last_message: Option<TimelineItem>,
    /// Messages from others after the read marker (at most 999).
    pub unread: u32,
    /// The accounts typing now.
    pub typing: Vec<String>,
    /// A message request: an account this one has not accepted wrote first.
    pub is_request: bool,
    /// The contact is blocked.
    pub blocked: bool,
    /// The disappearing-message timer, seconds (0: off).
    pub expire_s: u32,
    /// The contact's safety number changed and was not acknowledged.
    pub identity_unacked: bool,
    /// The contact is online now (when they share their presence).
    pub online: bool,
    /// When the contact was last seen online (Unix ms), when they share their presence
    /// and are not online now.
    pub last_seen_ms: Option<u64>,
    /// The contact's avatar, from their profile.
    pub avatar: Option<Vec<u8>>,
}

impl From<SdkSummary> for ConversationSummary {
    fn from(s: SdkSummary) -> Self {
        let conversation = Conversation::new(s.conversation);
        Self {
            last_message: s.last_message.map(|m| TimelineItem::stored(m, conversation.clone())),
            conversation,
            name: s.name,
            unread: s.unread,
            typing: s.typing.iter().map(ToString::to_string).collect(),
            online: matches!(s.presence, Some(sotto_sdk::Presence::Online)),
            last_seen_ms: match s.presence {
                Some(sotto_sdk::Presence::LastSeen { at_ms }) => Some(at_ms),
                _ => None,
            },
            avatar: s.avatar.clone(),
            is_request: s.is_request,
            blocked: s.blocked,
            expire_s: s.expire_s,
            identity_unacked: s.identity_unacked,
        }
    }
}

// ---------------------------------------------------------------- diffs

/// A list index for the foreign side (lists hold far fewer than 2³² items).
fn index(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// One change to a live timeline. Apply a batch in order: `Reset` replaces the list,
/// `Insert` puts `item` at `index` (later items move down), `Update` replaces the item at
/// `index`, `Remove` takes it out (later items move up).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum TimelineDiff {
    /// The whole list (always the first callback).
    Reset {
        /// The items, oldest first.
        items: Vec<TimelineItem>,
    },
    /// A new item at `index`.
    Insert {
        /// Where.
        index: u32,
        /// The item.
        item: TimelineItem,
    },
    /// The item at `index` changed.
    Update {
        /// Where.
        index: u32,
        /// Its new value.
        item: TimelineItem,
    },
    /// The item at `index` left the list.
    Remove {
        /// Where.
        index: u32,
    },
}

/// One change to the live conversation list; applied like a [`TimelineDiff`].
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum ConversationDiff {
    /// The whole list (always the first callback).
    Reset {
        /// The conversations, newest activity first.
        items: Vec<ConversationSummary>,
    },
    /// A new conversation at `index`.
    Insert {
        /// Where.
        index: u32,
        /// The conversation.
        item: ConversationSummary,
    },
    /// The conversation at `index` changed.
    Update {
        /// Where.
        index: u32,
        /// Its new value.
        item: ConversationSummary,
    },
    /// The conversation at `index` left the list.
    Remove {
        /// Where.
        index: u32,
    },
}

fn timeline_diff(d: ListDiff<SdkItem>, conversation: &Conversation) -> TimelineDiff {
    let item = |i: SdkItem| TimelineItem::from_sdk(i, conversation.clone());
    match d {
        ListDiff::Reset { items } => TimelineDiff::Reset {
            items: items.into_iter().map(item).collect(),
        },
        ListDiff::Insert { index: i, item: x } => TimelineDiff::Insert {
            index: index(i),
            item: item(x),
        },
        ListDiff::Update { index: i, item: x } => TimelineDiff::Update {
            index: index(i),
            item: item(x),
        },
        ListDiff::Remove { index: i } => TimelineDiff::Remove { index: index(i) },
    }
}

impl From<ListDiff<SdkSummary>> for ConversationDiff {
    fn from(d: ListDiff<SdkSummary>) -> Self {
        match d {
            ListDiff::Reset { items } => Self::Reset {
                items: items.into_iter().map(Into::into).collect(),
            },
            ListDiff::Insert { index: i, item } => Self::Insert {
                index: index(i),
                item: item.into(),
            },
            ListDiff::Update { index: i, item } => Self::Update {
                index: index(i),
                item: item.into(),
            },
            ListDiff::Remove { index: i } => Self::Remove { index: index(i) },
        }
    }
}

// ---------------------------------------------------------------- live lists

/// Receives a timeline's changes (see [`Timeline::subscribe`]).
#[uniffi::export(with_foreign)]
pub trait TimelineListener: Send + Sync {
    /// A batch of diffs, in order; the first is a `Reset`. Runs on an SDK thread, never
    /// while the SDK holds a lock: it may call back into the client.
    fn on_update(&self, diffs: Vec<TimelineDiff>);
}

/// Receives the conversation list's changes (see [`ConversationList::subscribe`]).
#[uniffi::export(with_foreign)]
pub trait ConversationListListener: Send + Sync {
    /// A batch of diffs, in order; the first is a `Reset`. Runs on an SDK thread, never
    /// while the SDK holds a lock: it may call back into the client.
    fn on_update(&self, diffs: Vec<ConversationDiff>);
}

/// A running live-list subscription: its listener is called until
/// [`ListSubscription::cancel`], or until it is dropped (Kotlin: `close()`).
#[derive(Debug, uniffi::Object)]
pub struct ListSubscription(sotto_sdk::Subscription);

#[uniffi::export]
impl ListSubscription {
    /// Stops the callbacks: none starts after this returns (one running finishes).
    pub fn cancel(&self) {
        self.0.cancel();
    }
}

/// The conversation list (contacts, message requests and groups), live. From
/// [`SottoClient::conversation_list`].
#[derive(uniffi::Object)]
pub struct ConversationList(Arc<sotto_sdk::ConversationList<SqliteStore>>);

impl std::fmt::Debug for ConversationList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConversationList").finish_non_exhaustive()
    }
}

#[uniffi::export]
impl ConversationList {
    /// The list now, newest activity first.
    pub async fn snapshot(&self) -> Result<Vec<ConversationSummary>, SottoError> {
        let list = self.0.clone();
        on_runtime(async move { Ok(list.snapshot().await?.into_iter().map(Into::into).collect()) }).await
    }

    /// Calls `listener` with a `Reset`, then with batches of diffs as the list changes,
    /// until the subscription is cancelled or dropped.
    pub fn subscribe(&self, listener: Arc<dyn ConversationListListener>) -> Result<Arc<ListSubscription>, SottoError> {
        // The SDK spawns the subscription's task on the runtime it is called in.
        let _in_runtime = runtime()?.enter();
        let sub = self.0.subscribe(Box::new(move |diffs| {
            listener.on_update(diffs.into_iter().map(Into::into).collect());
        }));
        Ok(Arc::new(ListSubscription(sub)))
    }
}

/// One conversation's timeline, live. From [`SottoClient::timeline`].
#[derive(uniffi::Object)]
pub struct Timeline {
    inner: Arc<sotto_sdk::Timeline<SqliteStore>>,
    conversation: Conversation,
}

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeline").finish_non_exhaustive()
    }
}

#[uniffi::export]
impl Timeline {
    /// The items now, oldest first.
    pub async fn snapshot(&self) -> Result<Vec<TimelineItem>, SottoError> {
        let inner = self.inner.clone();
        let conversation = self.conversation.clone();
        on_runtime(async move {
            Ok(inner
                .snapshot()
                .await?
                .into_iter()
                .map(|i| TimelineItem::from_sdk(i, conversation.clone()))
                .collect())
        })
        .await
    }

    /// Shows `n` more older items: the subscriptions get them as inserts at the top (the
    /// window holds at most 10,000 items).
    pub fn paginate_backwards(&self, n: u32) {
        self.inner.paginate_backwards(n);
    }

    /// Calls `listener` with a `Reset`, then with batches of diffs as the timeline
    /// changes (new messages, send states, edits, deletes, reactions, expiries), until
    /// the subscription is cancelled or dropped.
    pub fn subscribe(&self, listener: Arc<dyn TimelineListener>) -> Result<Arc<ListSubscription>, SottoError> {
        let _in_runtime = runtime()?.enter();
        let conversation = self.conversation.clone();
        let sub = self.inner.subscribe(Box::new(move |diffs| {
            listener.on_update(diffs.into_iter().map(|d| timeline_diff(d, &conversation)).collect());
        }));
        Ok(Arc::new(ListSubscription(sub)))
    }
}

// ---------------------------------------------------------------- chat calls

#[uniffi::export]
impl SottoClient {
    /// The conversation list, live.
    pub fn conversation_list(&self) -> Result<Arc<ConversationList>, SottoError> {
        Ok(Arc::new(ConversationList(Arc::new(self.client()?.conversation_list()))))
    }

    /// A conversation's timeline, live: the newest `window` items at first (more with
    /// `paginateBackwards`).
    pub fn timeline(&self, conversation: Conversation, window: u32) -> Result<Arc<Timeline>, SottoError> {
        let parsed = conversation.parse()?;
        Ok(Arc::new(Timeline {
            inner: Arc::new(self.client()?.timeline(parsed, window)),
            conversation,
        }))
    }

    /// The conversation a conversation id names: a group id (64 hex digits) is a group,
    /// an account id a contact. For the `conversation` strings of `Message` and events.
    pub async fn conversation_of(&self, conversation: String) -> Result<Conversation, SottoError> {
        let client = self.client()?;
        if let Ok(g) = group_id(&conversation) {
            return Ok(Conversation::new(sotto_sdk::Conversation::Group(g)));
        }
        let key = account(&conversation)?;
        on_runtime(async move { Ok(Conversation::new(client.conversation_of(&key).await)) }).await
    }

    /// Sends a text to a conversation. Returns at once with the local item (send state
    /// `Queued`); the timeline shows its state move.
    pub async fn send_message(&self, conversation: Conversation, text: String) -> Result<TimelineItem, SottoError> {
        let client = self.client()?;
        let to = conversation.parse()?;
        on_runtime(async move {
            let m = client.send_message(to, &text).await?;
            Ok(TimelineItem::stored(m, conversation))
        })
        .await
    }

    /// Replies to a message, quoting its start; returns the local item.
    pub async fn reply(&self, to: MessageKey, text: String) -> Result<TimelineItem, SottoError> {
        let client = self.client()?;
        let key = to.parse()?;
        on_runtime(async move {
            let m = client.reply(&key, &text).await?;
            Ok(TimelineItem::stored(m, to.conversation))
        })
        .await
    }

    /// Edits a text this account wrote (`NotAuthor` otherwise).
    pub async fn edit(&self, key: MessageKey, text: String) -> Result<(), SottoError> {
        let client = self.client()?;
        let key = key.parse()?;
        on_runtime(async move { Ok(client.edit(&key, &text).await?) }).await
    }

    /// Deletes a message this account wrote, for everyone (`NotAuthor` otherwise).
    pub async fn delete_for_everyone(&self, key: MessageKey) -> Result<(), SottoError> {
        let client = self.client()?;
        let key = key.parse()?;
        on_runtime(async move { Ok(client.delete_for_everyone(&key).await?) }).await
    }

    /// Reacts to a message, replacing this account's earlier reaction; an empty `emoji`
    /// removes it.
    pub async fn react(&self, key: MessageKey, emoji: String) -> Result<(), SottoError> {
        let client = self.client()?;
        let key = key.parse()?;
        on_runtime(async move { Ok(client.react(&key, &emoji).await?) }).await
    }

    /// Sets a conversation's disappearing-message timer for every member, seconds (0
    /// turns it off); returns the local timer item.
    pub async fn set_timer(&self, conversation: Conversation, expire_s: u32) -> Result<TimelineItem, SottoError> {
        let client = self.client()?;
        let c = conversation.parse()?;
        on_runtime(async move {
            let m = client.set_timer(c, expire_s).await?;
            Ok(TimelineItem::stored(m, conversation))
        })
        .await
    }

    /// Marks everything in a conversation read: its unread count drops to zero, timers
    /// of disappearing messages start, and (unless `ClientOptions.readReceipts` is false)
    /// read receipts go to the authors.
    pub async fn mark_read(&self, conversation: Conversation) -> Result<(), SottoError> {
        let client = self.client()?;
        let c = conversation.parse()?;
        on_runtime(async move { Ok(client.mark_read(c).await?) }).await
    }

    /// Blocks a contact: their messages are dropped and sends to them fail with
    /// `Blocked`.
    pub async fn block(&self, contact: String) -> Result<(), SottoError> {
        let client = self.client()?;
        let who = account(&contact)?;
        on_runtime(async move { Ok(client.block(&who).await?) }).await
    }

    /// Unblocks a contact.
    pub async fn unblock(&self, contact: String) -> Result<(), SottoError> {
        let client = self.client()?;
        let who = account(&contact)?;
        on_runtime(async move { Ok(client.unblock(&who).await?) }).await
    }

    /// Deletes a conversation with a contact and its messages on this device (for a
    /// message request: declines it without blocking).
    pub async fn delete_conversation(&self, contact: String) -> Result<(), SottoError> {
        let client = self.client()?;
        let who = account(&contact)?;
        on_runtime(async move { Ok(client.delete_conversation(&who).await?) }).await
    }

    /// Sets, or with `None` clears, the name this device shows for a contact.
    pub async fn set_nickname(&self, contact: String, nickname: Option<String>) -> Result<(), SottoError> {
        let client = self.client()?;
        let who = account(&contact)?;
        on_runtime(async move { Ok(client.set_nickname(&who, nickname.as_deref()).await?) }).await
    }

    /// Acknowledges a contact's changed safety number: sends to them work again.
    pub async fn acknowledge_identity(&self, contact: String) -> Result<(), SottoError> {
        let client = self.client()?;
        let who = account(&contact)?;
        on_runtime(async move { Ok(client.acknowledge_identity(&who).await?) }).await
    }

    /// One message; `None` when it is not stored.
    pub async fn message(&self, key: MessageKey) -> Result<Option<TimelineItem>, SottoError> {
        let client = self.client()?;
        let k = key.parse()?;
        on_runtime(async move {
            Ok(client
                .message(&k)
                .await?
                .map(|m| TimelineItem::stored(m, key.conversation)))
        })
        .await
    }

    /// Cancels a message still in the send queue: it leaves the queue and the
    /// conversation. `NotQueued` once the relay has it.
    pub async fn cancel(&self, key: MessageKey) -> Result<(), SottoError> {
        let client = self.client()?;
        let key = key.parse()?;
        on_runtime(async move { Ok(client.cancel(&key).await?) }).await
    }

    /// Sends a `Failed` message again (`NotQueued` in any other state).
    pub async fn retry(&self, key: MessageKey) -> Result<(), SottoError> {
        let client = self.client()?;
        let key = key.parse()?;
        on_runtime(async move { Ok(client.retry(&key).await?) }).await
    }

    /// Tells the conversation's members that this user types (`true`, call it as they
    /// type; it goes out at most every 3 s) or stopped (`false`). Never stored.
    pub async fn set_typing(&self, conversation: Conversation, typing: bool) -> Result<(), SottoError> {
        let client = self.client()?;
        let conv = conversation.parse()?;
        on_runtime(async move { Ok(client.set_typing(conv, typing).await?) }).await
    }

    /// Sets this account's profile (a display name, and a small avatar of at most 16 KiB).
    /// It is stored on the relay encrypted under the account's profile key, and the key
    /// goes end to end to the contacts it accepted and to its other devices.
    pub async fn set_profile(&self, name: String, avatar: Option<Vec<u8>>) -> Result<(), SottoError> {
        let client = self.client()?;
        on_runtime(async move { Ok(client.set_profile(&name, avatar).await?) }).await
    }

    /// Uploads this account's profile if the relay lacks it and fetches the profiles
    /// contacts announced, now (the client does both in the background; a short-lived
    /// process calls this before it exits).
    pub async fn sync_profiles(&self) -> Result<(), SottoError> {
        let client = self.client()?;
        on_runtime(async move { Ok(client.sync_profiles().await?) }).await
    }

    /// This account's profile name (empty when none was set).
    pub async fn profile_name(&self) -> Result<String, SottoError> {
        let client = self.client()?;
        on_runtime(async move { Ok(client.profile().await.map(|p| p.name).unwrap_or_default()) }).await
    }

    /// The stored texts matching `query` (each word of it starts a word of the text),
    /// newest first, at most `limit`.
    pub async fn search(&self, query: String, limit: u32) -> Result<Vec<TimelineItem>, SottoError> {
        let client = self.client()?;
        let found = on_runtime(async move { Ok(client.search(&query, limit).snapshot().await?) }).await?;
        let mut out = Vec::with_capacity(found.len());
        for i in found {
            let conversation = self.conversation_of(i.message.conversation.to_string()).await?;
            out.push(TimelineItem::from_sdk(i, conversation));
        }
        Ok(out)
    }

    /// The messages stored after `order` (0 for the first), in every conversation, oldest
    /// first: a durable cursor (keep the `order` of the last one handled).
    pub async fn messages_after(&self, order: u64, limit: u32) -> Result<Vec<TimelineItem>, SottoError> {
        let client = self.client()?;
        let found = on_runtime(async move { Ok(client.messages_after(order, limit).await?) }).await?;
        let mut out = Vec::with_capacity(found.len());
        for m in found {
            let conversation = self.conversation_of(m.conversation.to_string()).await?;
            out.push(TimelineItem::stored(m, conversation));
        }
        Ok(out)
    }

    /// Deletes the messages whose disappearing timer ran out at `now_ms` (Unix ms). The
    /// client does this itself as timers run out; returns how many went.
    pub async fn expire_messages(&self, now_ms: u64) -> Result<u64, SottoError> {
        let client = self.client()?;
        on_runtime(async move { Ok(client.expire_messages(now_ms).await? as u64) }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_round_trip_and_anything_else_is_an_invalid_argument() {
        let id = MessageId([0xab; 16]);
        assert!(matches!(message_id(&id.to_string()), Ok(m) if m == id));
        assert!(matches!(message_id(&id.to_string().to_uppercase()), Ok(m) if m == id));
        for bad in [
            "",
            "abababab-abab-abab-abab-ababababab",
            "abababababababababababababababababab",
            "abababab-abab-abab-abab-abababababaz",
            "abababab-abab-abab-abab-abababababa\u{e9}",
            "abababab+abab-abab-abab-abababababab",
        ] {
            assert!(
                matches!(message_id(bad), Err(SottoError::InvalidArgument { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn conversations_parse_at_the_boundary() {
        let bad = Conversation::Direct { account: "nope".into() };
        assert!(matches!(bad.parse(), Err(SottoError::BadContact)));
        let bad = Conversation::Group {
            group_id: "nope".into(),
        };
        assert!(matches!(bad.parse(), Err(SottoError::BadGroupId)));
        let g = sotto_sdk::GroupId([3; 32]);
        let c = Conversation::new(sotto_sdk::Conversation::Group(g));
        assert!(matches!(c.parse(), Ok(sotto_sdk::Conversation::Group(x)) if x == g));
        assert_eq!(Conversation::of_key(&g.conversation(), Some(g)), c);
    }

    #[test]
    fn an_item_mirrors_its_message_and_send_state() {
        let a = sotto_crypto::AccountId([7; 32]);
        let mut m = StoredMessage::text(
            MessageId([1; 16]),
            a,
            (a, sotto_crypto::DeviceId(2)),
            5,
            "hi".into(),
            sotto_sdk::MessageStatus::Read,
        );
        m.edited_at_ms = 9;
        let conv = Conversation::of_key(&a, None);
        let item = TimelineItem::stored(m, conv.clone());
        assert_eq!(item.send_state, Some(SendState::Read));
        assert_eq!(item.edited_at_ms, Some(9));
        assert_eq!(item.expires_at_ms, None);
        assert_eq!(item.key.conversation, conv);
        assert_eq!(item.key.id, MessageId([1; 16]).to_string());
        assert_eq!(item.kind, MessageKind::Text);
        let d = timeline_diff(ListDiff::Remove { index: 3 }, &conv);
        assert_eq!(d, TimelineDiff::Remove { index: 3 });
    }
}
