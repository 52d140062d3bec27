"""Reduces blocks of ring rows to gradient statistics and writes them.

One ``tf.function`` call per block (up to 64 steps) gathers the rows from the
:class:`~tb_gradplugin.ring.StepRing`, computes every per-step and per-window
statistic with block-wide ops (``stats.py``) and writes the logged steps and
closed windows with ``tf.summary``. The callback runs it on a writer thread,
beside the training, so the step itself pays only for its ring row.

State carried from block to block: the parameters before the next row (for the
update norm), the NaN/Inf and skipped-step counts since the last logged step,
and the moments of the window still open.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tb_gradplugin import metadata, ring, stats

# Whole-model per-step scalars written every logged step, in this order
# (update_ratio is derived when writing; the loss scale and skipped steps only
# under mixed precision).
STEP_STATS = (
    "loss",
    "grad_norm",
    "param_norm",
    "update_norm",
    "learning_rate",
    "nonfinite_grads",
    "nonfinite_loss",
)
_WINDOW_PREFIXES = tuple(
    metadata.TAG_PREFIX + p for p in ("window/", "window_layer/", "slice/")
)
LAYER_STATS = (
    "grad_norm",
    "grad_mean_abs",
    "param_norm",
    "update_norm",
    "zero_fraction",
    "nonfinite_grads",
)


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

    def pack(self, fields: Mapping[str, tf.Tensor], rows: tf.Tensor) -> tf.Tensor:
        """Packs ``{name: [k] or [k, width]}`` into ``[k, self.width]``.

        Args:
            fields: The values by name; a missing name packs zeros.
            rows: ``k``, the number of rows.

        Returns:
            The packed float32 rows.
        """
        parts = []
        for name, sl in self.index.items():
            value = fields.get(name)
            n = sl.stop - sl.start
            if value is None:
                parts.append(tf.zeros([rows, n]))
            else:
                parts.append(tf.reshape(tf.cast(value, tf.float32), [rows, n]))
        return tf.concat(parts, axis=1)


class BlockReducer:
    """Statistics of ring blocks, written as gradient-health summaries.

    Args:
        layout: The trainable variables' layout.
        step_ring: The ring the train step writes.
        components: Names of the per-step loss components in the ring.
        update_freq: Log every N steps, or ``"epoch"``.
        window: Steps per variance window, or ``"epoch"``.
        mixed_precision: Whether the loss scale and skipped steps are written.

    Example:
        >>> r = BlockReducer(layout, ring, [], 1, "epoch", False)  # doctest: +SKIP
        >>> r.reduce(0, 16, False)  # doctest: +SKIP
    """

    def __init__(
        self,
        layout: stats.Layout,
        step_ring: ring.StepRing,
        components: Sequence[str],
        update_freq: int | str,
        window: int | str,
        mixed_precision: bool,
    ):
        self.layout = layout
        self.ring = step_ring
        self.components = list(components)
        self.epoch_mode = update_freq == "epoch"
        self.freq = 1 if self.epoch_mode else int(update_freq)
        self.window_epoch = window == "epoch"
        self.window = 0 if self.window_epoch else int(window)
        self.mixed_precision = bool(mixed_precision)
        v, s = layout.num_variables, len(layout.slices)
        self.rows = Packing(
            [(name, 1) for name in (*STEP_STATS, "skipped_steps", "loss_scale")]
            + [("components", len(self.components))]
            + [("v_" + name, v) for name in LAYER_STATS]
        )
        self.windows = Packing(
            [(name, 1) for name in metadata.WINDOW_SCALARS]
            + [("layer_" + name, v) for name in metadata.WINDOW_LAYER_STATS]
            + [("slice_" + name, s) for name in metadata.SLICE_STATS]
        )
        self._state_made = False
        self._fn = None
        self.writer = None
        self.tags: dict[str, bytes] = {}
        self._meta: dict[str, tf.Tensor] = {}
        self._described = {"rows": False, "windows": False}

    # -- state ---------------------------------------------------------------
    def _ensure_state(self):
        """Creates the carried state once (lifted out of any graph being traced)."""
        if not self._state_made:
            with tf.init_scope():
                self._make_state()

    def _make_state(self):
        p, v, s = self.layout.size, self.layout.num_variables, len(self.layout.slices)

        def var(value):
            return tf.Variable(value, trainable=False)

        self.prev_params = var(np.zeros([p], np.float32))
        self.pending = var(np.zeros([v + 2], np.float32))  # nonfinite, loss, skip
        self.moments = stats.WindowMoments(
            shift=var(np.zeros([p], np.float32)),
            sum1=var(np.zeros([p], np.float32)),
            sum2=var(np.zeros([p], np.float32)),
            count=var(np.float32(0)),
            abs_sum=var(np.zeros([v], np.float32)),
            slice_abs_sum=var(np.zeros([s], np.float32)),
            batch_sum=var(np.float32(0)),
        )
        self.last_logged = var(np.int64(-1))
        self.last_closed = var(np.int64(-1))
        self.last_valid = var(np.int64(-1))
        self.last_row = var(np.zeros([self.rows.width], np.float32))
        self.last_row_step = var(np.int64(-1))
        self._state_made = True

    def start(self, params: tf.Tensor) -> None:
        """Takes the parameters before the next recorded step (at each ``fit``).

        Args:
            params: The flat parameters ``[P]``.
        """
        self._ensure_state()
        self.prev_params.assign(params)

    def set_writer(self, writer, tags: Mapping[str, bytes]) -> None:
        """Sets the summary writer and the tags' serialized metadata."""
        if writer is not self.writer:
            self.writer = writer
            self.tags = dict(tags)
            self._fn = None
            self._described = {"rows": False, "windows": False}

    def reduce(self, start: int, stop: int, final: bool) -> None:
        """Reduces and writes the ring rows ``[start, stop)``.

        Args:
            start: First row number.
            stop: One past the last row number.
            final: Whether the epoch ends with these rows (closes an epoch
                window; logs the epoch's last step under ``update_freq="epoch"``).
        """
        if self._fn is None:
            self._ensure_state()
            self._fn = tf.function(
                self._reduce,
                input_signature=[tf.TensorSpec([], tf.int64)] * 2
                + [tf.TensorSpec([], tf.bool)] * 3,
                autograph=False,
            )
        rows, windows = self._fn(
            start,
            stop,
            final,
            not self._described["rows"],
            not self._described["windows"],
        )
        self._described["rows"] |= bool(rows.numpy())
        self._described["windows"] |= bool(windows.numpy())

    # -- the reduction (traced once) -------------------------------------------
    def _reduce(self, start, stop, final, describe_rows, describe_windows):
        # A tag's metadata goes with its first event only, as TF1's FileWriter
        # does; both TensorBoard loaders keep the first (parsing it again for
        # every event measured ~1 µs per scalar write, more per layer tensor).
        self._meta = {}
        for tag, meta in self.tags.items():
            window = tag.startswith(_WINDOW_PREFIXES)
            flag = describe_windows if window else describe_rows
            self._meta[tag] = tf.where(flag, tf.constant(meta), tf.constant(b""))
        layout = self.layout
        grads, params, scalars, steps = self.ring.read(start, stop)
        n = tf.shape(grads)[0]
        col = {name: scalars[:, i] for i, name in enumerate(ring.SCALARS)}
        valid = tf.equal(col["skipped"], 0.0)
        sums = stats.block_sums(layout, grads, params, self.prev_params)
        loss_bad = tf.logical_not(tf.math.is_finite(col["loss"]))
        counts = tf.concat(
            [
                sums["grad_nonfinite"],
                tf.cast(loss_bad, tf.float32)[:, None],
                col["skipped"][:, None],
            ],
            axis=1,
        )
        sizes = tf.constant(layout.sizes_array)[None]
        fields = {
            "loss": col["loss"],
            "grad_norm": tf.sqrt(tf.reduce_sum(sums["grad_sq"], axis=1)),
            "param_norm": tf.sqrt(tf.reduce_sum(sums["param_sq"], axis=1)),
            "update_norm": tf.sqrt(tf.reduce_sum(sums["update_sq"], axis=1)),
            "learning_rate": col["learning_rate"],
            "loss_scale": col["loss_scale"],
            "components": scalars[:, len(ring.SCALARS) :],
            "v_grad_norm": tf.sqrt(sums["grad_sq"]),
            "v_grad_mean_abs": sums["grad_abs"] / sizes,
            "v_param_norm": tf.sqrt(sums["param_sq"]),
            "v_update_norm": tf.sqrt(sums["update_sq"]),
            "v_zero_fraction": sums["grad_zero"] / sizes,
        }
        rows = self.rows.pack(fields, n)
        logged, ops = self._log_rows(rows, steps, valid, counts, final)
        closed, window_ops = self._windows(grads, sums, col, steps, valid, final)
        with tf.control_dependencies(ops + window_ops):
            # The last row's parameters come before the next block's first row.
            tail = tf.concat([self.prev_params[None], params], axis=0)[n]
            self.prev_params.assign(tail)
            return tf.identity(logged), tf.identity(closed)

    def _with_counts(self, rows, counts):
        """Puts the counts since the last logged step into packed rows."""
        v = self.layout.num_variables
        k = tf.shape(rows)[0]
        updates = {
            "nonfinite_grads": tf.reduce_sum(counts[:, :v], axis=1),
            "v_nonfinite_grads": counts[:, :v],
            "nonfinite_loss": counts[:, v],
            "skipped_steps": counts[:, v + 1],
        }
        parts = []
        for name, sl in self.rows.index.items():
            if name in updates:
                parts.append(tf.reshape(updates[name], [k, sl.stop - sl.start]))
            else:
                parts.append(rows[:, sl])
        return tf.concat(parts, axis=1)

    def _log_rows(self, rows, steps, valid, counts, final):
        width = counts.shape[1]
        total = self.pending + tf.reduce_sum(counts, axis=0)
        any_valid = tf.reduce_any(valid)
        # A leading 1 keeps the argmax defined on an empty block (row -1).
        flags = tf.concat([[1], tf.cast(valid, tf.int32)], axis=0)
        last_valid_idx = (
            tf.shape(valid, out_type=tf.int64)[0]
            - 1
            - tf.argmax(tf.reverse(flags, [0]), output_type=tf.int64)
        )
        last_valid_idx = tf.maximum(last_valid_idx, 0)
        ops = []
        if self.epoch_mode:
            row, step = tf.cond(
                any_valid,
                lambda: (rows[last_valid_idx], steps[last_valid_idx]),
                lambda: (self.last_row.read_value(), self.last_row_step.read_value()),
            )
            due = tf.logical_and(final, step > self.last_logged)
            k = tf.cast(due, tf.int32)
            logged = self._with_counts(
                tf.reshape(row, [1, -1])[:k], tf.reshape(total, [1, width])[:k]
            )
            logged_steps = tf.reshape(step, [1])[:k]
            new_pending = tf.where(due, tf.zeros_like(total), total)
            ops += [self.last_row.assign(row), self.last_row_step.assign(step)]
        else:
            due = tf.logical_and(
                tf.logical_and(valid, steps > self.last_logged),
                tf.logical_or(tf.equal(steps % self.freq, 0), tf.equal(steps, 1)),
            )
            idx = tf.where(due)[:, 0]
            cum = self.pending[None] + tf.cumsum(counts, axis=0)
            at = tf.concat([tf.zeros([1, width]), tf.gather(cum, idx)], axis=0)
            emitted = at[1:] - at[:-1]
            logged = self._with_counts(tf.gather(rows, idx), emitted)
            logged_steps = tf.gather(steps, idx)
            new_pending = total - at[-1]
        ops.append(self._write_each(logged, logged_steps, self._write_row))
        with tf.control_dependencies(ops):
            ops = [
                self.pending.assign(new_pending),
                self.last_logged.assign(
                    tf.reduce_max(
                        tf.concat([self.last_logged[None], logged_steps], axis=0)
                    )
                ),
                self.last_valid.assign(
                    tf.where(
                        any_valid,
                        tf.gather(tf.concat([steps, [-1]], axis=0), last_valid_idx),
                        self.last_valid,
                    )
                ),
            ]
        return tf.shape(logged_steps)[0], ops

    def _windows(self, grads, sums, col, steps, valid, final):
        layout = self.layout
        m = self.moments
        if self.window_epoch:
            close = tf.zeros_like(valid)
        else:
            close = tf.logical_and(
                tf.logical_and(valid, steps > self.last_closed),
                tf.logical_and(tf.equal(steps % self.window, 0), steps > 0),
            )
        # A closing row is the last of its window; the open window comes last.
        ids = tf.cumsum(tf.cast(close, tf.int32), exclusive=True)
        closed = tf.reduce_sum(tf.cast(close, tf.int32))
        flags = tf.concat([tf.cast(valid, tf.int32), [1]], axis=0)
        first = tf.argmax(flags, output_type=tf.int32)  # n when none is valid
        shift = tf.cond(
            tf.logical_or(m.count > 0, tf.logical_not(tf.reduce_any(valid))),
            lambda: m.shift.read_value(),
            lambda: tf.gather(grads, first),
        )
        block = stats.segment_moments(
            grads,
            tf.cast(valid, tf.float32),
            ids,
            closed + 1,
            shift,
            sums["grad_abs"],
            sums["slice_abs"],
            col["batch_size"],
        )
        carried = [
            f.read_value() for f in m.fields()[1:]
        ]  # sum1, sum2, count, abs_sum, slice_abs_sum, batch_sum
        # The carried window joins the first; a last, empty window is what
        # the next block carries when an epoch window closes here.
        merged = [
            tf.concat([b[:1] + c[None], b[1:], tf.zeros_like(b[:1])], axis=0)
            for b, c in zip(block.fields()[1:], carried, strict=True)
        ]
        moments = stats.WindowMoments(shift, *merged)
        close_steps = tf.boolean_mask(steps, close)
        if self.window_epoch:
            extra = tf.logical_and(final, tf.gather(moments.count, closed) > 0)
            last_valid = tf.reduce_max(
                tf.concat([self.last_valid[None], tf.boolean_mask(steps, valid)], 0)
            )
            close_steps = tf.concat(
                [close_steps, tf.reshape(last_valid, [1])[: tf.cast(extra, tf.int32)]],
                axis=0,
            )
            closed += tf.cast(extra, tf.int32)
        done = stats.WindowMoments(shift, *[f[:closed] for f in moments.fields()[1:]])
        wstats = stats.window_statistics(layout, done)
        packed = self.windows.pack(wstats, closed)
        ops = [self._write_each(packed, close_steps, self._write_window)]
        with tf.control_dependencies(ops):
            ops = [m.shift.assign(shift)]
            for var, value in zip(m.fields()[1:], moments.fields()[1:], strict=True):
                ops.append(var.assign(tf.gather(value, closed)))
            ops.append(
                self.last_closed.assign(
                    tf.reduce_max(tf.concat([self.last_closed[None], close_steps], 0))
                )
            )
        return closed, ops

    # -- writing -----------------------------------------------------------------
    def _write_each(self, rows, steps, write):
        """Writes each packed row at its step, oldest first, in a graph loop."""

        def body(i):
            write(rows[i], steps[i])
            return (i + 1,)

        with self.writer.as_default():
            loop = tf.while_loop(
                lambda i: i < tf.shape(rows)[0], body, (tf.constant(0),)
            )
        return loop[0]

    def _summary(self, tag, value, step):
        tf.summary.write(tag, value, step=step, metadata=self._meta[tag])

    def _write_row(self, row, step):
        def field(name):
            return row[self.rows.index[name]]

        for stat in STEP_STATS:
            self._summary(metadata.step_tag(stat), field(stat)[0], step)
        self._summary(
            metadata.step_tag("update_ratio"),
            tf.math.divide_no_nan(field("update_norm")[0], field("param_norm")[0]),
            step,
        )
        if self.mixed_precision:
            for stat in ("skipped_steps", "loss_scale"):
                self._summary(metadata.step_tag(stat), field(stat)[0], step)
        comps = field("components")
        for i, name in enumerate(self.components):
            self._summary(metadata.loss_component_tag(name), comps[i], step)
        for stat in LAYER_STATS:
            self._summary(metadata.layer_tag(stat), field("v_" + stat), step)
        self._summary(
            metadata.layer_tag("update_ratio"),
            tf.math.divide_no_nan(field("v_update_norm"), field("v_param_norm")),
            step,
        )

    def _write_window(self, row, step):
        def field(name):
            return row[self.windows.index[name]]

        for stat in metadata.WINDOW_SCALARS:
            self._summary(metadata.window_tag(stat), field(stat)[0], step)
        for stat in metadata.WINDOW_LAYER_STATS:
            self._summary(metadata.window_layer_tag(stat), field("layer_" + stat), step)
        for i, s in enumerate(self.layout.slices):
            for stat in metadata.SLICE_STATS:
                self._summary(
                    metadata.slice_tag(s.name, stat), field("slice_" + stat)[i], step
                )


