# shellcheck shell=bash
# Shell helpers shared by scripts/test.sh, scripts/bindings.sh, scripts/wasm.sh and
# scripts/wasm-tools.sh.
# Sourced, not run. Messages go to stderr so that callers may print data on stdout.

# When the run started, so each step shows when it began: scripts/test.sh sets it for the
# scripts it runs; a script run on its own starts its own clock.
export SOTTO_T0=${SOTTO_T0:-$(date +%s)}

# Prints a step's header with the time since the suite started: `==> [4m07s] prefix: what`.
step_header() { # prefix, what...
  local prefix=$1 t=$(($(date +%s) - SOTTO_T0))
  shift
  printf '\n==> [%dm%02ds] %s%s\n' $((t / 60)) $((t % 60)) "$prefix" "$*" >&2
}

# Runs a test command and reports how long it took; returns the command's status, also
# when the caller tests it (`timed_run … || status=$?` turns `set -e` off inside).
timed_run() { # prefix, label, command...
  local prefix=$1 label=$2 t0=$SECONDS rc=0
  shift 2
  "$@" || rc=$?
  if [ "$rc" = 0 ]; then echo "$prefix: $label passed in $((SECONDS - t0)) s" >&2
  else echo "$prefix: $label FAILED (exit $rc) after $((SECONDS - t0)) s" >&2; fi
  return "$rc"
}

# Builds the workspace's libraries (the sotto-ffi cdylib among them), binaries (the relay,
# the CLI, uniffi-bindgen) and tests in debug: the selection `cargo test --workspace`
# builds, so dependencies get the same features and nothing is compiled twice. (`cargo
# build -p X` unifies features for X alone and rebuilds most of the tree.)
build_workspace_debug() {
  cargo build --locked --workspace --lib --bins --tests
}

# Runs a command as root (directly, or through sudo).
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else return 1; fi
}

# Installs the Debian packages that are missing; true when all are installed afterwards.
APT_UPDATED=false
apt_install() { # packages...
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || return 1
  if ! $APT_UPDATED; then as_root apt-get update -qq >&2 || return 1; APT_UPDATED=true; fi
  echo "apt-get install ${missing[*]}" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# The banner for tests skipped on a developer's machine (with CI=true callers fail instead).
skip_banner() { # lines...
  {
    printf '\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n'
    for line in "$@"; do printf '!!! %s\n' "$line"; done
    printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n'
  } >&2
}

# Starts `sotto-relay` binary $1 on a free loopback port with its data under directory $2,
# and waits (polling /healthz) until it answers. Sets SOTTO_RELAY_URL (exported) and
# RELAY_PID; the caller stops it. Rate limits are raised for the benchmarks' 1,000-message
# bursts, the per-address ones too (every client is on 127.0.0.1).
start_relay() { # relay binary, directory
  local bin=$1 dir=$2 port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  export SOTTO_RELAY_URL=http://127.0.0.1:$port
  printf '[limits]\nrate_per_second = 100000\nrate_burst = 100000\naddr_rate_per_second = 1000000\naddr_rate_burst = 1000000\naddr_rate_bytes_per_second = 4294967295\naddr_rate_bytes_burst = 4294967295\nrate_bytes_per_second = 4294967295\nrate_bytes_burst = 4294967295\nchallenge_rate_per_addr = 1000000\nchallenge_burst_per_addr = 1000000\nmax_tcp_connections_per_addr = 10000\nmax_ws_per_addr = 10000\nmax_unauthenticated_per_addr = 10000\n' >"$dir/relay.toml"
  "$bin" --config "$dir/relay.toml" --listen "127.0.0.1:$port" --public-url "$SOTTO_RELAY_URL" \
    --data-dir "$dir/relay" >"$dir/relay.log" 2>&1 &
  RELAY_PID=$!
  for _ in $(seq 1 100); do
    curl -fsS "$SOTTO_RELAY_URL/healthz" >/dev/null 2>&1 && return 0
    kill -0 "$RELAY_PID" 2>/dev/null || { cat "$dir/relay.log" >&2; return 1; }
    sleep 0.1
  done
  curl -fsS "$SOTTO_RELAY_URL/healthz" >/dev/null || { echo "relay did not answer /healthz" >&2; return 1; }
}
