//! Attachments, push registration and the notification-extension client, as the SDK
//! has them (docs/protocol.md §16, §13.3, §13.6). Thin: every rule lives in sotto-sdk.

use std::sync::Arc;
use std::time::Duration;

use sotto_sdk::store::SqliteStore;

use crate::chat::{Conversation, MessageKey, TimelineItem};
use crate::{ClientOptions, SottoClient, SottoError, on_runtime, open_store, parse_store_key};

/// What the receiver is shown about a file besides the file.
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct AttachmentInfo {
    /// The media type, such as `image/jpeg`.
    #[uniffi(default = "")]
    pub media_type: String,
    /// The file name shown (for a path: its last component when empty).
    #[uniffi(default = "")]
    pub file_name: String,
    /// A caption (the message's text).
    #[uniffi(default = "")]
    pub caption: String,
    /// A small preview image, at most 32 KiB.
    #[uniffi(default = None)]
    pub thumbnail: Option<Vec<u8>>,
}

impl From<AttachmentInfo> for sotto_sdk::AttachmentInfo {
    fn from(i: AttachmentInfo) -> Self {
        Self {
            media_type: i.media_type,
            file_name: i.file_name,
            caption: i.caption,
            thumbnail: i.thumbnail,
        }
    }
}

/// The file a message carries, as shown before it is downloaded. (Its key stays in the
/// SDK: download it by the message's key.)
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct AttachmentMeta {
    /// The size in bytes.
    pub size: u64,
    /// The media type, as the sender gave it.
    pub media_type: String,
    /// The file name, as the sender gave it: show it, never use it as a path.
    pub file_name: String,
    /// A small preview image.
    pub thumbnail: Option<Vec<u8>>,
}

impl From<&sotto_sdk::Attachment> for AttachmentMeta {
    fn from(a: &sotto_sdk::Attachment) -> Self {
        Self {
            size: a.size,
            media_type: a.media_type.clone(),
            file_name: a.file_name.clone(),
            thumbnail: a.thumbnail.clone(),
        }
    }
}

/// Receives an upload's or a download's progress.
#[uniffi::export(with_foreign)]
pub trait ProgressListener: Send + Sync {
    /// `done` of `total` bytes (ciphertext on the wire). Runs on an SDK thread.
    fn on_progress(&self, done: u64, total: u64);
}

/// Cancels an upload or a download: the call fails with `Cancelled` at its next piece.
#[derive(Debug, Default, uniffi::Object)]
pub struct CancelToken(sotto_sdk::Cancel);

#[uniffi::export]
impl CancelToken {
    /// A token not cancelled yet.
    #[uniffi::constructor]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Cancels the call it was passed to.
    pub fn cancel(&self) {
        self.0.cancel();
    }
}

/// A push service a device registers with (docs/protocol.md §13.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum PushService {
    /// Apple Push Notification service: the token is the device token's bytes.
    Apns,
    /// Firebase Cloud Messaging: the registration token, UTF-8.
    Fcm,
    /// Web Push: the subscription as `PushSubscription.toJSON()` serialises it, UTF-8.
    WebPush,
    /// UnifiedPush: the distributor's subscription, as for Web Push.
    UnifiedPush,
}

impl From<PushService> for sotto_sdk::PushProvider {
    fn from(p: PushService) -> Self {
        match p {
            PushService::Apns => Self::Apns,
            PushService::Fcm => Self::Fcm,
            PushService::WebPush => Self::WebPush,
            PushService::UnifiedPush => Self::UnifiedPush,
        }
    }
}

/// Calls `listener` from the SDK's progress callback.
fn progress_fn(listener: Option<Arc<dyn ProgressListener>>) -> Option<impl Fn(u64, u64) + Send + Sync> {
    listener.map(|l| move |done: u64, total: u64| l.on_progress(done, total))
}

/// The file message `key` carries: `UnknownMessage`, or `InvalidArgument` for a message
/// without one.
async fn attachment_of(
    client: &sotto_sdk::Client<SqliteStore>,
    key: &sotto_sdk::MessageKey,
) -> Result<Box<sotto_sdk::Attachment>, SottoError> {
    let m = client.message(key).await?.ok_or(SottoError::UnknownMessage)?;
    m.attachment.ok_or(SottoError::InvalidArgument {
        reason: "the message carries no file".into(),
    })
}

