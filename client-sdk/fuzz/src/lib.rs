//! Shared code of the SDK's fuzz targets.
//!
//! Each target in `fuzz_targets/` calls one function of `src/checks.rs`, which
//! `client-sdk/tests/fuzz_corpus.rs` also compiles to replay the committed corpus in
//! `cargo test` (and, with `SOTTO_WRITE_CORPUS=1`, to rewrite the seeds).
//!
//! ```text
//! cd client-sdk
//! RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET fuzz/corpus-work/TARGET fuzz/corpus/TARGET -- -max_total_time=60
//! SOTTO_WRITE_CORPUS=1 cargo test -p sotto-sdk --test fuzz_corpus   # rewrite the seeds
//! cargo test -p sotto-sdk --test fuzz_corpus                        # replay them
//! ```

mod checks;

pub use checks::*;
