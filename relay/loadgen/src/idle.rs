//! `--mode idle`: N idle authenticated connections; the relay's RSS per connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;

use crate::stats::{rss_kib, status_kib};
use crate::{Ctx, Fail};

pub(crate) async fn run(ctx: &Ctx) -> Result<String, Fail> {
    let pid = ctx.relay_pid().ok_or_else(|| Fail("--relay-pid is required".into()))?;
    let n = ctx.cli.connections;
    let ids = ctx.accounts(n).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid).ok_or_else(|| Fail(format!("cannot read /proc/{pid}/status")))?;
    let me_before = rss_kib(std::process::id()).unwrap_or(0);
    println!("relay VmRSS before: {before} KiB");

    let sockets = ctx.open_all(&ids, 0x1d1e).await?;
    let open = sockets.len();
    // Idle clients keep reading so the relay's pings are answered, as a real client does.
    let (stop_tx, stop_rx) = watch::channel(false);
    let closed = Arc::new(AtomicU64::new(0));
    let mut holders = Vec::with_capacity(open);
    for mut ws in sockets {
        let mut stop = stop_rx.clone();
        let closed = closed.clone();
        holders.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    m = ws.next() => match m {
                        None | Some(Err(_)) => {
                            closed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Some(Ok(_)) => {}
                    },
                }
            }
            drop(ws);
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(ctx.cli.settle_secs)).await;
    let after = rss_kib(pid).ok_or_else(|| Fail(format!("cannot read /proc/{pid}/status")))?;
    let anon = status_kib(pid, "RssAnon").unwrap_or(0);
    let me_after = rss_kib(std::process::id()).unwrap_or(0);
    let still_open = open as u64 - closed.load(Ordering::Relaxed);
    println!("relay VmRSS after: {after} KiB (RssAnon {anon} KiB); {still_open} connections still open");
    let per = after.saturating_sub(before) as f64 / open as f64;
    let me_per = me_after.saturating_sub(me_before) as f64 / open as f64;
    println!("relay RSS per idle connection: {per:.2} KiB (loadgen: {me_per:.2} KiB per connection)");
    let _ = stop_tx.send(true);
    for h in holders {
        let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
    }
    Ok(format!(
        "RESULT mode=idle connections={open} still_open={still_open} rss_before_kib={before} \
         rss_after_kib={after} kib_per_conn={per:.2} loadgen_kib_per_conn={me_per:.2}"
    ))
}
