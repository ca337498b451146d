# asyncua annotates its structures with NewTypes (Int32, String, Boolean) and re-exports names implicitly;
# checking plain ints and strings against those finds nothing but noise, so these two codes are off here only.
# mypy: disable-error-code="arg-type, attr-defined"
"""The only module that imports asyncua: a small typed adapter over its client (and a simulated server).

The driver talks to an OPC-UA server only through `OpcUaLink`: open a secured
session, resolve node addresses to node ids, read values, subscribe to data
changes, check liveness, browse, close. Values come back as `NodeValue`s with
quality already derived from the OPC-UA status code, so nothing outside this
module needs to know asyncua types.

asyncua's own auto-reconnect is off: the gateway's scheduler owns reconnects
(with back-off) and re-creates the subscriptions itself, which is the one way
to be sure no monitored item is ever created twice.

The simulated station server used by tests, the demo and the benchmark lives in simulators/opcua.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import logging
import math
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncua import Client, ua
from asyncua.crypto import cert_gen, security_policies, uacrypto
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from drivers.opcua.config import DeadbandType, NodeRef, OpcUaPoint, SecurityMode, SecurityPolicy
from gateway.model.readings import Quality, Reason, Value

log = logging.getLogger(__name__)

_POLICIES: dict[SecurityPolicy, type[security_policies.SecurityPolicy]] = {
    SecurityPolicy.NONE: security_policies.SecurityPolicyNone,
    SecurityPolicy.BASIC256SHA256: security_policies.SecurityPolicyBasic256Sha256,
    SecurityPolicy.AES128_SHA256_RSAOAEP: security_policies.SecurityPolicyAes128Sha256RsaOaep,
    SecurityPolicy.AES256_SHA256_RSAPSS: security_policies.SecurityPolicyAes256Sha256RsaPss,
}
_MODES: dict[SecurityMode, ua.MessageSecurityMode] = {
    SecurityMode.NONE: ua.MessageSecurityMode.None_,
    SecurityMode.SIGN: ua.MessageSecurityMode.Sign,
    SecurityMode.SIGN_AND_ENCRYPT: ua.MessageSecurityMode.SignAndEncrypt,
}
_AUTH_REJECTED = {"BadUserAccessDenied", "BadIdentityTokenRejected", "BadIdentityTokenInvalid"}
_CERT_REJECTED = {"BadCertificateUntrusted", "BadCertificateInvalid", "BadSecurityChecksFailed",
                  "BadCertificateUriInvalid", "BadCertificateTimeInvalid", "BadCertificateUseNotAllowed",
                  "BadCertificateRevoked"}
_FILTER_REJECTED = {"BadFilterNotAllowed", "BadMonitoredItemFilterUnsupported", "BadMonitoredItemFilterInvalid",
                    "BadDeadbandFilterInvalid"}
_MAX_ITEMS_PER_CALL = 1000


class OpcUaError(Exception):
    """A connect or service failure. `reason` goes onto the readings; the message is for the operator."""

    def __init__(self, message: str, reason: str = Reason.COMMUNICATION.value) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class NodeValue:
    value: Value
    quality: Quality
    reason: str | None
    source_time_ms: int | None


@dataclass(frozen=True)
class ConnectOptions:
    endpoint: str
    timeout: float
    keepalive: float
    session_timeout: float
    policy: SecurityPolicy = SecurityPolicy.NONE
    mode: SecurityMode = SecurityMode.NONE
    certificate: Path | None = None
    private_key: Path | None = None
    application_uri: str | None = None
    server_certificate: Path | None = None
    trust_dir: Path | None = None
    username: str | None = None
    password: str | None = None
    pki_dir: Path = Path("opcua")  # generated client certificate, rejected server certificates

    @property
    def app_uri(self) -> str:
        return self.application_uri or f"urn:{socket.gethostname()}:municipal-gateway"


@dataclass(frozen=True)
class MonitorSpec:
    """One monitored item: what to watch and how often the server should look at it."""

    node: ua.NodeId
    sampling_interval: float  # seconds
    queue_size: int
    deadband: tuple[DeadbandType, float] | None = None


NodeId = ua.NodeId
ValuesCallback = Callable[[list[tuple[int, NodeValue]]], None]


# -- values and status codes --------------------------------------------------------------------------------

def status_name(code: int) -> str:
    return ua.StatusCode(code).name


def quality_of(code: int) -> tuple[Quality, str | None]:
    """OPC-UA severity (the top two bits) → quality; the status name is the reason for anything but Good."""
    severity = (code >> 30) & 0b11
    if severity == 0:
        return Quality.GOOD, None
    return (Quality.UNCERTAIN if severity == 1 else Quality.BAD), status_name(code)


def _time_ms(moment: datetime.datetime | None) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1000)


def node_value(data: ua.DataValue) -> NodeValue:
    code = data.StatusCode.value if data.StatusCode is not None else 0
    quality, reason = quality_of(code)
    stamp = _time_ms(data.SourceTimestamp) or _time_ms(data.ServerTimestamp)
    raw = data.Value.Value if data.Value is not None else None
    value = _plain(raw)
    if value is _UNDECODABLE:
        return NodeValue(None, Quality.BAD, Reason.DECODE_ERROR.value, stamp)
    if quality is Quality.BAD:
        return NodeValue(None, quality, reason, stamp)
    if value is None:
        # A null Variant (a variable the PLC never wrote) is no value; only bad samples may lack one.
        return NodeValue(None, Quality.BAD, reason or Reason.DECODE_ERROR.value, stamp)
    return NodeValue(value, quality, reason, stamp)


_UNDECODABLE = object()


def _plain(raw: Any) -> Value | object:
    """A scalar the pipeline understands; arrays, structures and byte strings are not point values."""
    if raw is None or isinstance(raw, bool | int | str):
        return raw
    if isinstance(raw, float):
        return raw if math.isfinite(raw) else _UNDECODABLE
    if isinstance(raw, ua.LocalizedText):
        return raw.Text
    if isinstance(raw, datetime.datetime):
        return _time_ms(raw)
    return _UNDECODABLE


# OPC-UA built-in types a point value is written as: integers with their range, floats, booleans, text.
_INTEGER_RANGES = {
    ua.VariantType.SByte: (-2**7, 2**7 - 1), ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-2**15, 2**15 - 1), ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-2**31, 2**31 - 1), ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-2**63, 2**63 - 1), ua.VariantType.UInt64: (0, 2**64 - 1),
}
_FLOAT32_MAX = 3.4028234663852886e38
# A server's refusal of a write, as a command result's reason (README); other Bad codes fail the write.
WRITE_REFUSALS = {
    "BadOutOfRange": "out-of-range", "BadTypeMismatch": "wrong-type", "BadNotWritable": "not-writable",
    "BadUserAccessDenied": "access-denied", "BadWriteNotSupported": "not-writable",
}


def writable_value(value: Value, variant: ua.VariantType) -> Value:
    """`value` as the node's type takes it; ValueError naming why when it cannot (never rounded)."""
    name = variant.name
    if variant is ua.VariantType.Boolean:
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float) and value in (0, 1):
            return bool(value)
        raise ValueError(f"the node holds a Boolean, not {value!r}")
    if variant is ua.VariantType.String:
        if isinstance(value, str):
            return value
        raise ValueError(f"the node holds a String, not {value!r}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"the node holds a {name}, not {value!r}")
    if variant in _INTEGER_RANGES:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{value} is not a whole number, which the node's {name} must hold")
        low, high = _INTEGER_RANGES[variant]
        if not low <= int(value) <= high:
            raise ValueError(f"{value} is outside the {name} range {low}..{high}")
        return int(value)
    if variant is ua.VariantType.Float:
        if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
            raise ValueError(f"{value} does not fit a Float")
        return float(value)
    if variant is ua.VariantType.Double:
        return float(value)
    raise ValueError(f"the node's type {name} is not written by the gateway")


def unit_code(eu_unit_id: int) -> str:
    """The UN/CEFACT common code packed into EUInformation.UnitId (ASCII bytes as an integer)."""
    data = eu_unit_id.to_bytes(4, "big").lstrip(b"\0")
    return data.decode("ascii", errors="replace")


def pack_unit_code(code: str) -> int:
    return int.from_bytes(code.encode("ascii"), "big")


# -- the link -----------------------------------------------------------------------------------------------

class OpcUaLink:
    """One session with one server. Not reusable: after close(), open a new one."""

    def __init__(self, client: Client, options: ConnectOptions) -> None:
        self._client = client
        self._options = options
        self.lost: str | None = None  # why the session is gone, once it is
        self.namespaces: list[str] = []
        self.max_nodes_per_read = 0  # 0: no limit
        self.read_requests = 0  # Read service calls on this session
        self._subscriptions: list[_Subscription] = []
        self._lost_event = asyncio.Event()
        client.connection_lost_callback = self._connection_lost

    @classmethod
    async def open(cls, options: ConnectOptions) -> OpcUaLink:
        client = Client(options.endpoint, timeout=options.timeout, watchdog_intervall=options.keepalive)
        client.name = client.description = "municipal-gateway"
        client.application_uri = options.app_uri
        client.product_uri = "urn:municipal-gateway"
        client.session_timeout = int(options.session_timeout * 1000)
        if options.username is not None:
            client.set_user(options.username)
        if options.password is not None:
            client.set_password(options.password)
        try:
            if options.policy is not SecurityPolicy.NONE:
                await _secure(client, options)
            await client.connect(auto_reconnect=False)
        except OpcUaError:
            raise
        except (UaStatusCodeError, UaError, OSError, TimeoutError, ConnectionError) as exc:
            await _disconnect_quietly(client)
            raise _explain_connect_error(exc, options) from exc
        except BaseException:
            await _disconnect_quietly(client)  # a bug or a cancellation: still no session left open
            raise
        link = cls(client, options)
        try:
            await link._read_server_facts()
        except (UaError, OSError, TimeoutError, ConnectionError) as exc:
            await link.close()
            raise OpcUaError(f"connected to {options.endpoint} but could not read the namespace array: "
                             f"{exc!r}") from exc
        except BaseException:
            await link.close()
            raise
        return link

    async def _read_server_facts(self) -> None:
        values = await self._client.uaclient.read_attributes(
            [ua.NodeId(ua.ObjectIds.Server_NamespaceArray),
             ua.NodeId(ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead)],
            ua.AttributeIds.Value)
        _expect_results("Read", values, 2)
        self.namespaces = list(values[0].Value.Value or []) if values[0].Value is not None else []
        limit = values[1].Value.Value if values[1].Value is not None else None
        self.max_nodes_per_read = int(limit) if isinstance(limit, int) and limit > 0 else 0

    async def _connection_lost(self, exc: Exception) -> None:
        self.lost = f"connection to {self._options.endpoint} lost: {exc!r}"
        self._lost_event.set()

    def check_alive(self) -> None:
        """Raise OpcUaError when keep-alive found the server (or a subscription) gone."""
        if self.lost is None:
            for subscription in self._subscriptions:
                problem = subscription.problem()
                if problem is not None:
                    self.lost = problem
                    break
        if self.lost is not None:
            raise OpcUaError(self.lost)

    async def wait_lost(self) -> str:
        """Wait until the session is lost or keep-alive finds a subscription silent; return why.

        A dropped connection wakes this at once; a server that stops publishing is noticed by
        looking at the subscriptions once per keep-alive period.
        """
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._options.keepalive):
                    await self._lost_event.wait()
            try:
                self.check_alive()
            except OpcUaError as exc:
                return str(exc)

    async def close(self) -> None:
        self._subscriptions.clear()
        await _disconnect_quietly(self._client)

    # -- addressing -----------------------------------------------------------------------------------------

    def node_id(self, ref: NodeRef) -> ua.NodeId | str:
        """The node id for this session, or a status name when the namespace URI is unknown to the server."""
        index = 0
        if ref.namespace_uri is not None:
            if ref.namespace_uri not in self.namespaces:
                return "BadNodeIdUnknown"
            index = self.namespaces.index(ref.namespace_uri)
        kind = {"i": ua.NodeIdType.Numeric, "s": ua.NodeIdType.String, "g": ua.NodeIdType.Guid,
                "b": ua.NodeIdType.ByteString}[ref.kind]
        try:
            ident = _identifier(ref)
        except ValueError:  # NodeRef.parse rejects these; a NodeRef built some other way may still hold one
            return "BadNodeIdInvalid"
        return ua.NodeId(ident, index, kind)

    async def resolve(self, points: Sequence[OpcUaPoint], namespace: str | None) -> list[ua.NodeId | str]:
        """Each point's node id in this session, or the status name saying why it has none."""
        resolved: list[ua.NodeId | str] = []
        by_path: list[tuple[int, ua.BrowsePath]] = []
        for index, point in enumerate(points):
            ref = point.node_ref
            if ref is not None:
                resolved.append(self.node_id(ref))
                continue
            assert point.browse_path is not None
            path = self._relative_path(point.browse_path, namespace)
            resolved.append("BadBrowseNameInvalid" if path is None else "")
            if path is not None:
                by_path.append((index, ua.BrowsePath(ua.NodeId(ua.ObjectIds.ObjectsFolder), path)))
        if by_path:
            try:
                results = await self._client.uaclient.translate_browsepaths_to_nodeids([p for _, p in by_path])
            except (UaError, OSError, TimeoutError, ConnectionError) as exc:
                raise self._service_failed("TranslateBrowsePaths", exc) from exc
            _expect_results("TranslateBrowsePaths", results, len(by_path))
            for (index, _), result in zip(by_path, results, strict=True):
                if result.StatusCode.is_good() and result.Targets:
                    resolved[index] = _plain_node_id(result.Targets[0].TargetId)
                else:
                    resolved[index] = result.StatusCode.name
        return resolved

    def _relative_path(self, text: str, namespace: str | None) -> ua.RelativePath | None:
        elements = []
        for segment in text.strip("/").split("/"):
            uri, _, name = segment.rpartition("|")
            uri = uri or namespace or ""
            if uri not in self.namespaces:
                return None
            elements.append(ua.RelativePathElement(
                ReferenceTypeId=ua.NodeId(ua.ObjectIds.HierarchicalReferences), IsInverse=False,
                IncludeSubtypes=True, TargetName=ua.QualifiedName(name, self.namespaces.index(uri))))
        return ua.RelativePath(elements)

    # -- reading --------------------------------------------------------------------------------------------

    async def read(self, nodes: Sequence[ua.NodeId], limit: int = 0) -> list[NodeValue]:
        """Values of `nodes` with one Read call per `limit` nodes (0: the server's limit, else one call)."""
        try:
            return [node_value(d) for d in await self._read_values(nodes, limit)]
        except (UaError, OSError, TimeoutError, ConnectionError) as exc:
            raise self._service_failed("Read", exc) from exc

    def _service_failed(self, service: str, exc: BaseException) -> OpcUaError:
        """A refused service keeps the session; anything else (timeout, closed socket) means it is gone."""
        if isinstance(exc, UaStatusCodeError):
            return OpcUaError(f"{service} failed: {exc}", status_name(exc.code))
        self.lost = self.lost or f"{service} failed: {exc!r}"
        return OpcUaError(self.lost)

    async def _read_values(self, nodes: Sequence[ua.NodeId], limit: int = 0) -> list[ua.DataValue]:
        chunk = limit or self.max_nodes_per_read or len(nodes) or 1
        values: list[ua.DataValue] = []
        for start in range(0, len(nodes), chunk):
            params = ua.ReadParameters()
            params.TimestampsToReturn = ua.TimestampsToReturn.Both
            params.NodesToRead = [ua.ReadValueId(NodeId=n, AttributeId=ua.AttributeIds.Value)
                                  for n in nodes[start:start + chunk]]
            self.read_requests += 1
            answer = await self._client.uaclient.read(params)
            _expect_results("Read", answer, len(params.NodesToRead))
            values.extend(answer)
        return values

    # -- writing ------------------------------------------------------------------------------------------

    async def data_type(self, node: ua.NodeId) -> ua.VariantType:
        """The built-in type a variable's DataType attribute comes down to (a subtype resolved to its base)."""
        try:
            variant: ua.VariantType = await self._client.get_node(node).read_data_type_as_variant_type()
        except (UaError, OSError, TimeoutError, ConnectionError) as exc:
            raise self._service_failed("Read DataType", exc) from exc
        return variant

    async def write(self, node: ua.NodeId, value: Value, variant: ua.VariantType) -> int:
        """Write `value` as `variant` to the node's Value; the status code the server answered (0: Good)."""
        params = ua.WriteParameters()
        params.NodesToWrite = [ua.WriteValue(NodeId=node, AttributeId=ua.AttributeIds.Value,
                                             Value=ua.DataValue(ua.Variant(value, variant)))]
        try:
            results = await self._client.uaclient.write(params)
        except (UaError, OSError, TimeoutError, ConnectionError) as exc:
            raise self._service_failed("Write", exc) from exc
        _expect_results("Write", results, 1)
        return int(results[0].value)

    async def engineering_units(self, nodes: Sequence[ua.NodeId]) -> list[str | None]:
        """The UN/CEFACT code of each node's EngineeringUnits property, None where it has none."""
        codes: list[str | None] = []
        for info in await self._property_values(nodes, "EngineeringUnits"):
            ok = isinstance(info, ua.EUInformation) and info.UnitId > 0
            codes.append(unit_code(info.UnitId) if ok else None)
        return codes

    async def engineering_ranges(self, nodes: Sequence[ua.NodeId]) -> list[tuple[float, float] | None]:
        """Each node's EURange property as (low, high), None where it has none."""
        ranges: list[tuple[float, float] | None] = []
        for value in await self._property_values(nodes, "EURange"):
            ok = isinstance(value, ua.Range) and all(math.isfinite(v) for v in (value.Low, value.High))
            ranges.append((float(value.Low), float(value.High)) if ok else None)
        return ranges

    async def _property_values(self, nodes: Sequence[ua.NodeId], name: str) -> list[Any]:
        """The value of each node's property `name` (a standard property, namespace 0); None where it has none."""
        paths = [ua.BrowsePath(n, ua.RelativePath([ua.RelativePathElement(
            ReferenceTypeId=ua.NodeId(ua.ObjectIds.HasProperty), IsInverse=False, IncludeSubtypes=True,
            TargetName=ua.QualifiedName(name, 0))])) for n in nodes]
        if not paths:
            return []
        try:
            results = await self._client.uaclient.translate_browsepaths_to_nodeids(paths)
            _expect_results("TranslateBrowsePaths", results, len(paths))
            found = [(i, _plain_node_id(r.Targets[0].TargetId)) for i, r in enumerate(results)
                     if r.StatusCode.is_good() and r.Targets]
            data = await self._read_values([n for _, n in found]) if found else []
        except (UaError, OSError, TimeoutError, ConnectionError) as exc:
            raise OpcUaError(f"reading {name} failed: {exc!r}") from exc
        values: list[Any] = [None] * len(nodes)
        for (index, _), value in zip(found, data, strict=True):
            values[index] = value.Value.Value if value.Value is not None else None
        return values

    # -- subscriptions --------------------------------------------------------------------------------------

    async def subscribe(self, items: Sequence[MonitorSpec], publishing_interval: float,
                        on_values: ValuesCallback) -> list[str | None]:
        """One subscription for `items`; notifications go to `on_values` as (item index, value).

        Returns, per item, None when it is monitored or the status name saying why not.
        """
        subscription = _Subscription(self._client, publishing_interval, self._options.keepalive, on_values)
        try:
            statuses = await subscription.create(items)
        except (UaError, OSError, TimeoutError, ConnectionError) as exc:
            raise self._service_failed("creating the subscription", exc) from exc
        self._subscriptions.append(subscription)
        return statuses

    # -- browsing -------------------------------------------------------------------------------------------

    async def browse_variables(self, start: ua.NodeId | None, depth: int) -> list[BrowsedVariable]:
        """Variables under `start` (default: Objects), depth-first, at most `depth` levels down. Properties
        (EngineeringUnits, EURange ... reached by HasProperty) describe their variable and are not listed.
        Raises OpcUaError, with the status name as its reason, when `start` cannot be browsed."""
        client = self._client
        found: list[BrowsedVariable] = []
        root = client.get_node(start or ua.NodeId(ua.ObjectIds.ObjectsFolder))
        is_property = ua.NodeId(ua.ObjectIds.HasProperty)

        async def walk(node: Any, path: list[str], level: int) -> None:
            if level > depth:
                return
            references = await node.get_references(refs=ua.ObjectIds.HierarchicalReferences,
                                                   direction=ua.BrowseDirection.Forward)
            for reference in references:
                child_id = _plain_node_id(reference.NodeId)
                if child_id.NamespaceIndex == 0 or reference.ReferenceTypeId == is_property:
                    continue  # the standard Server object and its friends; a variable's properties
                child = client.get_node(child_id)
                name = reference.BrowseName.Name
                if reference.NodeClass == ua.NodeClass.Variable:
                    found.append(await self._describe(child, [*path, name]))
                if reference.NodeClass in (ua.NodeClass.Object, ua.NodeClass.Variable):
                    await walk(child, [*path, name], level + 1)

        try:
            await root.read_node_class()  # an unknown start node is said so, not found empty
            await walk(root, [], 1)
        except UaStatusCodeError as exc:
            name = status_name(exc.code)
            raise OpcUaError(f"cannot browse {'the Objects folder' if start is None else start}: {name}",
                             name) from exc
        except (UaError, OSError, TimeoutError, ConnectionError) as exc:
            raise self._service_failed("Browse", exc) from exc
        return found

    async def _describe(self, node: Any, path: list[str]) -> BrowsedVariable:
        data_type_id = await node.read_data_type()
        data_type: str
        try:
            data_type = str((await self._client.get_node(data_type_id).read_browse_name()).Name)
        except UaStatusCodeError:
            data_type = str(data_type_id)
        display = str((await node.read_display_name()).Text or path[-1])
        codes = await self.engineering_units([node.nodeid])
        ranges = await self.engineering_ranges([node.nodeid])
        access = await node.read_attribute(ua.AttributeIds.UserAccessLevel)
        writable = bool((access.Value.Value or 0) & ua.AccessLevel.CurrentWrite.mask)
        nodeid = node.nodeid
        uri = self.namespaces[nodeid.NamespaceIndex]
        text = nodeid.to_string().split(";", 1)[-1] if nodeid.NamespaceIndex else nodeid.to_string()
        return BrowsedVariable(f"nsu={uri};{text}", path, display, data_type, codes[0], writable, ranges[0])


