//! What a group costs the device that acts, in the SDK's machine (no I/O: an in-memory
//! store, so the figures are CPU): a message to a group of 1,000 members with 2 devices
//! each, adding one member (to 1,000) and removing one (the re-key), next to the same
//! message sent pairwise to every device.
//!
//! `cargo bench -p sotto-sdk --bench groups` (plain `main`, no harness). Results go to
//! docs/benchmarks.md ("Groups").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sotto_crypto::{AccountId, AccountKey, Device, DeviceId, PickleKey, PreKeyBundle};
use sotto_sdk::group::Op;
use sotto_sdk::machine::{GroupPlan, Machine, SendPlan, Snapshot};
use sotto_sdk::store::{
    AccountStore, Changes, DeviceListStore, GroupStore, InboundStore, MemoryStore, MessageStore, OutboxItem,
    OutboxStore, PreKeyStore, SessionStore, Store,
};
use sotto_sdk::{GroupId, Role};

const T0: u64 = 1_796_083_200_000;

/// A member account: its signed list and a bundle for each of its two devices.
struct Member {
    id: AccountId,
    list: Vec<u8>,
    bundles: Vec<PreKeyBundle>,
}

fn member(rng: &mut ChaCha20Rng) -> Member {
    let ak = AccountKey::generate(rng);
    let devices: Vec<Device> = (1..=2)
        .map(|i| Device::generate(ak.account_id(), DeviceId(i), rng))
        .collect();
    let list = ak
        .sign_device_list(1, T0, devices.iter().map(Device::entry).collect())
        .unwrap();
    let bundles = devices
        .iter()
        .map(|d| PreKeyBundle {
            identity: d.identity(),
            signed_prekey: d.generate_signed_prekey((T0 / 3_600_000) as u32, rng).public().clone(),
            one_time_prekey: None,
            kem_prekey: d.generate_kem_prekey(1, false, rng).public().clone(),
        })
        .collect();
    Member {
        id: ak.account_id(),
        list: list.signed().as_bytes().to_vec(),
        bundles,
    }
}

struct Admin {
    store: MemoryStore,
    machine: Machine,
}

impl Admin {
    async fn new() -> Admin {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let key = PickleKey::new([1; 32]);
        let new = Machine::new_account("http://relay", T0, &mut rng, &key).unwrap();
        let store = MemoryStore::new();
        store.commit(new.changes).await.unwrap();
        let s = &store;
        let snapshot = Snapshot {
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
        };
        let machine = Machine::load(snapshot, key, rng, ChaCha20Rng::seed_from_u64(2)).unwrap();
        Admin { store, machine }
    }

    async fn commit(&mut self, changes: Changes) {
        let c = self.store.commit(changes.clone()).await.unwrap();
        self.machine.apply(&changes, &c);
    }

    /// Pins the member's list and starts sessions with its devices.
    async fn know(&mut self, m: &Member) {
        let (c, _) = self.machine.receive_device_list(&m.id, &m.list).unwrap();
        self.commit(c).await;
        let c = self.machine.receive_bundles(&m.id, &m.bundles, T0).unwrap();
        self.commit(c).await;
    }

