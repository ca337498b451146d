"""The catalogue files: the shipped one first, then a site's or a utility's overlays, merged into one catalogue.

An overlay is a catalogue file in the same schema, validated the same way, that adds domains, asset types
and indicators. Redefining an id an earlier file defined takes `override: true` on the entry; each such
override is kept as a note that `check` prints. Ids used twice in one file, overrides of nothing, asset
types naming unknown domains or indicators: each an issue with file, line and column.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from gateway.config.errors import ConfigIssue, Location, suggest
from gateway.config.yamlsource import LocatedDict, LocatedList
from gateway.model.catalogue import AssetType, Attribute, Catalogue, CatalogueFile, Domain, Indicator, Source

_M = TypeVar("_M", bound=BaseModel)
_KINDS = (("domains", "domain"), ("asset_types", "asset type"), ("indicators", "indicator"),
          ("attributes", "attribute"))
Entry = Domain | AssetType | Indicator | Attribute


class Reader(Protocol):
    """What reading a catalogue file needs of the loader."""

    def load(self, path: Path) -> Any: ...

    def validate(self, model: type[_M], raw: LocatedDict, prefix: Sequence[str | int] = ()) -> _M | None: ...

    def issue(self, location: Location | None, path: str, message: str) -> None: ...


@dataclass
class _Merge:
    reader: Reader
    notes: list[ConfigIssue] = field(default_factory=list)
    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {kind: {} for kind, _ in _KINDS})
    asset_types_raw: dict[str, tuple[LocatedDict, str]] = field(default_factory=dict)  # id -> (raw, key path)
    sources: list[tuple[Source, CatalogueFile]] = field(default_factory=list)
    failed: bool = False

    def add_file(self, path: Path) -> None:
        raw = self.reader.load(path)
        if raw is None:
            self.failed = True
            return
        if not isinstance(raw, LocatedDict):
            self.reader.issue(Location(str(path), 1, 1), "",
                              f"expected a catalogue mapping, found {type(raw).__name__}")
            self.failed = True
            return
        written = self.reader.validate(CatalogueFile, raw)
        if written is None:
            self.failed = True
            return
        source = Source(written.name or path.stem, written.version, str(path))
        self.sources.append((source, written))
        earlier = ", ".join(s.name for s, _ in self.sources[:-1]) or "none: this is the first catalogue file"
        for kind, singular in _KINDS:
            raw_list = raw.get(kind)
            seen: dict[str, str] = {}
            for index, entry in enumerate(getattr(written, kind)):
                raw_entry = raw_list[index] if isinstance(raw_list, LocatedList) else raw
                where = raw_list.where(index) if isinstance(raw_list, LocatedList) else raw.location
                entry.came_from(source, str(where))
                at = f"{kind}[{index}]"
                if entry.id in seen:
                    self.reader.issue(raw_entry.where("id"), f"{at}.id", f"duplicate {singular} id {entry.id!r}; "
                                      f"expected each id once in a catalogue file, first at {seen[entry.id]}")
                    continue
                seen[entry.id] = str(where)
                self._add(kind, singular, entry, raw_entry, at, earlier)

    def _add(self, kind: str, singular: str, entry: Entry, raw_entry: LocatedDict, at: str, earlier: str) -> None:
        known = self.entries[kind]
        existing = known.get(entry.id)
        if existing is None and entry.override:
            self.reader.issue(raw_entry.where("override"), f"{at}.override",
                              f"{singular} {entry.id!r} overrides nothing; expected an id an earlier catalogue file "
                              f"defines (earlier files: {earlier})" + suggest(entry.id, known))
            return
        if existing is not None and not entry.override:
            origin = existing.source
            self.reader.issue(raw_entry.where("id"), f"{at}.id",
                              f"{singular} {entry.id!r} is already defined at {existing.defined_at}"
                              + (f" (catalogue {origin.name!r} version {origin.version})" if origin else "")
                              + "; expected a new id, or `override: true` on this entry to replace it")
            return
        if existing is not None and existing.source is not None:
            self.notes.append(ConfigIssue(raw_entry.where("id"), f"{at}.id",
                                          f"{singular} {entry.id!r} overrides the one of catalogue "
                                          f"{existing.source.name!r} version {existing.source.version} "
                                          f"(defined at {existing.defined_at})"))
        known[entry.id] = entry  # an override keeps the place of the entry it replaces
        if isinstance(entry, AssetType):
            self.asset_types_raw[entry.id] = (raw_entry, at)

    def check_references(self) -> None:
        """Every asset type's domain and indicators exist in the merged catalogue."""
        domains, indicators = self.entries["domains"], self.entries["indicators"]
        for type_id, asset_type in self.entries["asset_types"].items():
            assert isinstance(asset_type, AssetType)
            raw, at = self.asset_types_raw[type_id]
            if asset_type.domain not in domains:
                self.reader.issue(raw.where("domain"), f"{at}.domain",
                                  f"unknown domain {asset_type.domain!r}; expected one of: {', '.join(domains)}"
                                  + suggest(asset_type.domain, domains))
            listed = raw.get("indicators")
            for index, indicator in enumerate(asset_type.indicators):
                if indicator not in indicators:
                    where = listed.where(index) if isinstance(listed, LocatedList) else raw.location
                    self.reader.issue(where, f"{at}.indicators[{index}]",
                                      f"unknown indicator {indicator!r}; expected an indicator id from the "
                                      "catalogue files" + suggest(indicator, indicators))


def read_catalogues(reader: Reader, paths: Sequence[Path]) -> tuple[Catalogue | None, list[ConfigIssue]]:
    """The merged catalogue of `paths` (None when a file cannot be used) and the notes on what was overridden."""
    merge = _Merge(reader)
    for path in paths:
        merge.add_file(path)
    if merge.failed or not merge.sources:
        return None, merge.notes
    merge.check_references()  # problems are issues; the devices are still checked against what is there
    entries = merge.entries
    return Catalogue.merged(merge.sources, _typed(entries["domains"], Domain),
                            _typed(entries["asset_types"], AssetType),
                            _typed(entries["indicators"], Indicator),
                            _typed(entries["attributes"], Attribute)), merge.notes


_E = TypeVar("_E", Domain, AssetType, Indicator, Attribute)


def _typed(entries: dict[str, Entry], kind: type[_E]) -> list[_E]:
    return [entry for entry in entries.values() if isinstance(entry, kind)]
