#!/usr/bin/env bash
# render.sh DIR: render this host's files into DIR with `relay render-lab`,
# from the topology and the templates built into the relay binary
# (vagrant/templates, keepalived/keepalived.conf.tmpl; package vagrant says
# what goes into each). provision.sh installs them from DIR:
#
#   relay.env, msgserver.env  /etc/chatrelay/, the units' EnvironmentFiles (per role)
#   firewall.sh               run once firewalld is up
#   redis.conf                /etc/redis/chatrelay.conf, on the Redis host
#   keepalived.conf           /etc/keepalived/keepalived.conf, on relay hosts
#
# Only two inputs are the VM's own, and they change keepalived.conf alone:
#
#   LAB_NIC           the NIC holding the host's lab address, which carries the
#                     VIP: the topology's interface (eth1) on the default box,
#                     perhaps another name on another box; empty on hosts
#                     without the relay role
#   LAB_VRRP_UNICAST  1: VRRP adverts by unicast (CHATRELAY_VRRP_UNICAST=1 vagrant up)
#
# Required: LAB_HOST, LAB_TOPOLOGY (the topology file), LAB_RELAY (the relay
# binary that renders).
set -euo pipefail

out=${1:?usage: render.sh DIR}
for v in LAB_HOST LAB_TOPOLOGY LAB_RELAY; do
	if [[ -z ${!v:-} ]]; then
		echo "render.sh: $v is not set" >&2
		exit 2
	fi
done

args=(render-lab --topology "$LAB_TOPOLOGY" --host "$LAB_HOST" --out "$out")
if [[ -n ${LAB_NIC:-} ]]; then
	args+=(--interface "$LAB_NIC")
fi
if [[ ${LAB_VRRP_UNICAST:-0} == 1 ]]; then
	args+=(--unicast)
fi
if ! "$LAB_RELAY" "${args[@]}"; then
	echo "render.sh: relay render-lab failed (above); if it says \"unexpected arguments\", vagrant/build/relay predates render-lab: run scripts/build-vagrant.sh" >&2
	exit 1
fi
echo "rendered for $LAB_HOST: $(cd "$out" && echo *)"
