//! The notices relay nodes of one cluster exchange over their message bus (core NATS,
//! one subject; docs/self-hosting.md, "Several nodes"). Clients never see them.
//!
//! Notices are hints, never data: every envelope is in the shared database before a
//! notice names its mailbox, and a node that misses notices reads the mailboxes instead.
//! They carry no content and no sender: a mailbox notice names the recipient devices
//! only, an ephemeral notice carries the payload the relay already forwards opaquely.
//!
//! ```text
//! message  = version (u8 = 1) ‖ origin (8) ‖ kind (u8) ‖ body
//! kind 1 Mailbox    count (u16, ≤ 4096) ‖ count × (account (32) ‖ device (u32))
//! kind 2 Ephemeral  account (32) ‖ has_except (flag) ‖ [except (u32)] ‖ payload (u32 len, ≤ 64 KiB)
//! kind 3 Evict      account (32) ‖ device (u32)
//! kind 4 Present    count (u16, ≤ 4096) ‖ count × (account (32) ‖ device (u32) ‖ since_ms (u64) ‖ extension (flag))
//! kind 5 Absent     count (u16, ≤ 4096) ‖ count × (account (32) ‖ device (u32) ‖ since_ms (u64))
//! kind 6 Heartbeat  (empty)
//! kind 7 Hello      (empty)
//! ```
//! Integers are big-endian. Decoding is strict: unknown kinds, a wrong version, bytes left
//! over and counts above the limits are typed errors.

use sotto_crypto::{AccountId, DeviceId};

use crate::codec::{DecodeError, Put, Reader};
use crate::limits;

/// The bus message version.
pub const BUS_VERSION: u8 = 1;

/// The most entries one mailbox, present or absent notice carries.
pub const MAX_BUS_ENTRIES: usize = 4096;

/// A node's id on the bus: 8 bytes of OS randomness drawn at start.
pub type NodeId = [u8; 8];

/// A connected device, as a presence notice names it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Presence {
    /// The device's account.
    pub account: AccountId,
    /// The device.
    pub device: DeviceId,
    /// When its connection authenticated (ms since the Unix epoch, the origin's clock):
    /// of two connections of one device, the later one stays.
    pub since_ms: u64,
    /// The device's notification-extension process, not its app.
    pub extension: bool,
}

/// What one node tells the others.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum BusNotice {
    /// These mailboxes have new envelopes in the database.
    Mailbox(Vec<(AccountId, DeviceId)>),
    /// An ephemeral payload for every connected device of `account` but `except`.
    Ephemeral {
        /// The recipient account.
        account: AccountId,
        /// The sending device of that account, which does not get its own frame back.
        except: Option<DeviceId>,
        /// The opaque payload.
        payload: Vec<u8>,
    },
    /// The device left its account's list or was re-keyed: close its connections.
    Evict {
        /// The device's account.
        account: AccountId,
        /// The device.
        device: DeviceId,
    },
    /// These devices are connected to the origin node.
    Present(Vec<Presence>),
    /// These connections to the origin node (named by device and `since_ms`) closed.
    Absent(Vec<(AccountId, DeviceId, u64)>),
    /// The origin node is alive (sent every second).
    Heartbeat,
    /// The origin node (re)joined the bus: every node answers with its `Present` notices.
    Hello,
}

/// A notice and the node it comes from.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct BusMessage {
    /// The sending node.
    pub origin: NodeId,
    /// What it says.
    pub notice: BusNotice,
}

mod kind {
    pub(super) const MAILBOX: u8 = 1;
    pub(super) const EPHEMERAL: u8 = 2;
    pub(super) const EVICT: u8 = 3;
    pub(super) const PRESENT: u8 = 4;
    pub(super) const ABSENT: u8 = 5;
    pub(super) const HEARTBEAT: u8 = 6;
    pub(super) const HELLO: u8 = 7;
}

