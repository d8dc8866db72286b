//! Group membership that converges (docs/protocol.md §14): the group's state, the commits
//! admins make to change it, and the tree of commits every device keeps.
//!
//! ```text
//! state     = 0x01 ‖ group_id (32) ‖ version (u64) ‖ title (var, ≤ 128, UTF-8)
//!             ‖ count (u16, ≤ 1000) ‖ count × (account_id (32) ‖ role (u8: 0 member, 1 admin))   ascending ids
//! commit    = 0x01 ‖ group_id (32) ‖ parent_version (u64) ‖ parent (32) ‖ author (32)
//!             ‖ key_commitment (32) ‖ count (u16, 1 ≤ count ≤ 1000) ‖ count × op
//! op        = 0x01 Add ‖ account_id (32) ‖ role | 0x02 Remove ‖ account_id (32)
//!           | 0x03 SetRole ‖ account_id (32) ‖ role | 0x04 SetTitle ‖ title (var, ≤ 128)
//!           | 0x05 Leave | 0x06 Rekey
//! commit_id = SHA-256("Sotto-v1 group commit" ‖ commit)
//! root id of a group's first state = SHA-256("Sotto-v1 group state" ‖ state)
//! key_commitment = SHA-256("Sotto-v1 group seal key" ‖ GK of the new state), or 32 zero
//!                  bytes when the author is not a member of the new state (it keeps the old key)
//! ```
//!
//! A commit names its parent by id: the commit that made the parent state, or the root's
//! id. It is valid on its parent when its author, who must be the authenticated sender of
//! the message that carried it, is an admin there (a member may commit a lone `Leave`).
//! Two admins who commit on one parent fork the tree. Every device resolves forks with
//! one rule that depends only on the commits it holds: from the root, at each state, go
//! to the child whose subtree reaches the highest version; among equals, prefer a child
//! that no sibling removes or demotes the author of; then the lowest commit id. The
//! author of a commit that lost makes it again on the winner (the SDK does this).
//!
//! Bounds: a device keeps [`WINDOW`] versions below its newest state, accepts commits on
//! a parent at most [`MAX_FORK_DEPTH`] versions below it, keeps at most [`MAX_NODES`]
//! states ([`MAX_CHILDREN`] per parent), at most [`MAX_PENDING`] commits waiting for their
//! parent ([`MAX_PENDING_PER_AUTHOR`] per author) and the ids of the last [`MAX_SEEN`]
//! commits it dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

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
/// The longest encoded commit (1,000 `Add` ops fit; a commit above it is refused when
/// made and when decoded, so what a device stores always loads again).
pub const MAX_COMMIT_LEN: usize = 64 * 1024;
/// The longest encoded state (1,000 members and the longest title).
pub const MAX_STATE_LEN: usize = 47 + MAX_TITLE_LEN + 33 * MAX_MEMBERS;
/// How many versions below the newest state a device keeps.
pub const WINDOW: u64 = 32;
/// A commit on a parent more versions than this below the newest state is `Stale`.
pub const MAX_FORK_DEPTH: u64 = 16;
/// The most states (the canonical chain and its forks) a device keeps per group.
pub const MAX_NODES: usize = 128;
/// The most commits kept on one parent.
pub const MAX_CHILDREN: usize = 8;
/// The most commits waiting for their parent.
pub const MAX_PENDING: usize = 128;
/// The most commits of one author waiting for their parent: two windows, so that one
/// admin's chain built on another's commit that is late fits.
pub const MAX_PENDING_PER_AUTHOR: usize = 2 * WINDOW as usize;
/// How many ids of dropped commits (pruned or evicted) a device remembers.
pub const MAX_SEEN: usize = 4096;
/// The key commitment of a commit whose author leaves the group: no new key.
pub const NO_KEY: [u8; 32] = [0; 32];

const STATE_LABEL: &[u8] = b"Sotto-v1 group state";
const COMMIT_LABEL: &[u8] = b"Sotto-v1 group commit";
const SEAL_KEY_LABEL: &[u8] = b"Sotto-v1 group seal key";

/// A group's id: 32 random bytes drawn by its creator, carried only inside encrypted content.
/// Shown as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct GroupId(pub [u8; 32]);

