//! Signed device lists (docs/protocol.md §4).
//!
//! ```text
//! body      = 0x02 ‖ AK_pub(32) ‖ version(u64) ‖ created_at_ms(u64) ‖ count(u16)
//!             ‖ count × (device_id(u32) ‖ DSK_pub(32) ‖ IK_pub(32) ‖ binding(64))   ids strictly ascending
//! binding   = Ed25519_DSK("Sotto-v2 device binding" ‖ account_id(32) ‖ device_id(u32) ‖ DSK_pub ‖ IK_pub)
//! signature = Ed25519_AK("Sotto-v1 device list" ‖ body)
//! wire      = body ‖ signature(64)
//! ```
//! A list verifies against an account id when `SHA-256("Sotto-v1 account id" ‖ AK_pub)`
//! equals it (constant-time), the signature verifies (strict) and every entry's binding
//! verifies under that entry's DSK for that account id: a device's keys can be listed by
//! no account but its own. Versions are in `1..=MAX_VERSION`, only grow, and grow by at
//! most [`MAX_VERSION_STEP`] over a pinned list.

use std::fmt;

use thiserror::Error;

use crate::codec::{DecodeError, Put, Reader};
use crate::identity::{AccountId, AccountKey, DeviceId, DeviceIdentity};
use crate::kdf::info;
use crate::keys::{Ed25519PublicKey, KeyError, Signature, X25519PublicKey};

/// The most devices one account may list.
pub const MAX_DEVICES: usize = 64;

/// Largest list version: 2^63 − 1.
pub const MAX_VERSION: u64 = (1 << 63) - 1;
/// Most a new list's version may exceed the pinned one's, so that no list can push the
/// version to a value its owner can never exceed.
pub const MAX_VERSION_STEP: u64 = 1024;

const VERSION: u8 = 2;
const ENTRY_LEN: usize = 4 + 32 + 32 + 64;

/// The parts of the device binding signature; `id` is scratch space for the device id.
pub(crate) fn binding_parts<'a>(
    account_id: &'a AccountId,
    device_id: DeviceId,
    signing_key: &'a Ed25519PublicKey,
    identity_key: &'a X25519PublicKey,
    id: &'a mut [u8; 4],
) -> [&'a [u8]; 5] {
    *id = device_id.0.to_be_bytes();
    [
        info::DEVICE_BINDING,
        account_id.as_bytes(),
        &id[..],
        signing_key.as_bytes(),
        identity_key.as_bytes(),
    ]
}

/// One device in a device list.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct DeviceEntry {
    /// The device number.
    pub device_id: DeviceId,
    /// The device signing key `DSK`.
    pub signing_key: Ed25519PublicKey,
    /// The device identity key `IK`.
    pub identity_key: X25519PublicKey,
    /// The device's DSK signature binding its keys to its account ([`Device::entry`]
    /// makes it; a list whose entry's binding does not verify is refused).
    ///
    /// [`Device::entry`]: crate::Device::entry
    pub binding: Signature,
}

impl DeviceListError {
    /// A stable name for the error, as the vectors record it (docs/protocol.md §12.2).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Decode(_) => "Decode",
            Self::WrongAccount => "WrongAccount",
            Self::BadSignature => "BadSignature",
            Self::BadDeviceCount { .. } => "BadDeviceCount",
            Self::BadDeviceBinding(_) => "BadDeviceBinding",
            Self::BadVersion { .. } => "BadVersion",
            Self::VersionJump { .. } => "VersionJump",
            Self::DuplicateDevice(_) => "DuplicateDevice",
            Self::Rollback { .. } => "Rollback",
            Self::Equivocation { .. } => "Equivocation",
        }
    }
}

impl DeviceEntry {
    /// The entry's full identity within `account_id`'s list.
    /// Whether the entry's binding verifies for `account_id`.
    pub fn binding_verifies(&self, account_id: &AccountId) -> bool {
        let mut id = [0u8; 4];
        let parts = binding_parts(
            account_id,
            self.device_id,
            &self.signing_key,
            &self.identity_key,
            &mut id,
        );
        self.signing_key.verify_parts(&parts, &self.binding).is_ok()
    }

    /// The entry's full identity within `account_id`'s list.
    pub fn identity(&self, account_id: AccountId) -> DeviceIdentity {
        DeviceIdentity {
            account_id,
            device_id: self.device_id,
            signing_key: self.signing_key,
            identity_key: self.identity_key,
        }
    }
}

