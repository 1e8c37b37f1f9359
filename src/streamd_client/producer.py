"""The shard-aware, batching, idempotent producer: the client's fast write path.

How a record travels:

1. ``put``/``put_nowait`` validates it (bad input raises at once), hashes the partition key
   (MD5, as the server routes) or takes the explicit hash key, finds its shard by bisecting the
   open shards' range starts, and appends it to that shard's open batch: three column lists
   (keys, hashes, datas), exactly the storage format's payload. The caller gets a
   ``PendingPut`` = (batch, index). No per-record event, future or task: one completion per
   batch, which is what makes ~µs per put possible.
2. One sender task per shard seals the open batch when it reaches ``batch_records_max`` or
   ``batch_bytes_max``, or ``linger_ms`` after its first record, encodes it once
   (``batch.encode_batch`` with this shard's producer id and sequence) and sends it with
   ``append_batch``. At most one batch per shard is in flight (so order per key holds under
   retries without any reordering logic), at most ``in_flight_max`` across shards.
3. A retry re-sends the *same bytes* (same producer sequence), so when a batch committed but its
   answer was lost, the server recognises it and answers ``duplicate: true`` with the original
   offsets: exactly-once per batch, not at-least-once. See ``_decide`` for the retry table.

Resharding: when a shard is closed or unknown, the sender refreshes the shard map, and every
record still held for a shard that is no longer open (the failed batch first, then the queued
ones, then the open one) is re-routed, in order, *in front of* its new shard's queue. A new shard
sends nothing until the retired shards it may inherit from have handed over their records
(``gates``), so order per key holds across a split or merge too (invariant 5).

Throughput quotas: a THROTTLED answer with a ``retry_after_ms`` hint (the server's per-shard
quota, docs/kinesis.md) is waited out, that long plus a little jitter, and the same bytes sent
again; only this shard's sender waits, the others go on, and since a shard has one batch in
flight nothing is reordered. Those waits do not use up ``retries_max``: they are bounded by
``throttled_wait_ms_max`` per batch instead, after which the batch fails with the ThrottledError.
A THROTTLED without a hint (a full queue) is an ordinary retry.

Backpressure: ``buffer_records_max`` bounds the records buffered or in flight. ``put`` waits for
space; ``put_nowait`` raises ``anyio.WouldBlock``. The records' memory is bounded with it.

Idempotency caveat, and why the producer id may change: a sequence number must never be reused
for different records. When a batch finally fails after an attempt whose outcome is unknown
(connection lost, timeout, internal error) it may or may not be stored, and the next batch must
not reuse its sequence (the server would take it for a duplicate and drop it) nor skip it (the
server would answer OUT_OF_ORDER_SEQUENCE). The shard then restarts its sequence at 0 under a
fresh random producer id. ``producer_id`` is the id every shard starts with.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from contextlib import AsyncExitStack
from enum import Enum
from hashlib import md5 as _md5
from types import TracebackType
from typing import Final

import anyio
import anyio.abc
import anyio.lowlevel

from . import batch as batch_format
from ._buffers import (
    RECORD_OVERHEAD_BYTES,
    Batch,
    PendingPut,
    ProducerStats,
    ShardBuffer,
    fresh_producer_id,
)
from ._tasks import background_task_group
from .client_api import Appender
from .consumer import backoff_s
from .errors import (
    ConnectionLostError,
    InternalError,
    InvalidArgumentError,
    NotLeaderError,
    OutOfOrderSequenceError,
    ProtocolError,
    RequestTimeoutError,
    ShardClosedError,
    ShardNotFoundError,
    StreamdError,
    ThrottledError,
    WrongShardError,
)
from .model import (
    HASH_KEY_MAX,
    PARTITION_KEY_CHARS_MAX,
    RECORD_DATA_BYTES_MAX,
    check_partition_key,
    check_record_data,
    hash_bytes_of,
    parse_explicit_hash_key,
)
from .results import AppendResult, StreamDescription

__all__ = ["PendingPut", "Producer", "ProducerStats", "fresh_producer_id"]


PRODUCER_SEQ_MAX: Final = 0xFFFF_FFFF  # u32 in the batch header
_RESHARD_ERRORS: Final = (WrongShardError, ShardClosedError, ShardNotFoundError)
# Errors after which a batch may or may not have been stored (NOT_LEADER: the deposed leader
# may have committed it while it waited; the router raises these for a retried append too).
_AMBIGUOUS_ERRORS: Final = (ConnectionLostError, RequestTimeoutError, InternalError, NotLeaderError)


class _Action(Enum):
    RETRY = "retry the same bytes after a backoff"
    REFRESH = "refresh the shard map; re-route if the shard is gone"
    RESEQUENCE = "fail the batch; restart the shard's sequence under a fresh producer id"
    FAIL = "fail the batch"


def _decide(error: StreamdError, attempt: int, retries_max: int) -> _Action:
    """The decision table for one failed append_batch attempt.

    | error                                    | action     | why                           |
    |------------------------------------------|------------|-------------------------------|
    | WRONG_SHARD, SHARD_CLOSED, SHARD_NOT_... | REFRESH    | our shard map is stale        |
    | OUT_OF_ORDER_SEQUENCE                    | RESEQUENCE | server lost or skipped state  |
    | retryable, attempts left                 | RETRY      | same bytes: dedup makes it safe |
    | anything else, or no attempts left       | FAIL       | the records' final outcome    |
    """
    if isinstance(error, _RESHARD_ERRORS):
        return _Action.REFRESH
    if isinstance(error, OutOfOrderSequenceError):
        return _Action.RESEQUENCE
    if error.retryable and attempt < retries_max:
        return _Action.RETRY
    return _Action.FAIL


class _State(Enum):
    NEW = "not entered yet"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Producer:
    """Batches records per shard and sends them with retries; an async context manager.

    Use ``async with client.producer(stream) as p`` (or ``p = client.producer(...)`` then
    ``async with p``). Leaving the block flushes (waits until every record is acked or failed)
    then closes; leaving it with an exception cancels what is still buffered, and those
    records fail with ConnectionLostError. ``put*`` and ``flush`` must be called from the
    event loop the producer was entered in.
    """

    def __init__(
        self,
        client: Appender,
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
    ) -> None:
        _check_options(linger_ms, batch_records_max, batch_bytes_max, in_flight_max)
        _check_options_more(buffer_records_max, retries_max, backoff_ms_initial, backoff_ms_max)
        if not 0 <= throttled_wait_ms_max <= 3_600_000:
            raise InvalidArgumentError(
                f"throttled_wait_ms_max must be 0..3600000, got {throttled_wait_ms_max}"
            )
        self.throttled_wait_ms_max = throttled_wait_ms_max
        self.stream = stream
        self.linger_ms = linger_ms
        self.batch_records_max = batch_records_max
        self.batch_bytes_max = batch_bytes_max
        self.in_flight_max = in_flight_max
        self.buffer_records_max = buffer_records_max
        self.retries_max = retries_max
        self.backoff_ms_initial = backoff_ms_initial
        self.backoff_ms_max = backoff_ms_max
        self.producer_id = fresh_producer_id()
        self.stats = ProducerStats()
        self._client = client
        self._state = _State.NEW
        self._buffered = 0  # Invariant: 0 <= _buffered; put adds only while < buffer max
        self._space: anyio.Event | None = None  # set when space frees and someone waits
        self._yield_due = False  # a batch sealed: let the senders run at the next put
        self._starts: list[bytes] = []  # open shards' range starts, sorted (16-byte BE)
        self._table: list[ShardBuffer] = []  # the shard for each start
        self._shards: dict[str, ShardBuffer] = {}  # the open shards
        self._retired: list[ShardBuffer] = []  # retired shards still handing over records
        self._map_version = 0
        self._refresh_lock = anyio.Lock()
        self._in_flight = anyio.Semaphore(in_flight_max)
        self._exit_stack = AsyncExitStack()
        self._task_group: anyio.abc.TaskGroup | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Producer:
        """Fetch the shard map and start the senders.

        Raises: StreamNotFoundError, ProtocolError (a shard map with gaps), transport errors.
        """
        if self._state is not _State.NEW:
            raise RuntimeError("a Producer can be entered only once")
        description = await self._client.describe_stream(self.stream)
        self._task_group = await self._exit_stack.enter_async_context(background_task_group())
        self._install_map(description)
        self._state = _State.OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        graceful = exc_type is None
        try:
            if graceful:
                await self.flush()
        except BaseException:
            graceful = False
            raise
        finally:
            await self._shutdown(graceful, exc_type, exc, tb)

    async def _shutdown(
        self,
        graceful: bool,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state = _State.CLOSING
        for shard in self._every_shard():
            shard.wake()
        self._release(0)  # wakes put() waiters, which then see the producer closed
        if not graceful:
            assert self._task_group is not None
            self._task_group.cancel_scope.cancel()
        try:
            await self._exit_stack.__aexit__(exc_type, exc, tb)
        finally:
            self._state = _State.CLOSED
            self._abandon_all()

    def _abandon_all(self) -> None:
        for shard in self._every_shard():
            for batch in list(shard.batches()):
                error = ConnectionLostError(
                    "the producer closed before this record was acknowledged; it may or may "
                    "not be stored"
                )
                self._fail(shard, batch, error, restart_sequence=False)
            shard.open, shard.in_flight = None, None
            shard.sealed.clear()

    def _every_shard(self) -> list[ShardBuffer]:
        return [*self._shards.values(), *self._retired]

    # -- the hot path --------------------------------------------------------------------------

    async def put(
        self, data: bytes, partition_key: str, explicit_hash_key: int | str | None = None
    ) -> PendingPut:
        """Buffer one record, waiting only while the buffer is full; returns its PendingPut.

        Raises: InvalidPartitionKeyError, RecordTooLargeError, InvalidArgumentError (data not
        bytes), InvalidHashKeyError, anyio.ClosedResourceError (producer closed or not
        entered).
        """
        # The common case (bytes, a 1..256-character str key, no explicit hash key) is checked
        # inline because this is the hot path: a call per check costs a good part of a put.
        # Anything else goes through _prepare, which raises the typed error.
        if (
            type(data) is bytes
            and type(partition_key) is str
            and explicit_hash_key is None
            and 0 < len(partition_key) <= PARTITION_KEY_CHARS_MAX
            and len(data) <= RECORD_DATA_BYTES_MAX
        ):
            try:
                hash_bytes = _md5(partition_key.encode()).digest()
            except UnicodeEncodeError:  # a lone surrogate: check_partition_key names it
                check_partition_key(partition_key)
                raise
        else:
            partition_key, hash_bytes, data = self._prepare(data, partition_key, explicit_hash_key)
        if self._buffered >= self.buffer_records_max or self._state is not _State.OPEN:
            await self._wait_for_space()
        pending = self._add(partition_key, hash_bytes, data)
        if self._yield_due:  # once per sealed batch: the senders run even in a tight loop
            self._yield_due = False
            await anyio.lowlevel.cancel_shielded_checkpoint()
        return pending

    async def _wait_for_space(self) -> None:
        """Wait until the buffer has room; bounded by the retry budget of what it holds."""
        while True:
            self._check_open()
            if self._buffered < self.buffer_records_max:
                return
            if self._space is None:
                self._space = anyio.Event()
            await self._space.wait()

    def put_nowait(
        self, data: bytes, partition_key: str, explicit_hash_key: int | str | None = None
    ) -> PendingPut:
        """Buffer one record without waiting.

        Raises: anyio.WouldBlock (buffer full), and what ``put`` raises.
        """
        if (  # the inline fast path of put(), for the same reason
            type(data) is bytes
            and type(partition_key) is str
            and explicit_hash_key is None
            and 0 < len(partition_key) <= PARTITION_KEY_CHARS_MAX
            and len(data) <= RECORD_DATA_BYTES_MAX
        ):
            try:
                hash_bytes = _md5(partition_key.encode()).digest()
            except UnicodeEncodeError:  # a lone surrogate: check_partition_key names it
                check_partition_key(partition_key)
                raise
        else:
            partition_key, hash_bytes, data = self._prepare(data, partition_key, explicit_hash_key)
        self._check_open()
        if self._buffered >= self.buffer_records_max:
            raise anyio.WouldBlock
        return self._add(partition_key, hash_bytes, data)

    def _prepare(
        self, data: bytes, partition_key: str, explicit_hash_key: int | str | None
    ) -> tuple[str, bytes, bytes]:
        key = check_partition_key(partition_key)
        data = check_record_data(data)
        if explicit_hash_key is None:
            return key, hash_bytes_of(key), data
        return key, parse_explicit_hash_key(explicit_hash_key).to_bytes(16, "big"), data

    def _add(self, key: str, hash_bytes: bytes, data: bytes) -> PendingPut:
        shard = self._table[bisect_right(self._starts, hash_bytes) - 1]
        batch = shard.open
        size = len(data) + len(key) + RECORD_OVERHEAD_BYTES
        if batch is None or batch.size_bytes + size > self.batch_bytes_max:
            batch = self._open_batch(shard)
        index = len(batch.keys)
        batch.keys.append(key)
        batch.hashes.append(hash_bytes)
        batch.datas.append(data)
        batch.size_bytes += size
        self._buffered += 1
        if index + 1 >= self.batch_records_max:
            self._seal(shard)
        return PendingPut(batch, index)

    def _open_batch(self, shard: ShardBuffer) -> Batch:
        if shard.open is not None:
            self._seal(shard)
        batch = shard.open = Batch(shard, anyio.current_time())
        shard.wake()  # the sender starts its linger timer
        return batch

    def _seal(self, shard: ShardBuffer) -> None:
        assert shard.open is not None
        shard.sealed.append(shard.open)
        shard.open = None
        self._yield_due = True
        shard.wake()

    def _check_open(self) -> None:
        if self._state is not _State.OPEN:
            raise anyio.ClosedResourceError(f"the producer is {self._state.value}")

    # -- flush ---------------------------------------------------------------------------------

    async def flush(self) -> None:
        """Send everything buffered now, without lingering, and wait until each record put so
        far is acked or failed (records put meanwhile are not waited for).

        Bounded by the retry budget (retries_max x (request timeout + backoff_ms_max)).
        Raises: nothing about the records themselves: their fates are in their PendingPuts.
        """
        waiting: list[Batch] = []
        for shard in self._every_shard():
            if shard.open is not None:
                self._seal(shard)
            waiting.extend(shard.batches())
        for batch in waiting:
            await batch.wait_settled()

    # -- the senders ---------------------------------------------------------------------------

    async def _run_sender(self, shard: ShardBuffer) -> None:
        for gate in shard.gates:  # bounded: each gate's sender settles within its retry budget
            await gate.settled.wait()
        shard.gates = []
        while (batch := await self._next_batch(shard)) is not None:
            shard.in_flight = batch  # left set if cancelled: _abandon_all then fails it
            rerouted = await self._deliver(shard, batch)
            shard.in_flight = None
            if rerouted:
                self._hand_over(shard, first=batch)
                break
        if shard.retired:
            self._hand_over(shard, first=None)
            shard.settled.set()
            self._retired.remove(shard)

    async def _next_batch(self, shard: ShardBuffer) -> Batch | None:
        """The next batch to send, once sealed or lingered; None when retired or closing."""
        while not shard.retired:
            if shard.sealed:
                return shard.sealed.popleft()
            batch = shard.open
            if batch is None:
                if self._state is not _State.OPEN:
                    return None
                await shard.sleep(None)
                continue
            linger_left_s = batch.created_at + self.linger_ms / 1000 - anyio.current_time()
            if linger_left_s <= 0 or self._state is not _State.OPEN:
                self._seal(shard)
                continue
            await shard.sleep(linger_left_s)
        return None

    async def _deliver(self, shard: ShardBuffer, batch: Batch) -> bool:
        """Send one batch until acked or failed; True when its shard is gone (re-route it)."""
        payload = batch_format.encode_batch(
            batch.keys,
            batch.hashes,
            batch.datas,
            producer_id=shard.producer_id,
            producer_seq=shard.next_seq,
        )
        attempt, ambiguous, map_version = 0, False, self._map_version
        throttled_wait_s, throttled_budget_s = 0.0, self.throttled_wait_ms_max / 1000
        while True:
            try:
                async with self._in_flight:
                    result = await self._client.append_batch(self.stream, shard.shard_id, payload)
            except StreamdError as exc:
                error: StreamdError = exc
            else:
                self._ack(shard, batch, result)
                return False
            hint_s = _retry_after_s(error)
            if hint_s is not None and throttled_wait_s + hint_s <= throttled_budget_s:
                wait_s = hint_s * (1 + random.random() / 10)  # jitter: shards not in lockstep
                throttled_wait_s += wait_s
                self.stats.throttled_batches += 1
                self.stats.throttled_wait_s += wait_s
                await anyio.sleep(wait_s)
                continue
            ambiguous = ambiguous or isinstance(error, _AMBIGUOUS_ERRORS)
            action = _decide(error, attempt, self.retries_max)
            if action is _Action.REFRESH:
                refreshed = await self._refresh_or_error(map_version)
                if refreshed is None and shard.retired:
                    return True
                error = refreshed or error
                map_version = self._map_version
                action = _decide_after_refresh(error, attempt, self.retries_max)
            if action is _Action.RETRY:
                attempt += 1
                self.stats.retried_batches += 1
                await anyio.sleep(backoff_s(attempt, self.backoff_ms_initial, self.backoff_ms_max))
                continue
            restart = ambiguous or action is _Action.RESEQUENCE
            self._fail(shard, batch, error, restart_sequence=restart)
            return False

    def _ack(self, shard: ShardBuffer, batch: Batch, result: AppendResult) -> None:
        count = len(batch.keys)
        if result.record_count != count or result.shard_id != shard.shard_id:
            error = ProtocolError(f"append_batch ack does not match the batch sent: {result}")
            self._fail(shard, batch, error, restart_sequence=True)
            return
        shard.next_seq += 1
        if shard.next_seq > PRODUCER_SEQ_MAX:
            self._restart_sequence(shard)
        batch.base_offset = result.base_offset
        self.stats.acked_records += count
        self.stats.duplicate_batches += result.duplicate
        batch.done.set()
        self._release(count)

    def _fail(
        self, shard: ShardBuffer, batch: Batch, error: StreamdError, *, restart_sequence: bool
    ) -> None:
        if restart_sequence:
            self._restart_sequence(shard)
        batch.error = error
        self.stats.failed_records += len(batch.keys)
        batch.done.set()
        self._release(len(batch.keys))

    def _restart_sequence(self, shard: ShardBuffer) -> None:
        shard.producer_id = fresh_producer_id()
        shard.next_seq = 0

    def _release(self, count: int) -> None:
        self._buffered -= count
        if self._space is not None and (
            self._buffered < self.buffer_records_max or self._state is not _State.OPEN
        ):
            self._space.set()
            self._space = None

    # -- the shard map -------------------------------------------------------------------------

    async def _refresh_or_error(self, seen_version: int) -> StreamdError | None:
        """Refresh the shard map unless someone did since ``seen_version``; the error if any."""
        try:
            async with self._refresh_lock:
                if self._map_version == seen_version:
                    self._install_map(await self._client.describe_stream(self.stream))
        except StreamdError as exc:
            return exc
        return None

    def _install_map(self, description: StreamDescription) -> None:
        """Adopt a shard map: start senders for new shards, retire the ones no longer open."""
        assert self._task_group is not None
        ordered = _open_shards_in_hash_order(description)
        retired_now = [s for i, s in self._shards.items() if i not in {d[0] for d in ordered}]
        for old in retired_now:
            old.retired = True
            old.wake()
        self._retired.extend(retired_now)
        shards: dict[str, ShardBuffer] = {}
        for shard_id, hash_start in ordered:
            shard = self._shards.get(shard_id)
            if shard is None:
                shard = ShardBuffer(shard_id, hash_start, gates=list(self._retired))
                shard.producer_id = self.producer_id
                self._task_group.start_soon(self._run_sender, shard, name=f"sender {shard_id}")
            shards[shard_id] = shard
        self._shards = shards
        self._table = list(shards.values())
        self._starts = [s.hash_start for s in self._table]
        self._map_version += 1

    def _hand_over(self, shard: ShardBuffer, *, first: Batch | None) -> None:
        """Re-route every record a retired shard still holds, oldest first, to the front of
        its new shards' queues (they are gated: nothing newer of theirs was sent yet)."""
        old_batches = ([first] if first is not None else []) + list(shard.batches())
        shard.open = None
        shard.sealed.clear()
        staged: dict[ShardBuffer, list[Batch]] = {}
        for old in old_batches:
            old.forward = [
                self._stage(staged, k, h, d)
                for k, h, d in zip(old.keys, old.hashes, old.datas, strict=True)
            ]
            self.stats.rerouted_batches += 1
            old.done.set()
        for target, new_batches in staged.items():
            target.sealed.extendleft(reversed(new_batches))
            target.wake()

    def _stage(
        self, staged: dict[ShardBuffer, list[Batch]], key: str, hash_bytes: bytes, data: bytes
    ) -> tuple[Batch, int]:
        target = self._table[bisect_right(self._starts, hash_bytes) - 1]
        batches = staged.setdefault(target, [])
        size = len(data) + len(key) + RECORD_OVERHEAD_BYTES
        if (
            not batches
            or len(batches[-1].keys) >= self.batch_records_max
            or batches[-1].size_bytes + size > self.batch_bytes_max
        ):
            batches.append(Batch(target, anyio.current_time()))
        batch = batches[-1]
        batch.keys.append(key)
        batch.hashes.append(hash_bytes)
        batch.datas.append(data)
        batch.size_bytes += size
        return batch, len(batch.keys) - 1


