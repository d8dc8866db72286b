//! Device lists: the account key, this account's next list, and pinning other
//! accounts' lists (only forward, never to one that drops this device unannounced).

use std::collections::BTreeSet;

use sotto_crypto::pickle::Pickle;
use sotto_crypto::{
    AccountId, AccountKey, DeviceId, DeviceList, DeviceListChange, DeviceListError, ListKey, MAX_EPOCH_VERSION_STEP,
    MAX_VERSION_STEP, SignedDeviceList,
};

use super::{Machine, MachineError};
use crate::store::{Changes, Write};

impl Machine {
    /// Drops the account key from this device (after the recovery key was exported).
    pub fn forget_account_key(&self) -> Changes {
        let mut record = self.account.value.clone();
        record.account_key = None;
        Changes {
            account: Some(Write {
                expected: Some(self.account.version),
                value: record,
            }),
            ..Changes::default()
        }
    }

    /// Stores `list_key` on this device (linking, recovery).
    pub fn store_list_key(&mut self, list_key: &ListKey) -> Result<Changes, MachineError> {
        if !list_key.account_id().ct_eq(&self.account_id()) {
            return Err(MachineError::NoListKey);
        }
        let mut record = self.account.value.clone();
        record.list_key = Some(list_key.pickle(&self.pickle_key, &mut self.rng));
        Ok(Changes {
            account: Some(Write {
                expected: Some(self.account.version),
                value: record,
            }),
            ..Changes::default()
        })
    }

    /// Stores the list key whose seed a linking answer carried, when it is the pinned
    /// list's key and the list marks this device as holding it.
    pub fn set_list_key_seed(&mut self, seed: &[u8; 32]) -> Result<Changes, MachineError> {
        let own = self.own_device_list().ok_or(MachineError::NoAccount)?;
        if !own.holds_list_key(self.device_id()) {
            return Err(MachineError::NoListKey);
        }
        let lk = ListKey::from_seed(seed, own).ok_or(MachineError::NoListKey)?;
        self.store_list_key(&lk)
    }

    /// Adds to `changes` the pinned device-list version of every account they rely on
    /// (sessions written, messages stored, statuses moved), so that the commit fails with
    /// a conflict when another process pinned another list meanwhile. Accounts whose list
    /// `changes` pins themselves are left out.
    pub fn guard_pins(&self, changes: &mut Changes) {
        let mut accounts: BTreeSet<AccountId> = changes.sessions.iter().map(|(p, _)| p.0).collect();
        accounts.extend(changes.messages.iter().map(|m| m.sender.0));
        accounts.extend(changes.message_updates.iter().map(|(k, _)| k.conversation));
        for (a, _) in &changes.device_lists {
            accounts.remove(a);
        }
        for a in accounts {
            if changes.pins.iter().any(|(p, _)| *p == a) {
                continue;
            }
            let version = self.lists.get(&a).map_or(0, |l| l.version());
            changes.pins.push((a, version));
        }
    }

    /// Verifies and pins a device list for `account`. Returns the changes (empty when the
    /// list is the pinned one) and the change of the device set, if any.
    pub fn receive_device_list(
        &mut self,
        account: &AccountId,
        signed: &[u8],
    ) -> Result<(Changes, Option<DeviceListChange>), DeviceListError> {
        let list = SignedDeviceList::from_bytes(signed)?.verify(account)?;
        let change = match self.lists.get(account) {
            Some(pinned) => {
                let change = pinned.check_update(&list)?;
                if list.version() == pinned.version() {
                    return Ok((Changes::default(), None));
                }
                change
            }
            None => DeviceListChange {
                added: list.devices().iter().map(|d| d.device_id).collect(),
                ..DeviceListChange::default()
            },
        };
        let mut changes = Changes {
            device_lists: vec![(*account, signed.to_vec())],
            ..Changes::default()
        };
        let first_pin = !self.lists.contains_key(account);
        self.identity_changed(
            *account,
            list.version(),
            &change,
            first_pin,
            &mut changes,
            &mut Vec::new(),
        );
        Ok((changes, Some(change)))
    }

