//! Replays the committed fuzz corpus (`relay/proto/fuzz/corpus/TARGET/*`) through the same
//! checks the cargo-fuzz targets run (`relay/proto/fuzz/src/checks.rs`, compiled in here).
//! A panic is a regression; an `ok-*` seed that no longer decodes means the corpus is
//! stale (or the wire format changed): regenerate it with
//!
//! ```text
//! cargo run --release --manifest-path relay/proto/fuzz/Cargo.toml --example gen_corpus
//! ```

use std::fs;
use std::path::{Path, PathBuf};

#[path = "../fuzz/src/checks.rs"]
#[allow(unreachable_pub, dead_code)]
mod checks;

use checks::{Outcome, TARGETS};

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

/// Runs every file of one target's corpus; fails if the directory is missing or empty.
fn replay(target: &str) {
    let dir = corpus_root().join(target);
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus directory {} is missing: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("corpus directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus directory {} is empty", dir.display());
    for path in &files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let data = fs::read(path).expect("corpus file");
        let outcome = checks::run(target, &data).expect("a known target");
        if name.starts_with("ok-") {
            assert_eq!(
                outcome,
                Outcome::Accepted,
                "{target}/{name} no longer decodes: the corpus is stale (see this file's docs)"
            );
        }
    }
}

#[test]
fn frame() {
    replay("frame");
}

#[test]
fn body() {
    replay("body");
}

#[test]
fn bus() {
    replay("bus");
}

#[test]
fn websocket() {
    replay("websocket");
}

#[test]
fn every_target_has_a_replay_test_and_a_directory() {
    assert_eq!(TARGETS, ["frame", "body", "bus", "websocket"]);
    for entry in fs::read_dir(corpus_root()).expect("relay/proto/fuzz/corpus") {
        let path = entry.expect("corpus entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        assert!(TARGETS.contains(&name), "{} is not a fuzz target", path.display());
    }
}

/// The committed corpus holds every seed the generator makes, and every generated `ok-*`
/// seed passes its check.
#[test]
fn committed_corpus_has_every_generated_seed() {
    for seed in checks::seeds() {
        let outcome = checks::run(seed.target, &seed.bytes).expect("a known target");
        if seed.name.starts_with("ok-") {
            assert_eq!(outcome, Outcome::Accepted, "{}/{}", seed.target, seed.name);
        }
        let path = corpus_root().join(seed.target).join(&seed.name);
        assert!(path.is_file(), "{} is missing: regenerate the corpus", path.display());
    }
}
