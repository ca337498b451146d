"""The gateway's own alarms: conditions of the box rather than of an asset (its clock is not synchronised, its
buffer is full). Published like an asset's alarms, on the gateway's topics: events on `.../alarm` with alarm
priority through the buffer, the active set retained on `.../active-alarms`.

Each alarm is raised once when its condition starts and cleared once when it ends. The active set is kept in
a small file in the state directory, so a condition that lasts across a restart is neither raised again nor
lost (as the asset alarms are, gateway/processing/memory.py).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from gateway.model.rules import Severity
from gateway.statedir import replace_file

log = logging.getLogger(__name__)

RAISED = "raised"
CLEARED = "cleared"
OCCURRED = "occurred"  # a moment, not a condition: told once, never active

CLOCK_UNSYNCHRONISED = "clock-unsynchronised"
CLOCK_JUMPED = "clock-jumped"  # OCCURRED
BUFFER_FULL = "buffer-full"

SEVERITIES = {CLOCK_UNSYNCHRONISED: Severity.WARNING, CLOCK_JUMPED: Severity.WARNING, BUFFER_FULL: Severity.MAJOR}


@dataclass(frozen=True, slots=True)
class GatewayAlarmEvent:
    alarm: str
    event: str  # RAISED or CLEARED
    severity: Severity
    time_ms: int
    message: str = ""

    def as_payload(self, seq: int | None = None) -> dict[str, object]:
        body: dict[str, object] = {} if seq is None else {"seq": seq}
        body.update({"alarm": self.alarm, "event": self.event, "severity": self.severity.value, "ts": self.time_ms})
        if self.message:
            body["message"] = self.message
        return body


class GatewayAlarms:
    """The active set of the gateway's own alarms, kept in `path` (None: not kept)."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._active: dict[str, GatewayAlarmEvent] = {event.alarm: event for event in self._recall()}

    def active(self) -> list[GatewayAlarmEvent]:
        """The alarms raised now, each as the event that raised it, oldest first."""
        return sorted(self._active.values(), key=lambda event: event.time_ms)

    @staticmethod
    def occurred(alarm: str, now_ms: int, message: str) -> GatewayAlarmEvent:
        """The event for something that happened once (a jump of the clock)."""
        return GatewayAlarmEvent(alarm, OCCURRED, SEVERITIES[alarm], now_ms, message)

    def update(self, alarm: str, active: bool, now_ms: int, message: str = "") -> GatewayAlarmEvent | None:
        """The event when `alarm` changes to `active`; None when it already was so."""
        if active == (alarm in self._active):
            return None
        event = GatewayAlarmEvent(alarm, RAISED if active else CLEARED, SEVERITIES[alarm], now_ms, message)
        if active:
            self._active[alarm] = event
        else:
            del self._active[alarm]
        self._remember()
        return event

    def _recall(self) -> list[GatewayAlarmEvent]:
        if self._path is None:
            return []
        try:
            records = json.loads(self._path.read_text(encoding="utf-8"))["active"]
            return [GatewayAlarmEvent(str(r["alarm"]), RAISED, Severity(r["severity"]), int(r["since"]),
                                      str(r.get("message", ""))) for r in records if r["alarm"] in SEVERITIES]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot read the gateway's own active alarms kept in %s (%s); they are raised again "
                        "if their condition holds", self._path, exc)
            return []

    def _remember(self) -> None:
        if self._path is None:
            return
        records = [{"alarm": e.alarm, "severity": e.severity.value, "since": e.time_ms, "message": e.message}
                   for e in self.active()]
        try:
            replace_file(self._path, json.dumps({"active": records}, ensure_ascii=False))
        except OSError as exc:  # the alarms themselves go on; a restart would raise them again
            log.warning("cannot keep the gateway's own active alarms in %s (%s)", self._path, exc)
