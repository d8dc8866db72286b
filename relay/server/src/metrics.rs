//! Hand-rolled Prometheus counters and gauges. No label carries an identifier.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

macro_rules! metrics {
    ($(#[doc = $doc:literal] $kind:ident $name:ident;)*) => {
        /// The relay's metrics.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $(#[doc = $doc] pub $name: metrics!(@ty $kind),)*
        }

        impl Metrics {
            /// The Prometheus text exposition.
            pub fn render(&self) -> String {
                let mut out = String::new();
                $(
                    let _ = writeln!(out, "# HELP sotto_relay_{} {}", stringify!($name), $doc.trim());
                    let _ = writeln!(out, "# TYPE sotto_relay_{} {}", stringify!($name), metrics!(@type $kind));
                    self.$name.render_value(&mut out, concat!("sotto_relay_", stringify!($name)));
                )*
                out
            }
        }
    };
    (@type classes) => { "counter" };
    (@type providers) => { "counter" };
    (@type $kind:ident) => { stringify!($kind) };
    (@ty counter) => { AtomicU64 };
    (@ty gauge) => { AtomicI64 };
    (@ty histogram) => { Histogram };
    (@ty classes) => { ByClass };
    (@ty providers) => { ByProvider };
}

metrics! {
    /// WebSocket connections currently open.
    gauge connections_open;
    /// WebSocket connections accepted.
    counter connections_total;
    /// WebSocket connections refused because the relay, the address or the unauthenticated share was full.
    counter connections_refused_total;
    /// TCP connections closed at accept: the relay or the address held as many as allowed.
    counter tcp_refused_total;
    /// WebSockets closed because their unfinished messages went over a byte budget.
    counter partial_bytes_refused_total;
    /// WebSockets closed because a message did not complete in time.
    counter message_timeouts_total;
    /// Anonymous WebSockets closed for sending nothing, or for their age.
    counter anonymous_closed_total;
    /// HTTP challenges refused by the rate limits.
    counter challenges_refused_total;
    /// Bundle requests refused by the per-requester rate limit.
    counter bundles_refused_total;
    /// Bundle requests answered without one-time prekeys: the target account's one-time rate was spent.
    counter bundles_without_one_time_total;
    /// Account registrations refused by the per-address or total rate limit.
    counter registrations_refused_total;
    /// Profile fetches that passed the rate limits and were looked up (found or not).
    counter profile_fetches_total;
    /// Profile fetches refused by the per-address or total rate limit.
    counter profile_fetches_refused_total;
    /// Blobs created (a token redeemed).
    counter blobs_created_total;
    /// Blob bytes received and made durable.
    counter blob_bytes_received_total;
    /// Blob downloads begun.
    counter blob_downloads_total;
    /// Blob downloads still streaming at their deadline: read too slowly, their slot given back.
    counter blob_downloads_cut_total;
    /// Blob bytes sent to downloaders.
    counter blob_bytes_served_total;
    /// Blobs and orphan files deleted by the collector.
    counter blob_gc_deleted_total;
    /// Upload tokens issued.
    counter blob_tokens_issued_total;
    /// Token requests refused (a wrong epoch, the daily quota).
    counter blob_tokens_refused_total;
    /// Blob creations refused: a token that does not verify or of an unknown epoch.
    counter blob_redemptions_invalid_total;
    /// Blob creations refused: a token already spent.
    counter blob_redemptions_spent_total;
    /// Blob creations refused: a length above the maximum (or zero).
    counter blob_redemptions_too_large_total;
    /// Blob creations refused: the store's total is reached.
    counter blob_redemptions_full_total;
    /// Unauthenticated blob requests refused by the per-address or total rate limit.
    counter blob_requests_refused_total;
    /// Sends refused because the relay-wide in-flight byte budget was spent.
    counter inflight_budget_refused_total;
    /// Sends refused with BUSY because the writer was saturated (its queue stood above target).
    counter sends_busy_total;
    /// Envelopes that went to the database instead of a live queue (queue full or live-queue budget spent).
    counter live_budget_overflow_total;
    /// Failed device authentications (WebSocket and HTTP).
    counter auth_failures_total;
    /// Sends stored.
    counter sends_stored_total;
    /// Sends answered with a device-set mismatch.
    counter sends_mismatch_total;
    /// Sends rejected with an error code.
    counter sends_rejected_total;
    /// Sends refused as message requests to an account that takes none (`ACCESS_DENIED`).
    counter requests_denied_total;
    /// Sends refused because a mailbox's message-request quota was full (`REQUESTS_FULL`).
    counter requests_full_total;
    /// Sends received on anonymous connections (also counted as stored, mismatch or rejected).
    counter sends_anonymous_total;
    /// Connections that sent instead of authenticating (anonymous senders).
    counter connections_anonymous_total;
    /// Envelopes stored.
    counter envelopes_stored_total;
    /// Envelopes delivered over WebSockets (redeliveries included).
    counter envelopes_delivered_total;
    /// Envelopes deleted by acknowledgements.
    counter envelopes_acked_total;
    /// Envelopes deleted by expiry.
    counter envelopes_expired_total;
    /// Ephemeral payloads queued for a connected device.
    counter ephemeral_forwarded_total;
    /// Ephemeral payloads dropped because a connection's queue was full.
    counter ephemeral_dropped_total;
    /// Frames that did not decode.
    counter malformed_frames_total;
    /// Requests and frames refused by the per-connection rate limit.
    counter rate_limited_total;
    /// HTTP requests answered with an error code, by status class (`4xx`, `5xx`).
    classes http_errors_total;
    /// Stored envelopes for devices not connected to this node, handed to the push trigger.
    counter push_triggers_total;
    /// Push triggers sent and accepted by the provider, by provider.
    providers push_sent_total;
    /// Push triggers not sent at once because one was in flight or sent within `push.min_interval_secs`, by provider.
    providers push_coalesced_total;
    /// Pushes that failed: refused by the provider, or still failing after the retries, by provider.
    providers push_failed_total;
    /// Push triggers dropped: the queue or device table was full, or the provider is not configured, by provider.
    providers push_dropped_total;
    /// Push registrations deleted because the provider said they are gone, by provider.
    providers push_registrations_deleted_total;
    /// Seconds from reading a send to its commit (or refusal): the group-commit latency.
    histogram send_store_seconds;
    /// Seconds one write batch (group commit) took in the database.
    histogram write_batch_seconds;
    /// Writes (sends and acks) in the last write batch.
    gauge write_batch_ops;
    /// Writes queued for the writer, not yet in a batch.
    gauge write_queue_length;
    /// 1 while the writer is saturated and new sends are refused with BUSY, else 0.
    gauge writer_saturated;
    /// Envelopes stored in all mailboxes (kept by the writer and expiry).
    gauge mailbox_envelopes;
    /// Envelopes in the fullest mailbox, as of the last expiry run.
    gauge mailbox_depth_max;
    /// Cluster mode: 1 while this node is connected to the bus (NATS), 0 while not.
    gauge bus_connected;
    /// Cluster mode: the other relay nodes heard from within `cluster.node_timeout_ms`.
    gauge bus_nodes;
    /// Cluster mode: devices connected to other nodes, as far as this node knows.
    gauge bus_remote_devices;
    /// Cluster mode: notices published to the bus.
    counter bus_published_total;
    /// Cluster mode: notices received from other nodes.
    counter bus_received_total;
    /// Cluster mode: notices not published (queue to the bus full); their mailboxes are read on the next poll.
    counter bus_dropped_total;
    /// Cluster mode: messages from the bus that did not decode.
    counter bus_malformed_total;
    /// Cluster mode: polls of every local connection's mailbox while the bus was down or just back.
    counter bus_polls_total;
}

