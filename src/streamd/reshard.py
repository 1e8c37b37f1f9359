"""Resharding as pure functions on stream metadata: validate, split, merge, plan a resize.

No I/O here: the engine seals the parent shards, drains and syncs them, then commits the
metadata these functions return in one compare-and-swap (see docs/resharding.md). Keeping the
shard-map arithmetic pure lets a property test drive any sequence of operations through it.

Invariant (checked by ``check_shard_map``): the open shards tile 0..2**128-1 with no gap and no
overlap, and every closed shard has an ending offset.

A resize (uniform scaling, like Kinesis's UpdateShardCount) is a sequence of single splits and
merges computed one at a time from the current map (``next_resize_step``), so a resize cut short
by a crash resumes from whatever map was last committed. Splits come first (at every target
boundary missing from the map), then merges (across every boundary the target lacks): the
fewest single operations that reach the target, never more than ``max(current, target) +
splits`` shards open at once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Literal

from streamd_client.errors import InvalidArgumentError, ShardNotFoundError
from streamd_client.model import HASH_KEY_MAX, SHARD_COUNT_MAX, even_hash_ranges, shard_id_of
from streamd_client.summary import summary

from .catalog import ShardMeta, StreamMeta


@dataclass(frozen=True, slots=True)
class Step:
    """One atomic change: split ``parents[0]`` at ``at``, or merge ``parents`` (in that order:
    the second becomes the child's adjacent parent)."""

    kind: Literal["split", "merge"]
    parents: tuple[str, ...]
    at: int | None = None


def _open_shard(meta: StreamMeta, shard_id: str) -> ShardMeta:
    shard = meta.shard(shard_id)
    if shard is None:
        raise ShardNotFoundError(
            f"stream {meta.name!r} has no shard {summary(shard_id)}", shard_id=shard_id
        )
    if not shard.is_open:
        raise InvalidArgumentError(
            f"shard {shard_id} is closed (resharded before); only open shards can change",
            shard_id=shard_id,
        )
    return shard


def check_split(meta: StreamMeta, shard_id: str, at: int | None) -> Step:
    """Validate a split; ``at`` is the right child's first hash key (default: the midpoint).

    Raises ShardNotFoundError, InvalidArgumentError (closed shard, key outside the range).
    """
    shard = _open_shard(meta, shard_id)
    if shard.hash_key_end == shard.hash_key_start:
        raise InvalidArgumentError(f"shard {shard_id} covers one hash key and cannot split")
    if at is None:
        at = shard.hash_key_start + (shard.hash_key_end - shard.hash_key_start + 1) // 2
    if not shard.hash_key_start < at <= shard.hash_key_end:
        raise InvalidArgumentError(
            f"split key {at} must lie in {shard.hash_key_start + 1}..{shard.hash_key_end}, "
            f"the range of shard {shard_id} without its first key",
            shard_id=shard_id,
        )
    return Step("split", (shard_id,), at)


def check_merge(meta: StreamMeta, shard_id: str, adjacent_id: str) -> Step:
    """Validate a merge of two open shards with adjacent hash ranges (either order).

    Raises ShardNotFoundError, InvalidArgumentError (closed, same, or not adjacent).
    """
    if shard_id == adjacent_id:
        raise InvalidArgumentError(f"cannot merge shard {shard_id} with itself")
    first, second = _open_shard(meta, shard_id), _open_shard(meta, adjacent_id)
    if not (
        first.hash_key_end + 1 == second.hash_key_start
        or second.hash_key_end + 1 == first.hash_key_start
    ):
        raise InvalidArgumentError(
            f"shards {shard_id} and {adjacent_id} are not adjacent: their hash key ranges "
            "do not touch"
        )
    return Step("merge", (shard_id, adjacent_id))


def check_resize(meta: StreamMeta, target: int) -> None:
    """Kinesis's bounds for one uniform scaling call: at most double, at least half.

    Raises InvalidArgumentError.
    """
    current = len(meta.open_shards())
    if isinstance(target, bool) or not isinstance(target, int) or not 1 <= target:
        raise InvalidArgumentError(
            f"target shard count must be a positive integer: {summary(target)}"
        )
    if target > SHARD_COUNT_MAX:
        raise InvalidArgumentError(f"target shard count {target} exceeds {SHARD_COUNT_MAX}")
    if target > 2 * current or 2 * target < current:
        raise InvalidArgumentError(
            f"a resize goes from {current} open shards to between {(current + 1) // 2} and "
            f"{2 * current} in one call, not {target}"
        )


def apply(
    meta: StreamMeta, step: Step, ending_offsets: tuple[int, ...], at_ms: int = 0
) -> StreamMeta:
    """The metadata after ``step`` taken at ``at_ms``: parents closed at ``ending_offsets``,
    children open."""
    assert len(ending_offsets) == len(step.parents)
    parents = [_open_shard(meta, p) for p in step.parents]
    index = max(s.index for s in meta.shards) + 1
    if step.kind == "split":
        (parent,) = parents
        assert step.at is not None and parent.hash_key_start < step.at <= parent.hash_key_end
        children = [
            ShardMeta(
                shard_id_of(index),
                index,
                parent.hash_key_start,
                step.at - 1,
                parent_shard_id=parent.shard_id,
                created_ms=at_ms,
            ),
            ShardMeta(
                shard_id_of(index + 1),
                index + 1,
                step.at,
                parent.hash_key_end,
                parent_shard_id=parent.shard_id,
                created_ms=at_ms,
            ),
        ]
    else:
        first, second = parents
        children = [
            ShardMeta(
                shard_id_of(index),
                index,
                min(first.hash_key_start, second.hash_key_start),
                max(first.hash_key_end, second.hash_key_end),
                parent_shard_id=first.shard_id,
                adjacent_parent_shard_id=second.shard_id,
                created_ms=at_ms,
            )
        ]
    ending = dict(zip(step.parents, ending_offsets, strict=True))
    shards = tuple(
        replace(s, ending_offset=ending[s.shard_id], closed_ms=at_ms) if s.shard_id in ending else s
        for s in meta.shards
    )
    new = replace(meta, shards=shards + tuple(children))
    check_shard_map(new)
    return new


def _boundaries(shards: list[ShardMeta]) -> set[int]:
    return {s.hash_key_start for s in shards[1:]}


def _target_boundaries(target: int) -> set[int]:
    return {start for start, _ in even_hash_ranges(target)[1:]}


def resize_step_count(meta: StreamMeta, target: int) -> int:
    """How many single splits and merges take the open shards to ``target`` even ranges."""
    return len(_boundaries(meta.open_shards()) ^ _target_boundaries(target))


def resize_shards_added(meta: StreamMeta, target: int) -> int:
    """How many shards a resize to ``target`` opens: two per split, one per merge (the closed
    parents stay until their records pass retention)."""
    current, wanted = _boundaries(meta.open_shards()), _target_boundaries(target)
    return 2 * len(wanted - current) + len(current - wanted)


def next_resize_step(meta: StreamMeta, target: int) -> Step | None:
    """The next split or merge towards ``target`` even ranges, or None when there."""
    shards = meta.open_shards()
    wanted = _target_boundaries(target)
    for shard in shards:
        inside = sorted(b for b in wanted if shard.hash_key_start < b <= shard.hash_key_end)
        if inside:
            return Step("split", (shard.shard_id,), inside[0])
    for left, right in pairwise(shards):
        if right.hash_key_start not in wanted:
            return Step("merge", (left.shard_id, right.shard_id))
    return None


def check_shard_map(meta: StreamMeta) -> None:
    """Assert the invariant: open shards tile the hash space; closed ones have an end."""
    expected = 0
    for shard in meta.open_shards():
        assert shard.hash_key_start == expected, f"gap or overlap at {expected} in {meta.name}"
        assert shard.hash_key_end >= shard.hash_key_start
        expected = shard.hash_key_end + 1
    assert expected == HASH_KEY_MAX + 1, f"open shards of {meta.name} do not cover the space"
    ids = [s.shard_id for s in meta.shards]
    assert len(ids) == len(set(ids)), f"duplicate shard ids in {meta.name}"
