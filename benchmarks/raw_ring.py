"""A design not taken: raw values to a ring on the device, reduced once per block.

On a CPU, TensorFlow runs the train step one kernel per op at ~2.4 µs each
whatever its size, so on seed 003's MLP (16 k parameters, a 2.4 ms step) the
callback's ~80 extra ops cost ~8 % of the step (``step_ops.py``). Writing each
step's raw values into a ring on the device and reducing a whole block of them
at once with a few ops would spend fewer ops per step. This script measures what
such a step costs before any reduction, against the current callback's step:

* ``callback``: the current design (``GradientHealthCallback`` defaults), its
  compiled step against a plain Keras step;
* ``ring_g``: the gradient only, flattened into one row of a ``[64, P]`` ring
  (one concat and one scatter a step): no parameter or update norm;
* ``ring_gw``: the gradient and the parameters after the update in one row
  (their update norms from consecutive rows, rounded);
* ``ring_gwd``: the gradient, the parameters after the update, and their
  difference from a copy of the parameters made before it.

The ``ring_*`` steps are a copy of Keras's TensorFlow ``train_step``; their
ratios are against that copy with no ring. Per repetition every variant gets a
fresh model, built in rotated order, warmed up, then timed in ``--blocks``
blocks of ``--calls`` calls of the compiled train function alone, in process CPU
time, the variants' order alternating; a repetition's ratio is the median of
its blocks' ratios and the script prints the median over repetitions.

Usage::

    python benchmarks/raw_ring.py                 # seed 003's MLP, 5 repetitions
    python benchmarks/raw_ring.py --hidden 650    # the 1 M MLP
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import step_ops  # noqa: E402

RING_ROWS = 64  # steps a ring holds, as the callback's blocks
RING_VARIANTS = ("ring_g", "ring_gw", "ring_gwd")


class RingModel(keras.Sequential):
    """An MLP whose train step writes raw values to a ring (Keras's step otherwise).

    Args:
        layers: As for ``keras.Sequential``.
        values: What a step writes: ``"none"``, ``"g"``, ``"gw"`` or
            ``"gwd"`` (see the module's docstring). Defaults to ``"none"``.

    Example:
        >>> model = RingModel([keras.Input((4,)), keras.layers.Dense(2)], "g")
    """

    def __init__(self, layers, values: str = "none"):
        super().__init__(layers)
        self.values = values
        params = sum(int(np.prod(w.shape)) for w in self.trainable_weights)
        width = {"none": 0, "g": params, "gw": 2 * params, "gwd": 3 * params}
        self.ring = tf.Variable(
            tf.zeros([RING_ROWS, width[values]]), trainable=False, name="raw_ring"
        )

    def train_step(self, data):
        """Keras's TensorFlow ``train_step`` for one loss and optimizer, plus the ring.

        Args:
            data: A batch ``(x, y)`` or ``(x, y, sample_weight)``.

        Returns:
            The metrics' results, as Keras's ``train_step`` returns them.
        """
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
            self._loss_tracker.update_state(loss, sample_weight=tf.shape(x)[0])
        weights = self.trainable_weights
        grads = tape.gradient(loss, weights)
        if self.values == "gwd":
            before = tf.concat([tf.reshape(w.value, [-1]) for w in weights], 0)
        self.optimizer.apply_gradients(zip(grads, weights, strict=True))
        if self.values != "none":
            flat = [tf.reshape(g, [-1]) for g in grads]
            if self.values in ("gw", "gwd"):
                flat += [tf.reshape(w.value, [-1]) for w in weights]
            row = tf.concat(flat, 0)
            if self.values == "gwd":
                after = row[row.shape[0] // 2 :]
                row = tf.concat([row, after - before], 0)
            index = tf.math.floormod(self.optimizer.iterations - 1, RING_ROWS)
            self.ring.scatter_nd_update([[index]], row[None])
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def _ring_model(hidden: int, batch: int, values: str):
    """A fresh compiled :class:`RingModel` fitted one step, and its data."""
    keras.utils.set_random_seed(0)
    model = RingModel(step_ops.mlp_layers(hidden), values)
    pairs = step_ops.compile_with_batches(model, batch)
    model.fit(pairs.take(1), epochs=1, verbose=0)
    return model.train_function, iter(pairs.cache().repeat())


def _build(name: str, hidden: int, batch: int, logdir: str):
    """The compiled train function of a variant and its batch iterator."""
    if name in ("plain", "callback"):
        model, data, _ = step_ops.build(hidden, batch, name == "callback", logdir)
        return step_ops.compiled_function(model), iter(data.repeat())
    values = "none" if name == "ring_plain" else name.removeprefix("ring_")
    return _ring_model(hidden, batch, values)


def main(argv: list[str] | None = None) -> int:
    """Times every variant's compiled step and prints its median CPU ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=20, help="MLP hidden width")
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args(argv)
    names = ["plain", "callback", "ring_plain", *RING_VARIANTS]
    baseline = {"callback": "plain", **{v: "ring_plain" for v in RING_VARIANTS}}
    ratios: dict[str, list[float]] = {v: [] for v in baseline}
    plain_ms = []
    with tempfile.TemporaryDirectory() as logdir:
        for rep in range(args.repeats):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            built = {n: _build(n, args.hidden, args.batch, logdir) for n in order}
            for fn, data in built.values():
                for _ in range(50):
                    fn(data)
            seconds: dict[str, list[float]] = {n: [] for n in names}
            for block in range(args.blocks):
                for name in order if block % 2 == 0 else order[::-1]:
                    fn, data = built[name]
                    start = time.process_time()
                    for _ in range(args.calls):
                        fn(data)
                    seconds[name].append(time.process_time() - start)
            plain_ms.append(statistics.median(seconds["plain"]) / args.calls * 1e3)
            for name, base in baseline.items():
                ratios[name].append(
                    statistics.median(
                        a / b for a, b in zip(seconds[name], seconds[base], strict=True)
                    )
                )
            print(
                f"repetition {rep + 1}: "
                + ", ".join(f"{n} {r[-1]:.3f}" for n, r in ratios.items()),
                flush=True,
            )
    print(
        f"\nMLP 784-{args.hidden}-{args.hidden}-10, batch {args.batch}: plain step "
        f"{statistics.median(plain_ms):.2f} ms of process CPU; load average "
        f"{os.getloadavg()[0]:.2f}"
    )
    print("variant     median CPU ratio of the compiled step (range)")
    for name, values in ratios.items():
        print(
            f"{name:<11} {statistics.median(values):.3f} "
            f"({min(values):.3f}-{max(values):.3f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
