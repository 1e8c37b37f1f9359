"""The trio layer of consumer groups: persistence through the MetaStore, restarts, CAS
conflicts, stale incarnations, and the wire handlers, against a fake engine (no storage)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from streamd.frontends.native.api import bind_handlers
from streamd.groups.service import GroupService, StreamView, group_key
from streamd.meta import SqliteMetaStore
from streamd_client.errors import (
    InternalError,
    InvalidArgumentError,
    ShardUnavailableError,
    StreamNotFoundError,
    error_from_wire,
)
from streamd_client.group_errors import (
    GroupActiveError,
    GroupNotFoundError,
    LeaseLostError,
    UnknownMemberError,
)
from streamd_client.model import Position, make_sequence, parse_sequence, shard_id_of

TRIM = Position.trim_horizon().to_wire()


class FakeEngine:
    """The engine calls the group code makes: describe_stream, read; and catalog.store."""

    def __init__(self, store: SqliteMetaStore, shards: int = 4) -> None:
        self.catalog = SimpleNamespace(store=store)
        self.created_ms = 1
        self.shard_count = shards
        self.tips = {shard_id_of(i): 10 * i for i in range(shards)}

    def describe_stream(self, name: str) -> dict[str, Any]:
        if name != "s":
            raise StreamNotFoundError(f"stream {name!r} not found")
        shards = [
            {
                "shard_id": shard_id_of(i),
                "ending_sequence": None,
                "parent_shard_id": None,
                "adjacent_parent_shard_id": None,
            }
            for i in range(self.shard_count)
        ]
        return {"name": name, "created_ms": self.created_ms, "shards": shards}

    async def read(
        self,
        name: str,
        shard_id: str,
        position: Position,
        max_bytes: int,
        wait_ms: int,
        *,
        counted: bool = True,
    ) -> SimpleNamespace:
        tip = self.tips[shard_id]
        offset = {"trim_horizon": 0, "latest": tip}.get(position.kind)
        if position.kind == "at_offset":
            offset = position.offset
        elif position.sequence is not None:
            offset = parse_sequence(position.sequence)[1] + (position.kind == "after_sequence")
        return SimpleNamespace(batches=[], start_offset=offset, high_watermark=tip, millis_behind=0)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    backend = SqliteMetaStore(tmp_path / "meta.sqlite3")
    yield backend
    await backend.aclose()


def _service(store: SqliteMetaStore, engine: FakeEngine, clock: Clock) -> GroupService:
    return GroupService(store, StreamView(engine), clock)


async def _join(
    service: GroupService, member: str, owned: list[tuple[str, int]] | None = None
) -> Any:
    return await service.step(
        "s",
        "g",
        lambda c, now: c.join(
            member, now, session_timeout_ms=3_000, rebalance_timeout_ms=30_000, owned=owned or []
        ),
        create_from=TRIM,
    )


async def test_restart_keeps_members_epochs_and_checkpoints(tmp_path: Path) -> None:
    clock = Clock()
    store = SqliteMetaStore(tmp_path / "meta.sqlite3")
    engine = FakeEngine(store)
    service = _service(store, engine, clock)
    answer = await _join(service, "a")
    s0 = answer.assignment[0].shard_id
    await service.step(
        "s", "g", lambda c, now: c.checkpoint("a", s0, 1, make_sequence(0, 7), now, "m")
    )
    await store.aclose()

    store = SqliteMetaStore(tmp_path / "meta.sqlite3")  # a new process over the same file
    clock.now += 60_000  # the server was down for a minute: a's session starts again at load
    service = _service(store, FakeEngine(store), clock)
    owned = [(g.shard_id, g.epoch) for g in answer.assignment]
    again = await service.step("s", "g", lambda c, now: c.heartbeat("a", now, owned))
    assert [(g.shard_id, g.epoch) for g in again.assignment] == owned
    assert again.assignment[0].start == Position.after_sequence(make_sequence(0, 7)).to_wire()
    view = await service.describe("s", "g")
    assert view["shards"][0]["checkpoint"] == make_sequence(0, 7)
    assert view["shards"][0]["metadata"] == "m"
    assert view["shards"][0]["lag_records"] == 0  # tip of shard 0 is 0 in the fake
    await store.aclose()


async def test_fenced_checkpoint_is_refused_and_not_stored(store: SqliteMetaStore) -> None:
    clock = Clock()
    service = _service(store, FakeEngine(store, shards=1), clock)
    await _join(service, "zombie")
    clock.now += 3_001
    await _join(service, "b")  # zombie expired on this step; b got the shard at epoch 2
    with pytest.raises(LeaseLostError) as info:
        await service.step(
            "s",
            "g",
            lambda c, now: c.checkpoint("zombie", shard_id_of(0), 1, make_sequence(0, 1), now),
        )
    assert info.value.details["current_epoch"] == 2
    assert await store.range("group-checkpoints/") == []
    with pytest.raises(UnknownMemberError):
        await service.step("s", "g", lambda c, now: c.heartbeat("zombie", now, []))


async def test_latest_pins_every_shard_at_its_tip_at_creation(store: SqliteMetaStore) -> None:
    engine = FakeEngine(store, shards=3)
    service = _service(store, engine, Clock())
    await service.step("s", "g", lambda c, now: None, create_from=Position.latest().to_wire())
    engine.tips = {s: t + 100 for s, t in engine.tips.items()}  # records arrive meanwhile
    answer = await _join(service, "a")
    assert [g.start for g in answer.assignment] == [
        Position.at_offset(t).to_wire() for t in (0, 10, 20)
    ]


async def test_a_write_behind_the_coordinators_back_is_detected_then_reloaded(
    store: SqliteMetaStore,
) -> None:
    service = _service(store, FakeEngine(store), Clock())
    await _join(service, "a")
    kv = await store.get(group_key("s", "g"))
    assert kv is not None
    await store.txn([], puts=[(group_key("s", "g"), kv.value)])  # another writer
    with pytest.raises(InternalError):
        await service.step("s", "g", lambda c, now: c.leave("a", now))
    answer = await _join(service, "b")  # reloaded from the store: a is still a member there
    view = await service.describe("s", "g")
    assert {m["member_id"] for m in view["members"]} == {"a", "b"}
    assert answer.member_id == "b"


async def test_a_recreated_stream_does_not_inherit_the_group(store: SqliteMetaStore) -> None:
    engine = FakeEngine(store)
    service = _service(store, engine, Clock())
    await _join(service, "a")
    engine.created_ms = 2  # deleted and created again: another incarnation
    with pytest.raises(GroupNotFoundError):
        await service.describe("s", "g")
    assert await store.get(group_key("s", "g")) is None


async def test_reset_and_delete_refused_while_active_unless_forced(store: SqliteMetaStore) -> None:
    service = _service(store, FakeEngine(store), Clock())
    answer = await _join(service, "a")
    shard, epoch = answer.assignment[1].shard_id, answer.assignment[1].epoch
    await service.step(
        "s", "g", lambda c, now: c.checkpoint("a", shard, epoch, make_sequence(1, 3), now)
    )
    with pytest.raises(GroupActiveError):
        await service.reset("s", "g", Position.latest().to_wire(), force=False)
    await service.reset("s", "g", Position.latest().to_wire(), force=True)
    assert await store.range("group-checkpoints/") == []
    view = await service.describe("s", "g")
    assert view["shards"][1]["start"] == Position.at_offset(10).to_wire()
    assert view["shards"][1]["epoch"] == 2
    with pytest.raises(GroupActiveError):
        await service.delete("s", "g", force=False)
    await service.delete("s", "g", force=True)
    assert await store.range("group") == []
    with pytest.raises(GroupNotFoundError):
        await service.describe("s", "g")
    assert await service.list_groups("s") == []


async def test_handlers_validate_and_round_trip(store: SqliteMetaStore) -> None:
    engine: Any = FakeEngine(store, shards=2)
    groups = GroupService(store, StreamView(engine))
    handlers: Any = bind_handlers(engine, groups)  # as streamd/node.py wires them
    base = {"stream": "s", "group": "g", "member_id": "m1"}
    join = await handlers["group_join"]({**base, "session_timeout_ms": 1_000})
    assert join["heartbeat_interval_ms"] == 333 and len(join["assignment"]) == 2
    owned = [[g["shard_id"], g["epoch"]] for g in join["assignment"]]
    beat = await handlers["group_heartbeat"]({**base, "owned": owned})
    assert beat["assignment"] == join["assignment"]
    done = await handlers["group_checkpoint"](
        {**base, "shard_id": shard_id_of(1), "epoch": 1, "sequence": make_sequence(1, 0)}
    )
    assert done == {
        "shard_id": shard_id_of(1),
        "sequence": make_sequence(1, 0),
        "epoch": 1,
        "shard_end": False,
    }
    listed = await handlers["group_list"]({"stream": "s"})
    assert listed["groups"][0]["group"] == "g" and listed["groups"][0]["members"] == 1
    described = await handlers["group_describe"]({"stream": "s", "group": "g"})
    assert described["group"]["shards"][1]["lag_records"] == 9
    await handlers["group_leave"](base)
    assert {h.args[0] for op, h in handlers.items() if op.startswith("group_")} == {groups}
    for bad in (
        {**base, "group": "a/b"},
        {**base, "owned": [["x"]]},
        {**base, "owned": [["x", True]]},
        {**base, "from": {"type": "at_offset", "offset": 3}},
        {**base, "session_timeout_ms": 5},
        {**base, "member_id": ""},
    ):
        with pytest.raises(InvalidArgumentError):
            await handlers["group_join"](bad)
    with pytest.raises(StreamNotFoundError):
        await handlers["group_join"]({**base, "stream": "nope"})


def test_group_error_codes_map_back_to_their_classes() -> None:
    error = error_from_wire({"code": "LEASE_LOST", "message": "m", "details": {"epoch": 1}})
    assert isinstance(error, LeaseLostError) and error.details == {"epoch": 1}
    assert isinstance(
        error_from_wire({"code": "GROUP_NOT_FOUND", "message": ""}), GroupNotFoundError
    )


async def test_a_latest_group_defers_a_shard_whose_tip_is_unavailable_not_every_step(
    store: SqliteMetaStore,
) -> None:
    engine = FakeEngine(store, shards=3)
    down = shard_id_of(1)
    read = engine.read

    async def read_or_unavailable(
        name: str, shard_id: str, *args: Any, **kwargs: Any
    ) -> SimpleNamespace:
        if shard_id == down:
            raise ShardUnavailableError(f"shard {shard_id} is unavailable", shard_id=shard_id)
        return await read(name, shard_id, *args, **kwargs)

    engine.read = read_or_unavailable  # type: ignore[method-assign]
    service = _service(store, engine, Clock())
    await service.step("s", "g", lambda c, now: None, create_from=Position.latest().to_wire())
    answer = await _join(service, "a")
    assert sorted(g.shard_id for g in answer.assignment) == [shard_id_of(0), shard_id_of(2)]
    engine.read = read  # type: ignore[method-assign]
    engine.tips[down] = 55  # back, with records that arrived meanwhile
    owned = [(g.shard_id, g.epoch) for g in answer.assignment]
    again = await service.step("s", "g", lambda c, now: c.heartbeat("a", now, owned))
    starts = {g.shard_id: g.start for g in again.assignment}
    assert starts[down] == Position.at_offset(55).to_wire()
