//! Typing notifications (docs/protocol.md §15.4): ephemeral frames out, and in.

use std::collections::VecDeque;

use sotto_crypto::AccountId;
use sotto_proto::Frame;

use super::error::ClientError;
use super::live::TYPING_TIMEOUT_MS;
use super::{Client, Inner, now_ms};
use crate::machine::{Conversation, EphemeralIn, Event};
use crate::rt::Instant;
use crate::store::Store;
use crate::transport::Socket;

/// Typing frames waiting for the connection (older ones are dropped beyond this).
pub(super) const MAX_EPHEMERAL_QUEUE: usize = 64;
/// A queued typing frame older than this is dropped instead of sent.
const EPHEMERAL_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(3);
/// While the user types, "started" goes out at most this often per conversation.
pub const TYPING_REPEAT_MS: u64 = 3_000;

/// Typing frames waiting for the connection, and when each conversation last got one.
#[derive(Default)]
pub(crate) struct Ephemeral {
    queue: std::sync::Mutex<VecDeque<(Instant, AccountId, Vec<u8>)>>,
    /// Conversation key → when "started" last went out (Unix ms).
    started: std::sync::Mutex<std::collections::HashMap<AccountId, u64>>,
    pub(super) wake: tokio::sync::Notify,
}

impl<S: Store> Inner<S> {
    /// Sends the queued typing frames on the authenticated connection; false when the
    /// socket failed.
    pub(super) async fn flush_ephemeral(&self, socket: &mut Socket) -> bool {
        let frames: Vec<(Instant, AccountId, Vec<u8>)> = {
            let mut q = self.ephemeral.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.drain(..).collect()
        };
        for (at, to, payload) in frames {
            if at.elapsed() > EPHEMERAL_MAX_AGE {
                continue;
            }
            if socket.send(&Frame::Ephemeral { to, payload }).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Sends this device's presence to the contacts it shares it with (docs/protocol.md
    /// §15.8); false when the socket failed.
    pub(super) async fn send_presence(&self, socket: &mut Socket) -> bool {
        let Ok((frames, _)) = self.transact(|m| Ok(m.presence_frames(now_ms())?)).await else {
            return true;
        };
        for (to, payload) in frames {
            if socket.send(&Frame::Ephemeral { to, payload }).await.is_err() {
                return false;
            }
        }
        true
    }

    /// An `EphemeralDeliver` payload: a contact's typing notification or presence, or
    /// nothing.
    pub(super) async fn handle_ephemeral(&self, payload: &[u8]) {
        let what = {
            let mut m = self.machine.lock().await;
            let Some((changes, what)) = m.receive_ephemeral(payload) else {
                return;
            };
            // The session moved: keep it, deferred (no fsync for each frame a contact sends;
            // a receiving step lost to a power loss only costs a skipped key later).
            if self.commit_locked_as(&mut m, changes, true).await.is_err() {
                return;
            }
            what
        };
        let (conversation, by, typing) = match what {
            EphemeralIn::Typing {
                conversation,
                by,
                typing,
            } => (conversation, by, typing),
            EphemeralIn::Presence { by } => {
                let grace = u64::try_from(self.options.presence_grace.as_millis()).unwrap_or(u64::MAX);
                if self.live.seen_online(by, now_ms(), grace) {
                    self.emit(vec![Event::Presence {
                        account: by,
                        online: true,
                        last_seen_ms: now_ms(),
                    }])
                    .await;
                }
                return;
            }
        };
        let until = typing.then(|| now_ms().saturating_add(TYPING_TIMEOUT_MS));
        self.live.set_typing(conversation, by, until);
        self.emit(vec![Event::Typing {
            conversation,
            by,
            typing,
        }])
        .await;
    }
}

impl<S: Store> Client<S> {
    /// Tells the conversation's other members that this user is typing (`true`, call it
    /// as they type: it goes out at most every 3 s) or stopped (`false`). Ephemeral: never
    /// stored, never pushed, dropped when the relay connection is down or the recipient
    /// offline. Nothing is sent to blocked contacts, message requests not accepted, or
    /// groups of more than [`crate::machine::MAX_TYPING_GROUP`] members.
    pub async fn set_typing(&self, conversation: Conversation, typing: bool) -> Result<(), ClientError> {
        let key = conversation.key();
        let now = now_ms();
        {
            let mut started = self.inner.ephemeral.started.lock().unwrap_or_else(|e| e.into_inner());
            match (typing, started.get(&key).copied()) {
                (true, Some(at)) if now.saturating_sub(at) < TYPING_REPEAT_MS => return Ok(()),
                (true, _) => {
                    if started.len() >= crate::group::MAX_MEMBERS {
                        started.clear();
                    }
                    started.insert(key, now);
                }
                // "Stopped" only after a "started" that has not timed out yet.
                (false, Some(at)) if now.saturating_sub(at) < TYPING_TIMEOUT_MS => {
                    started.remove(&key);
                }
                (false, _) => return Ok(()),
            }
        }
        let (frames, _) = self
            .inner
            .transact(|m| Ok(m.typing_frames(conversation, typing, now)?))
            .await?;
        if frames.is_empty() {
            return Ok(());
        }
        {
            let mut q = self.inner.ephemeral.queue.lock().unwrap_or_else(|e| e.into_inner());
            let at = Instant::now();
            for (to, payload) in frames {
                if q.len() >= MAX_EPHEMERAL_QUEUE {
                    q.pop_front();
                }
                q.push_back((at, to, payload));
            }
        }
        self.inner.ephemeral.wake.notify_one();
        Ok(())
    }
}