def _identifier(ref: NodeRef) -> int | str | uuid.UUID | bytes:
    if ref.kind == "i":
        return int(ref.identifier)
    if ref.kind == "g":
        return uuid.UUID(ref.identifier)
    if ref.kind == "b":
        return base64.b64decode(ref.identifier, validate=True)
    return ref.identifier


def _expect_results(service: str, results: Sequence[object], asked: int) -> None:
    """A server must answer one result per operation; pairing a short answer up would misplace values."""
    if len(results) != asked:
        raise OpcUaError(f"{service}: the server answered {len(results)} results for {asked} operations")


def _plain_node_id(target: Any) -> ua.NodeId:
    """A browse target (an ExpandedNodeId) as the NodeId services take."""
    return ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)


@dataclass(frozen=True)
class BrowsedVariable:
    node: str  # nsu=...;s=...
    path: list[str]  # browse names from the start node
    display_name: str
    data_type: str
    unit_code: str | None
    writable: bool
    eu_range: tuple[float, float] | None = None


class _Subscription:
    """One OPC-UA subscription, made with the raw service calls so a publish of 1,000 changes is one callback."""

    def __init__(self, client: Client, publishing_interval: float, keepalive: float,
                 on_values: ValuesCallback) -> None:
        self._client = client
        self._interval = publishing_interval
        self._keepalive = keepalive
        self._on_values = on_values
        self._handles: dict[int, int] = {}  # client handle → item index
        self._last_publish = 0.0
        self._revised_keepalive = keepalive
        self._status: str | None = None

    async def create(self, items: Sequence[MonitorSpec]) -> list[str | None]:
        keepalive_count = max(1, math.ceil(self._keepalive / self._interval))
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=self._interval * 1000, RequestedLifetimeCount=keepalive_count * 10,
            RequestedMaxKeepAliveCount=keepalive_count, MaxNotificationsPerPublish=0, PublishingEnabled=True,
            Priority=0)
        result = await self._client.uaclient.create_subscription(params, self._on_publish)
        self._revised_keepalive = result.RevisedPublishingInterval / 1000 * result.RevisedMaxKeepAliveCount
        self._last_publish = asyncio.get_running_loop().time()
        self._handles = {index + 1: index for index in range(len(items))}
        statuses: list[str | None] = []
        for start in range(0, len(items), _MAX_ITEMS_PER_CALL):
            batch = list(enumerate(items[start:start + _MAX_ITEMS_PER_CALL], start))
            statuses.extend(await self._create_items(result.SubscriptionId, batch))
        return statuses

    async def _create_items(self, subscription_id: int, batch: list[tuple[int, MonitorSpec]],
                            with_filter: bool = True) -> list[str | None]:
        params = ua.CreateMonitoredItemsParameters(
            SubscriptionId=subscription_id, TimestampsToReturn=ua.TimestampsToReturn.Both,
            ItemsToCreate=[_item_request(index + 1, spec, with_filter) for index, spec in batch])
        results = await self._client.uaclient.create_monitored_items(params)
        _expect_results("CreateMonitoredItems", results, len(batch))
        statuses = [None if r.StatusCode.is_good() else r.StatusCode.name for r in results]
        retry = [(i, (index, spec)) for i, ((index, spec), status) in enumerate(zip(batch, statuses, strict=True))
                 if with_filter and spec.deadband is not None and status in _FILTER_REJECTED]
        if retry:
            log.warning("server rejected the deadband of %d monitored items; monitoring them without one", len(retry))
            again = await self._create_items(subscription_id, [item for _, item in retry], with_filter=False)
            for (position, _), status in zip(retry, again, strict=True):
                statuses[position] = status
        return statuses

    def _on_publish(self, result: ua.PublishResult) -> None:
        self._last_publish = asyncio.get_running_loop().time()
        message = result.NotificationMessage
        for notification in message.NotificationData or []:
            if isinstance(notification, ua.DataChangeNotification):
                changes = []
                for item in notification.MonitoredItems:
                    index = self._handles.get(item.ClientHandle)
                    if index is not None:
                        changes.append((index, node_value(item.Value)))
                if changes:
                    self._on_values(changes)
            elif isinstance(notification, ua.StatusChangeNotification):
                self._status = f"subscription ended by the server: {notification.Status.name}"

    def problem(self) -> str | None:
        if self._status is not None:
            return self._status
        # The server sends at least a keep-alive every keep-alive period; three missed ones mean it is gone.
        silent = asyncio.get_running_loop().time() - self._last_publish
        if silent > 3 * self._revised_keepalive + 1.0:
            return f"no publish response (not even a keep-alive) for {silent:.1f} s"
        return None


