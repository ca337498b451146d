"""Load and validate the whole configuration: main file, catalogue, device files and profiles.

Validation happens here, once. Every problem found is collected as a ConfigIssue
naming file, line, column and key path, and all of them are raised together as
one ConfigError. What comes out (`GatewayConfig`) is trusted by the rest of the
daemon.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import glob
import itertools
import os
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

import drivers
from drivers.registry import Protocol, ProtocolUnavailable, protocols
from gateway.config.catalogues import read_catalogues
from gateway.config.errors import ConfigError, ConfigIssue, Location, format_path, suggest
from gateway.config.resolve import Resolver
from gateway.config.yamlsource import (
    FromEnvironment,
    LocatedDict,
    LocatedList,
    YamlLoadError,
    load_yaml,
    located_dict,
)
from gateway.model.catalogue import Catalogue
from gateway.model.devices import DeviceBase
from gateway.model.driver import LinkContext
from gateway.model.resolved import ATTRIBUTES_SUFFIX, AttributeSource, ResolvedAsset, ResolvedDevice
from gateway.model.schema import ConfigPath
from gateway.model.settings import MainFile

_M = TypeVar("_M", bound=BaseModel)
ATTRIBUTE_INTERVAL = 3600.0  # seconds between two reads of a device's attributes, unless it says
_SECRET_KEYS = ("password", "key_password", "passphrase", "secret", "token")
# What a profile lists and a device may trim or extend: the kind of entry, and the key a new entry needs.
_PROFILE_LISTS = {"points": ("point", "indicator"), "attributes": ("attribute", "attribute")}
# A device's `attributes:`, `attribute_interval` and where each was written; None when it has no attributes.
Taken = tuple[LocatedList, Any, Location, Location] | None


@dataclass(frozen=True)
class GatewayConfig:
    """The validated, resolved configuration. Paths in it are absolute."""

    main_file: Path
    main: MainFile
    catalogue: Catalogue
    devices: tuple[ResolvedDevice[DeviceBase], ...]  # every configured device, enabled or not
    assets: tuple[ResolvedAsset, ...]  # every asset an enabled device feeds
    notes: tuple[ConfigIssue, ...] = ()  # what is valid but worth saying: catalogue entries an overlay overrides
    attribute_sources: tuple[AttributeSource, ...] = ()  # what enabled devices read as their assets' attributes

    @property
    def state_dir(self) -> Path:
        return self.main.gateway.state_dir

    @property
    def buffer_path(self) -> Path:
        return self.main.buffer.path or self.state_dir / "buffer.sqlite"

    @property
    def enabled_devices(self) -> list[ResolvedDevice[DeviceBase]]:
        return [device for device in self.devices if device.config.enabled]

    def device(self, device_id: str) -> ResolvedDevice[DeviceBase] | None:
        return next((d for d in self.devices if d.id == device_id), None)

    def unit_of(self, device_id: str, point: str) -> str | None:
        """The unit a point's values are taken in: its own `unit`, else its indicator's canonical unit."""
        device = self.device(device_id)
        resolved = next((p for p in device.points if p.name == point), None) if device is not None else None
        return None if resolved is None else resolved.config.unit or resolved.indicator.unit

    @property
    def link_context(self) -> LinkContext:
        """What the drivers of this configuration are lent."""
        return LinkContext(state_dir=self.state_dir, unit_of=self.unit_of)

    def with_devices(self, change: Callable[[DeviceBase], DeviceBase | None]) -> GatewayConfig:
        """This configuration with each device's settings replaced by `change(device)`, or the device left
        out where it returns None (the demo points its devices at the simulators it started)."""
        kept = {}
        for device in self.devices:
            changed = change(device.config)
            if changed is not None:
                kept[device.id] = dataclasses.replace(device, config=changed)
        assets = []
        for asset in self.assets:
            devices = tuple(kept[d.id] for d in asset.devices if d.id in kept)
            if devices:
                assets.append(dataclasses.replace(asset, devices=devices))
        readers = []  # a device's attributes are read over the device's connection, changed alike
        for source in self.attribute_sources:
            changed = change(source.config) if source.device in kept else None
            if changed is not None:
                readers.append(dataclasses.replace(source, config=changed))
        return dataclasses.replace(self, devices=tuple(kept.values()), assets=tuple(assets),
                                   attribute_sources=tuple(readers))


class _Sources(BaseModel):
    """Where the main file says the other files are: read on its own when the rest of the main file has errors."""

    model_config = ConfigDict(extra="ignore")
    catalogue: ConfigPath | list[ConfigPath] = Path("catalogue.yaml")
    profiles: ConfigPath = Path("profiles")
    include: list[str] = []

    @property
    def catalogue_files(self) -> list[Path]:
        return list(self.catalogue) if isinstance(self.catalogue, list) else [self.catalogue]


@dataclass
class _MainParts:
    main: MainFile | None  # None: it has errors (reported), the devices are checked all the same
    sources: _Sources
    inline: list[tuple[LocatedDict, str]]
    files: list[Path]


@dataclass
class _Loader:
    environ: Mapping[str, str] | None
    check_files: bool = False
    as_service: bool = False
    issues: list[ConfigIssue] = field(default_factory=list)
    main_raw: LocatedDict | None = None
    _profiles: dict[Path, LocatedDict | None] = field(default_factory=dict)
    _runnable: dict[str, bool] = field(default_factory=dict)

    # -- small helpers ------------------------------------------------------------------------------------

    def issue(self, location: Location | None, path: str, message: str) -> None:
        self.issues.append(ConfigIssue(location, path, message))

    def load(self, path: Path) -> Any:
        try:
            return load_yaml(path, self.environ)
        except YamlLoadError as exc:
            self.issues.extend(exc.issues)
            return None

    def validate(self, model: type[_M], raw: LocatedDict, prefix: Sequence[str | int] = ()) -> _M | None:
        # Relative paths inside (ConfigPath fields) are relative to the file the mapping was written in.
        context = {"base_dir": Path(raw.location.file).parent.resolve(), "check_files": self.check_files,
                   "as_service": self.as_service}
        try:
            return model.model_validate(raw, context=context)
        except ValidationError as exc:
            for error in exc.errors():
                self.issues.append(_issue_from_pydantic(model, raw, error, prefix))
            return None

    # -- the main file ------------------------------------------------------------------------------------

    def load_main(self, path: Path) -> _MainParts | None:
        """The main settings, the devices written in the main file, and the device files it includes. When the
        settings have errors, the devices are still found (from `catalogue`, `profiles` and `include` as
        written), so that one `check` reports every file's errors."""
        raw = self.load(path)
        if raw is None:
            return None
        if not isinstance(raw, LocatedDict):
            self.issue(Location(str(path), 1, 1), "", f"expected a mapping at the top, found {_kind(raw)}")
            return None
        inline_devices = raw.pop("devices", None)
        self.main_raw = raw
        main = self.validate(MainFile, raw)
        if main is not None:
            main = _absolute_paths(main, path.parent.resolve())
            sources = _Sources(catalogue=main.catalogue_files, profiles=main.profiles, include=main.include)
        else:
            try:
                sources = _Sources.model_validate(dict(raw), context={"base_dir": path.parent.resolve()})
            except ValidationError:
                return None  # those errors are reported already: nothing more can be found
        inline = self.device_entries(inline_devices, path, "devices") if inline_devices else []
        files: list[Path] = []
        for pattern in sources.include:
            matches = sorted(glob.glob(str(path.parent / pattern)))
            if not matches:
                self.issue(raw["include"].where(sources.include.index(pattern)), "include",
                           f"expected {pattern!r} to match at least one file, found none")
            files.extend(Path(match) for match in matches)
        return _MainParts(main, sources, inline, files)

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

    def device(self, raw: LocatedDict, path: str, profiles_dir: Path) -> tuple[DeviceBase | None, LocatedDict, Taken]:
        """The validated device (None when invalid), the raw mapping it came from with its profile applied, and
        its attributes (the profile's and its own), taken out of that mapping."""
        known = protocols()
        protocol = raw.get("protocol")
        if protocol is None:
            self.issue(raw.location, f"{path}.protocol",
                       f"required key missing; expected one of: {', '.join(sorted(known))}")
            return None, raw, None
        if not isinstance(protocol, str) or protocol not in known:
            self.issue(raw.where("protocol"), f"{path}.protocol",
                       f"unknown protocol {protocol!r}; expected one of: {', '.join(sorted(known))}"
                       + suggest(str(protocol), known))
            return None, raw, None
        if raw.get("drop") and "profile" not in raw:  # `drop: []` (as a dumped device has) drops nothing
            self.issue(raw.where("drop"), f"{path}.drop",
                       "`drop:` leaves out points of the device's profile; expected `profile:`, found none")
            return None, raw, None
        if "profile" in raw:
            merged = self.apply_profile(raw, path, profiles_dir)
            if merged is None:
                return None, raw, None
            raw = merged
        attributes = self.take_attributes(raw, path)
        model = known[protocol].config_model
        runnable = self.can_run(known[protocol], raw.where("protocol"), f"{path}.protocol")
        device = self.validate(model, raw, list(_path_parts(path)))
        return (device if runnable else None), raw, attributes

    def can_run(self, protocol: Protocol, where: Location, path: str) -> bool:
        """Whether this installation has the protocol's library (its driver imports), told once per protocol."""
        if protocol.name not in self._runnable:
            try:
                protocol.load(protocol.driver or protocol.bus_device or protocol.config)
                self._runnable[protocol.name] = True
            except ProtocolUnavailable as exc:
                self.issue(where, path, str(exc))
                self._runnable[protocol.name] = False
        return self._runnable[protocol.name]

    def take_attributes(self, raw: LocatedDict, path: str) -> Taken:
        """The device's `attributes:` (a list) and `attribute_interval`, taken out of its mapping: they are
        validated as a device of their own (`attribute_device`)."""
        if "attributes" not in raw:
            if "attribute_interval" in raw:
                self.issue(raw.where("attribute_interval"), f"{path}.attribute_interval",
                           "`attribute_interval` is how often `attributes:` are read again; expected `attributes:`, "
                           "found none")
                raw.pop("attribute_interval")
            return None
        where, interval_where = raw.where("attributes"), raw.where("attribute_interval")
        attributes, interval = raw.pop("attributes"), raw.pop("attribute_interval", None)
        if not isinstance(attributes, LocatedList):
            self.issue(where, f"{path}.attributes", f"expected a list of attribute points, found {_kind(attributes)}")
            return None
        return attributes, interval, where, interval_where

    def attribute_device(self, device: DeviceBase, raw: LocatedDict,
                         taken: tuple[LocatedList, Any, Location, Location], path: str) -> DeviceBase | None:
        """The device's attributes as a device of their own: the same connection settings, the attribute points
        (each `attribute:` read as a point's `indicator:`), polled every `attribute_interval` seconds."""
        attributes, interval, where, interval_where = taken
        points = LocatedList()
        points.location, points.item_locations = attributes.location, list(attributes.item_locations)
        for item in attributes:
            if isinstance(item, LocatedDict):
                renamed = {("indicator" if k == "attribute" else k): v for k, v in item.items()}
                locations = {("indicator" if k == "attribute" else k): v for k, v in item.key_locations.items()}
                points.append(located_dict(item.location, renamed, locations))
            else:
                points.append(item)
        skipped = {"points", "derived", "drop", "profile", "supervision", "poll_interval"}
        keys = {k: v for k, v in raw.items() if k not in skipped}
        keys["points"] = points
        keys["poll_interval"] = ATTRIBUTE_INTERVAL if interval is None else interval
        merged = located_dict(raw.location, keys, {**raw.key_locations, "points": where,
                                                   "poll_interval": interval_where})
        first = len(self.issues)
        validated = self.validate(type(device), merged, list(_path_parts(path)))
        for index in range(first, len(self.issues)):  # say it as the user wrote it
            issue = self.issues[index]
            fixed = issue.path.replace(f"{path}.points[", f"{path}.attributes[").replace(
                f"{path}.poll_interval", f"{path}.attribute_interval")
            if fixed.startswith(f"{path}.attributes["):
                fixed = fixed.replace("].indicator", "].attribute")
            self.issues[index] = ConfigIssue(issue.location, fixed, issue.message.replace(
                "name, indicator,", "name, attribute,"))
        if validated is None:
            return None
        return validated.model_copy(update={"id": device.id + ATTRIBUTES_SUFFIX, "supervision": None})

    def apply_profile(self, raw: LocatedDict, path: str, profiles_dir: Path) -> LocatedDict | None:
        name = raw["profile"]
        file = profiles_dir / f"{name}.yaml"
        if file not in self._profiles:
            self._profiles[file] = self.load_profile(file, raw.where("profile"), f"{path}.profile")
        profile = self._profiles[file]
        if profile is None:
            return None
        problems = len(self.issues)
        fits = _profile_protocols(profile)
        if fits and raw.get("protocol") not in fits:
            self.issue(raw.where("profile"), f"{path}.profile",
                       f"profile {name!r} fits {', '.join(fits)}; expected a device of one of those protocols, found "
                       f"{raw.get('protocol')!r} (a profile whose register map holds for other protocols lists them "
                       "in `protocols:`)")
        self.check_trimming(profile, raw, path)
        return _merge_profile(profile, raw) if len(self.issues) == problems else None

    def check_trimming(self, profile: LocatedDict, raw: LocatedDict, path: str) -> None:
        """Points and attributes the device drops or overrides must be the profile's (a new one is complete)."""
        names = {key: _names(profile.get(key)) for key in _PROFILE_LISTS}
        everything = [name for key in _PROFILE_LISTS for name in names[key]]
        dropped = raw.get("drop")
        if isinstance(dropped, LocatedList):
            for index, name in enumerate(dropped):
                if isinstance(name, str) and name not in everything:
                    self.issue(dropped.where(index), f"{path}.drop[{index}]",
                               f"profile {raw['profile']!r} has no point {name!r} to drop; expected one of: "
                               f"{', '.join(everything) or '(none)'}" + suggest(name, everything))
        dropping = set(dropped) if isinstance(dropped, LocatedList) else set()
        for key, (kind, required) in _PROFILE_LISTS.items():
            own = raw.get(key)
            for index, item in enumerate(own if isinstance(own, LocatedList) else ()):
                name = _point_name(item)
                if name is not None and name in dropping:
                    self.issue(item.where("name"), f"{path}.{key}[{index}].name",
                               f"{kind} {name!r} is both dropped (`drop:`) and overridden here; expected one of "
                               "the two")
                    continue
                if name is None or name in names[key] or required in item:
                    continue
                self.issue(item.where("name"), f"{path}.{key}[{index}].name",
                           f"{kind} {name!r} overrides no {kind} of profile {raw['profile']!r}; expected one of: "
                           f"{', '.join(names[key]) or '(none)'}{suggest(name, names[key])} (a {kind} of the "
                           f"device's own needs `{required}:`)")

    def load_profile(self, file: Path, used_at: Location, path: str) -> LocatedDict | None:
        if not _is_file(file):
            available = sorted(p.stem for p in file.parent.glob("*.yaml")) if _is_dir(file.parent) else []
            self.issue(used_at, path, f"profile {file.stem!r} not found in {file.parent}; expected one of: "
                       f"{', '.join(available) or '(none)'}" + suggest(file.stem, available))
            return None
        raw = self.load(file)
        if raw is None:
            return None
        allowed = {"profile", "manufacturer", "model", "datasheet", "protocol", "protocols", "description",
                   "defaults", "points", "attributes"}
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
        for key in ("points", "attributes"):
            if key in raw and not isinstance(raw[key], LocatedList):
                self.issue(raw.where(key), key, f"expected a list of {key}, found {_kind(raw[key])}")
        known = protocols()
        if "protocol" in raw and "protocols" in raw:
            self.issue(raw.where("protocols"), "protocols", "expected `protocol:` (one) or `protocols:` (a list), "
                       "found both")
        for key in ("protocol", "protocols"):
            if key not in raw:
                continue
            declared = raw[key] if key == "protocols" else [raw[key]]
            if not isinstance(declared, list) or not declared:
                self.issue(raw.where(key), key, f"expected a list of protocols, found {_kind(declared)}")
                continue
            for index, protocol in enumerate(declared):
                if protocol not in known:
                    where = declared.where(index) if isinstance(declared, LocatedList) else raw.where(key)
                    self.issue(where, key if key == "protocol" else f"{key}[{index}]",
                               f"unknown protocol {protocol!r}; expected one of: {', '.join(sorted(known))}"
                               + suggest(str(protocol), known))
        if "defaults" in raw and not isinstance(raw["defaults"], LocatedDict):
            self.issue(raw.where("defaults"), "defaults", f"expected a mapping, found {_kind(raw['defaults'])}")
        return raw if len(self.issues) == problems else None


