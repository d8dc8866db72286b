//! Fuzz target `pickle`: Unpickling every pickle type, raw and with the input sealed as the inner plaintext.
//! The checks live in `src/checks.rs`, shared with the corpus replay test.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sotto_crypto_fuzz::pickle(data);
});
