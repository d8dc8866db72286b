//! Linking a new device to an account, and removing one (native).
//!
//! ```text
//! code        = "sotto-link:" ‖ account id (52 chars) ‖ "." ‖ hex(secret (32))     shown by an existing device
//! req_key     = HKDF-SHA256(ikm = secret, info = "Sotto-v1 link request", 32)
//! acc_key     = HKDF-SHA256(ikm = secret, info = "Sotto-v1 link accept", 32)
//! request     = 0x01 ‖ device_id (u32) ‖ DSK_pub (32) ‖ IK_pub (32) ‖ HMAC(req_key, account_id ‖ those 68 bytes)
//!               sealed by the new device (content type 0x10) to every listed device, anonymously
//! accept      = 0x01 ‖ AK pickle under acc_key (var) ‖ n (u16) ‖ n × contact account id (32)
//!               sealed by the existing device (content type 0x11) to the new device, after it
//!               published the device list with the new device in it
//! ```
//! The new device checks that the account key it received hashes to the account id in
//! the code and that the answer came from a device the account lists; the existing device
//! checks the request's MAC and that the sealed sender is the device the request names.

use std::time::Duration;

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand_chacha::ChaCha20Rng;
use rand_core::RngCore;
use sha2::Sha256;
use sotto_crypto::codec::{Put, Reader};
use sotto_crypto::pickle::Pickle;
use sotto_crypto::{
    AccountId, AccountKey, Device, DeviceEntry, DeviceId, DeviceIdentity, Ed25519PublicKey, PickleKey,
    SignedDeviceList, X25519PublicKey,
};
use sotto_proto::{Frame, Recipient, Send, SendOutcome};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::client::{Client, ClientError, ClientOptions, Inner, now_ms, pickle_key};
use crate::machine::{CONTENT_LINK_ACCEPT, CONTENT_LINK_REQUEST, Event, Machine};
use crate::rt;
use crate::store::{Store, StoreKey};
use crate::transport::{Relay, TransportError};

/// How long an existing device waits for the new device's request, and the new device
/// for the answer.
pub(crate) const LINK_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_CONTACTS: usize = 4096;

/// A link in progress on the existing device.
pub(crate) struct PendingLink {
    secret: Zeroizing<[u8; 32]>,
    expires: rt::Instant,
}

fn derive(secret: &[u8; 32], label: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    let _ = Hkdf::<Sha256>::new(None, secret).expand(label, out.as_mut_slice());
    out
}

fn request_mac(secret: &[u8; 32], account: &AccountId, body: &[u8]) -> [u8; 32] {
    let key = derive(secret, b"Sotto-v1 link request");
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key.as_slice()) else {
        return [0; 32];
    };
    mac.update(account.as_bytes());
    mac.update(body);
    mac.finalize().into_bytes().into()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex32(s: &str) -> Option<Zeroizing<[u8; 32]>> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = Zeroizing::new([0u8; 32]);
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Parses a link code into the account and the secret.
fn parse_code(code: &str) -> Result<(AccountId, Zeroizing<[u8; 32]>), ClientError> {
    let rest = code
        .trim()
        .strip_prefix("sotto-link:")
        .ok_or(ClientError::BadLinkCode)?;
    let (account, secret) = rest.split_once('.').ok_or(ClientError::BadLinkCode)?;
    let account: AccountId = account.parse().map_err(|_| ClientError::BadLinkCode)?;
    let secret = unhex32(secret).ok_or(ClientError::BadLinkCode)?;
    Ok((account, secret))
}

