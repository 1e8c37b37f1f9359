"""The embedded metadata store: one SQLite file in the data dir.

WAL journal with ``synchronous=FULL`` so a committed transaction survives kill -9 and power
loss. SQLite calls block, so they run in a worker thread; a lock serialises them because one
connection is shared (metadata traffic is admin-rate, not data-rate).

Revisions come from the ``revision`` table: a txn that changes something takes the next one and
stamps it on every key it writes; one that changes nothing takes none (as etcd). Watches read
the in-memory history each commit appends to (local_watch.py); leases are in-memory deadlines
(local_lease.py), and the ``lease`` column says which keys a lease holds, so that the keys of a
previous process's leases are deleted at open.

A full disk: SQLite rolls a transaction back by itself when its write fails with SQLITE_FULL
(the WAL could not grow), so ``txn`` rolls back only if a transaction is still open, and answers
``StorageFullError`` (typed, retryable). The connection stays usable: the next transaction
succeeds as soon as space is back, with no restart.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from streamd_client.errors import StorageFullError

from .local_lease import LocalLeases
from .local_watch import REVISIONS_MAX_DEFAULT, LocalWatch, WatchHistory
from .store import (
    Compare,
    KeyValue,
    Lease,
    Snapshot,
    TxnResult,
    Watch,
    WatchEvent,
    check_txn,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value BLOB NOT NULL, mod_revision INTEGER NOT NULL,
    lease INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS revision (id INTEGER PRIMARY KEY CHECK (id = 0), value INTEGER NOT NULL);
INSERT OR IGNORE INTO revision (id, value) VALUES (0, 0);
"""