/// A metric's sample lines.
trait Render {
    fn render_value(&self, out: &mut String, name: &str);
}

impl Render for AtomicU64 {
    fn render_value(&self, out: &mut String, name: &str) {
        let _ = writeln!(out, "{name} {}", self.load(Ordering::Relaxed));
    }
}

impl Render for AtomicI64 {
    fn render_value(&self, out: &mut String, name: &str) {
        let _ = writeln!(out, "{name} {}", self.load(Ordering::Relaxed));
    }
}

/// A counter by HTTP status class, rendered as `name_total{class="4xx"}`.
#[derive(Debug, Default)]
pub struct ByClass {
    client: AtomicU64,
    server: AtomicU64,
}

impl ByClass {
    /// Counts one answer with `status`; other than 4xx and 5xx are not counted.
    pub fn count(&self, status: u16) {
        match status {
            400..=499 => inc(&self.client, 1),
            500..=599 => inc(&self.server, 1),
            _ => {}
        }
    }
}

impl Render for ByClass {
    fn render_value(&self, out: &mut String, name: &str) {
        let _ = writeln!(out, "{name}{{class=\"4xx\"}} {}", self.client.load(Ordering::Relaxed));
        let _ = writeln!(out, "{name}{{class=\"5xx\"}} {}", self.server.load(Ordering::Relaxed));
    }
}

