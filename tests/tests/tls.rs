//! The client over TLS: a relay serving HTTPS/WSS (TLS 1.3) with a certificate from a
//! private CA that the clients were told to trust. Without that root the client refuses
//! the relay with a typed transport error.

use sotto_sdk::store::SqliteStore;
use sotto_sdk::store::StoreKey;
use sotto_sdk::{Client, ClientError, ClientOptions};
use sotto_tests::{Device, TempDir, TestRelay};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_chat_through_a_tls_relay() {
    let relay = TestRelay::start_tls().await;
    assert!(relay.url().starts_with("https://"));
    let mut alice = Device::create(&relay, 11).await;
    let mut bob = Device::create(&relay, 12).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    bob.client.add_contact(&alice.client.contact_link()).await.unwrap();
    for i in 0..20 {
        alice.client.send_text(&bob.id(), &format!("a{i}")).await.unwrap();
        bob.client.send_text(&alice.id(), &format!("b{i}")).await.unwrap();
    }
    let at_bob: Vec<String> = bob.receive(20).await.into_iter().map(|m| m.text).collect();
    let at_alice: Vec<String> = alice.receive(20).await.into_iter().map(|m| m.text).collect();
    assert_eq!(at_bob, (0..20).map(|i| format!("a{i}")).collect::<Vec<_>>());
    assert_eq!(at_alice, (0..20).map(|i| format!("b{i}")).collect::<Vec<_>>());
    assert!(!alice.saw_undecryptable() && !bob.saw_undecryptable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_a_typed_error() {
    let relay = TestRelay::start_tls().await;
    let dir = TempDir::new("client");
    let key = StoreKey::new([7; 32]);
    let store = SqliteStore::open(&dir.path().join("client.db"), &key).await.unwrap();
    // The Mozilla roots only: the test CA is not among them.
    let Err(err) = Client::create_account(store, StoreKey::new([7; 32]), &relay.url(), ClientOptions::default()).await
    else {
        panic!("an untrusted relay certificate is refused");
    };
    assert!(matches!(err, ClientError::Transport(_)), "{err:?}");
    // A root that is not PEM is refused before connecting.
    let store = SqliteStore::open(&dir.path().join("other.db"), &key).await.unwrap();
    let options = ClientOptions {
        extra_root_certificates: vec![b"not a certificate".to_vec()],
        ..ClientOptions::default()
    };
    let Err(err) = Client::create_account(store, StoreKey::new([7; 32]), &relay.url(), options).await else {
        panic!("a bad root is refused");
    };
    assert_eq!(err.code(), "transport", "{err:?}");
}
