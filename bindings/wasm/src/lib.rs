//! wasm-bindgen bindings over `sotto-sdk` for the web (browsers, workers) and node.
//!
//! A thin layer, like `sotto-ffi` (docs/ARCHITECTURE.md, "Bindings"): it mirrors the
//! SDK's types as JavaScript classes with TypeScript types, parses the string ids and
//! the store key apps pass in, and turns `ClientError` into a JavaScript `Error` named
//! `SottoError` with the SDK's stable `code` and `retryable`. The client, its relay
//! connection (the platform's `WebSocket` and `fetch`), the crypto and the encrypted
//! IndexedDB store are `sotto-sdk`'s, compiled to wasm; nothing is reimplemented in
//! JavaScript.
//!
//! Conventions for the web (docs/bindings.md): ids are strings, timestamps and orders are
//! plain numbers (milliseconds), never BigInt.
//!
//! On native targets this crate is empty.
#![cfg(target_arch = "wasm32")]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use std::rc::Rc;

use js_sys::Reflect;
use sotto_crypto::AccountId;
use sotto_sdk::group::GroupError;
use sotto_sdk::store::{IdbStore, StoreKey};
use sotto_sdk::{
    Client, ClientError, ClientOptions, ConnectionState, Event as SdkEvent, EventStream, GroupId, GroupInfo,
    MachineError, MessageStatus, Page, Role, StoredMessage,
};
use tokio::sync::{Mutex, watch};
use wasm_bindgen::prelude::*;
use zeroize::Zeroizing;

#[wasm_bindgen(typescript_custom_section)]
const TS_ERROR: &'static str = r#"
/**
 * What every call rejects with (or throws): an `Error` named "SottoError".
 * `code` is stable: "wrong_store_key", "store_conflict", "store", "machine", "transport",
 * "device_list", "account_exists", "no_account", "bad_contact", "unknown_contact",
 * "bad_link_code", "link", "no_account_key", "no_list_key", "needs_recovery_key",
 * "bad_recovery_key", "unknown_link_request", "link_timeout", "bad_group_id",
 * "unknown_group" (no such group, or this account left it or was removed),
 * "not_group_admin", "group" (a group change refused, e.g. too many members),
 * "sender_key" (a group message could not be encrypted),
 * "invalid_argument", "closed".
 * `retryable` says whether the same call may succeed later. (Device linking is not exposed
 * to the web build yet; `exportRecoveryKey` is.)
 */
export interface SottoError extends Error {
  name: "SottoError";
  code: string;
  retryable: boolean;
}
"#;

/// A `SottoError` (see the TypeScript declaration above).
fn error(code: &str, message: &str, retryable: bool) -> JsValue {
    let e = js_sys::Error::new(message);
    e.set_name("SottoError");
    let _ = Reflect::set(&e, &"code".into(), &code.into());
    let _ = Reflect::set(&e, &"retryable".into(), &retryable.into());
    e.into()
}

fn client_error(e: ClientError) -> JsValue {
    // The SDK reports group refusals as `machine` errors; the binding names them.
    let code = match &e {
        ClientError::Machine(MachineError::UnknownGroup) => "unknown_group",
        ClientError::Machine(MachineError::Group(GroupError::NotAdmin)) => "not_group_admin",
        ClientError::Machine(MachineError::Group(_)) => "group",
        ClientError::Machine(MachineError::SenderKey(_)) => "sender_key",
        _ => e.code(),
    };
    error(code, &e.to_string(), e.is_retryable())
}

fn invalid(message: &str) -> JsValue {
    error("invalid_argument", message, false)
}

fn closed() -> JsValue {
    error("closed", "the client is shut down", false)
}

/// An account id or a `sotto:` link.
fn account(s: &str) -> Result<AccountId, JsValue> {
    sotto_sdk::parse_contact(s).map_err(client_error)
}

/// Account ids or `sotto:` links.
fn accounts(list: &[String]) -> Result<Vec<AccountId>, JsValue> {
    list.iter().map(|s| account(s)).collect()
}

/// A group id: 64 hex digits.
fn group_id(s: &str) -> Result<GroupId, JsValue> {
    s.parse()
        .map_err(|_| error("bad_group_id", "not a group id (64 hex digits)", false))
}

