"""The LogStore contract, checked against a trivially correct model (a list of batches).

Hypothesis drives appends (epochs never going back), syncs, truncations at batch boundaries,
reads at any offset, and crashes with recovery. After every step the store's log end, durable
end and epoch history match the model's, and every read returns the model's batches from the
one holding the offset. A crash keeps at least the durable prefix and at most what was written,
and whatever survives is a prefix of what was written.

``STORES`` lists the implementations; today the in-memory one (the file log's adapter to this
interface is still to come, issue 12 step 6).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from streamd.storage.logstore import EpochStart, StoredBatch, make_batch
from streamd.storage.memlog import MemoryLog

STORES: dict[str, Callable[[], MemoryLog]] = {"memory": MemoryLog}


def history_of(batches: list[StoredBatch]) -> tuple[EpochStart, ...]:
    out: list[EpochStart] = []
    for batch in batches:
        if not out or out[-1].epoch != batch.epoch:
            out.append(EpochStart(batch.epoch, batch.base_offset))
    return tuple(out)


class LogStoreMachine(RuleBasedStateMachine):
    make_store: Callable[[], MemoryLog] = MemoryLog

    def __init__(self) -> None:
        super().__init__()
        self.store = self.make_store()
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

    @rule(seed=st.integers(0, 2**16))
    def crash(self, seed: int) -> None:
        self.store.crash(random.Random(seed))
        self.store.recover()
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


for _name, _factory in STORES.items():
    _machine = type(f"LogStore_{_name}", (LogStoreMachine,), {"make_store": staticmethod(_factory)})
    _case = _machine.TestCase
    _case.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
    globals()[f"TestLogStoreConformance_{_name}"] = _case

del _name, _factory, _machine, _case
