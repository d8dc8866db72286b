//! The chat API: texts, replies, edits, deletes, reactions, read state, timers,
//! blocking, message requests, nicknames, identity acknowledgements, and the send
//! queue's retry and cancel (docs/protocol.md §15).

use sotto_crypto::AccountId;

use super::error::ClientError;
use super::{Client, now_ms};
use crate::content::{ChatItem, MAX_QUOTE_LEN, Quote, truncate_utf8};
use crate::machine::Conversation;
use crate::store::{
    Changes, MessageKey, MessageKind, MessageStatus, MessageUpdate, OutboxItem, Page, Store, StoredMessage,
};

/// How many messages [`Client::mark_read`] and [`Client::delete_conversation`] handle per
/// store page.
const PAGE: u32 = 500;
/// The most messages one [`Client::mark_read`] reads (newest first) to send receipts and
/// start timers for.
const MAX_MARK_READ: u32 = 5_000;

/// How often the client looks for expired messages.
#[cfg(feature = "native")]
const EXPIRY_SWEEP: std::time::Duration = std::time::Duration::from_secs(1);
/// How often the client looks for expired messages (the browser store scans).
#[cfg(not(feature = "native"))]
const EXPIRY_SWEEP: std::time::Duration = std::time::Duration::from_secs(15);

impl<S: Store> super::Inner<S> {
    /// Deletes the messages whose timer ran out at `now_ms`; how many went.
    pub(crate) async fn expire_due(&self, now_ms: u64) -> Result<usize, ClientError> {
        let mut total = 0;
        loop {
            let due = self.store.expired_messages(now_ms, PAGE).await?;
            if due.is_empty() {
                return Ok(total);
            }
            total += due.len();
            let n = due.len();
            self.transact(|_| {
                Ok((
                    Changes {
                        messages_removed: due.clone(),
                        ..Changes::default()
                    },
                    (),
                ))
            })
            .await?;
            if n < PAGE as usize {
                return Ok(total);
            }
        }
    }

    /// Removes expired messages every [`EXPIRY_SWEEP`] until the client shuts down (a
    /// store error is retried at the next sweep).
    pub(crate) async fn sweep_expired(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = crate::rt::sleep(EXPIRY_SWEEP) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            let _ = self.expire_due(now_ms()).await;
        }
    }
}

impl<S: Store> Client<S> {
    /// Queues a chat item and wakes the sender. Returns the new message for a text or a
    /// timer (its `order` set).
    pub(super) async fn queue_item(
        &self,
        conversation: Conversation,
        item: ChatItem,
    ) -> Result<Option<StoredMessage>, ClientError> {
        let (message, committed) = self
            .inner
            .transact(|m| Ok(m.queue_chat(conversation, item.clone(), now_ms())?))
            .await?;
        self.inner.wake.notify_one();
        Ok(message.map(|mut m| {
            if let Some((_, order)) = committed.inserted.first() {
                m.order = *order;
            }
            m
        }))
    }

    /// Sends a text to a conversation (a contact or a group). Returns at once with the
    /// local item (status `Queued`); its state moves as the send goes (see
    /// [`crate::SendState`]).
    pub async fn send_message(&self, conversation: Conversation, text: &str) -> Result<StoredMessage, ClientError> {
        let item = ChatItem::Text {
            text: text.to_owned(),
            quote: None,
            expire_s: 0,
        };
        self.queue_item(conversation, item)
            .await?
            .ok_or(ClientError::UnknownMessage)
    }

    /// Replies to the message `to` of the same conversation, quoting its start.
    pub async fn reply(&self, to: &MessageKey, text: &str) -> Result<StoredMessage, ClientError> {
        let quoted = self
            .inner
            .store
            .message(*to)
            .await?
            .ok_or(ClientError::UnknownMessage)?;
        let conversation = self.conversation_of(&to.conversation).await;
        let item = ChatItem::Text {
            text: text.to_owned(),
            quote: Some(Quote {
                author: to.sender,
                id: to.id,
                snippet: truncate_utf8(&quoted.text, MAX_QUOTE_LEN).to_owned(),
            }),
            expire_s: 0,
        };
        self.queue_item(conversation, item)
            .await?
            .ok_or(ClientError::UnknownMessage)
    }

    /// A message this account wrote, for an edit or a delete.
    async fn own_message(&self, key: &MessageKey) -> Result<StoredMessage, ClientError> {
        let m = self
            .inner
            .store
            .message(*key)
            .await?
            .ok_or(ClientError::UnknownMessage)?;
        if key.sender != self.account_id() {
            return Err(ClientError::NotAuthor);
        }
        Ok(m)
    }

    /// Edits a text this account wrote: every member sees the new text.
    pub async fn edit(&self, key: &MessageKey, text: &str) -> Result<(), ClientError> {
        let m = self.own_message(key).await?;
        if m.deleted || m.kind != MessageKind::Text {
            return Err(ClientError::UnknownMessage);
        }
        let conversation = self.conversation_of(&key.conversation).await;
        let item = ChatItem::Edit {
            target: key.id,
            text: text.to_owned(),
        };
        self.queue_item(conversation, item).await?;
        Ok(())
    }

