"""Load for the cluster fault scenarios: idempotent and plain writers, tailing readers, a history.

``Workload.run(stop)`` runs, until ``stop`` is set, on a ``streamd`` cluster:

* an **idempotent writer**: the shard-aware ``Producer`` (its retries are deduplicated by
  producer id and sequence), ``producer_rate`` records/s over ``keys`` partition keys
  ``i0..``; every record is sent once and its fate recorded: acked at (shard, sequence), or
  failed (indeterminate). Checked *exactly once*.
* a **plain writer**: server-routed ``put_records`` through whichever node the client reaches,
  ``plain_rate`` records/s over keys ``p0..``; a record whose put failed (a per-record error,
  or the whole call lost) is put again, the same bytes, after a 100 ms backoff, until
  ``retry_s_max`` has passed since its first send. A retry after a lost answer may store it
  twice, so it is checked *at least once*.
* one **tailing reader** per shard, on a client bootstrapped from another node than the shard's
  leader, from the trim horizon; it rides through failures from where it was
  (``reader.position``) and records every record it is handed under its own name.

Every send and ack is stamped with ``time.monotonic()``, so the checker can tell the time from
a fault to the first acknowledgement of a write sent after it. Acks are awaited by one task per
(tick, shard), in put order, so a shard that stalls never delays the stamps of another.

Bounded: ``records_max`` records in all (the writers stop offering when it is reached); at most
``plain_in_flight_max`` put_records calls and ``pending_groups_max`` ack-waiting tasks at once
(the writer waits for room: a stalled cluster slows the load down rather than buffer it without
limit).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from streamd_client import Client, Position, connect, errors
from streamd_client.model import hash_key_of
from streamd_client.producer import Producer
from streamd_client.results import PutResult, ReadResult, Record

from .history import History, Seen, make_data

TICK_S: Final = 0.02
_READER_BACKOFF_S: Final = 0.1
_PLAIN_BACKOFF_S: Final = 0.1
_FLUSH_TIMEOUT_S: Final = 60.0


@dataclass
class LoadOptions:
    producer_rate: int = 2_000  # idempotent records per second
    plain_rate: int = 200  # plain put_records records per second
    keys: int = 32  # per writer
    record_bytes: int = 100
    records_max: int = 200_000  # both writers together
    retry_s_max: float = 30.0  # a plain record is retried this long after its first send
    plain_in_flight_max: int = 4
    pending_groups_max: int = 4_000
    readers: bool = True
    key_prefix: str = ""  # keeps the record ids of two workloads on one stream apart
    request_timeout_s: float = 3.0


@dataclass
class Shards:
    """The stream's open shards by hash-key range: which shard a partition key goes to."""

    ids: list[str]
    starts: list[int]

    def of_key(self, key: str) -> str:
        return self.ids[bisect.bisect_right(self.starts, hash_key_of(key)) - 1]


@dataclass
class LoadStats:
    producer_sent: int = 0
    plain_sent: int = 0
    plain_retries: int = 0
    reader_restarts: int = 0
    budget_spent_at_s: float | None = None  # when ``records_max`` ran out (load stopped)
    errors: dict[str, int] = field(default_factory=dict)

    def count_error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


