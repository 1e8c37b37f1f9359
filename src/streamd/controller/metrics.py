"""Prometheus metrics of the control plane (membership, election, the controller's loop)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

LEASE_RENEWALS = Counter(
    "streamd_node_lease_renewals_total",
    "Node lease keepalives by outcome (ok, unavailable, lapsed, lost)",
    ["outcome"],
)
NODE_LOST = Counter("streamd_node_lost_total", "Times this node declared its lease lost")
CONTROLLER_ELECTED = Counter(
    "streamd_controller_elected_total", "Times this node was elected the active controller"
)
CONTROLLER_ACTIVE = Gauge("streamd_controller_active", "1 while this node is the controller")
CONTROLLER_DECISIONS = Counter(
    "streamd_controller_decisions_total",
    "Controller writes by decision case and outcome (applied, stale)",
    ["case", "outcome"],
)
CONTROLLER_ROUNDS_CRASHED = Counter(
    "streamd_controller_rounds_crashed_total",
    "Controller rounds that ended in an unexpected error (a bug: logged as "
    "controller.round_crashed with its traceback; the round is tried again)",
)
CLUSTER_NODES_LIVE = Gauge("streamd_cluster_nodes_live", "Live nodes the controller sees")
SHARDS_UNAVAILABLE = Gauge(
    "streamd_cluster_shards_unavailable", "Shards with no live replica, as the controller sees"
)
SHARDS_UNDER_REPLICATED = Gauge(
    "streamd_cluster_shards_under_replicated",
    "Placed shards with a live replica but fewer live replicas than their replication factor, "
    "as the controller sees (valid where streamd_controller_active is 1)",
)
NODES_DOWN = Gauge(
    "streamd_cluster_nodes_down",
    "Nodes that hold a shard replica but have no live registration, as the controller sees",
)
