"""One held lease of a group worker: the task that reads a shard and feeds its processor.

A lease task runs while the worker holds the shard's lease at one epoch. It long-polls the shard
from the lease's start position, hands each non-empty page to the processor as a ``Batch``,
counts it processed when ``process_records`` returns, and checkpoints automatically when asked
to (every N records, every T seconds, and when it stops). It ends in one of four ways:

| how it ends | cause                                    | processor hears       | checkpoint   |
|-------------|------------------------------------------|-----------------------|--------------|
| stop        | revoked by the coordinator; shutdown     | ``shutdown_requested``| final (auto) |
| shard end   | a read answered ``shard_end``            | ``shard_ended``       | SHARD_END    |
| lost        | fenced, expired, another epoch granted   | ``lease_lost``        | impossible   |
| failed      | the processor (or a read) raised         | nothing               | none         |

A read that reaches a range damaged on the server's disk (DATA_CORRUPT) ends none of these
ways: the lease is kept, the processor hears ``data_corrupt`` once per range (and the worker
logs it), and the task tries the read again every ``corrupt_retry_s``. Once an operator has
quarantined the range (``streamd admin quarantine-range``) the read goes on after it, and
processing continues with the intact records that follow; a stop or a loss ends the wait.

A stop lets in-flight processing finish (only a pending long-poll read is cancelled, which is
safe: reads have no effect); a loss cancels everything at once, because the records would be
processed twice anyway and nothing can be checkpointed. A failure is handed to the worker, which
shuts down and re-raises it (at-least-once: whoever takes the shard over starts again from the
last checkpoint).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Final, NamedTuple, Protocol

import anyio

from . import group_admin, kpl
from .client_api import GroupClient
from .consumer import backoff_s, log_skipped
from .errors import DataCorruptError, ShardNotFoundError, StreamdError
from .group_errors import LeaseLostError
from .model import SUB_SEQUENCE_MAX, Position, parse_sequence
from .results import ReadResult, Record

log = logging.getLogger(__name__)

SHARD_END: Final = group_admin.SHARD_END
CALLBACK_TIMEOUT_S: Final = 10.0  # lease_lost and friends, after the lease is gone
CHECKPOINT_RETRY_S_MAX: Final = 10.0  # covers a cluster coordinator's failover (a few s)
BACKOFF_MS_INITIAL: Final = 50
BACKOFF_MS_MAX: Final = 1000
PREDECESSOR_WAIT_S: Final = 15.0
CHECKPOINT_TIMEOUT_S: Final = 5.0


class ShardLease(NamedTuple):
    """What a processor is told when it starts: the shard, the lease epoch, where it starts."""

    shard_id: str
    epoch: int
    start: Position


class WorkerHost(Protocol):
    """What a lease task needs from its worker (group.py implements it)."""

    client: GroupClient
    stream: str
    group: str
    member_id: str
    closing: anyio.Event
    corrupt_retry_s: float  # how often a read stuck at a damaged range is tried again
    deaggregate: bool  # unpack KPL aggregates into their user records (kpl.py)

    @property
    def auto_checkpoint(self) -> bool: ...
    def checkpoint_due(self, records: int, elapsed_s: float) -> bool: ...
    def lease_finished(self, task: LeaseTask) -> None: ...
    def fail(self, error: BaseException) -> None: ...
    def read_args(self) -> tuple[int, int, int | None]: ...


class Checkpointer:
    """Stores a shard's progress on the server, fenced by the lease epoch."""

    def __init__(self, task: LeaseTask) -> None:
        self._task = task
        self.last_sequence: str | None = None  # the last checkpoint this lease stored

    @property
    def shard_id(self) -> str:
        return self._task.shard_id

    @property
    def epoch(self) -> int:
        return self._task.epoch

    async def checkpoint(
        self,
        at: Record | str | None = None,
        *,
        sub_sequence: int | None = None,
        metadata: str | None = None,
    ) -> None:
        """Record that everything up to and including ``at`` is processed.

        ``at`` is a Record, a sequence number, SHARD_END, or None for the last record handed to
        the processor (nothing happens if there is none). A user record of a KPL aggregate (a
        Record with ``sub_sequence``; or a sequence number with ``sub_sequence``) checkpoints
        inside the aggregate: a new holder of the lease resumes after that user record.
        Retries transient errors (such as
        COORDINATOR_UNAVAILABLE while a cluster moves the group's coordinator) for up to
        CHECKPOINT_RETRY_S_MAX.
        Raises: LeaseLostError (fenced: the lease is gone; stop processing the shard),
        InvalidCheckpointError (another shard's sequence, or behind the stored checkpoint),
        transport errors once the retries are used up.
        """
        if at is None:
            last = self._task.last_processed
            if last is None:
                return
            sequence, sub_sequence = last.sequence_number, last.sub_sequence
        elif isinstance(at, Record):
            sequence, sub_sequence = at.sequence_number, at.sub_sequence
        else:
            sequence = at
        await self._task.store_checkpoint(sequence, metadata, sub_sequence)