fn store_key(bytes: &[u8]) -> Result<StoreKey, JsValue> {
    let key: Zeroizing<[u8; 32]> = Zeroizing::new(
        bytes
            .try_into()
            .map_err(|_| invalid("the store key must be 32 bytes"))?,
    );
    Ok(StoreKey::new(*key))
}

/// A JavaScript number that must be a non-negative integer below 2^53.
fn whole(n: f64, what: &str) -> Result<u64, JsValue> {
    if n.is_finite() && n >= 0.0 && n.fract() == 0.0 && n <= 9_007_199_254_740_991.0 {
        Ok(n as u64)
    } else {
        Err(invalid(&format!("{what} must be a whole number")))
    }
}

/// The package version.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").into()
}

/// One message of a conversation.
#[wasm_bindgen(getter_with_clone)]
#[derive(Clone, Debug)]
pub struct Message {
    /// The message id (hex).
    #[wasm_bindgen(readonly)]
    pub id: String,
    /// The conversation: the contact's account id, or for a group message the group id.
    #[wasm_bindgen(readonly)]
    pub conversation: String,
    /// The group id (64 hex digits) for a group message; undefined otherwise.
    #[wasm_bindgen(readonly)]
    pub group: Option<String>,
    /// The account that wrote it.
    #[wasm_bindgen(readonly, js_name = senderAccount)]
    pub sender_account: String,
    /// The device that wrote it.
    #[wasm_bindgen(readonly, js_name = senderDevice)]
    pub sender_device: u32,
    /// The sender's clock, Unix milliseconds.
    #[wasm_bindgen(readonly, js_name = timestampMs)]
    pub timestamp_ms: f64,
    /// The text.
    #[wasm_bindgen(readonly)]
    pub text: String,
    /// "received", "queued", "sent", "delivered" or "sentElsewhere" (written on another
    /// device of this account); "unknown" for a state this version does not know.
    #[wasm_bindgen(readonly)]
    pub status: String,
    /// Its place in the store, increasing; pass it as `before` to page back.
    #[wasm_bindgen(readonly)]
    pub order: f64,
}

/// The string a message or event names its conversation with: the group id when the
/// SDK's conversation key is a group's (`group`, from `Client::group_of`), the account id
/// otherwise.
fn conversation_id(conversation: &AccountId, group: Option<GroupId>) -> String {
    match group {
        Some(g) => g.to_string(),
        None => conversation.to_string(),
    }
}

impl Message {
    /// Mirrors `m`; `group` is the group its conversation belongs to, if any.
    fn new(m: StoredMessage, group: Option<GroupId>) -> Self {
        Self {
            id: m.id.to_string(),
            conversation: conversation_id(&m.conversation, group),
            group: group.map(|g| g.to_string()),
            sender_account: m.sender.0.to_string(),
            sender_device: m.sender.1.0,
            timestamp_ms: m.timestamp_ms as f64,
            text: m.text,
            status: match m.status {
                MessageStatus::Received => "received",
                MessageStatus::Queued => "queued",
                MessageStatus::Sent => "sent",
                MessageStatus::Delivered => "delivered",
                MessageStatus::SentElsewhere => "sentElsewhere",
                MessageStatus::Failed { retryable: false } => "failed",
                MessageStatus::Failed { retryable: true } => "failedRetryable",
                _ => "unknown",
            }
            .into(),
            order: m.order as f64,
        }
    }
}

/// A member of a group.
#[wasm_bindgen(getter_with_clone)]
#[derive(Clone, Debug)]
pub struct GroupMember {
    /// The member's account id.
    #[wasm_bindgen(readonly)]
    pub account: String,
    /// "admin" (also changes the group) or "member".
    #[wasm_bindgen(readonly)]
    pub role: String,
}

