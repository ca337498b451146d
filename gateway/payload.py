"""JSON payloads on the wire (documented in README; additive changes only).

A reading batch starts with the exact bytes `{"historical":false,` so the
publisher can flag a message that waited in the buffer across an outage
without decoding it again (`mark_historical`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway import __version__
from gateway.model.catalogue import Indicator
from gateway.model.readings import AssetRef, Reading
from gateway.model.resolved import ResolvedAsset
from gateway.model.rules import Processing

if TYPE_CHECKING:
    from gateway.buffer import Drop
    from gateway.gateway_alarms import GatewayAlarmEvent
    from gateway.processing import AlarmEvent, Statistics

LIVE_PREFIX = b'{"historical":false,'
HISTORICAL_PREFIX = b'{"historical":true,'

_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _entries_message(gateway_id: str, asset: AssetRef | None, key: str, entries: list[dict[str, object]],
                     time_uncertain: bool = False) -> bytes:
    """A buffered message: `{"historical":false,` first (see `mark_historical`), then `"time_uncertain":true`
    while the system clock is not synchronised (left out otherwise), the asset (for an asset's message) and
    the entries."""
    body: dict[str, object] = {"historical": False}
    if time_uncertain:
        body["time_uncertain"] = True
    body["gateway"] = gateway_id
    if asset is not None:
        body["asset"] = _asset(asset)
    body[key] = entries
    return _compact(body).encode()


def encode_batch(gateway_id: str, asset: AssetRef, readings: Sequence[Reading], first_seq: int,
                 time_uncertain: bool = False) -> bytes:
    """One message for the readings of one asset from one poll; seq numbers first_seq, first_seq+1, ..."""
    return _entries_message(gateway_id, asset, "readings",
                            [r.as_payload(first_seq + i) for i, r in enumerate(readings)], time_uncertain)


def mark_historical(body: bytes) -> bytes:
    """The same batch, flagged as sent late from the buffer."""
    if body.startswith(LIVE_PREFIX):
        return HISTORICAL_PREFIX + body[len(LIVE_PREFIX):]
    return body


def _asset(asset: AssetRef) -> dict[str, str]:
    return {"domain": asset.domain, "site": asset.site, "id": asset.asset}


def encode_statistics(gateway_id: str, asset: AssetRef, windows: Sequence[Statistics], first_seq: int,
                      time_uncertain: bool = False) -> bytes:
    """Closed windows (statistics or consumption) of one asset; seq numbers first_seq, first_seq+1, ..."""
    return _entries_message(gateway_id, asset, "windows",
                            [w.as_payload(first_seq + i) for i, w in enumerate(windows)], time_uncertain)


def encode_alarm_events(gateway_id: str, asset: AssetRef | None, events: Sequence[AlarmEvent | GatewayAlarmEvent],
                        first_seq: int, time_uncertain: bool = False) -> bytes:
    """Alarm events (raised, cleared) of one asset, or of the gateway itself (asset None), in the order they
    happened."""
    return _entries_message(gateway_id, asset, "events",
                            [e.as_payload(first_seq + i) for i, e in enumerate(events)], time_uncertain)


def encode_drops(gateway_id: str, drops: Sequence[Drop], now_ms: int) -> bytes:
    """What the buffer could not keep: ranges of seq numbers (readings, windows, alarm events) that will never
    arrive, so a consumer can tell this loss from a gap still to be filled. Adjacent ranges of one reason are
    given as one."""
    merged: list[list[int | str]] = []  # [first_seq, last_seq, count, reason, time]
    for drop in sorted(drops, key=lambda d: d.first_seq):
        if merged and merged[-1][3] == drop.reason and merged[-1][1] == drop.first_seq - 1:
            previous = merged[-1]
            previous[1:3] = [drop.last_seq, int(previous[2]) + drop.entries]
            previous[4] = max(int(previous[4]), drop.time_ms)
        else:
            merged.append([drop.first_seq, drop.last_seq, drop.entries, drop.reason, drop.time_ms])
    ranges = [dict(zip(("first_seq", "last_seq", "count", "reason", "time"), entry, strict=True))
              for entry in merged]
    return _compact({"gateway": gateway_id, "time": now_ms, "dropped": ranges}).encode()


def encode_active_alarms(gateway_id: str, asset: AssetRef | None, active: Sequence[AlarmEvent | GatewayAlarmEvent],
                         updated_ms: int) -> bytes:
    """Retained: the alarms of one asset (or of the gateway itself, asset None) raised now (an empty list when
    none)."""
    body: dict[str, object] = {"gateway": gateway_id}
    if asset is not None:
        body["asset"] = _asset(asset)
    body["active"] = [{**e.as_payload(), "since": e.time_ms} for e in active]
    body["updated"] = updated_ms
    return _compact(body).encode()


def describe_processing(indicator: Indicator, rules: Processing) -> dict[str, object]:
    """How a subscriber should read an indicator's messages: reporting rule, windows, counter, alarm limits."""
    reporting = rules.reporting
    return {
        # null: every reading is published; otherwise a held-back value is within `deadband` of the last one sent.
        "reporting": None if reporting is None else {
            "deadband": reporting.deadband, "deadband_percent": reporting.deadband_percent,
            "max_silence": reporting.max_silence, "min_interval": reporting.min_interval},
        "windows": list(rules.windows or ()),
        "counter": None if rules.counter is None else {"rollover_bits": rules.counter.rollover_bits,
                                                       "max_per_hour": rules.counter.max_per_hour},
        "alarms": [rule.describe(indicator.id) for rule in rules.alarms or ()],
    }


def encode_asset_description(gateway_id: str, asset: ResolvedAsset, updated_ms: int) -> bytes:
    """Retained self-description of one asset: what it is and every indicator it reports.

    A subscriber learns indicators, units, ranges, sources and processing rules from this message alone.
    """
    settings = asset.settings
    indicators = []
    for device in asset.devices:
        for point in device.points:
            indicators.append({**_describe_indicator(point.indicator, point.rules, point.valid_range),
                               "device": device.id, "point": point.name, "writable": point.config.writable})
    for derived in asset.derived:
        definition = derived.definition
        formula: object = (definition.expression if definition.night_minimum is None
                           else {"night_minimum": definition.night_minimum.model_dump()})
        indicators.append({**_describe_indicator(derived.indicator, derived.rules, derived.indicator.range),
                           "device": "gateway", "derived": formula, "writable": False})
    body = {
        "gateway": gateway_id,
        "asset": {
            "domain": settings.domain, "site": settings.site, "id": settings.id, "type": settings.type,
            "type_name": asset.type.name.model_dump() if asset.type else None, "name": settings.name,
        },
        "indicators": indicators,
        "updated": updated_ms,
        "version": __version__,
    }
    return _compact(body).encode()


def _describe_indicator(indicator: Indicator, rules: Processing,
                        valid_range: tuple[float, float] | None) -> dict[str, object]:
    """What a subscriber needs to read an indicator's values: meaning, unit, range and processing rules.

    `range` is the one the values are checked against (outside it a reading is bad, out-of-range): a point's
    own when it has one. The catalogue's follows as `catalogue_range` only when it is a different one.
    """
    body: dict[str, object] = {
        "id": indicator.id,
        "name": indicator.name.model_dump(),
        "kind": indicator.kind.value,
        "unit": indicator.unit,
        "unit_code": indicator.unit_code,
        "range": _listed(valid_range),
    }
    if valid_range != indicator.range:
        body["catalogue_range"] = _listed(indicator.range)
    body["quantified"] = indicator.quantified.value
    body.update(describe_processing(indicator, rules))
    return body


def _listed(bounds: tuple[float, float] | None) -> list[float] | None:
    return list(bounds) if bounds is not None else None


def encode_json(body: dict[str, object]) -> bytes:
    return _compact(body).encode()
