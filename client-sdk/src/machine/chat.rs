//! Chat items in 1:1 conversations and groups (docs/protocol.md §15): texts and replies,
//! edits and deletes by their author, reactions, read receipts, disappearing-message
//! timers, content from newer clients, blocking and identity changes.
//!
//! An edit, a delete or a reaction names its target by the key the store knows it by:
//! the conversation, the author's account and the id. An edit or a delete takes its
//! author from the authenticated sender, so one that names someone else's message names
//! a key that does not exist and changes nothing.

use sotto_crypto::{AccountId, DeviceId, DeviceListChange};

use super::{Event, Machine, MachineError};
use crate::content::{ChatItem, Content, ContentKind, GroupBody, MAX_EMOJI_LEN, MAX_TEXT_LEN, MAX_TIMER_S};
use crate::group::GroupId;
use crate::ids::MessageId;
use crate::store::{
    Changes, MessageKey, MessageKind, MessageStatus, MessageUpdate, OutboxItem, PeerDevice, Reaction, StoredMessage,
};

/// A conversation: a 1:1 chat with a contact's account, or a group.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum Conversation {
    /// With a contact.
    Direct(AccountId),
    /// A group.
    Group(GroupId),
}

impl Conversation {
    /// The key its messages are stored under: the contact's account id, or the group's
    /// conversation id ([`GroupId::conversation`]).
    pub fn key(&self) -> AccountId {
        match self {
            Self::Direct(a) => *a,
            Self::Group(g) => g.conversation(),
        }
    }

    /// The group, for a group conversation.
    pub fn group(&self) -> Option<GroupId> {
        match self {
            Self::Direct(_) => None,
            Self::Group(g) => Some(*g),
        }
    }
}

/// Where a received chat item comes from.
pub(super) struct Incoming {
    /// Its conversation.
    pub conversation: Conversation,
    /// The sending device.
    pub peer: PeerDevice,
    /// The content's message id.
    pub id: MessageId,
    /// The content's timestamp.
    pub timestamp_ms: u64,
    /// `Received` for a contact's, `SentElsewhere` for this account's own (a sync).
    pub status: MessageStatus,
}

/// A conversation's settings both sides agree on, and this device's read marker.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ConversationSettings {
    /// The disappearing-message timer, seconds (0: off).
    pub expire_s: u32,
    /// Messages stored up to this `order` are read here.
    pub read_up_to: u64,
}

/// The id of the local "safety number changed" item for `account`'s list `version`.
fn identity_item_id(version: u64) -> MessageId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(b"identity");
    b[8..].copy_from_slice(&version.to_be_bytes());
    MessageId(b)
}

impl Machine {
    /// The conversation stored under `key`: a group's, or else a contact's.
    pub fn conversation_of(&self, key: &AccountId) -> Conversation {
        match self.group_of_conversation(key) {
            Some(g) => Conversation::Group(g),
            None => Conversation::Direct(*key),
        }
    }

    /// The timer and read marker of a conversation.
    pub fn settings(&self, conversation: &Conversation) -> ConversationSettings {
        match conversation {
            Conversation::Direct(a) => self
                .conversations
                .get(a)
                .map(|c| ConversationSettings {
                    expire_s: c.expire_s,
                    read_up_to: c.read_up_to,
                })
                .unwrap_or_default(),
            Conversation::Group(g) => self
                .groups
                .get(g)
                .map(|e| ConversationSettings {
                    expire_s: e.record.value.expire_s,
                    read_up_to: e.record.value.read_up_to,
                })
                .unwrap_or_default(),
        }
    }

