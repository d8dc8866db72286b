//! The store conformance suite on the IndexedDB store in a browser (wasm-bindgen-test,
//! headless Chromium; see `webdriver.json`), plus the IndexedDB store's own checks: values
//! are encrypted at rest, a reopened database keeps its data and needs its key, a
//! conflicting or dropped commit writes nothing, commits ask for strict durability, two
//! connections (two tabs) never both win a compare-and-swap, and a connection steps aside
//! for a schema upgrade elsewhere.
#![cfg(target_arch = "wasm32")]

use std::sync::atomic::{AtomicU32, Ordering};

use js_sys::{Array, Object, Reflect, Uint8Array};
use sotto_crypto::{AccountId, DeviceId};
use sotto_sdk::MessageId;
use sotto_sdk::store::{
    AccountRecord, AccountStore, Changes, ConversationRecord, DeviceListStore, IdbStore, MessageStatus, MessageStore,
    OutboxItem, OutboxStore, PreKeyStore, SessionSet, SessionStore, Store, StoreError, StoreKey, StoredMessage, Write,
};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};
use web_sys::{IdbDatabase, IdbFactory, IdbOpenDbRequest, IdbRequest, IdbTransactionMode};

wasm_bindgen_test_configure!(run_in_browser);

/// A database name no other test (or earlier run in the same profile) uses.
fn db_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "sotto-test-{}-{}-{}",
        js_sys::Date::now() as u64,
        (js_sys::Math::random() * 1e9) as u64,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

mod conformance {
    use super::*;
    sotto_sdk::store_conformance_tests!(wasm: IdbStore::open(&db_name(), &StoreKey::new([7; 32])).await.unwrap());
}

const STORES: [&str; 10] = [
    "meta",
    "account",
    "sessions",
    "prekeys",
    "device_lists",
    "conversations",
    "messages",
    "outbox",
    "processed",
    "pending",
];

fn factory() -> IdbFactory {
    Reflect::get(&js_sys::global(), &"indexedDB".into())
        .unwrap()
        .unchecked_into()
}

/// Awaits a raw request (without the store's helpers).
async fn wait(request: &IdbRequest) -> Result<JsValue, JsValue> {
    let promise = js_sys::Promise::new(&mut |resolve, reject| {
        request.set_onsuccess(Some(&resolve));
        request.set_onerror(Some(&reject));
    });
    JsFuture::from(promise).await?;
    request.result()
}

async fn raw_open(name: &str, version: Option<u32>) -> IdbDatabase {
    let request: IdbOpenDbRequest = match version {
        Some(v) => factory().open_with_u32(name, v).unwrap(),
        None => factory().open(name).unwrap(),
    };
    wait(&request).await.unwrap().unchecked_into()
}

/// Every byte string and string stored in the database, concatenated.
async fn raw_contents(name: &str) -> Vec<u8> {
    let db = raw_open(name, None).await;
    let mut out = Vec::new();
    for store in STORES {
        let tx = db
            .transaction_with_str_and_mode(store, IdbTransactionMode::Readonly)
            .unwrap();
        let all: Array = wait(&tx.object_store(store).unwrap().get_all().unwrap())
            .await
            .unwrap()
            .unchecked_into();
        for rec in all.iter() {
            assert!(rec.is_object(), "records are objects");
            for field in Object::values(rec.unchecked_ref::<Object>()).iter() {
                if let Some(b) = field.dyn_ref::<Uint8Array>() {
                    out.extend(b.to_vec());
                } else if let Some(s) = field.as_string() {
                    out.extend(s.into_bytes());
                } else {
                    assert!(field.as_f64().is_some(), "fields are bytes or numbers");
                }
            }
        }
    }
    db.close();
    out
}

