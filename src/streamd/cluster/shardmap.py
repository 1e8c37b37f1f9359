"""The shard map of a cluster node: every shard's leader, from ``shards/`` and ``nodes/``.

Two prefix mirrors (mirror.py) keep this node's copy of the shard assignments the controller
writes and of the live nodes' registrations; ``locate`` answers from them with no I/O, so it is
cheap enough for every request. A shard is ``Local`` when its assignment names this node as
leader with status ok *and* this node's membership lease is valid (a node that may have lost
its lease must not act as leader: docs/cluster.md, node life cycle); ``Remote`` when another
live node leads it; ``Unavailable`` otherwise (unassigned, status unavailable, or its leader's
registration is gone and the controller has not moved it yet). The lease condition holds for
RF 1 shards only: a replicated shard's leader is fenced by its epoch, and serves while etcd is
away (controller/membership.py, "lapsed").

Listeners (``listen``) are told when anything under either prefix changed, so the engine can
open or close pipelines as leadership moves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import structlog
import trio

from ..meta.keys import (
    NODES_PREFIX,
    SHARDS_PREFIX,
    KeyFormatError,
    NodeRegistration,
    ShardAssignment,
    shard_key,
)
from ..meta.store import MetaStore
from ..routing import LOCAL, Location, Remote, Unavailable
from .mirror import PrefixMirror

log = structlog.get_logger(__name__)


class ShardMap:
    def __init__(
        self,
        store: MetaStore,
        node_id: str,
        address: str,
        lease_valid: Callable[[], bool] = lambda: True,
    ) -> None:
        self.node_id = node_id
        self.address = address  # this node's advertised native HOST:PORT
        self.lease_valid = lease_valid
        self.shards = PrefixMirror(store, SHARDS_PREFIX)
        self.nodes = PrefixMirror(store, NODES_PREFIX)
        self._assignments: dict[str, ShardAssignment | None] = {}  # decoded, by key
        self._registrations: dict[str, NodeRegistration | None] = {}
        self.changed = trio.Event()  # set (then replaced) on every change
        self.shards.listen(self._forget_shards)
        self.nodes.listen(self._forget_nodes)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow both prefixes until cancelled; started once both are loaded."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.shards.run)
            await nursery.start(self.nodes.run)
            task_status.started()

    def _forget_shards(self, keys: set[str]) -> None:
        for key in keys:
            self._assignments.pop(key, None)
        self._signal()

    def _forget_nodes(self, keys: set[str]) -> None:
        for key in keys:
            self._registrations.pop(key, None)
        self._signal()

    def _signal(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def assignment(self, stream: str, shard_id: str) -> ShardAssignment | None:
        key = shard_key(stream, shard_id)
        if key not in self._assignments:
            raw = self.shards.values.get(key)
            self._assignments[key] = None if raw is None else _decoded(key, raw, ShardAssignment)
        return self._assignments[key]

    def registration(self, node_id: str) -> NodeRegistration | None:
        key = NODES_PREFIX + node_id
        if key not in self._registrations:
            raw = self.nodes.values.get(key)
            self._registrations[key] = None if raw is None else _decoded(key, raw, NodeRegistration)
        return self._registrations[key]

    def locate(self, stream: str, shard_id: str) -> Location:
        assignment = self.assignment(stream, shard_id)
        if assignment is None or assignment.status == "unassigned":
            return Unavailable("not placed yet", unplaced=True)
        leader = assignment.leader
        if assignment.status != "ok" or leader is None:
            return Unavailable(f"status {assignment.status}")
        if leader == self.node_id:
            # A replicated shard's leader is fenced by the replication core's epochs and quorum
            # lease, not by this node's membership: it keeps serving while etcd is away.
            if assignment.replication_factor == 1 and not self.lease_valid():
                return Unavailable("this node's membership lease may have lapsed")
            return LOCAL
        registration = self.registration(leader)
        if registration is None:
            return Unavailable(f"its leader {leader} is not live")
        return Remote(leader, registration.native_address)

    def self_node(self) -> tuple[str, str]:
        return self.node_id, self.address

    def node_addresses(self) -> dict[str, tuple[str, str]]:
        found: dict[str, tuple[str, str]] = {}
        for key in self.nodes.values:
            registration = self.registration(key[len(NODES_PREFIX) :])
            if registration is not None:
                found[registration.node_id] = (
                    registration.native_address,
                    registration.kinesis_address,
                )
        return found


_Doc = TypeVar("_Doc", ShardAssignment, NodeRegistration)


def _decoded(key: str, raw: bytes, kind: type[_Doc]) -> _Doc | None:
    try:
        return kind.decode(raw)
    except KeyFormatError as exc:
        log.warning("cluster.unreadable", key=key, error=str(exc))
        return None
