//! `--mode throughput`: K sender → receiver pairs at a total target rate, open loop.
//!
//! Each sender sends at `rate / pairs` per second: a random first offset within one
//! period, then intervals drawn uniformly from [0.5, 1.5) periods, so no two senders tick
//! together. Sends are scheduled by the clock, not by answers (open loop). An envelope
//! starts with its message id (the send time, ns on the process clock) and its scheduled
//! time; the rest is random. Receivers ack (`--ack-batch`, default every envelope).
//! A delivery is durable when the relay answered its send `Stored`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use rand_core::RngCore;
use sotto_crypto::{AccountId, DeviceId};
use sotto_proto::{Access, AccessKey, ErrorCode, Frame, Recipient, Send, SendOutcome};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::net::{Ws, next_frame, send_frame};
use crate::stats::{latency_summary, now_ns, ns_at, unit};
use crate::{Ctx, Fail};

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    stored: AtomicU64,
    results: AtomicU64,
    delivered: AtomicU64,
    /// With `--report-secs`: latencies (ns) of the deliveries since the last report.
    window: Option<std::sync::Mutex<Vec<u64>>>,
}

#[derive(Default)]
struct SenderOut {
    sent: u64,
    /// With `--backoff`: scheduled sends skipped during a pause.
    deferred: u64,
    stored_ids: Vec<u64>,
    /// Send → SendResult, ns.
    store_latency: Vec<u64>,
    /// Actual send time minus scheduled time, ns.
    lag: Vec<u64>,
    rejected: BTreeMap<String, u64>,
}

#[derive(Default)]
struct ReceiverOut {
    /// (message id, receive time ns).
    deliveries: Vec<(u64, u64)>,
    acks: u64,
}

/// Builds a send of one envelope for `to`.
pub(crate) fn envelope_send(to: AccountId, key: Option<&[u8; 32]>, id: u64, scheduled: u64, filler: &[u8]) -> Frame {
    let mut envelope = filler.to_vec();
    envelope[..8].copy_from_slice(&id.to_be_bytes());
    envelope[8..16].copy_from_slice(&scheduled.to_be_bytes());
    Frame::Send(Send {
        message_id: id,
        access: key
            .map(|k| Access {
                account_id: to,
                key: AccessKey(*k),
            })
            .into_iter()
            .collect(),
        // One device: the whole envelope is its head, nothing is shared.
        body: Vec::new(),
        recipients: vec![Recipient {
            account_id: to,
            device_id: DeviceId(1),
            head: envelope,
        }],
    })
}

/// The message id of an envelope made by [`envelope_send`].
pub(crate) fn envelope_id(envelope: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(envelope.get(..8)?.try_into().ok()?))
}

struct Plan {
    backoff: bool,
    backoff_ms: u64,
    to: AccountId,
    key: Option<[u8; 32]>,
    start: Instant,
    end: Instant,
    period: Duration,
    filler: Vec<u8>,
}