def tag_metadata(
    layout: stats.Layout,
    update_freq: int | str,
    window: int | str,
    loss_components: Sequence[str],
    step_components: Sequence[str],
) -> dict[str, bytes]:
    """The serialized summary metadata of every per-step and window tag.

    Args:
        layout: The variables' layout (names the entries of layer tensors).
        update_freq: The callback's ``update_freq``.
        window: The variance window.
        loss_components: Every recorded loss component.
        step_components: Those recorded per step (the rest per epoch).

    Returns:
        ``{tag: serialized SummaryMetadata}``.
    """
    variables = {"variables": layout.paths}
    common = {"update_freq": update_freq}
    tags: dict[str, Any] = {}
    for stat, text in metadata.STEP_SCALARS.items():
        tags[metadata.step_tag(stat)] = metadata.create_summary_metadata(text, common)
    for stat, text in metadata.LAYER_STATS.items():
        tags[metadata.layer_tag(stat)] = metadata.create_summary_metadata(
            text, variables, tensor=True
        )
    win = {"window": window}
    for stat, text in metadata.WINDOW_SCALARS.items():
        tags[metadata.window_tag(stat)] = metadata.create_summary_metadata(text, win)
    for stat, text in metadata.WINDOW_LAYER_STATS.items():
        tags[metadata.window_layer_tag(stat)] = metadata.create_summary_metadata(
            text, {**variables, **win}, tensor=True
        )
    for s in layout.slices:
        content = {"variable": s.variable, "start": s.start, "stop": s.stop, **win}
        for stat, text in metadata.SLICE_STATS.items():
            tags[metadata.slice_tag(s.name, stat)] = metadata.create_summary_metadata(
                text, content
            )
    for name in loss_components:
        tags[metadata.loss_component_tag(name)] = metadata.create_summary_metadata(
            f"loss component {name}", {"per_step": name in step_components}
        )
    return {k: v.SerializeToString() for k, v in tags.items()}
