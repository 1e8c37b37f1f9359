"""Consumer groups in cluster mode, in one process: two "nodes" (a GroupService each, with its
own GroupCluster) over one metadata store, whose peer calls go straight to the other node's
native handlers. The controller's part (placing, moving) is written into the store by the test,
as the controller would write it. What is checked: the first request writes the unplaced
placement and the request then goes where the controller put it; a forwarded request is never
forwarded again; a deposed coordinator's writes fail on the placement's revision; state and
checkpoints carry over a move; a reset of many shards stays within etcd's txn limit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client import REGISTRY
from test_group_service import Clock, FakeEngine

from streamd.frontends.native.api import bind_handlers
from streamd.groups.cluster import GroupCluster
from streamd.groups.service import GroupService, StreamView
from streamd.meta import Compare, SqliteMetaStore
from streamd.meta.keys import COORDINATORS_PREFIX, CoordinatorPlacement, NodeRegistration
from streamd_client.errors import CoordinatorUnavailableError, StreamNotFoundError
from streamd_client.group_errors import GroupNotFoundError
from streamd_client.model import Position, make_sequence, shard_id_of

KEY = "coordinators/s/g"
JOIN = {"stream": "s", "group": "g", "session_timeout_ms": 3_000}


@dataclass
class Nodes:
    """The shard map's part the groups use: this node's id and who is live."""

    node_id: str
    live: set[str]
    lease_ok: bool = True
    lease_valid: Callable[[], bool] = field(init=False)

    def __post_init__(self) -> None:
        self.lease_valid = lambda: self.lease_ok

    def registration(self, node_id: str) -> NodeRegistration | None:
        if node_id not in self.live:
            return None
        return NodeRegistration(node_id, f"{node_id}:7070", "", 0, "test")


class Peers:
    """Forwarded calls land on the handlers of the node at that address."""

    def __init__(self) -> None:
        self.handlers: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    async def call(
        self, address: str, op: str, args: dict[str, Any], *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        self.calls.append((address, op, args))
        result: dict[str, Any] = await self.handlers[address][op](dict(args))
        return result


@dataclass
class Node:
    service: GroupService
    cluster: GroupCluster
    nodes: Nodes
    handlers: dict[str, Any]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteMetaStore]:
    backend = SqliteMetaStore(tmp_path / "meta.sqlite3")
    yield backend
    await backend.aclose()


def make_node(
    store: SqliteMetaStore, node_id: str, peers: Peers, live: set[str], shards: int = 2
) -> Node:
    engine: Any = FakeEngine(store, shards=shards)
    nodes = Nodes(node_id, live)
    cluster = GroupCluster(store, nodes, peers, placement_wait_s=0.5)
    service = GroupService(store, StreamView(engine), Clock(), cluster=cluster)
    handlers: dict[str, Any] = bind_handlers(engine, service)
    peers.handlers[f"{node_id}:7070"] = handlers
    return Node(service, cluster, nodes, handlers)


@pytest.fixture
async def pair(store: SqliteMetaStore) -> AsyncIterator[tuple[Node, Node, Peers]]:
    peers = Peers()
    live = {"a", "b"}
    a, b = make_node(store, "a", peers, live), make_node(store, "b", peers, live)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.cluster.run)
        await nursery.start(b.cluster.run)
        yield a, b, peers
        nursery.cancel_scope.cancel()


async def place(store: SqliteMetaStore, node: str) -> CoordinatorPlacement:
    """What the controller does: place (or move) the group's coordinator, epoch + 1."""
    kv = await store.get(KEY)
    assert kv is not None
    before = CoordinatorPlacement.decode(kv.value)
    after = CoordinatorPlacement("s", "g", node, before.epoch + 1)
    assert await store.txn([Compare(KEY, kv.mod_revision)], puts=[(KEY, after.encode())])
    return after


async def placement_written(store: SqliteMetaStore) -> None:
    while await store.get(KEY) is None:  # noqa: ASYNC110 - polls the store
        await trio.sleep(0.005)


