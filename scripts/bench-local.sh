#!/usr/bin/env bash
# Starts the tier on loopback as real processes (redis-server, one relay,
# two message servers), runs the standard loads through it and through the
# direct-link baseline (chatbench direct) in interleaved rounds, and prints
# one table of medians: tier against baseline, CPU per 1 000 delivered
# messages for every process, refusals, resends, evenness, memory growth.
# Then idle sessions on a fresh message server (RSS and CPU per login),
# and the same against the login baseline. Stops everything on exit.
#
#   scripts/bench-local.sh [users] [seconds] [rounds] [idle sessions (0: none)]
#
# BIN=dir uses binaries already built there (relay, msgserver, chatbench)
# instead of building the working tree, to compare versions. PROFILE=dir
# also saves a 5 s CPU profile of msg-1, msg-2 and the relay during the
# first round's tier run of PROFILE_LOAD (closed-w64 unless set), and
# their allocation profiles after it.
# RAW=file keeps every run's JSON line. LOADS="closed-w8 rate5000" runs only
# those loads. The tier's logs go to a file; the table says how many
# warnings they hold.
set -euo pipefail

users=${1:-1000}
secs=${2:-10}
rounds=${3:-3}
idle=${4:-19000}
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
rport=$(free_port); lport=$(free_port); p1=$(free_port); p2=$(free_port)
a1=$(free_port); a2=$(free_port); ar=$(free_port)

redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
"$work/relay" --listen "127.0.0.1:$lport" --admin "127.0.0.1:$ar" --pprof --link-secret-file "$work/secret" --log-level warn 2>>"$work/tier.log" &
pids+=($!)
msgserver() { # id port admin
  "$work/msgserver" --id "$1" --listen "127.0.0.1:$2" --relay "127.0.0.1:$lport" \
    --redis "redis://127.0.0.1:$rport/0" --link-secret-file "$work/secret" --log-level warn \
    --admin "127.0.0.1:$3" --pprof 2>>"$work/tier.log" &
  pids+=($!)
}
msgserver msg-1 "$p1" "$a1"
msgserver msg-2 "$p2" "$a2"
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; }
for port in $p1 $p2 $a1 $a2 $ar; do wait_port "$port"; done

redis_pid=${pids[0]}; relay_pid=${pids[1]}; m1=${pids[2]}; m2=${pids[3]}
watch="redis=$redis_pid,relay=$relay_pid,msg-1=$m1,msg-2=$m2"
servers="127.0.0.1:$p1,127.0.0.1:$p2"
results=$work/results.jsonl
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1==m {print $2; f=1} END {if (!f) print 0}'; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# run KIND NAME ARGS...: one chatbench run, its JSON result with the name,
# the message servers' resends and their RSS growth added, as one line.
n=0
run() {
  local kind=$1 name=$2; shift 2
  case " ${LOADS:-$name} " in *" $name "*) ;; *) return ;; esac
  n=$((n + 1))
  local r0 r1 s0 s1 out
  r0=$(rss_kb "$m1"); s0=$(( $(metric "$a1" msgserver_resent_frames_total) + $(metric "$a2" msgserver_resent_frames_total) ))
  if [ "$kind" = tier ]; then
    out=$("$work/chatbench" xnode --servers "$servers" --users "$users" --duration "${secs}s" --prefix "r$n" --pids "$watch" --json --quiet "$@" || true)
  else
    out=$("$work/chatbench" direct --users "$users" --duration "${secs}s" --json --quiet "$@" || true)
  fi
  r1=$(rss_kb "$m1"); s1=$(( $(metric "$a1" msgserver_resent_frames_total) + $(metric "$a2" msgserver_resent_frames_total) ))
  if [ -z "$out" ]; then echo "run $name ($kind) failed" >&2; return; fi
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(name=sys.argv[2], kind=sys.argv[3], resent=int(float(sys.argv[4])), rss_growth_mb=int(sys.argv[5])/1024); print(json.dumps(d))' \
    "$out" "$name" "$kind" "$((s1 - s0))" "$((r1 - r0))" >>"$results"
  printf '.' >&2
}

profile() { # during a run: CPU profiles of the tier, then allocations
  local dir=$1
  mkdir -p "$dir"
  sleep 3
  curl -s -o "$dir/msg-1.cpu" "http://127.0.0.1:$a1/debug/pprof/profile?seconds=5" &
  curl -s -o "$dir/msg-2.cpu" "http://127.0.0.1:$a2/debug/pprof/profile?seconds=5" &
  curl -s -o "$dir/relay.cpu" "http://127.0.0.1:$ar/debug/pprof/profile?seconds=5" &
  wait
  curl -s -o "$dir/msg-1.allocs" "http://127.0.0.1:$a1/debug/pprof/allocs"
  curl -s -o "$dir/relay.allocs" "http://127.0.0.1:$ar/debug/pprof/allocs"
}

echo "# $(nproc) cores, $users users, ${secs}s per run, $rounds interleaved rounds, $idle idle sessions" >&2
for round in $(seq "$rounds"); do
  printf 'round %d ' "$round" >&2
  for load in "closed-w8 --window 8" "closed-w64 --window 64" "reply-w8 --window 8 --closed reply" "rate5000 --rate 5000"; do
    # shellcheck disable=SC2086 # the load's name and flags, split on purpose
    set -- $load
    if [ "$round" = 1 ] && [ -n "${PROFILE:-}" ] && [ "$1" = "${PROFILE_LOAD:-closed-w64}" ]; then
      profile "$PROFILE" &
      prof=$!
      run tier "$@"
      wait "$prof"
    else
      run tier "$@"
    fi
    run direct "$@"
  done
  echo >&2