/// A group as this device holds it.
#[wasm_bindgen(getter_with_clone)]
#[derive(Clone, Debug)]
pub struct Group {
    /// The group id: 64 lowercase hex digits.
    #[wasm_bindgen(readonly)]
    pub id: String,
    /// Its title (members see it; the relay does not).
    #[wasm_bindgen(readonly)]
    pub title: String,
    /// Its members with their roles, this account included while it is in the group.
    #[wasm_bindgen(readonly)]
    pub members: Vec<GroupMember>,
    /// The group state's version: 0 when created, one more for each change.
    #[wasm_bindgen(readonly)]
    pub version: f64,
    /// False once this account left the group or was removed from it.
    #[wasm_bindgen(readonly)]
    pub active: bool,
}

impl From<GroupInfo> for Group {
    fn from(g: GroupInfo) -> Self {
        Self {
            id: g.id.to_string(),
            title: g.title,
            members: g
                .members
                .into_iter()
                .map(|(account, role)| GroupMember {
                    account: account.to_string(),
                    role: match role {
                        Role::Admin => "admin",
                        Role::Member => "member",
                    }
                    .into(),
                })
                .collect(),
            version: g.version as f64,
            active: g.active,
        }
    }
}

/// Something that happened. `kind` says what, and which other fields are set:
///
/// - "messageReceived": `message` (from a contact, or written on another device of this
///   account);
/// - "messageSent": `messageId`, `conversation` (the relay stored it for every device);
/// - "delivered": `messageIds`, `account`, `device` (a device of the contact has them);
/// - "deviceListChanged": `account`, `added`, `removed`, `rekeyed`, `detail`;
/// - "deviceListRejected": `account`, `detail` (a list that did not verify);
/// - "undecryptable": `detail` (the cause), `account`/`device` when known;
/// - "sendFailed": `messageId`, `detail`;
/// - "groupChanged": `group` (created, joined, changed, or this account left it or was
///   removed: read it again with `group()`, whose `active` is then false);
/// - "groupChangeRejected": `group`, `detail` (a change that lost or was refused);
/// - "deviceRemoved", "connected", "caughtUp";
/// - "unknown": an event this version does not know.
#[wasm_bindgen(getter_with_clone)]
#[derive(Clone, Debug, Default)]
pub struct SottoEvent {
    /// What happened.
    #[wasm_bindgen(readonly)]
    pub kind: String,
    /// The message ("messageReceived").
    #[wasm_bindgen(readonly)]
    pub message: Option<Message>,
    /// The conversation ("messageSent", "sendFailed"): the contact's account id, or the
    /// group id.
    #[wasm_bindgen(readonly)]
    pub conversation: Option<String>,
    /// The group id ("groupChanged", "groupChangeRejected", and "messageSent" or
    /// "sendFailed" in a group).
    #[wasm_bindgen(readonly)]
    pub group: Option<String>,
    /// The message ("messageSent", "sendFailed").
    #[wasm_bindgen(readonly, js_name = messageId)]
    pub message_id: Option<String>,
    /// The messages ("delivered").
    #[wasm_bindgen(readonly, js_name = messageIds)]
    pub message_ids: Option<Vec<String>>,
    /// The account concerned.
    #[wasm_bindgen(readonly)]
    pub account: Option<String>,
    /// The device concerned ("delivered", "undecryptable").
    #[wasm_bindgen(readonly)]
    pub device: Option<u32>,
    /// Devices added, removed and re-keyed ("deviceListChanged").
    #[wasm_bindgen(readonly)]
    pub added: Option<Vec<u32>>,
    /// See `added`.
    #[wasm_bindgen(readonly)]
    pub removed: Option<Vec<u32>>,
    /// See `added`.
    #[wasm_bindgen(readonly)]
    pub rekeyed: Option<Vec<u32>>,
    /// A human-readable cause or summary, for display.
    #[wasm_bindgen(readonly)]
    pub detail: Option<String>,
    /// A stable error code ("sendFailed": the relay's error code name such as
    /// `MAILBOX_FULL`, or `DEVICE_SET_CHANGING`, `DEVICE_LIST`, `ENCRYPT`, `BAD_BUNDLE`).
    #[wasm_bindgen(readonly)]
    pub code: Option<String>,
    /// True when sending again later may work ("sendFailed").
    #[wasm_bindgen(readonly)]
    pub retryable: Option<bool>,
    /// The connection's state ("connectionState"): `connecting`, `connected`,
    /// `disconnected`, `stopped`; `code` then names the cause (`unreachable`, `closed`,
    /// `idle_timeout`, ..., or for `stopped`: `superseded`, `device_removed`).
    #[wasm_bindgen(readonly)]
    pub state: Option<String>,
    /// Milliseconds until the next attempt ("connectionState", `disconnected`).
    #[wasm_bindgen(readonly, js_name = retryInMs)]
    pub retry_in_ms: Option<f64>,
}

