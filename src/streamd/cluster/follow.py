"""Keep this node's engine in step with the cluster: streams others changed, leaders moved.

The catalog (``streams/``) and the shard map (``shards/``, ``nodes/``) are shared in etcd;
any node may create, delete or change a stream, and the controller moves shards between
nodes. ``follow`` mirrors the catalog prefix and applies each changed stream's document to
the engine (``Engine.apply_catalog``: open the stream here, refresh its metadata, remove it);
a change of the shard map, and every ``resync_s``, re-applies all streams, which opens the
pipelines of shards this node now leads and closes those it no longer does. Applying is
idempotent, so a missed or repeated change costs nothing but a pass.
"""

from __future__ import annotations

from typing import Final

import structlog
import trio

from streamd_client.errors import StreamdError

from ..catalog import Catalog, StreamMeta
from ..engine import Engine
from .mirror import PrefixMirror
from .shardmap import ShardMap

RESYNC_S_DEFAULT: Final = 5.0
CATALOG_PREFIX: Final = "streams/"

log = structlog.get_logger(__name__)


class Follower:
    def __init__(self, engine: Engine, shard_map: ShardMap, *, resync_s: float) -> None:
        self.engine = engine
        self.shard_map = shard_map
        self.catalog = PrefixMirror(engine.catalog.store, CATALOG_PREFIX)
        self.resync_s = resync_s
        self._dirty: set[str] | None = None  # None: every stream
        self._wake = trio.Event()
        self.catalog.listen(self._streams_changed)
        shard_map.shards.listen(self._everything_changed)
        shard_map.nodes.listen(self._everything_changed)

    def _streams_changed(self, keys: set[str]) -> None:
        if self._dirty is not None:
            self._dirty.update(n for n in map(Catalog.name_of, keys) if n is not None)
        self._wake.set()

    def _everything_changed(self, keys: set[str]) -> None:
        self._dirty = None
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.catalog.run)
            await self.apply(None)  # everything, once, before the node serves
            known = self._known_stream_ids()
            if known is not None:  # before serving: no stream is being created here yet
                await self.engine.remove_unknown_streams(known)
            task_status.started()
            while True:
                with trio.move_on_after(self.resync_s):
                    await self._wake.wait()
                self._wake = trio.Event()
                dirty, self._dirty = self._dirty, set()
                await self.apply(dirty)

    def _known_stream_ids(self) -> set[str] | None:
        """The ids of every stream in the catalog; None if a document is unreadable (then no
        directory is known to be garbage)."""
        known = set()
        for raw in self.catalog.values.values():
            try:
                known.add(StreamMeta.decode(raw).stream_id)
            except Exception:
                return None
        return known

    async def apply(self, names: set[str] | None) -> None:
        if names is None:
            known = {n for n in map(Catalog.name_of, self.catalog.values) if n is not None}
            names = known | set(self.engine.streams)
        for name in sorted(names):
            raw = self.catalog.values.get(CATALOG_PREFIX + name)
            try:
                meta = None if raw is None else StreamMeta.decode(raw)
            except Exception as exc:  # a newer node's format, or damage: leave it alone
                log.error("cluster.unreadable", stream=name, error=repr(exc)[:200])
                continue
            try:
                await self.engine.apply_catalog(name, meta, as_of=self.catalog.revision)
            except StreamdError as exc:  # retried at the next change or resync
                log.warning("cluster.apply_failed", stream=name, code=exc.code, error=str(exc))
                self._dirty = None
            except Exception:  # a disk that refuses a shard's files: not this node's end
                log.exception("cluster.apply_crashed", stream=name)
                self._dirty = None
