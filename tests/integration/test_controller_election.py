"""Controller election on a real etcd: one holder, a takeover within 5 s of the holder's lease
lapsing, and a deposed controller's fenced writes refused by etcd."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import trio

from streamd.controller.election import Elector, Leadership
from streamd.controller.errors import NotControllerError
from streamd.meta import Compare
from streamd.meta.etcd import EtcdMetaStore
from streamd.meta.etcd_client import EtcdClient
from streamd.meta.keys import CONTROLLER_KEY, ControllerRecord
from streamd.testing.etcd import EtcdProcess

TAKEOVER_S_MAX = 5.0


@pytest.fixture
async def store(etcd: EtcdProcess) -> AsyncIterator[EtcdMetaStore]:
    store = EtcdMetaStore(
        EtcdClient([etcd.endpoint], request_timeout_s=2.0), namespace=f"elect/{uuid.uuid4().hex}/"
    )
    yield store
    await store.aclose()


async def keep_alive(store: EtcdMetaStore, lease_id: int, last_renewal: list[float]) -> None:
    """What a node's membership does, cut down: the test stops it to make the lease lapse."""
    while True:
        last_renewal[0] = trio.current_time()
        await store.keepalive(lease_id)
        await trio.sleep(0.5)


async def test_the_second_elector_takes_over_within_5_s_of_the_first_ones_lease_lapsing(
    store: EtcdMetaStore,
) -> None:
    lease_a = await store.grant_lease(2)
    lease_b = await store.grant_lease(2)
    elected: list[tuple[str, Leadership, float]] = []
    b_elected = trio.Event()

    async def campaign(name: str, lease_id: int) -> None:
        leadership = await Elector(store, name, lease_id, recheck_s=1.0).campaign()
        elected.append((name, leadership, trio.current_time()))
        if name == "b":
            b_elected.set()

    last_a = [0.0]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            a_alive = trio.CancelScope()

            async def keep_a() -> None:
                with a_alive:
                    await keep_alive(store, lease_a.lease_id, last_a)

            nursery.start_soon(keep_a)
            nursery.start_soon(keep_alive, store, lease_b.lease_id, [0.0])
            await campaign("a", lease_a.lease_id)
            nursery.start_soon(campaign, "b", lease_b.lease_id)
            await trio.sleep(3.0)  # a keeps its lease alive: b must not get in
            assert [name for name, _, _ in elected] == ["a"]
            a_alive.cancel()  # a "dies": its lease lapses 2 s after its last renewal
            lapse_at = last_a[0] + lease_a.ttl_s
            await b_elected.wait()
            nursery.cancel_scope.cancel()
    (_, first, _), (name, second, at) = elected
    assert name == "b"
    print(f"took over {at - lapse_at:.2f} s after the lapse")  # the figure in docs/cluster.md
    assert at - lapse_at <= TAKEOVER_S_MAX, f"took over {at - lapse_at:.2f} s after the lapse"
    assert second.token > first.token
    kv = await store.get(CONTROLLER_KEY)
    assert kv is not None and kv.mod_revision == second.token
    assert ControllerRecord.decode(kv.value).node_id == "b"
    await store.revoke_lease(lease_b.lease_id)


async def test_a_revoked_holder_is_replaced_at_once_and_its_fenced_writes_are_refused(
    store: EtcdMetaStore,
) -> None:
    lease_a = await store.grant_lease(10)
    lease_b = await store.grant_lease(10)
    with trio.fail_after(15):
        a = await Elector(store, "a", lease_a.lease_id).campaign()
        assert await a.txn([Compare("shards/s/x", 0)], puts=[("shards/s/x", b"by a")])
        async with trio.open_nursery() as nursery:
            got: list[Leadership] = []

            async def campaign_b() -> None:
                got.append(await Elector(store, "b", lease_b.lease_id, recheck_s=1.0).campaign())

            nursery.start_soon(campaign_b)
            await trio.sleep(0.5)
            assert not got
            started = trio.current_time()
            await store.revoke_lease(lease_a.lease_id)  # a's node is gone
        assert trio.current_time() - started < 2.0  # the watch saw the delete: no TTL wait
        (b,) = got
        x = await store.get("shards/s/x")
        assert x is not None
        # a still believes it leads; etcd does not: its write (even a blind one) is refused.
        with pytest.raises(NotControllerError):
            await a.txn([], puts=[("shards/s/x", b"by deposed a")])
        assert a.deposed.is_set()
        with pytest.raises(NotControllerError):
            await a.txn([], puts=[("shards/s/y", b"by deposed a")])
        assert await store.get("shards/s/x") == x
        assert await store.get("shards/s/y") is None
        assert await b.txn([Compare("shards/s/x", x.mod_revision)], puts=[("shards/s/x", b"by b")])
        await b.resign()
        assert await store.get(CONTROLLER_KEY) is None
    await store.revoke_lease(lease_b.lease_id)


async def test_the_holder_notices_it_was_deposed(store: EtcdMetaStore) -> None:
    lease = await store.grant_lease(10)
    with trio.fail_after(10):
        a = await Elector(store, "a", lease.lease_id, recheck_s=1.0).campaign()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.watch_deposed)
            await trio.sleep(0.3)
            assert not a.deposed.is_set()
            await store.revoke_lease(lease.lease_id)
            await a.deposed.wait()
