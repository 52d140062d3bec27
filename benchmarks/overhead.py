"""Overhead of GradientHealthCallback against a plain ``fit``: ratios per model.

For each model, each repetition builds a fresh model per variant (the model
built second in a process can run up to 20 % faster: DESIGN.md pitfall 17) in
an order rotated from one repetition to the next, warms each up with one epoch
(tracing excluded), then times ``--rounds`` fits of each, the variants' fits
interleaved so that a slow spell of the shared machine falls on all of them
(each fit as many epochs as make the plain fits last ``--min_seconds`` in all,
measured once per model; the callback's end-of-fit writes included). It prints
per variant the median step time, the median of the per-repetition ratios to
the plain ``fit`` in wall time and in process CPU time (every thread: the
writer's too; steadier than wall time on a shared machine), the extra peak
memory (the largest rise of the peak resident memory during one of its fits
over the resident memory before it, from ``VmHWM`` reset through
``/proc/self/clear_refs``, minus the plain fit's) and the event-file bytes per
logged step, with the machine's load average.

Variants: ``plain``; ``defaults`` (``GradientHealthCallback(log_dir)``, every
argument at its default); ``update_freq=1``; Keras's
``TensorBoard(histogram_freq=1, update_freq="batch")``.

Models (``--models``, comma-separated): ``mlp16k`` (seed 003's 784-20-20-10 on
a cached ``tf.data`` pipeline, 200 steps an epoch), ``mlp16k_arrays`` (the same
on numpy arrays, 1,000 examples at batch 200: 5 steps an epoch, as seed 003),
``mlp1m``, ``mlp8m``, ``mlp30m`` (784-h-h-10), ``cnn`` (two convolutions),
``lm7m`` (a causal transformer LM of ~6.7 M parameters with a 9,000-token
embedding). ``--mirrored`` runs every model under ``MirroredStrategy`` on two
logical CPUs.

Usage::

    python benchmarks/overhead.py --models mlp16k,mlp16k_arrays --repeats 1
    python benchmarks/overhead.py --repeats 5            # every model
    python benchmarks/overhead.py --repeats 5 --mirrored --models mlp1m
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time

ALL_MODELS = "mlp16k,mlp16k_arrays,mlp1m,mlp8m,mlp30m,cnn,lm7m"
VARIANTS = ("plain", "defaults", "update_freq=1", "keras_tensorboard")


def _parse():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default=ALL_MODELS)
    parser.add_argument("--epochs", type=int, default=2, help="least timed epochs")
    parser.add_argument(
        "--min_seconds",
        type=float,
        default=4.0,
        help="least timed seconds of the plain fit (more epochs on small models)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="timed fits per model, the variants' fits interleaved",
    )
    parser.add_argument("--mirrored", action="store_true")
    return parser.parse_args()


ARGS = _parse() if __name__ == "__main__" else None

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

if ARGS is not None and ARGS.mirrored:
    # Logical devices must exist before TensorFlow initialises its runtime.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )

import keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tb_gradplugin import GradientHealthCallback, reader  # noqa: E402


# -- models -------------------------------------------------------------------------
def _mlp(hidden):
    return keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def _cnn():
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )


VOCAB, SEQ, WIDTH = 9000, 64, 256
ARRAY_EPOCHS = 40  # timed epochs of the 5-step array setting (seed 003: 60)


def _lm(blocks=4, heads=4, ff=512):
    tokens = keras.Input((SEQ,), dtype="int32")
    h = keras.layers.Embedding(VOCAB, WIDTH)(tokens)
    for _ in range(blocks):
        a = keras.layers.LayerNormalization()(h)
        a = keras.layers.MultiHeadAttention(heads, WIDTH // heads)(
            a, a, use_causal_mask=True
        )
        h = h + a
        f = keras.layers.LayerNormalization()(h)
        f = keras.layers.Dense(ff, activation="gelu")(f)
        h = h + keras.layers.Dense(WIDTH)(f)
    return keras.Model(tokens, keras.layers.Dense(VOCAB)(h))


# name: (builder, batch, steps per epoch, input kind, feed)
MODELS = {
    "mlp16k": (lambda: _mlp(20), 200, 200, "flat", "dataset"),
    "mlp16k_arrays": (lambda: _mlp(20), 200, 5, "flat", "arrays"),
    "mlp1m": (lambda: _mlp(650), 200, 100, "flat", "dataset"),
    "mlp8m": (lambda: _mlp(2440), 200, 30, "flat", "dataset"),
    "mlp30m": (lambda: _mlp(5000), 200, 15, "flat", "dataset"),
    "cnn": (_cnn, 200, 50, "image", "dataset"),
    "lm7m": (_lm, 16, 30, "tokens", "dataset"),
}


def _data(kind, n):
    rng = np.random.default_rng(0)
    if kind == "tokens":
        x = rng.integers(0, VOCAB, (n, SEQ + 1)).astype("int32")
        return x[:, :-1], x[:, 1:]
    shape = (n, 784) if kind == "flat" else (n, 28, 28, 1)
    return rng.normal(size=shape).astype("float32"), rng.integers(0, 10, n)


# -- measuring ------------------------------------------------------------------
def _reset_peak():
    """Resets the process's peak resident memory (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _memory_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _callbacks(variant, logdir):
    if variant == "plain":
        return []
    if variant == "defaults":
        return [GradientHealthCallback(logdir)]
    if variant == "update_freq=1":
        return [GradientHealthCallback(logdir, update_freq=1)]
    return [keras.callbacks.TensorBoard(logdir, histogram_freq=1, update_freq="batch")]


