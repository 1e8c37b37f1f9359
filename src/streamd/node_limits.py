"""How many shards this node may hold, from the configured budget and the open-files limit.

Every shard this node holds (open, or closed and still readable) costs a pipeline, a task, its
in-memory tail and queue bounds, and, worst case, one descriptor: its active segment while a
write awaits its fsync (``--fsync interval``), which the fd cache may not close. Everything else
is bounded per node, not per shard: the segment fd cache, the connection caps, the I/O pool and
trio's reader threads. So the descriptors a node needs are

    fixed  = FDS_BASE + connections + segment fd cache + I/O threads + reader threads
    needed = fixed + FDS_PER_SHARD * shards

and a change that would take ``shards`` past ``min(shards_max, (RLIMIT_NOFILE - fixed) /
FDS_PER_SHARD)`` is refused up front with LIMIT_EXCEEDED, before anything is written: no ghost
stream, and the next start needs no more than this one had. Under a low limit the elastic parts
give way first: the fd cache and the connections each get at most a quarter of the limit.

At start the soft limit is raised to the hard one (``raise_nofile_limit``); ``startup_report``
says, if the shards already stored or the connection caps do not fit, which limit to raise and
to what (``ulimit -n``). No trio here.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from streamd_client.errors import LimitExceededError

FDS_BASE = 64  # stdio, the lock, SQLite and its WAL, listeners, epoll, wake-up fds, slack
FDS_PER_SHARD = 1
READER_THREADS = 40  # trio.to_thread's default limiter: reads pin one descriptor each


def raise_nofile_limit() -> int:
    """Raise the soft open-files limit to the hard one (any process may); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def nofile_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


@dataclass(frozen=True, slots=True)
class ShardBudget:
    shards_max: int  # the configured budget (--shards-max)
    nofile: int  # RLIMIT_NOFILE (soft) of this process
    connections: int  # the connection caps of the listeners that are on
    segment_fds_max: int  # the configured fd cache bound
    io_threads_max: int

    @property
    def connection_fds(self) -> int:
        return min(self.connections, self.nofile // 4)

    @property
    def segment_fds(self) -> int:
        """The fd cache bound actually used: the configured one, at most a quarter of the
        limit."""
        return max(1, min(self.segment_fds_max, self.nofile // 4))

    @property
    def fds_fixed(self) -> int:
        return (
            FDS_BASE + self.connection_fds + self.segment_fds + self.io_threads_max + READER_THREADS
        )

    @property
    def shards_by_fds(self) -> int:
        return max(0, self.nofile - self.fds_fixed) // FDS_PER_SHARD

    @property
    def shards_allowed(self) -> int:
        return min(self.shards_max, self.shards_by_fds)

    def nofile_needed(self, shards: int) -> int:
        """The open-files limit under which ``shards`` and full connection caps fit."""
        fixed = FDS_BASE + self.connections + self.segment_fds_max + self.io_threads_max
        return fixed + READER_THREADS + FDS_PER_SHARD * shards

    def check(self, held: int, adding: int, what: str) -> None:
        """Refuse ``what`` (it adds ``adding`` shards to the ``held`` ones) if it does not fit.

        Raises LimitExceededError naming the limit and how to raise it."""
        total = held + adding
        if total <= self.shards_allowed:
            return
        if total > self.shards_max:
            raise LimitExceededError(
                f"{what} would make {total} shards on this node; it holds at most "
                f"{self.shards_max} (--shards-max)",
                shards=total,
                shards_max=self.shards_allowed,
            )
        raise LimitExceededError(
            f"{what} would make {total} shards on this node; its open-files limit "
            f"(RLIMIT_NOFILE {self.nofile}) allows {self.shards_by_fds}: raise it "
            f"(ulimit -n {self.nofile_needed(total)})",
            shards=total,
            shards_max=self.shards_allowed,
        )

    def startup_problems(self, held: int) -> list[str]:
        """What does not fit at start, each with the limit to raise (empty: all fits)."""
        problems: list[str] = []
        if held > self.shards_allowed:
            problems.append(
                f"this node holds {held} shards but its limits allow {self.shards_allowed} "
                f"(--shards-max {self.shards_max}, RLIMIT_NOFILE {self.nofile}); they are served, "
                f"new ones are refused: raise the open-files limit (ulimit -n "
                f"{self.nofile_needed(held)}) or --shards-max"
            )
        if self.connection_fds < self.connections or self.segment_fds < self.segment_fds_max:
            problems.append(
                f"the open-files limit (RLIMIT_NOFILE {self.nofile}) is below what the "
                f"connection caps ({self.connections}) and the segment fd cache "
                f"({self.segment_fds_max}) may use; the cache is cut to {self.segment_fds}: "
                f"raise it (ulimit -n {self.nofile_needed(max(held, 1))})"
            )
        return problems
