#!/usr/bin/env bash
# Installs what the web build and tests need, idempotently, and prints their paths as
# `export NAME=value` lines on stdout (messages go to stderr):
#
#   env=$(scripts/wasm-tools.sh) && eval "$env"      what scripts/wasm.sh does
#   scripts/wasm-tools.sh                             install and show the paths
#
# - the rustup target wasm32-unknown-unknown;
# - wasm-bindgen-cli at exactly the version of `wasm-bindgen` in Cargo.lock, with
#   wasm-bindgen-test-runner, built once into $SOTTO_CACHE/wasm-bindgen-<version>
#   (default ~/.cache/sotto; about 5 minutes, skipped when present);
# - Debian `chromium` and `chromium-driver` (headless browser tests), and
#   `fonts-noto-color-emoji` (emoji in the demo's screenshot);
# - node 20.10 or newer (WebSocket behind --experimental-websocket, global fetch);
# - the npm packages pinned in bindings/wasm/package-lock.json (playwright-core,
#   binaryen for wasm-opt, fake-indexeddb, typescript and @types/node for the TypeScript
#   echo bot), installed with `npm ci` into
#   bindings/wasm/node_modules (git-ignored) whenever the lock file changed.
#
# With CI=true a tool that cannot be installed fails the run; elsewhere it is reported,
# loudly, and listed in SOTTO_WASM_MISSING so that scripts/wasm.sh skips what needs it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

CACHE=${SOTTO_CACHE:-$HOME/.cache/sotto}
IN_CI=false
[ "${CI:-}" = true ] && IN_CI=true
NODE_DIR=$ROOT/bindings/wasm

log() { printf 'wasm-tools: %s\n' "$*" >&2; }
MISSING=()
unavailable() { # tool, reason
  if $IN_CI; then
    log "$1 unavailable ($2), and CI=true: failing"
    exit 1
  fi
  skip_banner "$1 is unavailable: $2" "the web tests that need it will be SKIPPED"
  MISSING+=("$1")
}

# ---------------------------------------------------------------- rust target
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  log "rustup target add wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown >&2 || unavailable wasm32-target "rustup target add failed"
fi

# ---------------------------------------------------------------- wasm-bindgen-cli
# The CLI must match the wasm-bindgen crate exactly: its schema version is checked.
WB_VERSION=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
WB_ROOT=$CACHE/wasm-bindgen-$WB_VERSION
WASM_BINDGEN=$WB_ROOT/bin/wasm-bindgen
WASM_BINDGEN_TEST_RUNNER=$WB_ROOT/bin/wasm-bindgen-test-runner
if [ -z "$WB_VERSION" ]; then
  unavailable wasm-bindgen "no wasm-bindgen in Cargo.lock"
elif [ ! -x "$WASM_BINDGEN" ] || [ ! -x "$WASM_BINDGEN_TEST_RUNNER" ]; then
  log "cargo install wasm-bindgen-cli $WB_VERSION into $WB_ROOT (about 5 minutes, once)"
  # Not --locked: the CLI's own lock file may name crates newer than the registry
  # index here has; the CLI version itself is exact.
  if ! cargo install wasm-bindgen-cli --version "=$WB_VERSION" --root "$WB_ROOT" >&2; then
    unavailable wasm-bindgen "cargo install wasm-bindgen-cli $WB_VERSION failed"
  fi
fi
if [ -x "$WASM_BINDGEN" ] && [ "$("$WASM_BINDGEN" --version | awk '{print $2}')" != "$WB_VERSION" ]; then
  unavailable wasm-bindgen "$WASM_BINDGEN is not version $WB_VERSION"
fi

# ---------------------------------------------------------------- chromium
CHROMIUM=/usr/bin/chromium
CHROMEDRIVER=/usr/bin/chromedriver
if ! apt_install chromium chromium-driver || [ ! -x "$CHROMIUM" ] || [ ! -x "$CHROMEDRIVER" ]; then
  unavailable chromium "could not install the Debian packages chromium and chromium-driver"
fi
# Colour emoji for the demo's reactions in the e2e screenshot (without it they show as
# empty boxes; nothing else depends on it).
apt_install fonts-noto-color-emoji || echo "wasm-tools: no fonts-noto-color-emoji: emoji show as boxes in screenshots" >&2

# ---------------------------------------------------------------- node and npm packages
NODE=$(command -v node || true)
node_ok() {
  [ -n "$NODE" ] && "$NODE" -e '
    const [a, b] = process.versions.node.split(".").map(Number);
    process.exit(a > 20 || (a === 20 && b >= 10) ? 0 : 1)'
}
if ! node_ok; then
  unavailable node "node 20.10 or newer is needed (found: ${NODE:+$("$NODE" --version)}${NODE:-none})"
else
  STAMP=$NODE_DIR/node_modules/.sotto-lock-sha256
  WANT=$(sha256sum "$NODE_DIR/package-lock.json" | cut -d' ' -f1)
  if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
    if ! command -v npm >/dev/null; then
      unavailable npm-packages "no npm"
    else
      log "npm ci in bindings/wasm (playwright-core, binaryen, fake-indexeddb, typescript)"
      if (cd "$NODE_DIR" && npm ci --silent --no-audit --no-fund >&2); then
        echo "$WANT" >"$STAMP"
      else
        unavailable npm-packages "npm ci in bindings/wasm failed"
      fi
    fi
  fi
fi
WASM_OPT=$NODE_DIR/node_modules/.bin/wasm-opt

# ---------------------------------------------------------------- paths
emit() { printf 'export %s=%q\n' "$1" "$2"; }
emit SOTTO_WASM_BINDGEN_VERSION "$WB_VERSION"
emit WASM_BINDGEN "$WASM_BINDGEN"
emit WASM_BINDGEN_TEST_RUNNER "$WASM_BINDGEN_TEST_RUNNER"
emit WASM_OPT "$WASM_OPT"
emit SOTTO_NODE "$NODE"
emit SOTTO_NODE_MODULES "$NODE_DIR/node_modules"
emit CHROMIUM "$CHROMIUM"
emit CHROMEDRIVER "$CHROMEDRIVER"
emit SOTTO_WASM_MISSING "${MISSING[*]-}"
