"""An in-process ``Engine`` over real files in a data dir, for the unit tests of the engine.

``running_engine(data_dir, **config)`` opens the data dir's SQLite metadata store, starts the
engine in a nursery of its own and, on exit, closes the engine, then the store. Extra keyword
arguments go to ``ServerConfig`` (e.g. ``shards_max=6``). Leaving and entering again over the
same data dir is a clean restart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from streamd.config import ServerConfig
from streamd.engine import Engine
from streamd.meta.sqlite import SqliteMetaStore


@asynccontextmanager
async def running_engine(data_dir: Path, **config: Any) -> AsyncIterator[Engine]:
    store = SqliteMetaStore(data_dir / "meta.sqlite3")
    engine = Engine(ServerConfig(data_dir=data_dir, **config), store)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        try:
            yield engine
        finally:
            await engine.close()
            nursery.cancel_scope.cancel()
    await store.aclose()
