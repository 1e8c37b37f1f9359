"""An in-memory ``LogStore`` that models what a crash does to a disk.

It keeps three things apart: batches *written* (in the page cache), batches *durable* (synced),
and, after a crash, what survived. ``crash`` loses every unsynced batch except a prefix that the
OS happened to write back (the seed decides how much), and may leave the next one torn: a
fragment that ``recover`` (run at restart, as the file log's recovery does) finds and cuts, so a
torn write never reaches a reader. A ``flip_bit`` changes one byte of a stored batch without
fixing its checksum: the batch then fails every read (``StoreCorruptError``) and every scrub
(``first_damaged``) until the log is truncated below it. ``full`` makes appends fail with
``StoreFullError`` and write nothing, as a full disk does.

The simulator runs every replica on one of these; the conformance suite runs it beside the file
log.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Sequence
from dataclasses import replace

from .logstore import EpochStart, StoreCorruptError, StoredBatch, StoreFullError


class MemoryLog:
    def __init__(self) -> None:
        # Invariant: _bases[i] == _batches[i].base_offset; offsets consecutive from 0.
        self._batches: list[StoredBatch] = []
        self._bases: list[int] = []
        # Invariant: 0 <= _durable_count <= len(_batches).
        self._durable_count = 0
        self._epochs: list[EpochStart] = []
        self._torn: StoredBatch | None = None  # a half-written batch left by a crash
        self.full = False
        self.torn_cut = 0  # how many torn fragments recovery has cut (the process "says so")

    # -- LogView -----------------------------------------------------------------------------

    def log_end(self) -> int:
        return self._batches[-1].next_offset if self._batches else 0

    def epoch_history(self) -> Sequence[EpochStart]:
        return tuple(self._epochs)

    def read(self, offset: int, batches_max: int) -> list[StoredBatch]:
        assert batches_max > 0
        at = self._index_of(offset)
        if at is None:
            return []
        out = self._batches[at : at + batches_max]
        for batch in out:
            if not batch.intact():
                raise StoreCorruptError(batch.base_offset)
        return out

    # -- LogStore ----------------------------------------------------------------------------

    def durable_end(self) -> int:
        if self._durable_count == 0:
            return 0
        return self._batches[self._durable_count - 1].next_offset

    def append(self, batches: Sequence[StoredBatch]) -> None:
        assert self._torn is None, "recover() after a crash before appending"
        if self.full:
            raise StoreFullError("disk full")
        end = self.log_end()
        last_epoch = self._epochs[-1].epoch if self._epochs else -1
        for batch in batches:
            assert batch.base_offset == end, (batch.base_offset, end)
            assert batch.epoch >= last_epoch, (batch.epoch, last_epoch)
            if batch.epoch != last_epoch:
                self._epochs.append(EpochStart(batch.epoch, batch.base_offset))
                last_epoch = batch.epoch
            self._batches.append(batch)
            self._bases.append(batch.base_offset)
            end = batch.next_offset

    def sync(self) -> int:
        self._durable_count = len(self._batches)
        return self.durable_end()

    def truncate_to(self, offset: int) -> None:
        at = bisect.bisect_left(self._bases, offset)
        assert at == len(self._bases) or self._bases[at] == offset, "not a batch boundary"
        assert at < len(self._bases) or offset == self.log_end(), "beyond the log end"
        del self._batches[at:]
        del self._bases[at:]
        self._durable_count = min(self._durable_count, at)
        while self._epochs and self._epochs[-1].start_offset >= offset:
            self._epochs.pop()

    def first_damaged(self, visit: Callable[[StoredBatch], None] | None = None) -> int | None:
        for batch in self._batches:
            if not batch.intact():
                return batch.base_offset
            if visit is not None:
                visit(batch)
        return None

    # -- faults (the simulator's hands) -----------------------------------------------------

    def crash(self, rng: random.Random) -> None:
        """Power loss: keep the durable batches and, by chance, some of the rest (maybe torn)."""
        unsynced = len(self._batches) - self._durable_count
        kept = self._durable_count + rng.randint(0, unsynced)
        torn = self._batches[kept] if kept < len(self._batches) and rng.random() < 0.5 else None
        self.truncate_to(self._bases[kept] if kept < len(self._bases) else self.log_end())
        self._durable_count = len(self._batches)  # what survived a crash is on the disk now
        if torn is not None:
            self._torn = replace(torn, payload=torn.payload[: len(torn.payload) // 2])

    def recover(self) -> bool:
        """At restart: cut a torn tail fragment. True if there was one to cut."""
        if self._torn is None:
            return False
        self._torn = None
        self.torn_cut += 1
        return True

    def flip_bit(self, rng: random.Random, offset_min: int = 0) -> int | None:
        """Damage one durable batch at or after ``offset_min``; return its base offset."""
        at_min = bisect.bisect_left(self._bases, offset_min)
        candidates = range(at_min, self._durable_count)
        if not candidates:
            return None
        at = rng.choice(candidates)
        batch = self._batches[at]
        data = bytearray(batch.payload or b"\0")
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        self._batches[at] = replace(batch, payload=bytes(data))
        return batch.base_offset

    def batch_at(self, offset: int) -> tuple[StoredBatch, bool] | None:
        """The written batch holding ``offset`` and whether it is durable (for checkers)."""
        at = self._index_of(offset)
        if at is None:
            return None
        return self._batches[at], at < self._durable_count

    def batches(self) -> list[StoredBatch]:
        """Every written batch, damaged or not (for checkers; replicas use ``read``)."""
        return list(self._batches)

    def _index_of(self, offset: int) -> int | None:
        if not self._batches or offset >= self.log_end():
            return None
        return max(0, bisect.bisect_right(self._bases, offset) - 1)
