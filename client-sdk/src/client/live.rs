//! Live lists: the conversation list and each conversation's timeline as subscriptions.
//!
//! A subscription's first callback is a [`ListDiff::Reset`] with the current list; every
//! later one is a batch of diffs that, applied in order to the list the app holds, gives
//! the list a fresh query would return. After every store commit the client marks the
//! subscriptions whose conversations it touched; each subscription's own task then
//! queries the store, compares with what it last reported and calls its listener. Bursts
//! coalesce into one batch, nothing queues without bound, and no SDK lock is held while a
//! listener runs (a listener may call back into the client).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex as StdMutex};

use sotto_crypto::AccountId;
use tokio::sync::{Notify, watch};

use super::{Client, Inner, now_ms};
use crate::machine::Conversation;
use crate::rt;
use crate::store::{Changes, MessageKind, MessageStatus, Page, Store, StoredMessage};

/// How long a contact shows as typing after their last `typing` frame.
pub const TYPING_TIMEOUT_MS: u64 = 5_000;
/// The most items a timeline subscription holds (its window grows by paginating back).
pub const MAX_TIMELINE_WINDOW: u32 = 10_000;
/// The most received messages counted as unread per conversation (the list shows
/// "999+" beyond).
pub const MAX_UNREAD_COUNT: u32 = 999;

/// One change to a live list.
#[derive(Clone, Debug, PartialEq)]
pub enum ListDiff<T> {
    /// The whole list (always the first callback).
    Reset {
        /// The items.
        items: Vec<T>,
    },
    /// A new item at `index` (later items move down by one).
    Insert {
        /// Where.
        index: usize,
        /// The item.
        item: T,
    },
    /// The item at `index` changed.
    Update {
        /// Where.
        index: usize,
        /// Its new value.
        item: T,
    },
    /// The item at `index` left the list (later items move up by one).
    Remove {
        /// Where.
        index: usize,
    },
}

/// Applies `diffs` to `list`, in order (what an app does with each callback). Indices
/// out of range are ignored.
pub fn apply_diffs<T: Clone>(list: &mut Vec<T>, diffs: &[ListDiff<T>]) {
    for d in diffs {
        match d {
            ListDiff::Reset { items } => list.clone_from(items),
            ListDiff::Insert { index, item } if *index <= list.len() => list.insert(*index, item.clone()),
            ListDiff::Update { index, item } if *index < list.len() => list[*index] = item.clone(),
            ListDiff::Remove { index } if *index < list.len() => {
                list.remove(*index);
            }
            _ => {}
        }
    }
}

/// The diffs that turn `old` into `new`, items matched by `key`: removals of what left,
/// then, position by position, an update, an insert, or a move (a remove and an insert).
pub(crate) fn diff<T: Clone + PartialEq, K: Eq + std::hash::Hash>(
    old: &[T],
    new: &[T],
    key: impl Fn(&T) -> K,
) -> Vec<ListDiff<T>> {
    let mut out = Vec::new();
    let wanted: std::collections::HashSet<K> = new.iter().map(&key).collect();
    let mut cur: Vec<T> = Vec::with_capacity(old.len());
    for (i, item) in old.iter().enumerate().rev() {
        if !wanted.contains(&key(item)) {
            out.push(ListDiff::Remove { index: i });
        }
    }
    cur.extend(old.iter().filter(|item| wanted.contains(&key(item))).cloned());
    for (i, item) in new.iter().enumerate() {
        let k = key(item);
        if cur.get(i).is_some_and(|c| key(c) == k) {
            if cur[i] != *item {
                cur[i] = item.clone();
                out.push(ListDiff::Update {
                    index: i,
                    item: item.clone(),
                });
            }
            continue;
        }
        if let Some(j) = cur.iter().skip(i + 1).position(|c| key(c) == k).map(|p| p + i + 1) {
            cur.remove(j);
            out.push(ListDiff::Remove { index: j });
        }
        cur.insert(i, item.clone());
        out.push(ListDiff::Insert {
            index: i,
            item: item.clone(),
        });
    }
    while cur.len() > new.len() {
        cur.pop();
        out.push(ListDiff::Remove { index: cur.len() });
    }
    out
}

