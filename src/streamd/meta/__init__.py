"""Control-plane metadata: one store interface (``MetaStore``), two implementations.

``SqliteMetaStore`` is the embedded default (one file in the data dir); ``EtcdMetaStore``
(``streamd.meta.etcd``, not imported here so that the embedded mode never loads httpx) is the
cluster's, over etcd. The catalog, the groups and the cluster code above them only ever see
keys, bytes, revisions, compare-and-swap transactions, watches and leases (store.py).
"""

from .errors import CompactedError, LeaseNotFoundError, MetaError
from .sqlite import SqliteMetaStore
from .store import (
    Compare,
    KeyValue,
    Lease,
    MetaStore,
    Snapshot,
    TxnResult,
    Watch,
    WatchBatch,
    WatchEvent,
)

__all__ = [
    "CompactedError",
    "Compare",
    "KeyValue",
    "Lease",
    "LeaseNotFoundError",
    "MetaError",
    "MetaStore",
    "Snapshot",
    "SqliteMetaStore",
    "TxnResult",
    "Watch",
    "WatchBatch",
    "WatchEvent",
]
