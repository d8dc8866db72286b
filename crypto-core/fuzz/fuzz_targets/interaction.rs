//! Fuzz target `interaction`: A schedule of sends, deliveries, drops, replays and restores between Alice and Bob.
//! The checks live in `src/checks.rs`, shared with the corpus replay test.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sotto_crypto_fuzz::interaction(data);
});