fn anonymous_send(recipients: Vec<Recipient>) -> Send {
    Send {
        message_id: 1,
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

impl<S: Store> Client<S> {
    /// On a device of the account: starts linking a new device. Show the returned code to
    /// the new device ([`Client::join_as_new_device`]); this client must keep running until
    /// the new device has joined (or two minutes pass).
    pub async fn link_new_device(&self) -> Result<String, ClientError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        {
            let mut m = self.inner.machine.lock().await;
            m.rng().fill_bytes(secret.as_mut_slice());
        }
        let code = format!("sotto-link:{}.{}", self.account_id(), hex(secret.as_slice()));
        *self.inner.link.lock().await = Some(PendingLink {
            secret,
            expires: rt::Instant::now() + LINK_TIMEOUT,
        });
        Ok(code)
    }

    /// Removes one of this account's other devices: publishes a device list without it.
    /// It can no longer authenticate, and nothing new is encrypted to it.
    pub async fn remove_device(&self, device: DeviceId) -> Result<(), ClientError> {
        if device == self.device_id() {
            return Err(ClientError::Link("a device cannot remove itself".into()));
        }
        let list = self
            .inner
            .machine
            .lock()
            .await
            .next_own_list(None, Some(device), now_ms())?;
        self.inner.publish_own_list(&list).await
    }

    /// On the new device: joins the account whose device showed `code`. Creates this
    /// device's keys, asks the account's devices through the relay, waits for the account
    /// key, stores it and connects.
    pub async fn join_as_new_device(
        store: S,
        key: StoreKey,
        relay_url: &str,
        code: &str,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
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

        let mut body = Vec::with_capacity(132);
        body.put_u32(me.device_id.0);
        body.put(me.signing_key.as_bytes());
        body.put(me.identity_key.as_bytes());
        body.put(&device.entry().binding.0);
        let mac = request_mac(&secret, &account, &body);
        let mut request = vec![1u8];
        request.extend_from_slice(&body);
        request.extend_from_slice(&mac);
        let mut recipients = Vec::new();
        for d in list.devices() {
            let envelope = sotto_crypto::seal(&device, &d.identity(account), CONTENT_LINK_REQUEST, &request, &mut rng)
                .map_err(crate::machine::MachineError::from)?;
            recipients.push(Recipient {
                account_id: account,
                device_id: d.device_id,
                envelope,
            });
        }
        stored(relay.send_anonymous(anonymous_send(recipients)).await?)?;

        // Wait until the account lists this device, then read the answer from the mailbox.
        let deadline = rt::Instant::now() + LINK_TIMEOUT;
        let mut delay = Duration::from_millis(100);
        let mut socket = loop {
            match relay.connect(&device).await {
                Ok(s) => break s,
                Err(TransportError::Relay { .. }) if rt::Instant::now() < deadline => {
                    rt::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let list = SignedDeviceList::from_bytes(&relay.get_device_list(&account).await?)
            .map_err(sotto_crypto::DeviceListError::from)?
            .verify(&account)?;
        let accept_key = PickleKey::new(*derive(&secret, b"Sotto-v1 link accept"));
        let (account_key, contacts) = loop {
            let frame = rt::timeout_at(deadline, socket.recv())
                .await
                .map_err(|_| ClientError::Link("no answer from the account's devices".into()))??;
            let Some(Frame::Deliver(d)) = frame else {
                if frame.is_none() {
                    return Err(ClientError::Link("the relay closed the connection".into()));
                }
                continue;
            };
            socket.send(&Frame::Ack { seq: d.seq }).await?;
            let Ok(opened) = sotto_crypto::open(&device, &d.envelope) else {
                continue;
            };
            if opened.content_type != CONTENT_LINK_ACCEPT || !list.contains(&opened.sender) {
                continue;
            }
            if let Some(got) = parse_accept(&opened.content, &accept_key, &account) {
                break got;
            }
        };
        socket.close().await;

        let pk = pickle_key(&key);
        let new = Machine::new_linked_device(account_key, device, list, relay.url(), &mut rng, &pk)?;
        store.commit(new.changes).await?;
        let mut client = Self::start(store, key, rng, options).await?;
        client
            .inner
            .relay
            .put_prekeys(&client.inner.device, &new.prekeys)
            .await?;
        for contact in contacts {
            if client.inner.refresh_device_list(contact).await.is_ok() {
                let _ = client.inner.transact(|m| Ok((m.add_contact(contact)?, ()))).await;
            }
        }
        client.spawn();
        Ok(client)
    }
}

fn parse_accept(bytes: &[u8], key: &PickleKey, account: &AccountId) -> Option<(AccountKey, Vec<AccountId>)> {
    let mut r = Reader::new(bytes);
    r.version(1).ok()?;
    let ak = AccountKey::unpickle(r.var_bytes("account key", 4096).ok()?, key).ok()?;
    if ak.account_id() != *account {
        return None;
    }
    let n = r.count("contacts", MAX_CONTACTS, 32).ok()?;
    let mut contacts = Vec::with_capacity(n);
    for _ in 0..n {
        contacts.push(AccountId(r.array().ok()?));
    }
    r.finish().ok()?;
    Some((ak, contacts))
}

impl<S: Store> Inner<S> {
    pub(crate) async fn publish_own_list(&self, list: &sotto_crypto::DeviceList) -> Result<(), ClientError> {
        let account = self.device.account_id();
        self.relay.put_device_list(&account, list.signed().as_bytes()).await?;
        let bytes = list.signed().as_bytes().to_vec();
        let (change, _) = self
            .transact(|m| {
                let (c, change) = m.receive_device_list(&account, &bytes)?;
                Ok((c, change))
            })
            .await?;
        if let Some(change) = change.filter(|c| !c.is_empty()) {
            self.emit(vec![Event::DeviceListChanged { account, change }]).await;
        }
        Ok(())
    }

    /// A linking request arrived: if it carries the MAC of the pending link, publish the
    /// new device list and answer with the account key.
    pub(crate) async fn handle_link_request(&self, sender: DeviceIdentity, payload: &[u8]) -> Result<(), ClientError> {
        let secret = {
            let link = self.link.lock().await;
            match link.as_ref() {
                Some(p) if p.expires > rt::Instant::now() => p.secret.clone(),
                _ => return Ok(()),
            }
        };
        let account = self.device.account_id();
        let mut r = Reader::new(payload);
        let parsed = (|| {
            r.version(1).ok()?;
            let body = r.bytes(132).ok()?;
            let mac: [u8; 32] = r.array().ok()?;
            Some((body.to_vec(), mac))
        })();
        let Some((body, mac)) = parsed else { return Ok(()) };
        let expected = request_mac(&secret, &account, &body);
        if !bool::from(expected.ct_eq(&mac)) {
            return Ok(());
        }
        let mut br = Reader::new(&body);
        let device_id = DeviceId(br.u32().map_err(|_| ClientError::BadLinkCode)?);
        let signing_key = Ed25519PublicKey::from_bytes(&br.array().map_err(|_| ClientError::BadLinkCode)?)
            .map_err(|_| ClientError::BadLinkCode)?;
        let identity_key = X25519PublicKey(br.array().map_err(|_| ClientError::BadLinkCode)?);
        let binding = sotto_crypto::Signature(br.array().map_err(|_| ClientError::BadLinkCode)?);
        let entry = DeviceEntry {
            device_id,
            signing_key,
            identity_key,
            binding,
        };
        if !entry.binding_verifies(&account) {
            return Ok(());
        }
        let claimed = DeviceIdentity {
            account_id: account,
            device_id,
            signing_key,
            identity_key,
        };
        if !claimed.ct_eq(&sender) {
            return Ok(());
        }
        // A device id the account already uses would replace that device: refused.
        if self
            .machine
            .lock()
            .await
            .own_device_list()
            .is_some_and(|l| l.device(device_id).is_some())
        {
            return Ok(());
        }
        // One use per code.
        *self.link.lock().await = None;
        let (list, accept, contacts) = {
            let mut m = self.machine.lock().await;
            let list = m.next_own_list(Some(entry), None, now_ms())?;
            let accept_key = PickleKey::new(*derive(&secret, b"Sotto-v1 link accept"));
            let ak = m.pickle_account_key(&accept_key);
            let contacts: Vec<AccountId> = m.conversations().copied().collect();
            (list, ak, contacts)
        };
        self.publish_own_list(&list).await?;
        let mut payload = vec![1u8];
        payload.put_var(&accept);
        payload.put_count(contacts.len().min(MAX_CONTACTS));
        for c in contacts.iter().take(MAX_CONTACTS) {
            payload.put(c.as_bytes());
        }
        let mut recipients = Vec::new();
        {
            let mut m = self.machine.lock().await;
            for d in list.devices() {
                // The new device gets the answer; the others get an envelope of the same
                // kind they ignore (the relay wants the whole device set on an anonymous send).
                let content: &[u8] = if d.device_id == device_id { &payload } else { &[0u8] };
                let envelope = sotto_crypto::seal(
                    &self.device,
                    &d.identity(list.account_id()),
                    CONTENT_LINK_ACCEPT,
                    content,
                    m_rng(&mut m),
                )
                .map_err(crate::machine::MachineError::from)?;
                recipients.push(Recipient {
                    account_id: account,
                    device_id: d.device_id,
                    envelope,
                });
            }
        }
        stored(self.relay.send_anonymous(anonymous_send(recipients)).await?)
    }
}

fn m_rng(m: &mut Machine) -> &mut ChaCha20Rng {
    m.rng()
}
