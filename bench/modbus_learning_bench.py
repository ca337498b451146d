"""Requests per poll of a strict-gap PLC and an 80-register meter, before and after the driver learns them.

The PLC (simulators.modbus.StrictGapSimulator) has holding registers 0-9 and 20-30 and coils 0-15, and
refuses with exception 02 any read bridging the gap; it is modelled as four devices on unit 1 (the
station and three pumps), as sites often are. The meter refuses reads of more than 80 registers (03)
and is read for 125 registers. Each round polls every device once; the simulator counts the requests.
Then a new driver with the same state directory stands for a restart.

    .venv/bin/python bench/modbus_learning_bench.py [--rounds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.modbus.config import ModbusTcpDevice
from drivers.modbus.tables import Table
from drivers.modbus.tcp import ModbusTcpDriver
from gateway.model.driver import LinkContext
from simulators.modbus import ModbusSimulator, StrictGapSimulator

HR, COIL = Table.HOLDING_REGISTER, Table.COIL
PLC: dict[str, list[tuple[Table, int, str]]] = {
    "station": [(HR, 0, "uint16"), *((HR, i, "uint16") for i in range(1, 8)), (HR, 20, "float32"), (COIL, 0, "bool")],
    "pump-1": [(HR, 0, "uint16"), (HR, 8, "uint16"), (HR, 24, "float32"), (COIL, 1, "bool")],
    "pump-2": [(HR, 0, "uint16"), (HR, 9, "uint16"), (HR, 26, "float32"), (COIL, 2, "bool")],
    "pump-3": [(HR, 0, "uint16"), (HR, 28, "uint32"), (HR, 30, "int16"), (COIL, 3, "bool")],
}


def device(port: int, device_id: str, points: Sequence[tuple[Table, int, str]]) -> ModbusTcpDevice:
    raw: dict[str, Any] = {
        "id": device_id, "protocol": "modbus-tcp", "host": "127.0.0.1", "port": port, "unit_id": 1, "timeout": 2,
        "asset": {"domain": "water", "site": "ps01", "id": device_id, "type": "pump"},
        "points": [{"name": f"p{i}", "indicator": "pressure", "table": table.value, "address": address,
                    "type": kind} for i, (table, address, kind) in enumerate(points)]}
    return ModbusTcpDevice.model_validate(raw)


async def rounds(sim: ModbusSimulator, devices: list[ModbusTcpDevice], state: Path, count: int) -> list[int]:
    """Requests the simulator received in each round of polls, the last round after a restart."""
    per_round: list[int] = []
    for _restart in range(2):
        driver = ModbusTcpDriver(devices, LinkContext(state))  # the second reads what the first kept
        await driver.open()
        for _ in range(count if not per_round else 1):
            before = sim.requests[1]
            for member in devices:
                samples = await driver.read(member)
                assert all(s.quality.value == "good" for s in samples), samples
            per_round.append(sim.requests[1] - before)
        await driver.close()
    return per_round


async def main(count: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        plc = StrictGapSimulator({HR: [(0, 9), (20, 30)], COIL: [(0, 15)]})
        await plc.start()
        devices = [device(plc.port, name, points) for name, points in PLC.items()]
        plc_rounds = await rounds(plc, devices, Path(directory) / "plc", count)
        await plc.stop()

        meter_sim = ModbusSimulator(max_registers=80)
        await meter_sim.start()
        meter = [device(meter_sim.port, "meter", [(HR, i, "uint16") for i in range(125)])]
        meter_rounds = await rounds(meter_sim, meter, Path(directory) / "meter", count)
        await meter_sim.stop()
    print("requests per round (every device polled once), round 1 .. N, then after a restart")
    for name, per_round in (("strict-gap PLC, 4 devices on unit 1", plc_rounds),
                            ("meter refusing > 80 registers (03)", meter_rounds)):
        learning, restart = per_round[:-1], per_round[-1]
        print(f"  {name:<38} before learning {learning[0]:>2}, learnt {learning[-1]:>2}, after restart {restart:>2}"
              f"   ({' '.join(map(str, learning))})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    asyncio.run(main(parser.parse_args().rounds))