impl GroupId {
    /// The key of the group's conversation in stored messages and the outbox:
    /// `SHA-256("Sotto-v1 group conversation" ‖ id)`, so that no group id can stand for an
    /// account's conversation.
    pub fn conversation(&self) -> AccountId {
        let mut h = Sha256::new();
        h.update(b"Sotto-v1 group conversation");
        h.update(self.0);
        AccountId(h.finalize().into())
    }
}

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for GroupId {
    type Err = GroupError;

    /// 64 hex digits, either case, surrounding white space ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || GroupError::Decode(DecodeError::Invalid { field: "group id" });
        if s.len() != 64 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

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
    /// The author may not make this change, or is not who sent the commit.
    #[error("the author is not an admin of the group")]
    NotAdmin,
    /// A commit whose author is not a member of the new state commits to a key, or one
    /// whose author stays commits to none.
    #[error("the commit's key commitment does not fit its author")]
    BadKeyCommitment,
    /// More than [`MAX_MEMBERS`] members.
    #[error("more than {max} members")]
    TooManyMembers {
        /// The bound.
        max: usize,
    },
    /// A commit without operations, or with more than [`MAX_OPS`].
    #[error("commit without operations or with more than {max}")]
    Empty {
        /// The bound.
        max: usize,
    },
    /// The group's version cannot grow further.
    #[error("group version exhausted")]
    VersionExhausted,
    /// The parent is more than [`WINDOW`] versions below the newest state.
    #[error("commit on a state more than {window} versions old")]
    Stale {
        /// The window.
        window: u64,
    },
    /// Too many commits wait for their parent (of this author), or too many forks are kept.
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
    /// Only a new seal key (after a member left with the old one).
    Rekey,
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

    /// Checks a state given by someone else (a root): title and member bounds.
    pub fn validate(&self) -> Result<(), GroupError> {
        check_title(&self.title)?;
        if self.members.len() > MAX_MEMBERS {
            return Err(GroupError::TooManyMembers { max: MAX_MEMBERS });
        }
        Ok(())
    }

    /// The state after `commit`, or why the commit is not valid on this state. The caller
    /// checks that the commit names this state's id as its parent; this checks the
    /// group, the version, the author's rights, the operations and the key commitment.
    pub fn apply(&self, commit: &Commit) -> Result<Self, GroupError> {
        if commit.group_id != self.id {
            return Err(GroupError::WrongGroup);
        }
        if commit.parent_version != self.version {
            return Err(GroupError::WrongParent);
        }
        let version = self.version.checked_add(1).ok_or(GroupError::VersionExhausted)?;
        if commit.ops.is_empty() || commit.ops.len() > MAX_OPS {
            return Err(GroupError::Empty { max: MAX_OPS });
        }
        let len = commit.encode().len();
        if len > MAX_COMMIT_LEN {
            return Err(DecodeError::TooLong {
                field: "commit",
                len,
                max: MAX_COMMIT_LEN,
            }
            .into());
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
                Op::Rekey => {}
            }
        }
        if next.members.len() > MAX_MEMBERS {
            return Err(GroupError::TooManyMembers { max: MAX_MEMBERS });
        }
        // An author who is not in the new state does not choose its key.
        let stays = next.is_member(&commit.author);
        if stays == (commit.key_commitment == NO_KEY) {
            return Err(GroupError::BadKeyCommitment);
        }
        // A group with members always has an admin: the lowest account id becomes one.
        if !next.members.values().any(|r| *r == Role::Admin)
            && let Some(r) = next.members.values_mut().next()
        {
            *r = Role::Admin;
        }
        Ok(next)
    }

    /// True when `commit` removes or demotes `account`.
    fn demotes(commit: &Commit, account: &AccountId) -> bool {
        commit.ops.iter().any(|op| match op {
            Op::Remove(a) => a == account,
            Op::SetRole(a, Role::Member) => a == account,
            _ => false,
        })
    }
}