def _item_request(handle: int, spec: MonitorSpec, with_filter: bool) -> ua.MonitoredItemCreateRequest:
    parameters = ua.MonitoringParameters()
    parameters.ClientHandle = handle
    parameters.SamplingInterval = spec.sampling_interval * 1000
    parameters.QueueSize = spec.queue_size
    parameters.DiscardOldest = True
    if with_filter and spec.deadband is not None:
        kind, amount = spec.deadband
        parameters.Filter = ua.DataChangeFilter(
            Trigger=ua.DataChangeTrigger.StatusValue,
            DeadbandType=ua.DeadbandType.Absolute if kind is DeadbandType.ABSOLUTE else ua.DeadbandType.Percent,
            DeadbandValue=amount)
    request = ua.MonitoredItemCreateRequest()
    request.ItemToMonitor = ua.ReadValueId(NodeId=spec.node, AttributeId=ua.AttributeIds.Value)
    request.MonitoringMode = ua.MonitoringMode.Reporting
    request.RequestedParameters = parameters
    return request


# -- security -------------------------------------------------------------------------------------------------

async def _secure(client: Client, options: ConnectOptions) -> None:
    """Pick the endpoint, check the server's certificate against our trust, and set up our certificate."""
    policy = _POLICIES[options.policy]
    mode = _MODES[options.mode]
    endpoints = await client.connect_and_get_server_endpoints()
    endpoint = next((e for e in endpoints if e.SecurityPolicyUri == policy.URI and e.SecurityMode == mode), None)
    if endpoint is None:
        offered = sorted({f"{e.SecurityPolicyUri.rpartition('#')[2]}/{e.SecurityMode.name.rstrip('_')}"
                          for e in endpoints})
        raise OpcUaError(f"endpoint {options.endpoint} does not offer security policy {options.policy} with mode "
                         f"{options.mode}; it offers: {', '.join(offered)}", "BadSecurityPolicyRejected")
    server_der = _first_certificate(endpoint.ServerCertificate or b"")
    await _check_server_trusted(server_der, options)
    certificate, key = await client_certificate(options)
    await client.set_security(policy, certificate, key, server_certificate=server_der, mode=mode)


