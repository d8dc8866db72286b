use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use super::*;

fn acct(n: u8) -> AccountId {
    AccountId([n; 32])
}

const KEY: [u8; 32] = [9; 32];

fn genesis() -> GroupState {
    GroupState::genesis(
        GroupId([1; 32]),
        acct(1),
        "team",
        &[
            (acct(2), Role::Admin),
            (acct(3), Role::Member),
            (acct(4), Role::Member),
            (acct(5), Role::Member),
        ],
    )
    .unwrap()
}

fn root_id() -> [u8; 32] {
    genesis().hash()
}

/// A commit by `author` on the genesis state.
fn on_genesis(author: u8, ops: Vec<Op>) -> Commit {
    Commit::on(root_id(), &genesis(), acct(author), Some(&KEY), ops)
}

fn hash_of(i: u32) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(i.to_be_bytes());
    h.finalize().into()
}

#[test]
fn group_ids_print_and_parse_as_hex() {
    let id = GroupId([0xab; 32]);
    let s = id.to_string();
    assert_eq!(s, "ab".repeat(32));
    assert_eq!(s.parse::<GroupId>().unwrap(), id);
    assert_eq!(format!(" {} ", s.to_uppercase()).parse::<GroupId>().unwrap(), id);
    for bad in ["", "ab", &"zz".repeat(32), &"ab".repeat(33), &"é".repeat(32)] {
        assert!(bad.parse::<GroupId>().is_err(), "{bad:?}");
    }
}

#[test]
fn only_admins_change_the_group_and_members_may_leave() {
    let g = genesis();
    let by_member = on_genesis(3, vec![Op::Add(acct(9), Role::Member)]);
    assert_eq!(g.apply(&by_member), Err(GroupError::NotAdmin));
    let outsider = Commit::on(root_id(), &g, acct(9), None, vec![Op::Leave]);
    assert_eq!(g.apply(&outsider), Err(GroupError::NotAdmin));
    // Whoever leaves does not choose the next key.
    let leave_with_key = on_genesis(3, vec![Op::Leave]);
    assert_eq!(g.apply(&leave_with_key), Err(GroupError::BadKeyCommitment));
    let leave = Commit::on(root_id(), &g, acct(3), None, vec![Op::Leave]);
    let after = g.apply(&leave).unwrap();
    assert!(!after.is_member(&acct(3)));
    assert_eq!(after.version, 1);
    // An admin who stays must give a key; one who removes itself may not.
    let keyless = Commit::on(root_id(), &g, acct(2), None, vec![Op::Add(acct(9), Role::Member)]);
    assert_eq!(g.apply(&keyless), Err(GroupError::BadKeyCommitment));
    let self_removal = on_genesis(2, vec![Op::Remove(acct(2))]);
    assert_eq!(g.apply(&self_removal), Err(GroupError::BadKeyCommitment));
    let add = on_genesis(
        2,
        vec![
            Op::Add(acct(9), Role::Member),
            Op::SetTitle("renamed".into()),
            Op::Rekey,
        ],
    );
    let after = g.apply(&add).unwrap();
    assert!(after.is_member(&acct(9)));
    assert_eq!(after.title, "renamed");
    assert_eq!(after.apply(&add), Err(GroupError::WrongParent));
}

#[test]
fn the_commit_must_come_from_its_author() {
    let mut log = GroupLog::genesis(genesis()).unwrap();
    let forged = on_genesis(1, vec![Op::Remove(acct(2))]);
    assert_eq!(log.receive(forged.clone(), &acct(3)), Err(GroupError::NotAdmin));
    assert_eq!(log.receive(forged, &acct(1)), Ok(Received::Applied));
}

#[test]
fn the_last_admin_leaving_makes_the_lowest_member_admin() {
    let g = GroupState::genesis(
        GroupId([1; 32]),
        acct(7),
        "",
        &[(acct(3), Role::Member), (acct(5), Role::Member)],
    )
    .unwrap();
    let after = g
        .apply(&Commit::on(g.hash(), &g, acct(7), None, vec![Op::Leave]))
        .unwrap();
    assert!(after.is_admin(&acct(3)));
    assert!(!after.is_admin(&acct(5)));
}

