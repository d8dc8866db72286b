//! The reference store: everything in memory, the same semantics as the SQLite store.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};

use sotto_crypto::AccountId;

use crate::group::GroupId;

use super::{
    AccountRecord, AccountStore, Changes, Committed, ConversationRecord, DeviceListStore, EnvelopeDigest, GroupRecord,
    GroupStore, InboundStore, MAX_PAGE, MAX_PROCESSED_ENVELOPES, MessageKey, MessageStore, OutboxItem, OutboxStore,
    Page, PeerDevice, PendingInbound, PreKeyId, PreKeyStore, SenderKeyId, SenderKeySet, SessionSet, SessionStore,
    Store, StoreError, StoredMessage, Versioned, check_pin, check_pin_write,
};

#[derive(Default)]
struct Inner {
    account: Option<Versioned<AccountRecord>>,
    sessions: BTreeMap<PeerDevice, Versioned<SessionSet>>,
    groups: BTreeMap<GroupId, Versioned<GroupRecord>>,
    sender_keys: BTreeMap<SenderKeyId, Versioned<SenderKeySet>>,
    prekeys: BTreeMap<PreKeyId, Vec<u8>>,
    device_lists: BTreeMap<AccountId, Vec<u8>>,
    conversations: BTreeMap<AccountId, ConversationRecord>,
    messages: BTreeMap<u64, StoredMessage>,
    message_index: HashMap<MessageKey, u64>,
    next_order: u64,
    outbox: BTreeMap<u64, OutboxItem>,
    next_outbox: u64,
    processed: VecDeque<EnvelopeDigest>,
    processed_set: HashSet<EnvelopeDigest>,
    pending: BTreeMap<u64, PendingInbound>,
    next_pending: u64,
    blob_tokens: Vec<u8>,
}

/// An in-memory store. Cloning is not offered: share it behind an `Arc`.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied commit (commit
        // checks everything before it changes anything), so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn check_cas(current: Option<u64>, expected: Option<u64>) -> Result<u64, StoreError> {
    if current != expected {
        return Err(StoreError::Conflict);
    }
    Ok(expected.map_or(1, |v| v + 1))
}

impl AccountStore for MemoryStore {
    async fn load_account(&self) -> Result<Option<Versioned<AccountRecord>>, StoreError> {
        Ok(self.lock().account.clone())
    }
}

impl SessionStore for MemoryStore {
    async fn load_sessions(&self) -> Result<Vec<(PeerDevice, Versioned<SessionSet>)>, StoreError> {
        Ok(self.lock().sessions.iter().map(|(k, v)| (*k, v.clone())).collect())
    }
}

impl PreKeyStore for MemoryStore {
    async fn load_prekeys(&self) -> Result<Vec<(PreKeyId, Vec<u8>)>, StoreError> {
        Ok(self.lock().prekeys.iter().map(|(k, v)| (*k, v.clone())).collect())
    }
}

impl DeviceListStore for MemoryStore {
    async fn load_device_lists(&self) -> Result<Vec<(AccountId, Vec<u8>)>, StoreError> {
        Ok(self.lock().device_lists.iter().map(|(k, v)| (*k, v.clone())).collect())
    }
}

impl MessageStore for MemoryStore {
    async fn conversations(&self) -> Result<Vec<ConversationRecord>, StoreError> {
        Ok(self.lock().conversations.values().cloned().collect())
    }

    async fn messages(&self, conversation: AccountId, page: Page) -> Result<Vec<StoredMessage>, StoreError> {
        let inner = self.lock();
        let before = page.before.unwrap_or(u64::MAX);
        let mut out: Vec<StoredMessage> = inner
            .messages
            .range(..before)
            .rev()
            .filter(|(_, m)| m.conversation == conversation)
            .take(page.limit.min(MAX_PAGE) as usize)
            .map(|(_, m)| m.clone())
            .collect();
        out.reverse();
        Ok(out)
    }

