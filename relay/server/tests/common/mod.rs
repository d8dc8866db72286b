//! Test helpers shared by the integration test binaries: key material, databases.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sotto_crypto::{AccountId, AccountKey, Device, DeviceId, DeviceList, Signature};
use sotto_proto::{Challenge, PreKeyUpload};
use sqlx::Connection;

pub mod node;
pub mod relay;

/// A device for relay tests.
pub struct TestDevice {
    pub device: Device,
}

impl TestDevice {
    pub fn id(&self) -> DeviceId {
        self.device.device_id()
    }

    pub fn account_id(&self) -> AccountId {
        self.device.account_id()
    }

    /// Signs a relay challenge with the DSK.
    pub fn sign_challenge(&self, c: &Challenge) -> Signature {
        self.device.sign_relay_auth(&c.relay_id, &c.nonce, c.timestamp_ms)
    }

    /// Signs a relay challenge for the HTTP request `method path` with `body`.
    pub fn sign_http(&self, c: &Challenge, method: &str, path: &str, body: &[u8]) -> Signature {
        let bound = sotto_proto::http_auth_binding(&c.nonce, method, path, body);
        self.device.sign_relay_auth(&c.relay_id, &bound, c.timestamp_ms)
    }

    /// A signed prekey made now, `one_time` one-time prekeys (ids `first..`), `kem`
    /// one-time ML-KEM prekeys (ids `first..`) and a last-resort ML-KEM prekey made now.
    pub fn prekeys(&self, rng: &mut ChaCha20Rng, first: u32, one_time: u32, kem: u32) -> PreKeyUpload {
        self.prekeys_made(rng, first, one_time, kem, hour_now())
    }

    /// As [`TestDevice::prekeys`], with the signed and last-resort prekeys made in `hour`
    /// (their key ids are creation hours, docs/protocol.md §3.4).
    pub fn prekeys_made(&self, rng: &mut ChaCha20Rng, first: u32, one_time: u32, kem: u32, hour: u32) -> PreKeyUpload {
        PreKeyUpload {
            signed_prekey: Some(self.device.generate_signed_prekey(hour, rng).public().clone()),
            one_time_prekeys: self
                .device
                .generate_one_time_prekeys(first, one_time, rng)
                .iter()
                .map(|k| k.public().clone())
                .collect(),
            kem_prekeys: (0..kem)
                .map(|i| self.device.generate_kem_prekey(first + i, false, rng).public().clone())
                .collect(),
            last_resort_kem_prekey: Some(
                self.device
                    .generate_kem_prekey(0x8000_0000 | hour, true, rng)
                    .public()
                    .clone(),
            ),
        }
    }
}

/// The current hour since the Unix epoch.
pub fn hour_now() -> u32 {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    u32::try_from(s / 3600).unwrap()
}

pub fn device(account_id: AccountId, id: u32, rng: &mut ChaCha20Rng) -> TestDevice {
    TestDevice {
        device: Device::generate(account_id, DeviceId(id), rng),
    }
}

pub struct TestAccount {
    pub ak: AccountKey,
    pub devices: Vec<TestDevice>,
    pub list: DeviceList,
}

impl TestAccount {
    pub fn id(&self) -> AccountId {
        self.ak.account_id()
    }

    /// Signs a new device list version over the given devices.
    pub fn relist(&mut self, version: u64, devices: Vec<TestDevice>) {
        self.list = self
            .ak
            .sign_device_list(version, 0, devices.iter().map(|d| d.device.entry()).collect())
            .unwrap();
        self.devices = devices;
    }
}

/// An account with devices `1..=n`, device list version 1.
pub fn account(rng: &mut ChaCha20Rng, n: u32) -> TestAccount {
    let ak = AccountKey::generate(rng);
    let devices: Vec<TestDevice> = (1..=n).map(|i| device(ak.account_id(), i, rng)).collect();
    let list = ak
        .sign_device_list(1, 0, devices.iter().map(|d| d.device.entry()).collect())
        .unwrap();
    TestAccount { ak, devices, list }
}

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

fn unique() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!(
        "{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

const SQLITE_DIR_PREFIX: &str = "sotto-relay-test-";

/// A fresh SQLite database file URL under the system temp dir. The first call in a
/// process also deletes the test databases that earlier runs left behind (older than an
/// hour, so concurrent test binaries keep theirs); [`remove_sqlite`] deletes one at once.
pub fn sqlite_url() -> String {
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(sweep_stale_sqlite_dirs);
    let dir = std::env::temp_dir().join(format!("{SQLITE_DIR_PREFIX}{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    format!("sqlite://{}", dir.join("relay.db").display())
}

/// Deletes the directory of a database made by [`sqlite_url`] (after its pools closed).
pub fn remove_sqlite(url: &str) {
    let path = std::path::Path::new(url.strip_prefix("sqlite://").unwrap());
    let dir = path.parent().unwrap();
    assert!(
        dir.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(SQLITE_DIR_PREFIX))
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn sweep_stale_sqlite_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(SQLITE_DIR_PREFIX))
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(3600));
        if stale {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A fresh PostgreSQL database (created on the server `SOTTO_TEST_POSTGRES_URL` names),
/// or `None` when that variable is unset, after a loud message. Fails when `CI=true`.
pub async fn postgres_url() -> Option<String> {
    let Ok(base) = std::env::var("SOTTO_TEST_POSTGRES_URL") else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("SOTTO_TEST_POSTGRES_URL is unset in CI: the PostgreSQL run must not be skipped");
        }
        // Written to the raw stderr so the test harness does not capture it; once per binary.
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED: PostgreSQL (set SOTTO_TEST_POSTGRES_URL, or run scripts/test.sh, which \
                 starts a throwaway cluster) ***\n"
            );
        });
        return None;
    };
    let name = format!("sotto_t_{}", unique());
    let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    Some(format!("{prefix}/{name}"))
}