/// Why a device list was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DeviceListError {
    /// The bytes do not decode.
    #[error("device list does not decode: {0}")]
    Decode(#[from] DecodeError),
    /// The list's account key does not hash to the expected account id.
    #[error("device list belongs to another account")]
    WrongAccount,
    /// The account key's signature does not verify.
    #[error("device list signature does not verify")]
    BadSignature,
    /// A list with no devices, or more than [`MAX_DEVICES`].
    #[error("device list has {count} devices; 1..={max} allowed")]
    BadDeviceCount {
        /// Devices in the list.
        count: usize,
        /// [`MAX_DEVICES`].
        max: usize,
    },
    /// An entry whose device did not bind its keys to this account: the list names
    /// another account's device, or keys no device holds.
    #[error("device {0} did not bind its keys to this account")]
    BadDeviceBinding(DeviceId),
    /// A version of 0 or above [`MAX_VERSION`].
    #[error("device list version {version} is outside 1..=2^63-1")]
    BadVersion {
        /// The version.
        version: u64,
    },
    /// A version more than [`MAX_VERSION_STEP`] above the pinned one.
    #[error("device list version {got} jumps more than {max} above the pinned {pinned}")]
    VersionJump {
        /// The pinned version.
        pinned: u64,
        /// The version offered.
        got: u64,
        /// [`MAX_VERSION_STEP`].
        max: u64,
    },
    /// Two entries with one device id.
    #[error("device id {0} listed twice")]
    DuplicateDevice(DeviceId),
    /// A list older than the one pinned.
    #[error("device list version {got} is older than the pinned version {pinned}")]
    Rollback {
        /// The pinned version.
        pinned: u64,
        /// The version offered.
        got: u64,
    },
    /// Two different lists signed with one version: the account key signed both,
    /// or something is replaying a fork.
    #[error("two different device lists carry version {version}")]
    Equivocation {
        /// The version.
        version: u64,
    },
}

/// A device list whose signature has been checked against its account id. Only
/// [`SignedDeviceList::verify`] and [`AccountKey::sign_device_list`] make one.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceList {
    account_key: Ed25519PublicKey,
    account_id: AccountId,
    version: u64,
    created_at_ms: u64,
    devices: Vec<DeviceEntry>,
    signed: SignedDeviceList,
}

impl fmt::Debug for DeviceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceList")
            .field("account_id", &self.account_id)
            .field("version", &self.version)
            .field(
                "devices",
                &self.devices.iter().map(|d| d.device_id.0).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// A device list as it travels: body and signature, not yet verified.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SignedDeviceList {
    bytes: Vec<u8>,
}

/// What changed between a pinned device list and a newer one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceListChange {
    /// Devices in the new list only.
    pub added: Vec<DeviceId>,
    /// Devices in the old list only.
    pub removed: Vec<DeviceId>,
    /// Devices in both whose keys differ.
    pub rekeyed: Vec<DeviceId>,
}

impl DeviceListChange {
    /// True when the device set and keys are the same.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.rekeyed.is_empty()
    }
}

impl AccountKey {
    /// Signs a device list. `devices` may come in any order; they are sorted by id.
    pub fn sign_device_list(
        &self,
        version: u64,
        created_at_ms: u64,
        mut devices: Vec<DeviceEntry>,
    ) -> Result<DeviceList, DeviceListError> {
        devices.sort_by_key(|d| d.device_id);
        check_devices(&devices)?;
        check_version(version)?;
        let mut body = Vec::with_capacity(1 + 32 + 8 + 8 + 2 + devices.len() * ENTRY_LEN + 64);
        body.put_u8(VERSION);
        body.put(self.public_key().as_bytes());
        body.put_u64(version);
        body.put_u64(created_at_ms);
        body.put_u16(devices.len() as u16);
        for d in &devices {
            body.put_u32(d.device_id.0);
            body.put(d.signing_key.as_bytes());
            body.put(d.identity_key.as_bytes());
            body.put(&d.binding.0);
        }
        let sig = self.secret().sign_parts(&[info::DEVICE_LIST, &body]);
        body.put(&sig.0);
        Ok(DeviceList {
            account_key: self.public_key(),
            account_id: self.account_id(),
            version,
            created_at_ms,
            devices,
            signed: SignedDeviceList { bytes: body },
        })
    }
}

