#!/usr/bin/env bash
# Fuzzes Tako's HTTP API from its own OpenAPI document with schemathesis: every documented
# operation gets positive and negative (schema-violating) inputs, and every answer must be
# documented (status, content type, headers, body schema) and never a 5xx.
#
#   TAKO_BIN=path/to/tako tests/openapi/run.sh
#
# Installs schemathesis (pinned) into a venv under ~/.cache/tako-schemathesis on first use.
# Knobs: TAKO_FUZZ_EXAMPLES (max examples per operation and phase, default 40),
# TAKO_FUZZ_DEADLINE (hard limit in seconds for the whole schemathesis run, default 150),
# TAKO_FUZZ_SEED (reproduce a run).
set -euo pipefail

SCHEMATHESIS_VERSION="4.32.5"
here="$(cd "$(dirname "$0")" && pwd)"

: "${TAKO_BIN:?set TAKO_BIN to the tako binary (e.g. \$CARGO_TARGET_DIR/debug/tako)}"
[ -x "$TAKO_BIN" ] || { echo "TAKO_BIN=$TAKO_BIN is not an executable" >&2; exit 2; }

examples="${TAKO_FUZZ_EXAMPLES:-40}"
deadline="${TAKO_FUZZ_DEADLINE:-150}"

# --- schemathesis, pinned, in a reusable venv --------------------------------------------
venv="${TAKO_SCHEMATHESIS_VENV:-$HOME/.cache/tako-schemathesis}"
installed_version() {
  "$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null || true
}
if [ "$(installed_version)" != "$SCHEMATHESIS_VERSION" ]; then
  echo "== installing schemathesis $SCHEMATHESIS_VERSION into $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

# --- a server of our own: free port, temp SQLite database, known tokens --------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/tako-openapi.XXXXXX")"
server_pid=""
cleanup() {
  local status=$?
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ "$status" -ne 0 ] && [ -s "$work/server.log" ]; then
    echo "== last lines of the server log ($work/server.log)" >&2
    tail -n 40 "$work/server.log" >&2
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
admin_token="admin-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
client_token="client-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
base="http://127.0.0.1:$port"

PORT="$port" TAKO_BIND=127.0.0.1 DATABASE_URL="sqlite://$work/tako.db" \
  HOLOQUEST_API_TOKEN="$client_token" TAKO_ADMIN_TOKEN="$admin_token" \
  RUST_LOG="${RUST_LOG:-warn}" \
  "$TAKO_BIN" >"$work/server.log" 2>&1 &
server_pid=$!

echo "== waiting for tako on $base (pid $server_pid)"
for _ in $(seq 1 150); do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "tako exited before answering" >&2; exit 1
  fi
  code="$(curl -s -o /dev/null -w '%{http_code}' "$base/healthz" || true)"
  [ "$code" = 200 ] && break
  sleep 0.2
done
[ "$code" = 200 ] || { echo "GET /healthz never answered 200 (last: $code)" >&2; exit 1; }

# --- the fuzz run ---------------------------------------------------------------------------
# Checks: `all` of this version's checks. Modes: positive and negative data. Phases: the
# schema's examples, the coverage phase (boundary and invalid values), fuzzing, and stateful
# links. The run is bounded by max examples per operation; `timeout` is the hard deadline.
echo "== schemathesis $SCHEMATHESIS_VERSION against $base/api/json/open_api"
args=(
  run "$base/api/json/open_api"
  --header "Authorization: Bearer $admin_token"
  --checks all
  --mode all
  --phases examples,coverage,fuzzing,stateful
  --max-examples "$examples"
  --workers 2
  --request-timeout 10
  --generation-database none
  --suppress-health-check too_slow
  --no-color
)
[ -n "${TAKO_FUZZ_SEED:-}" ] && args+=(--seed "$TAKO_FUZZ_SEED")

set +e
timeout --signal=INT --kill-after=10 "$deadline" "$venv/bin/schemathesis" "${args[@]}"
status=$?
set -e
if [ "$status" -eq 124 ] || [ "$status" -eq 130 ]; then
  echo "schemathesis did not finish within ${deadline}s" >&2
fi
exit "$status"
