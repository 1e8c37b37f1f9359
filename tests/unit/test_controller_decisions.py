"""The controller's decision table, one row at a time (table-driven), and decide() as a whole."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamd.controller.decisions import (
    RULES,
    TABLE,
    Case,
    classify_coordinator,
    classify_shard,
    decide,
)
from streamd.meta.keys import CoordinatorPlacement, ShardAssignment


def shard(
    replicas: tuple[str, ...] = (),
    leader: str | None = None,
    epoch: int = 0,
    status: str = "unassigned",
    rf: int = 1,
    shard_id: str = "shardId-000000000000",
) -> ShardAssignment:
    return ShardAssignment("s", shard_id, rf, replicas, leader, epoch, status)  # type: ignore[arg-type]


# (name, live nodes, shard before, case, shard after or None for no write)
ROWS = [
    ("healthy rf1", {"a"}, shard(("a",), "a", 1, "ok"), Case.HEALTHY, None),
    ("healthy rf3", {"a", "b", "c"}, shard(("a", "b", "c"), "b", 4, "ok", 3), Case.HEALTHY, None),
    (
        "follower down",
        {"a", "b"},
        shard(("a", "b", "c"), "a", 2, "ok", 3),
        Case.UNDER_REPLICATED,
        None,
    ),
    ("unassigned placed", {"a"}, shard(), Case.UNASSIGNED, shard(("a",), "a", 1, "ok")),
    ("unassigned, too few nodes", {"a"}, shard(rf=2), Case.UNASSIGNED_WAIT, None),
    ("unassigned, no node", set(), shard(), Case.UNASSIGNED_WAIT, None),
    (
        "rf1 leader lost",
        {"b"},
        shard(("a",), "a", 3, "ok"),
        Case.NO_REPLICA_LIVE,
        shard(("a",), None, 3, "unavailable"),
    ),
    ("rf1 still down", {"b"}, shard(("a",), None, 3, "unavailable"), Case.STILL_UNAVAILABLE, None),
    (
        "rf1 node back",
        {"a", "b"},
        shard(("a",), None, 3, "unavailable"),
        Case.LEADER_LOST,
        shard(("a",), "a", 4, "ok"),
    ),
    (
        "rf3 leader lost",
        {"b", "c"},
        shard(("a", "b", "c"), "a", 7, "ok", 3),
        Case.LEADER_LOST,
        shard(("a", "b", "c"), "b", 8, "ok", 3),
    ),
    (
        "rf3 all lost",
        set(),
        shard(("a", "b", "c"), "a", 7, "ok", 3),
        Case.NO_REPLICA_LIVE,
        shard(("a", "b", "c"), None, 7, "unavailable", 3),
    ),
]


@pytest.mark.parametrize(
    ("live", "before", "case", "after"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
def test_each_row_of_the_decision_table(
    live: set[str], before: ShardAssignment, case: Case, after: ShardAssignment | None
) -> None:
    assert classify_shard(before, frozenset(live)) is case
    decisions = decide(live, {before.key: before})
    if after is None:
        assert decisions == []
    else:
        assert [(d.case, d.key, d.after) for d in decisions] == [(case, before.key, after)]


def test_every_case_has_exactly_one_rule_and_the_docs_show_it() -> None:
    assert [rule.case for rule in TABLE] == list(Case)
    doc = (Path(__file__).parents[2] / "docs" / "cluster.md").read_text()
    for rule in TABLE:
        assert f"`{rule.case}`" in doc, rule.case


def test_a_new_leader_is_the_live_replica_leading_fewest() -> None:
    busy = shard(("b",), "b", 1, "ok", shard_id="shardId-000000000009")
    lost = shard(("a", "b", "c"), "a", 1, "ok", 3)
    decisions = decide({"b", "c"}, {busy.key: busy, lost.key: lost})
    assert [(d.after.leader, d.after.leader_epoch) for d in decisions] == [("c", 2)]  # type: ignore[union-attr]


def test_a_twelve_shard_stream_is_placed_four_four_four_with_epoch_one() -> None:
    shards = {s.key: s for s in (shard(shard_id=f"shardId-{i:012}") for i in range(12))}
    decisions = decide({"a", "b", "c"}, shards)
    assert {d.case for d in decisions} == {Case.UNASSIGNED}
    leaders = [d.after.leader for d in decisions]  # type: ignore[union-attr]
    assert sorted(leaders.count(n) for n in "abc") == [4, 4, 4]
    assert {d.after.leader_epoch for d in decisions} == {1}  # type: ignore[union-attr]


def test_deciding_again_on_the_result_decides_nothing() -> None:
    shards = {s.key: s for s in (shard(shard_id=f"shardId-{i:012}", rf=2) for i in range(7))}
    shards.update({k: d.after for d in decide({"a", "b", "c"}, shards) for k in [d.key]})  # type: ignore[misc]
    assert decide({"a", "b", "c"}, shards) == []


def test_half_placed_streams_are_finished_where_they_balance() -> None:
    done = {
        s.key: s
        for s in (shard(("a",), "a", 1, "ok", shard_id=f"shardId-{i:012}") for i in range(4))
    }
    todo = {s.key: s for s in (shard(shard_id=f"shardId-{i:012}") for i in range(4, 12))}
    decisions = decide({"a", "b", "c"}, {**done, **todo})
    leaders = [d.after.leader for d in decisions]  # type: ignore[union-attr]
    assert sorted(leaders) == ["b"] * 4 + ["c"] * 4


def test_a_lost_coordinator_moves_with_epoch_plus_one() -> None:
    lost = CoordinatorPlacement("s", "g1", "a", 3)
    kept = CoordinatorPlacement("s", "g2", "b", 1)
    decisions = decide({"b", "c"}, {}, {lost.key: lost, kept.key: kept})
    assert [(d.case, d.after) for d in decisions] == [
        (Case.COORDINATOR_LOST, CoordinatorPlacement("s", "g1", "c", 4))
    ]
    assert decide(set(), {}, {lost.key: lost}) == []
    assert RULES[Case.COORDINATOR_WAIT].action == "none"


def test_an_unplaced_coordinator_goes_to_the_node_running_fewest_with_epoch_one() -> None:
    running = [CoordinatorPlacement("s", f"g{i}", n, 2) for i, n in enumerate("aab")]
    new = CoordinatorPlacement.unplaced("s", "new")
    assert classify_coordinator(new, frozenset("abc")) is Case.COORDINATOR_UNPLACED
    docs = {p.key: p for p in [*running, new]}
    decisions = decide({"a", "b", "c"}, {}, docs)
    assert [(d.case, d.after) for d in decisions] == [
        (Case.COORDINATOR_UNPLACED, CoordinatorPlacement("s", "new", "c", 1))
    ]
    docs[new.key] = decisions[0].after  # type: ignore[assignment]
    assert decide({"a", "b", "c"}, {}, docs) == []


def test_an_unplaced_coordinator_waits_while_no_node_is_live() -> None:
    new = CoordinatorPlacement.unplaced("s", "new")
    assert classify_coordinator(new, frozenset()) is Case.COORDINATOR_WAIT
    assert decide(set(), {}, {new.key: new}) == []


def test_unplaced_and_lost_coordinators_spread_over_the_live_nodes() -> None:
    docs = {
        p.key: p
        for p in [CoordinatorPlacement.unplaced("s", f"g{i}") for i in range(4)]
        + [CoordinatorPlacement("s", f"lost{i}", "dead", 5) for i in range(2)]
    }
    decisions = decide({"a", "b", "c"}, {}, docs)
    nodes = [d.after.node_id for d in decisions]  # type: ignore[union-attr]
    assert sorted(nodes.count(n) for n in "abc") == [2, 2, 2]
    assert {d.after.epoch for d in decisions if d.case is Case.COORDINATOR_LOST} == {6}  # type: ignore[union-attr]
    assert {d.after.epoch for d in decisions if d.case is Case.COORDINATOR_UNPLACED} == {1}  # type: ignore[union-attr]


NODES = ["a", "b", "c", "d", "e"]


@st.composite
def cluster_states(draw: st.DrawFn) -> tuple[set[str], dict[str, ShardAssignment]]:
    live = set(draw(st.lists(st.sampled_from(NODES), unique=True)))
    shards: dict[str, ShardAssignment] = {}
    for i in range(draw(st.integers(0, 12))):
        rf = draw(st.integers(1, 3))
        replicas = tuple(
            draw(st.lists(st.sampled_from(NODES), min_size=0, max_size=rf, unique=True))
        )
        epoch = draw(st.integers(0, 5))
        if not replicas:
            doc = ShardAssignment("s", f"shardId-{i:012}", rf, (), None, epoch, "unassigned")
        elif draw(st.booleans()):
            doc = ShardAssignment(
                "s", f"shardId-{i:012}", rf, replicas, draw(st.sampled_from(replicas)), epoch, "ok"
            )
        else:
            doc = ShardAssignment("s", f"shardId-{i:012}", rf, replicas, None, epoch, "unavailable")
        shards[doc.key] = doc
    return live, shards


@given(cluster_states())
def test_one_round_of_decisions_reaches_a_fixpoint_and_keeps_the_invariants(
    state: tuple[set[str], dict[str, ShardAssignment]],
) -> None:
    live, shards = state
    decisions = decide(live, shards)
    assert len({d.key for d in decisions}) == len(decisions)  # one write per document
    after = dict(shards)
    for d in decisions:
        old, new = shards[d.key], d.after
        assert isinstance(new, ShardAssignment)
        assert new.leader_epoch >= old.leader_epoch  # epochs only grow
        if new.leader != old.leader and new.leader is not None:
            assert new.leader_epoch == old.leader_epoch + 1  # a new leader is a new epoch
            assert new.leader in live
        if old.replicas:
            assert new.replicas == old.replicas  # no data moves
        after[d.key] = new
    assert decide(live, after) == []  # idempotent: the next controller finds nothing to do
    for doc in after.values():
        if doc.status == "ok":  # nobody is routed to a dead leader
            assert doc.leader in live
        if any(n in live for n in doc.replicas):
            assert doc.status == "ok" and doc.leader in live


@given(
    st.sets(st.sampled_from(NODES)),
    st.lists(st.one_of(st.none(), st.sampled_from(NODES)), max_size=10),
)
def test_coordinator_decisions_reach_a_fixpoint_on_live_nodes_with_growing_epochs(
    live: set[str], nodes: list[str | None]
) -> None:
    docs = {
        p.key: p
        for p in (
            CoordinatorPlacement("s", f"g{i}", node, 0 if node is None else 1 + i % 3)
            for i, node in enumerate(nodes)
        )
    }
    decisions = decide(live, {}, docs)
    after = dict(docs)
    for d in decisions:
        new = d.after
        assert isinstance(new, CoordinatorPlacement)
        assert new.node_id in live and new.epoch == docs[d.key].epoch + 1
        after[d.key] = new
    assert decide(live, {}, after) == []
    if live:
        assert all(p.node_id in live for p in after.values())
        counts = [sum(1 for p in after.values() if p.node_id == n) for n in live]
        moved = {d.key for d in decisions}
        if moved == set(docs):  # everything placed in this round: balanced within one
            assert max(counts) - min(counts) <= 1