/// Where a message this account wrote is in its life, as the app shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendState {
    /// In the send queue.
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
    /// Given up: `retryable` when [`Client::retry`] may work.
    Failed {
        /// A stable code for why.
        error: String,
        /// True when sending it again later may work.
        retryable: bool,
    },
}

impl SendState {
    /// The state of a stored message; `None` for one this account received.
    pub fn of_message(m: &StoredMessage) -> Option<Self> {
        match (Self::of(m.status), &m.failure) {
            (Some(Self::Failed { retryable, .. }), Some(code)) => Some(Self::Failed {
                error: code.clone(),
                retryable,
            }),
            (state, _) => state,
        }
    }

    /// The state a status stands for; `None` for a message this account received.
    pub fn of(status: MessageStatus) -> Option<Self> {
        Some(match status {
            MessageStatus::Received => return None,
            MessageStatus::Queued => Self::Queued,
            MessageStatus::Sent => Self::Sent,
            MessageStatus::Delivered => Self::Delivered,
            MessageStatus::Read => Self::Read,
            MessageStatus::SentElsewhere => Self::SentElsewhere,
            MessageStatus::Failed { retryable } => Self::Failed {
                error: if retryable {
                    "send_failed_retryable"
                } else {
                    "send_failed"
                }
                .into(),
                retryable,
            },
        })
    }
}

/// One item of a timeline: a stored message with its edits, deletion, reactions and
/// receipts folded in.
#[derive(Clone, Debug, PartialEq)]
pub struct TimelineItem {
    /// The message.
    pub message: StoredMessage,
    /// For a message this account wrote, where its send is.
    pub send_state: Option<SendState>,
}

/// One conversation as the conversation list shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ConversationSummary {
    /// The conversation.
    pub conversation: Conversation,
    /// What to call it: the nickname, else the contact's profile name, else the group's
    /// title; empty when none is known (show the contact link or a short id).
    pub name: String,
    /// The newest message.
    pub last_message: Option<StoredMessage>,
    /// Messages from others stored after the read marker (at most
    /// [`MAX_UNREAD_COUNT`]).
    pub unread: u32,
    /// Who is typing.
    pub typing: Vec<AccountId>,
    /// A message request: an account this one has not accepted wrote first.
    pub is_request: bool,
    /// The contact is blocked.
    pub blocked: bool,
    /// The disappearing-message timer, seconds (0: off).
    pub expire_s: u32,
    /// The contact's safety number changed and was not acknowledged.
    pub identity_unacked: bool,
    /// The contact's presence, when they share it with this account (1:1 only).
    pub presence: Option<Presence>,
    /// The contact's avatar, as their profile has it (1:1 only).
    pub avatar: Option<Vec<u8>>,
}

/// A live list's callback: a batch of diffs, in order.
#[cfg(feature = "native")]
pub type Listener<T> = Box<dyn Fn(Vec<ListDiff<T>>) + Send + Sync + 'static>;
/// A live list's callback: a batch of diffs, in order.
#[cfg(not(feature = "native"))]
pub type Listener<T> = Box<dyn Fn(Vec<ListDiff<T>>) + 'static>;

/// A running subscription: dropping it, or [`Subscription::cancel`], stops its callbacks.
#[derive(Debug)]
pub struct Subscription {
    stop: watch::Sender<bool>,
}

