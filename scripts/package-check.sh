#!/usr/bin/env bash
# Build the Debian package and walk it through its life on this machine with dpkg: first install, upgrade,
# downgrade, purge. Needs root and Debian; needs no running systemd (CI has none).
#
#   install   user, groups, state directory, enabled but not started, README where Documentation= points,
#             `check` accepts the shipped configuration, the OPC-UA extra imports, the installed unit
#             passes systemd-analyze verify and security (scripts/check-unit.sh); the installed gateway
#             runs as its user and writes its state
#   upgrade   with an edited gateway.yaml and state in /var/lib: both kept; `check` runs and a running
#             gateway is restarted
#   downgrade with a gateway.yaml the version rejects: dpkg succeeds, the gateway is NOT restarted, the
#             warning says so
#   purge     the gateway is stopped; nothing of the package is left but what Debian policy keeps (the
#             system user) and what an engineer put in /etc/municipal-gateway (the MQTT password)
#
# "systemd running" is simulated in a private mount namespace (/run/systemd/system exists there) with
# systemctl and deb-systemd-invoke replaced by stand-ins that record what the maintainer scripts asked
# for; the upgrade and downgrade "versions" are the built package repacked with another version number.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
started=$SECONDS

fail() { echo "package-check: FAIL: $*" >&2; exit 1; }
step() { echo "package-check: $*"; }

[ "$(id -u)" -eq 0 ] || fail "needs root: it installs and purges the package"
# Never run over a real installation: the purge at the end would delete its state.
if dpkg-query -W -f='${Status}' municipal-gateway 2>/dev/null | grep -qv "not-installed"; then
    fail "municipal-gateway is installed (or its configuration is left) on this machine; remove it first (dpkg --purge municipal-gateway)"
fi
for d in /etc/municipal-gateway /var/lib/municipal-gateway /opt/municipal-gateway; do
    [ ! -e "$d" ] || fail "$d exists without the package (a manual installation?); not touching it"
done