    /// Writes a chat item into the outbox. A text or a timer is also a new message in the
    /// conversation (returned, status `Queued`); an edit, a delete or a reaction changes
    /// the message it names here at once.
    ///
    /// Refused: a text above [`MAX_TEXT_LEN`], an emoji above [`MAX_EMOJI_LEN`], a timer
    /// above [`MAX_TIMER_S`], a group this account is not in, a blocked contact, and a
    /// contact whose safety number changed until it is acknowledged
    /// ([`MachineError::IdentityUnacknowledged`]).
    pub fn queue_chat(
        &mut self,
        conversation: Conversation,
        item: ChatItem,
        now_ms: u64,
    ) -> Result<(Changes, Option<StoredMessage>), MachineError> {
        match &item {
            ChatItem::Text { text, .. } | ChatItem::Edit { text, .. } | ChatItem::Attachment { caption: text, .. }
                if text.len() > MAX_TEXT_LEN =>
            {
                return Err(MachineError::TextTooLong {
                    len: text.len(),
                    max: MAX_TEXT_LEN,
                });
            }
            ChatItem::Reaction { emoji, .. } if emoji.len() > MAX_EMOJI_LEN => {
                return Err(MachineError::TextTooLong {
                    len: emoji.len(),
                    max: MAX_EMOJI_LEN,
                });
            }
            ChatItem::Timer { expire_s } if *expire_s > MAX_TIMER_S => {
                return Err(MachineError::TimerTooLong { max_s: MAX_TIMER_S });
            }
            ChatItem::Unsupported { .. } => return Err(MachineError::Unsupported),
            _ => {}
        }
        let own = self.account_id();
        let id = MessageId::new(now_ms, &mut self.ids);
        let key_of = |target: MessageId, author: AccountId| MessageKey {
            conversation: conversation.key(),
            sender: author,
            id: target,
        };
        let settings = self.settings(&conversation);
        // A text carries the conversation's timer.
        let item = match item {
            ChatItem::Text { text, quote, .. } => ChatItem::Text {
                text,
                quote,
                expire_s: settings.expire_s,
            },
            ChatItem::Attachment {
                attachment,
                caption,
                quote,
                ..
            } => ChatItem::Attachment {
                attachment,
                caption,
                quote,
                expire_s: settings.expire_s,
            },
            other => other,
        };
        let (mut changes, content) = match conversation {
            Conversation::Direct(to) => {
                if to == own {
                    return Err(MachineError::OwnAccount);
                }
                if let Some(c) = self.conversations.get(&to) {
                    if c.blocked {
                        return Err(MachineError::Blocked);
                    }
                    if c.identity_unacked {
                        return Err(MachineError::IdentityUnacknowledged);
                    }
                }
                // Writing to someone accepts them: the item carries this account's access
                // key, and the first time their conversation is accepted, the profile.
                let newly = !self.conversations.get(&to).is_some_and(|c| c.accepted);
                let mut changes = self.accept_conversation(to);
                if newly {
                    self.queue_profile_to(to, now_ms, &mut changes);
                }
                let content = Content {
                    message_id: id,
                    timestamp_ms: now_ms,
                    access_key: self.own_access_key(),
                    kind: ContentKind::Chat { item: item.clone() },
                };
                (changes, content)
            }
            Conversation::Group(group) => {
                if !self.groups.get(&group).is_some_and(|e| e.record.value.active) {
                    return Err(MachineError::UnknownGroup);
                }
                let content = Content {
                    message_id: id,
                    timestamp_ms: now_ms,
                    access_key: None,
                    kind: ContentKind::Group {
                        group,
                        body: GroupBody::Chat { item: item.clone() },
                    },
                };
                (Changes::default(), content)
            }
        };
        let sender = (own, self.device_id());
        let mut message = None;
        match item {
            ChatItem::Text {
                text, quote, expire_s, ..
            } => {
                let mut m = StoredMessage::text(id, conversation.key(), sender, now_ms, text, MessageStatus::Queued);
                m.quote = quote;
                m.expire_s = expire_s;
                m.expires_at_ms = expiry(now_ms, expire_s);
                message = Some(m);
            }
            ChatItem::Attachment {
                attachment,
                caption,
                quote,
                expire_s,
            } => {
                let mut m = StoredMessage::text(id, conversation.key(), sender, now_ms, caption, MessageStatus::Queued);
                m.quote = quote;
                m.expire_s = expire_s;
                m.expires_at_ms = expiry(now_ms, expire_s);
                m.attachment = Some(attachment);
                message = Some(m);
            }
            ChatItem::Timer { expire_s } => {
                self.set_timer(&mut changes, &conversation, expire_s, now_ms, own);
                let mut m = StoredMessage::text(
                    id,
                    conversation.key(),
                    sender,
                    now_ms,
                    String::new(),
                    MessageStatus::Queued,
                );
                m.kind = MessageKind::Timer { expire_s };
                message = Some(m);
            }
            ChatItem::Edit { target, text } => {
                changes
                    .message_updates
                    .push((key_of(target, own), MessageUpdate::Edit { text, at_ms: now_ms }));
            }
            ChatItem::Delete { target } => {
                changes
                    .message_updates
                    .push((key_of(target, own), MessageUpdate::Delete));
            }
            ChatItem::Reaction { author, target, emoji } => {
                changes.message_updates.push((
                    key_of(target, author),
                    MessageUpdate::React(Reaction {
                        by: own,
                        emoji,
                        at_ms: now_ms,
                    }),
                ));
            }
            ChatItem::Unsupported { .. } => {}
        }
        if let Some(m) = &message {
            changes.messages.push(m.clone());
        }
        changes
            .outbox_add
            .push(OutboxItem::new(id, conversation.key(), content.encode()));
        Ok((changes, message))
    }

