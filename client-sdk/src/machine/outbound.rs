//! Outgoing messages: contacts, the outbox, per-device encryption of an outbox item,
//! receipts, and what a send's outcome does to the outbox.

use crate::group::GroupId;
use sotto_crypto::AccountId;
use sotto_proto::Recipient;

use super::{Event, Machine, MachineError, Need, SendPlan};
use crate::content::{ChatItem, Content, ContentKind};
use crate::ids::MessageId;
use crate::store::{Changes, MessageKey, MessageStatus, MessageUpdate, OutboxItem, PeerDevice, StoredMessage};

impl Machine {
    /// Adds a contact: creates the conversation. Its device list must be pinned first
    /// ([`Machine::receive_device_list`]).
    pub fn add_contact(&mut self, contact: AccountId, access_key: Option<[u8; 32]>) -> Result<Changes, MachineError> {
        if contact == self.account_id() {
            return Err(MachineError::OwnAccount);
        }
        let mut changes = Changes::default();
        self.update_conversation(&mut changes, contact, |c| {
            c.accepted = true;
            if access_key.is_some() {
                c.access_key = access_key;
            }
        });
        Ok(changes)
    }

    /// Writes a text into the outbox and the conversation (status `Queued`).
    pub fn queue_text(
        &mut self,
        to: AccountId,
        text: &str,
        now_ms: u64,
    ) -> Result<(Changes, StoredMessage), MachineError> {
        let item = ChatItem::Text {
            text: text.to_owned(),
            quote: None,
            expire_s: 0,
        };
        match self.queue_chat(super::Conversation::Direct(to), item, now_ms)? {
            (changes, Some(message)) => Ok((changes, message)),
            (_, None) => Err(MachineError::Unsupported),
        }
    }

    /// Encrypts an outbox item for every device: the contact's devices get the content,
    /// this account's other devices a sync transcript (for texts). Needs a session with
    /// each; otherwise says what to fetch.
    ///
    /// Devices in `skip` (listed, but unreachable for this send: the relay holds no
    /// prekeys for them) are left out. A session whose first messages were never answered
    /// and whose named prekeys are too old at `now_ms` counts as none (a new bundle is
    /// needed).
    pub fn prepare_send(
        &mut self,
        item: &OutboxItem,
        skip: &[PeerDevice],
        now_ms: u64,
    ) -> Result<SendPlan, MachineError> {
        let content = Content::decode(&item.content)?;
        let targets = match self.fan_out(&item.to, skip, now_ms) {
            Ok(t) => t,
            Err(needs) => return Ok(SendPlan::Need(needs)),
        };
        let sync = |kind| {
            Content {
                message_id: content.message_id,
                timestamp_ms: content.timestamp_ms,
                access_key: None,
                kind,
            }
            .encode()
        };
        let transcript = match &content.kind {
            ContentKind::Text { text } => Some(sync(ContentKind::SyncTranscript {
                conversation: item.to,
                text: text.clone(),
            })),
            ContentKind::Chat { item: chat } => Some(sync(ContentKind::ChatSync {
                conversation: item.to,
                item: chat.clone(),
            })),
            _ => None,
        };
        let own = self.account_id();
        let is_group = matches!(content.kind, ContentKind::Group { .. });
        let is_profile = matches!(content.kind, ContentKind::ProfileKey { .. });
        let mut changes = Changes::default();
        let mut recipients = Vec::with_capacity(targets.len());
        for identity in targets {
            let plaintext = if identity.account_id == own {
                match &transcript {
                    Some(t) => t,
                    // Group content and a profile key go to this account's other devices when
                    // they are addressed to this account.
                    None if (is_group || is_profile) && item.to == own => &item.content,
                    None => continue,
                }
            } else {
                &item.content
            };
            let Some(envelope) = self.seal_to(&identity, plaintext, &mut changes)? else {
                return Ok(SendPlan::Need(vec![Need::Bundles(
                    identity.account_id,
                    vec![identity.device_id],
                )]));
            };
            recipients.push(Recipient {
                account_id: identity.account_id,
                device_id: identity.device_id,
                head: envelope,
            });
        }
        Ok(SendPlan::Ready { changes, recipients })
    }

