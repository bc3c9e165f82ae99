#!/usr/bin/env bash
# socket.io's own protocol test suite (github.com/socketio/socket.io-protocol,
# test-suite/), its WebSocket part, against the conformance fixture: the chat
# port's /socket.io/ with --echo. The suite's long-polling and upgrade cases are
# left out: threadchat serves WebSocket only (docs/PROTOCOL.md, "Socket.IO").
#
# usage: socketio/suite.sh <a checkout of socket.io-protocol> [path/to/threadchat]
#
# The suite is not vendored (it carries no license) and is fetched by whoever runs
# this; its npm packages are installed from its own lock file. It talks to
# localhost:3000, hard-coded, so the fixture is started there.
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE="$(cd "${1:?usage: socketio/suite.sh <socket.io-protocol checkout> [binary]}" && pwd)/test-suite"
BINARY="${2:-target/debug/threadchat}"

[ -d "$SUITE/node_modules" ] || (cd "$SUITE" && npm ci --no-audit --no-fund --loglevel=error)

log=$(mktemp)
"$BINARY" --bind 127.0.0.1 --ws-port 3000 --http-port 0 --echo \
    --max-message 1000000 --max-backlog 4000000 2>"$log" &
server=$!
trap 'kill "$server" 2>/dev/null; rm -f "$log"' EXIT
until grep -q "listening: chat" "$log"; do
    kill -0 "$server" 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.1 # waiting for the server's first line: no event to wait on
done
cd "$SUITE"
npx mocha test-suite.js --grep "HTTP long-polling|upgrade" --invert
