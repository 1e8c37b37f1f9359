"""The active controller on a real etcd: places a 12-shard stream 4/4/4 over 3 registered
nodes, reacts to a node's lease lapsing (RF 1: its shards unavailable; RF 3: leaders move with
epoch + 1, then back when a node returns), and a controller elected mid-way carries on."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
import trio

from streamd.catalog import Catalog, StreamMeta
from streamd.controller.election import Elector
from streamd.controller.errors import NodeLostError
from streamd.controller.membership import Membership, MembershipConfig, join_cluster
from streamd.controller.service import ControllerService, serve_as_controller
from streamd.controller.status import read_status
from streamd.meta import Compare
from streamd.meta.etcd import EtcdMetaStore
from streamd.meta.etcd_client import EtcdClient
from streamd.meta.keys import (
    CONTROLLER_KEY,
    SHARDS_PREFIX,
    ControllerRecord,
    CoordinatorPlacement,
    DeclineReport,
    JoinReport,
    MoveRequest,
    NodeRegistration,
    ShardAssignment,
    drain_key,
    node_key,
)
from streamd.testing.etcd import EtcdProcess

WAIT_S = 15.0


@pytest.fixture
async def store(etcd: EtcdProcess) -> AsyncIterator[EtcdMetaStore]:
    store = EtcdMetaStore(
        EtcdClient([etcd.endpoint], request_timeout_s=2.0), namespace=f"ctl/{uuid.uuid4().hex}/"
    )
    yield store
    await store.aclose()


class RawNode:
    """A registered node whose keepalive the test can stop (its lease then lapses, unrevoked)."""

    def __init__(self, store: EtcdMetaStore, node_id: str) -> None:
        self.store = store
        self.node_id = node_id
        self.alive = trio.CancelScope()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        lease = await self.store.grant_lease(2)
        registration = NodeRegistration(self.node_id, "127.0.0.1:1", "", 0, "test")
        key = node_key(self.node_id)
        assert await self.store.txn(
            [Compare(key, 0)], puts=[(key, registration.encode())], lease=lease.lease_id
        )
        task_status.started()
        with self.alive:
            while True:
                await trio.sleep(0.5)
                await self.store.keepalive(lease.lease_id)


async def create_stream(store: EtcdMetaStore, stream: str, shards: int, rf: int) -> None:
    """As a node does: the catalog's document only; the controller makes the shard docs."""
    meta = replace(StreamMeta.new(stream, shards, 24, 0), replication_factor=rf)
    await Catalog(store, clustered=True).create(meta)


async def assignments(store: EtcdMetaStore) -> list[ShardAssignment]:
    return [ShardAssignment.decode(kv.value) for kv in await store.range(SHARDS_PREFIX)]


async def wait_for(
    store: EtcdMetaStore, done: Callable[[list[ShardAssignment]], bool]
) -> list[ShardAssignment]:
    with trio.fail_after(WAIT_S):
        while True:
            shards = await assignments(store)
            if done(shards):
                return shards
            await trio.sleep(0.05)


def leaders(shards: list[ShardAssignment]) -> Counter[str | None]:
    return Counter(s.leader for s in shards)


@asynccontextmanager
async def cluster(
    store: EtcdMetaStore, raw_ids: list[str]
) -> AsyncIterator[tuple[dict[str, RawNode], trio.Nursery]]:
    """Node "n1" runs the controller (a real member); the others are raw registrations."""
    async with trio.open_nursery() as nursery:
        raw = {node_id: RawNode(store, node_id) for node_id in raw_ids}
        for node in raw.values():
            await nursery.start(node.run)
        async with join_cluster(store, MembershipConfig("n1", "127.0.0.1:1")) as member:
            async with trio.open_nursery() as controller:
                controller.start_soon(serve_as_controller, store, member)
                yield raw, nursery
                controller.cancel_scope.cancel()  # a clean stop: before the node leaves
        nursery.cancel_scope.cancel()