async def client_certificate(options: ConnectOptions) -> tuple[Path, Path]:
    """The configured certificate and key, or ours in the state directory, generated on first use."""
    if options.certificate is not None and options.private_key is not None:
        return options.certificate, options.private_key
    directory = options.pki_dir
    cert_file, key_file = directory / "client-cert.der", directory / "client-key.pem"
    fresh = not key_file.exists()
    _make_dir(directory)
    # The key is readable by the gateway's user only from its first byte: created under a private umask.
    previous = os.umask(0o077)
    try:
        await cert_gen.setup_self_signed_certificate(
            key_file, cert_file, options.app_uri, socket.gethostname(),
            [ExtendedKeyUsageOID.CLIENT_AUTH], {"organizationName": "municipal-gateway"})
    finally:
        os.umask(previous)
    os.chmod(key_file, 0o600)  # one generated before this rule, or copied in with a looser mode
    if fresh:
        log.info("generated the OPC-UA client certificate %s (application URI %s); the server must trust it",
                 cert_file, options.app_uri)
    return cert_file, key_file


def _make_dir(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)


def _first_certificate(der: bytes) -> bytes:
    length = int.from_bytes(der[2:4], "big") + 4  # a chain is concatenated DER; the first is the server's
    return der[:length]


def thumbprint(der: bytes) -> str:
    return hashlib.sha1(der, usedforsecurity=False).hexdigest()


