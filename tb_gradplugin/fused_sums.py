"""A large variable's step sums and its running gradient sum in one pass, on a CPU.

TensorFlow runs one kernel per op on a CPU: a large variable's sums
(``stats.variable_sums``: ``Σg²``; ``Σ|g|`` and the zero count through a
temporary of the gradient's size; ``Σw²``; ``Σ(Δw)²``) and the addition to its
running sum (``step_reduction.py``) are about nine passes over memory, and the
temporary's pages are faulted in again at each step. Here one compiled loop
(:mod:`tb_gradplugin.fused_kernels`: numba, parallel over the cores, sums
reassociated so that they vectorise) reads each array once: the gradient, the
running sum (added to in place), the parameters after the update and the
optimizer's increment (or the parameters before), accumulating the six sums in
float64. Measured on the 2-core dev machine, a float32 gradient with its
increment, 10 alternating repetitions of 10 calls, median time over a baseline
function: 3.4 ms (TensorFlow's ops) against 0.75 ms at 2 M entries, 5.2 against
2.5 ms at 4 M; at 1 M entries, in the CPU's caches, 0.64 against 0.84 ms (the
call costs more than it saves). The whole compiled step
(``benchmarks/step_ops.py``, 3 repetitions): the 8 M MLP 1.17x -> 1.09x CPU,
the 30 M MLP 1.20x -> 1.11x. So a variable of at least :data:`FUSED_MIN_SIZE`
entries whose step runs on a CPU, without XLA and on one replica, has its
running sum here (a numpy array, 4 bytes an entry like the ``tf.Variable`` it
replaces) and its update's sums from one ``tf.numpy_function`` call for all
such variables of the update (TensorFlow hands it the tensors without a copy).
A sparse gradient's distinct rows are summed and added the same way; its
parameter sums stay TensorFlow's ``l2_loss``. The loops compile at their first
call (a second or two, in the first step; numba then caches them on disk).
Without numba every variable takes TensorFlow's ops.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from tb_gradplugin import stats

FUSED_MIN_SIZE = 3 * 2**19
"""Entries (1.5 M, 6 MB) from which a variable is reduced by the compiled pass:
between 1 M and 2 M entries, where its arrays leave this machine's caches."""

# The compiled loops run on numba's thread pool, which one call at a time may
# use (its default threading layer is not re-entrant).
_LOCK = threading.Lock()
logger = logging.getLogger(__name__)


@functools.cache
def kernels_available() -> bool:
    """Whether the compiled loops load: numba is installed and can cache them."""
    if importlib.util.find_spec("numba") is None:
        return False
    try:
        import tb_gradplugin.fused_kernels  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any failure: TensorFlow's ops instead
        logger.warning(
            "GradientHealthCallback: numba's loops did not load (%s); large "
            "variables are reduced with TensorFlow's ops.",
            err,
        )
        return False
    return True


def eligible(
    variable: Any, size: int, strategy: tf.distribute.Strategy, jit: bool
) -> bool:
    """Whether a variable's gradient is reduced by the fused pass.

    Args:
        variable: The variable (Keras or TensorFlow).
        size: Its entries.
        strategy: The model's distribution strategy: one replica only (each
            replica would add the global gradient to the one host array).
        jit: Whether the step is XLA-compiled (no ``numpy_function`` there).

    Returns:
        ``True`` for a variable of at least :data:`FUSED_MIN_SIZE` entries
        placed on a CPU, without XLA, on one replica, with numba's loops
        loaded.
    """
    if size < FUSED_MIN_SIZE or jit or strategy.num_replicas_in_sync != 1:
        return False
    device = getattr(getattr(variable, "value", variable), "device", "") or ""
    if device:
        on_cpu = tf.DeviceSpec.from_string(device).device_type == "CPU"
    else:
        on_cpu = not tf.config.list_logical_devices("GPU")
    return on_cpu and kernels_available()


class Update(NamedTuple):
    """One fused variable's update in a step.

    Attributes:
        index: The variable's index.
        values: Its float32 gradient: dense in the variable's shape, or a
            sparse gradient's distinct summed rows ``[u, ...]``.
        rows: The rows' indices ``[u]`` (sparse), else ``None``.
        after: The parameters after the update (dense), else ``None``.
        other: The optimizer's increment when ``increment``, else the
            parameters before the update (dense), else ``None``.
        increment: Whether ``other`` is the increment.
    """

    index: int
    values: Any
    rows: Any = None
    after: Any = None
    other: Any = None
    increment: bool = False


