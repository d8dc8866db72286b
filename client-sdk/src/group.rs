//! Group membership that converges (docs/protocol.md §14): the group's state, the commits
//! admins make to change it, and the chain every device keeps of them.
//!
//! ```text
//! state     = 0x01 ‖ group_id (32) ‖ version (u64) ‖ title (var, ≤ 128, UTF-8)
//!             ‖ count (u16, ≤ 1000) ‖ count × (account_id (32) ‖ role (u8: 0 member, 1 admin))   ascending ids
//! state_hash = SHA-256("Sotto-v1 group state" ‖ state)
//! commit    = 0x01 ‖ group_id (32) ‖ parent_version (u64) ‖ parent_hash (32) ‖ author (32)
//!             ‖ key_commitment (32) ‖ count (u16, 1 ≤ count ≤ 1000) ‖ count × op
//! op        = 0x01 Add ‖ account_id (32) ‖ role | 0x02 Remove ‖ account_id (32)
//!           | 0x03 SetRole ‖ account_id (32) ‖ role | 0x04 SetTitle ‖ title (var, ≤ 128) | 0x05 Leave
//! commit_id = SHA-256("Sotto-v1 group commit" ‖ commit)
//! key_commitment = SHA-256("Sotto-v1 group seal key" ‖ GK of the new state)
//! ```
//!
//! Every state has a parent, except the group's first. An admin changes the group by a
//! commit on the state it holds; a commit is valid on its parent when its author is an
//! admin there (a member may commit a lone `Leave`). Two admins who commit on the same
//! parent fork the chain. Every device resolves forks the same way: from the oldest state
//! it keeps, it follows at each version the child whose `commit_id` is lowest. So devices
//! that hold the same commits hold the same state, whatever order the commits arrived in.
//! The author of a commit that lost makes it again on the winner (the SDK does this), so
//! both admins' changes take effect.
//!
//! Bounds: a device keeps the states of the last [`WINDOW`] versions and their forks
//! ([`MAX_NODES`] in all), and at most [`MAX_PENDING`] commits whose parent it has not
//! seen yet. A commit on a parent more than [`WINDOW`] versions below the newest state is
//! `Stale`: its author makes it again.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sha2::{Digest, Sha256};
use sotto_crypto::AccountId;
use sotto_crypto::codec::{DecodeError, Put, Reader};
use thiserror::Error;

const VERSION: u8 = 1;
/// The most members of a group.
pub const MAX_MEMBERS: usize = 1000;
/// The longest title, in bytes.
pub const MAX_TITLE_LEN: usize = 128;
/// The most operations in one commit.
pub const MAX_OPS: usize = MAX_MEMBERS;
/// How many versions below the newest state a device keeps, and accepts commits on.
pub const WINDOW: u64 = 64;
/// The most states (the canonical chain and its forks) a device keeps per group.
pub const MAX_NODES: usize = 256;
/// The most commits waiting for their parent.
pub const MAX_PENDING: usize = 256;

const STATE_LABEL: &[u8] = b"Sotto-v1 group state";
const COMMIT_LABEL: &[u8] = b"Sotto-v1 group commit";
const SEAL_KEY_LABEL: &[u8] = b"Sotto-v1 group seal key";

/// A group's id: 32 random bytes drawn by its creator, carried only inside encrypted content.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct GroupId(pub [u8; 32]);

/// What a member may do.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Role {
    /// Sends and reads.
    Member,
    /// Also changes the group.
    Admin,
}

impl Role {
    fn byte(self) -> u8 {
        match self {
            Self::Member => 0,
            Self::Admin => 1,
        }
    }

    fn from_byte(b: u8) -> Result<Self, DecodeError> {
        match b {
            0 => Ok(Self::Member),
            1 => Ok(Self::Admin),
            _ => Err(DecodeError::Invalid { field: "role" }),
        }
    }
}