    async fn recent_message_ids(&self, limit: u32) -> Result<Vec<MessageKey>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .messages
            .values()
            .rev()
            .take(limit as usize)
            .map(|m| m.key())
            .collect())
    }

    async fn message(&self, key: MessageKey) -> Result<Option<StoredMessage>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .message_index
            .get(&key)
            .and_then(|o| inner.messages.get(o))
            .cloned())
    }

    async fn search(&self, query: &str, limit: u32) -> Result<Vec<StoredMessage>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .messages
            .values()
            .rev()
            .filter(|m| super::search::searchable(m) && super::search::matches(&m.text, query))
            .take(limit.min(MAX_PAGE) as usize)
            .cloned()
            .collect())
    }

    async fn messages_after(&self, order: u64, limit: u32) -> Result<Vec<StoredMessage>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .messages
            .range(order.saturating_add(1)..)
            .take(limit.min(MAX_PAGE) as usize)
            .map(|(_, m)| m.clone())
            .collect())
    }

    async fn expired_messages(&self, now_ms: u64, limit: u32) -> Result<Vec<MessageKey>, StoreError> {
        let inner = self.lock();
        let mut due: Vec<(u64, MessageKey)> = inner
            .messages
            .values()
            .filter(|m| m.expires_at_ms != 0 && m.expires_at_ms <= now_ms)
            .map(|m| (m.expires_at_ms, m.key()))
            .collect();
        due.sort();
        Ok(due.into_iter().take(limit as usize).map(|(_, k)| k).collect())
    }
}

impl InboundStore for MemoryStore {
    async fn processed_envelopes(&self, limit: u32) -> Result<Vec<EnvelopeDigest>, StoreError> {
        Ok(self
            .lock()
            .processed
            .iter()
            .rev()
            .take(limit as usize)
            .copied()
            .collect())
    }

    async fn blob_tokens(&self) -> Result<Vec<u8>, StoreError> {
        Ok(self.lock().blob_tokens.clone())
    }

    async fn pending_inbound(&self) -> Result<Vec<PendingInbound>, StoreError> {
        Ok(self.lock().pending.values().cloned().collect())
    }
}

impl OutboxStore for MemoryStore {
    async fn outbox(&self, limit: u32) -> Result<Vec<OutboxItem>, StoreError> {
        Ok(self.lock().outbox.values().take(limit as usize).cloned().collect())
    }
}

impl GroupStore for MemoryStore {
    async fn load_groups(&self) -> Result<Vec<(GroupId, Versioned<GroupRecord>)>, StoreError> {
        Ok(self.lock().groups.iter().map(|(k, v)| (*k, v.clone())).collect())
    }

    async fn load_sender_keys(&self) -> Result<Vec<(SenderKeyId, Versioned<SenderKeySet>)>, StoreError> {
        Ok(self.lock().sender_keys.iter().map(|(k, v)| (*k, v.clone())).collect())
    }
}

