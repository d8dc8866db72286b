#!/usr/bin/env bash
# The soak run: a release sotto-relay under a steady load for an hour, sampled every 10 s,
# and a chart of the samples (docs/benchmarks.md, "Soak"). Not part of the test suite.
#
#   relay/loadgen/soak.sh [sqlite|postgres]          (default: sqlite)
#
# Environment (defaults in brackets): DURATION [3600] seconds of sending, RATE [5000]
# envelopes/s in total, PAIRS [5000] sender/receiver pairs (2 x PAIRS connected devices),
# EVERY [10] seconds per sample, ENVELOPE [256] bytes, SKIP_BUILD=1, OUT [target/soak].
#
# Writes OUT/soak.csv (one row per sample: t_s, sent, stored, delivered, p50_ms, p99_ms,
# rss_kib, open_files, write_queue, mailbox_envelopes, connections), OUT/soak.svg (the
# chart, drawn by relay/loadgen/soak_chart.py) and the relay's and generator's logs.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"

BACKEND=${1:-sqlite}
case "$BACKEND" in sqlite | postgres) ;; *) echo "usage: $0 [sqlite|postgres]" >&2; exit 2 ;; esac
DURATION=${DURATION:-3600}
RATE=${RATE:-5000}
PAIRS=${PAIRS:-5000}
EVERY=${EVERY:-10}
ENVELOPE=${ENVELOPE:-256}
OUT=${OUT:-$ROOT/target/soak}
mkdir -p "$OUT"

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -p sotto-relay -p sotto-loadgen
fi
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
RELAY="$TARGET/release/sotto-relay"
LOADGEN="$TARGET/release/sotto-loadgen"

WORK=$(mktemp -d /tmp/sotto-soak.XXXXXX)
RELAY_PID=
PG_DIR=
cleanup() {
  if [ -n "$RELAY_PID" ]; then kill -TERM "$RELAY_PID" 2>/dev/null || true; wait "$RELAY_PID" 2>/dev/null || true; fi
  if [ -n "$PG_DIR" ]; then scripts/pg.sh stop "$PG_DIR" >/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
MPORT=$(free_port)
{ printf 'log_level = "warn"\nmetrics_listen = "127.0.0.1:%s"\n' "$MPORT"; cat relay/loadgen/limits.toml; } >"$WORK/relay.toml"

DB=()
if [ "$BACKEND" = postgres ]; then
  PG_DIR=$(mktemp -d /tmp/sotto-soak-pg.XXXXXX)
  DB=(--database-url "$(scripts/pg.sh start "$PG_DIR")")
fi
"$RELAY" --config "$WORK/relay.toml" --listen "127.0.0.1:$PORT" --public-url "http://127.0.0.1:$PORT" \
  --data-dir "$WORK/data" "${DB[@]}" >"$OUT/relay.log" 2>&1 &
RELAY_PID=$!

echo "soak: $BACKEND, $RATE envelopes/s over $PAIRS pairs ($((2 * PAIRS)) devices), $DURATION s, a sample every $EVERY s; load average $(cut -d' ' -f1-3 /proc/loadavg)"
"$LOADGEN" --url "http://127.0.0.1:$PORT" --mode throughput --relay-pid "$RELAY_PID" \
  --pairs "$PAIRS" --rate "$RATE" --duration "$DURATION" --envelope-bytes "$ENVELOPE" \
  --ramp-secs 30 --grace-secs 60 --report-secs "$EVERY" --metrics-addr "127.0.0.1:$MPORT" \
  --max-runtime-secs $((DURATION + 900)) 2>&1 | tee "$OUT/loadgen.log"
kill -0 "$RELAY_PID" 2>/dev/null || { echo "soak: the relay exited; see $OUT/relay.log" >&2; exit 1; }

grep '^SOAK ' "$OUT/loadgen.log" | sed 's/^SOAK //' >"$OUT/soak.csv"
python3 relay/loadgen/soak_chart.py "$OUT/soak.csv" "$OUT/soak.svg" \
  "sotto-relay soak: $BACKEND, $RATE envelopes/s, $((2 * PAIRS)) devices, $DURATION s"
echo "soak: $OUT/soak.csv, $OUT/soak.svg"
