#!/bin/bash
# Build the offline installation bundle of edu-sync-agent, and a .deb of it.
#
#   installer/build-bundle.sh [--out DIR] [--cache DIR] [--python PY] [--offline] [--no-deb]
#                             [--python-version X.Y --platform TAG] [--source DIR]
#
# Output in DIR (default ./dist):
#   edu-sync-agent-VERSION/            the bundle: wheels/ (the locked dependency set, checked
#                                      against installer/requirements.lock's hashes, plus the
#                                      project's wheel), requirements.lock, install.sh,
#                                      uninstall.sh, systemd/, config.example.yaml, doc/,
#                                      BUNDLE-INFO, SHA256SUMS
#   edu-sync-agent-VERSION.tar.gz      the same, as one file to carry to the machine
#   edu-sync-agent_VERSION_ARCH.deb    Debian package (dpkg-deb) carrying the bundle
#
# Wheels come from a cache (default ~/.cache/edu-agent/wheelhouse, or $EDU_WHEELHOUSE_CACHE).
# The first build fills it from the package index; later builds, and every build with
# --offline, use only the cache. --python-version/--platform choose the dependencies' wheels
# (e.g. --python python3.10 --python-version 3.10 --platform manylinux2014_x86_64); the
# project's own wheel holds compiled code and is built by --python for this machine, so both
# must match it (checked). The default is the Python running the build. The project wheel is built from `git archive HEAD` when --source is not
# given and the repository is a git checkout, so uncommitted files never ship.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
out=$PWD/dist
cache=${EDU_WHEELHOUSE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edu-agent/wheelhouse}
python=python3
offline=0
build_deb=1
source_dir=
target_version=
target_platform=

die() { echo "build-bundle: $*" >&2; exit 1; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
    case $1 in
        --out) out=$2; shift 2 ;;
        --cache) cache=$2; shift 2 ;;
        --python) python=$2; shift 2 ;;
        --offline) offline=1; shift ;;
        --no-deb) build_deb=0; shift ;;
        --source) source_dir=$2; shift 2 ;;
        --python-version) target_version=$2; shift 2 ;;
        --platform) target_platform=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "build-bundle: unknown argument: $1" >&2; usage 2 >&2 ;;
    esac
done

version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/agent/__init__.py")
[ -n "$version" ] || die "cannot read __version__ from agent/__init__.py"
[ -f "$repo/config.example.yaml" ] || die "config.example.yaml is missing"
"$python" -m pip --version >/dev/null 2>&1 || die "$python has no pip"

host_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
py_version=${target_version:-$host_version}
# The project's wheel holds compiled code (protocol/csrc): it is built by $python for this
# machine, so the target must run the same Python version on the same architecture.
[ "$py_version" = "$host_version" ] ||
    die "the project's wheel holds compiled code: build with the target's Python (--python python$py_version), not $host_version"
case ${target_platform:-$(uname -m)} in
    *"$(uname -m)"*) ;;
    *) die "the project's wheel holds compiled code: build on a $target_platform machine (this one is $(uname -m))" ;;
esac
target_args=(--only-binary=:all:)
if [ -n "$target_version" ] || [ -n "$target_platform" ]; then
    target_args+=(--python-version "$py_version" --implementation cp)
    [ -n "$target_platform" ] && target_args+=(--platform "$target_platform")
fi
mkdir -p "$cache/wheels" "$cache/build" "$out"
cache=$(cd "$cache" && pwd)
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

pip_quiet=(--disable-pip-version-check --quiet)

# fill_cache DEST LOCK [pip args]: the locked set into DEST, offline first, then from the index.
fill_cache() {
    local dest=$1 lock=$2; shift 2
    if "$python" -m pip download "${pip_quiet[@]}" --no-index --find-links "$dest" --require-hashes \
            -d "$work/probe" -r "$lock" "$@" >/dev/null 2>&1; then
        return 0
    fi
    [ "$offline" = 1 ] && die "the wheelhouse cache $dest lacks wheels of $lock (run once without --offline)"
    echo "build-bundle: downloading the locked set of $(basename "$lock") into $dest"
    "$python" -m pip download "${pip_quiet[@]}" --require-hashes -d "$dest" -r "$lock" "$@"
}

