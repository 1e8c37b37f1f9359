"""The controller's decisions: one table (data), one classifier, one function. Pure: no I/O.

``decide(live_nodes, shards, coordinators)`` looks at every shard assignment and coordinator
placement, names the case it is in (``classify_*``, one row of ``TABLE`` each) and returns the
new documents the controller should write. The controller writes each with a compare on the
document's revision and on its own fencing token, then decides again from what it reads back:
decisions are computed from the current state only, never from what the controller did before,
so they are idempotent and a controller that takes over mid-way simply carries on.

Safety does not rest on this table: a leader epoch only grows (every leader change, a return
from unavailable included, is epoch + 1) and the replication layer fences on it. The table only
decides *when* something changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from ..meta.keys import CoordinatorPlacement, ShardAssignment
from .placement import Load, place, place_coordinator


class Case(StrEnum):
    HEALTHY = "healthy"
    UNDER_REPLICATED = "under_replicated"
    UNASSIGNED = "unassigned"
    UNASSIGNED_WAIT = "unassigned_wait"
    LEADER_LOST = "leader_lost"
    NO_REPLICA_LIVE = "no_replica_live"
    STILL_UNAVAILABLE = "still_unavailable"
    COORDINATOR_UNPLACED = "coordinator_unplaced"
    COORDINATOR_HEALTHY = "coordinator_healthy"
    COORDINATOR_LOST = "coordinator_lost"
    COORDINATOR_WAIT = "coordinator_wait"


@dataclass(frozen=True, slots=True)
class Rule:
    case: Case
    when: str
    action: str
    why: str


TABLE: tuple[Rule, ...] = (
    Rule(Case.HEALTHY, "status ok, leader live, every replica live", "none", "nothing to do"),
    Rule(
        Case.UNDER_REPLICATED,
        "status ok, leader live, a follower not live",
        "none (re-replication comes with part 3)",
        "the leader still serves; a quorum question for the replication layer",
    ),
    Rule(
        Case.UNASSIGNED,
        "no replicas yet, live nodes >= RF",
        "place (placement.place), leader epoch + 1, status ok",
        "a new stream's or a reshard's shard; placed together so they balance",
    ),
    Rule(
        Case.UNASSIGNED_WAIT,
        "no replicas yet, live nodes < RF",
        "none",
        "two replicas on one node would make RF a lie; wait for nodes",
    ),
    Rule(
        Case.LEADER_LOST,
        "no leader or leader not live, a replica live",
        "leader = the live replica leading fewest shards (then by id), epoch + 1, status ok",
        "a new epoch fences the old leader; RF 1: the node came back",
    ),
    Rule(
        Case.NO_REPLICA_LIVE,
        "no replica live, status not unavailable",
        "status unavailable, no leader, epoch kept",
        "the shard answers SHARD_UNAVAILABLE instead of routing to a dead node",
    ),
    Rule(
        Case.STILL_UNAVAILABLE,
        "no replica live, status unavailable",
        "none",
        "already marked; waits for a replica's node to return",
    ),
    Rule(
        Case.COORDINATOR_UNPLACED,
        "no node yet (a node wrote it on the group's first request), a node live",
        "place on the live node running fewest coordinators, epoch 1",
        "a new group; spread so no node runs every group",
    ),
    Rule(Case.COORDINATOR_HEALTHY, "coordinator's node live", "none", "nothing to do"),
    Rule(
        Case.COORDINATOR_LOST,
        "coordinator's node not live, a node live",
        "move to the live node running fewest coordinators, epoch + 1",
        "the group's state is in the store; any node can take it up",
    ),
    Rule(Case.COORDINATOR_WAIT, "no node live (placed or not)", "none", "nowhere to go"),
)
RULES: dict[Case, Rule] = {rule.case: rule for rule in TABLE}


@dataclass(frozen=True, slots=True)
class Decision:
    case: Case
    key: str
    after: ShardAssignment | CoordinatorPlacement  # the document to write at ``key``


def classify_shard(shard: ShardAssignment, live: frozenset[str]) -> Case:
    if not shard.replicas:
        return Case.UNASSIGNED if len(live) >= shard.replication_factor else Case.UNASSIGNED_WAIT
    live_replicas = [n for n in shard.replicas if n in live]
    if not live_replicas:
        return Case.STILL_UNAVAILABLE if shard.status == "unavailable" else Case.NO_REPLICA_LIVE
    if shard.leader is None or shard.leader not in live:
        return Case.LEADER_LOST
    if len(live_replicas) < len(shard.replicas):
        return Case.UNDER_REPLICATED
    return Case.HEALTHY


def classify_coordinator(placement: CoordinatorPlacement, live: frozenset[str]) -> Case:
    if not live:
        return Case.COORDINATOR_WAIT
    if placement.node_id is None:
        return Case.COORDINATOR_UNPLACED
    return Case.COORDINATOR_HEALTHY if placement.node_id in live else Case.COORDINATOR_LOST


def decide(
    live_nodes: Iterable[str],
    shards: Mapping[str, ShardAssignment],
    coordinators: Mapping[str, CoordinatorPlacement] | None = None,
) -> list[Decision]:
    """Every write the controller should make now, in a deterministic order (by key)."""
    live = frozenset(live_nodes)
    current = dict(sorted(shards.items()))
    decisions: list[Decision] = []
    unassigned: list[str] = []
    for key, shard in current.items():
        case = classify_shard(shard, live)
        if case is Case.UNASSIGNED:
            unassigned.append(key)
        elif case is Case.NO_REPLICA_LIVE:
            after = replace(shard, leader=None, status="unavailable")
            decisions.append(Decision(case, key, after))
            current[key] = after
        elif case is Case.LEADER_LOST:
            load = Load.of(live, current.values())
            leader = min(
                (n for n in shard.replicas if n in live), key=lambda n: (load.leaders[n], n)
            )
            after = replace(shard, leader=leader, leader_epoch=shard.leader_epoch + 1, status="ok")
            decisions.append(Decision(case, key, after))
            current[key] = after
    placed = place(
        sorted(live),
        [a for k, a in current.items() if k not in unassigned],
        [(key, current[key].replication_factor) for key in unassigned],
    )
    for key, placement in placed.items():
        shard = current[key]
        after = replace(
            shard,
            replicas=placement.replicas,
            leader=placement.leader,
            leader_epoch=shard.leader_epoch + 1,
            status="ok",
        )
        decisions.append(Decision(Case.UNASSIGNED, key, after))
    decisions.extend(_coordinator_decisions(live, coordinators or {}))
    return decisions


def _coordinator_decisions(
    live: frozenset[str], coordinators: Mapping[str, CoordinatorPlacement]
) -> list[Decision]:
    running = {
        key: p.node_id
        for key, p in coordinators.items()
        if p.node_id is not None and p.node_id in live
    }
    decisions = []
    for key, placement in sorted(coordinators.items()):
        case = classify_coordinator(placement, live)
        if case in (Case.COORDINATOR_LOST, Case.COORDINATOR_UNPLACED):
            # Unplaced: epoch 0 -> 1. Lost: epoch + 1. Either way the document's mod_revision
            # moves, which is what the old coordinator's writes compare (groups/service.py).
            node = place_coordinator(sorted(live), running)
            running[key] = node
            after = replace(placement, node_id=node, epoch=placement.epoch + 1)
            decisions.append(Decision(case, key, after))
    return decisions
