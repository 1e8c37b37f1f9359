"""The metadata-store interface, shaped after etcd's API so both backends (SQLite, etcd) fit it.

Keys are strings, values bytes. The store has one *revision*, a counter that only grows: every
transaction that changes something moves it by one, and every key it wrote carries that revision
as its ``mod_revision``. A transaction that changes nothing (a failed compare, deletes of absent
keys) leaves it alone. That one number is what the catalog, the groups and the cluster rely on:

* compare-and-swap: ``txn`` applies its puts and deletes atomically only if every ``Compare``
  holds (read a value and its revision, compute, commit only if nobody changed it meanwhile). A
  ``Compare`` with ``mod_revision == 0`` means "the key must not exist";
* list-then-watch: ``snapshot(prefix)`` returns the keys *and* the revision they were read at;
  ``watch(prefix, snapshot.revision + 1)`` then delivers every later change, none twice, none
  missed. A watch whose stream drops is resumed from ``batch.revision + 1`` of the last batch
  seen (EtcdMetaStore does that by itself; a caller that closes a watch does it the same way). If
  the store no longer keeps that history, the watch raises ``CompactedError``: snapshot again;
* leases: a key put with ``lease=`` lives as long as its lease; a lease nobody keeps alive for
  ``ttl_s`` expires and its keys are deleted (one revision, delete events to watchers). That is
  how a node's registration disappears when the node does.

Both backends pass one conformance suite (tests/integration/test_meta_store_conformance.py);
docs/cluster.md describes the etcd mapping.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Final, Literal, Protocol

ETCD_TXN_OPS_MAX: Final = 128  # etcd's default --max-txn-ops

EventType = Literal["put", "delete"]


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Compare:
    key: str
    mod_revision: int  # 0: the key must be absent


@dataclass(frozen=True, slots=True)
class TxnResult:
    """What a transaction did. Truthy iff it succeeded, so ``if await store.txn(...)`` reads on."""

    succeeded: bool
    # Succeeded and changed something: the revision it created. Otherwise the store's revision
    # the compares were judged at (nothing changed).
    revision: int

    def __bool__(self) -> bool:
        return self.succeeded


@dataclass(frozen=True, slots=True)
class Snapshot:
    kvs: list[KeyValue]  # sorted by key
    revision: int  # the store revision they were read at; watch from revision + 1


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    key: str
    value: bytes  # b"" for a delete
    revision: int  # the revision of this change (the put's mod_revision, or the delete's)


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """Changes under the watched prefix, in revision order (a revision is never split).

    ``revision``: every change under the prefix up to and including it has now been delivered;
    resume from ``revision + 1``. A batch may have no events (progress: the revision moved).
    """

    events: tuple[WatchEvent, ...]
    revision: int


@dataclass(frozen=True, slots=True)
class Lease:
    lease_id: int  # > 0
    ttl_s: int  # what the store granted (etcd may raise it to its minimum)


class Watch(Protocol):
    """An endless async iterator of ``WatchBatch``; it ends only by raising."""

    def __aiter__(self) -> Watch: ...

    async def __anext__(self) -> WatchBatch: ...


class MetaStore(Protocol):
    # Operations one txn may hold (None: no limit). etcd's is its --max-txn-ops; the embedded
    # store has none, so code meant for both keeps a txn's size bounded by other means (prefix
    # deletes, one txn per bounded batch).
    txn_ops_max: int | None

    async def get(self, key: str) -> KeyValue | None:
        """The key's value and revision, or None."""
        ...

    async def range(self, prefix: str) -> list[KeyValue]:
        """Every key starting with ``prefix``, sorted by key."""
        ...

    async def snapshot(self, prefix: str) -> Snapshot:
        """``range(prefix)`` and the revision it was read at, consistently."""
        ...

    async def txn(
        self,
        compares: list[Compare],
        puts: list[tuple[str, bytes]] | None = None,
        deletes: list[str] | None = None,
        *,
        delete_prefixes: list[str] | None = None,
        lease: int = 0,
    ) -> TxnResult:
        """Apply ``deletes``, ``delete_prefixes`` and ``puts`` atomically and durably iff every
        compare holds. ``lease`` (non-zero) binds every put of the txn to that lease; a put
        without one detaches the key from any lease.

        A failed compare changes nothing (``succeeded`` False). Raises ValueError for a txn
        etcd would refuse (a key put twice, put and deleted, more than ``txn_ops_max``
        operations, an empty key), LeaseNotFoundError for a dead lease.
        """
        ...

    def watch(self, prefix: str, start_revision: int) -> AbstractAsyncContextManager[Watch]:
        """Changes under ``prefix`` from ``start_revision`` (>= 1) on.

        The watch raises CompactedError (at open or on the first batch) when that history is
        gone, MetadataUnavailableError when the store stays unreachable.
        """
        ...

    async def grant_lease(self, ttl_s: int) -> Lease:
        """A new lease that expires ``ttl_s`` seconds after its last keepalive."""
        ...

    async def keepalive(self, lease_id: int) -> int:
        """Renew the lease; its TTL in seconds. Raises LeaseNotFoundError when it is gone."""
        ...

    async def revoke_lease(self, lease_id: int) -> None:
        """End the lease now and delete its keys. A lease already gone is not an error."""
        ...

    async def aclose(self) -> None: ...


def check_txn(
    puts: list[tuple[str, bytes]] | None,
    deletes: list[str] | None,
    delete_prefixes: list[str] | None,
    ops_max: int | None,
) -> tuple[list[tuple[str, bytes]], list[str], list[str]]:
    """A txn's puts, deletes and prefix deletes (None: none), after refusing (ValueError) what
    etcd would refuse, identically on every backend."""
    puts, deletes, delete_prefixes = puts or [], deletes or [], delete_prefixes or []
    ops = len(puts) + len(deletes) + len(delete_prefixes)
    if ops_max is not None and ops > ops_max:
        raise ValueError(f"a txn has at most {ops_max} operations, not {ops}")
    put_keys = [key for key, _ in puts]
    if len(set(put_keys)) != len(put_keys):
        raise ValueError("a txn puts the same key twice")
    if any(not key for key in put_keys) or any(not key for key in deletes):
        raise ValueError("empty key")
    deleted = set(deletes)
    for key in put_keys:
        if key in deleted or any(key.startswith(prefix) for prefix in delete_prefixes):
            raise ValueError(f"a txn both puts and deletes {key!r}")
    return puts, deletes, delete_prefixes
