"""The composition root: a node's parts, built once here and handed what each needs.

``serve`` (``streamd serve`` through ``run_server``) opens the data directory and its metadata
store, then builds, in this order:

    meta store (SQLite in the data dir) -> engine (streams, shard pipelines, catalog)
      -> group service (consumer groups over the same store and a view of the engine)
      -> native front end (frontends/native: every operation bound to engine or groups)
      -> Kinesis gateway (frontends/kinesis: the engine)
      -> console (frontends/console: the engine and the bound operations) -> metrics listener

Cluster mode (``--cluster etcd://...``; docs/cluster.md) swaps the SQLite store for etcd and adds,
before the engine runs: the node's membership (join_cluster: cluster id, registration on a
lease), the shard map (which shards this node leads), the peer pool (connections to the other
nodes, for forwarded puts and reads), the follower (applies other nodes' catalog changes and
leadership moves to the engine) and the controller candidate (serve_as_controller).

No part builds another or reaches into one's private fields: each gets its collaborators here.
Every address is bound before any stream is opened (a taken port is said at once, not after a
long recovery). Shutdown (SIGINT/SIGTERM): stop accepting, let the shard pipelines drain and
acknowledge what they hold (bounded by ``shutdown_grace_ms``), close the logs cleanly, then drop
the connections.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import structlog
import trio

from streamd_client.errors import MetadataUnavailableError

from . import metrics, node_limits
from .cluster.follow import RESYNC_S_DEFAULT, Follower
from .cluster.peers import PeerPool, open_peer_pool
from .cluster.replicated import ReplicationWiring
from .cluster.shardmap import ShardMap
from .config import ServerConfig, parse_host_port
from .controller.errors import ClusterError, NodeLostError
from .controller.membership import Membership, MembershipConfig, join_cluster
from .controller.service import serve_as_controller
from .engine import Engine
from .frontends.admission import serve_listeners
from .frontends.console.server import ConsoleServer, open_console
from .frontends.kinesis.http import Gateway, open_gateway_listeners
from .frontends.native.api import BoundHandler, bind_handlers
from .frontends.native.api_replication import bind_replication_handlers
from .frontends.native.server import Server
from .groups.cluster import GroupCluster
from .groups.service import GroupService, StreamView
from .meta import MetaStore, SqliteMetaStore
from .meta.errors import MetaError
from .meta.etcd import EtcdMetaStore
from .meta.keys import JoinReport
from .monitoring import ShardMetricsCollector
from .replication.transport import PeerTransport, ReplicaHost, ReplicaIdCollision, ReplicaIds
from .scaler import OnDemandScaler
from .scaling import ON_DEMAND_SHARDS_INITIAL, ScalingPolicy
from .security.setup import NodeSecurity, open_node_security
from .startup import StartupError, bind_error, lock_data_dir, prepare_data_dir

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class NodeParts:
    """What one node runs, wired together (``build_parts``)."""

    engine: Engine
    groups: GroupService
    handlers: dict[str, BoundHandler]  # the native protocol's operations, bound
    scaler: OnDemandScaler | None = None  # ON_DEMAND streams' scaler (embedded default only)


@dataclass(frozen=True)
class ClusterParts:
    """What cluster mode adds (``open_cluster_parts``); the engine is built over them."""

    shard_map: ShardMap
    peers: PeerPool
    # Replication (streams with replication factor > 1): this node's replicas by shard, the
    # transport their messages go out through, and the replica id -> node address map.
    replica_host: ReplicaHost
    transport: PeerTransport
    replica_ids: ReplicaIds

    def replication(self, store: MetaStore) -> ReplicationWiring:
        shard_map = self.shard_map

        async def report_to_controller(report: JoinReport) -> None:
            await store.txn([], puts=[(report.key, report.encode())])

        def refresh_ids() -> None:
            addresses = {n: native for n, (native, _) in shard_map.node_addresses().items()}
            try:
                self.replica_ids.update(addresses)
            except ReplicaIdCollision as exc:  # loud, never silent (transport.py)
                log.error("cluster.replica_id_collision", error=str(exc))

        return ReplicationWiring(
            self.replica_host,
            self.transport,
            shard_map.assignment,
            lambda: shard_map.lease_valid(),
            refresh_ids,
            lambda: len(shard_map.node_addresses()),
            report_to_controller,
        )


def build_parts(
    config: ServerConfig, store: MetaStore, cluster: ClusterParts | None = None
) -> NodeParts:
    """The engine over ``store``, the group service over the same store and a view of the
    engine, and the native operations bound to them."""
    if cluster is None:
        engine = Engine(config, store)
    else:
        engine = Engine(
            config,
            store,
            locator=cluster.shard_map,
            peers=cluster.peers,
            replication=cluster.replication(store),
        )
    # Cluster mode: each group's coordinator runs on the node its placement names; the others
    # forward its requests there (groups/cluster.py).
    placements = None if cluster is None else GroupCluster(store, cluster.shard_map, cluster.peers)
    groups = GroupService(store, StreamView(engine), cluster=placements)
    handlers = bind_handlers(engine, groups)
    if cluster is not None:
        handlers |= bind_replication_handlers(cluster.replica_host)
    # ON_DEMAND streams: split and merged from their measured load (scaler.py). In cluster mode
    # a node sees only the shards it leads, too little to decide on: not run there yet.
    scaler = None
    if cluster is None:
        policy = ScalingPolicy(
            shards_max=max(config.on_demand_shards_max, ON_DEMAND_SHARDS_INITIAL)
        )
        scaler = OnDemandScaler(engine, policy, interval_s=config.on_demand_interval_ms / 1000)
    return NodeParts(engine, groups, handlers, scaler)


@asynccontextmanager
async def open_cluster_parts(
    config: ServerConfig, store: MetaStore, security: NodeSecurity | None = None
) -> AsyncIterator[ClusterParts]:
    assert config.node_id is not None and config.advertise is not None
    peer_security = None if security is None else security.peers
    async with open_peer_pool(peer_security) as peers, trio.open_nursery() as senders:
        ids = ReplicaIds()
        # lease_valid is bound once the node has joined (``_run_cluster``).
        yield ClusterParts(
            ShardMap(store, config.node_id, config.advertise),
            peers,
            ReplicaHost(),
            PeerTransport(config.node_id, ids, peers, senders),
            ids,
        )
        senders.cancel_scope.cancel()


async def _run_cluster(
    config: ServerConfig,
    store: MetaStore,
    parts: NodeParts,
    cluster: ClusterParts,
    root: trio.Nursery,
    membership: Membership,
) -> None:
    """Start what a cluster node runs beside the engine: the shard map (loaded before the
    engine opens any stream, so it opens exactly the shards it leads), the follower, the
    controller candidate, and the peer pool's idle sweep. Returns once all are started."""
    cluster.shard_map.lease_valid = membership.lease_valid
    await root.start(cluster.shard_map.run)
    await root.start(parts.engine.run)
    await root.start(Follower(parts.engine, cluster.shard_map, resync_s=RESYNC_S_DEFAULT).run)
    root.start_soon(_controller_candidate, store, membership, config)
    root.start_soon(_sweep_idle_peers, cluster.peers)


