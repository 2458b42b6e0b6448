#!/bin/bash
# Install or upgrade edu-sync-agent from an offline bundle (no network is used).
#
#   install.sh [--agent-id ID] [--platform-url URL] [--host-key 'ssh-ed25519 AAAA...']
#              [--platform-keys FILE] [--python PY] [--bundle DIR] [--root DIR] [--no-start]
#
#   --agent-id ID        this agent's id as registered with the platform (needed on a first
#                        install; an existing config keeps its own)
#   --platform-url URL   sftp://USER@HOST[:PORT]/PATH of the platform (default: the example's,
#                        with the agent id as user)
#   --host-key LINE      the platform's pinned SSH host key (known_hosts line)
#   --platform-keys FILE the platform's public key bundle (JSON), copied into /etc/edu-agent
#   --python PY          Python >= 3.10 matching the bundle's wheels (default: python3)
#   --bundle DIR         the unpacked bundle (default: the directory of this script)
#   --root DIR           install everything below DIR instead of /: the venv, config, unit
#                        and state are written with DIR-prefixed paths so that the result
#                        runs in place (tests, a trial next to a production install). No
#                        system user is created (files keep the invoking user), systemctl is
#                        not called. It is not a way to prepare another machine's disk.
#   --no-start           do not enable/restart the service (systemd machines)
#   --systemd-version N  write the compatibility drop-in for systemd N (default: the running
#                        systemctl's version; docs/operations.md "systemd versions")
#   --packaged           run from the .deb's postinst: dpkg owns the unit, the snippets and
#                        /usr/bin/edu-agent, and enables the unit; without a config and
#                        --agent-id only the release is installed
#
# What it does: checks the bundle (SHA256SUMS); creates the system user edu-agent (sysusers.d,
# else useradd); installs a new virtualenv release under /opt/edu-agent/releases/ from the
# bundle's wheels only (pip --no-index, hashes from requirements.lock) and switches
# /opt/edu-agent/current to it atomically (the previous release stays for rollback);
# creates /etc/edu-agent (config.yaml written only if absent), /etc/edu-agent/keys (0700;
# agent keys 0600, generated only if missing), /var/lib/edu-agent, /var/log/edu-agent;
# installs the unit, sysusers.d/tmpfiles.d snippets and a drop-in granting write access to
# the configured shares; runs `edu-agent config check`; prints the next steps.
# Upgrading is running the new bundle's install.sh: config, keys and state are kept.
# Exit status: 0 installed (config complete), 78 installed but the config needs completing
# (see the printed problems), 1 failure, 2 usage.
set -euo pipefail

bundle=$(cd "$(dirname "$0")" && pwd)
root=
python=python3
agent_id=
platform_url=
host_key=
platform_keys=
start=1
packaged=0
systemd_version=

die() { echo "install: error: $*" >&2; exit 1; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-0}"; }
need_arg() { [ $# -ge 2 ] || { echo "install: $1 needs a value" >&2; exit 2; }; }

while [ $# -gt 0 ]; do
    case $1 in
        --root) need_arg "$@"; root=$2; shift 2 ;;
        --bundle) need_arg "$@"; bundle=$(cd "$2" && pwd); shift 2 ;;
        --python) need_arg "$@"; python=$2; shift 2 ;;
        --agent-id) need_arg "$@"; agent_id=$2; shift 2 ;;
        --platform-url) need_arg "$@"; platform_url=$2; shift 2 ;;
        --host-key) need_arg "$@"; host_key=$2; shift 2 ;;
        --platform-keys) need_arg "$@"; platform_keys=$(cd "$(dirname "$2")" && pwd)/$(basename "$2"); shift 2 ;;
        --no-start) start=0; shift ;;
        --systemd-version) need_arg "$@"; systemd_version=$2; shift 2 ;;
        --packaged) packaged=1; start=0; shift ;;
        -h|--help) usage 0 ;;
        *) echo "install: unknown argument: $1" >&2; usage 2 >&2 ;;
    esac
