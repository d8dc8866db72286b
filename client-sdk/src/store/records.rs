//! Byte encodings of the stored values (SQLite and IndexedDB stores).

use sotto_crypto::codec::{DecodeError, Put, Reader};
use sotto_crypto::{AccountId, DeviceId};

use super::{
    AccountRecord, ConversationRecord, GroupRecord, MAX_NAME_LEN, MAX_OWN_COMMITS, MAX_REACTIONS, MAX_SEAL_KEYS,
    MAX_SENDER_CHAINS, MessageKind, MessageStatus, OutboxItem, PeerDevice, PendingInbound, Reaction, SenderKeySet,
    SessionSet, StoredMessage,
};
use crate::ids::MessageId;

impl MessageStatus {
    pub(crate) fn to_byte(self) -> u8 {
        match self {
            Self::Received => 1,
            Self::Queued => 2,
            Self::Sent => 3,
            Self::Delivered => 4,
            Self::SentElsewhere => 5,
            Self::Failed { retryable: false } => 6,
            Self::Failed { retryable: true } => 7,
            Self::Read => 8,
        }
    }
    pub(crate) fn from_byte(b: u8) -> Result<Self, DecodeError> {
        Ok(match b {
            1 => Self::Received,
            2 => Self::Queued,
            3 => Self::Sent,
            4 => Self::Delivered,
            5 => Self::SentElsewhere,
            6 => Self::Failed { retryable: false },
            7 => Self::Failed { retryable: true },
            8 => Self::Read,
            value => {
                return Err(DecodeError::UnknownType {
                    field: "message status",
                    value,
                });
            }
        })
    }
}

const RECORD_VERSION: u8 = 1;
const MAX_BLOB: usize = 1 << 20;

/// Account records from version 2 on end with the mailbox epoch (a flag byte, then 16
/// bytes when set); version 1 records have none. From version 3 on the account key is
/// optional: a flag byte, then its pickle when set (versions 1 and 2 always hold it).
/// Version 4 adds a byte: 1 while rotated prekeys wait for their upload. Version 5 adds
/// the access key (a flag byte, then 32 bytes when set) and the confirmed request policy
/// (0 not uploaded, 1 refusing requests, 2 taking them). Version 6 adds the list key (a
/// flag byte, then its pickle when set). Version 7 adds the profile (a flag byte, then
/// `updated_ms (u64) ‖ name (var) ‖ flag [‖ avatar (var)]`). Version 8 adds the profile
/// key (a flag byte, then 32 bytes when set) and `profile_uploaded_ms (u64)`.
const ACCOUNT_VERSION: u8 = 8;

pub(crate) fn encode_account(a: &AccountRecord) -> Vec<u8> {
    let mut o = Vec::with_capacity(512);
    o.put_u8(ACCOUNT_VERSION);
    match &a.account_key {
        Some(ak) => {
            o.put_u8(1);
            o.put_var(ak);
        }
        None => o.put_u8(0),
    }
    o.put_var(&a.device);
    o.put_var(a.relay_url.as_bytes());
    o.put_u32(a.signed_prekey_id);
    o.put_u32(a.next_one_time_id);
    o.put_u32(a.next_kem_id);
    o.put_u64(a.last_seq);
    match &a.mailbox_epoch {
        Some(e) => {
            o.put_u8(1);
            o.put(e);
        }
        None => o.put_u8(0),
    }
    o.put_u8(u8::from(a.prekeys_unsent));
    match &a.access_key {
        Some(k) => {
            o.put_u8(1);
            o.put(k);
        }
        None => o.put_u8(0),
    }
    o.put_u8(match a.access_sent {
        None => 0,
        Some(false) => 1,
        Some(true) => 2,
    });
    match &a.list_key {
        Some(lk) => {
            o.put_u8(1);
            o.put_var(lk);
        }
        None => o.put_u8(0),
    }
    match &a.profile {
        Some(p) => {
            o.put_u8(1);
            o.put_u64(p.updated_ms);
            o.put_u8(1);
            o.put_var(crate::content::truncate_utf8(&p.name, MAX_NAME_LEN).as_bytes());
            put_avatar(&mut o, &p.avatar);
        }
        None => o.put_u8(0),
    }
    put_key(&mut o, &a.profile_key);
    o.put_u64(a.profile_uploaded_ms);
    o
}