async def _controller_candidate(
    store: MetaStore, membership: Membership, config: ServerConfig
) -> None:
    try:
        await serve_as_controller(
            store,
            membership,
            replica_grace_s=config.replica_grace_s,
            preferred_leader_delay_s=config.preferred_leader_delay_s,
        )
    except NodeLostError:
        pass  # the node's own watcher (``_stop_when_lost``) ends the node


async def _sweep_idle_peers(peers: PeerPool) -> None:
    while True:
        await trio.sleep(peers.idle_s / 2)
        await peers.close_idle()


async def _open_store(config: ServerConfig, security: NodeSecurity) -> MetaStore:
    if config.cluster is None:
        return _open_meta_store(config)
    try:
        with trio.fail_after(10):
            return await EtcdMetaStore.connect(
                config.cluster, namespace=config.cluster_namespace, tls=security.etcd_tls
            )
    except (MetadataUnavailableError, TimeoutError) as exc:
        raise StartupError(
            f"--cluster {','.join(config.cluster)}: etcd does not answer ({exc}); start etcd, "
            "or check the address"
        ) from None
    except MetaError as exc:  # answered, but not as etcd 3.4+ does: say so in one line
        said = " ".join(str(exc).split())[:300]
        raise StartupError(
            f"--cluster {','.join(config.cluster)}: this is not an etcd 3.4+ answering ({said})"
        ) from None