class Batch:
    """Records of one shard for the processor (or the ``async for`` loop), in order.

    ``shard_end`` marks the last, empty batch of a closed shard. ``checkpoint()`` stores
    progress up to this batch's last record (SHARD_END for the end batch).
    """

    __slots__ = (
        "_done",
        "checkpointer",
        "epoch",
        "millis_behind",
        "records",
        "shard_end",
        "shard_id",
    )

    def __init__(
        self,
        checkpointer: Checkpointer,
        records: list[Record],
        millis_behind: int,
        *,
        shard_end: bool = False,
    ) -> None:
        self.checkpointer = checkpointer
        self.shard_id = checkpointer.shard_id
        self.epoch = checkpointer.epoch
        self.records = records
        self.millis_behind = millis_behind
        self.shard_end = shard_end
        self._done = anyio.Event()

    async def checkpoint(self, *, metadata: str | None = None) -> None:
        """Checkpoint this batch's last record (or SHARD_END). Raises as Checkpointer does."""
        if self.shard_end:
            await self.checkpointer.checkpoint(SHARD_END, metadata=metadata)
        elif self.records:
            await self.checkpointer.checkpoint(self.records[-1], metadata=metadata)

    def __repr__(self) -> str:
        return (
            f"Batch({self.shard_id}, epoch={self.epoch}, records={len(self.records)}, "
            f"shard_end={self.shard_end})"
        )


class RecordProcessor(ABC):
    """The KCL-style callbacks; subclass and implement ``process_records`` (the others are
    optional; a subclass without it cannot be instantiated).

    One processor instance per lease; its calls never overlap. Exceptions from
    ``process_records`` stop the whole worker (and are re-raised by it).
    """

    async def initialize(self, lease: ShardLease) -> None:
        """The lease was granted; records from ``lease.start`` follow."""
        return  # optional: nothing to do by default

    @abstractmethod
    async def process_records(self, batch: Batch) -> None:
        """Process one batch; checkpoint with ``batch.checkpoint()`` or ``batch.checkpointer``."""

    async def lease_lost(self) -> None:
        """The lease is gone (fenced or expired): no checkpoint is possible; just clean up."""
        return  # optional: nothing to do by default

    async def data_corrupt(self, error: DataCorruptError) -> None:
        """A read reached a range damaged on the server's disk; ``error.details`` name it
        (``from_sequence``, ``to_sequence``). The lease is kept and the read retried, so
        processing resumes by itself once an operator quarantines the range. Raising here
        stops the worker like a failing ``process_records``."""
        return  # optional: the worker logs it anyway

    async def shard_ended(self, checkpointer: Checkpointer) -> None:
        """The closed shard is fully processed; SHARD_END is checkpointed after this returns
        (children of the shard are leased only then)."""
        return  # optional: nothing to do by default

    async def shutdown_requested(self, checkpointer: Checkpointer) -> None:
        """The lease is being given up (rebalance or shutdown): checkpoint what is done."""
        return  # optional: nothing to do by default


def _rank(sub_sequence: int | None) -> int:
    """Order within one record: its user records by index, then the whole record."""
    return SUB_SEQUENCE_MAX + 1 if sub_sequence is None else sub_sequence


class _Lost(Exception):
    """Internal: the lease task learnt its lease is gone."""


class Abandoned(Exception):
    """Internal: the worker is closing and nobody will process this batch (iterator style)."""


