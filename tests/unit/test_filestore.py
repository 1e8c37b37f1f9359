"""FileLogStore beyond the shared conformance suite: what only a file log can do to a batch.

A clean reopen (recovery trusts the index and scans nothing) must still give back the epoch
history, every header field and the control flag; a flipped byte on disk must never be served;
a full disk in the middle of a multi-batch append must leave nothing of that append behind.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from streamd.storage.config import LogConfig
from streamd.storage.filestore import FileLogStore, encode_stored
from streamd.storage.logstore import (
    EpochStart,
    StoreCorruptError,
    StoredBatch,
    StoreFullError,
    make_batch,
)

CONFIG = LogConfig(segment_bytes_max=512)


def seeded(directory: Path) -> tuple[FileLogStore, list[StoredBatch]]:
    store = FileLogStore(directory, CONFIG)
    batches = [
        make_batch(0, 3, 1, b"one", producer_id=7, producer_seq=0),
        make_batch(3, 1, 2, b"", control=True),
        make_batch(4, 2, 2, b"two", producer_id=7, producer_seq=1),
        *(make_batch(6 + i, 1, 5, b"x" * 40) for i in range(12)),  # rolls a few segments
    ]
    store.append(batches)
    assert store.sync() == 18
    return store, batches


def test_a_clean_reopen_gives_back_batches_history_and_durable_end(tmp_path: Path) -> None:
    store, batches = seeded(tmp_path)
    store.close()
    store = FileLogStore(tmp_path, CONFIG)
    assert store.read(0, 100) == batches
    assert store.read(4, 1) == [batches[2]] and store.read(5, 1) == [batches[2]]
    assert tuple(store.epoch_history()) == (EpochStart(1, 0), EpochStart(2, 3), EpochStart(5, 6))
    assert store.log_end() == store.durable_end() == 18
    assert len(list(tmp_path.glob("*.log"))) > 1
    store.close()


def test_a_truncation_survives_a_reopen_with_the_history_following_it(tmp_path: Path) -> None:
    store, batches = seeded(tmp_path)
    store.truncate_to(4)
    assert tuple(store.epoch_history()) == (EpochStart(1, 0), EpochStart(2, 3))
    store.close(clean=False)
    store = FileLogStore(tmp_path, CONFIG)
    assert store.read(0, 100) == batches[:2]
    assert tuple(store.epoch_history()) == (EpochStart(1, 0), EpochStart(2, 3))
    store.close()


def test_a_flipped_byte_on_disk_is_never_served(tmp_path: Path) -> None:
    store, batches = seeded(tmp_path)
    store.close()
    path = tmp_path / f"{0:020d}.log"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    store = FileLogStore(tmp_path, CONFIG)
    visited: list[StoredBatch] = []
    damaged = store.first_damaged(visited.append)
    assert damaged is not None
    with pytest.raises(StoreCorruptError) as caught:
        store.read(0, 100)
    assert caught.value.offset == damaged
    intact = [b for b in batches if b.next_offset <= damaged]
    assert visited == intact  # the scrub hands over every batch before the damage, in order
    if intact:  # what lies before the damage is still served
        assert store.read(0, len(intact)) == intact
    store.close()


def test_a_full_disk_mid_append_leaves_nothing_of_that_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, batches = seeded(tmp_path)
    real_pwrite = os.pwrite
    calls = 0

    def second_write_fails(fd: int, data: bytes | memoryview, position: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, position)

    monkeypatch.setattr(os, "pwrite", second_write_fails)
    more = [make_batch(18, 1, 6, b"a"), make_batch(19, 1, 6, b"b")]
    with pytest.raises(StoreFullError):
        store.append(more)
    monkeypatch.undo()
    assert calls >= 2
    assert store.log_end() == 18 and store.read(18, 5) == []
    assert store.epoch_history()[-1] == EpochStart(5, 6)
    store.append(more)
    assert store.read(0, 100) == [*batches, *more]
    store.close()


@pytest.mark.parametrize("clean", [True, False])
def test_a_log_cut_at_a_batch_whose_header_rotted(tmp_path: Path, clean: bool) -> None:
    """A replica repairing itself cuts its log at the damaged batch: finding where that batch
    starts must not need its header (the damaged_replica scenario stopped the replica for good
    on 'unreadable batch header')."""
    store, batches = seeded(tmp_path)
    store.close(clean=clean)
    position = sum(len(encode_stored(b)) for b in batches[:2])  # batch [4, 6) in segment 0
    path = tmp_path / f"{0:020d}.log"
    data = bytearray(path.read_bytes())
    data[position + 2] ^= 0x40
    path.write_bytes(bytes(data))
    store = FileLogStore(tmp_path, CONFIG)
    assert store.first_damaged() == 4
    store.truncate_to(4)
    assert store.log_end() == 4 and store.read(0, 100) == batches[:2]
    store.append(batches[2:4])  # refetched from the leader
    assert store.sync() == 7 and store.read(0, 100) == batches[:4]
    store.close()
