//! Generates the Swift, Kotlin and Python bindings from the built library:
//! `uniffi-bindgen generate target/debug/libsotto_ffi.so --language kotlin --out-dir DIR`.

fn main() {
    uniffi::uniffi_bindgen_main()
}