    /// The content of a message sent again ([`crate::Client::retry`]): the same id and
    /// timestamp, so receivers that got it before drop the copy.
    pub fn resend_content(
        &self,
        conversation: Conversation,
        id: MessageId,
        timestamp_ms: u64,
        item: ChatItem,
    ) -> Result<Vec<u8>, MachineError> {
        let kind = match conversation {
            Conversation::Direct(to) => {
                if self.conversations.get(&to).is_some_and(|c| c.blocked) {
                    return Err(MachineError::Blocked);
                }
                if self.conversations.get(&to).is_some_and(|c| c.identity_unacked) {
                    return Err(MachineError::IdentityUnacknowledged);
                }
                ContentKind::Chat { item }
            }
            Conversation::Group(group) => {
                if !self.groups.get(&group).is_some_and(|e| e.record.value.active) {
                    return Err(MachineError::UnknownGroup);
                }
                ContentKind::Group {
                    group,
                    body: GroupBody::Chat { item },
                }
            }
        };
        let access_key = match conversation {
            Conversation::Direct(_) => self.own_access_key(),
            Conversation::Group(_) => None,
        };
        Ok(Content {
            message_id: id,
            timestamp_ms,
            access_key,
            kind,
        }
        .encode())
    }

    /// Marks a conversation read up to `up_to` (an `order`): `read` are the messages from
    /// others it newly covers. Starts their disappearing timers, and when `receipts` is
    /// true queues read receipts to their authors (one per author, at most
    /// [`crate::content::MAX_RECEIPTS`] ids each; the rest are left out).
    pub fn mark_read(
        &mut self,
        conversation: Conversation,
        up_to: u64,
        read: &[StoredMessage],
        receipts: bool,
        now_ms: u64,
    ) -> Changes {
        let mut changes = Changes::default();
        match conversation {
            Conversation::Direct(peer) => {
                if self.conversations.get(&peer).is_none_or(|c| c.read_up_to >= up_to) {
                    return changes;
                }
                self.update_conversation(&mut changes, peer, |c| c.read_up_to = up_to);
            }
            Conversation::Group(g) => {
                let Some(mut record) = self.record_in(&g, &changes) else {
                    return changes;
                };
                if record.read_up_to >= up_to {
                    return changes;
                }
                record.read_up_to = up_to;
                self.group_write(g, record, &mut changes);
            }
        }
        let own = self.account_id();
        let mut by_author: Vec<(AccountId, Vec<MessageId>)> = Vec::new();
        for m in read.iter().filter(|m| m.sender.0 != own && m.order <= up_to) {
            if m.expire_s > 0 {
                changes
                    .message_updates
                    .push((m.key(), MessageUpdate::ExpireAt(expiry(now_ms, m.expire_s))));
            }
            if !receipts || m.kind != MessageKind::Text || m.deleted {
                continue;
            }
            match by_author.iter_mut().find(|(a, _)| *a == m.sender.0) {
                Some((_, ids)) if ids.len() < crate::content::MAX_RECEIPTS => ids.push(m.id),
                Some(_) => {}
                None => by_author.push((m.sender.0, vec![m.id])),
            }
        }
        for (author, message_ids) in by_author {
            if self.conversations.get(&author).is_some_and(|c| c.blocked) {
                continue;
            }
            let content = Content {
                message_id: MessageId::new(now_ms, &mut self.ids),
                timestamp_ms: now_ms,
                access_key: self.access_key_to_share(&author),
                kind: ContentKind::Read {
                    group: conversation.group(),
                    message_ids,
                },
            };
            changes
                .outbox_add
                .push(OutboxItem::new(content.message_id, author, content.encode()));
        }
        changes
    }

