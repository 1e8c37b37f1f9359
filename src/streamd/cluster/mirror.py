"""A live copy of every key under one prefix of the metadata store: snapshot, then watch.

``PrefixMirror.run`` reads the prefix once (``snapshot``), then applies the watch's batches in
revision order, so ``values`` is always the store's state at ``revision``. A watch that breaks
(etcd away, compaction) is resumed: after a compaction the mirror reads the prefix again and
reports every key that changed in between, so a listener never misses a change, and a listener
that acts on the *current* value (``values``) rather than on events is never wrong for long.

Listeners are plain callables taking the set of keys that changed; they run in the mirror's
task and must not block (set an event, note the keys).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import structlog
import trio

from streamd_client.errors import MetadataUnavailableError

from ..meta.errors import CompactedError
from ..meta.store import MetaStore

_BACKOFF_S: Final = 0.2
_SNAPSHOT_TIMEOUT_S: Final = 5.0

log = structlog.get_logger(__name__)

Listener = Callable[[set[str]], None]


class PrefixMirror:
    def __init__(self, store: MetaStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix
        self.values: dict[str, bytes] = {}  # full key -> value, as of ``revision``
        self.revision = 0
        self.loaded = trio.Event()
        self._listeners: list[Listener] = []

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _notify(self, keys: set[str]) -> None:
        if keys:
            for listener in self._listeners:
                listener(keys)

    async def load(self) -> None:
        """Read the whole prefix (at start, and after a compaction); report what changed."""
        with trio.fail_after(_SNAPSHOT_TIMEOUT_S):
            snapshot = await self.store.snapshot(self.prefix)
        fresh = {kv.key: kv.value for kv in snapshot.kvs}
        changed = {
            k for k in fresh.keys() | self.values.keys() if fresh.get(k) != self.values.get(k)
        }
        self.values, self.revision = fresh, snapshot.revision
        self.loaded.set()
        self._notify(changed)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load, then follow the prefix until cancelled (started: once loaded)."""
        await self._load_retrying()
        task_status.started()
        while True:
            try:
                async with self.store.watch(self.prefix, self.revision + 1) as watch:
                    async for batch in watch:
                        changed: set[str] = set()
                        for event in batch.events:
                            if event.type == "delete":
                                self.values.pop(event.key, None)
                            else:
                                self.values[event.key] = event.value
                            changed.add(event.key)
                        self.revision = batch.revision
                        self._notify(changed)
            except CompactedError:
                await self._load_retrying()
            except (MetadataUnavailableError, TimeoutError) as exc:
                log.warning("cluster.watch_failed", prefix=self.prefix, error=str(exc))
                await trio.sleep(_BACKOFF_S)

    async def _load_retrying(self) -> None:
        while True:
            try:
                await self.load()
                return
            except (MetadataUnavailableError, TimeoutError) as exc:
                log.warning("cluster.load_failed", prefix=self.prefix, error=str(exc))
                await trio.sleep(_BACKOFF_S)
