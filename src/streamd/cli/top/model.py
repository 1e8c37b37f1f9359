"""``streamd top``'s pure part: samples in, the rows of every panel out (no I/O, no terminal).

A ``Sample`` is what one round of client calls saw (gather.py): the nodes, the streams as
described, each shard's totals from the node that runs it (``node_stats``), and the groups with
their lag. Rates are the difference of two samples' totals over the monotonic time between
them, per shard, then summed per stream and node: records and bytes written and read, records
refused THROTTLED. A total that went down means the pipeline started again (a restart, a leader
move, a stream made again under the same name): the new total is then the count since that
start, as Prometheus's ``rate`` treats a counter reset. Without a previous sample (the first
frame) there are no rates yet, shown as blank rather than as 0.

Nodes a previous frame saw that are no longer registered stay on screen as ``down`` (the
embedded server has no registration: its one node is ``local``). ``sort_rows`` orders a panel
by the chosen key (name, write, read, bytes stored, lag), ``plan_rows`` fits the panels to the
terminal's height, and ``view_document`` is the ``--json`` form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

SORT_KEYS: Final = {"n": "name", "w": "write", "r": "read", "b": "bytes", "l": "lag"}
PANELS: Final = ("nodes", "streams", "groups", "shards")
PANEL_LINES_FIXED: Final = 2  # a table's title and header (screen.py draws no rules)
HEADER_LINES: Final = 2  # the summary line and the key help line
ROWS_MIN: Final = 3  # a panel shown at all gets this many rows before any gets more

NO_STATS: Final = "no stats"
UNKNOWN_NODE: Final = "-"

ShardKey = tuple[str, str]  # (stream, shard id)


@dataclass(frozen=True, slots=True)
class ShardTotals:
    """One shard as its node's ``node_stats`` answered (streamd_client.node_stats)."""

    stream: str
    shard_id: str
    node: str  # the node id, or "local" for an embedded server
    is_open: bool
    start_offset: int
    high_watermark: int
    stored_bytes: int
    incoming_records: int
    incoming_bytes: int
    outgoing_records: int
    outgoing_bytes: int
    write_throttled: int


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node_id: str  # "local" for an embedded server
    address: str
    state: str  # live, unreachable (registered, but did not answer), down (no longer registered)
    shards_held: int | None = None
    free_bytes: int | None = None
    size_bytes: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class StreamInfo:
    name: str
    status: str
    retention_hours: int
    open_shards: int
    closed_shards: int
    reshard: str | None = None  # "resize to 8: 2/4" while one runs
    # shard id -> (open, leader node id or None): what describe said, for the shards that no
    # node's stats carried (their node down or not answering)
    shards: Mapping[str, tuple[bool, str | None]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ShardLag:
    shard_id: str
    records: int | None  # None: unknown now (its node down)
    ms: int | None


@dataclass(frozen=True, slots=True)
class GroupInfo:
    stream: str
    group: str
    state: str
    members: int | None
    shards: tuple[ShardLag, ...] = ()


@dataclass(frozen=True, slots=True)
class Sample:
    taken_s: float  # monotonic
    nodes: tuple[NodeInfo, ...]
    streams: tuple[StreamInfo, ...]
    shards: Mapping[ShardKey, ShardTotals]
    groups: tuple[GroupInfo, ...]
    clustered: bool
    notes: tuple[str, ...] = ()  # what could not be read this round, and what was left out


@dataclass(frozen=True, slots=True)
class Rates:
    write_rps: float | None = None
    write_bps: float | None = None
    read_rps: float | None = None
    read_bps: float | None = None
    throttled_rps: float | None = None

    def __add__(self, other: Rates) -> Rates:
        return Rates(*(_add(a, b) for a, b in zip(self._values(), other._values(), strict=True)))

    def _values(self) -> tuple[float | None, ...]:
        return (self.write_rps, self.write_bps, self.read_rps, self.read_bps, self.throttled_rps)


@dataclass(frozen=True, slots=True)
class ShardRow:
    stream: str
    shard_id: str
    node: str
    state: str  # open, closed, or "no stats" (described, but no live node reported it)
    records: int | None  # stored: high watermark minus the oldest stored offset
    stored_bytes: int | None
    rates: Rates

    @property
    def is_open(self) -> bool:
        return self.state == "open"


@dataclass(frozen=True, slots=True)
class StreamRow:
    name: str
    status: str
    open_shards: int
    closed_shards: int
    retention_hours: int
    stored_bytes: int
    rates: Rates
    lag_ms_max: int | None  # the worst group's worst shard


@dataclass(frozen=True, slots=True)
class GroupRow:
    stream: str
    group: str
    state: str
    members: int | None
    lag_records: int | None  # summed over its shards (None: none known)
    lag_ms_max: int | None
    worst_shard: str | None


@dataclass(frozen=True, slots=True)
class NodeRow:
    node_id: str
    address: str
    state: str
    shards_led: int
    shards_held: int | None
    free_bytes: int | None
    size_bytes: int | None
    rates: Rates
    error: str | None


@dataclass(frozen=True, slots=True)
class View:
    nodes: list[NodeRow]
    streams: list[StreamRow]
    groups: list[GroupRow]
    shards: list[ShardRow]
    interval_s: float | None  # between the two samples; None on the first frame
    clustered: bool
    notes: tuple[str, ...]


def counter_rate(previous: int | None, current: int, seconds: float) -> float | None:
    """Per second between two readings of a total; a reset counts from zero (module doc)."""
    if previous is None or seconds <= 0:
        return None
    delta = current - previous if current >= previous else current
    return delta / seconds


def shard_rates(previous: ShardTotals | None, current: ShardTotals, seconds: float) -> Rates:
    def rate(name: str) -> float | None:
        before = None if previous is None else getattr(previous, name)
        return counter_rate(before, getattr(current, name), seconds)

    if previous is not None and previous.node != current.node:
        return Rates()  # its leader moved: the new node's totals started elsewhere
    return Rates(
        rate("incoming_records"),
        rate("incoming_bytes"),
        rate("outgoing_records"),
        rate("outgoing_bytes"),
        rate("write_throttled"),
    )


def merge_nodes(seen: Mapping[str, NodeInfo], current: Sequence[NodeInfo]) -> list[NodeInfo]:
    """This round's nodes, plus those seen before and gone now, marked ``down``."""
    here = {n.node_id for n in current}
    gone = [
        NodeInfo(n.node_id, n.address, "down")
        for node_id, n in seen.items()
        if node_id not in here and node_id != "local"
    ]
    return [*current, *gone]


def build_view(previous: Sample | None, current: Sample) -> View:
    """Every panel's rows (unsorted) from two successive samples (or one, without rates)."""
    seconds = 0.0 if previous is None else current.taken_s - previous.taken_s
    before = {} if previous is None else previous.shards
    shard_rows = [
        ShardRow(
            t.stream,
            t.shard_id,
            t.node,
            "open" if t.is_open else "closed",
            max(0, t.high_watermark - t.start_offset),
            t.stored_bytes,
            shard_rates(before.get(key), t, seconds) if previous is not None else Rates(),
        )
        for key, t in current.shards.items()
    ]
    for stream in current.streams:
        for shard_id, (is_open, leader) in sorted(stream.shards.items()):
            if (stream.name, shard_id) not in current.shards and (is_open or leader):
                node = leader or UNKNOWN_NODE
                shard_rows.append(
                    ShardRow(stream.name, shard_id, node, NO_STATS, None, None, Rates())
                )
    groups = [_group_row(g) for g in current.groups]
    return View(
        _node_rows(current.nodes, shard_rows),
        _stream_rows(current.streams, shard_rows, groups),
        groups,
        shard_rows,
        None if previous is None else seconds,
        current.clustered,
        current.notes,
    )


def _group_row(group: GroupInfo) -> GroupRow:
    known = [s for s in group.shards if s.records is not None]
    worst = max(known, key=lambda s: (s.ms or 0, s.records or 0), default=None)
    return GroupRow(
        group.stream,
        group.group,
        group.state,
        group.members,
        sum(s.records or 0 for s in known) if known else None,
        None if worst is None else worst.ms,
        None if worst is None else worst.shard_id,
    )


def _stream_rows(
    streams: Iterable[StreamInfo], shards: list[ShardRow], groups: list[GroupRow]
) -> list[StreamRow]:
    by_stream: dict[str, list[ShardRow]] = {}
    for row in shards:
        by_stream.setdefault(row.stream, []).append(row)
    lag: dict[str, int] = {}
    for g in groups:
        if g.lag_ms_max is not None:
            lag[g.stream] = max(lag.get(g.stream, 0), g.lag_ms_max)
    out: list[StreamRow] = []
    for s in streams:
        rows = by_stream.get(s.name, [])
        status = s.status if s.reshard is None else f"{s.status} ({s.reshard})"
        out.append(
            StreamRow(
                s.name,
                status,
                s.open_shards,
                s.closed_shards,
                s.retention_hours,
                sum(r.stored_bytes or 0 for r in rows),
                _sum_rates(r.rates for r in rows),
                lag.get(s.name),
            )
        )
    return out


def _node_rows(nodes: Iterable[NodeInfo], shards: list[ShardRow]) -> list[NodeRow]:
    out: list[NodeRow] = []
    for n in nodes:
        mine = [r for r in shards if r.node == n.node_id]
        out.append(
            NodeRow(
                n.node_id,
                n.address,
                n.state,
                sum(1 for r in mine if r.is_open),
                n.shards_held,
                n.free_bytes,
                n.size_bytes,
                _sum_rates(r.rates for r in mine),
                n.error,
            )
        )
    return out


def _sum_rates(rates: Iterable[Rates]) -> Rates:
    total = Rates()
    first = True
    for r in rates:
        total = r if first else total + r
        first = False
    return total


def _add(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


# -- sorting and layout ----------------------------------------------------------------------

T = TypeVar("T")


def _desc(value: float | int | None) -> tuple[int, float]:
    """A sort key putting the largest first and unknown values last (ascending order)."""
    return (1, 0.0) if value is None else (0, -float(value))


def sort_rows(rows: Sequence[T], key: str, reverse: bool = False) -> list[T]:
    """``rows`` (any panel's) ordered by ``key`` (a SORT_KEYS value). Names sort A to Z, the
    others largest first; ``reverse`` flips either. A key a panel has no column for (lag for
    shards) sorts it by name."""
    pick = _SORTERS.get((type(rows[0]) if rows else object, key))
    by_name = _NAMES.get(type(rows[0]) if rows else object)
    if by_name is None:
        return list(rows)
    ordered = sorted(rows, key=by_name)
    if pick is not None:
        ordered = sorted(ordered, key=pick)
    return ordered[::-1] if reverse else ordered


_NAMES: dict[type, Callable[[Any], Any]] = {
    NodeRow: lambda r: r.node_id,
    StreamRow: lambda r: r.name,
    GroupRow: lambda r: (r.stream, r.group),
    ShardRow: lambda r: (r.stream, r.shard_id),
}
_SORTERS: dict[tuple[type, str], Callable[[Any], Any]] = {
    **{(t, "write"): (lambda r: _desc(r.rates.write_rps)) for t in (NodeRow, StreamRow, ShardRow)},
    **{(t, "read"): (lambda r: _desc(r.rates.read_rps)) for t in (NodeRow, StreamRow, ShardRow)},
    (StreamRow, "bytes"): lambda r: _desc(r.stored_bytes),
    (ShardRow, "bytes"): lambda r: _desc(r.stored_bytes),
    (NodeRow, "bytes"): lambda r: _desc(r.free_bytes),
    (StreamRow, "lag"): lambda r: _desc(r.lag_ms_max),
    (GroupRow, "lag"): lambda r: _desc(r.lag_ms_max),
    (GroupRow, "write"): lambda r: _desc(r.lag_ms_max),  # groups: lag is what matters
    (GroupRow, "read"): lambda r: _desc(r.lag_ms_max),
    (GroupRow, "bytes"): lambda r: _desc(r.lag_records),
}


def plan_rows(height: int, wanted: Mapping[str, int]) -> dict[str, int]:
    """How many rows each panel (PANELS order) shows on a terminal ``height`` lines tall.

    Each shown panel costs PANEL_LINES_FIXED lines besides its rows. First every panel with
    rows gets up to ROWS_MIN of them, in PANELS order while lines last; then each in turn grows
    to all it wants, shards last, so the shard list takes whatever is left. A panel that does
    not fit is hidden (0)."""
    budget = height - HEADER_LINES
    plan = dict.fromkeys(PANELS, 0)
    for panel in PANELS:
        want = wanted.get(panel, 0)
        if want <= 0:
            continue
        first = min(want, ROWS_MIN)
        if budget >= PANEL_LINES_FIXED + 1:
            plan[panel] = min(first, budget - PANEL_LINES_FIXED)
            budget -= PANEL_LINES_FIXED + plan[panel]
    for panel in PANELS:
        if plan[panel] == 0:
            continue
        more = min(wanted.get(panel, 0) - plan[panel], budget)
        plan[panel] += more
        budget -= more
    return plan


def view_document(view: View) -> dict[str, Any]:
    """The ``--json`` form of a frame: every row of every panel, rates per second (null on the
    first frame), sizes in bytes, lag in ms."""

    def rates(r: Rates) -> dict[str, float | None]:
        return {
            "write_records_per_s": r.write_rps,
            "write_bytes_per_s": r.write_bps,
            "read_records_per_s": r.read_rps,
            "read_bytes_per_s": r.read_bps,
            "throttled_records_per_s": r.throttled_rps,
        }

    return {
        "interval_s": view.interval_s,
        "clustered": view.clustered,
        "notes": list(view.notes),
        "nodes": [
            {
                "node_id": n.node_id,
                "address": n.address,
                "state": n.state,
                "shards_led": n.shards_led,
                "shards_held": n.shards_held,
                "data_dir_free_bytes": n.free_bytes,
                "data_dir_size_bytes": n.size_bytes,
                "error": n.error,
                **rates(n.rates),
            }
            for n in view.nodes
        ],
        "streams": [
            {
                "stream": s.name,
                "status": s.status,
                "open_shards": s.open_shards,
                "closed_shards": s.closed_shards,
                "retention_hours": s.retention_hours,
                "stored_bytes": s.stored_bytes,
                "lag_ms_max": s.lag_ms_max,
                **rates(s.rates),
            }
            for s in view.streams
        ],
        "groups": [
            {
                "stream": g.stream,
                "group": g.group,
                "state": g.state,
                "members": g.members,
                "lag_records": g.lag_records,
                "lag_ms_max": g.lag_ms_max,
                "worst_shard": g.worst_shard,
            }
            for g in view.groups
        ],
        "shards": [
            {
                "stream": r.stream,
                "shard_id": r.shard_id,
                "node": r.node,
                "state": r.state,
                "records": r.records,
                "stored_bytes": r.stored_bytes,
                **rates(r.rates),
            }
            for r in view.shards
        ],
    }
