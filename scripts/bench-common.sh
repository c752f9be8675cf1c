# shellcheck shell=bash
# Sourced by the bench scripts: a work folder removed on exit with every
# process started into pids, the open-file limit raised, the binaries (built
# from the working tree, or copied from BIN=dir), a fresh link secret, and
# free_port. Run from the repository's root.

export PATH="$PATH:/usr/local/go/bin"
command -v redis-server >/dev/null || { echo "redis-server missing: apt-get install redis-server" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

ulimit -n "$(ulimit -Hn)" 2>/dev/null || echo "note: could not raise the open-file limit; large user counts may fail" >&2
if [ -n "${BIN:-}" ]; then
  cp "$BIN/relay" "$BIN/msgserver" "$BIN/chatbench" "$work/"
else
  go build -o "$work/" ./cmd/relay ./cmd/msgserver ./cmd/chatbench
fi
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/secret"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
