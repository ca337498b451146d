#!/usr/bin/env bash
# Build the Debian package dist/municipal-gateway_<version>_<arch>.deb for the machine's own architecture.
#
# The package is a virtualenv under /opt/municipal-gateway holding the gateway and its dependencies (the
# OPC-UA extra included), assembled by the plain debhelper directory debian/ (see debian/rules for why not
# dh-virtualenv). pip installs wheels for the architecture it runs on, so there is no cross-building: for
# arm64 or armhf, run this same script on an arm64 or armhf Debian 12 / Raspberry Pi OS machine.
#
# Installs its build tools (debian/control's Build-Depends) with apt-get when they are missing.
# Prints the .deb's path as its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# One version, pyproject.toml's; debian/changelog is written from it below rather than kept by hand.
version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
commit=$(git rev-parse --short HEAD)
# The commit's time, not now: the same commit gives the same package timestamps (SOURCE_DATE_EPOCH).
date=$(git log -1 --format=%aD HEAD)

# Build from a copy of the files git knows (tracked, or new and not ignored), never from a work tree with
# its .venv, caches and state.
work=$root/build/deb
src=$work/municipal-gateway-$version
rm -rf "$work"
mkdir -p "$src"
# (ls-files also names files deleted from the work tree but not yet from the index: copy what exists.)
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi
done | xargs -0 cp -P --parents -t "$src"
dirty=""; git diff --quiet HEAD 2>/dev/null || dirty=" plus uncommitted changes"
cat >"$src/debian/changelog" <<EOF
municipal-gateway ($version) unstable; urgency=medium

  * Built from git commit $commit$dirty. Changes: git log, README.

 -- municipal-gateway maintainers <maintainers@municipal-gateway.invalid>  $date
EOF

# Build tools: debian/control's Build-Depends (debhelper, python3-venv; compilers on armhf, where some
# dependencies have no wheel), installed with apt when dpkg-checkbuilddeps finds them missing.
if ! (cd "$src" && dpkg-checkbuilddeps) >/dev/null 2>&1; then
    sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get build-dep -y -qq "$src" >/dev/null
fi

echo "building municipal-gateway $version ($commit$dirty) for $(dpkg --print-architecture)" >&2
(cd "$src" && dpkg-buildpackage -b --no-sign) >"$work/build.log" 2>&1 || {
    tail -n 40 "$work/build.log" >&2
    echo "build-deb: dpkg-buildpackage failed; full log: $work/build.log" >&2
    exit 1
}

deb=municipal-gateway_${version}_$(dpkg --print-architecture).deb
mkdir -p dist
mv "$work/$deb" dist/
echo "$root/dist/$deb"
