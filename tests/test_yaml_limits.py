"""Bounded configuration loading: each file is read within limits, and as text, before YAML expands anything.

Every test runs with libyaml's parser (CSafeLoader, used when PyYAML has it) and with the pure-Python one.
"""

from __future__ import annotations

import gc
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.modbus.config import ModbusTcpDevice
from gateway.config import yamlsource
from gateway.config.errors import ConfigError
from gateway.config.loader import load_config
from gateway.config.yamlsource import YamlLimits, YamlLoadError, load_yaml

CATALOGUE = Path(__file__).parent / "config_cases" / "common" / "catalogue.yaml"

_C_LOADER = getattr(yaml, "CSafeLoader", None)


@pytest.fixture(autouse=True, params=[
    pytest.param(yaml.SafeLoader, id="python"),
    pytest.param(_C_LOADER, id="libyaml", marks=pytest.mark.skipif(_C_LOADER is None, reason="PyYAML without libyaml")),
])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> type[yaml.SafeLoader]:
    monkeypatch.setattr(yamlsource, "_Loader", request.param)
    return request.param  # type: ignore[no-any-return]


def issues_of(path: Path, limits: YamlLimits | None = None) -> list[str]:
    with pytest.raises(YamlLoadError) as caught:
        load_yaml(path, environ={}, limits=limits)
    return [str(issue) for issue in caught.value.issues]


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


# -- size ------------------------------------------------------------------------------------------------------

def test_the_default_file_size_limit_is_4_mib() -> None:
    assert yamlsource.LIMITS.max_bytes == 4 * 1024 * 1024


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as file:
        file.truncate(4 * 1024 * 1024 + 1)  # sparse: costs no disk, and is refused from its size alone
    (issue,) = issues_of(big)
    assert issue.startswith(f"{big}: 4,194,305 bytes, larger than the 4,194,304 bytes")


def test_a_file_at_the_size_limit_is_read(tmp_path: Path) -> None:
    text = "a: 1\n"
    assert load_yaml(write(tmp_path / "ok.yaml", text), limits=YamlLimits(max_bytes=len(text))) == {"a": 1}


def test_a_device_file_swept_in_by_a_glob_is_held_to_the_module_limit(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamlsource, "LIMITS", YamlLimits(max_bytes=1600))  # above the test catalogue
    (tmp_path / "devices").mkdir()
    write(tmp_path / "devices" / "small.yaml", "devices: []\n")
    write(tmp_path / "devices" / "huge.yaml", "devices:\n" + "  # padding\n" * 150)
    main = write(tmp_path / "gateway.yaml", f"gateway: {{id: gw-1}}\ncatalogue: {CATALOGUE}\n"
                                            "include: ['devices/*.yaml']\n")
    with pytest.raises(ConfigError) as caught:
        load_config(main, environ={})
    assert str(caught.value) == (f"{tmp_path}/devices/huge.yaml: 1,809 bytes, larger than the 1,600 bytes a "
                                 "configuration file may have; expected a smaller file (devices can be split "
                                 "over several files)")


@pytest.mark.timeout(10)
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "devices.yaml"
    os.mkfifo(fifo)
    assert issues_of(fifo) == [f"{fifo}: not a regular file; expected a YAML file"]


def test_a_directory_is_refused(tmp_path: Path) -> None:
    assert issues_of(tmp_path) == [f"{tmp_path}: not a regular file; expected a YAML file"]


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert issues_of(missing) == [f"cannot read {missing}: No such file or directory"]


def test_a_file_name_with_a_nul_character_is_named(tmp_path: Path) -> None:
    path = tmp_path / "a\x00b.yaml"  # from a "\0" in the YAML that names it
    assert issues_of(path) == [f"{str(path)!r}: cannot be read: a file name cannot hold a NUL character"]


# -- text --------------------------------------------------------------------------------------------------------

def test_a_gbk_file_names_the_first_byte_that_is_not_utf8(tmp_path: Path) -> None:
    gbk = write(tmp_path / "gbk.yaml", b"gateway:\n  name: " + "供水泵站".encode("gbk"))
    (issue,) = issues_of(gbk)
    assert issue.startswith(f"{gbk}: not UTF-8 text at byte 17 (line 2, column 9: byte 0xb9); expected UTF-8")


def test_a_binary_file_names_the_first_byte_that_is_not_utf8(tmp_path: Path) -> None:
    binary = write(tmp_path / "binary.yaml", bytes(range(256)))
    (issue,) = issues_of(binary)
    assert issue.startswith(f"{binary}: not UTF-8 text at byte 128 (line 3, column 115: byte 0x80)")


