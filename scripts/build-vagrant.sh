#!/usr/bin/env bash
# build-vagrant.sh: build what the Vagrant VMs run, on the host, before
# `vagrant up` (see vagrant/README.md):
#
#   DIR/relay, DIR/msgserver  linux/amd64, statically linked (CGO_ENABLED=0):
#                             the VMs are CentOS Stream 9 x86_64 and have no Go
#   DIR/link.secret           the shared link secret (64 hex characters, mode
#                             0600), created once and then kept, so rebuilding
#                             does not break the links of running VMs
#   DIR/redis.password        the lab Redis's password (the same way); the VMs
#                             get it as files, never in an env file
#   DIR/pki/                  the lab's CA and each host's certificates, from
#                             keepalived/topology.json (relay gen-certs): the
#                             CA is made once and its key never leaves this
#                             host; certificates are reissued when missing,
#                             near their end or no longer matching the topology
#
# DIR is vagrant/build (ignored by git) unless --out DIR is given. Both
# binaries are built by one `go build` (one compile of what they share, linked
# in parallel) into a temporary folder and renamed into place, so a failed
# build never leaves a half-written binary for the provisioner to install.
# The relay binary also holds the templates each VM renders its files from
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
GOOS=linux GOARCH=amd64 CGO_ENABLED=0 go build -trimpath -o "$tmp/" ./cmd/relay ./cmd/msgserver
for bin in relay msgserver; do
	mv -f -- "$tmp/$bin" "$out/$bin"
	echo "built $out/$bin (linux/amd64)"
done

# The link secret and the lab Redis's password: 32 random bytes as hex
# each, made once (od is in coreutils, so no openssl is needed).
for name in link.secret redis.password; do
	secret=$out/$name
	if [[ -s $secret ]]; then
		echo "kept  $secret"
	else
		(
			umask 077
			od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$tmp/$name"
			echo >>"$tmp/$name"
		)
		mv -f -- "$tmp/$name" "$secret"
		echo "made  $secret"
	fi
	chmod 0600 -- "$secret"
done

# Run on this host (not the VMs' build): the CA key stays here.
go run -trimpath ./cmd/relay gen-certs --topology keepalived/topology.json --out "$out/pki"
