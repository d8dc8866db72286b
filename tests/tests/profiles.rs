//! Profiles end to end (docs/protocol.md §15.9): a profile is stored on the relay
//! encrypted under the account's profile key, the key reaches accepted contacts and the
//! account's other devices in content, they fetch and decrypt the profile without
//! authenticating, and blocking someone rotates the key so their copy stops working.

use sotto_crypto::{AccountId, ProfileKey};
use sotto_relay::storage::Storage;
use sotto_sdk::Event;
use sotto_sdk::store::{ConversationRecord, MessageStore};
use sotto_sdk::transport::Relay;
use sotto_tests::{Device, TestRelay};

/// `who`'s record of the conversation with `with`.
async fn record(who: &Device, with: &AccountId) -> ConversationRecord {
    who.client
        .store()
        .conversations()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.peer == *with)
        .expect("a conversation")
}

/// Waits until `who`, a device of `of`, holds its account's profile under `name` (each
/// change it fetched shows as an event; earlier ones may still be queued).
async fn own_profile_becomes(who: &mut Device, of: AccountId, name: &str) {
    loop {
        who.wait_for(|e| matches!(e, Event::ProfileChanged { account } if *account == of))
            .await;
        if who.client.profile().await.is_some_and(|p| p.name == name) {
            return;
        }
    }
}

/// Waits until `who` holds `of`'s profile under `name` (each change it fetched shows as an
/// event; earlier ones may still be queued).
async fn contact_name_becomes(who: &mut Device, of: AccountId, name: &str) {
    loop {
        who.wait_for(|e| matches!(e, Event::ProfileChanged { account } if *account == of))
            .await;
        if record(who, &of).await.profile_name.as_deref() == Some(name) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_travel_encrypted_through_the_relay_and_a_block_rotates_the_key() {
    let relay = TestRelay::start().await;
    let mut alice = Device::create(&relay, 171).await;
    let mut bob = Device::create(&relay, 172).await;
    let mut carol = Device::create(&relay, 173).await;
    let alice_id = alice.id();
    // Alice writes to Bob and Carol: that accepts them, and they have a conversation.
    for who in [&mut bob, &mut carol] {
        alice.client.add_contact(&who.client.contact_link()).await.unwrap();
        alice.client.send_text(&who.id(), "hi").await.unwrap();
        assert_eq!(who.receive(1).await[0].text, "hi");
    }

    // Alice sets her profile: both contacts fetch it and show it.
    let avatar: Vec<u8> = (0..2000u32).map(|i| (i * 7 % 251) as u8).collect();
    alice.client.set_profile("Alice", Some(avatar.clone())).await.unwrap();
    for who in [&mut bob, &mut carol] {
        contact_name_becomes(who, alice_id, "Alice").await;
        assert_eq!(record(who, &alice_id).await.profile_avatar, Some(avatar.clone()));
    }

    // The relay holds only ciphertext, under the version the key derives.
    let stored = relay.state.store.profile(&alice_id).await.unwrap().expect("stored");
    let bob_key = record(&bob, &alice_id)
        .await
        .profile_key
        .expect("Bob holds Alice's key");
    assert_eq!(stored.version, ProfileKey::from_bytes(&bob_key).version(&alice_id));
    assert!(!stored.ciphertext.windows(5).any(|w| w == b"Alice"));
    assert!(!stored.ciphertext.windows(64).any(|w| w == &avatar[..64]));
    // Without the key there is nothing to fetch: a wrong version is NOT_FOUND, like an
    // account with no profile.
    let http = Relay::new(&relay.url()).unwrap();
    assert!(http.get_profile(&alice_id, &[7; 32]).await.unwrap().is_none());
    assert!(http.get_profile(&bob.id(), &[7; 32]).await.unwrap().is_none());

    // A device Alice links later gets the key from the device that let it in, and
    // fetches her profile as a contact does; her next change reaches it too.
    let mut alice2 = Device::join(&relay, &mut alice, 174).await;
    own_profile_becomes(&mut alice2, alice_id, "Alice").await;
    alice.client.set_profile("Alice A.", None).await.unwrap();
    own_profile_becomes(&mut alice2, alice_id, "Alice A.").await;
    contact_name_becomes(&mut bob, alice_id, "Alice A.").await;

    // Alice blocks Carol: a new key, under which the profile is uploaded again. Carol's
    // copy of the old key no longer fetches anything; Bob gets the new key.
    let carol_key = record(&carol, &alice_id).await.profile_key.expect("Carol's key");
    let old_version = ProfileKey::from_bytes(&carol_key).version(&alice_id);
    contact_name_becomes(&mut carol, alice_id, "Alice A.").await;
    alice.client.block(&carol.id()).await.unwrap();
    // Bob fetches the profile again under the new key it got.
    let bob_key = loop {
        bob.wait_for(|e| matches!(e, Event::ProfileChanged { account } if *account == alice_id))
            .await;
        let key = record(&bob, &alice_id).await.profile_key.expect("a key");
        if key != carol_key {
            break key;
        }
    };
    assert_eq!(record(&bob, &alice_id).await.profile_name.as_deref(), Some("Alice A."));
    assert!(http.get_profile(&alice_id, &old_version).await.unwrap().is_none());
    let new_version = ProfileKey::from_bytes(&bob_key).version(&alice_id);
    assert!(http.get_profile(&alice_id, &new_version).await.unwrap().is_some());
    // Her next change reaches Bob and her other device, not Carol.
    alice.client.set_profile("Alice B.", None).await.unwrap();
    contact_name_becomes(&mut bob, alice_id, "Alice B.").await;
    own_profile_becomes(&mut alice2, alice_id, "Alice B.").await;
    // Unblocked, Carol gets the current key again and catches up.
    alice.client.unblock(&carol.id()).await.unwrap();
    contact_name_becomes(&mut carol, alice_id, "Alice B.").await;
}