def test_a_byte_offset_counts_the_bom(tmp_path: Path) -> None:
    (issue,) = issues_of(write(tmp_path / "bom.yaml", b"\xef\xbb\xbfa: \xff\n"))
    assert "not UTF-8 text at byte 6 (line 1, column 4: byte 0xff)" in issue


def test_a_utf8_bom_is_accepted_and_moves_no_location(tmp_path: Path) -> None:
    plain = load_yaml(write(tmp_path / "plain.yaml", "gateway:\n  id: gw-1\n"))
    with_bom = load_yaml(write(tmp_path / "bom.yaml", b"\xef\xbb\xbfgateway:\n  id: gw-1\n"))
    assert with_bom == plain
    assert str(with_bom["gateway"].where("id")).endswith("bom.yaml:2:3")


@pytest.mark.parametrize(("content", "where", "code"), [
    ("a: 1\nb: x\x00y\n", "2:5", "U+0000"),
    ("a: \x1b[31m\n", "1:4", "U+001B"),
    ("a: 1\r\nb: \x7f\n", "2:4", "U+007F"),
])
def test_a_control_character_is_located(tmp_path: Path, content: str, where: str, code: str) -> None:
    path = write(tmp_path / "control.yaml", content)
    (issue,) = issues_of(path)
    assert issue.startswith(f"{path}:{where}: control character {code} is not allowed in YAML")


def test_an_escaped_control_character_in_double_quotes_is_text(tmp_path: Path) -> None:
    assert load_yaml(write(tmp_path / "escaped.yaml", 'a: "x\\x00y"\n')) == {"a": "x\x00y"}


# -- nesting and aliases: refused while composing, before anything is expanded ---------------------------------

def billion_laughs(levels: int = 9, fan_out: int = 9) -> str:
    lines = ["lol0: &l0 lol"]
    lines += [f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fan_out)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def nested(depth: int, flow: bool) -> str:
    if flow:
        return "[" * depth + "]" * depth + "\n"
    return "".join(f"{'  ' * level}k{level}:\n" for level in range(depth - 1)) + "  " * (depth - 1) + "k: v\n"


def test_the_default_nesting_and_value_limits() -> None:
    assert (yamlsource.LIMITS.max_depth, yamlsource.LIMITS.max_values) == (64, 1_000_000)


@pytest.mark.timeout(10)  # unbounded, this grows by gigabytes a minute
def test_a_billion_laughs_is_refused_at_once_in_little_memory(tmp_path: Path) -> None:
    bomb = write(tmp_path / "bomb.yaml", billion_laughs())
    tracemalloc.start()
    try:
        (issue,) = issues_of(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert issue.startswith(f"{bomb}:8:12: alias *l6 takes the file past 1,000,000 values (an alias bomb?)")
    assert peak < 2_000_000


def test_aliases_may_stand_for_values_up_to_the_limit(tmp_path: Path) -> None:
    text = billion_laughs(levels=2, fan_out=3)  # 1 + (1 + 3) + (1 + 3 * 4) values, the top mapping and keys: 22
    assert load_yaml(write(tmp_path / "ok.yaml", text), limits=YamlLimits(max_values=22))["lol2"] == [["lol"] * 3] * 3
    (issue,) = issues_of(tmp_path / "ok.yaml", limits=YamlLimits(max_values=21))
    assert issue.startswith(f"{tmp_path}/ok.yaml:3:22: alias *l1 takes the file past 21 values")


def test_a_file_with_too_many_values_is_refused_where_it_passes_the_limit(tmp_path: Path) -> None:
    path = write(tmp_path / "flat.yaml", "[" + ", ".join(["0"] * 11) + "]\n")
    (issue,) = issues_of(path, limits=YamlLimits(max_values=10))
    assert issue == (f"{path}:1:29: more than 10 values (scalars, mappings and lists) in one file; "
                     "expected at most 10 (devices can be split over several files)")


def test_device_defaults_shared_by_merge_keys_are_well_within_the_limits(tmp_path: Path) -> None:
    devices = "".join(f"  - {{<<: *defaults, id: plc-{n}, host: 10.0.0.{n % 250}}}\n" for n in range(2000))
    path = write(tmp_path / "devices.yaml", "defaults: &defaults {protocol: modbus-tcp, port: 502, timeout: 2,"
                                            " poll_interval: 5, byte_order: big, word_order: little}\n"
                                            "devices:\n" + devices)
    loaded = load_yaml(path)
    assert len(loaded["devices"]) == 2000
    assert loaded["devices"][1999] == {"protocol": "modbus-tcp", "port": 502, "timeout": 2, "poll_interval": 5,
                                       "byte_order": "big", "word_order": "little", "id": "plc-1999",
                                       "host": "10.0.0.249"}


@pytest.mark.parametrize("flow", [True, False], ids=["flow", "block"])
def test_nesting_up_to_the_limit_is_read(tmp_path: Path, flow: bool) -> None:
    load_yaml(write(tmp_path / "deep.yaml", nested(64, flow)))


@pytest.mark.parametrize(("flow", "where"), [(True, "1:65"), (False, "65:129")], ids=["flow", "block"])
def test_nesting_past_the_limit_is_refused_where_it_passes(tmp_path: Path, flow: bool, where: str) -> None:
    path = write(tmp_path / "deep.yaml", nested(65, flow))
    assert issues_of(path) == [f"{path}:{where}: nesting deeper than 64 levels (mappings and lists inside each "
                               "other); expected at most 64"]


@pytest.mark.parametrize("depth", [500, 5000, 100_000])
def test_very_deep_nesting_is_refused_without_recursion(tmp_path: Path, depth: int) -> None:
    path = write(tmp_path / "deep.yaml", "a: " + "{b: " * depth + "1" + "}" * depth + "\n")
    (issue,) = issues_of(path)
    assert issue.startswith(f"{path}:1:")  # libyaml's own limit (1,000 levels) may speak first, at its place
    assert "nesting" in issue


def test_nesting_through_an_alias_counts_what_the_alias_stands_for(tmp_path: Path) -> None:
    path = write(tmp_path / "deep.yaml", "a: &deep " + "[" * 40 + "]" * 40 + "\nb: " + "[" * 24 + "*deep" + "]" * 24
                 + "\n")
    assert issues_of(path) == [f"{path}:2:28: nesting deeper than 64 levels with what alias *deep stands for; "
                               "expected at most 64"]


def test_an_alias_inside_the_node_it_names_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "loop.yaml", "a: &loop\n  b: [*loop]\n")
    assert issues_of(path) == [f"{path}:2:7: alias *loop is used inside the node it names; expected an alias to a "
                               "node written before it (a structure cannot contain itself)"]


