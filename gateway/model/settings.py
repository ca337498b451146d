"""The main configuration file: gateway identity, MQTT uplink, buffer, and where the other files are."""

from __future__ import annotations

import enum
import ipaddress
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Self, TypeVar

from pydantic import Field, PositiveInt, SecretStr, ValidationInfo, field_validator, model_validator

from gateway.model.commands import CommandSettings
from gateway.model.lighting import LightingSettings, SiteSettings
from gateway.model.schema import ConfigPath, Id, ReadableFile, Seconds, StrictModel, checks_files


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
    ca_file: ReadableFile | None = Field(None, description="CA bundle to verify the broker; system CAs when absent.")
    cert_file: ReadableFile | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    key_file: ReadableFile | None = Field(None, description="Client private key (PEM).")
    key_password: SecretStr | None = Field(None, description="Passphrase of the key; use ${ENV_VAR}.")
    key_password_file: ReadableFile | None = None
    verify_hostname: bool = True

    @model_validator(mode="after")
    def _cert_and_key_together(self, info: ValidationInfo) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together; expected both or neither")
        if checks_files(info):
            tls_context(self)  # what run will do with the files, done once here, so `check` finds what it would
        return self

    def passphrase(self) -> str | None:
        """The key's passphrase, inline or from its file (read each time, so a rotated one is picked up)."""
        if self.key_password is not None:
            return self.key_password.get_secret_value()
        if self.key_password_file is not None:
            return self.key_password_file.read_text(encoding="utf-8").strip()
        return None


_C = TypeVar("_C", bound=ssl.SSLContext)


class TlsFileError(ValueError):
    """A TLS file that does not serve: names the setting and the file, in words rather than OpenSSL's."""


def tls_context(tls: TlsSettings, context_class: type[_C] = ssl.SSLContext) -> _C:  # type: ignore[assignment]
    """The client context the uplink uses (the broker's certificate always verified); TlsFileError when a
    file does not load."""
    context = context_class(ssl.PROTOCOL_TLS_CLIENT)
    if tls.ca_file is None:
        context.load_default_certs()
    else:
        _load(lambda: context.load_verify_locations(tls.ca_file), "ca_file", tls.ca_file, "a CA certificate (PEM)")
    cert, key = tls.cert_file, tls.key_file
    if cert is not None and key is not None:
        # The certificate alone first (as a trust anchor: it must be a certificate), so an error names its file.
        _load(lambda: ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cert), "cert_file", cert,
              "a certificate (PEM)")
        passphrase = tls.passphrase()
        # A callable, so that OpenSSL never asks on a terminal for the passphrase of an encrypted key.
        _load(lambda: context.load_cert_chain(cert, key, lambda: passphrase or ""), "key_file", key,
              "the private key of cert_file")
    context.check_hostname = tls.verify_hostname
    return context


_OPENSSL_REASONS = {
    "KEY_VALUES_MISMATCH": "it is not the key of cert_file",
    "BAD_DECRYPT": "it does not open with the passphrase (key_password or key_password_file), or it is "
                   "encrypted and no passphrase is given",
    "NO_START_LINE": "no PEM block in it",
    "NO_CERTIFICATE_OR_CRL_FOUND": "no certificate in it",
}


def _load(load: Callable[[], object], setting: str, path: Path, expected: str) -> None:
    try:
        load()
    except ssl.SSLError as exc:
        reason = _OPENSSL_REASONS.get(str(exc.reason), f"OpenSSL says {exc.reason or exc}")
        if setting == "key_file" and (exc.reason == "PEM_LIB" or "PEM lib" in str(exc)):
            # What OpenSSL reports for a key that its passphrase does not open (Python gives no finer reason).
            reason = _OPENSSL_REASONS["BAD_DECRYPT"]
        raise TlsFileError(f"{setting} {path}: expected {expected}; {reason}") from None
    except OSError as exc:
        raise TlsFileError(f"{setting} {path}: {exc.strerror or exc}") from None


class ReconnectSettings(StrictModel):
    # While the broker is away an attempt costs a refused TCP connect. Every second at most, the gateway is
    # back within 1 s of the broker, and a reading taken after that is delivered within 2 s (one poll interval
    # of 1 s on top). A fleet of thousands of gateways on one broker may want a longer max_delay.
    initial_delay: Seconds = 0.25
    max_delay: Seconds = 1.0
    refused_delay: Seconds = Field(30.0, description="Seconds between attempts while the broker refuses us "
                                                     "(credentials, client id): retrying sooner cannot fix that.")


