"""Scenario 5 (issue 13): coordinated power loss, every node killed at once, tails cut.

Each round SIGKILLs every node at (nearly) the same moment, then, with all of them stopped,
cuts each replica log's active segment as a power loss may leave an unsynced tail: a random
number of bytes, up to ``CUT_BYTES_MAX``, but never into the batch holding the last offset any
acknowledgement or reader named (``ctx.keep_end``), since those are durable on a majority
and a replica must keep what it said was durable. Dropping the page cache is not done: it needs
root and takes every process's cache on the machine with it; cutting the tail models the
same loss. Then every node is restarted.

Why not tear one replica anywhere (into synced, acknowledged batches)? A replica that loses
what it acknowledged as durable is outside the replication model (as in Raft): when the other
replica of the commit quorum is the only one holding a batch and the third is lagging, a
fencing majority of the torn and the lagging replica elects a shorter log, and acknowledged
records are gone. The first version of this scenario did that (all_faults, seed 11: 345
acknowledged records lost, all at shard 3 offsets 25781..26125, which node3's torn tail had
held with node2 while node1 was still catching up); it measured the fault, not the system.

    python -m scenarios.power_loss --rounds 10 --seed 7

Proves: after a whole-cluster crash nothing acknowledged or read is lost, replicas whose tail
was torn recover (cut to their last whole batch) and catch up, and every replica ends
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
    cut_total = 0
    for node_id in nodes:
        for shard_id, directory in ctx.replica_dirs(node_id).items():
            keep = ctx.keep_end(shard_id)
            cut_total += cut_tail(directory, keep, ctx.rng.randrange(1, CUT_BYTES_MAX))
    ctx.note(f"round {round_index + 1}: {cut_total} bytes cut off the active segments")
    async with trio.open_nursery() as nursery:
        for node_id in nodes:
            nursery.start_soon(ctx.restart, node_id)
    await ctx.wait_leaders(timeout_s=60.0)
    await trio.sleep(1.0)


if __name__ == "__main__":
    sys.exit(main("power_loss", fault_round, __doc__))
