//! Attachments (docs/protocol.md §16): a file is encrypted in a stream of chunks (§16.2)
//! and uploaded piece by piece as a relay blob (§16.4), paid with an unlinkable token
//! (§16.3); its pointer (§16.5) then goes in a chat item like a text. A group message
//! uploads the blob once: the pointer travels in the group's one encrypted item.
//!
//! Memory stays flat whatever the file's size: two pieces of ciphertext
//! ([`BLOB_PIECE`]: one moving, one being encrypted or decrypted) and one chunk of
//! plaintext are held at a time. A download is checked
//! (every chunk's tag, the length, the padding and the ciphertext digest) before the
//! file appears at its path; [`Client::download_attachment_bytes`] returns bytes only
//! once all of them were checked; an [`AttachmentReader`] hands out pieces that passed
//! their chunks' tags, and the last one only after the whole-file checks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sotto_crypto::attachment::{AttachmentError, AttachmentKey, Decryptor, Encryptor, Layout};
use sotto_crypto::token::TokenRequest;
use sotto_proto::{BlobCreate, ErrorCode, TokenIssue};

use super::{Client, ClientError};
use crate::content::{Attachment, ChatItem, MAX_FILE_NAME_LEN, MAX_MEDIA_TYPE_LEN, MAX_THUMBNAIL_LEN, SharedKey};
use crate::machine::Conversation;
use crate::store::{Store, StoredMessage};
use crate::transport::{BLOB_PIECE, Relay, TransportError};

/// How many upload tokens one request asks for (the rest wait in memory for the next
/// attachments, so a token is rarely fetched right before the upload it pays for).
const TOKEN_BATCH: usize = 8;
/// A piece of ciphertext and the two chunks that may follow it before it is cut off.
const PIECE_BUFFER: usize = BLOB_PIECE + sotto_crypto::attachment::CHUNK_LEN * 2;
/// How many times one piece is tried before the upload fails (the relay may restart).
const PIECE_ATTEMPTS: u32 = 6;
/// How many tokens refused as spent or unknown an upload tries past before it fails.
const MAX_REFUSED_TOKENS: usize = TOKEN_BATCH + 1;

/// Cancels an upload or a download in progress: the call returns
/// [`ClientError::Cancelled`] at its next piece. Clones share the flag.
#[derive(Clone, Default, Debug)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A flag not raised yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises it.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// True once raised.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Progress of an upload or download: bytes done of the total (ciphertext bytes on the
/// wire, padding included).
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

/// What the receiver is shown about an attachment besides the file.
#[derive(Clone, Default)]
pub struct AttachmentInfo {
    /// The media type, e.g. `image/jpeg` (cut to 127 bytes).
    pub media_type: String,
    /// The file name (cut to 255 bytes).
    pub file_name: String,
    /// A caption (the message text), maybe empty.
    pub caption: String,
    /// A small preview image (at most [`MAX_THUMBNAIL_LEN`] bytes; larger is refused).
    pub thumbnail: Option<Vec<u8>>,
}

impl std::fmt::Debug for AttachmentInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachmentInfo")
            .field("media_type", &self.media_type)
            .field("file_name_len", &self.file_name.len())
            .field("caption_len", &self.caption.len())
            .finish_non_exhaustive()
    }
}

/// Upload tokens not spent yet: `(issuer epoch, token)`.
#[derive(Default)]
pub(crate) struct Tokens {
    pool: std::sync::Mutex<Vec<Token>>,
    /// Held from the snapshot of the pool to its commit, so saves land in order.
    saving: tokio::sync::Mutex<()>,
}

/// An upload token and the issuer epoch it belongs to.
type Token = (u32, [u8; sotto_crypto::token::TOKEN_LEN]);