tmp=$(mktemp -d)
installed=no
cleanup() {
    if [ "$installed" = yes ]; then dpkg --purge municipal-gateway >/dev/null 2>&1 || true; fi
    rm -f /etc/municipal-gateway/mqtt-password
    rmdir /etc/municipal-gateway 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

# --- build ----------------------------------------------------------------------------------------------
# PACKAGE_DEB=dist/municipal-gateway_....deb checks a package already built (CI always builds).
t=$SECONDS
deb=${PACKAGE_DEB:-$(./scripts/build-deb.sh | tail -n 1)}
build_s=$((SECONDS - t))
version=$(dpkg-deb -f "$deb" Version)
arch=$(dpkg-deb -f "$deb" Architecture)
step "built $(basename "$deb") in ${build_s} s: $(du -k "$deb" | cut -f1) KiB, installed size $(dpkg-deb -f "$deb" Installed-Size) KiB"

# The same package under a higher version, for the upgrade and the downgrade back.
v2="$version+check1"
dpkg-deb -R "$deb" "$tmp/v2"
sed -i "s/^Version: .*/Version: $v2/" "$tmp/v2/DEBIAN/control"
deb2=$tmp/municipal-gateway_${v2}_$arch.deb
dpkg-deb -Znone -b "$tmp/v2" "$deb2" >/dev/null   # uncompressed: it only lives for this run
rm -rf "$tmp/v2"

# dpkg -i installs no dependencies: bring in those this machine lacks (python3.11 and adduser on Debian 12).
missing=()
for dep in $(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/(.*)//; s/|.*//' | tr -d ' '); do
    dpkg-query -W -f='${Status}' "$dep" 2>/dev/null | grep -q "ok installed" || missing+=("$dep")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- stand-ins for a running systemd --------------------------------------------------------------------
mkdir -p "$tmp/bin"
log=$tmp/systemd.log
for cmd in systemctl deb-systemd-invoke; do
    cat >"$tmp/bin/$cmd" <<EOF
#!/bin/sh
echo "$cmd \$*" >>"$log"
exit 0    # systemctl is-active: "the gateway is running"
EOF
    chmod +x "$tmp/bin/$cmd"
done
with_systemd() {
    : >"$log"
    PATH=$tmp/bin:$PATH unshare --mount --propagation private sh -c \
        'mkdir -p /run/systemd && mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system && exec "$@"' sh "$@"
}
asked() { grep -qx "$1" "$log"; }

conf=/etc/municipal-gateway/gateway.yaml
check() { CREDENTIALS_DIRECTORY=/etc/municipal-gateway municipal-gateway check "$conf"; }
state_sum() { (cd /var/lib/municipal-gateway && find . -type f -print0 | sort -z | xargs -0 sha256sum); }

# --- first install, no systemd --------------------------------------------------------------------------
t=$SECONDS
# What of the package's paths is already here (/opt, /usr/bin ...) may stay after the purge; nothing else.
dpkg-deb --fsys-tarfile "$deb" | tar -t | sed 's#^\./#/#; s#/$##' | grep . | while IFS= read -r path; do
    if [ -e "$path" ] || [ -L "$path" ]; then echo "$path"; fi
done >"$tmp/preexisting"
installed=yes
dpkg -i "$deb" >"$tmp/out" 2>&1 || { cat "$tmp/out"; fail "dpkg -i $deb"; }
grep -q "installed and enabled, not started" "$tmp/out" || { cat "$tmp/out"; fail "no first-install note"; }

id -nG municipal-gateway | tr ' ' '\n' | grep -qx dialout || fail "municipal-gateway is not in dialout"
[ "$(getent passwd municipal-gateway | cut -d: -f6,7)" = /var/lib/municipal-gateway:/usr/sbin/nologin ] ||
    fail "user's home or shell: $(getent passwd municipal-gateway)"
[ "$(stat -c '%a %U %G' /var/lib/municipal-gateway)" = "700 municipal-gateway municipal-gateway" ] ||
    fail "state directory: $(stat -c '%a %U %G' /var/lib/municipal-gateway)"
[ -L /etc/systemd/system/multi-user.target.wants/municipal-gateway.service ] || fail "unit not enabled"
[ "$(command -v municipal-gateway)" = /usr/bin/municipal-gateway ] || fail "municipal-gateway not on PATH"
unit=/lib/systemd/system/municipal-gateway.service
doc=$(sed -n 's#^Documentation=file://##p' "$unit")
[ -f "$doc" ] || fail "Documentation= names $doc, which is not installed"
# Every file under /etc/municipal-gateway is a conffile, and no demo or example configuration is there.
diff <(find /etc/municipal-gateway -type f | sort) \
     <(dpkg-query -W -f='${Conffiles}\n' municipal-gateway | awk 'NF { print $1 }' | sort) ||
    fail "files under /etc/municipal-gateway that are not conffiles (or the reverse)"
! dpkg -L municipal-gateway | grep -E '/etc/municipal-gateway/(demo|[^/]*-example)' || fail "demo configuration shipped"
# Before the engineer has put the password in place, `check` says so (what `run` would meet), exit 2.
rc=0; check >"$tmp/out" 2>&1 || rc=$?
[ "$rc" -eq 2 ] && grep -q "mqtt.password_file: expected a file the gateway can read at /etc/municipal-gateway/mqtt-password: no such file" "$tmp/out" ||
    { cat "$tmp/out"; fail "check of the shipped $conf without the password file (exit $rc)"; }
install -m 0600 /dev/null /etc/municipal-gateway/mqtt-password
check >"$tmp/out" 2>&1 || { cat "$tmp/out"; fail "the shipped $conf does not pass check"; }
/opt/municipal-gateway/bin/python -c 'import asyncua' || fail "the OPC-UA extra is not installed"
! /opt/municipal-gateway/bin/python -c 'import pip' 2>/dev/null || fail "pip is in the shipped venv"
./scripts/check-unit.sh "$unit"

# The installed gateway runs as its user (as the unit would start it) and writes its state; the broker is
# a closed local port, so it only retries. The password is a stand-in credential directory.
sed -i 's/^  id: gw-change-me/  id: gw-package-check/; s/^  host: .*/  host: 127.0.0.1/; s/^  port: 1883 .*/  port: 9/' "$conf"
chmod 0711 "$tmp"  # the gateway's user must reach its credentials (as it reaches /run/credentials under systemd)
install -d -o municipal-gateway -m 0700 "$tmp/credentials"
printf 'not-a-real-password\n' >"$tmp/credentials/mqtt-password"
chown municipal-gateway "$tmp/credentials/mqtt-password"
install -m 0600 "$tmp/credentials/mqtt-password" /etc/municipal-gateway/mqtt-password  # the engineer's file
rc=0
(cd / && CREDENTIALS_DIRECTORY=$tmp/credentials timeout -s TERM 4 \
    setpriv --reuid=municipal-gateway --regid=municipal-gateway --init-groups \
    sh -c 'umask 0077; exec municipal-gateway run /etc/municipal-gateway/gateway.yaml') >"$tmp/out" 2>&1 || rc=$?
[ "$rc" -eq 124 ] || { cat "$tmp/out"; fail "the installed gateway exited ($rc) before it was stopped"; }
grep -q "gateway gw-package-check stopped" "$tmp/out" || { cat "$tmp/out"; fail "the gateway did not stop cleanly"; }
[ "$(stat -c '%a %U' /var/lib/municipal-gateway/buffer.sqlite)" = "600 municipal-gateway" ] ||
    fail "buffer: $(stat -c '%a %U' /var/lib/municipal-gateway/buffer.sqlite)"
step "install: ok ($((SECONDS - t)) s)"

# --- upgrade, systemd running: configuration and state kept, checked, restarted --------------------------
t=$SECONDS
conf_sum=$(sha256sum "$conf")
before=$(state_sum)
with_systemd dpkg -i "$deb2" >"$tmp/out" 2>&1 || { cat "$tmp/out"; fail "upgrade to $v2"; }
[ "$(dpkg-query -W -f='${Version}' municipal-gateway)" = "$v2" ] || fail "not upgraded"
[ "$(sha256sum "$conf")" = "$conf_sum" ] || fail "the upgrade changed the edited $conf"
[ "$(state_sum)" = "$before" ] || fail "the upgrade changed /var/lib/municipal-gateway"
grep -q "valid" "$tmp/out" || { cat "$tmp/out"; fail "the upgrade did not run check"; }
asked "deb-systemd-invoke restart municipal-gateway.service" || { cat "$log"; fail "the upgrade did not restart the gateway"; }
step "upgrade $version -> $v2: ok ($((SECONDS - t)) s)"

# --- downgrade, systemd running, configuration the version rejects: not restarted ------------------------
t=$SECONDS
printf 'no_such_setting: 1\n' >>"$conf"
with_systemd dpkg -i "$deb" >"$tmp/out" 2>&1 || { cat "$tmp/out"; fail "downgrade to $version"; }
[ "$(dpkg-query -W -f='${Version}' municipal-gateway)" = "$version" ] || fail "not downgraded"
grep -q "no_such_setting" "$tmp/out" && grep -q "NOT restarted" "$tmp/out" || {
    cat "$tmp/out"; fail "no clear warning about the rejected configuration"; }
sed "s/^/  | /" "$tmp/out"
! grep -q "restart" "$log" || { cat "$log"; fail "restarted the gateway on a rejected configuration"; }
[ "$(state_sum)" = "$before" ] || fail "the downgrade changed /var/lib/municipal-gateway"
grep -q "no_such_setting" "$conf" || fail "the downgrade replaced the edited $conf"
step "downgrade $v2 -> $version with a rejected configuration: ok, not restarted ($((SECONDS - t)) s)"

# --- upgrade again, no systemd --------------------------------------------------------------------------
t=$SECONDS
sed -i '/^no_such_setting/d' "$conf"
dpkg -i "$deb2" >"$tmp/out" 2>&1 || { cat "$tmp/out"; fail "upgrade without systemd"; }
! grep -q "WARNING" "$tmp/out" || { cat "$tmp/out"; fail "warning on a valid configuration"; }
step "upgrade without systemd: ok ($((SECONDS - t)) s)"

# --- purge, systemd running -----------------------------------------------------------------------------
t=$SECONDS
dpkg -L municipal-gateway >"$tmp/files"
with_systemd dpkg --purge municipal-gateway >"$tmp/out" 2>&1 || { cat "$tmp/out"; fail "dpkg --purge"; }
installed=no
asked "deb-systemd-invoke stop municipal-gateway.service" || { cat "$log"; fail "purge did not stop the gateway"; }
# What the package listed is gone, except what was here before it (/opt, /usr/bin ...) and
# /etc/municipal-gateway, which still holds the engineer's password file (below).
grep -vx -e '/\.' -e /etc/municipal-gateway "$tmp/files" | while IFS= read -r path; do
    if { [ -e "$path" ] || [ -L "$path" ]; } && ! grep -qxF "$path" "$tmp/preexisting"; then
        fail "left after purge: $path"
    fi
done
# Nor anything the scripts or the unit made (state, logs, systemd's enablement links and records), except
# the engineer's password file, which is theirs to keep or delete.
left=$(find /etc /opt /usr /var /srv -xdev -path "$root" -prune -o -path "$tmp" -prune -o \
    -name '*municipal-gateway*' -print | grep -vx /etc/municipal-gateway || true)
[ -z "$left" ] || fail "left after purge: $left"
[ "$(find /etc/municipal-gateway)" = "$(printf '/etc/municipal-gateway\n/etc/municipal-gateway/mqtt-password')" ] ||
    fail "left in /etc/municipal-gateway: $(find /etc/municipal-gateway)"
grep -q "kept /etc/municipal-gateway" "$tmp/out" || { cat "$tmp/out"; fail "purge did not say what it kept"; }
getent passwd municipal-gateway >/dev/null || fail "purge removed the system user (Debian keeps it)"
cat "$tmp/out"
step "purge: ok, only the system user and the engineer's /etc/municipal-gateway/mqtt-password remain ($((SECONDS - t)) s)"

step "all ok in $((SECONDS - started)) s (package build ${build_s} s)"
