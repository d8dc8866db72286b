//! The notification-extension role: a second process on the app's store (an iOS
//! Notification Service Extension, an Android background worker) that fetches what
//! waits in the device's mailbox, decrypts it, commits it beside a possibly running app,
//! returns what to show, and exits.
//!
//! Safety beside the app rests on two rules:
//! - the relay never lets the extension take the socket from the app
//!   (`AuthExtension`, docs/protocol.md §13.6): while the app is connected the extension
//!   gets `DEVICE_ACTIVE` and shows nothing (the app receives); an app that connects
//!   replaces the extension;
//! - every processed envelope writes the account row with compare-and-swap, with the
//!   session, prekey and group rows it changed: when both processes handled the same
//!   envelope (the extension was replaced before it acked), the second commit conflicts,
//!   reloads, finds the envelope's digest already processed, and shows nothing twice.

use std::time::Duration;

use sotto_proto::{ErrorCode, Frame};

use super::inbound::{ACK_BATCH, Unacked};
use super::{Client, ClientError, ClientOptions, Entropy};
use crate::machine::{Conversation, Event};
use crate::rt::{self, Instant};
use crate::store::{MessageKey, MessageStatus, ProcessRole, Store, StoreKey, StoredMessage};
use crate::transport::TransportError;

/// What a notification shows for one message.
#[derive(Clone, PartialEq, Eq)]
pub struct Notification {
    /// The message, to open its conversation at it.
    pub key: MessageKey,
    /// The conversation: the contact, or the group.
    pub conversation: Conversation,
    /// The sender's name (nickname, else profile name; empty when it has neither).
    pub sender_name: String,
    /// The group's title, for a group message.
    pub group_title: Option<String>,
    /// What to show: the text, or for an attachment its caption or the kind of file
    /// ("Photo", "Video", "Voice message", "File").
    pub body: String,
    /// The sender's timestamp, Unix ms.
    pub timestamp_ms: u64,
}

/// Leaves the names and the text out.
impl std::fmt::Debug for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notification")
            .field("key", &self.key)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// What one fetch of the notification extension found.
#[derive(Clone, Debug, Default)]
pub struct Fetched {
    /// The messages to show, oldest first (messages this account sent from its other
    /// devices are not among them).
    pub notifications: Vec<Notification>,
    /// The app is connected to the relay: it receives, and the extension fetched
    /// nothing (or stopped when the app connected).
    pub app_active: bool,
    /// The whole mailbox was read (the relay said `QueueEmpty`); false when the time
    /// ran out, the connection ended first, or an envelope could not be handled for now
    /// (a network failure): the rest waits for the app or the next push.
    pub complete: bool,
}

/// The words shown for a message: its text, else what its attachment is.
fn body_of(m: &StoredMessage) -> String {
    match &m.attachment {
        Some(a) if m.text.is_empty() => {
            let kind = a.media_type.split('/').next().unwrap_or("");
            match kind {
                "image" => "Photo",
                "video" => "Video",
                "audio" => "Voice message",
                _ => "File",
            }
            .to_owned()
        }
        _ => m.text.clone(),
    }
}

impl<S: Store> Client<S> {
    /// Registers this device's push token with the relay (replacing an earlier one): when
    /// an envelope waits for the device and it is not connected, the relay sends a
    /// content-free push through `provider`, which wakes the notification extension
    /// ([`Client::open_notification_extension`]). The token is what the platform gives
    /// the app: APNs' device token bytes, FCM's registration token (UTF-8), a Web Push
    /// subscription as `PushSubscription.toJSON()` serialises it (UTF-8), a UnifiedPush
    /// endpoint's subscription the same way (docs/protocol.md §13.3).
    pub async fn register_push(&self, provider: sotto_proto::PushProvider, token: Vec<u8>) -> Result<(), ClientError> {
        let registration = sotto_proto::PushRegistration { provider, token };
        Ok(self.inner.relay.put_push(&self.inner.device, &registration).await?)
    }

    /// Removes this device's push registration: no more pushes.
    pub async fn unregister_push(&self) -> Result<(), ClientError> {
        Ok(self.inner.relay.delete_push(&self.inner.device).await?)
    }

    /// Opens the account in `store` as the device's notification extension: a second
    /// process beside the app, sharing its store. It keeps no connection: call
    /// [`Client::fetch_notifications`], show what it returns, and drop the client.
    ///
    /// [`ClientError::DeviceInUse`] when another extension process runs on this store.
    pub async fn open_notification_extension(
        store: S,
        key: StoreKey,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let rng = Entropy::for_options(&options).rng()?;
        Self::start_as(store, key, rng, options, ProcessRole::NotificationExtension).await
    }