def _cluster_id_file(config: ServerConfig) -> Path:
    return config.data_dir / "cluster-id"


def _membership_config(config: ServerConfig) -> MembershipConfig:
    """The node's identity; the cluster id comes from --cluster-id or, once the node has
    joined a cluster, from its data dir (so a data dir never joins another cluster)."""
    assert config.node_id is not None and config.advertise is not None
    cluster_id = config.cluster_id
    path = _cluster_id_file(config)
    if path.exists():
        recorded = path.read_text().strip()
        if cluster_id is not None and cluster_id != recorded:
            raise StartupError(
                f"--cluster-id {cluster_id}: --data-dir {config.data_dir} belongs to cluster "
                f"{recorded} (start with another --data-dir)"
            )
        cluster_id = recorded
    return MembershipConfig(
        config.node_id, config.advertise, config.advertise_kinesis or "", cluster_id
    )


@asynccontextmanager
async def _membership(config: ServerConfig, store: MetaStore) -> AsyncIterator[Membership | None]:
    """Join the cluster (cluster mode), leave it on exit. Refusals are StartupErrors."""
    if config.cluster is None:
        yield None
        return
    membership_config = _membership_config(config)
    joined = False
    try:
        async with join_cluster(store, membership_config) as membership:
            joined = True
            path = _cluster_id_file(config)
            if not path.exists():
                path.write_text(membership.cluster_id + "\n")
            print(
                f"streamd cluster: node {membership.node_id} joined cluster "
                f"{membership.cluster_id}",
                flush=True,
            )
            yield membership
    except (ClusterError, MetadataUnavailableError) as exc:
        if joined:
            raise
        raise StartupError(f"--cluster: {exc}") from None


async def _stop_when_lost(membership: Membership | None, scope: trio.CancelScope) -> None:
    if membership is None:
        return
    await membership.lost.wait()
    log.error("server.node_lost", node=membership.node_id)
    print(
        f"streamd: node {membership.node_id} lost its cluster membership (its lease lapsed); "
        "stopping",
        file=sys.stderr,
        flush=True,
    )
    scope.cancel()