def all_ok(shards: list[ShardAssignment], count: int = 12) -> bool:
    """``count`` shard documents (the controller makes them one by one), every one placed."""
    return len(shards) == count and all(s.status == "ok" for s in shards)


async def test_twelve_shards_spread_four_per_node_and_a_lost_node_s_shards_go_unavailable(
    store: EtcdMetaStore,
) -> None:
    async with cluster(store, ["n2", "n3"]) as (raw, _):
        await create_stream(store, "orders", 12, 1)
        placed = await wait_for(store, all_ok)
        assert leaders(placed) == {"n1": 4, "n2": 4, "n3": 4}
        assert {s.leader_epoch for s in placed} == {1}
        on_n3 = {s.shard_id for s in placed if s.leader == "n3"}

        raw["n3"].alive.cancel()  # n3 stops renewing: its lease lapses within 2 s
        after = await wait_for(
            store, lambda shards: sum(s.status == "unavailable" for s in shards) == 4
        )
        assert {s.shard_id for s in after if s.status == "unavailable"} == on_n3
        status = await read_status(store)
        assert status.controller == "n1" and status.shards_unavailable == 4
        assert [(n.node_id, n.live, n.replicas, n.leaders) for n in status.nodes] == [
            ("n1", True, 4, 4),
            ("n2", True, 4, 4),
            ("n3", False, 4, 0),
        ]
        for s in after:
            if s.shard_id in on_n3:
                assert (s.leader, s.replicas, s.leader_epoch) == (None, ("n3",), 1)
            else:
                assert s.status == "ok" and s.leader_epoch == 1  # nothing else touched

        revived = RawNode(store, "n3")  # n3 restarts and registers again
        async with trio.open_nursery() as nursery:
            await nursery.start(revived.run)
            back = await wait_for(store, all_ok)
            nursery.cancel_scope.cancel()
        for s in back:
            assert s.leader_epoch == (2 if s.shard_id in on_n3 else 1)
        assert leaders(back) == {"n1": 4, "n2": 4, "n3": 4}


async def test_with_three_replicas_a_lost_leader_s_shards_get_a_live_leader_at_epoch_plus_one(
    store: EtcdMetaStore,
) -> None:
    async with cluster(store, ["n2", "n3", "n4"]) as (raw, _):
        await create_stream(store, "orders", 12, 3)
        placed = await wait_for(store, all_ok)
        assert leaders(placed) == {"n1": 3, "n2": 3, "n3": 3, "n4": 3}
        assert all(len(set(s.replicas)) == 3 for s in placed)
        before = {s.shard_id: s for s in placed}

        raw["n4"].alive.cancel()
        moved = await wait_for(store, lambda shards: all_ok(shards) and "n4" not in leaders(shards))
        for s in moved:
            old = before[s.shard_id]
            assert s.replicas == old.replicas  # no data moved
            if old.leader == "n4":
                assert s.leader in old.replicas and s.leader != "n4"
                assert s.leader_epoch == old.leader_epoch + 1
            else:
                assert (s.leader, s.leader_epoch) == (old.leader, old.leader_epoch)
        # n4's followers were spread, so its three leaderships go to three different nodes.
        assert leaders(moved) == {"n1": 4, "n2": 4, "n3": 4}


async def test_a_controller_elected_halfway_through_places_the_rest_where_they_balance(
    store: EtcdMetaStore,
) -> None:
    async with trio.open_nursery() as nursery:
        for node_id in ["n1", "n2", "n3"]:
            await nursery.start(RawNode(store, node_id).run)
        lease = await store.grant_lease(10)
        await create_stream(store, "orders", 12, 1)
        # The first controller placed 4 shards, all on n1, then died.
        old = await Elector(store, "old", lease.lease_id).campaign()
        for i in range(4):
            placed = ShardAssignment("orders", f"shardId-{i:012}", 1, ("n1",), "n1", 1, "ok")
            assert await old.txn([], puts=[(placed.key, placed.encode())])
        await store.revoke_lease(lease.lease_id)

        lease = await store.grant_lease(10)
        new = await Elector(store, "new", lease.lease_id).campaign()
        service = ControllerService(store, new)
        applied = await service.round()
        assert len(applied) == 8
        assert leaders(await assignments(store)) == {"n1": 4, "n2": 4, "n3": 4}
        assert await service.round() == []  # idempotent: nothing left to do
        await store.revoke_lease(lease.lease_id)
        nursery.cancel_scope.cancel()


