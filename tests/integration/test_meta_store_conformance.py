"""One conformance suite for every MetaStore: the embedded SQLite store and EtcdMetaStore on a
real etcd process (the session's ``etcd`` fixture; each test keys under a namespace of its own).

What every backend must do alike: compare-and-swap, prefix ranges, one revision per changing
txn (none for a txn that changes nothing), snapshots with their revision, atomic txns with
prefix deletes and the same refusals, watches from a revision (with resume after a dropped or
closed stream from the last seen revision, and CompactedError for lost history), and leases
that bind keys and expire. Revisions are compared, never assumed to start at 1: the etcd
behind this suite is shared by the session.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import trio

from streamd.meta import (
    CompactedError,
    Compare,
    LeaseNotFoundError,
    MetaStore,
    SqliteMetaStore,
    Watch,
    WatchEvent,
)
from streamd.meta.etcd import EtcdMetaStore
from streamd.meta.etcd_client import EtcdClient
from streamd.testing.etcd import EtcdProcess

WAIT_S = 10.0


@pytest.fixture(params=["sqlite", "etcd"])
async def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[MetaStore]:
    backend: MetaStore
    if request.param == "sqlite":
        backend = SqliteMetaStore(tmp_path_factory.mktemp("meta") / "meta.sqlite3")
    else:
        etcd: EtcdProcess = request.getfixturevalue("etcd")
        client = EtcdClient([etcd.endpoint])
        backend = EtcdMetaStore(client, namespace=f"conformance/{uuid.uuid4().hex}/")
    try:
        yield backend
    finally:
        await backend.aclose()


async def next_events(watch: Watch, count: int) -> list[WatchEvent]:
    """Exactly ``count`` events (whatever the batching), within WAIT_S."""
    events: list[WatchEvent] = []
    with trio.fail_after(WAIT_S):
        while len(events) < count:
            events.extend((await anext(watch)).events)
    assert len(events) == count, events
    return events


async def no_event_for(watch: Watch, seconds: float) -> None:
    with trio.move_on_after(seconds):
        batch = await anext(watch)
        assert not batch.events, batch


def shape(events: list[WatchEvent]) -> list[tuple[str, str, bytes]]:
    return [(e.type, e.key, e.value) for e in events]


# -- kv and compare-and-swap ---------------------------------------------------------------------


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
    before = await store.snapshot("")
    failed = await store.txn([Compare("a", 0)], puts=[("c", b"x")], deletes=["b"])
    assert not failed.succeeded and failed.revision == before.revision
    assert await store.snapshot("") == before


async def test_range_by_prefix_sorted_with_empty_values(store: MetaStore) -> None:
    await store.txn([], puts=[("s/b", b"2"), ("s/a", b""), ("t/a", b"3"), ("s", b"4")])
    assert [(kv.key, kv.value) for kv in await store.range("s/")] == [("s/a", b""), ("s/b", b"2")]
    assert [kv.key for kv in await store.range("")] == ["s", "s/a", "s/b", "t/a"]


async def test_keys_are_unicode(store: MetaStore) -> None:
    await store.txn([], puts=[("ü/ключ", b"v")])
    assert [kv.key for kv in await store.range("ü/")] == ["ü/ключ"]


async def test_delete_and_delete_prefix(store: MetaStore) -> None:
    await store.txn([], puts=[("a", b"1"), ("p/1", b""), ("p/2", b""), ("q", b"")])
    assert await store.txn([], deletes=["a"], delete_prefixes=["p/"])
    assert [kv.key for kv in await store.range("")] == ["q"]


async def test_paged_snapshot_is_whole_and_consistent(store: MetaStore) -> None:
    if isinstance(store, EtcdMetaStore):
        store.range_page_keys = 7  # many pages
    for start in range(0, 60, 20):
        await store.txn([], puts=[(f"k/{i:03d}", b"%d" % i) for i in range(start, start + 20)])
    snapshot = await store.snapshot("k/")
    assert [kv.key for kv in snapshot.kvs] == [f"k/{i:03d}" for i in range(60)]
    assert snapshot.revision >= max(kv.mod_revision for kv in snapshot.kvs)


# -- revisions -----------------------------------------------------------------------------------


async def test_one_revision_per_changing_txn_and_none_otherwise(store: MetaStore) -> None:
    first = await store.txn([], puts=[("a", b"1"), ("b", b"1")])
    kvs = {kv.key: kv.mod_revision for kv in await store.range("")}
    assert kvs == {"a": first.revision, "b": first.revision}
    second = await store.txn([], puts=[("a", b"2")])
    assert second.revision == first.revision + 1
    unchanged = await store.txn([], deletes=["absent"])  # succeeds, changes nothing
    assert unchanged.succeeded and unchanged.revision == second.revision
    snapshot = await store.snapshot("")
    assert snapshot.revision >= second.revision


async def test_txn_refusals_are_the_same_everywhere(store: MetaStore) -> None:
    with pytest.raises(ValueError, match="twice"):
        await store.txn([], puts=[("a", b"1"), ("a", b"2")])
    with pytest.raises(ValueError, match="both puts and deletes"):
        await store.txn([], puts=[("p/a", b"1")], delete_prefixes=["p/"])
    assert await store.txn([], puts=[(f"k{i}", b"") for i in range(128)])


async def test_txn_size_limit_is_refused_before_sending(store: MetaStore) -> None:
    # etcd's is its --max-txn-ops (128 by default); the embedded store has none.
    if isinstance(store, EtcdMetaStore):
        assert store.txn_ops_max == 128
        with pytest.raises(ValueError, match="at most 128"):
            await store.txn([], puts=[(f"k{i}", b"") for i in range(129)])
        assert await store.range("k") == []
    else:
        assert store.txn_ops_max is None
        assert await store.txn([], puts=[(f"k{i}", b"") for i in range(300)])


# -- watch ---------------------------------------------------------------------------------------


async def test_watch_from_a_snapshot_sees_every_later_change_once(store: MetaStore) -> None:
    await store.txn([], puts=[("w/old", b"0"), ("other", b"0")])
    snapshot = await store.snapshot("w/")
    async with store.watch("w/", snapshot.revision + 1) as watch:
        put = await store.txn([], puts=[("w/a", b"1"), ("x", b"not watched")])
        await store.txn([], puts=[("w/a", b"2")], deletes=["w/old"])
        await store.txn([], deletes=["w/absent"])  # no change, no event
        events = await next_events(watch, 3)
        await no_event_for(watch, 0.3)
    assert shape(events) == [("put", "w/a", b"1"), ("delete", "w/old", b""), ("put", "w/a", b"2")]
    assert [e.revision for e in events] == [put.revision, put.revision + 1, put.revision + 1]


async def test_watch_from_the_past_replays_history(store: MetaStore) -> None:
    first = await store.txn([], puts=[("h/a", b"1")])
    await store.txn([], deletes=["h/a"])
    async with store.watch("h/", first.revision) as watch:
        events = await next_events(watch, 2)
    assert shape(events) == [("put", "h/a", b"1"), ("delete", "h/a", b"")]


async def test_watch_resumes_after_a_dropped_stream_from_the_last_seen_revision(
    store: MetaStore,
) -> None:
    start = (await store.snapshot("r/")).revision + 1
    async with store.watch("r/", start) as watch:
        await store.txn([], puts=[("r/1", b"1")])
        batch = await anext(watch)
    last_seen = batch.revision
    assert shape(list(batch.events)) == [("put", "r/1", b"1")]
    # The stream is gone; changes go on meanwhile.
    await store.txn([], puts=[("r/2", b"2")])
    await store.txn([], deletes=["r/1"])
    async with store.watch("r/", last_seen + 1) as watch:
        await store.txn([], puts=[("r/3", b"3")])
        events = await next_events(watch, 3)
    assert shape(events) == [("put", "r/2", b"2"), ("delete", "r/1", b""), ("put", "r/3", b"3")]


async def test_watch_waits_for_future_revisions(store: MetaStore) -> None:
    now = (await store.snapshot("")).revision
    async with store.watch("f/", now + 2) as watch:
        await store.txn([], puts=[("f/skipped", b"")])
        await store.txn([], puts=[("f/seen", b"")])
        assert shape(await next_events(watch, 1)) == [("put", "f/seen", b"")]


async def test_watch_of_compacted_history_raises(store: MetaStore) -> None:
    first = await store.txn([], puts=[("c/a", b"1")])
    for i in range(4):
        await store.txn([], puts=[("c/a", b"%d" % i)])
    watched: MetaStore = store
    if isinstance(store, EtcdMetaStore):
        await store.client.compact(first.revision + 2)
    else:  # the embedded store keeps history in memory: a restart compacts it all
        assert isinstance(store, SqliteMetaStore)
        await store.aclose()
        watched = SqliteMetaStore(store.path)
    try:
        with pytest.raises(CompactedError) as info:
            async with watched.watch("c/", first.revision) as watch:
                await anext(watch)
        assert info.value.compact_revision > first.revision
        async with watched.watch("c/", info.value.compact_revision) as watch:  # allowed again
            await watched.txn([], puts=[("c/b", b"")])
            with trio.fail_after(WAIT_S):
                while "c/b" not in [e.key for e in (await anext(watch)).events]:
                    pass
    finally:
        if watched is not store:
            await watched.aclose()


# -- leases --------------------------------------------------------------------------------------


async def test_lease_keeps_its_keys_while_kept_alive_and_revoke_deletes_them(
    store: MetaStore,
) -> None:
    lease = await store.grant_lease(2)
    assert lease.lease_id > 0 and lease.ttl_s >= 2
    assert await store.txn([Compare("n/1", 0)], puts=[("n/1", b"up")], lease=lease.lease_id)
    start = (await store.snapshot("n/")).revision + 1
    async with store.watch("n/", start) as watch:
        for _ in range(3):
            await trio.sleep(1.0)
            assert await store.keepalive(lease.lease_id) >= 2
        assert await store.get("n/1") is not None
        await store.revoke_lease(lease.lease_id)
        assert shape(await next_events(watch, 1)) == [("delete", "n/1", b"")]
    assert await store.get("n/1") is None
    await store.revoke_lease(lease.lease_id)  # already gone: not an error
    with pytest.raises(LeaseNotFoundError):
        await store.keepalive(lease.lease_id)
    with pytest.raises(LeaseNotFoundError):
        await store.txn([], puts=[("n/2", b"")], lease=lease.lease_id)


async def test_a_lease_nobody_keeps_alive_expires_and_watchers_see_its_keys_go(
    store: MetaStore,
) -> None:
    lease = await store.grant_lease(2)
    kept = await store.grant_lease(10)
    await store.txn([], puts=[("e/gone", b"1")], lease=lease.lease_id)
    await store.txn([], puts=[("e/kept", b"1")], lease=kept.lease_id)
    await store.txn([], puts=[("e/plain", b"1")])
    start = (await store.snapshot("e/")).revision + 1
    async with store.watch("e/", start) as watch:
        with trio.fail_after(lease.ttl_s + WAIT_S):
            events = await next_events(watch, 1)  # nobody else touches the store meanwhile
    assert shape(events) == [("delete", "e/gone", b"")]
    assert [kv.key for kv in await store.range("e/")] == ["e/kept", "e/plain"]
    with pytest.raises(LeaseNotFoundError):
        await store.keepalive(lease.lease_id)
    await store.revoke_lease(kept.lease_id)


async def test_a_put_without_the_lease_detaches_the_key(store: MetaStore) -> None:
    lease = await store.grant_lease(5)
    await store.txn([], puts=[("d/k", b"1")], lease=lease.lease_id)
    await store.txn([], puts=[("d/k", b"2")])
    await store.revoke_lease(lease.lease_id)
    kv = await store.get("d/k")
    assert kv is not None and kv.value == b"2"