fn put_key(o: &mut Vec<u8>, key: &Option<[u8; 32]>) {
    match key {
        Some(k) => {
            o.put_u8(1);
            o.put(k);
        }
        None => o.put_u8(0),
    }
}

fn key(r: &mut Reader<'_>, field: &'static str) -> Result<Option<[u8; 32]>, DecodeError> {
    if r.flag(field)? { Ok(Some(r.array()?)) } else { Ok(None) }
}

pub(crate) fn decode_account(b: &[u8]) -> Result<AccountRecord, DecodeError> {
    let mut r = Reader::new(b);
    let version = r.u8()?;
    if !(RECORD_VERSION..=ACCOUNT_VERSION).contains(&version) {
        return Err(DecodeError::UnsupportedVersion { version });
    }
    let account_key = if version >= 3 {
        match r.u8()? {
            0 => None,
            1 => Some(r.var_bytes("account key", MAX_BLOB)?.to_vec()),
            value => {
                return Err(DecodeError::UnknownType {
                    field: "account key",
                    value,
                });
            }
        }
    } else {
        Some(r.var_bytes("account key", MAX_BLOB)?.to_vec())
    };
    let mut a = AccountRecord {
        account_key,
        device: r.var_bytes("device", MAX_BLOB)?.to_vec(),
        relay_url: String::from_utf8(r.var_bytes("relay url", 4096)?.to_vec())
            .map_err(|_| DecodeError::Invalid { field: "relay url" })?,
        signed_prekey_id: r.u32()?,
        next_one_time_id: r.u32()?,
        next_kem_id: r.u32()?,
        last_seq: r.u64()?,
        mailbox_epoch: None,
        prekeys_unsent: false,
        access_key: None,
        access_sent: None,
        list_key: None,
        profile: None,
        profile_key: None,
        profile_uploaded_ms: 0,
    };
    if version >= 2 {
        a.mailbox_epoch = match r.u8()? {
            0 => None,
            1 => Some(r.array()?),
            value => {
                return Err(DecodeError::UnknownType {
                    field: "mailbox epoch",
                    value,
                });
            }
        };
    }
    if version >= 4 {
        a.prekeys_unsent = match r.u8()? {
            0 => false,
            1 => true,
            value => {
                return Err(DecodeError::UnknownType {
                    field: "prekeys unsent",
                    value,
                });
            }
        };
    }
    if version >= 5 {
        a.access_key = match r.u8()? {
            0 => None,
            1 => Some(r.array()?),
            value => {
                return Err(DecodeError::UnknownType {
                    field: "access key",
                    value,
                });
            }
        };
        a.access_sent = match r.u8()? {
            0 => None,
            1 => Some(false),
            2 => Some(true),
            value => {
                return Err(DecodeError::UnknownType {
                    field: "access sent",
                    value,
                });
            }
        };
    }
    if version >= 6 {
        a.list_key = match r.u8()? {
            0 => None,
            1 => Some(r.var_bytes("list key", MAX_BLOB)?.to_vec()),
            value => {
                return Err(DecodeError::UnknownType {
                    field: "list key",
                    value,
                });
            }
        };
    }
    if version >= 7 && r.flag("profile")? {
        let updated_ms = r.u64()?;
        let name = name(&mut r)?.unwrap_or_default();
        let avatar = if r.flag("avatar")? {
            Some(r.var_bytes("avatar", crate::content::MAX_AVATAR_LEN)?.to_vec())
        } else {
            None
        };
        a.profile = Some(super::Profile {
            name,
            avatar,
            updated_ms,
        });
    }
    if version >= 8 {
        a.profile_key = key(&mut r, "profile key")?;
        a.profile_uploaded_ms = r.u64()?;
    }
    r.finish()?;
    Ok(a)
}

fn put_avatar(o: &mut Vec<u8>, avatar: &Option<Vec<u8>>) {
    match avatar {
        Some(b) if b.len() <= crate::content::MAX_AVATAR_LEN => {
            o.put_u8(1);
            o.put_var(b);
        }
        _ => o.put_u8(0),
    }
}

