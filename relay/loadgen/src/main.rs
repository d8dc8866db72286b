//! `sotto-loadgen`: a load generator for the Sotto relay.
//!
//! ```text
//! sotto-loadgen --url http://127.0.0.1:PORT --mode idle       --relay-pid PID --connections 10000
//! sotto-loadgen --url http://127.0.0.1:PORT --mode throughput --pairs 1000 --rate 10000 --duration 20
//! sotto-loadgen --url http://127.0.0.1:PORT --mode catchup    --queued 100000
//! sotto-loadgen --url http://127.0.0.1:PORT --mode fanout     --fanout-accounts 1000 --fanout-devices 2 \
//!               --body-bytes 1024 [--db-stats-cmd 'sqlite3 DATA_DIR/relay.db' --db-dialect sqlite]
//! ```
//!
//! Every mode registers fresh accounts (of one device each, but for `fanout`) over HTTP, then opens
//! authenticated WebSockets. Client start times and send intervals are drawn at random per
//! client so no timers line up. Each mode prints progress and ends with one line
//! `RESULT mode=… key=value …` that `run.sh` collects. Only loopback relays are accepted;
//! every loop is bounded in count and time, and the whole run by `--max-runtime-secs`.

mod catchup;
mod fanout;
mod idle;
mod net;
mod stats;
mod throughput;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tokio::sync::Semaphore;

use crate::net::{Identity, Target, Ws};

/// A failure, with a message for the operator.
#[derive(Debug)]
pub(crate) struct Fail(pub(crate) String);

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// N idle authenticated connections; relay RSS per connection.
    Idle,
    /// K sender → receiver pairs at a total rate; durable deliveries/s and latency.
    Throughput,
    /// One offline device with a backlog; drain rate when it connects.
    Catchup,
    /// One message with a shared body to every device of many accounts, all connected;
    /// time to the last delivery and the relay's storage for it.
    Fanout,
}

/// How a fan-out's envelopes travel (`--fanout-layout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Layout {
    /// The body once, a head per device.
    Shared,
    /// Every device's whole envelope in its head, no shared body.
    Copies,
}

/// The SQL dialect of `--db-stats-cmd`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Dialect {
    /// `sqlite3 PATH` (with the `dbstat` table).
    Sqlite,
    /// `psql … -At`.
    Postgres,
}

