"""Turns blocks of step rows into gradient-health statistics (host, numpy).

The compiled step writes one small row per step (``ring.py``); the callback's
writer thread hands each block of rows read from the ring to
:class:`BlockReducer`, which

* finishes each step's statistics from its sums (norms are square roots of
  sums, ratios, shares) and counts NaN/Inf and skipped steps between logged
  steps;
* accumulates the open variance window's per-step sums and, when a step (or an
  epoch end) closes the window, turns them and the reduced running gradient
  sum into the window's statistics (``window_stats.window_statistics``);
* holds the rows in the flight recorder (``flight_recorder.py``), which
  decides which steps around an anomaly are written whatever ``update_freq``
  says;
* hands the logged steps and closed windows, in step order, to the summary
  writer (``summary.py``).

Every step's row is seen, so windows, NaN counts and anomalies miss nothing
whatever ``update_freq`` is.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from tb_gradplugin import flight_recorder, metadata, ring, stats, summary, window_stats
from tb_gradplugin.flight_recorder import Held
from tb_gradplugin.update_freq import update_freq_for


def _updated(grad_sq: np.ndarray, nonfinite: np.ndarray) -> np.ndarray:
    """Which variables a row's step updated, shape ``[n_variables]``.

    A variable no optimizer stepped is written as NaN with no NaN/Inf entry
    counted; a NaN from the gradient itself always comes with a count.
    """
    return ~(np.isnan(grad_sq) & (nonfinite == 0))


def _global_norm(squares: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Per row, the L2 norm over the updated variables; NaN where it updated none.

    Args:
        squares: ``[..., n_variables]`` sums of squares.
        present: Which variables each row updated, the same shape.

    Returns:
        ``squares.shape[:-1]`` norms.
    """
    total = np.sum(np.where(present, squares, 0.0), axis=-1)
    return np.where(present.any(axis=-1), np.sqrt(total), np.nan)


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
            :data:`flight_recorder.FLIGHT_STEPS`.

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
        self.output = summary.StepSummaryWriter(
            layout, self.components, mixed_precision
        )
        self.windows = self.output.windows
        # Variable indices of each optimizer, when several step the model.
        self.optimizer_indices: list[np.ndarray] = []
        self.recorder = flight_recorder.FlightRecorder(flight_steps)
        self.window_sums = window_stats.WindowSums.empty(layout)
        self.pending = np.zeros([layout.num_variables + 2])
        self.last_logged = -1
        self.last_valid: Held | None = None
        # (loss known, [loss, components]) of the batches of the open update.
        self.batches: list[tuple[bool, np.ndarray]] = []
        index = packing.index
        self._loss_columns = np.r_[index["loss"], index["components"]]
        self.run_last_step = 0
        self.step_offset: int | None = None
        self.last_step = 0

    @property
    def rows(self) -> ring.Packing:
        """The columns of a packed logged row."""
        return self.output.rows

    def set_optimizers(self, indices: Mapping[str, Sequence[int]]) -> None:
        """Adds each optimizer's global norms to the logged rows.

        Call before the first :meth:`add_rows`, with two or more optimizers.

        Args:
            indices: ``{optimizer attribute: indices of the variables it
                updates}``, in the order their tags are written.
        """
        self.optimizer_indices = [np.asarray(i, np.int64) for i in indices.values()]
        self.output.set_optimizers(list(indices))

    @property
    def anomalies(self) -> list[int]:
        """Steps found anomalous since the caller last cleared this list."""
        return self.recorder.anomalies

    @property
    def writer(self):
        """The event writer in use."""
        return self.output.writer

    @property
    def tags(self) -> dict[str, bytes]:
        """The tags' serialized metadata, once the first write made them."""
        return self.output.tags

    # -- input -------------------------------------------------------------------
    def set_writer(self, writer, tags_fn: Callable[[], Mapping[str, bytes]]) -> None:
        """Sets the event writer and what makes the tags' metadata (lazily).

        Args:
            writer: The run's ``event_writer.EventWriter``.
            tags_fn: Returns ``{tag: serialized metadata}``; called at the
                first write, once the step has been traced.
        """
        self.output.set_writer(writer, tags_fn)

    def decide_update_freq(self, step_seconds: float | None) -> None:
        """Fixes the adaptive ``update_freq`` (once), from the step time."""
        if self.freq is not None:
            return
        scalars = len(summary.STEP_STATS) + len(self.components)
        if not self.mixed_precision:
            scalars -= len(summary.MIXED_PRECISION_ONLY)
        self.freq = update_freq_for(
            step_seconds, scalars, len(summary.LAYER_STATS), self.layout.num_variables
        )

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
        block = block.astype(np.float64)
        loss_column = idx["loss"].start
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            # What every row needs, for the whole block at once: a numpy call
            # per row costs more than its arithmetic here, and this runs for
            # every step whatever update_freq is.
            valid = (block[:, idx["skipped"].start] == 0.0).tolist()
            known = block[:, idx["loss_known"].start] > 0
            # An unknown loss (no metric named "loss" updated) is no NaN.
            raw_loss = np.where(known, block[:, loss_column], 0.0)
            nonfinite = block[:, idx["grad_nonfinite"]]
            counts = np.concatenate(
                [
                    nonfinite,
                    ~np.isfinite(raw_loss)[:, None],
                    np.logical_not(valid)[:, None],
                ],
                axis=1,
                dtype=np.float64,
            )
            present = _updated(block[:, idx["grad_sq"]], nonfinite)
            norms = _global_norm(block[:, idx["grad_sq"]], present).tolist()
            bad = nonfinite.any(axis=1).tolist()
            closed = (block[:, idx["closed"].start] != 0).tolist()
            known = known.tolist()
            window = []  # rows of the open window not yet in its sums
            for i, step in enumerate(steps.tolist()):
                held = Held(step, valid[i], counts[i], None, None, now)
                r, loss_known = block[i], known[i]
                if not self.mixed_precision:
                    # Without a loss scale a skipped row is a batch only
                    # accumulated.
                    r, loss_known = self._mean_over_batches(r, valid[i], loss_known)
                if valid[i]:
                    # The logged statistics are made only for the rows written
                    # (every update_freq-th, or around an anomaly).
                    held.row = r
                    held.full = self.recorder.in_range(step)
                    loss = r[loss_column] if loss_known else 0.0
                    finite = (
                        math.isfinite(loss) and not bad[i] and math.isfinite(norms[i])
                    )
                    self.recorder.watch(held, norms[i], finite)
                    window.append(i)
                    if closed[i]:
                        self._add_to_window(block[window], present[window])
                        window = []
                        held.window = self._close_window(
                            r[idx["sum_sq"]], r[idx["sum_zero"]], r[idx["slice_sum_sq"]]
                        )
                    self.last_valid = held
                self.recorder.hold(held)
            self._add_to_window(block[window], present[window])
        self.release(final=False)

    def _add_to_window(self, rows: np.ndarray, present: np.ndarray) -> None:
        """Adds applied steps' rows to the open window's sums.

        Args:
            rows: The steps' rows ``[k, K]`` (float64).
            present: Per row, the variables the step updated ``[k, V]``.
        """
        idx = self.packing.index
        self.window_sums.add_rows(
            rows[:, idx["grad_sq"]],
            rows[:, idx["grad_abs"]],
            rows[:, idx["slice_grad_sq"]],
            rows[:, idx["slice_grad_abs"]],
            rows[:, idx["batch_size"].start],
            absent=~present,
        )

    def _mean_over_batches(self, r: np.ndarray, valid: bool, known: bool):
        """Under gradient accumulation: an update's loss over all its batches.

        The update applies the mean of its k batches' gradients (Keras's
        ``gradient_accumulation_steps``), so its row's loss and per-step loss
        components are the unweighted means over the same k batches: the
        batches whose loss is known for the loss.

        Args:
            r: The row (float64).
            valid: Whether it is an applied update (else a batch only
                accumulated, held here until its update).
            known: Whether the row's own loss is known.

        Returns:
            ``(row, known)``: the row with the means in place, and whether
            the update's loss is known.
        """
        if valid and not self.batches:
            return r, known  # an update of one batch: nothing to average
        idx = self.packing.index
        columns = self._loss_columns
        values = r[columns].copy()
        if not known:
            values[0] = np.nan
        self.batches.append((known, values))
        if not valid:
            return r, known
        batches, self.batches = self.batches, []
        if len(batches) == 1:
            return r, known
        seen = np.array([k for k, _ in batches])
        stacked = np.array([v for _, v in batches])
        r = r.copy()
        known = bool(seen.any())
        means = stacked.mean(axis=0)
        if known:
            means[0] = stacked[seen, 0].mean()
        r[columns] = means
        r[idx["loss_known"]] = float(known)
        return r, known

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
                if not self.recorder.holds(last):
                    # Released unlogged (held too long): nothing later was
                    # logged, so it is still in step order.
                    self._write_entries([last])
            if running is not None and self.window_sums.count > 0:
                v = self.layout.num_variables
                with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
                    window = self._close_window(
                        running[:v], running[v : 2 * v], running[2 * v :]
                    )
                if self.recorder.holds(last):
                    last.window = window
                else:
                    self.output.write(
                        np.zeros([0, self.rows.width], np.float32),
                        np.zeros([0], np.int64),
                        window[None],
                        np.array([last.step], np.int64),
                    )
        self.release(final=False)

    # -- per step -----------------------------------------------------------------
    def _log_rows(self, r: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """The packed logged rows of step rows ``[n, K]``, all at once.

        Args:
            r: The step rows (float64).
            counts: Per row, the NaN/Inf and skipped-step counts since the
                previous logged step, ``[n, n_variables + 2]``.

        Returns:
            ``[n, self.rows.width]`` float32.
        """
        idx = self.packing.index
        sizes = self.layout.sizes_array
        grad_sq, param_sq = r[:, idx["grad_sq"]], r[:, idx["param_sq"]]
        update_sq = r[:, idx["update_sq"]]
        present = _updated(grad_sq, r[:, idx["grad_nonfinite"]])
        fields = {
            "loss": r[:, idx["loss"]],
            "loss_known": r[:, idx["loss_known"]],
            # Over the variables updated at the step; a NaN or Inf gradient of an
            # updated variable makes the global norms non-finite, as it should.
            "grad_norm": _global_norm(grad_sq, present),
            "param_norm": _global_norm(param_sq, present),
            "update_norm": _global_norm(update_sq, present),
            "learning_rate": r[:, idx["learning_rate"]],
            "loss_scale": r[:, idx["loss_scale"]],
            "components": r[:, idx["components"]],
            "v_grad_norm": np.sqrt(grad_sq),
            "v_grad_mean_abs": r[:, idx["grad_abs"]] / sizes,
            "v_param_norm": np.sqrt(param_sq),
            "v_update_norm": np.sqrt(update_sq),
            "v_zero_fraction": r[:, idx["grad_zero"]] / sizes,
        }
        fields["update_ratio"] = window_stats.safe_ratio(
            fields["update_norm"], fields["param_norm"]
        )
        if self.optimizer_indices:
            fields.update(self._optimizer_norms(present, grad_sq, param_sq, update_sq))
        fields["v_update_ratio"] = window_stats.safe_ratio(
            fields["v_update_norm"], fields["v_param_norm"]
        )
        rows = self.rows.pack(fields, len(r))
        # The counts since the last logged step.
        v = self.layout.num_variables
        index = self.rows.index
        rows[:, index["nonfinite_grads"]] = counts[:, :v].sum(axis=1, keepdims=True)
        rows[:, index["v_nonfinite_grads"]] = counts[:, :v]
        rows[:, index["nonfinite_loss"]] = counts[:, v : v + 1]
        rows[:, index["skipped_steps"]] = counts[:, v + 1 : v + 2]
        return rows

    def _optimizer_norms(self, present, grad_sq, param_sq, update_sq) -> dict:
        """Each optimizer's global norms over the variables it updated, per row."""
        out = {f"o_{stat}": [] for stat in summary.OPTIMIZER_STATS}
        for indices in self.optimizer_indices:
            mine = np.zeros(present.shape[-1], bool)
            mine[indices] = True
            mine = mine & present
            norms = [_global_norm(sq, mine) for sq in (grad_sq, param_sq, update_sq)]
            out["o_grad_norm"].append(norms[0])
            out["o_param_norm"].append(norms[1])
            out["o_update_norm"].append(norms[2])
            out["o_update_ratio"].append(window_stats.safe_ratio(norms[2], norms[1]))
        # [optimizers, n] -> [n, optimizers]
        return {k: np.array(v, np.float64).T for k, v in out.items()}

    def _close_window(self, sum_sq, sum_zero, slice_sum_sq) -> np.ndarray:
        out = window_stats.window_statistics(
            self.layout, self.window_sums, sum_sq, sum_zero, slice_sum_sq
        )
        self.window_sums = window_stats.WindowSums.empty(self.layout)
        fields = {name: out[name] for name in metadata.WINDOW_SCALARS}
        for name in summary.WINDOW_LAYER_STATS:
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
        if self.freq is None:
            return
        last = self.last_valid
        if final and last is not None and self.recorder.holds(last):
            # A fit's last step is always written, whatever update_freq says:
            # every series, the flags and the views then end at the same step.
            last.epoch_last = True
        # The last row may yet be the epoch's last (update_freq="epoch").
        self._write_entries(self.recorder.take(final, keep_last=self.epoch_mode))
        if final:
            self.output.flush_blocks()

    def _due(self, held: Held) -> bool:
        if not held.valid or held.step <= self.last_logged:
            return False
        if held.full or held.epoch_last:
            return True
        return not self.epoch_mode and (held.step == 1 or held.step % self.freq == 0)

    def _write_entries(self, entries: Sequence[Held]) -> None:
        logged, counts, row_steps, windows, window_steps = [], [], [], [], []
        for held in entries:
            self.pending = self.pending + held.counts
            if self._due(held):
                logged.append(held.row)
                counts.append(self.pending)
                row_steps.append(held.step)
                self.pending = np.zeros_like(self.pending)
                self.last_logged = held.step
            if held.window is not None:
                windows.append(held.window)
                window_steps.append(held.step)
                held.window = None
        if logged:
            with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
                rows = self._log_rows(np.array(logged), np.array(counts))
        else:
            rows = np.zeros([0, self.rows.width], np.float32)
        if logged or windows:
            self.output.write(
                rows,
                np.array(row_steps, np.int64),
                np.array(windows, np.float32).reshape([-1, self.windows.width]),
                np.array(window_steps, np.int64),
            )
