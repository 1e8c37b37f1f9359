"""Consumer-group worker: the KCL-like part of the client (docs/consumer-groups.md), on anyio.

    async with connect(endpoint) as client:
        # iterator style
        async with GroupWorker(client, "events", "billing", checkpoint_every_records=100) as w:
            async for batch in w:
                handle(batch.records)
                await batch.checkpoint()          # or let the automatic checkpoints do it

        # callback style (KCL's record processor)
        async with GroupWorker(client, "events", "billing", processor=MyProcessor) as w:
            await w.run()                         # until w.request_shutdown() or cancellation

How it works: the worker joins the group and then one *heartbeat task* reports, every interval
the server chose (500 ms by default), the leases it holds; the answer is its target assignment.
New leases start a *lease task* each (group_lease.py), so shards are processed concurrently, and
the heartbeat task never waits for processing: it only starts, stops and cancels lease tasks.
A revoked lease finishes its in-flight batch, checkpoints and ends; the heartbeat after that
(sent at once, not at the next interval) releases it so the new owner gets it without delay.
Leases that vanish from the answer, or come back with another epoch, were lost: their tasks are
cancelled. An ``UNKNOWN_MEMBER`` answer (the session expired) loses everything and joins again.
If no heartbeat gets through for a whole session timeout, the worker assumes its leases are gone
and stops processing them (it would be fenced anyway).

Both styles run on the same engine: the iterator is a RecordProcessor whose ``process_records``
hands the batch to the ``async for`` loop and waits until the loop asks for the next one; so a
batch counts as processed (for automatic checkpoints) only once the loop body is done with it.

Shutdown (leaving ``async with``, ``request_shutdown()``, cancellation): every lease task is
asked to stop, finishes its in-flight batch, gets ``shutdown_requested`` and checkpoints (when
automatic); then the worker leaves the group, which frees its leases at once: another worker
takes over after one heartbeat, not after a session timeout. The whole of it is bounded by
``shutdown_timeout_s``. A processor's exception shuts the worker down the same way (minus the
failed shard's checkpoint) and is then re-raised from ``async with``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Final

import anyio
import anyio.abc

from . import group_admin
from .client_api import GroupClient
from .consumer import backoff_s
from .errors import DataCorruptError, InvalidArgumentError, StreamdError
from .group_admin import LeaseGrant
from .group_errors import UnknownMemberError
from .group_lease import (
    Abandoned,
    Batch,
    Checkpointer,
    LeaseTask,
    RecordProcessor,
    ShardLease,
)
from .model import READ_BYTES_MAX, READ_WAIT_MS_MAX, Position

__all__ = [
    "Batch",
    "Checkpointer",
    "GroupWorker",
    "RecordProcessor",
    "ShardLease",
]

log = logging.getLogger(__name__)

SESSION_TIMEOUT_MS_DEFAULT: Final = 3_000
REBALANCE_TIMEOUT_MS_DEFAULT: Final = 30_000
SHUTDOWN_TIMEOUT_S_DEFAULT: Final = 10.0
LEAVE_TIMEOUT_S: Final = 5.0
JOIN_TIMEOUT_S_DEFAULT: Final = 30.0  # retrying retryable answers (a coordinator moving)
JOIN_BACKOFF_MS_INITIAL: Final = 50
JOIN_BACKOFF_MS_MAX: Final = 1000
READ_WAIT_MS_DEFAULT: Final = 1_000
READ_BYTES_MAX_DEFAULT: Final = 1 << 20
CORRUPT_RETRY_S_DEFAULT: Final = 5.0

CorruptCallback = Callable[[DataCorruptError], Awaitable[None]]

ProcessorFactory = Callable[[ShardLease], RecordProcessor]


class _IteratorProcessor(RecordProcessor):
    """Hands batches to the ``async for`` loop and waits until the loop is done with them."""

    def __init__(self, worker: GroupWorker) -> None:
        self._worker = worker

    async def process_records(self, batch: Batch) -> None:
        await self._worker._hand_over(batch)

    async def shard_ended(self, checkpointer: Checkpointer) -> None:
        await self._worker._hand_over(Batch(checkpointer, [], 0, shard_end=True))

    async def data_corrupt(self, error: DataCorruptError) -> None:
        if self._worker.on_data_corrupt is not None:
            await self._worker.on_data_corrupt(error)


class GroupWorker:
    """One member of a consumer group (module docstring). Use as an async context manager.

    Options: ``processor`` (a factory called with each ShardLease; None for the iterator
    style), ``initial`` (where a new group starts: trim_horizon, latest, at_timestamp),
    ``checkpoint_every_records`` / ``checkpoint_every_s`` (automatic checkpoints when either is
    set, also when a lease is given up), ``session_timeout_ms``, ``rebalance_timeout_ms``,
    ``read_wait_ms`` (long-poll), ``read_max_bytes``, ``batch_records_max``,
    ``shutdown_timeout_s``, ``join_timeout_s`` (how long joining retries retryable answers,
    such as COORDINATOR_UNAVAILABLE while a cluster places or moves the group's coordinator),
    ``member_id`` (random by default), ``corrupt_retry_s`` (how often
    a read stuck at a range damaged on the server is tried again; the lease is kept meanwhile)
    and ``on_data_corrupt`` (the iterator style's callback for such a range; a processor has
    ``RecordProcessor.data_corrupt``). A damaged range never stops the worker.
    ``deaggregate``: unpack KPL aggregates (kpl.py) into their user records; each carries its
    ``sub_sequence``, and a checkpoint at one (``batch.checkpoint()``, automatic ones) points
    inside the aggregate, so the next holder of the lease resumes after that user record.

    Entering raises what joining raises: StreamNotFoundError, InvalidArgumentError, transport
    errors. Leaving re-raises a processor's exception or a fatal (non-retryable) error.
    """

    def __init__(
        self,
        client: GroupClient,
        stream: str,
        group: str,
        *,
        processor: ProcessorFactory | None = None,
        initial: Position | None = None,
        checkpoint_every_records: int | None = None,
        checkpoint_every_s: float | None = None,
        session_timeout_ms: int = SESSION_TIMEOUT_MS_DEFAULT,
        rebalance_timeout_ms: int = REBALANCE_TIMEOUT_MS_DEFAULT,
        read_wait_ms: int = READ_WAIT_MS_DEFAULT,
        read_max_bytes: int = READ_BYTES_MAX_DEFAULT,
        batch_records_max: int | None = None,
        shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S_DEFAULT,
        join_timeout_s: float = JOIN_TIMEOUT_S_DEFAULT,
        member_id: str | None = None,
        corrupt_retry_s: float = CORRUPT_RETRY_S_DEFAULT,
        on_data_corrupt: CorruptCallback | None = None,
        deaggregate: bool = False,
    ) -> None:
        group_admin.check_group_name(group)
        group_admin.check_initial(initial or Position.trim_horizon())
        _check_options(
            checkpoint_every_records,
            checkpoint_every_s,
            read_wait_ms,
            read_max_bytes,
            batch_records_max,
            shutdown_timeout_s,
        )
        self.client = client
        self.stream = stream
        self.group = group
        self.member_id = member_id or uuid.uuid4().hex[:16]
        self.client_info = f"{socket.gethostname()}/{os.getpid()}"
        self.initial = initial or Position.trim_horizon()
        self.checkpoint_every_records = checkpoint_every_records
        self.checkpoint_every_s = checkpoint_every_s
        self.session_timeout_ms = session_timeout_ms
        self.rebalance_timeout_ms = rebalance_timeout_ms
        self.read_wait_ms = read_wait_ms
        self.read_max_bytes = read_max_bytes
        self.batch_records_max = batch_records_max
        self.shutdown_timeout_s = shutdown_timeout_s
        if join_timeout_s <= 0:
            raise InvalidArgumentError("join_timeout_s must be positive")
        self.join_timeout_s = join_timeout_s
        if corrupt_retry_s <= 0:
            raise InvalidArgumentError("corrupt_retry_s must be positive")
        self.corrupt_retry_s = corrupt_retry_s
        self.on_data_corrupt = on_data_corrupt
        self.deaggregate = deaggregate
        self.closing = anyio.Event()
        self.leases: dict[str, LeaseTask] = {}  # shard -> the task holding it
        self.heartbeat_interval_ms = min(500, session_timeout_ms // 3)
        self.leases_lost = 0
        self._records_done = 0  # by lease tasks that have finished
        self._factory = processor
        self._iterating = processor is None
        self._failure: BaseException | None = None
        self._wake = anyio.Event()
        self._stack = contextlib.AsyncExitStack()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._heartbeat_scope = anyio.CancelScope()
        self._last_ok_s = 0.0
        self._hand_send, self._hand_receive = anyio.create_memory_object_stream[Batch](0)
        self._current: Batch | None = None
        self._iter_scope: anyio.CancelScope | None = None
        self._owned_at_close: list[tuple[str, int]] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> GroupWorker:
        self._last_ok_s = anyio.current_time()
        try:
            # Joined before the task group exists: a join that fails (after its retries) has
            # nothing to unwind. (Exiting the task group inside a new shielded scope, as this
            # did, breaks the scopes' nesting: a RuntimeError on asyncio instead of the error.)
            answer = await self._join()
        except BaseException:
            self._close_streams()
            raise
        await self._stack.__aenter__()
        try:
            self._task_group = await self._stack.enter_async_context(anyio.create_task_group())
            self._apply(answer)
            self._task_group.start_soon(self._heartbeat_loop)
        except BaseException as exc:
            if self._task_group is not None:
                self._task_group.cancel_scope.cancel()
            await self._stack.__aexit__(type(exc), exc, exc.__traceback__)
            self._close_streams()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            with anyio.CancelScope(shield=True):
                await self._shutdown()
        finally:
            assert self._task_group is not None
            self._task_group.cancel_scope.cancel()
            try:
                await self._stack.__aexit__(None, None, None)
            finally:
                self._close_streams()
        if self._failure is not None and exc is None:
            raise self._failure
        return None

    def _close_streams(self) -> None:
        self._hand_send.close()
        self._hand_receive.close()

    async def run(self) -> None:
        """Callback style: process until ``request_shutdown()``, a failure, or cancellation."""
        await self.closing.wait()

    def request_shutdown(self) -> None:
        """Begin a graceful shutdown (safe from any task; the work happens on exit)."""
        self.closing.set()
        if self._iter_scope is not None:
            self._iter_scope.cancel()

    def assignment(self) -> dict[str, int]:
        """The leases this worker processes now: shard -> lease epoch."""
        return {s: t.epoch for s, t in self.leases.items() if not t.lost}

    async def _shutdown(self) -> None:
        self.request_shutdown()
        # Until the leave, keep reporting what was held: a lease reported missing would be
        # released and granted straight back to this (still live) member.
        self._owned_at_close = self._owned()
        tasks = list(self.leases.values())
        for task in tasks:
            task.request_stop()
        with anyio.move_on_after(self.shutdown_timeout_s):
            for task in tasks:
                await task.finished.wait()
        for task in list(self.leases.values()):
            task.lose()  # whatever did not finish in time
        self._heartbeat_scope.cancel()
        with anyio.move_on_after(LEAVE_TIMEOUT_S):
            try:
                await group_admin.leave(
                    self.client, self.stream, self.group, self.member_id, timeout_s=LEAVE_TIMEOUT_S
                )
                log.info("member %s left group %s/%s", self.member_id, self.stream, self.group)
            except StreamdError as exc:
                log.warning("leave failed (the session will expire): %s", exc.message)

    # -- iterator style ----------------------------------------------------------------------------

    def __aiter__(self) -> GroupWorker:
        if not self._iterating:
            raise InvalidArgumentError("this worker has a processor; it cannot be iterated")
        return self

    async def __anext__(self) -> Batch:
        if self._current is not None:
            self._current._done.set()  # the loop body is done with it
            self._current = None
        if self.closing.is_set():
            raise StopAsyncIteration
        with anyio.CancelScope() as scope:
            self._iter_scope = scope
            try:
                self._current = await self._hand_receive.receive()
                return self._current
            finally:
                self._iter_scope = None
        raise StopAsyncIteration  # cancelled by request_shutdown

    async def _hand_over(self, batch: Batch) -> None:
        """Called by lease tasks: give the batch to the loop, wait until it is done with it."""
        async with anyio.create_task_group() as race:

            async def give() -> None:
                await self._hand_send.send(batch)
                await batch._done.wait()
                race.cancel_scope.cancel()

            async def abandon() -> None:
                await self.closing.wait()
                race.cancel_scope.cancel()

            race.start_soon(give)
            race.start_soon(abandon)
        if not batch._done.is_set():
            raise Abandoned  # shutting down: the loop is gone; the batch is not processed

    # -- what lease tasks need (group_lease.WorkerHost) --------------------------------------------

    @property
    def auto_checkpoint(self) -> bool:
        return self.checkpoint_every_records is not None or self.checkpoint_every_s is not None

    def checkpoint_due(self, records: int, elapsed_s: float) -> bool:
        every_records, every_s = self.checkpoint_every_records, self.checkpoint_every_s
        if records == 0:
            return False
        return (every_records is not None and records >= every_records) or (
            every_s is not None and elapsed_s >= every_s
        )

    def read_args(self) -> tuple[int, int, int | None]:
        return self.read_max_bytes, self.read_wait_ms, self.batch_records_max

    @property
    def records_processed(self) -> int:
        """Records whose batches were processed, over every lease this worker held."""
        return self._records_done + sum(t.records_processed for t in self.leases.values())

    def lease_finished(self, task: LeaseTask) -> None:
        self._records_done += task.records_processed
        if task.lost:
            self.leases_lost += 1
        if self.leases.get(task.shard_id) is task:
            del self.leases[task.shard_id]
        self._wake.set()  # tell the coordinator at once: the next owner is waiting

    def fail(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error
        self.request_shutdown()

    # -- membership --------------------------------------------------------------------------------

    async def _join(self) -> group_admin.Assignment:
        """Join, retrying retryable answers (a coordinator being placed or moved, a node
        restarting) with backoff for up to ``join_timeout_s``; then the last error is raised."""
        deadline_s = anyio.current_time() + self.join_timeout_s
        failures = 0
        while True:
            try:
                answer = await group_admin.join(
                    self.client,
                    self.stream,
                    self.group,
                    self.member_id,
                    client_info=self.client_info,
                    initial=self.initial,
                    session_timeout_ms=self.session_timeout_ms,
                    rebalance_timeout_ms=self.rebalance_timeout_ms,
                    timeout_s=self.session_timeout_ms / 1000,
                )
                break
            except StreamdError as exc:
                failures += 1
                pause_s = backoff_s(failures, JOIN_BACKOFF_MS_INITIAL, JOIN_BACKOFF_MS_MAX)
                if not exc.retryable or anyio.current_time() + pause_s > deadline_s:
                    raise
                log.info("joining group %s/%s: %s; retrying", self.stream, self.group, exc.message)
                await anyio.sleep(pause_s)
        log.info("member %s joined group %s/%s", self.member_id, self.stream, self.group)
        return answer

    async def _heartbeat_loop(self) -> None:
        failures = 0
        with self._heartbeat_scope:
            while True:
                with anyio.move_on_after(self.heartbeat_interval_ms / 1000):
                    await self._wake.wait()
                self._wake = anyio.Event()
                sent_s = anyio.current_time()
                try:
                    answer = await self._beat()
                except StreamdError as exc:
                    if not exc.retryable:
                        self.fail(exc)
                        return
                    failures += 1
                    self._check_session(exc)
                    await anyio.sleep(backoff_s(failures, 50, self.heartbeat_interval_ms))
                    continue
                failures = 0
                self._last_ok_s = sent_s
                self._apply(answer)

    def _owned(self) -> list[tuple[str, int]]:
        return [(s, t.epoch) for s, t in sorted(self.leases.items()) if not t.lost]

    async def _beat(self) -> group_admin.Assignment:
        owned = self._owned() if self._owned_at_close is None else self._owned_at_close
        try:
            return await group_admin.heartbeat(
                self.client,
                self.stream,
                self.group,
                self.member_id,
                owned,
                timeout_s=self.session_timeout_ms / 1000,
            )
        except UnknownMemberError:
            log.warning(
                "member %s is unknown to the group (expired): joining again", self.member_id
            )
            self._lose_all()
            return await self._join()

    def _check_session(self, exc: StreamdError) -> None:
        silent_s = anyio.current_time() - self._last_ok_s
        if silent_s * 1000 > self.session_timeout_ms and self.leases:
            log.warning(
                "no heartbeat for %.1f s (%s): giving up every lease", silent_s, exc.message
            )
            self._lose_all()

    def _lose_all(self) -> None:
        for task in list(self.leases.values()):
            task.lose()

    def _apply(self, answer: group_admin.Assignment) -> None:
        """Reconcile the lease tasks with the coordinator's answer."""
        self.heartbeat_interval_ms = answer.heartbeat_interval_ms
        keep = {g.shard_id: g for g in answer.assignment}
        give_up = {g.shard_id: g for g in answer.revoking}
        for shard_id, task in list(self.leases.items()):
            grant = keep.get(shard_id) or give_up.get(shard_id)
            if grant is None or grant.epoch != task.epoch:
                task.lose()
            elif shard_id in give_up:
                task.request_stop()
            else:
                task.closed = grant.closed
        if self.closing.is_set():
            return
        for grant in answer.assignment:
            current = self.leases.get(grant.shard_id)
            if current is None or current.epoch != grant.epoch:
                self._start(grant, current)

    def _start(self, grant: LeaseGrant, predecessor: LeaseTask | None) -> None:
        assert self._task_group is not None
        factory = self._factory
        lease = ShardLease(grant.shard_id, grant.epoch, grant.start)
        processor = _IteratorProcessor(self) if factory is None else factory(lease)
        task = LeaseTask(self, grant, processor, predecessor)
        self.leases[grant.shard_id] = task
        log.info(
            "lease of %s granted (epoch %d) from %s", grant.shard_id, grant.epoch, grant.start.kind
        )
        self._task_group.start_soon(task.run)


def _check_options(
    checkpoint_every_records: int | None,
    checkpoint_every_s: float | None,
    read_wait_ms: int,
    read_max_bytes: int,
    batch_records_max: int | None,
    shutdown_timeout_s: float,
) -> None:
    if checkpoint_every_records is not None and checkpoint_every_records < 1:
        raise InvalidArgumentError("checkpoint_every_records must be at least 1")
    if checkpoint_every_s is not None and checkpoint_every_s <= 0:
        raise InvalidArgumentError("checkpoint_every_s must be positive")
    if not 0 <= read_wait_ms <= READ_WAIT_MS_MAX:
        raise InvalidArgumentError(f"read_wait_ms must be 0..{READ_WAIT_MS_MAX}")
    if not 1 <= read_max_bytes <= READ_BYTES_MAX:
        raise InvalidArgumentError(f"read_max_bytes must be 1..{READ_BYTES_MAX}")
    if batch_records_max is not None and batch_records_max < 1:
        raise InvalidArgumentError("batch_records_max must be at least 1")
    if shutdown_timeout_s <= 0:
        raise InvalidArgumentError("shutdown_timeout_s must be positive")
