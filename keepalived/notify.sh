#!/usr/bin/env bash
# notify.sh: keepalived's notify script for the relay VRRP instance. It logs
# every transition, to syslog (tag chatrelay-keepalived) when logger exists
# and as one line appended to a log file the failover drill and operators
# read:
#
#   2026-11-25T08:21:24.153Z host=relay-a INSTANCE=VI_RELAY state=MASTER priority=150
#
# keepalived runs it as
#   notify.sh [HOST] TYPE NAME STATE PRIORITY
# HOST is the argument the rendered keepalived.conf gives (the topology's host
# name: in the drill all namespaces share one hostname); without it,
# hostname(1) is used. keepalived appends TYPE (INSTANCE or GROUP), NAME,
# STATE (MASTER, BACKUP, FAULT, STOP or DELETED) and PRIORITY.
#
# Environment:
#   CHATRELAY_NOTIFY_LOG  log file (default /var/log/chatrelay/keepalived-transitions.log);
#                         its directory is created if missing. On the VMs keepalived
#                         runs this script as keepalived_script, which must be able to
#                         write there.
set -euo pipefail

usage() {
	echo "usage: $0 [HOST] INSTANCE|GROUP NAME STATE PRIORITY  (run by keepalived's notify)" >&2
	exit 2
}

case $# in
4) host=$(hostname 2>/dev/null || echo unknown) ;;
5)
	host=$1
	shift
	;;
*) usage ;;
esac
kind=$1 name=$2 state=$3 priority=$4
ts=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)

log=${CHATRELAY_NOTIFY_LOG:-/var/log/chatrelay/keepalived-transitions.log}
line="host=${host} ${kind}=${name} state=${state} priority=${priority}"

# syslog first: it works even when the file below cannot be written.
if command -v logger >/dev/null 2>&1; then
	logger -t chatrelay-keepalived -- "$line" 2>/dev/null || true
fi

# One short line per write with O_APPEND: lines from both relays (drill) or
# from quick successive transitions never interleave.
mkdir -p -- "$(dirname -- "$log")"
printf '%s %s\n' "$ts" "$line" >>"$log"
