"""``python -m demo --logdir DIR [--quick]``: trains every seed experiment.

Each run is written under ``DIR/<run>``; at the end the runs' pathology flags
are printed as a table (the diagnosis that the tab and ``tb-gradhealth check``
show), then the time the whole demo took. Then ``tensorboard --logdir DIR``
shows them in the "Gradient Health" tab.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from demo import RUNS, train_one

EXIT_USAGE = 2  # the exit status of a usage or input error, as argparse's


def _jobs() -> list[tuple[str, str]]:
    """Every (experiment module, run name) of the demo, in order."""
    return [(exp, name) for exp, names in RUNS.items() for name in names]


def _summary(
    logdir: str, names: list[str], seconds: dict[str, float]
) -> tuple[str, int]:
    """The flag table of the runs, and how many runs lack data."""
    from tb_gradplugin import diagnosis, reader

    provider = reader.provider_for_logdir(logdir)
    found = set(reader.list_runs(provider))
    rows = []
    missing = 0
    for name in names:
        if name not in found:
            rows.append((name, "-", "-", "no gradient-health data"))
            missing += 1
            continue
        report = diagnosis.run_report(reader.read_run(provider, name))
        flags = [
            f"{f['kind']} ({f['severity']}, from step {f['first_step']})"
            for f in report["flags"]
        ]
        took = f"{seconds[name]:.0f}" if name in seconds else "-"
        rows.append((name, str(report["last_step"]), took, "; ".join(flags) or "none"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'run':<{width}}  {'steps':>6}  {'s':>4}  flags", "-" * (width + 50)]
    lines += [f"{r:<{width}}  {n:>6}  {t:>4}  {f}" for r, n, t, f in rows]
    return "\n".join(lines), missing


def main(argv: list[str] | None = None) -> int:
    """Runs the demo.

    Args:
        argv: The command-line arguments. Defaults to ``None``: ``sys.argv``.

    Returns:
        The exit status: 0 on success, 1 when a run failed, 2 for a usage or
        input error.
    """
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description="Train the seed experiments with GradientHealthCallback and "
        "write each as a TensorBoard run under LOGDIR.",
    )
    parser.add_argument("--logdir", required=True, help="where to write the runs")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer epochs, the same experiments (a few minutes on 2 cores)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="runs trained at once in worker processes (default: %(default)s)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the demo's own run folders under LOGDIR first",
    )
    args = parser.parse_args(argv)
    logdir = os.path.abspath(args.logdir)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if os.path.exists(logdir) and not os.path.isdir(logdir):
        print(f"error: --logdir {args.logdir} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    if importlib.util.find_spec("sklearn") is None:
        print(
            "error: the demo trains on scikit-learn's digits; install it with "
            "pip install -e '.[demo]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    jobs = _jobs()
    taken = [n for _, n in jobs if os.path.exists(os.path.join(logdir, n))]
    if taken and not args.overwrite:
        print(
            f"error: {logdir} already holds the demo runs {', '.join(taken)}; "
            "pass --overwrite to replace them or choose another --logdir",
            file=sys.stderr,
        )
        return EXIT_USAGE
    for name in taken:
        shutil.rmtree(os.path.join(logdir, name))
    try:
        os.makedirs(logdir, exist_ok=True)
    except OSError as err:
        print(f"error: cannot create --logdir {args.logdir}: {err}", file=sys.stderr)
        return EXIT_USAGE

    # Workers inherit it: TensorFlow's C++ start-up chatter is noise here.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    mode = "quick" if args.quick else "full"
    print(
        f"Training {len(jobs)} runs ({mode}) into {logdir} with {args.jobs} "
        "process(es)",
        flush=True,
    )
    start = time.perf_counter()
    failed = []
    seconds: dict[str, float] = {}
    if args.jobs == 1:
        for exp, name in jobs:
            try:
                seconds[name] = train_one(exp, name, logdir, args.quick)
            except Exception as err:  # report every failed run, then exit 1
                failed.append(name)
                print(f"run {name} failed: {err!r}", file=sys.stderr)
    else:
        # Processes, not threads: tracing a train step holds the GIL.
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            futures = {
                name: pool.submit(train_one, exp, name, logdir, args.quick)
                for exp, name in jobs
            }
            for name, future in futures.items():
                try:
                    seconds[name] = future.result()
                except Exception as err:  # report every failed run, then exit 1
                    failed.append(name)
                    print(f"run {name} failed: {err!r}", file=sys.stderr)
    took = time.perf_counter() - start
    table, missing = _summary(logdir, [n for _, n in jobs], seconds)
    print("\nGradient health flags per run:\n" + table)
    print(f"\nDemo ({mode}) took {took:.0f} s. View it with:")
    print(f"  tensorboard --logdir {logdir}")
    return 1 if failed or missing else 0


if __name__ == "__main__":
    sys.exit(main())
