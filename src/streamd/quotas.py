"""Per-shard throughput quotas as Kinesis enforces them: token buckets, with no I/O and no trio.

Every call takes the time as an argument (seconds from any monotonic origin), so the buckets are
tested on made-up clocks and the engine hands in its ``Clock``'s monotonic reading.

A ``TokenBucket`` refills at ``rate`` units per second up to ``capacity`` (``rate * BURST_S``: a
short burst, one second's worth). A cost is admitted when the bucket holds at least
``min(cost, capacity)`` tokens, and then the whole cost is taken, which may leave the bucket in
debt. So a cost larger than the burst (a 10 MiB GetRecords answer against a 2 MiB/s read
quota, a client batch bigger than the write burst) still passes once the bucket is full, and
the debt it leaves is paid back before anything else passes: over any interval of T seconds the
admitted total stays below ``capacity + rate * T + (largest cost - capacity)`` (the property
tests check it), which is Kinesis' own behaviour for GetRecords ("a call that returns 10 MiB
makes the calls of the next 5 seconds fail").

A ``ShardMeter`` holds one shard's buckets under a ``QuotaFigures``: writes (bytes and records,
both must admit), polling reads (calls admitted before the read, bytes charged after it), and
one bucket per enhanced fan-out consumer (paced, never refused). It also measures the shard's
offered write load (accepted plus throttled, exponentially averaged) for the on-demand scaler.
A figure of None is no limit for that dimension.

What is counted (docs/kinesis.md, "Throughput quotas"): a written record costs its data bytes
plus its partition key's UTF-8 bytes, as Kinesis counts them, and one record; a read costs one
call, and the uncompressed payload bytes of the batches it returned (the records' data and
partition keys, their 16-byte hash keys and a few bytes of framing each).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Final

from streamd_client.errors import InvalidArgumentError

BURST_S: Final = 1.0  # a bucket holds this many seconds of its rate
LOAD_TAU_S: Final = 2.0  # time constant of the measured write load (exponential average)
FANOUT_CONSUMERS_MAX: Final = 64  # fan-out buckets kept per shard; the oldest is dropped
QUOTA_PER_S_MAX: Final = 1 << 40  # bigger figures are refused (an int64 on every wire)
MiB: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class QuotaFigures:
    """Per-shard limits; None is no limit."""

    write_bytes_per_s: int | None = None
    write_records_per_s: int | None = None
    read_bytes_per_s: int | None = None
    read_calls_per_s: int | None = None
    fanout_bytes_per_s: int | None = None

    @property
    def enforced(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))


QUOTAS_OFF: Final = QuotaFigures()
# Kinesis' figures per shard (a provisioned stream, and each shard of an on-demand one).
KINESIS_QUOTAS: Final = QuotaFigures(
    write_bytes_per_s=1 * MiB,
    write_records_per_s=1000,
    read_bytes_per_s=2 * MiB,
    read_calls_per_s=5,
    fanout_bytes_per_s=2 * MiB,
)

# Per-stream overrides: stream tags (settable through Kinesis CreateStream Tags and
# AddTagsToStream, and the native create_stream's ``quotas``). A value is a positive integer,
# or "unlimited"; a figure without a tag is the server's.
TAG_PREFIX: Final = "streamd:quota:"
_TAG_FIELDS: Final = {
    "write-bytes-per-s": "write_bytes_per_s",
    "write-records-per-s": "write_records_per_s",
    "read-bytes-per-s": "read_bytes_per_s",
    "read-calls-per-s": "read_calls_per_s",
    "fanout-bytes-per-s": "fanout_bytes_per_s",
}
QUOTA_TAG_KEYS: Final = tuple(TAG_PREFIX + k for k in _TAG_FIELDS)
UNLIMITED: Final = "unlimited"


def check_figure(name: str, value: int) -> int:
    """Raises InvalidArgumentError unless ``value`` is a figure (1..2**40 per second)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= QUOTA_PER_S_MAX:
        raise InvalidArgumentError(f"{name} must be an integer in 1..{QUOTA_PER_S_MAX}: {value!r}")
    return value


def _tag_value(key: str, value: str) -> int | None:
    if value == UNLIMITED:
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 14:
        raise InvalidArgumentError(
            f"tag {key} must be a positive integer or {UNLIMITED!r}, not {value[:32]!r}"
        )
    return check_figure(key, int(value))


def check_quota_tags(tags: Mapping[str, str]) -> None:
    """Refuse a stream's tags whose quota entries are malformed. Raises InvalidArgumentError."""
    figures_with_tags(QUOTAS_OFF, tags)