    /// Blocks or unblocks a contact. A blocked contact's messages are dropped, and it gets
    /// no receipts; a blocked account's message request is no longer listed. Unblocking
    /// leaves the conversation as it was: a contact accepted before is accepted again, a
    /// request is a request again.
    pub fn set_blocked(&self, contact: AccountId, blocked: bool) -> Result<Changes, MachineError> {
        if contact == self.account_id() {
            return Err(MachineError::OwnAccount);
        }
        let mut changes = Changes::default();
        self.update_conversation(&mut changes, contact, |c| c.blocked = blocked);
        Ok(changes)
    }

    /// Deletes a 1:1 conversation's record (a declined message request, or a chat the
    /// user removed); `messages` are its stored messages, removed with it. The contact's
    /// next message starts a new request.
    pub fn delete_conversation(&self, contact: AccountId, messages: &[MessageKey]) -> Changes {
        Changes {
            conversations_removed: vec![contact],
            messages_removed: messages.to_vec(),
            ..Changes::default()
        }
    }

    /// Sets or clears a contact's local nickname.
    pub fn set_nickname(&self, contact: AccountId, nickname: Option<String>) -> Result<Changes, MachineError> {
        if contact == self.account_id() {
            return Err(MachineError::OwnAccount);
        }
        let nickname = nickname.map(|n| crate::content::truncate_utf8(&n, crate::store::MAX_NAME_LEN).to_owned());
        let mut changes = Changes::default();
        self.update_conversation(&mut changes, contact, |c| c.nickname = nickname);
        Ok(changes)
    }

    /// Acknowledges a contact's changed safety number: sends to them go again.
    pub fn acknowledge_identity(&self, contact: AccountId) -> Changes {
        let mut changes = Changes::default();
        if self.conversations.get(&contact).is_some_and(|c| c.identity_unacked) {
            self.update_conversation(&mut changes, contact, |c| c.identity_unacked = false);
        }
        changes
    }

    /// A contact's pinned device list changed (`version` is the new one): a device added
    /// or re-keyed changes what their safety number vouches for. The conversation then
    /// waits for [`Machine::acknowledge_identity`] and shows a local item.
    pub(super) fn identity_changed(
        &self,
        account: AccountId,
        version: u64,
        change: &DeviceListChange,
        first_pin: bool,
        changes: &mut Changes,
        events: &mut Vec<Event>,
    ) {
        if first_pin
            || account == self.account_id()
            || (change.added.is_empty() && change.rekeyed.is_empty())
            || !self.conversations.contains_key(&account)
        {
            return;
        }
        self.update_conversation(changes, account, |c| c.identity_unacked = true);
        let mut item = StoredMessage::text(
            identity_item_id(version),
            account,
            (account, DeviceId(0)),
            0,
            String::new(),
            MessageStatus::Received,
        );
        item.kind = MessageKind::IdentityChanged;
        changes.messages.push(item);
        events.push(Event::IdentityChanged { account });
    }

    fn set_timer(
        &self,
        changes: &mut Changes,
        conversation: &Conversation,
        expire_s: u32,
        at_ms: u64,
        _by: AccountId,
    ) -> bool {
        match conversation {
            Conversation::Direct(peer) => {
                let current = changes
                    .conversations
                    .iter()
                    .find(|c| c.peer == *peer)
                    .or_else(|| self.conversations.get(peer))
                    .map_or(0, |c| c.timer_at_ms);
                if at_ms < current {
                    return false;
                }
                self.update_conversation(changes, *peer, |c| {
                    c.expire_s = expire_s;
                    c.timer_at_ms = at_ms;
                });
                true
            }
            Conversation::Group(g) => {
                let Some(mut record) = self.record_in(g, changes) else {
                    return false;
                };
                if at_ms < record.timer_at_ms {
                    return false;
                }
                record.expire_s = expire_s;
                record.timer_at_ms = at_ms;
                self.group_write(*g, record, changes);
                true
            }
        }
    }

