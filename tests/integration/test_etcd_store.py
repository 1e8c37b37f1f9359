"""EtcdMetaStore beyond the conformance suite: what only a real etcd can do to a watch (the
process dies under an open stream; the stream goes quiet), and refusals at connect."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from streamd.meta import Watch, WatchEvent
from streamd.meta.etcd import EtcdMetaStore
from streamd.meta.etcd_client import EtcdClient
from streamd.testing.etcd import EtcdProcess
from streamd_client.errors import MetadataUnavailableError

WAIT_S = 15.0


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    """An etcd of this test's own: it gets killed."""
    with EtcdProcess(tmp_path / "etcd") as process:
        yield process


async def collect(watch: Watch, count: int) -> list[WatchEvent]:
    events: list[WatchEvent] = []
    with trio.fail_after(WAIT_S):
        while len(events) < count:
            events.extend((await anext(watch)).events)
    return events


async def test_watch_resumes_by_itself_when_etcd_dies_under_the_stream(
    own_etcd: EtcdProcess,
) -> None:
    store = EtcdMetaStore(EtcdClient([own_etcd.endpoint], request_timeout_s=2.0))
    try:
        start = (await store.snapshot("n/")).revision + 1
        async with store.watch("n/", start) as watch:
            await store.txn([], puts=[("n/1", b"a")])
            before = await collect(watch, 1)
            own_etcd.kill9()  # the stream breaks mid-watch; etcd's data survives (fsync)
            own_etcd.restart()
            await store.txn([], puts=[("n/2", b"b")])
            await store.txn([], deletes=["n/1"])
            after = await collect(watch, 2)
    finally:
        await store.aclose()
    assert [(e.type, e.key) for e in before + after] == [
        ("put", "n/1"),
        ("put", "n/2"),
        ("delete", "n/1"),
    ]
    assert [e.revision for e in before + after] == [start, start + 1, start + 2]


async def test_a_silent_stream_is_reopened_without_losing_or_repeating(etcd: EtcdProcess) -> None:
    store = EtcdMetaStore(
        EtcdClient([etcd.endpoint]),
        namespace=f"idle/{uuid.uuid4().hex}/",
        watch_idle_timeout_s=0.2,  # reopened about five times below
    )
    try:
        start = (await store.snapshot("")).revision + 1
        async with store.watch("", start) as watch:
            await store.txn([], puts=[("a", b"1")])
            first = await collect(watch, 1)
            with trio.move_on_after(1.0):
                batch = await anext(watch)
                assert not batch.events
            await store.txn([], puts=[("b", b"2")])
            second = await collect(watch, 1)
    finally:
        await store.aclose()
    assert [e.key for e in first + second] == ["a", "b"]


async def test_watch_gives_up_when_etcd_stays_away(own_etcd: EtcdProcess) -> None:
    store = EtcdMetaStore(
        EtcdClient([own_etcd.endpoint], request_timeout_s=0.5), watch_reconnect_timeout_s=1.0
    )
    try:
        async with store.watch("x/", 1) as watch:
            own_etcd.kill9()
            with trio.fail_after(WAIT_S), pytest.raises(MetadataUnavailableError, match="reopen"):
                await anext(watch)
    finally:
        await store.aclose()


async def test_connect_to_nothing_is_metadata_unavailable() -> None:
    with trio.socket.socket() as unused:
        await unused.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{unused.getsockname()[1]}"
        with pytest.raises(MetadataUnavailableError, match="no etcd endpoint answers"):
            await EtcdMetaStore.connect([endpoint], request_timeout_s=1.0)


async def test_connect_checks_the_server(etcd: EtcdProcess) -> None:
    store = await EtcdMetaStore.connect([etcd.endpoint], namespace="connect/")
    try:
        assert await store.get("nothing") is None
    finally:
        await store.aclose()


async def test_catalog_removes_a_stream_with_more_group_keys_than_a_txn_may_hold(
    etcd: EtcdProcess,
) -> None:
    from streamd.catalog import Catalog, StreamMeta

    store = EtcdMetaStore(EtcdClient([etcd.endpoint]), namespace=f"cat/{uuid.uuid4().hex}/")
    try:
        catalog = Catalog(store)
        await catalog.create(StreamMeta.new("s", 2, 24, 0))
        for batch in range(3):  # 300 checkpoints, more than etcd's 128 operations per txn
            await store.txn(
                [],
                puts=[(f"group-checkpoints/s/g/shard-{batch}-{i}", b"c") for i in range(100)],
            )
        await store.txn([], puts=[("groups/s/g", b"x"), ("groups/s2/g", b"keep")])
        await catalog.remove("s")
        assert [kv.key for kv in await store.range("")] == ["groups/s2/g"]
    finally:
        await store.aclose()


async def test_a_quiet_watch_waits_its_idle_timeout_not_the_request_timeout(
    etcd: EtcdProcess,
) -> None:
    # The HTTP client's read timeout is the request timeout; a watch stream must not inherit
    # it, or every quiet watch is torn down and reopened every request_timeout_s.
    from prometheus_client import REGISTRY

    def reopened() -> float:
        return REGISTRY.get_sample_value("streamd_etcd_watch_reopens_total") or 0.0

    store = EtcdMetaStore(
        EtcdClient([etcd.endpoint], request_timeout_s=0.3),
        namespace=f"quiet/{uuid.uuid4().hex}/",
        watch_idle_timeout_s=30.0,
    )
    try:
        start = (await store.snapshot("")).revision + 1
        async with store.watch("", start) as watch:
            reopens_before = reopened()
            with trio.move_on_after(1.5):
                await anext(watch)
            reopens = reopened() - reopens_before
            await store.txn([], puts=[("a", b"1")])
            assert [e.key for e in await collect(watch, 1)] == ["a"]
    finally:
        await store.aclose()
    assert reopens == 0
