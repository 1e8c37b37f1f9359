"""The console's pure parts: KPL aggregates, CSRF checks, shard geometry, record display,
live-update diffs, rebalance events, request parsing (frontends/console)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamd.frontends.console import kpl
from streamd.frontends.console.csrf import CsrfRefused, Sessions, session_cookie, session_of
from streamd.frontends.console.groupwatch import GroupWatch, rebalance_events
from streamd.frontends.console.html import esc, paginate
from streamd.frontends.console.http import request_of
from streamd.frontends.console.live import changes, sse_event
from streamd.frontends.console.records import hex_dump, position_of, shown, timestamp_ms_of
from streamd.frontends.console.shapes import HASH_SPACE, bar_rows, generations, lineage
from streamd.frontends.kinesis.http_wire import ParsedRequest
from streamd_client.errors import InvalidArgumentError
from streamd_client.model import Position, make_sequence

# -- KPL ------------------------------------------------------------------------------------------


def test_a_kpl_aggregate_opens_into_its_user_records() -> None:
    records = [("k1", b"one"), ("k2", b"\x00\xff two"), ("k1", b"")]
    blob = kpl.aggregate(records)
    assert blob[:4] == bytes.fromhex("f3899ac2")
    opened = kpl.deaggregate(blob)
    assert opened is not None
    assert [(r.partition_key, r.data) for r in opened] == records


def test_data_with_the_magic_but_a_wrong_digest_is_not_an_aggregate() -> None:
    blob = bytearray(kpl.aggregate([("k", b"x")]))
    blob[-1] ^= 1
    assert not kpl.looks_aggregated(bytes(blob))
    assert kpl.deaggregate(bytes(blob)) is None
    assert kpl.deaggregate(b"plain data") is None


def test_an_aggregate_over_the_sub_record_bound_is_shown_raw() -> None:
    blob = kpl.aggregate([("k", b"x")] * 5)
    assert kpl.deaggregate(blob, records_max=4) is None
    assert kpl.deaggregate(blob, records_max=5) is not None


@given(st.binary(max_size=300))
def test_any_bytes_behind_the_magic_decode_or_are_refused(body: bytes) -> None:
    import hashlib

    blob = kpl.KPL_MAGIC + body + hashlib.md5(body, usedforsecurity=False).digest()
    opened = kpl.deaggregate(blob)  # never raises
    assert opened is None or all(isinstance(r.data, bytes) for r in opened)


# -- CSRF ------------------------------------------------------------------------------------------


def test_a_post_passes_only_with_host_origin_session_and_token() -> None:
    sessions = Sessions(b"k" * 32)
    session = sessions.new_session()
    token = sessions.token_for(session)
    sessions.check_post("127.0.0.1:8080", "http://127.0.0.1:8080", session, token)
    sessions.check_post("localhost:8080", "http://localhost:8080", session, token)
    refusals = [
        ("127.0.0.1:8080", None, session, token, "no Origin"),
        ("127.0.0.1:8080", "http://evil.example", session, token, "another origin"),
        ("127.0.0.1:8080", "http://127.0.0.1:8080", None, token, "no console session"),
        ("127.0.0.1:8080", "http://127.0.0.1:8080", session, None, "token"),
        ("127.0.0.1:8080", "http://127.0.0.1:8080", session, "0" * 64, "token"),
        # DNS rebinding: the attacker's name resolves to us; Origin and Host agree, but the name
        # is not ours.
        ("evil.example:8080", "http://evil.example:8080", session, token, "not served under"),
        (None, "http://127.0.0.1:8080", session, token, "Host"),
    ]
    for host, origin, sess, tok, said in refusals:
        with pytest.raises(CsrfRefused, match=said):
            sessions.check_post(host, origin, sess, tok)


def test_a_token_is_bound_to_its_session_and_the_key() -> None:
    one, two = Sessions(b"a" * 32), Sessions(b"b" * 32)
    session = one.new_session()
    assert one.token_for(session) != two.token_for(session)
    assert one.token_for(session) != one.token_for(one.new_session())


def test_the_named_host_of_the_listener_is_allowed() -> None:
    sessions = Sessions(allowed_hosts=frozenset({"console.internal"}))
    assert sessions.check_host("console.internal:8080") == "console.internal:8080"
    assert sessions.check_host("[::1]:8080") == "[::1]:8080"
    with pytest.raises(CsrfRefused):
        sessions.check_host("other.internal:8080")


def test_the_session_cookie_round_trips_and_odd_cookies_are_ignored() -> None:
    session = Sessions.new_session()
    header = session_cookie(session).split(";")[0]
    assert session_of(f"a=b; {header}; c=d") == session
    assert "HttpOnly" in session_cookie(session) and "SameSite=Strict" in session_cookie(session)
    assert session_of("streamd_console=short") is None
    assert session_of(None) is None


# -- shards ----------------------------------------------------------------------------------------


def _shard(
    shard_id: str, start: int, end: int, *, closed: bool = False, parents: tuple[str, ...] = ()
) -> dict[str, object]:
    return {
        "shard_id": shard_id,
        "hash_key_start": start,
        "hash_key_end": end,
        "ending_sequence": make_sequence(0, 5) if closed else None,
        "parent_shard_id": parents[0] if parents else None,
        "adjacent_parent_shard_id": parents[1] if len(parents) > 1 else None,
    }


HALF = HASH_SPACE // 2


def _split_and_merge() -> list[dict[str, object]]:
    return [
        _shard("shardId-000000000000", 0, HALF - 1, closed=True),
        _shard("shardId-000000000001", HALF, HASH_SPACE - 1, closed=True),
        _shard("shardId-000000000002", 0, HALF // 2 - 1, parents=("shardId-000000000000",)),
        _shard(
            "shardId-000000000003", HALF // 2, HALF - 1, closed=True,
            parents=("shardId-000000000000",),
        ),
        _shard(
            "shardId-000000000004",
            HALF // 2,
            HASH_SPACE - 1,
            parents=("shardId-000000000003", "shardId-000000000001"),
        ),
    ]  # fmt: skip


def test_generations_put_a_child_below_its_deepest_parent() -> None:
    depth = generations(_split_and_merge())
    assert depth == {
        "shardId-000000000000": 0,
        "shardId-000000000001": 0,
        "shardId-000000000002": 1,
        "shardId-000000000003": 1,
        "shardId-000000000004": 2,
    }


def test_the_bar_cells_cover_their_ranges_and_open_ones_tile_the_space() -> None:
    cells, left_out = bar_rows(_split_and_merge())
    assert left_out == 0
    by_id = {c.shard_id: c for c in cells}
    assert by_id["shardId-000000000000"].left == 0 and by_id["shardId-000000000000"].width == 0.5
    assert by_id["shardId-000000000004"].left == 0.25
    assert by_id["shardId-000000000004"].width == 0.75
    open_cells = sorted((c for c in cells if c.is_open), key=lambda c: c.start)
    assert [c.shard_id for c in open_cells] == ["shardId-000000000002", "shardId-000000000004"]
    assert open_cells[0].left + open_cells[0].width == open_cells[1].left  # they tile 0..1
    assert open_cells[1].left + open_cells[1].width == 1
    cells, left_out = bar_rows(_split_and_merge(), cells_max=2)
    assert left_out == 3  # open shards are drawn first
    assert {c.shard_id for c in cells} == {"shardId-000000000002", "shardId-000000000004"}


def test_the_lineage_hangs_a_merge_under_its_first_parent_and_names_the_other() -> None:
    roots = lineage(_split_and_merge())
    assert [r.shard_id for r in roots] == ["shardId-000000000000", "shardId-000000000001"]
    split = roots[0]
    assert [c.shard_id for c in split.children] == ["shardId-000000000002", "shardId-000000000003"]
    merged = split.children[1].children[0]
    assert merged.shard_id == "shardId-000000000004"
    assert merged.merged_with == "shardId-000000000001" and merged.is_open


# -- records ---------------------------------------------------------------------------------------


def test_every_iterator_type_becomes_its_position() -> None:
    seq = make_sequence(3, 7)
    assert position_of("", "", "") == Position.trim_horizon()
    assert position_of("TRIM_HORIZON", "", "") == Position.trim_horizon()
    assert position_of("LATEST", "", "") == Position.latest()
    assert position_of("AT_SEQUENCE_NUMBER", seq, "") == Position.at_sequence(seq)
    assert position_of("AFTER_SEQUENCE_NUMBER", seq, "") == Position.after_sequence(seq)
    assert position_of("AT_TIMESTAMP", "", "2026-01-02T03:04:05Z") == Position.at_timestamp(
        1767323045000
    )
    assert timestamp_ms_of("2026-01-02T03:04:05") == 1767323045000  # no zone: UTC
    assert timestamp_ms_of("1767323045123") == 1767323045123
    for kind, seq_text, ts in [
        ("AT_SEQUENCE_NUMBER", "", ""),
        ("AT_SEQUENCE_NUMBER", "12", ""),
        ("AT_TIMESTAMP", "", "yesterday"),
        ("SOMETHING", "", ""),
    ]:
        with pytest.raises(InvalidArgumentError):
            position_of(kind, seq_text, ts)


@given(st.binary(max_size=200))
def test_the_hex_view_holds_every_byte(data: bytes) -> None:
    dump = hex_dump(data)
    recovered = b"".join(bytes.fromhex(line[10:57]) for line in dump.splitlines() if line)
    assert recovered == data


def test_json_is_pretty_printed_and_non_json_shown_as_text() -> None:
    assert shown(b'{"a":[1,2]}', "json") == json.dumps({"a": [1, 2]}, indent=2)
    assert shown(b"not json", "json") == "not json"
    assert shown(b"caf\xc3\xa9 \xff", "text") == "café \ufffd"
    big = shown(b"x" * 70_000, "text")
    assert big.endswith("more bytes") and len(big) < 70_000


def test_hostile_values_are_escaped() -> None:
    assert esc('<script>alert("x")</script>') == (
        "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
    )


def test_paginate_clamps_the_page() -> None:
    assert paginate(list(range(120)), 3, 50) == (list(range(100, 120)), 3, 3)
    assert paginate(list(range(120)), 9, 50)[1] == 3
    assert paginate([], 0, 50) == ([], 1, 1)


# -- live updates ----------------------------------------------------------------------------------


def test_only_changed_fragments_are_sent_again() -> None:
    sent: dict[str, str] = {}
    first = changes(sent, {"html": {"a": "<p>1</p>", "b": "<p>2</p>"}, "charts": {"c": {"x": []}}})
    assert set(first["html"]) == {"a", "b"} and "c" in first["charts"]
    assert (
        changes(sent, {"html": {"a": "<p>1</p>", "b": "<p>2</p>"}, "charts": {"c": {"x": []}}})
        == {}
    )
    again = changes(sent, {"html": {"a": "<p>1</p>", "b": "<p>3</p>"}})
    assert again == {"html": {"b": "<p>3</p>"}}
    event = sse_event(again).decode()
    assert event.startswith("event: update\ndata: ") and event.endswith("\n\n")
    assert json.loads(event.split("data: ", 1)[1]) == again


def _view(
    owners: dict[str, str | None], members: list[str], lags: dict[str, int]
) -> dict[str, object]:
    return {
        "members": [{"member_id": m} for m in members],
        "shards": [
            {"shard_id": s, "owner": o, "lag_records": lags.get(s)} for s, o in owners.items()
        ],
    }


def test_rebalances_are_said_as_events() -> None:
    before = _view({"s0": "w1", "s1": "w1"}, ["w1"], {})
    after = _view({"s0": "w1", "s1": "w2"}, ["w1", "w2"], {})
    assert rebalance_events(before, after) == ["member w2 joined", "rebalance: s1: w1 → w2"]
    assert rebalance_events(after, after) == []


def test_a_group_watch_keeps_total_and_per_shard_lag_with_events() -> None:
    watch = GroupWatch("s", "g", 0.0)
    watch.add(1.0, _view({"s0": "w1", "s1": None}, ["w1"], {"s0": 10, "s1": 5}))
    watch.add(2.0, _view({"s0": "w1", "s1": "w1"}, ["w1"], {"s0": 4, "s1": 5}))
    chart = watch.chart()
    assert chart["x"] == [1.0, 2.0]
    assert chart["labels"] == ["total", "s0", "s1"]
    assert chart["ys"] == [[15, 9], [10, 4], [5, 5]]
    assert chart["events"] == [{"t": 2.0, "text": "rebalance: s1: free → w1"}]


# -- HTTP ------------------------------------------------------------------------------------------


def test_a_request_target_splits_into_path_and_query() -> None:
    parsed = ParsedRequest("GET", "/streams/a%2Fb?q=x&q=y&page=2", [("host", "h")], b"", True, True)
    request = request_of(parsed)
    assert request is not None
    assert request.path == "/streams/a%2Fb"  # segments are decoded one by one (app.py)
    assert request.query == {"q": "x", "page": "2"}
    assert request_of(ParsedRequest("GET", "http://x/", [], b"", True, True)) is None
