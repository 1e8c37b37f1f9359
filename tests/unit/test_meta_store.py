"""Conformance suite for MetaStore implementations (embedded SQLite today; etcd joins later).

Every backend must pass the same tests: that is what lets the catalog stay backend-agnostic.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from streamd.meta import Compare, MetaStore, SqliteMetaStore
from streamd_client.errors import StorageFullError


@pytest.fixture(params=["sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MetaStore]:
    backend = SqliteMetaStore(tmp_path / "meta.sqlite3")
    yield backend
    await backend.aclose()


async def test_get_missing_key_is_none(store: MetaStore) -> None:
    assert await store.get("nope") is None


async def test_create_only_if_absent(store: MetaStore) -> None:
    assert await store.txn([Compare("a", 0)], puts=[("a", b"1")])
    assert not await store.txn([Compare("a", 0)], puts=[("a", b"2")])
    kv = await store.get("a")
    assert kv is not None and kv.value == b"1"


async def test_compare_and_swap_uses_mod_revision(store: MetaStore) -> None:
    await store.txn([], puts=[("a", b"1")])
    kv = await store.get("a")
    assert kv is not None
    assert await store.txn([Compare("a", kv.mod_revision)], puts=[("a", b"2")])
    assert not await store.txn([Compare("a", kv.mod_revision)], puts=[("a", b"3")])
    now = await store.get("a")
    assert now is not None and now.value == b"2" and now.mod_revision > kv.mod_revision


async def test_failed_txn_changes_nothing(store: MetaStore) -> None:
    await store.txn([], puts=[("a", b"1"), ("b", b"1")])
    assert not await store.txn([Compare("a", 0)], puts=[("c", b"x")], deletes=["b"])
    assert await store.get("c") is None
    assert await store.get("b") is not None


async def test_range_by_prefix_sorted(store: MetaStore) -> None:
    await store.txn([], puts=[("s/b", b"2"), ("s/a", b"1"), ("t/a", b"3")])
    assert [kv.key for kv in await store.range("s/")] == ["s/a", "s/b"]


async def test_delete(store: MetaStore) -> None:
    await store.txn([], puts=[("a", b"1")])
    assert await store.txn([], deletes=["a"])
    assert await store.get("a") is None


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