async fn sender(
    ws: Ws,
    plan: Plan,
    mut rng: rand_chacha::ChaCha20Rng,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> SenderOut {
    let (mut sink, mut stream) = ws.split();
    let (final_tx, mut final_rx) = watch::channel(u64::MAX);
    let reader_counters = counters.clone();
    // A refusal for the whole relay (BUSY, RATE_LIMITED) holds the connection's later
    // sends until a Resume, as a client sends it once it read the refusal. The load
    // stays open loop: the next send follows its schedule, after the Resume.
    let resume = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader_resume = resume.clone();
    // With --backoff: (no send before this, pauses in a row).
    let pause = Arc::new(std::sync::Mutex::new((None::<Instant>, 0u32)));
    let reader_pause = pause.clone();
    let mut pause_rng = crate::rng(rng.next_u64(), 0xbac0, 0);
    let first_pause = plan.backoff_ms.max(1);
    let reader = tokio::spawn(async move {
        let mut out = SenderOut::default();
        let mut results = 0u64;
        loop {
            if results >= *final_rx.borrow() {
                break;
            }
            let frame = tokio::select! {
                biased;
                _ = stop.changed() => break,
                f = next_frame(&mut stream) => f,
                c = final_rx.changed() => {
                    if c.is_err() {
                        break;
                    }
                    continue;
                }
            };
            let Ok(Some(frame)) = frame else { break };
            let now = now_ns();
            match frame {
                Frame::SendResult(r) => {
                    results += 1;
                    reader_counters.results.fetch_add(1, Ordering::Relaxed);
                    match r.outcome {
                        SendOutcome::Stored { .. } => {
                            reader_pause.lock().unwrap_or_else(|p| p.into_inner()).1 = 0;
                            reader_counters.stored.fetch_add(1, Ordering::Relaxed);
                            out.stored_ids.push(r.message_id);
                            out.store_latency.push(now.saturating_sub(r.message_id));
                        }
                        SendOutcome::Rejected { code } => {
                            if matches!(code, ErrorCode::BUSY | ErrorCode::RATE_LIMITED) {
                                reader_resume.store(true, Ordering::Relaxed);
                                let mut p = reader_pause.lock().unwrap_or_else(|p| p.into_inner());
                                let now = Instant::now();
                                if p.0.is_none_or(|t| t <= now) {
                                    let base = first_pause.saturating_mul(1 << p.1.min(8)).min(30_000);
                                    let jitter = pause_rng.next_u64();
                                    let ms = base + jitter % (base / 2 + 1);
                                    p.0 = Some(now + Duration::from_millis(ms));
                                    p.1 = p.1.saturating_add(1);
                                }
                            }
                            *out.rejected.entry(format!("{code:?}")).or_default() += 1;
                        }
                        _ => *out.rejected.entry("DeviceMismatch".into()).or_default() += 1,
                    }
                }
                Frame::Error { code } => *out.rejected.entry(format!("Error {code:?}")).or_default() += 1,
                _ => {}
            }
        }
        (out, stream)
    });

    let mut lag = Vec::new();
    let mut sent = 0u64;
    let mut deferred = 0u64;
    let mut last_id = 0u64;
    let mut next = plan.start + plan.period.mul_f64(unit(&mut rng));
    while next < plan.end {
        tokio::time::sleep_until(next).await;
        let scheduled = ns_at(next.into_std());
        if plan.backoff
            && pause
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .0
                .is_some_and(|t| t > Instant::now())
        {
            deferred += 1;
            next += plan.period.mul_f64(0.5 + unit(&mut rng));
            continue;
        }
        let id = now_ns().max(last_id + 1);
        last_id = id;
        lag.push(id.saturating_sub(scheduled));
        if resume.swap(false, Ordering::Relaxed) && send_frame(&mut sink, &Frame::Resume).await.is_err() {
            break;
        }
        if send_frame(
            &mut sink,
            &envelope_send(plan.to, plan.key.as_ref(), id, scheduled, &plan.filler),
        )
        .await
        .is_err()
        {
            break;
        }
        sent += 1;
        counters.sent.fetch_add(1, Ordering::Relaxed);
        next += plan.period.mul_f64(0.5 + unit(&mut rng));
    }
    let _ = final_tx.send(sent);
    // The reader ends when every send is answered or at the global stop.
    let mut out = match reader.await {
        Ok((out, stream)) => {
            if let Ok(ws) = sink.reunite(stream) {
                drop(ws);
            }
            out
        }
        Err(_) => SenderOut::default(),
    };
    out.sent = sent;
    out.deferred = deferred;
    out.lag = lag;
    out
}

async fn receiver(
    mut ws: Ws,
    ack_batch: u32,
    ack_delay: Duration,
    mut stop: watch::Receiver<bool>,
    counters: Arc<Counters>,
) -> ReceiverOut {
    let mut out = ReceiverOut::default();
    let mut pending: Option<u64> = None;
    let mut unacked = 0u32;
    let mut deadline = Instant::now();
    loop {
        let flush = tokio::select! {
            biased;
            _ = stop.changed() => break,
            _ = tokio::time::sleep_until(deadline), if pending.is_some() => true,
            f = next_frame(&mut ws) => {
                let Ok(Some(frame)) = f else { break };
                let now = now_ns();
                if let Frame::Deliver(d) = frame {
                    if let Some(id) = envelope_id(&d.envelope) {
                        out.deliveries.push((id, now));
                        if let Some(w) = &counters.window {
                            w.lock().unwrap_or_else(|p| p.into_inner()).push(now.saturating_sub(id));
                        }
                    }
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    if pending.is_none() {
                        deadline = Instant::now() + ack_delay;
                    }
                    pending = Some(d.seq);
                    unacked += 1;
                }
                unacked >= ack_batch
            }
        };
        if flush && let Some(seq) = pending.take() {
            unacked = 0;
            out.acks += 1;
            if send_frame(&mut ws, &Frame::Ack { seq }).await.is_err() {
                break;
            }
        }
    }
    if let Some(seq) = pending {
        let _ = send_frame(&mut ws, &Frame::Ack { seq }).await;
    }
    out
}

/// Prints one `SOAK` line per interval until `end`: seconds since the start, envelopes
/// sent, stored and delivered in the interval, the interval's delivery latency p50 and p99
/// (ms), the relay's RSS (KiB) and open files, and from its metrics the writer's queue,
/// the envelopes waiting in mailboxes and the open connections.
async fn soak_reports(ctx: &Ctx, counters: &Counters, every: Duration, start_ns: u64, end: Instant) {
    println!(
        "SOAK t_s,sent,stored,delivered,p50_ms,p99_ms,rss_kib,open_files,write_queue,mailbox_envelopes,connections"
    );
    let (mut sent0, mut stored0, mut delivered0) = (0, 0, 0);
    let mut next = Instant::now() + every;
    while next <= end {
        tokio::time::sleep_until(next).await;
        next += every;
        let mut window = counters
            .window
            .as_ref()
            .map(|w| std::mem::take(&mut *w.lock().unwrap_or_else(|p| p.into_inner())))
            .unwrap_or_default();
        let (p50, p99, _, _) = latency_summary(&mut window);
        let (sent, stored, delivered) = (
            counters.sent.load(Ordering::Relaxed),
            counters.stored.load(Ordering::Relaxed),
            counters.delivered.load(Ordering::Relaxed),
        );
        let pid = ctx.relay_pid();
        let rss = pid.and_then(crate::stats::rss_kib).unwrap_or(0);
        let files = pid
            .and_then(|p| std::fs::read_dir(format!("/proc/{p}/fd")).ok())
            .map_or(0, |d| d.count());
        let text = match ctx.cli.metrics_addr {
            Some(a) => crate::net::metrics_text(a).await.unwrap_or_default(),
            None => String::new(),
        };
        let metric = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(-1.0)
        };
        println!(
            "SOAK {:.0},{},{},{},{p50:.2},{p99:.2},{rss},{files},{:.0},{:.0},{:.0}",
            (now_ns() - start_ns) as f64 / 1e9,
            sent - sent0,
            stored - stored0,
            delivered - delivered0,
            metric("sotto_relay_write_queue_length"),
            metric("sotto_relay_mailbox_envelopes"),
            metric("sotto_relay_connections_open"),
        );
        (sent0, stored0, delivered0) = (sent, stored, delivered);
    }
}