class LeaseTask:
    """Reads one shard under one lease epoch and drives its processor (module docstring)."""

    def __init__(
        self,
        host: WorkerHost,
        grant: group_admin.LeaseGrant,
        processor: RecordProcessor,
        predecessor: LeaseTask | None,
    ) -> None:
        self.host = host
        self.shard_id = grant.shard_id
        self.epoch = grant.epoch
        self.start = grant.start
        self.closed = grant.closed  # informational: the end is what a read says (shard_end)
        self.processor = processor
        self.checkpointer = Checkpointer(self)
        self.position = grant.start
        # A checkpoint inside a KPL aggregate: the read starts at it; skip what was processed.
        self._resume_inside: tuple[str, int] | None = None
        if grant.after_sub_sequence is not None and grant.start.sequence is not None:
            self._resume_inside = (grant.start.sequence, grant.after_sub_sequence)
        self.last_processed: Record | None = None
        self.records_processed = 0
        self.stopping = False
        self.lost = False
        self.finished = anyio.Event()
        self._predecessor = predecessor
        self._scope = anyio.CancelScope()
        self._read_scope: anyio.CancelScope | None = None
        self._uncheckpointed = 0
        self._checkpointed_at = anyio.current_time()
        self._damage_reported: tuple[object, object] | None = None

    # -- control (from the worker) ----------------------------------------------------------------

    def request_stop(self) -> None:
        """Finish in-flight work, checkpoint, and release (a revoke, or shutdown)."""
        self.stopping = True
        if self._read_scope is not None:
            self._read_scope.cancel()

    def lose(self) -> None:
        """The lease is gone: stop at once."""
        if not self.finished.is_set():
            self.lost = True
            self._scope.cancel()

    # -- the task ---------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            with self._scope:
                await self._wait_for_predecessor()
                await self._run()
        except (LeaseLostError, _Lost):
            self.lost = True
        except ShardNotFoundError:
            # A closed shard this group fell a whole retention period behind on was forgotten
            # by the server: nothing is left to read, and the coordinator revokes the lease.
            log.warning("shard %s no longer exists (past retention); its lease ends", self.shard_id)
            self.lost = True
        except Exception as exc:
            log.exception("lease task of %s failed", self.shard_id)
            self.host.fail(exc)
        finally:
            if self.lost:
                log.info("lease of %s (epoch %d) lost", self.shard_id, self.epoch)
                with anyio.move_on_after(CALLBACK_TIMEOUT_S, shield=True):
                    await self.processor.lease_lost()
            self.finished.set()
            self.host.lease_finished(self)

    async def _wait_for_predecessor(self) -> None:
        """The same shard under an older epoch may still be winding down: never overlap."""
        if self._predecessor is not None:
            self._predecessor.lose()
            with anyio.move_on_after(PREDECESSOR_WAIT_S):
                await self._predecessor.finished.wait()
            self._predecessor = None

    async def _run(self) -> None:
        await self.processor.initialize(ShardLease(self.shard_id, self.epoch, self.start))
        while not self.stopping:
            result = await self._read()
            if result is None:
                break
            records = self._user_records(result.records)
            if records:
                try:
                    await self.processor.process_records(
                        Batch(self.checkpointer, records, result.millis_behind)
                    )
                except Abandoned:
                    break
                self._processed(records)
            self.position = result.next_position
            if result.shard_end:
                # The server's word, not an inference from the grant and the high watermark:
                # a lease granted while the shard was open learns of its close here at once.
                await self._end()
                return
            if self.lost:
                raise _Lost
            if self.host.auto_checkpoint and self.host.checkpoint_due(
                self._uncheckpointed, anyio.current_time() - self._checkpointed_at
            ):
                await self._auto_checkpoint()
        await self.processor.shutdown_requested(self.checkpointer)
        if self.host.auto_checkpoint:
            await self._auto_checkpoint()

    def _user_records(self, records: list[Record]) -> list[Record]:
        """The records to hand over: deaggregated when asked, minus what a checkpoint inside
        an aggregate already covers (only the first page holds that aggregate)."""
        if self.host.deaggregate:
            records = kpl.deaggregate(records)
        if self._resume_inside is not None and records:
            sequence, sub_sequence = self._resume_inside
            self._resume_inside = None
            records = kpl.after_sub_sequence(records, sequence, sub_sequence)
        return records

    def _processed(self, records: list[Record]) -> None:
        self.last_processed = records[-1]
        self.records_processed += len(records)
        self._uncheckpointed += len(records)

    async def _end(self) -> None:
        try:
            await self.processor.shard_ended(self.checkpointer)
        except Abandoned:
            return  # the next holder of the lease ends the shard
        if self.checkpointer.last_sequence != SHARD_END:
            await self.store_checkpoint(SHARD_END, None)
        log.info("shard %s ended (epoch %d)", self.shard_id, self.epoch)

    async def _read(self) -> ReadResult | None:
        """The next page, retrying transient errors; None once a stop was requested."""
        max_bytes, wait_ms, limit = self.host.read_args()
        failures = 0
        while not self.stopping:
            damaged: DataCorruptError | None = None
            with anyio.CancelScope() as scope:
                self._read_scope = scope
                try:
                    result = await self.host.client.read(
                        self.host.stream,
                        self.shard_id,
                        self.position,
                        max_bytes=max_bytes,
                        wait_ms=wait_ms,
                        limit=limit,
                    )
                    if result.skipped is not None:
                        log_skipped(self.host.stream, result.skipped)
                    return result
                except DataCorruptError as exc:
                    damaged = exc
                except StreamdError as exc:
                    if not exc.retryable:
                        raise
                    failures += 1
                    await anyio.sleep(backoff_s(failures, BACKOFF_MS_INITIAL, BACKOFF_MS_MAX))
                finally:
                    self._read_scope = None
            if damaged is not None:
                await self._wait_out_damage(damaged)
        return None

    async def _wait_out_damage(self, error: DataCorruptError) -> None:
        """Report a damaged range once (log, processor), then wait to try again; a stop
        request cancels the wait (the lease is then given up as usual)."""
        seen = (error.details.get("from_sequence"), error.details.get("to_sequence"))
        if seen != self._damage_reported:
            self._damage_reported = seen
            log.error(
                "lease of %s: %s; the lease is kept and the read retried every %.1f s",
                self.shard_id,
                error.message,
                self.host.corrupt_retry_s,
            )
            await self.processor.data_corrupt(error)
        with anyio.CancelScope() as scope:
            self._read_scope = scope
            try:
                if not self.stopping:
                    await anyio.sleep(self.host.corrupt_retry_s)
            finally:
                self._read_scope = None

    # -- checkpoints ------------------------------------------------------------------------------

    async def _auto_checkpoint(self) -> None:
        if self.last_processed is None or self._uncheckpointed == 0:
            self._checkpointed_at = anyio.current_time()
            return
        last = self.last_processed
        try:
            await self.store_checkpoint(last.sequence_number, None, last.sub_sequence)
        except StreamdError as exc:
            if isinstance(exc, LeaseLostError) or not exc.retryable:
                raise
            log.warning("checkpoint of %s postponed: %s", self.shard_id, exc.message)

    async def store_checkpoint(
        self, sequence: str, metadata: str | None, sub_sequence: int | None = None
    ) -> None:
        """Send a checkpoint (retrying transient errors); on fencing mark the lease lost.

        A checkpoint in flight is shielded from the lease task's cancellation (bounded by
        CHECKPOINT_TIMEOUT_S): if the lease is lost meanwhile, the caller still learns how the
        server judged it (typically LeaseLostError) instead of a silent cancellation.
        """
        if self.lost:
            raise LeaseLostError(f"the lease of {self.shard_id} at epoch {self.epoch} is lost")
        failures = 0
        deadline_s = anyio.current_time() + CHECKPOINT_RETRY_S_MAX
        while True:
            try:
                with anyio.CancelScope(shield=True):
                    await group_admin.checkpoint(
                        self.host.client,
                        self.host.stream,
                        self.host.group,
                        self.host.member_id,
                        self.shard_id,
                        self.epoch,
                        sequence,
                        metadata,
                        sub_sequence=sub_sequence,
                        timeout_s=CHECKPOINT_TIMEOUT_S,
                    )
                break
            except LeaseLostError:
                self.lost = True
                raise
            except StreamdError as exc:
                failures += 1
                pause_s = backoff_s(failures, BACKOFF_MS_INITIAL, BACKOFF_MS_MAX)
                if not exc.retryable or anyio.current_time() + pause_s > deadline_s:
                    raise
                await anyio.sleep(pause_s)
        self.checkpointer.last_sequence = sequence
        self._checkpointed_at = anyio.current_time()
        last = self.last_processed
        if sequence == SHARD_END or (
            last is not None
            and (parse_sequence(sequence)[1], _rank(sub_sequence))
            >= (last.offset, _rank(last.sub_sequence))
        ):
            self._uncheckpointed = 0
