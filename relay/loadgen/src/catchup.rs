//! `--mode catchup`: a sender queues `--queued` envelopes for a device that is offline;
//! then the device connects and drains its mailbox, acking every `--ack-batch` envelopes
//! (default 32, half the relay's deliver window) or after `--ack-delay-ms`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rand_core::RngCore;
use sotto_proto::{Frame, SendOutcome};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use sotto_crypto::AccountId;

use crate::net::{Identity, next_frame, send_frame};
use crate::stats::now_ns;
use crate::throughput::envelope_send;
use crate::{Ctx, Fail};

/// Progress is reported every this many envelopes.
const CHUNK: u64 = 10_000;

pub(crate) async fn run(ctx: &Ctx) -> Result<String, Fail> {
    let cli = &ctx.cli;
    let q = cli.queued;
    let ids = ctx.accounts(2).await?;
    let (from, to) = (&ids[0], &ids[1]);

    let (stored, fill_secs, fill_how) = match &cli.fill_sql_cmd {
        Some(cmd) => (
            q,
            fill_by_sql(cmd, to.account_id(), q, cli.envelope_bytes).await?,
            "sql",
        ),
        None => {
            let (stored, secs) = fill_by_relay(ctx, from, to.account_id()).await?;
            (stored, secs, "relay")
        }
    };
    drain(ctx, to, stored, fill_secs, fill_how).await
}

/// Queues through the relay: pipelined sends, at most `fill_window` unanswered. Returns the
/// count stored and the seconds it took.
async fn fill_by_relay(ctx: &Ctx, from: &Identity, to_id: AccountId) -> Result<(u64, f64), Fail> {
    let cli = &ctx.cli;
    let q = cli.queued;
    let mut ws = crate::net::connect(&ctx.target, from).await?;
    crate::wait_queue_empty(&mut ws).await?;
    let (mut sink, mut stream) = ws.split();
    let window = Arc::new(Semaphore::new(cli.fill_window));
    let mut rng = crate::rng(cli.seed, 0xca7c, 0);
    let mut filler = vec![0u8; cli.envelope_bytes];
    rng.fill_bytes(&mut filler);
    let fill_start = Instant::now();
    let writer_window = window.clone();
    let writer = tokio::spawn(async move {
        for i in 1..=q {
            let permit = writer_window
                .acquire()
                .await
                .map_err(|_| Fail("window closed".into()))?;
            permit.forget();
            send_frame(&mut sink, &envelope_send(to_id, None, i, now_ns(), &filler)).await?;
        }
        Ok::<_, Fail>(sink)
    });
    let mut stored = 0u64;
    let mut rejected: BTreeMap<String, u64> = BTreeMap::new();
    let mut answered = 0u64;
    let mut chunk_at = Instant::now();
    let mut chunk_rates = Vec::new();
    let fill_bound = Duration::from_secs_f64(cli.drain_timeout_secs);
    while answered < q {
        let frame = tokio::time::timeout(fill_bound, next_frame(&mut stream))
            .await
            .map_err(|_| Fail(format!("queueing stalled after {answered} answers")))??;
        match frame {
            Some(Frame::SendResult(r)) => {
                answered += 1;
                window.add_permits(1);
                match r.outcome {
                    SendOutcome::Stored { .. } => stored += 1,
                    SendOutcome::Rejected { code } => *rejected.entry(format!("{code:?}")).or_default() += 1,
                    _ => *rejected.entry("DeviceMismatch".into()).or_default() += 1,
                }
                if answered.is_multiple_of(CHUNK) {
                    let r = CHUNK as f64 / chunk_at.elapsed().as_secs_f64();
                    chunk_rates.push(format!("{r:.0}"));
                    println!("  queued {answered}: {r:.0} envelopes/s in the last {CHUNK}");
                    chunk_at = Instant::now();
                }
            }
            Some(Frame::Error { code }) => return Err(Fail(format!("relay error while queueing: {code:?}"))),
            Some(_) => {}
            None => return Err(Fail(format!("sender socket closed after {answered} answers"))),
        }
    }
    let fill_secs = fill_start.elapsed().as_secs_f64();
    let sink = writer.await.map_err(|e| Fail(format!("writer: {e}")))??;
    if let Ok(mut ws) = sink.reunite(stream) {
        let _ = ws.close(None).await;
    }
    println!(
        "queued {stored} of {q} in {fill_secs:.1} s ({:.0}/s); chunk rates {}",
        stored as f64 / fill_secs,
        chunk_rates.join(" ")
    );
    if !rejected.is_empty() {
        return Err(Fail(format!(
            "sends rejected while queueing: {rejected:?} (raise limits.max_mailbox_depth and \
             limits.rate_per_second/rate_burst in the relay config)"
        )));
    }
    Ok((stored, fill_secs))
}

