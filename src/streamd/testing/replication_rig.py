"""Three replica drivers of one shard with real stores, for tests and the latency figure.

``ReplicaRig`` runs a ``ReplicaDriver`` per replica over a ``FileLogStore`` (real fsync) or a
``MemoryLog``, connected either in one process (``LocalNetwork``, through the codec) or over
real loopback TCP: each replica then has its own native ``Server`` with only the
``replica_messages`` op, its own ``ReplicaHost``, and a ``PeerTransport`` over a ``PeerPool``.
``kill(i)`` cancels a driver (its store stays as it was on disk: closed without the clean
marker, then reopened by ``start(i)``, which runs recovery as a restart would).

``python -m streamd.testing.replication_rig --writes 1000`` prints commit latency over TCP.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import trio

from ..cluster.peers import open_peer_pool
from ..config import ServerConfig
from ..frontends.native.api_replication import bind_replication_handlers
from ..frontends.native.server import Server
from ..replication.driver import DriverConfig, Outbox, ReplicaDriver
from ..replication.metafile import MetaFile
from ..replication.replica import ReplicaConfig
from ..replication.transport import (
    LocalNetwork,
    PeerTransport,
    ReplicaHost,
    ReplicaIds,
    replica_id_of,
)
from ..storage.config import LogConfig
from ..storage.filestore import FileLogStore
from ..storage.logstore import LogStore, make_batch
from ..storage.memlog import MemoryLog

SHARD = ("rig", "shard-000000")


class ReplicaRig:
    def __init__(
        self, root: Path, nursery: trio.Nursery, *, count: int, files: bool, tcp: bool
    ) -> None:
        self.root = root
        self.nursery = nursery
        self.files = files
        self.tcp = tcp
        self.node_ids = [f"node{i}" for i in range(count)]
        self.ids = [replica_id_of(n) for n in self.node_ids]
        self.hosts = [ReplicaHost() for _ in range(count)]
        self.stores: list[LogStore | None] = [None] * count
        self.drivers: list[ReplicaDriver | None] = [None] * count
        self.scopes: list[trio.CancelScope | None] = [None] * count
        self.outboxes: list[Outbox] = []
        self.stopped = [trio.Event() for _ in range(count)]
        self.network = LocalNetwork()
        self.replica_config = ReplicaConfig()

    def dir(self, i: int) -> Path:
        path = self.root / self.node_ids[i]
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _store(self, i: int) -> LogStore:
        store = self.stores[i]
        if store is None:
            if self.files:
                store = FileLogStore(self.dir(i) / "log", LogConfig(fsync=True))
            else:
                store = MemoryLog()
            self.stores[i] = store
        return store

    async def start(self, i: int) -> ReplicaDriver:
        driver = ReplicaDriver(
            *SHARD,
            self.ids[i],
            self._store(i),
            MetaFile(self.dir(i)),
            self.outboxes[i],
            replica_config=self.replica_config,
            config=DriverConfig(),
        )
        scope = trio.CancelScope()
        stopped = self.stopped[i] = trio.Event()

        async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    await driver.run(task_status=task_status)
            finally:
                stopped.set()

        await self.nursery.start(run)
        self.drivers[i], self.scopes[i] = driver, scope
        self.hosts[i].add(driver)
        return driver

    async def kill(self, i: int) -> None:
        """Cancel the driver, then close its store as a crash would (no clean marker)."""
        driver, scope = self.drivers[i], self.scopes[i]
        assert driver is not None and scope is not None
        self.hosts[i].remove(driver)
        scope.cancel()
        with trio.fail_after(10):
            await self.stopped[i].wait()
        store = self.stores[i]
        if isinstance(store, FileLogStore):
            store.close(clean=False)
            self.stores[i] = None
        self.drivers[i] = None

    def driver(self, i: int) -> ReplicaDriver:
        driver = self.drivers[i]
        assert driver is not None
        return driver

    async def elect(self, i: int, epoch: int, timeout_s: float = 5.0) -> ReplicaDriver:
        driver = self.driver(i)
        assert driver.lead(epoch, tuple(self.ids)) is None
        assert await driver.wait_serving(timeout_s), f"replica {i} not serving epoch {epoch}"
        return driver

    async def close(self) -> None:
        for i, driver in enumerate(self.drivers):
            if driver is not None:
                await self.kill(i)


@asynccontextmanager
async def replica_rig(
    root: Path, *, count: int = 3, files: bool = True, tcp: bool = False
) -> AsyncIterator[ReplicaRig]:
    async with trio.open_nursery() as nursery:
        rig = ReplicaRig(root, nursery, count=count, files=files, tcp=tcp)
        if tcp:
            async with open_peer_pool(request_timeout_s=5.0) as pool:
                addresses = {}
                for i, node_id in enumerate(rig.node_ids):
                    server = Server(ServerConfig(), bind_replication_handlers(rig.hosts[i]))
                    listeners = await nursery.start(
                        partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1")
                    )
                    port = listeners[0].socket.getsockname()[1]
                    addresses[node_id] = f"127.0.0.1:{port}"
                ids = ReplicaIds(addresses)
                rig.outboxes = [PeerTransport(n, ids, pool, nursery) for n in rig.node_ids]
                for i in range(count):
                    await rig.start(i)
                try:
                    yield rig
                finally:
                    await rig.close()
                    nursery.cancel_scope.cancel()
        else:
            for i, rid in enumerate(rig.ids):
                rig.network.hosts[rid] = rig.hosts[i]
            rig.outboxes = [rig.network] * count
            for i in range(count):
                await rig.start(i)
            try:
                yield rig
            finally:
                await rig.close()
                nursery.cancel_scope.cancel()


async def measure(root: Path, writes: int, payload_bytes: int) -> list[float]:
    """Commit latency (seconds) of ``writes`` sequential writes over loopback TCP, fsync on."""
    async with replica_rig(root, tcp=True) as rig:
        leader = await rig.elect(0, 1)
        latencies = []
        for k in range(writes):
            started = time.perf_counter()
            await leader.write(make_batch(0, 1, 0, b"%d" % k + b"x" * payload_bytes))
            latencies.append(time.perf_counter() - started)
        return latencies


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--writes", type=int, default=1000)
    parser.add_argument("--payload-bytes", type=int, default=100)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        got = trio.run(measure, Path(root), options.writes, options.payload_bytes)
    got.sort()
    p50 = statistics.median(got) * 1000
    p99 = got[int(len(got) * 0.99) - 1] * 1000
    print(
        f"{len(got)} writes, RF=3, fsync always, loopback TCP: p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    )


if __name__ == "__main__":
    main()
