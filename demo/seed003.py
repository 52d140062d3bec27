"""Seed 003: what happens when the gradient is almost zero.

Seed 003 (a homework of an ML course) trains

* an MNIST classifier of 16,750 parameters on 1,000 training examples, 30
  epochs at batch 200, eight times, and projects the parameters of every
  training onto two principal components (the trajectory view), with the
  Hessian's minimal ratio (the share of positive eigenvalues) computed per
  layer on the assumption that the Hessian is block-diagonal;
* a network of 1,090 parameters that fits a simple function, with the minimal
  ratio of the whole model's Hessian against the loss.

The classifier trains on real handwritten digits: 1,000 of scikit-learn's
(100 of each digit), resized to MNIST's 28×28 layout by :mod:`demo.data`, so
that seed 003's network keeps its 784 inputs. The function is seed 003's
``sin(5πx) / (5πx)`` on ``[0, 1]``.

The MLP is 784-20-20-20-10 with ReLU: 15,700 + 420 + 420 + 210 = 16,750
parameters. The function network is 1-20-24-15-10-1 with ReLU: 40 + 504 + 375 +
160 + 11 = 1,090 parameters.
"""

from __future__ import annotations

import keras
import numpy as np

from demo import RUNS as _ALL_RUNS
from demo import Settings, announce, data, run_dir, seed_everything
from tb_gradplugin import GradientHealthCallback

RUNS = _ALL_RUNS["seed003"]
MNIST_RUNS = RUNS[:8]
"""The run names this experiment writes."""

MNIST_PARAMS = 16_750
FUNCTION_PARAMS = 1_090
N_EXAMPLES = 1000  # seed 003: "The training data size is 1000"
BATCH = 200  # seed 003: "batch size is 200"
CLASSES = 10
SIDE = data.SIDE  # pixels: MNIST's 28×28
SEED = 3


def make_digits(seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Picks seed 003's 1,000 training images from scikit-learn's digits.

    Args:
        seed: The numpy seed of the choice and order. Defaults to 3.

    Returns:
        ``(x, y)``: float32 ``[1000, 784]`` pixels in [0, 1] (28×28 images)
        and int32 ``[1000]`` digits, 100 of each.
    """
    x, y = data.handwritten_digits()
    pick = data.balanced_subset(y, N_EXAMPLES // CLASSES, seed)
    return x[pick], y[pick]


def make_function(seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Samples seed 003's function ``sin(5πx) / (5πx)`` at 1,000 points of [0, 1].

    Args:
        seed: The numpy seed. Defaults to 3.

    Returns:
        ``(x, y)``: float32 ``[1000, 1]`` each.
    """
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, (N_EXAMPLES, 1))
    y = np.sinc(5 * x)  # numpy's sinc is sin(πt)/(πt): t = 5x
    return x.astype(np.float32), y.astype(np.float32)


def mnist_model() -> keras.Model:
    """The 784-20-20-20-10 ReLU classifier of 16,750 parameters."""
    model = keras.Sequential(
        [
            keras.Input((SIDE * SIDE,)),
            keras.layers.Dense(20, activation="relu", name="dense_1"),
            keras.layers.Dense(20, activation="relu", name="dense_2"),
            keras.layers.Dense(20, activation="relu", name="dense_3"),
            keras.layers.Dense(CLASSES, name="logits"),
        ],
        name="mnist_mlp",
    )
    assert model.count_params() == MNIST_PARAMS
    return model


def function_model() -> keras.Model:
    """The 1-20-24-15-10-1 ReLU regressor of 1,090 parameters."""
    layers = [keras.Input((1,))]
    for i, width in enumerate((20, 24, 15, 10)):
        layers.append(keras.layers.Dense(width, activation="relu", name=f"dense_{i}"))
    layers.append(keras.layers.Dense(1, name="out"))
    model = keras.Sequential(layers, name="function_fit")
    assert model.count_params() == FUNCTION_PARAMS
    return model


def train_run(name: str, logdir: str, settings: Settings) -> None:
    """Trains one run into ``logdir/name``.

    The eight MNIST runs differ only in their seed (initial weights and batch
    order): their trajectories share the callback's fixed projection, so the
    tab can put them in one PCA.

    Args:
        name: One of :data:`RUNS`.
        logdir: The demo's log directory.
        settings: How long to train.

    Raises:
        ValueError: For an unknown run name.
    """
    if name in MNIST_RUNS:
        index = MNIST_RUNS.index(name)
        epochs = settings.epochs(full=30, quick=10)  # seed 003: 30 epochs
        hessian_freq = settings.epochs(full=3, quick=5)
        done = announce(
            name,
            f"seed 003 digit MLP ({MNIST_PARAMS} parameters), seed {index}, "
            f"{epochs} epochs",
        )
        seed_everything(SEED * 100 + index)
        x, y = make_digits()
        model = mnist_model()
        model.compile(
            optimizer=keras.optimizers.Adam(3e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        batch = BATCH
    elif name == "function_fit":
        epochs = settings.epochs(full=200, quick=40)
        # Five spectra in --quick: each exact one costs ~7 s of CPU here.
        hessian_freq = settings.epochs(full=10, quick=8)
        done = announce(
            name,
            f"seed 003 function fit ({FUNCTION_PARAMS} parameters), {epochs} epochs",
        )
        seed_everything(SEED)
        x, y = make_function()
        model = function_model()
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        batch = 100
    else:
        raise ValueError(f"unknown seed-003 run: {name!r}")
    rng = np.random.default_rng(SEED)
    probe = rng.choice(N_EXAMPLES, BATCH, replace=False)
    cb = GradientHealthCallback(
        run_dir(logdir, name),
        update_freq=1,
        hessian_freq=hessian_freq,
        trajectory_freq=1,
        probe_data=(x[probe], y[probe]),
    )
    model.fit(
        x, y, batch_size=batch, epochs=epochs, verbose=settings.verbose, callbacks=[cb]
    )
    cb.close()
    done()
