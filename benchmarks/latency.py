"""First-request latency of the Gradient Health routes beside TensorBoard's scalars.

Writes a log directory with one run of ``--steps`` logged steps (default 100,000) and
the tags the callback writes for ``--vars`` variables (default 100): every per-step
``step/*`` scalar, every ``layer/*`` statistic as a float32 tensor, and the window
statistics every ``--window`` steps; plus a plain TensorBoard scalar ``loss`` with one
point per step; and, every ``--block`` steps (default 100; 0: none), the
``block/<key>`` summaries that the views draw long series from
(``tb_gradplugin/blocks.py`` says what they hold). It starts a real ``tensorboard``
process (``--samples_per_plugin scalars=0`` so that TensorBoard's scalars route reads
from as many stored points as ours) and prints, for every view route:

* the FIRST request (cold cache: what a user waits for when opening the view);
* the median of ``--repeats`` further requests (warm cache);
* the first request again after ``--append`` new steps (default 1,000) were written
  to the run and TensorBoard reloaded it (what a user watching training waits for);

beside TensorBoard's own scalars route, then the wall time of
``tb-gradhealth check`` on the log directory and of the same check read through
TensorBoard's Rust data server (``data_server.data_server_provider``). The targets
of the project: first request <= 300 ms, reload <= 100 ms, check <= 15 s. The
machine's load is printed too: on a shared machine the wall times grow with it.

With ``--callback`` the run is written by a real ``fit`` of a many-layer tiny MLP
(``--vars`` variables) with ``GradientHealthCallback(update_freq=1)``, and the
appended steps by a second ``fit``; the fit's wall time is printed.

Run: ``python benchmarks/latency.py [--steps N] [--vars K] [--logdir DIR]
[--load_fast true|false] [--skip_check] [--browser] [--callback]
[--health_runs N]``; ``--browser`` also times view switches of the tab in headless
Chromium; ``--health_runs 200`` also times the health table over 200 runs (copies of
one run of ``--health_steps`` steps); a ``--logdir`` that already holds the run is
reused (writing 100,000 steps takes a few minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tensorboard.compat.proto import summary_pb2  # noqa: E402

from tb_gradplugin import (  # noqa: E402
    blocks,
    data_server,
    flag_reads,
    metadata,
    reader,
    view_refresh,
)
from tests import gh_logdirs  # noqa: E402

RUN = "big"
TARGET_FIRST_MS = 300.0
TARGET_RELOAD_MS = 100.0
TARGET_CHECK_S = 15.0
SETTLE_S = 2 * view_refresh.INTERVAL_S + 1.0
"""Seconds after TensorBoard serves new steps that the settled request waits: two
passes of the plugin's background refresh of the views a user looks at."""


