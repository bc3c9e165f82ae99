#!/usr/bin/env bash
# Conformance gate: the Autobahn TestSuite's server cases (groups 1-10; 12 and 13,
# permessage-deflate, are not implemented) against the /echo endpoint (--echo), through
# kosoku. Every case's verdict must equal autobahn/expected-results.json; any
# difference fails. The HTML report is left in target/autobahn/report/.
#
# usage: autobahn/run.sh [path/to/threadchat]   (default: target/debug/threadchat)
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

log=$(mktemp)
# /echo is off unless asked for, and obeys the chat's limits: the suite's 9.x cases
# send messages of up to 16 MiB, and the echo of each must fit in the backlog.
"$BINARY" --bind 127.0.0.1 --http-port 0 --ws-port 0 --echo \
    --max-message 16777216 --max-backlog 67108864 2>"$log" &
server=$!
trap 'kill "$server" 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do
    port=$(grep -o 'chat ws://127.0.0.1:[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    [ -n "$port" ] && break
    sleep 0.1
done
[ -n "$port" ] || { cat "$log"; echo "the server did not start" >&2; exit 1; }

rm -rf "$REPORT"
"$VENV/bin/kosoku" --mode fuzzingclient --parallelism 4 --exclude '12.*' --exclude '13.*' \
    --outdir "$REPORT" "ws://127.0.0.1:$port/echo" >/dev/null

if ! python3 - "$REPORT/index.json" autobahn/expected-results.json <<'PY'
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
    echo "the server's warnings and refusals during the run:" >&2
    grep -E "WARN|ERROR|refused" "$log" | tail -n 20 >&2 || true
    exit 1
fi
