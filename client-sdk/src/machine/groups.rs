//! Groups (docs/protocol.md §14.6): creating and changing groups, the group channel (one
//! sender-key step and one group seal per message, whatever the group's size), sender-key
//! distribution over the pairwise sessions, and what arrives: group envelopes, welcomes,
//! commits and distributions.
//!
//! A group message goes out as one `Send` with the sealed body once and an empty head for
//! every device of every member (this device's own included, as the anonymous device-set
//! rule wants; it skips its own echo). Before the first message of a chain, and whenever
//! the fan-out has a device that does not hold it, the chain's distribution goes to those
//! devices' accounts over the pairwise sessions; the group item waits until the relay
//! stored those. A chain is replaced when a device that holds it left the fan-out (a
//! member or a device was removed), so a removed device cannot read what follows.
//!
//! Commits that remove nobody travel in the group channel, sealed under the parent
//! state's key, with the new state's key inside. A commit that removes a member, or by
//! which the author leaves, goes pairwise to every remaining member's devices with the
//! new key, and without it to those removed. New members get a welcome pairwise.

use std::collections::{BTreeSet, HashMap};

use sha2::{Digest, Sha256};
use sotto_crypto::pickle::Pickle;
use sotto_crypto::sender_key::{SenderKey, SenderKeyDistribution, SenderKeyReceiver};
use sotto_crypto::{AccountId, GroupSealKey, SenderKeyError};
use sotto_proto::{Access, Recipient};

use super::{Event, Inbound, Machine, MachineError, Need, UndecryptableCause};
use crate::content::{ChatItem, Content, ContentKind, GroupBody};
use crate::group::{Commit, GroupError, GroupId, GroupLog, GroupState, LogParts, NO_KEY, Op, Received, Role};
use crate::ids::MessageId;
use crate::store::{
    Changes, EnvelopeDigest, GroupRecord, MAX_OWN_COMMITS, MAX_SEAL_KEYS, MAX_SENDER_CHAINS, MessageStatus, OutboxItem,
    PeerDevice, SenderKeyId, SenderKeySet, StoredMessage, Versioned, Write,
};

/// Group-sealed content type of a sender-key message (docs/protocol.md §14.6).
pub const CONTENT_SENDER_KEY: u8 = 0x20;

/// One group as the machine holds it: the stored record, its log and its seal keys.
pub(super) struct GroupEntry {
    pub(super) record: Versioned<GroupRecord>,
    pub(super) log: GroupLog,
    /// The record's seal keys, ready to match and open: (state id, key), newest first.
    pub(super) keys: Vec<([u8; 32], GroupSealKey)>,
}

impl GroupEntry {
    pub(super) fn load(record: Versioned<GroupRecord>) -> Result<Self, MachineError> {
        let log = GroupLog::from_parts(LogParts::decode(&record.value.log)?)?;
        let keys = record
            .value
            .seal_keys
            .iter()
            .map(|(id, k)| (*id, GroupSealKey::from_bytes(k)))
            .collect();
        Ok(Self { record, log, keys })
    }
}

/// A group as the app sees it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct GroupInfo {
    /// The group.
    pub id: GroupId,
    /// Its title.
    pub title: String,
    /// Members and roles.
    pub members: Vec<(AccountId, Role)>,
    /// The state's version.
    pub version: u64,
    /// False once this account left or was removed.
    pub active: bool,
}

/// What [`Machine::prepare_group_send`] produced.
#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "one value per operation, consumed at once")]
#[non_exhaustive]
pub enum GroupPlan {
    /// Fetch these device lists, feed them in and call again.
    Need(Vec<Need>),
    /// Commit `changes` (the chain's distribution is queued to the devices that lack
    /// it), and call again once the relay stored those.
    Wait {
        /// The chain (when a new one was made) and the distribution items.
        changes: Changes,
    },
    /// Commit `changes`, then send one `Send` with `body` once, a head-less recipient per
    /// device, and `access`, on the anonymous connection.
    Ready {
        /// The chain advanced by the message.
        changes: Changes,
        /// The group-sealed envelope.
        body: Vec<u8>,
        /// Every device of every member, with an empty head.
        recipients: Vec<Recipient>,
        /// The access keys held for member accounts, in ascending account order.
        access: Vec<Access>,
    },
    /// The item cannot be sent any more (this account left the group, or the state it
    /// was for is gone): drop it.
    Drop {
        /// Why.
        reason: &'static str,
    },
}

/// The outbox id of a chain's distribution to one account (or of the welcome to this
/// account's new devices that goes with it): one item per chain, kind and account,
/// however often the group item asks for it.
fn distribution_item_id(label: &[u8], chain_id: &[u8; 16], account: &AccountId) -> MessageId {
    let mut h = Sha256::new();
    h.update(label);
    h.update(chain_id);
    h.update(account.0);
    let d: [u8; 32] = h.finalize().into();
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    MessageId(id)
}

fn group_conversation(group: &GroupId) -> AccountId {
    group.conversation()
}

impl Machine {
    // ---------------------------------------------------------------------------------
    // Reading.

    /// The groups this account is or was in.
    pub fn groups(&self) -> Vec<GroupInfo> {
        let mut out: Vec<GroupInfo> = self.groups.keys().filter_map(|id| self.group(id)).collect();
        out.sort_by_key(|g| g.id);
        out
    }

