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

#[test]
fn only_admins_change_the_group_and_members_may_leave() {
    let g = genesis();
    let by_member = Commit::on(&g, acct(3), &KEY, vec![Op::Add(acct(9), Role::Member)]);
    assert_eq!(g.apply(&by_member), Err(GroupError::NotAdmin));
    let outsider = Commit::on(&g, acct(9), &KEY, vec![Op::Leave]);
    assert_eq!(g.apply(&outsider), Err(GroupError::NotAdmin));
    let leave = Commit::on(&g, acct(3), &KEY, vec![Op::Leave]);
    let after = g.apply(&leave).unwrap();
    assert!(!after.is_member(&acct(3)));
    assert_eq!(after.version, 1);
    let add = Commit::on(
        &g,
        acct(2),
        &KEY,
        vec![Op::Add(acct(9), Role::Member), Op::SetTitle("renamed".into())],
    );
    let after = g.apply(&add).unwrap();
    assert!(after.is_member(&acct(9)));
    assert_eq!(after.title, "renamed");
    // On any other state the commit does not apply.
    assert_eq!(after.apply(&add), Err(GroupError::WrongParent));
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
    let after = g.apply(&Commit::on(&g, acct(7), &KEY, vec![Op::Leave])).unwrap();
    assert!(after.is_admin(&acct(3)));
    assert!(!after.is_admin(&acct(5)));
}

#[test]
fn sizes_are_bounded() {
    let g = genesis();
    let many: Vec<Op> = (0..MAX_MEMBERS as u32)
        .map(|i| Op::Add(AccountId(hash_of(i)), Role::Member))
        .collect();
    let c = Commit::on(&g, acct(1), &KEY, many);
    assert_eq!(g.apply(&c), Err(GroupError::TooManyMembers { max: MAX_MEMBERS }));
    assert!(
        Commit::decode(&c.encode()).is_ok(),
        "a commit of MAX_OPS operations decodes"
    );
    let long = Commit::on(&g, acct(1), &KEY, vec![Op::SetTitle("x".repeat(MAX_TITLE_LEN + 1))]);
    assert!(g.apply(&long).is_err());
    assert!(Commit::decode(&long.encode()).is_err());
    let mut empty = Commit::on(&g, acct(1), &KEY, vec![Op::Leave]);
    empty.ops.clear();
    assert_eq!(Commit::decode(&empty.encode()), Err(GroupError::Empty));
    assert_eq!(g.apply(&empty), Err(GroupError::Empty));
}

fn hash_of(i: u32) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(i.to_be_bytes());
    h.finalize().into()
}

#[test]
fn decoding_is_canonical() {
    let g = genesis();
    let bytes = g.encode();
    assert_eq!(GroupState::decode(&bytes).unwrap(), g);
    // Swap the first two members: out of order.
    let mut swapped = bytes.clone();
    let start = 1 + 32 + 8 + 4 + 4 + 2;
    let (a, b) = (
        swapped[start..start + 33].to_vec(),
        swapped[start + 33..start + 66].to_vec(),
    );
    swapped[start..start + 33].copy_from_slice(&b);
    swapped[start + 33..start + 66].copy_from_slice(&a);
    assert!(GroupState::decode(&swapped).is_err());
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(GroupState::decode(&trailing).is_err());
    let mut bad_role = bytes;
    bad_role[start + 32] = 2;
    assert!(GroupState::decode(&bad_role).is_err());
}

#[test]
fn a_fork_resolves_to_the_lowest_commit_id_in_any_order() {
    let g = genesis();
    let a = Commit::on(&g, acct(1), &KEY, vec![Op::Add(acct(10), Role::Member)]);
    let b = Commit::on(&g, acct(2), &KEY, vec![Op::Add(acct(11), Role::Member)]);
    let winner = if a.id() < b.id() { &a } else { &b };
    let mut x = GroupLog::new(g.clone());
    let mut y = GroupLog::new(g.clone());
    x.receive(a.clone()).unwrap();
    x.receive(b.clone()).unwrap();
    y.receive(b.clone()).unwrap();
    y.receive(a.clone()).unwrap();
    assert_eq!(x.tip(), y.tip());
    assert!(x.is_canonical(&winner.id()));
    assert_eq!(x.receive(a.clone()).unwrap(), Received::Duplicate);
}

