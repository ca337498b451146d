"""Report by exception: publish a reading only when it tells the subscriber something new.

A reading is published when
- its quality differs from the last published one (always, even inside min_interval);
- its value moved more than the deadband away from the last published value, and at
  least `min_interval` seconds have passed since the last publication;
- `max_silence` seconds have passed since the last publication (heartbeat), so a
  subscriber can tell a steady value from a dead gateway.
The deadband is the larger of the absolute band and the percentage of the last
published value, so a percentage band cannot shrink to nothing near zero.
Non-numeric values (states, strings) are published on every change.
Readings held back still feed statistics and alarms: this rule only filters what
goes to the data topic.
"""

from __future__ import annotations

from gateway.model.readings import Quality, Value
from gateway.model.rules import Reporting


class ReportByException:
    __slots__ = ("_absolute", "_interval_ms", "_last_quality", "_last_sent_ms", "_last_value", "_percent",
                 "_silence_ms", "_started")

    def __init__(self, rule: Reporting) -> None:
        self._absolute = rule.deadband
        self._percent = rule.deadband_percent / 100.0
        self._silence_ms = None if rule.max_silence is None else round(rule.max_silence * 1000)
        self._interval_ms = round(rule.min_interval * 1000)
        self._started = False
        self._last_value: Value = None
        self._last_quality = Quality.GOOD
        self._last_sent_ms = 0

    def deadband(self) -> float:
        """The band around the last published value inside which changes are held back."""
        last = self._last_value
        relative = abs(last) * self._percent if isinstance(last, int | float) and not isinstance(last, bool) else 0.0
        return max(self._absolute, relative)

    def should_publish(self, value: Value, quality: Quality, now_ms: int) -> bool:
        """Whether to publish this reading; remembers it as published when so."""
        if self._publish(value, quality, now_ms):
            self._started = True
            self._last_value, self._last_quality, self._last_sent_ms = value, quality, now_ms
            return True
        return False

    def _publish(self, value: Value, quality: Quality, now_ms: int) -> bool:
        if not self._started or quality is not self._last_quality:
            return True
        since = now_ms - self._last_sent_ms
        if self._silence_ms is not None and since >= self._silence_ms:
            return True
        if since < self._interval_ms:
            return False
        return self._moved(value)

    def _moved(self, value: Value) -> bool:
        last = self._last_value
        if (isinstance(value, bool) or isinstance(last, bool)
                or not isinstance(value, int | float) or not isinstance(last, int | float)):
            return value != last
        return abs(value - last) > self.deadband()

    def heartbeat_due(self, now_ms: int) -> bool:
        """Whether the last published value, still good or uncertain, is due to be published again."""
        return (self._started and self._silence_ms is not None and self._last_quality is not Quality.BAD
                and now_ms - self._last_sent_ms >= self._silence_ms)

    def shift(self, delta_ms: int) -> None:
        """The clock stepped: the last publication happened the same time ago as before."""
        self._last_sent_ms += delta_ms

    @property
    def last_published(self) -> tuple[Value, int] | None:
        """(value, time) of the last publication, or None before the first."""
        return (self._last_value, self._last_sent_ms) if self._started else None
