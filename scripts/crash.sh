#!/usr/bin/env bash
# The relay killed with SIGKILL at random moments under load, KILLS times (100 by
# default) on SQLite and on PostgreSQL (a throwaway cluster from scripts/pg.sh). Every
# send answered `Stored` must reach every device, each under one seq, and nothing may be
# half stored: relay/server/tests/crash.rs, which scripts/test.sh runs with 10 kills per
# backend. The result of a run goes in docs/benchmarks.md.
#
#   scripts/crash.sh [KILLS]
set -euo pipefail
cd "$(dirname "$0")/.."
KILLS=${1:-100}
case "$KILLS" in '' | *[!0-9]*) echo "usage: $0 [KILLS]" >&2; exit 2 ;; esac

scripts/setup.sh
if [ -z "${SOTTO_TEST_POSTGRES_URL:-}" ]; then
  PG_DIR=$(mktemp -d)
  trap 'scripts/pg.sh stop "$PG_DIR"' EXIT
  SOTTO_TEST_POSTGRES_URL=$(scripts/pg.sh start "$PG_DIR")
  export SOTTO_TEST_POSTGRES_URL
fi
SOTTO_CRASH_KILLS=$KILLS cargo test --locked -p sotto-relay --test crash -- --nocapture --test-threads 1