fn check_version(version: u64) -> Result<(), DeviceListError> {
    if version == 0 || version > MAX_VERSION {
        return Err(DeviceListError::BadVersion { version });
    }
    Ok(())
}

fn check_devices(devices: &[DeviceEntry]) -> Result<(), DeviceListError> {
    if devices.is_empty() || devices.len() > MAX_DEVICES {
        return Err(DeviceListError::BadDeviceCount {
            count: devices.len(),
            max: MAX_DEVICES,
        });
    }
    for w in devices.windows(2) {
        if w[0].device_id == w[1].device_id {
            return Err(DeviceListError::DuplicateDevice(w[0].device_id));
        }
    }
    Ok(())
}

impl SignedDeviceList {
    /// Largest encoding: a full list.
    pub const MAX_LEN: usize = 1 + 32 + 8 + 8 + 2 + MAX_DEVICES * ENTRY_LEN + 64;

    /// Takes the wire bytes; nothing is checked until [`verify`](Self::verify).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > Self::MAX_LEN {
            return Err(DecodeError::TooLong {
                field: "device list",
                len: bytes.len(),
                max: Self::MAX_LEN,
            });
        }
        Ok(Self { bytes: bytes.to_vec() })
    }

    /// The wire bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Decodes the body without checking the signature, for a relay that only needs
    /// the account key and version before verifying.
    pub fn account_key_and_version(&self) -> Result<(Ed25519PublicKey, u64), DeviceListError> {
        let mut r = Reader::new(&self.bytes);
        r.version(VERSION)?;
        let ak =
            Ed25519PublicKey::from_bytes(&r.array()?).map_err(|_| DecodeError::Invalid { field: "account key" })?;
        Ok((ak, r.u64()?))
    }

    /// Decodes and verifies the list against the account id it must belong to.
    pub fn verify(&self, account_id: &AccountId) -> Result<DeviceList, DeviceListError> {
        let split = self.bytes.len().checked_sub(64).ok_or(DecodeError::Truncated {
            needed: 64,
            remaining: self.bytes.len(),
        })?;
        let (body, sig) = self.bytes.split_at(split);
        let mut r = Reader::new(body);
        r.version(VERSION)?;
        let account_key =
            Ed25519PublicKey::from_bytes(&r.array()?).map_err(|_| DecodeError::Invalid { field: "account key" })?;
        if !AccountId::from_account_key(&account_key).ct_eq(account_id) {
            return Err(DeviceListError::WrongAccount);
        }
        let mut sig_bytes = [0u8; 64];
        sig_bytes.copy_from_slice(sig);
        account_key
            .verify_parts(&[info::DEVICE_LIST, body], &Signature(sig_bytes))
            .map_err(|_: KeyError| DeviceListError::BadSignature)?;
        let version = r.u64()?;
        check_version(version)?;
        let created_at_ms = r.u64()?;
        let n = r.count("devices", MAX_DEVICES, ENTRY_LEN)?;
        let mut devices = Vec::with_capacity(n);
        for _ in 0..n {
            let device_id = DeviceId(r.u32()?);
            let signing_key = Ed25519PublicKey::from_bytes(&r.array()?).map_err(|_| DecodeError::Invalid {
                field: "device signing key",
            })?;
            let identity_key = X25519PublicKey(r.array()?);
            let binding = Signature(r.array()?);
            if devices.last().is_some_and(|d: &DeviceEntry| d.device_id >= device_id) {
                return Err(DecodeError::Invalid { field: "device order" }.into());
            }
            let entry = DeviceEntry {
                device_id,
                signing_key,
                identity_key,
                binding,
            };
            if !entry.binding_verifies(account_id) {
                return Err(DeviceListError::BadDeviceBinding(device_id));
            }
            devices.push(entry);
        }
        r.finish()?;
        check_devices(&devices)?;
        Ok(DeviceList {
            account_key,
            account_id: *account_id,
            version,
            created_at_ms,
            devices,
            signed: self.clone(),
        })
    }
}

impl DeviceList {
    /// The account id.
    pub fn account_id(&self) -> AccountId {
        self.account_id
    }

    /// The account public key.
    pub fn account_key(&self) -> Ed25519PublicKey {
        self.account_key
    }

    /// The version; it only grows.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// When the account holder signed it, in Unix milliseconds (as claimed by the signer).
    pub fn created_at_ms(&self) -> u64 {
        self.created_at_ms
    }

