"""JSON Schema of the configuration files, for editors (YAML language servers) to validate as you type."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BaseModel, Field, TypeAdapter, create_model

import drivers  # noqa: F401  (registers the protocols)
from drivers.registry import protocols
from gateway.model.catalogue import CatalogueFile
from gateway.model.settings import MainFile


def _device_union() -> Any:
    models = tuple(p.config_model for p in protocols().values())
    if len(models) == 1:
        return models[0]
    return Annotated[Union[models], Field(discriminator="protocol")]  # noqa: UP007  (built at run time)


def json_schema(kind: str = "main") -> dict[str, Any]:
    device = _device_union()
    if kind == "profile":
        return _profile_schema(device)
    schema = _model_for(kind, device).model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def _model_for(kind: str, device: Any) -> type[BaseModel]:
    if kind == "main":
        return create_model("MainConfigurationFile", __base__=MainFile,
                            devices=(list[device], Field(default_factory=list)))
    if kind == "devices":
        return create_model("DeviceFile", devices=(list[device], ...))
    if kind == "catalogue":
        return CatalogueFile  # the shipped catalogue and its overlays alike
    raise ValueError(f"unknown schema kind {kind!r}")


def _profile_schema(device: Any) -> dict[str, Any]:
    device_schema = TypeAdapter(device).json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "DeviceProfile",
        "type": "object",
        "additionalProperties": False,
        "required": ["profile", "points"],
        "properties": {
            "profile": {"type": "string", "description": "Equals the file name without .yaml."},
            "manufacturer": {"type": "string"},
            "model": {"type": "string"},
            "datasheet": {"type": "string", "description": "The document the register map comes from."},
            "protocol": {"type": "string", "description": "The one protocol the profile fits."},
            "protocols": {"type": "array", "items": {"type": "string"},
                          "description": "The protocols the profile fits (the same map over RTU and TCP)."},
            "description": {"type": "string"},
            "defaults": {"type": "object", "description": "Device keys the profile sets unless a device does."},
            "points": {"type": "array"},
        },
        "$defs": device_schema.get("$defs", {}),
    }
