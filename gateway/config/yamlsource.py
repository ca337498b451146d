"""YAML loading that remembers where every key and value came from.

Mappings load as `LocatedDict` and sequences as `LocatedList`; both remember
the file, line and column of each entry, so any later validation error can be
traced back to the exact place in the file the user edited. `${NAME}` in a
string is replaced by the environment variable NAME (secrets stay out of YAML).

Loading is bounded (`YamlLimits`): a file is refused, with a located error,
when it is too large, is not UTF-8 text or holds control characters, before the
YAML parser sees it.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.config.errors import ConfigIssue, Location

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class YamlLimits:
    """Bounds on one configuration file; each is far above what a real site needs.

    A large site's device file is a few hundred KB. The limits keep a wrong file
    (a log, a database, a generated monster) from taking a small gateway's memory.
    """

    max_bytes: int = 4 * 1024 * 1024  # per file as stored, files swept in by an include glob too


# The limits `load_yaml` applies when its caller passes none. The loader passes none today; a main-file
# key (say `limits.max_file_bytes`) can be wired by reading the main file with these defaults and passing
# `YamlLimits(max_bytes=...)` to every later `load_yaml` call.
LIMITS = YamlLimits()

_BOM = b"\xef\xbb\xbf"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


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


def load_yaml(path: Path, environ: Mapping[str, str] | None = None, limits: YamlLimits | None = None) -> Any:
    """Parse one YAML file into located containers, or raise YamlLoadError.

    `limits` defaults to the module's `LIMITS`, read at each call.
    """
    file = str(path)
    text = _text(_read(path, file, (limits or LIMITS).max_bytes), file)
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


# -- reading: bounded, and only text ------------------------------------------------------------------------

def _read(path: Path, file: str, max_bytes: int) -> bytes:
    """The file's bytes, refusing anything but a regular file of at most `max_bytes`."""
    try:
        # O_NONBLOCK: a FIFO swept in by a glob must not hang `check`; it is refused just below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise _unreadable(file, exc) from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _file_issue(file, "not a regular file; expected a YAML file")
        if info.st_size > max_bytes:
            raise _too_large(file, f"{info.st_size:,} bytes", max_bytes)
        data = _read_at_most(fd, max_bytes + 1)  # +1: the file may have grown since fstat
    except OSError as exc:
        raise _unreadable(file, exc) from exc
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise _too_large(file, f"more than {max_bytes:,} bytes", max_bytes)
    return data


def _read_at_most(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    while size > 0 and (chunk := os.read(fd, min(size, 1 << 20))):
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _text(data: bytes, file: str) -> str:
    """UTF-8 text (a leading BOM dropped), or a YamlLoadError naming the first byte or character at fault."""
    skipped = len(_BOM) if data.startswith(_BOM) else 0  # Windows editors write one; it is not content
    try:
        text = data[skipped:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = skipped + exc.start
        line, column = _line_column(data[skipped:offset].decode("utf-8"))
        raise _file_issue(file, f"not UTF-8 text at byte {offset} (line {line}, column {column}: byte "
                          f"0x{data[offset]:02x}); expected UTF-8 (re-save it as UTF-8, "
                          "e.g. `iconv -f GBK -t UTF-8`)") from None
    bad = yaml.reader.Reader.NON_PRINTABLE.search(text)
    if bad is not None:
        line, column = _line_column(text[:bad.start()])
        code = ord(bad.group())
        escape = f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
        raise YamlLoadError([ConfigIssue(
            Location(file, line, column), "",
            f"control character U+{code:04X} is not allowed in YAML; expected printable text (a binary "
            f"file? if the character is meant, write it as \"{escape}\" inside double quotes)")])
    return text


def _line_column(before: str) -> tuple[int, int]:
    """1-based line and column of the character that follows `before`."""
    lines = _LINE_BREAK.split(before)
    return len(lines), len(lines[-1]) + 1


def _file_issue(file: str, message: str) -> YamlLoadError:
    return YamlLoadError([ConfigIssue(None, "", f"{file}: {message}")])


def _unreadable(file: str, exc: OSError) -> YamlLoadError:
    return YamlLoadError([ConfigIssue(None, "", f"cannot read {file}: {exc.strerror or exc}")])


def _too_large(file: str, size: str, max_bytes: int) -> YamlLoadError:
    return _file_issue(file, f"{size}, larger than the {max_bytes:,} bytes a configuration file may have; "
                       "expected a smaller file (devices can be split over several files)")