fn kind(kind: &str) -> SottoEvent {
    SottoEvent {
        kind: kind.into(),
        ..SottoEvent::default()
    }
}

fn ids(ids: &[sotto_crypto::DeviceId]) -> Vec<u32> {
    ids.iter().map(|d| d.0).collect()
}

/// The conversation an event names, whose group (if any) the event carries.
fn event_conversation(e: &SdkEvent) -> Option<&AccountId> {
    match e {
        SdkEvent::MessageReceived(m) => Some(&m.conversation),
        SdkEvent::MessageSent { conversation, .. } | SdkEvent::SendFailed { conversation, .. } => Some(conversation),
        _ => None,
    }
}

impl SottoEvent {
    /// Mirrors `e`; `group` is the group its conversation belongs to, if any.
    fn new(e: SdkEvent, group: Option<GroupId>) -> Self {
        let group_str = group.map(|g| g.to_string());
        match e {
            SdkEvent::MessageReceived(m) => SottoEvent {
                message: Some(Message::new(m, group)),
                ..kind("messageReceived")
            },
            SdkEvent::MessageSent { id, conversation } => SottoEvent {
                message_id: Some(id.to_string()),
                conversation: Some(conversation_id(&conversation, group)),
                group: group_str,
                ..kind("messageSent")
            },
            SdkEvent::Delivered { ids, by } => SottoEvent {
                message_ids: Some(ids.iter().map(ToString::to_string).collect()),
                account: Some(by.0.to_string()),
                device: Some(by.1.0),
                ..kind("delivered")
            },
            SdkEvent::DeviceListChanged { account, change } => SottoEvent {
                account: Some(account.to_string()),
                detail: Some(format!(
                    "{} added, {} removed, {} re-keyed",
                    change.added.len(),
                    change.removed.len(),
                    change.rekeyed.len()
                )),
                added: Some(ids(&change.added)),
                removed: Some(ids(&change.removed)),
                rekeyed: Some(ids(&change.rekeyed)),
                ..kind("deviceListChanged")
            },
            SdkEvent::DeviceListRejected { account, error } => SottoEvent {
                account: Some(account.to_string()),
                detail: Some(error.to_string()),
                ..kind("deviceListRejected")
            },
            SdkEvent::Undecryptable { sender, cause } => SottoEvent {
                account: sender.map(|s| s.0.to_string()),
                device: sender.map(|s| s.1.0),
                detail: Some(cause.to_string()),
                ..kind("undecryptable")
            },
            SdkEvent::SendFailed {
                id,
                reason,
                conversation,
                code,
                retryable,
            } => SottoEvent {
                message_id: Some(id.to_string()),
                detail: Some(reason),
                conversation: Some(conversation_id(&conversation, group)),
                group: group_str,
                code: Some(code.to_owned()),
                retryable: Some(retryable),
                ..kind("sendFailed")
            },
            SdkEvent::GroupChanged { group } => SottoEvent {
                group: Some(group.to_string()),
                ..kind("groupChanged")
            },
            SdkEvent::GroupChangeRejected { group, error } => SottoEvent {
                group: Some(group.to_string()),
                detail: Some(error.to_string()),
                ..kind("groupChangeRejected")
            },
            SdkEvent::DeviceRemoved => kind("deviceRemoved"),
            SdkEvent::Connected => kind("connected"),
            SdkEvent::ConnectionState { state } => {
                let (cause, retry_in_ms) = match &state {
                    ConnectionState::Disconnected { retry_in_ms, cause } => {
                        (Some(cause.code()), Some(*retry_in_ms as f64))
                    }
                    ConnectionState::Stopped { cause } => (Some(cause.code()), None),
                    _ => (None, None),
                };
                SottoEvent {
                    state: Some(state.code().into()),
                    code: cause.map(Into::into),
                    retry_in_ms,
                    ..kind("connectionState")
                }
            }
            SdkEvent::CaughtUp => kind("caughtUp"),
            _ => kind("unknown"),
        }
    }
}