    /// Fetches what waits in the mailbox (at most for `max_wait`), decrypts and commits
    /// it, acknowledges what was committed, and returns what to show. Nothing is sent:
    /// receipts and prekey refills wait in the store for the app. Envelopes put aside by
    /// an earlier fetch or by the app (their sender's device list could not be fetched)
    /// are tried again first. When an envelope cannot be handled or put aside now, the
    /// fetch stops there: what was committed before it is returned (`complete` false), or
    /// the error when nothing was.
    pub async fn fetch_notifications(&self, max_wait: Duration) -> Result<Fetched, ClientError> {
        let inner = &self.inner;
        // The events of this fetch are read here; the stream goes back after it, so the
        // next fetch reads it again.
        let rx = inner.events_rx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(rx) = rx else {
            return Err(ClientError::EventsTaken);
        };
        inner.events_taken.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut events = super::EventStream { rx };
        let result = self.fetch_with(&mut events, max_wait).await;
        inner.events_taken.store(false, std::sync::atomic::Ordering::SeqCst);
        *inner.events_rx.lock().unwrap_or_else(|e| e.into_inner()) = Some(events.rx);
        result
    }

    async fn fetch_with(&self, events: &mut super::EventStream, max_wait: Duration) -> Result<Fetched, ClientError> {
        let inner = &self.inner;
        let mut fetched = Fetched::default();
        let (mut socket, epoch) = match inner.relay.connect_extension(&inner.device).await {
            Ok(c) => c,
            Err(TransportError::Relay { code, .. }) if code == ErrorCode::DEVICE_ACTIVE => {
                fetched.app_active = true;
                return Ok(fetched);
            }
            Err(e) => return Err(e.into()),
        };
        inner.transact(|m| Ok((m.receive_mailbox_epoch(epoch), ()))).await?;
        let deadline = Instant::now() + max_wait;
        // Envelopes put aside earlier (their sender's device list could not be fetched
        // then, here or in the app) are tried again first, within the same time: a later
        // push shows them. (A store that cannot list them fails the commits below too.)
        tokio::select! {
            _ = inner.retry_pending() => {}
            () = rt::sleep_until(deadline) => {}
        }
        let mut unacked = Unacked::default();
        let mut received = Vec::new();
        let result = loop {
            let frame = tokio::select! {
                f = socket.recv() => f,
                () = rt::sleep_until(deadline) => break Ok(()),
            };
            match frame {
                Ok(Some(Frame::Deliver(d))) => {
                    // Not acked when it fails: the app, or the next fetch, gets it again.
                    if let Err(e) = inner.handle_deliver(d.seq, &d.envelope, None).await {
                        break Err(e);
                    }
                    unacked.seq = Some(d.seq);
                    unacked.count += 1;
                    // Taken as they come, so the event queue never fills up under us.
                    while let Some(e) = events.try_next() {
                        received.push(e);
                    }
                    if unacked.count >= ACK_BATCH && !inner.ack(&mut socket, &mut unacked).await {
                        break Ok(());
                    }
                }
                Ok(Some(Frame::QueueEmpty)) => {
                    fetched.complete = true;
                    break Ok(());
                }
                Ok(Some(Frame::Error { code })) if code == ErrorCode::DEVICE_ACTIVE => {
                    fetched.app_active = true;
                    break Ok(());
                }
                // Replaced (the app connected), closed, or anything else ends the fetch.
                Ok(Some(Frame::Error { .. }) | None) | Err(_) => break Ok(()),
                Ok(Some(_)) => {}
            }
        };
        // Only what was committed is acknowledged (the store is synced first).
        let _ = inner.ack(&mut socket, &mut unacked).await;
        socket.close().await;
        // An envelope that failed stays in the mailbox for the app or the next fetch; what
        // was committed before it is still shown (the app would not notify it again).
        let failed = result.err();
        while let Some(e) = events.try_next() {
            received.push(e);
        }
        let own = self.account_id();
        for e in received {
            let Event::MessageReceived(m) = e else { continue };
            if m.status == MessageStatus::SentElsewhere || m.sender.0 == own {
                continue;
            }
            let conversation = self.conversation_of(&m.conversation).await;
            let (sender_name, group_title) = {
                let mac = inner.machine.lock().await;
                let name = mac
                    .conversation(&m.sender.0)
                    .and_then(|c| c.nickname.clone().or(c.profile_name.clone()))
                    .unwrap_or_default();
                let title = match conversation {
                    Conversation::Group(g) => mac.groups().into_iter().find(|i| i.id == g).map(|i| i.title),
                    Conversation::Direct(_) => None,
                };
                (name, title)
            };
            fetched.notifications.push(Notification {
                key: m.key(),
                conversation,
                sender_name,
                group_title,
                body: body_of(&m),
                timestamp_ms: m.timestamp_ms,
            });
        }
        match failed {
            Some(e) if fetched.notifications.is_empty() => Err(e),
            _ => Ok(fetched),
        }
    }
}
