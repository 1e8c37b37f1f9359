"""Node-to-node delivery of replication messages: fire and forget, pipelined, in order.

**Replica ids.** The core names replicas by integers; nodes have text ids. ``replica_id_of``
maps a node id to the first 63 bits of its BLAKE2b digest: deterministic on every node and
across restarts with nothing stored or coordinated (the meta file and every message keep
meaning the same replica), and a node keeps its id for every shard. ``ReplicaIds`` maps back
for one cluster's nodes and refuses two node ids with one replica id (``ReplicaIdCollision``:
at 63 bits, about 1e-17 for 10 nodes; the check makes it loud, never silent). A number assigned
by the controller in the shard document would also work but needs a schema change and an etcd
round trip before a replica can talk; the hash needs neither.

**Sending** (``PeerTransport``): ``send`` never blocks. Envelopes queue per destination
address (at most ``queue_envelopes_max``; beyond, dropped and counted: the protocol resends
after ``retry_ms``), and one sender task per address ships them in native requests
``replica_messages`` (op ``OP_REPLICA_MESSAGES``) of at most ``envelopes_per_request_max``,
with up to ``requests_in_flight_max`` requests outstanding on the pooled connection
(``PeerPool``), so appends are pipelined instead of waiting a round trip each. The answer is
``{}`` at once; a failed request (connection lost, timeout) loses its messages, which the
protocol tolerates.

**Order.** The native server runs each request in its own task, and trio may start two tasks
queued together in either order, so pipelined requests can be handled out of order; a follower
would then nack appends that arrive before the ones they follow. Each request carries the
sender's node id, a ``session`` and a ``seq`` (0, 1, 2... within the session); the receiving
``ReplicaHost`` hands requests of one session to the replicas in ``seq`` order, holding early
ones back (at most ``reorder_requests_max``; beyond that, or once a held request is
``reorder_wait_ms`` old, it delivers what it holds, gaps and all). A sender starts a new session
after any failed request (a lost request would be a gap forever), and a new session replaces
the old one at the receiver.

**Receiving** (``ReplicaHost``): a registry (stream, shard id) -> driver; each envelope goes to
its shard's driver if that driver is replica ``dst``, else it is dropped and counted (unknown
shard, or a replica that moved). ``LocalNetwork`` does the same in one process for tests, through
the codec (every envelope is encoded and decoded, as on the wire), with links that can be cut.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import structlog
import trio

from . import telemetry
from .codec import Envelope, decode_envelope, encode_envelope
from .driver import ReplicaDriver
from .errors import MalformedMessage

OP_REPLICA_MESSAGES: Final = "replica_messages"
REPLICA_ID_BITS: Final = 63

log = structlog.get_logger(__name__)


class ReplicaIdCollision(Exception):
    """Two node ids map to one replica id: they cannot both hold replicas of one cluster."""


def replica_id_of(node_id: str) -> int:
    digest = hashlib.blake2b(node_id.encode(), digest_size=8, person=b"streamd-replica").digest()
    return int.from_bytes(digest, "big") >> (64 - REPLICA_ID_BITS)


class ReplicaIds:
    """node id <-> replica id for the cluster's nodes, with their native addresses."""

    def __init__(self, addresses: Mapping[str, str] | None = None) -> None:
        self._node_of: dict[int, str] = {}
        self._address: dict[str, str] = {}
        if addresses:
            self.update(addresses)

    def update(self, addresses: Mapping[str, str]) -> None:
        """Replace the known nodes (node id -> native address). Raises ReplicaIdCollision."""
        node_of: dict[int, str] = {}
        for node_id in addresses:
            rid = replica_id_of(node_id)
            if node_of.setdefault(rid, node_id) != node_id:
                raise ReplicaIdCollision(f"nodes {node_of[rid]!r} and {node_id!r} share {rid}")
        self._node_of, self._address = node_of, dict(addresses)

    def node_of(self, replica_id: int) -> str | None:
        return self._node_of.get(replica_id)

    def address_of(self, replica_id: int) -> str | None:
        node = self._node_of.get(replica_id)
        return None if node is None else self._address.get(node)


# -- receiving --------------------------------------------------------------------------------


