//! Cluster mode: any number of relay nodes share one PostgreSQL database and tell each
//! other what changed over core NATS (one subject, the notices of
//! [`sotto_proto::bus`]).
//!
//! ```text
//! writer commits envelopes ─ recipient connected here? ── yes → live delivery
//!                                     │ no
//!                                     ├─ Mailbox notice ─→ the node holding the socket wakes it
//!                                     └─ push owner (rendezvous hash over live nodes)
//!                                          and not present on another node → push trigger
//! ephemeral frame ─ local connections, and an Ephemeral notice for the other nodes
//! device removed or re-keyed ─ Evict notice: every node closes its connection
//! connection authenticated / closed ─ Present / Absent: the newer connection stays,
//!                                     and push owners know who is connected where
//! every second ─ Heartbeat: the set of live nodes (push ownership follows it)
//! (re)joined the bus ─ Hello, and its own Present list: every node answers with its own
//! ```
//!
//! **Core NATS, not JetStream.** Every notice is a hint about state that is already
//! durable in PostgreSQL, so the bus needs no durability of its own: a missed mailbox
//! notice costs a delay, never an envelope, because a node that may have missed notices
//! reads the mailboxes itself. While this node is not connected to NATS, and for
//! [`GRACE_POLLS`] intervals after it is back, every local connection reads its mailbox
//! each `poll_interval_ms`; every reconnect and every slow-consumer report does the same
//! at once. JetStream would store each notice a second time (on the NATS servers' disks,
//! with acks on the send path) for a guarantee the database already gives, and would make
//! a NATS outage a write outage; ephemeral frames are at-most-once by design.
//!
//! **Degraded mode.** Without the bus a node still stores and delivers: its own clients
//! get envelopes stored through other nodes on the next poll (and on reconnect), it
//! pushes for every device not connected to it (possibly one push more than needed),
//! and `/readyz` answers 503 `bus unavailable` so a load balancer sends new clients to
//! healthy nodes.
//!
//! **Challenges.** HTTP challenges are stateless MACs under a secret all nodes share
//! (`cluster.secret_file`), so a client may take a challenge from one node and answer it
//! on another; nonces already answered are kept in the database (`used_challenges`), so
//! an answer is accepted once across the cluster. WebSocket challenges live on their
//! socket and need nothing shared. Rate limits stay per node: each bounds the memory and
//! the work of the node that keeps it, and a client spread over N nodes gets at most N
//! times its rate (docs/self-hosting.md says how to size them).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sotto_crypto::{AccountId, DeviceId};
use sotto_proto::bus::MAX_BUS_ENTRIES;
use sotto_proto::{BusMessage, BusNotice, NodeId, Presence};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::config::ConfigError;
use crate::metrics::{Metrics, inc};
use crate::push::Pusher;
use crate::state::{Hub, lock};

/// After the bus comes back, every local mailbox is still read this many more times, one
/// poll interval apart: notices published while this node was resubscribing are covered.
pub const GRACE_POLLS: u32 = 2;

/// The `[cluster]` section: present, it makes this node one of a cluster.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The NATS server, `nats://host:4222` (several, comma-separated, for a NATS cluster).
    pub nats_url: String,
    /// A file holding the cluster's shared secret: 64 hexadecimal digits (32 bytes), the
    /// same on every node (`openssl rand -hex 32`). It keys the HTTP challenges.
    pub secret_file: PathBuf,
    /// The NATS subject the nodes talk on. Two clusters on one NATS server need two.
    pub subject: String,
    /// While the bus is down, every local connection reads its mailbox this often.
    /// Milliseconds.
    pub poll_interval_ms: u64,
    /// How often this node says it is alive. Milliseconds.
    pub heartbeat_ms: u64,
    /// A node not heard from for this long is gone: its devices count as disconnected
    /// and push ownership moves. Milliseconds.
    pub node_timeout_ms: u64,
    /// Notices queued for the bus; beyond, they are dropped (and counted).
    pub queue: usize,
    /// Devices connected to other nodes that this node keeps track of (for push).
    pub max_presence: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            nats_url: String::new(),
            secret_file: PathBuf::new(),
            subject: "sotto.relay".to_owned(),
            poll_interval_ms: 2_000,
            heartbeat_ms: 1_000,
            node_timeout_ms: 5_000,
            queue: 65_536,
            max_presence: 1_000_000,
        }
    }
}

