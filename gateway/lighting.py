"""Street-lighting schedules run at the gateway, with or without an uplink (schedule rules: gateway/model/lighting.py).

For each circuit the controller knows what the schedule (or an override) wants now, and what the circuit
reads. It writes only when they differ, at these moments: a switching time of the schedule, the start and
end of an override, the first good reading after the gateway started, and the first good reading after the
device was unreachable (a reconnect). So it reconciles after a restart without switching a circuit that is
already right, and never fights an engineer who switched a circuit by hand in between. Writes go through
the command service (checks, read-back, audit), as a command named `schedule/<circuit>`.

While the clock is known not to be synchronised (#10) nothing is switched unless
`lighting.allow_unsynchronised_clock`; the circuit's state says it is held, and why. The state of each
circuit (mode, override end, what it should be now, what it reads, the next switching times of the coming
24 hours) is published retained on `<prefix>/gateway/<gateway>/lighting/<circuit>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.clock import ClockWatch
from gateway.commands.service import CommandService
from gateway.model.catalogue import IndicatorKind
from gateway.model.devices import DeviceBase
from gateway.model.lighting import CircuitSettings, LightingSettings, Schedule, SiteSettings
from gateway.model.readings import Quality, Reading, Value, now_ms
from gateway.model.resolved import ResolvedDevice
from gateway.topics import Topics

log = logging.getLogger(__name__)

# Seconds at most between two looks at the schedules (a switching time is waited for exactly).
_LOOK_EVERY = 60.0
# After a switching write failed, seconds before the next attempt.
_RETRY_AFTER = 30.0
_HORIZON_MS = 86_400_000  # the next switching times published: the coming 24 hours

Publish = Callable[[str, bytes], None]


def schedules(settings: LightingSettings, site: SiteSettings | None,
              devices: Sequence[ResolvedDevice[DeviceBase]]) -> list[Schedule]:
    """The schedule of every configured circuit (the loader checked devices, points and the site)."""
    if not settings.circuits or site is None:
        return []
    by_id = {d.id: d for d in devices}
    made = []
    for circuit in settings.circuits:
        point = next(p for p in by_id[circuit.device].points if p.name == circuit.point)
        made.append(Schedule(circuit, site, dimming=point.indicator.kind is not IndicatorKind.STATE))
    return made


@dataclass
class _Circuit:
    schedule: Schedule
    actual: Value = None  # what the point last read good
    reads_good: bool = False
    readings: int = 0  # good readings seen (a write's read-back is older than a reading that came after it)
    due: bool = True  # the circuit is to be made what it should be, at the next look
    desired: Value = None  # what it should be, at the last look
    override: Value = None
    override_until: int | None = None
    writing: bool = False
    retry_at: float = 0.0
    held: str | None = None
    last_result: dict[str, Any] = field(default_factory=dict)

    @property
    def settings(self) -> CircuitSettings:
        return self.schedule.circuit


class LightingController:
    def __init__(self, topics: Topics, settings: LightingSettings, made: Sequence[Schedule],
                 service: CommandService, clock: ClockWatch, publish: Publish,
                 wall_ms: Callable[[], int] = now_ms) -> None:
        self._topics = topics
        self._settings = settings
        self._service = service
        self._clock = clock
        self._publish = publish
        self._wall = wall_ms
        self._circuits = {s.circuit.id: _Circuit(s) for s in made}
        self._by_point = {(s.circuit.device, s.circuit.point): self._circuits[s.circuit.id] for s in made}
        self._wake = asyncio.Event()
        self._last_published: dict[str, bytes] = {}
        service.circuits = self

    # -- what the command path asks ------------------------------------------------------------------------

    def target(self, circuit: str) -> tuple[str, str] | None:
        found = self._circuits.get(circuit)
        return None if found is None else (found.settings.device, found.settings.point)

    def overridden(self, circuit: str, value: Value, until_ms: int, command_id: str) -> None:
        state = self._circuits[circuit]
        state.override, state.override_until, state.due = value, until_ms, False
        log.info("circuit %s overridden to %r until %s by command %s", circuit, value, _local(state, until_ms),
                 command_id)
        self.poke()

    def resume(self, circuit: str, command_id: str) -> None:
        state = self._circuits[circuit]
        state.override, state.override_until, state.due = None, None, True
        log.info("circuit %s back to its schedule (command %s)", circuit, command_id)
        self.poke()

    def observe(self, readings: Sequence[Reading]) -> None:
        """Every poll's readings: a circuit's first good reading (after start, or after it was unreachable)
        makes it due for reconciling."""
        for reading in readings:
            state = self._by_point.get((reading.device, reading.point))
            if state is None:
                continue
            good = reading.quality is Quality.GOOD
            if good and not state.reads_good:
                state.due = True
                self._wake.set()
            state.reads_good = good
            if good:
                state.actual = reading.value
                state.readings += 1

    def poke(self) -> None:
        """Look at the schedules now (the clock was moved, an override changed)."""
        self._wake.set()

    # -- running ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        await self._service.wait_ready()
        while True:
            self._wake.clear()
            now = self._wall()
            next_ms = min((self._look(state, now, loop.time()) for state in self._circuits.values()),
                          default=now + round(_LOOK_EVERY * 1000))
            delay = max(0.0, min(_LOOK_EVERY, (next_ms - self._wall()) / 1000))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):  # until the next switching time, or something changes
                    await self._wake.wait()

    def _look(self, state: _Circuit, now: int, monotonic: float) -> int:
        """Make the circuit what it should be if it is due; publish its state; when to look again (UTC ms)."""
        if state.override_until is not None and now >= state.override_until:
            log.info("circuit %s: override ended; back to its schedule", state.settings.id)
            state.override, state.override_until, state.due = None, None, True
        scheduled = state.schedule.value_at(now)
        desired = state.override if state.override_until is not None else scheduled
        if desired != state.desired:
            state.due = True  # a switching time passed, or an override began or ended
        state.desired = desired
        state.held = None
        if state.due and state.reads_good and not state.writing and monotonic >= state.retry_at:
            if _same(state.actual, desired):
                state.due = False
            elif self._clock.uncertain and not self._settings.allow_unsynchronised_clock:
                state.held = "clock-unsynchronised"
            else:
                self._switch(state, desired)
        self._announce(state, now)
        upcoming = state.schedule.events(now, now + _HORIZON_MS)
        candidates = [e.at_ms for e in upcoming[:1]]
        if state.override_until is not None:
            candidates.append(state.override_until)
        return min(candidates, default=now + _HORIZON_MS)

    def _switch(self, state: _Circuit, value: Value) -> None:
        circuit = state.settings
        state.writing = True
        log.info("circuit %s: %r -> %r (%s)", circuit.id, state.actual, value,
                 "override" if state.override_until is not None else "schedule")
        result = self._service.submit(circuit.device, circuit.point, value, f"schedule/{circuit.id}")
        seen = state.readings

        def finished(done: asyncio.Future[dict[str, Any]]) -> None:
            state.writing = False
            if done.cancelled():
                return
            entry = done.result()
            state.last_result = {k: entry.get(k) for k in ("id", "status", "reason", "confirmation", "finished")}
            if entry.get("status") == "done":
                if state.readings == seen:  # no poll since: the read-back is the newest word on the circuit
                    state.actual = entry.get("read_back", value)
                # Done only if what was written is still what is wanted (an override or a switching time may
                # have come while the write was under way).
                state.due = entry.get("confirmation") != "confirmed" or not _same(value, state.desired)
                if entry.get("confirmation") == "confirmed":
                    self._wake.set()
                    return
            else:
                log.warning("circuit %s could not be switched: %s (%s)", circuit.id, entry.get("reason"),
                            entry.get("message"))
                state.retry_at = asyncio.get_running_loop().time() + _RETRY_AFTER
            if state.due:
                state.retry_at = asyncio.get_running_loop().time() + _RETRY_AFTER
            self._wake.set()

        result.add_done_callback(finished)

    def _announce(self, state: _Circuit, now: int) -> None:
        circuit = state.settings
        upcoming = state.schedule.events(now, now + _HORIZON_MS)
        body = {
            "circuit": circuit.id, "device": circuit.device, "point": circuit.point,
            "mode": "override" if state.override_until is not None else "schedule",
            "override_until": state.override_until, "should_be": state.desired, "reads": state.actual,
            "held": state.held, "timezone": state.schedule.zone.key,
            "next": [{"at": e.at_ms, "local": _local(state, e.at_ms), "value": e.value, "event": e.what}
                     for e in upcoming],
            "last_switch": state.last_result or None,
        }
        encoded = json.dumps(body, separators=(",", ":")).encode()
        if self._last_published.get(circuit.id) != encoded:
            self._last_published[circuit.id] = encoded
            self._publish(self._topics.lighting(circuit.id), encoded)


def _same(actual: Value, desired: Value) -> bool:
    if isinstance(desired, bool) or isinstance(actual, bool):
        return actual is not None and bool(actual) == bool(desired)
    if isinstance(actual, int | float) and isinstance(desired, int | float):
        return abs(actual - desired) < 0.5  # a dimming level read back within half a percent
    return actual == desired


def _local(state: _Circuit, at_ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(at_ms / 1000, state.schedule.zone)
    return moment.isoformat(timespec="minutes")


def tonight(made: Sequence[Schedule], now: int) -> list[str]:
    """The switching times of the coming 24 hours of every circuit, one line each (`municipal-gateway schedule`)."""
    lines = []
    for schedule in made:
        circuit = schedule.circuit
        value = schedule.value_at(now)
        lines.append(f"circuit {circuit.id} ({circuit.device}/{circuit.point}, {schedule.zone.key}): now "
                     f"{_shown(value)}")
        events = schedule.events(now, now + _HORIZON_MS)
        for event in events:
            moment = datetime.datetime.fromtimestamp(event.at_ms / 1000, schedule.zone)
            lines.append(f"  {moment:%Y-%m-%d %H:%M}  {event.what:<5}  -> {_shown(event.value)}")
        if not events:
            lines.append("  no switching in the coming 24 hours")
    return lines


def _shown(value: Value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g} %" if isinstance(value, float | int) else str(value)
