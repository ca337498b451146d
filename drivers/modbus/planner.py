"""Which Modbus requests one poll of a device makes.

Points of one table are merged into as few read requests as the device allows:
neighbouring points share a request when the unused registers (or bits) between
them are at most `max_gap`, the request stays within `max_registers_per_request`
(or `max_bits_per_request`) and never covers a `never_read` range. Points may
overlap (two points reading the same register); each still gets its value.

Some devices refuse a read that touches an address they do not implement, even
when no point lives there (Modbus exception 02, illegal data address). The driver
then splits the refused request in two halves (`Plan.split`, or `halves()`).
Halving is a binary search: one bad register among n points is isolated in about
log2(n) extra requests, and every half that reads fine stays one request.
Splitting into one request per point would find it in a single step, but would
leave the device with n requests per poll for ever. What the device taught is
then planned with again (`plan_table` with an `allowed` rule, see learning.py),
which merges the readable blocks back into the fewest requests that succeed.

Pure: no protocol library, no I/O. It plans anything with a name, a table, an
address and a size (the configuration's points), so the configuration can plan
its devices when it is validated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from drivers.modbus.tables import Table


class Addressed(Protocol):
    """What the planner needs of a point."""

    @property
    def name(self) -> str: ...

    @property
    def table(self) -> Table: ...

    @property
    def address(self) -> int: ...

    @property
    def register_count(self) -> int:
        """Registers (or bits, for bit tables) the point occupies."""


class Span(Protocol):
    """An address range of one table (inclusive), e.g. a `never_read` range."""

    @property
    def table(self) -> Table: ...

    @property
    def start(self) -> int: ...

    @property
    def end(self) -> int: ...


P = TypeVar("P", bound=Addressed)

# Requests are made table by table in this order, then by address, so a plan
# (and the `municipal-gateway plan` listing) is the same on every run.
TABLE_ORDER = (Table.COIL, Table.DISCRETE_INPUT, Table.INPUT_REGISTER, Table.HOLDING_REGISTER)


# eq=False: a request is identified by the object itself, so the driver can key
# per-request caches by it cheaply and a split request is never mistaken for its halves.
@dataclass(frozen=True, slots=True, eq=False)
class Request(Generic[P]):
    """One read: `count` registers (or bits) of `table` from `start`, feeding `points`."""

    table: Table
    start: int
    count: int
    points: tuple[P, ...]

    @property
    def end(self) -> int:
        """Last address read (inclusive)."""
        return self.start + self.count - 1

    def describe(self, points: int | None = None, note: str = "") -> str:
        """E.g. "holding_register 0-9 (10 registers, 4 points)"; `points` counts only some of them (one
        device's, of a request several share), `note` is added inside the brackets."""
        unit = "bit" if self.table.is_bits else "register"
        counted = len(self.points) if points is None else points
        return (f"{self.table} {self.start}-{self.end} "
                f"({plural(self.count, unit)}, {plural(counted, 'point')}{note})")


class Plan(Generic[P]):
    """The requests of one poll of one device, in order. Remembers the splits made by `split()`."""

    def __init__(self, requests: Sequence[Request[P]]) -> None:
        self._requests = list(requests)

    @property
    def requests(self) -> tuple[Request[P], ...]:
        return tuple(self._requests)

    def __iter__(self) -> Iterator[Request[P]]:
        return iter(tuple(self._requests))

    def __len__(self) -> int:
        return len(self._requests)

    def describe(self) -> list[str]:
        return [request.describe() for request in self._requests]

    def split(self, request: Request[P]) -> tuple[Request[P], Request[P]]:
        """Replace `request` by two requests, each with half of its points, and return them.

        Raises ValueError for a request of a single point (nothing left to split)
        or one that is not (or no longer) part of this plan.
        """
        if len(request.points) < 2:
            raise ValueError(f"cannot split {request.describe()}: it reads a single point")
        index = next((i for i, known in enumerate(self._requests) if known is request), None)
        if index is None:
            raise ValueError(f"{request.describe()} is not part of this plan")
        first, second = halves(request)
        self._requests[index:index + 1] = (first, second)
        return first, second


def halves(request: Request[P]) -> tuple[Request[P], Request[P]]:
    """Two requests, each with half of the points of `request` (which has at least two)."""
    middle = len(request.points) // 2
    return (request_for(request.table, request.points[:middle]),
            request_for(request.table, request.points[middle:]))


# May a request of one table read from `start` up to `end` (exclusive)?
Allowed = Callable[[int, int], bool]


def plan_points(points: Sequence[P], max_registers: int, max_bits: int, max_gap: int,
                never_read: Sequence[Span] = ()) -> Plan[P]:
    """The merged requests for `points`: at most `max_registers` registers (or `max_bits` bits) per
    request, bridging gaps of at most `max_gap`, never covering a `never_read` span.

    Raises ValueError when a point can never be read: it is longer than one
    request may be, or it lies in a `never_read` range.
    """
    requests: list[Request[P]] = []
    for table in TABLE_ORDER:
        in_table = [point for point in points if point.table is table]
        if not in_table:
            continue
        limit = max_bits if table.is_bits else max_registers
        forbidden = [span for span in never_read if span.table is table]
        for point in in_table:
            _check_readable(point, limit, forbidden, table)
        requests.extend(plan_table(table, in_table, limit, max_gap, _avoiding(forbidden)))
    return Plan(requests)


def _check_readable(point: Addressed, limit: int, forbidden: Sequence[Span], table: Table) -> None:
    size = point.register_count
    if size > limit:
        setting = "max_bits_per_request" if table.is_bits else "max_registers_per_request"
        raise ValueError(f"point {point.name!r} spans {size} addresses but the device reads at most "
                         f"{limit} per request ({setting})")
    last = point.address + size - 1
    for span in forbidden:
        if point.address <= span.end and span.start <= last:
            raise ValueError(f"point {point.name!r} ({table} {point.address}-{last}) lies in the never_read "
                             f"range {span.start}-{span.end}")


def plan_table(table: Table, points: Sequence[P], limit: int, max_gap: int,
               allowed: Allowed = lambda start, end: True) -> list[Request[P]]:
    """Greedy merge of the points of one table, in address order: a point joins the request before it when
    the gap is at most `max_gap`, the request stays within `limit` and `allowed` accepts the merged range.
    (Greedy is the fewest requests: any part of an acceptable request is acceptable.) A point alone is
    always a request of its own."""
    if not points:
        return []
    # Longer points first at the same address, then by name: a stable, repeatable order.
    ordered = sorted(points, key=lambda p: (p.address, -p.register_count, p.name))
    requests: list[Request[P]] = []
    group: list[P] = [ordered[0]]
    start = ordered[0].address
    end = start + ordered[0].register_count  # exclusive
    for point in ordered[1:]:
        point_end = point.address + point.register_count
        new_end = max(end, point_end)
        fits = (point.address - end <= max_gap
                and new_end - start <= limit
                and allowed(start, new_end))
        if fits:
            group.append(point)
            end = new_end
        else:
            requests.append(Request(table, start, end - start, tuple(group)))
            group, start, end = [point], point.address, point_end
    requests.append(Request(table, start, end - start, tuple(group)))
    return requests


def _avoiding(forbidden: Sequence[Span]) -> Allowed:
    """The rule of `never_read`: a merged request must not touch any of these ranges."""
    return lambda start, end: not any(start <= span.end and span.start < end for span in forbidden)


def request_for(table: Table, points: Sequence[P]) -> Request[P]:
    """The smallest request reading all of `points`."""
    start = min(point.address for point in points)
    end = max(point.address + point.register_count for point in points)
    return Request(table, start, end - start, tuple(points))


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
