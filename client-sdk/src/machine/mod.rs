//! The sans-IO client machine: account and device state, prekeys, per-device sessions
//! (Sesame), fan-out, device-list pinning and inbound envelope processing.
//!
//! No socket, file, clock or OS randomness: time is an argument and randomness comes
//! from two `ChaCha20Rng`s the caller seeds from the OS: one for keys, salts and
//! ephemerals, and a separate one for values others see in clear (message ids), so that
//! nothing a peer receives is output of the generator that makes secrets.
//!
//! # Call order
//!
//! 1. [`Machine::new_account`] (first run) returns [`Changes`] to commit; afterwards, and
//!    on every later start, load the store into a [`Snapshot`] and call [`Machine::load`].
//! 2. Every operation (`prepare_send`, `receive_envelope`, `receive_device_list`,
//!    `receive_bundles`, `refill_prekeys`, `queue_text`) returns [`Changes`] and leaves the
//!    machine's state untouched. The caller commits them with [`crate::store::Store::commit`]
//!    and, only if that succeeded, calls [`Machine::apply`]. On
//!    [`crate::store::StoreError::Conflict`] it reloads the machine from the store and
//!    retries; nothing advanced.
//! 3. Outputs that need the network are [`Need`] values: fetch what they name and feed it
//!    back with `receive_device_list` / `receive_bundles`, then retry.
//!
//! # Layout
//!
//! This module holds the state ([`Machine`]), bootstrap, loading and [`Machine::apply`].
//! Each concern adds its own `impl Machine` block in a submodule: `prekeys`, `devices`
//! (device lists and pinning), `sessions` (Sesame and fan-out), `outbound` (outbox,
//! receipts, send outcomes) and `inbound` (envelopes, link content, the pending queue).
//! `outputs` holds the public result types. A new concern (groups) is a new submodule
//! with its own `impl Machine` block and, if it keeps state, a field and its `apply` arm.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use rand_chacha::ChaCha20Rng;
use rand_core::RngCore;
use sotto_crypto::pickle::Pickle;
use sotto_crypto::{
    AccountId, AccountKey, Device, DeviceId, DeviceList, DeviceListError, ListKey, PickleKey, SafetyNumber,
    SignedDeviceList,
};
use sotto_proto::PreKeyUpload;

use crate::store::{
    AccountRecord, Changes, Committed, ConversationRecord, EnvelopeDigest, MAX_PROCESSED_ENVELOPES, MessageKey,
    PeerDevice, PendingInbound, PreKeyId, SessionSet, Versioned, Write,
};

mod access;
mod chat;
mod devices;
mod groups;
mod inbound;
mod outbound;
mod outputs;
mod prekeys;
mod profile;
mod sessions;

pub use chat::{
    Conversation, ConversationSettings, EphemeralFrame, EphemeralIn, MAX_DELIVERY_RECEIPT_GROUP, MAX_PRESENCE_CONTACTS,
    MAX_TYPING_GROUP, expiry,
};
pub use groups::{CONTENT_SENDER_KEY, GroupInfo, GroupPlan};
pub use inbound::open_ahead;
pub use outbound::{RetryPolicy, record_failure};
pub use outputs::{
    CONTENT_LINK_ACCEPT, CONTENT_LINK_REQUEST, ConnectionState, DisconnectCause, Event, Inbound, MachineError, Need,
    SendPlan, StopCause, UndecryptableCause,
};
pub use prekeys::{
    KEM_BATCH, KEM_LOW, LAST_RESORT_KEM_ID, MAX_PREKEY_AGE_MS, MAX_PREKEY_AHEAD_MS, ONE_TIME_BATCH, ONE_TIME_LOW,
    PENDING_SESSION_MAX_AGE_MS, PREKEY_GRACE_MS, PREKEY_ROTATION_MS, bundle_is_fresh, prekey_created_ms,
};
use prekeys::{kem_prekeys, last_resort_prekey, one_time_prekeys, signed_prekey};
pub use profile::{PROFILE_FETCH_BATCH, ProfileFetch};

/// One active plus up to ten inactive sessions per remote device.
pub const MAX_SESSIONS_PER_DEVICE: usize = 11;
/// How many message ids are remembered for deduplication (the store also refuses a
/// second insert of an id, whatever its age).
pub const SEEN_IDS: usize = 20_000;

