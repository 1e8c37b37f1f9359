"""A deterministic simulator for the replication core (TigerBeetle's VOPR in miniature).

``run_seed(seed)`` builds one shard of 3 or 5 replicas on in-memory disks and an in-memory
network, draws a fault schedule from the seed, runs clients and readers against it in virtual
time, checks the invariants after every step (checker.py) and returns a ``SimResult``: ok, or
the failure with its seed, the command that replays it and the tail of the trace. The same seed
gives the same trace hash. ``python -m streamd.testing.sim --seeds N`` runs many.
"""

from __future__ import annotations

from .checker import Violation
from .world import SimConfig, SimResult, World


def run_seed(seed: int, config: SimConfig | None = None) -> SimResult:
    return World(seed, config or SimConfig()).run()


__all__ = ["SimConfig", "SimResult", "Violation", "World", "run_seed"]