fill_cache "$cache/wheels" "$here/requirements.lock" "${target_args[@]}"
fill_cache "$cache/build" "$here/build-requirements.lock" --only-binary=:all:

# The project's wheel, from committed sources, built offline with the locked build backend.
if [ -z "$source_dir" ]; then
    if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
        source_dir=$work/src
        mkdir -p "$source_dir"
        git -C "$repo" archive --format=tar HEAD | tar -x -C "$source_dir"
        commit=$(git -C "$repo" rev-parse HEAD)
    else
        source_dir=$repo
    fi
fi
commit=${commit:-unknown}
# Build from a copy: an in-tree build would write build/ and *.egg-info into the sources.
if [ "$source_dir" != "$work/src" ]; then
    mkdir -p "$work/src"
    tar -C "$source_dir" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
        --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -C "$work/src" -xf -
    source_dir=$work/src
fi

name=edu-sync-agent-$version
bundle=$out/$name
rm -rf "$bundle"
mkdir -p "$bundle/wheels" "$bundle/systemd/sysusers.d" "$bundle/systemd/tmpfiles.d" "$bundle/doc"
if ! "$python" -m pip wheel "${pip_quiet[@]}" --no-deps --no-index --find-links "$cache/build" \
        -w "$bundle/wheels" "$source_dir" > "$work/wheel.log" 2>&1; then
    cat "$work/wheel.log" >&2
    die "building the project's wheel failed"
fi
# Exactly the locked set (pip download copies from the cache and checks every hash).
"$python" -m pip download "${pip_quiet[@]}" --no-index --find-links "$cache/wheels" --require-hashes \
    -d "$bundle/wheels" -r "$here/requirements.lock" "${target_args[@]}"

cp "$here/requirements.lock" "$bundle/"
install -m 0755 "$here/install.sh" "$here/uninstall.sh" "$bundle/"
cp "$here/bundle_config.py" "$bundle/"
cp "$repo/systemd/edu-agent.service" "$bundle/systemd/"
cp "$repo/systemd/sysusers.d/edu-agent.conf" "$bundle/systemd/sysusers.d/"
cp "$repo/systemd/tmpfiles.d/edu-agent.conf" "$bundle/systemd/tmpfiles.d/"
cp "$repo/config.example.yaml" "$bundle/"
cp "$repo/docs/operations.md" "$bundle/doc/"
for doc in protocol.md daemon.md shares.md tables.md hub.md; do
    if [ -f "$repo/docs/$doc" ]; then cp "$repo/docs/$doc" "$bundle/doc/"; fi
done
cp "$here/logrotate.d/edu-agent" "$bundle/systemd/logrotate.edu-agent"
cp "$here/journald.conf.d/edu-agent-retention.conf" "$bundle/systemd/journald-retention.conf"
cat > "$bundle/BUNDLE-INFO" <<EOF
name=edu-sync-agent
version=$version
python=$py_version
platform=${target_platform:-$("$python" -c 'import sysconfig; print(sysconfig.get_platform())')}
commit=$commit
EOF
(cd "$bundle" && find . -type f -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum > "$work/SHA256SUMS")
mv "$work/SHA256SUMS" "$bundle/SHA256SUMS"

tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@${SOURCE_DATE_EPOCH:-0}" \
    -C "$out" -czf "$out/$name.tar.gz" "$name"
echo "build-bundle: $bundle"
echo "build-bundle: $out/$name.tar.gz"

[ "$build_deb" = 1 ] || exit 0
command -v dpkg-deb >/dev/null || die "dpkg-deb is not installed (use --no-deb, or apt-get install dpkg)"
"$here/debian/build-deb.sh" "$bundle" "$out"
