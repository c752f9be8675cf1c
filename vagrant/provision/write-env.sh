#!/usr/bin/env bash
# write-env.sh: write the EnvironmentFiles the chatrelay units read, from the
# LAB_* variables the Vagrantfile takes from keepalived/topology.json:
#
#   relay.env      on hosts with the relay role      (chatrelay-relay.service)
#   msgserver.env  on hosts with the msgserver role  (chatrelay-msgserver.service)
#
# Every line is CHATRELAY_<FLAG>=value, which the binaries read as --<flag>
# (internal/cli). provision.sh runs it with LAB_ETC unset (/etc/chatrelay);
# the tests run it with LAB_ETC set to a temporary directory.
#
# Required: LAB_HOST LAB_IP LAB_ROLES LAB_VIP LAB_REDIS_IP LAB_PORT_RELAY_LINK
#           LAB_PORT_RELAY_ADMIN LAB_PORT_MSGSERVER_CLIENT LAB_PORT_MSGSERVER_ADMIN
#           LAB_PORT_REDIS
# Optional: LAB_ETC (default /etc/chatrelay), LAB_SHUTDOWN_GRACE (default 5s;
#           chatrelay-msgserver.service's TimeoutStopSec must stay above it)
set -euo pipefail

for v in LAB_HOST LAB_IP LAB_ROLES LAB_VIP LAB_REDIS_IP LAB_PORT_RELAY_LINK LAB_PORT_RELAY_ADMIN \
	LAB_PORT_MSGSERVER_CLIENT LAB_PORT_MSGSERVER_ADMIN LAB_PORT_REDIS; do
	if [[ -z ${!v:-} ]]; then
		echo "write-env.sh: $v is not set (the Vagrantfile sets it from keepalived/topology.json)" >&2
		exit 2
	fi
done
etc=${LAB_ETC:-/etc/chatrelay}
grace=${LAB_SHUTDOWN_GRACE:-5s}
# The secret's path on the VM, whatever LAB_ETC is.
secret=/etc/chatrelay/link.secret

has_role() { [[ " $LAB_ROLES " == *" $1 "* ]]; }

# write FILE: stdin to FILE atomically, mode 0644 (no secrets in it).
write() {
	local tmp
	tmp=$(mktemp "$etc/.$1.XXXXXX")
	cat >"$tmp"
	chmod 0644 "$tmp"
	mv -f -- "$tmp" "$etc/$1"
	echo "wrote $etc/$1"
}

mkdir -p -- "$etc"
header="# Written by vagrant/provision/write-env.sh from keepalived/topology.json: edit the
# topology and run \`vagrant provision ${LAB_HOST}\` rather than this file.
# CHATRELAY_<FLAG>=value sets --<flag>; \`<binary> --help\` lists them."

if has_role relay; then
	# The admin address listens on every address: keepalived's check reaches
	# it on 127.0.0.1, Prometheus on the host at ${LAB_IP} (firewalld lets
	# only the lab network in).
	write relay.env <<EOF
$header
CHATRELAY_ID=${LAB_HOST}
CHATRELAY_LISTEN=:${LAB_PORT_RELAY_LINK}
CHATRELAY_ADMIN=:${LAB_PORT_RELAY_ADMIN}
CHATRELAY_VIP=${LAB_VIP}
CHATRELAY_LINK_SECRET_FILE=${secret}
EOF
fi

if has_role msgserver; then
	# --advertise is explicit: the default (the first private address) could
	# be the NAT address Vagrant gives eth0, which no other VM can reach.
	write msgserver.env <<EOF
$header
CHATRELAY_ID=${LAB_HOST}
CHATRELAY_LISTEN=:${LAB_PORT_MSGSERVER_CLIENT}
CHATRELAY_ADVERTISE=${LAB_IP}:${LAB_PORT_MSGSERVER_CLIENT}
CHATRELAY_ADMIN=:${LAB_PORT_MSGSERVER_ADMIN}
CHATRELAY_RELAY=${LAB_VIP}:${LAB_PORT_RELAY_LINK}
CHATRELAY_REDIS=redis://${LAB_REDIS_IP}:${LAB_PORT_REDIS}/0
CHATRELAY_LINK_SECRET_FILE=${secret}
CHATRELAY_SHUTDOWN_GRACE=${grace}
EOF
fi
