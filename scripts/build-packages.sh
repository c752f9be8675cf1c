#!/usr/bin/env bash
# build-packages.sh: build the chatrelay RPM and deb packages (packaging/):
#
#   DIR/chatrelay-VERSION-1.x86_64.rpm   (EL9: dnf install ./chatrelay-*.rpm)
#   DIR/chatrelay_VERSION-1_amd64.deb    (Debian/Ubuntu: apt install ./chatrelay_*.deb)
#
# Both hold relay, msgserver and chatbench (linux/amd64, static), their systemd
# units, /etc/chatrelay and keepalived's check and notify script; see
# packaging/nfpm.yaml. DIR is dist/ in the repository unless --out DIR is
# given. VERSION is $CHATRELAY_VERSION if set (a release: 1.2.0), else made
# from git: the latest v* tag (0.0.0 without one), +git, the commit's UTC
# time and short hash, .dirty for uncommitted changes. nfpm is the version
# pinned in go.mod (go tool nfpm): no other tool is needed.
set -euo pipefail

usage() {
	echo "usage: $0 [--out DIR] [--rpm-only]   (default DIR: dist/ in the repository)" >&2
	exit 2
}

root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/dist
packagers=(rpm deb)
while (($# > 0)); do
	case $1 in
	--out)
		(($# >= 2)) || usage
		out=$2
		shift 2
		;;
	--rpm-only)
		packagers=(rpm)
		shift
		;;
	*) usage ;;
	esac
done

export PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || {
	echo "$0: go not found (install Go, or put /usr/local/go/bin on PATH)" >&2
	exit 1
}
cd "$root"

version=${CHATRELAY_VERSION:-}
if [[ -z $version ]]; then
	tag=$(git describe --tags --abbrev=0 --match 'v[0-9]*' 2>/dev/null || true)
	base=${tag#v}
	version="${base:-0.0.0}+git$(TZ=UTC git log -1 --date=format-local:%Y%m%d%H%M%S --format=%cd).$(git rev-parse --short=12 HEAD)"
	if [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
		version+=.dirty
	fi
fi
if [[ ! $version =~ ^[0-9][0-9A-Za-z.+~]*$ ]]; then
	echo "$0: version \"$version\": want a digit, then letters, digits and . + ~ (no -)" >&2
	exit 2
fi

mkdir -p -- "$out"
out=$(cd "$out" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT

GOOS=linux GOARCH=amd64 CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$tmp/bin/" ./cmd/relay ./cmd/msgserver ./cmd/chatbench
for p in "${packagers[@]}"; do
	CHATRELAY_BIN=$tmp/bin CHATRELAY_VERSION=$version \
		go tool nfpm package --config packaging/nfpm.yaml --packager "$p" --target "$out/" >&2
done
for p in "${packagers[@]}"; do
	ls -1 -- "$out"/chatrelay*"$version"*."$p"
done
