"""A node's security parts, built from its ServerConfig, and their reload on SIGHUP.

``open_node_security`` reads every file once at start (a bad file is a StartupError naming
its flag, before any port is bound): the Guard (``--credentials``, plus the gateway's key pairs
without a policy), a ServerTls per listener that has a certificate, and, in cluster mode, the
client side of this node's own connections: TLS to other nodes (``--cluster-tls-ca/-cert/
-key``) and to etcd (``--etcd-tls-ca/-cert/-key``) and the key it signs in to other nodes with
(``--node-access-key``; its secret comes from the credentials file, never the command line).

``reload_on_sighup`` re-reads the credentials file and the listeners' certificates at each
SIGHUP; what fails to load is logged and the old one kept. Nothing is dropped: open
connections keep their TLS session and their principal's name.
"""

from __future__ import annotations

import signal
import ssl
from dataclasses import dataclass
from pathlib import Path

import structlog
import trio

from streamd_client.auth import Credentials
from streamd_client.errors import InvalidArgumentError
from streamd_client.security import Security, client_context

from ..config import ServerConfig
from ..startup import StartupError
from .guard import Guard
from .keyring import Keyring, KeyringError
from .principals import PolicyFileError
from .tls import ServerTls, TlsFiles

log = structlog.get_logger(__name__)


@dataclass
class NodeSecurity:
    guard: Guard
    native_tls: ServerTls | None = None
    kinesis_tls: ServerTls | None = None
    peers: Security | None = None  # this node's client side towards other nodes
    etcd_tls: ssl.SSLContext | None = None  # this node's client side towards etcd
    keyring: Keyring | None = None  # encryption at rest (--keyring): the engine's

    def reload(self) -> None:
        self.guard.reload()
        if self.keyring is not None:
            try:
                self.keyring.reload()
                log.info("security.keyring_reloaded")
            except KeyringError as exc:  # the keys in use stay
                log.error("security.keyring_reload_failed", error=str(exc))
        for tls in (self.native_tls, self.kinesis_tls):
            if tls is not None:
                tls.reload()

    async def reload_on_sighup(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.open_signal_receiver(signal.SIGHUP) as signals:
            task_status.started()
            async for _ in signals:
                log.info("security.sighup")
                self.reload()


def open_node_security(config: ServerConfig) -> NodeSecurity:
    """Raises StartupError naming the flag whose file is wrong."""
    from ..frontends.kinesis.plaintext import plaintext_refusal as kinesis_refusal
    from ..frontends.native.server import plaintext_refusal as native_refusal

    try:
        guard = Guard(config.credentials_file, config.kinesis_credentials)
    except PolicyFileError as exc:
        raise StartupError(f"--credentials: {exc}") from None
    handshake_s = config.handshake_timeout_ms / 1000
    security = NodeSecurity(guard)
    if config.tls_cert is not None and config.tls_key is not None:
        files = TlsFiles(config.tls_cert, config.tls_key, config.tls_client_ca)
        security.native_tls = ServerTls(
            files, listener="native", plaintext_refusal=native_refusal,
            handshake_timeout_s=handshake_s,
        )  # fmt: skip
    if config.kinesis_tls_cert is not None and config.kinesis_tls_key is not None:
        files = TlsFiles(
            config.kinesis_tls_cert, config.kinesis_tls_key, config.kinesis_tls_client_ca
        )
        security.kinesis_tls = ServerTls(
            files, listener="kinesis", plaintext_refusal=kinesis_refusal,
            handshake_timeout_s=handshake_s,
        )  # fmt: skip
    if config.cluster is not None:
        security.peers, security.etcd_tls = _cluster_client_side(config, guard)
    return security


def _client_context(
    flag: str, ca: Path | None, cert: Path | None, key: Path | None
) -> ssl.SSLContext | None:
    if ca is None:
        return None
    try:
        return client_context(ca, cert, key)
    except InvalidArgumentError as exc:
        raise StartupError(f"{flag}-ca/-cert/-key: {exc.message}") from None


def _cluster_client_side(
    config: ServerConfig, guard: Guard
) -> tuple[Security, ssl.SSLContext | None]:
    context = _client_context(
        "--cluster-tls", config.cluster_tls_ca, config.cluster_tls_cert, config.cluster_tls_key
    )
    etcd = _client_context(
        "--etcd-tls", config.etcd_tls_ca, config.etcd_tls_cert, config.etcd_tls_key
    )
    credentials = None
    if config.node_access_key is not None:
        found = guard.principals.lookup(config.node_access_key)
        if found is None:
            raise StartupError(
                f"--node-access-key {config.node_access_key}: no such access key id in "
                "--credentials FILE (the node signs in to the other nodes with it)"
            )
        credentials = Credentials(config.node_access_key, found[1])
    elif guard.native_required:
        raise StartupError(
            "--credentials in cluster mode needs --node-access-key KEY_ID: the key this node "
            'signs in to the other nodes with (give its principal actions = ["*"])'
        )
    return Security(context, credentials), etcd
