"""What a Modbus unit has shown of itself, kept per table, and how it is remembered across restarts.

A unit answers some reads and refuses others. From its answers the driver learns, per table:

- `readable`: address ranges a read has covered without complaint;
- `refused`: spans that hold at least one address the unit does not have (it answered exception 02 to a
  read of the span). Any request covering a whole refused span would be refused too, so the planner never
  makes one. A span is trimmed at both ends by what is known readable (the bad address must lie in what
  is left), which is what lets two readable blocks be told apart from the gap between them;
- a size limit: the largest request answered and the smallest refused with exception 03 or 04 that was
  larger. The limit used is the largest answered size once the two meet; until then one poll at a time
  tries the size halfway between, so a meter that takes at most 80 registers ends at exactly 80;
- `unreadable`: points that are refused even alone (02), each retried on its own back-off.

Everything here is pure except `PlanMemory`, which keeps one unit's knowledge in a JSON file of the
state directory, stamped with a hash of the configuration it was learnt for: a changed configuration
starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.modbus.tables import Table

log = logging.getLogger(__name__)

Span = tuple[int, int]  # first and last address, inclusive
PointKey = tuple[Table, int, int]  # table, first address, size: what a point reads, whoever owns it

_FORMAT = 1


@dataclass
class TableKnowledge:
    readable: list[Span] = field(default_factory=list)  # sorted, merged
    refused: list[Span] = field(default_factory=list)
    largest_answered: int = 0  # registers (or bits) of the largest request answered
    smallest_refused: int | None = None  # the smallest larger request refused with 03/04

    # -- what is known ---------------------------------------------------------------------------------

    def is_readable(self, start: int, end: int) -> bool:
        return any(low <= start and end <= high for low, high in self.readable)

    def certainly_refused(self, start: int, end: int) -> bool:
        """Would a read of `start`-`end` be refused? (It covers a whole span known to hold a bad address.)"""
        return any(start <= low and high <= end for low, high in self.refused)

    def limit(self, configured: int, floor: int) -> int:
        """The request size to plan with: the configured one until a size was refused, then the largest
        answered size, or (while a larger one may still work) the size halfway to the smallest refused."""
        if self.smallest_refused is None:
            return configured
        low, high = self.largest_answered, self.smallest_refused
        size = (low + high) // 2 if high - low > 1 else low
        return max(floor, min(configured, size))

    @property
    def size_settled(self) -> bool:
        return self.smallest_refused is None or self.smallest_refused - self.largest_answered <= 1

    # -- learning --------------------------------------------------------------------------------------

    def answered(self, start: int, end: int) -> bool:
        """A read of `start`-`end` was answered. True when that taught something new."""
        changed = False
        if not self.is_readable(start, end):
            self.readable = _merged([*self.readable, (start, end)])
            changed = True
        size = end - start + 1
        if size > self.largest_answered:
            self.largest_answered = size
            changed = True
        if self.smallest_refused is not None and self.smallest_refused <= self.largest_answered:
            self.smallest_refused = None  # that refusal was not about size (or the unit changed)
            changed = True
        refused = [span for span in (self._trimmed(*span) for span in self.refused) if span is not None]
        if refused != self.refused:
            self.refused = refused
            changed = True
        return changed

    def refused_address(self, start: int, end: int) -> bool:
        """A read of `start`-`end` was refused with exception 02 (or one point alone with 03/04). True when
        that taught something new."""
        if self.is_readable(start, end):
            # Read before, refused now: the unit's map changed. What was known of this span no longer holds.
            self.readable = _subtract(self.readable, start, end)
        span = self._trimmed(start, end) or (start, end)
        if self.certainly_refused(*span):
            return False  # implied by a tighter span already known
        self.refused = [known for known in self.refused if not (span[0] <= known[0] and known[1] <= span[1])
                        and not (known[0] <= span[0] and span[1] <= known[1])] + [span]
        self.refused.sort()
        return True

    def refused_size(self, count: int) -> bool:
        """A read of `count` registers (or bits) was refused with exception 03 or 04. True when that is taken
        for the unit's size limit (it is larger than anything answered), False when size cannot be the cause."""
        if count <= self.largest_answered:
            return False
        if self.smallest_refused is None or count < self.smallest_refused:
            self.smallest_refused = count
        return True

    def _trimmed(self, start: int, end: int) -> Span | None:
        """`start`-`end` without its known-readable ends; None when all of it is known readable."""
        while start <= end and self.is_readable(start, start):
            start = next(high for low, high in self.readable if low <= start <= high) + 1
        while end >= start and self.is_readable(end, end):
            end = next(low for low, high in self.readable if low <= end <= high) - 1
        return (start, end) if start <= end else None


