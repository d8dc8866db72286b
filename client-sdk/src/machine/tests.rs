//! Two or three machines talking through an in-process mailbox: sessions, fan-out,
//! transcripts, deduplication and the checks on inbound envelopes.

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sotto_crypto::{AccountId, DeviceId, PickleKey, PreKeyBundle, PreKeyKind};
use sotto_proto::{PreKeyCounts, PreKeyUpload, Recipient};

use super::*;
use crate::store::{
    AccountStore, DeviceListStore, MemoryStore, MessageStore, OutboxStore, Page, PreKeyStore, SessionStore, Store,
};

struct Peer {
    store: MemoryStore,
    machine: Machine,
    upload: PreKeyUpload,
    inbox: Vec<Vec<u8>>,
    seq: u64,
    events: Vec<Event>,
}

async fn snapshot(s: &MemoryStore) -> Snapshot {
    Snapshot {
        account: s.load_account().await.unwrap(),
        sessions: s.load_sessions().await.unwrap(),
        prekeys: s.load_prekeys().await.unwrap(),
        device_lists: s.load_device_lists().await.unwrap(),
        conversations: s.conversations().await.unwrap(),
        recent_ids: s.recent_message_ids(100).await.unwrap(),
    }
}

impl Peer {
    async fn new(seed: u64) -> Peer {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let new = Machine::new_account("http://relay", 1000, &mut rng, &PickleKey::new([seed as u8; 32])).unwrap();
        let store = MemoryStore::new();
        store.commit(new.changes).await.unwrap();
        let machine = Machine::load(snapshot(&store).await, PickleKey::new([seed as u8; 32]), rng).unwrap();
        Peer {
            store,
            machine,
            upload: new.prekeys,
            inbox: Vec::new(),
            seq: 0,
            events: Vec::new(),
        }
    }

    async fn commit(&mut self, changes: Changes) {
        let c = self.store.commit(changes.clone()).await.unwrap();
        self.machine.apply(&changes, &c);
    }

    fn bundle(&mut self) -> PreKeyBundle {
        PreKeyBundle {
            identity: self.machine.device().identity(),
            signed_prekey: self.upload.signed_prekey.clone().unwrap(),
            one_time_prekey: if self.upload.one_time_prekeys.is_empty() {
                None
            } else {
                Some(self.upload.one_time_prekeys.remove(0))
            },
            kem_prekey: if self.upload.kem_prekeys.is_empty() {
                self.upload.last_resort_kem_prekey.clone().unwrap()
            } else {
                self.upload.kem_prekeys.remove(0)
            },
        }
    }

    fn id(&self) -> AccountId {
        self.machine.account_id()
    }
}

/// Sends Alice's outbox head to Bob, resolving needs from the other peers.
async fn send(from: &mut Peer, others: &mut [&mut Peer]) -> Vec<Recipient> {
    let item = from.store.outbox(1).await.unwrap().remove(0);
    loop {
        match from.machine.prepare_send(&item).unwrap() {
            SendPlan::Need(needs) => {
                for need in needs {
                    match need {
                        Need::DeviceList(a) => {
                            let o = others.iter().find(|p| p.id() == a).unwrap();
                            let bytes = o.machine.own_device_list().unwrap().signed().as_bytes().to_vec();
                            let (c, _) = from.machine.receive_device_list(&a, &bytes).unwrap();
                            from.commit(c).await;
                        }
                        Need::Bundles(a, devices) => {
                            assert_eq!(devices, vec![DeviceId(1)]);
                            let o = others.iter_mut().find(|p| p.id() == a).unwrap();
                            let b = o.bundle();
                            let c = from.machine.receive_bundles(&a, &[b]).unwrap();
                            from.commit(c).await;
                        }
                    }
                }
            }
            SendPlan::Ready { changes, recipients } => {
                from.commit(changes).await;
                let (c, _) = from.machine.mark_sent(&item);
                from.commit(c).await;
                for r in &recipients {
                    let o = others.iter_mut().find(|p| p.id() == r.account_id).unwrap();
                    o.inbox.push(r.envelope.clone());
                }
                return recipients;
            }
        }
    }
}

async fn deliver(to: &mut Peer, others: &[&Peer]) {
    for env in std::mem::take(&mut to.inbox) {
        to.seq += 1;
        deliver_one(to, others, to.seq, &env).await;
    }
}

async fn deliver_one(to: &mut Peer, others: &[&Peer], seq: u64, env: &[u8]) {
    let mut refreshed = false;
    loop {
        match to.machine.receive_envelope(seq, env, refreshed) {
            Inbound::Need(Need::DeviceList(a)) => {
                if let Some(o) = others.iter().find(|p| p.id() == a) {
                    let bytes = o.machine.own_device_list().unwrap().signed().as_bytes().to_vec();
                    let (c, _) = to.machine.receive_device_list(&a, &bytes).unwrap();
                    to.commit(c).await;
                }
                refreshed = true;
            }
            Inbound::Need(other) => panic!("unexpected {other:?}"),
            Inbound::LinkRequest { .. } => panic!("unexpected link request"),
            Inbound::Done { changes, events } => {
                to.commit(changes).await;
                to.events.extend(events);
                return;
            }
        }
    }
}

