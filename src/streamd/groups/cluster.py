"""Consumer groups in cluster mode: where each group's coordinator runs, and its fence.

One node runs a group's coordinator (service.py's runner): the one ``coordinators/<stream>/
<group>`` names (meta/keys.py). The document is written *unplaced* by whichever node gets the
group's first request (compare absent: two nodes racing write it once), and from then on only by
the controller, which places it (``coordinator_unplaced``: the live node running fewest, epoch 1)
and moves it when its node is lost (``coordinator_lost``: epoch + 1). docs/cluster.md.

``GroupCluster`` is the service's view of that, from a ``PrefixMirror`` of ``coordinators/``
(no I/O per request) and the shard map's node registrations:

- ``route`` answers where a request goes: here (None) or the coordinator node's address, to
  which the front end forwards it with ``forwarded: true``. A forwarded request is never
  forwarded again (a stale map cannot make a loop): if this node is not the coordinator either,
  it answers COORDINATOR_UNAVAILABLE. While the group is unplaced, or its node is not live,
  ``route`` waits up to ``placement_wait_s`` for the controller (placing a new group takes one
  controller round, a few ms), then answers COORDINATOR_UNAVAILABLE, retryable: the client
  library retries.
- ``fence`` reads the placement from the store itself (not the mirror, which may lag) when a
  runner loads: the runner then compares the document's ``mod_revision`` in every write it
  makes, so once the controller moves the group (any move changes the revision) a deposed
  runner cannot write one more byte, whatever it still believes.
- ``holds`` answers, from the mirror, whether a runner's fence still stands; the service drops
  a runner as soon as it does not (the mirror's listener, and a check on every request), so a
  deposed runner stops answering from memory too, not only writing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import structlog
import trio
from prometheus_client import Counter

from streamd_client.errors import (
    ConnectionLostError,
    CoordinatorUnavailableError,
    RequestTimeoutError,
    StreamdError,
)

from ..cluster.mirror import PrefixMirror
from ..meta.keys import (
    COORDINATORS_PREFIX,
    CoordinatorPlacement,
    KeyFormatError,
    NodeRegistration,
    coordinator_key,
)
from ..meta.store import Compare, MetaStore

PLACEMENT_WAIT_S_DEFAULT: Final = 1.0  # how long a request waits for the controller to place
FORWARD_TIMEOUT_S_DEFAULT: Final = 5.0  # one forwarded group request (a heartbeat: ~1 ms)
_RECHECK_S: Final = 0.05  # while waiting: node registrations change without a coordinator event

log = structlog.get_logger(__name__)

GROUP_FORWARDED = Counter(
    "streamd_group_forwarded_total",
    "Group requests this node forwarded to the group's coordinator node, by outcome "
    "(ok, error: the coordinator answered an error, unreachable)",
    ["outcome"],
)
COORDINATOR_UNAVAILABLE = Counter(
    "streamd_group_coordinator_unavailable_total",
    "Group requests answered COORDINATOR_UNAVAILABLE here, by reason (unplaced, not_live, "
    "moved, unreachable, fenced)",
    ["reason"],
)


class NodeDirectory(Protocol):
    """What the groups need of the shard map (cluster/shardmap.py): this node and the others."""

    node_id: str
    lease_valid: Callable[[], bool]

    def registration(self, node_id: str) -> NodeRegistration | None: ...


class PeerCaller(Protocol):
    """cluster/peers.py's PeerPool, as far as the groups use it."""

    async def call(
        self, address: str, op: str, args: dict[str, Any], *, timeout_s: float | None = None
    ) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Fence:
    """A runner's right to write: the placement document as read when it loaded."""

    key: str
    mod_revision: int  # every write of the runner compares it
    epoch: int

    def compare(self) -> Compare:
        return Compare(self.key, self.mod_revision)


