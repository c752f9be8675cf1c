#!/bin/sh
# postremove.sh: the chatrelay package's rpm %postun and deb postrm. After
# removal (rpm: $1 = 0; dpkg: remove or purge) the SELinux rules
# postinstall.sh added go; /etc/chatrelay (your configuration, certificates
# and secret), /var/log/chatrelay and the users stay. On upgrade nothing is
# done but a daemon-reload.
set -e
case "${1:-}" in
0 | remove | purge)
	if command -v selinuxenabled >/dev/null 2>&1 && selinuxenabled && command -v semanage >/dev/null 2>&1; then
		semanage fcontext -d '/usr/libexec/chatrelay(/.*)?' 2>/dev/null || true
		semanage fcontext -d '/run/chatrelay(/.*)?' 2>/dev/null || true
	fi
	;;
esac
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
exit 0
