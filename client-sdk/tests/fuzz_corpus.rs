//! Replays the committed fuzz corpus (`client-sdk/fuzz/corpus/TARGET/*`) through the
//! checks the cargo-fuzz targets run (`client-sdk/fuzz/src/checks.rs`, compiled in here).
//! A panic is a regression; an `ok-*` seed that no longer decodes means the corpus is
//! stale (or the format changed): rewrite the seeds with
//! `SOTTO_WRITE_CORPUS=1 cargo test -p sotto-sdk --test fuzz_corpus`.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};

#[path = "../fuzz/src/checks.rs"]
#[allow(unreachable_pub, dead_code)]
mod checks;

use checks::{Outcome, TARGETS};

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

fn write_seeds() {
    for seed in checks::seeds() {
        let dir = corpus_root().join(seed.target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(&seed.name), &seed.bytes).unwrap();
    }
}

fn replay(target: &str) {
    if std::env::var_os("SOTTO_WRITE_CORPUS").is_some() {
        write_seeds();
    }
    let dir = corpus_root().join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus directory {} is missing: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus directory {} is empty", dir.display());
    for path in &files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let outcome = checks::run(target, &fs::read(path).unwrap()).unwrap();
        if name.starts_with("ok-") {
            assert_eq!(outcome, Outcome::Accepted, "{target}/{name} no longer decodes");
        }
    }
}

#[test]
fn content() {
    replay("content");
}

#[test]
fn link() {
    replay("link");
}

#[test]
fn group() {
    replay("group");
}

#[test]
fn committed_corpus_has_every_generated_seed() {
    assert_eq!(TARGETS, ["content", "link", "group"]);
    for seed in checks::seeds() {
        let outcome = checks::run(seed.target, &seed.bytes).unwrap();
        if seed.name.starts_with("ok-") {
            assert_eq!(outcome, Outcome::Accepted, "{}/{}", seed.target, seed.name);
        }
        let path = corpus_root().join(seed.target).join(&seed.name);
        assert_eq!(
            fs::read(&path).ok().as_deref(),
            Some(&seed.bytes[..]),
            "{} is stale",
            path.display()
        );
    }
}
