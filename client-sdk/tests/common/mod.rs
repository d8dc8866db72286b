//! Shared by the tests that run the `sotto` binary against a `sotto-relay` process.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `sotto-relay` binary next to this test build's `sotto` (in `bin_dir`), built when
/// missing.
pub(crate) fn relay_binary(bin_dir: &Path) -> PathBuf {
    let relay = bin_dir.join("sotto-relay");
    if !relay.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "sotto-relay", "--bin", "sotto-relay"])
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
            .status()
            .unwrap();
        assert!(status.success());
    }
    assert!(relay.exists(), "sotto-relay not at {}", relay.display());
    relay
}

/// A free loopback port (free when this returns; the relay binds it right after).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
