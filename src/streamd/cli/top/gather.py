"""``streamd top``'s client calls: one round of them makes one ``Sample`` (model.py).

A round asks, through the bootstrap client (``--endpoint``, any node of a cluster):
``cluster_nodes`` (empty from an embedded server), then ``node_stats`` of every node, each on a
connection of its own to the node's native address (kept between rounds, dropped when it
breaks; a node that does not answer in time is ``unreachable``), and meanwhile ``list_streams``,
``describe_stream`` of each, ``list_groups`` of each and ``describe_group`` of each group (its
lag per shard). Calls run a few at a time (``CALLS_AT_ONCE``), each within the request timeout.

Bounded: at most ``STREAMS_MAX`` streams and ``GROUPS_MAX`` groups are described per round, the
rest named in the sample's notes; a node's stats carry at most the server's row bound
(``truncated``, also noted). Nothing here sorts, divides or draws: that is model.py's and
screen.py's.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Final, TypeVar

import anyio
import anyio.abc

from streamd_client import group_admin
from streamd_client.connection import Connection, open_connection
from streamd_client.errors import StreamdError, StreamNotFoundError
from streamd_client.group_errors import GroupNotFoundError
from streamd_client.node_stats import NodeStats, cluster_nodes, node_stats

from .model import (
    GroupInfo,
    NodeInfo,
    Sample,
    ShardKey,
    ShardLag,
    ShardTotals,
    StreamInfo,
    merge_nodes,
)

STREAMS_MAX: Final = 200
GROUPS_MAX: Final = 100
CALLS_AT_ONCE: Final = 8
LOCAL: Final = "local"  # the one node of an embedded server

T = TypeVar("T")


class _Link:
    """A connection to one node, as a Caller (what streamd_client.node_stats takes)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    async def call(
        self, op: str, args: dict[str, Any], *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        return await self.connection.request(op, args, timeout_s=timeout_s)


class Gatherer:
    """Takes samples over ``client`` (a streamd_client.Client) and per-node connections whose
    tasks run in ``task_group``; ``aclose`` closes those connections."""

    def __init__(
        self,
        client: Any,
        task_group: anyio.abc.TaskGroup,
        *,
        endpoint: str,
        timeout_s: float,
        streams_max: int = STREAMS_MAX,
        groups_max: int = GROUPS_MAX,
    ) -> None:
        self.client = client
        self.task_group = task_group
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.streams_max = streams_max
        self.groups_max = groups_max
        self._links: dict[str, _Link] = {}
        self.seen_nodes: dict[str, NodeInfo] = {}

    async def aclose(self) -> None:
        links, self._links = list(self._links.values()), {}
        for link in links:
            await link.connection.aclose()

    async def sample(self) -> Sample:
        """One round (module doc). Raises the bootstrap client's errors (the server away)."""
        notes: list[str] = []
        addresses = await cluster_nodes(self.client, timeout_s=self.timeout_s)
        async with anyio.create_task_group() as round_group:
            nodes_done: list[tuple[list[NodeInfo], dict[ShardKey, ShardTotals]]] = []
            streams_done: list[tuple[list[StreamInfo], list[GroupInfo]]] = []

            async def nodes() -> None:
                nodes_done.append(await self._nodes(addresses, notes))

            async def streams() -> None:
                streams_done.append(await self._streams(notes))

            round_group.start_soon(nodes)
            round_group.start_soon(streams)
        node_infos, shards = nodes_done[0]
        stream_infos, groups = streams_done[0]
        taken = time.monotonic()
        for info in node_infos:
            self.seen_nodes[info.node_id] = info
        return Sample(
            taken, tuple(node_infos), tuple(stream_infos), shards, tuple(groups), bool(addresses),
            tuple(notes),
        )  # fmt: skip

    # -- nodes -----------------------------------------------------------------------------------

    async def _nodes(
        self, addresses: Sequence[Any], notes: list[str]
    ) -> tuple[list[NodeInfo], dict[ShardKey, ShardTotals]]:
        if not addresses:  # the embedded default: the bootstrap server is the node
            stats = await node_stats(self.client, timeout_s=self.timeout_s)
            return [_node_info(LOCAL, self.endpoint, stats)], _totals(LOCAL, stats, notes)
        infos: dict[str, NodeInfo] = {}
        shards: dict[ShardKey, ShardTotals] = {}

        async def one(node_id: str, address: str) -> None:
            try:
                with anyio.fail_after(self.timeout_s):
                    stats = await node_stats(await self._link(address), timeout_s=self.timeout_s)
            except (StreamdError, TimeoutError, OSError) as exc:
                self._drop(address)
                why = exc.code if isinstance(exc, StreamdError) else "TIMEOUT"
                infos[node_id] = NodeInfo(node_id, address, "unreachable", error=why)
                return
            infos[node_id] = _node_info(node_id, address, stats)
            shards.update(_totals(node_id, stats, notes))

        await _limited([partial(one, a.node_id, a.native) for a in addresses])
        live = [infos[a.node_id] for a in addresses if a.node_id in infos]
        return merge_nodes(self.seen_nodes, live), shards

    async def _link(self, address: str) -> _Link:
        link = self._links.get(address)
        if link is None or link.connection.is_broken:
            connection = await open_connection(
                self.task_group,
                address,
                connect_timeout_s=self.timeout_s,
                request_timeout_s=self.timeout_s,
            )
            link = self._links[address] = _Link(connection)
        return link

    def _drop(self, address: str) -> None:
        link = self._links.pop(address, None)
        if link is not None:
            self.task_group.start_soon(link.connection.aclose)

    # -- streams and groups ----------------------------------------------------------------------

    async def _streams(self, notes: list[str]) -> tuple[list[StreamInfo], list[GroupInfo]]:
        names: list[str] = await self.client.list_streams()
        if len(names) > self.streams_max:
            notes.append(f"{len(names) - self.streams_max} more streams not shown")
            names = names[: self.streams_max]
        described: dict[str, StreamInfo] = {}
        group_names: dict[str, list[dict[str, Any]]] = {}

        async def one(name: str) -> None:
            try:
                description = await self.client.describe_stream(name)
                listed = await group_admin.list_groups(self.client, name)
            except StreamNotFoundError:
                return  # deleted meanwhile
            described[name] = _stream_info(description)
            group_names[name] = listed

        await _limited([partial(one, n) for n in names])
        wanted = [(s, g) for s in names for g in group_names.get(s, [])]
        if len(wanted) > self.groups_max:
            notes.append(f"{len(wanted) - self.groups_max} more groups not shown")
            wanted = wanted[: self.groups_max]
        groups: dict[tuple[str, str], GroupInfo] = {}

        async def group(stream: str, listed: dict[str, Any]) -> None:
            name = str(listed.get("group"))
            if listed.get("state") == "UNAVAILABLE":
                groups[(stream, name)] = GroupInfo(stream, name, "UNAVAILABLE", None)
                return
            try:
                view = await group_admin.describe_group(self.client, stream, name)
            except (GroupNotFoundError, StreamNotFoundError):
                return
            except StreamdError as exc:
                groups[(stream, name)] = GroupInfo(stream, name, exc.code, None)
                return
            groups[(stream, name)] = _group_info(stream, name, view)

        await _limited([partial(group, s, g) for s, g in wanted])
        ordered_groups = [groups[k] for k in sorted(groups)]
        return [described[n] for n in names if n in described], ordered_groups


async def _limited(calls: Sequence[Callable[[], Awaitable[None]]]) -> None:
    """Run every call, at most CALLS_AT_ONCE at a time; the first error ends them all."""
    limiter = anyio.CapacityLimiter(CALLS_AT_ONCE)

    async def run(call: Callable[[], Awaitable[None]]) -> None:
        async with limiter:
            await call()

    async with anyio.create_task_group() as group:
        for call in calls:
            group.start_soon(run, call)


def _node_info(node_id: str, address: str, stats: NodeStats) -> NodeInfo:
    return NodeInfo(
        node_id,
        stats.address or address,
        "live",
        stats.shards_held,
        stats.data_dir_free_bytes,
        stats.data_dir_size_bytes,
    )


def _totals(node: str, stats: NodeStats, notes: list[str]) -> dict[ShardKey, ShardTotals]:
    if stats.truncated:
        notes.append(f"node {node}: more shards than one answer carries; some not shown")
    return {
        (s.stream, s.shard_id): ShardTotals(
            s.stream,
            s.shard_id,
            node,
            s.is_open,
            s.start_offset,
            s.high_watermark,
            s.stored_bytes,
            s.incoming_records,
            s.incoming_bytes,
            s.outgoing_records,
            s.outgoing_bytes,
            s.write_throttled,
        )
        for s in stats.shards
    }


def _stream_info(description: Any) -> StreamInfo:
    reshard = description.reshard
    progress = None
    if reshard is not None:
        target = "" if reshard.target is None else f" to {reshard.target}"
        progress = f"{reshard.kind}{target}: {reshard.done}/{reshard.total}"
    open_count = sum(1 for s in description.shards if s.is_open)
    return StreamInfo(
        description.name,
        description.status,
        description.retention_hours,
        open_count,
        len(description.shards) - open_count,
        progress,
        {s.shard_id: (s.is_open, s.leader) for s in description.shards},
    )


def _group_info(stream: str, group: str, view: dict[str, Any]) -> GroupInfo:
    def lag(shard: dict[str, Any]) -> ShardLag:
        records, ms = shard.get("lag_records"), shard.get("lag_ms")
        return ShardLag(
            str(shard.get("shard_id")),
            records if isinstance(records, int) else None,
            ms if isinstance(ms, int) else None,
        )

    members = view.get("members")
    return GroupInfo(
        stream,
        group,
        str(view.get("state")),
        len(members) if isinstance(members, list) else None,
        tuple(lag(s) for s in view.get("shards", []) if isinstance(s, dict)),
    )
