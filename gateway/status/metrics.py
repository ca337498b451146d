"""/metrics: the snapshot in the Prometheus text exposition format (version 0.0.4).

Written here rather than with prometheus_client: every figure already sits in the snapshot, so the
library's metric objects and registry would only hold a second copy of them; what it would do for us is
the format's few rules (a HELP and a TYPE line before each family's samples, `_total` counters, escaped
HELP text and label values), which `_Exposition` keeps. The tests parse the output with prometheus_client's
own parser. Process figures use the names every Prometheus client library uses (process_*).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from gateway.status.snapshot import Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "municipal_gateway_"
DEVICE_STATES = ("starting", "online", "degraded", "failing")
# Protocol counters with a family of their own; the others go to device_protocol_events_total{counter=...}.
_OWN_FAMILY = {"exception_replies", "unreadable_points"}

Labels = Mapping[str, str]
Sample = tuple[Labels, float]


class _Exposition:
    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        """One metric family: `name` without the prefix; a counter's name ends in _total."""
        full = PREFIX + name if not name.startswith("process_") else name
        self._lines.append(f"# HELP {full} {_escape_help(help_text)}")
        self._lines.append(f"# TYPE {full} {kind}")
        for labels, value in samples:
            self._lines.append(f"{full}{_labels(labels)} {_number(value)}")

    def summary(self, name: str, help_text: str, samples: Iterable[tuple[Labels, float, int]]) -> None:
        """A summary without quantiles: `<name>_sum` and `<name>_count` per label set."""
        full = PREFIX + name
        self._lines.append(f"# HELP {full} {_escape_help(help_text)}")
        self._lines.append(f"# TYPE {full} summary")
        for labels, total, count in samples:
            self._lines.append(f"{full}_sum{_labels(labels)} {_number(total)}")
            self._lines.append(f"{full}_count{_labels(labels)} {count}")

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for value in labels.values())
    return "{" + ",".join(f'{key}="{value}"' for key, value in zip(labels, escaped, strict=True)) + "}"


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def render(snapshot: Snapshot, listener: Mapping[str, int] | None = None) -> str:
    """The exposition of `snapshot`; `listener` adds the listener's own counters (clients, dropped updates)."""
    out = _Exposition()
    _gateway(out, snapshot)
    _uplink(out, snapshot)
    _buffer(out, snapshot)
    _devices(out, snapshot)
    _process(out, snapshot)
    if listener is not None:
        out.family("status_clients", "gauge", "Browsers following the status page's live updates now.",
                   [({}, listener.get("clients", 0))])
        out.family("status_updates_dropped_total", "counter",
                   "Live updates not sent to a browser that was still busy with the previous one.",
                   [({}, listener.get("dropped", 0))])
    return out.text()


def _gateway(out: _Exposition, s: Snapshot) -> None:
    out.family("info", "gauge", "The gateway's identity; always 1.",
               [({"gateway": s.gateway, "version": s.version}, 1)])
    out.family("readings_total", "counter", "Readings made from device values and derived indicators, good or not.",
               [({}, s.readings_total)])
    severities: dict[str, int] = {}
    for alarm in s.alarms:
        severities[alarm.severity] = severities.get(alarm.severity, 0) + 1
    out.family("alarms_active", "gauge", "Alarms raised now, by severity.",
               [({"severity": severity}, count) for severity, count in sorted(severities.items())])


def _uplink(out: _Exposition, s: Snapshot) -> None:
    u = s.uplink
    out.family("mqtt_connected", "gauge", "1 while connected to the MQTT broker.", [({}, u.connected)])
    out.family("mqtt_messages_published_total", "counter", "Buffered messages sent to the broker, re-sends included.",
               [({}, u.messages_published)])
    out.family("mqtt_bytes_published_total", "counter", "Payload bytes of those messages.", [({}, u.bytes_published)])
    out.family("mqtt_entries_published_total", "counter",
               "Readings, statistics and alarm events in those messages.", [({}, u.entries_published)])
    out.family("mqtt_messages_acked_total", "counter", "Buffered messages the broker acknowledged.",
               [({}, u.messages_acked)])
    out.family("mqtt_reconnects_total", "counter", "Connections to the broker after the first.", [({}, u.reconnects)])
    out.family("mqtt_connect_failures_total", "counter", "Connection attempts that failed or were refused.",
               [({}, u.connect_failures)])


def _buffer(out: _Exposition, s: Snapshot) -> None:
    b = s.buffer
    out.family("buffer_messages", "gauge", "Messages waiting in the buffer.", [({}, b.messages)])
    out.family("buffer_readings", "gauge", "Readings, statistics and alarm events waiting in the buffer.",
               [({}, b.readings)])
    out.family("buffer_bytes", "gauge", "Size of what waits in the buffer.", [({}, b.bytes)])
    out.family("buffer_max_bytes", "gauge", "The buffer's size cap.", [({}, b.max_bytes)])
    age = 0.0 if b.oldest_ms is None else max(0.0, (s.time_ms - b.oldest_ms) / 1000)
    out.family("buffer_oldest_age_seconds", "gauge", "Age of the oldest message waiting (0 when none waits).",
               [({}, age)])
    out.family("buffer_dropped_messages_total", "counter", "Messages the size cap dropped, ever.",
               [({}, b.dropped_messages)])
    out.family("buffer_dropped_readings_total", "counter", "Readings in the messages the size cap dropped, ever.",
               [({}, b.dropped_readings)])


def _devices(out: _Exposition, s: Snapshot) -> None:
    devices = s.devices
    out.family("device_state", "gauge", "1 for the state each device is in now, 0 for the others.",
               [({"device": d.id, "state": state}, d.state == state) for d in devices for state in DEVICE_STATES])
    out.family("device_polls_total", "counter", "Polls answered (for a pushing device: batches received).",
               [({"device": d.id}, d.polls) for d in devices])
    out.family("device_failures_total", "counter", "Polls or attempts that got no answer.",
               [({"device": d.id}, d.failures) for d in devices])
    out.family("device_exception_replies_total", "counter",
               "Replies refusing a request (a Modbus exception, an abnormal meter reply).",
               [({"device": d.id}, d.counters["exception_replies"]) for d in devices
                if "exception_replies" in d.counters])
    out.family("device_unreadable_points", "gauge", "Points the device refuses on their own, retried on back-off.",
               [({"device": d.id}, d.counters["unreadable_points"]) for d in devices
                if "unreadable_points" in d.counters])
    out.family("device_protocol_events_total", "counter",
               "The protocol's own counters: requests, timeouts, rejected frames, decode errors ...",
               [({"device": d.id, "counter": name}, count) for d in devices
                for name, count in sorted(d.counters.items()) if name not in _OWN_FAMILY])
    out.summary("device_poll_duration_seconds", "Time answered polls took.",
                [({"device": d.id}, d.poll_seconds, d.polls) for d in devices if d.last_poll_seconds is not None])


def _process(out: _Exposition, s: Snapshot) -> None:
    p = s.process
    out.family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", [({}, p.rss_bytes)])
    out.family("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.",
               [({}, p.cpu_seconds)])
    out.family("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.",
               [({}, p.started_ms / 1000)])
    out.family("event_loop_lag_seconds", "gauge", "How late the event loop ran its last timer.",
               [({}, p.loop_lag_seconds)])
    out.family("event_loop_lag_max_seconds", "gauge", "The worst event-loop lag of about the last minute.",
               [({}, p.loop_lag_max_seconds)])
