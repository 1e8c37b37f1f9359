"""Scenario 8 (issue 13): a full disk on one node, which follows some shards and leads others.

Every node's data dir is a tmpfs of ``DISK_BYTES`` (mounting needs root). Each round picks a
node, fills its disk to the last byte under load and keeps it full for ``FULL_S``, then frees it.
While it is full, the shards it only follows must go on acknowledging writes (the other two
replicas are a majority); the shards it leads may refuse writes (STORAGE_FULL) but must lose
nothing. Once the space is back, writes must resume on every shard, and the node's replicas
catch up (the final check compares every replica's committed prefix byte for byte).

    sudo python -m scenarios.full_disk --rounds 3 --seed 7

Proves: a full disk costs availability only where the full node leads, never data; a follower
out of space does not hold back the quorum; appends cut by ENOSPC leave no torn batch.
"""

from __future__ import annotations

import sys
import time

import trio

from streamd.testing.scenario import ScenarioContext, ScenarioOptions, main

DISK_BYTES = 256 * 1024 * 1024
FULL_S = 4.0
RESUME_S_MAX = 20.0
DEFAULTS = ScenarioOptions(node_disk_bytes=DISK_BYTES)


async def fault_round(ctx: ScenarioContext, round_index: int) -> None:
    nodes = sorted(ctx.cluster.nodes)
    victim = nodes[round_index % len(nodes)]
    led = await ctx.led_by(victim)
    followed = [s for s in ctx.shards.ids if s not in led]
    ctx.fault(f"disk full on {victim}", led)
    taken = await ctx.fill_disk(victim)
    full_at = time.monotonic()
    ctx.say(f"{victim}'s disk full ({taken} filler bytes); it leads {led}, follows {followed}")
    if followed:
        resumed = await ctx.wait_acked_after(full_at, followed, timeout_s=RESUME_S_MAX)
        if resumed is None:
            ctx.violation(
                f"shards {followed} stopped acknowledging while {victim}, a follower, was full"
            )
        else:
            ctx.figure("disk full to a write acknowledged on each followed shard", resumed)
    await trio.sleep(FULL_S)
    await ctx.free_disk(victim)
    freed = time.monotonic()
    ctx.say(f"{victim}'s disk freed")
    resumed = await ctx.wait_acked_after(freed, ctx.shards.ids, timeout_s=RESUME_S_MAX)
    if resumed is None:
        ctx.violation(
            f"writes did not resume on every shard within {RESUME_S_MAX} s of freeing {victim}"
        )
    else:
        ctx.figure("disk freed to writes on every shard", resumed)
    stopped = [n for n in nodes if not ctx.running(n)]
    if stopped:
        ctx.violation(f"nodes that stopped on a full disk: {stopped}")
        await ctx.heal()


if __name__ == "__main__":
    sys.exit(
        main(
            "full_disk", fault_round, __doc__, defaults=ScenarioOptions(node_disk_bytes=DISK_BYTES)
        )
    )
