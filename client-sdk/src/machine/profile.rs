//! Profiles (docs/protocol.md §15.9): this account's profile, encrypted under its profile
//! key and stored on the relay; the key, announced to accepted contacts and this
//! account's own devices; and the contacts' profiles, fetched with their keys.
//!
//! The order that keeps a contact from fetching what is not there yet: a profile is
//! uploaded first ([`Machine::profile_upload`]), and announced only once the relay
//! confirmed it ([`Machine::profile_uploaded`]). Every announcement carries the
//! `updated_ms` of the profile the relay holds, and the newest announcement wins, on a
//! contact's device and on this account's other devices alike.

use rand_core::RngCore;
use sotto_crypto::{AccountId, ProfileKey};
use sotto_proto::ProfileUpload;

use super::{Machine, MachineError};
use crate::content::{Content, ContentKind, MAX_AVATAR_LEN, MAX_PROFILE_NAME_LEN, decode_profile, encode_profile};
use crate::ids::MessageId;
use crate::store::{AccountRecord, Changes, OutboxItem, Profile, Write};

/// The most profiles one round fetches ([`Machine::profiles_to_fetch`]).
pub const PROFILE_FETCH_BATCH: usize = 16;

/// A profile to fetch: whose, with which key, and the `updated_ms` announced.
#[derive(Clone, PartialEq, Eq)]
pub struct ProfileFetch {
    /// The account whose profile it is (possibly this one: set on another device).
    pub account: AccountId,
    /// The profile key it is encrypted under.
    pub key: [u8; 32],
    /// The `updated_ms` announced with the key.
    pub wanted_ms: u64,
}

/// Leaves the key out.
impl std::fmt::Debug for ProfileFetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileFetch")
            .field("account", &self.account)
            .field("wanted_ms", &self.wanted_ms)
            .finish_non_exhaustive()
    }
}

impl Machine {
    /// The account record as `changes` leave it.
    fn account_in<'a>(&'a self, changes: &'a Changes) -> &'a AccountRecord {
        changes.account.as_ref().map_or(&self.account.value, |w| &w.value)
    }

    fn write_account(&self, changes: &mut Changes, record: AccountRecord) {
        changes.account = Some(Write {
            expected: Some(self.account.version),
            value: record,
        });
    }

    /// Sets this account's profile. It goes to the relay, encrypted under the profile key
    /// (made now if the account has none), and then the key goes to every contact this
    /// account accepted and to its own other devices.
    pub fn set_profile(&mut self, name: &str, avatar: Option<Vec<u8>>, now_ms: u64) -> Result<Changes, MachineError> {
        if name.len() > MAX_PROFILE_NAME_LEN {
            return Err(MachineError::TextTooLong {
                len: name.len(),
                max: MAX_PROFILE_NAME_LEN,
            });
        }
        if let Some(a) = &avatar
            && a.len() > MAX_AVATAR_LEN
        {
            return Err(MachineError::TextTooLong {
                len: a.len(),
                max: MAX_AVATAR_LEN,
            });
        }
        let mut record = self.account.value.clone();
        // Later than both this device's profile and the one the relay holds, so every
        // device and contact takes it as the newest.
        let floor = record
            .profile
            .as_ref()
            .map_or(0, |p| p.updated_ms)
            .max(record.profile_uploaded_ms);
        record.profile = Some(Profile {
            name: name.to_owned(),
            avatar,
            updated_ms: now_ms.max(floor + 1),
        });
        if record.profile_key.is_none() {
            let mut key = [0u8; 32];
            self.rng.fill_bytes(&mut key);
            record.profile_key = Some(key);
        }
        let mut changes = Changes::default();
        self.write_account(&mut changes, record);
        Ok(changes)
    }

    /// A new profile key after blocking someone: the profile is uploaded again under it
    /// (which replaces the old one on the relay, so the old key no longer fetches it) and
    /// the key goes to the contacts this account still accepts. Nothing when the account
    /// has no profile.
    pub fn rotate_profile_key(&mut self, now_ms: u64) -> Changes {
        let mut changes = Changes::default();
        let Some(profile) = self.account.value.profile.clone() else {
            return changes;
        };
        let mut record = self.account.value.clone();
        let mut key = [0u8; 32];
        self.rng.fill_bytes(&mut key);
        record.profile_key = Some(key);
        let floor = profile.updated_ms.max(record.profile_uploaded_ms);
        record.profile = Some(Profile {
            updated_ms: now_ms.max(floor + 1),
            ..profile
        });
        self.write_account(&mut changes, record);
        changes
    }

