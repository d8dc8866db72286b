//! Configuration: defaults, then a TOML file, then environment variables, then flags.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! public_url = "https://relay.example.org"
//! data_dir = "/var/lib/sotto-relay"
//! # database_url = "postgres://sotto@db/sotto"     # default: sqlite in data_dir
//! log_level = "info"
//! cors_allowed_origins = ["*"]                    # or ["https://chat.example.org"]
//!
//! [limits]
//! max_envelope_bytes = 262144
//! max_recipients = 2048
//! # ... see `Limits`
//!
//! [heartbeat]
//! ping_interval_ms = 30000
//! idle_timeout_ms = 90000
//!
//! [tls]                                            # optional: HTTPS/WSS, TLS 1.3 only
//! cert_path = "/etc/sotto-relay/fullchain.pem"
//! key_path = "/etc/sotto-relay/privkey.pem"
//! hsts_max_age_secs = 63072000
//!
//! [blobs]                                          # the attachment blob store (§16.4)
//! backend = "disk"                                 # or "s3"
//! # dir = "/var/lib/sotto-relay/blobs"             # default: `blobs` beside the SQLite file
//! max_blob_len = 536870912
//! max_total_bytes = 53687091200
//! # ... see `Blobs`
//! [push]                                           # optional: see `crate::push`
//! min_interval_secs = 10
//! [push.apns]
//! key_file = "/etc/sotto-relay/AuthKey_ABC123DEFG.p8"
//! key_id = "ABC123DEFG"
//! team_id = "DEF123GHIJ"
//! topic = "org.example.chat"
//! ```
//! Without `[tls]` the relay speaks plain HTTP, which it accepts only on a loopback
//! address or with `behind_tls_proxy = true` (a proxy in front terminates TLS).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The largest `limits.deliver_window`: clients buffer this many unacknowledged
/// deliveries (the web client's receive queue is sized from it).
pub const MAX_DELIVER_WINDOW: u32 = 1024;

/// The relay's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The address to listen on.
    pub listen: SocketAddr,
    /// The URL clients use to reach the relay; its hash is the relay id that device
    /// authentication signatures are bound to.
    pub public_url: String,
    /// Where the SQLite database lives (when `database_url` is not set).
    pub data_dir: PathBuf,
    /// `postgres://…` for PostgreSQL, `sqlite://…` for another SQLite file. Default: the
    /// SQLite file `relay.db` in `data_dir`.
    pub database_url: Option<String>,
    /// Database pool size.
    pub db_max_connections: u32,
    /// `error`, `warn`, `info`, `debug` or `trace`. Nothing at `info` or above names an
    /// account, a device or an address.
    pub log_level: String,
    /// Limits.
    pub limits: Limits,
    /// WebSocket heartbeat.
    pub heartbeat: Heartbeat,
    /// Built-in TLS. Without it the relay speaks plain HTTP.
    pub tls: Option<Tls>,
    /// Plain HTTP on a non-loopback address, for a relay behind a TLS-terminating proxy.
    pub behind_tls_proxy: bool,
    /// The web origins (`https://host[:port]`) whose pages may call the relay from a
    /// browser, or `"*"` for any. A request carrying another `Origin` is refused with
    /// `ORIGIN_NOT_ALLOWED`; requests without `Origin` (native clients) are unaffected.
    /// The API authenticates each request by signature and uses no cookies, so any
    /// origin is safe; the list lets an operator keep other sites' pages off the relay.
    pub cors_allowed_origins: Vec<String>,
    /// Serve `/metrics` (plain HTTP, nothing else) on this separate address, for example a
    /// loopback or private one the scraper reaches.
    pub metrics_listen: Option<SocketAddr>,
    /// Serve `/metrics` on the public listener to requests carrying
    /// `Authorization: Bearer <token>` (compared in constant time). Without this or
    /// `metrics_listen`, `/metrics` is not served at all (`NOT_FOUND`).
    pub metrics_token: Option<MetricsToken>,
    /// The blob store for encrypted attachments.
    pub blobs: Blobs,
    /// Push triggers (APNs, FCM, Web Push): see [`crate::push`].
    pub push: crate::push::PushConfig,
    /// Cluster mode: several nodes on one PostgreSQL database and a NATS bus (see
    /// [`crate::cluster`]). Without it the relay is a single node.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// The bearer token that opens `/metrics` on the public listener. Kept out of `Debug` and
/// zeroized on drop.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
#[serde(transparent)]
pub struct MetricsToken(pub String);

impl std::fmt::Debug for MetricsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsToken(..)")
    }
}

/// Where blob bytes live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobBackend {
    /// Files in `dir`.
    #[default]
    Disk,
    /// An S3 bucket (or an S3-compatible server); uploads stage in `dir` until complete.
    S3,
}

/// The secret access key of the S3 backend. Kept out of `Debug` and zeroized on drop.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
#[serde(transparent)]
pub struct S3Secret(pub String);

impl std::fmt::Debug for S3Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("S3Secret(..)")
    }
}

