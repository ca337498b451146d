"""YAML loading that remembers where every key and value came from.

Mappings load as `LocatedDict` and sequences as `LocatedList`; both remember
the file, line and column of each entry, so any later validation error can be
traced back to the exact place in the file the user edited. `${NAME}` in a
string is replaced by the environment variable NAME (secrets stay out of YAML).

Loading is bounded (`YamlLimits`): a file is refused, with a located error,
when it is too large, is not UTF-8 text or holds control characters, before the
YAML parser sees it; and when it nests too deep or stands for too many values
(aliases counted as what they stand for: an alias bomb), while it is composed,
before anything is expanded.
"""

from __future__ import annotations

import gc
import os
import re
import stat
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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
    max_depth: int = 64  # mappings and lists inside each other; a device file needs about 6
    # Scalars, mappings and lists in one file, each alias counted as the values it stands for. A realistic
    # 4 MiB device file has about 500,000; merge keys (`<<: *defaults`) add what they copy.
    max_values: int = 1_000_000


# The limits `load_yaml` applies when its caller passes none. The loader passes none today; a main-file
# key (say `limits.max_file_bytes`) can be wired by reading the main file with these defaults and passing
# `YamlLimits(max_bytes=...)` to every later `load_yaml` call (the main file itself is read with the defaults).
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


class _Parser(Protocol):
    """What the composer needs of a loader, PyYAML's or libyaml's (the stubs leave these untyped)."""

    def get_event(self) -> Any: ...
    def check_event(self, *choices: type[yaml.Event]) -> bool: ...
    def resolve(self, kind: type[yaml.Node], value: str | None, implicit: Any) -> str: ...


# A yaml.events.* object. Typed loosely: the stubs give libyaml's events a Mark class nodes do not accept.
_Event = Any


@dataclass
class _Open:
    """A mapping or list being composed."""

    node: yaml.CollectionNode
    anchor: str | None
    values_before: int  # the file's count when it opened: what is counted until it closes is its own size
    height: int = 1  # collections inside each other, this one included
    key: yaml.Node | None = None  # a mapping's key waiting for its value

    def add(self, node: yaml.Node, height: int) -> None:
        self.height = max(self.height, height + 1)
        if isinstance(self.node, yaml.SequenceNode):
            self.node.value.append(node)
        elif self.key is None:
            self.key = node
        else:
            self.node.value.append((self.key, node))
            self.key = None


@dataclass(frozen=True, slots=True)
class _Anchored:
    node: yaml.Node
    values: int | None  # what an alias to it stands for; None while it is still open (an alias inside is a loop)
    height: int


