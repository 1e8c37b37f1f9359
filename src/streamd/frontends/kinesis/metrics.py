"""Prometheus metrics of the Kinesis gateway (served with the server's, ``--metrics-listen``).

The operation label takes only names the gateway knows (others count as ``unknown``), and the
outcome label is ``ok`` or the Kinesis error name, so cardinality stays bounded whatever clients
send.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "streamd_kinesis_requests_total",
    "Kinesis API requests by operation and outcome (ok or the error name)",
    ["operation", "outcome"],
)
LATENCY = Histogram(
    "streamd_kinesis_request_seconds",
    "Kinesis API request time, body received to answer sent (streams: to the answer's head)",
    ["operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
)
CONNECTIONS = Gauge("streamd_kinesis_connections", "Open Kinesis API HTTP connections")
BAD_REQUESTS = Counter(
    "streamd_kinesis_http_errors_total",
    "HTTP-level rejections before an operation ran (malformed, too large, timeouts)",
    ["reason"],
)
