//! Access keys and message requests (docs/protocol.md §13.8): this account's key, its
//! verifier on the relay, the contacts it is shared with, and the contacts' keys.

use hkdf::Hkdf;
use sha2::Sha256;
use sotto_crypto::{AccountId, AccountKey};
use sotto_proto::{AccessKey, AccessPolicy};

use super::Machine;
use crate::store::{Changes, ConversationRecord, Write};

/// The access key of an account made before access keys, derived from its account key.
fn legacy_access_key(ak: &AccountKey) -> [u8; 32] {
    let seed = ak.dangerous_export_seed();
    let mut k = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's output bound, so this cannot fail.
    let _ = Hkdf::<Sha256>::new(None, seed.as_slice()).expand(b"Sotto-v1 access key from account key", &mut k);
    k
}

impl Machine {
    /// This account's access key, on a device that has it.
    pub fn own_access_key(&self) -> Option<AccessKey> {
        self.account.value.access_key.map(AccessKey)
    }

    /// The access key to present when sending to `peer`, if they shared one (with this
    /// account, or with a group both are in).
    pub fn access_key_for(&self, peer: &AccountId) -> Option<AccessKey> {
        self.conversations
            .get(peer)
            .and_then(|c| c.access_key)
            .or_else(|| self.group_access_key(peer))
            .map(AccessKey)
    }

    /// The access key to put in content for `peer`: this account's, when it accepted
    /// them (never to a message request it has not accepted).
    pub(super) fn access_key_to_share(&self, peer: &AccountId) -> Option<AccessKey> {
        match self.conversations.get(peer) {
            Some(c) if c.accepted => self.own_access_key(),
            _ => None,
        }
    }

    /// What to upload (`PUT /v1/access`) so the relay holds this account's verifier with
    /// the policy `accept_requests`, and the changes to commit first; `None` when the
    /// relay confirmed exactly that already. On an account made before access keys, a
    /// device that holds the account key derives the access key from it (HKDF-SHA256 of
    /// the account key's seed, info `"Sotto-v1 access key from account key"`), so every
    /// such device arrives at the same key; devices without the account key get it only
    /// with a later link answer.
    pub fn access_upload(&mut self, accept_requests: bool) -> Option<(Changes, AccessPolicy)> {
        let mut changes = Changes::default();
        let key = match self.account.value.access_key {
            Some(k) => k,
            None if self.account_key.is_some() => {
                let k = self.account_key.as_ref().map(legacy_access_key)?;
                let mut record = self.account.value.clone();
                record.access_key = Some(k);
                record.access_sent = None;
                changes.account = Some(Write {
                    expected: Some(self.account.version),
                    value: record,
                });
                k
            }
            None => return None,
        };
        if changes.account.is_none() && self.account.value.access_sent == Some(accept_requests) {
            return None;
        }
        let policy = AccessPolicy {
            verifier: AccessKey(key).verifier(),
            accept_requests,
        };
        Some((changes, policy))
    }

    /// The relay confirmed `policy`: remember it, so it is not uploaded again.
    pub fn access_sent(&self, policy: &AccessPolicy) -> Option<Changes> {
        let key = self.own_access_key()?;
        if key.verifier() != policy.verifier || self.account.value.access_sent == Some(policy.accept_requests) {
            return None;
        }
        let mut record = self.account.value.clone();
        record.access_sent = Some(policy.accept_requests);
        Some(Changes {
            account: Some(Write {
                expected: Some(self.account.version),
                value: record,
            }),
            ..Changes::default()
        })
    }

    /// Stores the account's access key received with a link answer (the relay already
    /// holds its verifier: the request policy is uploaded again); `None` when it is the
    /// one held.
    pub fn set_access_key(&self, key: [u8; 32]) -> Option<Changes> {
        if self.account.value.access_key == Some(key) {
            return None;
        }
        let mut record = self.account.value.clone();
        record.access_key = Some(key);
        record.access_sent = None;
        Some(Changes {
            account: Some(Write {
                expected: Some(self.account.version),
                value: record,
            }),
            ..Changes::default()
        })
    }

    /// A conversation from a link answer, merged with what this device knows (accepted
    /// once either side accepted; this device's copy of the key first).
    pub fn import_conversation(&self, record: ConversationRecord) -> Changes {
        let mut changes = Changes::default();
        self.update_conversation(&mut changes, record.peer, |c| {
            c.accepted |= record.accepted;
            c.access_key = c.access_key.or(record.access_key);
        });
        changes
    }

    /// Accepts `peer` (a message request, or a contact this account writes to): this
    /// account's access key goes to them with every later message and receipt.
    pub fn accept_conversation(&self, peer: AccountId) -> Changes {
        let mut changes = Changes::default();
        self.update_conversation(&mut changes, peer, |c| c.accepted = true);
        changes
    }

    /// Conversations that `peer`s started and this account has not accepted: message
    /// requests (a blocked account's are not shown).
    pub fn message_requests(&self) -> impl Iterator<Item = &AccountId> {
        self.conversations
            .values()
            .filter(|c| !c.accepted && !c.blocked)
            .map(|c| &c.peer)
    }

    /// Changes the record of the conversation with `peer` (created when missing, not
    /// accepted), starting from the version already in `changes` if any, and writes it
    /// when it differs from the stored one.
    pub(super) fn update_conversation(
        &self,
        changes: &mut Changes,
        peer: AccountId,
        f: impl FnOnce(&mut ConversationRecord),
    ) {
        let pending = changes.conversations.iter().position(|c| c.peer == peer);
        let mut record = match pending {
            Some(i) => changes.conversations.remove(i),
            None => self
                .conversations
                .get(&peer)
                .cloned()
                .unwrap_or_else(|| ConversationRecord::new(peer)),
        };
        f(&mut record);
        if pending.is_some() || self.conversations.get(&peer) != Some(&record) {
            changes.conversations.push(record);
        }
    }
}
