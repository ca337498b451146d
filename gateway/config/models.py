"""Typed models of the configuration files. Validated once at load time; the rest of the daemon trusts them."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, PositiveFloat, PositiveInt, SecretStr, model_validator

from gateway.catalogue import DerivedIndicator, Processing
from gateway.config.base import ConfigPath, Id, PointName, StrictModel


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class GatewaySettings(StrictModel):
    id: Id = Field(description="Gateway id: MQTT client id and part of the status topic.")
    name: str = ""
    state_dir: Path = Field(Path("/var/lib/municipal-gateway"),
                            description="Where the buffer, sequence counter, certificates and device status live.")
    log_level: LogLevel = LogLevel.INFO


class TlsSettings(StrictModel):
    ca_file: ConfigPath | None = Field(None, description="CA bundle to verify the broker; system CAs when absent.")
    cert_file: ConfigPath | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    key_file: ConfigPath | None = Field(None, description="Client private key (PEM).")
    key_password: SecretStr | None = Field(None, description="Passphrase of the key; use ${ENV_VAR}.")
    key_password_file: ConfigPath | None = None
    verify_hostname: bool = True

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together; expected both or neither")
        return self


class ReconnectSettings(StrictModel):
    initial_delay: PositiveFloat = 1.0
    max_delay: PositiveFloat = 60.0


class MqttSettings(StrictModel):
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str | None = Field(None, description="Defaults to the gateway id.")
    username: str | None = None
    password: SecretStr | None = Field(None, description="Use ${ENV_VAR}; or password_file.")
    password_file: ConfigPath | None = Field(None, description="A file holding the password (a systemd credential).")
    tls: TlsSettings | None = None
    keepalive: int = Field(30, ge=5, le=3600)
    topic_prefix: str = Field("city", pattern=r"^[a-z0-9][a-z0-9-]*(/[a-z0-9][a-z0-9-]*)*$")
    max_inflight: PositiveInt = Field(32, le=1000, description="QoS 1 messages awaiting PUBACK at once.")
    reconnect: ReconnectSettings = ReconnectSettings()

    @model_validator(mode="after")
    def _one_password_source(self) -> Self:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        return self


class BufferSettings(StrictModel):
    path: Path | None = Field(None, description="SQLite file; defaults to <state_dir>/buffer.sqlite.")
    max_bytes: PositiveInt = Field(256 * 1024 * 1024,
                                   description="Past this size the oldest readings are dropped (and counted).")
    synchronous: Literal["full", "normal"] = Field(
        "full", description="full: every poll result survives a power cut; normal: fewer SD-card writes.")


class MainFile(StrictModel):
    """The main configuration file."""

    gateway: GatewaySettings
    mqtt: MqttSettings = MqttSettings()
    buffer: BufferSettings = BufferSettings()
    catalogue: Path = Field(Path("catalogue.yaml"), description="Relative to this file.")
    profiles: Path = Field(Path("profiles"), description="Directory of device profiles, relative to this file.")
    include: list[str] = Field(default_factory=list, description="Device files: paths or globs, relative to this file.")


# --- devices -----------------------------------------------------------------------------------------------

class AssetSettings(StrictModel):
    domain: Id
    site: Id
    id: Id
    type: Id = Field(description="An asset type from the catalogue.")
    name: str = ""


class PointBase(StrictModel):
    """What every protocol's point has: which indicator it feeds and how its value becomes canonical."""

    name: PointName
    indicator: Id
    unit: str | None = Field(None, description="Unit of the value after scale/offset; defaults to the indicator's.")
    scale: float = 1.0
    offset: float = 0.0
    range: tuple[float, float] | None = Field(
        None, description="Valid range in `unit`; outside it the reading is bad (out-of-range).")
    writable: bool = Field(False, description="Only writable points can ever be written to the device.")
    processing: Processing | None = Field(
        None, description="Report by exception, windows, counter and alarms; each key given replaces the "
                          "catalogue's default for the indicator (docs/processing.md).")

    @model_validator(mode="after")
    def _ordered_range(self) -> Self:
        if self.range is not None and self.range[0] > self.range[1]:
            raise ValueError(f"range must be [low, high], found [{self.range[0]}, {self.range[1]}]")
        return self


class DeviceBase(StrictModel):
    """What every protocol's device has. Protocol modules subclass it with their connection and points."""

    id: Id
    protocol: str
    asset: AssetSettings
    profile: str | None = Field(None, description="A device profile (register map) under the profiles directory.")
    enabled: bool = True
    poll_interval: PositiveFloat = Field(10.0, description="Seconds between polls.")
    timeout: PositiveFloat = Field(3.0, description="Seconds to wait for one reply.")
    backoff_max: PositiveFloat = Field(300.0, description="Longest wait between retries of a failing device.")
    points: list[PointBase]
    derived: list[DerivedIndicator] = Field(
        default_factory=list,
        description="Indicators of this device's asset computed from others (see docs/processing.md).")

    def link_id(self) -> str:
        """Devices with the same link id share one physical connection, served by one task."""
        return f"device:{self.id}"

    @classmethod
    def link_conflicts(cls, devices: Sequence[DeviceBase]) -> list[tuple[DeviceBase, str, str]]:
        """(device, key, problem) for each device that cannot share its link with the others as configured.

        The loader calls this once per group of devices with the same link id, so a protocol can
        check what only makes sense across devices (one baud rate per serial port, one address per slave).
        """
        return []