#[test]
fn sizes_are_bounded() {
    let g = genesis();
    let many: Vec<Op> = (0..MAX_MEMBERS as u32)
        .map(|i| Op::Add(AccountId(hash_of(i)), Role::Member))
        .collect();
    let c = on_genesis(1, many);
    assert_eq!(g.apply(&c), Err(GroupError::TooManyMembers { max: MAX_MEMBERS }));
    assert!(
        Commit::decode(&c.encode()).is_ok(),
        "a commit of MAX_OPS operations decodes"
    );
    let too_many = on_genesis(1, vec![Op::Rekey; MAX_OPS + 1]);
    assert_eq!(g.apply(&too_many), Err(GroupError::Empty { max: MAX_OPS }));
    let long = on_genesis(1, vec![Op::SetTitle("x".repeat(MAX_TITLE_LEN + 1))]);
    assert!(g.apply(&long).is_err());
    assert!(Commit::decode(&long.encode()).is_err());
    let mut empty = on_genesis(1, vec![Op::Rekey]);
    empty.ops.clear();
    assert_eq!(Commit::decode(&empty.encode()), Err(GroupError::Empty { max: MAX_OPS }));
    assert_eq!(g.apply(&empty), Err(GroupError::Empty { max: MAX_OPS }));
    let mut big_root = genesis();
    big_root.title = "y".repeat(MAX_TITLE_LEN + 1);
    assert!(GroupLog::new([0; 32], big_root).is_err());
}

#[test]
fn decoding_is_canonical() {
    let g = genesis();
    let bytes = g.encode();
    assert_eq!(GroupState::decode(&bytes).unwrap(), g);
    let start = 1 + 32 + 8 + 4 + 4 + 2;
    let mut swapped = bytes.clone();
    let (a, b) = (
        swapped[start..start + 33].to_vec(),
        swapped[start + 33..start + 66].to_vec(),
    );
    swapped[start..start + 33].copy_from_slice(&b);
    swapped[start + 33..start + 66].copy_from_slice(&a);
    assert!(GroupState::decode(&swapped).is_err(), "members out of order");
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(GroupState::decode(&trailing).is_err());
    let mut bad_role = bytes;
    bad_role[start + 32] = 2;
    assert!(GroupState::decode(&bad_role).is_err());
}

#[test]
fn a_fork_resolves_the_same_way_in_any_order() {
    let a = on_genesis(1, vec![Op::Add(acct(10), Role::Member)]);
    let b = on_genesis(2, vec![Op::Add(acct(11), Role::Member)]);
    let winner = if a.id() < b.id() { &a } else { &b };
    let mut x = GroupLog::genesis(genesis()).unwrap();
    let mut y = GroupLog::genesis(genesis()).unwrap();
    x.receive(a.clone(), &acct(1)).unwrap();
    x.receive(b.clone(), &acct(2)).unwrap();
    y.receive(b.clone(), &acct(2)).unwrap();
    y.receive(a.clone(), &acct(1)).unwrap();
    assert_eq!(x.tip(), y.tip());
    assert_eq!(x.tip_id(), winner.id());
    assert_eq!(y.tip_id(), winner.id());
    assert_eq!(x.receive(a, &acct(1)).unwrap(), Received::Duplicate);
}

#[test]
fn two_commits_that_make_the_same_state_stay_two_commits() {
    // Both admins remove member 5 with different keys: equal states, different commits.
    let a = Commit::on(
        root_id(),
        &genesis(),
        acct(1),
        Some(&[1; 32]),
        vec![Op::Remove(acct(5))],
    );
    let b = Commit::on(
        root_id(),
        &genesis(),
        acct(2),
        Some(&[2; 32]),
        vec![Op::Remove(acct(5))],
    );
    assert_eq!(genesis().apply(&a).unwrap(), genesis().apply(&b).unwrap());
    let winner = a.id().min(b.id());
    for order in [[&a, &b], [&b, &a]] {
        let mut log = GroupLog::genesis(genesis()).unwrap();
        for c in order {
            log.receive(c.clone(), &c.author).unwrap();
        }
        assert_eq!(log.tip_id(), winner, "the same commit, so the same seal key");
        let rebuilt = GroupLog::from_parts(log.parts()).unwrap();
        assert_eq!(rebuilt.tip_id(), winner);
        assert_eq!(rebuilt.parts().commits.len(), 2);
    }
}