    /// A chat item from `peer` in `conversation`: `status` is `Received` for a contact's,
    /// `SentElsewhere` for this account's own (a sync). False when it is a message this
    /// device stored before.
    pub(super) fn accept_chat(
        &mut self,
        from: Incoming,
        item: ChatItem,
        changes: &mut Changes,
        events: &mut Vec<Event>,
    ) -> bool {
        let Incoming {
            conversation,
            peer,
            id,
            timestamp_ms,
            status,
        } = from;
        let key_of = |target: MessageId, author: AccountId| MessageKey {
            conversation: conversation.key(),
            sender: author,
            id: target,
        };
        let message = |kind: MessageKind, text: String| {
            let mut m = StoredMessage::text(id, conversation.key(), peer, timestamp_ms, text, status);
            m.kind = kind;
            m
        };
        let stored = match item {
            ChatItem::Text { text, quote, expire_s } => {
                let mut m = message(MessageKind::Text, text);
                m.quote = quote;
                m.expire_s = expire_s;
                // A copy of this account's own message starts its timer when it was sent;
                // a contact's when it is read here.
                if status == MessageStatus::SentElsewhere {
                    m.expires_at_ms = expiry(timestamp_ms, expire_s);
                }
                m
            }
            ChatItem::Attachment {
                attachment,
                caption,
                quote,
                expire_s,
            } => {
                let mut m = message(MessageKind::Text, caption);
                m.quote = quote;
                m.expire_s = expire_s;
                m.attachment = Some(attachment);
                if status == MessageStatus::SentElsewhere {
                    m.expires_at_ms = expiry(timestamp_ms, expire_s);
                }
                m
            }
            ChatItem::Timer { expire_s } => {
                if self.set_timer(changes, &conversation, expire_s, timestamp_ms, peer.0) {
                    events.push(Event::TimerChanged {
                        conversation: conversation.key(),
                        expire_s,
                        by: peer.0,
                    });
                }
                message(MessageKind::Timer { expire_s }, String::new())
            }
            ChatItem::Unsupported { tag } => message(MessageKind::Unsupported { kind: tag }, String::new()),
            ChatItem::Edit { target, text } => {
                let key = key_of(target, peer.0);
                changes.message_updates.push((
                    key,
                    MessageUpdate::Edit {
                        text,
                        at_ms: timestamp_ms,
                    },
                ));
                events.push(Event::MessageEdited { key });
                return true;
            }
            ChatItem::Delete { target } => {
                let key = key_of(target, peer.0);
                changes.message_updates.push((key, MessageUpdate::Delete));
                events.push(Event::MessageDeleted { key });
                return true;
            }
            ChatItem::Reaction { author, target, emoji } => {
                let key = key_of(target, author);
                changes.message_updates.push((
                    key,
                    MessageUpdate::React(Reaction {
                        by: peer.0,
                        emoji: emoji.clone(),
                        at_ms: timestamp_ms,
                    }),
                ));
                events.push(Event::ReactionChanged { key, by: peer.0, emoji });
                return true;
            }
        };
        self.store_new(stored, changes, events)
    }

    /// Stores a new message unless it was stored before; false for a duplicate.
    pub(super) fn store_new(&mut self, stored: StoredMessage, changes: &mut Changes, events: &mut Vec<Event>) -> bool {
        let key = stored.key();
        if self.seen.contains(&key) || changes.messages.iter().any(|m| m.key() == key) {
            return false;
        }
        if self.group_of_conversation(&stored.conversation).is_none() {
            if stored.status == MessageStatus::SentElsewhere {
                // Another device of this account wrote to them: accepted.
                self.update_conversation(changes, stored.conversation, |c| c.accepted = true);
            } else if !self.conversations.contains_key(&stored.conversation) {
                // A first message from an account this one never accepted: a request.
                self.update_conversation(changes, stored.conversation, |_| {});
            }
        }
        events.push(Event::MessageReceived(stored.clone()));
        changes.messages.push(stored);
        true
    }

    /// Read receipts from `peer` for messages this account sent.
    pub(super) fn accept_read(
        &self,
        peer: PeerDevice,
        group: Option<GroupId>,
        message_ids: Vec<MessageId>,
        changes: &mut Changes,
        events: &mut Vec<Event>,
    ) {
        let Some(conversation) = self.receipt_conversation(peer, group) else {
            return;
        };
        let own = self.account_id();
        changes.message_updates.extend(message_ids.iter().map(|id| {
            (
                MessageKey {
                    conversation,
                    sender: own,
                    id: *id,
                },
                MessageUpdate::Status(MessageStatus::Read),
            )
        }));
        events.push(Event::Read {
            conversation,
            ids: message_ids,
            by: peer,
        });
    }