/// The blob store (docs/protocol.md §16.4, docs/self-hosting.md "Blob store").
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Blobs {
    /// `disk` (default) or `s3`.
    pub backend: BlobBackend,
    /// The blob files (disk), or the staging files of uploads in progress (S3). Default:
    /// a `blobs` directory beside the SQLite database, or in `data_dir` with PostgreSQL.
    pub dir: Option<PathBuf>,
    /// The largest blob (`BLOB_TOO_LARGE`). Default 512 MiB.
    pub max_blob_len: u64,
    /// The most bytes all blobs together may take, complete or not (`STORAGE_FULL`).
    /// Default 50 GiB.
    pub max_total_bytes: u64,
    /// How long a complete blob is kept after its last byte. Default 30 days.
    pub blob_ttl_secs: u64,
    /// How long an upload may take from its creation; an incomplete blob older than
    /// this is deleted. Default 24 hours.
    pub upload_ttl_secs: u64,
    /// Upload tokens one device may be issued per UTC day (`QUOTA_EXCEEDED`). Default 100.
    pub tokens_per_device_per_day: u32,
    /// The length of an issuer epoch: epoch = floor(unix seconds / this). Tokens of the
    /// current and the previous epoch are accepted. Default 7 days; at least 60.
    pub token_epoch_secs: u64,
    /// How often the collector runs. Default 300.
    pub gc_interval_secs: u64,
    /// Unauthenticated blob requests (issuer, create, pieces, status, downloads) per
    /// minute from one address (`RATE_LIMITED`). Default 600.
    pub requests_per_minute_per_addr: u32,
    /// Burst of `requests_per_minute_per_addr`. Default 120.
    pub requests_burst_per_addr: u32,
    /// Unauthenticated blob requests per second from all addresses. Default 500.
    pub requests_per_second_total: u32,
    /// Burst of `requests_per_second_total`. Default 1000.
    pub requests_burst_total: u32,
    /// Most downloads streaming at once, in total (`BUSY`). Default 64.
    pub max_concurrent_downloads: usize,
    /// Most blobs being written at once, in total (`BUSY`). Default 64.
    pub max_concurrent_uploads: usize,
    /// Most uploads and downloads in progress at once from one address (IPv4, or an
    /// IPv6 /64), so one address cannot take every slot (`BUSY`). Default 8.
    pub max_transfers_per_addr: usize,
    /// The slowest a download may be read: one that has not ended within
    /// `limits.request_timeout_ms` plus its length at this rate gives its slot back and is
    /// cut. Bytes per second; default 65536.
    pub min_download_bytes_per_second: u64,
    /// S3: the bucket.
    pub bucket: Option<String>,
    /// S3: the endpoint URL of an S3-compatible server (default: AWS).
    pub endpoint: Option<String>,
    /// S3: the region. Default `us-east-1`.
    pub region: String,
    /// S3: the access key id (default: from the environment).
    pub access_key_id: Option<String>,
    /// S3: the secret access key (default: from the environment). Never logged.
    pub secret_access_key: Option<S3Secret>,
    /// S3: allow a plain-HTTP endpoint (a local test server).
    pub allow_http: bool,
}

impl Default for Blobs {
    fn default() -> Self {
        Self {
            backend: BlobBackend::Disk,
            dir: None,
            max_blob_len: 512 << 20,
            max_total_bytes: 50 << 30,
            blob_ttl_secs: 30 * 86_400,
            upload_ttl_secs: 86_400,
            tokens_per_device_per_day: 100,
            token_epoch_secs: 7 * 86_400,
            gc_interval_secs: 300,
            requests_per_minute_per_addr: 600,
            requests_burst_per_addr: 120,
            requests_per_second_total: 500,
            requests_burst_total: 1_000,
            max_concurrent_downloads: 64,
            max_concurrent_uploads: 64,
            max_transfers_per_addr: 8,
            min_download_bytes_per_second: 65_536,
            bucket: None,
            endpoint: None,
            region: "us-east-1".to_owned(),
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
        }
    }
}

impl Blobs {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks: [(bool, &'static str, &'static str); 14] = [
            (self.max_blob_len >= 1, "blobs.max_blob_len", "must be at least 1"),
            (
                self.max_blob_len <= i64::MAX as u64 && self.max_total_bytes <= i64::MAX as u64,
                "blobs.max_total_bytes",
                "must fit a signed 64-bit integer",
            ),
            (
                self.max_total_bytes >= self.max_blob_len,
                "blobs.max_total_bytes",
                "must be at least max_blob_len",
            ),
            (
                (1..=u64::from(u32::MAX)).contains(&self.blob_ttl_secs),
                "blobs.blob_ttl_secs",
                "must be 1..=4294967295",
            ),
            (
                (1..=u64::from(u32::MAX)).contains(&self.upload_ttl_secs),
                "blobs.upload_ttl_secs",
                "must be 1..=4294967295",
            ),
            (
                self.tokens_per_device_per_day >= 1,
                "blobs.tokens_per_device_per_day",
                "must be at least 1",
            ),
            (
                (60..=u64::from(u32::MAX)).contains(&self.token_epoch_secs),
                "blobs.token_epoch_secs",
                "must be 60..=4294967295",
            ),
            (
                self.gc_interval_secs >= 1,
                "blobs.gc_interval_secs",
                "must be at least 1",
            ),
            (
                self.requests_per_minute_per_addr >= 1 && self.requests_burst_per_addr >= 1,
                "blobs.requests_per_minute_per_addr",
                "rate and burst must be at least 1",
            ),
            (
                self.requests_per_second_total >= 1 && self.requests_burst_total >= 1,
                "blobs.requests_per_second_total",
                "rate and burst must be at least 1",
            ),
            (
                self.max_concurrent_downloads >= 1 && self.max_concurrent_uploads >= 1,
                "blobs.max_concurrent_downloads",
                "max_concurrent_downloads and max_concurrent_uploads must be at least 1",
            ),
            (
                self.max_transfers_per_addr >= 1,
                "blobs.max_transfers_per_addr",
                "must be at least 1",
            ),
            (
                self.min_download_bytes_per_second >= 1,
                "blobs.min_download_bytes_per_second",
                "must be at least 1",
            ),
            (
                self.backend == BlobBackend::S3 || self.bucket.is_none(),
                "blobs.bucket",
                "set only with backend = \"s3\"",
            ),
        ];
        for (ok, field, reason) in checks {
            if !ok {
                return Err(ConfigError::Invalid { field, reason });
            }
        }
        if self.backend == BlobBackend::S3 {
            if self.bucket.as_deref().is_none_or(str::is_empty) {
                return Err(ConfigError::Invalid {
                    field: "blobs.bucket",
                    reason: "backend = \"s3\" needs a bucket",
                });
            }
            if self.access_key_id.is_some() != self.secret_access_key.is_some() {
                return Err(ConfigError::Invalid {
                    field: "blobs.access_key_id",
                    reason: "access_key_id and secret_access_key go together",
                });
            }
        }
        Ok(())
    }
}

/// Built-in TLS: TLS 1.3 only, with HSTS on every response.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM file with the certificate chain, leaf first.
    pub cert_path: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
    /// `Strict-Transport-Security: max-age=…` on every response; 0 leaves the header out.
    #[serde(default = "default_hsts")]
    pub hsts_max_age_secs: u64,
}

