//! Harness for the sending-path tests: a relay with a chosen configuration, devices with
//! chosen client options, and a wiretap — a WebSocket proxy in front of the relay that
//! records every frame of every connection with the time it passed, i.e. what the relay
//! sees.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sotto_proto::Frame;
use sotto_relay::storage::Store as RelayStore;
use sotto_relay::{AppState, Config};
use sotto_sdk::store::SqliteStore;
use sotto_sdk::{Client, ClientOptions, Event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::{Device, Offline, TempDir, TestRelay, key};

impl TestRelay {
    /// A relay on a fresh port with its own SQLite database, the test limits, then
    /// `configure` applied.
    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> TestRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        Self::start_on(listener, format!("http://{addr}"), configure).await
    }

    /// A relay behind a [`Wiretap`]: clients talk to the wiretap (the relay's public URL),
    /// which forwards to the relay and records every WebSocket frame. The returned
    /// relay's [`TestRelay::url`] is the wiretap's.
    pub async fn start_tapped() -> (TestRelay, Wiretap) {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back_addr = back.local_addr().unwrap();
        let mut relay = Self::start_on(back, format!("http://{front_addr}"), |_| {}).await;
        // Clients use the front address.
        relay.addr = front_addr;
        let tap = Wiretap::start(front, back_addr);
        (relay, tap)
    }

    /// Deletes every prekey the relay holds for one device (as if it never uploaded any).
    pub async fn delete_prekeys(&self, account: &sotto_crypto::AccountId, device: sotto_crypto::DeviceId) {
        let pool = sqlx::SqlitePool::connect(&self.db_url).await.unwrap();
        sqlx::query("DELETE FROM prekeys WHERE account_id = ? AND device_id = ?")
            .bind(account.as_bytes().to_vec())
            .bind(i64::from(device.0))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }

    /// Waits until the relay refused `n` sends in all (its metrics).
    pub async fn wait_rejections(&self, n: u64) {
        let metrics = self.state.metrics.clone();
        tokio::time::timeout(crate::FAILSAFE, async move {
            while metrics.sends_rejected_total.load(Ordering::Relaxed) < n {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the relay did not refuse the sends within the failsafe");
    }

    async fn start_on(listener: TcpListener, public_url: String, configure: impl FnOnce(&mut Config)) -> TestRelay {
        let dir = TempDir::new("relay");
        let db_url = format!("sqlite://{}", dir.path().join("relay.db").display());
        let addr = listener.local_addr().unwrap();
        let mut config = Config {
            public_url,
            ..Config::default()
        };
        config.limits.rate_per_second = 100_000;
        config.limits.rate_burst = 100_000;
        config.limits.max_mailbox_depth = 100_000;
        // Blob files beside the database.
        config.database_url = Some(db_url.clone());
        configure(&mut config);
        let store = RelayStore::open(&db_url, 8).await.unwrap();
        let state: Arc<AppState> = AppState::new(config, store);
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
            _dir: Some(dir),
            _blob_dir: None,
            tls: false,
        }
    }
}

impl Device {
    /// A new account on `relay` with the given client options.
    pub async fn create_with(relay: &TestRelay, seed: u64, options: ClientOptions) -> Device {
        let dir = TempDir::new("client");
        let store = SqliteStore::open(&dir.path().join("client.db"), &key(seed))
            .await
            .unwrap();
        let client = Client::create_account(store, key(seed), &relay.url(), options)
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
}

impl Offline {
    /// Opens the client again with the given options (`connect: false` keeps it off
    /// the network: sends only queue).
    pub async fn open_with(self, options: ClientOptions) -> Device {
        let store = SqliteStore::open(&self.dir.path().join("client.db"), &key(self.seed))
            .await
            .unwrap();
        let client = Client::open(store, key(self.seed), options).await.unwrap();
        let events = client.events().unwrap();
        Device {
            client,
            events,
            dir: self.dir,
            seed: self.seed,
            stash: Default::default(),
        }
    }
}

/// One WebSocket frame the wiretap saw.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The TCP connection it travelled on (numbered in accept order).
    pub conn: u64,
    /// When it passed.
    pub at: Instant,
    /// True from client to relay.
    pub from_client: bool,
    /// The frame.
    pub frame: Frame,
}

/// A TCP proxy that decodes the WebSocket frames passing through (plain `ws://` only).
pub struct Wiretap {
    log: Arc<Mutex<Vec<Seen>>>,
    opened: Arc<Mutex<Vec<(u64, Instant)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Wiretap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Wiretap {
    fn start(front: TcpListener, upstream: std::net::SocketAddr) -> Wiretap {
        let log = Arc::new(Mutex::new(Vec::new()));
        let opened = Arc::new(Mutex::new(Vec::new()));
        let (l, o) = (log.clone(), opened.clone());
        let task = tokio::spawn(async move {
            static CONN: AtomicU64 = AtomicU64::new(1);
            while let Ok((client, _)) = front.accept().await {
                let conn = CONN.fetch_add(1, Ordering::Relaxed);
                o.lock().unwrap().push((conn, Instant::now()));
                let Ok(relay) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = relay.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (rr, rw) = relay.into_split();
                tokio::spawn(pump(cr, rw, conn, true, l.clone()));
                tokio::spawn(pump(rr, cw, conn, false, l.clone()));
            }
        });
        Wiretap { log, opened, task }
    }

    /// Every frame seen so far, in the order seen.
    pub fn frames(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    /// When each TCP connection was accepted.
    pub fn opened(&self) -> Vec<(u64, Instant)> {
        self.opened.lock().unwrap().clone()
    }
}

/// Copies one direction of a connection, decoding WebSocket frames once the HTTP
/// upgrade is done (a connection whose first request is no upgrade is only copied).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    conn: u64,
    from_client: bool,
    log: Arc<Mutex<Vec<Seen>>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    // None: HTTP head not complete; Some(true): WebSocket frames follow; Some(false): plain HTTP.
    let mut ws: Option<bool> = None;
    let mut message: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        let at = Instant::now();
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        if ws == Some(false) {
            continue;
        }
        pending.extend_from_slice(&buf[..n]);
        if ws.is_none() {
            let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            let upgrade = if from_client {
                head.contains("upgrade: websocket")
            } else {
                head.starts_with("http/1.1 101")
            };
            ws = Some(upgrade);
            pending.drain(..end + 4);
            if !upgrade {
                continue;
            }
        }
        // Whole WebSocket frames in `pending`.
        while let Some((used, fin, opcode, payload)) = ws_frame(&pending) {
            pending.drain(..used);
            if opcode == 2 || opcode == 0 {
                message.extend_from_slice(&payload);
                if fin {
                    if let Ok(frame) = Frame::decode(&message) {
                        log.lock().unwrap().push(Seen {
                            conn,
                            at,
                            from_client,
                            frame,
                        });
                    }
                    message.clear();
                }
            }
        }
    }
}

/// Parses one WebSocket frame (RFC 6455 §5.2) from the front of `b`: bytes used, FIN,
/// opcode and the unmasked payload; `None` while incomplete.
fn ws_frame(b: &[u8]) -> Option<(usize, bool, u8, Vec<u8>)> {
    if b.len() < 2 {
        return None;
    }
    let fin = b[0] & 0x80 != 0;
    let opcode = b[0] & 0x0f;
    let masked = b[1] & 0x80 != 0;
    let mut at = 2;
    let len = match b[1] & 0x7f {
        126 => {
            let l = u16::from_be_bytes(b.get(2..4)?.try_into().ok()?) as usize;
            at = 4;
            l
        }
        127 => {
            let l = u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize;
            at = 10;
            l
        }
        l => l as usize,
    };
    let mask: Option<[u8; 4]> = if masked {
        let m = b.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(m)
    } else {
        None
    };
    let mut payload = b.get(at..at + len)?.to_vec();
    if let Some(m) = mask {
        for (i, x) in payload.iter_mut().enumerate() {
            *x ^= m[i % 4];
        }
    }
    Some((at + len, fin, opcode, payload))
}
