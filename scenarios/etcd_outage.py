"""Scenario 10 (issue 13): etcd killed for ``OUTAGE_S`` seconds under load.

Each round kills etcd with SIGKILL, leaves it down for ``OUTAGE_S`` (10 s by default), and
restarts it on the same data dir and ports. etcd is not on the write path: existing leaders
must keep taking writes throughout (checked: every shard acknowledges writes sent in each
second of the outage), and no failover may happen without etcd (the leaders after the outage
are the leaders before it, unless a node died), and no node may stop itself for want of etcd
(a violation names those that did; they are restarted so that the check can go on).

    python -m scenarios.etcd_outage --rounds 3 --seed 7

Proves: the data path does not depend on etcd; nothing is lost across the outage.
"""

from __future__ import annotations

import sys
import time

import trio

from streamd.testing.scenario import ScenarioContext, main

OUTAGE_S = 10.0
WINDOW_S = 1.0


async def fault_round(ctx: ScenarioContext, round_index: int) -> None:
    before = await ctx.leaders()
    ctx.fault(f"etcd killed for {OUTAGE_S:.0f} s", ctx.shards.ids)
    start = time.monotonic()
    await trio.to_thread.run_sync(ctx.cluster.etcd.kill9)
    await trio.sleep(OUTAGE_S)
    end = time.monotonic()
    await trio.to_thread.run_sync(ctx.cluster.etcd.restart)
    ctx.say("etcd restarted")
    stopped = sorted(n for n in ctx.cluster.nodes if not ctx.running(n))
    if stopped:
        ctx.violation(f"nodes that stopped themselves during the etcd outage: {stopped}")
        await ctx.heal()
    silent: list[str] = []
    at = start
    while at + WINDOW_S <= end:
        acked = ctx.acked_between(at, at + WINDOW_S)
        silent += [f"{s[-3:]}@+{at - start:.0f}s" for s in ctx.shards.ids if not acked.get(s)]
        at += WINDOW_S
    outage_acks = sum(ctx.acked_between(start, end).values())
    ctx.note(f"round {round_index + 1}: {outage_acks} acks during the {OUTAGE_S:.0f} s outage")
    if silent:
        ctx.violation(
            f"shards without an ack in a {WINDOW_S:.0f} s window of the etcd outage: {silent}"
        )
    await ctx.wait_leaders(timeout_s=30.0)
    after = await ctx.leaders()
    if after != before:
        ctx.note(f"leaders moved across the outage: {before} -> {after}")


if __name__ == "__main__":
    sys.exit(main("etcd_outage", fault_round, __doc__))
