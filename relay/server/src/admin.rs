//! `sotto-relay admin …`: what operators do by hand. Every command reads the same
//! configuration as the relay (file, environment, flags). `check-config` touches no
//! database; the others open it as the relay does (applying pending migrations) and may
//! run beside a running relay. Nothing printed names a user beyond what was asked for.

use std::fmt::Write as _;

use sotto_crypto::{AccountId, DeviceId};
use thiserror::Error;

use crate::config::{BlobBackend, Config};
use crate::storage::{Storage, StorageError, Store};

/// An operator command.
#[derive(Clone, Debug, PartialEq, Eq, clap::Subcommand)]
#[non_exhaustive]
pub enum Admin {
    /// Load and check the configuration, the TLS certificate and key, and the push
    /// credentials, and print a summary (no secrets). Touches no database.
    CheckConfig,
    /// Count accounts, devices, waiting envelopes, push registrations and blobs.
    Stats,
    /// Show one device's mailbox: envelopes waiting, their bytes, the last seq.
    Mailbox {
        /// The account id.
        account: String,
        /// The device id.
        device: u32,
    },
    /// Delete every envelope waiting for one device, and its push registration. The
    /// device stays listed (only its account can change its device list); its mailbox
    /// numbers on from where it was.
    PurgeDevice {
        /// The account id.
        account: String,
        /// The device id.
        device: u32,
        /// Confirm: without it nothing is deleted.
        #[arg(long)]
        yes: bool,
    },
}

/// Why a command failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The TLS certificate or key does not load.
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// A push provider's credentials do not load.
    #[error("push: {0}")]
    Push(#[from] crate::push::PushError),
    /// The database failed or refused.
    #[error("database: {0}")]
    Storage(#[from] StorageError),
    /// An argument is not valid.
    #[error("{0}")]
    Usage(String),
}

/// Runs `cmd` and returns what to print.
pub async fn run(cmd: &Admin, config: &Config) -> Result<String, AdminError> {
    let mut out = String::new();
    match cmd {
        Admin::CheckConfig => check_config(config, &mut out)?,
        Admin::Stats => {
            let store = open(config).await?;
            let s = store.relay_stats().await;
            store.close().await;
            let s = s?;
            let _ = writeln!(out, "accounts            {}", s.accounts);
            let _ = writeln!(out, "devices             {}", s.devices);
            let _ = writeln!(out, "envelopes waiting   {} ({} bytes)", s.envelopes, s.envelope_bytes);
            let _ = writeln!(out, "fullest mailbox     {}", s.deepest_mailbox);
            let _ = writeln!(out, "push registrations  {}", s.push_registrations);
            let _ = writeln!(out, "blobs               {} ({} bytes)", s.blobs, s.blob_bytes);
        }
        Admin::Mailbox { account, device } => {
            let (account, device) = target(account, *device)?;
            let store = open(config).await?;
            let m = store.mailbox_stats(&account, device).await;
            store.close().await;
            let m = m?;
            let _ = writeln!(out, "envelopes waiting   {} ({} bytes)", m.depth, m.bytes);
            let _ = writeln!(out, "last seq            {}", m.last_seq);
        }
        Admin::PurgeDevice { account, device, yes } => {
            let (account, device) = target(account, *device)?;
            if !yes {
                return Err(AdminError::Usage(
                    "purge-device deletes the device's waiting envelopes for good: add --yes".into(),
                ));
            }
            let store = open(config).await?;
            let result = purge(&store, &account, device).await;
            store.close().await;
            let (deleted, push) = result?;
            let _ = writeln!(out, "deleted {deleted} envelopes");
            if push {
                let _ = writeln!(out, "deleted the push registration");
            }
        }
    }
    Ok(out)
}

/// Opens the relay's database; an SQLite file that is not there is an error, not a new
/// empty database.
async fn open(config: &Config) -> Result<Store, AdminError> {
    let url = config.database_url();
    let file = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .map(|p| p.split('?').next().unwrap_or(p))
        .filter(|p| !p.starts_with(':'));
    if let Some(path) = file
        && !std::path::Path::new(path).is_file()
    {
        return Err(AdminError::Usage(format!("no relay database at {path}")));
    }
    Ok(Store::open(&url, 2).await?)
}

fn target(account: &str, device: u32) -> Result<(AccountId, DeviceId), AdminError> {
    let account = account
        .parse::<AccountId>()
        .map_err(|_| AdminError::Usage(format!("not an account id: {account:?}")))?;
    Ok((account, DeviceId(device)))
}

async fn purge(store: &Store, account: &AccountId, device: DeviceId) -> Result<(u64, bool), AdminError> {
    // Known device first (an ack of an unknown one deletes nothing and says nothing).
    store.last_seq(account, device).await?;
    // Up to whatever seq the device's row holds when the ack takes its lock, so sends
    // stored meanwhile go too.
    let deleted = store.ack(account, device, u64::MAX).await?;
    let push = store.delete_push(account, device).await?;
    Ok((deleted, push))
}

fn check_config(config: &Config, out: &mut String) -> Result<(), AdminError> {
    let _ = writeln!(out, "listen              {}", config.listen);
    let _ = writeln!(out, "public url          {}", config.public_url);
    let database = match &config.database_url {
        Some(url) if url.starts_with("postgres") => "PostgreSQL (database_url)".to_owned(),
        Some(_) => "SQLite (database_url)".to_owned(),
        None => format!("SQLite in {}", config.data_dir.display()),
    };
    let _ = writeln!(out, "database            {database}");
    match &config.tls {
        Some(tls) => {
            crate::tls::Certificates::load(tls)?;
            let _ = writeln!(out, "tls                 {} (loads)", tls.cert_path.display());
        }
        None if config.behind_tls_proxy => {
            let _ = writeln!(out, "tls                 terminated by a proxy in front");
        }
        None => {
            let _ = writeln!(out, "tls                 none (plain HTTP: loopback only)");
        }
    }
    let push = crate::push::check(&config.push)?;
    let _ = writeln!(
        out,
        "push                {}",
        if push.is_empty() {
            "none".to_owned()
        } else {
            push.join(", ") + " (credentials load)"
        }
    );
    let blobs = match config.blobs.backend {
        BlobBackend::Disk => "disk",
        BlobBackend::S3 => "S3",
    };
    let _ = writeln!(out, "blob store          {blobs}");
    match &config.cluster {
        Some(c) => {
            c.load_secret().map_err(AdminError::Usage)?;
            if !config
                .database_url
                .as_deref()
                .is_some_and(|u| u.starts_with("postgres"))
            {
                return Err(AdminError::Usage(
                    "cluster mode needs a PostgreSQL database_url: the nodes share it".into(),
                ));
            }
            let _ = writeln!(out, "cluster             NATS {} (the secret loads)", c.nats_url);
        }
        None => {
            let _ = writeln!(out, "cluster             no (a single node)");
        }
    }
    let metrics = match (&config.metrics_listen, &config.metrics_token) {
        (Some(addr), _) => format!("on {addr}"),
        (None, Some(_)) => "on the public listener, with the token".to_owned(),
        (None, None) => "not served".to_owned(),
    };
    let _ = writeln!(out, "metrics             {metrics}");
    let _ = writeln!(out, "configuration OK");
    Ok(())
}
