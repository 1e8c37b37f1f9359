"""TCP proxies a fault scenario controls, for partitions on loopback (scenario 3).

``Proxy`` listens on a free loopback port and forwards each connection to ``target()`` (asked
at connect time, so a restarted node on another port is still found). ``cut()`` closes every
connection it carries and refuses new ones (accepted, then closed at once: the peer sees a
reset, as across a broken link); ``heal()`` forwards again. Bytes are copied as they come,
never looked at. Run ``serve`` in a nursery; cancelling it closes everything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from .cluster import LocalCluster

COPY_BYTES = 64 * 1024
CONNECT_TIMEOUT_S = 5.0


class Proxy:
    def __init__(self, name: str, target: Callable[[], str]) -> None:
        self.name = name
        self.target = target
        self.port = 0
        self.is_cut = False
        self._listeners: list[trio.SocketListener] = []
        self._links: set[trio.CancelScope] = set()

    @property
    def address(self) -> str:
        assert self.port, "serve() has not started"
        return f"127.0.0.1:{self.port}"

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = self._listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(self._link, self._listeners, handler_nursery=nursery)

    def cut(self) -> None:
        self.is_cut = True
        for scope in list(self._links):
            scope.cancel()

    def heal(self) -> None:
        self.is_cut = False

    async def _link(self, inbound: trio.SocketStream) -> None:
        async with inbound:
            if self.is_cut:
                return
            host, _, port = self.target().rpartition(":")
            outbound: trio.SocketStream | None = None
            with trio.move_on_after(CONNECT_TIMEOUT_S):
                try:
                    outbound = await trio.open_tcp_stream(host, int(port))
                except OSError:
                    return  # the target is down: the peer sees its connection closed
            if outbound is None:
                return
            with trio.CancelScope() as scope:
                self._links.add(scope)
                try:
                    async with outbound, trio.open_nursery() as pipes:
                        pipes.start_soon(_copy, inbound, outbound, pipes.cancel_scope)
                        pipes.start_soon(_copy, outbound, inbound, pipes.cancel_scope)
                finally:
                    self._links.discard(scope)


async def _copy(source: trio.SocketStream, sink: trio.SocketStream, done: trio.CancelScope) -> None:
    try:
        while data := await source.receive_some(COPY_BYTES):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    done.cancel()  # one direction ended: the link is over


class Network:
    """A native proxy and an etcd proxy per node of a ``LocalCluster``: each node advertises its
    native proxy (peers and clients reach it only through it) and reaches etcd only through its
    etcd proxy. ``serve_args`` replaces the cluster's, so install it before the nodes start."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.native = {n: Proxy(f"{n} native", _endpoint_of(cluster, n)) for n in cluster.nodes}
        self.etcd = {n: Proxy(f"{n} to etcd", lambda: cluster.etcd.endpoint) for n in cluster.nodes}

    async def start(self, nursery: trio.Nursery) -> None:
        for proxy in [*self.native.values(), *self.etcd.values()]:
            await nursery.start(proxy.serve)
        plain = self.cluster.serve_args

        def serve_args(node_id: str) -> list[str]:
            args = plain(node_id)
            args[args.index("--cluster") + 1] = f"etcd://{self.etcd[node_id].address}"
            return [*args, "--advertise", self.native[node_id].address]

        self.cluster.serve_args = serve_args  # type: ignore[method-assign]

    def heal(self) -> None:
        for proxy in [*self.native.values(), *self.etcd.values()]:
            proxy.heal()


def _endpoint_of(cluster: LocalCluster, node_id: str) -> Callable[[], str]:
    return lambda: cluster.endpoint(node_id)