def load_config(path: Path, environ: Mapping[str, str] | None = None, check_files: bool = False,
                as_service: bool = False) -> GatewayConfig:
    """Load the main file at `path` and everything it refers to, or raise ConfigError listing every issue.
    `check_files` (for `run` and `check`): the files it names (CA, keys, password files, trust directories)
    must be there and readable by the gateway, and the TLS ones must load; `as_service` (for `check`): when
    run as root, readable by the service user too."""
    loader = _Loader(environ, check_files, as_service)
    parts = loader.load_main(path)  # errors name files as the user gave them
    if parts is None:
        raise ConfigError(loader.issues)
    main, sources = parts.main, parts.sources
    catalogue, notes = read_catalogues(loader, sources.catalogue_files)
    resolver = Resolver(catalogue) if catalogue is not None else None
    # One device file at a time, so the raw YAML of a large site never sits in memory all at once.
    for entries in itertools.chain([parts.inline], (loader.device_file(file) for file in parts.files)):
        for raw, device_path in entries:
            device, merged_raw, attributes = loader.device(raw, device_path, sources.profiles)
            if device is not None and resolver is not None:
                resolver.add_device(device, merged_raw, device_path)
                if attributes is not None:
                    source = loader.attribute_device(device, merged_raw, attributes, device_path)
                    if source is not None:
                        resolver.add_attributes(device, source, attributes[0], device_path)
    if main is None or resolver is None or catalogue is None:
        raise ConfigError(loader.issues)
    resolver.check_links()
    resolver.check_derived()
    resolver.check_alarm_ids()
    resolver.check_write_guards()
    if main.lighting.circuits:
        lighting = loader.main_raw.get("lighting") if loader.main_raw is not None else None
        resolver.check_circuits(main.lighting, lighting if isinstance(lighting, LocatedDict) else None)
    issues = loader.issues + resolver.issues
    if issues:
        raise ConfigError(issues)
    return GatewayConfig(path.resolve(), main, catalogue, tuple(resolver.devices), resolver.assets(), tuple(notes),
                         tuple(resolver.attribute_sources))


