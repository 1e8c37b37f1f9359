"""The controller's decisions: one table (data), one classifier, one function. Pure: no I/O.

``decide(live_nodes, shards, coordinators, facts)`` looks at every shard assignment and
coordinator placement, names the case it is in (``classify_*``, one row of ``TABLE`` each) and
returns the new documents the controller should write. ``Facts`` holds the rest of what it
looks at: the join reports, move requests and drains read from the store, and how long the
controller has seen each node lost or live (its own clock: a new controller starts those
counts afresh, which only delays a replacement or a leader's return, never hastens one).
The controller writes each with a compare on the document's revision and on its own fencing
token, then decides again from what it reads back:
decisions are computed from the current state only, never from what the controller did before,
so they are idempotent and a controller that takes over mid-way simply carries on.

Safety does not rest on this table: a leader epoch only grows (every leader change, a return
from unavailable included, is epoch + 1) and the replication layer fences on it. The table only
decides *when* something changes. One rule it does keep for the replication layer's proof
(docs/replication.md, "Replica set changes"): a replica set changes by one member at a time,
only while no member is joining and every other member is live, and the new member joins
(does not vote) until its leader reports it caught up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Final

from ..meta.keys import (
    CoordinatorPlacement,
    DeclineReport,
    JoinReport,
    MoveRequest,
    ShardAssignment,
)
from .placement import Load, place, place_coordinator

REPLICA_GRACE_S_DEFAULT: Final = 300.0  # a lost node's replicas are replaced after this
PREFERRED_LEADER_DELAY_S_DEFAULT: Final = 10.0  # a returning node leads again after this
JOINS_MAX_DEFAULT: Final = 4  # shards catching up a new replica at once, cluster-wide


class Case(StrEnum):
    HEALTHY = "healthy"
    UNDER_REPLICATED = "under_replicated"
    REPLICA_REPLACED = "replica_replaced"
    JOINING = "joining"
    JOINER_CAUGHT_UP = "joiner_caught_up"
    JOINER_REPLACED = "joiner_replaced"
    MOVE_REPLICA = "move_replica"
    MOVE_REFUSED = "move_refused"
    DRAIN_MOVE = "drain_move"
    LEADER_PREFERRED = "leader_preferred"
    LEADER_DECLINED = "leader_declined"
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


_CHANGE = "joining = (new,) since epoch + 1, epoch + 1"
TABLE: tuple[Rule, ...] = (
    Rule(
        Case.HEALTHY,
        "status ok, leader live and preferred, every replica live",
        "none",
        "nothing to do",
    ),
    Rule(
        Case.UNDER_REPLICATED,
        "status ok, leader live, a replica not live (within the grace, or no spare node)",
        "none",
        "the leader still serves on a majority; the node may come back",
    ),
    Rule(
        Case.REPLICA_REPLACED,
        "one replica lost for the grace (default 300 s), the others live, a spare node live",
        f"the lost one replaced in place by the spare with fewest replicas; {_CHANGE}",
        "restores RF copies: the new member catches up from the leader, then votes",
    ),
    Rule(
        Case.JOINING,
        "a member joining, no valid report yet",
        "none",
        "it catches up from the leader; one change at a time keeps quorums overlapping",
    ),
    Rule(
        Case.JOINER_CAUGHT_UP,
        "a join report from the leader of a term the joiner has been joining in",
        "joining = (), epoch + 1 (the report is deleted)",
        "it holds every committed batch: now it may vote",
    ),
    Rule(
        Case.JOINER_REPLACED,
        "the joining member's node lost for the grace, a spare node live",
        f"the joiner replaced by the spare; {_CHANGE}",
        "a joiner never voted, so replacing it is always safe",
    ),
    Rule(
        Case.MOVE_REPLICA,
        "a move request (streamd cluster move-replica), the other replicas live, none joining",
        f"from replaced in place by to (a new leader if from led); {_CHANGE}; request deleted",
        "an operator moves data; the same path as a replacement",
    ),
    Rule(
        Case.MOVE_REFUSED,
        "a move request that cannot apply (from not a replica, to one already, to not live "
        "or draining)",
        "request deleted (logged)",
        "an impossible request must not wait forever",
    ),
    Rule(
        Case.DRAIN_MOVE,
        "a replica on a draining node, the other replicas live, none joining, a spare node",
        f"as move_replica, to the spare with fewest replicas; {_CHANGE}",
        "streamd cluster drain empties a node one change per shard at a time",
    ),
    Rule(
        Case.LEADER_PREFERRED,
        "healthy, but the preferred replica (the first) live for the delay (default 10 s) "
        "does not lead, or the leader's node drains",
        "leader = the preferred replica (else a live voter not draining), epoch + 1",
        "a returning node gets its leaders back: leaders stay spread over the nodes",
    ),
    Rule(
        Case.LEADER_DECLINED,
        "the leader reported it declined its term (log under repair, no epoch left), "
        "another voter live",
        "leader = another live voter (as for leader_lost), epoch + 1 (the report is deleted)",
        "a replica repairing its log refetches from a leader: it cannot be that leader",
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
        "no leader or leader not live, a voter live",
        "leader = the live voter not draining: the preferred one, else the one leading fewest "
        "shards (then by id), epoch + 1, status ok",
        "a new epoch fences the old leader; RF 1: the node came back",
    ),
    Rule(
        Case.NO_REPLICA_LIVE,
        "no voter live, status not unavailable",
        "status unavailable, no leader, epoch kept",
        "the shard answers SHARD_UNAVAILABLE instead of routing to a dead node",
    ),
    Rule(
        Case.STILL_UNAVAILABLE,
        "no voter live, status unavailable",
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
_CHANGES: Final = frozenset(
    {Case.REPLICA_REPLACED, Case.JOINER_REPLACED, Case.MOVE_REPLICA, Case.DRAIN_MOVE}
)


@dataclass(frozen=True, slots=True)
class Facts:
    """What ``decide`` looks at besides the documents (all keyed as in the store)."""

    reports: Mapping[str, JoinReport] = field(default_factory=dict)  # by shard key
    moves: Mapping[str, MoveRequest] = field(default_factory=dict)  # by shard key
    declines: Mapping[str, DeclineReport] = field(default_factory=dict)  # by shard key
    drains: frozenset[str] = frozenset()  # nodes being drained
    lost_s: Mapping[str, float] = field(default_factory=dict)  # node -> seconds seen not live
    live_s: Mapping[str, float] = field(default_factory=dict)  # node -> seconds seen live
    grace_s: float = REPLICA_GRACE_S_DEFAULT
    preferred_leader_delay_s: float = PREFERRED_LEADER_DELAY_S_DEFAULT
    joins_max: int = JOINS_MAX_DEFAULT

    def lost_for_grace(self, node: str) -> bool:
        return self.lost_s.get(node, 0.0) >= self.grace_s

    def settled(self, node: str) -> bool:
        """Live long enough to be given leaderships back."""
        return self.live_s.get(node, 0.0) >= self.preferred_leader_delay_s


NO_FACTS: Final = Facts()


@dataclass(frozen=True, slots=True)
class Decision:
    case: Case
    key: str
    after: ShardAssignment | CoordinatorPlacement | None  # the document to write at ``key``
    deletes: tuple[str, ...] = ()  # request keys deleted with it (compared as read)


def classify_shard(shard: ShardAssignment, live: frozenset[str], facts: Facts = NO_FACTS) -> Case:
    if not shard.replicas:
        return Case.UNASSIGNED if len(live) >= shard.replication_factor else Case.UNASSIGNED_WAIT
    if not any(n in live for n in shard.voters):
        return Case.STILL_UNAVAILABLE if shard.status == "unavailable" else Case.NO_REPLICA_LIVE
    if shard.leader is None or shard.leader not in live:
        return Case.LEADER_LOST
    if _declined(shard, facts.declines.get(shard.key)) and any(
        n in live and n != shard.leader for n in shard.voters
    ):
        return Case.LEADER_DECLINED
    spare = _has_spare(shard, live, facts)
    if shard.joining:
        if _valid_report(shard, facts.reports.get(shard.key)):
            return Case.JOINER_CAUGHT_UP
        joiner = shard.joining[0]
        if joiner not in live and facts.lost_for_grace(joiner) and spare:
            return Case.JOINER_REPLACED
        return Case.JOINING
    down = [n for n in shard.replicas if n not in live]
    move = facts.moves.get(shard.key)
    if move is not None:
        if move_problem(shard, move, live, facts.drains):
            return Case.MOVE_REFUSED
        if set(down) <= {move.from_node}:
            return Case.MOVE_REPLICA
    draining = [n for n in shard.replicas if n in facts.drains]
    if draining and set(down) <= {draining[0]} and spare:
        return Case.DRAIN_MOVE
    if down:
        if len(down) == 1 and facts.lost_for_grace(down[0]) and spare:
            return Case.REPLICA_REPLACED
        return Case.UNDER_REPLICATED
    if _preferred_leader(shard, live, facts) is not None:
        return Case.LEADER_PREFERRED
    return Case.HEALTHY


def move_problem(
    shard: ShardAssignment, move: MoveRequest, live: frozenset[str], drains: frozenset[str]
) -> str:
    """Why ``move`` cannot apply to ``shard`` (empty: it can, once the others are live)."""
    if move.from_node not in shard.replicas:
        return f"{move.from_node} holds no replica of it"
    if move.to_node in shard.replicas:
        return f"{move.to_node} holds one already"
    if move.to_node not in live:
        return f"{move.to_node} is not live"
    if move.to_node in drains:
        return f"{move.to_node} is being drained"
    return ""


def _has_spare(shard: ShardAssignment, live: frozenset[str], facts: Facts) -> bool:
    return any(n not in shard.replicas and n not in facts.drains for n in live)


def _valid_report(shard: ShardAssignment, report: JoinReport | None) -> bool:
    return (
        report is not None
        and report.node_id in shard.joining
        and shard.joining_since <= report.term <= shard.leader_epoch
    )


def _declined(shard: ShardAssignment, report: DeclineReport | None) -> bool:
    return (
        report is not None and report.node_id == shard.leader and report.term == shard.leader_epoch
    )


def _preferred_leader(shard: ShardAssignment, live: frozenset[str], facts: Facts) -> str | None:
    """The leader a healthy shard should have instead of its current one, if any."""
    preferred = shard.replicas[0]
    if preferred != shard.leader and preferred not in facts.drains and facts.settled(preferred):
        return preferred
    if shard.leader in facts.drains:
        return next((n for n in shard.voters if n in live and n not in facts.drains), None)
    return None


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
    facts: Facts = NO_FACTS,
) -> list[Decision]:
    """Every write the controller should make now, in a deterministic order (by key)."""
    live = frozenset(live_nodes)
    current = dict(sorted(shards.items()))
    decisions: list[Decision] = []
    unassigned: list[str] = []
    joins = sum(1 for shard in current.values() if shard.joining)
    for key, shard in current.items():
        case = classify_shard(shard, live, facts)
        after: ShardAssignment | None = None
        deletes: tuple[str, ...] = ()
        if case is Case.UNASSIGNED:
            unassigned.append(key)
        elif case is Case.NO_REPLICA_LIVE:
            after = replace(shard, leader=None, status="unavailable")
        elif case is Case.LEADER_LOST:
            leader = _new_leader(shard, shard.voters, live, facts, Load.of(live, current.values()))
            after = replace(shard, leader=leader, leader_epoch=shard.leader_epoch + 1, status="ok")
        elif case is Case.LEADER_DECLINED:
            voters = [n for n in shard.voters if n != shard.leader]
            leader = _new_leader(shard, voters, live, facts, Load.of(live, current.values()))
            after = replace(shard, leader=leader, leader_epoch=shard.leader_epoch + 1)
            deletes = (facts.declines[key].key,)
        elif case is Case.JOINER_CAUGHT_UP:
            after = replace(shard, joining=(), joining_since=0, leader_epoch=shard.leader_epoch + 1)
            deletes = (facts.reports[key].key,)
        elif case is Case.LEADER_PREFERRED:
            preferred = _preferred_leader(shard, live, facts)
            assert preferred is not None
            after = replace(shard, leader=preferred, leader_epoch=shard.leader_epoch + 1)
        elif case is Case.MOVE_REFUSED:
            deletes = (facts.moves[key].key,)
        elif case in _CHANGES and joins < facts.joins_max:
            load = Load.of(live, current.values())
            if case is Case.MOVE_REPLICA:
                move = facts.moves[key]
                out, new = move.from_node, move.to_node
                deletes = (move.key,)
            else:
                out = _leaving(shard, live, facts, case)
                new = min(
                    (n for n in live if n not in shard.replicas and n not in facts.drains),
                    key=lambda n: (load.replicas[n], n),
                )
            after = _changed_set(shard, out, new, live, facts, load)
            joins += 1
        if after is not None or deletes:
            decisions.append(Decision(case, key, after, deletes))
            if after is not None:
                current[key] = after
    # New shards go to nodes not being drained, unless too few of those are left for them.
    nodes = sorted(live - facts.drains)
    if any(current[key].replication_factor > len(nodes) for key in unassigned):
        nodes = sorted(live)
    placed = place(
        nodes,
        [a for k, a in current.items() if k not in unassigned],
        [(key, current[key].replication_factor) for key in unassigned],
    )
    for key, placement in placed.items():
        shard = current[key]
        placed_shard = replace(
            shard,
            replicas=placement.replicas,
            leader=placement.leader,
            leader_epoch=shard.leader_epoch + 1,
            status="ok",
        )
        decisions.append(Decision(Case.UNASSIGNED, key, placed_shard))
    decisions.extend(_coordinator_decisions(live, coordinators or {}))
    return decisions


def _leaving(shard: ShardAssignment, live: frozenset[str], facts: Facts, case: Case) -> str:
    """The member a replacement or a drain takes out of ``shard``."""
    if case is Case.JOINER_REPLACED:
        return shard.joining[0]
    if case is Case.DRAIN_MOVE:
        return next(n for n in shard.replicas if n in facts.drains)
    return next(n for n in shard.replicas if n not in live)


def _changed_set(
    shard: ShardAssignment, out: str, new: str, live: frozenset[str], facts: Facts, load: Load
) -> ShardAssignment:
    """``shard`` with ``out`` replaced in place by ``new`` (joining, not voting yet)."""
    replicas = tuple(new if n == out else n for n in shard.replicas)
    epoch = shard.leader_epoch + 1
    leader = shard.leader
    if leader == out:
        voters = [n for n in replicas if n != new]
        leader = _new_leader(shard, voters, live, facts, load)
    return replace(
        shard,
        replicas=replicas,
        leader=leader,
        leader_epoch=epoch,
        joining=(new,),
        joining_since=epoch,
    )


def _new_leader(
    shard: ShardAssignment, voters: Iterable[str], live: frozenset[str], facts: Facts, load: Load
) -> str:
    """A live voter, not a draining one if any other will do: the preferred replica if it is
    among them, else the one leading fewest shards (then by id)."""
    candidates = [n for n in voters if n in live]
    assert candidates, f"{shard.key}: no live voter to lead"
    undrained = [n for n in candidates if n not in facts.drains] or candidates
    if shard.replicas[0] in undrained:
        return shard.replicas[0]
    return min(undrained, key=lambda n: (load.leaders[n], n))


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
