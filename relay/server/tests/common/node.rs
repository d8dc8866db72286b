//! `sotto-relay` processes for tests that kill them: started from the built binary with a
//! clean environment, on a port of the test's own.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Mutex;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::relay::{Endpoint, FAILSAFE};

/// A config file's `[limits]` under which no send is refused for its rate or a full
/// mailbox: for tests about crashes and nodes, not limits.
pub const UNLIMITED: &str = "\
[limits]
max_mailbox_depth = 1000000
rate_per_second = 1000000
rate_burst = 1000000
rate_bytes_per_second = 1000000000
rate_bytes_burst = 1000000000
addr_rate_per_second = 1000000
addr_rate_burst = 1000000
addr_rate_bytes_per_second = 1000000000
addr_rate_bytes_burst = 1000000000
";

/// A `sotto-relay` process, started on `addr` and ready once it logged that it listens.
pub struct Node {
    pub child: Child,
    pub endpoint: Endpoint,
}

impl Node {
    /// Starts the relay with `config`, on the database `url`, serving `public_url`.
    pub async fn start(config: &std::path::Path, url: &str, addr: SocketAddr, public_url: &str) -> Node {
        // Nothing of the caller's environment (a SOTTO_LOG_LEVEL, say) reaches it.
        let mut child = Command::new(env!("CARGO_BIN_EXE_sotto-relay"))
            .env_clear()
            .arg("--config")
            .arg(config)
            .args(["--log-level", "info"])
            .env("SOTTO_LISTEN", addr.to_string())
            .env("SOTTO_DATABASE_URL", url)
            .env("SOTTO_PUBLIC_URL", public_url)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("sotto-relay starts");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let ready = async {
            while let Some(line) = lines.next_line().await.expect("relay output") {
                if line.contains("relay listening") {
                    return true;
                }
            }
            false
        };
        let ready = tokio::time::timeout(FAILSAFE, ready)
            .await
            .expect("the relay starts in time");
        assert!(ready, "the relay exited before it listened");
        // Keep reading, so a full pipe never blocks the relay's logging.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Node {
            child,
            endpoint: Endpoint { addr },
        }
    }

    /// SIGKILL, then waits for the process to be gone.
    pub async fn kill(mut self) {
        kill(&mut self.child).await;
    }
}

/// SIGKILL, then waits for the process to be gone.
pub async fn kill(child: &mut Child) {
    child.start_kill().expect("SIGKILL");
    let status = tokio::time::timeout(FAILSAFE, child.wait())
        .await
        .expect("the process dies")
        .expect("its status");
    assert!(!status.success(), "{status}");
}

/// A port of our own, let go for a server that binds it again after every kill. It is
/// taken below Linux's ephemeral range (32768 and up by default), so that no outgoing
/// connection of another test is given it while the server is down, and never twice in
/// one test binary.
pub fn free_port() -> SocketAddr {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    let offset = std::process::id() % 12_000;
    let port = (0..12_000u32)
        .map(|i| u16::try_from(20_000 + (offset + i) % 12_000).expect("a port"))
        .find(|p| !given.contains(p) && std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], *p))).is_ok())
        .expect("a free port below the ephemeral range");
    given.insert(port);
    SocketAddr::from(([127, 0, 0, 1], port))
}
