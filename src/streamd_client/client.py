"""The async client: admin calls, simple puts and reads, and the factories for producers/readers.

``connect()`` opens a task group that hosts the connections' tasks (and nothing else), so the
client is structured: leaving ``async with connect(...)`` closes the connections and ends every
task it started. The client holds one multiplexed *bootstrap* connection, shared by all tasks
that use the client, to the first address of the bootstrap list (``"h1:7070,h2:7070"``) that
answers. When it breaks, the calls in flight fail with ``ConnectionLostError`` and the *next*
call opens a new one, trying the list from the address after the one that broke (lazily: a
client that is not used does not reconnect in a loop). Retrying such a call is the caller's
choice, except in the Producer and ShardReader, which retry on their own.

Per-shard requests (``append_batch``, ``read``, and so the Producer, the readers and the group
workers) go through the router (router.py): to the shard's leader in cluster mode, with
redirects and bounded retries inside the request timeout; to the bootstrap connection, one
round trip, when the server names no leaders (the embedded default). Everything else goes to
the bootstrap connection.

Arguments are validated here with the shared checks of ``model`` before anything is sent, so bad
input raises at once, with the same typed error the server would answer.

Every call may raise, besides what its docstring lists, the transport errors:
``ConnectionLostError`` and ``RequestTimeoutError`` (retryable: the request may or may not have
applied), ``ProtocolError`` (the answer did not match the protocol), ``ShuttingDownError``,
``LimitExceededError`` and ``InternalError``; and ``anyio.ClosedResourceError`` once the client
is closed.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio
import anyio.abc

from . import model, wire
from ._tasks import background_task_group
from .auth import Credentials
from .client_api import READ_BYTES_MAX_DEFAULT
from .connection import (
    REQUESTS_IN_FLIGHT_MAX_DEFAULT,
    Connection,
    open_connection,
    parse_bootstrap,
)
from .consumer import ShardReader, decode_read
from .errors import (
    ConnectionLostError,
    InvalidArgumentError,
    ProtocolError,
    RequestTimeoutError,
    RequestTooLargeError,
    StreamdError,
    StreamNotFoundError,
)
from .model import Position
from .pool import ConnectionPool
from .producer import Producer
from .results import (
    AppendResult,
    PutRecordsInput,
    PutRecordsResult,
    PutResult,
    ReadResult,
    StreamDescription,
    append_from_wire,
    field,
    put_records_from_wire,
    raw_read_from_wire,
    stream_from_wire,
)
from .router import Router, ShardKey
from .security import PathArg, Security, security_for
from .stream_reader import StreamReader

CONNECT_TIMEOUT_S_DEFAULT: Final = 5.0
REQUEST_TIMEOUT_S_DEFAULT: Final = 30.0
ACTIVE_POLL_INTERVAL_S_DEFAULT: Final = 0.2
# wait_for_active: how long STREAM_NOT_FOUND counts as "not there yet" (a cluster catalog mirror).
NOT_FOUND_GRACE_S: Final = 2.0

# Resharding operations (docs/protocol.md); named here as group_admin names the group ops.
OP_SPLIT_SHARD: Final = "split_shard"
OP_MERGE_SHARDS: Final = "merge_shards"
OP_RESIZE_STREAM: Final = "resize_stream"

ProgressCallback = Callable[[StreamDescription], object]


@asynccontextmanager
async def connect(
    endpoint: str,
    *,
    connect_timeout_s: float = CONNECT_TIMEOUT_S_DEFAULT,
    request_timeout_s: float = REQUEST_TIMEOUT_S_DEFAULT,
    requests_in_flight_max: int = REQUESTS_IN_FLIGHT_MAX_DEFAULT,
    ca: PathArg | None = None,
    cert: PathArg | None = None,
    key: PathArg | None = None,
    tls: ssl.SSLContext | None = None,
    credentials: Credentials | tuple[str, str] | None = None,
) -> AsyncIterator[Client]:
    """Connect to ``"host:port"`` or a bootstrap list ``"h1:7070,h2:7070"`` and yield a
    Client; its connections close on exit.

    ``"tls://host:port[,...]"`` connects with TLS, verifying the server's certificate against
    ``ca`` (PEM; the system's trust store when None) and its name against the host;
    ``cert``/``key`` present a client certificate (mutual TLS); ``tls`` takes a ready
    ``ssl.SSLContext`` instead. ``credentials`` (access key id, secret) sign in to a server
    that requires it (docs/protocol.md, "Authentication"); the secret never crosses the wire.

    Connects eagerly, so a wrong endpoint fails here: each address of the list in turn, each
    within ``connect_timeout_s``, until one answers. With one address, its error is raised as
    is; with several, the first one that retrying cannot fix (a ProtocolError: say, an HTTP
    port), else a ConnectionLostError naming every address and why it failed.
    Raises: InvalidArgumentError (endpoint), ConnectionLostError (cannot connect),
    RequestTimeoutError, UnsupportedVersionError, ProtocolError, TlsHandshakeError,
    TlsRequiredError, UnauthenticatedError (at the first call, when the server requires
    credentials and none or wrong ones were given).
    """
    addresses, security = security_for(
        endpoint, ca=ca, cert=cert, key=key, tls=tls, credentials=credentials
    )
    async with background_task_group() as task_group:
        client = Client(
            addresses,
            task_group,
            connect_timeout_s=connect_timeout_s,
            request_timeout_s=request_timeout_s,
            requests_in_flight_max=requests_in_flight_max,
            security=security,
        )
        try:
            await client.connection()
            yield client
        finally:
            await client.aclose()


class Client:
    """A streamd client; get one from ``connect()``. Safe to share between tasks."""

    def __init__(
        self,
        endpoint: str,
        task_group: anyio.abc.TaskGroup,
        *,
        connect_timeout_s: float,
        request_timeout_s: float,
        requests_in_flight_max: int,
        security: Security | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.endpoints = parse_bootstrap(endpoint)  # the bootstrap list, in order
        self.security = security or Security()
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self.requests_in_flight_max = requests_in_flight_max
        self._task_group = task_group
        self._connection: Connection | None = None
        self._endpoint_index = 0  # the bootstrap address of _connection (or to try first)
        self._connect_lock = anyio.Lock()
        self._closed = False
        self.router = Router(
            bootstrap=self.connection,
            live_bootstrap=self._live_connection,
            refresh=self.describe_stream,
            pool=ConnectionPool(
                task_group,
                connect_timeout_s=connect_timeout_s,
                request_timeout_s=request_timeout_s,
                requests_in_flight_max=requests_in_flight_max,
                security=self.security,
            ),
        )

    @property
    def leader_cache(self) -> Mapping[ShardKey, str]:
        """Read-only: (stream, shard_id) -> the leader's native "host:port", as learned from
        describe_stream and NOT_LEADER answers (empty against an embedded server)."""
        return self.router.leader_cache

    async def aclose(self) -> None:
        """Close the connections; calls in flight fail with ConnectionLostError."""
        self._closed = True
        try:
            await self.router.aclose()
        finally:
            if self._connection is not None:
                await self._connection.aclose()

    def _live_connection(self) -> Connection | None:
        current = self._connection
        if current is None or current.is_broken or self._closed:
            return None
        return current

    async def connection(self) -> Connection:
        """The live connection, opening a new one if there is none or it broke.

        Raises: ConnectionLostError, RequestTimeoutError, UnsupportedVersionError, ProtocolError,
        anyio.ClosedResourceError (the client is closed).
        """
        current = self._connection
        if current is not None and not current.is_broken and not self._closed:
            return current
        try:
            # Waiting for the lock is bounded by the holder's own connect timeouts.
            with anyio.fail_after((len(self.endpoints) + 1) * self.connect_timeout_s):
                async with self._connect_lock:
                    return await self._reconnect()
        except TimeoutError:
            raise ConnectionLostError(f"no connection to {self.endpoint} in time") from None

    async def _reconnect(self) -> Connection:
        if self._closed:
            raise anyio.ClosedResourceError("the client is closed")
        current = self._connection
        if current is not None and not current.is_broken:
            return current  # another task reconnected while we waited for the lock
        count = len(self.endpoints)
        # After a break, start at the next address: the one that broke is likely down.
        start = self._endpoint_index + (current is not None)
        failures: list[tuple[str, StreamdError]] = []
        for step in range(count):
            index = (start + step) % count
            try:
                connection = await open_connection(
                    self._task_group,
                    self.endpoints[index],
                    connect_timeout_s=self.connect_timeout_s,
                    request_timeout_s=self.request_timeout_s,
                    requests_in_flight_max=self.requests_in_flight_max,
                    security=self.security,
                )
            except StreamdError as exc:
                if count == 1:
                    raise
                failures.append((self.endpoints[index], exc))
                continue
            self._connection, self._endpoint_index = connection, index
            return connection
        raise _no_bootstrap_answered(failures)

    async def call(
        self, op: str, args: dict[str, Any], *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Send one raw request (docs/protocol.md) and return its result map.

        Raises: the typed error the server answered with, or a transport error (module doc).
        """
        connection = await self.connection()
        return await connection.request(op, args, timeout_s=timeout_s)

    # -- admin ---------------------------------------------------------------------------------

    async def create_stream(
        self,
        name: str,
        shard_count: int,
        retention_hours: int = model.RETENTION_HOURS_DEFAULT,
        *,
        replication_factor: int | None = None,
        mode: str | None = None,
        quotas: Mapping[str, int | str] | None = None,
    ) -> None:
        """Create a stream with ``shard_count`` shards of even hash-key ranges.

        ``replication_factor``: replicas per shard (a cluster; default the server's).
        ``mode``: "PROVISIONED" (the default) or "ON_DEMAND" (the server splits and merges its
        shards from their measured write load; docs/operations.md). ``quotas``: this stream's
        per-shard throughput figures over the server's, e.g. ``{"write_bytes_per_s": 65536}``
        (keys write_bytes_per_s, write_records_per_s, read_bytes_per_s, read_calls_per_s,
        fanout_bytes_per_s; a value is a positive int or "unlimited"); stored as the stream's
        ``streamd:quota:*`` tags.

        Raises: StreamExistsError, InvalidStreamNameError, InvalidArgumentError (shard count,
        retention, replication factor, mode, quotas), LimitExceededError.
        """
        args: dict[str, Any] = {
            "stream": model.check_stream_name(name),
            "shard_count": model.check_shard_count(shard_count),
            "retention_hours": model.check_retention_hours(retention_hours),
        }
        if replication_factor is not None:
            args["replication_factor"] = replication_factor
        if mode is not None:
            args["mode"] = mode
        if quotas:
            args["quotas"] = dict(quotas)
        await self.call(wire.OP_CREATE_STREAM, args)

    async def delete_stream(self, name: str) -> None:
        """Delete a stream and its records. Raises: StreamNotFoundError, InvalidStreamNameError."""
        await self.call(wire.OP_DELETE_STREAM, {"stream": model.check_stream_name(name)})

    async def list_streams(self) -> list[str]:
        """The names of all streams, sorted. Raises: only transport errors (module doc)."""
        answer = await self.call(wire.OP_LIST_STREAMS, {})
        names = field(answer, "streams", list)
        return [str(name) for name in names]

    async def describe_stream(self, name: str) -> StreamDescription:
        """The stream's status, retention and shards (closed ones included).

        Raises: StreamNotFoundError, InvalidStreamNameError.
        """
        answer = await self.call(wire.OP_DESCRIBE_STREAM, {"stream": model.check_stream_name(name)})
        description = stream_from_wire(answer.get("stream"))
        self.router.learn(description)  # cluster nodes name each shard's leader
        return description

    async def update_retention(self, name: str, hours: int) -> None:
        """Change how long records are kept.

        Raises: StreamNotFoundError, InvalidStreamNameError, InvalidArgumentError (hours).
        """
        args = {
            "stream": model.check_stream_name(name),
            "retention_hours": model.check_retention_hours(hours),
        }
        await self.call(wire.OP_UPDATE_RETENTION, args)

    async def set_encryption(self, name: str, key_id: str | None) -> None:
        """Seal the stream's new batches at rest with a server keyring key (alias, key id or
        ARN), or with ``None`` store new ones as plaintext again; stored batches stay readable.

        Raises: StreamNotFoundError, InvalidStreamNameError, InvalidArgumentError (no keyring
        on the server, an unknown key).
        """
        args = {"stream": model.check_stream_name(name), "key_id": key_id}
        await self.call(wire.OP_SET_ENCRYPTION, args)

    # -- resharding ----------------------------------------------------------------------------

    async def split_shard(
        self, stream: str, shard_id: str, hash_key: int | str | None = None
    ) -> list[str]:
        """Close an open shard and open two children: ``[left, right]``, where the right one
        starts at ``hash_key`` (default: the middle of the parent's range). Returns when done.

        Raises: InvalidArgumentError (the shard is closed, or the key is not inside its range),
        ResourceInUseError (another reshard of the stream is running), ShardNotFoundError,
        StreamNotFoundError, InvalidHashKeyError, InvalidStreamNameError.
        """
        model.shard_index_of(shard_id)
        args: dict[str, Any] = {"stream": model.check_stream_name(stream), "shard_id": shard_id}
        if hash_key is not None:
            args["hash_key"] = str(model.parse_explicit_hash_key(hash_key))
        answer = await self.call(OP_SPLIT_SHARD, args)
        children = [str(c) for c in field(answer, "shard_ids", list)]
        if len(children) != 2:
            raise ProtocolError(f"split_shard answered {len(children)} children, not 2")
        return children

    async def merge_shards(self, stream: str, shard_id: str, adjacent_shard_id: str) -> str:
        """Close two open shards with adjacent ranges and open one child covering both (either
        order). Returns the child's id when done.

        Raises: InvalidArgumentError (closed or non-adjacent shards), ResourceInUseError,
        ShardNotFoundError, StreamNotFoundError, InvalidStreamNameError.
        """
        model.shard_index_of(shard_id)
        model.shard_index_of(adjacent_shard_id)
        args = {
            "stream": model.check_stream_name(stream),
            "shard_id": shard_id,
            "adjacent_shard_id": adjacent_shard_id,
        }
        return field(await self.call(OP_MERGE_SHARDS, args), "shard_id", str)

    async def resize_stream(self, stream: str, shard_count: int) -> int:
        """Start resizing to ``shard_count`` open shards of near-equal ranges (uniform scaling,
        at most double or half the current count). Returns the number of splits and merges
        the server runs in the background; ``wait_for_active`` waits for them.

        Raises: InvalidArgumentError (count out of bounds), ResourceInUseError,
        StreamNotFoundError, InvalidStreamNameError.
        """
        args = {
            "stream": model.check_stream_name(stream),
            "shard_count": model.check_shard_count(shard_count),
        }
        operations = field(await self.call(OP_RESIZE_STREAM, args), "operations", int)
        if operations < 0:
            raise ProtocolError(f"resize_stream answered {operations} operations")
        return operations

    async def wait_for_active(
        self,
        stream: str,
        timeout_s: float,
        *,
        on_progress: ProgressCallback | None = None,
        poll_interval_s: float = ACTIVE_POLL_INTERVAL_S_DEFAULT,
    ) -> StreamDescription:
        """Poll ``describe_stream`` until the stream is ACTIVE (no reshard running); returns
        that description. ``on_progress`` is called with each description whose status or
        progress differs from the previous one (the last, ACTIVE one included).

        Retryable errors in between (a lost connection: a restarted server resumes the
        reshard) are retried until the deadline, and STREAM_NOT_FOUND for the first
        ``NOT_FOUND_GRACE_S`` (in a cluster, a stream just created through another node reaches
        this node's copy of the catalog a moment later).
        Raises: RequestTimeoutError (not ACTIVE within ``timeout_s``), StreamNotFoundError.
        """
        last: tuple[object, ...] | None = None
        not_found_until = anyio.current_time() + NOT_FOUND_GRACE_S
        with anyio.move_on_after(timeout_s):
            while True:
                try:
                    description = await self.describe_stream(stream)
                except StreamdError as exc:
                    young = anyio.current_time() < not_found_until
                    if not (exc.retryable or (young and isinstance(exc, StreamNotFoundError))):
                        raise
                    await anyio.sleep(poll_interval_s)
                    continue
                seen = (description.status, description.reshard, len(description.open_shards))
                if on_progress is not None and seen != last:
                    on_progress(description)
                last = seen
                if description.status == "ACTIVE":
                    return description
                await anyio.sleep(poll_interval_s)
        raise RequestTimeoutError(f"stream {stream!r} not ACTIVE within {timeout_s} s")

    # -- writes --------------------------------------------------------------------------------

    async def put_record(
        self,
        stream: str,
        data: bytes,
        partition_key: str,
        explicit_hash_key: int | str | None = None,
    ) -> PutResult:
        """Store one record (at least once: a retry after a lost answer may store it twice).

        Raises: the record's typed error (RecordTooLargeError, InvalidPartitionKeyError,
        InvalidHashKeyError, ThrottledError, ...), StreamNotFoundError, InvalidStreamNameError.
        """
        answer = await self.put_records(stream, [(data, partition_key, explicit_hash_key)])
        (result,) = answer.results
        if isinstance(result, PutResult):
            return result
        raise result.to_error()

    async def put_records(
        self,
        stream: str,
        entries: Sequence[PutRecordsInput],
    ) -> PutRecordsResult:
        """Store up to 500 records; each one succeeds or fails on its own (as Kinesis does).

        Raises: RequestTooLargeError (over 500 records, or over 5 MiB: 10 MiB on a stream of
        large records), RecordTooLargeError (over the stream's max record size, 1 MiB unless
        UpdateMaxRecordSize raised it),
        InvalidPartitionKeyError, InvalidHashKeyError, InvalidArgumentError (an entry's shape),
        StreamNotFoundError, InvalidStreamNameError. Per-record failures are RecordFailure items.
        """
        records = [_record_to_wire(entry) for entry in entries]
        _check_put_records_size(records)
        args = {"stream": model.check_stream_name(stream), "records": records}
        answer = await self.call(wire.OP_PUT_RECORDS, args)
        return put_records_from_wire(answer, len(records))

    async def append_batch(self, stream: str, shard_id: str, batch: bytes) -> AppendResult:
        """Append one client-built batch (storage format) to a shard; the Producer's fast path.

        Sent to the shard's leader (router.py): NOT_LEADER, SHARD_UNAVAILABLE and a lost
        leader connection are retried within the request timeout, with the same bytes, which
        the server's producer-sequence dedup makes safe for a batch with a producer id (one
        without may then be stored twice, as after any lost answer).
        Raises: InvalidBatchError, WrongShardError, ShardClosedError, ShardNotFoundError,
        OutOfOrderSequenceError, ThrottledError, StorageFullError, StreamNotFoundError,
        NotLeaderError, ShardUnavailableError (when the retries ran out of time).
        """
        args = {
            "stream": model.check_stream_name(stream),
            "shard_id": shard_id,
            "batch": batch,
        }
        answer = await self.router.request(
            stream,
            shard_id,
            wire.OP_APPEND_BATCH,
            args,
            timeout_s=self.request_timeout_s,
            writes=True,
        )
        return append_from_wire(answer)

    # -- reads ---------------------------------------------------------------------------------

    async def read(
        self,
        stream: str,
        shard_id: str,
        position: Position,
        *,
        max_bytes: int = READ_BYTES_MAX_DEFAULT,
        wait_ms: int = 0,
        limit: int | None = None,
    ) -> ReadResult:
        """Read committed records of one shard from ``position``.

        With ``wait_ms`` > 0 and nothing to return, the server holds the request until records
        arrive or the time runs out (the request timeout is extended by ``wait_ms``). ``limit``
        caps the records returned; ``next_position`` then continues right after the last one.
        Raises: CorruptDataError (a batch failed its CRC, here or on the server),
        StreamNotFoundError, ShardNotFoundError, InvalidSequenceNumberError,
        InvalidArgumentError (max_bytes, wait_ms, limit, shard id), NotLeaderError,
        ShardUnavailableError (sent to the shard's leader, retried within the request timeout
        as append_batch is).
        """
        shard_index = model.shard_index_of(shard_id)
        _check_read_args(max_bytes, wait_ms, limit)
        args = {
            "stream": model.check_stream_name(stream),
            "shard_id": shard_id,
            "from": position.to_wire(),
            "max_bytes": max_bytes,
            "wait_ms": wait_ms,
        }
        timeout_s = self.request_timeout_s + wait_ms / 1000
        answer = await self.router.request(
            stream, shard_id, wire.OP_READ, args, timeout_s=timeout_s, writes=False
        )
        return decode_read(raw_read_from_wire(answer), shard_id, shard_index, limit)

    # -- factories -----------------------------------------------------------------------------

    def producer(
        self,
        stream: str,
        *,
        linger_ms: int = 5,
        batch_records_max: int = 500,
        batch_bytes_max: int = 1 << 20,
        in_flight_max: int = 16,
        buffer_records_max: int = 100_000,
        retries_max: int = 10,
        backoff_ms_initial: int = 20,
        backoff_ms_max: int = 2000,
        throttled_wait_ms_max: int = 60_000,
    ) -> Producer:
        """A shard-aware, batching, idempotent Producer (an async context manager).

        The options are documented on Producer (producer.py).
        Raises: InvalidStreamNameError, InvalidArgumentError (an option out of range).
        """
        return Producer(
            self,
            model.check_stream_name(stream),
            linger_ms=linger_ms,
            batch_records_max=batch_records_max,
            batch_bytes_max=batch_bytes_max,
            in_flight_max=in_flight_max,
            buffer_records_max=buffer_records_max,
            retries_max=retries_max,
            backoff_ms_initial=backoff_ms_initial,
            backoff_ms_max=backoff_ms_max,
            throttled_wait_ms_max=throttled_wait_ms_max,
        )

    def reader(
        self,
        stream: str,
        shard_id: str,
        start: Position | None = None,
        *,
        follow: bool = False,
        wait_ms: int = 1000,
        max_bytes: int = READ_BYTES_MAX_DEFAULT,
        deaggregate: bool = False,
    ) -> ShardReader:
        """An async iterator over one shard's records from ``start`` (default: trim horizon).

        Without ``follow`` it stops at the high watermark; with it, it long-polls forever.
        ``deaggregate`` unpacks KPL aggregates into their user records (kpl.py).
        Raises: InvalidStreamNameError, InvalidArgumentError (shard id, wait_ms, max_bytes).
        """
        model.shard_index_of(shard_id)
        _check_read_args(max_bytes, wait_ms, None)
        return ShardReader(
            self,
            model.check_stream_name(stream),
            shard_id,
            Position.trim_horizon() if start is None else start,
            follow=follow,
            wait_ms=wait_ms,
            max_bytes=max_bytes,
            deaggregate=deaggregate,
        )

    def stream_reader(
        self,
        stream: str,
        start: Position | None = None,
        *,
        follow: bool = False,
        wait_ms: int = 1000,
        max_bytes: int = READ_BYTES_MAX_DEFAULT,
        deaggregate: bool = False,
    ) -> StreamReader:
        """Every shard's records from ``start`` (trim_horizon, latest or at_timestamp), child
        shards only after all their parents were read to their end (an async context manager;
        stream_reader.py). Without ``follow`` it ends at every shard's tip. ``deaggregate``
        unpacks KPL aggregates into their user records (kpl.py).
        Raises: InvalidStreamNameError, InvalidArgumentError (start, wait_ms, max_bytes).
        """
        _check_read_args(max_bytes, wait_ms, None)
        start = Position.trim_horizon() if start is None else start
        if start.kind not in ("trim_horizon", "latest", "at_timestamp"):
            raise InvalidArgumentError(
                f"a stream reader starts at trim_horizon, latest or at_timestamp, not {start.kind}"
            )
        return StreamReader(
            self,
            model.check_stream_name(stream),
            start,
            follow=follow,
            wait_ms=wait_ms,
            max_bytes=max_bytes,
            deaggregate=deaggregate,
        )


def _no_bootstrap_answered(failures: list[tuple[str, StreamdError]]) -> StreamdError:
    """The error for a bootstrap list none of whose addresses answered (connect's doc)."""
    for _, error in failures:
        if isinstance(error, ProtocolError):
            return error  # it will answer the same way every time: say what it is
    why = "; ".join(f"{endpoint}: {error.message}" for endpoint, error in failures)
    lost = ConnectionLostError(f"no bootstrap address answered ({why})")
    lost.__cause__ = failures[-1][1]
    return lost


def _record_to_wire(entry: Any) -> dict[str, Any]:
    if not isinstance(entry, tuple) or not 2 <= len(entry) <= 3:
        raise InvalidArgumentError(
            "put_records entries must be PutRecordsEntry or (data, partition_key) tuples"
        )
    record: dict[str, Any] = {
        "k": model.check_partition_key(entry[1]),
        # The ceiling here; the stream's own max record size (1 MiB unless UpdateMaxRecordSize
        # raised it) is the server's to apply: RecordTooLargeError comes back from there.
        "d": model.check_record_data(entry[0], model.RECORD_DATA_BYTES_CEILING),
    }
    if len(entry) == 3 and entry[2] is not None:
        record["h"] = model.parse_explicit_hash_key(entry[2])
    return record


def _check_put_records_size(records: list[dict[str, Any]]) -> None:
    if not 1 <= len(records) <= model.PUT_RECORDS_COUNT_MAX:
        raise RequestTooLargeError(
            f"put_records takes 1..{model.PUT_RECORDS_COUNT_MAX} records, got {len(records)}"
        )
    size_bytes = sum(len(r["d"]) + len(r["k"].encode()) for r in records)
    limit = model.PUT_RECORDS_LARGE_BYTES_MAX  # the server applies the stream's (5 MiB default)
    if size_bytes > limit:
        raise RequestTooLargeError(f"put_records carries {size_bytes} bytes; the limit is {limit}")


def _check_read_args(max_bytes: int, wait_ms: int, limit: int | None) -> None:
    if not 1 <= max_bytes <= model.READ_BYTES_MAX:
        raise InvalidArgumentError(f"max_bytes must be 1..{model.READ_BYTES_MAX}")
    if not 0 <= wait_ms <= model.READ_WAIT_MS_MAX:
        raise InvalidArgumentError(f"wait_ms must be 0..{model.READ_WAIT_MS_MAX}")
    if limit is not None and limit < 1:
        raise InvalidArgumentError(f"limit must be at least 1, got {limit}")
