"""Prometheus metrics of the replication driver and transport (one registry: the process's).

Per shard replica (labels ``stream``, ``shard``): its role (a state set: 1 for the current role,
0 for the others), high watermark, log end and durable end; the driver removes its series when
it stops, so a node's series follow the replicas it hosts. Commit latency is one histogram for
the node (a ``write`` from its call to its ``WriteDone``). Transport counters are per node.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ROLE = Gauge(
    "streamd_replica_role", "1 for the replica's current role, 0 for the others",
    ["stream", "shard", "role"],
)  # fmt: skip
HIGH_WATERMARK = Gauge(
    "streamd_replica_high_watermark", "Replica high watermark", ["stream", "shard"]
)
LOG_END = Gauge("streamd_replica_log_end", "Replica log end (written)", ["stream", "shard"])
DURABLE_END = Gauge(
    "streamd_replica_durable_end", "Replica durable end (synced)", ["stream", "shard"]
)
COMMIT_SECONDS = Histogram(
    "streamd_replica_commit_seconds",
    "Time from a leader's write() to its commit (a majority durable)",
    buckets=(0.00025, 0.0005, 0.001, 0.0015, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0, 5.0),
)
WRITES_FAILED = Counter(
    "streamd_replica_writes_failed_total", "Replicated writes refused or failed, by code", ["code"]
)
INBOX_DROPPED = Counter(
    "streamd_replica_inbox_dropped_total", "Replication messages dropped: a replica's inbox full"
)
SYNCS = Counter("streamd_replica_syncs_total", "fsyncs run by replication drivers")
MESSAGES_SENT = Counter(
    "streamd_replication_messages_sent_total", "Replication messages handed to the network"
)
MESSAGES_DROPPED = Counter(
    "streamd_replication_messages_dropped_total",
    "Replication messages dropped by the transport, by reason",
    ["reason"],
)
MESSAGES_RECEIVED = Counter(
    "streamd_replication_messages_received_total", "Replication messages delivered to a replica"
)
