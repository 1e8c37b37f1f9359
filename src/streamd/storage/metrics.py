"""Prometheus metrics of the storage layer (served with the server's, ``--metrics-listen``).

The fsync time is observed where the fdatasync runs (``Segment.sync``, in a shard's I/O thread:
prometheus_client is thread-safe), for the shard pipelines' commits and the replication
drivers' syncs alike; ``--fsync never`` syncs nothing and so observes nothing.
"""

from __future__ import annotations

from prometheus_client import Histogram

FSYNC_SECONDS = Histogram(
    "streamd_fsync_seconds",
    "One fdatasync of a segment file",
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0),
)