#[test]
fn a_removal_wins_over_the_removed_admins_concurrent_commit() {
    // Whatever the ids, admin 1 removing admin 2 beats admin 2's concurrent commit.
    for salt in 0..20u8 {
        let removal = Commit::on(
            root_id(),
            &genesis(),
            acct(1),
            Some(&[salt; 32]),
            vec![Op::Remove(acct(2))],
        );
        let other = Commit::on(
            root_id(),
            &genesis(),
            acct(2),
            Some(&[salt ^ 0x55; 32]),
            vec![Op::Add(acct(12), Role::Admin)],
        );
        let mut log = GroupLog::genesis(genesis()).unwrap();
        log.receive(other.clone(), &acct(2)).unwrap();
        log.receive(removal.clone(), &acct(1)).unwrap();
        assert_eq!(log.tip_id(), removal.id());
        assert!(!log.is_canonical(&other.id()));
    }
}

/// A chain of `n` title changes by `author` on `from` (a log's tip).
fn chain(log: &GroupLog, author: u8, n: u32, tag: &str) -> Vec<Commit> {
    let mut id = log.tip_id();
    let mut state = log.tip().clone();
    let mut out = Vec::new();
    for i in 0..n {
        let c = Commit::on(
            id,
            &state,
            acct(author),
            Some(&hash_of(i)),
            vec![Op::SetTitle(format!("{tag}{i}"))],
        );
        state = state.apply(&c).unwrap();
        id = c.id();
        out.push(c);
    }
    out
}

#[test]
fn the_higher_subtree_wins_so_a_late_commit_loses_everywhere() {
    let base = GroupLog::genesis(genesis()).unwrap();
    let long = chain(&base, 1, WINDOW as u32 + 8, "a");
    // Admin 2's commit on the genesis state; try to make it win on id as well.
    let late = (0..64u8)
        .map(|i| {
            Commit::on(
                root_id(),
                &genesis(),
                acct(2),
                Some(&[i; 32]),
                vec![Op::SetTitle("b".into())],
            )
        })
        .min_by_key(Commit::id)
        .unwrap();
    assert!(late.id() < long[0].id());
    // Early: kept as a fork, and loses to the higher chain.
    let mut early = base.clone();
    early.receive(late.clone(), &acct(2)).unwrap();
    assert_eq!(early.tip().title, "b");
    for c in &long {
        early.receive(c.clone(), &acct(1)).unwrap();
    }
    // Late: refused as stale.
    let mut after = base.clone();
    for c in &long {
        after.receive(c.clone(), &acct(1)).unwrap();
    }
    assert_eq!(
        after.receive(late.clone(), &acct(2)),
        Err(GroupError::Stale { window: MAX_FORK_DEPTH })
    );
    assert_eq!(early.tip_id(), after.tip_id());
    assert_eq!(early.tip(), after.tip());
    assert_eq!(after.root().version, after.tip().version - WINDOW);
    // The pruned commits are still known: duplicates, and the canonical ones canonical.
    assert_eq!(after.receive(long[0].clone(), &acct(1)), Ok(Received::Duplicate));
    assert!(after.is_canonical(&long[0].id()));
    assert!(after.is_canonical(&long[WINDOW as usize / 2].id()));
    assert!(!early.is_canonical(&late.id()));
}

