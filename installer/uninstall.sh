#!/bin/bash
# Remove edu-sync-agent installed by install.sh.
#
#   uninstall.sh [--root DIR] [--purge]
#
# Without --purge the program goes (the service, /opt/edu-agent, the unit and its generated
# drop-in, the sysusers.d/tmpfiles.d/logrotate snippets, /usr/local/bin/edu-agent) and the
# data stays: /etc/edu-agent (config, keys, credentials), /var/lib/edu-agent (state, audit
# trail), /var/log/edu-agent, the system user, and your own drop-ins — so a later install
# picks up where this one stopped.
# --purge also deletes that data: the agent's keys and audit trail are gone for good (copy
# the audit trail away first if it must be kept: six months, 网络安全法 第二十一条).
# The system user is kept even then (files in the share directories may still belong to it);
# remove it with `userdel edu-agent` once nothing does.
# --root DIR removes an install made with install.sh --root DIR.
set -euo pipefail

root=
purge=0
die() { echo "uninstall: error: $*" >&2; exit 1; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
    case $1 in
        --root) [ $# -ge 2 ] || usage 2 >&2; root=$2; shift 2 ;;
        --purge) purge=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "uninstall: unknown argument: $1" >&2; usage 2 >&2 ;;
    esac
done
if [ -n "$root" ]; then
    root=$(cd "$root" && pwd) || die "no such directory: $root"
    [ "$root" = / ] && root=
fi
if [ -z "$root" ] && [ "$(id -u)" != 0 ]; then
    die "run as root (or use --root DIR)"
fi
unit_dir=$root/etc/systemd/system

if [ -z "$root" ] && [ -d /run/systemd/system ]; then
    systemctl disable --now edu-agent.service 2>/dev/null || true
fi

rm -f "$unit_dir/edu-agent.service" "$unit_dir/edu-agent.service.d/10-shares.conf" \
    "$unit_dir/edu-agent.service.d/05-systemd-compat.conf"
rmdir "$unit_dir/edu-agent.service.d" 2>/dev/null || true
rm -f "$root/etc/sysusers.d/edu-agent.conf" "$root/etc/tmpfiles.d/edu-agent.conf" \
    "$root/etc/logrotate.d/edu-agent"
link=$root/usr/local/bin/edu-agent
if [ -L "$link" ] && [ "$(readlink "$link")" = "$root/opt/edu-agent/current/bin/edu-agent" ]; then
    rm -f "$link"
fi
rm -rf "$root/opt/edu-agent"
echo "uninstall: removed the program from ${root:-/}"

if [ "$purge" = 1 ]; then
    rm -rf "$root/etc/edu-agent" "$root/var/lib/edu-agent" "$root/var/log/edu-agent" \
        "$unit_dir/edu-agent.service.d"
    echo "uninstall: purged /etc/edu-agent, /var/lib/edu-agent, /var/log/edu-agent and drop-ins"
else
    echo "uninstall: kept /etc/edu-agent (config, keys), /var/lib/edu-agent (state, audit trail),"
    echo "           /var/log/edu-agent; remove them with: uninstall.sh --purge"
fi

if [ -z "$root" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
