"""Serial bus benchmark at 9600 baud: how much of the wire time the gateway turns into readings.

    .venv/bin/python bench/serial_bench.py [--seconds 10] [--baud 9600]

One bus, polled as fast as configured (every device due at all times), with the
mix of a lighting cabinet: three Modbus RTU energy meters (two requests each,
float32 input registers), a DL/T 645 meter (four identifiers) and a CJ/T 188
water meter. The slaves are simulated in a separate process on the far end of
a pseudo-terminal; they hold every reply back for as long as the request and
the reply would take on a real line at the baud rate (11 bits a character:
start, 8 data, even parity, stop), plus the 3.5 character times of silence a
slave keeps before answering. The gateway side runs the real scheduler
(LinkRunner) and bus driver, and itself keeps 3.5 character times of silence
before each request.

Reported:
  bus busy    share of wall-clock time a frame is on the wire
  readings/s  samples delivered
  overhead    wall-clock time beyond the physical minimum (bytes at the baud
              rate plus the two required silences per exchange), split into
              the gateway's part (time from a reply's last byte to the next
              request beyond the required silence) and the simulator's part
              (its timers firing late).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivers.modbus.tables import Table  # noqa: E402
from drivers.registry import protocols  # noqa: E402
from gateway.links import DeviceStatus, LinkRunner  # noqa: E402
from gateway.model.devices import DeviceBase  # noqa: E402
from gateway.model.readings import Sample  # noqa: E402
from simulators.serial import Cjt188MeterSim, Dlt645MeterSim, SimulatedBus, modbus_rtu_slaves  # noqa: E402

BITS_PER_CHAR = 11
METER_UNITS = (1, 2, 3)
DLT_ADDRESS, WATER_ADDRESS = "000012345678", "00000019040001"
DLT_VALUES = {0x00010000: 1234.56, 0x02010100: 230.1, 0x02020100: 5.123, 0x02030000: 1.1787}


# --- the simulated slaves (child process) ------------------------------------------------------------------

async def serve(path: Path, baud: int) -> None:
    slaves, tables = modbus_rtu_slaves(METER_UNITS)
    for unit in METER_UNITS:
        tables.set_registers(unit, Table.INPUT_REGISTER, 0, [0x4366, 0x1999] * 40)  # type: ignore[attr-defined]
    char = BITS_PER_CHAR / baud
    bus = SimulatedBus(path, [slaves, Dlt645MeterSim(DLT_ADDRESS, DLT_VALUES),
                              Cjt188MeterSim(WATER_ADDRESS, volume_hundredths=1234567)],
                       baud=baud, bits_per_char=BITS_PER_CHAR, turnaround=3.5 * char)
    await bus.start()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    await bus.stop()
    print(json.dumps([[x.request_at, len(x.request), x.reply_at, len(x.reply)] for x in bus.exchanges]), flush=True)


# --- the gateway side --------------------------------------------------------------------------------------

def devices(path: Path, baud: int) -> list[DeviceBase]:
    common = {"port": str(path), "serial": {"baud": baud, "parity": "even"}, "poll_interval": 0.001,
              "timeout": 0.5, "asset": {"domain": "street-lighting", "site": "bench", "id": "bench-cabinet",
                                        "type": "lighting-cabinet"}}
    made: list[DeviceBase] = []
    for unit in METER_UNITS:
        points = [{"name": f"v{i}", "indicator": "voltage-l1", "table": "input_register", "address": 2 * i,
                   "type": "float32"} for i in range(3)]  # registers 0-5: one request
        points += [{"name": f"e{i}", "indicator": "active-energy-import", "table": "input_register",
                    "address": 60 + 2 * i, "type": "float32"} for i in range(2)]  # 60-63: a second request
        made.append(_model("modbus-rtu", {"id": f"meter-{unit}", "unit_id": unit, "points": points, **common}))
    made.append(_model("dlt645", {"id": "supply-meter", "address": DLT_ADDRESS, **common, "points": [
        {"name": f"{data_id:08X}", "indicator": "voltage-l1", "data_id": f"{data_id:08X}", "unit": None}
        for data_id in DLT_VALUES]}))
    made.append(_model("cjt188", {"id": "water-meter", "address": WATER_ADDRESS, **common, "points": [
        {"name": "volume", "indicator": "volume", "field": "volume"}]}))
    return made


def _model(protocol: str, raw: dict[str, Any]) -> DeviceBase:
    return protocols()[protocol].config_model.model_validate({"protocol": protocol, **raw})


def measure(seconds: float, baud: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "ttyBENCH"
        child = subprocess.Popen([sys.executable, __file__, "--serve", str(path), "--baud", str(baud)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdin is not None and child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise SystemExit("the simulator did not start")
        readings = asyncio.run(poll(path, seconds, baud))
        child.stdin.close()
        exchanges = json.loads(child.stdout.read())
        child.wait()
    report(exchanges, readings, baud)


async def poll(path: Path, seconds: float, baud: int) -> int:
    """Poll the bus for `seconds`; the number of samples delivered."""
    readings = 0

    def on_samples(device: DeviceBase, samples: Sequence[Sample], rx: int) -> None:
        nonlocal readings
        readings += len(samples)

    def on_failure(device: DeviceBase, reason: str, rx: int) -> None:
        print(f"  device {device.id} failed: {reason}")

    def on_status(status: DeviceStatus[Any]) -> None:
        pass

    from drivers.registry import make_driver

    runner = LinkRunner("bench", make_driver(devices(path, baud)), on_samples, on_failure, on_status)
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(seconds)  # the measurement period
    task.cancel()
    await asyncio.wait([task])
    return readings


def report(exchanges: list[list[float]], readings: int, baud: int) -> None:
    char = BITS_PER_CHAR / baud
    silence = 3.5 * char
    answered = [x for x in exchanges if x[2] is not None]
    first, last = answered[0], answered[-1]
    wall = last[2] - first[0]
    on_wire = sum((x[1] + x[3]) * char for x in answered)
    minimum = sum((x[1] + x[3]) * char + 2 * silence for x in answered)
    gateway = sum(max(0.0, nxt[0] - x[2] - silence) for x, nxt in itertools.pairwise(answered))
    late = sum(x[2] - (x[0] + (x[1] + x[3]) * char + silence) for x in answered)
    print(f"serial bus at {baud} baud 8E1, {len(answered)} exchanges in {wall:.2f} s "
          f"({len(exchanges) - len(answered)} unanswered)")
    print(f"  bus busy:            {on_wire / wall:6.1%} of wall-clock time carries frames")
    print(f"  readings/s:          {readings / wall:8.1f}   ({len(answered) / wall:.1f} exchanges/s)")
    print(f"  physical minimum:    {minimum:8.2f} s   (bytes at {baud} baud + 2 x 3.5 character silences)")
    print(f"  overhead, total:     {wall / minimum - 1:6.1%} above the physical minimum")
    print(f"    gateway:           {gateway / minimum:6.1%}   ({gateway / len(answered) * 1000:.2f} ms per exchange "
          "beyond the required silence)")
    print(f"    simulator timers:  {late / minimum:6.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--baud", type=int, default=9600)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        asyncio.run(serve(args.serve, args.baud))
    else:
        measure(args.seconds, args.baud)


if __name__ == "__main__":
    main()
