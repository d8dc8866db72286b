//! Signed device lists (docs/protocol.md §4).
//!
//! ```text
//! cert      = epoch(u64) ‖ LK_pub(32) ‖ Ed25519_AK("Sotto-v1 list key" ‖ account_id(32) ‖ epoch(u64) ‖ LK_pub)
//! body      = 0x03 ‖ AK_pub(32) ‖ cert(104) ‖ version(u64) ‖ created_at_ms(u64) ‖ count(u16)
//!             ‖ count × (device_id(u32) ‖ flags(u8) ‖ DSK_pub(32) ‖ IK_pub(32) ‖ binding(64))   ids strictly ascending
//! flags     : bit 0 = the device holds the list key; the other bits are 0
//! binding   = Ed25519_DSK("Sotto-v2 device binding" ‖ account_id(32) ‖ device_id(u32) ‖ DSK_pub ‖ IK_pub)
//! signature = Ed25519_LK("Sotto-v1 device list" ‖ body)
//! wire      = body ‖ signature(64)
//! ```
//! The account key `AK` signs only list-key certificates. The list key `LK` of an epoch
//! is derived from `AK` ([`AccountKey::list_key`]) and signs the lists. A list verifies
//! against an account id when `SHA-256("Sotto-v1 account id" ‖ AK_pub)` equals it
//! (constant-time), the certificate verifies under `AK`, the list signature under the
//! certified `LK`, and every entry's binding under that entry's DSK for that account id.
//! Versions and epochs are in `1..=MAX_VERSION`; [`DeviceList::check_update`] lets them
//! only grow, and within one epoch keeps every device that holds the list key: only a
//! new epoch, which needs `AK`, removes one.

use std::fmt;

use thiserror::Error;
use zeroize::Zeroizing;

use crate::codec::{DecodeError, Put, Reader};
use crate::identity::{AccountId, AccountKey, DeviceId, DeviceIdentity};
use crate::kdf::{hkdf, info};
use crate::keys::{Ed25519PublicKey, Ed25519Secret, KeyError, Signature, X25519PublicKey};

/// The most devices one account may list.
pub const MAX_DEVICES: usize = 64;

/// Largest list version and list-key epoch: 2^63 − 1.
pub const MAX_VERSION: u64 = (1 << 63) - 1;
/// Most a new list's version (within one epoch) or its epoch may exceed the pinned
/// one's, so that no list can push either to a value its owner can never exceed.
pub const MAX_VERSION_STEP: u64 = 1024;
/// Most a list of a higher epoch may step the version over the pinned one: far more
/// than a revoked list key can push it at a relay that enforces [`MAX_VERSION_STEP`] per
/// upload, and far below what would leave its owner no room.
pub const MAX_EPOCH_VERSION_STEP: u64 = 1 << 40;

const VERSION: u8 = 3;
const ENTRY_LEN: usize = 4 + 1 + 32 + 32 + 64;
const CERT_LEN: usize = 8 + 32 + 64;
const HEADER_LEN: usize = 1 + 32 + CERT_LEN + 8 + 8 + 2;
/// Entry flag: the device holds the list key.
const HOLDS_LIST_KEY: u8 = 0x01;

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
            Self::BadCertificate => "BadCertificate",
            Self::BadEpoch { .. } => "BadEpoch",
            Self::EpochJump { .. } => "EpochJump",
            Self::StaleListKey { .. } => "StaleListKey",
            Self::ListKeyMismatch { .. } => "ListKeyMismatch",
            Self::HolderRemoved(_) => "HolderRemoved",
            Self::HolderNotListed(_) => "HolderNotListed",
        }
    }
}

