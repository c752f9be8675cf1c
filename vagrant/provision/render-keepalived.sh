#!/usr/bin/env bash
# render-keepalived.sh: write this relay's keepalived.conf with
# `relay render-keepalived`, from the topology and the one template the
# namespace drill uses too; only the paths and options below are the VMs' own:
#
#   --relay-bin  /usr/local/libexec/chatrelay/relay: the copy of the relay that
#                keepalived's check runs, labelled for SELinux (provision.sh)
#   --notify     /usr/local/libexec/chatrelay/notify.sh (keepalived/notify.sh)
#   --redis      the lab's Redis, where `relay check` counts registered message
#                servers (a VIP holder without links fails only if some exist)
#   --interface  LAB_NIC, when the NIC holding the host's address is not the
#                topology's (a box other than the default)
#   --unicast    when LAB_VRRP_UNICAST=1 (CHATRELAY_VRRP_UNICAST=1 vagrant up)
#   track file, script user: the renderer's defaults, /run/chatrelay/relay.down
#                (chatrelay-relay.service writes it) and keepalived_script
#
# Required: LAB_HOST LAB_REDIS_IP LAB_PORT_REDIS; LAB_INTERFACE and LAB_NIC
# (the topology's interface and the one found on the host).
# Optional: LAB_TOPOLOGY (default /etc/chatrelay/topology.json), LAB_RELAY
# (the binary that renders, default /usr/local/bin/relay), LAB_KEEPALIVED_CONF
# (default /etc/keepalived/keepalived.conf), LAB_VRRP_UNICAST (0 or 1).
set -euo pipefail

for v in LAB_HOST LAB_REDIS_IP LAB_PORT_REDIS LAB_INTERFACE LAB_NIC; do
	if [[ -z ${!v:-} ]]; then
		echo "render-keepalived.sh: $v is not set" >&2
		exit 2
	fi
done
relay=${LAB_RELAY:-/usr/local/bin/relay}
out=${LAB_KEEPALIVED_CONF:-/etc/keepalived/keepalived.conf}

args=(render-keepalived
	--topology "${LAB_TOPOLOGY:-/etc/chatrelay/topology.json}"
	--host "$LAB_HOST"
	--out "$out"
	--relay-bin /usr/local/libexec/chatrelay/relay
	--notify /usr/local/libexec/chatrelay/notify.sh
	--redis "redis://${LAB_REDIS_IP}:${LAB_PORT_REDIS}/0")
if [[ $LAB_NIC != "$LAB_INTERFACE" ]]; then
	echo "render-keepalived.sh: the lab address is on $LAB_NIC, not the topology's $LAB_INTERFACE: rendering for $LAB_NIC" >&2
	args+=(--interface "$LAB_NIC")
fi
if [[ ${LAB_VRRP_UNICAST:-0} == 1 ]]; then
	args+=(--unicast)
fi
"$relay" "${args[@]}"
chmod 0644 -- "$out"
echo "rendered $out for $LAB_HOST (VRRP on $LAB_NIC$([[ ${LAB_VRRP_UNICAST:-0} == 1 ]] && echo ', unicast'))"
