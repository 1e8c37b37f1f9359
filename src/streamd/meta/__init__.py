"""Control-plane metadata: one store interface (``MetaStore``), an embedded SQLite implementation.

An etcd implementation will plug in behind the same interface for cluster mode; the catalog
above it only ever sees keys, bytes, revisions and compare-and-swap transactions.
"""

from .sqlite import SqliteMetaStore
from .store import Compare, KeyValue, MetaStore

__all__ = ["Compare", "KeyValue", "MetaStore", "SqliteMetaStore"]
