"""ShardLog against a trivially correct model: a list of the batches it should hold.

Hypothesis drives appends (with arrival times moving on, so segments roll by size and by age),
reads at random offsets, byte budgets and end offsets, timestamp look-ups, retention, clean and
unclean reopens, and crashes that tear the last batch. After every step the log's offsets match
the model's, and every read returns exactly the model's greedy answer.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import deque
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from streamd.storage import FdCache, LogConfig, ShardLog
from streamd_client import batch as batchfmt

CONFIG = LogConfig(
    fsync=False, segment_bytes_max=700, segment_age_ms_max=400, index_interval_bytes=128
)


def header(batch: bytes) -> batchfmt.BatchHeader:
    return batchfmt.parse_header(batch)


def expected_read(model: list[bytes], offset: int, max_bytes: int, end: int) -> list[bytes]:
    out: list[bytes] = []
    total = 0
    if offset >= end:
        return out
    for batch in model:
        h = header(batch)
        if h.next_offset <= offset:
            continue
        if h.base_offset >= end or (out and total + len(batch) > max_bytes):
            break
        out.append(batch)
        total += len(batch)
    return out


def expected_producers(model: list[bytes]) -> dict[int, list[tuple[int, int, int]]]:
    table: dict[int, deque[tuple[int, int, int]]] = {}
    for batch in model:
        h = header(batch)
        if h.producer_id:
            table.setdefault(h.producer_id, deque(maxlen=5)).append(
                (h.producer_seq, h.base_offset, h.record_count)
            )
    return {pid: list(entries) for pid, entries in table.items()}


class ShardLogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="streamd-storage-model-"))
        self.fds = FdCache(2)  # fewer than the segments: files are closed and reopened all along
        self.log = ShardLog.open(self.directory, CONFIG, fds=self.fds)
        self.model: list[bytes] = []  # the batches the log should hold, in order
        self.start = 0
        self.next = 0
        self.clock_ms = 1_000
        self.seqs = {1: 0, 2: 0}

    def teardown(self) -> None:
        self.log.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    @rule(
        records=st.integers(1, 4),
        advance_ms=st.integers(0, 150),
        producer=st.sampled_from([0, 0, 1, 2]),
        data_bytes=st.integers(1, 150),
    )
    def append(self, records: int, advance_ms: int, producer: int, data_bytes: int) -> None:
        self.clock_ms += advance_ms
        seq = self.seqs.get(producer, 0)
        if producer:
            self.seqs[producer] = seq + 1
        keys = [f"k{self.next + i}" for i in range(records)]
        batch = batchfmt.encode_batch(
            keys,
            [bytes(16)] * records,
            [os.urandom(data_bytes) for _ in range(records)],
            base_offset=self.log.next_offset,
            first_arrival_ms=self.clock_ms,
            last_arrival_ms=self.clock_ms,
            producer_id=producer,
            producer_seq=seq,
        )
        self.log.append(batch)
        self.model.append(batch)
        self.next = header(batch).next_offset

    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        offset = data.draw(st.integers(self.start, self.next), label="offset")
        end = data.draw(st.integers(offset, self.next), label="end")
        max_bytes = data.draw(st.integers(1, 1_500), label="max_bytes")
        got = self.log.read(offset, max_bytes, end)
        assert got == expected_read(self.model, offset, max_bytes, end)

    @rule(back_ms=st.integers(-50, 1_000))
    def offset_for_timestamp(self, back_ms: int) -> None:
        ts = self.clock_ms - back_ms
        found = next(
            (header(b).base_offset for b in self.model if header(b).last_arrival_ms >= ts),
            self.next,
        )
        assert self.log.offset_for_timestamp(ts) == found

    @rule(back_ms=st.integers(0, 1_200))
    def retention(self, back_ms: int) -> None:
        cutoff = self.clock_ms - back_ms
        deleted = self.log.delete_segments_before(cutoff)
        start = self.log.start_offset
        gone = [b for b in self.model if header(b).base_offset < start]
        assert all(header(b).last_arrival_ms < cutoff for b in gone)
        assert (deleted > 0) == (start > self.start)
        self.model = self.model[len(gone) :]
        assert start == (header(self.model[0]).base_offset if self.model else self.next)
        self.start = start
        first_end = [*self.log.segment_base_offsets, self.next][1]
        first_segment = [b for b in self.model if header(b).base_offset < first_end]
        if first_segment:  # retention stopped at a segment holding something new enough
            assert max(header(b).last_arrival_ms for b in first_segment) >= cutoff

    @rule(clean=st.booleans(), verify_all=st.booleans())
    def reopen(self, clean: bool, verify_all: bool) -> None:
        self.log.close(clean=clean)
        self.log = ShardLog.open(self.directory, CONFIG, verify_all=verify_all, fds=self.fds)
        report = self.log.recovery
        assert report.clean == clean
        assert report.truncated_bytes == 0 and report.corrupt_ranges == []
        assert {p: list(e) for p, e in self.log.producers.items()} == expected_producers(self.model)

    @precondition(lambda self: self.model)
    @rule(cut_bytes=st.integers(1, 10_000))
    def crash_tearing_the_last_batch(self, cut_bytes: int) -> None:
        last = self.model[-1]
        active = self.log.segment_base_offsets[-1]
        if header(last).base_offset < active:
            return  # the last batch sits in a sealed segment; crashes tear only the active one
        self.log.close(clean=False)
        path = self.directory / f"{active:020d}.log"
        cut_bytes = min(cut_bytes, len(last))
        os.truncate(path, path.stat().st_size - cut_bytes)
        self.log = ShardLog.open(self.directory, CONFIG, verify_all=False, fds=self.fds)
        assert self.log.recovery.truncated_bytes == len(last) - cut_bytes
        self.model.pop()
        self.next = header(last).base_offset

    @invariant()
    def offsets_match_the_model(self) -> None:
        assert self.log.start_offset == self.start
        assert self.log.next_offset == self.next
        last_ms = header(self.model[-1]).last_arrival_ms if self.model else 0
        assert self.log.last_arrival_ms == last_ms
        assert self.log.corrupt_ranges == []

    @invariant()
    def open_files_stay_within_the_cache_bound(self) -> None:
        assert len(self.fds) <= self.fds.fds_max  # nothing pinned or unsynced between steps


ShardLogMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None
)
test_shard_log_matches_a_list = ShardLogMachine.TestCase
