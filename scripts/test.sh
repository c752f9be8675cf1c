#!/usr/bin/env bash
# Installs what the tests need (Debian packages, when missing) and runs every
# test: go vet and staticcheck, then the whole suite with the race detector,
# then the failover drills. Run as root (or with sudo available) so packages
# can be installed and the drills can build network namespaces. CI runs
# exactly this script.
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

# gcc and libc6-dev: the race detector needs cgo. procps (pgrep) and
# systemd (systemd-analyze) are used by the drill and the lab's unit checks;
# rpm (rpm -qlp, rpm -qp --scripts) inspects the built RPM (packaging/);
# chromium: the chat page's real-browser test (msgserver, chromedp).
packages=(redis-server keepalived iproute2 prometheus shellcheck vagrant gcc libc6-dev procps systemd ca-certificates rpm chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} > 0)); then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# This script never stops, starts or reconfigures a service of the machine.
# The tests start private redis-server, keepalived and prometheus/promtool
# processes on free ports (keepalived in network namespaces, with pid files of
# its own), so a system redis-server on 6379, prometheus on 9090 or keepalived
# holding a VIP can keep running beside them. Debian starts the services of
# the packages it has just installed: say so, rather than stop them.
for svc in redis-server prometheus keepalived; do
  if systemctl is-active --quiet "$svc" 2>/dev/null; then
    echo "note: the system's $svc service is running; left alone (the tests run private instances)"
  fi
done

echo "== go vet"
go vet ./...
echo "== staticcheck"
go tool staticcheck ./...   # pinned in go.mod's tool block
echo "== go test -race (all but the failover drills)"
mapfile -t pkgs < <(go list ./... | grep -v /keepalived/drill)
go test -race -count=1 -timeout 15m "${pkgs[@]}" "$@"
# The drills run alone and without the race detector: keepalived's 0.1 s
# adverts must not be starved of CPU by other suites, or a spurious failover
# would be measured instead of the fault.
echo "== failover drills (network namespaces, keepalived)"
go test -count=1 -timeout 10m ./keepalived/drill/ "$@"
