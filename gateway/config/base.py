"""Typed building blocks shared by every configuration model (main file, devices, catalogue)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

# Ids that appear in MQTT topics: lower case a-z, 0-9 and '-' (Homie's rule), so
# the same ids work in every topic layout and platform downstream.
Id = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=64)]
# Point names are local to a device and never appear in topics; datasheet-like names are fine.
PointName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=96)]


class StrictModel(BaseModel):
    """Rejects unknown keys (so a misspelt key is an error, never silently ignored) and is immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
