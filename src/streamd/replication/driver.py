"""The trio driver of one shard replica: it persists, syncs, sends and sleeps for the pure core.

``ReplicaDriver.run`` loads the replica's meta file, scrubs its log (in a worker thread, before
anything else touches it; the same pass builds the idempotence table), builds the ``Replica``
and then feeds it events from four sources:
peers' messages (a bounded inbox, drained by one task), ticks (a timer), the storage driver's
``Durable`` (the sync task) and callers (``write``, ``read``, ``lead``). Every step's effects
are carried out at once, synchronously, on the trio thread, in order, before any other event
is stepped: that is the driver contract of replica.py, and trio's cooperative scheduling makes
a step plus its effects atomic, since nothing in ``_apply`` awaits.

How each effect is carried out:

* ``AppendBatches``: written to the ``LogStore`` one batch at a time (page-cache writes; no
  fsync). On a full disk the batches of this effect already written are cut again, the rest of
  the step is dropped and ``StorageFailed`` (with the meta as persisted) is fed back, as the
  contract says.
* ``TruncateTo``: the store's truncation (durable when it returns), under the I/O lock.
* ``PersistMeta``: ``MetaFile.save`` (temp, fsync, rename, fsync dir) before the next effect.
* ``SyncLog``: the sync task runs ``store.sync()`` in a worker thread; at most one sync runs and
  one more is queued (later requests fold into the queued one: it covers them). The durable end
  it reports is the log end read just before the fsync started, so a batch appended during the
  fsync is never claimed. ``Durable(end, generation)`` is stepped when the thread returns.
* ``Send``: handed to the ``Outbox`` (the transport), which never blocks; it comes after the
  writes before it in the same list, so no message speaks of a write not yet made.
* Outcomes: ``WriteDone``/``WriteFailed`` wake the waiting ``write``; ``HighWatermark`` wakes
  ``wait_for_hw``; ``RoleChanged`` is logged (structlog) and shown in metrics.

Threads: appends and reads run on the trio thread while an fsync may run in a worker thread; the
file log allows that (segment descriptors are pinned, ``next_offset`` is published after the
bytes). What it does not allow is a truncation (which reopens the log) during an fsync: the I/O
lock serialises ``sync`` with ``truncate_to``. A truncation waits for at most one fsync on the
event loop; truncations happen only after a leader change.

Errors: a ``WriteFailed``/``ReadFailed`` code becomes its typed StreamdError (NOT_LEADER,
TIMEOUT, THROTTLED, STORAGE_FULL, OUT_OF_ORDER_SEQUENCE); a driver that is not running answers
SHARD_UNAVAILABLE. A broken invariant (``ReplicationBroken``), a failed fsync or any other
storage error stops the driver: ``run`` raises it after failing every waiting caller with
SHARD_UNAVAILABLE, and the shard must not be served from this node until an operator looks.
Cancelling ``run`` (the node stopping, or a test killing a leader) waits for a running fsync to
return (a thread cannot be interrupted), then fails waiters the same way: a write in flight is
ambiguous (it may still commit elsewhere), which SHARD_UNAVAILABLE (retryable) says.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
import trio

from streamd_client.errors import (
    ERRORS_BY_CODE,
    RequestTimeoutError,
    ShardUnavailableError,
    StreamdError,
)

from ..clock import Clock
from ..storage.logstore import LogStore, StoredBatch, StoreFullError
from . import messages as m
from . import telemetry
from .codec import Envelope
from .leading import Producers
from .meta import ReplicaMeta
from .metafile import MetaFile
from .replica import Replica, ReplicaConfig
from .roles import Role

log = structlog.get_logger(__name__)


class Outbox(Protocol):
    """Where the driver hands its messages (the transport). Never blocks; may drop."""

    def send(self, envelope: Envelope) -> None: ...


class TrioClock:
    """The Clock on trio's clock, so that ticks, leases and ``trio.sleep`` share one time (and
    a test's ``MockClock`` drives all of them)."""

    def now_ms(self) -> int:
        return int(trio.current_time() * 1000)

    def monotonic_ms(self) -> int:
        return int(trio.current_time() * 1000)


@dataclass(frozen=True, slots=True)
class DriverConfig:
    tick_ms: int = 10
    inbox_messages_max: int = 4096
    wait_margin_s: float = 1.0  # a write waits write_timeout_ms + this, then TIMEOUT itself


@dataclass(slots=True)
class _Slot:
    done: trio.Event
    effect: m.WriteDone | m.WriteFailed | None = None
    started_s: float = 0.0


