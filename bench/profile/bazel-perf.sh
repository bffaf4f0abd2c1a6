#!/usr/bin/env bash
# Usage: bench/profile/bazel-perf.sh TESSERA_BENCH OUT.data LOG bazel [--quick]
# Runs `tessera-bench bazel` and attaches `perf record` (Debian linux-perf) to its coordinator,
# agents and spawners during the remote round; then:
#   perf script -i OUT.data -F comm,pid,tid,ip,sym | python3 bench/profile/classify.py COORDINATOR_PID
set -u
bench=$1; out=$2; log=$3; shift 3
"$bench" "$@" > "$log" 2>&1 &
b=$!
while kill -0 $b 2>/dev/null; do
  c=$(pgrep -f "tessera coordinator --listen" | head -1)
  a=$(pgrep -f "tessera agent --coordinator|__agent-spawner" | paste -sd, -)
  if [ -n "$c" ] && [ "$(echo "$a" | tr ',' '\n' | grep -c .)" -ge 4 ]; then
    perf record -F 1999 --call-graph dwarf,16384 -o "$out" -p "$c,$a" 2>>"$log.perf" &
    p=$!
    while kill -0 $c 2>/dev/null; do sleep 0.2; done
    kill -INT $p; wait $p
    break
  fi
  sleep 0.05
done
wait $b
