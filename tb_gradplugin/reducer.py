"""Reduces blocks of ring rows to gradient statistics and writes them.

Per block (up to 64 steps): one ``tf.function`` call gathers the rows from the
:class:`~tb_gradplugin.ring.StepRing`, numpy computes every per-step and
per-window statistic with block-wide array operations (``stats.py``), and one
more ``tf.function`` call writes the logged steps and closed windows with
``tf.summary``. The callback runs this on its writer thread, beside the
training, so the step itself pays only for its ring row.

State carried from block to block (numpy, on the host): the parameters before
the next row (for the update norm), the NaN/Inf and skipped-step counts since
the last logged step, the moments of the window still open, and the epoch's
last row (for ``update_freq="epoch"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tb_gradplugin import metadata, ring, stats

# Whole-model per-step scalars, in their column order; the loss scale and
# skipped steps are written only under mixed precision.
STEP_STATS = (
    "loss",
    "grad_norm",
    "param_norm",
    "update_norm",
    "update_ratio",
    "learning_rate",
    "nonfinite_grads",
    "nonfinite_loss",
    "skipped_steps",
    "loss_scale",
)
_MIXED_PRECISION_ONLY = ("skipped_steps", "loss_scale")
_WINDOW_PREFIXES = tuple(
    metadata.TAG_PREFIX + p for p in ("window/", "window_layer/", "slice/")
)
# Per-variable per-step statistics, in their column order.
LAYER_STATS = (
    "grad_norm",
    "grad_mean_abs",
    "param_norm",
    "update_norm",
    "update_ratio",
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
        # Scalars first, then per-variable blocks: the writer unstacks them.
        self.rows = Packing(
            [(name, 1) for name in STEP_STATS]
            + [("components", len(self.components))]
            + [("v_" + name, v) for name in LAYER_STATS]
        )
        self.windows = Packing(
            [(name, 1) for name in metadata.WINDOW_SCALARS]
            + [("layer_" + name, v) for name in metadata.WINDOW_LAYER_STATS]
            + [("slice_" + name, s) for name in metadata.SLICE_STATS]
        )
        self._read_fn = None
        self._write_fn = None
        self.writer = None
        self.tags: dict[str, bytes] = {}
        self._meta: dict[str, tf.Tensor] = {}
        self._described = {"rows": False, "windows": False}
        self.prev_params = np.zeros([layout.size], np.float32)
        self.pending = np.zeros([v + 2])  # NaN/Inf per variable, NaN loss, skipped
        self.moments = stats.WindowMoments.empty(layout)
        self.last_logged = -1
        self.last_closed = -1
        self.last_valid = -1
        self.last_row = np.zeros([self.rows.width], np.float32)
        self.last_row_step = -1

    def start(self, params: np.ndarray) -> None:
        """Takes the parameters before the next recorded step (at each ``fit``).

        Args:
            params: The flat parameters ``[P]``.
        """
        self.prev_params = np.array(params, np.float32).reshape([self.layout.size])

    def set_writer(self, writer, tags: Mapping[str, bytes]) -> None:
        """Sets the summary writer and the tags' serialized metadata."""
        if writer is not self.writer:
            self.writer = writer
            self.tags = dict(tags)
            self._write_fn = None
            self._described = {"rows": False, "windows": False}

    def reduce(self, start: int, stop: int, final: bool) -> None:
        """Reduces and writes the ring rows ``[start, stop)``.

        Args:
            start: First row number.
            stop: One past the last row number.
            final: Whether the epoch ends with these rows (closes an epoch
                window; logs the epoch's last step under ``update_freq="epoch"``).
        """
        if stop > start:
            if self._read_fn is None:
                # A concrete function skips tf.function's per-call argument
                # binding (~1 ms of Python per call here, holding the GIL).
                spec = tf.TensorSpec([], tf.int64)
                self._read_fn = tf.function(
                    self.ring.read, autograph=False
                ).get_concrete_function(spec, spec)
            # asarray shares the gathered tensor's buffer; .numpy() would copy.
            block = np.asarray(
                self._read_fn(tf.constant(start, tf.int64), tf.constant(stop, tf.int64))
            )
            grads, params, scalars, steps = self.ring.split(block)
        else:
            p, w = self.layout.size, self.ring.width
            grads, params = np.zeros([0, p], np.float32), np.zeros([0, p], np.float32)
            scalars, steps = np.zeros([0, w], np.float32), np.zeros([0], np.int64)
        rows, row_steps, windows, window_steps = self.compute(
            grads, params, scalars, steps, final
        )
        if len(row_steps) or len(window_steps):
            self.write(rows, row_steps, windows, window_steps)

    # -- the reduction -----------------------------------------------------------
    def compute(
        self,
        grads: np.ndarray,
        params: np.ndarray,
        scalars: np.ndarray,
        steps: np.ndarray,
        final: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Reduces one block of rows and advances the carried state.

        Args:
            grads: The flat gradients ``[n, P]``.
            params: The flat parameters after each step ``[n, P]``.
            scalars: The ring's scalar columns ``[n, width]``.
            steps: The optimizer step of each row ``[n]``.
            final: Whether the epoch ends with these rows.

        Returns:
            ``(rows, row_steps, windows, window_steps)``: the packed logged
            rows and their steps, the packed closed windows and their steps.
        """
        layout = self.layout
        n = len(steps)
        col = {name: scalars[:, i] for i, name in enumerate(ring.SCALARS)}
        valid = col["skipped"] == 0.0
        sizes = layout.sizes_array[None]
        # NaN/Inf gradients are evidence to record, not errors.
        with np.errstate(invalid="ignore", over="ignore"):
            sums = stats.block_sums(
                layout, grads, params, self.prev_params, self._full_rows(steps, valid)
            )
            counts = np.concatenate(
                [
                    sums["grad_nonfinite"],
                    (~np.isfinite(col["loss"]))[:, None].astype(np.float64),
                    col["skipped"][:, None].astype(np.float64),
                ],
                axis=1,
            )
            fields = {
                "loss": col["loss"],
                "grad_norm": np.sqrt(sums["grad_sq"].sum(axis=1)),
                "param_norm": np.sqrt(sums["param_sq"].sum(axis=1)),
                "update_norm": np.sqrt(sums["update_sq"].sum(axis=1)),
                "learning_rate": col["learning_rate"],
                "loss_scale": col["loss_scale"],
                "components": scalars[:, len(ring.SCALARS) :],
                "v_grad_norm": np.sqrt(sums["grad_sq"]),
                "v_grad_mean_abs": sums["grad_abs"] / sizes,
                "v_param_norm": np.sqrt(sums["param_sq"]),
                "v_update_norm": np.sqrt(sums["update_sq"]),
                "v_zero_fraction": sums["grad_zero"] / sizes,
            }
            fields["update_ratio"] = stats.safe_ratio(
                fields["update_norm"], fields["param_norm"]
            )
            fields["v_update_ratio"] = stats.safe_ratio(
                fields["v_update_norm"], fields["v_param_norm"]
            )
            rows = self.rows.pack(fields, n)
            valid_steps = steps[valid]
            last_valid = max([self.last_valid, *valid_steps.tolist()])
            logged, logged_steps = self._log_rows(rows, steps, valid, counts, final)
            windows, window_steps = self._windows(
                grads, sums, col, steps, valid, final, last_valid
            )
        self.last_valid = last_valid
        if n:
            # The last row's parameters come before the next block's first row.
            self.prev_params = params[-1].copy()
        return logged, logged_steps, windows, window_steps

    def _on_schedule(self, steps: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Valid rows at step 1 or a multiple of ``update_freq`` (not epoch mode)."""
        return valid & ((steps % self.freq == 0) | (steps == 1))

    def _full_rows(self, steps: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """The rows whose every statistic may be written: logged, or kept."""
        if self.epoch_mode:
            return np.flatnonzero(valid)[-1:]  # the epoch's last row, so far
        return np.flatnonzero(self._on_schedule(steps, valid))

    def _with_counts(self, rows: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Puts the counts since the last logged step into packed rows."""
        v = self.layout.num_variables
        rows = rows.copy()
        index = self.rows.index
        rows[:, index["nonfinite_grads"]] = counts[:, :v].sum(axis=1)[:, None]
        rows[:, index["v_nonfinite_grads"]] = counts[:, :v]
        rows[:, index["nonfinite_loss"]] = counts[:, v : v + 1]
        rows[:, index["skipped_steps"]] = counts[:, v + 1 : v + 2]
        return rows

    def _log_rows(self, rows, steps, valid, counts, final):
        total = self.pending + counts.sum(axis=0)
        width = counts.shape[1]
        if self.epoch_mode:
            if valid.any():
                i = int(np.flatnonzero(valid)[-1])
                self.last_row, self.last_row_step = rows[i].copy(), int(steps[i])
            if final and self.last_row_step > self.last_logged:
                logged = self._with_counts(self.last_row[None], total[None])
                logged_steps = np.array([self.last_row_step], np.int64)
                self.pending = np.zeros(width)
            else:
                logged = np.zeros([0, self.rows.width], np.float32)
                logged_steps = np.zeros([0], np.int64)
                self.pending = total
        else:
            due = self._on_schedule(steps, valid) & (steps > self.last_logged)
            idx = np.flatnonzero(due)
            cum = self.pending[None] + np.cumsum(counts, axis=0)
            at = np.concatenate([np.zeros([1, width]), cum[idx]], axis=0)
            logged = self._with_counts(rows[idx], np.diff(at, axis=0))
            logged_steps = steps[idx]
            self.pending = total - at[-1]
        if len(logged_steps):
            self.last_logged = max(self.last_logged, int(logged_steps.max()))
        return logged, logged_steps

    def _windows(self, grads, sums, col, steps, valid, final, last_valid):
        layout = self.layout
        carried = self.moments
        if self.window_epoch:
            close = np.zeros_like(valid)
        else:
            close = (
                valid
                & (steps > self.last_closed)
                & (steps % self.window == 0)
                & (steps > 0)
            )
        # A closing row is the last of its window; the open window comes last.
        ends = np.flatnonzero(close) + 1
        starts = [0, *ends.tolist()]
        shift = carried.shift
        if not carried.count[0] and valid.any():
            shift = grads[int(np.flatnonzero(valid)[0])].copy()
        block = stats.window_moments(
            grads,
            valid.astype(np.float64),
            starts,
            shift,
            sums["grad_abs"],
            sums["slice_abs"],
            col["batch_size"],
        )
        # The carried window joins the first window of the block.
        for field, extra in zip(block.sums(), carried.sums(), strict=True):
            field[0] += extra[0]
        closed = len(ends)
        close_steps = steps[close].astype(np.int64)
        if self.window_epoch and final and block.count[closed] > 0:
            close_steps = np.array([last_valid], np.int64)
            closed = 1
        done = stats.WindowMoments(shift, *[f[:closed] for f in block.sums()])
        packed = self.windows.pack(stats.window_statistics(layout, done), closed)
        if closed == len(starts):  # the epoch window closed: nothing carried
            self.moments = stats.WindowMoments.empty(layout)
        else:
            self.moments = block.window(closed)
        if len(close_steps):
            self.last_closed = max(self.last_closed, int(close_steps.max()))
        return packed, close_steps

    # -- writing -----------------------------------------------------------------
    def write(
        self,
        rows: np.ndarray,
        row_steps: np.ndarray,
        windows: np.ndarray,
        window_steps: np.ndarray,
    ) -> None:
        """Writes packed logged rows and closed windows, oldest first.

        Args:
            rows: Packed logged rows ``[k, rows.width]``.
            row_steps: Their steps ``[k]``.
            windows: Packed closed windows ``[j, windows.width]``.
            window_steps: Their steps ``[j]``.
        """
        if self._write_fn is None:
            self._write_fn = tf.function(
                self._write_all, autograph=False
            ).get_concrete_function(
                tf.TensorSpec([None, self.rows.width], tf.float32),
                tf.TensorSpec([None], tf.int64),
                tf.TensorSpec([None, self.windows.width], tf.float32),
                tf.TensorSpec([None], tf.int64),
                tf.TensorSpec([], tf.bool),
                tf.TensorSpec([], tf.bool),
            )
        self._write_fn(
            tf.constant(rows, tf.float32),
            tf.constant(row_steps, tf.int64),
            tf.constant(windows, tf.float32),
            tf.constant(window_steps, tf.int64),
            tf.constant(not self._described["rows"]),
            tf.constant(not self._described["windows"]),
        )
        self._described["rows"] |= bool(len(row_steps))
        self._described["windows"] |= bool(len(window_steps))

    def _write_all(
        self, rows, row_steps, windows, window_steps, describe_rows, describe_windows
    ):
        # A tag's metadata goes with its first event only, as TF1's FileWriter
        # does; both TensorBoard loaders keep the first (parsing it again for
        # every event measured ~1 µs per scalar write, more per layer tensor).
        self._meta = {
            tag: tf.where(
                describe_windows if tag.startswith(_WINDOW_PREFIXES) else describe_rows,
                tf.constant(meta),
                tf.constant(b""),
            )
            for tag, meta in self.tags.items()
        }
        with self.writer.as_default():
            done = self._write_each(rows, row_steps, self._write_row)
            with tf.control_dependencies([done]):
                return self._write_each(windows, window_steps, self._write_window)

    def _write_each(self, rows, steps, write):
        """Writes each packed row at its step, oldest first, in a graph loop."""

        def body(i):
            write(rows[i], steps[i])
            return (i + 1,)

        loop = tf.while_loop(lambda i: i < tf.shape(rows)[0], body, (tf.constant(0),))
        return loop[0]

    def _summary(self, tag, value, step):
        tf.summary.write(tag, value, step=step, metadata=self._meta[tag])

    def _write_row(self, row, step):
        # One unstack per part rather than one slice op per tag.
        width = self.rows.index["components"].stop
        scalars = tf.unstack(row[:width], num=width)
        layers = tf.unstack(
            tf.reshape(row[width:], [len(LAYER_STATS), self.layout.num_variables]),
            num=len(LAYER_STATS),
        )
        for i, stat in enumerate(STEP_STATS):
            if self.mixed_precision or stat not in _MIXED_PRECISION_ONLY:
                self._summary(metadata.step_tag(stat), scalars[i], step)
        first = self.rows.index["components"].start
        for i, name in enumerate(self.components):
            self._summary(metadata.loss_component_tag(name), scalars[first + i], step)
        for stat, value in zip(LAYER_STATS, layers, strict=True):
            self._summary(metadata.layer_tag(stat), value, step)

    def _write_window(self, row, step):
        index = self.windows.index
        v, s = self.layout.num_variables, len(self.layout.slices)
        width = len(metadata.WINDOW_SCALARS)
        scalars = tf.unstack(row[:width], num=width)
        for stat, value in zip(metadata.WINDOW_SCALARS, scalars, strict=True):
            self._summary(metadata.window_tag(stat), value, step)
        start = index["layer_" + next(iter(metadata.WINDOW_LAYER_STATS))].start
        count = len(metadata.WINDOW_LAYER_STATS)
        layers = tf.unstack(
            tf.reshape(row[start : start + count * v], [count, v]), num=count
        )
        for stat, value in zip(metadata.WINDOW_LAYER_STATS, layers, strict=True):
            self._summary(metadata.window_layer_tag(stat), value, step)
        if not s:
            return
        start = index["slice_" + next(iter(metadata.SLICE_STATS))].start
        count = len(metadata.SLICE_STATS)
        values = tf.unstack(row[start : start + count * s], num=count * s)
        for j, stat in enumerate(metadata.SLICE_STATS):
            for i, sl in enumerate(self.layout.slices):
                self._summary(
                    metadata.slice_tag(sl.name, stat), values[j * s + i], step
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