async def joined_on_b(store: SqliteMetaStore, a: Node, member: str = "m1") -> dict[str, Any]:
    """A join through node a of a new group that the 'controller' places on b."""
    answer: dict[str, Any] = {}

    async def join() -> None:
        answer.update(await a.handlers["group_join"]({**JOIN, "member_id": member}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(join)
        await placement_written(store)
        await place(store, "b")
    return answer


async def test_the_first_join_writes_an_unplaced_placement_then_goes_where_it_is_placed(
    store: SqliteMetaStore, pair: tuple[Node, Node, Peers]
) -> None:
    a, b, peers = pair
    with trio.fail_after(5):
        answer = await joined_on_b(store, a)
    assert len(answer["assignment"]) == 2
    assert [(address, op, args.get("forwarded")) for address, op, args in peers.calls] == [
        ("b:7070", "group_join", True)
    ]
    view = await b.service.describe("s", "g")  # b runs the group
    assert [m["member_id"] for m in view["members"]] == ["m1"]
    with pytest.raises(CoordinatorUnavailableError):  # a does not: it would not even load it
        await a.service.describe("s", "g")
    described = await a.handlers["group_describe"]({"stream": "s", "group": "g"})  # forwarded
    assert [m["member_id"] for m in described["group"]["members"]] == ["m1"]


async def test_a_group_left_unplaced_answers_coordinator_unavailable_retryable(
    store: SqliteMetaStore, pair: tuple[Node, Node, Peers]
) -> None:
    a, _, _ = pair
    unplaced = {"reason": "unplaced"}
    before = REGISTRY.get_sample_value("streamd_group_coordinator_unavailable_total", unplaced)
    with trio.fail_after(5), pytest.raises(CoordinatorUnavailableError) as info:
        await a.handlers["group_join"]({**JOIN, "member_id": "m1"})
    after = REGISTRY.get_sample_value("streamd_group_coordinator_unavailable_total", unplaced)
    assert (after or 0) - (before or 0) == 1
    assert info.value.retryable and info.value.details == {"stream": "s", "group": "g"}
    kv = await store.get(KEY)
    assert kv is not None and CoordinatorPlacement.decode(kv.value) == (
        CoordinatorPlacement.unplaced("s", "g")
    )


async def test_a_forwarded_request_that_finds_the_group_elsewhere_is_not_forwarded_again(
    store: SqliteMetaStore, pair: tuple[Node, Node, Peers]
) -> None:
    a, _, peers = pair
    with trio.fail_after(5):
        await joined_on_b(store, a)
    peers.calls.clear()
    with pytest.raises(CoordinatorUnavailableError):
        await a.handlers["group_heartbeat"](
            {"stream": "s", "group": "g", "member_id": "m1", "forwarded": True}
        )
    assert peers.calls == []


async def test_a_group_on_a_node_that_is_not_live_is_unavailable_until_it_moves(
    store: SqliteMetaStore, pair: tuple[Node, Node, Peers]
) -> None:
    a, _, _ = pair
    with trio.fail_after(5):
        await joined_on_b(store, a)
    a.nodes.live.discard("b")  # b's registration is gone; the controller has not moved it yet
    with trio.fail_after(5), pytest.raises(CoordinatorUnavailableError) as info:
        await a.handlers["group_heartbeat"]({"stream": "s", "group": "g", "member_id": "m1"})
    assert info.value.details["node"] == "b"


async def test_unknown_groups_and_streams_write_no_placement(
    store: SqliteMetaStore, pair: tuple[Node, Node, Peers]
) -> None:
    a, _, _ = pair
    with pytest.raises(GroupNotFoundError):
        await a.handlers["group_describe"]({"stream": "s", "group": "g"})
    with pytest.raises(GroupNotFoundError):
        await a.handlers["group_heartbeat"]({"stream": "s", "group": "g", "member_id": "m"})
    with pytest.raises(StreamNotFoundError):
        await a.handlers["group_join"]({**JOIN, "stream": "nope", "member_id": "m"})
    assert await store.range(COORDINATORS_PREFIX) == []


async def test_state_and_checkpoints_carry_over_a_move_and_the_old_coordinator_lets_go(
    store: SqliteMetaStore, pair: tuple[Node, Node, Peers]
) -> None:
    a, b, _ = pair
    with trio.fail_after(5):
        answer = await joined_on_b(store, a)
    grant = answer["assignment"][0]
    checkpoint = {
        "stream": "s",
        "group": "g",
        "member_id": "m1",
        "shard_id": grant["shard_id"],
        "epoch": grant["epoch"],
        "sequence": make_sequence(0, 4),
    }
    await a.handlers["group_checkpoint"](checkpoint)  # forwarded to b
    moved = await place(store, "a")  # b's node "lost": the controller moves the group to a
    assert moved.epoch == 2
    with trio.fail_after(5):
        while b.cluster.mirror.revision < (await store.snapshot(KEY)).revision:  # noqa: ASYNC110
            await trio.sleep(0.005)
    with pytest.raises(CoordinatorUnavailableError):  # b dropped its runner, will not reload
        await b.service.describe("s", "g")
    owned = [[g["shard_id"], g["epoch"]] for g in answer["assignment"]]
    beat = await b.handlers["group_heartbeat"](  # through b, forwarded to a now
        {"stream": "s", "group": "g", "member_id": "m1", "owned": owned}
    )
    assert beat["assignment"] == [
        {
            **answer["assignment"][0],
            "start": Position.after_sequence(make_sequence(0, 4)).to_wire(),
        },
        answer["assignment"][1],
    ]


async def test_a_deposed_coordinator_that_has_not_seen_the_move_cannot_write(
    store: SqliteMetaStore,
) -> None:
    peers = Peers()
    a = make_node(store, "a", peers, {"a", "b"})
    b = make_node(store, "b", peers, {"a", "b"})
    async with trio.open_nursery() as nursery:
        await nursery.start(a.cluster.run)
        async with trio.open_nursery() as b_mirror:
            await b_mirror.start(b.cluster.run)
            with trio.fail_after(5):
                answer = await joined_on_b(store, a)
            b_mirror.cancel_scope.cancel()  # b's mirror stops here: it never hears of the move
        await place(store, "a")  # moved away while b believes it still coordinates
        grant = answer["assignment"][0]
        before = await store.range("group-checkpoints/")
        with pytest.raises(CoordinatorUnavailableError):
            await b.service.step(
                "s",
                "g",
                lambda c, now: c.checkpoint(
                    "m1", grant["shard_id"], grant["epoch"], make_sequence(0, 9), now
                ),
            )
        assert await store.range("group-checkpoints/") == before  # nothing written
        nursery.cancel_scope.cancel()


async def test_a_coordinator_whose_node_may_have_lost_its_lease_stops_serving(
    store: SqliteMetaStore, pair: tuple[Node, Node, Peers]
) -> None:
    a, b, _ = pair
    with trio.fail_after(5):
        await joined_on_b(store, a)
    b.nodes.lease_ok = False
    with pytest.raises(CoordinatorUnavailableError):
        await b.service.describe("s", "g")


async def test_delete_removes_the_placement_and_a_new_group_is_placed_afresh(
    store: SqliteMetaStore, pair: tuple[Node, Node, Peers]
) -> None:
    a, _, _ = pair
    with trio.fail_after(5):
        await joined_on_b(store, a)
    await a.handlers["group_delete"]({"stream": "s", "group": "g", "force": True})
    assert await store.range(COORDINATORS_PREFIX) == []
    assert await store.range("group") == []


async def test_a_reset_over_many_shards_is_one_prefix_delete_within_etcd_s_txn_limit(
    store: SqliteMetaStore,
) -> None:
    store.txn_ops_max = 128  # as etcd's --max-txn-ops
    peers = Peers()
    a = make_node(store, "a", peers, {"a"}, shards=200)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.cluster.run)
        async with trio.open_nursery() as inner:
            answer: dict[str, Any] = {}

            async def first_join() -> None:
                answer.update(await a.handlers["group_join"]({**JOIN, "member_id": "m1"}))

            inner.start_soon(first_join)
            await placement_written(store)
            await place(store, "a")
        for grant in answer["assignment"]:
            index = int(grant["shard_id"][-12:])
            await a.handlers["group_checkpoint"](
                {
                    "stream": "s",
                    "group": "g",
                    "member_id": "m1",
                    "shard_id": grant["shard_id"],
                    "epoch": grant["epoch"],
                    "sequence": make_sequence(index, 0),
                }
            )
        assert len(await store.range("group-checkpoints/")) == 200
        await a.handlers["group_reset"](
            {"stream": "s", "group": "g", "to": {"type": "trim_horizon"}, "force": True}
        )
        assert await store.range("group-checkpoints/") == []
        assert shard_id_of(199) in {g["shard_id"] for g in answer["assignment"]}
        nursery.cancel_scope.cancel()
