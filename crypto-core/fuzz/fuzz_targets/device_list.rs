//! Fuzz target `device_list`: SignedDeviceList::from_bytes, verify and account_key_and_version.
//! The checks live in `src/checks.rs`, shared with the corpus replay test.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sotto_crypto_fuzz::device_list(data);
});