impl Tokens {
    pub(crate) fn new(kept: Vec<Token>) -> Self {
        Self {
            pool: std::sync::Mutex::new(kept),
            saving: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Token>> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Below this many kept tokens, a batch is fetched in the background.
const TOKENS_LOW: usize = 4;
/// At most this many tokens are kept.
const MAX_KEPT_TOKENS: usize = 64;
/// The format of the kept tokens: `0x01 ‖ count (u16) ‖ (epoch (u32) ‖ token (64))*`, big-endian.
const TOKENS_FORMAT: u8 = 1;

fn encode_tokens(pool: &[Token]) -> Vec<u8> {
    // The pool is used from its end: the newest tokens are its first ones.
    let kept = &pool[..pool.len().min(MAX_KEPT_TOKENS)];
    let mut out = Vec::with_capacity(3 + kept.len() * (4 + sotto_crypto::token::TOKEN_LEN));
    out.push(TOKENS_FORMAT);
    out.extend_from_slice(&(kept.len() as u16).to_be_bytes());
    for (epoch, token) in kept {
        out.extend_from_slice(&epoch.to_be_bytes());
        out.extend_from_slice(token);
    }
    out
}

/// The kept tokens; nothing for bytes of another format or a wrong length (the client
/// then fetches new ones).
pub(crate) fn decode_tokens(bytes: &[u8]) -> Vec<Token> {
    const ONE: usize = 4 + sotto_crypto::token::TOKEN_LEN;
    let [TOKENS_FORMAT, hi, lo, rest @ ..] = bytes else {
        return Vec::new();
    };
    let n = usize::from(u16::from_be_bytes([*hi, *lo]));
    if n > MAX_KEPT_TOKENS || rest.len() != n * ONE {
        return Vec::new();
    }
    rest.chunks_exact(ONE)
        .filter_map(|c| {
            let epoch = u32::from_be_bytes(c[..4].try_into().ok()?);
            Some((epoch, c[4..].try_into().ok()?))
        })
        .collect()
}

fn check_cancel(cancel: Option<&Cancel>) -> Result<(), ClientError> {
    if cancel.is_some_and(Cancel::is_cancelled) {
        return Err(ClientError::Cancelled);
    }
    Ok(())
}

fn io(e: std::io::Error) -> ClientError {
    ClientError::File(e.kind().to_string())
}

/// A piece upload or a range download running as a task of its own, so the next piece
/// is encrypted (or the last range decrypted) while it moves: one transfer in flight
/// beside the CPU work, and never more than one piece held beyond the one being worked on.
struct InFlight<T>(tokio::sync::oneshot::Receiver<Result<T, ClientError>>);

impl<T: Send + 'static> InFlight<T> {
    #[cfg(not(target_arch = "wasm32"))]
    fn start(f: impl std::future::Future<Output = Result<T, ClientError>> + Send + 'static) -> Self {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Detached: a caller that gives up leaves at most this one request to finish.
        let _task = crate::rt::spawn(async move {
            let _ = tx.send(f.await);
        });
        Self(rx)
    }

    #[cfg(target_arch = "wasm32")]
    fn start(f: impl std::future::Future<Output = Result<T, ClientError>> + 'static) -> Self {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _task = crate::rt::spawn(async move {
            let _ = tx.send(f.await);
        });
        Self(rx)
    }

    async fn finish(mut self) -> Result<T, ClientError> {
        self.wait().await
    }

    /// Waits for the result without giving up the handle, so a caller cancelled while it
    /// waits can wait again. Not to be called again once it returned.
    async fn wait(&mut self) -> Result<T, ClientError> {
        (&mut self.0)
            .await
            .unwrap_or_else(|_| Err(TransportError::Io("the transfer task ended".into()).into()))
    }
}

