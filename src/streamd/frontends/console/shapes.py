"""The geometry of a stream's shards: hash-key bar rows and the lineage forest (pure).

The hash-key space is 0..2**128-1. Each shard covers a range of it; open shards tile the whole
space, closed ones (parents of splits and merges) lie under their children. ``bar_rows`` puts
each shard in the row of its generation (original shards in row 0, a child one row below its
deepest parent), so the bar reads top-down as the stream's history. ``lineage`` gives the
forest of splits and merges: a merged child hangs under its first parent and names the other.
Both take plain shard descriptions (``ShardMeta.describe()``) so that they are tested alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

HASH_SPACE: Final = 2**128


@dataclass(frozen=True, slots=True)
class BarCell:
    shard_id: str
    row: int
    left: float  # 0..1 of the space
    width: float  # 0..1 of the space
    is_open: bool
    start: int
    end: int


@dataclass(slots=True)
class LineageNode:
    shard_id: str
    is_open: bool
    merged_with: str | None = None  # the adjacent parent, for a merge's child
    children: list[LineageNode] = field(default_factory=list)


def generations(shards: list[dict[str, Any]]) -> dict[str, int]:
    """Each shard's generation: 0 without parents, else one more than its deepest parent."""
    known = {s["shard_id"] for s in shards}
    depth: dict[str, int] = {}
    pending = list(shards)
    for _ in range(len(shards) + 1):  # parents come first in practice; bound the passes
        left = []
        for s in pending:
            parents = [p for p in (s["parent_shard_id"], s["adjacent_parent_shard_id"]) if p]
            parents = [p for p in parents if p in known]
            if all(p in depth for p in parents):
                depth[s["shard_id"]] = 1 + max((depth[p] for p in parents), default=-1)
            else:
                left.append(s)
        if not left:
            break
        pending = left
    for s in pending:  # a cycle cannot happen; be total anyway
        depth.setdefault(s["shard_id"], 0)
    return depth


def bar_rows(shards: list[dict[str, Any]], cells_max: int = 2000) -> tuple[list[BarCell], int]:
    """The cells to draw (open shards first when over ``cells_max``) and how many were left
    out."""
    depth = generations(shards)
    ordered = sorted(shards, key=lambda s: (s["ending_sequence"] is not None, s["shard_id"]))
    drawn = ordered[:cells_max]
    cells = [
        BarCell(
            s["shard_id"],
            depth[s["shard_id"]],
            s["hash_key_start"] / HASH_SPACE,
            (s["hash_key_end"] - s["hash_key_start"] + 1) / HASH_SPACE,
            s["ending_sequence"] is None,
            s["hash_key_start"],
            s["hash_key_end"],
        )
        for s in drawn
    ]
    cells.sort(key=lambda c: (c.row, c.start))
    return cells, len(ordered) - len(drawn)


def lineage(shards: list[dict[str, Any]]) -> list[LineageNode]:
    """The forest of splits and merges, roots (shards without parents) in id order."""
    nodes = {
        s["shard_id"]: LineageNode(s["shard_id"], s["ending_sequence"] is None) for s in shards
    }
    roots: list[LineageNode] = []
    for s in sorted(shards, key=lambda s: s["shard_id"]):
        node = nodes[s["shard_id"]]
        parent = s["parent_shard_id"]
        if parent in nodes:
            node.merged_with = s["adjacent_parent_shard_id"]
            nodes[parent].children.append(node)
        else:
            roots.append(node)
    return roots


def range_percent(start: int, end: int) -> str:
    """A range as a share of the space, for people: "0 % to 50 %"."""
    return f"{start * 100 / HASH_SPACE:.3g} % to {(end + 1) * 100 / HASH_SPACE:.3g} %"