/// Command-line options. Counts and times are bounded (see `validate`).
#[derive(Debug, Parser)]
#[command(name = "sotto-loadgen", about = "Load generator for the Sotto relay")]
pub(crate) struct Cli {
    /// The relay, `http://127.0.0.1:PORT` (loopback only); for a cluster, its nodes'
    /// URLs separated by commas, which new connections take in turn.
    #[arg(long)]
    url: String,
    /// The relay's `--public-url` (its relay id is checked). Default: `--url`.
    #[arg(long)]
    public_url: Option<String>,
    /// What to measure.
    #[arg(long, value_enum)]
    mode: Mode,
    /// The relay's process id (for RSS and CPU readings; required by `idle`).
    #[arg(long)]
    relay_pid: Option<u32>,
    /// Also report the CPU use of every process with this command name (e.g. `postgres`).
    #[arg(long)]
    watch_comm: Option<String>,
    /// Seed for keys, start offsets, intervals and envelope bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// idle: connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) connections: usize,
    /// Client start offsets are drawn uniformly from [0, ramp).
    #[arg(long, default_value_t = 10.0)]
    pub(crate) ramp_secs: f64,
    /// idle: wait after the last connection before reading the RSS.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) settle_secs: f64,
    /// Most connection handshakes in flight at once.
    #[arg(long, default_value_t = 128)]
    pub(crate) connect_concurrency: usize,
    /// throughput: sender/receiver pairs.
    #[arg(long, default_value_t = 1000)]
    pub(crate) pairs: usize,
    /// throughput: target total envelopes per second (open loop).
    #[arg(long, default_value_t = 10_000.0)]
    pub(crate) rate: f64,
    /// throughput: seconds of sending.
    #[arg(long, default_value_t = 20.0)]
    pub(crate) duration: f64,
    /// throughput/catchup: envelope size in bytes (at least 16).
    #[arg(long, default_value_t = 256)]
    pub(crate) envelope_bytes: usize,
    /// throughput: every this many seconds, print a `SOAK` line for the interval (sends,
    /// deliveries, latency p50/p99, the relay's RSS and open files, and its queue depths
    /// from `--metrics-addr`); `--duration` may then be up to 7200 s.
    #[arg(long)]
    pub(crate) report_secs: Option<f64>,
    /// The relay's `metrics_listen` address (`127.0.0.1:PORT`), scraped by `--report-secs`.
    #[arg(long)]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
    /// throughput: how long to wait for stragglers after the last send.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) grace_secs: f64,
    /// Receivers ack after this many deliveries (default: 1 for throughput, 32 for
    /// catchup; the relay's deliver window is 64).
    #[arg(long)]
    pub(crate) ack_batch: Option<u32>,
    /// Receivers ack a partial batch after this many milliseconds.
    #[arg(long, default_value_t = 5)]
    pub(crate) ack_delay_ms: u64,
    /// throughput: senders honour refusals of the whole relay (`BUSY`, `RATE_LIMITED`) as
    /// the SDK does: after one, a sender skips its scheduled sends (counted as deferred)
    /// for a pause of `--backoff-ms` that doubles with each pause in a row up to 30 s,
    /// 100–150 % of it at random; a stored send starts the count over. Without it the load stays open
    /// loop: every scheduled send goes out, refused or not.
    #[arg(long)]
    pub(crate) backoff: bool,
    /// throughput, with `--backoff`: the first pause, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub(crate) backoff_ms: u64,
    /// Throughput: receivers set an access verifier and senders present the key, so
    /// every send takes the relay's access check (docs/protocol.md §13.8).
    #[arg(long)]
    pub(crate) access_keys: bool,
    /// catchup: envelopes queued for the offline device.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) queued: u64,
    /// catchup: instead of queueing through the relay, pipe SQL that inserts the backlog
    /// straight into the relay's PostgreSQL schema to this shell command (e.g.
    /// `psql -h 127.0.0.1 -p PORT -U postgres -d DB -q`). Only the drain is then measured.
    #[arg(long)]
    pub(crate) fill_sql_cmd: Option<String>,
    /// catchup: sends in flight while queueing.
    #[arg(long, default_value_t = 256)]
    pub(crate) fill_window: usize,
    /// fanout: recipient accounts.
    #[arg(long, default_value_t = 1000)]
    pub(crate) fanout_accounts: usize,
    /// fanout: devices per recipient account (all of them receive).
    #[arg(long, default_value_t = 2)]
    pub(crate) fanout_devices: u32,
    /// fanout: messages sent one after another (each measured).
    #[arg(long, default_value_t = 5)]
    pub(crate) fanout_rounds: u32,
    /// fanout: shared body (`shared`) or a whole envelope per device (`copies`).
    #[arg(long, value_enum, default_value_t = Layout::Shared)]
    pub(crate) fanout_layout: Layout,
    /// fanout: bytes of the shared body.
    #[arg(long, default_value_t = 1024)]
    pub(crate) body_bytes: usize,
    /// fanout: bytes of each device's head.
    #[arg(long, default_value_t = 0)]
    pub(crate) head_bytes: usize,
    /// fanout: a shell command that runs SQL read on stdin against the relay's database
    /// and prints `|`-separated columns (`sqlite3 PATH`, `psql -h … -At`), for the storage
    /// the first message takes.
    #[arg(long)]
    pub(crate) db_stats_cmd: Option<String>,
    /// fanout: the dialect of `--db-stats-cmd`.
    #[arg(long, value_enum, default_value_t = Dialect::Sqlite)]
    pub(crate) db_dialect: Dialect,
    /// catchup: bound on the drain, seconds.
    #[arg(long, default_value_t = 600.0)]
    pub(crate) drain_timeout_secs: f64,
    /// Parallel HTTP connections for registration.
    #[arg(long, default_value_t = 16)]
    pub(crate) register_workers: usize,
    /// Hard bound on the whole run, seconds.
    #[arg(long, default_value_t = 1200)]
    max_runtime_secs: u64,
}

