//! What the encrypted SQLite store costs per operation, on a file in the system's
//! temporary directory (the same `synchronous` settings the client uses):
//!
//! - `commit_inbound_deferred`: what one received message commits (its session row,
//!   its message, the account's processed seq, the envelope's digest), deferred, with a
//!   `sync` after every 32 (the client's ack batch);
//! - `commit_inbound_synced`: the same, with a `sync` after each (a live message that
//!   arrives alone);
//! - `commit_send_durable`: what one send commits (session row, outbox removal, message
//!   status), durable;
//! - `timeline_100k_open_first_page`: opening a store whose conversation holds 100,000
//!   messages and reading its newest page (`messages(conversation, Page::default())`).
//!
//! `cargo bench -p sotto-sdk --bench store -- --warm-up-time 1 --measurement-time 5 --noplot`.
//! Results go to docs/benchmarks.md ("SDK", "The store alone").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use sotto_crypto::{AccountId, DeviceId};
use sotto_sdk::MessageId;
use sotto_sdk::store::{
    AccountRecord, Changes, MessageKey, MessageStatus, MessageStore, MessageUpdate, OutboxItem, Page, SessionSet,
    SqliteStore, Store, StoreKey, StoredMessage, Write,
};
use tokio::runtime::Runtime;

/// A fresh directory for one database, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sotto-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn account(seq: u64) -> AccountRecord {
    AccountRecord {
        account_key: None,
        list_key: None,
        device: vec![2; 600],
        relay_url: "http://127.0.0.1:1".into(),
        signed_prekey_id: 1,
        next_one_time_id: 101,
        next_kem_id: 21,
        last_seq: seq,
        mailbox_epoch: Some([9; 16]),
        prekeys_unsent: false,
        access_key: Some([3; 32]),
        access_sent: Some(true),
        profile: None,
        profile_key: None,
        profile_uploaded_ms: 0,
    }
}

const PEER: AccountId = AccountId([0x42; 32]);

/// Three words of a 5,000-word vocabulary, different for each message.
fn words(n: u64) -> String {
    let w = |k: u64| format!("w{}", (n.wrapping_mul(k) >> 7) % 5000);
    format!("{} {} {}", w(2_654_435_761), w(40_503), w(2_246_822_519))
}

fn message(n: u64, conversation: AccountId) -> StoredMessage {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_be_bytes());
    StoredMessage::text(
        MessageId(id),
        conversation,
        (conversation, DeviceId(1)),
        1_796_083_200_000 + n,
        format!("message number {n} {}", words(n)),
        MessageStatus::Received,
    )
}

/// A store with an account and one session row, and the versions to write them at.
struct Fixture {
    store: SqliteStore,
    account: u64,
    session: u64,
    n: u64,
    _dir: TempDir,
}

impl Fixture {
    async fn new(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        let store = SqliteStore::open(&dir.0.join("store.db"), &StoreKey::new([7; 32]))
            .await
            .unwrap();
        let c = store
            .commit(Changes {
                account: Some(Write {
                    expected: None,
                    value: account(0),
                }),
                sessions: vec![(
                    (PEER, DeviceId(1)),
                    Write {
                        expected: None,
                        value: session(),
                    },
                )],
                ..Changes::default()
            })
            .await
            .unwrap();
        Fixture {
            store,
            account: c.account_version.unwrap(),
            session: c.session_versions[0],
            n: 0,
            _dir: dir,
        }
    }

    /// One received message's commit.
    async fn inbound(&mut self, deferred: bool) {
        self.n += 1;
        let mut digest = [0u8; 32];
        digest[..8].copy_from_slice(&self.n.to_be_bytes());
        let changes = Changes {
            account: Some(Write {
                expected: Some(self.account),
                value: account(self.n),
            }),
            sessions: vec![(
                (PEER, DeviceId(1)),
                Write {
                    expected: Some(self.session),
                    value: session(),
                },
            )],
            messages: vec![message(self.n, PEER)],
            envelopes: vec![digest],
            ..Changes::default()
        };
        let c = if deferred {
            self.store.commit_deferred(changes).await
        } else {
            self.store.commit(changes).await
        }
        .unwrap();
        self.account = c.account_version.unwrap();
        self.session = c.session_versions[0];
    }