/// A metrics label naming a push provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProviderLabel {
    /// APNs.
    Apns,
    /// FCM.
    Fcm,
    /// Web Push.
    WebPush,
    /// UnifiedPush.
    UnifiedPush,
    /// A webhook.
    Webhook,
    /// Not known yet (the registration was not read).
    Unknown,
}

const PROVIDERS: [(ProviderLabel, &str); 6] = [
    (ProviderLabel::Apns, "apns"),
    (ProviderLabel::Fcm, "fcm"),
    (ProviderLabel::WebPush, "webpush"),
    (ProviderLabel::UnifiedPush, "unifiedpush"),
    (ProviderLabel::Webhook, "webhook"),
    (ProviderLabel::Unknown, "unknown"),
];

/// A counter by push provider, rendered as `name{provider="apns"}`.
#[derive(Debug, Default)]
pub struct ByProvider {
    counts: [AtomicU64; 6],
}

impl ByProvider {
    /// Adds `n` for `provider`.
    pub fn inc(&self, provider: ProviderLabel, n: u64) {
        if let Some(i) = PROVIDERS.iter().position(|(p, _)| *p == provider) {
            inc(&self.counts[i], n);
        }
    }

    /// The count for `provider`.
    pub fn get(&self, provider: ProviderLabel) -> u64 {
        PROVIDERS
            .iter()
            .position(|(p, _)| *p == provider)
            .map_or(0, |i| self.counts[i].load(Ordering::Relaxed))
    }
}

impl Render for ByProvider {
    fn render_value(&self, out: &mut String, name: &str) {
        for (i, (_, label)) in PROVIDERS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}{{provider=\"{label}\"}} {}",
                self.counts[i].load(Ordering::Relaxed)
            );
        }
    }
}

/// A Prometheus histogram with fixed buckets (`le` upper bounds in the metric's unit).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: [AtomicU64; 12],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// Latency buckets in seconds: 1 ms to 2.5 s.
const SECONDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

impl Default for Histogram {
    fn default() -> Self {
        Self {
            bounds: SECONDS,
            counts: Default::default(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = self.bounds.iter().position(|b| secs <= *b).unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

impl Render for Histogram {
    fn render_value(&self, out: &mut String, name: &str) {
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {}", self.count.load(Ordering::Relaxed));
    }
}

/// Adds to a counter.
pub(crate) fn inc(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Adds to a gauge (negative to subtract).
pub(crate) fn gauge_add(g: &AtomicI64, n: i64) {
    g.fetch_add(n, Ordering::Relaxed);
}
