"""The producer's buffers: per-shard batches in columns, and the handles ``put`` returns.

Why columns: a batch's payload in the storage format *is* three columns (keys, hashes, datas),
so buffering records as three list appends makes encoding one ``cbor2.dumps`` with no per-record
work. Why one completion per batch: a record's handle (``PendingPut``) is only (batch, index), so
``put`` allocates no event, future or task; all records of a batch settle together.
"""

from __future__ import annotations

import copy
import secrets
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import anyio

from .errors import StreamdError
from .model import make_sequence, shard_index_of
from .results import PutResult

RECORD_OVERHEAD_BYTES: Final = 32  # CBOR heads and the 16-byte hash, per record, in a payload


def fresh_producer_id() -> int:
    """A random, non-zero 63-bit producer id (0 means "not idempotent" in the batch header)."""
    return secrets.randbits(63) | 1


@dataclass
class ProducerStats:
    """Counters since the producer started; batches count each send decision once."""

    acked_records: int = 0
    failed_records: int = 0
    retried_batches: int = 0  # attempts after the first, summed over batches
    duplicate_batches: int = 0  # acks with duplicate=true: a lost answer was recovered
    rerouted_batches: int = 0  # batches split onto new shards after a reshard
    throttled_batches: int = 0  # THROTTLED answers with a retry-after hint, waited out
    throttled_wait_s: float = 0.0  # the time those waits took, summed


class Batch:
    """Records bound for one shard and their single shared completion.

    Invariant: the three columns have equal length; ``done`` is set exactly once, and then
    exactly one of (``base_offset >= 0``, ``error``, ``forward``) describes the outcome.
    """

    __slots__ = (
        "base_offset",
        "created_at",
        "datas",
        "done",
        "error",
        "forward",
        "hashes",
        "keys",
        "shard",
        "size_bytes",
    )

    def __init__(self, shard: ShardBuffer, created_at: float) -> None:
        self.shard = shard
        self.created_at = created_at
        self.keys: list[str] = []
        self.hashes: list[bytes] = []
        self.datas: list[bytes] = []
        self.size_bytes = 0
        self.done = anyio.Event()
        self.base_offset = -1
        self.error: StreamdError | None = None
        # Set when the records moved to other batches (re-routed): index -> (batch, index).
        self.forward: list[tuple[Batch, int]] | None = None

    async def wait_settled(self) -> None:
        """Wait until every record of this batch, wherever re-routed, is acked or failed."""
        await self.done.wait()
        if self.forward is not None:
            for target in dict.fromkeys(target for target, _ in self.forward):
                await target.wait_settled()


class PendingPut:
    """The handle ``put`` returns: where the record waits for its acknowledgement."""

    __slots__ = ("_batch", "_index")

    def __init__(self, batch: Batch, index: int) -> None:
        self._batch = batch
        self._index = index

    def _resolved(self) -> tuple[Batch, int] | None:
        batch, index = self._batch, self._index
        while batch.done.is_set():
            if batch.forward is None:
                return batch, index
            batch, index = batch.forward[index]
        return None

    def done(self) -> bool:
        """True once the record is acked or failed (``result()`` then returns at once)."""
        return self._resolved() is not None

    async def result(self) -> PutResult:
        """Wait for the record's fate; bounded by the producer's retry budget.

        Raises: the typed error the record finally failed with (ThrottledError after
        retries_max, InvalidBatchError, StreamNotFoundError, ...), or ConnectionLostError when
        the producer closed before the record was acknowledged.
        """
        while (resolved := self._resolved()) is None:
            batch, index = self._batch, self._index
            while batch.forward is not None:
                batch, index = batch.forward[index]
            await batch.done.wait()
        batch, index = resolved
        if batch.error is not None:
            raise copy.copy(batch.error)  # a copy per raise: tracebacks do not pile up
        shard = batch.shard
        return PutResult(
            shard.shard_id, make_sequence(shard.shard_index, batch.base_offset + index)
        )


class ShardBuffer:
    """The producer's state for one shard: its buffer, its sequence, its sender's wake-up."""

    def __init__(self, shard_id: str, hash_start: int, gates: list[ShardBuffer]) -> None:
        self.shard_id = shard_id
        self.shard_index = shard_index_of(shard_id)
        self.hash_start = hash_start.to_bytes(16, "big")
        self.producer_id = 0  # set by the producer
        self.next_seq = 0
        self.open: Batch | None = None  # filling up
        self.sealed: deque[Batch] = deque()  # ready to send, in order
        self.in_flight: Batch | None = None
        self.retired = False  # no longer an open shard: hand the records over
        self.settled = anyio.Event()  # set once retired and every record handed over
        self.gates = gates  # retired shards whose records must be handed over first
        self._waiter: anyio.Event | None = None

    def batches(self) -> Iterator[Batch]:
        """Every batch not yet acked, oldest first."""
        if self.in_flight is not None:
            yield self.in_flight
        yield from self.sealed
        if self.open is not None:
            yield self.open

    def wake(self) -> None:
        if self._waiter is not None:
            self._waiter.set()
            self._waiter = None

    async def sleep(self, timeout_s: float | None) -> None:
        """Sleep until ``wake()`` or the timeout (None: no timeout; the sender is idle)."""
        self._waiter = anyio.Event()
        with anyio.move_on_after(timeout_s):
            await self._waiter.wait()
