#!/bin/sh
# postinstall.sh: the chatrelay package's rpm %post and deb postinst, after
# every install or upgrade (POSIX sh: dpkg runs it with /bin/sh). Idempotent;
# it does not enable or start any service, and leaves Redis and keepalived
# alone (the operator writes their configuration: README.md, Releases).
set -e

# The services' users (/usr/lib/sysusers.d/chatrelay.conf): chatrelay runs the
# units, keepalived_script runs keepalived's check and notify script.
if command -v systemd-sysusers >/dev/null 2>&1; then
	systemd-sysusers /usr/lib/sysusers.d/chatrelay.conf
else
	for u in chatrelay keepalived_script; do
		id "$u" >/dev/null 2>&1 ||
			useradd --system --no-create-home --home-dir / --shell /usr/sbin/nologin "$u"
	done
fi

# notify.sh appends keepalived's transitions here, as keepalived_script.
install -d -m 0750 -o keepalived_script -g keepalived_script /var/log/chatrelay

# SELinux (EL9, enforcing): keepalived runs as keepalived_t, which may not
# connect to the relay's ports or write /var/log/chatrelay. The policy runs
# programs labelled keepalived_unconfined_script_exec_t unconfined (it labels
# /usr/libexec/keepalived so): the same for /usr/libexec/chatrelay, kept
# across relabels by semanage. keepalived_t reads and creates files under /run
# only with the type keepalived_var_run_t: /run/chatrelay, the track file's
# folder, gets it.
if command -v selinuxenabled >/dev/null 2>&1 && selinuxenabled; then
	if command -v semanage >/dev/null 2>&1; then
		semanage fcontext -a -t keepalived_unconfined_script_exec_t '/usr/libexec/chatrelay(/.*)?' 2>/dev/null ||
			semanage fcontext -m -t keepalived_unconfined_script_exec_t '/usr/libexec/chatrelay(/.*)?'
		semanage fcontext -a -t keepalived_var_run_t '/run/chatrelay(/.*)?' 2>/dev/null ||
			semanage fcontext -m -t keepalived_var_run_t '/run/chatrelay(/.*)?'
	else
		echo "chatrelay: SELinux is enabled but semanage is missing (dnf install policycoreutils-python-utils, then reinstall chatrelay): keepalived's check and notify script will be denied" >&2
	fi
fi

# /run/chatrelay now (tmpfiles.d makes it at every boot), then the labels.
if command -v systemd-tmpfiles >/dev/null 2>&1; then
	systemd-tmpfiles --create /usr/lib/tmpfiles.d/chatrelay.conf || true
fi
if command -v selinuxenabled >/dev/null 2>&1 && selinuxenabled && command -v restorecon >/dev/null 2>&1; then
	restorecon -RF /usr/libexec/chatrelay /run/chatrelay /var/log/chatrelay /etc/chatrelay || true
fi

# New or changed units: systemd reads them again (when it is running).
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
exit 0