    /// One group.
    pub fn group(&self, id: &GroupId) -> Option<GroupInfo> {
        let e = self.groups.get(id)?;
        let tip = e.log.tip();
        Some(GroupInfo {
            id: *id,
            title: tip.title.clone(),
            members: tip.members.iter().map(|(a, r)| (*a, *r)).collect(),
            version: tip.version,
            active: e.record.value.active,
        })
    }

    /// The group whose conversation key (in stored messages and the outbox) is `key`.
    pub fn group_of_conversation(&self, key: &AccountId) -> Option<GroupId> {
        self.groups.keys().find(|g| g.conversation() == *key).copied()
    }

    /// The access key `peer` shared with a group this account is in.
    pub(super) fn group_access_key(&self, peer: &AccountId) -> Option<[u8; 32]> {
        self.groups
            .values()
            .filter(|e| e.record.value.active && e.log.tip().is_member(peer))
            .find_map(|e| {
                e.record
                    .value
                    .member_access
                    .iter()
                    .find(|(a, _)| a == peer)
                    .map(|(_, k)| *k)
            })
    }

    // ---------------------------------------------------------------------------------
    // Record helpers.

    pub(super) fn group_write(&self, id: GroupId, record: GroupRecord, changes: &mut Changes) {
        changes.groups.retain(|(g, _)| *g != id);
        changes.groups.push((
            id,
            Write {
                expected: self.groups.get(&id).map(|e| e.record.version),
                value: record,
            },
        ));
    }

    /// The record as `changes` has it so far, else as stored.
    pub(super) fn record_in(&self, id: &GroupId, changes: &Changes) -> Option<GroupRecord> {
        changes
            .groups
            .iter()
            .find(|(g, _)| g == id)
            .map(|(_, w)| w.value.clone())
            .or_else(|| self.groups.get(id).map(|e| e.record.value.clone()))
    }

    fn seal_key_of(&self, id: &GroupId, state_id: &[u8; 32]) -> Option<[u8; 32]> {
        self.groups
            .get(id)?
            .record
            .value
            .seal_keys
            .iter()
            .find(|(s, _)| s == state_id)
            .map(|(_, k)| *k)
    }

    fn push_seal_key(record: &mut GroupRecord, state_id: [u8; 32], key: [u8; 32]) {
        Self::push_seal_key_keeping(record, state_id, key, &state_id);
    }

    /// Adds a state's key in front; beyond [`MAX_SEAL_KEYS`] the oldest go, never the key of
    /// `keep` (the current state).
    fn push_seal_key_keeping(record: &mut GroupRecord, state_id: [u8; 32], key: [u8; 32], keep: &[u8; 32]) {
        record.seal_keys.retain(|(s, _)| *s != state_id);
        record.seal_keys.insert(0, (state_id, key));
        while record.seal_keys.len() > MAX_SEAL_KEYS {
            match record.seal_keys.iter().rposition(|(s, _)| s != keep) {
                Some(i) => {
                    record.seal_keys.remove(i);
                }
                None => break,
            }
        }
    }

    /// A pairwise outbox item with group content to `to`.
    fn group_item(&mut self, to: AccountId, group: GroupId, body: GroupBody, now_ms: u64) -> OutboxItem {
        let content = Content {
            message_id: MessageId::new(now_ms, &mut self.ids),
            timestamp_ms: now_ms,
            access_key: self.own_access_key(),
            kind: ContentKind::Group { group, body },
        };
        OutboxItem::new(content.message_id, to, content.encode())
    }

    /// The access keys this device knows for the group's members.
    fn member_access(
        &self,
        record: &GroupRecord,
        members: impl Iterator<Item = AccountId>,
    ) -> Vec<(AccountId, [u8; 32])> {
        let own = self.account_id();
        members
            .filter(|a| *a != own)
            .filter_map(|a| {
                record
                    .member_access
                    .iter()
                    .find(|(m, _)| *m == a)
                    .map(|(_, k)| *k)
                    .or_else(|| self.conversations.get(&a).and_then(|c| c.access_key))
                    .map(|k| (a, k))
            })
            .collect()
    }

    // ---------------------------------------------------------------------------------
    // Creating and changing.