impl Store for MemoryStore {
    async fn commit(&self, changes: Changes) -> Result<Committed, StoreError> {
        let mut inner = self.lock();
        // Check every precondition before changing anything.
        let account_version = match &changes.account {
            Some(w) => Some(check_cas(inner.account.as_ref().map(|a| a.version), w.expected)?),
            None => None,
        };
        let mut session_versions = Vec::with_capacity(changes.sessions.len());
        for (peer, w) in &changes.sessions {
            session_versions.push(check_cas(inner.sessions.get(peer).map(|s| s.version), w.expected)?);
        }
        let mut group_versions = Vec::with_capacity(changes.groups.len());
        for (id, w) in &changes.groups {
            group_versions.push(check_cas(inner.groups.get(id).map(|g| g.version), w.expected)?);
        }
        let mut sender_key_versions = Vec::with_capacity(changes.sender_keys.len());
        for (id, w) in &changes.sender_keys {
            sender_key_versions.push(check_cas(inner.sender_keys.get(id).map(|g| g.version), w.expected)?);
        }
        for id in &changes.prekeys_removed {
            if !inner.prekeys.contains_key(id) {
                return Err(StoreError::Conflict);
            }
        }
        for (a, expected) in &changes.pins {
            check_pin(inner.device_lists.get(a).map(Vec::as_slice), *expected)?;
        }
        for (a, l) in &changes.device_lists {
            check_pin_write(inner.device_lists.get(a).map(Vec::as_slice), l)?;
        }
        if let (Some(w), Some(v)) = (changes.account, account_version) {
            inner.account = Some(Versioned {
                version: v,
                value: w.value,
            });
        }
        for ((peer, w), v) in changes.sessions.into_iter().zip(&session_versions) {
            inner.sessions.insert(
                peer,
                Versioned {
                    version: *v,
                    value: w.value,
                },
            );
        }
        for ((id, w), v) in changes.groups.into_iter().zip(&group_versions) {
            inner.groups.insert(
                id,
                Versioned {
                    version: *v,
                    value: w.value,
                },
            );
        }
        for ((id, w), v) in changes.sender_keys.into_iter().zip(&sender_key_versions) {
            inner.sender_keys.insert(
                id,
                Versioned {
                    version: *v,
                    value: w.value,
                },
            );
        }
        for id in &changes.prekeys_removed {
            inner.prekeys.remove(id);
        }
        for (id, p) in changes.prekeys_added {
            inner.prekeys.insert(id, p);
        }
        for (a, l) in changes.device_lists {
            inner.device_lists.insert(a, l);
        }
        for peer in changes.conversations_removed {
            inner.conversations.remove(&peer);
        }
        for c in changes.conversations {
            inner.conversations.insert(c.peer, c);
        }
        let mut inserted = Vec::new();
        for mut m in changes.messages {
            if inner.message_index.contains_key(&m.key()) {
                continue;
            }
            inner.next_order += 1;
            let order = inner.next_order;
            m.order = order;
            inner.message_index.insert(m.key(), order);
            inserted.push((m.id, order));
            inner.messages.insert(order, m);
        }
        let mut advanced = Vec::new();
        for (id, update) in changes.message_updates {
            if let Some(order) = inner.message_index.get(&id).copied()
                && let Some(m) = inner.messages.get_mut(&order)
            {
                let old = m.status;
                if m.apply(&update) && update.is_status() {
                    advanced.push((id, old));
                }
            }
        }
        for key in changes.messages_removed {
            if let Some(order) = inner.message_index.remove(&key) {
                inner.messages.remove(&order);
            }
        }
        for item in changes.outbox_add {
            if inner.outbox.values().any(|i| i.id == item.id) {
                continue;
            }
            inner.next_outbox += 1;
            let n = inner.next_outbox;
            inner.outbox.insert(n, item);
        }
        for id in changes.outbox_remove {
            inner.outbox.retain(|_, i| i.id != id);
        }
        for p in changes.pending_add {
            if inner.pending.values().any(|q| q.digest == p.digest) {
                continue;
            }
            inner.next_pending += 1;
            let n = inner.next_pending;
            inner.pending.insert(n, p);
        }
        for d in changes.pending_remove {
            inner.pending.retain(|_, q| q.digest != d);
        }
        if let Some(t) = changes.blob_tokens {
            inner.blob_tokens = t;
        }
        for d in changes.envelopes {
            if inner.processed_set.insert(d) {
                inner.processed.push_back(d);
                if inner.processed.len() > MAX_PROCESSED_ENVELOPES
                    && let Some(old) = inner.processed.pop_front()
                {
                    inner.processed_set.remove(&old);
                }
            }
        }
        for item in changes.outbox_update {
            if let Some(stored) = inner.outbox.values_mut().find(|i| i.id == item.id) {
                *stored = item;
            }
        }
        Ok(Committed {
            inserted,
            advanced,
            account_version,
            session_versions,
            group_versions,
            sender_key_versions,
        })
    }
}
