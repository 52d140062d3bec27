"""Latency of the Gradient Health routes beside TensorBoard's own scalars route.

Writes a log directory of one run with ``--steps`` logged steps (default 100,000):
the per-step ``gradient_health/step/*`` scalars, ``layer/grad_norm`` and
``layer/update_ratio`` tensors over ``--vars`` variables (default 100), and a plain
TensorBoard scalar ``loss`` with the same number of points. It starts a real
``tensorboard`` process with ``--samples_per_plugin=scalars=0`` (all) (so TensorBoard's
scalars route reads from the same number of stored points as ours) and prints the
median latency of each route over ``--repeats`` requests, and the first (cold)
request, as a ratio to the scalars route.

Run: ``PYTHONPATH=. python benchmarks/latency.py [--steps N] [--vars K]
[--load_fast true|false] [--logdir DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tensorboard.compat.proto import summary_pb2  # noqa: E402

from tb_gradplugin import metadata  # noqa: E402
from tests import gh_logdirs  # noqa: E402

RUN = "big"


def write_logdir(root: str, steps: int, n_vars: int) -> None:
    """Writes the benchmark run (a few minutes for 100,000 steps)."""
    rng = np.random.default_rng(0)
    w = gh_logdirs.Writer(os.path.join(root, RUN))
    variables = [f"layer_{i}/kernel" for i in range(n_vars)]
    content = {"variables": variables}
    scalars_meta = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
        data_class=summary_pb2.DATA_CLASS_SCALAR,
    )
    scale = np.logspace(0, -3, n_vars)
    t0 = time.time()
    for step in range(1, steps + 1):
        t = step / steps
        loss = 2.3 * np.exp(-3 * t) + 0.05 * rng.random()
        grad = 5 * np.exp(-2 * t) + 0.1 * rng.random()
        vals = {
            metadata.step_tag("loss"): (loss, None, False),
            metadata.step_tag("grad_norm"): (grad, None, False),
            metadata.step_tag("param_norm"): (10 + t, None, False),
            metadata.step_tag("update_norm"): (1e-3 * grad, None, False),
            metadata.step_tag("update_ratio"): (1e-4 * grad, None, False),
            metadata.step_tag("learning_rate"): (1e-3, None, False),
            metadata.step_tag("nonfinite_grads"): (0.0, None, False),
            metadata.step_tag("nonfinite_loss"): (0.0, None, False),
            metadata.layer_tag("grad_norm"): (grad * scale, content, True),
            metadata.layer_tag("update_ratio"): (1e-3 * scale, content, True),
        }
        w.write(step, vals)
        w.write_plain_scalar(step, "loss", loss, scalars_meta)
        if step % 10_000 == 0:
            print(f"  wrote {step} steps in {time.time() - t0:.0f} s", flush=True)
    w.close()


def timed_get(url: str) -> float:
    """Returns the seconds one GET takes, body read to the end."""
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as resp:
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{url}: {resp.status}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints a table of latencies and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--vars", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--load_fast", choices=["true", "false"], default="true")
    parser.add_argument("--logdir", help="reuse or create this log directory")
    args = parser.parse_args(argv)

    root = args.logdir or tempfile.mkdtemp(prefix="gh_latency_")
    if not os.path.isdir(os.path.join(root, RUN)):
        print(f"writing {args.steps} steps x {args.vars} variables to {root}")
        write_logdir(root, args.steps, args.vars)
    port = gh_logdirs.free_port()
    base = f"http://127.0.0.1:{port}"
    proc = gh_logdirs.start_tensorboard(
        root, port, f"--load_fast={args.load_fast}", "--samples_per_plugin=scalars=0"
    )
    prefix = f"{base}/data/plugin/gradient_health/"
    routes = {
        "scalars (TensorBoard)": f"{base}/data/plugin/scalars/scalars"
        f"?run={RUN}&tag=loss",
        "series step/loss": f"{prefix}series?run={RUN}&key=step/loss",
        "overview": f"{prefix}overview?run={RUN}",
        "layers (heatmap)": f"{prefix}layers?run={RUN}&stat=grad_norm",
        "flags": f"{prefix}flags?run={RUN}",
    }
    try:
        t0 = time.time()
        check = f"{prefix}tags?run={RUN}"
        while True:
            try:
                with urllib.request.urlopen(check, timeout=600) as resp:
                    tags = json.loads(resp.read())
                ends = [
                    tags["scalars"]["step/loss"]["max_step"],
                    tags["tensors"]["layer/grad_norm"]["max_step"],
                ]
                if min(ends) >= args.steps:
                    break
            except (OSError, KeyError):
                pass
            if proc.poll() is not None or time.time() - t0 > 1800:
                print("tensorboard did not load the logdir", file=sys.stderr)
                return 1
            time.sleep(2)
        print(f"loaded in {time.time() - t0:.0f} s (load_fast={args.load_fast})")
        results = {}
        for name, url in routes.items():
            cold = timed_get(url)
            warm = [timed_get(url) for _ in range(args.repeats)]
            results[name] = (cold, statistics.median(warm))
        ref_cold, ref_warm = results["scalars (TensorBoard)"]
        print(f"\n{args.steps} steps x {args.vars} variables, median of {args.repeats}")
        print(f"{'route':<24}{'first ms':>10}{'median ms':>11}{'ratio':>8}")
        for name, (cold, warm) in results.items():
            print(
                f"{name:<24}{cold * 1e3:>10.1f}{warm * 1e3:>11.1f}"
                f"{warm / ref_warm:>8.2f}"
            )
        print(
            f"(ratio = median / median of the scalars route; first of scalars: "
            f"{ref_cold * 1e3:.1f} ms)"
        )
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
