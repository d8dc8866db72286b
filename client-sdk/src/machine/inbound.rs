//! Incoming envelopes: sealed-sender opening, decryption against the sender device's
//! sessions, deduplication, mailbox sequence numbers, link content routing and the
//! pending queue for envelopes from devices not yet pinned.

use sha2::{Digest, Sha256};
use sotto_crypto::pickle::Pickle;
use sotto_crypto::{
    AccountId, DecryptError, DeviceIdentity, KemPreKeySecret, MessageType, PreKeyKind, PreKeyMessage, Session,
    X25519PreKeySecret,
};

use super::chat::Incoming;
use super::sessions::all_but;
use super::{
    CONTENT_LINK_ACCEPT, CONTENT_LINK_REQUEST, Conversation, Event, Inbound, Machine, Need, UndecryptableCause,
};
use crate::content::{ChatItem, Content, ContentKind};
use crate::store::{
    Changes, EnvelopeDigest, MAX_PENDING_INBOUND, MessageKey, MessageStatus, MessageUpdate, PeerDevice, PendingInbound,
    PreKeyId, Write,
};

impl Machine {
    /// How many envelopes wait in the pending-inbound table.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Puts an envelope aside in the pending-inbound table: it is recorded as processed
    /// (a second delivery is skipped) and kept for [`Machine::receive_pending`]. `None`
    /// when the table is full: do not acknowledge the envelope (the relay keeps it).
    pub fn defer(&self, seq: u64, envelope: &[u8], sender: AccountId, now_ms: u64) -> Option<Changes> {
        if self.pending.len() >= MAX_PENDING_INBOUND {
            return None;
        }
        let digest = Self::envelope_digest(envelope);
        let mut changes = self.seq_changes(seq, digest);
        changes.pending_add.push(PendingInbound {
            digest,
            sender,
            seq,
            first_seen_ms: now_ms,
            envelope: envelope.to_vec(),
        });
        Some(changes)
    }

    /// Processes a pending envelope again (the oldest of its sender). A final outcome
    /// drops it from the table; [`Inbound::Need`] means it stays.
    pub fn receive_pending(&mut self, p: &PendingInbound, refreshed: bool) -> Inbound {
        let mut out = self.receive(p.seq, &p.envelope, refreshed, true, None);
        match &mut out {
            Inbound::Done { changes, .. }
            | Inbound::LinkRequest { changes, .. }
            | Inbound::LinkAccept { changes, .. } => {
                changes.pending_remove.push(p.digest);
            }
            _ => {}
        }
        out
    }

    /// A pending envelope waited as long as it may: it leaves the table with a verdict.
    pub fn expire_pending(&self, p: &PendingInbound) -> (Changes, Event) {
        (
            Changes {
                pending_remove: vec![p.digest],
                ..Changes::default()
            },
            Event::Undecryptable {
                sender: None,
                cause: UndecryptableCause::DeviceListUnavailable,
            },
        )
    }

    /// The relay named the mailbox's epoch (at authentication): when it is not the one
    /// `last_seq` counts in, the relay numbers the mailbox anew, so `last_seq` restarts
    /// from 0. Commit the changes (empty when the epoch is the stored one).
    pub fn receive_mailbox_epoch(&self, epoch: [u8; 16]) -> Changes {
        if self.account.value.mailbox_epoch == Some(epoch) {
            return Changes::default();
        }
        let mut record = self.account.value.clone();
        record.mailbox_epoch = Some(epoch);
        record.last_seq = 0;
        Changes {
            account: Some(Write {
                expected: Some(self.account.version),
                value: record,
            }),
            ..Changes::default()
        }
    }

    /// Records the envelope (its digest, and its seq) as processed.
    pub(super) fn seq_changes(&self, seq: u64, digest: EnvelopeDigest) -> Changes {
        let mut record = self.account.value.clone();
        record.last_seq = record.last_seq.max(seq);
        Changes {
            account: Some(Write {
                expected: Some(self.account.version),
                value: record,
            }),
            envelopes: vec![digest],
            ..Changes::default()
        }
    }

    pub(super) fn undecryptable(
        &self,
        seq: u64,
        digest: EnvelopeDigest,
        sender: Option<PeerDevice>,
        cause: UndecryptableCause,
    ) -> Inbound {
        Inbound::Done {
            changes: self.seq_changes(seq, digest),
            events: vec![Event::Undecryptable { sender, cause }],
        }
    }

    /// The digest [`Machine::receive_envelope`] deduplicates envelopes by.
    pub fn envelope_digest(envelope: &[u8]) -> EnvelopeDigest {
        Sha256::digest(envelope).into()
    }

