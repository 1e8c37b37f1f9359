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
    Facts,
    classify_coordinator,
    classify_shard,
    decide,
)
from streamd.meta.keys import (
    CoordinatorPlacement,
    DeclineReport,
    JoinReport,
    MoveRequest,
    ShardAssignment,
)


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
    for rule in TABLE:  # the row as it is in the table, word for word
        assert f"| `{rule.case}` | {rule.when} | {rule.action} | {rule.why} |" in doc, rule.case


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


# -- replica set changes and leader preference (facts: reports, moves, drains, clocks) ---------

KEY = shard().key
ABC = ("a", "b", "c")


def rf3(
    replicas: tuple[str, ...] = ABC,
    leader: str = "a",
    epoch: int = 5,
    joining: tuple[str, ...] = (),
    since: int = 0,
) -> ShardAssignment:
    return ShardAssignment(
        "s", "shardId-000000000000", 3, replicas, leader, epoch, "ok", (), joining, since
    )


LONG_LIVE = {n: 3600.0 for n in "abcde"}

# (name, live nodes, facts, shard before, case, shard after or None, keys deleted)
CHANGE_ROWS = [
    (
        "lost within the grace",
        {"a", "b", "d"},
        Facts(lost_s={"c": 299.0}, live_s=LONG_LIVE),
        rf3(),
        Case.UNDER_REPLICATED,
        None,
        (),
    ),
    (
        "lost for the grace: replaced in place, joining",
        {"a", "b", "d", "e"},
        Facts(lost_s={"c": 300.0}, live_s=LONG_LIVE),
        rf3(),
        Case.REPLICA_REPLACED,
        rf3(("a", "b", "d"), "a", 6, ("d",), 6),
        (),
    ),
    (
        "lost for the grace, no spare",
        {"a", "b"},
        Facts(lost_s={"c": 900.0}, live_s=LONG_LIVE),
        rf3(),
        Case.UNDER_REPLICATED,
        None,
        (),
    ),
    (
        "two lost: no majority of voters to change the set with",
        {"a", "d", "e"},
        Facts(lost_s={"b": 900.0, "c": 900.0}, live_s=LONG_LIVE),
        rf3(),
        Case.UNDER_REPLICATED,
        None,
        (),
    ),
    (
        "joining, no report",
        {"a", "b", "d"},
        Facts(live_s=LONG_LIVE),
        rf3(("a", "b", "d"), "a", 6, ("d",), 6),
        Case.JOINING,
        None,
        (),
    ),
    (
        "joiner caught up",
        {"a", "b", "d"},
        Facts(reports={KEY: JoinReport("s", "shardId-000000000000", "d", 6)}, live_s=LONG_LIVE),
        rf3(("a", "b", "d"), "a", 6, ("d",), 6),
        Case.JOINER_CAUGHT_UP,
        rf3(("a", "b", "d"), "a", 7),
        ("joined/s/shardId-000000000000",),
    ),
    (
        "a report from before the joiner joined is ignored",
        {"a", "b", "d"},
        Facts(reports={KEY: JoinReport("s", "shardId-000000000000", "d", 5)}, live_s=LONG_LIVE),
        rf3(("a", "b", "d"), "a", 6, ("d",), 6),
        Case.JOINING,
        None,
        (),
    ),
    (
        "a report for another node is ignored",
        {"a", "b", "d"},
        Facts(reports={KEY: JoinReport("s", "shardId-000000000000", "b", 6)}, live_s=LONG_LIVE),
        rf3(("a", "b", "d"), "a", 6, ("d",), 6),
        Case.JOINING,
        None,
        (),
    ),
    (
        "joiner lost for the grace: replaced",
        {"a", "b", "e"},
        Facts(lost_s={"d": 300.0, "c": 900.0}, live_s=LONG_LIVE),
        rf3(("a", "b", "d"), "a", 6, ("d",), 6),
        Case.JOINER_REPLACED,
        rf3(("a", "b", "e"), "a", 7, ("e",), 7),
        (),
    ),
    (
        "move a follower",
        {"a", "b", "c", "d"},
        Facts(moves={KEY: MoveRequest("s", "shardId-000000000000", "c", "d")}, live_s=LONG_LIVE),
        rf3(),
        Case.MOVE_REPLICA,
        rf3(("a", "b", "d"), "a", 6, ("d",), 6),
        ("moves/s/shardId-000000000000",),
    ),
    (
        "move the leader: a voter leads",
        {"a", "b", "c", "d"},
        Facts(moves={KEY: MoveRequest("s", "shardId-000000000000", "a", "d")}, live_s=LONG_LIVE),
        rf3(),
        Case.MOVE_REPLICA,
        rf3(("d", "b", "c"), "b", 6, ("d",), 6),
        ("moves/s/shardId-000000000000",),
    ),
    (
        "move to a node that holds one",
        {"a", "b", "c", "d"},
        Facts(moves={KEY: MoveRequest("s", "shardId-000000000000", "c", "b")}, live_s=LONG_LIVE),
        rf3(),
        Case.MOVE_REFUSED,
        None,
        ("moves/s/shardId-000000000000",),
    ),
    (
        "move to a node not live",
        {"a", "b", "c"},
        Facts(moves={KEY: MoveRequest("s", "shardId-000000000000", "c", "d")}, live_s=LONG_LIVE),
        rf3(),
        Case.MOVE_REFUSED,
        None,
        ("moves/s/shardId-000000000000",),
    ),
    (
        "move waits while another member is down",
        {"a", "c", "d"},
        Facts(moves={KEY: MoveRequest("s", "shardId-000000000000", "c", "d")}, live_s=LONG_LIVE),
        rf3(),
        Case.UNDER_REPLICATED,
        None,
        (),
    ),
    (
        "drain: the drained replica moves to the spare",
        {"a", "b", "c", "d"},
        Facts(drains=frozenset({"b"}), live_s=LONG_LIVE),
        rf3(),
        Case.DRAIN_MOVE,
        rf3(("a", "d", "c"), "a", 6, ("d",), 6),
        (),
    ),
    (
        "drain a dead node: no grace",
        {"a", "c", "d"},
        Facts(drains=frozenset({"b"}), lost_s={"b": 1.0}, live_s=LONG_LIVE),
        rf3(),
        Case.DRAIN_MOVE,
        rf3(("a", "d", "c"), "a", 6, ("d",), 6),
        (),
    ),
    (
        "drain with no spare: the leader moves off it",
        {"a", "b", "c"},
        Facts(drains=frozenset({"a"}), live_s=LONG_LIVE),
        rf3(),
        Case.LEADER_PREFERRED,
        rf3(ABC, "b", 6),
        (),
    ),
    (
        "the preferred replica is back and settled: it leads",
        {"a", "b", "c"},
        Facts(live_s=LONG_LIVE),
        rf3(ABC, "b", 6),
        Case.LEADER_PREFERRED,
        rf3(ABC, "a", 7),
        (),
    ),
    (
        "the preferred replica is back but not settled",
        {"a", "b", "c"},
        Facts(live_s={"a": 9.0, "b": 3600.0, "c": 3600.0}),
        rf3(ABC, "b", 6),
        Case.HEALTHY,
        None,
        (),
    ),
    (
        "the leader lost while a member joins: a voter leads, still joining",
        {"b", "d"},
        Facts(live_s=LONG_LIVE),
        rf3(("a", "b", "d"), "a", 6, ("d",), 6),
        Case.LEADER_LOST,
        rf3(("a", "b", "d"), "b", 7, ("d",), 6),
        (),
    ),
    (
        "the leader declined its term: another voter leads",
        {"a", "b", "c"},
        Facts(declines={KEY: DeclineReport("s", "shardId-000000000000", "a", 5)}, live_s=LONG_LIVE),
        rf3(),
        Case.LEADER_DECLINED,
        rf3(ABC, "b", 6),
        ("declined/s/shardId-000000000000",),
    ),
    (
        "a decline of an earlier term is ignored",
        {"a", "b", "c"},
        Facts(declines={KEY: DeclineReport("s", "shardId-000000000000", "a", 4)}, live_s=LONG_LIVE),
        rf3(),
        Case.HEALTHY,
        None,
        (),
    ),
    (
        "the leader declined, no other voter live: it stays named",
        {"a", "d"},
        Facts(declines={KEY: DeclineReport("s", "shardId-000000000000", "a", 5)}, live_s=LONG_LIVE),
        rf3(),
        Case.UNDER_REPLICATED,
        None,
        (),
    ),
    (
        "only the joiner live: unavailable",
        {"d"},
        Facts(live_s=LONG_LIVE),
        rf3(("a", "b", "d"), "a", 6, ("d",), 6),
        Case.NO_REPLICA_LIVE,
        ShardAssignment(
            "s", "shardId-000000000000", 3, ("a", "b", "d"), None, 6, "unavailable", (), ("d",), 6
        ),
        (),
    ),
]


