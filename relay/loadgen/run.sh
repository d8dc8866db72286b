#!/usr/bin/env bash
# Measures the relay with sotto-loadgen: idle RSS per connection, 1:1 throughput and
# latency, offline catch-up, and (MODES=fanout) a shared-body fan-out. Builds release binaries, starts a fresh sotto-relay per mode
# (SQLite in a temp dir, or a database on a throwaway PostgreSQL from scripts/pg.sh), all on
# 127.0.0.1, and stops everything on exit.
#
#   relay/loadgen/run.sh [sqlite|postgres|both|cluster]   (default: both)
#
# `cluster`: NODES [3] relay nodes on one PostgreSQL database and a nats-server (cluster
# mode, docs/self-hosting.md "Several nodes"), all on this machine; the load generator's
# connections take the nodes in turn.
#
# Environment (defaults in brackets):
#   MODES="idle throughput catchup"   IDLE_N [10000]   PAIRS [1000]
#   RATES ["1000 2000 10000"]: target total envelopes/s, one throughput run (fresh relay) each
#   DURATION [20]   ENVELOPE [256]   QUEUED [100000]   ACK_BATCH [mode default]
#   RAMP [10] / RAMP_TP [5]: client start offsets are spread over this many seconds (idle /
#   throughput)
#   LOAD_MAX [1.2]  LOAD_WAIT [1200]: before each backend, wait (polling every 60 s, at most
#   LOAD_WAIT seconds) for the 1-minute load average to fall below LOAD_MAX; LOAD_WAIT=0 skips.
#   PG_FILL [sql]: on PostgreSQL, catch-up's backlog is inserted with SQL (psql) instead of
#   through the relay, whose enqueue slows with mailbox depth (100,000 would take >10 min);
#   PG_FILL=relay queues it through the relay as on SQLite.
#   SKIP_BUILD=1 uses the binaries already in target/release.
#   BACKOFF [0]: 1 makes throughput senders pause after a BUSY or RATE_LIMITED as the SDK
#   does (--backoff), the first pause BACKOFF_MS [200] ms; by default every scheduled send
#   goes out (open loop).
#   RELAY_LIMITS [""]: more lines for the relay's [limits], e.g. "send_queue_target_ms = 0"
#   (the overload control off).
#   PG_FSYNC [off]: fsync setting of the throwaway PostgreSQL cluster (on = durable commits).
#   OUT [target/loadgen]: logs and results.txt are kept there.
#   ACCESS_KEYS [0]: 1 makes throughput receivers set an access verifier and senders present
#   the key (every send takes the relay's access check, docs/protocol.md §13.8).
#   fanout (not in the default MODES): FANOUT_ACCOUNTS [1000] x FANOUT_DEVICES [2] mailboxes,
#   all connected; FANOUT_BODY [1024] body bytes, FANOUT_HEAD [0] head bytes, FANOUT_ROUNDS [5]
#   messages; FANOUT_LAYOUTS ["shared copies"]: one run (fresh relay and database) each, the
#   shared body against a whole envelope per device. The storage of the first message is
#   read from the database (sqlite3 with dbstat, or psql).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"

BACKENDS=${1:-both}
case "$BACKENDS" in
  both) BACKENDS="sqlite postgres" ;;
  sqlite | postgres | cluster) ;;
  *) echo "usage: $0 [sqlite|postgres|both|cluster]" >&2; exit 2 ;;
esac
MODES=${MODES:-idle throughput catchup}
IDLE_N=${IDLE_N:-10000}
PAIRS=${PAIRS:-1000}
RATES=${RATES:-1000 2000 10000}
DURATION=${DURATION:-20}
ENVELOPE=${ENVELOPE:-256}
QUEUED=${QUEUED:-100000}
PG_FILL=${PG_FILL:-sql}
ACK_BATCH=${ACK_BATCH:-}
LOAD_MAX=${LOAD_MAX:-1.2}
LOAD_WAIT=${LOAD_WAIT:-1200}
RAMP=${RAMP:-10}
RAMP_TP=${RAMP_TP:-5}
OUT=${OUT:-$ROOT/target/loadgen}
FANOUT_ACCOUNTS=${FANOUT_ACCOUNTS:-1000}
FANOUT_DEVICES=${FANOUT_DEVICES:-2}
FANOUT_BODY=${FANOUT_BODY:-1024}
FANOUT_HEAD=${FANOUT_HEAD:-0}
FANOUT_ROUNDS=${FANOUT_ROUNDS:-5}
FANOUT_LAYOUTS=${FANOUT_LAYOUTS:-shared copies}

# Both processes inherit this: 10,000 sockets each, plus the database.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "open files limit: $(ulimit -n)"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -p sotto-relay -p sotto-loadgen
fi
RELAY="$ROOT/target/release/sotto-relay"
LOADGEN="$ROOT/target/release/sotto-loadgen"

mkdir -p "$OUT"
RESULTS="$OUT/results.txt"
: >"$RESULTS"
WORK=$(mktemp -d /tmp/sotto-loadgen.XXXXXX)
RELAY_PID=
PG_DIR=
PG_URL=
NODES=${NODES:-3}
NODE_PIDS=()
NATS_PID=
PUBLIC=

