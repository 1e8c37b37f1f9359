"""The gateway's HTTP limits, shared by its HTTP/1.1 (``http.py``) and HTTP/2 (``http2.py``)
connections: one set of bounds and timeouts whatever the protocol, plus HTTP/2's own (streams
per connection, flow-control windows, the hpack bound)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HttpLimits:
    header_bytes_max: int = 16 * 1024
    # Any body, whatever its operation: past it, a bare 413 (as Kinesis' front end answers).
    # Each operation's own bound is lower (body_limits.py: PutRecords in JSON, 13.8 MiB, is the
    # largest: 10 MiB of records for a stream of large records) and answers the error Kinesis
    # gives for that operation.
    body_bytes_max: int = 16 * 1024 * 1024
    # All connections together: bodies larger than body_reserve_min_bytes reserve their size
    # here before they are read, and wait at most body_wait_timeout_s for room (then 503).
    bodies_in_flight_bytes_max: int = 64 * 1024 * 1024
    body_reserve_min_bytes: int = 64 * 1024
    body_wait_timeout_s: float = 5.0
    refusal_linger_s: float = 5.0  # reading (and dropping) a refused body, so the answer lands
    idle_timeout_s: float = 120.0  # keep-alive: longer than the SDKs' pool idle times
    first_request_timeout_s: float = 10.0  # a new connection's first byte (as a native hello)
    read_timeout_s: float = 30.0  # from a request's first byte to its last
    send_timeout_s: float = 30.0
    operation_timeout_s: float = 60.0
    # HTTP/2 only (h2_wire.py): concurrent streams per connection (SETTINGS_MAX_CONCURRENT_
    # STREAMS), the receive windows we grant (per stream, and the connection's, raised from the
    # RFC's 65,535 at the start), and hpack's hard bound on a decoded header block (RFC 7541
    # count: past it the connection gets GOAWAY; past header_bytes_max only the stream gets 400).
    h2_streams_max: int = 100
    h2_stream_window_bytes: int = 1024 * 1024
    h2_connection_window_bytes: int = 4 * 1024 * 1024
    h2_header_list_bytes_max: int = 64 * 1024
    # While a streamed answer (SubscribeToShard) waits for the socket: the next event is taken
    # from its iterator only when less than this is being written.
    h2_write_backlog_bytes_max: int = 1024 * 1024