impl BusMessage {
    /// The message's bytes. Callers keep lists within [`MAX_BUS_ENTRIES`] and payloads
    /// within `limits::MAX_EPHEMERAL_LEN` (longer ones would not decode).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.put_u8(BUS_VERSION);
        out.put(&self.origin);
        match &self.notice {
            BusNotice::Mailbox(list) => {
                out.put_u8(kind::MAILBOX);
                out.put_count(list.len());
                for (a, d) in list {
                    out.put(a.as_bytes());
                    out.put_u32(d.0);
                }
            }
            BusNotice::Ephemeral {
                account,
                except,
                payload,
            } => {
                out.put_u8(kind::EPHEMERAL);
                out.put(account.as_bytes());
                match except {
                    Some(d) => {
                        out.put_u8(1);
                        out.put_u32(d.0);
                    }
                    None => out.put_u8(0),
                }
                out.put_var(payload);
            }
            BusNotice::Evict { account, device } => {
                out.put_u8(kind::EVICT);
                out.put(account.as_bytes());
                out.put_u32(device.0);
            }
            BusNotice::Present(list) => {
                out.put_u8(kind::PRESENT);
                out.put_count(list.len());
                for p in list {
                    out.put(p.account.as_bytes());
                    out.put_u32(p.device.0);
                    out.put_u64(p.since_ms);
                    out.put_u8(u8::from(p.extension));
                }
            }
            BusNotice::Absent(list) => {
                out.put_u8(kind::ABSENT);
                out.put_count(list.len());
                for (a, d, since) in list {
                    out.put(a.as_bytes());
                    out.put_u32(d.0);
                    out.put_u64(*since);
                }
            }
            BusNotice::Heartbeat => out.put_u8(kind::HEARTBEAT),
            BusNotice::Hello => out.put_u8(kind::HELLO),
        }
        out
    }

    /// Decodes a bus message, strictly.
    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data);
        r.version(BUS_VERSION)?;
        let origin = r.array()?;
        let notice = match r.u8()? {
            kind::MAILBOX => {
                let n = r.count("mailboxes", MAX_BUS_ENTRIES, 36)?;
                let mut list = Vec::with_capacity(n);
                for _ in 0..n {
                    list.push((AccountId(r.array()?), DeviceId(r.u32()?)));
                }
                BusNotice::Mailbox(list)
            }
            kind::EPHEMERAL => BusNotice::Ephemeral {
                account: AccountId(r.array()?),
                except: if r.flag("has except")? {
                    Some(DeviceId(r.u32()?))
                } else {
                    None
                },
                payload: r.var_bytes("ephemeral payload", limits::MAX_EPHEMERAL_LEN)?.to_vec(),
            },
            kind::EVICT => BusNotice::Evict {
                account: AccountId(r.array()?),
                device: DeviceId(r.u32()?),
            },
            kind::PRESENT => {
                let n = r.count("present devices", MAX_BUS_ENTRIES, 45)?;
                let mut list = Vec::with_capacity(n);
                for _ in 0..n {
                    list.push(Presence {
                        account: AccountId(r.array()?),
                        device: DeviceId(r.u32()?),
                        since_ms: r.u64()?,
                        extension: r.flag("extension")?,
                    });
                }
                BusNotice::Present(list)
            }
            kind::ABSENT => {
                let n = r.count("absent devices", MAX_BUS_ENTRIES, 44)?;
                let mut list = Vec::with_capacity(n);
                for _ in 0..n {
                    list.push((AccountId(r.array()?), DeviceId(r.u32()?), r.u64()?));
                }
                BusNotice::Absent(list)
            }
            kind::HEARTBEAT => BusNotice::Heartbeat,
            kind::HELLO => BusNotice::Hello,
            value => {
                return Err(DecodeError::UnknownType {
                    field: "bus notice",
                    value,
                });
            }
        };
        r.finish()?;
        Ok(Self { origin, notice })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<BusMessage> {
        let a = AccountId([7; 32]);
        let origin = [1, 2, 3, 4, 5, 6, 7, 8];
        [
            BusNotice::Mailbox(vec![(a, DeviceId(1)), (AccountId([9; 32]), DeviceId(u32::MAX))]),
            BusNotice::Mailbox(Vec::new()),
            BusNotice::Ephemeral {
                account: a,
                except: Some(DeviceId(2)),
                payload: b"typing".to_vec(),
            },
            BusNotice::Ephemeral {
                account: a,
                except: None,
                payload: Vec::new(),
            },
            BusNotice::Evict {
                account: a,
                device: DeviceId(3),
            },
            BusNotice::Present(vec![Presence {
                account: a,
                device: DeviceId(4),
                since_ms: 1_700_000_000_000,
                extension: true,
            }]),
            BusNotice::Absent(vec![(a, DeviceId(5), 42)]),
            BusNotice::Heartbeat,
            BusNotice::Hello,
        ]
        .into_iter()
        .map(|notice| BusMessage { origin, notice })
        .collect()
    }

    #[test]
    fn every_notice_round_trips_and_every_prefix_fails() {
        for m in samples() {
            let bytes = m.encode();
            assert_eq!(BusMessage::decode(&bytes).as_ref(), Ok(&m));
            for cut in 0..bytes.len() {
                assert!(BusMessage::decode(&bytes[..cut]).is_err(), "{m:?} cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(BusMessage::decode(&longer).is_err());
        }
    }

    #[test]
    fn wrong_version_kind_flag_and_counts_are_typed() {
        let mut bytes = samples()[0].encode();
        bytes[0] = 2;
        assert_eq!(
            BusMessage::decode(&bytes),
            Err(DecodeError::UnsupportedVersion { version: 2 })
        );
        let mut bytes = samples()[0].encode();
        bytes[9] = 99;
        assert!(matches!(
            BusMessage::decode(&bytes),
            Err(DecodeError::UnknownType { value: 99, .. })
        ));
        let mut bytes = samples()[2].encode();
        bytes[10 + 32] = 2;
        assert!(matches!(BusMessage::decode(&bytes), Err(DecodeError::Invalid { .. })));
        // A count above the limit is refused before anything is allocated.
        let mut bytes = vec![BUS_VERSION];
        bytes.extend_from_slice(&[0; 8]);
        bytes.push(kind::MAILBOX);
        bytes.extend_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(BusMessage::decode(&bytes), Err(DecodeError::TooLong { .. })));
    }
}
