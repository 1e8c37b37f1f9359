"""A local streamd cluster for tests and ``streamd dev cluster``: one etcd and N node processes.

``LocalCluster`` starts a single-member etcd (``EtcdProcess``, data under ``ROOT/etcd``) and N
``streamd serve --cluster etcd://... --node-id nodeK`` processes (``ServerProcess``, data under
``ROOT/nodeK``, log in ``ROOT/nodeK.server.log``), every one on loopback. Ports are given
(``base_port=7071`` puts node K on 7071 + K - 1, as ``dev cluster`` does) or, with 0, picked
free; a picked port someone takes before the node binds it is picked again (up to three times).
The nodes are launched together and then waited for, each until it prints its ready line(s)
(in cluster mode ``streamd cluster: node ID joined cluster CID`` comes first), so a start
costs one node's start time, not N.

Faults are per node, by id (``"node2"``) or number (``2``): ``kill9``, ``terminate``,
``sigstop``/``sigcont`` (a hung node: sockets open, no answers), ``restart`` (same data dir,
same ports, after its old registration is gone from etcd, so that a node killed -9 does not
meet its own unexpired lease as a duplicate id). ``wait_registered`` waits until the nodes'
registrations are in etcd (``nodes/<id>`` under the namespace), read over etcd's JSON gateway.

Why one class for tests and the dev command: ``dev cluster`` is what a user runs to try the
cluster, and the 3-node tests must exercise exactly that. Cleanup: ``stop()`` SIGTERMs every
node at once (a paused one is resumed first), SIGKILLs what is still there after the grace,
then stops etcd; ``close()`` also removes a temporary root. Both are idempotent and run from
the context manager; every child also has the ``atexit`` and ``PR_SET_PDEATHSIG`` guards of
``ServerProcess``/``EtcdProcess``. Every wait is bounded.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import signal
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final

from ..meta import etcd_codec
from ..meta.keys import NODES_PREFIX
from .etcd import EtcdProcess, EtcdStartError
from .process import START_TIMEOUT_S_DEFAULT, ServerProcess, ServerStartError, free_ports

STOP_GRACE_S_DEFAULT: Final = 10.0
UNREGISTER_TIMEOUT_S_DEFAULT: Final = 10.0  # a killed node's lease lapses after its TTL (2 s)
_PORT_ATTEMPTS_MAX: Final = 3
_POLL_S: Final = 0.05
_ETCD_READ_TIMEOUT_S: Final = 2.0
_SIGNAL_TIMEOUT_S: Final = 5.0

_live: weakref.WeakSet[LocalCluster] = weakref.WeakSet()


class ClusterStartError(RuntimeError):
    """etcd or a node did not start; ``part`` says which ("etcd", "node2")."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(f"{part}: {message}")
        self.part = part


def node_ids(count: int) -> list[str]:
    return [f"node{k}" for k in range(1, count + 1)]


