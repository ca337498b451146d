"""`check` is total: whatever a configuration file holds, it exits 0 or 2 and never shows a traceback.

Each input is written into a small valid configuration (as its main file, its device file, its catalogue
or its profile) and `municipal-gateway check` runs in-process on it, with libyaml's parser or the
pure-Python one (hypothesis picks). The inputs: every file of the error corpus, random bytes, YAML-ish
text, deep nesting, alias bombs, huge scalars, and an odd value, key, gap or extra item at any position
of each valid file. Inputs that still crash code outside the YAML layer are listed at the end, xfail.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import io
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.cli import main
from gateway.config import yamlsource

CASES = Path(__file__).parent / "config_cases"
CORPUS = sorted(p for p in CASES.rglob("*") if p.is_file())
LOADERS = [yaml.SafeLoader, *([yaml.CSafeLoader] if hasattr(yaml, "CSafeLoader") else [])]

SECRET = "not-a-real-secret"  # must never be shown, whatever else in the file is wrong
MAIN: dict[str, Any] = {
    "gateway": {"id": "gw-1", "name": "Hostile input", "state_dir": "state", "log_level": "info"},
    "mqtt": {"host": "localhost", "port": 1883, "username": "gw-1", "password": SECRET,
             "keepalive": 30, "topic_prefix": "city", "max_inflight": 32,
             "reconnect": {"initial_delay": 1, "max_delay": 60}},
    "buffer": {"max_bytes": 1048576, "synchronous": "full"},
    "catalogue": "catalogue.yaml",
    "profiles": "profiles",
    "include": ["devices/*.yaml"],
}
DEVICES: dict[str, Any] = {"devices": [{
    "id": "plc-1", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": 502, "unit_id": 1,
    "poll_interval": 5, "timeout": 2, "enabled": True,
    "asset": {"domain": "water-supply", "site": "ps01", "id": "ps01-station", "type": "water-pumping-station",
              "name": "PS01"},
    "profile": "station-plc",
    "points": [
        {"name": "flow", "indicator": "flow", "table": "input_register", "address": 10, "type": "float32",
         "unit": "L/s", "scale": 1.0, "offset": 0, "range": [0, 100],
         "processing": {"reporting": {"deadband": 0.5, "max_silence": 600}, "windows": [60, 900],
                        "alarms": [{"level": "high", "limit": 90, "hysteresis": 1, "delay_on": 5}]}},
        {"name": "outlet_pressure", "range": [0, 16]},
    ],
    "derived": [{"indicator": "pressure-margin", "expression": "if(outlet-pressure > 200, outlet-pressure - 200, 0)",
                 "max_age": 60}],
}]}
CATALOGUE: dict[str, Any] = yaml.safe_load((CASES / "common" / "catalogue.yaml").read_text())
PROFILE: dict[str, Any] = yaml.safe_load((CASES / "common" / "profiles" / "station-plc.yaml").read_text())
FILES = {"gateway.yaml": MAIN, "devices/plc.yaml": DEVICES, "catalogue.yaml": CATALOGUE,
         "profiles/station-plc.yaml": PROFILE}

ODD = "__odd__"  # stands in a dumped file for a raw YAML snippet
ODD_SNIPPETS = [
    "!!binary not-base64", "*undefined", "&loop [*loop]", "2001-13-01", "1" + "0" * 5000, "!!float abc",
    "!!bool maybe", "!custom x", "!!python/object:os.system ls", '"x\\0y"', "<<", "=", "{<<: 1}",
    "[" * 70 + "]" * 70, "{? [a]: 1}", '"${HOSTILE_UNSET_VARIABLE}"', "---", "... ", "%YAML 1.1", "@x", "`x",
    "'", "[1, 2", "}", "-", "? x", "| \n", ">-",
]
ODD_VALUES = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 2**63, 2**64 + 1, 1e308, float("inf"), float("-inf"), float("nan"),
                     "", " ", "x" * 5000, "供水泵站", "\u202e", "../../../../etc/passwd", "/dev/zero", "*", "<<",
                     "${HOSTILE_UNSET_VARIABLE}", "x\x00y", [], [None], [[[]]], {}, {"": None}, {"a": {"b": [1]}},
                     datetime.date(2001, 2, 3), datetime.datetime(2001, 2, 3, 4, 5, 6), b"\x00\xff", {1, 2},
                     [1] * 1000, {f"k{i}": i for i in range(200)}]),
    st.sampled_from(ODD_SNIPPETS).map(lambda snippet: (ODD, snippet)),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                 lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                 max_leaves=20),
)
ODD_KEYS = st.sampled_from([None, 0, 1.5, True, "", " ", "<<", "x" * 300, "devices", "gateway", "id", "名字"])


def run_check(directory: Path, main_file: str = "gateway.yaml") -> tuple[int | str | None, str]:
    """`municipal-gateway check` in-process: the exit code and what it wrote to stderr."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code: int | str | None = main(["check", str(directory / main_file)])
        except SystemExit as exc:  # argparse's own exit; anything else escaping is a crash and fails the test
            code = exc.code
    return code, stderr.getvalue()


