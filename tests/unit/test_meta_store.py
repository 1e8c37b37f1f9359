"""What only the embedded SQLite store does: its file (reopen, migration, full disk), leases
that die with the process, and its in-memory watch history. What every MetaStore does alike is
the conformance suite, tests/integration/test_meta_store_conformance.py (SQLite and etcd).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

from streamd.meta import CompactedError, SqliteMetaStore, WatchEvent
from streamd.meta.errors import LeaseNotFoundError
from streamd.meta.local_lease import LocalLeases
from streamd.meta.local_watch import BATCH_EVENTS_MAX, WatchHistory
from streamd_client.errors import StorageFullError


async def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    first = SqliteMetaStore(tmp_path / "m.sqlite3")
    await first.txn([], puts=[("a", b"1")])
    await first.aclose()
    second = SqliteMetaStore(tmp_path / "m.sqlite3")
    kv = await second.get("a")
    await second.aclose()
    assert kv is not None and kv.value == b"1"


async def test_catalog_remove_drops_the_streams_group_state(tmp_path: Path) -> None:
    from streamd.catalog import Catalog, StreamMeta

    store = SqliteMetaStore(tmp_path / "m.sqlite3")
    catalog = Catalog(store)
    await catalog.create(StreamMeta.new("s", 2, 24, 0))
    await store.txn(
        [], puts=[("groups/s/g", b"x"), ("group-checkpoints/s/g/shardId-000000000000", b"y")]
    )
    await store.txn([], puts=[("groups/s2/g", b"keep")])
    await catalog.remove("s")
    left = [kv.key for kv in await store.range("")]
    await store.aclose()
    assert left == ["groups/s2/g"]


async def test_sqlite_full_disk_is_typed_and_the_store_stays_usable(tmp_path: Path) -> None:
    """SQLITE_FULL rolls the transaction back inside SQLite; the store must not try a second
    ROLLBACK (which answered INTERNAL "cannot rollback") and must work again once there is room.
    ``max_page_count`` makes the database "full" exactly as ENOSPC does (both are SQLITE_FULL)."""
    store = SqliteMetaStore(tmp_path / "meta.sqlite3")
    await store.txn([], puts=[("kept", b"1")])
    (pages,) = store._db.execute("PRAGMA page_count").fetchone()
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StorageFullError):
        await store.txn([], puts=[(f"big{i}", bytes(4096)) for i in range(50)])
    kv = await store.get("kept")
    assert kv is not None and kv.value == b"1" and await store.get("big0") is None
    store._db.execute("PRAGMA max_page_count = 1073741823")  # space is back
    assert await store.txn([], puts=[("after", b"2")])
    assert (await store.get("after")) is not None
    await store.aclose()


async def test_leased_keys_die_with_the_process_that_held_the_lease(tmp_path: Path) -> None:
    first = SqliteMetaStore(tmp_path / "m.sqlite3")
    lease = await first.grant_lease(60)
    await first.txn([], puts=[("node/1", b"up")], lease=lease.lease_id)
    await first.txn([], puts=[("plain", b"x")])
    await first.aclose()  # as if the process died: nobody revoked the lease
    second = SqliteMetaStore(tmp_path / "m.sqlite3")
    try:
        assert [kv.key for kv in await second.range("")] == ["plain"]
        with pytest.raises(LeaseNotFoundError):
            await second.keepalive(lease.lease_id)
    finally:
        await second.aclose()


async def test_a_file_from_before_leases_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, mod_revision INTEGER);"
        "CREATE TABLE revision (id INTEGER PRIMARY KEY CHECK (id = 0), value INTEGER NOT NULL);"
        "INSERT INTO revision VALUES (0, 7); INSERT INTO kv VALUES ('streams/s', x'01', 7);"
    )
    db.commit()
    db.close()
    store = SqliteMetaStore(path)
    try:
        kv = await store.get("streams/s")
        assert kv is not None and kv.value == b"\x01" and kv.mod_revision == 7
        assert (await store.txn([], puts=[("k", b"")])).revision == 8
    finally:
        await store.aclose()


def _events(revision: int, *keys: str) -> tuple[WatchEvent, ...]:
    return tuple(WatchEvent("put", key, b"", revision) for key in keys)


def test_watch_history_is_bounded_and_compacts_the_oldest() -> None:
    history = WatchHistory(current_revision=10, revisions_max=3)
    for revision in range(11, 16):
        history.append(revision, _events(revision, f"a/{revision}"))
    with pytest.raises(CompactedError) as info:
        history.read("a/", 12)
    assert info.value.compact_revision == 13
    batch, next_revision = history.read("a/", 13)
    assert batch is not None and [e.key for e in batch.events] == ["a/13", "a/14", "a/15"]
    assert (batch.revision, next_revision) == (15, 16)
    assert history.read("a/", 16) == (None, 16)  # the future: nothing yet


def test_watch_history_skips_revisions_outside_the_prefix_and_never_splits_one() -> None:
    history = WatchHistory(current_revision=0)
    history.append(1, _events(1, "other"))
    assert history.read("a/", 1) == (None, 2)  # scanned past: no compaction for lack of events
    history.append(2, _events(2, *[f"a/{i}" for i in range(BATCH_EVENTS_MAX - 1)]))
    history.append(3, _events(3, "a/x", "a/y"))
    batch, next_revision = history.read("a/", 2)
    assert batch is not None and batch.revision == 2 and next_revision == 3
    batch, next_revision = history.read("a/", 3)
    assert batch is not None and [e.key for e in batch.events] == ["a/x", "a/y"]


def test_local_leases_expire_and_refuse_what_is_gone() -> None:
    leases = LocalLeases(leases_max=2)
    lease_id = leases.grant(1)
    assert leases.refresh(lease_id) == 1
    leases.grant(5)
    with pytest.raises(ValueError, match="at most 2"):
        leases.grant(5)
    with pytest.raises(ValueError, match="TTL"):
        LocalLeases().grant(0)
    assert leases.remove(lease_id) and not leases.remove(lease_id)
    with pytest.raises(LeaseNotFoundError):
        leases.refresh(lease_id)


async def test_watchers_wake_at_a_lease_deadline_without_other_traffic(tmp_path: Path) -> None:
    store = SqliteMetaStore(tmp_path / "m.sqlite3")
    try:
        lease = await store.grant_lease(1)
        await store.txn([], puts=[("n/1", b"")], lease=lease.lease_id)
        start = (await store.snapshot("n/")).revision + 1
        async with store.watch("n/", start) as watch:
            with trio.fail_after(5):
                batch = await anext(watch)
        assert [(e.type, e.key) for e in batch.events] == [("delete", "n/1")]
    finally:
        await store.aclose()
