"""The cluster as ``streamd cluster status`` shows it: nodes, liveness, shards and leaders each.

``summarize`` is pure (registrations and assignments in, a ``ClusterStatus`` out) and
``render`` makes it a text table; ``read_status`` reads the keyspace once (each read bounded).
A node that shards still name but that has no registration is listed as not live: that is
exactly the node an operator looks for.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..meta.keys import (
    CLUSTER_ID_KEY,
    CONTROLLER_KEY,
    NODES_PREFIX,
    SHARDS_PREFIX,
    ClusterId,
    ControllerRecord,
    KeyFormatError,
    NodeRegistration,
    ShardAssignment,
)
from ..meta.store import MetaStore
from .membership import REQUEST_TIMEOUT_S_DEFAULT
from .tasks import bounded


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node_id: str
    live: bool
    native_address: str  # "" when not live (no registration to read it from)
    kinesis_address: str
    version: str
    replicas: int
    leaders: int
    controller: bool


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    cluster_id: str | None
    controller: str | None
    nodes: tuple[NodeStatus, ...]  # sorted by node id
    shards: int
    shards_unavailable: int
    shards_unassigned: int


def summarize(
    cluster_id: str | None,
    controller: str | None,
    registrations: list[NodeRegistration],
    shards: list[ShardAssignment],
) -> ClusterStatus:
    live = {r.node_id: r for r in registrations}
    replicas = Counter(n for s in shards for n in s.replicas)
    leaders = Counter(s.leader for s in shards if s.leader is not None)
    nodes = []
    for node_id in sorted(set(live) | set(replicas)):
        reg = live.get(node_id)
        nodes.append(
            NodeStatus(
                node_id,
                reg is not None,
                reg.native_address if reg else "",
                reg.kinesis_address if reg else "",
                reg.version if reg else "",
                replicas[node_id],
                leaders[node_id],
                node_id == controller,
            )
        )
    return ClusterStatus(
        cluster_id,
        controller,
        tuple(nodes),
        len(shards),
        sum(s.status == "unavailable" for s in shards),
        sum(s.status == "unassigned" for s in shards),
    )


def render(status: ClusterStatus) -> str:
    lines = [
        f"cluster {status.cluster_id or '(none yet)'}, controller {status.controller or '(none)'}",
        f"shards: {status.shards} ({status.shards_unavailable} unavailable, "
        f"{status.shards_unassigned} unassigned)",
        f"{'node':<20} {'live':<5} {'native':<22} {'kinesis':<22} {'shards':>6} {'leaders':>7}",
    ]
    for n in status.nodes:
        name = n.node_id + (" *" if n.controller else "")
        lines.append(
            f"{name:<20} {'yes' if n.live else 'NO':<5} {n.native_address:<22} "
            f"{n.kinesis_address:<22} {n.replicas:>6} {n.leaders:>7}"
        )
    return "\n".join(lines)


async def read_status(
    store: MetaStore, *, request_timeout_s: float = REQUEST_TIMEOUT_S_DEFAULT
) -> ClusterStatus:
    """Read the keyspace once. Raises MetadataUnavailableError; skips unreadable documents."""
    t = request_timeout_s
    cid_kv = await bounded("the cluster id read", t, store.get(CLUSTER_ID_KEY))
    ctl_kv = await bounded("the controller read", t, store.get(CONTROLLER_KEY))
    node_kvs = await bounded("the node list", t, store.range(NODES_PREFIX))
    shard_kvs = await bounded("the shard list", t, store.range(SHARDS_PREFIX))
    registrations, shards = [], []
    for kv in node_kvs:
        try:
            registrations.append(NodeRegistration.decode(kv.value))
        except (KeyFormatError, ValueError):
            continue
    for kv in shard_kvs:
        try:
            shards.append(ShardAssignment.decode(kv.value))
        except KeyFormatError:
            continue
    controller = None
    if ctl_kv is not None:
        try:
            controller = ControllerRecord.decode(ctl_kv.value).node_id
        except KeyFormatError:
            controller = "(unreadable)"
    cluster_id = ClusterId.decode(cid_kv.value).cluster_id if cid_kv else None
    return summarize(cluster_id, controller, registrations, shards)