async def _check_server_trusted(server_der: bytes, options: ConnectOptions) -> None:
    try:
        certificate = x509.load_der_x509_certificate(server_der)
    except ValueError as exc:
        raise OpcUaError(f"{options.endpoint} offers a certificate that is not a valid X.509 certificate ({exc}); "
                         "the server's certificate store needs fixing", "BadCertificateInvalid") from exc
    trusted = await _trusted_certificates(options)
    if certificate.fingerprint(hashes.SHA256()) not in {c.fingerprint(hashes.SHA256()) for c in trusted}:
        saved = options.pki_dir / "rejected" / f"{thumbprint(server_der)}.der"
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_bytes(server_der)
        where = options.server_certificate or options.trust_dir
        raise OpcUaError(
            f"the server's certificate ({certificate.subject.rfc4514_string()}, SHA-1 {thumbprint(server_der)}) "
            f"is not trusted (not {where}); if it is the right server, copy {saved} there",
            "BadCertificateUntrusted")
    now = datetime.datetime.now(datetime.UTC)
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise OpcUaError(f"the server's certificate is valid from {certificate.not_valid_before_utc} to "
                         f"{certificate.not_valid_after_utc}, not now", "BadCertificateTimeInvalid")


async def _trusted_certificates(options: ConnectOptions) -> list[x509.Certificate]:
    files: list[Path] = []
    if options.server_certificate is not None:
        files.append(options.server_certificate)
    if options.trust_dir is not None and options.trust_dir.is_dir():
        files.extend(p for p in sorted(options.trust_dir.iterdir()) if p.suffix.lower() in (".der", ".pem", ".crt"))
    trusted = []
    for file in files:
        try:
            trusted.append(await uacrypto.load_certificate(file))
        except (OSError, ValueError) as exc:
            raise OpcUaError(f"cannot load the trusted server certificate {file}: {exc}",
                             "BadCertificateInvalid") from exc
    return trusted