#[uniffi::export]
impl SottoClient {
    /// Encrypts the file at `path` as it reads it, uploads it to the relay, and sends it
    /// to `conversation`; returns the local item (its `attachment` set). Memory stays flat
    /// whatever the size.
    pub async fn send_attachment_file(
        &self,
        conversation: Conversation,
        path: String,
        info: AttachmentInfo,
        progress: Option<Arc<dyn ProgressListener>>,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<TimelineItem, SottoError> {
        let client = self.client()?;
        let to = conversation.parse()?;
        on_runtime(async move {
            let report = progress_fn(progress);
            let m = client
                .send_attachment_file(
                    to,
                    std::path::Path::new(&path),
                    info.into(),
                    report.as_ref().map(|f| f as _),
                    cancel.as_deref().map(|c| &c.0),
                )
                .await?;
            Ok(TimelineItem::stored(m, conversation))
        })
        .await
    }

    /// [`SottoClient::send_attachment_file`] with the bytes in memory.
    pub async fn send_attachment_bytes(
        &self,
        conversation: Conversation,
        bytes: Vec<u8>,
        info: AttachmentInfo,
        progress: Option<Arc<dyn ProgressListener>>,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<TimelineItem, SottoError> {
        let client = self.client()?;
        let to = conversation.parse()?;
        on_runtime(async move {
            let report = progress_fn(progress);
            let m = client
                .send_attachment_bytes(
                    to,
                    &bytes,
                    info.into(),
                    report.as_ref().map(|f| f as _),
                    cancel.as_deref().map(|c| &c.0),
                )
                .await?;
            Ok(TimelineItem::stored(m, conversation))
        })
        .await
    }

    /// Downloads the file of message `key` to `path`: written to a temporary file beside
    /// it, checked (every chunk, the length, the digest), then renamed. Nothing appears
    /// at `path` unless all of it checked out (`AttachmentCorrupt` otherwise).
    pub async fn download_attachment(
        &self,
        key: MessageKey,
        path: String,
        progress: Option<Arc<dyn ProgressListener>>,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<(), SottoError> {
        let client = self.client()?;
        let key = key.parse()?;
        on_runtime(async move {
            let a = attachment_of(&client, &key).await?;
            let report = progress_fn(progress);
            client
                .download_attachment(
                    &a,
                    std::path::Path::new(&path),
                    report.as_ref().map(|f| f as _),
                    cancel.as_deref().map(|c| &c.0),
                )
                .await?;
            Ok(())
        })
        .await
    }

    /// Downloads the file of message `key` into memory, returned once all of it checked
    /// out. For small files; larger ones go to a path.
    pub async fn download_attachment_bytes(&self, key: MessageKey) -> Result<Vec<u8>, SottoError> {
        let client = self.client()?;
        let key = key.parse()?;
        on_runtime(async move {
            let a = attachment_of(&client, &key).await?;
            Ok(client.download_attachment_bytes(&a, None, None).await?)
        })
        .await
    }

    /// Opens the file of message `key` for reading piece by piece (for playing media as
    /// it arrives, or writing it where a path cannot go). See [`AttachmentReader`].
    pub async fn open_attachment(&self, key: MessageKey) -> Result<Arc<AttachmentReader>, SottoError> {
        let client = self.client()?;
        let key = key.parse()?;
        on_runtime(async move {
            let a = attachment_of(&client, &key).await?;
            let reader = client.open_attachment(&a)?;
            Ok(Arc::new(AttachmentReader {
                ciphertext_len: reader.ciphertext_len(),
                inner: Arc::new(tokio::sync::Mutex::new(ReaderState { reader, ready: None })),
            }))
        })
        .await
    }

    /// Registers this device's push token: the relay then wakes the app's notification
    /// extension with a content-free push when something waits and the app is not
    /// connected.
    pub async fn register_push(&self, service: PushService, token: Vec<u8>) -> Result<(), SottoError> {
        let client = self.client()?;
        on_runtime(async move { Ok(client.register_push(service.into(), token).await?) }).await
    }

    /// Removes this device's push registration.
    pub async fn unregister_push(&self) -> Result<(), SottoError> {
        let client = self.client()?;
        on_runtime(async move { Ok(client.unregister_push().await?) }).await
    }
}

/// What a notification shows for one message.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct NotificationItem {
    /// The message (open its conversation at it).
    pub key: MessageKey,
    /// The sender's name (nickname, else profile name; empty when neither is known).
    pub sender_name: String,
    /// The group's title for a group message.
    pub group_title: Option<String>,
    /// The text, or for a file its caption or its kind ("Photo", "Video", "Voice
    /// message", "File").
    pub body: String,
    /// The sender's timestamp, Unix milliseconds.
    pub timestamp_ms: u64,
}

/// What one fetch of the notification extension found.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct NotificationFetch {
    /// The messages to show, oldest first.
    pub notifications: Vec<NotificationItem>,
    /// The app is connected: it receives, and the extension fetched nothing.
    pub app_active: bool,
    /// The whole mailbox was read.
    pub complete: bool,
}

/// A file read piece by piece ([`SottoClient::open_attachment`]). Each `next_chunk`
/// returns the next piece of plaintext (up to 4 MiB), each byte of it checked by its
/// chunk's tag; the last piece comes only after the whole file checked out (length,
/// padding, digest), so `None` means all of it is intact. An app that must not act on a
/// file before then keeps the pieces until `None`, or downloads to a path. After an
/// error every later call fails (open the file again to start over). A read that may be
/// cancelled (a timeout) uses `wait_chunk` and `take_chunk`, which lose nothing
/// whenever the cancellation lands; dropping the reader cancels it.
#[derive(uniffi::Object)]
pub struct AttachmentReader {
    inner: Arc<tokio::sync::Mutex<ReaderState>>,
    ciphertext_len: u64,
}

struct ReaderState {
    reader: sotto_sdk::AttachmentReader,
    /// A piece `wait_chunk` read and checked, not yet taken.
    ready: Option<Vec<u8>>,
}

impl std::fmt::Debug for AttachmentReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachmentReader").finish_non_exhaustive()
    }
}

