"""Scenario 2 (issue 13): SIGSTOP a leader longer than its lease while its clients keep writing.

Each round picks the node leading the most shards and starts a *stale* workload bootstrapped
from that node alone (a Producer and plain put_records that know no other node), then
SIGSTOPs it for ``PAUSE_S`` (longer than the 2 s membership lease and the core's 600 ms
leader lease): the controller names other leaders at epoch + 1 and the main workload moves to
them, while the stale clients' requests queue in the paused node's sockets. Then SIGCONT: the
deposed leader wakes up with those requests in hand. It must not acknowledge any of them as
the old leader; whatever it acknowledges (after forwarding, or once it learns the new epoch)
must be in the final log at the acknowledged sequence number.

A node that finds its membership lease lapsed stops itself (``cluster.node_lost``); the round
then restarts it, as a supervisor would.

    python -m scenarios.pause_leader --rounds 10 --seed 7

Proves: a deposed leader never commits (invariant 4); the checker's ``lost``, ``moved`` and
``offset_conflict`` would name any record it acknowledged on its own. Prints the acks the
stale clients got after SIGCONT, and the time from the pause to writes resuming elsewhere.
"""

from __future__ import annotations

import sys
import time

import trio

from streamd.testing.scenario import ScenarioContext, main
from streamd.testing.workload import LoadOptions

PAUSE_S = 4.0
AFTER_S = 2.0  # the stale clients keep writing this long after SIGCONT


async def fault_round(ctx: ScenarioContext, round_index: int) -> None:
    victim = await ctx.busiest_leader()
    affected = await ctx.led_by(victim)
    stale = ctx.side_load(
        ctx.cluster.endpoint(victim),
        f"s{round_index}-",
        LoadOptions(producer_rate=500, plain_rate=100, records_max=20_000, retry_s_max=10.0),
    )
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stale.run, stop)
        await trio.sleep(0.5)
        ctx.fault(f"SIGSTOP {victim} for {PAUSE_S:.0f} s", affected)
        await ctx.sigstop(victim)
        await trio.sleep(PAUSE_S)
        await ctx.sigcont(victim)
        woke = time.monotonic()
        await trio.sleep(AFTER_S)
        stop.set()
    after = ctx.acked_between(woke, time.monotonic())
    prefix = f"s{round_index}-"
    stale_after = sum(
        1
        for rid in ctx.history.acked
        if rid[0].startswith(prefix) and ctx.history.acked_at.get(rid, 0.0) >= woke
    )
    ctx.note(
        f"round {round_index + 1}: {victim} paused {PAUSE_S} s; its stale clients got "
        f"{stale_after} acks after SIGCONT (each checked against the final log); acks on all "
        f"shards after SIGCONT: {sum(after.values())}"
    )
    if not ctx.running(victim):  # it stops itself once it finds its lease lapsed
        ctx.note(f"round {round_index + 1}: {victim} stopped itself (membership lost)")
        await ctx.restart(victim)
    await ctx.wait_leaders(timeout_s=30.0)


if __name__ == "__main__":
    sys.exit(main("pause_leader", fault_round, __doc__))