class _Composer:
    """Parser events to the node graph, without recursion, refusing a file as soon as it passes a limit.

    PyYAML's composers count nothing, and the pure-Python one recurses (Python's stack overflows at a few
    hundred levels). An alias costs them one reference, but the builder copies what it refers to, so here
    an alias costs the values it stands for: a billion laughs is refused after a few hundred events.
    """

    def __init__(self, file: str, loader: _Parser, limits: YamlLimits) -> None:
        self.file = file
        self.loader = loader
        self.limits = limits
        self.values = 0
        self.anchors: dict[str, _Anchored] = {}

    def compose(self) -> yaml.Node | None:
        """The root node of the file's one document; None when the file holds none."""
        loader = self.loader
        loader.get_event()  # stream start
        if loader.check_event(yaml.StreamEndEvent):
            return None
        loader.get_event()  # document start
        root = self._document()
        loader.get_event()  # document end
        if not loader.check_event(yaml.StreamEndEvent):
            raise yaml.composer.ComposerError("expected a single document in the stream", root.start_mark,
                                              "but found another document", loader.get_event().start_mark)
        return root

    def _document(self) -> yaml.Node:
        stack: list[_Open] = []
        while True:
            event = self.loader.get_event()
            if isinstance(event, yaml.CollectionStartEvent):
                stack.append(self._open(event, depth=len(stack) + 1))
                continue
            if isinstance(event, yaml.CollectionEndEvent):
                node, height = self._close(stack.pop(), event)
            elif isinstance(event, yaml.AliasEvent):
                node, height = self._alias(event, depth=len(stack))
            else:
                node, height = self._scalar(event), 0
            if not stack:
                return node
            stack[-1].add(node, height)

    def _open(self, event: _Event, depth: int) -> _Open:
        if depth > self.limits.max_depth:
            raise self._refuse(event, f"nesting deeper than {self.limits.max_depth} levels (mappings and lists "
                                      f"inside each other); expected at most {self.limits.max_depth}")
        kind = yaml.SequenceNode if isinstance(event, yaml.SequenceStartEvent) else yaml.MappingNode
        node = kind(self._tag(kind, event, None), [], event.start_mark, None, flow_style=event.flow_style)
        opened = _Open(node, event.anchor, self.values)
        self._count(1, event)
        self._remember(event, _Anchored(node, None, 0))  # registered now, as PyYAML does, to see loops
        return opened

    def _close(self, opened: _Open, event: _Event) -> tuple[yaml.Node, int]:
        opened.node.end_mark = event.end_mark
        if opened.anchor is not None:
            self.anchors[opened.anchor] = _Anchored(opened.node, self.values - opened.values_before, opened.height)
        return opened.node, opened.height

    def _scalar(self, event: _Event) -> yaml.Node:
        node = yaml.ScalarNode(self._tag(yaml.ScalarNode, event, event.value), event.value,
                               event.start_mark, event.end_mark, style=event.style)
        self._count(1, event)
        self._remember(event, _Anchored(node, 1, 0))
        return node

    def _alias(self, event: _Event, depth: int) -> tuple[yaml.Node, int]:
        name = event.anchor
        anchored = self.anchors.get(name or "")
        if anchored is None:
            raise yaml.composer.ComposerError(None, None, f"found undefined alias {name!r}", event.start_mark)
        if anchored.values is None:
            raise self._refuse(event, f"alias *{name} is used inside the node it names; expected an alias to "
                                      "a node written before it (a structure cannot contain itself)")
        if depth + anchored.height > self.limits.max_depth:
            raise self._refuse(event, f"nesting deeper than {self.limits.max_depth} levels with what alias "
                                      f"*{name} stands for; expected at most {self.limits.max_depth}")
        self._count(anchored.values, event, alias=name)
        return anchored.node, anchored.height

    def _tag(self, kind: type[yaml.Node], event: _Event, value: str | None) -> str:
        tag: str | None = event.tag
        if tag is None or tag == "!":  # untagged (or `!`, "not specific"): YAML's rules decide, as in PyYAML
            tag = self.loader.resolve(kind, value, event.implicit)
        return tag

    def _remember(self, event: _Event, anchored: _Anchored) -> None:
        if event.anchor is None:
            return
        first = self.anchors.get(event.anchor)
        if first is not None:
            mark = first.node.start_mark
            where = f" (first at line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise yaml.composer.ComposerError(None, None, f"found duplicate anchor {event.anchor!r}{where}",
                                              event.start_mark)
        self.anchors[event.anchor] = anchored

    def _count(self, values: int, event: _Event, alias: str | None = None) -> None:
        self.values += values
        most = self.limits.max_values
        if self.values <= most:
            return
        if alias is not None:
            raise self._refuse(event, f"alias *{alias} takes the file past {most:,} values (an alias bomb?); "
                                      f"expected at most {most:,}, each alias counted as the values it stands for")
        raise self._refuse(event, f"more than {most:,} values (scalars, mappings and lists) in one file; "
                                  f"expected at most {most:,} (devices can be split over several files)")

    def _refuse(self, event: _Event, message: str) -> YamlLoadError:
        mark = event.start_mark
        location = Location(self.file, mark.line + 1, mark.column + 1) if mark else None
        return YamlLoadError([ConfigIssue(location, "", message)])


_MERGE = "tag:yaml.org,2002:merge"
_KINDS = {"tag:yaml.org,2002:int": "integer", "tag:yaml.org,2002:float": "number",
          "tag:yaml.org,2002:bool": "true or false", "tag:yaml.org,2002:timestamp": "date or time (YYYY-MM-DD)"}
_UNREADABLE = object()  # a scalar whose text is not what its tag says; already reported


