#!/usr/bin/env bash
# What TLS costs, measured in one run: the tier on loopback as real
# processes (redis-server, one relay, two message servers), first in
# plaintext, then with TLS on the client ports and on the relay link (mutual
# TLS, as the lab runs it), under the same chatbench loads. chatbench xnode
# reports each process's CPU time per 1 000 delivered messages; chatbench
# idle the message server's resident memory per idle (parked) session.
# Redis stays plaintext in both: it is not on a message's path.
#
#   scripts/bench-tls.sh [users] [seconds] [idle sessions] [open-loop rate]
#
# BIN=dir uses binaries already built there (relay, msgserver, chatbench).
set -euo pipefail

users=${1:-1000}
secs=${2:-10}
idle=${3:-10000}
rate=${4:-5000} # one both modes sustain, so CPU per message compares like with like
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
command -v openssl >/dev/null || {
	echo "openssl missing: apt-get install openssl" >&2
	exit 1
}

# A throwaway CA, and P-256 certificates for 127.0.0.1 (the relay's, and
# each message server's for its client port and, as a client, the link:
# its common name is its server id).
pki=$work/pki
mkdir "$pki"
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
	-subj "/CN=bench CA" -keyout "$pki/ca-key.pem" -out "$pki/ca.pem" 2>/dev/null
for name in relay msg-1 msg-2; do
	openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
		-keyout "$pki/$name-key.pem" -out "$pki/$name.csr" 2>/dev/null
	printf 'subjectAltName=IP:127.0.0.1,DNS:%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$name" >"$pki/$name.ext"
	openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca-key.pem" -CAcreateserial \
		-days 1 -extfile "$pki/$name.ext" -out "$pki/$name.pem" 2>/dev/null
done

rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)

# tier MODE: start a relay and two message servers, plaintext or tls; sets
# tier_pids, servers, watch and admin1.
tier() {
	local mode=$1 lport p1 p2 relay_tls=() i port
	lport=$(free_port)
	p1=$(free_port)
	p2=$(free_port)
	admin1=127.0.0.1:$(free_port)
	if [ "$mode" = tls ]; then
		relay_tls=(--tls-cert "$pki/relay.pem" --tls-key "$pki/relay-key.pem" --link-client-ca "$pki/ca.pem")
	fi
	"$work/relay" --listen "127.0.0.1:$lport" --admin "" --link-secret-file "$work/secret" --log-level error "${relay_tls[@]}" &
	tier_pids=($!)
	for i in 1 2; do
		port=$p1
		[ "$i" = 2 ] && port=$p2
		local server_tls=()
		if [ "$mode" = tls ]; then
			server_tls=(--tls-cert "$pki/msg-$i.pem" --tls-key "$pki/msg-$i-key.pem"
				--link-ca "$pki/ca.pem" --link-cert "$pki/msg-$i.pem" --link-key "$pki/msg-$i-key.pem")
		fi
		"$work/msgserver" --id "msg-$i" --listen "127.0.0.1:$port" --relay "127.0.0.1:$lport" \
			--redis "redis://127.0.0.1:$rport/0" --link-secret-file "$work/secret" --log-level error \
			--admin "$([ "$i" = 1 ] && echo "$admin1")" "${server_tls[@]}" &
		tier_pids+=($!)
	done
	pids+=("${tier_pids[@]}")
	for port in $p1 $p2; do
		for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
	done
	sleep 1 # the links come up within a few ms of the servers' start
	watch="relay=${tier_pids[0]},msg-1=${tier_pids[1]},msg-2=${tier_pids[2]}"
	servers="127.0.0.1:$p1,127.0.0.1:$p2"
}

stop_tier() {
	kill "${tier_pids[@]}" 2>/dev/null || true
	wait "${tier_pids[@]}" 2>/dev/null || true
}

echo "# $(nproc) cores, $users users, ${secs}s per run, $idle idle sessions"
for mode in plaintext tls; do
	tier "$mode"
	ca=()
	[ "$mode" = tls ] && ca=(--tls-ca "$pki/ca.pem")
	echo
	# First, on the fresh tier: settle past the park time (5 s) and the
	# memory check (10 s).
	echo "## $mode: idle sessions, parked: RSS per session, logins/s (handshakes included)"
	"$work/chatbench" idle --server "${servers%%,*}" --sessions "$idle" --metrics "http://$admin1/metrics" \
		--settle 20s --hold 1s --prefix "$mode" --quiet "${ca[@]}"
	echo "## $mode: closed loop (window 8), then open loop at $rate msgs/s"
	"$work/chatbench" xnode --servers "$servers" --users "$users" --window 8 --duration "${secs}s" --quiet \
		--prefix "$mode-w" --pids "$watch" "${ca[@]}"
	"$work/chatbench" xnode --servers "$servers" --users "$users" --rate "$rate" --duration "${secs}s" --quiet \
		--prefix "$mode-r" --pids "$watch" "${ca[@]}"
	stop_tier
done