fn default_hsts() -> u64 {
    63_072_000 // two years
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: "http://127.0.0.1:8080".to_owned(),
            data_dir: PathBuf::from("sotto-relay-data"),
            database_url: None,
            db_max_connections: 8,
            log_level: "info".to_owned(),
            limits: Limits::default(),
            heartbeat: Heartbeat::default(),
            tls: None,
            behind_tls_proxy: false,
            cors_allowed_origins: vec!["*".to_owned()],
            metrics_listen: None,
            metrics_token: None,
            blobs: Blobs::default(),
            push: crate::push::PushConfig::default(),
            cluster: None,
        }
    }
}

/// Every limit the relay enforces. Each is answered with its own error code.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest envelope (`ENVELOPE_TOO_LARGE`). At most 1 MiB.
    pub max_envelope_bytes: usize,
    /// Most recipient devices in one send (`TOO_MANY_RECIPIENTS`). At most 4096. The
    /// default, 2048, lets a group of 1,000 members with two devices each fan out in one
    /// shared-body send.
    pub max_recipients: usize,
    /// Most envelopes waiting in one mailbox (`MAILBOX_FULL`).
    pub max_mailbox_depth: u32,
    /// Most envelope bytes waiting in one mailbox (`MAILBOX_FULL`); at least
    /// `max_envelope_bytes`.
    pub max_mailbox_bytes: u64,
    /// Most message requests (envelopes sent without the recipient account's access key)
    /// waiting in one mailbox (`REQUESTS_FULL`); they count against `max_mailbox_depth`
    /// too. At least 1.
    pub max_request_depth: u32,
    /// Most message-request bytes waiting in one mailbox (`REQUESTS_FULL`); at least
    /// `max_envelope_bytes`.
    pub max_request_bytes: u64,
    /// How long an undelivered envelope is kept, seconds.
    pub envelope_ttl_secs: u64,
    /// Largest HTTP request body (`BODY_TOO_LARGE`).
    pub max_body_bytes: usize,
    /// Largest WebSocket message; a bigger one closes the connection with close code 1009.
    pub max_frame_bytes: usize,
    /// Largest ephemeral payload (`ENVELOPE_TOO_LARGE`). At most 64 KiB.
    pub max_ephemeral_bytes: usize,
    /// Most open WebSocket connections (`TOO_MANY_CONNECTIONS`).
    pub max_connections: usize,
    /// Recipient envelopes (one per recipient device of a send) and ephemeral frames per
    /// second per connection (authenticated or anonymous), sustained (`RATE_LIMITED`).
    pub rate_per_second: u32,
    /// Burst above the sustained rate, in envelopes. A send with more recipients than this
    /// is always `RATE_LIMITED`, so keep it at least `max_recipients`.
    pub rate_burst: u32,
    /// One-time prekeys of each kind kept per device (`TOO_MANY_PREKEYS`).
    pub max_one_time_prekeys: u32,
    /// How long a challenge may be answered, seconds (`CHALLENGE_EXPIRED`).
    pub challenge_ttl_secs: u64,
    /// Most used HTTP challenge nonces remembered (each until it expires) to refuse
    /// replays; when full, authentication answers `BUSY`. Issued challenges are stateless.
    /// At least `challenge_burst_total + challenge_rate_total × challenge_ttl_secs`
    /// (124 000 by default), the table cannot fill: every entry needs an issued challenge.
    pub max_pending_challenges: usize,
    /// Most envelopes delivered on one connection and not yet acknowledged (at most
    /// [`MAX_DELIVER_WINDOW`]).
    pub deliver_window: u32,
    /// Ephemeral frames queued per connection; more are dropped.
    pub ephemeral_queue: usize,
    /// How often expired envelopes are deleted, seconds.
    pub expiry_interval_secs: u64,

    // The network edge (docs/protocol.md §13.10). Per-address limits key IPv4 addresses
    // whole and IPv6 addresses by their /64.
    /// Most open TCP connections, HTTP and WebSocket alike; more are closed at accept.
    pub max_tcp_connections: usize,
    /// Most open TCP connections from one address; more are closed at accept.
    pub max_tcp_connections_per_addr: usize,
    /// Most open WebSockets from one address (`TOO_MANY_CONNECTIONS`).
    pub max_ws_per_addr: usize,
    /// Most WebSockets not authenticated (waiting for the answer to the challenge, or
    /// anonymous) at once (`TOO_MANY_CONNECTIONS`).
    pub max_unauthenticated: usize,
    /// Most WebSockets not authenticated from one address (`TOO_MANY_CONNECTIONS`).
    pub max_unauthenticated_per_addr: usize,
    /// An anonymous WebSocket that has sent no `Send` for this long is closed
    /// (`IDLE_TIMEOUT`); pings do not count. Milliseconds.
    pub anonymous_idle_ms: u64,
    /// An anonymous WebSocket is closed (`IDLE_TIMEOUT`) after this long. Milliseconds.
    pub anonymous_lifetime_ms: u64,
    /// Time to read a request head, and the idle time allowed between requests on a
    /// keep-alive connection; then the connection is closed. Milliseconds.
    pub header_read_timeout_ms: u64,
    /// Time from a request's head to its answer, the body's arrival included; then it is
    /// answered 408 `IDLE_TIMEOUT` and the connection closes. Milliseconds.
    pub request_timeout_ms: u64,
    /// A WebSocket message that has started must complete within this time, or the
    /// connection is closed (close code 1008). Milliseconds.
    pub message_timeout_ms: u64,
    /// Bytes of unfinished WebSocket messages, and of HTTP requests read and not yet
    /// answered, held for one address; over it, its connection that reads more is closed
    /// (WebSocket close code 1008).
    pub max_partial_bytes_per_addr: usize,
    /// The same bytes held in total; likewise.
    pub max_partial_bytes_total: usize,
    /// Envelope bytes of sends in flight (read and not yet answered, the writer's queue
    /// included) in total; a send over it is `BUSY`.
    pub max_inflight_send_bytes: usize,
    /// Admission control of sends: while the oldest write waiting for the database has
    /// waited longer than this for a whole `send_queue_interval_ms` (or one commit has run
    /// that long), new sends are refused at once with `BUSY` until the
    /// queue drains. Milliseconds; 0 turns it off (sends then wait for room).
    pub send_queue_target_ms: u64,
    /// The interval of `send_queue_target_ms`. Milliseconds, at least the target.
    pub send_queue_interval_ms: u64,
    /// Envelope bytes in live delivery queues in total; over it, connections read their
    /// mailbox from the database instead.
    pub max_live_queue_bytes: usize,
    /// Payload bytes in ephemeral queues in total; over it, ephemeral frames are dropped.
    pub max_ephemeral_queue_bytes: usize,
    /// HTTP challenges per second for one address, sustained (`RATE_LIMITED`).
    pub challenge_rate_per_addr: u32,
    /// Burst of HTTP challenges for one address.
    pub challenge_burst_per_addr: u32,
    /// HTTP challenges per second in total, sustained (`RATE_LIMITED`).
    pub challenge_rate_total: u32,
    /// Burst of HTTP challenges in total.
    pub challenge_burst_total: u32,
    /// Envelope bytes (and ephemeral payload bytes) per second per connection, sustained
    /// (`RATE_LIMITED`).
    pub rate_bytes_per_second: u32,
    /// Burst of envelope bytes per connection; keep it at least `max_frame_bytes`.
    pub rate_bytes_burst: u32,
    /// Recipient envelopes and ephemeral frames per second for all the connections of one
    /// address together, anonymous included (`RATE_LIMITED`).
    pub addr_rate_per_second: u32,
    /// Burst of envelopes for one address.
    pub addr_rate_burst: u32,
    /// Envelope bytes per second for one address.
    pub addr_rate_bytes_per_second: u32,
    /// Burst of envelope bytes for one address.
    pub addr_rate_bytes_burst: u32,
    /// Most addresses the per-address rate limiters track; idle ones are forgotten every
    /// few seconds, and while the table is full new work is `BUSY`.
    pub max_tracked_addrs: usize,
    /// Prekey bundle requests per minute for one requesting account, sustained
    /// (`RATE_LIMITED`).
    pub bundles_per_minute_per_requester: u32,
    /// Burst of bundle requests for one requesting account.
    pub bundles_burst_per_requester: u32,
    /// Bundle requests per minute, from anyone, that may take one-time prekeys of one
    /// target account, sustained. Beyond it the relay still answers, with bundles that
    /// carry the last-resort ML-KEM prekey and no one-time prekey, so a drain stops
    /// consuming one-time prekeys while honest senders still get bundles.
    pub one_time_bundles_per_minute_per_target: u32,
    /// Burst of one-time bundle requests for one target account.
    pub one_time_bundles_burst_per_target: u32,
    /// Account registrations (first device-list upload) per minute for one address,
    /// sustained (`RATE_LIMITED`).
    pub registrations_per_minute_per_addr: u32,
    /// Burst of registrations for one address.
    pub registrations_burst_per_addr: u32,
    /// Account registrations per minute in total, sustained (`RATE_LIMITED`).
    pub registrations_per_minute_total: u32,
    /// Burst of registrations in total.
    pub registrations_burst_total: u32,
    /// Device-list updates per minute for one account, sustained (`RATE_LIMITED`). It
    /// bounds how far a list key being revoked can push the version (docs/protocol.md
    /// §4.3) and how much list verification one account can cause.
    pub list_updates_per_minute_per_account: u32,
    /// Burst of device-list updates for one account.
    pub list_updates_burst_per_account: u32,
    /// Profile uploads (`PUT /v1/profile`) per minute for one account, sustained
    /// (`RATE_LIMITED`). Deleting a profile is not limited.
    pub profile_updates_per_minute_per_account: u32,
    /// Burst of profile uploads for one account.
    pub profile_updates_burst_per_account: u32,
    /// Profile fetches (`GET /v1/accounts/{account}/profile/{version}`, unauthenticated)
    /// per minute for one address, sustained (`RATE_LIMITED`), charged before the database
    /// is read: one address can neither keep the database busy nor try many versions.
    pub profile_fetches_per_minute_per_addr: u32,
    /// Burst of profile fetches for one address.
    pub profile_fetches_burst_per_addr: u32,
    /// Profile fetches per second in total, sustained (`RATE_LIMITED`).
    pub profile_fetches_per_second_total: u32,
    /// Burst of profile fetches in total.
    pub profile_fetches_burst_total: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_envelope_bytes: 256 * 1024,
            max_recipients: 2048,
            max_mailbox_depth: 10_000,
            max_mailbox_bytes: 64 << 20,
            max_request_depth: 100,
            max_request_bytes: 4 << 20,
            envelope_ttl_secs: 30 * 24 * 3600,
            max_body_bytes: 512 * 1024,
            max_frame_bytes: 4 * 1024 * 1024,
            max_ephemeral_bytes: 4 * 1024,
            max_connections: 10_000,
            rate_per_second: 200,
            rate_burst: 2_048,
            max_one_time_prekeys: 1000,
            challenge_ttl_secs: 60,
            max_pending_challenges: 130_000,
            deliver_window: 64,
            ephemeral_queue: 16,
            expiry_interval_secs: 60,
            max_tcp_connections: 12_000,
            max_tcp_connections_per_addr: 64,
            max_ws_per_addr: 32,
            max_unauthenticated: 2_500,
            max_unauthenticated_per_addr: 16,
            anonymous_idle_ms: 30_000,
            anonymous_lifetime_ms: 600_000,
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            message_timeout_ms: 30_000,
            max_partial_bytes_per_addr: 16 << 20,
            max_partial_bytes_total: 256 << 20,
            max_inflight_send_bytes: 256 << 20,
            send_queue_target_ms: 50,
            send_queue_interval_ms: 200,
            max_live_queue_bytes: 256 << 20,
            max_ephemeral_queue_bytes: 32 << 20,
            challenge_rate_per_addr: 20,
            challenge_burst_per_addr: 60,
            challenge_rate_total: 2_000,
            challenge_burst_total: 4_000,
            rate_bytes_per_second: 2 << 20,
            rate_bytes_burst: 8 << 20,
            addr_rate_per_second: 400,
            addr_rate_burst: 4_096,
            addr_rate_bytes_per_second: 4 << 20,
            addr_rate_bytes_burst: 16 << 20,
            max_tracked_addrs: 100_000,
            bundles_per_minute_per_requester: 120,
            bundles_burst_per_requester: 60,
            one_time_bundles_per_minute_per_target: 60,
            one_time_bundles_burst_per_target: 100,
            registrations_per_minute_per_addr: 10,
            registrations_burst_per_addr: 30,
            registrations_per_minute_total: 600,
            registrations_burst_total: 1_200,
            list_updates_per_minute_per_account: 10,
            list_updates_burst_per_account: 20,
            profile_updates_per_minute_per_account: 1,
            profile_updates_burst_per_account: 10,
            profile_fetches_per_minute_per_addr: 60,
            profile_fetches_burst_per_addr: 60,
            profile_fetches_per_second_total: 2_000,
            profile_fetches_burst_total: 4_000,
        }
    }
}