    /// The devices, ascending by id.
    pub fn devices(&self) -> &[DeviceEntry] {
        &self.devices
    }

    /// The entry for one device.
    pub fn device(&self, id: DeviceId) -> Option<&DeviceEntry> {
        self.devices
            .binary_search_by_key(&id, |d| d.device_id)
            .ok()
            .and_then(|i| self.devices.get(i))
    }

    /// The full public identity of one listed device.
    pub fn identity(&self, id: DeviceId) -> Option<DeviceIdentity> {
        self.device(id).map(|d| DeviceIdentity {
            account_id: self.account_id,
            device_id: d.device_id,
            signing_key: d.signing_key,
            identity_key: d.identity_key,
        })
    }

    /// True when `identity` is listed here with exactly these keys.
    pub fn contains(&self, identity: &DeviceIdentity) -> bool {
        self.identity(identity.device_id).is_some_and(|d| d.ct_eq(identity))
    }

    /// The signed wire form.
    pub fn signed(&self) -> &SignedDeviceList {
        &self.signed
    }

    /// Checks that `newer` may replace this (pinned) list: same account, version not
    /// lower and at most [`MAX_VERSION_STEP`] higher, and a same-version list identical.
    /// Returns what changed.
    pub fn check_update(&self, newer: &DeviceList) -> Result<DeviceListChange, DeviceListError> {
        if !self.account_id.ct_eq(&newer.account_id) {
            return Err(DeviceListError::WrongAccount);
        }
        if newer.version < self.version {
            return Err(DeviceListError::Rollback {
                pinned: self.version,
                got: newer.version,
            });
        }
        if newer.version - self.version > MAX_VERSION_STEP {
            return Err(DeviceListError::VersionJump {
                pinned: self.version,
                got: newer.version,
                max: MAX_VERSION_STEP,
            });
        }
        if newer.version == self.version {
            if newer.signed != self.signed {
                return Err(DeviceListError::Equivocation { version: self.version });
            }
            return Ok(DeviceListChange::default());
        }
        let mut change = DeviceListChange::default();
        for d in &newer.devices {
            match self.device(d.device_id) {
                None => change.added.push(d.device_id),
                Some(old) if old != d => change.rekeyed.push(d.device_id),
                Some(_) => {}
            }
        }
        for d in &self.devices {
            if newer.device(d.device_id).is_none() {
                change.removed.push(d.device_id);
            }
        }
        Ok(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Device;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn setup() -> (AccountKey, Vec<Device>) {
        let mut rng = ChaCha20Rng::seed_from_u64(10); // test only
        let ak = AccountKey::generate(&mut rng);
        let devices = (1..=3)
            .map(|i| Device::generate(ak.account_id(), DeviceId(i), &mut rng))
            .collect();
        (ak, devices)
    }

    #[test]
    fn verify_round_trip_and_lookup() {
        let (ak, devs) = setup();
        let list = ak
            .sign_device_list(1, 1000, devs.iter().rev().map(Device::entry).collect())
            .unwrap();
        let wire = SignedDeviceList::from_bytes(list.signed().as_bytes()).unwrap();
        let got = wire.verify(&ak.account_id()).unwrap();
        assert_eq!(got, list);
        assert_eq!(got.devices().len(), 3);
        assert!(got.contains(&devs[1].identity()));
        assert_eq!(wire.account_key_and_version().unwrap(), (ak.public_key(), 1));
    }

    #[test]
    fn wrong_account_and_tampering_are_refused() {
        let (ak, devs) = setup();
        let list = ak
            .sign_device_list(1, 0, devs.iter().map(Device::entry).collect())
            .unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(11); // test only
        let other = AccountKey::generate(&mut rng);
        assert_eq!(
            list.signed().verify(&other.account_id()),
            Err(DeviceListError::WrongAccount)
        );
        let bytes = list.signed().as_bytes();
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = bytes.to_vec();
                b[i] ^= bit;
                assert!(
                    SignedDeviceList::from_bytes(&b)
                        .unwrap()
                        .verify(&ak.account_id())
                        .is_err(),
                    "byte {i}"
                );
            }
        }
    }