done

if [ -n "$root" ]; then
    mkdir -p "$root"
    root=$(cd "$root" && pwd)
    [ "$root" = / ] && root=
fi
rooted=0; [ -n "$root" ] && rooted=1
if [ "$rooted" = 0 ] && [ "$(id -u)" != 0 ]; then
    die "run as root (or use --root DIR for an install below DIR)"
fi

opt=$root/opt/edu-agent
etc=$root/etc/edu-agent
config=$etc/config.yaml
state=$root/var/lib/edu-agent
logs=$root/var/log/edu-agent
unit_dir=$root/etc/systemd/system
user=edu-agent

# ---------------------------------------------------------------- the bundle
[ -f "$bundle/SHA256SUMS" ] || die "$bundle is not an edu-sync-agent bundle (no SHA256SUMS)"
(cd "$bundle" && sha256sum --check --quiet --strict SHA256SUMS) \
    || die "the bundle is damaged: SHA256SUMS does not match (copy it again)"
version=$(sed -n 's/^version=//p' "$bundle/BUNDLE-INFO")
bundle_python=$(sed -n 's/^python=//p' "$bundle/BUNDLE-INFO")
command -v "$python" >/dev/null || die "$python not found: install Python $bundle_python (with venv)"
have_python=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$have_python" = "$bundle_python" ] \
    || die "this bundle was built for Python $bundle_python, $python is $have_python (use --python)"
if [ ! -e "$config" ] && [ -z "$agent_id" ] && [ "$packaged" = 0 ]; then
    die "first install: give --agent-id ID (the id the platform registered for this machine)"
fi
[ -z "$platform_keys" ] || [ -f "$platform_keys" ] || die "no such file: $platform_keys"
echo "install: edu-sync-agent $version into ${root:-/}"

# ---------------------------------------------------------------- user and directories
if [ "$rooted" = 0 ] && ! getent passwd "$user" >/dev/null; then
    if command -v systemd-sysusers >/dev/null; then
        systemd-sysusers "$bundle/systemd/sysusers.d/edu-agent.conf"
    else
        useradd --system --user-group --home-dir /var/lib/edu-agent --no-create-home \
            --shell "$(command -v nologin || echo /sbin/nologin)" --comment "edu-sync-agent daemon" "$user"
    fi
    echo "install: created system user $user"
fi

# dir PATH MODE OWNER GROUP: create or fix (owners only when installing for real).
dir() {
    mkdir -p "$1"
    chmod "$2" "$1"
    [ "$rooted" = 1 ] || chown "$3:$4" "$1"
}
dir "$root/opt" 0755 root root
dir "$opt" 0755 root root
dir "$opt/releases" 0755 root root
dir "$etc" 0750 root "$user"
dir "$etc/keys" 0700 "$user" "$user"
dir "$etc/credentials" 0700 root root
dir "$state" 0750 "$user" "$user"
dir "$logs" 0750 "$user" "$user"

# ---------------------------------------------------------------- the release
release=$opt/releases/$version-$(date -u +%Y%m%dT%H%M%SZ)
rm -rf "$release"
echo "install: creating $release"
"$python" -m venv "$release" || die "cannot create a virtualenv (Debian/Ubuntu: apt-get install python3-venv)"
pip=("$release/bin/python" -m pip --isolated --disable-pip-version-check --no-input --quiet)
"${pip[@]}" install --no-index --find-links "$bundle/wheels" --only-binary=:all: --require-hashes \
    -r "$bundle/requirements.lock" || die "installing the locked dependencies from the bundle failed"