class SqliteMetaStore:
    txn_ops_max: int | None = None  # SQLite needs no limit; a txn's size stays the caller's

    def __init__(self, path: Path, *, history_revisions_max: int = REVISIONS_MAX_DEFAULT) -> None:
        self.path = path
        self._lock = threading.Lock()
        # Created 0600 here: SQLite gives its -wal and -shm files the database file's mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(kv)")}
        if "lease" not in columns:  # a file from before leases
            self._db.execute("ALTER TABLE kv ADD COLUMN lease INTEGER NOT NULL DEFAULT 0")
        self._leases = LocalLeases()
        # Leases die with the process that held them: drop their keys before anyone reads.
        self._history = WatchHistory(self._current_revision(), history_revisions_max)
        self._revoke_keys_of(None)

    async def get(self, key: str) -> KeyValue | None:
        await self._expire_due_leases()
        return await trio.to_thread.run_sync(self._get, key)

    async def range(self, prefix: str) -> list[KeyValue]:
        return (await self.snapshot(prefix)).kvs

    async def snapshot(self, prefix: str) -> Snapshot:
        await self._expire_due_leases()
        return await trio.to_thread.run_sync(self._snapshot, prefix)

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
        await self._expire_due_leases()
        token = trio.lowlevel.current_trio_token()
        result = await trio.to_thread.run_sync(
            self._txn, compares, puts, deletes, delete_prefixes, lease
        )
        if result.changed:
            self._notify_soon(token)
        return result.result

    @asynccontextmanager
    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[Watch]:
        if start_revision < 1:
            raise ValueError(f"a watch starts at revision 1 or later, not {start_revision}")
        self._history.read(prefix, start_revision)  # raises CompactedError now, not later
        yield LocalWatch(self._history, prefix, start_revision, self._tick)

    async def grant_lease(self, ttl_s: int) -> Lease:
        await self._expire_due_leases()
        return Lease(self._leases.grant(ttl_s), ttl_s)

    async def keepalive(self, lease_id: int) -> int:
        await self._expire_due_leases()
        return self._leases.refresh(lease_id)

    async def revoke_lease(self, lease_id: int) -> None:
        if self._leases.remove(lease_id):
            await self._revoke(lease_id)
        await self._expire_due_leases()

    async def aclose(self) -> None:
        with self._lock:
            self._db.close()

    # -- leases and watch wake-ups ---------------------------------------------------------------

    async def _tick(self) -> float | None:
        """Run by a waiting watcher: expire due leases; how long it may wait before the next."""
        await self._expire_due_leases()
        return self._leases.seconds_to_next_deadline()

    async def _expire_due_leases(self) -> None:
        for lease_id in self._leases.take_due():
            await self._revoke(lease_id)

    async def _revoke(self, lease_id: int) -> None:
        token = trio.lowlevel.current_trio_token()
        if await trio.to_thread.run_sync(self._revoke_keys_of, lease_id):
            self._notify_soon(token)

    def _notify_soon(self, token: trio.lowlevel.TrioToken) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(self._history.notify)

    def _get(self, key: str) -> KeyValue | None:
        with self._lock:
            row = self._db.execute(
                "SELECT key, value, mod_revision FROM kv WHERE key = ?", (key,)
            ).fetchone()
        return KeyValue(row[0], bytes(row[1]), row[2]) if row else None

    def _snapshot(self, prefix: str) -> Snapshot:
        with self._lock:
            db = self._db
            db.execute("BEGIN")  # one read transaction: the rows and the revision agree
            try:
                rows = db.execute(
                    "SELECT key, value, mod_revision FROM kv WHERE substr(key, 1, ?) = ? "
                    "ORDER BY key",
                    (len(prefix), prefix),
                ).fetchall()
                (revision,) = db.execute("SELECT value FROM revision WHERE id = 0").fetchone()
            finally:
                db.execute("COMMIT")
        return Snapshot([KeyValue(r[0], bytes(r[1]), r[2]) for r in rows], revision)

    def _current_revision(self) -> int:
        with self._lock:
            (revision,) = self._db.execute("SELECT value FROM revision WHERE id = 0").fetchone()
        return int(revision)

    def _revoke_keys_of(self, lease_id: int | None) -> bool:
        """Delete the keys of one lease (None: of every lease) in one revision; True if any."""
        where = "lease != 0" if lease_id is None else "lease = ?"
        args = () if lease_id is None else (lease_id,)
        with self._lock:
            with self._write_transaction() as db:
                keys = [r[0] for r in db.execute(f"SELECT key FROM kv WHERE {where}", args)]
                if not keys:
                    db.execute("COMMIT")
                    return False
                revision = self._next_revision(db)
                db.execute(f"DELETE FROM kv WHERE {where}", args)
                db.execute("COMMIT")
            self._history.append(
                revision, tuple(WatchEvent("delete", key, b"", revision) for key in sorted(keys))
            )
        return True

    @staticmethod
    def _next_revision(db: sqlite3.Connection) -> int:
        (revision,) = db.execute("SELECT value FROM revision WHERE id = 0").fetchone()
        revision = int(revision) + 1
        db.execute("UPDATE revision SET value = ? WHERE id = 0", (revision,))
        return revision

    @contextlib.contextmanager
    def _write_transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` on the connection (the caller holds ``_lock`` and commits); on an
        error, roll back what is still open and raise StorageFullError for a full disk."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException as exc:
            error = self._rolled_back(exc)
            if error is exc:
                raise
            raise error from exc

    def _rolled_back(self, exc: BaseException) -> BaseException:
        """Roll back what is still open; the error to raise (StorageFullError for a full disk)."""
        if self._db.in_transaction:  # SQLite already rolled back after SQLITE_FULL
            self._db.execute("ROLLBACK")
        if _is_full_disk(exc):
            return StorageFullError(f"metadata store {self.path.name}: {exc}")
        return exc

    def _txn(
        self,
        compares: list[Compare],
        puts: list[tuple[str, bytes]],
        deletes: list[str],
        delete_prefixes: list[str],
        lease: int,
    ) -> _Applied:
        with self._lock:
            with self._write_transaction() as db:
                (current,) = db.execute("SELECT value FROM revision WHERE id = 0").fetchone()
                for cmp in compares:
                    row = db.execute(
                        "SELECT mod_revision FROM kv WHERE key = ?", (cmp.key,)
                    ).fetchone()
                    if (row[0] if row else 0) != cmp.mod_revision:
                        db.execute("ROLLBACK")
                        return _Applied(TxnResult(False, current), changed=False)
                if lease and puts:
                    self._leases.check_alive(lease)  # atomic with the write: under the lock
                deleted = self._deleted_keys(db, deletes, delete_prefixes)
                if not puts and not deleted:
                    db.execute("COMMIT")
                    return _Applied(TxnResult(True, current), changed=False)
                revision = self._next_revision(db)
                db.executemany("DELETE FROM kv WHERE key = ?", [(k,) for k in deleted])
                db.executemany(
                    "INSERT INTO kv (key, value, mod_revision, lease) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
                    "mod_revision = excluded.mod_revision, lease = excluded.lease",
                    [(k, v, revision, lease) for k, v in puts],
                )
                db.execute("COMMIT")
            events = [WatchEvent("delete", key, b"", revision) for key in deleted]
            events.extend(WatchEvent("put", key, value, revision) for key, value in puts)
            self._history.append(revision, tuple(events))
            return _Applied(TxnResult(True, revision), changed=True)

    @staticmethod
    def _deleted_keys(
        db: sqlite3.Connection, deletes: list[str], delete_prefixes: list[str]
    ) -> list[str]:
        """The keys the deletes remove (only those that exist), in order, each once."""
        found: dict[str, None] = {}
        for key in deletes:
            if db.execute("SELECT 1 FROM kv WHERE key = ?", (key,)).fetchone():
                found[key] = None
        for prefix in delete_prefixes:
            for (key,) in db.execute(
                "SELECT key FROM kv WHERE substr(key, 1, ?) = ? ORDER BY key",
                (len(prefix), prefix),
            ):
                found[key] = None
        return list(found)


@dataclass(frozen=True, slots=True)
class _Applied:
    result: TxnResult
    changed: bool  # a revision was committed (watchers must be woken)


def _is_full_disk(exc: BaseException) -> bool:
    """SQLITE_FULL (13): the database or its WAL could not grow (ENOSPC, EDQUOT)."""
    return isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == (
        sqlite3.SQLITE_FULL
    )
