//! Fuzz target `ratchet_message`: Session::decrypt of ratchet and pre-key messages on fixed established sessions.
//! The checks live in `src/checks.rs`, shared with the corpus replay test.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sotto_crypto_fuzz::ratchet_message(data);
});
