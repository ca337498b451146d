"""Benchmark: what the status listener costs. The gateway's memory (peak RSS) and CPU with the listener on and one
browser following the page, against the same run with it off.

    .venv/bin/python bench/status_bench.py                                   # 10 devices x 20 registers every 1 s
    .venv/bin/python bench/status_bench.py --devices 100 --registers 100     # 10,000 values on the page

Both runs are the same site: simulated Modbus TCP devices (their own process), mosquitto and the gateway as its
own process (`python -m gateway run`), with default settings but for the broker's address and the state
directory. With the listener on, Debian's headless chromium (through chromium-driver) opens the page and
follows its live updates (every 2 s, the default) for the whole window; the browser's own CPU and memory are
not the gateway's and are not counted. Also printed: what importing aiohttp and the listener adds to a fresh
process's memory, and the size of one live update.

Everything listens on 127.0.0.1, on ports from 23000 up (the broker 23000, the page 23001, the devices 23100...).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from modbus_mqtt_bench import rss_mb, write_site

BROKER_PORT, STATUS_PORT, DEVICE_PORT = 23000, 23001, 23100
ROOT = Path(__file__).resolve().parent.parent


def import_cost() -> dict[str, float]:
    """VmRSS of a fresh process after importing the gateway, then after importing the listener (aiohttp)."""
    script = (
        "def rss():\n"
        "    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS:')).split()[1])\n"
        "import gateway.app, drivers.modbus.tcp\n"
        "before = rss()\n"
        "import gateway.status.server\n"
        "print(before, rss())\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    before, after = (int(x) / 1024 for x in out.stdout.split())
    return {"rss_after_gateway_imports_mb": before, "rss_after_aiohttp_and_listener_mb": after,
            "aiohttp_import_mb": after - before}


def browser() -> Any:
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                     "--disable-extensions", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(argument)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    return webdriver.Chrome(options=options, service=service)


def run(listener: bool, devices: int, registers: int, interval: float, seconds: float,
        warmup: float) -> dict[str, float]:
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with tempfile.TemporaryDirectory(prefix="status-bench-") as tmp:
        directory = Path(tmp)
        (directory / "mosquitto.conf").write_text(
            f"user {getpass.getuser()}\nlistener {BROKER_PORT} 127.0.0.1\nallow_anonymous true\nlog_dest none\n")
        broker = subprocess.Popen([mosquitto, "-c", str(directory / "mosquitto.conf")], stderr=subprocess.DEVNULL)
        serve = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                 f"from modbus_mqtt_bench import serve; serve({devices}, {registers}, {interval}, {DEVICE_PORT})")
        simulators = subprocess.Popen([sys.executable, "-c", serve], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert simulators.stdout is not None
        assert simulators.stdout.readline().strip() == "ready"
        config = write_site(directory, devices, registers, interval, BROKER_PORT, DEVICE_PORT)
        main = yaml.safe_load(config.read_text())
        main["status"] = {"enabled": listener, "port": STATUS_PORT}  # host: the default, 127.0.0.1
        config.write_text(yaml.safe_dump(main))
        gateway = subprocess.Popen([sys.executable, "-m", "gateway", "run", str(config)], cwd=ROOT)
        process = psutil.Process(gateway.pid)
        page = None
        update_bytes = 0.0
        try:
            time.sleep(warmup)  # the gateway starts, connects and polls: not part of the window
            if listener:
                page = browser()
                page.get(f"http://127.0.0.1:{STATUS_PORT}/")
                page.set_script_timeout(30)
                page.execute_async_script(  # the page has drawn a live update
                    "const done = arguments[0]; const check = () => document.getElementById('live').textContent"
                    " === 'live' ? done(true) : setTimeout(check, 100); check();")
                with urllib.request.urlopen(f"http://127.0.0.1:{STATUS_PORT}/api/status", timeout=10) as reply:
                    update_bytes = len(reply.read())
            cpu_before = sum(process.cpu_times()[:2])
            started = time.monotonic()
            time.sleep(seconds)
            cpu = sum(process.cpu_times()[:2]) - cpu_before
            elapsed = time.monotonic() - started
            if page is not None:
                shown = page.execute_script("return document.querySelectorAll('#values tr').length")
                assert shown == devices * registers, f"the page shows {shown} values"
            peak, now = rss_mb(gateway.pid), rss_mb(gateway.pid, "VmRSS")
        finally:
            if page is not None:
                page.quit()
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(timeout=60)
            simulators.send_signal(signal.SIGTERM)
            simulators.communicate(timeout=30)
            broker.terminate()
            broker.wait(timeout=10)
    return {"gateway_cpu_share_of_one_core": cpu / elapsed, "gateway_peak_rss_mb": peak,
            "gateway_rss_at_end_mb": now, "live_update_kb": update_bytes / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--registers", type=int, default=20)
    parser.add_argument("--interval", type=float, default=1.0, help="poll interval, seconds")
    parser.add_argument("--seconds", type=float, default=60.0, help="measurement window of each run")
    parser.add_argument("--warmup", type=float, default=5.0)
    args = parser.parse_args()
    cost = import_cost()
    print(f"importing aiohttp and the listener: {cost['rss_after_gateway_imports_mb']:.1f} MB -> "
          f"{cost['rss_after_aiohttp_and_listener_mb']:.1f} MB VmRSS (+{cost['aiohttp_import_mb']:.1f} MB)")
    print(f"{args.devices} devices x {args.registers} registers every {args.interval:g} s, {args.seconds:g} s window, "
          f"{os.cpu_count()} cores")
    results = {}
    for listener in (False, True):
        results[listener] = run(listener, args.devices, args.registers, args.interval, args.seconds, args.warmup)
        label = "listener on, one browser following" if listener else "listener off"
        print(f"  {label}:")
        for key, value in results[listener].items():
            print(f"    {key:<32} {value:10.3f}")
    off, on = results[False], results[True]
    print(f"  difference: peak RSS +{on['gateway_peak_rss_mb'] - off['gateway_peak_rss_mb']:.1f} MB, CPU "
          f"+{100 * (on['gateway_cpu_share_of_one_core'] - off['gateway_cpu_share_of_one_core']):.2f} % of one core")
    print(json.dumps({"import": cost, "off": off, "on": on}))


if __name__ == "__main__":
    main()
