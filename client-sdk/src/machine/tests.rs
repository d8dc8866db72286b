//! Two or three machines talking through an in-process mailbox: sessions, fan-out,
//! transcripts, deduplication and the checks on inbound envelopes.

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sotto_crypto::{AccountId, DeviceId, OpenError, PickleKey, PreKeyBundle, PreKeyKind};
use sotto_proto::{PreKeyCounts, PreKeyUpload, Recipient};

use super::*;
use crate::content::{Content, ContentKind};
use crate::group::Op;
use crate::ids::MessageId;
use crate::store::{
    AccountStore, DeviceListStore, GroupStore, InboundStore, MemoryStore, MessageStatus, MessageStore, OutboxItem,
    OutboxStore, Page, PreKeyStore, SessionStore, Store, StoredMessage,
};

/// The tests' clock: accounts are made at T0 (1 December 2026, 00:00 UTC).
const T0: u64 = 1_796_083_200_000;
const DAY: u64 = 24 * 3_600_000;

struct Peer {
    store: MemoryStore,
    machine: Machine,
    upload: PreKeyUpload,
    inbox: Vec<Vec<u8>>,
    seq: u64,
    events: Vec<Event>,
    /// This peer's clock (T0 unless a test moves it).
    now: u64,
}

async fn snapshot(s: &MemoryStore) -> Snapshot {
    Snapshot {
        account: s.load_account().await.unwrap(),
        sessions: s.load_sessions().await.unwrap(),
        prekeys: s.load_prekeys().await.unwrap(),
        device_lists: s.load_device_lists().await.unwrap(),
        conversations: s.conversations().await.unwrap(),
        recent_ids: s.recent_message_ids(100).await.unwrap(),
        recent_envelopes: s.processed_envelopes(100).await.unwrap(),
        pending: s.pending_inbound().await.unwrap(),
        groups: s.load_groups().await.unwrap(),
        sender_keys: s.load_sender_keys().await.unwrap(),
    }
}