impl ClusterConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let checks = [
            (!self.nats_url.is_empty(), "cluster.nats_url", "must be set"),
            (
                !self.secret_file.as_os_str().is_empty(),
                "cluster.secret_file",
                "must be set",
            ),
            (
                !self.subject.is_empty()
                    && self
                        .subject
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
                    && !self.subject.starts_with('.')
                    && !self.subject.ends_with('.')
                    && !self.subject.contains(".."),
                "cluster.subject",
                "must be a plain NATS subject (letters, digits, '.', '_', '-'; no wildcards)",
            ),
            (
                (100..=60_000).contains(&self.poll_interval_ms),
                "cluster.poll_interval_ms",
                "must be 100..=60000",
            ),
            (
                (100..=60_000).contains(&self.heartbeat_ms),
                "cluster.heartbeat_ms",
                "must be 100..=60000",
            ),
            (
                self.node_timeout_ms >= self.heartbeat_ms.saturating_mul(2),
                "cluster.node_timeout_ms",
                "must be at least twice heartbeat_ms",
            ),
            (self.queue >= 1, "cluster.queue", "must be at least 1"),
            (self.max_presence >= 1, "cluster.max_presence", "must be at least 1"),
        ];
        for (ok, field, reason) in checks {
            if !ok {
                return Err(ConfigError::Invalid { field, reason });
            }
        }
        Ok(())
    }

    /// Reads the shared secret.
    pub fn load_secret(&self) -> Result<Zeroizing<[u8; 32]>, String> {
        let text = Zeroizing::new(
            std::fs::read_to_string(&self.secret_file)
                .map_err(|e| format!("cannot read cluster.secret_file {}: {e}", self.secret_file.display()))?,
        );
        let hex = text.trim();
        let mut secret = Zeroizing::new([0u8; 32]);
        let valid = hex.len() == 64
            && hex.as_bytes().chunks(2).zip(secret.iter_mut()).all(|(pair, out)| {
                let digit = |c: u8| (c as char).to_digit(16);
                match (digit(pair[0]), digit(pair[1])) {
                    (Some(h), Some(l)) => {
                        *out = u8::try_from(h * 16 + l).unwrap_or(0);
                        true
                    }
                    _ => false,
                }
            });
        if !valid {
            return Err(format!(
                "cluster.secret_file {} must hold 64 hexadecimal digits",
                self.secret_file.display()
            ));
        }
        Ok(secret)
    }
}

/// One node's view of the cluster, and its queue to the bus.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub(crate) node: NodeId,
    cfg: ClusterConfig,
    out: mpsc::Sender<BusNotice>,
    out_rx: Mutex<Option<mpsc::Receiver<BusNotice>>>,
    up: AtomicBool,
    /// Polls of every local mailbox still owed since the bus came back.
    grace: std::sync::atomic::AtomicU32,
    /// Wakes the poller at once (bus lost, back, or a slow-consumer report).
    poll_now: Notify,
    /// The bus (re)connected: the poller announces this node's connections, since the
    /// others forgot them if they stopped hearing from it.
    announce: AtomicBool,
    /// The other nodes, and when each was last heard from.
    members: Mutex<HashMap<NodeId, Instant>>,
    /// Devices connected to other nodes: the node and the connection's `since_ms`.
    presence: Mutex<HashMap<(AccountId, DeviceId), (NodeId, u64)>>,
    metrics: Arc<Metrics>,
    /// Whether `/readyz` may say ready: the bus is connected.
    ready_tx: watch::Sender<bool>,
}

impl Cluster {
    pub(crate) fn new(cfg: &ClusterConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        let mut node = [0u8; 8];
        if getrandom::getrandom(&mut node).is_err() {
            tracing::error!("no OS randomness for the node id");
        }
        let (out, rx) = mpsc::channel(cfg.queue.max(1));
        let (ready_tx, _) = watch::channel(false);
        Arc::new(Self {
            node,
            cfg: cfg.clone(),
            out,
            out_rx: Mutex::new(Some(rx)),
            up: AtomicBool::new(false),
            grace: std::sync::atomic::AtomicU32::new(0),
            poll_now: Notify::new(),
            announce: AtomicBool::new(false),
            members: Mutex::new(HashMap::new()),
            presence: Mutex::new(HashMap::new()),
            metrics,
            ready_tx,
        })
    }

    /// Queues a notice for the bus; never waits (a full queue drops it, counted).
    pub(crate) fn publish(&self, notice: BusNotice) {
        if self.out.try_send(notice).is_err() {
            inc(&self.metrics.bus_dropped_total, 1);
        }
    }

