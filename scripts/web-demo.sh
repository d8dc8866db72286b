#!/usr/bin/env bash
# The web demo: builds the sotto-wasm web package (scripts/wasm.sh build) and serves the
# demo page (bindings/wasm/demo) with the package on http://127.0.0.1:$WEB_PORT until
# Ctrl-C. The page talks to a relay, by default the one scripts/demo.sh runs:
#
#   scripts/demo.sh              # terminal 1: the relay on 127.0.0.1:8080 (and two CLI profiles)
#   scripts/web-demo.sh          # terminal 2: open the URL it prints
#
#   WEB_PORT=8001 RELAY=http://127.0.0.1:9090 scripts/web-demo.sh    other ports
#
# The relay answers CORS for any origin by default (docs/self-hosting.md), so the page
# may be served from another port than the relay's.
set -euo pipefail
cd "$(dirname "$0")/.."

WEB_PORT=${WEB_PORT:-8000}
RELAY=${RELAY:-http://127.0.0.1:8080}

scripts/wasm.sh build
if (exec 3<>"/dev/tcp/127.0.0.1/$WEB_PORT") 2>/dev/null; then
  echo "web-demo.sh: port $WEB_PORT is in use; set WEB_PORT to a free one" >&2
  exit 1
fi
HOSTPORT=${RELAY#*://}
HOSTPORT=${HOSTPORT%%/*}
if ! (exec 3<>"/dev/tcp/${HOSTPORT%:*}/${HOSTPORT##*:}") 2>/dev/null; then
  echo "web-demo.sh: nothing answers at $RELAY yet: start it with scripts/demo.sh (or set RELAY)" >&2
fi
ENCODED=$(node -e 'console.log(encodeURIComponent(process.argv[1]))' "$RELAY")
cat <<TXT

Open http://127.0.0.1:$WEB_PORT/bindings/wasm/demo/?relay=$ENCODED
Create an account there, add a CLI profile's link (\`target/release/sotto --profile bob whoami --link\`
with SOTTO_HOME=$PWD/sotto-profiles), and add the page's link on the CLI side:
  SOTTO_HOME=$PWD/sotto-profiles target/release/sotto --profile bob chat <the page's link>
Ctrl-C stops the server.
TXT
exec node bindings/wasm/tests/e2e/serve.mjs "$WEB_PORT"