async def serve(
    config: ServerConfig,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the server until SIGINT/SIGTERM (or cancellation), then shut down cleanly.

    Raises StartupError (streamd/startup.py) for what stops it before it is ready.
    """
    security = open_node_security(config)  # every TLS and credentials file, read once here
    prepare_data_dir(config.data_dir)
    lock_fd = lock_data_dir(config.data_dir)
    metrics.watch_data_dir(config.data_dir)  # disk space, read at each scrape
    node_limits.raise_nofile_limit()  # soft to hard: the shard budget is computed from it
    try:
        store = await _open_store(config, security)
    except BaseException:
        os.close(lock_fd)
        raise
    try:
        async with _cluster_parts(config, store, security) as cluster:
            parts = build_parts(config, store, cluster)
            security.keyring = parts.engine.keyring  # re-read at SIGHUP with the rest
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                listeners, gateway, console = await _bind_all(config, parts, security)
                try:
                    async with _membership(config, store) as membership:
                        lost = await _run_node(
                            config,
                            store,
                            parts,
                            cluster,
                            membership,
                            listeners,
                            gateway,
                            console,
                            signals,
                            task_status,
                            security,
                        )
                finally:  # closed already once served; not if the node never got that far
                    for listener in listeners + _listeners_of(gateway, console):
                        await listener.aclose()
    finally:
        await store.aclose()
        os.close(lock_fd)
    if lost:
        raise NodeLostError("this node lost its cluster membership")


async def _run_node(
    config: ServerConfig,
    store: MetaStore,
    parts: NodeParts,
    cluster: ClusterParts | None,
    membership: Membership | None,
    listeners: list[trio.SocketListener],
    gateway: tuple[Gateway, list[trio.SocketListener]] | None,
    console: tuple[ConsoleServer, list[trio.SocketListener]] | None,
    signals: AsyncIterator[int],
    task_status: trio.TaskStatus[tuple[str, int]],
    security: NodeSecurity,
) -> bool:
    """Start every part, serve until a signal (or, in a cluster, the loss of this node's
    membership), then shut down in order. Returns whether the membership was lost."""
    engine = parts.engine
    async with trio.open_nursery() as root:
        log.info(
            "server.starting",
            data_dir=str(config.data_dir),
            listen=config.listen,
            fsync=config.fsync,
            cluster=config.cluster is not None,
        )
        try:
            if cluster is not None and membership is not None:
                await _run_cluster(config, store, parts, cluster, root, membership)
            else:
                await root.start(engine.run)
            if parts.scaler is not None:
                await root.start(parts.scaler.run)
            root.start_soon(parts.groups.run)
            if gateway is not None:  # its body decoder's workers, before its listener
                await root.start(gateway[0].run)
            if console is not None:  # its sampler and admin actions
                await root.start(console[0].console.run)
            await root.start(security.reload_on_sighup)  # certificates and credentials
            server = Server(config, parts.handlers, guard=security.guard, tls=security.native_tls)
            host, port = listeners[0].socket.getsockname()[:2]
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as accept:
                    accept.start_soon(
                        partial(
                            serve_listeners,
                            handler_nursery=connections,
                            events="connection",
                            listener="native",
                        ),
                        server.handle,
                        listeners,
                    )
                    print(f"streamd ready: listening on {host}:{port}", flush=True)
                    log.info("server.ready", listen=f"{host}:{port}")
                    if gateway is not None:
                        _serve_kinesis(accept, connections, *gateway)
                    if console is not None:
                        _serve_console(accept, connections, *console)
                    task_status.started((host, port))
                    with trio.CancelScope() as waiting:
                        accept.start_soon(_stop_when_lost, membership, waiting)
                        async for signum in signals:
                            log.info("server.stopping", signal=signal.Signals(signum).name)
                            break
                    accept.cancel_scope.cancel()
                if parts.scaler is not None:
                    parts.scaler.stop()  # no reshard starts while the engine closes
                with trio.move_on_after(config.shutdown_grace_ms / 1000):
                    await engine.close()
                await trio.sleep(0.05)  # let connection writers send the last acks
                connections.cancel_scope.cancel()
            root.cancel_scope.cancel()
        finally:
            log.info("server.stopped")
    return membership is not None and membership.lost.is_set()


@asynccontextmanager
async def _cluster_parts(
    config: ServerConfig, store: MetaStore, security: NodeSecurity
) -> AsyncIterator[ClusterParts | None]:
    if config.cluster is None:
        yield None
        return
    async with open_cluster_parts(config, store, security) as cluster:
        yield cluster


def _open_meta_store(config: ServerConfig) -> SqliteMetaStore:
    path = config.data_dir / "meta.sqlite3"
    try:
        return SqliteMetaStore(path)
    except sqlite3.Error as exc:  # not a database, or damaged: nothing we should repair blindly
        raise StartupError(
            f"--data-dir {config.data_dir}: cannot open {path}: {exc} (restore it from a backup, "
            "or start with another --data-dir)"
        ) from None


async def _bind_all(
    config: ServerConfig, parts: NodeParts, security: NodeSecurity
) -> tuple[
    list[trio.SocketListener],
    tuple[Gateway, list[trio.SocketListener]] | None,
    tuple[ConsoleServer, list[trio.SocketListener]] | None,
]:
    """Bind every address before any stream is opened, so that a taken port is said at once
    and not after a long recovery. Raises StartupError; nothing stays bound then."""
    listeners = await _open_native(config)
    gateway = console = None
    try:
        gateway = await _open_kinesis(config, parts.engine, security)
        console = await _open_console(config, parts, security)
        _serve_metrics(config, parts.engine)  # last: its thread cannot be stopped
    except BaseException:
        for listener in listeners + _listeners_of(gateway, console):
            await listener.aclose()
        raise
    return listeners, gateway, console


def _listeners_of(
    gateway: tuple[Gateway, list[trio.SocketListener]] | None,
    console: tuple[ConsoleServer, list[trio.SocketListener]] | None,
) -> list[trio.SocketListener]:
    return (gateway[1] if gateway else []) + (console[1] if console else [])


async def _open_native(config: ServerConfig) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(config.listen_port, host=config.listen_host)
    except OSError as exc:
        raise bind_error("--listen", config.listen, exc) from None


def _serve_metrics(config: ServerConfig, engine: Engine) -> None:
    if not config.metrics_listen:
        return
    host, port = parse_host_port(config.metrics_listen, 9464)
    try:
        metrics.serve_metrics(host, port)
    except OSError as exc:
        raise bind_error("--metrics-listen", config.metrics_listen, exc) from None
    metrics.REGISTRY.register(ShardMetricsCollector(engine))  # enhanced monitoring, per shard
    log.info("server.metrics", listen=f"{host}:{port}")


async def _open_kinesis(
    config: ServerConfig, engine: Engine, security: NodeSecurity
) -> tuple[Gateway, list[trio.SocketListener]] | None:
    """Bind the Kinesis gateway's listener, if configured. Raises StartupError if the address
    is taken (kinesalite runs on 4567 too): ``--kinesis-listen off`` or another port."""
    if config.kinesis_listen is None:
        return None
    try:
        return await open_gateway_listeners(
            config, engine, guard=security.guard, tls=security.kinesis_tls
        )
    except OSError as exc:
        raise bind_error(
            "--kinesis-listen",
            config.kinesis_listen,
            exc,
            hint="choose another with --kinesis-listen HOST:PORT, or turn the gateway off "
            "with --kinesis-listen off",
        ) from None


def _serve_kinesis(
    accept: trio.Nursery,
    connections: trio.Nursery,
    gateway: Gateway,
    listeners: list[trio.SocketListener],
) -> None:
    accept.start_soon(
        partial(
            serve_listeners,
            handler_nursery=connections,
            events="kinesis.connection",
            listener="kinesis",
        ),
        gateway.handle,
        listeners,
    )
    host, port = listeners[0].socket.getsockname()[:2]
    print(f"streamd kinesis ready: listening on {host}:{port}", flush=True)
    log.info("server.kinesis_ready", listen=f"{host}:{port}", sigv4=bool(gateway.signed))


async def _open_console(
    config: ServerConfig, parts: NodeParts, security: NodeSecurity
) -> tuple[ConsoleServer, list[trio.SocketListener]] | None:
    """Bind the console's listener, if configured (docs/console.md). Raises StartupError."""
    if config.console_listen is None:
        return None
    try:
        return await open_console(config, parts.engine, parts.handlers, security.guard)
    except OSError as exc:
        raise bind_error(
            "--console-listen",
            config.console_listen,
            exc,
            hint="choose another with --console-listen HOST:PORT, or turn the console off "
            "with --console-listen off",
        ) from None


def _serve_console(
    accept: trio.Nursery,
    connections: trio.Nursery,
    console: ConsoleServer,
    listeners: list[trio.SocketListener],
) -> None:
    accept.start_soon(
        partial(
            serve_listeners,
            handler_nursery=connections,
            events="console.connection",
            listener="console",
        ),
        console.handle,
        listeners,
    )
    host, port = listeners[0].socket.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"streamd console ready: http://{shown}:{port}/", flush=True)
    log.info("server.console_ready", listen=f"{host}:{port}", read_only=console.console.read_only)


def run_server(config: ServerConfig) -> None:
    """Blocking entry point for ``streamd serve``. Raises StartupError (the server did not
    start: the CLI prints it and exits 2), whether it came from a task or from ``serve``."""
    try:
        trio.run(serve, config)
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        sys.exit(130)
    except NodeLostError:  # said on stderr; a supervisor restarts the node, which joins again
        sys.exit(3)
    except BaseExceptionGroup as group:
        startup = _startup_error_in(group)
        if startup is None:
            raise
        raise startup from None


def _startup_error_in(group: BaseExceptionGroup[BaseException]) -> StartupError | None:
    """The StartupError a nursery wrapped (with nothing but cancellations beside it)."""
    matched, rest = group.split(StartupError)
    if matched is None or (rest is not None and rest.split(trio.Cancelled)[1] is not None):
        return None
    leaf: BaseException = matched
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    assert isinstance(leaf, StartupError)
    return leaf
