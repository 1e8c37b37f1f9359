"""Scenario 12 (issue 13): rolling restart of every node under load.

Each round restarts the nodes one after the other, as an upgrade would: SIGTERM (a clean
shutdown: it revokes its lease, so the controller moves its leaders at once), start it again
on the same data dir and ports, wait until every shard has a leader and its whole replica set
again (the restarted node caught up), then the next node.

    python -m scenarios.rolling_restart --rounds 5 --seed 7

Proves: a planned restart of every node loses nothing and costs each shard one short failover;
prints the time from each stop to writes resuming on the shards the node led.
"""

from __future__ import annotations

import sys

import trio

from streamd.testing.scenario import ScenarioContext, main


async def fault_round(ctx: ScenarioContext, round_index: int) -> None:
    for node_id in ctx.cluster.nodes:
        led = await ctx.led_by(node_id)
        ctx.fault(f"restart {node_id} (SIGTERM)", led)
        await ctx.terminate(node_id)
        await ctx.restart(node_id)
        await ctx.wait_leaders(timeout_s=30.0)
        await trio.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main("rolling_restart", fault_round, __doc__))
