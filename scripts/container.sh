#!/usr/bin/env bash
# Builds the relay's container image (deploy/container/Dockerfile) with podman and runs a
# smoke test in it: the relay starts as uid 10001 on SQLite in its volume, answers
# /readyz and a challenge, stops cleanly on SIGTERM and starts again on the same data.
#
#   scripts/container.sh                  compile in the Dockerfile's build stage
#   scripts/container.sh --prebuilt BIN   pack BIN instead (scripts/test.sh passes the relay
#                                         binary its tests built, to keep the suite short)
#
# No registry is needed. The base images the Dockerfile names are made here when podman
# does not have them: docker.io/library/debian:trixie-slim from a debootstrap (minbase)
# of trixie, and, for a compile, docker.io/library/rust:1.95.0-slim-trixie from that
# base with gcc and this machine's Rust toolchain. They are cached under
# $SOTTO_CACHE/images (default ~/.cache/sotto). With CI=true anything missing fails the
# run; elsewhere the test is skipped, loudly.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

CACHE=${SOTTO_CACHE:-$HOME/.cache/sotto}/images
BASE=docker.io/library/debian:trixie-slim
RUST=docker.io/library/rust:1.95.0-slim-trixie
IMAGE=localhost/sotto-relay:test
PREBUILT=
while [ $# -gt 0 ]; do
  case "$1" in
    --prebuilt) PREBUILT=$2; shift 2 ;;
    *) echo "container.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

unavailable() {
  if [ "${CI:-}" = true ]; then
    echo "container.sh: $1, and CI=true: failing" >&2
    exit 1
  fi
  skip_banner "SKIPPING the container image test: $1"
  exit 0
}

[ "$(id -u)" = 0 ] || unavailable "podman and debootstrap need root here"
apt_install podman runc debootstrap || unavailable "podman, runc or debootstrap cannot be installed"

CONF=$(mktemp -d)
NAME=sotto-smoke-$$
VOLUME=sotto-smoke-$$
cleanup() {
  podman --runtime runc rm -f "$NAME" >/dev/null 2>&1 || true
  podman volume rm -f "$VOLUME" >/dev/null 2>&1 || true
  rm -rf "$CONF"
}
trap cleanup EXIT
# runc, and no cgroup limits: crun fails on hybrid cgroups.
printf '[containers]\ndefault_ulimits = []\npids_limit = 0\n[engine]\ncgroup_manager = "cgroupfs"\n' >"$CONF/containers.conf"
export CONTAINERS_CONF=$CONF/containers.conf
pm() { podman --runtime runc "$@"; }

mirror() {
  grep -rhE '^[^#]*https?://' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
    grep -oE 'https?://[^ ]+/debian/?' | head -n1 || true
}