/// A conversation: the peer's account id alone (records written before access keys;
/// read as accepted, with no key), or `0x02 ‖ peer (32) ‖ accepted (u8) ‖ flag (u8) [‖
/// access key (32)]`. Version 3 adds `blocked (u8) ‖ expire_s (u32) ‖ timer_at_ms (u64)
/// ‖ flag [‖ nickname (var)] ‖ flag [‖ profile name (var)] ‖ read_up_to (u64) ‖
/// identity_unacked (u8)`. Version 4 adds `profile_at_ms (u64) ‖ flag [‖ avatar (var)]`.
/// Version 5 adds `flag [‖ profile key (32)] ‖ profile_wanted_ms (u64)`.
const CONVERSATION_VERSION: u8 = 5;

pub(crate) fn encode_conversation(c: &ConversationRecord) -> Vec<u8> {
    let mut o = Vec::with_capacity(96);
    o.put_u8(CONVERSATION_VERSION);
    o.put(c.peer.as_bytes());
    o.put_u8(u8::from(c.accepted));
    match &c.access_key {
        Some(k) => {
            o.put_u8(1);
            o.put(k);
        }
        None => o.put_u8(0),
    }
    o.put_u8(u8::from(c.blocked));
    o.put_u32(c.expire_s);
    o.put_u64(c.timer_at_ms);
    for name in [&c.nickname, &c.profile_name] {
        match name {
            Some(n) => {
                o.put_u8(1);
                o.put_var(crate::content::truncate_utf8(n, MAX_NAME_LEN).as_bytes());
            }
            None => o.put_u8(0),
        }
    }
    o.put_u64(c.read_up_to);
    o.put_u8(u8::from(c.identity_unacked));
    o.put_u64(c.profile_at_ms);
    put_avatar(&mut o, &c.profile_avatar);
    put_key(&mut o, &c.profile_key);
    o.put_u64(c.profile_wanted_ms);
    o
}

fn name(r: &mut Reader<'_>) -> Result<Option<String>, DecodeError> {
    if !r.flag("name flag")? {
        return Ok(None);
    }
    let b = r.var_bytes("name", MAX_NAME_LEN)?;
    String::from_utf8(b.to_vec())
        .map(Some)
        .map_err(|_| DecodeError::Invalid { field: "name" })
}

pub(crate) fn decode_conversation(b: &[u8]) -> Result<ConversationRecord, DecodeError> {
    if let Ok(peer) = <[u8; 32]>::try_from(b) {
        return Ok(ConversationRecord {
            accepted: true,
            ..ConversationRecord::new(AccountId(peer))
        });
    }
    let mut r = Reader::new(b);
    let version = r.u8()?;
    if !(2..=CONVERSATION_VERSION).contains(&version) {
        return Err(DecodeError::UnsupportedVersion { version });
    }
    let peer = AccountId(r.array()?);
    let flag = |r: &mut Reader<'_>, field| match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(DecodeError::UnknownType { field, value }),
    };
    let accepted = flag(&mut r, "accepted")?;
    let access_key = if flag(&mut r, "access key")? {
        Some(r.array()?)
    } else {
        None
    };
    let mut c = ConversationRecord {
        accepted,
        access_key,
        ..ConversationRecord::new(peer)
    };
    if version >= 3 {
        c.blocked = flag(&mut r, "blocked")?;
        c.expire_s = r.u32()?;
        c.timer_at_ms = r.u64()?;
        c.nickname = name(&mut r)?;
        c.profile_name = name(&mut r)?;
        c.read_up_to = r.u64()?;
        c.identity_unacked = flag(&mut r, "identity unacked")?;
    }
    if version >= 4 {
        c.profile_at_ms = r.u64()?;
        if flag(&mut r, "avatar")? {
            c.profile_avatar = Some(r.var_bytes("avatar", crate::content::MAX_AVATAR_LEN)?.to_vec());
        }
    }
    if version >= 5 {
        c.profile_key = key(&mut r, "profile key")?;
        c.profile_wanted_ms = r.u64()?;
    }
    r.finish()?;
    Ok(c)
}

pub(crate) fn encode_sessions(s: &SessionSet) -> Vec<u8> {
    let mut o = Vec::with_capacity(s.sessions.iter().map(|p| p.len() + 4).sum::<usize>() + 3);
    o.put_u8(RECORD_VERSION);
    o.put_count(s.sessions.len());
    for p in &s.sessions {
        o.put_var(p);
    }
    o
}