class ReplicaDriver:
    def __init__(
        self,
        stream: str,
        shard_id: str,
        replica_id: int,
        store: LogStore,
        meta_file: MetaFile,
        outbox: Outbox,
        *,
        replica_config: ReplicaConfig | None = None,
        config: DriverConfig | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.stream = stream
        self.shard_id = shard_id
        self.replica_id = replica_id
        self.store = store
        self.meta_file = meta_file
        self.outbox = outbox
        self.replica_config = replica_config or ReplicaConfig()
        self.config = config or DriverConfig()
        self.clock: Clock = clock or TrioClock()
        self.replica: Replica | None = None
        self.meta = ReplicaMeta()  # as persisted
        self.role = Role.FOLLOWER.value
        self.leader: int | None = None
        self.hw = 0
        self.durable_end = 0
        self.broken: BaseException | None = None
        self._running = False
        self._io_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._writes: dict[int, _Slot] = {}
        self._reads: dict[int, m.ReadDone | m.ReadFailed] = {}
        self._declined: list[m.LeadDeclined] = []
        # Joining replicas this node's leader found caught up: (replica id, core epoch).
        self.caught_up: set[tuple[int, int]] = set()
        self.on_joiner_caught_up: Callable[[], None] = lambda: None  # after caught_up grows
        self._changed = trio.Event()  # set (and replaced) on every hw or role change
        self._sync_wanted: int | None = None  # generation of the queued sync
        self._sync_wake = trio.Event()
        self._inbox_send, self._inbox_receive = trio.open_memory_channel[m.Message](
            self.config.inbox_messages_max
        )
        self._cancel: trio.CancelScope | None = None
        labels = (stream, shard_id)
        self._hw_gauge = telemetry.HIGH_WATERMARK.labels(*labels)
        self._log_end_gauge = telemetry.LOG_END.labels(*labels)
        self._durable_gauge = telemetry.DURABLE_END.labels(*labels)
        self._log = log.bind(stream=stream, shard=shard_id, replica=replica_id)

    # -- running -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the replica until cancelled. Raises MetaFileCorrupt at start, or what broke it."""
        self.meta = self.meta_file.load()
        # One pass over the log, in a worker thread: the scrub, and the idempotence table of
        # what precedes any damage (all the log keeps once the replica cuts the damage off).
        producers = Producers(self.replica_config.producers_max)
        damaged = await trio.to_thread.run_sync(self.store.first_damaged, producers.record)
        self.replica = Replica(
            self.replica_id,
            self.store,
            self.meta,
            self.replica_config,
            self.clock.monotonic_ms(),
            producers,
        )
        self._set_role_metric(self.role)
        try:
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                nursery.start_soon(self._sync_loop)
                nursery.start_soon(self._tick_loop)
                nursery.start_soon(self._inbox_loop)
                self._running = True
                self._apply(self.replica.start())
                if damaged is not None:
                    self._step(m.Damaged(damaged))
                self._log.info("replication.driver_started", epoch=self.meta.epoch)
                task_status.started()
        finally:
            self._stop()
        if self.broken is not None:
            raise self.broken

    def _stop(self) -> None:
        self._running = False
        for slot in self._writes.values():
            slot.done.set()  # effect None: the caller raises SHARD_UNAVAILABLE
        self._wake()
        for role in Role:
            telemetry.ROLE.remove(self.stream, self.shard_id, role.value)
        for gauge in (telemetry.HIGH_WATERMARK, telemetry.LOG_END, telemetry.DURABLE_END):
            gauge.remove(self.stream, self.shard_id)
        self._log.info("replication.driver_stopped", broken=self.broken is not None)

    def _break(self, exc: BaseException) -> None:
        if self.broken is None:
            self.broken = exc
            self._log.error("replication.broken", error=repr(exc))
        if self._cancel is not None:
            self._cancel.cancel()

    async def _sync_loop(self) -> None:
        while True:
            while self._sync_wanted is None:
                self._sync_wake = trio.Event()
                await self._sync_wake.wait()
            generation, self._sync_wanted = self._sync_wanted, None
            end = self.store.log_end()  # what the fsync below is sure to cover
            try:
                await trio.to_thread.run_sync(self._sync_blocking)
            except Exception as exc:  # a failed fsync: what is on disk is unknown (fsyncgate)
                self._break(exc)
                return
            telemetry.SYNCS.inc()
            self.durable_end = end
            self._durable_gauge.set(end)
            self._step(m.Durable(end, generation))

    def _sync_blocking(self) -> None:
        with self._io_lock:
            self.store.sync()

    async def _tick_loop(self) -> None:
        while True:
            await trio.sleep(self.config.tick_ms / 1000)
            self._step(m.Tick(self.clock.monotonic_ms()))

    async def _inbox_loop(self) -> None:
        async for message in self._inbox_receive:
            self._step(m.Receive(message))

    # -- stepping and effects ----------------------------------------------------------------

    def _step(self, event: m.Event) -> bool:
        """Step the replica and carry out its effects; False if the driver is not serving."""
        if not self._running or self.replica is None:
            return False
        try:
            self._apply(self.replica.step(event))
        except Exception as exc:  # ReplicationBroken, or a storage error other than ENOSPC
            self._break(exc)
            return False
        self._log_end_gauge.set(self.store.log_end())
        return True

    def _apply(self, effects: Sequence[m.Effect]) -> None:
        assert self.replica is not None
        for effect in effects:
            if isinstance(effect, m.Send):
                self.outbox.send(Envelope(self.stream, self.shard_id, effect.message))
            elif isinstance(effect, m.AppendBatches):
                try:
                    self._append(effect.batches)
                except StoreFullError as exc:
                    self._log.warning("replication.storage_failed", error=str(exc))
                    self._apply(self.replica.step(m.StorageFailed(str(exc), self.meta)))
                    return
            elif isinstance(effect, m.TruncateTo):
                with self._io_lock:
                    self.store.truncate_to(effect.offset)
                self.durable_end = min(self.durable_end, effect.offset)
            elif isinstance(effect, m.SyncLog):
                self._sync_wanted = effect.generation
                self._sync_wake.set()
            elif isinstance(effect, m.PersistMeta):
                self.meta_file.save(effect.meta)
                self.meta = effect.meta
            else:
                self._outcome(effect)

    def _append(self, batches: Sequence[StoredBatch]) -> None:
        """One batch per store call, so a full disk never makes the store cut its own log
        (a reopen) under a running fsync; what this effect wrote is cut here, under the lock."""
        start = self.store.log_end()
        try:
            for batch in batches:
                self.store.append([batch])
        except StoreFullError:
            if self.store.log_end() != start:
                with self._io_lock:
                    self.store.truncate_to(start)
            raise

    def _outcome(self, effect: m.Effect) -> None:
        if isinstance(effect, m.WriteDone | m.WriteFailed):
            slot = self._writes.get(effect.write_id)
            if slot is not None:  # else its caller gave up (timeout, cancelled)
                slot.effect = effect
                slot.done.set()
        elif isinstance(effect, m.ReadDone | m.ReadFailed):
            self._reads[effect.read_id] = effect
        elif isinstance(effect, m.HighWatermark):
            self.hw = effect.hw
            self._hw_gauge.set(effect.hw)
            self._wake()
        elif isinstance(effect, m.RoleChanged):
            self._log.info(
                "replication.role_changed",
                role=effect.role,
                epoch=effect.epoch,
                leader=effect.leader,
                reason=effect.reason,
            )
            self.role, self.leader = effect.role, effect.leader
            self._set_role_metric(effect.role)
            self._wake()
        elif isinstance(effect, m.LeadDeclined):
            self._log.info("replication.lead_declined", epoch=effect.epoch, reason=effect.reason)
            self._declined.append(effect)
        elif isinstance(effect, m.JoinerCaughtUp):
            self._log.info(
                "replication.joiner_caught_up", joiner=effect.replica, epoch=effect.epoch
            )
            self.caught_up.add((effect.replica, effect.epoch))
            self.on_joiner_caught_up()
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _set_role_metric(self, current: str) -> None:
        for role in Role:
            telemetry.ROLE.labels(self.stream, self.shard_id, role.value).set(
                1 if role.value == current else 0
            )

    # -- the callers' API --------------------------------------------------------------------

    def receive(self, message: m.Message) -> bool:
        """A peer's message, queued for the replica; False (dropped, counted) if the inbox is
        full or the driver is not running. Never blocks: losses are the protocol's problem."""
        if not self._running:
            return False
        try:
            self._inbox_send.send_nowait(message)
        except trio.WouldBlock:
            telemetry.INBOX_DROPPED.inc()
            return False
        return True

    def lead(
        self, epoch: int, replicas: tuple[int, ...], joining: tuple[int, ...] = ()
    ) -> str | None:
        """The controller's command: lead ``epoch`` over ``replicas`` (``joining``: those not
        voting yet). None if taken (fencing has begun), else why the replica declined. Raises
        ShardUnavailableError."""
        self._declined = []
        self._must_step(m.Lead(epoch, replicas, joining))
        declined = [d for d in self._declined if d.epoch == epoch]
        return declined[0].reason if declined else None

    async def write(self, batch: StoredBatch, *, timeout_s: float | None = None) -> m.WriteDone:
        """Replicate ``batch`` (its offset and epoch are the leader's to assign); return once
        it is committed (durable on a majority). Raises NotLeaderError, RequestTimeoutError
        (ambiguous: it may still commit), ThrottledError, StorageFullError,
        OutOfOrderSequenceError, ShardUnavailableError (driver stopped: ambiguous too)."""
        return await self.wait_write(self.begin_write(batch), timeout_s=timeout_s)

    def begin_write(self, batch: StoredBatch) -> int:
        """``write`` in two halves: this one steps the core at once (the leader appends and
        ships ``batch`` before it returns, so writes begun one after another take consecutive
        offsets); ``wait_write`` with the id it returns waits for the outcome. Raises
        ShardUnavailableError (driver not running)."""
        write_id = next(self._ids)
        self._writes[write_id] = _Slot(trio.Event(), started_s=trio.current_time())
        try:
            self._must_step(m.ClientWrite(write_id, batch))
        except BaseException:
            del self._writes[write_id]
            raise
        return write_id

    async def wait_write(self, write_id: int, *, timeout_s: float | None = None) -> m.WriteDone:
        """The outcome of ``begin_write``'s write (raises as ``write`` does)."""
        if timeout_s is None:
            timeout_s = self.replica_config.write_timeout_ms / 1000 + self.config.wait_margin_s
        slot = self._writes[write_id]
        try:
            with trio.move_on_after(timeout_s):
                await slot.done.wait()
        finally:
            del self._writes[write_id]
        effect = slot.effect
        if isinstance(effect, m.WriteDone):
            telemetry.COMMIT_SECONDS.observe(trio.current_time() - slot.started_s)
            return effect
        if effect is None and not self._running:
            raise self._unavailable()
        code = RequestTimeoutError.code if effect is None else effect.code
        telemetry.WRITES_FAILED.labels(code).inc()
        raise self._error(code)

    async def read(self, offset: int, batches_max: int) -> tuple[tuple[StoredBatch, ...], int]:
        """Committed batches from the one holding ``offset`` (at most ``batches_max``) and the
        high watermark; only a serving leader answers. Raises NotLeaderError,
        ShardUnavailableError."""
        await trio.lowlevel.checkpoint()
        read_id = next(self._ids)
        self._must_step(m.ClientRead(read_id, offset, batches_max))
        result = self._reads.pop(read_id)  # a read is answered in its own step
        if isinstance(result, m.ReadFailed):
            raise self._error(result.code)
        return result.batches, result.hw

    async def wait_for_hw(self, above: int, timeout_s: float) -> int:
        """Wait until the high watermark passes ``above``, the role changes, the driver stops
        or ``timeout_s`` elapses; return the high watermark then (a tailing reader reads
        again, or gets NOT_LEADER from ``read``)."""
        with trio.move_on_after(timeout_s):
            if self.hw <= above and self._running:
                await self._changed.wait()
        return self.hw

    async def wait_serving(self, timeout_s: float) -> bool:
        """Wait until this replica leads and serves (its epoch committed, its lease held)."""
        with trio.move_on_after(timeout_s):
            while not self.serving():
                if not self._running:
                    return False
                with trio.move_on_after(self.config.tick_ms / 1000):
                    await self._changed.wait()
        return self.serving()

    def serving(self) -> bool:
        return self._running and self.replica is not None and self.replica.serving()

    @property
    def log_end(self) -> int:
        return self.store.log_end()

    @property
    def epoch(self) -> int:
        return self.meta.epoch

    # -- helpers -----------------------------------------------------------------------------

    def _must_step(self, event: m.Event) -> None:
        if not self._step(event):
            raise self._unavailable()

    def _unavailable(self) -> ShardUnavailableError:
        return ShardUnavailableError(
            f"replica {self.replica_id} of {self.stream}/{self.shard_id} is not running",
            stream=self.stream,
            shard_id=self.shard_id,
        )

    def _error(self, code: str) -> StreamdError:
        cls = ERRORS_BY_CODE.get(code, StreamdError)
        details: dict[str, Any] = {"stream": self.stream, "shard_id": self.shard_id}
        if self.leader is not None and self.leader != self.replica_id:
            details["leader_replica"] = self.leader
        return cls(f"{code} from replica {self.replica_id} of {self.stream}", **details)
