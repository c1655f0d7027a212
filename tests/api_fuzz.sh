#!/usr/bin/env bash
# API fuzzing from the server's own OpenAPI document with schemathesis (installed from PyPI
# when missing): no 5xx, and every response matches the schema. Starts a release server on
# loopback with a temporary data directory, and stops it on exit.
#   tests/api_fuzz.sh [MAX_EXAMPLES]      (default 50 per operation)
# The SSE route is left out: a live stream never ends, by design, so every generated
# request to an existing partition would hang until the request timeout (tests/http_api.rs
# covers it). Any other request still unanswered after 40 s (a long-poll waits at most
# 30 s) fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
# schemathesis goes into the project's target/ (a virtual environment there), never into the
# machine's Python.
venv="${CARGO_TARGET_DIR:-target}/tools/schemathesis"
if [ ! -x "$venv/bin/st" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q schemathesis
fi
st() { "$venv/bin/st" "$@"; }
cargo build --release --quiet --bin mapq
DIR=$(mktemp -d /tmp/mapq-api-fuzz-XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"${CARGO_TARGET_DIR:-target}"/release/mapq serve --listen "127.0.0.1:$PORT" --data-dir "$DIR/data" >"$DIR/out" 2>"$DIR/log" &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null && break
  sleep 0.1
done
st run "http://127.0.0.1:$PORT/openapi.json" \
  --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance \
  --exclude-path-regex '/stream$' \
  --request-timeout 40 \
  --max-examples "${1:-50}"