@pytest.mark.parametrize(("content", "issue"), [
    ("a: *nowhere\n", "1:4: YAML syntax: found undefined alias 'nowhere'"),
    ("a: &x 1\nb: &x 2\n", "2:4: YAML syntax: found duplicate anchor 'x' (first at line 1, column 4)"),
    ("a: 1\n---\nb: 2\n", "2:1: YAML syntax: but found another document"),
])
def test_yaml_errors_while_composing_stay_located(tmp_path: Path, content: str, issue: str) -> None:
    path = write(tmp_path / "bad.yaml", content)
    assert issues_of(path) == [f"{path}:{issue}"]


@pytest.mark.parametrize("content", ["", "# only a comment\n", "---\n...\n"])
def test_a_file_without_content_is_an_empty_mapping(tmp_path: Path, content: str) -> None:
    assert load_yaml(write(tmp_path / "empty.yaml", content)) in ({}, None)


# -- merge keys, keys and scalars: what PyYAML leaves to chance -------------------------------------------------

DEFAULTS = "defaults: &defaults {protocol: modbus-tcp, port: 502, timeout: 2}\n"


def test_a_mapping_s_own_keys_override_merged_defaults(tmp_path: Path) -> None:
    path = write(tmp_path / "merge.yaml", DEFAULTS + "device:\n  <<: *defaults\n  port: 1502\n")
    device = load_yaml(path)["device"]
    assert device == {"protocol": "modbus-tcp", "port": 1502, "timeout": 2}
    assert str(device.where("port")).endswith("merge.yaml:4:3"), "an override is located where it was written"
    assert str(device.where("timeout")).endswith("merge.yaml:1:55"), "a default is located in the anchor"


def test_earlier_merged_mappings_win_and_merges_nest(tmp_path: Path) -> None:
    path = write(tmp_path / "merge.yaml", DEFAULTS + "fast: &fast {<<: *defaults, timeout: 0.5}\n"
                                                     "rtu: &rtu {protocol: modbus-rtu, baud: 9600}\n"
                                                     "device: {<<: [*fast, *rtu], id: plc-1}\n")
    assert load_yaml(path)["device"] == {"id": "plc-1", "protocol": "modbus-tcp", "port": 502, "timeout": 0.5,
                                         "baud": 9600}


def test_a_key_written_twice_is_still_a_duplicate(tmp_path: Path) -> None:
    path = write(tmp_path / "dup.yaml", DEFAULTS + "device: {<<: *defaults, port: 1, port: 2}\n")
    assert issues_of(path) == [f"{path}:2:34: device.port: duplicate key; expected each key once in a mapping, "
                               "found it again"]


