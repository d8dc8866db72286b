#!/usr/bin/env bash
# Builds sotto-wasm, generates its JavaScript packages into bindings/generated/wasm/
# (git-ignored) and runs the web tests:
#
#   1. build: `cargo build --release` for wasm32-unknown-unknown, `wasm-bindgen --target
#      nodejs` into bindings/generated/wasm/node and `--target web` into .../web, then
#      `wasm-opt -Oz` on the web build; the sizes before and after wasm-opt, raw and
#      gzipped, are printed and written to $TARGET/wasm-size.txt (docs/benchmarks.md);
#   2. idb: the IndexedDB store conformance suite (client-sdk/tests/idb_store.rs) in
#      headless Chromium through wasm-bindgen-test-runner and chromedriver;
#   3. node: the node tests (bindings/wasm/tests/node) against one local sotto-relay;
#   4. e2e: the demo page (bindings/wasm/demo) in headless Chromium, driven by
#      playwright-core, chatting with the native `sotto` CLI through that relay; the
#      screenshot goes to ${SOTTO_ARTIFACTS:-$TARGET/artifacts}/web-demo.png. Then Web
#      Push (bindings/wasm/tests/e2e/push.mjs, with its own relay and a local push
#      service): the demo's service worker shows a message that arrived while the page
#      was closed.
#
#   scripts/wasm.sh                   install what is missing, build, run everything
#   scripts/wasm.sh build node        only these parts (build, idb, node, e2e)
#   scripts/wasm.sh --install-only    only install the tools (scripts/wasm-tools.sh)
#   SOTTO_BENCH=1 scripts/wasm.sh     also the 1,000-message benchmark (release relay)
#   SOTTO_TEST_CLI=PATH scripts/wasm.sh   the e2e runs this `sotto` instead of the one built
#
# Tools come from scripts/wasm-tools.sh (cached under ${SOTTO_CACHE:-~/.cache/sotto} and
# bindings/wasm/node_modules). With CI=true a missing tool fails the run; elsewhere the
# parts that need it are skipped, loudly.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
ROOT=$PWD

GEN=$ROOT/bindings/generated/wasm
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET" in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
ARTIFACTS=${SOTTO_ARTIFACTS:-$TARGET/artifacts}
IN_CI=false
[ "${CI:-}" = true ] && IN_CI=true

INSTALL_ONLY=false
PARTS=()
for a in "$@"; do
  case "$a" in
    --install-only) INSTALL_ONLY=true ;;
    build | idb | node | e2e) PARTS+=("$a") ;;
    *) echo "wasm.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done
