//! Fuzz target `websocket`: the relay's RFC 6455 frame decoder, fed a client's bytes at
//! once and in pieces. The checks live in `src/checks.rs`, shared with the corpus replay test.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sotto_proto_fuzz::websocket(data);
});