/// Everything the machine loads from a store.
#[derive(Default)]
pub struct Snapshot {
    /// The account row.
    pub account: Option<Versioned<AccountRecord>>,
    /// Every session row.
    pub sessions: Vec<(PeerDevice, Versioned<SessionSet>)>,
    /// Every prekey secret.
    pub prekeys: Vec<(PreKeyId, Vec<u8>)>,
    /// Every pinned device list.
    pub device_lists: Vec<(AccountId, Vec<u8>)>,
    /// Every conversation.
    pub conversations: Vec<ConversationRecord>,
    /// The keys of the most recent messages, newest first.
    pub recent_ids: Vec<MessageKey>,
    /// The digests of the most recently processed envelopes, newest first.
    pub recent_envelopes: Vec<EnvelopeDigest>,
    /// The pending-inbound table, oldest first.
    pub pending: Vec<PendingInbound>,
    /// Every group row.
    pub groups: Vec<(crate::group::GroupId, Versioned<crate::store::GroupRecord>)>,
    /// Every sender-key row.
    pub sender_keys: Vec<(crate::store::SenderKeyId, Versioned<crate::store::SenderKeySet>)>,
}

/// Bounded set of recently seen values (message keys, envelope digests).
struct Seen<T> {
    order: VecDeque<T>,
    set: HashSet<T>,
    cap: usize,
}