impl Subscription {
    /// Stops the callbacks (no call starts after this returns; one running finishes).
    pub fn cancel(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// What a subscription watches.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Watch {
    List,
    Timeline(AccountId),
}

/// One subscription's interest, wake-up and liveness.
type Watcher = (Watch, Arc<Notify>, std::sync::Weak<()>);

/// The subscriptions' wake-ups, who is typing where, and who was seen online when.
#[derive(Default)]
pub(crate) struct LiveHub {
    watchers: StdMutex<Vec<Watcher>>,
    /// Conversation key → (typing account, until Unix ms).
    typing: StdMutex<HashMap<AccountId, Vec<(AccountId, u64)>>>,
    /// Contact → (last presence frame, Unix ms; online until, Unix ms).
    presence: StdMutex<HashMap<AccountId, (u64, u64)>>,
    /// Conversation key → (the read marker it was computed for, last message, unread):
    /// the conversation list recomputes only what a commit touched.
    summaries: StdMutex<HashMap<AccountId, CachedSummary>>,
    /// Bumped by every commit that touches messages: a summary computed across a bump is
    /// not cached.
    generation: std::sync::atomic::AtomicU64,
}

/// A conversation's last message and unread count, for the read marker it was computed for.
type CachedSummary = (u64, Option<StoredMessage>, u32);

/// A contact's presence, as the conversation list shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Presence {
    /// Online now.
    Online,
    /// Not seen for the grace period; last seen then (Unix ms).
    LastSeen {
        /// When.
        at_ms: u64,
    },
}

impl LiveHub {
    fn watch(&self, what: Watch) -> (Arc<Notify>, Arc<()>) {
        let notify = Arc::new(Notify::new());
        let alive = Arc::new(());
        let mut w = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        w.retain(|(_, _, a)| a.strong_count() > 0);
        w.push((what, notify.clone(), Arc::downgrade(&alive)));
        (notify, alive)
    }

    /// Wakes the subscriptions a commit of `changes` may have changed.
    pub(crate) fn touch(&self, changes: &Changes) {
        let mut convs: BTreeSet<AccountId> = changes.messages.iter().map(|m| m.conversation).collect();
        convs.extend(changes.message_updates.iter().map(|(k, _)| k.conversation));
        convs.extend(changes.messages_removed.iter().map(|k| k.conversation));
        let list = !convs.is_empty()
            || !changes.conversations.is_empty()
            || !changes.conversations_removed.is_empty()
            || !changes.groups.is_empty();
        if !convs.is_empty() || !changes.conversations_removed.is_empty() {
            self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut cache = self.summaries.lock().unwrap_or_else(|e| e.into_inner());
            for c in convs.iter().chain(&changes.conversations_removed) {
                cache.remove(c);
            }
        }
        self.wake(list, &convs);
    }

    pub(crate) fn wake(&self, list: bool, convs: &BTreeSet<AccountId>) {
        let w = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        for (what, notify, alive) in w.iter() {
            if alive.strong_count() == 0 {
                continue;
            }
            let hit = match what {
                Watch::List => list,
                Watch::Timeline(c) => convs.contains(c),
            };
            if hit {
                notify.notify_one();
            }
        }
    }

    /// `by` started (`until` in the future) or stopped typing in `conversation`.
    pub(crate) fn set_typing(&self, conversation: AccountId, by: AccountId, until_ms: Option<u64>) {
        {
            let mut t = self.typing.lock().unwrap_or_else(|e| e.into_inner());
            let entry = t.entry(conversation).or_default();
            entry.retain(|(a, _)| *a != by);
            if let Some(u) = until_ms
                && entry.len() < crate::group::MAX_MEMBERS
            {
                entry.push((by, u));
            }
            if entry.is_empty() {
                t.remove(&conversation);
            }
        }
        self.wake(true, &BTreeSet::from([conversation]));
    }

    /// `by` sent presence at `now_ms`: online for `grace_ms` more. True when it was not
    /// online before (a transition worth an event).
    pub(crate) fn seen_online(&self, by: AccountId, now_ms: u64, grace_ms: u64) -> bool {
        let was_online = {
            let mut p = self.presence.lock().unwrap_or_else(|e| e.into_inner());
            let was = p.get(&by).is_some_and(|(_, until)| *until > now_ms);
            if p.len() >= crate::machine::MAX_PRESENCE_CONTACTS * 4 && !p.contains_key(&by) {
                // Bounded: forget the longest-silent contact.
                if let Some(oldest) = p.iter().min_by_key(|(_, (at, _))| *at).map(|(a, _)| *a) {
                    p.remove(&oldest);
                }
            }
            p.insert(by, (now_ms, now_ms.saturating_add(grace_ms)));
            was
        };
        if !was_online {
            self.wake(true, &BTreeSet::new());
        }
        !was_online
    }

