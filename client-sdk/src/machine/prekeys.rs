//! This device's prekeys: the first batch, refills when the relay runs low, and the
//! rotation of the signed and last-resort prekeys.
//!
//! A signed prekey's id, and a last-resort ML-KEM prekey's id without its top bit, is
//! the hour it was made (Unix time / 3600 s). The id is covered by the prekey's
//! signature, so a sender can tell how old the keys of a bundle are and refuse stale
//! ones ([`bundle_is_fresh`]) without any other field on the wire.

use rand_chacha::ChaCha20Rng;
use sotto_crypto::pickle::Pickle;
use sotto_crypto::{Device, KemPreKeySecret, PickleKey, PreKeyBundle, PreKeyKind, X25519PreKeySecret};
use sotto_proto::{PreKeyCounts, PreKeyUpload};

use super::{Machine, MachineError};
use crate::store::{Changes, Write};

/// One-time X25519 prekeys per upload batch.
pub const ONE_TIME_BATCH: u32 = 100;

/// One-time ML-KEM prekeys per upload batch.
pub const KEM_BATCH: u32 = 20;

/// Refill when the relay holds fewer one-time X25519 prekeys than this.
pub const ONE_TIME_LOW: u32 = 30;

/// Refill when the relay holds fewer one-time ML-KEM prekeys than this.
pub const KEM_LOW: u32 = 5;

/// The top bit that marks a last-resort ML-KEM prekey id (one-time ML-KEM ids count up
/// from 1); the other bits are the hour it was made.
pub const LAST_RESORT_KEM_ID: u32 = 0x8000_0000;

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

/// The signed prekey and the last-resort ML-KEM prekey are replaced once they are this old.
pub const PREKEY_ROTATION_MS: u64 = 7 * DAY_MS;

/// A replaced signed or last-resort prekey's secret is kept this long after its successor
/// was made, so first messages encrypted to it still open. A sender accepts a key for 30
/// days after it was made (the relay serves it for 29) and a relay keeps an envelope 30
/// days by default: 65 days leaves five days of margin, whenever the successor came.
pub const PREKEY_GRACE_MS: u64 = 65 * DAY_MS;

/// A sender refuses a bundle whose signed prekey, or whose last-resort ML-KEM prekey, was
/// made longer ago than this (its device has not rotated for weeks: it is offline or
/// its keys were replayed by the relay).
pub const MAX_PREKEY_AGE_MS: u64 = 30 * DAY_MS;

/// ... or made more than this far ahead of the sender's clock.
pub const MAX_PREKEY_AHEAD_MS: u64 = DAY_MS;

/// A session whose pre-key messages were never answered is used only while the
/// responder's signed and last-resort prekeys it names were made at most this long ago:
/// the responder keeps a replaced key at least 65 days after it was made
/// ([`PREKEY_GRACE_MS`] after its successor), and an envelope may take up to 30 days to
/// arrive. After that the sender fetches a new bundle and starts a new session.
pub const PENDING_SESSION_MAX_AGE_MS: u64 = 35 * DAY_MS;

/// Whether `session` may still carry messages at `now_ms`: answered, or pending on
/// responder keys young enough ([`PENDING_SESSION_MAX_AGE_MS`]).
pub(super) fn pending_keys_usable(session: &sotto_crypto::Session, now_ms: u64) -> bool {
    let Some((signed, (kem_kind, kem))) = session.pending_prekey_ids() else {
        return true;
    };
    [
        prekey_created_ms(PreKeyKind::Signed, signed),
        prekey_created_ms(kem_kind, kem),
    ]
    .into_iter()
    .flatten()
    .all(|made| made.saturating_add(PENDING_SESSION_MAX_AGE_MS) >= now_ms)
}

/// The hour `now_ms` falls in, as a prekey id (at most 2^31 − 1).
fn hour_of(now_ms: u64) -> u32 {
    u32::try_from(now_ms / HOUR_MS).map_or(!LAST_RESORT_KEM_ID, |h| h.min(!LAST_RESORT_KEM_ID))
}

