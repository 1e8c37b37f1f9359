"""The trio layer around the coordinators: loading, persisting, logging, and the stream's view.

One ``GroupService`` per node (streamd/node.py builds it over the engine's metadata store and a
``StreamView`` of the engine, hands it to the native front end and runs its expiry timer), one
``_Runner`` per (stream, group), loaded lazily from the metadata store on first use. A runner
steps its coordinator under a lock, then does what the step's ``Ready`` says, in this order:
persist (one compare-and-swap transaction), log the events, answer. So an answer never announces
a lease epoch or confirms a checkpoint that is not durable yet.

Stored keys (``MetaStore``; CBOR documents, state.py):

    groups/<stream>/<group>                          the group document
    group-checkpoints/<stream>/<group>/<shard_id>    one checkpoint per shard

Every write compares the group key's ``mod_revision`` with the one this runner last saw, so a
second coordinator of the same group can never silently overwrite this one: a failed compare
drops the runner, and the next request reloads it from the store.

Cluster mode (``cluster``: cluster.py): one node coordinates each group, the one its placement
document names. A runner loads only there, takes a ``Fence`` on the placement when it loads, and
every write also compares the placement's ``mod_revision``: once the controller moves the group,
the deposed runner's writes fail (COORDINATOR_UNAVAILABLE, retryable) and it is dropped; the
placement mirror drops it as soon as the move is seen, even without a write. Requests for groups
coordinated elsewhere never reach the runners here: the front end forwards them (``route``).
The persist step is shielded from cancellation (a client that disconnects mid-request must not
leave memory ahead of disk); any failure to persist also drops the runner, for the same reason.

Time: expiry is evaluated at the start of every step, so a dead member's leases move on the
first heartbeat of a survivor after its session timeout (failover <= session timeout + one
heartbeat interval). The engine also calls ``tick_all`` every second, so expiries of idle groups
are logged and persisted without traffic. Time comes from an ``AnchoredClock`` (wall-clock
readings that never jump), so clock steps cannot expire sessions.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
import trio

from streamd_client import batch as batchfmt
from streamd_client.errors import (
    CoordinatorUnavailableError,
    InternalError,
    LimitExceededError,
    StreamdError,
    StreamNotFoundError,
)
from streamd_client.group_errors import GroupActiveError, GroupNotFoundError
from streamd_client.model import Position

from ..meta import Compare, MetaStore
from ..meta.errors import MetaError
from ..meta.keys import COORDINATORS_PREFIX
from .cluster import COORDINATOR_UNAVAILABLE, Fence, GroupCluster
from .coordinator import Coordinator, Ready
from .lag_metrics import LAG_REFRESH_S, LagSeries, SeriesKey
from .state import GROUPS_PER_STREAM_MAX, SHARD_END, Checkpoint, GroupDoc, ShardInfo

log = structlog.get_logger(__name__)

_T = TypeVar("_T")
Describe = Callable[[str], Awaitable[dict[str, Any]]]
GROUP_TICK_S = 1.0  # how often run() expires silent members of idle groups
_GROUP_PREFIX = "groups/"
_CHECKPOINT_PREFIX = "group-checkpoints/"
_WARN_EVENTS = frozenset(
    {"member.expired", "checkpoint.fenced", "lease.revoke_timeout", "lease.fenced_by_reset"}
)


def group_key(stream: str, group: str) -> str:
    return f"{_GROUP_PREFIX}{stream}/{group}"


def checkpoint_prefix(stream: str, group: str) -> str:
    return f"{_CHECKPOINT_PREFIX}{stream}/{group}/"


def _descendants(shards: list[ShardInfo], roots: set[str]) -> set[str]:
    """The shards of ``shards`` descending from any of ``roots`` (lineage through parents)."""
    found: set[str] = set()
    grew = True
    while grew:
        grew = False
        for info in shards:
            if info.shard_id not in found and any(p in roots or p in found for p in info.parents):
                found.add(info.shard_id)
                grew = True
    return found


class AnchoredClock:
    """Milliseconds that read like wall-clock time but never jump: the wall clock at start plus
    monotonic time since. Session deadlines are measured on it, so an NTP step cannot expire a
    whole group at once (or keep a dead member alive); stored times (created, checkpointed) still
    read as dates. A restart anchors it again, and members get a fresh session at load anyway."""

    def __init__(self) -> None:
        self._wall_ms = time.time_ns() // 1_000_000
        self._mono_ns = time.monotonic_ns()

    def __call__(self) -> int:
        return self._wall_ms + (time.monotonic_ns() - self._mono_ns) // 1_000_000


class StreamView:
    """What the groups need from the engine: shard topology, incarnation, tips. Public engine
    calls only (plus the stream's id, when the engine exposes it)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._cache: dict[str, tuple[object, str, list[ShardInfo]]] = {}

    def shards(self, stream: str) -> tuple[str, list[ShardInfo]]:
        """(incarnation id, shards). Raises StreamNotFoundError.

        Every group request asks, so the answer is cached per stream for as long as the
        engine's stream metadata object is the same one (it is immutable and replaced on
        every change, a status change to DELETING included).
        """
        running = getattr(self.engine, "streams", {}).get(stream)
        meta = getattr(running, "meta", None)
        cached = self._cache.get(stream)
        if meta is not None and cached is not None and cached[0] is meta:
            return cached[1], cached[2]
        try:
            described = self.engine.describe_stream(stream)
        except StreamNotFoundError:
            self._cache.pop(stream, None)
            raise
        infos = [
            ShardInfo(
                s["shard_id"],
                tuple(p for p in (s["parent_shard_id"], s["adjacent_parent_shard_id"]) if p),
                s["ending_sequence"] is not None,
            )
            for s in described["shards"]
        ]
        incarnation = str(getattr(meta, "stream_id", None) or described["created_ms"])
        if meta is not None:
            self._cache[stream] = (meta, incarnation, infos)
        return incarnation, infos

    async def tip(self, stream: str, shard_id: str) -> int:
        """The shard's high watermark (the offset LATEST names)."""
        result = await self.engine.read(stream, shard_id, Position.latest(), 1, 0, counted=False)
        return int(result.high_watermark)

    async def lag(self, stream: str, shard_id: str, start: dict[str, Any]) -> dict[str, Any]:
        """Records and milliseconds between a resume position and the shard's tip.

        ``lag_ms`` is the tip's arrival time minus the arrival time of the first batch still to
        process (batch granularity: arrival times are kept per batch).
        """
        position = Position.from_wire(start)
        result = await self.engine.read(stream, shard_id, position, 1, 0, counted=False)
        lag_records = max(0, result.high_watermark - result.start_offset)
        lag_ms = 0
        if lag_records and result.batches:
            header = batchfmt.parse_header(result.batches[0])
            lag_ms = result.millis_behind + header.last_arrival_ms - header.first_arrival_ms
        return {
            "high_watermark": result.high_watermark,
            "lag_records": lag_records,
            "lag_ms": max(0, lag_ms),
        }


class _Runner:
    """One group's coordinator, the lock that serialises its steps, and its stored revision."""

    def __init__(self, coordinator: Coordinator, revision: int, fence: Fence | None) -> None:
        self.coordinator = coordinator
        self.revision = revision  # the group key's mod_revision as last written or read
        self.fence = fence  # cluster mode: the placement this runner loaded on
        self.lock = trio.Lock()
        self.broken = False

    def compares(self, key: str) -> list[Compare]:
        """What every write of this runner compares: its group key, and its placement."""
        return [Compare(key, self.revision)] + ([self.fence.compare()] if self.fence else [])


class GroupService:
    """Every consumer group of one engine."""

    def __init__(
        self,
        store: MetaStore,
        view: StreamView,
        clock: Callable[[], int] | None = None,
        *,
        cluster: GroupCluster | None = None,
    ) -> None:
        self.store = store
        self.view = view
        self.clock = clock or AnchoredClock()
        self.cluster = cluster  # None: the embedded default, every group here
        self._runners: dict[tuple[str, str], _Runner] = {}
        self._load_lock = trio.Lock()
        self._lag_series = LagSeries()
        if cluster is not None:
            cluster.listen(self._placements_changed)

    # -- cluster mode ----------------------------------------------------------------------------

    async def route(self, stream: str, group: str, *, create: bool, forwarded: bool) -> str | None:
        """Where a request for the group is served: None for here (always, embedded), else the
        coordinator node's native address (the front end forwards it). Raises
        StreamNotFoundError, CoordinatorUnavailableError (cluster.py, ``GroupCluster.route``)."""
        if self.cluster is None:
            return None
        self.view.shards(stream)  # raises StreamNotFoundError: no placement for no stream

        async def exists() -> bool:
            return await self.store.get(group_key(stream, group)) is not None

        return await self.cluster.route(
            stream, group, create=create, forwarded=forwarded, exists=exists
        )

    def _holds(self, stream: str, group: str, runner: _Runner) -> bool:
        if self.cluster is None or runner.fence is None:
            return True
        return self.cluster.holds(stream, group, runner.fence)

    def _placements_changed(self, keys: set[str]) -> None:
        """The mirror's listener: drop every runner whose placement moved away (no I/O)."""
        for key in keys:
            stream, _, group = key[len(COORDINATORS_PREFIX) :].partition("/")
            runner = self._runners.get((stream, group))
            if runner is not None and not self._holds(stream, group, runner):
                self._drop(stream, group, runner, quiet=True)
                log.info("group.coordinator_moved_away", stream=stream, group=group)

    # -- stepping --------------------------------------------------------------------------------

    async def step(
        self,
        stream: str,
        group: str,
        action: Callable[[Coordinator, int], _T],
        *,
        create_from: dict[str, Any] | None = None,
    ) -> _T:
        """Run ``action(coordinator, now_ms)`` as one step, persist its effects, log them.

        ``create_from`` creates a missing group with that initial position; without it a
        missing group raises GroupNotFoundError. The action's own StreamdError is re-raised
        after the effects of the step (expiries it triggered) are persisted.
        """
        while True:
            runner = await self._runner(stream, group, create_from)
            async with runner.lock:
                if runner.broken:  # dropped while we waited: load it again
                    continue
                return await self._step_locked(stream, group, runner, action)

    async def _step_locked(
        self, stream: str, group: str, runner: _Runner, action: Callable[[Coordinator, int], _T]
    ) -> _T:
        coordinator = runner.coordinator
        with trio.CancelScope(shield=True):
            now = self.clock()
            error: StreamdError | None = None
            result: _T | None = None
            try:
                await self._sync_topology(coordinator, now)
                result = action(coordinator, now)
            except StreamdError as exc:
                error = exc
            except BaseException:
                self._drop(stream, group, runner)
                raise
            await self._apply(stream, group, runner, coordinator.take_ready())
        if error is not None:
            raise error
        return result  # type: ignore[return-value]

    async def _sync_topology(self, coordinator: Coordinator, now: int) -> None:
        _, shards = self.view.shards(coordinator.stream)
        unknown = coordinator.unknown_shards(shards)
        starts: dict[str, dict[str, Any]] = {}
        deferred: set[str] = set()
        if coordinator.doc.initial.get("type") == "latest":
            for info in unknown:
                if not info.parents:  # children always start at their beginning
                    try:
                        tip = await self.view.tip(coordinator.stream, info.shard_id)
                    except StreamdError as exc:
                        if not exc.retryable:
                            raise
                        # Cluster mode: the shard's node is down. Its pinned start is unknown,
                        # so the group learns of it (and its children) at a later step rather
                        # than failing every step of every member until it is back.
                        deferred.add(info.shard_id)
                        continue
                    starts[info.shard_id] = Position.at_offset(tip).to_wire()
        if deferred:
            deferred |= _descendants(unknown, deferred)
            log.warning(
                "group.shards_deferred",
                stream=coordinator.stream,
                group=coordinator.group,
                shards=sorted(deferred),
            )
            shards = [s for s in shards if s.shard_id not in deferred]
        coordinator.sync_shards(shards, starts, now)

    async def _apply(self, stream: str, group: str, runner: _Runner, ready: Ready) -> None:
        if ready.must_persist:
            try:
                await self._persist(stream, group, runner, ready)
            except BaseException:
                self._drop(stream, group, runner)
                raise
        for event in ready.events:
            method = log.warning if event.kind in _WARN_EVENTS else log.info
            method(f"group.{event.kind}", **event.fields)

    async def _persist(self, stream: str, group: str, runner: _Runner, ready: Ready) -> None:
        key = group_key(stream, group)
        puts: list[tuple[str, bytes]] = []
        deletes: list[str] = []
        if ready.group_changed:
            puts.append((key, runner.coordinator.doc.encode()))
        prefix = checkpoint_prefix(stream, group)
        for shard_id, checkpoint in ready.checkpoints.items():
            if checkpoint is None:
                deletes.append(prefix + shard_id)
            else:
                puts.append((prefix + shard_id, checkpoint.encode()))
        prefixes: list[str] = []
        if deletes and not runner.coordinator.checkpoints:
            # Every checkpoint is gone (a reset): one prefix delete, however many shards, so
            # the txn stays within etcd's 128 operations (docs/cluster.md, txn rules).
            deletes, prefixes = [], [prefix]
        if not await self.store.txn(
            runner.compares(key), puts=puts, deletes=deletes, delete_prefixes=prefixes
        ):
            raise self._changed_error(stream, group)
        if ready.group_changed:
            runner.revision = await self._revision(key)

    def _changed_error(self, stream: str, group: str) -> StreamdError:
        if self.cluster is not None:  # most likely the placement moved: retry finds the new one
            COORDINATOR_UNAVAILABLE.labels("fenced").inc()
            return CoordinatorUnavailableError(
                f"group {stream}/{group} changed under its coordinator (moved?); retry",
                stream=stream,
                group=group,
            )
        return InternalError(f"group {stream}/{group} changed under its coordinator; retry")

    async def _revision(self, key: str) -> int:
        kv = await self.store.get(key)
        if kv is None:
            raise InternalError(f"group document {key} vanished after a write")
        return kv.mod_revision

    def _drop(self, stream: str, group: str, runner: _Runner, *, quiet: bool = False) -> None:
        """Forget the in-memory coordinator; the next request reloads it from the store."""
        runner.broken = True
        if self._runners.get((stream, group)) is runner:
            del self._runners[(stream, group)]
        if not quiet:
            log.warning("group.coordinator_dropped", stream=stream, group=group)

    # -- loading ---------------------------------------------------------------------------------

    async def _runner(self, stream: str, group: str, create_from: dict[str, Any] | None) -> _Runner:
        runner = self._runners.get((stream, group))
        incarnation, shards = self.view.shards(stream)  # raises StreamNotFoundError
        if runner is not None and not self._holds(stream, group, runner):
            self._drop(stream, group, runner, quiet=True)  # moved away: load (and fail) again
            runner = None
        if runner is not None and runner.coordinator.doc.stream_id == incarnation:
            return runner
        async with self._load_lock:
            runner = self._runners.get((stream, group))
            if (
                runner is not None
                and runner.coordinator.doc.stream_id == incarnation
                and self._holds(stream, group, runner)
            ):
                return runner
            if runner is not None:  # the stream was deleted and created again, or it moved
                self._drop(stream, group, runner, quiet=True)
            with trio.CancelScope(shield=True):
                loaded = await self._load(stream, group, incarnation, shards, create_from)
            self._runners[(stream, group)] = loaded
            return loaded

    async def _load(
        self,
        stream: str,
        group: str,
        incarnation: str,
        shards: list[ShardInfo],
        create_from: dict[str, Any] | None,
    ) -> _Runner:
        key = group_key(stream, group)
        if self.cluster is not None and create_from is None and await self.store.get(key) is None:
            raise GroupNotFoundError(f"stream {stream!r} has no group {group!r}", group=group)
        # Cluster mode: the fence first, then the group: a runner loads what its coordinator
        # epoch's predecessors wrote (their later writes fail on the fence's revision).
        fence = None if self.cluster is None else await self.cluster.fence(stream, group)
        now = self.clock()
        kv = await self.store.get(key)
        if kv is not None:
            doc = GroupDoc.decode(kv.value, now)
            if doc.stream_id == incarnation:
                checkpoints = await self._load_checkpoints(stream, group)
                coordinator = Coordinator(doc, checkpoints, shards, now_ms=now)
                return _Runner(coordinator, kv.mod_revision, fence)
            await self._forget(stream, group, kv.mod_revision, fence)  # a dead incarnation's
            log.info("group.stale_removed", stream=stream, group=group)
        if create_from is None:
            raise GroupNotFoundError(f"stream {stream!r} has no group {group!r}", group=group)
        existing = await self.store.range(f"{_GROUP_PREFIX}{stream}/")
        if len(existing) >= GROUPS_PER_STREAM_MAX:
            raise LimitExceededError(f"stream {stream!r} has {GROUPS_PER_STREAM_MAX} groups")
        doc = GroupDoc(stream, incarnation, group, now, create_from)
        compares = [Compare(key, 0)] + ([fence.compare()] if fence else [])
        if not await self.store.txn(compares, puts=[(key, doc.encode())]):
            raise self._changed_error(stream, group)
        log.info("group.created", stream=stream, group=group, initial=create_from)
        return _Runner(Coordinator(doc, {}, [], now_ms=now), await self._revision(key), fence)

    async def _load_checkpoints(self, stream: str, group: str) -> dict[str, Checkpoint]:
        prefix = checkpoint_prefix(stream, group)
        return {
            kv.key[len(prefix) :]: Checkpoint.decode(kv.value)
            for kv in await self.store.range(prefix)
        }

    async def _forget(
        self,
        stream: str,
        group: str,
        revision: int,
        fence: Fence | None,
        *,
        placement_too: bool = False,
    ) -> None:
        """Delete the group and its checkpoints (and, deleting it for good in cluster mode, its
        placement: a group made again is placed afresh)."""
        key = group_key(stream, group)
        prefix = checkpoint_prefix(stream, group)  # one txn op for all the checkpoints
        compares = [Compare(key, revision)] + ([fence.compare()] if fence else [])
        deletes = [key] + ([fence.key] if fence and placement_too else [])
        if not await self.store.txn(compares, deletes=deletes, delete_prefixes=[prefix]):
            raise self._changed_error(stream, group)

    # -- whole-group operations ------------------------------------------------------------------

    async def list_groups(
        self, stream: str, describe: Describe | None = None
    ) -> list[dict[str, Any]]:
        """A summary per group of the stream, sorted by name. Raises StreamNotFoundError.

        ``describe(group)`` gives one group's view (default: this node's runner; cluster mode:
        the front end routes it to each group's coordinator). A group whose coordinator is
        unavailable is listed with state ``UNAVAILABLE`` and no counts."""
        self.view.shards(stream)
        prefix = f"{_GROUP_PREFIX}{stream}/"
        names = [kv.key[len(prefix) :] for kv in await self.store.range(prefix)]
        out: list[dict[str, Any]] = []
        for name in names:
            try:
                if describe is None:
                    view = await self.step(stream, name, lambda c, now: c.describe(now))
                else:
                    view = await describe(name)
            except GroupNotFoundError:
                continue  # a stale group of an older incarnation of the stream
            except CoordinatorUnavailableError:
                out.append(
                    {
                        "group": name,
                        "state": "UNAVAILABLE",
                        "members": None,
                        "shards": None,
                        "finished_shards": None,
                    }
                )
                continue
            out.append(
                {
                    "group": name,
                    "state": view["state"],
                    "members": len(view["members"]),
                    "shards": len(view["shards"]),
                    "finished_shards": sum(1 for s in view["shards"] if s["status"] == "FINISHED"),
                }
            )
        return out

    async def describe(self, stream: str, group: str) -> dict[str, Any]:
        """The group's members, leases, checkpoints, and lag per shard."""
        view = await self.step(stream, group, lambda c, now: c.describe(now))
        for shard in view["shards"]:
            if shard["checkpoint"] == SHARD_END:
                shard.update(high_watermark=None, lag_records=0, lag_ms=0)
                continue
            try:
                shard.update(await self.view.lag(stream, shard["shard_id"], shard["start"]))
            except StreamdError as exc:
                shard.update(high_watermark=None, lag_records=None, lag_ms=None, lag_error=exc.code)
        return view

    async def reset(self, stream: str, group: str, to: dict[str, Any], force: bool) -> None:
        """Forget every checkpoint; start again from ``to``. Raises GroupActiveError,
        GroupNotFoundError."""
        starts: dict[str, dict[str, Any]] = {}
        if to.get("type") == "latest":
            _, shards = self.view.shards(stream)
            for info in shards:
                tip = await self.view.tip(stream, info.shard_id)
                starts[info.shard_id] = Position.at_offset(tip).to_wire()
        await self.step(stream, group, lambda c, now: c.reset(to, starts, now, force=force))

    async def delete(self, stream: str, group: str, force: bool) -> None:
        """Remove the group and its checkpoints. Raises GroupActiveError, GroupNotFoundError."""

        def check(coordinator: Coordinator, now: int) -> None:
            coordinator.tick(now)
            if coordinator.members and not force:
                raise GroupActiveError(
                    f"group {group!r} has {len(coordinator.members)} active members",
                    members=sorted(coordinator.members),
                )

        while True:
            runner = await self._runner(stream, group, None)
            async with runner.lock:
                if runner.broken:
                    continue
                await self._step_locked(stream, group, runner, check)
                with trio.CancelScope(shield=True):
                    self._drop(stream, group, runner, quiet=True)
                    await self._forget(
                        stream, group, runner.revision, runner.fence, placement_too=True
                    )
                break
        log.info("group.deleted", stream=stream, group=group, forced=force)

    async def tick_all(self) -> None:
        """Expire silent members of every loaded group (``run``'s timer calls this)."""
        for (stream, group), runner in list(self._runners.items()):
            if not self._holds(stream, group, runner):
                self._drop(stream, group, runner, quiet=True)
            elif not runner.broken:
                try:
                    await self.step(stream, group, lambda c, now: c.tick(now))
                except StreamdError:
                    continue

    async def lag_snapshot(self) -> dict[SeriesKey, tuple[int, int]]:
        """(records, ms) of lag per shard of every group this node coordinates (all of them in
        the embedded default), as ``describe`` computes it; a group or shard whose lag cannot
        be read now (its stream gone, its shard's node down) is left out."""
        lags: dict[SeriesKey, tuple[int, int]] = {}
        for kv in await self.store.range(_GROUP_PREFIX):
            stream, _, group = kv.key[len(_GROUP_PREFIX) :].partition("/")
            if self.cluster is not None and not self.cluster.coordinated_here(stream, group):
                continue
            try:
                view = await self.describe(stream, group)
            except StreamdError:
                continue
            for shard in view["shards"]:
                if shard.get("lag_records") is not None:
                    lag = (shard["lag_records"], shard["lag_ms"])
                    lags[(stream, group, shard["shard_id"])] = lag
        return lags

    async def _export_lag(self, refresh_s: float) -> None:
        """Keep the lag gauges (lag_metrics.py) current; each refresh bounded by its interval
        times ten, so a slow store or peer delays the gauges but never piles refreshes up."""
        try:
            while True:
                with trio.move_on_after(refresh_s * 10):
                    try:
                        self._lag_series.publish(await self.lag_snapshot())
                    except (StreamdError, MetaError) as exc:  # the store away: try again later
                        log.warning("group.lag_refresh_failed", error=str(exc))
                await trio.sleep(refresh_s)
        finally:
            self._lag_series.clear()

    async def run(self, tick_s: float = GROUP_TICK_S) -> None:
        """Expire silent members on a timer too, not only when a request for their group
        arrives, so that idle groups log (and persist) expiries on time; in cluster mode also
        follow the placements. Runs until cancelled (the node runs it beside the engine)."""
        async with trio.open_nursery() as nursery:
            if self.cluster is not None:
                nursery.start_soon(self.cluster.run)
            nursery.start_soon(self._export_lag, LAG_REFRESH_S)
            while True:
                await trio.sleep(tick_s)
                await self.tick_all()