project_wheel=$(ls "$bundle"/wheels/edu_sync_agent-"$version"-*.whl)
"${pip[@]}" install --no-index --no-deps "$project_wheel" || die "installing $project_wheel failed"
"$release/bin/edu-agent" --version >/dev/null || die "the new release does not run"
install -d -m 0755 "$release/doc"
cp "$bundle"/doc/*.md "$release/doc/" 2>/dev/null || true
cp "$bundle/bundle_config.py" "$bundle/uninstall.sh" "$release/"
helper=("$release/bin/python" "$release/bundle_config.py")

# ---------------------------------------------------------------- config and keys
if [ "$packaged" = 0 ]; then  # the .deb ships it as a conffile
    cp "$bundle/config.example.yaml" "$etc/config.example.yaml"
    chmod 0644 "$etc/config.example.yaml"
fi
if [ ! -e "$config" ] && [ -z "$agent_id" ] && [ "$packaged" = 1 ]; then
    ln -sfn "releases/$(basename "$release")" "$opt/current.new"
    mv -T "$opt/current.new" "$opt/current"
    echo "install: release installed; to create the config and keys run:"
    echo "    /usr/lib/edu-agent/bundle/install.sh --packaged --agent-id ID [--host-key LINE] [--platform-keys FILE]"
    exit 0
fi
if [ ! -e "$config" ]; then
    [ -n "$agent_id" ] || die "first install: give --agent-id ID (the id the platform registered)"
    tmp=$(mktemp "$etc/.config.XXXXXX")
    "${helper[@]}" fresh-config "$bundle/config.example.yaml" "$root" "$agent_id" "$platform_url" "$host_key" > "$tmp"
    chmod 0640 "$tmp"
    [ "$rooted" = 1 ] || chown "root:$user" "$tmp"
    mv "$tmp" "$config"
    echo "install: wrote $config"
else
    echo "install: keeping $config"
    [ -z "$agent_id$platform_url$host_key" ] \
        || echo "install: note: --agent-id/--platform-url/--host-key only shape a new config; edit $config"
fi
keys_dir='' transport='' identity_file=''  # (and state_dir, public_keys, share_dirs)
eval "$("${helper[@]}" paths "$config")"  # sets agent_id (the config's wins), keys_dir, ...
[ -n "$agent_id" ] || die "$config has no agent.id"

if [ -n "$platform_keys" ]; then
    install -m 0644 "$platform_keys" "$etc/platform-keys.json"
    echo "install: installed the platform's public keys as $etc/platform-keys.json"
fi

as_agent() {  # run a command as the service user, so what it creates is the agent's
    if [ "$rooted" = 1 ]; then "$@"; else setpriv --reuid="$user" --regid="$user" --init-groups "$@"; fi
}
mkdir -p "$keys_dir"
if [ ! -e "$keys_dir/signing.key" ]; then
    [ "$rooted" = 1 ] || chown "$user:$user" "$keys_dir"
    as_agent "$release/bin/edu-agent" keys init --dir "$keys_dir" --id "$agent_id" >/dev/null 2>&1 \
        || as_agent "$release/bin/edu-agent" keys init --dir "$keys_dir" --id "$agent_id"
    echo "install: generated the agent's keys in $keys_dir"
else
    echo "install: keeping the agent's keys in $keys_dir"
fi
if [ "$transport" = sftp ] && [ -n "$identity_file" ] && [ ! -e "$identity_file" ]; then
    as_agent "${helper[@]}" ssh-key "$identity_file" "edu-agent@$agent_id"
    echo "install: generated the SSH identity $identity_file"
fi
chmod 0700 "$keys_dir"
find "$keys_dir" -maxdepth 1 -type f ! -name '*.pub' ! -name '*.json' -exec chmod 0600 {} +

# ---------------------------------------------------------------- systemd files
install -d -m 0755 "$unit_dir/edu-agent.service.d"
rewrite() {  # the unit's paths, moved under --root
    if [ "$rooted" = 1 ]; then
        sed -e "s#/opt/edu-agent#$opt#g" -e "s#/etc/edu-agent#$etc#g" -e "s#/var/lib/edu-agent#$state#g"
    else
        cat
    fi
}
"${helper[@]}" dropin "$config" > "$unit_dir/edu-agent.service.d/10-shares.conf"
# Older systemd ignores directives it does not know (a warning in the journal), which only
# weakens the sandbox; two settings would instead break the start, and are reset here.
if [ -z "$systemd_version" ] && command -v systemctl >/dev/null; then
    systemd_version=$(systemctl --version 2>/dev/null | sed -n '1s/^systemd \([0-9]*\).*/\1/p')
