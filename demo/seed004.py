"""Seed 004: three sick binary classifiers and a healthy one.

Seed 004 shows the logs of three trainings of a binary classifier:

* ``exploding``: the loss jumps (0.51 → 1.94), turns NaN, and the gradient
  norm passes the parameter norm (1783 vs 965);
* ``vanishing``: the loss stays at ln 2 ≈ 0.693 for 50 epochs with a gradient
  norm of ~1e-3 against a parameter norm of ~3;
* ``oscillating``: the loss swings between ~0.56 and ~0.95 without settling
  and without NaN.

Each is reproduced here with its textbook cause, on the same real data, next
to a ``healthy`` run of the same classifier. The task: odd or even, on 1,000
of scikit-learn's handwritten digits (100 of each, see :mod:`demo.data`) at
MNIST's 28×28, each pixel standardised; 500 of each label, so that the prior's
loss is ln 2.

* exploding: a deep leaky-ReLU network trained with plain SGD under a rate
  that grows tenfold every epoch (a warm-up without an end: 1e-2, 0.1, 1, …);
* vanishing: a deep sigmoid network with a tiny initialisation, so that every
  unit sits at 0.5, the output stays at the prior and the gradient dies on its
  way back through six sigmoid layers;
* oscillating: logistic regression trained with full-batch gradient descent
  at five times the stable step for the loss's curvature (lr · λ_max = 10,
  where 2 is the limit), on labels with 25 % noise: the weights never settle
  and the loss swings for good, without NaN;
* healthy: a small ReLU network with Adam at its default rate.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from demo import RUNS as _ALL_RUNS
from demo import Settings, announce, data, run_dir, seed_everything
from tb_gradplugin import GradientHealthCallback

RUNS = _ALL_RUNS["seed004"]
"""The run names this experiment writes."""

N_EXAMPLES = 1000  # seed 004 reports accuracies in steps of 1/200 and 1/600
N_FEATURES = data.SIDE * data.SIDE  # 784 pixels
BATCH = 50  # 20 steps per epoch
SEED = 4
UNSTABLE_STEP = 10.0  # lr · λ_max of the oscillating run; above 2 GD overshoots
PIXEL_SCALE_FLOOR = 0.1  # pixel σ below this (rarely inked edges) count as 0.1


def make_data(
    seed: int = SEED, label_noise: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Picks the odd-or-even data set from scikit-learn's digits.

    Each pixel is centred and divided by its standard deviation (at least
    :data:`PIXEL_SCALE_FLOOR`, so that a pixel inked in a handful of images
    does not become a huge feature); the blank margin stays 0.

    Args:
        seed: The numpy seed of the choice, order and label noise.
            Defaults to 4.
        label_noise: Share of labels flipped at random. Defaults to 0.

    Returns:
        ``(x, y)``: float32 ``[1000, 784]`` standardised pixels and float32
        ``[1000, 1]`` labels, 1 for an odd digit (500 of each before noise).
    """
    images, digits = data.handwritten_digits()
    pick = data.balanced_subset(digits, N_EXAMPLES // 10, seed)
    x = images[pick].astype(np.float64)
    x = (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), PIXEL_SCALE_FLOOR)
    y = (digits[pick] % 2).astype(np.float64)
    flip = np.random.default_rng(seed).random(N_EXAMPLES) < label_noise
    y = np.where(flip, 1.0 - y, y)
    return x.astype(np.float32), y[:, None].astype(np.float32)


def logistic_curvature(x: np.ndarray) -> float:
    """The largest Hessian eigenvalue of logistic regression's loss at zero weights.

    At zero weights every prediction is 1/2, so the Hessian of the mean
    cross-entropy is ``σ'(0) · E[x̃ x̃ᵀ] = E[x̃ x̃ᵀ] / 4`` with ``x̃ = (x, 1)``
    (the bias's input); gradient descent is stable only below ``2 / λ_max``.

    Args:
        x: float ``[n, d]`` inputs.

    Returns:
        λ_max.
    """
    xb = np.hstack([x, np.ones((x.shape[0], 1))]).astype(np.float64)
    return 0.25 * float(np.linalg.eigvalsh(xb.T @ xb / x.shape[0])[-1])


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
        x: float32 ``[1000, 784]`` inputs.
        y: float32 ``[1000, 1]`` labels.
        batch_size: Examples per step.
        epochs: Epochs.

    Example:
        >>> plan = build("healthy", Settings(quick=True))  # doctest: +SKIP
        >>> plan.batch_size, plan.epochs  # doctest: +SKIP
        (50, 8)
    """

    model: keras.Model
    x: np.ndarray
    y: np.ndarray
    batch_size: int
    epochs: int


def build(kind: str, settings: Settings) -> Plan:
    """Builds the data and compiles the model of one run.

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
    x, y = make_data()
    batch = BATCH
    if kind == "exploding":
        # Leaky ReLU: with plain ReLU a huge step can kill every unit first,
        # and a dead network has a zero gradient instead of an exploding one.
        model = _mlp([64, 64, 64, 64], "leaky_relu", name="exploding")
        # The rate grows tenfold every epoch (1e-2, 0.1, 1, …): stable for a
        # while, then not. The blow-up comes within the first three epochs,
        # whatever the run's length, as seed 004's comes after a few epochs.
        lr = keras.optimizers.schedules.ExponentialDecay(
            1e-2, decay_steps=N_EXAMPLES // BATCH, decay_rate=10.0
        )
        opt = keras.optimizers.SGD(lr)
    elif kind == "vanishing":
        init = keras.initializers.RandomNormal(stddev=0.01)
        model = _mlp([32] * 6, "sigmoid", init=init, name="vanishing")
        opt = keras.optimizers.SGD(0.01)
    elif kind == "oscillating":
        model = _mlp([], None, init="zeros", name="oscillating")
        x, y = make_data(label_noise=0.25)
        # Past 2 / λ_max each full-batch step overshoots along the top
        # curvature direction; the logistic loss's saturation keeps the weights
        # bounded, so the loss swings without end instead of diverging.
        opt = keras.optimizers.SGD(UNSTABLE_STEP / logistic_curvature(x))
        batch = N_EXAMPLES
        # One step per epoch: enough epochs for a trend (diagnosis needs 20).
        epochs = settings.epochs(full=60, quick=30)
    elif kind == "healthy":
        model = _mlp([32, 32], "relu", name="healthy")
        opt = keras.optimizers.Adam(1e-3)
    else:
        raise ValueError(f"unknown seed-004 run: {kind!r}")
    model.compile(optimizer=opt, loss=loss, metrics=["accuracy"])
    return Plan(model, x, y, batch, epochs)


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
    cb = GradientHealthCallback(run_dir(logdir, name), update_freq=1)
    plan.model.fit(
        plan.x,
        plan.y,
        batch_size=plan.batch_size,
        epochs=plan.epochs,
        shuffle=True,
        verbose=settings.verbose,
        callbacks=[cb],
    )
    cb.close()
    done()
