//! Inbound envelopes: decryption and commit before the ack, envelopes put aside until
//! their sender is pinned, and delayed delivery receipts.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sotto_crypto::AccountId;
use sotto_proto::Frame;

use super::commit::MAX_CONFLICT_RETRIES;
use super::error::{ClientError, is_final};
use super::outbox::uniform;
use super::{Inner, now_ms};
use crate::group::GroupId;
use crate::machine::{Event, Inbound, Machine, Need};
use crate::rt::Instant;
use crate::store::{Changes, Committed, MessageKey, MessageStatus, Store, StoreError};
use crate::transport::Socket;

/// At most this many deliveries are processed before the store is synced and they are
/// acked (one cumulative ack); fewer when no frame is waiting. Below the relay's default
/// delivery window (64), so a batch never waits for the window to open.
pub(super) const ACK_BATCH: usize = 32;

/// How many consumed one-time prekeys trigger a refill check.
pub(super) const REFILL_AFTER: u32 = 20;

/// First retry delay of a pending inbound envelope (doubling up to [`PENDING_RETRY_MAX`]).
pub(super) const PENDING_RETRY_MIN: Duration = Duration::from_secs(1);

/// Longest retry delay of a pending inbound envelope.
pub(super) const PENDING_RETRY_MAX: Duration = Duration::from_secs(300);

/// How long a pending inbound envelope waits for its sender's device list before it gets
/// a final verdict ([`crate::machine::UndecryptableCause::DeviceListUnavailable`]).
pub(super) const PENDING_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

