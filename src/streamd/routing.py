"""Where a shard is served from, and what a request to another node carries.

The engine runs a pipeline only for shards located ``LOCAL``; for the others the front ends
answer NOT_LEADER with the leader's address (native clients route themselves) or forward the
request there through ``PeerCalls`` (server-routed puts, the Kinesis gateway, the group
service). The embedded default has one node, so ``EverythingLocal`` answers ``LOCAL`` for every
shard; cluster mode answers from the shard map (cluster/shardmap.py), and cluster/peers.py is
the ``PeerCalls`` over native connections. This module sits below the engine and the cluster
package both, so neither imports the other to talk about routing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, Protocol

from streamd_client.errors import NotLeaderError, ShardUnavailableError, StreamdError
from streamd_client.model import Position

from .shard import ReadResult


class RecordIn(NamedTuple):
    """A validated record for put_records: key, its 16-byte hash, and data. (A named tuple:
    the gateway makes one per record, and a frozen dataclass costs a microsecond more each.)"""

    partition_key: str
    hash_bytes: bytes
    data: bytes


class PutOutcome(NamedTuple):
    shard_id: str | None = None
    sequence: str | None = None
    error: StreamdError | None = None


@dataclass(frozen=True, slots=True)
class Local:
    """This node leads the shard."""


@dataclass(frozen=True, slots=True)
class Remote:
    """Another live node leads the shard; ``address`` is its native HOST:PORT."""

    node_id: str
    address: str


@dataclass(frozen=True, slots=True)
class Unavailable:
    """No live node leads the shard (not placed yet, or its node is down): retry later."""

    reason: str
    unplaced: bool = False  # a new shard the controller has not placed yet


Location = Local | Remote | Unavailable
LOCAL: Final = Local()


class ShardLocator(Protocol):
    def locate(self, stream: str, shard_id: str) -> Location: ...

    def node_addresses(self) -> dict[str, tuple[str, str]]:
        """Every live node: node id -> (native, kinesis) address."""
        ...

    def self_node(self) -> tuple[str, str]:
        """This node's id and advertised native address."""
        ...


class EverythingLocal:
    """The embedded default's locator: one node, every shard here."""

    def locate(self, stream: str, shard_id: str) -> Location:
        return LOCAL

    def node_addresses(self) -> dict[str, tuple[str, str]]:
        return {}

    def self_node(self) -> tuple[str, str]:
        return ("", "")


class PeerCalls(Protocol):
    """Requests to another node (cluster mode; cluster/peers.py): what the engine forwards."""

    async def call(
        self, address: str, op: str, args: dict[str, Any], *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """One native request to the node at ``address`` (an admin operation it must run)."""
        ...

    async def put_records(
        self, address: str, stream: str, records: Sequence[RecordIn]
    ) -> list[PutOutcome]: ...

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
        """Seal a reshard's parent that node leads (native op seal_shard); its ending offset."""
        ...

    async def unseal_shard(self, address: str, stream: str, shard_id: str, token: str) -> bool:
        """Undo a seal of ``token`` there (native op unseal_shard)."""
        ...

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
    ) -> ReadResult: ...


def located_error(stream: str, shard_id: str, location: Location) -> StreamdError:
    """What a request for a shard this node has no pipeline for answers: NOT_LEADER with the
    leader's address, or SHARD_UNAVAILABLE (retryable, both)."""
    if isinstance(location, Remote):
        return NotLeaderError(
            f"shard {shard_id} of {stream!r} is led by node {location.node_id} "
            f"at {location.address}",
            stream=stream,
            shard_id=shard_id,
            leader=location.node_id,
            address=location.address,
        )
    reason = "it is being opened" if isinstance(location, Local) else location.reason
    return ShardUnavailableError(
        f"shard {shard_id} of {stream!r} is unavailable: {reason}",
        stream=stream,
        shard_id=shard_id,
    )