    /// Whether the bus is connected.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Whether this node pushes for the device: the node whose
    /// `SHA-256(node ‖ account ‖ device)` is highest among the live nodes (rendezvous
    /// hashing), so exactly one node does while the nodes agree on who is alive. Without
    /// the bus, every node pushes for its own triggers.
    pub(crate) fn owns_push(&self, account: &AccountId, device: DeviceId) -> bool {
        if !self.is_up() {
            return true;
        }
        let score = |node: &NodeId| -> [u8; 32] {
            let mut h = Sha256::new();
            h.update(b"Sotto-v1 push owner");
            h.update(node);
            h.update(account.as_bytes());
            h.update(device.0.to_be_bytes());
            h.finalize().into()
        };
        let mine = score(&self.node);
        let timeout = Duration::from_millis(self.cfg.node_timeout_ms);
        let now = Instant::now();
        !lock(&self.members)
            .iter()
            .any(|(n, seen)| now.duration_since(*seen) <= timeout && (score(n), *n) > (mine, self.node))
    }

    /// Whether the device is connected to another node, as far as this node knows.
    pub(crate) fn present_elsewhere(&self, account: &AccountId, device: DeviceId) -> bool {
        lock(&self.presence).contains_key(&(*account, device))
    }

    /// Envelopes were committed for these devices, none connected to this node: the node
    /// holding each socket is told, and the push owner triggers a push.
    pub(crate) fn stored_elsewhere(&self, pusher: &Pusher, devices: &[(AccountId, DeviceId)]) {
        for chunk in devices.chunks(MAX_BUS_ENTRIES) {
            self.publish(BusNotice::Mailbox(chunk.to_vec()));
        }
        for (a, d) in devices {
            if self.owns_push(a, *d) && !(self.is_up() && self.present_elsewhere(a, *d)) {
                pusher.trigger(a, *d);
            }
        }
    }

    /// A trigger from a connection that closed with envelopes waiting: pushed here when
    /// this node owns the device's pushes, otherwise handed to the owner.
    pub(crate) fn trigger(&self, pusher: &Pusher, account: &AccountId, device: DeviceId) {
        if self.owns_push(account, device) {
            pusher.trigger(account, device);
        } else {
            self.publish(BusNotice::Mailbox(vec![(*account, device)]));
        }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        self.metrics.bus_connected.store(i64::from(up), Ordering::Relaxed);
        self.ready_tx.send_replace(up);
        self.grace.store(GRACE_POLLS, Ordering::Relaxed);
        self.poll_now.notify_one();
    }

    /// Whether the bus is connected (what `/readyz` reports).
    pub(crate) fn ready(&self) -> bool {
        *self.ready_tx.borrow()
    }

