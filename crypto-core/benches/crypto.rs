//! Criterion benchmarks of sotto-crypto (filled in below).

fn main() {}
