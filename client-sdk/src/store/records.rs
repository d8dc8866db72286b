//! Byte encodings of the stored values (SQLite and IndexedDB stores).

use sotto_crypto::codec::{DecodeError, Put, Reader};
use sotto_crypto::{AccountId, DeviceId};

use super::{
    AccountRecord, ConversationRecord, GroupRecord, MAX_OWN_COMMITS, MAX_SEAL_KEYS, MAX_SENDER_CHAINS, MessageStatus,
    OutboxItem, PeerDevice, PendingInbound, SenderKeySet, SessionSet, StoredMessage,
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
/// flag byte, then its pickle when set).
const ACCOUNT_VERSION: u8 = 6;

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
    o
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
    r.finish()?;
    Ok(a)
}

/// A conversation: the peer's account id alone (records written before access keys;
/// read as accepted, with no key), or `0x02 ‖ peer (32) ‖ accepted (u8) ‖ flag (u8) [‖
/// access key (32)]`.
const CONVERSATION_VERSION: u8 = 2;

pub(crate) fn encode_conversation(c: &ConversationRecord) -> Vec<u8> {
    let mut o = Vec::with_capacity(67);
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
    o
}

pub(crate) fn decode_conversation(b: &[u8]) -> Result<ConversationRecord, DecodeError> {
    if let Ok(peer) = <[u8; 32]>::try_from(b) {
        return Ok(ConversationRecord {
            peer: AccountId(peer),
            accepted: true,
            access_key: None,
        });
    }
    let mut r = Reader::new(b);
    r.version(CONVERSATION_VERSION)?;
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
    r.finish()?;
    Ok(ConversationRecord {
        peer,
        accepted,
        access_key,
    })
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

pub(crate) fn encode_message(m: &StoredMessage) -> Vec<u8> {
    let mut o = Vec::with_capacity(96 + m.text.len());
    o.put_u8(RECORD_VERSION);
    o.put(&m.id.0);
    o.put(m.conversation.as_bytes());
    o.put(m.sender.0.as_bytes());
    o.put_u32(m.sender.1.0);
    o.put_u64(m.timestamp_ms);
    o.put_var(m.text.as_bytes());
    o.put_u8(m.status.to_byte());
    o
}

pub(crate) fn decode_message(b: &[u8], order: u64) -> Result<StoredMessage, DecodeError> {
    let mut r = Reader::new(b);
    r.version(RECORD_VERSION)?;
    let m = StoredMessage {
        id: MessageId(r.array()?),
        conversation: AccountId(r.array()?),
        sender: (AccountId(r.array()?), DeviceId(r.u32()?)),
        timestamp_ms: r.u64()?,
        text: String::from_utf8(r.var_bytes("text", MAX_BLOB)?.to_vec())
            .map_err(|_| DecodeError::Invalid { field: "text" })?,
        status: MessageStatus::from_byte(r.u8()?)?,
        order,
    };
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
/// (32) ‖ access key (32)) ‖ active (u8)`.
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
    r.finish()?;
    Ok(GroupRecord {
        log,
        seal_keys,
        chain,
        chain_holders,
        member_access,
        active,
        own_commits,
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
        // Without the list-key flag and the two access bytes, the version 4 layout.
        let v4 = |a: &AccountRecord| {
            let mut b = encode_account(a);
            b.truncate(b.len() - 3);
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
        };
        let bytes = encode_account(&a);
        assert_eq!(&bytes[..2], &[6, 0]);
        assert_eq!(decode_account(&bytes).unwrap(), a);
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