pub(crate) fn decode_sessions(b: &[u8]) -> Result<SessionSet, DecodeError> {
    let mut r = Reader::new(b);
    r.version(RECORD_VERSION)?;
    let n = r.count("sessions", 64, 4)?;
    let mut sessions = Vec::with_capacity(n);
    for _ in 0..n {
        sessions.push(r.var_bytes("session", sotto_crypto::pickle::MAX_PICKLE_LEN)?.to_vec());
    }
    r.finish()?;
    Ok(SessionSet { sessions })
}

pub(crate) fn encode_peer(p: &PeerDevice) -> Vec<u8> {
    let mut o = Vec::with_capacity(36);
    o.put(p.0.as_bytes());
    o.put_u32(p.1.0);
    o
}

pub(crate) fn decode_peer(b: &[u8]) -> Result<PeerDevice, DecodeError> {
    let mut r = Reader::new(b);
    let p = (AccountId(r.array()?), DeviceId(r.u32()?));
    r.finish()?;
    Ok(p)
}

/// Message records of version 2 add, after the status: `kind (u8) [‖ u32 or u8] ‖ flag
/// [‖ quote author (32) ‖ quote id (16) ‖ snippet (var)] ‖ edited_at_ms (u64) ‖ deleted
/// (u8) ‖ count (u16) ‖ count × (by (32) ‖ emoji (var) ‖ at_ms (u64)) ‖ expire_s (u32) ‖
/// expires_at_ms (u64)`; version 1 records are plain texts. Version 3 adds `flag [‖
/// failure code (var)]`.
const MESSAGE_VERSION: u8 = 4;

pub(crate) fn encode_message(m: &StoredMessage) -> Vec<u8> {
    let mut o = Vec::with_capacity(160 + m.text.len());
    o.put_u8(MESSAGE_VERSION);
    o.put(&m.id.0);
    o.put(m.conversation.as_bytes());
    o.put(m.sender.0.as_bytes());
    o.put_u32(m.sender.1.0);
    o.put_u64(m.timestamp_ms);
    o.put_var(m.text.as_bytes());
    o.put_u8(m.status.to_byte());
    match m.kind {
        MessageKind::Text => o.put_u8(1),
        MessageKind::Timer { expire_s } => {
            o.put_u8(2);
            o.put_u32(expire_s);
        }
        MessageKind::Unsupported { kind } => {
            o.put_u8(3);
            o.put_u8(kind);
        }
        MessageKind::IdentityChanged => o.put_u8(4),
    }
    match &m.quote {
        Some(q) => {
            o.put_u8(1);
            o.put(q.author.as_bytes());
            o.put(&q.id.0);
            o.put_var(q.snippet.as_bytes());
        }
        None => o.put_u8(0),
    }
    o.put_u64(m.edited_at_ms);
    o.put_u8(u8::from(m.deleted));
    o.put_count(m.reactions.len().min(MAX_REACTIONS));
    for x in m.reactions.iter().take(MAX_REACTIONS) {
        o.put(x.by.as_bytes());
        o.put_var(x.emoji.as_bytes());
        o.put_u64(x.at_ms);
    }
    o.put_u32(m.expire_s);
    o.put_u64(m.expires_at_ms);
    match &m.failure {
        Some(code) => {
            o.put_u8(1);
            o.put_var(crate::content::truncate_utf8(code, super::MAX_FAILURE_CODE_LEN).as_bytes());
        }
        None => o.put_u8(0),
    }
    match &m.attachment {
        Some(a) => {
            o.put_u8(1);
            crate::content::encode_attachment(&mut o, a);
        }
        None => o.put_u8(0),
    }
    o
}

fn utf8(b: &[u8], field: &'static str) -> Result<String, DecodeError> {
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Invalid { field })
}

