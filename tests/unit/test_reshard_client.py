"""Client-side resharding without a server: the lineage planner of the stream reader, parsing
of the new answer fields (shard_end, child_shards, reshard progress), a limit that cuts a page
short, and the CLI's parser, progress line and lineage tree."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from streamd.cli import app as cli
from streamd.cli.reshard import progress_line
from streamd.cli.streams import lineage_lines
from streamd_client import Position, batch
from streamd_client.consumer import decode_read
from streamd_client.errors import InvalidArgumentError, ProtocolError
from streamd_client.model import HASH_KEY_MAX, make_sequence, shard_id_of
from streamd_client.results import (
    ChildShard,
    RawRead,
    ReshardProgress,
    ShardDescription,
    StreamDescription,
    raw_read_from_wire,
    stream_from_wire,
)
from streamd_client.stream_reader import Lineage, child_start, initial_shards

S = [shard_id_of(i) for i in range(8)]


def child(shard_id: str, *parents: str) -> ChildShard:
    return ChildShard(shard_id, parents, 0, HASH_KEY_MAX)


# -- the lineage planner ---------------------------------------------------------------------


def test_roots_start_at_once_and_split_children_after_their_parent_ends() -> None:
    lineage = Lineage()
    lineage.track(S[0], ())
    lineage.track(S[1], ())
    assert lineage.ready() == [S[0], S[1]]
    assert lineage.ready() == []  # started once only
    assert lineage.end(S[0], [child(S[2], S[0]), child(S[3], S[0])]) == [S[2], S[3]]
    assert lineage.ended == [S[0]]


def test_a_merged_child_waits_for_both_parents() -> None:
    lineage = Lineage()
    for shard_id in (S[0], S[1]):
        lineage.track(shard_id, ())
    lineage.ready()
    merged = child(S[2], S[0], S[1])
    assert lineage.end(S[0], [merged]) == []
    assert lineage.state[S[2]] == "waiting"
    assert lineage.end(S[1], [merged]) == [S[2]]


def test_children_known_from_describe_wait_for_their_tracked_parents() -> None:
    lineage = Lineage()
    lineage.track(S[0], ())
    lineage.track(S[1], (S[0],))
    lineage.track(S[2], (S[0],))
    lineage.track(S[3], (S[1], S[2]))
    assert lineage.ready() == [S[0]]
    assert lineage.end(S[0], []) == [S[1], S[2]]
    assert lineage.end(S[1], []) == []
    assert lineage.end(S[2], []) == [S[3]]


def test_parents_gone_or_closed_before_the_start_do_not_hold_a_child_back() -> None:
    lineage = Lineage([S[1], S[5]])  # S[0] expired before the start; S[1] was closed then
    lineage.track(S[5], (S[0], S[1]))  # a `latest` start does not read S[1]
    assert lineage.ready() == [S[5]]


def test_a_parent_found_later_holds_its_child_back() -> None:
    """S1 splits into S3+S4 while S1 is still being read; S4 then merges with S2 into S5.
    S2 ends first: S5 must wait for S4, which is found only when S1 ends."""
    lineage = Lineage([S[1], S[2]])
    lineage.track(S[1], ())
    lineage.track(S[2], ())
    assert lineage.ready() == [S[1], S[2]]
    assert lineage.end(S[2], [child(S[5], S[4], S[2])]) == []  # S[4] is not known yet
    assert lineage.end(S[1], [child(S[3], S[1]), child(S[4], S[1])]) == [S[3], S[4]]
    assert lineage.end(S[4], [child(S[5], S[4], S[2])]) == [S[5]]


def test_a_shard_stopped_at_its_tip_never_starts_its_children() -> None:
    lineage = Lineage()
    lineage.track(S[0], ())
    lineage.track(S[1], ())
    lineage.ready()
    merged = child(S[2], S[0], S[1])
    lineage.end(S[0], [merged])
    lineage.stop(S[1])
    assert lineage.ready() == [] and lineage.state[S[2]] == "waiting"


def test_tracking_is_idempotent_and_ending_twice_is_a_bug() -> None:
    lineage = Lineage()
    lineage.track(S[1], (S[0],))
    lineage.track(S[1], ())  # the first parents stay
    assert lineage.parents[S[1]] == (S[0],)
    lineage.track(S[0], ())
    lineage.ready()
    lineage.end(S[0], [])
    with pytest.raises(AssertionError):
        lineage.end(S[0], [])


def _shard(shard_id: str, open_: bool, parent: str | None = None) -> ShardDescription:
    ending = None if open_ else make_sequence(int(shard_id[-12:]), 5)
    start = make_sequence(int(shard_id[-12:]), 0)
    return ShardDescription(shard_id, 0, HASH_KEY_MAX, start, ending, parent, None)


def test_a_stream_read_starts_with_every_shard_or_only_the_open_ones_from_latest() -> None:
    shards = [_shard(S[0], False), _shard(S[1], True, S[0]), _shard(S[2], True, S[0])]
    assert initial_shards(shards, Position.trim_horizon()) == shards
    assert initial_shards(shards, Position.at_timestamp(5)) == shards
    assert initial_shards(shards, Position.latest()) == shards[1:]
    with pytest.raises(InvalidArgumentError):
        initial_shards(shards, Position.at_sequence(make_sequence(0, 1)))
    assert child_start(Position.latest()) == Position.trim_horizon()
    assert child_start(Position.at_timestamp(5)) == Position.at_timestamp(5)


# -- answers on the wire ---------------------------------------------------------------------


def _raw(**extra: Any) -> dict[str, Any]:
    body = {
        "batches": [],
        "start_offset": 3,
        "next_offset": 3,
        "high_watermark": 3,
        "millis_behind": 0,
    }
    body.update(extra)
    return body


def test_read_answers_carry_shard_end_and_the_child_shards() -> None:
    children = [
        {"shard_id": S[1], "parent_shard_ids": [S[0]], "hash_key_start": 0, "hash_key_end": 9},
        {"shard_id": S[2], "parent_shard_ids": [S[0]], "hash_key_start": 10, "hash_key_end": 99},
    ]
    raw = raw_read_from_wire(_raw(shard_end=True, child_shards=children))
    assert raw.shard_end
    assert raw.child_shards == (ChildShard(S[1], (S[0],), 0, 9), ChildShard(S[2], (S[0],), 10, 99))
    older = raw_read_from_wire(_raw())  # a server without resharding: shards never end
    assert not older.shard_end and older.child_shards == ()


@pytest.mark.parametrize(
    "extra",
    [
        {"shard_end": "yes"},
        {"shard_end": False, "child_shards": [{"shard_id": S[1]}]},
        {"shard_end": True, "child_shards": [{"shard_id": S[1], "parent_shard_ids": []}]},
        {
            "shard_end": True,
            "child_shards": [
                {
                    "shard_id": S[1],
                    "parent_shard_ids": [S[0]],
                    "hash_key_start": 9,
                    "hash_key_end": 1,
                }
            ],
        },
        {"shard_end": True, "child_shards": "nope"},
    ],
)
def test_malformed_reshard_fields_are_protocol_errors(extra: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        raw_read_from_wire(_raw(**extra))


def test_a_limit_that_cuts_the_last_page_short_has_not_reached_the_end() -> None:
    blob = batch.restamp(
        batch.encode_batch(["k"] * 4, [b"\0" * 16] * 4, [b"a", b"b", b"c", b"d"]),
        base_offset=0,
        leader_epoch=1,
        first_arrival_ms=1,
        last_arrival_ms=1,
    )
    children = (ChildShard(S[1], (S[0],), 0, HASH_KEY_MAX),)
    raw = RawRead([blob], 0, 4, 4, 0, True, children)
    whole = decode_read(raw, S[0], 0, None)
    assert whole.shard_end and whole.child_shards == children and len(whole.records) == 4
    cut = decode_read(raw, S[0], 0, 2)
    assert not cut.shard_end and cut.child_shards == () and cut.next_position.offset == 2
    rest = decode_read(raw._replace(start_offset=2), S[0], 0, 2)
    assert rest.shard_end and [r.data for r in rest.records] == [b"c", b"d"]


def _stream(**extra: Any) -> dict[str, Any]:
    body = {
        "name": "s",
        "status": "UPDATING",
        "retention_hours": 24,
        "created_ms": 1,
        "shards": [_shard(S[0], True)._asdict()],
    }
    body.update(extra)
    return body


def test_describe_carries_the_reshard_progress() -> None:
    progress = {"kind": "resize", "target": 8, "done": 3, "total": 4}
    description = stream_from_wire(_stream(reshard=progress))
    assert description.reshard == ReshardProgress("resize", 8, 3, 4)
    assert stream_from_wire(_stream()).reshard is None
    with pytest.raises(ProtocolError):
        stream_from_wire(_stream(reshard={**progress, "done": 5}))
    split = {"kind": "split", "target": None, "done": 0, "total": 1}  # what a split sends
    assert stream_from_wire(_stream(reshard=split)).reshard == ReshardProgress("split", None, 0, 1)


# -- the CLI ---------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    return cli.parse_args(list(argv))


def test_reshard_commands_parse() -> None:
    args = parse("shard", "split", "s", S[1], "--at", "123")
    assert (args.name, args.shard_id, args.at) == ("s", S[1], "123")
    assert parse("shard", "split", "s", S[1]).at is None
    args = parse("shard", "merge", "s", S[1], S[2])
    assert (args.name, args.shard_id, args.adjacent_shard_id) == ("s", S[1], S[2])
    args = parse("stream", "resize", "s", "--shards", "6", "--no-wait")
    assert (args.name, args.shards, args.no_wait) == ("s", 6, True)
    with pytest.raises(SystemExit):
        parse("stream", "resize", "s")  # --shards is required
    with pytest.raises(SystemExit):
        parse("shard", "merge", "s", S[1])


def test_progress_lines() -> None:
    shards = [_shard(S[i], i >= 2) for i in range(5)]
    updating = StreamDescription("o", "UPDATING", 24, 1, shards, ReshardProgress("resize", 6, 3, 7))
    assert progress_line("o", updating) == "resize o: 3/7 operations done, 3 open shards"
    active = updating._replace(status="ACTIVE", reshard=None)
    assert progress_line("o", active) == "resize o: ACTIVE, 3 open shards"


def _doc(
    shard_id: str, parent: str | None = None, adjacent: str | None = None, closed: bool = False
) -> dict[str, Any]:
    return {
        "shard_id": shard_id,
        "hash_key_start": "0",
        "hash_key_end": "9",
        "starting_sequence": "a",
        "ending_sequence": "z" if closed else None,
        "parent_shard_id": parent,
        "adjacent_parent_shard_id": adjacent,
    }


def test_the_lineage_tree_indents_children_under_their_parents() -> None:
    shards = [
        _doc(S[0], closed=True),
        _doc(S[1], closed=True),
        _doc(S[2], S[0], closed=True),
        _doc(S[3], S[0]),
        _doc(S[4], S[2], S[1]),  # merged from S2 and S1
    ]
    heads = [line for line in lineage_lines(shards) if line.strip().startswith("shardId-")]
    assert heads == [
        f"  {S[0]}  closed",
        f"    {S[2]}  closed",
        f"      {S[4]}  open",
        f"    {S[3]}  open",
        f"  {S[1]}  closed",
    ]
    text = "\n".join(lineage_lines(shards))
    assert f"merged into {S[4]}" in text and f"parents    {S[2]}, {S[1]}" in text


def test_a_merged_child_whose_first_parent_expired_hangs_under_the_other() -> None:
    shards = [_doc(S[1], closed=True), _doc(S[4], S[2], S[1])]  # S2 is gone (retention)
    heads = [line for line in lineage_lines(shards) if line.strip().startswith("shardId-")]
    assert heads == [f"  {S[1]}  closed", f"    {S[4]}  open"]


def test_resize_hops_stay_within_half_and_double() -> None:
    from streamd.cli.reshard import resize_hops

    assert resize_hops(8, 3) == [4, 3]
    assert resize_hops(4, 8) == [8]
    assert resize_hops(1, 10) == [2, 4, 8, 10]
    assert resize_hops(5, 2) == [3, 2]
    assert resize_hops(3, 0) == [0]  # invalid: one call, and the server's error
    for current, target in ((8, 1), (1, 1024), (7, 3), (1000, 1)):
        previous = current
        for hop in resize_hops(current, target):
            assert (previous + 1) // 2 <= hop <= 2 * previous
            previous = hop
        assert previous == target
