"""Scenario 9 (issue 13): a node lost for good; re-replication restores three copies.

Four nodes, replication factor 3: one node's worth of spare room. Each round kills -9 the
node holding the most replicas and wipes its data directory (the machine and its disk are
gone). Writes go on meanwhile (every shard keeps a majority). After the controller's grace
(``serve --replica-grace-s``, 3 s here) it replaces each lost replica by one on a node that
held none: the new replica catches up from the leader's log and joins, then votes. The round
waits until every shard names three live voters and prints the time from the kill to that
("re-replicated"), then brings the node back empty under its old name, the next round's spare.
The final check compares every replica's committed prefix byte for byte (the range table), so
the copies made by re-replication are the leaders' logs exactly.

    python -m scenarios.node_lost --rounds 3 --seed 7

Proves: a lost node costs no acknowledged record and no availability; the replication factor
comes back by itself; a new replica's log is byte-identical to its leader's.
"""

from __future__ import annotations

import shutil
import sys
import time

import trio

from streamd.testing.scenario import ScenarioContext, ScenarioOptions, main

GRACE_S = 3.0
RESTORE_TIMEOUT_S = 90.0
DEFAULTS = ScenarioOptions(nodes=4, serve_args=("--replica-grace-s", str(GRACE_S)))


async def fault_round(ctx: ScenarioContext, round_index: int) -> None:
    docs = await ctx.assignments()
    held = {n: sum(n in d.replicas for d in docs.values()) for n in ctx.cluster.nodes}
    most = max(held.values())
    lost = ctx.rng.choice(sorted(n for n, count in held.items() if count == most))
    affected = sorted(s for s, d in docs.items() if lost in d.replicas)
    ctx.fault(f"{lost} lost for good (kill -9, data wiped)", affected)
    killed_at = time.monotonic()
    await ctx.kill9(lost, record=False)
    data_dir = ctx.cluster.node(lost).data_dir
    await trio.to_thread.run_sync(lambda: shutil.rmtree(data_dir, ignore_errors=True))
    live = set(ctx.cluster.nodes) - {lost}
    with trio.fail_after(RESTORE_TIMEOUT_S):
        while True:
            docs = await ctx.assignments()
            if all(
                not d.joining and len(d.replicas) == 3 and set(d.replicas) <= live
                for d in docs.values()
            ):
                break
            await trio.sleep(0.2)
    restored_s = time.monotonic() - killed_at
    ctx.figure("re-replicated", restored_s)
    ctx.note(
        f"round {round_index + 1}: {lost}'s {len(affected)} replicas replaced and voting "
        f"{restored_s:.1f} s after the kill (grace {GRACE_S:g} s)"
    )
    if restored_s < GRACE_S:
        ctx.violation(f"{lost}'s replicas replaced {restored_s:.1f} s after it was lost")
    data_dir.mkdir(parents=True, exist_ok=True)
    await ctx.restart(lost)  # a new, empty machine under the old name: the next spare
    await ctx.wait_leaders(timeout_s=30.0)


if __name__ == "__main__":
    sys.exit(main("node_lost", fault_round, __doc__, defaults=DEFAULTS))