    fn heard(&self, node: NodeId) {
        let mut members = lock(&self.members);
        if members.len() < 4096 || members.contains_key(&node) {
            members.insert(node, Instant::now());
        }
        self.metrics
            .bus_nodes
            .store(i64::try_from(members.len()).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// Forgets nodes not heard from within the timeout, and the devices they held.
    fn expire_members(&self) {
        let timeout = Duration::from_millis(self.cfg.node_timeout_ms);
        let now = Instant::now();
        let mut gone = Vec::new();
        {
            let mut members = lock(&self.members);
            members.retain(|n, seen| {
                let alive = now.duration_since(*seen) <= timeout;
                if !alive {
                    gone.push(*n);
                }
                alive
            });
            self.metrics
                .bus_nodes
                .store(i64::try_from(members.len()).unwrap_or(i64::MAX), Ordering::Relaxed);
        }
        if !gone.is_empty() {
            let mut presence = lock(&self.presence);
            presence.retain(|_, (n, _)| !gone.contains(n));
            self.count_presence(&presence);
        }
    }

    fn present(&self, origin: NodeId, list: &[Presence]) {
        let mut presence = lock(&self.presence);
        for p in list {
            let key = (p.account, p.device);
            let newer = presence.get(&key).is_none_or(|(_, since)| *since <= p.since_ms);
            if newer && (presence.len() < self.cfg.max_presence || presence.contains_key(&key)) {
                presence.insert(key, (origin, p.since_ms));
            }
        }
        self.count_presence(&presence);
    }

    fn count_presence(&self, presence: &HashMap<(AccountId, DeviceId), (NodeId, u64)>) {
        self.metrics
            .bus_remote_devices
            .store(i64::try_from(presence.len()).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    fn absent(&self, origin: NodeId, list: &[(AccountId, DeviceId, u64)]) {
        let mut presence = lock(&self.presence);
        for (a, d, since) in list {
            if presence.get(&(*a, *d)) == Some(&(origin, *since)) {
                presence.remove(&(*a, *d));
            }
        }
        self.count_presence(&presence);
    }
}

/// Everything the bus tasks need.
#[derive(Debug)]
pub(crate) struct BusTasks {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) pusher: Arc<Pusher>,
    pub(crate) metrics: Arc<Metrics>,
}

/// Connects to NATS (retrying in the background: the node serves, degraded, until it is
/// up) and runs the publisher, the subscriber, the heartbeat and the poller until
/// shutdown.
pub(crate) async fn run(t: BusTasks, mut shutdown: watch::Receiver<bool>) {
    let cluster = t.cluster.clone();
    let events = cluster.clone();
    let options = async_nats::ConnectOptions::new()
        .name("sotto-relay")
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .ping_interval(Duration::from_secs(5))
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(100u64.saturating_mul(1 << attempts.min(5)).min(2_000))
        })
        .event_callback(move |event| {
            let c = events.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!("cluster bus connected");
                        c.publish(BusNotice::Hello);
                        c.announce.store(true, Ordering::Release);
                        c.set_up(true);
                    }
                    async_nats::Event::Disconnected | async_nats::Event::Closed => {
                        tracing::warn!("cluster bus lost: reading mailboxes every poll interval");
                        c.set_up(false);
                    }
                    async_nats::Event::SlowConsumer(_) => {
                        // Notices were dropped: read every mailbox.
                        c.grace.store(GRACE_POLLS, Ordering::Relaxed);
                        c.poll_now.notify_one();
                    }
                    _ => {}
                }
            }
        });
    let client = match options.connect(cluster.cfg.nats_url.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot use cluster.nats_url: running without the bus");
            poll_loop(&t, &mut shutdown).await;
            return;
        }
    };
    let subject = cluster.cfg.subject.clone();
    let subscriber = match client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to the cluster subject: running without the bus");
            poll_loop(&t, &mut shutdown).await;
            return;
        }
    };
    let rx = lock(&cluster.out_rx).take();
    let publisher = rx.map(|rx| tokio::spawn(publish_loop(client.clone(), subject, cluster.clone(), rx)));
    let heartbeat = tokio::spawn(heartbeat_loop(cluster.clone(), shutdown.clone()));
    let poller = {
        let t = BusTasks {
            cluster: t.cluster.clone(),
            hub: t.hub.clone(),
            pusher: t.pusher.clone(),
            metrics: t.metrics.clone(),
        };
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move { poll_loop(&t, &mut shutdown).await })
    };
    let mut subscriber = subscriber;
    loop {
        tokio::select! {
            m = subscriber.next() => match m {
                Some(m) => receive(&t, &m.payload),
                None => {
                    // The client gave up (it retries forever, so this should not happen):
                    // go on without the bus, reading mailboxes, until shutdown.
                    tracing::error!("cluster bus subscription ended: running without the bus");
                    cluster.set_up(false);
                    heartbeat.abort();
                    if let Some(p) = &publisher {
                        p.abort();
                    }
                    let _ = poller.await;
                    return;
                }
            },
            _ = crate::state::wait_shutdown(&mut shutdown) => break,
        }
    }
    // Tell the others this node's devices are gone at once rather than after the timeout.
    let gone = t.hub.snapshot();
    for chunk in gone.chunks(MAX_BUS_ENTRIES) {
        let list = chunk.iter().map(|p| (p.account, p.device, p.since_ms)).collect();
        cluster.publish(BusNotice::Absent(list));
    }
    heartbeat.abort();
    poller.abort();
    if let Some(p) = publisher {
        // The publisher drains what is queued; a bounded wait for it.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while !cluster.out.is_closed() && cluster.out.capacity() < cluster.out.max_capacity() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        p.abort();
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
}

async fn publish_loop(
    client: async_nats::Client,
    subject: String,
    cluster: Arc<Cluster>,
    mut rx: mpsc::Receiver<BusNotice>,
) {
    while let Some(notice) = rx.recv().await {
        let bytes = BusMessage {
            origin: cluster.node,
            notice,
        }
        .encode();
        match client.publish(subject.clone(), bytes.into()).await {
            Ok(()) => inc(&cluster.metrics.bus_published_total, 1),
            Err(_) => inc(&cluster.metrics.bus_dropped_total, 1),
        }
    }
}

async fn heartbeat_loop(cluster: Arc<Cluster>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(cluster.cfg.heartbeat_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::state::wait_shutdown(&mut shutdown) => return,
        }
        if cluster.is_up() {
            cluster.publish(BusNotice::Heartbeat);
        }
        cluster.expire_members();
    }
}

