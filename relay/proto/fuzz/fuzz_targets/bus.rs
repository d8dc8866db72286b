//! Fuzz target `bus`: the notices relay nodes of a cluster exchange.
//! The checks live in `src/checks.rs`, shared with the corpus replay test.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sotto_proto_fuzz::bus(data);
});
