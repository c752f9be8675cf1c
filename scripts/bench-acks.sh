#!/usr/bin/env bash
# The cost of client acks: the tier on loopback as real processes
# (redis-server, one relay, two message servers) and the same chatbench
# open-loop load with acks off and on, interleaved, rounds times; each run
# prints every process's CPU time per 1 000 delivered messages (Redis
# included: acks keep each event there until acked).
#
#   scripts/bench-acks.sh [users] [seconds] [rate] [rounds]
#
# BIN=dir uses binaries already built there (relay, msgserver, chatbench).
set -euo pipefail

users=${1:-1000}
secs=${2:-10}
rate=${3:-5000}
rounds=${4:-3}
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
rport=$(free_port); lport=$(free_port); p1=$(free_port); p2=$(free_port)

redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
"$work/relay" --listen "127.0.0.1:$lport" --admin "" --link-secret-file "$work/secret" --log-level warn &
pids+=($!)
for port in $p1 $p2; do
  "$work/msgserver" --id "msg-$port" --listen "127.0.0.1:$port" --relay "127.0.0.1:$lport" \
    --redis "redis://127.0.0.1:$rport/0" --link-secret-file "$work/secret" --log-level warn --admin "" &
  pids+=($!)
done
for port in $p1 $p2; do
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done

watch="redis=${pids[0]},relay=${pids[1]},msg-1=${pids[2]},msg-2=${pids[3]}"
servers="127.0.0.1:$p1,127.0.0.1:$p2"
echo "# $(nproc) cores, $users users, $rate msgs/s, ${secs}s per run, $rounds rounds"
for r in $(seq "$rounds"); do
  echo "## round $r: acks off"
  "$work/chatbench" xnode --servers "$servers" --users "$users" --rate "$rate" --duration "${secs}s" --quiet --prefix "off$r" --pids "$watch"
  echo "## round $r: acks on"
  "$work/chatbench" xnode --servers "$servers" --users "$users" --rate "$rate" --duration "${secs}s" --quiet --prefix "on$r" --pids "$watch" --acks
done