#[test]
fn commits_wait_for_their_parent_and_the_log_rebuilds_from_its_parts() {
    let base = GroupLog::genesis(genesis()).unwrap();
    let c = chain(&base, 1, 3, "t");
    let fork = Commit::on(
        c[0].id(),
        &genesis().apply(&c[0]).unwrap(),
        acct(2),
        Some(&[4; 32]),
        vec![Op::Rekey],
    );
    let mut log = base.clone();
    assert_eq!(log.receive(c[2].clone(), &acct(1)).unwrap(), Received::Pending);
    assert_eq!(log.receive(fork.clone(), &acct(2)).unwrap(), Received::Pending);
    assert_eq!(log.tip().version, 0);
    // A commit whose parent will never come stays pending too.
    let mut orphan = c[1].clone();
    orphan.parent = [0xee; 32];
    assert_eq!(log.receive(orphan, &acct(1)).unwrap(), Received::Pending);
    let parts = log.parts();
    assert_eq!(parts.pending.len(), 3);
    let mut rebuilt = GroupLog::from_parts(parts).unwrap();
    for l in [&mut log, &mut rebuilt] {
        l.receive(c[0].clone(), &acct(1)).unwrap();
        l.receive(c[1].clone(), &acct(1)).unwrap();
        assert_eq!(l.tip().title, "t2");
    }
    assert_eq!(log.parts(), rebuilt.parts());
    assert_eq!(GroupLog::from_parts(log.parts()).unwrap().parts(), log.parts());
}

#[test]
fn pending_commits_and_forks_are_bounded() {
    let g = genesis();
    let mut log = GroupLog::genesis(g.clone()).unwrap();
    for i in 0..MAX_PENDING_PER_AUTHOR as u32 {
        let mut c = on_genesis(1, vec![Op::Rekey]);
        c.parent = hash_of(i);
        c.parent_version = 1;
        assert_eq!(log.receive(c, &acct(1)).unwrap(), Received::Pending);
    }
    let mut c = on_genesis(1, vec![Op::Rekey]);
    c.parent = [0xee; 32];
    c.parent_version = 1;
    assert_eq!(
        log.receive(c.clone(), &acct(1)),
        Err(GroupError::Full),
        "one author's quota"
    );
    assert_eq!(
        log.receive(Commit { author: acct(2), ..c }, &acct(2)).unwrap(),
        Received::Pending
    );
    let mut far = on_genesis(2, vec![Op::Rekey]);
    far.parent_version = WINDOW + 1;
    far.parent = [0xef; 32];
    assert_eq!(log.receive(far, &acct(2)), Err(GroupError::Stale { window: WINDOW }));
    // Forks on one parent.
    for i in 0..MAX_CHILDREN as u8 {
        let f = Commit::on(root_id(), &g, acct(2), Some(&[i; 32]), vec![Op::Rekey]);
        assert_eq!(log.receive(f, &acct(2)).unwrap(), Received::Applied);
    }
    let f = Commit::on(root_id(), &g, acct(2), Some(&[0xff; 32]), vec![Op::Rekey]);
    assert_eq!(log.receive(f, &acct(2)), Err(GroupError::Full));
    // Commits on the tip still go in.
    let tip = log.tip().clone();
    let next = Commit::on(
        log.tip_id(),
        &tip,
        acct(1),
        Some(&KEY),
        vec![Op::SetTitle("still".into())],
    );
    assert_eq!(log.receive(next, &acct(1)).unwrap(), Received::Applied);
    assert_eq!(log.tip().title, "still");
}

#[test]
fn an_admin_flooding_forks_cannot_freeze_the_group() {
    // Admin 1 makes a chain of 15; admin 2 forks every state of it up to the children
    // bound, until the kept states are full. Admin 1 still commits on the tip: forks are
    // evicted to make room.
    let mut log = GroupLog::genesis(genesis()).unwrap();
    let mut states = vec![(root_id(), genesis())];
    for c in chain(&log, 1, 15, "c") {
        let next = states[states.len() - 1].1.apply(&c).unwrap();
        states.push((c.id(), next));
        log.receive(c, &acct(1)).unwrap();
    }
    let mut n = 0u32;
    'flood: for (pid, p) in &states {
        for _ in 0..MAX_CHILDREN {
            if log.parts().commits.len() >= MAX_NODES - 1 {
                break 'flood;
            }
            let f = Commit::on(*pid, p, acct(2), Some(&hash_of(n)), vec![Op::SetTitle(format!("f{n}"))]);
            n += 1;
            let _ = log.receive(f, &acct(2));
        }
    }
    assert_eq!(log.parts().commits.len(), MAX_NODES - 1, "the kept states are full");
    for i in 0..10 {
        let tip = log.tip().clone();
        let c = Commit::on(
            log.tip_id(),
            &tip,
            acct(1),
            Some(&hash_of(50_000 + i)),
            vec![Op::SetTitle(format!("{i}"))],
        );
        assert_eq!(
            log.receive(c.clone(), &acct(1)),
            Ok(Received::Applied),
            "commit {i} on the tip"
        );
        assert_eq!(log.tip_id(), c.id());
    }
    assert!(log.parts().commits.len() < MAX_NODES);
}