    /// True when an envelope with these bytes was processed already.
    pub fn is_processed(&self, envelope: &[u8]) -> bool {
        self.processed.contains(&Self::envelope_digest(envelope))
    }

    /// Processes one envelope from the mailbox (seq `seq`). An envelope whose bytes were
    /// processed before is skipped (a second delivery after a lost ack), whatever its
    /// seq: a relay that numbers the mailbox again from 1 loses nothing. Call with
    /// `refreshed = true` after feeding the device list a [`Need`] asked for.
    ///
    /// The changes of a message carry the pinned device-list version of its sender's
    /// account ([`Changes::pins`]), and a session is written only when new content
    /// decrypted: a duplicate leaves every session as it was.
    pub fn receive_envelope(&mut self, seq: u64, envelope: &[u8], refreshed: bool) -> Inbound {
        self.receive(seq, envelope, refreshed, false, None)
    }

    /// [`Machine::receive_envelope`] with the sealed envelope already opened by
    /// [`open_ahead`] (under [`Machine::device_keys`]): the open needs no machine state,
    /// so a client runs it on another thread, ahead of the envelopes before it.
    pub fn receive_envelope_opened(
        &mut self,
        seq: u64,
        envelope: &[u8],
        refreshed: bool,
        opened: Result<sotto_crypto::Opened, sotto_crypto::OpenError>,
    ) -> Inbound {
        self.receive(seq, envelope, refreshed, false, Some(opened))
    }

    /// This device's keys, for [`open_ahead`] off the machine.
    pub fn device_keys(&self) -> std::sync::Arc<sotto_crypto::Device> {
        self.device.clone()
    }

    pub(super) fn receive(
        &mut self,
        seq: u64,
        envelope: &[u8],
        refreshed: bool,
        from_pending: bool,
        opened: Option<Result<sotto_crypto::Opened, sotto_crypto::OpenError>>,
    ) -> Inbound {
        let digest = Self::envelope_digest(envelope);
        if !from_pending && self.processed.contains(&digest) {
            return Inbound::Done {
                changes: Changes::default(),
                events: Vec::new(),
            };
        }
        if sotto_crypto::is_group_envelope(envelope) {
            return self.receive_group(seq, digest, envelope, refreshed);
        }
        let opened = match opened.unwrap_or_else(|| sotto_crypto::open(&self.device, envelope)) {
            Ok(o) => o,
            Err(e) => return self.undecryptable(seq, digest, None, UndecryptableCause::Envelope(e)),
        };
        let sender = opened.sender;
        let peer = (sender.account_id, sender.device_id);
        if opened.content_type == CONTENT_LINK_REQUEST && sender.account_id == self.account_id() {
            return Inbound::LinkRequest {
                changes: self.seq_changes(seq, digest),
                sender,
                payload: opened.content,
            };
        }
        if !from_pending && self.pending.iter().any(|(_, a)| *a == sender.account_id) {
            return Inbound::Defer {
                sender: sender.account_id,
            };
        }
        let listed = self.lists.get(&sender.account_id).map(|list| list.contains(&sender));
        match listed {
            Some(true) => {}
            None | Some(false) if !refreshed => return Inbound::Need(Need::DeviceList(sender.account_id)),
            None => return self.undecryptable(seq, digest, Some(peer), UndecryptableCause::UnknownSender),
            Some(false) => return self.undecryptable(seq, digest, Some(peer), UndecryptableCause::SenderNotListed),
        }
        let mut changes = self.seq_changes(seq, digest);
        if opened.content_type == CONTENT_LINK_ACCEPT && sender.account_id == self.account_id() {
            // A linking answer (sent to every device of the account): the account's
            // device list changed; fetch it, then the caller opens it if it is joining.
            if !refreshed {
                return Inbound::Need(Need::DeviceList(self.account_id()));
            }
            return Inbound::LinkAccept {
                changes,
                sender,
                payload: opened.content,
            };
        }
        let decrypted = match MessageType::from_byte(opened.content_type) {
            Some(MessageType::Ratchet) => self.decrypt_ratchet(&sender, &opened.content, &mut changes),
            Some(MessageType::PreKey) => self.decrypt_prekey(&sender, &opened.content, &mut changes),
            None => Err(UndecryptableCause::UnknownContentType(opened.content_type)),
        };
        let plaintext = match decrypted {
            Ok(p) => p,
            Err(cause) => return self.undecryptable(seq, digest, Some(peer), cause),
        };
        let mut events = Vec::new();
        let fresh = match Content::decode(&plaintext) {
            Err(e) => {
                events.push(Event::Undecryptable {
                    sender: Some(peer),
                    cause: UndecryptableCause::Content(e),
                });
                true
            }
            Ok(content) => self.accept(peer, content, &mut changes, &mut events),
        };
        if !fresh {
            // Content seen before (a replay): no session moves, no prekey goes; only the
            // envelope is recorded as processed.
            return Inbound::Done {
                changes: self.seq_changes(seq, digest),
                events,
            };
        }
        // Accepted on the strength of the sender's pinned list: the commit fails if
        // another process pinned another version meanwhile.
        let pinned = self.lists.get(&sender.account_id).map_or(0, |l| l.version());
        changes.pins.push((sender.account_id, pinned));
        Inbound::Done { changes, events }
    }

