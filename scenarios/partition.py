"""Scenario 3 (issue 13): partitions through TCP proxies the scenario controls.

Every node advertises a proxy as its native address (peers and clients reach it only through
it) and reaches etcd through a proxy of its own (``streamd.testing.netproxy``). The rounds
rotate over three partitions, each held for ``PARTITION_S`` and then healed:

1. the busiest leader cut from its followers (and clients) but not from etcd: its lease holds,
   so no failover; its quorum lease lapses, so it stops acknowledging; its shards wait for the
   heal (printed: whether writes resumed during the cut);
2. the busiest leader cut from etcd but not from its followers: its membership lease lapses,
   it stops serving, the controller names another replica; writes resume on its shards during
   the cut (a violation otherwise);
3. the node leading fewest shards cut off: the shards it only follows keep acknowledging
   (a violation otherwise), its own shards wait for the heal.

After each heal every shard must take writes again. The proxies cut only what reaches a node:
a cut node's own connections out to its peers' proxies stay up (loopback has one source
address, so a proxy cannot tell who dials it); its peers' answers and requests to it fail.

    python -m scenarios.partition --rounds 3 --seed 7
"""

from __future__ import annotations

import sys
import time

import trio

from streamd.testing.scenario import ScenarioContext, ScenarioOptions, main

PARTITION_S = 6.0
RESUME_S_MAX = 20.0
DEFAULTS = ScenarioOptions(proxied=True)


async def fault_round(ctx: ScenarioContext, round_index: int) -> None:
    assert ctx.network is not None, "partition needs ScenarioOptions(proxied=True)"
    kind = round_index % 3
    if kind == 2:
        leaders = await ctx.leaders()
        counts = {n: sum(1 for v in leaders.values() if v == n) for n in ctx.cluster.nodes}
        victim = min(sorted(counts), key=lambda n: counts[n])
    else:
        victim = await ctx.busiest_leader()
    led = await ctx.led_by(victim)
    others = [s for s in ctx.shards.ids if s not in led]
    what = ("cut from its followers, not etcd", "cut from etcd, not its followers", "cut off")[kind]
    ctx.fault(f"{victim} {what}", led)
    cut_at = time.monotonic()
    proxy = ctx.network.etcd[victim] if kind == 1 else ctx.network.native[victim]
    proxy.cut()
    ctx.say(f"{victim} {what}; it leads {led}")
    if kind == 1:
        moved = await _moved_away(ctx, victim, led, PARTITION_S + RESUME_S_MAX)
        if moved is None:
            ctx.violation(f"{victim} lost etcd but its shards {led} never failed over")
        else:
            ctx.figure("leader cut from etcd: its shards led elsewhere after", moved - cut_at)
            resumed = await ctx.wait_acked_after(moved, led, timeout_s=RESUME_S_MAX)
            if resumed is None:
                ctx.violation(f"no writes on {victim}'s former shards {led} after they moved")
            else:
                ctx.figure(
                    "leader cut from etcd: cut to writes on the new leaders",
                    moved - cut_at + resumed,
                )
    elif others:
        resumed = await ctx.wait_acked_after(cut_at, others, timeout_s=RESUME_S_MAX)
        if resumed is None:
            ctx.violation(f"shards {others} stopped while {victim}, not their leader, was cut")
    await trio.sleep(max(0.0, PARTITION_S - (time.monotonic() - cut_at)))
    if kind != 1:
        during = await ctx.wait_acked_after(cut_at + 2.5, led, timeout_s=0.1)
        ctx.say(f"writes on {victim}'s shards during the cut: {'yes' if during else 'no'}")
    ctx.network.heal()
    healed_at = time.monotonic()
    resumed = await ctx.wait_acked_after(healed_at, ctx.shards.ids, timeout_s=RESUME_S_MAX)
    if resumed is None:
        ctx.violation(f"writes did not resume on every shard within {RESUME_S_MAX} s of the heal")
    else:
        ctx.figure(f"heal to writes on every shard ({what})", resumed)
    await trio.sleep(1.5)  # a node whose lease is gone learns it on reconnecting, and exits
    await ctx.heal()  # then it is restarted (a supervisor's job in production)


async def _moved_away(
    ctx: ScenarioContext, victim: str, shards: list[str], timeout_s: float
) -> float | None:
    """When every one of ``shards`` names a leader other than ``victim`` in etcd (monotonic),
    or None. (Not describe_stream: a node cut from etcd still describes its own stale map.)"""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        docs = await ctx.assignments()
        if all(s in docs and docs[s].leader not in (None, victim) for s in shards):
            return time.monotonic()
        await trio.sleep(0.05)
    return None


if __name__ == "__main__":
    sys.exit(main("partition", fault_round, __doc__, defaults=DEFAULTS))
