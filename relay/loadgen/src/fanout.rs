//! `--mode fanout`: one message to every device of `--fanout-accounts` accounts of
//! `--fanout-devices` devices each (1,000 × 2 by default), all connected, repeated for
//! `--fanout-rounds` messages.
//!
//! ```text
//! --fanout-layout shared   the Send carries the body once (--body-bytes) and a head of
//!                          --head-bytes per device: envelope_i = head_i ‖ body
//! --fanout-layout copies   the same envelopes, each whole in its head (no shared body):
//!                          what a relay without shared bodies would take
//! ```
//!
//! Per message it measures, on the generator's monotonic clock, from just before the
//! encoded `Send` is written to the socket: the `SendResult` (stored), the first
//! delivery, the median delivery and the last delivery; every receiver checks that its
//! envelope is exactly `head_i ‖ body`. Receivers ack a message only after it was
//! measured, so during the first message's storage reading every mailbox row is there.
//!
//! Storage of the first message, with `--db-stats-cmd` (a shell command reading SQL on
//! stdin from the relay's database, e.g. `sqlite3 PATH` or `psql … -At`, printing
//! `|`-separated columns) and `--db-dialect`: read before the first send and after its
//! last delivery, on a fresh database:
//!
//! * logical: the body rows and their bytes, the envelope rows and their head bytes;
//! * physical, SQLite: bytes of the pages (`dbstat`) of each table with its indexes;
//!   PostgreSQL: `pg_total_relation_size` (heap, TOAST and indexes) of each table.
//!
//! The difference of the physical sizes, over the mailboxes, is the per-row cost. The
//! physical sizes grow by whole pages (4 KiB in SQLite, 8 KiB in PostgreSQL), so a table
//! that gains less than a page (one 1 KiB body in the root page of `bodies`) may show no
//! growth; on SQLite the payload bytes `dbstat` counts are reported too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand_core::RngCore;
use sotto_crypto::{AccountKey, Device, DeviceId};
use sotto_proto::{Frame, Recipient, Send, SendOutcome, SendResult};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::net::{Identity, Ws, next_frame};
use crate::stats::{now_ns, percentile};
use crate::{Ctx, Dialect, Fail, Layout};

/// How long one message may take to reach every device.
const ROUND_TIMEOUT: Duration = Duration::from_secs(120);

/// `accounts` fresh accounts of `devices` devices each (one signed list per account, held
/// by each of its devices), from a seeded RNG.
fn group_identities(accounts: usize, devices: u32, seed: u64) -> Vec<Vec<Arc<Identity>>> {
    use rand_core::SeedableRng;
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    (0..accounts)
        .map(|_| {
            let ak = AccountKey::generate(&mut rng);
            let ds: Vec<Device> = (1..=devices)
                .map(|d| Device::generate(ak.account_id(), DeviceId(d), &mut rng))
                .collect();
            let list = ak
                .sign_device_list(1, 0, ds.iter().map(Device::entry).collect())
                .expect("a list of at most 64 devices is valid");
            let signed = list.signed().as_bytes().to_vec();
            ds.into_iter()
                .map(|device| {
                    Arc::new(Identity {
                        device,
                        signed_list: signed.clone(),
                    })
                })
                .collect()
        })
        .collect()
}

/// Device `i`'s head in message `round`: `len` bytes naming both.
fn head(i: usize, round: u32, len: usize) -> Vec<u8> {
    let tag = (i as u64) << 16 | u64::from(round);
    (0..len).map(|k| (tag >> (8 * (k % 8))) as u8 ^ k as u8).collect()
}

/// What one receiver saw of one message.
struct Seen {
    round: u32,
    at_ns: u64,
    ok: bool,
}

/// One receiver: for each message, reads its delivery, reports when it came and whether
/// it was `head ‖ body`, and acks it once `acks` allows.
async fn receiver(
    mut ws: Ws,
    i: usize,
    rounds: u32,
    head_len: usize,
    bodies: Arc<Vec<Vec<u8>>>,
    seen: mpsc::UnboundedSender<Seen>,
    mut acks: watch::Receiver<u32>,
) -> Result<(), Fail> {
    for round in 0..rounds {
        let d = loop {
            let frame = tokio::time::timeout(ROUND_TIMEOUT, next_frame(&mut ws))
                .await
                .map_err(|_| Fail(format!("receiver {i}: no delivery of message {round}")))??;
            match frame {
                Some(Frame::Deliver(d)) => break d,
                Some(Frame::Error { code }) => return Err(Fail(format!("receiver {i}: relay error {code:?}"))),
                Some(_) => {}
                None => return Err(Fail(format!("receiver {i}: socket closed"))),
            }
        };
        let at_ns = now_ns();
        let body = &bodies[round as usize];
        let ok = d.envelope.len() == head_len + body.len()
            && d.envelope[..head_len] == head(i, round, head_len)[..]
            && d.envelope[head_len..] == body[..];
        let _ = seen.send(Seen { round, at_ns, ok });
        acks.wait_for(|r| *r > round)
            .await
            .map_err(|_| Fail("the run ended".into()))?;
        crate::net::send_frame(&mut ws, &Frame::Ack { seq: d.seq }).await?;
    }
    let _ = ws.close(None).await;
    Ok(())
}

