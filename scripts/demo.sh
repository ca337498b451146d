#!/usr/bin/env bash
# Set up the gateway in a local virtualenv and run the demo: simulated field devices,
# a broker (mosquitto when installed, otherwise an embedded one) and the gateway,
# with a live view of what a subscriber receives. Pass --seconds N to stop after N seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import venv, ensurepip" 2>/dev/null; then   # Debian ships venv separately
    sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq python3-venv >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[demo,opcua]"
exec .venv/bin/municipal-gateway demo "$@"