async def test_a_stale_document_write_ends_the_round_without_damage(store: EtcdMetaStore) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(RawNode(store, "n1").run)
        await create_stream(store, "orders", 2, 1)
        lease = await store.grant_lease(10)
        leadership = await Elector(store, "c", lease.lease_id).campaign()
        service = ControllerService(store, leadership)
        view = await service.read()
        first = sorted(view.shards)[0]
        # Someone (a creator retrying) rewrites the document between the read and the write.
        await store.txn([], puts=[(first, view.shards[first].encode())])
        real_read = service.read

        async def stale_read() -> object:
            return view

        service.read = stale_read  # type: ignore[method-assign, assignment]
        assert await service.round() == []
        service.read = real_read  # type: ignore[method-assign]
        assert len(await service.round()) == 2
        await store.revoke_lease(lease.lease_id)
        nursery.cancel_scope.cancel()


async def test_when_the_controller_s_node_dies_another_node_takes_over_and_carries_on(
    store: EtcdMetaStore,
) -> None:
    lost: list[str] = []

    async def node(node_id: str, *, task_status: trio.TaskStatus[Membership]) -> None:
        async with join_cluster(store, MembershipConfig(node_id, "127.0.0.1:1")) as member:
            task_status.started(member)
            try:
                await serve_as_controller(store, member, recheck_s=1.0)
            except NodeLostError:
                lost.append(node_id)

    async with trio.open_nursery() as nursery:
        members = {n: await nursery.start(node, n) for n in ["n1", "n2"]}
        await create_stream(store, "first", 6, 1)
        await wait_for(store, lambda shards: all_ok(shards, 6))
        holder = await store.get(CONTROLLER_KEY)
        assert holder is not None
        dead = ControllerRecord.decode(holder.value).node_id
        (alive,) = set(members) - {dead}
        started = trio.current_time()
        await store.revoke_lease(members[dead].lease_id)  # the controller's node is gone
        with trio.fail_after(5.0):
            await members[dead].lost.wait()  # it knows: its next renewal was refused
            while True:
                kv = await store.get(CONTROLLER_KEY)
                if kv is not None and ControllerRecord.decode(kv.value).node_id == alive:
                    break
                await trio.sleep(0.05)
        took_over_s = trio.current_time() - started
        print(f"new controller {took_over_s:.2f} s after the old one's lease ended")
        await create_stream(store, "second", 4, 1)  # admin work goes on under the new one

        def settled(shards: list[ShardAssignment]) -> bool:
            second = [s for s in shards if s.stream == "second"]
            orphans = [s for s in shards if s.stream == "first" and dead in s.replicas]
            return (
                len(second) == 4
                and all_ok(second, 4)
                and len(orphans) == 3
                and all(s.status == "unavailable" for s in orphans)
            )

        shards = await wait_for(store, settled)
        assert {s.leader for s in shards if s.stream == "second"} == {alive}
        assert lost == [dead]
        nursery.cancel_scope.cancel()


async def test_the_controller_makes_the_shard_documents_of_a_big_stream_and_drops_orphans(
    store: EtcdMetaStore,
) -> None:
    """200 shards: more than one etcd txn may hold (128 operations), so the catalog writes the
    stream's document alone and the controller makes each shard's; once the stream's document
    is gone (deleted by hand here, without the prefix delete), its shard documents go too."""
    async with trio.open_nursery() as nursery:
        for node_id in ["n1", "n2"]:
            await nursery.start(RawNode(store, node_id).run)
        await create_stream(store, "big", 200, 1)
        lease = await store.grant_lease(10)
        service = ControllerService(store, await Elector(store, "c", lease.lease_id).campaign())
        await service.round()
        placed = await assignments(store)
        assert all_ok(placed, 200) and leaders(placed) == {"n1": 100, "n2": 100}
        assert await store.txn([], deletes=["streams/big"])
        await service.round()
        assert await assignments(store) == []
        await store.revoke_lease(lease.lease_id)
        nursery.cancel_scope.cancel()


