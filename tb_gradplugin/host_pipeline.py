"""The host side of the shim: blocks of ring rows handed to a writer thread.

After each execution of the train function the training thread only counts;
every block of up to 64 steps (or :data:`MAX_WRITE_DELAY_S`) it hands the new
ring rows to one writer thread at a lower priority, which reads them from the
device, finishes and writes the statistics (``reducer.py``) and runs the live
diagnosis, rate-limited. An epoch end records the epoch's window (reduced on
the device) and per-epoch loss components, handed over with the next block;
the end of a ``fit`` writes every row and waits.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tb_gradplugin import reducer, ring, summary
from tb_gradplugin.step_shim import StepShim

logger = logging.getLogger(__name__)

MAX_WRITE_DELAY_S = 2.0  # s a recorded step may wait for its block (slow steps).


WRITER_NICE = 10
"""How much nicer the writer thread is than training: lower priority, not idle."""


def low_priority() -> None:
    """Lowers the writer thread's priority by :data:`WRITER_NICE` nice levels.

    Not ``SCHED_IDLE``: a thread of that class holding Python's GIL while the
    training's threads keep both cores busy is not scheduled again for long
    and the training thread waits for the GIL. Measured on the 2-core dev
    machine, the 1 M MLP's ``fit`` with the callback's defaults, four
    alternating fits each: 1.12x the plain fit at ``SCHED_IDLE`` (one fit
    1.4x), 1.00x at nice 10, 1.02x at normal priority. The reduction is numpy
    on this thread, so the priority applies to it.
    """
    # Linux: a thread's nice value is its own. Elsewhere, or not permitted,
    # the thread runs at normal priority.
    with contextlib.suppress(AttributeError, OSError):
        thread = threading.get_native_id()
        own = os.getpriority(os.PRIO_PROCESS, thread)  # the training's, inherited
        os.setpriority(os.PRIO_PROCESS, thread, min(own + WRITER_NICE, 19))


class Monitor(StepShim):
    """Per model: the step shim, and the host side that writes its rows.

    Args:
        callback: The callback (settings, writer, live diagnosis).
        model: The compiled model.
        run_last_step: The run's last step already written; the new rows'
            steps follow it. Defaults to ``0``.
    """

    def __init__(self, callback: Any, model: keras.Model, run_last_step: int = 0):
        self.run_last_step = run_last_step
        self.reducer = None
        self.writer = None
        super().__init__(callback, model)
        self.executions_since_submit = 0
        self.last_submit = time.monotonic()
        self.rows_taken = 0
        self.executions = 0
        self.timed_from = None
        self.executor = None
        self.futures: collections.deque = collections.deque()
        # Epoch ends not yet handed to the writer thread (``epoch_end``).
        self.epochs_pending: list[tuple] = []
        self.active = False
        self._read_fn = None
        self._epoch_fn = None
        self._optimizers_set = False

    def laid_out(self) -> None:
        """Makes the reducer of the rows once the layout exists."""
        self.reducer = reducer.BlockReducer(
            self.layout,
            self.packing,
            self.step_components,
            self.cb.update_freq,
            self.cb.variance_window,
            self.is_lso,
        )
        self.reducer.run_last_step = self.run_last_step

    # -- training thread ---------------------------------------------------------
    def after_execution(self):
        """After each execution of the train function: hand a full block over."""
        if not self.active or self.layout is None:
            return
        if self.late_components and self.cb._monitor is self:
            self.cb._guarded(self.cb._lay_out_again)
            return
        self.executions_since_submit += 1
        self.executions += 1
        if self.timed_from is None:
            # The first execution of a fit includes tracing: time from its end.
            self.timed_from = (time.monotonic(), self.executions)
        if (
            self.executions_since_submit >= self.executions_per_block
            or time.monotonic() - self.last_submit > MAX_WRITE_DELAY_S
        ):
            self.cb._guarded(self.submit)
        if self.cb.stop_on_nan and int(self.ring.nan_seen.numpy()):
            logger.warning("GradientHealthCallback: NaN/Inf seen; stopping training.")
            self.model.stop_training = True
        self.cb._guarded(self.poll)
        if self.cb._reports.flags:
            self.cb._report_flags()

    def first_step_components(self) -> tuple[int, dict[str, float]] | None:
        """The loss components whose trackers the first step created, at that step.

        Keras creates some ``Mean`` trackers (a multi-output model's per-output
        losses) during the first step, after the shim read the metrics: that
        step's row has no value for them. Right after the first execution, when
        it ran one applied step, each tracker holds exactly that step's value.
        Call after :meth:`finish` (the step's row is then reduced).

        Returns:
            ``(step, {name: value})``, or ``None`` when the first execution
            ran several steps or no applied one.
        """
        last = self.reducer.last_valid if self.reducer is not None else None
        if self.executions or self.steps_per_execution != 1 or last is None:
            return None
        values = self.losses.results(self.epoch_components)
        return (last.step, values) if values else None

    def _step_seconds(self):
        if self.timed_from is None:
            return None
        start, executions = self.timed_from
        steps = (self.executions - executions) * self.steps_per_execution
        return (time.monotonic() - start) / steps if steps else None

    def submit(self):
        """Hands the rows and epoch ends recorded so far to the writer thread."""
        self.executions_since_submit = 0
        self.last_submit = time.monotonic()
        # The ring holds the blocks in flight and more: wait rather than
        # let the step overwrite rows not yet read (a writer falling behind).
        while len(self.futures) >= ring.BLOCKS_IN_FLIGHT:
            self.futures.popleft().result()
        # Read after the epoch ends were recorded: every one is within the rows.
        stop = int(self.ring.count.numpy())
        start, self.rows_taken = max(self.rows_taken, stop - self.ring.rows), stop
        epochs, self.epochs_pending = self.epochs_pending, []
        if stop > start or epochs:
            self._submit(self._process, start, stop, self._step_seconds(), epochs)

    def _submit(self, fn, *args):
        if self.executor is None:
            self.executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix="gradient_health_writer",
                initializer=low_priority,
            )
        self.futures.append(self.executor.submit(fn, *args))

    def poll(self):
        """Re-raises the error of a finished writer task, without waiting."""
        while self.futures and self.futures[0].done():
            self.futures.popleft().result()

    def drain(self):
        """Waits for every writer task; re-raises the first error, if any."""
        while self.futures:
            self.futures.popleft().result()

    def epoch_end(self, logs):
        """Records the epoch's end, its window and per-epoch components.

        They are handed to the writer thread with the next block of rows (at
        most :data:`MAX_WRITE_DELAY_S` later), not at every epoch end: with
        epochs of a few steps a task per epoch costs more than the steps'
        rows. With ``on_flag="stop"`` they are handed over at once, so that a
        flag found in them stops training at this epoch's end.
        """
        if self._epoch_fn is None:
            # One call of a concrete function (no per-call argument binding):
            # the ring's count, the step, and the epoch window's running sums
            # (reduced, then reset), kept on the device until the writer
            # thread reads them.
            self._epoch_fn = tf.function(
                self._epoch_state, autograph=False
            ).get_concrete_function()
        count, step, running = self._epoch_fn()
        if self.cb.variance_window != "epoch":
            running = None
        values = {n: float(logs[n]) for n in self.epoch_components if n in logs}
        self.epochs_pending.append((count, step, running, values))
        if self.cb._reports.on_flag == "stop":
            self.submit()

    def _epoch_state(self):
        running = (
            self.reduction.running_close()
            if self.cb.variance_window == "epoch"
            else tf.zeros([0], tf.float32)
        )
        return (
            tf.identity(self.ring.count),
            tf.cast(self.optimizer.iterations, tf.int64),
            running,
        )

    def start(self):
        """At each ``fit``: skips rows recorded without the callback active."""
        self.drain()
        if self.layout is not None:
            self.rows_taken = int(self.ring.count.numpy())
        self.executions_since_submit = 0
        self.timed_from = None
        self.last_submit = time.monotonic()

    def finish(self):
        """At the end of a ``fit``: writes every row and flushes, then waits."""
        self.submit()
        self._submit(self._final_task)
        self.drain()

    # -- writer thread -----------------------------------------------------------
    def _process(self, start, stop, step_seconds, epochs):
        """Reduces rows ``[start, stop)`` of the ring, with the epoch ends among them.

        Args:
            start: First row to read.
            stop: One past the last row.
            step_seconds: Measured seconds per step, or ``None``.
            epochs: The epoch ends recorded since the last task, in order:
                ``(row count, step, running sums or None, components)``.
        """
        if self._read_fn is None:
            # A concrete function skips tf.function's per-call argument
            # binding (~1 ms of Python per call here, holding the GIL).
            spec = tf.TensorSpec([], tf.int64)
            self._read_fn = tf.function(
                self.ring.read, autograph=False
            ).get_concrete_function(spec, spec)
        self._follow_writer()
        if not self._optimizers_set:
            self._set_optimizers()
        block = np.zeros([0])
        if stop > start:
            block = np.asarray(
                self._read_fn(tf.constant(start, tf.int64), tf.constant(stop, tf.int64))
            )
        done = start
        for count, step, running, values in epochs:
            # The rows of the epoch first (rows lost to a writer that fell
            # behind are not read again).
            end = min(max(int(count), done), stop)
            if end > done:
                self.reducer.add_rows(block[done - start : end - start], step_seconds)
                done = end
            self._epoch_end(running, int(step), values)
        if stop > done:
            self.reducer.add_rows(block[done - start :], step_seconds)
        self.cb._after_write(urgent=self._take_anomalies(), epoch_end=bool(epochs))

    def _set_optimizers(self):
        """Has each optimizer's global norms written when several step the model.

        Runs before the first block is reduced: the step has been traced, so
        :attr:`optimizer_paths` names every optimizer that updates variables.
        """
        self._optimizers_set = True
        if len(self.optimizer_paths) > 1:
            index = {p: i for i, p in enumerate(self.layout.paths)}
            self.reducer.set_optimizers(
                {
                    name: [index[p] for p in paths]
                    for name, paths in self.optimizer_paths.items()
                }
            )

    def _follow_writer(self):
        if self.reducer.writer is not self.writer:
            self.reducer.set_writer(self.writer, self.tags)

    def _epoch_end(self, running, step, values):
        """An epoch's end, after its rows: its window and per-epoch components."""
        # The step of the epoch's last row (the run's step, whichever
        # optimizer counted it), else the optimizer's step.
        step = self.reducer.last_step or step + (self.reducer.step_offset or 0)
        if running is not None:
            running = np.asarray(running, np.float64)
        self.reducer.epoch_end(running)
        if values:
            tags = self.reducer.tags or self.tags()
            summary.write_loss_components(self.writer, values, step, tags)

    def _final_task(self):
        self._follow_writer()
        self.reducer.release(final=True)
        self.cb._flush()
        # Always: a training shorter than the checks' interval still warns
        # (a check reads only what is new, and with nothing new runs no rules).
        self.cb._after_write(urgent=self._take_anomalies(), epoch_end=True, final=True)

    def _take_anomalies(self) -> bool:
        found = bool(self.reducer.anomalies)
        self.reducer.anomalies.clear()
        return found

    def set_writer(self, writer):
        """Sets the event writer (the tags are made at the first write)."""
        self.writer = writer
        if self.reducer is not None:
            self.reducer.set_writer(writer, self.tags)

    def tags(self) -> dict[str, bytes]:
        """The serialized metadata of every tag (once the step is traced)."""
        if self.cb._run_paths is None:
            self.cb._run_paths = list(self.layout.paths)
        freq = self.cb.update_freq
        if freq == "auto" and self.reducer.freq is not None:
            freq = self.reducer.freq
        sparse = self.reduction.sparse_paths
        return summary.tag_metadata(
            self.layout,
            freq,
            self.cb.variance_window,
            self.cb.loss_components,
            self.step_components,
            [p for p in self.layout.paths if p in sparse],
            # Named only when not all is model.optimizer's (a GAN's, a split).
            self.optimizer_paths if set(self.optimizer_paths) - {"optimizer"} else None,
        )
