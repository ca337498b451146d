"""The main configuration file: gateway identity, MQTT uplink, buffer, and where the other files are."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, PositiveInt, SecretStr, model_validator

from gateway.model.commands import CommandSettings
from gateway.model.lighting import LightingSettings, SiteSettings
from gateway.model.schema import ConfigPath, Id, Seconds, StrictModel


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
    # While the broker is away an attempt costs a refused TCP connect; every 2 s at most keeps the gap after it
    # returns under 2 s. A fleet of thousands of gateways on one broker may want a longer max_delay.
    initial_delay: Seconds = 0.25
    max_delay: Seconds = 2.0
    refused_delay: Seconds = Field(30.0, description="Seconds between attempts while the broker refuses us "
                                                     "(credentials, client id): retrying sooner cannot fix that.")


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


class ClockSettings(StrictModel):
    source: Literal["system", "none"] = Field(
        "system", description="system: ask the kernel whether an NTP client has synchronised the clock (and "
                              "flag readings' time as uncertain while not); none: take the clock as right (a "
                              "site whose clock is set by something the kernel does not know of).")
    check_interval: Seconds = Field(60.0, description="Seconds between two questions to the kernel.")


class MainFile(StrictModel):
    """The main configuration file."""

    gateway: GatewaySettings
    mqtt: MqttSettings = MqttSettings()
    buffer: BufferSettings = BufferSettings()
    clock: ClockSettings = ClockSettings()
    commands: CommandSettings = Field(CommandSettings(), description="Commands from the control room (README).")
    site: SiteSettings | None = Field(None, description="Where the site is: for lighting schedules.")
    lighting: LightingSettings = Field(LightingSettings(), description="Street-lighting schedules (README).")
    catalogue: Path = Field(Path("catalogue.yaml"), description="Relative to this file.")
    profiles: Path = Field(Path("profiles"), description="Directory of device profiles, relative to this file.")
    include: list[str] = Field(default_factory=list, description="Device files: paths or globs, relative to this file.")

    @model_validator(mode="after")
    def _schedules_need_a_site(self) -> Self:
        if self.lighting.circuits and self.site is None:
            raise ValueError("lighting circuits need `site: {latitude, longitude, timezone}`")
        return self
