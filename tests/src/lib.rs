//! Cross-crate tests: a real relay (in-process, on 127.0.0.1) and real SDK clients over
//! real sockets, with encrypted SQLite stores in temporary directories.
//!
//! Tests never sleep to wait for something: they await an event or a condition with
//! [`FAILSAFE`], which only exists to fail a broken test instead of hanging it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sotto_crypto::AccountId;
use sotto_relay::storage::Store as RelayStore;
use sotto_relay::{AppState, Config};
use sotto_sdk::store::{SqliteStore, StoreKey};
use sotto_sdk::{Client, ClientOptions, Event, EventStream, Page, StoredMessage};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod outbound;

/// Fails a test that waits longer than this for an event.
pub const FAILSAFE: Duration = Duration::from_secs(60);

/// A temporary directory, deleted on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh directory under the system temp dir.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sotto-tests-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A relay running in this process.
pub struct TestRelay {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its database URL (SQLite file in `dir`).
    pub db_url: String,
    /// Its state.
    pub state: Arc<AppState>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
    _dir: Option<TempDir>,
    _blob_dir: Option<TempDir>,
    tls: bool,
}

/// The test-only CA that signed the relay's test certificate (for `localhost` and
/// `127.0.0.1`); [`options`] trusts it.
pub fn test_ca_pem() -> Vec<u8> {
    std::fs::read(tls_fixture("ca.pem")).unwrap()
}

fn tls_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../relay/server/tests/fixtures/tls")
        .join(name)
}

impl TestRelay {
    /// A relay on a fresh port with its own SQLite database; limits raised for load tests.
    pub async fn start() -> TestRelay {
        let dir = TempDir::new("relay");
        let db_url = format!("sqlite://{}", dir.path().join("relay.db").display());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut relay = Self::serve(listener, db_url, false).await;
        relay._dir = Some(dir);
        relay
    }

    /// As [`TestRelay::start`], on a fresh PostgreSQL database of the server that
    /// `SOTTO_TEST_POSTGRES_URL` names; `None` (after a loud message) when it is unset,
    /// which fails under `CI=true`.
    pub async fn start_postgres() -> Option<TestRelay> {
        Self::start_postgres_with(|_| {}).await
    }

