"""Prometheus metrics for the server, served over HTTP when ``--metrics-listen`` is given.

Updated per batch, per group commit and per request, never per record, so that counting costs
nothing measurable on the hot path. Names follow Prometheus conventions (unit suffixes).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

RECORDS_APPENDED = Counter(
    "streamd_records_appended_total", "Records committed to shard logs", ["stream"]
)
BYTES_APPENDED = Counter("streamd_batch_bytes_appended_total", "Batch bytes committed", ["stream"])
RECORDS_READ = Counter(
    "streamd_records_read_total", "Records returned to readers (native and Kinesis)", ["stream"]
)
BYTES_READ = Counter(
    "streamd_read_bytes_total", "Stored batch bytes returned to readers", ["stream"]
)
GROUP_COMMITS = Counter("streamd_group_commits_total", "Group commits (one fsync each)", ["stream"])
COMMIT_SECONDS = Histogram(
    "streamd_commit_seconds",
    "One group commit: encode + write, then the local fsync beside replication, to both votes",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0),
)
WRITES_REJECTED = Counter(
    "streamd_writes_rejected_total", "Writes refused before the log (by error code)", ["code"]
)
REQUESTS = Counter("streamd_requests_total", "Native protocol requests", ["op", "code"])
REQUEST_SECONDS = Histogram(
    "streamd_request_seconds",
    "Native request time, decoded to answered (a long-poll read includes its wait)",
    ["op"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0, 5.0),
)
CONNECTIONS = Gauge("streamd_connections", "Open client connections")
CONNECTIONS_REFUSED = Counter(
    "streamd_connections_refused_total",
    "Connections refused at accept, by listener (native, kinesis) and the bound that refused",
    ["listener", "reason"],
)
CONNECTIONS_IDLE_CLOSED = Counter(
    "streamd_connections_idle_closed_total",
    "Connections closed by the server for idling (after the handshake or before it)",
    ["listener", "phase"],
)
ACCEPT_ERRORS = Counter(
    "streamd_accept_errors_total",
    "accept() failures for lack of resources (EMFILE, ENFILE, ...), each followed by a backoff",
    ["listener", "errno"],
)
RECOVERY_TRUNCATED_BYTES = Counter(
    "streamd_recovery_truncated_bytes_total", "Bytes cut from torn tails at start"
)
RESHARD_STEPS = Counter(
    "streamd_reshard_steps_total", "Splits and merges applied (resize steps included)", ["kind"]
)
RESHARD_SECONDS = Histogram(
    "streamd_reshard_step_seconds",
    "Time from sealing the parent shards to the new shard map being live",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
)
SHARDS = Gauge("streamd_shards", "Shards this node holds (open, or closed and readable)")
SEGMENT_FDS = Gauge("streamd_segment_fds", "Segment files open now (bounded by the fd cache)")
IO_THREADS = Gauge("streamd_io_threads", "Shard I/O pool threads alive now")
CORRUPT_RANGES = Gauge("streamd_corrupt_ranges", "Stored batch ranges failing their CRC")
CORRUPT_READS = Counter(
    "streamd_corrupt_reads_total",
    "Reads refused with DATA_CORRUPT (a damaged stored range)",
    ["stream"],
)
QUARANTINED_RANGES = Counter(
    "streamd_quarantined_ranges_total", "Damaged ranges moved aside by quarantine-range", ["stream"]
)
QUARANTINED_RECORDS = Counter(
    "streamd_quarantined_records_total",
    "Records in ranges moved aside by quarantine-range",
    ["stream"],
)

ETCD_REQUESTS = Counter(
    "streamd_etcd_requests_total",
    "etcd gateway calls by path and outcome (ok, unavailable, lease_not_found, compacted, "
    "refused, protocol)",
    ["path", "outcome"],
)
ETCD_WATCH_REOPENS = Counter(
    "streamd_etcd_watch_reopens_total", "etcd watch streams reopened (dropped, failed or silent)"
)

# Throughput quotas (throttle.py) and on-demand scaling (scaler.py), per shard.
THROTTLED_RECORDS = Counter(
    "streamd_throttled_records_total",
    "Records refused with THROTTLED for the shard's write quota",
    ["stream", "shard_id"],
)
THROTTLED_BYTES = Counter(
    "streamd_throttled_bytes_total",
    "Bytes (data + partition key) of records refused for the shard's write quota",
    ["stream", "shard_id"],
)
THROTTLED_READS = Counter(
    "streamd_throttled_reads_total",
    "Polling reads (GetRecords, native read) refused for the shard's read quota",
    ["stream", "shard_id"],
)
ON_DEMAND_DECISIONS = Counter(
    "streamd_on_demand_decisions_total",
    "Splits and merges the on-demand scaler decided (outcome: done, failed)",
    ["stream", "action", "outcome"],
)
ON_DEMAND_SHARD_LOAD = Gauge(
    "streamd_on_demand_shard_load_ratio",
    "An on-demand stream's open shard's measured write load over its write quota (1: at it)",
    ["stream", "shard_id"],
)


DATA_DIR_FREE = Gauge(
    "streamd_data_dir_free_bytes",
    "Bytes free to this process on the data directory's file system (read at each scrape)",
)
DATA_DIR_SIZE = Gauge(
    "streamd_data_dir_size_bytes", "Size of the data directory's file system (read at each scrape)"
)


def watch_data_dir(data_dir: Path) -> None:
    """Report the data directory's file system through the two gauges above, read at each
    scrape (statvfs: no I/O on the data). NaN when it cannot be read, rather than a failed
    scrape: a missing value says more than an old one."""

    def usage(field: str) -> float:
        try:
            return float(getattr(shutil.disk_usage(data_dir), field))
        except OSError:
            return float("nan")

    DATA_DIR_FREE.set_function(lambda: usage("free"))
    DATA_DIR_SIZE.set_function(lambda: usage("total"))


__all__ = ["REGISTRY"]  # node.py registers the per-shard collector (monitoring.py) in it


def serve_metrics(host: str, port: int) -> None:
    """Start the /metrics HTTP endpoint in a daemon thread (prometheus_client's own server)."""
    start_http_server(port, addr=host)
