"""Scenario 4 (issue 13): kill -9 two of three nodes, then restart them one by one.

Each round kills two nodes with SIGKILL at once (the busiest leader and one other). No shard
has a majority left, so nothing may be acknowledged: a write acknowledged while only one
replica was alive would have been acknowledged without a quorum. After ``DOWN_S`` the first
node is restarted: writes must resume on every shard once that majority is back (the time
from that restart to writes resuming is printed as the "majority back" fault); then the
second.

    python -m scenarios.kill_majority --rounds 10 --seed 7

Proves: no ack without a quorum; nothing acknowledged is lost when a majority dies at once;
liveness returns with a majority.
"""

from __future__ import annotations

import sys
import time

import trio

from streamd.testing.scenario import ScenarioContext, main

DOWN_S = 3.0
GRACE_S = 0.5  # answers already in flight when the nodes died may still arrive


async def fault_round(ctx: ScenarioContext, round_index: int) -> None:
    first = await ctx.busiest_leader()
    second = ctx.rng.choice([n for n in ctx.cluster.nodes if n != first])
    everything = ctx.shards.ids
    ctx.fault(f"kill -9 {first} and {second}", everything)
    killed_at = time.monotonic()
    await ctx.kill9(first, record=False)
    await ctx.kill9(second, record=False)
    await trio.sleep(DOWN_S)
    quorumless = ctx.acked_between(killed_at + GRACE_S, time.monotonic())
    if quorumless:
        ctx.violation(f"acks while 2 of 3 nodes were down: {quorumless}")
    back = ctx.rng.choice([first, second])
    await ctx.restart(back)
    ctx.fault(f"majority back ({back} restarted)", everything)
    resumed = await ctx.wait_acked_after(ctx.history.faults[-1].at_s, everything, timeout_s=30)
    ctx.note(f"round {round_index + 1}: writes resumed {resumed} s after {back} was back")
    await ctx.restart(first if back == second else second)
    await ctx.wait_leaders(timeout_s=30.0)
    await trio.sleep(1.0)


if __name__ == "__main__":
    sys.exit(main("kill_majority", fault_round, __doc__))
