"""Typed errors with stable codes; the same codes cross the wire.

Two families, as in trio and TigerBeetle:

* ``StreamdError`` subclasses are *expected conditions* a caller handles (bad input, unknown
  stream, throttling). Each has a stable ``code`` string that the server sends on the wire and the
  client maps back onto the same class (``error_from_wire``). ``retryable`` says whether sending
  the same request again may succeed.
* ``ProtocolError`` is the only exception the sans-I/O codecs raise for any input.

Codes are part of the protocol: never rename one, only add.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .summary import summary


class StreamdError(Exception):
    """Base of every streamd error. ``code`` is stable and travels on the wire."""

    code: ClassVar[str] = "INTERNAL"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.details = details

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InternalError(StreamdError):
    """The server hit a bug or an unexpected condition; the request may or may not have applied."""

    code = "INTERNAL"


class InvalidArgumentError(StreamdError):
    """A request argument is malformed or out of range. Nothing was stored."""

    code = "INVALID_ARGUMENT"


class RecordTooLargeError(InvalidArgumentError):
    """A record's data is larger than ``record_data_bytes_max`` (1 MiB)."""

    code = "RECORD_TOO_LARGE"


class InvalidAggregateError(InvalidArgumentError):
    """A record that claims to be a KPL aggregate (kpl.py) is malformed: bad MD5, truncated, a
    wrong protobuf wire type, an index past its table. Raised on the client side only."""

    code = "INVALID_AGGREGATE"


class RequestTooLargeError(InvalidArgumentError):
    """A PutRecords request or batch exceeds its record count or byte limit."""

    code = "REQUEST_TOO_LARGE"


class InvalidPartitionKeyError(InvalidArgumentError):
    """A partition key is empty or longer than 256 Unicode characters."""

    code = "INVALID_PARTITION_KEY"


class InvalidHashKeyError(InvalidArgumentError):
    """An explicit hash key is not a decimal integer in 0..2**128-1."""

    code = "INVALID_HASH_KEY"


class InvalidStreamNameError(InvalidArgumentError):
    """A stream name does not match ``[a-zA-Z0-9_.-]{1,128}``."""

    code = "INVALID_STREAM_NAME"


class InvalidSequenceNumberError(InvalidArgumentError):
    """A sequence number is malformed, belongs to another shard, or lies beyond the shard's tip."""

    code = "INVALID_SEQUENCE_NUMBER"


class InvalidBatchError(InvalidArgumentError):
    """A client-built batch failed validation (CRC, header, records, routing). Nothing stored."""

    code = "INVALID_BATCH"


class StreamNotFoundError(StreamdError):
    """The named stream does not exist (or is being deleted)."""

    code = "STREAM_NOT_FOUND"


class StreamExistsError(StreamdError):
    """A stream with that name already exists."""

    code = "STREAM_EXISTS"


class ShardNotFoundError(StreamdError):
    """The stream has no shard with that id."""

    code = "SHARD_NOT_FOUND"


class WrongShardError(StreamdError):
    """A batch's records do not belong to the shard it was sent to; refresh the shard map."""

    code = "WRONG_SHARD"


class ShardClosedError(StreamdError):
    """The shard no longer accepts writes (resharding); refresh the shard map and re-route."""

    code = "SHARD_CLOSED"
    retryable = True


class ResourceInUseError(StreamdError):
    """The stream is busy with another change (a reshard runs: status UPDATING); try later."""

    code = "RESOURCE_IN_USE"


class ThrottledError(StreamdError):
    """The shard is over its throughput quota, or its bounded write queue is full; back off and
    retry. Nothing of the refused request was stored (a PutRecords answers it per record).

    A quota refusal's details: ``shard_id``, ``quota`` (write_bytes, write_records, read_calls,
    read_bytes) and ``retry_after_ms``, when the same request would pass if nothing else came
    first (``retry_after_s``); the Producer and the readers wait that long. A full queue has
    no hint: back off as after any retryable error.
    """

    code = "THROTTLED"
    retryable = True
    RETRY_AFTER_MS_MAX: ClassVar[int] = 600_000  # a larger hint is not believed

    @property
    def retry_after_s(self) -> float | None:
        """The server's hint in seconds, None without a (sane) one."""
        hint = self.details.get("retry_after_ms")
        if isinstance(hint, bool) or not isinstance(hint, int):
            return None
        return hint / 1000 if 0 < hint <= self.RETRY_AFTER_MS_MAX else None


class NotLeaderError(StreamdError):
    """This replica does not lead the shard (any more): send the request to the current leader.

    A write that got this may still have committed (its leader was deposed while it waited):
    an idempotent producer retries it with the same sequence number and gets the original offset.
    """

    code = "NOT_LEADER"
    retryable = True


class ShardUnavailableError(StreamdError):
    """No live node holds the shard right now (cluster mode: its node is down); retry later.

    Details: ``stream``, ``shard_id``. Nothing else is affected: other shards keep serving.
    """

    code = "SHARD_UNAVAILABLE"
    retryable = True