def load_catalogue(*paths: Path) -> Catalogue:
    """The catalogue of these files (the first, then its overlays), or raise ConfigError listing every issue."""
    loader = _Loader(None)
    catalogue, _ = read_catalogues(loader, paths)
    if catalogue is None or loader.issues:
        raise ConfigError(loader.issues)
    return catalogue


def load_main_catalogue(path: Path, environ: Mapping[str, str] | None = None) -> tuple[Catalogue, list[ConfigIssue]]:
    """The catalogue the main file at `path` names, without its devices, and the notes on what overlays override."""
    loader = _Loader(environ)
    parts = loader.load_main(path)
    if parts is None:
        raise ConfigError(loader.issues)
    catalogue, notes = read_catalogues(loader, parts.sources.catalogue_files)
    if catalogue is None or loader.issues:
        raise ConfigError(loader.issues)
    return catalogue, notes


# -- profiles ---------------------------------------------------------------------------------------------

def _profile_protocols(profile: LocatedDict) -> list[str]:
    """The protocols a (checked) profile says it fits; empty when it does not say."""
    if "protocols" in profile:
        return [str(p) for p in profile["protocols"]]
    return [str(profile["protocol"])] if "protocol" in profile else []


def _merge_profile(profile: LocatedDict, device: LocatedDict) -> LocatedDict:
    """The device as if the profile's defaults, points and attributes had been written into it.

    The device's own keys win over the profile's defaults; the profile points and attributes it names in
    `drop:` are left out; a device point (attribute) whose name matches a profile point (attribute)
    overrides its keys; others are added. Every key keeps the location of the file it came from.
    Entries of the wrong shape are passed through untouched for validation to report.
    """
    defaults = profile.get("defaults") or located_dict(profile.location)
    merged = located_dict(device.location, {**defaults, **device}, {**defaults.key_locations, **device.key_locations})
    dropped = set(device.get("drop") or ())
    for key in _PROFILE_LISTS:
        own = device.get(key, LocatedList())
        if key in profile and isinstance(own, LocatedList):  # not a list: validation says so, at the device's key
            merged[key] = _merge_items(profile[key], own, dropped, profile.location)
            merged.key_locations.setdefault(key, profile.where(key))
    return merged