/// One device of the simulation: its account, its log and what it has not yet received,
/// in one queue per sending admin (the relay delivers a mailbox in order, and each admin
/// sends in order; only the interleaving of the two admins is random).
struct Sim {
    account: AccountId,
    log: GroupLog,
    inbox: [std::collections::VecDeque<Commit>; 2],
}

/// What an admin wants, and the commit of its latest attempt.
struct Intent {
    ops: Vec<Op>,
    attempt: Option<[u8; 32]>,
}

/// What an admin does next.
enum Action {
    /// Commit (again) intent `usize` as this commit.
    Commit(usize, Commit),
    /// Intent `usize` no longer changes anything (realized by another, or not allowed).
    Drop(usize),
}

/// The admin's next action: make its first intent not yet attempted, or make again one
/// whose attempt lost (not canonical on the admin's own device). `None`: nothing to do.
fn next_action(sim: &Sim, intents: &[Intent], rng: &mut ChaCha20Rng) -> Option<Action> {
    let tip = sim.log.tip();
    let found = intents.iter().enumerate().find(|(_, intent)| match intent.attempt {
        None => true,
        Some(id) => !intent.ops.is_empty() && !sim.log.is_canonical(&id),
    })?;
    let (i, intent) = found;
    let mut key = [0u8; 32];
    rng.fill_bytes(&mut key);
    let c = Commit::on(sim.log.tip_id(), tip, sim.account, Some(&key), intent.ops.clone());
    Some(match tip.apply(&c) {
        Ok(next) if next.members != tip.members || next.title != tip.title || intent.ops == [Op::Rekey] => {
            Action::Commit(i, c)
        }
        _ => Action::Drop(i),
    })
}

/// Two admins (accounts 1 and 2 on devices 0 and 1; account 1 also on device 5) work
/// through their intents concurrently. Every commit goes to every other device and
/// arrives in a random order; device 4 receives only rarely (a device that was offline).
/// An admin whose attempt is not canonical on its own device makes it again on its tip,
/// as the SDK does, unless it would no longer change anything or is not allowed. Returns
/// each device's log once every queue is empty.
fn run(seed: u64, intents_a: Vec<Vec<Op>>, intents_b: Vec<Vec<Op>>) -> Vec<GroupLog> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed); // test only
    let g = genesis();
    let accounts = [acct(1), acct(2), acct(3), acct(4), acct(5), acct(1)];
    let mut sims: Vec<Sim> = accounts
        .iter()
        .map(|a| Sim {
            account: *a,
            log: GroupLog::genesis(g.clone()).unwrap(),
            inbox: Default::default(),
        })
        .collect();
    let mut intents: [Vec<Intent>; 2] =
        [intents_a, intents_b].map(|list| list.into_iter().map(|ops| Intent { ops, attempt: None }).collect());
    for _step in 0..200_000 {
        let mut progressed = false;
        for admin in 0..2 {
            if rng.next_u32() % 3 != 0 {
                continue;
            }
            let Some(action) = next_action(&sims[admin], &intents[admin], &mut rng) else {
                continue;
            };
            progressed = true;
            let (i, c) = match action {
                Action::Commit(i, c) => (i, c),
                Action::Drop(i) => {
                    intents[admin][i].ops.clear();
                    intents[admin][i].attempt = Some([0; 32]);
                    continue;
                }
            };
            intents[admin][i].attempt = Some(c.id());
            let author = sims[admin].account;
            sims[admin].log.receive(c.clone(), &author).unwrap();
            for (d, s) in sims.iter_mut().enumerate() {
                if d != admin {
                    s.inbox[admin].push_back(c.clone());
                }
            }
        }
        let busy: Vec<(usize, usize)> = (0..sims.len())
            .flat_map(|d| [(d, 0), (d, 1)])
            .filter(|(d, q)| !sims[*d].inbox[*q].is_empty())
            .filter(|(d, _)| *d != 4 || rng.next_u32() % 16 == 0)
            .collect();
        if !busy.is_empty() {
            let (d, q) = busy[(rng.next_u32() as usize) % busy.len()];
            if let Some(c) = sims[d].inbox[q].pop_front() {
                match sims[d].log.receive(c.clone(), &c.author) {
                    Ok(_) | Err(GroupError::Stale { .. }) => {}
                    Err(e) => panic!("seed {seed}: {e}"),
                }
            }
            progressed = true;
        }
        let idle = (0..2).all(|a| {
            intents[a].iter().all(|i| match i.attempt {
                None => false,
                Some(id) => i.ops.is_empty() || sims[a].log.is_canonical(&id),
            })
        });
        if !progressed && idle && sims.iter().all(|s| s.inbox.iter().all(|q| q.is_empty())) {
            break;
        }
    }
    assert!(
        sims.iter().all(|s| s.inbox.iter().all(|q| q.is_empty())),
        "seed {seed}: deliveries left"
    );
    sims.into_iter().map(|s| s.log).collect()
}