    /// Sends every queued item (pairwise or group), as the client does, and drops them.
    /// Returns the time spent in the machine and the bytes uploaded.
    async fn flush(&mut self) -> (Duration, usize) {
        let mut spent = Duration::ZERO;
        let mut bytes = 0;
        loop {
            let items: Vec<OutboxItem> = self.store.outbox(100_000).await.unwrap();
            if items.is_empty() {
                return (spent, bytes);
            }
            for item in items {
                let t = Instant::now();
                let changes = if self.machine.group_of_conversation(&item.to).is_some() {
                    match self.machine.prepare_group_send(&item, T0).unwrap() {
                        GroupPlan::Ready {
                            changes,
                            body,
                            recipients,
                            ..
                        } => {
                            bytes += body.len() + recipients.len() * 40;
                            Some(changes)
                        }
                        GroupPlan::Wait { changes } => {
                            spent += t.elapsed();
                            self.commit(changes).await;
                            continue;
                        }
                        other => panic!("{other:?}"),
                    }
                } else {
                    match self.machine.prepare_send(&item, &[], T0).unwrap() {
                        SendPlan::Ready { changes, recipients } => {
                            bytes += recipients.iter().map(|r| r.head.len() + 40).sum::<usize>();
                            Some(changes)
                        }
                        other => panic!("{other:?}"),
                    }
                };
                spent += t.elapsed();
                if let Some(c) = changes {
                    self.commit(c).await;
                }
                let (c, _) = self.machine.mark_sent(&item);
                self.commit(c).await;
            }
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn run() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let members: Vec<Member> = (0..1001).map(|_| member(&mut rng)).collect();
    let mut admin = Admin::new().await;
    let t = Instant::now();
    for m in &members {
        admin.know(m).await;
    }
    eprintln!(
        "setup: {} accounts known in {:.1} s",
        members.len(),
        t.elapsed().as_secs_f64()
    );
    // A group of 999 (the admin and 998 others), so that adding one makes 1,000.
    let ids: Vec<AccountId> = members.iter().map(|m| m.id).collect();
    let (c, g): (Changes, GroupId) = admin.machine.create_group("bench", &ids[..998], T0).unwrap();
    admin.commit(c).await;
    let (welcomes, _) = admin.flush().await;
    eprintln!("welcomes to 998 accounts: {:.1} ms", ms(welcomes));
    // The first message distributes the chain (pairwise to every account), then sends.
    let (c, _) = admin.machine.queue_group_text(g, "first", T0).unwrap();
    admin.commit(c).await;
    let (first, _) = admin.flush().await;
    eprintln!("first message with its chain's distribution: {:.1} ms", ms(first));

    let mut send = Vec::new();
    let mut sent_bytes = 0;
    for i in 0..20 {
        let (c, _) = admin
            .machine
            .queue_group_text(g, &format!("m{i} {}", "x".repeat(1000)), T0)
            .unwrap();
        admin.commit(c).await;
        let (d, b) = admin.flush().await;
        send.push(d);
        sent_bytes = b;
    }
    let mut adds = Vec::new();
    let mut removes = Vec::new();
    for round in 0..5 {
        let newcomer = &members[998 + (round % 3)];
        let t = Instant::now();
        let c = admin
            .machine
            .change_group(g, vec![Op::Add(newcomer.id, Role::Member)], T0)
            .unwrap();
        let mut d = t.elapsed();
        admin.commit(c).await;
        d += admin.flush().await.0;
        adds.push(d);
        // A message while the newcomer is in: its devices now hold the admin's chain.
        let (c, _) = admin.machine.queue_group_text(g, "with the newcomer", T0).unwrap();
        admin.commit(c).await;
        admin.flush().await;
        let t = Instant::now();
        let c = admin
            .machine
            .change_group(g, vec![Op::Remove(newcomer.id)], T0)
            .unwrap();
        let mut d = t.elapsed();
        admin.commit(c).await;
        d += admin.flush().await.0;
        // The next message starts a new chain and distributes it to every device.
        let (c, _) = admin.machine.queue_group_text(g, "after the removal", T0).unwrap();
        admin.commit(c).await;
        d += admin.flush().await.0;
        removes.push(d);
    }
    let info = admin.machine.group(&g).unwrap();
    assert_eq!(info.members.len(), 999);
    println!("group of 999 members (1,996 devices of the others, and the admin's own), 1 KiB text:");
    println!(
        "  send (sender-key step + group seal, one body): median {:.3} ms, {} bytes uploaded",
        ms(median(send)),
        sent_bytes
    );
    println!(
        "  add one member (commit in the group channel + welcome to 2 devices): median {:.1} ms",
        ms(median(adds))
    );
    println!(
        "  remove one member (commit pairwise to 1,996 devices + new chain distributed to 1,996): median {:.1} ms",
        ms(median(removes))
    );
    // The same 1 KiB text pairwise to every device, for comparison.
    let text = "x".repeat(1024);
    let mut pairwise = Duration::ZERO;
    let mut pairwise_bytes = 0;
    for m in &members[..998] {
        let (c, _) = admin.machine.queue_text(m.id, &text, T0).unwrap();
        admin.commit(c).await;
        let items = admin.store.outbox(1).await.unwrap();
        let t = Instant::now();
        let SendPlan::Ready { changes, recipients } = admin.machine.prepare_send(&items[0], &[], T0).unwrap() else {
            panic!()
        };
        pairwise += t.elapsed();
        pairwise_bytes += recipients.iter().map(|r| r.head.len() + 40).sum::<usize>();
        admin.commit(changes).await;
        let (c, _) = admin.machine.mark_sent(&items[0]);
        admin.commit(c).await;
    }
    println!(
        "  the same text pairwise to the 1,996 devices: {:.1} ms, {} bytes uploaded",
        ms(pairwise),
        pairwise_bytes
    );
}

fn main() {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(run());
}
