"""Proof that the simulator bites: each protocol rule removed on purpose is caught.

Every mutant (streamd.testing.sim.mutants) must fail a safety check (not only liveness)
within a bounded number of seeds of the hunting profile, with 3 and with 5 replicas. The
bounds leave room above the first seed that finds each today (the search is deterministic).
"""

from __future__ import annotations

import pytest

from streamd.testing.sim import SimConfig, run_seed
from streamd.testing.sim.mutants import MUTANTS

BOUNDS = {
    "ack_before_majority": 20,
    "skip_fencing": 100,
    "skip_truncation": 100,
    "old_epoch_commit": 600,
    "joiner_votes_at_once": 40,
}
# Only replica-set changes can show this one (a set that never changes has no joiner).
RECONFIG = {"joiner_votes_at_once"}


@pytest.mark.parametrize("replicas", [3, 5])
@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_the_simulator_finds_the_mutant(mutant: str, replicas: int) -> None:
    config = SimConfig(
        replicas=replicas, hunt=True, reconfig=mutant in RECONFIG, factory=MUTANTS[mutant]
    )
    for seed in range(BOUNDS[mutant]):
        result = run_seed(seed, config)
        if not result.ok:
            assert "liveness" not in result.failure, result.failure
            assert result.replay_command().endswith(f"--mutant {mutant} -v")
            assert mutant not in RECONFIG or "--reconfig" in result.replay_command()
            return
    pytest.fail(f"{mutant} survived {BOUNDS[mutant]} seeds with {replicas} replicas")