    #[test]
    fn updates_are_monotonic_and_report_changes() {
        let (ak, devs) = setup();
        let v1 = ak
            .sign_device_list(1, 0, devs[..2].iter().map(Device::entry).collect())
            .unwrap();
        let v2 = ak
            .sign_device_list(2, 0, devs[1..].iter().map(Device::entry).collect())
            .unwrap();
        let change = v1.check_update(&v2).unwrap();
        assert_eq!(change.added, vec![DeviceId(3)]);
        assert_eq!(change.removed, vec![DeviceId(1)]);
        assert!(v1.check_update(&v1).unwrap().is_empty());
        assert_eq!(
            v2.check_update(&v1),
            Err(DeviceListError::Rollback { pinned: 2, got: 1 })
        );
        let fork = ak
            .sign_device_list(2, 5, devs.iter().map(Device::entry).collect())
            .unwrap();
        assert_eq!(
            v2.check_update(&fork),
            Err(DeviceListError::Equivocation { version: 2 })
        );
    }

    #[test]
    fn counts_and_duplicates_are_bounded() {
        let (ak, devs) = setup();
        assert!(matches!(
            ak.sign_device_list(1, 0, vec![]),
            Err(DeviceListError::BadDeviceCount { .. })
        ));
        let e = devs[0].entry();
        assert_eq!(
            ak.sign_device_list(1, 0, vec![e, e]),
            Err(DeviceListError::DuplicateDevice(DeviceId(1)))
        );
    }

    /// Finding 13: an account cannot list another account's device as its own.
    #[test]
    fn an_entry_without_its_devices_binding_is_refused() {
        let (ak, devs) = setup();
        let mut rng = ChaCha20Rng::seed_from_u64(12); // test only
        let mallory = AccountKey::generate(&mut rng);
        // Mallory lists Alice's device 1 keys under her own account.
        let stolen = devs[0].entry();
        let list = mallory.sign_device_list(1, 0, vec![stolen]).unwrap();
        assert_eq!(
            list.signed().verify(&mallory.account_id()),
            Err(DeviceListError::BadDeviceBinding(DeviceId(1)))
        );
        // Nor with a binding of her own making over the stolen keys.
        let mine = Device::generate(mallory.account_id(), DeviceId(1), &mut rng).entry();
        let mixed = DeviceEntry {
            binding: mine.binding,
            ..stolen
        };
        let list = mallory.sign_device_list(1, 0, vec![mixed]).unwrap();
        assert_eq!(
            list.signed().verify(&mallory.account_id()),
            Err(DeviceListError::BadDeviceBinding(DeviceId(1)))
        );
        // The binding does not depend on the version: the same entry serves every list.
        let v7 = ak
            .sign_device_list(7, 0, devs.iter().map(Device::entry).collect())
            .unwrap();
        assert!(v7.signed().verify(&ak.account_id()).is_ok());
    }

    /// Finding 12: no poison-pill version.
    #[test]
    fn versions_are_bounded_and_jumps_refused() {
        let (ak, devs) = setup();
        let entries = || devs.iter().map(Device::entry).collect::<Vec<_>>();
        for bad in [0, MAX_VERSION + 1, u64::MAX] {
            assert_eq!(
                ak.sign_device_list(bad, 0, entries()),
                Err(DeviceListError::BadVersion { version: bad })
            );
        }
        // A list carrying u64::MAX, signed by hand, does not verify either.
        let good = ak.sign_device_list(1, 0, entries()).unwrap();
        let mut body = good.signed().as_bytes()[..good.signed().as_bytes().len() - 64].to_vec();
        body[33..41].copy_from_slice(&u64::MAX.to_be_bytes());
        let sig = ak.secret().sign_parts(&[info::DEVICE_LIST, &body]);
        body.extend_from_slice(&sig.0);
        assert_eq!(
            SignedDeviceList::from_bytes(&body).unwrap().verify(&ak.account_id()),
            Err(DeviceListError::BadVersion { version: u64::MAX })
        );
        let v1 = good;
        let step = ak.sign_device_list(1 + MAX_VERSION_STEP, 0, entries()).unwrap();
        assert!(v1.check_update(&step).is_ok());
        let jump = ak.sign_device_list(2 + MAX_VERSION_STEP, 0, entries()).unwrap();
        assert_eq!(
            v1.check_update(&jump),
            Err(DeviceListError::VersionJump {
                pinned: 1,
                got: 2 + MAX_VERSION_STEP,
                max: MAX_VERSION_STEP
            })
        );
        let top = ak.sign_device_list(MAX_VERSION, 0, entries()).unwrap();
        assert!(top.signed().verify(&ak.account_id()).is_ok());
    }
}