impl Limits {
    /// The time a started WebSocket message has to complete.
    pub fn message_timeout(&self) -> Duration {
        Duration::from_millis(self.message_timeout_ms.max(1))
    }
}

/// WebSocket heartbeat: the relay pings, and closes a connection it has heard nothing
/// from for `idle_timeout_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Heartbeat {
    /// Interval between pings, milliseconds.
    pub ping_interval_ms: u64,
    /// Idle time after which the connection closes, milliseconds.
    pub idle_timeout_ms: u64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            ping_interval_ms: 30_000,
            idle_timeout_ms: 90_000,
        }
    }
}

impl Heartbeat {
    /// The ping interval.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms.max(1))
    }
    /// The idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.max(1))
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML error.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("invalid setting {field}: {reason}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// Why.
        reason: &'static str,
    },
}

/// The subcommands of `sotto-relay`.
#[derive(Clone, Debug, PartialEq, Eq, clap::Subcommand)]
#[non_exhaustive]
pub enum Command {
    /// Operator commands: check-config, stats, mailbox, purge-device.
    #[command(subcommand)]
    Admin(crate::admin::Admin),
}

/// Command-line flags. Each also reads an environment variable; flags win over the
/// environment, which wins over the file.
#[derive(Debug, Default, Parser)]
#[command(name = "sotto-relay", version, about = "The Sotto blind relay")]
pub struct Cli {
    /// An operator command; without one, the relay runs.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// A TOML config file.
    #[arg(long, short, env = "SOTTO_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "SOTTO_LISTEN", global = true)]
    pub listen: Option<SocketAddr>,
    /// The URL clients use to reach this relay.
    #[arg(long, env = "SOTTO_PUBLIC_URL", global = true)]
    pub public_url: Option<String>,
    /// Directory for the SQLite database.
    #[arg(long, env = "SOTTO_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Database URL (`postgres://…` or `sqlite://…`).
    #[arg(long, env = "SOTTO_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Log level.
    #[arg(long, env = "SOTTO_LOG_LEVEL", global = true)]
    pub log_level: Option<String>,
    /// Most open WebSocket connections.
    #[arg(long, env = "SOTTO_MAX_CONNECTIONS", global = true)]
    pub max_connections: Option<usize>,
    /// Largest envelope in bytes.
    #[arg(long, env = "SOTTO_MAX_ENVELOPE_BYTES", global = true)]
    pub max_envelope_bytes: Option<usize>,
    /// PEM certificate chain: serve HTTPS/WSS (TLS 1.3) instead of plain HTTP. Needs
    /// `--tls-key`.
    #[arg(long, env = "SOTTO_TLS_CERT", requires = "tls_key", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `--tls-cert`.
    #[arg(long, env = "SOTTO_TLS_KEY", requires = "tls_cert", global = true)]
    pub tls_key: Option<PathBuf>,
    /// Allow plain HTTP on a non-loopback address: a proxy in front terminates TLS.
    #[arg(long, env = "SOTTO_BEHIND_TLS_PROXY", global = true)]
    pub behind_tls_proxy: bool,
    /// Web origins allowed to call the relay from a browser, comma-separated
    /// (`https://a.example,https://b.example`), or `*` for any.
    #[arg(long, env = "SOTTO_CORS_ALLOWED_ORIGINS", value_delimiter = ',', global = true)]
    pub cors_allowed_origins: Option<Vec<String>>,
}

