#!/usr/bin/env bash
# What one append costs Redis, alone: the cluster's append script
# (`APPEND` in src/cluster/append.rs, read from the source) called back to back
# by one client, a batch of 14 messages per call, with no subscriber and with
# three (the nodes of a 3-node cluster, each written a copy of every entry).
# Prints Redis' CPU per call: the floor under what a batch costs Redis in the
# `(N nodes)` rows of bench/loadgen, where the same call competes for 2 cores
# with the nodes and the load generator.
#
# The script's "appended once" check is left out: every call would otherwise
# carry the same batch number and be skipped (its GET stays).
#
# Needs redis-server, redis-cli, redis-benchmark and python3.
# Usage: bench/redis-append-floor.sh [calls]   (20,000 by default; a few
# hundred in `make bench-quick`, which only checks that the tool still runs)
set -euo pipefail

calls=${1:-20000}
# A port nobody listens on, for the redis-servers of this run.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
source_file="$(dirname "$0")/../src/cluster/append.rs"

script=$(python3 - "$source_file" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
body = re.search(r'const APPEND: &str = "(.*?)";\n', text, re.S).group(1)
# The Rust literal: `\` ends a line and skips the next one's indent; `\\` and `\"`.
body = re.sub(r'\\\n\s*', '', body).replace('\\\\', '\\').replace('\\"', '"')
skip = "if done and tonumber(done) >= tonumber(ARGV[2]) then return 0 end"
assert skip in body, "the script's appended-once check moved: update this tool"
print(body.replace(skip, ""))
EOF
)
items=$(python3 -c 'import json; print(json.dumps([{"k": "m", "r": "lobby", "f": 7, "n": "ann", "m": "x" * 64, "t": 1764900000000, "i": i} for i in range(14)]))')

# utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

for subscribers in 0 3 0 3; do
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
    redis=$!
    until redis-cli -p "$port" PING >/dev/null 2>&1; do
        kill -0 "$redis" || { echo "redis-server did not start on port $port" >&2; exit 1; }
        sleep 0.05
    done
    sha=$(redis-cli -p "$port" SCRIPT LOAD "$script")
    append=(EVALSHA "$sha" 4 messages ids appended lifted 100000 1 seats 6000 1 14 "$items" threadchat:live)
    # redis-benchmark counts an error as an answer: one call first, checked.
    first=$(redis-cli -p "$port" "${append[@]}")
    [[ $first =~ ^[0-9]+$ ]] || { echo "the append script failed: $first" >&2; kill "$redis"; wait "$redis" || true; exit 1; }
    listeners=()
    for _ in $(seq "$subscribers"); do
        redis-cli -p "$port" SUBSCRIBE threadchat:live >/dev/null &
        listeners+=($!)
    done
    until [ "$(redis-cli -p "$port" PUBSUB NUMSUB threadchat:live | tail -1)" = "$subscribers" ]; do
        sleep 0.05
    done
    before=$(cpu_ticks "$redis")
    redis-benchmark -p "$port" -c 1 -n "$calls" -q "${append[@]}" >/dev/null
    after=$(cpu_ticks "$redis")
    echo "subscribers $subscribers: $(( (after - before) * 1000000 / hz / calls )) µs of Redis CPU per append of 14 messages"
    kill "${listeners[@]}" 2>/dev/null || true
    kill "$redis"
    wait "$redis" 2>/dev/null || true
done