impl<S: Store> Inner<S> {
    pub(super) async fn handle_deliver(
        &self,
        seq: u64,
        envelope: &[u8],
        mut opened: Option<Result<sotto_crypto::Opened, sotto_crypto::OpenError>>,
    ) -> Result<(), ClientError> {
        let mut refreshed = false;
        let mut conflicts = 0;
        let mut accept_handled = false;
        loop {
            let mut m = self.machine.lock().await;
            let inbound = match opened.take() {
                Some(o) => m.receive_envelope_opened(seq, envelope, refreshed, o),
                None => m.receive_envelope(seq, envelope, refreshed),
            };
            match inbound {
                Inbound::Need(Need::DeviceList(a)) => {
                    drop(m);
                    match self.refresh_device_list(a).await {
                        Ok(()) => {}
                        Err(e) if is_final(&e) => {}
                        // Transient (network, timeout, a retryable relay error, the store):
                        // no verdict. Kept in the pending-inbound table and retried.
                        Err(e) => return self.put_aside(seq, envelope, a, e).await,
                    }
                    refreshed = true;
                }
                Inbound::Defer { sender } => {
                    drop(m);
                    return self
                        .put_aside(seq, envelope, sender, ClientError::Store(StoreError::Conflict))
                        .await;
                }
                Inbound::Need(Need::Bundles(..)) => refreshed = true,
                Inbound::LinkAccept {
                    changes,
                    sender,
                    payload,
                } => {
                    if !accept_handled {
                        // Opened (account key, contacts) before the seq is committed, so a
                        // crash in between leaves the answer in the mailbox.
                        drop(m);
                        accept_handled = true;
                        let _ = self.handle_link_accept(sender, &payload).await;
                        continue;
                    }
                    match self.commit_locked(&mut m, changes).await {
                        Ok(_) => {}
                        Err(ClientError::Store(StoreError::Conflict)) if conflicts < MAX_CONFLICT_RETRIES => {
                            conflicts += 1;
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                    return Ok(());
                }
                Inbound::LinkRequest {
                    changes,
                    sender,
                    payload,
                } => {
                    match self.commit_locked(&mut m, changes).await {
                        Ok(_) => {}
                        Err(ClientError::Store(StoreError::Conflict)) if conflicts < MAX_CONFLICT_RETRIES => {
                            conflicts += 1;
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                    drop(m);
                    // A request that does not verify, or a relay that refuses the new
                    // list, leaves the account as it was.
                    let _ = self.handle_link_request(sender, &payload).await;
                    return Ok(());
                }
                Inbound::Done { mut changes, events } => {
                    let consumed = changes.prekeys_removed.len() as u32;
                    let receipts = self.add_receipts(&mut m, &mut changes, &events);
                    // Deferred: the envelope is acked only after the next `sync`, so if a
                    // power loss undoes this commit the relay delivers it again.
                    match self.commit_locked_as(&mut m, changes, true).await {
                        Ok(c) => {
                            self.open_receipts(receipts);
                            drop(m);
                            self.after_inbound(c, events, consumed).await;
                            return Ok(());
                        }
                        Err(ClientError::Store(StoreError::Conflict)) if conflicts < MAX_CONFLICT_RETRIES => {
                            conflicts += 1;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// Keeps an envelope that got no verdict (`why`) in the pending-inbound table, so it
    /// can be acked; when the table is full returns `why` (not acked: the relay keeps it).
    pub(super) async fn put_aside(
        &self,
        seq: u64,
        envelope: &[u8],
        sender: AccountId,
        why: ClientError,
    ) -> Result<(), ClientError> {
        for _ in 0..=MAX_CONFLICT_RETRIES {
            let mut m = self.machine.lock().await;
            let Some(changes) = m.defer(seq, envelope, sender, now_ms()) else {
                return Err(why);
            };
            match self.commit_locked_as(&mut m, changes, true).await {
                Ok(_) => return Ok(()),
                Err(ClientError::Store(StoreError::Conflict)) => {}
                Err(e) => return Err(e),
            }
        }
        Err(why)
    }

    /// Adds to `changes` (an inbound commit) the delivery receipts for the texts it
    /// stores: each joins the receipt to its sender that waits for its random delay, or
    /// starts one. Stored message and receipt are one transaction, so a crash after the
    /// commit cannot lose the receipt (the message is never delivered again once acked).
    /// Returns the receipts to record as open once the commit succeeded.
    pub(super) fn add_receipts(
        &self,
        m: &mut Machine,
        changes: &mut Changes,
        events: &[Event],
    ) -> BTreeMap<ReceiptTo, (OpenReceipt, bool)> {
        let mut touched: BTreeMap<ReceiptTo, (OpenReceipt, bool)> = BTreeMap::new();
        let mut closed = Vec::new();
        for e in events {
            let Event::MessageReceived(msg) = e else { continue };
            if msg.status != MessageStatus::Received {
                continue;
            }
            // A 1:1 message's receipt goes to its sender; a group message's to its
            // author's account, naming the group, in groups of at most
            // [`crate::machine::MAX_DELIVERY_RECEIPT_GROUP`] members.
            let group = if msg.conversation == msg.sender.0 {
                None
            } else {
                let Some(g) = m.delivery_receipt_group(&msg.conversation) else {
                    continue;
                };
                Some(g)
            };
            let to = (msg.sender.0, group);
            if !touched.contains_key(&to)
                && let Some(open) = self.receipts.lock().unwrap_or_else(|e| e.into_inner()).get(&to)
            {
                touched.insert(to, (open.clone(), false));
            }
            if let Some((open, _)) = touched.get_mut(&to)
                && let Some(item) = Machine::extend_receipt(&open.item, msg.id)
            {
                open.item = item;
                continue;
            }
            // None open, or the open one is full: a new one, with its own delay.
            let delay = self.receipt_delay();
            let now = now_ms();
            let not_before = now.saturating_add(delay.as_millis() as u64);
            if let Some(item) = m.receipt_item(to.0, to.1, &[msg.id], now, not_before)
                && let Some(full) = touched.insert(to, (OpenReceipt { item }, true))
            {
                // The full one is no longer open; it is written as it stands.
                closed.push(full);
            }
        }
        for (open, new) in closed.iter().chain(touched.values()) {
            if *new {
                changes.outbox_add.push(open.item.clone());
            } else {
                changes.outbox_update.push(open.item.clone());
            }
        }
        touched
    }

    /// Records the receipts [`Self::add_receipts`] wrote as open (later texts join them
    /// until they are started), once their commit succeeded.
    pub(super) fn open_receipts(&self, receipts: BTreeMap<ReceiptTo, (OpenReceipt, bool)>) {
        if receipts.is_empty() {
            return;
        }
        if receipts.values().any(|(_, new)| *new) {
            self.new_receipts.store(true, Ordering::SeqCst);
        }
        let mut open = self.receipts.lock().unwrap_or_else(|e| e.into_inner());
        for (to, (receipt, _)) in receipts {
            open.insert(to, receipt);
        }
    }

    /// An outbox item is being started: a receipt among them is no longer open (nothing
    /// joins it any more, so what goes out is what was stored).
    pub(super) fn close_receipt(&self, item: &crate::store::OutboxItem) {
        let mut open = self.receipts.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|_, o| o.item.id != item.id);
    }

    /// After an inbound commit: orders the events and keeps only what took effect (a
    /// receipt reports the messages it moved to `Delivered`, once each), emits them,
    /// refills prekeys when enough were used.
    pub(super) async fn after_inbound(&self, c: Committed, events: Vec<Event>, consumed: u32) {
        let own = self.device.account_id();
        let mut advanced: BTreeMap<MessageKey, MessageStatus> = c.advanced.iter().copied().collect();
        let events: Vec<Event> = events
            .into_iter()
            .flat_map(|e| match e {
                Event::MessageReceived(mut msg) => {
                    let Some((_, order)) = c.inserted.iter().find(|(id, _)| *id == msg.id) else {
                        return Vec::new();
                    };
                    msg.order = *order;
                    vec![Event::MessageReceived(msg)]
                }
                // A second receipt for a message (from another device of the contact, or
                // sent again after a lost answer), or one for a message already further on,
                // moved nothing: the app hears about each message once.
                Event::Delivered {
                    conversation,
                    mut ids,
                    by,
                } => {
                    let mut out = Vec::new();
                    ids.retain(|id| {
                        let key = MessageKey {
                            conversation,
                            sender: own,
                            id: *id,
                        };
                        match advanced.remove(&key) {
                            None => false,
                            Some(old) => {
                                // Reported before the relay's answer to its send was
                                // recorded (lost to a restart: the item goes again, and
                                // that answer will move nothing): the relay evidently
                                // stored it, so the app hears "sent" first, in order.
                                if matches!(old, MessageStatus::Queued | MessageStatus::Failed { .. }) {
                                    out.push(Event::MessageSent { id: *id, conversation });
                                }
                                true
                            }
                        }
                    });
                    if !ids.is_empty() {
                        out.push(Event::Delivered { conversation, ids, by });
                    }
                    out
                }
                // A read receipt reports the messages it moved to `Read`, once each.
                Event::Read {
                    conversation,
                    mut ids,
                    by,
                } => {
                    ids.retain(|id| {
                        advanced
                            .remove(&MessageKey {
                                conversation,
                                sender: own,
                                id: *id,
                            })
                            .is_some()
                    });
                    if ids.is_empty() {
                        Vec::new()
                    } else {
                        vec![Event::Read { conversation, ids, by }]
                    }
                }
                other => vec![other],
            })
            .collect();
        let changed: Vec<crate::group::GroupId> = events
            .iter()
            .filter_map(|e| match e {
                Event::GroupChanged { group } => Some(*group),
                _ => None,
            })
            .collect();
        self.emit(events).await;
        for group in changed {
            // Re-make a commit that lost a fork; re-key after a member left with the key.
            if let Ok(((), c)) = self
                .transact(|m| Ok((m.group_followups(group, crate::client::now_ms())?, ())))
                .await
                && !c.group_versions.is_empty()
            {
                self.wake.notify_one();
            }
        }
        if consumed > 0 && self.consumed.fetch_add(consumed, Ordering::SeqCst) + consumed >= REFILL_AFTER {
            self.consumed.store(0, Ordering::SeqCst);
            let _ = self.refill_prekeys().await;
        }
    }

    /// Retries the envelopes in the pending-inbound table whose time has come: the oldest
    /// of each sender first, a sender's later ones only after it. One whose sender's list
    /// still cannot be fetched waits longer (exponential backoff); one that waited
    /// [`PENDING_MAX_AGE`] gets its verdict as an event. Returns false when the store failed.
    pub(crate) async fn retry_pending(&self) -> bool {
        if self.machine.lock().await.pending_len() == 0 {
            return true;
        }
        let Ok(items) = self.store.pending_inbound().await else {
            return false;
        };
        let mut blocked = std::collections::BTreeSet::new();
        for p in items {
            if blocked.contains(&p.sender) {
                continue;
            }
            let due = {
                let backoff = self.pending_backoff.lock().unwrap_or_else(|e| e.into_inner());
                backoff.get(&p.digest).is_none_or(|(_, at)| *at <= Instant::now())
            };
            if !due {
                blocked.insert(p.sender);
                continue;
            }
            match self.retry_one(&p).await {
                Ok(true) => {
                    self.pending_backoff
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&p.digest);
                }
                Ok(false) => {
                    blocked.insert(p.sender);
                    let mut backoff = self.pending_backoff.lock().unwrap_or_else(|e| e.into_inner());
                    let attempts = backoff.get(&p.digest).map_or(0, |(n, _)| *n).saturating_add(1);
                    let delay = PENDING_RETRY_MIN
                        .saturating_mul(1 << attempts.min(16))
                        .min(PENDING_RETRY_MAX);
                    backoff.insert(p.digest, (attempts, Instant::now() + delay));
                }
                Err(_) => return false,
            }
        }
        true
    }

    /// One attempt at a pending envelope: true when it left the table.
    pub(super) async fn retry_one(&self, p: &crate::store::PendingInbound) -> Result<bool, ClientError> {
        let mut refreshed = false;
        let mut conflicts = 0;
        let mut accept_handled = false;
        loop {
            let mut m = self.machine.lock().await;
            match m.receive_pending(p, refreshed) {
                Inbound::Need(Need::DeviceList(a)) => {
                    drop(m);
                    match self.refresh_device_list(a).await {
                        Ok(()) => {}
                        Err(e) if is_final(&e) => {}
                        Err(_) if now_ms().saturating_sub(p.first_seen_ms) < PENDING_MAX_AGE.as_millis() as u64 => {
                            return Ok(false);
                        }
                        Err(_) => {
                            let mut m = self.machine.lock().await;
                            let (changes, event) = m.expire_pending(p);
                            self.commit_locked(&mut m, changes).await?;
                            drop(m);
                            self.emit(vec![event]).await;
                            return Ok(true);
                        }
                    }
                    refreshed = true;
                }
                Inbound::Need(Need::Bundles(..)) | Inbound::Defer { .. } => refreshed = true,
                Inbound::LinkAccept {
                    changes,
                    sender,
                    payload,
                } => {
                    if !accept_handled {
                        // Opened (account key, contacts) before the seq is committed, so a
                        // crash in between leaves the answer in the mailbox.
                        drop(m);
                        accept_handled = true;
                        let _ = self.handle_link_accept(sender, &payload).await;
                        continue;
                    }
                    match self.commit_locked(&mut m, changes).await {
                        Ok(_) => {}
                        Err(ClientError::Store(StoreError::Conflict)) if conflicts < MAX_CONFLICT_RETRIES => {
                            conflicts += 1;
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                    return Ok(true);
                }
                Inbound::LinkRequest {
                    changes,
                    sender,
                    payload,
                } => {
                    match self.commit_locked(&mut m, changes).await {
                        Ok(_) => {}
                        Err(ClientError::Store(StoreError::Conflict)) if conflicts < MAX_CONFLICT_RETRIES => {
                            conflicts += 1;
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                    drop(m);
                    let _ = self.handle_link_request(sender, &payload).await;
                    return Ok(true);
                }
                Inbound::Done { mut changes, events } => {
                    let consumed = changes.prekeys_removed.len() as u32;
                    let receipts = self.add_receipts(&mut m, &mut changes, &events);
                    match self.commit_locked(&mut m, changes).await {
                        Ok(c) => {
                            self.open_receipts(receipts);
                            drop(m);
                            self.after_inbound(c, events, consumed).await;
                            return Ok(true);
                        }
                        Err(ClientError::Store(StoreError::Conflict)) if conflicts < MAX_CONFLICT_RETRIES => {
                            conflicts += 1;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// Makes the open delivery receipts (still waiting for their random delay) due now.
    pub(super) async fn receipts_due_now(&self) {
        let mut m = self.machine.lock().await;
        let open = std::mem::take(&mut *self.receipts.lock().unwrap_or_else(|e| e.into_inner()));
        let changes = Changes {
            outbox_update: open
                .into_values()
                .map(|o| crate::store::OutboxItem {
                    not_before_ms: 0,
                    ..o.item
                })
                .collect(),
            ..Changes::default()
        };
        let _ = self.commit_locked(&mut m, changes).await;
    }

    /// A random delay before a batch of receipts goes out.
    pub(super) fn receipt_delay(&self) -> Duration {
        let mut rng = self.net_rng.lock().unwrap_or_else(|e| e.into_inner());
        uniform(&mut rng, &self.options.receipt_delay)
    }

    /// Syncs the store, so the deliveries committed deferred are durable, then acks them
    /// with one cumulative ack. False when either fails: the connection is dropped and the
    /// relay delivers them again.
    pub(super) async fn ack(&self, socket: &mut Socket, unacked: &mut Unacked) -> bool {
        let Some(seq) = unacked.seq.take() else {
            return true;
        };
        unacked.count = 0;
        // Under the machine lock, like every commit, so it never races one.
        let synced = {
            let mut m = self.machine.lock().await;
            self.sync_locked(&mut m).await.is_ok()
        };
        synced && socket.send(&Frame::Ack { seq }).await.is_ok()
    }
}

/// Whom a delivery receipt goes to: the sender's account, and the group for group
/// messages.
pub(crate) type ReceiptTo = (AccountId, Option<GroupId>);

/// A delivery receipt in the outbox, waiting for its random delay and not started yet:
/// texts from its recipient that arrive meanwhile join it.
#[derive(Clone)]
pub(crate) struct OpenReceipt {
    /// The item as stored.
    pub(crate) item: crate::store::OutboxItem,
}

/// The deliveries processed on a connection and not acked yet.
#[derive(Default)]
pub(super) struct Unacked {
    /// The highest seq processed.
    pub(super) seq: Option<u64>,
    pub(super) count: usize,
}
