#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests.
#
#   scripts/pg.sh start DIR   initdb in DIR, start on a free loopback port, create the
#                             database sotto_test, print its URL on stdout
#   scripts/pg.sh stop DIR    stop the cluster in DIR and delete DIR
#
# Typical use (scripts/test.sh does this):
#   PG_DIR=$(mktemp -d); trap 'scripts/pg.sh stop "$PG_DIR"' EXIT
#   export SOTTO_TEST_POSTGRES_URL=$(scripts/pg.sh start "$PG_DIR")
# initdb refuses to run as root, so as root the cluster runs as the `postgres` user.
set -euo pipefail

log() { printf 'pg.sh: %s\n' "$*" >&2; }

find_bin() {
  local b=$1 d
  if command -v "$b" >/dev/null 2>&1; then command -v "$b"; return; fi
  for d in /usr/local/bin /usr/lib/postgresql/*/bin; do
    if [ -x "$d/$b" ]; then echo "$d/$b"; return; fi
  done
  return 1
}

ensure_binaries() {
  if ! find_bin initdb >/dev/null || ! find_bin pg_ctl >/dev/null; then
    log "PostgreSQL server binaries not found; installing with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql >&2
  fi
  INITDB=$(find_bin initdb)
  PG_CTL=$(find_bin pg_ctl)
}

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
  local dir=$1
  ensure_binaries
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$dir" postgres
    chown postgres:postgres "$dir"
  fi
  local port=${SOTTO_PG_PORT:-55432} tries=0
  while ! port_free "$port"; do
    port=$((port + 1)); tries=$((tries + 1))
    [ "$tries" -lt 50 ] || { log "no free port"; exit 1; }
  done
  as_owner "$INITDB" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  as_owner "$PG_CTL" -D "$dir/data" -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=${PG_FSYNC:-off}" \
    -l "$dir/log" -w start >&2 || { cat "$dir/log" >&2; exit 1; }
  echo "$port" >"$dir/port"
  "$(find_bin psql)" -h 127.0.0.1 -p "$port" -U postgres -q -c 'create database sotto_test' >&2
  log "PostgreSQL running in $dir on 127.0.0.1:$port"
  echo "postgres://postgres@127.0.0.1:$port/sotto_test"
}

stop() {
  local dir=$1
  [ -d "$dir/data" ] || { rm -rf "$dir"; return 0; }
  ensure_binaries
  as_owner "$PG_CTL" -D "$dir/data" -m fast -w stop >&2 || true
  rm -rf "$dir"
  log "PostgreSQL in $dir stopped"
}

case "${1:-}" in
  start) start "${2:?usage: pg.sh start DIR}" ;;
  stop) stop "${2:?usage: pg.sh stop DIR}" ;;
  *) echo "usage: scripts/pg.sh start|stop DIR" >&2; exit 2 ;;
esac
