//! Fuzz target `prekey_bundle`: PreKeyBundle::decode, verify, re-encode, and initiate with what verifies.
//! The checks live in `src/checks.rs`, shared with the corpus replay test.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sotto_crypto_fuzz::prekey_bundle(data);
});