def figures_with_tags(base: QuotaFigures, tags: Mapping[str, str]) -> QuotaFigures:
    """``base`` with the stream's quota tags applied. Raises InvalidArgumentError."""
    changes: dict[str, int | None] = {}
    for key, value in tags.items():
        if not key.startswith(TAG_PREFIX):
            continue
        name = _TAG_FIELDS.get(key[len(TAG_PREFIX) :])
        if name is None:
            raise InvalidArgumentError(
                f"unknown quota tag {key[:160]!r}; known: {', '.join(QUOTA_TAG_KEYS)}"
            )
        changes[name] = _tag_value(key, value)
    return replace(base, **changes) if changes else base


def quota_tags(quotas: Mapping[str, object]) -> dict[str, str]:
    """The tags for a native ``quotas`` map ({"write_bytes_per_s": 1024, ...}, a figure or
    "unlimited"). Raises InvalidArgumentError."""
    by_field = {name: tag for tag, name in _TAG_FIELDS.items()}
    tags: dict[str, str] = {}
    for name, value in quotas.items():
        tag = by_field.get(name) if isinstance(name, str) else None
        if tag is None:
            raise InvalidArgumentError(
                f"unknown quota {str(name)[:64]!r}; known: {', '.join(sorted(by_field))}"
            )
        if value == UNLIMITED:
            tags[TAG_PREFIX + tag] = UNLIMITED
        else:
            tags[TAG_PREFIX + tag] = str(check_figure(name, value))  # type: ignore[arg-type]
    return tags


class TokenBucket:
    """``rate`` tokens a second, at most ``capacity`` held; debt allowed (module docstring).

    Invariant: ``tokens <= capacity``; after a take, ``tokens >= min(cost, capacity) - cost``.
    """

    __slots__ = ("at_s", "capacity", "rate", "tokens")

    def __init__(self, rate: float, now_s: float, burst_s: float = BURST_S) -> None:
        assert rate > 0 and burst_s > 0
        self.rate = float(rate)
        self.capacity = max(1.0, rate * burst_s)
        self.tokens = self.capacity
        self.at_s = now_s

    def refill(self, now_s: float) -> None:
        if now_s > self.at_s:
            self.tokens = min(self.capacity, self.tokens + (now_s - self.at_s) * self.rate)
            self.at_s = now_s

    def wait_s(self, cost: float, now_s: float) -> float:
        """Seconds until ``cost`` would be admitted (0: now)."""
        self.refill(now_s)
        missing = min(cost, self.capacity) - self.tokens
        return 0.0 if missing <= 0 else missing / self.rate

    def take(self, cost: float, now_s: float) -> None:
        """Take ``cost`` whether or not it is admissible (a charge after the fact)."""
        self.refill(now_s)
        self.tokens -= cost

    def admit(self, cost: float, now_s: float) -> bool:
        """Take ``cost`` if it is admissible now; whether it was."""
        if self.wait_s(cost, now_s) > 0:
            return False
        self.tokens -= cost
        return True


class LoadMeter:
    """An exponentially averaged rate (units per second) with time constant LOAD_TAU_S."""

    __slots__ = ("at_s", "value")

    def __init__(self, now_s: float) -> None:
        self.value = 0.0
        self.at_s = now_s

    def _decay(self, now_s: float) -> None:
        if now_s > self.at_s:
            self.value *= math.exp(-(now_s - self.at_s) / LOAD_TAU_S)
            self.at_s = now_s

    def add(self, amount: float, now_s: float) -> None:
        self._decay(now_s)
        self.value += amount / LOAD_TAU_S

    def rate(self, now_s: float) -> float:
        self._decay(now_s)
        return self.value


def _bucket(rate: int | None, now_s: float) -> TokenBucket | None:
    return None if rate is None else TokenBucket(rate, now_s)


@dataclass(frozen=True, slots=True)
class WriteVerdict:
    """How many of the records offered (a prefix, in order) were admitted, and for the rest
    the seconds until the first of them would be, and which quota refused it."""

    admitted: int
    retry_after_s: float = 0.0
    quota: str | None = None