class Workload:
    def __init__(
        self,
        stream: str,
        shards: Shards,
        history: History,
        options: LoadOptions,
        *,
        writer_bootstrap: str,
        reader_bootstrap: Callable[[str], str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.shards = shards
        self.history = history
        self.options = options
        self.writer_bootstrap = writer_bootstrap
        self.reader_bootstrap = reader_bootstrap  # shard id -> bootstrap list for its reader
        self.clock = clock
        self.stats = LoadStats()
        self._budget = options.records_max
        self._groups = trio.Semaphore(options.pending_groups_max)
        self._retry_after = 0.0  # plain retries wait until then (a backoff after a failure)

    def _take(self, wanted: int) -> int:
        granted = min(wanted, self._budget)
        self._budget -= granted
        if granted < wanted and self.stats.budget_spent_at_s is None:
            self.stats.budget_spent_at_s = self.clock()
        return granted

    async def run(self, stop: trio.Event) -> None:
        """Write until ``stop``, then settle every record's fate; readers run until then plus
        ``reader_grace_s`` so they catch up with the last acks."""
        readers_done = trio.Event()
        async with trio.open_nursery() as nursery:
            if self.options.readers:
                nursery.start_soon(self._readers, readers_done)
            async with trio.open_nursery() as writers:
                writers.start_soon(self._idempotent_writer, stop)
                writers.start_soon(self._plain_writer, stop)
            await trio.sleep(1.0)  # let the readers reach the last acknowledged records
            readers_done.set()

    # -- the idempotent writer -------------------------------------------------------------------

    async def _idempotent_writer(self, stop: trio.Event) -> None:
        if self.options.producer_rate <= 0:
            return
        async with connect(
            self.writer_bootstrap, request_timeout_s=self.options.request_timeout_s
        ) as client:
            producer = client.producer(
                self.stream, retries_max=60, backoff_ms_initial=20, backoff_ms_max=500
            )
            async with producer, trio.open_nursery() as waiters:
                await self._offer(producer, stop, waiters)
                with trio.move_on_after(_FLUSH_TIMEOUT_S):
                    await producer.flush()

    async def _offer(self, producer: Producer, stop: trio.Event, waiters: trio.Nursery) -> None:
        keys = [f"{self.options.key_prefix}i{n}" for n in range(self.options.keys)]
        counters = dict.fromkeys(keys, 0)
        per_tick = max(1, round(self.options.producer_rate * TICK_S))
        index = 0
        next_tick = trio.current_time()
        while not stop.is_set():
            groups: dict[str, list[tuple[str, int, Any]]] = {}
            for _ in range(self._take(per_tick)):
                key = keys[index % len(keys)]
                index += 1
                counter = counters[key]
                counters[key] = counter + 1
                data = make_data(key, counter, self.options.record_bytes)
                self.history.record_sent(key, counter, data, at_s=self.clock())
                pending = await producer.put(data, key)
                groups.setdefault(self.shards.of_key(key), []).append((key, counter, pending))
                self.stats.producer_sent += 1
            for group in groups.values():
                await self._groups.acquire()
                waiters.start_soon(self._settle_group, group)
            next_tick += TICK_S
            await trio.sleep_until(max(next_tick, trio.current_time()))

    async def _settle_group(self, group: list[tuple[str, int, Any]]) -> None:
        try:
            for key, counter, pending in group:
                try:
                    result = await pending.result()
                except errors.StreamdError as exc:
                    self.history.record_failure(key, counter, exc.code)
                    self.stats.count_error(exc.code)
                else:
                    self.history.record_ack(
                        key, counter, result.shard_id, result.sequence_number, at_s=self.clock()
                    )
        finally:
            self._groups.release()

    # -- the plain writer ------------------------------------------------------------------------

    async def _plain_writer(self, stop: trio.Event) -> None:
        if self.options.plain_rate <= 0:
            return
        async with connect(
            self.writer_bootstrap, request_timeout_s=self.options.request_timeout_s
        ) as client:
            retry: list[tuple[str, int]] = []
            in_flight = trio.Semaphore(self.options.plain_in_flight_max)
            keys = [f"{self.options.key_prefix}p{n}" for n in range(self.options.keys)]
            counters = dict.fromkeys(keys, 0)
            per_tick = max(1, round(self.options.plain_rate * TICK_S))
            index = 0
            async with trio.open_nursery() as calls:
                next_tick = trio.current_time()
                while True:
                    if stop.is_set() and not retry:
                        await _wait_all(in_flight, self.options.plain_in_flight_max)
                        if not retry:  # every call returned and none left a record to retry
                            break
                    batch: list[tuple[str, int]] = []
                    if self.clock() >= self._retry_after:
                        batch, retry[:] = retry[:500], retry[500:]
                    for _ in range(0 if stop.is_set() else self._take(per_tick)):
                        key = keys[index % len(keys)]
                        index += 1
                        counter, counters[key] = counters[key], counters[key] + 1
                        data = make_data(key, counter, self.options.record_bytes)
                        self.history.record_sent(
                            key, counter, data, at_s=self.clock(), at_least_once=True
                        )
                        batch.append((key, counter))
                        self.stats.plain_sent += 1
                    if batch:
                        await in_flight.acquire()
                        calls.start_soon(self._put, client, batch[:500], retry, in_flight)
                        retry.extend(batch[500:])
                    next_tick += TICK_S
                    await trio.sleep_until(max(next_tick, trio.current_time()))

    async def _put(
        self,
        client: Client,
        batch: list[tuple[str, int]],
        retry: list[tuple[str, int]],
        in_flight: trio.Semaphore,
    ) -> None:
        try:
            entries = [(self.history.sent[rid], rid[0]) for rid in batch]
            try:
                answer = await client.put_records(self.stream, entries)
            except errors.StreamdError as exc:
                self.stats.count_error(exc.code)
                self._again(batch, exc.code, retry)
                return
            now = self.clock()
            for rid, result in zip(batch, answer.results, strict=True):
                if isinstance(result, PutResult):
                    self.history.record_ack(*rid, result.shard_id, result.sequence_number, at_s=now)
                else:
                    self.stats.count_error(result.code)
                    self._again([rid], result.code, retry)
        finally:
            in_flight.release()

    def _again(self, batch: list[tuple[str, int]], code: str, retry: list[tuple[str, int]]) -> None:
        now = self.clock()
        self._retry_after = now + _PLAIN_BACKOFF_S
        for rid in batch:
            self.history.record_failure(*rid, code)
            if now - self.history.sent_at[rid] < self.options.retry_s_max:
                retry.append(rid)
                self.stats.plain_retries += 1

    # -- readers ---------------------------------------------------------------------------------

    async def _readers(self, done: trio.Event) -> None:
        async with trio.open_nursery() as nursery:
            for shard_id in self.shards.ids:
                nursery.start_soon(self._tail, shard_id)
            await done.wait()
            nursery.cancel_scope.cancel()

    async def _tail(self, shard_id: str) -> None:
        name = f"{self.options.key_prefix}tail-{shard_id[-3:]}"
        self.history.record_reader_start(name, shard_id, from_start=True)
        position = Position.trim_horizon()
        bootstrap = self.reader_bootstrap(shard_id)
        while True:
            try:
                async with connect(bootstrap, request_timeout_s=3.0) as client:
                    while True:
                        page = await read_page(
                            client, self.stream, shard_id, position, self.history, name, 500
                        )
                        for record in page.records:
                            self.history.record_observed(_seen(record), reader=name)
                        position = page.next_position
            except errors.StreamdError as exc:
                if not exc.retryable:  # a refusal of committed records: say so, try again
                    where = position.offset if position.kind == "at_offset" else position.kind
                    self.history.record_refused_read(
                        name, shard_id, f"from {where}: {exc.code}: {exc.message}"
                    )
                self.stats.reader_restarts += 1
                await trio.sleep(_READER_BACKOFF_S)


async def read_page(
    client: Client,
    stream: str,
    shard_id: str,
    position: Position,
    history: History,
    reader: str,
    wait_ms: int,
) -> ReadResult:
    """One page from ``position``, as an ordinary reader asks for it. A page the client refuses
    as malformed (a ProtocolError: say, "read skipped offsets") is recorded in the history as a
    refused read (a violation) and then read again one batch per page (``max_bytes`` 1), so
    the check still sees every record behind it instead of stopping there."""
    try:
        return await client.read(stream, shard_id, position, wait_ms=wait_ms)
    except errors.ProtocolError as exc:
        where = position.offset if position.kind == "at_offset" else position.kind
        history.record_refused_read(reader, shard_id, f"from {where}: {exc.message}")
    return await client.read(stream, shard_id, position, max_bytes=1, wait_ms=wait_ms)


async def _wait_all(semaphore: trio.Semaphore, total: int) -> None:
    """Wait until every one of ``total`` permits is back (every call returned)."""
    for _ in range(total):
        await semaphore.acquire()
    for _ in range(total):
        semaphore.release()


async def read_all(
    client: Client, stream: str, shard_id: str, history: History, *, timeout_s: float = 60.0
) -> list[Seen]:
    """Every record of a shard from the trim horizon to its high watermark, retrying what a
    recovering cluster answers (a leader not serving yet). Raises TimeoutError."""
    records: list[Seen] = []
    position = Position.trim_horizon()
    with trio.fail_after(timeout_s):
        while True:
            try:
                page = await read_page(client, stream, shard_id, position, history, "final", 0)
            except errors.StreamdError as exc:
                if not exc.retryable:
                    raise
                await trio.sleep(0.2)
                continue
            records += [_seen(record) for record in page.records]
            stuck = not page.records and page.next_position == position
            position = page.next_position
            if stuck or (position.offset or 0) >= page.high_watermark:
                return records


def _seen(record: Record) -> Seen:
    return Seen(record.shard_id, record.sequence_number, record.partition_key, record.data)
