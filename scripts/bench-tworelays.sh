#!/usr/bin/env bash
# One VIP against two, in the same run: starts redis-server and two relays
# on loopback as real processes, then, round after round, two message
# servers linked to the first relay only (one VIP: the second relay waits)
# and two linked to both (two VIPs: --relay A,B), and runs the same
# closed-loop chatbench xnode load against each. Prints msgs/s and each
# relay's CPU time per 1,000 delivered messages, per run, then the medians.
#
#   scripts/bench-tworelays.sh [users] [seconds] [rounds]
#
# BIN=dir uses binaries already built there (relay, msgserver, chatbench).
set -euo pipefail

users=${1:-1000}
secs=${2:-10}
rounds=${3:-3}
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
rport=$(free_port); la=$(free_port); lb=$(free_port)

redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
"$work/relay" --id relay-a --listen "127.0.0.1:$la" --admin "" --link-secret-file "$work/secret" --log-level warn &
pids+=($!); relay_a=$!
"$work/relay" --id relay-b --listen "127.0.0.1:$lb" --admin "" --link-secret-file "$work/secret" --log-level warn &
pids+=($!); relay_b=$!

# run MODE RELAYS ROUND: two message servers linked to RELAYS, one
# chatbench run, the servers stopped again.
run() {
  local mode=$1 relays=$2 round=$3 p1 p2 s1 s2
  p1=$(free_port); p2=$(free_port)
  "$work/msgserver" --id "msg-1" --listen "127.0.0.1:$p1" --relay "$relays" --redis "redis://127.0.0.1:$rport/0" \
    --link-secret-file "$work/secret" --log-level warn --admin "" ${MSGSERVER_FLAGS:-} &
  s1=$!
  "$work/msgserver" --id "msg-2" --listen "127.0.0.1:$p2" --relay "$relays" --redis "redis://127.0.0.1:$rport/0" \
    --link-secret-file "$work/secret" --log-level warn --admin "" ${MSGSERVER_FLAGS:-} &
  s2=$!
  for port in $p1 $p2; do
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  done
  sleep 1 # the relay links come up after the client port opens
  "$work/chatbench" xnode --servers "127.0.0.1:$p1,127.0.0.1:$p2" --users "$users" --window 8 --duration "${secs}s" \
    --quiet --json --prefix "r${round}v${mode}" --pids "relay-a=$relay_a,relay-b=$relay_b,msg-1=$s1,msg-2=$s2" \
    >"$work/result-$mode-$round.json" || true
  kill "$s1" "$s2"
  wait "$s1" "$s2" 2>/dev/null || true
}

for round in $(seq "$rounds"); do
  run 1 "127.0.0.1:$la" "$round"
  run 2 "127.0.0.1:$la,127.0.0.1:$lb" "$round"
done

echo "# $(nproc) cores, $users users, window 8, ${secs}s per run, $rounds rounds, one VIP and two interleaved"
python3 - "$work" "$rounds" <<'EOF'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
print(f"{'VIPs':>4} {'round':>5} {'msgs/s':>8} {'relay-a ms/1k':>13} {'relay-b ms/1k':>13} {'relays ms/1k':>12} {'msgservers ms/1k':>16} {'lost':>5} {'dup':>4}")
med = {}
for mode in (1, 2):
    for r in range(1, rounds + 1):
        try:
            res = json.load(open(f"{work}/result-{mode}-{r}.json"))
        except (OSError, ValueError) as e:
            print(f"{mode:>4} {r:>5} failed: {e}")
            continue
        cpu = res.get("cpu_ms_per_1k", {})
        a, b = cpu.get("relay-a", 0.0), cpu.get("relay-b", 0.0)
        m = cpu.get("msg-1", 0.0) + cpu.get("msg-2", 0.0)
        print(f"{mode:>4} {r:>5} {res['msgs_per_sec']:>8.0f} {a:>13.1f} {b:>13.1f} {a+b:>12.1f} {m:>16.1f} {res['lost']:>5} {res['duplicated']:>4}")
        med.setdefault(mode, []).append((res["msgs_per_sec"], a + b, m))
print()
print(f"{'VIPs':>4} {'median msgs/s':>13} {'median relays ms/1k':>19} {'median msgservers ms/1k':>23}")
for mode, v in sorted(med.items()):
    print(f"{mode:>4} {statistics.median(x[0] for x in v):>13.0f} {statistics.median(x[1] for x in v):>19.1f} {statistics.median(x[2] for x in v):>23.1f}")
EOF
