"""The step ring: each training step's raw figures, kept in variables.

The compiled train step does no statistics: it copies its flat gradient, its
flat parameters after the update and a few scalars into the next row of this
ring (four scatter ops, ~20 µs a step for the 16,330-parameter MLP of seed 003
on this 2-core machine). The rows are reduced in blocks, away from the step,
by ``reducer.py``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

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
        self.width = len(SCALARS) + int(num_components)
        with strategy.scope():
            self.grads = _var(np.zeros([self.rows, num_params], np.float32))
            self.params = _var(np.zeros([self.rows, num_params], np.float32))
            self.scalars = _var(np.zeros([self.rows, self.width], np.float32))
            self.steps = _var(np.full([self.rows], -1, np.int64))
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
            grad: The flat, unscaled gradient ``[P]``.
            params: The flat parameters after the step ``[P]``.
            scalars: The :data:`SCALARS` and loss components ``[width]``.
            step: The optimizer's iterations after the step, int64.
            bad: Whether the step saw a NaN/Inf (for ``stop_on_nan``).
                Defaults to ``None``: not tracked.

        Returns:
            The grouped update ops.
        """
        slot = tf.reshape(self.count % self.rows, [1])
        ops = [
            self.grads.scatter_update(tf.IndexedSlices(grad[None], slot)),
            self.params.scatter_update(tf.IndexedSlices(params[None], slot)),
            self.scalars.scatter_update(tf.IndexedSlices(scalars[None], slot)),
            self.steps.scatter_update(tf.IndexedSlices(step[None], slot)),
            self.count.assign_add(1),
        ]
        if bad is not None:
            ops.append(
                self.nan_seen.assign(tf.maximum(self.nan_seen, tf.cast(bad, tf.int32)))
            )
        return tf.group(ops)

    def read(self, start: tf.Tensor, stop: tf.Tensor) -> tuple[tf.Tensor, ...]:
        """Gathers the rows of steps ``[start, stop)`` (counted since creation).

        Args:
            start: First row number, int64.
            stop: One past the last row number, int64.

        Returns:
            ``(grads [n, P], params [n, P], scalars [n, width], steps [n])``.
        """
        idx = tf.range(start, stop, dtype=tf.int64) % self.rows
        return tuple(
            tf.gather(v, idx)
            for v in (self.grads, self.params, self.scalars, self.steps)
        )


def _var(value: np.ndarray) -> tf.Variable:
    return tf.Variable(
        value,
        trainable=False,
        synchronization=tf.VariableSynchronization.ON_WRITE,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )
