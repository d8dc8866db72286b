//! The Sotto client SDK.
//!
//! - [`machine`]: the sans-IO state machine (sessions, fan-out, inbound processing);
//! - [`store`]: small store traits, a memory store and an encrypted SQLite store, one
//!   conformance suite;
//! - [`content`]: the encrypted message content encoding;
//! - `transport` and [`Client`] (feature `native`): the relay connection (challenge
//!   auth, heartbeat, reconnect with backoff, resume, persisted outbox) and the façade
//!   apps use.
//!
//! Without the default `native` feature the crate has no tokio, sqlx or sockets and
//! builds for `wasm32-unknown-unknown`.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod content;
pub mod ids;
pub mod machine;
pub mod store;

#[cfg(feature = "native")]
mod client;
#[cfg(feature = "native")]
mod link;
#[cfg(feature = "native")]
pub mod transport;

#[cfg(feature = "native")]
pub use client::{Client, ClientError, ClientOptions, EventStream, contact_link, parse_contact};
pub use content::{Content, ContentError, ContentKind};
pub use ids::MessageId;
pub use machine::{Event, Machine, MachineError, UndecryptableCause};
pub use store::{MessageStatus, Page, StoredMessage};