    /// Deletes a message this account wrote, for everyone.
    pub async fn delete_for_everyone(&self, key: &MessageKey) -> Result<(), ClientError> {
        self.own_message(key).await?;
        let conversation = self.conversation_of(&key.conversation).await;
        self.queue_item(conversation, ChatItem::Delete { target: key.id })
            .await?;
        Ok(())
    }

    /// Reacts to a message with an emoji, replacing this account's earlier reaction; an
    /// empty `emoji` removes it.
    pub async fn react(&self, key: &MessageKey, emoji: &str) -> Result<(), ClientError> {
        self.inner
            .store
            .message(*key)
            .await?
            .ok_or(ClientError::UnknownMessage)?;
        let conversation = self.conversation_of(&key.conversation).await;
        let item = ChatItem::Reaction {
            author: key.sender,
            target: key.id,
            emoji: emoji.to_owned(),
        };
        self.queue_item(conversation, item).await?;
        Ok(())
    }

    /// Sets a conversation's disappearing-message timer for every member (0 turns it off).
    pub async fn set_timer(&self, conversation: Conversation, expire_s: u32) -> Result<StoredMessage, ClientError> {
        self.queue_item(conversation, ChatItem::Timer { expire_s })
            .await?
            .ok_or(ClientError::UnknownMessage)
    }

