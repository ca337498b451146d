"""Derived-indicator expressions are bounded: deep nesting is a located ValueError, never a RecursionError."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.errors import ConfigError
from gateway.config.loader import load_config
from gateway.model.expression import MAX_LENGTH, MAX_NESTING, parse

CATALOGUE = Path(__file__).parent / "config_cases" / "common" / "catalogue.yaml"


def test_the_limits() -> None:
    assert (MAX_NESTING, MAX_LENGTH) == (32, 4096)


@pytest.mark.parametrize(("opening", "closing", "column"), [
    ("(", ")", 33),  # the 33rd parenthesis
    ("-", "", 33),
    ("not ", "", 129),
    ("abs(", ")", 132),  # the parenthesis of the 33rd call
    ("if(true, 1, ", ")", 3 + 32 * 12),
], ids=["parentheses", "minus", "not", "calls", "if"])
def test_nesting_5000_deep_is_refused_where_it_passes_the_limit(opening: str, closing: str, column: int) -> None:
    with pytest.raises(ValueError, match=rf"at column {column}: nesting deeper than 32 \(parentheses") as caught:
        parse(opening * 5000 + "a" + closing * 5000)
    assert len(str(caught.value)) < 250, "the expression is shown by its start, not in full"


@pytest.mark.parametrize(("opening", "closing"), [("(", ")"), ("-", ""), ("not ", ""), ("abs(", ")")])
def test_nesting_up_to_the_limit_parses_and_evaluates(opening: str, closing: str) -> None:
    expression = parse(opening * 32 + "a" + closing * 32)
    assert expression.names == {"a"}
    assert expression.evaluate({"a": 1}) in (1, True)


@pytest.mark.parametrize(("operator", "terms", "value"), [
    ("+", 1000, 1000.0), ("-", 1000, -998.0), ("*", 1000, 1.0), ("/", 1000, 1.0), ("and", 680, True),
    ("or", 680, True)])
def test_a_long_chain_evaluates_in_a_loop_not_a_recursion(operator: str, terms: int, value: float | bool) -> None:
    expression = parse(f" {operator} ".join(["a"] * terms))  # as nested calls, 1,000 would pass Python's limit
    assert expression.evaluate({"a": 1.0}) == value


def test_chains_keep_their_order_and_short_circuits() -> None:
    assert parse("10 - 4 - 3 + 1").evaluate({}) == 4
    assert parse("12 / 2 / 3 * 4").evaluate({}) == 8
    assert parse("false and 1 / 0 > 0").evaluate({}) is False
    assert parse("true or 1 / 0 > 0").evaluate({}) is True
    assert parse("0 or 0 or 2").evaluate({}) is True


@pytest.mark.parametrize("text", ["a + " * 1100 + "a", "a + " * 1_000_000 + "a", "a" * 5000])
def test_an_expression_longer_than_the_limit_is_refused_showing_only_its_start(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse(text)
    assert str(caught.value) == (f"in {text[:57]!r}... at column 4097: longer than 4,096 characters; expected "
                                 "at most 4,096 (split it into derived indicators that use each other)")


def test_spaces_after_the_end_are_not_counted() -> None:
    assert parse("a" + " " * 5000).names == {"a"}


def test_a_deep_expression_in_a_device_file_is_a_located_configuration_error(tmp_path: Path) -> None:
    expression = "(" * 5000 + "flow" + ")" * 5000
    (tmp_path / "devices.yaml").write_text(f"""devices:
  - id: plc-1
    protocol: modbus-tcp
    host: 127.0.0.1
    asset: {{domain: water-supply, site: ps01, id: ps01-station, type: water-pumping-station}}
    points:
      - {{name: flow, indicator: flow, table: input_register, address: 10, type: float32, unit: L/s}}
    derived:
      - {{indicator: pressure-margin, expression: '{expression}'}}
""")
    main = tmp_path / "gateway.yaml"
    main.write_text(f"gateway: {{id: gw-1}}\ncatalogue: {CATALOGUE}\ninclude: [devices.yaml]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(main, environ={})
    (issue,) = caught.value.issues
    assert str(issue).startswith(f"{tmp_path}/devices.yaml:9:9: devices[0].derived[0]: in '((((")
    assert "at column 33: nesting deeper than 32" in str(issue)
