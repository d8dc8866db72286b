#!/usr/bin/env bash
# Installs what the build and the tests need. Idempotent: each step checks first.
set -euo pipefail
cd "$(dirname "$0")/.."

have_target() { rustup target list --installed 2>/dev/null | grep -qx "$1"; }
if ! have_target wasm32-unknown-unknown; then
  echo "setup: adding rustup target wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown
fi
for c in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
    echo "setup: adding rustup component $c"
    rustup component add "$c"
  fi
done

# moto's S3 server, for the relay's S3 blob-store test (relay/server/tests/blobs_s3.rs),
# in a virtualenv under the cache: $SOTTO_CACHE/moto-5.2.5/bin/moto_server.
MOTO_VERSION=5.2.5
MOTO_DIR=${SOTTO_CACHE:-$HOME/.cache/sotto}/moto-$MOTO_VERSION
if [ ! -x "$MOTO_DIR/bin/moto_server" ]; then
  echo "setup: installing moto $MOTO_VERSION (S3 test server) in $MOTO_DIR"
  python3 -m venv "$MOTO_DIR"
  "$MOTO_DIR/bin/pip" install --quiet "moto[server]==$MOTO_VERSION"
fi

# systemd-analyze, for the check of deploy/systemd/sotto-relay.service
# (relay/server/tests/ops_files.rs, which fails without it when CI=true).
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
if ! command -v systemd-analyze >/dev/null; then
  echo "setup: installing systemd (systemd-analyze)"
  apt_install systemd || echo "setup: could not install systemd: the unit check will be skipped" >&2
fi

# nats-server, the bus of the three-node cluster test (relay/server/tests/cluster.rs, which
# fails without it when CI=true).
if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ]; then
  echo "setup: installing nats-server"
  apt_install nats-server || echo "setup: could not install nats-server: the cluster test will be skipped" >&2
fi