    /// [`TestRelay::start_postgres`], with `configure` applied after the test limits.
    pub async fn start_postgres_with(configure: impl FnOnce(&mut Config)) -> Option<TestRelay> {
        use sqlx::Connection;
        let Ok(base) = std::env::var("SOTTO_TEST_POSTGRES_URL") else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("SOTTO_TEST_POSTGRES_URL is unset in CI: the PostgreSQL run must not be skipped");
            }
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
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "sotto_e2e_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        );
        let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let (prefix, _) = base.rsplit_once('/').unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Some(Self::serve_configured(listener, format!("{prefix}/{name}"), false, configure).await)
    }

    /// As [`TestRelay::start`], serving HTTPS/WSS (TLS 1.3) with the test certificate.
    pub async fn start_tls() -> TestRelay {
        let dir = TempDir::new("relay");
        let db_url = format!("sqlite://{}", dir.path().join("relay.db").display());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut relay = Self::serve(listener, db_url, true).await;
        relay._dir = Some(dir);
        relay
    }

    async fn serve(listener: TcpListener, db_url: String, tls: bool) -> TestRelay {
        Self::serve_configured(listener, db_url, tls, |_| {}).await
    }

    async fn serve_configured(
        listener: TcpListener,
        db_url: String,
        tls: bool,
        configure: impl FnOnce(&mut Config),
    ) -> TestRelay {
        let addr = listener.local_addr().unwrap();
        let scheme = if tls { "https" } else { "http" };
        let mut config = Config {
            public_url: format!("{scheme}://{addr}"),
            ..Config::default()
        };
        if tls {
            config.tls = Some(sotto_relay::config::Tls {
                cert_path: tls_fixture("cert.pem"),
                key_path: tls_fixture("key.pem"),
                hsts_max_age_secs: 0,
            });
        }
        config.limits.rate_per_second = 100_000;
        config.limits.rate_burst = 100_000;
        config.limits.max_mailbox_depth = 100_000;
        // Every test client connects from 127.0.0.1: the per-address limits are raised.
        config.limits.addr_rate_per_second = 1_000_000;
        config.limits.addr_rate_burst = 1_000_000;
        config.limits.addr_rate_bytes_per_second = u32::MAX;
        config.limits.addr_rate_bytes_burst = u32::MAX;
        config.limits.challenge_rate_per_addr = 100_000;
        config.limits.challenge_burst_per_addr = 100_000;
        config.limits.max_tcp_connections_per_addr = 10_000;
        config.limits.max_ws_per_addr = 10_000;
        config.limits.max_unauthenticated_per_addr = 10_000;
        config.blobs.requests_per_minute_per_addr = 1_000_000;
        config.blobs.requests_burst_per_addr = 100_000;
        config.blobs.max_transfers_per_addr = 64;
        // The blob store keeps its files beside the SQLite database; for PostgreSQL, in a
        // directory of the test's own (never the working directory).
        config.database_url = Some(db_url.clone());
        let blob_dir = if db_url.starts_with("postgres") {
            let dir = TempDir::new("blobs");
            config.blobs.dir = Some(dir.path().to_owned());
            Some(dir)
        } else {
            None
        };
        configure(&mut config);
        let store = RelayStore::open(&db_url, 8).await.unwrap();
        let state = AppState::new(config, store);
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(sotto_relay::run(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        TestRelay {
            addr,
            db_url,
            state,
            shutdown: Some(tx),
            handle: Some(handle),
            _dir: None,
            _blob_dir: blob_dir,
            tls,
        }
    }

    /// The URL clients use.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops it gracefully (connections are closed; stored envelopes stay).
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(FAILSAFE, h).await.unwrap().unwrap().unwrap();
        }
    }

    /// Stops it and starts it again on the same address and database.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let dir = self._dir.take();
        let mut fresh = Self::serve(listener, self.db_url.clone(), self.tls).await;
        fresh._dir = dir;
        *self = fresh;
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Options for tests: a seeded generator and quick reconnects.
pub fn options(seed: u64) -> ClientOptions {
    ClientOptions {
        dangerous_rng_seed: Some(seed),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        heartbeat: Duration::from_secs(1),
        extra_root_certificates: vec![test_ca_pem()],
        ..ClientOptions::default()
    }
}

/// One device of a test user: its client, events and store directory.
pub struct Device {
    /// The client.
    pub client: Client<SqliteStore>,
    /// Its events.
    pub events: EventStream,
    /// Where its store lives.
    pub dir: TempDir,
    /// Its seed.
    pub seed: u64,
    /// Events read while waiting for something else, oldest first.
    pub stash: std::collections::VecDeque<Event>,
}

/// The store key of the test device with this seed.
pub fn key(seed: u64) -> StoreKey {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&seed.to_le_bytes());
    k[31] = 0xa5;
    StoreKey::new(k)
}

impl Device {
    /// A new account on `relay`.
    pub async fn create(relay: &TestRelay, seed: u64) -> Device {
        let dir = TempDir::new("client");
        let store = SqliteStore::open(&dir.path().join("client.db"), &key(seed))
            .await
            .unwrap();
        let client = Client::create_account(store, key(seed), &relay.url(), options(seed))
            .await
            .unwrap();
        let events = client.events().unwrap();
        let mut d = Device {
            client,
            events,
            dir,
            seed,
            stash: Default::default(),
        };
        d.wait_for(|e| matches!(e, Event::Connected)).await;
        d
    }

    /// Shuts the client down and opens it again from its SQLite store.
    pub async fn restart(self) -> Device {
        let Device { client, dir, seed, .. } = self;
        client.shutdown().await;
        Self::reopen(dir, seed).await
    }

    /// Opens a client from an existing store directory.
    pub async fn reopen(dir: TempDir, seed: u64) -> Device {
        let store = SqliteStore::open(&dir.path().join("client.db"), &key(seed))
            .await
            .unwrap();
        // Every run of a device draws from a fresh seeded generator: reusing one stream
        // would repeat ratchet keys, exactly what the OS generator prevents in apps.
        static RUNS: AtomicU64 = AtomicU64::new(1);
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let client = Client::open(store, key(seed), options(seed ^ (run << 32)))
            .await
            .unwrap();
        let events = client.events().unwrap();
        Device {
            client,
            events,
            dir,
            seed,
            stash: Default::default(),
        }
    }

