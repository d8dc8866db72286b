//! The store conformance suite on the memory store and on the encrypted SQLite store,
//! plus the SQLite store's own checks: values are encrypted at rest and a wrong key fails.
#![cfg(feature = "native")]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use sotto_crypto::{AccountId, DeviceId};
use sotto_sdk::MessageId;
use sotto_sdk::store::{
    Changes, MemoryStore, MessageStatus, MessageStore, SqliteStore, Store, StoreError, StoreKey, StoredMessage,
};

fn temp_db() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sotto-sdk-store-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("client.db")
}

mod memory {
    use super::*;
    sotto_sdk::store_conformance_tests!(MemoryStore::new());
}

mod sqlite {
    use super::*;
    sotto_sdk::store_conformance_tests!(SqliteStore::open(&temp_db(), &StoreKey::new([7; 32])).await.unwrap());
}

#[tokio::test]
async fn sqlite_values_are_encrypted_at_rest_and_need_the_key() {
    let path = temp_db();
    let store = SqliteStore::open(&path, &StoreKey::new([1; 32])).await.unwrap();
    let conv = AccountId([0x5a; 32]);
    store
        .commit(Changes {
            messages: vec![StoredMessage::text(
                MessageId([0x6b; 16]),
                conv,
                (conv, DeviceId(1)),
                1,
                "a very secret plaintext".into(),
                MessageStatus::Received,
            )],
            ..Changes::default()
        })
        .await
        .unwrap();
    store.close().await;
    let mut raw = std::fs::read(&path).unwrap();
    if let Ok(wal) = std::fs::read(path.with_extension("db-wal")) {
        raw.extend(wal);
    }
    let find = |needle: &[u8]| raw.windows(needle.len()).any(|w| w == needle);
    assert!(!find(b"a very secret plaintext"));
    assert!(!find(&[0x5a; 32]));
    assert!(!find(&[0x6b; 16]));

    let wrong = SqliteStore::open(&path, &StoreKey::new([2; 32])).await.unwrap();
    assert!(matches!(wrong.messages(conv, Default::default()).await, Ok(v) if v.is_empty()));
    assert!(matches!(wrong.recent_message_ids(10).await, Err(StoreError::Decrypt)));
    let right = SqliteStore::open(&path, &StoreKey::new([1; 32])).await.unwrap();
    let got = right.messages(conv, Default::default()).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].text, "a very secret plaintext");
}