/// When a signed or last-resort prekey with this id was made (the start of its hour);
/// `None` for one-time kinds, whose ids count up instead.
pub fn prekey_created_ms(kind: PreKeyKind, id: u32) -> Option<u64> {
    match kind {
        PreKeyKind::Signed => Some(u64::from(id) * HOUR_MS),
        PreKeyKind::KemLastResort => Some(u64::from(id & !LAST_RESORT_KEM_ID) * HOUR_MS),
        PreKeyKind::OneTime | PreKeyKind::KemOneTime => None,
    }
}

/// Whether a sender may use `bundle` at `now_ms`: its signed prekey, and its ML-KEM
/// prekey when that is the last-resort one, made at most [`MAX_PREKEY_AGE_MS`] ago and at
/// most [`MAX_PREKEY_AHEAD_MS`] ahead.
pub fn bundle_is_fresh(bundle: &PreKeyBundle, now_ms: u64) -> bool {
    let fresh = |kind, id| {
        prekey_created_ms(kind, id).is_none_or(|made| {
            made.saturating_add(MAX_PREKEY_AGE_MS) >= now_ms && made <= now_ms.saturating_add(MAX_PREKEY_AHEAD_MS)
        })
    };
    fresh(bundle.signed_prekey.kind, bundle.signed_prekey.id) && fresh(bundle.kem_prekey.kind, bundle.kem_prekey.id)
}

/// The id of a signed prekey made at `now_ms`, above the current one's.
pub(super) fn next_signed_id(now_ms: u64, current: Option<u32>) -> u32 {
    let hour = hour_of(now_ms);
    current.map_or(hour, |c| hour.max(c.saturating_add(1)))
}

/// The id of a last-resort ML-KEM prekey made at `now_ms`, above the current one's.
pub(super) fn next_last_resort_id(now_ms: u64, current: Option<u32>) -> u32 {
    let hour = hour_of(now_ms);
    let hour = current.map_or(hour, |c| hour.max((c & !LAST_RESORT_KEM_ID).saturating_add(1)));
    LAST_RESORT_KEM_ID | hour.min(!LAST_RESORT_KEM_ID)
}

/// A new signed prekey made at `now_ms` (id above `current`): its secret into `changes`,
/// its public key into `upload`. Returns its id.
pub(super) fn signed_prekey(
    device: &Device,
    now_ms: u64,
    current: Option<u32>,
    rng: &mut ChaCha20Rng,
    key: &PickleKey,
    changes: &mut Changes,
    upload: &mut PreKeyUpload,
) -> u32 {
    let id = next_signed_id(now_ms, current);
    let spk = device.generate_signed_prekey(id, rng);
    changes
        .prekeys_added
        .push(((PreKeyKind::Signed as u8, id), spk.pickle(key, rng)));
    upload.signed_prekey = Some(spk.public().clone());
    id
}

/// A new last-resort ML-KEM prekey made at `now_ms` (id above `current`), as
/// [`signed_prekey`].
pub(super) fn last_resort_prekey(
    device: &Device,
    now_ms: u64,
    current: Option<u32>,
    rng: &mut ChaCha20Rng,
    key: &PickleKey,
    changes: &mut Changes,
    upload: &mut PreKeyUpload,
) {
    let id = next_last_resort_id(now_ms, current);
    let lr = device.generate_kem_prekey(id, true, rng);
    changes
        .prekeys_added
        .push(((PreKeyKind::KemLastResort as u8, id), lr.pickle(key, rng)));
    upload.last_resort_kem_prekey = Some(lr.public().clone());
}