    /// The conversation a receipt from `peer` about messages in `group` (or in the 1:1
    /// conversation with `peer`) is about. Only a member's receipt counts in a group.
    pub(super) fn receipt_conversation(&self, peer: PeerDevice, group: Option<GroupId>) -> Option<AccountId> {
        match group {
            Some(g) => match self.groups.get(&g) {
                Some(e) if e.log.tip().is_member(&peer.0) => Some(g.conversation()),
                _ => None,
            },
            None => Some(peer.0),
        }
    }

    /// True when content from `account` is dropped: a blocked contact.
    pub(super) fn is_blocked(&self, account: &AccountId) -> bool {
        self.conversations.get(account).is_some_and(|c| c.blocked)
    }
}

/// The most contacts presence goes to.
pub const MAX_PRESENCE_CONTACTS: usize = 256;

/// What an ephemeral frame said.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EphemeralIn {
    /// `by` started or stopped typing in `conversation`.
    Typing {
        /// The conversation key.
        conversation: AccountId,
        /// Who.
        by: AccountId,
        /// True when started.
        typing: bool,
    },
    /// `by` is online.
    Presence {
        /// Who.
        by: AccountId,
    },
}

/// An ephemeral payload and the account whose connected devices it goes to.
pub type EphemeralFrame = (AccountId, Vec<u8>);

/// Groups larger than this get no typing notifications (each one is a pairwise copy per
/// member device).
pub const MAX_TYPING_GROUP: usize = 32;

/// Groups larger than this get no delivery receipts: each message would cost its author a
/// pairwise envelope from every other member. Read receipts, sent when the reader reads
/// (one per author for everything read at once), go in every group.
pub const MAX_DELIVERY_RECEIPT_GROUP: usize = 32;

impl Machine {
    /// The group whose message in `conversation` gets a delivery receipt: an active group
    /// of at most [`MAX_DELIVERY_RECEIPT_GROUP`] members. `None` for any other
    /// conversation.
    pub fn delivery_receipt_group(&self, conversation: &AccountId) -> Option<GroupId> {
        let g = self.group_of_conversation(conversation)?;
        let e = self.groups.get(&g)?;
        (e.record.value.active && e.log.tip().members.len() <= MAX_DELIVERY_RECEIPT_GROUP).then_some(g)
    }

    /// Typing notifications for a conversation (docs/protocol.md §15.4): one sealed copy
    /// per device of each recipient account that this device has a session with, each to
    /// go in an `Ephemeral` frame to that account. Devices without a session are skipped
    /// (typing never fetches bundles); so are blocked contacts, unacknowledged identity
    /// changes and groups above [`MAX_TYPING_GROUP`] members.
    pub fn typing_frames(
        &mut self,
        conversation: Conversation,
        typing: bool,
        now_ms: u64,
    ) -> Result<(Changes, Vec<EphemeralFrame>), MachineError> {
        let own = self.account_id();
        let accounts: Vec<AccountId> = match conversation {
            Conversation::Direct(peer) => match self.conversations.get(&peer) {
                Some(c) if !c.blocked && !c.identity_unacked && c.accepted => vec![peer],
                _ => Vec::new(),
            },
            Conversation::Group(g) => match self.groups.get(&g) {
                Some(e) if e.record.value.active && e.log.tip().members.len() <= MAX_TYPING_GROUP => {
                    e.log.tip().members.keys().filter(|a| **a != own).copied().collect()
                }
                _ => Vec::new(),
            },
        };
        let kind = ContentKind::Typing {
            group: conversation.group(),
            typing,
        };
        self.ephemeral_frames(accounts, kind, now_ms)
    }

    /// Presence frames (docs/protocol.md §15.8): "online now" to the contacts this account
    /// accepted (not blocked, identity acknowledged), at most [`MAX_PRESENCE_CONTACTS`].
    pub fn presence_frames(&mut self, now_ms: u64) -> Result<(Changes, Vec<EphemeralFrame>), MachineError> {
        let accounts: Vec<AccountId> = self
            .conversations
            .values()
            .filter(|c| c.accepted && !c.blocked && !c.identity_unacked)
            .map(|c| c.peer)
            .take(MAX_PRESENCE_CONTACTS)
            .collect();
        self.ephemeral_frames(accounts, ContentKind::Presence, now_ms)
    }

