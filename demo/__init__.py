"""The demo: every seed experiment trained with the callback, as TensorBoard runs.

``python -m demo --logdir DIR [--quick]`` trains the experiments of
``shared/seeds`` (one module each) and writes each as a run under ``DIR``:

* :mod:`demo.matryoshka` (seeds 000/001): ``mrl`` and ``smrl``, embedding
  slices ω[0:96] and ω[96:192];
* :mod:`demo.causal_lm` (seed 002): ``hrm_0.001``, ``hrm_0.5``, ``hrm_10.0``,
  with ``kl_loss`` and ``causal_lm_loss`` as loss components;
* :mod:`demo.seed003` (seed 003): ``mnist_run0`` … ``mnist_run7`` (trajectory
  view, per-layer minimal ratio) and ``function_fit`` (whole-model minimal
  ratio);
* :mod:`demo.seed004` (seed 004): ``exploding``, ``vanishing``,
  ``oscillating`` and ``healthy``.

Seeds 003 and 004 train on scikit-learn's handwritten digits at MNIST's
28×28, seed 002 on the documentation text that ships with Python (both in
:mod:`demo.data`); seeds 000/001's documents and seed 003's function are
generated with numpy. Nothing is downloaded, and every choice of examples,
weights and batches follows a fixed seed. This module holds what the
experiments share.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

RUNS = {
    "matryoshka": ("mrl", "smrl"),
    "causal_lm": ("hrm_0.001", "hrm_0.5", "hrm_10.0"),
    "seed003": (*(f"mnist_run{i}" for i in range(8)), "function_fit"),
    "seed004": ("exploding", "vanishing", "oscillating", "healthy"),
}
"""The run names of each experiment module of :mod:`demo`, in the demo's order.

Kept here, not in the modules, so that listing the runs imports no TensorFlow.
"""

EXPERIMENTS = tuple(RUNS)
"""The experiment modules of :mod:`demo`."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """How long the experiments train.

    Attributes:
        quick: Whether this is the ``--quick`` demo (fewer epochs, the same
            experiments).
        verbose: Keras's ``fit`` verbosity (``2`` = one line per epoch).

    Example:
        >>> Settings(quick=True).epochs(full=30, quick=10)
        10
    """

    quick: bool = False
    verbose: int = 2

    def epochs(self, full: int, quick: int) -> int:
        """Returns the epochs of an experiment.

        Args:
            full: Epochs of the full demo.
            quick: Epochs of the ``--quick`` demo.

        Returns:
            ``quick`` under ``--quick``, else ``full``.
        """
        return quick if self.quick else full


def seed_everything(seed: int) -> None:
    """Seeds Python, numpy, TensorFlow and Keras for one run.

    Args:
        seed: The seed.
    """
    import keras

    keras.utils.set_random_seed(seed)


def train_one(experiment: str, name: str, logdir: str, quick: bool) -> float:
    """Trains one run of an experiment module (in this process).

    Args:
        experiment: The module's name in :data:`EXPERIMENTS`.
        name: The run, one of ``RUNS[experiment]``.
        logdir: The demo's log directory.
        quick: Whether this is the ``--quick`` demo.

    Returns:
        The seconds it took.
    """
    import importlib

    start = time.perf_counter()
    module = importlib.import_module(f"demo.{experiment}")
    module.train_run(name, os.fspath(logdir), Settings(quick=quick))
    return time.perf_counter() - start


def run_dir(logdir: str | os.PathLike, name: str) -> str:
    """Returns the directory of a run, ``logdir/name``.

    Args:
        logdir: The demo's log directory.
        name: The run name.

    Returns:
        The path.
    """
    return os.path.join(os.fspath(logdir), name)


def announce(name: str, what: str) -> Callable[[], float]:
    """Prints the start of a run and returns a function giving its duration.

    Args:
        name: The run name.
        what: One line saying what the run trains.

    Returns:
        A function that prints and returns the seconds since the start.
    """
    print(f"\n=== {name}: {what}", flush=True)
    start = time.perf_counter()

    def done() -> float:
        took = time.perf_counter() - start
        print(f"=== {name} done in {took:.1f} s", flush=True)
        return took

    return done
