"""Typed building blocks shared by every configuration model (main file, devices, catalogue)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, TypeVar, cast, dataclass_transform

import pydantic.dataclasses
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo

from gateway.model.files import file_problem

# Ids that appear in MQTT topics: lower case a-z, 0-9 and '-' (Homie's rule), so
# the same ids work in every topic layout and platform downstream.
Id = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=64)]
# Point names are local to a device and never appear in topics; datasheet-like names are fine.
PointName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=96)]


class StrictModel(BaseModel):
    """Rejects unknown keys (so a misspelt key is an error, never silently ignored) and is immutable.
    No number may be infinite or NaN: no setting means "forever" by being infinite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


_RECORD_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra={"additionalProperties": False})
_T = TypeVar("_T")


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(Field,))
def record(cls: type[_T]) -> type[_T]:
    """A validated, immutable configuration record that a site has thousands of (a device's points): the rules
    of StrictModel, as a slotted pydantic dataclass, which takes a tenth of a model's memory."""
    made = pydantic.dataclasses.dataclass(frozen=True, slots=True, kw_only=True, config=_RECORD_CONFIG)(cls)
    # pydantic types what its decorator returns as its own dataclass protocol, not as the class it was given.
    return cast("type[_T]", made)


def check_range(low_high: tuple[float, float] | None) -> None:
    """A `range:` (of a point, an indicator, what may be written) is [low, high]: ValueError otherwise."""
    if low_high is not None and low_high[0] > low_high[1]:
        raise ValueError(f"range must be [low, high], found [{low_high[0]}, {low_high[1]}]")


# A duration in seconds. Bounded, so every one of them also fits the milliseconds the gateway counts in.
MAX_SECONDS = 366 * 86_400
Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS)]
SecondsOrZero = Annotated[float, Field(ge=0, le=MAX_SECONDS)]


def _relative_to_file(path: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    if path.is_absolute() or base is None:
        return path
    return Path(os.path.normpath(Path(base) / path))


# A file path in a configuration file: relative paths are taken relative to that file, not to the
# directory the daemon happens to start in (the loader passes the file's directory as context).
ConfigPath = Annotated[Path, AfterValidator(_relative_to_file)]


def checks_files(info: ValidationInfo) -> bool:
    """Whether this load is for `run` or `check`, which look at the files the configuration names (the other
    commands, `plan` say, do not need a CA file to be there)."""
    return bool((info.context or {}).get("check_files"))


def _as_service(info: ValidationInfo) -> bool:
    return bool((info.context or {}).get("as_service"))


def _readable_file(path: Path, info: ValidationInfo) -> Path:
    problem = file_problem(path, as_service=_as_service(info)) if checks_files(info) else None
    if problem is not None:
        raise ValueError(f"expected a file the gateway can read at {path}: {problem}")
    return path


def _readable_dir(path: Path, info: ValidationInfo) -> Path:
    problem = file_problem(path, directory=True, as_service=_as_service(info)) if checks_files(info) else None
    if problem is not None:
        raise ValueError(f"expected a directory the gateway can read at {path}: {problem}")
    return path


# A file (or directory) the gateway reads at run time, checked when the configuration is loaded for `run` or
# `check`.
ReadableFile = Annotated[Path, AfterValidator(_relative_to_file), AfterValidator(_readable_file)]
ReadableDir = Annotated[Path, AfterValidator(_relative_to_file), AfterValidator(_readable_dir)]