class FusedSums:
    """The running sums of the fused variables, and the in-step calls that use them.

    Args:
        shapes: ``{variable index: shape}`` of the fused variables.

    Example:
        >>> fused = FusedSums({0: (3, 4)})
        >>> ones = tf.ones([3, 4])
        >>> update = Update(0, ones, after=ones, other=ones, increment=True)
        >>> fused.step([update], tf.constant(True)).numpy().tolist()
        [12.0, 12.0, 0.0, 0.0, 12.0, 12.0]
    """

    def __init__(self, shapes: dict[int, Sequence[int]]):
        self.failed = False
        self.shapes = {i: tuple(int(d) for d in s) for i, s in shapes.items()}
        self.running = {
            i: np.zeros(int(np.prod(s, dtype=np.int64)), np.float32)
            for i, s in self.shapes.items()
        }

    def _fail(self, err: Exception) -> None:
        """A loop failed: its variables' sums are NaN from now on, training goes on."""
        self.failed = True
        logger.warning(
            "GradientHealthCallback: the fused reduction failed (%s); the large "
            "variables' statistics are not recorded from this step on.",
            err,
        )

    @property
    def indices(self) -> list[int]:
        """The fused variables' indices."""
        return list(self.running)

    def step(self, updates: Sequence[Update], add):
        """In the step: the updates' sums, each gradient added to its running sum.

        Args:
            updates: The fused variables' updates.
            add: Scalar bool tensor: add to the running sums (not on a
                skipped step).

        Returns:
            float32 ``[6 n]``: per update :data:`stats.SUM_COLUMNS`
            (``Σg²``, ``Σ|g|``, entries exactly 0, NaN/Inf entries, ``Σw²``,
            ``Σ(Δw)²``); for a sparse gradient the last two are NaN (the
            caller's ``l2_loss``).
        """
        updates = list(updates)
        # Per update: its variable, where its arrays start among the host
        # function's arrays, whether it is sparse, whether ``other`` is Δw.
        arrays, plan = [], []
        for u in updates:
            plan.append((u.index, len(arrays), u.rows is not None, u.increment))
            if u.rows is None:
                arrays.extend(
                    tf.reshape(stats.as_float32(t), [-1])
                    for t in (u.values, u.after, u.other)
                )
            else:
                arrays.extend([u.values, u.rows])

        def host(add, *arrays):
            import tb_gradplugin.fused_kernels as kernels

            add = bool(add)
            out = np.full(6 * len(plan), np.nan)
            with _LOCK:
                if self.failed:
                    return out.astype(np.float32)
                try:
                    for k, (i, start, sparse, increment) in enumerate(plan):
                        running = self.running[i]
                        if sparse:
                            values, rows = arrays[start : start + 2]
                            running = running.reshape(self.shapes[i][0], -1)
                            values = values.reshape(values.shape[0], -1)
                            sums = kernels.rows_pass(values, rows, running, add)
                        else:
                            values, after, other = arrays[start : start + 3]
                            sums = kernels.gradient_pass(
                                values, running, add, after, other, increment
                            )
                        # The loops count the entries ≠ 0; the rest, and the
                        # rows a sparse gradient does not list, are zeros.
                        sums[2] = running.size - sums[2]
                        out[6 * k : 6 * k + len(sums)] = sums
                except Exception as err:  # noqa: BLE001 - training goes on
                    self._fail(err)
                    out[:] = np.nan
            return out.astype(np.float32)

        result = tf.numpy_function(host, [add, *arrays], tf.float32, stateful=True)
        return tf.reshape(result, [6 * len(updates)])

    def close(self, slices: dict[int, Sequence[stats.SliceSpec]]):
        """In the step: each running sum's ``|S|²``, zeros and slice ``|S|²``; then 0.

        Args:
            slices: ``{variable index: its slices}``, every fused variable.

        Returns:
            float32 ``[sum(2 + slices)]``: per fused variable, in
            :attr:`indices` order, ``|S|²``, entries exactly 0, then each
            slice's ``|S|²``.
        """
        indices = self.indices
        width = sum(2 + len(slices.get(i, ())) for i in indices)

        def host():
            import tb_gradplugin.fused_kernels as kernels

            out = []
            with _LOCK:
                try:
                    for i in indices:
                        running = self.running[i]
                        view = running.reshape(self.shapes[i] or (1,))
                        parts = [
                            np.sum(np.square(view[..., s.start : s.stop], dtype=float))
                            for s in slices.get(i, ())
                        ]
                        out.extend(kernels.close_pass(running))  # then reset
                        out.extend(parts)
                except Exception as err:  # noqa: BLE001 - training goes on
                    self._fail(err)
                if self.failed:
                    # After a failed step the sums miss steps: no value.
                    return np.full(width, np.nan, np.float32)
            return np.array(out, np.float32)

        result = tf.numpy_function(host, [], tf.float32, stateful=True)
        return tf.reshape(result, [width])