    /// A contact's presence at `now_ms`, and when it changes next.
    fn presence_of(&self, account: &AccountId, now_ms: u64) -> (Option<Presence>, Option<u64>) {
        let p = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        match p.get(account) {
            Some((_, until)) if *until > now_ms => (Some(Presence::Online), Some(*until)),
            Some((at, _)) => (Some(Presence::LastSeen { at_ms: *at }), None),
            None => (None, None),
        }
    }

    /// Who types in `conversation` at `now_ms`, and the earliest time that changes.
    fn typing_in(&self, conversation: &AccountId, now_ms: u64) -> (Vec<AccountId>, Option<u64>) {
        let t = self.typing.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = t.get(conversation) else {
            return (Vec::new(), None);
        };
        let live: Vec<&(AccountId, u64)> = entry.iter().filter(|(_, u)| *u > now_ms).collect();
        (
            live.iter().map(|(a, _)| *a).collect(),
            live.iter().map(|(_, u)| *u).min(),
        )
    }
}

impl<S: Store> Inner<S> {
    /// The conversation list now, newest activity first.
    pub(crate) async fn conversation_list(
        &self,
    ) -> Result<(Vec<ConversationSummary>, Option<u64>), super::ClientError> {
        let own = self.device.account_id();
        let (rows, groups) = {
            let m = self.machine.lock().await;
            let rows: Vec<(Conversation, crate::store::ConversationRecord)> = m
                .conversation_records()
                .map(|c| (Conversation::Direct(c.peer), c.clone()))
                .collect();
            let groups: Vec<(Conversation, String, u32, u64)> = m
                .groups()
                .into_iter()
                .filter(|g| g.active)
                .map(|g| {
                    let conv = Conversation::Group(g.id);
                    let s = m.settings(&conv);
                    (conv, g.title.clone(), s.expire_s, s.read_up_to)
                })
                .collect();
            (rows, groups)
        };
        let now = now_ms();
        let mut next_change: Option<u64> = None;
        let mut out = Vec::with_capacity(rows.len() + groups.len());
        for (conversation, c) in rows {
            let (last_message, unread) = self.last_and_unread(c.peer, c.read_up_to, own).await?;
            let (typing, until) = self.live.typing_in(&c.peer, now);
            next_change = min_opt(next_change, until);
            let (presence, until) = self.live.presence_of(&c.peer, now);
            next_change = min_opt(next_change, until);
            out.push(ConversationSummary {
                presence,
                avatar: c.profile_avatar.clone(),
                conversation,
                name: c.nickname.clone().or(c.profile_name.clone()).unwrap_or_default(),
                last_message,
                unread,
                typing,
                is_request: !c.accepted && !c.blocked,
                blocked: c.blocked,
                expire_s: c.expire_s,
                identity_unacked: c.identity_unacked,
            });
        }
        for (conversation, title, expire_s, read_up_to) in groups {
            let key = conversation.key();
            let (last_message, unread) = self.last_and_unread(key, read_up_to, own).await?;
            let (typing, until) = self.live.typing_in(&key, now);
            next_change = min_opt(next_change, until);
            out.push(ConversationSummary {
                conversation,
                name: title,
                last_message,
                unread,
                typing,
                is_request: false,
                blocked: false,
                expire_s,
                identity_unacked: false,
                presence: None,
                avatar: None,
            });
        }
        // Newest activity first; conversations without messages last, in id order.
        out.sort_by(|a, b| {
            let order = |s: &ConversationSummary| s.last_message.as_ref().map_or(0, |m| m.order);
            order(b).cmp(&order(a)).then(a.conversation.cmp(&b.conversation))
        });
        Ok((out, next_change))
    }

