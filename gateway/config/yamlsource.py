"""YAML loading that remembers where every key and value came from.

Mappings load as `LocatedDict` and sequences as `LocatedList`; both remember
the file, line and column of each entry, so any later validation error can be
traced back to the exact place in the file the user edited. `${NAME}` in a
string is replaced by the environment variable NAME (secrets stay out of YAML).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from gateway.config.errors import ConfigIssue, Location

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class LocatedDict(dict[str, Any]):
    """A dict that knows where it and each of its keys stood in a file."""

    location: Location
    key_locations: dict[str, Location]

    def where(self, key: str) -> Location:
        return self.key_locations.get(key, self.location)


class LocatedList(list[Any]):
    """A list that knows where it and each of its items stood in a file."""

    location: Location
    item_locations: list[Location]

    def where(self, index: int) -> Location:
        return self.item_locations[index] if 0 <= index < len(self.item_locations) else self.location


def located_dict(location: Location, items: Mapping[str, Any] | None = None,
                 key_locations: Mapping[str, Location] | None = None) -> LocatedDict:
    result = LocatedDict(items or {})
    result.location = location
    result.key_locations = dict(key_locations or {})
    return result


class YamlLoadError(Exception):
    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("; ".join(str(i) for i in issues))


def _mark(file: str, node: yaml.Node) -> Location:
    return Location(file, node.start_mark.line + 1, node.start_mark.column + 1)


# libyaml's parser when PyYAML was built with it: several times faster and far lighter on large files.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Builder:
    def __init__(self, file: str, loader: yaml.SafeLoader, environ: Mapping[str, str]) -> None:
        self.file = file
        self.loader = loader
        self.environ = environ
        self.issues: list[ConfigIssue] = []

    def build(self, node: yaml.Node, path: str) -> Any:
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            items = LocatedList(self.build(child, f"{path}[{i}]") for i, child in enumerate(node.value))
            items.location = _mark(self.file, node)
            items.item_locations = [_mark(self.file, child) for child in node.value]
            return items
        value = self.loader.construct_object(node, deep=True)
        if isinstance(value, str):
            return self._expand_env(value, node, path)
        return value

    def _mapping(self, node: yaml.MappingNode, path: str) -> LocatedDict:
        self.loader.flatten_mapping(node)  # resolve YAML merge keys (<<)
        result = located_dict(_mark(self.file, node))
        for key_node, value_node in node.value:
            key = self.loader.construct_object(key_node, deep=True)
            key_text = str(key)
            child_path = f"{path}.{key_text}" if path else key_text
            if key_text in result:
                self.issues.append(ConfigIssue(
                    _mark(self.file, key_node), child_path,
                    "duplicate key; expected each key once in a mapping, found it again"))
                continue
            result[key_text] = self.build(value_node, child_path)
            result.key_locations[key_text] = _mark(self.file, key_node)
        return result

    def _expand_env(self, text: str, node: yaml.Node, path: str) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in self.environ:
                self.issues.append(ConfigIssue(
                    _mark(self.file, node), path,
                    f"expected environment variable {name} to be set (referenced as ${{{name}}}), found it unset"))
                return ""
            return self.environ[name]

        return _ENV_REFERENCE.sub(replace, text)


def load_yaml(path: Path, environ: Mapping[str, str] | None = None) -> Any:
    """Parse one YAML file into located containers, or raise YamlLoadError."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise YamlLoadError([ConfigIssue(None, "", f"cannot read {file}: {exc.strerror or exc}")]) from exc
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return located_dict(Location(file, 1, 1))
        builder = _Builder(file, loader, os.environ if environ is None else environ)
        data = builder.build(node, "")
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        location = Location(file, mark.line + 1, mark.column + 1) if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise YamlLoadError([ConfigIssue(location, "", f"YAML syntax: {problem}")]) from exc
    except yaml.YAMLError as exc:
        raise YamlLoadError([ConfigIssue(Location(file, 1, 1), "", f"YAML syntax: {exc}")]) from exc
    finally:
        loader.dispose()
    if builder.issues:
        raise YamlLoadError(builder.issues)
    return data
