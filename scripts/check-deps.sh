#!/usr/bin/env bash
# The protocol core stays sans-IO: no async runtime, database or socket library may
# enter its normal dependency tree.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
for crate in sotto-crypto; do
  tree=$(cargo tree -p "$crate" -e normal --prefix none --locked)
  for banned in tokio sqlx mio socket2 getrandom; do
    if grep -E "^$banned v" <<<"$tree" >/dev/null; then
      echo "check-deps: $crate depends on $banned (it must stay sans-IO)" >&2
      fail=1
    fi
  done
done
[ "$fail" = 0 ] && echo "check-deps: sotto-crypto has no tokio, sqlx, mio, socket2 or getrandom"
exit "$fail"
