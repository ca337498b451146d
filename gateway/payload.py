"""JSON payloads on the wire (documented in README; additive changes only).

A reading batch starts with the exact bytes `{"historical":false,` so the
publisher can flag a message that waited in the buffer across an outage
without decoding it again (`mark_historical`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from gateway import __version__
from gateway.catalogue import Catalogue
from gateway.config.models import DeviceBase
from gateway.model import AssetRef, Reading

LIVE_PREFIX = b'{"historical":false,'
HISTORICAL_PREFIX = b'{"historical":true,'

_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def encode_batch(gateway_id: str, asset: AssetRef, readings: Sequence[Reading], first_seq: int) -> bytes:
    """One message for the readings of one asset from one poll; seq numbers first_seq, first_seq+1, ..."""
    body = {
        "historical": False,
        "gateway": gateway_id,
        "asset": {"domain": asset.domain, "site": asset.site, "id": asset.asset},
        "readings": [r.as_payload(first_seq + i) for i, r in enumerate(readings)],
    }
    return _compact(body).encode()


def mark_historical(body: bytes) -> bytes:
    """The same batch, flagged as sent late from the buffer."""
    if body.startswith(LIVE_PREFIX):
        return HISTORICAL_PREFIX + body[len(LIVE_PREFIX):]
    return body


def encode_asset_description(gateway_id: str, devices: Sequence[DeviceBase], catalogue: Catalogue,
                             updated_ms: int) -> bytes:
    """Retained self-description of one asset: what it is and every indicator it reports.

    `devices` are all devices feeding the asset; a subscriber learns indicators,
    units, ranges and sources from this message alone.
    """
    asset = devices[0].asset
    asset_type = catalogue.asset_type(asset.type)
    indicators = []
    for device in devices:
        for point in device.points:
            indicator = catalogue.indicator(point.indicator)
            if indicator is None:
                continue
            indicators.append({
                "id": indicator.id,
                "name": indicator.name.model_dump(),
                "kind": indicator.kind.value,
                "unit": indicator.unit,
                "unit_code": indicator.unit_code,
                "range": list(indicator.range) if indicator.range else None,
                "quantified": indicator.quantified.value,
                "device": device.id,
                "point": point.name,
                "writable": point.writable,
            })
    body = {
        "gateway": gateway_id,
        "asset": {
            "domain": asset.domain, "site": asset.site, "id": asset.id, "type": asset.type,
            "type_name": asset_type.name.model_dump() if asset_type else None, "name": asset.name,
        },
        "indicators": indicators,
        "updated": updated_ms,
        "version": __version__,
    }
    return _compact(body).encode()


def encode_json(body: dict[str, object]) -> bytes:
    return _compact(body).encode()