stop_relay() {
  local pid
  for pid in "${NODE_PIDS[@]}"; do
    [ "$pid" = "$RELAY_PID" ] || kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${NODE_PIDS[@]}"; do
    [ "$pid" = "$RELAY_PID" ] || wait "$pid" 2>/dev/null || true
  done
  NODE_PIDS=()
  [ -n "$RELAY_PID" ] || return 0
  kill -TERM "$RELAY_PID" 2>/dev/null || true
  local i
  for i in $(seq 1 100); do
    kill -0 "$RELAY_PID" 2>/dev/null || break
    sleep 0.2
  done
  kill -KILL "$RELAY_PID" 2>/dev/null || true
  wait "$RELAY_PID" 2>/dev/null || true
  RELAY_PID=
}

cleanup() {
  stop_relay
  if [ -n "$NATS_PID" ]; then kill -TERM "$NATS_PID" 2>/dev/null || true; wait "$NATS_PID" 2>/dev/null || true; fi
  if [ -n "$PG_DIR" ]; then scripts/pg.sh stop "$PG_DIR" || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  local p=${1:-18080} n=0
  while ! port_free "$p"; do
    p=$((p + 1)); n=$((n + 1))
    [ "$n" -lt 200 ] || { echo "no free port" >&2; exit 1; }
  done
  echo "$p"
}

wait_load() {
  [ "$LOAD_WAIT" -gt 0 ] || return 0
  local waited=0 load
  while :; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    if awk -v l="$load" -v m="$LOAD_MAX" 'BEGIN { exit !(l < m) }'; then
      echo "load average $(cut -d' ' -f1-3 /proc/loadavg): starting"
      return 0
    fi
    if [ "$waited" -ge "$LOAD_WAIT" ]; then
      echo "WARNING: load average still $load after ${waited} s; measuring anyway" | tee -a "$RESULTS"
      return 0
    fi
    echo "load average $load >= $LOAD_MAX; waiting 60 s (${waited}/${LOAD_WAIT} s)"
    sleep 60
    waited=$((waited + 60))
  done
}

# The catch-up mode queues 100,000 envelopes from one device for one device: the per-device
# send rate limit and the mailbox depth are raised for it. Throughput senders send
# RATE/PAIRS (10/s by default), under the default limit of 20/s anyway.
# RELAY_LIMITS adds lines to that [limits] table (the file's last).
{ echo 'log_level = "warn"'; cat relay/loadgen/limits.toml; printf '%s\n' "${RELAY_LIMITS:-}"; } >"$WORK/relay.toml"

# start_relay NAME [DATABASE_URL]
start_relay() {
  local name=$1 db=${2:-} port
  port=$(free_port 18080)
  URL="http://127.0.0.1:$port"
  mkdir -p "$WORK/$name"
  local args=(--config "$WORK/relay.toml" --listen "127.0.0.1:$port" --public-url "$URL" --data-dir "$WORK/$name")
  [ -z "$db" ] || args+=(--database-url "$db")
  "$RELAY" "${args[@]}" >"$OUT/relay-$name.log" 2>&1 &
  RELAY_PID=$!
}

# start_cluster NAME DATABASE_URL: NODES nodes sharing the database and the nats-server;
# URL lists them all, RELAY_PID is the first (RSS and CPU readings are of that node).
start_cluster() {
  local name=$1 db=$2 i port urls=()
  PUBLIC="http://relay.cluster.test"
  for i in $(seq 1 "$NODES"); do
    port=$(free_port $((18080 + 10 * i)))
    urls+=("http://127.0.0.1:$port")
    mkdir -p "$WORK/$name-$i"
    "$RELAY" --config "$WORK/cluster.toml" --listen "127.0.0.1:$port" --public-url "$PUBLIC" \
      --data-dir "$WORK/$name-$i" --database-url "$db" >"$OUT/relay-$name-$i.log" 2>&1 &
    NODE_PIDS+=($!)
  done
  RELAY_PID=${NODE_PIDS[0]}
  URL=$(IFS=,; echo "${urls[*]}")
  # Ready means on the bus (the load generator only waits for /healthz).
  local u n
  for u in "${urls[@]}"; do
    for n in $(seq 1 300); do
      [ "$(curl -s -o /dev/null -w '%{http_code}' "$u/readyz" || true)" = 200 ] && break
      sleep 0.1
    done
  done
}

PSQL=$(command -v psql || echo /usr/local/bin/psql)

pg_database() {
  local name=$1 port
  port=$(cat "$PG_DIR/port")
  "$PSQL" -h 127.0.0.1 -p "$port" -U postgres -q -c "create database $name" >&2
  echo "postgres://postgres@127.0.0.1:$port/$name"
}

