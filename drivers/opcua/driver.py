"""The OPC-UA driver: one session per endpoint, subscriptions or batched Reads per device.

On every open the driver starts a fresh session, looks the namespace URIs up
again (a restarted server may have renumbered them) and resolves each point to
a node id; a point that does not resolve is reported bad with the OPC-UA status
name as its reason, and the device's other points carry on.

Polling devices are answered by `read()`: one Read per poll (split by the
server's MaxNodesPerRead). Subscription devices push: `run()` subscribes each of
them on the new session and then waits on keep-alive monitoring, returning with
a DriverError as soon as the session or a subscription is found dead. The
gateway then reports those devices failing, opens the link again and `run()`
subscribes again, on a new session, so monitored items are never duplicated.
A subscription sends a value when it changes; that a steady value is still
current is processing's concern (heartbeats, windows hold the last value).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any

from drivers.opcua.client import (
    WRITE_REFUSALS,
    ConnectOptions,
    MonitorSpec,
    NodeId,
    NodeValue,
    OpcUaError,
    OpcUaLink,
    status_name,
    writable_value,
)
from drivers.opcua.config import Mode, OpcUaDevice, OpcUaPoint
from gateway.model import units
from gateway.model.driver import DriverError, LinkContext, Poller, Pusher, PushSink, WriteRefused
from gateway.model.readings import Quality, Reason, Sample, Value

log = logging.getLogger(__name__)



@dataclasses.dataclass
class DeviceCounters:
    reads: int = 0  # Read requests sent (one poll may need several)
    notifications: int = 0  # values pushed by the subscription
    decode_errors: int = 0  # values that were no usable scalar (null, array, structure, NaN)
    bad_statuses: int = 0  # values the server itself marked Bad
    uncertain_statuses: int = 0  # values the server marked Uncertain


class OpcUaDriver(Poller[OpcUaDevice], Pusher[OpcUaDevice]):
    def __init__(self, devices: Sequence[OpcUaDevice], context: LinkContext | None = None) -> None:
        super().__init__(devices, context)
        self._link: OpcUaLink | None = None
        self._nodes: dict[str, list[NodeId | str]] = {}  # per device: node id, or why there is none
        self._reported: dict[tuple[str, str], str] = {}  # (device, point) → last problem logged
        self._units_checked = False
        self._counters = {d.id: DeviceCounters() for d in self.devices}
        self._types: dict[str, Any] = {}  # node id text → its built-in type, read once per session

    # -- the link ---------------------------------------------------------------------------------------------

    async def open(self) -> None:
        await self.close()  # never two sessions, even if a caller opens twice
        try:
            await self._open_and_resolve()
        except OpcUaError as exc:
            await self.close()
            raise DriverError(str(exc), exc.reason) from exc
        except BaseException:
            # The gateway only closes links it saw open; whatever failed here, leave no session behind.
            await self.close()
            raise

    async def _open_and_resolve(self) -> None:
        self._link = await OpcUaLink.open(self.connect_options())
        for device in self.devices:
            self._nodes[device.id] = await self._link.resolve(device.points, device.namespace)
            self._log_unresolved(device)
        if not self._units_checked:
            self._units_checked = True
            try:
                await self._check_units()
            except OpcUaError as exc:  # a diagnostic only; the data matters more
                log.warning("could not compare engineering units: %s", exc)

    def connect_options(self) -> ConnectOptions:
        # Devices sharing a link share the session; the first one's connection settings apply.
        device = self.devices[0]
        security = device.security
        password = device.password.get_secret_value() if device.password is not None else None
        if device.password_file is not None:
            try:
                password = device.password_file.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise DriverError(f"cannot read password_file {device.password_file}: {exc}",
                                  "configuration") from exc
        return ConnectOptions(
            endpoint=device.endpoint, timeout=device.timeout, keepalive=device.keepalive,
            session_timeout=device.session_timeout, policy=security.policy, mode=security.mode,
            certificate=security.certificate, private_key=security.private_key,
            application_uri=security.application_uri, server_certificate=security.server_certificate,
            trust_dir=security.trust_dir, username=device.username, password=password,
            pki_dir=self.context.state_dir / "opcua")

    async def close(self) -> None:
        self._nodes.clear()
        self._types.clear()
        link, self._link = self._link, None
        if link is not None:
            await link.close()

    def _require_link(self) -> OpcUaLink:
        if self._link is None:
            raise DriverError("not connected")
        return self._link

    # -- polling ----------------------------------------------------------------------------------------------

    async def read(self, device: OpcUaDevice) -> list[Sample]:
        """One Read of every point (a subscription device too, e.g. for `municipal-gateway read`)."""
        link = self._require_link()
        try:
            link.check_alive()
        except OpcUaError as exc:
            raise DriverError(str(exc), exc.reason) from exc
        nodes = self._nodes[device.id]
        wanted = [n for n in nodes if not isinstance(n, str)]
        requests_before = link.read_requests
        try:
            values = await link.read(wanted, device.max_nodes_per_read or 0)
        except OpcUaError as exc:
            raise DriverError(str(exc), exc.reason) from exc
        finally:
            self._counters[device.id].reads += link.read_requests - requests_before
        by_node = iter(values)  # the link checked that the server answered one value per node
        return [self._sample(device.id, point, node if isinstance(node, str) else next(by_node))
                for point, node in zip(device.points, nodes, strict=True)]

    def _sample(self, device_id: str, point: OpcUaPoint, result: NodeValue | str) -> Sample:
        """A value from the server as a sample, counted."""
        if isinstance(result, str):  # never resolved: the status name says why
            return Sample(point.name, None, Quality.BAD, result)
        counters = self._counters[device_id]
        if result.reason == Reason.DECODE_ERROR.value:
            counters.decode_errors += 1
        elif result.quality is Quality.BAD:
            counters.bad_statuses += 1
        elif result.quality is Quality.UNCERTAIN:
            counters.uncertain_statuses += 1
        return Sample(point.name, result.value, result.quality, result.reason, result.source_time_ms)

    # -- writing ----------------------------------------------------------------------------------------------

    async def write(self, device: OpcUaDevice, point: str, value: Value) -> Value:
        """Write with the node's own DataType (read once per session), then Read the value back. A server's
        BadOutOfRange, BadTypeMismatch, BadNotWritable or BadUserAccessDenied is a refusal (WriteRefused with
        out-of-range, wrong-type, not-writable, access-denied); another Bad status fails the write."""
        target = next((p for p in device.points if p.name == point), None)
        if target is None:
            raise WriteRefused(f"device {device.id} has no point {point!r}")
        if not target.writable:
            raise WriteRefused(f"point {point!r} of device {device.id} is not declared writable")
        link = self._require_link()
        node = self._nodes[device.id][device.points.index(target)]
        if isinstance(node, str):
            raise WriteRefused(f"point {point!r} of device {device.id} has no node on the server ({node})")
        try:
            variant = self._types.get(str(node))
            if variant is None:
                variant = self._types[str(node)] = await link.data_type(node)
            try:
                typed = writable_value(value, variant)
            except ValueError as exc:
                raise WriteRefused(f"point {point!r}: {exc}", "not-representable") from None
            code = await link.write(node, typed, variant)
            if code != 0:
                name = status_name(code)
                if name in WRITE_REFUSALS:
                    raise WriteRefused(f"the server refused the write to {point!r}: {name}", WRITE_REFUSALS[name])
                raise DriverError(f"the server failed the write to {point!r}: {name}", name, link_lost=False)
            (back,) = await link.read([node])
        except OpcUaError as exc:
            raise DriverError(str(exc), exc.reason, link_lost=link.lost is not None) from exc
        if back.quality is Quality.BAD:
            raise DriverError(f"read-back of {point!r}: {back.reason}", back.reason or "read-back",
                              link_lost=False)
        return back.value

    def counters(self, device: OpcUaDevice) -> dict[str, int]:
        return dataclasses.asdict(self._counters[device.id])

    # -- subscriptions ----------------------------------------------------------------------------------------

    async def run(self, sink: PushSink[OpcUaDevice]) -> None:
        """Subscribe every subscription device on this session, then wait until keep-alive finds it dead."""
        link = self._require_link()
        for device in self.devices:
            if device.pushes:
                await self._subscribe(link, device, sink)
        lost = await link.wait_lost()
        raise DriverError(lost)

    async def _subscribe(self, link: OpcUaLink, device: OpcUaDevice, sink: PushSink[OpcUaDevice]) -> None:
        nodes = self._nodes[device.id]
        monitored = [(point, node) for point, node in zip(device.points, nodes, strict=True)
                     if not isinstance(node, str)]
        specs = [self._monitor_spec(device, point, node) for point, node in monitored]

        def on_values(changes: list[tuple[int, NodeValue]]) -> None:
            self._counters[device.id].notifications += len(changes)
            sink(device, [self._sample(device.id, monitored[index][0], value) for index, value in changes])

        try:
            statuses = await link.subscribe(specs, device.publishing_interval, on_values) if specs else []
        except OpcUaError as exc:
            raise DriverError(str(exc), exc.reason) from exc
        refused = {point.name: status for (point, _), status in zip(monitored, statuses, strict=True) if status}
        unresolved = {p.name: n for p, n in zip(device.points, nodes, strict=True) if isinstance(n, str)}
        for name, status in refused.items():
            self._report(device.id, name, f"the server refused to monitor it ({status})")
        problems = {**unresolved, **refused}
        if problems:
            sink(device, [Sample(name, None, Quality.BAD, status) for name, status in problems.items()])

    @staticmethod
    def _monitor_spec(device: OpcUaDevice, point: OpcUaPoint, node: NodeId) -> MonitorSpec:
        sampling = point.sampling_interval or device.sampling_interval or device.publishing_interval
        deadband = (point.deadband.type, point.deadband.value) if point.deadband is not None else None
        return MonitorSpec(node, sampling, point.queue_size or device.queue_size, deadband)

    # -- diagnostics --------------------------------------------------------------------------------------------

    def _log_unresolved(self, device: OpcUaDevice) -> None:
        for point, node in zip(device.points, self._nodes[device.id], strict=True):
            if isinstance(node, str):
                where = point.node or point.browse_path
                self._report(device.id, point.name, f"{where} does not resolve on the server ({node})")
            else:
                self._reported.pop((device.id, point.name), None)

    def _report(self, device_id: str, point: str, problem: str) -> None:
        """Log a point's problem once, not on every reconnect."""
        if self._reported.get((device_id, point)) != problem:
            self._reported[(device_id, point)] = problem
            log.warning("device %s point %s: %s; it reads bad until fixed", device_id, point, problem)

    async def _check_units(self) -> None:
        """Compare the servers' EngineeringUnits with the units the points are read in (once, at connect): a
        mismatch is a warning naming the fix, since the value would be taken in the wrong unit."""
        assert self._link is not None
        for device in self.devices:
            pairs = [(p, n) for p, n in zip(device.points, self._nodes[device.id], strict=True)
                     if not isinstance(n, str)]
            codes = await self._link.engineering_units([n for _, n in pairs])
            unknown = []
            for (point, _), code in zip(pairs, codes, strict=True):
                if code is None:
                    continue
                # A point without `unit` is taken in its indicator's unit: the server must agree with that one.
                taken_in = point.unit or self.context.unit_of(device.id, point.name)
                if taken_in is None:
                    unknown.append(f"{point.name} ({_symbol(code)})")
                    continue
                whose = "the configuration" if point.unit else f"indicator {point.indicator} in the catalogue"
                problem = unit_mismatch(code, taken_in, whose)
                if problem is not None:
                    log.warning("device %s point %s: %s", device.id, point.name, problem)
            if unknown:
                log.info("device %s: %d points declare no unit although the server gives one (%s%s); they are read "
                         "in their indicators' units: declare `unit:` to have them checked and converted",
                         device.id, len(unknown), ", ".join(unknown[:5]), " ..." if len(unknown) > 5 else "")

    def describe(self, device: OpcUaDevice) -> list[str]:
        count = len(device.points)
        if device.mode == Mode.SUBSCRIPTION:
            return [f"subscription at {device.endpoint}: {count} monitored items, publishing every "
                    f"{device.publishing_interval:g} s (no requests per poll; the server sends changes)"]
        limit = device.max_nodes_per_read
        calls = math.ceil(count / limit) if limit else 1
        return [f"Read {count} nodes at {device.endpoint} in {calls} call{'s' if calls != 1 else ''}"
                + ("" if limit else " (split further if the server's MaxNodesPerRead is lower)")]


def _symbol(code: str) -> str:
    known = _BY_CODE.get(code)
    return known.symbol if known is not None else f"UN/CEFACT {code}"


_BY_CODE = {unit.code: unit for unit in units.UNITS.values()}


def unit_mismatch(server_code: str, declared: str, whose: str = "the configuration") -> str | None:
    """What is wrong when the server gives its value in `server_code` (UN/CEFACT) and `whose` (the point's
    configuration, or its indicator) says the value is in `declared`; None when they agree."""
    ours = units.lookup(declared)
    if ours.code == server_code:
        return None
    theirs = _BY_CODE.get(server_code)
    if theirs is None:
        return (f"the server gives the unit as UN/CEFACT {server_code}, which the gateway does not know; "
                f"{whose} says {ours.symbol}: check that values are in {ours.symbol}")
    if theirs.quantity != ours.quantity:
        return (f"the server gives {theirs.symbol} ({theirs.quantity}), {whose} says {ours.symbol} "
                f"({ours.quantity}): not even the same quantity; is this the right node?")
    return (f"the server gives {theirs.symbol}, {whose} says {ours.symbol}: values would be taken in the "
            f"wrong unit; set `unit: {theirs.symbol}` on the point and the gateway converts them")
