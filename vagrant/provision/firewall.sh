#!/usr/bin/env bash
# firewall.sh: open what this host's roles need in firewalld's default zone
# (where Vagrant's eth1 is), permanently, then reload. SSH stays open (the
# box's default). Every address and port comes from the LAB_* variables the
# Vagrantfile takes from keepalived/topology.json; LAB_CIDR is the lab
# network (the VIP's subnet: the VMs and the host, which is .1 on it).
#
#   relay      VRRP (IP protocol 112) from the other relays only: keepalived's
#              adverts, multicast to 224.0.0.18 or unicast (--unicast);
#              the relay link port from the lab network (message servers dial
#              the VIP); the relay admin port (/healthz, /metrics) from the lab
#              network, for Prometheus on the host
#   msgserver  the client port from anywhere (telnet and app clients);
#              the admin port from the lab network, for Prometheus
#   redis      the Redis port from the lab network only (no password: see
#              provision.sh)
#
# Re-running is harmless: firewall-cmd answers ALREADY_ENABLED with exit 0.
# The tests run this with a stand-in firewall-cmd that records its arguments.
set -euo pipefail

for v in LAB_IP LAB_ROLES LAB_CIDR LAB_RELAY_IPS LAB_PORT_RELAY_LINK LAB_PORT_RELAY_ADMIN \
	LAB_PORT_MSGSERVER_CLIENT LAB_PORT_MSGSERVER_ADMIN LAB_PORT_REDIS; do
	if [[ -z ${!v:-} ]]; then
		echo "firewall.sh: $v is not set (the Vagrantfile sets it from keepalived/topology.json)" >&2
		exit 2
	fi
done

has_role() { [[ " $LAB_ROLES " == *" $1 "* ]]; }

# from_lab PORT: accept TCP to PORT from the lab network only.
from_lab() {
	firewall-cmd --quiet --permanent \
		--add-rich-rule="rule family=\"ipv4\" source address=\"${LAB_CIDR}\" port port=\"$1\" protocol=\"tcp\" accept"
}

if has_role relay; then
	read -r -a relay_ips <<<"$LAB_RELAY_IPS"
	for peer in "${relay_ips[@]}"; do
		[[ $peer == "$LAB_IP" ]] && continue
		firewall-cmd --quiet --permanent \
			--add-rich-rule="rule family=\"ipv4\" source address=\"${peer}\" protocol value=\"vrrp\" accept"
	done
	from_lab "$LAB_PORT_RELAY_LINK"
	from_lab "$LAB_PORT_RELAY_ADMIN"
fi
if has_role msgserver; then
	firewall-cmd --quiet --permanent --add-port="${LAB_PORT_MSGSERVER_CLIENT}/tcp"
	from_lab "$LAB_PORT_MSGSERVER_ADMIN"
fi
if has_role redis; then
	from_lab "$LAB_PORT_REDIS"
fi
firewall-cmd --quiet --reload
echo "firewalld: $(firewall-cmd --list-all | tr -s ' \n' ' ')"
