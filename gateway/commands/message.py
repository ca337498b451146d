"""The command and result payloads (JSON Schema in README), parsed without ever raising anything but Refused.

A command:

    {"id": "c-20261201-0042", "device": "ps01-plc", "point": "pressure_setpoint", "value": 420.0,
     "issued": 1764590000123, "max_age": 30, "source": "control-room/alice", "signature": "<hex>"}

A lighting override names a `circuit` instead of device and point, with a `duration` in seconds (the
circuit returns to its schedule after it), or the value "schedule" to return at once:

    {"id": "ovr-7", "circuit": "cabinet-3-a", "value": false, "duration": 3600, "issued": 1764590000123}

`issued` (UTC ms, the sender's clock) is required: a command's age is what keeps one queued in a broker
during an outage from acting when the link comes back. `max_age` (seconds) or `expires` (UTC ms) may narrow
the window; without them the configured default (30 s) applies. The signature, when configured, is
HMAC-SHA256 in hex over the command's canonical JSON without `signature` (keys sorted, no spaces, UTF-8).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from gateway.model.readings import Value
from gateway.model.writes import Refused

MAX_PAYLOAD = 4096  # bytes; a command is a few hundred
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_KEYS = {"id", "device", "point", "circuit", "duration", "value", "issued", "max_age", "expires", "source",
         "signature"}
MAX_OVERRIDE = 7 * 86_400  # seconds


@dataclass(frozen=True, slots=True)
class Command:
    id: str
    device: str
    point: str
    value: Value
    issued_ms: int
    max_age: float | None
    expires_ms: int | None
    source: str | None
    signature: str | None
    signed_bytes: bytes  # what the signature is over
    circuit: str | None = None  # a lighting override: the circuit (device and point are then its own)
    duration: float | None = None  # seconds the override lasts

    def describe(self) -> dict[str, Any]:
        """The command as the audit log and the result repeat it."""
        body: dict[str, Any] = {"id": self.id, "device": self.device, "point": self.point, "value": self.value,
                                "issued": self.issued_ms}
        if self.circuit is not None:
            body = {"id": self.id, "circuit": self.circuit, "value": self.value, "issued": self.issued_ms}
        for key, value in (("duration", self.duration), ("max_age", self.max_age), ("expires", self.expires_ms),
                           ("source", self.source)):
            if value is not None:
                body[key] = value
        return body


def command_id(payload: bytes) -> str | None:
    """The id of a payload, if one can be found at all (so even a malformed command's refusal names it)."""
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    found = body.get("id") if isinstance(body, dict) else None
    return found if isinstance(found, str) and _ID.match(found) else None


def parse_command(payload: bytes) -> Command:
    """The command in `payload`, or Refused("malformed", what is wrong)."""
    if len(payload) > MAX_PAYLOAD:
        raise Refused("malformed", f"a command is at most {MAX_PAYLOAD} bytes, this one is {len(payload)}")
    try:
        body = json.loads(payload, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise Refused("malformed", f"not JSON: {str(exc)[:100]}") from None
    if not isinstance(body, dict):
        raise Refused("malformed", "a command is a JSON object")
    unknown = sorted(set(body) - _KEYS)
    if unknown:
        raise Refused("malformed", f"unknown key {unknown[0][:40]!r}; expected: {', '.join(sorted(_KEYS))}")
    identifier = body.get("id")
    if not isinstance(identifier, str) or not _ID.match(identifier):
        raise Refused("malformed", "`id` must be 1-128 characters of A-Z a-z 0-9 _ . : -")
    circuit, duration = body.get("circuit"), body.get("duration")
    if circuit is not None:
        if not isinstance(circuit, str) or not circuit or "device" in body or "point" in body:
            raise Refused("malformed", "an override names a `circuit` (text) and no device or point")
        if body.get("value") != "schedule" and (isinstance(duration, bool) or not isinstance(duration, int | float)
                                                or not 0 < duration <= MAX_OVERRIDE):
            raise Refused("malformed", f"an override needs a `duration` in seconds, at most {MAX_OVERRIDE}")
        device, point = "", ""
    else:
        given_device, given_point = body.get("device"), body.get("point")
        if not isinstance(given_device, str) or not isinstance(given_point, str) or not given_device \
                or not given_point:
            raise Refused("malformed", "`device` and `point` must be given as text")
        device, point = given_device, given_point
        if duration is not None:
            raise Refused("malformed", "`duration` is for lighting overrides (with `circuit`)")
    if "value" not in body:
        raise Refused("malformed", "`value` is missing")
    value = body["value"]
    if value is None or not isinstance(value, bool | int | float | str):
        raise Refused("wrong-type", "`value` must be a number, true/false or text")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**64:
        raise Refused("wrong-type", "`value` is too large for any point")
    issued = _integer(body, "issued")
    if issued is None:
        raise Refused("malformed", "`issued` (UTC milliseconds when the command was sent) is missing")
    expires = _integer(body, "expires")
    max_age = body.get("max_age")
    if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, int | float)
                                or not math.isfinite(max_age) or max_age <= 0):
        raise Refused("malformed", "`max_age` must be a positive number of seconds")
    source = body.get("source")
    if source is not None and (not isinstance(source, str) or len(source) > 128):
        raise Refused("malformed", "`source` must be text of at most 128 characters")
    signature = body.get("signature")
    if signature is not None and not isinstance(signature, str):
        raise Refused("malformed", "`signature` must be hex text")
    unsigned = {k: v for k, v in body.items() if k != "signature"}
    return Command(identifier, device, point, value, issued, float(max_age) if max_age is not None else None,
                   expires, source, signature, canonical(unsigned), circuit,
                   float(duration) if isinstance(duration, int | float) and circuit is not None else None)


def canonical(body: dict[str, Any]) -> bytes:
    """The bytes a signature is computed over."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(body: dict[str, Any], secret: bytes) -> str:
    """The signature of a command (what a sender adds as `signature`)."""
    return hmac.new(secret, canonical({k: v for k, v in body.items() if k != "signature"}), hashlib.sha256).hexdigest()


def signature_ok(command: Command, secret: bytes) -> bool:
    if command.signature is None:
        return False
    expected = hmac.new(secret, command.signed_bytes, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, command.signature.lower())


def _integer(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise Refused("malformed", f"`{key}` must be UTC milliseconds (a whole number)")
    return value


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")
