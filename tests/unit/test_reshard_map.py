"""The shard map under any sequence of splits, merges and resizes (src/streamd/reshard.py).

A hypothesis ``RuleBasedStateMachine`` drives the server's pure resharding functions with valid
and invalid operations and checks, after every step, against a trivially correct model (the
list of open ranges):

- the open shards tile 0..2**128-1: no gap, no overlap (``tiles``);
- lineage: every parent of a shard is closed; the children born of one operation cover exactly
  the union of their parents' ranges (a split's two halves, a merge's one child);
- closed shards keep their range and the ending offset they were closed at; ids are unique;
- invalid requests (closed shard, key outside the range, non-adjacent or self merge, resize
  beyond half/double) are refused with InvalidArgumentError and change nothing;
- a resize reaches exactly ``even_hash_ranges(target)`` in ``resize_step_count`` steps.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import pairwise

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from streamd import reshard
from streamd.catalog import ShardMeta, StreamMeta
from streamd_client.errors import InvalidArgumentError, ShardNotFoundError
from streamd_client.model import HASH_KEY_MAX, even_hash_ranges

SHARDS_MAX = 40  # keeps each example small; the arithmetic does not depend on the count


def tiles(ranges: list[tuple[int, int]]) -> bool:
    """True when the ranges, sorted, cover 0..2**128-1 exactly once."""
    expected = 0
    for start, end in sorted(ranges):
        if start != expected or end < start:
            return False
        expected = end + 1
    return expected == HASH_KEY_MAX + 1


def open_ranges(meta: StreamMeta) -> list[tuple[int, int]]:
    return [(s.hash_key_start, s.hash_key_end) for s in meta.open_shards()]


def union_is_one_range(ranges: list[tuple[int, int]]) -> tuple[int, int] | None:
    """The single contiguous range the ranges make up, or None if they leave a gap/overlap."""
    ordered = sorted(ranges)
    for (_, end), (start, _) in pairwise(ordered):
        if start != end + 1:
            return None
    return ordered[0][0], ordered[-1][1]


class ShardMapMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.meta = StreamMeta.new("s", 1, 24, 0)
        self.model: list[tuple[int, int]] = []  # the open ranges, as the model sees them
        self.endings: dict[str, int] = {}  # closed shard -> the ending offset it was given
        self.ranges: dict[str, tuple[int, int]] = {}  # every shard ever -> its range
        self.next_offset = 0

    @initialize(count=st.integers(1, 8))
    def create(self, count: int) -> None:
        self.meta = StreamMeta.new("s", count, 24, 0)
        self.model = list(even_hash_ranges(count))
        self.ranges = {s.shard_id: (s.hash_key_start, s.hash_key_end) for s in self.meta.shards}

    def _ending(self) -> int:
        self.next_offset += 7
        return self.next_offset

    def _commit(self, step: reshard.Step) -> None:
        offsets = tuple(self._ending() for _ in step.parents)
        self.meta = reshard.apply(self.meta, step, offsets)
        self.endings.update(zip(step.parents, offsets, strict=True))
        for shard in self.meta.shards:
            self.ranges.setdefault(shard.shard_id, (shard.hash_key_start, shard.hash_key_end))

    # -- valid operations ----------------------------------------------------------------------

    @precondition(lambda self: len(self.meta.shards) < SHARDS_MAX)
    @rule(data=st.data(), default_key=st.booleans())
    def split(self, data: st.DataObject, default_key: bool) -> None:
        candidates = [s for s in self.meta.open_shards() if s.hash_key_end > s.hash_key_start]
        shard = data.draw(st.sampled_from(candidates))
        at = None
        if not default_key:
            at = data.draw(st.integers(shard.hash_key_start + 1, shard.hash_key_end))
        step = reshard.check_split(self.meta, shard.shard_id, at)
        expected_at = at
        if expected_at is None:
            expected_at = (shard.hash_key_start + shard.hash_key_end + 1) // 2
        assert step.at == expected_at
        self._commit(step)
        self.model.remove((shard.hash_key_start, shard.hash_key_end))
        self.model += [(shard.hash_key_start, expected_at - 1), (expected_at, shard.hash_key_end)]

    @precondition(lambda self: len(self.meta.open_shards()) > 1)
    @rule(data=st.data(), swap=st.booleans())
    def merge(self, data: st.DataObject, swap: bool) -> None:
        shards = self.meta.open_shards()
        i = data.draw(st.integers(0, len(shards) - 2))
        left, right = shards[i], shards[i + 1]
        first, second = (right, left) if swap else (left, right)
        self._commit(reshard.check_merge(self.meta, first.shard_id, second.shard_id))
        self.model.remove((left.hash_key_start, left.hash_key_end))
        self.model.remove((right.hash_key_start, right.hash_key_end))
        self.model.append((left.hash_key_start, right.hash_key_end))
        (child,) = self.meta.children_of(first.shard_id)
        assert (child.parent_shard_id, child.adjacent_parent_shard_id) == (
            first.shard_id,
            second.shard_id,
        )

    @precondition(lambda self: len(self.meta.shards) < SHARDS_MAX - 12)
    @rule(data=st.data())
    def resize(self, data: st.DataObject) -> None:
        current = len(self.meta.open_shards())
        target = data.draw(st.integers(max(1, (current + 1) // 2), min(2 * current, 8)))
        reshard.check_resize(self.meta, target)
        planned = reshard.resize_step_count(self.meta, target)
        steps = 0
        while (step := reshard.next_resize_step(self.meta, target)) is not None:
            assert reshard.resize_step_count(self.meta, target) == planned - steps
            self._commit(step)
            steps += 1
            assert tiles(open_ranges(self.meta))
        assert steps == planned
        assert open_ranges(self.meta) == even_hash_ranges(target)
        self.model = list(even_hash_ranges(target))

    # -- invalid operations: refused, nothing changes ------------------------------------------

    @precondition(lambda self: bool(self.endings))
    @rule(data=st.data())
    def split_a_closed_shard_is_refused(self, data: st.DataObject) -> None:
        shard_id = data.draw(st.sampled_from(sorted(self.endings)))
        with pytest.raises(InvalidArgumentError, match="closed"):
            reshard.check_split(self.meta, shard_id, None)

    @rule(data=st.data(), below=st.booleans())
    def split_outside_the_range_is_refused(self, data: st.DataObject, below: bool) -> None:
        shard = data.draw(st.sampled_from(self.meta.open_shards()))
        if below:
            at = data.draw(st.integers(0, shard.hash_key_start))  # the first key included
        else:
            at = data.draw(st.integers(shard.hash_key_end + 1, HASH_KEY_MAX + 2**8))
        with pytest.raises(InvalidArgumentError):
            reshard.check_split(self.meta, shard.shard_id, at)

    @precondition(lambda self: len(self.meta.open_shards()) > 2)
    @rule(data=st.data())
    def merge_of_non_adjacent_shards_is_refused(self, data: st.DataObject) -> None:
        shards = self.meta.open_shards()
        i = data.draw(st.integers(0, len(shards) - 3))
        j = data.draw(st.integers(i + 2, len(shards) - 1))
        with pytest.raises(InvalidArgumentError, match="adjacent"):
            reshard.check_merge(self.meta, shards[i].shard_id, shards[j].shard_id)

    @rule(data=st.data())
    def merge_with_itself_or_a_closed_shard_is_refused(self, data: st.DataObject) -> None:
        shard = data.draw(st.sampled_from(self.meta.open_shards()))
        with pytest.raises(InvalidArgumentError):
            reshard.check_merge(self.meta, shard.shard_id, shard.shard_id)
        for closed_id in sorted(self.endings)[:3]:
            with pytest.raises(InvalidArgumentError):
                reshard.check_merge(self.meta, shard.shard_id, closed_id)

    @rule()
    def unknown_shard_is_not_found(self) -> None:
        with pytest.raises(ShardNotFoundError):
            reshard.check_split(self.meta, "shardId-000000999999", None)

    @rule(beyond=st.integers(1, 5))
    def resize_beyond_half_or_double_is_refused(self, beyond: int) -> None:
        current = len(self.meta.open_shards())
        with pytest.raises(InvalidArgumentError):
            reshard.check_resize(self.meta, 2 * current + beyond)
        if (current + 1) // 2 - beyond >= 1:
            with pytest.raises(InvalidArgumentError):
                reshard.check_resize(self.meta, (current + 1) // 2 - beyond)

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def open_shards_tile_the_hash_space(self) -> None:
        assert tiles(open_ranges(self.meta))
        assert sorted(open_ranges(self.meta)) == sorted(self.model)
        reshard.check_shard_map(self.meta)

    @invariant()
    def lineage_holds(self) -> None:
        by_id = {s.shard_id: s for s in self.meta.shards}
        born_of: dict[tuple[str, ...], list[ShardMeta]] = defaultdict(list)
        for shard in self.meta.shards:
            parents = tuple(p for p in (shard.parent_shard_id, shard.adjacent_parent_shard_id) if p)
            for parent in parents:
                assert not by_id[parent].is_open, f"{shard.shard_id}'s parent {parent} is open"
            if parents:
                born_of[tuple(sorted(parents))].append(shard)
        for parents, children in born_of.items():
            assert len(children) == (2 if len(parents) == 1 else 1)
            parent_union = union_is_one_range(
                [(by_id[p].hash_key_start, by_id[p].hash_key_end) for p in parents]
            )
            child_union = union_is_one_range([(c.hash_key_start, c.hash_key_end) for c in children])
            assert parent_union is not None and parent_union == child_union, parents
        closed = {s.shard_id for s in self.meta.shards if not s.is_open}
        assert closed == set(self.endings)
        assert all(by_id[s].ending_offset == offset for s, offset in self.endings.items())
        # Every closed shard has children; shards never change their range.
        assert all(self.meta.children_of(s) for s in closed)
        assert all((s.hash_key_start, s.hash_key_end) == self.ranges[i] for i, s in by_id.items())


ShardMapMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=25, deadline=None
)
TestShardMap = ShardMapMachine.TestCase


def test_resize_from_four_to_three_is_two_splits_then_three_merges() -> None:
    meta = StreamMeta.new("s", 4, 24, 0)
    kinds = []
    while (step := reshard.next_resize_step(meta, 3)) is not None:
        kinds.append(step.kind)
        meta = reshard.apply(meta, step, tuple(0 for _ in step.parents))
    assert kinds == ["split", "split", "merge", "merge", "merge"]
    assert open_ranges(meta) == even_hash_ranges(3)