done
[ -n "${RAW:-}" ] && cp "$results" "$RAW"

if [ -s "$results" ]; then # LOADS=none: only the idle step
python3 - "$results" "$work/tier.log" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float('nan')
def pick(name, kind):
    return [r for r in runs if r['name'] == name and r['kind'] == kind]
def tiercpu(r):
    c = r.get('cpu_ms_per_1k') or {}
    return sum(c.values()) if c else None
def tiersys(r):
    c = r.get('syscalls_per_1k') or {}
    return sum(c.values()) if c else None
def ratio(a, b):
    return a / b if b else float('nan')
print(f"medians of {max(len(pick('closed-w8','tier')),1)} interleaved rounds (tier / direct link in the same round, then the median of the ratios)")
print(f"{'load':<11} {'':>6} {'msgs/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99/p50':>7} {'CPU/1k':>7} {'refused':>7} {'resent':>7} {'even':>5} {'RSS+MB':>6} {'sys/1k':>6}  CPU ms per 1k by process")
for name in ['closed-w8', 'closed-w64', 'reply-w8', 'rate5000']:
    t, d = pick(name, 'tier'), pick(name, 'direct')
    if not t or not d:
        continue
    for kind, rs in (('tier', t), ('direct', d)):
        cpu = med([tiercpu(r) if kind == 'tier' else r.get('node_cpu_ms_per_1k') for r in rs])
        sys_ = med([tiersys(r) if kind == 'tier' else r.get('node_syscalls_per_1k') for r in rs])
        procs = ''
        if kind == 'tier':
            names = sorted(set(k for r in rs for k in (r.get('cpu_ms_per_1k') or {})))
            procs = '  '.join(f"{k} {med([(r.get('cpu_ms_per_1k') or {}).get(k) for r in rs]):.2f}" for k in names)
        procs += f"  load-gen {med([r.get('bench_cpu_ms_per_1k') for r in rs]):.2f}"
        print(f"{name:<11} {kind:>6} {med([r['msgs_per_sec'] for r in rs]):>8.0f} {med([r['p50_ms'] for r in rs]):>8.2f} "
              f"{med([r['p99_ms'] for r in rs]):>8.2f} {med([ratio(r['p99_ms'], r['p50_ms']) for r in rs]):>7.1f} {cpu:>7.2f} "
              f"{sum(r['errors'] for r in rs):>7d} {sum(r.get('resent', 0) for r in rs) if kind == 'tier' else 0:>7d} "
              f"{med([r.get('evenness') for r in rs]):>5.2f} {med([r.get('rss_growth_mb') for r in rs]) if kind == 'tier' else 0:>6.1f} {sys_:>6.0f}  {procs}")
    pairs = list(zip(t, d))
    print(f"{'':<11} {'ratio':>6} {med([ratio(a['msgs_per_sec'], b['msgs_per_sec']) for a, b in pairs]):>8.2f} "
          f"{med([ratio(a['p50_ms'], b['p50_ms']) for a, b in pairs]):>8.2f} {med([ratio(a['p99_ms'], b['p99_ms']) for a, b in pairs]):>8.2f} "
          f"{'':>7} {med([ratio(tiercpu(a), b.get('node_cpu_ms_per_1k')) for a, b in pairs if tiercpu(a)]):>7.2f}")
warns = sum(1 for l in open(sys.argv[2]) if 'level=WARN' in l or 'level=ERROR' in l)
print(f"tier log: {warns} warnings and errors")
refused = {}
for r in runs:
    for k, v in (r.get('refused') or {}).items():
        refused[f"{r['kind']} {r['name']} {k}"] = refused.get(f"{r['kind']} {r['name']} {k}", 0) + v
if refused:
    print("refusals, all rounds:", refused)
print("refused and resent: totals over all rounds; even: median over runs of the slowest server's senders' delivered rate over the fastest's, second by second;")
print("sys/1k: read and write system calls per 1 000 delivered (tier: all four processes; direct: both nodes)")
print("RSS+MB: msg-1's RSS growth over the run; CPU/1k: tier = redis + relay + msg-1 + msg-2, direct = both nodes; the load generator is apart")
EOF
fi

[ "$idle" -gt 0 ] || exit 0 # idle 0: the loads only

# Idle: a fresh message server, so RSS per session is not flattered by a
# heap the loads above grew. Presence in Redis is counted apart.
p3=$(free_port); a3=$(free_port)
msgserver msg-3 "$p3" "$a3"
m3=${pids[-1]}
wait_port "$p3"; wait_port "$a3"
redis_mem() { redis-cli -p "$rport" info memory | awk -F: '/^used_memory:/ {print $2+0}'; }
rm0=$(redis_mem)
"$work/chatbench" idle --server "127.0.0.1:$p3" --sessions "$idle" --pid "$m3" --redis-pid "$redis_pid" --settle 25s --hold 2s --quiet >"$work/idle.txt" || true
rm1=$(redis_mem)
# The login baseline: a bare server on the same kind of listener that
# accepts, reads and parses the login line, answers and holds (no token,
# no Redis, no limits).
"$work/chatbench" idle --floor --sessions "$idle" --settle 25s --hold 2s --quiet | tail -n +2 >>"$work/idle.txt" || true
cat "$work/idle.txt"
python3 -c 'import sys; n,m0,m1=map(float,sys.argv[1:]); print(f"redis: {(m1-m0)/n:.0f} bytes of presence per session")' "$idle" "$rm0" "$rm1"
echo "CPU per login: from the first connection to 2 s after the last login (parking and the second inbox read included); floor: the login baseline"
