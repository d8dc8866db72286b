//! Per-device sessions (Sesame): which sessions exist for a peer device, which devices a
//! message fans out to, and sessions started from fetched prekey bundles.

use sotto_crypto::pickle::Pickle;
use sotto_crypto::{AccountId, DeviceIdentity, PreKeyBundle, Session};

use super::{MAX_SESSIONS_PER_DEVICE, Machine, MachineError, Need};
use crate::store::{Changes, PeerDevice, SessionSet, Write};

impl Machine {
    pub(super) fn load_sessions(&self, peer: &PeerDevice) -> Result<Vec<Session>, MachineError> {
        match self.sessions.get(peer) {
            Some(set) => set
                .value
                .sessions
                .iter()
                .map(|p| Session::unpickle(p, &self.pickle_key).map_err(MachineError::from))
                .collect(),
            None => Ok(Vec::new()),
        }
    }

    /// Whether the active session with `identity` can carry a message at `now_ms`: it is
    /// with that device's current keys, and answered or pending on responder prekeys
    /// young enough ([`super::PENDING_SESSION_MAX_AGE_MS`]).
    pub(super) fn has_usable_session(&self, identity: &DeviceIdentity, now_ms: u64) -> bool {
        let peer = (identity.account_id, identity.device_id);
        let Some(set) = self.sessions.get(&peer) else {
            return false;
        };
        let Some(first) = set.value.sessions.first() else {
            return false;
        };
        Session::unpickle(first, &self.pickle_key)
            .is_ok_and(|s| s.remote().ct_eq(identity) && super::prekeys::pending_keys_usable(&s, now_ms))
    }

    /// Session-set write: `front` becomes active, followed by `rest` (pickles), capped.
    pub(super) fn session_write(
        &mut self,
        peer: PeerDevice,
        front: &Session,
        rest: Vec<Vec<u8>>,
    ) -> (PeerDevice, Write<SessionSet>) {
        let mut sessions = Vec::with_capacity(rest.len() + 1);
        sessions.push(front.pickle(&self.pickle_key, &mut self.rng));
        sessions.extend(rest);
        sessions.truncate(MAX_SESSIONS_PER_DEVICE);
        (
            peer,
            Write {
                expected: self.sessions.get(&peer).map(|s| s.version),
                value: SessionSet { sessions },
            },
        )
    }

    /// Creates sessions from fetched bundles, for devices listed in the pinned list that
    /// have no usable session. A bundle that does not verify, or whose keys are stale at
    /// `now_ms` ([`super::bundle_is_fresh`]), is skipped (the device stays without a
    /// session and the next attempt fetches again).
    pub fn receive_bundles(
        &mut self,
        account: &AccountId,
        bundles: &[PreKeyBundle],
        now_ms: u64,
    ) -> Result<Changes, MachineError> {
        let mut changes = Changes::default();
        let Some(list) = self.lists.get(account).cloned() else {
            return Ok(changes);
        };
        for b in bundles {
            if b.identity.account_id != *account
                || self.has_usable_session(&b.identity, now_ms)
                || !super::bundle_is_fresh(b, now_ms)
            {
                continue;
            }
            let Ok(session) = sotto_crypto::initiate(&self.device, &list, b, &mut self.rng) else {
                continue;
            };
            let peer = (*account, b.identity.device_id);
            let rest = self
                .sessions
                .get(&peer)
                .map(|s| s.value.sessions.clone())
                .unwrap_or_default();
            changes.sessions.push(self.session_write(peer, &session, rest));
        }
        Ok(changes)
    }

    /// Every device a message to `to` goes to: all of `to`'s devices and this account's
    /// other devices (once, when `to` is this account), but those in `skip`.
    pub(super) fn fan_out(
        &self,
        to: &AccountId,
        skip: &[PeerDevice],
        now_ms: u64,
    ) -> Result<Vec<DeviceIdentity>, Vec<Need>> {
        let mut needs = Vec::new();
        let mut targets = Vec::new();
        let own = self.account_id();
        let accounts = if *to == own { vec![own] } else { vec![*to, own] };
        for account in accounts {
            let Some(list) = self.lists.get(&account) else {
                needs.push(Need::DeviceList(account));
                continue;
            };
            let mut missing = Vec::new();
            for d in list.devices() {
                if (account == own && d.device_id == self.device_id()) || skip.contains(&(account, d.device_id)) {
                    continue;
                }
                let Some(identity) = list.identity(d.device_id) else {
                    continue;
                };
                if !self.has_usable_session(&identity, now_ms) {
                    missing.push(d.device_id);
                }
                targets.push(identity);
            }
            if !missing.is_empty() {
                needs.push(Need::Bundles(account, missing));
            }
        }
        if needs.is_empty() { Ok(targets) } else { Err(needs) }
    }
}

/// Every pickle but the one at `i` (the session that took a message becomes the active one;
/// these stay behind it).
pub(super) fn all_but(pickles: &[Vec<u8>], i: usize) -> Vec<Vec<u8>> {
    pickles
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, p)| p.clone())
        .collect()
}
