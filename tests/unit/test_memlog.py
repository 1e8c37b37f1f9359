"""The in-memory LogStore: written apart from durable, and what a crash does to it."""

from __future__ import annotations

import random

import pytest

from streamd.storage.logstore import EpochStart, StoreCorruptError, StoreFullError, make_batch
from streamd.storage.memlog import MemoryLog


def filled(epochs: list[int]) -> MemoryLog:
    log = MemoryLog()
    offset = 0
    for i, epoch in enumerate(epochs):
        log.append([make_batch(offset, 2, epoch, f"b{i}".encode())])
        offset += 2
    return log


def test_epoch_history_is_rebuilt_from_batches() -> None:
    log = filled([1, 1, 3, 3, 4])
    assert log.epoch_history() == (EpochStart(1, 0), EpochStart(3, 4), EpochStart(4, 8))
    log.truncate_to(6)
    assert log.epoch_history() == (EpochStart(1, 0), EpochStart(3, 4))
    assert log.log_end() == 6


def test_read_returns_whole_batches_from_the_one_holding_the_offset() -> None:
    log = filled([1, 1, 1])
    assert [b.base_offset for b in log.read(3, 10)] == [2, 4]
    assert log.read(6, 10) == []


def test_a_crash_keeps_everything_synced() -> None:
    for seed in range(50):
        log = filled([1, 1])
        assert log.sync() == 4
        log.append([make_batch(4, 2, 1, b"late"), make_batch(6, 2, 1, b"later")])
        log.crash(random.Random(seed))
        log.recover()
        assert 4 <= log.log_end() <= 8
        assert log.durable_end() == log.log_end()
        assert log.first_damaged() is None


def test_a_crash_can_lose_unsynced_batches_and_tear_the_last_write() -> None:
    lost = torn = 0
    for seed in range(100):
        log = filled([1, 1])
        log.sync()
        log.append([make_batch(4, 2, 1, b"late")])
        log.crash(random.Random(seed))
        lost += log.log_end() == 4
        torn += log.recover()
        assert log.log_end() in (4, 6)
    assert lost and torn


def test_a_bit_flip_is_never_served() -> None:
    log = filled([1, 1, 1])
    log.sync()
    damaged = log.flip_bit(random.Random(1))
    assert damaged is not None
    assert log.first_damaged() == damaged
    with pytest.raises(StoreCorruptError) as caught:
        log.read(0, 10)
    assert caught.value.offset == damaged
    log.truncate_to(damaged)
    assert log.first_damaged() is None


def test_a_full_disk_writes_nothing() -> None:
    log = filled([1])
    log.full = True
    with pytest.raises(StoreFullError):
        log.append([make_batch(2, 1, 1, b"x")])
    assert log.log_end() == 2
