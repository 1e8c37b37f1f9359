"""A blocking facade over the async client, for scripts and REPLs.

How: ``connect`` starts an event loop in a helper thread (``anyio.from_thread``'s blocking
portal, asyncio by default) and enters the async ``connect()`` there; every blocking method is
one ``portal.call`` of the async one. The async objects live and die in the portal's loop, and
the async context managers (client, producer) are entered and left inside it
(``wrap_async_context_manager``), so their task groups stay structured.

Each call crosses threads (tens of microseconds), so this is for convenience, not throughput:
use the async API (or ``SyncProducer.put``, which only buffers) for bulk work. Records from
``iter_records`` are fetched a page at a time, not one portal call per record.

Every method raises what its async counterpart raises (see client.py, producer.py).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from types import TracebackType
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

from .auth import Credentials
from .client import (
    CONNECT_TIMEOUT_S_DEFAULT,
    REQUEST_TIMEOUT_S_DEFAULT,
    Client,
    ProgressCallback,
)
from .client import connect as async_connect
from .consumer import ShardReader
from .model import Position
from .producer import PendingPut, Producer, ProducerStats
from .results import (
    AppendResult,
    PutRecordsInput,
    PutRecordsResult,
    PutResult,
    ReadResult,
    Record,
    StreamDescription,
)
from .security import PathArg


@contextmanager
def connect(
    endpoint: str,
    *,
    connect_timeout_s: float = CONNECT_TIMEOUT_S_DEFAULT,
    request_timeout_s: float = REQUEST_TIMEOUT_S_DEFAULT,
    backend: str = "asyncio",
    ca: PathArg | None = None,
    cert: PathArg | None = None,
    key: PathArg | None = None,
    tls: ssl.SSLContext | None = None,
    credentials: Credentials | tuple[str, str] | None = None,
) -> Iterator[SyncClient]:
    """Connect to ``"host:port"`` (or ``"tls://host:port"``: ca, cert, key, tls and
    credentials as the async ``connect``); yields a SyncClient. Raises: as ``connect``."""
    with start_blocking_portal(backend) as portal:
        client_cm = async_connect(
            endpoint,
            connect_timeout_s=connect_timeout_s,
            request_timeout_s=request_timeout_s,
            ca=ca,
            cert=cert,
            key=key,
            tls=tls,
            credentials=credentials,
        )
        with portal.wrap_async_context_manager(client_cm) as client:
            yield SyncClient(portal, client)


class SyncClient:
    """The Client's methods, blocking. Safe to use from several threads at once."""

    def __init__(self, portal: BlockingPortal, client: Client) -> None:
        self._portal = portal
        self._client = client

    def create_stream(self, name: str, shard_count: int, retention_hours: int = 24) -> None:
        self._portal.call(self._client.create_stream, name, shard_count, retention_hours)

    def delete_stream(self, name: str) -> None:
        self._portal.call(self._client.delete_stream, name)

    def list_streams(self) -> list[str]:
        return self._portal.call(self._client.list_streams)

    def describe_stream(self, name: str) -> StreamDescription:
        return self._portal.call(self._client.describe_stream, name)

    def update_retention(self, name: str, hours: int) -> None:
        self._portal.call(self._client.update_retention, name, hours)

    def set_encryption(self, name: str, key_id: str | None) -> None:
        self._portal.call(self._client.set_encryption, name, key_id)

    def split_shard(
        self, stream: str, shard_id: str, hash_key: int | str | None = None
    ) -> list[str]:
        return self._portal.call(self._client.split_shard, stream, shard_id, hash_key)

    def merge_shards(self, stream: str, shard_id: str, adjacent_shard_id: str) -> str:
        return self._portal.call(self._client.merge_shards, stream, shard_id, adjacent_shard_id)

    def resize_stream(self, stream: str, shard_count: int) -> int:
        return self._portal.call(self._client.resize_stream, stream, shard_count)

    def wait_for_active(
        self,
        stream: str,
        timeout_s: float,
        *,
        on_progress: ProgressCallback | None = None,
        poll_interval_s: float = 0.2,
    ) -> StreamDescription:
        """Block until the stream is ACTIVE; ``on_progress`` runs in the portal's thread."""
        wait = partial(
            self._client.wait_for_active, on_progress=on_progress, poll_interval_s=poll_interval_s
        )
        return self._portal.call(wait, stream, timeout_s)

    def put_record(
        self,
        stream: str,
        data: bytes,
        partition_key: str,
        explicit_hash_key: int | str | None = None,
    ) -> PutResult:
        put = self._client.put_record
        return self._portal.call(put, stream, data, partition_key, explicit_hash_key)

    def put_records(self, stream: str, entries: Sequence[PutRecordsInput]) -> PutRecordsResult:
        return self._portal.call(self._client.put_records, stream, entries)

    def append_batch(self, stream: str, shard_id: str, batch: bytes) -> AppendResult:
        return self._portal.call(self._client.append_batch, stream, shard_id, batch)

    def read(
        self,
        stream: str,
        shard_id: str,
        position: Position,
        *,
        max_bytes: int = 1 << 20,
        wait_ms: int = 0,
        limit: int | None = None,
    ) -> ReadResult:
        read = partial(self._client.read, max_bytes=max_bytes, wait_ms=wait_ms, limit=limit)
        return self._portal.call(read, stream, shard_id, position)

    def iter_records(
        self,
        stream: str,
        shard_id: str,
        start: Position | None = None,
        *,
        follow: bool = False,
        wait_ms: int = 1000,
        max_bytes: int = 1 << 20,
    ) -> Iterator[Record]:
        """Records of one shard from ``start``; stops at the tip unless ``follow``."""
        reader: ShardReader = self._client.reader(
            stream, shard_id, start, follow=follow, wait_ms=wait_ms, max_bytes=max_bytes
        )
        while (page := self._portal.call(reader.read_page)) is not None:
            yield from page

    def iter_stream(
        self,
        stream: str,
        start: Position | None = None,
        *,
        follow: bool = False,
        wait_ms: int = 1000,
        max_bytes: int = 1 << 20,
    ) -> Iterator[Record]:
        """Records of every shard, children after their parents (``Client.stream_reader``);
        stops at the tips unless ``follow``. Close the iterator (or exhaust it) to stop."""
        reader = self._client.stream_reader(
            stream, start, follow=follow, wait_ms=wait_ms, max_bytes=max_bytes
        )
        with self._portal.wrap_async_context_manager(reader):
            while (page := self._portal.call(reader.read_page)) is not None:
                yield from page

    def producer(self, stream: str, **options: Any) -> SyncProducer:
        """A started SyncProducer; close it (or use ``with``) to flush and stop it."""
        return SyncProducer(self._portal, self._client.producer(stream, **options))


