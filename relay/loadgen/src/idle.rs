//! `--mode idle`: N idle authenticated connections; the relay's RSS per connection, next to the
//! anchor measured in the same run: as many raw TCP connections, each in a task of its own.

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
    // The anchor, in the same run: the same number of raw TCP connections, each held by a
    // task that waits for it to become readable and holds no buffer.
    let anchor = match raw_tcp_anchor(open, Duration::from_secs_f64(ctx.cli.settle_secs)).await {
        Ok(kib) => {
            println!("anchor: a raw TCP connection in a task of its own: {kib:.2} KiB per connection");
            format!("{kib:.2}")
        }
        Err(e) => {
            println!("anchor: failed: {e}");
            "failed".to_owned()
        }
    };
    Ok(format!(
        "RESULT mode=idle connections={open} still_open={still_open} rss_before_kib={before} \
         rss_after_kib={after} kib_per_conn={per:.2} loadgen_kib_per_conn={me_per:.2} \
         anchor_raw_tcp_kib_per_conn={anchor}"
    ))
}

/// The first argument that runs this binary as the anchor's server instead.
pub(crate) const ANCHOR_SERVER: &str = "anchor-tcp-server";

/// Runs `sotto-loadgen anchor-tcp-server` as a child process, opens `n` TCP connections to
/// it and returns its RSS growth per connection, in KiB.
async fn raw_tcp_anchor(n: usize, settle: Duration) -> Result<f64, Fail> {
    use std::io::BufRead;
    let exe = std::env::current_exe().map_err(|e| Fail(format!("current_exe: {e}")))?;
    let mut child = std::process::Command::new(exe)
        .arg(ANCHOR_SERVER)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Fail(format!("cannot start the anchor server: {e}")))?;
    let result = async {
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Fail("the anchor server has no stdout".into()))?;
        // One short line, written at once by a process just started.
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| Fail(format!("anchor server: {e}")))?;
        let addr: std::net::SocketAddr = line
            .trim()
            .parse()
            .map_err(|_| Fail(format!("anchor server printed {line:?}, not an address")))?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pid = child.id();
        let before = rss_kib(pid).ok_or_else(|| Fail(format!("cannot read /proc/{pid}/status")))?;
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            let c = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| Fail(format!("anchor connect: {e}")))?;
            conns.push(c);
        }
        tokio::time::sleep(settle).await;
        let after = rss_kib(pid).ok_or_else(|| Fail(format!("cannot read /proc/{pid}/status")))?;
        drop(conns);
        Ok(after.saturating_sub(before) as f64 / n.max(1) as f64)
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// The anchor's server: accepts on 127.0.0.1, prints its address, and holds each
/// connection in a task of its own that waits until it is readable, reads into a buffer
/// that lives only for that read, and ends at end of stream.
pub(crate) fn anchor_server() -> std::process::ExitCode {
    use std::io::Write;
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread().enable_all().build() else {
        return std::process::ExitCode::FAILURE;
    };
    let served: std::io::Result<()> = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let mut out = std::io::stdout();
        writeln!(out, "{}", listener.local_addr()?)?;
        out.flush()?;
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(async move {
                loop {
                    if stream.readable().await.is_err() {
                        return;
                    }
                    let mut buf = [0u8; 64];
                    match stream.try_read(&mut buf) {
                        Ok(0) => return,
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return,
                    }
                }
            });
        }
    });
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sotto-loadgen {ANCHOR_SERVER}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