/// An attachment read as a stream ([`Client::open_attachment`]): each
/// [`AttachmentReader::next_chunk`] returns the plaintext of the next piece (up to
/// [`BLOB_PIECE`] bytes), and the next range downloads while the app handles it.
///
/// Every byte handed out has passed its chunk's tag: the relay, or anyone without the
/// key, cannot change, drop, reorder or cut a byte without `next_chunk` failing with
/// [`ClientError::Attachment`]. The whole-file checks (length, padding, the ciphertext
/// digest in the pointer) can only run at the end, so the last piece is handed out
/// only after they passed, and `Ok(None)` means all of it checked out. An app that
/// plays media as it arrives may show pieces at once; one that must not act on a file
/// before its digest is checked keeps them until `Ok(None)`, or downloads to a path.
///
/// After an error every later call fails again, a network error included (each range is
/// already retried): open the attachment again to start over. A call that is cancelled
/// (dropped) while it waits leaves the reader as it was, and the next call goes on.
/// Dropping the reader cancels the download (at most the one request in flight still
/// completes, and its bytes are dropped).
pub struct AttachmentReader {
    relay: Relay,
    id: [u8; 32],
    total: u64,
    received: u64,
    dec: Option<Decryptor>,
    next: Option<(usize, InFlight<Vec<u8>>)>,
    state: ReadState,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ReadState {
    Reading,
    Done,
    Failed,
}

impl std::fmt::Debug for AttachmentReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachmentReader")
            .field("received", &self.received)
            .field("total", &self.total)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl AttachmentReader {
    /// Ciphertext bytes received so far (for progress, against
    /// [`AttachmentReader::ciphertext_len`]).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The length of the blob on the relay: the ciphertext, padding included.
    pub fn ciphertext_len(&self) -> u64 {
        self.total
    }

    fn fetch(&self, at: u64) -> (usize, InFlight<Vec<u8>>) {
        let n = usize::try_from(self.total - at).unwrap_or(usize::MAX).min(BLOB_PIECE);
        let relay = self.relay.clone();
        let id = self.id;
        (
            n,
            InFlight::start(async move { download_piece(&relay, &id, at, n).await }),
        )
    }

    /// The next piece of checked plaintext, or `Ok(None)` once the whole attachment was
    /// read and checked. [`ClientError::Attachment`] for anything tampered with,
    /// truncated or reordered; a network failure after the retries is returned as it is.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        match self.state {
            ReadState::Reading => {}
            ReadState::Done => return Ok(None),
            ReadState::Failed => {
                return Err(TransportError::Protocol("the download failed earlier".into()).into());
            }
        }
        let result = self.step().await;
        match &result {
            Err(_) => {
                self.state = ReadState::Failed;
                self.next = None;
                self.dec = None;
            }
            Ok(None) => self.state = ReadState::Done,
            Ok(Some(_)) => {}
        }
        result
    }

    /// Cancel-safe: the only await is on the range in flight, which stays in `self.next`
    /// until it completed, so a call dropped while it waits leaves the reader as it was.
    async fn step(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        loop {
            // Only the last piece's passed checks take the decryptor away.
            if self.dec.is_none() {
                return Ok(None);
            }
            let (n, piece) = match self.next.as_mut() {
                Some((n, range)) => (*n, range.wait().await),
                None if self.received == 0 => {
                    self.next = Some(self.fetch(0));
                    continue;
                }
                None => return Err(TransportError::Protocol("the download lost its place".into()).into()),
            };
            self.next = None;
            let piece = piece?;
            self.received += n as u64;
            if self.received < self.total {
                self.next = Some(self.fetch(self.received));
            }
            let mut plain = Vec::with_capacity(n);
            let Some(dec) = self.dec.as_mut() else {
                return Ok(None);
            };
            dec.update(&piece, &mut plain).map_err(ClientError::Attachment)?;
            if self.next.is_none() {
                // The last piece: it is handed out only once the whole file checked out.
                if let Some(dec) = self.dec.take() {
                    dec.finish().map_err(ClientError::Attachment)?;
                }
            }
            if !plain.is_empty() {
                return Ok(Some(plain));
            }
        }
    }
}