def write_run(
    run_dir: str,
    first: int,
    last: int,
    n_vars: int,
    window: int,
    block: int = 0,
    per_step: bool = True,
    seed: int = 0,
) -> None:
    """Writes steps ``first..last`` of the benchmark run as one new event file.

    With ``block > 0`` it also writes the ``block/<key>`` summary of every
    ``step/*`` and ``layer/*`` key each ``block`` steps, as ``blocks.summarize``
    makes them; with ``per_step=False`` only those (the values are drawn from the
    same seed, so a second call adds the blocks of an existing run).
    """
    rng = np.random.default_rng(seed + first)
    w = gh_logdirs.Writer(run_dir)
    variables = [f"layer_{i}/kernel" for i in range(n_vars)]
    content = {"variables": variables}
    scalars_meta = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
        data_class=summary_pb2.DATA_CLASS_SCALAR,
    )
    scale = np.logspace(0, -3, n_vars)
    total = max(last, 100_000)
    pending: list = []
    t0 = time.time()
    for step in range(first, last + 1):
        t = step / total
        loss = 2.3 * np.exp(-3 * t) + 0.05 * rng.random()
        grad = 5 * np.exp(-2 * t) + 0.1 * rng.random()
        layer = grad * scale * (1 + 0.1 * rng.random(n_vars))
        step_values = {
            "loss": loss,
            "grad_norm": grad,
            "param_norm": 10 + t,
            "update_norm": 1e-3 * grad,
            "update_ratio": 1e-4 * grad,
            "learning_rate": 1e-3,
            "nonfinite_grads": 0.0,
            "nonfinite_loss": 0.0,
        }
        layer_values = {
            "grad_norm": layer,
            "grad_mean_abs": layer / 30,
            "param_norm": 1 + scale,
            "update_norm": 1e-3 * layer,
            "update_ratio": 1e-3 * scale,
            "zero_fraction": np.zeros(n_vars),
            "nonfinite_grads": np.zeros(n_vars),
        }
        vals = {metadata.step_tag(k): (v, None, False) for k, v in step_values.items()}
        vals.update(
            {metadata.layer_tag(k): (v, content, True) for k, v in layer_values.items()}
        )
        if step % window == 0:
            for stat in ("grad_variance", "grad_mean_abs"):
                vals[metadata.window_layer_tag(stat)] = (layer**2, content, True)
            for stat in ("grad_variance", "grad_mean_abs", "noise_scale", "grad_snr"):
                vals[metadata.window_tag(stat)] = (grad, None, False)
        if per_step:
            w.write(step, vals)
            w.write_plain_scalar(step, "loss", loss, scalars_meta)
        if block:
            pending.append((step, step_values, layer_values))
            if step % block == 0 or step == last:
                w.write(step, block_summaries(pending, content))
                pending = []
        if step % 10_000 == 0:
            print(f"  wrote {step} steps in {time.time() - t0:.0f} s", flush=True)
    w.close()


CALLBACK_BATCHES = 500
"""Batches per epoch of the ``--callback`` fit (``--steps`` is rounded to them)."""


