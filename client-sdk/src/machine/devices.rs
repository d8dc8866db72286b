//! Device lists: the account key, this account's next list, and pinning other
//! accounts' lists (only forward, never to one that drops this device unannounced).

use std::collections::BTreeSet;

use sotto_crypto::pickle::Pickle;
use sotto_crypto::{AccountId, AccountKey, DeviceId, DeviceList, DeviceListChange, DeviceListError, SignedDeviceList};

use super::{Machine, MachineError};
use crate::store::{Changes, Write};

impl Machine {
    /// Stores `account_key` on this device (recovery). It must be this account's key.
    pub fn set_account_key(&mut self, account_key: &AccountKey) -> Result<Changes, MachineError> {
        if !account_key.account_id().ct_eq(&self.account_id()) {
            return Err(MachineError::NoAccountKey);
        }
        let mut record = self.account.value.clone();
        record.account_key = Some(account_key.pickle(&self.pickle_key, &mut self.rng));
        Ok(Changes {
            account: Some(Write {
                expected: Some(self.account.version),
                value: record,
            }),
            ..Changes::default()
        })
    }

    /// Adds to `changes` the pinned device-list version of every account they rely on
    /// (sessions written, messages stored, statuses moved), so that the commit fails with
    /// a conflict when another process pinned another list meanwhile. Accounts whose list
    /// `changes` pins themselves are left out.
    pub fn guard_pins(&self, changes: &mut Changes) {
        let mut accounts: BTreeSet<AccountId> = changes.sessions.iter().map(|(p, _)| p.0).collect();
        accounts.extend(changes.messages.iter().map(|m| m.sender.0));
        accounts.extend(changes.message_status.iter().map(|(k, _)| k.conversation));
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
        let changes = Changes {
            device_lists: vec![(*account, signed.to_vec())],
            ..Changes::default()
        };
        Ok((changes, Some(change)))
    }

    /// A new version of this account's device list with `add` added and `remove`
    /// removed, signed with the account key.
    pub fn next_own_list(
        &self,
        add: Option<sotto_crypto::DeviceEntry>,
        remove: Option<DeviceId>,
        now_ms: u64,
    ) -> Result<DeviceList, MachineError> {
        let own = self.own_device_list().ok_or(MachineError::NoAccount)?;
        let mut devices: Vec<_> = own
            .devices()
            .iter()
            .filter(|d| Some(d.device_id) != remove && add.is_none_or(|a| a.device_id != d.device_id))
            .copied()
            .collect();
        devices.extend(add);
        let ak = self.account_key.as_ref().ok_or(MachineError::NoAccountKey)?;
        Ok(ak.sign_device_list(own.version() + 1, now_ms, devices)?)
    }

    /// True when this device is in its account's pinned list.
    pub fn is_listed(&self) -> bool {
        self.own_device_list()
            .is_some_and(|l| l.contains(&self.device.identity()))
    }
}
