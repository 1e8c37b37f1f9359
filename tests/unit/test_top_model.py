"""``streamd top``'s pure parts: rates from two samples, rows per panel, sorting, fitting the
panels to a terminal, the cells' text, the keys, and the node_stats answer's parser."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from rich.console import Console

from streamd.cli.top import cells
from streamd.cli.top.model import (
    GroupInfo,
    NodeInfo,
    Rates,
    Sample,
    ShardLag,
    ShardTotals,
    StreamInfo,
    build_view,
    counter_rate,
    merge_nodes,
    plan_rows,
    sort_rows,
    view_document,
)
from streamd.cli.top.screen import ScreenState, render
from streamd.monitoring import ShardCounters
from streamd.node_stats import COLUMNS, shard_rows
from streamd_client.errors import ProtocolError
from streamd_client.node_stats import node_stats_from_wire


def totals(stream: str, shard: str, node: str = "local", **counts: int) -> ShardTotals:
    values = {
        "start_offset": 0,
        "high_watermark": 0,
        "stored_bytes": 0,
        "incoming_records": 0,
        "incoming_bytes": 0,
        "outgoing_records": 0,
        "outgoing_bytes": 0,
        "write_throttled": 0,
        **counts,
    }
    return ShardTotals(stream, shard, node, True, **values)


def sample(at: float, *shards: ShardTotals, groups: tuple[GroupInfo, ...] = ()) -> Sample:
    names = sorted({s.stream for s in shards})
    streams = tuple(
        StreamInfo(n, "ACTIVE", 24, sum(1 for s in shards if s.stream == n), 0) for n in names
    )
    nodes = (NodeInfo("local", "127.0.0.1:7070", "live", len(shards), 50, 100),)
    return Sample(at, nodes, streams, {(s.stream, s.shard_id): s for s in shards}, groups, False)


def test_a_counter_rate_is_the_difference_per_second_and_a_reset_counts_from_zero() -> None:
    assert counter_rate(100, 300, 2.0) == 100.0
    assert counter_rate(500, 40, 2.0) == 20.0  # restarted: 40 since then
    assert counter_rate(None, 300, 2.0) is None  # first frame
    assert counter_rate(1, 2, 0.0) is None


def test_rates_come_per_shard_and_add_up_per_stream_and_node() -> None:
    before = sample(
        10.0,
        totals("orders", "s0", incoming_records=100, incoming_bytes=1000, outgoing_records=50),
        totals("orders", "s1", incoming_records=10),
        totals("clicks", "s0", incoming_records=0, high_watermark=7, start_offset=2),
    )
    after = sample(
        12.0,
        totals("orders", "s0", incoming_records=300, incoming_bytes=5000, outgoing_records=150),
        totals("orders", "s1", incoming_records=30, write_throttled=4),
        totals("clicks", "s0", incoming_records=0, high_watermark=7, start_offset=2),
    )
    view = build_view(before, after)
    assert view.interval_s == 2.0
    streams = {s.name: s for s in view.streams}
    assert streams["orders"].rates == Rates(110.0, 2000.0, 50.0, 0.0, 2.0)
    assert streams["clicks"].rates.write_rps == 0.0
    (node,) = view.nodes
    assert node.shards_led == 3 and node.rates.write_rps == 110.0
    clicks = next(r for r in view.shards if r.stream == "clicks")
    assert clicks.records == 5 and clicks.state == "open"


def test_the_first_frame_has_no_rates_and_a_moved_shard_starts_again() -> None:
    first = build_view(None, sample(1.0, totals("orders", "s0", incoming_records=5)))
    assert first.interval_s is None and first.shards[0].rates == Rates()
    moved = build_view(
        sample(1.0, totals("orders", "s0", "node1", incoming_records=500)),
        sample(2.0, totals("orders", "s0", "node2", incoming_records=20)),
    )
    assert moved.shards[0].rates.write_rps is None  # the totals are of another pipeline


def test_a_described_shard_no_node_reported_is_listed_without_stats() -> None:
    current = sample(1.0, totals("orders", "s0", "node1"))
    stream = StreamInfo(
        "orders", "ACTIVE", 24, 2, 0, shards={"s0": (True, "node1"), "s1": (True, None)}
    )
    view = build_view(None, Sample(1.0, current.nodes, (stream,), current.shards, (), True))
    missing = next(r for r in view.shards if r.shard_id == "s1")
    assert (missing.node, missing.state, missing.records) == ("-", "no stats", None)
    assert cells.shard_cells(missing)[3:] == ["no stats", "-", "-", "-", "-", "-", "-", "-"]


def test_groups_sum_their_lag_and_name_their_worst_shard() -> None:
    group = GroupInfo(
        "orders",
        "billing",
        "STABLE",
        2,
        (ShardLag("s0", 10, 200), ShardLag("s1", 30, 9000), ShardLag("s2", None, None)),
    )
    view = build_view(None, sample(1.0, totals("orders", "s0"), groups=(group,)))
    (row,) = view.groups
    assert (row.lag_records, row.lag_ms_max, row.worst_shard) == (40, 9000, "s1")
    assert view.streams[0].lag_ms_max == 9000
    assert view_document(view)["groups"][0]["lag_records"] == 40


def test_a_node_seen_before_and_gone_now_stays_as_down() -> None:
    seen = {
        "node1": NodeInfo("node1", "h:1", "live"),
        "node2": NodeInfo("node2", "h:2", "live"),
    }
    merged = merge_nodes(seen, [NodeInfo("node1", "h:1", "live")])
    assert [(n.node_id, n.state) for n in merged] == [("node1", "live"), ("node2", "down")]


def test_rows_sort_by_the_chosen_key_largest_first_unknown_last_and_reverse() -> None:
    view = build_view(
        sample(0.0, totals("a", "s0"), totals("b", "s0"), totals("c", "s0")),
        sample(
            1.0,
            totals("a", "s0", incoming_records=5, stored_bytes=900),
            totals("b", "s0", incoming_records=50, stored_bytes=100),
            totals("c", "s0", incoming_records=20, stored_bytes=500),
        ),
    )
    assert [s.name for s in sort_rows(view.streams, "write")] == ["b", "c", "a"]
    assert [s.name for s in sort_rows(view.streams, "write", reverse=True)] == ["a", "c", "b"]
    assert [s.name for s in sort_rows(view.streams, "bytes")] == ["a", "c", "b"]
    assert [s.name for s in sort_rows(view.streams, "name")] == ["a", "b", "c"]
    assert [r.stream for r in sort_rows(view.shards, "lag")] == ["a", "b", "c"]  # no lag column
    first = build_view(None, sample(0.0, totals("a", "s0"), totals("b", "s0")))
    assert [s.name for s in sort_rows(first.streams, "write")] == ["a", "b"]  # unknown: by name
    assert sort_rows([], "write") == []


@pytest.mark.parametrize(
    ("height", "wanted", "plan"),
    [
        (100, {"nodes": 3, "streams": 10, "groups": 2, "shards": 40}, (3, 10, 2, 40)),
        (30, {"nodes": 3, "streams": 10, "groups": 2, "shards": 40}, (3, 10, 2, 5)),
        (40, {"nodes": 3, "streams": 10, "groups": 2, "shards": 40}, (3, 10, 2, 15)),
        (20, {"nodes": 1, "streams": 10, "groups": 0, "shards": 40}, (1, 8, 0, 3)),
        (9, {"nodes": 1, "streams": 10, "groups": 5, "shards": 40}, (1, 2, 0, 0)),
        (4, {"nodes": 1, "streams": 1, "groups": 0, "shards": 1}, (0, 0, 0, 0)),
    ],
)
def test_panels_fit_the_terminal_each_gets_some_rows_first_shards_take_the_rest(
    height: int, wanted: dict[str, int], plan: tuple[int, int, int, int]
) -> None:
    got = plan_rows(height, wanted)
    assert (got["nodes"], got["streams"], got["groups"], got["shards"]) == plan
    used = sum(n + 2 for n in got.values() if n) + 2
    assert used <= max(height, 2)


def test_cells_are_short_and_say_unknown_as_a_dash() -> None:
    assert [cells.rate(v) for v in (None, 0.0, 0.04, 7.25, 123.4, 12_345, 3.2e6)] == [
        "-", "0", "0", "7.2", "123", "12.3k", "3.2M"
    ]  # fmt: skip
    assert [cells.size(v) for v in (None, 512, 1536, 5 * 1024**3)] == [
        "-", "512 B", "1.5 KiB", "5.0 GiB"
    ]  # fmt: skip
    assert [cells.duration_ms(v) for v in (None, 850, 4200, 185_000, 7_800_000)] == [
        "-", "850 ms", "4.2 s", "3m 05s", "2h 10m"
    ]  # fmt: skip
    assert cells.free_share(25, 100) == "25 B (25%)" and cells.free_share(None, 100) == "-"


def test_a_key_sorts_and_the_same_key_again_reverses() -> None:
    state = ScreenState()
    assert state.press("b") and (state.sort, state.reverse) == ("bytes", False)
    assert state.press("b") and (state.sort, state.reverse) == ("bytes", True)
    assert state.press("N") and (state.sort, state.reverse) == ("name", False)
    assert not state.press("x") and state.sort == "name"


def test_a_frame_fitted_to_a_short_terminal_says_how_many_rows_it_shows() -> None:
    shards = [totals("orders", f"s{i:02}", incoming_records=i) for i in range(30)]
    zeros = [totals("orders", f"s{i:02}") for i in range(30)]
    view = build_view(sample(0.0, *zeros), sample(1.0, *shards))
    console = Console(width=140, record=True, color_system=None)
    console.print(render(view, ScreenState(), endpoint="127.0.0.1:7070", height=20))
    text = console.export_text()
    assert "Nodes (1)" in text and "Streams (1)" in text and "Shards (10 of 30)" in text
    assert len(text.splitlines()) == 20
    assert "s29" in text and "s28" in text and "s00" not in text  # sorted: fastest first
    console.print(render(view, ScreenState(), endpoint="e", height=None))
    assert "Shards (30)" in console.export_text()


# -- node_stats: the server's rows and the client's parser -----------------------------------


@dataclass
class FakePipeline:
    shard_id: str
    counters: ShardCounters = field(default_factory=ShardCounters)
    high_watermark: int = 9
    log: Any = None
    shard: Any = None

    def __post_init__(self) -> None:
        self.log = type("L", (), {"start_offset": 2, "size_bytes": 640})()
        self.shard = type("S", (), {"is_open": True})()


@dataclass
class FakeStream:
    meta: Any
    pipelines: Mapping[str, FakePipeline]
    replicated: Mapping[str, Any] = field(default_factory=dict)


def test_node_stats_rows_are_bounded_and_parse_back() -> None:
    meta = type("M", (), {"status": "ACTIVE"})()
    pipes = {f"s{i}": FakePipeline(f"s{i}", ShardCounters(incoming_records=i)) for i in range(5)}
    streams = {"orders": FakeStream(meta, pipes)}
    rows, truncated = shard_rows(streams, rows_max=3)  # type: ignore[arg-type]
    assert truncated and [r[1] for r in rows] == ["s0", "s1", "s2"]
    answer = {
        "node_id": None,
        "address": None,
        "shards_held": 5,
        "data_dir_free_bytes": 1,
        "data_dir_size_bytes": 2,
        "columns": list(COLUMNS),
        "shards": rows,
        "truncated": truncated,
    }
    stats = node_stats_from_wire(answer)
    assert stats.truncated and stats.shards[2].incoming_records == 2
    assert (stats.shards[0].start_offset, stats.shards[0].stored_bytes) == (2, 640)
    for broken in (
        {**answer, "columns": ["stream"]},
        {**answer, "shards": [["orders", "s0", "yes", *[0] * 8]]},
        {**answer, "shards": [["orders", "s0", True, -1, *[0] * 7]]},
        {**answer, "truncated": None},
    ):
        with pytest.raises(ProtocolError):
            node_stats_from_wire(broken)