/// While the bus is down (and for the grace polls after), every local connection reads
/// its mailbox each poll interval.
async fn poll_loop(t: &BusTasks, shutdown: &mut watch::Receiver<bool>) {
    let every = Duration::from_millis(t.cluster.cfg.poll_interval_ms);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = t.cluster.poll_now.notified() => {}
            _ = crate::state::wait_shutdown(shutdown) => return,
        }
        let owed = t
            .cluster
            .grace
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |g| g.checked_sub(1))
            .is_ok();
        if !t.cluster.is_up() || owed {
            inc(&t.metrics.bus_polls_total, 1);
            t.hub.wake_all();
        }
        if t.cluster.is_up() && t.cluster.announce.swap(false, Ordering::AcqRel) {
            for chunk in t.hub.snapshot().chunks(MAX_BUS_ENTRIES) {
                t.cluster.publish(BusNotice::Present(chunk.to_vec()));
            }
        }
    }
}

/// Acts on one message from another node.
fn receive(t: &BusTasks, payload: &[u8]) {
    let Ok(m) = BusMessage::decode(payload) else {
        // A node of another version, say: what it announced is read from the mailboxes
        // on the next polls (at most one per poll interval, however many arrive).
        inc(&t.metrics.bus_malformed_total, 1);
        t.cluster.grace.store(GRACE_POLLS, Ordering::Relaxed);
        return;
    };
    if m.origin == t.cluster.node {
        return;
    }
    inc(&t.metrics.bus_received_total, 1);
    t.cluster.heard(m.origin);
    match m.notice {
        BusNotice::Mailbox(list) => {
            for (a, d) in list {
                if !t.hub.wake(&a, d) && t.cluster.owns_push(&a, d) && !t.cluster.present_elsewhere(&a, d) {
                    t.pusher.trigger(&a, d);
                }
            }
        }
        BusNotice::Ephemeral {
            account,
            except,
            payload,
        } => {
            let (sent, dropped) = t.hub.ephemeral_local(&account, except, &payload);
            inc(&t.metrics.ephemeral_forwarded_total, sent);
            inc(&t.metrics.ephemeral_dropped_total, dropped);
        }
        BusNotice::Evict { account, device } => t.hub.evict_local(&account, device),
        BusNotice::Present(list) => {
            t.cluster.present(m.origin, &list);
            for p in &list {
                t.hub.replaced_elsewhere(p);
                t.pusher.connected(&p.account, p.device);
            }
        }
        BusNotice::Absent(list) => t.cluster.absent(m.origin, &list),
        BusNotice::Heartbeat => {}
        BusNotice::Hello => {
            for chunk in t.hub.snapshot().chunks(MAX_BUS_ENTRIES) {
                t.cluster.publish(BusNotice::Present(chunk.to_vec()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_live_node_owns_each_device() {
        let metrics = Arc::new(Metrics::default());
        let cfg = ClusterConfig {
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            secret_file: PathBuf::from("/dev/null"),
            ..ClusterConfig::default()
        };
        let nodes: Vec<Arc<Cluster>> = (0..3).map(|_| Cluster::new(&cfg, metrics.clone())).collect();
        for n in &nodes {
            n.set_up(true);
            for m in &nodes {
                if m.node != n.node {
                    n.heard(m.node);
                }
            }
        }
        let mut counts = [0usize; 3];
        for i in 0..300u32 {
            let a = AccountId([u8::try_from(i % 251).unwrap_or(0); 32]);
            let owners: Vec<usize> = (0..3).filter(|&k| nodes[k].owns_push(&a, DeviceId(i))).collect();
            assert_eq!(owners.len(), 1, "device {i}: {owners:?}");
            counts[owners[0]] += 1;
        }
        assert!(counts.iter().all(|&c| c > 50), "{counts:?}");
        // A node that lost the bus pushes for its own triggers.
        nodes[0].set_up(false);
        assert!(nodes[0].owns_push(&AccountId([1; 32]), DeviceId(1)));
    }

    #[test]
    fn the_secret_file_holds_64_hex_digits() {
        let dir = std::env::temp_dir().join(format!("sotto-cluster-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let path = dir.join("secret");
        let cfg = ClusterConfig {
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            secret_file: path.clone(),
            ..ClusterConfig::default()
        };
        std::fs::write(&path, format!("{}\n", "ab".repeat(32))).ok();
        assert_eq!(cfg.load_secret().map(|s| *s), Ok([0xab; 32]));
        std::fs::write(&path, "ab".repeat(31)).ok();
        assert!(cfg.load_secret().is_err());
        std::fs::write(&path, "zz".repeat(32)).ok();
        assert!(cfg.load_secret().is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
