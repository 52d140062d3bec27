"""Detection quality of the flag rules on the labelled scenario suite.

Trains every scenario of ``tests/scenarios`` for several seeds and prints, per
flag kind, precision, recall and the median detection delay (steps from the
pathology's onset to the flag's first step), and the healthy runs' false
alarms, and counts every warning or error flag raised on a healthy run (the
target is 0). A kind in a scenario's ``allowed`` set is neither a hit nor a false
alarm there.

Usage: ``python benchmarks/detection.py [--seeds 3]``.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time

sys.path.insert(0, ".")
from tests.scenarios import SCENARIOS, run_scenario  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    tp, fp, fn = collections.Counter(), collections.Counter(), collections.Counter()
    delays = collections.defaultdict(list)
    healthy_alarms, healthy_runs = 0, 0
    false_on_healthy: collections.Counter = collections.Counter()
    t0 = time.time()
    for seed in range(args.seeds):
        for sc in SCENARIOS:
            with tempfile.TemporaryDirectory() as logdir:
                report = run_scenario(sc, logdir, seed)
            serious = set(report["serious"])
            first = {}
            for f in report["flags"]:
                if f["kind"] in serious:
                    first[f["kind"]] = min(
                        first.get(f["kind"], 1 << 60), f["first_step"]
                    )
            print(f"seed {seed} {sc.name:20s} flagged {sorted(serious)}", flush=True)
            if sc.healthy:
                healthy_runs += 1
                healthy_alarms += bool(serious)
                for f in report["flags"]:
                    if f["severity"] in ("warning", "error"):
                        false_on_healthy[f"{f['kind']} ({f['severity']})"] += 1
            for kind in sc.expected:
                if kind in serious:
                    tp[kind] += 1
                    delays[kind].append(max(0, first[kind] - sc.onset))
                else:
                    fn[kind] += 1
            for kind in serious - sc.expected - sc.allowed:
                fp[kind] += 1
    kinds = sorted(set(tp) | set(fp) | set(fn))
    print(
        f"\n{len(SCENARIOS)} scenarios x {args.seeds} seeds, {time.time() - t0:.0f} s"
    )
    print(f"{'kind':<22}{'precision':>10}{'recall':>8}{'delay':>8}  (tp/fp/fn)")
    for k in kinds:
        p = tp[k] / (tp[k] + fp[k]) if tp[k] + fp[k] else float("nan")
        r = tp[k] / (tp[k] + fn[k]) if tp[k] + fn[k] else float("nan")
        d = statistics.median(delays[k]) if delays[k] else float("nan")
        print(f"{k:<22}{p:>10.2f}{r:>8.2f}{d:>8.0f}  ({tp[k]}/{fp[k]}/{fn[k]})")
    print(f"healthy runs with a warning or error: {healthy_alarms}/{healthy_runs}")
    total = sum(false_on_healthy.values())
    detail = ", ".join(f"{k}: {n}" for k, n in sorted(false_on_healthy.items()))
    print(f"false warnings and errors on healthy runs: {total} (target 0)")
    if detail:
        print(f"  {detail}")


if __name__ == "__main__":
    main()
