"""Placement (pure): balance within one, never two replicas of a shard on one node, leaders
spread, deterministic, and rebalance moves the fewest replicas possible."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streamd.controller.placement import Load, place, place_coordinator, rebalance
from streamd.meta.keys import ShardAssignment

node_sets = st.lists(st.sampled_from([f"n{i}" for i in range(8)]), min_size=1, unique=True)


def assignments_of(
    placed: dict[str, tuple[tuple[str, ...], str]], rf: int
) -> list[ShardAssignment]:
    return [
        ShardAssignment("s", key, rf, replicas, leader, 1, "ok")
        for key, (replicas, leader) in placed.items()
    ]


def placed_assignments(nodes: list[str], count: int, rf: int) -> list[ShardAssignment]:
    placed = place(nodes, [], [(f"shard-{i:03}", rf) for i in range(count)])
    return assignments_of({k: (p.replicas, p.leader) for k, p in placed.items()}, rf)


def spread(counts: dict[str, int]) -> int:
    return max(counts.values()) - min(counts.values())


@given(nodes=node_sets, count=st.integers(0, 60), data=st.data())
def test_new_shards_spread_within_one_with_no_node_holding_two_replicas(
    nodes: list[str], count: int, data: st.DataObject
) -> None:
    rf = data.draw(st.integers(1, len(nodes)))
    placed = placed_assignments(nodes, count, rf)
    for a in placed:
        assert len(set(a.replicas)) == rf == len(a.replicas)
        assert a.leader == a.replicas[0]
    load = Load.of(nodes, placed)
    assert spread(load.replicas) <= 1
    assert spread(load.leaders) <= 1


@given(nodes=node_sets, count=st.integers(0, 40))
def test_placement_is_deterministic_whatever_the_order_of_the_nodes(
    nodes: list[str], count: int
) -> None:
    assert placed_assignments(nodes, count, 1) == placed_assignments(
        list(reversed(nodes)), count, 1
    )


@given(old=st.integers(1, 5), count=st.integers(0, 30), new=st.integers(0, 30))
def test_a_node_that_joins_gets_the_new_shards_and_spread_never_grows(
    old: int, count: int, new: int
) -> None:
    nodes = [f"n{i}" for i in range(old)]
    before = placed_assignments(nodes, count, 1)
    joined = [*nodes, "z-new"]
    placed = place(joined, before, [(f"new-{i:03}", 1) for i in range(new)])
    after = before + assignments_of({k: (p.replicas, p.leader) for k, p in placed.items()}, 1)
    load_before = Load.of(joined, before).replicas
    load_after = Load.of(joined, after).replicas
    assert spread(load_after) <= max(spread(load_before), 1)
    # Until it has caught up with the least loaded of the others, every new shard is its.
    assert load_after["z-new"] >= min(new, count // old)


@given(
    nodes=node_sets,
    loads=st.lists(st.integers(0, 12), min_size=1, max_size=8),
    rf=st.integers(1, 3),
)
def test_rebalance_moves_the_fewest_replicas_and_ends_within_one(
    nodes: list[str], loads: list[int], rf: int
) -> None:
    # An unbalanced start: each shard's replicas packed onto consecutive nodes from a skewed one.
    rf = min(rf, len(nodes))
    shards = []
    for i, weight in enumerate(loads):
        for j in range(weight):
            start = (i + j * (i % 2)) % len(nodes)
            replicas = tuple(nodes[(start + k) % len(nodes)] for k in range(rf))
            shards.append(ShardAssignment("s", f"sh-{i}-{j}", rf, replicas, replicas[0], 1, "ok"))
    counts = Load.of(nodes, shards).replicas
    total, n = sum(counts.values()), len(nodes)
    targets = sorted(counts.values(), reverse=True)
    quota = [total // n + (1 if k < total % n else 0) for k in range(n)]
    fewest = sum(max(0, c - q) for c, q in zip(targets, quota, strict=True))

    moves = rebalance(nodes, shards)

    assert len(moves) == fewest
    holders = {a.key: set(a.replicas) for a in shards}
    for move in moves:
        assert move.from_node in holders[move.shard_key]
        assert move.to_node not in holders[move.shard_key]
        holders[move.shard_key] = (holders[move.shard_key] - {move.from_node}) | {move.to_node}
    final = {node: sum(node in h for h in holders.values()) for node in nodes}
    assert spread(final) <= 1


def test_every_cluster_up_to_8_nodes_and_60_shards_places_within_one_exhaustively() -> None:
    # From an empty start the placement depends only on (nodes, rf, count) up to renaming,
    # and shards are placed one by one, so the prefixes of 60 cover every count below.
    for n in range(1, 9):
        nodes = [f"n{i}" for i in range(n)]
        for rf in range(1, n + 1):
            placed = list(place(nodes, [], [(f"s{i:03}", rf) for i in range(60)]).items())
            for count in range(61):
                load = Load.of(
                    nodes,
                    [
                        ShardAssignment("s", k, rf, p.replicas, p.leader, 1, "ok")
                        for k, p in placed[:count]
                    ],
                )
                assert spread(load.replicas) <= 1, (n, rf, count)
                assert spread(load.leaders) <= 1, (n, rf, count)


def test_a_lost_leader_s_shards_have_many_successors() -> None:
    nodes = ["n1", "n2", "n3", "n4", "n5"]
    placed = place(nodes, [], [(f"s{i:03}", 3) for i in range(20)])
    for node in nodes:
        followers = {r for p in placed.values() if p.leader == node for r in p.replicas}
        assert followers - {node} == set(nodes) - {node}


def test_rebalance_of_a_balanced_cluster_moves_nothing() -> None:
    nodes = ["a", "b", "c"]
    assert rebalance(nodes, placed_assignments(nodes, 12, 2)) == []


def test_twelve_shards_over_three_nodes_are_four_each() -> None:
    load = Load.of(["a", "b", "c"], placed_assignments(["a", "b", "c"], 12, 1))
    assert dict(load.replicas) == {"a": 4, "b": 4, "c": 4}


def test_a_replication_factor_over_the_live_nodes_is_refused() -> None:
    try:
        place(["a", "b"], [], [("x", 3)])
    except ValueError as exc:
        assert "replication factor 3" in str(exc)
    else:
        raise AssertionError("placed 3 replicas on 2 nodes")


def test_a_coordinator_goes_to_the_node_running_fewest() -> None:
    assert place_coordinator(["a", "b", "c"], {"g1": "a", "g2": "b", "g3": "a"}) == "c"
    assert place_coordinator(["b", "a"], {}) == "a"
