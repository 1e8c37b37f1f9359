"""Where shards, their replicas and their leaders go: pure functions of the cluster's state.

No trio, no I/O, no clock, no randomness: the same inputs give the same answer on every
controller, so a controller that takes over computes what its predecessor would have.

* ``place`` puts new shards (a stream's creation, a reshard's children) on the live nodes
  one at a time, greedily: the leader goes to the node leading the fewest shards (then holding
  the fewest replicas, then by node id), the other replicas to the least loaded other nodes
  (ties: nodes leading more first, which evens replicas against leaderships; then those that
  follow this leader least, so a lost leader's shards go to many successors). A node holds
  at most one replica of a shard. Greedy least-loaded placement never widens the spread of
  load between nodes, and from an even start it keeps both replica and leader counts within
  one of each other (checked exhaustively up to 8 nodes and 60 shards, every RF); a node that
  joins gets the new shards until it has caught up.
* ``rebalance`` lists the fewest replica moves that bring every live node's replica count
  within one of the others: always from a most loaded node to a least loaded one, so nothing
  moves twice. Moving a replica copies data, so the controller only does it once replication
  can (RF 1 shards stay where they are; only new shards spread onto a new node).
* ``place_coordinator``: a consumer group's coordinator on the node running the fewest.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..meta.keys import ShardAssignment


@dataclass(frozen=True, slots=True)
class Placement:
    replicas: tuple[str, ...]  # leader first
    leader: str


@dataclass(frozen=True, slots=True)
class Move:
    shard_key: str
    from_node: str
    to_node: str


@dataclass(slots=True)
class Load:
    """Replicas and leaderships per live node (nodes that are not live are not counted)."""

    replicas: Counter[str]
    leaders: Counter[str]
    # Shards each (leader, follower) pair shares: spreading these spreads a lost leader's
    # shards over many successors instead of the same RF - 1 nodes.
    pairs: Counter[tuple[str, str]]

    @classmethod
    def of(cls, nodes: Iterable[str], assignments: Iterable[ShardAssignment]) -> Load:
        live = set(nodes)
        load = cls(Counter({n: 0 for n in live}), Counter({n: 0 for n in live}), Counter())
        for a in assignments:
            for replica in a.replicas:
                if replica in live:
                    load.replicas[replica] += 1
            if a.leader in live:
                load.leaders[a.leader] += 1
                load.pairs.update((a.leader, r) for r in a.replicas if r != a.leader)
        return load


def place(
    nodes: Sequence[str],
    assignments: Iterable[ShardAssignment],
    new_shards: Sequence[tuple[str, int]],
) -> dict[str, Placement]:
    """A placement for each ``(shard_key, replication_factor)`` in ``new_shards``, in order.

    ``assignments`` is what is placed already (its load counts). Raises ValueError when a
    shard's replication factor is larger than the number of live nodes.
    """
    live = sorted(set(nodes))
    load = Load.of(live, assignments)
    placed: dict[str, Placement] = {}
    for shard_key, rf in new_shards:
        if not 1 <= rf <= len(live):
            raise ValueError(f"{shard_key}: replication factor {rf} over {len(live)} live nodes")
        leader = min(live, key=lambda n: (load.leaders[n], load.replicas[n], n))
        others = sorted(
            (n for n in live if n != leader),
            key=lambda n: (load.replicas[n], -load.leaders[n], load.pairs[leader, n], n),
        )
        replicas = (leader, *others[: rf - 1])
        for replica in replicas:
            load.replicas[replica] += 1
        load.leaders[leader] += 1
        load.pairs.update((leader, r) for r in replicas[1:])
        placed[shard_key] = Placement(replicas, leader)
    return placed


def rebalance(nodes: Sequence[str], assignments: Iterable[ShardAssignment]) -> list[Move]:
    """The fewest replica moves that leave live nodes' replica counts within one of each other.

    Replicas on nodes that are not live are left alone (re-replication is another decision).
    A move never puts a second replica of a shard on a node; it prefers moving a follower
    over a leader (a leader's move is a leader change, epoch + 1).
    """
    live = sorted(set(nodes))
    if not live:
        return []
    holders: dict[str, set[str]] = {}
    leaders: dict[str, str | None] = {}
    for a in assignments:
        holders[a.key] = set(a.replicas)
        leaders[a.key] = a.leader
    load = Load.of(live, assignments).replicas
    moves: list[Move] = []
    while True:
        src = min(live, key=lambda n: (-load[n], n))
        dst = min(live, key=lambda n: (load[n], n))
        if load[src] - load[dst] <= 1:
            return moves
        # src holds more shards than dst, so one of them is not on dst (pigeonhole).
        candidates = sorted(
            (leaders[key] == src, key)
            for key, held in holders.items()
            if src in held and dst not in held
        )
        _, key = candidates[0]
        holders[key].remove(src)
        holders[key].add(dst)
        if leaders[key] == src:
            leaders[key] = dst
        load[src] -= 1
        load[dst] += 1
        moves.append(Move(key, src, dst))


def place_coordinator(nodes: Sequence[str], coordinators: Mapping[str, str]) -> str:
    """The live node running the fewest coordinators (``coordinators``: group key -> node)."""
    if not nodes:
        raise ValueError("no live node to place a coordinator on")
    counts = Counter(node for node in coordinators.values())
    return min(sorted(set(nodes)), key=lambda n: (counts[n], n))
