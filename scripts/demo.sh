#!/usr/bin/env bash
# The main job: builds and starts the relay on its embedded SQLite default, then shows the
# CLI client at work through it — two profiles (alice, bob), each an account with an
# encrypted store, exchange a message. The relay keeps running in the foreground (Ctrl-C
# stops it gracefully) so you can go on chatting with the `sotto` commands it prints.
#
#   scripts/demo.sh            relay on 127.0.0.1:8080, data in ./sotto-relay-data,
#                              profiles in ./sotto-profiles (SOTTO_HOME)
#   PORT=9090 scripts/demo.sh  another port (with its own ./sotto-relay-data-9090 and
#                              ./sotto-profiles-9090: profiles remember their relay's URL)
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${PORT:-8080}
URL="http://127.0.0.1:$PORT"
SUFFIX=$([ "$PORT" = 8080 ] || echo "-$PORT")
DATA=./sotto-relay-data$SUFFIX
export SOTTO_HOME=${SOTTO_HOME:-$PWD/sotto-profiles$SUFFIX}

cargo build --release -p sotto-relay -p sotto-sdk
BIN=$PWD/target/release
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  echo "demo.sh: port $PORT is in use; set PORT to a free one" >&2
  exit 1
fi

"$BIN/sotto-relay" --listen "127.0.0.1:$PORT" --public-url "$URL" --data-dir "$DATA" &
RELAY=$!
trap 'kill -TERM $RELAY 2>/dev/null || true; wait $RELAY 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
  if ! kill -0 "$RELAY" 2>/dev/null; then echo "demo.sh: the relay did not start" >&2; exit 1; fi
  sleep 0.1
done

sotto() { "$BIN/sotto" "$@"; }
for p in alice bob; do
  if ! sotto --profile "$p" whoami >/dev/null 2>&1; then
    sotto --profile "$p" init --relay "$URL"
  fi
done
BOB=$(sotto --profile bob whoami --link)
ALICE=$(sotto --profile alice whoami --link)
sotto --profile alice add "$BOB" >/dev/null 2>&1 || true   # already a contact on a rerun
sotto --profile bob add "$ALICE" >/dev/null 2>&1 || true
sotto --profile alice send "$BOB" "Hello Bob, this is Alice ($(date +%H:%M:%S))"
echo "--- bob receives:"
sotto --profile bob receive

cat <<TXT

The relay is running on $URL (data in $DATA). In another terminal:
  export SOTTO_HOME="$SOTTO_HOME"
  $BIN/sotto --profile bob chat "$ALICE"      # interactive: type lines, see replies
  $BIN/sotto --profile alice chat "$BOB"
  $BIN/sotto --profile alice safety "$BOB"    # compare with bob's
Ctrl-C here stops the relay.
TXT
wait $RELAY