class ShardMeter:
    """One shard's buckets and measured write load (module docstring)."""

    def __init__(self, figures: QuotaFigures, now_s: float) -> None:
        self.figures = figures
        self.write_bytes = _bucket(figures.write_bytes_per_s, now_s)
        self.write_records = _bucket(figures.write_records_per_s, now_s)
        self.read_bytes = _bucket(figures.read_bytes_per_s, now_s)
        self.read_calls = _bucket(figures.read_calls_per_s, now_s)
        self._fanout: dict[str, TokenBucket] = {}
        self.offered_bytes = LoadMeter(now_s)
        self.offered_records = LoadMeter(now_s)
        self.used_s = now_s

    def admit_writes(self, sizes: Sequence[int], now_s: float) -> WriteVerdict:
        """Admit the longest prefix of records (each ``size`` bytes) that fits. The rest are
        refused whole, so a caller that retries them in order keeps the shard's order."""
        self.used_s = now_s
        self.offered_records.add(len(sizes), now_s)
        self.offered_bytes.add(sum(sizes), now_s)
        by_bytes, by_records = self.write_bytes, self.write_records
        for n, size in enumerate(sizes):
            wait_bytes = 0.0 if by_bytes is None else by_bytes.wait_s(size, now_s)
            wait_records = 0.0 if by_records is None else by_records.wait_s(1, now_s)
            if wait_bytes > 0 or wait_records > 0:
                quota = "write_bytes" if wait_bytes >= wait_records else "write_records"
                return WriteVerdict(n, max(wait_bytes, wait_records), quota)
            if by_bytes is not None:
                by_bytes.tokens -= size
            if by_records is not None:
                by_records.tokens -= 1
        return WriteVerdict(len(sizes))

    def admit_batch(self, records: int, size: int, now_s: float) -> WriteVerdict:
        """All or nothing: one client-built batch of ``records`` records, ``size`` bytes."""
        self.used_s = now_s
        self.offered_records.add(records, now_s)
        self.offered_bytes.add(size, now_s)
        by_bytes, by_records = self.write_bytes, self.write_records
        wait_bytes = 0.0 if by_bytes is None else by_bytes.wait_s(size, now_s)
        wait_records = 0.0 if by_records is None else by_records.wait_s(records, now_s)
        if wait_bytes > 0 or wait_records > 0:
            quota = "write_bytes" if wait_bytes >= wait_records else "write_records"
            return WriteVerdict(0, max(wait_bytes, wait_records), quota)
        if by_bytes is not None:
            by_bytes.tokens -= size
        if by_records is not None:
            by_records.tokens -= records
        return WriteVerdict(records)

    def admit_read(self, now_s: float) -> tuple[float, str | None]:
        """Admit one polling read (a call; its bytes are charged after it): (0, None), or the
        seconds until one would be and the quota that refused it."""
        self.used_s = now_s
        wait_bytes = 0.0 if self.read_bytes is None else self.read_bytes.wait_s(1, now_s)
        wait_calls = 0.0 if self.read_calls is None else self.read_calls.wait_s(1, now_s)
        if wait_bytes > 0 or wait_calls > 0:
            return max(wait_bytes, wait_calls), ("read_bytes" if wait_bytes else "read_calls")
        if self.read_calls is not None:
            self.read_calls.tokens -= 1
        return 0.0, None

    def charge_read(self, size: int, now_s: float) -> None:
        if self.read_bytes is not None:
            self.read_bytes.take(size, now_s)

    def fanout_wait_s(self, consumer: str, now_s: float) -> float:
        """Seconds a fan-out consumer's next push waits (its debt paid back; 0: none)."""
        bucket = self._fanout_bucket(consumer, now_s)
        return 0.0 if bucket is None else bucket.wait_s(1, now_s)

    def charge_fanout(self, consumer: str, size: int, now_s: float) -> None:
        bucket = self._fanout_bucket(consumer, now_s)
        if bucket is not None:
            bucket.take(size, now_s)

    @property
    def fanout_burst_bytes(self) -> int | None:
        rate = self.figures.fanout_bytes_per_s
        return None if rate is None else max(1, int(rate * BURST_S))

    def _fanout_bucket(self, consumer: str, now_s: float) -> TokenBucket | None:
        rate = self.figures.fanout_bytes_per_s
        if rate is None:
            return None
        self.used_s = now_s
        bucket = self._fanout.get(consumer)
        if bucket is None:
            if len(self._fanout) >= FANOUT_CONSUMERS_MAX:
                del self._fanout[next(iter(self._fanout))]
            bucket = self._fanout[consumer] = TokenBucket(rate, now_s)
        return bucket

    def load(self, now_s: float) -> tuple[float, float]:
        """The offered write load now: (bytes per second, records per second)."""
        return self.offered_bytes.rate(now_s), self.offered_records.rate(now_s)


class QuotaBook:
    """Every shard's meter, by (stream id, shard id), kept under the figures asked with."""

    def __init__(self) -> None:
        self._meters: dict[tuple[str, str], ShardMeter] = {}

    def meter(
        self, stream_id: str, shard_id: str, figures: QuotaFigures, now_s: float
    ) -> ShardMeter:
        """The shard's meter; a new one (full buckets) if its figures changed."""
        key = (stream_id, shard_id)
        meter = self._meters.get(key)
        if meter is None or meter.figures != figures:
            meter = self._meters[key] = ShardMeter(figures, now_s)
        return meter

    def get(self, stream_id: str, shard_id: str) -> ShardMeter | None:
        return self._meters.get((stream_id, shard_id))

    def prune(self, live: set[tuple[str, str]]) -> int:
        """Forget the meters of shards not in ``live``; how many were forgotten."""
        gone = [key for key in self._meters if key not in live]
        for key in gone:
            del self._meters[key]
        return len(gone)

    def __len__(self) -> int:
        return len(self._meters)