class CoordinatorUnavailableError(StreamdError):
    """Cluster mode: the consumer group's coordinator is not reachable right now: the group is
    new and not placed yet, its node is down and the controller has not moved it yet, or the
    placement moved while the request was on its way. Retry (the group worker does).

    Details: ``stream``, ``group``, and ``node`` (the coordinator's node id) when known.
    """

    code = "COORDINATOR_UNAVAILABLE"
    retryable = True


class OutOfOrderSequenceError(StreamdError):
    """An idempotent producer's batch skipped a sequence number for this shard."""

    code = "OUT_OF_ORDER_SEQUENCE"


class LimitExceededError(StreamdError):
    """An account-style limit was reached (streams, shards, connections, requests in flight)."""

    code = "LIMIT_EXCEEDED"
    retryable = True


class StorageFullError(StreamdError):
    """The server's disk is full; the write was not stored. Retry after space is freed."""

    code = "STORAGE_FULL"
    retryable = True


class CorruptDataError(StreamdError):
    """Stored data failed its CRC check; it is reported, never served."""

    code = "CORRUPT_DATA"


class DataCorruptError(CorruptDataError):
    """A read reached a range of a shard's log that is damaged on the server's disk.

    ``details`` name it: ``stream``, ``shard_id``, ``from_sequence`` and ``to_sequence`` (the
    first and last sequence number of the damaged range, both included) and ``base_offset`` /
    ``next_offset`` (the same range as offsets, end excluded). Records before and after it are
    intact and readable; an operator moves the range aside with ``streamd admin
    quarantine-range`` (docs/operations.md), after which reads skip it with a visible gap.
    Not retryable: the same read fails the same way until then. (CORRUPT_DATA, its parent,
    is bytes failing a check anywhere, e.g. on the client side after a transfer.)
    """

    code = "DATA_CORRUPT"


class ProtocolError(StreamdError):
    """The peer sent bytes that are not a valid frame or message. The connection is closed."""

    code = "PROTOCOL_ERROR"


class UnsupportedVersionError(ProtocolError):
    """Client and server share no protocol version."""

    code = "UNSUPPORTED_VERSION"


class UnknownOperationError(InvalidArgumentError):
    """The server does not know the requested operation."""

    code = "UNKNOWN_OPERATION"


class ConnectionLostError(StreamdError):
    """The connection broke before an answer arrived; the request may or may not have applied."""

    code = "CONNECTION_LOST"
    retryable = True


class RequestTimeoutError(StreamdError):
    """No answer within the request timeout; the request may or may not have applied."""

    code = "TIMEOUT"
    retryable = True


class MetadataUnavailableError(StreamdError):
    """The metadata store (etcd in cluster mode) could not be reached or did not answer in time.

    A write may or may not have applied: callers that compare-and-swap re-read and retry.
    """

    code = "METADATA_UNAVAILABLE"
    retryable = True


class ShuttingDownError(StreamdError):
    """The server is shutting down and takes no new work."""

    code = "SHUTTING_DOWN"
    retryable = True


class TlsRequiredError(ProtocolError):
    """The server's listener speaks TLS and the client sent plaintext (connect with
    ``tls://HOST:PORT``)."""

    code = "TLS_REQUIRED"


class TlsHandshakeError(StreamdError):
    """The TLS handshake failed: the server's certificate is not trusted (wrong CA, expired,
    another name), the server refused ours, or the peer does not speak TLS. Retrying the same
    connection cannot fix it."""

    code = "TLS_HANDSHAKE_FAILED"


class UnauthenticatedError(StreamdError):
    """The connection has not proven who it is (no, wrong or replayed credentials): the server
    answers this once and closes the connection. Never names the secret."""

    code = "UNAUTHENTICATED"


class AccessDeniedError(StreamdError):
    """The authenticated principal's policy does not allow this action on this resource;
    nothing was changed. ``details``: action, resource."""

    code = "ACCESS_DENIED"


def _all_subclasses(cls: type[StreamdError]) -> list[type[StreamdError]]:
    found: list[type[StreamdError]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


ERRORS_BY_CODE: dict[str, type[StreamdError]] = {
    cls.code: cls for cls in _all_subclasses(StreamdError)
}


def error_from_wire(body: Any) -> StreamdError:
    """Map an error body received on the wire onto its typed exception.

    Unknown codes (a newer server) become ``StreamdError`` with the code kept in ``details``.
    """
    if not isinstance(body, dict):
        return ProtocolError(f"malformed error body: {summary(body, 200)}")
    code = body.get("code")
    message = body.get("message")
    details = body.get("details") or {}
    if not isinstance(code, str) or not isinstance(message, str) or not isinstance(details, dict):
        return ProtocolError(f"malformed error body: {summary(body, 200)}")
    cls = ERRORS_BY_CODE.get(code)
    if cls is None:
        err = StreamdError(message, wire_code=code, **details)
        return err
    return cls(message, **details)