fn texts(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::MessageReceived(m) => Some(m.text.clone()),
            _ => None,
        })
        .collect()
}

fn causes(events: &[Event]) -> Vec<UndecryptableCause> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Undecryptable { cause, .. } => Some(cause.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn alice_and_bob_talk_both_ways_and_one_time_keys_are_deleted() {
    let mut alice = Peer::new(1).await;
    let mut bob = Peer::new(2).await;
    let kem_before = bob.store.load_prekeys().await.unwrap().len();
    for i in 0..3 {
        let (c, _) = alice.machine.queue_text(bob.id(), &format!("a{i}"), 2000 + i).unwrap();
        alice.commit(c).await;
        send(&mut alice, &mut [&mut bob]).await;
    }
    deliver(&mut bob, &[&alice]).await;
    assert_eq!(texts(&bob.events), ["a0", "a1", "a2"]);
    // The first message used one OPK and one ML-KEM one-time key: both deleted.
    let after = bob.store.load_prekeys().await.unwrap();
    assert_eq!(after.len(), kem_before - 2);
    assert!(!after.iter().any(|(id, _)| *id == (PreKeyKind::OneTime as u8, 1)));
    assert!(!after.iter().any(|(id, _)| *id == (PreKeyKind::KemOneTime as u8, 1)));
    for i in 0..3 {
        let (c, _) = bob.machine.queue_text(alice.id(), &format!("b{i}"), 3000 + i).unwrap();
        bob.commit(c).await;
        send(&mut bob, &mut [&mut alice]).await;
    }
    deliver(&mut alice, &[&bob]).await;
    assert_eq!(texts(&alice.events), ["b0", "b1", "b2"]);
    let convo = bob.store.messages(alice.id(), Page::default()).await.unwrap();
    assert_eq!(
        convo.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["a0", "a1", "a2", "b0", "b1", "b2"]
    );
}

#[tokio::test]
async fn simultaneous_first_messages_converge() {
    let mut alice = Peer::new(3).await;
    let mut bob = Peer::new(4).await;
    let (c, _) = alice.machine.queue_text(bob.id(), "hi bob", 1).unwrap();
    alice.commit(c).await;
    let (c, _) = bob.machine.queue_text(alice.id(), "hi alice", 1).unwrap();
    bob.commit(c).await;
    send(&mut alice, &mut [&mut bob]).await;
    send(&mut bob, &mut [&mut alice]).await;
    deliver(&mut bob, &[&alice]).await;
    deliver(&mut alice, &[&bob]).await;
    for round in 0..4 {
        let (c, _) = alice.machine.queue_text(bob.id(), &format!("a{round}"), 2).unwrap();
        alice.commit(c).await;
        send(&mut alice, &mut [&mut bob]).await;
        let (c, _) = bob.machine.queue_text(alice.id(), &format!("b{round}"), 2).unwrap();
        bob.commit(c).await;
        send(&mut bob, &mut [&mut alice]).await;
        deliver(&mut bob, &[&alice]).await;
        deliver(&mut alice, &[&bob]).await;
    }
    assert_eq!(texts(&bob.events), ["hi bob", "a0", "a1", "a2", "a3"]);
    assert_eq!(texts(&alice.events), ["hi alice", "b0", "b1", "b2", "b3"]);
    assert!(causes(&alice.events).is_empty() && causes(&bob.events).is_empty());
}

#[tokio::test]
async fn tampered_replayed_and_misdirected_envelopes_are_typed_and_dropped() {
    let mut alice = Peer::new(5).await;
    let mut bob = Peer::new(6).await;
    let mut carol = Peer::new(7).await;
    let (c, _) = alice.machine.queue_text(bob.id(), "one", 1).unwrap();
    alice.commit(c).await;
    send(&mut alice, &mut [&mut bob]).await;
    let first = bob.inbox[0].clone();
    deliver(&mut bob, &[&alice]).await;
    assert_eq!(texts(&bob.events), ["one"]);

    // A flipped byte.
    let (c, _) = alice.machine.queue_text(bob.id(), "two", 2).unwrap();
    alice.commit(c).await;
    send(&mut alice, &mut [&mut bob]).await;
    let mut flipped = bob.inbox.pop().unwrap();
    flipped[100] ^= 1;
    deliver_one(&mut bob, &[&alice], 10, &flipped).await;
    // The same envelope again under a new seq (a replay).
    deliver_one(&mut bob, &[&alice], 11, &first).await;
    // An envelope for Bob moved into Carol's mailbox.
    deliver_one(&mut carol, &[&alice], 1, &first).await;
    assert_eq!(
        causes(&bob.events),
        [
            UndecryptableCause::Envelope(OpenError::InvalidMac),
            UndecryptableCause::Duplicate
        ]
    );
    assert_eq!(
        causes(&carol.events),
        [UndecryptableCause::Envelope(OpenError::InvalidMac)]
    );
    assert_eq!(texts(&bob.events), ["one"]);
    assert!(texts(&carol.events).is_empty());
    // A second delivery at or below the processed seq is skipped silently.
    let n = bob.events.len();
    deliver_one(&mut bob, &[&alice], 1, &first).await;
    assert_eq!(bob.events.len(), n);
}

#[tokio::test]
async fn a_sender_missing_from_its_device_list_is_refused() {
    let mut alice = Peer::new(8).await;
    let mut bob = Peer::new(9).await;
    let (c, _) = alice.machine.queue_text(bob.id(), "one", 1).unwrap();
    alice.commit(c).await;
    send(&mut alice, &mut [&mut bob]).await;
    // Bob cannot get Alice's list: the sender is unknown.
    let env = bob.inbox.pop().unwrap();
    deliver_one(&mut bob, &[], 1, &env).await;
    assert_eq!(causes(&bob.events), [UndecryptableCause::UnknownSender]);
}

#[tokio::test]
async fn two_processes_on_one_store_never_fork_a_session() {
    let mut alice = Peer::new(10).await;
    let mut bob = Peer::new(11).await;
    for i in 0..2 {
        let (c, _) = alice.machine.queue_text(bob.id(), &format!("m{i}"), 1).unwrap();
        alice.commit(c).await;
        send(&mut alice, &mut [&mut bob]).await;
    }
    let alice_list = alice.machine.own_device_list().unwrap().signed().as_bytes().to_vec();
    let (c, _) = bob.machine.receive_device_list(&alice.id(), &alice_list).unwrap();
    bob.commit(c).await;
    // A second machine (another process: a notification extension) on Bob's store.
    let mut other = Machine::load(
        snapshot(&bob.store).await,
        PickleKey::new([11; 32]),
        ChaCha20Rng::seed_from_u64(99),
    )
    .unwrap();
    let (e1, e2) = (bob.inbox[0].clone(), bob.inbox[1].clone());
    // The app takes the first message: it creates the session and uses a one-time prekey.
    let Inbound::Done { changes, .. } = bob.machine.receive_envelope(1, &e1, false) else {
        panic!()
    };
    bob.commit(changes).await;
    // The extension, loaded before that, also decrypts the first message on its stale
    // state: its commit is refused (the prekey is gone, the rows moved on).
    let Inbound::Done { changes, events } = other.receive_envelope(1, &e1, false) else {
        panic!()
    };
    assert_eq!(texts(&events), ["m0"]);
    assert!(matches!(
        bob.store.commit(changes).await,
        Err(crate::store::StoreError::Conflict)
    ));
    // It reloads and continues from the committed state: the first is already done, the
    // second decrypts on the app's session.
    other = Machine::load(
        snapshot(&bob.store).await,
        PickleKey::new([11; 32]),
        ChaCha20Rng::seed_from_u64(98),
    )
    .unwrap();
    let Inbound::Done { changes, events } = other.receive_envelope(1, &e1, false) else {
        panic!()
    };
    assert!(changes.is_empty() && events.is_empty());
    let Inbound::Done { changes, events } = other.receive_envelope(2, &e2, false) else {
        panic!()
    };
    assert_eq!(texts(&events), ["m1"]);
    let c = bob.store.commit(changes.clone()).await.unwrap();
    other.apply(&changes, &c);
    let h = bob.store.messages(alice.id(), Page::default()).await.unwrap();
    assert_eq!(h.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), ["m0", "m1"]);
}

