#!/usr/bin/env bash
# The whole test suite: what CI runs (.ci/run) and what the README tells you to run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

step() { printf '\n==> %s\n' "$*"; }

step "setup"
scripts/setup.sh

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "dependency boundaries"
scripts/check-deps.sh

step "wasm32 build of sotto-crypto"
cargo build -p sotto-crypto --target wasm32-unknown-unknown --locked

step "wasm32 build of sotto-sdk without its native feature"
cargo build -p sotto-sdk --no-default-features --target wasm32-unknown-unknown --locked

step "clippy for wasm32: sotto-sdk with its web feature (and its IndexedDB tests), sotto-wasm"
cargo clippy -p sotto-sdk --no-default-features --features web --target wasm32-unknown-unknown --all-targets \
  --locked -- -D warnings
cargo clippy -p sotto-wasm --target wasm32-unknown-unknown --locked -- -D warnings

step "fuzz targets compile"
cargo check --manifest-path crypto-core/fuzz/Cargo.toml --bins
cargo check --manifest-path relay/proto/fuzz/Cargo.toml --bins

step "throwaway PostgreSQL for the relay tests"
# The relay's storage and server tests run on SQLite and on PostgreSQL; with CI=true they
# fail instead of skipping when SOTTO_TEST_POSTGRES_URL is unset.
if [ -z "${SOTTO_TEST_POSTGRES_URL:-}" ]; then
  PG_DIR=$(mktemp -d)
  trap 'scripts/pg.sh stop "$PG_DIR"' EXIT
  SOTTO_TEST_POSTGRES_URL=$(scripts/pg.sh start "$PG_DIR")
  export SOTTO_TEST_POSTGRES_URL
fi

step "tests"
cargo test --workspace --locked

step "bindings: Python, Kotlin and Swift against a local relay"
scripts/bindings.sh

step "web: sotto-wasm in node and in headless Chromium against a local relay"
scripts/wasm.sh