@dataclass
class Unreadable:
    """A point refused even alone: how often, and when to try it again (monotonic seconds)."""

    failures: int
    retry_at: float


@dataclass
class UnitKnowledge:
    tables: dict[Table, TableKnowledge] = field(default_factory=dict)
    unreadable: dict[PointKey, Unreadable] = field(default_factory=dict)

    def table(self, table: Table) -> TableKnowledge:
        return self.tables.setdefault(table, TableKnowledge())

    def to_json(self) -> dict[str, Any]:
        return {
            "tables": {table.value: {"readable": known.readable, "refused": known.refused,
                                     "largest_answered": known.largest_answered,
                                     "smallest_refused": known.smallest_refused}
                       for table, known in self.tables.items()},
            "unreadable": [{"table": key[0].value, "address": key[1], "size": key[2], "failures": bad.failures}
                           for key, bad in self.unreadable.items()],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], retry_at: Callable[[int], float]) -> UnitKnowledge:
        """Raises KeyError, TypeError or ValueError for a document that is not one of ours.
        `retry_at(failures)` tells when an unreadable point loaded from the file is tried again."""
        knowledge = cls()
        for name, known in data["tables"].items():
            knowledge.tables[Table(name)] = TableKnowledge(
                [_span(s) for s in known["readable"]], [_span(s) for s in known["refused"]],
                int(known["largest_answered"]),
                None if known["smallest_refused"] is None else int(known["smallest_refused"]))
        for bad in data["unreadable"]:
            failures = int(bad["failures"])
            key = (Table(bad["table"]), int(bad["address"]), int(bad["size"]))
            knowledge.unreadable[key] = Unreadable(failures, retry_at(failures))
        return knowledge


def _span(raw: Any) -> Span:
    low, high = (int(v) for v in raw)
    if low > high:
        raise ValueError(f"span {low}-{high} is reversed")
    return low, high


def _merged(spans: Iterable[Span]) -> list[Span]:
    merged: list[Span] = []
    for low, high in sorted(spans):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


def _subtract(spans: Iterable[Span], start: int, end: int) -> list[Span]:
    kept: list[Span] = []
    for low, high in spans:
        if high < start or end < low:
            kept.append((low, high))
            continue
        if low < start:
            kept.append((low, start - 1))
        if end < high:
            kept.append((end + 1, high))
    return kept


def config_hash(facts: object) -> str:
    """A stable hash of what a plan depends on (points' addresses and sizes, limits, gaps, never_read)."""
    text = json.dumps(facts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class PlanMemory:
    """One unit's knowledge in `<state_dir>/modbus/<link>-unit-<id>.json`, valid for one configuration hash.

    Failing to read or write the file never stops polling: the unit is then learnt again, and the
    problem is logged once (`municipal-gateway read` run as another user cannot read the daemon's files).
    """

    def __init__(self, path: Path, config: str) -> None:
        self.path = path
        self.config = config
        self._warned = False

    @classmethod
    def for_unit(cls, state_dir: Path, link: str, unit: int, config: str) -> PlanMemory:
        safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in link).strip("_")
        return cls(state_dir / "modbus" / f"{safe}-unit-{unit}.json", config)

    def load(self, retry_at: Callable[[int], float]) -> UnitKnowledge | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            self._warn(f"cannot read what was learnt of this unit from {self.path} ({exc}); learning it again")
            return None
        if not isinstance(data, dict) or data.get("format") != _FORMAT or data.get("config") != self.config:
            log.info("%s was learnt for another configuration; learning the unit again", self.path)
            return None
        try:
            return UnitKnowledge.from_json(data, retry_at)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self._warn(f"{self.path} is damaged ({exc!r}); learning the unit again")
            return None

    def save(self, knowledge: UnitKnowledge) -> None:
        document = {"format": _FORMAT, "config": self.config, **knowledge.to_json()}
        temporary = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(document, indent=1), encoding="utf-8")
            os.replace(temporary, self.path)  # a power cut leaves the old file or the new one, never half
        except OSError as exc:
            self._warn(f"cannot keep what was learnt of this unit in {self.path} ({exc}); it is learnt again "
                       "after a restart")

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("%s", message)
