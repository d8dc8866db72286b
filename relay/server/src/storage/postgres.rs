//! The PostgreSQL backend, chosen by a `postgres://` URL.

use sotto_crypto::{AccountId, DeviceId, DeviceList, Ed25519PublicKey, PreKeyBundle};
use sotto_proto::{PreKeyCounts, PreKeyUpload, PushProvider, PushRegistration};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Pool, Postgres};

use super::backend::storage_impl;
use super::*;

/// The PostgreSQL store.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: Pool<Postgres>,
}

impl PostgresStore {
    /// Connects and runs the migrations.
    pub async fn open(url: &str, max_connections: u32) -> Result<Self, StorageError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect(url)
            .await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(Self { pool })
    }

    /// Another pool on the same database (see [`super::Store::with_own_pool`]).
    pub fn with_own_pool(&self, max_connections: u32) -> Self {
        let options = (*self.pool.connect_options()).clone();
        Self {
            pool: PgPoolOptions::new()
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
    store: PostgresStore,
    db: Postgres,
    begin: "BEGIN",
    skip_locked: " FOR UPDATE SKIP LOCKED",
    for_share: " FOR SHARE",
    for_update: " FOR UPDATE",
}