/// A change to a group, made by an admin on the state it holds.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Commit {
    /// The group.
    pub group_id: GroupId,
    /// The version of the state it changes.
    pub parent_version: u64,
    /// The id of the state it changes: the id of the commit that made it, or the root's id.
    pub parent: [u8; 32],
    /// Who made it.
    pub author: AccountId,
    /// `SHA-256("Sotto-v1 group seal key" ‖ GK)` of the new state's seal key, which travels
    /// beside the commit to those who stay members; [`NO_KEY`] when the author leaves.
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
    /// A commit of `ops` on the state `parent` whose id is `parent_id`; `seal_key` is the
    /// new state's key (`None` when the author leaves the group with this commit).
    pub fn on(
        parent_id: [u8; 32],
        parent: &GroupState,
        author: AccountId,
        seal_key: Option<&[u8; 32]>,
        ops: Vec<Op>,
    ) -> Self {
        Self {
            group_id: parent.id,
            parent_version: parent.version,
            parent: parent_id,
            author,
            key_commitment: seal_key.map(key_commitment).unwrap_or(NO_KEY),
            ops,
        }
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(171 + 34 * self.ops.len());
        out.put_u8(VERSION);
        out.put(&self.group_id.0);
        out.put_u64(self.parent_version);
        out.put(&self.parent);
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
                Op::Rekey => out.put_u8(6),
            }
        }
        out
    }

    /// Decodes a commit (1 to [`MAX_OPS`] operations, at most [`MAX_COMMIT_LEN`] bytes).
    pub fn decode(bytes: &[u8]) -> Result<Self, GroupError> {
        if bytes.len() > MAX_COMMIT_LEN {
            return Err(DecodeError::TooLong {
                field: "commit",
                len: bytes.len(),
                max: MAX_COMMIT_LEN,
            }
            .into());
        }
        let mut r = Reader::new(bytes);
        r.version(VERSION)?;
        let group_id = GroupId(r.array()?);
        let parent_version = r.u64()?;
        let parent = r.array()?;
        let author = AccountId(r.array()?);
        let key_commitment = r.array()?;
        let n = r.count("ops", MAX_OPS, 1)?;
        if n == 0 {
            return Err(GroupError::Empty { max: MAX_OPS });
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
                6 => Op::Rekey,
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
            parent,
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

/// One kept state, the commit that made it and how high its subtree reaches.
#[derive(Clone, Debug)]
struct Node {
    state: GroupState,
    /// The commit that made this state; `None` for the root.
    commit: Option<Commit>,
    /// The highest version of this state and its kept descendants.
    height: u64,
}

/// What [`GroupLog::receive`] did with a commit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Received {
    /// Applied; the newest state may have changed (compare [`GroupLog::tip`]).
    Applied,
    /// Kept until its parent arrives.
    Pending,
    /// Seen before (kept, pending, or dropped since).
    Duplicate,
}

/// What a device stores of a [`GroupLog`], and rebuilds it from.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LogParts {
    /// The root's id.
    pub root_id: [u8; 32],
    /// The root state.
    pub root: GroupState,
    /// The kept commits, parents before children.
    pub commits: Vec<Commit>,
    /// The commits waiting for their parent.
    pub pending: Vec<Commit>,
    /// Ids of dropped commits, oldest first, with whether each was on the canonical chain.
    pub seen: Vec<([u8; 32], bool)>,
}

impl LogParts {
    /// `0x01 ‖ root_id (32) ‖ root (var) ‖ count (u16) ‖ count × commit (var) ‖ count (u16)
    /// ‖ count × pending commit (var) ‖ count (u16) ‖ count × (id (32) ‖ canonical (u8))`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.put_u8(VERSION);
        out.put(&self.root_id);
        out.put_var(&self.root.encode());
        out.put_count(self.commits.len());
        for c in &self.commits {
            out.put_var(&c.encode());
        }
        out.put_count(self.pending.len());
        for c in &self.pending {
            out.put_var(&c.encode());
        }
        out.put_count(self.seen.len());
        for (id, canonical) in &self.seen {
            out.put(id);
            out.put_u8(u8::from(*canonical));
        }
        out
    }

    /// Decodes what [`LogParts::encode`] wrote, within the log's bounds.
    pub fn decode(bytes: &[u8]) -> Result<Self, GroupError> {
        let mut r = Reader::new(bytes);
        r.version(VERSION)?;
        let root_id = r.array()?;
        let root = GroupState::decode(r.var_bytes("root", MAX_STATE_LEN)?)?;
        let mut commits = Vec::new();
        for _ in 0..r.count("commits", MAX_NODES, 4)? {
            commits.push(Commit::decode(r.var_bytes("commit", MAX_COMMIT_LEN)?)?);
        }
        let mut pending = Vec::new();
        for _ in 0..r.count("pending", MAX_PENDING, 4)? {
            pending.push(Commit::decode(r.var_bytes("commit", MAX_COMMIT_LEN)?)?);
        }
        let mut seen = Vec::new();
        for _ in 0..r.count("seen", MAX_SEEN, 33)? {
            let id = r.array()?;
            seen.push((id, r.flag("canonical")?));
        }
        r.finish()?;
        Ok(Self {
            root_id,
            root,
            commits,
            pending,
            seen,
        })
    }
}