pub(crate) fn decode_message(b: &[u8], order: u64) -> Result<StoredMessage, DecodeError> {
    let mut r = Reader::new(b);
    let version = r.u8()?;
    if !(RECORD_VERSION..=MESSAGE_VERSION).contains(&version) {
        return Err(DecodeError::UnsupportedVersion { version });
    }
    let mut m = StoredMessage::text(
        MessageId(r.array()?),
        AccountId(r.array()?),
        (AccountId(r.array()?), DeviceId(r.u32()?)),
        r.u64()?,
        utf8(r.var_bytes("text", MAX_BLOB)?, "text")?,
        MessageStatus::from_byte(r.u8()?)?,
    );
    m.order = order;
    if version >= 2 {
        m.kind = match r.u8()? {
            1 => MessageKind::Text,
            2 => MessageKind::Timer { expire_s: r.u32()? },
            3 => MessageKind::Unsupported { kind: r.u8()? },
            4 => MessageKind::IdentityChanged,
            value => {
                return Err(DecodeError::UnknownType {
                    field: "message kind",
                    value,
                });
            }
        };
        if r.flag("quote flag")? {
            m.quote = Some(crate::content::Quote {
                author: AccountId(r.array()?),
                id: MessageId(r.array()?),
                snippet: utf8(r.var_bytes("quote", crate::content::MAX_QUOTE_LEN)?, "quote")?,
            });
        }
        m.edited_at_ms = r.u64()?;
        m.deleted = r.flag("deleted")?;
        let n = r.count("reactions", MAX_REACTIONS, 44)?;
        for _ in 0..n {
            m.reactions.push(Reaction {
                by: AccountId(r.array()?),
                emoji: utf8(r.var_bytes("emoji", crate::content::MAX_EMOJI_LEN)?, "emoji")?,
                at_ms: r.u64()?,
            });
        }
        m.expire_s = r.u32()?;
        m.expires_at_ms = r.u64()?;
    }
    if version >= 3 && r.flag("failure")? {
        m.failure = Some(utf8(r.var_bytes("failure", super::MAX_FAILURE_CODE_LEN)?, "failure")?);
    }
    if version >= 4 && r.flag("attachment")? {
        let a = crate::content::decode_attachment(&mut r).map_err(|e| match e {
            crate::content::ContentError::Decode(d) => d,
            _ => DecodeError::Invalid { field: "attachment" },
        })?;
        m.attachment = Some(Box::new(a));
    }
    r.finish()?;
    Ok(m)
}

/// Outbox records of version 2 add the item's attempts and backoff after the content;
/// version 1 records (written before) load as never tried.
const OUTBOX_VERSION: u8 = 2;

pub(crate) fn encode_outbox(i: &OutboxItem) -> Vec<u8> {
    let mut o = Vec::with_capacity(84 + i.content.len());
    o.put_u8(OUTBOX_VERSION);
    o.put(&i.id.0);
    o.put(i.to.as_bytes());
    o.put_var(&i.content);
    o.put_u32(i.attempts);
    o.put_u64(i.failing_ms);
    o.put_u64(i.last_failure_ms);
    o.put_u64(i.not_before_ms);
    o
}

pub(crate) fn decode_outbox(b: &[u8]) -> Result<OutboxItem, DecodeError> {
    let mut r = Reader::new(b);
    let version = r.u8()?;
    if version != RECORD_VERSION && version != OUTBOX_VERSION {
        return Err(DecodeError::UnsupportedVersion { version });
    }
    let mut i = OutboxItem::new(
        MessageId(r.array()?),
        AccountId(r.array()?),
        r.var_bytes("content", MAX_BLOB)?.to_vec(),
    );
    if version == OUTBOX_VERSION {
        i.attempts = r.u32()?;
        i.failing_ms = r.u64()?;
        i.last_failure_ms = r.u64()?;
        i.not_before_ms = r.u64()?;
    }
    r.finish()?;
    Ok(i)
}

pub(crate) fn encode_pending(p: &PendingInbound) -> Vec<u8> {
    let mut o = Vec::with_capacity(96 + p.envelope.len());
    o.put_u8(RECORD_VERSION);
    o.put(&p.digest);
    o.put(p.sender.as_bytes());
    o.put_u64(p.seq);
    o.put_u64(p.first_seen_ms);
    o.put_var(&p.envelope);
    o
}

pub(crate) fn decode_pending(b: &[u8]) -> Result<PendingInbound, DecodeError> {
    let mut r = Reader::new(b);
    r.version(RECORD_VERSION)?;
    let p = PendingInbound {
        digest: r.array()?,
        sender: AccountId(r.array()?),
        seq: r.u64()?,
        first_seen_ms: r.u64()?,
        envelope: r.var_bytes("envelope", MAX_BLOB)?.to_vec(),
    };
    r.finish()?;
    Ok(p)
}