pub(crate) async fn run(ctx: &Ctx) -> Result<String, Fail> {
    let cli = &ctx.cli;
    let k = cli.pairs;
    let ids = ctx.accounts(2 * k).await?;
    let (senders, receivers): (Vec<_>, Vec<_>) = ids.iter().cloned().enumerate().partition(|(i, _)| i % 2 == 0);
    let senders: Vec<_> = senders.into_iter().map(|(_, id)| id).collect();
    let receivers: Vec<_> = receivers.into_iter().map(|(_, id)| id).collect();
    // With --access-keys, each receiver's key (from the seeded generator).
    let keys: Vec<Option<[u8; 32]>> = receivers
        .iter()
        .enumerate()
        .map(|(i, _)| {
            cli.access_keys.then(|| {
                let mut k = [0u8; 32];
                crate::rng(cli.seed, 0xacce, i as u64).fill_bytes(&mut k);
                k
            })
        })
        .collect();
    if cli.access_keys {
        let t = std::time::Instant::now();
        let pairs: Vec<_> = receivers.iter().cloned().zip(keys.iter().flatten().copied()).collect();
        crate::net::set_access_all(&ctx.target, &pairs, cli.register_workers).await?;
        println!(
            "set {} access verifiers in {:.1} s",
            pairs.len(),
            t.elapsed().as_secs_f64()
        );
    }
    let rx_sockets = ctx.open_all(&receivers, 0x2ec0).await?;
    let tx_sockets = ctx.open_all(&senders, 0x5e4d).await?;

    let counters = Arc::new(Counters {
        window: cli.report_secs.map(|_| std::sync::Mutex::new(Vec::new())),
        ..Counters::default()
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let ack_batch = cli.ack_batch.unwrap_or(1);
    let ack_delay = Duration::from_millis(cli.ack_delay_ms);
    let rx_tasks: Vec<_> = rx_sockets
        .into_iter()
        .map(|ws| tokio::spawn(receiver(ws, ack_batch, ack_delay, stop_rx.clone(), counters.clone())))
        .collect();

    let duration = Duration::from_secs_f64(cli.duration);
    let grace = Duration::from_secs_f64(cli.grace_secs);
    let period = Duration::from_secs_f64(k as f64 / cli.rate);
    let start = Instant::now() + Duration::from_secs(1);
    let end = start + duration;
    println!(
        "throughput: {k} pairs, {:.0} envelopes/s in total ({:.2}/s per sender), {} B, {:.0} s, ack every {ack_batch}; load average {}",
        cli.rate,
        cli.rate / k as f64,
        cli.envelope_bytes,
        cli.duration,
        crate::stats::loadavg()
    );
    let tx_tasks: Vec<_> = tx_sockets
        .into_iter()
        .zip(&receivers)
        .enumerate()
        .map(|(i, (ws, to))| {
            let mut rng = crate::rng(cli.seed, 0x7e57, i as u64);
            let mut filler = vec![0u8; cli.envelope_bytes];
            rng.fill_bytes(&mut filler);
            let plan = Plan {
                backoff: cli.backoff,
                backoff_ms: cli.backoff_ms,
                to: to.account_id(),
                key: keys[i],
                start,
                end,
                period,
                filler,
            };
            tokio::spawn(sender(ws, plan, rng, counters.clone(), stop_rx.clone()))
        })
        .collect();

    tokio::time::sleep_until(start).await;
    let start_ns = now_ns();
    let cpu = ctx.cpu_watch();
    if let Some(every) = cli.report_secs {
        soak_reports(ctx, &counters, Duration::from_secs_f64(every), start_ns, end).await;
    }
    // Progress once per second, bounded by the send window.
    let mut last = 0;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1).min(end.saturating_duration_since(Instant::now()))).await;
        let d = counters.delivered.load(Ordering::Relaxed);
        println!(
            "  t={:>4.1}s sent={} stored={} delivered={} (+{}/s)",
            (now_ns() - start_ns) as f64 / 1e9,
            counters.sent.load(Ordering::Relaxed),
            counters.stored.load(Ordering::Relaxed),
            d,
            d - last
        );
        last = d;
    }
    let cpu_report = cpu.report();
    // Stragglers: wait until every send is answered and everything stored is delivered,
    // at most `grace`; then stop every task, which returns what it has.
    let drain_until = Instant::now() + grace;
    while (counters.results.load(Ordering::Relaxed) < counters.sent.load(Ordering::Relaxed)
        || counters.delivered.load(Ordering::Relaxed) < counters.stored.load(Ordering::Relaxed))
        && Instant::now() < drain_until
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    let mut outs = Vec::with_capacity(k);
    for t in tx_tasks {
        outs.push(t.await.map_err(|e| Fail(format!("sender task: {e}")))?);
    }
    let mut ins = Vec::with_capacity(k);
    for t in rx_tasks {
        ins.push(t.await.map_err(|e| Fail(format!("receiver task: {e}")))?);
    }

    // Durable deliveries: delivered and answered Stored.
    let mut latencies = Vec::new();
    let mut durable = 0u64;
    let mut in_window = 0u64;
    let mut last_delivery = start_ns;
    let end_ns = start_ns + u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    let (mut sent, mut stored, mut acks, mut deferred) = (0u64, 0u64, 0u64, 0u64);
    let mut rejected: BTreeMap<String, u64> = BTreeMap::new();
    let mut store_latency = Vec::new();
    let mut lag = Vec::new();
    for (o, i) in outs.iter_mut().zip(&ins) {
        sent += o.sent;
        deferred += o.deferred;
        stored += o.stored_ids.len() as u64;
        acks += i.acks;
        for (code, n) in &o.rejected {
            *rejected.entry(code.clone()).or_default() += n;
        }
        let ok: HashSet<u64> = o.stored_ids.iter().copied().collect();
        for &(id, at) in &i.deliveries {
            if ok.contains(&id) {
                durable += 1;
                latencies.push(at.saturating_sub(id));
                last_delivery = last_delivery.max(at);
                if at <= end_ns {
                    in_window += 1;
                }
            }
        }
        store_latency.append(&mut o.store_latency);
        lag.append(&mut o.lag);
    }
    let span = (last_delivery.saturating_sub(start_ns) as f64 / 1e9).max(cli.duration);
    let rate = durable as f64 / span;
    let (p50, p99, p999, max) = latency_summary(&mut latencies);
    let (s50, s99, s999, _) = latency_summary(&mut store_latency);
    let (_, lag99, _, lag_max) = latency_summary(&mut lag);
    let rejected_n: u64 = rejected.values().sum();
    let rejected = if rejected.is_empty() {
        "none".to_owned()
    } else {
        rejected
            .iter()
            .map(|(c, n)| format!("{c}:{n}"))
            .collect::<Vec<_>>()
            .join(",")
            .replace(' ', "_")
    };
    let unanswered = sent.saturating_sub(stored + rejected_n);
    let window_rate = in_window as f64 / cli.duration;
    println!(
        "sent {sent}, stored {stored}, durable deliveries {durable} ({in_window} within the send window), \
         {} stored but not delivered and {unanswered} sends unanswered within the {:.0} s grace period; \
         rejected: {rejected}; deferred by back-off: {deferred}",
        stored.saturating_sub(durable),
        cli.grace_secs
    );
    println!("durable deliveries/s: {rate:.0} over {span:.1} s ({window_rate:.0}/s within the send window)");
    println!("end-to-end latency ms: p50 {p50:.2}  p99 {p99:.2}  p99.9 {p999:.2}  max {max:.2}");
    println!("send → Stored latency ms: p50 {s50:.2}  p99 {s99:.2}  p99.9 {s999:.2}");
    println!("sender lag behind schedule ms: p99 {lag99:.2}  max {lag_max:.2}; acks sent {acks}; {cpu_report}");
    Ok(format!(
        "RESULT mode=throughput pairs={k} target_rate={:.0} envelope_bytes={} duration_s={:.0} sent={sent} \
         stored={stored} unanswered={unanswered} durable={durable} durable_per_s={rate:.0} \
         window_per_s={window_rate:.0} p50_ms={p50:.2} p99_ms={p99:.2} \
         p999_ms={p999:.2} max_ms={max:.2} store_p50_ms={s50:.2} store_p99_ms={s99:.2} \
         sender_lag_p99_ms={lag99:.2} ack_batch={ack_batch} acks={acks} rejected={rejected} deferred={deferred} \
         {cpu_report}",
        cli.rate, cli.envelope_bytes, cli.duration
    ))
}
