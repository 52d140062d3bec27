"""Seed 004: three sick binary classifiers and a healthy one.

Seed 004 shows the logs of three trainings of a binary classifier:

* ``exploding``: the loss jumps (0.51 → 1.94), turns NaN, and the gradient
  norm passes the parameter norm (1783 vs 965);
* ``vanishing``: the loss stays at ln 2 ≈ 0.693 for 50 epochs with a gradient
  norm of ~1e-3 against a parameter norm of ~3;
* ``oscillating``: the loss swings between ~0.56 and ~0.95 without settling
  and without NaN.

Each is reproduced here with its textbook cause, on the same generated data
set, next to a ``healthy`` run of the same classifier:

* exploding: a deep leaky-ReLU network trained with plain SGD under a rate
  that grows every step (a warm-up without an end: 1e-2 → 100);
* vanishing: a deep sigmoid network with a tiny initialisation, so that every
  unit sits at 0.5, the output stays at the prior and the gradient dies on its
  way back through six sigmoid layers;
* oscillating: logistic regression on inputs left unnormalised (scale 3),
  trained with full-batch gradient descent at a step beyond the stable one
  for the loss's curvature (lr · λ_max > 2), on labels with 25 % noise: the
  weights settle into a cycle and the loss swings for good, without NaN;
* healthy: a small ReLU network with Adam at its default rate.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from demo import RUNS as _ALL_RUNS
from demo import Settings, announce, run_dir, seed_everything
from tb_gradplugin import GradientHealthCallback

RUNS = _ALL_RUNS["seed004"]
"""The run names this experiment writes."""

N_EXAMPLES = 1000  # seed 004 reports accuracies in steps of 1/200 and 1/600
N_FEATURES = 20
BATCH = 50  # 20 steps per epoch
SEED = 4


def make_data(
    seed: int = SEED, label_noise: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Generates the binary classification data set.

    Two Gaussian classes in 20 dimensions whose means differ along a random
    direction, balanced (500 examples each) so that the prior's loss is ln 2.

    Args:
        seed: The numpy seed. Defaults to 4.
        label_noise: Share of labels flipped at random. Defaults to 0.

    Returns:
        ``(x, y)``: float32 ``[1000, 20]`` features and float32 ``[1000, 1]``
        labels in {0, 1}.
    """
    rng = np.random.default_rng(seed)
    y = np.repeat([0.0, 1.0], N_EXAMPLES // 2)
    direction = rng.normal(size=N_FEATURES)
    direction /= np.linalg.norm(direction)
    x = rng.normal(size=(N_EXAMPLES, N_FEATURES)) + np.outer(2 * y - 1, direction)
    flip = rng.random(N_EXAMPLES) < label_noise
    y = np.where(flip, 1.0 - y, y)
    order = rng.permutation(N_EXAMPLES)
    return x[order].astype(np.float32), y[order, None].astype(np.float32)


def _mlp(widths, activation, init=None, name="classifier") -> keras.Model:
    """A dense classifier with one logit out."""
    layers = [keras.Input((N_FEATURES,))]
    for i, w in enumerate(widths):
        layers.append(
            keras.layers.Dense(
                w,
                activation=activation,
                kernel_initializer=init or "glorot_uniform",
                name=f"dense_{i}",
            )
        )
    layers.append(
        keras.layers.Dense(1, kernel_initializer=init or "glorot_uniform", name="out")
    )
    return keras.Sequential(layers, name=name)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one run is trained.

    Attributes:
        model: The compiled model.
        label_noise: Share of flipped labels.
        input_scale: Factor on the inputs (1 = normalised).
        batch_size: Examples per step.
        epochs: Epochs.

    Example:
        >>> plan = build("healthy", Settings(quick=True))  # doctest: +SKIP
        >>> plan.batch_size, plan.epochs  # doctest: +SKIP
        (50, 8)
    """

    model: keras.Model
    label_noise: float
    input_scale: float
    batch_size: int
    epochs: int


def build(kind: str, settings: Settings) -> Plan:
    """Builds and compiles the model of one run.

    Args:
        kind: One of :data:`RUNS`.
        settings: How long to train.

    Returns:
        The run's :class:`Plan`.

    Raises:
        ValueError: For an unknown ``kind``.
    """
    loss = keras.losses.BinaryCrossentropy(from_logits=True)
    epochs = settings.epochs(full=50, quick=8)  # seed 004 trains 50 epochs
    noise, scale, batch = 0.0, 1.0, BATCH
    if kind == "exploding":
        # Leaky ReLU: with plain ReLU a huge step can kill every unit first,
        # and a dead network has a zero gradient instead of an exploding one.
        model = _mlp([64, 64, 64, 64], "leaky_relu", name="exploding")
        # The rate grows 10,000x over the run (1e-2 → 100): stable, then not.
        steps = epochs * (N_EXAMPLES // BATCH)
        lr = keras.optimizers.schedules.ExponentialDecay(
            1e-2, decay_steps=steps, decay_rate=1e4
        )
        opt = keras.optimizers.SGD(lr)
    elif kind == "vanishing":
        init = keras.initializers.RandomNormal(stddev=0.01)
        model = _mlp([32] * 6, "sigmoid", init=init, name="vanishing")
        opt = keras.optimizers.SGD(0.01)
    elif kind == "oscillating":
        model = _mlp([], None, init="zeros", name="oscillating")
        # λ_max of the loss ≈ 0.25 · 3² · 2 = 4.5 (logistic curvature ≤ 1/4,
        # inputs of variance 1 plus a unit mean shift, times scale²), so any
        # rate above 2 / 4.5 ≈ 0.44 overshoots; 1.5 keeps a bounded cycle.
        opt = keras.optimizers.SGD(1.5)
        noise, scale, batch = 0.25, 3.0, N_EXAMPLES
        # One step per epoch: enough epochs for a trend (diagnosis needs 20).
        epochs = settings.epochs(full=60, quick=30)
    elif kind == "healthy":
        model = _mlp([32, 32], "relu", name="healthy")
        opt = keras.optimizers.Adam(1e-3)
    else:
        raise ValueError(f"unknown seed-004 run: {kind!r}")
    model.compile(optimizer=opt, loss=loss, metrics=["accuracy"])
    return Plan(model, noise, scale, batch, epochs)


def train_run(name: str, logdir: str, settings: Settings) -> None:
    """Trains one seed-004 run into ``logdir/name``.

    Args:
        name: One of :data:`RUNS`.
        logdir: The demo's log directory.
        settings: How long to train.
    """
    seed_everything(SEED * 100 + RUNS.index(name))
    plan = build(name, settings)
    done = announce(
        name,
        f"seed 004 binary classifier ({plan.model.count_params()} parameters), "
        f"{plan.epochs} epochs of batch {plan.batch_size}",
    )
    x, y = make_data(label_noise=plan.label_noise)
    cb = GradientHealthCallback(run_dir(logdir, name), update_freq=1)
    plan.model.fit(
        x * plan.input_scale,
        y,
        batch_size=plan.batch_size,
        epochs=plan.epochs,
        shuffle=True,
        verbose=settings.verbose,
        callbacks=[cb],
    )
    cb.close()
    done()
