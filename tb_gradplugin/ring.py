"""The step ring: one small row of statistics per training step, on the device.

The compiled train step reduces its gradients to per-variable sums
(``stats.py``) and writes them, with a few scalars and its step, as one row of
``K = O(variables + slices + loss components)`` float32 numbers into a ring of
``[rows, K]`` variables: one stack and one scatter. The host reads the rows in
blocks (``reducer.py``); nothing of the model's size leaves the step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from tb_gradplugin import stats

SCALARS = (
    "loss",
    "loss_known",
    "learning_rate",
    "loss_scale",
    "skipped",
    "batch_size",
)
"""The per-step scalar columns, in order; loss components follow them.

``loss_known`` is 1 when the step updated a metric named ``loss`` (the loss
Keras logs), else 0 and ``loss`` is NaN: no value, not a non-finite one.
"""

MAX_BLOCK_STEPS = 64  # steps read together; more saves nothing measurable.
BLOCKS_IN_FLIGHT = 2  # blocks the writer may hold before the step waits for it.


class Packing:
    """Named column ranges of a packed float32 row.

    Args:
        widths: ``(name, width)`` pairs, in column order.

    Example:
        >>> p = Packing([("a", 1), ("v", 3)])
        >>> p.width, p.index["v"]
        (4, slice(1, 4, None))
    """

    def __init__(self, widths: Sequence[tuple[str, int]]):
        self.index: dict[str, slice] = {}
        pos = 0
        for name, width in widths:
            self.index[name] = slice(pos, pos + int(width))
            pos += int(width)
        self.width = pos

    def pack(self, fields: Mapping[str, np.ndarray], rows: int) -> np.ndarray:
        """Packs ``{name: [k] or [k, width]}`` into ``[k, self.width]``.

        Args:
            fields: The values by name; a missing name packs zeros.
            rows: ``k``, the number of rows.

        Returns:
            The packed float32 rows.
        """
        out = np.zeros([rows, self.width], np.float32)
        for name, sl in self.index.items():
            value = fields.get(name)
            if value is not None:
                out[:, sl] = np.reshape(value, [rows, sl.stop - sl.start])
        return out


def row_packing(num_variables: int, num_slices: int, num_components: int) -> Packing:
    """The columns of a step row.

    Args:
        num_variables: Trainable variables ``V``.
        num_slices: Named slices ``S``.
        num_components: Loss components recorded per step ``C``.

    Returns:
        The packing: :data:`SCALARS`, ``components`` [C], one [V] range per
        :data:`stats.SUM_COLUMNS`, ``slice_<col>`` [S] per
        :data:`stats.SLICE_COLUMNS`, ``closed`` (1 when the step closed a
        variance window), ``sum_sq`` and ``sum_zero`` [V] and ``slice_sum_sq``
        [S] of the running gradient sum at that close, and ``step`` (the int64
        step as two float32 words).
    """
    v, s = int(num_variables), int(num_slices)
    return Packing(
        [(name, 1) for name in SCALARS]
        + [("components", num_components)]
        + [(name, v) for name in stats.SUM_COLUMNS]
        + [("slice_" + name, s) for name in stats.SLICE_COLUMNS]
        + [("closed", 1)]
        + [(name, v) for name in stats.RUNNING_COLUMNS]
        + [("slice_sum_sq", s), ("step", 2)]
    )


def ring_rows(steps_per_execution: int) -> tuple[int, int]:
    """Steps per block and rows in the ring.

    Args:
        steps_per_execution: The model's ``steps_per_execution``.

    Returns:
        ``(block, rows)``: a block is a multiple of ``steps_per_execution``;
        the ring holds the blocks in flight, the one being written, and slack.
    """
    spe = max(int(steps_per_execution), 1)
    block = max(MAX_BLOCK_STEPS // spe, 1) * spe
    return block, (BLOCKS_IN_FLIGHT + 2) * block + 2 * spe


def step_words(step) -> tf.Tensor:
    """The int64 step as two float32 words (bitcast: exact), shape ``[2]``."""
    step = tf.cast(step, tf.int64)
    if step.shape.rank:
        step = tf.reshape(step, [])
    return tf.bitcast(step, tf.float32)


def steps_of(rows: np.ndarray, packing: Packing) -> np.ndarray:
    """The int64 steps of read rows ``[n, K]`` (inverse of :func:`step_words`)."""
    return np.ascontiguousarray(rows[:, packing.index["step"]]).view(np.int64)[:, 0]


class StepRing:
    """Rows of per-step statistics, written in the step and read in blocks.

    The host reads a block while the step goes on writing; it lets at most
    :data:`BLOCKS_IN_FLIGHT` blocks wait to be read, and the ring holds more,
    so the rows being read are never overwritten.

    Args:
        width: Columns ``K`` of a row.
        rows: Rows in the ring.
        strategy: The model's distribution strategy; the variables are
            mirrored and written by the first replica only.

    Example:
        >>> ring = StepRing(10, rows=6, strategy=tf.distribute.get_strategy())
        >>> ring.rows
        6
    """

    def __init__(self, width: int, rows: int, strategy: tf.distribute.Strategy):
        self.rows = int(rows)
        self.width = int(width)
        with strategy.scope():
            self.data = _var(np.zeros([self.rows, self.width], np.float32))
            self.count = _var(np.int64(0))
            self.nan_seen = _var(np.int32(0))

    def record(self, row: tf.Tensor, bad: tf.Tensor | None = None) -> tf.Operation:
        """Writes one step's row (in the train step).

        Args:
            row: The packed row ``[width]``, float32.
            bad: Whether the step saw a NaN/Inf (for ``stop_on_nan``).
                Defaults to ``None``: not tracked.

        Returns:
            The grouped update ops.
        """
        # A scalar index writes the row as it is: no reshapes around the op.
        slot = self.count % self.rows
        ops = [
            self.data.scatter_update(tf.IndexedSlices(row, slot)),
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
            The rows ``[n, width]``.
        """
        idx = tf.range(start, stop, dtype=tf.int64) % self.rows
        return tf.gather(self.data, idx)


def _var(value: np.ndarray) -> tf.Variable:
    """A ring variable, each replica writing its own copy.

    Under a distribution strategy each replica writes the same rows (its
    figures are of the global gradient), and the host reads the first
    replica's copy. ``ONLY_FIRST_REPLICA`` would make every write a merge
    call that waits for all replicas and broadcasts the value.
    """
    return tf.Variable(
        value,
        trainable=False,
        synchronization=tf.VariableSynchronization.ON_WRITE,
        aggregation=tf.VariableAggregation.NONE,
    )