/// Every device is on the same commit (so the same seal key) with the same state.
fn converged(seed: u64, logs: &[GroupLog]) -> GroupState {
    let first = &logs[0];
    for l in logs {
        assert_eq!(
            l.tip_id(),
            first.tip_id(),
            "seed {seed}: devices disagree on the commit"
        );
        assert_eq!(l.tip(), first.tip(), "seed {seed}");
    }
    first.tip().clone()
}

#[test]
fn concurrent_changes_by_two_admins_converge_with_both_applied() {
    let mut forked = 0;
    for seed in 0..200 {
        let logs = run(
            seed,
            vec![
                vec![Op::Add(acct(10), Role::Member)],
                vec![Op::SetTitle("from A".into())],
            ],
            vec![vec![Op::Add(acct(11), Role::Member)], vec![Op::Remove(acct(5))]],
        );
        let tip = converged(seed, &logs);
        assert!(tip.is_member(&acct(10)) && tip.is_member(&acct(11)), "seed {seed}");
        assert!(!tip.is_member(&acct(5)), "seed {seed}");
        assert_eq!(tip.title, "from A", "seed {seed}");
        // A fork happened when a device holds more commits than its chain.
        if logs.iter().any(|l| l.parts().commits.len() > l.canonical().len()) {
            forked += 1;
        }
    }
    assert!(forked > 20, "the schedules make forks ({forked} of 200 did)");
}

#[test]
fn long_runs_past_the_window_converge() {
    for seed in 0..20 {
        let titles: Vec<Vec<Op>> = (0..WINDOW + 10).map(|i| vec![Op::SetTitle(format!("a{i}"))]).collect();
        let logs = run(
            seed,
            titles,
            vec![vec![Op::Add(acct(11), Role::Member)], vec![Op::Rekey]],
        );
        let tip = converged(seed, &logs);
        assert!(tip.is_member(&acct(11)), "seed {seed}");
        assert_eq!(tip.title, format!("a{}", WINDOW + 9), "seed {seed}");
    }
}

#[test]
fn conflicting_admin_changes_converge() {
    // Each admin removes the other: exactly one of them stays, the same on every device.
    for seed in 0..200 {
        let logs = run(seed, vec![vec![Op::Remove(acct(2))]], vec![vec![Op::Remove(acct(1))]]);
        let tip = converged(seed, &logs);
        assert!(tip.is_member(&acct(1)) != tip.is_member(&acct(2)), "seed {seed}");
    }
}