    /// Creates a group with this account as its admin and `members` in it, and queues a
    /// welcome to each member (and to this account's other devices).
    pub fn create_group(
        &mut self,
        title: &str,
        members: &[AccountId],
        now_ms: u64,
    ) -> Result<(Changes, GroupId), MachineError> {
        let own = self.account_id();
        let mut id = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut self.rng, &mut id);
        let id = GroupId(id);
        let others: Vec<(AccountId, Role)> = members
            .iter()
            .filter(|a| **a != own)
            .map(|a| (*a, Role::Member))
            .collect();
        let genesis = GroupState::genesis(id, own, title, &others)?;
        let log = GroupLog::genesis(genesis.clone())?;
        let gk = GroupSealKey::generate(&mut self.rng);
        let record = GroupRecord {
            log: log.parts().encode(),
            seal_keys: vec![(log.tip_id(), *gk.to_bytes())],
            chain: None,
            chain_holders: Vec::new(),
            member_access: Vec::new(),
            active: true,
            own_commits: Vec::new(),
            expire_s: 0,
            timer_at_ms: 0,
            read_up_to: 0,
        };
        let mut changes = Changes::default();
        let access = self.member_access(&record, genesis.members.keys().copied());
        let welcome = GroupBody::Welcome {
            root_id: log.root_id(),
            root: genesis.clone(),
            commits: Vec::new(),
            seal_key: *gk.to_bytes(),
            access,
        };
        for a in genesis.members.keys() {
            let item = self.group_item(*a, id, welcome.clone(), now_ms);
            changes.outbox_add.push(item);
        }
        self.group_write(id, record, &mut changes);
        Ok((changes, id))
    }

    /// Changes a group (this account must be an admin, or leaving): a commit on the
    /// current state, and the messages that carry it (docs/protocol.md §14.6).
    pub fn change_group(&mut self, group: GroupId, ops: Vec<Op>, now_ms: u64) -> Result<Changes, MachineError> {
        self.change_group_from(group, ops, now_ms, &Changes::default())
    }

    /// [`Machine::change_group`], on the group record as `base` has it (if it writes one).
    fn change_group_from(
        &mut self,
        group: GroupId,
        ops: Vec<Op>,
        now_ms: u64,
        base: &Changes,
    ) -> Result<Changes, MachineError> {
        let own = self.account_id();
        let base_record = self.record_in(&group, base);
        let entry = self.groups.get(&group).ok_or(MachineError::UnknownGroup)?;
        if !entry.record.value.active {
            return Err(MachineError::UnknownGroup);
        }
        let parent = entry.log.tip().clone();
        let parent_id = entry.log.tip_id();
        let leaving = ops.iter().any(|op| matches!(op, Op::Leave) || *op == Op::Remove(own));
        let gk = GroupSealKey::generate(&mut self.rng);
        let key = (!leaving).then(|| *gk.to_bytes());
        let commit = Commit::on(parent_id, &parent, own, key.as_ref(), ops);
        let next = parent.apply(&commit)?;
        let mut log = entry.log.clone();
        log.receive(commit.clone(), &own)?;
        let mut record = base_record.unwrap_or_else(|| entry.record.value.clone());
        record.log = log.parts().encode();
        record.own_commits.push(commit.encode());
        if record.own_commits.len() > MAX_OWN_COMMITS {
            record.own_commits.remove(0);
        }
        let commit_id = commit.id();
        match key {
            Some(k) => Self::push_seal_key(&mut record, commit_id, k),
            None => {
                record.active = false;
                record.seal_keys.clear();
                record.chain = None;
                record.chain_holders.clear();
            }
        }
        let removed: Vec<AccountId> = parent.members.keys().filter(|a| !next.is_member(a)).copied().collect();
        let added: Vec<AccountId> = next.members.keys().filter(|a| !parent.is_member(a)).copied().collect();
        let mut changes = Changes::default();
        // A re-key follows a member who left with the parent's key: it goes pairwise.
        let rekey = commit.ops.contains(&Op::Rekey);
        if removed.is_empty() && !rekey {
            // Nobody loses the parent's key: the group channel carries it, sealed under
            // the parent's key, to the parent's members (this account's devices too).
            let content = Content {
                message_id: MessageId::new(now_ms, &mut self.ids),
                timestamp_ms: now_ms,
                access_key: None,
                kind: ContentKind::Group {
                    group,
                    body: GroupBody::Commit {
                        commit: commit.clone(),
                        seal_key: key,
                    },
                },
            };
            changes.outbox_add.push(OutboxItem::new(
                content.message_id,
                group_conversation(&group),
                content.encode(),
            ));
        } else {
            // Pairwise: the new key to those who stay (this account's other devices
            // included), a notice without it to those removed.
            for a in next
                .members
                .keys()
                .chain(std::iter::once(&own))
                .collect::<BTreeSet<_>>()
            {
                if added.contains(a) {
                    continue;
                }
                let body = GroupBody::Commit {
                    commit: commit.clone(),
                    seal_key: key.filter(|_| next.is_member(a)),
                };
                let item = self.group_item(*a, group, body, now_ms);
                changes.outbox_add.push(item);
            }
            for a in &removed {
                if *a == own {
                    continue;
                }
                let body = GroupBody::Commit {
                    commit: commit.clone(),
                    seal_key: None,
                };
                let item = self.group_item(*a, group, body, now_ms);
                changes.outbox_add.push(item);
            }
        }
        if let (Some(k), false) = (key, added.is_empty()) {
            let access = self.member_access(&record, next.members.keys().copied());
            let welcome = GroupBody::Welcome {
                root_id: log.tip_id(),
                root: log.tip().clone(),
                commits: Vec::new(),
                seal_key: k,
                access,
            };
            for a in &added {
                let item = self.group_item(*a, group, welcome.clone(), now_ms);
                changes.outbox_add.push(item);
            }
        }
        self.group_write(group, record, &mut changes);
        Ok(changes)
    }

    /// What this device does after its group changed (call it on [`Event::GroupChanged`]):
    /// makes again each of its own recent commits that lost a fork, unless it would no
    /// longer change the group or this account is no longer allowed to (docs/protocol.md
    /// §14.3); and, when the current state was made by a member who left (it kept the
    /// parent's key) and this account is its lowest admin, re-keys the group. Empty when
    /// there is nothing to do.
    pub fn group_followups(&mut self, group: GroupId, now_ms: u64) -> Result<Changes, MachineError> {
        let own = self.account_id();
        let Some(entry) = self.groups.get(&group) else {
            return Ok(Changes::default());
        };
        if !entry.record.value.active {
            return Ok(Changes::default());
        }
        let tip = entry.log.tip().clone();
        let mut record = entry.record.value.clone();
        let mut redo: Option<Vec<Op>> = None;
        let mut kept = Vec::new();
        for bytes in &record.own_commits {
            let Ok(c) = Commit::decode(bytes) else { continue };
            if c.parent_version.saturating_add(crate::group::MAX_FORK_DEPTH) < tip.version {
                continue; // It can no longer lose.
            }
            if entry.log.is_canonical(&c.id()) || redo.is_some() {
                kept.push(bytes.clone());
                continue;
            }
            // Lost: make it again on the current state if it still changes the group.
            let leaving = c.ops.iter().any(|op| matches!(op, Op::Leave) || *op == Op::Remove(own));
            let probe_key = (!leaving).then_some(&[0u8; 32]);
            let again = Commit::on(entry.log.tip_id(), &tip, own, probe_key, c.ops.clone());
            if let Ok(next) = tip.apply(&again)
                && (next.members != tip.members || next.title != tip.title)
            {
                redo = Some(c.ops.clone());
            }
        }
        let needs_rekey = entry
            .log
            .canonical()
            .last()
            .is_some_and(|(_, c)| c.key_commitment == NO_KEY)
            && tip.members.iter().find(|(_, r)| **r == Role::Admin).map(|(a, _)| *a) == Some(own)
            // One device of that account: the lowest listed.
            && self
                .own_device_list()
                .and_then(|l| l.devices().iter().map(|d| d.device_id).min())
                == Some(self.device_id());
        if redo.is_none() && !needs_rekey {
            if kept.len() != record.own_commits.len() {
                record.own_commits = kept;
                let mut changes = Changes::default();
                self.group_write(group, record, &mut changes);
                return Ok(changes);
            }
            return Ok(Changes::default());
        }
        // Drop the lost commits from the watch list first; change_group adds the new one.
        record.own_commits = kept;
        let mut changes = Changes::default();
        self.group_write(group, record, &mut changes);
        let ops = redo.unwrap_or_else(|| vec![Op::Rekey]);
        let more = self.change_group_from(group, ops, now_ms, &changes)?;
        Ok(more)
    }

    /// This account's device list gained a device: every group this account is in goes
    /// to its own devices as a welcome, so the new device knows the groups before the
    /// members' sender keys reach it. Existing devices ignore a welcome that is not newer
    /// than what they hold.
    pub fn welcome_own_devices(&mut self, now_ms: u64) -> Changes {
        let own = self.account_id();
        let mut changes = Changes::default();
        let active: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, e)| e.record.value.active)
            .map(|(id, _)| *id)
            .collect();
        for group in active {
            let Some(entry) = self.groups.get(&group) else { continue };
            let Some(seal_key) = self.seal_key_of(&group, &entry.log.tip_id()) else {
                continue;
            };
            let access = self.member_access(&entry.record.value, entry.log.tip().members.keys().copied());
            let welcome = GroupBody::Welcome {
                root_id: entry.log.tip_id(),
                root: entry.log.tip().clone(),
                commits: Vec::new(),
                seal_key,
                access,
            };
            let item = self.group_item(own, group, welcome, now_ms);
            changes.outbox_add.push(item);
        }
        changes
    }

    /// Writes a text to the group into the outbox and the group's conversation.
    pub fn queue_group_text(
        &mut self,
        group: GroupId,
        text: &str,
        now_ms: u64,
    ) -> Result<(Changes, StoredMessage), MachineError> {
        let item = ChatItem::Text {
            text: text.to_owned(),
            quote: None,
            expire_s: 0,
        };
        match self.queue_chat(super::Conversation::Group(group), item, now_ms)? {
            (changes, Some(message)) => Ok((changes, message)),
            (_, None) => Err(MachineError::Unsupported),
        }
    }

    // ---------------------------------------------------------------------------------
    // Sending in the group channel.

    /// Encrypts a group-channel item (a text, or a commit that removes nobody) once for
    /// the group: see [`GroupPlan`].
    pub fn prepare_group_send(&mut self, item: &OutboxItem, now_ms: u64) -> Result<GroupPlan, MachineError> {
        let content = Content::decode(&item.content)?;
        let ContentKind::Group { group, body } = &content.kind else {
            return Ok(GroupPlan::Drop {
                reason: "not group content",
            });
        };
        let Some(entry) = self.groups.get(group) else {
            return Ok(GroupPlan::Drop {
                reason: "unknown group",
            });
        };
        // A text goes under the current state's key to its members; a commit under its
        // parent's key to the parent's members.
        let (state, state_id) = match body {
            GroupBody::Text { .. } | GroupBody::Chat { .. } if entry.record.value.active => {
                (entry.log.tip().clone(), entry.log.tip_id())
            }
            GroupBody::Commit { commit, .. } => match self.state_of(group, &commit.parent) {
                Some(s) => (s, commit.parent),
                None => {
                    return Ok(GroupPlan::Drop {
                        reason: "the commit's parent is gone",
                    });
                }
            },
            _ => return Ok(GroupPlan::Drop { reason: "not a member" }),
        };
        let Some(key) = self.seal_key_of(group, &state_id) else {
            return Ok(GroupPlan::Drop {
                reason: "no key for the state",
            });
        };
        let own = self.account_id();
        let mut needs = Vec::new();
        let mut fan_out: Vec<PeerDevice> = Vec::new();
        for a in state.members.keys() {
            match self.lists.get(a) {
                Some(list) => fan_out.extend(list.devices().iter().map(|d| (*a, d.device_id))),
                None => needs.push(Need::DeviceList(*a)),
            }
        }
        if !needs.is_empty() {
            return Ok(GroupPlan::Need(needs));
        }
        let mut record = entry.record.value.clone();
        let mut changes = Changes::default();
        let fan_set: std::collections::HashSet<PeerDevice> = fan_out.iter().copied().collect();
        // A new chain when there is none, or when a device holding it left the fan-out.
        let stale = record.chain_holders.iter().any(|d| !fan_set.contains(d));
        let mut chain = match &record.chain {
            Some(p) if !stale => SenderKey::unpickle(p, &self.pickle_key)?,
            _ => {
                record.chain_holders.clear();
                SenderKey::generate(&mut self.rng)
            }
        };
        // After the choice: a new chain has no holders yet.
        let holders: std::collections::HashSet<PeerDevice> = record.chain_holders.iter().copied().collect();
        let me = (own, self.device_id());
        let missing: BTreeSet<AccountId> = fan_out
            .iter()
            .filter(|d| **d != me && !holders.contains(d))
            .map(|d| d.0)
            .collect();
        if !missing.is_empty() {
            let distribution = chain.distribution().encode().to_vec();
            for a in &missing {
                let id = distribution_item_id(b"Sotto-v1 sender key item", &chain.chain_id(), a);
                let content = Content {
                    message_id: id,
                    timestamp_ms: now_ms,
                    access_key: self.own_access_key(),
                    kind: ContentKind::Group {
                        group: *group,
                        body: GroupBody::SenderKey {
                            state_id,
                            distribution: distribution.clone(),
                        },
                    },
                };
                changes.outbox_add.push(OutboxItem::new(id, *a, content.encode()));
            }
            // This account's new devices learn the group from a welcome.
            if missing.contains(&own) && record.active {
                let entry = self.groups.get(group).ok_or(MachineError::UnknownGroup)?;
                let access = self.member_access(&record, entry.log.tip().members.keys().copied());
                let tip_key = self.seal_key_of(group, &entry.log.tip_id()).unwrap_or(key);
                let welcome = GroupBody::Welcome {
                    root_id: entry.log.tip_id(),
                    root: entry.log.tip().clone(),
                    commits: Vec::new(),
                    seal_key: tip_key,
                    access,
                };
                let id = distribution_item_id(b"Sotto-v1 group welcome item", &chain.chain_id(), &own);
                let content = Content {
                    message_id: id,
                    timestamp_ms: now_ms,
                    access_key: None,
                    kind: ContentKind::Group {
                        group: *group,
                        body: welcome,
                    },
                };
                changes.outbox_add.insert(0, OutboxItem::new(id, own, content.encode()));
            }
            record.chain = Some(chain.pickle(&self.pickle_key, &mut self.rng));
            self.group_write(*group, record, &mut changes);
            return Ok(GroupPlan::Wait { changes });
        }
        let message = chain
            .encrypt(&item.content, &mut self.rng)
            .map_err(MachineError::SenderKey)?;
        let body = GroupSealKey::from_bytes(&key).seal(CONTENT_SENDER_KEY, &message, &mut self.rng)?;
        record.chain = Some(chain.pickle(&self.pickle_key, &mut self.rng));
        let mut access: Vec<Access> = self
            .member_access(&record, state.members.keys().copied())
            .into_iter()
            .map(|(a, k)| Access {
                account_id: a,
                key: sotto_proto::AccessKey(k),
            })
            .collect();
        // The send names this account too (its other devices): present its own key.
        if let Some(k) = self.own_access_key() {
            access.push(Access {
                account_id: own,
                key: k,
            });
        }
        access.sort_by_key(|a| a.account_id);
        self.group_write(*group, record, &mut changes);
        let recipients = fan_out
            .into_iter()
            .map(|(account_id, device_id)| Recipient {
                account_id,
                device_id,
                head: Vec::new(),
            })
            .collect();
        Ok(GroupPlan::Ready {
            changes,
            body,
            recipients,
            access,
        })
    }

    /// The state with id `state_id` of a group, if its log keeps it.
    fn state_of(&self, group: &GroupId, state_id: &[u8; 32]) -> Option<GroupState> {
        let e = self.groups.get(group)?;
        if e.log.tip_id() == *state_id {
            return Some(e.log.tip().clone());
        }
        if e.log.root_id() == *state_id {
            return Some(e.log.root().clone());
        }
        let mut state = e.log.root().clone();
        for (id, c) in e.log.canonical() {
            state = state.apply(c).ok()?;
            if id == *state_id {
                return Some(state);
            }
        }
        None
    }

    /// The relay stored a pairwise sender-key distribution to `item.to`: its listed
    /// devices hold this device's chain. Returns the group write, if any.
    pub(super) fn distribution_sent(&self, item: &OutboxItem, changes: &mut Changes) {
        let Ok(content) = Content::decode(&item.content) else {
            return;
        };
        let ContentKind::Group {
            group,
            body: GroupBody::SenderKey { distribution, .. },
        } = content.kind
        else {
            return;
        };
        let Some(mut record) = self.record_in(&group, changes) else {
            return;
        };
        let Ok(d) = SenderKeyDistribution::decode(&distribution) else {
            return;
        };
        let current = record
            .chain
            .as_ref()
            .and_then(|p| SenderKey::unpickle(p, &self.pickle_key).ok())
            .map(|c| c.chain_id());
        if current != Some(d.chain_id()) {
            return;
        }
        let me = (self.account_id(), self.device_id());
        if let Some(list) = self.lists.get(&item.to) {
            let held: std::collections::HashSet<PeerDevice> = record.chain_holders.iter().copied().collect();
            for dev in list.devices() {
                let peer = (item.to, dev.device_id);
                if peer != me && !held.contains(&peer) {
                    record.chain_holders.push(peer);
                }
            }
        }
        self.group_write(group, record, changes);
    }

    // ---------------------------------------------------------------------------------
    // Receiving.

    /// Processes a group envelope (docs/protocol.md §7A, §14.6).
    pub(super) fn receive_group(
        &mut self,
        seq: u64,
        digest: EnvelopeDigest,
        envelope: &[u8],
        refreshed: bool,
    ) -> Inbound {
        let found = self.groups.iter().find_map(|(g, e)| {
            e.keys
                .iter()
                .find(|(_, k)| k.matches(envelope))
                .map(|(s, k)| (*g, *s, k.clone()))
        });
        let Some((group, _state_id, key)) = found else {
            return self.undecryptable(seq, digest, None, UndecryptableCause::NoGroupKey);
        };
        let opened = match key.open(envelope) {
            Ok(o) => o,
            Err(e) => return self.undecryptable(seq, digest, None, UndecryptableCause::Envelope(e)),
        };
        if opened.content_type != CONTENT_SENDER_KEY {
            return self.undecryptable(
                seq,
                digest,
                None,
                UndecryptableCause::UnknownContentType(opened.content_type),
            );
        }
        let Ok(chain_id) = SenderKeyReceiver::message_chain_id(&opened.content) else {
            return self.undecryptable(
                seq,
                digest,
                None,
                UndecryptableCause::SenderKey(SenderKeyError::UnknownChain),
            );
        };
        let own_chain = self
            .groups
            .get(&group)
            .and_then(|e| e.record.value.chain.as_ref())
            .and_then(|p| SenderKey::unpickle(p, &self.pickle_key).ok())
            .map(|c| c.chain_id());
        if own_chain == Some(chain_id) {
            // This device's own message, delivered back by the fan-out.
            return Inbound::Done {
                changes: self.seq_changes(seq, digest),
                events: Vec::new(),
            };
        }
        let Some(sk_id) = self.chains.get(&chain_id).copied().filter(|(g, _)| *g == group) else {
            return self.undecryptable(
                seq,
                digest,
                None,
                UndecryptableCause::SenderKey(SenderKeyError::UnknownChain),
            );
        };
        let peer = sk_id.1;
        // The sending device must still be listed by its account, and the account a member.
        match self
            .lists
            .get(&peer.0)
            .map(|l| l.devices().iter().any(|d| d.device_id == peer.1))
        {
            Some(true) => {}
            _ if !refreshed => return Inbound::Need(Need::DeviceList(peer.0)),
            _ => return self.undecryptable(seq, digest, Some(peer), UndecryptableCause::SenderNotListed),
        }
        // Only a member of the current state may write to the group: checked before any
        // key is derived, so a former member's chain changes nothing.
        if !self.groups.get(&group).is_some_and(|e| e.log.tip().is_member(&peer.0)) {
            return self.undecryptable(seq, digest, Some(peer), UndecryptableCause::WrongSender);
        }
        let set = self
            .sender_keys
            .get(&sk_id)
            .map(|s| s.value.clone())
            .unwrap_or_default();
        let mut last = SenderKeyError::UnknownChain;
        let mut plain = None;
        let mut chains = set.chains.clone();
        for p in chains.iter_mut() {
            let Ok(mut rx) = SenderKeyReceiver::unpickle(p, &self.pickle_key) else {
                continue;
            };
            if rx.chain_id() != chain_id {
                continue;
            }
            match rx.decrypt(&opened.content) {
                Ok(pt) => {
                    *p = rx.pickle(&self.pickle_key, &mut self.rng);
                    plain = Some(pt);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let Some(plain) = plain else {
            let cause = if matches!(last, SenderKeyError::Duplicate { .. }) {
                UndecryptableCause::Duplicate
            } else {
                UndecryptableCause::SenderKey(last)
            };
            return self.undecryptable(seq, digest, Some(peer), cause);
        };
        let mut changes = self.seq_changes(seq, digest);
        changes.sender_keys.push((
            sk_id,
            Write {
                expected: self.sender_keys.get(&sk_id).map(|s| s.version),
                value: SenderKeySet { chains },
            },
        ));
        let mut events = Vec::new();
        // Content that is refused leaves the chain as it was.
        let content = match Content::decode(&plain) {
            Ok(c) => c,
            Err(e) => return self.undecryptable(seq, digest, Some(peer), UndecryptableCause::Content(e)),
        };
        match content.kind {
            ContentKind::Group { group: g, body } if g == group && !matches!(body, GroupBody::Commit { .. }) => {
                let item = match body {
                    GroupBody::Text { text } => ChatItem::Text {
                        text,
                        quote: None,
                        expire_s: 0,
                    },
                    GroupBody::Chat { item } => item,
                    GroupBody::Unsupported { sub } => ChatItem::Unsupported { tag: sub },
                    _ => return self.undecryptable(seq, digest, Some(peer), UndecryptableCause::WrongSender),
                };
                let status = if peer.0 == self.account_id() {
                    MessageStatus::SentElsewhere
                } else {
                    MessageStatus::Received
                };
                // A message seen before (sent again under a later iteration) is not shown
                // again; the chain still moves past it.
                let from = super::chat::Incoming {
                    conversation: super::Conversation::Group(group),
                    peer,
                    id: content.message_id,
                    timestamp_ms: content.timestamp_ms,
                    status,
                };
                self.accept_chat(from, item, &mut changes, &mut events);
            }
            ContentKind::Group {
                group: g,
                body: GroupBody::Commit { commit, seal_key },
            } if g == group => {
                self.take_commit(group, commit, seal_key, peer.0, &mut changes, &mut events);
            }
            _ => return self.undecryptable(seq, digest, Some(peer), UndecryptableCause::WrongSender),
        }
        let pinned = self.lists.get(&peer.0).map_or(0, |l| l.version());
        changes.pins.push((peer.0, pinned));
        Inbound::Done { changes, events }
    }

    /// A commit from `sender` (the authenticated sender of what carried it), with the new
    /// state's key when this account stays a member.
    fn take_commit(
        &self,
        group: GroupId,
        commit: Commit,
        seal_key: Option<[u8; 32]>,
        sender: AccountId,
        changes: &mut Changes,
        events: &mut Vec<Event>,
    ) {
        let Some(entry) = self.groups.get(&group) else { return };
        let Some(mut record) = self.record_in(&group, changes) else {
            return;
        };
        if !record.active {
            return;
        }
        if let Some(k) = &seal_key
            && crate::group::key_commitment(k) != commit.key_commitment
        {
            events.push(Event::GroupChangeRejected {
                group,
                error: GroupError::BadKeyCommitment,
            });
            return;
        }
        let mut log = match LogParts::decode(&record.log).and_then(GroupLog::from_parts) {
            Ok(l) => l,
            Err(_) => entry.log.clone(),
        };
        let id = commit.id();
        let parent = commit.parent;
        let no_key = commit.key_commitment == NO_KEY;
        let received = match log.receive(commit, &sender) {
            Ok(Received::Duplicate) => return,
            Ok(r) => r,
            Err(error) => {
                events.push(Event::GroupChangeRejected { group, error });
                return;
            }
        };
        let tip_id = log.tip_id();
        let key = match seal_key {
            Some(k) => Some(k),
            // The author left: the state keeps its parent's key until an admin re-keys.
            None if no_key => record.seal_keys.iter().find(|(s, _)| *s == parent).map(|(_, k)| *k),
            None => None,
        };
        if let Some(k) = key {
            if received == Received::Pending {
                // A commit waiting for its parent gets a key only where there is room:
                // it never pushes out the keys of states this device holds.
                if record.seal_keys.len() < MAX_SEAL_KEYS && !record.seal_keys.iter().any(|(s, _)| *s == id) {
                    record.seal_keys.push((id, k));
                }
            } else {
                Self::push_seal_key_keeping(&mut record, id, k, &tip_id);
            }
        }
        record.log = log.parts().encode();
        if !log.tip().is_member(&self.account_id()) {
            record.active = false;
            record.seal_keys.clear();
            record.chain = None;
            record.chain_holders.clear();
        }
        self.group_write(group, record, changes);
        events.push(Event::GroupChanged { group });
    }

    /// Group content that came over a pairwise session from `peer`.
    pub(super) fn accept_group(
        &mut self,
        peer: PeerDevice,
        content: Content,
        changes: &mut Changes,
        events: &mut Vec<Event>,
    ) -> bool {
        let ContentKind::Group { group, body } = content.kind else {
            return true;
        };
        match body {
            GroupBody::Welcome {
                root_id,
                root,
                commits,
                seal_key,
                access,
            } => {
                if root.id != group || (root.version == 0 && root.hash() != root_id) {
                    return true;
                }
                let own = self.account_id();
                // Who may welcome: for a group this device holds and is in, only its own
                // account's devices (a newer state); for one it left or was removed
                // from, an admin of the last state it holds; for a new group, an admin
                // of the state the welcome describes (an invitation).
                let allowed = match self.groups.get(&group) {
                    Some(e) if e.record.value.active => peer.0 == own && e.log.tip().version < root.version,
                    Some(e) => e.log.tip().is_admin(&peer.0),
                    None => true,
                };
                if !allowed {
                    return true;
                }
                let Ok(mut log) = GroupLog::new(root_id, root) else {
                    return true;
                };
                for c in commits {
                    let author = c.author;
                    if log.receive(c, &author).is_err() {
                        return true;
                    }
                }
                if (!log.tip().is_admin(&peer.0) && peer.0 != own) || !log.tip().is_member(&own) {
                    return true;
                }
                let tip = log.tip();
                let mut member_access: Vec<(AccountId, [u8; 32])> = access
                    .into_iter()
                    .filter(|(a, _)| tip.is_member(a) && *a != own)
                    .collect();
                if let Some(k) = content.access_key
                    && peer.0 != own
                {
                    member_access.retain(|(a, _)| *a != peer.0);
                    member_access.push((peer.0, k.0));
                }
                member_access.truncate(crate::group::MAX_MEMBERS);
                let record = GroupRecord {
                    log: log.parts().encode(),
                    seal_keys: vec![(log.tip_id(), seal_key)],
                    chain: None,
                    chain_holders: Vec::new(),
                    member_access,
                    active: true,
                    own_commits: Vec::new(),
                    expire_s: 0,
                    timer_at_ms: 0,
                    read_up_to: 0,
                };
                self.group_write(group, record, changes);
                events.push(Event::GroupChanged { group });
            }
            GroupBody::Commit { commit, seal_key } => {
                self.take_commit(group, commit, seal_key, peer.0, changes, events);
            }
            GroupBody::SenderKey { distribution, .. } => {
                let Some(e) = self.groups.get(&group) else { return true };
                if !e.record.value.active || !e.log.tip().is_member(&peer.0) {
                    return true;
                }
                let Ok(d) = SenderKeyDistribution::decode(&distribution) else {
                    return true;
                };
                let sk_id: SenderKeyId = (group, peer);
                // A chain id another member device already distributed is refused: a
                // member must not be able to take over another's chain.
                if self.chains.get(&d.chain_id()).is_some_and(|owner| *owner != sk_id) {
                    return true;
                }
                let mut set = changes
                    .sender_keys
                    .iter()
                    .find(|(id, _)| *id == sk_id)
                    .map(|(_, w)| w.value.clone())
                    .or_else(|| self.sender_keys.get(&sk_id).map(|s| s.value.clone()))
                    .unwrap_or_default();
                let known = set.chains.iter().any(|p| {
                    SenderKeyReceiver::unpickle(p, &self.pickle_key).is_ok_and(|r| r.chain_id() == d.chain_id())
                });
                if !known {
                    let rx = SenderKeyReceiver::new(&d);
                    set.chains.insert(0, rx.pickle(&self.pickle_key, &mut self.rng));
                    set.chains.truncate(MAX_SENDER_CHAINS);
                    changes.sender_keys.retain(|(id, _)| *id != sk_id);
                    changes.sender_keys.push((
                        sk_id,
                        Write {
                            expected: self.sender_keys.get(&sk_id).map(|s| s.version),
                            value: set,
                        },
                    ));
                }
                if let Some(k) = content.access_key
                    && let Some(mut record) = self.record_in(&group, changes)
                    && !record.member_access.iter().any(|(a, v)| *a == peer.0 && *v == k.0)
                {
                    let tip = e.log.tip();
                    record.member_access.retain(|(a, _)| *a != peer.0 && tip.is_member(a));
                    record.member_access.push((peer.0, k.0));
                    record.member_access.truncate(crate::group::MAX_MEMBERS);
                    self.group_write(group, record, changes);
                }
            }
            GroupBody::Text { .. } | GroupBody::Chat { .. } | GroupBody::Unsupported { .. } => {
                events.push(Event::Undecryptable {
                    sender: Some(peer),
                    cause: UndecryptableCause::WrongSender,
                })
            }
        }
        true
    }

    /// Updates the group state after a commit of `changes`.
    pub(super) fn apply_groups(&mut self, changes: &Changes, committed: &crate::store::Committed) {
        for ((id, w), v) in changes.groups.iter().zip(&committed.group_versions) {
            let record = Versioned {
                version: *v,
                value: w.value.clone(),
            };
            if let Ok(entry) = GroupEntry::load(record) {
                self.groups.insert(*id, entry);
            }
        }
        for ((id, w), v) in changes.sender_keys.iter().zip(&committed.sender_key_versions) {
            for p in &w.value.chains {
                if let Ok(rx) = SenderKeyReceiver::unpickle(p, &self.pickle_key) {
                    self.chains.entry(rx.chain_id()).or_insert(*id);
                }
            }
            self.sender_keys.insert(
                *id,
                Versioned {
                    version: *v,
                    value: w.value.clone(),
                },
            );
        }
    }

    /// The chain index from the stored sender-key sets.
    pub(super) fn index_chains(
        pickle_key: &sotto_crypto::PickleKey,
        sets: &HashMap<SenderKeyId, Versioned<SenderKeySet>>,
    ) -> HashMap<[u8; 16], SenderKeyId> {
        let mut out = HashMap::new();
        for (id, s) in sets {
            for p in &s.value.chains {
                if let Ok(rx) = SenderKeyReceiver::unpickle(p, pickle_key) {
                    out.insert(rx.chain_id(), *id);
                }
            }
        }
        out
    }
}
