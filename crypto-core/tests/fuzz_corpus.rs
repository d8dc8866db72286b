//! Replays the committed fuzz corpus (`crypto-core/fuzz/corpus/TARGET/*`) through the
//! same checks the cargo-fuzz targets run (`crypto-core/fuzz/src/checks.rs`, compiled in
//! here). A panic is a regression; an `ok-*` seed that no longer gets through means the
//! corpus is stale: regenerate it with
//!
//! ```text
//! cargo run --release --manifest-path crypto-core/fuzz/Cargo.toml --example gen_corpus
//! ```

use std::fs;
use std::path::{Path, PathBuf};

#[path = "../fuzz/src/checks.rs"]
#[allow(unreachable_pub)]
mod checks;

use checks::{Outcome, TARGETS};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

/// Runs every file of one target's corpus; fails if the directory is missing or empty.
fn replay(target: &str) {
    let dir = corpus_dir(target);
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
                "{target}/{name} no longer gets through: the corpus is stale (see this file's docs)"
            );
        }
    }
}

macro_rules! replay_tests {
    ($($target:ident),* $(,)?) => {
        $(
            #[test]
            fn $target() {
                replay(stringify!($target));
            }
        )*

        #[test]
        fn every_target_has_a_replay_test() {
            let tested = [$(stringify!($target)),*];
            assert_eq!(tested, TARGETS);
        }
    };
}

replay_tests!(
    device_list,
    prekey_bundle,
    prekey_records,
    prekey_message,
    ratchet_message,
    sealed_open,
    pickle,
    interaction,
    sender_key,
    group_seal,
    profile,
    attachment,
    token,
);

#[test]
fn every_corpus_directory_is_a_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for entry in fs::read_dir(&root).expect("crypto-core/fuzz/corpus") {
        let path = entry.expect("corpus entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        assert!(TARGETS.contains(&name), "{} is not a fuzz target", path.display());
    }
}

/// The generator's seeds pass their own checks, so regenerating gives a corpus that replays.
#[test]
fn generated_seeds_pass_their_checks() {
    let seeds = checks::seeds();
    for target in TARGETS {
        let n = seeds.iter().filter(|s| s.target == target).count();
        assert!((3..=10).contains(&n), "{target} has {n} seeds");
    }
    for seed in &seeds {
        let outcome = checks::run(seed.target, &seed.bytes).expect("a known target");
        if seed.name.starts_with("ok-") {
            assert_eq!(outcome, Outcome::Accepted, "{}/{}", seed.target, seed.name);
        }
    }
}

/// The hand-written XChaCha20-Poly1305 that wraps fuzz bytes as pickles agrees with
/// sotto-crypto's: it opens real pickles, and sealing their contents again with the same
/// nonce gives the same bytes.
#[test]
fn pickle_wrapper_matches_sotto_crypto() {
    let f = checks::fixture();
    let pickles = [
        checks::pickle_of(&f.alice_ak),
        checks::pickle_of(&f.bob),
        checks::pickle_of(&f.spk),
        checks::pickle_of(&f.kem),
        f.responded.alice.clone(),
        f.established.bob.clone(),
    ];
    for pickle in &pickles {
        let inner = checks::pickle_wrap::open(pickle).expect("a real pickle opens");
        let nonce: [u8; 24] = pickle[2..26].try_into().expect("a 24-byte nonce");
        assert_eq!(checks::pickle_wrap::seal(pickle[1], &inner, &nonce), *pickle);
    }
    let mut altered = pickles[0].clone();
    altered[30] ^= 1;
    assert_eq!(checks::pickle_wrap::open(&altered), None);
}

/// RFC 8439 §2.5.2.
#[test]
fn poly1305_rfc8439_vector() {
    let key: [u8; 32] = [
        0x85, 0xd6, 0xbe, 0x78, 0x57, 0x55, 0x6d, 0x33, 0x7f, 0x44, 0x52, 0xfe, 0x42, 0xd5, 0x06, 0xa8, 0x01, 0x03,
        0x80, 0x8a, 0xfb, 0x0d, 0xb2, 0xfd, 0x4a, 0xbf, 0xf6, 0xaf, 0x41, 0x49, 0xf5, 0x1b,
    ];
    let tag = [
        0xa8, 0x06, 0x1d, 0xc1, 0x30, 0x51, 0x36, 0xc6, 0xc2, 0x2b, 0x8b, 0xaf, 0x0c, 0x01, 0x27, 0xa9,
    ];
    assert_eq!(
        checks::pickle_wrap::poly1305(&key, b"Cryptographic Forum Research Group"),
        tag
    );
}