    /// Marks everything stored in a conversation read: its unread count drops to zero,
    /// the timers of disappearing messages start, and (unless
    /// [`crate::ClientOptions::read_receipts`] is off) read receipts go to the authors.
    pub async fn mark_read(&self, conversation: Conversation) -> Result<(), ClientError> {
        let key = conversation.key();
        let from = self.inner.machine.lock().await.settings(&conversation).read_up_to;
        // The messages stored after the marker, newest page first.
        let mut unread = Vec::new();
        let mut before = None;
        loop {
            let page = self.inner.store.messages(key, Page { before, limit: PAGE }).await?;
            let Some(first) = page.first() else { break };
            before = Some(first.order);
            let done = first.order <= from;
            unread.extend(page.into_iter().filter(|m| m.order > from));
            // Bounded: the marker still covers older ones (their receipts and timers are
            // left out).
            if done || unread.len() >= MAX_MARK_READ as usize {
                break;
            }
        }
        let Some(up_to) = unread.iter().map(|m| m.order).max() else {
            return Ok(());
        };
        let receipts = self.inner.options.read_receipts;
        self.inner
            .transact(|m| Ok((m.mark_read(conversation, up_to, &unread, receipts, now_ms()), ())))
            .await?;
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Blocks a contact: their messages are dropped (no receipts, no requests) and sends
    /// to them are refused. A pending message request is declined.
    pub async fn block(&self, contact: &AccountId) -> Result<(), ClientError> {
        let contact = *contact;
        self.inner
            .transact(|m| {
                let mut changes = m.set_blocked(contact, true)?;
                // A new profile key, so the blocked account's key no longer fetches the
                // profile (docs/protocol.md §15.9).
                let rotated = m.rotate_profile_key(now_ms());
                changes.account = rotated.account;
                Ok((changes, ()))
            })
            .await?;
        self.inner.profiles_wake.notify_one();
        Ok(())
    }

    /// Unblocks a contact.
    pub async fn unblock(&self, contact: &AccountId) -> Result<(), ClientError> {
        let contact = *contact;
        self.inner
            .transact(|m| {
                let mut changes = m.set_blocked(contact, false)?;
                // The profile key changed when they were blocked: an accepted contact
                // gets the current one again.
                if m.conversation(&contact).is_some_and(|c| c.accepted) {
                    changes.outbox_add.extend(m.share_profile(contact, now_ms()).outbox_add);
                }
                Ok((changes, ()))
            })
            .await?;
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Deletes a 1:1 conversation and its messages here (for a message request: declines
    /// it without blocking; the sender's next message is a new request).
    pub async fn delete_conversation(&self, contact: &AccountId) -> Result<(), ClientError> {
        let contact = *contact;
        let mut keys = Vec::new();
        let mut before = None;
        loop {
            let page = self.inner.store.messages(contact, Page { before, limit: PAGE }).await?;
            let Some(first) = page.first() else { break };
            before = Some(first.order);
            keys.extend(page.iter().map(StoredMessage::key));
        }
        self.inner
            .transact(|m| {
                if m.conversation(&contact).is_none() {
                    return Err(ClientError::UnknownContact);
                }
                Ok((m.delete_conversation(contact, &keys), ()))
            })
            .await?;
        Ok(())
    }

    /// Sets (or with `None` clears) the name this device shows for a contact, instead of
    /// the name in their profile. [`ClientError::UnknownContact`] without a conversation
    /// with them (add them first).
    pub async fn set_nickname(&self, contact: &AccountId, nickname: Option<&str>) -> Result<(), ClientError> {
        let contact = *contact;
        let nickname = nickname.map(str::to_owned);
        self.inner
            .transact(|m| {
                // A nickname names a conversation that exists: it never starts one.
                if m.conversation(&contact).is_none() {
                    return Err(ClientError::UnknownContact);
                }
                Ok((m.set_nickname(contact, nickname.clone())?, ()))
            })
            .await?;
        Ok(())
    }

    /// Sets this account's profile (a display name and an optional small avatar, at most
    /// [`crate::content::MAX_AVATAR_LEN`] bytes). It is stored on the relay encrypted
    /// under the account's profile key, and the key goes, end to end, to every contact
    /// this account accepted and to its other devices (docs/protocol.md §15.9); contacts
    /// accepted later get the key when they are accepted. The upload happens in the
    /// background, and again until the relay confirms it.
    pub async fn set_profile(&self, name: &str, avatar: Option<Vec<u8>>) -> Result<(), ClientError> {
        self.inner
            .transact(|m| Ok((m.set_profile(name, avatar.clone(), now_ms())?, ())))
            .await?;
        self.inner.profiles_wake.notify_one();
        Ok(())
    }

    /// Uploads this account's profile if the relay does not hold it yet, and fetches the
    /// profiles contacts announced, now. The client does both in the background while it
    /// runs; a short-lived process (a command-line tool, a notification extension) calls
    /// this to have them done before it exits. Fetches emit [`crate::Event::ProfileChanged`].
    pub async fn sync_profiles(&self) -> Result<(), ClientError> {
        self.inner.sync_profiles().await
    }

    /// This account's profile.
    pub async fn profile(&self) -> Option<crate::store::Profile> {
        self.inner.machine.lock().await.own_profile()
    }

    /// Acknowledges a contact's changed safety number (after the user compared it, or
    /// chose to go on): sends to them are allowed again.
    pub async fn acknowledge_identity(&self, contact: &AccountId) -> Result<(), ClientError> {
        let contact = *contact;
        self.inner
            .transact(|m| Ok((m.acknowledge_identity(contact), ())))
            .await?;
        Ok(())
    }

    /// One stored message.
    pub async fn message(&self, key: &MessageKey) -> Result<Option<StoredMessage>, ClientError> {
        Ok(self.inner.store.message(*key).await?)
    }

    /// Cancels a message still waiting in the send queue: it leaves the queue and the
    /// conversation. [`ClientError::NotQueued`] once the relay stored it. A cancel that
    /// races the upload of the message may not stop it reaching the recipient.
    pub async fn cancel(&self, key: &MessageKey) -> Result<(), ClientError> {
        let m = self.own_message(key).await?;
        if m.status != MessageStatus::Queued {
            return Err(ClientError::NotQueued);
        }
        let queued = self.inner.store.outbox(u32::MAX).await?;
        if !queued.iter().any(|i| i.id == key.id && i.to == key.conversation) {
            return Err(ClientError::NotQueued);
        }
        let key = *key;
        self.inner
            .transact(|_| {
                Ok((
                    Changes {
                        outbox_remove: vec![key.id],
                        messages_removed: vec![key],
                        ..Changes::default()
                    },
                    (),
                ))
            })
            .await?;
        Ok(())
    }

    /// Sends a failed message again (same id: a receiver that got the first attempt
    /// shows it once). [`ClientError::NotQueued`] unless it is `Failed`.
    pub async fn retry(&self, key: &MessageKey) -> Result<(), ClientError> {
        let m = self.own_message(key).await?;
        if !matches!(m.status, MessageStatus::Failed { .. }) {
            return Err(ClientError::NotQueued);
        }
        let conversation = self.conversation_of(&key.conversation).await;
        let item = match (m.kind, m.attachment.clone()) {
            (MessageKind::Timer { expire_s }, _) => ChatItem::Timer { expire_s },
            (_, Some(attachment)) => ChatItem::Attachment {
                attachment,
                caption: m.text.clone(),
                quote: m.quote.clone(),
                expire_s: m.expire_s,
            },
            (_, None) => ChatItem::Text {
                text: m.text.clone(),
                quote: m.quote.clone(),
                expire_s: m.expire_s,
            },
        };
        let key = *key;
        self.inner
            .transact(|mac| {
                let content = mac.resend_content(conversation, key.id, m.timestamp_ms, item.clone())?;
                Ok((
                    Changes {
                        outbox_add: vec![OutboxItem::new(key.id, key.conversation, content)],
                        message_updates: vec![(key, MessageUpdate::Requeue)],
                        ..Changes::default()
                    },
                    (),
                ))
            })
            .await?;
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Deletes the messages whose disappearing timer ran out at `now_ms` (the client
    /// does this itself every few seconds; an app or a test may call it with its own
    /// clock). Returns how many went.
    pub async fn expire_messages(&self, now_ms: u64) -> Result<usize, ClientError> {
        self.inner.expire_due(now_ms).await
    }

    /// The conversation stored under `key`.
    pub async fn conversation_of(&self, key: &AccountId) -> Conversation {
        self.inner.machine.lock().await.conversation_of(key)
    }
}