    /// The account id.
    pub fn id(&self) -> AccountId {
        self.client.account_id()
    }

    /// The device id.
    pub fn device_id(&self) -> sotto_crypto::DeviceId {
        self.client.device_id()
    }

    /// Awaits the first event matching `f`, looking at the stash first; other events
    /// go to the stash.
    pub async fn wait_for(&mut self, mut f: impl FnMut(&Event) -> bool) -> Event {
        if let Some(i) = self.stash.iter().position(&mut f) {
            return self.stash.remove(i).unwrap();
        }
        tokio::time::timeout(FAILSAFE, async {
            loop {
                let e = self.events.next().await.expect("event stream ended");
                if f(&e) {
                    return e;
                }
                self.stash.push_back(e);
            }
        })
        .await
        .expect("event not seen within the failsafe")
    }

    /// Awaits `n` received messages (texts and transcripts); other events are
    /// stashed.
    pub async fn receive(&mut self, n: usize) -> Vec<StoredMessage> {
        let mut got = Vec::with_capacity(n);
        let mut rest = std::collections::VecDeque::new();
        while let Some(e) = self.stash.pop_front() {
            match e {
                Event::MessageReceived(m) if got.len() < n => got.push(m),
                other => rest.push_back(other),
            }
        }
        self.stash = rest;
        tokio::time::timeout(FAILSAFE, async {
            while got.len() < n {
                match self.events.next().await.expect("event stream ended") {
                    Event::MessageReceived(m) => got.push(m),
                    other => self.stash.push_back(other),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("only {} of {n} messages within the failsafe", got.len()));
        got
    }

    /// Awaits `n` `MessageSent` events.
    pub async fn sent(&mut self, n: usize) {
        for _ in 0..n {
            self.wait_for(|e| matches!(e, Event::MessageSent { .. })).await;
        }
    }

    /// True when an `Undecryptable` event was stashed.
    pub fn saw_undecryptable(&self) -> bool {
        self.stash.iter().any(|e| matches!(e, Event::Undecryptable { .. }))
    }

    /// Every message of a conversation.
    pub async fn history(&self, with: &AccountId) -> Vec<StoredMessage> {
        self.client
            .messages(
                with,
                Page {
                    before: None,
                    limit: 10_000,
                },
            )
            .await
            .unwrap()
    }
}

impl Device {
    /// A new device of `existing`'s account, linked with a code from `existing`, which
    /// confirms it after checking that both show the same fingerprint; it gets the
    /// list key.
    pub async fn join(relay: &TestRelay, existing: &mut Device, seed: u64) -> Device {
        Device::join_with(relay, existing, seed, true).await
    }

    /// [`Device::join`], granting the list key or not.
    pub async fn join_with(relay: &TestRelay, existing: &mut Device, seed: u64, grant_list_key: bool) -> Device {
        let (pending, dir) = Device::start_join(relay, existing, seed).await;
        let id = existing.link_requested(&pending).await;
        existing.client.confirm_link(id, grant_list_key).await.unwrap();
        Device::finish_join(pending, dir, seed).await
    }

    /// Shows a code on `existing` and starts joining with it on a new store.
    pub async fn start_join(
        relay: &TestRelay,
        existing: &Device,
        seed: u64,
    ) -> (sotto_sdk::PendingJoin<SqliteStore>, TempDir) {
        let code = existing.client.link_new_device().await.unwrap();
        Device::start_join_code(relay, &code, seed).await
    }

    /// Starts joining with `code` on a new store (the device names itself "device {seed}").
    pub async fn start_join_code(
        relay: &TestRelay,
        code: &str,
        seed: u64,
    ) -> (sotto_sdk::PendingJoin<SqliteStore>, TempDir) {
        let dir = TempDir::new("client");
        let store = SqliteStore::open(&dir.path().join("client.db"), &key(seed))
            .await
            .unwrap();
        let pending = Client::start_join(
            store,
            key(seed),
            &relay.url(),
            code,
            &format!("device {seed}"),
            options(seed),
        )
        .await
        .unwrap();
        (pending, dir)
    }

    /// Awaits the request of `pending` on this (existing) device; checks the name and
    /// that both sides show the same fingerprint; returns the request id.
    pub async fn link_requested(&mut self, pending: &sotto_sdk::PendingJoin<SqliteStore>) -> u64 {
        let e = self.wait_for(|e| matches!(e, Event::LinkRequested { .. })).await;
        let Event::LinkRequested { id, fingerprint, .. } = e else {
            unreachable!()
        };
        assert!(sotto_sdk::link::fingerprints_match(&fingerprint, pending.fingerprint()));
        id
    }

    /// Awaits the end of a join and wraps the client.
    pub async fn finish_join(pending: sotto_sdk::PendingJoin<SqliteStore>, dir: TempDir, seed: u64) -> Device {
        let client = pending.wait().await.unwrap();
        Device::wrap(client, dir, seed).await
    }

    /// A device around a client that just joined; awaits `Connected`.
    pub async fn wrap(client: Client<SqliteStore>, dir: TempDir, seed: u64) -> Device {
        let events = client.events().unwrap();
        let mut d = Device {
            client,
            events,
            dir,
            seed,
            stash: Default::default(),
        };
        d.wait_for(|e| matches!(e, Event::Connected)).await;
        d
    }
}

/// A device whose client is shut down: its store stays, its mailbox fills.
pub struct Offline {
    dir: TempDir,
    seed: u64,
    id: AccountId,
    device: sotto_crypto::DeviceId,
}

impl Offline {
    /// The account id.
    pub fn id(&self) -> AccountId {
        self.id
    }

    /// The device id (mirrors [`Device`] for helpers that take either).
    pub fn device_id(&self) -> sotto_crypto::DeviceId {
        self.device
    }

    /// Opens the client again.
    pub async fn online(self) -> Device {
        Device::reopen(self.dir, self.seed).await
    }

    /// Opens the device's store as its notification extension (the app stays closed).
    pub async fn extension(&self) -> Client<SqliteStore> {
        let store = SqliteStore::open(&self.dir.path().join("client.db"), &key(self.seed))
            .await
            .unwrap();
        Client::open_notification_extension(store, key(self.seed), options(self.seed))
            .await
            .unwrap()
    }
}

impl Device {
    /// Shuts the client down, keeping its store.
    pub async fn restart_offline(self) -> Offline {
        let id = self.id();
        let device = self.client.device_id();
        let Device { client, dir, seed, .. } = self;
        client.shutdown().await;
        Offline { dir, seed, id, device }
    }
}

/// Faults a relay operator can cause: a database restored from an earlier copy.
pub mod faults {
    use std::path::{Path, PathBuf};

    use super::{FAILSAFE, TestRelay};

    impl TestRelay {
        /// The SQLite database file (the `-wal` and `-shm` files lie beside it).
        fn db_file(&self) -> PathBuf {
            PathBuf::from(self.db_url.trim_start_matches("sqlite://"))
        }

        /// Stops the relay, closes its database, runs `f` on the database file's path
        /// (nothing has it open meanwhile) and starts the relay again on the same
        /// address and database.
        pub async fn stopped(&mut self, f: impl FnOnce(&Path)) {
            self.stop().await;
            tokio::time::timeout(FAILSAFE, self.state.store.close()).await.unwrap();
            f(&self.db_file());
            self.restart().await;
        }
    }

    /// The database file and its `-wal` and `-shm` companions, as they exist.
    fn files(db: &Path) -> Vec<PathBuf> {
        ["", "-wal", "-shm"]
            .iter()
            .map(|s| PathBuf::from(format!("{}{s}", db.display())))
            .collect()
    }

    /// Copies a stopped relay's database to `to` (a directory).
    pub fn back_up(db: &Path, to: &Path) {
        for f in files(db) {
            let target = to.join(f.file_name().unwrap());
            let _ = std::fs::remove_file(&target);
            if f.exists() {
                std::fs::copy(&f, target).unwrap();
            }
        }
    }

    /// Puts back the copy [`back_up`] made in `from`.
    pub fn restore(db: &Path, from: &Path) {
        for f in files(db) {
            let _ = std::fs::remove_file(&f);
            let saved = from.join(f.file_name().unwrap());
            if saved.exists() {
                std::fs::copy(&saved, &f).unwrap();
            }
        }
    }
}

/// A TCP proxy in front of a relay that answers `503 Service Unavailable` to the next few
/// HTTP requests whose request line contains a given text (every client request opens
/// its own connection, so each one is seen), and on demand injects network faults into
/// every connection: refused connections, delays and cuts ([`FlakyProxy::chaos`]).
pub mod proxy {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};

    use sotto_relay::storage::Store as RelayStore;
    use sotto_relay::{AppState, Config};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    use super::{TempDir, TestRelay};

    /// What to refuse: requests whose first line contains `pattern`, `remaining` more times;
    /// and the faults of [`FlakyProxy::chaos`].
    #[derive(Default)]
    struct Rule {
        pattern: String,
        remaining: u32,
        refused: u32,
        chaos: Option<(Chaos, ChaCha20Rng)>,
        cuts: Arc<std::sync::atomic::AtomicU32>,
    }

    /// Faults injected into every new connection, drawn from a seeded generator.
    #[derive(Clone, Copy, Debug)]
    pub struct Chaos {
        /// One connection in this many is closed at once, before a byte passes.
        pub refuse_one_in: u32,
        /// Each connection is cut (both sides closed) once this many bytes, drawn
        /// uniformly from the range, have passed in either direction.
        pub cut_after_bytes: (u64, u64),
        /// Each chunk passed on waits up to this long first.
        pub max_delay: Duration,
    }

    /// What one connection gets.
    struct Fate {
        refuse: bool,
        budget: u64,
        delay_seed: u64,
        max_delay: Duration,
        cuts: Arc<std::sync::atomic::AtomicU32>,
    }

    /// The proxy; stops when dropped.
    pub struct FlakyProxy {
        rule: Arc<Mutex<Rule>>,
        /// Bumped to close every open connection.
        generation: tokio::sync::watch::Sender<u64>,
        task: JoinHandle<()>,
    }

    impl Drop for FlakyProxy {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl FlakyProxy {
        /// The next `n` requests whose request line contains `pattern` get a 503.
        pub fn fail_next(&self, pattern: &str, n: u32) {
            let mut r = self.rule.lock().unwrap();
            r.pattern = pattern.to_owned();
            r.remaining = n;
        }

        /// How many requests were refused so far.
        pub fn refused(&self) -> u32 {
            self.rule.lock().unwrap().refused
        }

        /// Closes every open connection, then every new one meets `chaos` (with faults
        /// drawn from `seed`); `None` lets new connections through untouched again.
        pub fn chaos(&self, chaos: Option<Chaos>, seed: u64) {
            // Fault injection, not a secret: seeded so a run's faults can be drawn again.
            self.rule.lock().unwrap().chaos = chaos.map(|c| (c, ChaCha20Rng::seed_from_u64(seed))); // test only
            self.generation.send_modify(|g| *g += 1);
        }

        /// How many connections chaos refused or cut so far.
        pub fn cuts(&self) -> u32 {
            self.rule
                .lock()
                .unwrap()
                .cuts
                .load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    fn fate(rule: &Mutex<Rule>) -> Option<Fate> {
        let mut r = rule.lock().unwrap();
        let (chaos, rng) = r.chaos.as_mut()?;
        let refuse = chaos.refuse_one_in > 0 && rng.next_u32() % chaos.refuse_one_in == 0;
        let (lo, hi) = chaos.cut_after_bytes;
        let budget = lo + rng.next_u64() % (hi.saturating_sub(lo) + 1);
        let f = Fate {
            refuse,
            budget,
            delay_seed: rng.next_u64() | 1,
            max_delay: chaos.max_delay,
            cuts: r.cuts.clone(),
        };
        Some(f)
    }

    /// Passes bytes from `from` to `to`, each chunk after a random delay, until either
    /// side closes or the shared budget is spent.
    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        budget: Arc<std::sync::atomic::AtomicU64>,
        mut x: u64,
        max_delay: Duration,
        cuts: Arc<std::sync::atomic::AtomicU32>,
    ) {
        use std::sync::atomic::Ordering;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ms = max_delay.as_millis() as u64;
            if ms > 0 {
                tokio::time::sleep(Duration::from_millis(x % (ms + 1))).await;
            }
            let left = budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    Some(b.saturating_sub(n as u64))
                })
                .unwrap_or(0);
            let take = (n as u64).min(left) as usize;
            if to.write_all(&buf[..take]).await.is_err() {
                return;
            }
            if take < n {
                cuts.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }

    /// Relays `client` and `server` under `fate`: both are closed when the budget is
    /// spent, wherever the bytes were.
    async fn chaotic(client: TcpStream, server: TcpStream, head: Vec<u8>, fate: Fate) {
        use std::sync::atomic::AtomicU64;
        let (cr, cw) = client.into_split();
        let (sr, mut sw) = server.into_split();
        let budget = Arc::new(AtomicU64::new(fate.budget));
        let take = (head.len() as u64).min(fate.budget) as usize;
        budget.store(fate.budget - take as u64, std::sync::atomic::Ordering::Relaxed);
        if take < head.len() {
            fate.cuts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if sw.write_all(&head[..take]).await.is_err() || take < head.len() {
            return;
        }
        let (seed, delay) = (fate.delay_seed, fate.max_delay);
        tokio::select! {
            () = pump(cr, sw, budget.clone(), seed, delay, fate.cuts.clone()) => {}
            () = pump(sr, cw, budget, seed.rotate_left(17) | 1, delay, fate.cuts) => {}
        }
    }

    /// Serves one connection until it ends or the proxy's generation changes.
    async fn serve_one(
        client: TcpStream,
        upstream: SocketAddr,
        rule: Arc<Mutex<Rule>>,
        mut generation: tokio::sync::watch::Receiver<u64>,
    ) {
        generation.mark_unchanged();
        tokio::select! {
            () = serve(client, upstream, rule) => {}
            _ = generation.changed() => {}
        }
    }

    async fn serve(mut client: TcpStream, upstream: SocketAddr, rule: Arc<Mutex<Rule>>) {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let line_end = head.iter().position(|b| *b == b'\r').unwrap_or(head.len());
        let line = String::from_utf8_lossy(&head[..line_end]).into_owned();
        let refuse = {
            let mut r = rule.lock().unwrap();
            let hit = r.remaining > 0 && !r.pattern.is_empty() && line.contains(&r.pattern);
            if hit {
                r.remaining -= 1;
                r.refused += 1;
            }
            hit
        };
        if refuse {
            let _ = client
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
            let _ = client.shutdown().await;
            return;
        }
        let fate = fate(&rule);
        if let Some(f) = fate.as_ref().filter(|f| f.refuse) {
            f.cuts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let Ok(mut server) = TcpStream::connect(upstream).await else {
            return;
        };
        if let Some(fate) = fate {
            chaotic(client, server, head, fate).await;
            return;
        }
        if server.write_all(&head).await.is_err() {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    }

    impl TestRelay {
        /// A relay reached through a [`FlakyProxy`]: its public URL (which clients bind
        /// authentication to) and [`TestRelay::url`] are the proxy's.
        pub async fn start_behind_proxy() -> (TestRelay, FlakyProxy) {
            let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let front_addr = front.local_addr().unwrap();
            let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let back_addr = back.local_addr().unwrap();
            let dir = TempDir::new("relay");
            let db_url = format!("sqlite://{}", dir.path().join("relay.db").display());
            let mut config = Config {
                public_url: format!("http://{front_addr}"),
                ..Config::default()
            };
            config.limits.rate_per_second = 100_000;
            config.limits.rate_burst = 100_000;
            config.database_url = Some(db_url.clone());
            let store = RelayStore::open(&db_url, 8).await.unwrap();
            let state = AppState::new(config, store);
            let (tx, rx) = oneshot::channel();
            let handle = tokio::spawn(sotto_relay::run(back, state.clone(), async move {
                let _ = rx.await;
            }));
            let rule: Arc<Mutex<Rule>> = Arc::default();
            let r = rule.clone();
            let (g, _) = tokio::sync::watch::channel(0u64);
            let generation = g.clone();
            let task = tokio::spawn(async move {
                while let Ok((c, _)) = front.accept().await {
                    tokio::spawn(serve_one(c, back_addr, r.clone(), generation.subscribe()));
                }
            });
            let relay = TestRelay {
                addr: front_addr,
                db_url,
                state,
                shutdown: Some(tx),
                handle: Some(handle),
                _dir: Some(dir),
                _blob_dir: None,
                tls: false,
            };
            (
                relay,
                FlakyProxy {
                    rule,
                    generation: g,
                    task,
                },
            )
        }
    }
}
