"""Scenario 5 (issue 13): coordinated power loss, every node killed at once, tails cut.

Each round SIGKILLs every node at (nearly) the same moment, then, with all of them stopped,
cuts each replica log's active segment as a power loss may leave an unsynced tail: on one
replica per shard (a minority) by up to ``CUT_BYTES_MAX`` bytes anywhere (the cut may fall
inside committed, acknowledged batches: the two other replicas still hold them), and on the
others only past the last offset any acknowledgement or reader named (what a majority must
keep: an acknowledged batch is durable on a majority, and committed records that readers saw
too). Dropping the page cache is not done: it needs root and takes every process's cache on
the machine with it; cutting the tail models the same loss. Then every node is restarted.

    python -m scenarios.power_loss --rounds 10 --seed 7

Proves: after a whole-cluster crash nothing acknowledged or read is lost, the replica whose
tail was torn recovers (cut to its last whole batch) and catches up, and every replica ends
byte-identical.
"""

from __future__ import annotations

import signal
import sys

import trio

from streamd.testing.replica_check import cut_tail
from streamd.testing.scenario import ScenarioContext, main

CUT_BYTES_MAX = 64 * 1024


async def fault_round(ctx: ScenarioContext, round_index: int) -> None:
    nodes = list(ctx.cluster.nodes)
    ctx.fault("power loss: every node killed", ctx.shards.ids)
    for node_id in nodes:
        ctx.cluster.node(node_id).stop_signal(signal.SIGKILL)  # all at once, reaped below
    for node_id in nodes:
        await ctx.kill9(node_id, record=False)
    torn = {shard_id: ctx.rng.choice(nodes) for shard_id in ctx.shards.ids}
    cut_total = 0
    for node_id in nodes:
        for shard_id, directory in ctx.replica_dirs(node_id).items():
            keep = 0 if torn[shard_id] == node_id else ctx.keep_end(shard_id)
            cut_total += cut_tail(directory, keep, ctx.rng.randrange(1, CUT_BYTES_MAX))
    ctx.note(f"round {round_index + 1}: {cut_total} bytes cut off the active segments")
    async with trio.open_nursery() as nursery:
        for node_id in nodes:
            nursery.start_soon(ctx.restart, node_id)
    await ctx.wait_leaders(timeout_s=60.0)
    await trio.sleep(1.0)


if __name__ == "__main__":
    sys.exit(main("power_loss", fault_round, __doc__))
