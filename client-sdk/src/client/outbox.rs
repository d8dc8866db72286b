//! The outbox: preparing items per recipient device, the send window and lanes (one
//! recipient's trouble never holds up another's), send outcomes and retries.

use std::collections::VecDeque;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::RngCore;
use sotto_crypto::AccountId;
use sotto_proto::{Access, ErrorCode, Frame, Send, SendOutcome};

use super::error::{ClientError, is_relay_wide};
use super::{ClientOptions, Inner, now_ms};
use crate::machine::{GroupPlan, Need, RetryPolicy, SendPlan, record_failure};
use crate::rt::Instant;
use crate::store::{Committed, MessageKey, OutboxItem, Store, StoreError};
use crate::transport::{Socket, TransportError};

/// Attempts to send one outbox item before it is given up.
pub(super) const MAX_SEND_ATTEMPTS: u32 = 8;

/// Sends in flight on one connection (the relay pipelines up to 32).
pub(super) const SEND_WINDOW: usize = 16;

/// Outbox items read per look for sendable lanes.
pub(super) const OUTBOX_SCAN: u32 = 1024;

/// What preparing an outbox item for sending came to.
pub(super) enum Prepared {
    /// Encrypted (and committed): send these.
    Ready(Vec<sotto_proto::Recipient>),
    /// A group-channel item, sealed once (and committed): send `body` once to these
    /// devices, presenting `access`, on the anonymous connection.
    Group {
        body: Vec<u8>,
        recipients: Vec<sotto_proto::Recipient>,
        access: Vec<Access>,
    },
    /// A group item waits for its sender-key distribution (queued): try again shortly.
    Wait,
    /// The relay could not be reached: not the item's fault; try again later.
    Offline,
    /// The item failed this time (for example every device of the contact is out of
    /// prekeys): counts towards its bound, retried after a backoff.
    Failed { code: &'static str, reason: String },
    /// The item can never be sent.
    GiveUp { code: &'static str, reason: String },
}

/// A send lane: the recipient account, and whether the items are receipts. Order is kept
/// within a lane, never across lanes, so one recipient never holds up another; receipt
/// lanes come after message lanes.
pub(super) type Lane = (AccountId, bool);

pub(super) fn lane_of(item: &OutboxItem) -> Lane {
    let receipt = crate::content::Content::decode(&item.content)
        .is_ok_and(|c| matches!(c.kind, crate::content::ContentKind::Delivered { .. }));
    (item.to, receipt)
}

/// One outbox item being sent: the frame ids of its parts still waiting for an answer.
pub(super) struct InFlight {
    /// The part for other accounts, on the anonymous connection.
    pub(super) anon: Option<u64>,
    /// The sync transcripts, on the authenticated connection.
    pub(super) auth: Option<u64>,
    pub(super) item: OutboxItem,
    pub(super) lane: Lane,
}

/// The anonymous connection (sealed sender): its own frame ids, starting at a random
/// value, and a random lifetime after which it is replaced. It lives across
/// reconnects of the authenticated connection.
pub(super) struct Anon {
    pub(super) socket: Socket,
    pub(super) next_id: u64,
    pub(super) expires: Instant,
}

/// A uniform draw from `range` (its start when empty).
pub(super) fn uniform(rng: &mut ChaCha20Rng, range: &std::ops::Range<Duration>) -> Duration {
    let lo = range.start.as_millis() as u64;
    let hi = range.end.as_millis() as u64;
    if hi <= lo {
        return range.start;
    }
    Duration::from_millis(lo + rng.next_u64() % (hi - lo + 1))
}

/// A random first frame id: below 2^62, so counting up never wraps.
pub(super) fn first_frame_id(rng: &mut ChaCha20Rng) -> u64 {
    rng.next_u64() >> 2
}

/// Sends `Resume` on `socket` when a relay-wide refusal came on it since the last send
/// (`pending`), so the relay takes the sends after it. False when the socket failed.
async fn resume(socket: &mut Socket, pending: &mut bool) -> bool {
    if !*pending {
        return true;
    }
    if socket.send(&Frame::Resume).await.is_err() {
        return false;
    }
    *pending = false;
    true
}

/// The shortest pause after a relay-wide refusal.
const REFUSAL_PAUSE_MIN: Duration = Duration::from_millis(200);
/// The longest pause after relay-wide refusals in a row.
const REFUSAL_PAUSE_MAX: Duration = Duration::from_secs(30);

/// The pause after a relay-wide refusal that follows `before` pauses in a row: from
/// [`REFUSAL_PAUSE_MIN`] doubling up to [`REFUSAL_PAUSE_MAX`], and of that a random 100 to
/// 150 % drawn from `jitter`. Shorter at first than the reconnect backoff: a saturated
/// relay refuses for tens of milliseconds at a time, and clients that all stayed away
/// for half a second would leave it idle (docs/benchmarks.md, "Overload").
fn refusal_pause(before: u32, jitter: u64) -> Duration {
    let base = REFUSAL_PAUSE_MIN
        .saturating_mul(1u32 << before.min(16))
        .min(REFUSAL_PAUSE_MAX);
    let ms = base.as_millis() as u64;
    Duration::from_millis(ms + jitter % (ms / 2 + 1))
}

/// The sending state of one authenticated connection: up to [`SEND_WINDOW`] items in
/// flight over both connections. The relay stores and answers each connection's sends
/// in order.
pub(super) struct Sending {
    pub(super) in_flight: VecDeque<InFlight>,
    /// Lanes where an item failed while later ones were in flight: nothing new starts in
    /// them until those answered, so the failed item goes again first.
    pub(super) held: std::collections::HashSet<Lane>,
    /// The next frame id on the authenticated connection.
    pub(super) auth_next_id: u64,
    /// When the outbox is read again without a wake-up (the earliest backoff end).
    pub(super) retry_at: Option<Instant>,
    /// Something changed (an answer, a new item): read the outbox again.
    pub(super) dirty: bool,
    /// The relay could not be reached: nothing is prepared before this.
    pub(super) offline_until: Option<Instant>,
    /// Pauses for relay-wide refusals (`BUSY`, `RATE_LIMITED`, ...) since the last send
    /// stored: the next pause doubles with each.
    pub(super) refusals: u32,
    /// A relay-wide refusal came on the authenticated / the anonymous connection: the
    /// relay refuses every later send there until a `Resume`, which goes before the next
    /// send (docs/protocol.md §13.10, "Overload").
    pub(super) resume_auth: bool,
    pub(super) resume_anon: bool,
    /// When the authenticated connection came up (Unix ms); an item's failing time
    /// counts from here at the earliest.
    pub(super) online_since_ms: u64,
    /// No anonymous connection is opened before this (a random delay after AuthOk).
    pub(super) anon_not_before: Instant,
}

impl Sending {
    pub(super) fn new(rng: &mut ChaCha20Rng, options: &ClientOptions) -> Self {
        Self {
            in_flight: VecDeque::new(),
            held: Default::default(),
            auth_next_id: first_frame_id(rng),
            retry_at: None,
            dirty: true,
            offline_until: None,
            refusals: 0,
            resume_auth: false,
            resume_anon: false,
            online_since_ms: now_ms(),
            anon_not_before: Instant::now() + uniform(rng, &options.anonymous_open_delay),
        }
    }

    /// Wakes the sender at `t` at the latest.
    pub(super) fn retry_by(&mut self, t: Instant) {
        self.retry_at = Some(self.retry_at.map_or(t, |r| r.min(t)));
    }

    /// Releases held lanes with nothing in flight any more.
    pub(super) fn release(&mut self) {
        let in_flight = &self.in_flight;
        self.held.retain(|l| in_flight.iter().any(|f| f.lane == *l));
    }
}

impl<S: Store> Inner<S> {
    /// Sorts a failure while preparing a send: the relay out of reach is not the item's
    /// fault; a relay answer about the recipient is.
    pub(super) fn classify(e: ClientError) -> Prepared {
        match e {
            ClientError::Transport(TransportError::Relay { code, .. }) if !code.is_retryable() => Prepared::GiveUp {
                code: code.name(),
                reason: format!("the relay refused: {code:?}"),
            },
            ClientError::DeviceList(e) => Prepared::GiveUp {
                code: "DEVICE_LIST",
                reason: e.to_string(),
            },
            ClientError::Machine(e) => Prepared::GiveUp {
                code: "ENCRYPT",
                reason: e.to_string(),
            },
            // Unreachable relay, timeouts, busy or rate-limited relay, store conflicts.
            _ => Prepared::Offline,
        }
    }

    /// Encrypts an item for every reachable device. A listed device the relay holds no
    /// prekeys for is left out of this send (docs/protocol.md §13.7); when that is every
    /// device of the contact, the item failed this time. The ratchet step is committed
    /// deferred: [`Self::fill_from`] makes it durable, for all the items it prepared at
    /// once, before any of them leaves.
    pub(super) async fn prepare(&self, item: &OutboxItem) -> Prepared {
        if self.machine.lock().await.group_of_conversation(&item.to).is_some() {
            return self.prepare_group(item).await;
        }
        let mut skip: Vec<crate::store::PeerDevice> = Vec::new();
        for _ in 0..MAX_SEND_ATTEMPTS {
            let needs = {
                let mut m = self.machine.lock().await;
                // Every device the item is for (this device aside) unreachable: it failed
                // this time, and is tried again after a backoff.
                let me = (m.account_id(), m.device_id());
                if !skip.is_empty()
                    && m.device_list(&item.to).is_some_and(|l| {
                        let targets: Vec<_> = l
                            .devices()
                            .iter()
                            .map(|d| (item.to, d.device_id))
                            .filter(|d| *d != me)
                            .collect();
                        !targets.is_empty() && targets.iter().all(|d| skip.contains(d))
                    })
                {
                    return Prepared::Failed {
                        code: ErrorCode::NO_PREKEYS.name(),
                        reason: "no device of the contact can be reached (no prekeys)".into(),
                    };
                }
                match m.prepare_send(item, &skip, now_ms()) {
                    Ok(SendPlan::Ready { changes, recipients }) => {
                        match self.commit_locked_as(&mut m, changes, true).await {
                            Ok(_) => return Prepared::Ready(recipients),
                            Err(ClientError::Store(StoreError::Conflict)) => continue,
                            Err(_) => return Prepared::Offline,
                        }
                    }
                    Ok(SendPlan::Need(needs)) => needs,
                    Err(e) => return Self::classify(e.into()),
                }
            };
            for need in needs {
                let r = match need {
                    Need::DeviceList(a) => self.refresh_device_list(a).await,
                    Need::Bundles(a, d) => match self.fetch_bundles(a, d).await {
                        Ok(unreachable) => {
                            skip.extend(unreachable.into_iter().map(|d| (a, d)));
                            Ok(())
                        }
                        Err(e) => Err(e),
                    },
                };
                if let Err(e) = r {
                    return Self::classify(e);
                }
            }
        }
        Prepared::Failed {
            code: "BAD_BUNDLE",
            reason: "no session could be set up with every device".into(),
        }
    }

    /// Seals a group-channel item once for the group ([`crate::machine::GroupPlan`]),
    /// committed deferred like [`Self::prepare`].
    pub(super) async fn prepare_group(&self, item: &OutboxItem) -> Prepared {
        for _ in 0..MAX_SEND_ATTEMPTS {
            let needs = {
                let mut m = self.machine.lock().await;
                match m.prepare_group_send(item, now_ms()) {
                    Ok(GroupPlan::Ready {
                        changes,
                        body,
                        recipients,
                        access,
                    }) => match self.commit_locked_as(&mut m, changes, true).await {
                        Ok(_) => {
                            return Prepared::Group {
                                body,
                                recipients,
                                access,
                            };
                        }
                        Err(ClientError::Store(StoreError::Conflict)) => continue,
                        Err(_) => return Prepared::Offline,
                    },
                    Ok(GroupPlan::Wait { changes }) => {
                        return match self.commit_locked(&mut m, changes).await {
                            Ok(_) => Prepared::Wait,
                            Err(ClientError::Store(StoreError::Conflict)) => continue,
                            Err(_) => Prepared::Offline,
                        };
                    }
                    Ok(GroupPlan::Drop { reason }) => {
                        return Prepared::GiveUp {
                            code: "GROUP",
                            reason: reason.into(),
                        };
                    }
                    Ok(GroupPlan::Need(needs)) => needs,
                    Err(e) => return Self::classify(e.into()),
                }
            };
            for need in needs {
                let r = match need {
                    Need::DeviceList(a) => self.refresh_device_list(a).await,
                    Need::Bundles(..) => Ok(()),
                };
                if let Err(e) = r {
                    return Self::classify(e);
                }
            }
        }
        Prepared::Offline
    }

    /// Gives an item up: removed from the outbox, the message marked failed.
    pub(super) async fn give_up(&self, item: &OutboxItem, code: &'static str, retryable: bool, reason: String) {
        let ev = {
            let mut m = self.machine.lock().await;
            let (changes, ev) = m.give_up(item, code, retryable, reason);
            match self.commit_locked(&mut m, changes).await {
                Ok(c) => self.if_advanced(ev, &c),
                Err(_) => None,
            }
        };
        self.emit(ev.into_iter().collect()).await;
    }

    /// Marks an item sent (the relay stored every part): removed from the outbox, the
    /// message `Sent`. False when the store failed.
    pub(super) async fn sent(&self, item: &OutboxItem) -> bool {
        let ev = {
            let mut m = self.machine.lock().await;
            let (changes, ev) = m.mark_sent(item);
            // Deferred: made durable by the next durable commit or sync. A power loss
            // before that puts the item back in the outbox, and it goes again under a new
            // ratchet step (the one that encrypted it was durable before it left); its
            // receivers drop the copy by its id. One fsync fewer per message sent.
            match self.commit_locked_as(&mut m, changes, true).await {
                Ok(c) => self.if_advanced(ev, &c),
                Err(_) => return false,
            }
        };
        self.emit(ev.into_iter().collect()).await;
        true
    }

    /// A message's `MessageSent` or `SendFailed` when its status change took effect. A
    /// receipt that arrived first (the relay's answer was lost to a restart, and the item
    /// went again) already made it `Delivered`: a later "sent" or "failed" would show it
    /// going back.
    pub(super) fn if_advanced(
        &self,
        ev: Option<crate::machine::Event>,
        c: &Committed,
    ) -> Option<crate::machine::Event> {
        use crate::machine::Event;
        let key = |conversation, id| MessageKey {
            conversation,
            sender: self.device.account_id(),
            id,
        };
        ev.filter(|e| match e {
            Event::MessageSent { id, conversation } | Event::SendFailed { id, conversation, .. } => {
                c.advanced.iter().any(|(k, _)| *k == key(*conversation, *id))
            }
            _ => true,
        })
    }

    /// Records a failed attempt the item is to blame for: it waits for its backoff, or
    /// is given up (`Failed { retryable: true }`) once it failed for
    /// [`ClientOptions::send_give_up_after`]. `at_once` retries without a backoff (the
    /// first answers about a changed device set, now fixed).
    pub(super) async fn failed_attempt(
        &self,
        tx: &mut Sending,
        item: &OutboxItem,
        code: &'static str,
        reason: String,
        at_once: bool,
    ) {
        let policy = RetryPolicy {
            give_up_after_ms: self.options.send_give_up_after.as_millis() as u64,
            backoff_min_ms: self.options.send_backoff_min.as_millis() as u64,
            backoff_max_ms: self.options.send_backoff_max.as_millis() as u64,
        };
        let jitter = self.net_rng.lock().unwrap_or_else(|e| e.into_inner()).next_u64();
        let now = now_ms();
        match record_failure(item, now, tx.online_since_ms, &policy, jitter) {
            None => self.give_up(item, code, true, reason).await,
            Some(mut next) => {
                if at_once {
                    next.not_before_ms = now;
                }
                let wait = Duration::from_millis(next.not_before_ms.saturating_sub(now));
                let _ = self.transact(|m| Ok((m.retry_later(next.clone()), ()))).await;
                tx.retry_by(Instant::now() + wait);
            }
        }
    }

    /// Handles the answer to one part of a send. Returns false when the store failed
    /// (the connection is then restarted).
    pub(super) async fn handle_result(&self, tx: &mut Sending, r: sotto_proto::SendResult, anonymous: bool) -> bool {
        let Some(i) = tx.in_flight.iter().position(|f| {
            if anonymous {
                f.anon == Some(r.message_id)
            } else {
                f.auth == Some(r.message_id)
            }
        }) else {
            return true;
        };
        tx.dirty = true;
        let ok = match r.outcome {
            SendOutcome::Stored { .. } => {
                tx.refusals = 0;
                let Some(f) = tx.in_flight.get_mut(i) else { return true };
                if anonymous {
                    f.anon = None;
                } else {
                    f.auth = None;
                }
                if f.anon.is_some() || f.auth.is_some() {
                    return true;
                }
                let Some(f) = tx.in_flight.remove(i) else { return true };
                self.sent(&f.item).await
            }
            SendOutcome::DeviceMismatch { device_lists } => {
                let Some(f) = tx.in_flight.remove(i) else { return true };
                self.hold(tx, &f);
                match self.handle_mismatch(&f.item, &device_lists).await {
                    Err(ClientError::DeviceList(e)) => {
                        self.give_up(&f.item, "DEVICE_LIST", false, e.to_string()).await;
                    }
                    _ => {
                        // The fixed set usually goes through at once; a set that keeps
                        // changing backs off like any failure.
                        let at_once = f.item.attempts < 3;
                        let reason = "the device set kept changing".to_owned();
                        self.failed_attempt(tx, &f.item, "DEVICE_SET_CHANGING", reason, at_once)
                            .await;
                    }
                }
                true
            }
            SendOutcome::Rejected { code } if is_relay_wide(code) => {
                // The relay is busy or limits this device: not the item's fault. Every
                // send pauses, longer after each refusal in a row, by a random part so
                // that clients refused together do not all come back together. The
                // sends that were on their way are refused too (the relay's barrier):
                // they belong to the same pause.
                let Some(f) = tx.in_flight.remove(i) else { return true };
                self.hold(tx, &f);
                if anonymous {
                    tx.resume_anon = true;
                } else {
                    tx.resume_auth = true;
                }
                let now = Instant::now();
                if tx.offline_until.is_none_or(|t| t <= now) {
                    let jitter = self.net_rng.lock().unwrap_or_else(|e| e.into_inner()).next_u64();
                    let pause = refusal_pause(tx.refusals, jitter);
                    tx.refusals = tx.refusals.saturating_add(1);
                    tx.offline_until = Some(now + pause);
                    tx.retry_by(now + pause);
                }
                true
            }
            SendOutcome::Rejected { code } if code.is_retryable() => {
                // About the recipient (a full mailbox): counts towards the item's bound.
                let Some(f) = tx.in_flight.remove(i) else { return true };
                self.hold(tx, &f);
                let reason = format!("the relay refused: {code:?}");
                self.failed_attempt(tx, &f.item, code.name(), reason, false).await;
                true
            }
            SendOutcome::Rejected { code } => {
                let Some(f) = tx.in_flight.remove(i) else { return true };
                self.hold(tx, &f);
                self.give_up(&f.item, code.name(), false, format!("the relay refused: {code:?}"))
                    .await;
                true
            }
            _ => true,
        };
        tx.release();
        ok
    }

    /// After a failure of `f`, holds its lane while later items of it are in flight.
    pub(super) fn hold(&self, tx: &mut Sending, f: &InFlight) {
        if tx.in_flight.iter().any(|g| g.lane == f.lane) {
            tx.held.insert(f.lane);
        }
    }

    /// Starts sending outbox items while the window has room, lane by lane (message
    /// lanes before receipt lanes): an item waiting for its backoff holds up only the
    /// items behind it to the same recipient. Envelopes for other accounts go over the
    /// anonymous connection (sealed sender, docs/protocol.md §13.8); sync transcripts
    /// for this account's other devices over the authenticated one. Returns false when
    /// the authenticated socket failed.
    pub(super) async fn fill_window(&self, tx: &mut Sending, socket: &mut Socket, anon: &mut Option<Anon>) -> bool {
        let now = Instant::now();
        if tx.retry_at.is_some_and(|t| t <= now) {
            tx.retry_at = None;
            tx.dirty = true;
        }
        if !tx.dirty || tx.in_flight.len() >= SEND_WINDOW {
            return true;
        }
        if let Some(t) = tx.offline_until {
            if t > now {
                tx.retry_by(t);
                return true;
            }
            tx.offline_until = None;
        }
        // An anonymous connection past its lifetime is replaced once its answers are in.
        if anon.as_ref().is_some_and(|a| a.expires <= now) {
            if tx.in_flight.iter().any(|f| f.anon.is_some()) {
                return true;
            }
            if let Some(mut a) = anon.take() {
                a.socket.close().await;
            }
        }
        tx.dirty = false;
        // The outbox is read from its start, further only while the lanes read so far
        // are held up (the common case reads a window's worth).
        let mut limit = (tx.in_flight.len() + SEND_WINDOW) as u32;
        let mut closed = tx.held.clone();
        loop {
            let Ok(items) = self.store.outbox(limit).await else {
                tx.retry_by(now + self.options.backoff_min);
                return true;
            };
            let more = items.len() as u32 == limit && limit < OUTBOX_SCAN;
            if !self.fill_from(tx, socket, anon, &items, &mut closed).await {
                return false;
            }
            if !more || tx.in_flight.len() >= SEND_WINDOW || tx.offline_until.is_some() {
                return true;
            }
            limit = limit.saturating_mul(4).min(OUTBOX_SCAN);
        }
    }

    /// [`Self::fill_window`] over the items read: starts those whose lane is open.
    pub(super) async fn fill_from(
        &self,
        tx: &mut Sending,
        socket: &mut Socket,
        anon: &mut Option<Anon>,
        items: &[OutboxItem],
        closed: &mut std::collections::HashSet<Lane>,
    ) -> bool {
        let now = Instant::now();
        let now_ms = now_ms();
        // Nothing to start yet (only receipts waiting for their delay, or items backing
        // off): no anonymous connection is opened for them before they are due.
        let waiting = items.iter().filter(|i| !tx.in_flight.iter().any(|f| f.item.id == i.id));
        match waiting.map(|i| i.not_before_ms).min() {
            None => return true,
            Some(t) if t > now_ms => {
                tx.retry_by(now + Duration::from_millis(t - now_ms));
                return true;
            }
            Some(_) => {}
        }
        if anon.is_none() {
            // Not right after authenticating (docs/protocol.md §13.8).
            if tx.anon_not_before > now {
                tx.retry_by(tx.anon_not_before);
                return true;
            }
            match self.relay.connect_anonymous().await {
                Ok(socket) => {
                    let mut rng = self.net_rng.lock().unwrap_or_else(|e| e.into_inner());
                    tx.resume_anon = false;
                    *anon = Some(Anon {
                        socket,
                        next_id: first_frame_id(&mut rng),
                        expires: Instant::now() + uniform(&mut rng, &self.options.anonymous_lifetime),
                    });
                }
                Err(_) => {
                    let t = Instant::now() + self.options.backoff_min.max(Duration::from_secs(1));
                    tx.offline_until = Some(t);
                    tx.retry_by(t);
                    return true;
                }
            }
        }
        let own = self.device.account_id();
        let lanes: Vec<Lane> = items.iter().map(lane_of).collect();
        // First every startable item is prepared (its ratchet step committed deferred),
        // then one sync makes them all durable, then they go: one fsync for the batch
        // instead of one per item. Nothing leaves before the state that encrypted it is
        // durable, so a crash never reuses a message key.
        let losses = self.losses.load(std::sync::atomic::Ordering::SeqCst);
        let mut ready: Vec<(&OutboxItem, Lane, Prepared)> = Vec::new();
        let mut offline = false;
        // Messages first, then receipts.
        'prepare: for receipts in [false, true] {
            for (item, lane) in items.iter().zip(&lanes) {
                if lane.1 != receipts || closed.contains(lane) {
                    continue;
                }
                if tx.in_flight.iter().any(|f| f.item.id == item.id) {
                    continue;
                }
                if tx.in_flight.len() + ready.len() >= SEND_WINDOW {
                    break 'prepare;
                }
                if item.not_before_ms > now_ms {
                    closed.insert(*lane);
                    tx.retry_by(now + Duration::from_millis(item.not_before_ms - now_ms));
                    continue;
                }
                if lane.1 {
                    self.close_receipt(item);
                }
                match self.prepare(item).await {
                    p @ (Prepared::Ready(_) | Prepared::Group { .. }) => ready.push((item, *lane, p)),
                    Prepared::Wait => {
                        // Its distributions were queued: they go first, then this again.
                        // Waiting counts as an attempt (at once for the first few), so a
                        // member that can never be reached does not hold the group's lane
                        // for ever: the item backs off and is given up in the end.
                        closed.insert(*lane);
                        let at_once = item.attempts < 50;
                        let reason = "waiting for sender-key distributions".to_owned();
                        self.failed_attempt(tx, item, "DISTRIBUTION_PENDING", reason, at_once)
                            .await;
                        tx.retry_by(Instant::now() + Duration::from_millis(100));
                        tx.dirty = true;
                    }
                    Prepared::Offline => {
                        offline = true;
                        break 'prepare;
                    }
                    Prepared::Failed { code, reason } => {
                        closed.insert(*lane);
                        self.failed_attempt(tx, item, code, reason, false).await;
                    }
                    Prepared::GiveUp { code, reason } => {
                        self.give_up(item, code, false, reason).await;
                    }
                }
            }
        }
        if !ready.is_empty() && !self.durable_since(losses).await {
            // The prepared steps may be lost: the items stay in the outbox and are
            // encrypted again from the reloaded state.
            offline = true;
            ready.clear();
        }
        if offline {
            let t = Instant::now() + self.options.backoff_min.max(Duration::from_secs(1));
            tx.offline_until = Some(t);
            tx.retry_by(t);
            tx.dirty = true;
        }
        for (item, lane, prepared) in ready {
            let recipients = match prepared {
                Prepared::Ready(r) => r,
                Prepared::Group {
                    body,
                    recipients,
                    access,
                } => {
                    let Some(a) = anon.as_mut() else { return true };
                    let id = a.next_id;
                    a.next_id = a.next_id.wrapping_add(1);
                    let frame = Frame::Send(Send {
                        message_id: id,
                        access,
                        body,
                        recipients,
                    });
                    if !resume(&mut a.socket, &mut tx.resume_anon).await || a.socket.send(&frame).await.is_err() {
                        self.anon_failed(tx, anon);
                        return true;
                    }
                    tx.in_flight.push_back(InFlight {
                        auth: None,
                        anon: Some(id),
                        item: item.clone(),
                        lane,
                    });
                    continue;
                }
                _ => continue,
            };
            let (mine, theirs): (Vec<_>, Vec<_>) = recipients.into_iter().partition(|r| r.account_id == own);
            let mut f = InFlight {
                auth: None,
                anon: None,
                item: item.clone(),
                lane,
            };
            if !theirs.is_empty() {
                // The contact's access key, when they shared it; without it the
                // send is a message request (docs/protocol.md §13.8).
                let access: Vec<Access> = self
                    .machine
                    .lock()
                    .await
                    .access_key_for(&item.to)
                    .map(|key| Access {
                        account_id: item.to,
                        key,
                    })
                    .into_iter()
                    .collect();
                let sent = match anon.as_mut() {
                    Some(a) => {
                        let id = a.next_id;
                        a.next_id = a.next_id.wrapping_add(1);
                        f.anon = Some(id);
                        resume(&mut a.socket, &mut tx.resume_anon).await
                            && a.socket
                                .send(&Frame::Send(Send {
                                    message_id: id,
                                    access,
                                    body: Vec::new(),
                                    recipients: theirs,
                                }))
                                .await
                                .is_ok()
                    }
                    None => false,
                };
                if !sent {
                    // The item stays in the outbox and is encrypted again next time.
                    self.anon_failed(tx, anon);
                    return true;
                }
            }
            if !mine.is_empty() {
                let id = tx.auth_next_id;
                tx.auth_next_id = tx.auth_next_id.wrapping_add(1);
                let frame = Frame::Send(Send {
                    message_id: id,
                    access: Vec::new(),
                    body: Vec::new(),
                    recipients: mine,
                });
                if !resume(socket, &mut tx.resume_auth).await || socket.send(&frame).await.is_err() {
                    return false;
                }
                f.auth = Some(id);
            }
            if f.anon.is_none() && f.auth.is_none() {
                // No device to send to (for example group content to this account,
                // which has no other device): done, as if the relay stored it.
                if !self.sent(&f.item).await {
                    return false;
                }
                continue;
            }
            tx.in_flight.push_back(f);
        }
        true
    }

    /// Makes the deferred commits durable. False when the sync failed, or when a store
    /// failure since [`Inner::losses`] read `losses` may have undone them (the machine
    /// was reloaded then): what was prepared from them must not be sent.
    async fn durable_since(&self, losses: u64) -> bool {
        let mut m = self.machine.lock().await;
        self.sync_locked(&mut m).await.is_ok() && self.losses.load(std::sync::atomic::Ordering::SeqCst) == losses
    }

    /// The anonymous connection failed while sending: it is dropped with what was in
    /// flight on it (those items go again), and sending backs off.
    fn anon_failed(&self, tx: &mut Sending, anon: &mut Option<Anon>) {
        *anon = None;
        tx.in_flight.retain(|f| f.anon.is_none());
        tx.release();
        let t = Instant::now() + self.options.backoff_min;
        tx.offline_until = Some(t);
        tx.retry_by(t);
        tx.dirty = true;
    }
}

#[cfg(all(test, feature = "native"))]
mod tests {
    use super::*;
    use crate::client::{Client, ClientOptions, Entropy, pickle_key};
    use crate::machine::{Event, Machine};
    use crate::store::{Changes, MemoryStore, MessageStatus, OutboxStore, Page, StoreKey};