/// Uploads one piece, retrying a transient failure; the relay's status decides
/// whether a piece whose answer was lost landed.
async fn upload_piece(relay: &Relay, id: &[u8; 32], offset: u64, piece: Vec<u8>) -> Result<u64, ClientError> {
    let end = offset + piece.len() as u64;
    let mut attempt = 0;
    loop {
        let result = relay.put_blob_piece(id, offset, piece.clone()).await;
        match result {
            Ok(status) if status.received == end => return Ok(end),
            Ok(_) => return Err(TransportError::Protocol("the relay holds another length".into()).into()),
            Err(TransportError::Relay { code, .. }) if code == ErrorCode::OFFSET_MISMATCH => {
                // An earlier attempt landed and its answer was lost, or the relay is
                // still writing it?
                let status = relay.blob_status(id).await?;
                if status.received == end {
                    return Ok(end);
                }
                if status.received == offset && attempt + 1 < PIECE_ATTEMPTS {
                    attempt += 1;
                    crate::rt::sleep(std::time::Duration::from_millis(100 << attempt)).await;
                    continue;
                }
                return Err(TransportError::Relay {
                    status: 409,
                    code: ErrorCode::OFFSET_MISMATCH,
                }
                .into());
            }
            Err(e) if e.is_retryable() && attempt + 1 < PIECE_ATTEMPTS => {
                attempt += 1;
                crate::rt::sleep(std::time::Duration::from_millis(100 << attempt)).await;
                match relay.blob_status(id).await {
                    Ok(s) if s.received == end => return Ok(end),
                    Ok(s) if s.received == offset => {}
                    Ok(_) => {
                        return Err(TransportError::Protocol("the relay holds another length".into()).into());
                    }
                    // Still unreachable: the next attempt tells.
                    Err(_) => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn download_piece(relay: &Relay, id: &[u8; 32], at: u64, n: usize) -> Result<Vec<u8>, ClientError> {
    let mut attempt = 0;
    loop {
        match relay.get_blob_range(id, at, n).await {
            Ok(b) => return Ok(b),
            Err(e) if e.is_retryable() && attempt + 1 < PIECE_ATTEMPTS => {
                attempt += 1;
                crate::rt::sleep(std::time::Duration::from_millis(100 << attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A thumbnail above [`MAX_THUMBNAIL_LEN`] is refused before anything is uploaded.
fn check_thumbnail(info: &AttachmentInfo) -> Result<(), ClientError> {
    match &info.thumbnail {
        Some(t) if t.len() > MAX_THUMBNAIL_LEN => Err(ClientError::Attachment(AttachmentError::TooLarge {
            len: t.len() as u64,
            max: MAX_THUMBNAIL_LEN as u64,
        })),
        _ => Ok(()),
    }
}

/// An attachment being uploaded from bytes the caller hands over as it gets them
/// ([`Client::begin_attachment`]). [`AttachmentWriter::write`] encrypts them and uploads
/// every full piece, one piece in flight while the next is encrypted;
/// [`AttachmentWriter::send`] checks that exactly the announced length came, uploads the
/// rest and sends the message. Dropped before `send`, the upload is abandoned: nothing is
/// sent, and the relay collects the incomplete blob.
pub struct AttachmentWriter<'a, S: Store> {
    client: &'a Client<S>,
    key: AttachmentKey,
    enc: Encryptor,
    id: [u8; 32],
    len: u64,
    written: u64,
    sent: u64,
    total: u64,
    out: Vec<u8>,
    /// The piece being uploaded: where it ends, and its transfer.
    inflight: Option<(u64, InFlight<u64>)>,
    progress: Option<Progress<'a>>,
    cancel: Option<&'a Cancel>,
    /// An earlier call failed: the upload cannot go on.
    failed: bool,
}

impl<S: Store> std::fmt::Debug for AttachmentWriter<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachmentWriter")
            .field("len", &self.len)
            .field("written", &self.written)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl<S: Store> AttachmentWriter<'_, S> {
    /// Encrypts `bytes` (the next part of the file) and uploads what makes full pieces.
    /// More bytes in total than announced is [`AttachmentError::LengthMismatch`].
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        if self.failed {
            return Err(TransportError::Protocol("the upload failed earlier".into()).into());
        }
        let result = self.write_inner(bytes).await;
        self.failed = result.is_err();
        result
    }

    async fn write_inner(&mut self, mut bytes: &[u8]) -> Result<(), ClientError> {
        if bytes.len() as u64 > self.len - self.written {
            return Err(ClientError::Attachment(AttachmentError::LengthMismatch {
                expected: self.len,
            }));
        }
        while !bytes.is_empty() {
            check_cancel(self.cancel)?;
            let n = bytes.len().min(sotto_crypto::attachment::CHUNK_LEN);
            self.enc
                .update(&bytes[..n], &mut self.out)
                .map_err(ClientError::Attachment)?;
            self.written += n as u64;
            bytes = &bytes[n..];
            self.flush(false).await?;
        }
        Ok(())
    }

    /// How many bytes of the file were written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Uploads every full piece (and with `last`, what is left), in order: each waits
    /// for the answer to the one before.
    async fn flush(&mut self, last: bool) -> Result<(), ClientError> {
        while self.out.len() >= BLOB_PIECE || (last && !self.out.is_empty()) {
            let n = self.out.len().min(BLOB_PIECE);
            // The piece leaves with its buffer; the rest starts a buffer of the same size.
            let mut rest = Vec::with_capacity(PIECE_BUFFER);
            rest.extend_from_slice(&self.out[n..]);
            self.out.truncate(n);
            let piece = std::mem::replace(&mut self.out, rest);
            self.settle().await?;
            let relay = self.client.inner.relay.clone();
            let (id, offset) = (self.id, self.sent);
            self.inflight = Some((
                offset + n as u64,
                InFlight::start(async move { upload_piece(&relay, &id, offset, piece).await }),
            ));
        }
        Ok(())
    }

    /// Waits for the piece in flight, if any.
    async fn settle(&mut self) -> Result<(), ClientError> {
        if let Some((end, previous)) = self.inflight.take() {
            self.sent = previous.finish().await?;
            if self.sent != end {
                return Err(TransportError::Protocol("the relay holds another length".into()).into());
            }
            if let Some(p) = self.progress {
                p(self.sent, self.total);
            }
            check_cancel(self.cancel)?;
        }
        Ok(())
    }

    /// Encrypts and uploads the end; returns the pointer (without the display fields).
    async fn finish(mut self) -> Result<Attachment, ClientError> {
        if self.failed {
            return Err(TransportError::Protocol("the upload failed earlier".into()).into());
        }
        if self.written != self.len {
            return Err(ClientError::Attachment(AttachmentError::LengthMismatch {
                expected: self.len,
            }));
        }
        let digest = loop {
            check_cancel(self.cancel)?;
            let digest = self.enc.finish_step(&mut self.out).map_err(ClientError::Attachment)?;
            self.flush(digest.is_some()).await?;
            if let Some(d) = digest {
                break d;
            }
        };
        self.settle().await?;
        if self.sent != self.total {
            return Err(ClientError::Attachment(AttachmentError::LengthMismatch {
                expected: self.len,
            }));
        }
        Ok(Attachment {
            blob_id: self.id,
            key: SharedKey(*self.key.to_bytes()),
            digest,
            size: self.len,
            media_type: String::new(),
            file_name: String::new(),
            thumbnail: None,
        })
    }

    /// Finishes the upload (every byte announced must have been written) and sends the
    /// file to `conversation` as an attachment message, returned as stored (status
    /// `Queued`). Failures as for [`Client::send_attachment_from`].
    pub async fn send(self, conversation: Conversation, info: AttachmentInfo) -> Result<StoredMessage, ClientError> {
        check_thumbnail(&info)?;
        let client = self.client;
        let mut attachment = self.finish().await?;
        attachment.media_type = crate::content::truncate_utf8(&info.media_type, MAX_MEDIA_TYPE_LEN).to_owned();
        attachment.file_name = crate::content::truncate_utf8(&info.file_name, MAX_FILE_NAME_LEN).to_owned();
        attachment.thumbnail = info.thumbnail;
        let item = ChatItem::Attachment {
            attachment: Box::new(attachment),
            caption: info.caption,
            quote: None,
            expire_s: 0,
        };
        client
            .queue_item(conversation, item)
            .await?
            .ok_or(ClientError::UnknownMessage)
    }
}

impl<S: Store> super::Inner<S> {
    /// Fetches a batch of upload tokens for this device (against its daily quota), drops
    /// kept ones of epochs the relay no longer accepts, and keeps the rest in the store.
    pub(super) async fn fetch_tokens(&self) -> Result<(), ClientError> {
        let relay = &self.relay;
        let issuer = relay.blob_issuer().await?;
        // Never more than a day's quota in one request (the relay refuses the whole batch).
        let batch = TOKEN_BATCH
            .min(usize::try_from(issuer.tokens_per_day).unwrap_or(TOKEN_BATCH))
            .max(1);
        let request = TokenRequest::new(batch, &mut self.entropy.rng()?)
            .map_err(|e| ClientError::Transport(TransportError::Protocol(e.to_string())))?;
        let issued = relay
            .issue_blob_tokens(
                &self.device,
                &TokenIssue {
                    epoch: issuer.epoch,
                    blinded: request.blinded().to_vec(),
                },
            )
            .await?;
        if issued.epoch != issuer.epoch {
            return Err(TransportError::Protocol("tokens of another epoch".into()).into());
        }
        // The proof ties every answer to the published key: a relay cannot mark this
        // device's tokens with a key of their own.
        let tokens = request
            .finish(
                &issuer.public,
                &issued.evaluated,
                &sotto_crypto::token::Proof(issued.proof),
            )
            .map_err(|e| ClientError::Transport(TransportError::Protocol(e.to_string())))?;
        {
            let mut pool = self.blob_tokens.lock();
            // The relay accepts the current and the previous epoch.
            pool.retain(|(epoch, _)| epoch.saturating_add(1) >= issuer.epoch);
            // Used newest last: the fresh batch goes under the older tokens.
            let old = std::mem::take(&mut *pool);
            pool.extend(tokens.into_iter().map(|t| (issued.epoch, t)));
            pool.extend(old);
        }
        self.keep_tokens().await;
        Ok(())
    }

    /// Writes the token pool to the store (best effort: a failure costs only tokens).
    pub(super) async fn keep_tokens(&self) {
        let _saving = self.blob_tokens.saving.lock().await;
        let encoded = encode_tokens(&self.blob_tokens.lock());
        let changes = crate::store::Changes {
            blob_tokens: Some(encoded),
            ..Default::default()
        };
        let _ = self.store.commit(changes).await;
    }

    /// Called on every heartbeat of the app's connection: with fewer than
    /// [`TOKENS_LOW`] tokens kept, plans a fetch a random delay ahead
    /// ([`super::ClientOptions::token_refill_delay`]), and makes it once due.
    pub(super) async fn maybe_refill_tokens(&self) {
        if self.blob_tokens.lock().len() >= TOKENS_LOW {
            *self.token_refill_at.lock().unwrap_or_else(|p| p.into_inner()) = None;
            return;
        }
        let now = crate::rt::Instant::now();
        let due = {
            let mut at = self.token_refill_at.lock().unwrap_or_else(|p| p.into_inner());
            match *at {
                None => {
                    let mut rng = self.net_rng.lock().unwrap_or_else(|e| e.into_inner());
                    *at = Some(now + super::outbox::uniform(&mut rng, &self.options.token_refill_delay));
                    false
                }
                Some(t) if now >= t => {
                    // The next one, if this fails, gets a new random time.
                    *at = None;
                    true
                }
                Some(_) => false,
            }
        };
        if due {
            let _ = self.fetch_tokens().await;
        }
    }
}

impl<S: Store> Client<S> {
    /// One unspent upload token, fetching a batch when none is kept (the fallback: the
    /// background refill keeps a few).
    async fn blob_token(&self) -> Result<Token, ClientError> {
        let popped = self.inner.blob_tokens.lock().pop();
        let token = match popped {
            Some(t) => t,
            None => {
                self.inner.fetch_tokens().await?;
                self.inner
                    .blob_tokens
                    .lock()
                    .pop()
                    .ok_or_else(|| ClientError::from(TransportError::Protocol("no tokens issued".into())))?
            }
        };
        self.inner.keep_tokens().await;
        Ok(token)
    }

    /// Starts an attachment of exactly `len` bytes that the caller feeds as it gets them
    /// (from a stream, a camera, a web `Blob` read in slices): it creates the blob, paid
    /// with an upload token, and returns the [`AttachmentWriter`] that encrypts and
    /// uploads what it is given. Memory stays flat whatever `len` is.
    pub async fn begin_attachment<'a>(
        &'a self,
        len: u64,
        progress: Option<Progress<'a>>,
        cancel: Option<&'a Cancel>,
    ) -> Result<AttachmentWriter<'a, S>, ClientError> {
        let layout = Layout::of(len).map_err(ClientError::Attachment)?;
        let total = layout.ciphertext_len();
        let key = AttachmentKey::generate(&mut self.inner.entropy.rng()?);
        let enc = Encryptor::new(&key, len, &mut self.inner.entropy.rng()?).map_err(ClientError::Attachment)?;
        check_cancel(cancel)?;
        // A token the relay refuses as spent or unknown (another epoch's) is dropped and the
        // next one tried; one refused for another reason (too large, storage full, rate
        // limited) was not redeemed and goes back; after a network failure the create may
        // have committed, so the token is dropped.
        let mut refused = 0;
        let id = loop {
            let (epoch, token) = self.blob_token().await?;
            let created = self
                .inner
                .relay
                .create_blob(&BlobCreate {
                    epoch,
                    token,
                    length: total,
                })
                .await;
            match created {
                Ok(id) => break id,
                Err(TransportError::Relay { code, .. })
                    if (code == ErrorCode::TOKEN_SPENT || code == ErrorCode::TOKEN_INVALID)
                        && refused < MAX_REFUSED_TOKENS =>
                {
                    refused += 1;
                    if code == ErrorCode::TOKEN_INVALID {
                        // Its epoch is no longer accepted (kept across a long pause), nor
                        // any before it: those go too, and a fresh batch is fetched.
                        self.inner.blob_tokens.lock().retain(|(e, _)| *e > epoch);
                        self.inner.keep_tokens().await;
                    }
                }
                Err(e @ TransportError::Relay { .. }) => {
                    let spent = matches!(&e, TransportError::Relay { code, .. }
                        if *code == ErrorCode::TOKEN_SPENT || *code == ErrorCode::TOKEN_INVALID);
                    if !spent {
                        self.inner.blob_tokens.lock().push((epoch, token));
                        self.inner.keep_tokens().await;
                    }
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            }
        };
        let mut out: Vec<u8> = Vec::with_capacity(PIECE_BUFFER);
        out.extend_from_slice(&enc.header());
        Ok(AttachmentWriter {
            client: self,
            key,
            enc,
            id,
            len,
            written: 0,
            sent: 0,
            total,
            out,
            inflight: None,
            progress,
            cancel,
            failed: false,
        })
    }

    /// Encrypts and uploads `len` bytes read from `reader`, then sends them to
    /// `conversation` (a contact or a group) as an attachment message, returned as stored
    /// (status `Queued`, like a text). A group's members all download the one blob.
    ///
    /// Typed failures: a file above 16 GiB or a thumbnail above [`MAX_THUMBNAIL_LEN`]
    /// ([`ClientError::Attachment`]), the relay's size and quota refusals
    /// (`BLOB_TOO_LARGE`, `QUOTA_EXCEEDED`, `STORAGE_FULL` in
    /// [`ClientError::Transport`]), [`ClientError::Cancelled`], and a reader that fails or
    /// ends early ([`ClientError::File`]). Nothing is sent unless the whole upload
    /// succeeded.
    pub async fn send_attachment_from(
        &self,
        conversation: Conversation,
        reader: &mut (dyn std::io::Read + Send),
        len: u64,
        info: AttachmentInfo,
        progress: Option<Progress<'_>>,
        cancel: Option<&Cancel>,
    ) -> Result<StoredMessage, ClientError> {
        check_thumbnail(&info)?;
        let mut writer = self.begin_attachment(len, progress, cancel).await?;
        let mut buf = vec![0u8; sotto_crypto::attachment::CHUNK_LEN];
        let mut left = len;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = reader.read(&mut buf[..want]).map_err(io)?;
            if n == 0 {
                return Err(ClientError::Attachment(AttachmentError::LengthMismatch {
                    expected: len,
                }));
            }
            writer.write(&buf[..n]).await?;
            left -= n as u64;
        }
        writer.send(conversation, info).await
    }

    /// [`Client::send_attachment_from`] with the bytes in memory.
    pub async fn send_attachment_bytes(
        &self,
        conversation: Conversation,
        bytes: &[u8],
        info: AttachmentInfo,
        progress: Option<Progress<'_>>,
        cancel: Option<&Cancel>,
    ) -> Result<StoredMessage, ClientError> {
        let mut reader = bytes;
        self.send_attachment_from(conversation, &mut reader, bytes.len() as u64, info, progress, cancel)
            .await
    }

    /// Opens an attachment for reading piece by piece: see [`AttachmentReader`]. Nothing
    /// is fetched until the first [`AttachmentReader::next_chunk`].
    pub fn open_attachment(&self, attachment: &Attachment) -> Result<AttachmentReader, ClientError> {
        let key = AttachmentKey::from_bytes(&attachment.key.0);
        let dec = Decryptor::new(&key, attachment.size, attachment.digest).map_err(ClientError::Attachment)?;
        let total = dec.layout().ciphertext_len();
        Ok(AttachmentReader {
            relay: self.inner.relay.clone(),
            id: attachment.blob_id,
            total,
            received: 0,
            dec: Some(dec),
            next: None,
            state: ReadState::Reading,
        })
    }

    /// Downloads and decrypts an attachment, handing each checked piece of plaintext to
    /// `sink`. The caller must not release what `sink` received until this returns `Ok`:
    /// the length, the padding and the digest are checked at the end.
    async fn download_into(
        &self,
        attachment: &Attachment,
        sink: &mut (dyn FnMut(&[u8]) -> Result<(), ClientError> + Send),
        progress: Option<Progress<'_>>,
        cancel: Option<&Cancel>,
    ) -> Result<(), ClientError> {
        let mut reader = self.open_attachment(attachment)?;
        loop {
            check_cancel(cancel)?;
            let plain = reader.next_chunk().await?;
            if let Some(plain) = &plain {
                sink(plain)?;
            }
            // After every piece, the last (which may be padding only) included.
            if let Some(p) = progress {
                p(reader.received(), reader.ciphertext_len());
            }
            if plain.is_none() {
                return Ok(());
            }
        }
    }

    /// Downloads an attachment into memory and returns it once every check passed
    /// (chunk tags, length, padding, digest): [`ClientError::Attachment`] for anything
    /// tampered with, truncated or reordered. For files of a few MiB; larger ones go to a
    /// path ([`Client::download_attachment`]).
    pub async fn download_attachment_bytes(
        &self,
        attachment: &Attachment,
        progress: Option<Progress<'_>>,
        cancel: Option<&Cancel>,
    ) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        let mut sink = |b: &[u8]| -> Result<(), ClientError> {
            out.extend_from_slice(b);
            Ok(())
        };
        self.download_into(attachment, &mut sink, progress, cancel).await?;
        Ok(out)
    }

    /// Downloads an attachment to the file `path`. The plaintext is written to a
    /// temporary file beside it, which becomes `path` (renamed after an fsync) only once
    /// every check passed; on any failure it is deleted and `path` is untouched.
    ///
    /// `path` is the app's choice: never build it from the sender's `file_name` without
    /// sanitizing it.
    #[cfg(feature = "native")]
    pub async fn download_attachment(
        &self,
        attachment: &Attachment,
        path: &std::path::Path,
        progress: Option<Progress<'_>>,
        cancel: Option<&Cancel>,
    ) -> Result<(), ClientError> {
        use std::io::Write;
        let mut name = path
            .file_name()
            .map(|n| n.to_os_string())
            .ok_or_else(|| ClientError::File("not a file path".into()))?;
        name.push(format!(".part-{}", super::hex(&attachment.blob_id[..8])));
        let part = path.with_file_name(name);
        let file = std::fs::File::create(&part).map_err(io)?;
        let mut writer = std::io::BufWriter::with_capacity(1 << 20, file);
        let result = {
            let mut sink = |b: &[u8]| writer.write_all(b).map_err(io);
            self.download_into(attachment, &mut sink, progress, cancel).await
        };
        let result = result.and_then(|()| {
            let file = writer.into_inner().map_err(|e| io(e.into_error()))?;
            file.sync_all().map_err(io)?;
            std::fs::rename(&part, path).map_err(io)
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&part);
        }
        result
    }

    /// [`Client::send_attachment_from`] reading the file at `path`; the file name shown is
    /// the path's last component unless `info` names one.
    #[cfg(feature = "native")]
    pub async fn send_attachment_file(
        &self,
        conversation: Conversation,
        path: &std::path::Path,
        mut info: AttachmentInfo,
        progress: Option<Progress<'_>>,
        cancel: Option<&Cancel>,
    ) -> Result<StoredMessage, ClientError> {
        let mut file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if info.file_name.is_empty() {
            info.file_name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
        self.send_attachment_from(conversation, &mut file, len, info, progress, cancel)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_tokens_round_trip_and_bad_bytes_give_none() {
        let pool: Vec<Token> = (0..70u32).map(|i| (i, [i as u8; 64])).collect();
        let encoded = encode_tokens(&pool);
        // At most MAX_KEPT_TOKENS, the newest (first) ones.
        assert_eq!(decode_tokens(&encoded), pool[..MAX_KEPT_TOKENS].to_vec());
        assert_eq!(decode_tokens(&encode_tokens(&[])), Vec::<Token>::new());
        for bad in [
            &b""[..],
            &[2, 0, 0][..],
            &encoded[..encoded.len() - 1],
            &[1, 0, 1, 0][..],
        ] {
            assert!(decode_tokens(bad).is_empty());
        }
    }
}
