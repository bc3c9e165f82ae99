#!/usr/bin/env bash
# Conformance gate: the Autobahn TestSuite's server cases (groups 1-10; 12 and 13,
# permessage-deflate, are not implemented) against the /echo endpoint (--echo), through
# kosoku, twice: over ws, and over wss (through autobahn/tls-bridge.py). Every case's
# verdict must equal autobahn/expected-results.json in both; any difference fails.
# The HTML reports are left in target/autobahn/report/{ws,wss}/.
#
# usage: autobahn/run.sh [path/to/threadchat]   (default: target/debug/threadchat;
# the certificate program is looked for beside it, in examples/cert)
set -euo pipefail
cd "$(dirname "$0")/.."

BINARY="${1:-target/debug/threadchat}"
VENV=target/autobahn/venv
REPORT=target/autobahn/report
KOSOKU_VERSION=0.1.0

if [ ! -x "$VENV/bin/kosoku" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "kosoku==$KOSOKU_VERSION"
fi

# The run's own certificate, for the pass over wss (`make cert`'s program).
CERT_BIN="${CERT_BIN:-$(dirname "$BINARY")/examples/cert}"
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$work"' EXIT
"$CERT_BIN" --out "$work/tls" >/dev/null

# One pass of the suite against /echo: plain (ws), or over wss through
# autobahn/tls-bridge.py (kosoku itself speaks no TLS). Both are held to the same
# expected verdicts.
suite() {
    local scheme=$1 log="$work/$1.log" report="$REPORT/$1" port tls=()
    [ "$scheme" = wss ] && tls=(--tls-cert "$work/tls/cert.pem" --tls-key "$work/tls/key.pem")
    # /echo is off unless asked for, and obeys the chat's limits: the suite's 9.x
    # cases send messages of up to 16 MiB, and the echo of each must fit in the
    # backlog.
    "$BINARY" --bind 127.0.0.1 --http-port 0 --ws-port 0 --echo \
        --max-message 16777216 --max-backlog 67108864 "${tls[@]}" 2>"$log" &
    pids+=($!)
    port=
    for _ in $(seq 100); do
        port=$(grep -o "chat $scheme://127.0.0.1:[0-9]*" "$log" | grep -o '[0-9]*$' || true)
        [ -n "$port" ] && break
        sleep 0.1
    done
    [ -n "$port" ] || { cat "$log"; echo "the server did not start" >&2; exit 1; }
    if [ "$scheme" = wss ]; then
        python3 autobahn/tls-bridge.py "$work/bridge.port" "$port" "$work/tls/cert.pem" \
            2>"$work/bridge.log" &
        pids+=($!)
        port=
        for _ in $(seq 100); do
            port=$(cat "$work/bridge.port" 2>/dev/null || true)
            [ -n "$port" ] && break
            sleep 0.1
        done
        [ -n "$port" ] || { echo "the TLS bridge did not start" >&2; exit 1; }
    fi

    rm -rf "$report"
    "$VENV/bin/kosoku" --mode fuzzingclient --parallelism 4 --exclude '12.*' --exclude '13.*' \
        --outdir "$report" "ws://127.0.0.1:$port/echo" >/dev/null || true

    echo "$scheme:"
    if ! python3 - "$report/index.json" autobahn/expected-results.json <<'PY'
import json, sys
from collections import Counter
(got,) = json.load(open(sys.argv[1])).values()
expected = json.load(open(sys.argv[2]))
verdict = lambda case: (case["behavior"], case["behaviorClose"])
differ = sorted(set(got) | set(expected), key=lambda k: [int(x) for x in k.split(".")])
differ = [k for k in differ if k not in got or k not in expected or verdict(got[k]) != verdict(expected[k])]
for case in differ:
    print(f"case {case}: expected {verdict(expected[case]) if case in expected else 'no case'}, "
          f"got {verdict(got[case]) if case in got else 'no case'}")
tally = Counter(c["behavior"] for c in got.values())
print("autobahn: " + ", ".join(f"{n} {b}" for b, n in sorted(tally.items())) + f" of {len(got)} cases")
print(f"{len(expected) - len(differ)} passed, {len(differ)} failed")
sys.exit(1 if differ else 0)
PY
    then
        echo "the server's warnings and refusals during the $scheme run:" >&2
        grep -E "WARN|ERROR|refused|connection error" "$log" | tail -n 20 >&2 || true
        exit 1
    fi
}

suite ws
suite wss
