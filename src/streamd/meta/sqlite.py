"""The embedded metadata store: one SQLite file in the data dir.

WAL journal with ``synchronous=FULL`` so a committed transaction survives kill -9 and power
loss. SQLite calls block, so they run in a worker thread; a lock serialises them because one
connection is shared (metadata traffic is admin-rate, not data-rate).

A full disk: SQLite rolls a transaction back by itself when its write fails with SQLITE_FULL
(the WAL could not grow), so ``txn`` rolls back only if a transaction is still open, and answers
``StorageFullError`` (typed, retryable). The connection stays usable: the next transaction
succeeds as soon as space is back, with no restart.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import trio

from streamd_client.errors import StorageFullError

from .store import Compare, KeyValue

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value BLOB NOT NULL, mod_revision INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS revision (id INTEGER PRIMARY KEY CHECK (id = 0), value INTEGER NOT NULL);
INSERT OR IGNORE INTO revision (id, value) VALUES (0, 0);
"""


class SqliteMetaStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        # Created 0600 here: SQLite gives its -wal and -shm files the database file's mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    async def get(self, key: str) -> KeyValue | None:
        return await trio.to_thread.run_sync(self._get, key)

    async def range(self, prefix: str) -> list[KeyValue]:
        return await trio.to_thread.run_sync(self._range, prefix)

    async def txn(
        self,
        compares: list[Compare],
        puts: list[tuple[str, bytes]] | None = None,
        deletes: list[str] | None = None,
    ) -> bool:
        return await trio.to_thread.run_sync(self._txn, compares, puts or [], deletes or [])

    async def aclose(self) -> None:
        with self._lock:
            self._db.close()

    def _get(self, key: str) -> KeyValue | None:
        with self._lock:
            row = self._db.execute(
                "SELECT key, value, mod_revision FROM kv WHERE key = ?", (key,)
            ).fetchone()
        return KeyValue(row[0], bytes(row[1]), row[2]) if row else None

    def _range(self, prefix: str) -> list[KeyValue]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key, value, mod_revision FROM kv WHERE substr(key, 1, ?) = ? ORDER BY key",
                (len(prefix), prefix),
            ).fetchall()
        return [KeyValue(r[0], bytes(r[1]), r[2]) for r in rows]

    def _txn(
        self, compares: list[Compare], puts: list[tuple[str, bytes]], deletes: list[str]
    ) -> bool:
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for cmp in compares:
                    row = db.execute(
                        "SELECT mod_revision FROM kv WHERE key = ?", (cmp.key,)
                    ).fetchone()
                    if (row[0] if row else 0) != cmp.mod_revision:
                        db.execute("ROLLBACK")
                        return False
                (revision,) = db.execute("SELECT value FROM revision WHERE id = 0").fetchone()
                revision += 1
                db.execute("UPDATE revision SET value = ? WHERE id = 0", (revision,))
                db.executemany(
                    "INSERT INTO kv (key, value, mod_revision) VALUES (?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
                    "mod_revision = excluded.mod_revision",
                    [(k, v, revision) for k, v in puts],
                )
                db.executemany("DELETE FROM kv WHERE key = ?", [(k,) for k in deletes])
                db.execute("COMMIT")
                return True
            except BaseException as exc:
                if db.in_transaction:  # SQLite already rolled back after SQLITE_FULL
                    db.execute("ROLLBACK")
                if _is_full_disk(exc):
                    raise StorageFullError(f"metadata store {self.path.name}: {exc}") from exc
                raise


def _is_full_disk(exc: BaseException) -> bool:
    """SQLITE_FULL (13): the database or its WAL could not grow (ENOSPC, EDQUOT)."""
    return isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == (
        sqlite3.SQLITE_FULL
    )