# A trixie root file system made by debootstrap, packed once into $CACHE/NAME.tar.
rootfs() { # name, extra packages (comma-separated, or empty)
  local tar=$CACHE/$1.tar dir
  if [ ! -f "$tar" ]; then
    local m
    m=$(mirror)
    [ -n "$m" ] || unavailable "no Debian mirror in the apt sources"
    dir=$(mktemp -d)
    mkdir -p "$CACHE"
    echo "container: debootstrap trixie ($1) from $m (a minute or two, once)"
    debootstrap --variant=minbase ${2:+--include="$2"} trixie "$dir" "$m" >"$CACHE/$1.log" 2>&1 ||
      { tail -n 20 "$CACHE/$1.log" >&2; rm -rf "$dir"; unavailable "debootstrap failed"; }
    # What a slim image leaves out: package lists, caches, documentation.
    rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/* "$dir"/usr/share/doc/* \
      "$dir"/usr/share/man/* "$dir"/usr/share/info/*
    tar -C "$dir" -cf "$tar.part" . && mv "$tar.part" "$tar"
    rm -rf "$dir"
  fi
}

if ! pm image exists "$BASE"; then
  rootfs trixie-minbase ""
  pm import --quiet "$CACHE/trixie-minbase.tar" "$BASE" >/dev/null
fi

CONTEXT=$ROOT
ARGS=()
if [ -n "$PREBUILT" ]; then
  [ -x "$PREBUILT" ] || { echo "container.sh: $PREBUILT is not an executable" >&2; exit 2; }
  CONTEXT=$(mktemp -d)
  mkdir "$CONTEXT/prebuilt"
  # Without its debug information (a test build carries a lot), when strip is at hand.
  strip -o "$CONTEXT/prebuilt/sotto-relay" "$PREBUILT" 2>/dev/null || cp "$PREBUILT" "$CONTEXT/prebuilt/sotto-relay"
  # The build stage then only copies the binary: the base image serves as its image.
  ARGS+=(--build-arg "RUST_IMAGE=$BASE")
else
  if ! pm image exists "$RUST"; then
    rootfs trixie-gcc "gcc,libc6-dev"
    SYSROOT=$(rustc --print sysroot)
    dir=$(mktemp -d)
    mkdir -p "$dir/usr/local/rust/lib/rustlib"
    cp -a "$SYSROOT/bin" "$dir/usr/local/rust/"
    find "$SYSROOT/lib" -maxdepth 1 -type f -exec cp -a {} "$dir/usr/local/rust/lib/" \;
    cp -a "$SYSROOT/lib/rustlib/x86_64-unknown-linux-gnu" "$SYSROOT/lib/rustlib/etc" \
      "$dir/usr/local/rust/lib/rustlib/" 2>/dev/null || true
    cat "$CACHE/trixie-gcc.tar" >"$dir.tar"
    tar -C "$dir" -rf "$dir.tar" ./usr/local/rust
    pm import --quiet \
      --change "ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
      --change "ENV CARGO_HOME=/usr/local/cargo" \
      "$dir.tar" "$RUST" >/dev/null
    rm -rf "$dir" "$dir.tar"
  fi
  # Crates come from this machine's cargo cache, so the build needs no network.
  ARGS+=(--volume "${CARGO_HOME:-$HOME/.cargo}/registry:/usr/local/cargo/registry" --build-arg CARGO_FLAGS=--offline)
fi

step_header 'container: ' "build $IMAGE"
pm build --quiet --pull=never -f "$ROOT/deploy/container/Dockerfile" "${ARGS[@]}" -t "$IMAGE" "$CONTEXT" >/dev/null
[ "$CONTEXT" = "$ROOT" ] || rm -rf "$CONTEXT"
# The build stage's image and the image this tag named before: nothing refers to them.
pm image prune -f >/dev/null
SIZE=$(pm image inspect --format '{{.Size}}' "$IMAGE")
echo "container: image $IMAGE, $((SIZE / 1024 / 1024)) MiB"

step_header 'container: ' "smoke test"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
start() {
  pm run -d --name "$NAME" --network host -v "$VOLUME:/var/lib/sotto-relay" \
    -e SOTTO_LISTEN="127.0.0.1:$PORT" -e SOTTO_PUBLIC_URL="$URL" "$IMAGE" >/dev/null
  local i
  for i in $(seq 1 200); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/readyz" || true)" = 200 ]; then return 0; fi
    if [ "$(pm inspect --format '{{.State.Running}}' "$NAME")" != true ]; then break; fi
    sleep 0.1
  done
  pm logs "$NAME" >&2 || true
  echo "container.sh: the relay in the container did not become ready" >&2
  exit 1
}
start
USER_ID=$(pm exec "$NAME" id -u)
[ "$USER_ID" = 10001 ] || { echo "container.sh: the relay runs as uid $USER_ID, not 10001" >&2; exit 1; }
# A challenge: version (1) ‖ nonce (32) ‖ relay id (32) ‖ timestamp (8).
LEN=$(curl -sf "$URL/v1/auth/challenge" | wc -c)
[ "$LEN" = 73 ] || { echo "container.sh: a challenge of $LEN bytes" >&2; exit 1; }
pm stop --time 20 "$NAME" >/dev/null
CODE=$(pm inspect --format '{{.State.ExitCode}}' "$NAME")
[ "$CODE" = 0 ] || { pm logs "$NAME" >&2; echo "container.sh: exit code $CODE after SIGTERM" >&2; exit 1; }
pm logs "$NAME" 2>&1 | grep -q "relay stopped" || { echo "container.sh: no clean stop in the log" >&2; exit 1; }
pm rm "$NAME" >/dev/null
# Again on the same volume: the database the first run made is there and opens.
start
pm exec "$NAME" test -s /var/lib/sotto-relay/relay.db || { echo "container.sh: no database in the volume" >&2; exit 1; }
echo "container: the relay ran as uid 10001, answered, stopped cleanly on SIGTERM and started again on its volume"
