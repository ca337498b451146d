"""Configuration of OPC-UA devices and points. Imports no protocol library.

A point addresses one variable node either by NodeId with a namespace URI
(`nsu=urn:vendor:station;s=Inlet.Pressure`; the index of a URI can change when
a server restarts, so it is looked up on every connect), by a namespace-0
NodeId (`i=2258`), or by a browse path from the Objects folder.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
import uuid
from typing import Literal, Self

from pydantic import Field, PositiveInt, SecretStr, model_validator

from gateway.model.devices import DeviceBase, PointBase
from gateway.model.schema import ReadableDir, ReadableFile, Seconds, StrictModel, record

# nsu=<uri>;<type>=<id>  or  [ns=0;]<type>=<id>, type one of i (numeric), s (string), g (guid), b (opaque)
_NODE_ID = re.compile(r"^(?:nsu=(?P<uri>[^;]+);|ns=(?P<index>\d+);)?(?P<kind>[isgb])=(?P<ident>.+)$", re.DOTALL)


class NodeRef(StrictModel):
    """A parsed node id: namespace URI (None for namespace 0), identifier type and identifier."""

    namespace_uri: str | None
    kind: Literal["i", "s", "g", "b"]
    identifier: str

    @classmethod
    def parse(cls, text: str) -> NodeRef:
        match = _NODE_ID.match(text.strip())
        if match is None:
            raise ValueError("expected a node id like 'nsu=urn:vendor:plant;s=Tank1.Level' or 'i=2258', "
                             f"found {text!r}")
        index = match["index"]
        if index is not None and index != "0":
            raise ValueError(f"node id {text!r} uses namespace index {index}; indexes can change when the server "
                             "restarts, so give the namespace URI instead (nsu=<uri>;...); `browse` prints them")
        _check_identifier(text, match["kind"], match["ident"])
        return cls(namespace_uri=match["uri"], kind=match["kind"], identifier=match["ident"])

    def __str__(self) -> str:
        prefix = f"nsu={self.namespace_uri};" if self.namespace_uri else ""
        return f"{prefix}{self.kind}={self.identifier}"


_UINT32_MAX = 2**32 - 1


def _check_identifier(text: str, kind: str, identifier: str) -> None:
    """Reject identifiers the protocol cannot carry now, rather than fail on every connect later."""
    if kind == "i" and not (identifier.isascii() and identifier.isdigit() and int(identifier) <= _UINT32_MAX):
        raise ValueError(f"node id {text!r}: a numeric identifier (i=) must be digits, at most {_UINT32_MAX}")
    if kind == "g":
        try:
            uuid.UUID(identifier)
        except ValueError:
            raise ValueError(f"node id {text!r}: a GUID identifier (g=) looks like "
                             "09087e75-8e5e-499b-954f-f2a9603db28a") from None
    if kind == "b":
        try:
            base64.b64decode(identifier, validate=True)
        except binascii.Error:
            raise ValueError(f"node id {text!r}: an opaque identifier (b=) must be base64") from None


class Mode(enum.StrEnum):
    SUBSCRIPTION = "subscription"
    POLLING = "polling"


class SecurityPolicy(enum.StrEnum):
    """The policies asyncua implements that are not deprecated by the OPC Foundation."""

    NONE = "None"
    BASIC256SHA256 = "Basic256Sha256"
    AES128_SHA256_RSAOAEP = "Aes128_Sha256_RsaOaep"
    AES256_SHA256_RSAPSS = "Aes256_Sha256_RsaPss"


class SecurityMode(enum.StrEnum):
    NONE = "None"
    SIGN = "Sign"
    SIGN_AND_ENCRYPT = "SignAndEncrypt"


class DeadbandType(enum.StrEnum):
    ABSOLUTE = "absolute"
    PERCENT = "percent"  # of the node's EURange; only where the server supports it


class Deadband(StrictModel):
    type: DeadbandType
    value: float = Field(ge=0)


class Security(StrictModel):
    policy: SecurityPolicy = SecurityPolicy.NONE
    mode: SecurityMode = SecurityMode.NONE
    certificate: ReadableFile | None = Field(
        None, description="Client certificate (DER or PEM). Absent: generated on first use in the state directory.")
    private_key: ReadableFile | None = Field(None, description="Private key of the client certificate (PEM).")
    application_uri: str | None = Field(
        None, description="Application URI in our certificate; default urn:<hostname>:municipal-gateway.")
    server_certificate: ReadableFile | None = Field(None, description="The server's certificate, trusted (pinned).")
    trust_dir: ReadableDir | None = Field(None, description="Directory of trusted server certificates (.der/.pem).")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        secured = self.policy is not SecurityPolicy.NONE
        if secured != (self.mode is not SecurityMode.NONE):
            raise ValueError("policy None goes with mode None, and a security policy needs mode Sign or "
                             f"SignAndEncrypt; found policy {self.policy} with mode {self.mode}")
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together; give both or neither (generated)")
        if secured and self.server_certificate is None and self.trust_dir is None:
            raise ValueError("a secured connection needs server_certificate or trust_dir to know which server to "
                             "trust; `municipal-gateway browse` saves the server's certificate for you to check")
        return self


@record
class OpcUaPoint(PointBase):
    node: str | None = Field(None, description="NodeId with namespace URI: nsu=<uri>;s=<id> (or i=, g=, b=).")
    browse_path: str | None = Field(
        None, description="Browse names from the Objects folder, separated by '/'; each name in the device's "
                          "`namespace` unless written as <namespace-uri>|<name>.")
    sampling_interval: Seconds | None = Field(None, description="Seconds; the device default when absent.")
    queue_size: PositiveInt | None = Field(None, le=10000)
    deadband: Deadband | None = None

    @model_validator(mode="after")
    def _one_address(self) -> Self:
        if (self.node is None) == (self.browse_path is None):
            raise ValueError("give exactly one of `node` (a NodeId) or `browse_path`")
        if self.node is not None:
            NodeRef.parse(self.node)
        return self

    @property
    def node_ref(self) -> NodeRef | None:
        return None if self.node is None else NodeRef.parse(self.node)


class OpcUaDevice(DeviceBase):
    protocol: Literal["opcua"]
    endpoint: str = Field(pattern=r"^opc\.tcp://[^/\s]+(/\S*)?$", description="opc.tcp://host:port[/path]")
    mode: Mode = Field(Mode.SUBSCRIPTION, description="subscription (the server pushes changes) or polling.")
    namespace: str | None = Field(None, description="Namespace URI for browse path names without one.")
    security: Security = Security()
    username: str | None = None
    password: SecretStr | None = Field(None, description="Use ${ENV_VAR}; or password_file.")
    password_file: ReadableFile | None = None
    session_timeout: Seconds = Field(60.0, ge=5, description="Seconds the server keeps our session alive.")
    keepalive: Seconds = Field(
        2.0, le=60, description="Seconds between liveness checks; a dead server is noticed within about twice this.")
    publishing_interval: Seconds = Field(1.0, description="Seconds between subscription notifications.")
    sampling_interval: Seconds | None = Field(
        None, description="Seconds; default: the publishing interval (subscription) or poll interval.")
    queue_size: PositiveInt = Field(1, le=10000)
    max_nodes_per_read: PositiveInt | None = Field(
        None, description="Nodes per Read call; default: the server's MaxNodesPerRead, else unlimited.")
    # A server restart should be picked up within seconds; the default device back-off is made for polling.
    backoff_max: Seconds = Field(8.0, description="Longest wait between reconnect attempts.")
    points: list[OpcUaPoint]

    @model_validator(mode="after")
    def _checks(self) -> Self:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if (self.password is not None or self.password_file is not None) and self.username is None:
            raise ValueError("a password needs a username")
        needs_namespace = [p.name for p in self.points
                           if p.browse_path is not None and any("|" not in s for s in p.browse_path.split("/"))]
        if needs_namespace and self.namespace is None:
            raise ValueError(f"points {', '.join(needs_namespace)} use browse paths without namespace URIs; "
                             "set the device's `namespace` (or write <namespace-uri>|<name>)")
        return self

    @property
    def pushes(self) -> bool:
        return self.mode is Mode.SUBSCRIPTION

    def link_id(self) -> str:
        # Devices on one endpoint with the same credentials share one session.
        return f"opcua:{self.endpoint}|{self.security.policy}|{self.security.mode}|{self.username or ''}"
