"""The Keras callback that records gradient health as TensorBoard summaries.

How it stays cheap: the statistics come from the gradients that Keras already
computed, by wrapping the model's ``train_step`` and the ``apply`` of every
optimizer of the model on the instances (``step_shim.py``; the user changes
nothing). The compiled step reduces them to per-variable and per-slice sums
(``step_reduction.py``) and writes one small row per step into a ring on the
device (``ring.py``). Every block of up to 64 steps a writer thread at idle
priority reads the new rows, finishes and writes the statistics
(``host_pipeline.py``, ``reducer.py``) and runs the live diagnosis,
rate-limited. No value is read back to Python per step, and the callback
defines no batch hooks (Keras would then convert every batch's logs to numpy).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping, Sequence

import keras
import tensorflow as tf

from tb_gradplugin import epoch_probes, live, run_state, summary, user_warnings
from tb_gradplugin.curvature import DEFAULT_MAX_EXACT_PARAMS
from tb_gradplugin.event_writer import EventWriter
from tb_gradplugin.host_pipeline import Monitor

logger = logging.getLogger(__name__)

_FLUSH_SECS = 10.0  # s between host flushes; TensorBoard reloads every 5 s.


class GradientHealthCallback(keras.callbacks.Callback):
    """Records gradient health during ``model.fit`` as TensorBoard summaries.

    Per logged step: the loss, the global gradient, parameter and update norms
    and the update/parameter ratio, the learning rate; per trainable variable
    (by ``.path``) the gradient L2 norm, mean ``|g|``, parameter norm, update
    norm and ratio, the share of exactly-zero gradient entries and the count of
    NaN/Inf entries. Per window of steps: the per-entry gradient variance over
    the window's steps (averaged over entries) and the average gradient
    magnitude, per variable, for the whole model (with the gradient noise
    scale and SNR) and per named slice, and per variable the share of entries
    whose gradient was exactly 0 at every step of the window. The statistics
    are reduced from the gradients Keras already computed, inside the
    compiled step, to a few numbers per variable; the host reads them in
    blocks, never per step.

    Args:
        log_dir: Where to write the event files; with ``tensorboard --logdir``
            on its parent the run is named after it.
        update_freq: Log every N optimizer steps (``1`` = every step),
            ``"epoch"`` for the last step of each epoch, or ``"auto"``: the
            smallest of 1, 2, 5, 10, 20, 50, ... steps that keeps the summary
            events under 1 % of the measured step time (~4 µs an event) and
            the event file under ~1 KB per step (a million steps under 1 GB),
            chosen once from the first block of steps and written in the tags'
            content as ``update_freq``. Step 1 and each fit's last step are
            always logged, and so is every step within 256 steps of an
            anomalous one (a first NaN/Inf, or a gradient-norm jump of 10x the
            recent median); the statistics see every step whatever this is
            (windows, NaN/Inf counts).
            Defaults to ``"auto"``.
        slices: Named parameter slices, ``{"name": ("dense/kernel", (start,
            stop))}``: a variable's ``.path`` and a half-open range on its last
            axis. Defaults to ``None``: no slices.
        loss_components: Names of entries in Keras ``logs`` to record as loss
            components (e.g. ``["kl_loss", "lm_loss"]``); per logged step when
            the name is a ``keras.metrics.Mean`` of the model, else per epoch.
            Defaults to ``None``: none.
        hessian_freq: Compute Hessian curvature every N epochs; ``0`` turns it
            off. Defaults to ``0``.
        trajectory_freq: Record a parameter snapshot (a random projection) every
            N epochs; ``0`` turns it off. Defaults to ``0``.
        variance_window: Steps per window of the gradient variance and average
            gradient (a multiple of an int ``update_freq``), or ``"epoch"``. Defaults to
            ``None``: ``update_freq`` when it is at least 2 steps, else
            ``"epoch"`` (a one-step window has no variance).
        stop_on_nan: Stop training, like ``keras.callbacks.TerminateOnNaN``, once
            the loss or a gradient is NaN/Inf (reads one flag per execution).
            Defaults to ``False``: keep training and keep logging the evidence.
        on_flag: ``"warn"`` logs a warning when the diagnosis rules raise an
            error-severity flag, ``"stop"`` also stops training, ``None`` turns
            live diagnosis off. The rules run on the writer thread, reading
            the events written since their last run, at most every 5 s (at once
            after an anomalous step) and once at the end of each ``fit``; with
            ``"warn"`` they also take at most 1 % of the wall time during the
            fit (after a run of d seconds the next waits 100 d: they go over
            the whole series, whose length grows; the first run, which reads
            what the folder already held, excepted); with
            ``"stop"`` each epoch end waits for the steps handed over, so an
            anomaly stops training at that epoch's end. Defaults to
            ``"warn"``.
        probe_data: ``(x, y)`` or ``(x, y, sample_weight)`` of the fixed probe
            batch for the curvature. Defaults to ``None``: the first training
            batch of the first ``fit``, kept for the whole run.
        max_exact_params: Largest Hessian block computed exactly; bigger ones use
            stochastic Lanczos quadrature. Defaults to
            ``curvature.DEFAULT_MAX_EXACT_PARAMS`` (2048) parameters.
        trajectory_dim: Dimension of the trajectory projection. Defaults to
            ``256``.
        trajectory_seed: Seed of the projection, the same for every run so that
            the runs of a logdir can share one PCA. Defaults to ``0``.

    Raises:
        ValueError: When an argument is out of range.

    Example:
        >>> cb = GradientHealthCallback(log_dir="runs/exp1")  # doctest: +SKIP
        >>> model.fit(x, y, epochs=30, callbacks=[cb])  # doctest: +SKIP
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        update_freq: int | str = "auto",
        slices: Mapping[str, tuple[str, tuple[int, int]]] | None = None,
        loss_components: Sequence[str] | None = None,
        hessian_freq: int = 0,
        trajectory_freq: int = 0,
        *,
        variance_window: int | str | None = None,
        stop_on_nan: bool = False,
        on_flag: str | None = "warn",
        probe_data: tuple | None = None,
        max_exact_params: int = DEFAULT_MAX_EXACT_PARAMS,
        trajectory_dim: int = 256,
        trajectory_seed: int = 0,
    ):
        super().__init__()
        if update_freq not in ("epoch", "auto") and (
            isinstance(update_freq, bool)
            or not isinstance(update_freq, int)
            or update_freq < 1
        ):
            raise ValueError(
                "update_freq must be a positive int, 'epoch' or 'auto', got "
                f"{update_freq!r}"
            )
        if variance_window is None:
            variance_window = (
                update_freq
                if isinstance(update_freq, int) and update_freq >= 2
                else "epoch"
            )
        if variance_window != "epoch":
            if not isinstance(variance_window, int) or variance_window < 1:
                raise ValueError(
                    "variance_window must be a positive int or 'epoch', got "
                    f"{variance_window!r}"
                )
            # Windows see every step; an int update_freq logs at their ends.
            if update_freq == "epoch" or (
                isinstance(update_freq, int) and variance_window % update_freq
            ):
                raise ValueError(
                    f"variance_window ({variance_window}) must be a multiple of "
                    f"update_freq ({update_freq})"
                )
        for name, value in (
            ("hessian_freq", hessian_freq),
            ("trajectory_freq", trajectory_freq),
        ):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if on_flag not in ("warn", "stop", None):
            raise ValueError(f"on_flag must be 'warn', 'stop' or None, got {on_flag!r}")
        self.log_dir = os.fspath(log_dir)
        self._base_log_dir = self.log_dir
        self._run_paths: list[str] | None = None
        self.update_freq = update_freq
        self.slices = dict(slices or {})
        self.loss_components = list(loss_components or [])
        self.hessian_freq = hessian_freq
        self.trajectory_freq = trajectory_freq
        self.variance_window = variance_window
        self.stop_on_nan = bool(stop_on_nan)
        self.on_flag = on_flag
        self.probe_data = probe_data
        self.max_exact_params = int(max_exact_params)
        self.trajectory_dim = int(trajectory_dim)
        self.trajectory_seed = int(trajectory_seed)
        self._writer = None
        self._monitor = None
        self._write_failed = False
        self._last_flush = 0.0
        self._event_file = None
        self._reports = live.LiveReports(on_flag)

    # -- Keras hooks -------------------------------------------------------
    def on_train_begin(self, logs=None):
        """Installs the shim once per model and opens the writer."""
        model = self.model
        if model.optimizer is None:
            raise ValueError(
                "GradientHealthCallback needs a compiled model with an optimizer"
            )
        fn = getattr(model, "train_function", None)
        monitor = getattr(fn, "_gradient_health_monitor", None)
        if (
            monitor is None
            or monitor.cb is not self
            or monitor.optimizer is not model.optimizer
        ):
            last, recorded = self._run_state()
            monitor = Monitor(self, model)
            if monitor.layout is not None:
                last = self._follow_labels(monitor.layout.paths, last, recorded)
            monitor.run_last_step = last
            if monitor.reducer is not None:
                monitor.reducer.run_last_step = last
            monitor.install()
        self._monitor = monitor
        self._write_failed = False
        if not getattr(model.distribute_strategy.extended, "should_save_summary", True):
            # A worker other than the chief under MultiWorkerMirroredStrategy:
            # its step takes part in the same collectives, the chief writes.
            monitor.active = False
            return
        self._guarded(self._open_writer)
        monitor.active = self._writer is not None
        if monitor.active:
            self._guarded(monitor.start)
        first_step = int(model.optimizer.iterations.numpy()) == 0
        if monitor.active and self.trajectory_freq and first_step:
            self._guarded(self._trajectory)

    def on_epoch_end(self, epoch, logs=None):
        """Hands the epoch's rows and window to the writer thread (no wait).

        With ``on_flag="stop"`` it waits for the rows handed over so far, so
        that an anomaly found in them stops training at this epoch's end.
        """
        mon = self._monitor
        if mon is None or not mon.active:
            return
        self._guarded(mon.epoch_end, dict(logs or {}))
        if self.hessian_freq and (epoch + 1) % self.hessian_freq == 0:
            self._curvature()
        if self.trajectory_freq and (epoch + 1) % self.trajectory_freq == 0:
            self._guarded(self._trajectory)
        if self._reports.on_flag == "stop":
            self._guarded(mon.drain)
        self._guarded(mon.poll)
        self._report_flags(epoch)

    def on_train_end(self, logs=None):
        """Writes what is left, flushes the writer and reports the last flags.

        The writer stays open for the next ``fit`` with this callback (one
        event file per run); call :meth:`close` to release it earlier.
        """
        mon = self._monitor
        if mon is not None and mon.active:
            self._guarded(mon.finish)
            mon.active = False
            self._report_flags(None)

    def close(self) -> None:
        """Flushes and closes the event writer; a later ``fit`` opens a new one."""
        if self._monitor is not None:
            self._guarded(self._monitor.drain)
        if self._writer is not None:
            self._guarded(self._writer.close)
        self._writer = None

    # -- helpers -----------------------------------------------------------
    def _lay_out_again(self) -> None:
        """Replaces the monitor once loss components' trackers exist.

        The rows recorded so far are written first; the new monitor's train
        function records the components per step from the next step on, and
        the first step's values, which the trackers hold right after it, are
        written at that step.
        """
        old = self._monitor
        old.finish()
        old.active = False
        first = old.first_step_components()
        monitor = Monitor(self, self.model)
        monitor.run_last_step = self._run_state()[0]
        if monitor.reducer is not None:
            monitor.reducer.run_last_step = monitor.run_last_step
        if old.probe is not None:
            monitor.probe = old.probe
        monitor.install()
        self._monitor = monitor
        monitor.set_writer(self._writer)
        if first is not None:
            step, values = first
            summary.write_loss_components(self._writer, values, step, monitor.tags())
        monitor.active = True
        monitor.start()

    def _run_state(self) -> tuple[int, list[str] | None]:
        """The run's last step (a new monitor's steps follow it) and labels."""
        mon = self._monitor
        if mon is not None and mon.reducer is not None:
            with contextlib.suppress(Exception):
                mon.drain()
            last = max(mon.run_last_step, mon.reducer.last_step)
            return last, self._run_paths
        if self._writer is None:
            return run_state.run_state(self.log_dir)
        return 0, self._run_paths

    def _follow_labels(self, paths, last: int, recorded) -> int:
        """Moves to a run whose per-layer labels are ``paths``, when they differ.

        TensorBoard keeps a tag's first metadata: rows over other variables
        would show under the first ones' names. Such a fit (another model on
        the same ``log_dir``) writes to the subfolder ``variables-<k>`` whose
        labels are its own; its steps go on from the run's last step.

        Returns:
            The last step the new rows follow.
        """
        if recorded is None or list(recorded) == list(paths):
            return last
        folder, sub_last = run_state.folder_for_labels(self._base_log_dir, paths)
        user_warnings.warn(
            f"GradientHealthCallback: the model's variables differ from those "
            f"recorded in {self.log_dir!r}; this fit is written to {folder!r} so "
            "that every per-layer value keeps its own label."
        )
        if self._writer is not None:
            self._guarded(self._writer.close)
            self._writer = None
        self.log_dir = folder
        self._run_paths = list(paths)
        self._reports.forget_run()
        return max(last, sub_last)

    def _open_writer(self):
        if self._writer is None:
            # Every summary of the run goes through this one writer (one
            # file): TensorBoard's Python loader reads a directory's files one
            # after the other and would miss what an older one still gets.
            self._writer = EventWriter(self.log_dir)
            self._event_file = self._writer.path
        if self._monitor.writer is not self._writer:
            self._monitor.set_writer(self._writer)

    def _after_write(
        self, urgent: bool, epoch_end: bool = False, final: bool = False
    ) -> None:
        """On the writer thread, after a task: flushes, runs the live diagnosis.

        The diagnosis runs at once after an anomalous step, else at epoch ends
        at most every ``live.LIVE_INTERVAL_S`` seconds, and at the end of each
        ``fit``; it reads only the events appended since its last run. Its
        flags are reported on the training thread.
        """
        due = self._reports.due(urgent, epoch_end, final)
        if due or time.monotonic() - self._last_flush > _FLUSH_SECS:
            self._flush()
        if due:
            self._reports.run(self.log_dir)

    def _report_flags(self, epoch: int | None = None) -> None:
        """Warns of the flags the live diagnosis found; stops if asked to."""
        when = f"epoch {epoch + 1}" if epoch is not None else "end of training"
        if self._reports.report(when) and self.model is not None:
            logger.warning(
                "GradientHealthCallback: stopping training (on_flag='stop')."
            )
            self.model.stop_training = True

    def _curvature(self):
        batch = epoch_probes.probe_batch(self.probe_data, self._monitor.probe)
        if batch is not None:
            epoch_probes.write_curvature(
                self.model, batch, self._writer, self.max_exact_params, self._guarded
            )

    def _trajectory(self):
        epoch_probes.write_trajectory(
            self.model, self._writer, self.trajectory_dim, self.trajectory_seed
        )

    def _flush(self):
        self._last_flush = time.monotonic()
        self._writer.flush()
        # Writing to a file that is gone (directory removed or replaced) raises
        # nothing: check, so that the loss is reported.
        if self._event_file is not None and not os.path.isfile(self._event_file):
            raise OSError(f"the event file {self._event_file} has disappeared")

    def _guarded(self, fn, *args):
        """Runs a write step; a failure is reported once and never breaks training."""
        if self._write_failed:
            return None
        try:
            return fn(*args)
        except (tf.errors.OpError, OSError, ValueError) as err:
            self._write_failed = True
            if self._monitor is not None:
                self._monitor.active = False
            user_warnings.warn(
                f"GradientHealthCallback: writing to {self.log_dir!r} failed "
                f"({type(err).__name__}: {err}); gradient health is no longer "
                "recorded for this run, training goes on."
            )
            return None