/// The commits of one group that a device keeps: a tree from a root, with the forks it
/// has seen, and the canonical chain through it.
#[derive(Clone, Debug)]
pub struct GroupLog {
    root: [u8; 32],
    nodes: HashMap<[u8; 32], Node>,
    /// Children of each kept state, by commit id.
    children: HashMap<[u8; 32], BTreeSet<[u8; 32]>>,
    /// Commits whose parent is not kept yet, by commit id.
    pending: BTreeMap<[u8; 32], Commit>,
    /// Ids of dropped commits (pruned below the root, or evicted), oldest first, and
    /// whether each was canonical when dropped.
    seen: VecDeque<([u8; 32], bool)>,
    seen_set: HashSet<[u8; 32]>,
    /// The end of the canonical chain.
    tip: [u8; 32],
}

impl GroupLog {
    /// A log for a group's first state; its id is `SHA-256("Sotto-v1 group state" ‖ state)`.
    pub fn genesis(state: GroupState) -> Result<Self, GroupError> {
        let id = state.hash();
        Self::new(id, state)
    }

    /// A log that starts at `root`, whose id is `root_id` (a device that joins is given
    /// both by an admin).
    pub fn new(root_id: [u8; 32], root: GroupState) -> Result<Self, GroupError> {
        root.validate()?;
        let mut nodes = HashMap::new();
        let height = root.version;
        nodes.insert(
            root_id,
            Node {
                state: root,
                commit: None,
                height,
            },
        );
        Ok(Self {
            root: root_id,
            nodes,
            children: HashMap::new(),
            pending: BTreeMap::new(),
            seen: VecDeque::new(),
            seen_set: HashSet::new(),
            tip: root_id,
        })
    }

    /// Rebuilds a log from what [`GroupLog::parts`] gave.
    pub fn from_parts(parts: LogParts) -> Result<Self, GroupError> {
        let mut log = Self::new(parts.root_id, parts.root)?;
        for (id, canonical) in parts.seen {
            log.remember(id, canonical);
        }
        for c in parts.commits {
            let id = c.id();
            log.insert(id, c)?;
        }
        for c in parts.pending {
            log.pending.insert(c.id(), c);
        }
        log.settle();
        Ok(log)
    }

    /// What to store to rebuild this log.
    pub fn parts(&self) -> LogParts {
        let mut commits: Vec<&Commit> = self.nodes.values().filter_map(|n| n.commit.as_ref()).collect();
        commits.sort_by_key(|c| (c.parent_version, c.id()));
        LogParts {
            root_id: self.root,
            root: self.root().clone(),
            commits: commits.into_iter().cloned().collect(),
            pending: self.pending.values().cloned().collect(),
            seen: self.seen.iter().copied().collect(),
        }
    }

    fn state(&self, id: &[u8; 32]) -> &GroupState {
        // Every id the log hands out (root, tip, parents on the chain) is a kept node.
        self.nodes
            .get(id)
            .map(|n| &n.state)
            .unwrap_or_else(|| unreachable_state())
    }

    /// The newest state on the canonical chain.
    pub fn tip(&self) -> &GroupState {
        self.state(&self.tip)
    }

    /// The id of the newest state (the commit that made it, or the root's id).
    pub fn tip_id(&self) -> [u8; 32] {
        self.tip
    }

    /// The state the kept tree starts from.
    pub fn root(&self) -> &GroupState {
        self.state(&self.root)
    }

    /// The root's id.
    pub fn root_id(&self) -> [u8; 32] {
        self.root
    }

    /// The commits of the canonical chain from the root, oldest first.
    pub fn canonical(&self) -> Vec<([u8; 32], &Commit)> {
        let mut out = Vec::new();
        let mut at = self.tip;
        while let Some(Node { commit: Some(c), .. }) = self.nodes.get(&at) {
            out.push((at, c));
            at = c.parent;
        }
        out.reverse();
        out
    }

    /// True when the commit is on the canonical chain, or was when it was pruned below
    /// the root.
    pub fn is_canonical(&self, commit_id: &[u8; 32]) -> bool {
        if self.seen_set.contains(commit_id) {
            return self.seen.iter().any(|(id, c)| id == commit_id && *c);
        }
        *commit_id == self.root || self.canonical().iter().any(|(id, _)| id == commit_id)
    }

