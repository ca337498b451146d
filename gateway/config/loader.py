"""Load and validate the whole configuration: main file, catalogue, device files and profiles.

Validation happens here, once. Every problem found is collected as a ConfigIssue
naming file, line, column and key path, and all of them are raised together as
one ConfigError. What comes out (`GatewayConfig`) is trusted by the rest of the
daemon.
"""

from __future__ import annotations

import glob
import itertools
import os
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

import drivers
from drivers.registry import protocols
from gateway.config.errors import ConfigError, ConfigIssue, Location, format_path, suggest
from gateway.config.yamlsource import LocatedDict, LocatedList, YamlLoadError, load_yaml, located_dict
from gateway.model import units
from gateway.model.catalogue import Catalogue
from gateway.model.devices import DeviceBase
from gateway.model.settings import MainFile

_SECRET_KEYS = ("password", "key_password", "passphrase", "secret", "token")


@dataclass(frozen=True)
class GatewayConfig:
    """The validated configuration. Paths in it are absolute."""

    main_file: Path
    main: MainFile
    catalogue: Catalogue
    devices: list[DeviceBase]

    @property
    def state_dir(self) -> Path:
        return self.main.gateway.state_dir

    @property
    def buffer_path(self) -> Path:
        return self.main.buffer.path or self.state_dir / "buffer.sqlite"

    def device(self, device_id: str) -> DeviceBase | None:
        return next((d for d in self.devices if d.id == device_id), None)