    /// A client on a fresh account in a memory store, never connecting.
    async fn offline_client() -> Client<MemoryStore> {
        let key = StoreKey::new([4; 32]);
        let store = MemoryStore::new();
        let mut rng = Entropy::dangerous_seeded(1).rng().unwrap();
        let new = Machine::new_account("http://127.0.0.1:1", 1, &mut rng, &pickle_key(&key)).unwrap();
        store.commit(new.changes).await.unwrap();
        let options = ClientOptions {
            connect: false,
            dangerous_entropy: Some(Entropy::dangerous_seeded(2)),
            ..ClientOptions::default()
        };
        Client::open(store, key, options).await.unwrap()
    }

    /// The sender was killed after the relay stored a text but before it recorded the
    /// answer; after the restart the contact's receipt arrives first (the text goes
    /// again a few seconds later). The late "stored" answer must not show the text
    /// going back from `Delivered` to `Sent`.
    #[tokio::test]
    async fn a_send_answered_after_its_receipt_stays_delivered_and_says_nothing() {
        let client = offline_client().await;
        let mut events = client.events().unwrap();
        let contact = AccountId([7; 32]);
        let message = client.send_text(&contact, "echo").await.unwrap();
        let key = message.key();
        // The receipt.
        let ((), c) = client
            .inner
            .transact(|_| {
                Ok((
                    Changes {
                        message_updates: vec![(key, crate::store::MessageUpdate::Status(MessageStatus::Delivered))],
                        ..Changes::default()
                    },
                    (),
                ))
            })
            .await
            .unwrap();
        assert_eq!(c.advanced, vec![(key, MessageStatus::Queued)]);
        let by = (contact, sotto_crypto::DeviceId(1));
        let receipt = || {
            vec![Event::Delivered {
                conversation: contact,
                ids: vec![message.id],
                by,
            }]
        };
        client.inner.after_inbound(c, receipt(), 0).await;
        // The relay evidently stored it: "sent", then "delivered", once each.
        let sent = Event::MessageSent {
            id: message.id,
            conversation: contact,
        };
        assert_eq!(events.next().await.unwrap(), sent);
        assert_eq!(events.next().await.unwrap(), receipt().remove(0));
        // The same receipt again (another device of the contact, or sent twice): nothing.
        let ((), c) = client
            .inner
            .transact(|_| {
                Ok((
                    Changes {
                        message_updates: vec![(key, crate::store::MessageUpdate::Status(MessageStatus::Delivered))],
                        ..Changes::default()
                    },
                    (),
                ))
            })
            .await
            .unwrap();
        assert!(c.advanced.is_empty());
        client.inner.after_inbound(c, receipt(), 0).await;
        // The answer to the second send.
        let item = client.store().outbox(1).await.unwrap().remove(0);
        assert!(client.inner.sent(&item).await);
        assert_eq!(client.outbox_len().await.unwrap(), 0);
        let stored = client.messages(&contact, Page::default()).await.unwrap();
        assert_eq!(stored[0].status, MessageStatus::Delivered);
        // A marker event: everything emitted before it is in the stream.
        client.inner.emit(vec![Event::CaughtUp]).await;
        let e = events.next().await.unwrap();
        assert_eq!(
            e,
            Event::CaughtUp,
            "a second Delivered, or MessageSent after Delivered: {e:?}"
        );
        // A give-up after the receipt (its other part kept failing) says nothing either.
        client.inner.give_up(&item, "MAILBOX_FULL", true, String::new()).await;
        client.inner.emit(vec![Event::CaughtUp]).await;
        assert_eq!(events.next().await.unwrap(), Event::CaughtUp);
        // Without a receipt, the answer is reported once.
        let second = client.send_text(&contact, "two").await.unwrap();
        let item = client.store().outbox(1).await.unwrap().remove(0);
        assert_eq!(item.id, second.id);
        assert!(client.inner.sent(&item).await);
        assert!(client.inner.sent(&item).await);
        client.inner.emit(vec![Event::CaughtUp]).await;
        assert!(matches!(events.next().await.unwrap(), Event::MessageSent { id, .. } if id == second.id));
        assert_eq!(events.next().await.unwrap(), Event::CaughtUp);
    }
}

#[cfg(test)]
mod refusal_tests {
    use super::*;

    #[test]
    fn refusal_pauses_double_with_jitter_within_bounds() {
        let ms = |d: Duration| d.as_millis() as u64;
        // 200 ms doubling, plus up to half of it at random.
        assert_eq!(ms(refusal_pause(0, 0)), 200);
        assert_eq!(ms(refusal_pause(1, 0)), 400);
        assert_eq!(ms(refusal_pause(2, 0)), 800);
        assert_eq!(ms(refusal_pause(0, 100)), 300);
        // Never over 30 s (plus half), whatever the streak.
        for before in [8, 9, 16, 40, u32::MAX] {
            assert_eq!(ms(refusal_pause(before, 0)), 30_000);
        }
        for jitter in [0, 1, 7, 12_345, u64::MAX] {
            let p = ms(refusal_pause(3, jitter));
            assert!((1600..=2400).contains(&p), "{p}");
        }
        assert_eq!(ms(refusal_pause(3, 800)), 2400);
    }
}