pub(super) fn one_time_prekeys(
    device: &Device,
    first: u32,
    count: u32,
    rng: &mut ChaCha20Rng,
    key: &PickleKey,
    changes: &mut Changes,
    upload: &mut PreKeyUpload,
) {
    for k in device.generate_one_time_prekeys(first, count, rng) {
        changes
            .prekeys_added
            .push(((PreKeyKind::OneTime as u8, k.public().id), k.pickle(key, rng)));
        upload.one_time_prekeys.push(k.public().clone());
    }
}

pub(super) fn kem_prekeys(
    device: &Device,
    first: u32,
    count: u32,
    rng: &mut ChaCha20Rng,
    key: &PickleKey,
    changes: &mut Changes,
    upload: &mut PreKeyUpload,
) {
    for i in 0..count {
        let k = device.generate_kem_prekey(first.wrapping_add(i), false, rng);
        changes
            .prekeys_added
            .push(((PreKeyKind::KemOneTime as u8, k.public().id), k.pickle(key, rng)));
        upload.kem_prekeys.push(k.public().clone());
    }
}

impl Machine {
    /// The current signed and last-resort prekeys of this device, for re-uploading them.
    pub(super) fn prekey_public_upload(&self) -> Result<PreKeyUpload, MachineError> {
        let mut upload = PreKeyUpload::default();
        if let Some(p) = self
            .prekeys
            .get(&(PreKeyKind::Signed as u8, self.account.value.signed_prekey_id))
        {
            upload.signed_prekey = Some(X25519PreKeySecret::unpickle(p, &self.pickle_key)?.public().clone());
        }
        if let Some(id) = self.last_resort_id()
            && let Some(p) = self.prekeys.get(&(PreKeyKind::KemLastResort as u8, id))
        {
            upload.last_resort_kem_prekey = Some(KemPreKeySecret::unpickle(p, &self.pickle_key)?.public().clone());
        }
        Ok(upload)
    }

    /// The current (newest) last-resort ML-KEM prekey's id.
    fn last_resort_id(&self) -> Option<u32> {
        self.prekey_ids(PreKeyKind::KemLastResort).last().copied()
    }

