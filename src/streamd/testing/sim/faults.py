"""The fault schedule of one run, drawn from its seed before the run starts.

A schedule is a list of ``Fault`` (when, what, on whom, for how long) inside the fault phase;
the network's own misbehaviour (drop, duplicate, delay spread, hence reorder) is a per-run
``NetProfile``. Drawing everything up front keeps a run's faults independent of what the
replicas do, so a seed names one schedule whatever the protocol code does with it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

KINDS = (
    "elect",  # the controller moves leadership (the old leader may still think it leads)
    "crash",  # power loss: unsynced batches lost, the last write maybe torn; restart later
    "pause",  # the process stops (SIGSTOP, a GC pause): it hears and says nothing meanwhile
    "partition",  # one replica cut off from the others, both ways
    "split",  # the replicas in two groups that cannot talk
    "oneway",  # messages from a to b are lost, b to a still arrive
    "flap",  # a partition of one replica that comes and goes
    "fsync_stall",  # fsync takes very long on one replica
    "disk_full",  # appends fail on one replica
    "bitflip",  # one stored durable batch on one replica changes
    "isolate_leader",  # "partition" of whoever leads when it strikes (leaders draw the fire)
    "crash_leader",  # "crash" of whoever leads when it strikes
    "churn",  # for a while, every newly named leader is cut off soon after it starts
)


@dataclass(frozen=True, slots=True)
class Fault:
    at_ms: int
    kind: str
    node: int
    other: int  # the second replica of a one-way cut, or -1
    group: tuple[int, ...]  # one side of a split
    duration_ms: int

    def describe(self) -> str:
        extra = f"->{self.other}" if self.other >= 0 else ""
        extra += f" group={list(self.group)}" if self.group else ""
        return f"{self.at_ms}ms {self.kind} n{self.node}{extra} for {self.duration_ms}ms"


@dataclass(frozen=True, slots=True)
class NetProfile:
    drop: float
    duplicate: float
    delay_ms_min: int
    delay_ms_max: int


def draw_net(rng: random.Random) -> NetProfile:
    calm = rng.random() < 0.3
    return NetProfile(
        drop=0.0 if calm else rng.choice((0.01, 0.05, 0.15)),
        duplicate=0.0 if calm else rng.choice((0.0, 0.02, 0.1)),
        delay_ms_min=1,
        delay_ms_max=rng.choice((3, 10, 40)),
    )


def draw_schedule(
    rng: random.Random, replicas: int, fault_phase_ms: int, faults_max: int
) -> list[Fault]:
    count = rng.randint(1, faults_max)
    kinds = rng.sample(KINDS, rng.randint(2, len(KINDS)))
    faults = []
    for _ in range(count):
        kind = rng.choice(kinds)
        node = rng.randrange(replicas)
        other = rng.choice([n for n in range(replicas) if n != node]) if kind == "oneway" else -1
        group = tuple(sorted(rng.sample(range(replicas), replicas // 2))) if kind == "split" else ()
        faults.append(
            Fault(
                at_ms=rng.randrange(fault_phase_ms),
                kind=kind,
                node=node,
                other=other,
                group=group,
                duration_ms=rng.randint(50, max(60, fault_phase_ms // 2)),
            )
        )
    faults.sort(key=lambda f: (f.at_ms, f.kind, f.node))
    return faults


RECONFIG_KINDS = (
    "replace",  # a member lost for good (never restarts): replaced by a spare after a grace
    "move",  # a live member's replica moved to a spare (an operator's move, or a drain)
)


def draw_reconfig(rng: random.Random, replicas: int, fault_phase_ms: int) -> list[Fault]:
    """Replica-set changes for the ``reconfig`` profile: 1 to 3, at most one member lost for
    good (with one lost and another change joining, a second loss would leave no majority of
    voters: the protocol then waits, as it must, and the run could not converge). ``node`` is
    a position in the replica set as it is when the change strikes; ``duration_ms`` the grace
    before a lost member is replaced."""
    changes = []
    lost = False
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(RECONFIG_KINDS)
        if kind == "replace" and lost:
            kind = "move"
        lost = lost or kind == "replace"
        changes.append(
            Fault(
                at_ms=rng.randrange(fault_phase_ms),
                kind=kind,
                node=rng.randrange(replicas),
                other=-1,
                group=(),
                duration_ms=rng.randint(30, 300),
            )
        )
    changes.sort(key=lambda f: (f.at_ms, f.kind, f.node))
    return changes
