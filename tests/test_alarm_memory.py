"""The active alarms across a restart of the processor: what is kept, how it is reconciled, what goes wrong.

A restart is a new `Processor` on the same alarm file; time comes from a controllable clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from gateway.buffer import Buffer
from gateway.mapping import DeviceMapper
from gateway.model.catalogue import Catalogue
from gateway.model.readings import Quality
from gateway.model.resolved import resolve_device
from gateway.pipeline import ALARM_PRIORITY, Pipeline
from gateway.processing import Processor
from gateway.topics import Topics
from tests.test_processing import T0, Clock, catalogue, device, make_processor, reading

HIGH = {"alarms": [{"level": "high", "limit": 500, "hysteresis": 10}]}


def start(path: Path, clock: Clock, cat: Catalogue | None = None, **settings: Any) -> Processor:
    return make_processor(cat or catalogue(**HIGH), [device(poll_interval=10, **settings)], clock=clock,
                          alarm_file=path)


def poll(processor: Processor, clock: Clock, value: float | None) -> list[tuple[str, str]]:
    quality = Quality.GOOD if value is not None else Quality.BAD
    out = processor.process("plc", [reading("outlet-pressure", value, clock.now, quality, point="p")])
    return [(e.alarm, e.event) for e in out.events]


def active(processor: Processor) -> list[tuple[str, int]]:
    return [(e.alarm, e.time_ms) for e in processor.active_alarms("regulator-1")]


def test_an_alarm_still_active_after_a_restart_keeps_its_since_and_is_not_raised_again(tmp_path: Path) -> None:
    path, clock = tmp_path / "active-alarms.json", Clock()
    before = start(path, clock)
    assert poll(before, clock, 520.0) == [("outlet-pressure-high", "raised")]
    clock.now = T0 + 3_600_000
    after = start(path, clock)
    assert active(after) == [("outlet-pressure-high", T0)]  # before any fresh reading
    assert after.restart_events().events == []
    assert poll(after, clock, 495.0) == []  # inside the hysteresis: still active, as if never restarted
    clock.now += 10_000
    assert poll(after, clock, 480.0) == [("outlet-pressure-high", "cleared")]
    assert active(after) == [] and json.loads(path.read_text())["active"] == []


def test_an_alarm_that_cleared_while_the_gateway_was_down_is_cleared_by_the_first_fresh_reading(
        tmp_path: Path) -> None:
    path, clock = tmp_path / "active-alarms.json", Clock()
    poll(start(path, clock), clock, 520.0)
    clock.now = T0 + 60_000
    after = start(path, clock)
    assert poll(after, clock, None) == []  # a bad reading says nothing: the alarm stays
    clock.now += 10_000
    assert poll(after, clock, 300.0) == [("outlet-pressure-high", "cleared")]


def test_device_alarms_are_kept_too_and_cleared_by_the_first_answer(tmp_path: Path) -> None:
    path, clock = tmp_path / "active-alarms.json", Clock()
    before = start(path, clock)
    for step in range(31):
        clock.now = T0 + step * 10_000
        before.failed("plc", "timeout", [reading("outlet-pressure", None, clock.now, Quality.BAD, point="p")])
        before.tick()
    kept = active(before)
    assert [alarm for alarm, _ in kept] == ["plc-communication-loss", "plc-stale-data"]
    clock.now += 60_000
    after = start(path, clock)
    assert active(after) == kept
    for _ in range(40):  # still failing after the restart: nothing is raised again
        clock.now += 10_000
        after.failed("plc", "timeout", [reading("outlet-pressure", None, clock.now, Quality.BAD, point="p")])
        assert after.tick().events == []
    assert sorted(poll(after, clock, 100.0)) == [("plc-communication-loss", "cleared"), ("plc-stale-data", "cleared")]


def test_an_alarm_no_longer_configured_is_cleared_at_start(tmp_path: Path) -> None:
    path, clock = tmp_path / "active-alarms.json", Clock()
    poll(start(path, clock), clock, 520.0)
    clock.now = T0 + 60_000
    after = start(path, clock, catalogue())  # the limit was taken out of the configuration
    assert active(after) == []
    (cleared,) = after.restart_events().events
    assert (cleared.alarm, cleared.event, cleared.time_ms) == ("outlet-pressure-high", "cleared", T0 + 60_000)
    assert cleared.message == "the alarm is no longer configured"
    assert after.restart_events().events == []  # once
    assert json.loads(path.read_text())["active"] == []


def test_a_device_alarm_switched_off_meanwhile_is_cleared_at_start(tmp_path: Path) -> None:
    path, clock = tmp_path / "active-alarms.json", Clock()
    before = start(path, clock)
    clock.now = T0 + 300_000
    assert [e.alarm for e in before.tick().events] == ["plc-stale-data"]
    after = start(path, clock, supervision={"stale_after": None})
    assert [(e.alarm, e.event) for e in after.restart_events().events] == [("plc-stale-data", "cleared")]


def test_the_file_keeps_each_alarm_as_the_event_that_raised_it(tmp_path: Path) -> None:
    path, clock = tmp_path / "active-alarms.json", Clock()
    poll(start(path, clock), clock, 520.0)
    (kept,) = json.loads(path.read_text())["active"]
    assert kept == {"asset": {"domain": "gas", "site": "station-1", "id": "regulator-1"},
                    "alarm": "outlet-pressure-high", "level": "high", "severity": "major", "since": T0,
                    "device": "plc", "indicator": "outlet-pressure", "value": 520.0, "limit": 500.0, "unit": "kPa",
                    "message": ""}
    assert list(tmp_path.iterdir()) == [path], "no temporary file is left behind"


@pytest.mark.parametrize("content", ["{not json", '{"active": [{"alarm": 3}]}', '{"version": 1}'])
def test_an_unreadable_file_is_reported_and_alarms_start_from_fresh_readings(
        tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture) -> None:
    path, clock = tmp_path / "active-alarms.json", Clock()
    path.write_text(content)
    with caplog.at_level(logging.WARNING):
        processor = start(path, clock)
    assert active(processor) == [] and "cannot read the active alarms" in caplog.text
    assert poll(processor, clock, 520.0) == [("outlet-pressure-high", "raised")]
    assert len(json.loads(path.read_text())["active"]) == 1, "and the file is sound again"


def test_a_file_that_cannot_be_written_is_reported_once_and_the_alarms_go_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, clock = tmp_path / "active-alarms.json", Clock()
    (tmp_path / "active-alarms.json.tmp").mkdir()  # the temporary file cannot be made
    processor = start(path, clock)
    with caplog.at_level(logging.INFO):
        for step, value in enumerate([520.0, 480.0, 520.0]):
            clock.now = T0 + step * 10_000
            poll(processor, clock, value)
        assert caplog.text.count("cannot keep the active alarms") == 1
        (tmp_path / "active-alarms.json.tmp").rmdir()
        clock.now += 10_000
        poll(processor, clock, 480.0)
    assert "kept in" in caplog.text and "again" in caplog.text
    assert json.loads(path.read_text())["active"] == []


async def test_at_start_the_pipeline_buffers_the_clears_and_announces_the_kept_alarms(tmp_path: Path) -> None:
    path, clock = tmp_path / "active-alarms.json", Clock()
    two_limits = catalogue(alarms=[{"level": "high", "limit": 500}, {"level": "high-high", "limit": 800}])
    poll(start(path, clock, two_limits), clock, 900.0)  # both raised
    clock.now = T0 + 60_000
    cat = catalogue(**HIGH)  # the high-high limit was taken out while the gateway was down
    dev = device(poll_interval=10)
    retained: dict[str, bytes] = {}
    buffer = await Buffer.open(tmp_path / "buffer.sqlite", 10_000_000)
    try:
        pipeline = Pipeline("gw", Topics("city", "gw"), {"plc": DeviceMapper(resolve_device(dev, cat))}, buffer,
                            start(path, clock, cat), on_active_alarms=retained.__setitem__)
        pipeline.announce_alarm_states()
        writer = asyncio.create_task(pipeline.run())
        await pipeline.drained()
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        (row,) = await buffer.fetch(10)
    finally:
        await buffer.close()
    assert (row.topic, row.priority) == ("city/gas/station-1/regulator-1/alarm", ALARM_PRIORITY)
    assert [(e["alarm"], e["event"]) for e in json.loads(row.body)["events"]] == [
        ("outlet-pressure-high-high", "cleared")]
    state = json.loads(retained["city/gas/station-1/regulator-1/active-alarms"])
    assert [(a["alarm"], a["since"]) for a in state["active"]] == [("outlet-pressure-high", T0)]