impl Peer {
    async fn new(seed: u64) -> Peer {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let new = Machine::new_account("http://relay", T0, &mut rng, &PickleKey::new([seed as u8; 32])).unwrap();
        let store = MemoryStore::new();
        store.commit(new.changes).await.unwrap();
        let ids = ChaCha20Rng::seed_from_u64(!seed);
        let machine = Machine::load(snapshot(&store).await, PickleKey::new([seed as u8; 32]), rng, ids).unwrap();
        Peer {
            store,
            machine,
            upload: new.prekeys,
            inbox: Vec::new(),
            seq: 0,
            events: Vec::new(),
            now: T0,
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
        match from.machine.prepare_send(&item, &[], from.now).unwrap() {
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
                            let c = from.machine.receive_bundles(&a, &[b], from.now).unwrap();
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
                    o.inbox.push(r.head.clone());
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
            Inbound::Defer { .. } => panic!("unexpected defer"),
            Inbound::LinkRequest { .. } | Inbound::LinkAccept { .. } => panic!("unexpected link message"),
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
    // The same envelope again under a new seq (a replay): skipped by its digest.
    deliver_one(&mut bob, &[&alice], 11, &first).await;
    // The same ratchet message sealed again (a new envelope): the session refuses it.
    let again = reseal(&alice, &bob, &first);
    deliver_one(&mut bob, &[&alice], 12, &again).await;
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
    // A second delivery of processed bytes is skipped silently.
    let n = bob.events.len();
    deliver_one(&mut bob, &[&alice], 1, &first).await;
    assert_eq!(bob.events.len(), n);
}

/// The envelope `env` (sealed by `from` to `to`) opened and sealed again by `from`: the
/// same inner message in new envelope bytes.
fn reseal(from: &Peer, to: &Peer, env: &[u8]) -> Vec<u8> {
    let opened = sotto_crypto::open(to.machine.device(), env).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(4242);
    sotto_crypto::seal(
        from.machine.device(),
        &to.machine.device().identity(),
        opened.content_type,
        &opened.content,
        &mut rng,
    )
    .unwrap()
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
        ChaCha20Rng::seed_from_u64(199),
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
        ChaCha20Rng::seed_from_u64(198),
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
    assert!(bob.machine.refill_prekeys(&full, T0).unwrap().is_none());
    let low = PreKeyCounts {
        one_time: 3,
        kem_one_time: 1,
        has_signed_prekey: true,
        has_last_resort: false,
    };
    let (changes, upload) = bob.machine.refill_prekeys(&low, T0).unwrap().unwrap();
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
    let (_, next) = bob.machine.refill_prekeys(&low, T0).unwrap().unwrap();
    assert_eq!(next.one_time_prekeys[0].id, 1 + 2 * ONE_TIME_BATCH);
}

/// Finding 14, SDK side: the signed and last-resort prekeys are replaced every week,
/// uploaded until the relay confirms them, and the replaced secrets stay for the grace
/// period (a first message encrypted to them still opens), then go.
#[tokio::test]
async fn signed_and_last_resort_prekeys_rotate_with_a_grace_period() {
    let mut alice = Peer::new(60).await;
    let mut bob = Peer::new(61).await;
    let full = PreKeyCounts {
        one_time: 100,
        kem_one_time: 20,
        has_signed_prekey: true,
        has_last_resort: true,
    };
    // Ids are creation hours, signed (covered by the prekey signature).
    let old_spk = bob.upload.signed_prekey.clone().unwrap();
    let old_lr = bob.upload.last_resort_kem_prekey.clone().unwrap();
    assert_eq!(prekey_created_ms(PreKeyKind::Signed, old_spk.id), Some(T0));
    assert_eq!(prekey_created_ms(PreKeyKind::KemLastResort, old_lr.id), Some(T0));
    assert!(
        bob.machine
            .refill_prekeys(&full, T0 + PREKEY_ROTATION_MS - 1)
            .unwrap()
            .is_none()
    );

    // A week on: both are replaced.
    let rotated = T0 + PREKEY_ROTATION_MS;
    let (changes, upload) = bob.machine.refill_prekeys(&full, rotated).unwrap().unwrap();
    let spk = upload.signed_prekey.clone().unwrap();
    let lr = upload.last_resort_kem_prekey.clone().unwrap();
    assert_eq!(prekey_created_ms(PreKeyKind::Signed, spk.id), Some(rotated));
    assert_eq!(prekey_created_ms(PreKeyKind::KemLastResort, lr.id), Some(rotated));
    assert!(upload.one_time_prekeys.is_empty() && changes.prekeys_removed.is_empty());
    bob.commit(changes).await;
    // Until the relay confirms the upload, every refill sends them again.
    let (_, again) = bob.machine.refill_prekeys(&full, rotated + 1).unwrap().unwrap();
    assert_eq!(
        (again.signed_prekey.clone(), again.last_resort_kem_prekey.clone()),
        (Some(spk.clone()), Some(lr))
    );
    // An upload without the current keys (say one made before a later rotation) does not
    // clear the flag; the one that carried them does.
    assert!(bob.machine.prekeys_sent(&PreKeyUpload::default()).is_none());
    let sent = bob.machine.prekeys_sent(&again).unwrap();
    bob.commit(sent).await;
    assert!(bob.machine.prekeys_sent(&again).is_none());
    assert!(bob.machine.refill_prekeys(&full, rotated + 1).unwrap().is_none());

    // A sender fetched the old bundle just before the rotation and sent its first
    // message, which waits in bob's mailbox.
    bob.upload.signed_prekey = Some(old_spk.clone());
    bob.upload.one_time_prekeys.clear();
    bob.upload.kem_prekeys.clear();
    bob.upload.last_resort_kem_prekey = Some(old_lr.clone());
    let bundle = bob.bundle();
    let c = alice.machine.add_contact(bob.id(), None).unwrap();
    alice.commit(c).await;
    let list = bob.machine.own_device_list().unwrap().signed().as_bytes().to_vec();
    let (c, _) = alice.machine.receive_device_list(&bob.id(), &list).unwrap();
    alice.commit(c).await;
    let c = alice
        .machine
        .receive_bundles(&bob.id(), &[bundle], rotated - 1)
        .unwrap();
    assert_eq!(c.sessions.len(), 1);
    alice.commit(c).await;
    let c = alice.machine.queue_text(bob.id(), "sent to the old keys", T0).unwrap();
    alice.commit(c.0).await;
    send(&mut alice, &mut [&mut bob]).await;

    // Bob keeps rotating every week; until the grace period ends nothing is deleted...
    let end = rotated + PREKEY_GRACE_MS;
    let mut at = rotated + PREKEY_ROTATION_MS;
    while at < end {
        let (changes, upload) = bob.machine.refill_prekeys(&full, at).unwrap().unwrap();
        assert!(changes.prekeys_removed.is_empty(), "removed within the grace period");
        bob.commit(changes).await;
        let sent = bob.machine.prekeys_sent(&upload).unwrap();
        bob.commit(sent).await;
        at += PREKEY_ROTATION_MS;
    }
    if let Some((changes, _)) = bob.machine.refill_prekeys(&full, end - 1).unwrap() {
        assert!(changes.prekeys_removed.is_empty(), "removed within the grace period");
    }
    // ...so the first message still opens at its very end.
    bob.events.clear();
    deliver(&mut bob, &[&alice]).await;
    assert!(
        bob.events
            .iter()
            .any(|e| matches!(e, Event::MessageReceived(m) if m.text == "sent to the old keys")),
        "{:?}",
        bob.events
    );

    // Then the keys it replaced go, and only those; the current ones stay.
    let current_spk = bob.machine.prekey_public_upload().unwrap().signed_prekey.unwrap();
    let (changes, upload) = bob.machine.refill_prekeys(&full, end).unwrap().unwrap();
    let mut removed = changes.prekeys_removed.clone();
    removed.sort_unstable();
    assert_eq!(
        removed,
        [
            (PreKeyKind::Signed as u8, old_spk.id),
            (PreKeyKind::KemLastResort as u8, old_lr.id)
        ]
    );
    assert!(!removed.contains(&(PreKeyKind::Signed as u8, current_spk.id)));
    assert!(upload.signed_prekey.is_none(), "no rotation was due");
}

/// A session whose first messages were never answered names the responder's prekeys of
/// its day in every message; once those may have been deleted (the responder keeps them
/// 65 days after they were made) the sender starts a new session from a fresh bundle,
/// and everything still opens.
#[tokio::test]
async fn an_unanswered_session_is_replaced_once_its_prekeys_are_old() {
    let mut alice = Peer::new(65).await;
    let mut bob = Peer::new(66).await;
    let c = alice.machine.add_contact(bob.id(), None).unwrap();
    alice.commit(c).await;
    for text in ["one", "two"] {
        let (c, _) = alice.machine.queue_text(bob.id(), text, alice.now).unwrap();
        alice.commit(c).await;
        send(&mut alice, &mut [&mut bob]).await;
        alice.now = T0 + PENDING_SESSION_MAX_AGE_MS;
    }
    // One hour later the pending session is too old: a bundle is needed.
    alice.now += 3_600_000;
    let (c, _) = alice.machine.queue_text(bob.id(), "three", alice.now).unwrap();
    alice.commit(c).await;
    let item = alice.store.outbox(1).await.unwrap().remove(0);
    match alice.machine.prepare_send(&item, &[], alice.now).unwrap() {
        SendPlan::Need(needs) => assert!(
            needs
                .iter()
                .any(|n| matches!(n, Need::Bundles(a, d) if *a == bob.id() && d == &[DeviceId(1)])),
            "{needs:?}"
        ),
        SendPlan::Ready { .. } => panic!("sent over a session whose prekeys may be gone"),
    }
    // Bob, offline all along, comes back and rotates; Alice uses his new bundle.
    bob.now = alice.now;
    let full = PreKeyCounts {
        one_time: 100,
        kem_one_time: 20,
        has_signed_prekey: true,
        has_last_resort: true,
    };
    let (changes, upload) = bob.machine.refill_prekeys(&full, bob.now).unwrap().unwrap();
    bob.commit(changes).await;
    bob.upload = upload;
    send(&mut alice, &mut [&mut bob]).await;
    bob.events.clear();
    deliver(&mut bob, &[&alice]).await;
    let texts: Vec<&str> = bob
        .events
        .iter()
        .filter_map(|e| match e {
            Event::MessageReceived(m) => Some(m.text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["one", "two", "three"], "{:?}", bob.events);
}

/// Finding 14, sender side: a bundle whose signed prekey or last-resort ML-KEM prekey is
/// older than the bound (or made ahead of the sender's clock) starts no session.
#[tokio::test]
async fn bundles_with_stale_keys_are_refused() {
    let mut alice = Peer::new(62).await;
    let mut bob = Peer::new(63).await;
    let list = bob.machine.own_device_list().unwrap().signed().as_bytes().to_vec();
    let (c, _) = alice.machine.receive_device_list(&bob.id(), &list).unwrap();
    alice.commit(c).await;
    let with_one_time = bob.bundle();
    bob.upload.kem_prekeys.clear();
    let with_last_resort = bob.bundle();
    assert_eq!(with_last_resort.kem_prekey.kind, PreKeyKind::KemLastResort);
    let stale = T0 + MAX_PREKEY_AGE_MS + 1;
    for b in [&with_one_time, &with_last_resort] {
        assert!(bundle_is_fresh(b, T0 + MAX_PREKEY_AGE_MS));
        assert!(bundle_is_fresh(b, T0 - MAX_PREKEY_AHEAD_MS));
        assert!(!bundle_is_fresh(b, stale));
        assert!(!bundle_is_fresh(b, T0 - MAX_PREKEY_AHEAD_MS - 1));
        let c = alice
            .machine
            .receive_bundles(&bob.id(), std::slice::from_ref(b), stale)
            .unwrap();
        assert!(c.sessions.is_empty(), "a stale bundle started a session");
    }
    // A stale last-resort key alone is enough to refuse: a properly signed bundle whose
    // signed prekey was made ten days after T0 and whose last-resort key was made at T0.
    let mut rng = ChaCha20Rng::seed_from_u64(64);
    let hour = |ms: u64| u32::try_from(ms / 3_600_000).unwrap();
    let mut lr_only = with_last_resort.clone();
    lr_only.signed_prekey = bob
        .machine
        .device()
        .generate_signed_prekey(hour(T0 + 10 * DAY), &mut rng)
        .public()
        .clone();
    let at = T0 + MAX_PREKEY_AGE_MS + DAY;
    assert!(!bundle_is_fresh(&lr_only, at));
    let c = alice
        .machine
        .receive_bundles(&bob.id(), std::slice::from_ref(&lr_only), at)
        .unwrap();
    assert!(c.sessions.is_empty(), "a stale last-resort key started a session");
    // The same bundle while both keys are fresh does start one.
    let c = alice
        .machine
        .receive_bundles(&bob.id(), &[lr_only], T0 + 10 * DAY)
        .unwrap();
    assert_eq!(c.sessions.len(), 1);
}

#[tokio::test]
async fn a_relay_numbering_again_from_one_loses_nothing() {
    let mut alice = Peer::new(20).await;
    let mut bob = Peer::new(21).await;
    for i in 0..4 {
        let (c, _) = alice.machine.queue_text(bob.id(), &format!("m{i}"), 10 + i).unwrap();
        alice.commit(c).await;
        send(&mut alice, &mut [&mut bob]).await;
    }
    let envs = std::mem::take(&mut bob.inbox);
    deliver_one(&mut bob, &[&alice], 1, &envs[0]).await;
    deliver_one(&mut bob, &[&alice], 2, &envs[1]).await;
    // The relay's mailbox was restored: the next envelopes come as seq 1 and 2 again.
    deliver_one(&mut bob, &[&alice], 1, &envs[2]).await;
    deliver_one(&mut bob, &[&alice], 2, &envs[3]).await;
    // And a redelivery of one already processed is still skipped.
    deliver_one(&mut bob, &[&alice], 2, &envs[1]).await;
    assert_eq!(texts(&bob.events), ["m0", "m1", "m2", "m3"]);
    // After a restart too (the digests are in the store).
    let mut again = Machine::load(
        snapshot(&bob.store).await,
        PickleKey::new([21; 32]),
        ChaCha20Rng::seed_from_u64(5),
        ChaCha20Rng::seed_from_u64(6),
    )
    .unwrap();
    let Inbound::Done { changes, events } = again.receive_envelope(1, &envs[0], false) else {
        panic!()
    };
    assert!(changes.is_empty() && events.is_empty());
    // A new mailbox epoch resets the seq; the same epoch again changes nothing.
    let c = again.receive_mailbox_epoch([9; 16]);
    let committed = bob.store.commit(c.clone()).await.unwrap();
    again.apply(&c, &committed);
    assert_eq!(again.last_seq(), 0);
    assert!(again.receive_mailbox_epoch([9; 16]).is_empty());
}

#[tokio::test]
async fn a_replayed_pre_key_message_does_not_promote_its_session() {
    let mut alice = Peer::new(22).await;
    let mut bob = Peer::new(23).await;
    let mut carol = Peer::new(24).await;
    // Bob's bundle without one-time keys: the pre-key message uses none, so a replay of
    // it still finds every prekey it names.
    bob.upload.one_time_prekeys.clear();
    bob.upload.kem_prekeys.clear();
    let (c, _) = alice.machine.queue_text(bob.id(), "first", 1).unwrap();
    alice.commit(c).await;
    send(&mut alice, &mut [&mut bob]).await;
    let first = bob.inbox[0].clone();
    deliver(&mut bob, &[&alice]).await;
    assert_eq!(texts(&bob.events), ["first"]);
    // A session with Carol gives Bob a pickle unrelated to Alice's messages.
    let (c, _) = carol.machine.queue_text(bob.id(), "hi", 1).unwrap();
    carol.commit(c).await;
    send(&mut carol, &mut [&mut bob]).await;
    deliver(&mut bob, &[&carol]).await;
    let carol_peer = (carol.id(), DeviceId(1));
    let alice_peer = (alice.id(), DeviceId(1));
    let sessions = bob.store.load_sessions().await.unwrap();
    let carol_pickle = sessions
        .iter()
        .find(|(p, _)| *p == carol_peer)
        .unwrap()
        .1
        .value
        .sessions[0]
        .clone();
    // Eleven newer sessions with Alice's device evicted the first one.
    let current = sessions.iter().find(|(p, _)| *p == alice_peer).unwrap().1.version;
    let evicted = SessionSet {
        sessions: vec![carol_pickle; MAX_SESSIONS_PER_DEVICE],
    };
    bob.commit(Changes {
        sessions: vec![(
            alice_peer,
            Write {
                expected: Some(current),
                value: evicted.clone(),
            },
        )],
        ..Changes::default()
    })
    .await;
    // The same pre-key message again, in an envelope Bob has not seen (its digest left
    // the bounded set; here: sealed again).
    let replay = reseal(&alice, &bob, &first);
    let n = bob.events.len();
    let Inbound::Done { changes, events } = bob.machine.receive_envelope(50, &replay, false) else {
        panic!()
    };
    assert!(texts(&events).is_empty());
    assert!(
        changes.sessions.is_empty(),
        "a duplicate wrote {} session rows",
        changes.sessions.len()
    );
    bob.commit(changes).await;
    assert_eq!(bob.events.len(), n);
    let after = bob.store.load_sessions().await.unwrap();
    assert_eq!(after.iter().find(|(p, _)| *p == alice_peer).unwrap().1.value, evicted);
}

#[tokio::test]
async fn dedup_and_receipts_are_scoped_to_conversation_and_sender() {
    let mut alice = Peer::new(25).await;
    let mut bob = Peer::new(26).await;
    let mut mallory = Peer::new(27).await;
    // Alice writes to Bob and to Mallory.
    let (c, to_bob) = alice.machine.queue_text(bob.id(), "to bob", 1).unwrap();
    alice.commit(c).await;
    send(&mut alice, &mut [&mut bob]).await;
    // Mallory, who received nothing with that id, sends a receipt naming it, and a text
    // reusing it.
    let (c, _) = mallory.machine.queue_text(alice.id(), "hello", 2).unwrap();
    mallory.commit(c).await;
    let c = mallory.machine.queue_receipt(alice.id(), None, &[to_bob.id], 3);
    mallory.commit(c).await;
    send(&mut mallory, &mut [&mut alice]).await;
    send(&mut mallory, &mut [&mut alice]).await;
    deliver(&mut alice, &[&mallory]).await;
    let h = alice.store.messages(bob.id(), Page::default()).await.unwrap();
    assert_eq!(
        h[0].status,
        MessageStatus::Sent,
        "Mallory's receipt moved a message to Bob"
    );
    // Bob's own receipt moves it.
    deliver(&mut bob, &[&alice]).await;
    let c = bob.machine.queue_receipt(alice.id(), None, &[to_bob.id], 4);
    bob.commit(c).await;
    send(&mut bob, &mut [&mut alice]).await;
    deliver(&mut alice, &[&bob]).await;
    let h = alice.store.messages(bob.id(), Page::default()).await.unwrap();
    assert_eq!(h[0].status, MessageStatus::Delivered);

    // Mallory races a text with the id of Bob's next message to Alice: both arrive.
    let (c, from_bob) = bob.machine.queue_text(alice.id(), "from bob", 5).unwrap();
    bob.commit(c).await;
    let fake = Content {
        message_id: from_bob.id,
        timestamp_ms: 5,
        access_key: None,
        kind: ContentKind::Text { text: "fake".into() },
    };
    let c = Changes {
        outbox_add: vec![OutboxItem::new(from_bob.id, alice.id(), fake.encode())],
        ..Changes::default()
    };
    mallory.commit(c).await;
    send(&mut mallory, &mut [&mut alice]).await;
    send(&mut bob, &mut [&mut alice]).await;
    deliver(&mut alice, &[&mallory, &bob]).await;
    let got = texts(&alice.events);
    assert!(
        got.contains(&"fake".to_string()) && got.contains(&"from bob".to_string()),
        "{got:?}"
    );
}

#[tokio::test]
async fn two_processes_never_move_a_pin_backwards_nor_accept_a_removed_device() {
    let mut alice = Peer::new(28).await;
    let mut bob = Peer::new(29).await;
    // Alice's account gets a second device (v2), then removes it again (v3).
    let mut rng = ChaCha20Rng::seed_from_u64(77);
    let second = sotto_crypto::Device::generate(alice.id(), DeviceId(2), &mut rng);
    let v2 = alice
        .machine
        .next_own_list(Some(second.entry()), false, None, 5)
        .unwrap();
    let (c, _) = alice
        .machine
        .receive_device_list(&alice.id(), v2.signed().as_bytes())
        .unwrap();
    alice.commit(c).await;
    let v3 = alice.machine.next_own_list(None, false, Some(DeviceId(2)), 6).unwrap();
    // Bob's app and its extension share one store; both pinned v2.
    let (c, _) = bob
        .machine
        .receive_device_list(&alice.id(), v2.signed().as_bytes())
        .unwrap();
    bob.commit(c).await;
    let mut other = Machine::load(
        snapshot(&bob.store).await,
        PickleKey::new([29; 32]),
        ChaCha20Rng::seed_from_u64(7),
        ChaCha20Rng::seed_from_u64(8),
    )
    .unwrap();
    // The app pins v3 (the second device removed).
    let (c, _) = bob
        .machine
        .receive_device_list(&alice.id(), v3.signed().as_bytes())
        .unwrap();
    bob.commit(c).await;
    // The extension, on its cached v2, accepts a message from the removed device: its
    // commit is refused, because the pin it relied on moved.
    let env = from_device(&second, &mut bob, "from the removed device");
    let Inbound::Done { changes, events } = other.receive_envelope(1, &env, false) else {
        panic!()
    };
    assert_eq!(texts(&events), ["from the removed device"]);
    assert!(matches!(
        bob.store.commit(changes).await,
        Err(crate::store::StoreError::Conflict)
    ));
    // Reloaded, it sees v3 and refuses the device.
    other = Machine::load(
        snapshot(&bob.store).await,
        PickleKey::new([29; 32]),
        ChaCha20Rng::seed_from_u64(9),
        ChaCha20Rng::seed_from_u64(10),
    )
    .unwrap();
    let Inbound::Need(Need::DeviceList(_)) = other.receive_envelope(1, &env, false) else {
        panic!()
    };
    let Inbound::Done { events, .. } = other.receive_envelope(1, &env, true) else {
        panic!()
    };
    assert_eq!(causes(&events), [UndecryptableCause::SenderNotListed]);
    // And the extension can never write v2 over v3.
    let stale = Changes {
        device_lists: vec![(alice.id(), v2.signed().as_bytes().to_vec())],
        ..Changes::default()
    };
    assert!(matches!(
        bob.store.commit(stale).await,
        Err(crate::store::StoreError::Conflict)
    ));
}

/// A text from a device that has no machine (only its keys): a new session from `to`'s
/// bundle, sealed to it.
fn from_device(device: &sotto_crypto::Device, to: &mut Peer, text: &str) -> Vec<u8> {
    let mut rng = ChaCha20Rng::seed_from_u64(31);
    let list = to.machine.own_device_list().unwrap().clone();
    let bundle = to.bundle();
    let mut session = sotto_crypto::initiate(device, &list, &bundle, &mut rng).unwrap();
    let content = Content {
        message_id: MessageId::new(7, &mut rng),
        timestamp_ms: 7,
        access_key: None,
        kind: ContentKind::Text { text: text.into() },
    };
    let out = session.encrypt(&content.encode(), &mut rng).unwrap();
    sotto_crypto::seal(
        device,
        &to.machine.device().identity(),
        out.message_type as u8,
        &out.bytes,
        &mut rng,
    )
    .unwrap()
}

#[test]
fn debug_output_leaves_plaintext_out() {
    let m = StoredMessage {
        order: 4,
        ..StoredMessage::text(
            MessageId([1; 16]),
            AccountId([2; 32]),
            (AccountId([2; 32]), DeviceId(1)),
            3,
            "secret words".into(),
            MessageStatus::Received,
        )
    };
    let item = OutboxItem::new(MessageId([1; 16]), AccountId([2; 32]), b"secret words".to_vec());
    let changes = Changes {
        messages: vec![m.clone()],
        outbox_add: vec![item.clone()],
        ..Changes::default()
    };
    assert_eq!(
        format!("{m:?}"),
        "StoredMessage { id: MessageId(01010101-0101-0101-0101-010101010101), status: Received, order: 4, text_len: 12, .. }"
    );
    assert_eq!(
        format!("{item:?}"),
        "OutboxItem { id: MessageId(01010101-0101-0101-0101-010101010101), content_len: 12, .. }"
    );
    assert_eq!(
        format!("{changes:?}"),
        "Changes { account: false, sessions: 0, prekeys_added: 0, prekeys_removed: 0, device_lists: 0, \
         conversations: 0, conversations_removed: 0, messages: 1, message_updates: 0, messages_removed: 0, outbox_add: 1, outbox_remove: 0, pins: 0, envelopes: 0, pending_add: 0, pending_remove: 0, outbox_update: 0, groups: 0, sender_keys: 0, blob_tokens: false, .. }"
    );
    let event = Event::MessageReceived(m);
    let inbound = Inbound::Done {
        changes,
        events: vec![event.clone()],
    };
    for s in [format!("{event:?}"), format!("{inbound:?}")] {
        assert!(!s.contains("secret") && !s.contains("115, 101, 99"), "{s}");
    }
}

#[tokio::test]
async fn pending_envelopes_keep_their_senders_order_and_the_table_is_bounded() {
    let mut alice = Peer::new(32).await;
    let mut bob = Peer::new(33).await;
    for i in 0..2 {
        let (c, _) = alice.machine.queue_text(bob.id(), &format!("p{i}"), 10 + i).unwrap();
        alice.commit(c).await;
        send(&mut alice, &mut [&mut bob]).await;
    }
    let envs = std::mem::take(&mut bob.inbox);
    // The first needs Alice's list, which cannot be fetched now: put aside.
    let Inbound::Need(Need::DeviceList(a)) = bob.machine.receive_envelope(1, &envs[0], false) else {
        panic!()
    };
    let c = bob.machine.defer(1, &envs[0], a, 1000).unwrap();
    bob.commit(c).await;
    // The second goes behind it, whatever the list.
    let alice_list = alice.machine.own_device_list().unwrap().signed().as_bytes().to_vec();
    let (c, _) = bob.machine.receive_device_list(&alice.id(), &alice_list).unwrap();
    bob.commit(c).await;
    let Inbound::Defer { sender } = bob.machine.receive_envelope(2, &envs[1], false) else {
        panic!()
    };
    let c = bob.machine.defer(2, &envs[1], sender, 1001).unwrap();
    bob.commit(c).await;
    // A redelivery is skipped (it is recorded as processed).
    let Inbound::Done { changes, .. } = bob.machine.receive_envelope(1, &envs[0], false) else {
        panic!()
    };
    assert!(changes.is_empty());
    // Retried in order, each leaves the table.
    for p in bob.store.pending_inbound().await.unwrap() {
        let Inbound::Done { changes, events } = bob.machine.receive_pending(&p, false) else {
            panic!()
        };
        bob.commit(changes).await;
        bob.events.extend(events);
    }
    assert_eq!(texts(&bob.events), ["p0", "p1"]);
    assert!(bob.store.pending_inbound().await.unwrap().is_empty());
    assert_eq!(bob.machine.pending_len(), 0);
    // Expiry gives a verdict; a full table refuses.
    let c = bob.machine.defer(3, b"x", alice.id(), 5).unwrap();
    bob.commit(c).await;
    let p = bob.store.pending_inbound().await.unwrap().remove(0);
    let (c, event) = bob.machine.expire_pending(&p);
    bob.commit(c).await;
    assert!(matches!(
        event,
        Event::Undecryptable {
            cause: UndecryptableCause::DeviceListUnavailable,
            ..
        }
    ));
    for i in 0..crate::store::MAX_PENDING_INBOUND {
        let c = bob.machine.defer(10, &i.to_le_bytes(), alice.id(), 5).unwrap();
        bob.commit(c).await;
    }
    assert!(bob.machine.defer(10, b"one more", alice.id(), 5).is_none());
}

#[test]
fn failures_back_off_and_end_after_the_bound_without_counting_offline_time() {
    use super::{RetryPolicy, record_failure};
    use crate::store::OutboxItem;
    let policy = RetryPolicy {
        give_up_after_ms: 10_000,
        backoff_min_ms: 1_000,
        backoff_max_ms: 4_000,
    };
    let item = OutboxItem::new(MessageId([1; 16]), AccountId([2; 32]), vec![1]);
    // First failure at t = 100 s: no time counted yet, a backoff of 0.5–1 s.
    let a = record_failure(&item, 100_000, 0, &policy, 7).unwrap();
    assert_eq!((a.attempts, a.failing_ms, a.last_failure_ms), (1, 0, 100_000));
    assert!((100_500..=101_000).contains(&a.not_before_ms));
    // Second at 101 s: 1 s counted, backoff doubled.
    let b = record_failure(&a, 101_000, 0, &policy, 0).unwrap();
    assert_eq!((b.attempts, b.failing_ms), (2, 1_000));
    assert_eq!(b.not_before_ms, 102_000);
    // Offline from 101 s to 1 h later: only the time since the reconnect counts.
    let c = record_failure(&b, 3_600_000, 3_599_000, &policy, 0).unwrap();
    assert_eq!(c.failing_ms, 2_000);
    // The backoff stops growing at the maximum.
    let d = record_failure(&c, 3_601_000, 3_599_000, &policy, u64::MAX).unwrap();
    assert!(d.not_before_ms - 3_601_000 <= 4_000);
    // Past the bound: give up.
    assert!(record_failure(&d, 3_609_000, 3_599_000, &policy, 0).is_none());
}

/// Finding 8: the link request's payload (its MAC under the link secret) and the
/// answer's payload (the account key sealed under the link secret) never show in Debug.
#[test]
fn link_payloads_are_not_in_debug() {
    let mut rng = ChaCha20Rng::seed_from_u64(81);
    let d = sotto_crypto::Device::generate(AccountId([3; 32]), DeviceId(2), &mut rng);
    let secret = [0xab_u8; 64].to_vec();
    for inbound in [
        Inbound::LinkRequest {
            changes: Changes::default(),
            sender: d.identity(),
            payload: secret.clone(),
        },
        Inbound::LinkAccept {
            changes: Changes::default(),
            sender: d.identity(),
            payload: secret.clone(),
        },
    ] {
        let shown = format!("{inbound:?}");
        assert!(!shown.contains("171"), "{shown}");
        assert!(!shown.to_lowercase().contains("ab, ab"), "{shown}");
        assert!(!shown.contains("payload"), "{shown}");
    }
}

async fn load_machine(store: &MemoryStore, seed: u64) -> Machine {
    Machine::load(
        snapshot(store).await,
        PickleKey::new([9; 32]),
        ChaCha20Rng::seed_from_u64(seed),     // test only
        ChaCha20Rng::seed_from_u64(seed + 1), // test only
    )
    .unwrap()
}

/// Finding 12: a device without the list key loads, but cannot sign a device list; one
/// given the list key (linking) can, except to remove another holder; a list under the
/// next epoch's key (the recovery key) removes a holder, whose key then signs nothing.
#[tokio::test]
async fn a_device_without_the_list_key_cannot_sign_lists() {
    let mut rng = ChaCha20Rng::seed_from_u64(82); // test only
    let pk = PickleKey::new([9; 32]);
    let ak = AccountKey::generate(&mut rng);
    let lk1 = ak.list_key(1).unwrap();
    let first = sotto_crypto::Device::generate(ak.account_id(), DeviceId(1), &mut rng);
    let second = sotto_crypto::Device::generate(ak.account_id(), DeviceId(2), &mut rng);
    let third = sotto_crypto::Device::generate(ak.account_id(), DeviceId(3), &mut rng);
    let second_entry = second.entry();
    let third_entry = third.entry();
    let entries = vec![first.entry(), second_entry, third_entry];
    // Device 2 is listed without the list key.
    let list = lk1.sign_device_list(2, 1, entries.clone(), &[DeviceId(1)]).unwrap();
    let new = Machine::new_linked_device(second, list.clone(), "http://relay", T0, &mut rng, &pk).unwrap();
    let record = &new.changes.account.as_ref().unwrap().value;
    assert_eq!((&record.account_key, &record.list_key), (&None, &None));
    let store = MemoryStore::new();
    store.commit(new.changes).await.unwrap();
    let mut m = load_machine(&store, 1).await;
    assert!(!m.has_account_key() && !m.can_manage_devices());
    assert!(matches!(
        m.next_own_list(None, false, Some(DeviceId(3)), 5),
        Err(MachineError::NoListKey)
    ));
    // A list-key seed is kept only when the pinned list marks this device.
    assert!(matches!(
        m.set_list_key_seed(&lk1.dangerous_export_seed()),
        Err(MachineError::NoListKey)
    ));
    let marked = lk1
        .sign_device_list(3, 1, entries.clone(), &[DeviceId(1), DeviceId(2)])
        .unwrap();
    let (c, _) = m
        .receive_device_list(&ak.account_id(), marked.signed().as_bytes())
        .unwrap();
    let committed = store.commit(c.clone()).await.unwrap();
    m.apply(&c, &committed);
    let other = AccountKey::generate(&mut rng).list_key(1).unwrap();
    assert!(m.set_list_key_seed(&other.dangerous_export_seed()).is_err());
    let c = m.set_list_key_seed(&lk1.dangerous_export_seed()).unwrap();
    let committed = store.commit(c.clone()).await.unwrap();
    m.apply(&c, &committed);
    // It survives a reload, removes device 3, and cannot remove device 1 (a holder).
    let mut m = load_machine(&store, 3).await;
    assert!(m.can_manage_devices() && !m.has_account_key());
    let next = m.next_own_list(None, false, Some(DeviceId(3)), 5).unwrap();
    assert_eq!((next.version(), next.holders()), (4, &[DeviceId(1), DeviceId(2)][..]));
    assert!(matches!(
        m.next_own_list(None, false, Some(DeviceId(1)), 5),
        Err(MachineError::NeedsRecoveryKey(DeviceId(1)))
    ));
    // Device 1 uses the recovery key to remove device 2: the epoch-2 list.
    let (c, _) = m
        .receive_device_list(&ak.account_id(), next.signed().as_bytes())
        .unwrap();
    let committed = store.commit(c.clone()).await.unwrap();
    m.apply(&c, &committed);
    assert!(matches!(
        m.rotated_list(&AccountKey::generate(&mut rng), Some(DeviceId(1)), None, 6),
        Err(MachineError::NoAccountKey)
    ));
    let (rotated, lk2) = m.rotated_list(&ak, Some(DeviceId(1)), None, 6).unwrap();
    assert_eq!((rotated.epoch(), rotated.holders()), (2, &[DeviceId(2)][..]));
    assert_eq!(lk2.epoch(), 2);
    // Device 2 pins it: its epoch-1 key no longer counts.
    let (c, change) = m
        .receive_device_list(&ak.account_id(), rotated.signed().as_bytes())
        .unwrap();
    assert_eq!(change.unwrap().removed, vec![DeviceId(1)]);
    let committed = store.commit(c.clone()).await.unwrap();
    m.apply(&c, &committed);
    assert!(!m.can_manage_devices());
    // A list device 1 signs with the epoch-1 key is refused.
    let back = lk1
        .sign_device_list(9, 1, entries, &[DeviceId(1), DeviceId(2)])
        .unwrap();
    assert!(matches!(
        m.receive_device_list(&ak.account_id(), back.signed().as_bytes()),
        Err(DeviceListError::StaleListKey { pinned: 2, got: 1 })
    ));

    // A holder being revoked pushed the relay's list 3000 versions past this device's pin
    // (3 steps of 1024 at an honest relay), with a device of its own. The next epoch
    // goes past that version, keeps the pinned devices, and every pin accepts it.
    let rogue = sotto_crypto::Device::generate(ak.account_id(), DeviceId(7), &mut rng);
    let pushed = lk2
        .sign_device_list(5 + 3000, 1, vec![second_entry, rogue.entry()], &[DeviceId(2)])
        .unwrap();
    assert!(matches!(
        m.receive_device_list(&ak.account_id(), pushed.signed().as_bytes()),
        Err(DeviceListError::VersionJump { .. })
    ));
    let (next, _) = m.rotated_list(&ak, None, Some(&pushed), 7).unwrap();
    assert_eq!((next.epoch(), next.version()), (3, 5 + 3001));
    assert!(next.device(DeviceId(7)).is_none());
    assert!(rotated.check_update(&next).is_ok() && pushed.check_update(&next).is_ok());

    // A list that removed this device (device 3 alone, epoch 3): with the recovery key
    // it lists itself again, as the holder.
    let without_me = ak
        .list_key(3)
        .unwrap()
        .sign_device_list(5 + 3002, 1, vec![third_entry], &[DeviceId(3)])
        .unwrap();
    let (c, _) = m
        .receive_device_list(&ak.account_id(), without_me.signed().as_bytes())
        .unwrap();
    let committed = store.commit(c.clone()).await.unwrap();
    m.apply(&c, &committed);
    assert!(!m.is_listed());
    let (back, _) = m.rotated_list(&ak, None, Some(&without_me), 8).unwrap();
    assert_eq!(back.holders(), &[DeviceId(2)]);
    assert!(back.device(DeviceId(2)).is_some() && back.device(DeviceId(3)).is_some());
}

/// Finding 15: the access key goes only to accounts this one accepted. A first message
/// from a stranger is a message request; the receipt for it carries no key; accepting
/// (or writing back) shares the key, and each side stores the key the other sent.
#[tokio::test]
async fn access_keys_go_only_to_accepted_accounts() {
    use crate::content::{Content, ContentKind};
    let mut alice = Peer::new(151).await;
    let mut bob = Peer::new(152).await;
    let alice_key = alice.machine.own_access_key().unwrap();
    let bob_key = bob.machine.own_access_key().unwrap();
    assert_ne!(alice_key, bob_key);
    // Alice writes to Bob: her text carries her key.
    let (c, _) = alice.machine.queue_text(bob.id(), "hi", T0).unwrap();
    alice.commit(c).await;
    let item = alice.store.outbox(1).await.unwrap().remove(0);
    assert_eq!(
        Content::decode(&item.content).unwrap().access_key,
        Some(alice_key.clone())
    );
    send(&mut alice, &mut [&mut bob]).await;
    deliver(&mut bob, &[&alice]).await;
    // At Bob, Alice is a request whose key he holds; his receipt does not carry his key.
    assert_eq!(
        bob.machine.message_requests().copied().collect::<Vec<_>>(),
        vec![alice.id()]
    );
    assert_eq!(bob.machine.access_key_for(&alice.id()), Some(alice_key));
    let ids: Vec<_> = bob
        .events
        .iter()
        .filter_map(|e| match e {
            Event::MessageReceived(m) => Some(m.id),
            _ => None,
        })
        .collect();
    let receipt = bob.machine.queue_receipt(alice.id(), None, &ids, T0 + 1);
    let content = Content::decode(&receipt.outbox_add[0].content).unwrap();
    assert!(matches!(content.kind, ContentKind::Delivered { .. }));
    assert_eq!(content.access_key, None);
    // Bob accepts: now his receipts carry his key, and Alice stores it.
    let c = bob.machine.accept_conversation(alice.id());
    bob.commit(c).await;
    assert_eq!(bob.machine.message_requests().count(), 0);
    let receipt = bob.machine.queue_receipt(alice.id(), None, &ids, T0 + 2);
    assert_eq!(
        Content::decode(&receipt.outbox_add[0].content).unwrap().access_key,
        Some(bob_key.clone())
    );
    bob.commit(receipt).await;
    send(&mut bob, &mut [&mut alice]).await;
    deliver(&mut alice, &[&bob]).await;
    assert_eq!(alice.machine.access_key_for(&bob.id()), Some(bob_key));
    // The records survive a reload from the store.
    let reloaded = Machine::load(
        snapshot(&alice.store).await,
        PickleKey::new([151; 32]),
        ChaCha20Rng::seed_from_u64(1),
        ChaCha20Rng::seed_from_u64(2),
    )
    .unwrap();
    assert_eq!(
        reloaded.access_key_for(&bob.id()),
        alice.machine.access_key_for(&bob.id())
    );
    assert!(reloaded.conversation(&bob.id()).unwrap().accepted);
}

/// On an account made before access keys, every device that holds the account key
/// arrives at the same access key (a random one per device would leave contacts with
/// keys the relay no longer accepts).
#[tokio::test]
async fn devices_of_an_older_account_derive_the_same_access_key() {
    let mut p = Peer::new(160).await;
    let mut record = p.machine.account.value.clone();
    record.access_key = None;
    record.access_sent = None;
    let c = Changes {
        account: Some(crate::store::Write {
            expected: Some(p.machine.account.version),
            value: record,
        }),
        ..Changes::default()
    };
    p.commit(c).await;
    let mut machines = Vec::new();
    for seed in [1u64, 2] {
        machines.push(
            Machine::load(
                snapshot(&p.store).await,
                PickleKey::new([160; 32]),
                ChaCha20Rng::seed_from_u64(seed),
                ChaCha20Rng::seed_from_u64(!seed),
            )
            .unwrap(),
        );
    }
    let (mut one, mut two) = (machines.remove(0), machines.remove(0));
    let (c1, p1) = one.access_upload(true).unwrap();
    let (_, p2) = two.access_upload(true).unwrap();
    assert_eq!(p1.verifier, p2.verifier);
    assert!(c1.account.unwrap().value.access_key.is_some());
}

// ---------------------------------------------------------------------------------------
// Groups.

/// Sends every outbox item of `from` (group-channel items as one sealed body for every
/// device, pairwise items per device), resolving needs from `others`, until the outbox is
/// empty. Returns the group bodies sent.
async fn flush(from: &mut Peer, others: &mut [&mut Peer]) -> Vec<Vec<u8>> {
    let mut bodies = Vec::new();
    for _ in 0..100 {
        let Some(item) = from.store.outbox(1).await.unwrap().pop() else {
            return bodies;
        };
        if from.machine.group_of_conversation(&item.to).is_none() {
            if item.to == from.id() && from.machine.own_device_list().unwrap().devices().len() == 1 {
                // Nobody else to send to: drop it as sent.
                let (c, _) = from.machine.mark_sent(&item);
                from.commit(c).await;
                continue;
            }
            send(from, others).await;
            continue;
        }
        match from.machine.prepare_group_send(&item, from.now).unwrap() {
            GroupPlan::Need(needs) => {
                for need in needs {
                    let Need::DeviceList(a) = need else { panic!("{need:?}") };
                    let o = others.iter().find(|p| p.id() == a).unwrap();
                    let bytes = o.machine.own_device_list().unwrap().signed().as_bytes().to_vec();
                    let (c, _) = from.machine.receive_device_list(&a, &bytes).unwrap();
                    from.commit(c).await;
                }
            }
            GroupPlan::Wait { changes } => {
                // The distributions are queued ahead: move this item behind them.
                from.commit(changes).await;
                from.commit(Changes {
                    outbox_remove: vec![item.id],
                    ..Changes::default()
                })
                .await;
                from.commit(Changes {
                    outbox_add: vec![item.clone()],
                    ..Changes::default()
                })
                .await;
            }
            GroupPlan::Ready {
                changes,
                body,
                recipients,
                ..
            } => {
                from.commit(changes).await;
                let (c, _) = from.machine.mark_sent(&item);
                from.commit(c).await;
                for r in &recipients {
                    if r.account_id == from.id() {
                        continue;
                    }
                    let o = others.iter_mut().find(|p| p.id() == r.account_id).unwrap();
                    o.inbox.push([&r.head[..], &body[..]].concat());
                }
                bodies.push(body);
            }
            GroupPlan::Drop { reason } => panic!("dropped: {reason}"),
        }
    }
    panic!("the outbox did not empty");
}

#[tokio::test]
async fn a_forged_or_replayed_group_message_is_refused() {
    let mut alice = Peer::new(91).await;
    let mut bob = Peer::new(92).await;
    let mut carol = Peer::new(93).await;
    let (c, g) = alice.machine.create_group("g", &[bob.id(), carol.id()], T0).unwrap();
    alice.commit(c).await;
    flush(&mut alice, &mut [&mut bob, &mut carol]).await;
    deliver(&mut bob, &[&alice, &carol]).await;
    deliver(&mut carol, &[&alice, &bob]).await;
    assert_eq!(bob.machine.groups().len(), 1);
    let (c, _) = carol.machine.queue_group_text(g, "from carol", T0).unwrap();
    carol.commit(c).await;
    let bodies = flush(&mut carol, &mut [&mut alice, &mut bob]).await;
    deliver(&mut alice, &[&bob, &carol]).await;
    deliver(&mut bob, &[&alice, &carol]).await;
    assert_eq!(texts(&alice.events), vec!["from carol"]);
    assert_eq!(texts(&bob.events), vec!["from carol"]);
    // Bob, a member, holds the group key and Carol's chain, but not her signing key.
    let gk = bob.machine.groups.get(&g).unwrap().keys[0].1.clone();
    let inner = gk.open(&bodies[0]).unwrap().content;
    let mut forged = inner.clone();
    let n = forged.len();
    forged[n - 64..].copy_from_slice(&[7; 64]);
    let mut rng = ChaCha20Rng::seed_from_u64(5); // test only
    let forged_env = gk.seal(CONTENT_SENDER_KEY, &forged, &mut rng).unwrap();
    // The same message sealed again: new envelope bytes, an old sender-key message.
    let replay_env = gk.seal(CONTENT_SENDER_KEY, &inner, &mut rng).unwrap();
    alice.events.clear();
    deliver_one(&mut alice, &[&bob, &carol], 10, &forged_env).await;
    deliver_one(&mut alice, &[&bob, &carol], 11, &replay_env).await;
    deliver_one(&mut alice, &[&bob, &carol], 12, &bodies[0]).await;
    assert_eq!(
        causes(&alice.events),
        vec![
            UndecryptableCause::SenderKey(sotto_crypto::SenderKeyError::BadSignature),
            UndecryptableCause::Duplicate,
        ]
    );
    assert!(texts(&alice.events).is_empty());
    // A group envelope under a key Alice does not hold.
    let other = sotto_crypto::GroupSealKey::from_bytes(&[3; 32]);
    let stranger = other.seal(CONTENT_SENDER_KEY, &inner, &mut rng).unwrap();
    alice.events.clear();
    deliver_one(&mut alice, &[&bob, &carol], 13, &stranger).await;
    assert_eq!(causes(&alice.events), vec![UndecryptableCause::NoGroupKey]);
}

/// Every group member's outbox sent and every inbox delivered, until nothing moves.
/// Returns every envelope routed (what a relay would have stored).
async fn settle(peers: &mut [Peer]) -> Vec<Vec<u8>> {
    let mut routed = Vec::new();
    for _ in 0..20 {
        let mut moved = false;
        for i in 0..peers.len() {
            let (left, rest) = peers.split_at_mut(i);
            let (me, right) = rest.split_first_mut().unwrap();
            let mut others: Vec<&mut Peer> = left.iter_mut().chain(right.iter_mut()).collect();
            if !me.store.outbox(1).await.unwrap().is_empty() {
                flush(me, &mut others).await;
                moved = true;
            }
        }
        for i in 0..peers.len() {
            routed.extend(peers[i].inbox.iter().cloned());
            if peers[i].inbox.is_empty() {
                continue;
            }
            moved = true;
            let (left, rest) = peers.split_at_mut(i);
            let (me, right) = rest.split_first_mut().unwrap();
            let others: Vec<&Peer> = left.iter().chain(right.iter()).collect();
            deliver(me, &others).await;
        }
        // What the client does on GroupChanged: re-make lost commits, re-key after a leave.
        for p in peers.iter_mut() {
            for g in p.machine.groups().into_iter().map(|g| g.id) {
                let c = p.machine.group_followups(g, p.now).unwrap();
                if !c.is_empty() {
                    p.commit(c).await;
                }
            }
        }
        if !moved {
            return routed;
        }
    }
    panic!("the group did not settle");
}

#[tokio::test]
async fn removed_and_late_members_read_nothing_outside_their_membership() {
    let mut peers = vec![
        Peer::new(94).await,
        Peer::new(95).await,
        Peer::new(96).await,
        Peer::new(97).await,
    ];
    let ids: Vec<AccountId> = peers.iter().map(|p| p.id()).collect();
    let (c, g) = peers[0].machine.create_group("g", &ids[1..3], T0).unwrap();
    peers[0].commit(c).await;
    let mut before = settle(&mut peers).await;
    for (i, text) in [(1usize, "b1"), (2, "c1"), (0, "a1")] {
        let (c, _) = peers[i].machine.queue_group_text(g, text, T0).unwrap();
        peers[i].commit(c).await;
        before.extend(settle(&mut peers).await);
    }
    // Carol (2) is removed, Dave (3) added.
    let c = peers[0].machine.change_group(g, vec![Op::Remove(ids[2])], T0).unwrap();
    peers[0].commit(c).await;
    let mut after = settle(&mut peers).await;
    let c = peers[0]
        .machine
        .change_group(g, vec![Op::Add(ids[3], crate::group::Role::Member)], T0)
        .unwrap();
    peers[0].commit(c).await;
    after.extend(settle(&mut peers).await);
    for (i, text) in [(1usize, "b2"), (3, "d2"), (0, "a2")] {
        let (c, _) = peers[i].machine.queue_group_text(g, text, T0).unwrap();
        peers[i].commit(c).await;
        after.extend(settle(&mut peers).await);
    }
    assert!(!peers[2].machine.group(&g).unwrap().active);
    assert_eq!(texts(&peers[0].events), vec!["b1", "c1", "b2", "d2"]);
    assert_eq!(texts(&peers[1].events), vec!["c1", "a1", "d2", "a2"]);
    assert_eq!(texts(&peers[3].events), vec!["b2", "a2"]);
    assert_eq!(texts(&peers[2].events), vec!["b1", "a1"]);
    // With every envelope ever routed in hand (a relay's whole database), the removed
    // member opens nothing sent after its removal, and the late member nothing before.
    let (mut carol, mut dave) = (peers.remove(2), peers.remove(2));
    let others: Vec<&Peer> = peers.iter().collect();
    for (who, envelopes) in [(&mut carol, &after), (&mut dave, &before)] {
        who.events.clear();
        for (n, env) in envelopes.iter().enumerate() {
            deliver_one(who, &others, 1000 + n as u64, env).await;
        }
        assert!(texts(&who.events).is_empty());
        assert!(
            who.events
                .iter()
                .all(|e| matches!(e, Event::Undecryptable { .. } | Event::GroupChanged { .. })),
            "{:?}",
            who.events
        );
        let group_envelopes = envelopes.iter().filter(|e| sotto_crypto::is_group_envelope(e)).count();
        assert!(group_envelopes >= 3);
    }
}

#[tokio::test]
async fn concurrent_admin_changes_both_apply_and_a_leave_is_rekeyed() {
    let mut peers = vec![
        Peer::new(101).await,
        Peer::new(102).await,
        Peer::new(103).await,
        Peer::new(104).await,
    ];
    let ids: Vec<AccountId> = peers.iter().map(|p| p.id()).collect();
    let (c, g) = peers[0].machine.create_group("g", &ids[1..3], T0).unwrap();
    peers[0].commit(c).await;
    settle(&mut peers).await;
    let c = peers[0]
        .machine
        .change_group(g, vec![Op::SetRole(ids[1], crate::group::Role::Admin)], T0)
        .unwrap();
    peers[0].commit(c).await;
    settle(&mut peers).await;
    // Both admins change the group at once, on the same state.
    let c = peers[0]
        .machine
        .change_group(g, vec![Op::SetTitle("from alice".into())], T0)
        .unwrap();
    peers[0].commit(c).await;
    let c = peers[1]
        .machine
        .change_group(g, vec![Op::Add(ids[3], crate::group::Role::Member)], T0)
        .unwrap();
    peers[1].commit(c).await;
    settle(&mut peers).await;
    let states: Vec<_> = peers.iter().map(|p| p.machine.group(&g).unwrap()).collect();
    for s in &states[..3] {
        assert_eq!(s, &states[0]);
    }
    assert_eq!(states[0].title, "from alice");
    assert!(states[0].members.iter().any(|(a, _)| *a == ids[3]));
    assert_eq!(
        states[3].members, states[0].members,
        "the added member is on the same state"
    );
    // Carol leaves with the current key; the lowest admin re-keys, pairwise.
    let key_before = peers[2].machine.groups.get(&g).unwrap().keys[0].1.clone();
    let c = peers[2].machine.change_group(g, vec![Op::Leave], T0).unwrap();
    peers[2].commit(c).await;
    settle(&mut peers).await;
    assert!(!peers[2].machine.group(&g).unwrap().active);
    let key_after = peers[0].machine.groups.get(&g).unwrap().keys[0].1.clone();
    assert_ne!(key_before, key_after, "re-keyed after the leave");
    for p in [&peers[1], &peers[3]] {
        assert_eq!(p.machine.groups.get(&g).unwrap().keys[0].1, key_after);
    }
    let (c, _) = peers[1].machine.queue_group_text(g, "after carol left", T0).unwrap();
    peers[1].commit(c).await;
    let routed = settle(&mut peers).await;
    assert_eq!(
        texts(&peers[3].events).last().map(String::as_str),
        Some("after carol left")
    );
    assert!(
        routed
            .iter()
            .filter(|e| sotto_crypto::is_group_envelope(e))
            .all(|e| !key_before.matches(e))
    );
}

#[tokio::test]
async fn a_member_cannot_replace_a_group_with_a_forged_welcome() {
    let mut peers = vec![Peer::new(111).await, Peer::new(112).await, Peer::new(113).await];
    let ids: Vec<AccountId> = peers.iter().map(|p| p.id()).collect();
    let (c, g) = peers[0].machine.create_group("real", &ids[1..], T0).unwrap();
    peers[0].commit(c).await;
    settle(&mut peers).await;
    // Carol (a member) writes a newer state of the same group with herself as its only
    // admin and a key of her choice, and sends it to Bob.
    let forged_state = crate::group::GroupState {
        id: g,
        version: 7,
        title: "forged".into(),
        members: [
            (ids[1], crate::group::Role::Member),
            (ids[2], crate::group::Role::Admin),
        ]
        .into_iter()
        .collect(),
    };
    let content = Content {
        message_id: MessageId([9; 16]),
        timestamp_ms: T0,
        access_key: None,
        kind: ContentKind::Group {
            group: g,
            body: crate::content::GroupBody::Welcome {
                root_id: [5; 32],
                root: forged_state,
                commits: Vec::new(),
                seal_key: [6; 32],
                access: Vec::new(),
            },
        },
    };
    peers[2]
        .commit(Changes {
            outbox_add: vec![OutboxItem::new(content.message_id, ids[1], content.encode())],
            ..Changes::default()
        })
        .await;
    settle(&mut peers).await;
    let bob = peers[1].machine.group(&g).unwrap();
    assert_eq!(bob.title, "real");
    assert_eq!(bob.version, 0);
}

// -------------------------------------------------------------------------------------
// Chat items (docs/protocol.md §15).

use crate::content::{ChatItem, Quote};
use crate::store::{MessageKind, MessageUpdate};

async fn chat(from: &mut Peer, to: &mut Peer, item: ChatItem) -> Option<StoredMessage> {
    let conv = Conversation::Direct(to.id());
    let (c, m) = from.machine.queue_chat(conv, item, from.now).unwrap();
    from.commit(c).await;
    while !from.store.outbox(1).await.unwrap().is_empty() {
        send(from, &mut [to]).await;
    }
    deliver(to, &[from]).await;
    m
}

async fn one(p: &Peer, conv: AccountId, id: MessageId) -> StoredMessage {
    p.store
        .messages(conv, Page::default())
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.id == id)
        .unwrap()
}

fn text(t: &str) -> ChatItem {
    ChatItem::Text {
        text: t.into(),
        quote: None,
        expire_s: 0,
    }
}

#[tokio::test]
async fn replies_edits_deletes_and_reactions_fold_and_only_authors_edit_or_delete() {
    let mut alice = Peer::new(201).await;
    let mut bob = Peer::new(202).await;
    let (a, b) = (alice.id(), bob.id());
    let hello = chat(&mut alice, &mut bob, text("hello")).await.unwrap();
    // Bob replies, quoting it, and reacts.
    let reply = chat(
        &mut bob,
        &mut alice,
        ChatItem::Text {
            text: "hi!".into(),
            quote: Some(Quote {
                author: a,
                id: hello.id,
                snippet: "hello".into(),
            }),
            expire_s: 0,
        },
    )
    .await
    .unwrap();
    bob.now += 1;
    chat(
        &mut bob,
        &mut alice,
        ChatItem::Reaction {
            author: a,
            target: hello.id,
            emoji: "👍".into(),
        },
    )
    .await;
    let got = one(&alice, b, reply.id).await;
    assert_eq!(got.quote.as_ref().map(|q| q.id), Some(hello.id));
    let mine = one(&alice, b, hello.id).await;
    assert_eq!(mine.reactions.len(), 1);
    assert_eq!((mine.reactions[0].by, mine.reactions[0].emoji.as_str()), (b, "👍"));
    // Bob's own copy shows his reaction too.
    assert_eq!(one(&bob, a, hello.id).await.reactions.len(), 1);
    // Alice edits her message: both sides show the new text.
    alice.now += 10;
    chat(
        &mut alice,
        &mut bob,
        ChatItem::Edit {
            target: hello.id,
            text: "hello, Bob".into(),
        },
    )
    .await;
    assert_eq!(one(&bob, a, hello.id).await.text, "hello, Bob");
    assert_eq!(one(&alice, b, hello.id).await.text, "hello, Bob");
    assert!(
        bob.events
            .iter()
            .any(|e| matches!(e, Event::MessageEdited { key } if key.id == hello.id))
    );
    // Bob, not the author, cannot edit or delete Alice's message.
    bob.now += 10;
    chat(
        &mut bob,
        &mut alice,
        ChatItem::Edit {
            target: hello.id,
            text: "forged".into(),
        },
    )
    .await;
    chat(&mut bob, &mut alice, ChatItem::Delete { target: hello.id }).await;
    let kept = one(&alice, b, hello.id).await;
    assert_eq!(kept.text, "hello, Bob");
    assert!(!kept.deleted);
    // Alice deletes it for everyone: text and reactions go on both sides.
    alice.now += 10;
    chat(&mut alice, &mut bob, ChatItem::Delete { target: hello.id }).await;
    for (p, conv) in [(&alice, b), (&bob, a)] {
        let gone = one(p, conv, hello.id).await;
        assert!(gone.deleted);
        assert!(gone.text.is_empty() && gone.reactions.is_empty());
    }
}

#[tokio::test]
async fn read_receipts_timers_and_unsupported_content() {
    let mut alice = Peer::new(203).await;
    let mut bob = Peer::new(204).await;
    let (a, b) = (alice.id(), bob.id());
    let first = chat(&mut alice, &mut bob, text("one")).await.unwrap();
    // Bob reads: Alice's message becomes Read, and the marker moves on Bob's side.
    let unread = bob.store.messages(a, Page::default()).await.unwrap();
    let up_to = unread.last().unwrap().order;
    let c = bob
        .machine
        .mark_read(Conversation::Direct(a), up_to, &unread, true, bob.now);
    bob.commit(c).await;
    assert_eq!(bob.machine.settings(&Conversation::Direct(a)).read_up_to, up_to);
    send(&mut bob, &mut [&mut alice]).await;
    deliver(&mut alice, &[&bob]).await;
    assert_eq!(one(&alice, b, first.id).await.status, MessageStatus::Read);
    assert!(
        alice
            .events
            .iter()
            .any(|e| matches!(e, Event::Read { ids, .. } if ids == &[first.id]))
    );
    // Marking read again sends nothing.
    let c = bob
        .machine
        .mark_read(Conversation::Direct(a), up_to, &unread, true, bob.now);
    assert!(c.outbox_add.is_empty());
    // With receipts off, the marker moves and nothing is sent.
    let second = chat(&mut alice, &mut bob, text("two")).await.unwrap();
    let all = bob.store.messages(a, Page::default()).await.unwrap();
    let c = bob.machine.mark_read(
        Conversation::Direct(a),
        all.last().unwrap().order,
        &all[1..],
        false,
        bob.now,
    );
    assert!(c.outbox_add.is_empty());
    bob.commit(c).await;
    assert_eq!(one(&alice, b, second.id).await.status, MessageStatus::Sent);
    // Alice sets a timer: both sides agree on it, and her next text carries it.
    alice.now += 5;
    let timer = chat(&mut alice, &mut bob, ChatItem::Timer { expire_s: 60 })
        .await
        .unwrap();
    assert_eq!(timer.kind, MessageKind::Timer { expire_s: 60 });
    assert_eq!(bob.machine.settings(&Conversation::Direct(a)).expire_s, 60);
    assert_eq!(alice.machine.settings(&Conversation::Direct(b)).expire_s, 60);
    assert_eq!(one(&bob, a, timer.id).await.kind, MessageKind::Timer { expire_s: 60 });
    let secret = chat(&mut alice, &mut bob, text("gone soon")).await.unwrap();
    assert_eq!(secret.expire_s, 60);
    assert_eq!(secret.expires_at_ms, alice.now + 60_000);
    // Bob's copy starts its timer when he reads it.
    let got = one(&bob, a, secret.id).await;
    assert_eq!((got.expire_s, got.expires_at_ms), (60, 0));
    let c = bob.machine.mark_read(
        Conversation::Direct(a),
        got.order,
        std::slice::from_ref(&got),
        true,
        T0 + 7,
    );
    assert!(
        c.message_updates
            .iter()
            .any(|(k, u)| *k == got.key() && *u == MessageUpdate::ExpireAt(T0 + 7 + 60_000))
    );
    // An older timer change arriving late does not win.
    let c = bob
        .machine
        .queue_chat(Conversation::Direct(a), ChatItem::Timer { expire_s: 5 }, T0 - 1);
    let (c, _) = c.unwrap();
    bob.commit(c).await;
    assert_eq!(bob.machine.settings(&Conversation::Direct(a)).expire_s, 60);
    // Content of a kind this version does not know shows as unsupported.
    let mut rng = ChaCha20Rng::seed_from_u64(9); // test only
    let content = Content {
        message_id: MessageId::new(alice.now, &mut rng),
        timestamp_ms: alice.now,
        access_key: None,
        kind: ContentKind::Unsupported { kind: 0x99 },
    };
    let mut raw = content.encode();
    raw.extend_from_slice(b"a newer client's fields");
    alice
        .commit(Changes {
            outbox_add: vec![OutboxItem::new(content.message_id, b, raw)],
            ..Changes::default()
        })
        .await;
    send(&mut alice, &mut [&mut bob]).await;
    deliver(&mut bob, &[&alice]).await;
    assert_eq!(
        one(&bob, a, content.message_id).await.kind,
        MessageKind::Unsupported { kind: 0x99 }
    );
}

#[tokio::test]
async fn a_blocked_contact_is_dropped_and_a_changed_identity_blocks_sends_until_acknowledged() {
    let mut alice = Peer::new(205).await;
    let mut bob = Peer::new(206).await;
    let (a, b) = (alice.id(), bob.id());
    chat(&mut alice, &mut bob, text("hi")).await;
    assert_eq!(bob.machine.message_requests().copied().collect::<Vec<_>>(), vec![a]);
    let c = bob.machine.set_blocked(a, true).unwrap();
    bob.commit(c).await;
    assert!(bob.machine.message_requests().next().is_none());
    bob.events.clear();
    chat(&mut alice, &mut bob, text("are you there?")).await;
    assert!(texts(&bob.events).is_empty());
    assert_eq!(bob.store.messages(a, Page::default()).await.unwrap().len(), 1);
    assert!(matches!(
        bob.machine.queue_chat(Conversation::Direct(a), text("x"), bob.now),
        Err(MachineError::Blocked)
    ));
    let c = bob.machine.set_blocked(a, false).unwrap();
    bob.commit(c).await;
    chat(&mut bob, &mut alice, text("sorry, back")).await;
    // Alice's account adds a device: Bob's safety number with her changes.
    let mut rng = ChaCha20Rng::seed_from_u64(78); // test only
    let second = sotto_crypto::Device::generate(a, DeviceId(2), &mut rng);
    let v2 = alice
        .machine
        .next_own_list(Some(second.entry()), false, None, 5)
        .unwrap();
    let (c, change) = bob.machine.receive_device_list(&a, v2.signed().as_bytes()).unwrap();
    assert_eq!(change.unwrap().added, vec![DeviceId(2)]);
    bob.commit(c).await;
    assert!(bob.machine.conversation(&a).unwrap().identity_unacked);
    let items = bob.store.messages(a, Page::default()).await.unwrap();
    assert_eq!(items.last().unwrap().kind, MessageKind::IdentityChanged);
    assert!(matches!(
        bob.machine.queue_chat(Conversation::Direct(a), text("x"), bob.now),
        Err(MachineError::IdentityUnacknowledged)
    ));
    let c = bob.machine.acknowledge_identity(a);
    bob.commit(c).await;
    assert!(
        bob.machine
            .queue_chat(Conversation::Direct(a), text("x"), bob.now)
            .is_ok()
    );
    // Bob's own second list, or a removal, asks for nothing.
    assert!(!bob.machine.conversation(&a).unwrap().identity_unacked);
    let _ = b;
}

#[tokio::test]
async fn group_chat_items_fold_for_every_member() {
    let mut peers = vec![Peer::new(207).await, Peer::new(208).await, Peer::new(209).await];
    let ids: Vec<AccountId> = peers.iter().map(|p| p.id()).collect();
    let (c, g) = peers[0].machine.create_group("g", &ids[1..], T0).unwrap();
    peers[0].commit(c).await;
    settle(&mut peers).await;
    let conv = Conversation::Group(g);
    let (c, hello) = peers[1].machine.queue_chat(conv, text("hello all"), T0 + 1).unwrap();
    peers[1].commit(c).await;
    let hello = hello.unwrap();
    settle(&mut peers).await;
    let react = ChatItem::Reaction {
        author: ids[1],
        target: hello.id,
        emoji: "🎉".into(),
    };
    let (c, _) = peers[2].machine.queue_chat(conv, react, T0 + 2).unwrap();
    peers[2].commit(c).await;
    // A non-author's delete changes nothing; the author's edit does.
    let (c, _) = peers[0]
        .machine
        .queue_chat(conv, ChatItem::Delete { target: hello.id }, T0 + 3)
        .unwrap();
    peers[0].commit(c).await;
    let edit = ChatItem::Edit {
        target: hello.id,
        text: "hello everyone".into(),
    };
    let (c, _) = peers[1].machine.queue_chat(conv, edit, T0 + 4).unwrap();
    peers[1].commit(c).await;
    let (c, _) = peers[0]
        .machine
        .queue_chat(conv, ChatItem::Timer { expire_s: 3600 }, T0 + 5)
        .unwrap();
    peers[0].commit(c).await;
    settle(&mut peers).await;
    for p in &peers {
        let m = one(p, g.conversation(), hello.id).await;
        assert_eq!(m.text, "hello everyone");
        assert!(!m.deleted);
        assert_eq!(m.reactions.len(), 1);
        assert_eq!(m.reactions[0].by, ids[2]);
        assert_eq!(p.machine.settings(&conv).expire_s, 3600);
    }
    // A member reads: the author's copy becomes Read.
    let all = peers[2]
        .store
        .messages(g.conversation(), Page::default())
        .await
        .unwrap();
    let up_to = all.last().unwrap().order;
    let c = peers[2].machine.mark_read(conv, up_to, &all, true, T0 + 6);
    // One receipt, to the text's author (a timer gets none).
    assert_eq!(c.outbox_add.len(), 1);
    peers[2].commit(c).await;
    settle(&mut peers).await;
    assert_eq!(
        one(&peers[1], g.conversation(), hello.id).await.status,
        MessageStatus::Read
    );
}

#[tokio::test]
async fn group_delivery_receipts_count_from_members_only() {
    let mut peers = vec![Peer::new(213).await, Peer::new(214).await, Peer::new(215).await];
    let ids: Vec<AccountId> = peers.iter().map(|p| p.id()).collect();
    let (c, g) = peers[0].machine.create_group("g", &ids[1..], T0).unwrap();
    peers[0].commit(c).await;
    settle(&mut peers).await;
    assert_eq!(peers[2].machine.delivery_receipt_group(&g.conversation()), Some(g));
    assert_eq!(peers[2].machine.delivery_receipt_group(&ids[1]), None);
    let conv = Conversation::Group(g);
    let (c, hello) = peers[1].machine.queue_chat(conv, text("hello all"), T0 + 1).unwrap();
    peers[1].commit(c).await;
    let hello = hello.unwrap();
    settle(&mut peers).await;
    let before = one(&peers[1], g.conversation(), hello.id).await.status;
    assert_eq!(before, MessageStatus::Sent);
    // Mallory, no member, names the group in a receipt: nothing moves.
    let mut mallory = Peer::new(216).await;
    let c = mallory.machine.queue_receipt(ids[1], Some(g), &[hello.id], T0 + 2);
    mallory.commit(c).await;
    send(&mut mallory, &mut [&mut peers[1]]).await;
    deliver(&mut peers[1], &[&mallory]).await;
    assert_eq!(one(&peers[1], g.conversation(), hello.id).await.status, before);
    // A member's receipt, naming the group, moves the author's copy.
    let c = peers[2].machine.queue_receipt(ids[1], Some(g), &[hello.id], T0 + 3);
    peers[2].commit(c).await;
    settle(&mut peers).await;
    assert_eq!(
        one(&peers[1], g.conversation(), hello.id).await.status,
        MessageStatus::Delivered
    );
    // An author this account blocked gets none.
    let c = peers[2].machine.set_blocked(ids[1], true).unwrap();
    peers[2].commit(c).await;
    let c = peers[2].machine.queue_receipt(ids[1], Some(g), &[hello.id], T0 + 4);
    assert!(c.outbox_add.is_empty());
}

#[tokio::test]
async fn typing_frames_open_on_the_contacts_devices_only() {
    let mut alice = Peer::new(211).await;
    let mut bob = Peer::new(212).await;
    let (a, b) = (alice.id(), bob.id());
    chat(&mut alice, &mut bob, text("hi")).await;
    chat(&mut bob, &mut alice, text("hey")).await;
    let (c, frames) = alice
        .machine
        .typing_frames(Conversation::Direct(b), true, alice.now)
        .unwrap();
    alice.commit(c).await;
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0, b);
    let (c, what) = bob.machine.receive_ephemeral(&frames[0].1).unwrap();
    bob.commit(c).await;
    assert_eq!(
        what,
        EphemeralIn::Typing {
            conversation: a,
            by: a,
            typing: true
        }
    );
    // Presence goes to the contacts Alice accepted.
    let (c, frames) = alice.machine.presence_frames(alice.now).unwrap();
    alice.commit(c).await;
    assert_eq!(frames.len(), 1);
    let (c, what) = bob.machine.receive_ephemeral(&frames[0].1).unwrap();
    bob.commit(c).await;
    assert_eq!(what, EphemeralIn::Presence { by: a });
    // A replay opens nothing (the ratchet refuses a duplicate).
    assert!(bob.machine.receive_ephemeral(&frames[0].1).is_none());
    // Stored messages still decrypt after the ephemeral step.
    chat(&mut alice, &mut bob, text("after")).await;
    assert_eq!(texts(&bob.events).last().map(String::as_str), Some("after"));
}

/// Profiles (docs/protocol.md §15.9) on the machine: uploaded before announced, announced
/// only to accepted contacts and own devices, the newest announcement wins, a miss
/// settles the announcement, and a fetched profile only moves forward.
#[tokio::test]
async fn profile_keys_are_announced_after_the_upload_and_the_newest_wins() {
    let mut alice = Peer::new(61).await;
    let mut bob = Peer::new(62).await;
    let (a, b) = (alice.id(), bob.id());
    let c = alice.machine.accept_conversation(b);
    alice.commit(c).await;
    let c = bob.machine.accept_conversation(a);
    bob.commit(c).await;

    // Setting a profile announces nothing until the relay confirmed the upload.
    let c = alice.machine.set_profile("Alice", Some(vec![1, 2, 3]), T0 + 5).unwrap();
    alice.commit(c).await;
    assert!(alice.store.outbox(10).await.unwrap().is_empty());
    assert!(alice.machine.profile_upload_due());
    let (upload, updated_ms) = alice.machine.profile_upload().unwrap();
    assert_eq!(updated_ms, T0 + 5);
    // A confirmation for another version (the key changed meanwhile) is not the upload.
    assert!(alice.machine.profile_uploaded(&[0; 32], updated_ms, T0 + 6).is_none());
    let c = alice
        .machine
        .profile_uploaded(&upload.version, updated_ms, T0 + 6)
        .unwrap();
    alice.commit(c).await;
    assert!(!alice.machine.profile_upload_due());
    // The key goes to Bob and to Alice's own devices, in content.
    let queued = alice.store.outbox(10).await.unwrap();
    let mut to: Vec<AccountId> = queued.iter().map(|i| i.to).collect();
    to.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(to, want);
    let announced = queued.iter().find(|i| i.to == b).unwrap();
    let decoded = Content::decode(&announced.content).unwrap();
    // The key never shows in Debug output.
    assert!(format!("{decoded:?}").contains("key: SharedKey(..)"));
    let ContentKind::ProfileKey { updated_ms: at, key } = decoded.kind else {
        panic!("not a profile key");
    };
    let key = key.0;
    assert_eq!(at, T0 + 5);
    let pk = sotto_crypto::ProfileKey::from_bytes(&key);
    assert_eq!(pk.version(&a), upload.version);

    // Bob takes the announcement; an older one after it changes nothing.
    let mut c = Changes::default();
    bob.machine.accept_profile_key(a, key, at, &mut c);
    bob.commit(c).await;
    let mut c = Changes::default();
    bob.machine.accept_profile_key(a, [9; 32], at - 1, &mut c);
    assert!(c.is_empty());
    let fetches = bob.machine.profiles_to_fetch();
    assert_eq!(fetches.len(), 1);
    assert_eq!((fetches[0].account, fetches[0].key, fetches[0].wanted_ms), (a, key, at));
    // What the relay holds decrypts to the profile; a tampered copy, or one under
    // another account's id, changes nothing but settles the announcement.
    let mut bad = upload.ciphertext.clone();
    *bad.last_mut().unwrap() ^= 1;
    let (c, changed) = bob.machine.profile_fetched(&fetches[0], Some(&bad));
    assert_eq!(changed, None);
    assert_eq!(c.conversations[0].profile_name, None);
    assert_eq!(c.conversations[0].profile_wanted_ms, 0);
    let (c, changed) = bob.machine.profile_fetched(&fetches[0], Some(&upload.ciphertext));
    assert_eq!(changed, Some(a));
    bob.commit(c).await;
    let rec = bob.machine.conversation(&a).unwrap();
    assert_eq!(rec.profile_name.as_deref(), Some("Alice"));
    assert_eq!(rec.profile_avatar, Some(vec![1, 2, 3]));
    assert!(bob.machine.profiles_to_fetch().is_empty());
    // The same profile again is no change.
    let (_, changed) = bob.machine.profile_fetched(&fetches[0], Some(&upload.ciphertext));
    assert_eq!(changed, None);

    // A blocked contact's announcements are ignored.
    let c = bob.machine.set_blocked(a, true).unwrap();
    bob.commit(c).await;
    let mut c = Changes::default();
    bob.machine.accept_profile_key(a, [8; 32], at + 100, &mut c);
    assert!(c.is_empty());

    // Blocking rotates Alice's key: the profile is uploaded again, under a new version,
    // with a later updated_ms, so every device and contact takes it as the newest.
    let c = alice.machine.rotate_profile_key(T0 + 7);
    alice.commit(c).await;
    let (again, again_ms) = alice.machine.profile_upload().unwrap();
    assert_ne!(again.version, upload.version);
    assert!(again_ms > updated_ms);

    // Alice's other device: an announcement newer than its own profile replaces its key
    // and is fetched as its own profile; an older one does not.
    let mut own = Changes::default();
    alice.machine.accept_profile_key(a, [7; 32], again_ms - 1, &mut own);
    assert!(own.is_empty(), "older than this device's profile");
    alice.machine.accept_profile_key(a, [7; 32], again_ms + 10, &mut own);
    assert_eq!(own.account.as_ref().unwrap().value.profile_key, Some([7; 32]));
    alice.commit(own).await;
    let fetch = alice.machine.profiles_to_fetch();
    assert_eq!((fetch[0].account, fetch[0].wanted_ms), (a, again_ms + 10));
    // Nothing under that key on the relay (a newer key is on its way): the announcement
    // is settled, and this device does not upload its older profile over the newer one.
    let (c, changed) = alice.machine.profile_fetched(&fetch[0], None);
    assert_eq!(changed, None);
    alice.commit(c).await;
    assert!(alice.machine.profiles_to_fetch().is_empty());
    assert!(!alice.machine.profile_upload_due());

    // An announcement committed while a fetch was under way is not lost with it.
    let mut c = Changes::default();
    let c2 = bob.machine.set_blocked(a, false).unwrap();
    bob.commit(c2).await;
    bob.machine.accept_profile_key(a, key, at + 200, &mut c);
    bob.commit(c).await;
    let during = bob.machine.profiles_to_fetch();
    let mut c = Changes::default();
    bob.machine.accept_profile_key(a, key, at + 300, &mut c);
    bob.commit(c).await;
    let (c, _) = bob.machine.profile_fetched(&during[0], Some(&upload.ciphertext));
    bob.commit(c).await;
    assert_eq!(bob.machine.profiles_to_fetch()[0].wanted_ms, at + 300);
}