/// The database reading of `--db-stats-cmd`: `key -> (a, b)`.
type Stats = BTreeMap<String, (u64, u64)>;

fn stats_sql(dialect: Dialect) -> &'static str {
    if dialect == Dialect::Postgres {
        "SELECT 'tbl_envelopes', pg_total_relation_size('envelopes'), 0;\n\
         SELECT 'tbl_bodies', pg_total_relation_size('bodies'), 0;\n\
         SELECT 'bodies', count(*), coalesce(sum(length(body)), 0) FROM bodies;\n\
         SELECT 'rows', count(*), coalesce(sum(length(ciphertext)), 0) FROM envelopes;\n"
    } else {
        "SELECT 'tbl_' || m.tbl_name, sum(d.pgsize), sum(d.payload) FROM dbstat d \
         JOIN sqlite_master m ON m.name = d.name WHERE m.tbl_name IN ('envelopes', 'bodies') GROUP BY m.tbl_name;\n\
         SELECT 'bodies', count(*), coalesce(sum(length(body)), 0) FROM bodies;\n\
         SELECT 'rows', count(*), coalesce(sum(length(ciphertext)), 0) FROM envelopes;\n"
    }
}

/// Runs the stats SQL through `cmd` and parses `key|a|b` lines.
async fn read_stats(cmd: &str, dialect: Dialect) -> Result<Stats, Fail> {
    let cmd = cmd.to_owned();
    let sql = stats_sql(dialect);
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("no stdin"))?
            .write_all(sql.as_bytes())?;
        child.wait_with_output()
    })
    .await
    .map_err(|e| Fail(format!("stats command: {e}")))?
    .map_err(|e| Fail(format!("stats command: {e}")))?;
    if !out.status.success() {
        return Err(Fail(format!("stats command failed: {}", out.status)));
    }
    let mut stats = Stats::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split('|').map(str::trim).collect();
        if let [key, a, b] = f[..] {
            let n = |s: &str| s.parse::<u64>().unwrap_or(0);
            stats.insert(key.to_owned(), (n(a), n(b)));
        }
    }
    Ok(stats)
}

