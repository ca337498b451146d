"""A simulated OPC-UA gas station server, run as its own process (tests, demo and benchmark only).

    python -m drivers.opcua.simulator --port 4840 [--period 1] [--extra 1000] [--secure DIR] [--user NAME:PASSWORD]
                                      [--demo]

Prints one line `ready opc.tcp://127.0.0.1:PORT/station` when it accepts
connections, then serves until stopped (SIGTERM/SIGINT or end of stdin).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import signal
import sys
import time
from pathlib import Path

from drivers.opcua.client import SimVariable, StationSimulator, gas_station_variables, make_server_certificate


async def serve(args: argparse.Namespace) -> None:
    variables = gas_station_variables()
    variables += [SimVariable(f"Bench.Value{i:04d}", float(i), drift=1.0) for i in range(args.extra)]
    certificate = key = None
    if args.secure is not None:
        certificate, key = await make_server_certificate(args.secure)
    users = dict(u.split(":", 1) for u in args.user) if args.user else None
    simulator = StationSimulator(args.port, variables, period=0 if args.demo else args.period, users=users,
                                 certificate=certificate, private_key=key, decoy_namespaces=args.decoy)
    await simulator.start()
    in_service = asyncio.create_task(_like_a_station_in_service(simulator)) if args.demo else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The parent closing our stdin (or dying) stops us too, so no simulator outlives its test.
    watching = True
    try:
        loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not os.read(sys.stdin.fileno(), 1) else None)
    except (OSError, ValueError):  # stdin is a file or /dev/null: only signals stop us
        watching = False
    print(f"ready opc.tcp://127.0.0.1:{args.port}/station", flush=True)
    try:
        await stop.wait()
    finally:
        if watching:
            loop.remove_reader(sys.stdin.fileno())
        if in_service is not None:
            in_service.cancel()
            await asyncio.gather(in_service, return_exceptions=True)
        await simulator.stop()


async def _like_a_station_in_service(simulator: StationSimulator) -> None:
    """Values that stay where a station in service keeps them (`--demo`, which may run for hours): pressures
    and temperature along slow waves, the flow following demand, the totaliser counting that flow, and a
    methane detector reading a background of a few %LEL. The valve stays open and the alarm quiet."""
    rng = random.Random(3)
    started = last = time.monotonic()
    volume = float(next(v.value for v in simulator.variables if v.name == "Station.StandardVolume") or 0.0)
    while True:
        await asyncio.sleep(1.0)  # a simulated process, not synchronisation
        now = time.monotonic()
        seconds = now - started
        flow = 820 + 160 * math.sin(seconds / 90) + rng.uniform(-8, 8)
        volume += flow * (now - last) / 3600
        last = now
        values = {
            "Station.InletPressure": 350 + 12 * math.sin(seconds / 70) + rng.uniform(-1, 1),
            "Station.OutletPressure": 2.6 + 0.04 * math.sin(seconds / 25) + rng.uniform(-0.005, 0.005),
            "Station.GasTemperature": 12.5 + 0.8 * math.sin(seconds / 150) + rng.uniform(-0.05, 0.05),
            "Station.StandardFlow": flow,
            "Station.StandardVolume": volume,
            "Station.MethaneLel": max(0.0, 2 + 1.5 * math.sin(seconds / 45) + rng.uniform(-0.3, 0.3)),
        }
        for name, value in values.items():
            await simulator.set_value(name, round(value, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--period", type=float, default=1.0, help="seconds between value changes (0: never)")
    parser.add_argument("--extra", type=int, default=0, help="extra changing variables Bench.Value0000…")
    parser.add_argument("--secure", type=Path, default=None,
                        help="directory for the server certificate; offers only secured endpoints")
    parser.add_argument("--user", action="append", default=[], help="NAME:PASSWORD accepted (repeatable)")
    parser.add_argument("--decoy", type=int, default=0, help="namespaces registered before ours")
    parser.add_argument("--demo", action="store_true",
                        help="values move as a station in service (bounded), instead of every --period")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