class MqttSettings(StrictModel):
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str | None = Field(None, description="Defaults to the gateway id.")
    username: str | None = None
    password: SecretStr | None = Field(None, description="Use ${ENV_VAR}; or password_file.")
    password_file: ReadableFile | None = Field(None, description="A file holding the password (a systemd credential).")
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
    max_bytes: int = Field(256 * 1024 * 1024, ge=1024 * 1024,
                           description="What the buffer may take on disk (SQLite's pages in use and its WAL); past "
                                       "it the oldest readings are dropped, counted and announced.")
    free_share: float = Field(0.5, gt=0, le=1,
                              description="And no more than this share of the space free on the buffer's filesystem "
                                          "(counting what the buffer already holds).")
    synchronous: Literal["full", "normal"] = Field(
        "full", description="full: every poll result survives a power cut; normal: fewer SD-card writes.")


class ClockSettings(StrictModel):
    source: Literal["system", "none"] = Field(
        "system", description="system: ask the kernel whether an NTP client has synchronised the clock (and "
                              "flag readings' time as uncertain while not); none: take the clock as right (a "
                              "site whose clock is set by something the kernel does not know of).")
    check_interval: Seconds = Field(60.0, description="Seconds between two questions to the kernel.")


class StatusAuth(StrictModel):
    """HTTP basic authentication of the status listener. The password never sits in the YAML."""

    username: str = Field(min_length=1, pattern=r"^[^:\s]+$")
    password: SecretStr | None = Field(None, description="Use ${ENV_VAR}; or password_file.")
    password_file: ConfigPath | None = Field(None, description="A file holding the password (a systemd credential).")

    @model_validator(mode="after")
    def _one_password_source(self) -> Self:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("give password (as ${ENV_VAR}) or password_file, one of them")
        return self


class StatusSettings(StrictModel):
    """The local status listener: the page for the engineer on site, /metrics and /healthz (gateway/status/)."""

    enabled: bool = False
    host: str = Field("127.0.0.1", description="Address to listen on: 127.0.0.1 (this box only), an address of "
                                               "one interface, or 0.0.0.0 / :: for every interface.")
    # Below 1024 would need a capability the service does not have.
    port: int = Field(8480, ge=1024, le=65535)
    auth: StatusAuth | None = None
    refresh: Seconds = Field(2.0, le=60, description="Seconds between the page's live updates.")

    @field_validator("host")
    @classmethod
    def _an_address(cls, host: str) -> str:
        if host != "localhost":
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ValueError("expected an IP address of this machine (127.0.0.1, ::1, an interface's "
                                 "address, or 0.0.0.0 / :: for every interface) or localhost") from None
        return host


class MainFile(StrictModel):
    """The main configuration file."""

    gateway: GatewaySettings
    mqtt: MqttSettings = MqttSettings()
    buffer: BufferSettings = BufferSettings()
    clock: ClockSettings = ClockSettings()
    status: StatusSettings = StatusSettings()
    commands: CommandSettings = Field(CommandSettings(), description="Commands from the control room (README).")
    site: SiteSettings | None = Field(None, description="Where the site is: for lighting schedules.")
    lighting: LightingSettings = Field(LightingSettings(), description="Street-lighting schedules (README).")
    catalogue: Path | list[Path] = Field(
        Path("catalogue.yaml"), description="The catalogue file, or several: the shipped one first, then overlays "
                                            "that add to it (or override entries with `override: true`). "
                                            "Relative to this file.")
    profiles: Path = Field(Path("profiles"), description="Directory of device profiles, relative to this file.")
    include: list[str] = Field(default_factory=list, description="Device files: paths or globs, relative to this file.")

    @property
    def catalogue_files(self) -> list[Path]:
        return list(self.catalogue) if isinstance(self.catalogue, list) else [self.catalogue]

    @model_validator(mode="after")
    def _schedules_need_a_site(self) -> Self:
        if self.lighting.circuits and self.site is None:
            raise ValueError("lighting circuits need `site: {latitude, longitude, timezone}`")
        return self