/// One device of one account: its encrypted IndexedDB store and its relay connection.
///
/// Create one with `SottoClient.createAccount` or `SottoClient.open`; read events with
/// `nextEvent()`; call `shutdown()` when done (then `free()`).
#[wasm_bindgen]
pub struct SottoClient {
    client: Rc<Client<IdbStore>>,
    events: Rc<Mutex<EventStream>>,
    closed: watch::Sender<bool>,
}

impl SottoClient {
    fn new(client: Client<IdbStore>) -> Result<Self, JsValue> {
        let events = client
            .events()
            .ok_or_else(|| error("internal", "the event stream was taken", false))?;
        Ok(Self {
            client: Rc::new(client),
            events: Rc::new(Mutex::new(events)),
            closed: watch::channel(false).0,
        })
    }

    /// The client, unless shut down.
    fn live(&self) -> Result<Rc<Client<IdbStore>>, JsValue> {
        if *self.closed.borrow() {
            return Err(closed());
        }
        Ok(self.client.clone())
    }
}

#[wasm_bindgen]
impl SottoClient {
    /// Creates an account with its first device, registers it at `relayUrl` (exactly
    /// the relay's `public_url`) and connects. The store is the IndexedDB database
    /// `dbName`, encrypted under `storeKey` (32 bytes the app keeps, for example wrapped
    /// by a non-extractable WebCrypto key).
    #[wasm_bindgen(js_name = createAccount)]
    pub async fn create_account(
        db_name: String,
        store_key: Vec<u8>,
        relay_url: String,
    ) -> Result<SottoClient, JsValue> {
        let key = store_key_zeroized(store_key)?;
        let store = IdbStore::open(&db_name, &key)
            .await
            .map_err(|e| client_error(e.into()))?;
        let client = Client::create_account(store, key, &relay_url, ClientOptions::default())
            .await
            .map_err(client_error)?;
        Self::new(client)
    }

    /// Opens the account in the IndexedDB database `dbName` and connects.
    pub async fn open(db_name: String, store_key: Vec<u8>) -> Result<SottoClient, JsValue> {
        let key = store_key_zeroized(store_key)?;
        let store = IdbStore::open(&db_name, &key)
            .await
            .map_err(|e| client_error(e.into()))?;
        let client = Client::open(store, key, ClientOptions::default())
            .await
            .map_err(client_error)?;
        Self::new(client)
    }

    /// This account's id.
    #[wasm_bindgen(getter, js_name = accountId)]
    pub fn account_id(&self) -> String {
        self.client.account_id().to_string()
    }

    /// This device's id within the account.
    #[wasm_bindgen(getter, js_name = deviceId)]
    pub fn device_id(&self) -> u32 {
        self.client.device_id().0
    }

    /// The link others add this account with (`sotto:<account id>.<hex access key>`): whoever
    /// adds it sends as a contact, not as a message request.
    #[wasm_bindgen(getter, js_name = contactLink)]
    pub fn contact_link(&self) -> String {
        self.client.contact_link()
    }

    /// Adds a contact by account id or `sotto:` link (fetching and pinning its device
    /// list); returns its account id.
    #[wasm_bindgen(js_name = addContact)]
    pub async fn add_contact(&self, contact: String) -> Result<String, JsValue> {
        let client = self.live()?;
        let id = client.add_contact(&contact).await.map_err(client_error)?;
        Ok(id.to_string())
    }

    /// Queues a text for a contact (an account id) and returns the stored message; it is
    /// sent now, or after a reconnect.
    #[wasm_bindgen(js_name = sendText)]
    pub async fn send_text(&self, contact: String, text: String) -> Result<Message, JsValue> {
        let client = self.live()?;
        let to = account(&contact)?;
        client
            .send_text(&to, &text)
            .await
            .map(|m| Message::new(m, None))
            .map_err(client_error)
    }

