"""Simulated workers for the coordinator: deterministic, in-memory, in virtual time.

Like ``trio.testing``, this ships with the package so that tests (and a future seeded simulator)
share one faithful implementation of the worker side of the protocol: take the leases in the
answer, give up revoked ones (at once, or when told), drop everything else, report what is held.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streamd_client.model import Position, make_sequence, shard_id_of, shard_index_of

from .coordinator import Answer, Coordinator
from .state import Checkpoint, GroupDoc, ShardInfo

SESSION_MS = 3_000
REBALANCE_MS = 30_000


def shard_ids(count: int) -> list[str]:
    return [shard_id_of(i) for i in range(count)]


def new_doc(stream: str = "s", group: str = "g") -> GroupDoc:
    return GroupDoc(stream, "sid-1", group, 0, Position.trim_horizon().to_wire())


def coordinator(
    shards: int | list[ShardInfo] = 8,
    now_ms: int = 0,
    checkpoints: dict[str, Checkpoint] | None = None,
) -> Coordinator:
    infos = [ShardInfo(s) for s in shard_ids(shards)] if isinstance(shards, int) else shards
    return Coordinator(new_doc(), checkpoints or {}, infos, now_ms=now_ms)


def seq(shard_id: str, offset: int) -> str:
    return make_sequence(shard_index_of(shard_id), offset)


@dataclass
class Worker:
    """A worker that obeys the protocol: takes grants, gives up revoked shards when told to."""

    coord: Coordinator
    member_id: str
    session_timeout_ms: int = SESSION_MS
    rebalance_timeout_ms: int = REBALANCE_MS
    release_at_once: bool = True
    held: dict[str, int] = field(default_factory=dict)
    revoking: set[str] = field(default_factory=set)
    last: Answer | None = None

    def owned(self) -> list[tuple[str, int]]:
        return sorted(self.held.items())

    def join(self, now_ms: int) -> Answer:
        answer = self.coord.join(
            self.member_id,
            now_ms,
            session_timeout_ms=self.session_timeout_ms,
            rebalance_timeout_ms=self.rebalance_timeout_ms,
            owned=self.owned(),
        )
        self.apply(answer)
        self.coord.check_invariants()
        return answer

    def heartbeat(self, now_ms: int) -> Answer:
        answer = self.coord.heartbeat(self.member_id, now_ms, self.owned())
        self.apply(answer)
        self.coord.check_invariants()
        return answer

    def apply(self, answer: Answer) -> None:
        self.last = answer
        kept = {g.shard_id: g.epoch for g in answer.assignment}
        giving = {
            g.shard_id: g.epoch for g in answer.revoking if self.held.get(g.shard_id) == g.epoch
        }
        self.held = {**giving, **kept}
        self.revoking = set(giving)
        if self.release_at_once:
            self.release_revoked()

    def release_revoked(self) -> None:
        for shard_id in self.revoking:
            self.held.pop(shard_id, None)
        self.revoking = set()

    def leave(self, now_ms: int) -> None:
        self.coord.leave(self.member_id, now_ms)
        self.held = {}
        self.coord.check_invariants()


def settle(workers: list[Worker], now_ms: int, rounds: int = 4) -> None:
    """Let every worker heartbeat a few times (no time passes): revocations and grants flow."""
    for _ in range(rounds):
        for worker in workers:
            worker.heartbeat(now_ms)


def holders(workers: list[Worker]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for worker in workers:
        for shard_id in worker.held:
            out.setdefault(shard_id, []).append(worker.member_id)
    return out