impl Cli {
    fn validate(&self) -> Result<(), Fail> {
        let checks = [
            (
                (1..=60_000).contains(&self.connections),
                "--connections must be 1..=60000",
            ),
            ((1..=20_000).contains(&self.pairs), "--pairs must be 1..=20000"),
            (self.rate > 0.0 && self.rate <= 1e6, "--rate must be in (0, 1e6]"),
            (
                self.duration > 0.0 && self.duration <= if self.report_secs.is_some() { 7200.0 } else { 600.0 },
                "--duration must be in (0, 600], or (0, 7200] with --report-secs",
            ),
            (
                self.report_secs.is_none_or(|r| (1.0..=600.0).contains(&r)),
                "--report-secs must be in [1, 600]",
            ),
            (
                (0.0..=300.0).contains(&self.ramp_secs),
                "--ramp-secs must be in [0, 300]",
            ),
            (
                (0.0..=300.0).contains(&self.settle_secs),
                "--settle-secs must be in [0, 300]",
            ),
            (
                (0.0..=300.0).contains(&self.grace_secs),
                "--grace-secs must be in [0, 300]",
            ),
            (
                (16..=256 * 1024).contains(&self.envelope_bytes),
                "--envelope-bytes must be 16..=262144",
            ),
            ((1..=1_000_000).contains(&self.queued), "--queued must be 1..=1000000"),
            ((1..=4096).contains(&self.fill_window), "--fill-window must be 1..=4096"),
            (
                (1..=4096).contains(&self.connect_concurrency),
                "--connect-concurrency must be 1..=4096",
            ),
            (
                self.drain_timeout_secs > 0.0 && self.drain_timeout_secs <= 3600.0,
                "--drain-timeout-secs must be in (0, 3600]",
            ),
            (
                self.ack_batch.is_none_or(|b| (1..=64).contains(&b)),
                "--ack-batch must be 1..=64",
            ),
            (self.ack_delay_ms <= 1000, "--ack-delay-ms must be at most 1000"),
            (
                (1..=4096).contains(&self.fanout_accounts),
                "--fanout-accounts must be 1..=4096",
            ),
            (
                (1..=64).contains(&self.fanout_devices),
                "--fanout-devices must be 1..=64",
            ),
            (
                self.fanout_accounts.saturating_mul(self.fanout_devices as usize)
                    <= sotto_proto::limits::MAX_RECIPIENTS,
                "--fanout-accounts x --fanout-devices must be at most 4096 (the protocol's recipient bound)",
            ),
            ((1..=50).contains(&self.fanout_rounds), "--fanout-rounds must be 1..=50"),
            (
                (1..=256 * 1024).contains(&self.body_bytes),
                "--body-bytes must be 1..=262144",
            ),
            (self.head_bytes <= 4096, "--head-bytes must be at most 4096"),
            (
                (1..=7200).contains(&self.max_runtime_secs),
                "--max-runtime-secs must be 1..=7200",
            ),
        ];
        for (ok, msg) in checks {
            if !ok {
                return Err(Fail(msg.into()));
            }
        }
        if self.mode == Mode::Idle && self.relay_pid.is_none() {
            return Err(Fail("--mode idle needs --relay-pid".into()));
        }
        Ok(())
    }
}

/// What every mode gets.
pub(crate) struct Ctx {
    pub(crate) cli: Cli,
    pub(crate) target: Target,
}

impl Ctx {
    pub(crate) fn relay_pid(&self) -> Option<u32> {
        self.cli.relay_pid
    }

    pub(crate) fn cpu_watch(&self) -> stats::CpuWatch {
        stats::CpuWatch::start(self.cli.relay_pid, self.cli.watch_comm.as_deref())
    }

    /// `n` fresh accounts, registered.
    pub(crate) async fn accounts(&self, n: usize) -> Result<Vec<Arc<Identity>>, Fail> {
        let t = std::time::Instant::now();
        let seed = self.cli.seed;
        let ids = tokio::task::spawn_blocking(move || net::identities(n, seed))
            .await
            .map_err(|e| Fail(format!("key generation: {e}")))?;
        net::register_all(&self.target, &ids, self.cli.register_workers).await?;
        println!("registered {n} accounts in {:.1} s", t.elapsed().as_secs_f64());
        Ok(ids)
    }