@pytest.mark.parametrize(("merge", "where"), [("5", "2:14"), ("[*defaults, x]", "2:26"), ("[[1]]", "2:15")])
def test_a_merge_of_something_else_than_mappings_is_located(tmp_path: Path, merge: str, where: str) -> None:
    path = write(tmp_path / "merge.yaml", DEFAULTS + f"device: {{<<: {merge}, id: plc-1}}\n")
    assert issues_of(path) == [f"{path}:{where}: device: expected a mapping to merge with `<<` "
                               "(such as `<<: *defaults`) or a list of them"]


def test_device_defaults_merged_into_devices_load_as_a_configuration(tmp_path: Path) -> None:
    write(tmp_path / "devices.yaml", """devices:
  - &plc {id: plc-1, protocol: modbus-tcp, host: 127.0.0.1, word_order: little,
          asset: {domain: water-supply, site: ps01, id: ps01-station, type: water-pumping-station},
          points: [{name: flow, indicator: flow, table: input_register, address: 10, type: float32}]}
  - <<: *plc
    id: plc-2
    asset: {domain: water-supply, site: ps02, id: ps02-station, type: water-pumping-station}
""")
    main = write(tmp_path / "gateway.yaml", f"gateway: {{id: gw-1}}\ncatalogue: {CATALOGUE}\n"
                                            "include: [devices.yaml]\n")
    config = load_config(main, environ={})
    assert [(d.id, d.config.asset.id, d.config.word_order) for d in config.devices
            if isinstance(d.config, ModbusTcpDevice)] == [
        ("plc-1", "ps01-station", "little"), ("plc-2", "ps02-station", "little")]


def test_a_key_that_is_a_mapping_or_list_is_located(tmp_path: Path) -> None:
    path = write(tmp_path / "keys.yaml", "gateway:\n  ? [a, b]\n  : 1\n  {c: d}: 2\n  id: gw-1\n")
    assert issues_of(path) == [f"{path}:2:5: gateway: expected a key (a name) in this mapping, found a list",
                               f"{path}:4:3: gateway: expected a key (a name) in this mapping, found a mapping"]


def test_scalars_that_are_not_what_they_look_like_are_located_all_at_once(tmp_path: Path) -> None:
    path = write(tmp_path / "scalars.yaml", "since: 2001-13-01\nbig: 1" + "0" * 5000 + "\nratio: !!float abc\n"
                                            "flag: !!bool maybe\nwhen: !!timestamp soon\n2001-02-30: x\nok: 1\n")
    assert issues_of(path) == [
        f"{path}:1:8: since: expected a valid date or time (YYYY-MM-DD), found text that is not one "
        "(quote it if it is text)",
        f"{path}:2:6: big: expected a valid integer, found text that is not one (quote it if it is text)",
        f"{path}:3:8: ratio: expected a valid number, found text that is not one (quote it if it is text)",
        f"{path}:4:7: flag: expected a valid true or false, found text that is not one (quote it if it is text)",
        f"{path}:5:7: when: expected a valid date or time (YYYY-MM-DD), found text that is not one "
        "(quote it if it is text)",
        f"{path}:6:1: expected a valid date or time (YYYY-MM-DD), found text that is not one "
        "(quote it if it is text)"]


def test_a_problem_behind_an_alias_is_reported_once(tmp_path: Path) -> None:
    path = write(tmp_path / "alias.yaml", "a: &bad [2001-13-01, '${UNSET}']\nb: [*bad, *bad, *bad]\n")
    first, second = issues_of(path)
    assert first.startswith(f"{path}:1:10: a[0]: expected a valid date or time")
    assert second.startswith(f"{path}:1:22: a[1]: expected environment variable UNSET to be set")


# -- speed ---------------------------------------------------------------------------------------------------

def test_the_collector_is_held_off_while_a_file_is_composed_and_built_and_back_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Composing and building allocate up to a million objects that all live on: collections would only slow it.
    enabled_during: list[bool] = []
    build = yamlsource._Builder.build

    def recording_build(self: Any, node: yaml.Node, path: str) -> Any:
        enabled_during.append(gc.isenabled())
        return build(self, node, path)

    monkeypatch.setattr(yamlsource._Builder, "build", recording_build)
    load_yaml(write(tmp_path / "points.yaml", "points:\n  - {name: p, address: 1}\n"))
    assert gc.isenabled()
    issues_of(write(tmp_path / "bad.yaml", "a: [\n"))
    assert gc.isenabled()
    assert enabled_during and not any(enabled_during)
