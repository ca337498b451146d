"""Alarms: limits and states per indicator, and supervision of each device.

A threshold alarm (high-high, high, low, low-low) is raised when the value reaches
its limit (>= for high, <= for low) and cleared only once the value is back past
the limit by the hysteresis (< limit - hysteresis for high, > limit + hysteresis for
low), so a value hovering at the limit does not chatter. A state alarm is raised
while the value equals its alarm state (a methane alarm contact, a door switch).

delay_on: the raise condition must hold continuously that long before the alarm is
raised; delay_off likewise before it clears. The condition is re-checked on every
reading and on every clock tick, with the last value taken to hold in between.
A bad-quality reading says nothing about the process: it leaves the alarm as it
is and restarts any pending delay (communication loss is its own alarm).

Per device: `communication-loss` when every attempt to reach it has failed for a
while, and `stale-data` when no good value has come from it for a while: a device
that answers with faults or out-of-range values only, one that does not answer at
all, or (when configured) a subscription whose session lives on while its server's
data is frozen. A failed poll is not a value, so it never makes a device fresh.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gateway.model.devices import DeviceBase
from gateway.model.readings import AssetRef, Value
from gateway.model.rules import AlarmLevel, AlarmRule, Severity

RAISED = "raised"
CLEARED = "cleared"


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    asset: AssetRef
    alarm: str
    event: str  # RAISED or CLEARED
    level: str  # an AlarmLevel, or communication-loss / stale-data
    severity: Severity
    time_ms: int
    device: str
    indicator: str | None = None
    value: Value = None
    limit: float | None = None
    unit: str | None = None
    message: str = ""

    def as_payload(self, seq: int | None = None) -> dict[str, object]:
        body: dict[str, object] = {} if seq is None else {"seq": seq}
        body.update({"alarm": self.alarm, "event": self.event, "level": self.level,
                     "severity": self.severity.value, "ts": self.time_ms, "device": self.device})
        if self.indicator is not None:
            body.update({"indicator": self.indicator, "value": self.value, "unit": self.unit})
        if self.limit is not None:
            body["limit"] = self.limit
        if self.message:
            body["message"] = self.message
        return body


class ThresholdAlarm:
    """One alarm rule applied to one series."""

    __slots__ = ("_delay_off_ms", "_delay_on_ms", "_pending_since", "_template", "_value", "active", "rule")

    def __init__(self, rule: AlarmRule, asset: AssetRef, device: str, indicator: str, unit: str) -> None:
        self.rule = rule
        self.active = False
        self._delay_on_ms = round(rule.delay_on * 1000)
        self._delay_off_ms = round(rule.delay_off * 1000)
        self._pending_since: int | None = None  # when the value first asked for the other state
        self._value: Value = None  # the last good value; None after a bad reading
        self._template = AlarmEvent(asset, rule.alarm_id(indicator), RAISED, rule.level.value,
                                    rule.effective_severity, 0, device, indicator, None, rule.limit, unit,
                                    rule.message)

    def shift(self, delta_ms: int) -> None:
        """The clock stepped: a pending delay keeps the time it has run."""
        if self._pending_since is not None:
            self._pending_since += delta_ms

    @property
    def alarm_id(self) -> str:
        return self._template.alarm

    def restore(self) -> None:
        """Take the alarm as raised before a restart: the next reading keeps it (no new event) or clears it."""
        self.active = True

    def update(self, value: Value, good: bool, now_ms: int) -> AlarmEvent | None:
        if not good or value is None:
            self._value, self._pending_since = None, None
            return None
        self._value = value
        return self._evaluate(now_ms)

    def tick(self, now_ms: int) -> AlarmEvent | None:
        """Raise or clear an alarm whose delay has run out since the last reading."""
        if self._pending_since is None or self._value is None:
            return None
        return self._evaluate(now_ms)

    def _evaluate(self, now_ms: int) -> AlarmEvent | None:
        wanted = self._wants_active(self._value)
        if wanted is None or wanted == self.active:
            self._pending_since = None
            return None
        if self._pending_since is None:
            self._pending_since = now_ms
        if now_ms - self._pending_since < (self._delay_on_ms if wanted else self._delay_off_ms):
            return None
        self.active, self._pending_since = wanted, None
        return _replace(self._template, RAISED if wanted else CLEARED, now_ms, self._value)

    def _wants_active(self, value: Value) -> bool | None:
        """The state the value asks for, given the current state (hysteresis); None when it cannot tell."""
        rule = self.rule
        if rule.level is AlarmLevel.STATE:
            return value == rule.alarm_state
        if isinstance(value, bool) or not isinstance(value, int | float) or rule.limit is None:
            return None
        if rule.level.is_high:
            return value >= rule.limit if not self.active else value >= rule.limit - rule.hysteresis
        return value <= rule.limit if not self.active else value <= rule.limit + rule.hysteresis


def _replace(template: AlarmEvent, event: str, time_ms: int, value: Value) -> AlarmEvent:
    return AlarmEvent(template.asset, template.alarm, event, template.level, template.severity, time_ms,
                      template.device, template.indicator, value, template.limit, template.unit, template.message)


@dataclass(frozen=True, slots=True)
class Supervision:
    """How long a device may fail, or deliver no good value, before it is an alarm (seconds; None: never)."""

    communication_loss: float | None
    stale_after: float | None
    severity: Severity = Severity.MAJOR

    @classmethod
    def for_poll_interval(cls, poll_interval: float) -> Supervision:
        # Three failed polls, but not less than a minute: short outages are what the buffer is for.
        return cls(communication_loss=max(60.0, 3 * poll_interval), stale_after=max(300.0, 10 * poll_interval))

    @classmethod
    def for_device(cls, device: DeviceBase) -> Supervision:
        """The device's `supervision:` over the defaults.

        A device that pushes sends a value only when it changes, and a station whose values all hold (valves
        shut, a full tank at night) is rightly silent for hours: a default stale-data alarm would fire on every
        quiet night and teach the control room to ignore it. So it is off unless configured, by someone who
        knows that the device's signals always move (a noisy analogue value); a dead server or session is
        caught by the driver's keep-alive as communication-loss.
        """
        default = cls.for_poll_interval(device.poll_interval)
        if device.pushes:
            default = dataclasses.replace(default, stale_after=None)
        settings = device.supervision
        if settings is None:
            return default
        return cls(
            settings.communication_loss if settings.given("communication_loss") else default.communication_loss,
            settings.stale_after if settings.given("stale_after") else default.stale_after,
            default.severity)


class DeviceSupervisor:
    COMMUNICATION_LOSS = "communication-loss"
    STALE = "stale-data"

    def __init__(self, asset: AssetRef, device: str, supervision: Supervision, now_ms: int) -> None:
        self._asset = asset
        self._device = device
        self._loss_ms = None if supervision.communication_loss is None else round(supervision.communication_loss * 1000)
        self._stale_ms = None if supervision.stale_after is None else round(supervision.stale_after * 1000)
        self._severity = supervision.severity
        self._good_ms = now_ms  # when the last good value came; a device that never gives one goes stale from start
        self._failing_since: int | None = None
        self._reason = ""  # why the last attempt failed
        self.lost = False
        self.stale = False

    def alarm_ids(self) -> list[str]:
        """The ids of the alarms this supervisor can raise (one switched off is not among them)."""
        levels = [(self.COMMUNICATION_LOSS, self._loss_ms), (self.STALE, self._stale_ms)]
        return [self._alarm_id(level) for level, after_ms in levels if after_ms is not None]

    def restore(self, alarm_id: str) -> None:
        """Take an alarm as raised before a restart: the next answer (or good value, for stale-data) clears it."""
        if alarm_id == self._alarm_id(self.COMMUNICATION_LOSS):
            self.lost = True
        elif alarm_id == self._alarm_id(self.STALE):
            self.stale = True

    def answered(self, now_ms: int, any_good: bool) -> list[AlarmEvent]:
        """The device answered; `any_good`: with at least one good value."""
        self._failing_since = None
        events = []
        if self.lost:
            self.lost = False
            events.append(self._event(self.COMMUNICATION_LOSS, CLEARED, now_ms, ""))
        if any_good:
            self._good_ms = now_ms
            if self.stale:
                self.stale = False
                events.append(self._event(self.STALE, CLEARED, now_ms, ""))
        return events

    def shift(self, delta_ms: int) -> None:
        """The clock stepped: the last good value and the first failure happened the same time ago as before
        (a step forwards of hours must not make every device stale at once)."""
        self._good_ms += delta_ms
        if self._failing_since is not None:
            self._failing_since += delta_ms

    def failed(self, reason: str, now_ms: int) -> list[AlarmEvent]:
        self._reason = reason
        if self._failing_since is None:
            self._failing_since = now_ms
        return self._check_loss(now_ms)

    def tick(self, now_ms: int) -> list[AlarmEvent]:
        events = self._check_loss(now_ms)
        if not self.stale and self._stale_ms is not None and now_ms - self._good_ms >= self._stale_ms:
            self.stale = True
            events.append(self._event(self.STALE, RAISED, now_ms,
                                      f"no good value for {(now_ms - self._good_ms) / 1000:.0f} s"))
        return events

    def _check_loss(self, now_ms: int) -> list[AlarmEvent]:
        if (self.lost or self._failing_since is None or self._loss_ms is None
                or now_ms - self._failing_since < self._loss_ms):
            return []
        self.lost = True
        detail = f"no answer for {(now_ms - self._failing_since) / 1000:.0f} s" + (
            f" ({self._reason})" if self._reason else "")
        return [self._event(self.COMMUNICATION_LOSS, RAISED, now_ms, detail)]

    def _alarm_id(self, level: str) -> str:
        return f"{self._device}-{level}"

    def _event(self, level: str, event: str, now_ms: int, message: str) -> AlarmEvent:
        return AlarmEvent(self._asset, self._alarm_id(level), event, level, self._severity, now_ms,
                          self._device, message=message)