    /// Turns decrypted content into changes and events. False when it is a message this
    /// device stored before (a duplicate): the caller then drops the session changes.
    pub(super) fn accept(
        &mut self,
        peer: PeerDevice,
        content: Content,
        changes: &mut Changes,
        events: &mut Vec<Event>,
    ) -> bool {
        let own = self.account_id();
        // A contact's content carries its access key: sends to it present the key. A
        // message may start a conversation (a message request); anything else only
        // updates one.
        if peer.0 != own
            && let Some(k) = &content.access_key
            && (matches!(
                content.kind,
                ContentKind::Text { .. } | ContentKind::Chat { .. } | ContentKind::Unsupported { .. }
            ) || self.conversations.contains_key(&peer.0))
        {
            self.update_conversation(changes, peer.0, |c| c.access_key = Some(k.0));
        }
        if matches!(content.kind, ContentKind::Group { .. }) {
            return self.accept_group(peer, content, changes, events);
        }
        // A blocked contact's 1:1 content is dropped: no message, no receipt, no request
        // (its group content still counts, or the group could not converge).
        if peer.0 != own && self.is_blocked(&peer.0) {
            return true;
        }
        let meta = (content.message_id, content.timestamp_ms);
        let text = |text| ChatItem::Text {
            text,
            quote: None,
            expire_s: 0,
        };
        let (conversation, item, status) = match content.kind {
            ContentKind::Text { text: t } if peer.0 != own => (peer.0, text(t), MessageStatus::Received),
            ContentKind::Chat { item } if peer.0 != own => (peer.0, item, MessageStatus::Received),
            ContentKind::Unsupported { kind } if peer.0 != own && kind != crate::content::RETIRED_PROFILE_KIND => {
                (peer.0, ChatItem::Unsupported { tag: kind }, MessageStatus::Received)
            }
            ContentKind::SyncTranscript { conversation, text: t } if peer.0 == own && conversation != own => {
                (conversation, text(t), MessageStatus::SentElsewhere)
            }
            ContentKind::ChatSync { conversation, item } if peer.0 == own && conversation != own => {
                (conversation, item, MessageStatus::SentElsewhere)
            }
            ContentKind::Delivered { group, message_ids } if peer.0 != own => {
                // Only messages this account sent in the conversation with the reporting
                // account, or in a group it is a member of: a receipt from P never moves a
                // message sent to anyone else.
                let Some(conversation) = self.receipt_conversation(peer, group) else {
                    return true;
                };
                changes.message_updates.extend(message_ids.iter().map(|id| {
                    (
                        MessageKey {
                            conversation,
                            sender: own,
                            id: *id,
                        },
                        MessageUpdate::Status(MessageStatus::Delivered),
                    )
                }));
                events.push(Event::Delivered {
                    conversation,
                    ids: message_ids,
                    by: peer,
                });
                return true;
            }
            ContentKind::Read { group, message_ids } if peer.0 != own => {
                self.accept_read(peer, group, message_ids, changes, events);
                return true;
            }
            ContentKind::ProfileKey { updated_ms, key } => {
                self.accept_profile_key(peer.0, key.0, updated_ms, changes);
                return true;
            }
            // Typing and presence are ephemeral: never in a stored envelope.
            ContentKind::Typing { .. } | ContentKind::Presence => return true,
            // This account's own content of a kind this version does not know.
            ContentKind::Unsupported { .. } => return true,
            _ => {
                events.push(Event::Undecryptable {
                    sender: Some(peer),
                    cause: UndecryptableCause::WrongSender,
                });
                return true;
            }
        };
        let conversation = self.conversation_of(&conversation);
        // A sync naming a group this device is not in is dropped.
        if let Conversation::Group(g) = conversation
            && !self.groups.get(&g).is_some_and(|e| e.record.value.active)
        {
            return true;
        }
        let from = Incoming {
            conversation,
            peer,
            id: meta.0,
            timestamp_ms: meta.1,
            status,
        };
        self.accept_chat(from, item, changes, events)
    }

