//! Linking a new device to an account, removing one, and the recovery key (native).
//! docs/protocol.md §12A specifies every byte; client-sdk/tests/vectors/link.json has
//! known answers.
//!
//! ```text
//! code        = "sotto-link:" ‖ account id (52 chars) ‖ "." ‖ hex(secret (32))     shown by an existing device
//! req_key     = HKDF-SHA256(salt = none, ikm = secret, info = "Sotto-v1 link request", 32)
//! acc_key     = HKDF-SHA256(salt = none, ikm = secret, info = "Sotto-v1 link accept", 32)
//! body        = device_id (u32) ‖ DSK_pub (32) ‖ IK_pub (32) ‖ binding (64, §4.1) ‖ name_len (u8, ≤ 64) ‖ name (UTF-8)
//! request     = 0x01 ‖ body ‖ HMAC-SHA256(req_key, account_id ‖ body)
//!               sealed by the new device (content type 0x10) to every listed device, anonymously
//! fingerprint = SHA-256("Sotto-v1 link fingerprint" ‖ account_id ‖ device_id ‖ DSK_pub ‖ IK_pub)[..10],
//!               shown on both devices as five groups of four hex digits
//! accept      = 0x03 ‖ flags (u8; bit 0: list key included) ‖
//!               [ChaCha20-Poly1305(acc_key, nonce = 0^12, aad = account_id ‖ device_id, LK seed) (48)] ‖
//!               access (0x00 | 0x01 ‖ the account's access key (32)) ‖
//!               n (u16) ‖ n × (contact account id (32) ‖ cflags (u8; bit 0 accepted, bit 1 key) ‖
//!               [the contact's access key (32)])
//!               sealed by the existing device (content type 0x11) to the new device, after the
//!               user confirmed and it published the device list with the new device in it;
//!               the account's other devices get the one byte 0x00 (a notice to refetch the list)
//! recovery    = "sotto-recovery:" ‖ hex(AK seed (32) ‖ SHA-256("Sotto-v1 recovery key" ‖ seed)[..4]),
//!               in groups of four separated by "-"
//! ```

use std::time::Duration;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand_core::RngCore;
use sha2::{Digest, Sha256};
use sotto_crypto::codec::{Put, Reader};
use sotto_crypto::{
    AccountId, AccountKey, Device, DeviceEntry, DeviceId, DeviceIdentity, Ed25519PublicKey, ListKey, SignedDeviceList,
    X25519PublicKey,
};
use sotto_proto::{Recipient, Send, SendOutcome};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;
use zeroize::Zeroizing;

use crate::client::{Client, ClientError, ClientOptions, Inner, hex, now_ms, pickle_key, unhex};
use crate::machine::{CONTENT_LINK_ACCEPT, CONTENT_LINK_REQUEST, Event, Machine};
use crate::rt;
use crate::store::{ConversationRecord, Store, StoreKey};
use crate::transport::Relay;

/// How long a link code is valid on the existing device (the user must confirm within
/// it), and how long the new device waits to be listed and answered.
pub(crate) const LINK_TIMEOUT: Duration = Duration::from_secs(300);
/// The most contacts an answer carries.
pub const MAX_LINK_CONTACTS: usize = 4096;
/// The longest device name a request carries (bytes of UTF-8).
pub const MAX_DEVICE_NAME: usize = 64;
const REQUEST_VERSION: u8 = 1;
/// The request body's bytes before the name: device id, DSK, IK, binding, name length.
const REQUEST_FIXED: usize = 4 + 32 + 32 + 64 + 1;
const ACCEPT_VERSION: u8 = 3;
const FLAG_LIST_KEY: u8 = 1;
const CONTACT_ACCEPTED: u8 = 1;
const CONTACT_KEY: u8 = 2;

/// What a link answer gives the new device.
pub struct LinkAccept {
    /// The list key's seed, when the existing device granted it; it is kept only when it
    /// is the key of the list that marks this device as holding it.
    pub list_key_seed: Option<Zeroizing<[u8; 32]>>,
    /// The account's access key (docs/protocol.md §13.8).
    pub access_key: Option<[u8; 32]>,
    /// The conversations: contacts and message requests, with their access keys.
    pub contacts: Vec<ConversationRecord>,
}

/// A link in progress on the existing device.
pub(crate) struct PendingLink {
    secret: Zeroizing<[u8; 32]>,
    expires: rt::Instant,
    /// Set once a request with the code's MAC arrived: the code is spent.
    request: Option<LinkRequest>,
}