    /// Encrypts `plaintext` with the active session with `identity` and seals it to that
    /// device; the session's new state goes into `changes`. `None` without a session.
    pub(super) fn seal_to(
        &mut self,
        identity: &sotto_crypto::DeviceIdentity,
        plaintext: &[u8],
        changes: &mut Changes,
    ) -> Result<Option<Vec<u8>>, MachineError> {
        let peer = (identity.account_id, identity.device_id);
        let mut sessions = self.load_sessions(&peer)?;
        if sessions.is_empty() {
            return Ok(None);
        }
        let mut active = sessions.remove(0);
        let out = active.encrypt(plaintext, &mut self.rng)?;
        let envelope = sotto_crypto::seal(
            &self.device,
            identity,
            out.message_type as u8,
            &out.bytes,
            &mut self.rng,
        )?;
        let rest = self
            .sessions
            .get(&peer)
            .map(|s| s.value.sessions.iter().skip(1).cloned().collect())
            .unwrap_or_default();
        changes.sessions.push(self.session_write(peer, &active, rest));
        Ok(Some(envelope))
    }

    /// Queues a delivery receipt for messages received from `to` (at most
    /// [`crate::content::MAX_RECEIPTS`] ids; the rest are left out), in `group` when they
    /// were sent to one.
    pub fn queue_receipt(&mut self, to: AccountId, group: Option<GroupId>, ids: &[MessageId], now_ms: u64) -> Changes {
        let ids: Vec<MessageId> = ids.iter().take(crate::content::MAX_RECEIPTS).copied().collect();
        // A blocked account gets no receipts, for a group member's messages either.
        if ids.is_empty() || to == self.account_id() || self.is_blocked(&to) {
            return Changes::default();
        }
        let content = Content {
            message_id: MessageId::new(now_ms, &mut self.ids),
            timestamp_ms: now_ms,
            access_key: self.access_key_to_share(&to),
            kind: ContentKind::Delivered {
                group,
                message_ids: ids,
            },
        };
        Changes {
            outbox_add: vec![OutboxItem::new(content.message_id, to, content.encode())],
            ..Changes::default()
        }
    }

    /// A delivery receipt to `to` for `ids` (at most [`crate::content::MAX_RECEIPTS`]),
    /// not sent before `not_before_ms` (its random delay). `None` when there is nothing
    /// to acknowledge. The receiving client writes it in the transaction that stores the
    /// messages it acknowledges, so a crash can never keep a stored message without its
    /// receipt.
    pub fn receipt_item(
        &mut self,
        to: AccountId,
        group: Option<GroupId>,
        ids: &[MessageId],
        now_ms: u64,
        not_before_ms: u64,
    ) -> Option<OutboxItem> {
        let mut changes = self.queue_receipt(to, group, ids, now_ms);
        let mut item = changes.outbox_add.pop()?;
        item.not_before_ms = not_before_ms;
        Some(item)
    }

    /// `item`, a delivery receipt not sent yet, acknowledging `id` too (kept once).
    /// `None` when it is full ([`crate::content::MAX_RECEIPTS`]) or not a receipt.
    pub fn extend_receipt(item: &OutboxItem, id: MessageId) -> Option<OutboxItem> {
        let mut content = Content::decode(&item.content).ok()?;
        let ContentKind::Delivered { message_ids, .. } = &mut content.kind else {
            return None;
        };
        if !message_ids.contains(&id) {
            if message_ids.len() >= crate::content::MAX_RECEIPTS {
                return None;
            }
            message_ids.push(id);
        }
        Some(OutboxItem {
            content: content.encode(),
            ..item.clone()
        })
    }

    /// The relay stored an outbox item: drop it from the outbox and mark the message sent.
    pub fn mark_sent(&self, item: &OutboxItem) -> (Changes, Option<Event>) {
        if self.group_of_conversation(&item.to).is_some() {
            return self.mark_sent_pairwise(item);
        }
        let mut changes = Changes::default();
        self.distribution_sent(item, &mut changes);
        let (rest, event) = self.mark_sent_pairwise(item);
        changes.outbox_remove = rest.outbox_remove;
        changes.message_updates = rest.message_updates;
        (changes, event)
    }

