"""From validated devices to the resolved configuration, with every check across files.

The loader hands each validated device to `Resolver.add_device` as soon as its
file is read; the resolver looks its points' indicators up, compiles their
conversions and processing rules (gateway/model/resolved.py) and keeps only the
places in the files it may still need to name. Once every file is read, the
named final checks run over the whole configuration:

- `check_links`: devices sharing a link (a serial port, a TCP gateway) agree;
- `check_derived`: derived indicators are in the catalogue and computed from indicators their asset has;
- `check_alarm_ids`: alarm ids are unique per asset;
- `check_write_guards`: a writable point's guard reads indicators its asset has.

Every problem is a ConfigIssue with file, line, column and key path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.config.errors import ConfigIssue, Location, suggest
from gateway.config.yamlsource import LocatedDict, LocatedList, located_dict
from gateway.model import units
from gateway.model.catalogue import Attribute, Catalogue, IndicatorKind
from gateway.model.devices import DeviceBase, PointBase
from gateway.model.lighting import LightingSettings
from gateway.model.readings import series_key
from gateway.model.resolved import (
    AttributeSource,
    PointError,
    ResolvedAsset,
    ResolvedDevice,
    ResolvedPoint,
    asset_ref,
    assets_of,
    resolve_point,
)
from gateway.model.rules import AlarmRule


@dataclass(slots=True)
class _Written:
    """Where one device was written: its keys, its path, and the places the final checks may name."""

    keys: LocatedDict  # the device's own keys (shallow: no nested values kept)
    path: str
    processing: dict[str, Location] = field(default_factory=dict)  # point name -> its `processing:` key
    derived: list[Location | None] = field(default_factory=list)  # each derived entry's `indicator:` key
    guards: dict[str, Location] = field(default_factory=dict)  # point name -> its `write:` key


@dataclass
class Resolver:
    catalogue: Catalogue
    issues: list[ConfigIssue] = field(default_factory=list)
    devices: list[ResolvedDevice[DeviceBase]] = field(default_factory=list)
    _written: dict[str, _Written] = field(default_factory=dict)
    attribute_sources: list[AttributeSource] = field(default_factory=list)
    _attributes: dict[tuple[str, str], str] = field(default_factory=dict)  # (asset, attribute) -> who reads it
    _device_ids: dict[str, str] = field(default_factory=dict)  # first place each id was used
    _assets: dict[str, tuple[tuple[str, str, str], str]] = field(default_factory=dict)
    # (asset, indicator, instance) -> who feeds it; instance None: the indicator has one source on the asset.
    # Flat, not nested per indicator: a large site has a source per point, and this is what it holds.
    _fed: dict[tuple[str, str, str | None], str] = field(default_factory=dict)
    _instanced: set[tuple[str, str]] = field(default_factory=set)  # (asset, indicator) fed with instances
    _second_sources: set[tuple[str, str]] = field(default_factory=set)  # (device, point) reported as a duplicate

    def issue(self, location: Location | None, path: str, message: str) -> None:
        self.issues.append(ConfigIssue(location, path, message))

    # -- one device at a time -------------------------------------------------------------------------------

    def add_device(self, device: DeviceBase, raw: LocatedDict, path: str) -> None:
        """Resolve one validated device (`raw` is the mapping it came from, profile applied)."""
        duplicate = device.id in self._device_ids
        if duplicate:
            self.issue(raw.where("id"), f"{path}.id", f"duplicate device id {device.id!r}; expected unique ids, "
                                                      f"first used at {self._device_ids[device.id]}")
        self._device_ids.setdefault(device.id, str(raw.where("id")))
        written = _Written(located_dict(raw.location, key_locations=raw.key_locations), path)
        self._check_asset(device, raw, path)
        points = self._resolve_points(device, raw, path, written)  # its other problems are reported all the same
        if duplicate:
            return
        self._written[device.id] = written
        self._note_derived(device, raw, written)
        if points is not None:
            self.devices.append(ResolvedDevice(device, asset_ref(device), points))

    def add_attributes(self, device: DeviceBase, source: DeviceBase, raw: LocatedList, path: str) -> None:
        """The attributes a device reads for its asset: each in the catalogue, each once per asset."""
        attributes: list[tuple[str, Attribute]] = []
        for index, point in enumerate(source.points):
            entry = raw[index] if index < len(raw) and isinstance(raw[index], LocatedDict) else None
            where = entry.where("attribute") if entry is not None else raw.where(index)
            attribute = self.catalogue.attribute(point.indicator)
            if attribute is None:
                self.issue(where, f"{path}.attributes[{index}].attribute",
                           f"unknown attribute {point.indicator!r}; expected an attribute id from the catalogue"
                           + suggest(point.indicator, [a.id for a in self.catalogue.attributes]))
                continue
            first = self._attributes.setdefault((device.asset.id, attribute.id), f"device {device.id!r}")
            if first != f"device {device.id!r}" or any(a.id == attribute.id for _, a in attributes):
                self.issue(where, f"{path}.attributes[{index}].attribute",
                           f"attribute {attribute.id!r} of asset {device.asset.id!r} is already read by {first}; "
                           "expected each attribute of an asset from one source")
                continue
            attributes.append((point.name, attribute))
        if device.enabled and device.id in self._written and len(attributes) == len(source.points):
            self.attribute_sources.append(AttributeSource(source, device.id, asset_ref(device), tuple(attributes)))

    def _check_asset(self, device: DeviceBase, raw: LocatedDict, path: str) -> None:
        catalogue, asset, where = self.catalogue, device.asset, raw["asset"]
        if catalogue.asset_type(asset.type) is None:
            self.issue(where.where("type"), f"{path}.asset.type", f"unknown asset type {asset.type!r}; expected one "
                       "from the catalogue" + suggest(asset.type, [t.id for t in catalogue.asset_types]))
        if not any(d.id == asset.domain for d in catalogue.domains):
            self.issue(where.where("domain"), f"{path}.asset.domain", f"unknown domain {asset.domain!r}"
                       + suggest(asset.domain, [d.id for d in catalogue.domains]))
        described = (asset.domain, asset.site, asset.type)
        first = self._assets.setdefault(asset.id, (described, str(where.location)))
        if first[0] != described:
            self.issue(where.location, f"{path}.asset", f"asset {asset.id!r} is described differently at {first[1]}; "
                       "expected the same domain, site and type wherever an asset appears")

    def _resolve_points(self, device: DeviceBase, raw: LocatedDict, path: str,
                        written: _Written) -> tuple[ResolvedPoint, ...] | None:
        """The device's resolved points, or None when one of them cannot be resolved (each problem an issue)."""
        resolved: list[ResolvedPoint] = []
        names: set[str] = set()
        raw_points = raw.get("points")
        for index, point in enumerate(device.points):
            point_raw = raw_points[index] if isinstance(raw_points, LocatedList) else raw
            point_path = f"{path}.points[{index}]"
            if point.name in names:
                self.issue(point_raw.where("name"), f"{point_path}.name", f"duplicate point name {point.name!r}")
            names.add(point.name)
            if point.processing is not None and isinstance(point_raw, LocatedDict):
                written.processing[point.name] = point_raw.where("processing")
            indicator = self.catalogue.indicator(point.indicator)
            if indicator is None:
                self.issue(point_raw.where("indicator"), f"{point_path}.indicator",
                           f"unknown indicator {point.indicator!r}; expected an indicator id from the catalogue"
                           + suggest(point.indicator, [i.id for i in self.catalogue.indicators]))
                continue
            try:
                resolved.append(resolve_point(point, indicator))
            except units.UnitError as exc:
                self.issue(point_raw.where("unit"), f"{point_path}.unit",
                           f"{exc}; indicator {indicator.id!r} is measured in {indicator.unit}")
                continue
            except PointError as exc:
                self.issue(point_raw.where(exc.key), f"{point_path}.{exc.key}", str(exc))
                continue
            if point.writable and isinstance(point_raw, LocatedDict):
                self._check_writable(point, indicator.kind, point_raw, point_path, written)
            if device.enabled:
                self._one_source(device, point.name, indicator.id, point.instance, point_raw, point_path)
        return tuple(resolved) if len(resolved) == len(device.points) else None

    def _one_source(self, device: DeviceBase, point: str, indicator: str, instance: str | None,
                    point_raw: LocatedDict, point_path: str) -> None:
        """Asset, indicator and instance name one source: two points feeding the same one are an error, and so
        is an indicator fed both with and without instances (a consumer could not tell which is which)."""
        asset = device.asset.id
        key = (asset, indicator, instance)
        first = self._fed.get(key)
        plain = self._fed.get((asset, indicator, None))
        if first is not None:
            if instance is None:
                self.issue(point_raw.where("indicator"), f"{point_path}.indicator",
                           f"indicator {indicator!r} of asset {asset!r} is already fed by {first}; expected one "
                           "source per indicator of an asset, or an `instance:` on each point feeding it to keep "
                           "them apart (e.g. instance: reservoir and instance: wet-well)")
            else:
                self.issue(point_raw.where("instance"), f"{point_path}.instance",
                           f"instance {instance!r} of indicator {indicator!r} of asset {asset!r} is already fed by "
                           f"{first}; expected a different instance name for each source")
            self._second_sources.add((device.id, point))
            return
        if (instance is None and (asset, indicator) in self._instanced) or (instance is not None and plain):
            named = ", ".join(sorted({i for (a, n, i) in self._fed if a == asset and n == indicator and i is not None}
                                     | ({instance} if instance is not None else set())))
            where = "instance" if instance is not None else "indicator"
            self.issue(point_raw.where(where), f"{point_path}.{where}",
                       f"indicator {indicator!r} of asset {asset!r} is fed both with instances ({named}) and without "
                       f"({'by ' + plain if plain else 'this point'}); expected an `instance:` on every point "
                       "feeding it")
        self._fed[key] = f"device {device.id!r} point {point!r}"
        if instance is not None:
            self._instanced.add((asset, indicator))

    def _check_writable(self, point: PointBase, kind: IndicatorKind, point_raw: LocatedDict, point_path: str,
                        written: _Written) -> None:
        """A writable number says what may be written to it; a state may (a coil takes true and false)."""
        limits = point.write
        if limits is not None and limits.guard is not None:
            written.guards[point.name] = point_raw.where("write")
        if kind is IndicatorKind.MEASUREMENT and (limits is None or (limits.range is None and limits.allowed is None)):
            self.issue(point_raw.where("writable"), f"{point_path}.writable",
                       f"writable point {point.name!r} gives no write range; expected `write: {{range: [low, high]}}` "
                       f"in {point.unit or 'its unit'} (what the centre may set it to), or `allowed: [...]`")

    def _note_derived(self, device: DeviceBase, raw: LocatedDict, written: _Written) -> None:
        entries = raw.get("derived")
        for index in range(len(device.derived)):
            entry = entries[index] if isinstance(entries, LocatedList) and index < len(entries) else None
            written.derived.append(entry.where("indicator") if isinstance(entry, LocatedDict) else None)

    # -- the final checks, once every file is read --------------------------------------------------------------

    def check_links(self) -> None:
        """Devices sharing a link (a serial port, a TCP gateway) must agree; their protocol says how."""
        by_link: dict[str, list[DeviceBase]] = {}
        for device in self._enabled():
            by_link.setdefault(device.config.link_id(), []).append(device.config)
        for group in by_link.values():
            for conflicting, key, problem in type(group[0]).link_conflicts(group):
                written = self._written[conflicting.id]
                self.issue(written.keys.where(key), f"{written.path}.{key}", problem)

    def check_derived(self) -> None:
        """Derived indicators must be in the catalogue and computed from indicators their asset has."""
        available: dict[str, set[str]] = {}
        for asset_id, indicator_id, instance in self._fed:
            available.setdefault(asset_id, set()).add(series_key(indicator_id, instance))
        for device in self._enabled():
            for rule in device.config.derived:
                if self.catalogue.indicator(rule.indicator) is not None:
                    available.setdefault(device.asset.asset, set()).add(rule.indicator)
        for device in self._enabled():
            written = self._written[device.id]
            has = available.get(device.asset.asset, set())
            for index, rule in enumerate(device.config.derived):
                where, rule_path = written.derived[index], f"{written.path}.derived[{index}]"
                if self.catalogue.indicator(rule.indicator) is None:
                    self.issue(where, f"{rule_path}.indicator",
                               f"unknown indicator {rule.indicator!r}; expected an indicator id from the catalogue"
                               + suggest(rule.indicator, [i.id for i in self.catalogue.indicators]))
                for name in sorted(rule.inputs() - has):
                    sources = sorted(n for n in has if n.startswith(f"{name}["))
                    hint = (f" ({name!r} has several sources on this asset: name one, as {sources[0]!r})"
                            if sources else "")
                    self.issue(where, rule_path, f"input {name!r} is not an indicator of asset {device.asset.asset!r}; "
                               f"expected one of: {', '.join(sorted(has))}" + (hint or suggest(name, has)))

    def check_alarm_ids(self) -> None:
        """Every alarm of an asset (of its points and of its derived indicators) has an id of its own."""
        seen: dict[tuple[str, str], str] = {}
        for device in self._enabled():
            written = self._written[device.id]
            for point in device.points:
                if (device.id, point.name) in self._second_sources:
                    continue  # its alarms would be the first source's: reported as a second source already
                key = series_key(point.indicator.id, point.config.instance)
                where = written.processing.get(point.name)
                self._alarm_ids(device, key, point.rules.alarms, where, f"{written.path}.points[{point.name}]", seen)
            for index, rule in enumerate(device.config.derived):
                indicator = self.catalogue.indicator(rule.indicator)
                if indicator is not None:
                    rules = indicator.processing.overridden_by(rule.processing)
                    self._alarm_ids(device, indicator.id, rules.alarms, written.derived[index],
                                    f"{written.path}.derived[{index}]", seen)

    def _alarm_ids(self, device: ResolvedDevice[DeviceBase], indicator: str, alarms: Iterable[AlarmRule] | None,
                   where: Location | None, path: str, seen: dict[tuple[str, str], str]) -> None:
        for rule in alarms or ():
            key = (device.asset.asset, rule.alarm_id(indicator))
            if key in seen:
                self.issue(where, path, f"alarm id {key[1]!r} is used twice on asset {key[0]!r} (first by "
                           f"{seen[key]}); give the rules distinct `id:`s")
            seen.setdefault(key, path)

    def check_write_guards(self) -> None:
        """A writable point's guard is a condition over indicators its asset has."""
        available: dict[str, set[str]] = {}
        for asset_id, indicator_id, instance in self._fed:
            available.setdefault(asset_id, set()).add(series_key(indicator_id, instance))
        for device in self._enabled():
            written = self._written[device.id]
            has = available.get(device.asset.asset, set())
            for point in device.points:
                limits = point.config.write
                if limits is None or limits.guard is None:
                    continue
                for name in sorted(limits.guard_inputs() - has):
                    self.issue(written.guards.get(point.name), f"{written.path}.points[{point.name}].write.guard",
                               f"guard input {name!r} is not an indicator of asset {device.asset.asset!r}; "
                               f"expected one of: {', '.join(sorted(has))}" + suggest(name, has))

    def check_circuits(self, lighting: LightingSettings, raw: LocatedDict | None) -> None:
        """Each lighting circuit names an enabled device and one of its writable points: a state (a contactor)
        or a level in % (dimming)."""
        circuits = raw.get("circuits") if raw is not None else None
        devices = {d.id: d for d in self._enabled()}
        for index, circuit in enumerate(lighting.circuits):
            entry = circuits[index] if isinstance(circuits, LocatedList) and index < len(circuits) else None
            where = entry if isinstance(entry, LocatedDict) else None
            path = f"lighting.circuits[{index}]"
            device = devices.get(circuit.device)
            if device is None:
                self.issue(where.where("device") if where else None, f"{path}.device",
                           f"no enabled device {circuit.device!r}" + suggest(circuit.device, list(devices)))
                continue
            point = next((p for p in device.points if p.name == circuit.point), None)
            if point is None:
                self.issue(where.where("point") if where else None, f"{path}.point",
                           f"device {device.id!r} has no point {circuit.point!r}"
                           + suggest(circuit.point, [p.name for p in device.points]))
            elif not point.config.writable:
                self.issue(where.where("point") if where else None, f"{path}.point",
                           f"point {circuit.point!r} of device {device.id!r} is not `writable: true`; a circuit "
                           "switches a writable contactor coil or dimming level")
            elif point.indicator.kind is not IndicatorKind.STATE and point.indicator.unit != "%":
                self.issue(where.where("point") if where else None, f"{path}.point",
                           f"point {circuit.point!r} is {point.indicator.id!r} in {point.indicator.unit}; expected "
                           "an on/off state (a contactor) or a dimming level in %")

    # -- the result ------------------------------------------------------------------------------------------------

    def assets(self) -> tuple[ResolvedAsset, ...]:
        """Every asset an enabled device feeds, with those devices and the asset's derived indicators."""
        return assets_of(self.devices, self.catalogue)

    def _enabled(self) -> list[ResolvedDevice[DeviceBase]]:
        return [device for device in self.devices if device.config.enabled]
