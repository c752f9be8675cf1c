#!/usr/bin/env bash
# provision.sh: set up one lab VM for its roles (relay, msgserver, redis).
# Vagrant runs it as root after uploading its inputs to LAB_STAGE:
#
#   LAB_STAGE/topology.json          ../keepalived/topology.json
#   LAB_STAGE/provision/*.sh         this folder
#   LAB_STAGE/build/chatrelay.x86_64.rpm, LAB_STAGE/build/link.secret,
#   LAB_STAGE/build/redis.password
#                                    from scripts/build-vagrant.sh: the chatrelay
#                                    package (relay, msgserver, their units,
#                                    keepalived's check and notify script, the
#                                    users, SELinux labels: packaging/) and the
#                                    link secret and the lab Redis's password
#   LAB_STAGE/pki/ca.pem, LAB_STAGE/pki/host/*.pem    the lab CA's certificate and this
#                                    host's certificates and keys (never the CA's key),
#                                    from scripts/build-vagrant.sh (relay gen-certs)
#
# The package is installed first (rpm -U --replacepkgs --oldpackage: a
# rebuilt package replaces the installed one, whatever their versions), then
# every file that depends on the topology (env files, firewall rules, Redis
# settings, keepalived.conf) is rendered from LAB_STAGE/topology.json by the
# installed relay (render.sh), and installed. The other LAB_* variables (this
# host's name, address and roles, the ports it checks) are set by the
# Vagrantfile from the same topology. Re-running (`vagrant provision`)
# reinstalls and renders everything and restarts the services. LAB_STAGE is
# removed at the end, as it holds the link secret and this host's TLS keys.
#
# SELinux stays enforcing. The package's postinstall.sh gives keepalived
# what it needs (packaging/postinstall.sh says why): its check and notify
# script in /usr/libexec/chatrelay run unconfined
# (keepalived_unconfined_script_exec_t), and /run/chatrelay, the track file's
# folder, is keepalived_var_run_t. It needs semanage, so
# policycoreutils-python-utils is installed before the package.
set -euo pipefail

: "${LAB_STAGE:?set by the Vagrantfile}" "${LAB_HOST:?}" "${LAB_IP:?}" "${LAB_ROLES:?}"
: "${LAB_PORT_RELAY_ADMIN:?}" "${LAB_PORT_MSGSERVER_ADMIN:?}" "${LAB_PORT_REDIS:?}"
stage=$LAB_STAGE
rendered=$stage/rendered

log() { printf '[chatrelay %s] %s\n' "$LAB_HOST" "$*"; }
die() {
	printf '[chatrelay %s] ERROR: %s\n' "$LAB_HOST" "$*" >&2
	exit 1
}
has_role() { [[ " $LAB_ROLES " == *" $1 "* ]]; }

trap 'rm -rf -- "$stage"' EXIT

# --- inputs -----------------------------------------------------------------
missing=()
rpm_file=$stage/build/chatrelay.x86_64.rpm
for f in chatrelay.x86_64.rpm link.secret redis.password; do
	[[ -s $stage/build/$f ]] || missing+=("vagrant/build/$f")
