//! `sotto-relay admin`, run as operators run it (the binary, beside a running relay):
//! `check-config` loads what the relay would and says what is wrong; `stats` and
//! `mailbox` count what the database holds; `purge-device` deletes a device's waiting
//! envelopes and push registration only with `--yes`, and the mailbox numbers on.
//! Runs on SQLite and on PostgreSQL.

mod common;

use std::path::PathBuf;

use common::relay::*;
use common::*;
use hyper::StatusCode;
use sotto_proto::{Frame, PushProvider, PushRegistration, Recipient, Send, SendOutcome, SendResult};
use sotto_relay::storage::Storage;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

/// Runs `sotto-relay <args>` with nothing of the caller's environment: (exit code,
/// stdout, stderr).
fn admin(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sotto-relay"))
        .env_clear()
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The value printed after `label` (the first number on its line).
fn figure(out: &str, label: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} in {out}"));
    line[label.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number on {line:?}"))
}

async fn operator_commands(url: String) {
    let relay = Relay::start(&url, |_| {}).await;
    let mut r = rng(90);
    let alice = account(&mut r, 1);
    let bob = account(&mut r, 2);
    for a in [&alice, &bob] {
        assert_eq!(relay.register(a).await, StatusCode::CREATED);
    }
    // Three sends to both of Bob's devices, answered Stored.
    let mut ws = relay.open_anonymous().await;
    for n in 1..=3u64 {
        let recipients = bob
            .devices
            .iter()
            .map(|d| Recipient {
                account_id: bob.id(),
                device_id: d.id(),
                head: vec![n as u8; 100],
            })
            .collect();
        send(
            &mut ws,
            &Frame::Send(Send {
                message_id: n,
                access: vec![],
                body: vec![],
                recipients,
            }),
        )
        .await;
        assert!(matches!(
            recv(&mut ws).await,
            Frame::SendResult(SendResult {
                outcome: SendOutcome::Stored { .. },
                ..
            })
        ));
    }
    let bob1 = &bob.devices[0];
    relay
        .state
        .store
        .put_push(
            &bob.id(),
            bob1.id(),
            &PushRegistration {
                provider: PushProvider::Apns,
                token: vec![7; 32],
            },
        )
        .await
        .unwrap();

    let db = ["--database-url", url.as_str()];
    let (code, out, err) = admin(&[&db[..], &["admin", "stats"]].concat());
    assert_eq!(code, 0, "{err}");
    assert_eq!(figure(&out, "accounts"), 2);
    assert_eq!(figure(&out, "devices"), 3);
    assert_eq!(figure(&out, "envelopes waiting"), 6);
    assert_eq!(figure(&out, "fullest mailbox"), 3);
    assert_eq!(figure(&out, "push registrations"), 1);

    let account = bob.id().to_string();
    let device = bob1.id().0.to_string();
    let mailbox = [&db[..], &["admin", "mailbox", account.as_str(), device.as_str()]].concat();
    let (code, out, err) = admin(&mailbox);
    assert_eq!(code, 0, "{err}");
    assert_eq!(figure(&out, "envelopes waiting"), 3);
    assert_eq!(figure(&out, "last seq"), 3);

    // Not without --yes; then the device's envelopes and push registration go.
    let purge = [&db[..], &["admin", "purge-device", account.as_str(), device.as_str()]].concat();
    let (code, _, err) = admin(&purge);
    assert_eq!(code, 2);
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(figure(&admin(&mailbox).1, "envelopes waiting"), 3);
    let (code, out, err) = admin(&[&purge[..], &["--yes"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("deleted 3 envelopes") && out.contains("push registration"),
        "{out}"
    );
    let out = admin(&mailbox).1;
    assert_eq!(figure(&out, "envelopes waiting"), 0);
    assert_eq!(figure(&out, "last seq"), 3, "the numbering goes on");
    assert_eq!(
        relay.state.store.push_registration(&bob.id(), bob1.id()).await.unwrap(),
        None
    );
    // Bob's other device keeps its envelopes, and the relay delivers nothing to the
    // purged one.
    assert_eq!(
        figure(&admin(&[&db[..], &["admin", "stats"]].concat()).1, "envelopes waiting"),
        3
    );
    let mut bob_ws = relay.connect(bob1).await;
    assert_eq!(recv(&mut bob_ws).await, Frame::QueueEmpty);

    // Bad arguments are refused with a reason.
    let (code, _, err) = admin(&[&db[..], &["admin", "mailbox", "not-an-account", "1"]].concat());
    assert_eq!(code, 2);
    assert!(err.contains("not an account id"), "{err}");
    let (code, _, err) = admin(&[&db[..], &["admin", "mailbox", account.as_str(), "9"]].concat());
    assert_eq!(code, 2, "{err}");
    hang_up(bob_ws).await;
    hang_up(ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    let url = sqlite_url();
    operator_commands(url.clone()).await;
    // A database that is not there is an error, not a new empty one.
    let missing = format!("{url}.missing");
    // (Flags may also follow the command.)
    let (code, _, err) = admin(&["admin", "stats", "--database-url", &missing]);
    assert_eq!(code, 2);
    assert!(err.contains("no relay database"), "{err}");
    assert!(!std::path::Path::new(missing.strip_prefix("sqlite://").unwrap()).exists());
    remove_sqlite(&url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    if let Some(url) = postgres_url().await {
        operator_commands(url).await;
    }
}

#[test]
fn check_config_loads_what_the_relay_would() {
    let dir = std::env::temp_dir().join(format!("sotto-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("relay.toml");
    let write = |cert: &str, key: &str| {
        std::fs::write(
            &config,
            format!(
                "public_url = \"https://relay.example.org\"\nmetrics_token = \"s3cret-token\"\n\n[tls]\n\
                 cert_path = \"{}\"\nkey_path = \"{}\"\n",
                fixture(cert).display(),
                fixture(key).display()
            ),
        )
        .unwrap();
    };
    write("cert.pem", "key.pem");
    let path = config.to_str().unwrap();
    let (code, out, err) = admin(&["admin", "check-config", "--config", path]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("configuration OK"), "{out}");
    assert!(out.contains("(loads)"), "{out}");
    assert!(out.contains("with the token") && !out.contains("s3cret-token"), "{out}");
    // A key of another certificate: refused, the reason named.
    write("cert.pem", "key2.pem");
    let (code, out, err) = admin(&["admin", "check-config", "--config", path]);
    assert_eq!(code, 2, "{out}");
    assert!(err.starts_with("sotto-relay admin: tls:"), "{err}");
    // A setting the relay refuses: the configuration's own error.
    std::fs::write(&config, "[limits]\nrate_burst = 0\n").unwrap();
    let (code, _, err) = admin(&["admin", "check-config", "--config", path]);
    assert_eq!(code, 2);
    assert!(err.contains("rate_burst"), "{err}");
    // Cluster mode: the shared secret must load (and is never printed), and the database
    // must be PostgreSQL.
    let secret = dir.join("cluster.key");
    let cluster = |db: &str| {
        format!(
            "database_url = \"{db}\"\n[cluster]\nnats_url = \"nats://127.0.0.1:4222\"\nsecret_file = \"{}\"\n",
            secret.display()
        )
    };
    std::fs::write(&config, cluster("postgres://relay@db.internal/sotto")).unwrap();
    let (code, _, err) = admin(&["admin", "check-config", "--config", path]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read cluster.secret_file"), "{err}");
    std::fs::write(&secret, "0123456789abcdef".repeat(4)).unwrap();
    let (code, out, err) = admin(&["admin", "check-config", "--config", path]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("NATS nats://127.0.0.1:4222 (the secret loads)"), "{out}");
    assert!(!out.contains("0123456789abcdef") && !err.contains("0123456789abcdef"));
    std::fs::write(&config, cluster("sqlite:///tmp/relay.db")).unwrap();
    let (code, _, err) = admin(&["admin", "check-config", "--config", path]);
    assert_eq!(code, 2);
    assert!(err.contains("needs a PostgreSQL database_url"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
