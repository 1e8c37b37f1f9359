"""The leader's bookkeeping: per-follower progress, waiting writers, idempotent producers.

Plain data structures with no protocol decisions of their own; ``Replica`` drives them.

* ``Progress``: what a leader knows of one follower. ``durable_end`` is the only number that
  counts towards commit; reports older than the newest ``generation`` (truncation count) seen
  from that follower are dropped, so a delayed ack can never vouch for batches the follower has
  since truncated.
* ``Writers``: writers waiting for their batch to commit, bounded; each is acked when the high
  watermark passes its batch, failed (NOT_LEADER) when the leader is deposed, or timed out.
* ``Producers``: the idempotent-producer table, built from the leader's log (so from replicated
  batches: every replica that becomes leader builds the same table) and extended by each append.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..storage.logstore import LogView, StoredBatch
from ..storage.producers import ProducerTable
from . import messages as m

SCAN_BATCHES = 256


@dataclass(slots=True)
class Progress:
    # Invariant: durable_end <= match_end (the follower vouches only for what matches ours).
    next_offset: int
    match_end: int = 0
    durable_end: int = 0
    generation: int = -1
    heard_ms: int = 0
    sent_ms: int = 0

    def take_ack(self, ack: m.AppendAck, now_ms: int) -> bool:
        """Fold an ack in; False if it is older than what we know (dropped)."""
        self.heard_ms = now_ms
        if ack.generation < self.generation:
            return False
        durable = min(ack.durable_end, ack.log_end)
        if ack.generation > self.generation:
            self.generation = ack.generation
            self.match_end, self.durable_end = ack.log_end, durable
        else:
            self.match_end = max(self.match_end, ack.log_end)
            self.durable_end = max(self.durable_end, durable)
        self.next_offset = max(self.next_offset, self.match_end)
        return True


@dataclass(frozen=True, slots=True)
class Waiter:
    write_id: int
    base_offset: int
    next_offset: int
    duplicate: bool
    deadline_ms: int


class Writers:
    """Writers waiting for commit, in arrival order; at most ``writers_max``."""

    def __init__(self, writers_max: int) -> None:
        self.writers_max = writers_max
        self._waiting: list[Waiter] = []

    def __len__(self) -> int:
        return len(self._waiting)

    def full(self) -> bool:
        return len(self._waiting) >= self.writers_max

    def add(self, waiter: Waiter) -> None:
        assert not self.full()
        self._waiting.append(waiter)

    def committed(self, hw: int, epoch: int) -> list[m.Effect]:
        done = [w for w in self._waiting if w.next_offset <= hw]
        if done:
            self._waiting = [w for w in self._waiting if w.next_offset > hw]
        return [m.WriteDone(w.write_id, w.base_offset, epoch, w.duplicate) for w in done]

    def timed_out(self, now_ms: int, code: str) -> list[m.Effect]:
        late = [w for w in self._waiting if w.deadline_ms <= now_ms]
        if late:
            self._waiting = [w for w in self._waiting if w.deadline_ms > now_ms]
        return [m.WriteFailed(w.write_id, code) for w in late]

    def beyond(self, log_end: int, code: str) -> list[m.Effect]:
        """Fail writers whose batch is not in the log (an append that failed)."""
        gone = [w for w in self._waiting if w.next_offset > log_end]
        if gone:
            self._waiting = [w for w in self._waiting if w.next_offset <= log_end]
        return [m.WriteFailed(w.write_id, code) for w in gone]

    def fail_all(self, code: str) -> list[m.Effect]:
        failed: list[m.Effect] = [m.WriteFailed(w.write_id, code) for w in self._waiting]
        self._waiting = []
        return failed


def iter_log(view: LogView, end: int) -> Iterator[StoredBatch]:
    offset = 0
    while offset < end:
        batches = view.read(offset, SCAN_BATCHES)
        if not batches:
            return
        yield from batches
        offset = batches[-1].next_offset


OUT_OF_ORDER: tuple[str, int, int] = ("out_of_order", 0, 0)


class Producers:
    """Idempotence: is an incoming (producer id, sequence) new, a retry of a batch in the log,
    or out of order? Derived from the log alone: built once (at open, off the event loop) and
    then kept in step with every append and cut, in every role, so a new leader has it ready."""

    def __init__(self, producers_max: int) -> None:
        self.table = ProducerTable(producers_max)

    @classmethod
    def from_log(cls, view: LogView, end: int, producers_max: int) -> Producers:
        producers = cls(producers_max)
        for batch in iter_log(view, end):
            producers.record(batch)
        return producers

    def record(self, batch: StoredBatch) -> None:
        if batch.producer_id and not batch.control:
            self.table.record(
                batch.producer_id, (batch.producer_seq, batch.base_offset, batch.record_count)
            )

    def forget_from(self, offset: int) -> None:
        self.table.forget_from(offset)

    def classify(self, batch: StoredBatch) -> tuple[str, int, int]:
        """("new", 0, 0) | ("retry", base offset, record count) | ("out_of_order", 0, 0)."""
        if not batch.producer_id:
            return "new", 0, 0
        known = self.table.entries.get(batch.producer_id)
        if not known:
            return "new", 0, 0
        for seq, base, count in known:
            if seq == batch.producer_seq:
                # A retry is the same batch: another record count under a sequence already in
                # the log is a producer reusing it, never a retry to answer with the old offsets.
                return ("retry", base, count) if count == batch.record_count else OUT_OF_ORDER
        if batch.producer_seq == known[-1][0] + 1:
            return "new", 0, 0
        return OUT_OF_ORDER
