//! A group of 100 members with 2 devices each over a real relay: 200 messages from random
//! member devices arrive exactly once on every other device of the group, in the order
//! each device sent them.

use std::collections::HashMap;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sotto_crypto::{AccountId, DeviceId};
use sotto_sdk::Event;
use sotto_tests::{Device, TestRelay};

fn members() -> usize {
    std::env::var("SOTTO_GROUP_MEMBERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

const MESSAGES: usize = 200;

/// The distributions of every sender's chain to every member go first (O(senders ×
/// members) pairwise messages), so this test waits longer than the usual failsafe.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(1200);

/// Awaits `n` messages on `d`, with [`PATIENCE`]; other events are kept.
async fn receive(d: &mut Device, n: usize) -> Vec<sotto_sdk::StoredMessage> {
    let mut got = Vec::with_capacity(n);
    let stash = std::mem::take(&mut d.stash);
    for e in stash {
        match e {
            Event::MessageReceived(m) if got.len() < n => got.push(m),
            other => d.stash.push_back(other),
        }
    }
    tokio::time::timeout(PATIENCE, async {
        while got.len() < n {
            match d.events.next().await.expect("event stream ended") {
                Event::MessageReceived(m) => got.push(m),
                other => d.stash.push_back(other),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {n} messages", got.len()));
    got
}

/// The load-test limits: hundreds of accounts from one address, each fetching everyone's
/// bundles.
fn raise(c: &mut sotto_relay::Config) {
    c.limits.registrations_per_minute_per_addr = 100_000;
    c.limits.registrations_burst_per_addr = 100_000;
    c.limits.registrations_per_minute_total = 100_000;
    c.limits.registrations_burst_total = 100_000;
    c.limits.bundles_per_minute_per_requester = 100_000;
    c.limits.bundles_burst_per_requester = 100_000;
    c.limits.one_time_bundles_per_minute_per_target = 100_000;
    c.limits.one_time_bundles_burst_per_target = 100_000;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_messages_in_a_group_of_two_hundred_devices_on_sqlite() {
    // Every test client connects from 127.0.0.1 (as in TestRelay::start).
    let relay = TestRelay::start_with(|c| {
        c.limits.addr_rate_per_second = 1_000_000;
        c.limits.addr_rate_burst = 1_000_000;
        c.limits.addr_rate_bytes_per_second = u32::MAX;
        c.limits.addr_rate_bytes_burst = u32::MAX;
        c.limits.challenge_rate_per_addr = 100_000;
        c.limits.challenge_burst_per_addr = 100_000;
        c.limits.max_tcp_connections_per_addr = 10_000;
        c.limits.max_ws_per_addr = 10_000;
        c.limits.max_unauthenticated_per_addr = 10_000;
        raise(c);
    })
    .await;
    run(relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_messages_in_a_group_of_two_hundred_devices_on_postgres() {
    if let Some(relay) = TestRelay::start_postgres_with(raise).await {
        run(relay).await;
    }
}

async fn run(relay: TestRelay) {
    let n = members();
    let t0 = std::time::Instant::now();
    let mut devices: Vec<Device> = Vec::with_capacity(2 * n);
    for i in 0..n {
        let mut first = Device::create(&relay, 10_000 + i as u64).await;
        let second = Device::join_with(&relay, &mut first, 20_000 + i as u64, false).await;
        devices.push(first);
        devices.push(second);
        if i % 10 == 9 {
            eprintln!("{} accounts in {:?}", i + 1, t0.elapsed());
        }
    }
    eprintln!("{} devices in {:?}", devices.len(), t0.elapsed());
    let ids: Vec<AccountId> = (0..n).map(|i| devices[2 * i].id()).collect();
    for link in devices[2..]
        .iter()
        .step_by(2)
        .map(|d| d.client.contact_link())
        .collect::<Vec<_>>()
    {
        devices[0].client.add_contact(&link).await.unwrap();
    }
    let g = devices[0].client.create_group("two hundred", &ids[1..]).await.unwrap();
    for d in devices.iter_mut().skip(1) {
        d.wait_for(|e| matches!(e, Event::GroupChanged { group } if *group == g))
            .await;
    }
    eprintln!("joined in {:?}", t0.elapsed());

    // 200 messages from random devices, each numbered per sender.
    let mut rng = ChaCha20Rng::seed_from_u64(11); // test only
    let mut sent: HashMap<(AccountId, DeviceId), u32> = HashMap::new();
    let mut by_device = vec![0usize; devices.len()];
    for _ in 0..MESSAGES {
        let i = (rng.next_u32() as usize) % devices.len();
        let d = &devices[i];
        let k = sent.entry((d.id(), d.device_id())).or_default();
        d.client.send_group_text(&g, &format!("{k}")).await.unwrap();
        *k += 1;
        by_device[i] += 1;
    }
    for (i, d) in devices.iter_mut().enumerate() {
        let expected = MESSAGES - by_device[i];
        let got = receive(d, expected).await;
        let mut next: HashMap<(AccountId, DeviceId), u32> = HashMap::new();
        for m in &got {
            assert_eq!(m.conversation, g.conversation());
            let k = next.entry(m.sender).or_default();
            assert_eq!(
                m.text,
                k.to_string(),
                "device {i}: out of order or twice from {:?}",
                m.sender
            );
            *k += 1;
        }
        for (sender, count) in &sent {
            if *sender != (d.id(), d.device_id()) {
                assert_eq!(
                    next.get(sender).copied().unwrap_or(0),
                    *count,
                    "device {i} from {sender:?}"
                );
            }
        }
        assert!(!d.saw_undecryptable(), "device {i}: {:?}", d.stash);
    }
    eprintln!("delivered in {:?}", t0.elapsed());
}
