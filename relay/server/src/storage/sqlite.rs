//! The SQLite backend: one file in WAL mode, the embedded default.

use std::str::FromStr;
use std::time::Duration;

use sotto_crypto::{AccountId, DeviceId, DeviceList, Ed25519PublicKey, PreKeyBundle};
use sotto_proto::{PreKeyCounts, PreKeyUpload, PushProvider, PushRegistration};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Pool, Sqlite};

use super::backend::storage_impl;
use super::*;

/// The SQLite store.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: Pool<Sqlite>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://PATH`, `sqlite::memory:`
    /// or a bare path), switches it to WAL and runs the migrations.
    pub async fn open(url: &str, max_connections: u32) -> Result<Self, StorageError> {
        let options = if url.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url)?
        } else {
            SqliteConnectOptions::new().filename(url)
        };
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect_with(options)
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }

    /// Another pool on the same database (see [`super::Store::with_own_pool`]).
    pub fn with_own_pool(&self, max_connections: u32) -> Self {
        let options = (*self.pool.connect_options()).clone();
        Self {
            pool: SqlitePoolOptions::new()
                .max_connections(max_connections.max(1))
                .connect_lazy_with(options),
        }
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

storage_impl! {
    store: SqliteStore,
    db: Sqlite,
    begin: "BEGIN IMMEDIATE",
    skip_locked: "",
    for_share: "",
    for_update: "",
}