def _retry_after_s(error: StreamdError) -> float | None:
    """The wait a THROTTLED answer asks for (its ``retry_after_ms``), None without a hint."""
    return error.retry_after_s if isinstance(error, ThrottledError) else None


def _decide_after_refresh(error: StreamdError, attempt: int, retries_max: int) -> _Action:
    """After a refresh that left the shard open (or failed): retry what may pass, else fail."""
    if error.retryable and attempt < retries_max:
        return _Action.RETRY
    return _Action.FAIL


def _open_shards_in_hash_order(description: StreamDescription) -> list[tuple[str, int]]:
    """(shard_id, hash_key_start) of the open shards. Raises ProtocolError unless their
    ranges tile 0..2**128-1 exactly (a record must always have exactly one shard)."""
    open_shards = sorted(
        (s for s in description.shards if s.ending_sequence is None),
        key=lambda s: s.hash_key_start,
    )
    expected_start = 0
    for shard in open_shards:
        if shard.hash_key_start != expected_start or shard.hash_key_end < shard.hash_key_start:
            raise ProtocolError(f"open shards of {description.name} leave a gap or overlap")
        expected_start = shard.hash_key_end + 1
    if expected_start != HASH_KEY_MAX + 1:
        raise ProtocolError(f"open shards of {description.name} do not cover every hash key")
    return [(s.shard_id, s.hash_key_start) for s in open_shards]


