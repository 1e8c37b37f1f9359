"""Where a shard is served from, as the engine asks it: here, another node, or nowhere now.

The engine runs a pipeline only for shards located ``LOCAL``; for the others the front ends
answer NOT_LEADER with the leader's address (native clients route themselves) or forward the
request there (server-routed puts, the Kinesis gateway). The embedded default has one node,
so ``EVERYTHING_LOCAL`` answers ``LOCAL`` for every shard; cluster mode answers from the
shard map (shardmap.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol


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