    /// Accounts that wrote to this one and were not accepted yet: message requests.
    #[wasm_bindgen(js_name = messageRequests)]
    pub async fn message_requests(&self) -> Result<Vec<String>, JsValue> {
        let client = self.live()?;
        let list = client.message_requests().await.map_err(client_error)?;
        Ok(list.iter().map(ToString::to_string).collect())
    }

    /// Accepts a message request (an account id): the account's access key goes to the
    /// contact with the next message or receipt.
    #[wasm_bindgen(js_name = acceptMessageRequest)]
    pub async fn accept_message_request(&self, contact: String) -> Result<(), JsValue> {
        let client = self.live()?;
        let who = account(&contact)?;
        client.accept_message_request(&who).await.map_err(client_error)
    }

    /// The conversations (contacts' account ids).
    pub async fn conversations(&self) -> Result<Vec<String>, JsValue> {
        let client = self.live()?;
        let list = client.conversations().await.map_err(client_error)?;
        Ok(list.iter().map(ToString::to_string).collect())
    }

    /// The last `limit` messages of a conversation stored before `before` (an `order`;
    /// omitted or null for the newest), oldest first.
    pub async fn messages(
        &self,
        conversation: String,
        limit: u32,
        before: Option<f64>,
    ) -> Result<Vec<Message>, JsValue> {
        let client = self.live()?;
        let conversation = account(&conversation)?;
        let before = before.map(|b| whole(b, "before")).transpose()?;
        let page = Page { before, limit };
        let list = client.messages(&conversation, page).await.map_err(client_error)?;
        Ok(list.into_iter().map(|m| Message::new(m, None)).collect())
    }

    /// Creates a group with this account as its admin and `members` (contacts' account ids
    /// or links) in it; returns its id (64 hex digits). Members who are not contacts of
    /// each other get each other's access keys through the group.
    #[wasm_bindgen(js_name = createGroup)]
    pub async fn create_group(&self, title: String, members: Vec<String>) -> Result<String, JsValue> {
        let client = self.live()?;
        let members = accounts(&members)?;
        let id = client.create_group(&title, &members).await.map_err(client_error)?;
        Ok(id.to_string())
    }

    /// Adds members (account ids or links) to a group (admins only); they read what is
    /// sent from now on.
    #[wasm_bindgen(js_name = addGroupMembers)]
    pub async fn add_group_members(&self, group: String, members: Vec<String>) -> Result<(), JsValue> {
        let client = self.live()?;
        let group = group_id(&group)?;
        let members = accounts(&members)?;
        client.add_group_members(&group, &members).await.map_err(client_error)
    }

    /// Removes a member (admins only): the group's keys change, so the member reads
    /// nothing sent afterwards.
    #[wasm_bindgen(js_name = removeGroupMember)]
    pub async fn remove_group_member(&self, group: String, member: String) -> Result<(), JsValue> {
        let client = self.live()?;
        let group = group_id(&group)?;
        let member = account(&member)?;
        client.remove_group_member(&group, &member).await.map_err(client_error)
    }

    /// Leaves a group.
    #[wasm_bindgen(js_name = leaveGroup)]
    pub async fn leave_group(&self, group: String) -> Result<(), JsValue> {
        let client = self.live()?;
        let group = group_id(&group)?;
        client.leave_group(&group).await.map_err(client_error)
    }

    /// Renames a group (admins only).
    #[wasm_bindgen(js_name = renameGroup)]
    pub async fn rename_group(&self, group: String, title: String) -> Result<(), JsValue> {
        let client = self.live()?;
        let group = group_id(&group)?;
        client.rename_group(&group, &title).await.map_err(client_error)
    }

    /// Makes a member an admin, or with `admin` false a plain member again (admins only).
    #[wasm_bindgen(js_name = setGroupAdmin)]
    pub async fn set_group_admin(&self, group: String, member: String, admin: bool) -> Result<(), JsValue> {
        let client = self.live()?;
        let group = group_id(&group)?;
        let member = account(&member)?;
        client
            .set_group_admin(&group, &member, admin)
            .await
            .map_err(client_error)
    }