class LocalCluster:
    """etcd and ``nodes`` streamd node processes on ``host``. Start with ``start()`` or ``with``."""

    def __init__(
        self,
        nodes: int = 3,
        *,
        root_dir: Path | str | None = None,
        host: str = "127.0.0.1",
        base_port: int = 0,
        kinesis_base_port: int = 0,
        etcd_port: int = 0,
        kinesis: bool = True,
        namespace: str = "streamd/",
        cluster_id: str | None = None,
        fsync: str = "always",
        log_format: str = "json",
        log_level: str = "info",
        extra_args: Sequence[str] = (),
        start_timeout_s: float = START_TIMEOUT_S_DEFAULT,
        stop_grace_s: float = STOP_GRACE_S_DEFAULT,
        own_process_group: bool = False,
    ) -> None:
        if nodes < 1:
            raise ValueError(f"a cluster needs at least one node, not {nodes}")
        for name, port in (("base_port", base_port), ("kinesis_base_port", kinesis_base_port)):
            if port and not 1 <= port <= 65536 - nodes:
                raise ValueError(f"{name} {port}: ports {port}..{port + nodes - 1} do not exist")
        if etcd_port and not 1 <= etcd_port <= 65534:
            raise ValueError(f"etcd_port {etcd_port}: it and the next port (peer) must exist")
        self._owns_dir = root_dir is None
        self.root_dir = Path(root_dir or tempfile.mkdtemp(prefix="streamd-cluster-"))
        self.root_dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.namespace = namespace
        self.cluster_id = cluster_id
        self.kinesis = kinesis
        self.stop_grace_s = stop_grace_s
        self.etcd = EtcdProcess(
            self.root_dir / "etcd",
            name="streamd-etcd",
            host=host,
            client_port=etcd_port,
            peer_port=etcd_port + 1 if etcd_port else 0,
            start_timeout_s=start_timeout_s,
            own_process_group=own_process_group,
        )
        self._fixed_ports = base_port != 0
        self._fixed_kinesis_ports = kinesis_base_port != 0
        self._extra_args = list(extra_args)
        self.nodes: dict[str, ServerProcess] = {}
        for k, node_id in enumerate(node_ids(nodes)):
            self.nodes[node_id] = ServerProcess(
                self.root_dir / node_id,
                fsync=fsync,
                port=base_port + k if base_port else 0,
                host=host,
                log_format=log_format,
                log_level=log_level,
                start_timeout_s=start_timeout_s,
                kinesis=kinesis,
                kinesis_port=kinesis_base_port + k if kinesis_base_port else 0,
                own_process_group=own_process_group,
            )
        self._started = False
        self._closed = False
        _live.add(self)

    # -- life cycle ------------------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        if not self._started:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> LocalCluster:
        """Start etcd, then every node; return once all are ready. Raises ClusterStartError
        (everything started is stopped again) or EtcdNotInstalledError (no etcd binary)."""
        if self._closed:
            raise RuntimeError("this LocalCluster is closed")
        if self._started:
            raise RuntimeError("the cluster is already started")
        self._started = True
        try:
            try:
                self.etcd.start()
            except EtcdStartError as exc:
                if "address already in use" in self.etcd.log_tail():
                    raise ClusterStartError(
                        "etcd", f"port {self.etcd.client_port} or {self.etcd.peer_port} is in use"
                    ) from exc
                raise ClusterStartError("etcd", str(exc)) from exc
            self._start_nodes(list(self.nodes))
        except BaseException:
            self.stop()
            raise
        return self

    def _start_nodes(self, ids: list[str]) -> None:
        """Launch the nodes together, then wait for each; a node whose free-picked port was
        taken meanwhile is launched again on fresh ports."""
        for attempt in range(1, _PORT_ATTEMPTS_MAX + 1):
            for node_id in ids:
                self._assign_ports(node_id)
                self._launch(node_id)
            retry: list[str] = []
            failure: tuple[str, ServerStartError] | None = None
            for node_id in ids:
                node = self.nodes[node_id]
                try:
                    node.wait_ready()
                except ServerStartError as exc:
                    if self._port_taken(node) and attempt < _PORT_ATTEMPTS_MAX:
                        retry.append(node_id)
                    elif failure is None:
                        failure = (node_id, exc)
            if failure is not None:
                failed_id, error = failure
                raise ClusterStartError(failed_id, str(error)) from error
            if not retry:
                return
            for node_id in retry:
                self.nodes[node_id].port = 0
                self.nodes[node_id].kinesis_port = 0
            ids = retry

    def _port_taken(self, node: ServerProcess) -> bool:
        if self._fixed_ports or self._fixed_kinesis_ports:
            return False  # the ports were asked for: someone else on them is the answer
        return "address already in use" in node.log_tail(600)

    def _assign_ports(self, node_id: str) -> None:
        node = self.nodes[node_id]
        wanted = int(node.port == 0) + int(self.kinesis and node.kinesis_port == 0)
        picked = free_ports(self.host, wanted) if wanted else []
        if node.port == 0:
            node.port = picked.pop(0)
        if self.kinesis and node.kinesis_port == 0:
            node.kinesis_port = picked.pop(0)

    def _launch(self, node_id: str) -> None:
        node = self.nodes[node_id]
        node.extra_args = [*self.serve_args(node_id), *self._extra_args]
        node.launch()

    def serve_args(self, node_id: str) -> list[str]:
        """The cluster flags of one node's ``streamd serve`` (ServerProcess adds the rest)."""
        args = ["--cluster", self.cluster_url, "--node-id", node_id]
        args += ["--cluster-namespace", self.namespace]
        if self.cluster_id is not None:
            args += ["--cluster-id", self.cluster_id]
        return args

    def stop(self) -> None:
        """Stop every node (SIGTERM to all at once, SIGKILL after the grace), then etcd."""
        running = [node for node in self.nodes.values() if node.exit_status() is None]
        for node in running:
            node.stop_signal(signal.SIGCONT)  # a paused node cannot act on SIGTERM
            node.stop_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_s
        try:
            for node in self.nodes.values():
                node.terminate(timeout_s=max(0.1, deadline - time.monotonic()))
        finally:
            self.etcd.terminate()

    def signal_all(self, signum: int) -> None:
        """Send ``signum`` to every live child without waiting (safe in a signal handler: a
        ``stop()`` under way then sees them exit, e.g. SIGKILL for "stop now")."""
        for node in self.nodes.values():
            node.stop_signal(signum)
        self.etcd.stop_signal(signum)

    def close(self) -> None:
        """``stop()``, then remove a temporary root. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.stop()
        finally:
            _live.discard(self)
            for node in self.nodes.values():
                node.close()
            self.etcd.close()
            if self._owns_dir:
                shutil.rmtree(self.root_dir, ignore_errors=True)

    # -- where things are ------------------------------------------------------------------------

    @property
    def cluster_url(self) -> str:
        """``etcd://HOST:PORT``, what ``serve --cluster`` and ``cluster status`` take."""
        return f"etcd://{self.etcd.endpoint}"

    @property
    def bootstrap(self) -> str:
        """Every node's native address, comma-separated: a client's bootstrap list."""
        return ",".join(node.endpoint for node in self.nodes.values())

    def node(self, which: str | int) -> ServerProcess:
        """A node by id (``"node2"``) or number (``2``)."""
        node_id = f"node{which}" if isinstance(which, int) else which
        try:
            return self.nodes[node_id]
        except KeyError:
            raise KeyError(f"no node {which!r} (nodes: {', '.join(self.nodes)})") from None

    def endpoint(self, which: str | int) -> str:
        """A node's native ``HOST:PORT``."""
        return self.node(which).endpoint

    def kinesis_endpoint(self, which: str | int) -> str:
        """A node's Kinesis gateway, ``http://HOST:PORT`` (boto3's ``endpoint_url``)."""
        return self.node(which).kinesis_endpoint

    def exited(self) -> dict[str, int]:
        """Every part that exited by itself (not stopped through this class): name -> status."""
        gone = {
            node_id: status
            for node_id, node in self.nodes.items()
            if (status := node.exit_status()) is not None
        }
        if (status := self.etcd.exit_status()) is not None:
            gone["etcd"] = status
        return gone

    # -- faults ----------------------------------------------------------------------------------

    def kill9(self, which: str | int) -> int:
        """SIGKILL a node and wait for it; returns its exit status."""
        return self.node(which).kill9()

    def terminate(self, which: str | int) -> int:
        """SIGTERM a node (clean shutdown: it revokes its lease), SIGKILL after the grace."""
        node = self.node(which)
        node.stop_signal(signal.SIGCONT)
        return node.terminate(timeout_s=self.stop_grace_s)

    def sigstop(self, which: str | int) -> None:
        """Pause a node: it keeps its sockets but answers nothing (its lease will lapse).
        Returns once the kernel shows it stopped."""
        node = self.node(which)
        node.stop_signal(signal.SIGSTOP)
        _wait_state(node.pid, stopped=True)

    def sigcont(self, which: str | int) -> None:
        """Resume a paused node; returns once it runs again."""
        node = self.node(which)
        node.stop_signal(signal.SIGCONT)
        _wait_state(node.pid, stopped=False)

    def restart(
        self, which: str | int, *, unregister_timeout_s: float = UNREGISTER_TIMEOUT_S_DEFAULT
    ) -> ServerProcess:
        """Start a stopped node again (same data dir and ports) once etcd no longer holds its
        old registration. Raises ClusterStartError, TimeoutError (still registered)."""
        node = self.node(which)
        node_id = next(i for i, n in self.nodes.items() if n is node)
        if node.running:
            raise RuntimeError(f"stop {node_id} (kill9 or terminate) before restarting it")
        if node.exit_status() is not None:
            node.kill9()  # it exited by itself: reap it (its pipe and log) before a new start
        self.wait_unregistered(node_id, timeout_s=unregister_timeout_s)
        node.extra_args = [*self.serve_args(node_id), *self._extra_args]
        try:
            return node.restart()
        except ServerStartError as exc:
            raise ClusterStartError(node_id, str(exc)) from exc

    # -- registrations in etcd -------------------------------------------------------------------

    def registered(self) -> set[str]:
        """The node ids registered in etcd now (``nodes/`` under the namespace)."""
        prefix = (self.namespace + NODES_PREFIX).encode()
        body = etcd_codec.range_request(prefix, etcd_codec.prefix_range_end(prefix))
        request = urllib.request.Request(
            f"{self.etcd.url}/v3/kv/range",
            data=body,
            headers={"content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=_ETCD_READ_TIMEOUT_S) as answer:
            kvs = etcd_codec.decode_range(answer.read()).kvs
        return {kv.key[len(prefix) :].decode() for kv in kvs}

    def wait_registered(
        self, ids: Sequence[str] | None = None, *, timeout_s: float = START_TIMEOUT_S_DEFAULT
    ) -> None:
        """Wait until every node of ``ids`` (default: all) is registered. Raises TimeoutError."""
        wanted = set(self.nodes if ids is None else ids)
        self._wait(lambda found: wanted <= found, timeout_s, f"{sorted(wanted)} registered")

    def wait_unregistered(self, node_id: str, *, timeout_s: float) -> None:
        self._wait(lambda found: node_id not in found, timeout_s, f"{node_id} unregistered")

    def _wait(self, done: Callable[[set[str]], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        found: set[str] = set()
        while True:
            with contextlib.suppress(OSError, urllib.error.URLError):
                found = self.registered()
                if done(found):
                    return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"not {what} within {timeout_s} s (registered: {sorted(found)})")
            time.sleep(_POLL_S)


def _wait_state(pid: int, *, stopped: bool, timeout_s: float = _SIGNAL_TIMEOUT_S) -> None:
    """Wait until /proc says ``pid`` is (or is no longer) stopped. Raises TimeoutError."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return  # gone: nothing left to wait for
        if (stat[stat.rindex(")") + 2] == "T") == stopped:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"process {pid} not {'stopped' if stopped else 'running'} in time")
        time.sleep(0.01)


@atexit.register
def _close_all() -> None:
    for cluster in list(_live):
        with contextlib.suppress(Exception):
            cluster.close()
