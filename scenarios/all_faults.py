"""Every cluster fault scenario's round, one after the other, on one cluster and one history.

The round of each of kill_leader (1), pause_leader (2), kill_majority (4), double_failover
(6), power_loss (5), rolling_restart (12) and etcd_outage (10), in that order, under one load,
checked once at the end. CI runs it (tests/integration/test_fault_scenarios.py): one cluster start
and one final check instead of one per scenario, and every
fault still meets the state the ones before it left (a failover on a node that just caught
up, a power loss after a double failover). CI runs the rounds of ``CI_ORDER`` only (the
failovers; the pause, the power loss and the etcd outage run in the ``--slow`` tests, which
keeps CI near a minute on an idle machine). Each fault is named in the report, so a violation's
time and shards point at its round.

    python -m scenarios.all_faults --rounds 3 --seed 7     # 3 passes over every fault
"""

from __future__ import annotations

import importlib
import sys

from streamd.testing.scenario import FaultRound, ScenarioContext, main

ORDER = (
    "kill_leader",
    "pause_leader",
    "kill_majority",
    "double_failover",
    "power_loss",
    "rolling_restart",
    "etcd_outage",
)
CI_ORDER = ("kill_leader", "kill_majority", "double_failover", "rolling_restart")
_rounds: dict[str, FaultRound] = {}


def fault_rounds() -> dict[str, FaultRound]:
    """name -> the scenario module's ``fault_round`` (imported beside this module)."""
    if not _rounds:
        package = __name__.rpartition(".")[0] or "scenarios"
        for name in ORDER:
            _rounds[name] = importlib.import_module(f"{package}.{name}").fault_round
    return _rounds


async def fault_round(ctx: ScenarioContext, round_index: int) -> None:
    for name, run in fault_rounds().items():
        ctx.say(f"--- {name}")
        await run(ctx, round_index)


if __name__ == "__main__":
    sys.exit(main("all_faults", fault_round, __doc__))