struct LinkRequest {
    id: u64,
    entry: DeviceEntry,
}

/// The new device's side while it waits for the answer.
pub(crate) struct Joining {
    secret: Zeroizing<[u8; 32]>,
    done: Option<oneshot::Sender<()>>,
}

/// HKDF-SHA256 of the link secret (no salt) with `label` as info, 32 bytes.
pub fn link_key(secret: &[u8; 32], label: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    let _ = Hkdf::<Sha256>::new(None, secret).expand(label, out.as_mut_slice());
    out
}

fn request_mac(secret: &[u8; 32], account: &AccountId, body: &[u8]) -> [u8; 32] {
    let key = link_key(secret, b"Sotto-v1 link request");
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key.as_slice()) else {
        return [0; 32];
    };
    mac.update(account.as_bytes());
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// The fingerprint both devices show for a new device: SHA-256 over a label, the
/// account id, the device id and the device's two public keys, first 10 bytes as five
/// groups of four hex digits.
pub fn link_fingerprint(device: &DeviceIdentity) -> String {
    let mut h = Sha256::new();
    h.update(b"Sotto-v1 link fingerprint");
    h.update(device.account_id.as_bytes());
    h.update(device.device_id.0.to_be_bytes());
    h.update(device.signing_key.as_bytes());
    h.update(device.identity_key.as_bytes());
    let d = h.finalize();
    let hex = hex(&d[..10]);
    hex.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Compares two fingerprints as shown (spaces and case ignored), in constant time.
pub fn fingerprints_match(a: &str, b: &str) -> bool {
    let norm = |s: &str| -> Vec<u8> {
        s.bytes()
            .filter(|c| !c.is_ascii_whitespace())
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let (a, b) = (norm(a), norm(b));
    a.len() == b.len() && bool::from(a.ct_eq(&b))
}

/// The request payload (content type 0x10): the new device's entry (with its binding,
/// docs/protocol.md §4.1) and name, authenticated by the code.
pub fn encode_link_request(secret: &[u8; 32], account: &AccountId, entry: &DeviceEntry, name: &str) -> Vec<u8> {
    let name = truncate_name(name);
    let mut body = Vec::with_capacity(REQUEST_FIXED + name.len());
    body.put_u32(entry.device_id.0);
    body.put(entry.signing_key.as_bytes());
    body.put(entry.identity_key.as_bytes());
    body.put(&entry.binding.0);
    body.put_u8(name.len() as u8);
    body.put(name.as_bytes());
    let mac = request_mac(secret, account, &body);
    let mut request = vec![REQUEST_VERSION];
    request.extend_from_slice(&body);
    request.extend_from_slice(&mac);
    request
}

/// Parses and authenticates a request: the new device's entry and name. The entry's
/// binding is not checked here (the caller checks it against the account).
pub fn decode_link_request(secret: &[u8; 32], account: &AccountId, payload: &[u8]) -> Option<(DeviceEntry, String)> {
    let mut r = Reader::new(payload);
    r.version(REQUEST_VERSION).ok()?;
    let rest = payload.get(1..)?;
    let body_len = rest.len().checked_sub(32)?;
    let (body, mac) = rest.split_at(body_len);
    let expected = request_mac(secret, account, body);
    if !bool::from(expected.ct_eq(mac)) {
        return None;
    }
    let mut br = Reader::new(body);
    let device_id = DeviceId(br.u32().ok()?);
    let signing_key = Ed25519PublicKey::from_bytes(&br.array().ok()?).ok()?;
    let identity_key = X25519PublicKey(br.array().ok()?);
    let binding = sotto_crypto::Signature(br.array().ok()?);
    let n = usize::from(br.u8().ok()?);
    if n > MAX_DEVICE_NAME {
        return None;
    }
    let name = String::from_utf8(br.bytes(n).ok()?.to_vec()).ok()?;
    br.finish().ok()?;
    Some((
        DeviceEntry {
            device_id,
            signing_key,
            identity_key,
            binding,
        },
        name,
    ))
}

fn truncate_name(name: &str) -> &str {
    let mut end = name.len().min(MAX_DEVICE_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

fn seed_aad(account: &AccountId, device: DeviceId) -> Vec<u8> {
    let mut aad = account.as_bytes().to_vec();
    aad.put_u32(device.0);
    aad
}

/// The answer payload (content type 0x11) for the new device `device`.
pub fn encode_link_accept(
    secret: &[u8; 32],
    account: &AccountId,
    device: DeviceId,
    list_key: Option<&ListKey>,
    access_key: Option<&[u8; 32]>,
    contacts: &[ConversationRecord],
) -> Vec<u8> {
    let mut out = vec![ACCEPT_VERSION];
    match list_key {
        Some(lk) => {
            out.put_u8(FLAG_LIST_KEY);
            let key = link_key(secret, b"Sotto-v1 link accept");
            let seed = lk.dangerous_export_seed();
            let aead = ChaCha20Poly1305::new(Key::from_slice(key.as_slice()));
            // The key is used once (one answer per code), so the zero nonce never repeats.
            let ct = aead
                .encrypt(
                    Nonce::from_slice(&[0; 12]),
                    Payload {
                        msg: seed.as_slice(),
                        aad: &seed_aad(account, device),
                    },
                )
                .unwrap_or_default();
            out.put(&ct);
        }
        None => out.put_u8(0),
    }
    match access_key {
        Some(k) => {
            out.put_u8(1);
            out.put(k);
        }
        None => out.put_u8(0),
    }
    let n = contacts.len().min(MAX_LINK_CONTACTS);
    out.put_count(n);
    for c in &contacts[..n] {
        out.put(c.peer.as_bytes());
        let accepted = if c.accepted { CONTACT_ACCEPTED } else { 0 };
        match &c.access_key {
            Some(k) => {
                out.put_u8(accepted | CONTACT_KEY);
                out.put(k);
            }
            None => out.put_u8(accepted),
        }
    }
    out
}

/// Parses an answer: the list key's seed when granted, the access key and the
/// contacts.
pub fn decode_link_accept(
    secret: &[u8; 32],
    account: &AccountId,
    device: DeviceId,
    payload: &[u8],
) -> Option<LinkAccept> {
    let mut r = Reader::new(payload);
    r.version(ACCEPT_VERSION).ok()?;
    let list_key_seed = match r.u8().ok()? {
        0 => None,
        FLAG_LIST_KEY => {
            let ct: [u8; 48] = r.array().ok()?;
            let key = link_key(secret, b"Sotto-v1 link accept");
            let aead = ChaCha20Poly1305::new(Key::from_slice(key.as_slice()));
            let seed = Zeroizing::new(
                aead.decrypt(
                    Nonce::from_slice(&[0; 12]),
                    Payload {
                        msg: &ct,
                        aad: &seed_aad(account, device),
                    },
                )
                .ok()?,
            );
            let seed: Zeroizing<[u8; 32]> = Zeroizing::new(seed.as_slice().try_into().ok()?);
            Some(seed)
        }
        _ => return None,
    };
    let access_key = match r.u8().ok()? {
        0 => None,
        1 => Some(r.array().ok()?),
        _ => return None,
    };
    let n = r.count("contacts", MAX_LINK_CONTACTS, 33).ok()?;
    let mut contacts = Vec::with_capacity(n);
    for _ in 0..n {
        let peer = AccountId(r.array().ok()?);
        let flags = r.u8().ok()?;
        if flags & !(CONTACT_ACCEPTED | CONTACT_KEY) != 0 {
            return None;
        }
        let access_key = if flags & CONTACT_KEY != 0 {
            Some(r.array().ok()?)
        } else {
            None
        };
        contacts.push(ConversationRecord {
            peer,
            accepted: flags & CONTACT_ACCEPTED != 0,
            access_key,
            ..ConversationRecord::new(peer)
        });
    }
    r.finish().ok()?;
    Some(LinkAccept {
        list_key_seed,
        access_key,
        contacts,
    })
}

/// The recovery key text of an account key.
pub fn encode_recovery_key(ak: &AccountKey) -> Zeroizing<String> {
    let seed = ak.dangerous_export_seed();
    let mut bytes = Zeroizing::new(Vec::with_capacity(36));
    bytes.extend_from_slice(seed.as_slice());
    bytes.extend_from_slice(&recovery_checksum(&seed));
    let hex = Zeroizing::new(hex(&bytes));
    let mut out = Zeroizing::new(String::with_capacity(15 + 90));
    out.push_str("sotto-recovery:");
    for (i, c) in hex.as_bytes().chunks(4).enumerate() {
        if i > 0 {
            out.push('-');
        }
        for b in c {
            out.push(char::from(*b));
        }
    }
    out
}

fn recovery_checksum(seed: &[u8; 32]) -> [u8; 4] {
    let d = Sha256::new()
        .chain_update(b"Sotto-v1 recovery key")
        .chain_update(seed)
        .finalize();
    [d[0], d[1], d[2], d[3]]
}

/// Parses a recovery key (case, spaces and dashes ignored) and checks its checksum.
pub fn decode_recovery_key(text: &str) -> Result<AccountKey, ClientError> {
    let rest = text
        .trim()
        .strip_prefix("sotto-recovery:")
        .ok_or(ClientError::BadRecoveryKey)?;
    let digits: Zeroizing<String> = Zeroizing::new(rest.chars().filter(|c| *c != '-' && !c.is_whitespace()).collect());
    let bytes = unhex(&digits).ok_or(ClientError::BadRecoveryKey)?;
    if bytes.len() != 36 {
        return Err(ClientError::BadRecoveryKey);
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    seed.copy_from_slice(&bytes[..32]);
    if !bool::from(recovery_checksum(&seed).ct_eq(&bytes[32..])) {
        return Err(ClientError::BadRecoveryKey);
    }
    Ok(AccountKey::from_seed(&seed))
}

/// The link code text: `sotto-link:` ‖ account id ‖ `.` ‖ hex(secret).
pub fn link_code(account: &AccountId, secret: &[u8; 32]) -> String {
    format!("sotto-link:{account}.{}", hex(secret))
}

/// Parses a link code into the account and the secret.
pub fn parse_code(code: &str) -> Result<(AccountId, Zeroizing<[u8; 32]>), ClientError> {
    let rest = code
        .trim()
        .strip_prefix("sotto-link:")
        .ok_or(ClientError::BadLinkCode)?;
    let (account, secret) = rest.split_once('.').ok_or(ClientError::BadLinkCode)?;
    let account: AccountId = account.parse().map_err(|_| ClientError::BadLinkCode)?;
    let bytes = unhex(secret).ok_or(ClientError::BadLinkCode)?;
    let secret: [u8; 32] = bytes.as_slice().try_into().map_err(|_| ClientError::BadLinkCode)?;
    Ok((account, Zeroizing::new(secret)))
}

fn anonymous_send(recipients: Vec<Recipient>) -> Send {
    // The new device has no access key yet: the request reaches the account's devices
    // as a message request (docs/protocol.md §12A.3).
    Send {
        message_id: 1,
        access: Vec::new(),
        body: Vec::new(),
        recipients,
    }
}

fn stored(outcome: SendOutcome) -> Result<(), ClientError> {
    match outcome {
        SendOutcome::Stored { .. } => Ok(()),
        other => Err(ClientError::Link(format!(
            "the relay did not store the linking message: {other:?}"
        ))),
    }
}

/// A join in progress on the new device ([`Client::start_join`]): show
/// [`PendingJoin::fingerprint`] to the user, who compares it with the one the existing
/// device shows before confirming there, then await [`PendingJoin::wait`].
pub struct PendingJoin<S: Store> {
    store: S,
    key: StoreKey,
    relay: Relay,
    device: Device,
    secret: Zeroizing<[u8; 32]>,
    rng: rand_chacha::ChaCha20Rng,
    options: ClientOptions,
    fingerprint: String,
    deadline: rt::Instant,
}

impl<S: Store> std::fmt::Debug for PendingJoin<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingJoin")
            .field("device", &self.device)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl<S: Store> PendingJoin<S> {
    /// The new device's fingerprint; the existing device shows the same one.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The device id this device asked for.
    pub fn device_id(&self) -> DeviceId {
        self.device.device_id()
    }

    /// This device's public identity.
    pub fn identity(&self) -> DeviceIdentity {
        self.device.identity()
    }

    /// This device's device-list entry, with its binding to the account (§4.1).
    pub fn entry(&self) -> DeviceEntry {
        self.device.entry()
    }

    /// Waits until the existing device's user confirmed: the account lists this device
    /// and its answer arrived. Then the store holds the account (with the list key when
    /// it was granted) and the client is connected. Fails with
    /// [`ClientError::LinkTimeout`] when the request was rejected or not answered in
    /// time; if the device was listed by then, the store already holds the account and
    /// [`Client::open`] opens it.
    ///
    /// Nothing is acknowledged to the relay before it was processed: messages that
    /// reach this device while it waits for the answer are kept and shown.
    pub async fn wait(mut self) -> Result<Client<S>, ClientError> {
        let account = self.device.account_id();
        let me = self.device.identity();
        // 1. Wait until the account lists this device (the user confirmed).
        let mut delay = Duration::from_millis(100);
        let list = loop {
            let listed = match self.relay.get_device_list(&account).await {
                Ok(bytes) => SignedDeviceList::from_bytes(&bytes)
                    .ok()
                    .and_then(|s| s.verify(&account).ok())
                    .filter(|l| l.contains(&me)),
                Err(e) if e.is_retryable() => None,
                Err(e) => return Err(e.into()),
            };
            if let Some(list) = listed {
                break list;
            }
            if rt::Instant::now() + delay > self.deadline {
                return Err(ClientError::LinkTimeout);
            }
            rt::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        };
        // 2. Store this device's state (without the list key yet), publish prekeys,
        //    and connect: the answer and anything else are processed by the client in
        //    mailbox order, and acknowledged only then.
        let pk = pickle_key(&self.key);
        let new = Machine::new_linked_device(self.device, list, self.relay.url(), now_ms(), &mut self.rng, &pk)?;
        self.store.commit(new.changes).await?;
        let mut client = Client::start(self.store, self.key, self.rng, self.options).await?;
        client
            .inner
            .relay
            .put_prekeys(&client.inner.device, &new.prekeys)
            .await?;
        let (tx, rx) = oneshot::channel();
        *client.inner.joining.lock().await = Some(Joining {
            secret: self.secret,
            done: Some(tx),
        });
        client.spawn();
        match rt::timeout_at(self.deadline, rx).await {
            Ok(Ok(())) => Ok(client),
            _ => Err(ClientError::LinkTimeout),
        }
    }
}

impl<S: Store> Client<S> {
    /// This device's public identity (account, device id, public keys).
    pub fn identity(&self) -> DeviceIdentity {
        self.inner.device.identity()
    }

    /// This device's device-list entry, with its binding to the account (§4.1).
    pub fn entry(&self) -> DeviceEntry {
        self.inner.device.entry()
    }

    /// True when this device still holds the account key: only the account's first
    /// device does, until [`Client::export_recovery_key`] hands it out.
    pub async fn has_account_key(&self) -> bool {
        self.inner.machine.lock().await.has_account_key()
    }

    /// True when this device holds the account's current list key: it can link devices
    /// and remove devices that do not hold the list key. Other devices work fully for
    /// messaging.
    pub async fn can_manage_devices(&self) -> bool {
        self.inner.machine.lock().await.can_manage_devices()
    }

    /// The recovery key: the account key as text, for the user to keep offline. Whoever
    /// holds it controls the account's device list. It is handed out **once**: the
    /// account key is then deleted from this device, so that no device, once removed or
    /// stolen, holds it ([`ClientError::NoAccountKey`] on any later call, and on every
    /// other device). Show it to the user right after [`Client::create_account`].
    pub async fn export_recovery_key(&self) -> Result<Zeroizing<String>, ClientError> {
        let (key, _) = self
            .inner
            .transact(|m| {
                let ak = m.account_key().ok_or(ClientError::NoAccountKey)?;
                Ok((m.forget_account_key(), encode_recovery_key(ak)))
            })
            .await?;
        // The replaced record (with the account key's pickle) may still sit in the
        // store's files. A failure (another process reading) leaves it to the backend's
        // next checkpoint; the key must reach the user either way.
        let _ = self.inner.store.scrub().await;
        Ok(key)
    }

    /// Uses the recovery key to take back control of the device list: publishes the
    /// account's list under the list key of the next epoch, with this device as the only
    /// one holding it. Every earlier list key, and so every device that held one, can no
    /// longer sign a list that the relay or any contact accepts. The recovery key is not
    /// stored. [`ClientError::BadRecoveryKey`] when it is malformed or another account's.
    pub async fn recover_account(&self, recovery_key: &str) -> Result<(), ClientError> {
        self.rotate_list_key(recovery_key, None).await
    }

    /// Removes a device that holds the list key (see [`Client::remove_device`]), with
    /// the recovery key: a list under a new list key leaves it out, so it can never sign
    /// a list again; this device becomes the only one holding the new list key.
    pub async fn remove_device_with_recovery_key(
        &self,
        device: DeviceId,
        recovery_key: &str,
    ) -> Result<(), ClientError> {
        if device == self.device_id() {
            return Err(ClientError::Link("a device cannot remove itself".into()));
        }
        self.rotate_list_key(recovery_key, Some(device)).await
    }

    async fn rotate_list_key(&self, recovery_key: &str, remove: Option<DeviceId>) -> Result<(), ClientError> {
        let ak = decode_recovery_key(recovery_key)?;
        if !ak.account_id().ct_eq(&self.account_id()) {
            return Err(ClientError::BadRecoveryKey);
        }
        let account = self.account_id();
        // The relay's list: pinned when it may be; when a list key being revoked pushed
        // the version more than a step past this device's pin, the new epoch goes past it
        // (a new epoch may step over versions, §4.3) without taking over its devices.
        let bytes = self.inner.relay.get_device_list(&account).await?;
        let current = SignedDeviceList::from_bytes(&bytes)
            .map_err(sotto_crypto::DeviceListError::from)
            .and_then(|s| s.verify(&account))?;
        match self.inner.pin_device_list(account, &bytes).await {
            // A list this device cannot pin (too far ahead) is still taken into account.
            Ok(()) | Err(ClientError::DeviceList(_)) => {}
            Err(e) => return Err(e),
        }
        let (list, lk) = self
            .inner
            .machine
            .lock()
            .await
            .rotated_list(&ak, remove, Some(&current), now_ms())?;
        drop(ak);
        self.inner.publish_own_list_with_key(&list, Some(&lk)).await
    }

    /// On a device that can manage devices ([`Client::can_manage_devices`]; otherwise
    /// [`ClientError::NoListKey`]): starts linking a new device. Show the
    /// returned code to the new device ([`Client::start_join`]). When the new device's
    /// request arrives, [`Event::LinkRequested`] shows its name and fingerprint; answer
    /// with [`Client::confirm_link`] or [`Client::reject_link`]. The code works once and
    /// for five minutes; a new call replaces it.
    pub async fn link_new_device(&self) -> Result<String, ClientError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        {
            let mut m = self.inner.machine.lock().await;
            if !m.can_manage_devices() {
                return Err(ClientError::NoListKey);
            }
            m.rng().fill_bytes(secret.as_mut_slice());
        }
        let code = link_code(&self.account_id(), &secret);
        *self.inner.link.lock().await = Some(PendingLink {
            secret,
            expires: rt::Instant::now() + LINK_TIMEOUT,
            request: None,
        });
        Ok(code)
    }

    /// Confirms the link request `id` ([`Event::LinkRequested`]) once the user checked
    /// that the new device shows the same fingerprint: publishes the device list with it
    /// and answers it with the contacts, and with the list key when `grant_list_key`
    /// (then that device can link devices and remove devices without the list key too,
    /// and removing it later needs the recovery key,
    /// [`Client::remove_device_with_recovery_key`]).
    pub async fn confirm_link(&self, id: u64, grant_list_key: bool) -> Result<(), ClientError> {
        let (secret, entry) = {
            let mut link = self.inner.link.lock().await;
            match link.as_ref() {
                Some(PendingLink { request: Some(r), .. }) if r.id == id => {}
                _ => return Err(ClientError::UnknownLinkRequest),
            }
            let Some(p) = link.take() else {
                return Err(ClientError::UnknownLinkRequest);
            };
            if p.expires <= rt::Instant::now() {
                return Err(ClientError::LinkTimeout);
            }
            let Some(r) = p.request else {
                return Err(ClientError::UnknownLinkRequest);
            };
            (p.secret, r.entry)
        };
        self.inner.answer_link(&secret, entry, grant_list_key).await
    }

    /// Rejects the link request `id`: the code is spent, nothing is published, and the
    /// new device's wait ends in [`ClientError::LinkTimeout`].
    pub async fn reject_link(&self, id: u64) -> Result<(), ClientError> {
        let mut link = self.inner.link.lock().await;
        match link.as_ref() {
            Some(PendingLink { request: Some(r), .. }) if r.id == id => {
                *link = None;
                Ok(())
            }
            _ => Err(ClientError::UnknownLinkRequest),
        }
    }

    /// Removes one of this account's other devices: publishes a device list without it,
    /// signed with the list key (this device must hold it, [`ClientError::NoListKey`]
    /// otherwise). The relay then refuses the removed device's authentication and its
    /// sends, and this account's devices and its contacts, once they fetch the new list,
    /// stop encrypting to it and refuse what it sends. It cannot add itself back: a
    /// device that does not hold the list key can sign no list. A device that holds the
    /// list key can only be removed under a new list key, made from the recovery key
    /// ([`ClientError::NeedsRecoveryKey`]; use
    /// [`Client::remove_device_with_recovery_key`]); after that, the list key it holds
    /// signs nothing anyone accepts. What it already received stays on it.
    pub async fn remove_device(&self, device: DeviceId) -> Result<(), ClientError> {
        if device == self.device_id() {
            return Err(ClientError::Link("a device cannot remove itself".into()));
        }
        let account = self.account_id();
        self.inner.refresh_device_list(account).await?;
        let list = self
            .inner
            .machine
            .lock()
            .await
            .next_own_list(None, false, Some(device), now_ms())?;
        self.inner.publish_own_list(&list).await
    }

    /// On the new device: starts joining the account whose device showed `code`.
    /// Creates this device's keys and sends the request (with `device_name`) to the
    /// account's devices. Show [`PendingJoin::fingerprint`], then await
    /// [`PendingJoin::wait`].
    pub async fn start_join(
        store: S,
        key: StoreKey,
        relay_url: &str,
        code: &str,
        device_name: &str,
        options: ClientOptions,
    ) -> Result<PendingJoin<S>, ClientError> {
        if store.load_account().await?.is_some() {
            return Err(ClientError::AccountExists);
        }
        let (account, secret) = parse_code(code)?;
        let relay = Relay::with_roots(relay_url, &options.extra_root_certificates)?;
        let list = SignedDeviceList::from_bytes(&relay.get_device_list(&account).await?)
            .map_err(sotto_crypto::DeviceListError::from)?
            .verify(&account)?;
        let mut rng = crate::client::Entropy::for_options(&options).rng()?;
        let next_id = list
            .devices()
            .iter()
            .map(|d| d.device_id.0)
            .max()
            .unwrap_or(0)
            .wrapping_add(1);
        let device = Device::generate(account, DeviceId(next_id), &mut rng);
        let me = device.identity();
        let request = encode_link_request(&secret, &account, &device.entry(), device_name);
        let mut recipients = Vec::new();
        for d in list.devices() {
            let envelope = sotto_crypto::seal(&device, &d.identity(account), CONTENT_LINK_REQUEST, &request, &mut rng)
                .map_err(crate::machine::MachineError::from)?;
            recipients.push(Recipient {
                account_id: account,
                device_id: d.device_id,
                head: envelope,
            });
        }
        stored(relay.send_anonymous(anonymous_send(recipients)).await?)?;
        Ok(PendingJoin {
            store,
            key,
            relay,
            fingerprint: link_fingerprint(&me),
            device,
            secret,
            rng,
            options,
            deadline: rt::Instant::now() + LINK_TIMEOUT,
        })
    }
}

impl<S: Store> Inner<S> {
    pub(crate) async fn publish_own_list(&self, list: &sotto_crypto::DeviceList) -> Result<(), ClientError> {
        self.publish_own_list_with_key(list, None).await
    }

    /// Publishes this account's new list and pins it; with `list_key` (a new epoch's),
    /// stores that key in the same commit.
    pub(crate) async fn publish_own_list_with_key(
        &self,
        list: &sotto_crypto::DeviceList,
        list_key: Option<&ListKey>,
    ) -> Result<(), ClientError> {
        let account = self.device.account_id();
        self.relay.put_device_list(&account, list.signed().as_bytes()).await?;
        let bytes = list.signed().as_bytes().to_vec();
        let (change, _) = self
            .transact(|m| {
                let (mut c, change) = m.receive_device_list(&account, &bytes)?;
                if let Some(lk) = list_key {
                    c.account = m.store_list_key(lk)?.account;
                }
                Ok((c, change))
            })
            .await?;
        if let Some(change) = change.filter(|c| !c.is_empty()) {
            self.emit(vec![Event::DeviceListChanged { account, change }]).await;
        }
        Ok(())
    }

    /// A linking request arrived: if it carries the MAC of the pending code (and the code
    /// was not used yet), the code is spent and the user is asked to confirm.
    pub(crate) async fn handle_link_request(&self, sender: DeviceIdentity, payload: &[u8]) -> Result<(), ClientError> {
        let account = self.device.account_id();
        let mut link = self.link.lock().await;
        let Some(p) = link.as_mut() else { return Ok(()) };
        if p.expires <= rt::Instant::now() || p.request.is_some() {
            return Ok(());
        }
        let Some((entry, name)) = decode_link_request(&p.secret, &account, payload) else {
            return Ok(());
        };
        if !entry.binding_verifies(&account) {
            return Ok(());
        }
        let claimed = DeviceIdentity {
            account_id: account,
            device_id: entry.device_id,
            signing_key: entry.signing_key,
            identity_key: entry.identity_key,
        };
        if !claimed.ct_eq(&sender) {
            return Ok(());
        }
        // A device id the account already uses would replace that device: refused.
        let (id, taken) = {
            let mut m = self.machine.lock().await;
            let taken = m.own_device_list().is_some_and(|l| l.device(entry.device_id).is_some());
            (m.id_rng().next_u64(), taken)
        };
        if taken {
            return Ok(());
        }
        // One use per code: later requests with it are ignored.
        p.request = Some(LinkRequest { id, entry });
        drop(link);
        let name: String = name.chars().filter(|c| !c.is_control()).collect();
        self.emit(vec![Event::LinkRequested {
            id,
            device_name: name,
            fingerprint: link_fingerprint(&claimed),
        }])
        .await;
        Ok(())
    }

    async fn answer_link(&self, secret: &[u8; 32], entry: DeviceEntry, grant: bool) -> Result<(), ClientError> {
        let account = self.device.account_id();
        // The list another device may have changed meanwhile.
        self.refresh_device_list(account).await?;
        let (list, accept) = {
            let m = self.machine.lock().await;
            let list = m.next_own_list(Some(entry), grant, None, now_ms())?;
            let contacts: Vec<ConversationRecord> =
                m.conversations().filter_map(|c| m.conversation(c).cloned()).collect();
            let lk = if grant {
                Some(m.list_key().ok_or(ClientError::NoListKey)?)
            } else {
                None
            };
            let access = m.own_access_key();
            let accept = encode_link_accept(
                secret,
                &account,
                entry.device_id,
                lk,
                access.as_ref().map(|k| &k.0),
                &contacts,
            );
            (list, accept)
        };
        self.publish_own_list(&list).await?;
        let mut recipients = Vec::new();
        {
            let mut m = self.machine.lock().await;
            for d in list.devices() {
                // The new device gets the answer; the others a notice of the same kind
                // (the relay wants the whole device set on an anonymous send).
                let content: &[u8] = if d.device_id == entry.device_id {
                    &accept
                } else {
                    &[0u8]
                };
                let envelope = sotto_crypto::seal(
                    &self.device,
                    &d.identity(account),
                    CONTENT_LINK_ACCEPT,
                    content,
                    m.rng(),
                )
                .map_err(crate::machine::MachineError::from)?;
                recipients.push(Recipient {
                    account_id: account,
                    device_id: d.device_id,
                    head: envelope,
                });
            }
        }
        let access = self.machine.lock().await.own_access_key();
        let mut send = anonymous_send(recipients);
        send.access = access
            .map(|key| sotto_proto::Access {
                account_id: account,
                key,
            })
            .into_iter()
            .collect();
        stored(self.relay.send_anonymous(send).await?)?;
        // The new device learns the profile key, and fetches the profile, as contacts do.
        self.transact(|m| Ok((m.share_profile(account, now_ms()), ()))).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// A linking answer was processed (its seq committed): on a joining device, store
    /// the list key when granted and add the contacts, then end the wait.
    pub(crate) async fn handle_link_accept(&self, sender: DeviceIdentity, payload: &[u8]) -> Result<(), ClientError> {
        let account = self.device.account_id();
        let mut joining = self.joining.lock().await;
        let Some(j) = joining.as_mut() else { return Ok(()) };
        if sender.account_id != account {
            return Ok(());
        }
        let Some(answer) = decode_link_accept(&j.secret, &account, self.device.device_id(), payload) else {
            return Ok(());
        };
        if let Some(seed) = &answer.list_key_seed {
            // Kept only when it is the pinned list's key and the list marks this device.
            let _ = self.transact(|m| Ok((m.set_list_key_seed(seed)?, ()))).await;
        }
        if let Some(k) = answer.access_key {
            self.transact(|m| Ok((m.set_access_key(k).unwrap_or_default(), ())))
                .await?;
        }
        for contact in answer.contacts {
            if contact.peer != account && self.refresh_device_list(contact.peer).await.is_ok() {
                let _ = self
                    .transact(|m| Ok((m.import_conversation(contact.clone()), ())))
                    .await;
            }
        }
        if let Some(done) = j.done.take() {
            let _ = done.send(());
        }
        *joining = None;
        Ok(())
    }
}
