#!/usr/bin/env bash
# build-vagrant.sh: build what the Vagrant VMs run, on the host, before
# `vagrant up` (see vagrant/README.md):
#
#   DIR/chatrelay.x86_64.rpm  the chatrelay package (scripts/build-packages.sh:
#                             relay and msgserver for linux/amd64, statically
#                             linked, their units, keepalived's check and
#                             notify script): the VMs are CentOS Stream 9
#                             x86_64, have no Go, and install it with rpm -U
#   DIR/link.secret           the shared link secret (64 hex characters, mode
#                             0600), created once and then kept, so rebuilding
#                             does not break the links of running VMs
#   DIR/pki/                  the lab's CA and each host's certificates, from
#                             keepalived/topology.json (relay gen-certs): the
#                             CA is made once and its key never leaves this
#                             host; certificates are reissued when missing,
#                             near their end or no longer matching the topology
#
# DIR is vagrant/build (ignored by git) unless --out DIR is given. The package
# is built in a temporary folder and renamed into place, so a failed build
# never leaves a half-written one for the provisioner to install. The relay
# binary also holds the templates each VM renders its files from
# (vagrant/templates, keepalived/keepalived.conf.tmpl): after changing one,
# build again.
set -euo pipefail

usage() {
	echo "usage: $0 [--out DIR]   (default DIR: vagrant/build in the repository)" >&2
	exit 2
}

root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/vagrant/build
while (($# > 0)); do
	case $1 in
	--out)
		(($# >= 2)) || usage
		out=$2
		shift 2
		;;
	-h | --help) usage ;;
	*) usage ;;
	esac
done

export PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || {
	echo "$0: go not found (install Go, or put /usr/local/go/bin on PATH)" >&2
	exit 1
}

mkdir -p -- "$out"
out=$(cd "$out" && pwd)

tmp=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf -- "$tmp"' EXIT

cd "$root"
rpm_file=$("$root/scripts/build-packages.sh" --rpm-only --out "$tmp/pkg")
mv -f -- "$rpm_file" "$out/chatrelay.x86_64.rpm"
echo "built $out/chatrelay.x86_64.rpm ($(basename -- "$rpm_file"))"
# Binaries of earlier builds (before the lab installed the package).
rm -f -- "$out/relay" "$out/msgserver"

secret=$out/link.secret
if [[ -s $secret ]]; then
	echo "kept  $secret"
else
	# 32 random bytes as hex; od is in coreutils, so no openssl is needed.
	(
		umask 077
		od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$tmp/link.secret"
		echo >>"$tmp/link.secret"
	)
	mv -f -- "$tmp/link.secret" "$secret"
	echo "made  $secret"
fi
chmod 0600 -- "$secret"

# Run on this host (not the VMs' build): the CA key stays here.
go run -trimpath ./cmd/relay gen-certs --topology keepalived/topology.json --out "$out/pki"