class _Builder:
    def __init__(self, file: str, loader: yaml.SafeLoader, environ: Mapping[str, str]) -> None:
        self.file = file
        self.loader = loader
        self.environ = environ
        self.issues: list[ConfigIssue] = []
        self._reported: set[tuple[Location, str]] = set()

    def issue(self, node: yaml.Node, path: str, message: str) -> None:
        location = _mark(self.file, node)
        if (location, message) not in self._reported:  # an alias repeats its node's problems: say each once
            self._reported.add((location, message))
            self.issues.append(ConfigIssue(location, path, message))

    def build(self, node: yaml.Node, path: str) -> Any:
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            items = LocatedList(self.build(child, f"{path}[{i}]") for i, child in enumerate(node.value))
            items.location = _mark(self.file, node)
            items.item_locations = [_mark(self.file, child) for child in node.value]
            return items
        value = self._scalar(node, path)
        if isinstance(value, str):
            expanded = self._expand_env(value, node, path)
            return expanded if isinstance(expanded, FromEnvironment) else _shared(expanded)
        return None if value is _UNREADABLE else value

    def _scalar(self, node: yaml.Node, path: str) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except (ValueError, KeyError, AttributeError, TypeError, OverflowError):
            # PyYAML's constructors trust the text its resolver matched, or an explicit tag, and raise Python
            # errors for `2001-13-01`, a 5,000-digit integer or `!!float abc`. Forget the attempt, so an alias
            # to the same node is reported here again rather than as a "recursive node".
            self.loader.recursive_objects.pop(node, None)
            kind = _KINDS.get(node.tag, node.tag)
            self.issue(node, path, f"expected a valid {kind}, found text that is not one (quote it if it is text)")
            return _UNREADABLE

    def _mapping(self, node: yaml.MappingNode, path: str) -> LocatedDict:
        result = located_dict(_mark(self.file, node))
        merges = []
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _MERGE:
                merges.append(value_node)
                continue
            key_text = self._key(key_node, path)
            if key_text is None:
                continue
            child_path = f"{path}.{key_text}" if path else key_text
            if key_text in result:
                self.issue(key_node, child_path, "duplicate key; expected each key once in a mapping, found it again")
                continue
            result[key_text] = self.build(value_node, child_path)
            result.key_locations[key_text] = _mark(self.file, key_node)
        for merge in merges:
            self._merge(result, merge, path)
        return result

    def _key(self, node: yaml.Node, path: str) -> str | None:
        if not isinstance(node, yaml.ScalarNode):
            found = "a mapping" if isinstance(node, yaml.MappingNode) else "a list"
            self.issue(node, path, f"expected a key (a name) in this mapping, found {found}")
            return None
        key = self._scalar(node, path)
        return None if key is _UNREADABLE else _shared(str(key))

    def _merge(self, result: LocatedDict, node: yaml.Node, path: str) -> None:
        """A YAML merge key (`<<: *defaults`): the mapping's own keys win, then earlier merged mappings."""
        for source in node.value if isinstance(node, yaml.SequenceNode) else [node]:
            if not isinstance(source, yaml.MappingNode):
                self.issue(source, path, "expected a mapping to merge with `<<` (such as `<<: *defaults`) "
                                         "or a list of them")
                continue
            merged = self._mapping(source, path)
            for key, value in merged.items():
                if key not in result:
                    result[key] = value
                    result.key_locations[key] = merged.key_locations[key]

    def _expand_env(self, text: str, node: yaml.Node, path: str) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in self.environ:
                self.issue(node, path, f"expected environment variable {name} to be set "
                                       f"(referenced as ${{{name}}}), found it unset")
                return ""
            return self.environ[name]

        expanded = _ENV_REFERENCE.sub(replace, text)
        if expanded == text:
            return text
        return FromEnvironment(expanded, tuple(_ENV_REFERENCE.findall(text)))


class FromEnvironment(str):
    """A string that holds the value of environment variables (`${NAME}`): error messages never show it, for
    it may be a secret even where the key is not a secret's (a password written into the wrong key)."""

    __slots__ = ("names",)

    def __new__(cls, value: str, names: tuple[str, ...]) -> FromEnvironment:
        made = super().__new__(cls, value)
        made.names = names
        return made

    names: tuple[str, ...]

    def hidden(self) -> str:
        return "the value of " + ", ".join(f"${{{n}}}" for n in self.names) + " (not shown)"


def _shared(text: str) -> str:
    """Short strings (ids, names, units, table and type names) repeat across thousands of points: keep one copy."""
    return sys.intern(text) if len(text) <= _SHARED_LENGTH else text


_SHARED_LENGTH = 64


def load_yaml(path: Path, environ: Mapping[str, str] | None = None, limits: YamlLimits | None = None) -> Any:
    """Parse one YAML file into located containers, or raise YamlLoadError.

    `limits` defaults to the module's `LIMITS`, read at each call.
    """
    file = str(path)
    limits = LIMITS if limits is None else limits
    text = _text(_read(path, file, limits.max_bytes), file)
    with _gc_paused():
        return _parse(text, file, limits, os.environ if environ is None else environ)


def _parse(text: str, file: str, limits: YamlLimits, environ: Mapping[str, str]) -> Any:
    loader = _Loader(text)
    try:
        node = _Composer(file, loader, limits).compose()
        if node is None:
            return located_dict(Location(file, 1, 1))
        builder = _Builder(file, loader, environ)
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


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Hold off the cyclic garbage collector while a file is composed and built.

    That allocates up to a million objects and frees none, so each collection scans them all for nothing:
    nearly half of a large file's load time. What is built holds no cycles (loops are refused, and disposing
    the loader breaks PyYAML's own), so nothing is left for the collector once it runs again.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# -- reading: bounded, and only text ------------------------------------------------------------------------

def _read(path: Path, file: str, max_bytes: int) -> bytes:
    """The file's bytes, refusing anything but a regular file of at most `max_bytes`."""
    try:
        # O_NONBLOCK: a FIFO swept in by a glob must not hang `check`; it is refused just below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise _unreadable(file, exc) from exc
    except ValueError as exc:  # a NUL in the name, written in the YAML as "\0": no file can have it
        raise _file_issue(repr(file), "cannot be read: a file name cannot hold a NUL character") from exc
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