class SyncPendingPut:
    """A blocking view of a PendingPut."""

    def __init__(self, portal: BlockingPortal, pending: PendingPut) -> None:
        self._portal = portal
        self._pending = pending

    def done(self) -> bool:
        return self._pending.done()

    def result(self) -> PutResult:
        """Block until the record is acked or failed. Raises: as ``PendingPut.result``."""
        return self._portal.call(self._pending.result)


class SyncProducer(AbstractContextManager["SyncProducer"]):
    """A Producer driven from blocking code; started at construction."""

    def __init__(self, portal: BlockingPortal, producer: Producer) -> None:
        self._portal = portal
        self._producer = producer
        self._context = portal.wrap_async_context_manager(producer)
        self._context.__enter__()
        self._closed = False

    @property
    def stats(self) -> ProducerStats:
        return self._producer.stats

    def put(
        self, data: bytes, partition_key: str, explicit_hash_key: int | str | None = None
    ) -> SyncPendingPut:
        """Buffer one record (blocks only while the buffer is full)."""
        pending = self._portal.call(self._producer.put, data, partition_key, explicit_hash_key)
        return SyncPendingPut(self._portal, pending)

    def flush(self) -> None:
        self._portal.call(self._producer.flush)

    def close(self) -> None:
        """Flush, then stop the producer. Idempotent."""
        if not self._closed:
            self._closed = True
            self._context.__exit__(None, None, None)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._closed:
            self._closed = True
            self._context.__exit__(exc_type, exc, tb)
