"""The Modbus request planner: merging, gaps, limits, never_read, overlaps and remembered splits."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.config import ModbusPoint, ModbusTcpDevice
from drivers.modbus.planner import Plan, Request
from drivers.modbus.tables import Table


def planned(device: ModbusTcpDevice) -> Plan[ModbusPoint]:
    """A copy of the plan the device's validation made (splitting it must not change the device's)."""
    return Plan(device.plan.requests)

def make_device(points: list[dict[str, Any]], **settings_: Any) -> ModbusTcpDevice:
    return ModbusTcpDevice.model_validate({
        "id": "pump-1", "protocol": "modbus-tcp", "host": "127.0.0.1",
        "asset": {"domain": "water", "site": "north", "id": "pump-1", "type": "pump"},
        "points": points, **settings_,
    })


def point(name: str, address: int, table: str = "holding_register", **extra: Any) -> dict[str, Any]:
    return {"name": name, "indicator": "pressure", "table": table, "address": address, **extra}


def spans(plan: Plan) -> list[tuple[Table, int, int]]:
    return [(request.table, request.start, request.count) for request in plan]


def names(request: Request) -> list[str]:
    return [p.name for p in request.points]


def test_neighbouring_points_of_one_table_share_one_request() -> None:
    device = make_device([point("a", 0), point("b", 1, type="int32"), point("c", 3, type="float32")])
    plan = planned(device)
    assert spans(plan) == [(Table.HOLDING_REGISTER, 0, 5)]
    assert names(plan.requests[0]) == ["a", "b", "c"]


def test_gaps_up_to_max_gap_are_bridged() -> None:
    points = [point("a", 0), point("b", 10)]  # registers 1..9 unused: a gap of 9
    assert spans(planned(make_device(points, max_gap=9))) == [(Table.HOLDING_REGISTER, 0, 11)]
    assert spans(planned(make_device(points, max_gap=8))) == [
        (Table.HOLDING_REGISTER, 0, 1), (Table.HOLDING_REGISTER, 10, 1)]


def test_zero_gap_still_merges_touching_points() -> None:
    plan = planned(make_device([point("a", 0), point("b", 1), point("c", 3)], max_gap=0))
    assert spans(plan) == [(Table.HOLDING_REGISTER, 0, 2), (Table.HOLDING_REGISTER, 3, 1)]


def test_requests_never_exceed_the_register_limit() -> None:
    device = make_device([point(f"p{i}", i) for i in range(25)], max_registers_per_request=10)
    assert spans(planned(device)) == [
        (Table.HOLDING_REGISTER, 0, 10), (Table.HOLDING_REGISTER, 10, 10), (Table.HOLDING_REGISTER, 20, 5)]


def test_a_multi_register_point_is_never_cut_by_the_limit() -> None:
    device = make_device([point("a", 0, type="uint64"), point("b", 4, type="uint64"), point("c", 8, type="uint64")],
                         max_registers_per_request=10)
    assert spans(planned(device)) == [(Table.HOLDING_REGISTER, 0, 8), (Table.HOLDING_REGISTER, 8, 4)]


def test_bit_tables_use_the_bit_limit_and_describe_bits() -> None:
    device = make_device([point(f"c{i}", i, "coil") for i in range(2500)])
    plan = planned(device)
    assert spans(plan) == [(Table.COIL, 0, 2000), (Table.COIL, 2000, 500)]
    assert plan.describe() == ["coil 0-1999 (2000 bits, 2000 points)", "coil 2000-2499 (500 bits, 500 points)"]


def test_a_request_never_covers_a_never_read_range() -> None:
    device = make_device([point("a", 0), point("b", 10)],
                         never_read=[{"table": "holding_register", "start": 5, "end": 6}])
    assert spans(planned(device)) == [(Table.HOLDING_REGISTER, 0, 1), (Table.HOLDING_REGISTER, 10, 1)]


def test_never_read_of_another_table_does_not_matter() -> None:
    device = make_device([point("a", 0), point("b", 10)],
                         never_read=[{"table": "input_register", "start": 5, "end": 6}])
    assert spans(planned(device)) == [(Table.HOLDING_REGISTER, 0, 11)]


def test_a_point_inside_never_read_is_a_config_error() -> None:
    # The configuration model runs the planner, so the loader reports this with the file and line.
    with pytest.raises(ValueError, match=r"point 'b' \(holding_register 4-5\) lies in the never_read range 5-6"):
        make_device([point("a", 0), point("b", 4, type="float32")],
                    never_read=[{"table": "holding_register", "start": 5, "end": 6}])


def test_overlapping_points_share_registers() -> None:
    device = make_device([point("low_word", 11), point("whole", 10, type="uint32"), point("high_word", 10)])
    plan = planned(device)
    assert spans(plan) == [(Table.HOLDING_REGISTER, 10, 2)]
    assert names(plan.requests[0]) == ["whole", "high_word", "low_word"]


def test_a_point_longer_than_one_request_is_a_config_error() -> None:
    with pytest.raises(ValueError, match=r"point 'label' spans 20 addresses .* at most 16 .*max_registers_per_request"):
        make_device([point("label", 0, type="string", length=20)], max_registers_per_request=16)


def test_tables_come_in_a_fixed_order_whatever_the_config_order() -> None:
    points = [point("h", 0), point("i", 0, "input_register"), point("d", 0, "discrete_input"), point("c", 0, "coil"),
              point("h2", 200), point("c2", 500, "coil")]
    expected = planned(make_device(points)).describe()
    assert expected == [
        "coil 0-0 (1 bit, 1 point)", "coil 500-500 (1 bit, 1 point)", "discrete_input 0-0 (1 bit, 1 point)",
        "input_register 0-0 (1 register, 1 point)", "holding_register 0-0 (1 register, 1 point)",
        "holding_register 200-200 (1 register, 1 point)"]
    shuffled = list(points)
    random.Random(7).shuffle(shuffled)
    assert planned(make_device(shuffled)).describe() == expected


def test_describe_matches_the_plan_listing_format() -> None:
    device = make_device([point(f"p{i}", i * 2, type="int32") for i in range(40)] + [point("last", 99)],
                         max_gap=0)
    assert planned(device).describe() == ["holding_register 0-79 (80 registers, 40 points)",
                                              "holding_register 99-99 (1 register, 1 point)"]
    device = make_device([point(f"p{i}", i * 2, type="int32") for i in range(49)] + [point("last", 99)])
    assert planned(device).describe() == ["holding_register 0-99 (100 registers, 50 points)"]


def test_split_replaces_a_request_by_two_halves_and_remembers_it() -> None:
    device = make_device([point(f"p{i}", i * 2) for i in range(5)] + [point("other", 0, "input_register")])
    plan = planned(device)
    merged = plan.requests[1]
    assert (merged.start, merged.count) == (0, 9)

    first, second = plan.split(merged)

    assert names(first) == ["p0", "p1"] and (first.start, first.count) == (0, 3)
    assert names(second) == ["p2", "p3", "p4"] and (second.start, second.count) == (4, 5)
    # Remembered in place: the next poll (iterating the plan) makes the split requests.
    assert plan.requests == (plan.requests[0], first, second)
    assert plan.describe()[1:] == ["holding_register 0-2 (3 registers, 2 points)",
                                   "holding_register 4-8 (5 registers, 3 points)"]


def test_repeated_splits_isolate_a_single_point() -> None:
    plan = planned(make_device([point(f"p{i}", i) for i in range(8)]))
    request = plan.requests[0]
    while len(request.points) > 1:
        halves = plan.split(request)
        request = next(half for half in halves if "p5" in names(half))
    assert names(request) == ["p5"]
    # Binary search: 8 points took 3 splits, leaving 4 requests, not 8.
    assert len(plan) == 4
    assert sorted(name for r in plan for name in names(r)) == [f"p{i}" for i in range(8)]


def test_a_single_point_request_cannot_be_split() -> None:
    plan = planned(make_device([point("a", 0)]))
    with pytest.raises(ValueError, match="single point"):
        plan.split(plan.requests[0])


def test_a_request_no_longer_in_the_plan_cannot_be_split_again() -> None:
    plan = planned(make_device([point("a", 0), point("b", 1), point("c", 2)]))
    merged = plan.requests[0]
    plan.split(merged)
    with pytest.raises(ValueError, match="not part of this plan"):
        plan.split(merged)


def test_splitting_one_device_plan_leaves_a_fresh_plan_unchanged() -> None:
    device = make_device([point("a", 0), point("b", 1)])
    plan = planned(device)
    plan.split(plan.requests[0])
    assert len(plan) == 2
    assert len(planned(device)) == 1


POINT_TYPES = {"uint16": 1, "int32": 2, "float64": 4}


@settings(max_examples=150, deadline=None)
@given(
    layout=st.lists(st.tuples(st.integers(0, 400), st.sampled_from(sorted(POINT_TYPES))), min_size=1, max_size=40),
    max_gap=st.integers(0, 20),
    limit=st.integers(4, 60),
    forbidden=st.lists(st.tuples(st.integers(0, 410), st.integers(0, 5)), max_size=3),
)
def test_every_plan_respects_every_rule(layout: list[tuple[int, str]], max_gap: int, limit: int,
                                        forbidden: list[tuple[int, int]]) -> None:
    never_read = [{"table": "holding_register", "start": start, "end": start + length} for start, length in forbidden]
    points = [point(f"p{i}", address, type=kind) for i, (address, kind) in enumerate(layout)]
    try:
        device = make_device(points, max_gap=max_gap, max_registers_per_request=limit, never_read=never_read)
        plan = planned(device)
    except ValueError:
        # Only a point lying in a never_read range is refused here (every point fits the limit).
        assert any(address <= start + length and start < address + POINT_TYPES[kind]
                   for address, kind in layout for start, length in forbidden)
        return
    covered: dict[str, int] = {}
    for request in plan:
        assert 1 <= request.count <= limit
        for start, length in forbidden:
            assert request.end < start or start + length < request.start
        for p in request.points:
            assert request.start <= p.address and p.address + p.register_count <= request.start + request.count
            covered[p.name] = covered.get(p.name, 0) + 1
    assert covered == {p["name"]: 1 for p in points}
    assert planned(device).describe() == plan.describe()
