#!/usr/bin/env bash
# Builds sotto-ffi, generates its Swift, Kotlin and Python bindings into
# bindings/generated/ (git-ignored) and runs each language's tests and its echo bot
# (bindings/uniffi/examples/) against one local sotto-relay.
#
#   scripts/bindings.sh                      install what is missing, build, test all three
#   scripts/bindings.sh python kotlin        only these languages
#   scripts/bindings.sh --install-only       only install the toolchains
#   SOTTO_BENCH=1 scripts/bindings.sh        also run the benchmarks (docs/benchmarks.md)
#
# Toolchains are installed idempotently: JNA and debootstrap from apt, kotlinc from the
# npm package `kotlin-compiler`, Swift (`swiftlang`) in a Debian trixie chroot. They are
# cached under $SOTTO_CACHE (default ~/.cache/sotto) and reused. With CI=true a toolchain
# that cannot be installed fails the run; elsewhere that language is skipped, loudly.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

KOTLIN_VERSION=2.4.20
CACHE=${SOTTO_CACHE:-$HOME/.cache/sotto}
GEN=$ROOT/bindings/generated
TESTS=$ROOT/bindings/uniffi/tests
EXAMPLES=$ROOT/bindings/uniffi/examples
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET" in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
IN_CI=false
[ "${CI:-}" = true ] && IN_CI=true

INSTALL_ONLY=false
LANGS=()
for a in "$@"; do
  case "$a" in
    --install-only) INSTALL_ONLY=true ;;
    python | kotlin | swift) LANGS+=("$a") ;;
    *) echo "bindings.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done