#[test]
fn a_commit_waits_for_its_parent_and_old_ones_are_stale() {
    let g = genesis();
    let c1 = Commit::on(&g, acct(1), &KEY, vec![Op::SetTitle("1".into())]);
    let s1 = g.apply(&c1).unwrap();
    let c2 = Commit::on(&s1, acct(1), &KEY, vec![Op::SetTitle("2".into())]);
    let mut log = GroupLog::new(g.clone());
    assert_eq!(log.receive(c2.clone()).unwrap(), Received::Pending);
    assert_eq!(log.tip().version, 0);
    assert_eq!(log.receive(c1).unwrap(), Received::Applied);
    assert_eq!(log.tip().title, "2");
    // Run the chain past the window: the root moves, an old fork is refused.
    let mut state = log.tip().clone();
    for i in 0..WINDOW + 5 {
        let c = Commit::on(&state, acct(1), &KEY, vec![Op::SetTitle(format!("t{i}"))]);
        state = state.apply(&c).unwrap();
        log.receive(c).unwrap();
    }
    assert_eq!(log.tip(), &state);
    assert_eq!(log.root().version, state.version - WINDOW);
    let old = Commit::on(&g, acct(2), &KEY, vec![Op::SetTitle("late".into())]);
    assert_eq!(log.receive(old), Err(GroupError::Stale { window: WINDOW }));
    // Rebuilt from its root and its commits, a log has the same tip.
    let mut rebuilt = GroupLog::new(log.root().clone());
    for c in log.commits() {
        rebuilt.receive(c).unwrap();
    }
    assert_eq!(rebuilt.tip(), log.tip());
}

#[test]
fn pending_commits_are_bounded() {
    let g = genesis();
    let mut log = GroupLog::new(g.clone());
    for i in 0..MAX_PENDING as u64 {
        let mut c = Commit::on(&g, acct(1), &KEY, vec![Op::Leave]);
        c.parent_hash = hash_of(i as u32);
        c.parent_version = 1;
        assert_eq!(log.receive(c).unwrap(), Received::Pending);
    }
    let mut c = Commit::on(&g, acct(1), &KEY, vec![Op::Leave]);
    c.parent_hash = [0xee; 32];
    c.parent_version = 1;
    assert_eq!(log.receive(c), Err(GroupError::Full));
    let mut far = Commit::on(&g, acct(1), &KEY, vec![Op::Leave]);
    far.parent_version = WINDOW + 1;
    far.parent_hash = [0xef; 32];
    assert_eq!(log.receive(far), Err(GroupError::Stale { window: WINDOW }));
}

/// One device of the simulation: its account and its log.
struct Sim {
    account: AccountId,
    log: GroupLog,
    inbox: Vec<Commit>,
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
    /// Intent `usize` no longer changes anything (realized by another, or not allowed): drop it.
    Drop(usize),
}

/// The admin's next action: make its first intent not yet attempted, or make again one
/// whose attempt lost (not canonical on the admin's own device). `None`: nothing to do.
fn next_action(sim: &Sim, intents: &[Intent]) -> Option<Action> {
    let tip = sim.log.tip();
    intents.iter().enumerate().find_map(|(i, intent)| {
        let lost = match intent.attempt {
            None => true,
            Some(id) => !intent.ops.is_empty() && !sim.log.is_canonical(&id),
        };
        lost.then(|| match would_change(tip, sim.account, &intent.ops) {
            Some(c) => Action::Commit(i, c),
            None => Action::Drop(i),
        })
    })
}

/// True when `ops` by `author` would change `state` (so the intent is not yet realized).
fn would_change(state: &GroupState, author: AccountId, ops: &[Op]) -> Option<Commit> {
    let c = Commit::on(state, author, &KEY, ops.to_vec());
    let next = state.apply(&c).ok()?;
    (next.members != state.members || next.title != state.title).then_some(c)
}