def _check_options(
    linger_ms: int, batch_records_max: int, batch_bytes_max: int, in_flight_max: int
) -> None:
    # The worst-case payload (4 UTF-8 bytes per key character) must fit the batch format.
    key_bytes_max = 4 * PARTITION_KEY_CHARS_MAX + RECORD_OVERHEAD_BYTES
    payload_bytes_max = batch_bytes_max + batch_records_max * key_bytes_max
    if not 0 <= linger_ms <= 60_000:
        raise InvalidArgumentError(f"linger_ms must be 0..60000, got {linger_ms}")
    if not 1 <= batch_records_max <= batch_format.BATCH_RECORDS_MAX:
        raise InvalidArgumentError(
            f"batch_records_max must be 1..{batch_format.BATCH_RECORDS_MAX}, got "
            f"{batch_records_max}"
        )
    if batch_bytes_max < 1 or payload_bytes_max > batch_format.BATCH_PAYLOAD_BYTES_MAX:
        raise InvalidArgumentError(
            f"batch_bytes_max {batch_bytes_max} with batch_records_max {batch_records_max} may "
            f"exceed the {batch_format.BATCH_PAYLOAD_BYTES_MAX}-byte batch payload limit"
        )
    if not 1 <= in_flight_max <= 1024:
        raise InvalidArgumentError(f"in_flight_max must be 1..1024, got {in_flight_max}")


def _check_options_more(
    buffer_records_max: int, retries_max: int, backoff_ms_initial: int, backoff_ms_max: int
) -> None:
    if buffer_records_max < 1:
        raise InvalidArgumentError(f"buffer_records_max must be >= 1, got {buffer_records_max}")
    if not 0 <= retries_max <= 1000:
        raise InvalidArgumentError(f"retries_max must be 0..1000, got {retries_max}")
    if not 1 <= backoff_ms_initial <= backoff_ms_max <= 600_000:
        raise InvalidArgumentError(
            "need 1 <= backoff_ms_initial <= backoff_ms_max <= 600000, got "
            f"{backoff_ms_initial}, {backoff_ms_max}"
        )
