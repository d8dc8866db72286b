//! This device's prekeys: the first batch, and refills when the relay runs low.

use rand_chacha::ChaCha20Rng;
use sotto_crypto::pickle::Pickle;
use sotto_crypto::{Device, KemPreKeySecret, PickleKey, PreKeyKind, X25519PreKeySecret};
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

/// The id of the last-resort ML-KEM prekey (one-time ML-KEM ids count up from 1).
pub const LAST_RESORT_KEM_ID: u32 = 0x8000_0000;

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
    /// A signed prekey of this device, for re-uploading it.
    pub(super) fn prekey_public_upload(&self) -> Result<PreKeyUpload, MachineError> {
        let mut upload = PreKeyUpload::default();
        if let Some(p) = self
            .prekeys
            .get(&(PreKeyKind::Signed as u8, self.account.value.signed_prekey_id))
        {
            upload.signed_prekey = Some(X25519PreKeySecret::unpickle(p, &self.pickle_key)?.public().clone());
        }
        if let Some(p) = self.prekeys.get(&(PreKeyKind::KemLastResort as u8, LAST_RESORT_KEM_ID)) {
            upload.last_resort_kem_prekey = Some(KemPreKeySecret::unpickle(p, &self.pickle_key)?.public().clone());
        }
        Ok(upload)
    }

    /// Given the relay's prekey counts, new prekeys to upload (and the changes that keep
    /// their secrets), or `None` when the relay holds enough.
    pub fn refill_prekeys(&mut self, counts: &PreKeyCounts) -> Result<Option<(Changes, PreKeyUpload)>, MachineError> {
        let mut upload = if counts.has_signed_prekey && counts.has_last_resort {
            PreKeyUpload::default()
        } else {
            let all = self.prekey_public_upload()?;
            PreKeyUpload {
                signed_prekey: all.signed_prekey.filter(|_| !counts.has_signed_prekey),
                last_resort_kem_prekey: all.last_resort_kem_prekey.filter(|_| !counts.has_last_resort),
                ..PreKeyUpload::default()
            }
        };
        let mut changes = Changes::default();
        let mut record = self.account.value.clone();
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
        if upload == PreKeyUpload::default() {
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