[ ${#LANGS[@]} -eq 0 ] && LANGS=(python kotlin swift)

step() { step_header 'bindings: ' "$@"; }
want() { [[ " ${LANGS[*]} " == *" $1 "* ]]; }
SKIPPED=()
unavailable() { # language, reason
  if $IN_CI; then
    echo "bindings.sh: $1 toolchain unavailable ($2), and CI=true: failing" >&2
    exit 1
  fi
  skip_banner "SKIPPING the $1 binding tests: $2"
  SKIPPED+=("$1")
}

# ---------------------------------------------------------------- cleanup
RELAY_PID=
MOUNTED=()
CHROOT_BUILD=
RUN_DIR=
cleanup() {
  if [ -n "$RELAY_PID" ]; then
    kill "$RELAY_PID" 2>/dev/null || true
    wait "$RELAY_PID" 2>/dev/null || true
  fi
  # Only what this run mounted: another run may be using the chroot.
  for m in ${MOUNTED[@]+"${MOUNTED[@]}"}; do
    umount -R "$m" 2>/dev/null || umount -lR "$m" || true
  done
  if [ -n "$CHROOT_BUILD" ]; then rm -rf "$CHROOT_BUILD"; fi
  if [ -n "$RUN_DIR" ]; then rm -rf "$RUN_DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- toolchains
MATURIN_VERSION=1.16.0
MATURIN_VENV=$CACHE/maturin-$MATURIN_VERSION
# The wheel is built with maturin from PyPI, in a virtual environment of its own (cached).
python_ready() {
  command -v python3 >/dev/null || { echo "python3 not found" >&2; return 1; }
  if [ ! -x "$MATURIN_VENV/bin/maturin" ]; then
    rm -rf "$MATURIN_VENV"
    python3 -m venv "$MATURIN_VENV" || return 1
    "$MATURIN_VENV/bin/pip" install --quiet --disable-pip-version-check "maturin==$MATURIN_VERSION" || return 1
  fi
}

KOTLIN_HOME=$CACHE/kotlin-$KOTLIN_VERSION/node_modules/kotlin-compiler
JNA_JAR=/usr/share/java/jna.jar
kotlin_install() {
  command -v java >/dev/null || { echo "no java (a JDK 17 or newer is needed)" >&2; return 1; }
  apt_install libjna-java || return 1
  if [ ! -x "$KOTLIN_HOME/bin/kotlinc-jvm" ]; then
    command -v npm >/dev/null || { echo "no npm" >&2; return 1; }
    mkdir -p "$CACHE/kotlin-$KOTLIN_VERSION"
    npm install --silent --no-audit --no-fund --prefix "$CACHE/kotlin-$KOTLIN_VERSION" \
      "kotlin-compiler@$KOTLIN_VERSION" || return 1
  fi
  [ -f "$JNA_JAR" ] && [ -f "$KOTLIN_HOME/lib/kotlinx-coroutines-core-jvm.jar" ]
}

TRIXIE=$CACHE/trixie
swift_install() {
  [ -f "$TRIXIE/.sotto-swift-ready" ] && return 0
  [ "$(id -u)" = 0 ] || { echo "the Swift chroot needs root" >&2; return 1; }
  apt_install debootstrap || return 1
  local mirror
  mirror=$(grep -rhE '^[^#]*https?://' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
    grep -oE 'https?://[^ ]+/debian/?' | head -n1 || true)
  [ -n "$mirror" ] || { echo "no Debian mirror in the apt sources" >&2; return 1; }
  if [ ! -x "$TRIXIE/usr/bin/apt-get" ]; then
    rm -rf "$TRIXIE"
    mkdir -p "$CACHE"
    echo "swift: debootstrap trixie from $mirror (a few minutes, once)"
    debootstrap --variant=minbase trixie "$TRIXIE" "$mirror" >"$CACHE/debootstrap.log" 2>&1 ||
      { tail -n 20 "$CACHE/debootstrap.log" >&2; return 1; }
  fi
  mount_chroot
  cp /etc/resolv.conf "$TRIXIE/etc/"
  chroot "$TRIXIE" bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends swiftlang libc6-dev >/dev/null' || return 1
  touch "$TRIXIE/.sotto-swift-ready"
}
mount_chroot() {
  if ! mountpoint -q "$TRIXIE/proc"; then
    MOUNTED+=("$TRIXIE/proc")
    mount -t proc proc "$TRIXIE/proc"
  fi
  if ! mountpoint -q "$TRIXIE/dev"; then
    MOUNTED+=("$TRIXIE/dev")
    mount --rbind /dev "$TRIXIE/dev"
    mount --make-rslave "$TRIXIE/dev"
  fi
  if ! mountpoint -q "$TRIXIE/sys"; then
    MOUNTED+=("$TRIXIE/sys")
    mount -t sysfs sys "$TRIXIE/sys"
  fi
}

step "toolchains"
want python && { python_ready || unavailable python "python3 or maturin $MATURIN_VERSION (pip) unavailable"; }
if want kotlin; then
  if kotlin_install; then echo "kotlinc $KOTLIN_VERSION, $(basename "$JNA_JAR")"
  else unavailable kotlin "could not install kotlinc (npm kotlin-compiler) or JNA (libjna-java)"; fi
fi
if want swift; then
  if swift_install; then echo "swift: chroot at $TRIXIE"
  else unavailable swift "could not set up the Debian trixie chroot with swiftlang"; fi
fi
$INSTALL_ONLY && exit 0
run() { want "$1" && [[ " ${SKIPPED[*]-} " != *" $1 "* ]]; }

# ---------------------------------------------------------------- build and generate
step "build sotto-ffi, uniffi-bindgen and sotto-relay"
# Benchmarks use release builds of the library and relay. uniffi-bindgen comes from the
# workspace's debug build, in the same cargo run as the library, so it costs no build of
# its own; its dependencies (uniffi_bindgen, askama, ...) are optimized in debug too
# (`[profile.dev.package."*"]`), so it generates as fast as a release build would.
PROFILE=debug
build_workspace_debug
if [ -n "${SOTTO_BENCH:-}" ]; then
  PROFILE=release
  cargo build --locked --release -p sotto-ffi --lib
  cargo build --locked --release -p sotto-relay
fi
BINDGEN=$TARGET/debug/uniffi-bindgen
LIB=$TARGET/$PROFILE/libsotto_ffi.so
[ -f "$LIB" ] || { echo "bindings.sh: $LIB was not built" >&2; exit 1; }

step "generate Swift, Kotlin and Python into bindings/generated"
# Only this script's languages: bindings/generated/wasm is scripts/wasm.sh's.
rm -rf "$GEN/swift" "$GEN/kotlin" "$GEN/python"
for l in swift kotlin python; do
  "$BINDGEN" generate "$LIB" --language "$l" --out-dir "$GEN/$l" --no-format
done
cp "$LIB" "$GEN/python/"

# ---------------------------------------------------------------- relay
RUN_DIR=$(mktemp -d)
start_relay "$TARGET/$PROFILE/sotto-relay" "$RUN_DIR"
step "sotto-relay at $SOTTO_RELAY_URL"

# ---------------------------------------------------------------- tests
timed() { timed_run bindings "$@"; } # label, command...

if run python; then
  step "Python wheel (maturin) installed into a fresh virtual environment"
  # What a Python developer gets: `pip install` of the wheel, `import sotto_ffi` with no
  # PYTHONPATH. Built with the dev profile here (the debug build above is reused); a
  # release wheel is `maturin build --release` (docs/bindings.md, "Python").
  rm -rf "$TARGET/wheels"
  (cd bindings/uniffi && "$MATURIN_VENV/bin/maturin" build --profile dev --locked --quiet --out "$TARGET/wheels")
  WHEEL=$(ls "$TARGET"/wheels/sotto-*.whl)
  PY_VENV=$RUN_DIR/venv
  python3 -m venv "$PY_VENV"
  "$PY_VENV/bin/pip" install --quiet --disable-pip-version-check --no-index "$WHEEL"
  PY=$PY_VENV/bin/python
  "$PY" -c 'import sotto_ffi, sys; assert "site-packages" in sotto_ffi.__file__, sotto_ffi.__file__' ||
    { echo "bindings.sh: sotto_ffi was not imported from the installed wheel" >&2; exit 1; }
  echo "installed $(basename "$WHEEL")"

  step "Python tests"
  export SOTTO_TEST_DIR=$RUN_DIR/python
  mkdir -p "$SOTTO_TEST_DIR"
  timed python "$PY" "$TESTS/python/test_sotto.py"
  "$PY" "$TESTS/python/check_docs.py" docs/bindings.md
  timed "python echo bot" "$PY" "$EXAMPLES/check_echo_bot.py" python \
    "$PY" "$EXAMPLES/python/echo_bot.py" "$SOTTO_RELAY_URL" "$SOTTO_TEST_DIR/echo-bot.db" 2
  if [ -n "${SOTTO_BENCH:-}" ]; then
    env PYTHONPATH="$GEN/python" python3 "$TESTS/python/bench_sotto.py"
  fi
fi

if run kotlin; then
  step "Kotlin tests"
  CP=$JNA_JAR:$KOTLIN_HOME/lib/kotlinx-coroutines-core-jvm.jar
  KT_OUT=$RUN_DIR/kotlin
  mkdir -p "$KT_OUT/data"
  # The generated bindings compile once per version of the generated source (~40 s).
  KT_SRC=$GEN/kotlin/uniffi/sotto_ffi/sotto_ffi.kt
  BINDINGS_JAR=$CACHE/kotlin-bindings/$(sha256sum "$KT_SRC" | cut -c1-16).jar
  if [ ! -f "$BINDINGS_JAR" ]; then
    mkdir -p "$(dirname "$BINDINGS_JAR")"
    "$KOTLIN_HOME/bin/kotlinc-jvm" -nowarn -cp "$CP" "$KT_SRC" -d "$BINDINGS_JAR.tmp.jar"
    mv "$BINDINGS_JAR.tmp.jar" "$BINDINGS_JAR"
  fi
  "$KOTLIN_HOME/bin/kotlinc-jvm" -nowarn -cp "$CP:$BINDINGS_JAR" "$TESTS"/kotlin/*.kt -d "$KT_OUT/t.jar"
  KT_RUN=(java -Djna.library.path="$(dirname "$LIB")"
    -cp "$KT_OUT/t.jar:$BINDINGS_JAR:$CP:$KOTLIN_HOME/lib/kotlin-stdlib.jar")
  export SOTTO_TEST_DIR=$KT_OUT/data
  timed kotlin "${KT_RUN[@]}" TestSottoKt
  "$KOTLIN_HOME/bin/kotlinc-jvm" -nowarn -cp "$CP:$BINDINGS_JAR" "$EXAMPLES/kotlin/EchoBot.kt" -d "$KT_OUT/echo-bot.jar"
  timed "kotlin echo bot" env PYTHONPATH="$GEN/python" python3 "$EXAMPLES/check_echo_bot.py" kotlin \
    java -Djna.library.path="$(dirname "$LIB")" \
    -cp "$KT_OUT/echo-bot.jar:$BINDINGS_JAR:$CP:$KOTLIN_HOME/lib/kotlin-stdlib.jar" \
    EchoBotKt "$SOTTO_RELAY_URL" "$SOTTO_TEST_DIR/echo-bot.db" 2
  if [ -n "${SOTTO_BENCH:-}" ]; then
    "${KT_RUN[@]}" BenchSottoKt
  fi
fi

if run swift; then
  step "Swift tests"
  mount_chroot
  B=/build-$$
  CHROOT_BUILD=$TRIXIE$B
  mkdir -p "$CHROOT_BUILD/data"
  # The library is linked rather than copied where it can be (the chroot is usually on the same file system): a
  # debug build is over 100 MB.
  ln "$LIB" "$CHROOT_BUILD/" 2>/dev/null || cp "$LIB" "$CHROOT_BUILD/"
  cp "$GEN/swift/"* "$TESTS/swift/main.swift" "$TESTS/swift/errors.swift" "$TESTS/swift/live.swift" \
    "$TESTS/swift/media.swift" "$CHROOT_BUILD/"
  mkdir -p "$CHROOT_BUILD/echo"
  cp "$EXAMPLES/swift/main.swift" "$CHROOT_BUILD/echo/"
  # The relay listens on the host's loopback, which the chroot shares.
  timed swift chroot "$TRIXIE" env B="$B" SOTTO_RELAY_URL="$SOTTO_RELAY_URL" SOTTO_TEST_DIR="$B/data" bash -c \
    'cd "$B" && swiftc -module-name SottoTests -module-cache-path "$B/mc" -I "$B" \
       -Xcc -fmodule-map-file="$B/sotto_ffiFFI.modulemap" -L "$B" -lsotto_ffi \
       sotto_ffi.swift errors.swift live.swift media.swift main.swift -o sotto-tests && LD_LIBRARY_PATH="$B" ./sotto-tests'
  chroot "$TRIXIE" env B="$B" bash -c \
    'cd "$B" && swiftc -module-name EchoBot -module-cache-path "$B/mc" -I "$B" \
       -Xcc -fmodule-map-file="$B/sotto_ffiFFI.modulemap" -L "$B" -lsotto_ffi \
       sotto_ffi.swift echo/main.swift -o echo-bot'
  mkdir -p "$RUN_DIR/swift-echo"
  timed "swift echo bot" env PYTHONPATH="$GEN/python" SOTTO_TEST_DIR="$RUN_DIR/swift-echo" \
    python3 "$EXAMPLES/check_echo_bot.py" swift \
    chroot "$TRIXIE" env LD_LIBRARY_PATH="$B" "$B/echo-bot" "$SOTTO_RELAY_URL" "$B/data/echo-bot.db" 2
  if [ -n "${SOTTO_BENCH:-}" ]; then
    mkdir -p "$CHROOT_BUILD/bench"
    cp "$TESTS/swift-bench/main.swift" "$CHROOT_BUILD/bench/"
    chroot "$TRIXIE" env B="$B" SOTTO_RELAY_URL="$SOTTO_RELAY_URL" SOTTO_TEST_DIR="$B/data" \
      SOTTO_BENCH_CALLS="${SOTTO_BENCH_CALLS:-}" SOTTO_BENCH_MESSAGES="${SOTTO_BENCH_MESSAGES:-}" bash -c \
      'cd "$B" && swiftc -O -module-name SottoBench -module-cache-path "$B/mc" -I "$B" \
         -Xcc -fmodule-map-file="$B/sotto_ffiFFI.modulemap" -L "$B" -lsotto_ffi \
         sotto_ffi.swift bench/main.swift -o sotto-bench && LD_LIBRARY_PATH="$B" ./sotto-bench'
  fi
fi

if [ ${#SKIPPED[@]} -gt 0 ]; then
  echo "bindings: SKIPPED: ${SKIPPED[*]} (see above)" >&2
fi
echo "bindings: done"