def _event_bytes_per_logged_step(logdir, variant):
    if variant == "plain":
        return float("nan")
    total, steps = 0, 0
    for root, _, files in os.walk(logdir):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    if variant == "keras_tensorboard":
        return total if total else float("nan")  # bytes for the whole fit
    run = reader.read_run(
        reader.provider_for_logdir(os.path.dirname(logdir)), os.path.basename(logdir)
    )
    series = run.scalars.get("step/loss")
    steps = len(series.steps) if series is not None else 0
    return total / steps if steps else float("nan")


class Trial:
    """A fresh model of one variant, warmed up; its timed fits add up.

    Args:
        name: The model's name in :data:`MODELS`.
        variant: One of :data:`VARIANTS`.
        strategy: The distribution strategy.
        workdir: Where the run's log directory goes.
    """

    def __init__(self, name, variant, strategy, workdir):
        make, batch, self.steps, kind, feed = MODELS[name]
        self.variant = variant
        x, y = _data(kind, batch * self.steps)
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = make()
            model.compile(
                optimizer=keras.optimizers.Adam(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
        self.logdir = os.path.join(workdir, f"{name}-{variant}-{time.monotonic_ns()}")
        self.callbacks = _callbacks(variant, self.logdir)
        if feed == "dataset":
            data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).cache()
            # tf.data's autotuning thread sleeps 10 ms, 20 ms, 40 ms, ... and the
            # iterator's end at the end of a fit can wait out its sleep: fits of
            # ~12 s of the LM, plain ones too, took exactly 20.47 s (10 ms x
            # (2^11 - 1)) at random. A cached dataset has nothing to tune.
            options = tf.data.Options()
            options.autotune.enabled = False
            data = data.with_options(options)

            def fit(epochs):
                model.fit(data, epochs=epochs, verbose=0, callbacks=self.callbacks)
        else:

            def fit(epochs):
                model.fit(
                    x,
                    y,
                    batch_size=batch,
                    epochs=epochs,
                    verbose=0,
                    callbacks=self.callbacks,
                )

        self.fit = fit
        # One warm-up epoch: tracing (of the step and of the callback's writer
        # functions) is a fixed cost, not a ratio.
        fit(1)
        self.seconds = self.cpu_seconds = 0.0
        self.timed_steps = 0
        self.peak_kb = 0

    def timed_fit(self, epochs):
        """One timed ``fit`` of ``epochs`` epochs, added to the totals."""
        _reset_peak()
        base = _memory_kb("VmRSS")
        start, cpu = time.perf_counter(), time.process_time()
        self.fit(epochs)
        self.seconds += time.perf_counter() - start
        self.cpu_seconds += time.process_time() - cpu
        self.timed_steps += self.steps * epochs
        self.peak_kb = max(self.peak_kb, _memory_kb("VmHWM") - base)

    def result(self):
        """(s/step, extra peak KB of a fit, bytes/logged step, CPU s/step)."""
        for cb in self.callbacks:
            if isinstance(cb, GradientHealthCallback):
                cb.close()
        per_log = _event_bytes_per_logged_step(self.logdir, self.variant)
        n = self.timed_steps
        return self.seconds / n, self.peak_kb, per_log, self.cpu_seconds / n


def measure(name, epochs, rounds, strategy, workdir, rep):
    """One repetition: a fresh model per variant, their timed fits interleaved.

    The models are built in an order rotated by ``rep``; then ``rounds``
    times each fits ``epochs`` epochs, in that order: a slow spell of the
    shared machine then falls on every variant alike.

    Returns:
        ``{variant: Trial.result()}``.
    """
    order = VARIANTS[rep % len(VARIANTS) :] + VARIANTS[: rep % len(VARIANTS)]
    trials = [Trial(name, variant, strategy, workdir) for variant in order]
    for _ in range(rounds):
        for trial in trials:
            trial.timed_fit(epochs)
    return {trial.variant: trial.result() for trial in trials}


def main() -> None:
    args = ARGS
    strategy = (
        tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        if args.mirrored
        else tf.distribute.get_strategy()
    )
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models.split(","):
            _, batch, steps, _, feed = MODELS[name]
            # As many epochs as make the plain fit last min_seconds: a timed
            # span under a second moves by +-10 % here from run to run.
            least = args.epochs if feed == "dataset" else ARRAY_EPOCHS
            probe = Trial(name, "plain", strategy, workdir)
            probe.timed_fit(least)
            step_s = probe.result()[0]
            del probe
            # Per round: as many epochs as make the plain fit last
            # min_seconds / rounds.
            epochs = max(
                least, math.ceil(args.min_seconds / args.rounds / (step_s * steps))
            )
            results = {v: [] for v in VARIANTS}
            loads = os.getloadavg()
            for rep in range(args.repeats):
                for variant, result in measure(
                    name, epochs, args.rounds, strategy, workdir, rep
                ).items():
                    results[variant].append(result)
            label = "mirrored, 2 CPUs" if args.mirrored else "one device"
            print(
                f"\n{name}: batch {batch}, {steps} steps/epoch ({feed}), "
                f"{args.rounds} rounds of {epochs} timed epochs, "
                f"{args.repeats} repetitions, {label}, load average "
                f"{loads[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
            )
            print(
                f"{'variant':<20}{'ms/step':>9}{'ratio':>8}{'CPU ratio':>11}"
                f"{'extra peak MB':>15}{'bytes/logged step':>19}"
            )
            plain = results["plain"]
            for variant in VARIANTS:
                runs = results[variant]
                ratios = [r[0] / p[0] for r, p in zip(runs, plain, strict=True)]
                cpu = [r[3] / p[3] for r, p in zip(runs, plain, strict=True)]
                extra = [(r[1] - p[1]) / 1024 for r, p in zip(runs, plain, strict=True)]
                per_log = statistics.median(r[2] for r in runs)
                unit = " (whole fit)" if variant == "keras_tensorboard" else ""
                print(
                    f"{variant:<20}{1000 * statistics.median(r[0] for r in runs):>9.2f}"
                    f"{statistics.median(ratios):>8.3f}"
                    f"{statistics.median(cpu):>11.3f}"
                    f"{statistics.median(extra):>15.1f}"
                    f"{per_log:>19.0f}{unit}"
                )


if __name__ == "__main__":
    main()