    /// The ids of this device's prekey secrets of one kind, in order.
    fn prekey_ids(&self, kind: PreKeyKind) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .prekeys
            .keys()
            .filter(|(k, _)| *k == kind as u8)
            .map(|(_, id)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Replaced signed and last-resort prekeys whose successor is older than
    /// [`PREKEY_GRACE_MS`]: their secrets go. The current ones never do.
    fn expired_prekeys(&self, now_ms: u64, changes: &mut Changes) {
        for kind in [PreKeyKind::Signed, PreKeyKind::KemLastResort] {
            for pair in self.prekey_ids(kind).windows(2) {
                if kind == PreKeyKind::Signed && pair[0] == self.account.value.signed_prekey_id {
                    continue;
                }
                let successor_made = prekey_created_ms(kind, pair[1]).unwrap_or(0);
                if successor_made.saturating_add(PREKEY_GRACE_MS) <= now_ms {
                    changes.prekeys_removed.push((kind as u8, pair[0]));
                }
            }
        }
    }

    /// A new signed prekey and a new last-resort ML-KEM prekey when the current ones are
    /// [`PREKEY_ROTATION_MS`] old (the old secrets stay for [`PREKEY_GRACE_MS`]).
    fn rotate_prekeys(
        &mut self,
        now_ms: u64,
        record: &mut crate::store::AccountRecord,
        changes: &mut Changes,
        upload: &mut PreKeyUpload,
    ) {
        let due = |kind, id: Option<u32>| {
            id.and_then(|id| prekey_created_ms(kind, id))
                .is_none_or(|made| made.saturating_add(PREKEY_ROTATION_MS) <= now_ms)
        };
        let signed =
            Some(record.signed_prekey_id).filter(|id| self.prekeys.contains_key(&(PreKeyKind::Signed as u8, *id)));
        if due(PreKeyKind::Signed, signed) {
            record.signed_prekey_id = signed_prekey(
                &self.device,
                now_ms,
                signed,
                &mut self.rng,
                &self.pickle_key,
                changes,
                upload,
            );
            record.prekeys_unsent = true;
        }
        let last_resort = self.last_resort_id();
        if due(PreKeyKind::KemLastResort, last_resort) {
            last_resort_prekey(
                &self.device,
                now_ms,
                last_resort,
                &mut self.rng,
                &self.pickle_key,
                changes,
                upload,
            );
            record.prekeys_unsent = true;
        }
    }

    /// The relay confirmed `uploaded`: when it carried the current signed and last-resort
    /// prekeys, clears the flag that makes every refill send them again. `None` when the
    /// flag is clear, or the upload carried other keys (a rotation came in between).
    pub fn prekeys_sent(&self, uploaded: &PreKeyUpload) -> Option<Changes> {
        if !self.account.value.prekeys_unsent {
            return None;
        }
        let current = self.prekey_public_upload().ok()?;
        let id = |k: Option<&sotto_crypto::X25519PreKey>| k.map(|k| k.id);
        let kem_id = |k: Option<&sotto_crypto::KemPreKey>| k.map(|k| k.id);
        if id(current.signed_prekey.as_ref()) != id(uploaded.signed_prekey.as_ref())
            || kem_id(current.last_resort_kem_prekey.as_ref()) != kem_id(uploaded.last_resort_kem_prekey.as_ref())
        {
            return None;
        }
        let mut record = self.account.value.clone();
        record.prekeys_unsent = false;
        Some(Changes {
            account: Some(Write {
                expected: Some(self.account.version),
                value: record,
            }),
            ..Changes::default()
        })
    }

    /// Given the relay's prekey counts and the time, new prekeys to upload (and the
    /// changes that keep their secrets and drop expired ones), or `None` when nothing is
    /// due. Rotates the signed and last-resort prekeys every [`PREKEY_ROTATION_MS`]. The
    /// upload may be empty when only expired secrets go.
    pub fn refill_prekeys(
        &mut self,
        counts: &PreKeyCounts,
        now_ms: u64,
    ) -> Result<Option<(Changes, PreKeyUpload)>, MachineError> {
        let mut upload = if counts.has_signed_prekey && counts.has_last_resort && !self.account.value.prekeys_unsent {
            PreKeyUpload::default()
        } else {
            let all = self.prekey_public_upload()?;
            PreKeyUpload {
                signed_prekey: all
                    .signed_prekey
                    .filter(|_| !counts.has_signed_prekey || self.account.value.prekeys_unsent),
                last_resort_kem_prekey: all
                    .last_resort_kem_prekey
                    .filter(|_| !counts.has_last_resort || self.account.value.prekeys_unsent),
                ..PreKeyUpload::default()
            }
        };
        let mut changes = Changes::default();
        let mut record = self.account.value.clone();
        self.rotate_prekeys(now_ms, &mut record, &mut changes, &mut upload);
        self.expired_prekeys(now_ms, &mut changes);
        if counts.one_time < ONE_TIME_LOW {
            one_time_prekeys(
                &self.device,
                record.next_one_time_id,
                ONE_TIME_BATCH,
                &mut self.rng,
                &self.pickle_key,
                &mut changes,
                &mut upload,
            );
            record.next_one_time_id = record.next_one_time_id.wrapping_add(ONE_TIME_BATCH);
        }
        if counts.kem_one_time < KEM_LOW {
            kem_prekeys(
                &self.device,
                record.next_kem_id,
                KEM_BATCH,
                &mut self.rng,
                &self.pickle_key,
                &mut changes,
                &mut upload,
            );
            record.next_kem_id = record.next_kem_id.wrapping_add(KEM_BATCH);
        }
        if upload == PreKeyUpload::default() && changes.prekeys_removed.is_empty() {
            return Ok(None);
        }
        if record != self.account.value {
            changes.account = Some(Write {
                expected: Some(self.account.version),
                value: record,
            });
        }
        Ok(Some((changes, upload)))
    }
}
