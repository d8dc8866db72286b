//! What the relay serves about accounts: device lists (pinned before use), prekey
//! bundles, and this device's own prekey refills.

use sotto_crypto::{AccountId, DeviceId, DeviceListError, SignedDeviceList};
use sotto_proto::{ErrorCode, PreKeyUpload};

use super::error::ClientError;
use super::{Inner, now_ms};
use crate::machine::{Event, bundle_is_fresh};
use crate::store::{OutboxItem, Store};
use crate::transport::TransportError;

impl<S: Store> Inner<S> {
    /// Fetches, verifies and pins an account's device list; emits the change.
    pub(crate) async fn refresh_device_list(&self, account: AccountId) -> Result<(), ClientError> {
        let bytes = self.relay.get_device_list(&account).await?;
        self.pin_device_list(account, &bytes).await
    }

    pub(crate) async fn pin_device_list(&self, account: AccountId, bytes: &[u8]) -> Result<(), ClientError> {
        let result = self
            .transact(|m| {
                let (c, change) = m.receive_device_list(&account, bytes)?;
                Ok((c, change))
            })
            .await;
        match result {
            Ok((Some(change), _)) => {
                let mut events = Vec::new();
                if account == self.device.account_id() {
                    let m = self.machine.lock().await;
                    if !m.is_listed() {
                        events.push(Event::DeviceRemoved);
                    }
                }
                // A contact's device added or re-keyed: the conversation now waits for the
                // user's acknowledgement (the machine set it, with a timeline item).
                let unacked = account != self.device.account_id()
                    && (!change.added.is_empty() || !change.rekeyed.is_empty())
                    && self
                        .machine
                        .lock()
                        .await
                        .conversation(&account)
                        .is_some_and(|c| c.identity_unacked);
                if !change.is_empty() {
                    events.insert(0, Event::DeviceListChanged { account, change });
                }
                if unacked {
                    events.push(Event::IdentityChanged { account });
                }
                self.emit(events).await;
                Ok(())
            }
            Ok((None, _)) => Ok(()),
            Err(ClientError::DeviceList(error)) => {
                self.emit(vec![Event::DeviceListRejected {
                    account,
                    error: error.clone(),
                }])
                .await;
                Err(ClientError::DeviceList(error))
            }
            Err(e) => Err(e),
        }
    }

    /// Fetches the bundles of `devices` and sets up sessions. Returns the devices the
    /// relay holds no prekeys for (`NO_PREKEYS`): unreachable for now.
    pub(super) async fn fetch_bundles(
        &self,
        account: AccountId,
        devices: Vec<DeviceId>,
    ) -> Result<Vec<DeviceId>, ClientError> {
        let mut bundles = Vec::with_capacity(devices.len());
        let mut unreachable = Vec::new();
        let now = now_ms();
        for d in devices {
            match self.relay.bundle(&self.device, &account, d).await {
                // A device whose keys are stale is skipped like one without prekeys.
                Ok(b) => {
                    if b.iter().all(|b| bundle_is_fresh(b, now)) {
                        bundles.extend(b);
                    } else {
                        unreachable.push(d);
                    }
                }
                Err(TransportError::Relay { code, .. }) if code == ErrorCode::UNKNOWN_DEVICE => {
                    self.refresh_device_list(account).await?;
                }
                Err(TransportError::Relay { code, .. }) if code == ErrorCode::NO_PREKEYS => unreachable.push(d),
                Err(e) => return Err(e.into()),
            }
        }
        self.transact(|m| Ok((m.receive_bundles(&account, &bundles, now)?, ())))
            .await?;
        Ok(unreachable)
    }

    pub(crate) async fn refill_prekeys(&self) -> Result<(), ClientError> {
        // The access verifier goes first, so that no prekeys (no reachable device) are
        // ever out without it: until then every send would be a contact's.
        self.upload_access().await?;
        let counts = self.relay.prekey_counts(&self.device).await?;
        let upload = {
            let mut m = self.machine.lock().await;
            let Some((changes, upload)) = m.refill_prekeys(&counts, now_ms())? else {
                return Ok(());
            };
            self.commit_locked(&mut m, changes).await?;
            upload
        };
        if upload != PreKeyUpload::default() {
            self.relay.put_prekeys(&self.device, &upload).await?;
        }
        if upload.signed_prekey.is_some() || upload.last_resort_kem_prekey.is_some() {
            self.transact(|m| Ok((m.prekeys_sent(&upload).unwrap_or_default(), ())))
                .await?;
        }
        Ok(())
    }

    /// Sets the account's access verifier and request policy on the relay, when it has
    /// not confirmed them yet (docs/protocol.md §13.8).
    pub(crate) async fn upload_access(&self) -> Result<(), ClientError> {
        let accept = self.options.accept_message_requests;
        let policy = {
            let mut m = self.machine.lock().await;
            let Some((changes, policy)) = m.access_upload(accept) else {
                return Ok(());
            };
            if !changes.is_empty() {
                self.commit_locked(&mut m, changes).await?;
            }
            policy
        };
        self.relay.put_access(&self.device, &policy).await?;
        self.transact(|m| Ok((m.access_sent(&policy).unwrap_or_default(), ())))
            .await?;
        Ok(())
    }

    pub(super) async fn handle_mismatch(&self, item: &OutboxItem, lists: &[Vec<u8>]) -> Result<(), ClientError> {
        let own = self.device.account_id();
        // A group item's recipients are the group's members.
        let members: Vec<AccountId> = {
            let m = self.machine.lock().await;
            m.group_of_conversation(&item.to)
                .and_then(|g| m.group(&g))
                .map(|g| g.members.iter().map(|(a, _)| *a).collect())
                .unwrap_or_default()
        };
        for bytes in lists {
            let account = SignedDeviceList::from_bytes(bytes)
                .map_err(DeviceListError::from)
                .and_then(|l| l.account_key_and_version())
                .map(|(ak, _)| AccountId::from_account_key(&ak))?;
            if account != item.to && account != own && !members.contains(&account) {
                continue;
            }
            self.pin_device_list(account, bytes).await?;
        }
        Ok(())
    }
}