def assert_total(directory: Path, main_file: str = "gateway.yaml") -> None:
    code, stderr = run_check(directory, main_file)
    assert code in (0, 2), stderr
    assert "Traceback" not in stderr
    assert SECRET not in stderr
    if code == 2:
        assert "configuration problem" in stderr, stderr


@contextlib.contextmanager
def configuration(replace: dict[str, bytes] | None = None) -> Iterator[Path]:
    """A directory holding the valid configuration, with some files' bytes replaced."""
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        for file, document in FILES.items():
            (directory / file).parent.mkdir(parents=True, exist_ok=True)
            (directory / file).write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False))
        for file, content in (replace or {}).items():
            (directory / file).write_bytes(content)
        yield directory


@contextlib.contextmanager
def parser(loader: type[yaml.SafeLoader]) -> Iterator[None]:
    saved = yamlsource._Loader
    yamlsource._Loader = loader
    try:
        yield
    finally:
        yamlsource._Loader = saved


def check_with(loader: type[yaml.SafeLoader], file: str, content: bytes) -> None:
    with parser(loader), configuration({file: content}) as directory:
        assert_total(directory)


FILE_NAMES = st.sampled_from(list(FILES))
LOADER = st.sampled_from(LOADERS)


def hostile(examples: int) -> settings:
    # No deadline: one example may write and check a 4 MiB file.
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- the valid configuration and the error corpus --------------------------------------------------------------

def test_the_configuration_the_inputs_are_put_into_is_valid() -> None:
    with configuration() as directory:
        code, stderr = run_check(directory)
    assert code == 0, stderr


@pytest.mark.parametrize("loader", LOADERS, ids=lambda loader: loader.__name__)
@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if (p / "gateway.yaml").exists()))
def test_every_case_of_the_corpus_checks_to_0_or_2(case: str, loader: type[yaml.SafeLoader]) -> None:
    with parser(loader):
        assert_total(CASES / case)


@pytest.mark.parametrize("file", CORPUS, ids=lambda p: str(p.relative_to(CASES)))
@pytest.mark.parametrize("target", ["gateway.yaml", "devices/plc.yaml"])
def test_every_file_of_the_corpus_as_a_main_or_device_file_checks_to_0_or_2(file: Path, target: str) -> None:
    check_with(yamlsource._Loader, target, file.read_bytes())


# -- generated inputs --------------------------------------------------------------------------------------------

@hostile(40)
@given(loader=LOADER, file=FILE_NAMES, content=st.binary(max_size=3000))
def test_random_bytes(loader: type[yaml.SafeLoader], file: str, content: bytes) -> None:
    check_with(loader, file, content)


YAMLISH = st.lists(st.sampled_from([*"-:?[]{},&*!|>'\"#%@`<=~ \n\t\r\\", "a", "b", "1", ".", "${X}", "<<", "  "]),
                   max_size=200).map("".join)


@hostile(60)
@given(loader=LOADER, file=FILE_NAMES, text=YAMLISH)
def test_yamlish_text(loader: type[yaml.SafeLoader], file: str, text: str) -> None:
    check_with(loader, file, text.encode())


@hostile(20)
@given(loader=LOADER, file=FILE_NAMES, depth=st.integers(60, 20_000),
       shape=st.sampled_from(["[{}]", "{{a: {}}}", "- {}", "a:\n{}"]))
def test_deep_nesting(loader: type[yaml.SafeLoader], file: str, depth: int, shape: str) -> None:
    if shape == "- {}":
        text = "- " * depth + "x"
    elif shape == "a:\n{}":  # block mappings, indented one more space each: the file grows as depth squared
        text = "".join(f"{' ' * level}a:\n" for level in range(min(depth, 300))) + " " * 300 + "x"
    else:
        opening, closing = shape.split("{}")
        text = opening * depth + "x" + closing * depth
    check_with(loader, file, text.encode())


@hostile(10)
@given(loader=LOADER, depth=st.integers(30, 20_000), shape=st.sampled_from(["not {}", "-{}", "({})", "abs({})"]))
def test_deep_expressions(loader: type[yaml.SafeLoader], depth: int, shape: str) -> None:
    opening, closing = shape.split("{}")
    devices = copy.deepcopy(DEVICES)
    devices["devices"][0]["derived"][0]["expression"] = opening * depth + "outlet-pressure" + closing * depth
    check_with(loader, "devices/plc.yaml", dump(devices))


@hostile(15)
@given(loader=LOADER, file=FILE_NAMES, levels=st.integers(2, 12), fan_out=st.integers(2, 12),
       merge=st.booleans())
