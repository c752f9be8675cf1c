#!/usr/bin/env bash
# stage.sh DIR: the first provisioner on every VM. Empties DIR and creates it
# mode 0700 for the SSH user, so the file uploads that follow (binaries, the
# link secret, scripts, units) land where no other user can read them.
# Vagrant runs it as root through sudo; SUDO_USER is the SSH user.
set -euo pipefail

dir=${1:?usage: stage.sh DIR}
owner=${SUDO_USER:-root}
rm -rf -- "$dir"
install -d -m 0700 -o "$owner" -g "$(id -gn "$owner")" -- "$dir"
