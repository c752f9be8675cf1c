#!/bin/sh
# preremove.sh: the chatrelay package's rpm %preun and deb prerm. On removal
# (rpm: $1 = 0; dpkg: remove), the services are stopped and disabled; on
# upgrade (rpm: 1; dpkg: upgrade) nothing is done: running services keep the
# old binaries until the operator restarts them (a relay restart moves the
# VIP, so that is the operator's choice).
set -e
case "${1:-}" in
0 | remove)
	if [ -d /run/systemd/system ]; then
		systemctl disable --now chatrelay-relay.service chatrelay-msgserver.service >/dev/null 2>&1 || true
	fi
	;;
esac
exit 0