@dataclass
class _Loader:
    environ: Mapping[str, str] | None
    issues: list[ConfigIssue] = field(default_factory=list)
    _profiles: dict[Path, LocatedDict | None] = field(default_factory=dict)
    # What the whole-configuration checks have seen so far (first place each id was used).
    _device_ids: dict[str, str] = field(default_factory=dict)
    _assets: dict[str, tuple[Any, str]] = field(default_factory=dict)
    _fed: dict[tuple[str, str], str] = field(default_factory=dict)
    # Where each valid device was written (its keys' locations and its path), for checks across devices.
    _written: dict[str, tuple[LocatedDict, str]] = field(default_factory=dict)
    _derived_written: dict[str, Any] = field(default_factory=dict)  # device id -> its raw `derived:` list

    # -- small helpers ------------------------------------------------------------------------------------

    def issue(self, location: Location | None, path: str, message: str) -> None:
        self.issues.append(ConfigIssue(location, path, message))

    def load(self, path: Path) -> Any:
        try:
            return load_yaml(path, self.environ)
        except YamlLoadError as exc:
            self.issues.extend(exc.issues)
            return None

    def validate(self, model: type[BaseModel], raw: LocatedDict, prefix: Sequence[str | int] = ()) -> Any:
        # Relative paths inside (ConfigPath fields) are relative to the file the mapping was written in.
        context = {"base_dir": Path(raw.location.file).parent.resolve()}
        try:
            return model.model_validate(raw, context=context)
        except ValidationError as exc:
            for error in exc.errors():
                self.issues.append(_issue_from_pydantic(model, raw, error, prefix))
            return None

    # -- the main file ------------------------------------------------------------------------------------

    def load_main(self, path: Path) -> tuple[MainFile | None, list[tuple[LocatedDict, str]], list[Path]]:
        """The main settings, the devices written in the main file, and the device files it includes."""
        raw = self.load(path)
        if raw is None:
            return None, [], []
        if not isinstance(raw, LocatedDict):
            self.issue(Location(str(path), 1, 1), "", f"expected a mapping at the top, found {_kind(raw)}")
            return None, [], []
        inline_devices = raw.pop("devices", None)
        main = self.validate(MainFile, raw)
        if main is None:
            return None, [], []
        main = _absolute_paths(main, path.parent.resolve())
        inline = self.device_entries(inline_devices, path, "devices") if inline_devices else []
        files: list[Path] = []
        for pattern in main.include:
            matches = sorted(glob.glob(str(path.parent / pattern)))
            if not matches:
                self.issue(raw["include"].where(main.include.index(pattern)), "include",
                           f"expected {pattern!r} to match at least one file, found none")
            files.extend(Path(match) for match in matches)
        return main, inline, files

    def device_file(self, path: Path) -> list[tuple[LocatedDict, str]]:
        raw = self.load(path)
        if raw is None:
            return []
        if not isinstance(raw, LocatedDict) or set(raw) != {"devices"}:
            found = _kind(raw) if not isinstance(raw, LocatedDict) else f"keys {', '.join(map(str, raw))}"
            self.issue(getattr(raw, "location", Location(str(path), 1, 1)), "",
                       f"expected a device file with one top-level key `devices:` (a list), found {found}")
            return []
        return self.device_entries(raw["devices"], path, "devices")

    def device_entries(self, raw: Any, path: Path, key: str) -> list[tuple[LocatedDict, str]]:
        if not isinstance(raw, LocatedList):
            self.issue(getattr(raw, "location", Location(str(path), 1, 1)), key,
                       f"expected a list of devices, found {_kind(raw)}")
            return []
        entries = []
        for index, item in enumerate(raw):
            if isinstance(item, LocatedDict):
                entries.append((item, f"{key}[{index}]"))
            else:
                self.issue(raw.where(index), f"{key}[{index}]", f"expected a device (a mapping), found {_kind(item)}")
        return entries

    # -- devices ------------------------------------------------------------------------------------------

    def device(self, raw: LocatedDict, path: str, profiles_dir: Path) -> tuple[DeviceBase | None, LocatedDict]:
        """The validated device (None when invalid) and the raw mapping it came from, profile applied."""
        known = protocols()
        protocol = raw.get("protocol")
        if protocol is None:
            self.issue(raw.location, f"{path}.protocol",
                       f"required key missing; expected one of: {', '.join(sorted(known))}")
            return None, raw
        if not isinstance(protocol, str) or protocol not in known:
            self.issue(raw.where("protocol"), f"{path}.protocol",
                       f"unknown protocol {protocol!r}; expected one of: {', '.join(sorted(known))}"
                       + suggest(str(protocol), known))
            return None, raw
        if "profile" in raw:
            merged = self.apply_profile(raw, path, profiles_dir)
            if merged is None:
                return None, raw
            raw = merged
        model = known[protocol].config_model
        return self.validate(model, raw, list(_path_parts(path))), raw

    def apply_profile(self, raw: LocatedDict, path: str, profiles_dir: Path) -> LocatedDict | None:
        name = raw["profile"]
        file = profiles_dir / f"{name}.yaml"
        if file not in self._profiles:
            self._profiles[file] = self.load_profile(file, raw.where("profile"), f"{path}.profile")
        profile = self._profiles[file]
        return None if profile is None else _merge_profile(profile, raw)

    def load_profile(self, file: Path, used_at: Location, path: str) -> LocatedDict | None:
        if not file.is_file():
            available = sorted(p.stem for p in file.parent.glob("*.yaml"))
            self.issue(used_at, path, f"profile {file.stem!r} not found in {file.parent}; expected one of: "
                       f"{', '.join(available) or '(none)'}" + suggest(file.stem, available))
            return None
        raw = self.load(file)
        if raw is None:
            return None
        allowed = {"profile", "manufacturer", "model", "datasheet", "protocol", "description", "defaults", "points"}
        problems = len(self.issues)
        if not isinstance(raw, LocatedDict):
            self.issue(Location(str(file), 1, 1), "", f"expected a profile mapping, found {_kind(raw)}")
            return None
        for key in raw:
            if key not in allowed:
                self.issue(raw.where(key), key, f"unknown key {key!r} in a profile; expected one of: "
                           f"{', '.join(sorted(allowed))}" + suggest(key, allowed))
        if raw.get("profile") != file.stem:
            self.issue(raw.where("profile"), "profile",
                       f"expected the profile name {file.stem!r} (the file name), found {raw.get('profile')!r}")
        if "points" in raw and not isinstance(raw["points"], LocatedList):
            self.issue(raw.where("points"), "points", f"expected a list of points, found {_kind(raw['points'])}")
        if "defaults" in raw and not isinstance(raw["defaults"], LocatedDict):
            self.issue(raw.where("defaults"), "defaults", f"expected a mapping, found {_kind(raw['defaults'])}")
        return raw if len(self.issues) == problems else None

    # -- whole-configuration checks ------------------------------------------------------------------------

    def check_device(self, device: DeviceBase, raw: LocatedDict, path: str, catalogue: Catalogue) -> None:
        """Checks that need the catalogue or the devices seen before this one."""
        if device.id in self._device_ids:
            self.issue(raw.where("id"), f"{path}.id",
                       f"duplicate device id {device.id!r}; expected unique ids, "
                       f"first used at {self._device_ids[device.id]}")
        self._device_ids.setdefault(device.id, str(raw.where("id")))
        self._written.setdefault(device.id, (located_dict(raw.location, key_locations=raw.key_locations), path))
        if device.derived:
            self._derived_written[device.id] = raw.get("derived")
        self.check_asset(device, raw, path, catalogue)
        self.check_points(device, raw, path, catalogue)

    def check_derived(self, devices: Sequence[DeviceBase], catalogue: Catalogue) -> None:
        """Derived indicators must be in the catalogue and computed from indicators their asset has."""
        available: dict[str, set[str]] = {}
        for (asset_id, indicator_id) in self._fed:
            available.setdefault(asset_id, set()).add(indicator_id)
        for device in devices:
            for rule in device.derived:
                if catalogue.indicator(rule.indicator) is not None:
                    available.setdefault(device.asset.id, set()).add(rule.indicator)
        for device in devices:
            written = self._derived_written.get(device.id)
            _, path = self._written[device.id]
            for index, rule in enumerate(device.derived):
                entry = written[index] if isinstance(written, LocatedList) else None
                where = entry.where("indicator") if isinstance(entry, LocatedDict) else None
                rule_path = f"{path}.derived[{index}]"
                if catalogue.indicator(rule.indicator) is None:
                    self.issue(where, f"{rule_path}.indicator",
                               f"unknown indicator {rule.indicator!r}; expected an indicator id from the catalogue"
                               + suggest(rule.indicator, [i.id for i in catalogue.indicators]))
                has = available.get(device.asset.id, set())
                for name in sorted(rule.inputs() - has):
                    self.issue(where, rule_path,
                               f"input {name!r} is not an indicator of asset {device.asset.id!r}; expected one of: "
                               f"{', '.join(sorted(has))}" + suggest(name, has))

    def check_processing(self, devices: Sequence[DeviceBase], catalogue: Catalogue) -> None:
        """Build the processing rules once, as the gateway will, so what fails there fails in `check`."""
        from gateway.processing import Processor, derived_by_asset

        try:
            Processor(catalogue, devices, derived=derived_by_asset(devices))
        except ValueError as exc:
            self.issue(None, "processing", str(exc))

    def check_links(self, devices: Sequence[DeviceBase]) -> None:
        """Devices sharing a link (a serial port, a TCP gateway) must agree; their protocol says how."""
        by_link: dict[str, list[DeviceBase]] = {}
        for device in devices:
            if device.enabled:
                by_link.setdefault(device.link_id(), []).append(device)
        for group in by_link.values():
            for device, key, problem in type(group[0]).link_conflicts(group):
                where, path = self._written[device.id]
                self.issue(where.where(key), f"{path}.{key}", problem)

    def check_asset(self, device: DeviceBase, raw: LocatedDict, path: str, catalogue: Catalogue) -> None:
        assets = self._assets
        asset = device.asset
        where = raw["asset"]
        if catalogue.asset_type(asset.type) is None:
            names = [t.id for t in catalogue.asset_types]
            self.issue(where.where("type"), f"{path}.asset.type",
                       f"unknown asset type {asset.type!r}; expected one from the catalogue"
                       + suggest(asset.type, names))
        if asset.id in assets and assets[asset.id][0] != (asset.domain, asset.site, asset.type):
            self.issue(where.location, f"{path}.asset",
                       f"asset {asset.id!r} is described differently at {assets[asset.id][1]}; "
                       "expected the same domain, site and type wherever an asset appears")
        assets.setdefault(asset.id, ((asset.domain, asset.site, asset.type), str(where.location)))
        if not any(d.id == asset.domain for d in catalogue.domains):
            names = [d.id for d in catalogue.domains]
            self.issue(where.where("domain"), f"{path}.asset.domain",
                       f"unknown domain {asset.domain!r}" + suggest(asset.domain, names))

    def check_points(self, device: DeviceBase, raw: LocatedDict, path: str, catalogue: Catalogue) -> None:
        fed = self._fed
        names: set[str] = set()
        raw_points = raw.get("points")
        for index, point in enumerate(device.points):
            point_raw = raw_points[index] if isinstance(raw_points, LocatedList) else raw
            point_path = f"{path}.points[{index}]"
            if point.name in names:
                self.issue(point_raw.where("name"), f"{point_path}.name", f"duplicate point name {point.name!r}")
            names.add(point.name)
            indicator = catalogue.indicator(point.indicator)
            if indicator is None:
                self.issue(point_raw.where("indicator"), f"{point_path}.indicator",
                           f"unknown indicator {point.indicator!r}; expected an indicator id from the catalogue"
                           + suggest(point.indicator, [i.id for i in catalogue.indicators]))
                continue
            source_unit = point.unit or indicator.unit
            try:
                units.conversion(source_unit, indicator.unit)
            except units.UnitError as exc:
                self.issue(point_raw.where("unit"), f"{point_path}.unit",
                           f"{exc}; indicator {indicator.id!r} is measured in {indicator.unit}")
            feeds = (device.asset.id, indicator.id)
            if feeds in fed:
                self.issue(point_raw.where("indicator"), f"{point_path}.indicator",
                           f"indicator {indicator.id!r} of asset {device.asset.id!r} is already fed by {fed[feeds]}; "
                           "expected one source per indicator of an asset")
            fed.setdefault(feeds, f"device {device.id!r} point {point.name!r}")


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Load the main file at `path` and everything it refers to, or raise ConfigError listing every issue."""
    loader = _Loader(environ)
    main, inline, files = loader.load_main(path)  # errors name files as the user gave them
    if main is None:
        raise ConfigError(loader.issues)
    catalogue = _load_catalogue(loader, main.catalogue)
    devices: list[DeviceBase] = []
    # One device file at a time, so the raw YAML of a large site never sits in memory all at once.
    for entries in itertools.chain([inline], (loader.device_file(file) for file in files)):
        for raw, device_path in entries:
            device, merged_raw = loader.device(raw, device_path, main.profiles)
            if device is not None:
                devices.append(device)
                if catalogue is not None:
                    loader.check_device(device, merged_raw, device_path, catalogue)
    if catalogue is not None:
        loader.check_links(devices)
        loader.check_derived(devices, catalogue)
    if not loader.issues and catalogue is not None:
        loader.check_processing(devices, catalogue)
    if loader.issues or catalogue is None:
        raise ConfigError(loader.issues)
    return GatewayConfig(path.resolve(), main, catalogue, devices)


def load_catalogue(path: Path) -> Catalogue:
    loader = _Loader(None)
    catalogue = _load_catalogue(loader, path)
    if catalogue is None:
        raise ConfigError(loader.issues)
    return catalogue


def _load_catalogue(loader: _Loader, path: Path) -> Catalogue | None:
    raw = loader.load(path)
    if raw is None:
        return None
    if not isinstance(raw, LocatedDict):
        loader.issue(Location(str(path), 1, 1), "", f"expected the catalogue mapping, found {_kind(raw)}")
        return None
    return loader.validate(Catalogue, raw)  # type: ignore[no-any-return]


# -- profiles ---------------------------------------------------------------------------------------------

def _merge_profile(profile: LocatedDict, device: LocatedDict) -> LocatedDict:
    """The device as if the profile's defaults and points had been written into it.

    The device's own keys win over the profile's defaults; a device point whose
    name matches a profile point overrides that point's keys; other device
    points are added. Every key keeps the location of the file it came from.
    Entries of the wrong shape are passed through untouched for validation to report.
    """
    defaults = profile.get("defaults") or located_dict(profile.location)
    merged = located_dict(device.location, {**defaults, **device}, {**defaults.key_locations, **device.key_locations})
    own_points = device.get("points", LocatedList())
    if not isinstance(own_points, LocatedList):
        return merged  # not a list: validation says so, at the device's `points:`
    own_by_name = {_point_name(p): p for p in own_points if _point_name(p) is not None}
    points = LocatedList()
    points.location = getattr(own_points, "location", profile.location)
    points.item_locations = []
    profile_points = profile.get("points") or LocatedList()
    for index, point in enumerate(profile_points):
        override = own_by_name.pop(_point_name(point) or "", None)
        if override is None:
            points.append(point)
            points.item_locations.append(profile_points.where(index))
        else:
            points.append(located_dict(override.location, {**point, **override},
                                       {**point.key_locations, **override.key_locations}))
            points.item_locations.append(override.location)
    for index, point in enumerate(own_points):
        name = _point_name(point)
        if name is None or name in own_by_name:  # added by the device (or malformed: validation reports it)
            points.append(point)
            points.item_locations.append(own_points.where(index))
    merged["points"] = points
    return merged


def _point_name(point: Any) -> str | None:
    """The name of a point mapping, or None when it is not a mapping with a string name."""
    if isinstance(point, LocatedDict) and isinstance(point.get("name"), str):
        return str(point["name"])
    return None


# -- pydantic errors, located -------------------------------------------------------------------------------

def _issue_from_pydantic(model: type[BaseModel], raw: LocatedDict, error: Any,
                         prefix: Sequence[str | int]) -> ConfigIssue:
    loc = tuple(error["loc"])
    location = _locate(raw, loc)
    path = format_path([*prefix, *loc])
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        allowed = _fields_at(model, loc[:-1])
        message = f"unknown key {key!r}; expected one of: {', '.join(allowed)}" + suggest(key, allowed)
    elif kind == "missing":
        message = "required key missing"
    else:
        message = str(error["msg"])
        message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if message.startswith("Input should be "):
            message = "expected " + message.removeprefix("Input should be ")
        if not isinstance(error.get("input"), Mapping) and not any(s in path for s in _SECRET_KEYS):
            message += f"; found {_show(error.get('input'))}"
    return ConfigIssue(location, path, message)


def _locate(raw: Any, loc: tuple[Any, ...]) -> Location | None:
    """The location of the deepest entry of `loc` that exists in the raw YAML (a missing key: its parent)."""
    node, location = raw, getattr(raw, "location", None)
    for part in loc:
        if not _has_child(node, part):
            break
        location, node = node.where(part), node[part]
    return location


def _has_child(node: Any, part: Any) -> bool:
    if isinstance(node, LocatedDict):
        return isinstance(part, str) and part in node
    if isinstance(node, LocatedList):
        return isinstance(part, int) and 0 <= part < len(node)
    return False


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at `loc` inside `model`, found by following the field annotations."""
    current: Any = model
    for part in loc:
        current = _strip_containers(current)
        if isinstance(part, str) and isinstance(current, type) and issubclass(current, BaseModel):
            field_info = current.model_fields.get(part)
            if field_info is None:
                return []
            current = field_info.annotation
    current = _strip_containers(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _strip_containers(annotation: Any) -> Any:
    """list[X] -> X, X | None -> X, until a model class (or something else) remains."""
    for _ in range(4):
        origin = typing.get_origin(annotation)
        if origin in (list, tuple, set, typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            annotation = models[0] if models else (args[0] if args else annotation)
        else:
            break
    return annotation


def _absolute_paths(main: MainFile, base: Path) -> MainFile:
    def absolute(path: Path) -> Path:
        return Path(os.path.normpath(base / path))

    gateway = main.gateway.model_copy(update={"state_dir": absolute(main.gateway.state_dir)})
    buffer = main.buffer
    if buffer.path is not None:
        buffer = buffer.model_copy(update={"path": gateway.state_dir / buffer.path})
    return main.model_copy(update={
        "gateway": gateway, "buffer": buffer,
        "catalogue": absolute(main.catalogue), "profiles": absolute(main.profiles),
    })


def _path_parts(path: str) -> Iterator[str | int]:
    for chunk in path.replace("]", "").split("."):
        name, _, index = chunk.partition("[")
        yield name
        if index:
            yield int(index)


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {_show(value)}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = ["ConfigError", "GatewayConfig", "drivers", "load_catalogue", "load_config"]