#[uniffi::export]
impl AttachmentReader {
    /// The next piece of checked plaintext, or `None` once all of it was read and
    /// checked (`AttachmentCorrupt` for anything tampered with, cut or reordered). A
    /// call cancelled while it waits leaves the reader as it was, but the foreign side's
    /// async glue discards a piece already on its way when the cancellation lands: a
    /// read that may be cancelled uses `wait_chunk` and `take_chunk`.
    pub async fn next_chunk(&self) -> Result<Option<Vec<u8>>, SottoError> {
        let inner = self.inner.clone();
        on_runtime(async move {
            let mut state = inner.lock().await;
            if let Some(piece) = state.ready.take() {
                return Ok(Some(piece));
            }
            Ok(state.reader.next_chunk().await?)
        })
        .await
    }

    /// Reads and checks the next piece and keeps it for `take_chunk`: `true` when a
    /// piece is ready, `false` once all of the file was read and checked. It hands
    /// nothing over, so cancelling it at any moment loses nothing.
    pub async fn wait_chunk(&self) -> Result<bool, SottoError> {
        let inner = self.inner.clone();
        on_runtime(async move {
            let mut state = inner.lock().await;
            if state.ready.is_some() {
                return Ok(true);
            }
            // The SDK reader's read is itself cancellation-safe, and the piece moves
            // into `ready` with no await in between.
            match state.reader.next_chunk().await? {
                Some(piece) => {
                    state.ready = Some(piece);
                    Ok(true)
                }
                None => Ok(false),
            }
        })
        .await
    }

    /// The piece `wait_chunk` made ready, without waiting; `None` when none is (or while
    /// another call reads). A plain (not async) call, so nothing can cancel it between
    /// taking the piece and returning it.
    pub fn take_chunk(&self) -> Option<Vec<u8>> {
        self.inner.try_lock().ok()?.ready.take()
    }

    /// The blob's length on the relay (ciphertext, padding included). The pieces'
    /// plaintext adds up to the attachment's `size` instead.
    pub fn ciphertext_len(&self) -> u64 {
        self.ciphertext_len
    }
}

/// The client of a notification extension (an iOS Notification Service Extension, an
/// Android background worker): a second process on the app's store that fetches what
/// waits, decrypts and commits it beside the app, and returns what to show.
#[derive(uniffi::Object)]
pub struct NotificationExtension {
    client: sotto_sdk::Client<SqliteStore>,
}

impl std::fmt::Debug for NotificationExtension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationExtension").finish_non_exhaustive()
    }
}

#[uniffi::export]
impl NotificationExtension {
    /// Opens the app's store (the same path and key the app uses; on iOS in the app
    /// group's shared container) as the notification extension. `DeviceInUse` when
    /// another extension process runs on it.
    #[uniffi::constructor]
    pub async fn open(store_path: String, store_key: Vec<u8>, options: ClientOptions) -> Result<Arc<Self>, SottoError> {
        let key = parse_store_key(store_key)?;
        on_runtime(async move {
            let store = open_store(&store_path, &key).await?;
            let client = sotto_sdk::Client::open_notification_extension(store, key, options.into()).await?;
            Ok(Arc::new(Self { client }))
        })
        .await
    }

    /// Fetches what waits (for at most `max_wait_ms`), commits it, and returns what to
    /// show. Sends nothing.
    pub async fn fetch(self: Arc<Self>, max_wait_ms: u64) -> Result<NotificationFetch, SottoError> {
        on_runtime(async move {
            let f = self
                .client
                .fetch_notifications(Duration::from_millis(max_wait_ms))
                .await?;
            let mut notifications = Vec::with_capacity(f.notifications.len());
            for n in f.notifications {
                let conversation = Conversation::new(n.conversation);
                notifications.push(NotificationItem {
                    key: MessageKey::new(&n.key, conversation),
                    sender_name: n.sender_name,
                    group_title: n.group_title,
                    body: n.body,
                    timestamp_ms: n.timestamp_ms,
                });
            }
            Ok(NotificationFetch {
                notifications,
                app_active: f.app_active,
                complete: f.complete,
            })
        })
        .await
    }
}