# run_mode BACKEND MODE [RATE | LAYOUT]
run_mode() {
  local backend=$1 mode=$2 rate=${3:-} db= name="$1-$2${3:+-$3}" watch=()
  if [ "$backend" = postgres ] || [ "$backend" = cluster ]; then
    db=$(pg_database "lg_$mode$rate")
    watch=(--watch-comm postgres)
  fi
  local public=()
  if [ "$backend" = cluster ]; then
    start_cluster "$name" "$db"
    public=(--public-url "$PUBLIC")
  else
    start_relay "$name" "$db"
  fi
  local args=(--url "$URL" "${public[@]}" --mode "$mode" --relay-pid "$RELAY_PID" "${watch[@]}")
  case "$mode" in
    idle) args+=(--connections "$IDLE_N" --ramp-secs "$RAMP") ;;
    throughput)
      args+=(--pairs "$PAIRS" --rate "$rate" --duration "$DURATION" --envelope-bytes "$ENVELOPE" --ramp-secs "$RAMP_TP")
      if [ "${BACKOFF:-0}" = 1 ]; then args+=(--backoff --backoff-ms "${BACKOFF_MS:-200}"); fi
      ;;
    fanout)
      args+=(--fanout-accounts "$FANOUT_ACCOUNTS" --fanout-devices "$FANOUT_DEVICES" --body-bytes "$FANOUT_BODY"
        --head-bytes "$FANOUT_HEAD" --fanout-rounds "$FANOUT_ROUNDS" --fanout-layout "$rate" --ramp-secs 2)
      if [ "$backend" = postgres ] || [ "$backend" = cluster ]; then
        args+=(--db-dialect postgres
          --db-stats-cmd "$PSQL -h 127.0.0.1 -p $(cat "$PG_DIR/port") -U postgres -d lg_$mode$rate -q -At")
      elif command -v sqlite3 >/dev/null; then
        args+=(--db-dialect sqlite --db-stats-cmd "sqlite3 $WORK/$name/relay.db")
      fi
      ;;
    catchup)
      args+=(--queued "$QUEUED" --envelope-bytes "$ENVELOPE")
      if [ "$backend" != sqlite ] && [ "$PG_FILL" = sql ]; then
        args+=(--fill-sql-cmd "$PSQL -h 127.0.0.1 -p $(cat "$PG_DIR/port") -U postgres -d lg_$mode -q -v ON_ERROR_STOP=1")
      fi
      ;;
  esac
  [ -z "$ACK_BATCH" ] || args+=(--ack-batch "$ACK_BATCH")
  if [ "$mode" = throughput ] && [ "${ACCESS_KEYS:-0}" = 1 ]; then args+=(--access-keys); fi
  local load
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  echo "== $backend $mode: load average $load"
  echo "   $LOADGEN ${args[*]}"
  local rc=0
  "$LOADGEN" "${args[@]}" 2>&1 | tee "$OUT/loadgen-$name.log" || rc=$?
  if ! kill -0 "$RELAY_PID" 2>/dev/null; then
    echo "relay exited; see $OUT/relay-$name.log" >&2
    rc=1
  fi
  stop_relay
  local result
  result=$(grep '^RESULT ' "$OUT/loadgen-$name.log" || echo "RESULT mode=$mode FAILED")
  echo "backend=$backend load_at_start=\"$load\" ${result#RESULT }" >>"$RESULTS"
  return "$rc"
}

status=0
for backend in $BACKENDS; do
  wait_load
  if [ "$backend" = postgres ] || [ "$backend" = cluster ]; then
    PG_DIR=$(mktemp -d /tmp/sotto-loadgen-pg.XXXXXX)
    PG_URL=$(scripts/pg.sh start "$PG_DIR")
    echo "PostgreSQL: $PG_URL (fsync=${PG_FSYNC:-off}; set PG_FSYNC=on for power-loss durability)"
  fi
  if [ "$backend" = cluster ] && [ -z "$NATS_PID" ]; then
    NATS_BIN=$(command -v nats-server || echo /usr/sbin/nats-server)
    NATS_PORT=$(free_port 14222)
    "$NATS_BIN" -a 127.0.0.1 -p "$NATS_PORT" >"$OUT/nats.log" 2>&1 &
    NATS_PID=$!
    openssl rand -hex 32 >"$WORK/cluster.key" 2>/dev/null || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/cluster.key"
    { cat "$WORK/relay.toml"
      printf '[cluster]\nnats_url = "nats://127.0.0.1:%s"\nsecret_file = "%s"\n' "$NATS_PORT" "$WORK/cluster.key"
    } >"$WORK/cluster.toml"
    echo "nats-server on 127.0.0.1:$NATS_PORT, $NODES relay nodes per run"
  fi
  for mode in $MODES; do
    if [ "$mode" = throughput ]; then
      for rate in $RATES; do run_mode "$backend" "$mode" "$rate" || status=1; done
    elif [ "$mode" = fanout ]; then
      for layout in $FANOUT_LAYOUTS; do run_mode "$backend" "$mode" "$layout" || status=1; done
    else
      run_mode "$backend" "$mode" || status=1
    fi
  done
  if [ -n "$PG_DIR" ]; then
    scripts/pg.sh stop "$PG_DIR" || true
    PG_DIR=
  fi
done

echo
echo "== results ($RESULTS)"
cat "$RESULTS"
exit "$status"
