"""Overhead of GradientHealthCallback against a plain ``fit``, as ratios.

For a 784-20-20-10 MLP at batch 200 (seed 003) and a small two-conv CNN, prints
the median wall time of one ``fit`` epoch for each variant and its ratio to the
plain ``fit`` measured in the same run, interleaved so that drift hits all, and
the ratio of the process's CPU time (the callback's writer thread included):

* plain ``fit``;
* this callback at ``update_freq=1`` (every statistic, every step);
* this callback at ``update_freq=10``;
* this callback with ``hessian_freq=0`` explicitly (must cost nothing extra);
* Keras's ``TensorBoard(histogram_freq=1, update_freq="batch")``;
* eager per-layer gradient norms recomputed after every batch.

Usage: ``python benchmarks/overhead.py [--repeats 9] [--steps 200]
[--data dataset|numpy]``: ``dataset`` feeds one cached ``tf.data`` pipeline (the
fastest plain step, the strictest ratio), ``numpy`` passes arrays to ``fit`` as
seed 003 does.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, ".")
from tb_gradplugin import GradientHealthCallback  # noqa: E402


class _EagerNorms(keras.callbacks.Callback):
    """Recomputes per-layer gradient norms eagerly after every batch."""

    def __init__(self, x, y, batch):
        super().__init__()
        self.x, self.y, self.batch = x, y, batch

    def on_train_batch_end(self, batch, logs=None):
        i = (batch * self.batch) % len(self.x)
        xb, yb = self.x[i : i + self.batch], self.y[i : i + self.batch]
        with tf.GradientTape() as tape:
            loss = self.model.compute_loss(
                x=xb, y=yb, y_pred=self.model(xb, training=True)
            )
        grads = tape.gradient(loss, self.model.trainable_variables)
        [float(tf.norm(g)) for g in grads]


def _mlp():
    return keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(20, activation="relu"),
            keras.layers.Dense(20, activation="relu"),
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


def _data(kind, n):
    rng = np.random.default_rng(0)
    shape = (n, 784) if kind == "mlp" else (n, 28, 28, 1)
    return rng.normal(size=shape).astype("float32"), rng.integers(0, 10, n)


def _variants(x, y, batch, logdir):
    return {
        "plain": lambda: [],
        "gradhealth_every_step": lambda: [
            GradientHealthCallback(f"{logdir}/u1", update_freq=1, on_flag=None)
        ],
        "gradhealth_every_10": lambda: [
            GradientHealthCallback(f"{logdir}/u10", update_freq=10, on_flag=None)
        ],
        "gradhealth_hessian_off": lambda: [
            GradientHealthCallback(f"{logdir}/h0", hessian_freq=0, on_flag=None)
        ],
        "keras_tensorboard": lambda: [
            keras.callbacks.TensorBoard(
                f"{logdir}/ktb", histogram_freq=1, update_freq="batch"
            )
        ],
        "eager_norms": lambda: [_EagerNorms(x, y, batch)],
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(
    kind: str, repeats: int, steps: int, data: str = "dataset", batch: int = 200
) -> tuple[dict[str, list], dict[str, list]]:
    """Times each variant; returns wall and CPU seconds per epoch of every repeat."""
    x, y = _data(kind, steps * batch)
    # One dataset for every fit: building it per fit (~50 ms) would be noise.
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).cache()

    def fit(model, cbs):
        if data == "numpy":
            model.fit(x, y, batch_size=batch, epochs=1, verbose=0, callbacks=cbs)
        else:
            model.fit(ds, epochs=1, verbose=0, callbacks=cbs)

    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as logdir:
        variants = _variants(x, y, batch, logdir)
        models = {}
        for name, make in variants.items():
            keras.utils.set_random_seed(0)
            model = _mlp() if kind == "mlp" else _cnn()
            model.compile(
                optimizer=keras.optimizers.SGD(0.01),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            cbs = make()
            # Warm-up epoch: tracing and the first writer start are not timed.
            fit(model, cbs)
            models[name] = (model, cbs)
        for _ in range(repeats):
            for name, (model, cbs) in models.items():
                t0, c0 = time.perf_counter(), _cpu_seconds()
                fit(model, cbs)
                times.setdefault(name, []).append(time.perf_counter() - t0)
                cpu.setdefault(name, []).append(_cpu_seconds() - c0)
    return times, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--steps", type=int, default=200, help="steps per epoch")
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--data", choices=("dataset", "numpy"), default="dataset")
    args = parser.parse_args()
    for kind in args.models.split(","):
        times, cpu = run(kind, args.repeats, args.steps, args.data)
        med = {k: statistics.median(v) for k, v in times.items()}
        best = {k: min(v) for k, v in times.items()}
        cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
        print(
            f"\n{kind}: {args.steps} steps/epoch at batch 200 ({args.data}), "
            f"{args.repeats} repeats"
        )
        print(
            f"{'variant':<26}{'ms/step med':>12}{'ratio med':>10}"
            f"{'ms/step min':>12}{'ratio min':>10}{'cpu ratio':>10}"
        )
        for name in times:
            print(
                f"{name:<26}{1000 * med[name] / args.steps:>12.2f}"
                f"{med[name] / med['plain']:>10.3f}"
                f"{1000 * best[name] / args.steps:>12.2f}"
                f"{best[name] / best['plain']:>10.3f}"
                f"{cpu_med[name] / cpu_med['plain']:>10.3f}"
            )


if __name__ == "__main__":
    main()