/// The most devices a group record names as holders of this device's chain: every device
/// of every member (up to 1000 members, up to 64 devices each, far more than real groups).
const MAX_CHAIN_HOLDERS: usize = 1 << 16;

/// `log (var) ‖ count (u16) ‖ count × (state id (32) ‖ key (32)) ‖ chain flag ‖ [chain (var)]
/// ‖ count (u32) ‖ count × (account (32) ‖ device (u32)) ‖ count (u16) ‖ count × (account
/// (32) ‖ access key (32)) ‖ active (u8) ‖ count (u16) ‖ count × own commit (var) ‖
/// expire_s (u32) ‖ timer_at_ms (u64) ‖ read_up_to (u64)` (the last three absent from
/// records written before them).
pub(crate) fn encode_group(g: &GroupRecord) -> Vec<u8> {
    let mut o = Vec::with_capacity(g.log.len() + 128 + 36 * g.chain_holders.len());
    o.put_u8(RECORD_VERSION);
    o.put_var(&g.log);
    o.put_count(g.seal_keys.len());
    for (id, k) in &g.seal_keys {
        o.put(id);
        o.put(k);
    }
    match &g.chain {
        Some(c) => {
            o.put_u8(1);
            o.put_var(c);
        }
        None => o.put_u8(0),
    }
    o.put_u32(g.chain_holders.len() as u32);
    for (a, d) in &g.chain_holders {
        o.put(&a.0);
        o.put_u32(d.0);
    }
    o.put_count(g.member_access.len());
    for (a, k) in &g.member_access {
        o.put(&a.0);
        o.put(k);
    }
    o.put_u8(u8::from(g.active));
    o.put_count(g.own_commits.len());
    for c in &g.own_commits {
        o.put_var(c);
    }
    o.put_u32(g.expire_s);
    o.put_u64(g.timer_at_ms);
    o.put_u64(g.read_up_to);
    o
}

pub(crate) fn decode_group(b: &[u8]) -> Result<GroupRecord, DecodeError> {
    let mut r = Reader::new(b);
    r.version(RECORD_VERSION)?;
    let log = r.var_bytes("group log", 32 * MAX_BLOB)?.to_vec();
    let mut seal_keys = Vec::new();
    for _ in 0..r.count("seal keys", MAX_SEAL_KEYS, 64)? {
        seal_keys.push((r.array()?, r.array()?));
    }
    let chain = if r.flag("chain")? {
        Some(r.var_bytes("chain", MAX_BLOB)?.to_vec())
    } else {
        None
    };
    let n = r.u32()? as usize;
    if n > MAX_CHAIN_HOLDERS || n * 36 > r.remaining() {
        return Err(DecodeError::TooLong {
            field: "chain holders",
            len: n,
            max: MAX_CHAIN_HOLDERS,
        });
    }
    let mut chain_holders = Vec::with_capacity(n);
    for _ in 0..n {
        chain_holders.push((AccountId(r.array()?), DeviceId(r.u32()?)));
    }
    let mut member_access = Vec::new();
    for _ in 0..r.count("member access", crate::group::MAX_MEMBERS, 64)? {
        member_access.push((AccountId(r.array()?), r.array()?));
    }
    let active = r.flag("active")?;
    let mut own_commits = Vec::new();
    for _ in 0..r.count("own commits", MAX_OWN_COMMITS, 4)? {
        own_commits.push(r.var_bytes("own commit", 64 * 1024)?.to_vec());
    }
    // Records written before the timer and the read marker end here.
    let (expire_s, timer_at_ms, read_up_to) = if r.remaining() == 0 {
        (0, 0, 0)
    } else {
        (r.u32()?, r.u64()?, r.u64()?)
    };
    r.finish()?;
    Ok(GroupRecord {
        log,
        seal_keys,
        chain,
        chain_holders,
        member_access,
        active,
        own_commits,
        expire_s,
        timer_at_ms,
        read_up_to,
    })
}

pub(crate) fn encode_sender_keys(s: &SenderKeySet) -> Vec<u8> {
    let mut o = Vec::new();
    o.put_u8(RECORD_VERSION);
    o.put_count(s.chains.len());
    for c in &s.chains {
        o.put_var(c);
    }
    o
}