/// Why a commit or a state is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum GroupError {
    /// The bytes do not decode.
    #[error("group data does not decode: {0}")]
    Decode(#[from] DecodeError),
    /// A title that is not UTF-8.
    #[error("title is not UTF-8")]
    NotUtf8,
    /// The commit is for another group.
    #[error("commit for another group")]
    WrongGroup,
    /// The commit's parent is not the state it is applied to.
    #[error("commit does not follow this state")]
    WrongParent,
    /// The author may not make this change.
    #[error("the author is not an admin of the group")]
    NotAdmin,
    /// More than [`MAX_MEMBERS`] members.
    #[error("more than {max} members")]
    TooManyMembers {
        /// The bound.
        max: usize,
    },
    /// A commit without operations.
    #[error("commit without operations")]
    Empty,
    /// The group's version cannot grow further.
    #[error("group version exhausted")]
    VersionExhausted,
    /// The parent is more than [`WINDOW`] versions below the newest state.
    #[error("commit on a state more than {window} versions old")]
    Stale {
        /// The window.
        window: u64,
    },
    /// Too many commits wait for their parent, or too many forks are kept.
    #[error("too many pending commits or forks")]
    Full,
}

/// One change in a commit.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Op {
    /// Adds an account with a role (no change if it is a member already).
    Add(AccountId, Role),
    /// Removes a member (no change if it is not one).
    Remove(AccountId),
    /// Changes a member's role (no change if it is not a member).
    SetRole(AccountId, Role),
    /// Renames the group.
    SetTitle(String),
    /// The author leaves.
    Leave,
}

/// The group's state at one version.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct GroupState {
    /// The group.
    pub id: GroupId,
    /// 0 for the first state, one more for each commit.
    pub version: u64,
    /// The title.
    pub title: String,
    /// Members and their roles.
    pub members: BTreeMap<AccountId, Role>,
}

fn check_title(title: &str) -> Result<(), GroupError> {
    if title.len() > MAX_TITLE_LEN {
        return Err(DecodeError::TooLong {
            field: "title",
            len: title.len(),
            max: MAX_TITLE_LEN,
        }
        .into());
    }
    Ok(())
}

fn read_title(r: &mut Reader<'_>) -> Result<String, GroupError> {
    let bytes = r.var_bytes("title", MAX_TITLE_LEN)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| GroupError::NotUtf8)
}

impl GroupState {
    /// The first state: `creator` is an admin, `members` join with their roles.
    pub fn genesis(
        id: GroupId,
        creator: AccountId,
        title: &str,
        members: &[(AccountId, Role)],
    ) -> Result<Self, GroupError> {
        check_title(title)?;
        let mut all: BTreeMap<AccountId, Role> = members.iter().copied().collect();
        all.insert(creator, Role::Admin);
        if all.len() > MAX_MEMBERS {
            return Err(GroupError::TooManyMembers { max: MAX_MEMBERS });
        }
        Ok(Self {
            id,
            version: 0,
            title: title.to_owned(),
            members: all,
        })
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(47 + self.title.len() + 33 * self.members.len());
        out.put_u8(VERSION);
        out.put(&self.id.0);
        out.put_u64(self.version);
        out.put_var(self.title.as_bytes());
        out.put_count(self.members.len());
        for (a, r) in &self.members {
            out.put(&a.0);
            out.put_u8(r.byte());
        }
        out
    }

    /// Decodes a state; members must be in strictly ascending order.
    pub fn decode(bytes: &[u8]) -> Result<Self, GroupError> {
        let mut r = Reader::new(bytes);
        r.version(VERSION)?;
        let id = GroupId(r.array()?);
        let version = r.u64()?;
        let title = read_title(&mut r)?;
        let n = r.count("members", MAX_MEMBERS, 33)?;
        let mut members = BTreeMap::new();
        let mut last: Option<AccountId> = None;
        for _ in 0..n {
            let a = AccountId(r.array()?);
            if last.is_some_and(|l| l >= a) {
                return Err(DecodeError::Invalid { field: "member order" }.into());
            }
            last = Some(a);
            members.insert(a, Role::from_byte(r.u8()?)?);
        }
        r.finish()?;
        Ok(Self {
            id,
            version,
            title,
            members,
        })
    }