def _merge_items(profile_items: LocatedList, own_items: LocatedList, dropped: set[str],
                 fallback: Location) -> LocatedList:
    """The profile's entries less the dropped ones, each overridden by the device's entry of its name, then the
    device's entries of its own."""
    own_by_name = {_point_name(p): p for p in own_items if _point_name(p) is not None}
    items = LocatedList()
    items.location = getattr(own_items, "location", fallback)
    items.item_locations = []
    for index, item in enumerate(profile_items):
        if _point_name(item) in dropped:
            continue
        override = own_by_name.pop(_point_name(item) or "", None)
        if override is None:
            items.append(item)
            items.item_locations.append(profile_items.where(index))
        else:
            items.append(located_dict(override.location, {**item, **override},
                                      {**item.key_locations, **override.key_locations}))
            items.item_locations.append(override.location)
    for index, item in enumerate(own_items):
        name = _point_name(item)
        if name is None or name in own_by_name:  # added by the device (or malformed: validation reports it)
            items.append(item)
            items.item_locations.append(own_items.where(index))
    return items


def _names(items: Any) -> list[str]:
    """The names of a profile's points (or attributes), in order."""
    return [n for item in items if (n := _point_name(item)) is not None] if isinstance(items, LocatedList) else []


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
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):  # a model's unknown key; a record's
        key = str(loc[-1])
        allowed = _fields_at(model, loc[:-1])
        message = f"unknown key {key!r}; expected one of: {', '.join(allowed)}" + suggest(key, allowed)
    elif kind in ("missing", "missing_argument", "missing_keyword_only_argument"):
        message = "required key missing"
    else:
        message = str(error["msg"])
        message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if message.startswith("Input should be "):
            message = "expected " + message.removeprefix("Input should be ")
        found = error.get("input")
        if isinstance(found, FromEnvironment):
            message += f"; found {found.hidden()}"
        elif not isinstance(found, Mapping) and not any(s in path for s in _SECRET_KEYS):
            message += f"; found {_show(found)}"
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
        fields = _fields_of(_strip_containers(current))
        if isinstance(part, str) and fields is not None:
            field_info = fields.get(part)
            if field_info is None:
                return []
            current = field_info.annotation
    return list(_fields_of(_strip_containers(current)) or ())


def _fields_of(annotation: Any) -> dict[str, Any] | None:
    """The fields of a model or of a record (a pydantic dataclass), None for anything else."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return dict(annotation.model_fields)
    fields = getattr(annotation, "__pydantic_fields__", None) if isinstance(annotation, type) else None
    return dict(fields) if isinstance(fields, dict) else None


def _strip_containers(annotation: Any) -> Any:
    """list[X] -> X, X | None -> X, until a model class (or something else) remains."""
    for _ in range(4):
        origin = typing.get_origin(annotation)
        if origin in (list, tuple, set, typing.Union, types.UnionType, collections.abc.Sequence):
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
        "catalogue": [absolute(file) for file in main.catalogue_files], "profiles": absolute(main.profiles),
    })


def _is_file(path: Path) -> bool:
    """Path.is_file(), False also for a name the system refuses (longer than 255 bytes, say)."""
    try:
        return path.is_file()
    except OSError:
        return False


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


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


__all__ = ["ConfigError", "GatewayConfig", "drivers", "load_catalogue", "load_config", "load_main_catalogue"]
