"""The active controller's loop: read the cluster, decide (decisions.py), write fenced CAS txns.

Level-triggered, so that a takeover needs no hand-over: each round reads ``nodes/``, ``shards/``,
``coordinators/`` and the requests (``joined/``, ``moves/``, ``drains/``) afresh, computes the
decisions from that state alone, and writes each new document in its own txn comparing the
document's ``mod_revision`` as read and the controller's fencing token (``Leadership.txn``). A
compare that fails means the state moved under us: the round ends and the next one reads
again. A controller elected halfway through placing a stream
places the rest; one deposed halfway has its next write refused and stops.

Between rounds the loop waits for a change under any of those prefixes (one watch task per
prefix sets ``_changed``) or ``resync_s`` seconds, whichever comes first; the periodic resync
bounds the cost of any missed event; a grace or delay that ends (decisions.Facts) wakes it too.
The controller's own clock says how long a node has been lost or live: a new controller
starts counting afresh. Values that do not decode (another version wrote them) are
logged and left alone, never overwritten.

``serve_as_controller`` is what a node runs: campaign, lead until deposed, campaign again; it
ends (NodeLostError) when the node's own membership is lost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar

import structlog
import trio

from streamd_client.errors import MetadataUnavailableError

from ..catalog import StreamMeta
from ..meta.errors import CompactedError, LeaseNotFoundError
from ..meta.keys import (
    COORDINATORS_PREFIX,
    DECLINED_PREFIX,
    DRAINS_PREFIX,
    JOINED_PREFIX,
    MOVES_PREFIX,
    NODES_PREFIX,
    SHARDS_PREFIX,
    CoordinatorPlacement,
    DeclineReport,
    JoinReport,
    KeyFormatError,
    MoveRequest,
    ShardAssignment,
)
from ..meta.store import Compare, KeyValue, MetaStore
from .decisions import (
    JOINS_MAX_DEFAULT,
    PREFERRED_LEADER_DELAY_S_DEFAULT,
    REPLICA_GRACE_S_DEFAULT,
    Case,
    Decision,
    Facts,
    decide,
    move_problem,
)
from .election import RECHECK_S_DEFAULT, Elector, Leadership
from .errors import NodeLostError, NotControllerError
from .membership import REQUEST_TIMEOUT_S_DEFAULT, Membership
from .metrics import (
    CLUSTER_NODES_LIVE,
    CONTROLLER_DECISIONS,
    CONTROLLER_ROUNDS_CRASHED,
    NODES_DOWN,
    SHARDS_UNAVAILABLE,
    SHARDS_UNDER_REPLICATED,
)
from .tasks import bounded, open_nursery

RESYNC_S_DEFAULT: Final = 5.0
_BACKOFF_S: Final = 0.2
_CRASH_BACKOFF_S: Final = 1.0
STREAMS_PREFIX: Final = "streams/"  # the catalog's (catalog.py): shards come from there
_WATCHED: Final = (
    NODES_PREFIX,
    SHARDS_PREFIX,
    COORDINATORS_PREFIX,
    STREAMS_PREFIX,
    JOINED_PREFIX,
    DECLINED_PREFIX,
    MOVES_PREFIX,
    DRAINS_PREFIX,
)

log = structlog.get_logger(__name__)
D = TypeVar("D")
R = TypeVar("R", JoinReport, DeclineReport, MoveRequest)


@dataclass(frozen=True, slots=True)
class ClusterView:
    """What one round read: live node ids, and the documents with their revisions."""

    live_nodes: frozenset[str]
    shards: dict[str, ShardAssignment]
    coordinators: dict[str, CoordinatorPlacement]
    revisions: dict[str, int]  # key -> mod_revision as read (0: absent, a shard to create)
    # Shard documents of shards no stream has any more, coordinator placements of groups
    # whose stream is gone, and requests for shards that are gone: deleted (compare: their
    # revision as read), never acted on.
    orphans: tuple[str, ...] = ()
    reports: dict[str, JoinReport] = field(default_factory=dict)  # by shard key
    moves: dict[str, MoveRequest] = field(default_factory=dict)  # by shard key
    declines: dict[str, DeclineReport] = field(default_factory=dict)  # by shard key
    drains: frozenset[str] = frozenset()


class ControllerService:
    def __init__(
        self,
        store: MetaStore,
        leadership: Leadership,
        *,
        resync_s: float = RESYNC_S_DEFAULT,
        request_timeout_s: float = REQUEST_TIMEOUT_S_DEFAULT,
        replica_grace_s: float = REPLICA_GRACE_S_DEFAULT,
        preferred_leader_delay_s: float = PREFERRED_LEADER_DELAY_S_DEFAULT,
        joins_max: int = JOINS_MAX_DEFAULT,
    ) -> None:
        self.store = store
        self.leadership = leadership
        self.resync_s = resync_s
        self.request_timeout_s = request_timeout_s
        self.replica_grace_s = replica_grace_s
        self.preferred_leader_delay_s = preferred_leader_delay_s
        self.joins_max = joins_max
        self.rounds = 0  # rounds completed (tests and status read it)
        self._changed = trio.Event()
        # When this controller first saw each node lost (named by a shard, not registered) and
        # each live node live: trio.current_time() values.
        self._seen_lost: dict[str, float] = {}
        self._seen_live: dict[str, float] = {}
        self._next_due_s = resync_s  # until the next grace or delay ends (from the last round)

    async def run(self) -> None:
        """Lead until deposed: then raise NotControllerError."""
        log.info("controller.started", node=self.leadership.node_id, token=self.leadership.token)
        async with open_nursery() as nursery:
            for prefix in _WATCHED:
                await nursery.start(self._watch_changes, prefix)
            nursery.start_soon(self._stop_when_deposed, nursery.cancel_scope)
            await self._rounds()  # raises NotControllerError when a write finds us deposed
        # Only the deposition watch ends the rounds without an error (by cancelling them).
        raise NotControllerError(f"{self.leadership.node_id} was deposed")

    async def _stop_when_deposed(self, scope: trio.CancelScope) -> None:
        # Cancels rather than raises: one error leaves run(), never a group of two.
        await self.leadership.watch_deposed()
        scope.cancel()

    async def _rounds(self) -> None:
        while True:
            self._changed = trio.Event()
            try:
                await self.round()
            except MetadataUnavailableError as exc:
                log.warning("controller.round_failed", error=str(exc))
                await trio.sleep(_BACKOFF_S)
                continue
            except NotControllerError:
                raise
            except Exception:
                # A bug in a round must not take the node down: every node would take the
                # role in turn and stop the same way. Logged loudly, counted, tried again.
                log.exception("controller.round_crashed")
                CONTROLLER_ROUNDS_CRASHED.inc()
                await trio.sleep(_CRASH_BACKOFF_S)
                continue
            with trio.move_on_after(min(self.resync_s, self._next_due_s)):
                await self._changed.wait()

    async def round(self) -> list[Decision]:
        """One read-decide-write round; returns the decisions it applied."""
        view = await self.read()
        decisions = decide(view.live_nodes, view.shards, view.coordinators, self._facts(view))
        applied: list[Decision] = []
        for key in view.orphans:
            if await self.leadership.txn([Compare(key, view.revisions[key])], deletes=[key]):
                log.info("controller.orphan_removed", key=key)
        for decision in decisions:
            key = decision.key
            compares = [Compare(k, view.revisions[k]) for k in decision.deletes]
            puts = []
            if decision.after is not None:
                compares.append(Compare(key, view.revisions[key]))
                puts.append((key, decision.after.encode()))
            if decision.case is Case.MOVE_REFUSED:
                move = view.moves[key]
                problem = move_problem(view.shards[key], move, view.live_nodes, view.drains)
                log.warning("controller.move_refused", key=key, problem=problem)
            result = await self.leadership.txn(compares, puts=puts, deletes=list(decision.deletes))
            outcome = "applied" if result else "stale"
            CONTROLLER_DECISIONS.labels(decision.case.value, outcome).inc()
            if not result:
                log.info("controller.stale", key=key, case=decision.case.value)
                self._changed.set()  # read again at once
                break
            applied.append(decision)
            _log_decision(decision)
        self.rounds += 1
        return applied

    def _facts(self, view: ClusterView) -> Facts:
        """The round's facts; remembers when nodes were first seen lost or live."""
        now = trio.current_time()
        named = {n for shard in view.shards.values() for n in shard.replicas}
        for table, nodes in (
            (self._seen_live, view.live_nodes),
            (self._seen_lost, named - view.live_nodes),
        ):
            for node in set(table) - nodes:
                del table[node]
            for node in nodes:
                table.setdefault(node, now)
        lost_s = {n: now - t for n, t in self._seen_lost.items()}
        live_s = {n: now - t for n, t in self._seen_live.items()}
        due = [self.replica_grace_s - s for s in lost_s.values()]
        due += [self.preferred_leader_delay_s - s for s in live_s.values()]
        self._next_due_s = min((d + 0.05 for d in due if d > 0), default=self.resync_s)
        return Facts(
            reports=view.reports,
            moves=view.moves,
            declines=view.declines,
            drains=view.drains,
            lost_s=lost_s,
            live_s=live_s,
            grace_s=self.replica_grace_s,
            preferred_leader_delay_s=self.preferred_leader_delay_s,
            joins_max=self.joins_max,
        )

    async def read(self) -> ClusterView:
        # Three reads, not one snapshot: a change between them is at worst acted on one round
        # late (its watch event starts the next round), and every write compares the revision
        # of the very document it replaces, so a decision never lands on a changed document.
        timeout_s = self.request_timeout_s
        nodes = await bounded("the node list", timeout_s, self.store.range(NODES_PREFIX))
        shard_kvs = await bounded("the shard list", timeout_s, self.store.range(SHARDS_PREFIX))
        coord_kvs = await bounded(
            "the coordinator list", timeout_s, self.store.range(COORDINATORS_PREFIX)
        )
        # Read after the shards: a shard document whose stream is gone here was deleted
        # (only this loop creates shard documents, for shards the catalog already has).
        stream_kvs = await bounded("the stream list", timeout_s, self.store.range(STREAMS_PREFIX))
        request_kvs = {
            prefix: await bounded("the requests", timeout_s, self.store.range(prefix))
            for prefix in (JOINED_PREFIX, DECLINED_PREFIX, MOVES_PREFIX, DRAINS_PREFIX)
        }
        live = frozenset(kv.key[len(NODES_PREFIX) :] for kv in nodes)
        shards = _decoded(shard_kvs, ShardAssignment.decode)
        coordinators = _decoded(coord_kvs, CoordinatorPlacement.decode)
        _report_health(live, shards)
        revisions = {
            kv.key: kv.mod_revision
            for kv in [*shard_kvs, *coord_kvs, *(kv for kvs in request_kvs.values() for kv in kvs)]
        }
        expected = _catalog_shards(stream_kvs)
        for key, unassigned in expected.items():
            if key not in revisions:
                shards[key], revisions[key] = unassigned, 0
        orphans = tuple(k for k in sorted(shards) if revisions[k] and k not in expected)
        live_shards = {k: d for k, d in shards.items() if k not in orphans}
        reports, stale_reports = _requests(request_kvs[JOINED_PREFIX], JoinReport, live_shards)
        declines, stale_declines = _requests(
            request_kvs[DECLINED_PREFIX], DeclineReport, live_shards
        )
        moves, stale_moves = _requests(request_kvs[MOVES_PREFIX], MoveRequest, live_shards)
        stale = tuple(sorted(stale_reports + stale_declines + stale_moves))
        drains = frozenset(kv.key[len(DRAINS_PREFIX) :] for kv in request_kvs[DRAINS_PREFIX])
        for key in orphans:
            del shards[key]
        # A group's placement is written only for a stream the catalog has (groups/cluster.py),
        # and read here before the streams: one whose stream is gone now was deleted with it.
        names = {kv.key[len(STREAMS_PREFIX) :] for kv in stream_kvs}
        gone = tuple(k for k, p in sorted(coordinators.items()) if p.stream not in names)
        for key in gone:
            del coordinators[key]
        return ClusterView(
            live,
            shards,
            coordinators,
            revisions,
            orphans + gone + stale,
            reports,
            moves,
            declines,
            drains,
        )

    async def _watch_changes(
        self, prefix: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Set ``_changed`` on every change under ``prefix``; started before the first read."""
        snapshot = await bounded(
            "a watch start", self.request_timeout_s, self.store.snapshot(prefix)
        )
        start = snapshot.revision + 1
        task_status.started()
        while True:
            try:
                async with self.store.watch(prefix, start) as watch:
                    async for batch in watch:
                        start = batch.revision + 1
                        if batch.events:
                            self._changed.set()
            except CompactedError as exc:
                start = exc.compact_revision
                self._changed.set()  # history lost: the next round reads everything anyway
            except MetadataUnavailableError as exc:
                log.warning("controller.watch_failed", prefix=prefix, error=str(exc))
                await trio.sleep(_BACKOFF_S)
                self._changed.set()


def _report_health(live: frozenset[str], shards: dict[str, ShardAssignment]) -> None:
    """The cluster's health gauges from one round's read (docs/operations.md, "Alerts")."""
    CLUSTER_NODES_LIVE.set(len(live))
    SHARDS_UNAVAILABLE.set(sum(1 for s in shards.values() if s.status == "unavailable"))
    SHARDS_UNDER_REPLICATED.set(sum(1 for s in shards.values() if under_replicated(s, live)))
    NODES_DOWN.set(len({n for s in shards.values() for n in s.replicas} - live))


def under_replicated(shard: ShardAssignment, live: frozenset[str]) -> bool:
    """Placed, served by at least one live voter, but short of its replication factor: one
    more loss away from unavailable (a shard with none live counts as unavailable instead).
    A member still joining does not count yet."""
    live_voters = sum(1 for n in shard.voters if n in live)
    return 0 < live_voters < shard.replication_factor


def _past(request: JoinReport | MoveRequest, shard: ShardAssignment) -> bool:
    """A report about a term or a joiner the shard has moved on from."""
    if isinstance(request, DeclineReport):
        return request.term < shard.leader_epoch
    if isinstance(request, JoinReport):
        return request.node_id not in shard.joining or request.term < shard.joining_since
    return False


def _requests(
    kvs: list[KeyValue], kind: type[R], shards: dict[str, ShardAssignment]
) -> tuple[dict[str, R], list[str]]:
    """Reports or requests by the key of the shard document they are about, and the keys of
    those that are stale: their shard is gone, or a report's term is past (deleted)."""
    current: dict[str, R] = {}
    stale: list[str] = []
    for request in _decoded(kvs, kind.decode).values():
        shard = shards.get(request.shard_key)
        if shard is None or _past(request, shard):
            stale.append(request.key)
        else:
            current[request.shard_key] = request
    return current, stale


def _catalog_shards(stream_kvs: list[KeyValue]) -> dict[str, ShardAssignment]:
    """Every shard the catalog's streams have, as the unassigned document it starts as."""
    expected: dict[str, ShardAssignment] = {}
    for kv in stream_kvs:
        try:
            meta = StreamMeta.decode(kv.value)
        except Exception as exc:  # a newer node's format: its shards are left alone
            log.warning("controller.unreadable", key=kv.key, error=repr(exc)[:200])
            continue
        if meta.status == "DELETING":
            continue
        for shard in meta.shards:
            parents = tuple(p for p in (shard.parent_shard_id, shard.adjacent_parent_shard_id) if p)
            doc = ShardAssignment(
                meta.name, shard.shard_id, meta.replication_factor, parents=parents
            )
            expected[doc.key] = doc
    return expected


def _decoded(kvs: list[KeyValue], decode: Callable[[bytes], D]) -> dict[str, D]:
    docs: dict[str, D] = {}
    for kv in kvs:
        try:
            docs[kv.key] = decode(kv.value)
        except KeyFormatError as exc:
            log.warning("controller.unreadable", key=kv.key, error=str(exc)[:200])
    return docs


def _log_decision(decision: Decision) -> None:
    after = decision.after
    if isinstance(after, ShardAssignment):
        event = (
            "controller.unavailable"
            if decision.case is Case.NO_REPLICA_LIVE
            else ("controller.assigned")
        )
        log.info(
            event,
            case=decision.case.value,
            key=decision.key,
            leader=after.leader,
            epoch=after.leader_epoch,
            replicas=list(after.replicas),
            joining=list(after.joining),
        )
    elif isinstance(after, CoordinatorPlacement):
        event = (
            "controller.coordinator_placed"
            if decision.case is Case.COORDINATOR_UNPLACED
            else "controller.coordinator_moved"
        )
        log.info(event, key=decision.key, node=after.node_id, epoch=after.epoch)


async def serve_as_controller(
    store: MetaStore,
    membership: Membership,
    *,
    resync_s: float = RESYNC_S_DEFAULT,
    recheck_s: float = RECHECK_S_DEFAULT,
    request_timeout_s: float = REQUEST_TIMEOUT_S_DEFAULT,
    replica_grace_s: float = REPLICA_GRACE_S_DEFAULT,
    preferred_leader_delay_s: float = PREFERRED_LEADER_DELAY_S_DEFAULT,
) -> None:
    """Campaign, lead until deposed, campaign again; raise NodeLostError once the node is lost."""
    elector = Elector(
        store,
        membership.node_id,
        membership.lease_id,
        request_timeout_s=request_timeout_s,
        recheck_s=recheck_s,
    )
    async with open_nursery() as nursery:
        nursery.start_soon(_stop_when_lost, membership, nursery.cancel_scope)
        while True:
            try:
                leadership = await elector.campaign()
            except LeaseNotFoundError:
                break
            try:
                await ControllerService(
                    store,
                    leadership,
                    resync_s=resync_s,
                    request_timeout_s=request_timeout_s,
                    replica_grace_s=replica_grace_s,
                    preferred_leader_delay_s=preferred_leader_delay_s,
                ).run()
            except NotControllerError:
                continue
            finally:
                if membership.lease_valid():
                    await leadership.resign()
        nursery.cancel_scope.cancel()
    raise NodeLostError(f"node {membership.node_id} lost its lease")


async def _stop_when_lost(membership: Membership, scope: trio.CancelScope) -> None:
    await membership.lost.wait()
    scope.cancel()
