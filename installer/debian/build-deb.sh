#!/bin/bash
# Build edu-sync-agent_VERSION_ARCH.deb around a finished bundle (called by build-bundle.sh).
#   build-deb.sh BUNDLE_DIR OUT_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bundle=$1
out=$2
version=$(sed -n 's/^version=//p' "$bundle/BUNDLE-INFO")
python=$(sed -n 's/^python=//p' "$bundle/BUNDLE-INFO")
platform=$(sed -n 's/^platform=//p' "$bundle/BUNDLE-INFO")
case $platform in
    *x86_64*) arch=amd64 ;;
    *aarch64*) arch=arm64 ;;
    *) arch=$(dpkg --print-architecture) ;;
esac
# Debian wants a reachable maintainer address: set DEB_MAINTAINER for your organisation.
maintainer=${DEB_MAINTAINER:-edu-sync-agent maintainers <edu-sync-agent@example.org>}
python_next=${python%.*}.$(( ${python#*.} + 1 ))

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg=$stage/pkg
install -d -m 0755 "$pkg/DEBIAN" "$pkg/usr/lib/edu-agent" "$pkg/lib/systemd/system" \
    "$pkg/usr/lib/sysusers.d" "$pkg/usr/lib/tmpfiles.d" "$pkg/etc/edu-agent" "$pkg/etc/logrotate.d" \
    "$pkg/usr/bin" "$pkg/usr/share/doc/edu-sync-agent" \
    "$pkg/usr/share/man/man1"
cp -a "$bundle" "$pkg/usr/lib/edu-agent/bundle"
install -m 0644 "$bundle/systemd/edu-agent.service" "$pkg/lib/systemd/system/"
install -m 0644 "$bundle/systemd/sysusers.d/edu-agent.conf" "$pkg/usr/lib/sysusers.d/"
install -m 0644 "$bundle/systemd/tmpfiles.d/edu-agent.conf" "$pkg/usr/lib/tmpfiles.d/"
install -m 0644 "$bundle/config.example.yaml" "$pkg/etc/edu-agent/config.example.yaml"
install -m 0644 "$bundle/systemd/logrotate.edu-agent" "$pkg/etc/logrotate.d/edu-agent"
ln -s /opt/edu-agent/current/bin/edu-agent "$pkg/usr/bin/edu-agent"
install -m 0644 "$here/copyright" "$pkg/usr/share/doc/edu-sync-agent/copyright"
for doc in "$bundle"/doc/*.md; do install -m 0644 "$doc" "$pkg/usr/share/doc/edu-sync-agent/"; done
printf 'edu-sync-agent (%s) unstable; urgency=medium\n\n  * Release %s (commit %s).\n\n -- %s  %s\n' \
    "$version" "$version" "$(sed -n 's/^commit=//p' "$bundle/BUNDLE-INFO")" "$maintainer" \
    "$(date -R -u -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}")" \
    | gzip -9n > "$pkg/usr/share/doc/edu-sync-agent/changelog.gz"
gzip -9n < "$here/edu-agent.1" > "$pkg/usr/share/man/man1/edu-agent.1.gz"
chmod -R u+rwX,go+rX,go-w "$pkg/usr" "$pkg/lib" "$pkg/etc"

install -m 0644 "$here/conffiles" "$pkg/DEBIAN/conffiles"
install -m 0755 "$here/postinst" "$here/prerm" "$here/postrm" "$pkg/DEBIAN/"
size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
    -e "s/@PYTHON@/$python/" -e "s/@PYTHON_NEXT@/$python_next/" -e "s/@MAINTAINER@/$maintainer/" \
    "$here/control.in" > "$pkg/DEBIAN/control"
(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort \
    | xargs -d '\n' md5sum > DEBIAN/md5sums)
chmod 0644 "$pkg/DEBIAN/md5sums"

deb=$out/edu-sync-agent_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zgzip -z6 --build "$pkg" "$deb" >/dev/null
echo "build-bundle: $deb"