    pub(super) fn decrypt_ratchet(
        &mut self,
        sender: &DeviceIdentity,
        message: &[u8],
        changes: &mut Changes,
    ) -> Result<Vec<u8>, UndecryptableCause> {
        let peer = (sender.account_id, sender.device_id);
        let pickles = self
            .sessions
            .get(&peer)
            .map(|s| s.value.sessions.clone())
            .unwrap_or_default();
        let mut last = UndecryptableCause::NoSession;
        for (i, p) in pickles.iter().enumerate() {
            let Ok(mut session) = Session::unpickle(p, &self.pickle_key) else {
                continue;
            };
            if !session.remote().ct_eq(sender) {
                last = UndecryptableCause::SenderMismatch;
                continue;
            }
            match session.decrypt(MessageType::Ratchet, message) {
                Ok(plain) => {
                    changes
                        .sessions
                        .push(self.session_write(peer, &session, all_but(&pickles, i)));
                    return Ok(plain);
                }
                Err(DecryptError::Duplicate { .. }) => last = UndecryptableCause::Duplicate,
                Err(e) => {
                    if last != UndecryptableCause::Duplicate {
                        last = UndecryptableCause::Decrypt(e);
                    }
                }
            }
        }
        Err(last)
    }

    pub(super) fn decrypt_prekey(
        &mut self,
        sender: &DeviceIdentity,
        bytes: &[u8],
        changes: &mut Changes,
    ) -> Result<Vec<u8>, UndecryptableCause> {
        let message = PreKeyMessage::decode(bytes).map_err(|e| UndecryptableCause::Decrypt(DecryptError::Decode(e)))?;
        if !message.initiator.ct_eq(sender) {
            return Err(UndecryptableCause::SenderMismatch);
        }
        let peer = (sender.account_id, sender.device_id);
        let pickles = self
            .sessions
            .get(&peer)
            .map(|s| s.value.sessions.clone())
            .unwrap_or_default();
        // §5.10: a session with this base key takes the message (§6.17).
        for (i, p) in pickles.iter().enumerate() {
            let Ok(mut session) = Session::unpickle(p, &self.pickle_key) else {
                continue;
            };
            if session.base_key() != &message.base_key || !session.remote().ct_eq(sender) {
                continue;
            }
            return match session.decrypt(MessageType::PreKey, bytes) {
                Ok(plain) => {
                    changes
                        .sessions
                        .push(self.session_write(peer, &session, all_but(&pickles, i)));
                    Ok(plain)
                }
                Err(DecryptError::Duplicate { .. }) => Err(UndecryptableCause::Duplicate),
                Err(e) => Err(UndecryptableCause::Decrypt(e)),
            };
        }
        let Some(list) = self.lists.get(&sender.account_id) else {
            return Err(UndecryptableCause::UnknownSender);
        };
        let load_x = |id: PreKeyId| -> Option<X25519PreKeySecret> {
            self.prekeys
                .get(&id)
                .and_then(|p| X25519PreKeySecret::unpickle(p, &self.pickle_key).ok())
        };
        let spk =
            load_x((PreKeyKind::Signed as u8, message.signed_prekey_id)).ok_or(UndecryptableCause::UnknownPreKey)?;
        let opk = match message.one_time_prekey_id {
            Some(id) => Some(load_x((PreKeyKind::OneTime as u8, id)).ok_or(UndecryptableCause::UnknownPreKey)?),
            None => None,
        };
        let kem_id = (message.kem_prekey.0 as u8, message.kem_prekey.1);
        let kem = self
            .prekeys
            .get(&kem_id)
            .and_then(|p| KemPreKeySecret::unpickle(p, &self.pickle_key).ok())
            .ok_or(UndecryptableCause::UnknownPreKey)?;
        let responded = sotto_crypto::respond(&self.device, list, &message, &spk, opk.as_ref(), &kem)
            .map_err(UndecryptableCause::PreKey)?;
        // §5.9: delete the one-time keys in the transaction that saves the session.
        if let Some(id) = responded.used.one_time_prekey_id {
            changes.prekeys_removed.push((PreKeyKind::OneTime as u8, id));
        }
        if responded.used.kem_prekey.0 == PreKeyKind::KemOneTime {
            changes.prekeys_removed.push(kem_id);
        }
        changes
            .sessions
            .push(self.session_write(peer, &responded.session, pickles));
        Ok(responded.plaintext)
    }
}

/// Opens a sealed 1:1 envelope for [`Machine::receive_envelope_opened`]; `None` for a
/// group envelope, which the machine opens with the group's keys.
pub fn open_ahead(
    device: &sotto_crypto::Device,
    envelope: &[u8],
) -> Option<Result<sotto_crypto::Opened, sotto_crypto::OpenError>> {
    (!sotto_crypto::is_group_envelope(envelope)).then(|| sotto_crypto::open(device, envelope))
}