    /// Opens and authenticates one WebSocket per identity, each after a random start
    /// offset in `[0, ramp)`, at most `connect_concurrency` handshakes at a time; waits for
    /// each mailbox's `QueueEmpty`. Returns the sockets in the identities' order.
    pub(crate) async fn open_all(&self, ids: &[Arc<Identity>], salt: u64) -> Result<Vec<Ws>, Fail> {
        let t = std::time::Instant::now();
        let gate = Arc::new(Semaphore::new(self.cli.connect_concurrency));
        let ramp = Duration::from_secs_f64(self.cli.ramp_secs);
        let mut tasks = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            let id = id.clone();
            let target = self.target.clone();
            let gate = gate.clone();
            let mut rng = rng(self.cli.seed, salt, i as u64);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(stats::offset(&mut rng, ramp)).await;
                let _permit = gate.acquire_owned().await.map_err(|_| Fail("closed".into()))?;
                let mut ws = net::connect_retry(&target, &id, 3, &mut rng).await?;
                wait_queue_empty(&mut ws).await?;
                Ok::<Ws, Fail>(ws)
            }));
        }
        let mut out = Vec::with_capacity(ids.len());
        let mut first_err = None;
        for task in tasks {
            match task.await {
                Ok(Ok(ws)) => out.push(ws),
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(e) => first_err = first_err.or(Some(Fail(format!("connect task: {e}")))),
            }
        }
        if let Some(e) = first_err {
            return Err(Fail(format!(
                "{} of {} connections failed; first: {e}",
                ids.len() - out.len(),
                ids.len()
            )));
        }
        println!(
            "opened {} authenticated connections in {:.1} s",
            out.len(),
            t.elapsed().as_secs_f64()
        );
        Ok(out)
    }
}

/// Reads frames until `QueueEmpty` (a fresh mailbox answers it at once).
pub(crate) async fn wait_queue_empty(ws: &mut Ws) -> Result<(), Fail> {
    let wait = async {
        loop {
            match net::next_frame(ws).await? {
                Some(sotto_proto::Frame::QueueEmpty) => return Ok(()),
                Some(_) => {}
                None => return Err(Fail("closed before QueueEmpty".into())),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .map_err(|_| Fail("no QueueEmpty within 30 s".into()))?
}

/// A per-client RNG: independent streams from one seed.
pub(crate) fn rng(seed: u64, salt: u64, i: u64) -> rand_chacha::ChaCha20Rng {
    use rand_core::SeedableRng;
    let mut r = rand_chacha::ChaCha20Rng::seed_from_u64(seed ^ salt.rotate_left(32));
    r.set_stream(i);
    r
}

async fn run(ctx: Ctx) -> Result<String, Fail> {
    net::wait_healthy(&ctx.target, Duration::from_secs(30)).await?;
    println!(
        "mode={:?} relay={} load_average={}",
        ctx.cli.mode,
        ctx.cli.url,
        stats::loadavg()
    );
    match ctx.cli.mode {
        Mode::Idle => idle::run(&ctx).await,
        Mode::Throughput => throughput::run(&ctx).await,
        Mode::Catchup => catchup::run(&ctx).await,
        Mode::Fanout => fanout::run(&ctx).await,
    }
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(idle::ANCHOR_SERVER) {
        return idle::anchor_server();
    }
    let cli = Cli::parse();
    if let Err(e) = cli.validate() {
        eprintln!("sotto-loadgen: {e}");
        return ExitCode::from(2);
    }
    stats::init_clock();
    let public_url = cli.public_url.clone().unwrap_or_else(|| cli.url.clone());
    let target = match Target::new(&cli.url, &public_url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sotto-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sotto-loadgen: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let max = Duration::from_secs(cli.max_runtime_secs);
    let outcome = runtime.block_on(async move { tokio::time::timeout(max, run(Ctx { cli, target })).await });
    let code = match outcome {
        Ok(Ok(result)) => {
            println!("{result}");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("sotto-loadgen: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("sotto-loadgen: gave up after --max-runtime-secs {}", max.as_secs());
            ExitCode::FAILURE
        }
    };
    // Thousands of sockets may still be open; do not wait for their tasks.
    runtime.shutdown_timeout(Duration::from_secs(2));
    code
}