    async fn last_and_unread(
        &self,
        conversation: AccountId,
        read_up_to: u64,
        own: AccountId,
    ) -> Result<(Option<StoredMessage>, u32), super::ClientError> {
        {
            let cache = self.live.summaries.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((marker, last, unread)) = cache.get(&conversation)
                && *marker == read_up_to
            {
                return Ok((last.clone(), *unread));
            }
        }
        let generation = self.live.generation.load(std::sync::atomic::Ordering::SeqCst);
        let page = self
            .store
            .messages(
                conversation,
                Page {
                    before: None,
                    limit: MAX_UNREAD_COUNT,
                },
            )
            .await?;
        let unread = page
            .iter()
            .filter(|m| m.order > read_up_to && m.sender.0 != own && m.kind == MessageKind::Text && !m.deleted)
            .count();
        let out = (page.last().cloned(), u32::try_from(unread).unwrap_or(MAX_UNREAD_COUNT));
        if self.live.generation.load(std::sync::atomic::Ordering::SeqCst) == generation {
            self.live
                .summaries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(conversation, (read_up_to, out.0.clone(), out.1));
        }
        Ok(out)
    }

    /// The outbox items now in flight: their messages show as `Sending`. Wakes the
    /// timelines whose items changed state.
    pub(crate) fn note_sending(&self, now: impl Iterator<Item = (crate::ids::MessageId, AccountId)>) {
        let now: HashMap<crate::ids::MessageId, AccountId> = now.collect();
        let changed: BTreeSet<AccountId> = {
            let mut s = self.sending.lock().unwrap_or_else(|e| e.into_inner());
            if *s == now {
                return;
            }
            let changed = s
                .iter()
                .filter(|(id, _)| !now.contains_key(id))
                .chain(now.iter().filter(|(id, _)| !s.contains_key(id)))
                .map(|(_, c)| *c)
                .collect();
            *s = now;
            changed
        };
        self.live.wake(false, &changed);
    }

    /// Stored messages as timeline items, with their send states.
    fn items(&self, messages: Vec<StoredMessage>) -> Vec<TimelineItem> {
        messages
            .into_iter()
            .map(|m| TimelineItem {
                send_state: self.send_state(&m),
                message: m,
            })
            .collect()
    }

    /// The send state a timeline shows for `m`.
    fn send_state(&self, m: &StoredMessage) -> Option<SendState> {
        let state = SendState::of_message(m)?;
        if state == SendState::Queued
            && m.sender.0 == self.device.account_id()
            && self
                .sending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&m.id)
                .is_some_and(|c| *c == m.conversation)
        {
            return Some(SendState::Sending);
        }
        Some(state)
    }

    /// The last `limit` items of a timeline, oldest first.
    pub(crate) async fn timeline_items(
        &self,
        conversation: AccountId,
        limit: u32,
    ) -> Result<Vec<TimelineItem>, super::ClientError> {
        let page = self
            .store
            .messages(
                conversation,
                Page {
                    before: None,
                    limit: limit.min(MAX_TIMELINE_WINDOW),
                },
            )
            .await?;
        Ok(self.items(page))
    }
}

fn min_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// The conversation list, live ([`Client::conversation_list`]).
pub struct ConversationList<S: Store> {
    inner: Arc<Inner<S>>,
}

/// One conversation's timeline, live ([`Client::timeline`]).
pub struct Timeline<S: Store> {
    inner: Arc<Inner<S>>,
    conversation: Conversation,
    window: Arc<std::sync::atomic::AtomicU32>,
    notify: StdMutex<Vec<std::sync::Weak<Notify>>>,
}

impl<S: Store> ConversationList<S> {
    /// The list now, newest activity first.
    pub async fn snapshot(&self) -> Result<Vec<ConversationSummary>, super::ClientError> {
        Ok(self.inner.conversation_list().await?.0)
    }

