#!/usr/bin/env bash
# Starts the tier on loopback as real processes (redis-server, one relay,
# two message servers), runs the standard benchmarks with chatbench and
# prints their tables; stops everything on exit.
#
#   scripts/bench-local.sh [users] [seconds] [idle sessions]
#
# BIN=dir uses binaries already built there (relay, msgserver, chatbench)
# instead of building the working tree, to compare versions.
set -euo pipefail

users=${1:-1000}
secs=${2:-10}
idle=${3:-19000}
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
rport=$(free_port); lport=$(free_port); p1=$(free_port); p2=$(free_port); a1=$(free_port)

redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
"$work/relay" --listen "127.0.0.1:$lport" --admin "" --link-secret-file "$work/secret" --log-level warn &
pids+=($!)
for i in 1 2; do
  port=$p1; [ "$i" = 2 ] && port=$p2
  "$work/msgserver" --id "msg-$i" --listen "127.0.0.1:$port" --relay "127.0.0.1:$lport" \
    --redis "redis://127.0.0.1:$rport/0" --link-secret-file "$work/secret" --log-level warn \
    --admin "$([ "$i" = 1 ] && echo "127.0.0.1:$a1")" &
  pids+=($!)
done
for port in $p1 $p2; do
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done

watch="relay=${pids[1]},msg-1=${pids[2]},msg-2=${pids[3]}"
servers="127.0.0.1:$p1,127.0.0.1:$p2"
echo "# $(nproc) cores, $users users, ${secs}s per run, $idle idle sessions"
"$work/chatbench" xnode --servers "$servers" --users "$users" --window 8 --duration "${secs}s" --quiet --pids "$watch"
# Open loop at rising rates: latency at 5k/s, and the relay's CPU per message falling with load.
for rate in 5000 20000 50000; do
  "$work/chatbench" xnode --servers "$servers" --users "$users" --rate "$rate" --duration "${secs}s" --quiet --prefix "rate$rate" --pids "$watch"
done
# Settle past the park time (5 s) and the memory check (10 s): RSS of parked sessions.
"$work/chatbench" idle --server "127.0.0.1:$p1" --sessions "$idle" --metrics "http://127.0.0.1:$a1/metrics" --settle 20s --hold 2s
# The baseline: two processes joined by one direct link, no relay, no Redis.
"$work/chatbench" direct --users "$users" --window 8 --duration "${secs}s" --quiet