/// Inserts the backlog with SQL piped to `cmd` (PostgreSQL schema of the relay). Returns
/// the seconds it took.
async fn fill_by_sql(cmd: &str, to: AccountId, q: u64, envelope_bytes: usize) -> Result<f64, Fail> {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut filler = vec![0u8; envelope_bytes];
    crate::rng(0, 0xf111, 0).fill_bytes(&mut filler);
    let account = hex(to.as_bytes());
    let sql = format!(
        "BEGIN;\n\
         INSERT INTO envelopes (account_id, device_id, seq, received_at, expires_at, ciphertext) \
         SELECT '\\x{account}'::bytea, 1, g, {received}, {expires}, \
         overlay('\\x{filler}'::bytea placing int8send(g) from 1 for 8) FROM generate_series(1::bigint, {q}) AS g;\n\
         UPDATE devices SET next_seq = {next}, depth = {q} WHERE account_id = '\\x{account}'::bytea AND device_id = 1;\n\
         COMMIT;\n",
        received = now - now % 60,
        expires = now + 30 * 24 * 3600,
        filler = hex(&filler),
        next = q + 1,
    );
    let cmd = cmd.to_owned();
    let t = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .stdin(std::process::Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("no stdin"))?
            .write_all(sql.as_bytes())?;
        child.wait()
    })
    .await
    .map_err(|e| Fail(format!("fill command: {e}")))?
    .map_err(|e| Fail(format!("fill command: {e}")))?;
    if !status.success() {
        return Err(Fail(format!("fill command failed: {status}")));
    }
    let secs = t.elapsed().as_secs_f64();
    println!("queued {q} envelopes with SQL in {secs:.1} s (not through the relay)");
    Ok(secs)
}

/// The device connects and drains its mailbox.
async fn drain(ctx: &Ctx, to: &Identity, stored: u64, fill_secs: f64, fill_how: &str) -> Result<String, Fail> {
    let cli = &ctx.cli;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Drain.
    println!("draining; load average {}", crate::stats::loadavg());
    let ack_batch = cli.ack_batch.unwrap_or(32);
    let ack_delay = Duration::from_millis(cli.ack_delay_ms);
    let cpu = ctx.cpu_watch();
    let t0 = Instant::now();
    let mut ws = crate::net::connect(&ctx.target, to).await?;
    let auth_ms = t0.elapsed().as_secs_f64() * 1e3;
    let bound = t0 + Duration::from_secs_f64(cli.drain_timeout_secs);
    let (mut got, mut last_seq, mut acks) = (0u64, 0u64, 0u64);
    let mut first_ms = None;
    let mut queue_empty = false;
    let mut pending: Option<u64> = None;
    let mut unacked = 0u32;
    let mut deadline = Instant::now();
    let mut last_at = t0;
    let mut chunk_at = t0;
    let mut drain_chunks = Vec::new();
    while !(queue_empty && got >= stored) {
        let flush = tokio::select! {
            biased;
            _ = tokio::time::sleep_until(bound) => {
                return Err(Fail(format!("drain not done within --drain-timeout-secs: {got} of {stored}")));
            }
            _ = tokio::time::sleep_until(deadline), if pending.is_some() => true,
            f = next_frame(&mut ws) => match f? {
                Some(Frame::Deliver(d)) => {
                    if d.seq <= last_seq {
                        return Err(Fail(format!("seq went from {last_seq} to {}", d.seq)));
                    }
                    last_seq = d.seq;
                    got += 1;
                    last_at = Instant::now();
                    first_ms.get_or_insert_with(|| t0.elapsed().as_secs_f64() * 1e3);
                    if pending.is_none() {
                        deadline = Instant::now() + ack_delay;
                    }
                    pending = Some(d.seq);
                    unacked += 1;
                    if got.is_multiple_of(CHUNK) {
                        let r = CHUNK as f64 / chunk_at.elapsed().as_secs_f64();
                        drain_chunks.push(format!("{r:.0}"));
                        println!("  drained {got}: {r:.0} envelopes/s in the last {CHUNK}");
                        chunk_at = Instant::now();
                    }
                    unacked >= ack_batch
                }
                Some(Frame::QueueEmpty) => {
                    queue_empty = true;
                    false
                }
                Some(Frame::Error { code }) => return Err(Fail(format!("relay error while draining: {code:?}"))),
                Some(_) => false,
                None => return Err(Fail(format!("socket closed after {got} deliveries"))),
            }
        };
        if flush && let Some(seq) = pending.take() {
            unacked = 0;
            acks += 1;
            send_frame(&mut ws, &Frame::Ack { seq }).await?;
        }
    }
    if let Some(seq) = pending.take() {
        acks += 1;
        send_frame(&mut ws, &Frame::Ack { seq }).await?;
    }
    let total = last_at.duration_since(t0).as_secs_f64();
    let rate = got as f64 / total;
    let cpu_report = cpu.report();
    let _ = ws.close(None).await;
    let first_ms = first_ms.unwrap_or(0.0);
    println!(
        "drained {got} envelopes in {total:.2} s: {rate:.0} envelopes/s (auth {auth_ms:.1} ms, first envelope \
         at {first_ms:.1} ms, {acks} acks); chunk rates {}; {cpu_report}",
        drain_chunks.join(" ")
    );
    Ok(format!(
        "RESULT mode=catchup queued={stored} envelope_bytes={} fill={fill_how} fill_s={fill_secs:.1} fill_per_s={:.0} \
         drained={got} drain_s={total:.2} drain_per_s={rate:.0} first_ms={first_ms:.1} ack_batch={ack_batch} \
         acks={acks} {cpu_report}",
        cli.envelope_bytes,
        stored as f64 / fill_secs
    ))
}
