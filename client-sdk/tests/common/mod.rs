//! Shared by the tests that run the `sotto` binary against a `sotto-relay` process.

#![allow(dead_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// How long one `sotto` run may take.
pub(crate) const RUN_DEADLINE: Duration = Duration::from_secs(120);
/// How many times `sotto receive` runs before a message counts as lost.
pub(crate) const RECEIVE_ATTEMPTS: usize = 10;

/// The `sotto` binary: `$SOTTO_TEST_CLI` when set (a copy taken right after the build, when
/// other builds share the target directory), else the one Cargo built for this test.
pub(crate) fn sotto_binary() -> PathBuf {
    std::env::var_os("SOTTO_TEST_CLI").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sotto")), PathBuf::from)
}

/// The relay process, stopped when dropped.
pub(crate) struct Relay {
    child: Child,
    pub(crate) url: String,
    pub(crate) log: PathBuf,
}

impl Relay {
    pub(crate) fn start(bin: &Path, dir: &Path) -> Self {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let log = dir.join("relay.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--public-url",
                &url,
                "--data-dir",
            ])
            .arg(dir.join("relay"))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Self { child, url, log }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `sotto` for profiles under one `SOTTO_HOME`.
pub(crate) struct Sotto {
    pub(crate) bin: PathBuf,
    pub(crate) home: PathBuf,
    pub(crate) relay_log: PathBuf,
}

pub(crate) struct Run {
    pub(crate) ok: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Sotto {
    /// Runs `sotto --profile <profile> <args>` with `stdin` as its input (then closed) and
    /// `env` added, killing it after [`RUN_DEADLINE`].
    pub(crate) fn run_with(&self, profile: &str, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Run {
        let mut child = Command::new(&self.bin)
            .arg("--profile")
            .arg(profile)
            .args(args)
            .env("SOTTO_HOME", &self.home)
            .env_remove("SOTTO_PROFILE")
            .env_remove("SOTTO_RELAY")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).unwrap();
        drop(input);
        let until = Instant::now() + RUN_DEADLINE;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > until {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs and asserts success; returns stdout.
    pub(crate) fn ok(&self, profile: &str, args: &[&str]) -> String {
        let r = self.run_with(profile, args, "", &[]);
        assert!(
            r.ok,
            "sotto --profile {profile} {args:?} failed\nstdout:\n{}\nstderr:\n{}\nrelay log:\n{}",
            r.stdout,
            r.stderr,
            std::fs::read_to_string(&self.relay_log).unwrap_or_default()
        );
        r.stdout
    }

    /// Runs and asserts failure; returns stderr.
    pub(crate) fn fails(&self, profile: &str, args: &[&str]) -> String {
        let r = self.run_with(profile, args, "", &[]);
        assert!(!r.ok, "sotto --profile {profile} {args:?} succeeded:\n{}", r.stdout);
        assert!(r.stderr.starts_with("sotto: "), "{}", r.stderr);
        r.stderr
    }

    /// Runs `receive` until its output (all runs together) contains `needle`.
    pub(crate) fn receive_until(&self, profile: &str, needle: &str) -> String {
        let mut got = String::new();
        for _ in 0..RECEIVE_ATTEMPTS {
            got += &self.ok(profile, &["receive"]);
            if got.contains(needle) {
                return got;
            }
        }
        panic!("{profile} never received {needle:?}; `sotto receive` printed:\n{got}");
    }
}