fn account(seq: u64) -> AccountRecord {
    AccountRecord {
        account_key: Some(b"secret account key pickle".to_vec()),
        device: b"secret device pickle".to_vec(),
        relay_url: "https://relay.example.test".into(),
        signed_prekey_id: 1,
        next_one_time_id: 101,
        next_kem_id: 21,
        last_seq: seq,
        mailbox_epoch: None,
        prekeys_unsent: false,
        access_key: Some([0x5a; 32]),
        access_sent: Some(true),
        list_key: Some(b"secret list key pickle".to_vec()),
        profile: None,
        profile_key: None,
        profile_uploaded_ms: 0,
    }
}

fn create_account() -> Changes {
    Changes {
        account: Some(Write {
            expected: None,
            value: account(0),
        }),
        ..Changes::default()
    }
}

fn message(id: u8, conv: AccountId, text: &str) -> StoredMessage {
    StoredMessage::text(
        MessageId([id; 16]),
        conv,
        (conv, DeviceId(1)),
        1,
        text.into(),
        MessageStatus::Received,
    )
}

fn session(peer: AccountId, expected: Option<u64>, fill: u8) -> ((AccountId, DeviceId), Write<SessionSet>) {
    (
        (peer, DeviceId(3)),
        Write {
            expected,
            value: SessionSet {
                sessions: vec![vec![fill; 90]],
            },
        },
    )
}

#[wasm_bindgen_test]
async fn values_are_encrypted_at_rest() {
    let name = db_name();
    let store = IdbStore::open(&name, &StoreKey::new([1; 32])).await.unwrap();
    let conv = AccountId([0x5a; 32]);
    let mut changes = create_account();
    changes.sessions = vec![session(conv, None, 0x77)];
    changes.prekeys_added = vec![((2, 9), b"one-time prekey secret".to_vec())];
    changes.device_lists = vec![(conv, b"signed device list".to_vec())];
    changes.conversations = vec![ConversationRecord::new(conv)];
    changes.messages = vec![message(0x6b, conv, "a very secret plaintext")];
    changes.outbox_add = vec![OutboxItem::new(
        MessageId([0x6c; 16]),
        conv,
        b"queued secret content".to_vec(),
    )];
    store.commit(changes).await.unwrap();
    drop(store);

    let raw = raw_contents(&name).await;
    assert!(raw.len() > 500, "the records are there");
    let find = |needle: &[u8]| raw.windows(needle.len()).any(|w| w == needle);
    for needle in [
        &b"a very secret plaintext"[..],
        b"secret account key pickle",
        b"secret device pickle",
        b"secret list key pickle",
        b"relay.example.test",
        b"one-time prekey secret",
        b"signed device list",
        b"queued secret content",
        &[0x5a; 32],
        &[0x6b; 16],
        &[0x6c; 16],
        &[0x77; 32],
    ] {
        assert!(
            !find(needle),
            "{:?} is stored in the clear",
            String::from_utf8_lossy(needle)
        );
    }
}

/// Every commit's transaction asks for strict durability: `complete` then means on disk,
/// and only then does the client ack what it committed.
#[wasm_bindgen_test]
async fn commits_ask_for_strict_durability() {
    let store = IdbStore::open(&db_name(), &StoreKey::new([9; 32])).await.unwrap();
    // Records the options of every readwrite transaction opened until `restore()`.
    let probe = js_sys::Function::new_no_args(
        "const proto = IDBDatabase.prototype;
         const original = proto.transaction;
         const seen = [];
         proto.transaction = function (names, mode, options) {
           if (mode === 'readwrite') seen.push(options === undefined ? 'none' : String(options.durability));
           return original.apply(this, arguments);
         };
         return { seen, restore() { proto.transaction = original; } };",
    )
    .call0(&JsValue::NULL)
    .unwrap();
    let committed = store.commit(create_account()).await;
    let restore: js_sys::Function = Reflect::get(&probe, &"restore".into()).unwrap().unchecked_into();
    restore.call0(&probe).unwrap();
    committed.unwrap();
    let seen: Vec<String> = Array::from(&Reflect::get(&probe, &"seen".into()).unwrap())
        .iter()
        .map(|v| v.as_string().unwrap_or_default())
        .collect();
    assert_eq!(seen, ["strict"]);
}

