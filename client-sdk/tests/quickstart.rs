//! Runs the README's quickstart block as written, with two changes: the port is a free
//! one instead of 8080, and the binaries are this test build's (`sotto` from this package,
//! `sotto-relay` built next to it when missing). Two CLI profiles and a relay process.
#![cfg(feature = "native")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{free_port, relay_binary};

fn quickstart_block() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let start = readme.find("<!-- quickstart:begin -->").expect("quickstart markers");
    let end = readme.find("<!-- quickstart:end -->").unwrap();
    let block = &readme[start..end];
    let body_start = block.find("```sh\n").unwrap() + 6;
    let body_end = block.rfind("```").unwrap();
    block[body_start..body_end].to_owned()
}

#[test]
fn the_readme_quickstart_works_as_written() {
    let sotto = PathBuf::from(env!("CARGO_BIN_EXE_sotto"));
    let bin_dir = sotto.parent().unwrap().to_owned();
    relay_binary(&bin_dir);
    let port = free_port();
    let script: String = quickstart_block()
        .lines()
        .filter(|l| !l.starts_with("cargo build"))
        .map(|l| l.replace("$PWD/target/release", &bin_dir.display().to_string()))
        .map(|l| l.replace("8080", &port.to_string()))
        .collect::<Vec<_>>()
        .join("\n");
    // When a step fails, the background relay must not outlive the script: it holds the
    // output pipes open, and the test would wait for them forever instead of failing.
    let script = format!("trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{script}");
    let work = std::env::temp_dir().join(format!("sotto-quickstart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(&work)
        .env_remove("SOTTO_PROFILE")
        .env_remove("SOTTO_RELAY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&work);
    assert!(
        out.status.success(),
        "quickstart failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("sent"), "{stdout}");
    assert!(stdout.contains(": Hello Bob, this is Alice"), "{stdout}");
}