impl Config {
    /// Loads the file named by `cli` (if any) and applies the flags and environment.
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let mut config = match &cli.config {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        if let Some(v) = cli.listen {
            config.listen = v;
        }
        if let Some(v) = &cli.public_url {
            config.public_url.clone_from(v);
        }
        if let Some(v) = &cli.data_dir {
            config.data_dir.clone_from(v);
        }
        if let Some(v) = &cli.database_url {
            config.database_url = Some(v.clone());
        }
        if let Some(v) = &cli.log_level {
            config.log_level.clone_from(v);
        }
        if let Some(v) = cli.max_connections {
            config.limits.max_connections = v;
        }
        if let Some(v) = cli.max_envelope_bytes {
            config.limits.max_envelope_bytes = v;
        }
        if let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) {
            let hsts_max_age_secs = config.tls.as_ref().map_or_else(default_hsts, |t| t.hsts_max_age_secs);
            config.tls = Some(Tls {
                cert_path: cert.clone(),
                key_path: key.clone(),
                hsts_max_age_secs,
            });
        }
        if cli.behind_tls_proxy {
            config.behind_tls_proxy = true;
        }
        if let Some(v) = &cli.cors_allowed_origins {
            config.cors_allowed_origins.clone_from(v);
        }
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Checks the limits against the protocol's hard bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let checks: [(bool, &'static str, &'static str); 32] = [
            (
                l.send_queue_interval_ms >= l.send_queue_target_ms && l.send_queue_interval_ms <= 60_000,
                "limits.send_queue_interval_ms",
                "must be at least send_queue_target_ms and at most 60000",
            ),
            (
                l.max_envelope_bytes <= sotto_proto::limits::MAX_ENVELOPE_LEN,
                "limits.max_envelope_bytes",
                "above the protocol bound of 1 MiB",
            ),
            (
                (1..=sotto_proto::limits::MAX_RECIPIENTS).contains(&l.max_recipients),
                "limits.max_recipients",
                "must be 1..=4096",
            ),
            (
                l.max_ephemeral_bytes <= sotto_proto::limits::MAX_EPHEMERAL_LEN,
                "limits.max_ephemeral_bytes",
                "above the protocol bound of 64 KiB",
            ),
            (l.max_connections >= 1, "limits.max_connections", "must be at least 1"),
            (l.deliver_window >= 1, "limits.deliver_window", "must be at least 1"),
            (
                l.deliver_window <= MAX_DELIVER_WINDOW,
                "limits.deliver_window",
                "above 1024, more than clients are required to buffer (docs/protocol.md §13)",
            ),
            (
                l.max_connections <= u32::MAX as usize >> 3,
                "limits.max_connections",
                "too large",
            ),
            (l.rate_burst >= 1, "limits.rate_burst", "must be at least 1"),
            (l.rate_per_second >= 1, "limits.rate_per_second", "must be at least 1"),
            (
                l.rate_bytes_per_second >= 1,
                "limits.rate_bytes_per_second",
                "must be at least 1",
            ),
            (l.rate_bytes_burst >= 1, "limits.rate_bytes_burst", "must be at least 1"),
            (
                l.addr_rate_per_second >= 1,
                "limits.addr_rate_per_second",
                "must be at least 1",
            ),
            (l.addr_rate_burst >= 1, "limits.addr_rate_burst", "must be at least 1"),
            (
                l.addr_rate_bytes_per_second >= 1 && l.addr_rate_bytes_burst >= 1,
                "limits.addr_rate_bytes_per_second",
                "rate and burst must be at least 1",
            ),
            (
                l.challenge_rate_per_addr >= 1 && l.challenge_burst_per_addr >= 1,
                "limits.challenge_rate_per_addr",
                "rate and burst must be at least 1",
            ),
            (
                l.challenge_rate_total >= 1 && l.challenge_burst_total >= 1,
                "limits.challenge_rate_total",
                "rate and burst must be at least 1",
            ),
            (
                l.max_mailbox_bytes >= l.max_envelope_bytes as u64,
                "limits.max_mailbox_bytes",
                "must be at least max_envelope_bytes",
            ),
            (
                l.max_request_depth >= 1,
                "limits.max_request_depth",
                "must be at least 1",
            ),
            (
                l.max_request_bytes >= l.max_envelope_bytes as u64,
                "limits.max_request_bytes",
                "must be at least max_envelope_bytes",
            ),
            (
                l.bundles_per_minute_per_requester >= 1 && l.bundles_burst_per_requester >= 1,
                "limits.bundles_per_minute_per_requester",
                "rate and burst must be at least 1",
            ),
            (
                l.one_time_bundles_per_minute_per_target >= 1 && l.one_time_bundles_burst_per_target >= 1,
                "limits.one_time_bundles_per_minute_per_target",
                "rate and burst must be at least 1",
            ),
            (
                l.registrations_per_minute_per_addr >= 1 && l.registrations_burst_per_addr >= 1,
                "limits.registrations_per_minute_per_addr",
                "rate and burst must be at least 1",
            ),
            (
                l.registrations_per_minute_total >= 1 && l.registrations_burst_total >= 1,
                "limits.registrations_per_minute_total",
                "rate and burst must be at least 1",
            ),
            (
                l.list_updates_per_minute_per_account >= 1 && l.list_updates_burst_per_account >= 1,
                "limits.list_updates_per_minute_per_account",
                "rate and burst must be at least 1",
            ),
            (
                l.profile_updates_per_minute_per_account >= 1 && l.profile_updates_burst_per_account >= 1,
                "limits.profile_updates_per_minute_per_account",
                "rate and burst must be at least 1",
            ),
            (
                l.profile_fetches_per_minute_per_addr >= 1 && l.profile_fetches_burst_per_addr >= 1,
                "limits.profile_fetches_per_minute_per_addr",
                "rate and burst must be at least 1",
            ),
            (
                l.profile_fetches_per_second_total >= 1 && l.profile_fetches_burst_total >= 1,
                "limits.profile_fetches_per_second_total",
                "rate and burst must be at least 1",
            ),
            (
                l.max_tcp_connections >= 1 && l.max_tcp_connections <= u32::MAX as usize >> 3,
                "limits.max_tcp_connections",
                "must be 1..=536870911",
            ),
            (
                l.max_tcp_connections_per_addr >= 1,
                "limits.max_tcp_connections_per_addr",
                "must be at least 1",
            ),
            (
                l.max_tracked_addrs >= 1,
                "limits.max_tracked_addrs",
                "must be at least 1",
            ),
            (
                l.header_read_timeout_ms >= 1,
                "limits.header_read_timeout_ms",
                "must be at least 1",
            ),
        ];
        for (ok, field, reason) in checks {
            if !ok {
                return Err(ConfigError::Invalid { field, reason });
            }
        }
        self.blobs.validate()?;
        self.push.validate()?;
        if let Some(c) = &self.cluster {
            c.validate()?;
        }
        if !self.cors_allowed_origins.iter().all(|o| o == "*" || is_origin(o)) {
            return Err(ConfigError::Invalid {
                field: "cors_allowed_origins",
                reason: "each entry must be \"*\" or an origin: http:// or https://, a lowercase host, an \
                         optional port, no path or trailing slash",
            });
        }
        if self.tls.is_none() && !self.listen.ip().is_loopback() && !self.behind_tls_proxy {
            return Err(ConfigError::Invalid {
                field: "tls",
                reason: "plain HTTP on a non-loopback address: configure [tls], or set behind_tls_proxy = true \
                         when a proxy in front terminates TLS",
            });
        }
        Ok(())
    }

    /// The blob directory: `blobs.dir`, else `blobs` beside the SQLite database file, else
    /// (PostgreSQL, an in-memory SQLite) `blobs` in `data_dir`.
    pub fn blob_dir(&self) -> PathBuf {
        if let Some(dir) = &self.blobs.dir {
            return dir.clone();
        }
        let url = self.database_url();
        let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
        let file = (!postgres)
            .then(|| {
                url.strip_prefix("sqlite://")
                    .or_else(|| url.strip_prefix("sqlite:"))
                    .unwrap_or(&url)
            })
            .map(|p| p.split('?').next().unwrap_or(p))
            .filter(|p| !p.is_empty() && !p.starts_with(':'));
        match file.and_then(|f| Path::new(f).parent()) {
            Some(parent) => parent.join("blobs"),
            None => self.data_dir.join("blobs"),
        }
    }

    /// The database URL: the configured one, or the SQLite file in the data dir.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("relay.db").display()),
        }
    }
}