#[wasm_bindgen_test]
async fn reopening_needs_the_same_key() {
    let name = db_name();
    let conv = AccountId([4; 32]);
    let store = IdbStore::open(&name, &StoreKey::new([1; 32])).await.unwrap();
    let mut changes = create_account();
    changes.messages = vec![message(1, conv, "kept")];
    store.commit(changes).await.unwrap();
    drop(store);

    let wrong = IdbStore::open(&name, &StoreKey::new([2; 32])).await;
    assert!(matches!(wrong, Err(StoreError::Decrypt)), "{wrong:?}");

    let again = IdbStore::open(&name, &StoreKey::new([1; 32])).await.unwrap();
    let a = again.load_account().await.unwrap().unwrap();
    assert_eq!(a.version, 1);
    assert_eq!(a.value, account(0));
    let got = again.messages(conv, Default::default()).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].text, "kept");
    // Orders keep growing across connections.
    let c = again
        .commit(Changes {
            messages: vec![message(2, conv, "later")],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert!(c.inserted[0].1 > got[0].order);
}

#[wasm_bindgen_test]
async fn a_conflicting_commit_writes_nothing() {
    let store = IdbStore::open(&db_name(), &StoreKey::new([1; 32])).await.unwrap();
    let conv = AccountId([8; 32]);
    store
        .commit(Changes {
            prekeys_added: vec![((2, 1), vec![1; 40])],
            ..create_account()
        })
        .await
        .unwrap();
    // Every part is fine except the last prekey deletion, after the account, session
    // and first prekey writes were issued in the transaction.
    let bad = store
        .commit(Changes {
            account: Some(Write {
                expected: Some(1),
                value: account(5),
            }),
            sessions: vec![session(conv, None, 1)],
            prekeys_removed: vec![(2, 1), (2, 2)],
            prekeys_added: vec![((2, 3), vec![3; 40])],
            device_lists: vec![(conv, vec![9; 100])],
            conversations: vec![ConversationRecord::new(conv)],
            messages: vec![message(1, conv, "lost")],
            outbox_add: vec![OutboxItem::new(MessageId([1; 16]), conv, vec![1; 10])],
            ..Changes::default()
        })
        .await;
    assert!(matches!(bad, Err(StoreError::Conflict)), "{bad:?}");
    let a = store.load_account().await.unwrap().unwrap();
    assert_eq!((a.version, a.value.last_seq), (1, 0));
    assert!(store.load_sessions().await.unwrap().is_empty());
    assert_eq!(store.load_prekeys().await.unwrap(), vec![((2, 1), vec![1; 40])]);
    assert!(store.load_device_lists().await.unwrap().is_empty());
    assert!(store.conversations().await.unwrap().is_empty());
    assert!(store.messages(conv, Default::default()).await.unwrap().is_empty());
    assert!(store.recent_message_ids(10).await.unwrap().is_empty());
    assert!(store.outbox(10).await.unwrap().is_empty());
    // The store is usable afterwards.
    let ok = store
        .commit(Changes {
            messages: vec![message(1, conv, "kept")],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(ok.inserted.len(), 1);
}

#[wasm_bindgen_test]
async fn a_dropped_commit_writes_nothing() {
    let store = IdbStore::open(&db_name(), &StoreKey::new([1; 32])).await.unwrap();
    let commit = store.commit(Changes {
        device_lists: vec![(AccountId([1; 32]), vec![1; 50]), (AccountId([2; 32]), vec![2; 50])],
        ..Changes::default()
    });
    // Polled once (the writes are issued), then dropped.
    tokio::select! {
        biased;
        _ = commit => panic!("a commit cannot end within one poll"),
        _ = std::future::ready(()) => {}
    }
    assert!(store.load_device_lists().await.unwrap().is_empty());
}

#[wasm_bindgen_test]
async fn two_connections_never_both_win() {
    let name = db_name();
    let key = StoreKey::new([3; 32]);
    let a = IdbStore::open(&name, &key).await.unwrap();
    let b = IdbStore::open(&name, &key).await.unwrap();

    let (ra, rb) = tokio::join!(a.commit(create_account()), b.commit(create_account()));
    assert!(
        ra.is_ok() != rb.is_ok(),
        "exactly one creates the account: {ra:?} {rb:?}"
    );
    assert!(matches!(ra.err().or(rb.err()), Some(StoreError::Conflict)));

    let peer = AccountId([6; 32]);
    a.commit(Changes {
        sessions: vec![session(peer, None, 1)],
        prekeys_added: vec![((2, 5), vec![5; 40])],
        ..Changes::default()
    })
    .await
    .unwrap();
    // Both read version 1 and write from it; both use the one-time prekey.
    let step = |fill: u8| Changes {
        sessions: vec![session(peer, Some(1), fill)],
        ..Changes::default()
    };
    let (ra, rb) = tokio::join!(a.commit(step(2)), b.commit(step(3)));
    assert!(ra.is_ok() != rb.is_ok(), "{ra:?} {rb:?}");
    let winner = if ra.is_ok() { 2 } else { 3 };
    let sessions = b.load_sessions().await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].1.version, 2);
    assert_eq!(sessions[0].1.value.sessions, vec![vec![winner; 90]]);

    let take = || Changes {
        prekeys_removed: vec![(2, 5)],
        ..Changes::default()
    };
    let (ra, rb) = tokio::join!(a.commit(take()), b.commit(take()));
    assert!(ra.is_ok() != rb.is_ok(), "{ra:?} {rb:?}");
    assert!(a.load_prekeys().await.unwrap().is_empty());
}

#[wasm_bindgen_test]
async fn a_connection_steps_aside_for_an_upgrade() {
    let name = db_name();
    let store = IdbStore::open(&name, &StoreKey::new([1; 32])).await.unwrap();
    store.commit(create_account()).await.unwrap();
    // Another tab opens a newer schema: not blocked, because the store closes itself.
    let newer = raw_open(&name, Some(IdbStore::SCHEMA_VERSION + 1)).await;
    assert_eq!(newer.version(), f64::from(IdbStore::SCHEMA_VERSION + 1));
    newer.close();
    let closed = store.load_account().await;
    assert!(matches!(closed, Err(StoreError::Database(_))), "{closed:?}");
    let commit = store.commit(create_account()).await;
    assert!(matches!(commit, Err(StoreError::Database(_))), "{commit:?}");
    // This version cannot open the newer database: an error, not a panic.
    let old = IdbStore::open(&name, &StoreKey::new([1; 32])).await;
    assert!(matches!(old, Err(StoreError::Database(_))), "{old:?}");
}

#[wasm_bindgen_test]
async fn no_indexeddb_is_an_error() {
    let global = js_sys::global();
    let name = JsValue::from_str("indexedDB");
    // An own accessor of the global object (a WebIDL [Global] attribute) or inherited.
    let original = Object::get_own_property_descriptor(&global, &name);
    let hide = Object::new();
    Reflect::set(&hide, &"value".into(), &JsValue::UNDEFINED).unwrap();
    Reflect::set(&hide, &"configurable".into(), &JsValue::TRUE).unwrap();
    Object::define_property(&global, &name, &hide);
    let opened = IdbStore::open(&db_name(), &StoreKey::new([1; 32])).await;
    if original.is_undefined() {
        Reflect::delete_property(&global, &name).unwrap();
    } else {
        Object::define_property(&global, &name, original.unchecked_ref());
    }
    assert!(matches!(opened, Err(StoreError::Database(_))), "{opened:?}");
    // Back again.
    IdbStore::open(&db_name(), &StoreKey::new([1; 32])).await.unwrap();
}