class GroupCluster:
    def __init__(
        self,
        store: MetaStore,
        nodes: NodeDirectory,
        peers: PeerCaller,
        *,
        placement_wait_s: float = PLACEMENT_WAIT_S_DEFAULT,
        forward_timeout_s: float = FORWARD_TIMEOUT_S_DEFAULT,
    ) -> None:
        self.store = store
        self.nodes = nodes
        self.peers = peers
        self.placement_wait_s = placement_wait_s
        self.forward_timeout_s = forward_timeout_s
        self.mirror = PrefixMirror(store, COORDINATORS_PREFIX)
        self._changed = trio.Event()
        self.mirror.listen(self._signal)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow ``coordinators/`` until cancelled (started once loaded)."""
        await self.mirror.run(task_status=task_status)

    def listen(self, listener: Callable[[set[str]], None]) -> None:
        """``listener(keys)`` on every change of placement documents (full keys)."""
        self.mirror.listen(listener)

    def _signal(self, keys: set[str]) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- where a group is ------------------------------------------------------------------------

    def placement(self, stream: str, group: str) -> CoordinatorPlacement | None:
        raw = self.mirror.values.get(coordinator_key(stream, group))
        if raw is None:
            return None
        try:
            return CoordinatorPlacement.decode(raw)
        except KeyFormatError as exc:  # a newer node's format: nobody here can run it
            log.warning("group.placement_unreadable", stream=stream, group=group, error=str(exc))
            raise CoordinatorUnavailableError(
                f"group {stream}/{group}: unreadable placement ({exc})", stream=stream, group=group
            ) from None

    def coordinated_here(self, stream: str, group: str) -> bool:
        """Whether the group's placement, as mirrored now, names this node."""
        try:
            placement = self.placement(stream, group)
        except CoordinatorUnavailableError:
            return False
        return placement is not None and placement.node_id == self.nodes.node_id

    def _address(self, placement: CoordinatorPlacement) -> str | None:
        """None for here; the native address of a live other node; raises if nowhere."""
        node = placement.node_id
        if node == self.nodes.node_id and self.nodes.lease_valid():
            return None
        registration = None if node is None else self.nodes.registration(node)
        if registration is None or node == self.nodes.node_id:
            why = "not placed yet" if node is None else f"its node {node} is not live"
            raise CoordinatorUnavailableError(
                f"the coordinator of group {placement.stream}/{placement.group} is unavailable "
                f"({why}); retry",
                stream=placement.stream,
                group=placement.group,
                **({} if node is None else {"node": node}),
            )
        return registration.native_address

    async def route(
        self,
        stream: str,
        group: str,
        *,
        create: bool,
        forwarded: bool,
        exists: Callable[[], Awaitable[bool]],
    ) -> str | None:
        """Where a request for the group goes: None (here) or the coordinator's address.

        ``create``: the request may create the group (join, create), so an absent placement is
        written, unplaced; ``exists()``: whether the group document is in the store, asked only
        when there is no placement (a group without one gets one too). Neither: None, and the
        local service answers GROUP_NOT_FOUND. Raises CoordinatorUnavailableError (retryable)
        after waiting ``placement_wait_s`` for a placement, or at once for a forwarded request
        not for here.
        """
        with trio.move_on_after(self.placement_wait_s):
            await self.mirror.loaded.wait()
        deadline = trio.current_time() + self.placement_wait_s
        written = False
        while True:
            placement = self.placement(stream, group)
            if placement is None and not written:
                if not (create or await exists()):
                    return None
                await self._put_unplaced(stream, group)
                written = True
            try:
                if placement is None:
                    raise CoordinatorUnavailableError(
                        f"the coordinator of group {stream}/{group} is not placed yet; retry",
                        stream=stream,
                        group=group,
                    )
                address = self._address(placement)
                if address is not None and forwarded:
                    raise CoordinatorUnavailableError(
                        f"group {stream}/{group} moved to node {placement.node_id} while the "
                        "request was forwarded; retry",
                        stream=stream,
                        group=group,
                        node=placement.node_id,
                    )
                return address
            except CoordinatorUnavailableError:
                left_s = deadline - trio.current_time()
                if forwarded or left_s <= 0:
                    reason = (
                        "unplaced"
                        if placement is None or not placement.placed
                        else ("moved" if forwarded else "not_live")
                    )
                    COORDINATOR_UNAVAILABLE.labels(reason).inc()
                    raise
            with trio.move_on_after(min(left_s, _RECHECK_S)):
                await self._changed.wait()

    async def _put_unplaced(self, stream: str, group: str) -> None:
        doc = CoordinatorPlacement.unplaced(stream, group)
        written = await self.store.txn([Compare(doc.key, 0)], puts=[(doc.key, doc.encode())])
        if written:
            log.info("group.placement_requested", stream=stream, group=group)

    async def forward(self, address: str, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """The request, to the coordinator's node. Raises what it answered; a node that does
        not answer is COORDINATOR_UNAVAILABLE (the request may or may not have applied: every
        group operation may be sent again)."""
        try:
            answer = await self.peers.call(
                address, op, {**args, "forwarded": True}, timeout_s=self.forward_timeout_s
            )
        except (ConnectionLostError, RequestTimeoutError) as exc:
            GROUP_FORWARDED.labels("unreachable").inc()
            COORDINATOR_UNAVAILABLE.labels("unreachable").inc()
            raise CoordinatorUnavailableError(
                f"the coordinator at {address} did not answer ({exc.message}); retry",
                stream=args.get("stream"),
                group=args.get("group"),
            ) from None
        except StreamdError:
            GROUP_FORWARDED.labels("error").inc()
            raise
        GROUP_FORWARDED.labels("ok").inc()
        return answer

    # -- fencing ---------------------------------------------------------------------------------

    async def fence(self, stream: str, group: str) -> Fence:
        """The placement as the store has it now, which must name this node. Raises
        CoordinatorUnavailableError otherwise (moved, deleted, unplaced, or this node may have
        lost its membership)."""
        key = coordinator_key(stream, group)
        kv = await self.store.get(key)
        placement = None
        if kv is not None:
            try:
                placement = CoordinatorPlacement.decode(kv.value)
            except KeyFormatError:
                placement = None
        if (
            kv is None
            or placement is None
            or placement.node_id != self.nodes.node_id
            or not self.nodes.lease_valid()
        ):
            COORDINATOR_UNAVAILABLE.labels("fenced").inc()
            raise CoordinatorUnavailableError(
                f"this node does not coordinate group {stream}/{group} (now: "
                f"{placement.node_id if placement else 'none'}); retry",
                stream=stream,
                group=group,
            )
        return Fence(key, kv.mod_revision, placement.epoch)

    def holds(self, stream: str, group: str, fence: Fence) -> bool:
        """Whether the mirror still shows the placement ``fence`` was taken on (a mirror behind
        the fence's revision is trusted to catch up: the fence came from the store)."""
        if not self.nodes.lease_valid():
            return False
        if self.mirror.revision < fence.mod_revision:
            return True
        try:
            placement = self.placement(stream, group)
        except CoordinatorUnavailableError:
            return False
        return (
            placement is not None
            and placement.node_id == self.nodes.node_id
            and placement.epoch == fence.epoch
        )
