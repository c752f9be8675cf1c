#!/usr/bin/env bash
# relay-supervise.sh: run the relay (or any command) as a child and report
# whether it is alive in keepalived's track file, so keepalived releases the
# VIP the moment the relay dies instead of at the next 1 s health check.
#
#   CHATRELAY_TRACK_FILE=/run/chatrelay/relay.down relay-supervise.sh /usr/bin/relay --vip ...
#
# - starts the command, then writes 0 to the track file (relay up);
# - waits for it; when it exits, in any way (crash, SIGKILL, clean stop),
#   writes 1 (relay down) and exits with the child's status (128+N for
#   signal N, as a shell reports it);
# - forwards SIGTERM and SIGINT to the child, and still waits for it.
# If this script itself is SIGKILLed nothing can be written; supervise the
# relay with systemd (ExecStartPost/ExecStopPost) where that matters: this
# script stands in for it in the namespace drill.
#
# Environment:
#   CHATRELAY_TRACK_FILE  (required) the file the rendered keepalived.conf tracks
#   CHATRELAY_PID_FILE    (optional) the child's pid is written here while it runs
set -euo pipefail

if [[ -z ${CHATRELAY_TRACK_FILE:-} ]]; then
	echo "relay-supervise.sh: CHATRELAY_TRACK_FILE must name keepalived's track file" >&2
	exit 2
fi
if [[ $# -eq 0 ]]; then
	echo "usage: CHATRELAY_TRACK_FILE=FILE $0 COMMAND [ARG...]" >&2
	exit 2
fi
track=$CHATRELAY_TRACK_FILE
pidfile=${CHATRELAY_PID_FILE:-}

# Replace the file atomically: keepalived reads it on every inotify event and
# must never see it empty or half written.
report() {
	local tmp
	tmp=$(mktemp "${track}.XXXXXX")
	printf '%s\n' "$1" >"$tmp"
	chmod 0644 "$tmp"
	mv -f -- "$tmp" "$track"
}

child=
pending=
# cleanup runs from the EXIT trap, which shellcheck does not follow.
# shellcheck disable=SC2317
cleanup() {
	local status=$?
	trap - EXIT TERM INT
	report 1 || echo "relay-supervise.sh: cannot write 1 to $track" >&2
	if [[ -n $pidfile ]]; then
		rm -f -- "$pidfile"
	fi
	exit "$status"
}
forward() {
	if [[ -n $child ]]; then
		kill -s "$1" "$child" 2>/dev/null || true
	else
		pending=$1 # arrived before the child started: deliver it then
	fi
}
trap cleanup EXIT
trap 'forward TERM' TERM
trap 'forward INT' INT

# A background child of a non-interactive shell starts with SIGINT ignored;
# the relay (Go's signal.Notify) takes it back, so forwarding INT works.
"$@" &
child=$!
if [[ -n $pending ]]; then
	forward "$pending"
fi
if [[ -n $pidfile ]]; then
	printf '%s\n' "$child" >"$pidfile"
fi
report 0

# wait returns early (status > 128) when a trapped signal arrives: wait again
# until the child is really gone, then once more to collect its own status.
status=0
while kill -0 "$child" 2>/dev/null; do
	wait "$child" || true
done
wait "$child" || status=$?
exit "$status"
