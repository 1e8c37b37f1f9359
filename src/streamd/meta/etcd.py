"""``EtcdMetaStore``: the metadata-store interface (store.py) on etcd, through EtcdClient.

The mapping is direct (docs/cluster.md has it in full): a store key is the etcd key
``namespace + key`` (UTF-8), a value its bytes, ``mod_revision`` etcd's own, and the store
revision etcd's cluster revision, so revisions from here can be compared with any other etcd
client's. ``txn`` is one etcd Txn: the compares are ``MOD == rev`` (0: absent), the success ops
are the deletes, then the prefix deletes (``[prefix, prefix_range_end)``), then the puts, each
put bound to the txn's lease. ``snapshot`` reads in pages of ``range_page_keys`` keys, every
page pinned at the first page's revision, so a long listing is still one consistent view.

Watch: one etcd watch stream over the prefix. When the stream drops, errs or stays silent for
``watch_idle_timeout_s`` (a half-open TCP connection looks exactly like a quiet prefix), it is
reopened from the revision after the last batch delivered: nothing is missed and nothing comes
twice. Reopening retries with backoff for ``watch_reconnect_timeout_s``, then the watch raises
MetadataUnavailableError. If etcd compacted the history we needed, the watch raises
CompactedError: the caller snapshots again.

Leases are etcd's (grant, one keepalive POST per renewal, revoke): the cluster's node
registrations and controller election use exactly these.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Final

import anyio
import structlog

from streamd_client.errors import MetadataUnavailableError

from ..metrics import ETCD_WATCH_REOPENS
from . import etcd_codec as codec
from .errors import CompactedError, EtcdProtocolError, LeaseNotFoundError
from .etcd_client import EtcdClient, EtcdWatchStream
from .store import (
    ETCD_TXN_OPS_MAX,
    Compare,
    KeyValue,
    Lease,
    Snapshot,
    TxnResult,
    Watch,
    WatchBatch,
    WatchEvent,
    check_txn,
)

RANGE_PAGE_KEYS_DEFAULT: Final = 500
RANGE_KEYS_MAX: Final = 1_000_000
WATCH_IDLE_TIMEOUT_S_DEFAULT: Final = 30.0
WATCH_RECONNECT_TIMEOUT_S_DEFAULT: Final = 30.0
_SNAPSHOT_ATTEMPTS_MAX: Final = 3
_BACKOFF_S_MIN: Final = 0.05
_BACKOFF_S_MAX: Final = 1.0

log = structlog.get_logger(__name__)


class EtcdMetaStore:
    """A MetaStore over etcd. Keys live under ``namespace`` (a cluster, or a test, of its own).

    Owns ``client`` (``aclose`` closes it). Use ``EtcdMetaStore.connect`` to build one from
    endpoints and check the server's version.
    """

    def __init__(
        self,
        client: EtcdClient,
        *,
        namespace: str = "",
        range_page_keys: int = RANGE_PAGE_KEYS_DEFAULT,
        watch_idle_timeout_s: float = WATCH_IDLE_TIMEOUT_S_DEFAULT,
        watch_reconnect_timeout_s: float = WATCH_RECONNECT_TIMEOUT_S_DEFAULT,
        txn_ops_max: int = ETCD_TXN_OPS_MAX,
    ) -> None:
        self.client = client
        self.txn_ops_max: int | None = txn_ops_max  # the server's --max-txn-ops
        self.namespace = namespace
        self.range_page_keys = range_page_keys
        self.watch_idle_timeout_s = watch_idle_timeout_s
        self.watch_reconnect_timeout_s = watch_reconnect_timeout_s

    @classmethod
    async def connect(
        cls,
        endpoints: Sequence[str],
        *,
        namespace: str = "",
        request_timeout_s: float = 5.0,
        tls: ssl.SSLContext | None = None,
    ) -> EtcdMetaStore:
        """A store on the etcd cluster at ``endpoints``, after checking it answers and is 3.4+.

        Raises MetadataUnavailableError (unreachable) or EtcdRequestError (too old, not etcd).
        """
        client = EtcdClient(endpoints, request_timeout_s=request_timeout_s, tls=tls)
        try:
            await client.version()
        except BaseException:
            await client.aclose()
            raise
        return cls(client, namespace=namespace)

    # -- keys ------------------------------------------------------------------------------------

    def _key(self, key: str) -> bytes:
        return (self.namespace + key).encode()

    def _unkey(self, raw: bytes) -> str:
        try:
            key = raw.decode()
        except UnicodeDecodeError:
            raise EtcdProtocolError(f"etcd key {raw[:80]!r} is not UTF-8") from None
        if not key.startswith(self.namespace):
            raise EtcdProtocolError(f"etcd key {key[:80]!r} is outside {self.namespace!r}")
        return key[len(self.namespace) :]

    def _kv(self, kv: codec.EtcdKv) -> KeyValue:
        return KeyValue(self._unkey(kv.key), kv.value, kv.mod_revision)

    # -- kv --------------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        answer = await self.client.range(self._key(key))
        return self._kv(answer.kvs[0]) if answer.kvs else None

    async def range(self, prefix: str) -> list[KeyValue]:
        return (await self.snapshot(prefix)).kvs

    async def snapshot(self, prefix: str) -> Snapshot:
        for attempt in range(1, _SNAPSHOT_ATTEMPTS_MAX + 1):
            try:
                return await self._snapshot_once(prefix)
            except CompactedError:  # compacted between two pages: read again at a newer one
                if attempt == _SNAPSHOT_ATTEMPTS_MAX:
                    raise
        raise AssertionError("unreachable")

    async def _snapshot_once(self, prefix: str) -> Snapshot:
        start, end = self._key(prefix), codec.prefix_range_end(self._key(prefix))
        kvs: list[KeyValue] = []
        revision = 0
        while True:
            page = await self.client.range(
                start, end, limit=self.range_page_keys, revision=revision
            )
            revision = revision or page.revision
            kvs.extend(self._kv(kv) for kv in page.kvs)
            if len(kvs) > RANGE_KEYS_MAX:
                raise EtcdProtocolError(f"more than {RANGE_KEYS_MAX} keys under {prefix!r}")
            if not page.more or not page.kvs:
                return Snapshot(kvs, revision)
            start = page.kvs[-1].key + b"\0"

    async def txn(
        self,
        compares: list[Compare],
        puts: list[tuple[str, bytes]] | None = None,
        deletes: list[str] | None = None,
        *,
        delete_prefixes: list[str] | None = None,
        lease: int = 0,
    ) -> TxnResult:
        puts, deletes, delete_prefixes = check_txn(puts, deletes, delete_prefixes, self.txn_ops_max)
        ops: list[codec.EtcdOp] = [codec.EtcdDelete(self._key(key)) for key in deletes]
        ops.extend(
            codec.EtcdDelete(self._key(p), codec.prefix_range_end(self._key(p)))
            for p in delete_prefixes
        )
        ops.extend(codec.EtcdPut(self._key(key), value, lease) for key, value in puts)
        checks = [codec.EtcdCompare(self._key(c.key), "MOD", c.mod_revision) for c in compares]
        answer = await self.client.txn(checks, ops)
        return TxnResult(answer.succeeded, answer.revision)

    # -- leases ----------------------------------------------------------------------------------

    async def grant_lease(self, ttl_s: int) -> Lease:
        granted = await self.client.lease_grant(ttl_s)
        return Lease(granted.lease_id, granted.ttl_s)

    async def keepalive(self, lease_id: int) -> int:
        return await self.client.lease_keepalive(lease_id)

    async def revoke_lease(self, lease_id: int) -> None:
        with contextlib.suppress(LeaseNotFoundError):
            await self.client.lease_revoke(lease_id)

    # -- watch -----------------------------------------------------------------------------------

    @asynccontextmanager
    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[Watch]:
        if start_revision < 1:
            raise ValueError(f"a watch starts at revision 1 or later, not {start_revision}")
        watch = _EtcdWatch(self, prefix, start_revision)
        try:
            await watch.open()
            yield watch
        finally:
            await watch.close()

    async def aclose(self) -> None:
        await self.client.aclose()


class _EtcdWatch:
    """A prefix watch that survives dropped streams (see the module docstring)."""

    def __init__(self, store: EtcdMetaStore, prefix: str, start_revision: int) -> None:
        self._store = store
        self._prefix = prefix
        self._next_revision = start_revision  # Invariant: all before it has been delivered
        self._stack: AsyncExitStack | None = None
        self._stream: EtcdWatchStream | None = None

    def __aiter__(self) -> _EtcdWatch:
        return self

    async def __anext__(self) -> WatchBatch:
        while True:
            if self._stream is None:
                await self.open()
            assert self._stream is not None
            try:
                message = await self._stream.next(self._store.watch_idle_timeout_s)
            except MetadataUnavailableError as exc:  # dropped, failed or silent: resume
                await self.close()
                ETCD_WATCH_REOPENS.inc()
                log.info(
                    "meta.watch_reopen",
                    prefix=self._prefix,
                    from_revision=self._next_revision,
                    reason=str(exc)[:200],
                )
                continue
            batch = self._batch(message)
            if batch is not None:
                self._next_revision = batch.revision + 1
                return batch

    def _batch(self, message: codec.WatchMessage) -> WatchBatch | None:
        if message.events:
            events = tuple(
                WatchEvent(
                    e.type,
                    self._store._unkey(e.kv.key),
                    e.kv.value if e.type == "put" else b"",
                    e.kv.mod_revision,
                )
                for e in message.events
            )
            return WatchBatch(events, events[-1].revision)
        if message.is_progress and message.revision >= self._next_revision:
            return WatchBatch((), message.revision)
        return None

    async def open(self) -> None:
        """Open a stream from ``_next_revision``, retrying while etcd is unreachable."""
        store = self._store
        key = store._key(self._prefix)
        backoff_s = _BACKOFF_S_MIN
        with anyio.move_on_after(store.watch_reconnect_timeout_s) as scope:
            while True:
                stack = AsyncExitStack()
                try:
                    self._stream = await stack.enter_async_context(
                        store.client.watch(key, codec.prefix_range_end(key), self._next_revision)
                    )
                    self._stack = stack
                    return
                except MetadataUnavailableError:
                    await stack.aclose()
                    await anyio.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, _BACKOFF_S_MAX)
        assert scope.cancelled_caught
        log.warning("meta.watch_lost", prefix=self._prefix, from_revision=self._next_revision)
        raise MetadataUnavailableError(
            f"could not reopen the watch on {self._prefix!r} within "
            f"{store.watch_reconnect_timeout_s} s"
        )

    async def close(self) -> None:
        stack, self._stack, self._stream = self._stack, None, None
        if stack is not None:
            await stack.aclose()