@dataclass
class _Session:
    session: int
    next_seq: int = 0
    held: dict[int, tuple[float, list[Any]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HostConfig:
    reorder_requests_max: int = 64
    reorder_wait_ms: int = 100
    envelopes_per_request_max: int = 1024
    senders_max: int = 1024  # sessions remembered (one per sending node)


class ReplicaHost:
    """This node's replica drivers by shard, and the ordered delivery of peers' requests."""

    def __init__(self, config: HostConfig | None = None) -> None:
        self.config = config or HostConfig()
        self._drivers: dict[tuple[str, str], ReplicaDriver] = {}
        self._sessions: dict[str, _Session] = {}
        self.dropped = 0

    def add(self, driver: ReplicaDriver) -> None:
        self._drivers[(driver.stream, driver.shard_id)] = driver

    def remove(self, driver: ReplicaDriver) -> None:
        key = (driver.stream, driver.shard_id)
        if self._drivers.get(key) is driver:
            del self._drivers[key]

    def driver(self, stream: str, shard_id: str) -> ReplicaDriver | None:
        return self._drivers.get((stream, shard_id))

    def deliver(self, envelope: Envelope) -> bool:
        driver = self._drivers.get((envelope.stream, envelope.shard_id))
        if driver is None or driver.replica_id != envelope.message.dst:
            return self._drop("unknown_shard")
        if not driver.receive(envelope.message):
            return self._drop("inbox_full")
        telemetry.MESSAGES_RECEIVED.inc()
        return True

    def _drop(self, reason: str) -> bool:
        self.dropped += 1
        telemetry.MESSAGES_DROPPED.labels(reason).inc()
        return False

    def deliver_values(self, values: Iterable[Any]) -> None:
        for value in values:
            try:
                envelope = decode_envelope(value)
            except MalformedMessage as exc:
                self._drop("malformed")
                log.debug("replication.malformed_envelope", error=exc.what)
                continue
            self.deliver(envelope)

    def accept(self, sender: str, session: int, seq: int, values: list[Any]) -> None:
        """One ``replica_messages`` request: deliver it in ``seq`` order within its session."""
        state = self._sessions.get(sender)
        if state is None or session != state.session:
            if state is None and len(self._sessions) >= self.config.senders_max:
                self._sessions.pop(next(iter(self._sessions)))
            if state is not None and state.held:
                self._flush(state)  # the old session's held requests: deliver, not lose
            state = self._sessions[sender] = _Session(session)
        if seq < state.next_seq:  # a duplicate or very late request: deliver as it is
            self.deliver_values(values)
            return
        state.held[seq] = (trio.current_time(), values)
        self._release(state)
        oldest = min((at for at, _ in state.held.values()), default=None)
        too_old = oldest is not None and (
            trio.current_time() - oldest >= self.config.reorder_wait_ms / 1000
        )
        if len(state.held) > self.config.reorder_requests_max or too_old:
            self._flush(state)

    def _release(self, state: _Session) -> None:
        while state.next_seq in state.held:
            _, values = state.held.pop(state.next_seq)
            state.next_seq += 1
            self.deliver_values(values)

    def _flush(self, state: _Session) -> None:
        telemetry.MESSAGES_DROPPED.labels("reorder_gap").inc()
        for seq in sorted(state.held):
            self.deliver_values(state.held.pop(seq)[1])
            state.next_seq = seq + 1


# -- sending ----------------------------------------------------------------------------------


class Caller(Protocol):
    """What the transport sends through: ``cluster.peers.PeerPool`` fits."""

    async def call(
        self, address: str, op: str, args: dict[str, Any], *, timeout_s: float | None = None
    ) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class TransportConfig:
    queue_envelopes_max: int = 8192
    envelopes_per_request_max: int = 256
    requests_in_flight_max: int = 8
    request_timeout_s: float = 2.0


class _Lane:
    def __init__(self) -> None:
        self.queue: deque[dict[str, Any]] = deque()
        self.wake = trio.Event()
        self.session = random.getrandbits(62)
        self.seq = itertools.count()


class PeerTransport:
    """The driver's ``Outbox`` over native connections to the other nodes (see above)."""

    def __init__(
        self,
        node_id: str,
        ids: ReplicaIds,
        caller: Caller,
        nursery: trio.Nursery,
        config: TransportConfig | None = None,
    ) -> None:
        self.node_id = node_id
        self.ids = ids
        self.caller = caller
        self.config = config or TransportConfig()
        self._nursery = nursery
        self._lanes: dict[str, _Lane] = {}

    def send(self, envelope: Envelope) -> None:
        address = self.ids.address_of(envelope.message.dst)
        if address is None:
            telemetry.MESSAGES_DROPPED.labels("unknown_replica").inc()
            return
        lane = self._lanes.get(address)
        if lane is None:
            lane = self._lanes[address] = _Lane()
            self._nursery.start_soon(self._sender, address, lane)
        if len(lane.queue) >= self.config.queue_envelopes_max:
            telemetry.MESSAGES_DROPPED.labels("queue_full").inc()
            return
        lane.queue.append(encode_envelope(envelope))
        lane.wake.set()
        telemetry.MESSAGES_SENT.inc()

    async def _sender(self, address: str, lane: _Lane) -> None:
        slots = trio.Semaphore(self.config.requests_in_flight_max)
        async with trio.open_nursery() as calls:
            while True:
                while not lane.queue:
                    lane.wake = trio.Event()
                    await lane.wake.wait()
                await slots.acquire()
                count = min(len(lane.queue), self.config.envelopes_per_request_max)
                values = [lane.queue.popleft() for _ in range(count)]
                args = {
                    "from": self.node_id,
                    "session": lane.session,
                    "seq": next(lane.seq),
                    "envelopes": values,
                }
                calls.start_soon(self._call, address, lane, args, slots)

    async def _call(
        self, address: str, lane: _Lane, args: dict[str, Any], slots: trio.Semaphore
    ) -> None:
        try:
            await self.caller.call(
                address, OP_REPLICA_MESSAGES, args, timeout_s=self.config.request_timeout_s
            )
        except Exception as exc:  # lost: the protocol resends; a new session skips the gap
            telemetry.MESSAGES_DROPPED.labels("request_failed").inc(len(args["envelopes"]))
            if lane.session == args["session"]:
                lane.session, lane.seq = random.getrandbits(62), itertools.count()
            log.debug("replication.send_failed", address=address, error=repr(exc))
        finally:
            slots.release()


# -- in one process (tests) ---------------------------------------------------------------------


class LocalNetwork:
    """Replica id -> host, delivered at once through the codec; ``cut`` drops a link."""

    def __init__(self) -> None:
        self.hosts: dict[int, ReplicaHost] = {}
        self.cut: set[tuple[int, int]] = set()

    def send(self, envelope: Envelope) -> None:
        message = envelope.message
        host = self.hosts.get(message.dst)
        if host is None or (message.src, message.dst) in self.cut:
            telemetry.MESSAGES_DROPPED.labels("local_cut").inc()
            return
        telemetry.MESSAGES_SENT.inc()
        host.deliver_values([encode_envelope(envelope)])

    def isolate(self, replica_id: int) -> None:
        for other in self.hosts:
            self.cut |= {(replica_id, other), (other, replica_id)}

    def heal(self) -> None:
        self.cut.clear()