async def test_a_group_s_placement_is_placed_and_dropped_with_its_stream(
    store: EtcdMetaStore,
) -> None:
    """A node writes a group's placement unplaced (groups/cluster.py); the controller places it
    on the live node running fewest coordinators at epoch 1, and deletes it once its stream's
    document is gone (a stream delete leaves its groups' placements behind)."""
    async with trio.open_nursery() as nursery:
        for node_id in ["n1", "n2"]:
            await nursery.start(RawNode(store, node_id).run)
        await create_stream(store, "kept", 1, 1)
        await create_stream(store, "gone", 1, 1)
        for stream in ["kept", "gone"]:
            doc = CoordinatorPlacement.unplaced(stream, "g")
            assert await store.txn([Compare(doc.key, 0)], puts=[(doc.key, doc.encode())])
        lease = await store.grant_lease(10)
        service = ControllerService(store, await Elector(store, "c", lease.lease_id).campaign())
        await service.round()
        placed = [CoordinatorPlacement.decode(kv.value) for kv in await store.range("coord")]
        assert sorted((p.stream, p.node_id, p.epoch) for p in placed) == [
            ("gone", "n1", 1),  # by key: gone's first, on the first of the idle nodes
            ("kept", "n2", 1),
        ]
        assert await store.txn([], deletes=["streams/gone"])
        await service.round()
        left = [CoordinatorPlacement.decode(kv.value) for kv in await store.range("coord")]
        assert [(p.stream, p.node_id) for p in left] == [("kept", "n2")]
        await store.revoke_lease(lease.lease_id)
        nursery.cancel_scope.cancel()


async def test_reports_and_requests_are_acted_on_or_deleted_when_stale(
    store: EtcdMetaStore,
) -> None:
    """The request keys against real etcd: a decline of the current term moves the leader, a
    stale decline and a move of a shard that does not exist are deleted, a join report for a
    node that is not joining is deleted, and a drained node loses its leaderships."""
    async with cluster(store, ["n2", "n3"]) as _:
        await create_stream(store, "orders", 3, 3)
        placed = {s.shard_id: s for s in await wait_for(store, lambda s: all_ok(s, 3))}
        first, second, _third = sorted(placed)
        shard = placed[first]
        decline = DeclineReport("orders", first, shard.leader, shard.leader_epoch)  # type: ignore[arg-type]
        stale_decline = DeclineReport("orders", second, "n2", 0)
        not_joining = JoinReport("orders", second, "n3", placed[second].leader_epoch)
        no_shard = MoveRequest("orders", "shardId-000000000099", "n1", "n2")
        for request in (decline, stale_decline, not_joining, no_shard):
            await store.txn([], puts=[(request.key, request.encode())])
        moved = await wait_for(
            store,
            lambda shards: any(
                s.shard_id == first and s.leader not in (None, shard.leader) for s in shards
            ),
        )
        after = next(s for s in moved if s.shard_id == first)
        assert after.leader_epoch == shard.leader_epoch + 1 and after.replicas == shard.replicas
        keys = [r.key for r in (decline, stale_decline, not_joining, no_shard)]
        with trio.fail_after(WAIT_S):
            while True:  # polled: the store has no "wait until absent"
                left = [k for k in keys if await store.get(k) is not None]
                if not left:
                    break
                await trio.sleep(0.05)

        await store.txn([], puts=[(drain_key("n2"), b'{"v":1,"node":"n2"}')])
        drained = await wait_for(store, lambda shards: "n2" not in leaders(shards))
        assert all(s.replicas == placed[s.shard_id].replicas for s in drained)  # no spare node
