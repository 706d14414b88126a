#!/usr/bin/env bash
# An S3 API server on 127.0.0.1 for the remote-cache tests (tests/it/remote.rs):
# moto's server from PyPI, twice: one that accepts any credentials, and one
# that checks them (INITIAL_NO_AUTH_ACTION_COUNT=0) and knows none of the
# tests', for the refused-credentials case.
#
#   source .ci/s3.sh && s3_start   # installs if needed, starts, exports PODIUM_TEST_S3{,_AUTH}
#   s3_stop                         # stops the servers it started
set -euo pipefail

S3_VENV="${PODIUM_S3_VENV:-${TMPDIR:-/tmp}/podium-moto-venv}"
S3_PIDS=()

s3_start() {
    if [ ! -x "$S3_VENV/bin/moto_server" ]; then
        python3 -m venv "$S3_VENV"
        "$S3_VENV/bin/pip" install --quiet 'moto[server]==5.*'
    fi
    local port auth
    port=$(s3_free_port)
    "$S3_VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"${TMPDIR:-/tmp}/podium-moto.log" 2>&1 &
    S3_PIDS+=($!)
    auth=$(s3_free_port)
    INITIAL_NO_AUTH_ACTION_COUNT=0 "$S3_VENV/bin/moto_server" -H 127.0.0.1 -p "$auth" \
        >"${TMPDIR:-/tmp}/podium-moto-auth.log" 2>&1 &
    S3_PIDS+=($!)
    for p in "$port" "$auth"; do
        local i=0
        until python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $p), 1)" 2>/dev/null; do
            i=$((i + 1))
            if [ "$i" -gt 60 ]; then
                echo "moto_server on 127.0.0.1:$p did not start; its log:" >&2
                cat "${TMPDIR:-/tmp}"/podium-moto*.log >&2
                return 1
            fi
            sleep 0.5
        done
    done
    export PODIUM_TEST_S3="http://127.0.0.1:$port"
    export PODIUM_TEST_S3_AUTH="http://127.0.0.1:$auth"
    echo "S3 servers: $PODIUM_TEST_S3 (open), $PODIUM_TEST_S3_AUTH (checks credentials)"
}

s3_stop() {
    for pid in "${S3_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    S3_PIDS=()
}

s3_free_port() {
    python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
}
