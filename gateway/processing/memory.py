"""The active alarms, kept across restarts in one small JSON file in the state directory.

Each active alarm is kept as the event that raised it, so its `since` survives a restart. The file is
rewritten whenever the set of active alarms changes (rarely: alarms change state, readings do not), through
a temporary file that is synced and renamed over the old one, so a power cut leaves the old set or the new
one, never part of one. A file that cannot be read is reported and the gateway starts from fresh readings,
as it would without one; a file that cannot be written is reported once (the alarms themselves go on).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gateway.model.readings import AssetRef, Value
from gateway.model.rules import Severity
from gateway.processing.alarms import RAISED, AlarmEvent
from gateway.statedir import replace_file

log = logging.getLogger(__name__)

VERSION = 1


class AlarmMemory:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._failing = False  # the last write failed (reported once, until one succeeds again)

    def recall(self) -> list[AlarmEvent]:
        """The alarms active when the gateway last ran, each as the event that raised it."""
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            return [_event(record) for record in document["active"]]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot read the active alarms kept in %s (%s); alarms start again from fresh readings",
                        self.path, exc)
            return []

    def remember(self, active: Iterable[AlarmEvent]) -> None:
        """Replace what is kept by `active` (the raising events of the alarms active now)."""
        body = json.dumps({"version": VERSION, "active": [_record(event) for event in active]},
                          ensure_ascii=False, indent=1)
        try:
            replace_file(self.path, body)
        except OSError as exc:
            if not self._failing:
                log.error("cannot keep the active alarms in %s (%s); a restart now would forget them",
                          self.path, exc)
            self._failing = True
            return
        if self._failing:
            log.info("the active alarms are kept in %s again", self.path)
            self._failing = False


def _record(event: AlarmEvent) -> dict[str, object]:
    asset = event.asset
    return {"asset": {"domain": asset.domain, "site": asset.site, "id": asset.asset}, "alarm": event.alarm,
            "level": event.level, "severity": event.severity.value, "since": event.time_ms, "device": event.device,
            "indicator": event.indicator, "value": event.value, "limit": event.limit, "unit": event.unit,
            "message": event.message}


def _event(record: dict[str, Any]) -> AlarmEvent:
    """The raising event a record keeps; raises KeyError, TypeError or ValueError for one that is not sound."""
    asset = record["asset"]
    return AlarmEvent(
        AssetRef(_text(asset["domain"]), _text(asset["site"]), _text(asset["id"])), _text(record["alarm"]), RAISED,
        _text(record["level"]), Severity(record["severity"]), _integer(record["since"]), _text(record["device"]),
        _optional_text(record.get("indicator")), _value(record.get("value")), _optional_number(record.get("limit")),
        _optional_text(record.get("unit")), _text(record.get("message", "")))


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, found {value!r}")
    return value


def _optional_text(value: object) -> str | None:
    return None if value is None else _text(value)


def _integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected a whole number, found {value!r}")
    return value


def _optional_number(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, found {value!r}")
    return float(value)


def _value(value: object) -> Value:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"expected a reading's value, found {value!r}")