fn op() -> impl Strategy<Value = Op> {
    let a = any::<[u8; 32]>().prop_map(AccountId);
    let role = prop_oneof![Just(Role::Member), Just(Role::Admin)];
    prop_oneof![
        (a.clone(), role.clone()).prop_map(|(a, r)| Op::Add(a, r)),
        a.clone().prop_map(Op::Remove),
        (a, role).prop_map(|(a, r)| Op::SetRole(a, r)),
        "[a-z ]{0,40}".prop_map(Op::SetTitle),
        Just(Op::Leave),
        Just(Op::Rekey),
    ]
}

proptest! {
    #[test]
    fn commits_round_trip(ops in prop::collection::vec(op(), 1..20), v in any::<u64>(), parent in any::<[u8; 32]>()) {
        let c = Commit {
            group_id: GroupId([3; 32]),
            parent_version: v,
            parent,
            author: acct(1),
            key_commitment: key_commitment(&KEY),
            ops,
        };
        let bytes = c.encode();
        prop_assert_eq!(Commit::decode(&bytes).unwrap(), c);
        for cut in 0..bytes.len() {
            prop_assert!(Commit::decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn states_round_trip(members in prop::collection::btree_map(any::<[u8; 32]>(), any::<bool>(), 0..40), title in "[a-zé ]{0,30}", v in any::<u64>()) {
        let s = GroupState {
            id: GroupId([4; 32]),
            version: v,
            title,
            members: members.into_iter().map(|(a, admin)| (AccountId(a), if admin { Role::Admin } else { Role::Member })).collect(),
        };
        prop_assert_eq!(GroupState::decode(&s.encode()).unwrap(), s);
    }

    #[test]
    fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = Commit::decode(&bytes);
        let _ = GroupState::decode(&bytes);
    }
}

#[test]
fn a_removed_admin_cannot_win_back_with_a_longer_fork() {
    let mut log = GroupLog::genesis(genesis()).unwrap();
    let removal = on_genesis(1, vec![Op::Remove(acct(2))]);
    log.receive(removal.clone(), &acct(1)).unwrap();
    // Admin 2, still an admin of the first state, builds a longer branch on it.
    let mut id = root_id();
    let mut state = genesis();
    for i in 0..5u32 {
        let c = Commit::on(
            id,
            &state,
            acct(2),
            Some(&hash_of(i)),
            vec![Op::SetTitle(format!("mine {i}"))],
        );
        state = state.apply(&c).unwrap();
        id = c.id();
        log.receive(c, &acct(2)).unwrap();
    }
    assert_eq!(log.tip_id(), removal.id());
    assert!(!log.tip().is_member(&acct(2)));
    // A concurrent unrelated commit does not undo a removal either.
    let mut log = GroupLog::genesis(genesis()).unwrap();
    let rename = (0..32u8)
        .map(|k| {
            Commit::on(
                root_id(),
                &genesis(),
                acct(2),
                Some(&[k; 32]),
                vec![Op::SetTitle("x".into())],
            )
        })
        .min_by_key(Commit::id)
        .unwrap();
    let removal = on_genesis(1, vec![Op::Remove(acct(5))]);
    log.receive(rename, &acct(2)).unwrap();
    log.receive(removal.clone(), &acct(1)).unwrap();
    assert_eq!(log.tip_id(), removal.id());
}

#[test]
fn commits_are_bounded_in_bytes_and_waiting_ones_come_from_members() {
    let long = on_genesis(1, vec![Op::SetTitle("t".repeat(MAX_TITLE_LEN)); 600]);
    assert!(long.encode().len() > MAX_COMMIT_LEN);
    assert!(genesis().apply(&long).is_err());
    assert!(Commit::decode(&long.encode()).is_err());
    let mut log = GroupLog::genesis(genesis()).unwrap();
    let mut stranger = Commit::on([7; 32], &genesis(), acct(99), Some(&KEY), vec![Op::Rekey]);
    stranger.parent_version = 1;
    assert_eq!(log.receive(stranger, &acct(99)), Err(GroupError::NotAdmin));
}