[ ${#PARTS[@]} -eq 0 ] && PARTS=(build idb node e2e)

step() { step_header 'wasm: ' "$@"; }
want() { [[ " ${PARTS[*]} " == *" $1 "* ]]; }
SKIPPED=()
skip() { # part, reason
  if $IN_CI; then
    echo "wasm.sh: cannot run the $1 part ($2), and CI=true: failing" >&2
    exit 1
  fi
  skip_banner "SKIPPING the web $1 tests: $2"
  SKIPPED+=("$1")
}

# ---------------------------------------------------------------- cleanup
RELAY_PID=
RUN_DIR=
cleanup() {
  if [ -n "$RELAY_PID" ]; then
    kill "$RELAY_PID" 2>/dev/null || true
    wait "$RELAY_PID" 2>/dev/null || true
  fi
  if [ -n "$RUN_DIR" ]; then rm -rf "$RUN_DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- tools
step "tools"
TOOLS_ENV=$(scripts/wasm-tools.sh)
eval "$TOOLS_ENV"
echo "wasm-bindgen $SOTTO_WASM_BINDGEN_VERSION, node ${SOTTO_NODE:+$("$SOTTO_NODE" --version)}, $CHROMIUM"
$INSTALL_ONLY && exit 0
missing() { [[ " $SOTTO_WASM_MISSING " == *" $1 "* ]]; }
# node 20 has WebSocket behind a flag; later versions have it on by default.
NODE_WS=()
if [ -n "$SOTTO_NODE" ] && "$SOTTO_NODE" -e 'process.exit(typeof WebSocket === "undefined" ? 0 : 1)'; then
  NODE_WS=(--experimental-websocket)
fi
timed() { timed_run wasm "$@"; } # label, command...

# ---------------------------------------------------------------- build
WEB_WASM=$GEN/web/sotto_wasm_bg.wasm
gz() { gzip -9 -c "$1" | wc -c; }
if want build; then
  if missing wasm-bindgen; then
    skip build "no wasm-bindgen-cli $SOTTO_WASM_BINDGEN_VERSION"
  else
    step "build sotto-wasm (release, wasm32-unknown-unknown) and generate the packages"
    cargo build --locked -p sotto-wasm --target wasm32-unknown-unknown --release
    WASM=$TARGET/wasm32-unknown-unknown/release/sotto_wasm.wasm
    rm -rf "$GEN"
    "$WASM_BINDGEN" --target nodejs --out-dir "$GEN/node" "$WASM"
    "$WASM_BINDGEN" --target web --out-dir "$GEN/web" "$WASM"
    BEFORE=$(stat -c %s "$WEB_WASM")
    BEFORE_GZ=$(gz "$WEB_WASM")
    SIZES=$TARGET/wasm-size.txt
    {
      echo "sotto-wasm web build ($(rustc --version | cut -d' ' -f1-2), wasm-bindgen $SOTTO_WASM_BINDGEN_VERSION), bytes"
      printf '%-36s %9s %9s\n' "file" "raw" "gzip -9"
      printf '%-36s %9d %9d\n' "sotto_wasm_bg.wasm (wasm-bindgen)" "$BEFORE" "$BEFORE_GZ"
    } >"$SIZES.tmp"
    if missing npm-packages || [ ! -x "$WASM_OPT" ]; then
      skip wasm-opt "no wasm-opt (npm binaryen); the web build stays unoptimized"
    else
      step "wasm-opt -Oz on the web build"
      "$WASM_OPT" -Oz "$WEB_WASM" -o "$WEB_WASM.opt"
      mv "$WEB_WASM.opt" "$WEB_WASM"
      printf '%-36s %9d %9d\n' "sotto_wasm_bg.wasm (wasm-opt -Oz)" "$(stat -c %s "$WEB_WASM")" "$(gz "$WEB_WASM")" >>"$SIZES.tmp"
    fi
    printf '%-36s %9d %9d\n' "sotto_wasm.js (web glue)" "$(stat -c %s "$GEN/web/sotto_wasm.js")" \
      "$(gz "$GEN/web/sotto_wasm.js")" >>"$SIZES.tmp"
    mv "$SIZES.tmp" "$SIZES"
    cat "$SIZES"
    echo "(written to $SIZES)"

    step "the npm package sotto-wasm (web and node entries) with npm pack"
    PKG=$GEN/package
    mkdir -p "$PKG/web" "$PKG/node"
    cp bindings/wasm/npm/package.json bindings/wasm/npm/README.md "$PKG/"
    cp bindings/wasm/npm/node/* "$PKG/node/"
    for f in sotto_wasm.js sotto_wasm_bg.wasm sotto_wasm.d.ts sotto_wasm_bg.wasm.d.ts; do
      cp "$GEN/web/$f" "$PKG/web/"
      cp "$GEN/node/$f" "$PKG/node/"
    done
    PKG_VERSION=$(sed -n 's/^  "version": "\(.*\)",$/\1/p' "$PKG/package.json")
    CRATE_VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
    [ "$PKG_VERSION" = "$CRATE_VERSION" ] ||
      { echo "wasm.sh: bindings/wasm/npm/package.json is $PKG_VERSION, the workspace $CRATE_VERSION" >&2; exit 1; }
    if missing node; then
      skip npm-pack "no node/npm"
    else
      (cd "$PKG" && npm pack --silent --pack-destination "$GEN" >/dev/null)
      echo "$GEN/sotto-wasm-$PKG_VERSION.tgz: $(stat -c %s "$GEN/sotto-wasm-$PKG_VERSION.tgz") bytes"
    fi
  fi
fi

# ---------------------------------------------------------------- IndexedDB store in Chromium
if want idb; then
  if missing wasm-bindgen || missing chromium; then
    skip idb "needs wasm-bindgen-test-runner and chromium + chromedriver"
  else
    step "IndexedDB store conformance in headless Chromium"
    # --release: sotto-sdk (feature web) and its dependencies are the ones the release
    # build of sotto-wasm above compiled, instead of a second wasm32 tree.
    timed idb env CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER="$WASM_BINDGEN_TEST_RUNNER" \
      CHROMEDRIVER="$CHROMEDRIVER" \
      cargo test --locked --release -p sotto-sdk --no-default-features --features web \
      --target wasm32-unknown-unknown --test idb_store
  fi
fi

# ---------------------------------------------------------------- relay
RUN_NODE=false
RUN_E2E=false
if want node; then
  if missing node || missing npm-packages; then skip node "needs node 20.10+ and the npm packages"
  elif [ ! -f "$GEN/node/sotto_wasm.js" ]; then skip node "no nodejs package in $GEN/node (run the build part)"
  else RUN_NODE=true; fi
fi
if want e2e; then
  if missing node || missing npm-packages || missing chromium; then
    skip e2e "needs node, playwright-core and chromium"
  elif [ ! -f "$WEB_WASM" ]; then skip e2e "no web package in $GEN/web (run the build part)"
  else RUN_E2E=true; fi
fi

if $RUN_NODE || $RUN_E2E; then
  # The benchmark uses a release relay; the tests, the debug build `cargo test` made.
  PROFILE=debug
  if [ -n "${SOTTO_BENCH:-}" ]; then PROFILE=release; fi
  step "build sotto-relay and the sotto CLI ($PROFILE)"
  if [ "$PROFILE" = release ]; then cargo build --locked --release -p sotto-relay -p sotto-sdk --bins
  else build_workspace_debug; fi

  RUN_DIR=$(mktemp -d)
  # The e2e test runs a copy of the CLI taken now (a target directory shared with other
  # checkouts may get another build of `sotto` meanwhile), or $SOTTO_TEST_CLI when set.
  cp "${SOTTO_TEST_CLI:-$TARGET/$PROFILE/sotto}" "$RUN_DIR/sotto"
  start_relay "$TARGET/$PROFILE/sotto-relay" "$RUN_DIR"
  step "sotto-relay at $SOTTO_RELAY_URL"
fi

# ---------------------------------------------------------------- node
if $RUN_NODE; then
  step "node tests (nodejs package, fake-indexeddb, the relay)"
  timed node "$SOTTO_NODE" "${NODE_WS[@]}" --test bindings/wasm/tests/node/*.test.mjs

  step "the npm package in a new node app: the TypeScript echo bot, compiled against its types"
  TGZ=$(ls "$GEN"/sotto-wasm-*.tgz 2>/dev/null | head -n1 || true)
  [ -n "$TGZ" ] || { echo "wasm.sh: no packed npm package in $GEN: run \`scripts/wasm.sh build node\`" >&2; exit 1; }
  APP=$RUN_DIR/npm-app
  mkdir -p "$APP"
  cp bindings/wasm/examples/echo-bot.ts "$APP/"
  echo '{ "name": "echo-bot", "private": true, "type": "module" }' >"$APP/package.json"
  (cd "$APP" && npm install --silent --no-audit --no-fund --prefer-offline "$TGZ")
  NM=$ROOT/bindings/wasm/node_modules
  (cd "$APP" && "$SOTTO_NODE" "$NM/typescript/bin/tsc" --module nodenext --moduleResolution nodenext --target es2022 \
    --strict --noEmitOnError --typeRoots "$NM/@types" --types node echo-bot.ts)
  timed "typescript echo bot" "$SOTTO_NODE" "${NODE_WS[@]}" bindings/wasm/tests/node/check-echo-bot.mjs \
    "$RUN_DIR/echo-bot-store" "$SOTTO_NODE" "${NODE_WS[@]}" "$APP/echo-bot.js"
  if [ -n "${SOTTO_BENCH:-}" ]; then
    step "benchmark: 1,000 messages between two node clients"
    SOTTO_BENCH_OUT=$TARGET/wasm-bench.txt "$SOTTO_NODE" "${NODE_WS[@]}" --test bindings/wasm/tests/node/bench.mjs
  fi
fi

# ---------------------------------------------------------------- browser e2e
if $RUN_E2E; then
  step "browser end to end: the demo page in headless Chromium and the sotto CLI"
  mkdir -p "$ARTIFACTS"
  SHOT=$ARTIFACTS/web-demo.png
  rm -f "$SHOT"
  e2e_status=0
  timed e2e env SOTTO_CLI="$RUN_DIR/sotto" SOTTO_SCREENSHOT="$SHOT" CHROMIUM="$CHROMIUM" \
    "$SOTTO_NODE" --test bindings/wasm/tests/e2e/demo.mjs || e2e_status=$?
  [ -f "$SHOT" ] && echo "wasm: screenshot of the demo: $SHOT"
  if [ "$e2e_status" != 0 ]; then
    echo "wasm: the browser e2e test failed; relay log:" >&2
    tail -n 30 "$RUN_DIR/relay.log" >&2 || true
    exit "$e2e_status"
  fi

  step "Web Push in headless Chromium: a local push service, the relay's push, the demo's service worker"
  timed "web push" env SOTTO_CLI="$RUN_DIR/sotto" SOTTO_RELAY_BIN="$TARGET/$PROFILE/sotto-relay" CHROMIUM="$CHROMIUM" \
    "$SOTTO_NODE" --test bindings/wasm/tests/e2e/push.mjs
fi

if [ ${#SKIPPED[@]} -gt 0 ]; then
  echo "wasm: SKIPPED: ${SKIPPED[*]} (see above)" >&2
fi
echo "wasm: done"
