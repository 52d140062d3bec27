"""Cost of one live-diagnosis check as a run grows: read the new records, run the rules.

Writes a run of ``--chunks`` x ``--chunk`` logged steps (default 10 x 10,000) of
``--vars`` variables (default 100), with the per-step series, the window statistics
and the block summaries the callback writes (``benchmarks/latency.py``'s writer),
one chunk at a time; after each chunk it times one check of
``tb_gradplugin.live.LiveDiagnosis`` (what the callback's writer thread runs:
read the records appended since the last check, run the rules) and the rules alone
again, and prints the records read and the process's resident memory growth since
the diagnosis was made. A check should cost in proportion to the new
records plus a small term of the run's length (the rules over the per-step
scalars; the per-variable series are decided from their block summaries).

Run: ``python benchmarks/live_check.py [--chunks N] [--chunk STEPS] [--vars K]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import latency  # noqa: E402
from tb_gradplugin import diagnosis as rules  # noqa: E402
from tb_gradplugin import live  # noqa: E402


def _rss_mb() -> float:
    """The process's resident memory in MB (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    """Writes the run chunk by chunk and prints each check's cost."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=10_000)
    parser.add_argument("--vars", type=int, default=100)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--block", type=int, default=100)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as root:
        run_dir = os.path.join(root, latency.RUN)
        diagnosis = None
        print("steps    new records  check s  rules s  flags  RSS +MB")
        for chunk in range(args.chunks):
            first = chunk * args.chunk + 1
            latency.write_run(
                run_dir,
                first,
                first + args.chunk - 1,
                args.vars,
                args.window,
                args.block,
            )
            if diagnosis is None:
                base = _rss_mb()
                diagnosis = live.LiveDiagnosis(run_dir)
            before = diagnosis.series.records_read
            t0 = time.perf_counter()
            flags = diagnosis.new_errors()
            check = time.perf_counter() - t0
            t0 = time.perf_counter()
            data, deferred = diagnosis.series.run_data()
            rules.diagnose(data, deferred=deferred)
            again = time.perf_counter() - t0
            print(
                f"{first + args.chunk - 1:>7}  "
                f"{diagnosis.series.records_read - before:>11}  {check:7.3f}  "
                f"{again:7.3f}  {len(flags):>5}  {_rss_mb() - base:7.0f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
