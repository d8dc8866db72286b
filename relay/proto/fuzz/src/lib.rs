//! Shared code of sotto-proto's fuzz targets.
//!
//! Each target in `fuzz_targets/` calls one function of [`checks`](crate) (`src/checks.rs`),
//! which `relay/proto/tests/fuzz_corpus.rs` also compiles to replay the committed corpus in
//! `cargo test`.
//!
//! ```text
//! cd relay/proto
//! RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET fuzz/corpus-work/TARGET fuzz/corpus/TARGET -- -max_total_time=60
//! cargo run --release --manifest-path fuzz/Cargo.toml --example gen_corpus   # rewrite the seeds
//! cargo test -p sotto-proto --test fuzz_corpus                               # replay them
//! ```
//! Pass a scratch directory first to `cargo fuzz run` so that libFuzzer writes what it
//! finds there, not into the committed corpus.

mod checks;

pub use checks::*;