    /// A new version of this account's device list with `add` added (holding the list
    /// key when `grant`) and `remove` removed, signed with the list key. A device that
    /// holds the list key can only be removed under a new one
    /// ([`MachineError::NeedsRecoveryKey`]; see [`Machine::rotated_list`]).
    pub fn next_own_list(
        &self,
        add: Option<sotto_crypto::DeviceEntry>,
        grant: bool,
        remove: Option<DeviceId>,
        now_ms: u64,
    ) -> Result<DeviceList, MachineError> {
        let own = self.own_device_list().ok_or(MachineError::NoAccount)?;
        if !self.can_manage_devices() {
            return Err(MachineError::NoListKey);
        }
        let lk = self.list_key().ok_or(MachineError::NoListKey)?;
        if let Some(r) = remove
            && own.holds_list_key(r)
        {
            return Err(MachineError::NeedsRecoveryKey(r));
        }
        let (devices, mut holders) = next_devices(own, add, remove);
        if grant && let Some(a) = add {
            holders.push(a.device_id);
        }
        Ok(lk.sign_device_list(own.version() + 1, now_ms, devices, &holders)?)
    }

    /// The next list under the list key of the next epoch, made with the account key
    /// (from the recovery key): the pinned list's devices with `remove` removed, and this
    /// device the only one holding the new list key, which is returned to be stored with
    /// [`Machine::store_list_key`] once the list is published. `current` is the relay's
    /// list when it verifies but could not be pinned (a list key being revoked may have
    /// pushed the version more than a step ahead): the new epoch and version go past it,
    /// while its devices are not taken over.
    pub fn rotated_list(
        &self,
        account_key: &AccountKey,
        remove: Option<DeviceId>,
        current: Option<&DeviceList>,
        now_ms: u64,
    ) -> Result<(DeviceList, ListKey), MachineError> {
        if !account_key.account_id().ct_eq(&self.account_id()) {
            return Err(MachineError::NoAccountKey);
        }
        let own = self.own_device_list().ok_or(MachineError::NoAccount)?;
        // Only as far as a new epoch may step (§4.3): a list further ahead came from a
        // relay that broke the per-upload bound, and following it could use up versions.
        let current = current.filter(|c| {
            c.account_id().ct_eq(&self.account_id())
                && c.version().saturating_sub(own.version()) < MAX_EPOCH_VERSION_STEP
                && c.epoch().saturating_sub(own.epoch()) < MAX_VERSION_STEP
        });
        let epoch = own.epoch().max(current.map_or(0, DeviceList::epoch));
        let version = own.version().max(current.map_or(0, DeviceList::version));
        let lk = account_key.list_key(epoch.saturating_add(1))?;
        // This device always, even if a list key being revoked removed it; the others only
        // when the relay's list has them too, so that a device removed since this
        // device's pin, or one a revoked key added, is not listed.
        let (mut devices, _) = next_devices(own, Some(self.device.entry()), remove);
        if let Some(c) = current {
            let me = self.device_id();
            devices.retain(|d| d.device_id == me || c.device(d.device_id) == Some(d));
        }
        let list = lk.sign_device_list(version.saturating_add(1), now_ms, devices, &[self.device_id()])?;
        Ok((list, lk))
    }

    /// True when this device is in its account's pinned list.
    pub fn is_listed(&self) -> bool {
        self.own_device_list()
            .is_some_and(|l| l.contains(&self.device.identity()))
    }
}

/// The devices of `own` with `add` added (replacing a device of its id) and `remove`
/// removed, and the holders of the list key among them.
fn next_devices(
    own: &DeviceList,
    add: Option<sotto_crypto::DeviceEntry>,
    remove: Option<DeviceId>,
) -> (Vec<sotto_crypto::DeviceEntry>, Vec<DeviceId>) {
    let mut devices: Vec<_> = own
        .devices()
        .iter()
        .filter(|d| Some(d.device_id) != remove && add.is_none_or(|a| a.device_id != d.device_id))
        .copied()
        .collect();
    let holders = own
        .holders()
        .iter()
        .copied()
        .filter(|h| devices.iter().any(|d| d.device_id == *h))
        .collect();
    devices.extend(add);
    (devices, holders)
}
