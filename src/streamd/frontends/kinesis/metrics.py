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
# By protocol: "http/1.1", "h2c" (HTTP/2 with prior knowledge, cleartext), "h2" (over TLS).
PROTOCOL_CONNECTIONS = Gauge(
    "streamd_kinesis_protocol_connections",
    "Open Kinesis API connections by protocol (told apart by the first bytes)",
    ["protocol"],
)
PROTOCOL_CONNECTIONS_OPENED = Counter(
    "streamd_kinesis_protocol_connections_opened_total",
    "Kinesis API connections opened, by protocol",
    ["protocol"],
)
STREAMS = Counter(
    "streamd_kinesis_streams_total",
    "Request/answer exchanges by protocol (an HTTP/1.1 request, an HTTP/2 stream) and ending: "
    "answered, refused (a limit), timeout, reset (by the peer), abandoned (connection ended)",
    ["protocol", "ending"],
)
H2_OPEN_STREAMS = Gauge("streamd_kinesis_h2_open_streams", "HTTP/2 streams being served")
H2_GOAWAYS = Counter(
    "streamd_kinesis_h2_goaway_total",
    "GOAWAY frames the gateway sent, by reason (idle, protocol_error, shutdown, peer_closed)",
    ["reason"],
)
