"""Scenario 7 (issue 13): a torn tail and a flipped byte in an older batch on one replica.

Each round stops (SIGTERM) a node that leads nothing if there is one (else the one leading
least), flips one bit in the middle of an older batch of each of its replica logs and cuts a
few hundred bytes off the active segment's tail, then restarts it. Recovery finds the torn tail
(cut to the last whole batch) and the damaged batch (the replica persists ``repair_to``,
drops the damage and what follows, and refetches from its leader); while damaged it must not
lead. To give it the chance, the current leader of the shards is then killed (-9): a fenced
majority must come from the two whole replicas' logs. The node killed is restarted.

    python -m scenarios.damaged_replica --rounds 5 --seed 7

Proves: damage is never served and never elected (nothing acknowledged is lost, nothing read
is retracted), and the damaged replica ends whole and byte-identical to the others (the
offline check would report a batch still failing its CRC as ``damaged``).
"""

from __future__ import annotations

import sys

import trio

from streamd.testing.replica_check import cut_tail
from streamd.testing.scenario import ScenarioContext, main

TAIL_CUT_BYTES = 300


async def fault_round(ctx: ScenarioContext, round_index: int) -> None:
    leaders = await ctx.leaders()
    counts = {n: sum(1 for v in leaders.values() if v == n) for n in ctx.cluster.nodes}
    victim = min(counts, key=lambda n: (counts[n], ctx.rng.random()))
    ctx.fault(f"damage {victim}'s replicas (SIGTERM, bit flip, torn tail)", [])
    await ctx.terminate(victim)
    flipped = 0
    for directory in ctx.replica_dirs(victim).values():
        segments = sorted(directory.glob("*.log"))
        if not segments:
            continue
        segment = segments[0]
        data = bytearray(segment.read_bytes())
        if len(data) > 4096:
            data[len(data) // 3] ^= 0x20  # an older batch, well before the tail
            segment.write_bytes(bytes(data))
            flipped += 1
        cut_tail(directory, 0, TAIL_CUT_BYTES)
    ctx.note(f"round {round_index + 1}: {victim}: {flipped} replica logs with a flipped bit")
    await ctx.restart(victim)
    await trio.sleep(0.5)
    leader = await ctx.busiest_leader(among=[n for n in ctx.cluster.nodes if n != victim])
    await ctx.kill9(leader)
    struck = ctx.history.faults[-1]
    resumed = await ctx.wait_acked_after(struck.at_s, struck.shards, timeout_s=30.0)
    ctx.note(f"round {round_index + 1}: leader {leader} killed; writes resumed after {resumed} s")
    await ctx.restart(leader)
    await ctx.wait_leaders(timeout_s=30.0)
    await trio.sleep(1.0)


if __name__ == "__main__":
    sys.exit(main("damaged_replica", fault_round, __doc__))