pub(crate) fn decode_sender_keys(b: &[u8]) -> Result<SenderKeySet, DecodeError> {
    let mut r = Reader::new(b);
    r.version(RECORD_VERSION)?;
    let mut chains = Vec::new();
    for _ in 0..r.count("sender chains", MAX_SENDER_CHAINS, 4)? {
        chains.push(r.var_bytes("sender chain", MAX_BLOB)?.to_vec());
    }
    r.finish()?;
    Ok(SenderKeySet { chains })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_records_keep_attachments_and_older_versions_load() {
        let mut m = StoredMessage::text(
            MessageId([1; 16]),
            AccountId([2; 32]),
            (AccountId([3; 32]), DeviceId(4)),
            5,
            "a caption".into(),
            MessageStatus::Delivered,
        );
        m.failure = Some("X".into());
        let plain = m.clone();
        m.attachment = Some(Box::new(crate::content::Attachment {
            blob_id: [6; 32],
            key: crate::content::SharedKey([7; 32]),
            digest: [8; 32],
            size: 9,
            media_type: "image/png".into(),
            file_name: "a.png".into(),
            thumbnail: Some(vec![10; 3]),
        }));
        assert_eq!(decode_message(&encode_message(&m), 0).unwrap(), m);
        assert_eq!(decode_message(&encode_message(&plain), 0).unwrap(), plain);
        // Version 3 (no attachment field) loads without one.
        let mut v3 = encode_message(&plain);
        v3[0] = 3;
        assert_eq!(v3.pop(), Some(0));
        assert_eq!(decode_message(&v3, 0).unwrap(), plain);
        // A cut pointer is an error, never a panic.
        let full = encode_message(&m);
        for n in 0..full.len() {
            assert!(decode_message(&full[..n], 0).is_err());
        }
    }

    #[test]
    fn account_records_of_version_1_still_load() {
        let a = AccountRecord {
            account_key: Some(vec![1; 3]),
            device: vec![2; 4],
            relay_url: "http://r".into(),
            signed_prekey_id: 1,
            next_one_time_id: 2,
            next_kem_id: 3,
            last_seq: 9,
            mailbox_epoch: Some([7; 16]),
            prekeys_unsent: false,
            access_key: None,
            access_sent: None,
            list_key: None,
            profile: None,
            profile_key: None,
            profile_uploaded_ms: 0,
        };
        assert_eq!(decode_account(&encode_account(&a)).unwrap(), a);
        // Version 6 keeps the list key.
        let with_list_key = AccountRecord {
            list_key: Some(vec![6; 5]),
            ..a.clone()
        };
        assert_eq!(decode_account(&encode_account(&with_list_key)).unwrap(), with_list_key);
        // Version 5 keeps the access key and the confirmed policy.
        let with_access = AccountRecord {
            access_key: Some([5; 32]),
            access_sent: Some(false),
            ..a.clone()
        };
        assert_eq!(decode_account(&encode_account(&with_access)).unwrap(), with_access);
        // Without the profile key flag and upload time, the profile flag, the list-key
        // flag and the two access bytes, the version 4 layout.
        let v4 = |a: &AccountRecord| {
            let mut b = encode_account(a);
            b.truncate(b.len() - 13);
            b[0] = 4;
            b
        };
        assert_eq!(decode_account(&v4(&a)).unwrap(), a);
        // Version 1: the account key always present, no epoch.
        let mut v1 = vec![1u8];
        v1.put_var(&[1; 3]);
        v1.extend_from_slice(&v4(&a)[9..]);
        v1.truncate(v1.len() - 18);
        let old = decode_account(&v1).unwrap();
        assert_eq!(old.mailbox_epoch, None);
        assert_eq!(old.account_key, Some(vec![1; 3]));
        assert_eq!(old.last_seq, 9);
        // Version 2: the same with the epoch.
        let mut v2 = vec![2u8];
        v2.put_var(&[1; 3]);
        v2.extend_from_slice(&v4(&a)[9..]);
        v2.pop();
        assert_eq!(decode_account(&v2).unwrap(), a);
        // Version 4 keeps the unsent-prekeys flag; earlier versions load with it clear.
        let unsent = AccountRecord {
            prekeys_unsent: true,
            ..a.clone()
        };
        assert_eq!(decode_account(&encode_account(&unsent)).unwrap(), unsent);
        assert_eq!(decode_account(&v4(&unsent)).unwrap(), unsent);
        let mut v3 = v4(&unsent);
        v3[0] = 3;
        assert!(decode_account(&v3).is_err(), "a version 3 record has no flag byte");
        v3.pop();
        assert!(!decode_account(&v3).unwrap().prekeys_unsent);
    }

    #[test]
    fn account_record_without_the_account_key() {
        let a = AccountRecord {
            account_key: None,
            device: vec![2; 4],
            relay_url: "http://r".into(),
            signed_prekey_id: 1,
            next_one_time_id: 2,
            next_kem_id: 3,
            last_seq: 9,
            mailbox_epoch: None,
            prekeys_unsent: false,
            access_key: None,
            access_sent: None,
            list_key: None,
            profile: None,
            profile_key: None,
            profile_uploaded_ms: 0,
        };
        let bytes = encode_account(&a);
        assert_eq!(&bytes[..2], &[8, 0]);
        assert_eq!(decode_account(&bytes).unwrap(), a);
        // Version 7 keeps the profile.
        let with_profile = AccountRecord {
            profile: Some(super::super::Profile {
                name: "Ada ✓".into(),
                avatar: Some(vec![9; 40]),
                updated_ms: 77,
            }),
            ..a.clone()
        };
        assert_eq!(decode_account(&encode_account(&with_profile)).unwrap(), with_profile);
        // Version 8 keeps the profile key and the upload time.
        let with_key = AccountRecord {
            profile_key: Some([8; 32]),
            profile_uploaded_ms: 78,
            ..with_profile.clone()
        };
        assert_eq!(decode_account(&encode_account(&with_key)).unwrap(), with_key);
        // Version 7 (no profile key) and version 6 (no profile byte either) still load.
        let mut v7 = encode_account(&with_profile);
        v7[0] = 7;
        v7.truncate(v7.len() - 9);
        assert_eq!(decode_account(&v7).unwrap(), with_profile);
        let mut v6 = encode_account(&a);
        v6[0] = 6;
        v6.truncate(v6.len() - 10);
        assert_eq!(decode_account(&v6).unwrap(), a);
    }

    #[test]
    fn conversation_record_keeps_the_profile_key_and_reads_version_4() {
        let c = ConversationRecord {
            accepted: true,
            access_key: Some([3; 32]),
            profile_name: Some("Ada".into()),
            profile_avatar: Some(vec![1, 2]),
            profile_at_ms: 5,
            profile_key: Some([4; 32]),
            profile_wanted_ms: 9,
            ..ConversationRecord::new(AccountId([2; 32]))
        };
        let bytes = encode_conversation(&c);
        assert_eq!(bytes[0], 5);
        assert_eq!(decode_conversation(&bytes).unwrap(), c);
        // Version 4: no profile key and no announced time.
        let mut v4 = bytes.clone();
        v4[0] = 4;
        v4.truncate(v4.len() - 41);
        let old = decode_conversation(&v4).unwrap();
        assert_eq!((old.profile_key, old.profile_wanted_ms), (None, 0));
        assert_eq!(old.profile_name.as_deref(), Some("Ada"));
        // A flag byte other than 0 or 1 is refused.
        let mut bad = bytes;
        let at = bad.len() - 41;
        bad[at] = 2;
        assert!(decode_conversation(&bad).is_err());
    }

    #[test]
    fn outbox_record_keeps_attempts_and_reads_version_1() {
        let mut item = OutboxItem::new(MessageId([7; 16]), AccountId([9; 32]), vec![1, 2, 3]);
        item.attempts = 3;
        item.failing_ms = 12_000;
        item.last_failure_ms = 1_700_000_000_000;
        item.not_before_ms = 1_700_000_004_000;
        assert_eq!(decode_outbox(&encode_outbox(&item)).unwrap(), item);
        // A record written by the previous version: version 1, no attempts.
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&[7; 16]);
        v1.extend_from_slice(&[9; 32]);
        v1.put_var(&[1, 2, 3]);
        let old = decode_outbox(&v1).unwrap();
        assert_eq!(
            old,
            OutboxItem::new(MessageId([7; 16]), AccountId([9; 32]), vec![1, 2, 3])
        );
    }
}
