"""The simulated workload: idempotent producers that retry, and readers that follow the log.

A ``Client`` is an idempotent producer (its own producer id, sequence +1 per batch). It sends
its batch to whoever the controller last named leader, and retries the *same* batch (same
sequence) after any failure or when no answer comes: answers get lost, so an outcome is often
ambiguous, and only idempotence keeps a retry from storing the batch twice. It moves to the next
sequence only once the current batch is acked. After the heal it writes one more batch and
stops, so that the end of the run proves writes commit again.

A ``Reader`` reads committed batches from the named leader, from where it stopped; the checker
sees every batch it is served.
"""

from __future__ import annotations

import random
from typing import Any, Protocol

from ...replication import messages as m
from ...storage.logstore import make_batch


class Sim(Protocol):
    """What clients and readers use of the world (world.World is one): the network, the
    clock's queue, ids, and who waits for which answer."""

    rng: random.Random
    leader_hint: int | None
    write_owner: dict[int, Client]
    read_owner: dict[int, Reader]

    def after(self, delay_ms: int, action: str, *args: Any) -> None: ...

    def new_id(self) -> int: ...

    def to_node(self, node_id: int, event: m.Event) -> None: ...


ANSWER_TIMEOUT_MS = 250
READ_EVERY_MS = 60


class Client:
    def __init__(self, world: Sim, index: int) -> None:
        self.world = world
        self.producer_id = index + 1
        self.seq = 0
        self.attempt = 0  # write id of the attempt we wait for (0: none)
        self.pending = False
        self.writes_left: int | None = None  # set at the heal: how many more to write

    def done(self) -> bool:
        return self.writes_left == 0 and not self.pending

    def last_write(self) -> None:
        self.writes_left = 2 if self.pending else 1

    def wake(self, attempt: int) -> None:
        if attempt and attempt != self.attempt:
            return  # a timer of an attempt that is over
        if not self.pending:
            if self.writes_left == 0:
                return
            self.seq += 1
            self.pending = True
        self._send()

    def _send(self) -> None:
        world = self.world
        target = world.leader_hint if world.leader_hint is not None else 0
        payload = f"p{self.producer_id}s{self.seq}".encode()
        batch = make_batch(
            0,
            world.rng.randint(1, 3),
            0,
            payload,
            producer_id=self.producer_id,
            producer_seq=self.seq,
        )
        self.attempt = world.new_id()
        world.write_owner[self.attempt] = self
        world.to_node(target, m.ClientWrite(self.attempt, batch))
        world.after(ANSWER_TIMEOUT_MS, "client", self, self.attempt)

    def answer(self, effect: m.Effect) -> None:
        if isinstance(effect, m.WriteDone):
            if effect.write_id != self.attempt or not self.pending:
                return  # an earlier attempt's ack: the checker has already seen it
            self.pending = False
            self.attempt = 0
            if self.writes_left is not None:
                self.writes_left -= 1
            self.world.after(self.world.rng.randint(1, 20), "client", self, 0)
        elif isinstance(effect, m.WriteFailed) and effect.write_id == self.attempt:
            self.attempt = 0
            self.world.after(self.world.rng.randint(10, 40), "client", self, 0)


class Reader:
    def __init__(self, world: Sim, index: int) -> None:
        self.world = world
        self.index = index
        self.offset = 0

    def wake(self) -> None:
        world = self.world
        target = world.leader_hint if world.leader_hint is not None else 0
        read_id = world.new_id()
        world.read_owner[read_id] = self
        world.to_node(target, m.ClientRead(read_id, self.offset, 8))
        world.after(READ_EVERY_MS, "reader", self)

    def answer(self, effect: m.Effect) -> None:
        if isinstance(effect, m.ReadDone) and effect.batches:
            self.offset = max(self.offset, effect.batches[-1].next_offset)