    /// Drops a sent item from the outbox; a text (to a contact or a group) becomes `Sent`.
    pub(super) fn mark_sent_pairwise(&self, item: &OutboxItem) -> (Changes, Option<Event>) {
        let is_text = Content::decode(&item.content).is_ok_and(|c| has_status(&c.kind));
        let changes = Changes {
            outbox_remove: vec![item.id],
            message_updates: if is_text {
                vec![(
                    MessageKey {
                        conversation: item.to,
                        sender: self.account_id(),
                        id: item.id,
                    },
                    MessageUpdate::Status(MessageStatus::Sent),
                )]
            } else {
                Vec::new()
            },
            ..Changes::default()
        };
        let event = is_text.then_some(Event::MessageSent {
            id: item.id,
            conversation: item.to,
        });
        (changes, event)
    }

    /// Gives up an outbox item: drops it from the outbox and marks the message
    /// [`MessageStatus::Failed`]. The event is for texts (a receipt given up is not the
    /// app's concern).
    pub fn give_up(
        &self,
        item: &OutboxItem,
        code: &'static str,
        retryable: bool,
        reason: String,
    ) -> (Changes, Option<Event>) {
        let is_text = Content::decode(&item.content).is_ok_and(|c| has_status(&c.kind));
        let changes = Changes {
            outbox_remove: vec![item.id],
            message_updates: if is_text {
                vec![(
                    MessageKey {
                        conversation: item.to,
                        sender: self.account_id(),
                        id: item.id,
                    },
                    MessageUpdate::Fail {
                        retryable,
                        code: code.to_owned(),
                    },
                )]
            } else {
                Vec::new()
            },
            ..Changes::default()
        };
        let event = is_text.then_some(Event::SendFailed {
            id: item.id,
            reason,
            conversation: item.to,
            code,
            retryable,
        });
        (changes, event)
    }

    /// Records that sending `item` failed again (it stays in the outbox): `updated`
    /// carries its new attempts and backoff ([`record_failure`]).
    pub fn retry_later(&self, updated: OutboxItem) -> Changes {
        Changes {
            outbox_update: vec![updated],
            ..Changes::default()
        }
    }
}

/// True for content that is a message in its conversation, with a send status: a text,
/// a timer, an attachment (1:1 or group).
pub(super) fn has_status(kind: &ContentKind) -> bool {
    use crate::content::GroupBody;
    let item_has = |i: &ChatItem| {
        matches!(
            i,
            ChatItem::Text { .. } | ChatItem::Timer { .. } | ChatItem::Attachment { .. }
        )
    };
    match kind {
        ContentKind::Text { .. }
        | ContentKind::Group {
            body: GroupBody::Text { .. },
            ..
        } => true,
        ContentKind::Chat { item }
        | ContentKind::Group {
            body: GroupBody::Chat { item },
            ..
        } => item_has(item),
        _ => false,
    }
}

/// How failed attempts of one outbox item are spaced and bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The item is given up once it spent this long failing while the relay was
    /// reachable (ms).
    pub give_up_after_ms: u64,
    /// The backoff after the first failure (ms); it doubles with each one...
    pub backoff_min_ms: u64,
    /// ...up to this (ms).
    pub backoff_max_ms: u64,
}

/// Records a failed attempt of `item` that the item is to blame for, at `now_ms`, the
/// relay having been reachable since `online_since_ms` (time offline between two
/// failures does not count). `jitter` is a random draw. Returns the item with its new
/// attempts and backoff, or `None` when it has been failing for
/// [`RetryPolicy::give_up_after_ms`]: give it up.
pub fn record_failure(
    item: &OutboxItem,
    now_ms: u64,
    online_since_ms: u64,
    policy: &RetryPolicy,
    jitter: u64,
) -> Option<OutboxItem> {
    let mut next = item.clone();
    if item.last_failure_ms != 0 {
        let from = item.last_failure_ms.max(online_since_ms);
        next.failing_ms = next.failing_ms.saturating_add(now_ms.saturating_sub(from));
    }
    next.attempts = next.attempts.saturating_add(1);
    next.last_failure_ms = now_ms;
    if next.failing_ms >= policy.give_up_after_ms {
        return None;
    }
    let exp = next.attempts.saturating_sub(1).min(30);
    let base = policy
        .backoff_min_ms
        .saturating_mul(1u64 << exp)
        .min(policy.backoff_max_ms)
        .max(1);
    // Uniform in [base/2, base]: items failing together do not retry together.
    let delay = base / 2 + jitter % (base / 2 + 1);
    next.not_before_ms = now_ms.saturating_add(delay);
    Some(next)
}
