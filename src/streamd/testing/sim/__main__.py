"""``python -m streamd.testing.sim``: run seeds of the replication simulator.

    python -m streamd.testing.sim --seeds 10000 --replicas 5     # many seeds, a summary
    python -m streamd.testing.sim --seed 1234 --replicas 3 -v     # replay one, whole trace
    python -m streamd.testing.sim --seeds 2000 --mutant skip_fencing --hunt
    python -m streamd.testing.sim --seeds 2000 --reconfig      # replica-set changes too

Exit status 1 if any seed failed; each failure prints its seed, the command that replays it
and the tail of its trace.
"""

from __future__ import annotations

import argparse
import sys
import time

from . import SimConfig, SimResult, run_seed
from .mutants import MUTANTS
from .world import TRACE_ALL, TRACE_TAIL


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m streamd.testing.sim", description=__doc__)
    p.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    p.add_argument("--start", type=int, default=0, help="the first seed")
    p.add_argument("--seed", type=int, default=None, help="run this one seed")
    p.add_argument("--replicas", type=int, choices=(3, 5), default=3)
    p.add_argument("--hunt", action="store_true", help="leader churn, one batch per message")
    p.add_argument(
        "--reconfig", action="store_true", help="replica-set changes: replace a lost member, move"
    )
    p.add_argument("--mutant", choices=sorted(MUTANTS), default=None)
    p.add_argument("-v", "--verbose", action="store_true", help="print the whole trace")
    return p.parse_args(argv)


def report_failure(result: SimResult) -> None:
    print(f"FAILED seed {result.seed}: {result.failure}")
    print(f"  replay: {result.replay_command()}")
    print(f"  faults: {'; '.join(result.faults)}")
    for line in result.trace_tail[-TRACE_TAIL:]:
        print(f"  | {line}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    config = SimConfig(
        replicas=args.replicas,
        hunt=args.hunt,
        reconfig=args.reconfig,
        factory=MUTANTS[args.mutant] if args.mutant else None,
        trace_tail=TRACE_ALL if args.verbose else TRACE_TAIL,
    )
    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.seeds)
    started = time.perf_counter()
    failed = 0
    faults_max = 0
    sim_ms_max = 0
    for seed in seeds:
        result = run_seed(seed, config)
        faults_max = max(faults_max, len(result.faults))
        sim_ms_max = max(sim_ms_max, result.end_ms)
        if args.verbose:
            print("\n".join(result.trace_tail))
            print(f"trace hash {result.trace_hash}")
        if not result.ok:
            failed += 1
            report_failure(result)
    took = time.perf_counter() - started
    count = len(seeds)
    print(
        f"{count} seeds, {failed} failed, {took:.1f} s ({count / took:.0f} seeds/s); "
        f"longest fault schedule {faults_max} faults, longest run {sim_ms_max} simulated ms"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