impl<T: Copy + Eq + std::hash::Hash> Seen<T> {
    fn new(cap: usize) -> Self {
        Self {
            order: VecDeque::new(),
            set: HashSet::new(),
            cap,
        }
    }
    fn contains(&self, id: &T) -> bool {
        self.set.contains(id)
    }
    fn insert(&mut self, id: T) {
        if self.set.insert(id) {
            self.order.push_back(id);
            if self.order.len() > self.cap
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

/// The client state machine. See the module docs for the call order.
pub struct Machine {
    rng: ChaCha20Rng,
    pickle_key: PickleKey,
    /// Only on the first device, until the recovery key is exported (docs/protocol.md §12A).
    account_key: Option<AccountKey>,
    /// On devices that hold it; it signs lists only while its epoch is the pinned one.
    list_key: Option<ListKey>,
    /// Shared with the threads that open sealed envelopes ahead ([`Machine::device_keys`]).
    device: std::sync::Arc<Device>,
    account: Versioned<AccountRecord>,
    lists: HashMap<AccountId, DeviceList>,
    sessions: HashMap<PeerDevice, Versioned<SessionSet>>,
    prekeys: HashMap<PreKeyId, Vec<u8>>,
    conversations: BTreeMap<AccountId, ConversationRecord>,
    seen: Seen<MessageKey>,
    /// Non-secret generator: message ids.
    ids: ChaCha20Rng,
    /// Digests of processed envelopes: a second delivery of the same bytes is skipped,
    /// whatever its seq (a relay may number a mailbox again from 1).
    processed: Seen<EnvelopeDigest>,
    /// The pending-inbound table (digest and claimed sender), oldest first.
    pending: Vec<(EnvelopeDigest, AccountId)>,
    /// The groups, with their logs and seal keys.
    groups: HashMap<crate::group::GroupId, groups::GroupEntry>,
    /// Members' sender-key chains, per group and device.
    sender_keys: HashMap<crate::store::SenderKeyId, Versioned<crate::store::SenderKeySet>>,
    /// Which member device and group each known chain id belongs to.
    chains: HashMap<[u8; 16], crate::store::SenderKeyId>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("device", &self.device)
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

/// What a new account's first run produces.
pub struct NewAccount {
    /// Commit these.
    pub changes: Changes,
    /// Then register this list (`PUT /v1/accounts/{a}/device-list`)...
    pub device_list: DeviceList,
    /// ...and upload these prekeys (`PUT /v1/prekeys`).
    pub prekeys: PreKeyUpload,
}

impl std::fmt::Debug for NewAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewAccount")
            .field("device_list", &self.device_list)
            .finish_non_exhaustive()
    }
}

impl Machine {
    /// A new account with its first device: the account key, device keys, device list
    /// version 1 and a first set of prekeys. Commit `changes`, then [`Machine::load`].
    pub fn new_account(
        relay_url: &str,
        now_ms: u64,
        rng: &mut ChaCha20Rng,
        pickle_key: &PickleKey,
    ) -> Result<NewAccount, MachineError> {
        let account_key = AccountKey::generate(rng);
        let device = Device::generate(account_key.account_id(), DeviceId(1), rng);
        let list_key = account_key.list_key(1)?;
        let device_list = list_key.sign_device_list(1, now_ms, vec![device.entry()], &[DeviceId(1)])?;
        let mut access_key = [0u8; 32];
        rng.fill_bytes(&mut access_key);
        Self::first_state(
            Some(account_key),
            Some(list_key),
            Some(access_key),
            device,
            device_list,
            relay_url,
            now_ms,
            rng,
            pickle_key,
        )
    }

    /// The state of a device that was just added to an existing account (linking): this
    /// device's keys. The list key (when granted) and the account's access key arrive
    /// with the link answer.
    pub fn new_linked_device(
        device: Device,
        device_list: DeviceList,
        relay_url: &str,
        now_ms: u64,
        rng: &mut ChaCha20Rng,
        pickle_key: &PickleKey,
    ) -> Result<NewAccount, MachineError> {
        Self::first_state(
            None,
            None,
            None,
            device,
            device_list,
            relay_url,
            now_ms,
            rng,
            pickle_key,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn first_state(
        account_key: Option<AccountKey>,
        list_key: Option<ListKey>,
        access_key: Option<[u8; 32]>,
        device: Device,
        device_list: DeviceList,
        relay_url: &str,
        now_ms: u64,
        rng: &mut ChaCha20Rng,
        pickle_key: &PickleKey,
    ) -> Result<NewAccount, MachineError> {
        let mut changes = Changes::default();
        let mut upload = PreKeyUpload::default();
        let signed_prekey_id = signed_prekey(&device, now_ms, None, rng, pickle_key, &mut changes, &mut upload);
        one_time_prekeys(&device, 1, ONE_TIME_BATCH, rng, pickle_key, &mut changes, &mut upload);
        kem_prekeys(&device, 1, KEM_BATCH, rng, pickle_key, &mut changes, &mut upload);
        last_resort_prekey(&device, now_ms, None, rng, pickle_key, &mut changes, &mut upload);
        changes.account = Some(Write {
            expected: None,
            value: AccountRecord {
                account_key: account_key.as_ref().map(|ak| ak.pickle(pickle_key, rng)),
                device: device.pickle(pickle_key, rng),
                relay_url: relay_url.to_owned(),
                signed_prekey_id,
                next_one_time_id: 1 + ONE_TIME_BATCH,
                next_kem_id: 1 + KEM_BATCH,
                last_seq: 0,
                mailbox_epoch: None,
                prekeys_unsent: false,
                access_key,
                access_sent: None,
                list_key: list_key.as_ref().map(|lk| lk.pickle(pickle_key, rng)),
                profile: None,
                profile_key: None,
                profile_uploaded_ms: 0,
            },
        });
        changes
            .device_lists
            .push((device.account_id(), device_list.signed().as_bytes().to_vec()));
        Ok(NewAccount {
            changes,
            device_list,
            prekeys: upload,
        })
    }

    /// Loads the machine from a store snapshot. `rng` makes every secret (keys, salts,
    /// ephemerals) and `ids` the message ids; seed both from the OS, independently.
    pub fn load(
        snapshot: Snapshot,
        pickle_key: PickleKey,
        rng: ChaCha20Rng,
        ids: ChaCha20Rng,
    ) -> Result<Self, MachineError> {
        let account = snapshot.account.ok_or(MachineError::NoAccount)?;
        let account_key = match &account.value.account_key {
            Some(p) => Some(AccountKey::unpickle(p, &pickle_key)?),
            None => None,
        };
        let list_key = match &account.value.list_key {
            Some(p) => Some(ListKey::unpickle(p, &pickle_key)?),
            None => None,
        };
        let device = Device::unpickle(&account.value.device, &pickle_key)?;
        let mut lists = HashMap::new();
        for (a, bytes) in snapshot.device_lists {
            let list = SignedDeviceList::from_bytes(&bytes)
                .map_err(DeviceListError::from)?
                .verify(&a)?;
            lists.insert(a, list);
        }
        let mut seen = Seen::new(SEEN_IDS);
        for id in snapshot.recent_ids.into_iter().rev() {
            seen.insert(id);
        }
        let mut processed = Seen::new(MAX_PROCESSED_ENVELOPES);
        for d in snapshot.recent_envelopes.into_iter().rev() {
            processed.insert(d);
        }
        let mut groups = HashMap::new();
        for (id, record) in snapshot.groups {
            groups.insert(id, groups::GroupEntry::load(record)?);
        }
        let sender_keys: HashMap<_, _> = snapshot.sender_keys.into_iter().collect();
        let chains = Self::index_chains(&pickle_key, &sender_keys);
        Ok(Self {
            rng,
            pickle_key,
            account_key,
            list_key,
            device: std::sync::Arc::new(device),
            account,
            lists,
            sessions: snapshot.sessions.into_iter().collect(),
            prekeys: snapshot.prekeys.into_iter().collect(),
            conversations: snapshot.conversations.into_iter().map(|c| (c.peer, c)).collect(),
            seen,
            ids,
            processed,
            pending: snapshot.pending.iter().map(|p| (p.digest, p.sender)).collect(),
            groups,
            sender_keys,
            chains,
        })
    }

    /// Updates the cached state after `changes` were committed.
    pub fn apply(&mut self, changes: &Changes, committed: &Committed) {
        if let (Some(w), Some(v)) = (&changes.account, committed.account_version) {
            // The keys follow the record: a list key stored or replaced (linking,
            // recovery), the account key dropped once the recovery key was exported.
            if w.value.account_key != self.account.value.account_key {
                self.account_key = w
                    .value
                    .account_key
                    .as_ref()
                    .and_then(|p| AccountKey::unpickle(p, &self.pickle_key).ok());
            }
            if w.value.list_key != self.account.value.list_key {
                self.list_key = w
                    .value
                    .list_key
                    .as_ref()
                    .and_then(|p| ListKey::unpickle(p, &self.pickle_key).ok());
            }
            self.account = Versioned {
                version: v,
                value: w.value.clone(),
            };
        }
        for ((peer, w), v) in changes.sessions.iter().zip(&committed.session_versions) {
            self.sessions.insert(
                *peer,
                Versioned {
                    version: *v,
                    value: w.value.clone(),
                },
            );
        }
        for id in &changes.prekeys_removed {
            self.prekeys.remove(id);
        }
        for (id, p) in &changes.prekeys_added {
            self.prekeys.insert(*id, p.clone());
        }
        for (a, bytes) in &changes.device_lists {
            if let Ok(list) = SignedDeviceList::from_bytes(bytes)
                .map_err(DeviceListError::from)
                .and_then(|s| s.verify(a))
            {
                self.lists.insert(*a, list);
            }
        }
        for peer in &changes.conversations_removed {
            self.conversations.remove(peer);
        }
        for c in &changes.conversations {
            self.conversations.insert(c.peer, c.clone());
        }
        for m in &changes.messages {
            self.seen.insert(m.key());
        }
        for d in &changes.envelopes {
            self.processed.insert(*d);
        }
        for p in &changes.pending_add {
            if !self.pending.iter().any(|(d, _)| *d == p.digest) {
                self.pending.push((p.digest, p.sender));
            }
        }
        self.pending.retain(|(d, _)| !changes.pending_remove.contains(d));
        self.apply_groups(changes, committed);
    }

    /// This account's id.
    pub fn account_id(&self) -> AccountId {
        self.device.account_id()
    }

    /// This device's id.
    pub fn device_id(&self) -> DeviceId {
        self.device.device_id()
    }

    /// This device's keys (for relay authentication).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The account key, on the first device until the recovery key is exported.
    pub fn account_key(&self) -> Option<&AccountKey> {
        self.account_key.as_ref()
    }

    /// True when this device holds the account key.
    pub fn has_account_key(&self) -> bool {
        self.account_key.is_some()
    }

    /// The list key, when this device holds the one of the pinned list's epoch.
    pub fn list_key(&self) -> Option<&ListKey> {
        let own = self.own_device_list()?;
        self.list_key
            .as_ref()
            .filter(|lk| lk.epoch() == own.epoch() && lk.public_key() == own.list_key())
    }

    /// True when this device holds the current list key and the list marks it so: it
    /// can link devices, and remove those that do not hold the list key.
    pub fn can_manage_devices(&self) -> bool {
        self.list_key().is_some()
            && self
                .own_device_list()
                .is_some_and(|l| l.holds_list_key(self.device_id()))
    }

    /// The relay URL the account was created with.
    pub fn relay_url(&self) -> &str {
        &self.account.value.relay_url
    }

    /// The highest processed mailbox seq.
    pub fn last_seq(&self) -> u64 {
        self.account.value.last_seq
    }

    /// The pinned device list of an account.
    pub fn device_list(&self, account: &AccountId) -> Option<&DeviceList> {
        self.lists.get(account)
    }

    /// This account's pinned device list.
    pub fn own_device_list(&self) -> Option<&DeviceList> {
        self.lists.get(&self.account_id())
    }

    /// The conversations (contacts and message requests).
    pub fn conversations(&self) -> impl Iterator<Item = &AccountId> {
        self.conversations.keys()
    }

    /// One conversation's record.
    pub fn conversation(&self, peer: &AccountId) -> Option<&ConversationRecord> {
        self.conversations.get(peer)
    }

    /// Every 1:1 conversation's record.
    pub fn conversation_records(&self) -> impl Iterator<Item = &ConversationRecord> {
        self.conversations.values()
    }

    /// The safety number with a contact whose device list is pinned.
    pub fn safety_number(&self, contact: &AccountId) -> Option<SafetyNumber> {
        let theirs = self.lists.get(contact)?;
        let ours = self.own_device_list()?.account_key();
        Some(SafetyNumber::new(&ours, &theirs.account_key()))
    }

    /// The machine's secret generator (keys, salts, ephemerals, link secrets). Never
    /// use it for values sent in clear.
    pub fn rng(&mut self) -> &mut ChaCha20Rng {
        &mut self.rng
    }

    /// The machine's non-secret generator (message ids).
    pub fn id_rng(&mut self) -> &mut ChaCha20Rng {
        &mut self.ids
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;