    /// Calls `listener` with a [`ListDiff::Reset`], then with batches of diffs as the list
    /// changes, until the returned [`Subscription`] is dropped or cancelled.
    pub fn subscribe(&self, listener: Listener<ConversationSummary>) -> Subscription {
        let (notify, alive) = self.inner.live.watch(Watch::List);
        let inner = self.inner.clone();
        spawn_watch(
            notify,
            alive,
            listener,
            move || {
                let inner = inner.clone();
                async move { inner.conversation_list().await }
            },
            |s: &ConversationSummary| s.conversation,
        )
    }
}

impl<S: Store> Timeline<S> {
    /// The items now, oldest first.
    pub async fn snapshot(&self) -> Result<Vec<TimelineItem>, super::ClientError> {
        let limit = self.window.load(std::sync::atomic::Ordering::SeqCst);
        self.inner.timeline_items(self.conversation.key(), limit).await
    }

    /// Shows `n` more older items (the subscriptions get them as inserts at the top).
    pub fn paginate_backwards(&self, n: u32) {
        let w = self.window.load(std::sync::atomic::Ordering::SeqCst);
        self.window.store(
            w.saturating_add(n).min(MAX_TIMELINE_WINDOW),
            std::sync::atomic::Ordering::SeqCst,
        );
        let notify = self.notify.lock().unwrap_or_else(|e| e.into_inner());
        for n in notify.iter().filter_map(std::sync::Weak::upgrade) {
            n.notify_one();
        }
    }

    /// Calls `listener` with a [`ListDiff::Reset`], then with batches of diffs as the
    /// timeline changes (new messages, edits, deletes, reactions, receipts, expiries),
    /// until the returned [`Subscription`] is dropped or cancelled.
    pub fn subscribe(&self, listener: Listener<TimelineItem>) -> Subscription {
        let key = self.conversation.key();
        let (notify, alive) = self.inner.live.watch(Watch::Timeline(key));
        self.notify
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&notify));
        let inner = self.inner.clone();
        let window = self.window.clone();
        spawn_watch(
            notify,
            alive,
            listener,
            move || {
                let inner = inner.clone();
                let limit = window.load(std::sync::atomic::Ordering::SeqCst);
                async move { Ok((inner.timeline_items(key, limit).await?, None)) }
            },
            |i: &TimelineItem| (i.message.sender.0, i.message.id),
        )
    }
}

/// Runs a subscription: query, diff, call, wait for a wake-up (or for `until`, when the
/// list changes with time: typing ends), until stopped.
fn spawn_watch<T, K, F, Fut>(
    notify: Arc<Notify>,
    alive: Arc<()>,
    listener: Listener<T>,
    query: F,
    key: fn(&T) -> K,
) -> Subscription
where
    T: Clone + PartialEq + crate::store::MaybeSend + 'static,
    K: Eq + std::hash::Hash + 'static,
    F: Fn() -> Fut + crate::store::MaybeSend + 'static,
    Fut: std::future::Future<Output = Result<(Vec<T>, Option<u64>), super::ClientError>> + crate::store::MaybeSend,
{
    let (stop, mut stopped) = watch::channel(false);
    let task = async move {
        let _alive = alive;
        let mut last: Option<Vec<T>> = None;
        loop {
            if *stopped.borrow() {
                return;
            }
            // A failed query (a store error) is retried at the next wake-up.
            let mut until = None;
            if let Ok((items, next)) = query().await {
                until = next;
                let diffs = match &last {
                    None => vec![ListDiff::Reset { items: items.clone() }],
                    Some(old) => diff(old, &items, key),
                };
                if !diffs.is_empty() {
                    if *stopped.borrow() {
                        return;
                    }
                    listener(diffs);
                }
                last = Some(items);
            }
            let wait = async {
                match until {
                    Some(t) => {
                        let d = std::time::Duration::from_millis(t.saturating_sub(now_ms()).max(1));
                        let _ = rt::timeout(d, notify.notified()).await;
                    }
                    None => notify.notified().await,
                }
            };
            tokio::select! {
                () = wait => {}
                _ = stopped.changed() => return,
            }
        }
    };
    let _task = rt::spawn(task);
    Subscription { stop }
}

/// The results of a local search, live ([`Client::search`]).
pub struct SearchResults<S: Store> {
    inner: Arc<Inner<S>>,
    query: Arc<str>,
    limit: u32,
}