#[tokio::test]
async fn prekeys_are_refilled_below_the_low_mark() {
    let mut bob = Peer::new(12).await;
    let full = PreKeyCounts {
        one_time: 100,
        kem_one_time: 20,
        has_signed_prekey: true,
        has_last_resort: true,
    };
    assert!(bob.machine.refill_prekeys(&full).unwrap().is_none());
    let low = PreKeyCounts {
        one_time: 3,
        kem_one_time: 1,
        has_signed_prekey: true,
        has_last_resort: false,
    };
    let (changes, upload) = bob.machine.refill_prekeys(&low).unwrap().unwrap();
    assert_eq!(upload.one_time_prekeys.len(), ONE_TIME_BATCH as usize);
    assert_eq!(upload.one_time_prekeys[0].id, 1 + ONE_TIME_BATCH);
    assert_eq!(upload.kem_prekeys.len(), KEM_BATCH as usize);
    assert!(upload.signed_prekey.is_none());
    assert!(upload.last_resort_kem_prekey.is_some());
    let before = bob.store.load_prekeys().await.unwrap().len();
    bob.commit(changes).await;
    assert_eq!(
        bob.store.load_prekeys().await.unwrap().len(),
        before + (ONE_TIME_BATCH + KEM_BATCH) as usize
    );
    // The next refill continues the ids.
    let (_, next) = bob.machine.refill_prekeys(&low).unwrap().unwrap();
    assert_eq!(next.one_time_prekeys[0].id, 1 + 2 * ONE_TIME_BATCH);
}
