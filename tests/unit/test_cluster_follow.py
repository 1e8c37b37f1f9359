"""The follower never applies a mirror of the catalog older than this node's own last write."""

from __future__ import annotations

from typing import Any

from streamd.cluster.follow import Follower


class _Listened:
    def listen(self, listener: Any) -> None:
        pass


class _ShardMap:
    shards = _Listened()
    nodes = _Listened()


class _Catalog:
    def __init__(self) -> None:
        self.store = object()
        self.written: dict[str, int] = {}


class _Engine:
    def __init__(self) -> None:
        self.catalog = _Catalog()
        self.streams: dict[str, Any] = {}
        self.applied: list[str] = []

    async def apply_catalog(self, name: str, meta: Any) -> None:
        self.applied.append(name)


async def test_a_mirror_older_than_this_nodes_write_is_not_applied() -> None:
    engine = _Engine()
    follower = Follower(engine, _ShardMap(), resync_s=5.0)  # type: ignore[arg-type]
    follower.catalog.revision = 10  # the mirror holds neither stream as of revision 10
    engine.catalog.written = {"a": 11, "b": 9}  # "a" written here at 11: the mirror is behind
    await follower.apply({"a", "b"})
    assert engine.applied == ["b"]
    follower.catalog.revision = 11  # the watch brought this node's write
    await follower.apply({"a"})
    assert engine.applied == ["b", "a"]