impl DeviceEntry {
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
    /// The account key's certificate of the list key does not verify.
    #[error("device list's list-key certificate does not verify")]
    BadCertificate,
    /// The list key's signature over the list does not verify.
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
    /// A list-key epoch of 0 or above [`MAX_VERSION`].
    #[error("list key epoch {epoch} is outside 1..=2^63-1")]
    BadEpoch {
        /// The epoch.
        epoch: u64,
    },
    /// A version more than [`MAX_VERSION_STEP`] above the pinned one within one epoch, or
    /// more than [`MAX_EPOCH_VERSION_STEP`] with a higher epoch.
    #[error("device list version {got} jumps more than {max} above the pinned {pinned}")]
    VersionJump {
        /// The pinned version.
        pinned: u64,
        /// The version offered.
        got: u64,
        /// [`MAX_VERSION_STEP`].
        max: u64,
    },
    /// A list-key epoch more than [`MAX_VERSION_STEP`] above the pinned one.
    #[error("list key epoch {got} jumps more than {max} above the pinned {pinned}")]
    EpochJump {
        /// The pinned epoch.
        pinned: u64,
        /// The epoch offered.
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
    /// Two different lists signed with one version: the list key signed both,
    /// or something is replaying a fork.
    #[error("two different device lists carry version {version}")]
    Equivocation {
        /// The version.
        version: u64,
    },
    /// A list signed with the list key of an epoch older than the pinned list's: a
    /// replaced (revoked) list key.
    #[error("device list signed by list key epoch {got}, older than the pinned epoch {pinned}")]
    StaleListKey {
        /// The pinned epoch.
        pinned: u64,
        /// The epoch offered.
        got: u64,
    },
    /// Two different list keys certified for one epoch.
    #[error("two different list keys carry epoch {epoch}")]
    ListKeyMismatch {
        /// The epoch.
        epoch: u64,
    },
    /// A list of the pinned epoch that removes, re-keys or demotes a device holding the
    /// list key: only a list under a new list key (signed by way of `AK`) may.
    #[error("device {0} holds the list key; only a new list key can remove it")]
    HolderRemoved(DeviceId),
    /// A list-key holder named at signing that the list does not contain.
    #[error("device {0} is marked as holding the list key but is not listed")]
    HolderNotListed(DeviceId),
}

/// The list key `LK` of one epoch, with the account key's certificate for it. It signs
/// the account's device lists. [`AccountKey::list_key`] derives it; a device given only
/// the list key can sign lists until a list of a later epoch is pinned, and cannot make
/// another list key.
pub struct ListKey {
    secret: Ed25519Secret,
    epoch: u64,
    account_key: Ed25519PublicKey,
    account_id: AccountId,
    certificate: Signature,
}

impl fmt::Debug for ListKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListKey")
            .field("account_id", &self.account_id)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

fn certificate_parts<'a>(
    account_id: &'a AccountId,
    epoch: &'a [u8; 8],
    list_key: &'a Ed25519PublicKey,
) -> [&'a [u8]; 4] {
    [info::LIST_KEY, account_id.as_bytes(), &epoch[..], list_key.as_bytes()]
}

impl AccountKey {
    /// The list key of `epoch`: `Ed25519` seed
    /// `HKDF-SHA256(salt = none, ikm = AK seed, info = "Sotto-v1 list key seed" ‖ account_id ‖ epoch)`,
    /// with its certificate. The same epoch always gives the same key.
    pub fn list_key(&self, epoch: u64) -> Result<ListKey, DeviceListError> {
        check_epoch(epoch)?;
        let e = epoch.to_be_bytes();
        let seed: Zeroizing<[u8; 32]> = hkdf(
            &[],
            self.secret().seed().as_slice(),
            &[info::LIST_KEY_SEED, self.account_id().as_bytes(), &e],
        );
        let secret = Ed25519Secret::from_seed(&seed);
        let id = self.account_id();
        let certificate = self.secret().sign_parts(&certificate_parts(&id, &e, &secret.public()));
        Ok(ListKey {
            secret,
            epoch,
            account_key: self.public_key(),
            account_id: id,
            certificate,
        })
    }

    /// Signs a device list with the list key of epoch 1, marking no device as holding
    /// it: for accounts whose devices never sign lists themselves (tools and tests).
    pub fn sign_device_list(
        &self,
        version: u64,
        created_at_ms: u64,
        devices: Vec<DeviceEntry>,
    ) -> Result<DeviceList, DeviceListError> {
        self.list_key(1)?.sign_device_list(version, created_at_ms, devices, &[])
    }
}