impl<S: Store> SearchResults<S> {
    /// The matching messages now, newest first.
    pub async fn snapshot(&self) -> Result<Vec<TimelineItem>, super::ClientError> {
        Ok(self.inner.search_items(&self.query, self.limit).await?.0)
    }

    /// Calls `listener` with a [`ListDiff::Reset`], then with batches of diffs as
    /// messages that match are stored, edited, deleted or expire, until the returned
    /// [`Subscription`] is dropped or cancelled.
    pub fn subscribe(&self, listener: Listener<TimelineItem>) -> Subscription {
        let (notify, alive) = self.inner.live.watch(Watch::List);
        let inner = self.inner.clone();
        let (query, limit) = (self.query.clone(), self.limit);
        spawn_watch(
            notify,
            alive,
            listener,
            move || {
                let inner = inner.clone();
                let query = query.clone();
                async move { inner.search_items(&query, limit).await }
            },
            |i: &TimelineItem| i.message.key(),
        )
    }
}

impl<S: Store> Inner<S> {
    async fn search_items(
        &self,
        query: &str,
        limit: u32,
    ) -> Result<(Vec<TimelineItem>, Option<u64>), super::ClientError> {
        Ok((self.items(self.store.search(query, limit).await?), None))
    }
}

impl<S: Store> Client<S> {
    /// Searches the texts stored on this device (every word of `query` must start a word
    /// of the text; case does not matter), newest first, at most `limit`, live. The
    /// text never reaches the disk in the clear: the SQLite store indexes keyed tags of
    /// the words (docs/ARCHITECTURE.md, "Local search").
    pub fn search(&self, query: &str, limit: u32) -> SearchResults<S> {
        SearchResults {
            inner: self.inner.clone(),
            query: Arc::from(query),
            limit: limit.min(crate::store::MAX_PAGE),
        }
    }

    /// The messages stored after `order` (a message's `order`; 0 for the first), in
    /// every conversation, oldest first: a durable cursor. Code that must handle every
    /// message once (a bot, notification code) keeps the `order` of the last one it
    /// handled and starts there after a restart; messages stored while it was down, or
    /// just before a crash, are not missed.
    pub async fn messages_after(&self, order: u64, limit: u32) -> Result<Vec<StoredMessage>, super::ClientError> {
        Ok(self.inner.store.messages_after(order, limit).await?)
    }

    /// The conversation list (1:1 conversations, message requests and groups), live.
    pub fn conversation_list(&self) -> ConversationList<S> {
        ConversationList {
            inner: self.inner.clone(),
        }
    }

    /// A conversation's timeline, live: the newest `window` items at first (more with
    /// [`Timeline::paginate_backwards`]).
    pub fn timeline(&self, conversation: Conversation, window: u32) -> Timeline<S> {
        Timeline {
            inner: self.inner.clone(),
            conversation,
            window: Arc::new(std::sync::atomic::AtomicU32::new(window.min(MAX_TIMELINE_WINDOW))),
            notify: StdMutex::new(Vec::new()),
        }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Applying the diffs to the old list gives the new one, whatever the two are.
        #[test]
        fn diffs_turn_the_old_list_into_the_new_one(
            old in proptest::collection::vec((0u8..24, 0u8..3), 0..20),
            new in proptest::collection::vec((0u8..24, 0u8..3), 0..20),
        ) {
            let dedup = |v: Vec<(u8, u8)>| {
                let mut seen = std::collections::HashSet::new();
                v.into_iter().filter(|(k, _)| seen.insert(*k)).collect::<Vec<_>>()
            };
            let (old, new) = (dedup(old), dedup(new));
            let diffs = diff(&old, &new, |x| x.0);
            let mut list = old.clone();
            apply_diffs(&mut list, &diffs);
            prop_assert_eq!(list, new.clone());
            // Nothing to say when nothing changed.
            prop_assert!(diff(&new, &new, |x| x.0).is_empty());
        }
    }
}