done
if ((${#missing[@]} > 0)); then
	die "${missing[*]} not found: the chatrelay package, the link secret and the Redis password are made on the host. Run scripts/build-vagrant.sh in the repository, then: vagrant provision ${LAB_HOST}"
fi
# An RPM starts with the lead's magic bytes ed ab ee db.
if [[ $(head -c 4 "$rpm_file" | od -An -tx1 | tr -d ' \n') != 'edabeedb' ]]; then
	die "vagrant/build/chatrelay.x86_64.rpm is not an RPM: rebuild it with scripts/build-vagrant.sh"
fi
for f in topology.json provision/render.sh; do
	[[ -s $stage/$f ]] || missing+=("$f")
done
if ((${#missing[@]} > 0)); then
	die "not uploaded to ${stage}: ${missing[*]} (the Vagrantfile uploads them; is the repository complete?)"
fi
# The TLS files of this host's roles (keepalived/certs.go says which).
certs=()
has_role relay && certs+=(relay check)
has_role msgserver && certs+=(msgserver)
has_role redis && certs+=(redis)
[[ -s $stage/pki/ca.pem ]] || missing+=("vagrant/build/pki/ca.pem")
for c in "${certs[@]}"; do
	for f in "$c.pem" "$c-key.pem"; do
		[[ -s $stage/pki/host/$f ]] || missing+=("vagrant/build/pki/${LAB_HOST}/$f")
	done
done
if ((${#missing[@]} > 0)); then
	die "${missing[*]} not found: the lab's certificates are made on the host. Run scripts/build-vagrant.sh in the repository (after a topology change too), then: vagrant provision ${LAB_HOST}"
fi

[[ $(id -u) -eq 0 ]] || die "run as root (Vagrant's shell provisioner does)"

# --- packages ---------------------------------------------------------------
# curl: the images ship curl-minimal, which provides /usr/bin/curl and
# conflicts with the curl package (dnf would abort): ask for curl only where
# there is none.
packages=(firewalld policycoreutils-python-utils)
command -v curl >/dev/null 2>&1 || packages+=(curl)
has_role relay && packages+=(keepalived)
has_role redis && packages+=(redis)
log "dnf install ${packages[*]}"
dnf -y -q install "${packages[@]}"
log "rpm -U $(rpm -qp --qf '%{NAME}-%{VERSION}-%{RELEASE}' "$rpm_file" 2>/dev/null || echo chatrelay)"
rpm -U --replacepkgs --oldpackage --quiet "$rpm_file" ||
	die "installing vagrant/build/chatrelay.x86_64.rpm failed (above)"

selinux=0
if selinuxenabled 2>/dev/null; then
	selinux=1
	log "SELinux: $(getenforce)"
fi
relabel() {
	((selinux)) || return 0
	restorecon -RF "$@"
}

# --- this host's files, rendered from the topology --------------------------
# By the relay the package installed. On relay hosts, keepalived puts the VIP
# on the NIC that holds the host's lab address: eth1 on the default box (the
# topology's interface); with another box it may be named otherwise.
nic=""
if has_role relay; then
	nic=$(ip -o -4 addr show to "${LAB_IP}/32" | awk '{print $2; exit}')
	[[ -n $nic ]] || die "no interface holds ${LAB_IP}: is the private network up?"
fi
# LAB_VRRP_UNICAST, from the Vagrantfile, reaches render.sh as it is.
LAB_RELAY=/usr/bin/relay LAB_TOPOLOGY=$stage/topology.json LAB_NIC=$nic \
	bash "$stage/provision/render.sh" "$rendered"

# --- common: configuration, firewall ---------------------------------------
# The chatrelay user, /etc/chatrelay, the binaries and units come with the
# package.
install -d -m 0755 /etc/chatrelay
install -m 0644 "$stage/topology.json" /etc/chatrelay/topology.json
# The secret is readable by the services' user, and nobody else.
install -m 0640 -o root -g chatrelay "$stage/build/link.secret" /etc/chatrelay/link.secret
# So is the Redis password (--redis-password-file); keepalived's check gets
# its own copy below.
install -m 0640 -o root -g chatrelay "$stage/build/redis.password" /etc/chatrelay/redis.password
# TLS (keepalived/certs.go): the CA's certificate, and this host's certificates
# with their keys readable by the services' user only. keepalived's check
# gets its own certificate below, Redis its own under /etc/redis/tls.
install -d -m 0755 /etc/chatrelay/tls
install -m 0644 "$stage/pki/ca.pem" /etc/chatrelay/tls/ca.pem
if has_role relay; then
	install -m 0644 "$stage/pki/host/relay.pem" /etc/chatrelay/tls/relay.pem
	install -m 0640 -o root -g chatrelay "$stage/pki/host/relay-key.pem" /etc/chatrelay/tls/relay-key.pem
fi
if has_role msgserver; then
	install -m 0644 "$stage/pki/host/msgserver.pem" /etc/chatrelay/tls/msgserver.pem
	install -m 0640 -o root -g chatrelay "$stage/pki/host/msgserver-key.pem" /etc/chatrelay/tls/msgserver-key.pem
fi
# The units' EnvironmentFiles (no secrets in them).
for f in relay.env msgserver.env; do
	if [[ -f $rendered/$f ]]; then
		install -m 0644 "$rendered/$f" "/etc/chatrelay/$f"
	fi
done

relabel /etc/chatrelay

systemctl enable --now firewalld
bash "$rendered/firewall.sh"

# unit NAME: enable the package's unit NAME and (re)start it.
unit() {
	systemctl enable "$1"
	systemctl restart "$1"
}
# healthy NAME PORT: wait up to 10 s for /healthz on 127.0.0.1:PORT.
healthy() {
	local i
	for ((i = 0; i < 50; i++)); do
		if curl -fsS -m 1 -o /dev/null "http://127.0.0.1:$2/healthz"; then
			log "$1 answers on 127.0.0.1:$2/healthz"
			return 0
		fi
		sleep 0.2
	done
	journalctl -u "$1" -n 30 --no-pager >&2 || true
	die "$1 did not answer on 127.0.0.1:$2/healthz within 10 s (its log is above)"
}

# --- redis ------------------------------------------------------------------
# Bound to the lab address (and loopback) without a password, protected mode
# off (redis.conf says why): the firewall lets only the lab network reach it.
# Its password (requirepass) is the lab's redis.password, in a file only
# redis reads.
if has_role redis; then
	conf=/etc/redis/redis.conf # CentOS Stream 9's redis (6.2, or the redis:7 module)
	[[ -f $conf ]] || die "$conf not found: is this CentOS Stream 9's redis package?"
	install -m 0640 -o root -g redis "$rendered/redis.conf" /etc/redis/chatrelay.conf
	(
		umask 077
		printf 'requirepass %s\n' "$(tr -d '[:space:]' <"$stage/build/redis.password")" >"$stage/chatrelay-auth.conf"
	)
	install -m 0640 -o root -g redis "$stage/chatrelay-auth.conf" /etc/redis/chatrelay-auth.conf
	# TLS only (redis.conf): its certificate, key and the CA's certificate,
	# where the policy lets redis_t read them.
	install -d -m 0750 -o root -g redis /etc/redis/tls
	install -m 0644 "$stage/pki/ca.pem" /etc/redis/tls/ca.pem
	install -m 0644 "$stage/pki/host/redis.pem" /etc/redis/tls/redis.pem
	install -m 0640 -o root -g redis "$stage/pki/host/redis-key.pem" /etc/redis/tls/redis-key.pem
	# Last line, so it overrides the packaged bind/port/protected-mode.
	grep -qxF 'include /etc/redis/chatrelay.conf' "$conf" ||
		echo 'include /etc/redis/chatrelay.conf' >>"$conf"
	# Binding the lab address needs eth1 configured: start after the network.
	install -d -m 0755 /etc/systemd/system/redis.service.d
	printf '[Unit]\nWants=network-online.target\nAfter=network-online.target\n' \
		>/etc/systemd/system/redis.service.d/chatrelay.conf
	relabel /etc/redis /etc/systemd/system/redis.service.d
	if ((selinux)) && ! semanage port -l | grep -E '^redis_port_t ' | grep -qw "$LAB_PORT_REDIS"; then
		semanage port -a -t redis_port_t -p tcp "$LAB_PORT_REDIS" 2>/dev/null ||
			semanage port -m -t redis_port_t -p tcp "$LAB_PORT_REDIS"
	fi
	systemctl daemon-reload
	systemctl enable redis
	systemctl restart redis
	for ((i = 0; ; i++)); do
		[[ $(REDISCLI_AUTH=$(tr -d '[:space:]' <"$stage/build/redis.password") \
			redis-cli --tls --cacert /etc/chatrelay/tls/ca.pem -h "$LAB_IP" -p "$LAB_PORT_REDIS" ping 2>/dev/null) == PONG ]] && break
		((i < 50)) || die "redis does not answer PING over TLS on ${LAB_IP}:${LAB_PORT_REDIS}"
		sleep 0.2
	done
	log "redis answers over TLS on ${LAB_IP}:${LAB_PORT_REDIS}"
fi

# --- message server ---------------------------------------------------------
if has_role msgserver; then
	unit chatrelay-msgserver.service
	healthy chatrelay-msgserver.service "$LAB_PORT_MSGSERVER_ADMIN"
fi

# --- relay + keepalived -----------------------------------------------------
if has_role relay; then
	# The package made the keepalived_script user, /run/chatrelay (at every
	# boot too: tmpfiles.d), /var/log/chatrelay and installed the check and
	# notify.sh in /usr/libexec/chatrelay, labelled for SELinux.

	# The check's client certificate for the link port (mutual TLS), readable
	# by the script user only.
	install -m 0644 "$stage/pki/host/check.pem" /etc/chatrelay/tls/check.pem
	install -m 0640 -o root -g keepalived_script "$stage/pki/host/check-key.pem" /etc/chatrelay/tls/check-key.pem
	install -m 0640 -o root -g keepalived_script "$stage/build/redis.password" /etc/chatrelay/redis-check.password
	relabel /etc/chatrelay/tls

	install -m 0644 "$rendered/keepalived.conf" /etc/keepalived/keepalived.conf
	relabel /etc/keepalived/keepalived.conf
	keepalived -t -f /etc/keepalived/keepalived.conf ||
		die "keepalived -t rejects the rendered /etc/keepalived/keepalived.conf"

	unit chatrelay-relay.service
	healthy chatrelay-relay.service "$LAB_PORT_RELAY_ADMIN"
	systemctl enable keepalived
	systemctl restart keepalived
	log "keepalived started; the VIP goes to the first relay whose check passes"
fi

log "done: roles ${LAB_ROLES}, ${LAB_IP} on the lab network"