    /// `SHA-256("Sotto-v1 group state" ‖ state)`.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(STATE_LABEL);
        h.update(self.encode());
        h.finalize().into()
    }

    /// True for a member.
    pub fn is_member(&self, a: &AccountId) -> bool {
        self.members.contains_key(a)
    }

    /// True for an admin.
    pub fn is_admin(&self, a: &AccountId) -> bool {
        self.members.get(a) == Some(&Role::Admin)
    }

    /// The state after `commit`, or why the commit is not valid on this state.
    pub fn apply(&self, commit: &Commit) -> Result<Self, GroupError> {
        if commit.group_id != self.id {
            return Err(GroupError::WrongGroup);
        }
        if commit.parent_version != self.version || commit.parent_hash != self.hash() {
            return Err(GroupError::WrongParent);
        }
        let version = self.version.checked_add(1).ok_or(GroupError::VersionExhausted)?;
        if commit.ops.is_empty() {
            return Err(GroupError::Empty);
        }
        let lone_leave = commit.ops == [Op::Leave] && self.is_member(&commit.author);
        if !self.is_admin(&commit.author) && !lone_leave {
            return Err(GroupError::NotAdmin);
        }
        let mut next = self.clone();
        next.version = version;
        for op in &commit.ops {
            match op {
                Op::Add(a, role) => {
                    next.members.entry(*a).or_insert(*role);
                }
                Op::Remove(a) => {
                    next.members.remove(a);
                }
                Op::SetRole(a, role) => {
                    if let Some(r) = next.members.get_mut(a) {
                        *r = *role;
                    }
                }
                Op::SetTitle(t) => {
                    check_title(t)?;
                    next.title.clone_from(t);
                }
                Op::Leave => {
                    next.members.remove(&commit.author);
                }
            }
        }
        if next.members.len() > MAX_MEMBERS {
            return Err(GroupError::TooManyMembers { max: MAX_MEMBERS });
        }
        // A group with members always has an admin: the lowest account id becomes one.
        if !next.members.values().any(|r| *r == Role::Admin)
            && let Some(r) = next.members.values_mut().next()
        {
            *r = Role::Admin;
        }
        Ok(next)
    }
}

/// A change to a group, made by an admin on the state it holds.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Commit {
    /// The group.
    pub group_id: GroupId,
    /// The version of the state it changes.
    pub parent_version: u64,
    /// The hash of the state it changes.
    pub parent_hash: [u8; 32],
    /// Who made it.
    pub author: AccountId,
    /// `SHA-256("Sotto-v1 group seal key" ‖ GK)` of the new state's seal key, which travels
    /// beside the commit to those who stay members.
    pub key_commitment: [u8; 32],
    /// The changes, applied in order.
    pub ops: Vec<Op>,
}

/// The commitment to a seal key that a commit carries.
pub fn key_commitment(seal_key: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(SEAL_KEY_LABEL);
    h.update(seal_key);
    h.finalize().into()
}

impl Commit {
    /// A commit of `ops` on `parent`.
    pub fn on(parent: &GroupState, author: AccountId, seal_key: &[u8; 32], ops: Vec<Op>) -> Self {
        Self {
            group_id: parent.id,
            parent_version: parent.version,
            parent_hash: parent.hash(),
            author,
            key_commitment: key_commitment(seal_key),
            ops,
        }
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(171 + 34 * self.ops.len());
        out.put_u8(VERSION);
        out.put(&self.group_id.0);
        out.put_u64(self.parent_version);
        out.put(&self.parent_hash);
        out.put(&self.author.0);
        out.put(&self.key_commitment);
        out.put_count(self.ops.len());
        for op in &self.ops {
            match op {
                Op::Add(a, r) => {
                    out.put_u8(1);
                    out.put(&a.0);
                    out.put_u8(r.byte());
                }
                Op::Remove(a) => {
                    out.put_u8(2);
                    out.put(&a.0);
                }
                Op::SetRole(a, r) => {
                    out.put_u8(3);
                    out.put(&a.0);
                    out.put_u8(r.byte());
                }
                Op::SetTitle(t) => {
                    out.put_u8(4);
                    out.put_var(t.as_bytes());
                }
                Op::Leave => out.put_u8(5),
            }
        }
        out
    }

