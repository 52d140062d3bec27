"""The step ring: each training step's raw figures, kept in variables.

The compiled train step does no statistics: it concatenates its flat gradient,
its flat parameters after the update, a few scalars and its step into one row
and scatters that row into the ring: one concat and one scatter op (the op
count, more than the bytes, is what a 1 ms step pays for). The rows are
reduced in blocks, away from the step, by ``reducer.py``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tb_gradplugin import stats

SCALARS = ("loss", "learning_rate", "loss_scale", "skipped", "batch_size")
"""The per-step scalar columns, in order; loss components follow them."""

DEFAULT_BUDGET_BYTES = 64 * 2**20  # 64 MiB of ring per model (two [rows, P] f32).
MAX_BLOCK_STEPS = 64  # steps reduced together; more saves nothing measurable.


def block_steps(num_params: int, steps_per_execution: int, budget: int) -> int:
    """Steps per reduced block, so that two blocks and their slack fit the budget.

    Args:
        num_params: Trainable parameters ``P``.
        steps_per_execution: The model's ``steps_per_execution``.
        budget: Bytes the two ``[rows, P]`` float32 rings may take.

    Returns:
        A multiple of ``steps_per_execution``, at least one execution.
    """
    spe = max(int(steps_per_execution), 1)
    rows = budget // max(8 * num_params, 1)
    steps = min(MAX_BLOCK_STEPS, max((rows - 2) // 2, 1))
    return max(steps // spe, 1) * spe


class StepRing:
    """Rows of raw per-step figures, written in the step and read in blocks.

    A block is read while the step goes on writing: the host starts a block's
    reduction only after the previous one ended, and the ring holds two blocks
    plus slack, so the rows being read are never overwritten.

    Args:
        num_params: Length ``P`` of the flat gradient and parameter vectors.
        num_components: Loss components recorded per step.
        rows: Rows in the ring (two blocks and two rows of slack).
        strategy: The model's distribution strategy; the variables are
            mirrored and written by the first replica only.

    Example:
        >>> ring = StepRing(10, 0, rows=6, strategy=tf.distribute.get_strategy())
        >>> ring.rows
        6
    """

    def __init__(
        self,
        num_params: int,
        num_components: int,
        rows: int,
        strategy: tf.distribute.Strategy,
    ):
        self.rows = int(rows)
        self.num_params = int(num_params)
        self.width = len(SCALARS) + int(num_components)
        # Row layout: gradient [P], parameters [P], scalars [width], and the
        # int64 step as two float32 words (bitcast, exact).
        self.row_width = 2 * self.num_params + self.width + 2
        with strategy.scope():
            self.data = _var(np.zeros([self.rows, self.row_width], np.float32))
            self.count = _var(np.int64(0))
            self.nan_seen = _var(np.int32(0))

    def record(
        self,
        grad: tf.Tensor,
        params: tf.Tensor,
        scalars: tf.Tensor,
        step: tf.Tensor,
        bad: tf.Tensor | None = None,
    ) -> tf.Operation:
        """Writes one step's row (in the train step).

        Args:
            grad: The flat, unscaled gradient ``[P]``, or the list of the
                variables' gradients (flattened here, in the same concat).
            params: The flat parameters after the step ``[P]``, or the list of
                the variables' values.
            scalars: The :data:`SCALARS` and loss components ``[width]``, or
                a list of scalars and vectors that make them up.
            step: The optimizer's iterations after the step, int64.
            bad: Whether the step saw a NaN/Inf (for ``stop_on_nan``).
                Defaults to ``None``: not tracked.

        Returns:
            The grouped update ops.
        """
        step_words = tf.bitcast(tf.reshape(tf.cast(step, tf.int64), [1]), tf.float32)
        row = stats.flatten(
            [*_listed(grad), *_listed(params), *_listed(scalars), step_words]
        )
        slot = tf.reshape(self.count % self.rows, [1])
        ops = [
            self.data.scatter_update(tf.IndexedSlices(row[None], slot)),
            self.count.assign_add(1),
        ]
        if bad is not None:
            ops.append(
                self.nan_seen.assign(tf.maximum(self.nan_seen, tf.cast(bad, tf.int32)))
            )
        return tf.group(ops)

    def read(self, start: tf.Tensor, stop: tf.Tensor) -> tf.Tensor:
        """Gathers the rows of steps ``[start, stop)`` (counted since creation).

        Args:
            start: First row number, int64.
            stop: One past the last row number, int64.

        Returns:
            The rows ``[n, row_width]``; :meth:`split` takes them apart.
        """
        idx = tf.range(start, stop, dtype=tf.int64) % self.rows
        return tf.gather(self.data, idx)

    def split(
        self, block: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Takes read rows apart (numpy views, no copy but the steps).

        Args:
            block: Rows from :meth:`read`, ``[n, row_width]``.

        Returns:
            ``(grads [n, P], params [n, P], scalars [n, width], steps [n])``.
        """
        p, w = self.num_params, self.width
        steps = np.ascontiguousarray(block[:, 2 * p + w :]).view(np.int64)[:, 0]
        return block[:, :p], block[:, p : 2 * p], block[:, 2 * p : 2 * p + w], steps


def _listed(value) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


def _var(value: np.ndarray) -> tf.Variable:
    return tf.Variable(
        value,
        trainable=False,
        synchronization=tf.VariableSynchronization.ON_WRITE,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )
