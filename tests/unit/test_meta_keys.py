"""The cluster keyspace: names, round trips, and refusal of values this version cannot read."""

from __future__ import annotations

import pytest

from streamd.meta.keys import (
    ClusterId,
    ControllerRecord,
    CoordinatorPlacement,
    JoinReport,
    KeyFormatError,
    MoveRequest,
    NodeRegistration,
    ShardAssignment,
    coordinator_key,
    node_key,
    shard_key,
)


def test_keys_are_named_in_one_place() -> None:
    assert node_key("n1") == "nodes/n1"
    assert shard_key("orders", "shardId-000000000003") == "shards/orders/shardId-000000000003"
    assert coordinator_key("orders", "billing") == "coordinators/orders/billing"
    for bad in ["", "a/b", "x" * 129, "é"]:
        with pytest.raises(ValueError):
            node_key(bad)


@pytest.mark.parametrize(
    "value",
    [
        ClusterId("c-1"),
        NodeRegistration("n1", "127.0.0.1:7071", "127.0.0.1:4571", 1_700_000_000_000, "0.1.0"),
        ControllerRecord("n1", 0x1234, 5),
        ShardAssignment("s", "shardId-000000000001", 3, ("a", "b"), "b", 4, "ok", ("p",)),
        ShardAssignment("s", "shardId-000000000001", 1),
        CoordinatorPlacement("s", "g", "n2", 2),
        CoordinatorPlacement.unplaced("s", "g"),
    ],
)
def test_values_round_trip(value: object) -> None:
    assert type(value).decode(value.encode()) == value  # type: ignore[attr-defined]


def test_the_format_is_pinned() -> None:
    raw = ShardAssignment("s", "sh", 1, ("a",), "a", 1, "ok").encode()
    assert raw == (
        b'{"epoch":1,"leader":"a","parents":[],"replicas":["a"],"rf":1,'
        b'"shard_id":"sh","status":"ok","stream":"s","v":1}'
    )
    joining = ShardAssignment("s", "sh", 3, ("a", "b", "d"), "a", 6, "ok", (), ("d",), 6)
    assert joining.encode() == (
        b'{"epoch":6,"joining":["d"],"joining_since":6,"leader":"a","parents":[],'
        b'"replicas":["a","b","d"],"rf":3,"shard_id":"sh","status":"ok","stream":"s","v":1}'
    )
    assert ShardAssignment.decode(joining.encode()) == joining
    assert joining.voters == ("a", "b")


@pytest.mark.parametrize(
    ("joining", "since"),
    [(("z",), 6), (("a",), 6), (("d",), 0), ((), 3), (("d",), 7)],
    ids=["not a replica", "the leader", "no term", "a term without joiners", "a later term"],
)
def test_a_bad_joining_list_is_refused(joining: tuple[str, ...], since: int) -> None:
    with pytest.raises(ValueError, match="joining"):
        ShardAssignment("s", "sh", 3, ("a", "b", "d"), "a", 6, "ok", (), joining, since)


def test_requests_round_trip_and_name_their_shard() -> None:
    report = JoinReport("s", "sh", "d", 6)
    move = MoveRequest("s", "sh", "c", "d")
    assert JoinReport.decode(report.encode()) == report
    assert MoveRequest.decode(move.encode()) == move
    assert (report.key, move.key, report.shard_key) == ("joined/s/sh", "moves/s/sh", "shards/s/sh")
    with pytest.raises(KeyFormatError):
        MoveRequest.decode(b'{"v":1,"stream":"s","shard_id":"sh","from":"c","to":"../x"}')


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b"\xff",
        b'{"v":2,"cluster_id":"x"}',
        b'{"cluster_id":"x"}',
        b'{"v":1,"cluster_id":7}',
        b'{"v":true,"cluster_id":"x"}',
    ],
)
def test_an_unreadable_cluster_id_is_refused(raw: bytes) -> None:
    with pytest.raises(KeyFormatError):
        ClusterId.decode(raw)


@pytest.mark.parametrize(
    "change",
    [
        {"replicas": ["a", "a"]},
        {"leader": "z"},
        {"status": "ok", "leader": None},
        {"status": "bogus"},
        {"epoch": "1"},
        {"rf": 0},
        {"replicas": ["a/b"]},
    ],
)
def test_a_shard_assignment_breaking_an_invariant_is_refused(change: dict[str, object]) -> None:
    import json

    doc = json.loads(ShardAssignment("s", "sh", 2, ("a",), "a", 1, "ok").encode())
    doc.update(change)
    with pytest.raises(KeyFormatError):
        ShardAssignment.decode(json.dumps(doc).encode())


def test_an_unplaced_coordinator_is_node_null_at_epoch_zero() -> None:
    unplaced = CoordinatorPlacement.unplaced("s", "g")
    assert not unplaced.placed and unplaced.key == "coordinators/s/g"
    assert unplaced.encode() == b'{"epoch":0,"group":"g","node":null,"stream":"s","v":1}'
    assert CoordinatorPlacement("s", "g", "n1", 1).placed
    for node, epoch in [(None, 1), ("n1", 0), ("n1", -1)]:
        with pytest.raises(ValueError):
            CoordinatorPlacement("s", "g", node, epoch)


@pytest.mark.parametrize(
    "change",
    [
        {"node": None},  # placed epoch without a node
        {"epoch": 0},  # a node at epoch 0
        {"node": "a/b"},
        {"node": 7},
        {"epoch": True},
        {"stream": "x y"},
        {"group": ""},
    ],
)
def test_a_coordinator_placement_breaking_an_invariant_is_refused(
    change: dict[str, object],
) -> None:
    import json

    doc = json.loads(CoordinatorPlacement("s", "g", "n1", 2).encode())
    doc.update(change)
    with pytest.raises(KeyFormatError):
        CoordinatorPlacement.decode(json.dumps(doc).encode())


def test_a_coordinator_placement_without_its_node_field_is_refused() -> None:
    with pytest.raises(KeyFormatError):
        CoordinatorPlacement.decode(b'{"epoch":0,"group":"g","stream":"s","v":1}')