pub(crate) async fn run(ctx: &Ctx) -> Result<String, Fail> {
    let cli = &ctx.cli;
    let (accounts, per, rounds) = (cli.fanout_accounts, cli.fanout_devices, cli.fanout_rounds);
    let shared = cli.fanout_layout == Layout::Shared;
    let (body_len, head_len) = (cli.body_bytes, cli.head_bytes);
    let n = accounts * per as usize;
    if !shared && n * (40 + head_len + body_len) > 4 << 20 {
        return Err(Fail(
            "--fanout-layout copies: the frame would pass the relay's default max_frame_bytes (4 MiB)".into(),
        ));
    }

    let t = std::time::Instant::now();
    let seed = cli.seed ^ 0xfa40;
    let groups = tokio::task::spawn_blocking(move || group_identities(accounts, per, seed))
        .await
        .map_err(|e| Fail(format!("key generation: {e}")))?;
    let firsts: Vec<Arc<Identity>> = groups.iter().map(|g| g[0].clone()).collect();
    crate::net::register_all(&ctx.target, &firsts, cli.register_workers).await?;
    let devices: Vec<Arc<Identity>> = groups.into_iter().flatten().collect();
    println!(
        "registered {accounts} accounts of {per} devices in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let sender = ctx.accounts(1).await?;
    let before = match &cli.db_stats_cmd {
        Some(cmd) => Some(read_stats(cmd, cli.db_dialect).await?),
        None => None,
    };

    let sockets = ctx.open_all(&devices, 0xfa41).await?;
    let mut rng = crate::rng(cli.seed, 0xfa42, 0);
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..rounds)
            .map(|_| {
                let mut b = vec![0u8; body_len];
                rng.fill_bytes(&mut b);
                b
            })
            .collect(),
    );
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let (acks_tx, acks_rx) = watch::channel(0u32);
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, ws)| {
            tokio::spawn(receiver(
                ws,
                i,
                rounds,
                head_len,
                bodies.clone(),
                seen_tx.clone(),
                acks_rx.clone(),
            ))
        })
        .collect();
    drop(seen_tx);

    let mut ws = crate::net::connect(&ctx.target, &sender[0]).await?;
    crate::wait_queue_empty(&mut ws).await?;
    let (mut sink, mut stream) = ws.split();
    println!(
        "fanout: {n} mailboxes ({accounts} accounts x {per} devices), layout {:?}, body {body_len} B, head {head_len} B, \
         {rounds} messages; load average {}",
        cli.fanout_layout,
        crate::stats::loadavg()
    );
    let cpu = ctx.cpu_watch();
    let mut after = None;
    let (mut stored_ms, mut first_ms, mut median_ms, mut last_ms) = (vec![], vec![], vec![], vec![]);
    let mut frame_bytes = 0;
    for round in 0..rounds {
        let body = &bodies[round as usize];
        let recipients: Vec<Recipient> = devices
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let mut h = head(i, round, head_len);
                if !shared {
                    h.extend_from_slice(body);
                }
                Recipient {
                    account_id: d.account_id(),
                    device_id: d.device.device_id(),
                    head: h,
                }
            })
            .collect();
        let frame = Frame::Send(Send {
            message_id: u64::from(round) + 1,
            access: vec![],
            body: if shared { body.clone() } else { Vec::new() },
            recipients,
        })
        .encode();
        frame_bytes = frame.len();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t0 = now_ns();
        sink.send(Message::Binary(frame.into()))
            .await
            .map_err(|e| Fail(format!("ws send: {e}")))?;
        let answer = tokio::time::timeout(ROUND_TIMEOUT, next_frame(&mut stream))
            .await
            .map_err(|_| Fail("no SendResult".into()))??;
        let t_stored = now_ns();
        match answer {
            Some(Frame::SendResult(SendResult {
                outcome: SendOutcome::Stored { seqs },
                ..
            })) if seqs.len() == n => {}
            other => {
                return Err(Fail(format!(
                    "message {round}: expected Stored with {n} seqs, got {other:?}"
                )));
            }
        }
        let mut times = Vec::with_capacity(n);
        while times.len() < n {
            let s = tokio::time::timeout(ROUND_TIMEOUT, seen_rx.recv())
                .await
                .map_err(|_| Fail(format!("message {round}: {} of {n} delivered", times.len())))?
                .ok_or_else(|| Fail("a receiver failed".into()))?;
            if s.round != round || !s.ok {
                return Err(Fail(format!("message {round}: a delivery was not head ‖ body")));
            }
            times.push(s.at_ns.saturating_sub(t0));
        }
        times.sort_unstable();
        let ms = |ns: u64| ns as f64 / 1e6;
        stored_ms.push(ms(t_stored - t0));
        first_ms.push(ms(times[0]));
        median_ms.push(ms(percentile(&times, 0.5)));
        last_ms.push(ms(times[n - 1]));
        println!(
            "  message {round}: stored {:.1} ms, first delivery {:.1} ms, median {:.1} ms, last {:.1} ms",
            stored_ms[round as usize], first_ms[round as usize], median_ms[round as usize], last_ms[round as usize]
        );
        if round == 0
            && let Some(cmd) = &cli.db_stats_cmd
        {
            after = Some(read_stats(cmd, cli.db_dialect).await?);
        }
        let _ = acks_tx.send(round + 1);
    }
    let cpu_report = cpu.report();
    for t in tasks {
        t.await.map_err(|e| Fail(format!("receiver task: {e}")))??;
    }
    if let Ok(mut ws) = sink.reunite(stream) {
        let _ = ws.close(None).await;
    }

    let med = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut result = format!(
        "RESULT mode=fanout layout={:?} mailboxes={n} accounts={accounts} devices={per} body_bytes={body_len} \
         head_bytes={head_len} frame_bytes={frame_bytes} messages={rounds} stored_ms={:.1} first_ms={:.1} \
         median_ms={:.1} last_ms={:.1} last_ms_min={:.1} last_ms_max={:.1}",
        cli.fanout_layout,
        med(&stored_ms),
        med(&first_ms),
        med(&median_ms),
        med(&last_ms),
        last_ms.iter().copied().fold(f64::INFINITY, f64::min),
        last_ms.iter().copied().fold(0.0, f64::max),
    );
    if let (Some(b), Some(a)) = (before, after) {
        let get = |s: &Stats, k: &str| s.get(k).copied().unwrap_or((0, 0));
        let delta = |k: &str| get(&a, k).0.saturating_sub(get(&b, k).0);
        let (body_rows, body_bytes) = get(&a, "bodies");
        let (rows, head_bytes) = get(&a, "rows");
        let (env, bod) = (delta("tbl_envelopes"), delta("tbl_bodies"));
        // SQLite only: the payload bytes dbstat counts in those pages (records with their
        // headers, without page overhead and free space).
        let payload = |k: &str| get(&a, k).1.saturating_sub(get(&b, k).1);
        result.push_str(&format!(
            " db={:?} body_rows={body_rows} body_bytes_stored={body_bytes} envelope_rows={rows} \
             head_bytes_stored={head_bytes} envelopes_table_bytes={env} bodies_table_bytes={bod} \
             total_bytes={} per_mailbox_bytes={:.0} envelopes_payload_bytes={} bodies_payload_bytes={}",
            cli.db_dialect,
            env + bod,
            env as f64 / n as f64,
            payload("tbl_envelopes"),
            payload("tbl_bodies"),
        ));
    }
    result.push(' ');
    result.push_str(&cpu_report);
    Ok(result)
}
