"""In the step: one update's gradients and parameters reduced to a row's sums.

Each optimizer update inside the compiled train step hands its gradients and
the parameters before and after it to :class:`StepReduction`, which reduces
them to a few sums per variable and per slice (``stats.py``) and adds the
gradients to a running sum per variable (one float32 slot per parameter), from
which the window variance is computed exactly when a window closes. Nothing of
the model's size leaves the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from tb_gradplugin import stats


class StepReduction:
    """The per-variable sums of a step and the running gradient sums.

    Args:
        layout: The variables' layout (paths, sizes, slices).
        variables: The variables, in the layout's order.
        strategy: The model's distribution strategy (the running sums are
            created in its scope).
        jit: Whether the step is XLA-compiled (sparse gradients are then
            densified: their distinct rows have no static shape).
        variance_window: Steps per variance window, or ``"epoch"``.
    """

    def __init__(
        self,
        layout: stats.Layout,
        variables: Sequence[Any],
        strategy: tf.distribute.Strategy,
        jit: bool,
        variance_window: int | str,
    ):
        self.layout = layout
        self.variables = list(variables)
        self.jit = jit
        self.variance_window = variance_window
        self.sparse_paths: set[str] = set()
        with strategy.scope():
            # The gradient summed over the open variance window: one float32
            # slot per parameter, like one optimizer moment.
            self.running = [
                tf.Variable(
                    tf.zeros(v.shape, tf.float32),
                    trainable=False,
                    synchronization=tf.VariableSynchronization.ON_WRITE,
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                )
                for v in self.variables
            ]

    def collect(self, collected, by_index, before, after, scale, skipped, conditional):
        """Reduces the gradients of one update to sums; adds to the running sums.

        Args:
            collected: ``{variable index: (sums, float32 gradient)}`` of the
                step so far, added to here.
            by_index: ``{variable index: gradient}`` of the update.
            before: ``{variable index: parameters before the update}``.
            after: ``{variable index: parameters after the update}``.
            scale: The loss scale to divide the gradients by, or ``None``.
            skipped: Scalar bool tensor: the update was not applied.
            conditional: Whether ``skipped`` can be true.
        """
        layout = self.layout
        inv = None if scale is None else 1.0 / scale
        for i in before:
            g, size = by_index.get(i), layout.sizes[i]
            values = None
            if g is None:
                # Updated without a gradient: nothing was seen, so no value.
                nan = tf.constant(float("nan"))
                sums = [nan, nan, nan]
            else:
                sparse = stats.is_sparse(g)
                if sparse:
                    self.sparse_paths.add(layout.paths[i])
                # Under XLA the distinct rows have no static shape: densify.
                if sparse and not self.jit and len(layout.shapes[i]) > 1:
                    rows, indices = stats.unique_rows(g)
                    values = stats.as_float32(rows)
                else:
                    indices = None
                    values = stats.as_float32(tf.convert_to_tensor(g))
                if inv is not None:
                    values = values * inv
                sums = stats.gradient_sums(values, size)
                self._accumulate(i, values, indices, skipped, conditional)
            sums += stats.parameter_sums(before[i], after[i])
            collected[i] = (sums, values)

    def step_parts(self, collected):
        """The step's ``[V]`` sum vectors and ``[S]`` slice vectors, in row order.

        Args:
            collected: What :meth:`collect` gathered over the step's updates.

        Returns:
            ``(parts, nonfinite)``: the vectors of :data:`stats.SUM_COLUMNS`
            and :data:`stats.SLICE_COLUMNS`, NaN for a variable no optimizer
            updated at this step; the step's NaN/Inf count.
        """
        layout = self.layout
        nan = tf.constant(float("nan"))
        names = [n for n in stats.SUM_COLUMNS if n != "grad_nonfinite"]
        columns = {name: [] for name in names}
        slice_columns = [[None] * len(layout.slices) for _ in stats.SLICE_COLUMNS]
        for i in range(layout.num_variables):
            sums, values = collected.get(i, ([nan] * len(names), None))
            for column, value in zip(columns.values(), sums, strict=True):
                column.append(value)
            for pos, spec in layout.slices_of(i):
                part = [nan, nan] if values is None else stats.slice_sums(values, spec)
                for column, value in zip(slice_columns, part, strict=True):
                    column[pos] = value
        vectors = {name: tf.stack(column) for name, column in columns.items()}
        present = sorted(i for i, (_, v) in collected.items() if v is not None)
        counts = [tf.zeros([], tf.float32)] * layout.num_variables
        if present:
            found = stats.nonfinite_counts(
                [collected[i][1] for i in present],
                [collected[i][0][0] for i in present],
            )
            for k, i in enumerate(present):
                counts[i] = found[k]
        vectors["grad_nonfinite"] = tf.stack(counts)
        parts = [vectors[name] for name in stats.SUM_COLUMNS]
        parts += [tf.stack(c) for c in slice_columns if c]
        return parts, tf.reduce_sum(vectors["grad_nonfinite"])

    def _accumulate(self, i, values, indices, skipped, conditional):
        running = self.running[i]

        def add():
            if indices is None:
                running.assign_add(values)
            else:
                running.scatter_add(tf.IndexedSlices(values, indices))
            return tf.constant(True)

        if conditional:
            # A skipped step (an overflow, a batch only accumulated) is not
            # in the window.
            tf.cond(skipped, lambda: tf.constant(False), add)
        else:
            add()

    def running_close(self):
        """Reduces the running sums (``stats.RUNNING_COLUMNS``, slices) and resets.

        Returns:
            ``[sum_sq [V], sum_zero [V], slice_sum_sq [S]]`` concatenated.
        """
        layout = self.layout
        sum_sq, sum_zero = [], []
        slice_sq = [None] * len(layout.slices)
        for i, running in enumerate(self.running):
            specs = layout.slices_of(i)
            out = stats.running_sum_sums(
                running.read_value(), layout.sizes[i], [s for _, s in specs]
            )
            sum_sq.append(out[0])
            sum_zero.append(out[1])
            for (pos, _), value in zip(specs, out[2:], strict=True):
                slice_sq[pos] = value
        vector = tf.stack([*sum_sq, *sum_zero, *slice_sq])
        with tf.control_dependencies([vector]):
            for running in self.running:
                running.assign(tf.zeros_like(running))
        return tf.identity(vector)

    def window_close(self, skipped, step):
        """In the step: closes a window of ``variance_window`` steps at its end.

        Returns:
            ``(closed, running)``: 1.0 when the window closed at this step,
            and :meth:`running_close`'s vector then (zeros otherwise).
        """
        width = 2 * self.layout.num_variables + len(self.layout.slices)
        if self.variance_window == "epoch":
            return tf.constant(0.0), tf.zeros([width], tf.float32)
        close = tf.logical_and(
            tf.logical_not(skipped),
            tf.equal(step % int(self.variance_window), 0),
        )
        running = tf.cond(
            close, self.running_close, lambda: tf.zeros([width], tf.float32)
        )
        return tf.cast(close, tf.float32), running