    fn remember(&mut self, id: [u8; 32], canonical: bool) {
        if self.seen_set.insert(id) {
            self.seen.push_back((id, canonical));
            if self.seen.len() > MAX_SEEN
                && let Some((old, _)) = self.seen.pop_front()
            {
                self.seen_set.remove(&old);
            }
        }
    }

    /// Takes in a commit that `sender` (the authenticated sender of the message that
    /// carried it) sent. A commit that is not valid on its parent is refused and not kept.
    pub fn receive(&mut self, commit: Commit, sender: &AccountId) -> Result<Received, GroupError> {
        if commit.author != *sender {
            return Err(GroupError::NotAdmin);
        }
        if commit.group_id != self.root().id {
            return Err(GroupError::WrongGroup);
        }
        let id = commit.id();
        if self.nodes.contains_key(&id) || self.pending.contains_key(&id) || self.seen_set.contains(&id) {
            return Ok(Received::Duplicate);
        }
        let tip_version = self.tip().version;
        if commit.parent_version.saturating_add(MAX_FORK_DEPTH) < tip_version
            || commit.parent_version < self.root().version
        {
            return Err(GroupError::Stale { window: MAX_FORK_DEPTH });
        }
        if !self.nodes.contains_key(&commit.parent) {
            // Only a member of a state this device keeps may have commits wait here.
            if !self.nodes.values().any(|n| n.state.is_member(&commit.author)) {
                return Err(GroupError::NotAdmin);
            }
            if commit.parent_version > tip_version.saturating_add(WINDOW) {
                return Err(GroupError::Stale { window: WINDOW });
            }
            let by_author = self.pending.values().filter(|c| c.author == commit.author).count();
            if self.pending.len() >= MAX_PENDING || by_author >= MAX_PENDING_PER_AUTHOR {
                return Err(GroupError::Full);
            }
            self.pending.insert(id, commit);
            return Ok(Received::Pending);
        }
        self.insert(id, commit)?;
        self.settle();
        Ok(Received::Applied)
    }

    /// Places pending commits whose parent is now kept, then chooses the tip and prunes.
    fn settle(&mut self) {
        loop {
            let ready: Vec<[u8; 32]> = self
                .pending
                .iter()
                .filter(|(_, c)| self.nodes.contains_key(&c.parent))
                .map(|(id, _)| *id)
                .collect();
            if ready.is_empty() {
                break;
            }
            for id in ready {
                if let Some(c) = self.pending.remove(&id) {
                    // A pending commit that is not valid on its parent never applied
                    // anywhere: it is dropped, and remembered so it is not taken again.
                    if self.insert(id, c).is_err() {
                        self.remember(id, false);
                    }
                }
            }
        }
        self.choose_tip();
        self.prune();
    }

    fn insert(&mut self, id: [u8; 32], commit: Commit) -> Result<(), GroupError> {
        let parent = self.nodes.get(&commit.parent).ok_or(GroupError::WrongParent)?;
        let state = parent.state.apply(&commit)?;
        let siblings = self.children.get(&commit.parent).map_or(0, BTreeSet::len);
        if siblings >= MAX_CHILDREN {
            return Err(GroupError::Full);
        }
        if self.nodes.len() >= MAX_NODES && !(commit.parent == self.tip && self.evict_fork_leaf()) {
            return Err(GroupError::Full);
        }
        let version = state.version;
        let parent_id = commit.parent;
        self.children.entry(parent_id).or_default().insert(id);
        self.nodes.insert(
            id,
            Node {
                state,
                commit: Some(commit),
                height: version,
            },
        );
        // Raise the heights of its ancestors.
        let mut at = parent_id;
        while let Some(n) = self.nodes.get_mut(&at) {
            if n.height >= version {
                break;
            }
            n.height = version;
            match &n.commit {
                Some(c) => at = c.parent,
                None => break,
            }
        }
        Ok(())
    }