    /// This account's profile.
    pub fn own_profile(&self) -> Option<Profile> {
        self.account.value.profile.clone()
    }

    /// True when this device's profile is newer than the one the relay holds.
    pub fn profile_upload_due(&self) -> bool {
        let a = &self.account.value;
        a.profile_key.is_some() && a.profile.as_ref().is_some_and(|p| p.updated_ms > a.profile_uploaded_ms)
    }

    /// What to upload (`PUT /v1/profile`) and the `updated_ms` it carries, when this
    /// device's profile is newer than the one the relay holds.
    pub fn profile_upload(&mut self) -> Option<(ProfileUpload, u64)> {
        if !self.profile_upload_due() {
            return None;
        }
        let a = &self.account.value;
        let (profile, key) = (a.profile.as_ref()?, a.profile_key?);
        let key = ProfileKey::from_bytes(&key);
        let own = self.account_id();
        let plaintext = encode_profile(profile);
        let updated_ms = profile.updated_ms;
        let ciphertext = key.encrypt(&own, &plaintext, &mut self.rng).ok()?;
        Some((
            ProfileUpload {
                version: key.version(&own),
                ciphertext,
            },
            updated_ms,
        ))
    }

    /// The relay confirmed the upload of the profile of `updated_ms` under `version`:
    /// remember it, and announce the key to every contact this account accepted (not
    /// blocked) and to its own other devices. `None` when the key changed meanwhile (the
    /// next upload covers it) or a newer upload was confirmed already.
    pub fn profile_uploaded(&mut self, version: &[u8; 32], updated_ms: u64, now_ms: u64) -> Option<Changes> {
        let own = self.account_id();
        let a = &self.account.value;
        let key = ProfileKey::from_bytes(&a.profile_key?);
        if key.version(&own) != *version || a.profile_uploaded_ms >= updated_ms {
            return None;
        }
        let mut record = a.clone();
        record.profile_uploaded_ms = updated_ms;
        let mut changes = Changes::default();
        self.write_account(&mut changes, record);
        let mut to: Vec<AccountId> = self
            .conversations
            .values()
            .filter(|c| c.accepted && !c.blocked)
            .map(|c| c.peer)
            .collect();
        to.push(own);
        for account in to {
            self.queue_profile_to(account, now_ms, &mut changes);
        }
        Some(changes)
    }

    /// Queues this account's profile key (if the relay holds a profile under it) to
    /// `account`.
    pub fn share_profile(&mut self, account: AccountId, now_ms: u64) -> Changes {
        let mut changes = Changes::default();
        self.queue_profile_to(account, now_ms, &mut changes);
        changes
    }

    pub(super) fn queue_profile_to(&mut self, account: AccountId, now_ms: u64, changes: &mut Changes) {
        let a = self.account_in(changes);
        let (Some(key), updated_ms) = (a.profile_key, a.profile_uploaded_ms) else {
            return;
        };
        if updated_ms == 0 {
            return;
        }
        let content = Content {
            message_id: MessageId::new(now_ms, &mut self.ids),
            timestamp_ms: now_ms,
            access_key: if account == self.account_id() {
                None
            } else {
                self.own_access_key()
            },
            kind: ContentKind::ProfileKey {
                updated_ms,
                key: crate::content::SharedKey(key),
            },
        };
        changes
            .outbox_add
            .push(OutboxItem::new(content.message_id, account, content.encode()));
    }

    /// A profile key announced by `from`: a contact's (kept on their conversation, when
    /// one exists and is not blocked) or this account's own, from another of its devices.
    /// Only an announcement newer than what this device has counts; the profile is then
    /// fetched ([`Self::profiles_to_fetch`]).
    pub(super) fn accept_profile_key(&self, from: AccountId, key: [u8; 32], updated_ms: u64, changes: &mut Changes) {
        if from == self.account_id() {
            let current = self.account_in(changes);
            let newest = current
                .profile
                .as_ref()
                .map_or(0, |p| p.updated_ms)
                .max(current.profile_uploaded_ms);
            if updated_ms <= newest {
                return;
            }
            let mut record = current.clone();
            record.profile_key = Some(key);
            record.profile_uploaded_ms = updated_ms;
            self.write_account(changes, record);
            return;
        }
        let Some(c) = self.conversations.get(&from) else { return };
        if c.blocked || updated_ms <= c.profile_at_ms.max(c.profile_wanted_ms) {
            return;
        }
        self.update_conversation(changes, from, |c| {
            c.profile_key = Some(key);
            c.profile_wanted_ms = updated_ms;
        });
    }

