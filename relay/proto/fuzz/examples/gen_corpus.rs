//! Writes the seed corpus to `relay/proto/fuzz/corpus/TARGET/`:
//!
//! ```text
//! cargo run --release --manifest-path relay/proto/fuzz/Cargo.toml --example gen_corpus
//! ```
//! The seeds are deterministic (see `sotto_proto_fuzz::seeds`). Files named `ok-*` or
//! `bad-*` are the generator's and are replaced; anything else (a minimized crash
//! committed as `crash-*`, say) is kept.

use std::fs;
use std::io;
use std::path::Path;

fn main() -> io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for target in sotto_proto_fuzz::TARGETS {
        let dir = root.join(target);
        fs::create_dir_all(&dir)?;
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.starts_with("ok-") || name.starts_with("bad-") {
                fs::remove_file(&path)?;
            }
        }
    }
    let seeds = sotto_proto_fuzz::seeds();
    let mut total = 0;
    for seed in &seeds {
        let path = root.join(seed.target).join(&seed.name);
        fs::write(&path, &seed.bytes)?;
        total += seed.bytes.len();
    }
    println!("wrote {} seeds, {total} bytes, under {}", seeds.len(), root.display());
    Ok(())
}
