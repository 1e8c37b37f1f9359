"""The composition root: a node's parts, built once here and handed what each needs.

``serve`` (``streamd serve`` through ``run_server``) opens the data directory and its metadata
store, then builds, in this order:

    meta store (SQLite in the data dir) -> engine (streams, shard pipelines, catalog)
      -> group service (consumer groups over the same store and a view of the engine)
      -> native front end (frontends/native: every operation bound to engine or groups)
      -> Kinesis gateway (frontends/kinesis: the engine) -> metrics listener

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
from dataclasses import dataclass
from functools import partial

import structlog
import trio

from . import metrics, node_limits
from .config import ServerConfig, parse_host_port
from .engine import Engine
from .frontends.admission import serve_listeners
from .frontends.kinesis.http import Gateway, open_gateway_listeners
from .frontends.native.api import BoundHandler, bind_handlers
from .frontends.native.server import Server
from .groups.service import GroupService, StreamView
from .meta import SqliteMetaStore
from .startup import StartupError, bind_error, lock_data_dir, prepare_data_dir

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class NodeParts:
    """What one node runs, wired together (``build_parts``)."""

    engine: Engine
    groups: GroupService
    handlers: dict[str, BoundHandler]  # the native protocol's operations, bound


def build_parts(config: ServerConfig, store: SqliteMetaStore) -> NodeParts:
    """The engine over ``store``, the group service over the same store and a view of the
    engine, and the native operations bound to them."""
    engine = Engine(config, store)
    groups = GroupService(store, StreamView(engine))
    return NodeParts(engine, groups, bind_handlers(engine, groups))


async def serve(
    config: ServerConfig,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the server until SIGINT/SIGTERM (or cancellation), then shut down cleanly.

    Raises StartupError (streamd/startup.py) for what stops it before it is ready.
    """
    prepare_data_dir(config.data_dir)
    lock_fd = lock_data_dir(config.data_dir)
    node_limits.raise_nofile_limit()  # soft to hard: the shard budget is computed from it
    try:
        store = _open_meta_store(config)
    except BaseException:
        os.close(lock_fd)
        raise
    parts = build_parts(config, store)
    engine = parts.engine
    started = False  # a start-up error is its one line, no log lines around it
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as root:
                listeners, gateway = await _bind_all(config, engine)
                started = True
                log.info(
                    "server.starting",
                    data_dir=str(config.data_dir),
                    listen=config.listen,
                    fsync=config.fsync,
                )
                await root.start(engine.run)
                root.start_soon(parts.groups.run)
                if gateway is not None:  # its body decoder's workers, before its listener
                    await root.start(gateway[0].run)
                server = Server(config, parts.handlers)
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
                        task_status.started((host, port))
                        async for signum in signals:
                            log.info("server.stopping", signal=signal.Signals(signum).name)
                            break
                        accept.cancel_scope.cancel()
                    with trio.move_on_after(config.shutdown_grace_ms / 1000):
                        await engine.close()
                    await trio.sleep(0.05)  # let connection writers send the last acks
                    connections.cancel_scope.cancel()
                root.cancel_scope.cancel()
    finally:
        await store.aclose()
        os.close(lock_fd)
        if started:
            log.info("server.stopped")


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
    config: ServerConfig, engine: Engine
) -> tuple[list[trio.SocketListener], tuple[Gateway, list[trio.SocketListener]] | None]:
    """Bind every address before any stream is opened, so that a taken port is said at once
    and not after a long recovery. Raises StartupError; nothing stays bound then."""
    listeners = await _open_native(config)
    gateway = None
    try:
        gateway = await _open_kinesis(config, engine)
        _serve_metrics(config)  # last: its thread cannot be stopped
    except BaseException:
        for listener in listeners + (gateway[1] if gateway else []):
            await listener.aclose()
        raise
    return listeners, gateway


async def _open_native(config: ServerConfig) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(config.listen_port, host=config.listen_host)
    except OSError as exc:
        raise bind_error("--listen", config.listen, exc) from None


def _serve_metrics(config: ServerConfig) -> None:
    if not config.metrics_listen:
        return
    host, port = parse_host_port(config.metrics_listen, 9464)
    try:
        metrics.serve_metrics(host, port)
    except OSError as exc:
        raise bind_error("--metrics-listen", config.metrics_listen, exc) from None
    log.info("server.metrics", listen=f"{host}:{port}")


async def _open_kinesis(
    config: ServerConfig, engine: Engine
) -> tuple[Gateway, list[trio.SocketListener]] | None:
    """Bind the Kinesis gateway's listener, if configured. Raises StartupError if the address
    is taken (kinesalite runs on 4567 too): ``--kinesis-listen off`` or another port."""
    if config.kinesis_listen is None:
        return None
    try:
        return await open_gateway_listeners(config, engine)
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


def run_server(config: ServerConfig) -> None:
    """Blocking entry point for ``streamd serve``. Raises StartupError (the server did not
    start: the CLI prints it and exits 2), whether it came from a task or from ``serve``."""
    try:
        trio.run(serve, config)
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        sys.exit(130)
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