/// Two admins (accounts 1 and 2, device 0 and 1; account 1 has a second device, 5) make
/// their intents concurrently; every commit goes to every other device and arrives in a
/// random order. An admin whose attempt is not canonical on its own device makes it again
/// on its tip, as the SDK does, unless it no longer changes anything or it is no longer an
/// admin. Returns the devices' tips once every queue is empty.
fn run(seed: u64, intents_a: Vec<Vec<Op>>, intents_b: Vec<Vec<Op>>) -> Vec<GroupState> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed); // test only
    let g = genesis();
    let accounts = [acct(1), acct(2), acct(3), acct(4), acct(5), acct(1)];
    let mut sims: Vec<Sim> = accounts
        .iter()
        .map(|a| Sim {
            account: *a,
            log: GroupLog::new(g.clone()),
            inbox: Vec::new(),
        })
        .collect();
    let mut intents: [Vec<Intent>; 2] =
        [intents_a, intents_b].map(|list| list.into_iter().map(|ops| Intent { ops, attempt: None }).collect());
    for _step in 0..100_000 {
        let mut progressed = false;
        for admin in 0..2 {
            if rng.next_u32() % 3 != 0 {
                continue;
            }
            let Some(action) = next_action(&sims[admin], &intents[admin]) else {
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
            sims[admin].log.receive(c.clone()).unwrap();
            for (d, s) in sims.iter_mut().enumerate() {
                if d != admin {
                    s.inbox.push(c.clone());
                }
            }
        }
        // One delivery to a random device, of a random commit in its inbox.
        let busy: Vec<usize> = (0..sims.len()).filter(|i| !sims[*i].inbox.is_empty()).collect();
        if !busy.is_empty() {
            let d = busy[(rng.next_u32() as usize) % busy.len()];
            let k = (rng.next_u32() as usize) % sims[d].inbox.len();
            let c = sims[d].inbox.swap_remove(k);
            sims[d].log.receive(c).unwrap();
            progressed = true;
        }
        let idle = (0..2).all(|a| next_action(&sims[a], &intents[a]).is_none());
        if !progressed && busy.is_empty() && idle {
            break;
        }
    }
    let idle = (0..2).all(|a| next_action(&sims[a], &intents[a]).is_none());
    assert!(idle, "seed {seed}: intents left");
    assert!(sims.iter().all(|s| s.inbox.is_empty()), "seed {seed}: deliveries left");
    sims.into_iter().map(|s| s.log.tip().clone()).collect()
}

#[test]
fn concurrent_changes_by_two_admins_converge_with_both_applied() {
    for seed in 0..300 {
        let tips = run(
            seed,
            vec![
                vec![Op::Add(acct(10), Role::Member)],
                vec![Op::SetTitle("from A".into())],
            ],
            vec![vec![Op::Add(acct(11), Role::Member)], vec![Op::Remove(acct(5))]],
        );
        let first = &tips[0];
        assert!(tips.iter().all(|t| t == first), "seed {seed}: devices disagree");
        assert!(first.is_member(&acct(10)) && first.is_member(&acct(11)), "seed {seed}");
        assert!(!first.is_member(&acct(5)), "seed {seed}");
        assert_eq!(first.title, "from A", "seed {seed}");
    }
}

#[test]
fn conflicting_admin_changes_converge() {
    // Each admin removes the other: exactly one of them stays, the same on every device.
    for seed in 0..300 {
        let tips = run(seed, vec![vec![Op::Remove(acct(2))]], vec![vec![Op::Remove(acct(1))]]);
        let first = &tips[0];
        assert!(tips.iter().all(|t| t == first), "seed {seed}: devices disagree");
        assert!(first.is_member(&acct(1)) != first.is_member(&acct(2)), "seed {seed}");
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
    ]
}

proptest! {
    #[test]
    fn commits_round_trip(ops in prop::collection::vec(op(), 1..20), v in any::<u64>(), parent in any::<[u8; 32]>()) {
        let c = Commit {
            group_id: GroupId([3; 32]),
            parent_version: v,
            parent_hash: parent,
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