    /// Decodes a commit (1 to [`MAX_OPS`] operations).
    pub fn decode(bytes: &[u8]) -> Result<Self, GroupError> {
        let mut r = Reader::new(bytes);
        r.version(VERSION)?;
        let group_id = GroupId(r.array()?);
        let parent_version = r.u64()?;
        let parent_hash = r.array()?;
        let author = AccountId(r.array()?);
        let key_commitment = r.array()?;
        let n = r.count("ops", MAX_OPS, 1)?;
        if n == 0 {
            return Err(GroupError::Empty);
        }
        let mut ops = Vec::with_capacity(n);
        for _ in 0..n {
            let kind = r.u8()?;
            ops.push(match kind {
                1 => Op::Add(AccountId(r.array()?), Role::from_byte(r.u8()?)?),
                2 => Op::Remove(AccountId(r.array()?)),
                3 => Op::SetRole(AccountId(r.array()?), Role::from_byte(r.u8()?)?),
                4 => Op::SetTitle(read_title(&mut r)?),
                5 => Op::Leave,
                _ => {
                    return Err(DecodeError::UnknownType {
                        field: "group op",
                        value: kind,
                    }
                    .into());
                }
            });
        }
        r.finish()?;
        Ok(Self {
            group_id,
            parent_version,
            parent_hash,
            author,
            key_commitment,
            ops,
        })
    }

    /// `SHA-256("Sotto-v1 group commit" ‖ commit)`: the fork choice follows the lowest.
    pub fn id(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(COMMIT_LABEL);
        h.update(self.encode());
        h.finalize().into()
    }
}

/// One kept state and the commit that made it.
#[derive(Clone, Debug)]
struct Node {
    state: GroupState,
    /// The commit that made this state, and its parent's hash; `None` for the root.
    via: Option<([u8; 32], Commit)>,
}

/// What [`GroupLog::receive`] did with a commit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Received {
    /// Applied; the newest state may have changed (compare [`GroupLog::tip`]).
    Applied,
    /// Kept until its parent arrives.
    Pending,
    /// Seen before.
    Duplicate,
}

/// The chain of one group's states that a device keeps, with the forks it has seen.
#[derive(Clone, Debug)]
pub struct GroupLog {
    root: [u8; 32],
    nodes: HashMap<[u8; 32], Node>,
    /// Children of each kept state: commit id → child state hash.
    children: HashMap<[u8; 32], BTreeMap<[u8; 32], [u8; 32]>>,
    /// Commits whose parent is not kept yet, by commit id.
    pending: BTreeMap<[u8; 32], Commit>,
    tip: [u8; 32],
}

impl GroupLog {
    /// A log that starts at `root` (the group's first state, or the state a device was
    /// given when it joined).
    pub fn new(root: GroupState) -> Self {
        let hash = root.hash();
        let mut nodes = HashMap::new();
        nodes.insert(hash, Node { state: root, via: None });
        Self {
            root: hash,
            nodes,
            children: HashMap::new(),
            pending: BTreeMap::new(),
            tip: hash,
        }
    }

    /// The newest state on the canonical chain.
    pub fn tip(&self) -> &GroupState {
        // The tip is always a kept node; fall back to the root for safety.
        self.nodes
            .get(&self.tip)
            .or_else(|| self.nodes.get(&self.root))
            .map(|n| &n.state)
            .unwrap_or_else(|| unreachable_state())
    }

    /// True when the commit is on the canonical chain.
    pub fn is_canonical(&self, commit_id: &[u8; 32]) -> bool {
        self.canonical_commits().iter().any(|(id, _)| id == commit_id)
    }

    /// The commits of the canonical chain from the root, oldest first.
    pub fn canonical_commits(&self) -> Vec<([u8; 32], Commit)> {
        let mut out = Vec::new();
        let mut at = self.tip;
        while let Some(Node { via: Some((id, c)), .. }) = self.nodes.get(&at) {
            out.push((*id, c.clone()));
            at = c.parent_hash;
        }
        out.reverse();
        out
    }

    /// The state the chain starts from.
    pub fn root(&self) -> &GroupState {
        self.nodes
            .get(&self.root)
            .map(|n| &n.state)
            .unwrap_or_else(|| unreachable_state())
    }

    /// Every commit kept (on any fork, and pending), so that the log can be stored and
    /// rebuilt with [`GroupLog::new`] on [`GroupLog::root`] and [`GroupLog::receive`].
    pub fn commits(&self) -> Vec<Commit> {
        let mut kept: Vec<&Commit> = self
            .nodes
            .values()
            .filter_map(|n| n.via.as_ref().map(|(_, c)| c))
            .collect();
        kept.sort_by_key(|c| c.parent_version);
        kept.into_iter().chain(self.pending.values()).cloned().collect()
    }

