"""Requests from this node to the others: forwarded puts and reads, over pooled connections.

A node forwards what it cannot serve itself but must answer (server-routed puts: native
``put_records`` and Kinesis PutRecords; reads for the Kinesis gateway and the group service)
to the shard's leader, over the native protocol, through the client library's own connection
(streamd_client.connection: multiplexed, so one connection per peer carries every forwarded
request at once). ``PeerPool`` keeps one connection per peer address, opens it on first use,
replaces a broken one, and closes connections idle for ``idle_s``.

A forwarded put carries ``forwarded: true``: the receiving node routes it to its own shards
only and answers NOT_LEADER or SHARD_UNAVAILABLE for records of shards it does not lead (never
forwarding again, so a stale map cannot make a loop). Records travel with their hash key
(``h``), so the leader routes exactly as the first node did. A read's answer carries the stored
batches as they are: nothing is decoded or re-encoded on the way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import anyio.abc
import structlog
import trio

from streamd_client import wire
from streamd_client._tasks import background_task_group
from streamd_client.connection import Connection, open_connection
from streamd_client.errors import ConnectionLostError, error_from_wire
from streamd_client.model import Position
from streamd_client.results import raw_read_from_wire
from streamd_client.security import Security

from ..routing import PutOutcome, RecordIn
from ..shard import ReadResult

CONNECT_TIMEOUT_S_DEFAULT: Final = 2.0
REQUEST_TIMEOUT_S_DEFAULT: Final = 10.0
IDLE_S_DEFAULT: Final = 60.0
# Internal operations between nodes (frontends/native/api.py serves them): a reshard's runner
# seals and unseals parents other nodes lead.
OP_SEAL_SHARD: Final = "seal_shard"
OP_UNSEAL_SHARD: Final = "unseal_shard"

log = structlog.get_logger(__name__)


@dataclass
class _Peer:
    connection: Connection
    used_at: float


class PeerPool:
    def __init__(
        self,
        task_group: anyio.abc.TaskGroup,
        *,
        connect_timeout_s: float = CONNECT_TIMEOUT_S_DEFAULT,
        request_timeout_s: float = REQUEST_TIMEOUT_S_DEFAULT,
        idle_s: float = IDLE_S_DEFAULT,
        security: Security | None = None,
    ) -> None:
        self._task_group = task_group
        self.security = security  # TLS and this node's credentials (security/setup.py)
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self.idle_s = idle_s
        self._peers: dict[str, _Peer] = {}
        self._locks: dict[str, trio.Lock] = {}

    async def _connection(self, address: str) -> Connection:
        peer = self._peers.get(address)
        if peer is not None and not peer.connection.is_broken:
            peer.used_at = trio.current_time()
            return peer.connection
        lock = self._locks.setdefault(address, trio.Lock())
        async with lock:  # one connect per peer at a time; bounded by the connect timeout
            peer = self._peers.get(address)
            if peer is not None and not peer.connection.is_broken:
                return peer.connection
            if peer is not None:
                await peer.connection.aclose()
            connection = await open_connection(
                self._task_group,
                address,
                connect_timeout_s=self.connect_timeout_s,
                request_timeout_s=self.request_timeout_s,
                security=self.security,
            )
            self._peers[address] = _Peer(connection, trio.current_time())
            log.info("cluster.peer_connected", address=address)
            return connection

    async def call(
        self, address: str, op: str, args: dict[str, Any], *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """One request to the node at ``address``. Raises the error it answered, or
        ConnectionLostError / RequestTimeoutError."""
        connection = await self._connection(address)
        return await connection.request(op, args, timeout_s=timeout_s)

    async def put_records(
        self, address: str, stream: str, records: Sequence[RecordIn]
    ) -> list[PutOutcome]:
        wire_records = [
            {"k": r.partition_key, "d": r.data, "h": str(int.from_bytes(r.hash_bytes, "big"))}
            for r in records
        ]
        answer = await self.call(
            address,
            wire.OP_PUT_RECORDS,
            {"stream": stream, "records": wire_records, "forwarded": True},
        )
        results = answer.get("results")
        if not isinstance(results, list) or len(results) != len(records):
            raise ConnectionLostError(f"node {address} answered put_records malformed")
        outcomes = []
        for item in results:
            if isinstance(item, dict) and "code" in item:
                outcomes.append(PutOutcome(error=error_from_wire({"details": {}, **item})))
            else:
                outcomes.append(PutOutcome(str(item["shard_id"]), str(item["sequence"])))
        return outcomes

    async def read(
        self,
        address: str,
        stream: str,
        shard_id: str,
        position: Position,
        max_bytes: int,
        wait_ms: int,
        *,
        counted: bool = True,
        metered: bool = False,
    ) -> ReadResult:
        """``metered``: a polling read, counted against the shard's read quota there."""
        args: dict[str, Any] = {
            "stream": stream,
            "shard_id": shard_id,
            "from": position.to_wire(),
            "max_bytes": max_bytes,
            "wait_ms": wait_ms,
            "metered": metered,
        }
        if not counted:
            args["probe"] = True  # the leader leaves it out of its read counts
        answer = await self.call(
            address, wire.OP_READ, args, timeout_s=self.request_timeout_s + wait_ms / 1000
        )
        raw = raw_read_from_wire(answer)
        tip = answer.get("tip_arrival_ms", 0)
        return ReadResult(
            batches=list(raw.batches),
            start_offset=raw.start_offset,
            next_offset=raw.next_offset,
            high_watermark=raw.high_watermark,
            millis_behind=raw.millis_behind,
            shard_end=raw.shard_end,
            child_shards=raw.child_shards,
            tip_arrival_ms=tip if isinstance(tip, int) else 0,
            skipped=raw.skipped,
        )

    async def seal_shard(
        self,
        address: str,
        stream: str,
        shard_id: str,
        hold_ms: int,
        token: str,
        *,
        timeout_s: float,
    ) -> int:
        """Ask the leader at ``address`` to seal a reshard's parent (native op ``seal_shard``,
        docs/cluster.md); returns its ending offset. Raises what it answered, or
        ConnectionLostError / RequestTimeoutError (it may be sealed: its hold ends it)."""
        answer = await self.call(
            address,
            OP_SEAL_SHARD,
            {"stream": stream, "shard_id": shard_id, "hold_ms": hold_ms, "token": token},
            timeout_s=timeout_s,
        )
        ending = answer.get("ending_offset")
        if not isinstance(ending, int) or isinstance(ending, bool) or ending < 0:
            raise ConnectionLostError(f"node {address} answered seal_shard malformed")
        return ending

    async def unseal_shard(self, address: str, stream: str, shard_id: str, token: str) -> bool:
        """Undo a seal of ``token`` (native op ``unseal_shard``); whether one ended there."""
        answer = await self.call(
            address, OP_UNSEAL_SHARD, {"stream": stream, "shard_id": shard_id, "token": token}
        )
        return answer.get("unsealed") is True

    async def close_idle(self) -> None:
        now = trio.current_time()
        for address, peer in list(self._peers.items()):
            if peer.connection.is_broken or now - peer.used_at > self.idle_s:
                del self._peers[address]
                await peer.connection.aclose()

    async def aclose(self) -> None:
        for peer in self._peers.values():
            await peer.connection.aclose()
        self._peers.clear()


@asynccontextmanager
async def open_peer_pool(
    security: Security | None = None, **options: float
) -> AsyncIterator[PeerPool]:
    """A PeerPool whose connections' tasks run in a task group of their own, closed on exit."""
    async with background_task_group() as task_group:
        pool = PeerPool(task_group, security=security, **options)
        try:
            yield pool
        finally:
            with trio.CancelScope(shield=True):
                await pool.aclose()
            task_group.cancel_scope.cancel()
