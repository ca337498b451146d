#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian machine, then run it.
# Installs mosquitto (the tests start their own brokers), openssl, python3-seccomp, systemd, chromium with
# chromium-driver, and tmux when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
python3 -c "import venv, ensurepip" 2>/dev/null || need_apt+=(python3-venv)
# The unit's system-call filter is tried without systemd: libseccomp's bindings and systemd-analyze's groups.
/usr/bin/python3 -c "import seccomp" 2>/dev/null || need_apt+=(python3-seccomp)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
# The status page's browser test drives Debian's own Chromium (no browser download).
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)  # watch is tried in a real 80x24 terminal
if [ ${#need_apt[@]} -gt 0 ]; then
    sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[dev,opcua,demo,status]"

.venv/bin/lint-imports --no-cache
.venv/bin/ruff check gateway drivers simulators tests bench
.venv/bin/mypy
exec .venv/bin/python -m pytest -q "$@"
