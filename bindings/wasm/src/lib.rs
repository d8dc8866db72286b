//! wasm-bindgen bindings over `sotto-sdk`; see docs/ARCHITECTURE.md.
