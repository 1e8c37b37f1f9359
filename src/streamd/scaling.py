"""On-demand scaling decisions, pure: measured per-shard write load in, one split or merge out.

The trio loop (scaler.py) hands ``StreamScaler.observe`` an ON_DEMAND stream's open shards in
hash-key order, each with its load ratio: the offered write load (accepted plus throttled, as
throttle.py measures it) over the shard's write quota, the larger of the bytes and the records
ratio (1.0 is at the quota). Time is an argument, so the tests run on made-up clocks.

The decision table (``ScalingPolicy`` holds the figures), first match wins:

1. A decision on this stream less than ``cooldown_s`` ago: none (the new shards settle).
2. A shard above ``split_above`` for ``hot_for_s``, fewer than ``shards_max`` open, its range
   wider than one key: split the hottest at the middle of its range.
3. Two adjacent shards whose ratios add up below ``merge_below`` for ``cold_for_s``, more than
   ``shards_min`` open: merge the coldest such pair.
4. Otherwise: none.

Splits are quick (seconds: a hot shard throttles its writers) and merges slow (minutes: a merge
that turns out wrong costs a split later); ``merge_below`` is well under ``split_above`` so a
merged shard is not hot at once. A split halves a shard's load only if its keys spread over its
range: one hot partition key stays hot in whichever child holds it, and the stream then grows
to ``shards_max`` on that shard's side (docs/operations.md says so).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

ON_DEMAND_SHARDS_INITIAL: Final = 4  # what Kinesis gives a new on-demand stream


@dataclass(frozen=True, slots=True)
class ScalingPolicy:
    shards_min: int = ON_DEMAND_SHARDS_INITIAL
    shards_max: int = 64
    split_above: float = 0.8
    hot_for_s: float = 2.0
    merge_below: float = 0.25
    cold_for_s: float = 300.0
    cooldown_s: float = 5.0

    def __post_init__(self) -> None:
        assert 1 <= self.shards_min <= self.shards_max
        assert 0 < self.merge_below < self.split_above
        assert self.hot_for_s >= 0 and self.cold_for_s >= 0 and self.cooldown_s >= 0


@dataclass(frozen=True, slots=True)
class ShardLoad:
    shard_id: str
    hash_key_start: int
    hash_key_end: int
    ratio: float  # offered write load over the write quota (1.0: at it)


@dataclass(frozen=True, slots=True)
class Decision:
    action: Literal["split", "merge"]
    shard_ids: tuple[str, ...]  # split: (the shard,); merge: (left, right), adjacent
    ratio: float  # the split shard's ratio, or the merged pair's sum
    open_shards: int  # before the decision


class StreamScaler:
    """One ON_DEMAND stream's scaling state: since when each shard has been hot, each adjacent
    pair cold, and when the last decision was made."""

    def __init__(self, policy: ScalingPolicy) -> None:
        self.policy = policy
        self._hot_since: dict[str, float] = {}
        self._cold_since: dict[tuple[str, str], float] = {}
        self._last_decision_s: float | None = None

    def observe(self, shards: Sequence[ShardLoad], now_s: float) -> Decision | None:
        """Note the loads of the stream's open shards (hash-key order) at ``now_s``; the
        decision to carry out now, if any (module docstring's table)."""
        policy = self.policy
        self._track(shards, now_s)
        if self._last_decision_s is not None:
            if now_s - self._last_decision_s < policy.cooldown_s:
                return None
        decision = self._split(shards, now_s) or self._merge(shards, now_s)
        if decision is not None:
            self._last_decision_s = now_s
            self._hot_since.clear()  # the shard map changes: measure afresh
            self._cold_since.clear()
        return decision

    def _track(self, shards: Sequence[ShardLoad], now_s: float) -> None:
        policy = self.policy
        hot = {s.shard_id for s in shards if s.ratio > policy.split_above}
        self._hot_since = {i: self._hot_since.get(i, now_s) for i in hot}
        cold = {
            (a.shard_id, b.shard_id)
            for a, b in itertools.pairwise(shards)
            if a.ratio + b.ratio < policy.merge_below
        }
        self._cold_since = {p: self._cold_since.get(p, now_s) for p in cold}

    def _split(self, shards: Sequence[ShardLoad], now_s: float) -> Decision | None:
        policy = self.policy
        if len(shards) >= policy.shards_max:
            return None
        candidates = [
            s
            for s in shards
            if s.shard_id in self._hot_since
            and now_s - self._hot_since[s.shard_id] >= policy.hot_for_s
            and s.hash_key_end > s.hash_key_start
        ]
        if not candidates:
            return None
        hottest = max(candidates, key=lambda s: s.ratio)
        return Decision("split", (hottest.shard_id,), hottest.ratio, len(shards))

    def _merge(self, shards: Sequence[ShardLoad], now_s: float) -> Decision | None:
        policy = self.policy
        if len(shards) <= policy.shards_min:
            return None
        ratios = {s.shard_id: s.ratio for s in shards}
        ripe = [
            (ratios[a] + ratios[b], (a, b))
            for (a, b), since in self._cold_since.items()
            if now_s - since >= policy.cold_for_s
        ]
        if not ripe:
            return None
        total, pair = min(ripe)
        return Decision("merge", pair, total, len(shards))