    /// Queues a text to a group and returns the stored message (its `group` set).
    #[wasm_bindgen(js_name = sendGroupText)]
    pub async fn send_group_text(&self, group: String, text: String) -> Result<Message, JsValue> {
        let client = self.live()?;
        let group = group_id(&group)?;
        let m = client.send_group_text(&group, &text).await.map_err(client_error)?;
        Ok(Message::new(m, Some(group)))
    }

    /// The groups this account is or was in (`active` false once it left or was removed).
    pub async fn groups(&self) -> Result<Vec<Group>, JsValue> {
        let client = self.live()?;
        Ok(client.groups().await.into_iter().map(Into::into).collect())
    }

    /// One group, or undefined when this device knows no such group.
    pub async fn group(&self, group: String) -> Result<Option<Group>, JsValue> {
        let client = self.live()?;
        let group = group_id(&group)?;
        Ok(client.group(&group).await.map(Into::into))
    }

    /// The last `limit` messages of a group stored before `before` (an `order`; omitted
    /// or null for the newest), oldest first.
    #[wasm_bindgen(js_name = groupMessages)]
    pub async fn group_messages(
        &self,
        group: String,
        limit: u32,
        before: Option<f64>,
    ) -> Result<Vec<Message>, JsValue> {
        let client = self.live()?;
        let group = group_id(&group)?;
        let before = before.map(|b| whole(b, "before")).transpose()?;
        let page = Page { before, limit };
        let list = client.group_messages(&group, page).await.map_err(client_error)?;
        Ok(list.into_iter().map(|m| Message::new(m, Some(group))).collect())
    }

    /// Sends the delivery receipts that wait for their random delay now, for a page about
    /// to close. It gives up the delay that keeps the relay from pairing a delivery with
    /// its receipt, so a page that stays open should not call it.
    #[wasm_bindgen(js_name = sendReceiptsNow)]
    pub async fn send_receipts_now(&self) -> Result<(), JsValue> {
        let client = self.live()?;
        client.send_receipts_now().await;
        Ok(())
    }

    /// The safety number to compare with the contact in person.
    #[wasm_bindgen(js_name = safetyNumber)]
    pub async fn safety_number(&self, contact: String) -> Result<String, JsValue> {
        let client = self.live()?;
        let contact = account(&contact)?;
        client.safety_number(&contact).await.map_err(client_error)
    }

    /// The recovery key (the account key as text), handed out once: this device then
    /// deletes the account key. Show it to the user to keep offline; it is what takes
    /// back the account's device list (docs/protocol.md §12A.6).
    #[wasm_bindgen(js_name = exportRecoveryKey)]
    pub async fn export_recovery_key(&self) -> Result<String, JsValue> {
        let client = self.live()?;
        let key = client.export_recovery_key().await.map_err(client_error)?;
        Ok(key.as_str().to_owned())
    }

    /// The next event, or `undefined` once the client is shut down. Calls queue behind
    /// each other; an event is handed to exactly one of them.
    #[wasm_bindgen(js_name = nextEvent)]
    pub async fn next_event(&self) -> Option<SottoEvent> {
        let events = self.events.clone();
        let mut closed = self.closed.subscribe();
        if *closed.borrow() {
            return None;
        }
        let mut stream = tokio::select! {
            s = events.lock() => s,
            _ = closed.wait_for(|c| *c) => return None,
        };
        let e = tokio::select! {
            e = stream.next() => e?,
            _ = closed.wait_for(|c| *c) => return None,
        };
        let group = match event_conversation(&e) {
            Some(c) => self.client.group_of(c).await,
            None => None,
        };
        Some(SottoEvent::new(e, group))
    }

    /// Stops the relay connection and waits for it. Pending and later `nextEvent()`
    /// calls give `undefined`; other calls fail with code "closed".
    pub async fn shutdown(&self) {
        self.closed.send_replace(true);
        let client = self.client.clone();
        client.shutdown().await;
    }
}

/// The store key from the bytes JavaScript passed (the copy is wiped).
fn store_key_zeroized(bytes: Vec<u8>) -> Result<StoreKey, JsValue> {
    let bytes = Zeroizing::new(bytes);
    store_key(&bytes)
}
