"""The per-producer idempotence table: recording, eviction and cutting a suffix."""

from __future__ import annotations

from streamd.storage.producers import PRODUCER_BATCHES_MAX, ProducerTable


def test_forget_from_drops_batches_at_or_past_the_cut_and_empty_producers() -> None:
    table = ProducerTable(producers_max=10)
    table.record(1, (1, 0, 2))
    table.record(2, (1, 2, 1))
    table.record(1, (2, 3, 2))
    table.record(3, (1, 5, 1))
    table.forget_from(3)
    assert {pid: list(batches) for pid, batches in table.entries.items()} == {
        1: [(1, 0, 2)],
        2: [(1, 2, 1)],
    }
    assert [pid for pid, _ in table.ordered()] == [2, 1]  # recency of the survivors kept
    table.record(3, (1, 3, 1))  # and the table goes on taking appends
    assert [pid for pid, _ in table.ordered()] == [2, 1, 3]


def test_forget_from_past_the_end_changes_nothing() -> None:
    table = ProducerTable(producers_max=2)
    for seq in range(1, PRODUCER_BATCHES_MAX + 3):
        table.record(9, (seq, seq * 10, 1))
    before = table.ordered()
    table.forget_from(10_000)
    assert table.ordered() == before
    assert len(table.entries[9]) == PRODUCER_BATCHES_MAX
