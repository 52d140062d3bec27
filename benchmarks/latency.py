"""Latency of the Gradient Health routes beside TensorBoard's own scalars route.

Writes a log directory of ``--runs`` runs (default 1) of ``--steps`` logged steps
(default 100,000):
the per-step ``gradient_health/step/*`` scalars, ``layer/grad_norm`` and
``layer/update_ratio`` tensors over ``--vars`` variables (default 100), and a plain
TensorBoard scalar ``loss`` with the same number of points. It starts a real
``tensorboard`` process with ``--samples_per_plugin=scalars=0`` (keep all, so that
TensorBoard's scalars route reads from as many stored points as ours) and prints the
first (cold) and median latency of each route over ``--repeats`` requests, and the
median as a ratio to the scalars route. With ``--browser`` it also times view
switches of the tab in headless Chromium (the issue: well under a second with 20
runs of 100 variables x 20,000 steps: ``--runs 20 --steps 20000 --browser``).

Run: ``python benchmarks/latency.py [--steps N] [--vars K] [--runs R]
[--load_fast true|false] [--logdir DIR] [--browser]``.
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


def write_logdir(root: str, steps: int, n_vars: int, runs: int = 1) -> None:
    """Writes the benchmark runs (about a minute per 100,000 steps)."""
    for i in range(runs):
        name = RUN if i == 0 else f"{RUN}_{i:02d}"
        write_run(os.path.join(root, name), steps, n_vars, seed=i)


def write_run(run_dir: str, steps: int, n_vars: int, seed: int = 0) -> None:
    """Writes one benchmark run."""
    rng = np.random.default_rng(seed)
    w = gh_logdirs.Writer(run_dir)
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


def view_switch_times(base: str, repeats: int = 3) -> dict[str, float]:
    """Median seconds from a click on a view's button to its render, in Chromium."""
    import shutil

    from playwright.sync_api import sync_playwright

    views = ["overview", "layers", "slices", "loss_components", "curvature", "flags"]
    times: dict[str, list[float]] = {v: [] for v in views}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium"),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{base}/#gradient_health")
        frame = page.wait_for_selector("iframe", timeout=120_000).content_frame()
        frame.wait_for_function(
            "() => window.__gradHealth && window.__gradHealth.renders > 0",
            timeout=600_000,
        )
        for rnd in range(repeats + 1):
            for view in views:
                n = frame.evaluate("() => window.__gradHealth.renders")
                t0 = time.perf_counter()
                frame.click(f"button[data-view={view}]")
                frame.wait_for_function(
                    "([n, v]) => window.__gradHealth.renders > n"
                    " && window.__gradHealth.lastRender.view === v",
                    arg=[n, view],
                    timeout=600_000,
                )
                if rnd:  # the first round fetches; later ones are switches
                    times[view].append(time.perf_counter() - t0)
        browser.close()
    return {v: statistics.median(t) for v, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints a table of latencies and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--vars", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--load_fast", choices=["true", "false"], default="true")
    parser.add_argument("--logdir", help="reuse or create this log directory")
    parser.add_argument("--runs", type=int, default=1, help="runs in the logdir")
    parser.add_argument(
        "--browser",
        action="store_true",
        help="also time view switches of the tab in headless Chromium",
    )
    args = parser.parse_args(argv)

    root = args.logdir or tempfile.mkdtemp(prefix="gh_latency_")
    if not os.path.isdir(os.path.join(root, RUN)):
        print(f"writing {args.steps} steps x {args.vars} variables to {root}")
        write_logdir(root, args.steps, args.vars, args.runs)
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
            "(ratio = median / median of the scalars route; first of scalars: "
            f"{ref_cold * 1e3:.1f} ms)"
        )
        if args.browser:
            switch = view_switch_times(base)
            print(f"\nview switch in Chromium, {args.runs} run(s), median of 3:")
            for view, sec in switch.items():
                print(f"  {view:<18}{sec * 1e3:>8.0f} ms")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