/// True for a serialized web origin as browsers send it in `Origin`:
/// `http://` or `https://`, a lowercase host, an optional port, nothing after.
fn is_origin(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://")) else {
        return false;
    };
    // An IPv6 host is bracketed; a port follows the host after a colon.
    let host_end = rest.rfind(']').map_or(0, |i| i + 1);
    let (host, port) = match rest[host_end..].find(':') {
        Some(i) => (&rest[..host_end + i], Some(&rest[host_end + i + 1..])),
        None => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.[]:".contains(&b));
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

#[cfg(test)]
mod tests {
    use sotto_proto::Frame;

    use super::*;

    #[test]
    fn file_then_flags() {
        let dir = std::env::temp_dir().join(format!("sotto-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\n[limits]\nmax_recipients = 10\n[heartbeat]\nping_interval_ms = 5\n",
        )
        .unwrap();
        let cli = Cli {
            config: Some(path.clone()),
            max_connections: Some(3),
            ..Cli::default()
        };
        let c = Config::load(&cli).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.limits.max_recipients, 10);
        assert_eq!(c.limits.max_connections, 3);
        assert_eq!(c.heartbeat.ping_interval_ms, 5);
        assert_eq!(c.heartbeat.idle_timeout_ms, 90_000);
        assert!(c.database_url().starts_with("sqlite://"));
        std::fs::write(&path, "bogus = 1\n").unwrap();
        assert!(matches!(Config::load(&cli), Err(ConfigError::Parse { .. })));
        std::fs::write(&path, "[limits]\nmax_recipients = 0\n").unwrap();
        assert!(matches!(Config::load(&cli), Err(ConfigError::Invalid { .. })));

        // Plain HTTP only on loopback, or behind a proxy that terminates TLS.
        std::fs::write(&path, "listen = \"0.0.0.0:8080\"\n").unwrap();
        assert!(matches!(
            Config::load(&cli),
            Err(ConfigError::Invalid { field: "tls", .. })
        ));
        let proxied = Cli {
            behind_tls_proxy: true,
            ..Cli {
                config: Some(path.clone()),
                ..Cli::default()
            }
        };
        assert!(Config::load(&proxied).unwrap().behind_tls_proxy);
        let tls = Cli {
            tls_cert: Some("cert.pem".into()),
            tls_key: Some("key.pem".into()),
            ..Cli {
                config: Some(path.clone()),
                ..Cli::default()
            }
        };
        let c = Config::load(&tls).unwrap();
        assert_eq!(c.tls.as_ref().map(|t| t.hsts_max_age_secs), Some(63_072_000));
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:443\"\n[tls]\ncert_path = \"a.pem\"\nkey_path = \"b.pem\"\nhsts_max_age_secs = 0\n",
        )
        .unwrap();
        assert_eq!(Config::load(&cli).unwrap().tls.unwrap().hsts_max_age_secs, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cors_origins() {
        assert_eq!(Config::default().cors_allowed_origins, vec!["*"]);
        for ok in [
            "https://chat.example.org",
            "http://127.0.0.1:8080",
            "http://localhost",
            "http://[::1]:3000",
        ] {
            assert!(is_origin(ok), "{ok}");
        }
        for bad in [
            "chat.example.org",
            "https://chat.example.org/",
            "https://chat.example.org/app",
            "https://Chat.example.org",
            "https://a.example:",
            "https://a.example:80x",
            "ftp://a.example",
            "https://",
            "",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
        let c = Config {
            cors_allowed_origins: vec!["https://a.example".into(), "https://a.example/".into()],
            ..Config::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                field: "cors_allowed_origins",
                ..
            })
        ));
        let c: Config =
            toml::from_str("cors_allowed_origins = [\"https://a.example\", \"http://localhost:5173\"]\n").unwrap();
        assert!(c.validate().is_ok());
        assert_eq!(c.cors_allowed_origins.len(), 2);
        let cli = Cli::try_parse_from([
            "sotto-relay",
            "--cors-allowed-origins",
            "https://a.example,http://b.example",
        ])
        .unwrap();
        assert_eq!(
            Config::load(&cli).unwrap().cors_allowed_origins,
            vec!["https://a.example", "http://b.example"]
        );
    }

    #[test]
    fn metrics_token_stays_out_of_debug() {
        let c: Config = toml::from_str("metrics_token = \"s3cret-token\"\n").unwrap();
        assert_eq!(c.metrics_token.as_ref().map(|t| t.0.as_str()), Some("s3cret-token"));
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("metrics_token: Some(MetricsToken(..))"), "{shown}");
    }

    /// The invariants the limits' docs ask operators to keep hold for the defaults.
    #[test]
    fn defaults_keep_their_invariants() {
        let c = Config::default();
        c.validate().unwrap();
        let l = &c.limits;
        assert_eq!(l.max_recipients, 2048);
        // A send with more recipients than a burst can never pass.
        assert!(l.rate_burst as usize >= l.max_recipients);
        assert!(l.addr_rate_burst as usize >= l.max_recipients);
        assert!(l.rate_bytes_burst as usize >= l.max_frame_bytes);
        assert!(l.max_mailbox_bytes >= l.max_envelope_bytes as u64);
        assert!(l.max_request_bytes >= l.max_envelope_bytes as u64);
        // A fan-out to max_recipients devices with empty heads and the largest body fits
        // in one WebSocket message.
        let fan_out = Frame::Send(sotto_proto::Send {
            message_id: 1,
            access: vec![],
            body: vec![0; l.max_envelope_bytes],
            recipients: (0..l.max_recipients)
                .map(|i| sotto_proto::Recipient {
                    account_id: sotto_crypto::AccountId([0; 32]),
                    device_id: sotto_crypto::DeviceId(i as u32),
                    head: vec![],
                })
                .collect(),
        });
        assert!(fan_out.encode().len() <= l.max_frame_bytes);
    }

    /// The profile limits need a rate and a burst of at least 1, each; a file may set them.
    #[test]
    fn profile_limits_are_validated() {
        let l = Limits::default();
        assert_eq!(
            (
                l.profile_updates_per_minute_per_account,
                l.profile_updates_burst_per_account
            ),
            (1, 10)
        );
        assert_eq!(
            (l.profile_fetches_per_minute_per_addr, l.profile_fetches_burst_per_addr),
            (60, 60)
        );
        assert_eq!(
            (l.profile_fetches_per_second_total, l.profile_fetches_burst_total),
            (2_000, 4_000)
        );
        /// Sets one of the profile limits to 0.
        type Zero = fn(&mut Limits);
        let zeroed: [(Zero, &str); 6] = [
            (
                |l| l.profile_updates_per_minute_per_account = 0,
                "limits.profile_updates_per_minute_per_account",
            ),
            (
                |l| l.profile_updates_burst_per_account = 0,
                "limits.profile_updates_per_minute_per_account",
            ),
            (
                |l| l.profile_fetches_per_minute_per_addr = 0,
                "limits.profile_fetches_per_minute_per_addr",
            ),
            (
                |l| l.profile_fetches_burst_per_addr = 0,
                "limits.profile_fetches_per_minute_per_addr",
            ),
            (
                |l| l.profile_fetches_per_second_total = 0,
                "limits.profile_fetches_per_second_total",
            ),
            (
                |l| l.profile_fetches_burst_total = 0,
                "limits.profile_fetches_per_second_total",
            ),
        ];
        for (zero, want) in zeroed {
            let mut c = Config::default();
            zero(&mut c.limits);
            assert!(
                matches!(c.validate(), Err(ConfigError::Invalid { field, .. }) if field == want),
                "{want}"
            );
        }
        let c: Config = toml::from_str(
            "[limits]\nprofile_fetches_per_minute_per_addr = 5\nprofile_updates_burst_per_account = 3\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.limits.profile_fetches_per_minute_per_addr, 5);
        assert_eq!(c.limits.profile_updates_burst_per_account, 3);
    }

    #[test]
    fn deliver_window_is_bounded_for_clients() {
        for (window, ok) in [
            (0, false),
            (1, true),
            (MAX_DELIVER_WINDOW, true),
            (MAX_DELIVER_WINDOW + 1, false),
        ] {
            let mut c = Config::default();
            c.limits.deliver_window = window;
            let r = c.validate();
            assert_eq!(r.is_ok(), ok, "{window}: {r:?}");
            if !ok {
                assert!(matches!(
                    r,
                    Err(ConfigError::Invalid {
                        field: "limits.deliver_window",
                        ..
                    })
                ));
            }
        }
    }

    #[test]
    fn blob_settings_are_checked() {
        let field = |c: &Config| match c.validate() {
            Err(ConfigError::Invalid { field, .. }) => Some(field),
            _ => None,
        };
        let c: Config = toml::from_str("[blobs]\nbackend = \"s3\"\n").unwrap();
        assert_eq!(field(&c), Some("blobs.bucket"));
        let c: Config = toml::from_str(
            "[blobs]\nbackend = \"s3\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9000\"\n\
             allow_http = true\naccess_key_id = \"id\"\nsecret_access_key = \"very-secret\"\n",
        )
        .unwrap();
        assert_eq!(field(&c), None);
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("very-secret") && shown.contains("S3Secret(..)"),
            "{shown}"
        );
        let c: Config = toml::from_str("[blobs]\nbackend = \"s3\"\nbucket = \"b\"\naccess_key_id = \"id\"\n").unwrap();
        assert_eq!(field(&c), Some("blobs.access_key_id"));
        let c: Config = toml::from_str("[blobs]\nbucket = \"b\"\n").unwrap();
        assert_eq!(field(&c), Some("blobs.bucket"));
        for (tweak, want) in [
            (
                (|b: &mut Blobs| b.max_blob_len = 0) as fn(&mut Blobs),
                "blobs.max_blob_len",
            ),
            (|b| b.max_total_bytes = 10, "blobs.max_total_bytes"),
            (|b| b.token_epoch_secs = 59, "blobs.token_epoch_secs"),
            (|b| b.tokens_per_device_per_day = 0, "blobs.tokens_per_device_per_day"),
            (|b| b.max_concurrent_downloads = 0, "blobs.max_concurrent_downloads"),
            (|b| b.max_transfers_per_addr = 0, "blobs.max_transfers_per_addr"),
            (
                |b| b.min_download_bytes_per_second = 0,
                "blobs.min_download_bytes_per_second",
            ),
            (|b| b.requests_burst_total = 0, "blobs.requests_per_second_total"),
        ] {
            let mut c = Config::default();
            tweak(&mut c.blobs);
            assert_eq!(field(&c), Some(want));
        }
    }

    #[test]
    fn blob_dir_defaults_beside_the_database() {
        let mut c = Config {
            data_dir: PathBuf::from("/data"),
            ..Config::default()
        };
        assert_eq!(c.blob_dir(), PathBuf::from("/data/blobs"));
        c.database_url = Some("sqlite:///srv/sotto/relay.db?mode=rwc".to_owned());
        assert_eq!(c.blob_dir(), PathBuf::from("/srv/sotto/blobs"));
        c.database_url = Some("postgres://db/sotto".to_owned());
        assert_eq!(c.blob_dir(), PathBuf::from("/data/blobs"));
        c.blobs.dir = Some(PathBuf::from("/mnt/blobs"));
        assert_eq!(c.blob_dir(), PathBuf::from("/mnt/blobs"));
    }
}
