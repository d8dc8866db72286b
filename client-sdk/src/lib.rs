//! The Sotto client SDK.
//!
//! - [`machine`]: the sans-IO state machine (sessions, fan-out, inbound processing);
//! - [`store`]: small store traits, a memory store, an encrypted SQLite store (native) and
//!   an encrypted IndexedDB store (web), one conformance suite;
//! - [`content`]: the encrypted message content encoding;
//! - `transport` and [`Client`] (feature `native` or `web`): the relay connection
//!   (challenge auth, heartbeat, reconnect with backoff, resume, persisted outbox) and
//!   the façade apps use.
//!
//! Features: `native` (the default: tokio, SQLite, hyper/tungstenite/rustls sockets and
//! the CLI) or `web` (wasm32 only: the platform's `fetch` and `WebSocket`, IndexedDB,
//! the JavaScript event loop). With neither, the crate is the machine, the memory store
//! and the content codec, with no I/O at all, and builds for `wasm32-unknown-unknown`.
//!
//! ```no_run
//! # #[cfg(feature = "native")]
//! # async fn demo() -> Result<(), sotto_sdk::ClientError> {
//! use sotto_sdk::store::{SqliteStore, StoreKey};
//! use sotto_sdk::{Client, ClientOptions, Event};
//!
//! // The app keeps the store key in the platform keystore.
//! let key = StoreKey::new([7; 32]);
//! let store = SqliteStore::open("alice.db".as_ref(), &key).await?;
//! let alice = Client::create_account(store, key, "http://127.0.0.1:8080", ClientOptions::default()).await?;
//! println!("my contact link: {}", alice.contact_link());
//!
//! let bob = alice.add_contact("sotto:<bob's account id>").await?;
//! println!("compare in person: {}", alice.safety_number(&bob).await?);
//! alice.send_text(&bob, "hello").await?; // queued; sent now or after a reconnect
//!
//! let mut events = alice.events().expect("taken once");
//! while let Some(event) = events.next().await {
//!     match event {
//!         Event::MessageReceived(m) => println!("{}: {}", m.sender.0, m.text),
//!         Event::Undecryptable { cause, .. } => println!("dropped: {cause}"),
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod content;
pub mod group;
pub mod ids;
pub mod machine;
pub mod store;

#[cfg(any(feature = "native", feature = "web"))]
mod client;
#[cfg(any(feature = "native", feature = "web"))]
pub mod link;
#[cfg(any(feature = "native", feature = "web"))]
mod rt;
#[cfg(any(feature = "native", feature = "web"))]
pub mod transport;

#[cfg(any(feature = "native", feature = "web"))]
pub use client::{
    AttachmentInfo, AttachmentReader, AttachmentWriter, Cancel, Client, ClientError, ClientOptions, ConversationList,
    ConversationSummary, Entropy, EventStream, Fetched, ListDiff, Listener, MAX_TIMELINE_WINDOW, MAX_UNREAD_COUNT,
    Notification, Presence, Progress, SearchResults, SendState, Subscription, TYPING_REPEAT_MS, TYPING_TIMEOUT_MS,
    Timeline, TimelineItem, apply_diffs, contact_link, contact_link_with_key, parse_contact, parse_contact_link,
};
pub use content::{Attachment, Content, ContentError, ContentKind};
pub use group::{GroupId, Role};
pub use ids::{BadMessageId, MessageId};
#[cfg(any(feature = "native", feature = "web"))]
pub use link::PendingJoin;
pub use machine::{
    ConnectionState, Conversation, DisconnectCause, Event, GroupInfo, Machine, MachineError, StopCause,
    UndecryptableCause,
};
/// A push service a device registers with ([`Client::register_push`]).
pub use sotto_proto::PushProvider;
pub use store::{MessageKey, MessageKind, MessageStatus, Page, Reaction, StoredMessage};