    /// True when `changes` leave a profile to fetch (checked after every commit, so the
    /// fetch starts without a scan of every conversation).
    pub fn wants_profiles(changes: &Changes) -> bool {
        changes
            .conversations
            .iter()
            .any(|c| c.profile_key.is_some() && c.profile_wanted_ms > c.profile_at_ms && !c.blocked)
            || changes.account.as_ref().is_some_and(|w| own_fetch_due(&w.value))
    }

    /// The profiles announced and not fetched yet: this account's own (announced by
    /// another of its devices) first, then contacts', at most [`PROFILE_FETCH_BATCH`].
    pub fn profiles_to_fetch(&self) -> Vec<ProfileFetch> {
        let a = &self.account.value;
        let own = a.profile_key.filter(|_| own_fetch_due(a)).map(|key| ProfileFetch {
            account: self.account_id(),
            key,
            wanted_ms: a.profile_uploaded_ms,
        });
        let contacts = self.conversations.values().filter_map(|c| {
            let key = c.profile_key?;
            (c.profile_wanted_ms > c.profile_at_ms && !c.blocked).then_some(ProfileFetch {
                account: c.peer,
                key,
                wanted_ms: c.profile_wanted_ms,
            })
        });
        own.into_iter().chain(contacts).take(PROFILE_FETCH_BATCH).collect()
    }

    /// What the relay answered for `fetch`: the ciphertext, or `None` when it holds no
    /// profile under that key (`NOT_FOUND`: the owner changed the key since). A profile
    /// that decrypts and is newer than the one this device has replaces it. Either way
    /// the announcement fetched for is settled: nothing is fetched again until a newer one
    /// arrives (one that arrived while the fetch was under way is kept, and fetched next).
    pub fn profile_fetched(&self, fetch: &ProfileFetch, ciphertext: Option<&[u8]>) -> (Changes, Option<AccountId>) {
        let key = ProfileKey::from_bytes(&fetch.key);
        let profile = ciphertext
            .and_then(|ct| key.decrypt(&fetch.account, ct).ok())
            .and_then(|plain| decode_profile(&plain).ok());
        let mut changes = Changes::default();
        let mut changed = None;
        if fetch.account == self.account_id() {
            let a = &self.account.value;
            if a.profile_key != Some(fetch.key) {
                return (changes, None);
            }
            let mut record = a.clone();
            let current = a.profile.as_ref().map_or(0, |p| p.updated_ms);
            let settles = a.profile_uploaded_ms == fetch.wanted_ms;
            match profile {
                Some(p) => {
                    if settles {
                        record.profile_uploaded_ms = p.updated_ms;
                    }
                    if p.updated_ms > current {
                        record.profile = Some(p);
                        changed = Some(fetch.account);
                    }
                }
                // Nothing under this key: another device changed it since, and its
                // announcement is on its way. Wait for it rather than upload this
                // device's older profile over the newer one.
                None if settles => record.profile_uploaded_ms = current,
                None => {}
            }
            if record != *a {
                self.write_account(&mut changes, record);
            }
            return (changes, changed);
        }
        let Some(c) = self.conversations.get(&fetch.account) else {
            return (changes, None);
        };
        if c.profile_key != Some(fetch.key) || c.blocked {
            return (changes, None);
        }
        if let Some(p) = &profile
            && p.updated_ms > c.profile_at_ms
        {
            changed = Some(fetch.account);
        }
        self.update_conversation(&mut changes, fetch.account, |c| {
            if let Some(p) = profile
                && p.updated_ms > c.profile_at_ms
            {
                c.profile_name = (!p.name.is_empty()).then_some(p.name);
                c.profile_avatar = p.avatar;
                c.profile_at_ms = p.updated_ms;
            }
            if c.profile_wanted_ms <= fetch.wanted_ms.max(c.profile_at_ms) {
                c.profile_wanted_ms = c.profile_at_ms;
            }
        });
        (changes, changed)
    }
}

/// True when another device of the account announced a profile newer than this
/// device's.
fn own_fetch_due(a: &AccountRecord) -> bool {
    a.profile_key.is_some() && a.profile_uploaded_ms > a.profile.as_ref().map_or(0, |p| p.updated_ms)
}
