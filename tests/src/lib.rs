//! Cross-crate tests that run a real relay and real clients over real sockets.