    /// Takes a commit in. A commit that is not valid on its parent is refused and not kept.
    pub fn receive(&mut self, commit: Commit) -> Result<Received, GroupError> {
        let id = commit.id();
        if self.pending.contains_key(&id) || self.children.values().any(|c| c.contains_key(&id)) {
            return Ok(Received::Duplicate);
        }
        let root_version = self.root().version;
        if commit.parent_version < root_version {
            return Err(GroupError::Stale { window: WINDOW });
        }
        if commit.group_id != self.root().id {
            return Err(GroupError::WrongGroup);
        }
        if !self.nodes.contains_key(&commit.parent_hash) {
            if commit.parent_version > self.tip().version.saturating_add(WINDOW) {
                return Err(GroupError::Stale { window: WINDOW });
            }
            if self.pending.len() >= MAX_PENDING {
                return Err(GroupError::Full);
            }
            self.pending.insert(id, commit);
            return Ok(Received::Pending);
        }
        self.insert(id, commit)?;
        // Pending commits whose parent is now kept, until none is left to place.
        loop {
            let ready: Vec<[u8; 32]> = self
                .pending
                .iter()
                .filter(|(_, c)| self.nodes.contains_key(&c.parent_hash))
                .map(|(id, _)| *id)
                .collect();
            if ready.is_empty() {
                break;
            }
            for pid in ready {
                if let Some(c) = self.pending.remove(&pid) {
                    // An invalid pending commit is dropped; it never applied anywhere.
                    let _ = self.insert(pid, c);
                }
            }
        }
        self.choose_tip();
        self.prune();
        Ok(Received::Applied)
    }

    fn insert(&mut self, id: [u8; 32], commit: Commit) -> Result<(), GroupError> {
        if self.nodes.len() >= MAX_NODES {
            return Err(GroupError::Full);
        }
        let parent = self.nodes.get(&commit.parent_hash).ok_or(GroupError::WrongParent)?;
        let state = parent.state.apply(&commit)?;
        let hash = state.hash();
        self.children.entry(commit.parent_hash).or_default().insert(id, hash);
        self.nodes.insert(
            hash,
            Node {
                state,
                via: Some((id, commit)),
            },
        );
        Ok(())
    }

    /// From the root, the lowest commit id at every version.
    fn choose_tip(&mut self) {
        let mut at = self.root;
        let mut seen = BTreeSet::new();
        while let Some((_, child)) = self.children.get(&at).and_then(|c| c.iter().next()) {
            if !seen.insert(*child) {
                break;
            }
            at = *child;
        }
        self.tip = at;
    }

    /// Moves the root up the canonical chain to `WINDOW` versions below the tip and drops
    /// whatever does not descend from it.
    fn prune(&mut self) {
        let tip_version = self.tip().version;
        let floor = tip_version.saturating_sub(WINDOW);
        if self.root().version >= floor {
            return;
        }
        let chain = self.canonical_commits();
        let Some(new_root) = chain
            .iter()
            .filter_map(|(id, c)| self.children.get(&c.parent_hash).and_then(|m| m.get(id)))
            .find(|h| self.nodes.get(*h).is_some_and(|n| n.state.version == floor))
            .copied()
        else {
            return;
        };
        let mut keep = BTreeSet::new();
        let mut stack = vec![new_root];
        while let Some(h) = stack.pop() {
            if keep.insert(h)
                && let Some(c) = self.children.get(&h)
            {
                stack.extend(c.values().copied());
            }
        }
        self.nodes.retain(|h, _| keep.contains(h));
        self.children.retain(|h, _| keep.contains(h));
        if let Some(n) = self.nodes.get_mut(&new_root) {
            n.via = None;
        }
        self.root = new_root;
        self.pending.retain(|_, c| c.parent_version >= floor);
    }
}

#[cold]
fn unreachable_state() -> &'static GroupState {
    // The root and the tip are kept nodes by construction (prune keeps the new root and
    // everything below it, and the tip descends from it); abort rather than invent a state.
    std::process::abort()
}

#[cfg(test)]
mod tests;