impl ListKey {
    /// Rebuilds a list key from its seed and a verified list of its epoch (which
    /// carries the certificate). `None` when the seed is not that list's key.
    pub fn from_seed(seed: &[u8; 32], list: &DeviceList) -> Option<Self> {
        let secret = Ed25519Secret::from_seed(seed);
        if secret.public() != list.list_key {
            return None;
        }
        Some(Self {
            secret,
            epoch: list.epoch,
            account_key: list.account_key,
            account_id: list.account_id,
            certificate: list.certificate,
        })
    }

    /// The 32-byte seed, to hand the key to a device being linked, under encryption.
    /// Whoever holds it can sign this epoch's lists; never log or store it in clear.
    pub fn dangerous_export_seed(&self) -> Zeroizing<[u8; 32]> {
        self.secret.seed()
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The public list key.
    pub fn public_key(&self) -> Ed25519PublicKey {
        self.secret.public()
    }

    /// The account id.
    pub fn account_id(&self) -> AccountId {
        self.account_id
    }

    pub(crate) fn parts(&self) -> (&Ed25519Secret, &Ed25519PublicKey, &Signature) {
        (&self.secret, &self.account_key, &self.certificate)
    }

    pub(crate) fn from_parts(
        secret: Ed25519Secret,
        epoch: u64,
        account_key: Ed25519PublicKey,
        certificate: Signature,
    ) -> Result<Self, DeviceListError> {
        check_epoch(epoch)?;
        let account_id = AccountId::from_account_key(&account_key);
        let e = epoch.to_be_bytes();
        account_key
            .verify_parts(&certificate_parts(&account_id, &e, &secret.public()), &certificate)
            .map_err(|_: KeyError| DeviceListError::BadCertificate)?;
        Ok(Self {
            secret,
            epoch,
            account_key,
            account_id,
            certificate,
        })
    }

    /// Signs a device list. `devices` may come in any order; they are sorted by id.
    /// `holders` are the listed devices that hold this list key.
    pub fn sign_device_list(
        &self,
        version: u64,
        created_at_ms: u64,
        mut devices: Vec<DeviceEntry>,
        holders: &[DeviceId],
    ) -> Result<DeviceList, DeviceListError> {
        devices.sort_by_key(|d| d.device_id);
        check_devices(&devices)?;
        check_version(version)?;
        let mut held: Vec<DeviceId> = Vec::with_capacity(holders.len());
        for h in holders {
            if !devices.iter().any(|d| d.device_id == *h) {
                return Err(DeviceListError::HolderNotListed(*h));
            }
            held.push(*h);
        }
        held.sort();
        held.dedup();
        let list_key = self.secret.public();
        let mut body = Vec::with_capacity(HEADER_LEN + devices.len() * ENTRY_LEN + 64);
        body.put_u8(VERSION);
        body.put(self.account_key.as_bytes());
        body.put_u64(self.epoch);
        body.put(list_key.as_bytes());
        body.put(&self.certificate.0);
        body.put_u64(version);
        body.put_u64(created_at_ms);
        body.put_u16(devices.len() as u16);
        for d in &devices {
            body.put_u32(d.device_id.0);
            body.put_u8(if held.binary_search(&d.device_id).is_ok() {
                HOLDS_LIST_KEY
            } else {
                0
            });
            body.put(d.signing_key.as_bytes());
            body.put(d.identity_key.as_bytes());
            body.put(&d.binding.0);
        }
        let sig = self.secret.sign_parts(&[info::DEVICE_LIST, &body]);
        body.put(&sig.0);
        Ok(DeviceList {
            account_key: self.account_key,
            account_id: self.account_id,
            epoch: self.epoch,
            list_key,
            certificate: self.certificate,
            version,
            created_at_ms,
            devices,
            holders: held,
            signed: SignedDeviceList { bytes: body },
        })
    }
}

/// A device list whose signatures have been checked against its account id. Only
/// [`SignedDeviceList::verify`] and [`ListKey::sign_device_list`] make one.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceList {
    account_key: Ed25519PublicKey,
    account_id: AccountId,
    epoch: u64,
    list_key: Ed25519PublicKey,
    certificate: Signature,
    version: u64,
    created_at_ms: u64,
    devices: Vec<DeviceEntry>,
    holders: Vec<DeviceId>,
    signed: SignedDeviceList,
}