def _explain_connect_error(exc: BaseException, options: ConnectOptions) -> OpcUaError:
    if isinstance(exc, UaStatusCodeError):
        name = status_name(exc.code)
        if name in _AUTH_REJECTED:
            who = f"user {options.username!r}" if options.username else "anonymous access"
            return OpcUaError(f"the server refused {who} ({name}): wrong username or password?", name)
        if name in _CERT_REJECTED:
            return OpcUaError(f"the server rejected our certificate ({name}); it must trust "
                              f"{options.certificate or options.pki_dir / 'client-cert.der'} "
                              f"with application URI {options.app_uri}", name)
        return OpcUaError(f"connecting to {options.endpoint} failed: {name}", name)
    if isinstance(exc, ConnectionRefusedError):
        return OpcUaError(f"nothing listens at {options.endpoint} (connection refused)")
    if isinstance(exc, TimeoutError):
        return OpcUaError(f"{options.endpoint} did not answer within {options.timeout:g} s", Reason.COMMUNICATION.value)
    return OpcUaError(f"connecting to {options.endpoint} failed: {exc!r}")


async def _disconnect_quietly(client: Client) -> None:
    try:
        await client.disconnect()
    except (UaError, OSError, TimeoutError, ConnectionError, AttributeError) as exc:
        log.debug("disconnect from a broken session: %r", exc)