    /// One sealed copy of `kind` per device of each account in `accounts` that this
    /// device has a session with.
    fn ephemeral_frames(
        &mut self,
        accounts: Vec<AccountId>,
        kind: ContentKind,
        now_ms: u64,
    ) -> Result<(Changes, Vec<EphemeralFrame>), MachineError> {
        let content = Content {
            message_id: MessageId::new(now_ms, &mut self.ids),
            timestamp_ms: now_ms,
            access_key: None,
            kind,
        }
        .encode();
        let mut changes = Changes::default();
        let mut frames = Vec::new();
        for account in accounts {
            let Some(list) = self.lists.get(&account) else { continue };
            let devices: Vec<sotto_crypto::DeviceIdentity> =
                list.devices().iter().map(|d| d.identity(account)).collect();
            for identity in devices {
                if let Some(envelope) = self.seal_to(&identity, &content, &mut changes)? {
                    frames.push((account, envelope));
                }
            }
        }
        Ok((changes, frames))
    }

    /// An `EphemeralDeliver` payload: a typing notification from a listed device of a
    /// contact or a group member, or a contact's presence. `None` (and nothing changes) for anything else: a copy
    /// sealed for another device of this account, a stranger, a blocked contact, a stale
    /// or undecryptable message. Returns the session changes and what it said.
    pub fn receive_ephemeral(&mut self, envelope: &[u8]) -> Option<(Changes, EphemeralIn)> {
        if sotto_crypto::is_group_envelope(envelope) {
            return None;
        }
        let opened = sotto_crypto::open(&self.device, envelope).ok()?;
        let sender = opened.sender;
        if sender.account_id == self.account_id()
            || !self.lists.get(&sender.account_id).is_some_and(|l| l.contains(&sender))
            || self.is_blocked(&sender.account_id)
        {
            return None;
        }
        let mut changes = Changes::default();
        // Only on an existing session: a pre-key message (the sender's session was not
        // answered yet) must name the base key of a session this device holds, so an
        // ephemeral frame never starts a session nor uses up a one-time prekey.
        let plain = match sotto_crypto::MessageType::from_byte(opened.content_type)? {
            sotto_crypto::MessageType::Ratchet => self.decrypt_ratchet(&sender, &opened.content, &mut changes).ok()?,
            sotto_crypto::MessageType::PreKey => {
                let message = sotto_crypto::PreKeyMessage::decode(&opened.content).ok()?;
                let peer = (sender.account_id, sender.device_id);
                let known = self
                    .load_sessions(&peer)
                    .ok()?
                    .iter()
                    .any(|s| s.base_key() == &message.base_key);
                if !known {
                    return None;
                }
                self.decrypt_prekey(&sender, &opened.content, &mut changes).ok()?
            }
        };
        let (group, typing) = match Content::decode(&plain).ok()?.kind {
            ContentKind::Typing { group, typing } => (group, typing),
            ContentKind::Presence => {
                self.conversations.get(&sender.account_id)?;
                let pinned = self.lists.get(&sender.account_id).map_or(0, |l| l.version());
                changes.pins.push((sender.account_id, pinned));
                return Some((changes, EphemeralIn::Presence { by: sender.account_id }));
            }
            _ => return None,
        };
        let conversation = match group {
            Some(g) => {
                let e = self.groups.get(&g)?;
                if !e.record.value.active || !e.log.tip().is_member(&sender.account_id) {
                    return None;
                }
                g.conversation()
            }
            None => {
                self.conversations.get(&sender.account_id)?;
                sender.account_id
            }
        };
        let pinned = self.lists.get(&sender.account_id).map_or(0, |l| l.version());
        changes.pins.push((sender.account_id, pinned));
        Some((
            changes,
            EphemeralIn::Typing {
                conversation,
                by: sender.account_id,
                typing,
            },
        ))
    }
}

/// When a message with a `expire_s` timer started at `start_ms` expires; 0 for never.
pub fn expiry(start_ms: u64, expire_s: u32) -> u64 {
    if expire_s == 0 {
        return 0;
    }
    start_ms.saturating_add(u64::from(expire_s) * 1000)
}