impl fmt::Debug for DeviceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceList")
            .field("account_id", &self.account_id)
            .field("epoch", &self.epoch)
            .field("version", &self.version)
            .field(
                "devices",
                &self.devices.iter().map(|d| d.device_id.0).collect::<Vec<_>>(),
            )
            .field("holders", &self.holders.iter().map(|d| d.0).collect::<Vec<_>>())
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

fn check_version(version: u64) -> Result<(), DeviceListError> {
    if version == 0 || version > MAX_VERSION {
        return Err(DeviceListError::BadVersion { version });
    }
    Ok(())
}

fn check_epoch(epoch: u64) -> Result<(), DeviceListError> {
    if epoch == 0 || epoch > MAX_VERSION {
        return Err(DeviceListError::BadEpoch { epoch });
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

fn parse_key(r: &mut Reader<'_>, field: &'static str) -> Result<Ed25519PublicKey, DecodeError> {
    Ed25519PublicKey::from_bytes(&r.array()?).map_err(|_| DecodeError::Invalid { field })
}

impl SignedDeviceList {
    /// Largest encoding: a full list.
    pub const MAX_LEN: usize = HEADER_LEN + MAX_DEVICES * ENTRY_LEN + 64;

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

    /// Decodes the body without checking any signature, for a relay or store that only
    /// needs the account key and version before verifying.
    pub fn account_key_and_version(&self) -> Result<(Ed25519PublicKey, u64), DeviceListError> {
        let mut r = Reader::new(&self.bytes);
        r.version(VERSION)?;
        let ak = parse_key(&mut r, "account key")?;
        r.bytes(CERT_LEN)?;
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
        let account_key = parse_key(&mut r, "account key")?;
        if !AccountId::from_account_key(&account_key).ct_eq(account_id) {
            return Err(DeviceListError::WrongAccount);
        }
        let epoch = r.u64()?;
        let list_key = parse_key(&mut r, "list key")?;
        let certificate = Signature(r.array()?);
        let e = epoch.to_be_bytes();
        account_key
            .verify_parts(&certificate_parts(account_id, &e, &list_key), &certificate)
            .map_err(|_: KeyError| DeviceListError::BadCertificate)?;
        let mut sig_bytes = [0u8; 64];
        sig_bytes.copy_from_slice(sig);
        list_key
            .verify_parts(&[info::DEVICE_LIST, body], &Signature(sig_bytes))
            .map_err(|_: KeyError| DeviceListError::BadSignature)?;
        check_epoch(epoch)?;
        let version = r.u64()?;
        check_version(version)?;
        let created_at_ms = r.u64()?;
        let n = r.count("devices", MAX_DEVICES, ENTRY_LEN)?;
        let mut devices = Vec::with_capacity(n);
        let mut holders = Vec::new();
        for _ in 0..n {
            let device_id = DeviceId(r.u32()?);
            let flags = r.u8()?;
            if flags & !HOLDS_LIST_KEY != 0 {
                return Err(DecodeError::Invalid { field: "device flags" }.into());
            }
            let signing_key = parse_key(&mut r, "device signing key")?;
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
            if flags & HOLDS_LIST_KEY != 0 {
                holders.push(device_id);
            }
            devices.push(entry);
        }
        r.finish()?;
        check_devices(&devices)?;
        Ok(DeviceList {
            account_key,
            account_id: *account_id,
            epoch,
            list_key,
            certificate,
            version,
            created_at_ms,
            devices,
            holders,
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

    /// The list key's epoch; it only grows.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The public list key that signed this list.
    pub fn list_key(&self) -> Ed25519PublicKey {
        self.list_key
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

    /// The devices marked as holding the list key, ascending.
    pub fn holders(&self) -> &[DeviceId] {
        &self.holders
    }

    /// True when `id` is listed and marked as holding the list key.
    pub fn holds_list_key(&self, id: DeviceId) -> bool {
        self.holders.binary_search(&id).is_ok()
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

    /// Checks that `newer` may replace this (pinned) list (docs/protocol.md §4.3): same
    /// account; epoch not lower and at most [`MAX_VERSION_STEP`] higher, with one list
    /// key per epoch; version not lower, and at most [`MAX_VERSION_STEP`] higher within
    /// one epoch ([`MAX_EPOCH_VERSION_STEP`] with a higher epoch); a same-version list
    /// identical; and within one epoch every device that holds the list key kept, with
    /// the same keys and still holding it. Returns what changed.
    pub fn check_update(&self, newer: &DeviceList) -> Result<DeviceListChange, DeviceListError> {
        if !self.account_id.ct_eq(&newer.account_id) {
            return Err(DeviceListError::WrongAccount);
        }
        if newer.epoch < self.epoch {
            return Err(DeviceListError::StaleListKey {
                pinned: self.epoch,
                got: newer.epoch,
            });
        }
        if newer.epoch - self.epoch > MAX_VERSION_STEP {
            return Err(DeviceListError::EpochJump {
                pinned: self.epoch,
                got: newer.epoch,
                max: MAX_VERSION_STEP,
            });
        }
        let same_epoch = newer.epoch == self.epoch;
        if newer.version < self.version {
            return Err(DeviceListError::Rollback {
                pinned: self.version,
                got: newer.version,
            });
        }
        // A new epoch comes only from AK (the recovery key), which may need to step over
        // versions a revoked list key pushed up: it gets a far larger, still bounded step.
        let max = if same_epoch {
            MAX_VERSION_STEP
        } else {
            MAX_EPOCH_VERSION_STEP
        };
        if newer.version - self.version > max {
            return Err(DeviceListError::VersionJump {
                pinned: self.version,
                got: newer.version,
                max,
            });
        }
        if newer.version == self.version {
            if newer.signed != self.signed {
                return Err(DeviceListError::Equivocation { version: self.version });
            }
            return Ok(DeviceListChange::default());
        }
        if same_epoch {
            if newer.list_key != self.list_key {
                return Err(DeviceListError::ListKeyMismatch { epoch: self.epoch });
            }
            for h in &self.holders {
                let kept = newer.holds_list_key(*h) && newer.device(*h) == self.device(*h);
                if !kept {
                    return Err(DeviceListError::HolderRemoved(*h));
                }
            }
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
        body[137..145].copy_from_slice(&u64::MAX.to_be_bytes());
        let lk = ak.list_key(1).unwrap();
        let sig = lk.parts().0.sign_parts(&[info::DEVICE_LIST, &body]);
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

    /// Finding 12: a device that held the list key cannot come back once a new list key
    /// replaces it, and within one epoch no list drops a holder.
    #[test]
    fn list_key_holders_leave_only_with_a_new_epoch() {
        let (ak, devs) = setup();
        let entries = |n: usize| devs[..n].iter().map(Device::entry).collect::<Vec<_>>();
        let lk1 = ak.list_key(1).unwrap();
        // Devices 1 and 2 hold the list key; device 3 does not.
        let v1 = lk1
            .sign_device_list(1, 0, entries(3), &[DeviceId(1), DeviceId(2)])
            .unwrap();
        let wire = v1.signed().verify(&ak.account_id()).unwrap();
        assert_eq!(wire.holders(), &[DeviceId(1), DeviceId(2)]);
        assert_eq!(wire.epoch(), 1);
        // Removing device 3 (no list key) needs only the list key.
        let v2 = lk1
            .sign_device_list(2, 0, entries(2), &[DeviceId(1), DeviceId(2)])
            .unwrap();
        assert_eq!(v1.check_update(&v2).unwrap().removed, vec![DeviceId(3)]);
        // Removing or demoting device 2 under the same list key is refused.
        let drop2 = lk1.sign_device_list(3, 0, entries(1), &[DeviceId(1)]).unwrap();
        assert_eq!(
            v2.check_update(&drop2),
            Err(DeviceListError::HolderRemoved(DeviceId(2)))
        );
        let demote2 = lk1.sign_device_list(3, 0, entries(2), &[DeviceId(1)]).unwrap();
        assert_eq!(
            v2.check_update(&demote2),
            Err(DeviceListError::HolderRemoved(DeviceId(2)))
        );
        // With the account key, a new epoch removes it.
        let lk2 = ak.list_key(2).unwrap();
        assert_ne!(lk2.public_key(), lk1.public_key());
        let v3 = lk2.sign_device_list(3, 0, entries(1), &[DeviceId(1)]).unwrap();
        assert_eq!(v2.check_update(&v3).unwrap().removed, vec![DeviceId(2)]);
        // Device 2 still holds lk1: whatever it signs is now refused, at any version.
        let back = lk1.sign_device_list(4, 0, entries(2), &[DeviceId(2)]).unwrap();
        assert!(back.signed().verify(&ak.account_id()).is_ok());
        assert_eq!(
            v3.check_update(&back),
            Err(DeviceListError::StaleListKey { pinned: 2, got: 1 })
        );
        // The same epoch always derives the same key; a holder must be listed.
        assert_eq!(ak.list_key(2).unwrap().public_key(), lk2.public_key());
        assert_eq!(
            lk2.sign_device_list(4, 0, entries(1), &[DeviceId(9)]),
            Err(DeviceListError::HolderNotListed(DeviceId(9)))
        );
        // A list key rebuilt from its seed signs the same lists.
        let seed = lk2.dangerous_export_seed();
        let again = ListKey::from_seed(&seed, &v3).unwrap();
        assert_eq!(again.epoch(), 2);
        assert!(ListKey::from_seed(&seed, &v2).is_none());
        // Epochs are bounded like versions; a new epoch may step over versions.
        assert_eq!(ak.list_key(0).unwrap_err(), DeviceListError::BadEpoch { epoch: 0 });
        let far = ak.list_key(3 + MAX_VERSION_STEP).unwrap();
        let jump = far.sign_device_list(5, 0, entries(1), &[]).unwrap();
        assert_eq!(
            v3.check_update(&jump),
            Err(DeviceListError::EpochJump {
                pinned: 2,
                got: 3 + MAX_VERSION_STEP,
                max: MAX_VERSION_STEP
            })
        );
        let lk3 = ak.list_key(3).unwrap();
        let leap = lk3
            .sign_device_list(3 + 5 * MAX_VERSION_STEP, 0, entries(1), &[])
            .unwrap();
        assert!(v3.check_update(&leap).is_ok());
        let top = lk3
            .sign_device_list(3 + MAX_EPOCH_VERSION_STEP, 0, entries(1), &[])
            .unwrap();
        assert!(v3.check_update(&top).is_ok());
        let pill = lk3
            .sign_device_list(4 + MAX_EPOCH_VERSION_STEP, 0, entries(1), &[])
            .unwrap();
        assert_eq!(
            v3.check_update(&pill),
            Err(DeviceListError::VersionJump {
                pinned: 3,
                got: 4 + MAX_EPOCH_VERSION_STEP,
                max: MAX_EPOCH_VERSION_STEP
            })
        );
    }

    /// A certificate by another account key, or over another list key, is refused.
    #[test]
    fn the_list_key_needs_the_account_keys_certificate() {
        let (ak, devs) = setup();
        let list = ak.sign_device_list(1, 0, vec![devs[0].entry()]).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(13); // test only
        let other = AccountKey::generate(&mut rng).list_key(1).unwrap();
        // Splice the other account's list key and certificate under this account key.
        let mut body = list.signed().as_bytes()[..list.signed().as_bytes().len() - 64].to_vec();
        let (secret, _, cert) = other.parts();
        body[41..73].copy_from_slice(other.public_key().as_bytes());
        body[73..137].copy_from_slice(&cert.0);
        let sig = secret.sign_parts(&[info::DEVICE_LIST, &body]);
        body.extend_from_slice(&sig.0);
        assert_eq!(
            SignedDeviceList::from_bytes(&body).unwrap().verify(&ak.account_id()),
            Err(DeviceListError::BadCertificate)
        );
    }
}