def test_alias_bombs(loader: type[yaml.SafeLoader], file: str, levels: int, fan_out: int, merge: bool) -> None:
    # Small ones are built, bombs refused; one just under the limit is legitimate but slow to build here.
    assume(fan_out**levels < 20_000 or fan_out**levels > 2_000_000)
    if merge:  # merge keys nesting merge keys
        lines = ["l0: &l0 {a: 1}"] + [f"l{i}: &l{i} {{<<: [{', '.join([f'*l{i - 1}'] * fan_out)}], k{i}: 1}}"
                                      for i in range(1, levels + 1)]
    else:
        lines = ["l0: &l0 [x]"] + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fan_out)}]"
                                   for i in range(1, levels + 1)]
    check_with(loader, file, ("\n".join(lines) + f"\ndevices: *l{levels}\n").encode())


@hostile(6)
@given(loader=LOADER, file=FILE_NAMES, size=st.sampled_from([5000, 100_000, 3_000_000, 4 * 1024 * 1024 + 1]),
       where=st.sampled_from(["value", "key", "plain"]))
def test_huge_scalars(loader: type[yaml.SafeLoader], file: str, size: int, where: str) -> None:
    big = "x" * size
    text = {"value": f"gateway: {{id: '{big}'}}\n", "key": f"{big}: 1\n", "plain": big}[where]
    check_with(loader, file, text.encode())


def positions(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from positions(child, (*path, key))


def mutate(document: Any, path: tuple[Any, ...], action: str, odd: Any, odd_key: Any) -> Any:
    if not path:
        return odd
    changed = copy.deepcopy(document)
    parent = changed
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if action == "value":
        parent[last] = odd
    elif action == "delete":
        del parent[last]
    elif isinstance(parent, dict):  # a key: renamed in place, keeping the order
        items = [((odd_key if key == last else key), value) for key, value in parent.items()]
        parent.clear()
        parent.update(items)
    else:
        parent.insert(last, odd)
    return changed


def dump(document: Any) -> bytes:
    """YAML of `document`, each (ODD, snippet) written as the raw snippet."""
    snippets: list[str] = []

    def strip(node: Any) -> Any:
        if isinstance(node, tuple) and len(node) == 2 and node[0] == ODD:
            snippets.append(node[1])
            return f"{ODD}{len(snippets) - 1}"
        if isinstance(node, dict):
            return {key: strip(value) for key, value in node.items()}
        if isinstance(node, list):
            return [strip(item) for item in node]
        return node

    text = yaml.safe_dump(strip(document), allow_unicode=True, sort_keys=False, width=10_000)
    for index, snippet in enumerate(snippets):
        text = text.replace(f"{ODD}{index}", snippet)
    return text.encode()


@hostile(100)
@given(loader=LOADER, data=st.data(), file=FILE_NAMES, action=st.sampled_from(["value", "key", "delete", "insert"]),
       odd=ODD_VALUES, odd_key=ODD_KEYS)
def test_an_odd_value_key_or_gap_at_any_position_of_a_valid_file(
        loader: type[yaml.SafeLoader], data: st.DataObject, file: str, action: str, odd: Any, odd_key: Any) -> None:
    document = FILES[file]
    path = data.draw(st.sampled_from(list(positions(document))), label="position")
    changed = mutate(document, path, action, odd, odd_key)
    check_with(loader, file, dump(changed))


# -- inputs that once crashed code outside the YAML layer ---------------------------------------------------------
# Seconds that processing turns into milliseconds (the models now refuse inf, NaN and more than a year), and a
# profile name the file system refuses (over 255 bytes): each a located error, exit 2.

POINT = ("devices", 0, "points", 0, "processing")

ONCE_CRASHED = [
    pytest.param("devices/plc.yaml", ("devices", 0, "poll_interval"), float("inf"), id="poll_interval-inf"),
    pytest.param("devices/plc.yaml", (*POINT, "reporting", "max_silence"), "1e308", id="max_silence-1e308"),
    pytest.param("devices/plc.yaml", (*POINT, "alarms", 0, "delay_on"), float("inf"), id="delay_on-inf"),
    pytest.param("devices/plc.yaml", (*POINT, "alarms", 0, "delay_off"), 1e308, id="delay_off-1e308"),
    pytest.param("devices/plc.yaml", ("devices", 0, "derived", 0, "max_age"), float("inf"), id="max_age-inf"),
    pytest.param("devices/plc.yaml", ("devices", 0, "profile"), "x" * 256, id="profile-256-bytes"),
    pytest.param("gateway.yaml", ("profiles",), "x" * 256, id="profiles-256-bytes"),
]


@pytest.mark.parametrize(("file", "path", "value"), ONCE_CRASHED)
def test_inputs_that_once_crashed_the_loader_are_located_errors(file: str, path: tuple[Any, ...], value: Any) -> None:
    document = mutate(FILES[file], path, "value", value, None)
    with parser(yamlsource._Loader), configuration({file: dump(document)}) as directory:
        code, stderr = run_check(directory)
    assert code == 2 and "Traceback" not in stderr, stderr