    /// Drops one leaf that is not on the canonical chain (the highest id), to make room
    /// for a commit on the tip. False when there is none.
    fn evict_fork_leaf(&mut self) -> bool {
        let canonical: HashSet<[u8; 32]> = self.canonical().iter().map(|(id, _)| *id).collect();
        let leaf = self
            .nodes
            .keys()
            .filter(|id| **id != self.root && !canonical.contains(*id))
            .filter(|id| self.children.get(*id).is_none_or(BTreeSet::is_empty))
            .max()
            .copied();
        let Some(leaf) = leaf else { return false };
        if let Some(n) = self.nodes.remove(&leaf)
            && let Some(c) = n.commit
        {
            if let Some(set) = self.children.get_mut(&c.parent) {
                set.remove(&leaf);
            }
            self.recompute_height(c.parent);
        }
        self.children.remove(&leaf);
        self.remember(leaf, false);
        true
    }

    /// Recomputes the heights from `id` up, after a descendant was dropped.
    fn recompute_height(&mut self, mut id: [u8; 32]) {
        loop {
            let Some(n) = self.nodes.get(&id) else { return };
            let own = n.state.version;
            let parent = n.commit.as_ref().map(|c| c.parent);
            let height = self
                .children
                .get(&id)
                .into_iter()
                .flatten()
                .filter_map(|c| self.nodes.get(c).map(|n| n.height))
                .fold(own, u64::max);
            if let Some(n) = self.nodes.get_mut(&id) {
                n.height = height;
            }
            match parent {
                Some(p) => id = p,
                None => return,
            }
        }
    }

    /// The child the canonical chain goes on to: one whose author no sibling removes or
    /// demotes; then one that removes a member; then the highest subtree; then the lowest
    /// commit id.
    fn choose(&self, parent: &[u8; 32]) -> Option<[u8; 32]> {
        let kids = self.children.get(parent)?;
        let commits: Vec<([u8; 32], &Node)> = kids
            .iter()
            .filter_map(|id| self.nodes.get(id).map(|n| (*id, n)))
            .collect();
        commits
            .iter()
            .map(|(id, n)| {
                let author = n.commit.as_ref().map(|c| c.author);
                let demoted = commits.iter().any(|(other, o)| {
                    other != id
                        && match (&o.commit, &author) {
                            (Some(oc), Some(a)) => GroupState::demotes(oc, a),
                            _ => false,
                        }
                });
                let removes = n
                    .commit
                    .as_ref()
                    .is_some_and(|c| c.ops.iter().any(|op| matches!(op, Op::Remove(_) | Op::Leave)));
                (demoted, !removes, std::cmp::Reverse(n.height), *id)
            })
            .min()
            .map(|(_, _, _, id)| id)
    }

    fn choose_tip(&mut self) {
        let mut at = self.root;
        while let Some(next) = self.choose(&at) {
            at = next;
        }
        self.tip = at;
    }

    /// Moves the root up the canonical chain to `WINDOW` versions below the tip and drops
    /// whatever does not descend from it (remembering the ids of what it drops).
    fn prune(&mut self) {
        let floor = self.tip().version.saturating_sub(WINDOW);
        if self.root().version >= floor {
            return;
        }
        let chain: Vec<[u8; 32]> = self.canonical().iter().map(|(id, _)| *id).collect();
        let Some(new_root) = chain
            .iter()
            .find(|id| self.nodes.get(*id).is_some_and(|n| n.state.version == floor))
            .copied()
        else {
            return;
        };
        let mut keep = HashSet::new();
        let mut stack = vec![new_root];
        while let Some(h) = stack.pop() {
            if keep.insert(h)
                && let Some(c) = self.children.get(&h)
            {
                stack.extend(c.iter().copied());
            }
        }
        let mut on_chain: HashSet<[u8; 32]> = chain.iter().copied().collect();
        on_chain.insert(self.root);
        let mut dropped: Vec<([u8; 32], u64)> = self
            .nodes
            .iter()
            .filter(|(id, _)| !keep.contains(*id))
            .map(|(id, n)| (*id, n.state.version))
            .collect();
        dropped.sort_by_key(|(id, v)| (*v, *id));
        for (id, _) in dropped {
            self.remember(id, on_chain.contains(&id));
        }
        self.nodes.retain(|id, _| keep.contains(id));
        self.children.retain(|id, _| keep.contains(id));
        if let Some(n) = self.nodes.get_mut(&new_root) {
            n.commit = None;
        }
        self.root = new_root;
        self.pending.retain(|_, c| c.parent_version >= floor);
    }
}

#[cold]
fn unreachable_state() -> &'static GroupState {
    // The root and the tip are kept nodes by construction (prune keeps the new root and
    // everything above it, and the tip descends from it; eviction never drops either);
    // abort rather than invent a state.
    std::process::abort()
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;
