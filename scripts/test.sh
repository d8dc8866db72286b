#!/usr/bin/env bash
# The whole test suite: what CI runs (.ci/run) and what the README tells you to run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# CI builds from a fresh clone: incremental state would be written and never reused.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}; fi

# The clock for the step headers starts here, whatever the environment held.
SOTTO_T0=$(date +%s)
export SOTTO_T0
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
step() { step_header '' "$@"; }

step "setup"
scripts/setup.sh

# A cold run writes about 8.5 GiB to the target directory, and the container and binding
# steps need some more (NEED_GB in all). When the disk fills, the linker
# dies mid-write (often as "ld terminated with signal 7 [Bus error]"), which reads like a
# toolchain bug: say so up front.
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
mkdir -p "$TARGET_DIR"
NEED_GB=10
AVAIL_GB=$(( $(df -Pk "$TARGET_DIR" | awk 'NR==2 {print $4}') / 1048576 ))
if [ "$AVAIL_GB" -lt "$NEED_GB" ]; then
  echo "!! only ${AVAIL_GB} GiB free under $TARGET_DIR; a cold run needs about ${NEED_GB} GiB." >&2
  echo "!! If a link fails with a Bus error, free disk space (or cargo clean) and run again." >&2
fi

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "dependency boundaries"
scripts/check-deps.sh

# Checked, not built: the release build of sotto-wasm (scripts/wasm.sh) compiles the same
# code for wasm32, and a debug build here would compile every dependency a second time.
step "clippy for wasm32: sotto-crypto, sotto-sdk without a backend, sotto-sdk with its web feature (and its IndexedDB tests), sotto-wasm"
cargo clippy -p sotto-crypto --target wasm32-unknown-unknown --locked -- -D warnings
cargo clippy -p sotto-sdk --no-default-features --target wasm32-unknown-unknown --locked -- -D warnings
cargo clippy -p sotto-sdk --no-default-features --features web --target wasm32-unknown-unknown --all-targets \
  --locked -- -D warnings
cargo clippy -p sotto-wasm --target wasm32-unknown-unknown --locked -- -D warnings

step "fuzz targets compile"
# The fuzz workspaces share one target dir, so libFuzzer's C++ is compiled once.
FUZZ_TARGET_DIR="$TARGET_DIR/fuzz"
CARGO_TARGET_DIR="$FUZZ_TARGET_DIR" cargo check --manifest-path crypto-core/fuzz/Cargo.toml --bins --locked
CARGO_TARGET_DIR="$FUZZ_TARGET_DIR" cargo check --manifest-path relay/proto/fuzz/Cargo.toml --bins --locked
CARGO_TARGET_DIR="$FUZZ_TARGET_DIR" cargo check --manifest-path client-sdk/fuzz/Cargo.toml --bins --locked

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

step "container image: deploy/container/Dockerfile, built and run with podman"
# The relay binary the tests above built goes into the image; the Dockerfile's compile
# stage is what `scripts/container.sh` alone runs (docs/operations.md, "Containers").
scripts/container.sh --prebuilt "$TARGET_DIR/debug/sotto-relay"

step "bindings: Python, Kotlin and Swift against a local relay"
scripts/bindings.sh

step "web: sotto-wasm in node and in headless Chromium against a local relay"
scripts/wasm.sh

step "done"