@pytest.mark.parametrize(
    ("live", "facts", "before", "case", "after", "deletes"),
    [r[1:] for r in CHANGE_ROWS],
    ids=[r[0] for r in CHANGE_ROWS],
)
def test_each_replica_set_change_row(
    live: set[str],
    facts: Facts,
    before: ShardAssignment,
    case: Case,
    after: ShardAssignment | None,
    deletes: tuple[str, ...],
) -> None:
    assert classify_shard(before, frozenset(live), facts) is case
    decisions = decide(live, {before.key: before}, None, facts)
    if after is None and not deletes:
        assert decisions == []
    else:
        assert [(d.case, d.key, d.after, d.deletes) for d in decisions] == [
            (case, before.key, after, deletes)
        ]
    for d in decisions:  # the replication layer's rule: one member changes, it joins
        if isinstance(d.after, ShardAssignment) and d.after.replicas != before.replicas:
            assert len(set(d.after.replicas) - set(before.replicas)) == 1
            assert not before.joining or d.case is Case.JOINER_REPLACED
            assert d.after.joining == tuple(set(d.after.replicas) - set(before.replicas))
            assert d.after.leader in live and d.after.leader not in d.after.joining


def test_at_most_joins_max_shards_join_at_once() -> None:
    shards = {
        s.key: s
        for s in (ShardAssignment("s", f"shardId-{i:012}", 3, ABC, "a", 5, "ok") for i in range(10))
    }
    facts = Facts(drains=frozenset({"c"}), live_s=LONG_LIVE, joins_max=4)
    decisions = decide({"a", "b", "c", "d", "e"}, shards, None, facts)
    assert [d.case for d in decisions] == [Case.DRAIN_MOVE] * 4
    targets = sorted(d.after.joining[0] for d in decisions)  # type: ignore[union-attr]
    assert targets == ["d", "d", "e", "e"]  # spread by replica count


def test_new_shards_are_not_placed_on_a_draining_node() -> None:
    shards = {s.key: s for s in (shard(shard_id=f"shardId-{i:012}", rf=2) for i in range(6))}
    facts = Facts(drains=frozenset({"a"}))
    decisions = decide({"a", "b", "c"}, shards, None, facts)
    assert all("a" not in d.after.replicas for d in decisions)  # type: ignore[union-attr]
