"""Per-producer idempotence state: each producer's last few batches, bounded in producers.

The table is rebuilt from batch headers at open (or from the per-segment summaries kept in index
files, which hold the same information) and updated by every append. Other threads (the event
loop checking a retry) look entries up while the appender records new ones, so a producer's
deque is replaced, never mutated: a reader iterating the old one is never disturbed. Eviction
order lives in a private OrderedDict that only the appender touches.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable

PRODUCER_BATCHES_MAX = 5  # batches remembered per producer

ProducerBatch = tuple[int, int, int]  # (producer_seq, base_offset, record_count)


class ProducerTable:
    def __init__(self, producers_max: int) -> None:
        assert producers_max > 0
        # Invariant: entries.keys() == recency.keys(); len(entries) <= producers_max.
        self.entries: dict[int, deque[ProducerBatch]] = {}
        self._recency: OrderedDict[int, None] = OrderedDict()
        self._producers_max = producers_max

    def record(self, producer_id: int, batch: ProducerBatch) -> None:
        if producer_id == 0:  # not an idempotent producer
            return
        batches = deque(self.entries.get(producer_id, ()), maxlen=PRODUCER_BATCHES_MAX)
        batches.append(batch)
        self.entries[producer_id] = batches
        self._recency[producer_id] = None
        self._recency.move_to_end(producer_id)
        while len(self._recency) > self._producers_max:
            evicted, _ = self._recency.popitem(last=False)
            del self.entries[evicted]
        assert len(self.entries) == len(self._recency)

    def forget_from(self, offset: int) -> None:
        """Drop the batches at or past ``offset`` (the log was cut there). A producer keeps its
        older batches still remembered (fewer than the maximum: the ones evicted before are not
        read back, so only a retry of a long-acknowledged batch could tell)."""
        for producer_id in [pid for pid, kept in self.entries.items() if kept[-1][1] >= offset]:
            kept = deque(
                (entry for entry in self.entries[producer_id] if entry[1] < offset),
                maxlen=PRODUCER_BATCHES_MAX,
            )
            if kept:
                self.entries[producer_id] = kept
            else:
                del self.entries[producer_id]
                del self._recency[producer_id]
        assert len(self.entries) == len(self._recency)

    def clear(self) -> None:
        """Forget everything (a sealed segment's summary, once its index file is written)."""
        self.entries = {}
        self._recency = OrderedDict()

    def ordered(self) -> list[tuple[int, list[ProducerBatch]]]:
        """Producers least recently appended first, each with its batches oldest first."""
        return [(pid, list(self.entries[pid])) for pid in self._recency]

    def extend(self, ordered: Iterable[tuple[int, Iterable[ProducerBatch]]]) -> None:
        """Replay a newer table's ``ordered()`` on top of this one (segment summaries, in order).

        Equivalent to recording that segment's batches one by one: the last few per producer of
        the whole log are the last few of (older ones + the segment's last few).
        """
        for producer_id, batches in ordered:
            for batch in batches:
                self.record(producer_id, batch)