    /// One sent message's commit: the ratchet step, the outbox item gone, its status.
    async fn send(&mut self) {
        self.n += 1;
        let m = message(self.n, PEER);
        let own = AccountId([0x11; 32]);
        let mine = StoredMessage {
            sender: (own, DeviceId(1)),
            status: MessageStatus::Queued,
            ..m.clone()
        };
        // Queued first (as `send_text` does), outside the measured commit's shape.
        self.store
            .commit(Changes {
                messages: vec![mine],
                outbox_add: vec![OutboxItem::new(m.id, PEER, vec![5; 200])],
                ..Changes::default()
            })
            .await
            .unwrap();
        let c = self
            .store
            .commit(Changes {
                sessions: vec![(
                    (PEER, DeviceId(1)),
                    Write {
                        expected: Some(self.session),
                        value: session(),
                    },
                )],
                outbox_remove: vec![m.id],
                message_updates: vec![(
                    MessageKey {
                        conversation: PEER,
                        sender: own,
                        id: m.id,
                    },
                    MessageUpdate::Status(MessageStatus::Sent),
                )],
                ..Changes::default()
            })
            .await
            .unwrap();
        self.session = c.session_versions[0];
    }
}

/// A session row of a realistic size (one active session, about 1.2 KB pickled).
fn session() -> SessionSet {
    SessionSet {
        sessions: vec![vec![0x5e; 1200]],
    }
}

fn commits(c: &mut Criterion, rt: &Runtime) {
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));
    let mut f = rt.block_on(Fixture::new("inbound-deferred"));
    g.bench_function("commit_inbound_deferred", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for i in 0..iters {
                    f.inbound(true).await;
                    if i % 32 == 31 {
                        f.store.sync().await.unwrap();
                    }
                }
                f.store.sync().await.unwrap();
                t.elapsed()
            })
        })
    });
    let mut f = rt.block_on(Fixture::new("inbound-synced"));
    g.bench_function("commit_inbound_synced", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    f.inbound(true).await;
                    f.store.sync().await.unwrap();
                }
                t.elapsed()
            })
        })
    });
    let mut f = rt.block_on(Fixture::new("send"));
    g.bench_function("commit_send_durable", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    f.send().await;
                    spent += t.elapsed();
                }
                spent
            })
        })
    });
    g.finish();
}

/// 100,000 messages in one conversation (plus 1,000 in another), in commits of 1,000.
async fn fill(path: &std::path::Path) {
    let store = SqliteStore::open(path, &StoreKey::new([7; 32])).await.unwrap();
    let other = AccountId([0x43; 32]);
    for chunk in 0..101u64 {
        let conversation = if chunk == 50 { other } else { PEER };
        let messages = (0..1000).map(|i| message(chunk * 1000 + i, conversation)).collect();
        store
            .commit(Changes {
                messages,
                ..Changes::default()
            })
            .await
            .unwrap();
    }
    store.close().await;
}

fn timeline(c: &mut Criterion, rt: &Runtime) {
    let dir = TempDir::new("timeline");
    let path = dir.0.join("store.db");
    let mut filled = false;
    let mut g = c.benchmark_group("store");
    g.bench_function("timeline_100k_open_first_page", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                // Filled here, so that a run filtered to other benchmarks skips it.
                if !filled {
                    fill(&path).await;
                    filled = true;
                }
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let store = SqliteStore::open(&path, &StoreKey::new([7; 32])).await.unwrap();
                    let page = store.messages(PEER, Page::default()).await.unwrap();
                    spent += t.elapsed();
                    assert_eq!(page.len(), 100);
                    assert!(page[99].text.starts_with("message number 100999 "));
                    store.close().await;
                }
                spent
            })
        })
    });
    g.finish();
}

/// A search over the same 100,000 messages: a query of two rare words, and one that
/// pairs a word every message has with a rare one.
fn search(c: &mut Criterion, rt: &Runtime) {
    let dir = TempDir::new("search");
    let path = dir.0.join("store.db");
    let mut store = None;
    let mut g = c.benchmark_group("store");
    for (name, query) in [
        ("search_100k_two_rare_words", words(77_777)),
        ("search_100k_common_and_rare_word", format!("message {}", words(77_777))),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    if store.is_none() {
                        fill(&path).await;
                        store = Some(SqliteStore::open(&path, &StoreKey::new([7; 32])).await.unwrap());
                    }
                    let Some(s) = store.as_ref() else { unreachable!() };
                    let query: String = query.split(' ').take(2).collect::<Vec<_>>().join(" ");
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        let t = Instant::now();
                        let found = s.search(&query, 50).await.unwrap();
                        spent += t.elapsed();
                        assert!(!found.is_empty());
                    }
                    spent
                })
            })
        });
    }
    g.finish();
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut c = Criterion::default().configure_from_args();
    commits(&mut c, &rt);
    timeline(&mut c, &rt);
    search(&mut c, &rt);
    c.final_summary();
}
