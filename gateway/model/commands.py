"""The `commands:` section of the main file: how commands from the control room are accepted (README, Commands)."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, PositiveInt, model_validator

from gateway.model.schema import ReadableFile, Seconds, StrictModel


class SignatureSettings(StrictModel):
    """HMAC-SHA256 over each command with a shared secret. The secret itself is never in the YAML."""

    secret_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                   description="Name of the environment variable holding the secret.")
    secret_file: ReadableFile | None = Field(None, description="A file holding the secret (a systemd credential).")
    window: Seconds = Field(30.0, description="Seconds a signed command's `issued` time may be from the gateway's "
                                              "clock, either way (against replay).")

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.secret_env is None) == (self.secret_file is None):
            raise ValueError("give secret_env or secret_file (exactly one)")
        return self


class RateLimits(StrictModel):
    """Commands per second accepted, with a burst of the same size; the rest are refused (rate-limited)."""

    per_point: float = Field(2.0, gt=0, le=1000)
    per_gateway: float = Field(20.0, gt=0, le=10000)


class CommandSettings(StrictModel):
    enabled: bool = Field(True, description="Subscribe to the command topic; false: the gateway only reads.")
    max_age: Seconds = Field(30.0, description="Seconds after `issued` a command without its own `max_age` "
                                               "or `expires` is refused as expired.")
    max_age_limit: Seconds = Field(300.0, description="The longest `max_age` a command may ask for.")
    future_tolerance: Seconds = Field(5.0, description="Seconds a command's `issued` may lie ahead of the "
                                                       "gateway's clock (the sender's clock is a little fast).")
    allow_unsynchronised_clock: bool = Field(
        False, description="Accept commands while the gateway's clock is known not to be synchronised (their "
                           "age is then judged by a clock that may be wrong, and the result says so).")
    signature: SignatureSettings | None = Field(None, description="Require HMAC-signed commands.")
    rate: RateLimits = RateLimits()
    audit_max_entries: PositiveInt = Field(100_000, le=10_000_000,
                                           description="Audit log entries kept; the oldest go first.")
    mqtt_version: Literal["5", "3.1.1"] = Field(
        "5", description="MQTT version of the command connection: 5 honours response topics and correlation "
                         "data; 3.1.1 for a broker that speaks nothing newer.")
    session_expiry: Seconds = Field(3600.0, description="Seconds the broker keeps commands for a disconnected "
                                                        "gateway (they are then judged by their age).")
