//! The notification extension as a second process on the app's store (docs/protocol.md
//! §13.6, `AuthExtension`): `sotto notify` runs beside `sotto receive` on one profile, the
//! two started together round after round while messages arrive, so sometimes the
//! extension reads the mailbox, sometimes the app, and sometimes the app connects in the
//! middle of the extension's fetch and takes the socket from it.
//!
//! What must hold: every message is shown exactly once over all runs of both processes
//! (never lost, never twice), stored exactly once, and neither process forks a ratchet
//! or spends a one-time prekey twice: a contact's first message (a pre-key message) that
//! arrives in the churn opens a session both processes share, and replies in every
//! conversation still decrypt afterwards. The extension's peak memory is printed for
//! docs/benchmarks.md.
#![cfg(feature = "native")]

mod common;

use common::{Relay, Sotto, relay_binary, sotto_binary};

/// Lines of `out` that show `text` exactly (as the whole text of a message).
fn shows(out: &str, text: &str) -> usize {
    out.lines().filter(|l| l.ends_with(&format!(": {text}"))).count()
}

/// Sends `texts` from `from` to `to` in one `sotto chat` run (one line each), which exits
/// once the relay stored them all.
fn send_all(sotto: &Sotto, from: &str, to: &str, texts: &[String]) {
    let input: String = texts.iter().map(|t| format!("{t}\n")).collect();
    let r = sotto.run_with(from, &["chat", to], &input, &[("SOTTO_CHAT_EXIT_ON_EOF", "1")]);
    assert!(r.ok, "chat failed: {}", r.stderr);
}

#[test]
fn app_and_extension_processes_share_a_store_without_loss_or_duplicates() {
    let bin = sotto_binary();
    let relay_bin = relay_binary(bin.parent().unwrap());
    let work = std::env::temp_dir().join(format!("sotto-extension-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let relay = Relay::start(&relay_bin, &work);
    let sotto = Sotto {
        bin,
        home: work.join("profiles"),
        relay_log: relay.log.clone(),
    };
    let mut link = std::collections::HashMap::new();
    for who in ["alice", "bob", "carol"] {
        sotto.ok(who, &["init", "--relay", &relay.url]);
        link.insert(who, sotto.ok(who, &["whoami", "--link"]).trim().to_owned());
    }
    sotto.ok("alice", &["add", &link["bob"]]);
    sotto.ok("bob", &["add", &link["alice"]]);
    sotto.ok("bob", &["nickname", &link["alice"], "Alice"]);
    sotto.ok("alice", &["send", &link["bob"], "hello"]);
    sotto.receive_until("bob", "hello");

    // With the app connected, the extension is refused and shows nothing; the app keeps
    // its socket (it is not replaced).
    let mut app = std::process::Command::new(&sotto.bin)
        .args(["--profile", "bob", "chat", "Alice"])
        .env("SOTTO_HOME", &sotto.home)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut refused = false;
    for _ in 0..50 {
        let out = sotto.ok("bob", &["notify", "--max-wait", "5"]);
        if out.contains("app active") {
            refused = true;
            break;
        }
        // The app had not connected yet: nothing waited.
        assert!(!out.contains("notification"), "{out}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = app.kill();
    let _ = app.wait();
    assert!(refused, "the extension was never refused while the app was connected");

    let mut texts = Vec::new();
    let mut shown = String::new();
    for round in 0..6 {
        let round_texts: Vec<String> = (0..3).map(|i| format!("m-{round}-{i}")).collect();
        send_all(&sotto, "alice", &link["bob"], &round_texts);
        texts.extend(round_texts);
        if round == 3 {
            // A first message from a new contact: a pre-key message, spending one of
            // Bob's one-time prekeys, processed by whichever process reads it.
            sotto.ok("carol", &["add", &link["bob"]]);
            sotto.ok("carol", &["send", &link["bob"], "c-first"]);
            texts.push("c-first".into());
        }
        // The app and the extension start together: which one reads what varies.
        let (app, ext) = std::thread::scope(|s| {
            let app = s.spawn(|| sotto.run_with("bob", &["receive"], "", &[]));
            let ext = s.spawn(|| sotto.run_with("bob", &["notify", "--max-wait", "10"], "", &[]));
            (app.join().unwrap(), ext.join().unwrap())
        });
        assert!(ext.ok, "notify failed: {}", ext.stderr);
        shown += &app.stdout;
        shown += &ext.stdout;
    }
    shown += &sotto.ok("bob", &["receive"]);
    for t in &texts {
        assert_eq!(shows(&shown, t), 1, "{t} shown {} times:\n{shown}", shows(&shown, t));
    }
    let history = sotto.ok("bob", &["messages", "Alice"]);
    for t in texts.iter().filter(|t| t.starts_with("m-")) {
        assert_eq!(
            shows(&history, t),
            1,
            "{t} stored {} times:\n{history}",
            shows(&history, t)
        );
    }

    // No fork, no prekey spent twice: both conversations go on in both directions.
    sotto.ok("bob", &["send", "Alice", "all read"]);
    sotto.receive_until("alice", "all read");
    sotto.ok("bob", &["add", &link["carol"]]);
    sotto.ok("bob", &["send", &link["carol"], "hi carol"]);
    sotto.receive_until("carol", "hi carol");
    // (Every command of Bob's connects as the app and reads the mailbox: these two are
    // sent after Bob's last one.)
    sotto.ok("alice", &["send", &link["bob"], "good"]);
    sotto.ok("carol", &["send", &link["bob"], "c-second"]);
    let out = sotto.ok("bob", &["notify", "--max-wait", "10"]);
    assert_eq!(shows(&out, "good") + shows(&out, "c-second"), 2, "{out}");
    assert!(out.contains("caught up"), "{out}");
    let out = sotto.ok("bob", &["receive"]);
    assert!(!out.contains("Undecryptable") && !out.contains("could not"), "{out}");

    // The extension's peak memory with 100 messages waiting (for docs/benchmarks.md).
    let bulk: Vec<String> = (0..100).map(|i| format!("bulk-{i}")).collect();
    send_all(&sotto, "alice", &link["bob"], &bulk);
    let r = sotto.run_with("bob", &["notify", "--max-wait", "30", "--memory"], "", &[]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout.lines().filter(|l| l.starts_with("notification")).count(), 100);
    let kib: u64 = r
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("peak_rss_kib "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak_rss_kib in {:?}", r.stderr));
    eprintln!("notification extension: 100 messages fetched, peak RSS {kib} KiB");
    let _ = std::fs::remove_dir_all(&work);
}