def write_callback_run(
    run_dir: str, steps: int, n_vars: int, seed: int = 0, first_step: int = 1
) -> float:
    """Trains a many-layer tiny MLP for ``steps`` steps with the callback logging each.

    The MLP has ``n_vars // 2`` Dense layers of width 4 (a kernel and a bias each:
    ``n_vars`` variables); ``GradientHealthCallback(update_freq=1)`` writes the run,
    so the benchmark reads exactly what the callback writes (with block summaries
    when the callback writes them). A second call on the same ``run_dir`` continues
    the run's steps (the callback goes on from the run's last step); pass its
    ``first_step`` for TensorBoard's own ``loss`` scalar written beside.

    Returns:
        The wall seconds of the fit.
    """
    import keras

    from tb_gradplugin import GradientHealthCallback

    PlainLoss = _plain_loss_callback()  # noqa: N806 - a class
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    width = 4
    # Named layers: the appending fit's fresh model has the same variable paths,
    # so the callback continues this run instead of starting a sub-run.
    model = keras.Sequential(
        [keras.Input((width,))]
        + [
            keras.layers.Dense(width, activation="tanh", name=f"dense_{i}")
            for i in range(n_vars // 2 - 1)
        ]
        + [keras.layers.Dense(1, name="out")],
        name="mlp",
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    x = rng.normal(size=(8 * CALLBACK_BATCHES, width)).astype("float32")
    y = np.sin(x.sum(axis=1, keepdims=True)).astype("float32")
    epochs = max(1, round(steps / CALLBACK_BATCHES))
    cb = GradientHealthCallback(run_dir, update_freq=1, on_flag=None)
    t0 = time.time()
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=epochs,
        verbose=0,
        callbacks=[cb, PlainLoss(run_dir, first_step)],
    )
    cb.close()
    return time.time() - t0


def _plain_loss_callback():
    """A Keras callback writing TensorBoard's own ``loss`` scalar at every step.

    TensorBoard's scalars route, timed beside ours, then reads a series of as
    many points from the same run.
    """
    import keras
    import tensorflow as tf

    class PlainLoss(keras.callbacks.Callback):
        def __init__(self, log_dir, first_step):
            super().__init__()
            self._log_dir, self._first_step = log_dir, first_step
            self._writer = None

        def on_train_batch_end(self, batch, logs=None):
            if self._writer is None:
                self._writer = tf.summary.create_file_writer(self._log_dir)
            step = self.model.optimizer.iterations.numpy() - 1 + self._first_step
            with self._writer.as_default():
                tf.summary.scalar("loss", logs["loss"], step=int(step))

        def on_train_end(self, logs=None):
            if self._writer is not None:
                self._writer.close()

    return PlainLoss


def block_summaries(pending: list, content: dict) -> dict[str, tuple]:
    """The ``block/<key>`` values of one block of ``(step, step_values, layers)``."""
    steps = np.array([p[0] for p in pending])
    out = {}
    for index, tag_of, meta in (
        (1, metadata.step_tag, None),
        (2, metadata.layer_tag, content),
    ):
        for name in pending[0][index]:
            values = np.array([p[index][name] for p in pending], dtype=np.float32)
            key = tag_of(name)[len(metadata.TAG_PREFIX) :]
            tag = metadata.TAG_PREFIX + blocks.block_key(key)
            out[tag] = (blocks.summarize(steps, values), meta, True)
    return out


def append_steps(args, run_dir: str, first: int) -> None:
    """Appends ``args.append`` steps to the run from step ``first``."""
    if args.callback:
        write_callback_run(run_dir, args.append, args.vars, 1, first)
    else:
        last = first + args.append - 1
        write_run(run_dir, first, last, args.vars, args.window, args.block)
    print(f"appended {args.append} steps")


def timed_get(url: str) -> float:
    """Returns the seconds one GET takes, body read to the end."""
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as resp:
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{url}: {resp.status}")
    return time.perf_counter() - t0


def served_step(base: str) -> int:
    """The last step of the run that TensorBoard serves (-1 while it has none)."""
    url = f"{base}/data/plugin/gradient_health/tags?run={RUN}"
    try:
        with urllib.request.urlopen(url, timeout=600) as resp:
            tags = json.loads(resp.read())
        return min(
            tags["scalars"]["step/loss"]["max_step"],
            tags["tensors"]["layer/grad_norm"]["max_step"],
        )
    except (OSError, KeyError):
        return -1


def wait_for_step(base: str, step: int, proc, timeout_s: float = 1800) -> float:
    """Waits until TensorBoard serves the run up to ``step``; returns the seconds."""
    t0 = time.time()
    while True:
        if served_step(base) >= step:
            return time.time() - t0
        if proc.poll() is not None or time.time() - t0 > timeout_s:
            raise RuntimeError("tensorboard did not load the logdir")
        time.sleep(0.5)


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


def routes(base: str) -> dict[str, str]:
    """The URL of TensorBoard's scalars route and of each view's data route."""
    p = f"{base}/data/plugin/gradient_health/"
    return {
        "scalars (TensorBoard)": f"{base}/data/plugin/scalars/scalars"
        f"?run={RUN}&tag=loss",
        "tags": f"{p}tags?run={RUN}",
        "overview": f"{p}overview?run={RUN}",
        "series step/loss": f"{p}series?run={RUN}&key=step/loss",
        "layers (heatmap)": f"{p}layers?run={RUN}&stat=grad_norm",
        "slices": f"{p}slices?run={RUN}",
        "loss_components": f"{p}loss_components?run={RUN}",
        "curvature": f"{p}curvature?run={RUN}",
        "trajectory": f"{p}trajectory?run={RUN}",
        "flags": f"{p}flags?run={RUN}",
        "health (table row)": f"{p}health?run={RUN}",
    }


def start_tensorboard(root: str, load_fast: str) -> tuple[str, subprocess.Popen]:
    """A real TensorBoard on ``root`` that reloads every second: (base URL, process).

    ``--samples_per_plugin scalars=0`` makes TensorBoard's scalars route read from
    as many stored points as the plugin's routes.
    """
    port = gh_logdirs.free_port()
    proc = gh_logdirs.start_tensorboard(
        root,
        port,
        f"--load_fast={load_fast}",
        "--samples_per_plugin=scalars=0",
        "--reload_interval=1",
    )
    return f"http://127.0.0.1:{port}", proc


def runs_served_to(base: str, runs: list[str], step: int) -> bool:
    """Whether TensorBoard serves every one of ``runs`` up to ``step``.

    Asks the plugin's ``tags`` route (a listing, no series read). TensorBoard's
    own scalars route answers an empty list for the plain ``loss`` these runs
    hold (seen with TensorBoard 2.21's Rust data server; not looked into), so
    it cannot tell.
    """
    for run in runs:
        url = f"{base}/data/plugin/gradient_health/tags?run={run}"
        try:
            with urllib.request.urlopen(url, timeout=600) as resp:
                tags = json.loads(resp.read())
            if tags["scalars"]["step/loss"]["max_step"] < step:
                return False
        except (OSError, KeyError, ValueError):
            return False
    return True


def health_table_times(args) -> dict[str, float]:
    """Seconds of the health table's requests over ``--health_runs`` runs.

    Every run is a copy of one written run of ``--health_steps`` steps and 10
    variables (the table computes each run's row on its own); the appended steps
    are one event file copied into every run.

    Returns:
        ``{"first 5 rows", "first", "warm", "reload", "settled"}``: the first
        request of the first 5 runs' rows (the tab asks for a few rows first,
        then the rest), then of the whole table (every run), as for the view
        routes.
    """
    names = [f"run_{i:03d}" for i in range(args.health_runs)]
    scratch = tempfile.mkdtemp(prefix="gh_health_")
    root = os.path.join(scratch, "logs")
    steps = args.health_steps

    def write_everywhere(first: int, last: int) -> None:
        part = os.path.join(scratch, f"part_{first}")
        write_run(part, first, last, 10, 100, 100)
        for name in names:
            shutil.copytree(part, os.path.join(root, name), dirs_exist_ok=True)

    write_everywhere(1, steps)
    base, proc = start_tensorboard(root, args.load_fast)
    url = f"{base}/data/plugin/gradient_health/health"

    def wait_all(step: int) -> None:
        deadline = time.time() + 1800
        while not runs_served_to(base, names, step):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("tensorboard did not load the runs")
            time.sleep(1.0)

    def first_rows() -> float:
        # The tab's first request: the health rows of its first 5 runs.
        return timed_get(url + "?" + "&".join(f"run={n}" for n in names[:5]))

    try:
        wait_all(steps)
        out = {"first 5 rows": first_rows(), "first": timed_get(url)}
        out["warm"] = statistics.median(timed_get(url) for _ in range(args.repeats))
        write_everywhere(steps + 1, steps + args.health_append)
        wait_all(steps + args.health_append)
        out["reload"] = timed_get(url)
        write_everywhere(steps + args.health_append + 1, steps + 2 * args.health_append)
        wait_all(steps + 2 * args.health_append)
        time.sleep(SETTLE_S)
        out["settled"] = timed_get(url)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def check_times(logdir: str) -> tuple[float, float]:
    """Wall seconds of ``tb-gradhealth check`` and of the data-server read + check."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "tb_gradplugin.cli", "check", logdir, "--json"]
    subprocess.run(cmd, capture_output=True, check=False)
    cli = time.perf_counter() - t0
    t0 = time.perf_counter()
    with data_server.data_server_provider(logdir) as provider:
        for run in reader.list_runs(provider):
            flag_reads.run_report(provider, run)
    return cli, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints first-request, warm and reload latencies."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--vars", type=int, default=100)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument(
        "--block",
        type=int,
        default=100,
        help="steps per block summary written beside the per-step data (0: none)",
    )
    parser.add_argument(
        "--add_blocks",
        action="store_true",
        help="add the block summaries to an existing --logdir run written without",
    )
    parser.add_argument("--append", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--load_fast", choices=["true", "false"], default="true")
    parser.add_argument("--logdir", help="reuse or create this log directory")
    parser.add_argument("--skip_check", action="store_true")
    parser.add_argument(
        "--callback",
        action="store_true",
        help="write the run (and the appended steps) by a real fit with the callback",
    )
    parser.add_argument(
        "--browser",
        action="store_true",
        help="also time view switches of the tab in headless Chromium",
    )
    parser.add_argument(
        "--health_runs",
        type=int,
        default=0,
        help="also time the health table over this many runs (0: not)",
    )
    parser.add_argument("--health_steps", type=int, default=2000)
    parser.add_argument("--health_append", type=int, default=100)
    args = parser.parse_args(argv)

    root = args.logdir or tempfile.mkdtemp(prefix="gh_latency_")
    run_dir = os.path.join(root, RUN)
    if not os.path.isdir(run_dir) and args.callback:
        print(f"training {args.steps} steps, {args.vars} variables, into {root}")
        took = write_callback_run(run_dir, args.steps, args.vars)
        print(f"fit with the callback at update_freq=1: {took:.0f} s")
    elif not os.path.isdir(run_dir):
        print(f"writing {args.steps} steps x {args.vars} variables to {root}")
        write_run(run_dir, 1, args.steps, args.vars, args.window, args.block)
    elif args.add_blocks:
        print(f"adding block summaries of {args.block} steps to {run_dir}")
        write_run(run_dir, 1, args.steps, args.vars, args.window, args.block, False)
    size = sum(e.stat().st_size for e in os.scandir(run_dir)) / 1e6
    print(f"run: {size:.0f} MB of event files; load average {os.getloadavg()[0]:.1f}")
    base, proc = start_tensorboard(root, args.load_fast)
    urls = routes(base)
    try:
        print(f"loaded in {wait_for_step(base, args.steps, proc):.0f} s")
        time.sleep(3)  # steps appended by an earlier run of this benchmark
        last = served_step(base)
        first = {name: timed_get(url) for name, url in urls.items()}
        warm = {
            name: statistics.median(timed_get(url) for _ in range(args.repeats))
            for name, url in urls.items()
        }
        append_steps(args, run_dir, last + 1)
        wait_for_step(base, last + args.append, proc)
        reload = {name: timed_get(url) for name, url in urls.items()}
        # A user reloading a few seconds after TensorBoard has the new steps
        # finds the views the plugin kept current in the background.
        append_steps(args, run_dir, last + args.append + 1)
        wait_for_step(base, last + 2 * args.append, proc)
        time.sleep(SETTLE_S)
        settled = {name: timed_get(url) for name, url in urls.items()}
        last = served_step(base)
        switch = view_switch_times(base) if args.browser else {}
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(
        f"\n{last} steps x {args.vars} variables (load_fast={args.load_fast}), "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'route':<24}{'first ms':>10}{'warm ms':>9}{'reload ms':>11}"
        f"{'settled ms':>12}  targets"
    )
    for name in urls:
        ok = (
            ""
            if name.startswith("scalars")
            else "  "
            + " ".join(
                [
                    "first ok"
                    if first[name] * 1e3 <= TARGET_FIRST_MS
                    else "FIRST SLOW",
                    "reload ok"
                    if reload[name] * 1e3 <= TARGET_RELOAD_MS
                    else "RELOAD SLOW",
                    "settled ok"
                    if settled[name] * 1e3 <= TARGET_RELOAD_MS
                    else "SETTLED SLOW",
                ]
            )
        )
        print(
            f"{name:<24}{first[name] * 1e3:>10.1f}{warm[name] * 1e3:>9.1f}"
            f"{reload[name] * 1e3:>11.1f}{settled[name] * 1e3:>12.1f}{ok}"
        )
    print(
        f"(warm: median of {args.repeats}; reload: the first request once TensorBoard"
        f" serves {args.append} new steps; settled: the same {SETTLE_S:.0f} s later,"
        " after another append)"
    )
    for view, sec in switch.items():
        print(f"view switch in Chromium, {view:<16}{sec * 1e3:>8.0f} ms (median of 3)")
    if args.health_runs:
        took = health_table_times(args)
        print(
            f"\nhealth table of {args.health_runs} runs x {args.health_steps} steps:"
            + "".join(f" {k} {v * 1e3:.0f} ms," for k, v in took.items())
            + f" (append {args.health_append} steps to every run)"
        )
    if not args.skip_check:
        cli, fast = check_times(root)
        print(f"\ntb-gradhealth check: {cli:.1f} s (target {TARGET_CHECK_S:.0f} s)")
        print(f"check read through the Rust data server: {fast:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
