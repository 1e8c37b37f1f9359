"""The LogStore contract, checked against a trivially correct model (a list of batches).

Hypothesis drives appends (epochs never going back), syncs, truncations at batch boundaries,
reads at any offset, and crashes with recovery. After every step the store's log end, durable
end and epoch history match the model's, and every read returns the model's batches from the
one holding the offset. A crash keeps at least the durable prefix and at most what was written,
and whatever survives is a prefix of what was written.

Both implementations run the same machine: ``MemoryLog`` (a crash is its own ``crash`` plus
``recover``) and ``FileLogStore`` on a fresh temporary directory with small segments, so rolls
happen. On the file log a crash is a close without the clean-shutdown marker, then the active
segment cut at a random byte at or after the durable end (the OS wrote back some prefix of the
page cache, maybe half a batch), then a reopen that runs recovery. The model's post-crash check
is the same for both: anything from the durable end up to the written end, as whole batches.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from streamd.storage.config import LogConfig
from streamd.storage.files import segment_base_of
from streamd.storage.filestore import FileLogStore, encode_stored
from streamd.storage.logstore import EpochStart, LogStore, StoredBatch, make_batch
from streamd.storage.memlog import MemoryLog

FILE_CONFIG = LogConfig(segment_bytes_max=512)


def history_of(batches: list[StoredBatch]) -> tuple[EpochStart, ...]:
    out: list[EpochStart] = []
    for batch in batches:
        if not out or out[-1].epoch != batch.epoch:
            out.append(EpochStart(batch.epoch, batch.base_offset))
    return tuple(out)


class LogStoreMachine(RuleBasedStateMachine):
    """The contract; subclasses say how to make the store and how it crashes."""

    store: LogStore

    def __init__(self) -> None:
        super().__init__()
        self.model: list[StoredBatch] = []
        self.durable = 0  # batches of the model that are durable
        self.written = 0

    def end(self) -> int:
        return self.model[-1].next_offset if self.model else 0

    @rule(counts=st.lists(st.integers(1, 4), min_size=1, max_size=3), bump=st.integers(0, 2))
    def append(self, counts: list[int], bump: int) -> None:
        epoch = (self.model[-1].epoch if self.model else 1) + bump
        batches, offset = [], self.end()
        for count in counts:
            self.written += 1
            batches.append(make_batch(offset, count, epoch, f"b{self.written}".encode()))
            offset += count
        self.store.append(batches)
        self.model += batches

    @rule()
    def sync(self) -> None:
        assert self.store.sync() == self.end()
        self.durable = len(self.model)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        at = data.draw(st.integers(0, len(self.model)))
        offset = self.model[at].base_offset if at < len(self.model) else self.end()
        self.store.truncate_to(offset)
        del self.model[at:]
        self.durable = min(self.durable, at)

    def crash_store(self, rng: random.Random) -> None:
        raise NotImplementedError

    @rule(seed=st.integers(0, 2**16))
    def crash(self, seed: int) -> None:
        self.crash_store(random.Random(seed))
        survived = self.store.log_end()
        kept = [b for b in self.model if b.next_offset <= survived]
        assert len(kept) >= self.durable, "a crash lost synced batches"
        assert not kept or kept[-1].next_offset == survived, "survivor is not a batch prefix"
        self.model = kept
        self.durable = len(kept)  # what survived a crash is on the disk

    @rule(offset=st.integers(0, 60), batches_max=st.integers(1, 5))
    def read(self, offset: int, batches_max: int) -> None:
        holding = [i for i, b in enumerate(self.model) if b.base_offset <= offset < b.next_offset]
        want = self.model[holding[0] : holding[0] + batches_max] if holding else []
        assert self.store.read(offset, batches_max) == want

    @invariant()
    def matches_the_model(self) -> None:
        assert self.store.log_end() == self.end()
        durable_end = self.model[self.durable - 1].next_offset if self.durable else 0
        assert self.store.durable_end() == durable_end
        assert tuple(self.store.epoch_history()) == history_of(self.model)
        assert self.store.first_damaged() is None


class MemoryLogMachine(LogStoreMachine):
    def __init__(self) -> None:
        super().__init__()
        self.memory = MemoryLog()
        self.store = self.memory

    def crash_store(self, rng: random.Random) -> None:
        self.memory.crash(rng)
        self.memory.recover()


class FileLogMachine(LogStoreMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="streamd-logstore-"))
        self.file = FileLogStore(self.directory, FILE_CONFIG)
        self.store = self.file

    def crash_store(self, rng: random.Random) -> None:
        durable_end = self.file.durable_end()
        self.file.close(clean=False)
        bases = [b for b in map(segment_base_of, os.listdir(self.directory)) if b is not None]
        active = max(bases)
        path = self.directory / f"{active:020d}.log"
        durable_bytes = sum(
            len(encode_stored(b))
            for b in self.model
            if active <= b.base_offset and b.next_offset <= durable_end
        )
        size = path.stat().st_size
        assert durable_bytes <= size
        os.truncate(path, rng.randint(durable_bytes, size))
        self.file = FileLogStore(self.directory, FILE_CONFIG)
        self.store = self.file

    def teardown(self) -> None:
        self.file.close()
        shutil.rmtree(self.directory, ignore_errors=True)


TestLogStoreConformance_memory = MemoryLogMachine.TestCase
TestLogStoreConformance_memory.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None
)
TestLogStoreConformance_file = FileLogMachine.TestCase
TestLogStoreConformance_file.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None
)
