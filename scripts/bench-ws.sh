#!/usr/bin/env bash
# The client protocol over WebSocket next to TCP, on loopback, as real
# processes (redis-server, one relay, two message servers with a web port):
# chatbench ws runs the xnode load over each transport in alternating
# rounds and prints the medians side by side with each process's CPU per
# 1,000 messages; then chatbench idle measures the server's memory per idle
# session over each transport (a fresh server for each, so one's sessions
# do not sit in the other's figure).
#
#   scripts/bench-ws.sh [users] [seconds] [rounds] [idle sessions]
set -euo pipefail

users=${1:-200}
secs=${2:-5}
rounds=${3:-3}
idle=${4:-5000}
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
rport=$(free_port); lport=$(free_port)
p1=$(free_port); p2=$(free_port); w1=$(free_port); w2=$(free_port)

redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
"$work/relay" --listen "127.0.0.1:$lport" --admin "" --link-secret-file "$work/secret" --log-level warn &
pids+=($!)
relay_pid=$!
start_server() { # id client-port web-port
  "$work/msgserver" --id "$1" --listen "127.0.0.1:$2" --http-listen "127.0.0.1:$3" --relay "127.0.0.1:$lport" \
    --redis "redis://127.0.0.1:$rport/0" --link-secret-file "$work/secret" --log-level warn --admin "" &
  pids+=($!)
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$3") 2>/dev/null && break; sleep 0.1; done
}
start_server msg-1 "$p1" "$w1"; m1=${pids[-1]}
start_server msg-2 "$p2" "$w2"; m2=${pids[-1]}

echo "# $(nproc) cores, $users users, ${secs}s per run, $rounds rounds per transport"
"$work/chatbench" ws --servers "127.0.0.1:$p1,127.0.0.1:$p2" --web "127.0.0.1:$w1,127.0.0.1:$w2" \
  --users "$users" --window 8 --duration "${secs}s" --rounds "$rounds" --quiet \
  --pids "relay=$relay_pid,msg-1=$m1,msg-2=$m2"

# Idle sessions: one fresh server per transport, RSS per session after the
# sessions have settled (TCP ones park after 5 s).
for transport in tcp ws; do
  p=$(free_port); w=$(free_port)
  start_server "idle-$transport" "$p" "$w"; m=${pids[-1]}
  if [ "$transport" = ws ]; then target=(--server "127.0.0.1:$w" --ws); else target=(--server "127.0.0.1:$p"); fi
  echo "# idle sessions over $transport"
  "$work/chatbench" idle "${target[@]}" --sessions "$idle" --pid "$m" --settle 12s --hold 1s --quiet
  kill "$m"
done