fi
compat=$unit_dir/edu-agent.service.d/05-systemd-compat.conf
rm -f "$compat"
if [ -n "$systemd_version" ]; then
    "${helper[@]}" compat "$systemd_version" > "$compat.new"
    if [ -s "$compat.new" ]; then
        mv "$compat.new" "$compat"
        echo "install: wrote $compat for systemd $systemd_version"
    else
        rm -f "$compat.new"
    fi
fi
if [ "$packaged" = 0 ]; then
    rewrite < "$bundle/systemd/edu-agent.service" > "$unit_dir/edu-agent.service"
    chmod 0644 "$unit_dir/edu-agent.service"
    install -D -m 0644 "$bundle/systemd/sysusers.d/edu-agent.conf" "$root/etc/sysusers.d/edu-agent.conf"
    install -D -m 0644 "$bundle/systemd/tmpfiles.d/edu-agent.conf" "$root/etc/tmpfiles.d/edu-agent.conf"
    if [ -d "$root/etc/logrotate.d" ] || [ "$rooted" = 1 ]; then
        install -D -m 0644 "$bundle/systemd/logrotate.edu-agent" "$root/etc/logrotate.d/edu-agent"
    fi
fi

# ---------------------------------------------------------------- switch to the new release
ln -sfn "releases/$(basename "$release")" "$opt/current.new"
mv -T "$opt/current.new" "$opt/current"
if [ "$packaged" = 0 ]; then
    install -d -m 0755 "$root/usr/local/bin"
    ln -sfn "$opt/current/bin/edu-agent" "$root/usr/local/bin/edu-agent"
fi
# Keep the newest three releases (the one just installed and two to roll back to).
find "$opt/releases" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\n' | sort -rn | tail -n +4 \
    | cut -d' ' -f2- | xargs -r -d '\n' rm -rf

# ---------------------------------------------------------------- check and start
check=0
if [ "$rooted" = 1 ]; then
    "$opt/current/bin/edu-agent" config check -c "$config" || check=$?
else
    as_agent "$opt/current/bin/edu-agent" config check -c "$config" || check=$?
fi

systemd_running=0
[ "$rooted" = 0 ] && [ -d /run/systemd/system ] && systemd_running=1
if [ "$systemd_running" = 1 ]; then
    systemctl daemon-reload
    [ "$packaged" = 1 ] || systemd-tmpfiles --create /etc/tmpfiles.d/edu-agent.conf || true
    [ "$start" = 1 ] && systemctl enable edu-agent.service
    if [ "$check" = 0 ] && systemctl is-active --quiet edu-agent.service; then
        systemctl restart edu-agent.service && echo "install: restarted edu-agent on the new release"
    fi
fi

cmd=edu-agent
[ "$rooted" = 1 ] && cmd=$opt/current/bin/edu-agent
cat <<EOF

edu-sync-agent $version is installed (release $(basename "$release")).
Next steps (docs: $opt/current/doc/operations.md):
  1. Give the platform operators this agent's registration bundle:
       $cmd enroll -c $config
  2. Put what they send back into $config: platform.url, platform.host_key, and their public
     keys as $etc/platform-keys.json. Map subscriptions to local targets (targets:,
     subscriptions:) and store database passwords in $etc/credentials/ (systemd credentials).
  3. Check the config (offline, then with the network):
       $cmd config check -c $config
       $cmd config check -c $config --online
  4. Start and watch it:
       systemctl enable --now edu-agent
       $cmd status -c $config ; journalctl -u edu-agent -f
EOF
if [ "$check" != 0 ]; then
    echo
    echo "install: the config is not complete yet (edu-agent config check exited $check): see above."
    exit 78
fi
exit 0
