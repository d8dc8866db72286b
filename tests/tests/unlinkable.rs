//! What the relay sees cannot pair the anonymous (sealed-sender) connection with the
//! device's authenticated one: a proxy in front of a real relay records every frame of
//! every connection with its time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sotto_proto::Frame;
use sotto_sdk::Event;
use sotto_tests::outbound::Seen;
use sotto_tests::{Device, TestRelay, options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_frame_id_or_fixed_delay_pairs_the_two_connections() {
    let (relay, tap) = TestRelay::start_tapped().await;
    let mut alice = Device::create_with(&relay, 51, options(51)).await;
    let _alice2 = Device::join(&relay, &mut alice, 52).await;
    let mut bob = Device::create_with(&relay, 53, options(53)).await;
    alice.client.add_contact(&bob.client.contact_link()).await.unwrap();
    // Linking sent its own one-off anonymous messages; what follows is the steady state.
    let start = tokio::time::Instant::now();
    // A message written offline goes out as soon as Alice is back online.
    let offline = alice.restart_offline().await;
    let mut alice = {
        let d = offline
            .open_with(sotto_sdk::ClientOptions {
                connect: false,
                ..options(54)
            })
            .await;
        d.client.send_text(&bob.id(), "written offline").await.unwrap();
        d.restart().await
    };
    assert_eq!(bob.receive(1).await[0].text, "written offline");
    alice.wait_for(|e| matches!(e, Event::Delivered { .. })).await;
    // Rounds: Alice sends, Bob's receipt comes back.
    for i in 0..5 {
        alice.client.send_text(&bob.id(), &format!("m{i}")).await.unwrap();
        bob.receive(1).await;
        alice.wait_for(|e| matches!(e, Event::Delivered { .. })).await;
    }
    let all = tap.frames();
    let frames: Vec<Seen> = all.iter().filter(|s| s.at >= start).cloned().collect();
    let authenticated: BTreeSet<u64> = all
        .iter()
        .filter(|s| matches!(s.frame, Frame::AuthResponse(_)))
        .map(|s| s.conn)
        .collect();
    let anonymous: BTreeSet<u64> = frames
        .iter()
        .filter(|s| s.from_client && matches!(s.frame, Frame::Send(_)) && !authenticated.contains(&s.conn))
        .map(|s| s.conn)
        .collect();
    assert!(!anonymous.is_empty() && !authenticated.is_empty());
    // 1. Frame ids: no anonymous send id is next to an authenticated one.
    let send_ids = |conns: &BTreeSet<u64>| -> Vec<u64> {
        frames
            .iter()
            .filter(|s| s.from_client && conns.contains(&s.conn))
            .filter_map(|s| match &s.frame {
                Frame::Send(send) => Some(send.message_id),
                _ => None,
            })
            .collect()
    };
    let (anon_ids, auth_ids) = (send_ids(&anonymous), send_ids(&authenticated));
    assert!(
        !auth_ids.is_empty(),
        "the transcripts go on the authenticated connection"
    );
    for a in &anon_ids {
        for b in &auth_ids {
            assert!(
                a.abs_diff(*b) > 1_000,
                "anonymous Send #{a} next to authenticated Send #{b}"
            );
        }
    }
    // 2. No anonymous connection opens right after an AuthOk.
    let auth_ok: Vec<_> = frames
        .iter()
        .filter(|s| matches!(s.frame, Frame::AuthOk { .. }))
        .map(|s| s.at)
        .collect();
    let opened: BTreeMap<u64, _> = tap.opened().into_iter().filter(|(_, t)| *t >= start).collect();
    for c in &anonymous {
        let Some(&t) = opened.get(c) else { continue };
        for ok in &auth_ok {
            if t >= *ok {
                assert!(
                    t - *ok >= Duration::from_millis(500),
                    "an anonymous connection opened {:?} after an AuthOk",
                    t - *ok
                );
            }
        }
    }
    // 3. Bob's receipts: the delay from each delivery to the anonymous send that
    // follows it varies.
    let bob_conns: BTreeSet<u64> = all
        .iter()
        .filter_map(|s| match &s.frame {
            Frame::AuthResponse(r) if r.account_id == bob.id() => Some(s.conn),
            _ => None,
        })
        .collect();
    let delays = receipt_delays(&frames, &bob_conns, &anonymous);
    assert!(delays.len() >= 5, "{delays:?}");
    let (min, max) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
    assert!(
        *max - *min >= Duration::from_millis(200),
        "receipts follow deliveries after a fixed delay: {delays:?}"
    );
}

/// For each delivery to one of `to` (Bob), the time until the next send on an
/// anonymous connection (his receipt: nothing else is sent meanwhile).
fn receipt_delays(frames: &[Seen], to: &BTreeSet<u64>, anonymous: &BTreeSet<u64>) -> Vec<Duration> {
    let mut out = Vec::new();
    for (i, s) in frames.iter().enumerate() {
        if !(to.contains(&s.conn) && !s.from_client && matches!(s.frame, Frame::Deliver(_))) {
            continue;
        }
        if let Some(next) = frames[i + 1..]
            .iter()
            .find(|n| n.from_client && anonymous.contains(&n.conn) && matches!(n.frame, Frame::Send(_)))
        {
            out.push(next.at - s.at);
        }
    }
    out
}
