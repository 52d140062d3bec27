"""Turns blocks of step rows into gradient-health summaries (host, numpy).

The compiled step writes one small row per step (``ring.py``); the callback's
writer thread hands each block of rows read from the ring to
:class:`BlockReducer`, which

* finishes each step's statistics from its sums (norms are square roots of
  sums, ratios, shares) and counts NaN/Inf and skipped steps between logged
  steps;
* accumulates the open variance window's per-step sums and, when a step (or an
  epoch end) closes the window, turns them and the reduced running gradient
  sum into the window's statistics (``stats.window_statistics``);
* is a flight recorder: it holds the last :data:`FLIGHT_STEPS` steps' rows
  before writing them, and when a step is anomalous (a first non-finite loss
  or gradient, or a gradient-norm jump of :data:`JUMP_FACTOR` times the median
  of the last :data:`JUMP_HISTORY` steps) every step within
  :data:`FLIGHT_STEPS` before and after it is written, whatever
  ``update_freq`` says;
* writes the logged steps and closed windows with ``tf.summary``, in step
  order, from one graph function per writer.

Every step's row is seen, so windows, NaN counts and anomalies miss nothing
whatever ``update_freq`` is.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tb_gradplugin import metadata, ring, stats

# Column orders: the tag families of metadata.py, in their order. The loss scale
# and skipped steps are written only under mixed precision.
STEP_STATS = tuple(metadata.STEP_SCALARS)
_MIXED_PRECISION_ONLY = ("skipped_steps", "loss_scale")
LAYER_STATS = tuple(metadata.LAYER_STATS)
WINDOW_LAYER_STATS = tuple(metadata.WINDOW_LAYER_STATS)

FLIGHT_STEPS = 256
"""Steps written at full resolution before and after an anomalous step."""
JUMP_FACTOR = 10.0
"""A gradient norm this many times the recent median is anomalous (Megatron-LM
checks 10x the running maximum; OLMo-core a z-score over 6 in 128 steps)."""
JUMP_HISTORY = 128
"""Steps of the recent median (OLMo-core's spike window)."""
MAX_HOLD_S = 10.0
"""Seconds a row is held at most, so that slow steps still show promptly."""

# The adaptive default of update_freq (see adaptive_update_freq).
EVENT_SECONDS = 4e-6  # one tf.summary event on the host, measured on 2 CPU cores.
EVENT_SHARE = 0.01  # events may take this share of the step time.
DISK_BYTES_PER_STEP = 1000.0  # a 1,000,000-step run stays under ~1 GB.
_FREQ_LADDER = (1, 2, 5)


def adaptive_update_freq(
    step_seconds: float | None, events_per_log: int, bytes_per_log: float
) -> int:
    """The default ``update_freq``: cheap on tiny steps, every step on big ones.

    Writing one logged step costs ``events_per_log`` events of ~4 µs each on
    the host and ``bytes_per_log`` bytes on disk; the frequency is the
    smallest of 1, 2, 5, 10, 20, 50, ... that keeps the events under 1 % of
    the step time and the disk under :data:`DISK_BYTES_PER_STEP` per step.

    Args:
        step_seconds: Measured seconds per optimizer step, or ``None`` when
            not measured (then only the disk bound applies).
        events_per_log: Summary events per logged step.
        bytes_per_log: Event-file bytes per logged step.

    Returns:
        The number of steps between logged steps.

    Example:
        >>> adaptive_update_freq(0.001, 17, 1500.0)
        10
        >>> adaptive_update_freq(0.5, 17, 900.0)
        1
    """
    need = bytes_per_log / DISK_BYTES_PER_STEP
    if step_seconds is not None and step_seconds > 0:
        need = max(need, events_per_log * EVENT_SECONDS / (EVENT_SHARE * step_seconds))
    scale = 1
    while True:
        for base in _FREQ_LADDER:
            if base * scale >= need:
                return base * scale
        scale *= 10


def _updated(grad_sq: np.ndarray, nonfinite: np.ndarray) -> np.ndarray:
    """Which variables a row's step updated, shape ``[n_variables]``.

    A variable no optimizer stepped is written as NaN with no NaN/Inf entry
    counted; a NaN from the gradient itself always comes with a count.
    """
    return ~(np.isnan(grad_sq) & (nonfinite == 0))


def _global_norm(squares: np.ndarray, present: np.ndarray) -> np.floating:
    """The L2 norm over the updated variables; NaN when the step updated none."""
    if not present.any():
        return np.float32(np.nan)
    return np.sqrt(np.sum(squares[present]))


@dataclasses.dataclass
class _Held:
    """One step's row, held until it is written or dropped."""

    step: int
    valid: bool
    counts: np.ndarray  # NaN/Inf per variable, NaN/Inf loss, skipped
    log_row: np.ndarray | None  # packed logged statistics (valid rows)
    window: np.ndarray | None  # packed window closed at this step
    arrived: float
    full: bool = False  # within the flight recorder's range of an anomaly
    epoch_last: bool = False  # the epoch's last step (update_freq="epoch")


class BlockReducer:
    """Statistics of blocks of step rows, written as gradient-health summaries.

    Args:
        layout: The trainable variables' layout.
        packing: The columns of a step row (``ring.row_packing``).
        components: Names of the per-step loss components in the row.
        update_freq: Log every N steps, ``"epoch"``, or ``"auto"`` (the
            adaptive default, decided by :meth:`add_rows`'s first timing).
        window: Steps per variance window, or ``"epoch"``.
        mixed_precision: Whether the loss scale and skipped steps are written.
        flight_steps: Steps kept before writing and written around an
            anomaly; ``0`` turns the flight recorder off. Defaults to ``None``:
            :data:`FLIGHT_STEPS`.

    Example:
        >>> r = BlockReducer(layout, packing, [], 1, "epoch", False)  # doctest: +SKIP
        >>> r.add_rows(rows)  # doctest: +SKIP
    """

    def __init__(
        self,
        layout: stats.Layout,
        packing: ring.Packing,
        components: Sequence[str],
        update_freq: int | str,
        window: int | str,
        mixed_precision: bool,
        flight_steps: int | None = None,
    ):
        self.layout = layout
        self.packing = packing
        self.components = list(components)
        self.epoch_mode = update_freq == "epoch"
        self.adaptive = update_freq == "auto"
        self.freq = None if self.adaptive else (1 if self.epoch_mode else update_freq)
        self.window_epoch = window == "epoch"
        self.window = window
        self.mixed_precision = bool(mixed_precision)
        self.flight_steps = int(FLIGHT_STEPS if flight_steps is None else flight_steps)
        v, s = layout.num_variables, len(layout.slices)
        # Scalars first, then per-variable blocks: the writer unstacks them.
        self.rows = ring.Packing(
            [(name, 1) for name in STEP_STATS]
            + [("components", len(self.components)), ("loss_known", 1)]
            + [("v_" + name, v) for name in LAYER_STATS]
        )
        self.windows = ring.Packing(
            [(name, 1) for name in metadata.WINDOW_SCALARS]
            + [("layer_" + name, v) for name in WINDOW_LAYER_STATS]
            + [("slice_" + name, s) for name in metadata.SLICE_STATS]
        )
        self.writer = None
        self._tags_fn: Callable[[], Mapping[str, bytes]] | None = None
        self.tags: dict[str, bytes] = {}
        self._write_fn = None
        self._meta: dict[str, tf.Tensor] = {}
        self._described = {"rows": False, "windows": False}
        self.window_sums = stats.WindowSums.empty(layout)
        self.held: collections.deque[_Held] = collections.deque()
        self.pending = np.zeros([v + 2])
        self.norms: collections.deque[float] = collections.deque(maxlen=JUMP_HISTORY)
        self.finite_before = True
        self.full_until = -1
        self.release_to = -1
        self.anomalies: list[int] = []
        self.last_logged = -1
        self.last_valid: _Held | None = None
        self.bytes_written = 0
        self.run_last_step = 0
        self.step_offset: int | None = None
        self.last_step = 0

    # -- input -------------------------------------------------------------------
    def set_writer(self, writer, tags_fn: Callable[[], Mapping[str, bytes]]) -> None:
        """Sets the summary writer and what makes the tags' metadata (lazily).

        Args:
            writer: A ``tf.summary`` writer.
            tags_fn: Returns ``{tag: serialized metadata}``; called at the
                first write, once the step has been traced.
        """
        if writer is not self.writer:
            self.writer = writer
            self._tags_fn = tags_fn
            self.tags = {}
            self._write_fn = None
            self._described = {"rows": False, "windows": False}

    def decide_update_freq(self, step_seconds: float | None) -> None:
        """Fixes the adaptive ``update_freq`` (once), from the step time."""
        if self.freq is not None:
            return
        v, c = self.layout.num_variables, len(self.components)
        scalars = len(STEP_STATS) - (0 if self.mixed_precision else 2) + c
        events = scalars + len(LAYER_STATS)
        size = scalars * _SCALAR_EVENT_BYTES + len(LAYER_STATS) * (
            _TENSOR_EVENT_BYTES + 4 * v
        )
        self.freq = adaptive_update_freq(step_seconds, events, size)

    def add_rows(self, block: np.ndarray, step_seconds: float | None = None) -> None:
        """Takes a block of step rows, in step order, and writes what is due.

        Args:
            block: Rows read from the ring, ``[n, K]``.
            step_seconds: Measured seconds per step (decides the adaptive
                ``update_freq`` the first time). Defaults to ``None``.
        """
        if self.adaptive and step_seconds is not None:
            self.decide_update_freq(step_seconds)
        idx = self.packing.index
        steps = ring.steps_of(block, self.packing)
        if self.step_offset is None:
            # A recompiled model's optimizer counts from 1 again: the run's
            # steps go on from its last one, never written twice. Decided at
            # the first applied step (a skipped step has not advanced).
            applied = steps[block[:, idx["skipped"].start] == 0.0]
            if len(applied):
                first = int(applied[0])
                self.step_offset = max(0, self.run_last_step + 1 - first)
        steps = steps + (self.step_offset or 0)
        if len(steps):
            self.last_step = max(self.last_step, int(steps.max()))
        now = time.monotonic()
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            for r, step in zip(block.astype(np.float64), steps.tolist(), strict=True):
                valid = r[idx["skipped"]][0] == 0.0
                # An unknown loss (no metric named "loss" updated) is no NaN.
                known = r[idx["loss_known"]][0] > 0
                loss = r[idx["loss"]][0] if known else 0.0
                nonfinite = r[idx["grad_nonfinite"]]
                counts = np.concatenate(
                    [nonfinite, [float(not np.isfinite(loss)), float(not valid)]]
                )
                held = _Held(step, valid, counts, None, None, now)
                if valid:
                    held.log_row = self._log_row(r)
                    held.full = step <= self.full_until
                    self._watch(held, r, loss, nonfinite)
                    self.window_sums.add(
                        r[idx["grad_sq"]],
                        r[idx["grad_abs"]],
                        r[idx["slice_grad_sq"]],
                        r[idx["slice_grad_abs"]],
                        r[idx["batch_size"]][0],
                        absent=~_updated(r[idx["grad_sq"]], nonfinite),
                    )
                    if r[idx["closed"]][0]:
                        held.window = self._close_window(
                            r[idx["sum_sq"]], r[idx["sum_zero"]], r[idx["slice_sum_sq"]]
                        )
                    self.last_valid = held
                self.held.append(held)
        self.release(final=False)

    def epoch_end(self, running: np.ndarray | None) -> None:
        """Marks an epoch's end: its last step (``"epoch"``) and its window.

        Args:
            running: The running gradient sum reduced at the epoch's end,
                ``[sum_sq [V], sum_zero [V], slice_sum_sq [S]]`` concatenated,
                when the variance window is the epoch; else ``None``.
        """
        last = self.last_valid
        if last is not None:
            if self.epoch_mode and last.step > self.last_logged:
                last.epoch_last = True
                if not self._holds(last):
                    # Released unlogged (held too long): nothing later was
                    # logged, so it is still in step order.
                    self._write_entries([last])
            if running is not None and self.window_sums.count > 0:
                v = self.layout.num_variables
                with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
                    window = self._close_window(
                        running[:v], running[v : 2 * v], running[2 * v :]
                    )
                if self._holds(last):
                    last.window = window
                else:
                    self._write(
                        np.zeros([0, self.rows.width], np.float32),
                        np.zeros([0], np.int64),
                        window[None],
                        np.array([last.step], np.int64),
                    )
        self.release(final=False)

    def _holds(self, held: _Held) -> bool:
        return any(h is held for h in self.held)

    # -- per step -----------------------------------------------------------------
    def _log_row(self, r: np.ndarray) -> np.ndarray:
        idx = self.packing.index
        sizes = self.layout.sizes_array
        grad_sq, param_sq = r[idx["grad_sq"]], r[idx["param_sq"]]
        update_sq = r[idx["update_sq"]]
        present = _updated(grad_sq, r[idx["grad_nonfinite"]])
        fields = {
            "loss": r[idx["loss"]],
            "loss_known": r[idx["loss_known"]],
            # Over the variables updated at the step; a NaN or Inf gradient of an
            # updated variable makes the global norms non-finite, as it should.
            "grad_norm": _global_norm(grad_sq, present),
            "param_norm": _global_norm(param_sq, present),
            "update_norm": _global_norm(update_sq, present),
            "learning_rate": r[idx["learning_rate"]],
            "loss_scale": r[idx["loss_scale"]],
            "components": r[idx["components"]],
            "v_grad_norm": np.sqrt(grad_sq),
            "v_grad_mean_abs": r[idx["grad_abs"]] / sizes,
            "v_param_norm": np.sqrt(param_sq),
            "v_update_norm": np.sqrt(update_sq),
            "v_zero_fraction": r[idx["grad_zero"]] / sizes,
        }
        fields["update_ratio"] = stats.safe_ratio(
            fields["update_norm"], fields["param_norm"]
        )
        fields["v_update_ratio"] = stats.safe_ratio(
            fields["v_update_norm"], fields["v_param_norm"]
        )
        return self.rows.pack(fields, 1)[0]

    def _watch(self, held: _Held, r, loss, nonfinite) -> None:
        """The flight recorder's trigger: a first non-finite step or a jump."""
        grad_sq = r[self.packing.index["grad_sq"]]
        norm = float(_global_norm(grad_sq, _updated(grad_sq, nonfinite)))
        finite = bool(np.isfinite(loss)) and not nonfinite.any() and math.isfinite(norm)
        anomalous = not finite and self.finite_before
        if finite:
            if len(self.norms) >= 8:
                anomalous = norm >= JUMP_FACTOR * float(np.median(self.norms)) > 0
            self.norms.append(norm)
        self.finite_before = finite
        if anomalous:
            self.anomalies.append(held.step)
        if anomalous and self.flight_steps > 0:
            self.full_until = max(self.full_until, held.step + self.flight_steps)
            self.release_to = max(self.release_to, held.step)
            for other in self.held:
                if other.step >= held.step - self.flight_steps:
                    other.full = True
            held.full = True

    def _close_window(self, sum_sq, sum_zero, slice_sum_sq) -> np.ndarray:
        out = stats.window_statistics(
            self.layout, self.window_sums, sum_sq, sum_zero, slice_sum_sq
        )
        self.window_sums = stats.WindowSums.empty(self.layout)
        fields = {name: out[name] for name in metadata.WINDOW_SCALARS}
        for name in WINDOW_LAYER_STATS:
            fields["layer_" + name] = out["layer_" + name]
        for name in metadata.SLICE_STATS:
            fields["slice_" + name] = out["slice_" + name]
        return self.windows.pack(fields, 1)[0]

    # -- output -------------------------------------------------------------------
    def release(self, final: bool) -> None:
        """Writes the held rows that no later anomaly can still ask for.

        Args:
            final: Write every held row (the end of a ``fit``).
        """
        if final and self.freq is None:
            self.decide_update_freq(None)
        if not self.held or self.freq is None:
            return
        limit = max(self.held[-1].step - self.flight_steps, self.release_to)
        stale = time.monotonic() - MAX_HOLD_S
        out = []
        while self.held:
            first = self.held[0]
            if not (final or first.step <= limit or first.arrived < stale):
                break
            # The last row may yet be the epoch's last (update_freq="epoch").
            if not final and len(self.held) == 1 and self.epoch_mode:
                break
            out.append(self.held.popleft())
        self._write_entries(out)

    def _due(self, held: _Held) -> bool:
        if not held.valid or held.step <= self.last_logged:
            return False
        if held.full or held.epoch_last:
            return True
        return not self.epoch_mode and (held.step == 1 or held.step % self.freq == 0)

    def _write_entries(self, entries: Sequence[_Held]) -> None:
        rows, row_steps, windows, window_steps = [], [], [], []
        for held in entries:
            self.pending = self.pending + held.counts
            if self._due(held):
                rows.append(self._with_counts(held.log_row, self.pending))
                row_steps.append(held.step)
                self.pending = np.zeros_like(self.pending)
                self.last_logged = held.step
            if held.window is not None:
                windows.append(held.window)
                window_steps.append(held.step)
                held.window = None
        if rows or windows:
            self._write(
                np.array(rows, np.float32).reshape([-1, self.rows.width]),
                np.array(row_steps, np.int64),
                np.array(windows, np.float32).reshape([-1, self.windows.width]),
                np.array(window_steps, np.int64),
            )

    def _with_counts(self, row: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Puts the counts since the last logged step into a packed row."""
        v = self.layout.num_variables
        row = row.copy()
        index = self.rows.index
        row[index["nonfinite_grads"]] = counts[:v].sum()
        row[index["v_nonfinite_grads"]] = counts[:v]
        row[index["nonfinite_loss"]] = counts[v]
        row[index["skipped_steps"]] = counts[v + 1]
        return row

    def _write(self, rows, row_steps, windows, window_steps) -> None:
        """Writes packed logged rows and closed windows, oldest first."""
        if self.writer is None:
            return
        if not self.tags:
            self.tags = dict(self._tags_fn())
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
                describe_windows
                if metadata.is_window_key(metadata.tag_key(tag) or "")
                else describe_rows,
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

    def _summary_op(self, tag, value, step):
        # Written at some steps only: its first event, whichever it is, must
        # carry the metadata, so every event does.
        return tf.summary.write(tag, value, step=step, metadata=self.tags[tag])

    def _write_row(self, row, step):
        # One unstack per part rather than one slice op per tag.
        width = self.rows.index["loss_known"].stop
        scalars = tf.unstack(row[:width], num=width)
        layers = tf.unstack(
            tf.reshape(row[width:], [len(LAYER_STATS), self.layout.num_variables]),
            num=len(LAYER_STATS),
        )
        known = scalars[self.rows.index["loss_known"].start] > 0
        for i, stat in enumerate(STEP_STATS):
            if stat == "loss":
                # No value where the step's loss is unknown (a custom step
                # with no metric named "loss"): no point rather than a 0.
                tf.cond(
                    known,
                    lambda v=scalars[i]: self._summary_op(
                        metadata.step_tag("loss"), v, step
                    ),
                    lambda: tf.constant(False),
                )
            elif self.mixed_precision or stat not in _MIXED_PRECISION_ONLY:
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
        start = index["layer_" + next(iter(WINDOW_LAYER_STATS))].start
        count = len(WINDOW_LAYER_STATS)
        layers = tf.unstack(
            tf.reshape(row[start : start + count * v], [count, v]), num=count
        )
        for stat, value in zip(WINDOW_LAYER_STATS, layers, strict=True):
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


# Measured sizes of one event in the event file (tag, step, wall time, framing),
# metadata excluded (it goes with a tag's first event only).
_SCALAR_EVENT_BYTES = 80
_TENSOR_EVENT_BYTES = 90


def tag_metadata(
    layout: stats.Layout,
    update_freq: int | str,
    window: int | str,
    loss_components: Sequence[str],
    step_components: Sequence[str],
    sparse_variables: Sequence[str] = (),
    optimizers: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, bytes]:
    """The serialized summary metadata of every per-step and window tag.

    Args:
        layout: The variables' layout (names the entries of layer tensors).
        update_freq: The ``update_freq`` in force (the adaptive default's
            choice, an int, or ``"epoch"``).
        window: The variance window.
        loss_components: Every recorded loss component.
        step_components: Those recorded per step (the rest per epoch).
        sparse_variables: Paths of the variables whose gradient arrived as
            ``tf.IndexedSlices`` (rows of a table); listed in the layer tags'
            content as ``"sparse_variables"``. Defaults to none.
        optimizers: ``{optimizer: [paths it updates]}`` when optimizers other
            than ``model.optimizer`` step the model (a GAN's): in the
            ``step/*`` and ``layer/*`` tags' content as ``"optimizers"``; the
            global norms cover all of them, and each optimizer's global norm
            is the root of the summed squares of its paths' ``layer`` norms.
            Defaults to ``None``: not written.

    Returns:
        ``{tag: serialized SummaryMetadata}``.
    """
    variables: dict[str, Any] = {
        "variables": layout.paths,
        metadata.SPARSE_VARIABLES: list(sparse_variables),
    }
    common: dict[str, Any] = {"update_freq": update_freq}
    if optimizers:
        common["optimizers"] = {k: list(v) for k, v in optimizers.items()}
    tags: dict[str, Any] = {}
    for stat, text in metadata.STEP_SCALARS.items():
        tags[metadata.step_tag(stat)] = metadata.create_summary_metadata(text, common)
    for stat, text in metadata.LAYER_STATS.items():
        tags[metadata.layer_tag(stat)] = metadata.create_summary_metadata(
            text, {**variables, **common}, tensor=True
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
