"""Scenario 6 (issue 13): double failover, the new leader dies soon after taking over.

Each round kills (SIGKILL) the node A leading the most shards under load: its high watermark
has usually not reached the followers yet (it travels with the next append). As soon as
another node B leads one of A's shards, and after 0 to ``SOON_S`` more, B is killed too.
Only one node is left, no majority: nothing commits. A is restarted (with the third node a
majority again, one of them must take over: B may have held batches A never saw), writes
resume on every shard, then B is restarted.

    python -m scenarios.double_failover --rounds 10 --seed 7

Proves: leader completeness across two quick epochs (nothing acknowledged by A or by B is
lost, no offset names two records), the restarted nodes truncate their divergent uncommitted
tails (the replicas end byte-identical); prints the time from each kill and from A's return
to writes resuming.
"""

from __future__ import annotations

import sys
import time

import trio

from streamd.testing.scenario import ScenarioContext, main

SOON_S = 0.5
TAKEOVER_TIMEOUT_S = 20.0


async def fault_round(ctx: ScenarioContext, round_index: int) -> None:
    first = await ctx.busiest_leader()
    affected = await ctx.led_by(first)
    await ctx.kill9(first, affected)
    second = await _new_leader(ctx, affected, first)
    if second is None:
        ctx.violation(f"no new leader of {affected} within {TAKEOVER_TIMEOUT_S} s of {first}")
        await ctx.restart(first)
        return
    await trio.sleep(ctx.rng.uniform(0.0, SOON_S))
    await ctx.kill9(second, ctx.shards.ids)
    await trio.sleep(1.0)
    await ctx.restart(first)
    ctx.fault(f"majority back ({first} restarted)", ctx.shards.ids)
    resumed = await ctx.wait_acked_after(ctx.history.faults[-1].at_s, ctx.shards.ids)
    ctx.note(
        f"round {round_index + 1}: {first} then {second} killed; writes resumed {resumed} s "
        f"after {first} was back"
    )
    await ctx.restart(second)
    await ctx.wait_leaders(timeout_s=30.0)
    await trio.sleep(1.0)


async def _new_leader(ctx: ScenarioContext, shards: list[str], dead: str) -> str | None:
    deadline = time.monotonic() + TAKEOVER_TIMEOUT_S
    while time.monotonic() < deadline:
        leaders = await ctx.leaders()
        for shard_id in shards:
            leader = leaders.get(shard_id)
            if leader is not None and leader != dead:
                return leader
        await trio.sleep(0.02)
    return None


if __name__ == "__main__":
    sys.exit(main("double_failover", fault_round, __doc__))
