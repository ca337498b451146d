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
    if kind in ("main", "devices"):
        _with_attributes(schema)
    return schema


def _with_attributes(schema: dict[str, Any]) -> None:
    """Every device may have `attributes:` and `attribute_interval`, which the loader validates as a reader of
    their own (gateway/config/loader.py), so they are no field of the device models: they are added here, each
    attribute as the protocol's point with `attribute:` in place of `indicator:`."""
    definitions: dict[str, Any] = schema.get("$defs", {})
    for definition in list(definitions.values()):
        properties = definition.get("properties", {})
        if "protocol" not in properties or "points" not in properties:
            continue
        reference = properties["points"].get("items", {}).get("$ref", "")
        point_name = reference.rsplit("/", 1)[-1]
        if point_name not in definitions:
            continue
        attribute_name = f"{point_name}AsAttribute"
        if attribute_name not in definitions:
            point = definitions[point_name]
            fields = {("attribute" if key == "indicator" else key): value
                      for key, value in point.get("properties", {}).items()}
            fields["attribute"] = {"type": "string", "description": "An attribute id of the catalogue."}
            definitions[attribute_name] = {
                **point, "title": attribute_name, "properties": fields,
                "required": ["attribute" if key == "indicator" else key for key in point.get("required", [])]}
        properties["attributes"] = {
            "type": "array", "items": {"$ref": f"#/$defs/{attribute_name}"},
            "description": "What describes the asset (station number, identity string ...), read at connect and "
                           "then every attribute_interval seconds and published in the asset's self-description."}
        properties["attribute_interval"] = {"type": "number", "exclusiveMinimum": 0, "default": 3600,
                                            "description": "Seconds between two reads of the attributes."}


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
            "attributes": {"type": "array", "description": "Attribute points (`attribute:` in place of "
                                                           "`indicator:`) every device of the profile reads."},
        },
        "$defs": device_schema.get("$defs", {}),
    }
